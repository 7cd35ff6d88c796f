//! `convert`: copy one or more source images (concatenated) into a new or
//! existing target, keeping it sparse, optionally compressed, in parallel.

use std::sync::mpsc;

use crate::error::{Error, Result};
use crate::format::{self, CreateOptions};
use crate::image::{Image, OpenOptions};
use crate::io::{AlignedBuf, CacheMode};
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
    /// `-l`: read this internal snapshot of the (single) source.
    pub snapshot: Option<String>,
    /// Secret id unlocking the sources' top images when encrypted.
    pub source_key_secret: Option<String>,
    /// Secret id unlocking an existing encrypted target (`-n`); a created
    /// one uses `encrypt.key-secret` from `out_options`.
    pub target_key_secret: Option<String>,
    /// Leave a target this call created in place when the copy fails, as
    /// qemu-img does (the default removes it).
    pub keep_on_error: bool,
    /// `--target-is-zero` (with `-n`): trust that the existing target reads
    /// as zeros, so zero areas are not written.
    pub target_is_zero: bool,
    /// `--salvage`: a failed block-status query counts as data, and a
    /// sector that cannot be read is written as zeros, each with a warning.
    pub salvage: bool,
    /// `-q`: no salvage warnings.
    pub quiet: bool,
    /// `--bitmaps`: copy the (single) source's persistent bitmaps.
    pub bitmaps: bool,
    /// `--skip-broken-bitmaps`: leave out in-use bitmaps, with a warning.
    pub skip_broken_bitmaps: bool,
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
            salvage: false,
            quiet: false,
            out_of_order: false,
            target_cache: CacheMode::Unsafe,
            source_cache: CacheMode::Writeback,
            force_share: false,
            snapshot: None,
            source_key_secret: None,
            target_key_secret: None,
            keep_on_error: false,
            target_is_zero: false,
            bitmaps: false,
            skip_broken_bitmaps: false,
        }
    }
}

/// Copy granularity: big enough to amortise syscalls, small enough to keep
/// memory bounded (one buffer per worker), qemu-img's size.
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
        snapshot: opts.snapshot.clone(),
        key_secret: opts.source_key_secret.clone(),
        ..OpenOptions::default()
    };
    if opts.snapshot.is_some() && srcs.len() > 1 {
        return Err(Error::invalid(
            "No support for concatenating multiple snapshot",
        ));
    }
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

/// qemu-img's checks of `--bitmaps` on the opened sources: a single qcow2
/// source, none of whose bitmaps is inconsistent unless `skip_broken`.
pub fn check_bitmap_sources(images: &[Image], skip_broken: bool) -> Result<()> {
    if images.len() > 1 {
        return Err(Error::invalid(
            "Copying bitmaps only possible with single source",
        ));
    }
    // Only qcow2 stores persistent bitmaps.
    if images.iter().any(|i| i.format() != "qcow2") {
        return Err(Error::unsupported("Source lacks bitmap support"));
    }
    if !skip_broken {
        if let Some(name) = images
            .first()
            .and_then(crate::ops::bitmap::first_inconsistent)
        {
            return Err(Error::invalid(format!(
                "Cannot copy inconsistent bitmap '{name}'\nTry --skip-broken-bitmaps, or use 'qemu-img bitmap --remove' to delete it"
            )));
        }
    }
    Ok(())
}

