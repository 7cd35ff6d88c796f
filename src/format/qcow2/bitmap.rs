//! Persistent dirty bitmaps (docs/interop/qcow2.txt, "Bitmaps extension",
//! "Bitmap directory", "Bitmap table").
//!
//! As in QEMU, the directory is validated at open; a writer loads every
//! bitmap into memory, marks them in_use on disk (in place, with the
//! autoclear bit dropped meanwhile), sets dirty bits for guest writes and
//! stores everything back on close: new data and tables, a new directory,
//! a flush, then the header switch, and only then the old clusters freed.

use super::header::{self, Extension, Header};
use super::Qcow2;
use crate::error::{Error, ErrorKind, Result};
use crate::format::bytes::{be32, be64};
use crate::format::{BitmapData, BitmapInfo};
use crate::io::HostFile;

pub const EXT_BITMAPS: u32 = 0x2385_2875;
/// QEMU's limits (QCOW2_MAX_BITMAPS, QCOW2_MAX_BITMAP_DIRECTORY_SIZE and
/// the BME_* constants of qcow2-bitmap.c).
const MAX_BITMAPS: u32 = 65535;
const MAX_DIR_SIZE: u64 = 1024 * MAX_BITMAPS as u64;
const MAX_TABLE_SIZE: u64 = 0x800_0000;
const MAX_PHYS_SIZE: u64 = 0x2000_0000;
const MIN_GRAN_BITS: u32 = 9;
const MAX_GRAN_BITS: u32 = 31;
const MAX_NAME: usize = 1023;
const FLAG_IN_USE: u32 = 1;
const FLAG_AUTO: u32 = 2;
const RESERVED_FLAGS: u32 = !3;
const TYPE_DIRTY_TRACKING: u8 = 1;
const TE_RESERVED: u64 = 0xff00_0000_0000_01fe;
const TE_OFFSET: u64 = 0x00ff_ffff_ffff_fe00;
const TE_ALL_ONES: u64 = 1;
const ENTRY_FIXED: usize = 24;
/// qemu-img's BlockBackend is anonymous, so QEMU names the node; the
/// number is an artefact of its node counter.
pub const NODE_NAME: &str = "#block103";

/// One bitmap directory entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct DirEntry {
    pub table_offset: u64,
    pub table_size: u32,
    pub flags: u32,
    pub gran_bits: u32,
    pub name: String,
}

/// A bitmap held in memory while the image is open for writing (QEMU's
/// BdrvDirtyBitmap).
#[derive(Debug)]
struct Live {
    name: String,
    gran_bits: u32,
    enabled: bool,
    /// in_use when loaded: its data is unusable and it is stored untouched.
    inconsistent: bool,
    bits: Vec<u8>,
}

/// Bitmap state of an open image.
#[derive(Debug, Default)]
pub(super) struct Bitmaps {
    /// The directory as on disk (empty when there is no valid extension).
    dir: Vec<DirEntry>,
    dir_offset: u64,
    dir_size: u64,
    /// An extension exists but the autoclear bit is clear: its bitmaps
    /// are void and a writer drops the extension.
    stale_ext: bool,
    /// Loaded for writing.
    live: Option<Vec<Live>>,
    /// Entries removed while loaded: their clusters are freed on store.
    dropped: Vec<DirEntry>,
}

fn gran_bits_of(g: u64) -> u32 {
    g.trailing_zeros()
}

/// Bytes of the serialised bitmap for `size` guest bytes.
fn bitmap_bytes(size: u64, gran_bits: u32) -> u64 {
    size.div_ceil(1u64 << gran_bits).div_ceil(8)
}

fn entry_size(name_len: usize) -> u64 {
    ((ENTRY_FIXED + name_len) as u64).div_ceil(8) * 8
}

fn check_table_entry(e: u64, cs: u64) -> bool {
    if e & TE_RESERVED != 0 {
        return false;
    }
    let off = e & TE_OFFSET;
    off == 0 || (e & TE_ALL_ONES == 0 && off.is_multiple_of(cs))
}

/// QEMU's check_dir_entry.
fn entry_ok(e: &DirEntry, cs: u64, vsize: u64, entry_type: u8) -> bool {
    if e.table_size == 0
        || e.table_offset == 0
        || !e.table_offset.is_multiple_of(cs)
        || e.table_size as u64 > MAX_TABLE_SIZE
        || !(MIN_GRAN_BITS..=MAX_GRAN_BITS).contains(&e.gran_bits)
        || e.flags & RESERVED_FLAGS != 0
        || e.name.len() > MAX_NAME
        || entry_type != TYPE_DIRTY_TRACKING
    {
        return false;
    }
    let phys = e.table_size as u64 * cs;
    if phys > MAX_PHYS_SIZE {
        return false;
    }
    // A consistent bitmap's table must cover the whole disk.
    e.flags & FLAG_IN_USE != 0 || vsize <= (phys * 8) << e.gran_bits
}

