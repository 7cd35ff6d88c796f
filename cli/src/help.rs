//! `--help` and `--version` texts. Each text is qemu-img 10.0.2's, with the
//! program name put in place of "qemu-img" so that a `qemu-img` symlink to
//! us prints exactly what qemu-img prints.

use crate::app::{out, Prog};

/// `-V`: qemu-img's two-line shape, with the qemu-img version we behave
/// as first (scripts and management tools parse `qemu-img version X.Y.Z`
/// to decide which options they may use) and our own in parentheses,
/// where qemu-img puts its package version.
pub fn version_text(prog: &Prog) -> String {
    format!(
        "{} version 10.0.2 (imgtool {})\n\
         Copyright (c) 2025 the imgtool developers\n",
        prog.name,
        imgtool::VERSION
    )
}

fn command_text(cmd: &str) -> Option<&'static str> {
    Some(match cmd {
        "amend" => include_str!("help/amend.txt"),
        "bench" => include_str!("help/bench.txt"),
        "bitmap" => include_str!("help/bitmap.txt"),
        "check" => include_str!("help/check.txt"),
        "commit" => include_str!("help/commit.txt"),
        "compare" => include_str!("help/compare.txt"),
        "convert" => include_str!("help/convert.txt"),
        "create" => include_str!("help/create.txt"),
        "dd" => include_str!("help/dd.txt"),
        "info" => include_str!("help/info.txt"),
        "map" => include_str!("help/map.txt"),
        "measure" => include_str!("help/measure.txt"),
        "rebase" => include_str!("help/rebase.txt"),
        "resize" => include_str!("help/resize.txt"),
        "snapshot" => include_str!("help/snapshot.txt"),
        _ => return None,
    })
}

fn named(text: &str, prog: &Prog) -> String {
    text.replace("qemu-img", &prog.name)
}

/// `COMMAND --help`.
pub fn print_command(prog: &Prog, cmd: &str) {
    if let Some(t) = command_text(cmd) {
        out(&named(t, prog));
    }
}

/// Words wrapped as qemu-img wraps its format list.
fn wrap_words(words: &[&str]) -> String {
    let mut text = String::new();
    let mut line = String::from(" ");
    for w in words {
        if line.len() + 1 + w.len() > 78 && line.len() > 1 {
            text.push_str(&line);
            text.push('\n');
            line = String::from(" ");
        }
        line.push(' ');
        line.push_str(w);
    }
    text.push_str(&line);
    text.push('\n');
    text
}

/// `--help` / `-h` without a command.
pub fn main_text(prog: &Prog) -> String {
    let mut formats: Vec<&str> = imgtool::format::FORMATS.to_vec();
    formats.sort_unstable();
    format!(
        "{}{}\n{}\n\
         See <https://qemu.org/contribute/report-a-bug> for how to report bugs.\n\
         More information on the QEMU project at <https://qemu.org>.\n",
        version_text(prog),
        named(include_str!("help/main.txt"), prog),
        wrap_words(&formats)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps_like_qemu() {
        // qemu-img 10.0.2's list (first lines), wrapped identically.
        let words = "blkdebug blklogwrites blkverify bochs cloop compress copy-before-write \
                     copy-on-read dmg file ftp ftps gluster host_cdrom host_device http https \
                     iscsi iser luks nbd nfs null-aio null-co nvme parallels preallocate qcow \
                     qcow2 qed quorum raw rbd replication snapshot-access ssh throttle vdi vhdx \
                     vmdk vpc vvfat";
        let w: Vec<&str> = words.split_whitespace().collect();
        assert_eq!(
            wrap_words(&w),
            "  blkdebug blklogwrites blkverify bochs cloop compress copy-before-write\n\
             \x20 copy-on-read dmg file ftp ftps gluster host_cdrom host_device http https\n\
             \x20 iscsi iser luks nbd nfs null-aio null-co nvme parallels preallocate qcow\n\
             \x20 qcow2 qed quorum raw rbd replication snapshot-access ssh throttle vdi vhdx\n\
             \x20 vmdk vpc vvfat\n"
        );
    }
}
