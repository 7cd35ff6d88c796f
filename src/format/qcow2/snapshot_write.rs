//! Internal snapshots, write side: create, apply (revert to) and delete,
//! with the snapshot table rewritten the way QEMU writes it.
//!
//! Refcount model (as QEMU's): a cluster's refcount is the number of L1
//! tables (active + snapshots) whose mapping reaches it. Creating a
//! snapshot copies the active L1 and adds one reference to every L2 table
//! and data cluster it reaches; the COPIED flags of entries whose refcount
//! is no longer 1 are cleared, so the write path copies them on write.
//!
//! Crash ordering: references are added before the table that uses them
//! is published (header switch last), and dropped only after nothing on
//! disk points at them, so an interrupted operation leaks clusters at
//! worst (`check -r leaks` repairs that).

use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::RwLock;

use super::l2::{self, L2Cache, L1E_OFFSET_MASK, L2E_OFFSET_MASK, OFLAG_COPIED};
use super::snapshot::{self, Snapshot, MAX_TABLE_BYTES};
use super::{Meta, Qcow2};
use crate::error::{Error, ErrorKind, Result};
use crate::format::SnapshotInfo;

/// QEMU's QCOW_MAX_SNAPSHOTS.
const MAX_SNAPSHOTS: usize = 65536;
/// Extra data QEMU writes for every entry: vm_state_size_large, disk_size,
/// icount.
const EXTRA_LEN: usize = 24;

/// The snapshot list of an open image and the bytes its table spans on
/// disk, replaced whenever the table on disk changes. Iterating yields a
/// copy taken under the lock.
pub(super) struct SnapList(RwLock<(Vec<Snapshot>, u64)>);

impl SnapList {
    pub(super) fn new(v: Vec<Snapshot>, size: u64) -> Self {
        SnapList(RwLock::new((v, size)))
    }
    pub(super) fn iter(&self) -> std::vec::IntoIter<Snapshot> {
        self.0.read().0.clone().into_iter()
    }
    /// Bytes of the table on disk (QEMU's snapshots_size).
    pub(super) fn table_size(&self) -> u64 {
        self.0.read().1
    }
    pub(super) fn set(&self, v: Vec<Snapshot>, size: u64) {
        *self.0.write() = (v, size);
    }
}

