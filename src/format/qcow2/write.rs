//! Write path: in-place writes, cluster allocation with copy-on-write,
//! zero clusters, discard, compressed clusters, preallocation and growth.
//!
//! Order of updates for a new cluster: refcount (in `alloc`), then data,
//! then the L2 entry, then the L1 entry for a new table; old clusters are
//! released only after nothing points at them.

use super::l2::{self, Kind, Slot, BITMAP_ALL_ALLOC, BITMAP_ALL_ZERO, OFLAG_COPIED, OFLAG_ZERO};
use super::{header, Meta, Qcow2};
use crate::error::{Error, Result};
use crate::format::{BackingRead, NoBacking, Prealloc};

impl Qcow2 {
    pub(super) fn epl(&self) -> u64 {
        self.geo.entries_per_l2()
    }

    fn set_l1(&self, m: &mut Meta, l1i: u64, v: u64) -> Result<()> {
        let slot =
            m.l1.get_mut(l1i as usize)
                .ok_or_else(|| Error::out_of_range("L1 index beyond table"))?;
        *slot = v;
        self.file.event("l1_update");
        self.file.write_at(&v.to_be_bytes(), m.l1_offset + l1i * 8)
    }

    /// The L2 table for `l1i`, allocated or copied (if shared with a
    /// snapshot) so that it can be modified.
    fn l2_for_write(&self, m: &mut Meta, l1i: u64) -> Result<u64> {
        let e = *m
            .l1
            .get(l1i as usize)
            .ok_or_else(|| Error::out_of_range("L1 index beyond table"))?;
        let cs = self.cs();
        match self.l2_offset(m, l1i)? {
            Some(o) if e & OFLAG_COPIED != 0 => Ok(o),
            Some(o) => {
                let table = m.l2.get(&self.file, &self.geo, o)?.clone();
                let new = m.rc.alloc(&self.file, 1)?;
                self.file.event("l2_alloc_write");
                self.file
                    .write_at(&l2::encode(&table, self.geo.extended), new)?;
                m.l2.insert(new, table);
                self.set_l1(m, l1i, new | OFLAG_COPIED)?;
                m.rc.free(&self.file, o >> self.geo.cluster_bits, 1)?;
                Ok(new)
            }
            None => {
                let new = m.rc.alloc(&self.file, 1)?;
                self.file.event("l2_alloc_write");
                self.file.write_at(&vec![0u8; cs as usize], new)?;
                m.l2.insert(new, vec![Slot::default(); self.epl() as usize]);
                self.set_l1(m, l1i, new | OFLAG_COPIED)?;
                Ok(new)
            }
        }
    }

    /// Write slots [idx, idx+n) of an L2 table through to disk.
    fn set_slots(&self, m: &mut Meta, l2off: u64, idx: u64, slots: &[Slot]) -> Result<()> {
        let t = m.l2.get(&self.file, &self.geo, l2off)?;
        let end = idx as usize + slots.len();
        if end > t.len() {
            return Err(Error::out_of_range("L2 index beyond table"));
        }
        t[idx as usize..end].copy_from_slice(slots);
        let esz = if self.geo.extended { 16 } else { 8 };
        self.file.event("l2_update");
        self.file
            .write_at(&l2::encode(slots, self.geo.extended), l2off + idx * esz)
    }

    /// Host offset for `k` new data clusters starting at guest cluster
    /// `ci`. An external data file maps guest offsets 1:1 (as QEMU does) and
    /// its clusters are not refcounted.
    fn alloc_data(&self, m: &mut Meta, ci: u64, k: u64) -> Result<u64> {
        if self.data_file.is_some() {
            return Ok(ci << self.geo.cluster_bits);
        }
        m.rc.alloc(&self.file, k)
    }

    /// Drop the references a slot holds (after it has been replaced).
    fn release(&self, m: &mut Meta, s: &Slot) -> Result<()> {
        if self.geo.is_compressed(s) {
            let (first, n) = self.geo.compressed_clusters(s);
            return m.rc.free(&self.file, first, n);
        }
        let off = self.geo.host_offset(s)?;
        if off != 0 && self.data_file.is_none() {
            m.rc.free(&self.file, off >> self.geo.cluster_bits, 1)?;
        }
        Ok(())
    }

