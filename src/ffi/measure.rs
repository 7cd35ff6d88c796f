//! `imgtool_measure`: how large a new image would be (qemu-img measure).

use std::ffi::{c_char, c_int};

use super::args::{
    arg_out, arg_ref, check_flags, check_out_struct, opt_nonempty, read_options, SizedOptions,
    SizedOut,
};
use super::create::IMGTOOL_SIZE_DEFAULT;
use super::image::imgtool_image;
use super::panic::guard;
use super::strings::into_c_string;
use crate::error::Error;
use crate::ops::measure::{check_format, measure, parse_options};

/// What `imgtool_measure` measures. Initialise with
/// `imgtool_measure_options_init()`, then set `size` or pass a source.
#[repr(C)]
#[derive(Clone, Copy)]
#[allow(non_camel_case_types)]
pub struct imgtool_measure_options {
    /// `sizeof(imgtool_measure_options)`, set by
    /// `imgtool_measure_options_init`.
    pub struct_size: u32,
    /// Reserved for flags; must be 0.
    pub flags: u32,
    /// Format of the image to create (`-O`); NULL or "" = "raw".
    pub out_format: *const c_char,
    /// Its creation options (`-o`, "key=value,..."); NULL or "" for none.
    pub options: *const c_char,
    /// Virtual size of a new empty image (`--size`), or
    /// `IMGTOOL_SIZE_DEFAULT` (the default) when measuring a source image.
    pub size: u64,
}

// SAFETY: repr(C), starts with u32 struct_size, fields are integers and raw
// pointers (any bit pattern is valid).
unsafe impl SizedOptions for imgtool_measure_options {
    const NAME: &'static str = "imgtool_measure_options";
}

/// Fill `opts` with defaults (raw target, no options, no size) and set
/// `opts->struct_size`.
///
/// Returns `IMGTOOL_OK`, or `IMGTOOL_EINVAL` if `opts` is NULL.
///
/// Thread safety: any thread; touches only `opts`.
///
/// # Safety
/// `opts` is NULL or points to writable memory for an
/// `imgtool_measure_options`.
#[no_mangle]
pub unsafe extern "C" fn imgtool_measure_options_init(opts: *mut imgtool_measure_options) -> c_int {
    guard(move || {
        // SAFETY: contract above.
        let out = unsafe { arg_out(opts, "imgtool_measure_options_init: opts") }?;
        out.write(imgtool_measure_options {
            struct_size: std::mem::size_of::<imgtool_measure_options>() as u32,
            flags: 0,
            out_format: std::ptr::null(),
            options: std::ptr::null(),
            size: IMGTOOL_SIZE_DEFAULT,
        });
        Ok(())
    })
}

/// The result of `imgtool_measure` (QAPI BlockMeasureInfo). Set
/// `struct_size` to `sizeof(imgtool_measure_report)` before the call; on
/// return it holds the number of bytes the library filled in.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub struct imgtool_measure_report {
    /// Set by the caller to `sizeof(imgtool_measure_report)`.
    pub struct_size: u32,
    /// Whether `bitmaps` is valid (both the source and the target format
    /// can hold persistent bitmaps).
    pub has_bitmaps: bool,
    /// Bytes the new image needs for the source's data ("required").
    pub required: u64,
    /// Bytes it needs when fully allocated ("fully-allocated").
    pub fully_allocated: u64,
    /// Bytes for the source's persistent bitmaps ("bitmaps").
    pub bitmaps: u64,
}

// SAFETY: repr(C), starts with u32 struct_size.
unsafe impl SizedOut for imgtool_measure_report {
    const NAME: &'static str = "imgtool_measure_report";
}

/// Compute the host size an image of `opts->out_format` with
/// `opts->options` would need, as `qemu-img measure` does: either for a
/// new empty image of `opts->size` bytes (`source` NULL), or for a copy of
/// the open image `source` (as `imgtool_convert` would write it; open the
/// source with `imgtool_open_options.snapshot` to measure a snapshot).
///
/// `report` and `json` may each be NULL; `*json` receives the
/// `qemu-img measure --output=json` document (free with
/// `imgtool_free_string`).
///
/// Errors: `IMGTOOL_EINVAL` ("Either --size N or one filename must be
/// specified.", "--size N cannot be used together with a filename.",
/// invalid options for the format, unknown format), `IMGTOOL_ENOTSUP` (a
/// format that cannot be measured), `IMGTOOL_EIO` (reading the source's
/// block status).
///
/// Thread safety: only reads `source`; may run concurrently with other
/// calls on it (except `imgtool_close`).
///
/// # Safety
/// `opts` is NULL or initialised; `source` is NULL or a live handle;
/// `report` is NULL or a writable report with `struct_size` set; `json` is
/// NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn imgtool_measure(
    opts: *const imgtool_measure_options,
    source: *mut imgtool_image,
    report: *mut imgtool_measure_report,
    json: *mut *mut c_char,
) -> c_int {
    guard(move || {
        let json = if json.is_null() {
            None
        } else {
            // SAFETY: json is non-null and writable per the contract.
            let j = unsafe { arg_out(json, "imgtool_measure: json") }?;
            j.write(std::ptr::null_mut());
            Some(j)
        };
        let report = if report.is_null() {
            None
        } else {
            // SAFETY: report is writable with struct_size set.
            Some(unsafe { check_out_struct(report, "imgtool_measure: report") }?)
        };
        // SAFETY: opts is NULL or an initialised imgtool_measure_options.
        let o = unsafe { read_options(opts, "imgtool_measure: opts") }?;
        check_flags(o.flags, 0, "imgtool_measure")?;
        let source = if source.is_null() {
            None
        } else {
            // SAFETY: a live handle per the contract.
            Some(&unsafe { arg_ref(source.cast_const(), "imgtool_measure: source") }?.img)
        };
        let size = (o.size != IMGTOOL_SIZE_DEFAULT).then_some(o.size);
        match (source.is_some(), size.is_some()) {
            (true, true) => {
                return Err(Error::invalid(
                    "--size N cannot be used together with a filename.",
                ))
            }
            (false, false) => {
                return Err(Error::invalid(
                    "Either --size N or one filename must be specified.",
                ))
            }
            _ => {}
        }
        // SAFETY: string fields of an initialised struct are NULL or
        // NUL-terminated (contract above); same for options.
        let fmt = unsafe { opt_nonempty(o.out_format, "imgtool_measure: opts->out_format") }?
            .unwrap_or("raw");
        // SAFETY: as for out_format.
        let list = unsafe { opt_nonempty(o.options, "imgtool_measure: opts->options") }?;
        check_format(fmt)?;
        let mut co = parse_options(fmt, list.unwrap_or_default()).map_err(|e| {
            let m = format!("{}\nInvalid options for file format '{fmt}'", e.message());
            e.with_message(m)
        })?;
        if let Some(s) = size {
            co.set("size", &s.to_string());
        }
        let m = measure(fmt, &co, source)?;
        if let Some(out) = report {
            out.write(imgtool_measure_report {
                struct_size: std::mem::size_of::<imgtool_measure_report>() as u32,
                has_bitmaps: m.bitmaps.is_some(),
                required: m.required,
                fully_allocated: m.fully_allocated,
                bitmaps: m.bitmaps.unwrap_or(0),
            });
        }
        if let Some(j) = json {
            j.write(into_c_string(m.to_json().to_pretty())?);
        }
        Ok(())
    })
}
