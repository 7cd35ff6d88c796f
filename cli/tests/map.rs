//! `imgtool map` against `qemu-img map` on the same images: same exit code,
//! stdout (human table and JSON lines) and stderr, on every qcow2 variant,
//! raw files, preallocated and extended-L2 images, chains and ranges.

mod common;

use common::*;
use std::path::Path;

/// `same_as_qemu`, also renaming getopt's `qemu-img map:` prefix.
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

/// Both outputs, a few ranges, on `file`.
fn check_all(dir: &Path, file: &str, fmt: Option<&str>) {
    let size_ranges: &[&[&str]] = &[
        &[],
        &["--start-offset", "4096"],
        &["--start-offset=1000", "--max-length=300000"],
        &["-s", "65536", "-l", "131072"],
        &["--max-length", "1"],
        &["--start-offset", "1M", "--max-length", "1.5M"],
        &["--start-offset", "1G"],
        &["--max-length", "0"],
    ];
    for range in size_ranges {
        for out in ["--output=json", "--output=human"] {
            let mut args = vec!["map", out];
            if let Some(f) = fmt {
                args.extend_from_slice(&["-f", f]);
            }
            args.extend_from_slice(range);
            args.push(file);
            same(dir, &args);
        }
    }
}

#[test]
fn map_qcow2_variants() {
    for v in VARIANTS {
        let dir = TempDir::new(&format!("map_{v}"));
        let b = build_variant(v, dir.path());
        check_all(dir.path(), &b.file, None);
        check_all(dir.path(), &b.file, Some(b.format));
    }
}

#[test]
fn map_raw_files() {
    let dir = TempDir::new("map_raw");
    let d = dir.path();
    qemu_img_ok(d, &["create", "-q", "-f", "raw", "new.raw", "3M"]);
    qemu_img_ok(d, &["create", "-q", "-f", "raw", "holes.raw", "8M"]);
    qemu_io(
        d,
        "raw",
        "holes.raw",
        &[
            "write -P 1 100k 10k".into(),
            "write -P 2 1M 1M".into(),
            "write -P 0 4M 64k".into(),
            "write -P 3 8388096 512".into(),
        ],
    );
    std::fs::write(d.join("odd.raw"), random_bytes(3, 1000)).unwrap();
    std::fs::write(d.join("odd2.raw"), random_bytes(4, 70000)).unwrap();
    std::fs::write(d.join("empty.raw"), b"").unwrap();
    std::fs::write(d.join("mixed.raw"), mixed_raw(5, 2 * MIB)).unwrap();
    for p in ["off", "falloc", "full"] {
        let o = format!("preallocation={p}");
        let f = format!("pre_{p}.raw");
        qemu_img_ok(d, &["create", "-q", "-f", "raw", "-o", &o, &f, "1M"]);
    }
    for f in [
        "new.raw",
        "holes.raw",
        "odd.raw",
        "odd2.raw",
        "empty.raw",
        "mixed.raw",
        "pre_off.raw",
        "pre_falloc.raw",
        "pre_full.raw",
    ] {
        check_all(d, f, None);
        check_all(d, f, Some("raw"));
    }
}

/// cache.direct=on (iotest 253): with O_DIRECT QEMU reports no partial
/// blocks, so data ending at an unaligned EOF covers the whole last block;
/// without it the last byte is a hole of its own.
#[test]
fn map_unaligned_raw_direct() {
    let dir = TempDir::new("map_direct");
    let d = dir.path();
    let size = MIB as usize - 1;
    qemu_img_ok(
        d,
        &["create", "-q", "-f", "raw", "u.raw", &size.to_string()],
    );
    qemu_io(d, "raw", "u.raw", &["write 983040 65535".into()]);
    std::fs::File::options()
        .write(true)
        .open(d.join("u.raw"))
        .unwrap()
        .set_len(size as u64)
        .unwrap();
    for opts in [
        "driver=raw,file.driver=file,file.filename=u.raw,cache.direct=on",
        "driver=raw,file.filename=u.raw,file.cache.direct=on",
        "driver=raw,file.filename=u.raw",
    ] {
        for out in ["--output=json", "--output=human"] {
            same(d, &["map", out, "--image-opts", opts]);
        }
    }
    let js = r#"json:{"driver":"raw","cache":{"direct":true},"file":{"filename":"u.raw"}}"#;
    same(d, &["map", "--output=json", js]);
}

