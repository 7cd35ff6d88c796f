//! qcow2 (QEMU copy-on-write v2/v3).

mod amend;
mod bitmap;
mod check;
mod compress;
mod create;
mod crypto;
mod header;
mod l2;
mod read;
mod rebuild;
mod refcount;
mod shrink;
mod snapshot;
mod snapshot_write;
mod write;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use super::{
    BackingRead, BackingRef, Driver, DriverInfo, DriverOpenOptions, Extent, OptDesc, OptKind,
    Prealloc,
};
use crate::error::{Error, Result};
#[allow(unused_imports)]
use crate::format::CreateOptions as _CreateOptions;
use crate::io::HostFile;
use crate::json::Json;
pub use amend::AMEND_OPTS;
pub use create::create;
use header::{Compression, Header};
use l2::{Geometry, L2Cache, Slot, L1E_OFFSET_MASK};
use refcount::Refcounts;
use snapshot_write::SnapList;

pub const MAGIC: [u8; 4] = *b"QFI\xfb";

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
        help: "qcow2 cluster size",
    },
    OptDesc {
        name: "compat",
        kind: OptKind::Str,
        help: "Compatibility level (v2 [0.10] or v3 [1.1])",
    },
    OptDesc {
        name: "compression_type",
        kind: OptKind::Str,
        help: "Compression method used for image cluster compression",
    },
    OptDesc {
        name: "data_file",
        kind: OptKind::Str,
        help: "File name of an external data file",
    },
    OptDesc {
        name: "data_file_raw",
        kind: OptKind::Bool,
        help: "The external data file must stay valid as a raw image",
    },
    OptDesc {
        name: "encrypt.cipher-alg",
        kind: OptKind::Str,
        help: "Name of encryption cipher algorithm",
    },
    OptDesc {
        name: "encrypt.cipher-mode",
        kind: OptKind::Str,
        help: "Name of encryption cipher mode",
    },
    OptDesc {
        name: "encrypt.format",
        kind: OptKind::Str,
        help: "Encrypt the image, format choices: 'aes', 'luks'",
    },
    OptDesc {
        name: "encrypt.hash-alg",
        kind: OptKind::Str,
        help: "Name of encryption hash algorithm",
    },
    OptDesc {
        name: "encrypt.iter-time",
        kind: OptKind::Number,
        help: "Time to spend in PBKDF in milliseconds",
    },
    OptDesc {
        name: "encrypt.ivgen-alg",
        kind: OptKind::Str,
        help: "Name of IV generator algorithm",
    },
    OptDesc {
        name: "encrypt.ivgen-hash-alg",
        kind: OptKind::Str,
        help: "Name of IV generator hash algorithm",
    },
    OptDesc {
        name: "encrypt.key-secret",
        kind: OptKind::Str,
        help: "ID of secret providing qcow AES key or LUKS passphrase",
    },
    OptDesc {
        name: "encryption",
        kind: OptKind::Bool,
        help: "Encrypt the image with format 'aes'. (Deprecated in favor of encrypt.format=aes)",
    },
    OptDesc {
        name: "extended_l2",
        kind: OptKind::Bool,
        help: "Extended L2 tables",
    },
    OptDesc {
        name: "extent_size_hint",
        kind: OptKind::Size,
        help: "Extent size hint for the image file, 0 to disable",
    },
    OptDesc {
        name: "lazy_refcounts",
        kind: OptKind::Bool,
        help: "Postpone refcount updates",
    },
    OptDesc {
        name: "nocow",
        kind: OptKind::Bool,
        help: "Turn off copy-on-write (valid only on btrfs)",
    },
    OptDesc {
        name: "preallocation",
        kind: OptKind::Str,
        help: "Preallocation mode (allowed values: off, metadata, falloc, full)",
    },
    OptDesc {
        name: "refcount_bits",
        kind: OptKind::Number,
        help: "Width of a reference count entry in bits",
    },
    OptDesc {
        name: "size",
        kind: OptKind::Size,
        help: "Virtual disk size",
    },
];

