//! vpc (VHD) against qemu-img: images qemu-img makes read identically,
//! images we make look the same to qemu-img, random writes match a raw
//! shadow, conversions round-trip, damaged files fail cleanly.

mod common;
mod fmt2_common;

use common::*;
use fmt2_common::*;

#[test]
fn qemu_dynamic_reads_same() {
    qemu_made_reads_same("vpc", "", 10 * MIB, true);
}

#[test]
fn qemu_fixed_reads_same() {
    qemu_made_reads_same("vpc", "subformat=fixed", 10 * MIB, true);
}

#[test]
fn qemu_force_size_reads_same() {
    qemu_made_reads_same("vpc", "force_size=on", 10 * MIB, true);
}

#[test]
fn qemu_fixed_force_size_reads_same() {
    qemu_made_reads_same("vpc", "subformat=fixed,force_size=on", 5 * MIB + 512, true);
}

#[test]
fn qemu_odd_sizes_read_same() {
    for size in [0, 1000, 34816, 5 * MIB + 3] {
        qemu_made_reads_same("vpc", "", size, false);
    }
}

#[test]
fn qemu_large_sparse_reads_same() {
    // Beyond CHS (127 GiB): maximum geometry, exact size.
    let dir = TempDir::new("vpc_large");
    qemu_img_ok(
        dir.path(),
        &["create", "-q", "-f", "vpc", "big.vpc", "200G"],
    );
    qemu_io(
        dir.path(),
        "vpc",
        "big.vpc",
        &["write -P 0x42 150G 4k".to_string()],
    );
    assert_info_same(dir.path(), "big.vpc", "vpc");
    let img = open_ro(&dir.join("big.vpc"), "vpc");
    let mut buf = vec![0u8; 8192];
    img.read_at(&mut buf, 150 * 1024 * MIB - 4096).unwrap();
    assert!(buf[..4096].iter().all(|&b| b == 0));
    assert!(buf[4096..].iter().all(|&b| b == 0x42));
}

#[test]
fn create_dynamic_like_qemu() {
    for size in [0, 1000, MIB, 100 * MIB, 127 * 1024 * MIB, 200 * 1024 * MIB] {
        our_create_matches_qemu("vpc", "", size);
    }
}

#[test]
fn create_fixed_like_qemu() {
    for size in [1000, 10 * MIB] {
        our_create_matches_qemu("vpc", "subformat=fixed", size);
    }
}

#[test]
fn create_force_size_like_qemu() {
    our_create_matches_qemu("vpc", "force_size=on", 10 * MIB + 512);
    our_create_matches_qemu("vpc", "subformat=fixed,force_size=on", 3 * MIB);
    our_create_matches_qemu("vpc", "subformat=dynamic,force_size=off", 3 * MIB);
}

#[test]
fn create_errors_like_qemu() {
    let dir = TempDir::new("vpc_create_err");
    for (opts, size, want) in [
        (
            "",
            3000 * 1024 * MIB,
            "The image size is too large for file format 'vpc'",
        ),
        (
            "force_size=on",
            3000 * 1024 * MIB,
            "The image size is too large for file format 'vpc'",
        ),
        (
            "subformat=foo",
            MIB,
            "Parameter 'subformat' does not accept value 'foo'",
        ),
        ("preallocation=bogus", MIB, "invalid parameter value: bogus"),
        (
            "preallocation=metadata",
            MIB,
            "Unsupported preallocation mode: metadata",
        ),
    ] {
        let req = imgtool::ops::create::CreateRequest {
            format: "vpc".into(),
            filename: dir.join("e.vpc").to_str().unwrap().into(),
            size: Some(size),
            options: imgtool::format::CreateOptions::parse(opts).unwrap(),
            unsafe_backing: false,
        };
        let e = imgtool::ops::create::create(&req).expect_err(opts);
        assert_eq!(e.message(), want, "{opts}");
        // qemu-img says the same.
        let sz = size.to_string();
        let mut args = vec!["create", "-f", "vpc"];
        if !opts.is_empty() {
            args.extend(["-o", opts]);
        }
        args.extend(["q.vpc", &sz]);
        let q = qemu_img(dir.path(), &args);
        assert!(!q.ok() && q.stderr.contains(want), "{}", q.describe());
    }
}

