//! The `imgtool` CLI on qcow (v1), QED and VDI images, against qemu-img
//! 10.0.2: info (human and JSON), map, check (and repair, on copies), the
//! `-o help` tables, create with every option (images compared byte for
//! byte, VDI's random UUIDs aside), refused creates, convert to and from
//! these formats, the commands that modify images (on identical copies),
//! and damaged files (same outcome, never a panic or a hang).

mod common;
#[path = "../../tests/fmt1/mod.rs"]
mod fmt1;

use std::path::Path;

use common::*;
use fmt1::*;

const FORMATS: &[&str] = &["qcow", "qed", "vdi"];

fn each_variant(f: impl Fn(&str, &Path, &Built)) {
    for format in FORMATS {
        for v in variants(format) {
            let dir = TempDir::new(&format!("cli-{format}-{v}"));
            let b = build(format, v, dir.path());
            f(format, dir.path(), &b);
        }
    }
}

#[test]
fn info_json_like_qemu() {
    each_variant(|format, d, b| {
        for args in [
            vec!["info", "--output=json", b.file.as_str()],
            vec!["info", "--output=json", "--backing-chain", b.file.as_str()],
            vec!["info", "--output=json", "-f", format, b.file.as_str()],
        ] {
            let q = qemu_img(d, &args).expect_ok();
            let o = imgtool(d, &args);
            assert!(o.ok(), "imgtool {args:?} failed:\n{}", o.describe());
            assert_text_eq(
                &format!("{format}/{}: {args:?}", b.file),
                &json_without_actual_size(&q.stdout),
                &json_without_actual_size(&o.stdout),
            );
        }
    });
}

#[test]
fn info_human_like_qemu() {
    each_variant(|format, d, b| {
        for args in [
            vec!["info", b.file.as_str()],
            vec!["info", "--backing-chain", b.file.as_str()],
        ] {
            let q = qemu_img(d, &args).expect_ok();
            let o = imgtool(d, &args);
            assert!(o.ok(), "imgtool {args:?} failed:\n{}", o.describe());
            assert_text_eq(
                &format!("{format}/{}: {args:?}", b.file),
                &human_without_disk_size(&q.stdout),
                &human_without_disk_size(&o.stdout),
            );
        }
    });
}

#[test]
fn map_like_qemu() {
    each_variant(|_format, d, b| {
        for args in [
            vec!["map", "--output=json", b.file.as_str()],
            vec!["map", b.file.as_str()],
        ] {
            same_as_qemu(d, &args);
        }
    });
}

#[test]
fn check_like_qemu() {
    each_variant(|_format, d, b| {
        same_as_qemu(d, &["check", b.file.as_str()]);
        same_as_qemu(d, &["check", "--output=json", b.file.as_str()]);
        // Repairs run on copies; the repaired files must be identical.
        on_copies(d, &b.file, &["check", "-r", "all", "{}"]);
        on_copies(d, &b.file, &["check", "-r", "leaks", "--output=json", "{}"]);
    });
}

#[test]
fn create_help_like_qemu() {
    let dir = TempDir::new("cli-help");
    for format in FORMATS {
        same_as_qemu(dir.path(), &["create", "-f", format, "-o", "help"]);
        same_as_qemu(dir.path(), &["create", "-f", format, "-o", "help", "x.img"]);
        same_as_qemu(dir.path(), &["create", "-f", format, "-o", "?"]);
    }
}

