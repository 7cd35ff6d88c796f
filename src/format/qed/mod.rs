//! QED (QEMU Enhanced Disk), docs/interop/qed_spec.txt.
//!
//! Layout: a little-endian header in the first `header_size` clusters
//! (backing file name included), an L1 table and L2 tables of
//! `table_size` clusters each. A table entry is 0 (unallocated: the backing
//! file or zeros), 1 (a zero cluster, L2 only), or the offset of a cluster.
//! There are no refcounts: clusters and tables are appended at the end of
//! the file, and an offset is valid when it is cluster-aligned, past the
//! header and before the end of the file.
//!
//! Crash safety works through the need-check feature bit: it is set (and
//! flushed) before the first allocation and cleared on clean close; an
//! image opened read-write with the bit set is checked and repaired first.
//! Allocation order: data (flushed first when a backing file could show
//! through a torn cluster), then the L2 table, then the L1 entry.

mod check;
pub(crate) mod table;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use super::{
    BackingRead, BackingRef, CheckResult, CreateOptions, Driver, DriverInfo, DriverOpenOptions,
    Extent, OptDesc, OptKind, Prealloc, Repair, Status,
};
use crate::error::{Error, ErrorKind, Result};
use crate::io::HostFile;
use table::{Endian, TableCache};

pub const MAGIC: [u8; 4] = *b"QED\0";
const HEADER_LEN: usize = 64;
pub const F_BACKING_FILE: u64 = 1;
pub const F_NEED_CHECK: u64 = 2;
pub const F_BACKING_FORMAT_NO_PROBE: u64 = 4;
const FEATURE_MASK: u64 = F_BACKING_FILE | F_NEED_CHECK | F_BACKING_FORMAT_NO_PROBE;
const MIN_CLUSTER_SIZE: u64 = 4096;
const MAX_CLUSTER_SIZE: u64 = 64 << 20;
const MAX_TABLE_SIZE: u64 = 16;
const DEFAULT_CLUSTER_SIZE: u64 = 65536;
const DEFAULT_TABLE_SIZE: u64 = 4;
/// QEMU reads the backing name into a PATH_MAX buffer.
const MAX_BACKING_NAME: u32 = 4095;
const MAX_OFFSET: u64 = i64::MAX as u64;
/// Table pages read on demand (tables may be up to 1 GiB).
const TABLE_PAGE: u64 = 64 << 10;
const L1_BUDGET: u64 = 32 << 20;
const L2_BUDGET: u64 = 32 << 20;
/// L2 entry of a zero cluster.
const ZERO_CLUSTER: u64 = 1;

pub const CREATE_OPTS: &[OptDesc] = &[
    OptDesc {
        name: "backing_file",
        kind: OptKind::Str,
        help: "File name of a base image",
    },
    OptDesc {
        name: "backing_fmt",
        kind: OptKind::Str,
        help: "Image format of the base image",
    },
    OptDesc {
        name: "cluster_size",
        kind: OptKind::Size,
        help: "Cluster size (in bytes)",
    },
    OptDesc {
        name: "extent_size_hint",
        kind: OptKind::Size,
        help: "Extent size hint for the image file, 0 to disable",
    },
    OptDesc {
        name: "nocow",
        kind: OptKind::Bool,
        help: "Turn off copy-on-write (valid only on btrfs)",
    },
    OptDesc {
        name: "preallocation",
        kind: OptKind::Str,
        help: "Preallocation mode (allowed values: off, falloc, full)",
    },
    OptDesc {
        name: "size",
        kind: OptKind::Size,
        help: "Virtual disk size",
    },
    OptDesc {
        name: "table_size",
        kind: OptKind::Size,
        help: "L1/L2 table size (in clusters)",
    },
];

pub fn probe(head: &[u8]) -> bool {
    head.len() >= 4 && head[..4] == MAGIC
}

fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

fn le64(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(a)
}

/// The on-disk header, fields as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Header {
    cluster_size: u32,
    table_size: u32,
    header_size: u32,
    features: u64,
    compat_features: u64,
    autoclear_features: u64,
    l1_table_offset: u64,
    image_size: u64,
    backing_filename_offset: u32,
    backing_filename_size: u32,
}

