//! `convert [-f SRC_FMT|--image-opts] [-T SRC_CACHE] [-O FMT] [-o OPTS]
//! [-t CACHE] [-n] [-B BACKING [-F BACKING_FMT]] [-c] [-p] [-q] [-S SIZE]
//! [-m N] [-W] [-U] [-C] [-r RATE] [-l SNAPSHOT] SRC... TGT`
//!
//! Option checks run in img_convert's order so the first error is the one
//! qemu-img reports; the copy itself is `imgtool::ops::convert`.

use imgtool::format::CreateOptions;
use imgtool::io::CacheMode;
use imgtool::ops::convert::{convert_images, ConvertOptions};
use imgtool::ops::create::{create, CreateRequest};
use imgtool::{Image, OpenOptions};

use crate::app::{CmdResult, Fail, Prog};
use crate::common::{ch, parse_object, ImageSpec, OPT_IMAGE_OPTS, OPT_OBJECT};
use crate::copy_steps::{self, Walk};
use crate::createopts;
use crate::getopt::{Getopt, HasArg::*, LongOpt};
use crate::num::{cvtnum, strtol, NumError};
use crate::progress::Progress;

const OPT_TARGET_IMAGE_OPTS: i32 = 263;
const OPT_SALVAGE: i32 = 267;
const OPT_TARGET_IS_ZERO: i32 = 268;
const OPT_BITMAPS: i32 = 275;
const OPT_SKIP_BROKEN: i32 = 277;

/// qemu-img 10.0.2's table for `convert`, in its order.
const LONGS: &[LongOpt] = &[
    LongOpt::new("help", No, ch('h')),
    LongOpt::new("quiet", No, ch('q')),
    LongOpt::new("object", Required, OPT_OBJECT),
    LongOpt::new("image-opts", No, OPT_IMAGE_OPTS),
    LongOpt::new("source-image-opts", No, OPT_IMAGE_OPTS),
    LongOpt::new("source-format", Required, ch('f')),
    LongOpt::new("source-cache", Required, ch('T')),
    LongOpt::new("snapshot", Required, ch('l')),
    LongOpt::new("sparse-size", Required, ch('S')),
    LongOpt::new("output-format", Required, ch('O')),
    LongOpt::new("options", Required, ch('o')),
    LongOpt::new("output-cache", Required, ch('t')),
    LongOpt::new("backing", Required, ch('B')),
    LongOpt::new("backing-format", Required, ch('F')),
    LongOpt::new("force-share", No, ch('U')),
    LongOpt::new("target-image-opts", No, OPT_TARGET_IMAGE_OPTS),
    LongOpt::new("salvage", No, OPT_SALVAGE),
    LongOpt::new("target-is-zero", No, OPT_TARGET_IS_ZERO),
    LongOpt::new("bitmaps", No, OPT_BITMAPS),
    LongOpt::new("skip-broken-bitmaps", No, OPT_SKIP_BROKEN),
    LongOpt::new("rate", Required, ch('r')),
    LongOpt::new("parallel", Required, ch('m')),
    LongOpt::new("oob-writes", No, ch('W')),
    LongOpt::new("copy-range-offloading", No, ch('C')),
];

/// Sparse detection limit: MAX_BUF_SECTORS (32768) sectors of 512 bytes.
const MAX_SPARSE: u64 = 16 << 20;
const MAX_COROUTINES: i64 = 16;

#[derive(Debug, Clone)]
enum Snapshot {
    /// `-l snapshot.id=ID,snapshot.name=NAME`
    Opts,
    /// `-l ID_OR_NAME`
    Name,
}

#[derive(Debug)]
struct Args {
    src_fmt: Option<String>,
    out_fmt: Option<String>,
    backing: Option<String>,
    backing_fmt: Option<String>,
    options: Option<String>,
    snapshot: Option<(Snapshot, String)>,
    sparse: Option<u64>,
    progress: bool,
    quiet: bool,
    skip_create: bool,
    workers: usize,
    out_of_order: bool,
    force_share: bool,
    image_opts: bool,
    tgt_image_opts: bool,
    copy_range: bool,
    compress: bool,
    salvage: bool,
    target_is_zero: bool,
    bitmaps: bool,
    skip_broken: bool,
    cache: String,
    src_cache: String,
    operands: Vec<String>,
}