/// Create with each option through both tools (quietly: the Formatting
/// line is compared separately): same outcome, same image.
#[test]
fn create_like_qemu() {
    for format in FORMATS {
        for (label, opts, size) in create_cases(format) {
            let dir = TempDir::new(&format!("cli-create-{format}-{label}"));
            let d = dir.path();
            create_bases(d);
            let size = size.to_string();
            let mut args = vec!["create", "-q", "-f", format];
            if !opts.is_empty() {
                args.push("-o");
                args.push(opts);
            }
            args.push("{}");
            args.push(&size);
            let q = format!("q.{format}");
            let o = format!("o.{format}");
            let qa: Vec<&str> = args
                .iter()
                .map(|a| if *a == "{}" { &q } else { *a })
                .collect();
            let oa: Vec<&str> = args
                .iter()
                .map(|a| if *a == "{}" { &o } else { *a })
                .collect();
            let qo = qemu_img(d, &qa);
            let oo = imgtool(d, &oa);
            assert_eq!(
                oo.code,
                qo.code,
                "{format}/{label}:\n{}\n{}",
                qo.describe(),
                oo.describe()
            );
            let mut qb = read(&d.join(&q));
            let mut ob = read(&d.join(&o));
            if *format == "vdi" {
                qb[0x188..0x1a8].fill(0);
                ob[0x188..0x1a8].fill(0);
            }
            assert_bytes_eq(&format!("{format}/{label}: image"), &qb, &ob);
            let mut qj = info_json_normalized(d, &q);
            let mut oj = info_json_normalized(d, &o);
            qj.remove_everywhere("filename");
            oj.remove_everywhere("filename");
            assert_eq!(qj, oj, "{format}/{label}: info JSON");
        }
    }
}

/// Creates qemu-img refuses: same exit code and message.
#[test]
fn refused_creates_like_qemu() {
    for format in FORMATS {
        for (label, opts, size) in refused_create_cases(format) {
            let dir = TempDir::new(&format!("cli-refuse-{format}-{label}"));
            let mut args = vec!["create", "-q", "-f", format];
            if !opts.is_empty() {
                args.push("-o");
                args.push(opts);
            }
            args.push("x.img");
            args.push(size);
            same_as_qemu(dir.path(), &args);
        }
    }
}

/// The `Formatting '...'` line needs the CLI's per-format option order and
/// defaults for these formats (cli/src/createopts.rs print_order); the
/// cases without defaults already match.
#[test]
fn formatting_line_without_defaults() {
    let dir = TempDir::new("cli-formatting");
    let d = dir.path();
    create_bases(d);
    same_as_qemu(d, &["create", "-f", "qcow", "a.qcow", "1M"]);
    same_as_qemu(
        d,
        &[
            "create",
            "-f",
            "qcow",
            "-b",
            "base.qcow2",
            "-F",
            "qcow2",
            "b.qcow",
        ],
    );
    same_as_qemu(
        d,
        &["create", "-f", "vdi", "-o", "static=on", "a.vdi", "1M"],
    );
    same_as_qemu(
        d,
        &[
            "create",
            "-f",
            "qed",
            "-o",
            "cluster_size=4k,table_size=2",
            "a.qed",
            "1M",
        ],
    );
}

#[test]
fn formatting_line_with_defaults() {
    let dir = TempDir::new("cli-formatting-defaults");
    let d = dir.path();
    create_bases(d);
    same_as_qemu(d, &["create", "-f", "qed", "a.qed", "1M"]);
    same_as_qemu(d, &["create", "-f", "vdi", "a.vdi", "1M"]);
    same_as_qemu(
        d,
        &[
            "create",
            "-f",
            "qed",
            "-o",
            "table_size=2,nocow=off",
            "b.qed",
            "1M",
        ],
    );
    same_as_qemu(
        d,
        &[
            "create",
            "-f",
            "qcow",
            "-o",
            "preallocation=off,encryption=off",
            "c.qcow",
            "1M",
        ],
    );
}

