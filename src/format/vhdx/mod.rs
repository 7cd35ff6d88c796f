//! vhdx: Microsoft's Hyper-V VHDX images (MS-VHDX), dynamic and fixed.
//!
//! Layout: a 1 MiB header section (file identifier, two headers with
//! sequence numbers, two region tables), then the log, the block
//! allocation table (BAT: payload entries interleaved with sector bitmap
//! entries every `chunk_ratio` blocks) and the metadata region (file
//! parameters, virtual size, sector sizes, page 83 id). Every header and
//! table carries a CRC-32C. Payload blocks live at 1 MiB-aligned offsets.
//!
//! Behaviour follows QEMU's driver: the log is replayed on open (refused
//! read-only), the first guest-visible write moves both headers to a new
//! sequence number with fresh write GUIDs, new blocks are appended at the
//! end of the file and their BAT entries are journaled through the log.
//! Differencing images (with a parent) are refused, as in QEMU.

mod crc32c;
mod create;
mod log;

use parking_lot::{Mutex, RwLock};

use super::{
    BackingRead, CheckResult, Driver, DriverInfo, DriverOpenOptions, Extent, OptDesc, OptKind,
    Repair, Status,
};
use crate::error::{Error, ErrorKind, Result};
use crate::io::HostFile;
pub use create::create;
use log::LogState;

pub const CREATE_OPTS: &[OptDesc] = &[
    OptDesc {
        name: "block_size",
        kind: OptKind::Size,
        help: "Block Size; min 1MB, max 256MB. 0 means auto-calculate based on image size.",
    },
    OptDesc {
        name: "block_state_zero",
        kind: OptKind::Bool,
        help: "Force use of payload blocks of type 'ZERO'. Non-standard, but default.  Do not set to 'off' when using 'qemu-img convert' with subformat=dynamic.",
    },
    OptDesc {
        name: "extent_size_hint",
        kind: OptKind::Size,
        help: "Extent size hint for the image file, 0 to disable",
    },
    OptDesc {
        name: "log_size",
        kind: OptKind::Size,
        help: "Log size; min 1MB.",
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
        help: "Virtual disk size; max of 64TB.",
    },
    OptDesc {
        name: "subformat",
        kind: OptKind::Str,
        help: "VHDX format type, can be either 'dynamic' or 'fixed'. Default is 'dynamic'.",
    },
];

const MIB: u64 = 1 << 20;
const HEADER_BLOCK: u64 = 64 * 1024;
const HEADER1_OFFSET: u64 = HEADER_BLOCK;
const HEADER2_OFFSET: u64 = 2 * HEADER_BLOCK;
const REGION_TABLE_OFFSET: u64 = 3 * HEADER_BLOCK;
const REGION_TABLE2_OFFSET: u64 = 4 * HEADER_BLOCK;
const HEADER_SIZE: usize = 4096;
const HEADER_STRUCT: usize = 80;

const SIG_HEAD: u32 = 0x6461_6568; // "head"
const SIG_REGI: u32 = 0x6967_6572; // "regi"
const SIG_METADATA: u64 = 0x6174_6164_6174_656d; // "metadata"

const BLOCK_SIZE_MIN: u64 = MIB;
const BLOCK_SIZE_MAX: u64 = 256 * MIB;
const MAX_SECTORS_PER_BLOCK: u64 = 1 << 23;
const METADATA_TABLE_MAX: usize = 32 * 2048;

const STATE_MASK: u64 = 7;
const FILE_OFF_MASK: u64 = 0xffff_ffff_fff0_0000;
const PAYLOAD_NOT_PRESENT: u64 = 0;
const PAYLOAD_UNDEFINED: u64 = 1;
const PAYLOAD_ZERO: u64 = 2;
const PAYLOAD_UNMAPPED: u64 = 3;
const PAYLOAD_UNMAPPED_V095: u64 = 5;
const PAYLOAD_FULLY_PRESENT: u64 = 6;

const PARAMS_LEAVE_BLOCKS_ALLOCATED: u32 = 1;
const PARAMS_HAS_PARENT: u32 = 2;
const META_IS_REQUIRED: u32 = 4;
const REGION_REQUIRED: u32 = 1;

