//! The internal snapshot table (read side), read as QEMU's
//! qcow2_do_read_snapshots reads it, including its repair mode for
//! `check -r all`.

use crate::error::{Error, Result};
use crate::format::bytes::{be16, be32, be64};
use crate::format::SnapshotInfo;
use crate::io::HostFile;

/// Bound on the whole table, as QEMU's QCOW_MAX_SNAPSHOTS_SIZE.
pub(super) const MAX_TABLE_BYTES: u64 = 64 << 20;
/// Bound on one entry's extra data (QEMU: 1 KiB).
pub(super) const MAX_EXTRA: u32 = 1024;
/// Extra data fields QEMU knows: vm_state_size_large, disk_size, icount.
const KNOWN_EXTRA: u32 = 24;

#[derive(Debug, Clone)]
pub struct Snapshot {
    pub l1_table_offset: u64,
    pub l1_size: u32,
    pub disk_size: Option<u64>,
    /// Extra data size as read (cut to [`MAX_EXTRA`] by a repair).
    pub extra_len: u32,
    /// Extra data past the fields QEMU knows, kept verbatim.
    pub unknown_extra: Vec<u8>,
    pub id_raw: Vec<u8>,
    pub name_raw: Vec<u8>,
    pub info: SnapshotInfo,
}

/// A table as read: its entries, the bytes it spans on disk (QEMU's
/// snapshots_size), and what a repair dropped.
#[derive(Debug, Default)]
pub struct Scan {
    pub snaps: Vec<Snapshot>,
    pub size: u64,
    /// Entries whose oversized extra data was cut.
    pub extra_dropped: u32,
    /// Entries dropped off the end of a table that is too big.
    pub reduced: u32,
}

/// Read `count` entries at `offset`; every length is checked against the
/// table bound before anything is allocated.
pub fn read_table(file: &HostFile, offset: u64, count: u32) -> Result<Vec<Snapshot>> {
    Ok(scan(file, offset, count, None)?.snaps)
}

/// Read the table; with `repair` (its log), oversized extra data is cut and
/// entries past the size limit are dropped, as `check -r all` does, instead
/// of failing with QEMU's error and hint.
pub fn scan(
    file: &HostFile,
    offset: u64,
    count: u32,
    mut repair: Option<&mut dyn FnMut(&str)>,
) -> Result<Scan> {
    let efbig = |m: String| Error::from_errno(libc::EFBIG).with_message(m);
    let mut out = Scan::default();
    let mut pos = offset;
    let mut table_len = 0u64;
    // Bytes past the end of the file read as zeros, as QEMU's reads do.
    for i in 0..count {
        let pre = pos;
        table_len = table_len.div_ceil(8) * 8;
        pos = pos.div_ceil(8) * 8;
        let mut h = [0u8; 40];
        file.read_at(&mut h, pos)?;
        pos += 40;
        let id_len = be16(&h, 12) as usize;
        let name_len = be16(&h, 14) as usize;
        let mut extra_len = be32(&h, 36);
        let mut truncate = false;
        if extra_len > MAX_EXTRA {
            let Some(log) = repair.as_mut() else {
                return Err(efbig(format!(
                    "Too much extra metadata in snapshot table entry {i}\nYou can force-remove this extra metadata with qemu-img check -r all"
                )));
            };
            log(&format!(
                "Discarding too much extra metadata in snapshot table entry {i} ({extra_len} > {MAX_EXTRA})"
            ));
            out.extra_dropped += 1;
            truncate = true;
        }
        let known_len = extra_len.min(KNOWN_EXTRA) as usize;
        let mut known = [0u8; KNOWN_EXTRA as usize];
        file.read_at(&mut known[..known_len], pos)?;
        pos += known_len as u64;
        let vm_state_size = if extra_len >= 8 {
            be64(&known, 0)
        } else {
            be32(&h, 32) as u64
        };
        let disk_size = (extra_len >= 16).then(|| be64(&known, 8));
        let icount = (extra_len >= 24)
            .then(|| be64(&known, 16))
            .filter(|&i| i != u64::MAX);
        let mut unknown_extra = Vec::new();
        if extra_len > KNOWN_EXTRA {
            let extra_end = pos + (extra_len - KNOWN_EXTRA) as u64;
            if truncate {
                extra_len = MAX_EXTRA;
            }
            unknown_extra = vec![0u8; (extra_len - KNOWN_EXTRA) as usize];
            file.read_at(&mut unknown_extra, pos)?;
            pos = extra_end;
        }
        let mut id_raw = vec![0u8; id_len];
        file.read_at(&mut id_raw, pos)?;
        pos += id_len as u64;
        let mut name_raw = vec![0u8; name_len];
        file.read_at(&mut name_raw, pos)?;
        pos += name_len as u64;
        // QEMU keeps both as C strings: they end at the first NUL.
        for v in [&mut id_raw, &mut name_raw] {
            if let Some(n) = v.iter().position(|&c| c == 0) {
                v.truncate(n);
            }
        }
        table_len += 40 + extra_len as u64 + id_len as u64 + name_len as u64;
        if table_len > MAX_TABLE_BYTES || pos - offset > i32::MAX as u64 {
            let over = count - i;
            let Some(log) = repair.as_mut() else {
                return Err(efbig(format!(
                    "Snapshot table is too big\nYou can force-remove all {over} overhanging snapshots with qemu-img check -r all"
                )));
            };
            log(&format!(
                "Discarding {over} overhanging snapshots (snapshot table is too big)"
            ));
            out.reduced += over;
            pos = pre;
            break;
        }
        out.snaps.push(Snapshot {
            l1_table_offset: be64(&h, 0),
            l1_size: be32(&h, 8),
            disk_size,
            extra_len,
            unknown_extra,
            info: SnapshotInfo {
                id: String::from_utf8_lossy(&id_raw).into_owned(),
                name: String::from_utf8_lossy(&name_raw).into_owned(),
                vm_state_size,
                date_sec: be32(&h, 16) as u64,
                date_nsec: be32(&h, 20),
                vm_clock_nsec: be64(&h, 24),
                icount,
            },
            id_raw,
            name_raw,
        });
    }
    out.size = pos - offset;
    Ok(out)
}
