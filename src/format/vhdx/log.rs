//! The VHDX metadata log: a circular buffer of 4 KiB sectors holding log
//! entries (header, descriptors, data sectors, CRC-32C over all of it).
//! An image whose active header names a log GUID may hold entries that
//! were not yet applied; they must be replayed before anything else is
//! read. Metadata updates (BAT entries) go through the log: write the
//! entry, flush, apply it, flush, then clear the log GUID.

use super::crc32c;
use super::{le32, le64, State, ZERO_GUID};
use crate::error::{Error, Result};
use crate::io::HostFile;

pub const LOG_SECTOR: u64 = 4096;
const ENTRY_HDR_SIZE: u64 = 64;
const DESC_SIZE: u64 = 32;
const SIG_LOGE: u32 = 0x6567_6f6c;
const SIG_DESC: u32 = 0x6373_6564;
const SIG_ZERO: u32 = 0x6f72_657a;
const SIG_DATA: u32 = 0x6174_6164;
/// Descriptor sectors we hold in memory for one entry (QEMU allocates the
/// whole descriptor area; a log is 1 MiB in practice).
const MAX_DESC_BYTES: u64 = 64 << 20;

/// Position of the log and its circular read/write indices.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogState {
    pub offset: u64,
    pub length: u64,
    pub read: u64,
    pub write: u64,
    pub sequence: u64,
    pub tail: u64,
}

/// A log entry header (64 bytes).
#[derive(Debug, Clone, Copy, Default)]
pub struct EntryHeader {
    pub signature: u32,
    pub checksum: u32,
    pub entry_length: u32,
    pub tail: u32,
    pub sequence_number: u64,
    pub descriptor_count: u32,
    pub log_guid: [u8; 16],
    pub flushed_file_offset: u64,
    pub last_file_offset: u64,
}

impl EntryHeader {
    fn parse(b: &[u8]) -> Self {
        let mut g = [0u8; 16];
        if let Some(s) = b.get(32..48) {
            g.copy_from_slice(s);
        }
        EntryHeader {
            signature: le32(b, 0),
            checksum: le32(b, 4),
            entry_length: le32(b, 8),
            tail: le32(b, 12),
            sequence_number: le64(b, 16),
            descriptor_count: le32(b, 24),
            log_guid: g,
            flushed_file_offset: le64(b, 48),
            last_file_offset: le64(b, 56),
        }
    }
    fn serialize(&self) -> [u8; 64] {
        let mut b = [0u8; 64];
        b[0..4].copy_from_slice(&self.signature.to_le_bytes());
        b[4..8].copy_from_slice(&self.checksum.to_le_bytes());
        b[8..12].copy_from_slice(&self.entry_length.to_le_bytes());
        b[12..16].copy_from_slice(&self.tail.to_le_bytes());
        b[16..24].copy_from_slice(&self.sequence_number.to_le_bytes());
        b[24..28].copy_from_slice(&self.descriptor_count.to_le_bytes());
        b[32..48].copy_from_slice(&self.log_guid);
        b[48..56].copy_from_slice(&self.flushed_file_offset.to_le_bytes());
        b[56..64].copy_from_slice(&self.last_file_offset.to_le_bytes());
        b
    }
}

/// A log descriptor (32 bytes): a data sector or a run of zeros.
#[derive(Debug, Clone, Copy)]
struct Descriptor {
    signature: u32,
    trailing: u32,
    /// Leading bytes (data) or zero length (zero descriptor).
    leading: u64,
    file_offset: u64,
    sequence_number: u64,
}

impl Descriptor {
    fn parse(b: &[u8]) -> Self {
        Descriptor {
            signature: le32(b, 0),
            trailing: le32(b, 4),
            leading: le64(b, 8),
            file_offset: le64(b, 16),
            sequence_number: le64(b, 24),
        }
    }
}

fn einval() -> Error {
    Error::from_errno(libc::EINVAL)
}

fn inc_idx(idx: u64, length: u64) -> u64 {
    let i = idx + LOG_SECTOR;
    if i >= length {
        0
    } else {
        i
    }
}

/// The entry header at the read index, without advancing it.
fn peek_hdr(file: &HostFile, log: &LogState) -> Result<EntryHeader> {
    if !log.read.is_multiple_of(LOG_SECTOR) {
        return Err(Error::from_errno(libc::EFAULT));
    }
    let mut read = log.read;
    if read + ENTRY_HDR_SIZE > log.length {
        read = 0;
    }
    if read == log.write {
        return Err(einval());
    }
    let mut b = [0u8; 64];
    file.read_at(&mut b, log.offset + read)?;
    Ok(EntryHeader::parse(&b))
}

