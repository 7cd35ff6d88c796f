//! Differential helpers shared by the vpc, vhdx and vmdk suites
//! (`tests/fmt_*.rs`): qemu-made images read back through the library,
//! images we create inspected by qemu-img, random library writes against a
//! raw shadow, and damaged files opened in a child process with a timeout.
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use super::common::*;
use imgtool::format::CreateOptions;
use imgtool::ops::create::{create, CreateRequest};
use imgtool::{Image, ImageInfo, OpenOptions};

/// Data files for qemu-io's `write -s` (it reads from byte 0 of the file).
pub fn data_files(dir: &Path, seed: u64) {
    let put = |n: &str, d: Vec<u8>| std::fs::write(dir.join(n), d).expect("write data file");
    put("r1.bin", random_bytes(seed + 1, MIB as usize));
    put("r2.bin", random_bytes(seed + 2, MIB as usize));
    put("t1.bin", text_bytes(seed + 3, MIB as usize));
}

/// Pattern writes for an image of `size` bytes (at least 4 MiB): unaligned
/// heads and tails, zeros over data and over nothing, block boundaries,
/// and the last bytes of the disk.
pub fn pattern_writes(size: u64) -> Vec<String> {
    let k = |n: u64| n * KIB;
    vec![
        format!("write -s r1.bin 0 {}", k(200)),
        format!("write -P 0x5a {} {}", k(300), k(70)),
        "write -P 0x77 513 1000".to_string(),
        format!("write -s t1.bin {} {}", MIB, k(256)),
        format!("write -z {} {}", k(1100), k(50)),
        format!("write -P 0x11 {} {}", 2 * MIB - k(3), k(9)),
        format!("write -z {} {}", 3 * MIB, k(8)),
        format!("write -s r2.bin {} {}", size - k(40), k(40)),
    ]
}

/// Open with an explicit format, read-only.
pub fn open_ro(path: &Path, fmt: &str) -> Image {
    let o = OpenOptions {
        format: Some(fmt.into()),
        ..OpenOptions::read_only()
    };
    Image::open(path.to_str().unwrap(), &o)
        .unwrap_or_else(|e| panic!("Image::open({}) as {fmt}: {e}", path.display()))
}

/// The whole guest through the library, in odd-sized chunks.
pub fn library_read_all(path: &Path, fmt: &str) -> Vec<u8> {
    let img = open_ro(path, fmt);
    let size = img.size();
    let mut out = vec![0u8; size as usize];
    let mut off = 0usize;
    let mut step = 0usize;
    const CHUNKS: &[usize] = &[65536, 4096 + 512, 1 << 20, 7, 300 * 1024 + 3];
    while off < out.len() {
        let n = CHUNKS[step % CHUNKS.len()].min(out.len() - off);
        img.read_at(&mut out[off..off + n], off as u64)
            .unwrap_or_else(|e| panic!("read_at({off}, {n}) of {}: {e}", path.display()));
        off += n;
        step += 1;
    }
    out
}

/// `qemu-img convert -O raw` of an image whose format is given.
pub fn qemu_raw_of(dir: &Path, file: &str, fmt: &str) -> Vec<u8> {
    let out = format!("{file}.qemu-ref.raw");
    qemu_img_ok(dir, &["convert", "-f", fmt, "-O", "raw", file, &out]);
    let v = read(&dir.join(&out));
    let _ = std::fs::remove_file(dir.join(&out));
    v
}

/// qemu-img makes `file` with `-o opts`, qemu-io writes patterns; our
/// library read of the whole guest equals qemu-img's raw conversion, and
/// our info JSON equals qemu-img's (apart from allocation sizes).
pub fn qemu_made_reads_same(fmt: &str, opts: &str, size: u64, writes: bool) {
    let dir = TempDir::new(&format!("{fmt}_{opts}"));
    let file = format!("img.{fmt}");
    let mut args = vec!["create", "-q", "-f", fmt];
    if !opts.is_empty() {
        args.push("-o");
        args.push(opts);
    }
    let sz = size.to_string();
    args.push(&file);
    args.push(&sz);
    qemu_img_ok(dir.path(), &args);
    if writes {
        data_files(dir.path(), size);
        qemu_io(dir.path(), fmt, &file, &pattern_writes(size));
    }
    let expected = qemu_raw_of(dir.path(), &file, fmt);
    let actual = library_read_all(&dir.join(&file), fmt);
    assert_bytes_eq(
        &format!("{fmt} -o {opts:?}: library read vs qemu-img convert -O raw"),
        &expected,
        &actual,
    );
    if fmt == "vmdk" {
        assert_info_same_but_extent_children(dir.path(), &file, fmt);
    } else {
        assert_info_same(dir.path(), &file, fmt);
    }
}

