//! blkdebug error injection: the same invocations (the iotests' shapes:
//! 020, 074, 098, 204, 217 and hostile config files) through qemu-img and
//! imgtool, each on its own copy of the same images. Exit code, stdout and
//! stderr must match, and where an injected failure leaves an image
//! half-updated, `qemu-img check` must say the same about both copies.

mod common;

use common::*;
use std::path::Path;

/// Base image with data, and a top image over it with one written cluster.
fn chain(dir: &Path) {
    qemu_img_ok(dir, &["create", "-q", "-f", "qcow2", "base.qcow2", "64M"]);
    qemu_img_ok(
        dir,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "base.qcow2",
            "-F",
            "qcow2",
            "t.qcow2",
            "64M",
        ],
    );
    qemu_io(dir, "qcow2", "t.qcow2", &["write -P 7 0 64k".into()]);
}

fn single(dir: &Path) {
    qemu_img_ok(dir, &["create", "-q", "-f", "qcow2", "t.qcow2", "1M"]);
    qemu_io(dir, "qcow2", "t.qcow2", &["write -P 9 512 512".into()]);
}

/// Prepare q/ and o/ alike (with `conf` as blkdebug.conf), run `args` in
/// each, compare outcomes; then compare `qemu-img check` of `checked`.
fn run(prep: fn(&Path), conf: &[u8], args: &[&str], checked: &[&str]) {
    let dir = TempDir::new("blkdebug");
    let qd = dir.sub("q");
    let od = dir.sub("o");
    for d in [&qd, &od] {
        prep(d);
        std::fs::write(d.join("blkdebug.conf"), conf).unwrap();
    }
    let q = qemu_img(&qd, args);
    assert!(!q.timed_out, "qemu-img hung:\n{}", q.describe());
    let o = imgtool(&od, args);
    assert_outcome_matches(&q, &o);
    for f in checked {
        let qc = qemu_img(&qd, &["check", f]);
        let oc = qemu_img(&od, &["check", f]);
        assert_eq!(qc.code, oc.code, "check {f} after {args:?}");
        assert_text_eq(&format!("check {f} after {args:?}"), &qc.stdout, &oc.stdout);
    }
}

const CONF_EIO_READ: &[u8] =
    b"[inject-error]\nevent = \"read_aio\"\nerrno = \"5\"\nonce =\"off\"\n";

#[test]
fn compare_read_error() {
    run(
        |d| {
            single(d);
            qemu_img_ok(d, &["create", "-q", "-f", "qcow2", "t2.qcow2", "1M"]);
        },
        CONF_EIO_READ,
        &["compare", "blkdebug:blkdebug.conf:t.qcow2", "t2.qcow2"],
        &[],
    );
}

#[test]
fn compare_read_error_size_mismatch() {
    run(
        |d| {
            single(d);
            qemu_img_ok(d, &["create", "-q", "-f", "qcow2", "t2.qcow2", "0"]);
        },
        CONF_EIO_READ,
        &["compare", "blkdebug:blkdebug.conf:t.qcow2", "t2.qcow2"],
        &[],
    );
}

fn commit_failing_at(event: &str) {
    let conf = format!("[inject-error]\nevent = \"{event}\"\n");
    run(
        chain,
        conf.as_bytes(),
        &["commit", "blkdebug:blkdebug.conf:t.qcow2"],
        &["base.qcow2"],
    );
}

#[test]
fn commit_empty_fails_at_l1_update() {
    commit_failing_at("l1_update");
}

#[test]
fn commit_empty_fails_at_empty_image_prepare() {
    commit_failing_at("empty_image_prepare");
}

#[test]
fn commit_empty_fails_at_reftable_update() {
    commit_failing_at("reftable_update");
}

#[test]
fn commit_empty_fails_at_refblock_alloc() {
    commit_failing_at("refblock_alloc");
}

#[test]
fn commit_without_failure_through_blkdebug() {
    run(
        chain,
        b"",
        &["commit", "blkdebug::t.qcow2"],
        &["t.qcow2", "base.qcow2"],
    );
}

