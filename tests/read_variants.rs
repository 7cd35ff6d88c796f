//! (b) Reading every qcow2 variant through the library (`Image::open` +
//! `read_at`) gives exactly the bytes of `qemu-img convert -O raw`.

mod common;

use common::*;
use imgtool::{Image, OpenOptions};

/// Read the whole guest through the library in odd-sized chunks (so chunk
/// boundaries fall inside clusters and subclusters).
fn library_read_all(path: &std::path::Path) -> Vec<u8> {
    let img = Image::open(path.to_str().unwrap(), &OpenOptions::read_only())
        .unwrap_or_else(|e| panic!("Image::open({}): {e}", path.display()));
    let size = img.size();
    let mut out = vec![0u8; size as usize];
    let mut off = 0usize;
    let mut step = 0usize;
    const CHUNKS: &[usize] = &[65536, 4096 + 512, 1 << 20, 7, 300 * 1024 + 3];
    while off < out.len() {
        let n = CHUNKS[step % CHUNKS.len()].min(out.len() - off);
        img.read_at(&mut out[off..off + n], off as u64)
            .unwrap_or_else(|e| panic!("read_at({off}, {n}) of {}: {e}", path.display()));
        off += n;
        step += 1;
    }
    out
}

fn check_variant(name: &str) {
    let dir = TempDir::new(name);
    let b = build_variant(name, dir.path());
    let expected = qemu_raw_bytes(dir.path(), &b.file);
    assert_eq!(
        expected.len() as u64,
        b.size,
        "qemu's raw has the virtual size"
    );
    let img = Image::open(
        dir.join(&b.file).to_str().unwrap(),
        &OpenOptions::read_only(),
    )
    .unwrap_or_else(|e| panic!("Image::open: {e}"));
    assert_eq!(img.size(), b.size, "virtual size");
    assert_eq!(img.format(), b.format, "probed format");
    drop(img);
    let actual = library_read_all(&dir.join(&b.file));
    assert_bytes_eq(
        &format!("{name}: library read vs qemu-img convert -O raw"),
        &expected,
        &actual,
    );
}

macro_rules! variants {
    ($($v:ident),* $(,)?) => {
        $( #[test] fn $v() { check_variant(stringify!($v)); } )*
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

/// A read that crosses the end of the image is refused, not truncated.
#[test]
fn read_past_end_is_an_error() {
    let dir = TempDir::new("read_past_end");
    qemu_img_ok(
        dir.path(),
        &["create", "-q", "-f", "qcow2", "x.qcow2", "1M"],
    );
    let img = Image::open(
        dir.join("x.qcow2").to_str().unwrap(),
        &OpenOptions::read_only(),
    )
    .expect("open");
    let mut buf = vec![0u8; 4096];
    assert!(img.read_at(&mut buf, MIB - 2048).is_err());
    assert!(img.read_at(&mut buf, MIB - 4096).is_ok());
    assert!(buf.iter().all(|&b| b == 0));
}

/// An open image is shared by reference between threads (the architecture's
/// `Send + Sync` rule): compile-time check.
#[test]
fn image_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Image>();
}

/// Four threads read random ranges of one open image at once (cache misses
/// and evictions racing); every read must match qemu-img's bytes.
fn concurrent_reads(name: &str) {
    let dir = TempDir::new(&format!("conc_{name}"));
    let b = build_variant(name, dir.path());
    let expected = qemu_raw_bytes(dir.path(), &b.file);
    let img = Image::open(
        dir.join(&b.file).to_str().unwrap(),
        &OpenOptions::read_only(),
    )
    .unwrap_or_else(|e| panic!("open: {e}"));
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let (img, expected) = (&img, &expected);
            s.spawn(move || {
                let mut r = Rng::new(1000 + t);
                for _ in 0..200 {
                    let len = 1 + r.below(200 * KIB) as usize;
                    let off = r.below(expected.len() as u64 - len as u64) as usize;
                    let mut buf = vec![0u8; len];
                    img.read_at(&mut buf, off as u64)
                        .unwrap_or_else(|e| panic!("read_at({off}, {len}): {e}"));
                    assert_bytes_eq(
                        &format!("thread {t}: read_at({off}, {len})"),
                        &expected[off..off + len],
                        &buf,
                    );
                }
            });
        }
    });
}

#[test]
fn concurrent_reads_compressed_zstd() {
    concurrent_reads("compressed_zstd");
}

#[test]
fn concurrent_reads_extended_l2() {
    concurrent_reads("extended_l2");
}

#[test]
fn concurrent_reads_chain3() {
    concurrent_reads("chain3");
}

#[test]
fn concurrent_reads_cluster_512() {
    concurrent_reads("cluster_512");
}
