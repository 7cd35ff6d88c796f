//! `imgtool_info_json`: the `qemu-img info --output=json` report.

use std::ffi::{c_char, c_int};

use super::args::{arg_out, arg_ref};
use super::image::imgtool_image;
use super::panic::guard;
use super::strings::into_c_string;
use crate::info::ImageInfo;

/// Describe the image (its top layer, not the backing files) as JSON: the
/// same document `qemu-img info --output=json` prints, pretty-printed the
/// same way (QAPI ImageInfo: "filename", "format", "virtual-size",
/// "actual-size", "cluster-size", "backing-filename", "format-specific",
/// "children", ...).
///
/// On success `*out` receives a NUL-terminated string to release with
/// `imgtool_free_string`; on failure `*out` is set to NULL.
///
/// # Safety
/// `img` is a live handle; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn imgtool_info_json(
    img: *mut imgtool_image,
    out: *mut *mut c_char,
) -> c_int {
    guard(move || {
        // SAFETY: out is NULL or writable per the contract.
        let out = unsafe { arg_out(out, "imgtool_info_json: out") }?;
        out.write(std::ptr::null_mut());
        // SAFETY: img is NULL or a live handle per the contract.
        let h = unsafe { arg_ref(img.cast_const(), "imgtool_info_json: img") }?;
        let json = ImageInfo::of(&h.img).to_json().to_pretty();
        out.write(into_c_string(json)?);
        Ok(())
    })
}
