use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::blkdebug::{Injector, IoType};
use crate::error::{Error, Result};

/// QEMU's cache modes (`-t` / `-T`): they decide O_DIRECT and whether
/// flushes reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CacheMode {
    #[default]
    Writeback,
    Unsafe,
    None,
    Directsync,
    Writethrough,
}

impl CacheMode {
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "writeback" => CacheMode::Writeback,
            "unsafe" => CacheMode::Unsafe,
            "none" | "off" => CacheMode::None,
            "directsync" => CacheMode::Directsync,
            "writethrough" => CacheMode::Writethrough,
            _ => return Err(Error::invalid(format!("Invalid cache option: {s}"))),
        })
    }
    /// O_DIRECT in QEMU (cache.direct=on).
    pub fn direct(self) -> bool {
        matches!(self, CacheMode::None | CacheMode::Directsync)
    }
    fn ignores_flush(self) -> bool {
        self == CacheMode::Unsafe
    }
}

/// An open host file. All I/O is positional, so one `HostFile` is shared by
/// many threads without a lock.
#[derive(Debug)]
pub struct HostFile {
    file: File,
    path: PathBuf,
    writable: bool,
    cache: CacheMode,
    /// A blkdebug node between the format and this file (error injection).
    injector: Option<Arc<Injector>>,
    /// QEMU's request_alignment: 1, or what O_DIRECT needs with cache.direct.
    align: u64,
}

/// file-posix's raw_probe_alignment for an O_DIRECT file: the smallest of
/// 1, 512, 1024, 2048, 4096 bytes that a direct read accepts (1 counts as
/// 4096, the page). Only block status uses it (data runs that end at an
/// unaligned EOF are rounded up, as QEMU's are).
fn probe_alignment(path: &Path) -> u64 {
    let Ok(f) = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
    else {
        return 1;
    };
    let mut buf = super::AlignedBuf::with_len(4096);
    for align in [1usize, 512, 1024, 2048, 4096] {
        match f.read_at(&mut buf[..align], 0) {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => continue,
            _ => return if align == 1 { 4096 } else { align as u64 },
        }
    }
    1
}

fn open_error(path: &Path, e: std::io::Error) -> Error {
    let err = Error::from(e);
    let m = format!("Could not open '{}': {}", path.display(), err.message());
    err.with_message(m)
}

impl HostFile {
    /// Open an existing file. Errors read `Could not open 'path': <strerror>`.
    pub fn open(path: &Path, writable: bool, cache: CacheMode) -> Result<Self> {
        // file-posix refuses an empty name before trying to open anything.
        if path.as_os_str().is_empty() {
            return Err(Error::invalid(
                "The 'file' block driver requires a file name",
            ));
        }
        let mut oo = OpenOptions::new();
        oo.read(true).write(writable);
        // QEMU's cache=none means O_DIRECT with aligned bounce buffers. Our
        // I/O paths use byte-granular buffers, so we do not bypass the page
        // cache: we drop the file's cached pages at open instead (below),
        // and flushes still reach the disk.
        let file = match oo.open(path) {
            Ok(f) => f,
            // O_DIRECT is not supported everywhere (tmpfs); QEMU reports it too,
            // but falling back would silently change semantics, so keep the error.
            Err(e) => return Err(open_error(path, e)),
        };
        if file.metadata().map(|m| m.is_dir()).unwrap_or(false) {
            return Err(Error::invalid(format!(
                "'file' driver requires '{}' to be a regular file",
                path.display()
            )));
        }
        let mut align = 1;
        if cache.direct() {
            // SAFETY: posix_fadvise on a valid, owned descriptor.
            unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
            align = probe_alignment(path);
        }
        Ok(HostFile {
            file,
            path: path.to_path_buf(),
            writable,
            cache,
            injector: None,
            align,
        })
    }

