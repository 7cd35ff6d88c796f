//! Program identity, failures and output, as qemu-img's `error_report`,
//! `error_exit` and getopt report them.

use std::io::Write;

/// How a command ends unsuccessfully.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fail {
    /// `error_report`: `prog: msg` (a hint may follow on later lines).
    Report(String),
    /// `error_exit`: `prog: msg` and the "Try ... --help" line.
    Usage(String),
    /// getopt's own complete message and the "Try ... --help" line.
    Getopt(String),
    /// Exit with this code; anything to say was already said.
    Exit(i32),
    /// `error_report` followed by this exit code (qemu-img paths that
    /// report an error but leave `ret` at 0).
    ReportCode(String, i32),
}

impl Fail {
    pub fn report(msg: impl Into<String>) -> Self {
        Fail::Report(msg.into())
    }
}

impl From<imgtool::Error> for Fail {
    fn from(e: imgtool::Error) -> Self {
        Fail::Report(e.message().to_string())
    }
}

pub type CmdResult = Result<(), Fail>;

/// Who we are: the basename of argv[0] prefixes messages (`error_report`),
/// argv[0] itself (or `argv0 cmd` inside a command) names us in getopt
/// messages and the "Try" hint.
#[derive(Debug, Clone)]
pub struct Prog {
    pub name: String,
    pub argv0: String,
}

/// The program name prefix, for warnings printed far from a `Prog`.
static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// `prog: warning: msg` on stderr (QEMU's warn_report).
pub fn warn(msg: &str) {
    let name = NAME.get().map_or("qemu-img", String::as_str);
    err_line(&format!("{name}: warning: {msg}"));
}

impl Prog {
    pub fn from_argv0(argv0: &str) -> Self {
        let name = argv0.rsplit('/').next().unwrap_or(argv0);
        let _ = NAME.set(if name.is_empty() { argv0 } else { name }.to_string());
        Prog {
            name: if name.is_empty() { argv0 } else { name }.to_string(),
            argv0: argv0.to_string(),
        }
    }

    /// The identity a command's parser uses (`qemu-img info`).
    pub fn for_command(&self, cmd: &str) -> Prog {
        Prog {
            name: self.name.clone(),
            argv0: format!("{} {cmd}", self.argv0),
        }
    }

    /// Print `fail` the way qemu-img does; returns the exit code.
    pub fn finish(&self, r: CmdResult) -> i32 {
        match r {
            Ok(()) => 0,
            Err(Fail::Report(m)) => {
                self.error(&m);
                1
            }
            Err(Fail::Usage(m)) => {
                self.error(&m);
                self.try_help();
                1
            }
            Err(Fail::Getopt(m)) => {
                err_line(&m);
                self.try_help();
                1
            }
            Err(Fail::Exit(c)) => c,
            Err(Fail::ReportCode(m, c)) => {
                self.error(&m);
                c
            }
        }
    }

    pub fn error(&self, msg: &str) {
        err_line(&format!("{}: {msg}", self.name));
    }

    fn try_help(&self) {
        err_line(&format!("Try '{} --help' for more info", self.argv0));
    }
}

/// Write to stdout, ignoring a closed pipe as qemu-img (SIGPIPE ignored) does.
pub fn out(s: &str) {
    let mut o = std::io::stdout().lock();
    let _ = o.write_all(s.as_bytes());
    let _ = o.flush();
}

fn err_line(s: &str) {
    let mut e = std::io::stderr().lock();
    let _ = writeln!(e, "{s}");
}
