//! `imgtool bench` against `qemu-img bench`: the same lines (the run time
//! aside), messages and exit codes for every option and its errors, and
//! write runs that leave the same bytes behind. No timing assertions.

mod common;

use common::*;
use std::path::Path;

/// Replace the run time (`Run completed in 0.123 seconds.`) with `T`,
/// checking its shape on the way.
fn normalize(stdout: &str) -> String {
    stdout
        .lines()
        .map(|l| match l.strip_prefix("Run completed in ") {
            Some(rest) => {
                let secs = rest
                    .strip_suffix(" seconds.")
                    .unwrap_or_else(|| panic!("bad summary line {l:?}"));
                let (whole, frac) = secs
                    .split_once('.')
                    .unwrap_or_else(|| panic!("bad time {secs:?}"));
                assert!(
                    !whole.is_empty()
                        && whole.bytes().all(|c| c.is_ascii_digit())
                        && frac.len() == 3
                        && frac.bytes().all(|c| c.is_ascii_digit()),
                    "bad time {secs:?}"
                );
                "Run completed in T seconds.\n".to_string()
            }
            None => format!("{l}\n"),
        })
        .collect()
}

fn same(dir: &Path, args: &[&str]) {
    let mut q = qemu_img(dir, args);
    assert!(!q.timed_out, "oracle hung:\n{}", q.describe());
    q.stderr = q
        .stderr
        .lines()
        .map(|l| match l.strip_prefix("qemu-img ") {
            Some(r) => format!("imgtool {r}\n"),
            None => format!("{l}\n"),
        })
        .collect();
    if args.iter().any(|a| *a == "-h" || *a == "--help") {
        q.stdout = q.stdout.replace("qemu-img", "imgtool");
    }
    q.stdout = normalize(&q.stdout);
    let mut o = imgtool(dir, args);
    o.stdout = normalize(&o.stdout);
    assert_outcome_matches(&q, &o);
}

fn images(d: &Path) {
    qemu_img_ok(d, &["create", "-q", "-f", "raw", "r.raw", "1M"]);
    qemu_img_ok(d, &["create", "-q", "-f", "qcow2", "q.qcow2", "4M"]);
    qemu_io(d, "qcow2", "q.qcow2", &["write -P 1 0 1M".into()]);
    qemu_img_ok(
        d,
        &[
            "create", "-q", "-f", "qcow2", "-b", "q.qcow2", "-F", "qcow2", "t.qcow2",
        ],
    );
}

#[test]
fn bench_runs() {
    let dir = TempDir::new("bench_runs");
    let d = dir.path();
    images(d);
    let cases: &[&[&str]] = &[
        &["bench", "r.raw"],
        &["bench", "-c", "10", "r.raw"],
        &["bench", "-c", "10", "-w", "r.raw"],
        &["bench", "-c", "0x10", "-d", "010", "r.raw"],
        &["bench", "-c", "100", "-d", "1", "-f", "qcow2", "q.qcow2"],
        &[
            "bench", "-c", "1000", "-d", "3", "-S", "7777", "-s", "1000", "t.qcow2",
        ],
        &[
            "bench", "-c", "3", "-S", "100", "-s", "10", "-o", "7", "-d", "2", "r.raw",
        ],
        &[
            "bench",
            "-c",
            "200",
            "-w",
            "-d",
            "8",
            "--flush-interval=16",
            "q.qcow2",
        ],
        &[
            "bench",
            "-c",
            "130",
            "-w",
            "--flush-interval=64",
            "--no-drain",
            "-q",
            "-f",
            "raw",
            "r.raw",
        ],
        &[
            "bench",
            "-c",
            "5",
            "-w",
            "--flush-interval=0",
            "-f",
            "raw",
            "r.raw",
        ],
        &["bench", "-c", "5", "-t", "none", "r.raw"],
        &[
            "bench",
            "-c",
            "5",
            "-t",
            "directsync",
            "-w",
            "-f",
            "raw",
            "r.raw",
        ],
        &[
            "bench", "-c", "5", "-t", "unsafe", "-i", "threads", "q.qcow2",
        ],
        &["bench", "-c", "5", "-i", "io_uring", "r.raw"],
        &["bench", "-c", "5", "-i", "native", "-t", "none", "r.raw"],
        &["bench", "-c", "5", "-n", "-t", "none", "r.raw"],
        &["bench", "-c", "5", "-U", "q.qcow2"],
        &[
            "bench",
            "-c",
            "1",
            "--image-opts",
            "driver=raw,file.filename=r.raw",
        ],
        &[
            "bench",
            "--co",
            "3",
            "--de",
            "2",
            "--buffer-size",
            "1k",
            "--step-size",
            "3k",
            "r.raw",
        ],
        &[
            "bench",
            "--count=3",
            "--offset=4k",
            "--write",
            "--pattern=0x41",
            "q.qcow2",
        ],
        &[
            "bench",
            "--count=3",
            "--cache=writethrough",
            "--aio=threads",
            "r.raw",
        ],
        &["bench", "-c", "1", "-s", "1", "-o", "1048575", "r.raw"],
        &["bench", "-c", "4", "-s", "1M", "r.raw"],
    ];
    for c in cases {
        same(d, c);
    }
}

