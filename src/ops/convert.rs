//! `convert`: copy one or more source images (concatenated) into a new or
//! existing target, keeping it sparse, optionally compressed, in parallel.

use std::sync::mpsc;

use crate::error::{Error, ErrorKind, Result};
use crate::format::{self, CreateOptions};
use crate::image::{Image, OpenOptions};
use crate::io::CacheMode;
use crate::ops::create::{self, CreateRequest};

/// Options of `qemu-img convert`.
#[derive(Debug, Clone)]
pub struct ConvertOptions {
    /// `-f`: source format (probed when None).
    pub src_format: Option<String>,
    /// `-O`: target format.
    pub out_format: String,
    /// `-o`: target creation options.
    pub out_options: CreateOptions,
    /// `-c`: compress the target.
    pub compress: bool,
    /// `-S`: bytes of zeros that make a hole (0: fully allocated output).
    pub sparse_size: u64,
    /// `-B`: target backing file; only data allocated in the source's top
    /// layer is copied.
    pub backing_file: Option<String>,
    /// `-F`: format of the `-B` backing file.
    pub backing_format: Option<String>,
    /// `-n`: the target exists; do not create it.
    pub skip_create: bool,
    /// `-m`: parallel workers (1..=16).
    pub num_workers: usize,
    /// `-W`: writes may complete out of order.
    pub out_of_order: bool,
    /// `-t`: target cache mode.
    pub target_cache: CacheMode,
    /// `-T`: source cache mode.
    pub source_cache: CacheMode,
    /// `-U`: no locks on sources.
    pub force_share: bool,
}

impl Default for ConvertOptions {
    fn default() -> Self {
        ConvertOptions {
            src_format: None,
            out_format: "raw".into(),
            out_options: CreateOptions::new(),
            compress: false,
            sparse_size: 4096,
            backing_file: None,
            backing_format: None,
            skip_create: false,
            num_workers: 8,
            out_of_order: false,
            target_cache: CacheMode::Unsafe,
            source_cache: CacheMode::Writeback,
            force_share: false,
        }
    }
}

/// Copy granularity: big enough to amortise syscalls, small enough to keep
/// memory bounded (two buffers per worker).
const CHUNK: u64 = 2 << 20;

struct Source {
    img: Image,
    start: u64,
}

/// Open the sources named in `srcs` as convert does.
pub fn open_sources(srcs: &[String], opts: &ConvertOptions) -> Result<Vec<Image>> {
    let oo = OpenOptions {
        format: opts.src_format.clone(),
        writable: false,
        cache: opts.source_cache,
        force_share: opts.force_share,
        ..OpenOptions::default()
    };
    srcs.iter().map(|s| Image::open(s, &oo)).collect()
}

/// Convert `srcs` into `target`. `progress` gets percentages and may cancel;
/// on failure or cancel a target this call created is removed.
pub fn convert(
    srcs: &[String],
    target: &str,
    opts: &ConvertOptions,
    progress: Option<crate::ops::Progress<'_>>,
) -> Result<()> {
    if srcs.is_empty() {
        return Err(Error::invalid("Must specify image file name"));
    }
    if !format::is_known(&opts.out_format) {
        return Err(Error::invalid(format!(
            "Unknown file format '{}'",
            opts.out_format
        )));
    }
    let images = open_sources(srcs, opts)?;
    convert_images(images, target, opts, progress)
}

/// Convert already-opened sources (used by the C ABI and `convert -l`).
pub fn convert_images(
    images: Vec<Image>,
    target: &str,
    opts: &ConvertOptions,
    progress: Option<crate::ops::Progress<'_>>,
) -> Result<()> {
    let mut sources = Vec::new();
    let mut total = 0u64;
    for img in images {
        let size = img.size();
        sources.push(Source { img, start: total });
        total = total
            .checked_add(size)
            .ok_or_else(|| Error::invalid("Total image size too large"))?;
    }
    let created = !opts.skip_create;
    if created {
        let mut o = opts.out_options.clone();
        if let Some(b) = &opts.backing_file {
            o.set("backing_file", b);
            if let Some(f) = &opts.backing_format {
                o.set("backing_fmt", f);
            }
        }
        if opts.compress && opts.out_format != "qcow2" {
            return Err(Error::unsupported(
                "Compression not supported for this file format",
            ));
        }
        let req = CreateRequest {
            format: opts.out_format.clone(),
            filename: target.to_string(),
            size: Some(total),
            options: o,
            unsafe_backing: false,
        };
        create::create(&req)?;
    }
    let result = copy_into(&sources, total, target, opts, created, progress);
    if result.is_err() && created {
        let _ = std::fs::remove_file(target);
    }
    result
}