/// BAT entries we keep in memory at most: a 64 TiB disk of 1 MiB blocks
/// with its sector bitmap entries (512 MiB of table).
const MAX_BAT_ENTRIES: u64 = (64 << 20) + (16 << 10) + 1;

pub(crate) const ZERO_GUID: [u8; 16] = [0; 16];

// Known GUIDs, in their on-disk (little-endian MS GUID) byte order.
const BAT_GUID: [u8; 16] = guid(
    0x2dc2_7766,
    0xf623,
    0x4200,
    [0x9d, 0x64, 0x11, 0x5e, 0x9b, 0xfd, 0x4a, 0x08],
);
const METADATA_GUID: [u8; 16] = guid(
    0x8b7c_a206,
    0x4790,
    0x4b9a,
    [0xb8, 0xfe, 0x57, 0x5f, 0x05, 0x0f, 0x88, 0x6e],
);
const FILE_PARAM_GUID: [u8; 16] = guid(
    0xcaa1_6737,
    0xfa36,
    0x4d43,
    [0xb3, 0xb6, 0x33, 0xf0, 0xaa, 0x44, 0xe7, 0x6b],
);
const VIRTUAL_SIZE_GUID: [u8; 16] = guid(
    0x2fa5_4224,
    0xcd1b,
    0x4876,
    [0xb2, 0x11, 0x5d, 0xbe, 0xd8, 0x3b, 0xf4, 0xb8],
);
const PAGE83_GUID: [u8; 16] = guid(
    0xbeca_12ab,
    0xb2e6,
    0x4523,
    [0x93, 0xef, 0xc3, 0x09, 0xe0, 0x00, 0xc7, 0x46],
);
const PHYS_SECTOR_GUID: [u8; 16] = guid(
    0xcda3_48c7,
    0x445d,
    0x4471,
    [0x9c, 0xc9, 0xe9, 0x88, 0x52, 0x51, 0xc5, 0x56],
);
const PARENT_LOCATOR_GUID: [u8; 16] = guid(
    0xa8d3_5f2d,
    0xb30b,
    0x454d,
    [0xab, 0xf7, 0xd3, 0xd8, 0x48, 0x34, 0xab, 0x0c],
);
const LOGICAL_SECTOR_GUID: [u8; 16] = guid(
    0x8141_bf1d,
    0xa96f,
    0x4709,
    [0xba, 0x47, 0xf2, 0x33, 0xa8, 0xfa, 0xab, 0x5f],
);

const fn guid(d1: u32, d2: u16, d3: u16, d4: [u8; 8]) -> [u8; 16] {
    let a = d1.to_le_bytes();
    let b = d2.to_le_bytes();
    let c = d3.to_le_bytes();
    [
        a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d4[0], d4[1], d4[2], d4[3], d4[4], d4[5],
        d4[6], d4[7],
    ]
}

pub(crate) fn le16(b: &[u8], o: usize) -> u16 {
    match b.get(o..o + 2) {
        Some(s) => u16::from_le_bytes([s[0], s[1]]),
        None => 0,
    }
}
pub(crate) fn le32(b: &[u8], o: usize) -> u32 {
    match b.get(o..o + 4) {
        Some(s) => u32::from_le_bytes([s[0], s[1], s[2], s[3]]),
        None => 0,
    }
}
pub(crate) fn le64(b: &[u8], o: usize) -> u64 {
    match b.get(o..o + 8) {
        Some(s) => {
            let mut a = [0u8; 8];
            a.copy_from_slice(s);
            u64::from_le_bytes(a)
        }
        None => 0,
    }
}

/// A line as QEMU's error_report prints it: the program name first.
pub(crate) fn error_report(msg: &str) -> String {
    let prog = std::env::args()
        .next()
        .map(|a| a.rsplit('/').next().unwrap_or_default().to_string())
        .unwrap_or_default();
    if prog.is_empty() {
        msg.to_string()
    } else {
        format!("{prog}: {msg}")
    }
}

/// One VHDX header, kept as its 80 on-disk bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Header {
    raw: [u8; HEADER_STRUCT],
}