impl Default for Args {
    fn default() -> Self {
        Args {
            src_fmt: None,
            out_fmt: None,
            backing: None,
            backing_fmt: None,
            options: None,
            snapshot: None,
            sparse: None,
            progress: false,
            quiet: false,
            skip_create: false,
            workers: 8,
            out_of_order: false,
            force_share: false,
            image_opts: false,
            tgt_image_opts: false,
            copy_range: false,
            compress: false,
            salvage: false,
            target_is_zero: false,
            bitmaps: false,
            skip_broken: false,
            cache: "unsafe".into(),
            src_cache: "writeback".into(),
            operands: Vec::new(),
        }
    }
}

fn parse(prog: &Prog, args: Vec<String>) -> Result<Args, Fail> {
    let mut a = Args::default();
    let mut g = Getopt::new(&prog.argv0, args, "hf:O:B:CcF:o:l:S:pt:T:qnm:WUr:", LONGS);
    for o in g.by_ref() {
        let o = o.map_err(Fail::Getopt)?;
        let arg = o.arg.unwrap_or_default();
        match o.val {
            v if v == ch('h') => {
                crate::help::print_command(prog, "convert");
                return Err(Fail::Exit(0));
            }
            v if v == ch('o') => createopts::accumulate(&mut a.options, &arg)?,
            v if v == ch('l') => a.snapshot = Some((parse_snapshot(prog, &arg)?, arg)),
            v if v == ch('S') => a.sparse = Some(parse_sparse(&arg)?),
            v if v == ch('m') => a.workers = parse_workers(&arg)?,
            v if v == ch('r') => {
                // Accepted and checked; the library copies without a limit.
                cvtnum("rate limit", &arg)?;
            }
            OPT_OBJECT => parse_object(&arg)?,
            v => set_simple(&mut a, v, arg),
        }
    }
    a.operands = g.operands();
    Ok(a)
}

/// Options that only record their value.
fn set_simple(a: &mut Args, v: i32, arg: String) {
    match char::from_u32(v as u32).unwrap_or('\0') {
        'f' => a.src_fmt = Some(arg),
        'O' => a.out_fmt = Some(arg),
        'B' => a.backing = Some(arg),
        'F' => a.backing_fmt = Some(arg),
        'C' => a.copy_range = true,
        'c' => a.compress = true,
        'p' => a.progress = true,
        't' => a.cache = arg,
        'T' => a.src_cache = arg,
        'q' => a.quiet = true,
        'n' => a.skip_create = true,
        'W' => a.out_of_order = true,
        'U' => a.force_share = true,
        _ => match v {
            OPT_IMAGE_OPTS => a.image_opts = true,
            OPT_TARGET_IMAGE_OPTS => a.tgt_image_opts = true,
            OPT_SALVAGE => a.salvage = true,
            OPT_TARGET_IS_ZERO => a.target_is_zero = true,
            OPT_BITMAPS => a.bitmaps = true,
            OPT_SKIP_BROKEN => a.skip_broken = true,
            _ => {}
        },
    }
}

fn parse_snapshot(prog: &Prog, arg: &str) -> Result<Snapshot, Fail> {
    if !arg.starts_with("snapshot.") {
        return Ok(Snapshot::Name);
    }
    let opts = CreateOptions::parse(arg).map_err(Fail::from)?;
    if let Some((k, _)) = opts
        .items()
        .iter()
        .find(|(k, _)| k != "snapshot.id" && k != "snapshot.name")
    {
        prog.error(&format!("Invalid parameter '{k}'"));
        return Err(Fail::Report(format!(
            "Failed in parsing snapshot param '{arg}'"
        )));
    }
    Ok(Snapshot::Opts)
}

