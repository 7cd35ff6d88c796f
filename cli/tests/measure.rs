//! `imgtool measure` against `qemu-img measure`: a grid of sizes × qcow2
//! options (cluster size, extended L2, refcount width, compat,
//! preallocation, backing file), measurements of existing images (raw,
//! every qcow2 variant, snapshots, bitmaps), and the option errors.

mod common;

use common::*;
use std::path::Path;

/// `same_as_qemu`, also renaming getopt's `qemu-img measure:` prefix and
/// the program name in `--help`.
fn same(dir: &Path, args: &[&str]) {
    let q = qemu_img(dir, args);
    assert!(!q.timed_out, "oracle hung:\n{}", q.describe());
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
    let o = imgtool(dir, args);
    assert_outcome_matches(&q2, &o);
}

const SIZES: &[&str] = &[
    "0",
    "1",
    "511",
    "512",
    "513",
    "65535",
    "65536",
    "65537",
    "1M",
    "1000000007",
    "1G",
    "1073741825",
    "100G",
    "1T",
    "16T",
    "64T",
    "256T",
    "1P",
];

const CLUSTERS: &[&str] = &["512", "1k", "4k", "16k", "64k", "256k", "2M"];

/// Every size with every cluster size, with and without extended L2; the
/// other options cycle so that each value meets many sizes.
#[test]
fn measure_size_grid() {
    let dir = TempDir::new("measure_grid");
    let d = dir.path();
    let rbs = ["1", "2", "4", "8", "16", "32", "64"];
    let pre = ["off", "metadata", "falloc", "full"];
    let mut i = 0usize;
    for size in SIZES {
        for cs in CLUSTERS {
            for ext in ["off", "on"] {
                i += 1;
                let o = format!(
                    "cluster_size={cs},extended_l2={ext},refcount_bits={},preallocation={}",
                    rbs[i % rbs.len()],
                    pre[(i / 3) % pre.len()]
                );
                let out = if i.is_multiple_of(2) { "json" } else { "human" };
                same(
                    d,
                    &[
                        "measure", "-O", "qcow2", "--output", out, "-o", &o, "--size", size,
                    ],
                );
            }
        }
        same(d, &["measure", "--size", size]);
        same(d, &["measure", "-O", "qcow2", "--size", size]);
    }
}

/// Every refcount width, compat level and preallocation mode at a few sizes.
#[test]
fn measure_option_grid() {
    let dir = TempDir::new("measure_opts");
    let d = dir.path();
    for size in ["0", "3M", "10G", "2T"] {
        for rb in ["1", "2", "4", "8", "16", "32", "64"] {
            for compat in ["0.10", "1.1"] {
                for pre in ["off", "metadata", "falloc", "full"] {
                    let o = format!("refcount_bits={rb},compat={compat},preallocation={pre}");
                    same(d, &["measure", "-O", "qcow2", "-o", &o, "--size", size]);
                }
            }
        }
        for extra in [
            "backing_file=whatever,backing_fmt=qcow2",
            "lazy_refcounts=on",
            "compression_type=zstd",
            "encryption=on",
            "data_file=x.raw",
            "nocow=on",
            "extent_size_hint=1M",
            "encrypt.format=luks",
            "encrypt.format=luks,encrypt.key-secret=sec0",
        ] {
            same(d, &["measure", "-O", "qcow2", "-o", extra, "--size", size]);
        }
        for o in ["preallocation=full", "preallocation=falloc", "nocow=on"] {
            same(d, &["measure", "-O", "raw", "-o", o, "--size", size]);
        }
    }
}

/// Measuring existing images: raw files, every qcow2 variant, into raw and
/// qcow2 with several cluster sizes and options.
#[test]
fn measure_from_images() {
    let targets: &[&[&str]] = &[
        &["-O", "raw"],
        &["-O", "qcow2"],
        &["-O", "qcow2", "-o", "cluster_size=512"],
        &["-O", "qcow2", "-o", "cluster_size=4k,refcount_bits=1"],
        &["-O", "qcow2", "-o", "cluster_size=2M,extended_l2=on"],
        &["-O", "qcow2", "-o", "compat=0.10"],
        &["-O", "qcow2", "-o", "preallocation=full"],
        &["-O", "qcow2", "-o", "backing_file=x,backing_fmt=raw"],
        &["-O", "qcow2", "--output=json"],
    ];
    for v in VARIANTS {
        let dir = TempDir::new(&format!("measure_{v}"));
        let d = dir.path();
        let b = build_variant(v, d);
        for t in targets {
            let mut args = vec!["measure"];
            args.extend_from_slice(t);
            args.push(&b.file);
            same(d, &args);
        }
    }
    let dir = TempDir::new("measure_raw");
    let d = dir.path();
    std::fs::write(d.join("mixed.raw"), mixed_raw(3, 5 * MIB)).unwrap();
    std::fs::write(d.join("odd.raw"), random_bytes(4, 70001)).unwrap();
    std::fs::write(d.join("empty.raw"), b"").unwrap();
    qemu_img_ok(d, &["create", "-q", "-f", "raw", "sparse.raw", "1G"]);
    qemu_io(d, "raw", "sparse.raw", &["write -P 1 300M 1M".into()]);
    for f in ["mixed.raw", "odd.raw", "empty.raw", "sparse.raw"] {
        for t in targets {
            let mut args = vec!["measure"];
            args.extend_from_slice(t);
            args.push(f);
            same(d, &args);
        }
        same(d, &["measure", "-f", "raw", "-O", "qcow2", f]);
    }
}