/// Read up to `n` sectors from the read index (stopping when the buffer
/// is empty), advancing it. Returns the bytes read.
fn read_sectors(file: &HostFile, log: &mut LogState, n: u64) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for _ in 0..n {
        if log.read == log.write {
            break;
        }
        let mut s = vec![0u8; LOG_SECTOR as usize];
        file.read_at(&mut s, log.offset + log.read)?;
        out.extend_from_slice(&s);
        log.read = inc_idx(log.read, log.length);
    }
    Ok(out)
}

fn hdr_is_valid(log: &LogState, h: &EntryHeader, log_guid: &[u8; 16]) -> bool {
    h.signature == SIG_LOGE
        && log.length >= h.entry_length as u64
        && (h.entry_length as u64).is_multiple_of(LOG_SECTOR)
        && h.sequence_number != 0
        && &h.log_guid == log_guid
        && h.descriptor_count as u64 * DESC_SIZE <= h.entry_length as u64
}

fn desc_is_valid(d: &Descriptor, h: &EntryHeader) -> bool {
    if d.sequence_number != h.sequence_number || !d.file_offset.is_multiple_of(LOG_SECTOR) {
        return false;
    }
    match d.signature {
        SIG_ZERO => d.leading.is_multiple_of(LOG_SECTOR),
        SIG_DESC => true,
        _ => false,
    }
}

/// Sectors holding the entry header and `count` descriptors.
fn desc_sectors(count: u64) -> u64 {
    (count + 2).div_ceil(128)
}

/// Read the entry header and its descriptor sectors at the read index
/// (advancing it); every descriptor must be valid.
fn read_desc(
    file: &HostFile,
    log: &mut LogState,
    log_guid: &[u8; 16],
) -> Result<(EntryHeader, Vec<u8>, Vec<Descriptor>)> {
    let h = peek_hdr(file, log)?;
    if !hdr_is_valid(log, &h, log_guid) {
        return Err(einval());
    }
    let n = desc_sectors(h.descriptor_count as u64);
    if n * LOG_SECTOR > MAX_DESC_BYTES {
        return Err(Error::from_errno(libc::ENOMEM));
    }
    let raw = read_sectors(file, log, n)?;
    if raw.len() as u64 != n * LOG_SECTOR {
        return Err(einval());
    }
    let mut descs = Vec::with_capacity(h.descriptor_count as usize);
    for i in 0..h.descriptor_count as usize {
        let o = ENTRY_HDR_SIZE as usize + i * DESC_SIZE as usize;
        let d = Descriptor::parse(raw.get(o..o + DESC_SIZE as usize).unwrap_or(&[]));
        if !desc_is_valid(&d, &h) {
            return Err(einval());
        }
        descs.push(d);
    }
    Ok((h, raw, descs))
}

/// Validate the entry at the read index: header, descriptors, the
/// sequence number after `seq` (when non-zero) and the CRC over the whole
/// entry. An invalid header moves the index on by one sector.
fn validate_entry(
    file: &HostFile,
    log: &mut LogState,
    seq: u64,
    log_guid: &[u8; 16],
) -> Result<Option<EntryHeader>> {
    let h = match peek_hdr(file, log) {
        Ok(h) => h,
        Err(_) => {
            log.read = inc_idx(log.read, log.length);
            return Ok(None);
        }
    };
    if !hdr_is_valid(log, &h, log_guid) || (seq > 0 && h.sequence_number != seq + 1) {
        log.read = inc_idx(log.read, log.length);
        return Ok(None);
    }
    let n = desc_sectors(h.descriptor_count as u64);
    let total = h.entry_length as u64 / LOG_SECTOR;
    let (_, raw, _) = read_desc(file, log, log_guid)?;
    let mut crc = crc32c::Crc32c::new();
    crc.update(&raw[..4]);
    crc.update(&[0; 4]);
    crc.update(&raw[8..]);
    if total > n {
        for _ in 0..total - n {
            let s = read_sectors(file, log, 1)?;
            if s.len() as u64 != LOG_SECTOR {
                return Ok(None);
            }
            crc.update(&s);
        }
    }
    if crc.finish() != h.checksum {
        return Ok(None);
    }
    Ok(Some(h))
}

/// The active sequence of valid entries, if any: (first entry's index,
/// index after the last, count, last header).
pub struct Sequence {
    pub log: LogState,
    pub count: u64,
    pub hdr: EntryHeader,
}

