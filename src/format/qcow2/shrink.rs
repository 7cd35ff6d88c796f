//! Shrinking and emptying: deallocate guest clusters past a point, free the
//! L2 tables beyond the new end, then cut the file after its last used
//! cluster. Also the grow variant whose new area must read as zeros even
//! over a larger backing file (QEMU's truncate with ZERO_WRITE).
//!
//! Order: mappings are removed before the refcounts they held are dropped
//! (a crash leaks clusters, it never leaves a mapping to a free cluster);
//! the header's size is written after the clusters past it are gone, as
//! QEMU does; the file is only cut behind clusters whose refcount is 0.

use std::sync::atomic::Ordering;

use super::header;
use super::l2::L2Cache;
use super::refcount::Refcounts;
use super::Qcow2;
use crate::error::{Error, Result};
use crate::format::{BackingRead, NoBacking, Prealloc};

impl Qcow2 {
    /// Make every guest cluster from `first_ci` on unallocated (QEMU's full
    /// discard: no zero flag, whatever the backing file), copying L2 tables
    /// shared with snapshots first.
    fn deallocate_from(&self, first_ci: u64) -> Result<()> {
        let epl = self.epl();
        let l1_len = self.meta.lock().l1.len() as u64;
        let mut l1i = first_ci / epl;
        while l1i < l1_len {
            let present = {
                let m = self.meta.lock();
                self.l2_offset(&m, l1i)?.is_some()
            };
            if present {
                let start = first_ci.max(l1i * epl);
                let n = (l1i + 1) * epl - start;
                self.zero_clusters(start, n, true, true, true, &NoBacking)?;
            }
            l1i += 1;
        }
        Ok(())
    }

    /// Drop the active L1 entries from `keep` on and free the L2 tables they
    /// pointed to (all of whose entries must already be unallocated). The
    /// L1 table keeps its size, as QEMU's qcow2_shrink_l1_table does.
    fn free_l2_from(&self, keep: u64) -> Result<()> {
        let cb = self.geo.cluster_bits;
        let mut m = self.meta.lock();
        let len = m.l1.len() as u64;
        if keep >= len {
            return Ok(());
        }
        let mut freed = Vec::new();
        for i in keep..len {
            if let Some(off) = self.l2_offset(&m, i)? {
                freed.push(off);
            }
        }
        if freed.is_empty() && m.l1[keep as usize..].iter().all(|&e| e == 0) {
            return Ok(());
        }
        let zeros = vec![0u8; ((len - keep) * 8) as usize];
        self.file.write_at(&zeros, m.l1_offset + keep * 8)?;
        self.file.flush()?;
        for e in &mut m.l1[keep as usize..] {
            *e = 0;
        }
        for off in freed {
            m.rc.free(&self.file, off >> cb, 1)?;
        }
        // Freed tables may come back as data clusters: forget them.
        m.l2 = L2Cache::new(self.cs());
        m.comp_cursor = 0;
        Ok(())
    }

    /// Cut the file after the last cluster with a non-zero refcount.
    fn truncate_tail(&self) -> Result<()> {
        if self.data_file.is_some() {
            return Ok(());
        }
        let cs = self.cs();
        let mut m = self.meta.lock();
        let len = self.file.len()?;
        let mut c = len.div_ceil(cs);
        while c > 1 && m.rc.get(&self.file, c - 1)? == 0 {
            c -= 1;
        }
        let end = c * cs;
        if end < len {
            self.file.flush()?;
            self.file.set_len(end)?;
        }
        Ok(())
    }

    fn check_resizable(&self, size: u64) -> Result<()> {
        if !size.is_multiple_of(512) {
            return Err(Error::invalid("The new size must be a multiple of 512"));
        }
        let h = self.hdr.lock();
        if h.nb_snapshots > 0 && h.version < 3 {
            return Err(Error::unsupported(
                "Can't resize a v2 image which has snapshots",
            ));
        }
        Ok(())
    }

    /// Shrink the virtual size to `size` (< current): clusters past the
    /// new end are deallocated, unused L2 tables freed, the file cut.
    pub(super) fn shrink(&self, size: u64) -> Result<()> {
        let old = self.virtual_size_now();
        if size >= old {
            return Ok(());
        }
        self.check_resizable(size)?;
        self.prepare_write()?;
        let _w = self.write_lock.lock();
        let cs = self.cs();
        self.deallocate_from(size.div_ceil(cs))?;
        let cov = self.hdr.lock().l2_coverage();
        self.free_l2_from(size.div_ceil(cov))?;
        self.file.flush()?;
        self.file.write_at(&size.to_be_bytes(), 24)?;
        self.hdr.lock().size = size;
        self.size.store(size, Ordering::Release);
        self.truncate_tail()
    }

    /// Resize either way (grow through the existing path).
    pub(super) fn resize_any(&self, size: u64, prealloc: Prealloc) -> Result<()> {
        self.bitmaps_before_resize()?;
        let r = self.resize_any_inner(size, prealloc);
        self.bitmaps_resize();
        r
    }

    fn resize_any_inner(&self, size: u64, prealloc: Prealloc) -> Result<()> {
        if size < self.virtual_size_now() {
            if prealloc != Prealloc::Off {
                return Err(Error::invalid(
                    "Preallocation can't be used for shrinking an image",
                ));
            }
            self.shrink(size)
        } else {
            self.resize(size, prealloc)
        }
    }

