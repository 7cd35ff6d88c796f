//! Behaviour QEMU's own qcow2 iotests rely on, checked against qemu-img on
//! identical inputs: `json:{...}` filenames, fully allocated compressed
//! converts, zero clusters written by `convert -n`, and more.

mod common;

use common::*;
use std::path::Path;

fn io(dir: &Path, file: &str, cmds: &[&str]) {
    let cmds: Vec<String> = cmds.iter().map(|c| c.to_string()).collect();
    qemu_io(dir, "qcow2", file, &cmds);
}

/// Run `args` with both tools on two copies of `file`, so that a command
/// that writes gets its own input; outcome and resulting map must match.
fn same_on_copies(dir: &Path, file: &str, prep: impl Fn(&Path, &str), args: &[&str]) {
    let q = dir.join("q");
    let o = dir.join("o");
    for d in [&q, &o] {
        std::fs::create_dir_all(d).unwrap();
        prep(d, file);
    }
    let qo = qemu_img(&q, args);
    let oo = imgtool(&o, args);
    assert_outcome_matches(&qo, &oo);
    for f in std::fs::read_dir(&q).unwrap() {
        let name = f.unwrap().file_name().into_string().unwrap();
        let map = ["map", "--output=json", name.as_str()];
        assert_eq!(
            qemu_img_ok(&q, &map),
            qemu_img_ok(&o, &map),
            "map of {name} after {args:?}"
        );
    }
}

/// Like [`same_on_copies`] for operations whose host layout may differ
/// from qemu-img's: only the outcome is compared here.
fn same_outcome_on_copies(dir: &Path, file: &str, prep: impl Fn(&Path, &str), args: &[&str]) {
    let q = dir.join("q");
    let o = dir.join("o");
    for d in [&q, &o] {
        std::fs::create_dir_all(d).unwrap();
        prep(d, file);
    }
    assert_outcome_matches(&qemu_img(&q, args), &imgtool(&o, args));
}

#[test]
fn json_filenames() {
    let dir = TempDir::new("iotq-json");
    let d = dir.path();
    qemu_img_ok(d, &["create", "-f", "qcow2", "b.qcow2", "64M"]);
    qemu_img_ok(
        d,
        &[
            "create", "-f", "qcow2", "-b", "b.qcow2", "-F", "qcow2", "t.qcow2",
        ],
    );
    io(d, "t.qcow2", &["write -P 0x11 0 64k"]);
    let names = [
        r#"json:{"driver":"qcow2","file.filename":"t.qcow2"}"#,
        r#"json:{'driver':'qcow2','file':{'driver':'file','filename':'t.qcow2'}}"#,
        r#"json:{"file":{"filename":"t.qcow2"}}"#,
        r#"json:{"driver":"qcow2","file.filename":"t.qcow2","l2-cache-size":"1M","cache-clean-interval":0}"#,
        r#"json:{"driver":"raw","file.filename":"t.qcow2"}"#,
        // Errors: syntax, not an object, unknown option, missing file,
        // a node reference, no file at all.
        r#"json:{"driver":"qcow2""#,
        r#"json:{"driver":"qcow2"} x"#,
        "json:[1]",
        r#"json:{"driver":"qcow2","foo":"1","file.filename":"t.qcow2"}"#,
        r#"json:{"driver":"qcow2","file":{"driver":"file","filename":"nope"}}"#,
        r#"json:{"driver":"qcow2","file":"node0"}"#,
        r#"json:{"driver":"qcow2"}"#,
    ];
    for n in names {
        same_as_qemu(d, &["info", n]);
        same_as_qemu(d, &["info", "--output=json", n]);
        same_as_qemu(d, &["check", n]);
        same_as_qemu(d, &["check", "--output=json", n]);
        same_as_qemu(d, &["map", "--output=json", n]);
        same_as_qemu(d, &["compare", n, "t.qcow2"]);
    }
    same_as_qemu(d, &["info", "--backing-chain", names[0]]);
    // --image-opts takes qcow2's runtime options too.
    same_as_qemu(
        d,
        &[
            "info",
            "--image-opts",
            "driver=qcow2,file.filename=t.qcow2,l2-cache-entry-size=4096",
        ],
    );
}

#[test]
fn convert_compressed_fully_allocated() {
    let dir = TempDir::new("iotq-convc");
    let prep = |d: &Path, _: &str| {
        qemu_img_ok(d, &["create", "-f", "qcow2", "s.qcow2", "8M"]);
        io(d, "s.qcow2", &["write -P 0x22 0 1M", "write -z 2M 1M"]);
    };
    for sparse in ["0", "4k"] {
        same_on_copies(
            dir.path(),
            "s.qcow2",
            prep,
            &[
                "convert", "-c", "-S", sparse, "-O", "qcow2", "s.qcow2", "d.qcow2",
            ],
        );
    }
}