/// Preallocated qcow2: metadata preallocation makes QEMU check the host
/// file (data + zero over holes); falloc/full do not.
#[test]
fn map_qcow2_preallocation() {
    let dir = TempDir::new("map_prealloc");
    let d = dir.path();
    for (i, p) in ["metadata", "falloc", "full"].iter().enumerate() {
        for cs in ["512", "4k", "64k", "2M"] {
            let f = format!("p_{p}_{cs}.qcow2");
            let o = format!("preallocation={p},cluster_size={cs}");
            qemu_img_ok(d, &["create", "-q", "-f", "qcow2", "-o", &o, &f, "5M"]);
            check_all(d, &f, None);
            qemu_io(
                d,
                "qcow2",
                &f,
                &[
                    format!("write -P {} 0 4k", i + 1),
                    "write -P 9 1M 100k".into(),
                    "write -z 2M 64k".into(),
                    "discard 3M 128k".into(),
                ],
            );
            check_all(d, &f, None);
        }
    }
}

/// Extended L2: unallocated subclusters of allocated clusters carry the
/// cluster's host offset; through a backing chain they show the backing.
#[test]
fn map_extended_l2_chain() {
    let dir = TempDir::new("map_ext");
    let d = dir.path();
    let create = |args: &[&str]| qemu_img_ok(d, args);
    create(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "extended_l2=on",
        "e.qcow2",
        "2M",
    ]);
    qemu_io(
        d,
        "qcow2",
        "e.qcow2",
        &[
            "write -P 1 4k 4k".into(),
            "write -P 2 128k 64k".into(),
            "write -z 136k 8k".into(),
            "write -z -u 300k 32k".into(),
            "write -P 3 1M 2k".into(),
            "write -P 3 1040k 2k".into(),
        ],
    );
    create(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "extended_l2=on,cluster_size=128k",
        "-b",
        "e.qcow2",
        "-F",
        "qcow2",
        "e2.qcow2",
        "3M",
    ]);
    qemu_io(
        d,
        "qcow2",
        "e2.qcow2",
        &[
            "write -P 1 64k 4k".into(),
            "write -z 1M 8k".into(),
            "write -P 4 2M 12k".into(),
        ],
    );
    check_all(d, "e.qcow2", None);
    check_all(d, "e2.qcow2", None);
}

/// Zero clusters that keep their host cluster next to ones that do not,
/// and compressed runs (the human table refuses those).
#[test]
fn map_zero_and_compressed_clusters() {
    let dir = TempDir::new("map_zero");
    let d = dir.path();
    qemu_img_ok(d, &["create", "-q", "-f", "qcow2", "z.qcow2", "2M"]);
    qemu_io(
        d,
        "qcow2",
        "z.qcow2",
        &[
            "write -P 1 0 512k".into(),
            "write -z 64k 192k".into(),
            "write -z -u 256k 64k".into(),
            "write -z 320k 64k".into(),
            "write -z 1M 256k".into(),
        ],
    );
    check_all(d, "z.qcow2", None);
    std::fs::write(d.join("src.raw"), mixed_raw(9, 2 * MIB)).unwrap();
    qemu_img_ok(d, &["convert", "-c", "-O", "qcow2", "src.raw", "c.qcow2"]);
    check_all(d, "c.qcow2", None);
}

#[test]
fn map_backing_in_subdirectory() {
    let dir = TempDir::new("map_sub");
    let d = dir.path();
    let sub = dir.sub("sub");
    qemu_img_ok(d, &["create", "-q", "-f", "qcow2", "base.qcow2", "1M"]);
    qemu_io(d, "qcow2", "base.qcow2", &["write -P 7 0 64k".into()]);
    qemu_img_ok(
        &sub,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "../base.qcow2",
            "-F",
            "qcow2",
            "top.qcow2",
        ],
    );
    qemu_io(&sub, "qcow2", "top.qcow2", &["write -P 8 128k 64k".into()]);
    check_all(d, "sub/top.qcow2", None);
    check_all(&sub, "top.qcow2", None);
}

