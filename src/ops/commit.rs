//! `commit`: write what the top image (and the layers between it and the
//! base) has allocated into the base, then empty the top unless dropped.
//!
//! The top's chain is opened once as the user named it (so open errors
//! read as qemu-img's), then reopened layer by layer: the layers above the
//! base on their own (the top writable, to empty it), the base writable
//! with its own backing chain. Data reaches the base before the top is
//! emptied, so an interruption never loses what was committed.

use std::path::Path;

use crate::error::{Error, Result};
use crate::format::Status;
use crate::image::{combine_backing_path, Image, OpenOptions};
use crate::io::CacheMode;
use crate::ops::Progress;

/// Options of `qemu-img commit`.
#[derive(Debug, Clone, Default)]
pub struct CommitOptions {
    /// `-b`: the image of the chain to commit into (default: the top's
    /// immediate backing file). Implies `drop`.
    pub base: Option<String>,
    /// `-d`: leave the top image as it is.
    pub drop: bool,
    /// `-t`: cache mode for the images written.
    pub cache: CacheMode,
}

/// Copy granularity.
const CHUNK: u64 = 2 << 20;

/// One layer of an opened chain, as needed to reopen it.
#[derive(Debug, Clone)]
pub struct Layer {
    pub filename: String,
    pub format: &'static str,
    /// The backing file name as recorded in this layer's header.
    pub backing_name: Option<String>,
    /// Secret id the layer was unlocked with.
    pub key_secret: Option<String>,
    /// The blkdebug node the layer's file sits under, reopened with it.
    pub blkdebug: Option<crate::io::BlkdebugOptions>,
}

/// The layers of an opened image, top first.
pub fn chain_layers(img: &Image) -> Vec<Layer> {
    let mut out = Vec::new();
    let mut cur = Some(img);
    while let Some(i) = cur {
        out.push(Layer {
            filename: i.filename().to_string(),
            format: i.format(),
            backing_name: i.driver().backing().map(|b| b.filename),
            key_secret: i.key_secret().map(str::to_string),
            blkdebug: i.blkdebug().cloned(),
        });
        cur = i.backing();
    }
    out
}

fn same_file(a: &str, b: &str) -> bool {
    match (
        std::fs::canonicalize(Path::new(a)),
        std::fs::canonicalize(Path::new(b)),
    ) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

/// QEMU's bdrv_find_backing_image: the depth (>= 1) of the layer `name`
/// designates, either as the name recorded in the layer above it or as a
/// path (relative to the layer above) to the same file.
pub fn find_backing_image(layers: &[Layer], name: &str) -> Option<usize> {
    (1..layers.len()).find(|&d| {
        let above = &layers[d - 1];
        if above.backing_name.as_deref() == Some(name) {
            return true;
        }
        let cand = combine_backing_path(&above.filename, name);
        same_file(&cand, &layers[d].filename)
    })
}

/// What the layers above the base say about a run of guest bytes.
enum Above {
    /// Nothing above the base has it: leave the base alone.
    Nothing,
    Zero,
    /// Data in layer `d`.
    Data(usize),
}

/// Status of the run at `off` (at most `max` bytes) in `layers` (all
/// above the base). A layer shorter than `off` reads as zeros there and
/// counts as having allocated them, as QEMU's block status says.
fn status_above(layers: &[Image], off: u64, mut max: u64) -> Result<(u64, Above)> {
    for (d, l) in layers.iter().enumerate() {
        if off >= l.size() {
            return Ok((max, Above::Zero));
        }
        let e = l.layer_status(off, max.min(l.size() - off))?;
        max = max.min(e.len.max(1));
        match e.status {
            Status::Data => return Ok((max, Above::Data(d))),
            Status::Zero => return Ok((max, Above::Zero)),
            Status::Unallocated => {}
        }
    }
    Ok((max, Above::Nothing))
}

/// `qemu-img commit`. `top` is the image as opened by the caller (writable,
/// with its backing chain); `name` is how the user named it (for messages).
pub fn commit(
    top: Image,
    name: &str,
    opts: &CommitOptions,
    mut progress: Option<Progress<'_>>,
) -> Result<()> {
    let layers = chain_layers(&top);
    let k = match &opts.base {
        Some(b) => find_backing_image(&layers, b).ok_or_else(|| {
            Error::invalid(format!(
                "Did not find '{b}' in the backing chain of '{name}'"
            ))
        })?,
        None if layers.len() > 1 => 1,
        None => return Err(Error::invalid("Image does not have a backing file")),
    };
    let drop_top = opts.drop || opts.base.is_some();
    drop(top);

    let mut above = Vec::with_capacity(k);
    for (d, l) in layers[..k].iter().enumerate() {
        above.push(Image::open(
            &l.filename,
            &OpenOptions {
                format: Some(l.format.to_string()),
                writable: d == 0,
                cache: opts.cache,
                no_backing: true,
                key_secret: l.key_secret.clone(),
                blkdebug: l.blkdebug.clone(),
                ..OpenOptions::default()
            },
        )?);
    }
    let base_layer = &layers[k];
    let base = Image::open(
        &base_layer.filename,
        &OpenOptions {
            format: Some(base_layer.format.to_string()),
            writable: true,
            cache: opts.cache,
            key_secret: base_layer.key_secret.clone(),
            blkdebug: base_layer.blkdebug.clone(),
            ..OpenOptions::default()
        },
    )?;

    let size = above[0].size();
    if base.size() < size {
        crate::ops::resize::truncate(&base, size, crate::format::Prealloc::Off)?;
    }
    let mut buf = crate::io::AlignedBuf::new();
    let mut off = 0u64;
    // I/O errors of the copy are the commit block job's.
    let job = |e: Error| match e.errno() {
        Some(_) => {
            let t = crate::format::errno_text(&e);
            e.with_message(format!("Block job failed: {t}"))
        }
        None => e,
    };
    while off < size {
        let (len, what) = status_above(&above, off, CHUNK.min(size - off)).map_err(job)?;
        match what {
            Above::Nothing => {}
            Above::Zero => base.write_zeroes(off, len, true).map_err(job)?,
            Above::Data(d) => {
                buf.resize(len as usize);
                above[d].read_at(&mut buf, off).map_err(job)?;
                base.write_at(&buf, off).map_err(job)?;
            }
        }
        off += len;
        if let Some(p) = progress.as_mut() {
            if !p(off as f64 * 100.0 / size as f64) {
                return Err(Error::cancelled());
            }
        }
    }
    base.flush().map_err(job)?;
    if !drop_top {
        // qemu-img ignores ENOTSUP: a format that cannot empty itself
        // keeps its data and the commit still succeeds.
        match above[0].driver().make_empty() {
            Err(e) if e.kind() == crate::error::ErrorKind::Unsupported => {}
            r => r.map_err(|e| {
                let t = crate::format::errno_text(&e);
                e.with_message(format!("Failed to empty {name}: {t}"))
            })?,
        }
        above[0].flush()?;
    }
    base.close()?;
    for l in above {
        l.close()?;
    }
    Ok(())
}