impl Header {
    fn guid_at(&self, o: usize) -> [u8; 16] {
        let mut g = [0u8; 16];
        g.copy_from_slice(&self.raw[o..o + 16]);
        g
    }
    fn signature(&self) -> u32 {
        le32(&self.raw, 0)
    }
    fn sequence(&self) -> u64 {
        le64(&self.raw, 8)
    }
    fn set_sequence(&mut self, v: u64) {
        self.raw[8..16].copy_from_slice(&v.to_le_bytes());
    }
    fn set_file_write_guid(&mut self, g: [u8; 16]) {
        self.raw[16..32].copy_from_slice(&g);
    }
    fn set_data_write_guid(&mut self, g: [u8; 16]) {
        self.raw[32..48].copy_from_slice(&g);
    }
    pub(crate) fn log_guid(&self) -> [u8; 16] {
        self.guid_at(48)
    }
    fn set_log_guid(&mut self, g: [u8; 16]) {
        self.raw[48..64].copy_from_slice(&g);
    }
    pub(crate) fn log_version(&self) -> u16 {
        le16(&self.raw, 64)
    }
    fn version(&self) -> u16 {
        le16(&self.raw, 66)
    }
    pub(crate) fn log_length(&self) -> u32 {
        le32(&self.raw, 68)
    }
    pub(crate) fn log_offset(&self) -> u64 {
        le64(&self.raw, 72)
    }
}

/// Mutable state shared by header updates, the log and allocation.
pub(crate) struct State {
    headers: [Header; 2],
    curr: usize,
    log: LogState,
    first_visible_write: bool,
    session_guid: [u8; 16],
    /// Where the next payload block goes (past everything in the file).
    alloc_end: u64,
}

/// Write header `h` at `offset`: the checksum covers the whole 4 KiB
/// (whatever follows the 80 bytes on disk), only the 80 bytes are written.
fn write_header(file: &HostFile, h: &Header, offset: u64) -> Result<()> {
    let mut buf = [0u8; HEADER_SIZE];
    file.read_at(&mut buf, offset)?;
    buf[..HEADER_STRUCT].copy_from_slice(&h.raw);
    crc32c::update(&mut buf, 4);
    file.write_at(&buf[..HEADER_STRUCT], offset)?;
    file.flush()
}

/// Move the non-current header to the next sequence number (with this
/// session's file write GUID, optionally a new data write GUID and a new
/// log GUID) and make it current.
fn update_header(
    file: &HostFile,
    st: &mut State,
    new_data_guid: bool,
    log_guid: Option<[u8; 16]>,
) -> Result<()> {
    let (idx, off) = if st.curr == 0 {
        (1, HEADER2_OFFSET)
    } else {
        (0, HEADER1_OFFSET)
    };
    let seq = st.headers[st.curr].sequence().wrapping_add(1);
    let session = st.session_guid;
    let h = &mut st.headers[idx];
    h.set_sequence(seq);
    h.set_file_write_guid(session);
    if new_data_guid {
        h.set_data_write_guid(crate::format::vpc::random_uuid());
    }
    if let Some(g) = log_guid {
        h.set_log_guid(g);
    }
    let h = h.clone();
    write_header(file, &h, off)?;
    st.curr = idx;
    Ok(())
}

/// Both headers, one after the other, as the specification asks.
pub(crate) fn update_headers(
    file: &HostFile,
    st: &mut State,
    new_data_guid: bool,
    log_guid: Option<[u8; 16]>,
) -> Result<()> {
    update_header(file, st, new_data_guid, log_guid)?;
    update_header(file, st, new_data_guid, log_guid)
}

/// Before the first guest-visible change: new data write GUID.
pub(crate) fn user_visible_write(file: &HostFile, st: &mut State) -> Result<()> {
    if st.first_visible_write {
        st.first_visible_write = false;
        update_headers(file, st, true, None)?;
    }
    Ok(())
}

