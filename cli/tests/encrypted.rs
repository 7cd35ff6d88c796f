//! Encrypted qcow2 (LUKS and legacy AES): `info` shows what qemu-img shows
//! without a key; data I/O without a key fails in qemu-img's words; with
//! the secret (`--object secret,... --image-opts`), convert decrypts to
//! qemu-img's bytes; `create` with a secret makes an image qemu can use.

mod common;

use common::*;
use std::path::Path;
use std::sync::OnceLock;

const SECRET: &str = "secret,id=sec0,data=123456";

fn image_opts(file: &str) -> String {
    format!("driver=qcow2,file.filename={file},encrypt.key-secret=sec0")
}

/// qemu-img's encrypted image with some data, made once per format (LUKS
/// creation costs qemu-img seconds of PBKDF benchmarking) and copied into
/// each test's directory.
fn build(dir: &Path, format: &str) -> &'static str {
    static LUKS: OnceLock<Vec<u8>> = OnceLock::new();
    static AES: OnceLock<Vec<u8>> = OnceLock::new();
    let cell = if format == "luks" { &LUKS } else { &AES };
    let bytes = cell.get_or_init(|| {
        let t = TempDir::new(&format!("enc_fixture_{format}"));
        qemu_build(t.path(), format);
        read(&t.join("enc.qcow2"))
    });
    std::fs::write(dir.join("enc.qcow2"), bytes).unwrap();
    "enc.qcow2"
}

fn qemu_build(dir: &Path, format: &str) {
    let mut o = format!("encrypt.format={format},encrypt.key-secret=sec0");
    if format == "luks" {
        // Keep PBKDF short; AES (legacy) has no such parameter.
        o.push_str(",encrypt.iter-time=10");
    }
    qemu_img_ok(
        dir,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "--object",
            SECRET,
            "-o",
            &o,
            "enc.qcow2",
            "4M",
        ],
    );
    std::fs::write(dir.join("r1.bin"), random_bytes(77, MIB as usize)).unwrap();
    qemu_io_enc(
        dir,
        "enc.qcow2",
        &[
            "write -s r1.bin 64k 300k",
            "write -P 0x44 2M 64k",
            "write -P 0x45 3M 1000",
        ],
    );
}

/// qemu-io on an encrypted qcow2 with the secret; must succeed silently.
fn qemu_io_enc(dir: &Path, file: &str, cmds: &[&str]) -> Out {
    let mut c = std::process::Command::new("qemu-io");
    c.current_dir(dir)
        .args(["--object", SECRET, "--image-opts"]);
    for cmd in cmds {
        c.args(["-c", cmd]);
    }
    c.arg(image_opts(file));
    let o = run_with_timeout(&mut c, DEFAULT_TIMEOUT);
    assert!(
        o.ok() && o.stderr.is_empty() && !o.stdout.contains("fail"),
        "{}",
        o.describe()
    );
    o
}

fn info(format: &str) {
    let dir = TempDir::new(&format!("enc_info_{format}"));
    let f = build(dir.path(), format);
    for args in [
        &["info", f][..],
        &["info", "--output=json", f][..],
        &["info", "--backing-chain", f][..],
    ] {
        let q = qemu_img(dir.path(), args).expect_ok();
        let o = imgtool(dir.path(), args);
        assert!(o.ok(), "{}", o.describe());
        assert_text_eq(
            &format!("{args:?}"),
            &json_without_actual_size(&human_without_disk_size(&q.stdout)),
            &json_without_actual_size(&human_without_disk_size(&o.stdout)),
        );
    }
}

fn convert_without_key(format: &str) {
    let dir = TempDir::new(&format!("enc_nokey_{format}"));
    let f = build(dir.path(), format);
    let (q, _) = same_as_qemu(dir.path(), &["convert", "-O", "raw", f, "out.raw"]);
    assert_eq!(q.code, Some(1));
}

fn convert_with_key(format: &str) {
    let dir = TempDir::new(&format!("enc_key_{format}"));
    let f = build(dir.path(), format);
    let qd = dir.sub("q");
    let od = dir.sub("o");
    let src = image_opts(&format!("../{f}"));
    let args = [
        "convert",
        "--object",
        SECRET,
        "--image-opts",
        &src,
        "-O",
        "raw",
        "out.raw",
    ];
    qemu_img(&qd, &args).expect_ok();
    let o = imgtool(&od, &args);
    assert!(o.ok(), "{}", o.describe());
    assert_bytes_eq(
        "decrypted contents",
        &read(&qd.join("out.raw")),
        &read(&od.join("out.raw")),
    );
}

