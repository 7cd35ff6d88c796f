//! `imgtool_check`: consistency check and repair (qemu-img check [-r]).

use std::ffi::{c_char, c_int, c_void, CString};

use super::args::{
    arg_out, arg_str, check_flags, check_out_struct, opt_nonempty, read_options, SizedOptions,
    SizedOut,
};
use super::convert::imgtool_progress_fn;
use super::panic::guard;
use super::progress::Callback;
use super::strings::into_c_string;
use crate::error::Error;
use crate::format::Repair;
use crate::io::CacheMode;
use crate::ops::check::{check, CheckOptions};

/// `imgtool_check_options.repair`: only check (qemu-img check).
pub const IMGTOOL_REPAIR_NONE: u32 = 0;
/// `imgtool_check_options.repair`: fix leaked clusters (`-r leaks`).
pub const IMGTOOL_REPAIR_LEAKS: u32 = 1;
/// `imgtool_check_options.repair`: fix leaks and corruptions (`-r all`).
pub const IMGTOOL_REPAIR_ALL: u32 = 2;

/// `imgtool_check_options.flags`: take no locks (qemu-img `-U`); only for
/// checking without repair.
pub const IMGTOOL_CHECK_FORCE_SHARE: u32 = 1 << 0;

const CHECK_FLAGS: u32 = IMGTOOL_CHECK_FORCE_SHARE;

/// Receives one line of text, e.g. each finding of `imgtool_check`
/// ("Leaked cluster 5 refcount=1 reference=0"), without a trailing
/// newline; `line` is valid only during the call. Called on the thread
/// that runs the operation; it must not call back into libimgtool for the
/// same operation.
#[allow(non_camel_case_types)]
pub type imgtool_log_fn = Option<unsafe extern "C" fn(line: *const c_char, user: *mut c_void)>;

/// How `imgtool_check` checks. Initialise with
/// `imgtool_check_options_init()`, then change fields.
#[repr(C)]
#[derive(Clone, Copy)]
#[allow(non_camel_case_types)]
pub struct imgtool_check_options {
    /// `sizeof(imgtool_check_options)`, set by `imgtool_check_options_init`.
    pub struct_size: u32,
    /// `IMGTOOL_CHECK_*` bits.
    pub flags: u32,
    /// `IMGTOOL_REPAIR_*`: what to fix (default `IMGTOOL_REPAIR_NONE`).
    pub repair: u32,
    /// Format (`-f`); NULL or "" probes the file.
    pub format: *const c_char,
    /// Cache mode (`-T`); NULL or "" = "writeback".
    pub cache: *const c_char,
    /// Called with each finding as qemu-img prints it on stderr; NULL to
    /// drop them (the counts are in the report either way).
    pub log: imgtool_log_fn,
    /// Passed to `log` unchanged.
    pub log_user: *mut c_void,
    /// Id of the secret (`imgtool_secret_set`) unlocking an encrypted
    /// image; NULL or "" for none. Added after the first release: a struct
    /// from an older header ends before it (NULL).
    pub key_secret: *const c_char,
}

// SAFETY: repr(C), starts with u32 struct_size, fields are integers, raw
// pointers and a nullable function pointer (Option<fn> has NULL as None;
// C can only store NULL or a function there).
unsafe impl SizedOptions for imgtool_check_options {
    const NAME: &'static str = "imgtool_check_options";
    const MIN_SIZE: usize = std::mem::offset_of!(imgtool_check_options, key_secret);
}

/// Fill `opts` with defaults (check only, probe the format, writeback
/// cache, no log) and set `opts->struct_size`.
///
/// Returns `IMGTOOL_OK`, or `IMGTOOL_EINVAL` if `opts` is NULL.
/// Thread safety: may be called from any thread.
///
/// # Safety
/// `opts` is NULL or points to writable memory for an `imgtool_check_options`.
#[no_mangle]
pub unsafe extern "C" fn imgtool_check_options_init(opts: *mut imgtool_check_options) -> c_int {
    guard(move || {
        // SAFETY: contract above.
        let out = unsafe { arg_out(opts, "imgtool_check_options_init: opts") }?;
        out.write(imgtool_check_options {
            struct_size: std::mem::size_of::<imgtool_check_options>() as u32,
            flags: 0,
            repair: IMGTOOL_REPAIR_NONE,
            format: std::ptr::null(),
            cache: std::ptr::null(),
            log: None,
            log_user: std::ptr::null_mut(),
            key_secret: std::ptr::null(),
        });
        Ok(())
    })
}