/// Read both headers and pick the current one.
fn parse_headers(file: &HostFile) -> Result<([Header; 2], usize)> {
    let mut hs = Vec::new();
    let mut valid = [false; 2];
    for (i, off) in [HEADER1_OFFSET, HEADER2_OFFSET].into_iter().enumerate() {
        let mut buf = [0u8; HEADER_SIZE];
        file.read_at(&mut buf, off)?;
        let mut raw = [0u8; HEADER_STRUCT];
        raw.copy_from_slice(&buf[..HEADER_STRUCT]);
        let h = Header { raw };
        valid[i] = crc32c::is_valid(&buf, 4) && h.signature() == SIG_HEAD && h.version() == 1;
        hs.push(h);
    }
    let h2 = hs.pop().unwrap_or(Header {
        raw: [0; HEADER_STRUCT],
    });
    let h1 = hs.pop().unwrap_or(Header {
        raw: [0; HEADER_STRUCT],
    });
    let none = || Error::corrupt("No valid VHDX header found");
    let curr = match valid {
        [true, false] => 0,
        [false, true] => 1,
        [false, false] => return Err(none()),
        [true, true] => {
            if h1.sequence() > h2.sequence() {
                0
            } else if h2.sequence() > h1.sequence() {
                1
            } else if h1 == h2 {
                // Disk2VHD writes two identical headers.
                0
            } else {
                return Err(none());
            }
        }
    };
    Ok(([h1, h2], curr))
}

/// Regions of the file (log, region table entries) that must not overlap.
struct Regions(Vec<(u64, u64)>);

impl Regions {
    fn check(&self, start: u64, len: u64) -> Result<()> {
        let end = start.wrapping_add(len);
        for &(s, e) in &self.0 {
            if !(start >= e || end <= s) {
                crate::events::notice(&error_report(&format!(
                    "VHDX region {start}-{end} overlaps with region {s}-{e}"
                )));
                return Err(Error::from_errno(libc::EINVAL));
            }
        }
        Ok(())
    }
    fn register(&mut self, start: u64, len: u64) {
        self.0.insert(0, (start, start.wrapping_add(len)));
    }
}

struct RegionTable {
    bat_offset: u64,
    bat_length: u32,
    metadata_offset: u64,
}

fn parse_region_table(file: &HostFile, regions: &mut Regions) -> Result<RegionTable> {
    let mut buf = vec![0u8; HEADER_BLOCK as usize];
    file.read_at(&mut buf, REGION_TABLE_OFFSET)?;
    let einval = || Error::from_errno(libc::EINVAL);
    if !crc32c::is_valid(&buf, 4) || le32(&buf, 0) != SIG_REGI {
        return Err(einval());
    }
    let count = le32(&buf, 8);
    if count > 2047 {
        return Err(einval());
    }
    let mut bat = None;
    let mut meta = None;
    for i in 0..count as usize {
        let e = &buf[16 + i * 32..16 + (i + 1) * 32];
        let off = le64(e, 16);
        let len = le32(e, 24);
        let bits = le32(e, 28);
        regions.check(off, len as u64)?;
        regions.register(off, len as u64);
        if e[..16] == BAT_GUID {
            if bat.is_some() {
                return Err(einval());
            }
            bat = Some((off, len));
        } else if e[..16] == METADATA_GUID {
            if meta.is_some() {
                return Err(einval());
            }
            meta = Some(off);
        } else if bits & REGION_REQUIRED != 0 {
            return Err(Error::from_errno(libc::ENOTSUP));
        }
    }
    match (bat, meta) {
        (Some((bat_offset, bat_length)), Some(metadata_offset)) => Ok(RegionTable {
            bat_offset,
            bat_length,
            metadata_offset,
        }),
        _ => Err(einval()),
    }
}

/// What the metadata region says about the disk.
struct Params {
    block_size: u64,
    virtual_size: u64,
}