    fn slots(&self, m: &mut Meta, ci: u64, n: u64) -> Result<Vec<Slot>> {
        (ci..ci + n).map(|c| self.slot(m, c)).collect()
    }

    pub(super) fn prepare_write(&self) -> Result<()> {
        if self.hdr.lock().crypt_method != 0 && self.crypto.is_none() {
            return Err(Error::unsupported(
                "Parameter 'encrypt.key-secret' is required for cipher",
            ));
        }
        self.before_first_write()
    }

    /// Store guest data for guest offset `guest` at `host`, encrypted when
    /// the image is; a range not on sector boundaries is merged with the
    /// sectors' current content first.
    fn write_host(&self, data: &[u8], host: u64, guest: u64) -> Result<()> {
        self.file.event("write_aio");
        let Some(c) = &self.crypto else {
            return self.data().write_at(data, host);
        };
        let s = crate::crypto::cipher::SECTOR as u64;
        let head = host % s;
        let h0 = host - head;
        let h1 = (host + data.len() as u64).next_multiple_of(s);
        let mut buf = zeroize::Zeroizing::new(vec![0u8; (h1 - h0) as usize]);
        if head != 0 || h1 != host + data.len() as u64 {
            self.read_host(&mut buf, h0, guest - head)?;
        }
        buf[head as usize..head as usize + data.len()].copy_from_slice(data);
        c.encrypt(h0, guest - head, &mut buf);
        self.data().write_at(&buf, h0)
    }

    pub(super) fn write(&self, buf: &[u8], off: u64, backing: &dyn BackingRead) -> Result<()> {
        self.prepare_write()?;
        let _w = self.write_lock.lock();
        self.write_locked(buf, off, backing)
    }

    fn write_locked(&self, buf: &[u8], off: u64, backing: &dyn BackingRead) -> Result<()> {
        let cs = self.cs();
        let cb = self.geo.cluster_bits;
        let mut pos = 0u64;
        let len = buf.len() as u64;
        while pos < len {
            let goff = off + pos;
            let ci = goff >> cb;
            let in_c = goff & (cs - 1);
            if in_c == 0 && len - pos >= cs {
                let idx = ci % self.epl();
                let nmax = ((len - pos) / cs).min(self.epl() - idx);
                let data = &buf[pos as usize..(pos + nmax * cs) as usize];
                let n = self.write_full_clusters(ci, data)?;
                pos += n * cs;
            } else {
                let n = (cs - in_c).min(len - pos);
                self.write_partial(ci, in_c, &buf[pos as usize..(pos + n) as usize], backing)?;
                pos += n;
            }
        }
        Ok(())
    }

    /// Write whole clusters from `ci` (all within one L2 table); handles a
    /// prefix of clusters that share a fate and returns how many.
    fn write_full_clusters(&self, ci: u64, data: &[u8]) -> Result<u64> {
        let cs = self.cs();
        let ncl = data.len() as u64 / cs;
        let l1i = ci / self.epl();
        let idx = ci % self.epl();
        let mut m = self.meta.lock();
        let slots = self.slots(&mut m, ci, ncl)?;
        if self.geo.in_place(&slots[0]) {
            let host0 = self.geo.host_offset(&slots[0])?;
            let k = slots
                .iter()
                .enumerate()
                .take_while(|(i, s)| {
                    self.geo.in_place(s)
                        && self.geo.host_offset(s).ok() == Some(host0 + *i as u64 * cs)
                })
                .count() as u64;
            drop(m);
            self.check_overlap(host0, k * cs)?;
            self.write_host(
                &data[..(k * cs) as usize],
                host0,
                ci << self.geo.cluster_bits,
            )?;
            if self.geo.extended
                && slots[..k as usize]
                    .iter()
                    .any(|s| s.bitmap != BITMAP_ALL_ALLOC)
            {
                let mut m = self.meta.lock();
                let l2off = self.l2_for_write(&mut m, l1i)?;
                let new: Vec<Slot> = slots[..k as usize]
                    .iter()
                    .map(|s| Slot {
                        entry: s.entry,
                        bitmap: BITMAP_ALL_ALLOC,
                    })
                    .collect();
                self.set_slots(&mut m, l2off, idx, &new)?;
            }
            return Ok(k);
        }
        let k = slots.iter().take_while(|s| !self.geo.in_place(s)).count() as u64;
        let l2off = self.l2_for_write(&mut m, l1i)?;
        let host = self.alloc_data(&mut m, ci, k)?;
        drop(m);
        self.write_host(
            &data[..(k * cs) as usize],
            host,
            ci << self.geo.cluster_bits,
        )?;
        let mut m = self.meta.lock();
        let bitmap = if self.geo.extended {
            BITMAP_ALL_ALLOC
        } else {
            0
        };
        let new: Vec<Slot> = (0..k)
            .map(|i| Slot {
                entry: (host + i * cs) | OFLAG_COPIED,
                bitmap,
            })
            .collect();
        self.set_slots(&mut m, l2off, idx, &new)?;
        for s in &slots[..k as usize] {
            self.release(&mut m, s)?;
        }
        Ok(k)
    }

