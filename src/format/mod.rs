//! Format drivers. Each format owns its on-disk structures in its own module
//! and is reached only through [`Driver`] and the registry functions here.

pub mod blkdebug;
pub(crate) mod bytes;
pub mod luks;
pub mod null;
pub mod options;
pub mod qcow;
pub mod qcow2;
pub mod qed;
pub mod raw;
pub mod vdi;
pub mod vhdx;
pub mod vmdk;
pub mod vpc;

use std::path::Path;

use crate::error::{Error, Result};
use crate::io::HostFile;
use crate::json::Json;
pub use options::{CreateOptions, OptDesc, OptKind};

/// Allocation state of a run of guest bytes in one layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Data stored in this layer.
    Data,
    /// Reads as zeros, decided by this layer.
    Zero,
    /// Not allocated here: the backing file (or zeros) decides.
    Unallocated,
}

/// One run of guest bytes with the same status in one layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub len: u64,
    pub status: Status,
    /// Host offset of the first byte, when the data sits at a known offset
    /// in the image file (for `map`).
    pub offset: Option<u64>,
    pub compressed: bool,
}

/// Where a format keeps the data for some guest range in a file of its own.
pub struct ExtentFile<'a> {
    /// As QEMU names the file (`map` prints it).
    pub name: &'a str,
    pub file: &'a HostFile,
    /// QEMU's block layer asks this file about holes (flat extents), so a
    /// hole there reads as zero.
    pub recurse: bool,
}

/// Reads from below the top layer: the backing chain, or zeros.
pub trait BackingRead: Sync {
    fn read_backing(&self, buf: &mut [u8], off: u64) -> Result<()>;
    /// True when there is no backing file at all (unallocated reads as zero).
    fn is_none(&self) -> bool;
}

/// No backing file: everything below reads as zeros.
pub struct NoBacking;
impl BackingRead for NoBacking {
    fn read_backing(&self, buf: &mut [u8], _off: u64) -> Result<()> {
        buf.fill(0);
        Ok(())
    }
    fn is_none(&self) -> bool {
        true
    }
}

/// The backing reference stored in an image header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackingRef {
    pub filename: String,
    pub format: Option<String>,
}

/// Driver-level facts for `info`.
#[derive(Debug, Clone, Default)]
pub struct DriverInfo {
    pub cluster_size: Option<u64>,
    pub encrypted: bool,
    pub dirty: bool,
    /// `{"type": fmt, "data": {...}}` as in QAPI ImageInfoSpecific.
    pub format_specific: Option<Json>,
    pub snapshots: Vec<SnapshotInfo>,
}

/// An internal snapshot (qcow2), fields as in QAPI SnapshotInfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub id: String,
    pub name: String,
    pub vm_state_size: u64,
    pub date_sec: u64,
    pub date_nsec: u32,
    pub vm_clock_nsec: u64,
    pub icount: Option<u64>,
}

/// A persistent dirty bitmap as the image's directory lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BitmapInfo {
    pub name: String,
    pub granularity: u64,
    /// Marked in use: a writer had it open and did not store it back, so
    /// its contents are void ("inconsistent").
    pub in_use: bool,
    /// Enabled: records guest writes.
    pub auto: bool,
}

/// A bitmap's contents: bit `i` (byte `i / 8`, LSB first) covers guest
/// bytes `[i * granularity, (i + 1) * granularity)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BitmapData {
    pub name: String,
    pub granularity: u64,
    /// Guest size the bitmap covers.
    pub size: u64,
    /// Void contents (in use on disk); `bits` is then empty.
    pub inconsistent: bool,
    pub enabled: bool,
    pub bits: Vec<u8>,
}

/// What `check -r` may repair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Repair {
    #[default]
    None,
    /// Leaked clusters only (`-r leaks`).
    Leaks,
    /// Leaks and corruptions (`-r all`).
    All,
}

/// Counts from one consistency check pass (QEMU's BdrvCheckResult).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CheckResult {
    pub corruptions: u64,
    pub leaks: u64,
    pub check_errors: u64,
    pub corruptions_fixed: u64,
    pub leaks_fixed: u64,
    pub image_end_offset: u64,
    pub total_clusters: u64,
    pub allocated_clusters: u64,
    pub fragmented_clusters: u64,
    pub compressed_clusters: u64,
}