#[test]
fn convert_n_writes_zero_clusters() {
    let dir = TempDir::new("iotq-convn");
    for compat in ["1.1", "0.10"] {
        for backing in [false, true] {
            let prep = |d: &Path, _: &str| {
                qemu_img_ok(d, &["create", "-f", "qcow2", "s.qcow2", "8M"]);
                io(d, "s.qcow2", &["write -P 0x22 1M 64k"]);
                qemu_img_ok(d, &["create", "-f", "qcow2", "b.qcow2", "8M"]);
                let o = format!("compat={compat}");
                let mut args = vec!["create", "-f", "qcow2", "-o", &o];
                if backing {
                    args.extend_from_slice(&["-b", "b.qcow2", "-F", "qcow2"]);
                }
                args.extend_from_slice(&["d.qcow2", "8M"]);
                qemu_img_ok(d, &args);
            };
            same_on_copies(
                &dir.path().join(format!("{compat}-{backing}")),
                "s.qcow2",
                prep,
                &["convert", "-n", "-O", "qcow2", "s.qcow2", "d.qcow2"],
            );
        }
    }
}

fn patch(path: &Path, off: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, off).unwrap();
}

fn header_length(path: &Path) -> u64 {
    let b = std::fs::read(path).unwrap();
    u32::from_be_bytes([b[100], b[101], b[102], b[103]]) as u64
}

#[test]
fn unknown_feature_messages() {
    let dir = TempDir::new("iotq-feat");
    let d = dir.path();
    let img = d.join("t.qcow2");
    // (incompatible bits, feature table to write: None keeps QEMU's)
    let short_63: &[u8] = b"\x00\x3fTest feature";
    let two: Vec<u8> = {
        let mut t = vec![0u8; 96];
        t[0] = 0;
        t[1] = 62;
        t[2..7].copy_from_slice(b"test2");
        t[48] = 0;
        t[49] = 63;
        t[50..55].copy_from_slice(b"test3");
        t
    };
    let cases: Vec<(u64, Option<&[u8]>)> = vec![
        (1 << 63, None),
        (0b111 << 61, None),
        (1 << 63, Some(short_63)),
        (0b111 << 61, Some(short_63)),
        (0b101 << 61, Some(&two)),
        (0b111 << 61, Some(&two)),
    ];
    for (bits, table) in cases {
        let _ = std::fs::remove_file(&img);
        qemu_img_ok(d, &["create", "-f", "qcow2", "t.qcow2", "64M"]);
        patch(&img, 72, &bits.to_be_bytes());
        if let Some(t) = table {
            let mut ext = Vec::new();
            ext.extend_from_slice(&0x6803_f857u32.to_be_bytes());
            ext.extend_from_slice(&(t.len() as u32).to_be_bytes());
            ext.extend_from_slice(t);
            ext.resize(8 + t.len().div_ceil(8) * 8, 0);
            ext.extend_from_slice(&[0u8; 8]);
            patch(&img, header_length(&img), &ext);
        }
        same_as_qemu(d, &["info", "t.qcow2"]);
    }
}

#[test]
fn unknown_autoclear_bits_cleared_by_writable_open() {
    let dir = TempDir::new("iotq-autoclear");
    let prep = |d: &Path, _: &str| {
        qemu_img_ok(d, &["create", "-f", "qcow2", "t.qcow2", "64M"]);
        patch(&d.join("t.qcow2"), 88, &(1u64 << 63).to_be_bytes());
    };
    same_on_copies(
        dir.path(),
        "t.qcow2",
        prep,
        &["check", "-r", "all", "t.qcow2"],
    );
    let (q, o) = (dir.path().join("q/t.qcow2"), dir.path().join("o/t.qcow2"));
    assert_eq!(
        std::fs::read(q).unwrap()[88..96],
        std::fs::read(o).unwrap()[88..96],
        "autoclear field after check -r"
    );
}

#[test]
fn rebase_unsafe_accepts_any_qemu_driver_as_backing_format() {
    let dir = TempDir::new("iotq-rebasefmt");
    for fmt in ["host_device", "file", "nbd", "bogus", "raw"] {
        let d = dir.path().join(fmt);
        let (q, o) = (d.join("q"), d.join("o"));
        for p in [&q, &o] {
            std::fs::create_dir_all(p).unwrap();
            qemu_img_ok(p, &["create", "-f", "qcow2", "t.qcow2", "1M"]);
        }
        let args = ["rebase", "-u", "-b", "/some/path", "-F", fmt, "t.qcow2"];
        assert_outcome_matches(&qemu_img(&q, &args), &imgtool(&o, &args));
        let info = ["info", "--output=json", "t.qcow2"];
        assert_eq!(qemu_img_ok(&q, &info), qemu_img_ok(&o, &info));
    }
}

/// A lazy-refcounts image left dirty by a crash (used clusters with
/// refcount 0), in `d/t.qcow2`.
fn dirty_image(d: &Path, opts: &str) {
    qemu_img_ok(d, &["create", "-f", "qcow2", "-o", opts, "t.qcow2", "64M"]);
    let cmds = vec![
        "write -P 0x2a 0 128k".to_string(),
        "write -P 0x2b 32M 64k".to_string(),
        "flush".to_string(),
    ];
    qemu_io_then_abort(d, "qcow2", "t.qcow2", &cmds);
}