fn parse_metadata(file: &HostFile, md_off: u64) -> Result<Params> {
    let einval = || Error::from_errno(libc::EINVAL);
    let enotsup = || Error::from_errno(libc::ENOTSUP);
    let mut buf = vec![0u8; METADATA_TABLE_MAX];
    file.read_at(&mut buf, md_off)?;
    if le64(&buf, 0) != SIG_METADATA {
        return Err(einval());
    }
    let count = le16(&buf, 10) as usize;
    if count * 32 > METADATA_TABLE_MAX - 32 {
        return Err(einval());
    }
    // file params, virtual size, page 83, logical, physical, parent
    let known = [
        FILE_PARAM_GUID,
        VIRTUAL_SIZE_GUID,
        PAGE83_GUID,
        LOGICAL_SECTOR_GUID,
        PHYS_SECTOR_GUID,
        PARENT_LOCATOR_GUID,
    ];
    let mut offsets = [None::<u32>; 6];
    for i in 0..count {
        let e = &buf[32 + i * 32..32 + (i + 1) * 32];
        match known.iter().position(|g| e[..16] == *g) {
            Some(k) => {
                if offsets[k].is_some() {
                    return Err(einval());
                }
                offsets[k] = Some(le32(e, 16));
            }
            None if le32(e, 24) & META_IS_REQUIRED != 0 => return Err(enotsup()),
            None => {}
        }
    }
    // All five required items, and no parent locator.
    if offsets[..5].iter().any(Option::is_none) || offsets[5].is_some() {
        return Err(enotsup());
    }
    let read = |k: usize, n: usize| -> Result<Vec<u8>> {
        let mut v = vec![0u8; n];
        let off = md_off
            .checked_add(offsets[k].unwrap_or(0) as u64)
            .ok_or_else(einval)?;
        file.read_at(&mut v, off)?;
        Ok(v)
    };
    let p = read(0, 8)?;
    let block_size = le32(&p, 0) as u64;
    let bits = le32(&p, 4);
    if bits & PARAMS_HAS_PARENT != 0 {
        // A parent flag needs a parent locator, which we refused above.
        return Err(einval());
    }
    let virtual_size = le64(&read(1, 8)?, 0);
    let logical = le32(&read(3, 4)?, 0);
    let _physical = le32(&read(4, 4)?, 0);
    if !(BLOCK_SIZE_MIN..=BLOCK_SIZE_MAX).contains(&block_size) {
        return Err(einval());
    }
    if logical != 512 {
        return Err(enotsup());
    }
    if !block_size.is_power_of_two() {
        return Err(einval());
    }
    Ok(Params {
        block_size,
        virtual_size,
    })
}

/// Geometry derived from the block size.
#[derive(Debug, Clone, Copy)]
struct Geo {
    block_size: u64,
    sectors_per_block_bits: u32,
    chunk_ratio_bits: u32,
}

impl Geo {
    fn new(block_size: u64) -> Geo {
        let spb = block_size / 512;
        let chunk_ratio = MAX_SECTORS_PER_BLOCK * 512 / block_size;
        Geo {
            block_size,
            sectors_per_block_bits: spb.trailing_zeros(),
            chunk_ratio_bits: chunk_ratio.trailing_zeros(),
        }
    }
    /// BAT entries for a disk of `size` bytes (payload and bitmap entries),
    /// with QEMU's 32-bit arithmetic.
    fn bat_entries(&self, size: u64) -> u64 {
        let data_blocks = size.div_ceil(self.block_size) as u32;
        data_blocks.wrapping_add(data_blocks.wrapping_sub(1) >> self.chunk_ratio_bits) as u64
    }
    /// BAT index and byte offset in the block of guest byte `off`.
    fn translate(&self, off: u64) -> (u64, u64) {
        let sector = off >> 9;
        let block = (sector >> self.sectors_per_block_bits) as u32;
        let idx = block.wrapping_add(block >> self.chunk_ratio_bits) as u64;
        (idx, off % self.block_size)
    }
}

pub struct Vhdx {
    file: HostFile,
    size: u64,
    geo: Geo,
    bat_offset: u64,
    bat: RwLock<Vec<u64>>,
    state: Mutex<State>,
    regions: Regions,
    writable: bool,
    log_replayed: bool,
}

pub fn probe(head: &[u8]) -> bool {
    head.len() >= 8 && &head[..8] == b"vhdxfile"
}

