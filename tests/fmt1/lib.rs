//! Library-level differential checks for qcow, QED and VDI, shared by
//! `tests/fmt_{qcow,qed,vdi}.rs`. Expected values come from qemu-img.
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use imgtool::format::CreateOptions;
use imgtool::ops::convert::{convert, ConvertOptions};
use imgtool::ops::create::{create, CreateRequest};
use imgtool::{Image, OpenOptions};

use crate::common::*;
use crate::fmt1::*;

/// `qemu-img check` finds no corruption, and the library's check of the
/// same file reports exactly what qemu-img reports (QED's check counts a
/// phantom leak per `cluster_size - 1` clusters of file; both must agree).
pub fn check_like_qemu(dir: &Path, file: &str, format: &str) {
    let q = qemu_img(dir, &["check", "--output=json", "-f", format, file]);
    let mut qj = parse_json("qemu-img check", &q.stdout);
    assert!(
        qj.get("corruptions").is_none() && q.stdout.contains("\"check-errors\": 0"),
        "qemu-img check finds corruption:\n{}",
        q.describe()
    );
    let opts = imgtool::ops::check::CheckOptions {
        format: Some(format.to_string()),
        ..Default::default()
    };
    let rep =
        imgtool::ops::check::check(&path_str(&dir.join(file)), &opts, &mut |_| {}, &mut |_| {})
            .unwrap_or_else(|e| panic!("library check of {file}: {e}"));
    let mut oj = parse_json("library check", &rep.to_json().to_pretty());
    qj.remove_everywhere("filename");
    oj.remove_everywhere("filename");
    assert_eq!(oj, qj, "check of {file}: library vs qemu-img");
}

fn path_str(p: &Path) -> String {
    p.to_str().expect("utf-8 path").to_string()
}

/// Read the whole guest in odd-sized chunks (boundaries inside clusters).
pub fn library_read_all(path: &Path, format: Option<&str>) -> imgtool::Result<Vec<u8>> {
    let oo = OpenOptions {
        format: format.map(str::to_string),
        ..OpenOptions::read_only()
    };
    let img = Image::open(&path_str(path), &oo)?;
    let size = img.size();
    let mut out = vec![0u8; size as usize];
    let mut off = 0usize;
    const CHUNKS: &[usize] = &[65536, 4096 + 512, 1 << 20, 7, 300 * 1024 + 3, 2 << 20];
    let mut step = 0;
    while off < out.len() {
        let n = CHUNKS[step % CHUNKS.len()].min(out.len() - off);
        img.read_at(&mut out[off..off + n], off as u64)?;
        off += n;
        step += 1;
    }
    Ok(out)
}

/// One run of `qemu-img map --output=json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapRun {
    pub start: u64,
    pub length: u64,
    pub depth: u64,
    pub present: bool,
    pub zero: bool,
    pub data: bool,
    pub compressed: bool,
    pub offset: Option<u64>,
}

fn qemu_map(dir: &Path, file: &str) -> Vec<MapRun> {
    let t = qemu_img_ok(dir, &["map", "--output=json", file]);
    let j = parse_json("qemu-img map", &t);
    let Json::Arr(items) = j else {
        panic!("map is not a list: {t}")
    };
    let num = |v: Option<&Json>| match v {
        Some(Json::Num(n)) => n.parse::<u64>().ok(),
        _ => None,
    };
    let flag = |v: Option<&Json>| matches!(v, Some(Json::Bool(true)));
    items
        .iter()
        .map(|r| MapRun {
            start: num(r.get("start")).expect("start"),
            length: num(r.get("length")).expect("length"),
            depth: num(r.get("depth")).expect("depth"),
            present: flag(r.get("present")),
            zero: flag(r.get("zero")),
            data: flag(r.get("data")),
            compressed: flag(r.get("compressed")),
            offset: num(r.get("offset")),
        })
        .collect()
}

