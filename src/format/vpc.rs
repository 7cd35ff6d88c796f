//! vpc: Microsoft Virtual PC / Hyper-V VHD images (fixed and dynamic).
//!
//! On disk (Microsoft's VHD specification): a 512-byte footer ("conectix",
//! big-endian fields, one's-complement byte-sum checksum) at the end of the
//! file, and for dynamic disks a copy of it at offset 0 followed by the
//! dynamic disk header ("cxsparse") and the block allocation table (BAT:
//! one big-endian sector number per block, 0xFFFFFFFF when unallocated).
//! Every allocated block is a sector bitmap followed by the block's data.
//!
//! Behaviour follows QEMU's driver: the virtual size comes from the CHS
//! geometry unless the creator application is one that trusts the footer's
//! current size (or the geometry is the maximum one); reads ignore the
//! sector bitmaps; writes set a block's bitmap to all ones; new blocks go
//! where the footer was, and the footer moves behind them.

use std::path::Path;

use parking_lot::{Mutex, RwLock};

use super::{
    BackingRead, CreateOptions, Driver, DriverInfo, DriverOpenOptions, Extent, OptDesc, OptKind,
    Status,
};
use crate::error::{Error, ErrorKind, Result};
use crate::format::bytes::{be16, be32, be64};
use crate::io::HostFile;

pub const CREATE_OPTS: &[OptDesc] = &[
    OptDesc {
        name: "extent_size_hint",
        kind: OptKind::Size,
        help: "Extent size hint for the image file, 0 to disable",
    },
    OptDesc {
        name: "force_size",
        kind: OptKind::Bool,
        help: "Force disk size calculation to use the actual size specified, rather than using the nearest CHS-based calculation",
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
        name: "subformat",
        kind: OptKind::Str,
        help: "Type of virtual hard disk format. Supported formats are {dynamic (default) | fixed} ",
    },
];

const FOOTER_SIZE: usize = 512;
const DYN_HEADER_SIZE: usize = 1024;
const SECTOR: u64 = 512;

const TYPE_FIXED: u32 = 2;
const TYPE_DYNAMIC: u32 = 3;

/// Seconds from the Unix epoch to 2000-01-01 00:00:00 UTC (VHD's epoch).
const TIMESTAMP_BASE: u64 = 946_684_800;

const CHS_MAX_C: u64 = 65535;
const CHS_MAX_H: u64 = 16;
const CHS_MAX_S: u64 = 255;
/// 2040 GiB in sectors: the largest disk QEMU accepts.
const MAX_SECTORS: u64 = 0xff00_0000;
const MAX_GEOMETRY: u64 = CHS_MAX_C * CHS_MAX_H * CHS_MAX_S;

/// Default (and only created) block size of dynamic disks.
const DEFAULT_BLOCK_SIZE: u64 = 0x20_0000;
const BAT_UNUSED: u32 = 0xffff_ffff;

// Footer field offsets.
const F_CREATOR_APP: usize = 28;
const F_CURRENT_SIZE: usize = 48;
const F_CYLS: usize = 56;
const F_HEADS: usize = 58;
const F_SECS: usize = 59;
const F_TYPE: usize = 60;
const F_CHECKSUM: usize = 64;
const F_DATA_OFFSET: usize = 16;

pub fn probe(head: &[u8]) -> bool {
    head.len() >= 8 && &head[..8] == b"conectix"
}

/// One's complement of the byte sum (footer and dynamic header checksum),
/// computed with the checksum field counted as zero.
fn checksum(buf: &[u8], field: usize) -> u32 {
    let mut sum: u32 = 0;
    for (i, &b) in buf.iter().enumerate() {
        if !(field..field + 4).contains(&i) {
            sum = sum.wrapping_add(b as u32);
        }
    }
    !sum
}

/// Creator applications whose images are sized by the footer's current
/// size rather than the CHS geometry (Hyper-V, disk2vhd, Xen, QEMU with
/// force_size).
fn trusts_current_size(app: &[u8]) -> bool {
    matches!(app, b"win " | b"qem2" | b"d2v " | b"CTXS" | b"tap\0")
}

