//! Helpers shared by the library integration tests (`tests/*.rs`) and the
//! CLI integration tests (`cli/tests/*.rs`, which include this file by path).
//!
//! Everything here is about the *oracle* side: temp dirs, running
//! `qemu-img`/`qemu-io` with a timeout, deterministic data, building the
//! qcow2 variants every differential test works on, and a tiny JSON parser
//! for structural comparisons. Expected values always come from running
//! qemu-img, never from imgtool itself.
#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub const KIB: u64 = 1024;
pub const MIB: u64 = 1024 * 1024;

/// How long any child may run before it counts as hung. Small images only,
/// so this is a hang detector, not a performance assertion.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------- temp dirs

/// A unique directory under the system temp dir, removed on drop (kept when
/// `IMGTOOL_KEEP_TMP` is set, to debug a failure).
pub struct TempDir {
    path: PathBuf,
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let tag: String = tag
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let path = std::env::temp_dir().join(format!(
            "imgtool-test-{}-{}-{}-{}",
            std::process::id(),
            n,
            nanos,
            tag
        ));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir { path }
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn join(&self, p: &str) -> PathBuf {
        self.path.join(p)
    }
    /// A subdirectory (created).
    pub fn sub(&self, p: &str) -> PathBuf {
        let d = self.path.join(p);
        std::fs::create_dir_all(&d).expect("create subdir");
        d
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("IMGTOOL_KEEP_TMP").is_none() {
            let _ = std::fs::remove_dir_all(&self.path);
        } else {
            eprintln!("keeping {}", self.path.display());
        }
    }
}

// ------------------------------------------------------- running children

/// Outcome of one child process.
#[derive(Debug, Clone)]
pub struct Out {
    pub cmdline: String,
    /// Exit code; None when killed by a signal (or by our timeout).
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
    pub elapsed: Duration,
}

impl Out {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }
    pub fn describe(&self) -> String {
        format!(
            "$ {}\n-> code {:?} signal {:?}{} after {:?}\n--- stdout\n{}--- stderr\n{}---",
            self.cmdline,
            self.code,
            self.signal,
            if self.timed_out { " (TIMED OUT)" } else { "" },
            self.elapsed,
            self.stdout,
            self.stderr
        )
    }
    /// Panic unless the child exited 0.
    pub fn expect_ok(self) -> Out {
        if !self.ok() {
            panic!("command failed:\n{}", self.describe());
        }
        self
    }
}

fn pump<R: Read + Send + 'static>(r: Option<R>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(mut r) = r {
            let _ = r.read_to_end(&mut v);
        }
        v
    })
}