#[test]
fn refcount_rebuild_places_structures_as_qemu() {
    let dir = TempDir::new("iotq-rebuild");
    for opts in [
        "compat=1.1,lazy_refcounts=on",
        "compat=1.1,lazy_refcounts=on,cluster_size=4k",
        "compat=1.1,lazy_refcounts=on,refcount_bits=1",
        "compat=1.1,lazy_refcounts=on,refcount_bits=64",
    ] {
        let base = dir.path().join(opts.replace([',', '='], "_"));
        for (i, args) in [
            &["check", "-r", "all", "t.qcow2"][..],
            &["check", "-r", "all", "--output=json", "t.qcow2"][..],
            // Opening the dirty image writable repairs it, loudly.
            &["amend", "-o", "compat=0.10", "t.qcow2"][..],
        ]
        .iter()
        .enumerate()
        {
            let d = base.join(i.to_string());
            same_on_copies(&d, "t.qcow2", |d, _| dirty_image(d, opts), args);
            let head = |p: &Path| std::fs::read(p.join("t.qcow2")).unwrap()[..104].to_vec();
            assert_eq!(
                head(&d.join("q")),
                head(&d.join("o")),
                "header after {args:?}"
            );
            same_as_qemu(&d.join("o"), &["check", "t.qcow2"]);
        }
    }
}

#[test]
fn amend_downgrade_progress_per_l1_entry() {
    let dir = TempDir::new("iotq-amendp");
    for snapshot in [false, true] {
        let d = dir.path().join(snapshot.to_string());
        let (q, o) = (d.join("q"), d.join("o"));
        for p in [&q, &o] {
            std::fs::create_dir_all(p).unwrap();
            qemu_img_ok(p, &["create", "-f", "qcow2", "b.qcow2", "4G"]);
            qemu_img_ok(
                p,
                &[
                    "create", "-f", "qcow2", "-b", "b.qcow2", "-F", "qcow2", "t.qcow2", "4G",
                ],
            );
            io(p, "t.qcow2", &["write -z 0 64k", "write -z 3G 64k"]);
            if snapshot {
                qemu_img_ok(p, &["snapshot", "-c", "foo", "t.qcow2"]);
            }
        }
        // (Where the expanded zero clusters land in the host file differs:
        // allocated in QEMU, sparse here; the guest content is the same.)
        let args = ["amend", "-p", "-o", "compat=0.10", "t.qcow2"];
        assert_outcome_matches(&qemu_img(&q, &args), &imgtool(&o, &args));
        let qt = q.join("t.qcow2");
        let ot = o.join("t.qcow2");
        qemu_img_ok(&d, &["compare", qt.to_str().unwrap(), ot.to_str().unwrap()]);
        same_as_qemu(&o, &["check", "t.qcow2"]);
    }
}

#[test]
fn hexadecimal_sizes() {
    let dir = TempDir::new("iotq-hex");
    let d = dir.path();
    for v in ["0x10000", "0X200", "0x1000k", "0x", "0x1e", "0x1.5", "0xg"] {
        let o = format!("cluster_size={v}");
        same_as_qemu(d, &["create", "-f", "qcow2", "-o", &o, "x.qcow2", "2M"]);
        same_as_qemu(d, &["create", "-f", "raw", "x.raw", v]);
    }
}

#[test]
fn file_protocol_prefix() {
    let dir = TempDir::new("iotq-fileproto");
    let d = dir.path();
    let abs = format!("file:{}/c:d.qcow2", d.display());
    // Each create runs on a name the other tool has not created yet.
    let (q, o) = (
        qemu_img(d, &["create", "-f", "qcow2", "file:a:b.qcow2", "1M"]),
        {
            std::fs::rename(d.join("a:b.qcow2"), d.join("q.qcow2")).unwrap();
            imgtool(d, &["create", "-f", "qcow2", "file:a:b.qcow2", "1M"])
        },
    );
    assert_outcome_matches(&q, &o);
    same_as_qemu(d, &["compare", "q.qcow2", "file:a:b.qcow2"]);
    qemu_img_ok(d, &["create", "-f", "qcow2", "base.qcow2", "1M"]);
    qemu_img_ok(
        d,
        &[
            "create",
            "-f",
            "qcow2",
            "-b",
            "base.qcow2",
            "-F",
            "qcow2",
            "file:image:top.qcow2",
        ],
    );
    for n in [
        "file:a:b.qcow2",
        "file:image:top.qcow2",
        &abs,
        "file:nope.qcow2",
    ] {
        same_as_qemu(d, &["info", n]);
        same_as_qemu(d, &["info", "--output=json", n]);
        same_as_qemu(d, &["check", n]);
        same_as_qemu(d, &["map", n]);
    }
    let top = format!("file:{}/t2.qcow2", d.display());
    for b in ["base.qcow2", "nope.qcow2"] {
        let _ = std::fs::remove_file(d.join("t2.qcow2"));
        same_as_qemu(d, &["create", "-f", "qcow2", "-b", b, "-F", "qcow2", &top]);
    }
}

#[test]
fn too_large_for_the_l1_table() {
    let dir = TempDir::new("iotq-big");
    let d = dir.path();
    for (opts, size) in [
        ("", "1E"),
        ("cluster_size=512", "1P"),
        ("cluster_size=2M", "1E"),
    ] {
        let _ = std::fs::remove_file(d.join("big.qcow2"));
        let mut args = vec!["create", "-f", "qcow2"];
        if !opts.is_empty() {
            args.extend_from_slice(&["-o", opts]);
        }
        args.extend_from_slice(&["big.qcow2", size]);
        same_as_qemu(d, &args);
    }
    qemu_img_ok(d, &["create", "-f", "qcow2", "s.qcow2", "1M"]);
    same_as_qemu(d, &["resize", "s.qcow2", "1E"]);
}

