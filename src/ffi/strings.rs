//! Strings handed to C: allocated here, released by `imgtool_free_string`;
//! and the static version string.

use std::ffi::{c_char, CString};

use crate::error::{Error, Result};

/// Move `s` to the C heap of this library; the caller frees it with
/// `imgtool_free_string`.
pub(crate) fn into_c_string(s: String) -> Result<*mut c_char> {
    let c =
        CString::new(s).map_err(|_| Error::invalid("string returned to C contains a NUL byte"))?;
    Ok(c.into_raw())
}

/// Free a string returned by libimgtool (e.g. from `imgtool_info_json`).
///
/// NULL is accepted and ignored. Only pass strings this library returned,
/// once each; never strings from `imgtool_last_error`, `imgtool_strerror`
/// or `imgtool_version`, which are static or owned by the library.
///
/// Thread safety: any thread, but each string exactly once.
///
/// # Safety
/// `s` is NULL or a pointer obtained from a libimgtool function documented
/// as "free with imgtool_free_string", not freed before.
#[no_mangle]
pub unsafe extern "C" fn imgtool_free_string(s: *mut c_char) {
    if s.is_null() {
        return;
    }
    super::panic::guard_value((), || {
        // SAFETY: per the contract, s came from CString::into_raw in
        // into_c_string and has not been freed yet.
        drop(unsafe { CString::from_raw(s) });
    })
}

static VERSION_C: &str = concat!(env!("CARGO_PKG_VERSION"), "\0");

/// The library's version, e.g. "0.1.0" (the same as
/// `IMGTOOL_VERSION_STRING` in the header the library was built with).
/// Static; never NULL; do not free.
///
/// Thread safety: any thread, any time.
#[no_mangle]
pub extern "C" fn imgtool_version() -> *const c_char {
    VERSION_C.as_ptr().cast()
}
