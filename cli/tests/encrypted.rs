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
    let mut c = std::process::Command::new("qemu-io");
    c.current_dir(&od)
        .args(["--object", SECRET, "--image-opts"])
        .args([
            "-c",
            "read -P 0 0 4M",
            "-c",
            "write -P 0x61 1M 64k",
            "-c",
            "read -P 0x61 1M 64k",
        ])
        .arg(image_opts("x.qcow2"));
    let r = run_with_timeout(&mut c, DEFAULT_TIMEOUT);
    assert!(
        r.ok() && r.stderr.is_empty() && !r.stdout.contains("failed"),
        "{}",
        r.describe()
    );
    let io = image_opts("x.qcow2");
    let c = qemu_img(&od, &["check", "--object", SECRET, "--image-opts", &io]);
    assert!(
        c.ok(),
        "qemu-img check of our encrypted image:\n{}",
        c.describe()
    );
}
