//! VDI (VirtualBox Disk Image), version 1.1, as QEMU reads and writes it.
//!
//! Layout: a 512-byte little-endian header (text banner, signature,
//! geometry, UUIDs), the block map (one u32 per 1 MiB block: the index of
//! the block's data in the data area, or 0xffffffff unallocated /
//! 0xfffffffe discarded, both reading as zeros), then the data area.
//! Static images map every block from the start; dynamic ones append
//! blocks in allocation order.
//!
//! Allocation order is QEMU's: the whole new block (data and zeros), then
//! the header (blocks_allocated), then the block map entry. A crash in
//! between leaves a block that nothing maps (`check` reports the count
//! mismatch), never a mapping to unwritten data.

use std::path::Path;

use parking_lot::{Mutex, RwLock};

use super::{
    BackingRead, CheckResult, CreateOptions, Driver, DriverInfo, DriverOpenOptions, Extent,
    OptDesc, OptKind, Repair, Status,
};
use crate::error::{Error, ErrorKind, Result};
use crate::io::HostFile;

pub const SIGNATURE: u32 = 0xbeda_107f;
const VERSION_1_1: u32 = 0x0001_0001;
const HEADER_LEN: usize = 512;
const SECTOR: u64 = 512;
const BLOCK_SIZE: u64 = 1 << 20;
const UNALLOCATED: u32 = 0xffff_ffff;
const DISCARDED: u32 = 0xffff_fffe;
const TYPE_DYNAMIC: u32 = 1;
const TYPE_STATIC: u32 = 2;
/// QEMU's limit on blocks in an image.
const BLOCKS_IN_IMAGE_MAX: u32 = 0x1fff_ff80;
const BANNER: &[u8] = b"<<< QEMU VM Virtual Disk Image >>>\n";

// Header field offsets.
const O_SIGNATURE: usize = 0x40;
const O_VERSION: usize = 0x44;
const O_HEADER_SIZE: usize = 0x48;
const O_IMAGE_TYPE: usize = 0x4c;
const O_OFFSET_BMAP: usize = 0x154;
const O_OFFSET_DATA: usize = 0x158;
const O_SECTOR_SIZE: usize = 0x168;
const O_DISK_SIZE: usize = 0x170;
const O_BLOCK_SIZE: usize = 0x178;
const O_BLOCKS_IN_IMAGE: usize = 0x180;
const O_BLOCKS_ALLOCATED: usize = 0x184;
const O_UUID_IMAGE: usize = 0x188;
const O_UUID_LAST_SNAP: usize = 0x198;
const O_UUID_LINK: usize = 0x1a8;
const O_UUID_PARENT: usize = 0x1b8;

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
    OptDesc {
        name: "static",
        kind: OptKind::Bool,
        help: "VDI static (pre-allocated) image",
    },
];

fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

fn le64(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(a)
}

fn put32(b: &mut [u8], o: usize, v: u32) {
    b[o..o + 4].copy_from_slice(&v.to_le_bytes());
}

fn put64(b: &mut [u8], o: usize, v: u64) {
    b[o..o + 8].copy_from_slice(&v.to_le_bytes());
}

/// The VDI signature at its offset (QEMU's probe; the head is
/// zero-padded to at least 512 bytes).
pub fn probe(head: &[u8]) -> bool {
    head.len() >= O_SIGNATURE + 4 && le32(head, O_SIGNATURE) == SIGNATURE
}

fn is_allocated(e: u32) -> bool {
    e < DISCARDED
}

fn unsupported(what: String) -> Error {
    Error::unsupported(format!("unsupported VDI image ({what})"))
}

fn read_only() -> Error {
    Error::new(ErrorKind::PermissionDenied, "Image is read-only")
}

/// Header state that changes as blocks are allocated.
struct State {
    /// The header as read (rewritten whole, as QEMU does).
    raw: [u8; HEADER_LEN],
    blocks_allocated: u32,
    /// Index the next new block gets (never one a mapping already uses).
    next_block: u64,
}

pub struct Vdi {
    file: HostFile,
    disk_size: u64,
    offset_bmap: u64,
    offset_data: u64,
    blocks_in_image: u32,
    /// Static image: QEMU lets the host file's holes show in block status.
    is_static: bool,
    /// Block map entries of the blocks the disk covers.
    bmap: RwLock<Vec<u32>>,
    state: Mutex<State>,
    /// Serialises allocations (a new block is written whole under it).
    alloc_lock: Mutex<()>,
    writable: bool,
}

