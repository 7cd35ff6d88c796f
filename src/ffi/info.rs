//! `imgtool_info_json` (the `qemu-img info --output=json` report) and
//! `imgtool_get_info` (its common fields as a struct).

use std::ffi::{c_char, c_int, CString};

use super::args::{arg_out, arg_ref, check_out_struct, SizedOut};
use super::image::imgtool_image;
use super::panic::guard;
use super::strings::into_c_string;
use crate::error::Result;
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
/// Thread safety: may run concurrently with other calls on the same handle
/// (except `imgtool_close`).
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

/// The common facts about an image, as typed fields (`imgtool_get_info`).
/// Everything else `qemu-img info` knows (format-specific data, snapshots,
/// the file child) is in `imgtool_info_json`.
///
/// Set `struct_size` to `sizeof(imgtool_info)` before the call, e.g.
/// `imgtool_info info = { .struct_size = sizeof info };`; on return it
/// holds the number of bytes the library filled in. Release the strings
/// with `imgtool_info_free`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
#[allow(non_camel_case_types)]
pub struct imgtool_info {
    /// Set by the caller to `sizeof(imgtool_info)`.
    pub struct_size: u32,
    /// Number of layers in the open backing chain (1: no backing file, or
    /// opened with `IMGTOOL_OPEN_NO_BACKING`).
    pub chain_length: u32,
    /// Guest-visible size in bytes ("virtual-size").
    pub virtual_size: u64,
    /// Bytes the image file occupies on the host ("actual-size"); valid
    /// when `has_actual_size`.
    pub actual_size: u64,
    /// Cluster size in bytes ("cluster-size"); 0 for formats without
    /// clusters (raw).
    pub cluster_size: u64,
    /// Format name ("raw", "qcow2", ...). Static; do not free.
    pub format: *const c_char,
    /// Backing file name as recorded in the image ("backing-filename"), or
    /// NULL. Free with `imgtool_info_free`.
    pub backing_filename: *mut c_char,
    /// The backing file name resolved against the image's directory
    /// ("full-backing-filename"), or NULL. Free with `imgtool_info_free`.
    pub full_backing_filename: *mut c_char,
    /// Format recorded for the backing file ("backing-filename-format"), or
    /// NULL. Free with `imgtool_info_free`.
    pub backing_format: *mut c_char,
    /// Number of internal snapshots (qcow2).
    pub snapshot_count: u32,
    /// Whether `actual_size` is known.
    pub has_actual_size: bool,
    /// The image was not closed cleanly ("dirty-flag"; qcow2 lazy refcounts).
    pub dirty: bool,
    /// The image is encrypted ("encrypted").
    pub encrypted: bool,
    /// The format was probed from the file's content rather than given in
    /// `imgtool_open_options.format`.
    pub format_probed: bool,
}

// SAFETY: repr(C), starts with u32 struct_size.
unsafe impl SizedOut for imgtool_info {
    const NAME: &'static str = "imgtool_info";
}

/// A NUL-terminated static copy of a format name (formats are a fixed set).
fn static_format_name(name: &str) -> *const c_char {
    static NAMES: std::sync::OnceLock<Vec<(String, CString)>> = std::sync::OnceLock::new();
    let names = NAMES.get_or_init(|| {
        crate::format::FORMATS
            .iter()
            .map(|f| (f.to_string(), CString::new(*f).unwrap_or_default()))
            .collect()
    });
    names
        .iter()
        .find(|(n, _)| n == name)
        .map_or(c"".as_ptr(), |(_, c)| c.as_ptr())
}

fn opt_c_string(s: Option<&str>) -> Result<*mut c_char> {
    match s {
        Some(s) => into_c_string(s.to_string()),
        None => Ok(std::ptr::null_mut()),
    }
}

/// Fill `*out` with the image's common facts (its top layer, as
/// `qemu-img info` reports them).
///
/// On success the string fields are owned by the caller: release them with
/// `imgtool_info_free(out)`. On failure no string is allocated (the
/// pointers are set to NULL when the struct could be written).
///
/// Errors: `IMGTOOL_EINVAL` (NULL arguments, `struct_size` not set).
///
/// Thread safety: may run concurrently with other calls on the same
/// handle (except `imgtool_close`).
///
/// # Safety
/// `img` is NULL or a live handle; `out` is NULL or a writable
/// `imgtool_info` whose `struct_size` is set.
#[no_mangle]
pub unsafe extern "C" fn imgtool_get_info(
    img: *mut imgtool_image,
    out: *mut imgtool_info,
) -> c_int {
    guard(move || {
        // SAFETY: out is NULL or a writable imgtool_info with struct_size set.
        let out = unsafe { check_out_struct(out, "imgtool_get_info: out") }?;
        // SAFETY: img is NULL or a live handle per the contract.
        let h = unsafe { arg_ref(img.cast_const(), "imgtool_get_info: img") }?;
        let i = ImageInfo::of(&h.img);
        let mut v = imgtool_info {
            struct_size: std::mem::size_of::<imgtool_info>() as u32,
            chain_length: u32::try_from(h.img.chain_len()).unwrap_or(u32::MAX),
            virtual_size: i.virtual_size,
            actual_size: i.actual_size.unwrap_or(0),
            cluster_size: i.cluster_size.unwrap_or(0),
            format: static_format_name(h.img.format()),
            backing_filename: std::ptr::null_mut(),
            full_backing_filename: std::ptr::null_mut(),
            backing_format: std::ptr::null_mut(),
            snapshot_count: u32::try_from(i.snapshots.len()).unwrap_or(u32::MAX),
            has_actual_size: i.actual_size.is_some(),
            dirty: i.dirty_flag,
            encrypted: i.encrypted,
            format_probed: h.img.format_was_probed(),
        };
        // Allocate the strings last; free what was made if one fails.
        let strings = (|| -> Result<()> {
            v.backing_filename = opt_c_string(i.backing_filename.as_deref())?;
            v.full_backing_filename = opt_c_string(i.full_backing_filename.as_deref())?;
            v.backing_format = opt_c_string(i.backing_filename_format.as_deref())?;
            Ok(())
        })();
        if let Err(e) = strings {
            // SAFETY: v's strings are NULL or fresh from into_c_string.
            unsafe { free_info_strings(&mut v) };
            return Err(e);
        }
        out.write(v);
        Ok(())
    })
}

/// # Safety
/// Each string field is NULL or from `into_c_string`, not yet freed.
unsafe fn free_info_strings(v: &mut imgtool_info) {
    for p in [
        &mut v.backing_filename,
        &mut v.full_backing_filename,
        &mut v.backing_format,
    ] {
        // SAFETY: per the contract.
        unsafe { super::strings::imgtool_free_string(*p) };
        *p = std::ptr::null_mut();
    }
}

/// Release the strings `imgtool_get_info` put into `info` and set them to
/// NULL (the struct itself is the caller's). NULL, and a struct whose
/// strings are already NULL, are accepted; calling it twice is harmless.
///
/// Thread safety: may be called from any thread, once per filled struct.
///
/// # Safety
/// `info` is NULL or a struct filled by `imgtool_get_info` (or with NULL
/// string fields), not shared with another thread during the call.
#[no_mangle]
pub unsafe extern "C" fn imgtool_info_free(info: *mut imgtool_info) {
    super::panic::guard_value((), move || {
        // SAFETY: info is NULL or a valid, unshared imgtool_info.
        if let Some(v) = unsafe { info.as_mut() } {
            // SAFETY: its strings came from imgtool_get_info (contract).
            unsafe { free_info_strings(v) };
        }
    })
}