/// Convert already-opened sources (used by the C ABI and `convert -l`).
pub fn convert_images(
    images: Vec<Image>,
    target: &str,
    opts: &ConvertOptions,
    progress: Option<crate::ops::Progress<'_>>,
) -> Result<()> {
    if opts.skip_broken_bitmaps && !opts.bitmaps {
        return Err(Error::invalid(
            "Use of --skip-broken-bitmaps requires --bitmaps",
        ));
    }
    if opts.bitmaps {
        if opts.out_format != "qcow2" {
            return Err(Error::unsupported(format!(
                "Format driver '{}' does not support bitmaps",
                opts.out_format
            )));
        }
        check_bitmap_sources(&images, opts.skip_broken_bitmaps)?;
    }
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
        if opts.compress && !format::can_compress(&opts.out_format) {
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
    if result.is_err() && created && !opts.keep_on_error {
        let _ = std::fs::remove_file(target);
    }
    result
}

/// What a worker decided for one piece of the target; applied in order.
enum Op {
    /// Write `buf[a..b]` of the chunk's buffer at target offset `off`.
    Data {
        off: u64,
        a: usize,
        b: usize,
    },
    Zero(u64, u64),
    Compressed(u64, Vec<u8>),
}

/// A planned chunk: its data buffer (recycled) and the ops over it.
struct Plan {
    buf: AlignedBuf,
    ops: Vec<Op>,
}

/// Chunk buffers are recycled: a fresh 2 MiB allocation per chunk costs
/// page faults and zeroing, which showed up as sys time against qemu-img.
/// They are page-aligned (see [`AlignedBuf`]).
#[derive(Default)]
struct BufPool(parking_lot::Mutex<Vec<AlignedBuf>>);

impl BufPool {
    fn get(&self, len: usize) -> AlignedBuf {
        let mut b = self.0.lock().pop().unwrap_or_default();
        b.resize(len);
        b
    }
    fn put(&self, b: AlignedBuf) {
        self.0.lock().push(b);
    }
}

/// Shared, read-only state of one conversion.
struct Ctx<'a> {
    sources: &'a [Source],
    out: &'a Image,
    total: u64,
    target_is_zero: bool,
    copy_top_only: bool,
    /// Zero-detection granularity (0: write everything).
    sparse: u64,
    /// Target cluster size when compressing.
    compress: Option<u64>,
    pool: BufPool,
    salvage: bool,
    quiet: bool,
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
        key_secret: opts.target_key_secret.clone().or_else(|| {
            opts.out_options
                .get("encrypt.key-secret")
                .or_else(|| opts.out_options.get("key-secret"))
                .map(str::to_string)
        }),
        ..OpenOptions::default()
    };
    let out = Image::open(target, &oo)?;
    if out.size() < total {
        return Err(Error::invalid("Error: Target image too small"));
    }
    let cluster = out.driver().compression_cluster_size();
    if opts.compress && !out.driver().accepts_compressed_writes() {
        return Err(Error::unsupported(
            "Compression not supported for this file format",
        ));
    }
    // qemu-img copies one target cluster at a time when compressing, so the
    // target must report one that fits its 2 MiB buffer (flat VMDK does not).
    if opts.compress
        && !out
            .driver()
            .info()
            .cluster_size
            .is_some_and(|c| c > 0 && c <= 2 << 20)
    {
        return Err(Error::invalid("invalid cluster size"));
    }
    // Zero runs smaller than the target's allocation unit cannot become
    // holes; detecting them only splits writes.
    let gran = out.driver().compression_cluster_size().unwrap_or(0);
    let ctx = Ctx {
        sources,
        out: &out,
        total,
        // A fresh target without backing reads as zeros already; otherwise
        // zeros must be written explicitly.
        target_is_zero: opts.target_is_zero
            || created
                && out.driver().has_zero_init()
                && out.backing().is_none()
                && opts.backing_file.is_none(),
        copy_top_only: opts.backing_file.is_some(),
        sparse: if opts.sparse_size == 0 {
            0
        } else {
            opts.sparse_size.max(gran)
        },
        compress: if opts.compress { cluster } else { None },
        pool: BufPool::default(),
        salvage: opts.salvage,
        quiet: opts.quiet,
    };
    if opts.salvage {
        // qemu-img walks the source's block status once to count what it
        // will copy; under --salvage that walk warns about failures too.
        for src in sources {
            let size = src.img.size();
            let mut off = 0;
            while off < size {
                let (n, _) = salvaged_status(&src.img, off, size - off, opts.quiet)?;
                off += n;
            }
        }
    }
    let workers = worker_count(opts);
    let ordered = !opts.out_of_order;
    let mut done = 0u64;
    run_pipeline(&ctx, workers, ordered, &mut |n| {
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
    })?;
    if total == 0 {
        if let Some(p) = progress.as_mut() {
            if !p(100.0) {
                return Err(Error::cancelled());
            }
        }
    }
    // After the data, as qemu-img does.
    if opts.bitmaps {
        if let Some(src) = sources.first() {
            crate::ops::bitmap::copy_all(&src.img, &out, opts.skip_broken_bitmaps)?;
        }
    }
    out.close()
}

