//! The image handle: open, close, read, write, flush, size, block status.

use std::ffi::{c_char, c_int, c_void};

use super::args::{
    arg_out, arg_ref, arg_str, check_flags, opt_nonempty, read_options, SizedOptions,
};
use super::panic::guard;
use crate::error::Error;
use crate::image::{Image, OpenOptions};
use crate::io::CacheMode;

/// An open image: a format driver plus its backing chain.
///
/// Created by `imgtool_open`, released by `imgtool_close`. Opaque.
///
/// Thread safety: one handle may be used from several threads at once for
/// `imgtool_read`, `imgtool_write`, `imgtool_flush`, `imgtool_get_size`,
/// `imgtool_block_status` and `imgtool_info_json` (the library locks its
/// metadata internally; data I/O runs in parallel). Writes to overlapping
/// ranges from different threads land in an unspecified order, as with
/// pwrite(2). `imgtool_close` must not run concurrently with any other call
/// on the same handle, and the handle must not be used after it.
#[allow(non_camel_case_types)]
pub struct imgtool_image {
    pub(crate) img: Image,
    /// File names handed to C (e.g. `imgtool_map_entry.filename`), kept
    /// until the handle is closed so the pointers stay valid. Interned:
    /// one entry per distinct name, so it stays as small as the chain.
    pub(crate) names: parking_lot::Mutex<Vec<std::ffi::CString>>,
}

impl imgtool_image {
    pub(crate) fn new(img: Image) -> Self {
        imgtool_image {
            img,
            names: parking_lot::Mutex::new(Vec::new()),
        }
    }

    /// A NUL-terminated copy of `name` that lives as long as the handle.
    pub(crate) fn intern(&self, name: &str) -> *const c_char {
        let mut names = self.names.lock();
        if let Some(c) = names.iter().find(|c| c.as_bytes() == name.as_bytes()) {
            return c.as_ptr();
        }
        let c = std::ffi::CString::new(name.replace('\0', "\\0")).unwrap_or_default();
        // The CString's heap buffer does not move when the Vec grows.
        let p = c.as_ptr();
        names.push(c);
        p
    }
}

// The documented thread-safety rests on this.
const _: fn() = || {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<imgtool_image>();
};

/// `imgtool_open_options.flags`: open for writing (default: read-only).
pub const IMGTOOL_OPEN_WRITABLE: u32 = 1 << 0;
/// `imgtool_open_options.flags`: take no image locks (qemu-img `-U`,
/// force-share); only safe for read-only inspection of an image in use.
pub const IMGTOOL_OPEN_FORCE_SHARE: u32 = 1 << 1;
/// `imgtool_open_options.flags`: do not open the backing chain;
/// unallocated areas then read as zeros.
pub const IMGTOOL_OPEN_NO_BACKING: u32 = 1 << 2;

const OPEN_FLAGS: u32 = IMGTOOL_OPEN_WRITABLE | IMGTOOL_OPEN_FORCE_SHARE | IMGTOOL_OPEN_NO_BACKING;

/// How `imgtool_open` opens an image. Initialise with
/// `imgtool_open_options_init()`, then change fields.
///
/// Layout policy for every `imgtool_*_options` struct: fields are only
/// ever appended, and an `_init` function keeps writing the size it wrote
/// when it was introduced, so programs built against this header stay
/// compatible with later 0.x libraries.
#[repr(C)]
#[derive(Clone, Copy)]
#[allow(non_camel_case_types)]
pub struct imgtool_open_options {
    /// `sizeof(imgtool_open_options)`, set by `imgtool_open_options_init`.
    pub struct_size: u32,
    /// `IMGTOOL_OPEN_*` bits; 0 = read-only with locking and backing chain.
    pub flags: u32,
    /// Format name ("raw", "qcow2", ...); NULL or "" probes the file.
    pub format: *const c_char,
    /// Cache mode as in qemu-img `-t`: "writeback" (default when NULL),
    /// "writethrough", "none", "directsync", "unsafe".
    pub cache: *const c_char,
    /// Open this internal snapshot (qcow2) instead of the current state,
    /// read-only, as qemu-img's `-l` does: its ID or name, or
    /// "snapshot.id=ID" / "snapshot.name=NAME". NULL or "" for the current
    /// state. Not with `IMGTOOL_OPEN_WRITABLE`.
    pub snapshot: *const c_char,
    /// Id of the secret (see `imgtool_secret_set`) unlocking an encrypted
    /// image (qcow2 LUKS or AES, qcow AES, luks), as qemu-img's
    /// `encrypt.key-secret=ID`; NULL or "" for none. Without it an encrypted
    /// image opens for metadata only: reads and writes fail. Added after the
    /// first release: a struct from an older header ends before it (NULL).
    pub key_secret: *const c_char,
}

