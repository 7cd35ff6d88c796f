//! `resize [-f FMT | --image-opts] [--preallocation PREALLOC] [--shrink]
//! [--object OBJDEF] [-q] FILENAME [+-]SIZE`

use imgtool::format::Prealloc;
use imgtool::ops::resize::{self, ResizeOptions, SizeSpec, NEED_SHRINK, SHRINK_WARNING};
use imgtool::{Image, OpenOptions};

use crate::app::{out, CmdResult, Fail, Prog};
use crate::common::{ch, parse_object, ImageSpec, OPT_IMAGE_OPTS, OPT_OBJECT};
use crate::getopt::{Getopt, HasArg::*, LongOpt};
use crate::num::{strtosz, NumError};

const OPT_PREALLOCATION: i32 = 264;
const OPT_SHRINK: i32 = 265;

/// qemu-img 10.0.2's table for `resize`.
const LONGS: &[LongOpt] = &[
    LongOpt::new("help", No, ch('h')),
    LongOpt::new("quiet", No, ch('q')),
    LongOpt::new("object", Required, OPT_OBJECT),
    LongOpt::new("image-opts", No, OPT_IMAGE_OPTS),
    LongOpt::new("preallocation", Required, OPT_PREALLOCATION),
    LongOpt::new("shrink", No, OPT_SHRINK),
    LongOpt::new("format", Required, ch('f')),
];

#[derive(Debug, Default)]
struct Args {
    format: Option<String>,
    image_opts: bool,
    quiet: bool,
    shrink: bool,
    prealloc: Prealloc,
    filename: Option<String>,
    size: Option<String>,
}

/// Print QEMU's warning for a writable image whose raw format was guessed.
pub(crate) fn warn_if_probed_raw(img: &Image) {
    if img.format_was_probed() && img.format() == "raw" {
        eprintln!(
            "WARNING: Image format was not specified for '{}' and probing guessed raw.\n         \
             Automatically detecting the format is dangerous for raw images, write operations on block 0 will be restricted.\n         \
             Specify the 'raw' format explicitly to remove the restrictions.",
            img.filename()
        );
    }
}

/// A negative size directly after the file name is the size, not options
/// (qemu-img looks at the argument after FILENAME before getopt does).
fn looks_negative(arg: Option<&String>) -> bool {
    arg.is_some_and(|a| {
        let b = a.as_bytes();
        b.len() > 1 && b[0] == b'-' && b[1].is_ascii_digit()
    })
}

impl Args {
    /// One operand, in command-line order.
    fn operand(&mut self, rest: &mut Vec<String>) -> Result<(), Fail> {
        let a = rest.remove(0);
        if self.filename.is_none() {
            self.filename = Some(a);
            if looks_negative(rest.first()) {
                self.size = Some(rest.remove(0));
            }
        } else if self.size.is_none() {
            self.size = Some(a);
        } else {
            return Err(Fail::Usage("Extra argument(s) in command line".into()));
        }
        Ok(())
    }
}

fn parse(prog: &Prog, args: Vec<String>) -> Result<Args, Fail> {
    let mut a = Args::default();
    let mut rest = args;
    while !rest.is_empty() {
        let total = rest.len();
        let all = rest.clone();
        let mut g = Getopt::new(&prog.argv0, rest, "+f:hq", LONGS);
        let mut last_arg: Option<String> = None;
        for o in g.by_ref() {
            let o = o.map_err(Fail::Getopt)?;
            last_arg = o.arg.clone();
            let arg = o.arg.unwrap_or_default();
            match o.val {
                v if v == ch('h') => {
                    crate::help::print_command(prog, "resize");
                    return Err(Fail::Exit(0));
                }
                v if v == ch('f') => a.format = Some(arg),
                v if v == ch('q') => a.quiet = true,
                OPT_OBJECT => parse_object(&arg)?,
                OPT_IMAGE_OPTS => a.image_opts = true,
                OPT_SHRINK => a.shrink = true,
                OPT_PREALLOCATION => {
                    a.prealloc = match arg.as_str() {
                        "off" | "metadata" | "falloc" | "full" => {
                            Prealloc::parse(&arg).map_err(Fail::from)?
                        }
                        _ => {
                            return Err(Fail::Report(format!("Invalid preallocation mode '{arg}'")))
                        }
                    }
                }
                _ => {}
            }
        }
        rest = g.operands();
        let consumed = total - rest.len();
        let ended = consumed > 0 && all[consumed - 1] == "--" && last_arg.as_deref() != Some("--");
        if ended {
            while !rest.is_empty() {
                a.operand(&mut rest)?;
            }
        } else if !rest.is_empty() {
            a.operand(&mut rest)?;
        }
    }
    Ok(a)
}

/// The size argument: `+N`/`-N` relative, else absolute, as qemu-img
/// parses it (QemuOpts size syntax).
fn parse_size(text: &str) -> Result<SizeSpec, Fail> {
    let (ctor, num): (fn(u64) -> SizeSpec, &str) = match text.as_bytes().first() {
        Some(b'+') => (SizeSpec::Grow, &text[1..]),
        Some(b'-') => (SizeSpec::Shrink, &text[1..]),
        _ => (SizeSpec::Absolute, text),
    };
    match strtosz(num) {
        Ok(n) => Ok(ctor(n)),
        Err(NumError::Range) => Err(Fail::Report(format!(
            "Value '{num}' is out of range for parameter 'size'"
        ))),
        Err(_) => Err(Fail::Report(
            "Parameter 'size' expects a non-negative number below 2^64\n\
             Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n\
             and exabytes, respectively."
                .into(),
        )),
    }
}

pub fn run(prog: &Prog, args: Vec<String>) -> CmdResult {
    let a = parse(prog, args)?;
    let (Some(filename), Some(size)) = (&a.filename, &a.size) else {
        return Err(Fail::Usage("Expecting image file name and size".into()));
    };
    let spec = parse_size(size)?;
    let img =
        ImageSpec::parse(filename, a.image_opts, a.format.as_deref())?.open(&OpenOptions {
            writable: true,
            ..OpenOptions::default()
        })?;
    warn_if_probed_raw(&img);
    let opts = ResizeOptions {
        prealloc: a.prealloc,
        shrink: a.shrink,
    };
    match resize::resize(&img, spec, &opts) {
        Ok(_) => {}
        Err(e) if e.message() == NEED_SHRINK => {
            prog.error(NEED_SHRINK);
            prog.error(&format!("warning: {SHRINK_WARNING}"));
            return Err(Fail::Exit(1));
        }
        Err(e) => return Err(e.into()),
    }
    img.close()?;
    if !a.quiet {
        out("Image resized.\n");
    }
    Ok(())
}
