//! L1/L2 cluster mapping: entry decoding and the bounded L2 table cache.

use std::collections::{HashMap, VecDeque};

use crate::error::{Error, Result};
use crate::io::HostFile;

pub const OFLAG_COPIED: u64 = 1 << 63;
pub const OFLAG_COMPRESSED: u64 = 1 << 62;
pub const OFLAG_ZERO: u64 = 1;
pub const L1E_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
pub const L2E_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// All 32 subclusters allocated / all zero (extended L2 bitmap halves).
pub const BITMAP_ALL_ALLOC: u64 = 0xffff_ffff;
pub const BITMAP_ALL_ZERO: u64 = 0xffff_ffff << 32;

/// One guest cluster's L2 slot: the entry and (extended L2) its bitmap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Slot {
    pub entry: u64,
    pub bitmap: u64,
}

/// What a (sub)cluster reads as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Guest data at this host offset.
    Data(u64),
    /// Zeros; `Some(offset)` when a host cluster stays allocated.
    Zero(Option<u64>),
    Unallocated,
    /// Compressed cluster: (host byte offset, bytes to read).
    Compressed(u64, u64),
}

/// Geometry needed to decode entries.
#[derive(Debug, Clone, Copy)]
pub struct Geometry {
    pub cluster_bits: u32,
    pub extended: bool,
    pub v3: bool,
    /// An external data file: guest cluster 0 maps to host offset 0, so an
    /// entry of `COPIED | 0` is allocated there (as in QEMU).
    pub data_file: bool,
}

impl Geometry {
    /// Whether the entry points at a host cluster.
    pub fn has_host(&self, s: &Slot) -> bool {
        s.entry & L2E_OFFSET_MASK != 0 || (self.data_file && s.entry & OFLAG_COPIED != 0)
    }

    pub fn cs(&self) -> u64 {
        1 << self.cluster_bits
    }
    pub fn entries_per_l2(&self) -> u64 {
        self.cs() / if self.extended { 16 } else { 8 }
    }
    /// Subcluster size (the cluster itself without extended L2).
    pub fn sc_size(&self) -> u64 {
        if self.extended {
            self.cs() / 32
        } else {
            self.cs()
        }
    }
    fn csize_shift(&self) -> u32 {
        62 - (self.cluster_bits - 8)
    }

    /// Host cluster of a standard (non-compressed) entry, checked.
    pub fn host_offset(&self, s: &Slot) -> Result<u64> {
        let off = s.entry & L2E_OFFSET_MASK;
        if off & (self.cs() - 1) != 0 {
            return Err(Error::corrupt(format!(
                "Cluster allocation offset {off:#x} unaligned"
            )));
        }
        Ok(off)
    }

    pub fn is_compressed(&self, s: &Slot) -> bool {
        s.entry & OFLAG_COMPRESSED != 0
    }

    /// (offset, bytes) of a compressed cluster's stored data.
    pub fn compressed_extent(&self, s: &Slot) -> (u64, u64) {
        let shift = self.csize_shift();
        let off = s.entry & ((1u64 << shift) - 1);
        let nb = ((s.entry & !OFLAG_COPIED & !OFLAG_COMPRESSED) >> shift) + 1;
        (off, nb * 512 - (off & 511))
    }

    /// Host clusters a compressed entry references (for refcounts).
    pub fn compressed_clusters(&self, s: &Slot) -> (u64, u64) {
        let shift = self.csize_shift();
        let off = s.entry & ((1u64 << shift) - 1) & !511;
        let nb = ((s.entry & !OFLAG_COPIED & !OFLAG_COMPRESSED) >> shift) + 1;
        let first = off >> self.cluster_bits;
        let last = (off + nb * 512 - 1) >> self.cluster_bits;
        (first, last - first + 1)
    }

    pub fn compressed_entry(&self, off: u64, len: u64) -> u64 {
        let nb = ((off + len - 1) >> 9) - (off >> 9);
        OFLAG_COMPRESSED | (nb << self.csize_shift()) | off
    }

