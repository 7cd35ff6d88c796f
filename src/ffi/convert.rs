//! `imgtool_convert`: copy images into a new one (qemu-img convert).

use std::ffi::{c_char, c_int, c_void};

use super::args::{
    arg_out, arg_str, check_flags, null_error, opt_nonempty, read_options, SizedOptions,
};
use super::panic::guard;
use super::progress::Callback;
use crate::error::Error;
use crate::format::CreateOptions;
use crate::io::CacheMode;
use crate::ops::convert::{convert, ConvertOptions};

/// Progress callback for long operations.
///
/// Called with the percentage done (0.0 to 100.0, non-decreasing) and the
/// `user` pointer given to the operation. Return 0 to continue, non-zero to
/// cancel: the operation then stops, removes any output file it created and
/// returns `IMGTOOL_ECANCELED`.
///
/// It may be called from a thread other than the one that started the
/// operation, but never from two threads at once. It must not call back
/// into libimgtool for the same operation.
#[allow(non_camel_case_types)]
pub type imgtool_progress_fn =
    Option<unsafe extern "C" fn(percent: f64, user: *mut c_void) -> c_int>;

/// `imgtool_convert_options.flags`: compress the target (qemu-img `-c`;
/// qcow2 only).
pub const IMGTOOL_CONVERT_COMPRESS: u32 = 1 << 0;
/// `imgtool_convert_options.flags`: the target exists; write into it
/// instead of creating it (qemu-img `-n`). It must be large enough.
pub const IMGTOOL_CONVERT_NO_CREATE: u32 = 1 << 1;
/// `imgtool_convert_options.flags`: take no locks on the sources (`-U`).
pub const IMGTOOL_CONVERT_FORCE_SHARE: u32 = 1 << 2;
/// `imgtool_convert_options.flags`: allow out-of-order writes to the target
/// (`-W`).
pub const IMGTOOL_CONVERT_OUT_OF_ORDER: u32 = 1 << 3;

/// `imgtool_convert_options.flags`: copy the source's persistent bitmaps
/// (qemu-img convert `--bitmaps`; a single qcow2 source into qcow2).
pub const IMGTOOL_CONVERT_BITMAPS: u32 = 1 << 4;
/// `imgtool_convert_options.flags`: with `IMGTOOL_CONVERT_BITMAPS`, leave
/// out inconsistent (in-use) bitmaps with a notice instead of failing
/// (`--skip-broken-bitmaps`).
pub const IMGTOOL_CONVERT_SKIP_BROKEN_BITMAPS: u32 = 1 << 5;

const CONVERT_FLAGS: u32 = IMGTOOL_CONVERT_COMPRESS
    | IMGTOOL_CONVERT_NO_CREATE
    | IMGTOOL_CONVERT_FORCE_SHARE
    | IMGTOOL_CONVERT_OUT_OF_ORDER
    | IMGTOOL_CONVERT_BITMAPS
    | IMGTOOL_CONVERT_SKIP_BROKEN_BITMAPS;

/// How `imgtool_convert` converts. Initialise with
/// `imgtool_convert_options_init()`, then change fields.
#[repr(C)]
#[derive(Clone, Copy)]
#[allow(non_camel_case_types)]
pub struct imgtool_convert_options {
    /// `sizeof(imgtool_convert_options)`, set by `imgtool_convert_options_init`.
    pub struct_size: u32,
    /// `IMGTOOL_CONVERT_*` bits.
    pub flags: u32,
    /// Format of the sources (`-f`); NULL or "" probes each.
    pub src_format: *const c_char,
    /// Format of the target (`-O`); NULL or "" = "raw".
    pub out_format: *const c_char,
    /// Target creation options (`-o`, "key=value,..."); NULL or "" for none.
    pub options: *const c_char,
    /// Backing file of the target (`-B`); only data allocated in the
    /// sources' top layers is copied. NULL or "" for none.
    pub backing_file: *const c_char,
    /// Format of `backing_file` (`-F`); NULL or "" probes it.
    pub backing_format: *const c_char,
    /// Target cache mode (`-t`); NULL or "" = "unsafe", as qemu-img convert.
    pub target_cache: *const c_char,
    /// Source cache mode (`-T`); NULL or "" = "writeback".
    pub source_cache: *const c_char,
    /// Runs of zeros of at least this many bytes become holes (`-S`);
    /// default 4096, 0 writes every byte.
    pub sparse_size: u64,
    /// Parallel workers (`-m`), 1 to 16; default 8.
    pub num_workers: u32,
    /// Internal snapshot of the source to convert instead of its current
    /// state (`-l`): its ID or name, or "snapshot.id=ID" /
    /// "snapshot.name=NAME". Only with a single source. NULL or "" for the
    /// current state.
    pub snapshot: *const c_char,
    /// Id of the secret (`imgtool_secret_set`) unlocking encrypted sources
    /// (the top image of each); NULL or "" for none. Added after the first
    /// release, as is `target_key_secret`: a struct from an older header
    /// ends before them (NULL).
    pub source_key_secret: *const c_char,
    /// Id of the secret unlocking an existing encrypted target
    /// (`IMGTOOL_CONVERT_NO_CREATE`). A created target takes its secret
    /// from `options` ("encrypt.key-secret=ID"). NULL or "" for none.
    pub target_key_secret: *const c_char,
}