    /// Current guest content of cluster `ci` (zero-padded past the end).
    fn cluster_content(&self, ci: u64, backing: &dyn BackingRead) -> Result<Vec<u8>> {
        let cs = self.cs();
        let start = ci << self.geo.cluster_bits;
        let valid = cs.min(self.virtual_size_now().saturating_sub(start));
        let mut buf = vec![0u8; cs as usize];
        if valid > 0 {
            self.read(&mut buf[..valid as usize], start, backing)?;
        }
        Ok(buf)
    }

    fn write_partial(
        &self,
        ci: u64,
        in_c: u64,
        data: &[u8],
        backing: &dyn BackingRead,
    ) -> Result<()> {
        let slot = {
            let mut m = self.meta.lock();
            self.slot(&mut m, ci)?
        };
        let sc = self.geo.sc_size();
        let host = self.geo.host_offset(&slot).unwrap_or(0);
        let shared = !self.geo.is_compressed(&slot)
            && self.geo.has_host(&slot)
            && slot.entry & OFLAG_COPIED == 0;
        if !self.geo.extended || self.geo.is_compressed(&slot) || shared {
            if self.geo.in_place(&slot) {
                self.check_overlap(host + in_c, data.len() as u64)?;
                let guest = (ci << self.geo.cluster_bits) + in_c;
                return self.write_host(data, host + in_c, guest);
            }
            let mut c = self.cluster_content(ci, backing)?;
            c[in_c as usize..in_c as usize + data.len()].copy_from_slice(data);
            self.write_full_clusters(ci, &c)?;
            return Ok(());
        }
        // Extended L2: only the touched subclusters become allocated.
        let s0 = in_c / sc;
        let s1 = (in_c + data.len() as u64).div_ceil(sc);
        let l1i = ci / self.epl();
        let idx = ci % self.epl();
        let host = if self.geo.has_host(&slot) {
            host
        } else {
            let mut m = self.meta.lock();
            self.l2_for_write(&mut m, l1i)?;
            self.alloc_data(&mut m, ci, 1)?
        };
        let astart = s0 * sc;
        let alen = (s1 - s0) * sc;
        let mut owned;
        let out: &[u8] = if in_c == astart && data.len() as u64 == alen {
            data
        } else {
            owned = vec![0u8; alen as usize];
            let gstart = (ci << self.geo.cluster_bits) + astart;
            let valid = alen.min(self.virtual_size_now().saturating_sub(gstart));
            self.read(&mut owned[..valid as usize], gstart, backing)?;
            let rel = (in_c - astart) as usize;
            owned[rel..rel + data.len()].copy_from_slice(data);
            &owned
        };
        self.check_overlap(host + astart, alen)?;
        self.write_host(out, host + astart, (ci << self.geo.cluster_bits) + astart)?;
        let mask = (((1u64 << (s1 - s0)) - 1) << s0) & BITMAP_ALL_ALLOC;
        let mut m = self.meta.lock();
        let l2off = self.l2_for_write(&mut m, l1i)?;
        let cur = self.slot(&mut m, ci)?;
        let new = Slot {
            entry: host | OFLAG_COPIED,
            bitmap: (cur.bitmap | mask) & !(mask << 32),
        };
        self.set_slots(&mut m, l2off, idx, &[new])
    }

