//! `imgtool bitmap`, bitmaps kept across writes and `convert --bitmaps`,
//! against qemu-img 10.0.2 on identical copies: same exit code and
//! messages, images that pass `qemu-img check` with the same `info`
//! (bitmap list), and the same bitmap contents, read straight from each
//! image's bitmap directory and tables.

mod common;

use common::rw::*;
use common::*;
use std::path::Path;

// ------------------------------------------------------ bitmap contents

fn be32(b: &[u8], o: usize) -> u32 {
    u32::from_be_bytes(b[o..o + 4].try_into().unwrap())
}
fn be64(b: &[u8], o: usize) -> u64 {
    u64::from_be_bytes(b[o..o + 8].try_into().unwrap())
}

/// (name, flags, granularity, set bit numbers) of every bitmap, read from
/// the file itself: the header's bitmaps extension, the directory, the
/// tables (all-zero and all-ones entries included) and the data clusters.
fn bitmap_bits(dir: &Path, file: &str) -> Vec<(String, u32, u64, Vec<u64>)> {
    let f = read(&dir.join(file));
    let cs = 1usize << be32(&f, 20);
    let mut off = be32(&f, 100) as usize;
    let mut ext = None;
    while off + 8 <= cs {
        let (kind, len) = (be32(&f, off), be32(&f, off + 4) as usize);
        off += 8;
        if kind == 0 {
            break;
        }
        if kind == 0x2385_2875 {
            ext = Some((be32(&f, off), be64(&f, off + 16)));
        }
        off += len.div_ceil(8) * 8;
    }
    let Some((nb, mut p)) = ext else {
        return Vec::new();
    };
    let mut v = Vec::new();
    for _ in 0..nb {
        let p0 = p as usize;
        let (toff, tsize, flags) = (be64(&f, p0), be32(&f, p0 + 8), be32(&f, p0 + 12));
        let gran = 1u64 << f[p0 + 17];
        let ns = u16::from_be_bytes([f[p0 + 18], f[p0 + 19]]) as usize;
        let name = String::from_utf8_lossy(&f[p0 + 24..p0 + 24 + ns]).into_owned();
        p += ((24 + ns).div_ceil(8) * 8) as u64;
        let mut bits = Vec::new();
        for i in 0..tsize as usize {
            let e = be64(&f, toff as usize + 8 * i);
            let o = (e & 0x00ff_ffff_ffff_fe00) as usize;
            for byte in 0..cs {
                let b = if o != 0 {
                    f.get(o + byte).copied().unwrap_or(0)
                } else if e & 1 != 0 {
                    0xff
                } else {
                    0
                };
                for bit in 0..8 {
                    if b >> bit & 1 != 0 {
                        bits.push(((i * cs + byte) * 8 + bit) as u64);
                    }
                }
            }
        }
        v.push((name, flags, gran, bits));
    }
    v
}

fn assert_same_bitmaps(p: &Pair, file: &str, what: &str) {
    assert_eq!(
        bitmap_bits(&p.o, file),
        bitmap_bits(&p.q, file),
        "{what}: bitmap contents of {file}"
    );
}

/// Run `args` on both sides; outcome, files and bitmap contents equal.
fn step(p: &Pair, args: &[&str], file: &str) -> (Out, Out) {
    let r = differential(p, args, &[file]);
    assert_same_bitmaps(p, file, &format!("{args:?}"));
    r
}

fn both_io(p: &Pair, file: &str, cmds: &[&str]) {
    let cmds: Vec<String> = cmds.iter().map(|s| s.to_string()).collect();
    qemu_io(&p.q, "qcow2", file, &cmds);
    qemu_io(&p.o, "qcow2", file, &cmds);
}

fn qcow2(dir: &Path, file: &str, size: &str, opts: &[&str]) {
    let mut a = vec!["create", "-q", "-f", "qcow2"];
    for o in opts {
        a.extend(["-o", o]);
    }
    a.extend([file, size]);
    qemu_img_ok(dir, &a);
}

