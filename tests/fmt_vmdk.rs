//! vmdk against qemu-img: every subformat qemu-img makes reads the same
//! through the library, images we make look the same to qemu-img (info,
//! check, compare), random writes match a raw shadow, backing chains with
//! CIDs work both ways, streamOptimized reads and writes, damaged files
//! fail cleanly with QEMU's words.

mod common;
mod fmt2_common;

use common::*;
use fmt2_common::*;

const SUBFORMATS: &[&str] = &[
    "",
    "subformat=monolithicFlat",
    "subformat=twoGbMaxExtentSparse",
    "subformat=twoGbMaxExtentFlat",
    "zeroed_grain=on",
];

#[test]
fn qemu_made_read_same() {
    for o in SUBFORMATS {
        qemu_made_reads_same("vmdk", o, 10 * MIB, true);
    }
    qemu_made_reads_same("vmdk", "", 5 * MIB + 512, false);
    qemu_made_reads_same("vmdk", "adapter_type=lsilogic,hwversion=7", 4 * MIB, true);
}

#[test]
fn qemu_made_split_across_extents() {
    // Three 2 GiB extents (sparse and flat), data at each boundary.
    for o in [
        "subformat=twoGbMaxExtentSparse",
        "subformat=twoGbMaxExtentFlat",
    ] {
        let dir = TempDir::new("vmdk_split");
        qemu_img_ok(
            dir.path(),
            &["create", "-q", "-f", "vmdk", "-o", o, "s.vmdk", "5G"],
        );
        let g = 1024 * MIB;
        qemu_io(
            dir.path(),
            "vmdk",
            "s.vmdk",
            &[
                format!("write -P 0x31 {} 128k", 2 * g - 65536),
                format!("write -P 0x32 {} 4k", 4 * g + 512),
                format!("write -P 0x33 {} 64k", 5 * g - 65536),
            ],
        );
        let img = open_ro(&dir.join("s.vmdk"), "vmdk");
        let mut b = vec![0u8; 128 * 1024];
        img.read_at(&mut b, 2 * g - 65536).unwrap();
        assert!(b.iter().all(|&x| x == 0x31));
        let mut b = vec![0u8; 4096 + 1024];
        img.read_at(&mut b, 4 * g).unwrap();
        assert!(b[..512].iter().all(|&x| x == 0) && b[512..4608].iter().all(|&x| x == 0x32));
        let mut b = vec![0u8; 65536];
        img.read_at(&mut b, 5 * g - 65536).unwrap();
        assert!(b.iter().all(|&x| x == 0x33));
        assert_info_same_but_extent_children(dir.path(), "s.vmdk", "vmdk");
    }
}

#[test]
fn qemu_stream_optimized_reads_same() {
    let dir = TempDir::new("vmdk_stream");
    let size = 6 * MIB + 512;
    std::fs::write(dir.join("src.raw"), mixed_raw(3, size)).unwrap();
    qemu_img_ok(
        dir.path(),
        &[
            "convert",
            "-O",
            "vmdk",
            "-o",
            "subformat=streamOptimized",
            "src.raw",
            "s.vmdk",
        ],
    );
    let want = qemu_raw_of(dir.path(), "s.vmdk", "vmdk");
    let got = library_read_all(&dir.join("s.vmdk"), "vmdk");
    assert_bytes_eq("streamOptimized", &want, &got);
    assert_info_same(dir.path(), "s.vmdk", "vmdk");
}