/// Bitmaps in the source (qcow2 v3 only) and internal snapshots (`-l`).
#[test]
fn measure_bitmaps_and_snapshots() {
    let dir = TempDir::new("measure_bm");
    let d = dir.path();
    qemu_img_ok(d, &["create", "-q", "-f", "qcow2", "b.qcow2", "7M"]);
    qemu_io(d, "qcow2", "b.qcow2", &["write -P 1 1M 2M".into()]);
    qemu_img_ok(d, &["snapshot", "-c", "s1", "b.qcow2"]);
    qemu_io(d, "qcow2", "b.qcow2", &["write -P 2 5M 1M".into()]);
    let targets: &[&[&str]] = &[
        &["-O", "qcow2"],
        &["-O", "qcow2", "-o", "cluster_size=512"],
        &["-O", "qcow2", "-o", "compat=0.10"],
        &["-O", "qcow2", "--output=json"],
        &["-O", "raw"],
    ];
    let run_all = |file: &str| {
        for t in targets {
            for sn in [&[][..], &["-l", "s1"], &["-l", "snapshot.id=1"]] {
                let mut args = vec!["measure"];
                args.extend_from_slice(t);
                args.extend_from_slice(sn);
                args.push(file);
                same(d, &args);
            }
        }
    };
    run_all("b.qcow2");
    qemu_img_ok(d, &["bitmap", "--add", "b.qcow2", "bm0"]);
    run_all("b.qcow2");
    qemu_img_ok(
        d,
        &[
            "bitmap",
            "--add",
            "-g",
            "4096",
            "b.qcow2",
            "a_much_longer_bitmap_name",
        ],
    );
    qemu_img_ok(
        d,
        &["bitmap", "--add", "-g", "2M", "--disable", "b.qcow2", "x"],
    );
    run_all("b.qcow2");
    qemu_img_ok(
        d,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "compat=0.10",
            "v2.qcow2",
            "3M",
        ],
    );
    run_all("v2.qcow2");
    for bad in ["nope", "snapshot.name=nope", "snapshot.foo=1", "2"] {
        same(d, &["measure", "-O", "qcow2", "-l", bad, "b.qcow2"]);
    }
    qemu_img_ok(d, &["create", "-q", "-f", "raw", "r.raw", "1M"]);
    same(d, &["measure", "-l", "s1", "r.raw"]);
}