/// A byte of the first bitmap directory entry named `name`, via offsets
/// read back from the file (for in-use flags and hostile directories).
fn dir_offset(dir: &Path, file: &str) -> (u64, u64) {
    let f = read(&dir.join(file));
    let mut off = be32(&f, 100) as usize;
    loop {
        let (kind, len) = (be32(&f, off), be32(&f, off + 4) as usize);
        if kind == 0x2385_2875 {
            return (off as u64 + 8, be64(&f, off + 8 + 16));
        }
        assert_ne!(kind, 0, "no bitmaps extension in {file}");
        off += 8 + len.div_ceil(8) * 8;
    }
}

/// Mark every bitmap of `file` in use, as a writer that crashed leaves them.
fn mark_in_use(dir: &Path, file: &str) {
    let (_, mut p) = dir_offset(dir, file);
    let f = read(&dir.join(file));
    let ext = dir_offset(dir, file).0 as usize;
    for _ in 0..be32(&f, ext) {
        let p0 = p as usize;
        let flags = be32(&f, p0 + 12) | 1;
        patch(&dir.join(file), p + 12, &flags.to_be_bytes());
        let ns = u16::from_be_bytes([f[p0 + 18], f[p0 + 19]]) as usize;
        p += ((24 + ns).div_ceil(8) * 8) as u64;
    }
}

// ---------------------------------------------------------------- tests

#[test]
fn operations_one_at_a_time() {
    let p = pair("bitmap-ops", |d| {
        qcow2(d, "img.qcow2", "10M", &[]);
        qemu_io(d, "qcow2", "img.qcow2", &["write 0 1M".to_string()]);
    });
    let f = "img.qcow2";
    step(&p, &["bitmap", "--add", f, "b0"], f);
    step(&p, &["bitmap", "--add", "-g", "128k", f, "b1"], f);
    step(
        &p,
        &["bitmap", "--add", "--granularity", "512", f, "small"],
        f,
    );
    both_io(
        &p,
        f,
        &["write 3M 100k", "write -z 6M 64k", "discard 8M 1M"],
    );
    assert_same_bitmaps(&p, f, "after qemu-io writes");
    step(&p, &["bitmap", "--disable", f, "b1"], f);
    both_io(&p, f, &["write 9M 4k"]);
    step(&p, &["bitmap", "--clear", f, "small"], f);
    step(&p, &["bitmap", "--enable", f, "b1"], f);
    step(&p, &["bitmap", "--remove", f, "b0"], f);
    step(&p, &["bitmap", "--add", "-g", "2G", f, "huge"], f);
    step(&p, &["bitmap", "--remove", f, "huge"], f);
    step(&p, &["bitmap", "--remove", f, "b1"], f);
    step(&p, &["bitmap", "--remove", f, "small"], f);
    // No bitmap left: the extension is gone again.
    let info = qemu_img_ok(&p.o, &["info", f]);
    assert!(!info.contains("bitmaps:"), "{info}");
}

#[test]
fn several_operations_in_one_command() {
    let p = pair("bitmap-multi", |d| {
        qcow2(d, "img.qcow2", "4M", &["cluster_size=4096"]);
        qemu_img_ok(d, &["bitmap", "--add", "img.qcow2", "a"]);
        qemu_io(d, "qcow2", "img.qcow2", &["write 1M 8k".to_string()]);
    });
    let f = "img.qcow2";
    step(
        &p,
        &["bitmap", "--add", "--disable", "--merge", "a", f, "b"],
        f,
    );
    step(
        &p,
        &["bitmap", "--clear", "--merge", "b", "--remove", f, "a"],
        f,
    );
    // A failure midway keeps what was done before it.
    step(&p, &["bitmap", "--add", "--clear", "--add", f, "c"], f);
    step(
        &p,
        &["bitmap", "--disable", "--enable", "--clear", "--ad", f, "c"],
        f,
    );
}

