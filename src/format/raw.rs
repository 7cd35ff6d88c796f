//! raw: the guest disk is the file itself.

use std::path::Path;

use super::{
    BackingRead, CreateOptions, Driver, DriverInfo, Extent, OptDesc, OptKind, Prealloc, Status,
};
use crate::error::{Error, Result};
use crate::io::HostFile;

pub const CREATE_OPTS: &[OptDesc] = &[
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
];

pub struct Raw {
    file: HostFile,
    size: parking_lot::RwLock<u64>,
    /// Where the image starts in the file (the `offset` option).
    offset: u64,
    /// A `size` option was given: the image cannot be resized.
    fixed: bool,
}

impl Raw {
    pub fn open(file: HostFile) -> Result<Self> {
        Self::open_window(file, None, None)
    }

    /// The image as `size` bytes of the file from `offset` (raw's options;
    /// checked as raw_apply_options does).
    pub fn open_window(file: HostFile, offset: Option<u64>, size: Option<u64>) -> Result<Self> {
        if size.is_some_and(|s| s % 512 != 0) {
            return Err(Error::invalid("Specified size is not multiple of 512"));
        }
        // QEMU's file layer counts whole sectors: a 1000-byte file is a
        // 1024-byte disk whose tail reads as zeros.
        let real = file.len()?.next_multiple_of(512);
        let off = offset.unwrap_or(0);
        let fixed = size.is_some();
        if off > real {
            return Err(Error::invalid(format!(
                "Offset ({off}) cannot be greater than size of the containing file ({real})"
            )));
        }
        let size = match size {
            Some(s) if s > real - off => {
                return Err(Error::invalid(format!(
                    "The sum of offset ({off}) and size ({s}) has to be smaller or equal to the  actual size of the containing file ({real})"
                )));
            }
            Some(s) => s,
            None => (real - off).next_multiple_of(512),
        };
        Ok(Raw {
            file,
            size: parking_lot::RwLock::new(size),
            offset: off,
            fixed,
        })
    }
}

/// Grow `file` to `size` with the given preallocation, from `from` onward.
pub(crate) fn preallocate(file: &HostFile, from: u64, size: u64, prealloc: Prealloc) -> Result<()> {
    if size <= from {
        return file.set_len(size);
    }
    match prealloc {
        Prealloc::Off | Prealloc::Metadata => file.set_len(size),
        Prealloc::Falloc => {
            file.set_len(size)?;
            file.allocate(from, size - from)
        }
        Prealloc::Full => {
            let buf = vec![0u8; 1 << 20];
            let mut pos = from;
            while pos < size {
                let n = (size - pos).min(buf.len() as u64) as usize;
                file.write_at(&buf[..n], pos)?;
                pos += n as u64;
            }
            file.set_len(size)
        }
    }
}

pub fn create(path: &Path, size: u64, opts: &CreateOptions) -> Result<()> {
    let prealloc = match opts.get("preallocation") {
        None => Prealloc::Off,
        Some(p @ ("off" | "falloc" | "full")) => Prealloc::parse(p)?,
        Some("metadata") => return Err(Error::invalid("Unsupported preallocation mode: metadata")),
        // file-posix parses the mode with qemu_opt_get's enum lookup, whose
        // failure text is this (not the QAPI "does not accept value").
        Some(p) => return Err(Error::invalid(format!("invalid parameter value: {p}"))),
    };
    // The file layer works in whole sectors.
    let size = size
        .checked_next_multiple_of(512)
        .ok_or_else(|| Error::invalid("Image size too large"))?;
    let file = HostFile::create(path)?;
    if size > i64::MAX as u64 {
        // Rounding up a size just below 2^63 leaves ftruncate a negative
        // length; QEMU reports its EINVAL after creating the file.
        return Err(Error::invalid("Could not resize file: Invalid argument"));
    }
    preallocate(&file, 0, size, prealloc)?;
    if prealloc == Prealloc::Off && size > 0 {
        // As QEMU does: allocate the first block so later alignment probing
        // on this file works (it shows as 4 KiB of data in `map`).
        let n = size.min(4096) as usize;
        file.write_at(&vec![0u8; n], 0)?;
    }
    Ok(())
}

impl Driver for Raw {
    fn format_name(&self) -> &'static str {
        "raw"
    }
    fn virtual_size(&self) -> u64 {
        *self.size.read()
    }
    fn host_file(&self) -> &HostFile {
        &self.file
    }
    fn info(&self) -> DriverInfo {
        DriverInfo::default()
    }
    fn block_status(&self, off: u64, max: u64) -> Result<Extent> {
        let host = off + self.offset;
        let (data, len) = self.file.data_status(host, max)?;
        Ok(Extent {
            len: len.max(1).min(max),
            status: if data { Status::Data } else { Status::Zero },
            offset: Some(host),
            compressed: false,
        })
    }
    fn read_at(&self, buf: &mut [u8], off: u64, _backing: &dyn BackingRead) -> Result<()> {
        self.file.read_at(buf, off + self.offset)
    }
    fn write_at(&self, buf: &[u8], off: u64, _backing: &dyn BackingRead) -> Result<()> {
        self.file.write_at(buf, off + self.offset)
    }
    fn write_zeroes(
        &self,
        off: u64,
        len: u64,
        may_unmap: bool,
        _b: &dyn BackingRead,
    ) -> Result<()> {
        self.file.write_zeroes(off + self.offset, len, may_unmap)
    }
    fn discard(&self, off: u64, len: u64) -> Result<()> {
        self.file.punch_hole(off + self.offset, len).map(|_| ())
    }
    fn flush(&self) -> Result<()> {
        self.file.flush()
    }
    fn truncate(&self, size: u64, prealloc: Prealloc) -> Result<()> {
        if prealloc == Prealloc::Metadata {
            return Err(Error::unsupported(
                "Unsupported preallocation mode: metadata",
            ));
        }
        if self.fixed {
            return Err(Error::unsupported("Cannot resize fixed-size raw disks"));
        }
        let mut cur = self.size.write();
        preallocate(&self.file, self.offset + *cur, self.offset + size, prealloc)?;
        *cur = size;
        Ok(())
    }
    fn io_granularity(&self) -> u64 {
        1 << 20
    }
}
