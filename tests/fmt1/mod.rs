//! qcow (v1), QED and VDI images made by qemu-img and qemu-io only, for the
//! differential tests (`tests/fmt_{qcow,qed,vdi}.rs` and
//! `cli/tests/fmt1_formats.rs`, which include this file by path). Expected
//! values always come from qemu-img; imgtool is never its own oracle.
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use crate::common::*;

/// Variants per format (a qemu-made image each); see [`build`].
pub const QCOW_VARIANTS: &[&str] = &[
    "plain",
    "odd_size",
    "backing_qcow2",
    "backing_raw",
    "compressed",
    "sparse_64m",
];
pub const QED_VARIANTS: &[&str] = &[
    "default",
    "cluster_4k_table_2",
    "cluster_256k_table_16",
    "backing_qcow2",
    "backing_raw",
    "need_check_set",
    "resized",
    "zero_clusters",
];
pub const VDI_VARIANTS: &[&str] = &["dynamic", "static_alloc", "odd_size", "sparse_64m"];

pub fn variants(format: &str) -> &'static [&'static str] {
    match format {
        "qcow" => QCOW_VARIANTS,
        "qed" => QED_VARIANTS,
        "vdi" => VDI_VARIANTS,
        _ => panic!("unknown format {format}"),
    }
}

fn put(dir: &Path, name: &str, data: &[u8]) {
    std::fs::write(dir.join(name), data).expect("write data file");
}

/// The data files [`standard_writes`] reads (`write -s` starts at byte 0
/// of its file, so each differing write has its own).
pub fn data_files(dir: &Path, seed: u64) {
    put(dir, "r1.bin", &random_bytes(seed + 1, MIB as usize));
    put(dir, "r2.bin", &random_bytes(seed + 2, MIB as usize));
    put(dir, "r3.bin", &random_bytes(seed + 3, MIB as usize));
    put(dir, "t1.bin", &text_bytes(seed + 4, MIB as usize));
    put(dir, "t2.bin", &text_bytes(seed + 5, MIB as usize));
}

fn create(dir: &Path, fmt: &str, file: &str, opts: &str, size: Option<&str>) {
    let mut args = vec!["create", "-q", "-f", fmt];
    if !opts.is_empty() {
        args.push("-o");
        args.push(opts);
    }
    args.push(file);
    if let Some(s) = size {
        args.push(s);
    }
    qemu_img_ok(dir, &args);
}

/// A base image with recognisable data for the backing variants.
fn base(dir: &Path, fmt: &str, file: &str, size: u64) {
    create(dir, fmt, file, "", Some(&size.to_string()));
    qemu_io(
        dir,
        fmt,
        file,
        &[
            format!("write -s t2.bin 0 {}", size.min(MIB)),
            format!("write -P 0xb5 {} {}", size / 2, 192 * KIB),
            format!("write -s r3.bin {} {}", size - 100 * KIB, 100 * KIB),
        ],
    );
}

/// Writes on an overlay: unaligned pieces over backing data, zeros that
/// must hide the backing file, and whole clusters.
fn overlay_writes(size: u64) -> Vec<String> {
    vec![
        "write -P 0x31 100 1000".into(),
        format!("write -s r1.bin {} {}", 64 * KIB, 128 * KIB),
        format!("write -z {} {}", size / 2 + 4096, 64 * KIB),
        format!("write -P 0x32 {} {}", size / 2 - 777, 2000),
        format!("write -s t1.bin {} {}", size - 300 * KIB + 5, 200 * KIB),
    ]
}