pub fn probe(head: &[u8]) -> bool {
    head.len() >= 8
        && head[..4] == MAGIC
        && u32::from_be_bytes([head[4], head[5], head[6], head[7]]) >= 2
}

/// Mutable metadata, behind one lock held only for lookups and updates
/// (never across data I/O).
struct Meta {
    l1: Vec<u64>,
    l1_offset: u64,
    l2: L2Cache,
    rc: Refcounts,
    /// Next free byte for packing compressed clusters (0: none open).
    comp_cursor: u64,
    /// The dirty bit (lazy refcounts) or autoclear clearing is done.
    first_write_done: bool,
}

pub struct Qcow2 {
    file: HostFile,
    /// External data file, when the image has one.
    data_file: Option<HostFile>,
    geo: Geometry,
    hdr: Mutex<Header>,
    meta: Mutex<Meta>,
    /// Serialises allocating writers; readers never take it.
    write_lock: Mutex<()>,
    size: AtomicU64,
    writable: bool,
    snapshots: SnapList,
    compression: Compression,
    /// A corruption notice was printed (QEMU prints only the first).
    corruption_reported: std::sync::atomic::AtomicBool,
    /// Data cipher of an encrypted image opened for I/O.
    crypto: Option<std::sync::Arc<crypto::DataCrypto>>,
    /// A reset of the whole file failed midway: QEMU ejects such a node, so
    /// nothing more is written (the dirty flag stays for the next open).
    broken: std::sync::atomic::AtomicBool,
    /// Persistent dirty bitmaps (directory; loaded bitmaps while writing).
    bitmaps: Mutex<bitmap::Bitmaps>,
    /// Some loaded bitmap records writes (checked without the lock).
    bitmap_tracking: std::sync::atomic::AtomicBool,
}

/// Largest first cluster we read to parse the header (2 MiB clusters).
const MAX_HEADER_READ: u64 = 2 << 20;