/// CHS geometry for a number of sectors, the VHD specification's
/// algorithm with heads allowed up to 16 and sizes clamped to the largest
/// geometry. Returns (cylinders, heads, sectors per track).
fn calculate_geometry(total_sectors: u64) -> (u64, u64, u64) {
    let ts = total_sectors.min(MAX_GEOMETRY);
    let (spt, heads, cth);
    if ts >= 65535 * 16 * 63 {
        spt = 255;
        heads = 16;
        cth = ts / spt;
    } else {
        let mut s = 17;
        let mut c = ts / s;
        let mut h = c.div_ceil(1024).max(4);
        if c >= h * 1024 || h > 16 {
            s = 31;
            h = 16;
            c = ts / s;
        }
        if c >= h * 1024 {
            s = 63;
            h = 16;
            c = ts / s;
        }
        spt = s;
        heads = h;
        cth = c;
    }
    (cth / heads, heads, spt)
}

/// Geometry and sector count qemu-img gives an image of `size` bytes
/// (already a multiple of 512): the smallest CHS geometry that holds it,
/// or the maximum geometry with the exact size (force_size, or disks larger
/// than CHS can describe).
fn rounded_geometry(size: u64, force_size: bool) -> Result<((u64, u64, u64), u64)> {
    let geo = if force_size {
        (CHS_MAX_C, CHS_MAX_H, CHS_MAX_S)
    } else {
        let want = (size / SECTOR).min(MAX_GEOMETRY);
        let mut geo = (0, 0, 0);
        let mut i = 0;
        while want > geo.0 * geo.1 * geo.2 {
            geo = calculate_geometry(want + i);
            i += 1;
        }
        geo
    };
    let sectors = if geo.0 * geo.1 * geo.2 == MAX_GEOMETRY {
        let s = size / SECTOR;
        if s > MAX_SECTORS {
            return Err(too_large());
        }
        s
    } else {
        geo.0 * geo.1 * geo.2
    };
    Ok((geo, sectors))
}

fn too_large() -> Error {
    Error::invalid("The image size is too large for file format 'vpc'")
}

/// Random (version 4) UUID bytes, as QEMU's qemu_uuid_generate makes them.
pub(crate) fn random_uuid() -> [u8; 16] {
    let mut u = [0u8; 16];
    fill_random(&mut u);
    u[6] = (u[6] & 0x0f) | 0x40;
    u[8] = (u[8] & 0x3f) | 0x80;
    u
}

