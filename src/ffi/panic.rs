//! The panic boundary. Every exported function runs its body through
//! [`guard`] (fallible calls, returning an `IMGTOOL_*` code) or
//! [`guard_value`] (infallible accessors returning a value), so a panic in
//! the library never unwinds into C: it becomes `IMGTOOL_EPANIC` with a
//! message, or the accessor's fallback value.
//!
//! This relies on `panic = "unwind"` (the default, and what Cargo.toml sets
//! for release); a build with `panic = "abort"` aborts the process instead.

use std::any::Any;
use std::ffi::c_int;
use std::panic::{catch_unwind, AssertUnwindSafe};

use super::error::{self, IMGTOOL_EPANIC, IMGTOOL_OK};
use crate::error::Result;

fn panic_message(payload: &(dyn Any + Send)) -> String {
    let what = if let Some(s) = payload.downcast_ref::<&str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.as_str()
    } else {
        "unknown panic payload"
    };
    format!("internal error in libimgtool (panic): {what}")
}

/// Run the body of a fallible exported function: clear this thread's last
/// error, run `f`, and turn its outcome into a C return code, recording
/// the message of an error or panic.
///
/// A panic leaves whatever the body was working on in an unknown state; the
/// documentation of `IMGTOOL_EPANIC` tells callers to close the handle.
pub(crate) fn guard<F: FnOnce() -> Result<()>>(f: F) -> c_int {
    error::clear();
    // AssertUnwindSafe: after a panic the caller only gets an error code and
    // is told to drop the handle; no state observed across the unwind is
    // trusted again by this layer.
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => IMGTOOL_OK,
        Ok(Err(e)) => error::set_error(&e),
        Err(payload) => {
            let msg = panic_message(payload.as_ref());
            // Dropping a payload can itself panic; never let that escape.
            let _ = catch_unwind(AssertUnwindSafe(move || drop(payload)));
            error::set(IMGTOOL_EPANIC, 0, &msg)
        }
    }
}

/// Run an infallible accessor; a panic yields `fallback`. The last error
/// is left untouched.
pub(crate) fn guard_value<T, F: FnOnce() -> T>(fallback: T, f: F) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(payload) => {
            let _ = catch_unwind(AssertUnwindSafe(move || drop(payload)));
            fallback
        }
    }
}
