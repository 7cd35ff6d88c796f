//! vmdk: VMware virtual disks (Virtual Disk Format 1.1).
//!
//! An image is a text descriptor naming one or more extents, either in
//! its own file (monolithicFlat, twoGbMaxExtent*, vmfs*) or embedded in a
//! hosted sparse extent (monolithicSparse, streamOptimized). Flat extents
//! are raw files at an offset; sparse extents map grains through a grain
//! directory (L1) and grain tables (L2), with a redundant directory, and
//! streamOptimized ones hold deflated grains behind markers.
//!
//! Behaviour follows QEMU's driver: the descriptor is read with its
//! substring rules; only "RW" extent lines count; a write allocates a
//! grain at the end of its extent (copying the backing file's data around
//! the request), then updates both grain tables; the first write of a
//! session gives the image a new random CID; reading from the parent
//! requires the parent's CID to match this image's parentCID.
//! Differences from QEMU, all in QEMU's failure modes: a write into a
//! grain with no grain table fails instead of landing at a random offset,
//! copy-on-write reads the parent at the guest offset (QEMU uses the
//! extent-relative one), and partial grains of a streamOptimized image are
//! gathered in memory until complete (QEMU refuses them).

mod create;
mod desc;
mod sparse;

use std::collections::BTreeMap;
use std::path::Path;

use parking_lot::Mutex;

use super::{
    BackingRead, BackingRef, CheckResult, Driver, DriverInfo, DriverOpenOptions, Extent,
    ExtentFile, OptDesc, OptKind, Repair, Status,
};
use crate::error::{Error, ErrorKind, Result};
use crate::io::HostFile;
use crate::json::Json;
pub use create::create;
use sparse::{Lookup, Sparse, Vmdk4Header};

pub const CREATE_OPTS: &[OptDesc] = &[
    OptDesc {
        name: "adapter_type",
        kind: OptKind::Str,
        help: "Virtual adapter type, can be one of ide (default), lsilogic, buslogic or legacyESX",
    },
    OptDesc {
        name: "backing_file",
        kind: OptKind::Str,
        help: "File name of a base image",
    },
    OptDesc {
        name: "backing_fmt",
        kind: OptKind::Str,
        help: "Must be 'vmdk' if present",
    },
    OptDesc {
        name: "compat6",
        kind: OptKind::Bool,
        help: "VMDK version 6 image",
    },
    OptDesc {
        name: "extent_size_hint",
        kind: OptKind::Size,
        help: "Extent size hint for the image file, 0 to disable",
    },
    OptDesc {
        name: "hwversion",
        kind: OptKind::Str,
        help: "VMDK hardware version",
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
        help: "VMDK flat extent format, can be one of {monolithicSparse (default) | monolithicFlat | twoGbMaxExtentSparse | twoGbMaxExtentFlat | streamOptimized} ",
    },
    OptDesc {
        name: "toolsversion",
        kind: OptKind::Str,
        help: "VMware guest tools version",
    },
    OptDesc {
        name: "zeroed_grain",
        kind: OptKind::Bool,
        help: "Enable efficient zero writes using the zeroed-grain GTE feature",
    },
];

/// The embedded descriptor area QEMU reads and rewrites (20 sectors).
const DESC_SIZE: usize = 20 * 512;
/// Descriptors and headers are read up to this size at open.
const READ_DESC_MAX: u64 = (1 << 20) - 1;
/// Nested descriptors (a sparse extent whose header points at another
/// descriptor) we follow before giving up; QEMU has no limit.
const MAX_DEPTH: usize = 8;
/// Extents per image; each holds an open file.
const MAX_EXTENTS: usize = 4096;
/// Partially written grains of a streamOptimized image held in memory.
const MAX_PENDING: usize = 256;

/// Little-endian field of `n` bytes at `o`; 0 when out of range.
pub(crate) fn le(b: &[u8], o: usize, n: usize) -> u64 {
    match b.get(o..o + n) {
        Some(s) => {
            let mut a = [0u8; 8];
            a[..n].copy_from_slice(s);
            u64::from_le_bytes(a)
        }
        None => 0,
    }
}

fn einval() -> Error {
    Error::from_errno(libc::EINVAL)
}

fn eio() -> Error {
    Error::from_errno(libc::EIO).with_kind(ErrorKind::Corrupt)
}

enum Body {
    Flat { offset: u64 },
    Sparse(Sparse),
}

struct VExtent {
    /// Index into `Vmdk::files`.
    file: usize,
    /// As QEMU names the extent's file.
    filename: String,
    /// The descriptor's extent type (None for a monolithic image).
    kind: Option<String>,
    /// First guest byte and length.
    start: u64,
    len: u64,
    body: Body,
}

impl VExtent {
    fn cluster_bytes(&self) -> u64 {
        match &self.body {
            Body::Flat { .. } => self.len,
            Body::Sparse(s) => s.cluster_bytes(),
        }
    }
}

/// A grain of a streamOptimized extent being filled.
struct Pending {
    buf: Vec<u8>,
    /// Covered byte ranges, sorted and merged.
    covered: Vec<(usize, usize)>,
}

