//! A bounded, write-through cache of on-disk tables of u64 entries, read in
//! pages. Used for QED's L1/L2 tables (little-endian) and qcow's (v1)
//! L1/L2 tables (big-endian).
//!
//! Tables are addressed by their byte offset in the file and read one page
//! at a time, so a table that a header claims is huge (QED allows 1 GiB
//! tables, qcow an L1 of 2 GiB) costs memory only for the pages actually
//! touched, and never more than the cache's budget. Writes go to the file
//! first and then to any cached copy, so eviction never writes.
//!
//! (Generic enough to live in `format/` beside `bytes.rs`; it sits here
//! because this module owns it for now.)

use std::collections::{HashMap, VecDeque};

use crate::error::{Error, Result};
use crate::io::HostFile;

/// The block layer's largest addressable byte (QEMU's BDRV_MAX_LENGTH):
/// requests reaching past it fail with EIO, as in QEMU.
pub(crate) const MAX_REQUEST_END: u64 = 0x7fff_ffff_c000_0000;

/// EIO unless `[off, off+len)` lies below [`MAX_REQUEST_END`].
pub(crate) fn check_request(off: u64, len: u64) -> Result<()> {
    if off > MAX_REQUEST_END || len > MAX_REQUEST_END - off {
        return Err(Error::from_errno(libc::EIO));
    }
    Ok(())
}

/// Byte order of the entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endian {
    Big,
    Little,
}

impl Endian {
    fn decode(self, b: &[u8]) -> u64 {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[..8]);
        match self {
            Endian::Big => u64::from_be_bytes(a),
            Endian::Little => u64::from_le_bytes(a),
        }
    }
    fn encode(self, v: u64) -> [u8; 8] {
        match self {
            Endian::Big => v.to_be_bytes(),
            Endian::Little => v.to_le_bytes(),
        }
    }
}

/// Cached pages of tables, keyed by the page's file offset.
pub(crate) struct TableCache {
    endian: Endian,
    /// Bytes per page (a non-zero multiple of 8).
    page: u64,
    pages: HashMap<u64, Vec<u64>>,
    order: VecDeque<u64>,
    capacity: usize,
}

impl TableCache {
    /// `page` bytes per page (rounded to a multiple of 8, at least 8);
    /// at most about `budget` bytes cached.
    pub fn new(endian: Endian, page: u64, budget: u64) -> Self {
        let page = (page.max(8) / 8) * 8;
        let capacity = (budget / page).clamp(4, 1 << 16) as usize;
        TableCache {
            endian,
            page,
            pages: HashMap::new(),
            order: VecDeque::new(),
            capacity,
        }
    }

    /// (page key, index inside the page) of entry `idx` of table `table`.
    fn locate(&self, table: u64, idx: u64) -> Result<(u64, usize)> {
        let byte = idx
            .checked_mul(8)
            .ok_or_else(|| Error::corrupt("Table index out of range"))?;
        let key = table
            .checked_add(byte / self.page * self.page)
            .filter(|k| k.checked_add(self.page).is_some())
            .ok_or_else(|| Error::from_errno(libc::EINVAL))?;
        Ok((key, ((byte % self.page) / 8) as usize))
    }

    fn load(&mut self, file: &HostFile, key: u64) -> Result<&mut Vec<u64>> {
        if !self.pages.contains_key(&key) {
            check_request(key, self.page)?;
            let mut raw = vec![0u8; self.page as usize];
            file.read_at(&mut raw, key)?;
            let page = raw.chunks_exact(8).map(|c| self.endian.decode(c)).collect();
            self.insert(key, page);
        }
        self.pages
            .get_mut(&key)
            .ok_or_else(|| Error::corrupt("table cache miss"))
    }

    fn insert(&mut self, key: u64, page: Vec<u64>) {
        while self.pages.len() >= self.capacity {
            match self.order.pop_front() {
                Some(k) => {
                    self.pages.remove(&k);
                }
                None => break,
            }
        }
        if self.pages.insert(key, page).is_none() {
            self.order.push_back(key);
        }
    }

    /// Entry `idx` of the table at `table`.
    pub fn get(&mut self, file: &HostFile, table: u64, idx: u64) -> Result<u64> {
        let (key, i) = self.locate(table, idx)?;
        let page = self.load(file, key)?;
        page.get(i)
            .copied()
            .ok_or_else(|| Error::corrupt("table cache index"))
    }

    /// Write entries `idx..idx+values.len()` of the table at `table`
    /// through to the file (one write), then into cached pages.
    pub fn set(&mut self, file: &HostFile, table: u64, idx: u64, values: &[u64]) -> Result<()> {
        if values.is_empty() {
            return Ok(());
        }
        self.locate(table, idx)?;
        let off = idx
            .checked_mul(8)
            .and_then(|b| table.checked_add(b))
            .ok_or_else(|| Error::from_errno(libc::EINVAL))?;
        check_request(off, values.len() as u64 * 8)?;
        let mut raw = Vec::with_capacity(values.len() * 8);
        for v in values {
            raw.extend_from_slice(&self.endian.encode(*v));
        }
        file.write_at(&raw, off)?;
        for (k, v) in values.iter().enumerate() {
            let (key, i) = self.locate(table, idx + k as u64)?;
            if let Some(slot) = self.pages.get_mut(&key).and_then(|p| p.get_mut(i)) {
                *slot = *v;
            }
        }
        Ok(())
    }

    /// A table that was just written as zeros at `table` (`bytes` long):
    /// cache its pages without reading them back.
    pub fn insert_zeroed(&mut self, table: u64, bytes: u64) {
        let mut off = 0;
        // Only the first few pages: a huge fresh table need not be cached.
        let mut n = 0;
        while off < bytes && n < 4 {
            let key = table + off;
            self.pages.remove(&key);
            self.order.retain(|k| *k != key);
            self.insert(key, vec![0u64; (self.page / 8) as usize]);
            off += self.page;
            n += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_indexes_fail_cleanly() {
        let c = TableCache::new(Endian::Little, 4096, 1 << 20);
        assert!(c.locate(u64::MAX - 8, 10).is_err());
        assert!(c.locate(0, u64::MAX).is_err());
        assert!(c.locate(0, 1000).is_ok());
    }
}