/// Requests in flight. `-m` (default 8, qemu-img's coroutines) is the
/// bound. Through the page cache every request is a CPU-bound copy, so
/// more threads than cores only contend: on 2 cores, qcow2->raw took
/// 0.59 s with 8 workers, 0.47 s with 4 and 0.35 s with 2 (qemu-img
/// 0.51 s; bench/convert-bench.sh on a quiet machine). When a cache mode
/// waits on the device, the depth pays and all `-m` run. Salvage
/// warnings come out in offset order, as qemu-img's do: one worker.
fn worker_count(opts: &ConvertOptions) -> usize {
    if opts.salvage {
        return 1;
    }
    let waits = |c: CacheMode| {
        matches!(
            c,
            CacheMode::None | CacheMode::Directsync | CacheMode::Writethrough
        )
    };
    let m = opts.num_workers.clamp(1, 16);
    if waits(opts.source_cache) || waits(opts.target_cache) {
        return m;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    m.min(cores.max(2))
}

/// Each worker takes the next chunk, plans it (status, read, zero
/// detection, compression) and writes it itself; when `ordered` (no -W) it
/// waits for its turn so that writes reach the target in guest order (the
/// allocation order then matches qemu-img's). This is qemu-img's scheme (a
/// coroutine per request, in-order writes): no hand-off of every chunk to
/// one writer thread, which on a loaded machine got only a fair share of a
/// core and made us up to 5x slower than qemu-img, while threads that
/// sleep between short bursts are scheduled promptly. This thread reports
/// progress and the first error, in chunk order.
fn run_pipeline(
    ctx: &Ctx<'_>,
    workers: usize,
    ordered: bool,
    report: &mut dyn FnMut(u64) -> Result<()>,
) -> Result<()> {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let nchunks = ctx.total.div_ceil(CHUNK);
    let next = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    // Chunks written so far, in order (ordered mode).
    let turn = parking_lot::Mutex::new(0u64);
    let cv = parking_lot::Condvar::new();
    let halt = || {
        stop.store(true, Ordering::Relaxed);
        // Under the lock: a worker checks `stop` while holding it.
        let _t = turn.lock();
        cv.notify_all();
    };
    std::thread::scope(|scope| -> Result<()> {
        // (chunk, Ok(true): written, Ok(false): abandoned after a stop)
        let (tx, rx) = mpsc::channel::<(u64, Result<bool>)>();
        let mut handles = Vec::with_capacity(workers);
        for _ in 0..workers {
            let tx = tx.clone();
            let (next, stop, turn, cv, halt) = (&next, &stop, &turn, &cv, &halt);
            handles.push(scope.spawn(move || loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= nchunks || stop.load(Ordering::Relaxed) {
                    break;
                }
                let start = k * CHUNK;
                let len = (ctx.total - start).min(CHUNK);
                let r = plan_chunk(ctx, start, len).and_then(|plan| {
                    if !ordered {
                        return apply(ctx, plan).map(|()| true);
                    }
                    {
                        let mut t = turn.lock();
                        while *t != k && !stop.load(Ordering::Relaxed) {
                            cv.wait(&mut t);
                        }
                        if *t != k {
                            return Ok(false);
                        }
                    }
                    apply(ctx, plan)?;
                    *turn.lock() = k + 1;
                    cv.notify_all();
                    Ok(true)
                });
                if r.is_err() {
                    halt();
                }
                if tx.send((k, r)).is_err() {
                    break;
                }
            }));
        }
        drop(tx);
        let result = collect(ctx, &rx, report, &halt);
        // Join each worker: the scope's own wait ends when they signal they
        // are done, joining also reaps them, so none is still exiting when a
        // C caller's process ends (valgrind saw such a thread's TLS as lost).
        for h in handles {
            if let Err(p) = h.join() {
                std::panic::resume_unwind(p);
            }
        }
        result
    })
}

/// Take the workers' results in chunk order, reporting progress; the first
/// error in that order stops everything.
fn collect(
    ctx: &Ctx<'_>,
    rx: &mpsc::Receiver<(u64, Result<bool>)>,
    report: &mut dyn FnMut(u64) -> Result<()>,
    halt: &dyn Fn(),
) -> Result<()> {
    let mut pending = std::collections::BTreeMap::new();
    let mut want = 0u64;
    for (k, r) in rx.iter() {
        pending.insert(k, r);
        while let Some(r) = pending.remove(&want) {
            let len = (ctx.total - want * CHUNK).min(CHUNK);
            want += 1;
            // An abandoned chunk comes after a stop; the error that caused
            // it is reported when its chunk comes up.
            let r = match r {
                Ok(true) => report(len),
                Ok(false) => Ok(()),
                Err(e) => Err(e),
            };
            if let Err(e) = r {
                halt();
                return Err(e);
            }
        }
    }
    Ok(())
}