/// The result of `imgtool_check` (QAPI ImageCheck; the same counts
/// `qemu-img check --output=json` prints). Set `struct_size` to
/// `sizeof(imgtool_check_report)` before the call, e.g.
/// `imgtool_check_report r = { .struct_size = sizeof r };`; on return it
/// holds the number of bytes the library filled in.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub struct imgtool_check_report {
    /// Set by the caller to `sizeof(imgtool_check_report)`.
    pub struct_size: u32,
    /// qemu-img check's exit status for this result: 0 clean, 1 the check
    /// itself hit errors, 2 corruptions, 3 only leaked clusters.
    pub exit_code: i32,
    /// A repair pass fixed something; the counts are then those of the
    /// re-check after the repair (`*_fixed` say what was fixed).
    pub repaired: bool,
    /// Metadata inconsistencies that can lose data.
    pub corruptions: u64,
    /// Clusters allocated but not referenced (waste, no data loss).
    pub leaks: u64,
    /// Errors that kept the check from completing (e.g. I/O errors).
    pub check_errors: u64,
    /// Corruptions the repair fixed.
    pub corruptions_fixed: u64,
    /// Leaks the repair fixed.
    pub leaks_fixed: u64,
    /// Offset of the end of the image file's used part (0 if unknown).
    pub image_end_offset: u64,
    /// Guest clusters of the image (0 if the format does not say).
    pub total_clusters: u64,
    /// Guest clusters allocated in this layer.
    pub allocated_clusters: u64,
    /// Allocated clusters not contiguous with the previous one.
    pub fragmented_clusters: u64,
    /// Compressed clusters.
    pub compressed_clusters: u64,
}

// SAFETY: repr(C), starts with u32 struct_size.
unsafe impl SizedOut for imgtool_check_report {
    const NAME: &'static str = "imgtool_check_report";
}

/// Carries a C log callback into the library's `FnMut(&str)`.
struct Log {
    f: unsafe extern "C" fn(*const c_char, *mut c_void),
    user: *mut c_void,
}

impl Log {
    fn line(&mut self, s: &str) {
        let c = CString::new(s.replace('\0', "\\0")).unwrap_or_default();
        // SAFETY: f is a valid function pointer supplied by the caller, who
        // also vouches for user; the string lives for the call.
        unsafe { (self.f)(c.as_ptr(), self.user) }
    }
}

