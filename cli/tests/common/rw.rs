//! The harness of the tests of commands that change images (amend,
//! commit, rebase, resize, snapshot): two identically prepared
//! directories, one command run through qemu-img in one and imgtool in the
//! other, and a comparison of the outcomes and of the resulting files.

use super::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Pair {
    pub _dir: TempDir,
    pub q: PathBuf,
    pub o: PathBuf,
}

/// Two directories prepared identically by `prep` (run once, then copied,
/// so even timestamps inside images are the same).
pub fn pair(name: &str, prep: impl Fn(&Path)) -> Pair {
    let dir = TempDir::new(name);
    let q = dir.sub("q");
    let o = dir.sub("o");
    prep(&q);
    copy_tree(&q, &o);
    Pair { _dir: dir, q, o }
}

pub fn copy_tree(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.path().is_dir() {
            std::fs::create_dir(&dst).unwrap();
            copy_tree(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), dst).unwrap();
        }
    }
}

pub fn is_qcow2(dir: &Path, file: &str) -> bool {
    std::fs::read(dir.join(file))
        .map(|b| b.starts_with(b"QFI\xfb"))
        .unwrap_or(false)
}

/// One layer on its own (its backing file ignored), for qemu-img.
pub fn layer_spec(dir: &Path, file: &str) -> String {
    format!(
        r#"json:{{"driver":"qcow2","backing":null,"file":{{"driver":"file","filename":"{}"}}}}"#,
        dir.join(file).display()
    )
}

/// Both layers hold the same guest data (`qemu-img compare` on the layers
/// alone; sizes are compared through `info`).
pub fn assert_layers_equal(p: &Pair, file: &str, what: &str) {
    if !is_qcow2(&p.q, file) {
        assert_bytes_eq(
            &format!("{what}: content of {file}"),
            &read(&p.q.join(file)),
            &read(&p.o.join(file)),
        );
        return;
    }
    let (a, b) = (layer_spec(&p.q, file), layer_spec(&p.o, file));
    let c = qemu_img(&p.q, &["compare", "-U", &a, &b]);
    assert!(
        c.ok() && c.stdout.contains("Images are identical."),
        "{what}: guest content of {file} differs:\n{}",
        c.describe()
    );
}

pub fn files_of(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            (!e.path().is_dir()).then(|| (name, read(&e.path())))
        })
        .collect();
    v.sort();
    v
}

pub fn info_normalized(dir: &Path, file: &str) -> Json {
    let mut j = info_json_normalized(dir, file);
    for k in ["date-sec", "date-nsec"] {
        j.remove_everywhere(k);
    }
    j
}

/// Run `args` through qemu-img in `p.q` and imgtool in `p.o`, compare the
/// outcomes, then every file in `files`.
pub fn differential(p: &Pair, args: &[&str], files: &[&str]) -> (Out, Out) {
    let q_before = files_of(&p.q);
    let o_before = files_of(&p.o);
    let q = qemu_img(&p.q, args);
    assert!(!q.timed_out, "oracle hung:\n{}", q.describe());
    let o = imgtool(&p.o, args);
    // Our name where qemu-img names itself: getopt's "qemu-img CMD:"
    // prefix and the help texts.
    let mut qn = q.clone();
    // (A dirty lazy-refcounts image is repaired on a read-write open, and
    // the repair's log must match too.)
    qn.stderr = q
        .stderr
        .lines()
        .map(|l| match l.strip_prefix("qemu-img ") {
            Some(r) => format!("imgtool {r}\n"),
            None => format!("{l}\n"),
        })
        .collect();
    if args.iter().any(|a| *a == "-h" || *a == "--help") {
        qn.stdout = q.stdout.replace("qemu-img", "imgtool");
    }
    assert_outcome_matches(&qn, &o);
    if !q.ok() && files_of(&p.q) == q_before {
        assert!(
            files_of(&p.o) == o_before,
            "{args:?}: qemu-img left its files untouched, imgtool changed them"
        );
    }
    compare_files(p, files, &format!("{args:?}"));
    (q, o)
}

/// Same layer contents, same info, clean check wherever qemu-img's is.
pub fn compare_files(p: &Pair, files: &[&str], what: &str) {
    for f in files {
        assert_eq!(
            p.q.join(f).exists(),
            p.o.join(f).exists(),
            "{what}: {f} exists on one side only"
        );
        if !p.q.join(f).exists() {
            continue;
        }
        assert_layers_equal(p, f, what);
        if !is_qcow2(&p.q, f) {
            assert_eq!(
                std::fs::metadata(p.q.join(f)).unwrap().len(),
                std::fs::metadata(p.o.join(f)).unwrap().len(),
                "{what}: length of {f}"
            );
            continue;
        }
        let qc = qemu_img(&p.q, &["check", f]);
        if qc.ok() {
            assert_qemu_check_clean(&p.o, f);
        } else {
            let oc = qemu_img(&p.o, &["check", f]);
            assert_ne!(
                oc.code,
                Some(2),
                "{what}: {f} is corrupt:\n{}",
                oc.describe()
            );
        }
        assert_eq!(
            info_normalized(&p.o, f),
            info_normalized(&p.q, f),
            "{what}: qemu-img info of {f}"
        );
    }
}

/// A qemu-io process holding `file` open read-write (so its locks are
/// taken) until killed.
pub struct Holder(Child);

impl Holder {
    pub fn new(dir: &Path, file: &str) -> Holder {
        // Our probe (`qemu-img info`) briefly takes a read lock itself; if
        // qemu-io starts in that instant it loses the race for the write
        // lock and exits. Start it again in that case.
        for _ in 0..20 {
            if let Some(h) = Self::try_new(dir, file) {
                return h;
            }
        }
        panic!("qemu-io never took the lock on {file}");
    }

    fn try_new(dir: &Path, file: &str) -> Option<Holder> {
        let log = dir.join(format!("{file}.holder.log"));
        let child = Command::new("qemu-io")
            .current_dir(dir)
            .args(["-c", "sleep 600000", file])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("holder log"))
            .spawn()
            .expect("spawn qemu-io");
        let mut h = Holder(child);
        for _ in 0..3000 {
            if let Ok(Some(st)) = h.0.try_wait() {
                let msg = std::fs::read_to_string(&log).unwrap_or_default();
                if msg.contains("lock") {
                    return None;
                }
                panic!("qemu-io holding {file} exited ({st}): {msg}");
            }
            let o = qemu_img(dir, &["info", file]);
            if !o.ok() && o.stderr.contains("lock") {
                let _ = std::fs::remove_file(&log);
                return Some(h);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("qemu-io never took the lock on {file}");
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
