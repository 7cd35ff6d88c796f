//! `imgtool resize` against `qemu-img resize` run on an identical copy:
//! same exit code, stdout and stderr; on success the same guest content
//! (each layer on its own), the same `qemu-img info` (apart from allocation)
//! and a clean `qemu-img check`; on failure our files are untouched
//! wherever qemu-img left its own untouched.

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

fn qcow2_with_data(dir: &Path, opts: &str) {
    let mut args = vec!["create", "-q", "-f", "qcow2"];
    if !opts.is_empty() {
        args.extend(["-o", opts]);
    }
    args.extend(["img.qcow2", "10M"]);
    qemu_img_ok(dir, &args);
    qemu_io(
        dir,
        "qcow2",
        "img.qcow2",
        &[
            "write -P 0x11 0 3M".to_string(),
            "write -P 0x22 4M 1M".to_string(),
            "write -z 6M 1M".to_string(),
            format!("write -P 0x33 {} 70000", 9 * MIB),
        ],
    );
}

fn raw_with_data(dir: &Path) {
    std::fs::write(dir.join("img.raw"), mixed_raw(5, 5 * MIB as usize as u64)).unwrap();
}

#[test]
fn qcow2_grow_and_shrink() {
    for opts in [
        "",
        "compat=0.10",
        "cluster_size=512",
        "cluster_size=2M",
        "extended_l2=on",
        "refcount_bits=1",
        "refcount_bits=64",
        "lazy_refcounts=on",
        "preallocation=metadata",
    ] {
        for size in [
            "+1M",
            "64M",
            "500M",
            "10M",
            "+0",
            "3145728",
            "3146240",
            "--shrink 3146240",
            "--shrink -1M",
            "--shrink 1M",
            "--shrink 512",
            "--shrink 9M",
        ] {
            let p = pair("resize_qcow2", |d| qcow2_with_data(d, opts));
            let mut args = vec!["resize"];
            args.extend(size.split(' '));
            args.insert(args.len() - 1, "img.qcow2");
            differential(&p, &args, &["img.qcow2"]);
            // Growing again after a shrink keeps qemu-img's view of the tail.
            differential(&p, &["resize", "img.qcow2", "12M"], &["img.qcow2"]);
        }
    }
}

#[test]
fn qcow2_variants_shrink() {
    // Writing through an external data file is not supported (yet).
    for v in VARIANTS.iter().filter(|v| !v.starts_with("data_file")) {
        let p = pair(&format!("resize_{v}"), |d| {
            build_variant(v, d);
        });
        let file = if v.starts_with("chain") {
            "top.qcow2"
        } else {
            "img.qcow2"
        };
        let all: Vec<&str> = [
            "img.qcow2",
            "top.qcow2",
            "mid.qcow2",
            "base.qcow2",
            "base.raw",
        ]
        .into_iter()
        .filter(|f| p.q.join(f).exists())
        .collect();
        differential(&p, &["resize", "--shrink", file, "2000000"], &all);
        differential(&p, &["resize", "--shrink", file, "2000896"], &all);
        differential(&p, &["resize", file, "+3M"], &all);
        differential(&p, &["resize", "-q", file, "+200M"], &all);
    }
}

#[test]
fn qcow2_preallocation() {
    for mode in ["off", "metadata", "falloc", "full"] {
        let p = pair("resize_prealloc", |d| qcow2_with_data(d, ""));
        let pa = format!("--preallocation={mode}");
        differential(&p, &["resize", &pa, "img.qcow2", "+3M"], &["img.qcow2"]);
        differential(&p, &["resize", &pa, "img.qcow2", "13M"], &["img.qcow2"]);
    }
}