#[test]
fn merge_granularities_and_other_images() {
    let p = pair("bitmap-merge", |d| {
        qcow2(d, "img.qcow2", "8M", &[]);
        qcow2(d, "other.qcow2", "8M", &[]);
        qcow2(d, "small.qcow2", "4M", &[]);
        for (f, g) in [
            ("img.qcow2", "64k"),
            ("other.qcow2", "4k"),
            ("small.qcow2", "64k"),
        ] {
            qemu_img_ok(d, &["bitmap", "--add", "-g", g, f, "src"]);
            qemu_img_ok(d, &["bitmap", "--add", "-g", "1M", "--disable", f, "dst"]);
        }
        qemu_img_ok(d, &["bitmap", "--add", "-g", "4k", "img.qcow2", "fine"]);
        let w = ["write 100k 10k", "write 3M 1M", "write 7M 4k"];
        let w: Vec<String> = w.iter().map(|s| s.to_string()).collect();
        qemu_io(d, "qcow2", "img.qcow2", &w);
        qemu_io(d, "qcow2", "other.qcow2", &w[..1]);
        qemu_io(d, "qcow2", "small.qcow2", &w[..1]);
    });
    let f = "img.qcow2";
    step(&p, &["bitmap", "--merge", "src", f, "dst"], f);
    step(&p, &["bitmap", "--merge", "dst", f, "fine"], f);
    step(&p, &["bitmap", "--clear", f, "dst"], f);
    step(
        &p,
        &[
            "bitmap",
            "--merge",
            "src",
            "-b",
            "other.qcow2",
            "-F",
            "qcow2",
            f,
            "dst",
        ],
        f,
    );
    step(
        &p,
        &["bitmap", "--merge", "src", "-b", "other.qcow2", f, "fine"],
        f,
    );
    // Sizes differ; missing source bitmap; missing target bitmap.
    step(
        &p,
        &["bitmap", "--merge", "src", "-b", "small.qcow2", f, "dst"],
        f,
    );
    step(
        &p,
        &["bitmap", "--merge", "nope", "-b", "other.qcow2", f, "dst"],
        f,
    );
    step(
        &p,
        &["bitmap", "--merge", "src", "-b", "other.qcow2", f, "nope"],
        f,
    );
    step(&p, &["bitmap", "--merge", "nope", f, "dst"], f);
}

#[test]
fn usage_and_operation_errors() {
    let p = pair("bitmap-errors", |d| {
        qcow2(d, "img.qcow2", "1M", &[]);
        qemu_img_ok(d, &["bitmap", "--add", "img.qcow2", "b0"]);
    });
    let f = "img.qcow2";
    let max = "m".repeat(1023);
    for args in [
        vec!["bitmap", f, "b0"],
        vec!["bitmap", "--add", f],
        vec!["bitmap", "--add", f, "x", "y"],
        vec!["bitmap", "--clear", "-g", "64k", f, "b0"],
        vec!["bitmap", "--add", "-F", "qcow2", f, "b1"],
        vec!["bitmap", "--add", "-b", f, f, "b1"],
        vec!["bitmap", "--add", "-g", "abc", f, "b1"],
        vec!["bitmap", "--add", "-g", "-1", f, "b1"],
        vec!["bitmap", "--add", "-g", "1000", f, "b1"],
        vec!["bitmap", "--add", "-g", "256", f, "b1"],
        vec!["bitmap", "--add", "-g", "4G", f, "b1"],
        vec!["bitmap", "--add", "-g", "4295032832", f, "wrapped"],
        vec!["bitmap", "--add", f, ""],
        vec!["bitmap", "--add", f, &max],
        vec!["bitmap", "--add", f, "b0"],
        vec!["bitmap", "--remove", f, "nope"],
        vec!["bitmap", "--clear", f, "nope"],
        vec!["bitmap", "--enable", f, "nope"],
        vec!["bitmap", "--disable", f, "nope"],
        vec!["bitmap", "--merge", f, "b0"],
        vec!["bitmap", "-g"],
        vec!["bitmap", "--bogus", f, "b0"],
        vec!["bitmap", "-z", f, "b0"],
        vec!["bitmap", "--add", "missing.qcow2", "b0"],
    ] {
        step(&p, &args, f);
    }
}

#[test]
fn help_text() {
    let p = pair("bitmap-help", |_| {});
    differential(&p, &["bitmap", "--help"], &[]);
    differential(&p, &["bitmap", "-h"], &[]);
}

/// qemu-img names its anonymous node `#blockNNN`, NNN varying per run.
fn without_node_number(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("#block") {
        out.push_str(&rest[..i + 6]);
        rest = rest[i + 6..].trim_start_matches(|c: char| c.is_ascii_digit());
        out.push('N');
    }
    out.push_str(rest);
    out
}

