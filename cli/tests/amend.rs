//! `imgtool amend` against `qemu-img amend` on identical copies: same
//! exit code and output; afterwards the same `qemu-img info` (compat,
//! features, refcount width, size, snapshots), the same guest content and
//! a clean `qemu-img check`.

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

fn main_file(dir: &Path) -> &'static str {
    if dir.join("top.qcow2").exists() {
        "top.qcow2"
    } else {
        "img.qcow2"
    }
}

fn all_files(p: &Pair) -> Vec<&'static str> {
    [
        "img.qcow2",
        "top.qcow2",
        "mid.qcow2",
        "base.qcow2",
        "base.raw",
    ]
    .into_iter()
    .filter(|f| p.q.join(f).exists())
    .collect()
}

fn qcow2_with_data(dir: &Path, opts: &str, backing: bool) {
    if backing {
        qemu_img_ok(dir, &["create", "-q", "-f", "qcow2", "base.qcow2", "12M"]);
        qemu_io(dir, "qcow2", "base.qcow2", &["write -P 0x9 0 12M".into()]);
    }
    let mut args = vec!["create", "-q", "-f", "qcow2"];
    if !opts.is_empty() {
        args.extend(["-o", opts]);
    }
    if backing {
        args.extend(["-b", "base.qcow2", "-F", "qcow2"]);
    }
    args.extend(["img.qcow2", "10M"]);
    qemu_img_ok(dir, &args);
    qemu_io(
        dir,
        "qcow2",
        "img.qcow2",
        &[
            "write -P 0x11 0 1M".to_string(),
            "write -z 1M 1M".to_string(),
            "write -z -u 3M 256k".to_string(),
            "write -c -P 0x44 4M 64k".to_string(),
            format!("write -P 0x33 {} 70000", 9 * MIB),
        ],
    );
}

/// Every change amend can make, on every variant.
#[test]
fn variants() {
    // Writing through an external data file is not supported (yet).
    for v in VARIANTS.iter().filter(|v| !v.starts_with("data_file")) {
        for o in [
            "compat=0.10",
            "compat=1.1",
            "compat=v2",
            "lazy_refcounts=on",
            "lazy_refcounts=off",
            "refcount_bits=8",
            "refcount_bits=64",
            "compat=0.10,refcount_bits=16",
            "compat=1.1,lazy_refcounts=on",
            "size=20M",
            "size=1M",
            "size=0",
        ] {
            // qemu-img needs minutes to change the refcount width of these.
            if o.contains("refcount_bits") && matches!(*v, "cluster_2m" | "refcount_1") {
                continue;
            }
            let p = pair(&format!("amend_{v}"), |d| {
                build_variant(v, d);
            });
            let f = main_file(&p.q);
            let files = all_files(&p);
            differential(&p, &["amend", "-o", o, f], &files);
        }
    }
}

#[test]
fn with_and_without_backing() {
    for backing in [false, true] {
        for (create, amend) in [
            ("", "compat=0.10"),
            ("compat=0.10", "compat=1.1"),
            ("", "size=20M"),
            ("", "size=11M,compat=0.10"),
            ("compat=0.10", "size=14M"),
            ("", "size=4M,refcount_bits=2"),
            ("refcount_bits=64", "refcount_bits=4"),
            ("", "refcount_bits=1"),
            ("compression_type=zstd", "compat=0.10"),
            ("lazy_refcounts=on", "compat=0.10"),
            ("refcount_bits=8", "compat=0.10"),
            ("extended_l2=on", "compat=0.10"),
            ("", "backing_file=base.qcow2,backing_fmt=qcow2"),
            ("", "backing_file=base.qcow2"),
            ("", "data_file_raw=off"),
        ] {
            let p = pair("amend_backing", |d| qcow2_with_data(d, create, backing));
            let files = all_files(&p);
            differential(&p, &["amend", "-o", amend, "img.qcow2"], &files);
            assert_bytes_eq(
                &format!("{create} -> {amend}: through the chain"),
                &qemu_raw_bytes(&p.q, "img.qcow2"),
                &qemu_raw_bytes(&p.o, "img.qcow2"),
            );
        }
    }
}

/// Zero clusters in snapshots' tables are expanded too; snapshots of
/// another size block a downgrade.
#[test]
fn with_snapshots() {
    for backing in [false, true] {
        let p = pair("amend_snap", |d| {
            qcow2_with_data(d, "", backing);
            qemu_img_ok(d, &["snapshot", "-c", "s1", "img.qcow2"]);
            qemu_io(
                d,
                "qcow2",
                "img.qcow2",
                &["write -z 0 512k".into(), "write -P 5 6M 1M".into()],
            );
        });
        let files = all_files(&p);
        differential(&p, &["amend", "-o", "refcount_bits=8", "img.qcow2"], &files);
        differential(&p, &["amend", "-o", "compat=0.10", "img.qcow2"], &files);
        for d in [&p.q, &p.o] {
            qemu_img_ok(d, &["snapshot", "-a", "s1", "img.qcow2"]);
        }
        compare_files(&p, &files, "snapshot applied after downgrade");
        differential(&p, &["amend", "-o", "compat=1.1", "img.qcow2"], &files);
        differential(&p, &["amend", "-o", "size=20M", "img.qcow2"], &files);
        differential(&p, &["amend", "-o", "compat=0.10", "img.qcow2"], &files);
    }
}

