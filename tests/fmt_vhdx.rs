//! vhdx against qemu-img: images qemu-img makes read identically, images
//! we make look the same to qemu-img and pass its check, random writes
//! match a raw shadow, a dirty log is replayed as QEMU replays it, damaged
//! files fail cleanly with QEMU's words.

mod common;
mod fmt2_common;

use common::*;
use fmt2_common::*;
use imgtool::format::Repair;
use imgtool::ops::check::{check, CheckOptions};

#[test]
fn qemu_dynamic_reads_same() {
    qemu_made_reads_same("vhdx", "", 10 * MIB, true);
}

#[test]
fn qemu_fixed_reads_same() {
    qemu_made_reads_same("vhdx", "subformat=fixed", 10 * MIB, true);
    qemu_made_reads_same(
        "vhdx",
        "subformat=fixed,block_state_zero=off",
        10 * MIB,
        true,
    );
}

#[test]
fn qemu_options_read_same() {
    qemu_made_reads_same("vhdx", "block_state_zero=off", 10 * MIB, true);
    qemu_made_reads_same("vhdx", "block_size=1M", 10 * MIB + 512, true);
    qemu_made_reads_same("vhdx", "block_size=32M,log_size=3M", 9 * MIB, true);
    qemu_made_reads_same("vhdx", "", 5 * MIB - 512, false);
}

#[test]
fn create_like_qemu() {
    for (opts, size) in [
        ("", MIB),
        ("", 100 * MIB),
        ("", 3 * 1024 * MIB),
        ("", 200 * 1024 * MIB),
        ("", 1000),
        ("subformat=fixed", 10 * MIB),
        ("subformat=fixed,block_state_zero=off", 10 * MIB),
        ("block_state_zero=off", 10 * MIB),
        ("block_size=1M,log_size=2M", 10 * MIB),
        ("block_size=300M", 10 * MIB),
        ("block_size=0", 10 * MIB),
        ("block_size=1000000,log_size=1000000", 10 * MIB),
        ("subformat=dynamic", 0),
    ] {
        our_create_matches_qemu("vhdx", opts, size);
        let dir = TempDir::new("vhdx_chk");
        lib_create(&dir.join("c.vhdx"), "vhdx", size, opts);
        assert_qemu_check_clean(dir.path(), "c.vhdx");
    }
}

#[test]
fn create_errors_like_qemu() {
    let dir = TempDir::new("vhdx_create_err");
    for (opts, size) in [
        ("", 65 << 40),
        ("subformat=foo", MIB),
        ("block_size=3M", MIB),
        ("log_size=0", MIB),
        ("log_size=5G", MIB),
        ("preallocation=bogus", MIB),
        ("preallocation=metadata", MIB),
        ("block_state_zero=maybe", MIB),
    ] {
        let sz = size.to_string();
        let mut args = vec!["create", "-f", "vhdx"];
        if !opts.is_empty() {
            args.extend(["-o", opts]);
        }
        args.extend(["q.vhdx", &sz]);
        let q = qemu_img(dir.path(), &args);
        assert!(!q.ok(), "{}", q.describe());
        let req = imgtool::ops::create::CreateRequest {
            format: "vhdx".into(),
            filename: dir.join("e.vhdx").to_str().unwrap().into(),
            size: Some(size),
            options: imgtool::format::CreateOptions::parse(opts).unwrap(),
            unsafe_backing: false,
        };
        let e = imgtool::ops::create::create(&req).expect_err(opts);
        let want = q.stderr.trim_end().trim_start_matches("qemu-img: q.vhdx: ");
        let want = want.trim_start_matches("qemu-img: ");
        assert_eq!(e.message(), want, "{opts}");
    }
}

#[test]
fn random_writes_dynamic() {
    random_writes("vhdx", "block_size=1M", 9 * MIB, MIB, 11, 300);
}

#[test]
fn random_writes_default_and_fixed() {
    random_writes("vhdx", "", 20 * MIB, 8 * MIB, 12, 150);
    random_writes(
        "vhdx",
        "subformat=fixed,block_state_zero=off",
        6 * MIB,
        MIB,
        13,
        150,
    );
    random_writes("vhdx", "block_state_zero=off", 6 * MIB + 512, MIB, 14, 150);
}