fn parse_sparse(arg: &str) -> Result<u64, Fail> {
    let v = cvtnum("buffer size for sparse output", arg)?;
    if !v.is_multiple_of(512) || v > MAX_SPARSE {
        return Err(Fail::Report(format!(
            "Invalid buffer size for sparse output specified. Valid sizes are multiples of 512 up to {MAX_SPARSE}. Select 0 to disable sparse detection (fully allocates output)."
        )));
    }
    Ok(v)
}

fn parse_workers(arg: &str) -> Result<usize, Fail> {
    match strtol(arg) {
        Err(NumError::Invalid) => Err(Fail::Report(format!(
            "Invalid number of coroutines specified: '{arg}'."
        ))),
        Ok(n) if (1..=MAX_COROUTINES).contains(&n) => Ok(n as usize),
        _ => Err(Fail::Report(format!(
            "Invalid number of coroutines specified. Must be between 1 and {MAX_COROUTINES}."
        ))),
    }
}

/// Combinations img_convert rejects right after option parsing.
fn check_combinations(a: &Args) -> CmdResult {
    let rules: [(bool, &str); 7] = [
        (
            a.skip_broken && !a.bitmaps,
            "Use of --skip-broken-bitmaps requires --bitmaps",
        ),
        (
            a.compress && a.copy_range,
            "Cannot enable copy offloading when -c is used",
        ),
        (
            a.sparse.is_some() && a.copy_range,
            "Cannot enable copy offloading when -S is used",
        ),
        (
            a.copy_range && a.salvage,
            "Cannot use copy offloading in salvaging mode",
        ),
        (
            a.tgt_image_opts && !a.skip_create,
            "--target-image-opts requires use of -n flag",
        ),
        (
            a.skip_create && a.options.is_some(),
            "-o has no effect when skipping image creation",
        ),
        (
            a.target_is_zero && !a.skip_create,
            "--target-is-zero requires use of -n flag",
        ),
    ];
    match rules.iter().find(|(bad, _)| *bad) {
        Some((_, msg)) => Err(Fail::report(*msg)),
        None => Ok(()),
    }
}

pub fn run(prog: &Prog, args: Vec<String>) -> CmdResult {
    let mut a = parse(prog, args)?;
    if a.out_fmt.is_none() && !a.tgt_image_opts {
        a.out_fmt = Some("raw".into());
    }
    check_combinations(&a)?;
    let (srcs, target) = match a.operands.split_last() {
        Some((t, s)) if !s.is_empty() => (s.to_vec(), Some(t.clone())),
        _ => (Vec::new(), None),
    };
    if a.options.as_deref().is_some_and(createopts::wants_help) {
        return match &a.out_fmt {
            Some(f) => createopts::print_help(f, target.as_deref()),
            None => Err(Fail::report("Option help requires a format be specified")),
        };
    }
    let Some(target) = target else {
        return Err(Fail::report("Must specify image file name"));
    };
    let src_cache = CacheMode::parse(&a.src_cache)
        .map_err(|_| Fail::Report(format!("Invalid source cache option: {}", a.src_cache)))?;
    let mut progress = Progress::start(a.progress && !a.quiet, 1.0);
    let r = convert(&a, &srcs, &target, src_cache, &mut progress);
    if r.is_ok() {
        progress.complete();
    }
    progress.end();
    r
}

fn open_sources(a: &Args, srcs: &[String], cache: CacheMode) -> Result<Vec<Image>, Fail> {
    let oo = OpenOptions {
        cache,
        force_share: a.force_share,
        ..OpenOptions::default()
    };
    srcs.iter()
        .map(|s| ImageSpec::parse(s, a.image_opts, a.src_fmt.as_deref())?.open(&oo))
        .collect()
}

/// What the target will be: its creation options (None with -n) and the
/// backing file and format it gets.
struct TargetPlan {
    create: Option<CreateOptions>,
    backing: Option<String>,
    backing_fmt: Option<String>,
}