#[test]
fn formats_without_persistent_bitmaps() {
    let dir = TempDir::new("bitmap-v2");
    qcow2(dir.path(), "v2.qcow2", "1M", &["compat=0.10"]);
    qemu_img_ok(dir.path(), &["create", "-q", "-f", "raw", "r.raw", "1M"]);
    qcow2(dir.path(), "v3.qcow2", "1M", &[]);
    let long = "n".repeat(1024);
    for args in [
        ["bitmap", "--add", "v3.qcow2", &long].as_slice(),
        &["bitmap", "--add", "v2.qcow2", "x"],
        &["bitmap", "--add", "-f", "raw", "r.raw", "x"],
        &["bitmap", "--add", "r.raw", "x"],
        &["bitmap", "--clear", "-f", "raw", "r.raw", "x"],
    ] {
        let q = qemu_img(dir.path(), args);
        let o = imgtool(dir.path(), args);
        assert_eq!(
            o.code,
            q.code,
            "{args:?}\n{}\n{}",
            q.describe(),
            o.describe()
        );
        assert_text_eq(
            &format!("{args:?}"),
            &without_node_number(&as_imgtool(&q.stderr)),
            &without_node_number(&o.stderr),
        );
    }
    assert_qemu_check_clean(dir.path(), "v2.qcow2");
}

#[test]
fn in_use_bitmaps() {
    let p = pair("bitmap-inuse", |d| {
        qcow2(d, "img.qcow2", "2M", &[]);
        qemu_img_ok(d, &["bitmap", "--add", "img.qcow2", "b0"]);
        qemu_img_ok(d, &["bitmap", "--add", "-g", "4k", "img.qcow2", "b1"]);
        qemu_io(d, "qcow2", "img.qcow2", &["write 0 64k".to_string()]);
        mark_in_use(d, "img.qcow2");
    });
    let f = "img.qcow2";
    for args in [
        ["bitmap", "--clear", f, "b0"].as_slice(),
        &["bitmap", "--enable", f, "b0"],
        &["bitmap", "--disable", f, "b1"],
        &["bitmap", "--add", f, "b2"],
        &["bitmap", "--merge", "b0", f, "b2"],
        &["bitmap", "--merge", "b2", f, "b0"],
    ] {
        step(&p, args, f);
    }
    // A write keeps the void ones void and records into the new one.
    both_io(&p, f, &["write 1M 4k"]);
    assert_same_bitmaps(&p, f, "write after in-use");
    let (q, _) = differential(
        &p,
        &["convert", "--bitmaps", "-O", "qcow2", f, "o.qcow2"],
        &["o.qcow2"],
    );
    assert!(!q.ok());
    differential(
        &p,
        &[
            "convert",
            "--bitmaps",
            "--skip-broken-bitmaps",
            "-O",
            "qcow2",
            f,
            "s.qcow2",
        ],
        &["s.qcow2"],
    );
    assert_same_bitmaps(&p, "s.qcow2", "convert --skip-broken-bitmaps");
    step(&p, &["bitmap", "--remove", f, "b0"], f);
    step(&p, &["bitmap", "--remove", f, "b1"], f);
}

