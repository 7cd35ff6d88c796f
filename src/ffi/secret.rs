//! Secrets for encrypted images: the C counterpart of qemu-img's
//! `--object secret,id=ID,data=...`. Options structs then name a secret by
//! its id (`key_secret`), as `encrypt.key-secret=ID` does on the command line.

use std::ffi::{c_char, c_int, c_void};

use super::args::arg_str;
use super::panic::guard;
use crate::error::Error;

/// Define secret `id` as the `len` bytes at `data` (a passphrase: it ends
/// at its first NUL byte, as in QEMU), replacing any secret of that id. The
/// library keeps its own copy, wiped when replaced or removed; the caller
/// may clear its buffer after the call.
///
/// Secrets are process-wide: an options struct's `key_secret` (or
/// `encrypt.key-secret=ID` in creation options) refers to one by id.
///
/// Errors: `IMGTOOL_EINVAL` (NULL or empty `id`, NULL `data` with `len`
/// non-zero).
///
/// Thread safety: any thread.
///
/// # Safety
/// `id` is NULL or a NUL-terminated string; `data` is NULL or readable for
/// `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn imgtool_secret_set(
    id: *const c_char,
    data: *const c_void,
    len: usize,
) -> c_int {
    guard(move || {
        // SAFETY: id is NULL or NUL-terminated per the contract.
        let id = unsafe { arg_str(id, "imgtool_secret_set: id") }?;
        if id.is_empty() {
            return Err(Error::invalid("imgtool_secret_set: 'id' is empty"));
        }
        // SAFETY: data is NULL or readable for len bytes per the contract.
        let bytes = unsafe { super::args::arg_bytes(data, len, "imgtool_secret_set: data") }?;
        crate::crypto::secret::add(id, bytes);
        Ok(())
    })
}

/// Forget secret `id` (its copy is wiped). Images already opened with it
/// stay usable.
///
/// Errors: `IMGTOOL_EINVAL` (NULL `id`), `IMGTOOL_ENOENT` (no such secret).
///
/// Thread safety: any thread.
///
/// # Safety
/// `id` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn imgtool_secret_remove(id: *const c_char) -> c_int {
    guard(move || {
        // SAFETY: id is NULL or NUL-terminated per the contract.
        let id = unsafe { arg_str(id, "imgtool_secret_remove: id") }?;
        if crate::crypto::secret::remove(id) {
            Ok(())
        } else {
            Err(Error::new(
                crate::error::ErrorKind::NotFound,
                format!("No secret with id '{id}'"),
            ))
        }
    })
}