    /// Grow so that the new area reads as zeros even where `backing` has
    /// data (zero clusters; v2 images cannot express that).
    pub(super) fn grow_zeroed(
        &self,
        size: u64,
        prealloc: Prealloc,
        backing: &dyn BackingRead,
    ) -> Result<()> {
        let old = self.virtual_size_now();
        if size <= old {
            return self.resize_any(size, prealloc);
        }
        self.check_resizable(size)?;
        if self.hdr.lock().version < 3 {
            return Err(Error::unsupported(
                "Failed to zero out new clusters: Operation not supported",
            ));
        }
        // Preallocating the cluster the old end falls in must keep what the
        // backing file shows before the old end (QEMU's COW head).
        let cs = self.cs();
        let head_start = old / cs * cs;
        let mut head = vec![0u8; (old - head_start) as usize];
        if prealloc != Prealloc::Off && !head.is_empty() {
            self.read(&mut head, head_start, backing)?;
        }
        self.resize(size, prealloc)?;
        if prealloc != Prealloc::Off && !head.is_empty() {
            self.write(&head, head_start, backing)?;
        }
        self.zero(old, size - old, false, backing)
    }

    /// Deallocate everything the active L1 maps and free its L2 tables, so
    /// that every read falls through to the backing file (commit's
    /// "make empty"), then cut the file.
    pub(super) fn make_empty(&self) -> Result<()> {
        // Decided before the first write clears autoclear bits.
        let bitmaps = self.hdr.lock().autoclear & header::AUTOCLEAR_BITMAPS != 0;
        self.prepare_write()?;
        let _w = self.write_lock.lock();
        if self.can_reset(bitmaps) {
            return self.make_completely_empty();
        }
        self.deallocate_from(0)?;
        self.free_l2_from(0)?;
        self.truncate_tail()
    }

    /// QEMU resets the whole file instead of discarding cluster by cluster
    /// when nothing but the active L1 holds clusters (v3, no snapshots,
    /// bitmaps, LUKS or data file) and the new metadata fits one refblock.
    fn can_reset(&self, bitmaps: bool) -> bool {
        let h = self.hdr.lock();
        let cs = self.cs();
        let l1_clusters = (h.l1_size as u64 * 8).div_ceil(cs);
        let rb_entries = (cs * 8) >> h.refcount_order;
        h.version >= 3
            && h.nb_snapshots == 0
            && !bitmaps
            && h.crypt_method != 2
            && self.data_file.is_none()
            && 3 + l1_clusters <= rb_entries
    }

    /// QEMU's make_completely_empty: header, one-cluster reftable at
    /// cluster 1, its refblock at 2, the zeroed L1 table from cluster 3.
    /// The image is marked dirty first; a failure midway leaves it dirty
    /// and this handle unusable (QEMU ejects the node), so the open repair
    /// fixes the refcounts later.
    fn make_completely_empty(&self) -> Result<()> {
        self.set_incompat_flag(header::INCOMPAT_DIRTY, true)?;
        let r = self.reset_layout();
        if r.is_err() {
            self.broken.store(true, Ordering::Release);
        }
        r?;
        self.set_incompat_flag(header::INCOMPAT_DIRTY, false)?;
        let (cs, l1_clusters) = {
            let h = self.hdr.lock();
            (self.cs(), (h.l1_size as u64 * 8).div_ceil(self.cs()))
        };
        self.file.set_len((3 + l1_clusters) * cs)
    }

    fn reset_layout(&self) -> Result<()> {
        let cs = self.cs();
        let (l1_size, l1_offset, cb, order) = {
            let h = self.hdr.lock();
            (
                h.l1_size as u64,
                h.l1_table_offset,
                h.cluster_bits,
                h.refcount_order,
            )
        };
        let l1_clusters = (l1_size * 8).div_ceil(cs);
        let mut m = self.meta.lock();
        self.file.event("l1_update");
        self.file.write_zeroes(l1_offset, l1_clusters * cs, false)?;
        m.l1.iter_mut().for_each(|e| *e = 0);
        self.file.event("empty_image_prepare");
        self.file.write_zeroes(cs, (2 + l1_clusters) * cs, false)?;
        self.file.event("l1_update");
        self.file.event("reftable_update");
        let mut hb = [0u8; 20];
        hb[..8].copy_from_slice(&(3 * cs).to_be_bytes());
        hb[8..16].copy_from_slice(&cs.to_be_bytes());
        hb[16..].copy_from_slice(&1u32.to_be_bytes());
        self.file.write_at(&hb, 40)?;
        self.file.flush()?;
        {
            let mut h = self.hdr.lock();
            h.l1_table_offset = 3 * cs;
            h.refcount_table_offset = cs;
            h.refcount_table_clusters = 1;
        }
        m.l1_offset = 3 * cs;
        m.l2 = L2Cache::new(cs);
        m.comp_cursor = 0;
        self.file.event("refblock_alloc");
        self.file.write_at(&(2 * cs).to_be_bytes(), cs)?;
        self.file.flush()?;
        m.rc = Refcounts::load(&self.file, cb, order, cs, 1)?;
        // Header, reftable, refblock and L1 table, allocated from cluster 0.
        self.file.event("cluster_alloc");
        for c in 0..3 + l1_clusters {
            m.rc.set(&self.file, c, 1)?;
        }
        Ok(())
    }
}
