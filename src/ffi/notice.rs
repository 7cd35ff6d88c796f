//! `imgtool_set_notice_handler`: where the library's asynchronous notices
//! go (by default stderr, as qemu-img prints them).

use std::ffi::{c_char, c_void, CString};

use super::check::imgtool_log_fn;

/// The C handler and its user pointer, callable from any thread.
struct Handler {
    f: unsafe extern "C" fn(*const c_char, *mut c_void),
    user: *mut c_void,
}

// SAFETY: imgtool_set_notice_handler's contract makes the caller promise
// the handler may be called from any thread, also concurrently, with
// `user`.
unsafe impl Send for Handler {}
// SAFETY: as above; the handler only ever gets `user` by value.
unsafe impl Sync for Handler {}

impl Handler {
    fn call(&self, line: &str) {
        let c = CString::new(line.replace('\0', "\\0")).unwrap_or_default();
        // SAFETY: f and user are valid per the contract of
        // imgtool_set_notice_handler; the string lives for the call.
        unsafe { (self.f)(c.as_ptr(), self.user) }
    }
}

/// Redirect the library's notices: one-line messages a format driver
/// emits on its own while working, which qemu-img prints on stderr (e.g.
/// `qcow2: Image is corrupt: ...; further corruption events will be
/// suppressed` when damaged metadata is first seen). The operation that
/// hit the problem still fails with its own error code; the notice is
/// extra information.
///
/// `handler` is called with each line (no trailing newline, valid only
/// during the call) and `user`. NULL restores the default, printing to
/// stderr; a handler that does nothing silences notices.
///
/// Thread safety: the setting is process-wide. The handler may be called
/// from any thread, also from several at once, and must not call back into
/// libimgtool. Changing the handler while other threads work is safe;
/// after this call returns, the old handler is no longer called, so its
/// `user` may be freed.
///
/// # Safety
/// `handler` is NULL or a function safe to call with `user` from any
/// thread until it is replaced.
#[no_mangle]
pub unsafe extern "C" fn imgtool_set_notice_handler(handler: imgtool_log_fn, user: *mut c_void) {
    super::panic::guard_value((), move || {
        let sink = handler.map(|f| {
            let h = Handler { f, user };
            Box::new(move |line: &str| h.call(line)) as Box<dyn Fn(&str) + Send + Sync>
        });
        crate::events::set_sink(sink);
    })
}