/// Our info JSON of `file` equals qemu-img's apart from actual sizes and
/// the `extents.N` children qemu-img lists for extent files (ImageInfo
/// has one protocol child only).
pub fn assert_info_same_but_extent_children(dir: &Path, file: &str, fmt: &str) {
    let q = qemu_img_ok(dir, &["info", "-f", fmt, "--output=json", file]);
    let ours = our_info_json(dir, file, fmt);
    let norm = |t: &str| {
        let mut j = parse_json("info", t);
        j.remove_everywhere("actual-size");
        if let Json::Obj(m) = &mut j {
            for (k, v) in m.iter_mut() {
                if k == "children" {
                    if let Json::Arr(a) = v {
                        a.retain(|c| {
                            !matches!(c.get("name"), Some(Json::Str(n)) if n.starts_with("extents."))
                        });
                    }
                }
            }
        }
        j
    };
    assert_eq!(norm(&ours), norm(&q), "info of {file}");
}

fn our_info_json(dir: &Path, file: &str, fmt: &str) -> String {
    let cwd = std::env::current_dir().unwrap();
    let _g = CWD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    std::env::set_current_dir(dir).unwrap();
    let o = OpenOptions {
        format: Some(fmt.into()),
        force_share: true,
        ..OpenOptions::read_only()
    };
    let r = Image::open(file, &o).map(|img| ImageInfo::of(&img).to_json().to_pretty());
    std::env::set_current_dir(&cwd).unwrap();
    r.unwrap_or_else(|e| panic!("open {file}: {e}"))
}

/// Our `info --output=json` of `file` (library ImageInfo) equals
/// qemu-img's, without actual-size members.
pub fn assert_info_same(dir: &Path, file: &str, fmt: &str) {
    let q = qemu_img_ok(dir, &["info", "-f", fmt, "--output=json", file]);
    let cwd = std::env::current_dir().unwrap();
    // ImageInfo names files as given; run from the image's directory.
    let img = {
        let _g = CWD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        std::env::set_current_dir(dir).unwrap();
        let o = OpenOptions {
            format: Some(fmt.into()),
            force_share: true,
            ..OpenOptions::read_only()
        };
        let r = Image::open(file, &o).map(|img| ImageInfo::of(&img).to_json().to_pretty());
        std::env::set_current_dir(&cwd).unwrap();
        r.unwrap_or_else(|e| panic!("open {file}: {e}"))
    };
    assert_text_eq(
        &format!("info --output=json of {file}"),
        &json_without_actual_size(&q),
        &json_without_actual_size(&(img + "\n")),
    );
}

/// Tests in one binary share the process's working directory.
pub static CWD_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Create through the library (as `imgtool create` does).
pub fn lib_create(path: &Path, fmt: &str, size: u64, opts: &str) {
    let req = CreateRequest {
        format: fmt.into(),
        filename: path.to_str().unwrap().into(),
        size: Some(size),
        options: CreateOptions::parse(opts).expect("options"),
        unsafe_backing: false,
    };
    create(&req).unwrap_or_else(|e| panic!("create {fmt} -o {opts}: {e}"));
}

/// We create `img.FMT`, qemu-img creates the same in another directory;
/// `qemu-img info --output=json` of both agree apart from allocation.
pub fn our_create_matches_qemu(fmt: &str, opts: &str, size: u64) {
    let dir = TempDir::new(&format!("create_{fmt}_{opts}"));
    let ours = dir.sub("ours");
    let theirs = dir.sub("theirs");
    let file = format!("img.{fmt}");
    lib_create(&ours.join(&file), fmt, size, opts);
    let mut args = vec!["create", "-q", "-f", fmt];
    if !opts.is_empty() {
        args.push("-o");
        args.push(opts);
    }
    let sz = size.to_string();
    args.push(&file);
    args.push(&sz);
    qemu_img_ok(&theirs, &args);
    let norm = |d: &Path| {
        let t = qemu_img_ok(d, &["info", "-f", fmt, "--output=json", &file]);
        let mut j = parse_json("qemu-img info", &t);
        j.remove_everywhere("actual-size");
        j.remove_everywhere("cid");
        j
    };
    assert_eq!(
        norm(&ours),
        norm(&theirs),
        "qemu-img info of our {fmt} -o {opts:?} vs qemu-img's own"
    );
    // Both read as zeros and compare equal (qemu-img reads every byte of
    // formats without block status, so only for small images).
    if size <= 256 * MIB {
        assert_qemu_compare_identical(
            dir.path(),
            &format!("ours/{file}"),
            &format!("theirs/{file}"),
            &["-f", fmt, "-F", fmt],
        );
    }
    // And our own info of our image matches qemu-img's view of it.
    if fmt == "vmdk" {
        assert_info_same_but_extent_children(&ours, &file, fmt);
    } else {
        assert_info_same(&ours, &file, fmt);
    }
}

