//! `imgtool_commit`: merge an overlay into its backing file (qemu-img commit).

use std::ffi::{c_char, c_int, c_void};

use super::args::{arg_out, arg_str, check_flags, opt_nonempty, read_options, SizedOptions};
use super::convert::imgtool_progress_fn;
use super::panic::guard;
use super::progress::Callback;
use crate::image::{Image, OpenOptions};
use crate::io::CacheMode;
use crate::ops::commit::{commit, CommitOptions};

/// `imgtool_commit_options.flags`: leave the top image as it is instead of
/// emptying it (qemu-img commit `-d`). Implied by a `base`.
pub const IMGTOOL_COMMIT_DROP: u32 = 1 << 0;

const COMMIT_FLAGS: u32 = IMGTOOL_COMMIT_DROP;

/// How `imgtool_commit` commits. Initialise with
/// `imgtool_commit_options_init()`, then change fields.
#[repr(C)]
#[derive(Clone, Copy)]
#[allow(non_camel_case_types)]
pub struct imgtool_commit_options {
    /// `sizeof(imgtool_commit_options)`, set by `imgtool_commit_options_init`.
    pub struct_size: u32,
    /// `IMGTOOL_COMMIT_*` bits.
    pub flags: u32,
    /// Format of the top image (`-f`); NULL or "" probes it.
    pub format: *const c_char,
    /// The image of the backing chain to commit into (`-b`), as named in
    /// the chain or as a path; NULL or "" for the top's backing file.
    pub base: *const c_char,
    /// Cache mode for the images written (`-t`); NULL or "" = "writeback".
    pub cache: *const c_char,
}

// SAFETY: repr(C), starts with u32 struct_size, fields are integers and raw
// pointers (any bit pattern is valid).
unsafe impl SizedOptions for imgtool_commit_options {
    const NAME: &'static str = "imgtool_commit_options";
}

impl imgtool_commit_options {
    fn defaults() -> Self {
        imgtool_commit_options {
            struct_size: std::mem::size_of::<Self>() as u32,
            flags: 0,
            format: std::ptr::null(),
            base: std::ptr::null(),
            cache: std::ptr::null(),
        }
    }
}

/// Fill `opts` with the defaults of `qemu-img commit` (into the immediate
/// backing file, then empty the top; format probed; writeback cache) and
/// set `opts->struct_size`.
///
/// Returns `IMGTOOL_OK`, or `IMGTOOL_EINVAL` if `opts` is NULL.
///
/// Thread safety: any thread; touches only `opts`.
///
/// # Safety
/// `opts` is NULL or points to writable memory for an `imgtool_commit_options`.
#[no_mangle]
pub unsafe extern "C" fn imgtool_commit_options_init(opts: *mut imgtool_commit_options) -> c_int {
    guard(move || {
        // SAFETY: contract above.
        let out = unsafe { arg_out(opts, "imgtool_commit_options_init: opts") }?;
        out.write(imgtool_commit_options::defaults());
        Ok(())
    })
}

/// Commit the image at `path` into its backing file, as `qemu-img commit`
/// does: everything the top image (and any layer between it and the base)
/// has allocated is written into the base, then the top is emptied so its
/// reads fall through to the base (unless `IMGTOOL_COMMIT_DROP` or a
/// `base` is given).
///
/// `opts` may be NULL for the defaults. `progress` may be NULL; otherwise
/// it gets the percentage done, and returning non-zero from it cancels
/// (`IMGTOOL_ECANCELED`). A cancelled or failed commit may leave part of
/// the data written into the base (as with qemu-img): the top image is
/// still complete and its content unchanged, but other images using the
/// base may see the new data.
///
/// Errors: `IMGTOOL_EINVAL` (no backing file: "Image does not have a
/// backing file"; a `base` not in the chain; bad options), errors from
/// opening the images (`IMGTOOL_ENOENT`, `IMGTOOL_ELOCKED`, ...),
/// `IMGTOOL_ENOTSUP` (a format that cannot be emptied), `IMGTOOL_ECANCELED`,
/// `IMGTOOL_ENOSPC`, `IMGTOOL_EIO`.
///
/// Thread safety: any thread; the images are locked for writing for the
/// duration, so they must not be open elsewhere.
///
/// # Safety
/// `path` is NULL or NUL-terminated; `opts` is NULL or initialised;
/// `progress` is NULL or safe to call with `user`.
#[no_mangle]
pub unsafe extern "C" fn imgtool_commit(
    path: *const c_char,
    opts: *const imgtool_commit_options,
    progress: imgtool_progress_fn,
    user: *mut c_void,
) -> c_int {
    guard(move || {
        // SAFETY: path is NULL or NUL-terminated per the contract.
        let path = unsafe { arg_str(path, "imgtool_commit: path") }?;
        let o = if opts.is_null() {
            imgtool_commit_options::defaults()
        } else {
            // SAFETY: opts is an initialised imgtool_commit_options.
            unsafe { read_options(opts, "imgtool_commit: opts") }?
        };
        check_flags(o.flags, COMMIT_FLAGS, "imgtool_commit")?;
        // SAFETY: string fields of an initialised struct are NULL or
        // NUL-terminated (contract above); same for the next two.
        let format = unsafe { opt_nonempty(o.format, "imgtool_commit: opts->format") }?;
        // SAFETY: as for format.
        let base = unsafe { opt_nonempty(o.base, "imgtool_commit: opts->base") }?;
        // SAFETY: as for format.
        let cache = unsafe { opt_nonempty(o.cache, "imgtool_commit: opts->cache") }?;
        let cache = cache.map_or(Ok(CacheMode::default()), CacheMode::parse)?;
        let img = Image::open(
            path,
            &OpenOptions {
                format: format.map(str::to_string),
                writable: true,
                cache,
                ..OpenOptions::default()
            },
        )?;
        let co = CommitOptions {
            base: base.map(str::to_string),
            drop: o.flags & IMGTOOL_COMMIT_DROP != 0,
            cache,
        };
        match progress {
            Some(f) => {
                let mut cb = Callback::new(f, user);
                let mut p = move |pct: f64| cb.call(pct);
                commit(img, path, &co, Some(&mut p))
            }
            None => commit(img, path, &co, None),
        }
    })
}