impl Vhdx {
    pub fn open(file: HostFile, opts: &DriverOpenOptions) -> Result<Self> {
        let path = file.path().display().to_string();
        Self::open_inner(file, opts).map_err(|e| {
            if is_bare_strerror(&e) {
                let n = e.errno().unwrap_or(libc::EINVAL);
                let m = format!("Could not open '{path}': {}", e.message());
                Error::from_errno(n).with_message(m)
            } else {
                e
            }
        })
    }

    fn open_inner(file: HostFile, opts: &DriverOpenOptions) -> Result<Self> {
        let einval = || Error::from_errno(libc::EINVAL);
        let mut sig = [0u8; 8];
        file.read_at(&mut sig, 0)?;
        if !probe(&sig) {
            return Err(einval());
        }
        let (headers, curr) = parse_headers(&file)?;
        let mut regions = Regions(Vec::new());
        regions.register(
            headers[curr].log_offset(),
            headers[curr].log_length() as u64,
        );
        let mut st = State {
            headers,
            curr,
            log: LogState::default(),
            first_visible_write: true,
            session_guid: crate::format::vpc::random_uuid(),
            alloc_end: 0,
        };
        let log_replayed = log::parse(&file, &mut st, opts.writable)?;
        let rt = parse_region_table(&file, &mut regions)?;
        let params = parse_metadata(&file, rt.metadata_offset)?;
        let geo = Geo::new(params.block_size);
        if params.virtual_size > i64::MAX as u64 {
            return Err(Error::from_errno(libc::EFBIG));
        }
        let entries = geo.bat_entries(params.virtual_size);
        if entries > rt.bat_length as u64 / 8 {
            return Err(einval());
        }
        if entries > MAX_BAT_ENTRIES {
            return Err(Error::from_errno(libc::EFBIG));
        }
        let mut raw = vec![0u8; entries as usize * 8];
        file.read_at(&mut raw, rt.bat_offset)?;
        let bat: Vec<u64> = raw.chunks_exact(8).map(|c| le64(c, 0)).collect();
        drop(raw);
        let v = Vhdx {
            file,
            size: params.virtual_size & !511,
            geo,
            bat_offset: rt.bat_offset,
            bat: RwLock::new(bat),
            state: Mutex::new(st),
            regions,
            writable: opts.writable,
            log_replayed,
        };
        if !opts.for_check {
            let mut errors = 0;
            v.check_bat(
                Some(&mut |l: &str| crate::events::notice(l)),
                &mut errors,
                true,
            )?;
        }
        // Allocation goes past the file and past every block in use.
        let mut end = v.file.len()?;
        for &e in v.bat.read().iter() {
            if e & STATE_MASK == PAYLOAD_FULLY_PRESENT {
                end = end.max((e & FILE_OFF_MASK).saturating_add(geo.block_size));
            }
        }
        for &(_, e) in &v.regions.0 {
            end = end.max(e);
        }
        v.state.lock().alloc_end = end;
        Ok(v)
    }

    /// QEMU's vhdx_check_bat_entries: fully present blocks must lie inside
    /// the file and clear of the metadata regions. With `stop_first`, the
    /// first problem fails (open); otherwise each one is counted (check).
    fn check_bat(
        &self,
        mut log: Option<&mut dyn FnMut(&str)>,
        errors: &mut u64,
        stop_first: bool,
    ) -> Result<()> {
        let file_size = self.file.len()?;
        let bs = self.geo.block_size;
        let chunk_ratio = 1u64 << self.geo.chunk_ratio_bits;
        let mut payblocks = chunk_ratio;
        let bat = self.bat.read();
        let mut emit = |m: String| {
            if let Some(l) = log.as_mut() {
                l(&error_report(&m));
            }
        };
        for (i, &e) in bat.iter().enumerate() {
            if e & STATE_MASK != PAYLOAD_FULLY_PRESENT {
                continue;
            }
            let i = i as u64;
            let offset = e & FILE_OFF_MASK;
            let block_length = bs.min(self.size.wrapping_sub(i.wrapping_mul(bs)));
            let overflow = offset > i64::MAX as u64 - bs;
            if overflow {
                emit(format!("VHDX BAT entry {i} offset overflow."));
                if stop_first {
                    return Err(Error::from_errno(libc::EINVAL));
                }
                *errors += 1;
            }
            let past_end = if offset >= file_size {
                emit(format!(
                    "VHDX BAT entry {i} start offset {offset} points after end of file ({file_size}). Image has probably been truncated."
                ));
                true
            } else if offset + block_length > file_size {
                emit(format!(
                    "VHDX BAT entry {i} end offset {} points after end of file ({file_size}). Image has probably been truncated.",
                    offset + block_length - 1
                ));
                true
            } else {
                false
            };
            if past_end {
                if stop_first {
                    return Err(Error::from_errno(libc::EINVAL));
                }
                *errors += 1;
            }
            if payblocks > 0 {
                payblocks -= 1;
                if self.regions.check(offset, bs).is_err() {
                    if stop_first {
                        return Err(Error::from_errno(libc::EINVAL));
                    }
                    *errors += 1;
                }
            } else {
                payblocks = chunk_ratio;
            }
        }
        Ok(())
    }