#[test]
fn luks_info() {
    info("luks");
}
#[test]
fn aes_info() {
    info("aes");
}
#[test]
fn luks_convert_without_key() {
    convert_without_key("luks");
}
#[test]
fn aes_convert_without_key() {
    convert_without_key("aes");
}
#[test]

fn luks_convert_with_key() {
    convert_with_key("luks");
}

/// `create` with a LUKS secret: same "Formatting" line and exit code, and
/// qemu can write and read the image back with the passphrase.
#[test]

fn luks_create() {
    let dir = TempDir::new("enc_create");
    let args = [
        "create",
        "-f",
        "qcow2",
        "--object",
        SECRET,
        "-o",
        "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10",
        "x.qcow2",
        "4M",
    ];
    let qd = dir.sub("q");
    let od = dir.sub("o");
    let q = qemu_img(&qd, &args);
    let o = imgtool(&od, &args);
    assert_outcome_matches(&q, &o);
    qemu_io_enc(
        &od,
        "x.qcow2",
        &[
            "read -P 0 0 4M",
            "write -P 0x61 1M 64k",
            "read -P 0x61 1M 64k",
        ],
    );
    let io = image_opts("x.qcow2");
    let c = qemu_img(&od, &["check", "--object", SECRET, "--image-opts", &io]);
    assert!(
        c.ok(),
        "qemu-img check of our encrypted image:\n{}",
        c.describe()
    );
}

#[test]
fn aes_convert_with_key() {
    convert_with_key("aes");
}

/// Missing, unknown, wrong and malformed secrets fail in qemu-img's words
/// and with its exit code.
#[test]
fn secret_errors() {
    let dir = TempDir::new("enc_secret_errors");
    let f = build(dir.path(), "luks");
    std::fs::write(dir.join("pw.txt"), "123456").unwrap();
    let io = image_opts(f);
    let io_other = format!("driver=qcow2,file.filename={f},encrypt.key-secret=sec1");
    let io_aes = format!("{io},encrypt.format=aes");
    let objects = [
        "secret,id=sec0,data=wrong",
        "secret,id=sec0,file=nope.txt",
        "secret,id=sec0,data=1,file=pw.txt",
        "secret,id=sec0,data=!!!!,format=base64",
        "secret,id=sec0,data=1,format=hex",
        "secret,id=sec0,data=1,foo=bar",
        "secret,id=sec0",
    ];
    for obj in objects {
        let args = [
            "convert",
            "--object",
            obj,
            "--image-opts",
            &io,
            "-O",
            "raw",
            "o.raw",
        ];
        same_as_qemu(dir.path(), &args);
    }
    for src in [&io_other, &io_aes] {
        let args = [
            "convert",
            "--object",
            SECRET,
            "--image-opts",
            src,
            "-O",
            "raw",
            "o.raw",
        ];
        same_as_qemu(dir.path(), &args);
    }
    let plain = "driver=qcow2,file.filename=plain.qcow2,encrypt.format=luks";
    qemu_img_ok(
        dir.path(),
        &["create", "-q", "-f", "qcow2", "plain.qcow2", "1M"],
    );
    same_as_qemu(
        dir.path(),
        &["convert", "--image-opts", plain, "-O", "raw", "o.raw"],
    );
    for o in [
        "encrypt.format=luks",
        "encrypt.format=luks,encrypt.key-secret=sec0",
        "encrypt.format=aes",
    ] {
        same_as_qemu(
            dir.path(),
            &["create", "-f", "qcow2", "-o", o, "x.qcow2", "1M"],
        );
    }
}

