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

use super::{Meta, Qed, F_NEED_CHECK, ZERO_CLUSTER};
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

    /// Read entries of the table at `off` page by page (not through the
    /// cache: a check reads every table once).
    fn scan_table(&self, off: u64, mut f: impl FnMut(u64, u64)) -> Result<()> {
        let page = self.geo.table_bytes().min(1 << 20);
        let mut raw = vec![0u8; page as usize];
        let mut done = 0u64;
        while done < self.geo.table_bytes() {
            self.file.read_at(&mut raw, off + done)?;
            for (i, c) in raw.chunks_exact(8).enumerate() {
                let mut a = [0u8; 8];
                a.copy_from_slice(c);
                f(done / 8 + i as u64, u64::from_le_bytes(a));
            }
            done += page;
        }
        Ok(())
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
        let cs = self.cs();
        let mut res = CheckResult {
            total_clusters: self.virtual_size().div_ceil(cs),
            ..CheckResult::default()
        };
        let mut used = Used::new(self.cluster_index(m.file_size))?;
        self.mark_used(&mut used, &mut res, self.geo.l1_offset, self.geo.table_size);
        let mut l1 = Vec::new();
        self.scan_table(self.geo.l1_offset, |i, e| {
            if e != 0 {
                l1.push((i, e));
            }
        })?;
        let mut bad_l1 = Vec::new();
        let mut last_error = None;
        for (i, l2) in l1 {
            if !self.geo.table_ok(l2, m.file_size) {
                if fix {
                    res.corruptions_fixed += 1;
                } else {
                    res.corruptions += 1;
                }
                bad_l1.push(i);
                continue;
            }
            if !self.mark_used(&mut used, &mut res, l2, self.geo.table_size) {
                continue;
            }
            let mut entries = Vec::new();
            if let Err(e) = self.scan_table(l2, |j, e| {
                if e != 0 && e != ZERO_CLUSTER {
                    entries.push((j, e));
                }
            }) {
                res.check_errors += 1;
                last_error = Some(e);
                continue;
            }
            let mut bad = Vec::new();
            let mut last = 0u64;
            for (j, e) in entries {
                res.allocated_clusters += 1;
                if last != 0 && last + cs != e {
                    res.fragmented_clusters += 1;
                }
                last = e;
                if !self.geo.cluster_ok(e, m.file_size) {
                    if fix {
                        res.corruptions_fixed += 1;
                    } else {
                        res.corruptions += 1;
                    }
                    bad.push(j);
                    continue;
                }
                self.mark_used(&mut used, &mut res, e, 1);
            }
            if fix {
                if let Err(e) = self.clear_entries(&mut m, l2, &bad, false) {
                    res.check_errors += 1;
                    last_error = Some(e);
                }
            }
        }
        if fix {
            if let Err(e) = self.clear_entries(&mut m, self.geo.l1_offset, &bad_l1, true) {
                res.check_errors += 1;
                last_error = Some(e);
            }
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

    /// Zero the given entries of the table at `table`.
    fn clear_entries(&self, m: &mut Meta, table: u64, idx: &[u64], l1: bool) -> Result<()> {
        for &i in idx {
            if l1 {
                m.l1.set(&self.file, table, i, &[0])?;
            } else {
                m.l2.set(&self.file, table, i, &[0])?;
            }
        }
        Ok(())
    }
}
