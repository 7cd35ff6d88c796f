//! `imgtool_rebase`: change an image's backing file (qemu-img rebase).

use std::ffi::{c_char, c_int, c_void};

use super::args::{
    arg_out, arg_str, check_flags, opt_nonempty, opt_str, read_options, SizedOptions,
};
use super::convert::imgtool_progress_fn;
use super::panic::guard;
use super::progress::Callback;
use crate::image::{Image, OpenOptions};
use crate::io::CacheMode;
use crate::ops::rebase::{rebase, RebaseOptions};

/// `imgtool_rebase_options.flags`: only rewrite the backing file name in
/// the header, without comparing or copying data (qemu-img rebase `-u`).
/// The caller vouches that the new backing file has the same content.
pub const IMGTOOL_REBASE_UNSAFE: u32 = 1 << 0;
/// `imgtool_rebase_options.flags`: write the clusters copied into the
/// image compressed (`-c`; qcow2).
pub const IMGTOOL_REBASE_COMPRESS: u32 = 1 << 1;
/// `imgtool_rebase_options.flags`: open the new backing file without
/// locks (`-U`).
pub const IMGTOOL_REBASE_FORCE_SHARE: u32 = 1 << 2;

const REBASE_FLAGS: u32 =
    IMGTOOL_REBASE_UNSAFE | IMGTOOL_REBASE_COMPRESS | IMGTOOL_REBASE_FORCE_SHARE;

/// How `imgtool_rebase` rebases. Initialise with
/// `imgtool_rebase_options_init()`, then set `backing_file`.
#[repr(C)]
#[derive(Clone, Copy)]
#[allow(non_camel_case_types)]
pub struct imgtool_rebase_options {
    /// `sizeof(imgtool_rebase_options)`, set by `imgtool_rebase_options_init`.
    pub struct_size: u32,
    /// `IMGTOOL_REBASE_*` bits.
    pub flags: u32,
    /// Format of the image (`-f`); NULL or "" probes it.
    pub format: *const c_char,
    /// The new backing file as it goes into the header (`-b`), relative to
    /// the image's directory; "" removes the backing file (the image then
    /// holds all its data). NULL is only allowed with
    /// `IMGTOOL_REBASE_UNSAFE` and also removes it.
    pub backing_file: *const c_char,
    /// Format of the new backing file (`-F`); NULL or "" probes it.
    pub backing_format: *const c_char,
    /// Cache mode of the image (`-t`); NULL or "" = "writeback".
    pub cache: *const c_char,
    /// Cache mode of the old and new backing files (`-T`); NULL or "" =
    /// "writeback".
    pub backing_cache: *const c_char,
}

// SAFETY: repr(C), starts with u32 struct_size, fields are integers and raw
// pointers (any bit pattern is valid).
unsafe impl SizedOptions for imgtool_rebase_options {
    const NAME: &'static str = "imgtool_rebase_options";
}

impl imgtool_rebase_options {
    fn defaults() -> Self {
        imgtool_rebase_options {
            struct_size: std::mem::size_of::<Self>() as u32,
            flags: 0,
            format: std::ptr::null(),
            backing_file: std::ptr::null(),
            backing_format: std::ptr::null(),
            cache: std::ptr::null(),
            backing_cache: std::ptr::null(),
        }
    }
}

/// Fill `opts` with defaults (safe mode, formats probed, writeback caches,
/// no backing file given) and set `opts->struct_size`.
///
/// Returns `IMGTOOL_OK`, or `IMGTOOL_EINVAL` if `opts` is NULL.
///
/// Thread safety: any thread; touches only `opts`.
///
/// # Safety
/// `opts` is NULL or points to writable memory for an `imgtool_rebase_options`.
#[no_mangle]
pub unsafe extern "C" fn imgtool_rebase_options_init(opts: *mut imgtool_rebase_options) -> c_int {
    guard(move || {
        // SAFETY: contract above.
        let out = unsafe { arg_out(opts, "imgtool_rebase_options_init: opts") }?;
        out.write(imgtool_rebase_options::defaults());
        Ok(())
    })
}

