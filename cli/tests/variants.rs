//! Differential tests of `imgtool info` and `imgtool convert` on every
//! qcow2 variant (see `build_variant`): (a) info output equals qemu-img's,
//! (c) convert -O qcow2 [-c] gives a clean image with identical contents and
//! the header qemu-img would write, (d) convert -O raw gives qemu-img's bytes.

mod common;

use common::*;

fn setup(name: &str) -> (TempDir, Built) {
    let dir = TempDir::new(name);
    let b = build_variant(name, dir.path());
    (dir, b)
}

/// (a) `info --output=json` equal except `actual-size`.
fn info_json(name: &str) {
    let (dir, b) = setup(name);
    let args = ["info", "--output=json", b.file.as_str()];
    let q = qemu_img(dir.path(), &args).expect_ok();
    let o = imgtool(dir.path(), &args);
    assert!(o.ok(), "imgtool info failed:\n{}", o.describe());
    assert_text_eq(
        &format!("{name}: info --output=json"),
        &json_without_actual_size(&q.stdout),
        &json_without_actual_size(&o.stdout),
    );
    assert_eq!(o.stderr, q.stderr);
}

/// (a) human `info` equal except `disk size:` lines.
fn info_human(name: &str) {
    let (dir, b) = setup(name);
    let args = ["info", b.file.as_str()];
    let q = qemu_img(dir.path(), &args).expect_ok();
    let o = imgtool(dir.path(), &args);
    assert!(o.ok(), "imgtool info failed:\n{}", o.describe());
    assert_text_eq(
        &format!("{name}: info"),
        &human_without_disk_size(&q.stdout),
        &human_without_disk_size(&o.stdout),
    );
}

/// (a) `info --backing-chain`, JSON and human.
fn info_backing_chain(name: &str) {
    let (dir, b) = setup(name);
    let args = ["info", "--backing-chain", "--output=json", b.file.as_str()];
    let q = qemu_img(dir.path(), &args).expect_ok();
    let o = imgtool(dir.path(), &args);
    assert!(
        o.ok(),
        "imgtool info --backing-chain failed:\n{}",
        o.describe()
    );
    assert_text_eq(
        &format!("{name}: info --backing-chain --output=json"),
        &json_without_actual_size(&q.stdout),
        &json_without_actual_size(&o.stdout),
    );
    let args = ["info", "--backing-chain", b.file.as_str()];
    let q = qemu_img(dir.path(), &args).expect_ok();
    let o = imgtool(dir.path(), &args);
    assert!(
        o.ok(),
        "imgtool info --backing-chain failed:\n{}",
        o.describe()
    );
    assert_text_eq(
        &format!("{name}: info --backing-chain"),
        &human_without_disk_size(&q.stdout),
        &human_without_disk_size(&o.stdout),
    );
}

/// (d) `convert -O raw` gives exactly qemu-img's bytes.
fn convert_raw(name: &str) {
    let (dir, b) = setup(name);
    let qd = dir.sub("q");
    let od = dir.sub("o");
    let src = format!("../{}", b.file);
    let args = ["convert", "-O", "raw", src.as_str(), "out.raw"];
    qemu_img(&qd, &args).expect_ok();
    let o = imgtool(&od, &args);
    assert!(o.ok(), "imgtool convert -O raw failed:\n{}", o.describe());
    assert_eq!(o.stdout, "", "convert prints nothing without -p");
    assert_bytes_eq(
        &format!("{name}: imgtool convert -O raw vs qemu-img's"),
        &read(&qd.join("out.raw")),
        &read(&od.join("out.raw")),
    );
}

/// (c) `convert -O qcow2 [-c] -o <variant options>`.
fn convert_qcow2(name: &str, compress: bool) {
    let (dir, b) = setup(name);
    let qd = dir.sub("q");
    let od = dir.sub("o");
    let src = format!("../{}", b.file);
    let mut args = vec!["convert", "-O", "qcow2"];
    if compress {
        args.push("-c");
    }
    if !b.convert_opts.is_empty() {
        args.push("-o");
        args.push(&b.convert_opts);
    }
    args.push(&src);
    args.push("out.qcow2");
    let q = qemu_img(&qd, &args);
    let o = imgtool(&od, &args);
    if !q.ok() {
        // qemu-img refuses this combination: so must we, in its words.
        assert_outcome_matches(&q, &o);
        return;
    }
    assert!(o.ok(), "imgtool {args:?} failed:\n{}", o.describe());
    assert_eq!(o.stdout, q.stdout);
    assert_qemu_check_clean(&od, "out.qcow2");
    assert_qemu_compare_identical(&od, &src, "out.qcow2", &[]);
    // Same options, same header: what qemu-img's own convert wrote.
    let theirs = info_json_normalized(&qd, "out.qcow2");
    let ours = info_json_normalized(&od, "out.qcow2");
    assert_eq!(
        ours, theirs,
        "{name}: info of our converted image differs from qemu-img's converted image"
    );
    if compress {
        // -c must really compress something compressible.
        let m = qemu_img_ok(&od, &["check", "out.qcow2"]);
        let theirs = qemu_img_ok(&qd, &["check", "out.qcow2"]);
        let compressed_line = |s: &str| {
            s.lines()
                .find(|l| l.contains("compressed clusters"))
                .map(|l| !l.contains(" 0.00% compressed"))
        };
        assert_eq!(
            compressed_line(&m),
            compressed_line(&theirs),
            "{name}: whether any cluster is compressed differs\nours: {m}\nqemu: {theirs}"
        );
    }
}

macro_rules! variants {
    ($($v:ident),* $(,)?) => {
        $(
            mod $v {
                #[test] fn info_json() { super::info_json(stringify!($v)); }
                #[test] fn info_human() { super::info_human(stringify!($v)); }
                #[test] fn info_backing_chain() { super::info_backing_chain(stringify!($v)); }
                #[test] fn convert_raw() { super::convert_raw(stringify!($v)); }
                #[test] fn convert_qcow2() { super::convert_qcow2(stringify!($v), false); }
                #[test] fn convert_qcow2_compressed() { super::convert_qcow2(stringify!($v), true); }
            }
        )*
        #[test]
        fn variant_list_is_complete() {
            let mine: &[&str] = &[$(stringify!($v)),*];
            assert_eq!(mine, VARIANTS);
        }
    };
}

variants!(
    compat_010,
    compat_11,
    cluster_512,
    cluster_64k,
    cluster_2m,
    refcount_1,
    refcount_16,
    refcount_64,
    extended_l2,
    lazy_refcounts,
    lazy_refcounts_dirty,
    compressed_zlib,
    compressed_zstd,
    prealloc_metadata,
    chain3,
    chain3_raw_base,
    data_file,
    data_file_raw,
    internal_snapshots,
    odd_size,
    zero_size,
);
