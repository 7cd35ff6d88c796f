//! Damaged and hostile images (see `BAD_CASES`): `imgtool info` and
//! `imgtool convert` do what qemu-img does — where qemu-img fails, exit 1
//! with its message; where it copes, the same output — and always finish in
//! time, never panic, and leave the input byte-identical.

mod common;

use common::*;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(20);

fn qemu_limited(dir: &std::path::Path, args: &[&str]) -> Out {
    let mut c = std::process::Command::new("qemu-img");
    c.args(args).current_dir(dir);
    run_with_timeout(&mut c, LIMIT)
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Info,
    InfoJson,
    ConvertRaw,
}

/// Run `op` on `file` (relative to dir, as `../file` from the q/ and o/
/// subdirs) with both tools and compare.
fn compare_op(dir: &TempDir, file: &str, fmt: Option<&str>, op: Op) {
    let qd = dir.sub("q");
    let od = dir.sub("o");
    let _ = std::fs::remove_file(qd.join("out.raw"));
    let _ = std::fs::remove_file(od.join("out.raw"));
    let src = format!("../{file}");
    let mut args: Vec<&str> = match op {
        Op::Info => vec!["info"],
        Op::InfoJson => vec!["info", "--output=json"],
        Op::ConvertRaw => vec!["convert", "-O", "raw"],
    };
    if let Some(f) = fmt {
        args.push("-f");
        args.push(f);
    }
    args.push(&src);
    if let Op::ConvertRaw = op {
        args.push("out.raw");
    }
    let before = read(&dir.join(file));
    let q = qemu_limited(&qd, &args);
    let o = imgtool_timeout(&od, &args, LIMIT);
    assert_bytes_eq(
        &format!("{file}: input changed by imgtool {args:?}"),
        &before,
        &read(&dir.join(file)),
    );
    if q.timed_out {
        // qemu-img hangs here; we must not, and must say why we stop.
        assert_eq!(o.code, Some(1), "{op:?} must fail:\n{}", o.describe());
        assert!(
            o.stderr.starts_with("imgtool: ") && o.stderr.len() > 12,
            "{}",
            o.describe()
        );
        return;
    }
    if !q.ok() {
        assert_eq!(o.code, Some(1), "{op:?} must exit 1:\n{}", o.describe());
        assert_outcome_matches(&q, &o);
        return;
    }
    assert!(
        o.ok(),
        "qemu-img copes with this image, imgtool must too:\n{}\n=== qemu-img\n{}",
        o.describe(),
        q.describe()
    );
    match op {
        Op::Info => assert_text_eq(
            "info",
            &human_without_disk_size(&q.stdout),
            &human_without_disk_size(&o.stdout),
        ),
        Op::InfoJson => assert_text_eq(
            "info --output=json",
            &json_without_actual_size(&q.stdout),
            &json_without_actual_size(&o.stdout),
        ),
        Op::ConvertRaw => assert_bytes_eq(
            "convert -O raw",
            &read(&qd.join("out.raw")),
            &read(&od.join("out.raw")),
        ),
    }
    assert_text_eq("stderr", &as_imgtool(&q.stderr), &o.stderr);
}

fn check_bad(name: &str) {
    let dir = TempDir::new(name);
    let (file, fmt) = build_bad(name, dir.path());
    for op in [Op::Info, Op::InfoJson, Op::ConvertRaw] {
        compare_op(&dir, &file, fmt, op);
    }
}

