//! Consistency check and repair (`qemu-img check [-r leaks|all]`): walk
//! every table to count references, compare with the stored refcounts,
//! verify OFLAG_COPIED, and fix what the repair mode allows. Messages are
//! QEMU's, line for line.

use std::collections::HashMap;

use super::l2::{self, Slot, L1E_OFFSET_MASK, L2E_OFFSET_MASK, OFLAG_COPIED};
use super::{header, snapshot, L2Cache, Qcow2};
use crate::error::{Error, Result};
use crate::format::{CheckResult, Repair};

/// Cap on distinct clusters we count in memory (2^26 clusters is 4 TiB of
/// 64 KiB clusters); beyond it we refuse rather than allocate unboundedly.
const MAX_COUNTED: usize = 1 << 26;

/// The walk's state: references per host cluster, findings and statistics.
struct Walk<'a> {
    cluster_bits: u32,
    file_clusters: u64,
    /// Largest refcount the image's width holds; counting past it is an
    /// overflow QEMU reports (and repair cannot fix).
    refcount_max: u64,
    /// `-r all`: entries that can be fixed on the spot are (as QEMU's
    /// BDRV_FIX_ERRORS during the walk).
    fix_errors: bool,
    /// An L2 entry was rewritten, so cached tables are stale.
    l2_changed: bool,
    counts: HashMap<u64, u64>,
    res: CheckResult,
    next_contiguous: u64,
    log: &'a mut dyn FnMut(&str),
}

impl Walk<'_> {
    fn add(&mut self, off: u64, len: u64) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        let first = off >> self.cluster_bits;
        let last = (off + len - 1) >> self.cluster_bits;
        if last >= self.file_clusters.saturating_add(1) {
            (self.log)(&format!(
                "ERROR: counting reference for region exceeding the end of the file by one cluster or more: offset {off:#x} size {len:#x}"
            ));
            self.res.corruptions += 1;
            return Ok(());
        }
        for c in first..=last {
            let n = self.counts.entry(c).or_insert(0);
            if *n == self.refcount_max {
                (self.log)(&format!(
                    "ERROR: overflow cluster offset={:#x}",
                    c << self.cluster_bits
                ));
                (self.log)("Use qemu-img amend to increase the refcount entry width or qemu-img convert to create a clean copy if the image cannot be opened for writing");
                self.res.corruptions += 1;
                continue;
            }
            *n += 1;
        }
        if self.counts.len() > MAX_COUNTED {
            return Err(Error::invalid("Image too large to check in memory"));
        }
        Ok(())
    }
}

impl Qcow2 {
    fn read_table(&self, off: u64, entries: u64) -> Result<Vec<u64>> {
        let mut raw = vec![0u8; (entries * 8) as usize];
        self.file.read_at(&mut raw, off)?;
        Ok(crate::format::bytes::be64_table(&raw))
    }

    /// Count references from one L1 table; `stats` for the active one.
    fn walk_l1(&self, w: &mut Walk<'_>, l1: &[u64], stats: bool) -> Result<()> {
        let cs = self.cs();
        for &e in l1 {
            let l2off = e & L1E_OFFSET_MASK;
            if l2off == 0 {
                continue;
            }
            if l2off & (cs - 1) != 0 {
                (w.log)(&format!(
                    "ERROR l2_offset={l2off:x}: Table is not cluster aligned; L1 entry corrupted"
                ));
                w.res.corruptions += 1;
                continue;
            }
            w.add(l2off, cs)?;
            // Fragmentation is measured within each L2 table, as QEMU does.
            w.next_contiguous = 0;
            let mut raw = vec![0u8; cs as usize];
            self.file.read_at(&mut raw, l2off)?;
            for (i, s) in l2::decode(&raw, self.geo.extended).iter().enumerate() {
                self.walk_slot(w, s, l2off, i, stats)?;
            }
        }
        Ok(())
    }

