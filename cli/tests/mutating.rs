//! Commands that change images (resize, commit, rebase, snapshot, amend),
//! against qemu-img on identical copies: same exit code, stdout and stderr;
//! afterwards every image involved has the same guest contents as qemu-img
//! left in its copy, `qemu-img check` says the same, and `qemu-img info`
//! agrees (apart from allocation, file length and snapshot dates).

mod common;

use common::*;
use std::path::Path;

fn setup_single(d: &Path) {
    build_variant("compat_11", d);
    std::fs::write(d.join("plain.raw"), mixed_raw(3, 3 * MIB)).unwrap();
}
fn setup_v2(d: &Path) {
    build_variant("compat_010", d);
}
fn setup_extl2(d: &Path) {
    build_variant("extended_l2", d);
}
fn setup_compressed(d: &Path) {
    build_variant("compressed_zlib", d);
}
fn setup_chain(d: &Path) {
    build_variant("chain3", d);
    qemu_img_ok(d, &["create", "-q", "-f", "qcow2", "other.qcow2", "6M"]);
    qemu_io(d, "qcow2", "other.qcow2", &["write -P 0x6f 0 3M".into()]);
}
fn setup_snapshots(d: &Path) {
    build_variant("internal_snapshots", d);
}

fn info_normalized(dir: &Path, file: &str, strip_dates: bool) -> Option<Json> {
    let o = qemu_img(dir, &["info", "-U", "--output=json", file]);
    if !o.ok() {
        return None;
    }
    let mut j = parse_json("info", &o.stdout);
    j.remove_everywhere("actual-size");
    j.remove_file_lengths();
    if strip_dates {
        j.remove_everywhere("date-sec");
        j.remove_everywhere("date-nsec");
    }
    Some(j)
}

fn guest_bytes(dir: &Path, file: &str) -> Option<Vec<u8>> {
    let out = format!("{file}.cmp.raw");
    let o = qemu_img(dir, &["convert", "-U", "-O", "raw", file, &out]);
    if !o.ok() {
        return None;
    }
    let v = read(&dir.join(&out));
    let _ = std::fs::remove_file(dir.join(&out));
    Some(v)
}

fn check(setup: fn(&Path), args: &[&str], files: &[&str], strip_dates: bool) {
    let dir = TempDir::new("mutating");
    // Build once and copy, so both sides start byte-identical (snapshot
    // dates included).
    let src = dir.sub("src");
    setup(&src);
    let qd = dir.sub("q");
    let od = dir.sub("o");
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), qd.join(e.file_name())).unwrap();
        std::fs::copy(e.path(), od.join(e.file_name())).unwrap();
    }
    let q = qemu_img(&qd, args);
    let o = imgtool(&od, args);
    assert_outcome_matches(&q, &o);
    for f in files {
        assert_eq!(
            od.join(f).exists(),
            qd.join(f).exists(),
            "{args:?}: {f} exists in one copy only"
        );
        if !qd.join(f).exists() {
            continue;
        }
        let (qb, ob) = (guest_bytes(&qd, f), guest_bytes(&od, f));
        assert_eq!(
            qb.is_some(),
            ob.is_some(),
            "{args:?}: {f} readable in one copy only"
        );
        if let (Some(qb), Some(ob)) = (qb, ob) {
            assert_bytes_eq(&format!("{args:?}: guest contents of {f}"), &qb, &ob);
        }
        if f.ends_with(".qcow2") {
            let qc = qemu_img(&qd, &["check", "-U", f]);
            let oc = qemu_img(&od, &["check", "-U", f]);
            assert_eq!(
                oc.code,
                qc.code,
                "{args:?}: qemu-img check of {f}\n=== on qemu-img's copy\n{}\n=== on ours\n{}",
                qc.describe(),
                oc.describe()
            );
        }
        assert_eq!(
            info_normalized(&od, f, strip_dates),
            info_normalized(&qd, f, strip_dates),
            "{args:?}: qemu-img info of {f}"
        );
    }
}

macro_rules! cases {
    ($($name:ident: $setup:ident, [$($a:literal),*], [$($f:literal),*] $(, $dates:literal)?;)*) => {
        $(
            #[test]
            fn $name() {
                #[allow(unused_mut, unused_assignments)]
                let mut strip = false;
                $( strip = $dates; )?
                check($setup, &[$($a),*], &[$($f),*], strip);
            }
        )*
    };
}