impl Qcow2 {
    pub fn open(file: HostFile, opts: &DriverOpenOptions) -> Result<Self> {
        let file_len = file.len()?;
        // Bytes past EOF read as zeros, as QEMU's header read sees them.
        let mut head = vec![0u8; file_len.clamp(4096, MAX_HEADER_READ) as usize];
        file.read_at(&mut head, 0)
            .map_err(|e| e.context("Could not read qcow2 header"))?;
        if opts.for_check && head.len() >= 64 {
            // As QEMU in check mode: the snapshot table is neither checked
            // nor read at open; check reads (and may repair) it itself.
            head[60..64].fill(0);
        }
        let hdr = Header::parse(&head)?;
        let writable = opts.writable;
        let crypto = crypto::open(&hdr, &file, opts)?.map(std::sync::Arc::new);
        if writable && !opts.for_check && hdr.incompatible & header::INCOMPAT_CORRUPT != 0 {
            return Err(Error::corrupt(
                "qcow2: Image is corrupt; cannot be opened read/write",
            ));
        }
        let has_data_file = hdr.incompatible & header::INCOMPAT_DATA_FILE != 0;
        let data_file = if opts.metadata_only {
            // As QEMU's BDRV_O_NO_IO open: `info` never opens the data file,
            // so an untrusted image cannot make it touch other files.
            None
        } else if has_data_file {
            // Resolved as QEMU does: the stored name as given (relative to
            // the working directory, not to the image).
            let path = opts
                .data_file
                .clone()
                .or_else(|| hdr.data_file.clone())
                .ok_or_else(|| Error::invalid("'data-file' is required for this image"))?;
            Some(HostFile::open(
                Path::new(&path),
                writable,
                file.cache_mode(),
            )?)
        } else if opts.data_file.is_some() {
            return Err(Error::invalid(
                "'data-file' can only be set for images with an external data file",
            ));
        } else {
            None
        };
        let geo = Geometry {
            cluster_bits: hdr.cluster_bits,
            extended: hdr.extended_l2(),
            v3: hdr.version >= 3,
            data_file: has_data_file,
        };
        let mut raw = vec![0u8; hdr.l1_size as usize * 8];
        file.read_at(&mut raw, hdr.l1_table_offset)?;
        let l1: Vec<u64> = crate::format::bytes::be64_table(&raw);
        let rc = Refcounts::load(
            &file,
            hdr.cluster_bits,
            hdr.refcount_order,
            hdr.refcount_table_offset,
            hdr.refcount_table_clusters,
        )?;
        let snapshots = if hdr.nb_snapshots > 0 {
            snapshot::scan(&file, hdr.snapshots_offset, hdr.nb_snapshots, None)?
        } else {
            snapshot::Scan::default()
        };
        let bitmaps = bitmap::Bitmaps::open(&hdr, &file, hdr.size)?;
        let q = Qcow2 {
            bitmaps: Mutex::new(bitmaps),
            bitmap_tracking: Default::default(),
            crypto,
            geo,
            data_file,
            size: AtomicU64::new(hdr.size),
            writable,
            snapshots: SnapList::new(snapshots.snaps, snapshots.size),
            compression: hdr.compression,
            meta: Mutex::new(Meta {
                l1,
                l1_offset: hdr.l1_table_offset,
                l2: L2Cache::new(hdr.cluster_size()),
                rc,
                comp_cursor: 0,
                first_write_done: false,
            }),
            hdr: Mutex::new(hdr),
            write_lock: Mutex::new(()),
            file,
            corruption_reported: Default::default(),
            broken: Default::default(),
        };
        if writable {
            // Autoclear bits of features QEMU does not know are cleared as
            // soon as the image is opened writable, as qcow2_do_open does.
            let mut h = q.hdr.lock();
            if h.autoclear & !header::AUTOCLEAR_KNOWN != 0 {
                h.autoclear &= header::AUTOCLEAR_KNOWN;
                q.file.write_at(&h.autoclear.to_be_bytes(), 88)?;
            }
        }
        if writable && !opts.for_check && q.hdr.lock().incompatible & header::INCOMPAT_DIRTY != 0 {
            // Lazy refcounts left the image dirty: rebuild refcounts from the
            // mappings before any allocation trusts them (QEMU does the same).
            q.repair_refcounts()?;
        }
        Ok(q)
    }

    fn cs(&self) -> u64 {
        self.geo.cs()
    }

    /// I/O hit damaged metadata: report it once as QEMU does and fail the
    /// request with EIO (the image file is left as it is).
    fn io_result<T>(&self, r: Result<T>) -> Result<T> {
        match r {
            Err(e) if e.kind() == crate::error::ErrorKind::Corrupt => {
                if !self.corruption_reported.swap(true, Ordering::SeqCst) {
                    crate::events::notice(&format!(
                        "qcow2: Image is corrupt: {}; further non-fatal corruption events will be suppressed",
                        e.message()
                    ));
                }
                Err(Error::from_errno(libc::EIO).with_kind(crate::error::ErrorKind::Corrupt))
            }
            r => r,
        }
    }