fn plan_target(a: &Args, target: &str, out_fmt: &str) -> Result<TargetPlan, Fail> {
    let create = if a.skip_create {
        None
    } else {
        // img_convert looks up the target's protocol before its options;
        // the error has no file name prefix.
        if imgtool::format::is_known(out_fmt) {
            if let Some(m) = crate::common::unknown_protocol(target) {
                return Err(Fail::Report(m));
            }
        }
        Some(target_options(a, out_fmt)?)
    };
    let from_opts = |k: &str| create.as_ref().and_then(|o| o.get(k).map(str::to_string));
    Ok(TargetPlan {
        backing: from_opts("backing_file").or_else(|| a.backing.clone()),
        backing_fmt: from_opts("backing_fmt").or_else(|| a.backing_fmt.clone()),
        create,
    })
}

fn convert(
    a: &Args,
    srcs: &[String],
    target: &str,
    src_cache: CacheMode,
    progress: &mut Progress,
) -> CmdResult {
    let mut images = open_sources(a, srcs, src_cache)?;
    load_snapshot(a, srcs, src_cache, &mut images)?;
    let total = images
        .iter()
        .try_fold(0u64, |t, i| t.checked_add(i.size()))
        .ok_or_else(|| Fail::report("Total image size too large"))?;
    let out_fmt = a.out_fmt.clone().unwrap_or_else(|| "raw".into());
    let tp = plan_target(a, target, &out_fmt)?;
    check_target(
        a,
        &images,
        tp.backing.is_some(),
        tp.create.as_ref(),
        &out_fmt,
    )?;
    if let Some(o) = &tp.create {
        create_target(target, &out_fmt, o, total)?;
    }
    let target_cache = CacheMode::parse(&a.cache)
        .map_err(|_| Fail::Report(format!("Invalid cache option: {}", a.cache)))?;
    let target_spec = ImageSpec::parse(target, a.tgt_image_opts, a.out_fmt.as_deref())?;
    if a.skip_create {
        check_existing_target(&target_spec, target_cache, total)?;
    }
    if a.bitmaps && target_spec.format.as_deref() != Some("qcow2") {
        return Err(Fail::Report(format!(
            "Format driver '{}' does not support bitmaps",
            target_spec.format.as_deref().unwrap_or("raw")
        )));
    }
    // qcow2's default cluster size when -o does not set one.
    let cluster = tp
        .create
        .as_ref()
        .and_then(|o| o.get_size("cluster_size").ok().flatten())
        .unwrap_or(65536);
    // The library creates the target again itself: only a target it
    // created is known to read as zeros, which keeps the copy sparse
    // (see create_target).
    let opts = ConvertOptions {
        src_format: a.src_fmt.clone(),
        out_format: target_spec.format.clone().unwrap_or(out_fmt),
        out_options: tp
            .create
            .map(|mut o| {
                o.remove("backing_file");
                o.remove("backing_fmt");
                o
            })
            .unwrap_or_default(),
        compress: a.compress,
        sparse_size: a.sparse.unwrap_or(4096),
        backing_file: tp.backing,
        backing_format: tp.backing_fmt,
        skip_create: a.skip_create,
        num_workers: a.workers,
        out_of_order: a.out_of_order,
        target_cache,
        source_cache: src_cache,
        force_share: a.force_share,
        snapshot: a.snapshot.as_ref().map(|(_, p)| p.clone()),
        // The sources are opened above, each with its own secret.
        source_key_secret: None,
        target_key_secret: target_spec.key_secret.clone(),
        // qemu-img leaves a target it failed to fill (a vmdk's extent
        // files included).
        keep_on_error: true,
        target_is_zero: a.target_is_zero,
        salvage: a.salvage,
        quiet: a.quiet,
        bitmaps: a.bitmaps,
        skip_broken_bitmaps: a.skip_broken,
    };
    if progress.is_enabled() {
        let walk = Walk {
            top_only: opts.backing_file.is_some(),
            write_zeroes: opts.sparse_size == 0,
            compress_cluster: a.compress.then_some(cluster),
        };
        progress.use_steps(copy_steps::steps(&images, &walk));
    }
    let mut cb = |pct: f64| {
        progress.reached((pct / 100.0 * total as f64) as u64);
        true
    };
    convert_images(images, &target_spec.filename, &opts, Some(&mut cb)).map_err(Fail::from)?;
    if opts.compress && opts.out_format == "qcow" {
        // qemu-img ends a compressed copy with an empty compressed write
        // ("EOF"), which QEMU's qcow driver refuses with EINVAL; qemu-img
        // then exits 1 without a message, the image being complete.
        return Err(Fail::Exit(1));
    }
    Ok(())
}