/// Parse the bitmap directory (QEMU's bitmap_list_load, same messages).
fn parse_dir(buf: &[u8], nb: u32, cs: u64, vsize: u64) -> Result<Vec<DirEntry>> {
    let broken = || Error::invalid("Broken bitmap directory");
    let mut v = Vec::new();
    let mut off = 0usize;
    while off < buf.len() {
        if off + ENTRY_FIXED > buf.len() {
            return Err(broken());
        }
        if v.len() as u32 >= nb {
            return Err(Error::invalid(
                "More bitmaps found than specified in header extension",
            ));
        }
        let name_size = u16::from_be_bytes([buf[off + 18], buf[off + 19]]) as usize;
        let extra = be32(buf, off + 20) as usize;
        let size = (ENTRY_FIXED + name_size + extra).div_ceil(8) * 8;
        if size > buf.len() - off {
            return Err(broken());
        }
        let name_at = off + ENTRY_FIXED + extra;
        let name = String::from_utf8_lossy(&buf[name_at..name_at + name_size]).into_owned();
        if extra != 0 {
            return Err(Error::invalid("Bitmap extra data is not supported"));
        }
        let e = DirEntry {
            table_offset: be64(buf, off),
            table_size: be32(buf, off + 8),
            flags: be32(buf, off + 12),
            gran_bits: buf[off + 17] as u32,
            name,
        };
        if !entry_ok(&e, cs, vsize, buf[off + 16]) {
            return Err(Error::invalid(format!(
                "Bitmap '{}' doesn't satisfy the constraints",
                e.name
            )));
        }
        v.push(e);
        off += size;
    }
    if v.len() as u32 != nb {
        return Err(Error::invalid(
            "Less bitmaps found than specified in header extension",
        ));
    }
    Ok(v)
}

fn serialize_dir(dir: &[DirEntry]) -> Vec<u8> {
    let mut b = Vec::new();
    for e in dir {
        let start = b.len();
        b.extend_from_slice(&e.table_offset.to_be_bytes());
        b.extend_from_slice(&e.table_size.to_be_bytes());
        b.extend_from_slice(&e.flags.to_be_bytes());
        b.push(TYPE_DIRTY_TRACKING);
        b.push(e.gran_bits as u8);
        b.extend_from_slice(&(e.name.len() as u16).to_be_bytes());
        b.extend_from_slice(&0u32.to_be_bytes());
        b.extend_from_slice(e.name.as_bytes());
        b.resize(start + entry_size(e.name.len()) as usize, 0);
    }
    b
}

fn ext_data(nb: u32, dir_size: u64, dir_offset: u64) -> Vec<u8> {
    let mut d = Vec::with_capacity(24);
    d.extend_from_slice(&nb.to_be_bytes());
    d.extend_from_slice(&0u32.to_be_bytes());
    d.extend_from_slice(&dir_size.to_be_bytes());
    d.extend_from_slice(&dir_offset.to_be_bytes());
    d
}

/// Point `h` at a new directory (None: no bitmaps, extension removed).
fn set_ext(h: &mut Header, dir: Option<(u32, u64, u64)>) {
    let pos = h.other_exts.iter().position(|e| e.kind == EXT_BITMAPS);
    if let Some(p) = pos {
        h.other_exts.remove(p);
    }
    match dir {
        Some((nb, size, off)) => {
            // QEMU writes it first after the feature table.
            h.other_exts.insert(
                pos.unwrap_or(0),
                Extension {
                    kind: EXT_BITMAPS,
                    data: ext_data(nb, size, off),
                },
            );
            h.autoclear |= header::AUTOCLEAR_BITMAPS;
        }
        None => h.autoclear &= !header::AUTOCLEAR_BITMAPS,
    }
}

fn inconsistent_error(name: &str) -> Error {
    Error::invalid(format!(
        "Bitmap '{name}' is inconsistent and cannot be used\nTry block-dirty-bitmap-remove to delete this bitmap from disk"
    ))
}

fn not_found(name: &str) -> Error {
    Error::new(
        ErrorKind::NotFound,
        format!("Dirty bitmap '{name}' not found"),
    )
}