/// `file=` and `format=base64` secrets unlock like `data=`.
#[test]
fn secret_from_file_and_base64() {
    let dir = TempDir::new("enc_secret_forms");
    let f = build(dir.path(), "luks");
    std::fs::write(dir.join("pw.txt"), "123456").unwrap();
    let io = image_opts(f);
    let mut c = std::process::Command::new("qemu-img");
    c.current_dir(dir.path()).args([
        "convert",
        "--object",
        SECRET,
        "--image-opts",
        &io,
        "-O",
        "raw",
        "q.raw",
    ]);
    assert!(run_with_timeout(&mut c, DEFAULT_TIMEOUT).ok());
    for (i, obj) in [
        "secret,id=sec0,file=pw.txt",
        "secret,id=sec0,data=MTIzNDU2,format=base64",
        "secret,id=sec0,data=123456,format=raw",
    ]
    .iter()
    .enumerate()
    {
        let out = format!("o{i}.raw");
        let o = imgtool(
            dir.path(),
            &[
                "convert",
                "--object",
                obj,
                "--image-opts",
                &io,
                "-O",
                "raw",
                &out,
            ],
        );
        assert!(o.ok(), "{obj}: {}", o.describe());
        assert_bytes_eq(obj, &read(&dir.join("q.raw")), &read(&dir.join(&out)));
    }
}

/// Byte offset of the LUKS header inside an encrypted qcow2 (from the
/// crypto header extension).
fn luks_offset(file: &Path) -> u64 {
    let b = read(file);
    let ext = (104..4096)
        .find(|&i| b[i..i + 4] == [0x05, 0x37, 0xbe, 0x77])
        .expect("crypto extension");
    u64::from_be_bytes(b[ext + 8..ext + 16].try_into().unwrap())
}

/// Hostile LUKS headers: QEMU's own checks give its messages (for info
/// too); iteration counts QEMU would spin on for hours are refused at once.
#[test]
fn hostile_luks_headers() {
    let dir = TempDir::new("enc_hostile");
    let io = image_opts("h.qcow2");
    let convert = [
        "convert",
        "--object",
        SECRET,
        "--image-opts",
        &io,
        "-O",
        "raw",
        "o.raw",
    ];
    let slot1 = 208 + 48;
    // (field offset in the LUKS header, value, qemu-img rejects it too)
    let cases: [(u64, u32, bool); 6] = [
        (slot1 as u64 + 44, 1 << 30, true), // stripes
        (slot1 as u64 + 44, 3999, true),    // stripes
        (slot1 as u64 + 40, 2, true),       // key offset inside the header
        (108, 0xffff_fff0, true),           // key bytes
        (164, 0, true),                     // master key iterations
        (208 + 4, u32::MAX, false),         // slot 0 iterations
    ];
    for (field, value, qemu_refuses) in cases {
        let f = build(dir.path(), "luks");
        std::fs::rename(dir.join(f), dir.join("h.qcow2")).unwrap();
        let at = luks_offset(&dir.join("h.qcow2")) + field;
        patch(&dir.join("h.qcow2"), at, &value.to_be_bytes());
        if qemu_refuses {
            same_as_qemu(dir.path(), &convert);
            same_as_qemu(dir.path(), &["info", "h.qcow2"]);
        } else if !against_oracle() {
            let t = std::time::Instant::now();
            let o = imgtool(dir.path(), &convert);
            assert_eq!(o.code, Some(1), "{}", o.describe());
            assert!(o.stderr.contains("iteration count"), "{}", o.describe());
            assert!(t.elapsed() < std::time::Duration::from_secs(10));
        }
    }
}

/// A plain image converted into a new LUKS qcow2 by us: qemu-img finds it
/// identical to the source and clean; our compare and check agree with
/// qemu-img's on it.
#[test]
fn convert_into_luks() {
    let dir = TempDir::new("enc_convert_into");
    std::fs::write(dir.join("src.raw"), mixed_raw(5, 4 * MIB)).unwrap();
    let o = imgtool(
        dir.path(),
        &[
            "convert",
            "--object",
            SECRET,
            "-O",
            "qcow2",
            "-o",
            "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10",
            "src.raw",
            "out.qcow2",
        ],
    );
    assert!(o.ok(), "{}", o.describe());
    let io = image_opts("out.qcow2");
    let cmp = [
        "compare",
        "--object",
        SECRET,
        "--image-opts",
        "driver=raw,file.filename=src.raw",
        &io,
    ];
    let (q, _) = same_as_qemu(dir.path(), &cmp);
    assert!(
        q.stdout.contains("Images are identical."),
        "{}",
        q.describe()
    );
    let (q, _) = same_as_qemu(
        dir.path(),
        &["check", "--object", SECRET, "--image-opts", &io],
    );
    assert!(q.ok(), "{}", q.describe());
    // Without the secret, check needs none (metadata only) in neither tool.
    same_as_qemu(dir.path(), &["info", "out.qcow2"]);
}

