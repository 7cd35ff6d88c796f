//! Damaged and hostile images through the library: `Image::open` + reading
//! everything must give qemu-img's bytes where qemu-img copes, an `Err`
//! where it fails — never a panic, never a hang, never a write to the input.

mod common;

use common::*;
use imgtool::{Image, OpenOptions};
use std::sync::mpsc;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(20);

/// Open and read the whole image on a worker thread; Err(text) on a
/// library error, panic of the test on a library panic or a hang.
fn library_read(path: std::path::PathBuf, fmt: Option<&'static str>) -> Result<Vec<u8>, String> {
    let (tx, rx) = mpsc::channel();
    let p2 = path.clone();
    std::thread::spawn(move || {
        let r = std::panic::catch_unwind(move || -> Result<Vec<u8>, String> {
            let opts = OpenOptions {
                format: fmt.map(str::to_string),
                ..OpenOptions::read_only()
            };
            let img = Image::open(p2.to_str().unwrap(), &opts).map_err(|e| e.to_string())?;
            let size = img.size();
            if size > 64 * MIB {
                return Err(format!("unexpectedly large virtual size {size}"));
            }
            let mut v = vec![0u8; size as usize];
            for (i, c) in v.chunks_mut(MIB as usize).enumerate() {
                img.read_at(c, i as u64 * MIB).map_err(|e| e.to_string())?;
            }
            Ok(v)
        });
        let _ = tx.send(r);
    });
    match rx.recv_timeout(LIMIT) {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => panic!("library panicked on {}", path.display()),
        Err(_) => panic!("library hung (> {LIMIT:?}) on {}", path.display()),
    }
}

fn check(name: &str) {
    let dir = TempDir::new(name);
    let (file, fmt) = build_bad(name, dir.path());
    let before = read(&dir.join(&file));
    let mut args = vec!["convert"];
    if let Some(f) = fmt {
        args.extend(["-f", f]);
    }
    args.extend(["-O", "raw", &file, "ref.raw"]);
    let q = qemu_img(dir.path(), &args);
    let ours = library_read(dir.join(&file), fmt);
    assert_bytes_eq("input unchanged", &before, &read(&dir.join(&file)));
    match (q.ok(), ours) {
        (true, Ok(v)) => assert_bytes_eq(name, &read(&dir.join("ref.raw")), &v),
        (true, Err(e)) => panic!(
            "qemu-img reads this image, the library fails: {e}\n{}",
            q.describe()
        ),
        (false, Ok(_)) => panic!(
            "qemu-img fails on this image, the library read it:\n{}",
            q.describe()
        ),
        (false, Err(e)) => assert!(!e.is_empty(), "an error says what is wrong"),
    }
}

macro_rules! bad_cases {
    ($($v:ident),* $(,)?) => {
        $( #[test] fn $v() { check(stringify!($v)); } )*
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

#[test]
fn backing_loop_is_an_error() {
    let dir = TempDir::new("lib_backing_loop");
    build_backing_loop(dir.path());
    let e = library_read(dir.join("a"), None).expect_err("a backing loop cannot be opened");
    assert!(e.contains("creates an infinite loop"), "{e}");
}

/// Opening an image read-write must not be possible while another process
/// (qemu-io) holds it open for writing: the same lock qemu uses.
#[test]
fn write_lock_conflicts_with_qemu() {
    let dir = TempDir::new("lib_lock");
    qemu_img_ok(
        dir.path(),
        &["create", "-q", "-f", "qcow2", "x.qcow2", "1M"],
    );
    let img = Image::open(
        dir.join("x.qcow2").to_str().unwrap(),
        &OpenOptions::read_write(),
    )
    .expect("open rw");
    let o = qemu_img(dir.path(), &["info", "x.qcow2"]);
    assert_eq!(
        o.code,
        Some(1),
        "qemu-img must see our write lock:\n{}",
        o.describe()
    );
    assert!(
        o.stderr.contains("Failed to get shared \"write\" lock"),
        "{}",
        o.describe()
    );
    drop(img);
    qemu_img_ok(dir.path(), &["info", "x.qcow2"]);
}