/// What preallocation a create or truncate asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Prealloc {
    #[default]
    Off,
    Metadata,
    Falloc,
    Full,
}

impl Prealloc {
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "off" => Prealloc::Off,
            "metadata" => Prealloc::Metadata,
            "falloc" => Prealloc::Falloc,
            "full" => Prealloc::Full,
            _ => return Err(Error::invalid(format!("Invalid parameter '{s}'"))),
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            Prealloc::Off => "off",
            Prealloc::Metadata => "metadata",
            Prealloc::Falloc => "falloc",
            Prealloc::Full => "full",
        }
    }
}

/// One opened layer of an image. Implementations are `Send + Sync`: every
/// method takes `&self` and may be called from several threads at once.
pub trait Driver: Send + Sync {
    fn format_name(&self) -> &'static str;
    fn virtual_size(&self) -> u64;
    /// The image file (for `disk size` and the `file` child in `info`).
    fn host_file(&self) -> &HostFile;
    fn backing(&self) -> Option<BackingRef> {
        None
    }
    fn info(&self) -> DriverInfo {
        DriverInfo::default()
    }
    /// Status of the run starting at `off`, at most `max` bytes (`max` > 0,
    /// `off` < virtual size).
    fn block_status(&self, off: u64, max: u64) -> Result<Extent>;
    /// The file holding the data at guest offset `off` (host offsets of
    /// [`Driver::block_status`] refer to it): `host_file` unless the image
    /// has several files (vmdk extents).
    fn file_at(&self, off: u64) -> &HostFile {
        match self.extent_file(off) {
            Some(x) => x.file,
            None => self.host_file(),
        }
    }
    /// The file holding guest offset `off`, when that is not the image
    /// file itself (a VMDK extent).
    fn extent_file(&self, _off: u64) -> Option<ExtentFile<'_>> {
        None
    }
    /// Files of extents stored apart from `host_file` (vmdk descriptors),
    /// with the extent's index: QEMU opens each as child `extents.N`.
    fn extent_files(&self) -> Vec<(usize, &HostFile)> {
        Vec::new()
    }
    /// QEMU's BDRV_BLOCK_RECURSE: data at a host offset here is checked
    /// against [`Driver::file_at`], whose holes then read as zeros while
    /// still counting as data (static VDI, fixed VHD, flat vmdk extents).
    fn defers_to_host(&self, off: u64) -> bool {
        self.extent_file(off).is_some_and(|x| x.recurse)
    }
    /// Fill `buf` with guest data at `off`, reading unallocated parts from
    /// `backing`.
    fn read_at(&self, buf: &mut [u8], off: u64, backing: &dyn BackingRead) -> Result<()>;
    fn write_at(&self, buf: &[u8], off: u64, backing: &dyn BackingRead) -> Result<()>;
    /// Make a range read as zeros. `may_unmap` allows deallocation.
    fn write_zeroes(
        &self,
        off: u64,
        len: u64,
        may_unmap: bool,
        backing: &dyn BackingRead,
    ) -> Result<()>;
    fn discard(&self, _off: u64, _len: u64) -> Result<()> {
        Ok(())
    }
    /// Whether `convert -c` may write here: formats with
    /// [`Driver::compression_cluster_size`], and VMDK, which takes the
    /// writes as ordinary ones.
    fn accepts_compressed_writes(&self) -> bool {
        self.compression_cluster_size().is_some()
    }
    /// Cluster granularity for compressed writes, if the format compresses.
    fn compression_cluster_size(&self) -> Option<u64> {
        None
    }
    /// Write one whole cluster compressed (`buf.len()` == cluster size, or the
    /// tail of the image).
    fn write_compressed(&self, _buf: &[u8], _off: u64) -> Result<()> {
        Err(Error::unsupported(
            "Compression not supported for this file format",
        ))
    }
    /// Compress a cluster without writing it (runs on worker threads in
    /// parallel convert). Returns None when compression does not pay.
    fn compress_cluster(&self, _buf: &[u8]) -> Result<Option<Vec<u8>>> {
        Err(Error::unsupported(
            "Compression not supported for this file format",
        ))
    }
    /// Store a cluster that [`Driver::compress_cluster`] produced.
    fn write_compressed_raw(&self, _data: &[u8], _off: u64) -> Result<()> {
        Err(Error::unsupported(
            "Compression not supported for this file format",
        ))
    }
    fn flush(&self) -> Result<()>;
    fn truncate(&self, _size: u64, _prealloc: Prealloc) -> Result<()> {
        Err(Error::unsupported(
            "Image format driver does not support resize",
        ))
    }
    /// A newly created image reads as zeros everywhere (false for LUKS,
    /// whose unwritten payload decrypts to noise).
    fn has_zero_init(&self) -> bool {
        true
    }
    /// Preferred I/O granularity for copying (cluster size or 64 KiB).
    fn io_granularity(&self) -> u64 {
        65536
    }
    /// Check (and with `repair`, fix) the image's metadata. `log` gets one
    /// line per finding, as qemu-img prints them on stderr.
    fn check(&self, _repair: Repair, _log: &mut dyn FnMut(&str)) -> Result<CheckResult> {
        Err(Error::unsupported(
            "This image format does not support checks",
        ))
    }
    /// Grow to `size` so that the new area reads as zeros even where
    /// `backing` has data (QEMU's truncate with ZERO_WRITE, used when the
    /// backing file is longer than the image).
    fn truncate_zeroed(
        &self,
        _size: u64,
        _prealloc: Prealloc,
        _backing: &dyn BackingRead,
    ) -> Result<()> {
        Err(Error::unsupported("Operation not supported"))
    }
    /// Deallocate everything so that all reads fall through to the backing
    /// file (`commit` without `-d`).
    fn make_empty(&self) -> Result<()> {
        Err(Error::unsupported("Operation not supported"))
    }
    /// Rewrite the backing file reference in the header (None: no backing
    /// file). The open image's backing chain is not reopened.
    fn set_backing(&self, _backing: Option<&BackingRef>) -> Result<()> {
        Err(Error::unsupported("Operation not supported"))
    }
    /// Create an internal snapshot of the current state.
    fn snapshot_create(&self, _name: &str) -> Result<SnapshotInfo> {
        Err(Error::unsupported("Operation not supported"))
    }
    /// Revert to internal snapshot `which` (an ID, or failing that a name).
    fn snapshot_apply(&self, _which: &str) -> Result<()> {
        Err(Error::unsupported(
            "Block driver does not support snapshots",
        ))
    }
    /// Delete the internal snapshot matching `id` and `name` (each optional).
    fn snapshot_delete(&self, _id: Option<&str>, _name: Option<&str>) -> Result<()> {
        Err(Error::unsupported(
            "Block driver does not support snapshots",
        ))
    }
    /// Change format options of an existing image (`amend -o`); options
    /// are those of [`amend_options`]. A version change needs the image to
    /// be closed and reopened before further use.
    /// `force` is qemu-img's `--force` (key slot changes QEMU refuses
    /// without it).
    fn amend(
        &self,
        _opts: &CreateOptions,
        _backing: &dyn BackingRead,
        _backing_size: Option<u64>,
        _force: bool,
        _progress: &mut dyn FnMut(f64),
    ) -> Result<()> {
        Err(Error::unsupported(format!(
            "Format driver '{}' does not support option amendment",
            self.format_name()
        )))
    }
    /// A read-only view of an internal snapshot (`convert -l`).
    fn snapshot(&self, _which: &str) -> Result<Box<dyn Driver>> {
        Err(Error::unsupported(
            "Failed to load snapshot: Can't find snapshot",
        ))
    }
    /// Persistent dirty bitmaps on disk, in directory order.
    fn bitmap_list(&self) -> Vec<BitmapInfo> {
        Vec::new()
    }
    /// Names of the bitmaps (in memory once loaded for writing).
    fn bitmap_names(&self) -> Vec<String> {
        Vec::new()
    }
    /// Add a persistent bitmap (granularity None: the format's default).
    fn bitmap_add(&self, _name: &str, _granularity: Option<u64>, _enabled: bool) -> Result<()> {
        Err(Error::unsupported(
            "Can't store persistent bitmaps to #block103: Operation not supported",
        ))
    }
    fn bitmap_remove(&self, name: &str) -> Result<()> {
        Err(no_bitmap(name))
    }
    fn bitmap_clear(&self, name: &str) -> Result<()> {
        Err(no_bitmap(name))
    }
    fn bitmap_set_enabled(&self, name: &str, _enabled: bool) -> Result<()> {
        Err(no_bitmap(name))
    }
    fn bitmap_read(&self, name: &str) -> Result<BitmapData> {
        Err(no_bitmap(name))
    }
    /// OR `src` into bitmap `dst`.
    fn bitmap_merge(&self, dst: &str, _src: &BitmapData) -> Result<()> {
        Err(no_bitmap(dst))
    }
    /// Clean shutdown: write back caches, clear dirty state.
    fn close(&self) -> Result<()> {
        self.flush()
    }
}

