//! Hosted sparse extents: the VMDK4 ("KDMV") header, with its grain
//! directory (L1), optional redundant directory and grain tables (L2),
//! and the older VMDK3 ("COWD") header. Grain tables are cached.

use parking_lot::Mutex;

use super::le;
use crate::error::{Error, Result};
use crate::io::HostFile;

pub const VMDK3_MAGIC: u32 = u32::from_be_bytes(*b"COWD");
pub const VMDK4_MAGIC: u32 = u32::from_be_bytes(*b"KDMV");
pub const FLAG_NL_DETECT: u32 = 1 << 0;
pub const FLAG_RGD: u32 = 1 << 1;
pub const FLAG_ZERO_GRAIN: u32 = 1 << 2;
pub const FLAG_COMPRESS: u32 = 1 << 16;
pub const FLAG_MARKER: u32 = 1 << 17;
pub const COMPRESSION_DEFLATE: u16 = 1;
pub const GD_AT_END: u64 = u64::MAX;
/// Grain table entry of a zeroed grain (zeroed_grain feature).
pub const GTE_ZEROED: u32 = 1;
/// Sectors an extent may address (32-bit grain table entries).
pub const EXTENT_MAX_SECTORS: u64 = 1 << 32;
pub const MARKER_END_OF_STREAM: u32 = 0;
pub const MARKER_FOOTER: u32 = 3;

/// The VMDK4 header fields (after the 4-byte magic).
#[derive(Debug, Clone, Copy, Default)]
pub struct Vmdk4Header {
    #[allow(dead_code)]
    pub version: u32,
    pub flags: u32,
    pub capacity: u64,
    pub granularity: u64,
    pub desc_offset: u64,
    pub desc_size: u64,
    pub num_gtes_per_gt: u32,
    pub rgd_offset: u64,
    pub gd_offset: u64,
    pub grain_offset: u64,
    pub compress_algorithm: u16,
}

pub const VMDK4_HEADER_LEN: usize = 79;

impl Vmdk4Header {
    /// Parse the 79 bytes that follow the magic.
    pub fn parse(b: &[u8]) -> Self {
        Vmdk4Header {
            version: le(b, 0, 4) as u32,
            flags: le(b, 4, 4) as u32,
            capacity: le(b, 8, 8),
            granularity: le(b, 16, 8),
            desc_offset: le(b, 24, 8),
            desc_size: le(b, 32, 8),
            num_gtes_per_gt: le(b, 40, 4) as u32,
            rgd_offset: le(b, 44, 8),
            gd_offset: le(b, 52, 8),
            grain_offset: le(b, 60, 8),
            compress_algorithm: le(b, 73, 2) as u16,
        }
    }
    /// Magic plus header, as written at offset 0 (512 bytes).
    pub fn serialize(&self) -> Vec<u8> {
        let mut b = vec![0u8; 512];
        b[0..4].copy_from_slice(&VMDK4_MAGIC.to_be_bytes());
        let h = &mut b[4..];
        h[0..4].copy_from_slice(&self.version.to_le_bytes());
        h[4..8].copy_from_slice(&self.flags.to_le_bytes());
        h[8..16].copy_from_slice(&self.capacity.to_le_bytes());
        h[16..24].copy_from_slice(&self.granularity.to_le_bytes());
        h[24..32].copy_from_slice(&self.desc_offset.to_le_bytes());
        h[32..40].copy_from_slice(&self.desc_size.to_le_bytes());
        h[40..44].copy_from_slice(&self.num_gtes_per_gt.to_le_bytes());
        h[44..52].copy_from_slice(&self.rgd_offset.to_le_bytes());
        h[52..60].copy_from_slice(&self.gd_offset.to_le_bytes());
        h[60..68].copy_from_slice(&self.grain_offset.to_le_bytes());
        // filler, then the newline-detection bytes "\n \r\n".
        h[69..73].copy_from_slice(&[0x0a, 0x20, 0x0d, 0x0a]);
        h[73..75].copy_from_slice(&self.compress_algorithm.to_le_bytes());
        b
    }
}

/// A small LRU of grain tables (QEMU keeps 16).
pub struct L2Cache {
    tables: Vec<(u64, Vec<u32>, u64)>,
    tick: u64,
}

const L2_CACHE_SIZE: usize = 16;