// SAFETY: repr(C), starts with u32 struct_size, fields are integers and raw
// pointers (any bit pattern is valid).
unsafe impl SizedOptions for imgtool_open_options {
    const NAME: &'static str = "imgtool_open_options";
    const MIN_SIZE: usize = std::mem::offset_of!(imgtool_open_options, key_secret);
}

impl imgtool_open_options {
    fn defaults() -> Self {
        imgtool_open_options {
            struct_size: std::mem::size_of::<Self>() as u32,
            flags: 0,
            format: std::ptr::null(),
            cache: std::ptr::null(),
            snapshot: std::ptr::null(),
            key_secret: std::ptr::null(),
        }
    }
}

/// Fill `opts` with defaults (read-only, probe the format, writeback cache)
/// and set `opts->struct_size`.
///
/// Returns `IMGTOOL_OK`, or `IMGTOOL_EINVAL` if `opts` is NULL.
///
/// Thread safety: any thread; touches only `opts`.
///
/// # Safety
/// `opts` is NULL or points to writable memory for an `imgtool_open_options`.
#[no_mangle]
pub unsafe extern "C" fn imgtool_open_options_init(opts: *mut imgtool_open_options) -> c_int {
    guard(move || {
        // SAFETY: contract above.
        let out = unsafe { arg_out(opts, "imgtool_open_options_init: opts") }?;
        out.write(imgtool_open_options::defaults());
        Ok(())
    })
}

/// Open the image at `path` with its backing chain.
///
/// `opts` may be NULL for the defaults (read-only, format probed). On
/// success `*out` receives a handle to release with `imgtool_close`; on
/// failure `*out` is set to NULL.
///
/// Errors: `IMGTOOL_EINVAL` (NULL `path`/`out`, non-UTF-8 strings, bad
/// options, unknown format), `IMGTOOL_ENOENT`, `IMGTOOL_EACCES`,
/// `IMGTOOL_ELOCKED` (in use by another process), `IMGTOOL_ECORRUPT`,
/// `IMGTOOL_ENOTSUP`, `IMGTOOL_EIO`.
///
/// Thread safety: any thread. Opening the same file twice for writing, from
/// this or another process, fails with `IMGTOOL_ELOCKED` (image locks).
///
/// # Safety
/// `path` is NULL or a NUL-terminated string; `opts` is NULL or an
/// initialised `imgtool_open_options`; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn imgtool_open(
    path: *const c_char,
    opts: *const imgtool_open_options,
    out: *mut *mut imgtool_image,
) -> c_int {
    guard(move || {
        // SAFETY: out is NULL or writable per the contract.
        let out = unsafe { arg_out(out, "imgtool_open: out") }?;
        // Never leave the caller's pointer uninitialised, even on error.
        out.write(std::ptr::null_mut());
        // SAFETY: path is NULL or NUL-terminated per the contract.
        let path = unsafe { arg_str(path, "imgtool_open: path") }?;
        let o = if opts.is_null() {
            imgtool_open_options::defaults()
        } else {
            // SAFETY: opts is an initialised imgtool_open_options.
            unsafe { read_options(opts, "imgtool_open: opts") }?
        };
        check_flags(o.flags, OPEN_FLAGS, "imgtool_open")?;
        // SAFETY: the string fields of an initialised options struct are
        // NULL or NUL-terminated (contract above).
        let format = unsafe { opt_nonempty(o.format, "imgtool_open: opts->format") }?;
        // SAFETY: as for format.
        let cache = unsafe { opt_nonempty(o.cache, "imgtool_open: opts->cache") }?;
        // SAFETY: as for format.
        let snapshot = unsafe { opt_nonempty(o.snapshot, "imgtool_open: opts->snapshot") }?;
        // SAFETY: as for format.
        let key_secret = unsafe { opt_nonempty(o.key_secret, "imgtool_open: opts->key_secret") }?;
        let oo = OpenOptions {
            format: format.map(str::to_string),
            writable: o.flags & IMGTOOL_OPEN_WRITABLE != 0,
            cache: cache.map_or(Ok(CacheMode::default()), CacheMode::parse)?,
            force_share: o.flags & IMGTOOL_OPEN_FORCE_SHARE != 0,
            no_backing: o.flags & IMGTOOL_OPEN_NO_BACKING != 0,
            snapshot: snapshot.map(str::to_string),
            key_secret: key_secret.map(str::to_string),
            ..OpenOptions::default()
        };
        let img = Image::open(path, &oo)?;
        out.write(Box::into_raw(Box::new(imgtool_image::new(img))));
        Ok(())
    })
}