/// Options a driver gets at open time.
#[derive(Debug, Clone, Default)]
pub struct DriverOpenOptions {
    pub writable: bool,
    /// Opened by `check`: a corrupt image may be opened for repair, and a
    /// dirty one is not repaired on open (the check does it).
    pub for_check: bool,
    /// Only metadata will be read (`info`): encrypted images open without
    /// their key, as with QEMU's BDRV_O_NO_IO.
    pub metadata_only: bool,
    /// Id of the secret (see [`crate::crypto::secret`]) that unlocks an
    /// encrypted image (`encrypt.key-secret`, the luks driver's `key-secret`).
    pub key_secret: Option<String>,
    /// `encrypt.format` given at open: must match the header's method.
    pub encrypt_format: Option<String>,
    /// `data-file.filename` given at open: the external data file to use
    /// instead of the one the header names.
    pub data_file: Option<String>,
    /// raw's `offset`/`size` window (see [`crate::OpenOptions`]).
    pub raw_offset: Option<u64>,
    pub raw_size: Option<u64>,
}

/// Formats this build knows, in the order `qemu-img --help` lists ours.
pub const FORMATS: &[&str] = &[
    "luks", "qcow", "qcow2", "qed", "raw", "vdi", "vhdx", "vmdk", "vpc",
];

