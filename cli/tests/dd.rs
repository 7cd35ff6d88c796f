//! `imgtool dd` against `qemu-img dd`: each runs in its own copy of the
//! same directory; exit code, stdout and stderr must match, and so must
//! the output image (format, virtual size, guest bytes; a clean check).

mod common;

use common::*;
use std::path::Path;

fn inputs(d: &Path) {
    qemu_img_ok(d, &["create", "-q", "-f", "raw", "r.raw", "1M"]);
    qemu_io(
        d,
        "raw",
        "r.raw",
        &["write -P 1 100k 10k".into(), "write -P 2 700k 3".into()],
    );
    std::fs::write(d.join("odd.raw"), random_bytes(5, 70001)).unwrap();
    std::fs::write(d.join("mixed.raw"), mixed_raw(6, 3 * MIB)).unwrap();
    qemu_img_ok(d, &["create", "-q", "-f", "qcow2", "b.qcow2", "4M"]);
    qemu_io(
        d,
        "qcow2",
        "b.qcow2",
        &["write -P 3 0 128k".into(), "write -P 4 2M 4k".into()],
    );
    qemu_img_ok(
        d,
        &[
            "create", "-q", "-f", "qcow2", "-b", "b.qcow2", "-F", "qcow2", "t.qcow2", "6M",
        ],
    );
    qemu_io(d, "qcow2", "t.qcow2", &["write -P 5 64k 64k".into()]);
    qemu_img_ok(d, &["convert", "-c", "-O", "qcow2", "mixed.raw", "c.qcow2"]);
}

/// Run `args` with both tools and compare everything they leave behind.
fn same_dd(name: &str, args: &[&str]) {
    let dir = TempDir::new(&format!("dd_{name}"));
    let qd = dir.sub("q");
    let od = dir.sub("o");
    inputs(&qd);
    inputs(&od);
    let q = qemu_img(&qd, args);
    let mut q2 = q.clone();
    q2.stderr = q
        .stderr
        .lines()
        .map(|l| match l.strip_prefix("qemu-img ") {
            Some(r) => format!("imgtool {r}\n"),
            None => format!("{l}\n"),
        })
        .collect();
    if args.iter().any(|a| *a == "-h" || *a == "--help") {
        q2.stdout = q.stdout.replace("qemu-img", "imgtool");
    }
    let o = imgtool(&od, args);
    assert_outcome_matches(&q2, &o);
    let names = |d: &Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(&qd), names(&od), "{args:?}: files left behind differ");
    for f in names(&qd) {
        let qi = qemu_img(&qd, &["info", "--output=json", &f]);
        let oi = qemu_img(&od, &["info", "--output=json", &f]);
        assert_eq!(qi.code, oi.code, "{args:?}: {f} opens differently");
        if !qi.ok() {
            continue;
        }
        let field = |t: &str, k: &str| parse_json("info", t).get(k).cloned();
        for k in ["format", "virtual-size"] {
            assert_eq!(
                field(&qi.stdout, k),
                field(&oi.stdout, k),
                "{args:?}: {f} {k}"
            );
        }
        assert_bytes_eq(
            &format!("{args:?}: guest bytes of {f}"),
            &guest_bytes(&qd, &f),
            &guest_bytes(&od, &f),
        );
        let qcow2 = field(&oi.stdout, "format") == Some(Json::Str("qcow2".into()));
        if qcow2 && qemu_img(&qd, &["check", &f]).ok() {
            assert_qemu_check_clean(&od, &f);
        }
    }
}

/// `convert -O raw` output, or the error text when qemu-img cannot read it.
fn guest_bytes(d: &Path, f: &str) -> Vec<u8> {
    let out = format!("{f}.ref.raw");
    let o = qemu_img(d, &["convert", "-O", "raw", f, &out]);
    if !o.ok() {
        return o.stderr.into_bytes();
    }
    let v = read(&d.join(&out));
    let _ = std::fs::remove_file(d.join(&out));
    v
}

