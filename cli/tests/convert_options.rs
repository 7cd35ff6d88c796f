//! `convert` options beyond -O/-c/-o, each against qemu-img with the same
//! arguments: same exit code and messages; on success the output has the
//! same guest contents as qemu-img's output (and as the source), and the
//! same header facts (`qemu-img info` without allocation and file length).

mod common;

use common::*;
use std::path::Path;

/// base.qcow2 <- top.qcow2 (with an internal snapshot "snap1" taken before
/// the last write), and a raw image.
fn prepare(dir: &Path) {
    std::fs::write(dir.join("r1.bin"), random_bytes(5, MIB as usize)).unwrap();
    qemu_img_ok(dir, &["create", "-q", "-f", "qcow2", "base.qcow2", "4M"]);
    qemu_io(
        dir,
        "qcow2",
        "base.qcow2",
        &["write -s r1.bin 0 1M".into(), "write -P 0x21 3M 64k".into()],
    );
    qemu_img_ok(
        dir,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "base.qcow2",
            "-F",
            "qcow2",
            "top.qcow2",
        ],
    );
    qemu_io(
        dir,
        "qcow2",
        "top.qcow2",
        &["write -P 0x02 2M 1M".into(), "write -z 512k 64k".into()],
    );
    qemu_img_ok(dir, &["snapshot", "-c", "snap1", "top.qcow2"]);
    qemu_io(dir, "qcow2", "top.qcow2", &["write -P 0x03 2M 64k".into()]);
    std::fs::write(dir.join("plain.raw"), mixed_raw(9, 3 * MIB)).unwrap();
}

/// Run `args` (which name the output `out.img`) in fresh q/ and o/ dirs;
/// `pre` prepares an existing target (for -n). Returns the dirs.
fn check(args: &[&str], out_fmt: &str, pre: Option<&[&str]>) -> TempDir {
    let dir = TempDir::new("convert_opts");
    let qd = dir.sub("q");
    let od = dir.sub("o");
    for d in [&qd, &od] {
        prepare(d);
        if let Some(p) = pre {
            qemu_img_ok(d, p);
        }
    }
    let q = qemu_img(&qd, args);
    let o = imgtool(&od, args);
    assert_outcome_matches(&q, &o);
    if q.ok() {
        // Same contents as qemu-img's output, compared by qemu-img.
        let theirs = qemu_raw_bytes(&qd, "out.img");
        let ours = qemu_raw_bytes(&od, "out.img");
        assert_bytes_eq(
            &format!("{args:?}: contents of our output vs qemu-img's"),
            &theirs,
            &ours,
        );
        if out_fmt == "qcow2" {
            assert_qemu_check_clean(&od, "out.img");
        }
        assert_eq!(
            info_json_normalized(&od, "out.img"),
            info_json_normalized(&qd, "out.img"),
            "{args:?}: info of the outputs"
        );
    }
    dir
}

#[test]
fn backing_file_of_target() {
    // -B: only what the top layer holds is copied; the target points at base.
    check(
        &[
            "convert",
            "-O",
            "qcow2",
            "-B",
            "base.qcow2",
            "-F",
            "qcow2",
            "top.qcow2",
            "out.img",
        ],
        "qcow2",
        None,
    );
}

#[test]
fn existing_target_raw() {
    check(
        &["convert", "-n", "-O", "raw", "top.qcow2", "out.img"],
        "raw",
        Some(&["create", "-q", "-f", "raw", "out.img", "4M"]),
    );
}

#[test]
fn existing_target_qcow2_with_data() {
    // -n onto a target that already holds data: zeros must be written.
    check(
        &["convert", "-n", "-O", "qcow2", "plain.raw", "out.img"],
        "qcow2",
        Some(&["convert", "-O", "qcow2", "top.qcow2", "out.img"]),
    );
}

#[test]
fn existing_target_too_small() {
    check(
        &["convert", "-n", "-O", "raw", "top.qcow2", "out.img"],
        "raw",
        Some(&["create", "-q", "-f", "raw", "out.img", "1M"]),
    );
}