fn apply(ctx: &Ctx<'_>, plan: Plan) -> Result<()> {
    for op in &plan.ops {
        let (off, r) = match op {
            Op::Data { off, a, b } => (*off, ctx.out.write_at(&plan.buf[*a..*b], *off)),
            Op::Zero(off, len) => (*off, ctx.out.write_zeroes(*off, *len, true)),
            Op::Compressed(off, c) => (*off, ctx.out.driver().write_compressed_raw(c, *off)),
        };
        r.map_err(|e| {
            let m = format!("error while writing at byte {off}: {}", e.message());
            e.with_message(m)
        })?;
    }
    ctx.pool.put(plan.buf);
    Ok(())
}

const SECTOR: u64 = 512;

/// Block status under --salvage, as qemu-img retries it: a failed query is
/// repeated over a quarter of the range until one sector is left, which is
/// then reported and taken as data. Returns (bytes, reads as zero).
fn salvaged_status(img: &Image, off: u64, max: u64, quiet: bool) -> Result<(u64, bool)> {
    let mut sectors = max.div_ceil(SECTOR);
    loop {
        let want = (sectors * SECTOR).min(max);
        match img.block_status(off, want) {
            Ok(e) => return Ok((e.len.clamp(1, want), e.zero)),
            Err(e) if e.kind() == crate::error::ErrorKind::Cancelled => return Err(e),
            Err(e) if sectors <= 1 => {
                if !quiet {
                    crate::events::warning(&format!(
                        "error while reading block status at offset {off}: {}",
                        crate::format::errno_text(&e)
                    ));
                }
                return Ok((SECTOR.min(max), false));
            }
            Err(_) => sectors = sectors.div_ceil(4),
        }
    }
}

/// A read under --salvage: after a failure the range is read sector by
/// sector, and sectors that still fail are reported and read as zeros.
fn salvaged_read(img: &Image, buf: &mut [u8], off: u64, quiet: bool) {
    if img.read_at(buf, off).is_ok() {
        return;
    }
    for (i, s) in buf.chunks_mut(SECTOR as usize).enumerate() {
        let o = off + i as u64 * SECTOR;
        if let Err(e) = img.read_at(s, o) {
            if !quiet {
                crate::events::warning(&format!(
                    "error while reading offset {o}: {}",
                    crate::format::errno_text(&e)
                ));
            }
            s.fill(0);
        }
    }
}

/// qemu-img's wording for a failed block-status query during convert.
fn status_error(e: Error, off: u64) -> Error {
    let m = format!(
        "error while reading block status at offset {off}: {}",
        e.message()
    );
    e.with_message(m)
}

/// qemu-img's wording for a failed source read during convert.
fn read_error(e: Error, off: u64) -> Error {
    let m = format!("error while reading at byte {off}: {}", e.message());
    e.with_message(m)
}

/// Compressed copy of one chunk: block status first (so holes cost
/// nothing, however large the image), then each cluster holding data is
/// compressed on this worker thread.
fn plan_compressed(ctx: &Ctx<'_>, start: u64, mut buf: AlignedBuf, cs: u64) -> Result<Plan> {
    let len = buf.len() as u64;
    let nclusters = len.div_ceil(cs) as usize;
    let mut has_data = vec![false; nclusters];
    let mut pos = start;
    while pos < start + len {
        let Some(src) = ctx.sources.iter().rev().find(|s| s.start <= pos) else {
            break;
        };
        let local = pos - src.start;
        let size = src.img.size();
        let a = (pos - start) as usize;
        if local >= size {
            buf[a..].fill(0);
            break;
        }
        let want = (size - local).min(start + len - pos);
        let e = src
            .img
            .block_status(local, want)
            .map_err(|e| status_error(e, pos))?;
        let b = a + e.len as usize;
        if e.zero {
            buf[a..b].fill(0);
        } else {
            src.img
                .read_at(&mut buf[a..b], local)
                .map_err(|e| read_error(e, pos))?;
            for flag in &mut has_data[a / cs as usize..b.div_ceil(cs as usize)] {
                *flag = true;
            }
        }
        pos += e.len;
    }
    let mut ops = Vec::new();
    for (i, chunk) in buf.chunks(cs as usize).enumerate() {
        let off = start + i as u64 * cs;
        // -S 0 keeps the target fully allocated: zeros are compressed too.
        if ctx.sparse != 0 && (!has_data[i] || is_zero(chunk)) {
            if !ctx.target_is_zero {
                ops.push(Op::Zero(off, chunk.len() as u64));
            }
            continue;
        }
        let a = i * cs as usize;
        match ctx.out.driver().compress_cluster(chunk)? {
            Some(c) => ops.push(Op::Compressed(off, c)),
            None => ops.push(Op::Data {
                off,
                a,
                b: a + chunk.len(),
            }),
        }
    }
    Ok(Plan { buf, ops })
}