#[test]
fn compression_type_and_its_incompatible_bit_must_agree() {
    let dir = TempDir::new("iotq-ctype");
    let d = dir.path();
    let img = d.join("t.qcow2");
    // (compression type, incompatible bits, compression-type byte override)
    for (ct, bits, byte) in [
        ("zlib", 1u64 << 3, None),
        ("zstd", 0, None),
        ("zstd", 1 << 3, Some(5u8)),
        ("zlib", 0, None),
    ] {
        let _ = std::fs::remove_file(&img);
        let o = format!("compression_type={ct}");
        qemu_img_ok(d, &["create", "-f", "qcow2", "-o", &o, "t.qcow2", "1M"]);
        patch(&img, 72, &bits.to_be_bytes());
        if let Some(b) = byte {
            patch(&img, 104, &[b]);
        }
        same_as_qemu(d, &["info", "t.qcow2"]);
        same_as_qemu(d, &["check", "t.qcow2"]);
    }
}

/// iotest 061: `data-file.filename` overrides the header's data file, info
/// never opens the data file, and a cleared name is required at open.
#[test]
fn data_file_open_option() {
    let dir = TempDir::new("iotq-datafile");
    let d = dir.path();
    qemu_img_ok(
        d,
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "data_file=t.data",
            "t.qcow2",
            "1M",
        ],
    );
    io(d, "t.qcow2", &["write -P 0x33 0 64k"]);
    qemu_img_ok(d, &["create", "-f", "qcow2", "p.qcow2", "1M"]);
    qemu_img_ok(d, &["amend", "-o", "data_file=foo", "t.qcow2"]);
    let opts = "data-file.filename=t.data,file.filename=t.qcow2";
    for args in [
        vec!["info", "t.qcow2"],
        vec!["info", "--image-opts", opts],
        vec!["check", "t.qcow2"],
        vec!["check", "--image-opts", opts],
        vec!["map", "--output=json", "--image-opts", opts],
        vec![
            "check",
            "--image-opts",
            "driver=qcow2,data-file.driver=file,data-file.filename=t.data,file.filename=t.qcow2",
        ],
        // Only images with a data file take one.
        vec![
            "check",
            "--image-opts",
            "data-file.filename=t.data,file.filename=p.qcow2",
        ],
    ] {
        same_as_qemu(d, &args);
    }
    // Clearing the name through the option: the image then needs it.
    same_outcome_on_copies(
        d,
        "t.qcow2",
        |c: &Path, f: &str| {
            std::fs::copy(d.join(f), c.join(f)).unwrap();
            std::fs::copy(d.join("t.data"), c.join("t.data")).unwrap();
        },
        &["amend", "-o", "data_file=", "--image-opts", opts],
    );
    for c in ["q", "o"] {
        let c = d.join(c);
        same_as_qemu(&c, &["info", "t.qcow2"]);
        same_as_qemu(&c, &["check", "t.qcow2"]);
        same_as_qemu(&c, &["check", "--image-opts", opts]);
    }
}

const SECRET0: &str = "secret,id=sec0,data=123456";
const SECRET1: &str = "secret,id=sec1,data=654321";

fn enc_opts(file: &str, sec: &str) -> String {
    format!("driver=qcow2,file.filename={file},encrypt.key-secret={sec}")
}

