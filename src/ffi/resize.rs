//! `imgtool_resize`: change an image's virtual size (qemu-img resize).

use std::ffi::{c_char, c_int};

use super::args::{arg_out, arg_str, check_flags, opt_nonempty, read_options, SizedOptions};
use super::panic::guard;
use crate::error::Error;
use crate::format::Prealloc;
use crate::image::{Image, OpenOptions};
use crate::io::CacheMode;
use crate::ops::resize::{resize, ResizeOptions, SizeSpec};

/// `imgtool_resize_options.flags`: allow making the image smaller
/// (qemu-img resize `--shrink`); data beyond the new end is lost.
pub const IMGTOOL_RESIZE_SHRINK: u32 = 1 << 0;

const RESIZE_FLAGS: u32 = IMGTOOL_RESIZE_SHRINK;

/// How `imgtool_resize` resizes. Initialise with
/// `imgtool_resize_options_init()`, then change fields.
#[repr(C)]
#[derive(Clone, Copy)]
#[allow(non_camel_case_types)]
pub struct imgtool_resize_options {
    /// `sizeof(imgtool_resize_options)`, set by `imgtool_resize_options_init`.
    pub struct_size: u32,
    /// `IMGTOOL_RESIZE_*` bits.
    pub flags: u32,
    /// Format of the image (`-f`); NULL or "" probes it.
    pub format: *const c_char,
    /// Preallocation of the new area when growing (`--preallocation`):
    /// "off" (default when NULL or ""), "metadata", "falloc", "full".
    pub preallocation: *const c_char,
    /// Cache mode; NULL or "" = "writeback".
    pub cache: *const c_char,
}

// SAFETY: repr(C), starts with u32 struct_size, fields are integers and raw
// pointers (any bit pattern is valid).
unsafe impl SizedOptions for imgtool_resize_options {
    const NAME: &'static str = "imgtool_resize_options";
}

impl imgtool_resize_options {
    fn defaults() -> Self {
        imgtool_resize_options {
            struct_size: std::mem::size_of::<Self>() as u32,
            flags: 0,
            format: std::ptr::null(),
            preallocation: std::ptr::null(),
            cache: std::ptr::null(),
        }
    }
}

/// Fill `opts` with defaults (grow only, no preallocation, format probed)
/// and set `opts->struct_size`.
///
/// Returns `IMGTOOL_OK`, or `IMGTOOL_EINVAL` if `opts` is NULL.
///
/// Thread safety: any thread; touches only `opts`.
///
/// # Safety
/// `opts` is NULL or points to writable memory for an `imgtool_resize_options`.
#[no_mangle]
pub unsafe extern "C" fn imgtool_resize_options_init(opts: *mut imgtool_resize_options) -> c_int {
    guard(move || {
        // SAFETY: contract above.
        let out = unsafe { arg_out(opts, "imgtool_resize_options_init: opts") }?;
        out.write(imgtool_resize_options::defaults());
        Ok(())
    })
}

/// Set the virtual size of the image at `path` to `size` bytes, as
/// `qemu-img resize` does (with qemu-img's checks and messages). Growing
/// makes the new area read as zeros, even where a longer backing file has
/// data. Shrinking needs `IMGTOOL_RESIZE_SHRINK`.
///
/// Sizes relative to the current one (qemu-img's `+N`/`-N`) are the
/// caller's arithmetic: read the size with `imgtool_get_size` first.
///
/// Errors: `IMGTOOL_EINVAL` ("New image size must be positive", "Use the
/// --shrink option to perform a shrink operation.", "Preallocation can
/// only be used for growing images", bad options), errors from opening
/// the image (`IMGTOOL_ENOENT`, `IMGTOOL_ELOCKED`, ...), `IMGTOOL_ENOTSUP`
/// (a format or a shrink the driver cannot do), `IMGTOOL_ENOSPC`,
/// `IMGTOOL_EIO`.
///
/// Thread safety: any thread; the image is locked for writing for the
/// duration, so it must not be open elsewhere.
///
/// # Safety
/// `path` is NULL or NUL-terminated; `opts` is NULL or initialised.
#[no_mangle]
pub unsafe extern "C" fn imgtool_resize(
    path: *const c_char,
    size: u64,
    opts: *const imgtool_resize_options,
) -> c_int {
    guard(move || {
        // SAFETY: path is NULL or NUL-terminated per the contract.
        let path = unsafe { arg_str(path, "imgtool_resize: path") }?;
        let o = if opts.is_null() {
            imgtool_resize_options::defaults()
        } else {
            // SAFETY: opts is an initialised imgtool_resize_options.
            unsafe { read_options(opts, "imgtool_resize: opts") }?
        };
        check_flags(o.flags, RESIZE_FLAGS, "imgtool_resize")?;
        // SAFETY: string fields of an initialised struct are NULL or
        // NUL-terminated (contract above); same for the next two.
        let format = unsafe { opt_nonempty(o.format, "imgtool_resize: opts->format") }?;
        // SAFETY: as for format.
        let prealloc =
            unsafe { opt_nonempty(o.preallocation, "imgtool_resize: opts->preallocation") }?;
        // SAFETY: as for format.
        let cache = unsafe { opt_nonempty(o.cache, "imgtool_resize: opts->cache") }?;
        let ro = ResizeOptions {
            prealloc: match prealloc {
                None => Prealloc::Off,
                Some(p) => Prealloc::parse(p)
                    .map_err(|_| Error::invalid(format!("Invalid preallocation mode '{p}'")))?,
            },
            shrink: o.flags & IMGTOOL_RESIZE_SHRINK != 0,
        };
        let img = Image::open(
            path,
            &OpenOptions {
                format: format.map(str::to_string),
                writable: true,
                cache: cache.map_or(Ok(CacheMode::default()), CacheMode::parse)?,
                ..OpenOptions::default()
            },
        )?;
        resize(&img, SizeSpec::Absolute(size), &ro)?;
        img.close()
    })
}
