//! `imgtool snapshot` against `qemu-img snapshot` on identical copies:
//! same exit code and output; images that pass `qemu-img check`, whose
//! info (apart from dates and allocation) and guest content equal what
//! qemu-img produced; snapshots we create are usable by qemu-img and
//! snapshots qemu-img creates are usable by us.

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

/// Same qemu-io writes on both sides.
fn both_io(p: &Pair, file: &str, cmds: &[&str]) {
    let cmds: Vec<String> = cmds.iter().map(|s| s.to_string()).collect();
    qemu_io(&p.q, "qcow2", file, &cmds);
    qemu_io(&p.o, "qcow2", file, &cmds);
}

/// `snapshot -l` on both sides, equal apart from the creation dates (the
/// snapshots were taken at different moments).
fn list_without_dates(p: &Pair, f: &str) {
    let strip = |t: &str| -> String {
        t.lines()
            .map(|l| {
                let mut w: Vec<&str> = l.split_whitespace().collect();
                if w.len() >= 7 && w[0] != "ID" {
                    w.drain(w.len() - 4..w.len() - 2);
                }
                w.join(" ") + "\n"
            })
            .collect()
    };
    let q = qemu_img(&p.q, &["snapshot", "-l", f]).expect_ok();
    let o = imgtool(&p.o, &["snapshot", "-l", f]);
    assert!(o.ok() && o.stderr.is_empty(), "{}", o.describe());
    assert_text_eq(
        "snapshot -l without dates",
        &strip(&q.stdout),
        &strip(&o.stdout),
    );
}

fn main_file(dir: &Path) -> &'static str {
    if dir.join("top.qcow2").exists() {
        "top.qcow2"
    } else {
        "img.qcow2"
    }
}

/// Create, overwrite, apply and delete on every variant, each step run by
/// qemu-img on one side and imgtool on the other.
#[test]
fn lifecycle_on_variants() {
    // The lifecycle writes guest data at fixed offsets up to ~3 MiB, so
    // variants too small to hold it (zero or odd tiny sizes) are left out;
    // data-file variants are covered by the variants suite.
    for v in VARIANTS
        .iter()
        .filter(|v| !v.starts_with("data_file") && !v.contains("zero_size") && !v.contains("odd"))
    {
        let p = pair(&format!("snap_{v}"), |d| {
            build_variant(v, d);
        });
        let f = main_file(&p.q);
        let files = [f];
        differential(&p, &["snapshot", "-c", "s1", f], &files);
        both_io(
            &p,
            f,
            &[
                "write -P 0xe1 0 1M",
                "write -z 1M 64k",
                "write -P 0xe2 2500k 300k",
            ],
        );
        differential(&p, &["snapshot", "-c", "s2", f], &files);
        both_io(&p, f, &["write -P 0xe3 512k 1M", "discard 3M 256k"]);
        list_without_dates(&p, f);
        differential(&p, &["snapshot", "-a", "s1", f], &files);
        both_io(&p, f, &["write -P 0xe4 100k 50k"]);
        differential(&p, &["snapshot", "-d", "s1", f], &files);
        differential(&p, &["snapshot", "-a", "s2", f], &files);
        differential(&p, &["snapshot", "-d", "s2", f], &files);
        differential(&p, &["snapshot", f], &files);
    }
}

/// Snapshots imgtool creates, used by qemu-img (and the other way round).
#[test]
fn cross_tool() {
    for opts in [
        "",
        "compat=0.10",
        "cluster_size=4096",
        "extended_l2=on",
        "refcount_bits=4",
    ] {
        let p = pair("snap_cross", |d| qcow2_with_data(d, opts));
        // Ours creates, qemu-img applies and deletes.
        imgtool(&p.o, &["snapshot", "-c", "mine", "img.qcow2"]).expect_ok();
        qemu_img_ok(&p.q, &["snapshot", "-c", "mine", "img.qcow2"]);
        both_io(&p, "img.qcow2", &["write -P 0x99 1M 3M", "write -z 0 64k"]);
        for d in [&p.q, &p.o] {
            qemu_img_ok(d, &["snapshot", "-a", "mine", "img.qcow2"]);
        }
        compare_files(&p, &["img.qcow2"], "qemu-img applied our snapshot");
        for d in [&p.q, &p.o] {
            qemu_img_ok(d, &["snapshot", "-d", "mine", "img.qcow2"]);
        }
        compare_files(&p, &["img.qcow2"], "qemu-img deleted our snapshot");
        // qemu-img creates, ours applies and deletes.
        for d in [&p.q, &p.o] {
            qemu_img_ok(d, &["snapshot", "-c", "theirs", "img.qcow2"]);
        }
        both_io(&p, "img.qcow2", &["write -P 0x98 0 5M"]);
        differential(
            &p,
            &["snapshot", "-a", "theirs", "img.qcow2"],
            &["img.qcow2"],
        );
        differential(
            &p,
            &["snapshot", "-d", "theirs", "img.qcow2"],
            &["img.qcow2"],
        );
    }
}