impl IntoIterator for &SnapList {
    type Item = Snapshot;
    type IntoIter = std::vec::IntoIter<Snapshot>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// One table entry with everything a rewrite must preserve.
#[derive(Debug, Clone)]
struct Entry {
    l1_table_offset: u64,
    l1_size: u32,
    id: Vec<u8>,
    name: Vec<u8>,
    date_sec: u32,
    date_nsec: u32,
    vm_clock_nsec: u64,
    vm_state_size: u64,
    disk_size: u64,
    icount: u64,
    /// Extra data beyond the fields we know, kept verbatim.
    unknown_extra: Vec<u8>,
}

/// `strtoul(s, NULL, 10)` as QEMU uses it to number snapshots.
fn strtoul(s: &[u8]) -> u64 {
    let mut i = 0;
    while i < s.len() && s[i].is_ascii_whitespace() {
        i += 1;
    }
    let neg = s.get(i) == Some(&b'-');
    if matches!(s.get(i), Some(b'-' | b'+')) {
        i += 1;
    }
    let mut v: u64 = 0;
    let mut overflow = false;
    while let Some(d) = s.get(i).filter(|c| c.is_ascii_digit()) {
        match v
            .checked_mul(10)
            .and_then(|x| x.checked_add((d - b'0') as u64))
        {
            Some(x) => v = x,
            None => overflow = true,
        }
        i += 1;
    }
    if overflow {
        return u64::MAX;
    }
    if neg {
        v.wrapping_neg()
    } else {
        v
    }
}

/// Serialized table: entries 8-byte aligned, the last one unpadded.
fn serialize(entries: &[Entry]) -> Result<Vec<u8>> {
    let mut b: Vec<u8> = Vec::new();
    for e in entries {
        b.resize(b.len().div_ceil(8) * 8, 0);
        let id_len =
            u16::try_from(e.id.len()).map_err(|_| Error::invalid("Snapshot ID too long"))?;
        let name_len =
            u16::try_from(e.name.len()).map_err(|_| Error::invalid("Snapshot name too long"))?;
        let extra_len = (EXTRA_LEN + e.unknown_extra.len()) as u32;
        b.extend_from_slice(&e.l1_table_offset.to_be_bytes());
        b.extend_from_slice(&e.l1_size.to_be_bytes());
        b.extend_from_slice(&id_len.to_be_bytes());
        b.extend_from_slice(&name_len.to_be_bytes());
        b.extend_from_slice(&e.date_sec.to_be_bytes());
        b.extend_from_slice(&e.date_nsec.to_be_bytes());
        b.extend_from_slice(&e.vm_clock_nsec.to_be_bytes());
        // A VM state that does not fit 32 bits reads as disk-only to old
        // readers rather than truncated.
        let vm32 = u32::try_from(e.vm_state_size).unwrap_or(0);
        b.extend_from_slice(&vm32.to_be_bytes());
        b.extend_from_slice(&extra_len.to_be_bytes());
        b.extend_from_slice(&e.vm_state_size.to_be_bytes());
        b.extend_from_slice(&e.disk_size.to_be_bytes());
        b.extend_from_slice(&e.icount.to_be_bytes());
        b.extend_from_slice(&e.unknown_extra);
        b.extend_from_slice(&e.id);
        b.extend_from_slice(&e.name);
        if b.len() as u64 > MAX_TABLE_BYTES {
            return Err(Error::from_errno(libc::EFBIG));
        }
    }
    Ok(b)
}

/// Table entries of `snaps`; a missing disk size is the image's `size`
/// (QEMU fills it in when it reads such an entry).
fn entries_of(snaps: &[Snapshot], size: u64) -> Vec<Entry> {
    snaps
        .iter()
        .map(|s| Entry {
            l1_table_offset: s.l1_table_offset,
            l1_size: s.l1_size,
            id: s.id_raw.clone(),
            name: s.name_raw.clone(),
            date_sec: s.info.date_sec as u32,
            date_nsec: s.info.date_nsec,
            vm_clock_nsec: s.info.vm_clock_nsec,
            vm_state_size: s.info.vm_state_size,
            disk_size: s.disk_size.unwrap_or(size),
            icount: s.info.icount.unwrap_or(u64::MAX),
            unknown_extra: s.unknown_extra.clone(),
        })
        .collect()
}

/// Which snapshot an operation names.
fn position(entries: &[Entry], id: Option<&str>, name: Option<&str>) -> Option<usize> {
    entries.iter().position(|e| {
        id.is_none_or(|i| e.id == i.as_bytes()) && name.is_none_or(|n| e.name == n.as_bytes())
    })
}

fn now() -> (u32, u32) {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    // QEMU takes the time of day in microseconds.
    (d.as_secs() as u32, d.subsec_micros() * 1000)
}

impl Qcow2 {
    /// The table as read at open (or last written), with the extra data
    /// QEMU keeps.
    fn read_entries(&self) -> Result<Vec<Entry>> {
        let size = self.hdr.lock().size;
        Ok(entries_of(&self.snapshots.iter().collect::<Vec<_>>(), size))
    }

    /// Write `entries` as the new table in fresh clusters, switch the
    /// header to it, then free the old one.
    fn write_table(&self, m: &mut Meta, entries: &[Entry]) -> Result<()> {
        let cs = self.cs();
        let cb = self.geo.cluster_bits;
        let old_size = self.snapshots.table_size();
        let data = serialize(entries)?;
        let new_off = if entries.is_empty() {
            0
        } else {
            let off = m.rc.alloc(&self.file, (data.len() as u64).div_ceil(cs))?;
            self.file.write_at(&data, off)?;
            off
        };
        self.file.flush()?;
        let mut hb = [0u8; 12];
        hb[..4].copy_from_slice(&(entries.len() as u32).to_be_bytes());
        hb[4..].copy_from_slice(&new_off.to_be_bytes());
        self.file.write_at(&hb, 60)?;
        self.file.flush()?;
        let old_off = {
            let mut h = self.hdr.lock();
            let old = h.snapshots_offset;
            h.nb_snapshots = entries.len() as u32;
            h.snapshots_offset = new_off;
            old
        };
        if old_off != 0 && old_size > 0 {
            let first = old_off >> cb;
            let last = (old_off + old_size - 1) >> cb;
            m.rc.free_or_leak(&self.file, first, last - first + 1);
        }
        let list = if entries.is_empty() {
            Vec::new()
        } else {
            snapshot::read_table(&self.file, new_off, entries.len() as u32)?
        };
        self.snapshots.set(list, data.len() as u64);
        Ok(())
    }