    /// Create (or truncate) a file for writing.
    pub fn create(path: &Path) -> Result<Self> {
        if path.is_dir() {
            return Err(Error::invalid(format!(
                "Could not create '{}': Is a directory",
                path.display()
            )));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(path)
            .map_err(|e| {
                let err = Error::from(e);
                let m = format!("Could not create '{}': {}", path.display(), err.message());
                err.with_message(m)
            })?;
        let f = HostFile {
            file,
            path: path.to_path_buf(),
            writable: true,
            cache: CacheMode::Writeback,
            injector: None,
            align: 1,
        };
        // Truncate only under the write lock, so an image in use (e.g. the
        // source of the same convert) is refused instead of destroyed.
        f.lock(super::LockMode::Write)?;
        f.set_len(0)?;
        Ok(f)
    }

    /// A second handle on the same open file (shares the file description).
    pub fn try_clone(&self) -> Result<Self> {
        Ok(HostFile {
            file: self.file.try_clone()?,
            path: self.path.clone(),
            writable: false,
            cache: self.cache,
            injector: self.injector.clone(),
            align: self.align,
        })
    }

    /// Put a blkdebug node in front of this file: its rules then see the
    /// events drivers raise here and may fail requests.
    pub fn set_injector(&mut self, inj: Arc<Injector>) {
        self.injector = Some(inj);
    }
    pub fn has_injector(&self) -> bool {
        self.injector.is_some()
    }

    /// A driver reached a named step (QEMU's BLKDBG_EVENT on bs->file);
    /// nothing happens unless a blkdebug node sits here.
    pub fn event(&self, name: &str) {
        if let Some(i) = &self.injector {
            i.event(name);
        }
    }

    fn inject(&self, io: IoType, off: u64, len: u64) -> Result<()> {
        match &self.injector {
            Some(i) => i.check(io, off, len),
            None => Ok(()),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn is_writable(&self) -> bool {
        self.writable
    }
    pub fn cache_mode(&self) -> CacheMode {
        self.cache
    }
    pub fn raw_fd(&self) -> i32 {
        self.file.as_raw_fd()
    }

    /// Current length of the file in bytes.
    pub fn len(&self) -> Result<u64> {
        Ok(self.file.metadata()?.len())
    }
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Bytes actually allocated on the host (st_blocks * 512), what qemu-img
    /// calls "disk size".
    pub fn allocated_size(&self) -> Result<u64> {
        use std::os::unix::fs::MetadataExt;
        Ok(self.file.metadata()?.blocks() * 512)
    }

    /// Read exactly `buf.len()` bytes; bytes past end of file read as zero.
    pub fn read_at(&self, buf: &mut [u8], off: u64) -> Result<()> {
        self.inject(IoType::Read, off, buf.len() as u64)?;
        let mut done = 0usize;
        while done < buf.len() {
            match self.file.read_at(&mut buf[done..], off + done as u64) {
                Ok(0) => {
                    buf[done..].fill(0);
                    return Ok(());
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Read exactly `buf.len()` bytes; a short read is an error (for
    /// metadata that must exist).
    pub fn read_exact_at(&self, buf: &mut [u8], off: u64) -> Result<()> {
        self.inject(IoType::Read, off, buf.len() as u64)?;
        self.file.read_exact_at(buf, off).map_err(Error::from)
    }

    pub fn write_at(&self, buf: &[u8], off: u64) -> Result<()> {
        if self.injector.is_some() {
            // The block layer raises these around every write it passes down.
            self.event("pwritev");
            self.inject(IoType::Write, off, buf.len() as u64)?;
            self.file.write_all_at(buf, off).map_err(Error::from)?;
            self.event("pwritev_done");
            return Ok(());
        }
        self.file.write_all_at(buf, off).map_err(Error::from)
    }

    pub fn flush(&self) -> Result<()> {
        if self.injector.is_some() {
            self.event("flush_to_os");
            self.event("flush_to_disk");
            self.inject(IoType::Flush, 0, 0)?;
        }
        if self.cache.ignores_flush() || !self.writable {
            return Ok(());
        }
        // SAFETY: fdatasync on a valid, owned descriptor.
        let r = unsafe { libc::fdatasync(self.file.as_raw_fd()) };
        if r != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        Ok(())
    }

    pub fn set_len(&self, len: u64) -> Result<()> {
        self.file.set_len(len).map_err(Error::from)
    }

    fn fallocate_raw(&self, mode: i32, off: u64, len: u64) -> std::io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        // SAFETY: fallocate on a valid, owned descriptor with plain integers.
        let r = unsafe { libc::fallocate(self.file.as_raw_fd(), mode, off as i64, len as i64) };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Reserve space (preallocation=falloc); may extend the file.
    pub fn allocate(&self, off: u64, len: u64) -> Result<()> {
        self.fallocate_raw(0, off, len).map_err(Error::from)
    }

    /// Deallocate a range, keeping the file size; reads then return zeros.
    /// Returns false when the host cannot punch holes.
    pub fn punch_hole(&self, off: u64, len: u64) -> Result<bool> {
        self.inject(IoType::Discard, off, len)?;
        match self.fallocate_raw(
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            off,
            len,
        ) {
            Ok(()) => Ok(true),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS)
                ) =>
            {
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Make a range read as zeros: punch a hole when allowed, else zero-range,
    /// else write zeros.
    /// Zeros that take disk space, also past EOF (which the file grows
    /// to cover): what QEMU's file driver does for a zero write it may not
    /// unmap, FALLOC_FL_ZERO_RANGE first. Where `write_zeroes` would only
    /// extend the file, this leaves the area allocated, so the host file
    /// reports data there as in qemu-img's copy (qcow2 downgrade's zero
    /// clusters).
    pub fn write_zeroes_allocated(&self, off: u64, len: u64) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        self.inject(IoType::WriteZeroes, off, len)?;
        if self
            .fallocate_raw(libc::FALLOC_FL_ZERO_RANGE, off, len)
            .is_ok()
        {
            return Ok(());
        }
        self.zero_range(off, len, false)
    }

    pub fn write_zeroes(&self, off: u64, len: u64, may_unmap: bool) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        self.inject(IoType::WriteZeroes, off, len)?;
        self.zero_range(off, len, may_unmap)
    }

    fn zero_range(&self, off: u64, len: u64, may_unmap: bool) -> Result<()> {
        let end = off + len;
        let flen = self.len()?;
        if may_unmap && end <= flen && self.punch_hole(off, len)? {
            return Ok(());
        }
        if off >= flen {
            // Past EOF already reads as zero; just extend.
            if end > flen {
                self.set_len(end)?;
            }
            return Ok(());
        }
        if self
            .fallocate_raw(libc::FALLOC_FL_ZERO_RANGE, off, len)
            .is_ok()
        {
            return Ok(());
        }
        self.write_zero_bytes(off, len)
    }

    /// Write `len` zero bytes at `off` as data (full preallocation, and
    /// where the host cannot zero a range itself), 1 MiB per call.
    pub fn write_zero_bytes(&self, off: u64, len: u64) -> Result<()> {
        let chunk = super::AlignedBuf::with_len(len.min(1 << 20) as usize);
        let end = off + len;
        let mut pos = off;
        while pos < end {
            let n = (end - pos).min(chunk.len() as u64) as usize;
            self.write_at(&chunk[..n], pos)?;
            pos += n as u64;
        }
        Ok(())
    }

    fn lseek(&self, off: u64, whence: i32) -> std::io::Result<Option<u64>> {
        // SAFETY: lseek on a valid, owned descriptor.
        let r = unsafe { libc::lseek(self.file.as_raw_fd(), off as libc::off_t, whence) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                return Ok(None);
            }
            return Err(e);
        }
        Ok(Some(r as u64))
    }

    /// Sparseness at `off`: `(is_data, bytes)` for the run starting at `off`,
    /// limited to `max`. Hosts without SEEK_DATA report everything as data.
    ///
    /// No fstat on the common path (convert asks once per extent): SEEK_DATA
    /// at or past EOF fails with ENXIO, which is the hole answer anyway.
    pub fn data_status(&self, off: u64, max: u64) -> Result<(bool, u64)> {
        self.inject(IoType::BlockStatus, off, max)?;
        let data = match self.lseek(off, libc::SEEK_DATA) {
            Ok(d) => d,
            Err(_) => {
                let flen = self.len()?;
                if off >= flen {
                    return Ok((false, max));
                }
                return Ok((true, max.min(flen - off)));
            }
        };
        match data {
            None => Ok((false, max)),
            Some(d) if d > off => Ok((false, (d - off).min(max))),
            Some(_) => {
                let hole = match self.lseek(off, libc::SEEK_HOLE) {
                    Ok(Some(h)) => h,
                    _ => self.len()?,
                };
                // No partial blocks: a run ending at an unaligned EOF
                // covers the rest of its block.
                let n = (hole.max(off + 1) - off).next_multiple_of(self.align);
                Ok((true, n.min(max)))
            }
        }
    }
}
