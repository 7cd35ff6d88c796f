//! `compare [--image-opts | [-f FMT] [-F FMT]] [-s] [-T CACHE] [-p] [-q]
//! [-U] [--object OBJDEF] FILENAME1 FILENAME2`
//!
//! Exit codes as qemu-img: 0 identical, 1 different, 2 open error,
//! 3 block status error, 4 read error.

use std::io::IsTerminal;

use imgtool::io::CacheMode;
use imgtool::ops::compare::{compare, CompareEvent, CompareOptions};
use imgtool::OpenOptions;

use crate::app::{out, CmdResult, Fail, Prog};
use crate::common::{ch, parse_object, ImageSpec, OPT_IMAGE_OPTS, OPT_OBJECT};
use crate::getopt::{Getopt, HasArg::*, LongOpt};
use crate::progress::Progress;

/// qemu-img 10.0.2's table for `compare`, in its order.
const LONGS: &[LongOpt] = &[
    LongOpt::new("help", No, ch('h')),
    LongOpt::new("quiet", No, ch('q')),
    LongOpt::new("progress", No, ch('p')),
    LongOpt::new("a-format", Required, ch('f')),
    LongOpt::new("b-format", Required, ch('F')),
    LongOpt::new("image-opts", No, OPT_IMAGE_OPTS),
    LongOpt::new("strict", No, ch('s')),
    LongOpt::new("cache", Required, ch('T')),
    LongOpt::new("force-share", No, ch('U')),
    LongOpt::new("object", Required, OPT_OBJECT),
];

#[derive(Debug)]
struct Args {
    fmt1: Option<String>,
    fmt2: Option<String>,
    cache: String,
    progress: bool,
    quiet: bool,
    strict: bool,
    force_share: bool,
    image_opts: bool,
    files: Vec<String>,
}

/// Report `f` and exit with `code` (compare's errors are not exit 1).
fn with_code(prog: &Prog, f: Fail, code: i32) -> Fail {
    match f {
        Fail::Report(m) => {
            prog.error(&m);
            Fail::Exit(code)
        }
        other => other,
    }
}

fn parse(prog: &Prog, args: Vec<String>) -> Result<Args, Fail> {
    let mut a = Args {
        fmt1: None,
        fmt2: None,
        cache: "writeback".into(),
        progress: false,
        quiet: false,
        strict: false,
        force_share: false,
        image_opts: false,
        files: Vec::new(),
    };
    let mut g = Getopt::new(&prog.argv0, args, "hf:F:T:pqsU", LONGS);
    for o in g.by_ref() {
        let o = o.map_err(Fail::Getopt)?;
        let arg = o.arg.unwrap_or_default();
        match o.val {
            v if v == ch('h') => {
                crate::help::print_command(prog, "compare");
                return Err(Fail::Exit(0));
            }
            v if v == ch('f') => a.fmt1 = Some(arg),
            v if v == ch('F') => a.fmt2 = Some(arg),
            v if v == ch('T') => a.cache = arg,
            v if v == ch('p') => a.progress = true,
            v if v == ch('q') => a.quiet = true,
            v if v == ch('s') => a.strict = true,
            v if v == ch('U') => a.force_share = true,
            OPT_OBJECT => parse_object(&arg).map_err(|f| with_code(prog, f, 2))?,
            OPT_IMAGE_OPTS => a.image_opts = true,
            _ => {}
        }
    }
    if a.quiet {
        a.progress = false;
    }
    a.files = g.operands();
    if a.files.len() != 2 {
        return Err(Fail::Usage("Expecting two image file names".into()));
    }
    Ok(a)
}

pub fn run(prog: &Prog, args: Vec<String>) -> CmdResult {
    let a = parse(prog, args)?;
    let opened = open_both(&a).map_err(|f| with_code(prog, f, 2));
    let (img1, img2) = match opened {
        Ok(p) => p,
        Err(f) => {
            if a.progress {
                out("\n");
            }
            return Err(f);
        }
    };
    let mut progress = Progress::start(a.progress, 2.0);
    let quiet = a.quiet;
    // qemu-img's stdout is fully buffered on a pipe, so there the warning
    // comes out after any error printed on stderr meanwhile (with -p it
    // stays among the progress lines, as there).
    let defer = !a.progress && !std::io::stdout().is_terminal();
    let mut mismatch = false;
    let mut on_event = |e: CompareEvent| match e {
        CompareEvent::Progress(p) => progress.set(p),
        CompareEvent::SizeMismatch if !quiet && defer => mismatch = true,
        CompareEvent::SizeMismatch if !quiet => out("Warning: Image size mismatch!\n"),
        CompareEvent::SizeMismatch => {}
    };
    let opts = CompareOptions { strict: a.strict };
    let r = compare(&img1, &img2, opts, &mut on_event);
    let warn = || {
        if mismatch {
            out("Warning: Image size mismatch!\n");
        }
    };
    let code = match r {
        Ok(report) => {
            warn();
            if !quiet {
                out(&report.verdict.message());
            }
            report.verdict.exit_code()
        }
        Err(e) => {
            prog.error(&e.message(&a.files[0], &a.files[1]));
            warn();
            e.exit_code()
        }
    };
    progress.end();
    match code {
        0 => Ok(()),
        c => Err(Fail::Exit(c)),
    }
}

/// The library's host I/O cannot yet do O_DIRECT with unaligned buffers
/// (QEMU bounces them), and the cache mode does not change what compare
/// reads; so the direct modes read through the page cache for now.
fn readable_cache(mode: CacheMode) -> CacheMode {
    match mode {
        CacheMode::None | CacheMode::Directsync => CacheMode::Writeback,
        m => m,
    }
}

fn open_both(a: &Args) -> Result<(imgtool::Image, imgtool::Image), Fail> {
    let cache = CacheMode::parse(&a.cache)
        .map_err(|_| Fail::Report(format!("Invalid source cache option: {}", a.cache)))?;
    let oo = OpenOptions {
        cache: readable_cache(cache),
        force_share: a.force_share,
        ..OpenOptions::default()
    };
    let spec1 = ImageSpec::parse(&a.files[0], a.image_opts, a.fmt1.as_deref())?;
    let img1 = spec1.open(&oo)?;
    let spec2 = ImageSpec::parse(&a.files[1], a.image_opts, a.fmt2.as_deref())?;
    let img2 = spec2.open(&oo)?;
    Ok((img1, img2))
}