/// Our block status over the whole image, merged as qemu-img map merges.
fn our_map(path: &Path) -> Vec<MapRun> {
    let img = Image::open(&path_str(path), &OpenOptions::read_only()).expect("open");
    let size = img.size();
    let mut runs: Vec<MapRun> = Vec::new();
    let mut off = 0;
    while off < size {
        let e = img.block_status(off, size - off).expect("block status");
        let r = MapRun {
            start: off,
            length: e.len,
            depth: e.depth as u64,
            present: e.present,
            zero: e.zero,
            data: e.data,
            compressed: e.compressed,
            offset: e.offset,
        };
        off += e.len;
        if let Some(last) = runs.last_mut() {
            let contiguous = match (last.offset, r.offset) {
                (Some(a), Some(b)) => a + last.length == b,
                (None, None) => true,
                _ => false,
            };
            if last.depth == r.depth
                && last.present == r.present
                && last.zero == r.zero
                && last.data == r.data
                && last.compressed == r.compressed
                && contiguous
            {
                last.length += r.length;
                continue;
            }
        }
        runs.push(r);
    }
    runs
}

/// A qemu-made variant reads exactly like `qemu-img convert -O raw`, and
/// its allocation map matches `qemu-img map` (top layer runs).
pub fn read_variant(format: &str, variant: &str) {
    let dir = TempDir::new(&format!("{format}-{variant}"));
    let b = build(format, variant, dir.path());
    let expected = qemu_raw_bytes(dir.path(), &b.file);
    assert_eq!(
        expected.len() as u64,
        b.size,
        "qemu's raw has the virtual size"
    );
    let img = Image::open(&path_str(&dir.join(&b.file)), &OpenOptions::read_only())
        .unwrap_or_else(|e| panic!("Image::open: {e}"));
    assert_eq!(img.size(), b.size, "virtual size");
    assert_eq!(img.format(), format, "probed format");
    drop(img);
    let actual = library_read_all(&dir.join(&b.file), None).expect("library read");
    assert_bytes_eq(
        &format!("{format}/{variant}: library read vs qemu-img convert -O raw"),
        &expected,
        &actual,
    );
    let q = qemu_map(dir.path(), &b.file);
    let o = our_map(&dir.join(&b.file));
    // Layers below the top are other formats' business: compare where the
    // top layer decides.
    let top = |v: &[MapRun]| -> Vec<MapRun> {
        let mut out: Vec<MapRun> = Vec::new();
        for r in v {
            let r = if r.depth == 0 {
                r.clone()
            } else {
                MapRun {
                    depth: 1,
                    present: false,
                    zero: false,
                    data: false,
                    compressed: false,
                    offset: None,
                    ..r.clone()
                }
            };
            match out.last_mut() {
                Some(l) if l.depth != 0 && r.depth != 0 => l.length += r.length,
                _ => out.push(r),
            }
        }
        out
    };
    assert_eq!(
        top(&o),
        top(&q),
        "{format}/{variant}: map (ours vs qemu-img's)"
    );
}

/// The byte ranges that legitimately differ between two creates (VDI's
/// random image and snapshot UUIDs).
fn mask_random(format: &str, b: &mut [u8]) {
    if format == "vdi" && b.len() >= 0x1a8 {
        b[0x188..0x1a8].fill(0);
    }
}

fn info_json(dir: &Path, file: &str) -> Json {
    let t = qemu_img_ok(dir, &["info", "--output=json", file]);
    let mut j = parse_json("qemu-img info", &t);
    j.remove_everywhere("actual-size");
    j
}

