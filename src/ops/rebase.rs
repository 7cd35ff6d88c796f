//! `rebase`: point an image at another backing file (or none). In safe
//! mode every run the image leaves unallocated, and whose content differs
//! between the old and the new backing chain, is first copied from the old
//! chain into the image, so the guest-visible content does not change.
//! The header switch comes last, after the copied data is on disk.

use crate::error::{Error, ErrorKind, Result};
use crate::format::{self, errno_text, BackingRead, BackingRef, Status};
use crate::image::{combine_backing_path, Image, OpenOptions};
use crate::io::CacheMode;
use crate::json::Json;
use crate::ops::commit::chain_layers;
use crate::ops::Progress;

/// Options of `qemu-img rebase`.
#[derive(Debug, Clone, Default)]
pub struct RebaseOptions {
    /// `-b`: the new backing file as it goes into the header; `""` means
    /// none. None (only with `unsafe_mode`) also removes the reference.
    pub backing: Option<String>,
    /// `-F`: format of the new backing file.
    pub backing_format: Option<String>,
    /// `-u`: only rewrite the header (the image was opened without its
    /// backing chain).
    pub unsafe_mode: bool,
    /// `-c`: write copied clusters compressed.
    pub compress: bool,
    /// `-U`: open the new backing file without locks.
    pub force_share: bool,
    /// `-T`: cache mode for the new backing file.
    pub backing_cache: CacheMode,
}

/// Copy granularity (QEMU's IO_BUF_SIZE).
const CHUNK: u64 = 2 << 20;

fn same_file(a: &str, b: &str) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

/// The image at `depth` of `img`'s chain.
fn at_depth(img: &Image, depth: usize) -> Option<&Image> {
    let mut cur = Some(img);
    for _ in 0..depth {
        cur = cur.and_then(|i| i.backing());
    }
    cur
}

/// The new backing file's view: an image of the current chain (rebasing
/// onto an image below the top's backing file) or one opened for it.
enum NewBacking<'a> {
    None,
    InChain { img: &'a Image, depth: usize },
    Opened(Image),
}

impl NewBacking<'_> {
    fn image(&self) -> Option<&Image> {
        match self {
            NewBacking::None => None,
            NewBacking::InChain { img, .. } => Some(img),
            NewBacking::Opened(i) => Some(i),
        }
    }
}

/// `qemu-img rebase`. `img` is the image opened writable (without its
/// backing chain in unsafe mode).
pub fn rebase(img: Image, opts: &RebaseOptions, mut progress: Option<Progress<'_>>) -> Result<()> {
    if opts.compress && img.driver().compression_cluster_size().is_none() {
        return Err(Error::unsupported(
            "Compression not supported for this file format",
        ));
    }
    if let Some(f) = &opts.backing_format {
        if !format::is_qemu_driver(f) {
            return Err(Error::invalid(format!("Invalid format name: '{f}'")));
        }
    }
    if !opts.unsafe_mode {
        let new = open_new_backing(&img, opts)?;
        copy_differences(&img, &new, opts, &mut progress)?;
        drop(new);
        img.flush()?;
    }
    let shown = opts.backing.as_deref().unwrap_or("(null)");
    let fail = |why: String| {
        Error::invalid(format!(
            "Could not change the backing file to '{shown}': {why}"
        ))
    };
    let changed = match &opts.backing {
        Some(b) if !b.is_empty() && opts.backing_format.is_none() => {
            Err(fail("backing format must be specified".into()))
        }
        b => {
            let target = b.as_ref().filter(|b| !b.is_empty()).map(|b| BackingRef {
                filename: b.clone(),
                format: opts.backing_format.clone(),
            });
            img.driver().set_backing(target.as_ref()).map_err(|e| {
                if e.kind() == ErrorKind::NoSpace || e.errno() == Some(libc::ENOSPC) {
                    fail("No space left in the file header".into())
                } else {
                    fail(errno_text(&e))
                }
            })
        }
    };
    // qemu-img reports 100% even when changing the header failed.
    if let Some(p) = progress.as_mut() {
        p(100.0);
    }
    changed?;
    img.close()
}

