//! `imgtool_dd`: copy an image's bytes, in blocks, into a new image
//! (qemu-img dd).

use std::ffi::{c_char, c_int};

use super::args::{arg_out, arg_str, check_flags, opt_nonempty, read_options, SizedOptions};
use super::panic::guard;
use crate::image::{Image, OpenOptions};
use crate::ops::dd::{check_out_format, dd, DdError, DdOptions};

/// `imgtool_dd_options.flags`: open the input without taking its lock
/// (qemu-img dd `-U`).
pub const IMGTOOL_DD_FORCE_SHARE: u32 = 1 << 0;

const DD_FLAGS: u32 = IMGTOOL_DD_FORCE_SHARE;

/// How `imgtool_dd` copies. Initialise with `imgtool_dd_options_init()`,
/// then change fields.
#[repr(C)]
#[derive(Clone, Copy)]
#[allow(non_camel_case_types)]
pub struct imgtool_dd_options {
    /// `sizeof(imgtool_dd_options)`, set by `imgtool_dd_options_init`.
    pub struct_size: u32,
    /// `IMGTOOL_DD_*` bits.
    pub flags: u32,
    /// Format of the input (`-f`); NULL or "" probes it.
    pub src_format: *const c_char,
    /// Format of the output (`-O`); NULL or "" = "raw".
    pub out_format: *const c_char,
    /// Block size in bytes (`bs=`), 1 to 2^31-1; default 512.
    pub block_size: u64,
    /// Input blocks to copy (`count=`); the default, `UINT64_MAX`, copies
    /// to the end of the input.
    pub count: u64,
    /// Input blocks to skip (`skip=`); default 0.
    pub skip: u64,
    /// ID of the secret (`imgtool_secret_set`) that unlocks an encrypted
    /// input; NULL or "" for none.
    pub key_secret: *const c_char,
}

// SAFETY: repr(C), starts with u32 struct_size, fields are integers and raw
// pointers (any bit pattern is valid).
unsafe impl SizedOptions for imgtool_dd_options {
    const NAME: &'static str = "imgtool_dd_options";
}

impl imgtool_dd_options {
    fn defaults() -> Self {
        let d = DdOptions::default();
        imgtool_dd_options {
            struct_size: std::mem::size_of::<Self>() as u32,
            flags: 0,
            src_format: std::ptr::null(),
            out_format: std::ptr::null(),
            block_size: d.block_size,
            count: u64::MAX,
            skip: 0,
            key_secret: std::ptr::null(),
        }
    }
}

/// Fill `opts` with defaults (raw output, 512-byte blocks, the whole
/// input) and set `opts->struct_size`.
///
/// Returns `IMGTOOL_OK`, or `IMGTOOL_EINVAL` if `opts` is NULL.
///
/// Thread safety: any thread; touches only `opts`.
///
/// # Safety
/// `opts` is NULL or points to writable memory for an `imgtool_dd_options`.
#[no_mangle]
pub unsafe extern "C" fn imgtool_dd_options_init(opts: *mut imgtool_dd_options) -> c_int {
    guard(move || {
        // SAFETY: contract above.
        let out = unsafe { arg_out(opts, "imgtool_dd_options_init: opts") }?;
        out.write(imgtool_dd_options::defaults());
        Ok(())
    })
}

/// Create `output` in `opts->out_format` and copy into it the input's
/// guest bytes from `skip * block_size` up to `count * block_size` (or
/// the end), as `qemu-img dd if=input of=output` does: the output's size
/// is the length copied, an existing file is overwritten, an image in use
/// is refused.
///
/// A `skip` past the end of the input is not an error (qemu-img exits 0
/// as well): the output is created empty and a notice
/// `INPUT: cannot skip to specified offset` goes to the notice handler
/// (`imgtool_set_notice_handler`, stderr by default).
///
/// Errors: `IMGTOOL_EINVAL` (a block size of 0 or above 2^31-1, "Unknown
/// file format", bad options), `IMGTOOL_ENOTSUP` ("Format driver '...'
/// does not support image creation"), errors opening the input
/// (`IMGTOOL_ENOENT`, `IMGTOOL_ELOCKED`, ...), and with qemu-img's words
/// "OUTPUT: error while creating output image: ...", "error while reading
/// from input image file: ..." and "error while writing to output image
/// file: ..." (`IMGTOOL_EIO`, `IMGTOOL_ENOSPC`, ...).
///
/// Thread safety: any thread; the output is locked while it is written.
///
/// # Safety
/// `input` and `output` are NULL or NUL-terminated; `opts` is NULL or
/// initialised.
#[no_mangle]
pub unsafe extern "C" fn imgtool_dd(
    input: *const c_char,
    output: *const c_char,
    opts: *const imgtool_dd_options,
) -> c_int {
    guard(move || {
        // SAFETY: input is NULL or NUL-terminated per the contract.
        let input = unsafe { arg_str(input, "imgtool_dd: input") }?;
        // SAFETY: as for input.
        let output = unsafe { arg_str(output, "imgtool_dd: output") }?;
        let o = if opts.is_null() {
            imgtool_dd_options::defaults()
        } else {
            // SAFETY: opts is an initialised imgtool_dd_options.
            unsafe { read_options(opts, "imgtool_dd: opts") }?
        };
        check_flags(o.flags, DD_FLAGS, "imgtool_dd")?;
        if !(1..=i32::MAX as u64).contains(&o.block_size) {
            return Err(crate::error::Error::invalid(
                "Invalid bs specified. Must be between 1 and 2147483647.",
            ));
        }
        // SAFETY: string fields of an initialised struct are NULL or
        // NUL-terminated (contract above); same for the next two.
        let src_format = unsafe { opt_nonempty(o.src_format, "imgtool_dd: opts->src_format") }?;
        // SAFETY: as for src_format.
        let out_format = unsafe { opt_nonempty(o.out_format, "imgtool_dd: opts->out_format") }?;
        // SAFETY: as for src_format.
        let key_secret = unsafe { opt_nonempty(o.key_secret, "imgtool_dd: opts->key_secret") }?;
        let img = Image::open(
            input,
            &OpenOptions {
                format: src_format.map(str::to_string),
                force_share: o.flags & IMGTOOL_DD_FORCE_SHARE != 0,
                key_secret: key_secret.map(str::to_string),
                ..OpenOptions::default()
            },
        )?;
        let dopts = DdOptions {
            out_format: out_format.unwrap_or("raw").to_string(),
            block_size: o.block_size,
            count: (o.count != u64::MAX).then_some(o.count),
            skip: (o.skip != 0).then_some(o.skip),
        };
        check_out_format(&dopts.out_format)?;
        let plan = dd(&img, output, &dopts).map_err(|e| {
            let msg = e.message(output);
            let (DdError::Create(e) | DdError::Open(e) | DdError::Read(e) | DdError::Write(e)) = e;
            e.with_message(msg)
        })?;
        if plan.skip_past_end {
            crate::events::notice(&format!("{input}: cannot skip to specified offset"));
        }
        Ok(())
    })
}