    fn bat_entry(&self, idx: u64) -> Result<u64> {
        self.bat
            .read()
            .get(idx as usize)
            .copied()
            .ok_or_else(|| Error::from_errno(libc::EIO).with_kind(ErrorKind::Corrupt))
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

    /// The first guest-visible write of this session updates the headers.
    fn visible_write(&self) -> Result<()> {
        let mut st = self.state.lock();
        if st.first_visible_write {
            user_visible_write(&self.file, &mut st)?;
        }
        Ok(())
    }

    /// File offset of `in_block` inside a fully present block. (A zero
    /// offset is bogus; QEMU then reads the file from its start, which is
    /// what this gives for whole-block reads.)
    fn present_offset(entry: u64, in_block: u64) -> u64 {
        (entry & FILE_OFF_MASK) + in_block
    }

    /// Allocate block `idx` at the end of the file, write `data` at
    /// `in_block` in it, then journal the BAT entry.
    fn allocate_and_write(&self, idx: u64, in_block: u64, data: &[u8]) -> Result<()> {
        let mut st = self.state.lock();
        let e = self.bat_entry(idx)?;
        if e & STATE_MASK == PAYLOAD_FULLY_PRESENT {
            drop(st);
            return self.write_present(e, in_block, data);
        }
        let bs = self.geo.block_size;
        let new = st
            .alloc_end
            .max(self.file.len()?)
            .checked_next_multiple_of(MIB)
            .filter(|&n| n <= (i64::MAX as u64) - bs)
            .ok_or_else(|| Error::from_errno(libc::EINVAL))?;
        // Growing the file gives a block that reads as zeros.
        if self.file.len()? < new + bs {
            self.file.set_len(new + bs)?;
        }
        self.file.write_at(data, new + in_block)?;
        let entry = new | PAYLOAD_FULLY_PRESENT;
        log::write_and_flush(
            &self.file,
            &mut st,
            &entry.to_le_bytes(),
            self.bat_offset + idx * 8,
        )?;
        if let Some(slot) = self.bat.write().get_mut(idx as usize) {
            *slot = entry;
        }
        st.alloc_end = new + bs;
        Ok(())
    }

    fn write_present(&self, entry: u64, in_block: u64, data: &[u8]) -> Result<()> {
        let off = Self::present_offset(entry, in_block);
        if entry & FILE_OFF_MASK < MIB {
            return Err(Error::from_errno(libc::EFAULT).with_kind(ErrorKind::Corrupt));
        }
        self.file.write_at(data, off)
    }
}

/// Whether an error's message is just its errno text (a bare errno from a
/// parser step, to be worded as QEMU words it).
fn is_bare_strerror(e: &Error) -> bool {
    e.errno()
        .is_some_and(|n| crate::error::strerror(n) == e.message())
}

impl Driver for Vhdx {
    fn format_name(&self) -> &'static str {
        "vhdx"
    }
    fn virtual_size(&self) -> u64 {
        self.size
    }
    fn host_file(&self) -> &HostFile {
        &self.file
    }
    fn info(&self) -> DriverInfo {
        DriverInfo {
            cluster_size: Some(self.geo.block_size),
            ..DriverInfo::default()
        }
    }
    /// QEMU's vhdx driver has no block-status callback, so the block layer
    /// reports every byte as allocated data at no known host offset (map,
    /// measure and compare all see that); do the same.
    fn block_status(&self, _off: u64, max: u64) -> Result<Extent> {
        Ok(Extent {
            len: max,
            status: Status::Data,
            offset: None,
            compressed: false,
        })
    }
    fn read_at(&self, buf: &mut [u8], off: u64, _backing: &dyn BackingRead) -> Result<()> {
        let mut done = 0usize;
        while done < buf.len() {
            let pos = off + done as u64;
            let (idx, in_block) = self.geo.translate(pos);
            let n = ((self.geo.block_size - in_block) as usize).min(buf.len() - done);
            let part = &mut buf[done..done + n];
            let e = self.bat_entry(idx)?;
            match e & STATE_MASK {
                PAYLOAD_FULLY_PRESENT => {
                    self.file.read_at(part, Self::present_offset(e, in_block))?
                }
                PAYLOAD_NOT_PRESENT
                | PAYLOAD_UNDEFINED
                | PAYLOAD_ZERO
                | PAYLOAD_UNMAPPED
                | PAYLOAD_UNMAPPED_V095 => part.fill(0),
                _ => return Err(Error::from_errno(libc::EIO).with_kind(ErrorKind::Corrupt)),
            }
            done += n;
        }
        Ok(())
    }
    fn write_at(&self, buf: &[u8], off: u64, _backing: &dyn BackingRead) -> Result<()> {
        self.require_writable()?;
        self.visible_write()?;
        let mut done = 0usize;
        while done < buf.len() {
            let pos = off + done as u64;
            let (idx, in_block) = self.geo.translate(pos);
            let n = ((self.geo.block_size - in_block) as usize).min(buf.len() - done);
            let part = &buf[done..done + n];
            let e = self.bat_entry(idx)?;
            match e & STATE_MASK {
                PAYLOAD_FULLY_PRESENT => self.write_present(e, in_block, part)?,
                PAYLOAD_NOT_PRESENT
                | PAYLOAD_UNDEFINED
                | PAYLOAD_ZERO
                | PAYLOAD_UNMAPPED
                | PAYLOAD_UNMAPPED_V095 => self.allocate_and_write(idx, in_block, part)?,
                _ => return Err(Error::from_errno(libc::EIO).with_kind(ErrorKind::Corrupt)),
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
        let end = off + len;
        let mut pos = off;
        while pos < end {
            let (idx, in_block) = self.geo.translate(pos);
            let n = (self.geo.block_size - in_block).min(end - pos);
            let e = self.bat_entry(idx)?;
            match e & STATE_MASK {
                PAYLOAD_FULLY_PRESENT => {
                    self.visible_write()?;
                    let o = Self::present_offset(e, in_block);
                    if e & FILE_OFF_MASK < MIB {
                        return Err(Error::from_errno(libc::EFAULT));
                    }
                    self.file.write_zeroes(o, n, may_unmap)?;
                }
                PAYLOAD_NOT_PRESENT
                | PAYLOAD_UNDEFINED
                | PAYLOAD_ZERO
                | PAYLOAD_UNMAPPED
                | PAYLOAD_UNMAPPED_V095 => {}
                _ => return Err(Error::from_errno(libc::EIO).with_kind(ErrorKind::Corrupt)),
            }
            pos += n;
        }
        Ok(())
    }
    fn flush(&self) -> Result<()> {
        self.file.flush()
    }
    fn io_granularity(&self) -> u64 {
        self.geo.block_size.min(1 << 20)
    }
    fn check(&self, _repair: Repair, log: &mut dyn FnMut(&str)) -> Result<CheckResult> {
        let mut res = CheckResult::default();
        if self.log_replayed {
            res.corruptions_fixed += 1;
        }
        let mut errors = 0;
        self.check_bat(Some(log), &mut errors, false)?;
        res.corruptions = errors;
        Ok(res)
    }
}
