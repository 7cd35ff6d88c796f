//! `imgtool` on vpc, vhdx and vmdk images against `qemu-img` with the same
//! arguments: info (human and JSON), `-o help`, check, convert and damaged
//! files give the same exit code, stdout and stderr.

mod common;

use common::*;
use std::path::Path;

/// Images of each format made by qemu-img, with data.
fn prepare(d: &Path) {
    let q = |args: &[&str]| {
        qemu_img_ok(d, args);
    };
    q(&["create", "-q", "-f", "vpc", "dyn.vpc", "10M"]);
    q(&[
        "create",
        "-q",
        "-f",
        "vpc",
        "-o",
        "subformat=fixed",
        "fix.vpc",
        "3M",
    ]);
    q(&[
        "create",
        "-q",
        "-f",
        "vpc",
        "-o",
        "force_size=on",
        "force.vpc",
        "5000000",
    ]);
    q(&["create", "-q", "-f", "vhdx", "d.vhdx", "10M"]);
    q(&[
        "create",
        "-q",
        "-f",
        "vhdx",
        "-o",
        "subformat=fixed,block_size=1M",
        "f.vhdx",
        "3M",
    ]);
    q(&["create", "-q", "-f", "vmdk", "s.vmdk", "10M"]);
    q(&[
        "create",
        "-q",
        "-f",
        "vmdk",
        "-o",
        "zeroed_grain=on,adapter_type=lsilogic",
        "z.vmdk",
        "3M",
    ]);
    for (fmt, f) in [
        ("vpc", "dyn.vpc"),
        ("vpc", "fix.vpc"),
        ("vhdx", "d.vhdx"),
        ("vhdx", "f.vhdx"),
        ("vmdk", "s.vmdk"),
        ("vmdk", "z.vmdk"),
        ("vmdk", "ov.vmdk"),
    ] {
        // The overlay after its base got its data (a write changes the
        // base's CID, which the overlay records).
        if f == "ov.vmdk" {
            q(&[
                "create", "-q", "-f", "vmdk", "-b", "s.vmdk", "-F", "vmdk", "ov.vmdk",
            ]);
        }
        qemu_io(
            d,
            fmt,
            f,
            &[
                "write -P 0x5a 0 64k".to_string(),
                "write -P 0x6b 1M 4k".to_string(),
            ],
        );
    }
    std::fs::write(d.join("src.raw"), mixed_raw(11, 4 * MIB)).unwrap();
    q(&[
        "convert",
        "-O",
        "vmdk",
        "-o",
        "subformat=streamOptimized",
        "src.raw",
        "st.vmdk",
    ]);
}

#[test]
fn info_like_qemu() {
    let dir = TempDir::new("fmt2_info");
    let d = dir.path();
    prepare(d);
    for f in [
        "dyn.vpc",
        "force.vpc",
        "d.vhdx",
        "f.vhdx",
        "s.vmdk",
        "z.vmdk",
        "ov.vmdk",
        "st.vmdk",
    ] {
        same_as_qemu(d, &["info", f]);
        same_as_qemu(d, &["info", "--output=json", f]);
        same_as_qemu(d, &["info", "--backing-chain", f]);
    }
    // A fixed VHD is not probed (its footer is at the end): raw unless -f.
    same_as_qemu(d, &["info", "fix.vpc"]);
    same_as_qemu(d, &["info", "-f", "vpc", "fix.vpc"]);
    same_as_qemu(d, &["info", "-f", "vpc", "--output=json", "fix.vpc"]);
}

/// Multi-file vmdk images list their extent files as extra children
/// (`extents.N`) with their allocation summed into `disk size`.
#[test]
fn info_multi_file_vmdk_like_qemu() {
    let dir = TempDir::new("fmt2_info_flat");
    let d = dir.path();
    qemu_img_ok(
        d,
        &[
            "create",
            "-q",
            "-f",
            "vmdk",
            "-o",
            "subformat=monolithicFlat",
            "m.vmdk",
            "1M",
        ],
    );
    same_as_qemu(d, &["info", "m.vmdk"]);
    same_as_qemu(d, &["info", "--output=json", "m.vmdk"]);
}

#[test]
fn option_help_like_qemu() {
    let dir = TempDir::new("fmt2_help");
    let d = dir.path();
    for fmt in ["vpc", "vhdx", "vmdk"] {
        same_as_qemu(d, &["create", "-f", fmt, "-o", "help"]);
        same_as_qemu(d, &["create", "-f", fmt, "-o", "help", "x.img"]);
        same_as_qemu(d, &["convert", "-O", fmt, "-o", "help"]);
    }
}

