//! `bench [-c COUNT] [-d DEPTH] [-f FMT | --image-opts] [--flush-interval=N]
//! [-i AIO] [-n] [--no-drain] [-o OFFSET] [--pattern=N] [-q]
//! [-s BUFFER_SIZE] [-S STEP_SIZE] [-t CACHE] [-U] [-w] FILENAME`

use imgtool::io::CacheMode;
use imgtool::ops::bench::{bench, request_error, BenchOptions};
use imgtool::OpenOptions;

use crate::app::{out, CmdResult, Fail, Prog};
use crate::common::{ch, ImageSpec, OPT_IMAGE_OPTS};
use crate::getopt::{Getopt, HasArg::*, LongOpt};
use crate::num::{cvtnum, cvtnum_full, strtol, NumError};

const OPT_FLUSH_INTERVAL: i32 = 299;
const OPT_NO_DRAIN: i32 = 300;
const OPT_PATTERN: i32 = 301;

/// qemu-img 10.0.2's table for `bench` (ambiguity messages list
/// `--cache --count`, `--format --flush-interval --force-share` and
/// `--native --no-drain`; there is no `--quiet` or `--object`).
const LONGS: &[LongOpt] = &[
    LongOpt::new("help", No, ch('h')),
    LongOpt::new("format", Required, ch('f')),
    LongOpt::new("image-opts", No, OPT_IMAGE_OPTS),
    LongOpt::new("cache", Required, ch('t')),
    LongOpt::new("count", Required, ch('c')),
    LongOpt::new("buffer-size", Required, ch('s')),
    LongOpt::new("depth", Required, ch('d')),
    LongOpt::new("offset", Required, ch('o')),
    LongOpt::new("step-size", Required, ch('S')),
    LongOpt::new("aio", Required, ch('i')),
    LongOpt::new("native", No, ch('n')),
    LongOpt::new("write", No, ch('w')),
    LongOpt::new("pattern", Required, OPT_PATTERN),
    LongOpt::new("flush-interval", Required, OPT_FLUSH_INTERVAL),
    LongOpt::new("no-drain", No, OPT_NO_DRAIN),
    LongOpt::new("force-share", No, ch('U')),
];

#[derive(Debug)]
struct Args {
    fmt: Option<String>,
    image_opts: bool,
    force_share: bool,
    cache: CacheMode,
    native_aio: bool,
    o: BenchOptions,
    filename: String,
}

/// An integer option in C syntax (`0x10`, `010`) within [min, max].
fn int_opt(name: &str, arg: &str, min: i64, max: i64) -> Result<i64, Fail> {
    match strtol(arg) {
        Err(NumError::Invalid) => Err(Fail::Report(format!("Invalid {name} specified: '{arg}'."))),
        Ok(v) if (min..=max).contains(&v) => Ok(v),
        _ => Err(Fail::Report(format!(
            "Invalid {name} specified. Must be between {min} and {max}."
        ))),
    }
}

const INT_MAX: i64 = i32::MAX as i64;

fn parse(prog: &Prog, args: Vec<String>) -> Result<Args, Fail> {
    let mut a = Args {
        fmt: None,
        image_opts: false,
        force_share: false,
        cache: CacheMode::Writeback,
        native_aio: false,
        o: BenchOptions::default(),
        filename: String::new(),
    };
    let mut g = Getopt::new(&prog.argv0, args, "hc:d:f:ni:o:qs:S:t:wU", LONGS);
    for opt in g.by_ref() {
        let opt = opt.map_err(Fail::Getopt)?;
        let arg = opt.arg.unwrap_or_default();
        let o = &mut a.o;
        match opt.val {
            v if v == ch('h') => {
                crate::help::print_command(prog, "bench");
                return Err(Fail::Exit(0));
            }
            v if v == ch('c') => o.count = int_opt("request count", &arg, 1, INT_MAX)? as u32,
            v if v == ch('d') => o.depth = int_opt("queue depth", &arg, 1, INT_MAX)? as u32,
            v if v == ch('f') => a.fmt = Some(arg),
            v if v == ch('n') => a.native_aio = true,
            v if v == ch('i') => match arg.as_str() {
                "native" => a.native_aio = true,
                "threads" | "io_uring" => {}
                _ => return Err(Fail::Report(format!("Invalid aio option: {arg}"))),
            },
            v if v == ch('o') => o.offset = cvtnum("offset", &arg)?,
            v if v == ch('q') => {}
            v if v == ch('s') => {
                o.buffer_size = cvtnum_full("buffer size", &arg, 1, INT_MAX)? as u64
            }
            v if v == ch('S') => o.step = cvtnum_full("step size", &arg, 0, INT_MAX)? as u64,
            v if v == ch('t') => {
                a.cache = CacheMode::parse(&arg).map_err(|_| Fail::report("Invalid cache mode"))?
            }
            v if v == ch('w') => o.write = true,
            v if v == ch('U') => a.force_share = true,
            OPT_PATTERN => o.pattern = int_opt("pattern byte", &arg, 0, 255)? as u8,
            OPT_FLUSH_INTERVAL => {
                o.flush_interval = int_opt("flush interval", &arg, 0, INT_MAX)? as u32
            }
            OPT_NO_DRAIN => o.drain_on_flush = false,
            OPT_IMAGE_OPTS => a.image_opts = true,
            _ => {}
        }
    }
    let mut rest = g.operands();
    if rest.len() != 1 {
        return Err(Fail::Usage("Expecting one image file name".into()));
    }
    a.filename = rest.remove(0);
    Ok(a)
}

const PROBED_RAW_WARNING: &str = "WARNING: Image format was not specified for '{}' and probing guessed raw.
         Automatically detecting the format is dangerous for raw images, write operations on block 0 will be restricted.
         Specify the 'raw' format explicitly to remove the restrictions.";

pub fn run(prog: &Prog, args: Vec<String>) -> CmdResult {
    let a = parse(prog, args)?;
    a.o.check()?;
    let spec = ImageSpec::parse(&a.filename, a.image_opts, a.fmt.as_deref())?;
    let direct = matches!(a.cache, CacheMode::None | CacheMode::Directsync);
    let open_fail = |m: &str| Fail::Report(format!("Could not open '{}': {m}", spec.arg));
    if a.native_aio && !direct {
        return Err(open_fail(
            "aio=native was specified, but it requires cache.direct=on, which was not specified.",
        ));
    }
    if a.force_share && a.o.write {
        return Err(open_fail(
            "force-share=on can only be used with read-only images",
        ));
    }
    let img = spec.open(&OpenOptions {
        writable: a.o.write,
        // The library cannot do O_DIRECT with unaligned buffers yet (QEMU
        // bounces them): direct modes run through the page cache for now.
        cache: if direct {
            CacheMode::Writeback
        } else {
            a.cache
        },
        force_share: a.force_share,
        ..OpenOptions::default()
    })?;
    if a.o.write && img.format_was_probed() && img.format() == "raw" {
        eprintln!("{}", PROBED_RAW_WARNING.replace("{}", &a.filename));
    }
    out(&a.o.header());
    let report = bench(&img, &a.o).map_err(|e| Fail::Report(request_error(&e)))?;
    img.close().map_err(Fail::from)?;
    out(&report.summary());
    Ok(())
}