/// Set the bits of `bits` (granularity 2^`gb`) covering [off, off+len).
fn set_range(bits: &mut [u8], gb: u32, off: u64, len: u64) {
    if len == 0 || bits.is_empty() {
        return;
    }
    let first = off >> gb;
    let last = ((off + len - 1) >> gb).min((bits.len() as u64 * 8).saturating_sub(1));
    let mut i = first;
    while i <= last {
        if i.is_multiple_of(8) && i + 8 <= last + 1 {
            bits[(i / 8) as usize] = 0xff;
            i += 8;
            continue;
        }
        bits[(i / 8) as usize] |= 1 << (i % 8);
        i += 1;
    }
}

/// Clear bits past the last one that covers the disk.
fn mask_tail(bits: &mut [u8], nbits: u64) {
    if !nbits.is_multiple_of(8) {
        if let Some(b) = bits.get_mut((nbits / 8) as usize) {
            *b &= (1u8 << (nbits % 8)) - 1;
        }
    }
}

/// Read and validate a bitmap table.
fn read_table(file: &HostFile, cs: u64, off: u64, size: u32) -> Result<Vec<u64>> {
    let bytes = size as u64 * 8;
    if bytes > MAX_PHYS_SIZE / 512 * 8 || off.checked_add(bytes).is_none() {
        return Err(Error::from_errno(libc::EINVAL));
    }
    if off + bytes > file.len()? {
        // Past the end of the file: QEMU reads zeros, which are valid.
        let mut raw = vec![0u8; bytes as usize];
        let avail = file.len()?.saturating_sub(off).min(bytes) as usize;
        if avail > 0 {
            file.read_at(&mut raw[..avail], off)?;
        }
        return validate_table(&raw, cs);
    }
    let mut raw = vec![0u8; bytes as usize];
    file.read_at(&mut raw, off)?;
    validate_table(&raw, cs)
}

fn validate_table(raw: &[u8], cs: u64) -> Result<Vec<u64>> {
    let t = crate::format::bytes::be64_table(raw);
    if t.iter().any(|&e| !check_table_entry(e, cs)) {
        return Err(Error::from_errno(libc::EINVAL));
    }
    Ok(t)
}

impl Bitmaps {
    /// Validate the extension and directory of a freshly opened image
    /// (QEMU's qcow2_read_extensions and bitmap_list_load at open).
    pub(super) fn open(h: &Header, file: &HostFile, vsize: u64) -> Result<Bitmaps> {
        let Some(ext) = h.other_exts.iter().find(|e| e.kind == EXT_BITMAPS) else {
            return Ok(Bitmaps::default());
        };
        if ext.data.len() != 24 {
            return Err(Error::invalid("bitmaps_ext: Invalid extension length"));
        }
        if h.version < 3 || h.autoclear & header::AUTOCLEAR_BITMAPS == 0 {
            let msg = if h.version < 3 {
                "This qcow2 v2 image contains bitmaps, but they may have been modified by a program without persistent bitmap support; so now they must all be considered inconsistent"
            } else {
                "a program lacking bitmap support modified this file, so all bitmaps are now considered inconsistent"
            };
            crate::events::warning(msg);
            crate::events::notice(
                "Some clusters may be leaked, run 'qemu-img check -r' on the image file to fix.",
            );
            return Ok(Bitmaps {
                stale_ext: true,
                ..Bitmaps::default()
            });
        }
        let d = &ext.data;
        if be32(d, 4) != 0 {
            return Err(Error::invalid("bitmaps_ext: Reserved field is not zero"));
        }
        let nb = be32(d, 0);
        let dir_size = be64(d, 8);
        let dir_offset = be64(d, 16);
        let cs = h.cluster_size();
        if nb > MAX_BITMAPS {
            return Err(Error::invalid(format!(
                "bitmaps_ext: Image has {nb} bitmaps, exceeding the QEMU supported maximum of {MAX_BITMAPS}"
            )));
        }
        if nb == 0 {
            return Err(Error::invalid("found bitmaps extension with zero bitmaps"));
        }
        if !dir_offset.is_multiple_of(cs) {
            return Err(Error::invalid(
                "bitmaps_ext: invalid bitmap directory offset",
            ));
        }
        if dir_size > MAX_DIR_SIZE {
            return Err(Error::invalid(format!(
                "bitmaps_ext: bitmap directory size ({dir_size}) exceeds the maximum supported size ({MAX_DIR_SIZE})"
            )));
        }
        if dir_size == 0 {
            return Err(Error::invalid("Requested bitmap directory size is zero"));
        }
        let mut buf = vec![0u8; dir_size as usize];
        let avail = file.len()?.saturating_sub(dir_offset).min(dir_size) as usize;
        if avail > 0 {
            file.read_at(&mut buf[..avail], dir_offset)
                .map_err(|e| e.context("Failed to read bitmap directory"))?;
        }
        let dir = parse_dir(&buf, nb, cs, vsize)?;
        // QEMU loads every consistent bitmap at open: bad tables fail it.
        for e in dir.iter().filter(|e| e.flags & FLAG_IN_USE == 0) {
            read_table(file, cs, e.table_offset, e.table_size).map_err(|x| {
                let t = crate::format::errno_text(&x);
                Error::invalid(format!(
                    "Could not read bitmap_table table from image for bitmap '{}': {t}",
                    e.name
                ))
            })?;
            if (bitmap_bytes(vsize, e.gran_bits)).div_ceil(cs) != e.table_size as u64 {
                return Err(Error::invalid(format!(
                    "Could not read bitmap '{}' from image: Invalid argument",
                    e.name
                )));
            }
        }
        Ok(Bitmaps {
            dir,
            dir_offset,
            dir_size,
            stale_ext: false,
            live: None,
            dropped: Vec::new(),
        })
    }

