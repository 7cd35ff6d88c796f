//! Rebuilding the refcount structure from scratch (`check -r all` when a
//! used cluster has refcount 0). The new refcount blocks and table go to
//! the same places QEMU's rebuild puts them (first free clusters, blocks
//! before the table), so the header reads back as QEMU's would; the old
//! structure is left leaked, for the caller's leak pass to free.

use std::collections::HashMap;

use super::refcount::Refcounts;
use super::Qcow2;
use crate::error::{Error, Result};

/// The whole image's refcounts as one array, with QEMU's allocator on it.
struct Imrt {
    counts: Vec<u64>,
}

impl Imrt {
    fn get(&self, c: u64) -> u64 {
        self.counts.get(c as usize).copied().unwrap_or(0)
    }

    /// `n` contiguous free clusters from `*first_free`, growing the image
    /// at its end when there is no such gap (QEMU's alloc_clusters_imrt).
    fn alloc(&mut self, n: u64, first_free: &mut u64) -> Result<u64> {
        let mut c = *first_free;
        let mut run = 0u64;
        let mut first_gap = true;
        while c < self.counts.len() as u64 && run < n {
            if self.get(c) == 0 {
                run += 1;
                if first_gap {
                    *first_free = c;
                    first_gap = false;
                }
            } else {
                run = 0;
            }
            c += 1;
        }
        if run < n {
            let len = usize::try_from(c + n - run).map_err(|_| Error::from_errno(libc::ENOMEM))?;
            self.counts.resize(len, 0);
        }
        let start = c - run;
        for i in start..start + n {
            self.counts[i as usize] = 1;
        }
        Ok(start)
    }
}

impl Qcow2 {
    /// Write new refcount blocks and a new table for `counts` (references
    /// per cluster) and point the header at them.
    pub(super) fn rebuild_refcount_structure(
        &self,
        counts: &HashMap<u64, u64>,
        file_clusters: u64,
    ) -> Result<()> {
        let cb = self.geo.cluster_bits;
        let cs = self.cs();
        let order = self.hdr.lock().refcount_order;
        let rb_bits = cb + 3 - order;
        let n = counts
            .keys()
            .map(|c| c + 1)
            .max()
            .unwrap_or(0)
            .max(file_clusters);
        let mut imrt = Imrt {
            counts: vec![0; usize::try_from(n).map_err(|_| Error::from_errno(libc::ENOMEM))?],
        };
        for (&c, &v) in counts {
            imrt.counts[c as usize] = v;
        }
        let mut table: Vec<u64> = Vec::new();
        let entries_per_cluster = cs / 8;
        // One pass of QEMU's rebuild_refcounts_write_refblocks (allocation
        // only; blocks are written once everything is placed). Returns
        // whether the table had to grow.
        let place_blocks =
            |imrt: &mut Imrt, table: &mut Vec<u64>, first: u64, mut end: u64| -> Result<bool> {
                let mut grown = false;
                let mut first_free = 0u64;
                let mut c = first;
                while c < end {
                    if imrt.get(c) == 0 {
                        c += 1;
                        continue;
                    }
                    let rb = c >> rb_bits;
                    let rb_start = rb << rb_bits;
                    if table.get(rb as usize).copied().unwrap_or(0) == 0 {
                        first_free = first_free.max(rb_start);
                        let at = imrt.alloc(1, &mut first_free)?;
                        end = end.max(at + 1);
                        if table.len() as u64 <= rb {
                            let want = (rb + 1).div_ceil(entries_per_cluster) * entries_per_cluster;
                            table.resize(want as usize, 0);
                            grown = true;
                        }
                        table[rb as usize] = at << cb;
                    }
                    c = rb_start + (1u64 << rb_bits);
                }
                Ok(grown)
            };
        place_blocks(&mut imrt, &mut table, 0, n)?;
        let (table_off, table_clusters) = loop {
            let clusters = (table.len() as u64 * 8).div_ceil(cs);
            let mut first_free = 0u64;
            let start = imrt.alloc(clusters, &mut first_free)?;
            if !place_blocks(&mut imrt, &mut table, start, start + clusters)? {
                break (start << cb, clusters);
            }
        };
        if table_clusters << cb > super::header::MAX_REFTABLE_BYTES {
            return Err(Error::from_errno(libc::EFBIG));
        }
        for (rb, &off) in table.iter().enumerate() {
            if off == 0 {
                continue;
            }
            let mut block = vec![0u8; cs as usize];
            let first = (rb as u64) << rb_bits;
            for i in 0..(1u64 << rb_bits) {
                let v = imrt.get(first + i);
                if v != 0 {
                    super::amend::put_refcount(&mut block, order, i as usize, v);
                }
            }
            self.file.write_at(&block, off)?;
        }
        let mut raw = Vec::with_capacity(table.len() * 8);
        for e in &table {
            raw.extend_from_slice(&e.to_be_bytes());
        }
        raw.resize((table_clusters << cb) as usize, 0);
        self.file.write_at(&raw, table_off)?;
        self.file.flush()?;
        let mut fields = table_off.to_be_bytes().to_vec();
        fields.extend_from_slice(&(table_clusters as u32).to_be_bytes());
        self.file.write_at(&fields, 48)?;
        self.file.flush()?;
        {
            let mut h = self.hdr.lock();
            h.refcount_table_offset = table_off;
            h.refcount_table_clusters = table_clusters as u32;
        }
        let mut m = self.meta.lock();
        m.rc = Refcounts::load(&self.file, cb, order, table_off, table_clusters as u32)?;
        Ok(())
    }
}