    /// Write `snaps` (as repaired in memory by check) as the new table.
    pub(super) fn write_snapshot_list(
        &self,
        m: &mut Meta,
        snaps: &[Snapshot],
        size: u64,
    ) -> Result<()> {
        self.write_table(m, &entries_of(snaps, size))
    }

    /// Rewrite the table as it is (v3 extra data for every entry).
    pub(super) fn rewrite_table_locked(&self, m: &mut Meta) -> Result<()> {
        let entries = self.read_entries()?;
        self.write_table(m, &entries)
    }

    /// Read a snapshot's L1 table, checked against the limits QEMU uses.
    fn read_snapshot_l1(&self, e: &Entry) -> Result<Vec<u64>> {
        self.validate_snapshot_l1(e.l1_table_offset, e.l1_size)
            .map_err(|(m, _)| Error::corrupt(m))?;
        if e.l1_size == 0 {
            return Ok(Vec::new());
        }
        if !e.l1_table_offset.is_multiple_of(self.cs())
            || e.l1_table_offset + e.l1_size as u64 * 8 > self.file.len()?
        {
            return Err(Error::corrupt("Snapshot L1 table offset invalid"));
        }
        let mut raw = vec![0u8; e.l1_size as usize * 8];
        self.file.read_exact_at(&mut raw, e.l1_table_offset)?;
        Ok(crate::format::bytes::be64_table(&raw))
    }

    fn write_l1_table(&self, off: u64, l1: &[u64]) -> Result<()> {
        if l1.is_empty() {
            return Ok(());
        }
        let mut raw = Vec::with_capacity(l1.len() * 8);
        for e in l1 {
            raw.extend_from_slice(&e.to_be_bytes());
        }
        self.file.write_at(&raw, off)?;
        self.file.flush()
    }

    /// Add `addend` (+1, -1 or 0) to the refcount of every L2 table and
    /// cluster `l1` reaches, then set each entry's COPIED flag exactly when
    /// its refcount is 1 (QEMU's qcow2_update_snapshot_refcount). L2 tables
    /// are rewritten in place; the changed `l1` entries are returned in
    /// `l1` and the caller decides whether to write them.
    fn update_refcounts(&self, m: &mut Meta, l1: &mut [u64], addend: i64) -> Result<bool> {
        let cs = self.cs();
        let cb = self.geo.cluster_bits;
        let mut l1_modified = false;
        for (i, e) in l1.iter_mut().enumerate() {
            let l2off = *e & L1E_OFFSET_MASK;
            if l2off == 0 {
                continue;
            }
            if l2off & (cs - 1) != 0 {
                return Err(Error::corrupt(format!(
                    "L2 table offset {l2off:#x} unaligned (L1 index: {i:#x})"
                )));
            }
            let mut table = m.l2.get(&self.file, &self.geo, l2off)?.clone();
            let mut dirty = false;
            for (j, s) in table.iter_mut().enumerate() {
                let old = s.entry;
                let mut entry = old & !OFLAG_COPIED;
                let refcount = if self.geo.is_compressed(s) {
                    if addend != 0 {
                        let (first, n) = self.geo.compressed_clusters(s);
                        m.rc.add(&self.file, first, n, addend)?;
                    }
                    // Compressed clusters are never written in place.
                    2
                } else {
                    let off = s.entry & L2E_OFFSET_MASK;
                    if off == 0 || self.data_file.is_some() {
                        0
                    } else {
                        if off & (cs - 1) != 0 {
                            return Err(Error::corrupt(format!(
                                "Cluster allocation offset {off:#x} unaligned (L2 offset: {l2off:#x}, L2 index: {j:#x})"
                            )));
                        }
                        if addend != 0 {
                            m.rc.add(&self.file, off >> cb, 1, addend)?;
                        }
                        m.rc.get(&self.file, off >> cb)?
                    }
                };
                if refcount == 1 {
                    entry |= OFLAG_COPIED;
                }
                if entry != old {
                    s.entry = entry;
                    dirty = true;
                }
            }
            if dirty {
                self.file
                    .write_at(&l2::encode(&table, self.geo.extended), l2off)?;
                m.l2.insert(l2off, table);
            }
            if addend != 0 {
                m.rc.add(&self.file, l2off >> cb, 1, addend)?;
            }
            let mut new = l2off;
            if m.rc.get(&self.file, l2off >> cb)? == 1 {
                new |= OFLAG_COPIED;
            }
            if new != *e {
                *e = new;
                l1_modified = true;
            }
        }
        self.file.flush()?;
        Ok(l1_modified)
    }