/// We write into an image qemu-img made (`convert -n` into it, including
/// a sub-cluster tail), for both LUKS and legacy AES; qemu-img reads our
/// data back.
#[test]
fn write_into_qemu_image() {
    for format in ["luks", "aes"] {
        let dir = TempDir::new(&format!("enc_write_{format}"));
        let f = build(dir.path(), format);
        let mut data = mixed_raw(9, 4 * MIB);
        data.truncate(4 * MIB as usize);
        std::fs::write(dir.join("src.raw"), &data).unwrap();
        let io = image_opts(f);
        let o = imgtool(
            dir.path(),
            &[
                "convert",
                "-n",
                "--object",
                SECRET,
                "--target-image-opts",
                "src.raw",
                &io,
            ],
        );
        assert!(o.ok(), "{}", o.describe());
        assert_qemu_compare_identical(
            dir.path(),
            "driver=raw,file.filename=src.raw",
            &io,
            &["--object", SECRET, "--image-opts"],
        );
    }
}

/// Legacy AES: qemu-img 10 still creates it; so do we, readable by qemu.
#[test]
fn aes_create() {
    let dir = TempDir::new("enc_aes_create");
    let args = [
        "create",
        "-f",
        "qcow2",
        "--object",
        SECRET,
        "-o",
        "encrypt.format=aes,encrypt.key-secret=sec0",
        "x.qcow2",
        "4M",
    ];
    let qd = dir.sub("q");
    let od = dir.sub("o");
    assert_outcome_matches(&qemu_img(&qd, &args), &imgtool(&od, &args));
    qemu_io_enc(
        &od,
        "x.qcow2",
        &[
            "read -P 0 0 4M",
            "write -P 0x61 1M 64k",
            "read -P 0x61 1M 64k",
        ],
    );
    let o = imgtool(
        &od,
        &[
            "convert",
            "--object",
            SECRET,
            "--image-opts",
            &image_opts("x.qcow2"),
            "-O",
            "raw",
            "o.raw",
        ],
    );
    assert!(o.ok(), "{}", o.describe());
    let got = read(&od.join("o.raw"));
    assert!(got[..MIB as usize].iter().all(|&b| b == 0));
    assert!(got[MIB as usize..MIB as usize + 65536]
        .iter()
        .all(|&b| b == 0x61));
}

/// The raw `luks` driver: qemu-img's volume reads as qemu-img reads it,
/// info matches; a volume we create (and convert into) is identical to
/// its source for qemu-img; without the secret both refuse alike.
#[test]
fn luks_driver() {
    let dir = TempDir::new("enc_luks_driver");
    let d = dir.path();
    let create = [
        "create",
        "-f",
        "luks",
        "--object",
        SECRET,
        "-o",
        "key-secret=sec0,iter-time=10",
        "q.luks",
        "4M",
    ];
    let qc = qemu_img(d, &create);
    assert!(qc.ok(), "{}", qc.describe());
    // Our create prints the same and makes a volume qemu-img reads below.
    let od = dir.sub("o");
    assert_outcome_matches(&qc, &imgtool(&od, &create));
    std::fs::write(d.join("r1.bin"), random_bytes(78, MIB as usize)).unwrap();
    let lopts = |f: &str| format!("driver=luks,file.filename={f},key-secret=sec0");
    let mut c = std::process::Command::new("qemu-io");
    c.current_dir(d)
        .args(["--object", SECRET, "--image-opts"])
        .args(["-c", "write -s r1.bin 4000 300k", "-c", "write -z 2M 1M"])
        .arg(lopts("q.luks"));
    assert!(run_with_timeout(&mut c, DEFAULT_TIMEOUT).ok());
    for args in [
        &["info", "q.luks"][..],
        &["info", "--output=json", "q.luks"][..],
    ] {
        let q = qemu_img(d, args).expect_ok();
        let o = imgtool(d, args);
        assert_text_eq(
            &format!("{args:?}"),
            &json_without_actual_size(&human_without_disk_size(&q.stdout)),
            &json_without_actual_size(&human_without_disk_size(&o.stdout)),
        );
    }
    same_as_qemu(d, &["convert", "-O", "raw", "q.luks", "o.raw"]);
    let io = lopts("q.luks");
    let conv = |out: &str| {
        vec![
            "convert".to_string(),
            "--object".into(),
            SECRET.into(),
            "--image-opts".into(),
            io.clone(),
            "-O".into(),
            "raw".into(),
            out.into(),
        ]
    };
    let qa = conv("q.raw");
    qemu_img_ok(d, &qa.iter().map(String::as_str).collect::<Vec<_>>());
    let oa = conv("o.raw");
    let o = imgtool(d, &oa.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.ok(), "{}", o.describe());
    assert_bytes_eq(
        "luks contents",
        &read(&d.join("q.raw")),
        &read(&d.join("o.raw")),
    );
    // Ours: convert into a new volume.
    std::fs::write(od.join("src.raw"), mixed_raw(6, 4 * MIB)).unwrap();
    let o = imgtool(
        &od,
        &[
            "convert",
            "--object",
            SECRET,
            "-O",
            "luks",
            "-o",
            "key-secret=sec0,iter-time=10",
            "src.raw",
            "n.luks",
        ],
    );
    assert!(o.ok(), "{}", o.describe());
    assert_qemu_compare_identical(
        &od,
        "driver=raw,file.filename=src.raw",
        &lopts("n.luks"),
        &["--object", SECRET, "--image-opts"],
    );
    same_as_qemu(&od, &["create", "-f", "luks", "x.luks", "1M"]);
    let mut c = std::process::Command::new("qemu-io");
    c.current_dir(&od)
        .args(["--object", SECRET, "--image-opts"])
        .args([
            "-c",
            "write -P 0x5a 1000 3000",
            "-c",
            "read -P 0x5a 1000 3000",
        ])
        .arg(lopts("q.luks"));
    let r = run_with_timeout(&mut c, DEFAULT_TIMEOUT);
    assert!(r.ok() && !r.stdout.contains("fail"), "{}", r.describe());
}

