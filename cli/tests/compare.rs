//! `imgtool compare` against `qemu-img compare` on the same image pairs:
//! same exit code, stdout (verdict, warnings, `-p` progress lines) and
//! stderr, plain and strict, through chains, across formats and sizes.

mod common;

use common::*;
use std::path::Path;

/// `same_as_qemu`, also renaming getopt's `qemu-img compare:` prefix and
/// the program name in `--help`.
fn same(dir: &Path, args: &[&str]) {
    // Ours first: opening a qcow2 image reads its first 2 MiB (library),
    // which changes what SEEK_DATA says about unwritten extents there;
    // qemu-img then sees the same host state we saw.
    let o = imgtool(dir, args);
    let q = qemu_img(dir, args);
    assert!(!q.timed_out, "oracle hung:\n{}", q.describe());
    let mut q2 = q.clone();
    q2.stderr = q
        .stderr
        .lines()
        .map(|l| match l.strip_prefix("qemu-img ") {
            Some(r) => format!("imgtool {r}\n"),
            None => format!("{l}\n"),
        })
        .collect();
    if args.iter().any(|a| *a == "-h" || *a == "--help") {
        q2.stdout = q.stdout.replace("qemu-img", "imgtool");
    }
    assert_outcome_matches(&q2, &o);
}

/// Every mode on one pair, both ways round.
fn pair(dir: &Path, a: &str, b: &str) {
    for flags in [&[][..], &["-s"], &["-p"], &["-q"], &["-s", "-p"]] {
        for (x, y) in [(a, b), (b, a)] {
            let mut args = vec!["compare"];
            args.extend_from_slice(flags);
            args.push(x);
            args.push(y);
            same(dir, &args);
        }
    }
}

fn copy(dir: &Path, from: &str, to: &str) {
    std::fs::copy(dir.join(from), dir.join(to)).expect("copy image");
}

/// Each variant against its raw and qcow2 conversions, and against copies
/// changed in one place (a byte, a zeroed range, a discard).
#[test]
fn compare_variants() {
    for v in VARIANTS {
        let dir = TempDir::new(&format!("cmp_{v}"));
        let d = dir.path();
        let b = build_variant(v, d);
        let f = b.file.as_str();
        qemu_img_ok(d, &["convert", "-O", "raw", f, "flat.raw"]);
        qemu_img_ok(d, &["convert", "-O", "qcow2", f, "flat.qcow2"]);
        pair(d, f, "flat.raw");
        pair(d, f, "flat.qcow2");
        // (offset, length, qemu-io command) changes that fit the image.
        let edits: Vec<String> = [
            (0, 1, "write -P 0x01 0 1".to_string()),
            (
                300 * KIB + 700,
                1,
                format!("write -P 0x02 {} 1", 300 * KIB + 700),
            ),
            (MIB + 513, 512, format!("write -P 0x03 {} 512", MIB + 513)),
            (1234 * KIB, 4 * KIB, format!("write -z {} 4k", 1234 * KIB)),
            (
                b.size.saturating_sub(1),
                1,
                format!("write -P 0x04 {} 1", b.size.saturating_sub(1)),
            ),
            (3 * MIB, 64 * KIB, format!("discard {} 64k", 3 * MIB)),
        ]
        .into_iter()
        .filter(|(off, len, _)| off + len <= b.size)
        .map(|(_, _, c)| c)
        .collect();
        for (i, e) in edits.iter().enumerate() {
            let c = format!("edit{i}.qcow2");
            copy(d, "flat.qcow2", &c);
            qemu_io(d, "qcow2", &c, std::slice::from_ref(e));
            pair(d, f, &c);
        }
    }
}