fn copy_into(
    sources: &[Source],
    total: u64,
    target: &str,
    opts: &ConvertOptions,
    created: bool,
    mut progress: Option<crate::ops::Progress<'_>>,
) -> Result<()> {
    let oo = OpenOptions {
        format: Some(opts.out_format.clone()),
        writable: true,
        cache: opts.target_cache,
        ..OpenOptions::default()
    };
    let out = Image::open(target, &oo)?;
    if out.size() < total {
        return Err(Error::invalid("Error: Target image too small"));
    }
    // A fresh target without backing reads as zeros already; otherwise
    // zeros must be written explicitly.
    let target_is_zero = created && out.backing().is_none() && opts.backing_file.is_none();
    let copy_top_only = opts.backing_file.is_some();
    let sparse = opts.sparse_size;
    let cluster = out.driver().compression_cluster_size();
    if opts.compress && cluster.is_none() {
        return Err(Error::unsupported(
            "Compression not supported for this file format",
        ));
    }

    let mut done = 0u64;
    let mut report = |n: u64| -> Result<()> {
        done += n;
        if let Some(p) = progress.as_mut() {
            let pct = if total == 0 {
                100.0
            } else {
                done as f64 * 100.0 / total as f64
            };
            if !p(pct) {
                return Err(Error::cancelled());
            }
        }
        Ok(())
    };

    if opts.compress {
        let cs = cluster.unwrap_or(65536);
        return copy_compressed(
            sources,
            &out,
            cs,
            opts.num_workers.max(1),
            target_is_zero,
            &mut report,
        )
        .and_then(|_| out.close());
    }

    let mut buf = vec![0u8; CHUNK as usize];
    for src in sources {
        let size = src.img.size();
        let mut off = 0u64;
        while off < size {
            let want = (size - off).min(CHUNK);
            let st = if copy_top_only {
                let e = src.img.layer_status(off, want)?;
                crate::image::ChainExtent {
                    len: e.len.clamp(1, want),
                    depth: 0,
                    present: e.status != format::Status::Unallocated,
                    zero: e.status != format::Status::Data,
                    data: e.status == format::Status::Data,
                    compressed: e.compressed,
                    offset: e.offset,
                }
            } else {
                src.img.block_status(off, want)?
            };
            let n = st.len;
            let dst = src.start + off;
            if copy_top_only && !st.present {
                // Left to the target's backing file.
            } else if st.zero {
                if !target_is_zero {
                    out.write_zeroes(dst, n, true)?;
                }
            } else {
                let b = &mut buf[..n as usize];
                src.img.read_at(b, off)?;
                write_sparse(&out, b, dst, sparse, target_is_zero)?;
            }
            off += n;
            report(n)?;
        }
    }
    if total == 0 {
        report(0)?;
    }
    out.close()
}

/// Write `buf`, skipping (or zero-writing) blocks of `sparse` bytes, aligned
/// in guest offsets, that hold only zeros.
fn write_sparse(
    out: &Image,
    buf: &[u8],
    off: u64,
    sparse: u64,
    target_is_zero: bool,
) -> Result<()> {
    if sparse == 0 {
        return out.write_at(buf, off);
    }
    let block_end = |pos: usize| -> usize {
        let g = off + pos as u64;
        let next = (g / sparse + 1) * sparse;
        ((next - off) as usize).min(buf.len())
    };
    let mut pos = 0usize;
    while pos < buf.len() {
        let mut end = block_end(pos);
        let zero = is_zero(&buf[pos..end]);
        while end < buf.len() {
            let next = block_end(end);
            if is_zero(&buf[end..next]) != zero {
                break;
            }
            end = next;
        }
        if !zero {
            out.write_at(&buf[pos..end], off + pos as u64)?;
        } else if !target_is_zero {
            out.write_zeroes(off + pos as u64, (end - pos) as u64, true)?;
        }
        pos = end;
    }
    Ok(())
}

