//! `snapshot`: list, create, apply and delete internal snapshots, with
//! qemu-img's messages.

use crate::error::{Error, ErrorKind, Result};
use crate::format::{errno_text, SnapshotInfo};
use crate::image::Image;

/// QEMU's SnapshotInfo keeps names in 256-byte buffers: qemu-img cuts
/// longer names to 255 bytes.
pub const MAX_NAME_BYTES: usize = 255;

/// The image's internal snapshots, in table order.
pub fn list(img: &Image) -> Vec<SnapshotInfo> {
    img.driver().info().snapshots
}

fn truncated(name: &str) -> &str {
    if name.len() <= MAX_NAME_BYTES {
        return name;
    }
    let mut end = MAX_NAME_BYTES;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}

/// `snapshot -c NAME`: a new snapshot (ID one above the highest, date now,
/// no VM state).
pub fn create(img: &Image, name: &str) -> Result<SnapshotInfo> {
    let r = img.driver().snapshot_create(truncated(name));
    let r = r.and_then(|i| img.flush().map(|_| i));
    r.map_err(|e| {
        let t = errno_text(&e);
        e.with_message(format!("Could not create snapshot '{name}': {t}"))
    })
}

/// `snapshot -a NAME`: revert the image to snapshot NAME (an ID or name).
pub fn apply(img: &Image, name: &str) -> Result<()> {
    let r = img.driver().snapshot_apply(name).and_then(|_| img.flush());
    r.map_err(|e| {
        let m = format!("Could not apply snapshot '{name}': {}", e.message());
        e.with_message(m)
    })
}

/// `snapshot -d NAME`: delete the first snapshot named NAME (qemu-img
/// looks names up, not IDs).
pub fn delete(img: &Image, name: &str) -> Result<()> {
    let Some(sn) = list(img).into_iter().find(|s| s.name == name) else {
        return Err(Error::new(
            ErrorKind::NotFound,
            format!("Could not delete snapshot '{name}': snapshot not found"),
        ));
    };
    let r = img
        .driver()
        .snapshot_delete(Some(&sn.id), Some(&sn.name))
        .and_then(|_| img.flush());
    r.map_err(|e| {
        let m = format!("Could not delete snapshot '{name}': {}", e.message());
        e.with_message(m)
    })
}