#[test]
fn create_like_qemu() {
    for o in SUBFORMATS {
        for size in [0, MIB, 5 * 1024 * MIB + 512] {
            if size == 0 {
                // qemu-img cannot open these itself: no extents (it
                // aborts), or a zero capacity read as a descriptor.
                continue;
            }
            our_create_matches_qemu("vmdk", o, size);
        }
    }
    for o in [
        "subformat=streamOptimized",
        "adapter_type=lsilogic",
        "adapter_type=buslogic,toolsversion=12",
        "adapter_type=legacyESX,hwversion=8",
        "compat6=on",
        "compat6=off,hwversion=undefined",
        "subformat=monolithicSparse,zeroed_grain=off",
    ] {
        our_create_matches_qemu("vmdk", o, 10 * MIB);
    }
    // Descriptor text equal apart from the CID.
    let dir = TempDir::new("vmdk_desc_text");
    let o = "subformat=twoGbMaxExtentFlat,adapter_type=lsilogic";
    lib_create(&dir.join("a.vmdk"), "vmdk", 5 * 1024 * MIB, o);
    qemu_img_ok(
        dir.path(),
        &["create", "-q", "-f", "vmdk", "-o", o, "b.vmdk", "5G"],
    );
    let strip = |t: String| {
        t.lines()
            .filter(|l| !l.starts_with("CID="))
            .map(|l| l.replace("b-f", "a-f"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(
        strip(String::from_utf8(read(&dir.join("a.vmdk"))).unwrap()),
        strip(String::from_utf8(read(&dir.join("b.vmdk"))).unwrap())
    );
}

#[test]
fn create_errors_like_qemu() {
    let dir = TempDir::new("vmdk_create_err");
    qemu_img_ok(
        dir.path(),
        &["create", "-q", "-f", "vmdk", "base.vmdk", "1M"],
    );
    qemu_img_ok(
        dir.path(),
        &["create", "-q", "-f", "qcow2", "base.qcow2", "1M"],
    );
    for (opts, want) in [
        ("adapter_type=foo", "invalid parameter value: foo"),
        ("subformat=foo", "invalid parameter value: foo"),
        (
            "compat6=on,hwversion=7",
            "compat6 cannot be enabled with hwversion set",
        ),
        (
            "subformat=monolithicFlat,zeroed_grain=on",
            "Flat image can't enable zeroed grain",
        ),
        (
            "subformat=twoGbMaxExtentFlat,backing_file=base.vmdk,backing_fmt=vmdk",
            "Flat image can't have backing file",
        ),
        (
            "backing_file=base.qcow2,backing_fmt=qcow2",
            "backing_file must be a vmdk image",
        ),
        (
            "preallocation=metadata",
            "Unsupported preallocation mode: metadata",
        ),
    ] {
        let q = qemu_img(
            dir.path(),
            &["create", "-f", "vmdk", "-o", opts, "q.vmdk", "1M"],
        );
        assert!(
            !q.ok() && q.stderr.contains(want),
            "{opts}: {}",
            q.describe()
        );
        let req = imgtool::ops::create::CreateRequest {
            format: "vmdk".into(),
            filename: dir.join("e.vmdk").to_str().unwrap().into(),
            size: Some(MIB),
            options: imgtool::format::CreateOptions::parse(opts).unwrap(),
            unsafe_backing: true,
        };
        let e = imgtool::ops::create::create(&req).expect_err(opts);
        assert_eq!(e.message(), want, "{opts}");
    }
}

#[test]
fn random_writes_variants() {
    random_writes_one("", 1);
    random_writes_one("zeroed_grain=on", 2);
    random_writes_one("subformat=monolithicFlat", 3);
}

fn random_writes_one(o: &str, seed: u64) {
    random_writes("vmdk", o, 5 * MIB + 512, 64 * KIB, seed, 300);
}

#[test]
fn random_writes_split() {
    // Small images still split at 2 GiB: one extent each, but the
    // descriptor + extent-file path is exercised.
    random_writes(
        "vmdk",
        "subformat=twoGbMaxExtentSparse",
        3 * MIB,
        64 * KIB,
        4,
        200,
    );
    random_writes(
        "vmdk",
        "subformat=twoGbMaxExtentFlat",
        3 * MIB,
        64 * KIB,
        5,
        200,
    );
}

#[test]
fn parallel_writes_sparse() {
    parallel_writes("vmdk", "", 16 * MIB, 4);
}

#[test]
fn our_images_pass_qemu_check() {
    for o in SUBFORMATS {
        let dir = TempDir::new("vmdk_check");
        lib_create(&dir.join("c.vmdk"), "vmdk", 4 * MIB, o);
        {
            let img = imgtool::Image::open(
                dir.join("c.vmdk").to_str().unwrap(),
                &imgtool::OpenOptions::read_write(),
            )
            .unwrap();
            img.write_at(&vec![7u8; 100_000], 12345).unwrap();
            img.write_at(&vec![8u8; 65536], 3 * MIB).unwrap();
            img.write_zeroes(3 * MIB, 65536, true).unwrap();
            img.close().unwrap();
        }
        assert_qemu_check_clean(dir.path(), "c.vmdk");
        // The CID changed on the first write, as QEMU does.
        let t = qemu_img_ok(dir.path(), &["info", "--output=json", "c.vmdk"]);
        assert!(t.contains("\"cid\""));
    }
}

#[test]
fn convert_both_ways() {
    convert_roundtrip("vmdk", "");
    convert_roundtrip("vmdk", "subformat=twoGbMaxExtentFlat");
    convert_roundtrip("vmdk", "subformat=streamOptimized");
    convert_roundtrip("vmdk", "zeroed_grain=on");
}

#[test]
fn stream_optimized_written_by_us() {
    let dir = TempDir::new("vmdk_stream_w");
    lib_create(
        &dir.join("s.vmdk"),
        "vmdk",
        4 * MIB,
        "subformat=streamOptimized",
    );
    let mut shadow = vec![0u8; 4 * MIB as usize];
    {
        let img = imgtool::Image::open(
            dir.join("s.vmdk").to_str().unwrap(),
            &imgtool::OpenOptions::read_write(),
        )
        .unwrap();
        // Whole grains, a grain in two halves, an unaligned piece.
        let g = 65536usize;
        let d = text_bytes(9, 3 * g);
        img.write_at(&d[..g], 0).unwrap();
        shadow[..g].copy_from_slice(&d[..g]);
        img.write_at(&d[g..g + g / 2], (5 * g) as u64).unwrap();
        img.write_at(&d[g + g / 2..2 * g], (5 * g + g / 2) as u64)
            .unwrap();
        shadow[5 * g..6 * g].copy_from_slice(&d[g..2 * g]);
        img.write_at(&d[2 * g..2 * g + 1000], (9 * g + 77) as u64)
            .unwrap();
        shadow[9 * g + 77..9 * g + 1077].copy_from_slice(&d[2 * g..2 * g + 1000]);
        // Writing a grain twice is refused, as in QEMU.
        assert!(img.write_at(&d[..g], 0).is_err());
        img.close().unwrap();
    }
    std::fs::write(dir.join("shadow.raw"), &shadow).unwrap();
    assert_qemu_compare_identical(
        dir.path(),
        "s.vmdk",
        "shadow.raw",
        &["-f", "vmdk", "-F", "raw"],
    );
    assert_qemu_check_clean(dir.path(), "s.vmdk");
}

#[test]
fn backing_chain_with_cids() {
    let dir = TempDir::new("vmdk_chain");
    data_files(dir.path(), 21);
    qemu_img_ok(
        dir.path(),
        &["create", "-q", "-f", "vmdk", "base.vmdk", "4M"],
    );
    qemu_io(
        dir.path(),
        "vmdk",
        "base.vmdk",
        &[
            "write -s r1.bin 0 1M".to_string(),
            "write -P 0x44 3M 1M".to_string(),
        ],
    );
    // Overlay made by us, written partly (copy-on-write of the base around
    // the request), read by qemu-img through the chain.
    lib_create(
        &dir.join("ov.vmdk"),
        "vmdk",
        4 * MIB,
        "backing_file=base.vmdk,backing_fmt=vmdk",
    );
    let info = qemu_img_ok(dir.path(), &["info", "ov.vmdk"]);
    assert!(info.contains("backing file: base.vmdk"), "{info}");
    {
        let img = imgtool::Image::open(
            dir.join("ov.vmdk").to_str().unwrap(),
            &imgtool::OpenOptions::read_write(),
        )
        .unwrap();
        img.write_at(&[0xeeu8; 1000], 70_000).unwrap();
        img.close().unwrap();
    }
    let want = {
        let mut b = qemu_raw_of(dir.path(), "base.vmdk", "vmdk");
        b[70_000..71_000].fill(0xee);
        b
    };
    assert_bytes_eq(
        "chain via qemu",
        &want,
        &qemu_raw_of(dir.path(), "ov.vmdk", "vmdk"),
    );
    assert_bytes_eq(
        "chain via us",
        &want,
        &library_read_all(&dir.join("ov.vmdk"), "vmdk"),
    );
    // qemu-img's own overlay, read by us.
    qemu_img_ok(
        dir.path(),
        &[
            "create",
            "-q",
            "-f",
            "vmdk",
            "-b",
            "base.vmdk",
            "-F",
            "vmdk",
            "q.vmdk",
        ],
    );
    qemu_io(
        dir.path(),
        "vmdk",
        "q.vmdk",
        &["write -P 0x55 1000 100".to_string()],
    );
    assert_info_same(dir.path(), "q.vmdk", "vmdk");
    assert_bytes_eq(
        "qemu overlay",
        &qemu_raw_of(dir.path(), "q.vmdk", "vmdk"),
        &library_read_all(&dir.join("q.vmdk"), "vmdk"),
    );
    // A base changed after the overlay was made: its CID no longer
    // matches, and both refuse to read through it.
    qemu_io(
        dir.path(),
        "vmdk",
        "base.vmdk",
        &["write -P 0x66 0 512".to_string()],
    );
    let q = qemu_img(dir.path(), &["convert", "-O", "raw", "q.vmdk", "x.raw"]);
    assert!(!q.ok(), "{}", q.describe());
    let img = open_ro(&dir.join("q.vmdk"), "vmdk");
    let mut b = vec![0u8; 4096];
    assert!(img.read_at(&mut b, 2 * MIB).is_err());
}

// ------------------------------------------------------------ damaged

fn set_le32(b: &mut [u8], o: usize, v: u32) {
    b[o..o + 4].copy_from_slice(&v.to_le_bytes());
}
fn set_le64(b: &mut [u8], o: usize, v: u64) {
    b[o..o + 8].copy_from_slice(&v.to_le_bytes());
}
fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}

/// Replace `from` by `to` in the embedded descriptor (same length keeps
/// every offset).
fn patch_desc(b: &mut [u8], from: &str, to: &str) {
    let d = &b[512..512 + 10240];
    let t = String::from_utf8_lossy(d).to_string();
    let i = t.find(from).expect("descriptor text");
    let mut bytes = t.as_bytes().to_vec();
    bytes.splice(i..i + from.len(), to.bytes());
    bytes.resize(10240, 0);
    b[512..512 + 10240].copy_from_slice(&bytes);
}

#[test]
fn damaged_images() {
    let dir = TempDir::new("vmdk_bad");
    qemu_img_ok(dir.path(), &["create", "-q", "-f", "vmdk", "g.vmdk", "4M"]);
    qemu_io(
        dir.path(),
        "vmdk",
        "g.vmdk",
        &[
            "write -P 0xab 0 64k".to_string(),
            "write -P 0xcd 2M 64k".to_string(),
        ],
    );
    let good = read(&dir.join("g.vmdk"));
    let gd = (u64::from_le_bytes(good[4 + 52..4 + 60].try_into().unwrap()) * 512) as usize;
    let gt0 = le32(&good, gd) as usize * 512;
    type Mutate = Box<dyn Fn(&mut Vec<u8>)>;
    let cases: Vec<(&str, Mutate)> = vec![
        ("empty", Box::new(|b| b.clear())),
        ("three_bytes", Box::new(|b| b.truncate(3))),
        ("truncated_60", Box::new(|b| b.truncate(60))),
        ("truncated_600", Box::new(|b| b.truncate(600))),
        (
            "truncated_in_tables",
            Box::new(move |b| b.truncate(gd + 100)),
        ),
        ("truncated_before_grains", Box::new(|b| b.truncate(40000))),
        ("version_4", Box::new(|b| set_le32(b, 4, 4))),
        ("version_3_uncompressed", Box::new(|b| set_le32(b, 4, 3))),
        ("gtes_1024", Box::new(|b| set_le32(b, 4 + 40, 1024))),
        ("gtes_0", Box::new(|b| set_le32(b, 4 + 40, 0))),
        (
            "granularity_huge",
            Box::new(|b| set_le64(b, 4 + 16, 1 << 22)),
        ),
        ("granularity_0", Box::new(|b| set_le64(b, 4 + 16, 0))),
        ("capacity_huge", Box::new(|b| set_le64(b, 4 + 8, 1 << 40))),
        ("capacity_zero", Box::new(|b| set_le64(b, 4 + 8, 0))),
        (
            "grain_offset_huge",
            Box::new(|b| set_le64(b, 4 + 60, 1 << 30)),
        ),
        (
            "gd_offset_past_eof",
            Box::new(|b| set_le64(b, 4 + 52, 1 << 30)),
        ),
        (
            "gd_at_end_no_footer",
            Box::new(|b| set_le64(b, 4 + 52, u64::MAX)),
        ),
        (
            "gt_past_eof",
            Box::new(move |b| set_le32(b, gd, 0x0fff_ffff)),
        ),
        ("gt_zero", Box::new(move |b| set_le32(b, gd, 0))),
        (
            "grain_past_eof",
            Box::new(move |b| set_le32(b, gt0, 0x0fff_ffff)),
        ),
        ("grain_in_header", Box::new(move |b| set_le32(b, gt0, 1))),
        ("compressed_flag", Box::new(|b| b[4 + 73] = 1)),
        ("bad_magic", Box::new(|b| b[0] = b'X')),
        ("desc_no_cid", Box::new(|b| patch_desc(b, "CID=", "XID="))),
        ("desc_bad_cid", Box::new(|b| patch_desc(b, "CID=", "CID:"))),
        (
            "desc_no_parent_cid",
            Box::new(|b| patch_desc(b, "parentCID", "parentXID")),
        ),
        (
            "desc_cid_garbage",
            Box::new(|b| patch_desc(b, "CID=", "CID=zz")),
        ),
    ];
    for (name, mutate) in &cases {
        let mut b = good.clone();
        mutate(&mut b);
        let file = format!("{name}.vmdk");
        std::fs::write(dir.join(&file), &b).unwrap();
        compare_damaged(dir.path(), &file);
    }
    // Damaged descriptors of a flat image.
    qemu_img_ok(
        dir.path(),
        &[
            "create",
            "-q",
            "-f",
            "vmdk",
            "-o",
            "subformat=monolithicFlat",
            "f.vmdk",
            "1M",
        ],
    );
    let d = String::from_utf8(read(&dir.join("f.vmdk"))).unwrap();
    let descs: &[(&str, String)] = &[
        ("no_create_type", d.replace("createType", "createTipe")),
        (
            "sparse_type",
            d.replace("\"monolithicFlat\"", "\"monolithicSparse\""),
        ),
        (
            "bad_extent_line",
            d.replace("\"f-flat.vmdk\" 0", "\"f-flat.vmdk\""),
        ),
        (
            "negative_offset",
            d.replace("\"f-flat.vmdk\" 0", "\"f-flat.vmdk\" -5"),
        ),
        ("missing_extent", d.replace("f-flat.vmdk", "nothere.vmdk")),
        ("rdonly_extent", d.replace("RW 2048", "RDONLY 2048")),
        ("zero_sectors", d.replace("RW 2048", "RW 0")),
        ("unknown_type", d.replace("FLAT", "ZLAT")),
        (
            "extent_offset",
            d.replace("\"f-flat.vmdk\" 0", "\"f-flat.vmdk\" 1"),
        ),
        (
            "two_extents",
            d.replace(
                "RW 2048 FLAT \"f-flat.vmdk\" 0\n",
                "RW 2048 FLAT \"f-flat.vmdk\" 0\nRW 1024 FLAT \"f-flat.vmdk\" 100\n",
            ),
        ),
        (
            "self_sparse",
            d.replace(
                "RW 2048 FLAT \"f-flat.vmdk\" 0",
                "RW 2048 SPARSE \"f.vmdk\"",
            ),
        ),
        (
            "sparse_extent_too_small",
            d.replace(
                "RW 2048 FLAT \"f-flat.vmdk\" 0",
                "RW 2048 SPARSE \"tiny.bin\"",
            ),
        ),
        (
            "sparse_extent_not_vmdk",
            d.replace(
                "RW 2048 FLAT \"f-flat.vmdk\" 0",
                "RW 2048 SPARSE \"f-flat.vmdk\"",
            ),
        ),
    ];
    std::fs::write(dir.join("tiny.bin"), b"ab").unwrap();
    for (name, text) in descs {
        let file = format!("{name}.vmdk");
        std::fs::write(dir.join(&file), text).unwrap();
        compare_damaged(dir.path(), &file);
    }
}

/// qemu-img's verdict on `file` is ours; where both read it, the bytes
/// agree.
fn compare_damaged(dir: &std::path::Path, file: &str) {
    let q = qemu_img(dir, &["info", "-f", "vmdk", file]);
    let ours = open_and_read_with_deadline(&dir.join(file), "vmdk");
    if q.signal.is_some() {
        // qemu-img aborts on some (an image without extents); that we
        // neither panicked nor hung is all there is to compare.
        return;
    }
    match (&ours, q.ok()) {
        (Err(e), false) => {
            let last = q.stderr.trim_end().lines().last().unwrap_or("");
            let qmsg = last.trim_start_matches("qemu-img: ");
            let e = e.replace(&format!("{}/", dir.display()), "");
            assert_eq!(e, qmsg, "{file}: error text\n{}", q.describe());
        }
        (Ok(()), true) if open_ro(&dir.join(file), "vmdk").size() > 64 * MIB => {}
        (Ok(()), true) => {
            let qc = qemu_img(
                dir,
                &["convert", "-f", "vmdk", "-O", "raw", file, "out.raw"],
            );
            if qc.ok() {
                let want = read(&dir.join("out.raw"));
                let got = library_read_all(&dir.join(file), "vmdk");
                assert_bytes_eq(file, &want, &got);
            }
        }
        (Err(_), true) => {
            let qc = qemu_img(
                dir,
                &["convert", "-f", "vmdk", "-O", "raw", file, "out.raw"],
            );
            assert!(
                !qc.ok(),
                "{file}: ours {ours:?} but qemu-img reads it:\n{}",
                q.describe()
            );
        }
        (Ok(()), false) => panic!("{file}: we open it but qemu-img:\n{}", q.describe()),
    }
}

/// A hand-made VMDK3 ("COWD") sparse file: 4096-entry grain tables,
/// 4 KiB grains. QEMU needs a CID text at 0x200 to open one.
fn build_cowd(path: &std::path::Path) {
    let mut b = vec![0u8; 128 * 512];
    b[0..4].copy_from_slice(b"COWD");
    let h = |b: &mut Vec<u8>, i: usize, v: u32| set_le32(b, 4 + i * 4, v);
    h(&mut b, 0, 1); // version
    h(&mut b, 1, 3); // flags
    h(&mut b, 2, 4096); // disk sectors (2 MiB)
    h(&mut b, 3, 8); // granularity: 8 sectors
    h(&mut b, 4, 40); // L1 at sector 40
    h(&mut b, 5, 1); // one L1 entry
    let desc = b"CID=12345678\nparentCID=ffffffff\n";
    b[512..512 + desc.len()].copy_from_slice(desc);
    set_le32(&mut b, 40 * 512, 41); // grain table at sector 41
    set_le32(&mut b, 41 * 512, 80); // grain 0 at sector 80
    set_le32(&mut b, 41 * 512 + 3 * 4, 88); // grain 3 at sector 88
    b.resize(96 * 512, 0);
    b[80 * 512..88 * 512].fill(0x3c);
    b[88 * 512..96 * 512].fill(0x4d);
    std::fs::write(path, &b).unwrap();
}

#[test]
fn vmdk3_cowd_reads_and_writes_like_qemu() {
    let dir = TempDir::new("vmdk3");
    build_cowd(&dir.join("c.vmdk"));
    assert_bytes_eq(
        "COWD read",
        &qemu_raw_of(dir.path(), "c.vmdk", "vmdk"),
        &library_read_all(&dir.join("c.vmdk"), "vmdk"),
    );
    assert_info_same(dir.path(), "c.vmdk", "vmdk");
    // We write (new grain and allocated grain), qemu-img reads it back.
    {
        let img = imgtool::Image::open(
            dir.join("c.vmdk").to_str().unwrap(),
            &imgtool::OpenOptions::read_write(),
        )
        .unwrap();
        img.write_at(&[0x77u8; 1000], 3 * 4096 + 100).unwrap();
        img.write_at(&[0x88u8; 5000], MIB + 10).unwrap();
        img.close().unwrap();
    }
    let mut want = vec![0u8; 2 * MIB as usize];
    want[..4096].fill(0x3c);
    want[3 * 4096..4 * 4096].fill(0x4d);
    want[3 * 4096 + 100..3 * 4096 + 1100].fill(0x77);
    want[MIB as usize + 10..MIB as usize + 5010].fill(0x88);
    assert_bytes_eq(
        "after our writes",
        &want,
        &qemu_raw_of(dir.path(), "c.vmdk", "vmdk"),
    );
    assert_qemu_check_clean(dir.path(), "c.vmdk");
}

#[test]
fn mutated_metadata_never_panic() {
    let dir = TempDir::new("vmdk_mut");
    qemu_img_ok(dir.path(), &["create", "-q", "-f", "vmdk", "g.vmdk", "4M"]);
    qemu_io(
        dir.path(),
        "vmdk",
        "g.vmdk",
        &["write -P 0xab 0 64k".to_string()],
    );
    let good = read(&dir.join("g.vmdk"));
    mutation_rounds(
        "vmdk",
        &good,
        &[(0, 512), (512, 1024), (10752, 40000)],
        300,
        9,
    );
    let mut s = vec![];
    {
        let raw = mixed_raw(5, MIB);
        std::fs::write(dir.join("r.raw"), raw).unwrap();
        qemu_img_ok(
            dir.path(),
            &[
                "convert",
                "-O",
                "vmdk",
                "-o",
                "subformat=streamOptimized",
                "r.raw",
                "s.vmdk",
            ],
        );
        s.extend(read(&dir.join("s.vmdk")));
    }
    let n = s.len();
    mutation_rounds(
        "vmdk",
        &s,
        &[(0, 512), (10752, 20000), (n - 60000, 60000)],
        300,
        10,
    );
    // Descriptor text of a flat image.
    qemu_img_ok(
        dir.path(),
        &[
            "create",
            "-q",
            "-f",
            "vmdk",
            "-o",
            "subformat=monolithicFlat",
            "f.vmdk",
            "1M",
        ],
    );
    let d = read(&dir.join("f.vmdk"));
    let n = d.len();
    mutation_rounds("vmdk", &d, &[(0, n)], 300, 11);
}