#[test]
fn writes_through_other_commands_update_bitmaps() {
    let p = pair("bitmap-writes", |d| {
        qcow2(d, "base.qcow2", "10M", &[]);
        for (g, n, dis) in [
            ("64k", "b0", false),
            ("512k", "b1", false),
            ("4k", "b2", false),
            ("64k", "off", true),
        ] {
            let mut a = vec!["bitmap", "--add", "-g", g];
            if dis {
                a.push("--disable");
            }
            a.extend(["base.qcow2", n]);
            qemu_img_ok(d, &a);
        }
        qemu_img_ok(
            d,
            &[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-b",
                "base.qcow2",
                "-F",
                "qcow2",
                "top.qcow2",
            ],
        );
        let w = [
            "write -P 1 1M 100k",
            "write -P 2 5000k 4k",
            "write -z 8M 64k",
            "write -P 3 9M 300k",
        ];
        let w: Vec<String> = w.iter().map(|s| s.to_string()).collect();
        qemu_io(d, "qcow2", "top.qcow2", &w);
    });
    differential(&p, &["commit", "-q", "top.qcow2"], &["base.qcow2"]);
    assert_same_bitmaps(&p, "base.qcow2", "commit");
    step(&p, &["resize", "base.qcow2", "20M"], "base.qcow2");
    both_io(&p, "base.qcow2", &["write 15M 1M"]);
    assert_same_bitmaps(&p, "base.qcow2", "write after resize");
    step(
        &p,
        &["resize", "--shrink", "base.qcow2", "12M"],
        "base.qcow2",
    );
    // (Data and bitmap clusters sit in different places on each side, so
    // only the verdict of check is compared.)
    for d in [&p.q, &p.o] {
        let t = qemu_img_ok(d, &["check", "-r", "all", "base.qcow2"]);
        assert!(t.contains("No errors were found"), "{t}");
        let t = imgtool(d, &["check", "base.qcow2"]).expect_ok().stdout;
        assert!(t.contains("No errors were found"), "{t}");
    }
    assert_same_bitmaps(&p, "base.qcow2", "check -r all");
    differential(&p, &["measure", "-O", "qcow2", "base.qcow2"], &[]);
    differential(
        &p,
        &["measure", "--output=json", "-O", "qcow2", "base.qcow2"],
        &[],
    );
}

#[test]
fn convert_copies_bitmaps() {
    let p = pair("bitmap-convert", |d| {
        qcow2(d, "src.qcow2", "6M", &["cluster_size=4096"]);
        qemu_img_ok(d, &["bitmap", "--add", "src.qcow2", "first"]);
        qemu_img_ok(
            d,
            &[
                "bitmap",
                "--add",
                "-g",
                "64k",
                "--disable",
                "src.qcow2",
                "second",
            ],
        );
        qemu_img_ok(d, &["bitmap", "--add", "-g", "1M", "src.qcow2", "third"]);
        qemu_io(
            d,
            "qcow2",
            "src.qcow2",
            &["write 0 12k".to_string(), "write 4M 1M".to_string()],
        );
        qcow2(d, "plain.qcow2", "6M", &[]);
    });
    let out = "dst.qcow2";
    differential(
        &p,
        &["convert", "--bitmaps", "-O", "qcow2", "src.qcow2", out],
        &[out],
    );
    assert_same_bitmaps(&p, out, "convert --bitmaps");
    differential(
        &p,
        &[
            "convert",
            "--bitmaps",
            "-O",
            "qcow2",
            "-o",
            "cluster_size=512",
            "src.qcow2",
            "c512.qcow2",
        ],
        &["c512.qcow2"],
    );
    assert_same_bitmaps(&p, "c512.qcow2", "convert --bitmaps to 512-byte clusters");
    differential(
        &p,
        &[
            "convert",
            "--bitmaps",
            "-O",
            "qcow2",
            "plain.qcow2",
            "none.qcow2",
        ],
        &["none.qcow2"],
    );
    // Into an existing target that already has one of the names.
    differential(
        &p,
        &[
            "convert",
            "-n",
            "--bitmaps",
            "-O",
            "qcow2",
            "src.qcow2",
            out,
        ],
        &[out],
    );
    for args in [
        ["convert", "--bitmaps", "-O", "raw", "src.qcow2", "x.raw"].as_slice(),
        &[
            "convert",
            "--skip-broken-bitmaps",
            "-O",
            "qcow2",
            "src.qcow2",
            "y.qcow2",
        ],
        &[
            "convert",
            "--bitmaps",
            "-O",
            "qcow2",
            "src.qcow2",
            "src.qcow2",
            "z.qcow2",
        ],
    ] {
        differential(&p, args, &[]);
    }
}

