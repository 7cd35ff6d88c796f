//! `imgtool snapshot` against `qemu-img snapshot` on identical copies:
//! same exit code and output; images that pass `qemu-img check`, whose
//! info (apart from dates and allocation) and guest content equal what
//! qemu-img produced; snapshots we create are usable by qemu-img and
//! snapshots qemu-img creates are usable by us.

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