impl Header {
    fn parse(b: &[u8; HEADER_LEN]) -> Header {
        Header {
            cluster_size: le32(b, 4),
            table_size: le32(b, 8),
            header_size: le32(b, 12),
            features: le64(b, 16),
            compat_features: le64(b, 24),
            autoclear_features: le64(b, 32),
            l1_table_offset: le64(b, 40),
            image_size: le64(b, 48),
            backing_filename_offset: le32(b, 56),
            backing_filename_size: le32(b, 60),
        }
    }

    fn serialize(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[..4].copy_from_slice(&MAGIC);
        b[4..8].copy_from_slice(&self.cluster_size.to_le_bytes());
        b[8..12].copy_from_slice(&self.table_size.to_le_bytes());
        b[12..16].copy_from_slice(&self.header_size.to_le_bytes());
        b[16..24].copy_from_slice(&self.features.to_le_bytes());
        b[24..32].copy_from_slice(&self.compat_features.to_le_bytes());
        b[32..40].copy_from_slice(&self.autoclear_features.to_le_bytes());
        b[40..48].copy_from_slice(&self.l1_table_offset.to_le_bytes());
        b[48..56].copy_from_slice(&self.image_size.to_le_bytes());
        b[56..60].copy_from_slice(&self.backing_filename_offset.to_le_bytes());
        b[60..64].copy_from_slice(&self.backing_filename_size.to_le_bytes());
        b
    }
}

fn cluster_size_valid(cs: u64) -> bool {
    cs.is_power_of_two() && (MIN_CLUSTER_SIZE..=MAX_CLUSTER_SIZE).contains(&cs)
}

fn table_size_valid(ts: u64) -> bool {
    ts.is_power_of_two() && ts <= MAX_TABLE_SIZE
}

/// Largest image the geometry addresses, computed in wrapping 64-bit
/// arithmetic as QEMU does (so the largest geometries give 0).
fn max_image_size(cs: u64, ts: u64) -> u64 {
    let entries = ts.wrapping_mul(cs) / 8;
    entries.wrapping_mul(cs).wrapping_mul(entries)
}

fn image_size_valid(size: u64, cs: u64, ts: u64) -> bool {
    size.is_multiple_of(512) && size <= max_image_size(cs, ts)
}

/// Fixed geometry of an open image.
#[derive(Debug, Clone, Copy)]
struct Geo {
    cluster_bits: u32,
    /// Table size in clusters.
    table_size: u64,
    /// Entries per table.
    nelems: u64,
    /// Bytes before the first cluster that may hold data or tables.
    header_bytes: u64,
    l1_offset: u64,
}

impl Geo {
    fn cs(&self) -> u64 {
        1 << self.cluster_bits
    }
    fn table_bytes(&self) -> u64 {
        self.table_size << self.cluster_bits
    }
    /// A valid cluster offset: aligned, past the header, inside the file.
    fn cluster_ok(&self, off: u64, file_size: u64) -> bool {
        off & (self.cs() - 1) == 0 && off >= self.header_bytes && off < file_size
    }
    /// A valid table offset: its first and last cluster valid (and, as in
    /// QEMU, the last strictly after the first).
    fn table_ok(&self, off: u64, file_size: u64) -> bool {
        match off.checked_add((self.table_size - 1) << self.cluster_bits) {
            Some(end) if end > off => {
                self.cluster_ok(off, file_size) && self.cluster_ok(end, file_size)
            }
            _ => false,
        }
    }
}

/// What one guest cluster maps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Unallocated,
    Zero,
    Data(u64),
}

struct Meta {
    l1: TableCache,
    l2: TableCache,
    /// End of the file in whole clusters: where allocation appends.
    file_size: u64,
}

pub struct Qed {
    file: HostFile,
    geo: Geo,
    hdr: Mutex<Header>,
    backing: Option<BackingRef>,
    meta: Mutex<Meta>,
    /// Serialises writers; readers never take it.
    write_lock: Mutex<()>,
    size: AtomicU64,
    writable: bool,
}

fn einval() -> Error {
    Error::from_errno(libc::EINVAL).with_kind(ErrorKind::Corrupt)
}