    /// Refuse data writes that would land on the image's own metadata
    /// (a corrupt L2 entry must not let guest data overwrite tables).
    fn check_overlap(&self, host: u64, len: u64) -> Result<()> {
        if self.data_file.is_some() {
            return Ok(());
        }
        let cs = self.cs();
        let m = self.meta.lock();
        let end = host + len;
        let hits = |o: u64, l: u64| o < end && host < o + l;
        let mut bad = hits(0, cs)
            || hits(m.l1_offset, m.l1.len() as u64 * 8)
            || hits(m.rc.table_offset(), m.rc.table_clusters() as u64 * cs);
        if !bad {
            bad = m.rc.block_offsets().any(|o| hits(o, cs));
        }
        if bad {
            return Err(Error::corrupt(format!(
                "Preventing invalid write on metadata (overlaps with metadata at offset {host:#x})"
            )));
        }
        Ok(())
    }

    /// True when the guest range already reads as zeros in this layer
    /// (without consulting a backing file that exists).
    fn reads_zero(&self, s: &Slot, backing: &dyn BackingRead) -> Result<bool> {
        if self.geo.extended {
            return Ok(s.bitmap & BITMAP_ALL_ALLOC == 0
                && (s.bitmap == BITMAP_ALL_ZERO
                    || (backing.is_none() && !self.geo.is_compressed(s))));
        }
        Ok(match self.geo.kind(s, 0)? {
            Kind::Zero(_) => true,
            Kind::Unallocated => backing.is_none(),
            _ => false,
        })
    }

    pub(super) fn zero(
        &self,
        off: u64,
        len: u64,
        may_unmap: bool,
        backing: &dyn BackingRead,
    ) -> Result<()> {
        self.prepare_write()?;
        let _w = self.write_lock.lock();
        if self.data_file_raw() {
            // The data file must stay a valid raw image: write real zeros.
            let zeros = vec![0u8; len.min(1 << 20) as usize];
            let mut pos = off;
            while pos < off + len {
                let n = (off + len - pos).min(zeros.len() as u64);
                self.write_locked(&zeros[..n as usize], pos, backing)?;
                pos += n;
            }
            return Ok(());
        }
        let cs = self.cs();
        let cb = self.geo.cluster_bits;
        let end = off + len;
        let mut pos = off;
        while pos < end {
            let ci = pos >> cb;
            let in_c = pos & (cs - 1);
            let cluster_end = ((ci + 1) << cb).min(end);
            let whole =
                in_c == 0 && (cluster_end - pos == cs || cluster_end == self.virtual_size_now());
            if !whole {
                let n = cluster_end - pos;
                let slot = {
                    let mut m = self.meta.lock();
                    self.slot(&mut m, ci)?
                };
                if !self.reads_zero(&slot, backing)? {
                    self.write_partial(ci, in_c, &vec![0u8; n as usize], backing)?;
                }
                pos = cluster_end;
                continue;
            }
            let idx = ci % self.epl();
            let n = (((end - pos) / cs).max(1)).min(self.epl() - idx);
            self.zero_clusters(ci, n, may_unmap, false, false, backing)?;
            pos += n * cs;
        }
        Ok(())
    }