impl L2Cache {
    pub fn new() -> Self {
        L2Cache {
            tables: Vec::new(),
            tick: 0,
        }
    }
    fn find(&mut self, off: u64) -> Option<usize> {
        self.tick += 1;
        let t = self.tick;
        let i = self.tables.iter().position(|(o, _, _)| *o == off)?;
        self.tables[i].2 = t;
        Some(i)
    }
}

/// A sparse extent's geometry and tables.
pub struct Sparse {
    #[allow(dead_code)]
    pub version: u32,
    pub compressed: bool,
    pub has_marker: bool,
    pub zero_grain: bool,
    pub cluster_sectors: u64,
    /// Grain table entries per table.
    pub l2_size: u64,
    pub l1_entry_sectors: u64,
    pub l1: Vec<u32>,
    pub l1_backup: Option<Vec<u32>>,
    pub cache: Mutex<L2Cache>,
    /// Where the next grain goes, in sectors; serialises allocation.
    pub next_cluster_sector: Mutex<u64>,
}

/// Where a guest sector of an extent lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// Beyond the grain directory (QEMU's VMDK_ERROR).
    Error,
    /// No grain table for it.
    NoTable,
    /// Unallocated grain in table `l2` (sectors) at `index`.
    Unallocated { l1: usize, l2: u64, index: usize },
    /// Zeroed grain.
    Zeroed { l1: usize, l2: u64, index: usize },
    /// Grain at this file byte offset.
    Allocated {
        l1: usize,
        l2: u64,
        index: usize,
        offset: u64,
    },
}

impl Sparse {
    pub fn cluster_bytes(&self) -> u64 {
        self.cluster_sectors * 512
    }

    /// Build from header fields, with QEMU's limits (vmdk_add_extent).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        file: &HostFile,
        l1_offset: u64,
        l1_backup_offset: u64,
        l1_size: u64,
        l2_size: u64,
        cluster_sectors: u64,
        version: u32,
        flags: u32,
        compressed: bool,
    ) -> Result<Self> {
        if cluster_sectors > 0x20_0000 {
            return Err(Error::invalid("Invalid granularity, image may be corrupt"));
        }
        if l1_size > 32 * 1024 * 1024 {
            return Err(Error::invalid("L1 size too big"));
        }
        let name = file.path().display().to_string();
        let read_table = |off: u64, what: &str| -> Result<Vec<u32>> {
            let mut raw = vec![0u8; (l1_size * 4) as usize];
            file.read_at(&mut raw, off).map_err(|e| {
                let m = format!(
                    "Could not read {what} from extent '{name}': {}",
                    e.message()
                );
                e.with_message(m)
            })?;
            Ok(raw.chunks_exact(4).map(|c| le(c, 0, 4) as u32).collect())
        };
        let l1 = read_table(l1_offset, "l1 table")?;
        let l1_backup = if l1_backup_offset != 0 {
            Some(read_table(l1_backup_offset, "l1 backup table")?)
        } else {
            None
        };
        let nb_sectors = file.len()?.div_ceil(512);
        let next = if cluster_sectors == 0 {
            nb_sectors
        } else {
            nb_sectors.div_ceil(cluster_sectors) * cluster_sectors
        };
        Ok(Sparse {
            version,
            compressed,
            has_marker: flags & FLAG_MARKER != 0,
            zero_grain: flags & FLAG_ZERO_GRAIN != 0,
            cluster_sectors,
            l2_size,
            l1_entry_sectors: (l2_size * cluster_sectors) as u32 as u64,
            l1,
            l1_backup,
            cache: Mutex::new(L2Cache::new()),
            next_cluster_sector: Mutex::new(next),
        })
    }

    /// End (extent-relative byte) of the span grain table `rel` falls in.
    pub fn table_span_end(&self, rel: u64) -> u64 {
        let span = (self.l1_entry_sectors * 512).max(512);
        (rel / span + 1).saturating_mul(span)
    }

    /// Entry `index` of the grain table at sector `l2`.
    fn l2_entry(&self, file: &HostFile, l2: u64, index: usize) -> Result<u32> {
        let mut c = self.cache.lock();
        if let Some(i) = c.find(l2) {
            return Ok(c.tables[i].1.get(index).copied().unwrap_or(0));
        }
        let mut raw = vec![0u8; (self.l2_size * 4) as usize];
        file.read_at(&mut raw, l2 * 512)?;
        let t: Vec<u32> = raw.chunks_exact(4).map(|c| le(c, 0, 4) as u32).collect();
        let v = t.get(index).copied().unwrap_or(0);
        let tick = c.tick;
        if c.tables.len() < L2_CACHE_SIZE {
            c.tables.push((l2, t, tick));
        } else if let Some(lru) = (0..c.tables.len()).min_by_key(|&i| c.tables[i].2) {
            c.tables[lru] = (l2, t, tick);
        }
        Ok(v)
    }

    /// Look up extent-relative byte `off`.
    pub fn lookup(&self, file: &HostFile, off: u64) -> Result<Lookup> {
        let sector = off >> 9;
        if self.l1_entry_sectors == 0 || self.cluster_sectors == 0 {
            return Ok(Lookup::Error);
        }
        let l1 = sector / self.l1_entry_sectors;
        let Some(&l2) = self.l1.get(l1 as usize) else {
            return Ok(Lookup::Error);
        };
        if l2 == 0 {
            return Ok(Lookup::NoTable);
        }
        let l2 = l2 as u64;
        let index = ((sector / self.cluster_sectors) % self.l2_size) as usize;
        let l1 = l1 as usize;
        let e = self.l2_entry(file, l2, index)?;
        Ok(if self.zero_grain && e == GTE_ZEROED {
            Lookup::Zeroed { l1, l2, index }
        } else if e == 0 {
            Lookup::Unallocated { l1, l2, index }
        } else {
            Lookup::Allocated {
                l1,
                l2,
                index,
                offset: e as u64 * 512,
            }
        })
    }

    /// Set a grain table entry (and its redundant copy), then flush.
    pub fn set_l2(
        &self,
        file: &HostFile,
        l1: usize,
        l2: u64,
        index: usize,
        value: u32,
    ) -> Result<()> {
        file.write_at(&value.to_le_bytes(), l2 * 512 + index as u64 * 4)?;
        if let Some(b) = &self.l1_backup {
            if let Some(&bl2) = b.get(l1) {
                file.write_at(&value.to_le_bytes(), bl2 as u64 * 512 + index as u64 * 4)?;
            }
        }
        file.flush()?;
        let mut c = self.cache.lock();
        if let Some(i) = c.find(l2) {
            if let Some(slot) = c.tables[i].1.get_mut(index) {
                *slot = value;
            }
        }
        Ok(())
    }
}

