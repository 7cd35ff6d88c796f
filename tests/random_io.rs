//! Randomized writes through the library against a raw shadow: fixed
//! seeds, hundreds of writes / write_zeroes of random sizes at random
//! (often unaligned) offsets on a qcow2 we create. At the end qemu-img must
//! say the image equals the shadow and is clean, and a reopen through the
//! library reads the shadow back.

mod common;

use common::*;
use imgtool::format::CreateOptions;
use imgtool::ops::create::{create, CreateRequest};
use imgtool::{Image, OpenOptions};

struct Plan {
    seed: u64,
    /// "qcow2", or "raw" (which also proves this harness on a driver that
    /// exists from the start).
    format: &'static str,
    opts: &'static str,
    cluster: u64,
    size: u64,
    with_backing: bool,
    /// Start from this qemu-built variant (see `build_variant`) instead of
    /// an empty image we create: our writes then land on qemu's clusters,
    /// compressed ones included.
    start: Option<&'static str>,
    ops: usize,
}

fn create_fmt(path: &std::path::Path, format: &str, size: u64, opts: &str) {
    let req = CreateRequest {
        format: format.into(),
        filename: path.to_str().unwrap().into(),
        size: Some(size),
        options: CreateOptions::parse(opts).expect("options"),
        unsafe_backing: false,
    };
    create(&req).unwrap_or_else(|e| panic!("create {opts}: {e}"));
}

fn pick_offset_len(r: &mut Rng, p: &Plan) -> (u64, u64) {
    let max_len = (4 * p.cluster).max(16 * KIB);
    let len = match r.below(10) {
        0 => 1 + r.below(16),
        1..=6 => 1 + r.below(max_len),
        7 => p.cluster * (1 + r.below(3)),
        _ => 1 + r.below(256 * KIB),
    };
    let len = len.min(p.size);
    let mut off = r.below(p.size - len + 1);
    match r.below(3) {
        0 => off -= off % p.cluster,
        1 => off -= off % 512,
        _ => {}
    }
    (off, len)
}