/// Build `format`/`variant` in `dir` with qemu-img/qemu-io only.
pub fn build(format: &str, variant: &str, dir: &Path) -> Built {
    data_files(dir, 41);
    let file = format!("img.{format}");
    let four = 4 * MIB;
    let eight = 8 * MIB;
    let built = |opts: &str, size: u64| Built {
        file: file.clone(),
        format: match format {
            "qcow" => "qcow",
            "qed" => "qed",
            _ => "vdi",
        },
        convert_opts: opts.to_string(),
        size,
    };
    let simple = |opts: &str, size: u64| {
        create(dir, format, &file, opts, Some(&size.to_string()));
        qemu_io(dir, format, &file, &standard_writes(size));
        built(opts, size)
    };
    match (format, variant) {
        ("qcow", "plain") => simple("", eight),
        ("qcow", "odd_size") => {
            // 1000 bytes: stored rounded up to a sector.
            create(dir, "qcow", &file, "", Some("1000"));
            qemu_io(
                dir,
                "qcow",
                &file,
                &["write -P 0x44 0 512".into(), "write -P 0x45 700 300".into()],
            );
            built("", 1024)
        }
        ("qcow", "backing_qcow2") | ("qcow", "backing_raw") => {
            let bf = if variant.ends_with("raw") {
                "raw"
            } else {
                "qcow2"
            };
            let bname = format!("base.{bf}");
            base(dir, bf, &bname, four);
            let o = format!("backing_file={bname},backing_fmt={bf}");
            create(dir, "qcow", &file, &o, None);
            qemu_io(dir, "qcow", &file, &overlay_writes(four));
            built(&o, four)
        }
        ("qcow", "compressed") => {
            put(dir, "src.raw", &mixed_raw(5, four));
            // qemu-img 10.0.2 writes every cluster and then exits 1 without
            // a message (its final zero-length compressed write to finish
            // the image is refused by qcow); the image itself is complete.
            let o = qemu_img(
                dir,
                &["convert", "-c", "-f", "raw", "-O", "qcow", "src.raw", &file],
            );
            assert!(
                o.stderr.is_empty() && dir.join(&file).exists(),
                "{}",
                o.describe()
            );
            // Partial overwrites of compressed clusters.
            qemu_io(
                dir,
                "qcow",
                &file,
                &[
                    format!("write -P 0x99 {} {}", 100 * KIB + 7, 10 * KIB),
                    format!("write -s r2.bin {} {}", MIB - 1000, 3000),
                ],
            );
            built("", four)
        }
        ("qcow", "sparse_64m") => {
            let size = 64 * MIB;
            create(dir, "qcow", &file, "", Some(&size.to_string()));
            qemu_io(
                dir,
                "qcow",
                &file,
                &[
                    format!("write -s r1.bin {} {}", size - 8 * KIB, 8 * KIB),
                    format!("write -s t1.bin {} {}", 33 * MIB + 3, 70 * KIB),
                    "write -P 0x21 0 4096".into(),
                ],
            );
            built("", size)
        }
        ("qed", "default") => simple("", eight),
        ("qed", "cluster_4k_table_2") => simple("cluster_size=4k,table_size=2", eight),
        ("qed", "cluster_256k_table_16") => simple("cluster_size=256k,table_size=16", eight),
        ("qed", "backing_qcow2") | ("qed", "backing_raw") => {
            let bf = if variant.ends_with("raw") {
                "raw"
            } else {
                "qcow2"
            };
            let bname = format!("base.{bf}");
            base(dir, bf, &bname, four);
            let o = format!("backing_file={bname},backing_fmt={bf}");
            create(dir, "qed", &file, &o, None);
            qemu_io(dir, "qed", &file, &overlay_writes(four));
            built(&o, four)
        }
        ("qed", "need_check_set") => {
            // Written and then "crashed": the need-check bit stays set.
            create(dir, "qed", &file, "", Some(&four.to_string()));
            let mut w = standard_writes(four);
            w.push("flush".into());
            qemu_io_then_abort(dir, "qed", &file, &w);
            built("", four)
        }
        ("qed", "resized") => {
            create(dir, "qed", &file, "", Some(&four.to_string()));
            qemu_io(dir, "qed", &file, &standard_writes(four));
            qemu_img_ok(dir, &["resize", "-f", "qed", &file, "9M"]);
            qemu_io(
                dir,
                "qed",
                &file,
                &[format!(
                    "write -s r3.bin {} {}",
                    9 * MIB - 70 * KIB,
                    70 * KIB
                )],
            );
            built("", 9 * MIB)
        }
        ("qed", "zero_clusters") => {
            create(dir, "qed", &file, "", Some(&four.to_string()));
            qemu_io(
                dir,
                "qed",
                &file,
                &[
                    format!("write -s r1.bin 0 {}", MIB),
                    format!("write -z {} {}", 128 * KIB, 256 * KIB),
                    format!("write -z {} {}", 2 * MIB, MIB),
                    format!("write -P 0x12 {} 100", 2 * MIB + 65536 + 9),
                ],
            );
            built("", four)
        }
        ("vdi", "dynamic") => simple("", eight),
        ("vdi", "static_alloc") => simple("static=on", eight),
        ("vdi", "odd_size") => {
            create(dir, "vdi", &file, "", Some("3000000"));
            qemu_io(
                dir,
                "vdi",
                &file,
                &[
                    "write -P 0x61 0 5000".into(),
                    format!("write -s r1.bin {} {}", 3000000 - 512 - 4096, 4096),
                ],
            );
            built("", 3000320)
        }
        ("vdi", "sparse_64m") => {
            let size = 64 * MIB;
            create(dir, "vdi", &file, "", Some(&size.to_string()));
            // Blocks allocated out of guest order.
            qemu_io(
                dir,
                "vdi",
                &file,
                &[
                    format!("write -s r1.bin {} {}", size - MIB, MIB),
                    format!("write -s t1.bin {} {}", 20 * MIB + 3, 5000),
                    "write -P 0x21 0 4096".into(),
                    format!("write -s r2.bin {} {}", 40 * MIB - 100, 200),
                ],
            );
            built("", size)
        }
        _ => panic!("unknown variant {format}/{variant}"),
    }
}