/// All-zero test; the OR-fold over 64-byte blocks vectorises.
pub fn is_zero(b: &[u8]) -> bool {
    let mut chunks = b.chunks_exact(64);
    for c in &mut chunks {
        if c.iter().fold(0u8, |a, &x| a | x) != 0 {
            return false;
        }
    }
    chunks.remainder().iter().all(|&x| x == 0)
}

/// Compressed copy: clusters are read in order, compressed on worker
/// threads, and written in order by this thread.
fn copy_compressed(
    sources: &[Source],
    out: &Image,
    cs: u64,
    workers: usize,
    target_is_zero: bool,
    report: &mut dyn FnMut(u64) -> Result<()>,
) -> Result<()> {
    let drv = out.driver();
    let total = out.size();
    let workers = workers.clamp(
        1,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .max(1),
    );
    // Batches of clusters; each job is (seq, guest offset, data).
    let batch = 32usize;
    std::thread::scope(|scope| -> Result<()> {
        let (job_tx, job_rx) = mpsc::sync_channel::<(u64, u64, Vec<u8>)>(workers * 2);
        let job_rx = std::sync::Arc::new(parking_lot::Mutex::new(job_rx));
        let (res_tx, res_rx) =
            mpsc::sync_channel::<(u64, u64, Vec<u8>, Result<Vec<Option<Vec<u8>>>>)>(workers * 2);
        for _ in 0..workers {
            let rx = job_rx.clone();
            let tx = res_tx.clone();
            scope.spawn(move || loop {
                let job = rx.lock().recv();
                let Ok((seq, off, data)) = job else { break };
                let r = data
                    .chunks(cs as usize)
                    .map(|c| drv.compress_cluster(c))
                    .collect::<Result<Vec<_>>>();
                if tx.send((seq, off, data, r)).is_err() {
                    break;
                }
            });
        }
        drop(res_tx);

        // Producer: read sources into batches on its own thread.
        let producer = scope.spawn(move || -> Result<()> {
            let mut seq = 0u64;
            let step = cs * batch as u64;
            let mut gpos = 0u64;
            while gpos < total {
                let n = (total - gpos).min(step);
                let mut data = vec![0u8; n as usize];
                read_concat(sources, &mut data, gpos)?;
                if job_tx.send((seq, gpos, data)).is_err() {
                    break;
                }
                seq += 1;
                gpos += n;
            }
            Ok(())
        });

        // Consumer: write results in sequence order.
        let mut next = 0u64;
        let mut pending = std::collections::BTreeMap::new();
        let mut err: Option<Error> = None;
        for (seq, off, data, r) in res_rx.iter() {
            pending.insert(seq, (off, data, r));
            while let Some((off, data, r)) = pending.remove(&next) {
                next += 1;
                if err.is_some() {
                    continue;
                }
                let res = (|| -> Result<()> {
                    let comp = r?;
                    for (i, (chunk, c)) in data.chunks(cs as usize).zip(comp).enumerate() {
                        let coff = off + (i as u64) * cs;
                        if is_zero(chunk) {
                            if !target_is_zero {
                                out.write_zeroes(coff, chunk.len() as u64, true)?;
                            }
                        } else {
                            match c {
                                Some(c) => drv.write_compressed_raw(&c, coff)?,
                                None => out.write_at(chunk, coff)?,
                            }
                        }
                    }
                    report(data.len() as u64)
                })();
                if let Err(e) = res {
                    err = Some(e);
                }
            }
            if err.is_some() {
                break;
            }
        }
        drop(res_rx);
        let pr = producer
            .join()
            .unwrap_or_else(|_| Err(Error::new(ErrorKind::Io, "reader thread panicked")));
        if let Some(e) = err {
            return Err(e);
        }
        pr
    })
}

/// Read guest bytes of the concatenated sources.
fn read_concat(sources: &[Source], buf: &mut [u8], off: u64) -> Result<()> {
    let mut done = 0usize;
    while done < buf.len() {
        let pos = off + done as u64;
        let Some(src) = sources.iter().rev().find(|s| s.start <= pos) else {
            buf[done..].fill(0);
            break;
        };
        let local = pos - src.start;
        let size = src.img.size();
        if local >= size {
            buf[done..].fill(0);
            break;
        }
        let n = ((size - local) as usize).min(buf.len() - done);
        src.img.read_at(&mut buf[done..done + n], local)?;
        done += n;
    }
    Ok(())
}
