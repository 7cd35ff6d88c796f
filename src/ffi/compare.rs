//! `imgtool_compare`: do two images read the same? (qemu-img compare)

use std::ffi::{c_char, c_int, c_void};

use super::args::{
    arg_out, arg_ref, check_flags, check_out_struct, read_options, SizedOptions, SizedOut,
};
use super::convert::imgtool_progress_fn;
use super::image::imgtool_image;
use super::panic::guard;
use super::progress::Callback;
use super::strings::into_c_string;
use crate::ops::compare::{compare, CompareError, CompareEvent, CompareOptions, Verdict};

/// `imgtool_compare_options.flags`: strict mode (`-s`): the sizes and the
/// allocation status must match too, not only the content.
pub const IMGTOOL_COMPARE_STRICT: u32 = 1 << 0;

const COMPARE_FLAGS: u32 = IMGTOOL_COMPARE_STRICT;

/// `imgtool_compare_report.result`: the images read the same.
pub const IMGTOOL_COMPARE_IDENTICAL: u32 = 0;
/// `imgtool_compare_report.result`: the content differs at `offset`.
pub const IMGTOOL_COMPARE_CONTENT_MISMATCH: u32 = 1;
/// `imgtool_compare_report.result`: strict mode, the sizes differ.
pub const IMGTOOL_COMPARE_SIZE_MISMATCH: u32 = 2;
/// `imgtool_compare_report.result`: strict mode, the allocation status
/// differs at `offset`.
pub const IMGTOOL_COMPARE_STATUS_MISMATCH: u32 = 3;

/// How `imgtool_compare` compares. Initialise with
/// `imgtool_compare_options_init()`, then change fields.
#[repr(C)]
#[derive(Clone, Copy)]
#[allow(non_camel_case_types)]
pub struct imgtool_compare_options {
    /// `sizeof(imgtool_compare_options)`, set by
    /// `imgtool_compare_options_init`.
    pub struct_size: u32,
    /// `IMGTOOL_COMPARE_*` bits.
    pub flags: u32,
}

// SAFETY: repr(C), starts with u32 struct_size, fields are integers.
unsafe impl SizedOptions for imgtool_compare_options {
    const NAME: &'static str = "imgtool_compare_options";
}

impl imgtool_compare_options {
    fn defaults() -> Self {
        imgtool_compare_options {
            struct_size: std::mem::size_of::<Self>() as u32,
            flags: 0,
        }
    }
}

/// Fill `opts` with defaults (content comparison, not strict) and set
/// `opts->struct_size`.
///
/// Returns `IMGTOOL_OK`, or `IMGTOOL_EINVAL` if `opts` is NULL.
///
/// Thread safety: any thread; touches only `opts`.
///
/// # Safety
/// `opts` is NULL or points to writable memory for an
/// `imgtool_compare_options`.
#[no_mangle]
pub unsafe extern "C" fn imgtool_compare_options_init(opts: *mut imgtool_compare_options) -> c_int {
    guard(move || {
        // SAFETY: contract above.
        let out = unsafe { arg_out(opts, "imgtool_compare_options_init: opts") }?;
        out.write(imgtool_compare_options::defaults());
        Ok(())
    })
}

/// The result of `imgtool_compare`. Set `struct_size` to
/// `sizeof(imgtool_compare_report)` before the call; on return it holds
/// the number of bytes the library filled in.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub struct imgtool_compare_report {
    /// Set by the caller to `sizeof(imgtool_compare_report)`.
    pub struct_size: u32,
    /// `IMGTOOL_COMPARE_*` result.
    pub result: u32,
    /// First differing offset (content: the first differing 512-byte
    /// sector, as qemu-img reports it; strict status: the offset) for the
    /// mismatch results, 0 otherwise.
    pub offset: u64,
    /// qemu-img compare's exit status: 0 identical, 1 different.
    pub exit_code: i32,
    /// Not strict: the sizes differ (qemu-img warns "Image size mismatch!");
    /// the longer image's tail was compared with zeros.
    pub size_mismatch: bool,
}

// SAFETY: repr(C), starts with u32 struct_size.
unsafe impl SizedOut for imgtool_compare_report {
    const NAME: &'static str = "imgtool_compare_report";
}