    fn walk_slot(
        &self,
        w: &mut Walk<'_>,
        s: &Slot,
        l2off: u64,
        index: usize,
        stats: bool,
    ) -> Result<()> {
        let cs = self.cs();
        if self.geo.is_compressed(s) {
            if self.geo.extended && s.bitmap != 0 {
                (w.log)(&format!(
                    "ERROR compressed cluster {index} with non-zero subcluster allocation bitmap, entry={:#x}",
                    s.entry
                ));
                w.res.corruptions += 1;
            }
            if stats {
                w.res.allocated_clusters += 1;
                w.res.compressed_clusters += 1;
                // Compressed clusters are fragmented by nature (QEMU counts so).
                w.res.fragmented_clusters += 1;
            }
            let (first, k) = self.geo.compressed_clusters(s);
            return w.add(first << self.geo.cluster_bits, k << self.geo.cluster_bits);
        }
        let off = s.entry & L2E_OFFSET_MASK;
        if self.geo.extended && (s.bitmap & l2::BITMAP_ALL_ALLOC) & (s.bitmap >> 32) != 0 {
            (w.log)(&format!(
                "ERROR invalid subcluster allocation bitmap, entry={:#x}",
                s.entry
            ));
            w.res.corruptions += 1;
        }
        if !self.geo.has_host(s) {
            return Ok(());
        }
        if stats {
            w.res.allocated_clusters += 1;
            if w.next_contiguous != 0 && off != w.next_contiguous {
                w.res.fragmented_clusters += 1;
            }
            w.next_contiguous = off + cs;
        }
        if off & (cs - 1) != 0 {
            w.res.corruptions += 1;
            let contains_data = if self.geo.extended {
                s.bitmap & l2::BITMAP_ALL_ALLOC != 0
            } else {
                s.entry & l2::OFLAG_ZERO == 0
            };
            if contains_data {
                (w.log)(&format!(
                    "ERROR offset={off:x}: Data cluster is not properly aligned; L2 entry corrupted."
                ));
            } else {
                let what = if w.fix_errors { "Repairing" } else { "ERROR" };
                (w.log)(&format!(
                    "{what} offset={off:x}: Preallocated cluster is not properly aligned; L2 entry corrupted."
                ));
                if w.fix_errors {
                    // Turn it into a plain zero entry; the cluster it named
                    // is then no longer counted as used.
                    self.zero_l2_entry(s, l2off, index)?;
                    w.l2_changed = true;
                    w.res.corruptions -= 1;
                    w.res.corruptions_fixed += 1;
                    return Ok(());
                }
            }
        }
        if self.data_file.is_none() {
            w.add(off, cs)?;
        }
        Ok(())
    }

    /// QEMU's fix_l2_entry_by_zero: allocated subclusters become zero ones,
    /// and the entry loses its host offset.
    fn zero_l2_entry(&self, s: &Slot, l2off: u64, index: usize) -> Result<()> {
        if self.geo.extended {
            let mut b = s.bitmap | (s.bitmap << 32);
            b &= l2::BITMAP_ALL_ZERO;
            let mut raw = [0u8; 16];
            raw[8..].copy_from_slice(&b.to_be_bytes());
            self.file.write_at(&raw, l2off + index as u64 * 16)
        } else {
            self.file
                .write_at(&l2::OFLAG_ZERO.to_be_bytes(), l2off + index as u64 * 8)
        }
    }

    /// References implied by all metadata, plus structural findings.
    fn walk(&self, w: &mut Walk<'_>) -> Result<()> {
        let cs = self.cs();
        let h = self.hdr.lock().clone();
        w.add(0, cs)?;
        w.add(
            h.refcount_table_offset,
            h.refcount_table_clusters as u64 * cs,
        )?;
        let (l1, l1_off) = {
            let m = self.meta.lock();
            (m.l1.clone(), m.l1_offset)
        };
        w.add(l1_off, l1.len() as u64 * 8)?;
        // The LUKS header the crypto extension points at.
        if let Some(e) = h.other_exts.iter().find(|e| e.kind == header::EXT_CRYPTO) {
            if e.data.len() >= 16 {
                w.add(
                    crate::format::bytes::be64(&e.data, 0),
                    crate::format::bytes::be64(&e.data, 8),
                )?;
            }
        }
        self.walk_l1(w, &l1, true)?;
        {
            for s in &self.snapshots {
                if s.l1_table_offset & (cs - 1) != 0 {
                    (w.log)(&format!("ERROR snapshot {} ({}) l1_offset={:#x}: L1 table is not cluster aligned; snapshot table entry corrupted", s.info.id, s.info.name, s.l1_table_offset));
                    w.res.corruptions += 1;
                    continue;
                }
                if s.l1_size as u64 * 8 > header::MAX_L1_BYTES {
                    (w.log)(&format!("ERROR snapshot {} ({}) l1_size={:#x}: L1 table is too large; snapshot table entry corrupted", s.info.id, s.info.name, s.l1_size));
                    w.res.corruptions += 1;
                    continue;
                }
                w.add(s.l1_table_offset, s.l1_size as u64 * 8)?;
                let table = self.read_table(s.l1_table_offset, s.l1_size as u64)?;
                self.walk_l1(w, &table, false)?;
            }
            w.add(h.snapshots_offset, self.snapshots.table_size())?;
        }
        // Bitmap directory, tables and data (QEMU's
        // qcow2_check_bitmaps_refcounts).
        let (runs, bad) = self.bitmaps.lock().clusters(&self.file, cs);
        w.res.corruptions += bad;
        for (off, len) in runs {
            w.add(off, len)?;
        }
        let entries: Vec<u64> = self.meta.lock().rc.table_entries().to_vec();
        for (i, e) in entries.iter().enumerate() {
            let off = e & 0xffff_ffff_ffff_fe00;
            if off == 0 {
                continue;
            }
            if off & (cs - 1) != 0 {
                (w.log)(&format!("ERROR refcount block {i} is not cluster aligned; refcount table entry corrupted"));
                w.res.corruptions += 1;
                continue;
            }
            if off >> self.geo.cluster_bits >= w.file_clusters {
                (w.log)(&format!("ERROR refcount block {i} is outside image"));
                w.res.corruptions += 1;
                continue;
            }
            w.add(off, cs)?;
        }
        Ok(())
    }