/// Create through the library with `opts`; the file equals qemu-img's
/// (apart from random UUIDs), qemu-img check is clean and info matches.
pub fn create_case(format: &str, label: &str, opts: &str, size: u64) {
    let dir = TempDir::new(&format!("create-{format}-{label}"));
    let qd = dir.sub("q");
    let od = dir.sub("o");
    create_bases(&qd);
    create_bases(&od);
    let file = format!("new.{format}");
    let mut args = vec!["create", "-q", "-f", format];
    if !opts.is_empty() {
        args.push("-o");
        args.push(opts);
    }
    let size_s = size.to_string();
    args.push(&file);
    args.push(&size_s);
    qemu_img_ok(&qd, &args);
    let req = CreateRequest {
        format: format.into(),
        filename: path_str(&od.join(&file)),
        size: Some(size),
        options: CreateOptions::parse(opts).expect("options"),
        unsafe_backing: false,
    };
    create(&req).unwrap_or_else(|e| panic!("{format}/{label}: create: {e}"));
    let mut q = read(&qd.join(&file));
    let mut o = read(&od.join(&file));
    mask_random(format, &mut q);
    mask_random(format, &mut o);
    assert_bytes_eq(&format!("{format}/{label}: created file"), &q, &o);
    assert_eq!(
        info_json(&qd, &file),
        info_json(&od, &file),
        "{format}/{label}: qemu-img info --output=json"
    );
    if format != "qcow" {
        assert_qemu_check_clean(&od, &file);
    }
}

/// qemu-img refuses these; the library must too, with the same message.
pub fn refused_create_case(format: &str, label: &str, opts: &str, size: &str) {
    let dir = TempDir::new(&format!("refuse-{format}-{label}"));
    let file = format!("new.{format}");
    let mut args = vec!["create", "-q", "-f", format];
    if !opts.is_empty() {
        args.push("-o");
        args.push(opts);
    }
    args.push(&file);
    args.push(size);
    let q = qemu_img(dir.path(), &args);
    assert!(!q.ok(), "qemu-img accepted {args:?}");
    let expected = q
        .stderr
        .trim_end()
        .strip_prefix(&format!("qemu-img: {file}: "))
        .unwrap_or(q.stderr.trim_end())
        .to_string();
    let size = imgtool::size::parse_size(size).expect("size");
    let req = CreateRequest {
        format: format.into(),
        filename: path_str(&dir.join(&format!("ours.{format}"))),
        size: Some(size),
        options: CreateOptions::parse(opts).expect("options"),
        unsafe_backing: false,
    };
    match create(&req) {
        Ok(_) => panic!("{format}/{label}: library accepted what qemu-img refuses: {expected}"),
        Err(e) => assert_eq!(e.message(), expected, "{format}/{label}: error message"),
    }
}

