//! Space a qcow2 target needs for the source's persistent dirty bitmaps.
//!
//! The qcow2 driver does not expose bitmaps yet, so the bitmap directory is
//! read here from the source's header extension: read-only, bounded, and
//! anything inconsistent counts as "no bitmaps".

use crate::image::Image;
use crate::json::Json;

/// Header extension magic of the bitmaps extension.
const BITMAPS_MAGIC: u32 = 0x2385_2875;
/// Autoclear bit that says the bitmaps extension is valid.
const AUTOCLEAR_BITMAPS: u64 = 1;
/// QEMU's caps (QCOW2_MAX_BITMAPS, QCOW2_MAX_BITMAP_DIRECTORY_SIZE).
const MAX_BITMAPS: u32 = 65535;
const MAX_DIRECTORY: u64 = 64 << 20;
/// Fixed part of a bitmap directory entry.
const ENTRY_HEADER: usize = 24;

/// One persistent bitmap: its name length and granularity.
struct Bitmap {
    name_len: u64,
    granularity: u64,
}

/// Bytes for the source's bitmaps in a target with `cs`-byte clusters, or
/// None when the source cannot hold persistent bitmaps (not qcow2 v3).
pub(super) fn size(img: &Image, virtual_size: u64, cs: u64) -> Option<u64> {
    if img.format() != "qcow2" || !is_v3(img) {
        return None;
    }
    let mut total = 0u64;
    let mut dir = 0u64;
    for b in read_bitmaps(img).unwrap_or_default() {
        let bits = virtual_size.div_ceil(b.granularity);
        let bytes = bits.div_ceil(8);
        let clusters = bytes.div_ceil(cs);
        let table = clusters.saturating_mul(8).div_ceil(cs);
        total = total
            .saturating_add(clusters.saturating_mul(cs))
            .saturating_add(table.saturating_mul(cs));
        dir += (ENTRY_HEADER as u64 + b.name_len).div_ceil(8) * 8;
    }
    Some(total.saturating_add(dir.div_ceil(cs) * cs))
}

fn is_v3(img: &Image) -> bool {
    let info = img.driver().info();
    let compat = info
        .format_specific
        .as_ref()
        .and_then(|f| f.get("data"))
        .and_then(|d| d.get("compat"));
    !matches!(compat, Some(Json::Str(c)) if c == "0.10")
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn be64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn read_bitmaps(img: &Image) -> Option<Vec<Bitmap>> {
    let file = img.driver().host_file();
    let mut h = vec![0u8; 104];
    file.read_at(&mut h, 0).ok()?;
    if be32(&h, 4)? < 3 || be64(&h, 88)? & AUTOCLEAR_BITMAPS == 0 {
        return None;
    }
    let cluster_bits = be32(&h, 20)?;
    if !(9..=21).contains(&cluster_bits) {
        return None;
    }
    let cs = 1usize << cluster_bits;
    let header_len = be32(&h, 100)? as usize;
    let mut head = vec![0u8; cs];
    file.read_at(&mut head, 0).ok()?;
    let (nb, dir_size, dir_off) = find_extension(&head, header_len)?;
    if nb == 0 || nb > MAX_BITMAPS || dir_size > MAX_DIRECTORY {
        return None;
    }
    let mut dir = vec![0u8; dir_size as usize];
    file.read_at(&mut dir, dir_off).ok()?;
    parse_directory(&dir, nb)
}

/// The bitmaps extension: (count, directory size, directory offset).
fn find_extension(head: &[u8], mut at: usize) -> Option<(u32, u64, u64)> {
    while at + 8 <= head.len() {
        let magic = be32(head, at)?;
        let len = be32(head, at + 4)? as usize;
        if magic == 0 {
            return None;
        }
        let data = at + 8;
        if magic == BITMAPS_MAGIC {
            return Some((
                be32(head, data)?,
                be64(head, data + 8)?,
                be64(head, data + 16)?,
            ));
        }
        at = data.checked_add(len.checked_next_multiple_of(8)?)?;
    }
    None
}

fn parse_directory(dir: &[u8], nb: u32) -> Option<Vec<Bitmap>> {
    let mut v = Vec::new();
    let mut at = 0usize;
    for _ in 0..nb {
        let gran_bits = *dir.get(at + 17)? as u32;
        let name_len = u16::from_be_bytes(dir.get(at + 18..at + 20)?.try_into().ok()?) as usize;
        let extra = be32(dir, at + 20)? as usize;
        if gran_bits > 63 {
            return None;
        }
        v.push(Bitmap {
            name_len: name_len as u64,
            granularity: 1u64 << gran_bits,
        });
        let len = (ENTRY_HEADER + extra + name_len).checked_next_multiple_of(8)?;
        at = at.checked_add(len)?;
        if at > dir.len() {
            return None;
        }
    }
    Some(v)
}