    /// One check pass (snapshot table, then refcounts, then the snapshot
    /// table's repair, as QEMU's qcow2_co_check_locked); with `repair`,
    /// fixes what the mode allows.
    pub(super) fn check_image(
        &self,
        repair: Repair,
        log: &mut dyn FnMut(&str),
    ) -> Result<CheckResult> {
        if repair != Repair::None && !self.writable {
            return Err(Error::invalid("Cannot repair a read-only image"));
        }
        let fix = repair == Repair::All;
        let mut snap = CheckResult::default();
        self.check_read_snapshot_table(fix, &mut snap, log)?;
        let mut res = self.check_refcounts(repair, log)?;
        if snap.corruptions > 0 && fix {
            let size = self.hdr.lock().size;
            let entries = self.snapshots.iter().collect::<Vec<_>>();
            let r = {
                let _w = self.write_lock.lock();
                let mut m = self.meta.lock();
                self.write_snapshot_list(&mut m, &entries, size)
            };
            if let Err(e) = r {
                let t = crate::format::errno_text(&e);
                log(&format!("ERROR failed to update snapshot table: {t}"));
                return Err(e.with_message(format!("Check failed: {t}")));
            }
            snap.corruptions_fixed += snap.corruptions;
            snap.corruptions = 0;
        }
        res.corruptions += snap.corruptions;
        res.corruptions_fixed += snap.corruptions_fixed;
        res.check_errors += snap.check_errors;
        if fix && res.corruptions == 0 && res.check_errors == 0 && snap.corruptions_fixed > 0 {
            self.clear_flag_on_repair(header::INCOMPAT_DIRTY)?;
            self.clear_flag_on_repair(header::INCOMPAT_CORRUPT)?;
        }
        Ok(res)
    }