    /// Make `n` whole clusters from `ci` (one L2 table) read as zeros, or
    /// with `dealloc` (discard without a backing file) unallocated.
    pub(super) fn zero_clusters(
        &self,
        ci: u64,
        n: u64,
        may_unmap: bool,
        dealloc: bool,
        punch_freed: bool,
        backing: &dyn BackingRead,
    ) -> Result<()> {
        let v3 = self.geo.v3;
        let mut m = self.meta.lock();
        let old = self.slots(&mut m, ci, n)?;
        let unallocated = |s: &Slot| s.entry == 0 && s.bitmap == 0;
        if dealloc && old.iter().all(unallocated) {
            return Ok(());
        }
        // QEMU marks even unallocated clusters as zero clusters where the
        // format can (v3), so only entries already in that state are skipped.
        let already = |s: &Slot| -> Result<bool> {
            if self.geo.extended {
                return Ok(s.bitmap == BITMAP_ALL_ZERO && (s.entry == 0 || !may_unmap));
            }
            if !v3 {
                return self.reads_zero(s, backing);
            }
            Ok(match self.geo.kind(s, 0)? {
                Kind::Zero(None) => true,
                Kind::Zero(Some(_)) => !may_unmap,
                _ => false,
            })
        };
        if !dealloc
            && old
                .iter()
                .try_fold(true, |acc, s| already(s).map(|z| acc && z))?
        {
            return Ok(());
        }
        if !v3 && !backing.is_none() {
            // v2 has no zero flag: zeros must be written as data.
            drop(m);
            let zeros = vec![0u8; (n * self.cs()) as usize];
            return self.write_locked(&zeros, ci << self.geo.cluster_bits, backing);
        }
        let l1i = ci / self.epl();
        let l2off = self.l2_for_write(&mut m, l1i)?;
        let mut new = Vec::with_capacity(n as usize);
        let mut freed = Vec::new();
        for s in &old {
            let keep = v3 && !dealloc && !may_unmap && self.geo.in_place(s);
            let entry = if keep { s.entry & !l2::OFLAG_ZERO } else { 0 };
            let slot = if dealloc {
                Slot::default()
            } else if self.geo.extended {
                Slot {
                    entry,
                    bitmap: BITMAP_ALL_ZERO,
                }
            } else if v3 {
                Slot {
                    entry: entry | OFLAG_ZERO,
                    bitmap: 0,
                }
            } else {
                Slot::default()
            };
            if !keep {
                freed.push(*s);
            }
            new.push(slot);
        }
        self.set_slots(&mut m, l2off, ci % self.epl(), &new)?;
        // QCOW2_DISCARD_ALWAYS: clusters that became free are discarded in
        // the file too, adjacent ones merged into one request as QEMU does.
        let mut holes: Vec<(u64, u64)> = Vec::new();
        for s in &freed {
            self.release(&mut m, s)?;
            if punch_freed && !self.geo.is_compressed(s) && self.data_file.is_none() {
                let off = self.geo.host_offset(s)?;
                if off != 0 && m.rc.get(&self.file, off >> self.geo.cluster_bits)? == 0 {
                    match holes.last_mut() {
                        Some((start, len)) if *start + *len == off => *len += self.cs(),
                        _ => holes.push((off, self.cs())),
                    }
                }
            }
        }
        drop(m);
        for (off, len) in holes {
            self.file.punch_hole(off, len)?;
        }
        Ok(())
    }

    /// An external data file that must stay valid as a raw image.
    fn data_file_raw(&self) -> bool {
        self.data_file.is_some() && self.hdr.lock().autoclear & header::AUTOCLEAR_DATA_FILE_RAW != 0
    }

    pub(super) fn discard_range(&self, off: u64, len: u64) -> Result<()> {
        if self.data_file_raw() {
            // Unmapping would leave the raw file out of step with the image.
            return Ok(());
        }
        let cs = self.cs();
        let start = off.div_ceil(cs) * cs;
        let end = ((off + len) / cs * cs).max(start);
        if end <= start {
            return Ok(());
        }
        let has_backing = self.hdr.lock().backing_file.is_some();
        if has_backing && !self.geo.v3 {
            return Ok(());
        }
        // With a backing file, discarded clusters must not expose it: they
        // become zero clusters; without one, they become unallocated.
        self.prepare_write()?;
        let _w = self.write_lock.lock();
        let cb = self.geo.cluster_bits;
        let mut ci = start >> cb;
        let last = end >> cb;
        while ci < last {
            let n = (last - ci).min(self.epl() - ci % self.epl());
            self.zero_clusters(ci, n, true, !has_backing, false, &NoBacking)?;
            ci += n;
        }
        Ok(())
    }