/// Requests that fail (past the end of the image) end the run with
/// qemu-img's message and exit code.
#[test]
fn bench_failed_requests() {
    let dir = TempDir::new("bench_fail");
    let d = dir.path();
    images(d);
    for c in [
        &["bench", "-c", "1", "-o", "2M", "r.raw"][..],
        &["bench", "-c", "1", "-o", "1047000", "r.raw"],
        &["bench", "-c", "1", "-s", "2M", "r.raw"],
        &["bench", "-c", "1", "-w", "-o", "4M", "q.qcow2"],
        // The offset wraps at the image size, so a later request crosses it.
        &[
            "bench", "-c", "9", "-d", "1", "-s", "7k", "-S", "33k", "-w", "-f", "raw", "r.raw",
        ],
        &[
            "bench", "-c", "40", "-d", "1", "-s", "300k", "-S", "330k", "r.raw",
        ],
    ] {
        same(d, c);
    }
}

/// Write runs leave the same bytes as qemu-img's: the pattern at each
/// request's offset, with the step wrapping inside the image.
#[test]
fn bench_writes_same_bytes() {
    let dir = TempDir::new("bench_bytes");
    let qd = dir.sub("q");
    let od = dir.sub("o");
    let runs: &[&[&str]] = &[
        &["-c", "7", "-s", "4k", "-S", "8k", "--pattern=0x5a"],
        &[
            "-c",
            "50",
            "-s",
            "3000",
            "-S",
            "70001",
            "-o",
            "12345",
            "--pattern=7",
        ],
        &[
            "-c",
            "64",
            "-d",
            "4",
            "-s",
            "64k",
            "-S",
            "192k",
            "--pattern=0xee",
        ],
        &[
            "-c",
            "300",
            "-d",
            "16",
            "-s",
            "512",
            "-S",
            "1M",
            "--pattern=0x11",
        ],
    ];
    for (i, r) in runs.iter().enumerate() {
        for (fmt, file) in [("qcow2", "w.qcow2"), ("raw", "w.raw")] {
            for d in [&qd, &od] {
                let _ = std::fs::remove_file(d.join(file));
                qemu_img_ok(d, &["create", "-q", "-f", fmt, file, "5M"]);
            }
            let mut args = vec!["bench", "-w", "-f", fmt];
            args.extend_from_slice(r);
            args.push(file);
            let q = qemu_img(&qd, &args);
            let o = imgtool(&od, &args);
            assert_eq!(
                q.code,
                o.code,
                "run {i} {fmt}:\n{}\n{}",
                q.describe(),
                o.describe()
            );
            assert_bytes_eq(
                &format!("run {i} {fmt}: bytes after bench"),
                &qemu_raw_bytes(&qd, file),
                &qemu_raw_bytes(&od, file),
            );
            if fmt == "qcow2" {
                assert_qemu_check_clean(&od, file);
            }
        }
    }
}

#[test]
fn bench_option_errors() {
    let dir = TempDir::new("bench_err");
    let d = dir.path();
    images(d);
    let cases: &[&[&str]] = &[
        &["bench"],
        &["bench", "r.raw", "r.raw"],
        &["bench", "-c", "x", "r.raw"],
        &["bench", "-c", "-1", "r.raw"],
        &["bench", "-c", "0", "r.raw"],
        &["bench", "-c", "2147483648", "r.raw"],
        &["bench", "-c", "1.5k", "r.raw"],
        &["bench", "-d", "0", "r.raw"],
        &["bench", "-d", "x", "r.raw"],
        &["bench", "-d", "2147483648", "r.raw"],
        &["bench", "-s", "1x", "r.raw"],
        &["bench", "-s", "0", "r.raw"],
        &["bench", "-s", "3G", "r.raw"],
        &["bench", "-S", "1x", "r.raw"],
        &["bench", "-S", "-1", "r.raw"],
        &["bench", "-S", "3G", "r.raw"],
        &["bench", "-o", "1x", "r.raw"],
        &["bench", "-o", "-1", "r.raw"],
        &["bench", "-t", "foo", "r.raw"],
        &["bench", "-i", "foo", "r.raw"],
        &["bench", "-c", "1", "-i", "native", "r.raw"],
        &["bench", "-c", "1", "-n", "r.raw"],
        &["bench", "-c", "1", "-n", "-i", "threads", "r.raw"],
        &["bench", "--pattern=256", "r.raw"],
        &["bench", "--pattern=-1", "r.raw"],
        &["bench", "--pattern=x", "r.raw"],
        &["bench", "--flush-interval=5", "r.raw"],
        &["bench", "-w", "--flush-interval=5", "r.raw"],
        &["bench", "-w", "--flush-interval=x", "r.raw"],
        &["bench", "-w", "--flush-interval=-1", "r.raw"],
        &["bench", "-w", "--flush-interval=2147483648", "r.raw"],
        &["bench", "-c", "1", "-w", "-U", "q.qcow2"],
        &["bench", "-c", "5", "-f", "qcow2", "r.raw"],
        &["bench", "-c", "5", "nonexist"],
        &["bench", "--image-opts", "-f", "raw", "r.raw"],
        &["bench", "--i", "r.raw"],
        &["bench", "--c", "1", "r.raw"],
        &["bench", "--f", "r.raw"],
        &["bench", "--n", "r.raw"],
        &["bench", "--q", "r.raw"],
        &["bench", "--quiet", "r.raw"],
        &["bench", "--object", "secret,id=s,data=x", "r.raw"],
        &["bench", "-x", "r.raw"],
        &["bench", "-c"],
        &["bench", "--foo", "r.raw"],
        &["bench", "--help"],
        &["bench", "-h"],
    ];
    for c in cases {
        same(d, c);
    }
}