#[test]
fn out_of_order_many_workers() {
    check(
        &[
            "convert",
            "-W",
            "-m",
            "16",
            "-O",
            "qcow2",
            "top.qcow2",
            "out.img",
        ],
        "qcow2",
        None,
    );
}

#[test]
fn fully_allocated_output() {
    check(
        &["convert", "-S", "0", "-O", "raw", "top.qcow2", "out.img"],
        "raw",
        None,
    );
}

#[test]
fn sparse_size_64k() {
    check(
        &[
            "convert",
            "-S",
            "64k",
            "-O",
            "qcow2",
            "plain.raw",
            "out.img",
        ],
        "qcow2",
        None,
    );
}

#[test]
fn target_cache_none() {
    check(
        &["convert", "-t", "none", "-O", "raw", "top.qcow2", "out.img"],
        "raw",
        None,
    );
}

#[test]
fn source_cache_none() {
    check(
        &[
            "convert",
            "-T",
            "none",
            "-O",
            "qcow2",
            "top.qcow2",
            "out.img",
        ],
        "qcow2",
        None,
    );
}

#[test]
fn force_share() {
    check(
        &["convert", "-U", "-O", "raw", "top.qcow2", "out.img"],
        "raw",
        None,
    );
}

#[test]
fn internal_snapshot_by_name() {
    check(
        &[
            "convert",
            "-l",
            "snap1",
            "-O",
            "raw",
            "top.qcow2",
            "out.img",
        ],
        "raw",
        None,
    );
}

#[test]
fn internal_snapshot_missing() {
    check(
        &[
            "convert",
            "-l",
            "nosuch",
            "-O",
            "raw",
            "top.qcow2",
            "out.img",
        ],
        "raw",
        None,
    );
}

#[test]
fn several_sources_concatenated() {
    check(
        &[
            "convert",
            "-O",
            "qcow2",
            "plain.raw",
            "top.qcow2",
            "plain.raw",
            "out.img",
        ],
        "qcow2",
        None,
    );
}

#[test]
fn compressed_with_backing() {
    check(
        &[
            "convert",
            "-c",
            "-O",
            "qcow2",
            "-B",
            "base.qcow2",
            "-F",
            "qcow2",
            "top.qcow2",
            "out.img",
        ],
        "qcow2",
        None,
    );
}

/// `info` of an image with an internal snapshot lists it as qemu-img does
/// (date and VM clock fields come from the file, so they compare exactly).
#[test]
fn info_lists_snapshots() {
    let dir = TempDir::new("info_snap");
    prepare(dir.path());
    for args in [
        &["info", "top.qcow2"][..],
        &["info", "--output=json", "top.qcow2"][..],
    ] {
        let q = qemu_img(dir.path(), args).expect_ok();
        let o = imgtool(dir.path(), args);
        assert!(o.ok(), "{}", o.describe());
        assert_text_eq(
            "info with snapshots",
            &json_without_actual_size(&human_without_disk_size(&q.stdout)),
            &json_without_actual_size(&human_without_disk_size(&o.stdout)),
        );
    }
}

