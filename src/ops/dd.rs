//! `dd`: copy an image's bytes, in `bs`-sized blocks, into a new image of
//! the output format, with qemu-img's sizes: the input ends at
//! `count * bs` (when that is smaller than the input), and reading starts
//! at `skip * bs`.

use crate::error::{Error, Result};
use crate::format::CreateOptions;
use crate::image::{Image, OpenOptions};
use crate::io::{CacheMode, HostFile, LockMode};
use crate::ops::create::{self, CreateRequest};

/// dd's operands and `-O`.
#[derive(Debug, Clone)]
pub struct DdOptions {
    /// `-O`: output format.
    pub out_format: String,
    /// `bs=`: block size in bytes (1 ..= i32::MAX).
    pub block_size: u64,
    /// `count=`: input blocks (the input is cut at `count * bs`).
    pub count: Option<u64>,
    /// `skip=`: input blocks to skip.
    pub skip: Option<u64>,
}

impl Default for DdOptions {
    fn default() -> Self {
        DdOptions {
            out_format: "raw".into(),
            block_size: 512,
            count: None,
            skip: None,
        }
    }
}

/// Where the copy reads and how large the output is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DdPlan {
    /// First input byte copied.
    pub in_start: u64,
    /// End of the input range copied (exclusive).
    pub in_end: u64,
    /// Virtual size the output is created with.
    pub out_size: u64,
    /// `skip` points past the input: the output is empty and qemu-img
    /// says it cannot skip there (but succeeds).
    pub skip_past_end: bool,
}

/// qemu-img's size arithmetic for an input of `size` bytes.
pub fn plan(size: u64, o: &DdOptions) -> DdPlan {
    let bs = o.block_size.max(1);
    let max = i64::MAX as u64;
    let mut end = size;
    if let Some(c) = o.count {
        if c <= max / bs && c * bs < end {
            end = c * bs;
        }
    }
    let skip = o.skip.unwrap_or(0);
    let past = o.skip.is_some() && (skip > max / bs || end < skip * bs);
    if past {
        return DdPlan {
            in_start: end,
            in_end: end,
            out_size: 0,
            skip_past_end: true,
        };
    }
    DdPlan {
        in_start: skip * bs,
        in_end: end,
        out_size: end - skip * bs,
        skip_past_end: false,
    }
}

/// `-O fmt` as img_dd checks it: known, and able to create images.
pub fn check_out_format(fmt: &str) -> Result<()> {
    if crate::format::is_known(fmt) {
        return Ok(());
    }
    if crate::ops::measure::NO_CREATE.contains(&fmt) {
        return Err(Error::unsupported(format!(
            "Format driver '{fmt}' does not support image creation"
        )));
    }
    Err(Error::invalid("Unknown file format"))
}

/// Why a dd failed, with qemu-img's message.
#[derive(Debug, Clone)]
pub enum DdError {
    /// Creating the output failed.
    Create(Error),
    /// Opening the created output failed.
    Open(Error),
    Read(Error),
    Write(Error),
}

impl DdError {
    pub fn message(&self, out_filename: &str) -> String {
        match self {
            DdError::Create(e) => format!(
                "{out_filename}: error while creating output image: {}",
                e.message()
            ),
            DdError::Open(e) => e.message().to_string(),
            DdError::Read(e) => {
                format!("error while reading from input image file: {}", e.message())
            }
            DdError::Write(e) => {
                format!("error while writing to output image file: {}", e.message())
            }
        }
    }
}

/// QEMU's file creation takes the image's write lock before truncating,
/// so an output that is in use (the input itself, say) is left alone.
/// The library's create does not lock yet; ask first.
fn check_not_in_use(output: &str) -> Result<()> {
    let path = std::path::Path::new(output);
    if !path.is_file() {
        return Ok(());
    }
    match HostFile::open(path, false, CacheMode::Writeback) {
        Ok(f) => f.lock(LockMode::Write),
        Err(_) => Ok(()),
    }
}

/// A raw input shares write access in QEMU (only format drivers such as
/// qcow2 refuse other writers), so writing over one's own raw input is not
/// refused there; our own read lock must not refuse it either.
fn same_raw_file(input: &Image, output: &str) -> bool {
    use std::os::unix::fs::MetadataExt;
    let id = |p: &str| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    input.format() == "raw" && id(input.filename()).is_some() && id(input.filename()) == id(output)
}

/// Bytes moved per request; a multiple of `bs` so the copy is what
/// qemu-img's block-by-block loop writes, in fewer calls.
const BATCH: u64 = 1 << 20;

/// Create `output` and copy `input` into it. Returns the plan it followed.
pub fn dd(input: &Image, output: &str, o: &DdOptions) -> std::result::Result<DdPlan, DdError> {
    let p = plan(input.size(), o);
    let req = CreateRequest {
        format: o.out_format.clone(),
        filename: output.to_string(),
        size: Some(p.out_size),
        options: CreateOptions::new(),
        unsafe_backing: false,
    };
    if !same_raw_file(input, output) {
        check_not_in_use(output).map_err(DdError::Create)?;
    }
    create::create(&req).map_err(DdError::Create)?;
    let out = Image::open(
        output,
        &OpenOptions {
            format: Some(o.out_format.clone()),
            ..OpenOptions::read_write()
        },
    )
    .map_err(DdError::Open)?;
    let bs = o.block_size.max(1);
    let step = (BATCH / bs).max(1) * bs;
    let mut buf = crate::io::AlignedBuf::with_len(step.min(p.in_end - p.in_start) as usize);
    let mut pos = p.in_start;
    while pos < p.in_end {
        let n = (p.in_end - pos).min(step) as usize;
        let chunk = &mut buf[..n];
        input.read_at(chunk, pos).map_err(DdError::Read)?;
        out.write_at(chunk, pos - p.in_start)
            .map_err(DdError::Write)?;
        pos += n as u64;
    }
    out.close().map_err(DdError::Write)?;
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_like_qemu() {
        let o = |bs, count, skip| DdOptions {
            block_size: bs,
            count,
            skip,
            ..DdOptions::default()
        };
        // `bs=4k skip=2 count=3` of 1 MiB: count cuts the input at 12 KiB.
        let p = plan(1 << 20, &o(4096, Some(3), Some(2)));
        assert_eq!((p.in_start, p.in_end, p.out_size), (8192, 12288, 4096));
        // skip past the end: empty output, a warning, success.
        assert!(plan(1 << 20, &o(512, None, Some(5000))).skip_past_end);
        assert!(plan(1 << 20, &o(4096, None, Some(u64::MAX / 2))).skip_past_end);
        assert_eq!(plan(1 << 20, &o(1000, Some(3), None)).out_size, 3000);
    }
}
