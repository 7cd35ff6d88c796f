//! `bitmap`: persistent dirty bitmaps of an image (qcow2 v3), with the
//! messages of QEMU's block-dirty-bitmap-* commands that qemu-img uses.

use crate::error::{Error, Result};
pub use crate::format::{BitmapData, BitmapInfo};
use crate::image::Image;

/// The bitmaps in the image's directory, in order.
pub fn list(img: &Image) -> Vec<BitmapInfo> {
    img.driver().bitmap_list()
}

/// `--add`: a new bitmap recording writes from now on (`enabled`) or not.
/// `granularity` None (or 0, as qemu-img passes it) takes the default:
/// the cluster size within 4 KiB ..= 64 KiB.
pub fn add(img: &Image, name: &str, granularity: Option<u64>, enabled: bool) -> Result<()> {
    if name.is_empty() {
        return Err(Error::invalid("Bitmap name cannot be empty"));
    }
    let g = match granularity.filter(|&g| g != 0) {
        // QMP's granularity is a uint32: larger values wrap.
        Some(g) => {
            let g = g as u32;
            if g < 512 || !g.is_power_of_two() {
                return Err(Error::invalid(
                    "Granularity must be power of 2 and at least 512",
                ));
            }
            Some(g as u64)
        }
        None => None,
    };
    img.driver().bitmap_add(name, g, enabled)
}

pub fn remove(img: &Image, name: &str) -> Result<()> {
    img.driver().bitmap_remove(name)
}

/// `--clear`: no bit set.
pub fn clear(img: &Image, name: &str) -> Result<()> {
    img.driver().bitmap_clear(name)
}

pub fn enable(img: &Image, name: &str) -> Result<()> {
    img.driver().bitmap_set_enabled(name, true)
}

pub fn disable(img: &Image, name: &str) -> Result<()> {
    img.driver().bitmap_set_enabled(name, false)
}

/// A bitmap's contents (for merging or copying elsewhere).
pub fn read(img: &Image, name: &str) -> Result<BitmapData> {
    img.driver().bitmap_read(name)
}

/// `--merge SRC [-b SRC_IMAGE]`: set in `dst` every bit set in `src` of
/// `src_img` (which may be `img` itself).
pub fn merge(img: &Image, dst: &str, src_img: &Image, src: &str) -> Result<()> {
    if !img.driver().bitmap_names().iter().any(|n| n == dst) {
        return Err(Error::new(
            crate::error::ErrorKind::NotFound,
            format!("Dirty bitmap '{dst}' not found"),
        ));
    }
    let data = src_img.driver().bitmap_read(src)?;
    img.driver().bitmap_merge(dst, &data)
}

/// Copy every bitmap of `src` into `dst` (`convert --bitmaps`). Void
/// (in-use) bitmaps fail unless `skip_broken`, when they are skipped
/// with a warning as qemu-img does.
pub fn copy_all(src: &Image, dst: &Image, skip_broken: bool) -> Result<()> {
    // Newest first, as QEMU walks its list; the target's store then puts
    // them back in the source's order.
    for name in src.driver().bitmap_names().iter().rev() {
        let data = src.driver().bitmap_read(name)?;
        if data.inconsistent && skip_broken {
            crate::events::warning(&format!("Skipping inconsistent bitmap '{name}'"));
            continue;
        }
        add(dst, name, Some(data.granularity), data.enabled).map_err(|e| {
            let m = format!("Failed to create bitmap {name}: {}", e.message());
            e.with_message(m)
        })?;
        if let Err(e) = dst.driver().bitmap_merge(name, &data) {
            let _ = remove(dst, name);
            let m = format!("Failed to populate bitmap {name}: {}", e.message());
            return Err(e.with_message(m));
        }
    }
    Ok(())
}

/// The void bitmap `convert --bitmaps` refuses, looking newest first as
/// QEMU does.
pub fn first_inconsistent(img: &Image) -> Option<String> {
    list(img)
        .into_iter()
        .rev()
        .find(|b| b.in_use)
        .map(|b| b.name)
}