    /// QEMU's qcow2_check_read_snapshot_table: read the table the header
    /// names (repairing it in memory when `fix`), count what is wrong in
    /// `res`, and make it the list the refcount walk uses.
    fn check_read_snapshot_table(
        &self,
        fix: bool,
        res: &mut CheckResult,
        log: &mut dyn FnMut(&str),
    ) -> Result<()> {
        const MAX_SNAPSHOTS: u32 = 65536;
        let prog = crate::events::program_name();
        let failed = |e: Error| {
            let t = crate::format::errno_text(&e);
            e.with_message(format!("Check failed: {t}"))
        };
        let mut ptr = [0u8; 12];
        if let Err(e) = self.file.read_exact_at(&mut ptr, 60) {
            res.check_errors += 1;
            log(&format!(
                "ERROR failed to read the snapshot table pointer from the image header: {}",
                crate::format::errno_text(&e)
            ));
            return Err(failed(e));
        }
        let mut nb = crate::format::bytes::be32(&ptr, 0);
        let off = crate::format::bytes::be64(&ptr, 4);
        let mut reduced = 0u32;
        self.snapshots.set(Vec::new(), 0);
        {
            let mut h = self.hdr.lock();
            h.nb_snapshots = 0;
            h.snapshots_offset = 0;
        }
        if nb > MAX_SNAPSHOTS && fix {
            log(&format!(
                "Discarding {} overhanging snapshots",
                nb - MAX_SNAPSHOTS
            ));
            reduced += nb - MAX_SNAPSHOTS;
            nb = MAX_SNAPSHOTS;
        }
        // QEMU's qcow2_validate_table for the table as a whole.
        let invalid = if nb > MAX_SNAPSHOTS {
            Some(("snapshot table too large", libc::EFBIG))
        } else if (i64::MAX as u64) - nb as u64 * 40 < off || off & (self.cs() - 1) != 0 {
            Some(("snapshot table offset invalid", libc::EINVAL))
        } else {
            None
        };
        if let Some((m, errno)) = invalid {
            res.check_errors += 1;
            log(&format!("{prog}: ERROR {m}"));
            if nb > MAX_SNAPSHOTS {
                log(&format!(
                    "You can force-remove all {} overhanging snapshots with qemu-img check -r all",
                    nb - MAX_SNAPSHOTS
                ));
            }
            return Err(failed(Error::from_errno(errno)));
        }
        let mut fix_log = |l: &str| log(l);
        let scanned = snapshot::scan(
            &self.file,
            off,
            nb,
            if fix { Some(&mut fix_log) } else { None },
        );
        let scan = match scanned {
            Ok(s) => s,
            Err(e) => {
                res.check_errors += 1;
                log(&format!(
                    "{prog}: ERROR failed to read the snapshot table: {}",
                    e.message()
                ));
                return Err(failed(e));
            }
        };
        reduced += scan.reduced;
        res.corruptions += (reduced + scan.extra_dropped) as u64;
        let kept = scan.snaps.len() as u32;
        if reduced > 0 {
            // The header must agree before the refcount walk; this leaks
            // the dropped entries' clusters, which the walk then repairs.
            if let Err(e) = self
                .file
                .write_at(&kept.to_be_bytes(), 60)
                .and_then(|_| self.file.flush())
            {
                res.check_errors += 1;
                log(&format!(
                    "ERROR failed to update the snapshot count in the image header: {}",
                    crate::format::errno_text(&e)
                ));
                return Err(failed(e));
            }
            res.corruptions_fixed += reduced as u64;
            res.corruptions -= reduced as u64;
        }
        if self.geo.v3 {
            for (i, s) in scan.snaps.iter().enumerate() {
                if s.extra_len < 16 {
                    res.corruptions += 1;
                    let what = if fix { "Repairing" } else { "ERROR" };
                    log(&format!("{what} snapshot table entry {i} is incomplete"));
                }
            }
        }
        {
            let mut h = self.hdr.lock();
            h.nb_snapshots = kept;
            h.snapshots_offset = off;
        }
        self.snapshots.set(scan.snaps, scan.size);
        Ok(())
    }