impl Vdi {
    pub fn open(file: HostFile, opts: &DriverOpenOptions) -> Result<Vdi> {
        let mut raw = [0u8; HEADER_LEN];
        file.read_at(&mut raw, 0)?;
        // QEMU checks the size before anything else.
        let disk_size = le64(&raw, O_DISK_SIZE);
        let max = BLOCKS_IN_IMAGE_MAX as u64 * BLOCK_SIZE;
        if disk_size > max {
            return Err(Error::unsupported(format!(
                "Unsupported VDI image size (size is {disk_size:#x}, max supported is {max:#x})"
            )));
        }
        let sig = le32(&raw, O_SIGNATURE);
        if sig != SIGNATURE {
            return Err(Error::corrupt(format!(
                "Image not in VDI format (bad signature {sig:08x})"
            )));
        }
        let version = le32(&raw, O_VERSION);
        if version != VERSION_1_1 {
            return Err(unsupported(format!(
                "version {}.{}",
                version >> 16,
                version & 0xffff
            )));
        }
        // VBoxManage convertfromraw makes odd sizes; QEMU rounds them up.
        let disk_size = disk_size.next_multiple_of(SECTOR);
        put64(&mut raw, O_DISK_SIZE, disk_size);
        let offset_bmap = le32(&raw, O_OFFSET_BMAP);
        let offset_data = le32(&raw, O_OFFSET_DATA);
        let sector_size = le32(&raw, O_SECTOR_SIZE);
        let block_size = le32(&raw, O_BLOCK_SIZE);
        let blocks_in_image = le32(&raw, O_BLOCKS_IN_IMAGE);
        if !(offset_bmap as u64).is_multiple_of(SECTOR) {
            return Err(unsupported(format!(
                "unaligned block map offset {offset_bmap:#x}"
            )));
        }
        if !(offset_data as u64).is_multiple_of(SECTOR) {
            return Err(unsupported(format!(
                "unaligned data offset {offset_data:#x}"
            )));
        }
        if sector_size as u64 != SECTOR {
            return Err(unsupported(format!(
                "sector size {sector_size} is not {SECTOR}"
            )));
        }
        if block_size as u64 != BLOCK_SIZE {
            return Err(unsupported(format!(
                "block size {block_size} is not {BLOCK_SIZE}"
            )));
        }
        let room = blocks_in_image as u64 * BLOCK_SIZE;
        if disk_size > room {
            return Err(unsupported(format!(
                "disk size {disk_size}, image bitmap has room for {room}"
            )));
        }
        if raw[O_UUID_LINK..O_UUID_LINK + 16].iter().any(|&c| c != 0) {
            return Err(unsupported("non-NULL link UUID".into()));
        }
        if raw[O_UUID_PARENT..O_UUID_PARENT + 16]
            .iter()
            .any(|&c| c != 0)
        {
            return Err(unsupported("non-NULL parent UUID".into()));
        }
        if blocks_in_image > BLOCKS_IN_IMAGE_MAX {
            return Err(unsupported(format!(
                "too many blocks {blocks_in_image}, max is {BLOCKS_IN_IMAGE_MAX}"
            )));
        }
        // QEMU reads the whole map; past the end of the file it reads as
        // zeros (entries naming block 0). Only the part in the file is held,
        // so a header promising a huge disk costs no memory.
        let mapped = disk_size.div_ceil(BLOCK_SIZE);
        let in_file = file
            .len()?
            .saturating_sub(offset_bmap as u64)
            .div_ceil(4)
            .min(mapped);
        let mut rawmap = vec![0u8; in_file as usize * 4];
        file.read_at(&mut rawmap, offset_bmap as u64)?;
        let bmap: Vec<u32> = rawmap.chunks_exact(4).map(|c| le32(c, 0)).collect();
        let blocks_allocated = le32(&raw, O_BLOCKS_ALLOCATED);
        // QEMU appends at blocks_allocated; if the header undercounts, we
        // still never hand out an index a mapping uses.
        let max_used = bmap
            .iter()
            .filter(|&&e| is_allocated(e))
            .map(|&e| e as u64 + 1)
            .chain((in_file < mapped).then_some(1))
            .max()
            .unwrap_or(0);
        Ok(Vdi {
            disk_size,
            offset_bmap: offset_bmap as u64,
            offset_data: offset_data as u64,
            blocks_in_image,
            is_static: le32(&raw, O_IMAGE_TYPE) == TYPE_STATIC,
            bmap: RwLock::new(bmap),
            state: Mutex::new(State {
                raw,
                blocks_allocated,
                next_block: max_used.max(blocks_allocated as u64),
            }),
            alloc_lock: Mutex::new(()),
            writable: opts.writable,
            file,
        })
    }

