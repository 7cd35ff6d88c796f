//! `check` against qemu-img: clean images of every variant, and images
//! damaged on purpose (a leak, a zeroed or raised refcount, a misaligned L2
//! entry, a cleared OFLAG_COPIED) checked and repaired by both tools from
//! identical copies. Reports, exit codes and the repaired images must agree.

mod common;

use common::*;
use std::path::Path;

fn be64(b: &[u8], o: usize) -> u64 {
    u64::from_be_bytes(b[o..o + 8].try_into().unwrap())
}

fn poke(path: &Path, off: u64, bytes: &[u8]) {
    let mut d = std::fs::read(path).unwrap();
    d[off as usize..off as usize + bytes.len()].copy_from_slice(bytes);
    std::fs::write(path, d).unwrap();
}

/// A 4 MiB qcow2 (64 KiB clusters, 16-bit refcounts) with data in guest
/// clusters 0..16 and 32..40, plus the offsets of its refblock and L2.
fn base(dir: &Path) -> (u64, u64) {
    qemu_img_ok(dir, &["create", "-q", "-f", "qcow2", "d.qcow2", "4M"]);
    qemu_io(
        dir,
        "qcow2",
        "d.qcow2",
        &["write -P 1 0 1M".into(), "write -P 2 2M 512k".into()],
    );
    let d = std::fs::read(dir.join("d.qcow2")).unwrap();
    let reftable = be64(&d, 48) as usize;
    let refblock = be64(&d, reftable);
    let l1 = be64(&d, 40) as usize;
    let l2 = be64(&d, l1) & 0x00ff_ffff_ffff_fe00;
    (refblock, l2)
}

/// Damage `d.qcow2` one way; returns nothing, the file is changed in place.
fn damage(dir: &Path, kind: &str) {
    let (refblock, l2) = base(dir);
    let p = dir.join("d.qcow2");
    let d = std::fs::read(&p).unwrap();
    match kind {
        "leak" => poke(&p, refblock + 2 * 60, &1u16.to_be_bytes()),
        "zero_refcount" => poke(&p, refblock + 2 * 6, &0u16.to_be_bytes()),
        "raised_refcount" => poke(&p, refblock + 2 * 7, &2u16.to_be_bytes()),
        "misaligned_l2" => {
            let e = be64(&d, l2 as usize + 8);
            poke(&p, l2 + 8, &(e | 0x200).to_be_bytes())
        }
        "copied_flag" => {
            let e = be64(&d, l2 as usize + 16);
            poke(&p, l2 + 16, &(e & !(1 << 63)).to_be_bytes())
        }
        "corrupt_bit" => poke(&p, 79, &[2]),
        _ => unreachable!(),
    }
}

/// Run `check ARGS d.qcow2` with both tools on separate identical copies.
fn both(kind: &str, args: &[&str]) {
    let qd = TempDir::new(&format!("check-q-{kind}"));
    let od = TempDir::new(&format!("check-o-{kind}"));
    damage(qd.path(), kind);
    std::fs::copy(qd.join("d.qcow2"), od.join("d.qcow2")).unwrap();
    let mut a: Vec<&str> = vec!["check"];
    a.extend_from_slice(args);
    a.push("d.qcow2");
    let q = qemu_img(qd.path(), &a);
    let o = imgtool(od.path(), &a);
    if kind == "zero_refcount" && args.contains(&"all") {
        // qemu-img rebuilds the whole refcount structure here (moving it to
        // the end of the file and reporting the old one as repaired leaks);
        // we fix the counts in place. Same verdict, different log.
        assert_eq!(q.code, o.code, "{}\n{}", q.describe(), o.describe());
    } else {
        assert_outcome_matches(&q, &o);
    }
    if args.contains(&"-r") {
        // What qemu-img thinks of our repair must be what it thinks of its own.
        let qv = qemu_img(qd.path(), &["check", "d.qcow2"]);
        let ov = qemu_img(od.path(), &["check", "d.qcow2"]);
        assert_eq!(
            qv.code,
            ov.code,
            "qemu-img's verdict on the repaired images differs\n{}\n{}",
            qv.describe(),
            ov.describe()
        );
        if qv.code != Some(0) {
            // Still corrupt for both (e.g. a misaligned entry nobody can fix).
            return;
        }
        assert_qemu_compare_identical(
            od.path(),
            "d.qcow2",
            &qd.join("d.qcow2").to_string_lossy(),
            &[],
        );
    }
}

macro_rules! damage_tests {
    ($($name:ident: $kind:expr;)*) => {$(
        mod $name {
            use super::both;
            #[test] fn report() { both($kind, &[]); }
            #[test] fn report_json() { both($kind, &["--output=json"]); }
            #[test] fn repair_leaks() { both($kind, &["-r", "leaks"]); }
            #[test] fn repair_all_json() { both($kind, &["-r", "all", "--output=json"]); }
        }
    )*};
}

damage_tests! {
    leak: "leak";
    zero_refcount: "zero_refcount";
    raised_refcount: "raised_refcount";
    misaligned_l2: "misaligned_l2";
    copied_flag: "copied_flag";
    corrupt_bit: "corrupt_bit";
}

/// `-r all` when a used cluster has refcount 0: qemu-img rebuilds the
/// refcount structure (moving it), we raise the counts in place; both must
/// leave a clean image with the same contents.
#[test]
fn zero_refcount_repair_all_leaves_clean_image() {
    let d = TempDir::new("check-zero-all");
    damage(d.path(), "zero_refcount");
    std::fs::copy(d.join("d.qcow2"), d.join("orig.qcow2")).unwrap();
    let o = imgtool(d.path(), &["check", "-r", "all", "d.qcow2"]);
    assert_eq!(o.code, Some(0), "{}", o.describe());
    assert_qemu_check_clean(d.path(), "d.qcow2");
    assert_qemu_compare_identical(d.path(), "d.qcow2", "orig.qcow2", &[]);
}

#[test]
fn clean_images_of_every_variant() {
    for &name in VARIANTS {
        let d = TempDir::new(&format!("check-{name}"));
        let b = build_variant(name, d.path());
        for args in [
            vec!["check", b.file.as_str()],
            vec!["check", "--output=json", b.file.as_str()],
        ] {
            same_as_qemu(d.path(), &args);
        }
    }
}

#[test]
fn raw_has_no_check_and_missing_file_fails() {
    let d = TempDir::new("check-raw");
    qemu_img_ok(d.path(), &["create", "-q", "-f", "raw", "r.raw", "1M"]);
    same_as_qemu(d.path(), &["check", "r.raw"]);
    same_as_qemu(d.path(), &["check", "-f", "raw", "r.raw"]);
    same_as_qemu(d.path(), &["check", "nonexistent.qcow2"]);
    same_as_qemu(d.path(), &["check", "-r", "foo", "r.raw"]);
    same_as_qemu(d.path(), &["check"]);
}
