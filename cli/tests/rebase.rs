//! `imgtool rebase` against `qemu-img rebase` on identical copies: same
//! exit code and output; the rebased image reads the same through its new
//! chain as qemu-img's (and as before the rebase), its own layer holds the
//! same data, its header names the same backing file, and it passes
//! `qemu-img check`.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

// ------------------------------------------------------------ helpers
// (shared by the rw command tests; each test file carries its own copy)

struct Pair {
    _dir: TempDir,
    q: PathBuf,
    o: PathBuf,
}

/// Two directories prepared identically by `prep` (run once, then copied,
/// so even timestamps inside images are the same).
fn pair(name: &str, prep: impl Fn(&Path)) -> Pair {
    let dir = TempDir::new(name);
    let q = dir.sub("q");
    let o = dir.sub("o");
    prep(&q);
    copy_tree(&q, &o);
    Pair { _dir: dir, q, o }
}

fn copy_tree(from: &Path, to: &Path) {
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

fn is_qcow2(dir: &Path, file: &str) -> bool {
    std::fs::read(dir.join(file))
        .map(|b| b.starts_with(b"QFI\xfb"))
        .unwrap_or(false)
}

/// One layer on its own (its backing file ignored), for qemu-img.
fn layer_spec(dir: &Path, file: &str) -> String {
    format!(
        r#"json:{{"driver":"qcow2","backing":null,"file":{{"driver":"file","filename":"{}"}}}}"#,
        dir.join(file).display()
    )
}

/// Both layers hold the same guest data (`qemu-img compare` on the layers
/// alone; sizes are compared through `info`).
fn assert_layers_equal(p: &Pair, file: &str, what: &str) {
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

fn files_of(dir: &Path) -> Vec<(String, Vec<u8>)> {
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

fn info_normalized(dir: &Path, file: &str) -> Json {
    let mut j = info_json_normalized(dir, file);
    for k in ["date-sec", "date-nsec"] {
        j.remove_everywhere(k);
    }
    j
}

/// Run `args` through qemu-img in `p.q` and imgtool in `p.o`, compare the
/// outcomes, then every file in `files`.
fn differential(p: &Pair, args: &[&str], files: &[&str]) -> (Out, Out) {
    let q_before = files_of(&p.q);
    let o_before = files_of(&p.o);
    let q = qemu_img(&p.q, args);
    assert!(!q.timed_out, "oracle hung:\n{}", q.describe());
    let o = imgtool(&p.o, args);
    // Our name where qemu-img names itself: getopt's "qemu-img CMD:"
    // prefix and the help texts.
    let mut qn = q.clone();
    // QEMU repairs a dirty (lazy refcounts) image on a read-write open and
    // logs it; the library repairs silently (a known difference).
    let repair_log = |l: &&str| {
        l.starts_with("ERROR cluster ")
            || l.starts_with("Repairing cluster ")
            || l.starts_with("Rebuilding refcount structure")
            || l.starts_with("The following inconsistencies were found and repaired:")
            || l.starts_with("    ")
            || l.is_empty()
    };
    let dirty = q.stderr.contains("Rebuilding refcount structure");
    qn.stderr = q
        .stderr
        .lines()
        .filter(|l| !(dirty && repair_log(l)))
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
fn compare_files(p: &Pair, files: &[&str], what: &str) {
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
struct Holder(Child);

impl Holder {
    fn new(dir: &Path, file: &str) -> Holder {
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

// --------------------------------------------------------------- tests

const FILES: &[&str] = &[
    "top.qcow2",
    "mid.qcow2",
    "base.qcow2",
    "base.raw",
    "other.qcow2",
    "other.raw",
];

fn present(p: &Pair) -> Vec<&'static str> {
    FILES
        .iter()
        .copied()
        .filter(|f| p.q.join(f).exists())
        .collect()
}

fn simple_chain(d: &Path) {
    qemu_img_ok(d, &["create", "-q", "-f", "qcow2", "base.qcow2", "10M"]);
    qemu_io(
        d,
        "qcow2",
        "base.qcow2",
        &["write -P 1 0 4M".into(), "write -P 7 6M 1M".into()],
    );
    qemu_img_ok(
        d,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "base.qcow2",
            "-F",
            "qcow2",
            "mid.qcow2",
        ],
    );
    qemu_io(
        d,
        "qcow2",
        "mid.qcow2",
        &["write -P 2 1M 1M".into(), "write -z 2M 64k".into()],
    );
    qemu_img_ok(
        d,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "mid.qcow2",
            "-F",
            "qcow2",
            "top.qcow2",
        ],
    );
    qemu_io(
        d,
        "qcow2",
        "top.qcow2",
        &[
            "write -P 3 3M 2M".into(),
            "write -z 0 64k".into(),
            "write -P 4 100k 1k".into(),
        ],
    );
    others(d);
}

/// Candidate new backing files: longer and shorter than the top, with
/// data where the old chain has data and where it has none.
fn others(d: &Path) {
    qemu_img_ok(d, &["create", "-q", "-f", "qcow2", "other.qcow2", "12M"]);
    qemu_io(
        d,
        "qcow2",
        "other.qcow2",
        &[
            "write -P 1 0 2M".into(),
            "write -P 8 8M 2M".into(),
            "write -P 2 1M 512k".into(),
        ],
    );
    std::fs::write(d.join("other.raw"), mixed_raw(3, 3 * MIB)).unwrap();
}

fn rebase_cases(p_of: impl Fn() -> Pair, top: &'static str) {
    for args in [
        vec!["rebase", "-b", "base.qcow2", "-F", "qcow2", top],
        vec!["rebase", "-b", "mid.qcow2", "-F", "qcow2", top],
        vec!["rebase", "-b", "", top],
        vec!["rebase", "-b", "other.qcow2", "-F", "qcow2", top],
        vec!["rebase", "-b", "other.raw", "-F", "raw", top],
        vec!["rebase", "-c", "-b", "other.qcow2", "-F", "qcow2", top],
        vec!["rebase", "-c", "-b", "", top],
        vec!["rebase", "-b", "other.qcow2", top],
        vec!["rebase", "-u", "-b", "other.qcow2", "-F", "qcow2", top],
        vec!["rebase", "-u", "-b", "", top],
        vec!["rebase", "-u", top],
        vec![
            "rebase",
            "-q",
            "-t",
            "unsafe",
            "-T",
            "writethrough",
            "-b",
            "other.raw",
            "-F",
            "raw",
            top,
        ],
        vec!["rebase", "-U", "-b", "other.qcow2", "-F", "qcow2", top],
    ] {
        let p = p_of();
        let before = qemu_raw_bytes(&p.q, top);
        let files = present(&p);
        differential(&p, &args, &files);
        let after = qemu_raw_bytes(&p.o, top);
        assert_bytes_eq(
            &format!("{args:?}: {top} through its new chain"),
            &qemu_raw_bytes(&p.q, top),
            &after,
        );
        if !args.contains(&"-u") {
            assert_bytes_eq(&format!("{args:?}: content kept"), &before, &after);
        }
    }
}

#[test]
fn simple_chains() {
    rebase_cases(|| pair("rebase_simple", simple_chain), "top.qcow2");
}

#[test]
fn variant_chains() {
    for v in ["chain3", "chain3_raw_base"] {
        rebase_cases(
            || {
                pair(&format!("rebase_{v}"), |d| {
                    build_variant(v, d);
                    others(d);
                })
            },
            "top.qcow2",
        );
    }
}

/// Images without a backing file get one; every variant as the top.
#[test]
fn variants_gain_a_backing_file() {
    // Writing through an external data file is not supported (yet).
    for v in VARIANTS
        .iter()
        .filter(|v| !v.starts_with("chain") && !v.starts_with("data_file"))
    {
        let p = pair(&format!("rebase_gain_{v}"), |d| {
            build_variant(v, d);
            others(d);
        });
        let files = ["img.qcow2", "other.qcow2"];
        differential(
            &p,
            &["rebase", "-b", "other.qcow2", "-F", "qcow2", "img.qcow2"],
            &files,
        );
        assert_bytes_eq(
            &format!("{v}: through the new chain"),
            &qemu_raw_bytes(&p.q, "img.qcow2"),
            &qemu_raw_bytes(&p.o, "img.qcow2"),
        );
        differential(&p, &["rebase", "-b", "", "img.qcow2"], &files);
    }
}

#[test]
fn subdirectory_names() {
    for args in [
        vec!["rebase", "-b", "base.qcow2", "-F", "qcow2", "sub/top.qcow2"],
        vec![
            "rebase",
            "-b",
            "sub/base.qcow2",
            "-F",
            "qcow2",
            "sub/top.qcow2",
        ],
        vec!["rebase", "-b", "nonexist", "-F", "qcow2", "sub/top.qcow2"],
        vec![
            "rebase",
            "-u",
            "-b",
            "../other.qcow2",
            "-F",
            "qcow2",
            "sub/top.qcow2",
        ],
    ] {
        let p = pair("rebase_sub", |d| {
            std::fs::create_dir(d.join("sub")).unwrap();
            simple_chain(&d.join("sub"));
        });
        let q = qemu_img(&p.q, &args);
        let o = imgtool(&p.o, &args);
        assert_outcome_matches(&q, &o);
        let sub = Pair {
            _dir: TempDir::new("unused"),
            q: p.q.join("sub"),
            o: p.o.join("sub"),
        };
        compare_files(
            &sub,
            &["top.qcow2", "mid.qcow2", "base.qcow2"],
            &format!("{args:?}"),
        );
    }
}

#[test]
fn errors() {
    let cases: &[&[&str]] = &[
        &["rebase"],
        &["rebase", "top.qcow2"],
        &["rebase", "-F", "qcow2", "top.qcow2"],
        &["rebase", "-b", "base.qcow2"],
        &["rebase", "-b", "base.qcow2", "x", "y"],
        &["rebase", "-b", "base.qcow2", "nonexist"],
        &["rebase", "-b", "nonexist", "top.qcow2"],
        &["rebase", "-b", "nonexist", "-F", "qcow2", "top.qcow2"],
        &["rebase", "-u", "-b", "nonexist", "top.qcow2"],
        &["rebase", "-b", "top.qcow2", "-F", "qcow2", "top.qcow2"],
        &["rebase", "-b", "base.qcow2", "-F", "foo", "top.qcow2"],
        &["rebase", "-b", "base.qcow2", "-t", "foo", "top.qcow2"],
        &["rebase", "-b", "base.qcow2", "-T", "foo", "top.qcow2"],
        &[
            "rebase",
            "-b",
            "base.qcow2",
            "-F",
            "qcow2",
            "-f",
            "raw",
            "top.qcow2",
        ],
        &["rebase", "-u", "-F", "qcow2", "top.qcow2"],
        &["rebase", "-b", "", "-F", "qcow2", "top.qcow2"],
        &["rebase", "-c", "-b", "", "-f", "raw", "other.raw"],
        &["rebase", "-b", "other.qcow2", "-F", "raw", "top.qcow2"],
        &["rebase", "--f", "top.qcow2"],
        &["rebase", "--b", "x", "top.qcow2"],
        &["rebase", "--c", "top.qcow2"],
        &[
            "rebase",
            "--backing=base.qcow2",
            "--backing-format=qcow2",
            "top.qcow2",
        ],
        &["rebase", "--object", "foo", "-u", "top.qcow2"],
        &["rebase", "-h"],
    ];
    for args in cases {
        let p = pair("rebase_err", simple_chain);
        let files = present(&p);
        differential(&p, args, &files);
    }
}

#[test]
fn long_backing_name() {
    let long = "x".repeat(1100);
    let fits = "y".repeat(1000);
    for name in [&long, &fits] {
        let p = pair("rebase_long", simple_chain);
        let files = present(&p);
        differential(
            &p,
            &["rebase", "-u", "-b", name, "-F", "qcow2", "top.qcow2"],
            &files,
        );
    }
}

#[test]
fn images_in_use() {
    for held in ["top.qcow2", "other.qcow2"] {
        let p = pair("rebase_locked", simple_chain);
        let _hq = Holder::new(&p.q, held);
        let _ho = Holder::new(&p.o, held);
        differential(
            &p,
            &["rebase", "-b", "other.qcow2", "-F", "qcow2", "top.qcow2"],
            &[],
        );
    }
}