/// A snapshot taken at another size brings that size back.
#[test]
fn apply_other_size() {
    let p = pair("snap_size", |d| qcow2_with_data(d, ""));
    differential(
        &p,
        &["snapshot", "-c", "small", "img.qcow2"],
        &["img.qcow2"],
    );
    for d in [&p.q, &p.o] {
        qemu_img_ok(d, &["resize", "img.qcow2", "300M"]);
    }
    both_io(&p, "img.qcow2", &["write -P 2 200M 1M", "write -P 3 1M 1M"]);
    differential(&p, &["snapshot", "-c", "big", "img.qcow2"], &["img.qcow2"]);
    differential(
        &p,
        &["snapshot", "-a", "small", "img.qcow2"],
        &["img.qcow2"],
    );
    differential(&p, &["snapshot", "-a", "big", "img.qcow2"], &["img.qcow2"]);
    differential(
        &p,
        &["snapshot", "-d", "small", "img.qcow2"],
        &["img.qcow2"],
    );
    differential(&p, &["snapshot", "-a", "big", "img.qcow2"], &["img.qcow2"]);
}

/// The listing of a table qemu-img wrote (so dates are equal).
#[test]
fn listing() {
    let long = "n".repeat(300);
    let p = pair("snap_list", |d| {
        qcow2_with_data(d, "");
        for n in [
            "s1",
            "s1",
            "1",
            "",
            "a much longer snapshot name than the column",
            &long,
        ] {
            qemu_img_ok(d, &["snapshot", "-c", n, "img.qcow2"]);
        }
        qemu_img_ok(d, &["create", "-q", "-f", "qcow2", "empty.qcow2", "1M"]);
        qemu_img_ok(d, &["create", "-q", "-f", "raw", "r.raw", "1M"]);
    });
    for args in [
        vec!["snapshot", "-l", "img.qcow2"],
        vec!["snapshot", "img.qcow2"],
        vec!["snapshot", "-q", "-l", "img.qcow2"],
        vec!["snapshot", "-U", "-l", "img.qcow2"],
        vec!["snapshot", "-U", "img.qcow2"],
        vec!["snapshot", "--list", "img.qcow2"],
        vec!["snapshot", "-f", "qcow2", "-l", "img.qcow2"],
        vec![
            "snapshot",
            "--image-opts",
            "-l",
            "driver=qcow2,file.filename=img.qcow2",
        ],
        vec!["snapshot", "-l", "empty.qcow2"],
        vec!["snapshot", "-l", "r.raw"],
        vec!["snapshot", "-f", "raw", "-l", "img.qcow2"],
    ] {
        differential(&p, &args, &["img.qcow2"]);
    }
}

