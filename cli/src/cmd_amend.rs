//! `amend [--object OBJDEF] [--image-opts] [-p] [-q] [-f FMT] [-t CACHE]
//! [--force] -o OPTIONS FILENAME`

use imgtool::format::{self, CreateOptions, OptDesc};
use imgtool::io::CacheMode;
use imgtool::ops::amend;
use imgtool::OpenOptions;

use crate::app::{out, CmdResult, Fail, Prog};
use crate::cmd_resize::warn_if_probed_raw;
use crate::common::{ch, parse_object, ImageSpec, OPT_IMAGE_OPTS, OPT_OBJECT};
use crate::createopts;
use crate::getopt::{Getopt, HasArg::*, LongOpt};
use crate::progress::Progress;

const OPT_FORCE: i32 = 276;

/// qemu-img 10.0.2's table for `amend`, in its order.
const LONGS: &[LongOpt] = &[
    LongOpt::new("help", No, ch('h')),
    LongOpt::new("object", Required, OPT_OBJECT),
    LongOpt::new("image-opts", No, OPT_IMAGE_OPTS),
    LongOpt::new("format", Required, ch('f')),
    LongOpt::new("force", No, OPT_FORCE),
    LongOpt::new("options", Required, ch('o')),
    LongOpt::new("cache", Required, ch('t')),
    LongOpt::new("progress", No, ch('p')),
    LongOpt::new("quiet", No, ch('q')),
];

#[derive(Debug)]
struct Args {
    format: Option<String>,
    image_opts: bool,
    quiet: bool,
    force: bool,
    progress: bool,
    options: Option<String>,
    cache: String,
    operands: Vec<String>,
}

fn parse(prog: &Prog, args: Vec<String>) -> Result<Args, Fail> {
    let mut a = Args {
        format: None,
        image_opts: false,
        quiet: false,
        force: false,
        progress: false,
        options: None,
        cache: "writeback".into(),
        operands: Vec::new(),
    };
    let mut g = Getopt::new(&prog.argv0, args, "ho:f:t:pq", LONGS);
    for o in g.by_ref() {
        let o = o.map_err(Fail::Getopt)?;
        let arg = o.arg.unwrap_or_default();
        match o.val {
            v if v == ch('h') => {
                crate::help::print_command(prog, "amend");
                return Err(Fail::Exit(0));
            }
            v if v == ch('o') => createopts::accumulate(&mut a.options, &arg)?,
            v if v == ch('f') => a.format = Some(arg),
            v if v == ch('t') => a.cache = arg,
            v if v == ch('p') => a.progress = true,
            v if v == ch('q') => a.quiet = true,
            OPT_FORCE => a.force = true,
            OPT_OBJECT => parse_object(&arg)?,
            OPT_IMAGE_OPTS => a.image_opts = true,
            _ => {}
        }
    }
    a.operands = g.operands();
    Ok(a)
}

/// One help line: `  name=<type>`, padded to 24 columns, ` - help`.
fn help_line(d: &OptDesc) -> String {
    let head = format!("  {}={}", d.name, d.kind.tag());
    format!("{head:<24} - {}", d.help)
}

/// qemu-img's print_amend_option_help.
fn print_help(fmt: &str) -> CmdResult {
    let descs = amend::options(fmt).map_err(Fail::from)?;
    let mut lines: Vec<String> = descs.iter().map(help_line).collect();
    lines.sort();
    let mut text = format!("Amend options for '{fmt}':\n");
    for l in lines {
        text.push_str(&l);
        text.push('\n');
    }
    out(&text);
    Ok(())
}

pub fn run(prog: &Prog, args: Vec<String>) -> CmdResult {
    let a = parse(prog, args)?;
    let Some(options) = a.options.clone() else {
        return Err(Fail::Usage("Must specify options (-o)".into()));
    };
    // qemu_progress_init prints nothing; its end prints the newline.
    let enabled = a.progress && !a.quiet;
    let r = amend_image(&a, &options, enabled);
    if enabled {
        out("\n");
    }
    r
}

fn amend_image(a: &Args, options: &str, show_progress: bool) -> CmdResult {
    let wants_help = createopts::wants_help(options);
    if let (Some(f), true) = (&a.format, wants_help) {
        if !format::is_known(f) {
            return Err(Fail::Report(format!("Unknown file format '{f}'")));
        }
        return print_help(f);
    }
    if a.operands.len() != 1 {
        return Err(Fail::report("Expecting one image file name"));
    }
    let cache = CacheMode::parse(&a.cache)
        .map_err(|_| Fail::Report(format!("Invalid cache option: {}", a.cache)))?;
    let spec = ImageSpec::parse(&a.operands[0], a.image_opts, a.format.as_deref())?;
    let img = spec.open(&OpenOptions {
        writable: true,
        cache,
        ..OpenOptions::default()
    })?;
    warn_if_probed_raw(&img);
    if wants_help {
        return print_help(img.format());
    }
    amend::options(img.format()).map_err(Fail::from)?;
    let opts = CreateOptions::parse(options).map_err(Fail::from)?;
    amend::validate(img.format(), &opts).map_err(Fail::from)?;
    let mut progress = Progress::start(show_progress, 1.0);
    let mut cb = |pct: f64| progress.set(pct as f32);
    let r = amend::amend_with(img, &opts, a.force, Some(&mut cb));
    progress.set(100.0);
    r.map_err(Fail::from)
}
