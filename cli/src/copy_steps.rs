//! The progress steps qemu-img's convert prints. QEMU counts progress in
//! *allocated* sectors, one step per chunk it copies (status runs, data
//! split into 2 MiB buffers), so its percentages differ from a plain
//! bytes-done ratio. We replay its chunking over the sources' block
//! status and release each step once the library's copy has reached the
//! chunk's start; the printed lines then match qemu-img's.

use imgtool::format::Status;
use imgtool::Image;

const SECTOR: u64 = 512;
/// IO_BUF_SIZE: qemu-img's copy buffer.
const BUF: u64 = 2 << 20;
/// BDRV_REQUEST_MAX_SECTORS worth of bytes: the longest status query.
const MAX_REQUEST: u64 = (i32::MAX as u64 / SECTOR) * SECTOR;

/// How convert walks the sources.
pub struct Walk {
    /// Target has a backing file: only the sources' top layers count.
    pub top_only: bool,
    /// `-S 0`: zero runs are written, and counted, too.
    pub write_zeroes: bool,
    /// `-c`: cluster size of the compressed target.
    pub compress_cluster: Option<u64>,
}

/// (guest offset where the chunk starts, percentage qemu prints).
pub type Step = (u64, f32);

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Data,
    Zero,
    Backing,
}

/// The chunks of all sources (concatenated): (start, length, counted).
fn chunks(images: &[Image], w: &Walk) -> Vec<(u64, u64, bool)> {
    let total = images.iter().fold(0u64, |t, i| t.saturating_add(i.size()));
    let mut out = Vec::new();
    let mut base = 0u64;
    for img in images {
        chunks_of(img, w, base, total, &mut out);
        base = base.saturating_add(img.size());
    }
    out
}

/// convert_iteration_sectors over one source, as a list of chunks.
fn chunks_of(img: &Image, w: &Walk, base: u64, total: u64, out: &mut Vec<(u64, u64, bool)>) {
    let size = img.size();
    let align = img
        .driver()
        .info()
        .cluster_size
        .unwrap_or(SECTOR)
        .max(SECTOR);
    // With -c, qemu-img copies one cluster per buffer.
    let buf = w.compress_cluster.filter(|c| *c > 0).unwrap_or(BUF);
    let mut pos = 0u64;
    let (mut run_end, mut kind) = (0u64, Kind::Data);
    while pos < size {
        if run_end <= pos {
            let Some((len, k)) = status(img, w, pos, (size - pos).min(MAX_REQUEST)) else {
                return;
            };
            let mut len = len.div_ceil(SECTOR) * SECTOR;
            let tail = (pos + len) % align;
            if len > tail {
                len -= tail;
            }
            run_end = pos + len;
            kind = k;
        }
        let mut n = run_end - pos;
        if kind == Kind::Data {
            n = n.min(buf);
        }
        if let Some(cs) = w.compress_cluster.filter(|c| *c > 0) {
            if n < cs {
                n = cs.min(total - (base + pos));
                kind = Kind::Data;
            } else {
                n = n / cs * cs;
            }
        }
        let zero_written = w.write_zeroes && kind == Kind::Zero;
        if zero_written {
            n = n.min(buf);
        }
        out.push((base + pos, n, kind == Kind::Data || zero_written));
        pos += n.max(SECTOR);
    }
}

fn status(img: &Image, w: &Walk, pos: u64, max: u64) -> Option<(u64, Kind)> {
    if w.top_only {
        let e = img.layer_status(pos, max).ok()?;
        let k = match e.status {
            Status::Data => Kind::Data,
            Status::Zero => Kind::Zero,
            Status::Unallocated => Kind::Backing,
        };
        return Some((e.len.clamp(1, max), k));
    }
    let e = img.block_status(pos, max).ok()?;
    let k = if e.zero { Kind::Zero } else { Kind::Data };
    Some((e.len.clamp(1, max), k))
}

/// The percentages qemu-img prints for this copy, in order.
pub fn steps(images: &[Image], w: &Walk) -> Vec<Step> {
    let chunks = chunks(images, w);
    let allocated: u64 = chunks.iter().filter(|c| c.2).map(|c| c.1).sum();
    let mut done = 0u64;
    chunks
        .iter()
        .filter(|c| c.2)
        .map(|&(start, len, _)| {
            done += len;
            (start, (100.0 * done as f64 / allocated as f64) as f32)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    // `qemu-img convert -p` on this file (qemu-img 10.0.2) printed
    // 0.00, 97.37, 100.00, 100.00: two data runs of 592 and 16 sectors.
    #[test]
    fn steps_like_qemu_for_sparse_raw() {
        let path = std::env::temp_dir().join(format!("imgtool-steps-{}.raw", std::process::id()));
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(8 << 20).unwrap();
        f.write_all_at(&vec![0xa5; 300_000], 1 << 20).unwrap();
        f.write_all_at(&[0x5a; 5000], 5 << 20).unwrap();
        drop(f);
        let img = Image::open(path.to_str().unwrap(), &imgtool::OpenOptions::default()).unwrap();
        let w = Walk {
            top_only: false,
            write_zeroes: false,
            compress_cluster: None,
        };
        let s = steps(&[img], &w);
        let _ = std::fs::remove_file(&path);
        let shown: Vec<String> = s.iter().map(|(_, p)| format!("{p:.2}")).collect();
        assert_eq!(shown, ["97.37", "100.00"]);
        assert_eq!(s[0].0, 1 << 20);
    }
}
