//! One error type for the whole library. The message is already phrased the
//! way qemu-img phrases it, so the CLI prints `argv0: {error}` and C callers
//! get the same text from `imgtool_last_error()`.

use std::fmt;

/// Broad class of a failure; stable, mapped 1:1 to the C ABI codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Bad argument, option or value from the caller.
    InvalidArgument,
    /// A file does not exist.
    NotFound,
    /// Permission denied by the host.
    PermissionDenied,
    /// Host I/O failed.
    Io,
    /// The image is damaged or not in the expected format.
    Corrupt,
    /// The format or driver cannot do this.
    Unsupported,
    /// Another process holds a conflicting lock.
    Locked,
    /// The caller cancelled through a progress callback.
    Cancelled,
    /// Out of space on the host.
    NoSpace,
    /// A request beyond the end of the image.
    OutOfRange,
}

#[derive(Debug, Clone)]
pub struct Error {
    kind: ErrorKind,
    msg: String,
    errno: Option<i32>,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn new(kind: ErrorKind, msg: impl Into<String>) -> Self {
        Error {
            kind,
            msg: msg.into(),
            errno: None,
        }
    }
    pub fn invalid(msg: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, msg)
    }
    pub fn corrupt(msg: impl Into<String>) -> Self {
        Self::new(ErrorKind::Corrupt, msg)
    }
    pub fn unsupported(msg: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unsupported, msg)
    }
    pub fn cancelled() -> Self {
        Self::new(ErrorKind::Cancelled, "Operation cancelled")
    }
    pub fn out_of_range(msg: impl Into<String>) -> Self {
        Self::new(ErrorKind::OutOfRange, msg)
    }
    /// An errno-carrying error whose text is `strerror(errno)` as glibc says it.
    pub fn from_errno(errno: i32) -> Self {
        let io = std::io::Error::from_raw_os_error(errno);
        Self::from(io)
    }
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
    pub fn errno(&self) -> Option<i32> {
        self.errno
    }
    pub fn message(&self) -> &str {
        &self.msg
    }
    /// Prefix the message as QEMU's error_prepend does: `"{prefix}: {msg}"`.
    pub fn context(mut self, prefix: impl fmt::Display) -> Self {
        self.msg = format!("{prefix}: {}", self.msg);
        self
    }
    /// Change the kind, keeping message and errno.
    pub fn with_kind(mut self, kind: ErrorKind) -> Self {
        self.kind = kind;
        self
    }
    /// Replace the message, keeping kind and errno.
    pub fn with_message(mut self, msg: impl Into<String>) -> Self {
        self.msg = msg.into();
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)
    }
}

impl std::error::Error for Error {}

/// strerror text without Rust's " (os error N)" suffix, as QEMU prints it.
pub fn strerror(errno: i32) -> String {
    let s = std::io::Error::from_raw_os_error(errno).to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        let errno = e.raw_os_error();
        let kind = match e.kind() {
            std::io::ErrorKind::NotFound => ErrorKind::NotFound,
            std::io::ErrorKind::PermissionDenied => ErrorKind::PermissionDenied,
            std::io::ErrorKind::InvalidInput => ErrorKind::InvalidArgument,
            std::io::ErrorKind::UnexpectedEof => ErrorKind::Corrupt,
            _ if errno == Some(libc::ENOSPC) => ErrorKind::NoSpace,
            _ => ErrorKind::Io,
        };
        let msg = match errno {
            Some(n) => strerror(n),
            None => e.to_string(),
        };
        Error { kind, msg, errno }
    }
}
