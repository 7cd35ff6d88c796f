//! Result codes and the thread-local last error.
//!
//! Every fallible C function returns `IMGTOOL_OK` (0) or one negative
//! `IMGTOOL_E*` code. The codes map 1:1 from [`ErrorKind`], plus two that only
//! the boundary produces (`IMGTOOL_EPANIC`, `IMGTOOL_ENOMEM`). The message
//! (qemu-img's wording) and the underlying errno are kept per thread until
//! that thread's next fallible call.

use std::cell::RefCell;
use std::ffi::{c_char, c_int, CString};

use crate::error::{Error, ErrorKind};

/// Success.
pub const IMGTOOL_OK: c_int = 0;
/// Invalid argument: a NULL pointer, a string that is not UTF-8, an
/// options struct with a bad `struct_size`, an unknown option or value.
pub const IMGTOOL_EINVAL: c_int = -1;
/// A file does not exist.
pub const IMGTOOL_ENOENT: c_int = -2;
/// Permission denied by the host (EACCES/EPERM).
pub const IMGTOOL_EACCES: c_int = -3;
/// Host I/O failed; `imgtool_last_errno()` has the errno.
pub const IMGTOOL_EIO: c_int = -4;
/// The image is damaged or not in the expected format.
pub const IMGTOOL_ECORRUPT: c_int = -5;
/// The format or driver cannot do this (e.g. compression on raw).
pub const IMGTOOL_ENOTSUP: c_int = -6;
/// Another process holds a conflicting lock on the image.
pub const IMGTOOL_ELOCKED: c_int = -7;
/// The caller cancelled the operation through its progress callback.
pub const IMGTOOL_ECANCELED: c_int = -8;
/// No space left on the host.
pub const IMGTOOL_ENOSPC: c_int = -9;
/// A request beyond the end of the image.
pub const IMGTOOL_ERANGE: c_int = -10;
/// Out of memory (an I/O error whose errno is ENOMEM).
pub const IMGTOOL_ENOMEM: c_int = -11;
/// A bug: the library panicked. The operation did not complete; close the
/// handle it was working on. The message says where it panicked.
pub const IMGTOOL_EPANIC: c_int = -12;

/// The C code for a library error.
pub fn code_of(e: &Error) -> c_int {
    match e.kind() {
        ErrorKind::InvalidArgument => IMGTOOL_EINVAL,
        ErrorKind::NotFound => IMGTOOL_ENOENT,
        ErrorKind::PermissionDenied => IMGTOOL_EACCES,
        ErrorKind::Io if e.errno() == Some(libc::ENOMEM) => IMGTOOL_ENOMEM,
        ErrorKind::Io => IMGTOOL_EIO,
        ErrorKind::Corrupt => IMGTOOL_ECORRUPT,
        ErrorKind::Unsupported => IMGTOOL_ENOTSUP,
        ErrorKind::Locked => IMGTOOL_ELOCKED,
        ErrorKind::Cancelled => IMGTOOL_ECANCELED,
        ErrorKind::NoSpace => IMGTOOL_ENOSPC,
        ErrorKind::OutOfRange => IMGTOOL_ERANGE,
    }
}

/// Static description of a code (for `imgtool_strerror`).
pub(crate) fn describe(code: c_int) -> &'static std::ffi::CStr {
    match code {
        IMGTOOL_OK => c"Success",
        IMGTOOL_EINVAL => c"Invalid argument",
        IMGTOOL_ENOENT => c"No such file or directory",
        IMGTOOL_EACCES => c"Permission denied",
        IMGTOOL_EIO => c"Input/output error",
        IMGTOOL_ECORRUPT => c"Image is corrupt or not in the expected format",
        IMGTOOL_ENOTSUP => c"Operation not supported",
        IMGTOOL_ELOCKED => c"Image is locked by another process",
        IMGTOOL_ECANCELED => c"Operation cancelled",
        IMGTOOL_ENOSPC => c"No space left on device",
        IMGTOOL_ERANGE => c"Request beyond the end of the image",
        IMGTOOL_ENOMEM => c"Out of memory",
        IMGTOOL_EPANIC => c"Internal error (panic) in libimgtool",
        _ => c"Unknown error code",
    }
}