#[test]
fn dd_copies() {
    let cases: &[&[&str]] = &[
        &["dd", "if=r.raw", "of=o.raw"],
        &["dd", "if=r.raw", "of=o.raw", "bs=1000", "count=3"],
        &["dd", "if=r.raw", "of=o.raw", "bs=4k", "skip=1", "count=3"],
        &["dd", "if=r.raw", "of=o.raw", "bs=4k", "skip=30"],
        &["dd", "if=r.raw", "of=o.raw", "skip=2047"],
        &["dd", "if=r.raw", "of=o.raw", "skip=2048"],
        &["dd", "if=r.raw", "of=o.raw", "count=0"],
        &["dd", "if=r.raw", "of=o.raw", "bs=1.5k"],
        &["dd", "if=r.raw", "of=o.raw", "bs=3M"],
        &["dd", "if=r.raw", "if=b.qcow2", "of=o.raw"],
        &[
            "dd",
            "-O",
            "qcow2",
            "if=r.raw",
            "of=o.qcow2",
            "bs=64k",
            "skip=2",
            "count=3",
        ],
        &["dd", "-O", "qcow2", "if=t.qcow2", "of=o.qcow2"],
        &[
            "dd",
            "-O",
            "raw",
            "if=t.qcow2",
            "of=o.raw",
            "bs=3000",
            "skip=7",
        ],
        &["dd", "if=odd.raw", "of=o.raw", "bs=7"],
        &["dd", "if=odd.raw", "of=o.raw", "bs=4096", "count=17"],
        &[
            "dd",
            "-O",
            "qcow2",
            "if=c.qcow2",
            "of=o.qcow2",
            "bs=1M",
            "count=2",
        ],
        &[
            "dd",
            "-f",
            "qcow2",
            "if=c.qcow2",
            "of=o.raw",
            "bs=64k",
            "skip=5",
        ],
        &["dd", "-U", "if=mixed.raw", "of=o.raw", "bs=123457"],
        &[
            "dd",
            "--image-opts",
            "if=driver=raw,file.filename=r.raw",
            "of=o.raw",
        ],
        &[
            "dd",
            "--object",
            "secret,id=s,data=x",
            "if=r.raw",
            "of=o.raw",
        ],
        &["dd", "if=r.raw", "of=b.qcow2"],
        &["dd", "if=b.qcow2", "of=b.qcow2"],
    ];
    for (i, c) in cases.iter().enumerate() {
        same_dd(&format!("copy{i}"), c);
    }
}

#[test]
fn dd_errors() {
    let cases: &[&[&str]] = &[
        &["dd"],
        &["dd", "if=r.raw"],
        &["dd", "of=o.raw"],
        &["dd", "if=r.raw", "of=o.raw", "bs=0"],
        &["dd", "if=r.raw", "of=o.raw", "bs=2G"],
        &["dd", "if=r.raw", "of=o.raw", "bs=1x"],
        &["dd", "if=r.raw", "of=o.raw", "count=-1"],
        &["dd", "if=r.raw", "of=o.raw", "count=1e3"],
        &["dd", "if=r.raw", "of=o.raw", "skip=x"],
        &[
            "dd",
            "if=r.raw",
            "of=o.raw",
            "skip=9999999999999999",
            "bs=4k",
        ],
        &["dd", "if=r.raw", "of=o.raw", "foo=1"],
        &["dd", "if=r.raw", "of=o.raw", "junk"],
        &["dd", "if=r.raw", "of=o.raw", "BS=1k"],
        &["dd", "junk", "bs=0"],
        &["dd", "bs=0", "junk"],
        &["dd", "-O", "foo", "if=r.raw", "of=o.raw"],
        &["dd", "-O", "dmg", "if=r.raw", "of=o.raw"],
        &["dd", "-O", "foo", "if=nonexist", "of=o.raw"],
        &["dd", "-x", "if=r.raw", "of=o.raw"],
        &["dd", "-O"],
        &["dd", "--foo", "if=r.raw", "of=o.raw"],
        &["dd", "if=nonexist", "of=o.raw"],
        &["dd", "if=r.raw", "of=nodir/o.raw"],
        &["dd", "if=r.raw", "of="],
        &["dd", "-f", "qcow2", "if=r.raw", "of=o.raw"],
        &["dd", "--image-opts", "-f", "raw", "if=r.raw", "of=o.raw"],
        &["dd", "--object", "foo", "if=r.raw", "of=o.raw"],
        &["dd", "--help"],
        &["dd", "-h"],
    ];
    for (i, c) in cases.iter().enumerate() {
        same_dd(&format!("err{i}"), c);
    }
}