/// Random bytes from the kernel; falls back to time-seeded bytes when
/// /dev/urandom is unavailable (identifiers only, never secrets).
pub(crate) fn fill_random(buf: &mut [u8]) {
    use std::io::Read;
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        if f.read_exact(buf).is_ok() {
            return;
        }
    }
    let mut x = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0x1234_5678)
        ^ std::process::id() as u64;
    for b in buf.iter_mut() {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        *b = (x >> 33) as u8;
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Dynamic-disk state: the BAT and the allocator.
struct Dynamic {
    block_size: u64,
    bitmap_size: u64,
    bat_offset: u64,
    bat: RwLock<Vec<u32>>,
    alloc: Mutex<Alloc>,
}

struct Alloc {
    /// Where the next block goes (the footer sits there).
    free_data_block_offset: u64,
    /// Blocks whose bitmap we set to all ones since open.
    bitmap_done: Vec<u64>,
}

impl Alloc {
    fn bitmap_is_done(&self, block: u64) -> bool {
        self.bitmap_done
            .get((block / 64) as usize)
            .is_some_and(|w| w & (1 << (block % 64)) != 0)
    }
    fn mark_bitmap_done(&mut self, block: u64) {
        if let Some(w) = self.bitmap_done.get_mut((block / 64) as usize) {
            *w |= 1 << (block % 64);
        }
    }
}

pub struct Vpc {
    file: HostFile,
    footer: [u8; FOOTER_SIZE],
    size: u64,
    /// The footer says fixed: guest bytes are file bytes.
    passthrough: bool,
    /// Found at the start of the file (dynamic disk with a BAT).
    dynamic: Option<Dynamic>,
    writable: bool,
}

impl Vpc {
    pub fn open(file: HostFile, opts: &DriverOpenOptions) -> Result<Self> {
        let file_len = file.len()?;
        let mut footer = [0u8; FOOTER_SIZE];
        file.read_at(&mut footer, 0)?;
        let mut at_start = true;
        if !probe(&footer) {
            if file_len < FOOTER_SIZE as u64 {
                return Err(Error::invalid("File too small for a VHD header"));
            }
            // A fixed disk has its footer only at the end of the file.
            file.read_at(&mut footer, file_len - FOOTER_SIZE as u64)?;
            if !probe(&footer) || be32(&footer, F_TYPE) != TYPE_FIXED {
                return Err(Error::invalid("invalid VPC image"));
            }
            at_start = false;
        }
        if checksum(&footer, F_CHECKSUM) != be32(&footer, F_CHECKSUM) {
            return Err(Error::invalid("Incorrect header checksum"));
        }
        let chs = be16(&footer, F_CYLS) as u64 * footer[F_HEADS] as u64 * footer[F_SECS] as u64;
        let mut sectors = chs;
        if trusts_current_size(&footer[F_CREATOR_APP..F_CREATOR_APP + 4]) || chs == MAX_GEOMETRY {
            sectors = be64(&footer, F_CURRENT_SIZE) / SECTOR;
        }
        if sectors > MAX_SECTORS {
            // QEMU's generic wording for a driver that fails with an errno.
            let e = Error::from_errno(libc::EFBIG);
            let m = format!(
                "Could not open '{}': {}",
                file.path().display(),
                e.message()
            );
            return Err(e.with_message(m));
        }
        let size = sectors * SECTOR;
        let dynamic = if at_start {
            Some(Self::open_dynamic(&file, &footer, file_len, size)?)
        } else {
            None
        };
        Ok(Vpc {
            file,
            footer,
            size,
            passthrough: be32(&footer, F_TYPE) == TYPE_FIXED,
            dynamic,
            writable: opts.writable,
        })
    }

    fn open_dynamic(file: &HostFile, footer: &[u8], file_len: u64, size: u64) -> Result<Dynamic> {
        let hdr_off = be64(footer, F_DATA_OFFSET);
        if hdr_off > i64::MAX as u64 - DYN_HEADER_SIZE as u64 {
            return Err(Error::invalid("Error reading dynamic VHD header"));
        }
        let mut h = [0u8; DYN_HEADER_SIZE];
        file.read_at(&mut h, hdr_off)
            .map_err(|e| e.context("Error reading dynamic VHD header"))?;
        if &h[..8] != b"cxsparse" {
            return Err(Error::invalid("Invalid header magic"));
        }
        let block_size = be32(&h, 32) as u64;
        if !block_size.is_power_of_two() || block_size < SECTOR {
            return Err(Error::invalid(format!("Invalid block size {block_size}")));
        }
        let bitmap_size = (block_size / (8 * SECTOR)).next_multiple_of(SECTOR);
        // QEMU keeps the entry count in a signed int.
        let entries_raw = be32(&h, 28);
        if size / block_size > 0xffff_ffff {
            return Err(Error::invalid("Too many blocks"));
        }
        let entries_signed = entries_raw as i32;
        if entries_signed >= 0 && (entries_raw as u64) * block_size < size {
            return Err(Error::invalid("Page table too small"));
        }
        if entries_signed < 0 || entries_raw > (i32::MAX as u32) / 4 {
            return Err(Error::invalid(format!(
                "Max Table Entries too large ({entries_signed})"
            )));
        }
        let entries = entries_raw as u64;
        let bat_offset = be64(&h, 16);
        let bat_bytes = entries * 4;
        // Every allocated block and the table itself must lie inside the
        // file (QEMU refuses a truncated image); checking the table's end
        // first bounds the allocation below by the file length.
        let truncated = || {
            Error::invalid(
                "block-vpc: free_data_block_offset points after the end of file. The image has been truncated.",
            )
        };
        let table_end = bat_offset
            .checked_add(bat_bytes)
            .and_then(|e| e.checked_next_multiple_of(SECTOR))
            .filter(|&e| e <= i64::MAX as u64)
            .ok_or_else(|| Error::invalid("Error reading pagetable"))?;
        if table_end > file_len {
            return Err(truncated());
        }
        let mut raw = vec![0u8; bat_bytes as usize];
        file.read_at(&mut raw, bat_offset)
            .map_err(|e| e.context("Error reading pagetable"))?;
        let bat: Vec<u32> = raw.chunks_exact(4).map(|c| be32(c, 0)).collect();
        let mut free = table_end;
        for &e in &bat {
            if e != BAT_UNUSED {
                let next = e as u64 * SECTOR + bitmap_size + block_size;
                free = free.max(next);
            }
        }
        if free > file_len {
            return Err(truncated());
        }
        Ok(Dynamic {
            block_size,
            bitmap_size,
            bat_offset,
            bat: RwLock::new(bat),
            alloc: Mutex::new(Alloc {
                free_data_block_offset: free,
                bitmap_done: vec![0; (entries as usize).div_ceil(64)],
            }),
        })
    }

    /// File offset of guest byte `off` in a dynamic disk, None when its
    /// block is not allocated.
    fn image_offset(d: &Dynamic, off: u64) -> Option<u64> {
        let idx = off / d.block_size;
        let e = *d.bat.read().get(idx as usize)?;
        if e == BAT_UNUSED {
            return None;
        }
        Some(e as u64 * SECTOR + d.bitmap_size + off % d.block_size)
    }

    fn require_writable(&self) -> Result<()> {
        if !self.writable {
            return Err(Error::new(
                ErrorKind::PermissionDenied,
                "Image is read-only",
            ));
        }
        Ok(())
    }

    /// Fixed disks: the guest data must stay in front of the footer.
    fn check_fixed_range(&self, off: u64, len: u64) -> Result<()> {
        let limit = self.file.len()?.saturating_sub(FOOTER_SIZE as u64);
        if off.saturating_add(len) > limit {
            return Err(Error::from_errno(libc::EIO)
                .with_kind(ErrorKind::Corrupt)
                .context("vpc: write would overwrite the footer"));
        }
        Ok(())
    }

    /// Write into an allocated block: the first write since open sets the
    /// block's sector bitmap to all ones, as QEMU does.
    fn ensure_bitmap(&self, d: &Dynamic, block: u64, bitmap_off: u64) -> Result<()> {
        let mut a = d.alloc.lock();
        if a.bitmap_is_done(block) {
            return Ok(());
        }
        self.file
            .write_at(&vec![0xff; d.bitmap_size as usize], bitmap_off)?;
        self.file.flush()?;
        a.mark_bitmap_done(block);
        Ok(())
    }

    /// Allocate block `block` and write `data` at `in_block` inside it, in
    /// crash-safe order: bitmap and data, footer behind the block, then the
    /// BAT entry (an interrupted allocation leaves an unreferenced block
    /// that the next allocation reuses).
    fn allocate_and_write(
        &self,
        d: &Dynamic,
        block: u64,
        in_block: u64,
        data: &[u8],
    ) -> Result<()> {
        let mut a = d.alloc.lock();
        // Another writer may have allocated it while we waited.
        if let Some(off) = Self::image_offset(d, block * d.block_size + in_block) {
            drop(a);
            self.ensure_bitmap(d, block, off - d.bitmap_size - in_block)?;
            return self.file.write_at(data, off);
        }
        let start = a.free_data_block_offset;
        let sector = start / SECTOR;
        if sector >= BAT_UNUSED as u64 || !start.is_multiple_of(SECTOR) {
            return Err(Error::from_errno(libc::EFBIG));
        }
        let end = start + d.bitmap_size + d.block_size;
        let data_start = start + d.bitmap_size;
        // Bytes already past the old end (an interrupted allocation) must
        // not show through as data.
        let flen = self.file.len()?;
        if flen > start + FOOTER_SIZE as u64 {
            self.file
                .write_zeroes(data_start, flen.min(end) - data_start, true)?;
        }
        self.file
            .write_at(&vec![0xff; d.bitmap_size as usize], start)?;
        self.file.write_at(data, data_start + in_block)?;
        self.file.write_at(&self.footer, end)?;
        self.file.flush()?;
        self.file
            .write_at(&(sector as u32).to_be_bytes(), d.bat_offset + 4 * block)?;
        self.file.flush()?;
        if let Some(e) = d.bat.write().get_mut(block as usize) {
            *e = sector as u32;
        }
        a.free_data_block_offset = end;
        a.mark_bitmap_done(block);
        Ok(())
    }
}

impl Driver for Vpc {
    fn format_name(&self) -> &'static str {
        "vpc"
    }
    fn virtual_size(&self) -> u64 {
        self.size
    }
    fn host_file(&self) -> &HostFile {
        &self.file
    }
    fn info(&self) -> DriverInfo {
        DriverInfo {
            cluster_size: match (&self.dynamic, self.passthrough) {
                (Some(d), false) => Some(d.block_size),
                _ => None,
            },
            ..DriverInfo::default()
        }
    }
    /// A fixed image defers to the host file (its holes read as zeros), as
    /// QEMU's vpc asks with BDRV_BLOCK_RECURSE.
    fn defers_to_host(&self, _off: u64) -> bool {
        self.dynamic.is_none() || self.passthrough
    }
    fn block_status(&self, off: u64, max: u64) -> Result<Extent> {
        let d = match (&self.dynamic, self.passthrough) {
            (Some(d), false) => d,
            _ => {
                return Ok(Extent {
                    len: max,
                    status: Status::Data,
                    offset: Some(off),
                    compressed: false,
                });
            }
        };
        let first = Self::image_offset(d, off);
        let mut len = 0;
        let mut pos = off;
        while len < max {
            let n = (d.block_size - pos % d.block_size).min(max - len);
            len += n;
            pos += n;
            if first.is_some() || len >= max || Self::image_offset(d, pos).is_some() {
                break;
            }
        }
        Ok(match first {
            Some(o) => Extent {
                len,
                status: Status::Data,
                offset: Some(o),
                compressed: false,
            },
            None => Extent {
                len,
                status: Status::Zero,
                offset: None,
                compressed: false,
            },
        })
    }
    fn read_at(&self, buf: &mut [u8], off: u64, _backing: &dyn BackingRead) -> Result<()> {
        let d = match (&self.dynamic, self.passthrough) {
            (Some(d), false) => d,
            _ => return self.file.read_at(buf, off),
        };
        let mut done = 0usize;
        while done < buf.len() {
            let pos = off + done as u64;
            let n = ((d.block_size - pos % d.block_size) as usize).min(buf.len() - done);
            let part = &mut buf[done..done + n];
            match Self::image_offset(d, pos) {
                Some(o) => self.file.read_at(part, o)?,
                None => part.fill(0),
            }
            done += n;
        }
        Ok(())
    }
    fn write_at(&self, buf: &[u8], off: u64, _backing: &dyn BackingRead) -> Result<()> {
        self.require_writable()?;
        let d = match (&self.dynamic, self.passthrough) {
            (Some(d), false) => d,
            _ => {
                self.check_fixed_range(off, buf.len() as u64)?;
                return self.file.write_at(buf, off);
            }
        };
        let mut done = 0usize;
        while done < buf.len() {
            let pos = off + done as u64;
            let block = pos / d.block_size;
            let in_block = pos % d.block_size;
            let n = ((d.block_size - in_block) as usize).min(buf.len() - done);
            let part = &buf[done..done + n];
            match Self::image_offset(d, pos) {
                Some(o) => {
                    self.ensure_bitmap(d, block, o - in_block - d.bitmap_size)?;
                    self.file.write_at(part, o)?;
                }
                None => self.allocate_and_write(d, block, in_block, part)?,
            }
            done += n;
        }
        Ok(())
    }
    fn write_zeroes(
        &self,
        off: u64,
        len: u64,
        may_unmap: bool,
        _backing: &dyn BackingRead,
    ) -> Result<()> {
        self.require_writable()?;
        let d = match (&self.dynamic, self.passthrough) {
            (Some(d), false) => d,
            _ => {
                self.check_fixed_range(off, len)?;
                return self.file.write_zeroes(off, len, may_unmap);
            }
        };
        // Unallocated blocks already read as zeros.
        let end = off + len;
        let mut pos = off;
        while pos < end {
            let block = pos / d.block_size;
            let in_block = pos % d.block_size;
            let n = (d.block_size - in_block).min(end - pos);
            if let Some(o) = Self::image_offset(d, pos) {
                self.ensure_bitmap(d, block, o - in_block - d.bitmap_size)?;
                self.file.write_zeroes(o, n, may_unmap)?;
            }
            pos += n;
        }
        Ok(())
    }
    fn flush(&self) -> Result<()> {
        self.file.flush()
    }
    fn io_granularity(&self) -> u64 {
        match &self.dynamic {
            Some(d) if !self.passthrough => d.block_size.min(1 << 20),
            _ => 1 << 20,
        }
    }
}