/// A 256 GiB image with three small clusters of data: qemu-img converts it
/// in milliseconds (it walks block status, never reads the holes). We must
/// finish within the usual hang limit, give identical contents, and keep
/// the output about as sparse as qemu-img's.
#[test]
fn huge_sparse_image() {
    use std::os::unix::fs::MetadataExt;
    let dir = TempDir::new("huge_sparse");
    let d = dir.path();
    qemu_img_ok(d, &["create", "-q", "-f", "qcow2", "big.qcow2", "256G"]);
    qemu_io(
        d,
        "qcow2",
        "big.qcow2",
        &[
            "write -P 1 0 64k".into(),
            "write -P 2 100G 64k".into(),
            format!("write -P 3 {} 64k", 256 * 1024 * MIB - 64 * KIB),
        ],
    );
    for (out, args) in [
        ("raw", &["convert", "-O", "raw", "big.qcow2"][..]),
        ("qcow2", &["convert", "-O", "qcow2", "big.qcow2"][..]),
        (
            "qcow2 -c",
            &["convert", "-c", "-O", "qcow2", "big.qcow2"][..],
        ),
    ] {
        let mut q = args.to_vec();
        q.push("q.out");
        let mut o = args.to_vec();
        o.push("o.out");
        qemu_img(d, &q).expect_ok();
        let r = imgtool(d, &o);
        assert!(r.ok(), "{out}: {}", r.describe());
        assert_qemu_compare_identical(d, "big.qcow2", "o.out", &[]);
        if out != "raw" {
            assert_qemu_check_clean(d, "o.out");
        }
        let alloc = |f: &str| std::fs::metadata(d.join(f)).unwrap().blocks() * 512;
        assert!(
            alloc("o.out") <= (4 * alloc("q.out")).max(16 * MIB),
            "{out}: our output allocates {} bytes, qemu-img's {}",
            alloc("o.out"),
            alloc("q.out")
        );
        let _ = std::fs::remove_file(d.join("q.out"));
        let _ = std::fs::remove_file(d.join("o.out"));
    }
}

/// A relative external data file name is resolved against the current
/// directory (not the image's): converting from another directory fails in
/// qemu-img, and so it must here.
#[test]
fn data_file_name_is_relative_to_cwd() {
    let dir = TempDir::new("data_file_cwd");
    qemu_img_ok(
        dir.path(),
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "data_file=img.data",
            "img.qcow2",
            "1M",
        ],
    );
    qemu_io(
        dir.path(),
        "qcow2",
        "img.qcow2",
        &["write -P 7 0 64k".into()],
    );
    let sub = dir.sub("sub");
    let (q, _) = same_as_qemu(&sub, &["convert", "-O", "raw", "../img.qcow2", "out.raw"]);
    assert_eq!(q.code, Some(1));
    // From the image's own directory it works, with the data.
    let (q, _) = same_as_qemu(
        dir.path(),
        &["convert", "-O", "raw", "img.qcow2", "out.raw"],
    );
    assert!(q.ok());
    let v = read(&dir.join("out.raw"));
    assert!(v[..65536].iter().all(|&b| b == 7), "data file contents");
}

#[test]
fn existing_target_trusted_zero() {
    // -n --target-is-zero: zero areas of the source are not written, even
    // where the (lying) target holds data.
    check(
        &[
            "convert",
            "-n",
            "--target-is-zero",
            "-O",
            "raw",
            "base.qcow2",
            "out.img",
        ],
        "raw",
        Some(&["convert", "-O", "raw", "top.qcow2", "out.img"]),
    );
}

#[test]
fn existing_target_zero_with_backing_exits_0() {
    // qemu-img reports the clash but exits 0, leaving the target alone.
    check(
        &[
            "convert",
            "-n",
            "--target-is-zero",
            "-B",
            "base.qcow2",
            "-O",
            "qcow2",
            "top.qcow2",
            "out.img",
        ],
        "qcow2",
        Some(&["create", "-q", "-f", "qcow2", "out.img", "4M"]),
    );
}

#[test]
fn existing_target_backing_option_source_without_backing() {
    // -n -B: unallocated areas of a source that has no backing file read
    // as zeros, so they are written, not left to the target.
    check(
        &[
            "convert",
            "-n",
            "-B",
            "base.qcow2",
            "-O",
            "qcow2",
            "base.qcow2",
            "out.img",
        ],
        "qcow2",
        Some(&["convert", "-O", "qcow2", "top.qcow2", "out.img"]),
    );
}

#[test]
fn existing_target_compressed_over_data() {
    // A compressed write cannot replace an allocated qcow2 cluster: EIO.
    check(
        &["convert", "-n", "-c", "-O", "qcow2", "plain.raw", "out.img"],
        "qcow2",
        Some(&["convert", "-O", "qcow2", "top.qcow2", "out.img"]),
    );
}