/// Flush and close an image, releasing the handle.
///
/// The handle is released even when closing fails (the return value then
/// reports the failed final flush, e.g. `IMGTOOL_EIO` or `IMGTOOL_ENOSPC`).
/// NULL is accepted and ignored (returns `IMGTOOL_OK`), like free(3).
///
/// Thread safety: must not run concurrently with any other call on `img`.
///
/// # Safety
/// `img` is NULL or a handle from `imgtool_open` not yet closed, and no other
/// thread uses it during or after this call.
#[no_mangle]
pub unsafe extern "C" fn imgtool_close(img: *mut imgtool_image) -> c_int {
    guard(move || {
        if img.is_null() {
            return Ok(());
        }
        // SAFETY: img came from Box::into_raw in imgtool_open and ownership
        // returns to us exactly once, per the contract.
        let b = unsafe { Box::from_raw(img) };
        b.img.close()
    })
}

/// Borrow the image behind a handle.
///
/// # Safety
/// `img` is NULL or a live handle from `imgtool_open`.
pub(crate) unsafe fn handle<'a>(img: *const imgtool_image, what: &str) -> Result<&'a Image, Error> {
    // SAFETY: forwarded contract; imgtool_image is only ever created by
    // imgtool_open and only released by imgtool_close.
    Ok(&unsafe { arg_ref(img, what) }?.img)
}

/// Read `len` bytes of guest data at `offset` into `buf`, resolving the
/// backing chain (unallocated areas read as zeros).
///
/// Any offset and length are allowed (no alignment needed). A range that
/// goes beyond the virtual size fails with `IMGTOOL_ERANGE` and reads
/// nothing. `buf` may be NULL only when `len` is 0.
///
/// Thread safety: may run concurrently with reads, writes and other calls
/// on the same handle (except `imgtool_close`).
///
/// # Safety
/// `img` is a live handle; `buf` is NULL or writable for `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn imgtool_read(
    img: *mut imgtool_image,
    buf: *mut c_void,
    len: usize,
    offset: u64,
) -> c_int {
    guard(move || {
        // SAFETY: img is a live handle per the contract.
        let img = unsafe { handle(img, "imgtool_read: img") }?;
        // SAFETY: buf is NULL or writable for len bytes per the contract;
        // the slice lives only for this call.
        let b = unsafe { super::args::arg_bytes_mut(buf, len, "imgtool_read: buf") }?;
        img.read_at(b, offset)
    })
}

/// Write `len` bytes from `buf` at guest `offset`.
///
/// Any offset and length are allowed (no alignment needed); the format
/// handles partial clusters (copy-on-write from the backing file). The image
/// must have been opened with `IMGTOOL_OPEN_WRITABLE`. A range beyond the
/// virtual size fails with `IMGTOOL_ERANGE` and writes nothing. Data is
/// durable only after `imgtool_flush` or `imgtool_close`. `buf` may be NULL
/// only when `len` is 0.
///
/// Thread safety: may run concurrently with reads, writes and other calls
/// on the same handle (except `imgtool_close`); overlapping concurrent
/// writes land in an unspecified order.
///
/// # Safety
/// `img` is a live handle; `buf` is NULL or readable for `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn imgtool_write(
    img: *mut imgtool_image,
    buf: *const c_void,
    len: usize,
    offset: u64,
) -> c_int {
    guard(move || {
        // SAFETY: img is a live handle per the contract.
        let img = unsafe { handle(img, "imgtool_write: img") }?;
        // SAFETY: buf is NULL or readable for len bytes per the contract.
        let b = unsafe { super::args::arg_bytes(buf, len, "imgtool_write: buf") }?;
        super::args::check_writable(img)?;
        img.write_at(b, offset)
    })
}