#[test]
fn our_writes_pass_qemu_check() {
    let dir = TempDir::new("vhdx_wcheck");
    lib_create(&dir.join("w.vhdx"), "vhdx", 20 * MIB, "block_size=1M");
    {
        let img = imgtool::Image::open(
            dir.join("w.vhdx").to_str().unwrap(),
            &imgtool::OpenOptions::read_write(),
        )
        .unwrap();
        for i in 0..12u64 {
            img.write_at(&vec![i as u8 + 1; 70000], i * 1_700_000)
                .unwrap();
        }
        img.close().unwrap();
    }
    assert_qemu_check_clean(dir.path(), "w.vhdx");
    // qemu-io writes on top of ours, then we read what qemu wrote.
    qemu_io(
        dir.path(),
        "vhdx",
        "w.vhdx",
        &[
            "write -P 0x99 19M 1M".to_string(),
            "write -P 0x98 100k 4k".to_string(),
        ],
    );
    let want = qemu_raw_of(dir.path(), "w.vhdx", "vhdx");
    let got = library_read_all(&dir.join("w.vhdx"), "vhdx");
    assert_bytes_eq("after qemu-io on our image", &want, &got);
}

#[test]
fn parallel_writes_dynamic() {
    parallel_writes("vhdx", "block_size=1M", 16 * MIB, 4);
}

#[test]
fn convert_both_ways() {
    convert_roundtrip("vhdx", "");
    convert_roundtrip("vhdx", "subformat=fixed,block_state_zero=off");
}

// ------------------------------------------------------------ CRC-32C

fn crc32c(data: &[u8]) -> u32 {
    let mut c = 0xffff_ffffu32;
    for &b in data {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0x82f6_3b78
            } else {
                c >> 1
            };
        }
    }
    !c
}

fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}
fn le64(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

/// Recompute the CRC of a `len`-byte structure at `at` (field at +4).
fn fix_crc(b: &mut [u8], at: usize, len: usize) {
    b[at + 4..at + 8].fill(0);
    let c = crc32c(&b[at..at + len]);
    b[at + 4..at + 8].copy_from_slice(&c.to_le_bytes());
}

/// Offsets qemu-img's layout gives: (bat, metadata).
fn layout(b: &[u8]) -> (usize, usize) {
    let rt = 192 * 1024;
    (le64(b, rt + 32) as usize, le64(b, rt + 64) as usize)
}

// ------------------------------------------------------------ the log

/// Append one log entry to `img` (a qemu-made image) that writes
/// `pattern` over the 4 KiB at file offset `data_at` and zeros the 8 KiB
/// at `zero_at`, and name its GUID in both headers: the state a crash
/// between journaling and applying leaves.
fn make_dirty(img: &mut [u8], data_at: u64, zero_at: u64, pattern: u8) {
    let guid: [u8; 16] = *b"imgtool-log-guid";
    let log_off = le64(img, 64 * 1024 + 72) as usize;
    let seq = 7u64;
    let mut e = vec![0u8; 2 * 4096];
    e[0..4].copy_from_slice(b"loge");
    e[8..12].copy_from_slice(&(8192u32).to_le_bytes());
    e[16..24].copy_from_slice(&seq.to_le_bytes());
    e[24..28].copy_from_slice(&2u32.to_le_bytes());
    e[32..48].copy_from_slice(&guid);
    let flen = img.len() as u64;
    e[48..56].copy_from_slice(&flen.to_le_bytes());
    e[56..64].copy_from_slice(&flen.to_le_bytes());
    let sector = vec![pattern; 4096];
    // data descriptor
    let d = 64;
    e[d..d + 4].copy_from_slice(b"desc");
    e[d + 4..d + 8].copy_from_slice(&sector[4092..]);
    e[d + 8..d + 16].copy_from_slice(&sector[..8]);
    e[d + 16..d + 24].copy_from_slice(&data_at.to_le_bytes());
    e[d + 24..d + 32].copy_from_slice(&seq.to_le_bytes());
    // zero descriptor
    let z = 96;
    e[z..z + 4].copy_from_slice(b"zero");
    e[z + 8..z + 16].copy_from_slice(&8192u64.to_le_bytes());
    e[z + 16..z + 24].copy_from_slice(&zero_at.to_le_bytes());
    e[z + 24..z + 32].copy_from_slice(&seq.to_le_bytes());
    // data sector
    let s = 4096;
    e[s..s + 4].copy_from_slice(b"data");
    e[s + 4..s + 8].copy_from_slice(&((seq >> 32) as u32).to_le_bytes());
    e[s + 8..s + 4092].copy_from_slice(&sector[8..4092]);
    e[s + 4092..s + 4096].copy_from_slice(&(seq as u32).to_le_bytes());
    let c = crc32c(&e);
    e[4..8].copy_from_slice(&c.to_le_bytes());
    img[log_off..log_off + e.len()].copy_from_slice(&e);
    for h in [64 * 1024, 128 * 1024] {
        img[h + 48..h + 64].copy_from_slice(&guid);
        fix_crc(img, h, 4096);
    }
}

/// A qemu-made image with data in two blocks, and the file offsets of
/// those blocks.
fn build_with_data(dir: &std::path::Path, file: &str) -> (Vec<u8>, u64, u64) {
    qemu_img_ok(
        dir,
        &[
            "create",
            "-q",
            "-f",
            "vhdx",
            "-o",
            "block_size=1M",
            file,
            "8M",
        ],
    );
    qemu_io(
        dir,
        "vhdx",
        file,
        &[
            "write -P 0x11 0 1M".to_string(),
            "write -P 0x22 3M 1M".to_string(),
        ],
    );
    let b = read(&dir.join(file));
    let (bat, _) = layout(&b);
    let e0 = le64(&b, bat) & !0xfffff;
    let e3 = le64(&b, bat + 3 * 8) & !0xfffff;
    (b, e0, e3)
}

#[test]
fn dirty_log_read_only_refused_like_qemu() {
    let dir = TempDir::new("vhdx_dirty_ro");
    let (mut b, e0, e3) = build_with_data(dir.path(), "d.vhdx");
    make_dirty(&mut b, e0 + 8192, e3 + 4096, 0x5c);
    std::fs::write(dir.join("d.vhdx"), &b).unwrap();
    let q = qemu_img(dir.path(), &["info", "d.vhdx"]);
    assert!(!q.ok());
    let o = imgtool::Image::open(
        dir.join("d.vhdx").to_str().unwrap(),
        &imgtool::OpenOptions::read_only(),
    );
    let e = o.err().expect("read-only open of a dirty image must fail");
    let ours = e
        .message()
        .replace(&format!("{}/", dir.path().display()), "");
    let theirs = as_imgtool(q.stderr.trim_end());
    assert_eq!(format!("imgtool: {ours}\n"), theirs);
    // Nothing was changed by either.
    assert_bytes_eq("file untouched", &b, &read(&dir.join("d.vhdx")));
}

#[test]
fn dirty_log_replayed_like_qemu() {
    let dir = TempDir::new("vhdx_dirty");
    let (mut b, e0, e3) = build_with_data(dir.path(), "q.vhdx");
    make_dirty(&mut b, e0 + 8192, e3 + 4096, 0x5c);
    std::fs::write(dir.join("q.vhdx"), &b).unwrap();
    std::fs::write(dir.join("o.vhdx"), &b).unwrap();
    // qemu-img replays through check -r all.
    let qc = qemu_img(dir.path(), &["check", "-r", "all", "q.vhdx"]);
    assert!(qc.ok(), "{}", qc.describe());
    // We replay in the same check.
    let mut lines = Vec::new();
    let rep = check(
        dir.join("o.vhdx").to_str().unwrap(),
        &CheckOptions {
            repair: Repair::All,
            ..Default::default()
        },
        &mut |l| lines.push(l.to_string()),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(rep.result.corruptions_fixed, 1);
    assert_eq!(rep.result.corruptions, 0);
    assert!(qc.stdout.contains("1 corruptions"), "{}", qc.stdout);
    // Same guest data, and the same file apart from the headers' GUIDs
    // and sequence numbers.
    let want = qemu_raw_of(dir.path(), "q.vhdx", "vhdx");
    let got = qemu_raw_of(dir.path(), "o.vhdx", "vhdx");
    assert_bytes_eq("replayed guest data", &want, &got);
    assert!(want[8192..12288].iter().all(|&x| x == 0x5c));
    let qf = read(&dir.join("q.vhdx"));
    let of = read(&dir.join("o.vhdx"));
    assert_eq!(qf.len(), of.len());
    assert_bytes_eq("after the headers", &qf[192 * 1024..], &of[192 * 1024..]);
    for f in [&qf, &of] {
        for h in [64 * 1024, 128 * 1024] {
            assert_eq!(&f[h + 48..h + 64], &[0u8; 16], "log GUID cleared");
        }
    }
    assert_qemu_check_clean(dir.path(), "o.vhdx");
    // A read-write open replays too.
    std::fs::write(dir.join("r.vhdx"), &b).unwrap();
    let img = imgtool::Image::open(
        dir.join("r.vhdx").to_str().unwrap(),
        &imgtool::OpenOptions::read_write(),
    )
    .unwrap();
    drop(img);
    let got = qemu_raw_of(dir.path(), "r.vhdx", "vhdx");
    assert_bytes_eq("rw open replayed", &want, &got);
}

// ------------------------------------------------------------ damaged

fn set_le32(b: &mut [u8], o: usize, v: u32) {
    b[o..o + 4].copy_from_slice(&v.to_le_bytes());
}
fn set_le64(b: &mut [u8], o: usize, v: u64) {
    b[o..o + 8].copy_from_slice(&v.to_le_bytes());
}

#[test]
fn damaged_images() {
    let dir = TempDir::new("vhdx_bad");
    let (good, e0, _) = build_with_data(dir.path(), "g.vhdx");
    let (bat, md) = layout(&good);
    let h1 = 64 * 1024;
    let h2 = 128 * 1024;
    let rt = 192 * 1024;
    let flen = good.len();
    let md_item = |b: &[u8], i: usize| md + le32(b, md + 32 + i * 32 + 16) as usize;
    type Mutate<'a> = Box<dyn Fn(&mut Vec<u8>) + 'a>;
    let cases: Vec<(&str, Mutate)> = vec![
        ("empty", Box::new(|b| b.clear())),
        ("truncated_100", Box::new(|b| b.truncate(100))),
        ("truncated_70k", Box::new(|b| b.truncate(70 * 1024))),
        ("truncated_200k", Box::new(|b| b.truncate(200 * 1024))),
        ("truncated_1500k", Box::new(|b| b.truncate(1500 * 1024))),
        ("truncated_in_bat", Box::new(move |b| b.truncate(bat + 4))),
        (
            "truncated_before_metadata",
            Box::new(move |b| b.truncate(md)),
        ),
        (
            "truncated_in_data",
            Box::new(move |b| b.truncate(e0 as usize + 4096)),
        ),
        (
            "truncated_before_data",
            Box::new(move |b| b.truncate(e0 as usize)),
        ),
        ("bad_signature", Box::new(|b| b[0] = b'X')),
        ("header1_crc", Box::new(move |b| b[h1 + 4] ^= 1)),
        (
            "both_headers_crc",
            Box::new(move |b| {
                b[h1 + 4] ^= 1;
                b[h2 + 4] ^= 1;
            }),
        ),
        (
            "header_version_2",
            Box::new(move |b| {
                for h in [h1, h2] {
                    b[h + 66] = 2;
                    fix_crc(b, h, 4096);
                }
            }),
        ),
        (
            "equal_sequence_different",
            Box::new(move |b| {
                let s = le64(b, h1 + 8);
                set_le64(b, h2 + 8, s);
                b[h2 + 20] ^= 0xff;
                fix_crc(b, h2, 4096);
            }),
        ),
        (
            "equal_headers",
            Box::new(move |b| {
                let h: Vec<u8> = b[h1..h1 + 4096].to_vec();
                b[h2..h2 + 4096].copy_from_slice(&h);
            }),
        ),
        (
            "log_version_1",
            Box::new(move |b| {
                for h in [h1, h2] {
                    b[h + 64] = 1;
                    fix_crc(b, h, 4096);
                }
            }),
        ),
        (
            "log_offset_unaligned",
            Box::new(move |b| {
                for h in [h1, h2] {
                    set_le64(b, h + 72, (1 << 20) + 4096);
                    fix_crc(b, h, 4096);
                }
            }),
        ),
        (
            "log_guid_no_entries",
            Box::new(move |b| {
                for h in [h1, h2] {
                    b[h + 48] = 1;
                    fix_crc(b, h, 4096);
                }
            }),
        ),
        ("region_crc", Box::new(move |b| b[rt + 4] ^= 1)),
        (
            "region_count_huge",
            Box::new(move |b| {
                set_le32(b, rt + 8, 5000);
                fix_crc(b, rt, 65536);
            }),
        ),
        (
            "region_required_unknown",
            Box::new(move |b| {
                set_le32(b, rt + 8, 3);
                let e = rt + 16 + 64;
                b[e..e + 16].copy_from_slice(b"unknown-region!!");
                set_le64(b, e + 16, 100 << 20);
                set_le32(b, e + 24, 1 << 20);
                set_le32(b, e + 28, 1);
                fix_crc(b, rt, 65536);
            }),
        ),
        (
            "region_overlap",
            Box::new(move |b| {
                let m = le64(b, rt + 32);
                set_le64(b, rt + 64, m);
                fix_crc(b, rt, 65536);
            }),
        ),
        (
            "region_bat_missing",
            Box::new(move |b| {
                b[rt + 16] ^= 1;
                fix_crc(b, rt, 65536);
            }),
        ),
        (
            "bat_too_small",
            Box::new(move |b| {
                set_le32(b, rt + 40, 8);
                fix_crc(b, rt, 65536);
            }),
        ),
        ("metadata_signature", Box::new(move |b| b[md] = b'X')),
        (
            "metadata_count_huge",
            Box::new(move |b| b[md + 10..md + 12].copy_from_slice(&3000u16.to_le_bytes())),
        ),
        (
            "metadata_missing_item",
            Box::new(move |b| b[md + 10..md + 12].copy_from_slice(&4u16.to_le_bytes())),
        ),
        (
            "metadata_duplicate",
            Box::new(move |b| {
                let e: Vec<u8> = b[md + 32..md + 64].to_vec();
                b[md + 64..md + 96].copy_from_slice(&e);
            }),
        ),
        (
            "block_size_3m",
            Box::new(move |b| {
                let o = md_item(b, 0);
                set_le32(b, o, 3 << 20);
            }),
        ),
        (
            "block_size_512m",
            Box::new(move |b| {
                let o = md_item(b, 0);
                set_le32(b, o, 512 << 20);
            }),
        ),
        (
            "has_parent",
            Box::new(move |b| {
                let o = md_item(b, 0);
                set_le32(b, o + 4, 2);
            }),
        ),
        (
            "logical_sector_4096",
            Box::new(move |b| {
                let o = md_item(b, 3);
                set_le32(b, o, 4096);
            }),
        ),
        (
            "virtual_size_huge",
            Box::new(move |b| {
                let o = md_item(b, 1);
                set_le64(b, o, 1 << 50);
            }),
        ),
        (
            "virtual_size_small",
            Box::new(move |b| {
                let o = md_item(b, 1);
                set_le64(b, o, 2 << 20);
            }),
        ),
        (
            "bat_entry_past_eof",
            Box::new(move |b| {
                set_le64(b, bat + 8, (1u64 << 40) | 6);
            }),
        ),
        (
            "bat_entry_in_log",
            Box::new(move |b| {
                set_le64(b, bat + 8, (1u64 << 20) | 6);
            }),
        ),
        (
            "bat_entry_zero_offset",
            Box::new(move |b| set_le64(b, bat + 8, 6)),
        ),
        (
            "bat_entry_partial",
            Box::new(move |b| set_le64(b, bat + 8, 7)),
        ),
        (
            "bat_entry_state_4",
            Box::new(move |b| set_le64(b, bat + 8, 4)),
        ),
        (
            "bat_entry_undefined",
            Box::new(move |b| set_le64(b, bat, 1)),
        ),
    ];
    let _ = flen;
    for (name, mutate) in &cases {
        let mut b = good.clone();
        mutate(&mut b);
        let file = format!("{name}.vhdx");
        std::fs::write(dir.join(&file), &b).unwrap();
        let q = qemu_img(dir.path(), &["info", "-f", "vhdx", &file]);
        let ours = open_and_read_with_deadline(&dir.join(&file), "vhdx");
        match (&ours, q.ok()) {
            (Err(e), false) => {
                // qemu-img may print error_report lines before its error.
                let last = q.stderr.trim_end().lines().last().unwrap_or("");
                let qmsg = last.trim_start_matches("qemu-img: ");
                let e = e.replace(&format!("{}/", dir.path().display()), "");
                assert_eq!(e, qmsg, "{name}: error text\n{}", q.describe());
            }
            (Ok(()), true) => {
                let qc = qemu_img(
                    dir.path(),
                    &["convert", "-f", "vhdx", "-O", "raw", &file, "out.raw"],
                );
                if qc.ok() {
                    let want = read(&dir.join("out.raw"));
                    let got = library_read_all(&dir.join(&file), "vhdx");
                    assert_bytes_eq(name, &want, &got);
                }
            }
            (Err(_), true) => {
                // Opening worked in qemu-img but a read failed for us:
                // qemu-img must fail to convert it too.
                let qc = qemu_img(
                    dir.path(),
                    &["convert", "-f", "vhdx", "-O", "raw", &file, "out.raw"],
                );
                assert!(
                    !qc.ok(),
                    "{name}: ours {ours:?} but qemu-img reads it:\n{}",
                    q.describe()
                );
            }
            _ => panic!("{name}: ours {ours:?} but qemu-img:\n{}", q.describe()),
        }
    }
}

#[test]
fn mutated_metadata_never_panic() {
    let dir = TempDir::new("vhdx_mut");
    let (good, _, _) = build_with_data(dir.path(), "g.vhdx");
    let (bat, md) = layout(&good);
    mutation_rounds(
        "vhdx",
        &good,
        &[
            (0, 256 * 1024),
            (bat, 256),
            (md, 256),
            (md + 65536, 64),
            (1 << 20, 8192),
        ],
        300,
        8,
    );
}