/// Point the image at `path` to another backing file (or none), as
/// `qemu-img rebase` does. In safe mode (the default) the guest-visible
/// content does not change: every range the image does not allocate and
/// whose content differs between the old and the new backing chain is
/// first copied into the image; the header changes last.
///
/// `progress` may be NULL; otherwise it gets the percentage done, and
/// returning non-zero from it cancels (`IMGTOOL_ECANCELED`) before the
/// header is switched: the image still uses its old backing file, possibly
/// with some data already copied into it (which does not change what the
/// guest sees).
///
/// Errors: `IMGTOOL_EINVAL` (bad options, NULL `backing_file` without
/// `IMGTOOL_REBASE_UNSAFE`), errors from opening the images
/// (`IMGTOOL_ENOENT`, `IMGTOOL_ELOCKED`, ...), `IMGTOOL_ENOTSUP` (a format
/// without backing files), `IMGTOOL_ECANCELED`, `IMGTOOL_ENOSPC`,
/// `IMGTOOL_EIO`.
///
/// Thread safety: any thread; the image is locked for writing for the
/// duration.
///
/// # Safety
/// `path` is NULL or NUL-terminated; `opts` is NULL or initialised;
/// `progress` is NULL or safe to call with `user`.
#[no_mangle]
pub unsafe extern "C" fn imgtool_rebase(
    path: *const c_char,
    opts: *const imgtool_rebase_options,
    progress: imgtool_progress_fn,
    user: *mut c_void,
) -> c_int {
    guard(move || {
        // SAFETY: path is NULL or NUL-terminated per the contract.
        let path = unsafe { arg_str(path, "imgtool_rebase: path") }?;
        let o = if opts.is_null() {
            imgtool_rebase_options::defaults()
        } else {
            // SAFETY: opts is an initialised imgtool_rebase_options.
            unsafe { read_options(opts, "imgtool_rebase: opts") }?
        };
        check_flags(o.flags, REBASE_FLAGS, "imgtool_rebase")?;
        // SAFETY: string fields of an initialised struct are NULL or
        // NUL-terminated (contract above); same for the next four.
        let format = unsafe { opt_nonempty(o.format, "imgtool_rebase: opts->format") }?;
        // SAFETY: as for format ("" is meaningful here: no backing file).
        let backing = unsafe { opt_str(o.backing_file, "imgtool_rebase: opts->backing_file") }?;
        // SAFETY: as for format.
        let backing_format =
            unsafe { opt_nonempty(o.backing_format, "imgtool_rebase: opts->backing_format") }?;
        // SAFETY: as for format.
        let cache = unsafe { opt_nonempty(o.cache, "imgtool_rebase: opts->cache") }?;
        // SAFETY: as for format.
        let backing_cache =
            unsafe { opt_nonempty(o.backing_cache, "imgtool_rebase: opts->backing_cache") }?;
        let unsafe_mode = o.flags & IMGTOOL_REBASE_UNSAFE != 0;
        if backing.is_none() && !unsafe_mode {
            return Err(crate::Error::invalid(
                "Must specify backing file (-b) or use unsafe mode (-u)",
            ));
        }
        let img = Image::open(
            path,
            &OpenOptions {
                format: format.map(str::to_string),
                writable: true,
                cache: cache.map_or(Ok(CacheMode::default()), CacheMode::parse)?,
                no_backing: unsafe_mode,
                ..OpenOptions::default()
            },
        )?;
        let ro = RebaseOptions {
            backing: backing.map(str::to_string),
            backing_format: backing_format.map(str::to_string),
            unsafe_mode,
            compress: o.flags & IMGTOOL_REBASE_COMPRESS != 0,
            force_share: o.flags & IMGTOOL_REBASE_FORCE_SHARE != 0,
            backing_cache: backing_cache.map_or(Ok(CacheMode::default()), CacheMode::parse)?,
        };
        match progress {
            Some(f) => {
                let mut cb = Callback::new(f, user);
                let mut p = move |pct: f64| cb.call(pct);
                rebase(img, &ro, Some(&mut p))
            }
            None => rebase(img, &ro, None),
        }
    })
}