fn run(p: Plan) {
    let dir = TempDir::new(&format!("random_{}", p.seed));
    let mut img_name = "img.qcow2".to_string();
    let mut shadow = vec![0u8; p.size as usize];
    let mut opts = p.opts.to_string();
    if let Some(v) = p.start {
        let b = build_variant(v, dir.path());
        assert_eq!(b.size, p.size, "plan size of {v}");
        shadow = qemu_raw_bytes(dir.path(), &b.file);
        img_name = b.file;
    } else if p.with_backing {
        // The backing file is smaller than the image: the tail reads as zeros.
        let bsize = p.size - 3 * p.cluster.max(64 * KIB);
        qemu_img_ok(
            dir.path(),
            &[
                "create",
                "-q",
                "-f",
                "qcow2",
                "base.qcow2",
                &bsize.to_string(),
            ],
        );
        std::fs::write(dir.join("r1.bin"), random_bytes(p.seed, MIB as usize)).unwrap();
        qemu_io(
            dir.path(),
            "qcow2",
            "base.qcow2",
            &[
                format!("write -s r1.bin 0 {}", MIB),
                format!("write -P 0x3c {} {}", MIB + 4097, 700 * KIB),
                format!("write -P 0x5d {} {}", bsize - 100 * KIB, 100 * KIB),
            ],
        );
        let b = qemu_raw_bytes(dir.path(), "base.qcow2");
        shadow[..b.len()].copy_from_slice(&b);
        if !opts.is_empty() {
            opts.push(',');
        }
        opts.push_str("backing_file=base.qcow2,backing_fmt=qcow2");
    }
    let img_path = dir.join(&img_name);
    if p.start.is_none() {
        create_fmt(&img_path, p.format, p.size, &opts);
    }
    {
        let rw = OpenOptions {
            format: Some(p.format.into()),
            ..OpenOptions::read_write()
        };
        let img =
            Image::open(img_path.to_str().unwrap(), &rw).unwrap_or_else(|e| panic!("open rw: {e}"));
        assert_eq!(img.size(), p.size);
        let mut r = Rng::new(p.seed);
        for i in 0..p.ops {
            let (off, len) = pick_offset_len(&mut r, &p);
            let range = off as usize..(off + len) as usize;
            match r.below(20) {
                0..=11 => {
                    let mut data = vec![0u8; len as usize];
                    match r.below(4) {
                        0 => data.fill(r.below(256) as u8),
                        1 => {} // zeros written as data
                        _ => r.fill(&mut data),
                    }
                    img.write_at(&data, off)
                        .unwrap_or_else(|e| panic!("op {i}: write_at({off}, {len}): {e}"));
                    shadow[range].copy_from_slice(&data);
                }
                12..=16 => {
                    let unmap = r.below(2) == 0;
                    img.write_zeroes(off, len, unmap).unwrap_or_else(|e| {
                        panic!("op {i}: write_zeroes({off}, {len}, {unmap}): {e}")
                    });
                    shadow[range].fill(0);
                }
                17 => img.flush().unwrap_or_else(|e| panic!("op {i}: flush: {e}")),
                18 => {
                    // Discard is advisory, so what it leaves is not
                    // specified; overwrite the range right away and let
                    // qemu-img check judge the metadata it left behind.
                    img.discard(off, len)
                        .unwrap_or_else(|e| panic!("op {i}: discard({off}, {len}): {e}"));
                    let mut data = vec![0u8; len as usize];
                    r.fill(&mut data);
                    img.write_at(&data, off)
                        .unwrap_or_else(|e| panic!("op {i}: write_at after discard: {e}"));
                    shadow[range].copy_from_slice(&data);
                }
                _ => {
                    let mut buf = vec![0u8; len as usize];
                    img.read_at(&mut buf, off)
                        .unwrap_or_else(|e| panic!("op {i}: read_at({off}, {len}): {e}"));
                    assert_bytes_eq(
                        &format!("op {i}: read_at({off}, {len}) vs shadow"),
                        &shadow[range],
                        &buf,
                    );
                }
            }
        }
        img.close().unwrap_or_else(|e| panic!("close: {e}"));
    }
    std::fs::write(dir.join("shadow.raw"), &shadow).unwrap();
    assert_qemu_compare_identical(
        dir.path(),
        &img_name,
        "shadow.raw",
        &["-f", p.format, "-F", "raw"],
    );
    if p.format == "qcow2" {
        assert_qemu_check_clean(dir.path(), &img_name);
        // The header still says what we asked for.
        let info = parse_json(
            "info",
            &qemu_img_ok(dir.path(), &["info", "--output=json", &img_name]),
        );
        assert_eq!(
            info.get("cluster-size"),
            Some(&Json::Num(p.cluster.to_string())),
            "cluster size"
        );
    }
    // Reopen and read back through the library.
    let ro = OpenOptions {
        format: Some(p.format.into()),
        ..OpenOptions::read_only()
    };
    let img =
        Image::open(img_path.to_str().unwrap(), &ro).unwrap_or_else(|e| panic!("reopen: {e}"));
    let mut back = vec![0u8; p.size as usize];
    for (i, chunk) in back.chunks_mut(333 * 1024).enumerate() {
        let off = (i * 333 * 1024) as u64;
        img.read_at(chunk, off)
            .unwrap_or_else(|e| panic!("re-read at {off}: {e}"));
    }
    assert_bytes_eq("re-read through the library vs shadow", &shadow, &back);
}

#[test]
fn raw_harness_check() {
    run(Plan {
        format: "raw",
        seed: 10,
        opts: "",
        cluster: 4 * KIB,
        size: 3 * MIB,
        with_backing: false,
        start: None,
        ops: 400,
    });
}

#[test]
fn default_64k() {
    run(Plan {
        format: "qcow2",
        seed: 1,
        opts: "",
        cluster: 64 * KIB,
        size: 4 * MIB,
        with_backing: false,
        start: None,
        ops: 400,
    });
}

#[test]
fn cluster_512() {
    run(Plan {
        format: "qcow2",
        seed: 2,
        opts: "cluster_size=512",
        cluster: 512,
        size: 2 * MIB,
        with_backing: false,
        start: None,
        ops: 400,
    });
}

#[test]
fn extended_l2() {
    run(Plan {
        format: "qcow2",
        seed: 3,
        opts: "extended_l2=on",
        cluster: 64 * KIB,
        size: 4 * MIB,
        with_backing: false,
        start: None,
        ops: 400,
    });
}

#[test]
fn with_backing() {
    run(Plan {
        format: "qcow2",
        seed: 4,
        opts: "",
        cluster: 64 * KIB,
        size: 4 * MIB,
        with_backing: true,
        start: None,
        ops: 400,
    });
}

#[test]
fn with_backing_extended_l2() {
    run(Plan {
        format: "qcow2",
        seed: 5,
        opts: "extended_l2=on,cluster_size=16k",
        cluster: 16 * KIB,
        size: 4 * MIB,
        with_backing: true,
        start: None,
        ops: 400,
    });
}

#[test]
fn with_backing_cluster_512() {
    run(Plan {
        format: "qcow2",
        seed: 6,
        opts: "cluster_size=512",
        cluster: 512,
        size: 2 * MIB,
        with_backing: true,
        start: None,
        ops: 300,
    });
}