/// Run `cmd` with stdin closed and stdout/stderr captured; kill it (and
/// report `timed_out`) when it runs longer than `timeout`.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Out {
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    let cmdline = format!("{cmd:?}");
    // Own process group, so a timeout kills grandchildren too (a shell
    // wrapper's qemu-img would otherwise keep our pipes open forever).
    cmd.process_group(0);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn {cmdline}: {e}"));
    let out_t = pump(child.stdout.take());
    let err_t = pump(child.stderr.take());
    let mut timed_out = false;
    let status = loop {
        match child.try_wait().expect("wait for child") {
            Some(s) => break s,
            None => {
                if start.elapsed() > timeout {
                    timed_out = true;
                    // SAFETY: plain syscall on the group we created.
                    unsafe {
                        libc::kill(-(child.id() as i32), libc::SIGKILL);
                    }
                    let _ = child.kill();
                    break child.wait().expect("wait for killed child");
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    };
    let elapsed = start.elapsed();
    let stdout = String::from_utf8_lossy(&out_t.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&err_t.join().unwrap_or_default()).into_owned();
    Out {
        cmdline,
        code: status.code(),
        signal: status.signal(),
        stdout,
        stderr,
        timed_out,
        elapsed,
    }
}

/// `qemu-img ARGS` in `dir` (relative file names resolve there).
pub fn qemu_img(dir: &Path, args: &[&str]) -> Out {
    let mut c = Command::new("qemu-img");
    c.args(args).current_dir(dir);
    run_with_timeout(&mut c, DEFAULT_TIMEOUT)
}

/// `qemu-img ARGS` that must succeed; returns stdout.
pub fn qemu_img_ok(dir: &Path, args: &[&str]) -> String {
    qemu_img(dir, args).expect_ok().stdout
}

/// Run qemu-io commands on one image (format given explicitly); every
/// command must succeed (qemu-io exits 0 even when a command fails, so a
/// non-empty stderr counts as failure too).
pub fn qemu_io(dir: &Path, fmt: &str, file: &str, cmds: &[String]) {
    let mut c = Command::new("qemu-io");
    c.current_dir(dir).arg("-f").arg(fmt);
    for cmd in cmds {
        c.arg("-c").arg(cmd);
    }
    c.arg(file);
    let o = run_with_timeout(&mut c, DEFAULT_TIMEOUT);
    if !o.ok() || !o.stderr.is_empty() || o.stdout.contains("failed") {
        panic!("qemu-io failed:\n{}", o.describe());
    }
}

/// Like [`qemu_io`] but the last command is `abort`, leaving the image as a
/// crashed QEMU would (dirty with lazy refcounts). No core file is written.
pub fn qemu_io_then_abort(dir: &Path, fmt: &str, file: &str, cmds: &[String]) {
    let mut script = String::from("ulimit -c 0; exec qemu-io -f \"$0\"");
    for (i, _) in cmds.iter().enumerate() {
        script.push_str(&format!(" -c \"${{{}}}\"", i + 2));
    }
    script.push_str(" -c abort \"$1\"");
    let mut c = Command::new("sh");
    c.current_dir(dir).arg("-c").arg(script).arg(fmt).arg(file);
    c.args(cmds);
    let o = run_with_timeout(&mut c, DEFAULT_TIMEOUT);
    // SIGABRT is the expected way out.
    if o.signal != Some(6) && o.code != Some(134) {
        panic!("qemu-io abort did not abort:\n{}", o.describe());
    }
}

/// Replace the program name in qemu-img's messages as our binary prints
/// them: `qemu-img...` at the start of a line and the `Try 'qemu-img ...`
/// hints.
pub fn as_imgtool(qemu_text: &str) -> String {
    qemu_text
        .lines()
        .map(|l| {
            // `qemu-img: msg`, and getopt's `qemu-img create: invalid option`.
            let l = match l.strip_prefix("qemu-img") {
                Some(rest) if rest.starts_with(':') || rest.starts_with(' ') => {
                    format!("imgtool{rest}")
                }
                _ => l.to_string(),
            };
            l.replace("Try 'qemu-img ", "Try 'imgtool ")
        })
        .map(|l| l + "\n")
        .collect()
}

// ----------------------------------------------------------- data makers

/// splitmix64: small, deterministic, good enough for test data and op mixes.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// Incompressible bytes.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    Rng::new(seed).fill(&mut v);
    v
}

/// Compressible, text-like bytes (words from a small vocabulary).
pub fn text_bytes(seed: u64, len: usize) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "qcow2", "cluster", "refcount", "table", "the", "image", "backing", "of", "data", "zero",
        "L2", "entry", "offset", "and", "snapshot", "header", "guest", "host", "\n",
    ];
    let mut r = Rng::new(seed);
    let mut v = Vec::with_capacity(len + 16);
    while v.len() < len {
        v.extend_from_slice(WORDS[r.below(WORDS.len() as u64) as usize].as_bytes());
        v.push(b' ');
    }
    v.truncate(len);
    v
}

pub fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

/// First differing byte of two buffers, for readable failures.
pub fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    if a.len() != b.len() {
        return Some(
            a.iter()
                .zip(b)
                .position(|(x, y)| x != y)
                .unwrap_or(a.len().min(b.len())),
        );
    }
    a.iter().zip(b).position(|(x, y)| x != y)
}

pub fn assert_bytes_eq(what: &str, expected: &[u8], actual: &[u8]) {
    if let Some(i) = first_difference(expected, actual) {
        panic!(
            "{what}: differs at byte {i} (expected len {}, actual len {}; expected {:02x?}, actual {:02x?})",
            expected.len(),
            actual.len(),
            expected.get(i..(i + 16).min(expected.len())).unwrap_or(&[]),
            actual.get(i..(i + 16).min(actual.len())).unwrap_or(&[]),
        );
    }
}

/// Compare texts and print the first differing line with context.
pub fn assert_text_eq(what: &str, expected: &str, actual: &str) {
    if expected == actual {
        return;
    }
    let e: Vec<&str> = expected.lines().collect();
    let a: Vec<&str> = actual.lines().collect();
    let i = e
        .iter()
        .zip(&a)
        .position(|(x, y)| x != y)
        .unwrap_or(e.len().min(a.len()));
    panic!(
        "{what}: texts differ at line {} (expected {:?}, actual {:?})\n=== expected (qemu-img)\n{expected}\n=== actual (imgtool)\n{actual}\n===",
        i + 1,
        e.get(i),
        a.get(i)
    );
}