/// Hostile bitmap extensions and directories: the same error as qemu-img
/// (at open, so `info` shows it), never a panic or a hang.
#[test]
fn hostile_bitmap_directories() {
    let dir = TempDir::new("bitmap-hostile");
    let d = dir.path();
    qcow2(d, "good.qcow2", "1M", &[]);
    qemu_img_ok(d, &["bitmap", "--add", "good.qcow2", "b0"]);
    qemu_img_ok(d, &["bitmap", "--add", "-g", "4k", "good.qcow2", "b1"]);
    let (ext, diroff) = dir_offset(d, "good.qcow2");
    let cases: Vec<(&str, u64, Vec<u8>)> = vec![
        ("count-zero", ext, 0u32.to_be_bytes().to_vec()),
        ("count-huge", ext, 0xffff_ffffu32.to_be_bytes().to_vec()),
        ("count-one", ext, 1u32.to_be_bytes().to_vec()),
        ("count-three", ext, 3u32.to_be_bytes().to_vec()),
        ("reserved", ext + 4, 1u32.to_be_bytes().to_vec()),
        ("dirsize-huge", ext + 8, u64::MAX.to_be_bytes().to_vec()),
        ("dirsize-zero", ext + 8, 0u64.to_be_bytes().to_vec()),
        ("dirsize-short", ext + 8, 30u64.to_be_bytes().to_vec()),
        (
            "diroff-unaligned",
            ext + 16,
            0x1234u64.to_be_bytes().to_vec(),
        ),
        (
            "diroff-past-eof",
            ext + 16,
            (1u64 << 40).to_be_bytes().to_vec(),
        ),
        ("diroff-zero", ext + 16, 0u64.to_be_bytes().to_vec()),
        ("table-zero", diroff, 0u64.to_be_bytes().to_vec()),
        ("table-unaligned", diroff, 0x10001u64.to_be_bytes().to_vec()),
        (
            "table-past-eof",
            diroff,
            (1u64 << 50).to_be_bytes().to_vec(),
        ),
        (
            "tablesize-huge",
            diroff + 8,
            0xffff_ffffu32.to_be_bytes().to_vec(),
        ),
        ("tablesize-zero", diroff + 8, 0u32.to_be_bytes().to_vec()),
        ("tablesize-two", diroff + 8, 2u32.to_be_bytes().to_vec()),
        (
            "flags-reserved",
            diroff + 12,
            0x80u32.to_be_bytes().to_vec(),
        ),
        ("type", diroff + 16, vec![7]),
        ("gran-small", diroff + 17, vec![8]),
        ("gran-big", diroff + 17, vec![63]),
        ("name-huge", diroff + 18, vec![0xff, 0xff]),
        ("extra-data", diroff + 20, 8u32.to_be_bytes().to_vec()),
        ("ext-len", ext - 4, 16u32.to_be_bytes().to_vec()),
    ];
    for (name, off, bytes) in cases {
        let f = format!("{name}.qcow2");
        std::fs::copy(d.join("good.qcow2"), d.join(&f)).unwrap();
        patch(&d.join(&f), off, &bytes);
        let (q, _) = same_as_qemu(d, &["info", &f]);
        same_as_qemu(d, &["info", "--output=json", &f]);
        if !q.ok() {
            on_copies(d, &f, &["bitmap", "--add", "{}", "new"]);
            on_copies(d, &f, &["bitmap", "--remove", "{}", "b0"]);
        } else {
            // Opens, but the bitmaps point at nonsense: no panic, no hang.
            imgtool(d, &["bitmap", "--add", &f, "new"]);
            imgtool(d, &["bitmap", "--remove", &f, "b0"]);
            imgtool(d, &["check", &f]);
        }
    }
    // A bad table entry (reserved bits) in a consistent bitmap.
    let f = read(&d.join("good.qcow2"));
    let table = be64(&f, diroff as usize);
    std::fs::copy(d.join("good.qcow2"), d.join("entry.qcow2")).unwrap();
    patch(&d.join("entry.qcow2"), table, &0x1feu64.to_be_bytes());
    same_as_qemu(d, &["info", "entry.qcow2"]);
    // Bitmaps a program without bitmap support touched (autoclear off).
    std::fs::copy(d.join("good.qcow2"), d.join("stale.qcow2")).unwrap();
    patch(&d.join("stale.qcow2"), 88, &0u64.to_be_bytes());
    same_as_qemu(d, &["info", "stale.qcow2"]);
    on_copies(d, "stale.qcow2", &["bitmap", "--add", "{}", "new"]);
}
