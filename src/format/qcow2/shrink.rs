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

use super::l2::L2Cache;
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
                self.zero_clusters(start, n, true, true, &NoBacking)?;
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
        self.resize(size, prealloc)?;
        self.zero(old, size - old, false, backing)
    }

    /// Deallocate everything the active L1 maps and free its L2 tables, so
    /// that every read falls through to the backing file (commit's
    /// "make empty"), then cut the file.
    pub(super) fn make_empty(&self) -> Result<()> {
        self.prepare_write()?;
        let _w = self.write_lock.lock();
        self.deallocate_from(0)?;
        self.free_l2_from(0)?;
        self.truncate_tail()
    }
}