    /// Store an already-compressed cluster at guest offset `off`.
    pub(super) fn store_compressed(&self, data: &[u8], off: u64) -> Result<()> {
        if self.data_file.is_some() || self.crypto.is_some() {
            return Err(Error::from_errno(libc::ENOTSUP));
        }
        let cs = self.cs();
        if !off.is_multiple_of(cs) || data.is_empty() || data.len() as u64 >= cs {
            return Err(Error::invalid(
                "Compressed write must cover one aligned cluster",
            ));
        }
        self.prepare_write()?;
        let _w = self.write_lock.lock();
        let ci = off >> self.geo.cluster_bits;
        let mut m = self.meta.lock();
        let l2off = self.l2_for_write(&mut m, ci / self.epl())?;
        // As QEMU: a compressed write cannot replace an allocated cluster
        // (`convert -n -c` onto data fails with EIO).
        if self.geo.has_host(&self.slot(&mut m, ci)?) {
            return Err(Error::from_errno(libc::EIO));
        }
        let coff = self.alloc_compressed(&mut m, data.len() as u64)?;
        drop(m);
        self.file.event("write_compressed");
        self.file.write_at(data, coff)?;
        let mut m = self.meta.lock();
        let old = self.slot(&mut m, ci)?;
        let new = Slot {
            entry: self.geo.compressed_entry(coff, data.len() as u64),
            bitmap: 0,
        };
        self.set_slots(&mut m, l2off, ci % self.epl(), &[new])?;
        self.release(&mut m, &old)
    }

    /// Byte-granular allocation for compressed data, packing clusters into
    /// shared host clusters as QEMU does (each user adds one reference).
    fn alloc_compressed(&self, m: &mut Meta, len: u64) -> Result<u64> {
        let cs = self.cs();
        let cb = self.geo.cluster_bits;
        let cur = m.comp_cursor;
        if cur != 0 && !cur.is_multiple_of(cs) {
            let room = cs - cur % cs;
            let c = cur >> cb;
            if m.rc.get(&self.file, c)? < m.rc.max_refcount() {
                if len <= room {
                    m.rc.add(&self.file, c, 1, 1)?;
                    m.comp_cursor = cur + len;
                    return Ok(cur);
                }
                let k = (len - room).div_ceil(cs);
                let new = m.rc.alloc(&self.file, k)?;
                if new == (c + 1) << cb {
                    m.rc.add(&self.file, c, 1, 1)?;
                    m.comp_cursor = cur + len;
                    return Ok(cur);
                }
                // Not contiguous: start in the new clusters, freeing any
                // that the data does not reach.
                let used = len.div_ceil(cs);
                if used < k {
                    m.rc.free(&self.file, (new >> cb) + used, k - used)?;
                }
                m.comp_cursor = new + len;
                return Ok(new);
            }
        }
        let k = len.div_ceil(cs);
        let new = m.rc.alloc(&self.file, k)?;
        m.comp_cursor = new + len;
        Ok(new)
    }