/// Growing over a longer backing file shows zeros, not the backing file;
/// v2 cannot and refuses.
#[test]
fn grow_over_longer_backing() {
    for compat in ["1.1", "0.10"] {
        for start in ["4M", "4000256"] {
            let p = pair("resize_backing", |d| {
                qemu_img_ok(d, &["create", "-q", "-f", "qcow2", "base.qcow2", "10M"]);
                qemu_io(d, "qcow2", "base.qcow2", &["write -P 0x5a 0 10M".into()]);
                let o = format!("compat={compat}");
                qemu_img_ok(
                    d,
                    &[
                        "create",
                        "-q",
                        "-f",
                        "qcow2",
                        "-o",
                        &o,
                        "-b",
                        "base.qcow2",
                        "-F",
                        "qcow2",
                        "top.qcow2",
                        start,
                    ],
                );
                qemu_io(d, "qcow2", "top.qcow2", &["write -P 1 0 64k".into()]);
            });
            differential(
                &p,
                &["resize", "top.qcow2", "8M"],
                &["top.qcow2", "base.qcow2"],
            );
            let raw = qemu_raw_bytes(&p.o, "top.qcow2");
            assert_bytes_eq(
                "top.qcow2 through its chain",
                &qemu_raw_bytes(&p.q, "top.qcow2"),
                &raw,
            );
        }
    }
}

#[test]
fn raw_grow_and_shrink() {
    for args in [
        vec!["-f", "raw", "img.raw", "+1M"],
        vec!["img.raw", "+1M"],
        vec!["-f", "raw", "img.raw", "7M"],
        vec!["-f", "raw", "--shrink", "img.raw", "3001"],
        vec!["-f", "raw", "--shrink", "img.raw", "-1M"],
        vec!["-f", "raw", "img.raw", "-1M"],
        vec!["-f", "raw", "img.raw", "5001"],
        vec!["-f", "raw", "--preallocation=falloc", "img.raw", "+1M"],
        vec!["-f", "raw", "--preallocation=full", "img.raw", "+1M"],
        vec!["-f", "raw", "--preallocation=metadata", "img.raw", "+1M"],
        vec!["-f", "raw", "--preallocation=full", "img.raw", "1M"],
    ] {
        let p = pair("resize_raw", raw_with_data);
        let mut a = vec!["resize"];
        a.extend(args);
        differential(&p, &a, &["img.raw"]);
    }
    // A length that is not a whole number of sectors.
    let p = pair("resize_raw_odd", |d| {
        std::fs::write(d.join("img.raw"), vec![7u8; 5001]).unwrap()
    });
    differential(&p, &["resize", "-f", "raw", "img.raw", "+0"], &["img.raw"]);
}

#[test]
fn argument_handling() {
    let cases: &[&[&str]] = &[
        &["resize"],
        &["resize", "img.qcow2"],
        &["resize", "img.qcow2", "1M", "2M"],
        &["resize", "img.qcow2", "1M", "x"],
        &["resize", "-h"],
        &["resize", "img.qcow2", "-h"],
        &["resize", "-q", "img.qcow2"],
        &["resize", "img.qcow2", "-q", "12M"],
        &["resize", "img.qcow2", "12M", "-q"],
        &["resize", "--shrink", "img.qcow2", "-1M", "-q"],
        &["resize", "img.qcow2", "-1M", "--shrink"],
        &["resize", "img.qcow2", "--shrink", "-1M"],
        &["resize", "img.qcow2", "--shrink", "--", "-1M"],
        &["resize", "--", "img.qcow2", "13M"],
        &["resize", "-1M", "img.qcow2", "--shrink"],
        &["resize", "img.qcow2", "-1M", "-2M"],
        &["resize", "img.qcow2", "-x"],
        &["resize", "-U", "img.qcow2", "1M"],
        &["resize", "--preallocation", "img.qcow2"],
        &["resize", "--preallocation=foo", "nonexist", "1M"],
        &["resize", "--pre=off", "img.qcow2", "+1M"],
        &["resize", "--sh", "img.qcow2", "-1M"],
        &["resize", "--object", "foo", "img.qcow2", "14M"],
        &["resize", "--format", "qcow2", "img.qcow2", "+64k"],
        &["resize", "--image-opts", "img.qcow2", "1M"],
        &[
            "resize",
            "--image-opts",
            "driver=qcow2,file.filename=img.qcow2",
            "12M",
        ],
        &[
            "resize",
            "-f",
            "qcow2",
            "--image-opts",
            "driver=qcow2,file.filename=img.qcow2",
            "12M",
        ],
        &["resize", "-0x100000"],
        &["resize", "img.qcow2", "-0x100000"],
        &["resize", "--shrink", "img.qcow2", "-0x100000"],
    ];
    for args in cases {
        let p = pair("resize_args", |d| qcow2_with_data(d, ""));
        differential(&p, args, &["img.qcow2"]);
    }
}

