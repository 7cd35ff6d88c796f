//! CLI test helpers: the shared oracle helpers of the library tests plus
//! running our `imgtool` binary the way a user does.
#![allow(dead_code)]

#[path = "../../../tests/common/mod.rs"]
mod shared;
pub use shared::*;
pub mod rw;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The binary under test. `IMGTOOL_TEST_BIN` overrides it: pointing it at
/// `cli/tests/oracle-shim.sh` runs the whole CLI suite against qemu-img
/// itself, which checks that the tests encode qemu-img's behaviour.
pub fn bin() -> PathBuf {
    match std::env::var_os("IMGTOOL_TEST_BIN") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_BIN_EXE_imgtool")),
    }
}

/// True when the suite runs against the qemu-img shim instead of imgtool.
pub fn against_oracle() -> bool {
    std::env::var_os("IMGTOOL_TEST_BIN").is_some()
}

/// Run `imgtool ARGS` in `dir` with argv[0] = "imgtool" (as when found on
/// PATH, like `qemu-img` in the oracle runs). Fails the test on a hang or
/// a panic, whatever the exit code.
pub fn imgtool_timeout(dir: &Path, args: &[&str], timeout: Duration) -> Out {
    let mut c = Command::new(bin());
    c.arg0("imgtool").args(args).current_dir(dir);
    let o = run_with_timeout(&mut c, timeout);
    assert!(
        !o.timed_out,
        "imgtool hung (killed after {timeout:?}):\n{}",
        o.describe()
    );
    assert!(
        !o.stderr.contains("panicked") && !o.stderr.contains("RUST_BACKTRACE"),
        "imgtool panicked:\n{}",
        o.describe()
    );
    o
}

pub fn imgtool(dir: &Path, args: &[&str]) -> Out {
    imgtool_timeout(dir, args, DEFAULT_TIMEOUT)
}

/// Run the same arguments through qemu-img and imgtool in `dir` and require
/// the same exit code, the same stdout, and the same stderr (with our
/// program name). Returns (qemu, ours).
pub fn same_as_qemu(dir: &Path, args: &[&str]) -> (Out, Out) {
    let q = qemu_img(dir, args);
    assert!(!q.timed_out, "oracle hung:\n{}", q.describe());
    let o = imgtool(dir, args);
    assert_outcome_matches(&q, &o);
    (q, o)
}

/// Exit code, stdout and stderr of `ours` equal qemu-img's (`q`).
pub fn assert_outcome_matches(q: &Out, o: &Out) {
    assert_eq!(
        o.code,
        q.code,
        "exit code differs\n=== qemu-img\n{}\n=== imgtool\n{}",
        q.describe(),
        o.describe()
    );
    assert_text_eq(
        &format!("stderr of {:?}", o.cmdline),
        &as_imgtool(&q.stderr),
        &o.stderr,
    );
    assert_text_eq(&format!("stdout of {:?}", o.cmdline), &q.stdout, &o.stdout);
}

/// `qemu-img info --output=json` of a file, parsed, with what legitimately
/// differs between two writers removed (allocation and file length).
pub fn info_json_normalized(dir: &Path, file: &str) -> Json {
    let t = qemu_img_ok(dir, &["info", "--output=json", file]);
    let mut j = parse_json("qemu-img info", &t);
    j.remove_everywhere("actual-size");
    j.remove_file_lengths();
    j
}

/// Run `args` (with `{}` standing for the file) through qemu-img on one
/// copy of `file` and imgtool on another: same outcome, and the same bytes
/// afterwards.
pub fn on_copies(dir: &Path, file: &str, args: &[&str]) {
    on_copies_normalized(dir, file, args, |b| b)
}

/// [`on_copies`], comparing the files after `norm` (for fields the format
/// randomises, such as a VMDK CID).
pub fn on_copies_normalized(dir: &Path, file: &str, args: &[&str], norm: fn(Vec<u8>) -> Vec<u8>) {
    let q = format!("q-{file}");
    let o = format!("o-{file}");
    std::fs::copy(dir.join(file), dir.join(&q)).expect("copy");
    std::fs::copy(dir.join(file), dir.join(&o)).expect("copy");
    let qa: Vec<String> = args.iter().map(|a| a.replace("{}", &q)).collect();
    let oa: Vec<String> = args.iter().map(|a| a.replace("{}", &o)).collect();
    let qa: Vec<&str> = qa.iter().map(String::as_str).collect();
    let oa: Vec<&str> = oa.iter().map(String::as_str).collect();
    let qo = qemu_img(dir, &qa);
    assert!(!qo.timed_out, "qemu-img hung:\n{}", qo.describe());
    let oo = imgtool(dir, &oa);
    let mut expect = qo.clone();
    expect.stdout = qo.stdout.replace(&q, &o);
    expect.stderr = qo.stderr.replace(&q, &o);
    assert_outcome_matches(&expect, &oo);
    assert_bytes_eq(
        &format!("{file} after {args:?}"),
        &norm(read(&dir.join(&q))),
        &norm(read(&dir.join(&o))),
    );
}