#[test]
fn commit_into_failing_backing() {
    // The top's backing file is a json: name with blkdebug under qcow2.
    run(
        |d| {
            qemu_img_ok(d, &["create", "-q", "-f", "qcow2", "b.qcow2", "1M"]);
            let backing = "json:{'driver': 'qcow2', 'file': {'driver': 'blkdebug', \
                 'inject-error': [{'event': 'write_aio', 'errno': 28, 'once': true}], \
                 'image': {'driver': 'file', 'filename': 'b.qcow2'}}}";
            qemu_img_ok(
                d,
                &[
                    "create", "-q", "-f", "qcow2", "-b", backing, "-F", "qcow2", "t.qcow2",
                ],
            );
            qemu_io(d, "qcow2", "t.qcow2", &["write 0 64k".into()]);
        },
        b"",
        &["commit", "t.qcow2"],
        &["b.qcow2"],
    );
}

#[test]
fn snapshot_delete_fails_freeing() {
    run(
        |d| {
            qemu_img_ok(d, &["create", "-q", "-f", "qcow2", "t.qcow2", "64M"]);
            qemu_io(d, "qcow2", "t.qcow2", &["write -P 42 0 64k".into()]);
            qemu_img_ok(d, &["snapshot", "-c", "foo", "t.qcow2"]);
            qemu_io(d, "qcow2", "t.qcow2", &["write -P 23 0 64k".into()]);
        },
        b"[inject-error]\nevent = \"cluster_free\"\nerrno = \"5\"\n",
        &["snapshot", "-d", "foo", "blkdebug:blkdebug.conf:t.qcow2"],
        &["t.qcow2"],
    );
}

#[test]
fn map_through_blkdebug_above_qcow2() {
    run(
        chain,
        b"",
        &[
            "map",
            "--image-opts",
            "driver=blkdebug,image.driver=qcow2,image.file.driver=file,image.file.filename=t.qcow2,align=4k",
        ],
        &[],
    );
}

/// blkdebug above qcow2 fails guest requests: block status or reads,
/// anywhere or at one sector.
#[test]
fn convert_errors_above_qcow2() {
    for (io, sector) in [
        ("block-status", ""),
        ("block-status", ", \"sector\": 1"),
        ("read", ""),
        ("read", ", \"sector\": 1"),
        ("write", ""),
    ] {
        let src = format!(
            "json:{{\"driver\": \"blkdebug\", \"image\": {{\"driver\": \"qcow2\", \
             \"file\": {{\"driver\": \"file\", \"filename\": \"t.qcow2\"}}}}, \
             \"inject-error\": [{{\"event\": \"none\", \"iotype\": \"{io}\", \
             \"errno\": 5{sector}}}]}}"
        );
        run(single, b"", &["convert", "-O", "raw", &src, "out.raw"], &[]);
    }
}

#[test]
fn probe_read_error_from_json_options() {
    run(
        single,
        b"",
        &[
            "info",
            "json:{\"driver\": \"qcow2\", \"file\": {\"driver\": \"blkdebug\", \
             \"inject-error\": [{\"event\": \"none\", \"errno\": 28}], \
             \"image\": {\"driver\": \"file\", \"filename\": \"t.qcow2\"}}}",
        ],
        &[],
    );
}

#[test]
fn convert_read_error_below_qcow2() {
    run(
        single,
        CONF_EIO_READ,
        &[
            "convert",
            "-O",
            "raw",
            "blkdebug:blkdebug.conf:t.qcow2",
            "out.raw",
        ],
        &[],
    );
}

#[test]
fn filename_forms() {
    for arg in [
        "blkdebug:",
        "blkdebug:t.qcow2",
        "blkdebug::",
        "blkdebug::nonexist.qcow2",
        "blkdebug:nonexist.conf:t.qcow2",
        "blkdebug:blkdebug.conf:t.qcow2",
        "blkdebug:.:t.qcow2",
        "blkdebug:/dev/null:t.qcow2",
    ] {
        run(single, CONF_EIO_READ, &["check", arg], &[]);
    }
}

