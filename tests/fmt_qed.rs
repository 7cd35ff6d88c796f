//! QED through the library, differentially against qemu-img 10.0.2:
//! qemu-made images read identically to `qemu-img convert -O raw` (and map
//! like `qemu-img map`), images we create equal qemu-img's and pass its
//! check, random and concurrent writes match a raw shadow, conversions
//! round-trip, and damaged files fail cleanly (see tests/fmt1/).

mod common;
mod fmt1;
#[path = "fmt1/lib.rs"]
mod fmt1_lib;

use fmt1_lib::*;

const FORMAT: &str = "qed";

macro_rules! read_variants {
    ($($v:ident),* $(,)?) => {
        mod read {
            use super::*;
            $( #[test] fn $v() { read_variant(FORMAT, stringify!($v)); } )*
            #[test]
            fn list_is_complete() {
                let mine: &[&str] = &[$(stringify!($v)),*];
                assert_eq!(mine, crate::fmt1::variants(FORMAT));
            }
        }
    };
}

macro_rules! create_cases {
    ($($c:ident),* $(,)?) => {
        mod create {
            use super::*;
            fn case(label: &str) {
                let (l, o, s) = crate::fmt1::create_cases(FORMAT)
                    .into_iter()
                    .find(|c| c.0 == label)
                    .expect("case");
                create_case(FORMAT, l, o, s);
            }
            $( #[test] fn $c() { case(stringify!($c)); } )*
            #[test]
            fn list_is_complete() {
                let mine: Vec<&str> = vec![$(stringify!($c)),*];
                let all: Vec<&str> = crate::fmt1::create_cases(FORMAT).iter().map(|c| c.0).collect();
                assert_eq!(mine, all);
            }
        }
    };
}

macro_rules! refused_cases {
    ($($c:ident),* $(,)?) => {
        mod refused {
            use super::*;
            fn case(label: &str) {
                let (l, o, s) = crate::fmt1::refused_create_cases(FORMAT)
                    .into_iter()
                    .find(|c| c.0 == label)
                    .expect("case");
                refused_create_case(FORMAT, l, o, s);
            }
            $( #[test] fn $c() { case(stringify!($c)); } )*
            #[test]
            fn list_is_complete() {
                let mine: Vec<&str> = vec![$(stringify!($c)),*];
                let all: Vec<&str> = crate::fmt1::refused_create_cases(FORMAT).iter().map(|c| c.0).collect();
                assert_eq!(mine, all);
            }
        }
    };
}

read_variants!(
    default,
    cluster_4k_table_2,
    cluster_256k_table_16,
    backing_qcow2,
    backing_raw,
    need_check_set,
    resized,
    zero_clusters
);
create_cases!(
    default,
    odd_size,
    zero_size,
    cluster_4k,
    cluster_4k_table_2,
    cluster_1m,
    table_16,
    backing,
    backing_raw,
    prealloc_falloc
);
refused_cases!(
    cluster_2k,
    cluster_odd,
    cluster_128m,
    cluster_64m,
    table_0,
    table_3,
    table_32,
    too_big,
    prealloc_metadata,
    prealloc_bad
);

#[test]
fn damaged_files_fail_cleanly() {
    damaged_images(FORMAT);
}

#[test]
fn convert_round_trip_default() {
    convert_round_trip(FORMAT, "");
}

#[test]
fn random_writes_no_backing() {
    random_writes(FORMAT, "", 8 * common::MIB + 3 * 512, 1, false);
}

#[test]
fn random_writes_small_clusters() {
    random_writes(
        FORMAT,
        "cluster_size=4k,table_size=2",
        8 * common::MIB,
        3,
        false,
    );
}

#[test]
fn random_writes_over_backing() {
    random_writes(FORMAT, "", 8 * common::MIB, 2, true);
}

#[test]
fn concurrent_writers() {
    concurrent_writes(FORMAT, "cluster_size=4k,table_size=2");
}

#[test]
fn convert_round_trip_small_clusters() {
    convert_round_trip(FORMAT, "cluster_size=4k,table_size=2");
}

fn features(path: &std::path::Path) -> u64 {
    let b = common::read(path);
    u64::from_le_bytes(b[16..24].try_into().expect("header"))
}

/// The need-check bit is on disk while allocating writes are in flight and
/// gone after a clean close, as with QEMU.
#[test]
fn need_check_set_while_writing_and_cleared_on_close() {
    use imgtool::{Image, OpenOptions};
    let dir = common::TempDir::new("qed-needcheck");
    let p = dir.join("a.qed");
    common::qemu_img_ok(dir.path(), &["create", "-q", "-f", "qed", "a.qed", "4M"]);
    let img = Image::open(p.to_str().unwrap(), &OpenOptions::read_write()).unwrap();
    assert_eq!(features(&p) & 2, 0, "clean after open");
    img.write_at(&[7u8; 5000], 70_000).unwrap();
    assert_eq!(features(&p) & 2, 2, "need-check set by an allocating write");
    img.close().unwrap();
    assert_eq!(features(&p) & 2, 0, "cleared on close");
    common::assert_qemu_check_clean(dir.path(), "a.qed");
    // Dropping without close() is a clean close too.
    let img = Image::open(p.to_str().unwrap(), &OpenOptions::read_write()).unwrap();
    img.write_at(&[8u8; 100], 3 << 20).unwrap();
    drop(img);
    assert_eq!(features(&p) & 2, 0, "cleared on drop");
}

/// An image left with the need-check bit (QEMU aborted mid-write) and a
/// bad L2 entry is checked and repaired when opened read-write, as
/// qemu-io's open does: the files end up identical.
#[test]
fn dirty_image_repaired_on_read_write_open_like_qemu() {
    use imgtool::{Image, OpenOptions};
    let dir = common::TempDir::new("qed-dirty-open");
    let d = dir.path();
    fmt1::build("qed", "need_check_set", d);
    // Damage: point an L2 entry past the end of the file.
    let good = common::read(&d.join("img.qed"));
    let l1 = u64::from_le_bytes(good[40..48].try_into().unwrap()) as usize;
    let l2 = u64::from_le_bytes(good[l1..l1 + 8].try_into().unwrap());
    assert_ne!(l2, 0);
    common::patch(&d.join("img.qed"), l2 + 8 * 60, &(1u64 << 40).to_le_bytes());
    assert_eq!(features(&d.join("img.qed")) & 2, 2);
    std::fs::copy(d.join("img.qed"), d.join("q.qed")).unwrap();
    std::fs::copy(d.join("img.qed"), d.join("o.qed")).unwrap();
    common::qemu_io(d, "qed", "q.qed", &["read 0 512".into()]);
    let img = Image::open(
        d.join("o.qed").to_str().unwrap(),
        &OpenOptions::read_write(),
    )
    .unwrap();
    img.close().unwrap();
    common::assert_bytes_eq(
        "repaired on open",
        &common::read(&d.join("q.qed")),
        &common::read(&d.join("o.qed")),
    );
    check_like_qemu(d, "o.qed", "qed");
}

/// Reading a dirty image read-only neither repairs nor clears it.
#[test]
fn dirty_image_read_only_is_left_alone() {
    use imgtool::{Image, OpenOptions};
    let dir = common::TempDir::new("qed-dirty-ro");
    let d = dir.path();
    fmt1::build("qed", "need_check_set", d);
    let before = common::read(&d.join("img.qed"));
    let img = Image::open(
        d.join("img.qed").to_str().unwrap(),
        &OpenOptions::read_only(),
    )
    .unwrap();
    let mut b = vec![0u8; 1 << 20];
    img.read_at(&mut b, 0).unwrap();
    img.close().unwrap();
    assert_eq!(before, common::read(&d.join("img.qed")));
}