/// Write back cached data and metadata of the image to the host and flush
/// the host file (unless the cache mode is "unsafe").
///
/// Thread safety: may run concurrently with other calls on the same handle
/// (except `imgtool_close`); it makes durable what completed before it.
///
/// # Safety
/// `img` is a live handle.
#[no_mangle]
pub unsafe extern "C" fn imgtool_flush(img: *mut imgtool_image) -> c_int {
    guard(move || {
        // SAFETY: img is a live handle per the contract.
        unsafe { handle(img, "imgtool_flush: img") }?.flush()
    })
}

/// Store the virtual size of the image in bytes in `*out`.
///
/// Thread safety: may run concurrently with other calls on the same handle
/// (except `imgtool_close`).
///
/// # Safety
/// `img` is a live handle; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn imgtool_get_size(img: *mut imgtool_image, out: *mut u64) -> c_int {
    guard(move || {
        // SAFETY: per the contract.
        let img = unsafe { handle(img, "imgtool_get_size: img") }?;
        // SAFETY: per the contract.
        let out = unsafe { arg_out(out, "imgtool_get_size: out") }?;
        out.write(img.size());
        Ok(())
    })
}

/// `imgtool_extent.flags`: the run holds data (reads come from a file).
pub const IMGTOOL_EXTENT_DATA: u32 = 1 << 0;
/// `imgtool_extent.flags`: the run reads as zeros.
pub const IMGTOOL_EXTENT_ZERO: u32 = 1 << 1;
/// `imgtool_extent.flags`: the run is allocated in some layer of the chain
/// (clear: no layer has it, it reads as zeros).
pub const IMGTOOL_EXTENT_PRESENT: u32 = 1 << 2;
/// `imgtool_extent.flags`: the data is stored compressed.
pub const IMGTOOL_EXTENT_COMPRESSED: u32 = 1 << 3;

/// One run of guest bytes with the same status, as `imgtool_block_status`
/// reports it (the fields of one `qemu-img map --output=json` entry).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub struct imgtool_extent {
    /// Length of the run in bytes (> 0).
    pub length: u64,
    /// Host offset of the first byte in the file of the layer at `depth`;
    /// meaningful only when `has_offset` is true.
    pub offset: u64,
    /// Layer that decided this run: 0 = the image itself, 1 = its backing
    /// file, and so on.
    pub depth: u32,
    /// `IMGTOOL_EXTENT_*` bits.
    pub flags: u32,
    /// Whether `offset` is valid.
    pub has_offset: bool,
}

/// Status of the run starting at guest `offset`, looking at most `bytes`
/// ahead, resolved through the backing chain.
///
/// Iterate an image by calling this in a loop, advancing `offset` by
/// `out->length` until the virtual size is reached. `offset` must be below
/// the virtual size and `bytes` non-zero (`IMGTOOL_ERANGE` otherwise);
/// `bytes` is clipped at the end of the image.
///
/// Thread safety: may run concurrently with other calls on the same handle
/// (except `imgtool_close`); with concurrent writes the answer may already
/// be stale.
///
/// # Safety
/// `img` is a live handle; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn imgtool_block_status(
    img: *mut imgtool_image,
    offset: u64,
    bytes: u64,
    out: *mut imgtool_extent,
) -> c_int {
    guard(move || {
        // SAFETY: per the contract.
        let img = unsafe { handle(img, "imgtool_block_status: img") }?;
        // SAFETY: per the contract.
        let out = unsafe { arg_out(out, "imgtool_block_status: out") }?;
        if bytes == 0 {
            return Err(Error::out_of_range(
                "imgtool_block_status: 'bytes' must not be 0",
            ));
        }
        let e = img.block_status(offset, bytes)?;
        let mut flags = 0;
        if e.data {
            flags |= IMGTOOL_EXTENT_DATA;
        }
        if e.zero {
            flags |= IMGTOOL_EXTENT_ZERO;
        }
        if e.present {
            flags |= IMGTOOL_EXTENT_PRESENT;
        }
        if e.compressed {
            flags |= IMGTOOL_EXTENT_COMPRESSED;
        }
        out.write(imgtool_extent {
            length: e.len,
            offset: e.offset.unwrap_or(0),
            depth: u32::try_from(e.depth).unwrap_or(u32::MAX),
            flags,
            has_offset: e.offset.is_some(),
        });
        Ok(())
    })
}