// SAFETY: repr(C), starts with u32 struct_size, fields are integers and raw
// pointers (any bit pattern is valid).
unsafe impl SizedOptions for imgtool_convert_options {
    const NAME: &'static str = "imgtool_convert_options";
    const MIN_SIZE: usize = std::mem::offset_of!(imgtool_convert_options, source_key_secret);
}

impl imgtool_convert_options {
    fn defaults() -> Self {
        let d = ConvertOptions::default();
        imgtool_convert_options {
            struct_size: std::mem::size_of::<Self>() as u32,
            flags: 0,
            src_format: std::ptr::null(),
            out_format: std::ptr::null(),
            options: std::ptr::null(),
            backing_file: std::ptr::null(),
            backing_format: std::ptr::null(),
            target_cache: std::ptr::null(),
            source_cache: std::ptr::null(),
            sparse_size: d.sparse_size,
            num_workers: u32::try_from(d.num_workers).unwrap_or(8),
            snapshot: std::ptr::null(),
            source_key_secret: std::ptr::null(),
            target_key_secret: std::ptr::null(),
        }
    }
}

/// Fill `opts` with the defaults of `qemu-img convert` (raw target, 4 KiB
/// sparse detection, 8 workers) and set `opts->struct_size`.
///
/// Returns `IMGTOOL_OK`, or `IMGTOOL_EINVAL` if `opts` is NULL.
///
/// Thread safety: any thread; touches only `opts`.
///
/// # Safety
/// `opts` is NULL or points to writable memory for an `imgtool_convert_options`.
#[no_mangle]
pub unsafe extern "C" fn imgtool_convert_options_init(opts: *mut imgtool_convert_options) -> c_int {
    guard(move || {
        // SAFETY: contract above.
        let out = unsafe { arg_out(opts, "imgtool_convert_options_init: opts") }?;
        out.write(imgtool_convert_options::defaults());
        Ok(())
    })
}