#[test]
fn random_writes_dynamic() {
    random_writes("vpc", "", 9 * MIB, 2 * MIB, 1, 300);
}

#[test]
fn random_writes_fixed() {
    random_writes("vpc", "subformat=fixed", 5 * MIB, 64 * KIB, 2, 300);
}

#[test]
fn random_writes_force_size() {
    random_writes("vpc", "force_size=on", 7 * MIB + 512, 2 * MIB, 3, 200);
}

#[test]
fn parallel_writes_dynamic() {
    parallel_writes("vpc", "", 16 * MIB, 4);
}

#[test]
fn convert_both_ways() {
    convert_roundtrip("vpc", "");
    convert_roundtrip("vpc", "subformat=fixed");
}

#[test]
fn writes_into_qemu_image_read_back_by_qemu() {
    // qemu-img made the image and allocated some blocks; we write more
    // (into allocated and new blocks), qemu-img reads what we wrote.
    let dir = TempDir::new("vpc_mixed");
    qemu_img_ok(dir.path(), &["create", "-q", "-f", "vpc", "m.vpc", "9M"]);
    data_files(dir.path(), 5);
    qemu_io(dir.path(), "vpc", "m.vpc", &pattern_writes(9 * MIB));
    let mut shadow = qemu_raw_of(dir.path(), "m.vpc", "vpc");
    {
        let img = imgtool::Image::open(
            dir.join("m.vpc").to_str().unwrap(),
            &imgtool::OpenOptions {
                format: Some("vpc".into()),
                ..imgtool::OpenOptions::read_write()
            },
        )
        .unwrap();
        for (off, len, pat) in [(100 * KIB, 5000, 0xa1u8), (5 * MIB + 7, 70000, 0xa2)] {
            img.write_at(&vec![pat; len], off).unwrap();
            shadow[off as usize..off as usize + len].fill(pat);
        }
        img.write_zeroes(MIB, 4096, true).unwrap();
        shadow[MIB as usize..MIB as usize + 4096].fill(0);
        img.close().unwrap();
    }
    std::fs::write(dir.join("shadow.raw"), &shadow).unwrap();
    assert_qemu_compare_identical(
        dir.path(),
        "m.vpc",
        "shadow.raw",
        &["-f", "vpc", "-F", "raw"],
    );
}

// ------------------------------------------------------------ damaged

fn build_good(dir: &std::path::Path) -> Vec<u8> {
    qemu_img_ok(dir, &["create", "-q", "-f", "vpc", "g.vpc", "6M"]);
    qemu_io(
        dir,
        "vpc",
        "g.vpc",
        &[
            "write -P 0xab 0 64k".to_string(),
            "write -P 0xcd 4M 64k".to_string(),
        ],
    );
    read(&dir.join("g.vpc"))
}

fn fix_footer_checksum(b: &mut [u8], at: usize) {
    b[at + 64..at + 68].fill(0);
    let sum: u32 = b[at..at + 512].iter().map(|&x| x as u32).sum();
    b[at + 64..at + 68].copy_from_slice(&(!sum).to_be_bytes());
}