/// Config files qemu-img refuses (or reads oddly): each must give the same
/// error, never a panic or a hang.
#[test]
fn hostile_config_files() {
    let long_key = format!("[inject-error]\n{} = \"1\"\n", "k".repeat(5000));
    let long_value = format!("[inject-error]\nevent = \"{}\"\n", "v".repeat(5000));
    let cases: Vec<Vec<u8>> = vec![
        b"garbage\n".to_vec(),
        b"a = \"b\"\n".to_vec(),
        b"[foo]\nevent = \"x\"\n".to_vec(),
        b"[inject-error]\n".to_vec(),
        b"[inject-error]\nevent = \"bogus\"\n".to_vec(),
        b"[inject-error]\nevent = \"read_aio\"\nerrno = \"abc\"\n".to_vec(),
        b"[inject-error]\nevent = \"read_aio\"\nerrno = \"99999999999999999999999\"\n".to_vec(),
        b"[inject-error]\nevent = \"none\"\nerrno = \"4294967301\"\n".to_vec(),
        b"[inject-error]\nevent = \"none\"\nerrno = \"-5\"\n".to_vec(),
        b"[inject-error]\nevent = \"none\"\nerrno = \"0x1c\"\n".to_vec(),
        b"[inject-error]\nevent = \"none\"\nerrno = \"7\"\n".to_vec(),
        b"[inject-error]\nevent = \"none\"\nsector = \"18446744073709551615\"\n".to_vec(),
        b"[inject-error]\nevent = \"none\"\nsector = \"0\"\n".to_vec(),
        b"[inject-error]\nevent = \"none\"\nonce = \"maybe\"\n".to_vec(),
        b"[inject-error]\nevent = \"none\"\niotype = \"x\"\n".to_vec(),
        b"[inject-error]\nevent = \"none\"\nfoo = \"1\"\n".to_vec(),
        b"[inject-error]\nevent = \"none\"\nerrno=\"7\"\n".to_vec(),
        b"[inject-error]\nevent = \"none\"\nstate = \"2\"\n".to_vec(),
        b"[set-state]\nevent = \"none\"\nnew_state = \"x\"\n".to_vec(),
        b"[inject-error \"a\"]\nevent = \"none\"\n[inject-error \"a\"]\nevent = \"none\"\n"
            .to_vec(),
        b"[inject-error\nevent = \"none\"\n".to_vec(),
        b"[]\n".to_vec(),
        b"   \n".to_vec(),
        b"\xff\xfe\x00\x01[\x80]\n".to_vec(),
        b"[inject-error]\nevent = \"none\"\x00garbage\nerrno = \"28\"\n".to_vec(),
        vec![0u8; 5000],
        long_key.into_bytes(),
        long_value.into_bytes(),
        Vec::new(),
    ];
    for conf in cases {
        let dir = TempDir::new("blkdebug-hostile");
        single(dir.path());
        std::fs::write(dir.path().join("blkdebug.conf"), &conf).unwrap();
        let args = ["info", "blkdebug:blkdebug.conf:t.qcow2"];
        let q = qemu_img(dir.path(), &args);
        let o = imgtool(dir.path(), &args);
        assert_eq!(
            o.code,
            q.code,
            "config {:?}\n=== qemu-img\n{}\n=== imgtool\n{}",
            String::from_utf8_lossy(&conf),
            q.describe(),
            o.describe()
        );
        if !q.ok() {
            assert_text_eq(
                &format!("config {:?}", String::from_utf8_lossy(&conf)),
                &as_imgtool(&q.stderr),
                &o.stderr,
            );
        }
    }
}