#[test]
fn bad_sizes() {
    for size in [
        "1x",
        "+",
        "-",
        "+-1",
        "+-1M",
        "++1M",
        "+ 1M",
        "1.5M",
        "0",
        "-10M",
        "+8E",
        "+9E",
        "16E",
        "9000P",
        "1M1",
        "+1e3",
        "+1b",
        "+0x10",
        "+1.5k",
        "18446744073709551615",
        "+18446744073709551615",
        "+18446744073709551616",
        "+9223372036854775807",
        "1000",
    ] {
        let p = pair("resize_sizes", |d| qcow2_with_data(d, ""));
        differential(&p, &["resize", "img.qcow2", size], &["img.qcow2"]);
        let p = pair("resize_sizes_shrink", |d| qcow2_with_data(d, ""));
        differential(
            &p,
            &["resize", "--shrink", "img.qcow2", size],
            &["img.qcow2"],
        );
    }
}

#[test]
fn bad_input() {
    let p = pair("resize_bad", |d| {
        qcow2_with_data(d, "");
        std::fs::write(d.join("r.raw"), vec![0u8; 65536]).unwrap();
        std::fs::create_dir(d.join("adir")).unwrap();
    });
    for args in [
        vec!["resize", "nonexist", "1M"],
        vec!["resize", "-f", "qcow2", "nonexist", "1M"],
        vec!["resize", "-f", "qcow2", "r.raw", "1M"],
        vec!["resize", "adir", "1M"],
        vec!["resize", "-f", "raw", "img.qcow2", "+1M"],
    ] {
        differential(&p, &args, &["img.qcow2"]);
    }
}

#[test]
fn v2_with_snapshots_refuses() {
    let p = pair("resize_v2snap", |d| {
        qcow2_with_data(d, "compat=0.10");
        qemu_img_ok(d, &["snapshot", "-c", "s", "img.qcow2"]);
    });
    differential(&p, &["resize", "img.qcow2", "20M"], &["img.qcow2"]);
    differential(
        &p,
        &["resize", "--shrink", "img.qcow2", "5M"],
        &["img.qcow2"],
    );
}

#[test]
fn v3_with_snapshots_shrinks() {
    let p = pair("resize_v3snap", |d| {
        qcow2_with_data(d, "");
        qemu_img_ok(d, &["snapshot", "-c", "s", "img.qcow2"]);
        qemu_io(d, "qcow2", "img.qcow2", &["write -P 0x44 8M 1M".into()]);
    });
    differential(
        &p,
        &["resize", "--shrink", "img.qcow2", "5M"],
        &["img.qcow2"],
    );
    differential(&p, &["resize", "img.qcow2", "30M"], &["img.qcow2"]);
    // The snapshot still holds the old data: qemu-img can go back to it.
    for d in [&p.q, &p.o] {
        qemu_img_ok(d, &["snapshot", "-a", "s", "img.qcow2"]);
    }
    compare_files(&p, &["img.qcow2"], "after applying the snapshot");
}

#[test]
fn image_in_use() {
    let p = pair("resize_locked", |d| qcow2_with_data(d, ""));
    let _hq = Holder::new(&p.q, "img.qcow2");
    let _ho = Holder::new(&p.o, "img.qcow2");
    differential(&p, &["resize", "img.qcow2", "+1M"], &[]);
}

#[test]
fn help_text() {
    let p = pair("resize_help", |_| {});
    differential(&p, &["resize", "--help"], &[]);
}