fn read_only() -> Error {
    Error::new(ErrorKind::PermissionDenied, "Image is read-only")
}

impl Qed {
    pub fn open(file: HostFile, opts: &DriverOpenOptions) -> Result<Qed> {
        let mut b = [0u8; HEADER_LEN];
        file.read_at(&mut b, 0)?;
        if b[..4] != MAGIC {
            return Err(Error::corrupt("Image not in QED format"));
        }
        let hdr = Header::parse(&b);
        if hdr.features & !FEATURE_MASK != 0 {
            return Err(Error::unsupported(format!(
                "Unsupported QED features: {:x}",
                hdr.features & !FEATURE_MASK
            )));
        }
        let cs = hdr.cluster_size as u64;
        if !cluster_size_valid(cs) {
            return Err(Error::corrupt("QED cluster size is invalid"));
        }
        let ts = hdr.table_size as u64;
        if !table_size_valid(ts) {
            return Err(Error::corrupt("QED table size is invalid"));
        }
        // The block layer sees whole sectors; QED then rounds down to
        // whole clusters.
        let file_size = file.len()?.next_multiple_of(512) & !(cs - 1);
        if !image_size_valid(hdr.image_size, cs, ts) {
            return Err(Error::corrupt("QED image size is invalid"));
        }
        let cluster_bits = cs.trailing_zeros();
        let geo = Geo {
            cluster_bits,
            table_size: ts,
            nelems: (ts << cluster_bits) / 8,
            header_bytes: (hdr.header_size as u64) << cluster_bits,
            l1_offset: hdr.l1_table_offset,
        };
        if !geo.table_ok(hdr.l1_table_offset, file_size) {
            return Err(Error::corrupt("QED table offset is invalid"));
        }
        let backing = if hdr.features & F_BACKING_FILE != 0 {
            read_backing_name(&file, &hdr, geo.header_bytes)?.map(|name| BackingRef {
                filename: name,
                format: (hdr.features & F_BACKING_FORMAT_NO_PROBE != 0).then(|| "raw".to_string()),
            })
        } else {
            None
        };
        let page = geo.table_bytes().min(TABLE_PAGE);
        let q = Qed {
            size: AtomicU64::new(hdr.image_size),
            meta: Mutex::new(Meta {
                l1: TableCache::new(Endian::Little, page, L1_BUDGET),
                l2: TableCache::new(Endian::Little, page, L2_BUDGET),
                file_size,
            }),
            hdr: Mutex::new(hdr),
            geo,
            backing,
            file,
            write_lock: Mutex::new(()),
            writable: opts.writable,
        };
        if q.writable {
            let autoclear = q.hdr.lock().autoclear_features;
            if autoclear != 0 {
                // No autoclear feature is known: a writer clears them all.
                q.update_header(|h| h.autoclear_features = 0)?;
                q.file.flush()?;
            }
            let dirty = q.hdr.lock().features & F_NEED_CHECK != 0;
            if dirty && !opts.for_check {
                // Not closed cleanly: check and repair before trusting the
                // tables (a read-only open may inspect it as it is).
                q.check_image(true, &mut |_| {})?;
            }
        }
        Ok(q)
    }

    fn cs(&self) -> u64 {
        self.geo.cs()
    }

    /// Change the in-memory header and write it out.
    fn update_header(&self, f: impl FnOnce(&mut Header)) -> Result<()> {
        let mut h = self.hdr.lock();
        f(&mut h);
        self.file.write_at(&h.serialize(), 0)
    }

    fn set_need_check(&self, on: bool) -> Result<()> {
        let set = self.hdr.lock().features & F_NEED_CHECK != 0;
        if set == on {
            return Ok(());
        }
        // Whatever it guards must be on disk before the bit goes away, and
        // the bit must be on disk before anything it guards.
        self.file.flush()?;
        self.update_header(|h| {
            if on {
                h.features |= F_NEED_CHECK
            } else {
                h.features &= !F_NEED_CHECK
            }
        })?;
        self.file.flush()
    }