/// map and measure on encrypted images: no host offsets (QEMU hides them
/// for encrypted data), and the LUKS area counted in measure's sizes.
#[test]
fn map_and_measure() {
    let dir = TempDir::new("enc_map_measure");
    let f = build(dir.path(), "luks");
    let io = image_opts(f);
    for out in ["--output=human", "--output=json"] {
        same_as_qemu(
            dir.path(),
            &["map", out, "--object", SECRET, "--image-opts", &io],
        );
    }
    // qemu-img runs the whole PBKDF benchmark even to measure.
    let luks = "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10";
    let aes128 = format!("{luks},encrypt.cipher-alg=aes-128,cluster_size=4k");
    let missing = "encrypt.format=luks,encrypt.key-secret=sec1";
    for o in [luks, &aes128, missing] {
        let (q, _) = same_as_qemu(
            dir.path(),
            &[
                "measure", "--object", SECRET, "-O", "qcow2", "-o", o, "--size", "100M",
            ],
        );
        if o != missing {
            assert!(q.ok(), "{}", q.describe());
        }
    }
    same_as_qemu(
        dir.path(),
        &[
            "measure",
            "--object",
            SECRET,
            "--image-opts",
            &io,
            "-O",
            "qcow2",
            "-o",
            luks,
        ],
    );
}

