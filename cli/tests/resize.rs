//! `imgtool resize` against `qemu-img resize` run on an identical copy:
//! same exit code, stdout and stderr; on success the same guest content
//! (each layer on its own), the same `qemu-img info` (apart from allocation)
//! and a clean `qemu-img check`; on failure our files are untouched
//! wherever qemu-img left its own untouched.

mod common;

use common::rw::*;
use common::*;
use std::path::Path;

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