/// iotests 188, 189, 198: an encrypted image with preallocated metadata
/// does not read as zeros (convert writes them); create opens an encrypted
/// backing file without its key; commit takes `backing.*` options and
/// keeps both keys; info names a keyed node by its json: tree.
#[test]
fn encrypted_chain_operations() {
    let dir = TempDir::new("iotq-encchain");
    let d = dir.path();
    let luks =
        |sec: &str| format!("encrypt.format=luks,encrypt.key-secret={sec},encrypt.iter-time=10");
    let o0 = luks("sec0");
    qemu_img_ok(d, &["create", "-f", "qcow2", "e.qcow2", "4M"]);
    let prep = |c: &Path, f: &str| {
        std::fs::copy(d.join(f), c.join(f)).unwrap();
    };
    let o_pre = format!("{o0},preallocation=metadata");
    same_outcome_on_copies(
        d,
        "e.qcow2",
        prep,
        &[
            "convert", "--object", SECRET0, "-O", "qcow2", "-o", &o_pre, "e.qcow2", "d.qcow2",
        ],
    );
    for c in ["q", "o"] {
        same_as_qemu(
            &d.join(c),
            &[
                "compare",
                "--object",
                SECRET0,
                "-F",
                "qcow2",
                "e.qcow2",
                r#"json:{"driver":"qcow2","file.filename":"d.qcow2","encrypt.key-secret":"sec0"}"#,
            ],
        );
    }

    // A base with sec0, an overlay with sec1 made from it.
    let o1 = luks("sec1");
    let prep_chain = |c: &Path, _: &str| {
        qemu_img_ok(
            c,
            &[
                "create", "--object", SECRET0, "-f", "qcow2", "-o", &o0, "b.qcow2", "4M",
            ],
        );
    };
    same_outcome_on_copies(
        d,
        "b.qcow2",
        prep_chain,
        &[
            "create", "--object", SECRET1, "-f", "qcow2", "-o", &o1, "-b", "b.qcow2", "-F",
            "qcow2", "t.qcow2",
        ],
    );
    for c in ["q", "o"] {
        let c = d.join(c);
        for (f, s) in [("b.qcow2", "sec0"), ("t.qcow2", "sec1")] {
            let opts = enc_opts(f, s);
            for args in [
                vec![
                    "info",
                    "--object",
                    SECRET0,
                    "--object",
                    SECRET1,
                    "--image-opts",
                    &opts,
                ],
                vec![
                    "info",
                    "--output=json",
                    "--object",
                    SECRET0,
                    "--object",
                    SECRET1,
                    "--image-opts",
                    &opts,
                ],
            ] {
                same_as_qemu(&c, &args);
            }
        }
        let luks_opts = "driver=luks,file.filename=l.luks,key-secret=sec0";
        qemu_img_ok(
            &c,
            &[
                "create",
                "--object",
                SECRET0,
                "-f",
                "luks",
                "-o",
                "key-secret=sec0,iter-time=10",
                "l.luks",
                "1M",
            ],
        );
        same_as_qemu(
            &c,
            &["info", "--object", SECRET0, "--image-opts", luks_opts],
        );
    }
    // Data in the overlay, committed into the base with both keys given.
    let commit_opts = format!(
        "{},backing.driver=qcow2,backing.file.filename=b.qcow2,backing.encrypt.key-secret=sec0",
        enc_opts("t.qcow2", "sec1")
    );
    let cdir = d.join("commit");
    same_outcome_on_copies(
        &cdir,
        "t.qcow2",
        |c: &Path, _: &str| {
            qemu_img_ok(
                c,
                &[
                    "create", "--object", SECRET0, "-f", "qcow2", "-o", &o0, "b.qcow2", "4M",
                ],
            );
            qemu_img_ok(
                c,
                &[
                    "create", "--object", SECRET1, "-f", "qcow2", "-o", &o1, "-b", "b.qcow2", "-F",
                    "qcow2", "t.qcow2",
                ],
            );
            let mut cmd = std::process::Command::new("qemu-io");
            cmd.current_dir(c).args([
                "--object",
                SECRET0,
                "--object",
                SECRET1,
                "-c",
                "write -P 0x5a 0 1M",
                "--image-opts",
                &commit_opts,
            ]);
            assert!(run_with_timeout(&mut cmd, DEFAULT_TIMEOUT).ok());
        },
        &[
            "commit",
            "--object",
            SECRET0,
            "--object",
            SECRET1,
            "--image-opts",
            &commit_opts,
        ],
    );
    let base_raw = |sub: &str| {
        qemu_img_ok(
            &cdir.join(sub),
            &[
                "convert",
                "--object",
                SECRET0,
                "--image-opts",
                &enc_opts("b.qcow2", "sec0"),
                "-O",
                "raw",
                "b.raw",
            ],
        )
    };
    assert_eq!(base_raw("q"), base_raw("o"));
    assert_bytes_eq(
        "committed base",
        &read(&cdir.join("q/b.raw")),
        &read(&cdir.join("o/b.raw")),
    );
}

/// iotest 112: `-o` numbers are read as strtoull reads them, and check
/// reports references past the refcount width as overflows.
#[test]
fn refcount_width_numbers_and_overflow() {
    let dir = TempDir::new("iotq-rcbits");
    let d = dir.path();
    for v in [
        "-1",
        "0",
        "0x10",
        "010",
        "08",
        "16x",
        "99999999999999999999",
        " 16",
    ] {
        let o = format!("refcount_bits={v}");
        let _ = std::fs::remove_file(d.join("n.qcow2"));
        let _ = std::fs::remove_file(d.join("n2.qcow2"));
        let q = qemu_img(d, &["create", "-f", "qcow2", "-o", &o, "n.qcow2", "64M"]);
        let ours = imgtool(d, &["create", "-f", "qcow2", "-o", &o, "n2.qcow2", "64M"]);
        assert_eq!(q.code, ours.code, "{o}");
        assert_eq!(
            as_imgtool(&q.stderr.replace("n.qcow2", "n2.qcow2")),
            ours.stderr,
            "{o}"
        );
        assert_eq!(q.stdout.replace("n.qcow2", "n2.qcow2"), ours.stdout, "{o}");
    }
    // Two references to one cluster with 1-bit refcounts (a snapshot).
    let prep = |c: &Path, f: &str| {
        qemu_img_ok(
            c,
            &["create", "-f", "qcow2", "-o", "refcount_bits=1", f, "64M"],
        );
        io(c, f, &["write 0 64k"]);
        let mut cmd = std::process::Command::new("qemu-img");
        cmd.current_dir(c).args(["snapshot", "-c", "foo", f]);
        let _ = run_with_timeout(&mut cmd, DEFAULT_TIMEOUT);
    };
    same_outcome_on_copies(d, "r.qcow2", prep, &["check", "r.qcow2"]);
}