    fn entry(&self, block: u64) -> u32 {
        self.bmap
            .read()
            .get(block as usize)
            .copied()
            // Past the file's end: the zeros QEMU reads there.
            .unwrap_or(0)
    }

    fn host(&self, entry: u32, in_block: u64) -> u64 {
        self.offset_data + entry as u64 * BLOCK_SIZE + in_block
    }

    fn read(&self, buf: &mut [u8], off: u64) -> Result<()> {
        let mut pos = 0usize;
        while pos < buf.len() {
            let g = off + pos as u64;
            let in_b = g % BLOCK_SIZE;
            let n = ((BLOCK_SIZE - in_b) as usize).min(buf.len() - pos);
            let out = &mut buf[pos..pos + n];
            let e = self.entry(g / BLOCK_SIZE);
            if is_allocated(e) {
                self.file.read_at(out, self.host(e, in_b))?;
            } else {
                out.fill(0);
            }
            pos += n;
        }
        Ok(())
    }

    fn write(&self, buf: &[u8], off: u64) -> Result<()> {
        if !self.writable {
            return Err(read_only());
        }
        let mut pos = 0usize;
        while pos < buf.len() {
            let g = off + pos as u64;
            let block = g / BLOCK_SIZE;
            let in_b = g % BLOCK_SIZE;
            let n = ((BLOCK_SIZE - in_b) as usize).min(buf.len() - pos);
            let data = &buf[pos..pos + n];
            let e = self.entry(block);
            if is_allocated(e) {
                self.file.write_at(data, self.host(e, in_b))?;
            } else {
                self.allocate(block, in_b, data)?;
            }
            pos += n;
        }
        Ok(())
    }

    /// Give `block` a new data block holding `data` at `in_b` (zeros
    /// elsewhere), then record it in the header and the block map.
    fn allocate(&self, block: u64, in_b: u64, data: &[u8]) -> Result<()> {
        let _a = self.alloc_lock.lock();
        let e = self.entry(block);
        if is_allocated(e) {
            // Another writer allocated it meanwhile.
            return self.file.write_at(data, self.host(e, in_b));
        }
        let idx = self.state.lock().next_block;
        if idx >= self.blocks_in_image as u64 {
            return Err(Error::corrupt(
                "VDI block map is inconsistent: no free block index",
            ));
        }
        let host = self.host(idx as u32, 0);
        if host >= self.file.len()? {
            // Past the end the block reads as zeros once the file covers it.
            self.file.set_len(host + BLOCK_SIZE)?;
            self.file.write_at(data, host + in_b)?;
        } else {
            let mut whole = vec![0u8; BLOCK_SIZE as usize];
            whole[in_b as usize..in_b as usize + data.len()].copy_from_slice(data);
            self.file.write_at(&whole, host)?;
        }
        {
            let mut st = self.state.lock();
            st.next_block = idx + 1;
            st.blocks_allocated = st.blocks_allocated.wrapping_add(1);
            let count = st.blocks_allocated;
            put32(&mut st.raw, O_BLOCKS_ALLOCATED, count);
            self.file.write_at(&st.raw, 0)?;
        }
        self.file
            .write_at(&(idx as u32).to_le_bytes(), self.offset_bmap + block * 4)?;
        let mut map = self.bmap.write();
        if map.len() <= block as usize {
            // block < disk size / BLOCK_SIZE <= BLOCKS_IN_IMAGE_MAX
            map.resize(block as usize + 1, 0);
        }
        map[block as usize] = idx as u32;
        Ok(())
    }

    fn zero(&self, off: u64, len: u64, may_unmap: bool) -> Result<()> {
        if !self.writable {
            return Err(read_only());
        }
        let end = off + len;
        let mut pos = off;
        while pos < end {
            let in_b = pos % BLOCK_SIZE;
            let n = (BLOCK_SIZE - in_b).min(end - pos);
            let e = self.entry(pos / BLOCK_SIZE);
            // Unallocated blocks read as zeros already (VDI has no backing).
            if is_allocated(e) {
                self.file.write_zeroes(self.host(e, in_b), n, may_unmap)?;
            }
            pos += n;
        }
        Ok(())
    }