/// Convert (copy) `nsrcs` source images, concatenated, into `dst`, as
/// `qemu-img convert` does: the target is created (unless
/// `IMGTOOL_CONVERT_NO_CREATE`), kept sparse, and removed again if the
/// conversion fails or is cancelled.
///
/// `opts` may be NULL for the defaults (raw target). `progress` may be NULL;
/// otherwise it is called as work proceeds with `user`, and returning
/// non-zero from it cancels (`IMGTOOL_ECANCELED`).
///
/// Errors: `IMGTOOL_EINVAL` (NULL or empty source list, NULL `dst`, bad
/// options), errors from opening the sources (`IMGTOOL_ENOENT`,
/// `IMGTOOL_ELOCKED`, ...), `IMGTOOL_ENOTSUP` (e.g. compressing to raw),
/// `IMGTOOL_ECANCELED`, `IMGTOOL_ENOSPC`, `IMGTOOL_EIO`.
///
/// Thread safety: any thread; the call blocks until done and runs up to
/// `num_workers` threads of its own. The sources are opened read-only with
/// shared locks, so other readers may use them meanwhile; the target is
/// locked for writing.
///
/// # Safety
/// `srcs` is NULL or an array of `nsrcs` NUL-terminated strings; `dst` is
/// NULL or NUL-terminated; `opts` is NULL or initialised; `progress` is NULL
/// or a function safe to call with `user`.
#[no_mangle]
pub unsafe extern "C" fn imgtool_convert(
    srcs: *const *const c_char,
    nsrcs: usize,
    dst: *const c_char,
    opts: *const imgtool_convert_options,
    progress: imgtool_progress_fn,
    user: *mut c_void,
) -> c_int {
    guard(move || {
        if srcs.is_null() {
            return Err(null_error("imgtool_convert: srcs"));
        }
        if nsrcs == 0 {
            return Err(Error::invalid(
                "imgtool_convert: 'nsrcs' must be at least 1",
            ));
        }
        if nsrcs > isize::MAX as usize / std::mem::size_of::<*const c_char>() {
            return Err(Error::invalid("imgtool_convert: 'nsrcs' is too large"));
        }
        // SAFETY: srcs is non-null and points to nsrcs pointers per the
        // contract; the size was checked against isize::MAX above.
        let list = unsafe { std::slice::from_raw_parts(srcs, nsrcs) };
        let mut sources = Vec::with_capacity(nsrcs);
        for (i, &p) in list.iter().enumerate() {
            // SAFETY: each entry is NULL or NUL-terminated per the contract.
            let s = unsafe { arg_str(p, &format!("imgtool_convert: srcs[{i}]")) }?;
            sources.push(s.to_string());
        }
        // SAFETY: dst is NULL or NUL-terminated per the contract.
        let dst = unsafe { arg_str(dst, "imgtool_convert: dst") }?;
        let o = if opts.is_null() {
            imgtool_convert_options::defaults()
        } else {
            // SAFETY: opts is an initialised imgtool_convert_options.
            unsafe { read_options(opts, "imgtool_convert: opts") }?
        };
        check_flags(o.flags, CONVERT_FLAGS, "imgtool_convert")?;
        if !(1..=16).contains(&o.num_workers) {
            return Err(Error::invalid(
                "Invalid number of coroutines. Allowed number of coroutines is between 1 and 16",
            ));
        }
        // SAFETY: the string fields of an initialised options struct are
        // NULL or NUL-terminated (contract above); same for the next seven.
        let src_format =
            unsafe { opt_nonempty(o.src_format, "imgtool_convert: opts->src_format") }?;
        // SAFETY: as for src_format.
        let out_format =
            unsafe { opt_nonempty(o.out_format, "imgtool_convert: opts->out_format") }?;
        // SAFETY: as for src_format.
        let options = unsafe { opt_nonempty(o.options, "imgtool_convert: opts->options") }?;
        // SAFETY: as for src_format.
        let backing_file =
            unsafe { opt_nonempty(o.backing_file, "imgtool_convert: opts->backing_file") }?;
        // SAFETY: as for src_format.
        let backing_format =
            unsafe { opt_nonempty(o.backing_format, "imgtool_convert: opts->backing_format") }?;
        // SAFETY: as for src_format.
        let target_cache =
            unsafe { opt_nonempty(o.target_cache, "imgtool_convert: opts->target_cache") }?;
        // SAFETY: as for src_format.
        let source_cache =
            unsafe { opt_nonempty(o.source_cache, "imgtool_convert: opts->source_cache") }?;
        // SAFETY: as for src_format.
        let snapshot = unsafe { opt_nonempty(o.snapshot, "imgtool_convert: opts->snapshot") }?;
        // SAFETY: as for src_format.
        let source_key_secret = unsafe {
            opt_nonempty(
                o.source_key_secret,
                "imgtool_convert: opts->source_key_secret",
            )
        }?;
        // SAFETY: as for src_format.
        let target_key_secret = unsafe {
            opt_nonempty(
                o.target_key_secret,
                "imgtool_convert: opts->target_key_secret",
            )
        }?;
        let d = ConvertOptions::default();
        let co = ConvertOptions {
            src_format: src_format.map(str::to_string),
            out_format: out_format.unwrap_or("raw").to_string(),
            out_options: options.map_or(Ok(CreateOptions::new()), CreateOptions::parse)?,
            compress: o.flags & IMGTOOL_CONVERT_COMPRESS != 0,
            sparse_size: o.sparse_size,
            backing_file: backing_file.map(str::to_string),
            backing_format: backing_format.map(str::to_string),
            skip_create: o.flags & IMGTOOL_CONVERT_NO_CREATE != 0,
            num_workers: o.num_workers as usize,
            out_of_order: o.flags & IMGTOOL_CONVERT_OUT_OF_ORDER != 0,
            target_cache: target_cache.map_or(Ok(d.target_cache), CacheMode::parse)?,
            source_cache: source_cache.map_or(Ok(d.source_cache), CacheMode::parse)?,
            force_share: o.flags & IMGTOOL_CONVERT_FORCE_SHARE != 0,
            snapshot: snapshot.map(str::to_string),
            source_key_secret: source_key_secret.map(str::to_string),
            target_key_secret: target_key_secret.map(str::to_string),
            keep_on_error: false,
            target_is_zero: false,
            salvage: false,
            quiet: false,
            bitmaps: o.flags & IMGTOOL_CONVERT_BITMAPS != 0,
            skip_broken_bitmaps: o.flags & IMGTOOL_CONVERT_SKIP_BROKEN_BITMAPS != 0,
        };
        match progress {
            Some(f) => {
                let mut cb = Callback::new(f, user);
                let mut p = move |pct: f64| cb.call(pct);
                convert(&sources, dst, &co, Some(&mut p))
            }
            None => convert(&sources, dst, &co, None),
        }
    })
}
