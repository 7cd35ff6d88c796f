//! Internal snapshots (qcow2): listing through an open handle.

use std::ffi::{c_char, c_int};

use super::args::{arg_ref, check_out_struct, SizedOut};
use super::image::imgtool_image;
use super::panic::guard;
use crate::error::Error;
use crate::format::SnapshotInfo;

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