    /// Clusters the bitmaps own, for check: (offset, length) runs, and the
    /// number of bad table entries.
    pub(super) fn clusters(&self, file: &HostFile, cs: u64) -> (Vec<(u64, u64)>, u64) {
        let mut v = Vec::new();
        let mut bad = 0;
        if self.dir.is_empty() {
            return (v, 0);
        }
        v.push((self.dir_offset, self.dir_size));
        for e in &self.dir {
            v.push((e.table_offset, e.table_size as u64 * 8));
            match read_table(file, cs, e.table_offset, e.table_size) {
                Ok(t) => {
                    for te in t {
                        let off = te & TE_OFFSET;
                        if off != 0 {
                            v.push((off, cs));
                        }
                    }
                }
                Err(_) => bad += 1,
            }
        }
        (v, bad)
    }

    pub(super) fn info(&self) -> Vec<BitmapInfo> {
        self.dir
            .iter()
            .map(|e| BitmapInfo {
                name: e.name.clone(),
                granularity: 1u64 << e.gran_bits,
                in_use: e.flags & FLAG_IN_USE != 0,
                auto: e.flags & FLAG_AUTO != 0,
            })
            .collect()
    }

    /// The directory alone, for a read-only view of the same file (an
    /// internal snapshot lists the image's bitmaps, as QEMU's does).
    pub(super) fn directory_copy(&self) -> Bitmaps {
        Bitmaps {
            dir: self.dir.clone(),
            dir_offset: self.dir_offset,
            dir_size: self.dir_size,
            ..Bitmaps::default()
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.dir.is_empty() && self.live.as_ref().is_none_or(|l| l.is_empty())
    }
}

/// Read a consistent bitmap's data from the file.
fn read_bits(file: &HostFile, cs: u64, vsize: u64, e: &DirEntry) -> Result<Vec<u8>> {
    let bytes = bitmap_bytes(vsize, e.gran_bits);
    if bytes.div_ceil(cs) != e.table_size as u64 || bytes > MAX_PHYS_SIZE {
        return Err(Error::invalid(format!(
            "Could not read bitmap '{}' from image: Invalid argument",
            e.name
        )));
    }
    let table = read_table(file, cs, e.table_offset, e.table_size)?;
    let mut bits = vec![0u8; bytes as usize];
    let mut buf = vec![0u8; cs as usize];
    for (i, te) in table.iter().enumerate() {
        let start = i * cs as usize;
        let end = (start + cs as usize).min(bits.len());
        if start >= end {
            break;
        }
        let off = te & TE_OFFSET;
        if off == 0 {
            if te & TE_ALL_ONES != 0 {
                bits[start..end].fill(0xff);
            }
            continue;
        }
        file.read_at(&mut buf, off).map_err(|x| {
            let t = crate::format::errno_text(&x);
            x.with_message(format!(
                "Could not read bitmap '{}' from image: {t}",
                e.name
            ))
        })?;
        bits[start..end].copy_from_slice(&buf[..end - start]);
    }
    mask_tail(&mut bits, vsize.div_ceil(1u64 << e.gran_bits));
    Ok(bits)
}

impl Qcow2 {
    /// Bitmaps on disk, as `info` lists them.
    pub(super) fn bitmap_info(&self) -> Vec<BitmapInfo> {
        self.bitmaps.lock().info()
    }