    /// A read-only view of internal snapshot `which` (`ID`, `NAME`, or
    /// `snapshot.id=ID[,snapshot.name=NAME]`), as `convert -l` reads it.
    pub fn snapshot_view(&self, which: &str) -> Result<Qcow2> {
        let (id, name) = parse_snapshot_param(which);
        let snap = if id.is_some() || name.is_some() {
            self.snapshots.iter().find(|s| {
                id.as_ref().is_none_or(|i| &s.info.id == i)
                    && name.as_ref().is_none_or(|n| &s.info.name == n)
            })
        } else {
            // A bare parameter is an ID, or failing that a name.
            (self.snapshots.iter().find(|s| s.info.id == which))
                .or_else(|| self.snapshots.iter().find(|s| s.info.name == which))
        }
        .ok_or_else(|| Error::invalid("Failed to load snapshot: Can't find snapshot"))?;
        let h = self.hdr.lock().clone();
        self.validate_snapshot_l1(snap.l1_table_offset, snap.l1_size)
            .map_err(|(m, _)| Error::corrupt(m))?;
        let size = snap.disk_size.unwrap_or(h.size);
        if (snap.l1_size as u64) < size.div_ceil(h.l2_coverage())
            || snap.l1_table_offset % self.cs() != 0
        {
            return Err(Error::corrupt("Snapshot L1 table offset invalid"));
        }
        let mut raw = vec![0u8; snap.l1_size as usize * 8];
        self.file.read_at(&mut raw, snap.l1_table_offset)?;
        let file = self.file.try_clone()?;
        let rc = Refcounts::load(
            &file,
            h.cluster_bits,
            h.refcount_order,
            h.refcount_table_offset,
            h.refcount_table_clusters,
        )?;
        Ok(Qcow2 {
            geo: self.geo,
            data_file: match &self.data_file {
                Some(d) => Some(d.try_clone()?),
                None => None,
            },
            size: AtomicU64::new(size),
            writable: false,
            snapshots: SnapList::new(Vec::new(), 0),
            compression: self.compression,
            meta: Mutex::new(Meta {
                l1: crate::format::bytes::be64_table(&raw),
                l1_offset: snap.l1_table_offset,
                l2: L2Cache::new(self.cs()),
                rc,
                comp_cursor: 0,
                first_write_done: false,
            }),
            hdr: Mutex::new(Header { size, ..h }),
            write_lock: Mutex::new(()),
            file,
            corruption_reported: Default::default(),
            crypto: self.crypto.clone(),
            broken: Default::default(),
            bitmaps: Mutex::new(self.bitmaps.lock().directory_copy()),
            bitmap_tracking: Default::default(),
        })
    }

    /// QEMU's qcow2_validate_table for a snapshot's L1 table: the message
    /// and the errno its callers report when it fails.
    pub(super) fn validate_snapshot_l1(
        &self,
        off: u64,
        entries: u32,
    ) -> std::result::Result<(), (&'static str, i32)> {
        let bytes = entries as u64 * 8;
        if bytes > header::MAX_L1_BYTES {
            return Err(("Snapshot L1 table too large", libc::EFBIG));
        }
        if (i64::MAX as u64) - bytes < off || !off.is_multiple_of(self.cs()) {
            return Err(("Snapshot L1 table offset invalid", libc::EINVAL));
        }
        Ok(())
    }

    /// The file guest data lives in.
    fn data(&self) -> &HostFile {
        self.data_file.as_ref().unwrap_or(&self.file)
    }

    fn set_incompat_flag(&self, flag: u64, on: bool) -> Result<()> {
        let mut h = self.hdr.lock();
        if h.version < 3 {
            return Ok(());
        }
        let new = if on {
            h.incompatible | flag
        } else {
            h.incompatible & !flag
        };
        if new != h.incompatible {
            h.incompatible = new;
            self.file.flush()?;
            self.file.write_at(&new.to_be_bytes(), 72)?;
            self.file.flush()?;
        }
        Ok(())
    }

