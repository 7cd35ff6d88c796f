//! Creating a VHDX image with qemu-img's layout: file identifier, two
//! headers, two region tables, the log (empty), the BAT, the metadata
//! region, and (fixed) the payload blocks after a 5 MiB gap.

use std::path::Path;

use super::{
    crc32c, Geo, BAT_GUID, BLOCK_SIZE_MAX, FILE_PARAM_GUID, HEADER1_OFFSET, HEADER2_OFFSET,
    HEADER_SIZE, LOGICAL_SECTOR_GUID, METADATA_GUID, MIB, PAGE83_GUID,
    PARAMS_LEAVE_BLOCKS_ALLOCATED, PAYLOAD_FULLY_PRESENT, PAYLOAD_NOT_PRESENT, PAYLOAD_ZERO,
    PHYS_SECTOR_GUID, REGION_TABLE2_OFFSET, REGION_TABLE_OFFSET, SIG_HEAD, SIG_METADATA, SIG_REGI,
    VIRTUAL_SIZE_GUID,
};
use crate::error::{Error, Result};
use crate::format::CreateOptions;
use crate::io::HostFile;

const MAX_IMAGE_SIZE: u64 = 64 << 40;
const GIB: u64 = 1 << 30;
const TIB: u64 = 1 << 40;

/// Validated creation parameters.
struct Params {
    size: u64,
    log_size: u64,
    block_size: u64,
    fixed: bool,
    zero_blocks: bool,
}

fn params(size: u64, o: &CreateOptions) -> Result<Params> {
    match o.get("preallocation") {
        None | Some("off" | "falloc" | "full") => {}
        Some("metadata") => return Err(Error::invalid("Unsupported preallocation mode: metadata")),
        Some(p) => return Err(Error::invalid(format!("invalid parameter value: {p}"))),
    }
    let fixed = match o.get("subformat") {
        None | Some("dynamic") => false,
        Some("fixed") => true,
        Some(v) => {
            return Err(Error::invalid(format!(
                "Parameter 'subformat' does not accept value '{v}'"
            )))
        }
    };
    let zero_blocks = o.get_bool("block_state_zero", true)?;
    // qemu-img rounds silently: the size to sectors, the log and block
    // sizes up to whole MiB (a block size of 0 means automatic).
    let size = size.checked_next_multiple_of(512).unwrap_or(u64::MAX);
    let log_size = match o.get_size("log_size")? {
        Some(v) => v.checked_next_multiple_of(MIB).unwrap_or(0),
        None => MIB,
    };
    let block_size = match o.get_size("block_size")? {
        Some(v) => v
            .checked_next_multiple_of(MIB)
            .unwrap_or(0)
            .min(BLOCK_SIZE_MAX),
        None => 0,
    };
    if size > MAX_IMAGE_SIZE {
        return Err(Error::invalid("Image size too large; max of 64TB"));
    }
    if log_size > u32::MAX as u64 {
        return Err(Error::invalid("Log size must be smaller than 4 GB"));
    }
    if log_size < MIB {
        return Err(Error::invalid("Log size must be a multiple of 1 MB"));
    }
    let block_size = if block_size != 0 {
        block_size
    } else if size > 32 * TIB {
        64 * MIB
    } else if size > 100 * GIB {
        32 * MIB
    } else if size > GIB {
        16 * MIB
    } else {
        8 * MIB
    };
    if !block_size.is_power_of_two() {
        return Err(Error::invalid("Block size must be a power of two"));
    }
    Ok(Params {
        size,
        log_size,
        block_size,
        fixed,
        zero_blocks,
    })
}

fn put_guid(buf: &mut [u8], at: usize, g: &[u8; 16]) {
    buf[at..at + 16].copy_from_slice(g);
}

