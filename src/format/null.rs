//! null-co: QEMU's null block driver, a source of a given size whose
//! reads return zeros (with `read-zeroes`) and whose writes vanish. Only
//! reachable through `json:{"driver": "null-co", ...}`; it has no file of
//! its own, so it holds /dev/null where drivers hold their host file.

use super::{BackingRead, Driver, DriverInfo, Extent, Status};
use crate::error::Result;
use crate::io::{CacheMode, HostFile};

/// The `size` QEMU gives a null node by default (1 GiB).
pub const DEFAULT_SIZE: u64 = 1 << 30;

/// A null node's options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NullOptions {
    pub size: u64,
    pub read_zeroes: bool,
}

pub struct Null {
    file: HostFile,
    opts: NullOptions,
}

impl Null {
    pub fn open(opts: NullOptions) -> Result<Self> {
        let file = HostFile::open(
            std::path::Path::new("/dev/null"),
            false,
            CacheMode::default(),
        )?;
        Ok(Null { file, opts })
    }
}

impl Driver for Null {
    fn format_name(&self) -> &'static str {
        "null-co"
    }
    fn virtual_size(&self) -> u64 {
        self.opts.size
    }
    fn host_file(&self) -> &HostFile {
        &self.file
    }
    fn info(&self) -> DriverInfo {
        DriverInfo::default()
    }
    fn block_status(&self, off: u64, max: u64) -> Result<Extent> {
        // As QEMU's null_co_block_status: the whole range at its own
        // offset, zero when reads are zeros, else unallocated.
        Ok(Extent {
            len: max.min(self.opts.size.saturating_sub(off)).max(1),
            status: if self.opts.read_zeroes {
                Status::Zero
            } else {
                Status::Unallocated
            },
            offset: self.opts.read_zeroes.then_some(off),
            compressed: false,
        })
    }
    fn read_at(&self, buf: &mut [u8], _off: u64, _backing: &dyn BackingRead) -> Result<()> {
        // Without read-zeroes QEMU leaves the buffer as it is; zeros are
        // one of the contents it may have.
        buf.fill(0);
        Ok(())
    }
    fn write_at(&self, _buf: &[u8], _off: u64, _backing: &dyn BackingRead) -> Result<()> {
        Ok(())
    }
    fn write_zeroes(&self, _off: u64, _len: u64, _unmap: bool, _b: &dyn BackingRead) -> Result<()> {
        Ok(())
    }
    fn flush(&self) -> Result<()> {
        Ok(())
    }
}