/// convert -O raw of every variant gives qemu-img's bytes; convert into
/// each format from every variant and from qcow2/raw gives an image with
/// the same contents (qemu-img compare) that qemu-img checks clean.
#[test]
fn convert_like_qemu() {
    each_variant(|format, d, b| {
        let args = ["convert", "-O", "raw", b.file.as_str(), "o.raw"];
        let o = imgtool(d, &args);
        assert!(o.ok(), "{}", o.describe());
        qemu_img_ok(d, &["convert", "-O", "raw", &b.file, "q.raw"]);
        assert_bytes_eq(
            &format!("{format}: convert -O raw"),
            &read(&d.join("q.raw")),
            &read(&d.join("o.raw")),
        );
        qemu_img_ok(d, &["convert", "-O", "qcow2", &b.file, "src.qcow2"]);
        for target in FORMATS {
            for src in [b.file.as_str(), "src.qcow2", "q.raw"] {
                let out = format!("out.{target}");
                let _ = std::fs::remove_file(d.join(&out));
                let o = imgtool(d, &["convert", "-O", target, src, &out]);
                assert!(o.ok(), "{src} -> {target}:\n{}", o.describe());
                assert_qemu_compare_identical(d, src, &out, &[]);
                if *target != "qcow" {
                    let c = qemu_img(d, &["check", &out]);
                    assert!(
                        c.code == Some(0) || (*target == "qed" && c.code == Some(3)),
                        "{src} -> {target}: check\n{}",
                        c.describe()
                    );
                }
            }
        }
    });
}

/// qemu-img writes every cluster of `convert -c -O qcow` and then exits 1
/// without a message (its closing zero-length compressed write is refused
/// by its own qcow driver); imgtool's image must have the same contents.
#[test]
fn convert_compressed_to_qcow() {
    let dir = TempDir::new("cli-convert-c");
    let d = dir.path();
    std::fs::write(d.join("src.raw"), mixed_raw(9, 3 * MIB)).unwrap();
    let q = qemu_img(d, &["convert", "-c", "-O", "qcow", "src.raw", "q.qcow"]);
    let o = imgtool(d, &["convert", "-c", "-O", "qcow", "src.raw", "o.qcow"]);
    assert_outcome_matches(&q, &o);
    assert_qemu_compare_identical(d, "src.raw", "o.qcow", &[]);
}

/// Commands that change images, on identical copies: same outcome, same
/// resulting file.
#[test]
fn modifying_commands_like_qemu() {
    each_variant(|format, d, b| {
        let f = b.file.as_str();
        on_copies(d, f, &["resize", "{}", "+1M"]);
        on_copies(d, f, &["resize", "--shrink", "{}", "1M"]);
        on_copies(d, f, &["resize", "{}", "+1000"]);
        on_copies(d, f, &["resize", "--preallocation=full", "{}", "+1M"]);
        on_copies(d, f, &["snapshot", "-c", "s1", "{}"]);
        on_copies(d, f, &["snapshot", "-l", "{}"]);
        on_copies(d, f, &["amend", "-o", "size=64M", "{}"]);
        if format != "vdi" {
            on_copies(d, f, &["rebase", "-u", "-b", "", "{}"]);
            on_copies(
                d,
                f,
                &["rebase", "-u", "-b", "other.img", "-F", "raw", "{}"],
            );
            on_copies(
                d,
                f,
                &["rebase", "-u", "-b", "other.qcow2", "-F", "qcow2", "{}"],
            );
        }
        if b.convert_opts.contains("backing_file") {
            // commit writes into the base: give each tool its own base.
            let base = b
                .convert_opts
                .split(',')
                .find_map(|o| o.strip_prefix("backing_file="))
                .unwrap_or_default()
                .to_string();
            let orig = read(&d.join(&base));
            on_copies(d, f, &["commit", "-b", &base, "{}"]);
            std::fs::write(d.join(&base), &orig).unwrap();
        }
    });
}