    /// Recompute the active table's COPIED flags and write what changed.
    fn refresh_copied(&self, m: &mut Meta) -> Result<()> {
        let mut l1 = m.l1.clone();
        if self.update_refcounts(m, &mut l1, 0)? {
            self.write_l1_table(m.l1_offset, &l1)?;
            m.l1 = l1;
        }
        Ok(())
    }

    /// `snapshot -c`: a new snapshot of the active state named `name`.
    pub(super) fn snapshot_create(&self, name: &str) -> Result<SnapshotInfo> {
        if self.data_file.is_some() {
            return Err(Error::unsupported("Operation not supported"));
        }
        self.prepare_write()?;
        let _w = self.write_lock.lock();
        let mut m = self.meta.lock();
        let mut entries = self.read_entries()?;
        if entries.len() >= MAX_SNAPSHOTS {
            return Err(Error::from_errno(libc::EFBIG));
        }
        let max_id = entries.iter().map(|e| strtoul(&e.id)).max().unwrap_or(0);
        let id = max_id.wrapping_add(1).to_string();
        if entries.iter().any(|e| e.id == id.as_bytes()) {
            return Err(Error::from_errno(libc::EEXIST));
        }
        let cs = self.cs();
        let l1 = m.l1.clone();
        let l1_off = if l1.is_empty() {
            0
        } else {
            m.rc.alloc(&self.file, (l1.len() as u64 * 8).div_ceil(cs))?
        };
        self.write_l1_table(l1_off, &l1)?;
        let mut active = l1.clone();
        let modified = self
            .update_refcounts(&mut m, &mut active, 1)
            .map_err(overflow_is_einval)?;
        if modified {
            self.write_l1_table(m.l1_offset, &active)?;
            m.l1 = active;
        }
        let (date_sec, date_nsec) = now();
        entries.push(Entry {
            l1_table_offset: l1_off,
            l1_size: l1.len() as u32,
            id: id.clone().into_bytes(),
            name: name.as_bytes().to_vec(),
            date_sec,
            date_nsec,
            vm_clock_nsec: 0,
            vm_state_size: 0,
            disk_size: self.virtual_size_now(),
            icount: 0,
            unknown_extra: Vec::new(),
        });
        self.write_table(&mut m, &entries)?;
        Ok(SnapshotInfo {
            id,
            name: name.to_string(),
            vm_state_size: 0,
            date_sec: date_sec as u64,
            date_nsec,
            vm_clock_nsec: 0,
            icount: Some(0),
        })
    }

    /// `snapshot -a`: make the active state a copy of snapshot `which`
    /// (an ID, or failing that a name), with the snapshot's disk size.
    pub(super) fn snapshot_apply(&self, which: &str) -> Result<()> {
        if self.data_file.is_some() {
            return Err(Error::unsupported("Operation not supported"));
        }
        self.prepare_write()?;
        let entries = self.read_entries()?;
        let idx = position(&entries, Some(which), None)
            .or_else(|| position(&entries, None, Some(which)))
            .ok_or_else(|| Error::from_errno(libc::ENOENT))?;
        let sn = entries[idx].clone();
        if let Err((m, errno)) = self.validate_snapshot_l1(sn.l1_table_offset, sn.l1_size) {
            // QEMU reports the reason, then fails with its errno.
            crate::events::notice(&crate::format::vhdx::error_report(m));
            return Err(Error::from_errno(errno));
        }
        let sn_l1 = self.read_snapshot_l1(&sn)?;
        if sn.disk_size != self.virtual_size_now() {
            self.resize_any(sn.disk_size, crate::format::Prealloc::Off)?;
        }
        self.grow_l1(sn.l1_size as u64)?;
        let _w = self.write_lock.lock();
        let mut m = self.meta.lock();
        // References for the snapshot's tables first (the snapshot's own
        // L1 gets its flags refreshed, as QEMU writes it back).
        let mut sn_flags = sn_l1.clone();
        if self
            .update_refcounts(&mut m, &mut sn_flags, 1)
            .map_err(overflow_is_einval)?
        {
            self.write_l1_table(sn.l1_table_offset, &sn_flags)?;
        }
        let mut new_active = sn_l1;
        new_active.resize(m.l1.len(), 0);
        self.write_l1_table(m.l1_offset, &new_active)?;
        let mut old_active = std::mem::replace(&mut m.l1, new_active);
        self.update_refcounts(&mut m, &mut old_active, -1)?;
        self.refresh_copied(&mut m)?;
        m.l2 = L2Cache::new(self.cs());
        m.comp_cursor = 0;
        Ok(())
    }