struct LastError {
    code: c_int,
    errno: c_int,
    msg: CString,
}

thread_local! {
    static LAST: RefCell<Option<LastError>> = const { RefCell::new(None) };
}

fn to_cstring(msg: &str) -> CString {
    // Messages come from file names and headers; an interior NUL would cut
    // the C string short, so spell it out instead.
    CString::new(msg.replace('\0', "\\0")).unwrap_or_default()
}

/// Forget the previous error (start of every fallible call).
pub(crate) fn clear() {
    // try_with: during thread teardown the slot may already be gone.
    let _ = LAST.try_with(|l| {
        if let Ok(mut l) = l.try_borrow_mut() {
            *l = None;
        }
    });
}

/// Record `code`/`errno`/`msg` as this thread's last error and return `code`.
pub(crate) fn set(code: c_int, errno: c_int, msg: &str) -> c_int {
    let e = LastError {
        code,
        errno,
        msg: to_cstring(msg),
    };
    let _ = LAST.try_with(|l| {
        if let Ok(mut l) = l.try_borrow_mut() {
            *l = Some(e);
        }
    });
    code
}

/// Record a library error and return its code.
pub(crate) fn set_error(e: &Error) -> c_int {
    set(code_of(e), e.errno().unwrap_or(0), e.message())
}

/// The current message; "" when the last call succeeded. The pointer stays
/// valid until the next fallible call on this thread replaces the slot.
pub(crate) fn last_message() -> *const c_char {
    LAST.try_with(|l| match l.try_borrow() {
        Ok(l) => match l.as_ref() {
            Some(e) => e.msg.as_ptr(),
            None => c"".as_ptr(),
        },
        Err(_) => c"".as_ptr(),
    })
    .unwrap_or(c"".as_ptr())
}

pub(crate) fn last_code() -> c_int {
    LAST.try_with(|l| l.try_borrow().ok().and_then(|l| l.as_ref().map(|e| e.code)))
        .ok()
        .flatten()
        .unwrap_or(IMGTOOL_OK)
}

pub(crate) fn last_errno() -> c_int {
    LAST.try_with(|l| {
        l.try_borrow()
            .ok()
            .and_then(|l| l.as_ref().map(|e| e.errno))
    })
    .ok()
    .flatten()
    .unwrap_or(0)
}

/// Message of the last error on the calling thread.
///
/// Returns "" (never NULL) when the last fallible call on this thread
/// succeeded. The text is qemu-img's wording for the failure (e.g.
/// `Could not open 'x.img': No such file or directory`). The pointer is owned
/// by the library and stays valid until the next `imgtool_*` call on this
/// thread that can fail; copy it if you need it longer. Do not free it.
///
/// Thread safety: reads the calling thread's own slot; any thread may call it.
#[no_mangle]
pub extern "C" fn imgtool_last_error() -> *const c_char {
    super::panic::guard_value(c"".as_ptr(), last_message)
}

/// Code of the last error on the calling thread (`IMGTOOL_OK` after a
/// success); the same value the failing call returned.
///
/// Thread safety: reads the calling thread's own slot; any thread may call it.
#[no_mangle]
pub extern "C" fn imgtool_last_error_code() -> c_int {
    super::panic::guard_value(IMGTOOL_OK, last_code)
}

/// The host errno behind the last error on the calling thread (e.g. `EIO`,
/// `ENOSPC`, `ENOENT`), or 0 when the error did not come from the host or
/// the last call succeeded.
///
/// Thread safety: reads the calling thread's own slot; any thread may call it.
#[no_mangle]
pub extern "C" fn imgtool_last_errno() -> c_int {
    super::panic::guard_value(0, last_errno)
}

/// A static, human-readable description of an `IMGTOOL_E*` code ("Unknown
/// error code" for values that are not one). Never NULL; do not free.
///
/// Thread safety: any thread, any time (static strings).
#[no_mangle]
pub extern "C" fn imgtool_strerror(code: c_int) -> *const c_char {
    super::panic::guard_value(c"Unknown error code".as_ptr(), || describe(code).as_ptr())
}