/// Creation options to exercise, per format: (label, `-o` string, size).
pub fn create_cases(format: &str) -> Vec<(&'static str, &'static str, u64)> {
    match format {
        "qcow" => vec![
            ("default", "", 4 * MIB),
            ("odd_size", "", 1000),
            ("big", "", 100 << 30),
            ("prealloc_full", "preallocation=full", MIB),
            ("encryption_off", "encryption=off", MIB),
            (
                "backing",
                "backing_file=base.qcow2,backing_fmt=qcow2",
                4 * MIB,
            ),
            (
                "backing_raw",
                "backing_file=base.raw,backing_fmt=raw",
                4 * MIB,
            ),
        ],
        "qed" => vec![
            ("default", "", 4 * MIB),
            ("odd_size", "", 1000),
            ("zero_size", "", 0),
            ("cluster_4k", "cluster_size=4k", 4 * MIB),
            (
                "cluster_4k_table_2",
                "cluster_size=4k,table_size=2",
                4 * MIB,
            ),
            ("cluster_1m", "cluster_size=1M", 64 * MIB),
            ("table_16", "table_size=16", 4 * MIB),
            (
                "backing",
                "backing_file=base.qcow2,backing_fmt=qcow2",
                4 * MIB,
            ),
            (
                "backing_raw",
                "backing_file=base.raw,backing_fmt=raw",
                4 * MIB,
            ),
            ("prealloc_falloc", "preallocation=falloc", MIB),
        ],
        "vdi" => vec![
            ("default", "", 4 * MIB),
            ("odd_size", "", 1048577),
            ("zero_size", "", 0),
            ("static_alloc", "static=on", 3 * MIB),
            ("static_odd", "static=on", 1000),
            ("big", "", 2 << 40),
            ("prealloc_full", "preallocation=full", MIB),
        ],
        _ => panic!("unknown format {format}"),
    }
}

