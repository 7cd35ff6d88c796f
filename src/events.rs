//! Asynchronous notices a driver raises while working, which qemu-img
//! prints on stderr without its program prefix (e.g. "qcow2: Image is
//! corrupt: ..."). The CLI keeps the default (stderr); library users may
//! install their own sink.

use parking_lot::RwLock;

type Sink = Box<dyn Fn(&str) + Send + Sync>;

static SINK: RwLock<Option<Sink>> = RwLock::new(None);

/// Replace where notices go (None restores stderr).
pub fn set_sink(sink: Option<Sink>) {
    *SINK.write() = sink;
}

/// A warning as QEMU's warn_report prints it: `PROG: warning: MSG`, PROG
/// being this program's name (the sink, when installed, gets the line).
pub fn warning(msg: &str) {
    notice(&format!("{}: warning: {msg}", program_name()));
}

/// An error QEMU reports while carrying on (error_report): `PROG: MSG`.
pub fn error(msg: &str) {
    notice(&format!("{}: {msg}", program_name()));
}

/// This program's name (argv[0]'s basename), as QEMU's error_report
/// prefixes its lines.
pub fn program_name() -> String {
    std::env::args_os()
        .next()
        .map(|a| {
            std::path::Path::new(&a)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
        .unwrap_or_default()
}

/// Emit one notice line.
pub fn notice(line: &str) {
    match &*SINK.read() {
        Some(f) => f(line),
        None => eprintln!("{line}"),
    }
}