/// Random writes, zero writes (and compressed writes where the format has
/// them) through the library against a raw shadow; then qemu-img compare
/// says identical and qemu-img check is clean.
pub fn random_writes(format: &str, opts: &str, size: u64, seed: u64, with_backing: bool) {
    let dir = TempDir::new(&format!("rw-{format}-{seed}"));
    let d = dir.path();
    let file = format!("img.{format}");
    let mut shadow = vec![0u8; size as usize];
    let mut o = opts.to_string();
    if with_backing {
        data_files(d, seed);
        qemu_img_ok(
            d,
            &[
                "create",
                "-q",
                "-f",
                "qcow2",
                "base.qcow2",
                &size.to_string(),
            ],
        );
        qemu_io(
            d,
            "qcow2",
            "base.qcow2",
            &[
                format!("write -s t1.bin 0 {}", MIB.min(size)),
                format!("write -s r1.bin {} {}", size / 2, MIB.min(size / 2)),
            ],
        );
        shadow = qemu_raw_bytes(d, "base.qcow2");
        if !o.is_empty() {
            o.push(',');
        }
        o.push_str("backing_file=base.qcow2,backing_fmt=qcow2");
    }
    let req = CreateRequest {
        format: format.into(),
        filename: path_str(&d.join(&file)),
        size: Some(size),
        options: CreateOptions::parse(&o).expect("options"),
        unsafe_backing: false,
    };
    create(&req).expect("create");
    let img = Image::open(&path_str(&d.join(&file)), &OpenOptions::read_write()).expect("open rw");
    let cs = img.driver().compression_cluster_size();
    let mut r = Rng::new(seed);
    for i in 0..300 {
        let max_len = if r.below(4) == 0 { 3 * MIB } else { 70 * KIB };
        let len = 1 + r.below(max_len.min(size));
        let off = r.below(size - len + 1);
        match r.below(10) {
            0..=5 => {
                let mut buf = vec![0u8; len as usize];
                if r.below(2) == 0 {
                    r.fill(&mut buf);
                } else {
                    buf.copy_from_slice(&text_bytes(seed * 1000 + i, len as usize));
                }
                img.write_at(&buf, off)
                    .unwrap_or_else(|e| panic!("write {off}+{len}: {e}"));
                shadow[off as usize..(off + len) as usize].copy_from_slice(&buf);
            }
            6 | 7 => {
                img.write_zeroes(off, len, r.below(2) == 0)
                    .unwrap_or_else(|e| panic!("write_zeroes {off}+{len}: {e}"));
                shadow[off as usize..(off + len) as usize].fill(0);
            }
            8 => {
                if let Some(cs) = cs {
                    let off = r.below(size / cs) * cs;
                    let n = cs.min(size - off);
                    let data = text_bytes(seed + i, n as usize);
                    img.driver()
                        .write_compressed(&data, off)
                        .unwrap_or_else(|e| panic!("write_compressed {off}: {e}"));
                    shadow[off as usize..(off + n) as usize].copy_from_slice(&data);
                }
            }
            _ => {
                // Read back a random range mid-way.
                let mut buf = vec![0u8; len as usize];
                img.read_at(&mut buf, off).expect("read");
                assert_bytes_eq(
                    &format!("{format}: read-back at {off}+{len} (op {i})"),
                    &shadow[off as usize..(off + len) as usize],
                    &buf,
                );
            }
        }
    }
    img.close().expect("close");
    std::fs::write(d.join("shadow.raw"), &shadow).expect("write shadow");
    let o = qemu_img(
        d,
        &["compare", "-f", format, "-F", "raw", &file, "shadow.raw"],
    );
    assert!(
        o.ok() && o.stdout.contains("Images are identical."),
        "{format}: image differs from its shadow:\n{}",
        o.describe()
    );
    if format != "qcow" {
        check_like_qemu(d, &file, format);
    }
    let ours = library_read_all(&d.join(&file), Some(format)).expect("read back");
    assert_bytes_eq(&format!("{format}: library read-back"), &shadow, &ours);
}

/// Several threads write disjoint ranges at once (allocating and in place).
pub fn concurrent_writes(format: &str, opts: &str) {
    let dir = TempDir::new(&format!("mt-{format}"));
    let d = dir.path();
    let file = format!("img.{format}");
    let size = 16 * MIB;
    let req = CreateRequest {
        format: format.into(),
        filename: path_str(&d.join(&file)),
        size: Some(size),
        options: CreateOptions::parse(opts).expect("options"),
        unsafe_backing: false,
    };
    create(&req).expect("create");
    let img = Image::open(&path_str(&d.join(&file)), &OpenOptions::read_write()).expect("open");
    let threads = 8u64;
    let part = size / threads;
    let shadow = random_bytes(77, size as usize);
    std::thread::scope(|s| {
        for t in 0..threads {
            let img = &img;
            let shadow = &shadow;
            s.spawn(move || {
                // Interleaved pieces so threads allocate clusters/blocks
                // in alternation; odd sizes cross cluster boundaries.
                let mut off = t * part;
                let end = off + part;
                let mut step = 4096 + 512 * t;
                while off < end {
                    let n = step.min(end - off);
                    img.write_at(&shadow[off as usize..(off + n) as usize], off)
                        .expect("write");
                    off += n;
                    step = step * 3 % 200_000 + 1000;
                }
            });
        }
    });
    img.close().expect("close");
    std::fs::write(d.join("shadow.raw"), &shadow).expect("write shadow");
    assert_qemu_compare_identical(d, &file, "shadow.raw", &["-f", format, "-F", "raw"]);
    if format != "qcow" {
        check_like_qemu(d, &file, format);
    }
}