#[test]
fn map_options_and_errors() {
    let dir = TempDir::new("map_opts");
    let d = dir.path();
    qemu_img_ok(d, &["create", "-q", "-f", "raw", "r.raw", "1M"]);
    qemu_img_ok(d, &["create", "-q", "-f", "qcow2", "q.qcow2", "1M"]);
    std::fs::write(d.join("text.txt"), b"hello").unwrap();
    let cases: &[&[&str]] = &[
        &["map"],
        &["map", "r.raw", "r.raw"],
        &["map", "nonexistent"],
        &["map", "--output=x", "r.raw"],
        &["map", "--output=x"],
        &["map", "--output", "JSON", "r.raw"],
        &["map", "-f", "qcow2", "r.raw"],
        &["map", "-f", "foo", "r.raw"],
        &["map", "--image-opts", "-f", "raw", "r.raw"],
        &["map", "--image-opts", "driver=raw,file.filename=r.raw"],
        &["map", "--image-opts", "driver=qcow2,file.filename=q.qcow2"],
        &["map", "--image-opts", "r.raw"],
        &["map", "--object", "foo", "r.raw"],
        &["map", "--object", "secret,id=s,data=x", "r.raw"],
        &["map", "-s", "1x", "--output=y", "r.raw"],
        &["map", "--output=y", "-s", "1x", "r.raw"],
        &["map", "--start-offset=-1", "r.raw"],
        &["map", "--max-length=1x", "r.raw"],
        &["map", "--max-length=9223372036854775808", "r.raw"],
        &["map", "--start-offset=9223372036854775807", "r.raw"],
        &["map", "-s", "1", "-l", "9223372036854775807", "r.raw"],
        &[
            "map",
            "-s",
            "0x100",
            "-l",
            "0x200",
            "--output=json",
            "r.raw",
        ],
        &["map", "-U", "q.qcow2"],
        &["map", "--force-share", "--output=json", "q.qcow2"],
        &["map", "--o", "json", "r.raw"],
        &["map", "--f", "raw", "r.raw"],
        &["map", "-x", "r.raw"],
        &["map", "-o", "r.raw"],
        &["map", "--help"],
        &["map", "-h"],
        &["map", "text.txt"],
        &["map", "--output=json", "text.txt"],
    ];
    for c in cases {
        same(d, c);
    }
}

/// Random images: random geometry and random qemu-io writes, zeroes (with
/// and without unmap), discards and compressed writes, some over a backing
/// file; `map` must agree with qemu-img on every one.
#[test]
fn map_random_images() {
    let dir = TempDir::new("map_random");
    let d = dir.path();
    std::fs::write(d.join("rnd.bin"), random_bytes(77, 2 * MIB as usize)).unwrap();
    std::fs::write(d.join("txt.bin"), text_bytes(78, 2 * MIB as usize)).unwrap();
    let mut r = Rng::new(2024);
    for i in 0..16 {
        let cs = [4096u64, 16384, 65536, 131072][r.below(4) as usize];
        let ext = cs >= 16384 && r.below(2) == 0;
        let size = (1 + r.below(12)) * MIB + r.below(4) * 512;
        let opts = format!(
            "cluster_size={cs},extended_l2={}",
            if ext { "on" } else { "off" }
        );
        let base = format!("base{i}.qcow2");
        let top = format!("top{i}.qcow2");
        let s = size.to_string();
        qemu_img_ok(d, &["create", "-q", "-f", "qcow2", "-o", &opts, &base, &s]);
        let mut ops = Vec::new();
        for _ in 0..(10 + r.below(20)) {
            let off = r.below(size) & !511;
            let len = (1 + r.below(256 * KIB.min(size - off) / 512)) * 512;
            let len = len.min(size - off);
            ops.push(match r.below(6) {
                0 => format!("write -s rnd.bin {off} {len}"),
                1 => format!("write -P {} {off} {len}", r.below(256)),
                2 => format!("write -z {off} {len}"),
                3 => format!("write -z -u {off} {len}"),
                4 => format!("discard {off} {len}"),
                _ => {
                    // Compressed writes take whole, unallocated clusters.
                    let c = (off / cs) * cs;
                    let n = cs.min(size - c);
                    if n < cs {
                        format!("write -s txt.bin {off} {len}")
                    } else {
                        format!("discard {c} {cs}\nwrite -c -s txt.bin {c} {cs}")
                    }
                }
            });
        }
        let ops: Vec<String> = ops
            .iter()
            .flat_map(|o| o.split('\n').map(str::to_string).collect::<Vec<_>>())
            .collect();
        qemu_io(d, "qcow2", &base, &ops);
        let file = if r.below(2) == 0 {
            qemu_img_ok(
                d,
                &[
                    "create", "-q", "-f", "qcow2", "-o", &opts, "-b", &base, "-F", "qcow2", &top,
                ],
            );
            let off = r.below(size) & !511;
            let len = (size - off).min(300 * KIB);
            qemu_io(
                d,
                "qcow2",
                &top,
                &[
                    format!("write -P 9 {off} {len}"),
                    format!("write -z {} 64k", (size / 2) & !511),
                ],
            );
            top
        } else {
            base
        };
        for out in ["--output=json", "--output=human"] {
            same(d, &["map", out, &file]);
        }
        same(
            d,
            &[
                "map",
                "--output=json",
                "--start-offset=3000",
                "--max-length=1M",
                &file,
            ],
        );
    }
}

