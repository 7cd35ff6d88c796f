//! Reference counts: the refcount table, refcount blocks (bounded cache,
//! written through), and the cluster allocator built on them.
//!
//! Ordering: a cluster's refcount is written before anything points at it,
//! so a crash can leak clusters (repairable) but never leave a used cluster
//! with refcount 0.

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::io::HostFile;

/// Low bits of a reftable entry are reserved.
const REFT_OFFSET_MASK: u64 = 0xffff_ffff_ffff_fe00;
/// Refcount blocks kept in memory; write-through, so eviction is free.
const BLOCK_CACHE: usize = 512;

pub struct Refcounts {
    cluster_bits: u32,
    order: u32,
    table_offset: u64,
    table_clusters: u32,
    table: Vec<u64>,
    blocks: HashMap<u64, Vec<u8>>,
    /// First cluster index that may be free.
    free_hint: u64,
    /// One past the highest cluster index handed out this session (clusters
    /// may be allocated before they are written, so the file length lags).
    end_hint: u64,
}

impl Refcounts {
    /// Load the refcount table (already bounded by header validation).
    pub fn load(
        file: &HostFile,
        cluster_bits: u32,
        order: u32,
        table_offset: u64,
        table_clusters: u32,
    ) -> Result<Self> {
        let bytes = (table_clusters as usize) << cluster_bits;
        let mut raw = vec![0u8; bytes];
        file.read_at(&mut raw, table_offset)?;
        let table = crate::format::bytes::be64_table(&raw);
        Ok(Refcounts {
            cluster_bits,
            order,
            table_offset,
            table_clusters,
            table,
            blocks: HashMap::new(),
            free_hint: 0,
            end_hint: 0,
        })
    }

