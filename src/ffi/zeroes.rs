//! `imgtool_write_zeroes` and `imgtool_discard`: the two writes without a
//! data buffer.

use std::ffi::c_int;

use super::args::{check_flags, check_writable};
use super::image::{handle, imgtool_image};
use super::panic::guard;

/// `imgtool_write_zeroes` flag: the range may be deallocated (a hole or an
/// unallocated/zero cluster) instead of having zeros written, as
/// `qemu-io -c 'write -z -u'` does. Without it the format keeps the space
/// allocated where it can.
pub const IMGTOOL_ZERO_MAY_UNMAP: u32 = 1 << 0;

const ZERO_FLAGS: u32 = IMGTOOL_ZERO_MAY_UNMAP;

/// Make `len` guest bytes at `offset` read as zeros, without passing a
/// buffer. On qcow2 this marks whole clusters as zero clusters (no data
/// written) and writes zeros into partial ones; on raw it punches holes or
/// writes zeros. Reads from a backing file no longer show through the
/// range.
///
/// The image must have been opened with `IMGTOOL_OPEN_WRITABLE`
/// (`IMGTOOL_EACCES` otherwise). Any offset and length are allowed; a range
/// beyond the virtual size fails with `IMGTOOL_ERANGE` and changes
/// nothing. `flags` is 0 or `IMGTOOL_ZERO_MAY_UNMAP`.
///
/// Thread safety: like `imgtool_write`, may run concurrently with other
/// I/O on the same handle.
///
/// # Safety
/// `img` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn imgtool_write_zeroes(
    img: *mut imgtool_image,
    offset: u64,
    len: u64,
    flags: u32,
) -> c_int {
    guard(move || {
        // SAFETY: img is NULL or a live handle per the contract.
        let img = unsafe { handle(img, "imgtool_write_zeroes: img") }?;
        check_flags(flags, ZERO_FLAGS, "imgtool_write_zeroes")?;
        check_writable(img)?;
        img.write_zeroes(offset, len, flags & IMGTOOL_ZERO_MAY_UNMAP != 0)
    })
}

/// Tell the image that `len` guest bytes at `offset` are no longer needed
/// (TRIM). The format may free the space; afterwards the range reads as
/// either its old content, zeros or the backing file's data, depending on
/// the format, so use `imgtool_write_zeroes` when the content matters.
/// Formats that cannot discard ignore the request and return `IMGTOOL_OK`.
///
/// The image must have been opened with `IMGTOOL_OPEN_WRITABLE`
/// (`IMGTOOL_EACCES` otherwise); a range beyond the virtual size fails
/// with `IMGTOOL_ERANGE`.
///
/// Thread safety: like `imgtool_write`, may run concurrently with other
/// I/O on the same handle.
///
/// # Safety
/// `img` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn imgtool_discard(img: *mut imgtool_image, offset: u64, len: u64) -> c_int {
    guard(move || {
        // SAFETY: img is NULL or a live handle per the contract.
        let img = unsafe { handle(img, "imgtool_discard: img") }?;
        check_writable(img)?;
        img.discard(offset, len)
    })
}