/// Decide what target range [start, start+len) needs.
fn plan_chunk(ctx: &Ctx<'_>, start: u64, len: u64) -> Result<Plan> {
    let mut ops = Vec::new();
    let mut buf = ctx.pool.get(len as usize);
    if let Some(cs) = ctx.compress {
        return plan_compressed(ctx, start, buf, cs);
    }
    let end = start + len;
    let mut pos = start;
    while pos < end {
        let Some(src) = ctx.sources.iter().rev().find(|s| s.start <= pos) else {
            break;
        };
        let local = pos - src.start;
        let size = src.img.size();
        if local >= size {
            // Past the last source: nothing (the target was sized to fit).
            break;
        }
        let want = (size - local).min(end - pos);
        let (n, present, zero) = if ctx.copy_top_only {
            let e = src
                .img
                .layer_status(local, want)
                .map_err(|e| status_error(e, pos))?;
            // Unallocated in a source without a backing file reads as zeros
            // (QEMU's block status says ZERO there), so it is written as such.
            (
                e.len.clamp(1, want),
                e.status != format::Status::Unallocated || src.img.backing().is_none(),
                e.status != format::Status::Data,
            )
        } else if ctx.salvage {
            let (n, zero) = salvaged_status(&src.img, local, want, ctx.quiet)?;
            (n, true, zero)
        } else {
            let e = src
                .img
                .block_status(local, want)
                .map_err(|e| status_error(e, pos))?;
            (e.len, true, e.zero)
        };
        if !present {
            // Left to the target's backing file.
        } else if zero && ctx.sparse == 0 {
            // -S 0: a fully allocated target, zeros written as data.
            let a = (pos - start) as usize;
            buf[a..a + n as usize].fill(0);
            ops.push(Op::Data {
                off: pos,
                a,
                b: a + n as usize,
            });
        } else if zero {
            if !ctx.target_is_zero {
                ops.push(Op::Zero(pos, n));
            }
        } else {
            let a = (pos - start) as usize;
            let b = a + n as usize;
            if ctx.salvage {
                salvaged_read(&src.img, &mut buf[a..b], local, ctx.quiet);
            } else {
                src.img
                    .read_at(&mut buf[a..b], local)
                    .map_err(|e| read_error(e, pos))?;
            }
            split_sparse(&mut ops, &buf, a, b, start, ctx.sparse, ctx.target_is_zero);
        }
        pos += n;
    }
    Ok(Plan { buf, ops })
}

/// Turn `buf[a..b]` (target offset `base + a`) into writes, leaving out
/// (or zero-writing) blocks of `sparse` bytes, aligned in target offsets,
/// that hold only zeros.
fn split_sparse(
    ops: &mut Vec<Op>,
    buf: &[u8],
    a: usize,
    b: usize,
    base: u64,
    sparse: u64,
    target_is_zero: bool,
) {
    if sparse == 0 {
        ops.push(Op::Data {
            off: base + a as u64,
            a,
            b,
        });
        return;
    }
    let block_end = |pos: usize| -> usize {
        let g = base + pos as u64;
        let next = (g / sparse + 1) * sparse;
        ((next - base) as usize).min(b)
    };
    let mut pos = a;
    while pos < b {
        let mut end = block_end(pos);
        let zero = is_zero(&buf[pos..end]);
        while end < b {
            let next = block_end(end);
            if is_zero(&buf[end..next]) != zero {
                break;
            }
            end = next;
        }
        if !zero {
            ops.push(Op::Data {
                off: base + pos as u64,
                a: pos,
                b: end,
            });
        } else if !target_is_zero {
            ops.push(Op::Zero(base + pos as u64, (end - pos) as u64));
        }
        pos = end;
    }
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
