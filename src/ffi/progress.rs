//! The progress callback shared by long operations.

use std::ffi::{c_int, c_void};

/// Carries a C progress callback and its user pointer into the library's
/// progress closure, which must be `Send`.
pub(crate) struct Callback {
    f: unsafe extern "C" fn(f64, *mut c_void) -> c_int,
    user: *mut c_void,
}

// SAFETY: the progress contract (see imgtool_progress_fn) tells callers the
// callback may run on another thread, never concurrently; the library calls
// it through a `&mut FnMut`, which rules out concurrent calls.
unsafe impl Send for Callback {}

impl Callback {
    pub(crate) fn new(
        f: unsafe extern "C" fn(f64, *mut c_void) -> c_int,
        user: *mut c_void,
    ) -> Self {
        Callback { f, user }
    }

    /// Report `pct`; true to continue, false when the caller cancels.
    pub(crate) fn call(&mut self, pct: f64) -> bool {
        // SAFETY: f is a valid function pointer supplied by the caller, who
        // also vouches for user; we pass user back unchanged.
        unsafe { (self.f)(pct, self.user) == 0 }
    }
}