/// Random writes / zero writes / reads through the library on an image we
/// create, against a raw shadow; then qemu-img compares it equal to the
/// shadow and our reopen reads the shadow back.
pub fn random_writes(fmt: &str, opts: &str, size: u64, grain: u64, seed: u64, ops: usize) {
    let dir = TempDir::new(&format!("random_{fmt}_{seed}"));
    let file = format!("img.{fmt}");
    let path = dir.join(&file);
    lib_create(&path, fmt, size, opts);
    let size = {
        let img = open_ro(&path, fmt);
        img.size()
    };
    let mut shadow = vec![0u8; size as usize];
    {
        let rw = OpenOptions {
            format: Some(fmt.into()),
            ..OpenOptions::read_write()
        };
        let img = Image::open(path.to_str().unwrap(), &rw).unwrap_or_else(|e| panic!("rw: {e}"));
        let mut r = Rng::new(seed);
        for i in 0..ops {
            let max_len = (4 * grain).max(16 * KIB);
            let len = match r.below(10) {
                0 => 1 + r.below(16),
                1..=6 => 1 + r.below(max_len),
                7 => grain * (1 + r.below(2)),
                _ => 1 + r.below(256 * KIB),
            }
            .min(size);
            let mut off = r.below(size - len + 1);
            match r.below(3) {
                0 => off -= off % grain,
                1 => off -= off % 512,
                _ => {}
            }
            let range = off as usize..(off + len) as usize;
            match r.below(20) {
                0..=11 => {
                    let mut data = vec![0u8; len as usize];
                    match r.below(4) {
                        0 => data.fill(r.below(256) as u8),
                        1 => {}
                        _ => r.fill(&mut data),
                    }
                    img.write_at(&data, off)
                        .unwrap_or_else(|e| panic!("op {i}: write_at({off}, {len}): {e}"));
                    shadow[range].copy_from_slice(&data);
                }
                12..=15 => {
                    let unmap = r.below(2) == 0;
                    img.write_zeroes(off, len, unmap)
                        .unwrap_or_else(|e| panic!("op {i}: write_zeroes({off}, {len}): {e}"));
                    shadow[range].fill(0);
                }
                16 => img.flush().unwrap_or_else(|e| panic!("op {i}: flush: {e}")),
                _ => {
                    let mut buf = vec![0u8; len as usize];
                    img.read_at(&mut buf, off)
                        .unwrap_or_else(|e| panic!("op {i}: read_at({off}, {len}): {e}"));
                    assert_bytes_eq(
                        &format!("op {i}: read_at({off}, {len})"),
                        &shadow[range],
                        &buf,
                    );
                }
            }
        }
        img.close().unwrap_or_else(|e| panic!("close: {e}"));
    }
    std::fs::write(dir.join("shadow.raw"), &shadow).unwrap();
    assert_qemu_compare_identical(dir.path(), &file, "shadow.raw", &["-f", fmt, "-F", "raw"]);
    let back = library_read_all(&path, fmt);
    assert_bytes_eq("reopen vs shadow", &shadow, &back);
}

/// Several threads write disjoint ranges of one open image at once.
pub fn parallel_writes(fmt: &str, opts: &str, size: u64, threads: usize) {
    let dir = TempDir::new(&format!("parallel_{fmt}"));
    let file = format!("img.{fmt}");
    let path = dir.join(&file);
    lib_create(&path, fmt, size, opts);
    let rw = OpenOptions {
        format: Some(fmt.into()),
        ..OpenOptions::read_write()
    };
    let img = Image::open(path.to_str().unwrap(), &rw).unwrap();
    let size = img.size();
    let chunk = 100 * KIB + 3;
    let mut shadow = vec![0u8; size as usize];
    let n = (size / chunk) as usize;
    for i in 0..n {
        let off = i * chunk as usize;
        shadow[off..off + chunk as usize].fill((i % 251) as u8 + 1);
    }
    std::thread::scope(|s| {
        for t in 0..threads {
            let img = &img;
            let shadow = &shadow;
            s.spawn(move || {
                for i in (t..n).step_by(threads) {
                    let off = i * chunk as usize;
                    img.write_at(&shadow[off..off + chunk as usize], off as u64)
                        .unwrap_or_else(|e| panic!("thread {t}: write {i}: {e}"));
                }
            });
        }
    });
    img.close().unwrap();
    std::fs::write(dir.join("shadow.raw"), &shadow).unwrap();
    assert_qemu_compare_identical(dir.path(), &file, "shadow.raw", &["-f", fmt, "-F", "raw"]);
}