/// iotest 271: `check -r all` turns an unaligned preallocated (zero)
/// entry into a plain zero one; one holding data stays an error.
#[test]
fn check_repairs_unaligned_zero_entry() {
    let dir = TempDir::new("iotq-unaligned");
    for (tag, zero) in [("data", false), ("zero", true)] {
        for extended in ["on", "off"] {
            let prep = move |c: &Path, f: &str| {
                qemu_img_ok(c, &["create", "-f", "raw", "b.raw", "128k"]);
                let o = format!("extended_l2={extended}");
                qemu_img_ok(
                    c,
                    &[
                        "create", "-f", "qcow2", "-o", &o, "-F", "raw", "-b", "b.raw", f,
                    ],
                );
                io(c, f, &["write -q -P 1 4k 2k"]);
                if zero {
                    io(c, f, &["write -q -z 4k 2k"]);
                    if extended == "off" {
                        io(c, f, &["write -q -z 0 64k"]);
                    }
                }
                // The L2 table is the cluster after the L1 table (0x40000).
                patch(&c.join(f), 0x40000 + 6, b"\x02");
            };
            let sub = dir.path().join(format!("{tag}-{extended}"));
            same_outcome_on_copies(&sub, "t.qcow2", prep, &["check", "-r", "all", "t.qcow2"]);
            for c in ["q", "o"] {
                same_as_qemu(&sub.join(c), &["check", "t.qcow2"]);
            }
        }
    }
}

/// iotest 250: shrinking discards the clusters it frees, so the file
/// takes as little space as qemu-img leaves it.
#[test]
fn shrink_discards_freed_clusters() {
    let dir = TempDir::new("iotq-shrinkdisc");
    let prep = |c: &Path, f: &str| {
        qemu_img_ok(
            c,
            &[
                "create",
                "-f",
                "qcow2",
                "-o",
                "cluster_size=1M,preallocation=metadata",
                f,
                "300M",
            ],
        );
        io(
            c,
            f,
            &[
                "discard 0 10M",
                "discard 290M 10M",
                "write 290M 10M",
                "write 0 10M",
            ],
        );
    };
    same_on_copies(
        dir.path(),
        "s.qcow2",
        prep,
        &["resize", "--shrink", "s.qcow2", "5M"],
    );
    let blocks = |c: &str| {
        use std::os::unix::fs::MetadataExt;
        let p = dir.path().join(c).join("s.qcow2");
        let m = std::fs::metadata(p).unwrap();
        (m.len(), m.blocks() / 8)
    };
    let (q, o) = (blocks("q"), blocks("o"));
    assert_eq!(q.0, o.0, "file length");
    // Allocated 4 KiB blocks, give or take the file system's own.
    assert!(
        q.1.abs_diff(o.1) <= 2,
        "allocated blocks: qemu {q:?}, ours {o:?}"
    );
}

/// iotest 125: growing with preallocation over a backing file keeps what
/// the backing file shows before the old end, and the new area reads zeros.
#[test]
fn grow_preallocated_over_backing() {
    let dir = TempDir::new("iotq-growback");
    for orig in ["31k", "33k"] {
        for prealloc in ["metadata", "falloc", "full"] {
            let prep = move |c: &Path, f: &str| {
                qemu_img_ok(c, &["create", "-f", "raw", "b.raw", "128k"]);
                qemu_io(c, "raw", "b.raw", &["write -q -P 1 0 128k".to_string()]);
                qemu_img_ok(
                    c,
                    &[
                        "create",
                        "-f",
                        "qcow2",
                        "-F",
                        "raw",
                        "-b",
                        "b.raw",
                        "-o",
                        "cluster_size=64k",
                        f,
                        orig,
                    ],
                );
            };
            let sub = dir.path().join(format!("{orig}-{prealloc}"));
            let p = format!("--preallocation={prealloc}");
            same_outcome_on_copies(
                &sub,
                "t.qcow2",
                prep,
                &["resize", "-f", "qcow2", &p, "t.qcow2", "96k"],
            );
            let q = qemu_raw_bytes(&sub.join("q"), "t.qcow2");
            let o = qemu_raw_bytes(&sub.join("o"), "t.qcow2");
            assert_bytes_eq(&format!("{orig} {prealloc}"), &q, &o);
        }
    }
}