cases! {
    // resize
    resize_grow_relative: setup_single, ["resize", "img.qcow2", "+1M"], ["img.qcow2"];
    resize_grow_absolute: setup_single, ["resize", "img.qcow2", "9M"], ["img.qcow2"];
    resize_grow_unaligned: setup_single, ["resize", "img.qcow2", "+1000"], ["img.qcow2"];
    resize_grow_preallocated: setup_single, ["resize", "--preallocation=metadata", "img.qcow2", "+2M"], ["img.qcow2"];
    resize_shrink: setup_single, ["resize", "--shrink", "img.qcow2", "2M"], ["img.qcow2"];
    resize_shrink_refused_without_flag: setup_single, ["resize", "img.qcow2", "2M"], ["img.qcow2"];
    resize_shrink_relative_refused: setup_single, ["resize", "img.qcow2", "-1M"], ["img.qcow2"];
    resize_v2: setup_v2, ["resize", "img.qcow2", "+3M"], ["img.qcow2"];
    resize_v2_shrink: setup_v2, ["resize", "--shrink", "img.qcow2", "1M"], ["img.qcow2"];
    resize_extended_l2: setup_extl2, ["resize", "img.qcow2", "+5M"], ["img.qcow2"];
    resize_compressed_shrink: setup_compressed, ["resize", "--shrink", "img.qcow2", "3M"], ["img.qcow2"];
    resize_raw_grow: setup_single, ["resize", "-f", "raw", "plain.raw", "5M"], ["plain.raw"];
    resize_raw_grow_full: setup_single, ["resize", "-f", "raw", "--preallocation=full", "plain.raw", "+1M"], ["plain.raw"];
    resize_raw_shrink: setup_single, ["resize", "-f", "raw", "--shrink", "plain.raw", "100k"], ["plain.raw"];
    resize_bad_size: setup_single, ["resize", "img.qcow2", "1Q"], ["img.qcow2"];
    resize_missing_file: setup_single, ["resize", "nonexist.qcow2", "1M"], [];
    resize_with_snapshots_refused: setup_snapshots, ["resize", "img.qcow2", "+1M"], ["img.qcow2"];

    // commit
    commit_top_into_mid: setup_chain, ["commit", "top.qcow2"], ["top.qcow2", "mid.qcow2", "base.qcow2"];
    commit_keep_top: setup_chain, ["commit", "-d", "top.qcow2"], ["top.qcow2", "mid.qcow2", "base.qcow2"];
    commit_into_base: setup_chain, ["commit", "-b", "base.qcow2", "top.qcow2"], ["top.qcow2", "mid.qcow2", "base.qcow2"];
    commit_quiet: setup_chain, ["commit", "-q", "mid.qcow2"], ["top.qcow2", "mid.qcow2", "base.qcow2"];
    commit_without_backing: setup_single, ["commit", "img.qcow2"], ["img.qcow2"];
    commit_base_not_in_chain: setup_chain, ["commit", "-b", "other.qcow2", "top.qcow2"], ["top.qcow2", "mid.qcow2", "base.qcow2", "other.qcow2"];

    // rebase
    rebase_safe_skip_mid: setup_chain, ["rebase", "-b", "base.qcow2", "-F", "qcow2", "top.qcow2"], ["top.qcow2", "mid.qcow2", "base.qcow2"];
    rebase_safe_other: setup_chain, ["rebase", "-b", "other.qcow2", "-F", "qcow2", "top.qcow2"], ["top.qcow2", "mid.qcow2", "other.qcow2"];
    rebase_flatten: setup_chain, ["rebase", "-b", "", "top.qcow2"], ["top.qcow2", "mid.qcow2"];
    rebase_unsafe: setup_chain, ["rebase", "-u", "-b", "other.qcow2", "-F", "qcow2", "top.qcow2"], ["top.qcow2", "other.qcow2"];
    rebase_unsafe_missing_backing: setup_chain, ["rebase", "-u", "-b", "gone.qcow2", "-F", "qcow2", "top.qcow2"], ["top.qcow2"];
    rebase_missing_backing: setup_chain, ["rebase", "-b", "gone.qcow2", "-F", "qcow2", "top.qcow2"], ["top.qcow2"];
    rebase_without_format: setup_chain, ["rebase", "-b", "base.qcow2", "top.qcow2"], ["top.qcow2"];

    // snapshot
    snapshot_list: setup_snapshots, ["snapshot", "-l", "img.qcow2"], ["img.qcow2"];
    snapshot_create: setup_single, ["snapshot", "-c", "new", "img.qcow2"], ["img.qcow2"], true;
    snapshot_create_duplicate: setup_snapshots, ["snapshot", "-c", "first", "img.qcow2"], ["img.qcow2"], true;
    snapshot_apply: setup_snapshots, ["snapshot", "-a", "first", "img.qcow2"], ["img.qcow2"];
    snapshot_apply_by_id: setup_snapshots, ["snapshot", "-a", "2", "img.qcow2"], ["img.qcow2"];
    snapshot_apply_missing: setup_snapshots, ["snapshot", "-a", "nosuch", "img.qcow2"], ["img.qcow2"];
    snapshot_delete: setup_snapshots, ["snapshot", "-d", "first", "img.qcow2"], ["img.qcow2"];
    snapshot_delete_missing: setup_snapshots, ["snapshot", "-d", "nosuch", "img.qcow2"], ["img.qcow2"];
    snapshot_on_raw: setup_single, ["snapshot", "-c", "s", "-f", "raw", "plain.raw"], ["plain.raw"];

    // amend
    amend_downgrade_to_v2: setup_single, ["amend", "-o", "compat=0.10", "img.qcow2"], ["img.qcow2"];
    amend_upgrade_to_v3: setup_v2, ["amend", "-o", "compat=1.1", "img.qcow2"], ["img.qcow2"];
    amend_lazy_refcounts: setup_single, ["amend", "-o", "lazy_refcounts=on", "img.qcow2"], ["img.qcow2"];
    amend_refcount_bits: setup_single, ["amend", "-o", "refcount_bits=64", "img.qcow2"], ["img.qcow2"];
    amend_refcount_bits_1: setup_compressed, ["amend", "-o", "refcount_bits=1", "img.qcow2"], ["img.qcow2"];
    amend_cluster_size_refused: setup_single, ["amend", "-o", "cluster_size=4k", "img.qcow2"], ["img.qcow2"];
    amend_extended_l2_refused: setup_single, ["amend", "-o", "extended_l2=on", "img.qcow2"], ["img.qcow2"];
    amend_downgrade_extended_l2_refused: setup_extl2, ["amend", "-o", "compat=0.10", "img.qcow2"], ["img.qcow2"];
    amend_unknown_option: setup_single, ["amend", "-o", "foo=bar", "img.qcow2"], ["img.qcow2"];
    amend_options_help: setup_single, ["amend", "-f", "qcow2", "-o", "help", "img.qcow2"], ["img.qcow2"];
}