/// Walk the whole circular log for the valid sequence with the highest
/// sequence number.
fn search(file: &HostFile, st: &mut State) -> Result<Option<Sequence>> {
    let log_guid = st.headers[st.curr].log_guid();
    let mut cur = st.log;
    cur.write = cur.length;
    cur.read = 0;
    let mut candidate: Option<Sequence> = None;
    loop {
        // QEMU starts each sequence without checking the second entry's
        // number against the first; the ones after are checked.
        let mut curr_seq = 0u64;
        let tail = cur.read;
        if let Some(h) = validate_entry(file, &mut cur, curr_seq, &log_guid)? {
            let mut seq = Sequence {
                log: LogState {
                    read: tail,
                    write: cur.read,
                    ..cur
                },
                count: 1,
                hdr: h,
            };
            while let Some(h2) = validate_entry(file, &mut cur, curr_seq, &log_guid)? {
                seq.log.write = cur.read;
                seq.count += 1;
                curr_seq = h2.sequence_number;
            }
            let better = candidate
                .as_ref()
                .is_none_or(|c| seq.hdr.sequence_number > c.hdr.sequence_number);
            if better {
                candidate = Some(seq);
            }
        }
        if cur.read < tail {
            break;
        }
    }
    if let Some(c) = &candidate {
        st.log.sequence = c.hdr.sequence_number.wrapping_add(1);
    }
    Ok(candidate)
}

/// Parse the log of the active header; replay it when it holds a valid
/// sequence. Returns whether a replay happened. A read-only open of an
/// image that needs a replay is refused, as QEMU does.
pub fn parse(file: &HostFile, st: &mut State, writable: bool) -> Result<bool> {
    let h = st.headers[st.curr].clone();
    st.log.offset = h.log_offset();
    st.log.length = h.log_length() as u64;
    if st.log.offset < (1 << 20) || !st.log.offset.is_multiple_of(1 << 20) {
        return Err(einval());
    }
    if h.log_version() != 0 {
        return Err(einval());
    }
    if h.log_guid() == ZERO_GUID || h.log_length() == 0 {
        return Ok(false);
    }
    if !(h.log_length() as u64).is_multiple_of(1 << 20) {
        return Err(einval());
    }
    let Some(seq) = search(file, st)? else {
        return Ok(false);
    };
    if !writable {
        let name = file.path().display().to_string();
        return Err(Error::from_errno(libc::EPERM).with_message(format!(
            "VHDX image file '{name}' opened read-only, but contains a log that needs to be replayed\nTo replay the log, run:\nimgtool check -r all '{name}'"
        )));
    }
    flush(file, st, seq)?;
    Ok(true)
}

/// Apply the entries of `seq` to the file, then mark the log empty.
pub fn flush(file: &HostFile, st: &mut State, mut seq: Sequence) -> Result<()> {
    super::user_visible_write(file, st)?;
    let log_guid = st.headers[st.curr].log_guid();
    for _ in 0..seq.count {
        let h = peek_hdr(file, &seq.log)?;
        let file_length = file.len()?;
        if h.flushed_file_offset > file_length {
            return Err(einval());
        }
        let (h, _, descs) = read_desc(file, &mut seq.log, &log_guid)?;
        for d in &descs {
            let mut sector = vec![0u8; LOG_SECTOR as usize];
            let mut count = 1;
            match d.signature {
                SIG_DESC => {
                    let data = read_sectors(file, &mut seq.log, 1)?;
                    if data.len() as u64 != LOG_SECTOR {
                        return Err(einval());
                    }
                    // Like QEMU, only the data sector's sequence number is
                    // checked, not its signature.
                    let s = ((le32(&data, 4) as u64) << 32) | le32(&data, 4092) as u64;
                    if s != d.sequence_number {
                        return Err(einval());
                    }
                    sector[..8].copy_from_slice(&d.leading.to_le_bytes());
                    sector[8..4092].copy_from_slice(&data[8..4092]);
                    sector[4092..].copy_from_slice(&d.trailing.to_le_bytes());
                }
                SIG_ZERO => count = d.leading / LOG_SECTOR,
                other => {
                    crate::events::notice(&super::error_report(&format!(
                        "Invalid VHDX log descriptor entry signature 0x{other:x}"
                    )));
                    return Err(einval());
                }
            }
            let mut off = d.file_offset;
            for _ in 0..count {
                file.write_at(&sector, off)?;
                file.flush()?;
                off += LOG_SECTOR;
            }
        }
        if file_length < h.last_file_offset && !h.last_file_offset.is_multiple_of(1 << 20) {
            let n = h.last_file_offset.next_multiple_of(1 << 20);
            if n > i64::MAX as u64 {
                return Err(einval());
            }
            file.set_len(n)?;
        }
    }
    file.flush()?;
    // Empty log: read = write = 0 and a zero log GUID in both headers.
    st.log.read = 0;
    st.log.write = 0;
    super::update_headers(file, st, false, Some(ZERO_GUID))?;
    Ok(())
}