/// Refcount width changes qemu-img itself is too slow for: our result must
/// be clean for `qemu-img check` and read as before.
#[test]
fn refcount_widths_checked_by_qemu() {
    for v in [
        "cluster_2m",
        "refcount_1",
        "compressed_zlib",
        "internal_snapshots",
    ] {
        for bits in ["1", "2", "16", "64"] {
            let p = pair(&format!("amend_rc_{v}"), |d| {
                build_variant(v, d);
            });
            let f = main_file(&p.o);
            let o = format!("refcount_bits={bits}");
            let out = imgtool(&p.o, &["amend", "-o", &o, f]);
            // Compressed clusters shared by several guest clusters need more
            // than one bit; qemu-img refuses such a width the same way.
            if !out.ok() {
                assert!(
                    out.stderr.contains("Cannot decrease refcount entry width"),
                    "{v} -> {bits}: {}",
                    out.describe()
                );
                continue;
            }
            assert_qemu_check_clean(&p.o, f);
            assert_layers_equal(&p, f, &format!("{v} -> refcount_bits={bits}"));
            let info = qemu_img_ok(&p.o, &["info", f]);
            assert!(info.contains(&format!("refcount bits: {bits}")), "{info}");
        }
    }
}

#[test]
fn option_errors() {
    for o in [
        "compat=foo",
        "refcount_bits=3",
        "refcount_bits=0",
        "refcount_bits=128",
        "refcount_bits=abc",
        "cluster_size=4k",
        "cluster_size=64k",
        "extended_l2=on",
        "compression_type=zstd",
        "preallocation=full",
        "encryption=on",
        "encrypt.format=luks",
        "foo=bar",
        "nocow=on",
        "extent_size_hint=1M",
        "backing_file=x",
        "backing_fmt=qcow2",
        "data_file=x",
        "data_file_raw=on",
        "encrypt.keyslot=1",
        "lazy_refcounts=maybe",
        "size=1x",
        "size=1000",
        "cluster_size=4k,foo=bar",
        "compat=0.10,lazy_refcounts=on",
        "compat=0.10,refcount_bits=8",
        "lazy_refcounts=on,compat=0.10",
        ",",
        "help",
        "?",
        "help,compat=0.10",
    ] {
        let p = pair("amend_opt_err", |d| qcow2_with_data(d, "", false));
        differential(&p, &["amend", "-o", o, "img.qcow2"], &["img.qcow2"]);
    }
}

#[test]
fn argument_handling() {
    let cases: &[&[&str]] = &[
        &["amend"],
        &["amend", "img.qcow2"],
        &["amend", "-o", "help"],
        &["amend", "-f", "qcow2", "-o", "help"],
        &["amend", "-f", "raw", "-o", "help"],
        &["amend", "-f", "foo", "-o", "help"],
        &["amend", "-f", "raw", "-o", "size=1M", "img.qcow2"],
        &["amend", "-o", "compat=0.10", "x", "y"],
        &["amend", "-o", "compat=0.10", "nonexist"],
        &[
            "amend",
            "-o",
            "compat=0.10",
            "-o",
            "lazy_refcounts=off",
            "img.qcow2",
        ],
        &["amend", "-t", "foo", "-o", "compat=0.10", "img.qcow2"],
        &["amend", "-t", "unsafe", "-o", "compat=0.10", "img.qcow2"],
        &["amend", "-U", "-o", "compat=0.10", "img.qcow2"],
        &["amend", "--f", "-o", "compat=0.10", "img.qcow2"],
        &["amend", "--o", "compat=0.10", "img.qcow2"],
        &["amend", "--force", "-q", "-o", "compat=0.10", "img.qcow2"],
        &["amend", "--options=compat=0.10", "img.qcow2"],
        &["amend", "-p", "-o", "lazy_refcounts=on", "img.qcow2"],
        &["amend", "-p", "-o", "compat=0.10", "img.qcow2"],
        &["amend", "-p", "-o", "compat=0.10", "x", "y"],
        &[
            "amend",
            "--image-opts",
            "-o",
            "compat=0.10",
            "driver=qcow2,file.filename=img.qcow2",
        ],
        &["amend", "--object", "foo", "-o", "compat=0.10", "img.qcow2"],
        &["amend", "-h"],
    ];
    for args in cases {
        let p = pair("amend_args", |d| qcow2_with_data(d, "", false));
        differential(&p, args, &["img.qcow2"]);
    }
    let p = pair("amend_v2_progress", |d| {
        qcow2_with_data(d, "compat=0.10", false)
    });
    differential(
        &p,
        &["amend", "-p", "-o", "compat=1.1", "img.qcow2"],
        &["img.qcow2"],
    );
}

#[test]
fn raw_and_locked() {
    let p = pair("amend_raw", |d| {
        qemu_img_ok(d, &["create", "-q", "-f", "raw", "r.raw", "1M"]);
        qcow2_with_data(d, "", false);
    });
    differential(&p, &["amend", "-o", "size=2M", "r.raw"], &["r.raw"]);
    differential(
        &p,
        &["amend", "-f", "raw", "-o", "help", "r.raw"],
        &["r.raw"],
    );
    differential(&p, &["amend", "-o", "help", "r.raw"], &["r.raw"]);
    let _hq = Holder::new(&p.q, "img.qcow2");
    let _ho = Holder::new(&p.o, "img.qcow2");
    differential(&p, &["amend", "-o", "compat=0.10", "img.qcow2"], &[]);
}