/// `-l`: reopen the (single) source on the internal snapshot.
fn load_snapshot(a: &Args, srcs: &[String], cache: CacheMode, images: &mut [Image]) -> CmdResult {
    let Some((kind, param)) = &a.snapshot else {
        return Ok(());
    };
    if matches!(kind, Snapshot::Name) && images.len() > 1 {
        return Err(Fail::report(
            "No support for concatenating multiple snapshot",
        ));
    }
    let (Some(src), Some(first)) = (srcs.first(), images.first()) else {
        return Ok(());
    };
    let fmt = first.format();
    if fmt != "qcow2" {
        return Err(Fail::Report(format!(
            "Failed to load snapshot: Block format '{fmt}' used by device '' does not support temporarily loading internal snapshots"
        )));
    }
    let spec = ImageSpec::parse(src, a.image_opts, a.src_fmt.as_deref())?;
    let open = |which: &str| {
        let oo = OpenOptions {
            cache,
            force_share: a.force_share,
            snapshot: Some(which.to_string()),
            ..OpenOptions::default()
        };
        Image::open(&spec.filename, &oo)
    };
    // A library that ignores OpenOptions::snapshot would silently copy the
    // active layer; a snapshot that cannot exist tells us which we have.
    if open("\u{1}imgtool-probe").is_ok() {
        return Err(Fail::report(
            "Failed to load snapshot: internal snapshots cannot be loaded by this libimgtool",
        ));
    }
    let img = open(param).map_err(|e| {
        let m = e.message();
        let prefix = format!("Could not open '{}': ", spec.filename);
        let m = m.strip_prefix(&prefix).unwrap_or(m);
        let inner = m
            .split_once("Failed to load snapshot: ")
            .map_or(m, |(_, r)| r);
        Fail::Report(format!("Failed to load snapshot: {inner}"))
    })?;
    images[0] = img;
    Ok(())
}

/// The target's creation options: `-o`, then `-B`/`-F`.
fn target_options(a: &Args, fmt: &str) -> Result<CreateOptions, Fail> {
    let mut o = createopts::parse_for_format(fmt, a.options.as_deref())?;
    o.remove("size");
    createopts::add_backing(&mut o, fmt, a.backing.as_deref(), a.backing_fmt.as_deref())?;
    Ok(o)
}

/// Checks on the target made before it is created.
fn check_target(
    a: &Args,
    images: &[Image],
    has_backing: bool,
    opts: Option<&CreateOptions>,
    fmt: &str,
) -> CmdResult {
    if a.target_is_zero && has_backing {
        // qemu-img jumps out here with ret still 0: it exits successfully.
        return Err(Fail::ReportCode(
            "Cannot use --target-is-zero when the destination image has a backing file".into(),
            0,
        ));
    }
    if images.len() > 1 && has_backing {
        return Err(Fail::report(
            "Having a backing file for the target makes no sense when concatenating multiple input images",
        ));
    }
    if let Some(o) = opts {
        if o.get("backing_file").is_some() && o.get("backing_fmt").is_none() {
            return Err(Fail::report(
                "Use of backing file requires explicit backing format",
            ));
        }
    }
    if a.compress {
        check_compress(opts, fmt, a.skip_create)?;
    }
    if a.bitmaps {
        imgtool::ops::convert::check_bitmap_sources(images, a.skip_broken)?;
    }
    Ok(())
}

