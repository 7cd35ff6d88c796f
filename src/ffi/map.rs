//! `imgtool_map`: the extents `qemu-img map` prints, one per call.

use std::ffi::{c_char, c_int};

use super::args::{arg_ref, check_out_struct, SizedOut};
use super::image::{
    imgtool_image, IMGTOOL_EXTENT_COMPRESSED, IMGTOOL_EXTENT_DATA, IMGTOOL_EXTENT_PRESENT,
    IMGTOOL_EXTENT_ZERO,
};
use super::panic::guard;
use crate::error::Error;
use crate::ops::map::{MapIter, MapOptions};

/// One `qemu-img map --output=json` entry (QAPI MapEntry), as `imgtool_map`
/// fills it. Set `struct_size` to `sizeof(imgtool_map_entry)` before the
/// first call (the library keeps it); on return it holds the number of
/// bytes the library filled in.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
#[allow(non_camel_case_types)]
pub struct imgtool_map_entry {
    /// Set by the caller to `sizeof(imgtool_map_entry)`.
    pub struct_size: u32,
    /// `IMGTOOL_EXTENT_*` bits ("data", "zero", "present", "compressed").
    pub flags: u32,
    /// Guest offset of the run ("start").
    pub start: u64,
    /// Length of the run in bytes ("length", > 0).
    pub length: u64,
    /// Host offset in `filename` ("offset"); valid when `has_offset`.
    pub offset: u64,
    /// Layer that decided the run ("depth"): 0 = the image, 1 = its
    /// backing file, ...
    pub depth: u32,
    /// Whether `offset` and `filename` are set.
    pub has_offset: bool,
    /// The file `offset` refers to ("filename"), or NULL. Owned by the
    /// handle: valid until `imgtool_close`; do not free.
    pub filename: *const c_char,
}

// SAFETY: repr(C), starts with u32 struct_size.
unsafe impl SizedOut for imgtool_map_entry {
    const NAME: &'static str = "imgtool_map_entry";
}

/// The run of guest bytes starting at `offset` with one status, merged as
/// `qemu-img map` merges them (adjacent block-status runs that agree on
/// every field and whose host offsets continue), looking at most `bytes`
/// ahead. Unlike `imgtool_block_status`, the runs are exactly the entries
/// of `qemu-img map --output=json`, with QEMU's refinements (zero clusters,
/// preallocated and compressed clusters, host offsets and file names).
///
/// Iterate by calling it in a loop, advancing `offset` by `out->length`
/// until the end (`imgtool_get_size`, or the end of the range you want):
///
/// ```c
/// imgtool_map_entry e = {.struct_size = sizeof e};
/// for (uint64_t off = 0; off < size; off += e.length)
///     if (imgtool_map(img, off, size - off, &e) != IMGTOOL_OK) break;
/// ```
///
/// Nothing is allocated for the caller. `offset` must be below the virtual
/// size and `bytes` non-zero (`IMGTOOL_ERANGE` otherwise); `bytes` is
/// clipped at the end of the image.
///
/// Errors: `IMGTOOL_EINVAL` (NULL arguments, `struct_size` not set),
/// `IMGTOOL_ERANGE`, `IMGTOOL_EIO`/`IMGTOOL_ECORRUPT` (unreadable
/// metadata: "Could not read file metadata: ...").
///
/// Thread safety: may run concurrently with other calls on the same
/// handle (except `imgtool_close`).
///
/// # Safety
/// `img` is NULL or a live handle; `out` is NULL or a writable
/// `imgtool_map_entry` whose `struct_size` is set.
#[no_mangle]
pub unsafe extern "C" fn imgtool_map(
    img: *mut imgtool_image,
    offset: u64,
    bytes: u64,
    out: *mut imgtool_map_entry,
) -> c_int {
    guard(move || {
        // SAFETY: out is NULL or writable with struct_size set.
        let out = unsafe { check_out_struct(out, "imgtool_map: out") }?;
        // SAFETY: img is NULL or a live handle.
        let h = unsafe { arg_ref(img.cast_const(), "imgtool_map: img") }?;
        let size = h.img.size();
        if bytes == 0 || offset >= size {
            return Err(Error::out_of_range(format!(
                "imgtool_map: range [{offset}, +{bytes}) is empty or starts at or beyond the end of the image ({size} bytes)"
            )));
        }
        let opts = MapOptions {
            start: offset,
            max_length: Some(bytes.min(size - offset)),
        };
        let e = match MapIter::new(&h.img, opts).next() {
            Some(r) => r?,
            None => return Err(Error::out_of_range("imgtool_map: nothing to map")),
        };
        let mut flags = 0;
        for (set, bit) in [
            (e.data, IMGTOOL_EXTENT_DATA),
            (e.zero, IMGTOOL_EXTENT_ZERO),
            (e.present, IMGTOOL_EXTENT_PRESENT),
            (e.compressed, IMGTOOL_EXTENT_COMPRESSED),
        ] {
            if set {
                flags |= bit;
            }
        }
        out.write(imgtool_map_entry {
            struct_size: std::mem::size_of::<imgtool_map_entry>() as u32,
            flags,
            start: e.start,
            length: e.length,
            offset: e.offset.unwrap_or(0),
            depth: u32::try_from(e.depth).unwrap_or(u32::MAX),
            has_offset: e.offset.is_some(),
            filename: e
                .filename
                .as_deref()
                .map_or(std::ptr::null(), |f| h.intern(f)),
        });
        Ok(())
    })
}