#[test]
fn map_without_backing_by_option() {
    // `backing: null` (JSON) or `backing=` (options, deprecated, warned
    // about) opens no backing file: the chain below reads as zeros.
    let dir = TempDir::new("map_nobacking");
    let d = dir.path();
    qemu_img_ok(d, &["create", "-q", "-f", "qcow2", "b.qcow2", "1M"]);
    qemu_io(d, "qcow2", "b.qcow2", &["write -P 1 0 512k".into()]);
    qemu_img_ok(
        d,
        &[
            "create", "-q", "-f", "qcow2", "-b", "b.qcow2", "-F", "qcow2", "t.qcow2",
        ],
    );
    qemu_io(d, "qcow2", "t.qcow2", &["write -P 2 256k 64k".into()]);
    for out in ["--output=json", "--output=human"] {
        same(
            d,
            &[
                "map",
                out,
                r#"json:{"driver":"qcow2","file":{"filename":"t.qcow2"},"backing":null}"#,
            ],
        );
        same(
            d,
            &[
                "map",
                out,
                "--image-opts",
                "driver=qcow2,file.filename=t.qcow2,backing=",
            ],
        );
    }
}

/// raw's `offset` and `size` options (--image-opts, json:): the image is a
/// window of the file, named by a `json:` tree; bad windows are refused in
/// raw's words, and a fixed size cannot be resized.
#[test]
fn raw_offset_size_window() {
    let dir = TempDir::new("raw_window");
    let d = dir.path();
    qemu_img_ok(d, &["create", "-q", "-f", "raw", "w.raw", "1M"]);
    qemu_io(
        d,
        "raw",
        "w.raw",
        &["write -P 0x11 0 64k".into(), "write -P 0x22 64k 64k".into()],
    );
    let window = "driver=raw,offset=65536,size=131072,file.filename=w.raw";
    for args in [
        &["info", "--image-opts", window][..],
        &["info", "--output=json", "--image-opts", window],
        &["map", "--image-opts", window],
        &["map", "--output=json", "--image-opts", window],
        &["measure", "-O", "qcow2", "--image-opts", window],
        &[
            "info",
            "--image-opts",
            "driver=raw,offset=65537,file.filename=w.raw",
        ],
        &[
            "info",
            "--image-opts",
            "driver=raw,offset=64k,file.filename=w.raw",
        ],
        &["info", "--image-opts", "offset=512,file.filename=w.raw"],
        &[
            "info",
            "--image-opts",
            "driver=raw,size=1000,file.filename=w.raw",
        ],
        &[
            "info",
            "--image-opts",
            "driver=raw,offset=2M,file.filename=w.raw",
        ],
        &[
            "info",
            "--image-opts",
            "driver=raw,size=2M,file.filename=w.raw",
        ],
        &[
            "info",
            "--image-opts",
            "driver=raw,offset=foo,file.filename=w.raw",
        ],
        &[
            "info",
            r#"json:{"driver":"raw","offset":65536,"file":{"filename":"w.raw"}}"#,
        ],
        &[
            "info",
            r#"json:{"driver":"raw","offset":"64k","size":65536,"file":{"filename":"w.raw"}}"#,
        ],
        &[
            "compare",
            "--image-opts",
            "driver=raw,offset=65536,size=65536,file.filename=w.raw",
            "driver=raw,size=65536,file.filename=w.raw",
        ],
        &["resize", "--image-opts", window, "1M"],
    ] {
        same(d, args);
    }
    let src = "driver=raw,offset=65536,size=65536,file.filename=w.raw";
    qemu_img_ok(d, &["convert", "--image-opts", src, "-O", "raw", "q.raw"]);
    let o = imgtool(d, &["convert", "--image-opts", src, "-O", "raw", "o.raw"]);
    assert!(o.ok(), "{}", o.describe());
    assert_bytes_eq(
        "window converted",
        &read(&d.join("q.raw")),
        &read(&d.join("o.raw")),
    );
}