    /// (L1 index, L2 index) of guest cluster `ci`.
    fn indexes(&self, ci: u64) -> Result<(u64, u64)> {
        let l1i = ci / self.geo.nelems;
        if l1i >= self.geo.nelems {
            return Err(Error::out_of_range("Cluster beyond the L1 table"));
        }
        Ok((l1i, ci % self.geo.nelems))
    }

    /// The L2 table for `l1i`, validated; None when not allocated.
    fn l2_table(&self, m: &mut Meta, l1i: u64) -> Result<Option<u64>> {
        let off = m.l1.get(&self.file, self.geo.l1_offset, l1i)?;
        if off == 0 {
            return Ok(None);
        }
        if !self.geo.table_ok(off, m.file_size) {
            return Err(einval());
        }
        Ok(Some(off))
    }

    fn kind(&self, m: &mut Meta, ci: u64) -> Result<Kind> {
        let (l1i, l2i) = self.indexes(ci)?;
        let Some(l2) = self.l2_table(m, l1i)? else {
            return Ok(Kind::Unallocated);
        };
        match m.l2.get(&self.file, l2, l2i)? {
            0 => Ok(Kind::Unallocated),
            ZERO_CLUSTER => Ok(Kind::Zero),
            off if self.geo.cluster_ok(off, m.file_size) => Ok(Kind::Data(off)),
            _ => Err(einval()),
        }
    }

    /// The run at guest `off` (at most `max` bytes, within one L2 table):
    /// its kind (host offset of `off` itself for data) and length.
    fn run(&self, off: u64, max: u64) -> Result<(Kind, u64)> {
        let cs = self.cs();
        let cb = self.geo.cluster_bits;
        let end = off.saturating_add(max);
        let ci = off >> cb;
        let in_c = off & (cs - 1);
        let mut m = self.meta.lock();
        let first = self.kind(&mut m, ci)?;
        let table_end = (ci / self.geo.nelems + 1) * self.geo.nelems;
        let mut next = ci + 1;
        let mut pos = ((ci + 1) << cb).min(end);
        while pos < end && next < table_end {
            let k = self.kind(&mut m, next)?;
            let same = match (first, k) {
                (Kind::Data(h0), Kind::Data(h)) => h == h0 + (next - ci) * cs,
                (a, b) => a == b,
            };
            if !same {
                break;
            }
            next += 1;
            pos = (next << cb).min(end);
        }
        let kind = match first {
            Kind::Data(h) => Kind::Data(h + in_c),
            k => k,
        };
        Ok((kind, pos - off))
    }

    fn read(&self, buf: &mut [u8], off: u64, backing: &dyn BackingRead) -> Result<()> {
        let mut pos = 0usize;
        while pos < buf.len() {
            let g = off + pos as u64;
            let (kind, n) = self.run(g, (buf.len() - pos) as u64)?;
            let out = &mut buf[pos..pos + n as usize];
            match kind {
                Kind::Data(h) => {
                    self.file.event("read_aio");
                    self.file.read_at(out, h)?
                }
                Kind::Zero => out.fill(0),
                Kind::Unallocated => {
                    self.file.event("read_backing_aio");
                    backing.read_backing(out, g)?
                }
            }
            pos += n as usize;
        }
        Ok(())
    }

    fn status(&self, off: u64, max: u64) -> Result<Extent> {
        let max = max.min(self.virtual_size().saturating_sub(off)).max(1);
        let (kind, len) = self.run(off, max)?;
        let (status, offset) = match kind {
            Kind::Data(h) => (Status::Data, Some(h)),
            Kind::Zero => (Status::Zero, None),
            Kind::Unallocated => (Status::Unallocated, None),
        };
        Ok(Extent {
            len: len.max(1),
            status,
            offset,
            compressed: false,
        })
    }

    fn prepare_write(&self) -> Result<()> {
        if !self.writable {
            return Err(read_only());
        }
        Ok(())
    }

    /// Reserve `bytes` at the end of the file.
    fn alloc(&self, m: &mut Meta, bytes: u64) -> Result<u64> {
        let off = m.file_size;
        let end = off
            .checked_add(bytes)
            .filter(|&e| e <= MAX_OFFSET)
            .ok_or_else(|| Error::from_errno(libc::EFBIG))?;
        m.file_size = end;
        Ok(off)
    }