/// Write `data` destined for file offset `offset` as one log entry.
fn write_entry(file: &HostFile, st: &mut State, data: &[u8], offset: u64) -> Result<()> {
    let hdr = st.headers[st.curr].clone();
    if data.len() as u64 > hdr.log_length() as u64 {
        return Err(einval());
    }
    if hdr.log_guid() != ZERO_GUID {
        // The log is flushed after every write, so it must be empty.
        return Err(Error::from_errno(libc::ENOTSUP));
    }
    let guid = crate::format::vpc::random_uuid();
    super::update_headers(file, st, false, Some(guid))?;
    if st.log.sequence == 0 {
        st.log.sequence = 1;
    }
    let sector_offset = offset % LOG_SECTOR;
    let mut file_offset = offset - sector_offset;
    let length = data.len() as u64;
    let mut aligned = length;
    let mut leading = 0;
    let mut partial = 0;
    if sector_offset != 0 {
        leading = (LOG_SECTOR - sector_offset).min(length);
        aligned -= leading;
        partial += 1;
    }
    let mut sectors = aligned / LOG_SECTOR;
    let trailing = aligned - sectors * LOG_SECTOR;
    if trailing != 0 {
        partial += 1;
    }
    sectors += partial;
    let file_length = file.len()?;
    let ds = desc_sectors(sectors);
    let total = (ds + sectors) * LOG_SECTOR;
    let eh = EntryHeader {
        signature: SIG_LOGE,
        checksum: 0,
        entry_length: total as u32,
        tail: st.log.tail as u32,
        sequence_number: st.log.sequence,
        descriptor_count: sectors as u32,
        log_guid: st.headers[st.curr].log_guid(),
        flushed_file_offset: file_length,
        last_file_offset: file_length,
    };
    let mut buf = vec![0u8; total as usize];
    buf[..64].copy_from_slice(&eh.serialize());
    let mut pos = 0usize;
    for i in 0..sectors {
        let mut sector = vec![0u8; LOG_SECTOR as usize];
        let used;
        if i == 0 && leading > 0 {
            file.read_at(&mut sector, file_offset)?;
            sector[sector_offset as usize..(sector_offset + leading) as usize]
                .copy_from_slice(&data[..leading as usize]);
            used = leading as usize;
        } else if i == sectors - 1 && trailing > 0 {
            file.read_at(&mut sector[trailing as usize..], file_offset + trailing)?;
            sector[..trailing as usize].copy_from_slice(&data[pos..pos + trailing as usize]);
            used = trailing as usize;
        } else {
            sector.copy_from_slice(&data[pos..pos + LOG_SECTOR as usize]);
            used = LOG_SECTOR as usize;
        }
        let d = 64 + i as usize * 32;
        buf[d..d + 4].copy_from_slice(&SIG_DESC.to_le_bytes());
        buf[d + 4..d + 8].copy_from_slice(&sector[4092..]);
        buf[d + 8..d + 16].copy_from_slice(&sector[..8]);
        buf[d + 16..d + 24].copy_from_slice(&file_offset.to_le_bytes());
        buf[d + 24..d + 32].copy_from_slice(&st.log.sequence.to_le_bytes());
        let s = ((ds + i) * LOG_SECTOR) as usize;
        buf[s..s + 4].copy_from_slice(&SIG_DATA.to_le_bytes());
        buf[s + 4..s + 8].copy_from_slice(&((st.log.sequence >> 32) as u32).to_le_bytes());
        buf[s + 8..s + 4092].copy_from_slice(&sector[8..4092]);
        buf[s + 4092..s + 4096].copy_from_slice(&(st.log.sequence as u32).to_le_bytes());
        pos += used;
        file_offset += LOG_SECTOR;
    }
    crc32c::update(&mut buf, 4);
    // Write the sectors into the circular buffer.
    super::user_visible_write(file, st)?;
    let mut write = st.log.write;
    for chunk in buf.chunks(LOG_SECTOR as usize) {
        let at = st.log.offset + write;
        let next = inc_idx(write, st.log.length);
        if next == st.log.read {
            // Full: QEMU would flush here; an entry never fills a log.
            return Err(einval());
        }
        file.write_at(chunk, at)?;
        write = next;
        st.log.write = write;
    }
    st.log.sequence += 1;
    st.log.tail = st.log.write;
    Ok(())
}

/// Journal `data` for `offset`, make it stable, apply it and empty the
/// log again (QEMU's vhdx_log_write_and_flush).
pub fn write_and_flush(file: &HostFile, st: &mut State, data: &[u8], offset: u64) -> Result<()> {
    file.flush()?;
    write_entry(file, st, data, offset)?;
    file.flush()?;
    let seq = Sequence {
        log: st.log,
        count: 1,
        hdr: EntryHeader::default(),
    };
    let end = st.log;
    flush(file, st, seq)?;
    // QEMU keeps the indices where the entry ended (the log continues
    // there in this session).
    st.log.read = end.write;
    st.log.write = end.write;
    Ok(())
}