fn open_new_backing<'a>(img: &'a Image, opts: &RebaseOptions) -> Result<NewBacking<'a>> {
    let Some(b) = opts.backing.as_deref().filter(|b| !b.is_empty()) else {
        return Ok(NewBacking::None);
    };
    let path = combine_backing_path(img.filename(), b);
    let layers = chain_layers(img);
    if let Some(depth) = (1..layers.len()).find(|&d| same_file(&path, &layers[d].filename)) {
        if let Some(i) = at_depth(img, depth) {
            return Ok(NewBacking::InChain { img: i, depth });
        }
    }
    let oo = OpenOptions {
        format: opts.backing_format.clone(),
        force_share: opts.force_share,
        cache: opts.backing_cache,
        ..OpenOptions::default()
    };
    Image::open(&path, &oo)
        .map(NewBacking::Opened)
        .map_err(|e| {
            // The reason as the block layer words it, without Image::open's
            // own "Could not open" prefix.
            let outer = format!("Could not open '{path}': ");
            let why = e.message().strip_prefix(&outer).unwrap_or(e.message());
            let m = format!("Could not open new backing file '{b}': {why}");
            e.with_message(m)
        })
}

/// Whether the image can mark clusters as reading zeros (qcow2 v3).
fn has_zero_flag(img: &Image) -> bool {
    img.driver()
        .info()
        .format_specific
        .as_ref()
        .and_then(|j| j.get("data"))
        .and_then(|d| d.get("compat"))
        .is_some_and(|c| *c == Json::Str("1.1".into()))
}

/// The old backing chain as the write path sees it while zeros are
/// written: its content (or zeros), but never "no backing file", so that
/// unallocated clusters are not taken as already reading zeros.
struct Hidden<'a> {
    old: Option<&'a Image>,
}

impl BackingRead for Hidden<'_> {
    fn read_backing(&self, buf: &mut [u8], off: u64) -> Result<()> {
        match self.old {
            Some(o) => o.read_backing(buf, off),
            None => {
                buf.fill(0);
                Ok(())
            }
        }
    }
    fn is_none(&self) -> bool {
        false
    }
}

