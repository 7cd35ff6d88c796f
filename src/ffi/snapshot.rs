//! Internal snapshots (qcow2): listing through an open handle, and
//! create/apply/delete by path as `qemu-img snapshot` does.

use std::ffi::{c_char, c_int};

use super::args::{
    arg_out, arg_ref, arg_str, check_flags, check_out_struct, opt_nonempty, read_options,
    SizedOptions, SizedOut,
};
use super::image::imgtool_image;
use super::panic::guard;
use crate::error::{Error, Result};
use crate::format::SnapshotInfo;
use crate::image::{Image, OpenOptions};
use crate::ops::snapshot as ops;

/// Size of `imgtool_snapshot.id`, including the terminating NUL (QEMU's
/// limit for snapshot IDs).
pub const IMGTOOL_SNAPSHOT_ID_SIZE: usize = 128;
/// Size of `imgtool_snapshot.name`, including the terminating NUL (QEMU
/// keeps at most 255 bytes of a name).
pub const IMGTOOL_SNAPSHOT_NAME_SIZE: usize = 256;

/// One internal snapshot (QAPI SnapshotInfo), as `imgtool_snapshot_get`
/// fills it. Set `struct_size` to `sizeof(imgtool_snapshot)` before the
/// call; on return it holds the number of bytes the library filled in.
#[repr(C)]
#[derive(Clone, Copy)]
#[allow(non_camel_case_types)]
pub struct imgtool_snapshot {
    /// Set by the caller to `sizeof(imgtool_snapshot)`.
    pub struct_size: u32,
    /// Whether `icount` is valid (the snapshot records one).
    pub has_icount: bool,
    /// Snapshot ID, NUL-terminated ("1", "2", ...).
    pub id: [c_char; IMGTOOL_SNAPSHOT_ID_SIZE],
    /// Snapshot name, NUL-terminated (cut to 255 bytes as QEMU does).
    pub name: [c_char; IMGTOOL_SNAPSHOT_NAME_SIZE],
    /// Size of the saved VM state in bytes (0 for disk-only snapshots).
    pub vm_state_size: u64,
    /// Creation time, seconds since the epoch.
    pub date_sec: u64,
    /// Creation time, nanoseconds part.
    pub date_nsec: u32,
    /// Guest clock when the snapshot was taken, in nanoseconds.
    pub vm_clock_nsec: u64,
    /// Instruction count (record/replay), when `has_icount`.
    pub icount: u64,
}

// SAFETY: repr(C), starts with u32 struct_size.
unsafe impl SizedOut for imgtool_snapshot {
    const NAME: &'static str = "imgtool_snapshot";
}

/// Copy `s` into a C char array, cut at a UTF-8 boundary so it fits with
/// its NUL.
fn fill<const N: usize>(s: &str, out: &mut [c_char; N]) {
    let mut end = s.len().min(N - 1);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    for (o, b) in out.iter_mut().zip(s.as_bytes()[..end].iter()) {
        *o = *b as c_char;
    }
    out[end] = 0;
}

pub(crate) fn to_c(s: &SnapshotInfo) -> imgtool_snapshot {
    let mut v = imgtool_snapshot {
        struct_size: std::mem::size_of::<imgtool_snapshot>() as u32,
        has_icount: s.icount.is_some(),
        id: [0; IMGTOOL_SNAPSHOT_ID_SIZE],
        name: [0; IMGTOOL_SNAPSHOT_NAME_SIZE],
        vm_state_size: s.vm_state_size,
        date_sec: s.date_sec,
        date_nsec: s.date_nsec,
        vm_clock_nsec: s.vm_clock_nsec,
        icount: s.icount.unwrap_or(0),
    };
    fill(&s.id, &mut v.id);
    fill(&s.name, &mut v.name);
    v
}