/// iotest 080: a snapshot table past the end of the file reads as zeros
/// (until QEMU's snapshot limit), references no refcount block can cover
/// fail as in QEMU, and a corrupt snapshot L1 table is reported in
/// qemu-img's words by convert -l, amend, snapshot -a/-d and check.
#[test]
fn corrupt_snapshot_tables() {
    let dir = TempDir::new("iotq-snapcorrupt");
    let d = dir.path();
    // nb_snapshots = 65536, table at 16 MiB (beyond the end of the file).
    let prep_limit = |c: &Path, f: &str| {
        qemu_img_ok(c, &["create", "-f", "qcow2", f, "64M"]);
        patch(&c.join(f), 64, &(16u64 << 20).to_be_bytes());
        patch(&c.join(f), 60, &65536u32.to_be_bytes());
    };
    let sub = d.join("limit");
    same_outcome_on_copies(
        &sub,
        "t.qcow2",
        prep_limit,
        &["snapshot", "-c", "test", "t.qcow2"],
    );

    // An L2 entry whose offset no refcount block covers.
    for (tag, entry) in [
        ("huge", 0xbfff_ffff_ffff_0000u64),
        ("far", 0x8000_00ff_ffff_0000u64),
    ] {
        let prep = move |c: &Path, f: &str| {
            qemu_img_ok(c, &["create", "-f", "qcow2", f, "64M"]);
            io(c, f, &["write 0 512"]);
            patch(&c.join(f), 0x40000, &entry.to_be_bytes());
        };
        same_outcome_on_copies(
            &d.join(tag),
            "t.qcow2",
            prep,
            &["snapshot", "-c", "test", "t.qcow2"],
        );
    }

    // Snapshot 1's L1 table: unaligned offset, then a size past the limit.
    for (tag, off, bytes) in [
        ("l1off", 0x70000u64, 0x40_0200u64.to_be_bytes().to_vec()),
        ("l1size", 0x70008u64, 0x1000_0000u32.to_be_bytes().to_vec()),
    ] {
        let prep = |c: &Path, f: &str| {
            qemu_img_ok(c, &["create", "-f", "qcow2", f, "64M"]);
            io(c, f, &["write 0 512"]);
            qemu_img_ok(c, &["snapshot", "-c", "test", f]);
            patch(&c.join(f), off, &bytes);
        };
        let sub = d.join(tag);
        for args in [
            vec!["convert", "-l", "test", "t.qcow2", "t.snap"],
            vec!["amend", "-o", "compat=0.10", "t.qcow2"],
            vec!["snapshot", "-a", "test", "t.qcow2"],
            vec!["snapshot", "-d", "test", "t.qcow2"],
            vec!["check", "t.qcow2"],
        ] {
            let _ = std::fs::remove_dir_all(&sub);
            same_outcome_on_copies(&sub, "t.qcow2", prep, &args);
        }
    }
}

/// iotest 112: `amend -p -o refcount_bits` reports progress per walk over
/// the reftable as QEMU does, including the extra walk when the new
/// reftable needs a refcount block of its own (66.67% back to 50.00%).
#[test]
fn amend_refcount_width_progress() {
    let dir = TempDir::new("iotq-rcprog");
    let cases = [
        ("refcount_bits=1,cluster_size=512", "64k", 58u64),
        ("refcount_bits=1,cluster_size=512", "64k", 50),
        ("refcount_bits=16,cluster_size=512", "1M", 1000),
        ("refcount_bits=4,cluster_size=4096", "64M", 30000),
        ("cluster_size=65536", "64M", 16),
    ];
    for (i, (opts, size, sectors)) in cases.into_iter().enumerate() {
        let prep = move |c: &Path, f: &str| {
            qemu_img_ok(c, &["create", "-f", "qcow2", "-o", opts, f, size]);
            io(c, f, &[&format!("write 0 {}", sectors * 512)]);
        };
        let sub = dir.path().join(i.to_string());
        same_outcome_on_copies(
            &sub,
            "t.qcow2",
            prep,
            &["amend", "-p", "-o", "refcount_bits=64", "t.qcow2"],
        );
        same_as_qemu(&sub.join("o"), &["check", "t.qcow2"]);
    }
}

/// Run `steps` in turn with both tools on their own copy of `file` (made
/// once by `prep`): each step's outcome must match, and afterwards both images
/// list the same snapshots and check the same.
fn same_steps_on_copies(dir: &Path, file: &str, prep: impl Fn(&Path, &str), steps: &[&[&str]]) {
    let q = dir.join("q");
    let o = dir.join("o");
    for d in [&q, &o] {
        std::fs::create_dir_all(d).unwrap();
    }
    // One image, copied: snapshots made in different seconds would list
    // different dates.
    prep(&q, file);
    std::fs::copy(q.join(file), o.join(file)).unwrap();
    for args in steps {
        assert_outcome_matches(&qemu_img(&q, args), &imgtool(&o, args));
    }
    for args in [&["snapshot", "-l", file][..], &["check", file][..]] {
        let a = qemu_img(&q, args);
        let b = qemu_img(&o, args);
        assert_eq!(
            (a.code, a.stdout, a.stderr),
            (b.code, b.stdout, b.stderr),
            "{args:?} after {steps:?}"
        );
    }
}

fn be_at(path: &Path, off: usize, n: usize) -> u64 {
    let b = std::fs::read(path).unwrap();
    b[off..off + n]
        .iter()
        .fold(0u64, |v, &x| (v << 8) | x as u64)
}

/// Offset of snapshot entry `i` in the table (iotest 261's walk).
fn snapshot_entry(path: &Path, i: usize) -> u64 {
    let mut off = be_at(path, 64, 8);
    for _ in 0..i {
        let ids = be_at(path, off as usize + 12, 2) + be_at(path, off as usize + 14, 2);
        let extra = be_at(path, off as usize + 36, 4);
        off += (40 + extra + ids).div_ceil(8) * 8;
    }
    off
}