/// Read a compressed grain (optionally behind a marker) at `offset` and
/// inflate it. Errors as QEMU's: EINVAL for a bad size or stream.
pub fn read_compressed(
    file: &HostFile,
    offset: u64,
    cluster_bytes: u64,
    has_marker: bool,
) -> Result<Vec<u8>> {
    let einval = || Error::from_errno(libc::EINVAL).with_kind(crate::error::ErrorKind::Corrupt);
    let buf_bytes = cluster_bytes * 2;
    let mut buf = vec![0u8; buf_bytes as usize];
    file.read_at(&mut buf, offset)?;
    let (data, len) = if has_marker {
        (&buf[12..], le(&buf, 8, 4))
    } else {
        (&buf[..], cluster_bytes)
    };
    if len == 0 || len > buf_bytes {
        return Err(einval());
    }
    let data = data.get(..len as usize).unwrap_or(data);
    let mut out = vec![0u8; cluster_bytes as usize];
    let mut d = flate2::Decompress::new(true);
    match d.decompress(data, &mut out, flate2::FlushDecompress::Finish) {
        Ok(flate2::Status::StreamEnd) => {}
        _ => return Err(einval()),
    }
    out.truncate(d.total_out() as usize);
    Ok(out)
}

/// Deflate a grain (zlib format, default level) behind a grain marker.
pub fn compress_grain(data: &[u8], lba: u64) -> Result<Vec<u8>> {
    use std::io::Write;
    let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::new(6));
    enc.write_all(data)?;
    let c = enc.finish()?;
    let mut out = Vec::with_capacity(12 + c.len());
    out.extend_from_slice(&lba.to_le_bytes());
    out.extend_from_slice(&(c.len() as u32).to_le_bytes());
    out.extend_from_slice(&c);
    Ok(out)
}