    /// Point L2 entries `l2i..` of table `l1i` at `entries`, allocating
    /// the table (after whatever data was just allocated) when missing.
    fn set_entries(&self, l1i: u64, l2i: u64, entries: &[u64]) -> Result<()> {
        let mut m = self.meta.lock();
        if let Some(l2) = self.l2_table(&mut m, l1i)? {
            return m.l2.set(&self.file, l2, l2i, entries);
        }
        let bytes = self.geo.table_bytes();
        let table = self.alloc(&mut m, bytes)?;
        // The table lies at or past the end of whole clusters; whatever
        // partial cluster was there must read as zeros.
        self.file.write_zeroes(table, bytes, false)?;
        m.l2.insert_zeroed(table, bytes);
        m.l2.set(&self.file, table, l2i, entries)?;
        m.l1.set(&self.file, self.geo.l1_offset, l1i, &[table])
    }

    /// What a cluster read as before a partial write: its old bytes.
    fn cow_base(&self, kind: Kind, ci: u64, backing: &dyn BackingRead) -> Result<Vec<u8>> {
        let mut b = vec![0u8; self.cs() as usize];
        match kind {
            Kind::Zero => {}
            Kind::Data(h) => self.file.read_at(&mut b, h)?,
            Kind::Unallocated => backing.read_backing(&mut b, ci << self.geo.cluster_bits)?,
        }
        Ok(b)
    }

    /// Write `data` at guest `g` into newly allocated clusters: the run
    /// of `k` unallocated/zero clusters from `ci` (one L2 table).
    fn alloc_write(
        &self,
        ci: u64,
        k: u64,
        g: u64,
        data: &[u8],
        backing: &dyn BackingRead,
    ) -> Result<()> {
        let cs = self.cs();
        let (l1i, l2i) = self.indexes(ci)?;
        let in_c = (g & (cs - 1)) as usize;
        let head_kind = self.kind(&mut self.meta.lock(), ci)?;
        let last = ci + k - 1;
        let tail_kind = self.kind(&mut self.meta.lock(), last)?;
        self.set_need_check(true)?;
        let host = {
            let mut m = self.meta.lock();
            self.alloc(&mut m, k * cs)?
        };
        let data_end = in_c + data.len();
        let total = (k * cs) as usize;
        // First cluster (with what surrounds the data), whole clusters in
        // the middle straight from the caller, and the last cluster.
        let first_n = (cs as usize).min(total);
        self.file.event("write_aio");
        if in_c > 0 || data_end < first_n {
            let mut c = self.cow_base(head_kind, ci, backing)?;
            let n = data.len().min(first_n - in_c);
            c[in_c..in_c + n].copy_from_slice(&data[..n]);
            self.file.write_at(&c, host)?;
        } else {
            self.file.write_at(&data[..first_n], host)?;
        }
        if k > 1 {
            let mid_start = cs as usize - in_c;
            let last_start = total - cs as usize;
            let mid_end = last_start - in_c;
            if mid_end > mid_start {
                self.file.write_at(&data[mid_start..mid_end], host + cs)?;
            }
            let tail = &data[mid_end..];
            if tail.len() < cs as usize {
                let mut c = self.cow_base(tail_kind, last, backing)?;
                c[..tail.len()].copy_from_slice(tail);
                self.file.write_at(&c, host + last_start as u64)?;
            } else {
                self.file.write_at(tail, host + last_start as u64)?;
            }
        }
        if self.backing.is_some() && !backing.is_none() {
            // A torn cluster must not hide the backing file's bytes: data
            // reaches the disk before the L2 entry that exposes it.
            self.file.flush()?;
        }
        let entries: Vec<u64> = (0..k).map(|i| host + i * cs).collect();
        self.set_entries(l1i, l2i, &entries)
    }

    fn write(&self, buf: &[u8], off: u64, backing: &dyn BackingRead) -> Result<()> {
        self.prepare_write()?;
        let _w = self.write_lock.lock();
        self.write_locked(buf, off, backing)
    }