/// Guess a file's format from its first bytes (raw when nothing matches).
pub fn probe(file: &HostFile) -> Result<&'static str> {
    let mut head = [0u8; 512];
    file.read_at(&mut head, 0)?;
    if qcow2::probe(&head) {
        return Ok("qcow2");
    }
    if qcow::probe(&head) {
        return Ok("qcow");
    }
    if qed::probe(&head) {
        return Ok("qed");
    }
    if vdi::probe(&head) {
        return Ok("vdi");
    }
    if vhdx::probe(&head) {
        return Ok("vhdx");
    }
    if vmdk::probe(&head) {
        return Ok("vmdk");
    }
    if vpc::probe(&head) {
        return Ok("vpc");
    }
    if luks::probe(&head) {
        return Ok("luks");
    }
    Ok("raw")
}

pub fn is_known(format: &str) -> bool {
    FORMATS.contains(&format)
}

/// Every block driver qemu-img 10.0 names in `--help`: a backing format
/// recorded without opening it (`rebase -u -F`) may be any of them.
const QEMU_DRIVERS: &[&str] = &[
    "blkdebug",
    "blklogwrites",
    "blkverify",
    "bochs",
    "cloop",
    "compress",
    "copy-before-write",
    "copy-on-read",
    "dmg",
    "file",
    "ftp",
    "ftps",
    "gluster",
    "host_cdrom",
    "host_device",
    "http",
    "https",
    "iscsi",
    "iser",
    "luks",
    "nbd",
    "nfs",
    "null-aio",
    "null-co",
    "nvme",
    "parallels",
    "preallocate",
    "qcow",
    "qcow2",
    "qed",
    "quorum",
    "raw",
    "rbd",
    "replication",
    "snapshot-access",
    "ssh",
    "throttle",
    "vdi",
    "vhdx",
    "vmdk",
    "vpc",
    "vvfat",
];

/// True for any driver name QEMU knows, ours or not.
pub fn is_qemu_driver(name: &str) -> bool {
    QEMU_DRIVERS.contains(&name)
}

