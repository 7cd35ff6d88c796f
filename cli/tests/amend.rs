//! `imgtool amend` against `qemu-img amend` on identical copies: same
//! exit code and output; afterwards the same `qemu-img info` (compat,
//! features, refcount width, size, snapshots), the same guest content and
//! a clean `qemu-img check`.

mod common;

use common::rw::*;
use common::*;
use std::path::Path;

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
            // A downgrade turns zero clusters over a backing file into
            // allocated zeros, which the host file reports as data in
            // qemu-img's copy: the same map (apart from host offsets).
            if amend.contains("compat=0.10") {
                let map = |d: &Path| {
                    let o = qemu_img(d, &["map", "--output=json", "img.qcow2"]);
                    let mut j = parse_json("map", &o.expect_ok().stdout);
                    j.remove_everywhere("offset");
                    j
                };
                assert_eq!(map(&p.q), map(&p.o), "{create} -> {amend}: map");
            }
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
    // Formats without amend say so (not "Unknown file format").
    for f in ["vpc", "vmdk", "vhdx", "vdi", "qed", "qcow"] {
        let file = format!("x.{f}");
        qemu_img_ok(&p.q, &["create", "-q", "-f", f, &file, "1M"]);
        std::fs::copy(p.q.join(&file), p.o.join(&file)).unwrap();
        differential(&p, &["amend", "-f", f, "-o", "size=2M", &file], &[]);
    }
    let _hq = Holder::new(&p.q, "img.qcow2");
    let _ho = Holder::new(&p.o, "img.qcow2");
    differential(&p, &["amend", "-o", "compat=0.10", "img.qcow2"], &[]);
}