/// Each damaged file: qemu-img's verdict (open fails or not) is ours, we
/// never panic or hang, and where both open it the bytes agree.
#[test]
fn damaged_images() {
    let dir = TempDir::new("vpc_bad");
    let good = build_good(dir.path());
    let flen = good.len();
    type Mutate = fn(&mut Vec<u8>, usize);
    let cases: &[(&str, Mutate)] = &[
        ("empty", |b, _| b.clear()),
        ("truncated_100", |b, _| b.truncate(100)),
        ("truncated_600", |b, _| b.truncate(600)),
        ("truncated_1600", |b, _| b.truncate(1600)),
        ("truncated_mid_block", |b, _| b.truncate(1 << 20)),
        ("bad_checksum", |b, _| b[64] ^= 1),
        ("bad_dyn_magic", |b, _| b[512] = b'X'),
        ("block_size_0", |b, _| b[512 + 32..512 + 36].fill(0)),
        ("block_size_3", |b, _| {
            b[512 + 32..512 + 36].copy_from_slice(&3u32.to_be_bytes())
        }),
        ("entries_0", |b, _| b[512 + 28..512 + 32].fill(0)),
        ("entries_huge", |b, _| {
            b[512 + 28..512 + 32].copy_from_slice(&0x7fff_ffffu32.to_be_bytes())
        }),
        ("entries_negative", |b, _| {
            b[512 + 28..512 + 32].copy_from_slice(&0xffff_fff0u32.to_be_bytes())
        }),
        ("entries_big", |b, _| {
            b[512 + 28..512 + 32].copy_from_slice(&0x0100_0000u32.to_be_bytes())
        }),
        ("bat_offset_huge", |b, _| {
            b[512 + 16..512 + 24].copy_from_slice(&u64::MAX.to_be_bytes())
        }),
        ("bat_offset_past_eof", |b, _| {
            b[512 + 16..512 + 24].copy_from_slice(&(1u64 << 40).to_be_bytes())
        }),
        ("bat_entry_past_eof", |b, _| {
            b[1536..1540].copy_from_slice(&0x00ff_0000u32.to_be_bytes())
        }),
        ("bat_entry_zero", |b, _| b[1536..1540].fill(0)),
        ("data_offset_huge", |b, _| {
            b[16..24].copy_from_slice(&u64::MAX.to_be_bytes());
            fix_footer_checksum(b, 0);
        }),
        ("data_offset_past_eof", |b, _| {
            b[16..24].copy_from_slice(&(1u64 << 40).to_be_bytes());
            fix_footer_checksum(b, 0);
        }),
        ("cyls_max", |b, _| {
            b[56..60].copy_from_slice(&[0xff, 0xff, 0xff, 0xff]);
            fix_footer_checksum(b, 0);
        }),
        ("current_size_huge_win", |b, _| {
            b[28..32].copy_from_slice(b"win ");
            b[48..56].copy_from_slice(&(1u64 << 62).to_be_bytes());
            fix_footer_checksum(b, 0);
        }),
        ("current_size_small_win", |b, _| {
            b[28..32].copy_from_slice(b"win ");
            b[48..56].copy_from_slice(&(3u64 << 20).to_be_bytes());
            fix_footer_checksum(b, 0);
        }),
        ("no_footer_at_start", |b, l| {
            // Dynamic image whose first copy is gone: the end one is not
            // fixed, so this is not a VPC image.
            b[..8].fill(0);
            let _ = l;
        }),
        ("type_fixed_at_start", |b, _| {
            b[60..64].copy_from_slice(&2u32.to_be_bytes());
            fix_footer_checksum(b, 0);
        }),
    ];
    for (name, mutate) in cases {
        let mut b = good.clone();
        mutate(&mut b, flen);
        let file = format!("{name}.vpc");
        std::fs::write(dir.join(&file), &b).unwrap();
        let q = qemu_img(dir.path(), &["info", "-f", "vpc", &file]);
        let ours = open_and_read_with_deadline(&dir.join(&file), "vpc");
        match (&ours, q.ok()) {
            (Err(e), false) => {
                // Same message as qemu-img (after its "qemu-img: " prefix).
                let qmsg = q.stderr.trim_end().trim_start_matches("qemu-img: ");
                let e = e.replace(&format!("{}/", dir.path().display()), "");
                assert_eq!(e, qmsg, "{name}: error text");
            }
            (Ok(()), true) => {
                let qc = qemu_img(
                    dir.path(),
                    &["convert", "-f", "vpc", "-O", "raw", &file, "out.raw"],
                );
                if qc.ok() {
                    let want = read(&dir.join("out.raw"));
                    let got = library_read_all(&dir.join(&file), "vpc");
                    assert_bytes_eq(name, &want, &got);
                }
            }
            _ => panic!("{name}: ours {ours:?} but qemu-img:\n{}", q.describe()),
        }
    }
}

#[test]
fn mutated_headers_never_panic() {
    let dir = TempDir::new("vpc_mut");
    let good = build_good(dir.path());
    let n = good.len();
    mutation_rounds(
        "vpc",
        &good,
        &[(0, 512), (512, 1024), (1536, 512), (n - 512, 512)],
        300,
        7,
    );
}
