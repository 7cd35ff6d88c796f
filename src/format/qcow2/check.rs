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

/// Clusters counted so far, with how many references each has.
struct Counter {
    cluster_bits: u32,
    counts: HashMap<u64, u64>,
}

impl Counter {
    fn add(&mut self, off: u64, len: u64) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        for c in (off >> self.cluster_bits)..=((off + len - 1) >> self.cluster_bits) {
            *self.counts.entry(c).or_insert(0) += 1;
        }
        if self.counts.len() > MAX_COUNTED {
            return Err(Error::invalid("Image too large to check in memory"));
        }
        Ok(())
    }
}

impl Qcow2 {
    /// Reference counts implied by the image's metadata.
    pub(super) fn count_references(&self) -> Result<HashMap<u64, u64>> {
        let cs = self.cs();
        let mut n = Counter {
            cluster_bits: self.geo.cluster_bits,
            counts: HashMap::new(),
        };
        let h = self.hdr.lock().clone();
        n.add(0, cs)?;
        n.add(
            h.refcount_table_offset,
            h.refcount_table_clusters as u64 * cs,
        )?;
        let (l1, l1_off) = {
            let m = self.meta.lock();
            (m.l1.clone(), m.l1_offset)
        };
        n.add(l1_off, l1.len() as u64 * 8)?;
        let mut tables = vec![l1];
        if h.nb_snapshots > 0 {
            let mut size = 0u64;
            for s in &self.snapshots {
                size += s.entry_bytes;
                if s.l1_size as u64 * 8 > super::header::MAX_L1_BYTES {
                    return Err(Error::corrupt("Snapshot L1 table too large"));
                }
                n.add(s.l1_table_offset, s.l1_size as u64 * 8)?;
                let mut raw = vec![0u8; s.l1_size as usize * 8];
                self.file.read_at(&mut raw, s.l1_table_offset)?;
                tables.push(raw.chunks_exact(8).map(super::be64).collect());
            }
            n.add(h.snapshots_offset, size)?;
        }
        for l1 in &tables {
            for &e in l1 {
                let l2off = e & L1E_OFFSET_MASK;
                if l2off == 0 {
                    continue;
                }
                n.add(l2off, cs)?;
                let mut raw = vec![0u8; cs as usize];
                self.file.read_at(&mut raw, l2off)?;
                for s in l2::decode(&raw, self.geo.extended) {
                    self.count_slot(&s, &mut n)?;
                }
            }
        }
        let blocks: Vec<u64> = self.meta.lock().rc.block_offsets().collect();
        for b in blocks {
            n.add(b, cs)?;
        }
        Ok(n.counts)
    }

    fn count_slot(&self, s: &Slot, n: &mut Counter) -> Result<()> {
        if self.geo.is_compressed(s) {
            let (first, k) = self.geo.compressed_clusters(s);
            return n.add(first << self.geo.cluster_bits, k << self.geo.cluster_bits);
        }
        if self.data_file.is_some() {
            return Ok(());
        }
        let off = s.entry & l2::L2E_OFFSET_MASK;
        if off != 0 {
            n.add(off, 1)?;
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