/// Drop the lines that legitimately differ between two hosts/files.
pub fn drop_lines(text: &str, pred: impl Fn(&str) -> bool) -> String {
    text.lines()
        .filter(|l| !pred(l))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// `info --output=json` text without the `actual-size` members.
pub fn json_without_actual_size(text: &str) -> String {
    drop_lines(text, |l| l.trim_start().starts_with("\"actual-size\":"))
}

/// Human `info` text without `disk size:` lines.
pub fn human_without_disk_size(text: &str) -> String {
    drop_lines(text, |l| l.trim_start().starts_with("disk size:"))
}

// ------------------------------------------------------- qcow2 variants

/// A built test image: the file to open (relative to its dir), its format,
/// and the `-o` options that recreate "the same kind" of image on convert.
#[derive(Debug, Clone)]
pub struct Built {
    pub file: String,
    pub format: &'static str,
    pub convert_opts: String,
    pub size: u64,
}

/// Every qcow2 variant the differential tests cover.
pub const VARIANTS: &[&str] = &[
    "compat_010",
    "compat_11",
    "cluster_512",
    "cluster_64k",
    "cluster_2m",
    "refcount_1",
    "refcount_16",
    "refcount_64",
    "extended_l2",
    "lazy_refcounts",
    "lazy_refcounts_dirty",
    "compressed_zlib",
    "compressed_zstd",
    "prealloc_metadata",
    "chain3",
    "chain3_raw_base",
    "data_file",
    "data_file_raw",
    "internal_snapshots",
    "odd_size",
    "zero_size",
];

fn put(dir: &Path, name: &str, data: &[u8]) {
    std::fs::write(dir.join(name), data).expect("write data file");
}

/// Data files qemu-io's `write -s` reads from (it always starts at byte 0
/// of the file, so each write that should differ gets its own file).
fn data_files(dir: &Path, seed: u64) {
    put(dir, "r1.bin", &random_bytes(seed + 1, MIB as usize));
    put(dir, "r2.bin", &random_bytes(seed + 2, MIB as usize));
    put(dir, "r3.bin", &random_bytes(seed + 3, MIB as usize));
    put(dir, "t1.bin", &text_bytes(seed + 4, MIB as usize));
    put(dir, "t2.bin", &text_bytes(seed + 5, MIB as usize));
}

/// Writes that exercise partial clusters, unaligned heads and tails,
/// zeroes over data and over nothing, discards, and the last cluster.
pub fn standard_writes(size: u64) -> Vec<String> {
    let k = |n: u64| n * KIB;
    let mut v = vec![
        format!("write -s r1.bin 0 {}", k(200)),
        format!("write -P 0x5a {} {}", k(300), k(70)),
        "write -P 0x77 513 1000".to_string(),
        format!("write -s t1.bin {} {}", MIB, k(256)),
        format!("write -z {} {}", k(1100), k(50)),
        format!("write -z {} {}", 2 * MIB, k(192)),
        format!("write -P 0x11 {} {}", 3 * MIB - k(256), k(384)),
        format!("discard {} {}", 3 * MIB - k(256), k(64)),
        format!("write -z {} {}", 3 * MIB, k(8)),
        format!("write -s r2.bin {} {}", size - k(40), k(40)),
    ];
    if size > 6 * MIB {
        v.push(format!("write -s r3.bin {} {}", 5 * MIB + 4096, MIB));
        v.push(format!("write -s t2.bin {} {}", 7 * MIB - 17, 4096));
    }
    v
}

/// A raw file with a realistic mix: random, text-like, zeros, a repeated
/// byte, and a fine-grained mix of all of them.
pub fn mixed_raw(seed: u64, size: u64) -> Vec<u8> {
    let mut v = vec![0u8; size as usize];
    let mut r = Rng::new(seed);
    let mut off = 0usize;
    let mut i = 0u64;
    while off < v.len() {
        let len = ((16 + r.below(48)) * KIB) as usize;
        let end = (off + len).min(v.len());
        match i % 5 {
            0 => r.fill(&mut v[off..end]),
            1 => {
                let t = text_bytes(seed + i, end - off);
                v[off..end].copy_from_slice(&t);
            }
            2 => {}
            3 => v[off..end].fill(0x42),
            _ => {
                for (j, b) in v[off..end].iter_mut().enumerate() {
                    *b = ((j / 512) as u8).wrapping_mul(31);
                }
            }
        }
        off = end;
        i += 1 + r.below(3);
    }
    v
}

fn create(dir: &Path, file: &str, opts: &str, size: Option<u64>, extra: &[&str]) {
    let mut args: Vec<String> = vec!["create".into(), "-q".into(), "-f".into(), "qcow2".into()];
    if !opts.is_empty() {
        args.push("-o".into());
        args.push(opts.into());
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push(file.into());
    if let Some(s) = size {
        args.push(s.to_string());
    }
    let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    qemu_img_ok(dir, &a);
}

/// Build variant `name` in `dir` with qemu-img/qemu-io only.
pub fn build_variant(name: &str, dir: &Path) -> Built {
    data_files(dir, 7);
    let simple = |opts: &str, size: u64| -> Built {
        create(dir, "img.qcow2", opts, Some(size), &[]);
        qemu_io(dir, "qcow2", "img.qcow2", &standard_writes(size));
        Built {
            file: "img.qcow2".into(),
            format: "qcow2",
            convert_opts: opts.to_string(),
            size,
        }
    };
    let four = 4 * MIB;
    match name {
        "compat_010" => simple("compat=0.10", four),
        "compat_11" => simple("compat=1.1", four),
        "cluster_512" => simple("cluster_size=512", four),
        "cluster_64k" => simple("cluster_size=65536", four),
        "cluster_2m" => simple("cluster_size=2M", 8 * MIB),
        "refcount_1" => simple("refcount_bits=1", four),
        "refcount_16" => simple("refcount_bits=16", four),
        "refcount_64" => simple("refcount_bits=64", four),
        "extended_l2" => simple("extended_l2=on", four),
        "lazy_refcounts" => simple("lazy_refcounts=on", four),
        "prealloc_metadata" => simple("preallocation=metadata", four),
        "lazy_refcounts_dirty" => {
            create(dir, "img.qcow2", "lazy_refcounts=on", Some(four), &[]);
            let mut w = standard_writes(four);
            w.push("flush".into());
            qemu_io_then_abort(dir, "qcow2", "img.qcow2", &w);
            Built {
                file: "img.qcow2".into(),
                format: "qcow2",
                convert_opts: "lazy_refcounts=on".into(),
                size: four,
            }
        }
        "compressed_zlib" | "compressed_zstd" => {
            let ct = if name.ends_with("zlib") {
                "zlib"
            } else {
                "zstd"
            };
            put(dir, "src.raw", &mixed_raw(11, four));
            let o = format!("compression_type={ct}");
            qemu_img_ok(
                dir,
                &[
                    "convert",
                    "-c",
                    "-f",
                    "raw",
                    "-O",
                    "qcow2",
                    "-o",
                    &o,
                    "src.raw",
                    "img.qcow2",
                ],
            );
            // Partial overwrites of compressed clusters, a compressed write,
            // zeroes over compressed data.
            qemu_io(
                dir,
                "qcow2",
                "img.qcow2",
                &[
                    format!("write -P 0x99 {} {}", 1100 * KIB + 7, 10 * KIB),
                    // Compressed writes need unallocated clusters.
                    format!("discard {} {}", 2 * MIB, 192 * KIB),
                    format!("write -c -s r1.bin {} {}", 2 * MIB, 64 * KIB),
                    format!("write -c -s t1.bin {} {}", 2 * MIB + 128 * KIB, 64 * KIB),
                    format!("write -z {} {}", 3 * MIB, 64 * KIB),
                    format!("write -z {} {}", 3 * MIB + 100 * KIB, 3 * KIB),
                    format!("discard {} {}", 512 * KIB, 64 * KIB),
                ],
            );
            Built {
                file: "img.qcow2".into(),
                format: "qcow2",
                convert_opts: o,
                size: four,
            }
        }
        "chain3" => {
            create(dir, "base.qcow2", "", Some(four), &[]);
            qemu_io(
                dir,
                "qcow2",
                "base.qcow2",
                &[
                    format!("write -s r1.bin 0 {MIB}"),
                    format!("write -P 0xb1 {} {}", 2 * MIB, 512 * KIB),
                    format!("write -s t1.bin {} {}", 3 * MIB, 512 * KIB),
                ],
            );
            create(
                dir,
                "mid.qcow2",
                "",
                None,
                &["-b", "base.qcow2", "-F", "qcow2"],
            );
            qemu_io(dir, "qcow2", "mid.qcow2", &chain_mid_writes());
            create(
                dir,
                "top.qcow2",
                "",
                Some(6 * MIB),
                &["-b", "mid.qcow2", "-F", "qcow2"],
            );
            qemu_io(dir, "qcow2", "top.qcow2", &chain_top_writes());
            Built {
                file: "top.qcow2".into(),
                format: "qcow2",
                convert_opts: String::new(),
                size: 6 * MIB,
            }
        }
        "chain3_raw_base" => {
            put(dir, "base.raw", &mixed_raw(23, four));
            create(
                dir,
                "mid.qcow2",
                "compat=0.10",
                None,
                &["-b", "base.raw", "-F", "raw"],
            );
            qemu_io(dir, "qcow2", "mid.qcow2", &chain_mid_writes());
            create(
                dir,
                "top.qcow2",
                "cluster_size=4096",
                Some(5 * MIB),
                &["-b", "mid.qcow2", "-F", "qcow2"],
            );
            qemu_io(dir, "qcow2", "top.qcow2", &chain_top_writes());
            Built {
                file: "top.qcow2".into(),
                format: "qcow2",
                convert_opts: "cluster_size=4096".into(),
                size: 5 * MIB,
            }
        }
        "data_file" | "data_file_raw" => {
            let extra = if name == "data_file_raw" {
                ",data_file_raw=on"
            } else {
                ""
            };
            // qemu resolves a relative data file name against the current
            // directory, not the image's; an absolute one lets the tests run
            // from any directory.
            let data = dir.join("img.data");
            let o = format!("data_file={}{extra}", data.display());
            create(dir, "img.qcow2", &o, Some(four), &[]);
            qemu_io(dir, "qcow2", "img.qcow2", &standard_writes(four));
            Built {
                file: "img.qcow2".into(),
                format: "qcow2",
                convert_opts: format!("data_file=out.data{extra}"),
                size: four,
            }
        }
        "internal_snapshots" => {
            create(dir, "img.qcow2", "", Some(four), &[]);
            qemu_io(dir, "qcow2", "img.qcow2", &chain_mid_writes());
            qemu_img_ok(dir, &["snapshot", "-c", "first", "img.qcow2"]);
            qemu_io(dir, "qcow2", "img.qcow2", &standard_writes(four));
            qemu_img_ok(dir, &["snapshot", "-c", "second one", "img.qcow2"]);
            qemu_io(dir, "qcow2", "img.qcow2", &chain_top_writes()[..2]);
            Built {
                file: "img.qcow2".into(),
                format: "qcow2",
                convert_opts: String::new(),
                size: four,
            }
        }
        "odd_size" => {
            // Not a multiple of 512: qemu rounds the virtual size up.
            create(dir, "img.qcow2", "", Some(four + 1000), &[]);
            qemu_io(dir, "qcow2", "img.qcow2", &standard_writes(four + 1024));
            Built {
                file: "img.qcow2".into(),
                format: "qcow2",
                convert_opts: String::new(),
                size: four + 1024,
            }
        }
        "zero_size" => {
            create(dir, "img.qcow2", "", Some(0), &[]);
            Built {
                file: "img.qcow2".into(),
                format: "qcow2",
                convert_opts: String::new(),
                size: 0,
            }
        }
        other => panic!("unknown variant {other}"),
    }
}

fn chain_mid_writes() -> Vec<String> {
    vec![
        format!("write -P 0xc1 {} {}", 512 * KIB, MIB),
        format!("write -z {} {}", 2 * MIB + 100 * KIB, 100 * KIB),
        format!("write -z {} {}", 3 * MIB, 128 * KIB),
        format!("discard {} {}", 3 * MIB + 256 * KIB, 64 * KIB),
        format!("write -s r2.bin {} {}", 3 * MIB + 300 * KIB + 5, 33 * KIB),
    ]
}

fn chain_top_writes() -> Vec<String> {
    vec![
        format!("write -P 0xd1 {} {}", 3 * MIB, 100 * KIB),
        format!("write -z {} {}", 100 * KIB, 50 * KIB),
        format!("write -s t2.bin {} {}", 4 * MIB, 768 * KIB),
        format!("discard {} {}", 512 * KIB, 64 * KIB),
        format!("write -P 0xd2 {} {}", 2 * MIB + 150 * KIB + 1, 10),
    ]
}

/// The guest bytes of `file` as qemu-img sees them (`convert -O raw`).
pub fn qemu_raw_bytes(dir: &Path, file: &str) -> Vec<u8> {
    let out = format!("{file}.qemu-ref.raw");
    qemu_img_ok(dir, &["convert", "-O", "raw", file, &out]);
    let v = read(&dir.join(&out));
    let _ = std::fs::remove_file(dir.join(&out));
    v
}

/// `qemu-img check` must exit 0 (no corruption, no leaks).
pub fn assert_qemu_check_clean(dir: &Path, file: &str) {
    let o = qemu_img(dir, &["check", file]);
    if !o.ok() || !o.stdout.contains("No errors were found on the image.") {
        panic!("qemu-img check is not clean:\n{}", o.describe());
    }
}

/// `qemu-img compare` must say the two images have identical contents.
pub fn assert_qemu_compare_identical(dir: &Path, a: &str, b: &str, extra: &[&str]) {
    let mut args = vec!["compare"];
    args.extend_from_slice(extra);
    args.push(a);
    args.push(b);
    let o = qemu_img(dir, &args);
    if !o.ok() || !o.stdout.contains("Images are identical.") {
        panic!("qemu-img compare: images differ:\n{}", o.describe());
    }
}

// ------------------------------------------------------------- tiny JSON

/// Ordered JSON value, enough to compare qemu-img reports structurally.
#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    Num(String),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

impl Json {
    pub fn parse(s: &str) -> Result<Json, String> {
        let b = s.as_bytes();
        let mut i = 0;
        let v = parse_value(b, &mut i)?;
        skip_ws(b, &mut i);
        if i != b.len() {
            return Err(format!("trailing garbage at {i}"));
        }
        Ok(v)
    }
    pub fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Obj(m) => m.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
    /// Remove `key` from every object, at any depth.
    pub fn remove_everywhere(&mut self, key: &str) {
        match self {
            Json::Obj(m) => {
                m.retain(|(k, _)| k != key);
                for (_, v) in m.iter_mut() {
                    v.remove_everywhere(key);
                }
            }
            Json::Arr(a) => a.iter_mut().for_each(|v| v.remove_everywhere(key)),
            _ => {}
        }
    }
    /// Remove `virtual-size` of protocol (`"format": "file"`) nodes: that is
    /// the host file length, which may legitimately differ.
    pub fn remove_file_lengths(&mut self) {
        match self {
            Json::Obj(m) => {
                let is_file = m
                    .iter()
                    .any(|(k, v)| k == "format" && *v == Json::Str("file".into()));
                if is_file {
                    m.retain(|(k, _)| k != "virtual-size");
                }
                for (_, v) in m.iter_mut() {
                    v.remove_file_lengths();
                }
            }
            Json::Arr(a) => a.iter_mut().for_each(|v| v.remove_file_lengths()),
            _ => {}
        }
    }
}

fn skip_ws(b: &[u8], i: &mut usize) {
    while *i < b.len() && b[*i].is_ascii_whitespace() {
        *i += 1;
    }
}

fn parse_value(b: &[u8], i: &mut usize) -> Result<Json, String> {
    skip_ws(b, i);
    match b.get(*i) {
        None => Err("unexpected end".into()),
        Some(b'{') => {
            *i += 1;
            let mut m = Vec::new();
            skip_ws(b, i);
            if b.get(*i) == Some(&b'}') {
                *i += 1;
                return Ok(Json::Obj(m));
            }
            loop {
                skip_ws(b, i);
                let k = match parse_value(b, i)? {
                    Json::Str(s) => s,
                    _ => return Err(format!("object key expected at {i}")),
                };
                skip_ws(b, i);
                if b.get(*i) != Some(&b':') {
                    return Err(format!("':' expected at {i}"));
                }
                *i += 1;
                let v = parse_value(b, i)?;
                m.push((k, v));
                skip_ws(b, i);
                match b.get(*i) {
                    Some(b',') => *i += 1,
                    Some(b'}') => {
                        *i += 1;
                        return Ok(Json::Obj(m));
                    }
                    _ => return Err(format!("',' or '}}' expected at {i}")),
                }
            }
        }
        Some(b'[') => {
            *i += 1;
            let mut a = Vec::new();
            skip_ws(b, i);
            if b.get(*i) == Some(&b']') {
                *i += 1;
                return Ok(Json::Arr(a));
            }
            loop {
                a.push(parse_value(b, i)?);
                skip_ws(b, i);
                match b.get(*i) {
                    Some(b',') => *i += 1,
                    Some(b']') => {
                        *i += 1;
                        return Ok(Json::Arr(a));
                    }
                    _ => return Err(format!("',' or ']' expected at {i}")),
                }
            }
        }
        Some(b'"') => {
            *i += 1;
            let mut s = Vec::new();
            loop {
                match b.get(*i) {
                    None => return Err("unterminated string".into()),
                    Some(b'"') => {
                        *i += 1;
                        break;
                    }
                    Some(b'\\') => {
                        let c = *b.get(*i + 1).ok_or("bad escape")?;
                        *i += 2;
                        match c {
                            b'n' => s.push(b'\n'),
                            b't' => s.push(b'\t'),
                            b'r' => s.push(b'\r'),
                            b'b' => s.push(8),
                            b'f' => s.push(12),
                            b'u' => {
                                let h = std::str::from_utf8(b.get(*i..*i + 4).ok_or("bad \\u")?)
                                    .map_err(|e| e.to_string())?;
                                let cp = u32::from_str_radix(h, 16).map_err(|e| e.to_string())?;
                                *i += 4;
                                let ch = char::from_u32(cp).unwrap_or('\u{fffd}');
                                let mut tmp = [0u8; 4];
                                s.extend_from_slice(ch.encode_utf8(&mut tmp).as_bytes());
                            }
                            c => s.push(c),
                        }
                    }
                    Some(&c) => {
                        s.push(c);
                        *i += 1;
                    }
                }
            }
            Ok(Json::Str(String::from_utf8_lossy(&s).into_owned()))
        }
        Some(b't') if b[*i..].starts_with(b"true") => {
            *i += 4;
            Ok(Json::Bool(true))
        }
        Some(b'f') if b[*i..].starts_with(b"false") => {
            *i += 5;
            Ok(Json::Bool(false))
        }
        Some(b'n') if b[*i..].starts_with(b"null") => {
            *i += 4;
            Ok(Json::Null)
        }
        Some(c) if c.is_ascii_digit() || *c == b'-' => {
            let st = *i;
            while *i < b.len() && (b[*i].is_ascii_digit() || b"+-.eE".contains(&b[*i])) {
                *i += 1;
            }
            Ok(Json::Num(String::from_utf8_lossy(&b[st..*i]).into_owned()))
        }
        Some(c) => Err(format!("unexpected {:?} at {i}", *c as char)),
    }
}

/// Parse, or fail the test showing the text.
pub fn parse_json(what: &str, text: &str) -> Json {
    Json::parse(text).unwrap_or_else(|e| panic!("{what}: not JSON ({e}):\n{text}"))
}

// ------------------------------------------------------- damaged images

/// Damaged or hostile images, each made by patching a good qcow2 that
/// qemu-img wrote (data at 0 and 1M, a compressed cluster at 2M). What
/// qemu-img does with each is the expected behaviour; the comment says what
/// that is (info / convert).
pub const BAD_CASES: &[&str] = &[
    // fail to open: info and convert exit 1
    "truncated_20",
    "truncated_48",
    "truncated_72",
    "truncated_100",
    "empty_as_qcow2",
    "cluster_bits_31",
    "cluster_bits_8",
    "virtual_size_2_63",
    "virtual_size_i64_max",
    "l1_size_huge",
    "l1_size_big",
    "refcount_table_clusters_huge",
    "refcount_table_clusters_big",
    "unknown_incompatible_bit",
    "version_4",
    "backing_offset_invalid",
    "header_length_short",
    "header_length_huge",
    "refcount_order_7",
    "snapshots_too_many",
    "snapshots_offset_unaligned",
    "extension_length_huge",
    "extension_length_past_cluster",
    "backing_format_extension_too_long",
    // open fine, reading fails: info ok, convert exit 1
    "l2_offset_unaligned",
    "compressed_descriptor_bad",
    // qemu-img accepts these (reads past EOF as zeros, does not check
    // overlaps on read): info and convert succeed with its output
    "l1_past_eof",
    "refcount_table_past_eof",
    "data_cluster_past_eof",
    "l1_overlaps_header",
    "l1_overlaps_refcount_table",
    "l2_overlaps_l1",
    "refcount_table_overlaps_l1",
    "dirty_bit_set",
    "corrupt_bit_set",
];

fn be64(b: &[u8], off: usize) -> u64 {
    u64::from_be_bytes(b[off..off + 8].try_into().unwrap())
}

/// Overwrite bytes of a file in place.
pub fn patch(path: &Path, off: u64, bytes: &[u8]) {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open for patch");
    f.seek(SeekFrom::Start(off)).unwrap();
    f.write_all(bytes).unwrap();
}

/// The good image the damaged ones start from.
pub fn build_good_qcow2(dir: &Path, file: &str) {
    qemu_img_ok(dir, &["create", "-q", "-f", "qcow2", file, "4M"]);
    qemu_io(
        dir,
        "qcow2",
        file,
        &[
            "write -P 0xab 0 64k".to_string(),
            "write -P 0xcd 1M 64k".to_string(),
            "write -c -P 0x11 2M 64k".to_string(),
        ],
    );
}

/// Build bad case `name` in `dir`; returns (file name, explicit format
/// argument the commands should get, if any).
pub fn build_bad(name: &str, dir: &Path) -> (String, Option<&'static str>) {
    let file = "bad.qcow2".to_string();
    let path = dir.join(&file);
    build_good_qcow2(dir, &file);
    let good = read(&path);
    let l1 = be64(&good, 40);
    let rt = be64(&good, 48);
    let l2 = be64(&good, l1 as usize) & 0x00ff_ffff_ffff_fe00;
    let hdr_len = u32::from_be_bytes(good[100..104].try_into().unwrap()) as u64;
    let u32b = |v: u32| v.to_be_bytes().to_vec();
    let u64b = |v: u64| v.to_be_bytes().to_vec();
    let truncate = |n: u64| {
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(n).unwrap();
    };
    let mut fmt = None;
    match name {
        "truncated_20" => truncate(20),
        "truncated_48" => truncate(48),
        "truncated_72" => truncate(72),
        "truncated_100" => truncate(100),
        "empty_as_qcow2" => {
            truncate(0);
            fmt = Some("qcow2");
        }
        "cluster_bits_31" => patch(&path, 20, &u32b(31)),
        "cluster_bits_8" => patch(&path, 20, &u32b(8)),
        "virtual_size_2_63" => patch(&path, 24, &u64b(1 << 63)),
        "virtual_size_i64_max" => patch(&path, 24, &u64b(i64::MAX as u64)),
        "l1_size_huge" => patch(&path, 36, &u32b(u32::MAX)),
        "l1_size_big" => patch(&path, 36, &u32b(0x1000_0000)),
        "refcount_table_clusters_huge" => patch(&path, 56, &u32b(u32::MAX)),
        "refcount_table_clusters_big" => patch(&path, 56, &u32b(0x10_0000)),
        "unknown_incompatible_bit" => patch(&path, 72, &u64b(1 << 63)),
        "version_4" => patch(&path, 4, &u32b(4)),
        "backing_offset_invalid" => {
            patch(&path, 8, &u64b(0x10_0000));
            patch(&path, 16, &u32b(8));
        }
        "header_length_short" => patch(&path, 100, &u32b(20)),
        "header_length_huge" => patch(&path, 100, &u32b(0x1000_0000)),
        "refcount_order_7" => patch(&path, 96, &u32b(7)),
        "snapshots_too_many" => patch(&path, 60, &u32b(70000)),
        "snapshots_offset_unaligned" => {
            patch(&path, 60, &u32b(1));
            patch(&path, 64, &u64b(0x100));
        }
        // The first extension (feature name table) follows the header.
        "extension_length_huge" => patch(&path, hdr_len + 4, &u32b(0xffff_fff0)),
        "extension_length_past_cluster" => patch(&path, hdr_len + 4, &u32b(0x1_0000)),
        // ... turned into a backing format extension that is too long.
        "backing_format_extension_too_long" => patch(&path, hdr_len, &u32b(0xe279_2aca)),
        "l2_offset_unaligned" => patch(&path, l1, &u64b((1 << 63) | (l2 + 0x200))),
        "compressed_descriptor_bad" => patch(&path, l2, &u64b(0x4000_0001_0000_0000)),
        "l1_past_eof" => patch(&path, 40, &u64b(1 << 32)),
        "refcount_table_past_eof" => patch(&path, 48, &u64b(1 << 32)),
        "data_cluster_past_eof" => patch(&path, l2, &u64b((1 << 63) | (1 << 32))),
        "l1_overlaps_header" => patch(&path, 40, &u64b(0)),
        "l1_overlaps_refcount_table" => patch(&path, 40, &u64b(rt)),
        "l2_overlaps_l1" => patch(&path, l1, &u64b((1 << 63) | l1)),
        "refcount_table_overlaps_l1" => patch(&path, 48, &u64b(l1)),
        "dirty_bit_set" => patch(&path, 72, &u64b(1)),
        "corrupt_bit_set" => patch(&path, 72, &u64b(2)),
        other => panic!("unknown bad case {other}"),
    }
    (file, fmt)
}

/// A backing loop a -> b -> a, made as the brief says real users make it.
pub fn build_backing_loop(dir: &Path) {
    qemu_img_ok(dir, &["create", "-q", "-f", "qcow2", "b", "1M"]);
    qemu_img_ok(
        dir,
        &[
            "create", "-q", "-f", "qcow2", "-b", "b", "-F", "qcow2", "a", "1M",
        ],
    );
    qemu_img_ok(
        dir,
        &["rebase", "-u", "-f", "qcow2", "-b", "a", "-F", "qcow2", "b"],
    );
}