    fn write_locked(&self, buf: &[u8], off: u64, backing: &dyn BackingRead) -> Result<()> {
        let cb = self.geo.cluster_bits;
        let mut pos = 0usize;
        while pos < buf.len() {
            let g = off + pos as u64;
            let rest = (buf.len() - pos) as u64;
            let (kind, n) = self.run(g, rest)?;
            let n = n as usize;
            match kind {
                Kind::Data(h) => {
                    self.file.event("write_aio");
                    self.file.write_at(&buf[pos..pos + n], h)?
                }
                Kind::Zero | Kind::Unallocated => {
                    // Allocate the whole run of not-data clusters the
                    // request touches (mixing zero and unallocated ones).
                    let ci = g >> cb;
                    let end = g + rest;
                    let table_end = (ci / self.geo.nelems + 1) * self.geo.nelems;
                    let mut k = 1u64;
                    while ci + k < table_end && ((ci + k) << cb) < end {
                        let next = self.kind(&mut self.meta.lock(), ci + k)?;
                        if matches!(next, Kind::Data(_)) {
                            break;
                        }
                        k += 1;
                    }
                    let covered = (((ci + k) << cb).min(end) - g) as usize;
                    self.alloc_write(ci, k, g, &buf[pos..pos + covered], backing)?;
                    pos += covered;
                    continue;
                }
            }
            pos += n;
        }
        Ok(())
    }

    fn zero(&self, off: u64, len: u64, may_unmap: bool, backing: &dyn BackingRead) -> Result<()> {
        self.prepare_write()?;
        let _w = self.write_lock.lock();
        let cs = self.cs();
        let cb = self.geo.cluster_bits;
        let end = off + len;
        let mut pos = off;
        while pos < end {
            let ci = pos >> cb;
            let in_c = pos & (cs - 1);
            let cluster_end = ((ci + 1) << cb).min(end);
            let whole =
                in_c == 0 && (cluster_end - pos == cs || cluster_end == self.virtual_size());
            let kind = self.kind(&mut self.meta.lock(), ci)?;
            if !whole {
                // Zero clusters are whole clusters: a part is written as
                // zeros, unless it already reads as zeros.
                let already =
                    kind == Kind::Zero || (kind == Kind::Unallocated && backing.is_none());
                if !already {
                    let zeros = vec![0u8; (cluster_end - pos) as usize];
                    self.write_locked(&zeros, pos, backing)?;
                }
                pos = cluster_end;
                continue;
            }
            match kind {
                Kind::Zero => {}
                Kind::Data(h) => self.file.write_zeroes(h, cluster_end - pos, may_unmap)?,
                Kind::Unallocated => {
                    // A run of unallocated clusters becomes zero clusters.
                    let (l1i, l2i) = self.indexes(ci)?;
                    let table_end = (ci / self.geo.nelems + 1) * self.geo.nelems;
                    let mut k = 1u64;
                    while ci + k < table_end && ((ci + k + 1) << cb) <= end {
                        if self.kind(&mut self.meta.lock(), ci + k)? != Kind::Unallocated {
                            break;
                        }
                        k += 1;
                    }
                    self.set_need_check(true)?;
                    self.set_entries(l1i, l2i, &vec![ZERO_CLUSTER; k as usize])?;
                    pos = (ci + k) << cb;
                    continue;
                }
            }
            pos = cluster_end;
        }
        Ok(())
    }

    /// Rewrite the backing file reference (`rebase`): header and name in
    /// one synchronous write, as QEMU does.
    fn change_backing(&self, backing: Option<&BackingRef>) -> Result<()> {
        self.prepare_write()?;
        let _w = self.write_lock.lock();
        let mut h = self.hdr.lock().clone();
        h.features &= !(F_BACKING_FILE | F_BACKING_FORMAT_NO_PROBE);
        let name = backing.map_or(&[][..], |b| b.filename.as_bytes());
        if let Some(b) = backing {
            h.features |= F_BACKING_FILE;
            if b.format.as_deref() == Some("raw") {
                h.features |= F_BACKING_FORMAT_NO_PROBE;
            }
        }
        h.backing_filename_offset = HEADER_LEN as u32;
        h.backing_filename_size = name.len() as u32;
        if (HEADER_LEN + name.len()) as u64 > self.geo.header_bytes {
            return Err(Error::from_errno(libc::ENOSPC));
        }
        let mut buf = h.serialize().to_vec();
        buf.extend_from_slice(name);
        self.file.write_at(&buf, 0)?;
        self.file.flush()?;
        *self.hdr.lock() = h;
        Ok(())
    }