/// Creation requests qemu-img refuses (label, `-o` string, size): ours must
/// refuse them too, with its message.
pub fn refused_create_cases(format: &str) -> Vec<(&'static str, &'static str, &'static str)> {
    match format {
        "qcow" => vec![
            ("encryption_on", "encryption=on", "1M"),
            ("encrypt_aes", "encrypt.format=aes", "1M"),
            (
                "encrypt_aes_secret",
                "encrypt.format=aes,encrypt.key-secret=s0",
                "1M",
            ),
            ("encrypt_luks", "encrypt.format=luks", "1M"),
            ("encrypt_foo", "encrypt.format=foo", "1M"),
            ("encrypt_both", "encryption=on,encrypt.format=aes", "1M"),
            ("secret_only", "encrypt.key-secret=s0", "1M"),
            ("zero_size", "", "0"),
            ("zero_size_encrypted", "encryption=on", "0"),
            ("prealloc_metadata", "preallocation=metadata", "1M"),
            ("prealloc_bad", "preallocation=foo", "1M"),
        ],
        "qed" => vec![
            ("cluster_2k", "cluster_size=2k", "1M"),
            ("cluster_odd", "cluster_size=5000", "1M"),
            ("cluster_128m", "cluster_size=128M", "1M"),
            ("cluster_64m", "cluster_size=64M", "1M"),
            ("table_0", "table_size=0", "1M"),
            ("table_3", "table_size=3", "1M"),
            ("table_32", "table_size=32", "1M"),
            ("too_big", "cluster_size=4k,table_size=1", "2G"),
            ("prealloc_metadata", "preallocation=metadata", "1M"),
            ("prealloc_bad", "preallocation=foo", "1M"),
        ],
        "vdi" => vec![
            ("too_big", "", "512T"),
            ("prealloc_metadata", "preallocation=metadata", "1M"),
            ("prealloc_bad", "preallocation=foo", "1M"),
        ],
        _ => panic!("unknown format {format}"),
    }
}

/// Make the base images the backing create cases name.
pub fn create_bases(dir: &Path) {
    create(dir, "qcow2", "base.qcow2", "", Some("4M"));
    create(dir, "raw", "base.raw", "", Some("4M"));
}

// ------------------------------------------------------- damaged images

/// Damaged or hostile images per format: patches of a good qemu-made image
/// (each `(offset, bytes)`), or a truncation. What qemu-img does with each
/// is the expected behaviour.
pub struct Bad {
    pub name: &'static str,
    pub truncate: Option<u64>,
    pub patches: Vec<(u64, Vec<u8>)>,
}

fn be32(v: u32) -> Vec<u8> {
    v.to_be_bytes().to_vec()
}
fn be64(v: u64) -> Vec<u8> {
    v.to_be_bytes().to_vec()
}
fn le32(v: u32) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}
fn le64(v: u64) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

fn bad(name: &'static str, patches: Vec<(u64, Vec<u8>)>) -> Bad {
    Bad {
        name,
        truncate: None,
        patches,
    }
}

fn cut(name: &'static str, n: u64) -> Bad {
    Bad {
        name,
        truncate: Some(n),
        patches: vec![],
    }
}

