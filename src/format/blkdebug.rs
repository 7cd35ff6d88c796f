//! blkdebug above a format node (`driver=blkdebug,image.driver=qcow2`):
//! a filter that passes everything to the format driver, checking guest
//! requests against the armed rules first. (Below a format, blkdebug lives
//! in the host file instead: see [`crate::io::blkdebug`].)

use std::sync::Arc;

use super::{
    BackingRead, BackingRef, CheckResult, CreateOptions, Driver, DriverInfo, Extent, ExtentFile,
    Prealloc, Repair, SnapshotInfo,
};
use crate::error::Result;
use crate::io::blkdebug::{Injector, IoType};
use crate::io::HostFile;

pub struct Filter {
    inner: Box<dyn Driver>,
    inj: Arc<Injector>,
}

impl Filter {
    pub fn new(inner: Box<dyn Driver>, inj: Arc<Injector>) -> Self {
        Filter { inner, inj }
    }
}

impl Driver for Filter {
    fn format_name(&self) -> &'static str {
        self.inner.format_name()
    }
    fn virtual_size(&self) -> u64 {
        self.inner.virtual_size()
    }
    fn host_file(&self) -> &HostFile {
        self.inner.host_file()
    }
    fn backing(&self) -> Option<BackingRef> {
        self.inner.backing()
    }
    fn info(&self) -> DriverInfo {
        self.inner.info()
    }
    fn block_status(&self, off: u64, max: u64) -> Result<Extent> {
        self.inj.check(IoType::BlockStatus, off, max)?;
        self.inner.block_status(off, max)
    }
    fn file_at(&self, off: u64) -> &HostFile {
        self.inner.file_at(off)
    }
    fn extent_file(&self, off: u64) -> Option<ExtentFile<'_>> {
        self.inner.extent_file(off)
    }
    fn extent_files(&self) -> Vec<(usize, &HostFile)> {
        self.inner.extent_files()
    }
    fn defers_to_host(&self, off: u64) -> bool {
        self.inner.defers_to_host(off)
    }
    fn read_at(&self, buf: &mut [u8], off: u64, backing: &dyn BackingRead) -> Result<()> {
        self.inj.check(IoType::Read, off, buf.len() as u64)?;
        self.inner.read_at(buf, off, backing)
    }
    fn write_at(&self, buf: &[u8], off: u64, backing: &dyn BackingRead) -> Result<()> {
        self.inj.check(IoType::Write, off, buf.len() as u64)?;
        self.inner.write_at(buf, off, backing)
    }
    fn write_zeroes(
        &self,
        off: u64,
        len: u64,
        may_unmap: bool,
        backing: &dyn BackingRead,
    ) -> Result<()> {
        self.inj.check(IoType::WriteZeroes, off, len)?;
        self.inner.write_zeroes(off, len, may_unmap, backing)
    }
    fn discard(&self, off: u64, len: u64) -> Result<()> {
        self.inj.check(IoType::Discard, off, len)?;
        self.inner.discard(off, len)
    }
    fn accepts_compressed_writes(&self) -> bool {
        self.inner.accepts_compressed_writes()
    }
    fn compression_cluster_size(&self) -> Option<u64> {
        self.inner.compression_cluster_size()
    }
    fn write_compressed(&self, buf: &[u8], off: u64) -> Result<()> {
        self.inj.check(IoType::Write, off, buf.len() as u64)?;
        self.inner.write_compressed(buf, off)
    }
    fn compress_cluster(&self, buf: &[u8]) -> Result<Option<Vec<u8>>> {
        self.inner.compress_cluster(buf)
    }
    fn write_compressed_raw(&self, data: &[u8], off: u64) -> Result<()> {
        self.inj.check(IoType::Write, off, data.len() as u64)?;
        self.inner.write_compressed_raw(data, off)
    }
    fn flush(&self) -> Result<()> {
        self.inj.check(IoType::Flush, 0, 0)?;
        self.inner.flush()
    }
    fn truncate(&self, size: u64, prealloc: Prealloc) -> Result<()> {
        self.inner.truncate(size, prealloc)
    }
    fn has_zero_init(&self) -> bool {
        self.inner.has_zero_init()
    }
    fn io_granularity(&self) -> u64 {
        self.inner.io_granularity()
    }
    fn check(&self, repair: Repair, log: &mut dyn FnMut(&str)) -> Result<CheckResult> {
        self.inner.check(repair, log)
    }
    fn truncate_zeroed(
        &self,
        size: u64,
        prealloc: Prealloc,
        backing: &dyn BackingRead,
    ) -> Result<()> {
        self.inner.truncate_zeroed(size, prealloc, backing)
    }
    fn make_empty(&self) -> Result<()> {
        self.inner.make_empty()
    }
    fn set_backing(&self, backing: Option<&BackingRef>) -> Result<()> {
        self.inner.set_backing(backing)
    }
    fn snapshot_create(&self, name: &str) -> Result<SnapshotInfo> {
        self.inner.snapshot_create(name)
    }
    fn snapshot_apply(&self, which: &str) -> Result<()> {
        self.inner.snapshot_apply(which)
    }
    fn snapshot_delete(&self, id: Option<&str>, name: Option<&str>) -> Result<()> {
        self.inner.snapshot_delete(id, name)
    }
    fn amend(
        &self,
        opts: &CreateOptions,
        backing: &dyn BackingRead,
        backing_size: Option<u64>,
        force: bool,
        progress: &mut dyn FnMut(f64),
    ) -> Result<()> {
        self.inner
            .amend(opts, backing, backing_size, force, progress)
    }
    fn snapshot(&self, which: &str) -> Result<Box<dyn Driver>> {
        self.inner.snapshot(which)
    }
    fn close(&self) -> Result<()> {
        self.inner.close()
    }
}
