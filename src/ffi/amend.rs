//! `imgtool_amend`: change format options of an existing image
//! (qemu-img amend).

use std::ffi::{c_char, c_int, c_void};

use super::args::{arg_out, arg_str, check_flags, opt_nonempty, read_options, SizedOptions};
use super::convert::imgtool_progress_fn;
use super::panic::guard;
use super::progress::Callback;
use crate::error::Error;
use crate::format::CreateOptions;
use crate::image::{Image, OpenOptions};
use crate::io::CacheMode;
use crate::ops::amend;

/// How `imgtool_amend` amends. Initialise with
/// `imgtool_amend_options_init()`, then set `options`.
#[repr(C)]
#[derive(Clone, Copy)]
#[allow(non_camel_case_types)]
pub struct imgtool_amend_options {
    /// `sizeof(imgtool_amend_options)`, set by `imgtool_amend_options_init`.
    pub struct_size: u32,
    /// Reserved for `IMGTOOL_AMEND_*` flags; must be 0.
    pub flags: u32,
    /// Format of the image (`-f`); NULL or "" probes it.
    pub format: *const c_char,
    /// The options to change (`-o`, required), "key=value,...", e.g.
    /// "compat=0.10" or "refcount_bits=64,lazy_refcounts=on".
    pub options: *const c_char,
    /// Cache mode (`-t`); NULL or "" = "writeback".
    pub cache: *const c_char,
}

// SAFETY: repr(C), starts with u32 struct_size, fields are integers and raw
// pointers (any bit pattern is valid).
unsafe impl SizedOptions for imgtool_amend_options {
    const NAME: &'static str = "imgtool_amend_options";
}

/// Fill `opts` with defaults (no options, format probed, writeback cache)
/// and set `opts->struct_size`.
///
/// Returns `IMGTOOL_OK`, or `IMGTOOL_EINVAL` if `opts` is NULL.
///
/// Thread safety: any thread; touches only `opts`.
///
/// # Safety
/// `opts` is NULL or points to writable memory for an `imgtool_amend_options`.
#[no_mangle]
pub unsafe extern "C" fn imgtool_amend_options_init(opts: *mut imgtool_amend_options) -> c_int {
    guard(move || {
        // SAFETY: contract above.
        let out = unsafe { arg_out(opts, "imgtool_amend_options_init: opts") }?;
        out.write(imgtool_amend_options {
            struct_size: std::mem::size_of::<imgtool_amend_options>() as u32,
            flags: 0,
            format: std::ptr::null(),
            options: std::ptr::null(),
            cache: std::ptr::null(),
        });
        Ok(())
    })
}

/// Change format options of the image at `path` in place, as
/// `qemu-img amend -o` does (qcow2: `compat`, `refcount_bits`,
/// `lazy_refcounts`, `backing_file`, `backing_fmt`, ...), with qemu-img's
/// validation and messages.
///
/// `progress` may be NULL; otherwise it gets the percentage done. An
/// amendment cannot be cancelled halfway: the callback's return value is
/// ignored.
///
/// Errors: `IMGTOOL_EINVAL` (NULL `opts` or `options`, an unknown option
/// or value, an option only creation supports), `IMGTOOL_ENOTSUP` (a
/// format without amend, e.g. raw: "Format driver 'raw' does not support
/// option amendment"; a change the driver cannot make), errors from
/// opening the image (`IMGTOOL_ENOENT`, `IMGTOOL_ELOCKED`, ...),
/// `IMGTOOL_ENOSPC`, `IMGTOOL_EIO`.
///
/// Thread safety: any thread; the image is locked for writing for the
/// duration.
///
/// # Safety
/// `path` is NULL or NUL-terminated; `opts` is NULL or initialised;
/// `progress` is NULL or safe to call with `user`.
#[no_mangle]
pub unsafe extern "C" fn imgtool_amend(
    path: *const c_char,
    opts: *const imgtool_amend_options,
    progress: imgtool_progress_fn,
    user: *mut c_void,
) -> c_int {
    guard(move || {
        // SAFETY: path is NULL or NUL-terminated per the contract.
        let path = unsafe { arg_str(path, "imgtool_amend: path") }?;
        // SAFETY: opts is NULL or an initialised imgtool_amend_options.
        let o = unsafe { read_options(opts, "imgtool_amend: opts") }?;
        check_flags(o.flags, 0, "imgtool_amend")?;
        // SAFETY: string fields of an initialised struct are NULL or
        // NUL-terminated (contract above); same for the next two.
        let format = unsafe { opt_nonempty(o.format, "imgtool_amend: opts->format") }?;
        // SAFETY: as for format.
        let options = unsafe { opt_nonempty(o.options, "imgtool_amend: opts->options") }?
            .ok_or_else(|| Error::invalid("Must specify options (-o)"))?;
        // SAFETY: as for format.
        let cache = unsafe { opt_nonempty(o.cache, "imgtool_amend: opts->cache") }?;
        let img = Image::open(
            path,
            &OpenOptions {
                format: format.map(str::to_string),
                writable: true,
                cache: cache.map_or(Ok(CacheMode::default()), CacheMode::parse)?,
                ..OpenOptions::default()
            },
        )?;
        amend::options(img.format())?;
        let co = CreateOptions::parse(options)?;
        amend::validate(img.format(), &co)?;
        match progress {
            Some(f) => {
                let mut cb = Callback::new(f, user);
                let mut p = move |pct: f64| {
                    let _ = cb.call(pct);
                };
                amend::amend(img, &co, Some(&mut p))
            }
            None => amend::amend(img, &co, None),
        }
    })
}