/// Different sizes: the larger image's tail must read as zeros (or the
/// verdict names the first non-zero sector); strict mode refuses outright.
#[test]
fn compare_sizes() {
    let dir = TempDir::new("cmp_sizes");
    let d = dir.path();
    std::fs::write(d.join("a.raw"), mixed_raw(1, 3 * MIB)).unwrap();
    let mut longer = mixed_raw(1, 3 * MIB);
    longer.resize(5 * MIB as usize, 0);
    std::fs::write(d.join("zero_tail.raw"), &longer).unwrap();
    longer[(4 * MIB + 4097) as usize] = 9;
    std::fs::write(d.join("data_tail.raw"), &longer).unwrap();
    qemu_img_ok(d, &["convert", "-O", "qcow2", "a.raw", "a.qcow2"]);
    qemu_img_ok(d, &["create", "-q", "-f", "qcow2", "big.qcow2", "7M"]);
    qemu_img_ok(d, &["convert", "-n", "-O", "qcow2", "a.raw", "big.qcow2"]);
    copy(d, "big.qcow2", "big_data.qcow2");
    qemu_io(d, "qcow2", "big_data.qcow2", &["write -P 7 6M 100".into()]);
    copy(d, "big.qcow2", "big_zero.qcow2");
    qemu_io(d, "qcow2", "big_zero.qcow2", &["write -z 6M 64k".into()]);
    std::fs::write(d.join("odd.raw"), &mixed_raw(1, 3 * MIB)[..3000]).unwrap();
    std::fs::write(d.join("empty.raw"), b"").unwrap();
    let files = [
        "a.raw",
        "zero_tail.raw",
        "data_tail.raw",
        "a.qcow2",
        "big.qcow2",
        "big_data.qcow2",
        "big_zero.qcow2",
        "odd.raw",
        "empty.raw",
    ];
    for (i, x) in files.iter().enumerate() {
        for y in &files[i..] {
            pair(d, x, y);
        }
    }
}

/// Chains against their flattened forms and against each other's layers;
/// a backing file shorter than its overlay.
#[test]
fn compare_chains() {
    let dir = TempDir::new("cmp_chain");
    let d = dir.path();
    let b = build_variant("chain3", d);
    qemu_img_ok(d, &["convert", "-O", "qcow2", &b.file, "flat.qcow2"]);
    for (x, y) in [
        ("top.qcow2", "flat.qcow2"),
        ("top.qcow2", "mid.qcow2"),
        ("mid.qcow2", "base.qcow2"),
        ("top.qcow2", "base.qcow2"),
    ] {
        pair(d, x, y);
    }
    same(
        d,
        &[
            "compare",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            "top.qcow2",
            "flat.qcow2",
        ],
    );
    same(d, &["compare", "-U", "top.qcow2", "mid.qcow2"]);
}

/// Strict mode compares block status: raw files with and without holes,
/// preallocated and compressed qcow2, zero clusters of both kinds.
#[test]
fn compare_strict_status() {
    let dir = TempDir::new("cmp_strict");
    let d = dir.path();
    let data = mixed_raw(4, 2 * MIB);
    std::fs::write(d.join("full.raw"), &data).unwrap();
    qemu_img_ok(d, &["convert", "-O", "raw", "full.raw", "sparse.raw"]);
    qemu_img_ok(
        d,
        &["convert", "-S", "0", "-O", "raw", "full.raw", "dense.raw"],
    );
    qemu_img_ok(d, &["convert", "-O", "qcow2", "full.raw", "q.qcow2"]);
    qemu_img_ok(d, &["convert", "-c", "-O", "qcow2", "full.raw", "c.qcow2"]);
    qemu_img_ok(
        d,
        &[
            "convert",
            "-O",
            "qcow2",
            "-o",
            "preallocation=metadata",
            "full.raw",
            "m.qcow2",
        ],
    );
    qemu_img_ok(
        d,
        &[
            "convert",
            "-O",
            "qcow2",
            "-o",
            "preallocation=full",
            "full.raw",
            "f.qcow2",
        ],
    );
    qemu_img_ok(
        d,
        &[
            "convert",
            "-O",
            "qcow2",
            "-o",
            "extended_l2=on",
            "full.raw",
            "x.qcow2",
        ],
    );
    qemu_img_ok(
        d,
        &[
            "convert",
            "-O",
            "qcow2",
            "-o",
            "cluster_size=4k",
            "full.raw",
            "s.qcow2",
        ],
    );
    copy(d, "q.qcow2", "z.qcow2");
    qemu_io(
        d,
        "qcow2",
        "z.qcow2",
        &["write -z 0 64k".into(), "write -z -u 128k 64k".into()],
    );
    let files = [
        "full.raw",
        "sparse.raw",
        "dense.raw",
        "q.qcow2",
        "c.qcow2",
        "m.qcow2",
        "f.qcow2",
        "x.qcow2",
        "s.qcow2",
        "z.qcow2",
    ];
    for (i, x) in files.iter().enumerate() {
        for y in &files[i..] {
            for flags in [&["-s"][..], &[]] {
                let mut args = vec!["compare"];
                args.extend_from_slice(flags);
                args.push(x);
                args.push(y);
                same(d, &args);
            }
        }
    }
}