#[test]
fn compat_010() {
    run(Plan {
        format: "qcow2",
        seed: 7,
        opts: "compat=0.10",
        cluster: 64 * KIB,
        size: 4 * MIB,
        with_backing: true,
        start: None,
        ops: 300,
    });
}

#[test]
fn refcount_1_lazy() {
    run(Plan {
        format: "qcow2",
        seed: 8,
        opts: "refcount_bits=1,lazy_refcounts=on,cluster_size=4k",
        cluster: 4 * KIB,
        size: 3 * MIB,
        with_backing: false,
        start: None,
        ops: 300,
    });
}

#[test]
fn refcount_64_2m_clusters() {
    run(Plan {
        format: "qcow2",
        seed: 9,
        opts: "refcount_bits=64,cluster_size=2M",
        cluster: 2 * MIB,
        size: 8 * MIB,
        with_backing: false,
        start: None,
        ops: 200,
    });
}

/// Four threads write disjoint byte ranges that share clusters (interleaved
/// 3 KiB stripes), through one `Image`; the result must still be exact.
#[test]
fn concurrent_writers_share_clusters() {
    concurrent("qcow2", "cluster_size=16k");
}

/// The same on raw: proves the harness itself.
#[test]
fn concurrent_writers_raw_harness_check() {
    concurrent("raw", "");
}

fn concurrent(format: &str, opts: &str) {
    const STRIPE: u64 = 3 * KIB;
    const THREADS: u64 = 4;
    let size = 4 * MIB;
    let dir = TempDir::new("random_threads");
    let img_path = dir.join("img.qcow2");
    create_fmt(&img_path, format, size, opts);
    let rw = OpenOptions {
        format: Some(format.into()),
        ..OpenOptions::read_write()
    };
    let img =
        Image::open(img_path.to_str().unwrap(), &rw).unwrap_or_else(|e| panic!("open rw: {e}"));
    let shadows: Vec<Vec<(u64, Vec<u8>)>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..THREADS)
            .map(|t| {
                let img = &img;
                s.spawn(move || {
                    let mut r = Rng::new(100 + t);
                    let mut log = Vec::new();
                    for _ in 0..150 {
                        let stripes = size / STRIPE;
                        let k = r.below(stripes / THREADS) * THREADS + t;
                        let off = k * STRIPE;
                        let len = (STRIPE).min(size - off);
                        let mut data = vec![0u8; len as usize];
                        if r.below(4) == 0 {
                            img.write_zeroes(off, len, r.below(2) == 0)
                                .unwrap_or_else(|e| panic!("write_zeroes: {e}"));
                        } else {
                            r.fill(&mut data);
                            img.write_at(&data, off)
                                .unwrap_or_else(|e| panic!("write_at: {e}"));
                        }
                        log.push((off, data));
                    }
                    log
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("writer thread"))
            .collect()
    });
    img.close().unwrap_or_else(|e| panic!("close: {e}"));
    let mut shadow = vec![0u8; size as usize];
    for log in shadows {
        for (off, data) in log {
            shadow[off as usize..off as usize + data.len()].copy_from_slice(&data);
        }
    }
    std::fs::write(dir.join("shadow.raw"), &shadow).unwrap();
    if format == "qcow2" {
        assert_qemu_check_clean(dir.path(), "img.qcow2");
    }
    assert_qemu_compare_identical(
        dir.path(),
        "img.qcow2",
        "shadow.raw",
        &["-f", format, "-F", "raw"],
    );
}

fn on_qemu_image(seed: u64, variant: &'static str, cluster: u64, size: u64) {
    run(Plan {
        format: "qcow2",
        seed,
        opts: "",
        cluster,
        size,
        with_backing: false,
        start: Some(variant),
        ops: 300,
    });
}

#[test]
fn on_qemu_zlib_compressed() {
    on_qemu_image(20, "compressed_zlib", 64 * KIB, 4 * MIB);
}

#[test]
fn on_qemu_zstd_compressed() {
    on_qemu_image(21, "compressed_zstd", 64 * KIB, 4 * MIB);
}

#[test]
fn on_qemu_extended_l2() {
    on_qemu_image(22, "extended_l2", 64 * KIB, 4 * MIB);
}

#[test]
fn on_qemu_chain3() {
    on_qemu_image(23, "chain3", 64 * KIB, 6 * MIB);
}

#[test]
fn on_qemu_lazy_refcounts_dirty() {
    // A dirty image opened read-write is repaired first (as QEMU does),
    // so the final check must be clean.
    on_qemu_image(24, "lazy_refcounts_dirty", 64 * KIB, 4 * MIB);
}

#[test]
fn on_qemu_cluster_512() {
    on_qemu_image(25, "cluster_512", 512, 4 * MIB);
}