    /// The refcount pass of a check; with `repair`, fixes what the mode
    /// allows.
    fn check_refcounts(&self, repair: Repair, log: &mut dyn FnMut(&str)) -> Result<CheckResult> {
        if repair != Repair::None && !self.writable {
            return Err(Error::invalid("Cannot repair a read-only image"));
        }
        let _w = self.write_lock.lock();
        let cs = self.cs();
        let file_clusters = self.file.len()?.div_ceil(cs);
        let refcount_max = self.meta.lock().rc.max_refcount();
        let mut w = Walk {
            cluster_bits: self.geo.cluster_bits,
            file_clusters,
            refcount_max,
            fix_errors: repair == Repair::All,
            l2_changed: false,
            counts: HashMap::new(),
            res: CheckResult::default(),
            next_contiguous: 0,
            log,
        };
        self.walk(&mut w)?;
        if w.l2_changed {
            self.meta.lock().l2 = L2Cache::new(cs);
        }
        let counts = std::mem::take(&mut w.counts);
        let mut res = w.res;
        res.total_clusters = self.virtual_size_now().div_ceil(cs);
        let log = w.log;

        // As QEMU: compare once without fixing (reporting ERROR/Leaked), then,
        // when repairing, compare again from the same starting counts with
        // fixes enabled.
        let pre = res;
        let (mut highest, rebuild) =
            self.compare_refcounts(&counts, file_clusters, Repair::None, &mut res, log)?;
        if rebuild && repair == Repair::All {
            // A used cluster with refcount 0: build a new structure as QEMU
            // does, then count again and free the old one as leaked.
            log("Rebuilding refcount structure");
            let old = res;
            self.rebuild_refcount_structure(&counts, file_clusters)?;
            let file_clusters = self.file.len()?.div_ceil(cs);
            let mut w = Walk {
                cluster_bits: self.geo.cluster_bits,
                file_clusters,
                refcount_max,
                fix_errors: repair == Repair::All,
                l2_changed: false,
                counts: HashMap::new(),
                res: CheckResult::default(),
                next_contiguous: 0,
                log,
            };
            self.walk(&mut w)?;
            let counts = std::mem::take(&mut w.counts);
            let fresh = w.res;
            let log = w.log;
            let mut leak_pass = CheckResult::default();
            let (h, still) =
                self.compare_refcounts(&counts, file_clusters, Repair::Leaks, &mut leak_pass, log)?;
            if still {
                log("ERROR rebuilt refcount structure is still broken");
            }
            highest = h;
            res = pre;
            res.corruptions = fresh.corruptions;
            res.leaks = leak_pass.leaks;
            res.check_errors += fresh.check_errors;
            res.corruptions_fixed = old.corruptions.saturating_sub(fresh.corruptions);
            res.leaks_fixed = old.leaks;
            self.check_oflag_copied(repair, &mut res, log)?;
            res.image_end_offset = (highest + 1) * cs;
            if res.corruptions == 0 && res.check_errors == 0 {
                self.clear_flag_on_repair(header::INCOMPAT_DIRTY)?;
                self.clear_flag_on_repair(header::INCOMPAT_CORRUPT)?;
            }
            return Ok(res);
        } else if repair != Repair::None {
            if rebuild {
                log("ERROR need to rebuild refcount structures");
                return Err(Error::new(
                    crate::error::ErrorKind::Io,
                    "Check failed: Input/output error",
                ));
            }
            if res.leaks > 0 || res.corruptions > 0 {
                res = pre;
                highest = self
                    .compare_refcounts(&counts, file_clusters, repair, &mut res, log)?
                    .0;
            }
        }
        self.check_oflag_copied(repair, &mut res, log)?;
        res.image_end_offset = (highest + 1) * cs;
        if repair != Repair::None && res.corruptions == 0 && res.check_errors == 0 {
            self.clear_flag_on_repair(header::INCOMPAT_DIRTY)?;
            self.clear_flag_on_repair(header::INCOMPAT_CORRUPT)?;
        }
        Ok(res)
    }

    /// Compare stored refcounts with `counts`, fixing what `fix` allows.
    /// Returns the highest cluster with a stored or expected reference, and
    /// whether a used cluster has refcount 0 (QEMU's "rebuild").
    fn compare_refcounts(
        &self,
        counts: &HashMap<u64, u64>,
        file_clusters: u64,
        fix: Repair,
        res: &mut CheckResult,
        log: &mut dyn FnMut(&str),
    ) -> Result<(u64, bool)> {
        let max_counted = counts.keys().copied().max().map_or(0, |c| c + 1);
        let mut highest = 0u64;
        let mut rebuild = false;
        let mut m = self.meta.lock();
        for c in 0..file_clusters.max(max_counted) {
            let stored = m.rc.get(&self.file, c)?;
            let want = counts.get(&c).copied().unwrap_or(0);
            if stored > 0 || want > 0 {
                highest = c;
            }
            if stored == want {
                continue;
            }
            let fixable = if stored == 0 {
                rebuild = true;
                fix == Repair::All
            } else if stored > want {
                fix != Repair::None
            } else {
                fix == Repair::All
            };
            let what = if fixable {
                "Repairing"
            } else if stored < want {
                "ERROR"
            } else {
                "Leaked"
            };
            log(&format!(
                "{what} cluster {c} refcount={stored} reference={want}"
            ));
            if fixable && m.rc.set(&self.file, c, want).is_ok() {
                if stored < want {
                    res.corruptions_fixed += 1;
                } else {
                    res.leaks_fixed += 1;
                }
                continue;
            }
            if stored < want {
                res.corruptions += 1;
            } else {
                res.leaks += 1;
            }
        }
        Ok((highest, rebuild))
    }