/// The good image the damaged ones start from: (file, its bad cases).
pub fn build_good(format: &str, dir: &Path) -> (String, Vec<Bad>) {
    let file = format!("good.{format}");
    match format {
        "qcow" => {
            // 4 KiB clusters, 512-entry L2 tables: L1 at 48, first L2 at 4 KiB.
            create(dir, "qcow", &file, "", Some("4M"));
            qemu_io(
                dir,
                "qcow",
                &file,
                &["write -P 0xab 0 8k".into(), "write -P 0xcd 2M 4k".into()],
            );
            let l2 = 4096u64;
            let cases = vec![
                cut("truncated_7", 7),
                cut("truncated_20", 20),
                cut("truncated_47", 47),
                cut("truncated_l1", 52),
                cut("truncated_l2", 5000),
                cut("truncated_data", 9000),
                bad("version_2", vec![(4, be32(2))]),
                bad("version_0", vec![(4, be32(0))]),
                bad("size_1", vec![(24, be64(1))]),
                bad("size_huge", vec![(24, be64(u64::MAX))]),
                bad("size_2_52", vec![(24, be64(1 << 52))]),
                bad("size_odd", vec![(24, be64(1_000_000))]),
                bad("cluster_bits_8", vec![(32, vec![8])]),
                bad("cluster_bits_17", vec![(32, vec![17])]),
                bad("cluster_bits_16", vec![(32, vec![16])]),
                bad("l2_bits_5", vec![(33, vec![5])]),
                bad("l2_bits_14", vec![(33, vec![14])]),
                bad("crypt_2", vec![(36, be32(2))]),
                bad("crypt_aes", vec![(36, be32(1))]),
                bad(
                    "backing_name_too_long",
                    vec![(8, be64(48)), (16, be32(1024))],
                ),
                bad("backing_name_1023", vec![(8, be64(48)), (16, be32(1023))]),
                bad(
                    "backing_offset_huge",
                    vec![(8, be64(u64::MAX - 3)), (16, be32(5))],
                ),
                bad(
                    "backing_offset_past_eof",
                    vec![(8, be64(1 << 40)), (16, be32(5))],
                ),
                bad("l1_offset_huge", vec![(40, be64(0xff00_0000_0000_0000))]),
                bad("l1_offset_past_eof", vec![(40, be64(1 << 40))]),
                bad("l1_offset_odd", vec![(40, be64(49))]),
                bad("l2_offset_huge", vec![(48, be64(0x7fff_ffff_ffff_0000))]),
                bad("l2_offset_top_bit", vec![(48, be64(1 << 63))]),
                bad("l2_offset_past_eof", vec![(48, be64(1 << 40))]),
                bad("data_past_eof", vec![(l2, be64(1 << 40))]),
                bad("data_unaligned", vec![(l2, be64(8192 + 7))]),
                bad("data_huge", vec![(l2, be64(0x7fff_ffff_ffff_ff00))]),
                bad(
                    "compressed_garbage",
                    vec![(l2, be64((1 << 63) | (100 << 51) | 48))],
                ),
                bad("compressed_len_0", vec![(l2, be64((1 << 63) | 8192))]),
                bad(
                    "compressed_past_eof",
                    vec![(l2, be64((1 << 63) | (100 << 51) | (1 << 40)))],
                ),
            ];
            (file, cases)
        }
        "qed" => {
            // 64 KiB clusters, 4-cluster tables: L1 at 64 KiB; the first
            // write allocates data at 320 KiB and its L2 at 384 KiB.
            create(dir, "qed", &file, "", Some("8M"));
            qemu_io(
                dir,
                "qed",
                &file,
                &["write -P 0xab 0 64k".into(), "write -P 0xcd 1M 4k".into()],
            );
            let l1 = 65536u64;
            let l2 = 384 * KIB;
            let cases = vec![
                cut("truncated_3", 3),
                cut("truncated_40", 40),
                cut("truncated_64", 64),
                cut("truncated_in_l1", 200_000),
                cut("truncated_in_l2", 400_000),
                cut("truncated_in_data", 330_000),
                bad("cluster_size_2k", vec![(4, le32(2048))]),
                bad("cluster_size_odd", vec![(4, le32(0x1_0010))]),
                bad("cluster_size_huge", vec![(4, le32(1 << 31))]),
                bad("table_size_3", vec![(8, le32(3))]),
                bad("table_size_32", vec![(8, le32(32))]),
                bad("table_size_1", vec![(8, le32(1))]),
                bad("header_size_0", vec![(12, le32(0))]),
                bad("header_size_2", vec![(12, le32(2))]),
                bad("header_size_huge", vec![(12, le32(0x1_0000))]),
                bad("feature_unknown", vec![(16, le64(0x30))]),
                bad("need_check", vec![(16, le64(2))]),
                bad("compat_features", vec![(24, le64(1))]),
                bad("autoclear_features", vec![(32, le64(1))]),
                bad("l1_offset_0", vec![(40, le64(0))]),
                bad("l1_offset_unaligned", vec![(40, le64(l1 + 512))]),
                bad("l1_offset_past_eof", vec![(40, le64(1 << 40))]),
                bad("l1_offset_huge", vec![(40, le64(u64::MAX - 65535))]),
                bad("image_size_odd", vec![(48, le64(1000))]),
                bad("image_size_huge", vec![(48, le64(1 << 62))]),
                bad("image_size_0", vec![(48, le64(0))]),
                bad("backing_without_name", vec![(16, le64(1))]),
                bad("backing_raw_without_name", vec![(16, le64(5))]),
                bad(
                    "backing_offset_past_header",
                    vec![(16, le64(1)), (56, le32(0x1_0000)), (60, le32(4))],
                ),
                bad(
                    "backing_name_huge",
                    vec![(16, le64(1)), (56, le32(64)), (60, le32(0xffff_ffff))],
                ),
                bad(
                    "backing_name_4096",
                    vec![(16, le64(1)), (56, le32(64)), (60, le32(4096))],
                ),
                bad(
                    "backing_name_missing_file",
                    vec![
                        (16, le64(1)),
                        (56, le32(64)),
                        (60, le32(3)),
                        (64, b"abc".to_vec()),
                    ],
                ),
                bad("l2_offset_unaligned", vec![(l1, le64(l2 + 512))]),
                bad("l2_offset_past_eof", vec![(l1, le64(1 << 40))]),
                bad("l2_offset_in_header", vec![(l1, le64(0))]),
                bad("l2_offset_one", vec![(l1, le64(1))]),
                bad("data_unaligned", vec![(l2, le64(320 * KIB + 8))]),
                bad("data_past_eof", vec![(l2, le64(1 << 40))]),
                bad("data_is_l1", vec![(l2, le64(l1))]),
                bad("data_twice", vec![(l2 + 8, le64(320 * KIB))]),
            ];
            (file, cases)
        }
        "vdi" => {
            create(dir, "vdi", &file, "", Some("4M"));
            qemu_io(
                dir,
                "vdi",
                &file,
                &["write -P 0xab 0 64k".into(), "write -P 0xcd 2M 4k".into()],
            );
            let bmap = 512u64;
            let cases = vec![
                cut("truncated_60", 60),
                cut("truncated_100", 100),
                cut("truncated_400", 400),
                cut("truncated_in_bmap", 514),
                cut("truncated_in_data", 1024 + 5000),
                bad("signature", vec![(0x40, le32(0x1234_5678))]),
                bad("banner", vec![(0, b"hello".to_vec())]),
                bad("version_1_0", vec![(0x44, le32(0x0001_0000))]),
                bad("version_2_1", vec![(0x44, le32(0x0002_0001))]),
                bad("header_size", vec![(0x48, le32(7))]),
                bad("image_type", vec![(0x4c, le32(9))]),
                bad("bmap_unaligned", vec![(0x154, le32(0x201))]),
                bad("data_unaligned", vec![(0x158, le32(0x401))]),
                bad("bmap_past_eof", vec![(0x154, le32(0x1000_0000))]),
                bad("data_overlaps_bmap", vec![(0x158, le32(0x200))]),
                bad("sector_size", vec![(0x168, le32(4096))]),
                bad("block_size", vec![(0x178, le32(4096))]),
                bad("block_extra", vec![(0x17c, le32(512))]),
                bad("disk_size_odd", vec![(0x170, le64(3_000_000))]),
                bad("disk_size_too_big", vec![(0x170, le64(5 * MIB))]),
                bad("disk_size_huge", vec![(0x170, le64(u64::MAX - 10))]),
                bad("blocks_too_many", vec![(0x180, le32(0x4000_0000))]),
                bad("blocks_0", vec![(0x180, le32(0)), (0x170, le64(0))]),
                bad("allocated_mismatch", vec![(0x184, le32(7))]),
                bad("link_uuid", vec![(0x1a8, le32(1))]),
                bad("parent_uuid", vec![(0x1b8, le32(1))]),
                bad("entry_too_large", vec![(bmap, le32(9))]),
                bad("entry_huge", vec![(bmap, le32(0x7fff_ffff))]),
                bad("entry_discarded", vec![(bmap, le32(0xffff_fffe))]),
                bad("entry_duplicate", vec![(bmap + 8, le32(0))]),
            ];
            (file, cases)
        }
        _ => panic!("unknown format {format}"),
    }
}

/// Apply one bad case to a copy of the good image; returns its name.
pub fn make_bad(dir: &Path, good: &str, b: &Bad) -> String {
    let name = format!("bad-{}", b.name);
    std::fs::copy(dir.join(good), dir.join(&name)).expect("copy good image");
    if let Some(n) = b.truncate {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join(&name))
            .expect("open for truncate");
        f.set_len(n).expect("truncate");
    }
    for (off, bytes) in &b.patches {
        patch(&dir.join(&name), *off, bytes);
    }
    name
}

/// Run `f` on another thread; fail the test if it panics or takes longer
/// than `limit` (a hang).
pub fn bounded<T: Send + 'static>(
    what: &str,
    limit: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        let _ = tx.send(r);
    });
    match rx.recv_timeout(limit) {
        Ok(Ok(v)) => v,
        Ok(Err(_)) => panic!("{what}: panicked"),
        Err(_) => panic!("{what}: no answer within {limit:?} (hang)"),
    }
}
