//! `imgtool commit` against `qemu-img commit` on identical copies: same
//! exit code and output; every layer afterwards has the guest content (on
//! its own, without its backing file) that qemu-img left in it, the top is
//! emptied the same way, and every qcow2 layer passes `qemu-img check`.

mod common;

use common::rw::*;
use common::*;
use std::path::Path;

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