/// commit into the base, then the top is emptied (qcow) or left as it is
/// (QED, which cannot empty itself): both tools, each on its own copy of
/// the chain (same names, in two directories).
#[test]
fn commit_like_qemu() {
    for format in ["qcow", "qed"] {
        let dir = TempDir::new(&format!("cli-commit-{format}"));
        let top = format!("top.{format}");
        for who in ["q", "o"] {
            let d = dir.sub(who);
            data_files(&d, 3);
            qemu_img_ok(&d, &["create", "-q", "-f", "qcow2", "base.qcow2", "4M"]);
            qemu_io(&d, "qcow2", "base.qcow2", &["write -s t1.bin 0 1M".into()]);
            qemu_img_ok(
                &d,
                &[
                    "create",
                    "-q",
                    "-f",
                    format,
                    "-b",
                    "base.qcow2",
                    "-F",
                    "qcow2",
                    &top,
                ],
            );
            qemu_io(
                &d,
                format,
                &top,
                &["write -s r1.bin 100k 300k".into(), "write -z 2M 64k".into()],
            );
        }
        let (qd, od) = (dir.join("q"), dir.join("o"));
        let q = qemu_img(&qd, &["commit", &top]);
        let o = imgtool(&od, &["commit", &top]);
        assert_outcome_matches(&q, &o);
        assert_bytes_eq(
            &format!("{format}: top after commit"),
            &read(&qd.join(&top)),
            &read(&od.join(&top)),
        );
        assert_qemu_compare_identical(&dir.join(""), "q/base.qcow2", "o/base.qcow2", &[]);
    }
}

/// Damaged files: `info` and `convert -O raw` end as qemu-img's do (exit
/// code and message), `check` too for QED and VDI; never a panic or a hang.
#[test]
fn damaged_files_like_qemu() {
    for format in FORMATS {
        let dir = TempDir::new(&format!("cli-bad-{format}"));
        let d = dir.path();
        let (good, cases) = build_good(format, d);
        for b in &cases {
            let name = make_bad(d, &good, b);
            same_as_qemu(d, &["info", "-f", format, &name]);
            same_as_qemu(d, &["info", "-f", format, "--output=json", &name]);
            let q = qemu_img(d, &["convert", "-f", format, "-O", "raw", &name, "q.raw"]);
            let o = imgtool(d, &["convert", "-f", format, "-O", "raw", &name, "o.raw"]);
            assert_eq!(
                o.code,
                q.code,
                "{}: convert\n{}\n{}",
                b.name,
                q.describe(),
                o.describe()
            );
            assert_text_eq(
                &format!("{}: convert stderr", b.name),
                &as_imgtool(&q.stderr),
                &o.stderr,
            );
            if q.ok() {
                assert_bytes_eq(b.name, &read(&d.join("q.raw")), &read(&d.join("o.raw")));
            }
            // Files qemu-img's check cannot open: see check_on_unopenable_files.
            let opens = !qemu_img(d, &["check", "-f", format, &name])
                .stderr
                .contains("Could not open");
            if *format != "qcow" && opens {
                same_as_qemu(d, &["check", "-f", format, &name]);
                same_as_qemu(d, &["check", "-f", format, "--output=json", &name]);
                on_copies(d, &name, &["check", "-f", format, "-r", "all", "{}"]);
            }
        }
    }
}

/// `check` on a file qemu-img's check cannot open: an unsupported feature
/// or version, or a missing backing file: exit 1 with the open's message.
#[test]
fn check_on_unopenable_files() {
    for format in ["qed", "vdi"] {
        let dir = TempDir::new(&format!("cli-bad-check-{format}"));
        let d = dir.path();
        let (good, cases) = build_good(format, d);
        for b in &cases {
            let name = make_bad(d, &good, b);
            let q = qemu_img(d, &["check", "-f", format, &name]);
            if q.stderr.contains("Could not open") {
                same_as_qemu(d, &["check", "-f", format, &name]);
            }
        }
    }
}

/// qemu-img cannot measure for these formats ("Block driver 'qed' does not
/// support size measurement").
#[test]
fn measure_refused_like_qemu() {
    let dir = TempDir::new("cli-measure");
    for format in FORMATS {
        same_as_qemu(dir.path(), &["measure", "-O", format, "--size", "1G"]);
    }
}

/// Measuring these formats as sources (for a qcow2 or raw target) works.
#[test]
fn measure_sources_like_qemu() {
    each_variant(|_format, d, b| {
        same_as_qemu(d, &["measure", "-O", "qcow2", b.file.as_str()]);
        same_as_qemu(
            d,
            &["measure", "-O", "raw", "--output=json", b.file.as_str()],
        );
    });
}