    /// `snapshot -d`: drop the snapshot matching `id` and `name` (each
    /// optional) and everything only it referenced.
    pub(super) fn snapshot_delete(&self, id: Option<&str>, name: Option<&str>) -> Result<()> {
        if self.data_file.is_some() {
            return Err(Error::unsupported("Operation not supported"));
        }
        self.prepare_write()?;
        let _w = self.write_lock.lock();
        let mut m = self.meta.lock();
        let mut entries = self.read_entries()?;
        let idx = position(&entries, id, name)
            .ok_or_else(|| Error::new(ErrorKind::NotFound, "Can't find the snapshot"))?;
        let sn = entries.remove(idx);
        let mut sn_l1 = self.read_snapshot_l1(&sn)?;
        // QEMU's words for each step; an I/O error says which one failed.
        let step = |what: &'static str| {
            move |e: Error| match e.errno() {
                Some(_) => {
                    let t = crate::format::errno_text(&e);
                    e.with_message(format!("{what}: {t}"))
                }
                None => e,
            }
        };
        self.write_table(&mut m, &entries)
            .map_err(step("Failed to remove snapshot from snapshot list"))?;
        self.update_refcounts(&mut m, &mut sn_l1, -1)
            .map_err(step("Failed to free the cluster and L1 table"))?;
        if sn.l1_size > 0 {
            let cs = self.cs();
            m.rc.free_or_leak(
                &self.file,
                sn.l1_table_offset >> self.geo.cluster_bits,
                (sn.l1_size as u64 * 8).div_ceil(cs),
            );
        }
        self.refresh_copied(&mut m)
            .map_err(step("Failed to update snapshot status in disk"))?;
        m.l2 = L2Cache::new(self.cs());
        m.comp_cursor = 0;
        Ok(())
    }
}

/// A refcount that would exceed the image's refcount width is EINVAL in
/// QEMU's snapshot code ("Invalid argument").
fn overflow_is_einval(e: Error) -> Error {
    if e.kind() == ErrorKind::Corrupt && e.message().starts_with("Reference count overflow") {
        Error::from_errno(libc::EINVAL)
    } else {
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_number_like_strtoul() {
        assert_eq!(strtoul(b"12"), 12);
        assert_eq!(strtoul(b" 7x"), 7);
        assert_eq!(strtoul(b"abc"), 0);
        assert_eq!(strtoul(b""), 0);
        assert_eq!(strtoul(b"99999999999999999999999"), u64::MAX);
    }

    #[test]
    fn table_layout_like_qemu() {
        let e = Entry {
            l1_table_offset: 0x450000,
            l1_size: 1,
            id: b"1".to_vec(),
            name: b"snap1".to_vec(),
            date_sec: 1,
            date_nsec: 2,
            vm_clock_nsec: 0,
            vm_state_size: 0,
            disk_size: 0xa00000,
            icount: 0,
            unknown_extra: Vec::new(),
        };
        let b = serialize(&[e.clone(), e]).unwrap();
        // 70-byte entries, the second 8-byte aligned, no trailing pad.
        assert_eq!(b.len(), 72 + 70);
        assert_eq!(&b[36..40], &24u32.to_be_bytes());
        assert_eq!(&b[64..70], b"1snap1");
    }
}