/// The "Formatting ..." line lists options in QEMU's declaration order
/// with defaults; the CLI keeps that table per format.
#[test]
fn create_formatting_line_like_qemu() {
    let dir = TempDir::new("fmt2_fmtline");
    let d = dir.path();
    for (fmt, o) in [
        ("vpc", "subformat=fixed,force_size=on"),
        ("vhdx", "subformat=fixed,block_size=1M"),
        ("vhdx", ""),
        ("vmdk", "subformat=monolithicFlat,adapter_type=lsilogic"),
        ("vmdk", ""),
    ] {
        let f = format!("x.{fmt}");
        let mut a = vec!["create", "-f", fmt];
        if !o.is_empty() {
            a.extend(["-o", o]);
        }
        a.extend([f.as_str(), "1M"]);
        same_as_qemu(d, &a);
    }
}

#[test]
fn create_quiet_and_errors_like_qemu() {
    let dir = TempDir::new("fmt2_create");
    let d = dir.path();
    for args in [
        &["create", "-q", "-f", "vpc", "a.vpc", "10M"][..],
        &["create", "-q", "-f", "vhdx", "a.vhdx", "10M"][..],
        &["create", "-q", "-f", "vmdk", "a.vmdk", "10M"][..],
        &["create", "-q", "-f", "vpc", "b.vpc", "3000G"][..],
        &[
            "create",
            "-q",
            "-f",
            "vpc",
            "-o",
            "subformat=x",
            "b.vpc",
            "1M",
        ][..],
        &[
            "create",
            "-q",
            "-f",
            "vhdx",
            "-o",
            "block_size=3M",
            "b.vhdx",
            "1M",
        ][..],
        &[
            "create",
            "-q",
            "-f",
            "vhdx",
            "-o",
            "log_size=0",
            "b.vhdx",
            "1M",
        ][..],
        &[
            "create",
            "-q",
            "-f",
            "vmdk",
            "-o",
            "adapter_type=x",
            "b.vmdk",
            "1M",
        ][..],
        &[
            "create",
            "-q",
            "-f",
            "vmdk",
            "-o",
            "compat6=on,hwversion=7",
            "b.vmdk",
            "1M",
        ][..],
    ] {
        same_as_qemu(d, args);
    }
}

#[test]
fn check_like_qemu() {
    let dir = TempDir::new("fmt2_check");
    let d = dir.path();
    prepare(d);
    for f in ["dyn.vpc", "d.vhdx", "f.vhdx", "s.vmdk", "z.vmdk", "st.vmdk"] {
        same_as_qemu(d, &["check", f]);
        same_as_qemu(d, &["check", "--output=json", f]);
    }
    // vmdk has no repair; vpc no check at all.
    same_as_qemu(d, &["check", "-r", "all", "s.vmdk"]);
    same_as_qemu(d, &["check", "-r", "leaks", "s.vmdk"]);
    // A vhdx BAT entry past the end of the file, and one inside the log.
    let mut b = read(&d.join("d.vhdx"));
    let bat = u64::from_le_bytes(b[192 * 1024 + 32..192 * 1024 + 40].try_into().unwrap()) as usize;
    b[bat + 8..bat + 16].copy_from_slice(&((1u64 << 40) | 6).to_le_bytes());
    std::fs::write(d.join("bad.vhdx"), &b).unwrap();
    same_as_qemu(d, &["check", "bad.vhdx"]);
    same_as_qemu(d, &["check", "--output=json", "bad.vhdx"]);
    same_as_qemu(d, &["info", "bad.vhdx"]);
    // A vmdk grain past the end of its file.
    let mut b = read(&d.join("s.vmdk"));
    let gd = (u64::from_le_bytes(b[56..64].try_into().unwrap()) * 512) as usize;
    let gt = u32::from_le_bytes(b[gd..gd + 4].try_into().unwrap()) as usize * 512;
    b[gt..gt + 4].copy_from_slice(&0x00ff_0000u32.to_le_bytes());
    std::fs::write(d.join("bad.vmdk"), &b).unwrap();
    same_as_qemu(d, &["check", "bad.vmdk"]);
}

#[test]
fn convert_like_qemu() {
    let dir = TempDir::new("fmt2_convert");
    let d = dir.path();
    prepare(d);
    for (fmt, o) in [
        ("vpc", ""),
        ("vpc", "subformat=fixed"),
        ("vhdx", ""),
        ("vhdx", "subformat=fixed"),
        ("vmdk", ""),
        ("vmdk", "subformat=twoGbMaxExtentSparse"),
        ("vmdk", "subformat=streamOptimized"),
    ] {
        let out = format!("o_{}.{fmt}", o.replace(['=', ','], "_"));
        let mut a = vec!["convert", "-O", fmt];
        if !o.is_empty() {
            a.extend(["-o", o]);
        }
        a.extend(["src.raw", out.as_str()]);
        let r = imgtool(d, &a);
        assert!(r.ok(), "{}", r.describe());
        assert_qemu_compare_identical(d, "src.raw", &out, &["-f", "raw", "-F", fmt]);
    }
    for f in ["dyn.vpc", "d.vhdx", "s.vmdk", "ov.vmdk", "st.vmdk"] {
        for ofmt in ["raw", "qcow2"] {
            let out = format!("{f}.{ofmt}");
            let r = imgtool(d, &["convert", "-O", ofmt, f, &out]);
            assert!(r.ok(), "{}", r.describe());
            assert_qemu_compare_identical(d, f, &out, &["-F", ofmt]);
        }
    }
}