    /// QEMU's vdi check: block map entries in range and unique, and
    /// blocks_allocated matching them. It cannot repair.
    fn check_image(&self, log: &mut dyn FnMut(&str)) -> Result<CheckResult> {
        let n = self.blocks_in_image as u64;
        let mut res = CheckResult::default();
        let mut seen = vec![0u64; n.div_ceil(64) as usize];
        let mut counted = 0u32;
        // The whole map, including entries past the disk's end, in chunks.
        const CHUNK: u64 = 1 << 18;
        let mut raw = vec![0u8; (CHUNK * 4) as usize];
        let mut first = 0u64;
        while first < n {
            let k = CHUNK.min(n - first);
            let bytes = &mut raw[..(k * 4) as usize];
            self.file.read_at(bytes, self.offset_bmap + first * 4)?;
            for (i, c) in bytes.chunks_exact(4).enumerate() {
                let block = first + i as u64;
                let e = le32(c, 0);
                if !is_allocated(e) {
                    continue;
                }
                if (e as u64) < n {
                    counted = counted.wrapping_add(1);
                    let (w, b) = ((e / 64) as usize, e % 64);
                    if seen[w] >> b & 1 == 0 {
                        seen[w] |= 1 << b;
                    } else {
                        log(&format!("ERROR: block index {e} also used by {e}"));
                        res.corruptions += 1;
                    }
                } else {
                    log(&format!("ERROR: block index {block} too large, is {e}"));
                    res.corruptions += 1;
                }
            }
            first += k;
        }
        let header = self.state.lock().blocks_allocated;
        if counted != header {
            log(&format!(
                "ERROR: allocated blocks mismatch, is {counted}, should be {header}"
            ));
            res.corruptions += 1;
        }
        Ok(res)
    }
}

impl Driver for Vdi {
    fn format_name(&self) -> &'static str {
        "vdi"
    }
    fn virtual_size(&self) -> u64 {
        self.disk_size
    }
    fn host_file(&self) -> &HostFile {
        &self.file
    }
    fn info(&self) -> DriverInfo {
        DriverInfo {
            cluster_size: Some(BLOCK_SIZE),
            ..DriverInfo::default()
        }
    }
    /// A static image's blocks defer to the host file (its holes read as
    /// zeros), as QEMU's vdi asks with BDRV_BLOCK_RECURSE.
    fn defers_to_host(&self, _off: u64) -> bool {
        self.is_static
    }
    fn block_status(&self, off: u64, max: u64) -> Result<Extent> {
        let end = off.saturating_add(max).min(self.disk_size).max(off + 1);
        let first = self.entry(off / BLOCK_SIZE);
        let mut pos = ((off / BLOCK_SIZE) + 1) * BLOCK_SIZE;
        // Extend over following blocks of the same kind (data: stored
        // right after the previous one).
        while pos < end {
            let e = self.entry(pos / BLOCK_SIZE);
            let same = if is_allocated(first) {
                is_allocated(e)
                    && e as u64 == first as u64 + (pos - off / BLOCK_SIZE * BLOCK_SIZE) / BLOCK_SIZE
            } else {
                !is_allocated(e)
            };
            if !same {
                break;
            }
            pos += BLOCK_SIZE;
        }
        let len = pos.min(end) - off;
        Ok(if is_allocated(first) {
            Extent {
                len,
                status: Status::Data,
                offset: Some(self.host(first, off % BLOCK_SIZE)),
                compressed: false,
            }
        } else {
            // No backing file is possible: this layer decides the zeros
            // (qemu-img map shows them present).
            Extent {
                len,
                status: Status::Zero,
                offset: None,
                compressed: false,
            }
        })
    }
    fn read_at(&self, buf: &mut [u8], off: u64, _backing: &dyn BackingRead) -> Result<()> {
        self.read(buf, off)
    }
    fn write_at(&self, buf: &[u8], off: u64, _backing: &dyn BackingRead) -> Result<()> {
        self.write(buf, off)
    }
    fn write_zeroes(
        &self,
        off: u64,
        len: u64,
        may_unmap: bool,
        _backing: &dyn BackingRead,
    ) -> Result<()> {
        self.zero(off, len, may_unmap)
    }
    fn flush(&self) -> Result<()> {
        self.file.flush()
    }
    fn io_granularity(&self) -> u64 {
        BLOCK_SIZE
    }
    fn truncate_zeroed(
        &self,
        _size: u64,
        _prealloc: super::Prealloc,
        _backing: &dyn BackingRead,
    ) -> Result<()> {
        Err(Error::unsupported(
            "Image format driver does not support resize",
        ))
    }
    fn check(&self, repair: Repair, log: &mut dyn FnMut(&str)) -> Result<CheckResult> {
        if repair != Repair::None {
            // QEMU's vdi check refuses to repair (ENOTSUP).
            return Err(Error::unsupported(
                "This image format does not support checks",
            ));
        }
        self.check_image(log)
    }
}