/// Open a driver of the given format on an already-open host file.
pub fn open_driver(
    format: &str,
    file: HostFile,
    opts: &DriverOpenOptions,
) -> Result<Box<dyn Driver>> {
    match format {
        "raw" => Ok(Box::new(raw::Raw::open_window(
            file,
            opts.raw_offset,
            opts.raw_size,
        )?)),
        "file" => Ok(Box::new(raw::Raw::open(file)?)),
        "qcow2" => Ok(Box::new(qcow2::Qcow2::open(file, opts)?)),
        "qcow" => Ok(Box::new(qcow::Qcow::open(file, opts)?)),
        "qed" => Ok(Box::new(qed::Qed::open(file, opts)?)),
        "vdi" => Ok(Box::new(vdi::Vdi::open(file, opts)?)),
        "vhdx" => Ok(Box::new(vhdx::Vhdx::open(file, opts)?)),
        "vmdk" => Ok(Box::new(vmdk::Vmdk::open(file, opts)?)),
        "vpc" => Ok(Box::new(vpc::Vpc::open(file, opts)?)),
        "luks" => Ok(Box::new(luks::Luks::open(file, opts)?)),
        _ => Err(Error::invalid(format!("Unknown driver '{format}'"))),
    }
}

/// Creation options a format accepts (for `-o help` and validation).
pub fn create_options(format: &str) -> Result<&'static [OptDesc]> {
    match format {
        "raw" => Ok(raw::CREATE_OPTS),
        "qcow2" => Ok(qcow2::CREATE_OPTS),
        "qcow" => Ok(qcow::CREATE_OPTS),
        "qed" => Ok(qed::CREATE_OPTS),
        "vdi" => Ok(vdi::CREATE_OPTS),
        "vhdx" => Ok(vhdx::CREATE_OPTS),
        "vmdk" => Ok(vmdk::CREATE_OPTS),
        "vpc" => Ok(vpc::CREATE_OPTS),
        "luks" => Ok(luks::CREATE_OPTS),
        _ => Err(Error::invalid(format!("Unknown file format '{format}'"))),
    }
}

/// Formats whose QEMU driver takes compressed writes (`convert -c`):
/// qcow2 and qcow store compressed clusters; VMDK accepts them and writes
/// plainly unless the extent is stream-optimized (compressed anyway).
pub fn can_compress(format: &str) -> bool {
    matches!(format, "qcow2" | "qcow" | "vmdk")
}

/// The errno text (`strerror`) QEMU would print for a failure, for the
/// messages that show only that ("Could not create snapshot 'x': ...").
fn no_bitmap(name: &str) -> Error {
    Error::new(
        crate::error::ErrorKind::NotFound,
        format!("Dirty bitmap '{name}' not found"),
    )
}

pub fn errno_text(e: &Error) -> String {
    use crate::error::ErrorKind as K;
    let n = e.errno().unwrap_or(match e.kind() {
        K::InvalidArgument | K::OutOfRange => libc::EINVAL,
        K::NotFound => libc::ENOENT,
        K::PermissionDenied => libc::EACCES,
        K::Io | K::Corrupt => libc::EIO,
        K::Unsupported => libc::ENOTSUP,
        K::Locked => libc::EAGAIN,
        K::Cancelled => libc::ECANCELED,
        K::NoSpace => libc::ENOSPC,
    });
    crate::error::strerror(n)
}

/// Options `amend` accepts for a format (None: the format cannot amend).
pub fn amend_options(format: &str) -> Result<Option<&'static [OptDesc]>> {
    match format {
        "raw" | "file" => Ok(None),
        "qcow2" => Ok(Some(qcow2::AMEND_OPTS)),
        "luks" => Ok(Some(luks::AMEND_OPTS)),
        "qcow" | "qed" | "vdi" | "vhdx" | "vmdk" | "vpc" => Ok(None),
        _ => Err(Error::invalid(format!("Unknown file format '{format}'"))),
    }
}

/// Create a new image file. `opts` holds the format's -o options, already
/// validated against [`create_options`]; `size` is in bytes.
pub fn create(format: &str, path: &Path, size: u64, opts: &CreateOptions) -> Result<()> {
    match format {
        "raw" => raw::create(path, size, opts),
        "qcow2" => qcow2::create(path, size, opts),
        "qcow" => qcow::create(path, size, opts),
        "qed" => qed::create(path, size, opts),
        "vdi" => vdi::create(path, size, opts),
        "vhdx" => vhdx::create(path, size, opts),
        "vmdk" => vmdk::create(path, size, opts),
        "vpc" => vpc::create(path, size, opts),
        "luks" => luks::create(path, size, opts),
        _ => Err(Error::invalid(format!("Unknown file format '{format}'"))),
    }
}