    /// Load every bitmap for writing and mark them in_use on disk (QEMU
    /// does this when it opens an image read-write).
    pub(super) fn bitmaps_load(&self) -> Result<()> {
        let mut b = self.bitmaps.lock();
        if b.live.is_some() {
            return Ok(());
        }
        if !self.writable {
            return Err(Error::new(
                ErrorKind::PermissionDenied,
                "Image is read-only",
            ));
        }
        let cs = self.cs();
        let vsize = self.virtual_size_now();
        if b.stale_ext {
            // The void extension goes, as QEMU's open drops it.
            let mut h = self.hdr.lock().clone();
            set_ext(&mut h, None);
            self.write_header(&h)?;
            b.stale_ext = false;
        }
        let mut live = Vec::with_capacity(b.dir.len());
        let mut needs_update = false;
        for e in &b.dir {
            let inconsistent = e.flags & FLAG_IN_USE != 0;
            let bits = if inconsistent {
                Vec::new()
            } else {
                needs_update = true;
                read_bits(&self.file, cs, vsize, e)?
            };
            live.push(Live {
                name: e.name.clone(),
                gran_bits: e.gran_bits,
                enabled: e.flags & FLAG_AUTO != 0,
                inconsistent,
                bits,
            });
        }
        if needs_update {
            // In place, with the autoclear bit off meanwhile so that a
            // crash in between leaves bitmaps void rather than corrupt.
            let mut dir = b.dir.clone();
            for e in dir.iter_mut() {
                e.flags |= FLAG_IN_USE;
            }
            let raw = serialize_dir(&dir);
            if raw.len() as u64 != b.dir_size {
                return Err(Error::from_errno(libc::EINVAL));
            }
            let mut h = self.hdr.lock();
            h.autoclear &= !header::AUTOCLEAR_BITMAPS;
            self.file.write_at(&h.autoclear.to_be_bytes(), 88)?;
            self.file.flush()?;
            self.file.write_at(&raw, b.dir_offset)?;
            self.file.flush()?;
            h.autoclear |= header::AUTOCLEAR_BITMAPS;
            self.file.write_at(&h.autoclear.to_be_bytes(), 88)?;
            self.file.flush()?;
            b.dir = dir;
        }
        b.live = Some(live);
        self.bitmap_tracking
            .store(needs_tracking(&b), std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// Record a guest write (or zeroing, or discard) in enabled bitmaps.
    pub(super) fn bitmaps_mark(&self, off: u64, len: u64) {
        if !self
            .bitmap_tracking
            .load(std::sync::atomic::Ordering::Acquire)
        {
            return;
        }
        let vsize = self.virtual_size_now();
        let mut b = self.bitmaps.lock();
        if let Some(live) = b.live.as_mut() {
            for l in live.iter_mut().filter(|l| l.enabled && !l.inconsistent) {
                let need = bitmap_bytes(vsize, l.gran_bits) as usize;
                if l.bits.len() < need {
                    l.bits.resize(need, 0);
                }
                set_range(&mut l.bits, l.gran_bits, off, len);
            }
        }
    }

    /// QEMU's qcow2_truncate_bitmaps_check: bitmaps are resized with the
    /// image, which a void one cannot be.
    pub(super) fn bitmaps_before_resize(&self) -> Result<()> {
        if self.bitmaps.lock().is_empty() {
            return Ok(());
        }
        self.bitmaps_load()?;
        let b = self.bitmaps.lock();
        if let Some(l) = b
            .live
            .as_ref()
            .and_then(|l| l.iter().find(|l| l.inconsistent))
        {
            return Err(Error::unsupported(format!(
                "Bitmap '{}' is inconsistent and cannot be used\nTry block-dirty-bitmap-remove to delete this bitmap from disk",
                l.name
            )));
        }
        Ok(())
    }

    /// After a resize: bitmaps follow the new size (new area clean).
    pub(super) fn bitmaps_resize(&self) {
        let vsize = self.virtual_size_now();
        let mut b = self.bitmaps.lock();
        if let Some(live) = b.live.as_mut() {
            for l in live.iter_mut().filter(|l| !l.inconsistent) {
                l.bits.resize(bitmap_bytes(vsize, l.gran_bits) as usize, 0);
                mask_tail(&mut l.bits, vsize.div_ceil(1u64 << l.gran_bits));
            }
        }
    }

    fn with_live<T>(&self, f: impl FnOnce(&mut Vec<Live>, u64) -> Result<T>) -> Result<T> {
        self.bitmaps_load()?;
        let vsize = self.virtual_size_now();
        let mut b = self.bitmaps.lock();
        let r = match b.live.as_mut() {
            Some(l) => f(l, vsize),
            None => Err(Error::from_errno(libc::EIO)),
        };
        let t = needs_tracking(&b);
        self.bitmap_tracking
            .store(t, std::sync::atomic::Ordering::Release);
        r
    }

    /// `bitmap --add`: `granularity` None takes QEMU's default.
    pub(super) fn bitmap_add(
        &self,
        name: &str,
        granularity: Option<u64>,
        enabled: bool,
    ) -> Result<()> {
        let cs = self.cs();
        let v3 = self.hdr.lock().version >= 3;
        let g = granularity.unwrap_or(cs.clamp(4096, 65536));
        self.with_live(|live, vsize| {
            if live.iter().any(|l| l.name == name) {
                return Err(Error::invalid(format!("Bitmap already exists: {name}")));
            }
            let why = if !v3 {
                Some("Cannot store dirty bitmaps in qcow2 v2 files".to_string())
            } else {
                constraints(name, g, vsize, cs)
                    .or_else(|| {
                        (live.len() as u32 >= MAX_BITMAPS).then(|| {
                            "Maximum number of persistent bitmaps is already reached".into()
                        })
                    })
                    .or_else(|| {
                        let size: u64 = live.iter().map(|l| entry_size(l.name.len())).sum();
                        (size + entry_size(name.len()) > MAX_DIR_SIZE)
                            .then(|| "Not enough space in the bitmap directory".into())
                    })
            };
            if let Some(w) = why {
                return Err(Error::invalid(format!(
                    "Can't make bitmap '{name}' persistent in '{NODE_NAME}': {w}"
                )));
            }
            let gb = gran_bits_of(g);
            live.push(Live {
                name: name.to_string(),
                gran_bits: gb,
                enabled,
                inconsistent: false,
                bits: vec![0u8; bitmap_bytes(vsize, gb) as usize],
            });
            Ok(())
        })
    }

    pub(super) fn bitmap_remove(&self, name: &str) -> Result<()> {
        self.with_live(|live, _| {
            let p = live
                .iter()
                .position(|l| l.name == name)
                .ok_or_else(|| not_found(name))?;
            live.remove(p);
            Ok(())
        })?;
        // Gone from the directory now: a bitmap added again under the
        // same name is a new one (last in the directory, as in QEMU).
        let mut b = self.bitmaps.lock();
        if let Some(p) = b.dir.iter().position(|e| e.name == name) {
            let e = b.dir.remove(p);
            b.dropped.push(e);
        }
        Ok(())
    }

    pub(super) fn bitmap_clear(&self, name: &str) -> Result<()> {
        self.with_live(|live, _| {
            let l = find_usable(live, name)?;
            l.bits.fill(0);
            Ok(())
        })
    }

    pub(super) fn bitmap_set_enabled(&self, name: &str, on: bool) -> Result<()> {
        self.with_live(|live, _| {
            let l = find_usable(live, name)?;
            l.enabled = on;
            Ok(())
        })
    }

    /// A bitmap's contents: from memory when loaded, else from disk.
    pub(super) fn bitmap_read(&self, name: &str) -> Result<BitmapData> {
        let vsize = self.virtual_size_now();
        let b = self.bitmaps.lock();
        if let Some(live) = &b.live {
            let l = live
                .iter()
                .find(|l| l.name == name)
                .ok_or_else(|| not_found(name))?;
            return Ok(BitmapData {
                name: l.name.clone(),
                granularity: 1u64 << l.gran_bits,
                size: vsize,
                inconsistent: l.inconsistent,
                enabled: l.enabled,
                bits: l.bits.clone(),
            });
        }
        let e = b
            .dir
            .iter()
            .find(|e| e.name == name)
            .ok_or_else(|| not_found(name))?;
        let inconsistent = e.flags & FLAG_IN_USE != 0;
        Ok(BitmapData {
            name: e.name.clone(),
            granularity: 1u64 << e.gran_bits,
            size: vsize,
            inconsistent,
            enabled: e.flags & FLAG_AUTO != 0,
            bits: if inconsistent {
                Vec::new()
            } else {
                read_bits(&self.file, self.cs(), vsize, e)?
            },
        })
    }

    /// Names of the bitmaps, in directory order (loaded ones when loaded).
    pub(super) fn bitmap_names(&self) -> Vec<String> {
        let b = self.bitmaps.lock();
        match &b.live {
            Some(l) => l.iter().map(|l| l.name.clone()).collect(),
            None => b.dir.iter().map(|e| e.name.clone()).collect(),
        }
    }

    /// `bitmap --merge`: OR `src` into bitmap `dst`.
    pub(super) fn bitmap_merge(&self, dst: &str, src: &BitmapData) -> Result<()> {
        self.with_live(|live, vsize| {
            let l = find_usable(live, dst)?;
            if src.inconsistent {
                return Err(inconsistent_error(&src.name));
            }
            if src.size != vsize {
                return Err(Error::invalid(format!(
                    "Bitmaps are of different sizes (destination size is {vsize}, source size is {}) and can't be merged",
                    src.size
                )));
            }
            let need = bitmap_bytes(vsize, l.gran_bits) as usize;
            l.bits.resize(need, 0);
            let sg = src.granularity.trailing_zeros();
            if sg == l.gran_bits {
                for (d, s) in l.bits.iter_mut().zip(&src.bits) {
                    *d |= *s;
                }
            } else {
                // Each set source bit sets every target bit it overlaps.
                for (bi, &byte) in src.bits.iter().enumerate() {
                    if byte == 0 {
                        continue;
                    }
                    for bit in 0..8u64 {
                        let a = ((bi as u64) * 8 + bit) << sg;
                        if byte >> bit & 1 == 0 || a >= vsize {
                            continue;
                        }
                        let len = (1u64 << sg).min(vsize - a);
                        set_range(&mut l.bits, l.gran_bits, a, len);
                    }
                }
            }
            mask_tail(&mut l.bits, vsize.div_ceil(1u64 << l.gran_bits));
            Ok(())
        })
    }

    /// Write the bitmaps back (on close): data and tables, a new
    /// directory, flush, header switch, then free what was replaced.
    pub(super) fn bitmaps_store(&self) -> Result<()> {
        let mut b = self.bitmaps.lock();
        let Some(live) = b.live.take() else {
            return Ok(());
        };
        self.bitmap_tracking
            .store(false, std::sync::atomic::Ordering::Release);
        let cs = self.cs();
        let vsize = self.virtual_size_now();
        // Nothing to write when every bitmap is void and none went away
        // (QEMU's need_write).
        let removed = !b.dropped.is_empty();
        if !removed && live.iter().all(|l| l.inconsistent) {
            return Ok(());
        }
        let old_dir = std::mem::take(&mut b.dir);
        let mut new_dir = Vec::with_capacity(live.len());
        let mut drop_tables: Vec<(u64, u32)> = std::mem::take(&mut b.dropped)
            .iter()
            .map(|e| (e.table_offset, e.table_size))
            .collect();
        let mut m = self.meta.lock();
        for e in &old_dir {
            match live.iter().find(|l| l.name == e.name) {
                Some(l) if l.inconsistent => new_dir.push(e.clone()),
                _ => drop_tables.push((e.table_offset, e.table_size)),
            }
        }
        // Directory order: surviving entries first, then new bitmaps.
        let mut order: Vec<&Live> = Vec::new();
        for e in &old_dir {
            if let Some(l) = live.iter().find(|l| l.name == e.name) {
                order.push(l);
            }
        }
        // New ones newest first, as QEMU walks its list (newest at the
        // head).
        for l in live.iter().rev() {
            if !old_dir.iter().any(|e| e.name == l.name) {
                order.push(l);
            }
        }
        new_dir.clear();
        for l in order {
            if l.inconsistent {
                if let Some(e) = old_dir.iter().find(|e| e.name == l.name) {
                    new_dir.push(e.clone());
                }
                continue;
            }
            let (toff, tsize) = self.write_bitmap(&mut m.rc, l, vsize, cs)?;
            new_dir.push(DirEntry {
                table_offset: toff,
                table_size: tsize,
                flags: if l.enabled { FLAG_AUTO } else { 0 },
                gran_bits: l.gran_bits,
                name: l.name.clone(),
            });
        }
        let old_loc = (b.dir_offset, b.dir_size);
        let mut h = self.hdr.lock().clone();
        if new_dir.is_empty() {
            set_ext(&mut h, None);
            b.dir_offset = 0;
            b.dir_size = 0;
        } else {
            let raw = serialize_dir(&new_dir);
            let n = (raw.len() as u64).div_ceil(cs);
            let off = m.rc.alloc(&self.file, n)?;
            // Only the directory's bytes, as QEMU writes (the file
            // length then matches).
            self.file.write_at(&raw, off)?;
            set_ext(&mut h, Some((new_dir.len() as u32, raw.len() as u64, off)));
            b.dir_offset = off;
            b.dir_size = raw.len() as u64;
        }
        drop(m);
        self.write_header(&h)?;
        b.dir = new_dir;
        let mut m = self.meta.lock();
        if old_loc.1 > 0 {
            let c = old_loc.0 / cs;
            m.rc.free_or_leak(&self.file, c, old_loc.1.div_ceil(cs));
        }
        for (off, size) in drop_tables {
            // A table that does not read back cleanly leaks, as in QEMU.
            if let Ok(t) = read_table(&self.file, cs, off, size) {
                for te in t {
                    let d = te & TE_OFFSET;
                    if d != 0 {
                        m.rc.free_or_leak(&self.file, d / cs, 1);
                    }
                }
                m.rc.free_or_leak(&self.file, off / cs, (size as u64 * 8).div_ceil(cs));
            }
        }
        drop(m);
        self.file.flush()
    }

    /// Store one bitmap's data and table; returns the table's location.
    fn write_bitmap(
        &self,
        rc: &mut super::refcount::Refcounts,
        l: &Live,
        vsize: u64,
        cs: u64,
    ) -> Result<(u64, u32)> {
        let bytes = bitmap_bytes(vsize, l.gran_bits);
        let tsize = bytes.div_ceil(cs);
        if tsize > MAX_TABLE_SIZE || tsize * cs > MAX_PHYS_SIZE {
            return Err(Error::invalid(format!("Bitmap '{}' is too big", l.name)));
        }
        let mut bits = l.bits.clone();
        bits.resize(bytes as usize, 0);
        mask_tail(&mut bits, vsize.div_ceil(1u64 << l.gran_bits));
        let mut table = Vec::with_capacity(tsize as usize * 8);
        for chunk in bits.chunks(cs as usize) {
            let mut e = 0u64;
            if chunk.iter().any(|&x| x != 0) {
                e = rc.alloc(&self.file, 1)?;
                let mut buf = chunk.to_vec();
                buf.resize(cs as usize, 0);
                self.file.write_at(&buf, e)?;
            }
            table.extend_from_slice(&e.to_be_bytes());
        }
        let n = (tsize * 8).div_ceil(cs);
        let toff = rc.alloc(&self.file, n)?;
        self.file.write_at(&table, toff)?;
        Ok((toff, tsize as u32))
    }
}

fn needs_tracking(b: &Bitmaps) -> bool {
    b.live
        .as_ref()
        .is_some_and(|l| l.iter().any(|l| l.enabled && !l.inconsistent))
}

fn find_usable<'a>(live: &'a mut [Live], name: &str) -> Result<&'a mut Live> {
    let l = live
        .iter_mut()
        .find(|l| l.name == name)
        .ok_or_else(|| not_found(name))?;
    if l.inconsistent {
        return Err(inconsistent_error(name));
    }
    Ok(l)
}

/// QEMU's check_constraints_on_bitmap (None: fine).
fn constraints(name: &str, g: u64, vsize: u64, cs: u64) -> Option<String> {
    let gb = gran_bits_of(g);
    if gb > MAX_GRAN_BITS {
        return Some(format!(
            "Granularity exceeds maximum ({} bytes)",
            1u64 << MAX_GRAN_BITS
        ));
    }
    if gb < MIN_GRAN_BITS {
        return Some(format!(
            "Granularity is under minimum ({} bytes)",
            1u64 << MIN_GRAN_BITS
        ));
    }
    let bytes = bitmap_bytes(vsize, gb);
    if bytes > MAX_PHYS_SIZE || bytes > MAX_TABLE_SIZE * cs {
        return Some(
            "Too much space will be occupied by the bitmap. Use larger granularity".into(),
        );
    }
    if name.len() > MAX_NAME {
        return Some(format!(
            "Name length exceeds maximum ({MAX_NAME} characters)"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_set_lsb_first() {
        let mut b = vec![0u8; 4];
        set_range(&mut b, 16, 0, 1);
        assert_eq!(b, [1, 0, 0, 0]);
        set_range(&mut b, 16, 65536 * 3, 65536 * 10);
        assert_eq!(b, [0xf9, 0x1f, 0, 0]);
        // Clipped to the bitmap.
        set_range(&mut b, 16, 65536 * 30, 65536 * 10);
        assert_eq!(b[3], 0xc0);
    }

    #[test]
    fn directory_round_trips_and_garbage_fails() {
        let d = vec![
            DirEntry {
                table_offset: 0x30000,
                table_size: 1,
                flags: FLAG_AUTO,
                gran_bits: 16,
                name: "b0".into(),
            },
            DirEntry {
                table_offset: 0x40000,
                table_size: 1,
                flags: 0,
                gran_bits: 17,
                name: "x".repeat(9),
            },
        ];
        let raw = serialize_dir(&d);
        assert_eq!(parse_dir(&raw, 2, 65536, 1 << 20).ok(), Some(d));
        assert!(parse_dir(&raw, 1, 65536, 1 << 20).is_err());
        assert!(parse_dir(&raw, 3, 65536, 1 << 20).is_err());
        assert!(parse_dir(&raw[..30], 2, 65536, 1 << 20).is_err());
        let mut bad = raw.clone();
        bad[18] = 0xff;
        assert!(parse_dir(&bad, 2, 65536, 1 << 20).is_err());
        for i in 0..raw.len() {
            let mut g = raw.clone();
            g[i] ^= 0xa5;
            let _ = parse_dir(&g, 2, 65536, 1 << 20);
        }
    }
}