#[test]
fn measure_options_and_errors() {
    let dir = TempDir::new("measure_err");
    let d = dir.path();
    qemu_img_ok(d, &["create", "-q", "-f", "raw", "r.raw", "1M"]);
    qemu_img_ok(d, &["create", "-q", "-f", "qcow2", "q.qcow2", "1M"]);
    let cases: &[&[&str]] = &[
        &["measure"],
        &["measure", "--size", "1G", "r.raw"],
        &["measure", "-f", "raw"],
        &["measure", "-l", "x"],
        &["measure", "--image-opts"],
        &["measure", "r.raw", "r.raw"],
        &["measure", "--size", "1x"],
        &["measure", "--size", "-1"],
        &["measure", "--size", "0x1000"],
        &["measure", "--output=x", "--size", "1"],
        &["measure", "-O", "vmdk", "--size", "1G"],
        &["measure", "-O", "vdi", "r.raw"],
        &["measure", "-O", "dmg", "--size", "1G"],
        &["measure", "-O", "foo", "--size", "1G"],
        &["measure", "-O", "luks", "--size", "1G"],
        &["measure", "-O", "qcow2", "-o", "foo=bar", "--size", "1G"],
        &[
            "measure",
            "-O",
            "qcow2",
            "-o",
            "cluster_size=1000",
            "--size",
            "1G",
        ],
        &[
            "measure",
            "-O",
            "qcow2",
            "-o",
            "cluster_size=4M",
            "--size",
            "1G",
        ],
        &[
            "measure",
            "-O",
            "qcow2",
            "-o",
            "cluster_size=0",
            "--size",
            "1G",
        ],
        &["measure", "-O", "qcow2", "-o", "compat=9", "--size", "1G"],
        &["measure", "-O", "qcow2", "-o", "compat=v3", "--size", "1G"],
        &[
            "measure",
            "-O",
            "qcow2",
            "-o",
            "refcount_bits=3",
            "--size",
            "1G",
        ],
        &[
            "measure",
            "-O",
            "qcow2",
            "-o",
            "refcount_bits=128",
            "--size",
            "1G",
        ],
        &[
            "measure",
            "-O",
            "qcow2",
            "-o",
            "refcount_bits=x",
            "--size",
            "1G",
        ],
        &[
            "measure",
            "-O",
            "qcow2",
            "-o",
            "refcount_bits=8,compat=0.10",
            "--size",
            "1G",
        ],
        &[
            "measure",
            "-O",
            "qcow2",
            "-o",
            "preallocation=x",
            "--size",
            "1G",
        ],
        &[
            "measure",
            "-O",
            "qcow2",
            "-o",
            "extended_l2=x",
            "--size",
            "1G",
        ],
        &[
            "measure",
            "-O",
            "qcow2",
            "-o",
            "extended_l2=on,compat=9,cluster_size=4k",
            "--size",
            "1G",
        ],
        &[
            "measure",
            "-O",
            "qcow2",
            "-o",
            "compat=9,cluster_size=1000",
            "--size",
            "1G",
        ],
        &["measure", "-O", "qcow2", "-o", "size=5M"],
        &["measure", "-O", "qcow2", "-o", "size=5M", "--size", "1G"],
        &[
            "measure",
            "-O",
            "qcow2",
            "-o",
            "cluster_size=1x",
            "--size",
            "1G",
        ],
        &["measure", "-O", "qcow2", "-o", "help"],
        &["measure", "-O", "qcow2", "-o", "help", "--size", "1G"],
        &["measure", "-o", "?", "--size", "1G"],
        &[
            "measure",
            "-O",
            "raw",
            "-o",
            "cluster_size=4k",
            "--size",
            "1G",
        ],
        &["measure", "-O", "raw", "-o", "size=1x", "--size", "1G"],
        &["measure", "-O", "qcow2", "--size", "1E"],
        &["measure", "-O", "qcow2", "--size", "9223372036854775807"],
        &[
            "measure",
            "-O",
            "qcow2",
            "-o",
            "cluster_size=512",
            "--size",
            "100T",
        ],
        &[
            "measure",
            "-O",
            "qcow2",
            "-o",
            ",cluster_size=4k",
            "--size",
            "1G",
        ],
        &[
            "measure",
            "-O",
            "qcow2",
            "-o",
            "cluster_size=4k,",
            "--size",
            "1G",
        ],
        &[
            "measure",
            "-O",
            "qcow2",
            "-o",
            "cluster_size=64k",
            "-o",
            "cluster_size=4k",
            "--size",
            "1G",
        ],
        &["measure", "--object", "foo", "--size", "1"],
        &["measure", "--object", "secret,id=s,data=x", "--size", "1"],
        &["measure", "-U", "--size", "1"],
        &["measure", "nonexistent"],
        &["measure", "-f", "qcow2", "r.raw"],
        &[
            "measure",
            "--image-opts",
            "driver=qcow2,file.filename=q.qcow2",
        ],
        &["measure", "--image-opts", "-f", "raw", "r.raw"],
        &["measure", "--s", "1M"],
        &["measure", "--si", "1M"],
        &["measure", "--f", "raw", "r.raw"],
        &["measure", "--o", "json", "--size", "1"],
        &["measure", "--ou", "json", "--size", "1"],
        &["measure", "--t", "qcow2", "--size", "1M"],
        &[
            "measure",
            "--options",
            "cluster_size=4k",
            "-O",
            "qcow2",
            "--size",
            "1M",
        ],
        &["measure", "-s", "1M"],
        &["measure", "-x"],
        &["measure", "--help"],
        &["measure", "-h"],
    ];
    for c in cases {
        same(d, c);
    }
}

/// Random images measured into random qcow2 geometries.
#[test]
fn measure_random_images() {
    let dir = TempDir::new("measure_random");
    let d = dir.path();
    let mut r = Rng::new(777);
    for i in 0..12 {
        let size = (1 + r.below(40)) * MIB / 4 + r.below(8) * 512;
        let f = format!("m{i}.qcow2");
        let s = size.to_string();
        qemu_img_ok(d, &["create", "-q", "-f", "qcow2", &f, &s]);
        let mut ops = Vec::new();
        for _ in 0..(3 + r.below(10)) {
            let off = r.below(size) & !511;
            let len = ((1 + r.below(1024)) * 512).min(size - off);
            ops.push(match r.below(3) {
                0 => format!("write -P 1 {off} {len}"),
                1 => format!("write -z {off} {len}"),
                _ => format!("discard {off} {len}"),
            });
        }
        qemu_io(d, "qcow2", &f, &ops);
        let cs = ["512", "4k", "64k", "1M", "2M"][r.below(5) as usize];
        let rb = ["1", "16", "64"][r.below(3) as usize];
        let o = format!("cluster_size={cs},refcount_bits={rb}");
        same(d, &["measure", "-O", "qcow2", "-o", &o, &f]);
        same(d, &["measure", "--output=json", "-O", "raw", &f]);
    }
}