pub fn create(path: &Path, size: u64, opts: &CreateOptions) -> Result<()> {
    let p = params(size, opts)?;
    let geo = Geo::new(p.block_size);
    let entries = geo.bat_entries(p.size);
    let bat_length = (entries * 8).next_multiple_of(MIB);
    let bat_offset = (MIB + p.log_size).next_multiple_of(MIB);
    let metadata_offset = (bat_offset + bat_length).next_multiple_of(MIB);
    let data_offset = bat_offset + bat_length + 5 * MIB;

    let file = HostFile::create(path)?;

    // (A) File identifier: signature and a UTF-16 creator string.
    let mut id = b"vhdxfile".to_vec();
    for u in format!("imgtool v{}", crate::VERSION).encode_utf16() {
        id.extend_from_slice(&u.to_le_bytes());
    }
    file.write_at(&id, 0)?;

    // (B), (C) Headers with consecutive sequence numbers and no log.
    let mut seq = [0u8; 4];
    crate::format::vpc::fill_random(&mut seq);
    let seq = u32::from_le_bytes(seq) as u64;
    let file_guid = crate::format::vpc::random_uuid();
    let data_guid = crate::format::vpc::random_uuid();
    for (i, off) in [HEADER1_OFFSET, HEADER2_OFFSET].into_iter().enumerate() {
        let mut h = [0u8; HEADER_SIZE];
        h[0..4].copy_from_slice(&SIG_HEAD.to_le_bytes());
        h[8..16].copy_from_slice(&(seq + i as u64).to_le_bytes());
        put_guid(&mut h, 16, &file_guid);
        put_guid(&mut h, 32, &data_guid);
        h[66..68].copy_from_slice(&1u16.to_le_bytes());
        h[68..72].copy_from_slice(&(p.log_size as u32).to_le_bytes());
        h[72..80].copy_from_slice(&MIB.to_le_bytes());
        crc32c::update(&mut h, 4);
        file.write_at(&h[..80], off)?;
    }

    // (F) The file up to the data area; fixed disks include the payload.
    let len = if p.fixed {
        data_offset + p.size
    } else {
        data_offset
    };
    file.set_len(len)?;

    // (G) The BAT: zero-state or fully present entries where asked.
    if p.fixed || p.zero_blocks {
        let state = if p.zero_blocks {
            PAYLOAD_ZERO
        } else if p.fixed {
            PAYLOAD_FULLY_PRESENT
        } else {
            PAYLOAD_NOT_PRESENT
        };
        let mut bat = vec![0u8; (entries * 8) as usize];
        let mut pos = 0u64;
        while pos < p.size {
            let (idx, _) = geo.translate(pos);
            let e = if state == PAYLOAD_FULLY_PRESENT {
                (data_offset + pos).next_multiple_of(MIB) | state
            } else {
                state
            };
            if let Some(slot) = bat.get_mut(idx as usize * 8..idx as usize * 8 + 8) {
                slot.copy_from_slice(&e.to_le_bytes());
            }
            pos += p.block_size;
        }
        file.write_at(&bat, bat_offset)?;
    }

    // (D), (E) Region tables: BAT and metadata.
    let mut rt = vec![0u8; 64 * 1024];
    rt[0..4].copy_from_slice(&SIG_REGI.to_le_bytes());
    rt[8..12].copy_from_slice(&2u32.to_le_bytes());
    put_guid(&mut rt, 16, &BAT_GUID);
    rt[32..40].copy_from_slice(&bat_offset.to_le_bytes());
    rt[40..44].copy_from_slice(&(bat_length as u32).to_le_bytes());
    put_guid(&mut rt, 48, &METADATA_GUID);
    rt[64..72].copy_from_slice(&metadata_offset.to_le_bytes());
    rt[72..76].copy_from_slice(&(MIB as u32).to_le_bytes());
    crc32c::update(&mut rt, 4);
    file.write_at(&rt, REGION_TABLE_OFFSET)?;
    file.write_at(&rt, REGION_TABLE2_OFFSET)?;

    // (H) Metadata table and items.
    let mut md = vec![0u8; 64 * 1024];
    md[0..8].copy_from_slice(&SIG_METADATA.to_le_bytes());
    md[10..12].copy_from_slice(&5u16.to_le_bytes());
    let items: [(&[u8; 16], u32, u32); 5] = [
        (&FILE_PARAM_GUID, 8, 4),
        (&VIRTUAL_SIZE_GUID, 8, 6),
        (&PAGE83_GUID, 16, 6),
        (&LOGICAL_SECTOR_GUID, 4, 6),
        (&PHYS_SECTOR_GUID, 4, 6),
    ];
    let mut off = 64 * 1024u32;
    for (i, (g, len, bits)) in items.iter().enumerate() {
        let e = 32 + i * 32;
        put_guid(&mut md, e, g);
        md[e + 16..e + 20].copy_from_slice(&off.to_le_bytes());
        md[e + 20..e + 24].copy_from_slice(&len.to_le_bytes());
        md[e + 24..e + 28].copy_from_slice(&bits.to_le_bytes());
        off += len;
    }
    let mut values = Vec::with_capacity(40);
    values.extend_from_slice(&(p.block_size as u32).to_le_bytes());
    let bits = if p.fixed {
        PARAMS_LEAVE_BLOCKS_ALLOCATED
    } else {
        0
    };
    values.extend_from_slice(&bits.to_le_bytes());
    values.extend_from_slice(&p.size.to_le_bytes());
    values.extend_from_slice(&crate::format::vpc::random_uuid());
    values.extend_from_slice(&512u32.to_le_bytes());
    values.extend_from_slice(&512u32.to_le_bytes());
    file.write_at(&md, metadata_offset)?;
    file.write_at(&values, metadata_offset + 64 * 1024)?;
    file.flush()
}
