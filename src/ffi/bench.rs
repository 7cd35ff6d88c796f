//! `imgtool_bench`: time a run of reads or writes on an open image
//! (qemu-img bench).

use std::ffi::c_int;

use super::args::{check_flags, check_out_struct, read_options, SizedOptions, SizedOut};
use super::image::{handle, imgtool_image};
use super::panic::guard;
use crate::error::Error;
use crate::ops::bench::{bench, BenchOptions};

/// `imgtool_bench_options.flags`: write instead of read (qemu-img bench
/// `-w`); the handle must be writable.
pub const IMGTOOL_BENCH_WRITE: u32 = 1 << 0;
/// `imgtool_bench_options.flags`: flush without first waiting for the
/// requests in flight (`--no-drain`).
pub const IMGTOOL_BENCH_NO_DRAIN: u32 = 1 << 1;

const BENCH_FLAGS: u32 = IMGTOOL_BENCH_WRITE | IMGTOOL_BENCH_NO_DRAIN;

/// What `imgtool_bench` does. Initialise with
/// `imgtool_bench_options_init()`, then change fields.
#[repr(C)]
#[derive(Clone, Copy)]
#[allow(non_camel_case_types)]
pub struct imgtool_bench_options {
    /// `sizeof(imgtool_bench_options)`, set by `imgtool_bench_options_init`.
    pub struct_size: u32,
    /// `IMGTOOL_BENCH_*` bits.
    pub flags: u32,
    /// Requests to issue (`-c`), 1 to 2^31-1; default 75000.
    pub count: u32,
    /// Requests in flight (`-d`), 1 to 2^31-1; default 64.
    pub depth: u32,
    /// Offset of the first request (`-o`); default 0.
    pub offset: u64,
    /// Bytes per request (`-s`), 1 to 2^31-1; default 4096.
    pub buffer_size: u64,
    /// Offset increment between requests (`-S`), wrapping at the image's
    /// end; 0 (default) = `buffer_size`.
    pub step: u64,
    /// Flush after this many requests (`--flush-interval`, writes only,
    /// not smaller than `depth`); 0 (default) never flushes.
    pub flush_interval: u32,
    /// The byte written (`--pattern`); default 0.
    pub pattern: u8,
}

// SAFETY: repr(C), starts with u32 struct_size, fields are integers (any
// bit pattern is valid).
unsafe impl SizedOptions for imgtool_bench_options {
    const NAME: &'static str = "imgtool_bench_options";
}

impl imgtool_bench_options {
    fn defaults() -> Self {
        let d = BenchOptions::default();
        imgtool_bench_options {
            struct_size: std::mem::size_of::<Self>() as u32,
            flags: 0,
            count: d.count,
            depth: d.depth,
            offset: d.offset,
            buffer_size: d.buffer_size,
            step: d.step,
            flush_interval: d.flush_interval,
            pattern: d.pattern,
        }
    }
}

/// The result of `imgtool_bench`. Set `struct_size` to
/// `sizeof(imgtool_bench_report)` before the call.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub struct imgtool_bench_report {
    /// Set by the caller to `sizeof(imgtool_bench_report)`.
    pub struct_size: u32,
    /// Requests completed.
    pub requests: u32,
    /// Wall time of the run in nanoseconds (qemu-img prints it as "Run
    /// completed in X.XXX seconds.").
    pub elapsed_ns: u64,
}

// SAFETY: repr(C), starts with u32 struct_size.
unsafe impl SizedOut for imgtool_bench_report {
    const NAME: &'static str = "imgtool_bench_report";
}

/// Fill `opts` with qemu-img bench's defaults (75000 reads of 4096 bytes,
/// 64 in flight, from offset 0) and set `opts->struct_size`.
///
/// Returns `IMGTOOL_OK`, or `IMGTOOL_EINVAL` if `opts` is NULL.
///
/// Thread safety: any thread; touches only `opts`.
///
/// # Safety
/// `opts` is NULL or points to writable memory for an `imgtool_bench_options`.
#[no_mangle]
pub unsafe extern "C" fn imgtool_bench_options_init(opts: *mut imgtool_bench_options) -> c_int {
    guard(move || {
        // SAFETY: contract above.
        let out = unsafe { super::args::arg_out(opts, "imgtool_bench_options_init: opts") }?;
        out.write(imgtool_bench_options::defaults());
        Ok(())
    })
}

/// Issue `opts->count` requests of `opts->buffer_size` bytes on the open
/// image `img`, `opts->depth` at a time, as `qemu-img bench` does, and
/// report how long they took in `*report` (which may be NULL).
///
/// Errors: `IMGTOOL_EINVAL` (a number out of range, "--flush-interval is
/// only available in write tests", "Flush interval can't be smaller than
/// depth"), `IMGTOOL_EPERM` (writing through a read-only handle), and the
/// first failed request's error (`IMGTOOL_ERANGE` for one past the end,
/// `IMGTOOL_EIO`, ...).
///
/// Thread safety: runs `depth` threads of its own (at most 256) on the
/// handle; other calls on it may run at the same time (except
/// `imgtool_close`).
///
/// # Safety
/// `img` is a live handle; `opts` is NULL or initialised; `report` is
/// NULL or a writable report with `struct_size` set.
#[no_mangle]
pub unsafe extern "C" fn imgtool_bench(
    img: *mut imgtool_image,
    opts: *const imgtool_bench_options,
    report: *mut imgtool_bench_report,
) -> c_int {
    guard(move || {
        // SAFETY: img is a live handle per the contract.
        let img = unsafe { handle(img, "imgtool_bench: img") }?;
        let report = if report.is_null() {
            None
        } else {
            // SAFETY: report is writable with struct_size set.
            Some(unsafe { check_out_struct(report, "imgtool_bench: report") }?)
        };
        let o = if opts.is_null() {
            imgtool_bench_options::defaults()
        } else {
            // SAFETY: opts is an initialised imgtool_bench_options.
            unsafe { read_options(opts, "imgtool_bench: opts") }?
        };
        check_flags(o.flags, BENCH_FLAGS, "imgtool_bench")?;
        let int_max = i32::MAX as u64;
        for (name, v, min) in [
            ("count", u64::from(o.count), 1),
            ("depth", u64::from(o.depth), 1),
            ("buffer_size", o.buffer_size, 1),
            ("step", o.step, 0),
            ("flush_interval", u64::from(o.flush_interval), 0),
        ] {
            if !(min..=int_max).contains(&v) {
                return Err(Error::invalid(format!(
                    "imgtool_bench: opts->{name} is {v}, must be between {min} and {int_max}"
                )));
            }
        }
        let bo = BenchOptions {
            count: o.count,
            depth: o.depth,
            offset: o.offset,
            buffer_size: o.buffer_size,
            step: o.step,
            write: o.flags & IMGTOOL_BENCH_WRITE != 0,
            pattern: o.pattern,
            flush_interval: o.flush_interval,
            drain_on_flush: o.flags & IMGTOOL_BENCH_NO_DRAIN == 0,
        };
        bo.check()?;
        if bo.write {
            super::args::check_writable(img)?;
        }
        let r = bench(img, &bo)?;
        if let Some(out) = report {
            out.write(imgtool_bench_report {
                struct_size: std::mem::size_of::<imgtool_bench_report>() as u32,
                requests: r.requests,
                elapsed_ns: u64::try_from(r.elapsed.as_nanos()).unwrap_or(u64::MAX),
            });
        }
        Ok(())
    })
}
