//! Refcount accounting from the metadata: which clusters the header, L1/L2
//! tables, data, snapshots and refcount structures reference. Used to
//! repair a dirty image (lazy refcounts) when it is opened for writing.

use std::collections::HashMap;

use super::l2::{self, Slot, L1E_OFFSET_MASK};
use super::Qcow2;
use crate::error::{Error, Result};

/// Cap on distinct clusters we count in memory (2^26 clusters is 4 TiB of
/// 64 KiB clusters); beyond it we refuse rather than allocate unboundedly.
const MAX_COUNTED: usize = 1 << 26;

impl Qcow2 {
    /// Reference counts implied by the image's metadata.
    pub(super) fn count_references(&self) -> Result<HashMap<u64, u64>> {
        let cs = self.cs();
        let cb = self.geo.cluster_bits;
        let mut counts: HashMap<u64, u64> = HashMap::new();
        let mut add = |counts: &mut HashMap<u64, u64>, off: u64, len: u64| -> Result<()> {
            if len == 0 {
                return Ok(());
            }
            for c in (off >> cb)..=((off + len - 1) >> cb) {
                *counts.entry(c).or_insert(0) += 1;
            }
            if counts.len() > MAX_COUNTED {
                return Err(Error::invalid("Image too large to check in memory"));
            }
            Ok(())
        };
        let h = self.hdr.lock().clone();
        add(&mut counts, 0, cs)?;
        add(
            &mut counts,
            h.refcount_table_offset,
            h.refcount_table_clusters as u64 * cs,
        )?;
        let (l1, l1_off) = {
            let m = self.meta.lock();
            (m.l1.clone(), m.l1_offset)
        };
        add(&mut counts, l1_off, l1.len() as u64 * 8)?;
        let mut tables = vec![l1];
        if h.nb_snapshots > 0 {
            let mut size = 0u64;
            for s in &self.snapshots {
                size += s.entry_bytes;
                add(&mut counts, s.l1_table_offset, s.l1_size as u64 * 8)?;
                if s.l1_size as u64 * 8 > super::header::MAX_L1_BYTES {
                    return Err(Error::corrupt("Snapshot L1 table too large"));
                }
                let mut raw = vec![0u8; s.l1_size as usize * 8];
                self.file.read_at(&mut raw, s.l1_table_offset)?;
                tables.push(raw.chunks_exact(8).map(super::be64).collect());
            }
            add(&mut counts, h.snapshots_offset, size)?;
        }
        for l1 in &tables {
            for &e in l1 {
                let l2off = e & L1E_OFFSET_MASK;
                if l2off == 0 {
                    continue;
                }
                add(&mut counts, l2off, cs)?;
                let mut raw = vec![0u8; cs as usize];
                self.file.read_at(&mut raw, l2off)?;
                for s in l2::decode(&raw, self.geo.extended) {
                    self.count_slot(&s, &mut counts, &mut add)?;
                }
            }
        }
        let blocks: Vec<u64> = self.meta.lock().rc.block_offsets().collect();
        for b in blocks {
            add(&mut counts, b, cs)?;
        }
        Ok(counts)
    }

    fn count_slot(
        &self,
        s: &Slot,
        counts: &mut HashMap<u64, u64>,
        add: &mut dyn FnMut(&mut HashMap<u64, u64>, u64, u64) -> Result<()>,
    ) -> Result<()> {
        if self.geo.is_compressed(s) {
            let (first, n) = self.geo.compressed_clusters(s);
            return add(
                counts,
                first << self.geo.cluster_bits,
                n << self.geo.cluster_bits,
            );
        }
        if self.data_file.is_some() {
            return Ok(());
        }
        let off = s.entry & l2::L2E_OFFSET_MASK;
        if off != 0 {
            add(counts, off, 1)?;
        }
        Ok(())
    }

    /// Raise refcounts that are lower than the metadata implies (the
    /// dangerous direction: such clusters could be handed out twice).
    /// Leaked clusters are left for `check -r`.
    pub(super) fn repair_refcounts(&self) -> Result<()> {
        let counts = self.count_references()?;
        let mut m = self.meta.lock();
        let mut keys: Vec<_> = counts.into_iter().collect();
        keys.sort_unstable();
        for (c, want) in keys {
            let have = m.rc.get(&self.file, c)?;
            if have < want {
                let delta = i64::try_from(want - have)
                    .map_err(|_| Error::corrupt("Reference count overflow"))?;
                m.rc.add(&self.file, c, 1, delta).map_err(|e| {
                    e.context(
                        "Could not repair refcounts of a dirty image; run 'qemu-img check -r all'",
                    )
                })?;
            }
        }
        Ok(())
    }
}
