//! `resize`: change an image's virtual size as `qemu-img resize` does,
//! including its checks and messages.

use crate::error::{Error, Result};
use crate::format::{BackingRead, Prealloc};
use crate::image::Image;

/// The size argument: absolute, or relative to the current size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeSpec {
    Absolute(u64),
    /// `+N`
    Grow(u64),
    /// `-N`
    Shrink(u64),
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResizeOptions {
    /// `--preallocation`: only for growing.
    pub prealloc: Prealloc,
    /// `--shrink`: allow making the image smaller.
    pub shrink: bool,
}

/// The error when shrinking without `--shrink`; qemu-img follows it with
/// [`SHRINK_WARNING`] as a warning line.
pub const NEED_SHRINK: &str = "Use the --shrink option to perform a shrink operation.";
pub const SHRINK_WARNING: &str = "Shrinking an image will delete all data beyond the shrunken image's end. Before performing such an operation, make sure there is no important data there.";

/// The new size qemu-img computes (in its signed 64-bit arithmetic) and
/// checks before touching the image.
pub fn target_size(current: u64, spec: SizeSpec, opts: &ResizeOptions) -> Result<u64> {
    let cur = current as i64;
    let total = match spec {
        SizeSpec::Absolute(n) => n as i64,
        SizeSpec::Grow(n) => cur.wrapping_add(n as i64),
        SizeSpec::Shrink(n) => cur.wrapping_sub(n as i64),
    };
    if total <= 0 {
        return Err(Error::invalid("New image size must be positive"));
    }
    if total <= cur && opts.prealloc != Prealloc::Off {
        return Err(Error::invalid(
            "Preallocation can only be used for growing images",
        ));
    }
    if cur > total && !opts.shrink {
        return Err(Error::invalid(NEED_SHRINK));
    }
    Ok(total as u64)
}

/// Set the virtual size of `img` to exactly `size`. Growing an image whose
/// backing file is longer than it makes the new area read as zeros, as
/// QEMU does, instead of letting the backing file show through.
pub fn truncate(img: &Image, size: u64, prealloc: Prealloc) -> Result<()> {
    let old = img.size();
    match img.backing() {
        Some(b) if size > old && b.size() > old => {
            img.driver()
                .truncate_zeroed(size, prealloc, b as &dyn BackingRead)?;
        }
        _ => img.driver().truncate(size, prealloc)?,
    }
    img.flush()
}

/// `qemu-img resize`: returns the new size.
pub fn resize(img: &Image, spec: SizeSpec, opts: &ResizeOptions) -> Result<u64> {
    let size = target_size(img.size(), spec, opts)?;
    truncate(img, size, opts.prealloc)?;
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_in_qemu_img_order() {
        let o = ResizeOptions::default();
        assert_eq!(target_size(10, SizeSpec::Grow(5), &o).unwrap(), 15);
        assert!(target_size(10, SizeSpec::Shrink(10), &o)
            .unwrap_err()
            .message()
            .contains("positive"));
        assert_eq!(
            target_size(10, SizeSpec::Shrink(1), &o)
                .unwrap_err()
                .message(),
            NEED_SHRINK
        );
        // +2^64-1 is -1 in qemu-img's arithmetic: a shrink.
        assert_eq!(
            target_size(10, SizeSpec::Grow(u64::MAX), &o)
                .unwrap_err()
                .message(),
            NEED_SHRINK
        );
        let p = ResizeOptions {
            prealloc: Prealloc::Full,
            shrink: true,
        };
        assert!(target_size(10, SizeSpec::Absolute(10), &p)
            .unwrap_err()
            .message()
            .contains("growing"));
    }
}