    fn clear_flag_on_repair(&self, flag: u64) -> Result<()> {
        if self.hdr.lock().incompatible & flag != 0 {
            self.set_incompat_flag(flag, false)?;
        }
        Ok(())
    }

    /// Active L1/L2 entries must carry OFLAG_COPIED exactly when the
    /// cluster's refcount is 1.
    fn check_oflag_copied(
        &self,
        repair: Repair,
        res: &mut CheckResult,
        log: &mut dyn FnMut(&str),
    ) -> Result<()> {
        let cs = self.cs();
        // QEMU repairs the flags under either repair mode.
        let fix = repair != Repair::None;
        let mut m = self.meta.lock();
        let l1 = m.l1.clone();
        let mut changed = false;
        for (i, &e) in l1.iter().enumerate() {
            let l2off = e & L1E_OFFSET_MASK;
            if l2off == 0 || l2off & (cs - 1) != 0 {
                continue;
            }
            let rc = m.rc.get(&self.file, l2off >> self.geo.cluster_bits)?;
            if (rc == 1) != (e & OFLAG_COPIED != 0) {
                let what = if fix { "Repairing" } else { "ERROR" };
                log(&format!(
                    "{what} OFLAG_COPIED L2 cluster: l1_index={i} l1_entry={e:x} refcount={rc}"
                ));
                if fix {
                    let v = if rc == 1 {
                        e | OFLAG_COPIED
                    } else {
                        e & !OFLAG_COPIED
                    };
                    m.l1[i] = v;
                    self.file
                        .write_at(&v.to_be_bytes(), m.l1_offset + i as u64 * 8)?;
                    res.corruptions_fixed += 1;
                } else {
                    res.corruptions += 1;
                }
            }
            let mut raw = vec![0u8; cs as usize];
            self.file.read_at(&mut raw, l2off)?;
            let esz = if self.geo.extended { 16 } else { 8 };
            for (j, s) in l2::decode(&raw, self.geo.extended).iter().enumerate() {
                let off = s.entry & L2E_OFFSET_MASK;
                if self.geo.is_compressed(s)
                    || off == 0
                    || off & (cs - 1) != 0
                    || self.data_file.is_some()
                {
                    continue;
                }
                let rc = m.rc.get(&self.file, off >> self.geo.cluster_bits)?;
                if (rc == 1) != (s.entry & OFLAG_COPIED != 0) {
                    let what = if fix { "Repairing" } else { "ERROR" };
                    log(&format!(
                        "{what} OFLAG_COPIED data cluster: l2_entry={:x} refcount={rc}",
                        s.entry
                    ));
                    if fix && rc > 0 {
                        let v = if rc == 1 {
                            s.entry | OFLAG_COPIED
                        } else {
                            s.entry & !OFLAG_COPIED
                        };
                        self.file
                            .write_at(&v.to_be_bytes(), l2off + j as u64 * esz)?;
                        res.corruptions_fixed += 1;
                        changed = true;
                    } else {
                        res.corruptions += 1;
                    }
                }
            }
        }
        if changed {
            m.l2 = L2Cache::new(cs);
        }
        Ok(())
    }

    /// References per host cluster implied by the metadata (for rewriting
    /// refcount structures, e.g. `amend -o refcount_bits`).
    #[allow(dead_code)]
    pub(super) fn count_references(&self) -> Result<HashMap<u64, u64>> {
        let mut sink = |_: &str| {};
        let mut w = Walk {
            cluster_bits: self.geo.cluster_bits,
            file_clusters: self.file.len()?.div_ceil(self.cs()),
            refcount_max: u64::MAX,
            fix_errors: false,
            l2_changed: false,
            counts: HashMap::new(),
            res: CheckResult::default(),
            next_contiguous: 0,
            log: &mut sink,
        };
        self.walk(&mut w)?;
        Ok(w.counts)
    }

    /// Repair a dirty image (lazy refcounts) before anything trusts its
    /// refcounts, as QEMU does on open.
    pub(super) fn repair_refcounts(&self) -> Result<()> {
        // QEMU's open prints what this repair finds on stderr.
        let mut sink = |l: &str| crate::events::notice(l);
        let r = self.check_image(Repair::All, &mut sink)?;
        if r.corruptions > 0 {
            return Err(Error::corrupt(
                "Could not repair refcounts of a dirty image; run 'qemu-img check -r all'",
            ));
        }
        Ok(())
    }
}