    /// Grow the image (QED cannot shrink or preallocate).
    fn resize(&self, size: u64, prealloc: Prealloc) -> Result<()> {
        if prealloc != Prealloc::Off {
            return Err(Error::unsupported(format!(
                "Unsupported preallocation mode '{}'",
                prealloc.name()
            )));
        }
        if !image_size_valid(size, self.cs(), self.geo.table_size) {
            return Err(Error::invalid("Invalid image size specified"));
        }
        if size < self.virtual_size() {
            return Err(Error::unsupported(
                "Shrinking images is currently not supported",
            ));
        }
        self.prepare_write()?;
        let _w = self.write_lock.lock();
        self.update_header(|h| h.image_size = size)?;
        self.size.store(size, Ordering::Release);
        self.file.flush()
    }
}

/// The backing file name, validated as QEMU does; None when empty.
fn read_backing_name(file: &HostFile, h: &Header, header_bytes: u64) -> Result<Option<String>> {
    let off = h.backing_filename_offset as u64;
    let len = h.backing_filename_size as u64;
    if off + len > header_bytes {
        return Err(Error::corrupt("QED backing filename offset is invalid"));
    }
    if h.backing_filename_size > MAX_BACKING_NAME {
        return Err(Error::invalid("Failed to read backing filename"));
    }
    let mut name = vec![0u8; len as usize];
    file.read_at(&mut name, off)?;
    let n = name.iter().position(|&c| c == 0).unwrap_or(name.len());
    Ok((n > 0).then(|| String::from_utf8_lossy(&name[..n]).into_owned()))
}

impl Driver for Qed {
    fn format_name(&self) -> &'static str {
        "qed"
    }
    fn virtual_size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }
    fn host_file(&self) -> &HostFile {
        &self.file
    }
    fn backing(&self) -> Option<BackingRef> {
        self.backing.clone()
    }
    fn info(&self) -> DriverInfo {
        // QEMU does not report the need-check bit as a dirty flag.
        DriverInfo {
            cluster_size: Some(self.cs()),
            ..DriverInfo::default()
        }
    }
    fn block_status(&self, off: u64, max: u64) -> Result<Extent> {
        self.status(off, max)
    }
    fn read_at(&self, buf: &mut [u8], off: u64, backing: &dyn BackingRead) -> Result<()> {
        self.read(buf, off, backing)
    }
    fn write_at(&self, buf: &[u8], off: u64, backing: &dyn BackingRead) -> Result<()> {
        self.write(buf, off, backing)
    }
    fn write_zeroes(
        &self,
        off: u64,
        len: u64,
        may_unmap: bool,
        backing: &dyn BackingRead,
    ) -> Result<()> {
        self.zero(off, len, may_unmap, backing)
    }
    fn flush(&self) -> Result<()> {
        self.file.flush()
    }
    fn truncate(&self, size: u64, prealloc: Prealloc) -> Result<()> {
        self.resize(size, prealloc)
    }
    fn io_granularity(&self) -> u64 {
        self.cs().max(65536)
    }
    fn truncate_zeroed(
        &self,
        _size: u64,
        _prealloc: Prealloc,
        _backing: &dyn BackingRead,
    ) -> Result<()> {
        // Growing over a longer backing file needs zeroing QED cannot do.
        Err(Error::unsupported(
            "Block driver does not support requested flags",
        ))
    }
    fn make_empty(&self) -> Result<()> {
        // QED cannot empty itself; QEMU's commit then leaves the image as
        // it is (and reports success), so do we.
        Ok(())
    }
    fn set_backing(&self, backing: Option<&BackingRef>) -> Result<()> {
        self.change_backing(backing)
    }
    fn check(&self, repair: Repair, log: &mut dyn FnMut(&str)) -> Result<CheckResult> {
        // QED fixes what it can under either repair mode (and never leaks).
        self.check_image(repair != Repair::None, log)
    }
    fn close(&self) -> Result<()> {
        if !self.writable {
            return Ok(());
        }
        self.file.flush()?;
        // Clean shutdown: no check needed on the next open.
        self.set_need_check(false)
    }
}