/// qcow (v1) with AES: qemu-img's image reads identically; our create is
/// byte-identical to qemu-img's; our convert into a new one is identical
/// to its source for qemu-img.
#[test]
fn qcow_v1_aes() {
    let dir = TempDir::new("enc_qcow1");
    let d = dir.path();
    let qopts = |f: &str| format!("driver=qcow,file.filename={f},encrypt.key-secret=sec0");
    let create = |f: &'static str| {
        [
            "create",
            "-f",
            "qcow",
            "--object",
            SECRET,
            "-o",
            "encrypt.format=aes,encrypt.key-secret=sec0",
            f,
            "4M",
        ]
    };
    qemu_img_ok(d, &create("q.qcow"));
    let o = imgtool(d, &create("o.qcow"));
    assert!(o.ok(), "{}", o.describe());
    assert_bytes_eq(
        "new image",
        &read(&d.join("q.qcow")),
        &read(&d.join("o.qcow")),
    );
    let mut c = std::process::Command::new("qemu-io");
    c.current_dir(d)
        .args(["--object", SECRET, "--image-opts"])
        .args(["-c", "write -P 0x21 1000 70k", "-c", "write -P 0x22 3M 4k"])
        .arg(qopts("q.qcow"));
    assert!(run_with_timeout(&mut c, DEFAULT_TIMEOUT).ok());
    let conv = |tool: fn(&Path, &[&str]) -> Out, out: &str| {
        let io = qopts("q.qcow");
        let r = tool(
            d,
            &[
                "convert",
                "--object",
                SECRET,
                "--image-opts",
                &io,
                "-O",
                "raw",
                out,
            ],
        );
        assert!(r.ok(), "{}", r.describe());
    };
    conv(qemu_img, "q.raw");
    conv(imgtool, "o.raw");
    assert_bytes_eq(
        "qcow AES contents",
        &read(&d.join("q.raw")),
        &read(&d.join("o.raw")),
    );
    std::fs::write(d.join("src.raw"), mixed_raw(8, 4 * MIB)).unwrap();
    let o = imgtool(
        d,
        &[
            "convert",
            "--object",
            SECRET,
            "-O",
            "qcow",
            "-o",
            "encrypt.format=aes,encrypt.key-secret=sec0",
            "src.raw",
            "n.qcow",
        ],
    );
    assert!(o.ok(), "{}", o.describe());
    assert_qemu_compare_identical(
        d,
        "driver=raw,file.filename=src.raw",
        &qopts("n.qcow"),
        &["--object", SECRET, "--image-opts"],
    );
}

/// Which of `sec0`..`sec3` open `file` (qemu-io is the judge), and the
/// active flags of its key slots as qemu-img info shows them.
fn keyslot_state(dir: &Path, file: &str, objects: &[String]) -> String {
    let mut s = String::new();
    for i in 0..4 {
        let mut c = std::process::Command::new("qemu-io");
        c.current_dir(dir);
        for o in objects {
            c.args(["--object", o]);
        }
        c.args(["-c", "read 0 512", "--image-opts"]).arg(format!(
            "driver=qcow2,file.filename={file},encrypt.key-secret=sec{i}"
        ));
        let o = run_with_timeout(&mut c, DEFAULT_TIMEOUT);
        s.push_str(&format!("sec{i}: {}\n", o.ok() && o.stderr.is_empty()));
    }
    let info = qemu_img_ok(dir, &["info", "--output=json", file]);
    let active: Vec<&str> = info
        .lines()
        .filter(|l| l.contains("\"active\""))
        .map(str::trim)
        .collect();
    s.push_str(&active.join(" "));
    s
}