impl Pending {
    fn cover(&mut self, a: usize, b: usize) {
        self.covered.push((a, b));
        self.covered.sort_unstable();
        let mut merged: Vec<(usize, usize)> = Vec::with_capacity(self.covered.len());
        for &(s, e) in &self.covered {
            match merged.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        self.covered = merged;
    }
    fn complete(&self) -> bool {
        self.covered.len() == 1 && self.covered[0] == (0, self.buf.len())
    }
}

pub struct Vmdk {
    files: Vec<HostFile>,
    extents: Vec<VExtent>,
    size: u64,
    create_type: String,
    cid: u32,
    parent_cid: u32,
    /// Where the descriptor sits in `files[0]` (0x200 when embedded).
    desc_offset: u64,
    backing: Option<String>,
    writable: bool,
    cid_updated: Mutex<bool>,
    /// Whether the parent's CID matches (checked once, when first needed).
    parent_ok: Mutex<Option<bool>>,
    pending: Mutex<BTreeMap<(usize, u64), Pending>>,
}

pub fn probe(head: &[u8]) -> bool {
    if head.len() < 4 {
        return false;
    }
    let magic = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    if magic == sparse::VMDK3_MAGIC || magic == sparse::VMDK4_MAGIC {
        return true;
    }
    // A text descriptor: comments and blank lines, then "version=N".
    let mut p = 0;
    let end = head.len();
    while p < end {
        if head[p] == b'#' {
            while p < end && head[p] != b'\n' {
                p += 1;
            }
            p += 1;
            continue;
        }
        if head[p] == b' ' {
            while p < end && head[p] == b' ' {
                p += 1;
            }
            if p < end && head[p] == b'\r' {
                p += 1;
            }
            if p == end || head[p] != b'\n' {
                return false;
            }
            p += 1;
            continue;
        }
        let rest = &head[p..];
        for v in [b'1', b'2', b'3'] {
            let mut a = b"version=X\n".to_vec();
            a[8] = v;
            let mut b = b"version=X\r\n".to_vec();
            b[8] = v;
            if rest.starts_with(&a) || rest.starts_with(&b) {
                return true;
            }
        }
        return false;
    }
    false
}

/// Read a descriptor or header: at most 1 MiB - 1 bytes from `off`.
fn read_desc(file: &HostFile, off: u64) -> Result<Vec<u8>> {
    // The file layer counts whole sectors.
    let size = file.len()?.next_multiple_of(512);
    if size < 4 {
        return Err(Error::invalid("File is too small, not a valid image"));
    }
    let n = size.min(READ_DESC_MAX) as usize;
    let mut buf = vec![0u8; n];
    file.read_at(&mut buf, off)
        .map_err(|e| e.context("Could not read from file"))?;
    Ok(buf)
}

/// A C string view of a buffer (up to the first NUL).
fn c_str(buf: &[u8]) -> String {
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// State built while opening.
struct Builder {
    files: Vec<HostFile>,
    extents: Vec<VExtent>,
    create_type: Option<String>,
    writable: bool,
    end: u64,
}

impl Builder {
    fn add(&mut self, file: usize, kind: Option<String>, len: u64, body: Body) -> Result<()> {
        if self.extents.len() >= MAX_EXTENTS {
            return Err(Error::invalid("Too many extents"));
        }
        let start = self.end;
        self.end = start
            .checked_add(len)
            .filter(|&e| e <= i64::MAX as u64)
            .ok_or_else(|| Error::from_errno(libc::EFBIG))?;
        let filename = self.files[file].path().display().to_string();
        self.extents.push(VExtent {
            file,
            filename,
            kind,
            start,
            len,
            body,
        });
        Ok(())
    }

    /// A file starting with a sparse magic (QEMU's vmdk_open_sparse).
    fn open_sparse(&mut self, file: usize, head: &[u8], depth: usize) -> Result<()> {
        let magic = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        match magic {
            sparse::VMDK3_MAGIC => self.open_vmdk3(file, head),
            sparse::VMDK4_MAGIC => self.open_vmdk4(file, head, depth),
            _ => Err(Error::invalid("Image not in VMDK format")),
        }
    }

    fn open_vmdk3(&mut self, file: usize, head: &[u8]) -> Result<()> {
        let f = |i: usize| le(head, 4 + i * 4, 4);
        let (disk_sectors, granularity, l1_off, l1_size) = (f(2), f(3), f(4), f(5));
        let s = Sparse::new(
            &self.files[file],
            l1_off << 9,
            0,
            l1_size,
            4096,
            granularity,
            0,
            0,
            false,
        )?;
        self.add(file, None, disk_sectors * 512, Body::Sparse(s))
    }

    fn open_vmdk4(&mut self, file: usize, head: &[u8], depth: usize) -> Result<()> {
        let f = &self.files[file];
        let name = f.path().display().to_string();
        if head.len() < 4 + sparse::VMDK4_HEADER_LEN {
            return Err(Error::invalid(format!(
                "Could not read header from file '{name}': Invalid argument"
            )));
        }
        let mut h = Vmdk4Header::parse(&head[4..]);
        if h.capacity == 0 && h.desc_offset != 0 {
            let buf = read_desc(f, h.desc_offset.wrapping_shl(9))?;
            return self.open_desc(&buf, depth + 1);
        }
        if self.create_type.is_none() {
            self.create_type = Some("monolithicSparse".into());
        }
        if h.gd_offset == sparse::GD_AT_END {
            // The footer (header copy) takes precedence: it sits between a
            // footer marker and the end-of-stream marker at the end.
            let len = f.len()?.next_multiple_of(512);
            let mut ft = vec![0u8; 1536];
            if len < 1536 {
                return Err(Error::invalid("Failed to read footer: Invalid argument"));
            }
            f.read_at(&mut ft, len - 1536)?;
            let magic = u32::from_be_bytes([ft[512], ft[513], ft[514], ft[515]]);
            if magic != sparse::VMDK4_MAGIC
                || le(&ft, 8, 4) != 0
                || le(&ft, 12, 4) != sparse::MARKER_FOOTER as u64
                || le(&ft, 1024, 8) != 0
                || le(&ft, 1032, 4) != 0
                || le(&ft, 1036, 4) != sparse::MARKER_END_OF_STREAM as u64
            {
                return Err(Error::invalid("Invalid footer"));
            }
            h = Vmdk4Header::parse(&ft[516..]);
        }
        let compressed = h.compress_algorithm == sparse::COMPRESSION_DEFLATE;
        if h.version > 3 {
            return Err(Error::unsupported(format!(
                "Unsupported VMDK version {}",
                h.version
            )));
        }
        if h.version == 3 && self.writable && !compressed {
            return Err(Error::invalid("VMDK version 3 must be read only"));
        }
        if h.num_gtes_per_gt > 512 {
            return Err(Error::invalid("L2 table size too big"));
        }
        let l1_entry_sectors = (h.num_gtes_per_gt as u64).wrapping_mul(h.granularity) as u32 as u64;
        if l1_entry_sectors == 0 {
            return Err(Error::invalid("L1 entry size is invalid"));
        }
        let l1_size =
            (h.capacity.wrapping_add(l1_entry_sectors - 1) / l1_entry_sectors) as u32 as u64;
        let backup = if h.flags & sparse::FLAG_RGD != 0 {
            h.rgd_offset.wrapping_shl(9)
        } else {
            0
        };
        if f.len()?.div_ceil(512) < h.grain_offset {
            return Err(Error::invalid(format!(
                "File truncated, expecting at least {} bytes",
                h.grain_offset.wrapping_mul(512) as i64
            )));
        }
        // QEMU's extent limits (L1 size, granularity) come first.
        let s = Sparse::new(
            f,
            h.gd_offset.wrapping_shl(9),
            backup,
            l1_size,
            h.num_gtes_per_gt as u64,
            h.granularity,
            h.version,
            h.flags,
            compressed,
        )?;
        if h.capacity > (i64::MAX as u64) >> 9 {
            return Err(Error::from_errno(libc::EFBIG));
        }
        if compressed {
            self.create_type = Some("streamOptimized".into());
        }
        self.add(file, None, h.capacity * 512, Body::Sparse(s))
    }

    /// A text descriptor (QEMU's vmdk_open_desc_file).
    fn open_desc(&mut self, buf: &[u8], depth: usize) -> Result<()> {
        if depth > MAX_DEPTH {
            return Err(Error::invalid("VMDK descriptors nested too deeply"));
        }
        let text = c_str(buf);
        let ct = desc::quoted_value(&text, "createType")
            .filter(|c| c.len() < 128)
            .ok_or_else(|| Error::invalid("invalid VMDK image descriptor"))?;
        if !matches!(
            ct.as_str(),
            "monolithicFlat"
                | "vmfs"
                | "vmfsSparse"
                | "seSparse"
                | "twoGbMaxExtentSparse"
                | "twoGbMaxExtentFlat"
        ) {
            return Err(Error::unsupported(format!("Unsupported image type '{ct}'")));
        }
        self.create_type = Some(ct);
        let base = self.files[0].path().display().to_string();
        for line in desc::lines(&text) {
            let e = match line {
                desc::Line::Skip => continue,
                desc::Line::Invalid(l) => {
                    return Err(Error::invalid(format!("Invalid extent line: {l}")))
                }
                desc::Line::Extent(e) => e,
            };
            let path = if e.file.starts_with('/') {
                e.file.clone()
            } else {
                crate::image::combine_backing_path(&base, &e.file)
            };
            if self.files.len() >= MAX_EXTENTS {
                return Err(Error::invalid("Too many extents"));
            }
            let hf = HostFile::open(Path::new(&path), self.writable, self.files[0].cache_mode())?;
            self.files.push(hf);
            let idx = self.files.len() - 1;
            match e.kind.as_str() {
                "FLAT" | "VMFS" => {
                    let offset = (e.flat_offset as u64).wrapping_shl(9);
                    let len = (e.sectors as u64)
                        .checked_mul(512)
                        .ok_or_else(|| Error::from_errno(libc::EFBIG))?;
                    self.add(idx, Some(e.kind), len, Body::Flat { offset })?;
                }
                "SPARSE" | "VMFSSPARSE" => {
                    let head = read_desc(&self.files[idx], 0)?;
                    let before = self.extents.len();
                    self.open_sparse(idx, &head, depth)?;
                    if let Some(x) = self.extents.get_mut(before..).and_then(|s| s.last_mut()) {
                        x.kind = Some(e.kind);
                    }
                }
                _ => {
                    return Err(Error::unsupported(format!(
                        "Unsupported extent type '{}'",
                        e.kind
                    )))
                }
            }
        }
        Ok(())
    }
}

impl Vmdk {
    pub fn open(file: HostFile, opts: &DriverOpenOptions) -> Result<Self> {
        let path = file.path().display().to_string();
        let head = read_desc(&file, 0)?;
        let magic = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        let mut b = Builder {
            files: vec![file],
            extents: Vec::new(),
            create_type: None,
            writable: opts.writable,
            end: 0,
        };
        let desc_offset = if magic == sparse::VMDK3_MAGIC || magic == sparse::VMDK4_MAGIC {
            b.open_sparse(0, &head, 0)?;
            0x200
        } else {
            b.open_desc(&head, 0)?;
            0
        };
        let mut d = vec![0u8; DESC_SIZE];
        b.files[0].read_at(&mut d, desc_offset)?;
        let text = c_str(&d[..DESC_SIZE - 1]);
        let bare = |n: i32| {
            let e = Error::from_errno(n);
            let m = format!("Could not open '{path}': {}", e.message());
            e.with_message(m)
        };
        let backing = desc::parent_hint(&text).map_err(|_| bare(libc::EINVAL))?;
        let cid = desc::read_cid(&text, false).ok_or_else(|| bare(libc::EINVAL))?;
        let parent_cid = desc::read_cid(&text, true).ok_or_else(|| bare(libc::EINVAL))?;
        Ok(Vmdk {
            size: b.end,
            files: b.files,
            extents: b.extents,
            create_type: b.create_type.unwrap_or_default(),
            cid,
            parent_cid,
            desc_offset,
            backing,
            writable: opts.writable,
            cid_updated: Mutex::new(false),
            parent_ok: Mutex::new(None),
            pending: Mutex::new(BTreeMap::new()),
        })
    }

    /// The extent holding guest byte `off`.
    fn find(&self, off: u64) -> Option<(usize, &VExtent)> {
        let i = self.extents.partition_point(|e| e.start + e.len <= off);
        self.extents.get(i).map(|e| (i, e))
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

    /// Whether reading from the parent is allowed: its CID must be this
    /// image's parentCID (QEMU's vmdk_is_cid_valid), checked once.
    fn check_parent(&self) -> Result<()> {
        let mut ok = self.parent_ok.lock();
        if ok.is_none() {
            *ok = Some(self.parent_cid_matches());
        }
        if *ok == Some(true) {
            Ok(())
        } else {
            Err(einval())
        }
    }

    fn parent_cid_matches(&self) -> bool {
        let Some(hint) = &self.backing else {
            return true;
        };
        let p =
            crate::image::combine_backing_path(&self.files[0].path().display().to_string(), hint);
        let Ok(f) = HostFile::open(Path::new(&p), false, self.files[0].cache_mode()) else {
            return false;
        };
        match read_cid_of(&f) {
            Some(c) => c == self.parent_cid,
            None => false,
        }
    }

    /// After the first write of a session: a new random CID.
    fn update_cid(&self) -> Result<()> {
        let mut done = self.cid_updated.lock();
        if *done {
            return Ok(());
        }
        let f = &self.files[0];
        let mut r = [0u8; 4];
        crate::format::vpc::fill_random(&mut r);
        let cid = u32::from_le_bytes(r);
        // QEMU rewrites the whole descriptor buffer: the descriptor file
        // (its length in whole sectors) or the embedded 20 sectors; the
        // text is cut one byte short of the buffer, zeros follow it.
        let size = if self.desc_offset == 0 {
            let len = f.len()?.next_multiple_of(512);
            if len > 16 << 20 {
                crate::events::notice(&crate::format::vhdx::error_report(
                    "VMDK description file too big",
                ));
                return Err(Error::from_errno(libc::EFBIG));
            }
            len as usize
        } else {
            DESC_SIZE
        };
        if size == 0 {
            return Err(einval());
        }
        let mut buf = vec![0u8; size];
        f.read_at(&mut buf, self.desc_offset)?;
        let text = c_str(&buf[..size - 1]);
        let new = desc::with_new_cid(&text, cid).ok_or_else(einval)?;
        let mut out = new.into_bytes();
        out.truncate(size - 1);
        out.resize(size, 0);
        f.write_at(&out, self.desc_offset)?;
        f.flush()?;
        *done = true;
        Ok(())
    }

    /// Fill `buf` with what a new grain holds outside the request: the
    /// parent's data (unless the grain was zeroed) or zeros.
    fn cow_fill(
        &self,
        buf: &mut [u8],
        guest_off: u64,
        zeroed: bool,
        backing: &dyn BackingRead,
    ) -> Result<()> {
        if backing.is_none() || zeroed {
            buf.fill(0);
            return Ok(());
        }
        self.check_parent()?;
        backing.read_backing(buf, guest_off)
    }

    /// Write into one grain of an uncompressed sparse extent.
    #[allow(clippy::too_many_arguments)]
    fn write_grain(
        &self,
        e: &VExtent,
        s: &Sparse,
        rel: u64,
        data: &[u8],
        guest_off: u64,
        backing: &dyn BackingRead,
    ) -> Result<()> {
        let f = &self.files[e.file];
        let cb = s.cluster_bytes();
        let in_cluster = rel % cb;
        f.event("write_aio");
        match s.lookup(f, rel)? {
            Lookup::Allocated { offset, .. } => return f.write_at(data, offset + in_cluster),
            Lookup::Error => return Err(einval()),
            Lookup::NoTable => return Err(eio()),
            _ => {}
        }
        let mut next = s.next_cluster_sector.lock();
        let (l1, l2, index, zeroed) = match s.lookup(f, rel)? {
            Lookup::Allocated { offset, .. } => {
                drop(next);
                return f.write_at(data, offset + in_cluster);
            }
            Lookup::Unallocated { l1, l2, index } => (l1, l2, index, false),
            Lookup::Zeroed { l1, l2, index } => (l1, l2, index, true),
            Lookup::Error => return Err(einval()),
            Lookup::NoTable => return Err(eio()),
        };
        if *next >= sparse::EXTENT_MAX_SECTORS {
            return Err(einval());
        }
        let sector = *next;
        let coff = sector * 512;
        // Build the whole grain: parent data (or zeros) around the request.
        let grain_guest = guest_off - in_cluster;
        let mut grain = vec![0u8; cb as usize];
        let a = in_cluster as usize;
        let b = a + data.len();
        if a > 0 {
            self.cow_fill(&mut grain[..a], grain_guest, zeroed, backing)?;
        }
        if b < grain.len() {
            self.cow_fill(&mut grain[b..], grain_guest + b as u64, zeroed, backing)?;
        }
        grain[a..b].copy_from_slice(data);
        f.write_at(&grain, coff)?;
        *next += s.cluster_sectors;
        s.set_l2(f, l1, l2, index, sector as u32)
    }

    /// Write into a grain of a streamOptimized extent: gather it in
    /// memory, deflate and append it once complete.
    #[allow(clippy::too_many_arguments)]
    fn write_stream(
        &self,
        ei: usize,
        e: &VExtent,
        s: &Sparse,
        rel: u64,
        data: Option<&[u8]>,
        len: usize,
        backing: &dyn BackingRead,
    ) -> Result<()> {
        let f = &self.files[e.file];
        let cb = s.cluster_bytes();
        let grain = rel / cb;
        let in_cluster = (rel % cb) as usize;
        let mut pending = self.pending.lock();
        if !pending.contains_key(&(ei, grain)) {
            let zeroed = match s.lookup(f, rel)? {
                Lookup::Allocated { .. } => {
                    crate::events::notice(&crate::format::vhdx::error_report(
                        "Could not write to allocated cluster for streamOptimized",
                    ));
                    return Err(eio());
                }
                Lookup::Error => return Err(einval()),
                Lookup::NoTable => return Err(eio()),
                Lookup::Zeroed { .. } => true,
                Lookup::Unallocated { .. } => false,
            };
            if data.is_none() && (zeroed || backing.is_none()) {
                // Zeros over a grain that reads as zeros.
                return Ok(());
            }
            let glen = cb.min(e.len - grain * cb) as usize;
            let mut buf = vec![0u8; glen];
            self.cow_fill(&mut buf, e.start + grain * cb, zeroed, backing)?;
            if pending.len() >= MAX_PENDING {
                // Too many open grains: write out the oldest.
                if let Some((&k, _)) = pending.iter().next() {
                    if let Some(p) = pending.remove(&k) {
                        self.store_stream_grain(k.0, k.1, p.buf)?;
                    }
                }
            }
            pending.insert(
                (ei, grain),
                Pending {
                    buf,
                    covered: Vec::new(),
                },
            );
        }
        let Some(p) = pending.get_mut(&(ei, grain)) else {
            return Err(eio());
        };
        let end = (in_cluster + len).min(p.buf.len());
        match data {
            Some(d) => p.buf[in_cluster..end].copy_from_slice(&d[..end - in_cluster]),
            None => p.buf[in_cluster..end].fill(0),
        }
        p.cover(in_cluster, end);
        if p.complete() {
            if let Some(p) = pending.remove(&(ei, grain)) {
                self.store_stream_grain(ei, grain, p.buf)?;
            }
        }
        Ok(())
    }

    /// Deflate grain `grain` of extent `ei` and append it behind a marker.
    fn store_stream_grain(&self, ei: usize, grain: u64, data: Vec<u8>) -> Result<()> {
        let e = &self.extents[ei];
        let Body::Sparse(s) = &e.body else {
            return Err(eio());
        };
        let f = &self.files[e.file];
        let rel = grain * s.cluster_bytes();
        let (l1, l2, index) = match s.lookup(f, rel)? {
            Lookup::Unallocated { l1, l2, index } | Lookup::Zeroed { l1, l2, index } => {
                (l1, l2, index)
            }
            _ => return Err(eio()),
        };
        let lba = (e.start + rel) >> 9;
        let out = sparse::compress_grain(&data, lba)?;
        let mut next = s.next_cluster_sector.lock();
        if *next >= sparse::EXTENT_MAX_SECTORS {
            return Err(einval());
        }
        let sector = *next;
        f.write_at(&out, sector * 512)?;
        *next = (sector * 512 + out.len() as u64).div_ceil(512);
        s.set_l2(f, l1, l2, index, sector as u32)
    }

    /// Write out every partially filled grain.
    fn flush_pending(&self) -> Result<()> {
        let all = std::mem::take(&mut *self.pending.lock());
        for ((ei, grain), p) in all {
            self.store_stream_grain(ei, grain, p.buf)?;
        }
        Ok(())
    }

    fn format_specific(&self) -> Json {
        let extents: Vec<Json> = self
            .extents
            .iter()
            .map(|e| {
                let mut j = Json::object()
                    .with("filename", e.filename.as_str())
                    .with("format", e.kind.clone().unwrap_or_default())
                    .with("virtual-size", e.len);
                if let Body::Sparse(s) = &e.body {
                    j.set("cluster-size", s.cluster_bytes());
                    if s.compressed {
                        j.set("compressed", true);
                    }
                }
                j
            })
            .collect();
        let data = Json::object()
            .with("create-type", self.create_type.as_str())
            .with("cid", self.cid)
            .with("parent-cid", self.parent_cid)
            .with("extents", Json::Array(extents));
        Json::object().with("type", "vmdk").with("data", data)
    }

    /// QEMU's vmdk_get_info: a cluster size when all extents are alike
    /// and sparse.
    fn cluster_size(&self) -> Option<u64> {
        let first = self.extents.first()?;
        let sig = |e: &VExtent| match &e.body {
            Body::Flat { .. } => (true, false, 0),
            Body::Sparse(s) => (false, s.compressed, s.cluster_sectors),
        };
        let f = sig(first);
        if self.extents.iter().any(|e| sig(e) != f) || f.0 {
            return None;
        }
        Some(f.2 * 512)
    }
}

/// The CID of a VMDK file (sparse with an embedded descriptor, or a text
/// descriptor).
fn read_cid_of(f: &HostFile) -> Option<u32> {
    let mut head = [0u8; 4];
    f.read_at(&mut head, 0).ok()?;
    let magic = u32::from_be_bytes(head);
    let off = if magic == sparse::VMDK3_MAGIC || magic == sparse::VMDK4_MAGIC {
        0x200
    } else {
        0
    };
    let mut d = vec![0u8; DESC_SIZE];
    f.read_at(&mut d, off).ok()?;
    desc::read_cid(&c_str(&d[..DESC_SIZE - 1]), false)
}

impl Driver for Vmdk {
    fn format_name(&self) -> &'static str {
        "vmdk"
    }
    fn virtual_size(&self) -> u64 {
        self.size
    }
    fn host_file(&self) -> &HostFile {
        &self.files[0]
    }
    fn backing(&self) -> Option<BackingRef> {
        self.backing.as_ref().map(|b| BackingRef {
            filename: b.clone(),
            format: Some("vmdk".into()),
        })
    }
    fn info(&self) -> DriverInfo {
        DriverInfo {
            cluster_size: self.cluster_size(),
            format_specific: Some(self.format_specific()),
            ..DriverInfo::default()
        }
    }
    fn extent_files(&self) -> Vec<(usize, &HostFile)> {
        self.extents
            .iter()
            .enumerate()
            .filter(|(_, e)| e.file != 0)
            .map(|(i, e)| (i, &self.files[e.file]))
            .collect()
    }
    fn extent_file(&self, off: u64) -> Option<ExtentFile<'_>> {
        self.find(off).map(|(_, e)| ExtentFile {
            name: &e.filename,
            file: &self.files[e.file],
            recurse: matches!(e.body, Body::Flat { .. }),
        })
    }
    fn block_status(&self, off: u64, max: u64) -> Result<Extent> {
        let Some((ei, e)) = self.find(off) else {
            return Err(eio());
        };
        let rel = off - e.start;
        let cb = e.cluster_bytes().max(1);
        let n = (cb - rel % cb).min(max).min(e.len - rel);
        match &e.body {
            Body::Flat { offset } => Ok(Extent {
                len: n,
                status: Status::Data,
                offset: Some(offset + rel),
                compressed: false,
            }),
            Body::Sparse(s) => {
                if s.compressed && self.pending.lock().contains_key(&(ei, rel / cb)) {
                    return Ok(Extent {
                        len: n,
                        status: Status::Data,
                        offset: None,
                        compressed: false,
                    });
                }
                let f = &self.files[e.file];
                let lk = s.lookup(f, rel)?;
                let (status, offset) = match lk {
                    Lookup::Error => return Err(eio()),
                    Lookup::NoTable | Lookup::Unallocated { .. } => (Status::Unallocated, None),
                    Lookup::Zeroed { .. } => (Status::Zero, None),
                    Lookup::Allocated { offset, .. } => {
                        let o = (!s.compressed).then_some(offset + rel % cb);
                        (Status::Data, o)
                    }
                };
                // Merge following grains that are unallocated or zero alike.
                let mut len = n;
                if status != Status::Data {
                    while len < max && rel + len < e.len {
                        let r2 = rel + len;
                        if s.compressed && self.pending.lock().contains_key(&(ei, r2 / cb)) {
                            break;
                        }
                        let (same, step) = match s.lookup(f, r2)? {
                            // No grain table: its whole span is unallocated.
                            Lookup::NoTable => {
                                (status == Status::Unallocated, s.table_span_end(r2) - r2)
                            }
                            Lookup::Unallocated { .. } => (status == Status::Unallocated, cb),
                            Lookup::Zeroed { .. } => (status == Status::Zero, cb),
                            _ => (false, 0),
                        };
                        if !same {
                            break;
                        }
                        len += step.min(max - len).min(e.len - r2);
                    }
                }
                Ok(Extent {
                    len,
                    status,
                    offset,
                    compressed: s.compressed && status == Status::Data,
                })
            }
        }
    }
    fn read_at(&self, buf: &mut [u8], off: u64, backing: &dyn BackingRead) -> Result<()> {
        let mut done = 0usize;
        while done < buf.len() {
            let pos = off + done as u64;
            let Some((ei, e)) = self.find(pos) else {
                return Err(eio());
            };
            let rel = pos - e.start;
            let cb = e.cluster_bytes().max(1);
            let in_cluster = rel % cb;
            let n = ((cb - in_cluster).min(e.len - rel) as usize).min(buf.len() - done);
            let part = &mut buf[done..done + n];
            let f = &self.files[e.file];
            match &e.body {
                Body::Flat { offset } => f.read_at(part, offset + rel)?,
                Body::Sparse(s) => {
                    if s.compressed {
                        if let Some(p) = self.pending.lock().get(&(ei, rel / cb)) {
                            let a = in_cluster as usize;
                            part.copy_from_slice(&p.buf[a..a + n]);
                            done += n;
                            continue;
                        }
                    }
                    match s.lookup(f, rel)? {
                        Lookup::Allocated { offset, .. } => {
                            if s.compressed {
                                let g = sparse::read_compressed(f, offset, cb, s.has_marker)?;
                                let a = in_cluster as usize;
                                let src = g.get(a..a + n).ok_or_else(einval)?;
                                part.copy_from_slice(src);
                            } else {
                                f.event("read_aio");
                                f.read_at(part, offset + in_cluster)?;
                            }
                        }
                        Lookup::Zeroed { .. } => part.fill(0),
                        // Unallocated (and QEMU's lookup errors) read from
                        // the parent, or as zeros.
                        _ => {
                            if backing.is_none() {
                                part.fill(0);
                            } else {
                                self.check_parent()?;
                                backing.read_backing(part, pos)?;
                            }
                        }
                    }
                }
            }
            done += n;
        }
        Ok(())
    }
    fn write_at(&self, buf: &[u8], off: u64, backing: &dyn BackingRead) -> Result<()> {
        self.require_writable()?;
        let mut done = 0usize;
        while done < buf.len() {
            let pos = off + done as u64;
            let Some((ei, e)) = self.find(pos) else {
                return Err(eio());
            };
            let rel = pos - e.start;
            let cb = e.cluster_bytes().max(1);
            let n = ((cb - rel % cb).min(e.len - rel) as usize).min(buf.len() - done);
            let part = &buf[done..done + n];
            match &e.body {
                Body::Flat { offset } => self.files[e.file].write_at(part, offset + rel)?,
                Body::Sparse(s) if s.compressed => {
                    self.write_stream(ei, e, s, rel, Some(part), n, backing)?
                }
                Body::Sparse(s) => self.write_grain(e, s, rel, part, pos, backing)?,
            }
            done += n;
            self.update_cid()?;
        }
        Ok(())
    }
    fn write_zeroes(
        &self,
        off: u64,
        len: u64,
        may_unmap: bool,
        backing: &dyn BackingRead,
    ) -> Result<()> {
        self.require_writable()?;
        let end = off + len;
        let mut pos = off;
        while pos < end {
            let Some((ei, e)) = self.find(pos) else {
                return Err(eio());
            };
            let rel = pos - e.start;
            let cb = e.cluster_bytes().max(1);
            let in_cluster = rel % cb;
            let n = (cb - in_cluster).min(e.len - rel).min(end - pos);
            let f = &self.files[e.file];
            match &e.body {
                Body::Flat { offset } => f.write_zeroes(offset + rel, n, may_unmap)?,
                Body::Sparse(s) => {
                    let whole = in_cluster == 0 && n == cb;
                    let lk = s.lookup(f, rel)?;
                    if s.zero_grain && whole {
                        match lk {
                            Lookup::Zeroed { .. } => {}
                            Lookup::Unallocated { l1, l2, index } => {
                                if s.compressed {
                                    self.pending.lock().remove(&(ei, rel / cb));
                                }
                                s.set_l2(f, l1, l2, index, sparse::GTE_ZEROED)?
                            }
                            Lookup::Allocated { l1, l2, index, .. } if !s.compressed => {
                                s.set_l2(f, l1, l2, index, sparse::GTE_ZEROED)?
                            }
                            Lookup::Allocated { .. } => {
                                crate::events::notice(&crate::format::vhdx::error_report(
                                    "Could not write to allocated cluster for streamOptimized",
                                ));
                                return Err(eio());
                            }
                            Lookup::Error => return Err(einval()),
                            Lookup::NoTable => {
                                if !backing.is_none() {
                                    return Err(eio());
                                }
                            }
                        }
                    } else if s.compressed {
                        self.write_stream(ei, e, s, rel, None, n as usize, backing)?;
                    } else {
                        match lk {
                            Lookup::Allocated { offset, .. } => {
                                f.write_zeroes(offset + in_cluster, n, may_unmap)?
                            }
                            Lookup::Zeroed { .. } => {}
                            Lookup::Unallocated { .. } | Lookup::NoTable if backing.is_none() => {}
                            Lookup::Error => return Err(einval()),
                            _ => {
                                let z = vec![0u8; n as usize];
                                self.write_grain(e, s, rel, &z, pos, backing)?;
                            }
                        }
                    }
                }
            }
            pos += n;
            self.update_cid()?;
        }
        Ok(())
    }
    fn flush(&self) -> Result<()> {
        self.flush_pending()?;
        for f in &self.files {
            f.flush()?;
        }
        Ok(())
    }
    fn io_granularity(&self) -> u64 {
        match self.extents.first().map(|e| &e.body) {
            Some(Body::Sparse(s)) => s.cluster_bytes().clamp(512, 1 << 20),
            _ => 1 << 20,
        }
    }
    fn compression_cluster_size(&self) -> Option<u64> {
        match self.extents.first().map(|e| &e.body) {
            Some(Body::Sparse(s)) if s.compressed => Some(s.cluster_bytes()),
            _ => None,
        }
    }
    fn accepts_compressed_writes(&self) -> bool {
        true
    }
    fn compress_cluster(&self, _buf: &[u8]) -> Result<Option<Vec<u8>>> {
        // A stream-optimized extent compresses grains on its own write
        // path; other extents store them plainly, as QEMU's VMDK does.
        Ok(None)
    }
    fn check(&self, repair: Repair, log: &mut dyn FnMut(&str)) -> Result<CheckResult> {
        if repair != Repair::None {
            return Err(Error::unsupported(
                "This image format does not support checks",
            ));
        }
        let total = self.size >> 9;
        let mut sector = 0u64;
        let failed = |errno: i32| {
            Error::from_errno(errno)
                .with_message(format!("Check failed: {}", crate::error::strerror(errno)))
        };
        while sector < total {
            let Some((_, e)) = self.find(sector << 9) else {
                log(&format!("ERROR: could not find extent for sector {sector}"));
                return Err(failed(libc::EINVAL));
            };
            let f = &self.files[e.file];
            let (ok_offset, step) = match &e.body {
                Body::Flat { offset } => (Some(*offset), e.len >> 9),
                Body::Sparse(s) => {
                    let rel = (sector << 9) - e.start;
                    match s.lookup(f, rel)? {
                        Lookup::Error => {
                            log(&format!(
                                "ERROR: could not get cluster_offset for sector {sector}"
                            ));
                            return Err(failed(libc::EPERM));
                        }
                        Lookup::Allocated { offset, .. } => (Some(offset), s.cluster_sectors),
                        _ => (None, s.cluster_sectors),
                    }
                }
            };
            if let Some(o) = ok_offset {
                if o >= f.len()? {
                    log(&format!(
                        "ERROR: cluster offset for sector {sector} points after EOF"
                    ));
                    return Err(failed(libc::EINVAL));
                }
            }
            sector += step.max(1);
        }
        Ok(CheckResult::default())
    }
    fn close(&self) -> Result<()> {
        if !self.writable {
            return Ok(());
        }
        self.flush_pending()?;
        // A streamOptimized extent ends on a sector boundary (qemu-img
        // convert's final compressed write does that).
        for e in &self.extents {
            if let Body::Sparse(s) = &e.body {
                if s.compressed {
                    let f = &self.files[e.file];
                    let len = f.len()?;
                    if len % 512 != 0 {
                        f.set_len(len.next_multiple_of(512))?;
                    }
                }
            }
        }
        for f in &self.files {
            f.flush()?;
        }
        Ok(())
    }
}

impl Drop for Vmdk {
    fn drop(&mut self) {
        let _ = Driver::close(self);
    }
}