/// Compare the guest content of two open images as `qemu-img compare`
/// does. Runs that read as zeros in both
/// are skipped unread; without `IMGTOOL_COMPARE_STRICT` images of different
/// sizes are equal when the longer one's tail reads as zeros.
///
/// Returns `IMGTOOL_OK` whenever the comparison ran to its end, identical
/// or not: read `*report` (`result`, `offset`, `exit_code`). `json` may be
/// NULL; otherwise it receives `{"result": "identical" |
/// "content-mismatch" | "size-mismatch" | "status-mismatch",
/// "size-mismatch": bool, "offset": N}` (free with `imgtool_free_string`).
///
/// `progress` may be NULL; otherwise it gets the percentage done. A
/// comparison cannot be cancelled: the callback's return value is ignored.
///
/// Errors: `IMGTOOL_EINVAL` (NULL arguments, bad options or report size);
/// a failed block status or read on either image, with qemu-img's message
/// naming the image by the path it was opened with ("Sector allocation
/// test failed for PATH", "Error while reading offset N of PATH: ...") and
/// that failure's code (`IMGTOOL_EIO`, `IMGTOOL_ECORRUPT`, ...).
///
/// Thread safety: only reads both handles; may run concurrently with other
/// calls on them (except `imgtool_close`). The same handle may be passed
/// twice.
///
/// # Safety
/// `img1` and `img2` are NULL or live handles; `opts` is NULL or
/// initialised; `report` is NULL or a writable report with `struct_size`
/// set; `json` is NULL or writable; `progress` is NULL or safe to call
/// with `user`.
#[no_mangle]
pub unsafe extern "C" fn imgtool_compare(
    img1: *mut imgtool_image,
    img2: *mut imgtool_image,
    opts: *const imgtool_compare_options,
    report: *mut imgtool_compare_report,
    json: *mut *mut c_char,
    progress: imgtool_progress_fn,
    user: *mut c_void,
) -> c_int {
    guard(move || {
        let json = if json.is_null() {
            None
        } else {
            // SAFETY: json is non-null and writable per the contract.
            let j = unsafe { arg_out(json, "imgtool_compare: json") }?;
            j.write(std::ptr::null_mut());
            Some(j)
        };
        let report = if report.is_null() {
            None
        } else {
            // SAFETY: report is writable with struct_size set.
            Some(unsafe { check_out_struct(report, "imgtool_compare: report") }?)
        };
        // SAFETY: NULL or live handles per the contract.
        let a = unsafe { arg_ref(img1.cast_const(), "imgtool_compare: img1") }?;
        // SAFETY: as above.
        let b = unsafe { arg_ref(img2.cast_const(), "imgtool_compare: img2") }?;
        let o = if opts.is_null() {
            imgtool_compare_options::defaults()
        } else {
            // SAFETY: opts is an initialised imgtool_compare_options.
            unsafe { read_options(opts, "imgtool_compare: opts") }?
        };
        check_flags(o.flags, COMPARE_FLAGS, "imgtool_compare")?;
        let co = CompareOptions {
            strict: o.flags & IMGTOOL_COMPARE_STRICT != 0,
        };
        let mut cb = progress.map(|f| Callback::new(f, user));
        let mut events = |ev: CompareEvent| {
            if let (CompareEvent::Progress(p), Some(cb)) = (ev, cb.as_mut()) {
                let _ = cb.call(f64::from(p).clamp(0.0, 100.0));
            }
        };
        let r = compare(&a.img, &b.img, co, &mut events).map_err(|e| {
            let msg = e.message(a.img.filename(), b.img.filename());
            match e {
                CompareError::Status { error, .. } | CompareError::Read { error, .. } => {
                    error.with_message(msg)
                }
            }
        })?;
        if let Some(cb) = cb.as_mut() {
            let _ = cb.call(100.0);
        }
        let (result, offset) = match r.verdict {
            Verdict::Identical => (IMGTOOL_COMPARE_IDENTICAL, 0),
            Verdict::ContentMismatch(o) => (IMGTOOL_COMPARE_CONTENT_MISMATCH, o),
            Verdict::SizeMismatch => (IMGTOOL_COMPARE_SIZE_MISMATCH, 0),
            Verdict::StatusMismatch(o) => (IMGTOOL_COMPARE_STATUS_MISMATCH, o),
        };
        if let Some(out) = report {
            out.write(imgtool_compare_report {
                struct_size: std::mem::size_of::<imgtool_compare_report>() as u32,
                result,
                offset,
                exit_code: r.verdict.exit_code(),
                size_mismatch: r.size_mismatch,
            });
        }
        if let Some(j) = json {
            j.write(into_c_string(r.to_json().to_pretty())?);
        }
        Ok(())
    })
}
