//! `imgtool commit` against `qemu-img commit` on identical copies: same
//! exit code and output; every layer afterwards has the guest content (on
//! its own, without its backing file) that qemu-img left in it, the top is
//! emptied the same way, and every qcow2 layer passes `qemu-img check`.

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

/// The allocation of one layer on its own, host offsets removed.
fn layer_map(dir: &Path, file: &str) -> Json {
    let spec = format!(
        r#"json:{{"driver":"qcow2","backing":null,"file":{{"driver":"file","filename":"{file}"}}}}"#
    );
    let t = qemu_img_ok(dir, &["map", "-U", "--output=json", &spec]);
    let mut j = parse_json("qemu-img map", &t);
    j.remove_everywhere("offset");
    j
}

const LAYERS: &[&str] = &["top.qcow2", "mid.qcow2", "base.qcow2", "base.raw"];

fn present(p: &Pair) -> Vec<&'static str> {
    LAYERS
        .iter()
        .copied()
        .filter(|f| p.q.join(f).exists())
        .collect()
}

fn simple_chain(d: &Path, base_size: &str, mid_size: Option<&str>, top_size: Option<&str>) {
    qemu_img_ok(d, &["create", "-q", "-f", "qcow2", "base.qcow2", base_size]);
    qemu_io(
        d,
        "qcow2",
        "base.qcow2",
        &["write -P 1 0 3M".into(), "write -P 7 3M 512k".into()],
    );
    let mut a = vec![
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "base.qcow2",
        "-F",
        "qcow2",
        "mid.qcow2",
    ];
    a.extend(mid_size);
    qemu_img_ok(d, &a);
    qemu_io(
        d,
        "qcow2",
        "mid.qcow2",
        &["write -P 2 1M 1M".into(), "write -z 2M 64k".into()],
    );
    let mut a = vec![
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "mid.qcow2",
        "-F",
        "qcow2",
        "top.qcow2",
    ];
    a.extend(top_size);
    qemu_img_ok(d, &a);
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
}

fn commit_cases(p_of: impl Fn() -> Pair, base: &str) {
    let b = format!("./{base}");
    for args in [
        vec!["commit", "top.qcow2"],
        vec!["commit", "-q", "top.qcow2"],
        vec!["commit", "-d", "top.qcow2"],
        vec!["commit", "-b", base, "top.qcow2"],
        vec!["commit", "-b", &b, "top.qcow2"],
        vec!["commit", "-b", "mid.qcow2", "top.qcow2"],
        vec!["commit", "-b", "mid.qcow2", "-d", "top.qcow2"],
        vec!["commit", "mid.qcow2"],
        vec!["commit", "-t", "unsafe", "-r", "1M", "top.qcow2"],
        vec![
            "commit",
            "--image-opts",
            "driver=qcow2,file.filename=top.qcow2",
        ],
    ] {
        let p = p_of();
        let files = present(&p);
        differential(&p, &args, &files);
        if p.q.join("top.qcow2").exists() {
            assert_eq!(
                layer_map(&p.o, "top.qcow2"),
                layer_map(&p.q, "top.qcow2"),
                "{args:?}: allocation of the top layer"
            );
            for f in ["top.qcow2", "mid.qcow2"] {
                assert_bytes_eq(
                    &format!("{args:?}: {f} through its chain"),
                    &qemu_raw_bytes(&p.q, f),
                    &qemu_raw_bytes(&p.o, f),
                );
            }
        }
    }
}

#[test]
fn chains_of_variants() {
    commit_cases(
        || {
            pair("commit_chain3", |d| {
                build_variant("chain3", d);
            })
        },
        "base.qcow2",
    );
    commit_cases(
        || {
            pair("commit_chain3_raw", |d| {
                build_variant("chain3_raw_base", d);
            })
        },
        "base.raw",
    );
}

#[test]
fn sizes_differ() {
    // Top longer than the base (the base grows), a short middle layer (the
    // area past its end commits as zeros), and a base longer than the top.
    for (base, mid, top) in [
        ("4M", None, Some("12M")),
        ("10M", Some("3M"), Some("10M")),
        ("10M", None, Some("5M")),
        ("10M", Some("6291456"), Some("7000064")),
    ] {
        commit_cases(
            || pair("commit_sizes", |d| simple_chain(d, base, mid, top)),
            "base.qcow2",
        );
    }
}

#[test]
fn raw_base_grows() {
    let p = pair("commit_rawbase", |d| {
        qemu_img_ok(d, &["create", "-q", "-f", "raw", "base.raw", "4M"]);
        qemu_img_ok(
            d,
            &[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-b",
                "base.raw",
                "-F",
                "raw",
                "top.qcow2",
                "8M",
            ],
        );
        qemu_io(d, "qcow2", "top.qcow2", &["write -P 5 0 8M".into()]);
    });
    differential(&p, &["commit", "top.qcow2"], &["top.qcow2", "base.raw"]);
}

/// The top keeps its snapshots; emptying touches only the active state.
#[test]
fn top_with_snapshots() {
    let p = pair("commit_snap", |d| {
        simple_chain(d, "10M", None, None);
        qemu_img_ok(d, &["snapshot", "-c", "s", "top.qcow2"]);
        qemu_io(d, "qcow2", "top.qcow2", &["write -P 9 5M 1M".into()]);
    });
    differential(&p, &["commit", "top.qcow2"], &present(&p));
    for d in [&p.q, &p.o] {
        qemu_img_ok(d, &["snapshot", "-a", "s", "top.qcow2"]);
    }
    compare_files(&p, &present(&p), "after applying the snapshot");
}

#[test]
fn subdirectory_names() {
    for args in [
        vec!["commit", "-b", "base.qcow2", "sub/top.qcow2"],
        vec!["commit", "-b", "sub/base.qcow2", "sub/top.qcow2"],
        vec!["commit", "-b", "../sub/mid.qcow2", "sub/top.qcow2"],
        vec!["commit", "sub/top.qcow2"],
    ] {
        let p = pair("commit_sub", |d| {
            std::fs::create_dir(d.join("sub")).unwrap();
            simple_chain(&d.join("sub"), "10M", None, None);
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
        &["commit"],
        &["commit", "a", "b"],
        &["commit", "base.qcow2"],
        &["commit", "-b", "nonexist", "top.qcow2"],
        &["commit", "-b", "top.qcow2", "top.qcow2"],
        &["commit", "-b", "base.qcow2", "base.qcow2"],
        &["commit", "nonexist"],
        &["commit", "-t", "foo", "top.qcow2"],
        &["commit", "-r", "x", "top.qcow2"],
        &["commit", "-r", "-1", "top.qcow2"],
        &["commit", "-f", "raw", "top.qcow2"],
        &["commit", "-x", "top.qcow2"],
        &["commit", "--object", "foo", "top.qcow2"],
        &["commit", "-h"],
        &["commit", "--help"],
    ];
    for args in cases {
        let p = pair("commit_err", |d| simple_chain(d, "10M", None, None));
        let files = present(&p);
        differential(&p, args, &files);
    }
}

#[test]
fn images_in_use() {
    for held in ["top.qcow2", "base.qcow2"] {
        let p = pair("commit_locked", |d| simple_chain(d, "10M", None, None));
        let _hq = Holder::new(&p.q, held);
        let _ho = Holder::new(&p.o, held);
        differential(&p, &["commit", "-b", "base.qcow2", "top.qcow2"], &[]);
    }
}