    /// Allocate L2 tables and data clusters for guest [off, off+len)
    /// (preallocation=metadata/falloc/full).
    pub(super) fn preallocate(&self, off: u64, len: u64, mode: Prealloc) -> Result<()> {
        let area = matches!(mode, Prealloc::Falloc | Prealloc::Full)
            && self.data_file.is_none()
            && off.is_multiple_of(self.cs());
        // QEMU sets up the refcount area even for an empty image.
        if mode == Prealloc::Off || len == 0 && !(area && off == 0) {
            return Ok(());
        }
        self.prepare_write()?;
        let _w = self.write_lock.lock();
        if area && self.preallocate_area(off, len, mode)? {
            return Ok(());
        }
        let cs = self.cs();
        let cb = self.geo.cluster_bits;
        let mut ci = off >> cb;
        let last = (off + len).div_ceil(cs);
        let mut host_end = 0u64;
        let mut ranges = Vec::new();
        let mut existing = Vec::new();
        // Host offset of a newly allocated last cluster that the guest end
        // cuts (QEMU's copy-on-write fills the rest of it with zeros).
        let mut tail = None;
        while ci < last {
            let idx = ci % self.epl();
            let n = (last - ci).min(self.epl() - idx);
            let mut m = self.meta.lock();
            let old = self.slots(&mut m, ci, n)?;
            let l2off = self.l2_for_write(&mut m, ci / self.epl())?;
            let mut new = old.clone();
            if matches!(mode, Prealloc::Falloc | Prealloc::Full) && self.data_file.is_none() {
                // The cluster the old end falls in may be allocated without
                // backing storage (metadata preallocation): reserve it too,
                // as QEMU does by reallocating it (fallocate keeps its data).
                for s in old.iter().filter(|s| self.geo.has_host(s)) {
                    let h = self.geo.host_offset(s)?;
                    if h != 0 {
                        existing.push((h, cs));
                    }
                }
            }
            let todo: Vec<usize> = (0..n as usize)
                .filter(|&i| !self.geo.has_host(&old[i]) && !self.geo.is_compressed(&old[i]))
                .collect();
            if !todo.is_empty() {
                let host = self.alloc_data(&mut m, ci, todo.len() as u64)?;
                for (j, &i) in todo.iter().enumerate() {
                    let h = if self.data_file.is_some() {
                        (ci + i as u64) << cb
                    } else {
                        host + j as u64 * cs
                    };
                    // With extended L2, QEMU reserves the host cluster but
                    // leaves every subcluster unallocated (a backing file
                    // still shows through).
                    new[i] = Slot {
                        entry: h | OFLAG_COPIED,
                        bitmap: 0,
                    };
                }
                if self.data_file.is_none() && todo.last() == Some(&((last - ci - 1) as usize)) {
                    tail = Some(host + (todo.len() as u64 - 1) * cs);
                }
                if self.data_file.is_some() {
                    for &i in &todo {
                        let h = (ci + i as u64) << cb;
                        ranges.push((h, cs));
                        host_end = host_end.max(h + cs);
                    }
                } else {
                    ranges.push((host, todo.len() as u64 * cs));
                    host_end = host_end.max(host + todo.len() as u64 * cs);
                }
            }
            self.set_slots(&mut m, l2off, idx, &new)?;
            ci += n;
        }
        let data = self.data();
        if host_end > data.len()? {
            data.set_len(host_end)?;
        }
        let cut = (off + len) % cs;
        if let (Some(h), Prealloc::Metadata, true) = (tail, mode, cut != 0) {
            data.write_at(&vec![0u8; (cs - cut) as usize], h + cut)?;
        }
        for (h, l) in existing {
            data.allocate(h, l)?;
        }
        for (h, l) in ranges {
            match mode {
                Prealloc::Falloc => data.allocate(h, l)?,
                Prealloc::Full => data.write_zero_bytes(h, l)?,
                _ => {}
            }
        }
        Ok(())
    }

    /// Data preallocation (falloc/full) of the guest range `off..off+len`
    /// (`off` cluster-aligned) with QEMU's layout: refcount structures for
    /// the whole area first (see [`super::refcount::Refcounts::area_at`]),
    /// then every data cluster in one host run after them, the host file
    /// preallocated up to its end, and last the L2 tables, which go to the
    /// first free clusters (the old refcount table's, then after the data).
    /// Returns false, having changed nothing, when the range already maps
    /// clusters (the caller's general path handles that).
    fn preallocate_area(&self, off: u64, len: u64, mode: Prealloc) -> Result<bool> {
        let cs = self.cs();
        let cb = self.geo.cluster_bits;
        let epl = self.epl();
        let first = off >> cb;
        let nb_data = (off + len).div_ceil(cs) - first;
        let mut m = self.meta.lock();
        let mut ci = first;
        while ci < first + nb_data {
            let n = (first + nb_data - ci).min(epl - ci % epl);
            if self.l2_offset(&m, ci / epl)?.is_some()
                && self.slots(&mut m, ci, n)?.iter().any(|s| s.entry != 0)
            {
                return Ok(false);
            }
            ci += n;
        }
        // The new structures go after the last cluster in use.
        let file_clusters = self.file.len()?.div_ceil(cs);
        let mut last = file_clusters;
        while last > 0 && m.rc.get(&self.file, last - 1)? == 0 {
            last -= 1;
        }
        let start =
            m.rc.area_at(&self.file, last.max(1), nb_data + nb_data.div_ceil(epl) + 1)
                .map_err(|e| e.context("Failed to resize refcount structures"))?;
        {
            let mut h = self.hdr.lock();
            h.refcount_table_offset = m.rc.table_offset();
            h.refcount_table_clusters = m.rc.table_clusters();
        }
        m.rc.claim(&self.file, start, nb_data)?;
        let new_len = (start + nb_data) << cb;
        let cur = self.file.len()?;
        if new_len > cur {
            match mode {
                Prealloc::Full => self.file.write_zero_bytes(cur, new_len - cur)?,
                _ => self.file.allocate(cur, new_len - cur)?,
            }
        }
        let mut ci = first;
        let mut host = start;
        while ci < first + nb_data {
            let n = (first + nb_data - ci).min(epl - ci % epl);
            let l2off = self.l2_for_write(&mut m, ci / epl)?;
            // With extended L2, QEMU reserves the host clusters but leaves
            // every subcluster unallocated.
            let new: Vec<Slot> = (0..n)
                .map(|j| Slot {
                    entry: ((host + j) << cb) | OFLAG_COPIED,
                    bitmap: 0,
                })
                .collect();
            self.set_slots(&mut m, l2off, ci % epl, &new)?;
            ci += n;
            host += n;
        }
        Ok(true)
    }