    /// Before the first modification: set the dirty bit under lazy
    /// refcounts and clear autoclear features we do not maintain.
    fn before_first_write(&self) -> Result<()> {
        if !self.writable {
            return Err(Error::new(
                crate::error::ErrorKind::PermissionDenied,
                "Image is read-only",
            ));
        }
        {
            let m = self.meta.lock();
            if m.first_write_done {
                return Ok(());
            }
        }
        let (lazy, autoclear) = {
            let h = self.hdr.lock();
            (
                h.compatible & header::COMPAT_LAZY_REFCOUNTS != 0,
                h.autoclear,
            )
        };
        // Bitmaps are kept up to date from here on: loaded, marked in_use
        // on disk and stored back on close.
        self.bitmaps_load()?;
        let keep = header::AUTOCLEAR_DATA_FILE_RAW | header::AUTOCLEAR_BITMAPS;
        if autoclear & !keep != 0 {
            let mut h = self.hdr.lock();
            h.autoclear &= keep;
            self.file.write_at(&h.autoclear.to_be_bytes(), 88)?;
        }
        if lazy {
            self.set_incompat_flag(header::INCOMPAT_DIRTY, true)?;
        }
        self.meta.lock().first_write_done = true;
        Ok(())
    }

    /// Slot of guest cluster `ci` (unallocated when no L2 table).
    fn slot(&self, m: &mut Meta, ci: u64) -> Result<Slot> {
        let epl = self.geo.entries_per_l2();
        let Some(l2off) = self.l2_offset(m, ci / epl)? else {
            return Ok(Slot::default());
        };
        let t = m.l2.get(&self.file, &self.geo, l2off)?;
        Ok(t.get((ci % epl) as usize).copied().unwrap_or_default())
    }

    fn l2_offset(&self, m: &Meta, l1i: u64) -> Result<Option<u64>> {
        let Some(&e) = m.l1.get(l1i as usize) else {
            return Ok(None);
        };
        let off = e & L1E_OFFSET_MASK;
        if off == 0 {
            return Ok(None);
        }
        if off & (self.cs() - 1) != 0 {
            return Err(Error::corrupt(format!(
                "L2 table offset {off:#x} unaligned (L1 index: {l1i})"
            )));
        }
        Ok(Some(off))
    }

    fn format_specific(&self) -> Json {
        let bitmaps = self.bitmap_info();
        let h = self.hdr.lock();
        let mut d = Json::object();
        if h.version < 3 {
            d.set("compat", "0.10");
        } else {
            d.set("compat", "1.1");
            if let Some(f) = &h.data_file {
                d.set("data-file", f.as_str());
            }
            if h.incompatible & header::INCOMPAT_DATA_FILE != 0 {
                d.set(
                    "data-file-raw",
                    h.autoclear & header::AUTOCLEAR_DATA_FILE_RAW != 0,
                );
            }
            d.set("extended-l2", h.extended_l2());
            d.set(
                "lazy-refcounts",
                h.compatible & header::COMPAT_LAZY_REFCOUNTS != 0,
            );
            d.set("corrupt", h.incompatible & header::INCOMPAT_CORRUPT != 0);
        }
        if h.version >= 3 && !bitmaps.is_empty() {
            let v = bitmaps
                .iter()
                .map(|b| {
                    let mut flags = Vec::new();
                    if b.in_use {
                        flags.push(Json::from("in-use"));
                    }
                    if b.auto {
                        flags.push(Json::from("auto"));
                    }
                    Json::object()
                        .with("flags", Json::Array(flags))
                        .with("name", b.name.as_str())
                        .with("granularity", b.granularity)
                })
                .collect();
            d.set("bitmaps", Json::Array(v));
        }
        d.set("refcount-bits", h.refcount_bits() as u64);
        if let Some(e) = crypto::info(&h, &self.file) {
            d.set("encrypt", e);
        }
        d.set("compression-type", h.compression.name());
        Json::object().with("type", "qcow2").with("data", d)
    }
}

/// `snapshot.id=X,snapshot.name=Y` → (Some(X), Some(Y)); a bare value →
/// (None, None) and the caller matches it against ids and names.
fn parse_snapshot_param(p: &str) -> (Option<String>, Option<String>) {
    let mut id = None;
    let mut name = None;
    for part in p.split(',') {
        if let Some(v) = part.strip_prefix("snapshot.id=") {
            id = Some(v.to_string());
        } else if let Some(v) = part.strip_prefix("snapshot.name=") {
            name = Some(v.to_string());
        }
    }
    (id, name)
}