impl Drop for Qed {
    fn drop(&mut self) {
        let _ = Driver::close(self);
    }
}

/// Create a QED image: header cluster (with the backing name), zeroed L1.
pub fn create(path: &Path, size: u64, opts: &CreateOptions) -> Result<()> {
    super::qcow::check_protocol_prealloc(opts)?;
    let cs = opts
        .get_size("cluster_size")?
        .unwrap_or(DEFAULT_CLUSTER_SIZE);
    let ts = opts.get_size("table_size")?.unwrap_or(DEFAULT_TABLE_SIZE);
    let size = size
        .checked_next_multiple_of(512)
        .ok_or_else(|| Error::invalid("Image size too large"))?;
    if !cluster_size_valid(cs) {
        return Err(Error::invalid(format!(
            "QED cluster size must be within range [{MIN_CLUSTER_SIZE}, {MAX_CLUSTER_SIZE}] and power of 2"
        )));
    }
    if !table_size_valid(ts) {
        return Err(Error::invalid(format!(
            "QED table size must be within range [1, {MAX_TABLE_SIZE}] and power of 2"
        )));
    }
    if !image_size_valid(size, cs, ts) {
        return Err(Error::invalid(format!(
            "QED image size must be a non-zero multiple of cluster size and less than {} bytes",
            max_image_size(cs, ts)
        )));
    }
    let mut h = Header {
        cluster_size: cs as u32,
        table_size: ts as u32,
        header_size: 1,
        features: 0,
        compat_features: 0,
        autoclear_features: 0,
        l1_table_offset: cs,
        image_size: size,
        backing_filename_offset: 0,
        backing_filename_size: 0,
    };
    let mut first = h.serialize().to_vec();
    if let Some(name) = opts.get("backing_file") {
        let n = name.len();
        if HEADER_LEN + n > cs as usize || n > MAX_BACKING_NAME as usize {
            return Err(Error::invalid("Backing file name too long"));
        }
        h.features |= F_BACKING_FILE;
        if opts.get("backing_fmt") == Some("raw") {
            h.features |= F_BACKING_FORMAT_NO_PROBE;
        }
        h.backing_filename_offset = HEADER_LEN as u32;
        h.backing_filename_size = n as u32;
        first = h.serialize().to_vec();
        first.extend_from_slice(name.as_bytes());
    }
    let file = HostFile::create(path)?;
    file.write_at(&first, 0)?;
    // QEMU writes the L1 table as zeros; a sparse extension reads the same.
    file.set_len(cs + ts * cs)?;
    file.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_limits_like_qemu() {
        assert_eq!(max_image_size(4096, 1), 1 << 30);
        // 64 MiB clusters with 4-cluster tables wrap to 0 in QEMU's math.
        assert_eq!(max_image_size(64 << 20, 4), 0);
        assert!(image_size_valid(0, 65536, 4));
        assert!(!image_size_valid(1000, 65536, 4));
        assert!(!cluster_size_valid(2048));
        assert!(!table_size_valid(0));
        assert!(!table_size_valid(3));
        let g = Geo {
            cluster_bits: 12,
            table_size: 1,
            nelems: 512,
            header_bytes: 4096,
            l1_offset: 4096,
        };
        // One-cluster tables are never valid in QEMU's check.
        assert!(!g.table_ok(4096, 1 << 20));
    }

    #[test]
    fn header_round_trip() {
        let h = Header {
            cluster_size: 65536,
            table_size: 4,
            header_size: 1,
            features: 5,
            compat_features: 0,
            autoclear_features: 0,
            l1_table_offset: 65536,
            image_size: 1 << 20,
            backing_filename_offset: 64,
            backing_filename_size: 3,
        };
        assert_eq!(Header::parse(&h.serialize()), h);
    }
}