    /// Make the active L1 table hold at least `entries` entries, moving it
    /// to new clusters when it grows.
    pub(super) fn grow_l1(&self, entries: u64) -> Result<()> {
        let mut m = self.meta.lock();
        if entries <= m.l1.len() as u64 {
            return Ok(());
        }
        if entries * 8 > header::MAX_L1_BYTES {
            // EFBIG, as QEMU's grow_l1_table: create words it on its own.
            return Err(Error::from_errno(libc::EFBIG)
                .with_message("Failed to grow the L1 table: File too large"));
        }
        let cs = self.cs();
        let mut l1 = m.l1.clone();
        l1.resize(entries as usize, 0);
        let clusters = (entries * 8).div_ceil(cs);
        let new = m.rc.alloc(&self.file, clusters)?;
        let mut raw = Vec::with_capacity(entries as usize * 8);
        for e in &l1 {
            raw.extend_from_slice(&e.to_be_bytes());
        }
        self.file.write_at(&raw, new)?;
        self.file.flush()?;
        let mut hb = [0u8; 12];
        hb[..4].copy_from_slice(&(entries as u32).to_be_bytes());
        hb[4..].copy_from_slice(&new.to_be_bytes());
        self.file.write_at(&hb, 36)?;
        let old_off = m.l1_offset;
        let old_len = m.l1.len() as u64;
        m.l1 = l1;
        m.l1_offset = new;
        {
            let mut h = self.hdr.lock();
            h.l1_size = entries as u32;
            h.l1_table_offset = new;
        }
        if old_len > 0 {
            m.rc.add(
                &self.file,
                old_off >> self.geo.cluster_bits,
                (old_len * 8).div_ceil(cs),
                -1,
            )?;
        }
        Ok(())
    }

    /// Grow the virtual size (shrinking is the resize command's job).
    pub(super) fn resize(&self, size: u64, prealloc: Prealloc) -> Result<()> {
        let old = self.virtual_size_now();
        if size < old {
            return Err(Error::unsupported(
                "qcow2 doesn't support shrinking images yet",
            ));
        }
        if !size.is_multiple_of(512) {
            return Err(Error::invalid("The new size must be a multiple of 512"));
        }
        self.prepare_write()?;
        {
            let h = self.hdr.lock();
            if h.nb_snapshots > 0 && h.version < 3 {
                return Err(Error::unsupported(
                    "Can't resize a v2 image which has snapshots",
                ));
            }
        }
        let cov = self.hdr.lock().l2_coverage();
        self.grow_l1(size.div_ceil(cov))?;
        self.file.write_at(&size.to_be_bytes(), 24)?;
        self.hdr.lock().size = size;
        self.size.store(size, std::sync::atomic::Ordering::Release);
        self.preallocate(old, size - old, prealloc)
    }
}