#[test]
fn damaged_files_like_qemu() {
    let dir = TempDir::new("fmt2_bad");
    let d = dir.path();
    prepare(d);
    let cut = |src: &str, dst: &str, n: usize| {
        let b = read(&d.join(src));
        std::fs::write(d.join(dst), &b[..n.min(b.len())]).unwrap();
    };
    cut("dyn.vpc", "t1.vpc", 1000);
    cut("dyn.vpc", "t2.vpc", 100);
    cut("d.vhdx", "t1.vhdx", 70 * 1024);
    cut("d.vhdx", "t2.vhdx", 2 * 1024 * 1024);
    cut("s.vmdk", "t1.vmdk", 600);
    cut("s.vmdk", "t2.vmdk", 3);
    for (fmt, f) in [
        ("vpc", "t1.vpc"),
        ("vpc", "t2.vpc"),
        ("vhdx", "t1.vhdx"),
        ("vhdx", "t2.vhdx"),
        ("vmdk", "t1.vmdk"),
        ("vmdk", "t2.vmdk"),
    ] {
        same_as_qemu(d, &["info", "-f", fmt, f]);
        same_as_qemu(d, &["convert", "-f", fmt, "-O", "raw", f, "x.raw"]);
        same_as_qemu(d, &["check", "-f", fmt, f]);
    }
}

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

/// Journal one 4 KiB sector write of `pattern` at file offset `at` in the
/// log of a qemu-made vhdx and name the log in both headers (a crash
/// between journaling and applying).
fn make_dirty(b: &mut [u8], at: u64, pattern: u8) {
    let le64 = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
    let guid = *b"cli-test-logguid";
    let log = le64(b, 64 * 1024 + 72) as usize;
    let seq = 3u64;
    let mut e = vec![0u8; 8192];
    e[0..4].copy_from_slice(b"loge");
    e[8..12].copy_from_slice(&8192u32.to_le_bytes());
    e[16..24].copy_from_slice(&seq.to_le_bytes());
    e[24..28].copy_from_slice(&1u32.to_le_bytes());
    e[32..48].copy_from_slice(&guid);
    e[48..56].copy_from_slice(&(b.len() as u64).to_le_bytes());
    e[56..64].copy_from_slice(&(b.len() as u64).to_le_bytes());
    e[64..68].copy_from_slice(b"desc");
    e[68..72].fill(pattern);
    e[72..80].fill(pattern);
    e[80..88].copy_from_slice(&at.to_le_bytes());
    e[88..96].copy_from_slice(&seq.to_le_bytes());
    e[4096..4100].copy_from_slice(b"data");
    e[4100..4104].copy_from_slice(&((seq >> 32) as u32).to_le_bytes());
    e[4104..8188].fill(pattern);
    e[8188..8192].copy_from_slice(&(seq as u32).to_le_bytes());
    let c = crc32c(&e);
    e[4..8].copy_from_slice(&c.to_le_bytes());
    b[log..log + 8192].copy_from_slice(&e);
    for h in [64 * 1024, 128 * 1024] {
        b[h + 48..h + 64].copy_from_slice(&guid);
        b[h + 4..h + 8].fill(0);
        let c = crc32c(&b[h..h + 4096]);
        b[h + 4..h + 8].copy_from_slice(&c.to_le_bytes());
    }
}

#[test]
fn dirty_vhdx_like_qemu() {
    let dir = TempDir::new("fmt2_dirty");
    let d = dir.path();
    prepare(d);
    let mut b = read(&d.join("d.vhdx"));
    let bat = u64::from_le_bytes(b[192 * 1024 + 32..192 * 1024 + 40].try_into().unwrap()) as usize;
    let block0 = u64::from_le_bytes(b[bat..bat + 8].try_into().unwrap()) & !0xfffff;
    make_dirty(&mut b, block0 + 4096, 0x71);
    std::fs::write(d.join("x.vhdx"), &b).unwrap();
    // Read-only users are refused with the hint; nothing changes.
    same_as_qemu(d, &["info", "x.vhdx"]);
    same_as_qemu(d, &["check", "x.vhdx"]);
    same_as_qemu(d, &["convert", "-O", "raw", "x.vhdx", "x.raw"]);
    assert_eq!(read(&d.join("x.vhdx")), b);
    // check -r replays: qemu-img on one copy, imgtool on another.
    std::fs::write(d.join("y.vhdx"), &b).unwrap();
    let q = qemu_img(d, &["check", "-r", "all", "x.vhdx"]);
    let o = imgtool(d, &["check", "-r", "all", "y.vhdx"]);
    assert_outcome_matches(&q, &o);
    assert_qemu_compare_identical(d, "x.vhdx", "y.vhdx", &[]);
}
