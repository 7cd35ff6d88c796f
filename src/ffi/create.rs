//! `imgtool_create`: create a new image file (qemu-img create).

use std::ffi::{c_char, c_int};

use super::args::{arg_out, arg_str, check_flags, opt_nonempty, read_options, SizedOptions};
use super::panic::guard;
use crate::format::CreateOptions;
use crate::ops::create::{create, CreateRequest};

/// `imgtool_create_options.size` value meaning "no size given": take the
/// size of the backing file.
pub const IMGTOOL_SIZE_DEFAULT: u64 = u64::MAX;

/// `imgtool_create_options.flags`: do not open the backing file (qemu-img
/// create `-u`); a size must then be given.
pub const IMGTOOL_CREATE_UNSAFE_BACKING: u32 = 1 << 0;

const CREATE_FLAGS: u32 = IMGTOOL_CREATE_UNSAFE_BACKING;

/// What `imgtool_create` creates. Initialise with
/// `imgtool_create_options_init()`, then set at least `filename` and
/// `size` (or a backing file).
#[repr(C)]
#[derive(Clone, Copy)]
#[allow(non_camel_case_types)]
pub struct imgtool_create_options {
    /// `sizeof(imgtool_create_options)`, set by `imgtool_create_options_init`.
    pub struct_size: u32,
    /// `IMGTOOL_CREATE_*` bits.
    pub flags: u32,
    /// Format of the new image ("raw", "qcow2", ...); NULL or "" = "raw",
    /// as in qemu-img.
    pub format: *const c_char,
    /// Path of the file to create (required). An existing file is
    /// overwritten.
    pub filename: *const c_char,
    /// Virtual size in bytes, or `IMGTOOL_SIZE_DEFAULT` to take the backing
    /// file's size. Overrides a `size=` in `options`.
    pub size: u64,
    /// Format options as qemu-img `-o`: "key=value,key2=value2" (",," is a
    /// literal comma), e.g. "cluster_size=65536,lazy_refcounts=on".
    /// NULL or "" for none.
    pub options: *const c_char,
    /// Backing file (qemu-img `-b`), relative paths are relative to the new
    /// image's directory; NULL or "" for none.
    pub backing_file: *const c_char,
    /// Format of the backing file (qemu-img `-F`); NULL or "" probes it.
    pub backing_format: *const c_char,
}

// SAFETY: repr(C), starts with u32 struct_size, fields are integers and raw
// pointers (any bit pattern is valid).
unsafe impl SizedOptions for imgtool_create_options {
    const NAME: &'static str = "imgtool_create_options";
}

/// Fill `opts` with defaults (format "raw", no file name, size
/// `IMGTOOL_SIZE_DEFAULT`, no options, no backing file) and set
/// `opts->struct_size`.
///
/// Returns `IMGTOOL_OK`, or `IMGTOOL_EINVAL` if `opts` is NULL.
///
/// Thread safety: any thread; touches only `opts`.
///
/// # Safety
/// `opts` is NULL or points to writable memory for an `imgtool_create_options`.
#[no_mangle]
pub unsafe extern "C" fn imgtool_create_options_init(opts: *mut imgtool_create_options) -> c_int {
    guard(move || {
        // SAFETY: contract above.
        let out = unsafe { arg_out(opts, "imgtool_create_options_init: opts") }?;
        out.write(imgtool_create_options {
            struct_size: std::mem::size_of::<imgtool_create_options>() as u32,
            flags: 0,
            format: std::ptr::null(),
            filename: std::ptr::null(),
            size: IMGTOOL_SIZE_DEFAULT,
            options: std::ptr::null(),
            backing_file: std::ptr::null(),
            backing_format: std::ptr::null(),
        });
        Ok(())
    })
}

/// Create a new image file as `qemu-img create` does. The image is not
/// left open: open it with `imgtool_open` to use it.
///
/// Errors: `IMGTOOL_EINVAL` (NULL `opts` or `filename`, bad size, unknown
/// format or option, invalid option value, missing size without backing
/// file), `IMGTOOL_ENOTSUP` (format or option this build cannot create),
/// `IMGTOOL_ENOENT`/`IMGTOOL_EACCES` (directory, backing file),
/// `IMGTOOL_ENOSPC`, `IMGTOOL_EIO`.
///
/// Thread safety: any thread; creating the same file from two threads at
/// once leaves one of the two images.
///
/// # Safety
/// `opts` is NULL or an initialised `imgtool_create_options` whose string
/// fields are NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn imgtool_create(opts: *const imgtool_create_options) -> c_int {
    guard(move || {
        // SAFETY: opts is NULL or initialised per the contract.
        let o = unsafe { read_options(opts, "imgtool_create: opts") }?;
        check_flags(o.flags, CREATE_FLAGS, "imgtool_create")?;
        // SAFETY: the string fields of an initialised options struct are
        // NULL or NUL-terminated (contract above); same for the next four.
        let filename = unsafe { arg_str(o.filename, "imgtool_create: opts->filename") }?;
        // SAFETY: as for filename.
        let format = unsafe { opt_nonempty(o.format, "imgtool_create: opts->format") }?;
        // SAFETY: as for filename.
        let options = unsafe { opt_nonempty(o.options, "imgtool_create: opts->options") }?;
        // SAFETY: as for filename.
        let backing =
            unsafe { opt_nonempty(o.backing_file, "imgtool_create: opts->backing_file") }?;
        // SAFETY: as for filename.
        let backing_fmt =
            unsafe { opt_nonempty(o.backing_format, "imgtool_create: opts->backing_format") }?;

        let mut co = match options {
            Some(s) => CreateOptions::parse(s)?,
            None => CreateOptions::new(),
        };
        if let Some(b) = backing {
            co.set("backing_file", b);
        }
        if let Some(f) = backing_fmt {
            co.set("backing_fmt", f);
        }
        let req = CreateRequest {
            format: format.unwrap_or("raw").to_string(),
            filename: filename.to_string(),
            size: (o.size != IMGTOOL_SIZE_DEFAULT).then_some(o.size),
            options: co,
            unsafe_backing: o.flags & IMGTOOL_CREATE_UNSAFE_BACKING != 0,
        };
        create(&req).map(|_| ())
    })
}