    pub fn table_offset(&self) -> u64 {
        self.table_offset
    }
    pub fn table_clusters(&self) -> u32 {
        self.table_clusters
    }
    /// Offsets of all refcount blocks (for metadata overlap checks).
    pub fn block_offsets(&self) -> impl Iterator<Item = u64> + '_ {
        self.table
            .iter()
            .map(|e| e & REFT_OFFSET_MASK)
            .filter(|&o| o != 0)
    }
    pub fn max_refcount(&self) -> u64 {
        if self.order >= 6 {
            u64::MAX
        } else {
            (1u64 << (1 << self.order)) - 1
        }
    }
    fn cs(&self) -> u64 {
        1 << self.cluster_bits
    }
    /// Refcount entries per block, as a shift.
    fn epb_shift(&self) -> u32 {
        self.cluster_bits + 3 - self.order
    }
    fn block_index(&self, cluster: u64) -> u64 {
        cluster >> self.epb_shift()
    }

    fn block_offset(&self, rb: u64) -> Result<Option<u64>> {
        let Some(&e) = self.table.get(rb as usize) else {
            return Ok(None);
        };
        let off = e & REFT_OFFSET_MASK;
        if off == 0 {
            return Ok(None);
        }
        if off & (self.cs() - 1) != 0 {
            return Err(Error::corrupt(format!(
                "Refblock offset {off:#x} unaligned (reftable index: {rb:#x})"
            )));
        }
        Ok(Some(off))
    }

    fn load_block(&mut self, file: &HostFile, rb: u64) -> Result<Option<&mut Vec<u8>>> {
        let Some(off) = self.block_offset(rb)? else {
            return Ok(None);
        };
        if !self.blocks.contains_key(&rb) {
            if self.blocks.len() >= BLOCK_CACHE {
                if let Some(&k) = self.blocks.keys().next() {
                    self.blocks.remove(&k);
                }
            }
            let mut b = vec![0u8; self.cs() as usize];
            file.event("refblock_load");
            file.read_at(&mut b, off)?;
            self.blocks.insert(rb, b);
        }
        Ok(self.blocks.get_mut(&rb))
    }

    fn entry_get(order: u32, b: &[u8], i: usize) -> u64 {
        match order {
            0..=2 => {
                let bits = 1usize << order;
                let per = 8 / bits;
                ((b[i / per] >> ((i % per) * bits)) as u64) & ((1 << bits) - 1)
            }
            3 => b[i] as u64,
            4 => u16::from_be_bytes([b[2 * i], b[2 * i + 1]]) as u64,
            5 => u32::from_be_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]]) as u64,
            _ => {
                let mut a = [0u8; 8];
                a.copy_from_slice(&b[8 * i..8 * i + 8]);
                u64::from_be_bytes(a)
            }
        }
    }

    fn entry_set(order: u32, b: &mut [u8], i: usize, v: u64) {
        match order {
            0..=2 => {
                let bits = 1usize << order;
                let per = 8 / bits;
                let shift = (i % per) * bits;
                let mask = (((1u16 << bits) - 1) as u8) << shift;
                b[i / per] = (b[i / per] & !mask) | (((v as u8) << shift) & mask);
            }
            3 => b[i] = v as u8,
            4 => b[2 * i..2 * i + 2].copy_from_slice(&(v as u16).to_be_bytes()),
            5 => b[4 * i..4 * i + 4].copy_from_slice(&(v as u32).to_be_bytes()),
            _ => b[8 * i..8 * i + 8].copy_from_slice(&v.to_be_bytes()),
        }
    }

    /// Byte range within a block holding entries [i, i+n).
    fn byte_span(&self, i: usize, n: usize) -> (usize, usize) {
        let bits = 1usize << self.order;
        let start = i * bits / 8;
        let end = ((i + n) * bits).div_ceil(8);
        (start, end)
    }

    pub fn get(&mut self, file: &HostFile, cluster: u64) -> Result<u64> {
        let rb = self.block_index(cluster);
        let order = self.order;
        let i = (cluster & ((1 << self.epb_shift()) - 1)) as usize;
        Ok(match self.load_block(file, rb)? {
            Some(b) => Self::entry_get(order, b, i),
            None => 0,
        })
    }

    /// Set `n` consecutive refcounts to values from `f(old)`; the clusters'
    /// refcount blocks must exist. Writes through.
    fn update_range(
        &mut self,
        file: &HostFile,
        start: u64,
        n: u64,
        f: &dyn Fn(u64) -> Result<u64>,
    ) -> Result<()> {
        let mut c = start;
        let end = start + n;
        while c < end {
            let rb = self.block_index(c);
            let shift = self.epb_shift();
            let first = (c & ((1 << shift) - 1)) as usize;
            let cnt = (end - c).min((1u64 << shift) - first as u64) as usize;
            let off = self
                .block_offset(rb)?
                .ok_or_else(|| Error::corrupt("Missing refcount block"))?;
            let order = self.order;
            let (bs, be) = self.byte_span(first, cnt);
            let block = self
                .load_block(file, rb)?
                .ok_or_else(|| Error::corrupt("Missing refcount block"))?;
            for i in first..first + cnt {
                let v = f(Self::entry_get(order, block, i))?;
                Self::entry_set(order, block, i, v);
            }
            let bytes = block[bs..be].to_vec();
            file.event("refblock_update_part");
            file.write_at(&bytes, off + bs as u64)?;
            c += cnt as u64;
        }
        Ok(())
    }

    /// Drop one reference from `n` clusters (QEMU's qcow2_free_clusters).
    pub fn free(&mut self, file: &HostFile, start: u64, n: u64) -> Result<()> {
        file.event("cluster_free");
        self.add(file, start, n, -1)
    }

    /// [`RcTable::free`] where QEMU cannot fail: a failure is reported on
    /// stderr and the clusters leak.
    pub fn free_or_leak(&mut self, file: &HostFile, start: u64, n: u64) {
        if let Err(e) = self.free(file, start, n) {
            crate::events::notice(&format!(
                "qcow2_free_clusters failed: {}",
                crate::format::errno_text(&e)
            ));
        }
    }

    /// Add `delta` to the refcounts of `n` clusters from `start`.
    pub fn add(&mut self, file: &HostFile, start: u64, n: u64, delta: i64) -> Result<()> {
        let max = self.max_refcount();
        if delta > 0 && n > 0 {
            // A reference to a cluster no refcount block covers (a corrupt
            // offset): QEMU fails with EFBIG when the table cannot reach it,
            // else with the EAGAIN of its block allocation.
            for rb in self.block_index(start)..=self.block_index(start + n - 1) {
                if self.block_offset(rb)?.is_none() {
                    let limit = super::header::MAX_REFTABLE_BYTES / 8;
                    return Err(Error::from_errno(if rb >= limit {
                        libc::EFBIG
                    } else {
                        libc::EAGAIN
                    }));
                }
            }
        }
        self.update_range(file, start, n, &|old| {
            let new = if delta >= 0 {
                old.checked_add(delta as u64)
            } else {
                old.checked_sub(delta.unsigned_abs())
            };
            match new {
                Some(v) if v <= max => Ok(v),
                _ => Err(Error::corrupt("Reference count overflow or underflow")),
            }
        })?;
        if delta < 0 && start < self.free_hint {
            // A freed cluster becomes the first candidate again.
            let mut c = start;
            while c < start + n && self.get(file, c)? != 0 {
                c += 1;
            }
            if c < start + n {
                self.free_hint = c;
            }
        }
        Ok(())
    }

    /// Set one cluster's refcount, creating its refcount block if needed
    /// (repair).
    pub fn set(&mut self, file: &HostFile, cluster: u64, value: u64) -> Result<()> {
        if value > self.max_refcount() {
            return Err(Error::corrupt("Reference count overflow"));
        }
        let rb = self.block_index(cluster);
        if self.block_offset(rb)?.is_none() {
            if value == 0 {
                return Ok(());
            }
            self.create_block(file, rb)?;
        }
        self.update_range(file, cluster, 1, &|_| Ok(value))?;
        if value == 0 && cluster < self.free_hint {
            self.free_hint = cluster;
        }
        Ok(())
    }

    /// Raw reftable entries (for check).
    pub fn table_entries(&self) -> &[u64] {
        &self.table
    }

    /// Allocate `n` contiguous clusters (refcount 1); returns the host offset.
    pub fn alloc(&mut self, file: &HostFile, n: u64) -> Result<u64> {
        if n == 0 {
            return Err(Error::invalid("Cannot allocate zero clusters"));
        }
        file.event("cluster_alloc");
        loop {
            let (c, first_free) = self.find_free(file, n)?;
            let first_rb = self.block_index(c);
            let last_rb = self.block_index(c + n - 1);
            let mut missing = Vec::new();
            for rb in first_rb..=last_rb {
                if self.block_offset(rb)?.is_none() {
                    missing.push(rb);
                }
            }
            if let Some(&top) = missing.last() {
                if top as usize >= self.table.len() {
                    if !(missing.len() == 1 && self.grow_for(file, c, n, top)?) {
                        self.grow_table(file, top + 1)?;
                    }
                    continue;
                }
                // QEMU takes the run first and puts each missing block at
                // the first free cluster after it.
                // (The search then finds the same run, now covered.)
                if let Some(p) = self.blocks_after(file, c + n, &missing)? {
                    self.create_blocks_at(file, &missing, p)?;
                    continue;
                }
                // Otherwise at the front of the run rather than each at the
                // start of its own range: a run longer than one block's
                // range could never be found free otherwise.
                self.create_blocks_at(file, &missing, c)?;
                continue;
            }
            self.update_range(file, c, n, &|_| Ok(1))?;
            // Everything before the first free cluster is in use.
            self.free_hint = if first_free == c { c + n } else { first_free };
            self.end_hint = self.end_hint.max(c + n);
            return Ok(c << self.cluster_bits);
        }
    }

    /// The table is full and the run `c..c+n` needs block `rb`: QEMU
    /// writes that block at the first free cluster after the run (where it
    /// counts itself), then new structures with room to grow from the first
    /// range that neither the run's first cluster in `rb` nor the block
    /// falls in. Returns false, having done nothing, when the block would
    /// not count itself (left to [`Self::grow_table`]).
    fn grow_for(&mut self, file: &HostFile, c: u64, n: u64, rb: u64) -> Result<bool> {
        let shift = self.epb_shift();
        let rpb = 1u64 << shift;
        let Some(p) = self.blocks_after(file, c + n, &[rb])? else {
            return Ok(false);
        };
        if self.block_index(p) != rb {
            return Ok(false);
        }
        file.event("reftable_grow");
        let mut block = vec![0u8; self.cs() as usize];
        Self::entry_set(self.order, &mut block, (p - (rb << shift)) as usize, 1);
        file.write_at(&block, p << self.cluster_bits)?;
        let needed = c.max(rb << shift);
        let blocks_used = (needed + 1).max(p + 1).div_ceil(rpb);
        self.area(
            file,
            blocks_used * rpb,
            0,
            true,
            Some((rb, p << self.cluster_bits)),
        )?;
        self.blocks.insert(rb, block);
        self.end_hint = self.end_hint.max(p + 1);
        Ok(true)
    }

    /// Where the missing blocks `rbs` can go after a run ending at cluster
    /// `from`: the first free clusters there, if each of them is counted by
    /// an existing block or by one of `rbs`.
    fn blocks_after(&mut self, file: &HostFile, from: u64, rbs: &[u64]) -> Result<Option<u64>> {
        let k = rbs.len() as u64;
        let saved = self.free_hint;
        self.free_hint = from;
        let found = self.find_free(file, k);
        self.free_hint = saved;
        let (p, _) = found?;
        for q in p..p + k {
            let rb = self.block_index(q);
            if !rbs.contains(&rb) && self.block_offset(rb)?.is_none() {
                return Ok(None);
            }
        }
        Ok(Some(p))
    }

    /// Find `n` contiguous free clusters at or after the hint. Returns the
    /// run's start and the first free cluster seen (the next hint).
    fn find_free(&mut self, file: &HostFile, n: u64) -> Result<(u64, u64)> {
        let limit = 1u64 << (56 - self.cluster_bits);
        let shift = self.epb_shift();
        let order = self.order;
        let mut start = self.free_hint.max(1);
        let mut first_free = None;
        let mut c = start;
        while c - start < n {
            if c >= limit {
                return Err(Error::new(
                    crate::error::ErrorKind::NoSpace,
                    "Image file is full",
                ));
            }
            let rb = self.block_index(c);
            let block_end = (rb + 1) << shift;
            let Some(block) = self.load_block(file, rb)? else {
                // A missing block's whole range is free.
                first_free.get_or_insert(c);
                c = block_end;
                continue;
            };
            // Scan this block's entries directly (no per-cluster lookups).
            let base = rb << shift;
            while c < block_end && c - start < n {
                if Self::entry_get(order, block, (c - base) as usize) == 0 {
                    first_free.get_or_insert(c);
                } else {
                    start = c + 1;
                }
                c += 1;
            }
        }
        Ok((start, first_free.unwrap_or(start)))
    }

    /// Create refcount block `rb`, placed at the first cluster of the range
    /// it covers (all of which are free, having no block).
    fn create_block(&mut self, file: &HostFile, rb: u64) -> Result<()> {
        if rb as usize >= self.table.len() {
            self.grow_table(file, rb + 1)?;
            if self.block_offset(rb)?.is_some() {
                return Ok(());
            }
        }
        let cluster = rb << self.epb_shift();
        if cluster == 0 {
            // Block 0 covers the header; an image without it is broken and
            // creating it here would overwrite the header.
            return Err(Error::corrupt(
                "Refcount block for the image header is missing",
            ));
        }
        let off = cluster << self.cluster_bits;
        let mut block = vec![0u8; self.cs() as usize];
        Self::entry_set(self.order, &mut block, 0, 1);
        file.event("refblock_alloc");
        file.write_at(&block, off)?;
        self.set_table_entry(file, rb, off)?;
        self.blocks.insert(rb, block);
        self.end_hint = self.end_hint.max(cluster + 1);
        Ok(())
    }

    /// Create the missing refcount blocks `rbs` in clusters `at..at+len`,
    /// all free and each covered by an existing block or one of `rbs`. New
    /// blocks are written with their own counts first, then hooked into the
    /// table, then existing blocks count them: a crash in between only leaks.
    fn create_blocks_at(&mut self, file: &HostFile, rbs: &[u64], at: u64) -> Result<()> {
        let shift = self.epb_shift();
        let mut fresh: Vec<(u64, Vec<u8>)> = rbs
            .iter()
            .map(|&rb| (rb, vec![0u8; self.cs() as usize]))
            .collect();
        let mut in_old = Vec::new();
        for p in at..at + rbs.len() as u64 {
            let owner = self.block_index(p);
            match fresh.iter_mut().find(|(rb, _)| *rb == owner) {
                Some((_, block)) => {
                    Self::entry_set(self.order, block, (p - (owner << shift)) as usize, 1)
                }
                None => in_old.push(p),
            }
        }
        for (i, (_, block)) in fresh.iter().enumerate() {
            file.write_at(block, (at + i as u64) << self.cluster_bits)?;
        }
        for (i, (rb, block)) in fresh.into_iter().enumerate() {
            self.set_table_entry(file, rb, (at + i as u64) << self.cluster_bits)?;
            self.blocks.insert(rb, block);
        }
        for p in in_old {
            self.update_range(file, p, 1, &|_| Ok(1))?;
        }
        self.end_hint = self.end_hint.max(at + rbs.len() as u64);
        Ok(())
    }

    fn set_table_entry(&mut self, file: &HostFile, rb: u64, off: u64) -> Result<()> {
        self.table[rb as usize] = off;
        file.write_at(&off.to_be_bytes(), self.table_offset + rb * 8)
    }

    /// Refcount structures for preallocating a large area, laid out as
    /// QEMU's qcow2_refcount_area lays them: exactly as many blocks as
    /// clusters `0..start + additional` and the structures themselves need,
    /// the missing blocks and then a new table placed from cluster `start`
    /// on (free, at the end of the image), the header switched to the new
    /// table and the old table freed. Returns the first cluster after the
    /// new structures.
    pub fn area_at(&mut self, file: &HostFile, start: u64, additional: u64) -> Result<u64> {
        self.area(file, start, additional, false, None)
    }

    /// [`Self::area_at`], optionally with room to grow (a table half as
    /// large again, QEMU's generous sizing) and with block `preset.0`
    /// already written at offset `preset.1` to enter into the new table.
    fn area(
        &mut self,
        file: &HostFile,
        start: u64,
        additional: u64,
        generous: bool,
        preset: Option<(u64, u64)>,
    ) -> Result<u64> {
        let cs = self.cs();
        let cb = self.cluster_bits;
        let rpb = 1u64 << self.epb_shift();
        let per_table_cluster = cs / 8;
        let clusters = start
            .checked_add(additional)
            .ok_or_else(|| Error::from_errno(libc::EFBIG))?;
        // Fixed point: the blocks and table count themselves too.
        let mut clusters = clusters;
        let (mut blocks, mut table, mut last) = (0u64, 0u64, None);
        let mut grow = generous;
        loop {
            blocks = (clusters + table + blocks).div_ceil(rpb);
            table = blocks.div_ceil(per_table_cluster);
            let n = clusters + blocks + table;
            if last == Some(n) {
                if !grow {
                    break;
                }
                // Count the growth room too, then settle again.
                clusters += table.div_ceil(2);
                grow = false;
                last = None;
                continue;
            }
            last = Some(n);
        }
        if generous {
            table = (blocks + blocks.div_ceil(2)).div_ceil(per_table_cluster);
        }
        if table.saturating_mul(cs) > super::header::MAX_REFTABLE_BYTES {
            return Err(Error::from_errno(libc::EFBIG));
        }
        let mut new_table = self.table.clone();
        new_table.resize((table * per_table_cluster) as usize, 0);
        let first_rb = start / rpb;
        if let Some((rb, off)) = preset {
            if rb >= first_rb || rb as usize >= new_table.len() {
                return Err(Error::corrupt("Refcount block outside the new table"));
            }
            new_table[rb as usize] = off;
        }
        let missing: Vec<u64> = (first_rb..blocks)
            .filter(|&rb| new_table[rb as usize] == 0)
            .collect();
        let table_cluster = start + missing.len() as u64;
        let end = table_cluster + table;
        let covered = |rb: u64| (start.max(rb * rpb), end.min((rb + 1) * rpb));
        // New blocks carry their own counts and those of the new table.
        let mut fresh = Vec::with_capacity(missing.len());
        for (k, &rb) in missing.iter().enumerate() {
            let off = (start + k as u64) << cb;
            let mut block = vec![0u8; cs as usize];
            let (a, b) = covered(rb);
            for c in a..b {
                Self::entry_set(self.order, &mut block, (c - rb * rpb) as usize, 1);
            }
            file.write_at(&block, off)?;
            new_table[rb as usize] = off;
            fresh.push((rb, block));
        }
        // Area clusters counted by existing blocks (a crash before the
        // switch only leaks them).
        for rb in first_rb..blocks {
            let (a, b) = covered(rb);
            if !missing.contains(&rb) && a < b {
                self.update_range(file, a, b - a, &|_| Ok(1))?;
            }
        }
        let mut raw = Vec::with_capacity(new_table.len() * 8);
        for e in &new_table {
            raw.extend_from_slice(&e.to_be_bytes());
        }
        file.write_at(&raw, table_cluster << cb)?;
        file.flush()?;
        let mut hdr = [0u8; 12];
        hdr[..8].copy_from_slice(&(table_cluster << cb).to_be_bytes());
        hdr[8..].copy_from_slice(&(table as u32).to_be_bytes());
        file.write_at(&hdr, 48)?;
        file.flush()?;
        let (old_off, old_clusters) = (self.table_offset, self.table_clusters as u64);
        self.table = new_table;
        self.table_offset = table_cluster << cb;
        self.table_clusters = table as u32;
        for (rb, block) in fresh {
            self.blocks.insert(rb, block);
        }
        self.end_hint = self.end_hint.max(end);
        self.free(file, old_off >> cb, old_clusters)?;
        Ok(end)
    }

    /// Take the free clusters `start..start + n` (refcount 1), whose blocks
    /// exist ([`Self::area_at`] made them).
    pub fn claim(&mut self, file: &HostFile, start: u64, n: u64) -> Result<()> {
        for c in start..start + n {
            if self.get(file, c)? != 0 {
                return Err(Error::corrupt("Preallocated cluster already in use"));
            }
        }
        self.update_range(file, start, n, &|_| Ok(1))?;
        self.end_hint = self.end_hint.max(start + n);
        Ok(())
    }

    /// Move the refcount table to a bigger one at the end of the image,
    /// together with new refcount blocks covering the new area.
    fn grow_table(&mut self, file: &HostFile, need_entries: u64) -> Result<()> {
        file.event("reftable_grow");
        let cs = self.cs();
        let old_entries = self.table.len() as u64;
        let want = need_entries
            .max(old_entries + old_entries / 2)
            .max(old_entries + 1);
        let file_clusters = file.len()?.div_ceil(cs);
        let s = file_clusters.max(self.end_hint).max(1);
        let shift = self.epb_shift();
        let mut missing: Vec<u64> = Vec::new();
        let mut entries = want;
        let mut t;
        loop {
            t = (entries * 8).div_ceil(cs);
            let b = missing.len() as u64;
            let area_end = s + b + t;
            let mut m = Vec::new();
            for rb in (s >> shift)..=((area_end - 1) >> shift) {
                if self.block_offset(rb)?.is_none() {
                    m.push(rb);
                }
            }
            let max_rb = m.last().copied().unwrap_or(0);
            if max_rb + 1 > entries {
                entries = max_rb + 1;
                missing = m;
                continue;
            }
            if m.len() as u64 == b {
                break;
            }
            missing = m;
        }
        let b = missing.len() as u64;
        if (t << self.cluster_bits) > super::header::MAX_REFTABLE_BYTES {
            return Err(Error::new(
                crate::error::ErrorKind::NoSpace,
                "Reference count table too large",
            ));
        }
        let table_cluster = s + b;
        let area = s..s + b + t;
        // New blocks: each covers its own range; mark area clusters in it.
        let mut new_table = self.table.clone();
        new_table.resize(((t * cs) / 8) as usize, 0);
        for (i, &rb) in missing.iter().enumerate() {
            let mut block = vec![0u8; cs as usize];
            let range = (rb << shift)..((rb + 1) << shift);
            for c in area.clone().filter(|c| range.contains(c)) {
                Self::entry_set(self.order, &mut block, (c - range.start) as usize, 1);
            }
            let off = (s + i as u64) << self.cluster_bits;
            file.write_at(&block, off)?;
            new_table[rb as usize] = off;
            self.blocks.insert(rb, block);
        }
        // Area clusters that fall in existing blocks.
        let old_table = std::mem::replace(&mut self.table, new_table.clone());
        for c in area.clone() {
            if !missing.contains(&(c >> shift)) {
                self.update_range(file, c, 1, &|_| Ok(1))?;
            }
        }
        let mut raw = Vec::with_capacity(new_table.len() * 8);
        for e in &new_table {
            raw.extend_from_slice(&e.to_be_bytes());
        }
        file.write_at(&raw, table_cluster << self.cluster_bits)?;
        file.flush()?;
        // Switch the header to the new table in one sector write.
        let mut hdr = [0u8; 12];
        hdr[..8].copy_from_slice(&(table_cluster << self.cluster_bits).to_be_bytes());
        hdr[8..].copy_from_slice(&(t as u32).to_be_bytes());
        file.write_at(&hdr, 48)?;
        let old_off = self.table_offset;
        let old_clusters = self.table_clusters as u64;
        self.table_offset = table_cluster << self.cluster_bits;
        self.table_clusters = t as u32;
        self.end_hint = self.end_hint.max(area.end);
        drop(old_table);
        self.add(file, old_off >> self.cluster_bits, old_clusters, -1)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_widths_round_trip() {
        for order in 0..=6u32 {
            let mut b = vec![0u8; 512];
            let max = if order == 6 {
                u64::MAX
            } else {
                (1u64 << (1 << order)) - 1
            };
            for i in 0..64 {
                Refcounts::entry_set(order, &mut b, i, (i as u64) & max);
            }
            for i in 0..64 {
                assert_eq!(
                    Refcounts::entry_get(order, &b, i),
                    (i as u64) & max,
                    "order {order} i {i}"
                );
            }
        }
        // 1-bit entries are LSB-first within a byte (qcow2.txt).
        let mut b = vec![0u8; 4];
        Refcounts::entry_set(0, &mut b, 1, 1);
        assert_eq!(b[0], 0b10);
    }
}