/// Random single-byte differences land in the same reported sector.
#[test]
fn compare_random_differences() {
    let dir = TempDir::new("cmp_rand");
    let d = dir.path();
    let size = 6 * MIB;
    let base = mixed_raw(8, size);
    std::fs::write(d.join("base.raw"), &base).unwrap();
    qemu_img_ok(d, &["convert", "-O", "qcow2", "base.raw", "base.qcow2"]);
    let mut r = Rng::new(99);
    for i in 0..24 {
        let mut v = base.clone();
        let at = r.below(size) as usize;
        v[at] = v[at].wrapping_add(1 + r.below(255) as u8);
        let name = format!("r{i}.raw");
        std::fs::write(d.join(&name), &v).unwrap();
        same(d, &["compare", "base.qcow2", &name]);
        same(d, &["compare", "-q", &name, "base.raw"]);
    }
}

#[test]
fn compare_options_and_errors() {
    let dir = TempDir::new("cmp_opts");
    let d = dir.path();
    qemu_img_ok(d, &["create", "-q", "-f", "raw", "r.raw", "1M"]);
    qemu_img_ok(d, &["create", "-q", "-f", "qcow2", "q.qcow2", "1M"]);
    let cases: &[&[&str]] = &[
        &["compare"],
        &["compare", "r.raw"],
        &["compare", "r.raw", "r.raw", "r.raw"],
        &["compare", "--object", "foo", "r.raw", "r.raw"],
        &[
            "compare",
            "--object",
            "secret,id=s,data=x",
            "r.raw",
            "q.qcow2",
        ],
        &["compare", "-T", "foo", "r.raw", "r.raw"],
        &["compare", "-p", "-T", "foo", "r.raw", "r.raw"],
        &["compare", "-T", "none", "r.raw", "q.qcow2"],
        &["compare", "-T", "unsafe", "r.raw", "nonexist"],
        &["compare", "nonexist", "r.raw"],
        &["compare", "-p", "r.raw", "nonexist"],
        &["compare", "-q", "r.raw", "nonexist"],
        &["compare", "-f", "qcow2", "r.raw", "r.raw"],
        &["compare", "-F", "qcow2", "r.raw", "r.raw"],
        &["compare", "-f", "raw", "-F", "qcow2", "r.raw", "q.qcow2"],
        &["compare", "-f", "foo", "r.raw", "r.raw"],
        &["compare", "-p", "-q", "r.raw", "q.qcow2"],
        &["compare", "-x", "r.raw", "r.raw"],
        &["compare", "-T"],
        &["compare", "--image-opts", "-f", "raw", "r.raw", "r.raw"],
        &["compare", "--image-opts", "-F", "raw", "r.raw", "r.raw"],
        &[
            "compare",
            "--image-opts",
            "driver=raw,file.filename=r.raw",
            "driver=qcow2,file.filename=q.qcow2",
        ],
        &["compare", "--image-opts", "r.raw", "q.qcow2"],
        &[
            "compare",
            "--a-format=raw",
            "--b-format=qcow2",
            "r.raw",
            "q.qcow2",
        ],
        &[
            "compare",
            "--strict",
            "--cache=writeback",
            "r.raw",
            "q.qcow2",
        ],
        &["compare", "--f", "r.raw", "q.qcow2"],
        &["compare", "--format=raw", "r.raw", "q.qcow2"],
        &["compare", "--help"],
        &["compare", "-h"],
    ];
    for c in cases {
        same(d, c);
    }
}