/// Sixteen random bytes as a version 4 UUID, stored the way QEMU stores
/// VDI UUIDs (first three fields little-endian).
fn random_uuid() -> Result<[u8; 16]> {
    let mut u = [0u8; 16];
    let mut got = 0usize;
    while got < u.len() {
        // SAFETY: getrandom writes at most the given length into our buffer.
        let r = unsafe { libc::getrandom(u[got..].as_mut_ptr().cast(), u.len() - got, 0) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e.into());
        }
        got += r as usize;
    }
    u[6] = (u[6] & 0x0f) | 0x40;
    u[8] = (u[8] & 0x3f) | 0x80;
    u[..4].reverse();
    u[4..6].reverse();
    u[6..8].reverse();
    Ok(u)
}

/// Create a VDI image (dynamic, or static with `static=on`).
pub fn create(path: &Path, size: u64, opts: &CreateOptions) -> Result<()> {
    super::qcow::check_protocol_prealloc(opts)?;
    let is_static = opts.get_bool("static", false)?;
    let max = BLOCKS_IN_IMAGE_MAX as u64 * BLOCK_SIZE;
    let size = size.checked_next_multiple_of(SECTOR).unwrap_or(u64::MAX);
    if size > max {
        return Err(Error::invalid(format!(
            "Unsupported VDI image size (size is {size:#x}, max supported is {max:#x})"
        )));
    }
    let blocks = size.div_ceil(BLOCK_SIZE);
    let bmap_bytes = (blocks * 4).next_multiple_of(SECTOR);
    let offset_bmap = HEADER_LEN as u64;
    let offset_data = offset_bmap + bmap_bytes;
    let mut h = [0u8; HEADER_LEN];
    h[..BANNER.len()].copy_from_slice(BANNER);
    put32(&mut h, O_SIGNATURE, SIGNATURE);
    put32(&mut h, O_VERSION, VERSION_1_1);
    put32(&mut h, O_HEADER_SIZE, 0x180);
    put32(
        &mut h,
        O_IMAGE_TYPE,
        if is_static { TYPE_STATIC } else { TYPE_DYNAMIC },
    );
    put32(&mut h, O_OFFSET_BMAP, offset_bmap as u32);
    put32(&mut h, O_OFFSET_DATA, offset_data as u32);
    put32(&mut h, O_SECTOR_SIZE, SECTOR as u32);
    put64(&mut h, O_DISK_SIZE, size);
    put32(&mut h, O_BLOCK_SIZE, BLOCK_SIZE as u32);
    put32(&mut h, O_BLOCKS_IN_IMAGE, blocks as u32);
    put32(
        &mut h,
        O_BLOCKS_ALLOCATED,
        if is_static { blocks as u32 } else { 0 },
    );
    h[O_UUID_IMAGE..O_UUID_IMAGE + 16].copy_from_slice(&random_uuid()?);
    h[O_UUID_LAST_SNAP..O_UUID_LAST_SNAP + 16].copy_from_slice(&random_uuid()?);
    let file = HostFile::create(path)?;
    file.write_at(&h, 0)?;
    // The block map, in pieces (up to 2 GiB for the largest images).
    const CHUNK: u64 = 1 << 18;
    let mut b = 0u64;
    while b < blocks {
        let k = CHUNK.min(blocks - b);
        let mut raw = Vec::with_capacity((k * 4) as usize);
        for i in b..b + k {
            let e = if is_static { i as u32 } else { UNALLOCATED };
            raw.extend_from_slice(&e.to_le_bytes());
        }
        file.write_at(&raw, offset_bmap + b * 4)?;
        b += k;
    }
    let len = if is_static {
        offset_data + blocks * BLOCK_SIZE
    } else {
        offset_data
    };
    file.set_len(len)?;
    file.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_is_version_4_as_stored() {
        let u = random_uuid().unwrap();
        // Byte 7 holds the version nibble once swapped back.
        assert_eq!(u[7] >> 4, 4);
        assert_eq!(u[8] >> 6, 2);
    }

    #[test]
    fn probe_needs_signature() {
        let mut h = vec![0u8; 512];
        assert!(!probe(&h));
        put32(&mut h, O_SIGNATURE, SIGNATURE);
        assert!(probe(&h));
    }
}