fn copy_differences(
    img: &Image,
    new: &NewBacking<'_>,
    opts: &RebaseOptions,
    progress: &mut Option<Progress<'_>>,
) -> Result<()> {
    let size = img.size();
    let old = img.backing();
    let old_size = old.map_or(0, |o| o.size());
    let new_img = new.image();
    let prefix = match new {
        NewBacking::InChain { depth, .. } => Some(*depth),
        _ => None,
    };
    let align = img
        .driver()
        .compression_cluster_size()
        .unwrap_or(512)
        .max(512);
    let zero_flag = has_zero_flag(img);
    let mut buf_old = crate::io::AlignedBuf::new();
    let mut buf_new = crate::io::AlignedBuf::new();
    let step_pct = if size == 0 {
        0.0
    } else {
        100.0 / (size / size.min(CHUNK)) as f64
    };
    let mut done_pct = 0.0;
    let mut off = 0u64;
    while off < size {
        let max = CHUNK.min(size - off);
        let e = img.layer_status(off, max)?;
        let mut len = e.len.clamp(1, max);
        if e.status != Status::Unallocated {
            off += len;
            continue;
        }
        if off < old_size && old_size < off + len {
            // QEMU's block status ends an unallocated run where the backing
            // file ends (beyond it reads as zeros): one more step of -p.
            len = old_size - off;
        }
        if let Some(p) = prefix {
            // Runs that come from the new backing file (or below) in the
            // old chain already read the same afterwards.
            let c = img.block_status(off, len)?;
            len = len.min(c.len.max(1));
            // Nothing allocated anywhere in the chain (within the old
            // backing's length) reads as zeros both ways, as qemu-img's
            // is_allocated_above sees it.
            if (c.present && c.depth >= p) || (!c.present && off + len <= old_size) {
                off += len;
                continue;
            }
        }
        if opts.compress {
            // As qemu-img: the run widens to whole clusters, so that each
            // one is compared and written compressed as a unit.
            let start = off - off % align;
            let end = (off + len).next_multiple_of(align).min(size);
            off = start;
            len = end - start;
        }
        // Shrinking to 0 first makes every byte zero again.
        buf_old.resize(0);
        buf_old.resize(len as usize);
        buf_new.resize(0);
        buf_new.resize(len as usize);
        if let Some(o) = old {
            o.read_backing(&mut buf_old, off)?;
        }
        if let Some(n) = new_img {
            n.read_backing(&mut buf_new, off)?;
        }
        // Differing pieces are written as runs, one write per run as
        // qemu-img does: formats that allocate in write order (QED, VDI,
        // VPC) then lay the clusters out the same way.
        let mut run: Option<(Write, u64, u64)> = None;
        let mut w = 0u64;
        while w < len {
            let pos = off + w;
            let piece = ((pos / align + 1) * align - pos).min(len - w);
            let r = w as usize..(w + piece) as usize;
            w += piece;
            if buf_old[r.clone()] == buf_new[r.clone()] {
                flush_run(img, old, zero_flag, &buf_old, off, run.take())?;
                continue;
            }
            let kind = if pos >= old_size {
                Write::Zeroes
            } else if opts.compress
                && pos.is_multiple_of(align)
                && (piece == align || pos + piece == size)
            {
                Write::Compressed
            } else {
                Write::Data
            };
            match &mut run {
                Some((k, _, end)) if *k == kind && kind != Write::Compressed && *end == pos => {
                    *end = pos + piece;
                }
                _ => {
                    flush_run(img, old, zero_flag, &buf_old, off, run.take())?;
                    run = Some((kind, pos, pos + piece));
                }
            }
        }
        flush_run(img, old, zero_flag, &buf_old, off, run.take())?;
        off += len;
        // qemu-img advances by one buffer's share for each run it had to
        // look at (skipped allocated runs add nothing), not by offset.
        done_pct += step_pct;
        if let Some(p) = progress.as_mut() {
            if !p(done_pct.min(100.0)) {
                return Err(Error::cancelled());
            }
        }
    }
    Ok(())
}

/// How a run of pieces that differ between the old and new backing is
/// preserved in the image.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Write {
    /// Beyond the old backing's end: it read as zeros.
    Zeroes,
    /// One compressed cluster (`-c`).
    Compressed,
    /// The old backing's data.
    Data,
}

/// Write the run `[start, end)` of the chunk read at `base` into `buf_old`.
fn flush_run(
    img: &Image,
    old: Option<&Image>,
    zero_flag: bool,
    buf_old: &[u8],
    base: u64,
    run: Option<(Write, u64, u64)>,
) -> Result<()> {
    let Some((kind, start, end)) = run else {
        return Ok(());
    };
    let r = (start - base) as usize..(end - base) as usize;
    let done = match kind {
        Write::Zeroes if zero_flag => {
            // Zero clusters: the image is about to get a backing file
            // that must not show through here.
            img.driver()
                .write_zeroes(start, end - start, false, &Hidden { old })
        }
        // qemu-img's zero write on a v2 image without a backing file is a
        // discard (the new backing file then shows through); kept for
        // identical results.
        Write::Zeroes => img.write_zeroes(start, end - start, false),
        Write::Compressed => img.driver().write_compressed(&buf_old[r], start),
        Write::Data => img.write_at(&buf_old[r], start),
    };
    done.map_err(|e| {
        let m = format!(
            "Error while writing to COW image: {}",
            crate::format::errno_text(&e)
        );
        e.with_message(m)
    })
}