    /// Status of subcluster `sc` (0 without extended L2).
    pub fn kind(&self, s: &Slot, sc: u32) -> Result<Kind> {
        if self.is_compressed(s) {
            let (o, n) = self.compressed_extent(s);
            return Ok(Kind::Compressed(o, n));
        }
        let off = self.host_offset(s)?;
        if self.extended {
            let alloc = s.bitmap >> sc & 1 != 0;
            let zero = s.bitmap >> (32 + sc) & 1 != 0;
            return match (alloc, zero) {
                (true, true) => Err(Error::corrupt("Subcluster is both allocated and zero")),
                (true, false) if !self.has_host(s) => Err(Error::corrupt(
                    "Allocated subcluster without a host cluster",
                )),
                (true, false) => Ok(Kind::Data(off + sc as u64 * self.sc_size())),
                (false, true) => Ok(Kind::Zero(self.has_host(s).then_some(off))),
                (false, false) => Ok(Kind::Unallocated),
            };
        }
        if self.v3 && s.entry & OFLAG_ZERO != 0 {
            return Ok(Kind::Zero(self.has_host(s).then_some(off)));
        }
        if !self.has_host(s) {
            return Ok(Kind::Unallocated);
        }
        Ok(Kind::Data(off))
    }

    /// True when the slot's host cluster belongs to this L2 alone and can
    /// be written in place.
    pub fn in_place(&self, s: &Slot) -> bool {
        let zero_flagged = !self.extended && self.v3 && s.entry & OFLAG_ZERO != 0;
        !self.is_compressed(s) && !zero_flagged && s.entry & OFLAG_COPIED != 0 && self.has_host(s)
    }
}

/// Bounded cache of L2 tables, write-through (so eviction never writes).
/// Eviction is FIFO: O(1), and sequential workloads (convert) never
/// revisit old tables anyway.
pub struct L2Cache {
    tables: HashMap<u64, Vec<Slot>>,
    order: VecDeque<u64>,
    capacity: usize,
}

impl L2Cache {
    pub fn new(cluster_size: u64) -> Self {
        // About 32 MiB of tables (QEMU's default cache on Linux is 32 MiB).
        let capacity = ((32u64 << 20) / cluster_size).clamp(16, 65536) as usize;
        L2Cache {
            tables: HashMap::new(),
            order: VecDeque::new(),
            capacity,
        }
    }

    pub fn get(&mut self, file: &HostFile, g: &Geometry, off: u64) -> Result<&mut Vec<Slot>> {
        if !self.tables.contains_key(&off) {
            let mut raw = vec![0u8; g.cs() as usize];
            file.event("l2_load");
            file.read_at(&mut raw, off)?;
            self.insert(off, decode(&raw, g.extended));
        }
        self.tables
            .get_mut(&off)
            .ok_or_else(|| Error::corrupt("L2 cache miss"))
    }

    pub fn insert(&mut self, off: u64, t: Vec<Slot>) {
        while self.tables.len() >= self.capacity {
            match self.order.pop_front() {
                Some(k) => {
                    self.tables.remove(&k);
                }
                None => break,
            }
        }
        if self.tables.insert(off, t).is_none() {
            self.order.push_back(off);
        }
    }
}

pub fn decode(raw: &[u8], extended: bool) -> Vec<Slot> {
    let w = |c: &[u8]| {
        let mut a = [0u8; 8];
        a.copy_from_slice(c);
        u64::from_be_bytes(a)
    };
    if extended {
        raw.chunks_exact(16)
            .map(|c| Slot {
                entry: w(&c[..8]),
                bitmap: w(&c[8..]),
            })
            .collect()
    } else {
        raw.chunks_exact(8)
            .map(|c| Slot {
                entry: w(c),
                bitmap: 0,
            })
            .collect()
    }
}

pub fn encode(slots: &[Slot], extended: bool) -> Vec<u8> {
    let mut v = Vec::with_capacity(slots.len() * if extended { 16 } else { 8 });
    for s in slots {
        v.extend_from_slice(&s.entry.to_be_bytes());
        if extended {
            v.extend_from_slice(&s.bitmap.to_be_bytes());
        }
    }
    v
}