/// The `index`-th internal snapshot of the image (its top layer), in table
/// order, as `qemu-img snapshot -l` lists them. `imgtool_get_info` gives
/// the count (`snapshot_count`); iterate with `index` from 0 until the
/// call returns `IMGTOOL_ERANGE`. Formats without snapshots have none.
///
/// Errors: `IMGTOOL_EINVAL` (NULL arguments, `struct_size` not set),
/// `IMGTOOL_ERANGE` (`index` is not below the number of snapshots).
///
/// Thread safety: may run concurrently with other calls on the same
/// handle (except `imgtool_close`).
///
/// # Safety
/// `img` is NULL or a live handle; `out` is NULL or a writable
/// `imgtool_snapshot` whose `struct_size` is set.
#[no_mangle]
pub unsafe extern "C" fn imgtool_snapshot_get(
    img: *mut imgtool_image,
    index: usize,
    out: *mut imgtool_snapshot,
) -> c_int {
    guard(move || {
        // SAFETY: out is NULL or writable with struct_size set.
        let out = unsafe { check_out_struct(out, "imgtool_snapshot_get: out") }?;
        // SAFETY: img is NULL or a live handle.
        let h = unsafe { arg_ref(img.cast_const(), "imgtool_snapshot_get: img") }?;
        let list = h.img.driver().info().snapshots;
        let s = list.get(index).ok_or_else(|| {
            Error::out_of_range(format!(
                "imgtool_snapshot_get: index {index}, but the image has {} snapshot(s)",
                list.len()
            ))
        })?;
        out.write(to_c(s));
        Ok(())
    })
}

/// How `imgtool_snapshot_create`/`_apply`/`_delete` open the image.
/// Initialise with `imgtool_snapshot_options_init()`.
#[repr(C)]
#[derive(Clone, Copy)]
#[allow(non_camel_case_types)]
pub struct imgtool_snapshot_options {
    /// `sizeof(imgtool_snapshot_options)`, set by
    /// `imgtool_snapshot_options_init`.
    pub struct_size: u32,
    /// Reserved for flags; must be 0.
    pub flags: u32,
    /// Format of the image (`-f`); NULL or "" probes it.
    pub format: *const c_char,
}

// SAFETY: repr(C), starts with u32 struct_size, fields are integers and raw
// pointers (any bit pattern is valid).
unsafe impl SizedOptions for imgtool_snapshot_options {
    const NAME: &'static str = "imgtool_snapshot_options";
}

impl imgtool_snapshot_options {
    fn defaults() -> Self {
        imgtool_snapshot_options {
            struct_size: std::mem::size_of::<Self>() as u32,
            flags: 0,
            format: std::ptr::null(),
        }
    }
}

/// Fill `opts` with defaults (format probed) and set `opts->struct_size`.
///
/// Returns `IMGTOOL_OK`, or `IMGTOOL_EINVAL` if `opts` is NULL.
///
/// Thread safety: any thread; touches only `opts`.
///
/// # Safety
/// `opts` is NULL or points to writable memory for an
/// `imgtool_snapshot_options`.
#[no_mangle]
pub unsafe extern "C" fn imgtool_snapshot_options_init(
    opts: *mut imgtool_snapshot_options,
) -> c_int {
    guard(move || {
        // SAFETY: contract above.
        let out = unsafe { arg_out(opts, "imgtool_snapshot_options_init: opts") }?;
        out.write(imgtool_snapshot_options::defaults());
        Ok(())
    })
}

/// Open `path` writable as `qemu-img snapshot` does, run `f`, close.
///
/// # Safety
/// `path` and `name` are NULL or NUL-terminated; `opts` is NULL or
/// initialised.
unsafe fn with_image(
    fname: &str,
    path: *const c_char,
    name: *const c_char,
    opts: *const imgtool_snapshot_options,
    f: impl FnOnce(&Image, &str) -> Result<()>,
) -> Result<()> {
    // SAFETY: forwarded contract.
    let path = unsafe { arg_str(path, &format!("{fname}: path")) }?;
    // SAFETY: forwarded contract.
    let name = unsafe { arg_str(name, &format!("{fname}: name")) }?;
    let o = if opts.is_null() {
        imgtool_snapshot_options::defaults()
    } else {
        // SAFETY: opts is an initialised imgtool_snapshot_options.
        unsafe { read_options(opts, &format!("{fname}: opts")) }?
    };
    check_flags(o.flags, 0, fname)?;
    // SAFETY: string fields of an initialised struct are NULL or
    // NUL-terminated.
    let format = unsafe { opt_nonempty(o.format, &format!("{fname}: opts->format")) }?;
    let img = Image::open(
        path,
        &OpenOptions {
            format: format.map(str::to_string),
            writable: true,
            ..OpenOptions::default()
        },
    )?;
    f(&img, name)?;
    img.close()
}

