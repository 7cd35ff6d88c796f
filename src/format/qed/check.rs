//! QED consistency check (`qemu-img check`, and the repair run on opening
//! an image whose need-check bit is set), with QEMU's counting:
//!
//! - every table and data cluster must be referenced once; a second
//!   reference is a corruption that cannot be fixed (the table is skipped);
//! - an invalid table or cluster offset is a corruption; with a repair
//!   mode the entry is cleared (either repair mode: QEMU does not
//!   distinguish them for QED);
//! - clusters past the header that nothing references are leaks, which
//!   QED never repairs;
//! - allocated/fragmented clusters count data clusters per L2 table.

use super::{le64, Meta, Qed, F_NEED_CHECK, ZERO_CLUSTER};
use crate::error::{Error, Result};
use crate::format::{CheckResult, Driver};

/// Bitmap of referenced clusters, with QEMU's double-reference counting.
struct Used {
    bits: Vec<u64>,
    n: u64,
}

impl Used {
    fn new(n: u64) -> Result<Used> {
        // One bit per cluster of the file: bounded by the file's size.
        let words = usize::try_from(n.div_ceil(64))
            .map_err(|_| Error::invalid("Image too large to check"))?;
        Ok(Used {
            bits: vec![0u64; words],
            n,
        })
    }
    fn test(&self, c: u64) -> bool {
        c < self.n && self.bits[(c / 64) as usize] >> (c % 64) & 1 != 0
    }
    /// Mark `count` clusters from `first`; returns how many were already
    /// marked (each a corruption).
    fn mark(&mut self, first: u64, count: u64) -> u64 {
        let mut dup = 0;
        for c in first..first.saturating_add(count) {
            if c >= self.n {
                break;
            }
            if self.test(c) {
                dup += 1;
            }
            self.bits[(c / 64) as usize] |= 1 << (c % 64);
        }
        dup
    }
}

impl Qed {
    /// The bitmap index QEMU's check gives the cluster at byte `off`: it
    /// divides by `cluster_size - 1`, so from cluster `cluster_size - 1`
    /// on the indexes skip one every `cluster_size - 1` clusters and the
    /// skipped ones count as leaks. Reproduced so the counts match.
    fn cluster_index(&self, off: u64) -> u64 {
        let cs = self.cs();
        off.checked_next_multiple_of(cs).unwrap_or(u64::MAX) / (cs - 1)
    }

    /// Mark a table's or cluster's clusters used; false on a double
    /// reference (counted as corruptions).
    fn mark_used(&self, used: &mut Used, res: &mut CheckResult, off: u64, n: u64) -> bool {
        let dup = used.mark(self.cluster_index(off), n);
        res.corruptions += dup;
        dup == 0
    }

    pub(super) fn check_image(&self, fix: bool, _log: &mut dyn FnMut(&str)) -> Result<CheckResult> {
        if fix && !self.writable {
            return Err(Error::new(
                crate::error::ErrorKind::PermissionDenied,
                "Image is read-only",
            ));
        }
        let _w = self.write_lock.lock();
        let mut m = self.meta.lock();
        let mut res = CheckResult {
            total_clusters: self.virtual_size().div_ceil(self.cs()),
            ..CheckResult::default()
        };
        let mut used = Used::new(self.cluster_index(m.file_size))?;
        self.mark_used(&mut used, &mut res, self.geo.l1_offset, self.geo.table_size);
        // Tables are read a page at a time: nothing here grows with what a
        // header claims, only with the file.
        let bytes = self.geo.table_bytes();
        let page = bytes.min(1 << 20);
        let mut l1raw = vec![0u8; page as usize];
        let mut l2raw = vec![0u8; page as usize];
        let mut last_error = None;
        let mut done = 0u64;
        while done < bytes {
            self.file.read_at(&mut l1raw, self.geo.l1_offset + done)?;
            for (k, c) in l1raw.chunks_exact(8).enumerate() {
                let i = done / 8 + k as u64;
                let l2 = le64(c, 0);
                if l2 == 0 {
                    continue;
                }
                if !self.geo.table_ok(l2, m.file_size) {
                    if fix {
                        res.corruptions_fixed += 1;
                        if let Err(e) = m.l1.set(&self.file, self.geo.l1_offset, i, &[0]) {
                            res.check_errors += 1;
                            last_error = Some(e);
                        }
                    } else {
                        res.corruptions += 1;
                    }
                    continue;
                }
                if !self.mark_used(&mut used, &mut res, l2, self.geo.table_size) {
                    continue;
                }
                if let Err(e) = self.check_l2(&mut m, l2, fix, &mut used, &mut res, &mut l2raw) {
                    res.check_errors += 1;
                    last_error = Some(e);
                }
            }
            done += page;
        }
        if let Some(e) = last_error {
            // QEMU's check fails as a whole when a table could not be
            // read or written back.
            return Err(e);
        }
        let header_clusters = self.hdr.lock().header_size as u64;
        for c in header_clusters..used.n {
            if !used.test(c) {
                res.leaks += 1;
            }
        }
        drop(m);
        if fix
            && res.corruptions == 0
            && res.check_errors == 0
            && self.hdr.lock().features & F_NEED_CHECK != 0
        {
            self.set_need_check(false)?;
        }
        Ok(res)
    }

    /// Count and mark one L2 table's clusters, clearing invalid entries
    /// when fixing. Fragmentation is measured within the table, as QEMU
    /// does.
    fn check_l2(
        &self,
        m: &mut Meta,
        l2: u64,
        fix: bool,
        used: &mut Used,
        res: &mut CheckResult,
        raw: &mut [u8],
    ) -> Result<()> {
        let cs = self.cs();
        let page = raw.len() as u64;
        let mut last = 0u64;
        let mut done = 0u64;
        while done < self.geo.table_bytes() {
            self.file.read_at(raw, l2 + done)?;
            for (k, c) in raw.chunks_exact(8).enumerate() {
                let e = le64(c, 0);
                if e == 0 || e == ZERO_CLUSTER {
                    continue;
                }
                res.allocated_clusters += 1;
                if last != 0 && last.wrapping_add(cs) != e {
                    res.fragmented_clusters += 1;
                }
                last = e;
                if !self.geo.cluster_ok(e, m.file_size) {
                    if fix {
                        m.l2.set(&self.file, l2, done / 8 + k as u64, &[0])?;
                        res.corruptions_fixed += 1;
                    } else {
                        res.corruptions += 1;
                    }
                    continue;
                }
                self.mark_used(used, res, e, 1);
            }
            done += page;
        }
        Ok(())
    }
}
