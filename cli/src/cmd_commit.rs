//! `commit [-f FMT | --image-opts] [-t CACHE_MODE] [-b BASE_IMG] [-d]
//! [-r RATE] [-p] [-q] [--object OBJDEF] FILENAME`

use imgtool::io::CacheMode;
use imgtool::ops::commit::{self, CommitOptions};
use imgtool::OpenOptions;

use crate::app::{out, CmdResult, Fail, Prog};
use crate::cmd_resize::warn_if_probed_raw;
use crate::common::{ch, parse_object, ImageSpec, OPT_IMAGE_OPTS, OPT_OBJECT};
use crate::getopt::{Getopt, HasArg::*, LongOpt};
use crate::num::cvtnum;
use crate::progress::Progress;

/// qemu-img 10.0.2's table for `commit`.
const LONGS: &[LongOpt] = &[
    LongOpt::new("help", No, ch('h')),
    LongOpt::new("quiet", No, ch('q')),
    LongOpt::new("object", Required, OPT_OBJECT),
    LongOpt::new("image-opts", No, OPT_IMAGE_OPTS),
    LongOpt::new("format", Required, ch('f')),
    LongOpt::new("cache", Required, ch('t')),
    LongOpt::new("drop", No, ch('d')),
    LongOpt::new("base", Required, ch('b')),
    LongOpt::new("rate", Required, ch('r')),
    LongOpt::new("progress", No, ch('p')),
];

#[derive(Debug)]
struct Args {
    format: Option<String>,
    image_opts: bool,
    quiet: bool,
    progress: bool,
    drop: bool,
    base: Option<String>,
    cache: String,
    operands: Vec<String>,
}

fn parse(prog: &Prog, args: Vec<String>) -> Result<Args, Fail> {
    let mut a = Args {
        format: None,
        image_opts: false,
        quiet: false,
        progress: false,
        drop: false,
        base: None,
        cache: "writeback".into(),
        operands: Vec::new(),
    };
    let mut g = Getopt::new(&prog.argv0, args, "f:ht:b:dpqr:", LONGS);
    for o in g.by_ref() {
        let o = o.map_err(Fail::Getopt)?;
        let arg = o.arg.unwrap_or_default();
        match o.val {
            v if v == ch('h') => {
                crate::help::print_command(prog, "commit");
                return Err(Fail::Exit(0));
            }
            v if v == ch('f') => a.format = Some(arg),
            v if v == ch('t') => a.cache = arg,
            v if v == ch('b') => {
                a.base = Some(arg);
                // -b implies -d.
                a.drop = true;
            }
            v if v == ch('d') => a.drop = true,
            v if v == ch('p') => a.progress = true,
            v if v == ch('q') => a.quiet = true,
            v if v == ch('r') => {
                // Checked as qemu-img does; the copy runs unthrottled.
                cvtnum("rate limit", &arg)?;
            }
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
    let filename = &a.operands[0];
    let cache = CacheMode::parse(&a.cache)
        .map_err(|_| Fail::Report(format!("Invalid cache option: {}", a.cache)))?;
    let spec = ImageSpec::parse(filename, a.image_opts, a.format.as_deref())?;
    let img = spec.open(&OpenOptions {
        writable: true,
        cache,
        ..OpenOptions::default()
    })?;
    warn_if_probed_raw(&img);
    let mut progress = Progress::start(a.progress && !a.quiet, 1.0);
    let opts = CommitOptions {
        base: a.base.clone(),
        drop: a.drop,
        cache,
    };
    let mut cb = |pct: f64| {
        progress.set(pct as f32);
        true
    };
    let r = commit::commit(img, &spec.arg, &opts, Some(&mut cb));
    if r.is_ok() {
        progress.set(100.0);
    }
    progress.end();
    r?;
    if !a.quiet {
        out("Image committed.\n");
    }
    Ok(())
}