/// `amend -o encrypt.state=...` adds and erases LUKS key slots as
/// qemu-img does (iotest 293's steps and its refusals): the same output
/// and exit code for each step, and afterwards the same slots active and
/// the same secrets opening the image.
#[test]
fn luks_keyslot_amend() {
    let dir = TempDir::new("enc_keyslot_amend");
    let f = build(dir.path(), "luks");
    // The fixture's slot 0 holds sec0's "123456".
    let objects: Vec<String> = std::iter::once(SECRET.to_string())
        .chain((1..4).map(|i| format!("secret,id=sec{i},data=hunter{i}")))
        .collect();
    std::fs::copy(dir.join(f), dir.join("q.qcow2")).unwrap();
    std::fs::copy(dir.join(f), dir.join("o.qcow2")).unwrap();
    let a = "encrypt.state=active,encrypt.iter-time=10";
    let i = "encrypt.state=inactive";
    let steps: Vec<(usize, String, bool)> = vec![
        (
            0,
            format!("{a},encrypt.new-secret=sec1,encrypt.keyslot=4"),
            false,
        ),
        (1, format!("{a},encrypt.new-secret=sec2"), false),
        (
            2,
            format!("{a},encrypt.new-secret=sec3,encrypt.keyslot=3"),
            false,
        ),
        (
            3,
            format!("{a},encrypt.new-secret=sec2,encrypt.keyslot=3"),
            false,
        ),
        (
            3,
            format!("{a},encrypt.new-secret=sec1,encrypt.old-secret=sec0"),
            false,
        ),
        (3, "encrypt.new-secret=sec1".to_string(), false),
        (3, "encrypt.state=on".to_string(), false),
        (
            3,
            format!("{a},encrypt.new-secret=sec1,encrypt.keyslot=8"),
            false,
        ),
        (3, format!("{a},encrypt.new-secret=sec9"), false),
        (1, format!("{i},encrypt.keyslot=4"), false),
        (1, format!("{i},encrypt.keyslot=4"), false),
        (
            1,
            format!("{i},encrypt.keyslot=5,encrypt.old-secret=sec1"),
            false,
        ),
        (1, format!("{i},encrypt.new-secret=sec1"), false),
        (1, format!("{i},encrypt.iter-time=10"), false),
        (1, i.to_string(), false),
        (1, format!("{i},encrypt.old-secret=sec5"), true),
        (1, format!("{i},encrypt.old-secret=sec2"), false),
        (3, format!("{i},encrypt.old-secret=sec0"), false),
        (3, format!("{i},encrypt.old-secret=sec1"), false),
        (3, format!("{i},encrypt.old-secret=sec3"), false),
        (3, format!("{i},encrypt.keyslot=3"), false),
        (
            3,
            format!("{a},encrypt.new-secret=sec1,encrypt.keyslot=3"),
            true,
        ),
        (1, format!("{i},encrypt.keyslot=3"), true),
    ];
    for (n, (key, opts, force)) in steps.iter().enumerate() {
        let run = |tool: fn(&Path, &[&str]) -> Out, file: &str| {
            let io = format!("driver=qcow2,file.filename={file},encrypt.key-secret=sec{key}");
            let mut args: Vec<&str> = vec!["amend"];
            for o in &objects {
                args.extend(["--object", o.as_str()]);
            }
            args.extend(["--image-opts", &io, "-o", opts]);
            if *force {
                args.push("--force");
            }
            tool(dir.path(), &args)
        };
        let q = run(qemu_img, "q.qcow2");
        let o = run(imgtool, "o.qcow2");
        let mut expect = q.clone();
        expect.stderr = q.stderr.replace("q.qcow2", "o.qcow2");
        assert_outcome_matches(&expect, &o);
        assert_text_eq(
            &format!("key slots after step {n} ({opts})"),
            &keyslot_state(dir.path(), "q.qcow2", &objects),
            &keyslot_state(dir.path(), "o.qcow2", &objects),
        );
    }
}

/// The raw `luks` driver's amend: its un-prefixed key slot options, the
/// same refusals and results as qemu-img.
#[test]
fn raw_luks_keyslot_amend() {
    let dir = TempDir::new("enc_raw_luks_amend");
    let objects = [SECRET, "secret,id=sec1,data=hunter1"];
    let mut create = vec!["create", "-q", "-f", "luks"];
    for o in objects {
        create.extend(["--object", o]);
    }
    create.extend(["-o", "key-secret=sec0,iter-time=10", "base.luks", "1M"]);
    qemu_img_ok(dir.path(), &create);
    std::fs::copy(dir.join("base.luks"), dir.join("q.luks")).unwrap();
    std::fs::copy(dir.join("base.luks"), dir.join("o.luks")).unwrap();
    let steps: [(&str, &str); 9] = [
        ("sec0", "state=active,new-secret=sec1,iter-time=10"),
        ("sec0", "state=active,new-secret=sec1,keyslot=1"),
        ("sec0", "state=inactive,keyslot=1,new-secret=sec1"),
        ("sec0", "keyslot=x"),
        ("sec0", "size=3M"),
        ("sec0", "encrypt.state=active"),
        ("sec1", "state=inactive,old-secret=sec0"),
        ("sec1", "state=inactive,old-secret=sec1"),
        ("sec1", "state=inactive,keyslot=1"),
    ];
    for (key, opts) in steps {
        let run = |tool: fn(&Path, &[&str]) -> Out, file: &str| {
            let io = format!("driver=luks,file.filename={file},key-secret={key}");
            let mut args = vec!["amend"];
            for o in objects {
                args.extend(["--object", o]);
            }
            args.extend(["--image-opts", &io, "-o", opts]);
            tool(dir.path(), &args)
        };
        let q = run(qemu_img, "q.luks");
        let o = run(imgtool, "o.luks");
        let mut expect = q.clone();
        expect.stderr = q.stderr.replace("q.luks", "o.luks");
        assert_outcome_matches(&expect, &o);
        let slots = |f: &str| {
            let j = qemu_img_ok(dir.path(), &["info", "--output=json", f]);
            j.lines().filter(|l| l.contains("\"active\": true")).count()
        };
        assert_eq!(
            slots("q.luks"),
            slots("o.luks"),
            "active slots after {opts}"
        );
    }
}