/// A random qcow2 image (random geometry and operations), returned by name.
fn random_image(d: &Path, r: &mut Rng, name: &str, size: u64) -> String {
    let cs = [4096u64, 16384, 65536][r.below(3) as usize];
    let ext = cs >= 16384 && r.below(2) == 0;
    let opts = format!(
        "cluster_size={cs},extended_l2={}",
        if ext { "on" } else { "off" }
    );
    let s = size.to_string();
    qemu_img_ok(d, &["create", "-q", "-f", "qcow2", "-o", &opts, name, &s]);
    let mut ops = Vec::new();
    for _ in 0..(5 + r.below(15)) {
        let off = r.below(size) & !511;
        let len = ((1 + r.below(512)) * 512).min(size - off);
        ops.push(match r.below(5) {
            0 => format!("write -s rnd.bin {off} {len}"),
            1 => format!("write -P {} {off} {len}", r.below(3)),
            2 => format!("write -z {off} {len}"),
            3 => format!("write -z -u {off} {len}"),
            _ => format!("discard {off} {len}"),
        });
    }
    qemu_io(d, "qcow2", name, &ops);
    name.to_string()
}

/// Random images against each other (mostly different) and against their
/// flattened copies (identical), plain, strict and with progress.
#[test]
fn compare_random_images() {
    let dir = TempDir::new("cmp_random_img");
    let d = dir.path();
    std::fs::write(d.join("rnd.bin"), random_bytes(5, MIB as usize)).unwrap();
    let mut r = Rng::new(4242);
    let mut names = Vec::new();
    for i in 0..10 {
        let size = [2 * MIB, 3 * MIB + 512][(i % 2) as usize];
        let n = random_image(d, &mut r, &format!("i{i}.qcow2"), size);
        let flat = format!("i{i}.raw");
        qemu_img_ok(d, &["convert", "-O", "raw", &n, &flat]);
        for flags in [&[][..], &["-s"], &["-p"]] {
            let mut args = vec!["compare"];
            args.extend_from_slice(flags);
            args.push(&n);
            args.push(&flat);
            same(d, &args);
        }
        names.push(n);
    }
    for (i, a) in names.iter().enumerate() {
        for b in &names[i + 1..] {
            same(d, &["compare", a, b]);
            same(d, &["compare", "-s", a, b]);
        }
    }
}

/// `-s` on formats whose drivers answer block status one block, cluster
/// or grain at a time (vdi, qcow, vmdk, vpc): a run reaching the end of
/// the image is only flagged EOF in its last unit, as in QEMU.
#[test]
fn compare_strict_status_per_unit_formats() {
    let dir = TempDir::new("compare_units");
    let d = dir.path();
    qemu_img_ok(d, &["create", "-q", "-f", "raw", "r.raw", "4M"]);
    qemu_io(d, "raw", "r.raw", &["write -P 1 0 64k".into()]);
    for (fmt, opts) in [
        ("vdi", ""),
        ("vdi", "static=on"),
        ("qcow", ""),
        ("vmdk", ""),
        ("vmdk", "subformat=twoGbMaxExtentSparse"),
        ("vpc", ""),
        ("qed", ""),
        ("vhdx", ""),
    ] {
        let f = format!("img-{fmt}-{}.{fmt}", opts.len());
        let mut args = vec!["create", "-q", "-f", fmt];
        if !opts.is_empty() {
            args.extend_from_slice(&["-o", opts]);
        }
        args.extend_from_slice(&[&f, "4M"]);
        qemu_img_ok(d, &args);
        qemu_io(
            d,
            fmt,
            &f,
            &[
                "write -P 1 0 64k".into(),
                "write -P 2 1M 512".into(),
                "write -z 2M 64k".into(),
                "write -P 3 3M 1M".into(),
            ],
        );
        pair(d, &f, "r.raw");
    }
}
