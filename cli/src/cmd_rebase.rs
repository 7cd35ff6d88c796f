//! `rebase [-f FMT | --image-opts] [-t CACHE] [-q] [-U] [-p]
//! [-b BACKING_FILENAME [-F BACKING_FMT] [-T BACKING_CACHE]] [-u]
//! [--object OBJDEF] [-c] FILENAME`

use imgtool::io::CacheMode;
use imgtool::ops::rebase::{self, RebaseOptions};
use imgtool::OpenOptions;

use crate::app::{CmdResult, Fail, Prog};
use crate::cmd_resize::warn_if_probed_raw;
use crate::common::{ch, parse_object, ImageSpec, OPT_IMAGE_OPTS, OPT_OBJECT};
use crate::getopt::{Getopt, HasArg::*, LongOpt};
use crate::progress::Progress;

/// qemu-img 10.0.2's table for `rebase`, in its order (ambiguity messages
/// list candidates in this order).
const LONGS: &[LongOpt] = &[
    LongOpt::new("help", No, ch('h')),
    LongOpt::new("quiet", No, ch('q')),
    LongOpt::new("progress", No, ch('p')),
    LongOpt::new("object", Required, OPT_OBJECT),
    LongOpt::new("image-opts", No, OPT_IMAGE_OPTS),
    LongOpt::new("force-share", No, ch('U')),
    LongOpt::new("format", Required, ch('f')),
    LongOpt::new("cache", Required, ch('t')),
    LongOpt::new("compress", No, ch('c')),
    LongOpt::new("backing", Required, ch('b')),
    LongOpt::new("backing-format", Required, ch('F')),
    LongOpt::new("backing-cache", Required, ch('T')),
    LongOpt::new("backing-unsafe", No, ch('u')),
];

#[derive(Debug)]
struct Args {
    format: Option<String>,
    image_opts: bool,
    quiet: bool,
    progress: bool,
    force_share: bool,
    compress: bool,
    unsafe_mode: bool,
    backing: Option<String>,
    backing_fmt: Option<String>,
    cache: String,
    src_cache: String,
    operands: Vec<String>,
}

fn parse(prog: &Prog, args: Vec<String>) -> Result<Args, Fail> {
    let mut a = Args {
        format: None,
        image_opts: false,
        quiet: false,
        progress: false,
        force_share: false,
        compress: false,
        unsafe_mode: false,
        backing: None,
        backing_fmt: None,
        cache: "writeback".into(),
        src_cache: "writeback".into(),
        operands: Vec::new(),
    };
    let mut g = Getopt::new(&prog.argv0, args, "hf:F:b:upt:T:qUc", LONGS);
    for o in g.by_ref() {
        let o = o.map_err(Fail::Getopt)?;
        let arg = o.arg.unwrap_or_default();
        match o.val {
            v if v == ch('h') => {
                crate::help::print_command(prog, "rebase");
                return Err(Fail::Exit(0));
            }
            v if v == ch('f') => a.format = Some(arg),
            v if v == ch('F') => a.backing_fmt = Some(arg),
            v if v == ch('b') => a.backing = Some(arg),
            v if v == ch('u') => a.unsafe_mode = true,
            v if v == ch('p') => a.progress = true,
            v if v == ch('t') => a.cache = arg,
            v if v == ch('T') => a.src_cache = arg,
            v if v == ch('q') => a.quiet = true,
            v if v == ch('U') => a.force_share = true,
            v if v == ch('c') => a.compress = true,
            OPT_OBJECT => parse_object(&arg)?,
            OPT_IMAGE_OPTS => a.image_opts = true,
            _ => {}
        }
    }
    a.operands = g.operands();
    Ok(a)
}

pub fn run(prog: &Prog, args: Vec<String>) -> CmdResult {
    let a = parse(prog, args)?;
    if a.operands.len() != 1 {
        return Err(Fail::Usage("Expecting one image file name".into()));
    }
    if !a.unsafe_mode && a.backing.is_none() {
        return Err(Fail::Usage(
            "Must specify backing file (-b) or use unsafe mode (-u)".into(),
        ));
    }
    let mut progress = Progress::start(a.progress && !a.quiet, 2.0);
    let r = rebase(&a, &mut progress);
    progress.end();
    r
}

fn rebase(a: &Args, progress: &mut Progress) -> CmdResult {
    let cache = CacheMode::parse(&a.cache)
        .map_err(|_| Fail::Report(format!("Invalid cache option: {}", a.cache)))?;
    let src_cache = CacheMode::parse(&a.src_cache)
        .map_err(|_| Fail::Report(format!("Invalid source cache option: {}", a.src_cache)))?;
    let spec = ImageSpec::parse(&a.operands[0], a.image_opts, a.format.as_deref())?;
    let img = spec.open(&OpenOptions {
        writable: true,
        cache,
        no_backing: a.unsafe_mode,
        ..OpenOptions::default()
    })?;
    warn_if_probed_raw(&img);
    let opts = RebaseOptions {
        backing: a.backing.clone(),
        backing_format: a.backing_fmt.clone(),
        unsafe_mode: a.unsafe_mode,
        compress: a.compress,
        force_share: a.force_share,
        backing_cache: src_cache,
    };
    let mut cb = |pct: f64| {
        progress.set(pct as f32);
        true
    };
    rebase::rebase(img, &opts, Some(&mut cb)).map_err(Fail::from)
}