/// Check the image at `path` for metadata consistency and, with
/// `opts->repair`, repair it, exactly as `qemu-img check [-r leaks|all]`:
/// after a repair that fixed something the image is checked again and the
/// report describes the repaired image.
///
/// Returns `IMGTOOL_OK` whenever the check ran, whatever it found: read
/// the counts (and `exit_code`) in `*report`. `report` and `json` may each
/// be NULL when not wanted; on success `*json` receives the
/// `qemu-img check --output=json` document (free with
/// `imgtool_free_string`); it is set to NULL first. `opts` may be NULL for
/// the defaults.
///
/// `progress` may be NULL; it is called with `user` at the start (0.0) and
/// at the end (100.0) of the check; returning non-zero at the start cancels
/// before the image is opened (`IMGTOOL_ECANCELED`).
///
/// Errors: `IMGTOOL_EINVAL` (NULL `path`, bad options or report size),
/// `IMGTOOL_ENOTSUP` (a format without checks, e.g. raw: qemu-img says
/// "This image format does not support checks"), errors from opening the
/// image (`IMGTOOL_ENOENT`, `IMGTOOL_ELOCKED`, `IMGTOOL_ECORRUPT`, ...),
/// `IMGTOOL_EIO`.
///
/// Thread safety: may be called from any thread; checks of different
/// images may run concurrently. A repair opens the image for writing, so
/// it fails with `IMGTOOL_ELOCKED` while any handle has it open.
///
/// # Safety
/// `path` is NULL or NUL-terminated; `opts` is NULL or initialised;
/// `report` is NULL or a writable report whose `struct_size` is set;
/// `json` is NULL or writable; `progress` is NULL or safe to call with
/// `user`.
#[no_mangle]
pub unsafe extern "C" fn imgtool_check(
    path: *const c_char,
    opts: *const imgtool_check_options,
    report: *mut imgtool_check_report,
    json: *mut *mut c_char,
    progress: imgtool_progress_fn,
    user: *mut c_void,
) -> c_int {
    guard(move || {
        let json = if json.is_null() {
            None
        } else {
            // SAFETY: json is non-null and writable per the contract.
            let j = unsafe { arg_out(json, "imgtool_check: json") }?;
            j.write(std::ptr::null_mut());
            Some(j)
        };
        let report = if report.is_null() {
            None
        } else {
            // SAFETY: report is a writable report with struct_size set.
            Some(unsafe { check_out_struct(report, "imgtool_check: report") }?)
        };
        // SAFETY: path is NULL or NUL-terminated per the contract.
        let path = unsafe { arg_str(path, "imgtool_check: path") }?;
        let o = if opts.is_null() {
            // SAFETY: writing into a local.
            let mut d = std::mem::MaybeUninit::uninit();
            // SAFETY: d is writable; init fills it (it cannot fail on a
            // non-NULL pointer).
            unsafe { imgtool_check_options_init(d.as_mut_ptr()) };
            // SAFETY: initialised just above.
            unsafe { d.assume_init() }
        } else {
            // SAFETY: opts is an initialised imgtool_check_options.
            unsafe { read_options(opts, "imgtool_check: opts") }?
        };
        check_flags(o.flags, CHECK_FLAGS, "imgtool_check")?;
        let repair = match o.repair {
            IMGTOOL_REPAIR_NONE => Repair::None,
            IMGTOOL_REPAIR_LEAKS => Repair::Leaks,
            IMGTOOL_REPAIR_ALL => Repair::All,
            r => {
                return Err(Error::invalid(format!(
                    "imgtool_check: unknown repair mode {r} (IMGTOOL_REPAIR_NONE, _LEAKS or _ALL)"
                )))
            }
        };
        // SAFETY: string fields of an initialised struct are NULL or
        // NUL-terminated (contract above).
        let format = unsafe { opt_nonempty(o.format, "imgtool_check: opts->format") }?;
        // SAFETY: as for format.
        let cache = unsafe { opt_nonempty(o.cache, "imgtool_check: opts->cache") }?;
        // SAFETY: as for format.
        let key_secret = unsafe { opt_nonempty(o.key_secret, "imgtool_check: opts->key_secret") }?;
        let co = CheckOptions {
            format: format.map(str::to_string),
            repair,
            force_share: o.flags & IMGTOOL_CHECK_FORCE_SHARE != 0,
            cache: cache.map_or(Ok(CacheMode::default()), CacheMode::parse)?,
            key_secret: key_secret.map(str::to_string),
            data_file: None,
            blkdebug: None,
        };
        let mut progress = progress.map(|f| Callback::new(f, user));
        if let Some(cb) = progress.as_mut() {
            if !cb.call(0.0) {
                return Err(Error::cancelled());
            }
        }
        let mut log = o.log.map(|f| Log {
            f,
            user: o.log_user,
        });
        let mut sink = |s: &str| {
            if let Some(l) = log.as_mut() {
                l.line(s);
            }
        };
        let r = check(path, &co, &mut sink, &mut |_| {})?;
        if let Some(cb) = progress.as_mut() {
            // The check is done; a late cancel changes nothing.
            let _ = cb.call(100.0);
        }
        if let Some(out) = report {
            let c = &r.result;
            out.write(imgtool_check_report {
                struct_size: std::mem::size_of::<imgtool_check_report>() as u32,
                exit_code: r.exit_code(),
                repaired: r.repaired,
                corruptions: c.corruptions,
                leaks: c.leaks,
                check_errors: c.check_errors,
                corruptions_fixed: c.corruptions_fixed,
                leaks_fixed: c.leaks_fixed,
                image_end_offset: c.image_end_offset,
                total_clusters: c.total_clusters,
                allocated_clusters: c.allocated_clusters,
                fragmented_clusters: c.fragmented_clusters,
                compressed_clusters: c.compressed_clusters,
            });
        }
        if let Some(j) = json {
            j.write(into_c_string(r.to_json().to_pretty())?);
        }
        Ok(())
    })
}