/// Create an internal snapshot called `name` of the image at `path`
/// (`qemu-img snapshot -c`): its ID is one above the highest, its date
/// now, without VM state. Names longer than 255 bytes are cut, as QEMU
/// does. If `out` is not NULL it receives the new snapshot (set its
/// `struct_size` first).
///
/// Errors: `IMGTOOL_EINVAL`, `IMGTOOL_ENOTSUP` (formats without internal
/// snapshots, e.g. raw), errors from opening the image (`IMGTOOL_ENOENT`,
/// `IMGTOOL_ELOCKED`, ...), `IMGTOOL_ENOSPC`, `IMGTOOL_EIO`; the message
/// is qemu-img's ("Could not create snapshot 'NAME': ...").
///
/// Thread safety: any thread; the image is locked for writing for the
/// duration, so it must not be open elsewhere.
///
/// # Safety
/// `path` and `name` are NULL or NUL-terminated; `opts` is NULL or
/// initialised; `out` is NULL or a writable `imgtool_snapshot` whose
/// `struct_size` is set.
#[no_mangle]
pub unsafe extern "C" fn imgtool_snapshot_create(
    path: *const c_char,
    name: *const c_char,
    opts: *const imgtool_snapshot_options,
    out: *mut imgtool_snapshot,
) -> c_int {
    guard(move || {
        let out = if out.is_null() {
            None
        } else {
            // SAFETY: out is writable with struct_size set per the contract.
            Some(unsafe { check_out_struct(out, "imgtool_snapshot_create: out") }?)
        };
        // SAFETY: forwarded contract.
        unsafe {
            with_image("imgtool_snapshot_create", path, name, opts, |img, name| {
                let s = ops::create(img, name)?;
                if let Some(o) = out {
                    o.write(to_c(&s));
                }
                Ok(())
            })
        }
    })
}

/// Revert the image at `path` to its internal snapshot `name` (an ID or a
/// name; `qemu-img snapshot -a`). The current state is lost.
///
/// Errors: as `imgtool_snapshot_create`; an unknown snapshot is
/// `IMGTOOL_ENOENT` or `IMGTOOL_EINVAL` with qemu-img's message
/// ("Could not apply snapshot 'NAME': ...").
///
/// Thread safety: as `imgtool_snapshot_create`.
///
/// # Safety
/// `path` and `name` are NULL or NUL-terminated; `opts` is NULL or
/// initialised.
#[no_mangle]
pub unsafe extern "C" fn imgtool_snapshot_apply(
    path: *const c_char,
    name: *const c_char,
    opts: *const imgtool_snapshot_options,
) -> c_int {
    guard(move || {
        // SAFETY: forwarded contract.
        unsafe { with_image("imgtool_snapshot_apply", path, name, opts, ops::apply) }
    })
}

/// Delete the first internal snapshot called `name` of the image at `path`
/// (`qemu-img snapshot -d`; names, not IDs, as qemu-img looks them up).
///
/// Errors: as `imgtool_snapshot_create`; no such snapshot is
/// `IMGTOOL_ENOENT` ("Could not delete snapshot 'NAME': snapshot not
/// found").
///
/// Thread safety: as `imgtool_snapshot_create`.
///
/// # Safety
/// `path` and `name` are NULL or NUL-terminated; `opts` is NULL or
/// initialised.
#[no_mangle]
pub unsafe extern "C" fn imgtool_snapshot_delete(
    path: *const c_char,
    name: *const c_char,
    opts: *const imgtool_snapshot_options,
) -> c_int {
    guard(move || {
        // SAFETY: forwarded contract.
        unsafe { with_image("imgtool_snapshot_delete", path, name, opts, ops::delete) }
    })
}