impl Driver for Qcow2 {
    fn format_name(&self) -> &'static str {
        "qcow2"
    }
    /// As QEMU decides it: an image with preallocated L2 tables (the first
    /// L1 entry set) whose data is encrypted reads as noise, not zeros.
    fn has_zero_init(&self) -> bool {
        let preallocated = self.meta.lock().l1.first().is_some_and(|&e| e != 0);
        !preallocated || self.hdr.lock().crypt_method == 0
    }
    fn virtual_size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }
    fn host_file(&self) -> &HostFile {
        &self.file
    }
    fn backing(&self) -> Option<BackingRef> {
        self.hdr.lock().backing()
    }
    fn info(&self) -> DriverInfo {
        let h = self.hdr.lock();
        let dirty = h.incompatible & header::INCOMPAT_DIRTY != 0;
        let encrypted = h.crypt_method != 0;
        drop(h);
        DriverInfo {
            cluster_size: Some(self.cs()),
            encrypted,
            dirty,
            format_specific: Some(self.format_specific()),
            snapshots: self.snapshots.iter().map(|s| s.info.clone()).collect(),
        }
    }
    fn block_status(&self, off: u64, max: u64) -> Result<Extent> {
        self.io_result(self.status(off, max))
    }
    fn read_at(&self, buf: &mut [u8], off: u64, backing: &dyn BackingRead) -> Result<()> {
        self.io_result(self.read(buf, off, backing))
    }
    fn write_at(&self, buf: &[u8], off: u64, backing: &dyn BackingRead) -> Result<()> {
        let r = self.io_result(self.write(buf, off, backing));
        self.bitmaps_mark(off, buf.len() as u64);
        r
    }
    fn write_zeroes(
        &self,
        off: u64,
        len: u64,
        may_unmap: bool,
        backing: &dyn BackingRead,
    ) -> Result<()> {
        let r = self.zero(off, len, may_unmap, backing);
        self.bitmaps_mark(off, len);
        r
    }
    fn discard(&self, off: u64, len: u64) -> Result<()> {
        let r = self.discard_range(off, len);
        self.bitmaps_mark(off, len);
        r
    }
    fn compression_cluster_size(&self) -> Option<u64> {
        Some(self.cs())
    }
    fn compress_cluster(&self, buf: &[u8]) -> Result<Option<Vec<u8>>> {
        let cs = self.cs() as usize;
        if buf.len() == cs {
            return compress::compress(self.compression, buf, cs);
        }
        let mut full = vec![0u8; cs];
        full[..buf.len().min(cs)].copy_from_slice(&buf[..buf.len().min(cs)]);
        compress::compress(self.compression, &full, cs)
    }
    fn write_compressed_raw(&self, data: &[u8], off: u64) -> Result<()> {
        let r = self.store_compressed(data, off);
        self.bitmaps_mark(off, self.cs());
        r
    }
    fn write_compressed(&self, buf: &[u8], off: u64) -> Result<()> {
        let r = match self.compress_cluster(buf)? {
            Some(c) => self.store_compressed(&c, off),
            None => self.write(buf, off, &super::NoBacking),
        };
        self.bitmaps_mark(off, buf.len() as u64);
        r
    }
    fn flush(&self) -> Result<()> {
        if self.broken.load(std::sync::atomic::Ordering::Acquire) {
            return Err(Error::from_errno(libc::ENOMEDIUM));
        }
        if let Some(d) = &self.data_file {
            d.flush()?;
        }
        self.file.flush()
    }
    fn truncate(&self, size: u64, prealloc: Prealloc) -> Result<()> {
        self.resize_any(size, prealloc)
    }
    fn truncate_zeroed(
        &self,
        size: u64,
        prealloc: Prealloc,
        backing: &dyn BackingRead,
    ) -> Result<()> {
        self.bitmaps_before_resize()?;
        let r = self.grow_zeroed(size, prealloc, backing);
        self.bitmaps_resize();
        r
    }
    fn make_empty(&self) -> Result<()> {
        Qcow2::make_empty(self)
    }
    fn set_backing(&self, backing: Option<&BackingRef>) -> Result<()> {
        Qcow2::set_backing(self, backing)
    }
    fn snapshot_create(&self, name: &str) -> Result<super::SnapshotInfo> {
        Qcow2::snapshot_create(self, name)
    }
    fn snapshot_apply(&self, which: &str) -> Result<()> {
        // QEMU reports any failure of its goto as "Failed to load snapshot".
        Qcow2::snapshot_apply(self, which).map_err(|e| {
            let t = super::errno_text(&e);
            e.with_message(format!("Failed to load snapshot: {t}"))
        })
    }
    fn snapshot_delete(&self, id: Option<&str>, name: Option<&str>) -> Result<()> {
        Qcow2::snapshot_delete(self, id, name)
    }
    fn amend(
        &self,
        opts: &super::CreateOptions,
        backing: &dyn BackingRead,
        backing_size: Option<u64>,
        force: bool,
        progress: &mut dyn FnMut(f64),
    ) -> Result<()> {
        Qcow2::amend(self, opts, backing, backing_size, force, progress)
    }
    fn check(
        &self,
        repair: super::Repair,
        log: &mut dyn FnMut(&str),
    ) -> Result<super::CheckResult> {
        self.check_image(repair, log)
    }
    fn snapshot(&self, which: &str) -> Result<Box<dyn Driver>> {
        Ok(Box::new(self.snapshot_view(which)?))
    }
    fn io_granularity(&self) -> u64 {
        self.cs()
    }
    fn bitmap_list(&self) -> Vec<super::BitmapInfo> {
        self.bitmap_info()
    }
    fn bitmap_names(&self) -> Vec<String> {
        Qcow2::bitmap_names(self)
    }
    fn bitmap_add(&self, name: &str, granularity: Option<u64>, enabled: bool) -> Result<()> {
        Qcow2::bitmap_add(self, name, granularity, enabled)
    }
    fn bitmap_remove(&self, name: &str) -> Result<()> {
        Qcow2::bitmap_remove(self, name)
    }
    fn bitmap_clear(&self, name: &str) -> Result<()> {
        Qcow2::bitmap_clear(self, name)
    }
    fn bitmap_set_enabled(&self, name: &str, enabled: bool) -> Result<()> {
        Qcow2::bitmap_set_enabled(self, name, enabled)
    }
    fn bitmap_read(&self, name: &str) -> Result<super::BitmapData> {
        Qcow2::bitmap_read(self, name)
    }
    fn bitmap_merge(&self, dst: &str, src: &super::BitmapData) -> Result<()> {
        Qcow2::bitmap_merge(self, dst, src)
    }
    fn close(&self) -> Result<()> {
        if !self.writable || self.broken.load(std::sync::atomic::Ordering::Acquire) {
            return Ok(());
        }
        if let Err(e) = self.bitmaps_store() {
            // As qcow2_inactivate: reported, the rest of the close goes on.
            crate::events::error(&format!(
                "Lost persistent bitmaps during inactivation of node '{}': {}",
                bitmap::NODE_NAME,
                e.message()
            ));
            self.flush()?;
            return Err(Error::from_errno(libc::EINVAL));
        }
        self.flush()?;
        let first = self.meta.lock().first_write_done;
        if first && self.hdr.lock().incompatible & header::INCOMPAT_DIRTY != 0 {
            // Refcounts are written through, so a clean close may clear it.
            self.set_incompat_flag(header::INCOMPAT_DIRTY, false)?;
        }
        Ok(())
    }
}

impl Drop for Qcow2 {
    fn drop(&mut self) {
        // Best effort for callers that never called close().
        let _ = Driver::close(self);
    }
}