/// Names: duplicates are allowed, `-d` deletes the first by name, `-a`
/// takes an ID first, long names are cut to 255 bytes.
#[test]
fn names_and_ids() {
    let long = "n".repeat(300);
    let long255 = "n".repeat(255);
    let p = pair("snap_names", |d| qcow2_with_data(d, ""));
    let steps: Vec<Vec<&str>> = vec![
        vec!["snapshot", "-c", "s1", "img.qcow2"],
        vec!["snapshot", "-c", "s1", "img.qcow2"],
        vec!["snapshot", "-c", "2", "img.qcow2"],
        vec!["snapshot", "-c", "", "img.qcow2"],
        vec!["snapshot", "-c", &long, "img.qcow2"],
        vec!["snapshot", "-d", &long, "img.qcow2"],
        vec!["snapshot", "-a", &long, "img.qcow2"],
        vec!["snapshot", "-a", &long255, "img.qcow2"],
        vec!["snapshot", "-d", &long255, "img.qcow2"],
        vec!["snapshot", "-a", "2", "img.qcow2"],
        vec!["snapshot", "-d", "2", "img.qcow2"],
        vec!["snapshot", "-d", "1", "img.qcow2"],
        vec!["snapshot", "-d", "s1", "img.qcow2"],
        vec!["snapshot", "-a", "s1", "img.qcow2"],
        vec!["snapshot", "-a", "", "img.qcow2"],
        vec!["snapshot", "-d", "", "img.qcow2"],
        vec!["snapshot", "-c", "again", "img.qcow2"],
    ];
    for s in steps {
        differential(&p, &s, &["img.qcow2"]);
        let q = qemu_img_ok(&p.q, &["snapshot", "-l", "img.qcow2"]);
        let o = qemu_img_ok(&p.o, &["snapshot", "-l", "img.qcow2"]);
        let ids = |t: &str| -> Vec<String> {
            t.lines()
                .skip(2)
                .map(|l| {
                    let w: Vec<&str> = l.split_whitespace().collect();
                    format!("{} {}", w.first().unwrap_or(&""), l.len())
                })
                .collect()
        };
        assert_eq!(ids(&q), ids(&o), "snapshot table after {s:?}");
    }
}

#[test]
fn argument_handling() {
    let cases: &[&[&str]] = &[
        &["snapshot"],
        &["snapshot", "a", "b"],
        &["snapshot", "-c", "x", "-d", "y", "img.qcow2"],
        &["snapshot", "-l", "-c", "x", "img.qcow2"],
        &["snapshot", "-c"],
        &["snapshot", "-h"],
        &["snapshot", "--f", "img.qcow2"],
        &["snapshot", "--apply", "img.qcow2"],
        &["snapshot", "--delete", "img.qcow2"],
        &["snapshot", "--delete", "x", "img.qcow2"],
        &["snapshot", "--create=x", "img.qcow2"],
        &["snapshot", "-U", "-c", "x", "img.qcow2"],
        &["snapshot", "-U", "-a", "x", "img.qcow2"],
        &["snapshot", "-a", "nope", "img.qcow2"],
        &["snapshot", "-d", "nope", "img.qcow2"],
        &["snapshot", "-c", "x", "nonexist"],
        &["snapshot", "-l", "nonexist"],
        &["snapshot", "-f", "raw", "-c", "x", "img.qcow2"],
        &["snapshot", "-f", "raw", "-a", "x", "img.qcow2"],
        &["snapshot", "-f", "raw", "-d", "x", "img.qcow2"],
        &["snapshot", "--object", "foo", "-l", "img.qcow2"],
        &["snapshot", "--image-opts", "-f", "qcow2", "-l", "img.qcow2"],
        &["snapshot", "-q", "-c", "quiet", "img.qcow2"],
    ];
    for args in cases {
        let p = pair("snap_args", |d| qcow2_with_data(d, ""));
        differential(&p, args, &["img.qcow2"]);
    }
}

/// refcount_bits=1 cannot count a second reference: qemu-img's error.
#[test]
fn refcount_width_too_small() {
    let p = pair("snap_rc1", |d| qcow2_with_data(d, "refcount_bits=1"));
    differential(&p, &["snapshot", "-c", "s", "img.qcow2"], &["img.qcow2"]);
}

#[test]
fn image_in_use() {
    let p = pair("snap_locked", |d| qcow2_with_data(d, ""));
    let _hq = Holder::new(&p.q, "img.qcow2");
    let _ho = Holder::new(&p.o, "img.qcow2");
    for args in [
        vec!["snapshot", "-c", "x", "img.qcow2"],
        vec!["snapshot", "-l", "img.qcow2"],
        vec!["snapshot", "-U", "-l", "img.qcow2"],
    ] {
        differential(&p, &args, &[]);
    }
}

#[test]
fn help_text() {
    let p = pair("snap_help", |_| {});
    differential(&p, &["snapshot", "--help"], &[]);
}
