//! The internal snapshot table (read side).

use crate::error::{Error, Result};
use crate::format::bytes::{be16, be32, be64};
use crate::format::SnapshotInfo;
use crate::io::HostFile;

/// Bound on the whole table, as QEMU's QCOW_MAX_SNAPSHOTS_SIZE.
pub(super) const MAX_TABLE_BYTES: u64 = 64 << 20;
/// Bound on one entry's extra data (QEMU: 1 KiB).
pub(super) const MAX_EXTRA: u32 = 1024;

#[derive(Debug, Clone)]
pub struct Snapshot {
    pub l1_table_offset: u64,
    pub l1_size: u32,
    pub disk_size: Option<u64>,
    /// Bytes this entry takes in the table, padding included.
    pub entry_bytes: u64,
    pub info: SnapshotInfo,
}

/// Read `count` entries at `offset`; every length is checked against the
/// table bound before anything is allocated.
pub fn read_table(file: &HostFile, offset: u64, count: u32) -> Result<Vec<Snapshot>> {
    let mut out = Vec::new();
    let mut pos = offset;
    // Bytes past the end of the file read as zeros, as QEMU's reads do.
    for _ in 0..count {
        if pos - offset + 40 > MAX_TABLE_BYTES {
            return Err(Error::corrupt("Snapshot table too large or truncated"));
        }
        let mut h = [0u8; 40];
        file.read_at(&mut h, pos)?;
        let l1_table_offset = be64(&h, 0);
        let l1_size = be32(&h, 8);
        let id_len = be16(&h, 12) as usize;
        let name_len = be16(&h, 14) as usize;
        let date_sec = be32(&h, 16) as u64;
        let date_nsec = be32(&h, 20);
        let vm_clock_nsec = be64(&h, 24);
        let vm_state_size32 = be32(&h, 32) as u64;
        let extra_len = be32(&h, 36);
        if extra_len > MAX_EXTRA {
            return Err(Error::corrupt(
                "Too much extra metadata in snapshot table entry",
            ));
        }
        let body = extra_len as usize + id_len + name_len;
        if pos - offset + 40 + body as u64 > MAX_TABLE_BYTES {
            return Err(Error::corrupt("Snapshot table too large or truncated"));
        }
        let mut b = vec![0u8; body];
        file.read_at(&mut b, pos + 40)?;
        let extra = &b[..extra_len as usize];
        let vm_state_size = if extra.len() >= 8 {
            be64(extra, 0)
        } else {
            vm_state_size32
        };
        let disk_size = (extra.len() >= 16).then(|| be64(extra, 8));
        let icount = (extra.len() >= 24)
            .then(|| be64(extra, 16))
            .filter(|&i| i != u64::MAX);
        let id = String::from_utf8_lossy(&b[extra_len as usize..extra_len as usize + id_len])
            .into_owned();
        let name = String::from_utf8_lossy(&b[extra_len as usize + id_len..]).into_owned();
        out.push(Snapshot {
            l1_table_offset,
            l1_size,
            disk_size,
            entry_bytes: (40 + body as u64).div_ceil(8) * 8,
            info: SnapshotInfo {
                id,
                name,
                vm_state_size,
                date_sec,
                date_nsec,
                vm_clock_nsec,
                icount,
            },
        });
        pos += (40 + body as u64).div_ceil(8) * 8;
    }
    Ok(out)
}