/// Create a vpc image. `size` is the requested size; qemu-img rounds it to
/// sectors and then to the CHS geometry (unless force_size).
pub fn create(path: &Path, size: u64, opts: &CreateOptions) -> Result<()> {
    match opts.get("preallocation") {
        None | Some("off" | "falloc" | "full") => {}
        Some("metadata") => return Err(Error::invalid("Unsupported preallocation mode: metadata")),
        Some(p) => return Err(Error::invalid(format!("invalid parameter value: {p}"))),
    }
    let fixed = match opts.get("subformat") {
        None | Some("dynamic") => false,
        Some("fixed") => true,
        Some(v) => {
            return Err(Error::invalid(format!(
                "Parameter 'subformat' does not accept value '{v}'"
            )))
        }
    };
    let force_size = opts.get_bool("force_size", false)?;
    let size = size
        .checked_next_multiple_of(SECTOR)
        .ok_or_else(too_large)?;
    if size > i64::MAX as u64 {
        return Err(too_large());
    }
    let ((cyls, heads, spt), sectors) = rounded_geometry(size, force_size)?;
    let total = sectors * SECTOR;

    let mut f = [0u8; FOOTER_SIZE];
    f[..8].copy_from_slice(b"conectix");
    f[8..12].copy_from_slice(&2u32.to_be_bytes());
    f[12..16].copy_from_slice(&0x0001_0000u32.to_be_bytes());
    let data_offset: u64 = if fixed { u64::MAX } else { 512 };
    f[16..24].copy_from_slice(&data_offset.to_be_bytes());
    let ts = now_secs().saturating_sub(TIMESTAMP_BASE) as u32;
    f[24..28].copy_from_slice(&ts.to_be_bytes());
    f[28..32].copy_from_slice(if force_size { b"qem2" } else { b"qemu" });
    f[32..34].copy_from_slice(&5u16.to_be_bytes());
    f[34..36].copy_from_slice(&3u16.to_be_bytes());
    f[36..40].copy_from_slice(b"Wi2k");
    f[40..48].copy_from_slice(&total.to_be_bytes());
    f[48..56].copy_from_slice(&total.to_be_bytes());
    f[56..58].copy_from_slice(&(cyls as u16).to_be_bytes());
    f[58] = heads as u8;
    f[59] = spt as u8;
    let kind = if fixed { TYPE_FIXED } else { TYPE_DYNAMIC };
    f[60..64].copy_from_slice(&kind.to_be_bytes());
    f[68..84].copy_from_slice(&random_uuid());
    let sum = checksum(&f, F_CHECKSUM);
    f[64..68].copy_from_slice(&sum.to_be_bytes());

    let file = HostFile::create(path)?;
    if fixed {
        file.set_len(total + FOOTER_SIZE as u64)?;
        if total > 0 {
            // The file layer allocates the first block of a new file.
            file.write_at(&vec![0u8; total.min(4096) as usize], 0)?;
        }
        file.write_at(&f, total)?;
        return file.flush();
    }
    let entries = sectors.div_ceil(DEFAULT_BLOCK_SIZE / SECTOR);
    let bat_bytes = (entries * 4).next_multiple_of(SECTOR);
    let mut h = [0u8; DYN_HEADER_SIZE];
    h[..8].copy_from_slice(b"cxsparse");
    h[8..16].copy_from_slice(&u64::MAX.to_be_bytes());
    h[16..24].copy_from_slice(&1536u64.to_be_bytes());
    h[24..28].copy_from_slice(&0x0001_0000u32.to_be_bytes());
    h[28..32].copy_from_slice(&(entries as u32).to_be_bytes());
    h[32..36].copy_from_slice(&(DEFAULT_BLOCK_SIZE as u32).to_be_bytes());
    let hsum = checksum(&h, 36);
    h[36..40].copy_from_slice(&hsum.to_be_bytes());
    let mut head = Vec::with_capacity(1536 + bat_bytes as usize + FOOTER_SIZE);
    head.extend_from_slice(&f);
    head.extend_from_slice(&h);
    head.resize(1536 + bat_bytes as usize, 0xff);
    head.extend_from_slice(&f);
    file.write_at(&head, 0)?;
    file.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_rounds_like_qemu() {
        // qemu-img create -f vpc x 100M gives 104865792 bytes.
        let (_, s) = rounded_geometry(100 << 20, false).unwrap();
        assert_eq!(s * 512, 104_865_792);
        // 1000 bytes -> 2 sectors -> 4 heads x 17 sectors x 1 cylinder.
        let (g, s) = rounded_geometry(1024, false).unwrap();
        assert_eq!(g, (1, 4, 17));
        assert_eq!(s * 512, 34816);
        assert_eq!(rounded_geometry(0, false).unwrap().1, 0);
        // Beyond CHS: the exact size with the maximum geometry.
        let (g, s) = rounded_geometry(2040 << 30, false).unwrap();
        assert_eq!(g, (65535, 16, 255));
        assert_eq!(s, MAX_SECTORS);
        assert!(rounded_geometry((2040 << 30) + 512, false).is_err());
        let (_, s) = rounded_geometry(100 << 20, true).unwrap();
        assert_eq!(s * 512, 100 << 20);
    }

    #[test]
    fn checksum_skips_field() {
        let mut b = [1u8; 512];
        b[64..68].copy_from_slice(&[9, 9, 9, 9]);
        assert_eq!(checksum(&b, 64), !508u32);
    }
}