/// iotest 261: `check` reads the snapshot table itself and `check -r all`
/// repairs it as qemu-img does: oversized extra data cut to 1 KiB (and the
/// table rewritten), v3 entries without the disk size completed, more
/// than 65536 snapshots dropped; open errors carry QEMU's hints.
#[test]
fn snapshot_table_repairs() {
    let dir = TempDir::new("iotq-snaprepair");
    let d = dir.path();
    // (`info` would show host sizes, which differ between the copies.)
    let steps: &[&[&str]] = &[
        &["snapshot", "-l", "t.qcow2"],
        &["check", "t.qcow2"],
        &["check", "-r", "all", "t.qcow2"],
        &["snapshot", "-l", "t.qcow2"],
    ];
    // 64 KiB of extra data in the last of three snapshots.
    let extra = |c: &Path, f: &str| {
        qemu_img_ok(c, &["create", "-q", "-f", "qcow2", f, "64M"]);
        for s in ["sn0", "sn1", "sn2"] {
            qemu_img_ok(c, &["snapshot", "-c", s, f]);
        }
        let at = snapshot_entry(&c.join(f), 2);
        patch(&c.join(f), at + 36, &0x10000u32.to_be_bytes());
    };
    same_steps_on_copies(&d.join("extra"), "t.qcow2", extra, steps);

    // A v2 image forced to v3: its entries lack the v3 extra data.
    let botched = |c: &Path, f: &str| {
        qemu_img_ok(
            c,
            &["create", "-q", "-f", "qcow2", "-o", "compat=0.10", f, "64M"],
        );
        io(c, f, &["write -P 0x11 0 128k"]);
        for s in ["sn0", "sn1"] {
            qemu_img_ok(c, &["snapshot", "-c", s, f]);
        }
        let p = c.join(f);
        for i in 0..2 {
            let at = snapshot_entry(&p, i);
            patch(&p, at + 36, &0u32.to_be_bytes());
        }
        patch(&p, 4, &3u32.to_be_bytes());
        patch(&p, 100, &0x68u32.to_be_bytes());
        patch(&p, 96, &4u32.to_be_bytes());
    };
    same_steps_on_copies(&d.join("botched"), "t.qcow2", botched, steps);

    // 131072 all-zero (v2-valid) entries at 1 MiB, IDs and names empty.
    let many = |c: &Path, f: &str| {
        qemu_img_ok(
            c,
            &["create", "-q", "-f", "qcow2", "-o", "compat=0.10", f, "64M"],
        );
        let p = c.join(f);
        patch(&p, 64, &(1u64 << 20).to_be_bytes());
        patch(&p, 60, &0x20000u32.to_be_bytes());
        let len = (1u64 << 20) + 40 * 131072;
        std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(len)
            .unwrap();
    };
    same_steps_on_copies(&d.join("many"), "t.qcow2", many, steps);
}

/// iotest 110's last case: `info` of a qcow2 whose file is a quorum of two
/// copies shows the image (its backing name unresolvable, as there is no
/// one directory) as qemu-img does. The node's name (QEMU's own JSON
/// rendering), the summed disk size and the child nodes, which imgtool
/// does not show, are left out of the comparison.
#[test]
fn info_through_quorum() {
    let dir = TempDir::new("iotq-quorum");
    let d = dir.path();
    qemu_img_ok(d, &["create", "-q", "-f", "qcow2", "b.qcow2", "1M"]);
    qemu_img_ok(
        d,
        &[
            "create", "-q", "-f", "qcow2", "-b", "b.qcow2", "-F", "qcow2", "t.qcow2", "1M",
        ],
    );
    std::fs::copy(d.join("t.qcow2"), d.join("t2.qcow2")).unwrap();
    let j = "json:{'driver':'qcow2','file':{'driver':'quorum','vote-threshold':1,\
             'children':[{'driver':'file','filename':'t.qcow2'},\
             {'driver':'file','filename':'t2.qcow2'}]}}";
    let top = |s: &str| -> String {
        s.lines()
            .take_while(|l| !l.starts_with("Child node"))
            .filter(|l| !l.starts_with("image: ") && !l.starts_with("disk size: "))
            .map(|l| format!("{l}\n"))
            .collect()
    };
    let q = qemu_img(d, &["info", j]).expect_ok();
    let o = imgtool(d, &["info", j]);
    assert!(o.ok(), "{}", o.describe());
    assert_text_eq("info through quorum", &top(&q.stdout), &top(&o.stdout));
    assert!(top(&o.stdout).contains("backing file: b.qcow2 (cannot determine actual path)"));
}

/// iotest 150: a `null-co` node (zeros of a given size, no file) converts
/// sparsely or fully allocated as `-S` says, maps as qemu-img maps it,
/// and refuses options it does not have.
#[test]
fn null_co_source() {
    let dir = TempDir::new("iotq-nullco");
    let d = dir.path();
    let null = "json:{ 'driver': 'null-co', 'size': 1048576, 'read-zeroes': true }";
    for s in ["512", "0"] {
        let args = ["convert", "-O", "qcow2", "-S", s, null, "t.qcow2"];
        same_on_copies(&d.join(format!("s{s}")), "t.qcow2", |_, _| {}, &args);
    }
    for args in [
        &["map", null][..],
        &["map", "--output=json", null][..],
        &["compare", null, "s0/q/t.qcow2"][..],
        &["info", "json:{'driver':'null-co','foo':1}"][..],
    ] {
        same_as_qemu(d, args);
    }
}