/// Convert raw -> FMT with our library, compare with qemu-img; and FMT
/// (made by qemu-img) -> raw and qcow2 with our library.
pub fn convert_roundtrip(fmt: &str, opts: &str) {
    let dir = TempDir::new(&format!("convert_{fmt}"));
    let size = 6 * MIB + 512;
    std::fs::write(dir.join("src.raw"), mixed_raw(7, size)).unwrap();
    let o = imgtool::ops::convert::ConvertOptions {
        out_format: fmt.into(),
        out_options: CreateOptions::parse(opts).unwrap(),
        ..Default::default()
    };
    let src = vec![dir.join("src.raw").to_str().unwrap().to_string()];
    let dst = dir.join(&format!("out.{fmt}"));
    imgtool::ops::convert::convert(&src, dst.to_str().unwrap(), &o, None)
        .unwrap_or_else(|e| panic!("convert raw -> {fmt}: {e}"));
    // The image may be rounded up (vpc geometry): compare the common part
    // and require zeros beyond.
    let got = library_read_all(&dst, fmt);
    let want = read(&dir.join("src.raw"));
    assert!(got.len() >= want.len());
    assert_bytes_eq("converted data", &want, &got[..want.len()]);
    assert!(got[want.len()..].iter().all(|&b| b == 0));
    let theirs = qemu_raw_of(dir.path(), &format!("out.{fmt}"), fmt);
    assert_bytes_eq("qemu-img reads our conversion", &got, &theirs);
    // qemu-img's conversion the other way, read by us.
    qemu_img_ok(
        dir.path(),
        &["convert", "-f", "raw", "-O", fmt, "src.raw", "q.img"],
    );
    for out_fmt in ["raw", "qcow2"] {
        let o = imgtool::ops::convert::ConvertOptions {
            out_format: out_fmt.into(),
            src_format: Some(fmt.into()),
            ..Default::default()
        };
        let src = vec![dir.join("q.img").to_str().unwrap().to_string()];
        let dst = dir.join(&format!("back.{out_fmt}"));
        imgtool::ops::convert::convert(&src, dst.to_str().unwrap(), &o, None)
            .unwrap_or_else(|e| panic!("convert {fmt} -> {out_fmt}: {e}"));
        assert_qemu_compare_identical(
            dir.path(),
            "q.img",
            &format!("back.{out_fmt}"),
            &["-f", fmt, "-F", out_fmt],
        );
    }
}

/// Open a damaged image through the CLI-free library in a child test
/// process is not possible, so run `qemu-img` for the expectation and the
/// library in a thread with a deadline: it must return (Ok or a clear
/// error), never panic or hang. Returns our error text, if any.
pub fn open_and_read_with_deadline(path: &Path, fmt: &str) -> Result<(), String> {
    let p = path.to_path_buf();
    let fmt = fmt.to_string();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let r = std::panic::catch_unwind(|| {
            let o = OpenOptions {
                format: Some(fmt.clone()),
                ..OpenOptions::read_only()
            };
            let img = Image::open(p.to_str().unwrap(), &o).map_err(|e| e.to_string())?;
            let size = img.size().min(64 * MIB);
            let mut buf = vec![0u8; MIB as usize];
            let mut off = 0;
            while off < size {
                let n = (size - off).min(MIB);
                img.read_at(&mut buf[..n as usize], off)
                    .map_err(|e| e.to_string())?;
                off += n;
            }
            let mut off = 0;
            while off < img.size() {
                let e = img
                    .block_status(off, img.size() - off)
                    .map_err(|e| e.to_string())?;
                off += e.len;
            }
            let _ = ImageInfo::of(&img).to_json();
            Ok(())
        });
        let _ = tx.send(r);
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => panic!("library panicked on damaged {}", path.display()),
        Err(_) => panic!("library hung on damaged {}", path.display()),
    }
}

/// Flip random bytes (and sometimes truncate) inside `regions` of a good
/// image, `rounds` times: every variant must open, read and report block
/// status, or fail with an error, within the deadline and without a panic.
pub fn mutation_rounds(fmt: &str, good: &[u8], regions: &[(usize, usize)], rounds: u64, seed: u64) {
    let dir = TempDir::new(&format!("mutate_{fmt}"));
    let mut r = Rng::new(seed);
    for round in 0..rounds {
        let mut b = good.to_vec();
        let (start, len) = regions[r.below(regions.len() as u64) as usize];
        let len = len.min(b.len().saturating_sub(start));
        if len == 0 {
            continue;
        }
        for _ in 0..1 + r.below(8) {
            let i = start + r.below(len as u64) as usize;
            b[i] = match r.below(4) {
                0 => 0,
                1 => 0xff,
                _ => r.below(256) as u8,
            };
        }
        if r.below(10) == 0 {
            b.truncate(start + r.below(len as u64) as usize);
        }
        let path = dir.join(&format!("m{round}.{fmt}"));
        std::fs::write(&path, &b).unwrap();
        let _ = open_and_read_with_deadline(&path, fmt);
        let _ = std::fs::remove_file(&path);
    }
}