macro_rules! bad_cases {
    ($($v:ident),* $(,)?) => {
        $( #[test] fn $v() { check_bad(stringify!($v)); } )*
        #[test]
        fn bad_case_list_is_complete() {
            let mine: &[&str] = &[$(stringify!($v)),*];
            assert_eq!(mine, BAD_CASES);
        }
    };
}

bad_cases!(
    truncated_20,
    truncated_48,
    truncated_72,
    truncated_100,
    empty_as_qcow2,
    cluster_bits_31,
    cluster_bits_8,
    virtual_size_2_63,
    virtual_size_i64_max,
    l1_size_huge,
    l1_size_big,
    refcount_table_clusters_huge,
    refcount_table_clusters_big,
    unknown_incompatible_bit,
    version_4,
    backing_offset_invalid,
    header_length_short,
    header_length_huge,
    refcount_order_7,
    snapshots_too_many,
    snapshots_offset_unaligned,
    extension_length_huge,
    extension_length_past_cluster,
    backing_format_extension_too_long,
    l2_offset_unaligned,
    compressed_descriptor_bad,
    l1_past_eof,
    refcount_table_past_eof,
    data_cluster_past_eof,
    l1_overlaps_header,
    l1_overlaps_refcount_table,
    l2_overlaps_l1,
    refcount_table_overlaps_l1,
    dirty_bit_set,
    corrupt_bit_set,
);

/// Every bad case that qemu-img refuses to open fails in `info` with exit 1:
/// guards against the list silently drifting into "all accepted".
#[test]
fn most_bad_cases_are_refused_by_the_oracle() {
    let dir = TempDir::new("oracle_refuses");
    let mut refused = 0;
    for name in BAD_CASES {
        let d = dir.sub(name);
        let (file, fmt) = build_bad(name, &d);
        let mut args = vec!["info"];
        if let Some(f) = fmt {
            args.extend(["-f", f]);
        }
        args.push(&file);
        if qemu_limited(&d, &args).code == Some(1) {
            refused += 1;
        }
    }
    assert!(
        refused >= 24,
        "only {refused} bad cases are refused by qemu-img info"
    );
}

/// a -> b -> a. qemu-img opens only the top for plain `info` (so it
/// succeeds), reports the loop for `--backing-chain`, and hangs in convert;
/// imgtool must match the first two and fail convert promptly.
#[test]
fn backing_loop() {
    let dir = TempDir::new("backing_loop");
    build_backing_loop(dir.path());
    let a0 = read(&dir.join("a"));
    let b0 = read(&dir.join("b"));
    let (q, o) = same_as_qemu(dir.path(), &["info", "--output=json", "a"]);
    let _ = (q, o);
    let q = qemu_limited(dir.path(), &["info", "--backing-chain", "a"]);
    assert_eq!(q.code, Some(1));
    let o = imgtool_timeout(dir.path(), &["info", "--backing-chain", "a"], LIMIT);
    assert_outcome_matches(&q, &o);
    for out in ["raw", "qcow2"] {
        let o = imgtool_timeout(dir.path(), &["convert", "-O", out, "a", "out.img"], LIMIT);
        assert_eq!(o.code, Some(1), "{}", o.describe());
        assert!(
            o.stderr.starts_with("imgtool: ") && o.stderr.contains("creates an infinite loop"),
            "convert of a backing loop must say so:\n{}",
            o.describe()
        );
        assert!(
            !dir.join("out.img").exists(),
            "failed convert left its target behind"
        );
    }
    assert_bytes_eq("a unchanged", &a0, &read(&dir.join("a")));
    assert_bytes_eq("b unchanged", &b0, &read(&dir.join("b")));
}

/// A backing file that is missing: info of the top still works (as in
/// qemu-img), convert fails with qemu-img's message.
#[test]
fn backing_missing() {
    let dir = TempDir::new("backing_missing");
    qemu_img_ok(
        dir.path(),
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-u",
            "-b",
            "gone.qcow2",
            "-F",
            "qcow2",
            "top.qcow2",
            "1M",
        ],
    );
    same_as_qemu(dir.path(), &["info", "top.qcow2"]);
    let qd = dir.sub("q");
    let od = dir.sub("o");
    let q = qemu_limited(&qd, &["convert", "-O", "raw", "../top.qcow2", "out.raw"]);
    let o = imgtool_timeout(
        &od,
        &["convert", "-O", "raw", "../top.qcow2", "out.raw"],
        LIMIT,
    );
    assert_eq!(q.code, Some(1));
    assert_outcome_matches(&q, &o);
}
