//! Process-level robustness: locks shared with QEMU, and an `imgtool
//! convert -n` killed at arbitrary moments leaves a target that `qemu-img
//! check` finds at worst leaking clusters, never corrupt (metadata is
//! ordered: data before L2, refcounts before the mappings that use them),
//! and that `check -r all` makes clean. qemu-img itself passes these (run
//! the suite with the oracle shim).

mod common;

use common::*;
use std::time::Duration;

/// While qemu-io holds an image open for writing, `info` and `convert` fail
/// with qemu-img's lock message; `-U` still works; `create` or `convert`
/// onto it are refused and leave it byte-identical.
#[test]
fn image_locked_by_qemu() {
    let dir = TempDir::new("locked");
    let d = dir.path();
    qemu_img_ok(d, &["create", "-q", "-f", "qcow2", "x.qcow2", "1M"]);
    std::fs::write(d.join("src.raw"), text_bytes(1, MIB as usize)).unwrap();
    let mut holder = std::process::Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "sleep 30000", "x.qcow2"])
        .current_dir(d)
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(d.join("qemu-io.log")).unwrap())
        .stderr(std::fs::File::create(d.join("qemu-io.err")).unwrap())
        .spawn()
        .expect("spawn qemu-io");
    // Wait until qemu-io holds its lock (qemu-img info starts failing).
    let start = std::time::Instant::now();
    loop {
        if !qemu_img(d, &["info", "x.qcow2"]).ok() {
            break;
        }
        if let Ok(Some(st)) = holder.try_wait() {
            panic!(
                "qemu-io exited ({st}) before we saw its lock: {}",
                String::from_utf8_lossy(&read(&d.join("qemu-io.err")))
            );
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "qemu-io never locked the image"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let result = std::panic::catch_unwind(|| {
        for args in [
            &["info", "x.qcow2"][..],
            &["convert", "-O", "raw", "x.qcow2", "out.raw"][..],
        ] {
            let (q, _) = same_as_qemu(d, args);
            assert_eq!(q.code, Some(1));
            assert!(q.stderr.contains("lock"), "{}", q.describe());
        }
        let (q, _) = same_as_qemu(d, &["info", "-U", "--output=json", "x.qcow2"]);
        let _ = q;
        // Writing over an image in use is refused and leaves it alone.
        let before = read(&d.join("x.qcow2"));
        for args in [
            &["create", "-f", "qcow2", "x.qcow2", "2M"][..],
            &["convert", "-O", "qcow2", "src.raw", "x.qcow2"][..],
            &["convert", "-O", "raw", "src.raw", "x.qcow2"][..],
        ] {
            let q = qemu_img(d, args);
            assert_eq!(q.code, Some(1), "{}", q.describe());
            let o = imgtool(d, args);
            assert!(
                d.join("x.qcow2").exists(),
                "{args:?} deleted an image another process has open:\n{}",
                o.describe()
            );
            assert_bytes_eq(
                &format!("{args:?} changed an image another process has open"),
                &before,
                &read(&d.join("x.qcow2")),
            );
            assert_outcome_matches(&q, &o);
        }
    });
    let _ = holder.kill();
    let _ = holder.wait();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

/// The target is created first (creation itself is not atomic in qemu-img
/// either), then `convert -n` into it is killed after various delays. Every
/// state a kill can leave must be consistent: at worst leaked clusters.
fn killed_convert(create_opts: &str, extra: &[&str]) {
    let dir = TempDir::new("killed");
    let d = dir.path();
    std::fs::write(d.join("src.raw"), mixed_raw(31, 48 * MIB)).unwrap();
    for (i, ms) in [1u64, 3, 10, 30, 60, 100, 200, 400].iter().enumerate() {
        let out = format!("out{i}.qcow2");
        let mut cr = vec!["create", "-q", "-f", "qcow2"];
        if !create_opts.is_empty() {
            cr.extend(["-o", create_opts]);
        }
        cr.extend([out.as_str(), "48M"]);
        assert!(imgtool(d, &cr).ok(), "create {out}");
        let mut c = std::process::Command::new(bin());
        c.current_dir(d)
            .args(["convert", "-n", "-O", "qcow2"])
            .args(extra);
        c.args(["src.raw", &out]);
        let o = run_with_timeout(&mut c, Duration::from_millis(*ms));
        assert!(!o.stderr.contains("panicked"), "{}", o.describe());
        let chk = qemu_img(d, &["check", "-f", "qcow2", &out]);
        assert!(
            chk.code == Some(0) || chk.code == Some(3),
            "convert killed after {ms} ms left a corrupt target (only leaks are acceptable):\n{}",
            chk.describe()
        );
        let rep = qemu_img(d, &["check", "-r", "all", "-f", "qcow2", &out]);
        assert!(
            rep.ok(),
            "check -r all could not repair:\n{}",
            rep.describe()
        );
        assert_qemu_check_clean(d, &out);
        let _ = std::fs::remove_file(d.join(&out));
    }
}

#[test]
fn killed_convert_leaves_consistent_qcow2() {
    killed_convert("", &[]);
}

#[test]
fn killed_compressed_convert_leaves_consistent_qcow2() {
    killed_convert("", &["-c"]);
}

#[test]
fn killed_convert_512_byte_clusters() {
    killed_convert("cluster_size=512", &[]);
}