fn check_compress(opts: Option<&CreateOptions>, fmt: &str, skip_create: bool) -> CmdResult {
    if !skip_create && !imgtool::format::can_compress(fmt) {
        return Err(Fail::report(
            "Compression not supported for this file format",
        ));
    }
    let Some(o) = opts else {
        return Ok(());
    };
    if o.get_bool("encryption", false).unwrap_or(false) || o.get("encrypt.format").is_some() {
        return Err(Fail::report(
            "Compression and encryption not supported at the same time",
        ));
    }
    if o.get("preallocation").is_some_and(|p| p != "off") {
        return Err(Fail::report(
            "Compression and preallocation not supported at the same time",
        ));
    }
    Ok(())
}

/// Block drivers QEMU 10.0.2 knows besides ours (the BlockdevDriver enum),
/// which its drivers accept as a backing format without opening it.
const QEMU_ONLY_DRIVERS: &[&str] = &[
    "blkdebug",
    "blklogwrites",
    "blkreplay",
    "blkverify",
    "bochs",
    "cloop",
    "compress",
    "copy-before-write",
    "copy-on-read",
    "dmg",
    "file",
    "ftp",
    "ftps",
    "gluster",
    "host_cdrom",
    "host_device",
    "http",
    "https",
    "io_uring",
    "iscsi",
    "nbd",
    "nfs",
    "null-aio",
    "null-co",
    "nvme",
    "nvme-io_uring",
    "parallels",
    "preallocate",
    "quorum",
    "rbd",
    "replication",
    "snapshot-access",
    "ssh",
    "throttle",
    "vvfat",
    "virtio-blk-vfio-pci",
    "virtio-blk-vhost-user",
    "virtio-blk-vhost-vdpa",
];

/// convert creates its target without opening the backing file, so an
/// unknown backing format is refused by the target's driver, in its words.
fn check_backing_fmt(target: &str, fmt: &str, o: &CreateOptions) -> CmdResult {
    let Some(bf) = o.get("backing_fmt") else {
        return Ok(());
    };
    let msg = match fmt {
        "vmdk" if bf != "vmdk" => "backing_file must be a vmdk image".to_string(),
        _ if imgtool::format::is_known(bf) || QEMU_ONLY_DRIVERS.contains(&bf) => return Ok(()),
        "qcow2" | "qed" => {
            if fmt == "qed" {
                // QED's file exists by the time its options are checked.
                let _ = std::fs::File::create(target);
            }
            format!("Parameter 'backing-fmt' does not accept value '{bf}'")
        }
        "qcow" => format!("unrecognized backing format '{bf}'"),
        _ => return Ok(()),
    };
    Err(Fail::Report(format!(
        "{target}: error while converting {fmt}: {msg}"
    )))
}

/// Create the target (bdrv_create) so creation errors get qemu-img's
/// prefix and happen where qemu-img has them. The library recreates it
/// for the copy, because ConvertOptions cannot say "target reads as
/// zeros" (see the report); full preallocation is left to that second
/// creation so it is paid once.
fn create_target(target: &str, fmt: &str, o: &CreateOptions, total: u64) -> CmdResult {
    check_backing_fmt(target, fmt, o)?;
    let mut options = o.clone();
    if options.get("preallocation") == Some("full") {
        options.remove("preallocation");
    }
    let req = CreateRequest {
        format: fmt.to_string(),
        filename: target.to_string(),
        size: Some(total),
        options,
        unsafe_backing: false,
    };
    create(&req).map(|_| ()).map_err(|e| {
        Fail::Report(format!(
            "{target}: error while converting {fmt}: {}",
            e.message()
        ))
    })
}

/// `-n`: the target must exist and be large enough.
fn check_existing_target(spec: &ImageSpec, cache: CacheMode, total: u64) -> CmdResult {
    let oo = OpenOptions {
        cache,
        force_share: true,
        no_backing: true,
        ..OpenOptions::default()
    };
    let img = spec.open(&oo)?;
    if img.size() < total {
        return Err(Fail::report("output file is smaller than input file"));
    }
    Ok(())
}
