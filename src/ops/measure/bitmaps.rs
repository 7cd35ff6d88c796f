//! Space a qcow2 target needs for the source's persistent dirty bitmaps.
//!
//! The bitmaps come from the driver's directory (validated when the image
//! was opened); a void extension lists none.

use crate::image::Image;
use crate::json::Json;

/// Fixed part of a bitmap directory entry.
const ENTRY_HEADER: usize = 24;

/// Bytes for the source's bitmaps in a target with `cs`-byte clusters, or
/// None when the source cannot hold persistent bitmaps (not qcow2 v3).
pub(super) fn size(img: &Image, virtual_size: u64, cs: u64) -> Option<u64> {
    if img.format() != "qcow2" || !is_v3(img) {
        return None;
    }
    let mut total = 0u64;
    let mut dir = 0u64;
    for b in img.driver().bitmap_list() {
        let bits = virtual_size.div_ceil(b.granularity);
        let bytes = bits.div_ceil(8);
        let clusters = bytes.div_ceil(cs);
        let table = clusters.saturating_mul(8).div_ceil(cs);
        total = total
            .saturating_add(clusters.saturating_mul(cs))
            .saturating_add(table.saturating_mul(cs));
        dir += (ENTRY_HEADER as u64 + b.name.len() as u64).div_ceil(8) * 8;
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