/// Convert qemu-made qcow2/raw into `format` through the library and back;
/// contents stay identical (qemu-img compare) and the result is clean.
pub fn convert_round_trip(format: &str, opts: &str) {
    let dir = TempDir::new(&format!("conv-{format}"));
    let d = dir.path();
    let size = 6 * MIB + 4096;
    std::fs::write(d.join("src.raw"), mixed_raw(3, size)).expect("write");
    qemu_img_ok(
        d,
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "qcow2",
            "src.raw",
            "src.qcow2",
        ],
    );
    let file = format!("out.{format}");
    for src in ["src.raw", "src.qcow2"] {
        let _ = std::fs::remove_file(d.join(&file));
        let o = ConvertOptions {
            out_format: format.into(),
            out_options: CreateOptions::parse(opts).expect("options"),
            ..ConvertOptions::default()
        };
        convert(
            &[path_str(&d.join(src))],
            &path_str(&d.join(&file)),
            &o,
            None,
        )
        .unwrap_or_else(|e| panic!("convert {src} -> {format}: {e}"));
        assert_qemu_compare_identical(d, src, &file, &[]);
        if format != "qcow" {
            check_like_qemu(d, &file, format);
        }
    }
    for target in ["back.raw", "back.qcow2"] {
        let fmt = target.rsplit('.').next().unwrap_or("raw");
        let o = ConvertOptions {
            out_format: fmt.into(),
            ..ConvertOptions::default()
        };
        convert(
            &[path_str(&d.join(&file))],
            &path_str(&d.join(target)),
            &o,
            None,
        )
        .unwrap_or_else(|e| panic!("convert {format} -> {fmt}: {e}"));
        assert_qemu_compare_identical(d, &file, target, &[]);
    }
}

/// Every damaged image: never a panic or a hang; where qemu-img reads it,
/// we read the same bytes; where it cannot open it, neither can we, with
/// the same message; where it fails reading, we fail too.
pub fn damaged_images(format: &str) {
    let dir = TempDir::new(&format!("bad-{format}"));
    let d = dir.path().to_path_buf();
    let (good, cases) = build_good(format, &d);
    let mut failures = Vec::new();
    for b in &cases {
        let name = make_bad(&d, &good, b);
        let out = format!("{name}.raw");
        let q = qemu_img(&d, &["convert", "-f", format, "-O", "raw", &name, &out]);
        assert!(!q.timed_out, "qemu-img hung on {name}");
        let path = d.join(&name);
        let fmt = format.to_string();
        let ours = bounded(
            &format!("{format}/{}", b.name),
            Duration::from_secs(30),
            move || library_read_all(&path, Some(&fmt)),
        );
        let q_err = q
            .stderr
            .trim_end()
            .strip_prefix("qemu-img: ")
            .unwrap_or("")
            .to_string();
        match (q.ok(), ours) {
            (true, Ok(bytes)) => {
                let expected = read(&d.join(&out));
                if expected != bytes {
                    failures.push(format!("{}: data differs from qemu-img's", b.name));
                }
            }
            (true, Err(e)) => failures.push(format!(
                "{}: qemu-img reads it, we fail: {}",
                b.name,
                e.message()
            )),
            (false, Ok(_)) => {
                failures.push(format!("{}: qemu-img fails ({q_err}), we read it", b.name))
            }
            (false, Err(e)) => {
                // Our paths are absolute; qemu-img ran in the directory.
                let ours = e.message().replace(&format!("{}/", path_str(&d)), "");
                let ours = ours.as_str();
                let same = if q_err.starts_with("Could not open") {
                    ours == q_err
                } else {
                    // A read error: qemu-img adds its own prefix.
                    q_err.ends_with(ours)
                };
                if !same {
                    failures.push(format!(
                        "{}: qemu-img says {q_err:?}, we say {ours:?}",
                        b.name
                    ));
                }
            }
        }
        let _ = std::fs::remove_file(d.join(&out));
    }
    assert!(failures.is_empty(), "{format}: {}", failures.join("\n"));
}