/// `convert --salvage` through blkdebug above qcow2 (iotest 251's shape):
/// block status and reads failing at single sectors and a run of them.
#[test]
fn convert_salvage_above_qcow2() {
    let mut rules = Vec::new();
    for s in [32784u64, 67585] {
        rules.push(format!(
            "{{\"event\": \"none\", \"iotype\": \"block-status\", \"errno\": 5, \"sector\": {s}}}"
        ));
    }
    for s in [65408u64, 67585, 69632, 69633, 69634] {
        rules.push(format!(
            "{{\"event\": \"none\", \"iotype\": \"read\", \"errno\": 5, \"sector\": {s}}}"
        ));
    }
    let src = format!(
        "json:{{\"driver\": \"blkdebug\", \"image\": {{\"driver\": \"qcow2\", \
         \"file\": {{\"driver\": \"file\", \"filename\": \"t.qcow2\"}}}}, \
         \"inject-error\": [{}]}}",
        rules.join(", ")
    );
    let dir = TempDir::new("blkdebug-salvage");
    let d = dir.path();
    qemu_img_ok(d, &["create", "-q", "-f", "qcow2", "t.qcow2", "64M"]);
    qemu_io(d, "qcow2", "t.qcow2", &["write -P 42 0 64M".into()]);
    let q = qemu_img(d, &["convert", "--salvage", &src, "q.raw"]);
    let o = imgtool(d, &["convert", "--salvage", &src, "o.raw"]);
    assert_outcome_matches(&q, &o);
    assert_bytes_eq(
        "salvaged copy",
        &read(&d.join("q.raw")),
        &read(&d.join("o.raw")),
    );
}

/// `info` shows the blkdebug node between the format and its file.
#[test]
fn info_through_blkdebug() {
    for arg in ["blkdebug:blkdebug.conf:t.qcow2", "blkdebug::t.qcow2"] {
        for out in ["--output=human", "--output=json"] {
            run(chain, CONF_EIO_READ, &["info", out, arg], &[]);
        }
    }
}

/// `info` names blkdebug nodes as QEMU does: `blkdebug:CONFIG:FILE` when
/// the options fit, else a `json:` tree; above a format the node is its
/// own (format `blkdebug`, no disk size) with the format as `image`.
#[test]
fn info_names_blkdebug_nodes() {
    let dir = TempDir::new("blkdebug_info");
    let d = dir.path();
    qemu_img_ok(d, &["create", "-q", "-f", "qcow2", "t.qcow2", "1M"]);
    std::fs::write(
        d.join("bd.conf"),
        "[inject-error]\nevent = \"read_aio\"\nerrno = \"5\"\nonce = \"on\"\n",
    )
    .unwrap();
    let names = [
        r#"json:{"driver":"qcow2","file":{"driver":"blkdebug","image":{"filename":"t.qcow2"}}}"#,
        r#"json:{"driver":"qcow2","file":{"driver":"blkdebug","config":"bd.conf","image":{"filename":"t.qcow2"}}}"#,
        r#"json:{"driver":"qcow2","file":{"driver":"blkdebug","inject-error":[{"event":"read_aio"}],"image":{"filename":"t.qcow2"}}}"#,
        r#"json:{"driver":"blkdebug","config":"bd.conf","image":{"driver":"qcow2","file":{"filename":"t.qcow2"}}}"#,
        r#"json:{"driver":"blkdebug","align":512,"image":{"driver":"qcow2","file":{"filename":"t.qcow2"}}}"#,
        r#"json:{"driver":"blkdebug","inject-error":[{"event":"read_aio"}],"image":{"driver":"qcow2","file":{"filename":"t.qcow2"}}}"#,
        "blkdebug:bd.conf:t.qcow2",
    ];
    for n in names {
        same_as_qemu(d, &["info", n]);
        same_as_qemu(d, &["info", "--output=json", n]);
    }
    for o in [
        "driver=blkdebug,config=bd.conf,image.driver=qcow2,image.file.filename=t.qcow2",
        "driver=blkdebug,image.driver=qcow2,image.file.filename=t.qcow2",
        "driver=qcow2,file.driver=blkdebug,file.image.filename=t.qcow2",
    ] {
        same_as_qemu(d, &["info", "--image-opts", o]);
    }
}
