//! `imgtool rebase` against `qemu-img rebase` on identical copies: same
//! exit code and output; the rebased image reads the same through its new
//! chain as qemu-img's (and as before the rebase), its own layer holds the
//! same data, its header names the same backing file, and it passes
//! `qemu-img check`.

mod common;

use common::rw::*;
use common::*;
use std::path::Path;

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
        // -p: qemu-img's steps (one buffer's share per examined run).
        vec!["rebase", "-p", "-b", "base.qcow2", "-F", "qcow2", top],
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
