//! `dd [-f FMT|--image-opts] [-O OUTPUT_FMT] [-U] [bs=BLOCK_SIZE]
//! [count=BLOCKS] [skip=BLOCKS] if=INPUT of=OUTPUT`

use imgtool::ops::dd::{check_out_format, dd, DdOptions};
use imgtool::OpenOptions;

use crate::app::{CmdResult, Fail, Prog};
use crate::common::{ch, parse_object, ImageSpec, OPT_IMAGE_OPTS, OPT_OBJECT};
use crate::getopt::{Getopt, HasArg::*, LongOpt};
use crate::num::{cvtnum, cvtnum_full};

/// qemu-img 10.0.2's table for `dd`.
const LONGS: &[LongOpt] = &[
    LongOpt::new("help", No, ch('h')),
    LongOpt::new("object", Required, OPT_OBJECT),
    LongOpt::new("image-opts", No, OPT_IMAGE_OPTS),
    LongOpt::new("force-share", No, ch('U')),
];

#[derive(Debug, Default)]
struct Args {
    fmt: Option<String>,
    image_opts: bool,
    force_share: bool,
    input: Option<String>,
    output: Option<String>,
    opts: DdOptions,
}

fn parse(prog: &Prog, args: Vec<String>) -> Result<Args, Fail> {
    let mut a = Args::default();
    let mut g = Getopt::new(&prog.argv0, args, "hf:O:U", LONGS);
    for o in g.by_ref() {
        let o = o.map_err(Fail::Getopt)?;
        let arg = o.arg.unwrap_or_default();
        match o.val {
            v if v == ch('h') => {
                crate::help::print_command(prog, "dd");
                return Err(Fail::Exit(0));
            }
            v if v == ch('f') => a.fmt = Some(arg),
            v if v == ch('O') => a.opts.out_format = arg,
            v if v == ch('U') => a.force_share = true,
            OPT_OBJECT => parse_object(&arg)?,
            OPT_IMAGE_OPTS => a.image_opts = true,
            _ => {}
        }
    }
    for operand in g.operands() {
        operand_value(&mut a, &operand)?;
    }
    Ok(a)
}

/// One `name=value` operand, checked where qemu-img checks it.
fn operand_value(a: &mut Args, operand: &str) -> CmdResult {
    let unknown = || Fail::Report(format!("unrecognized operand {operand}"));
    let (name, value) = operand.split_once('=').ok_or_else(unknown)?;
    match name {
        "bs" => a.opts.block_size = cvtnum_full("bs", value, 1, i32::MAX as i64)? as u64,
        "count" => a.opts.count = Some(cvtnum("count", no_suffix("count", value)?)?),
        "if" => a.input = Some(value.to_string()),
        "of" => a.output = Some(value.to_string()),
        "skip" => a.opts.skip = Some(cvtnum("skip", no_suffix("skip", value)?)?),
        _ => {
            return Err(Fail::Report(format!("unrecognized operand {name}")));
        }
    }
    Ok(())
}

/// qemu-img 10.0.2 counts `count` and `skip` in blocks and takes no size
/// suffix for them (`count=1k` is refused; hex such as `0x1b` is fine).
fn no_suffix<'a>(name: &str, value: &'a str) -> Result<&'a str, Fail> {
    let v = value.trim_start();
    let hex = v.trim_start_matches(['+', '-']);
    let hex = hex.starts_with("0x") || hex.starts_with("0X");
    match v.chars().last() {
        Some(c) if c.is_ascii_alphabetic() && !(hex && c.is_ascii_hexdigit()) => Err(Fail::Report(
            format!("Invalid {name} specified: '{value}'."),
        )),
        _ => Ok(value),
    }
}

pub fn run(prog: &Prog, args: Vec<String>) -> CmdResult {
    let a = parse(prog, args)?;
    let (Some(input), Some(output)) = (&a.input, &a.output) else {
        return Err(Fail::report("Must specify both input and output files"));
    };
    let spec = ImageSpec::parse(input, a.image_opts, a.fmt.as_deref())?;
    let img = spec.open(&OpenOptions {
        force_share: a.force_share,
        ..OpenOptions::default()
    })?;
    check_out_format(&a.opts.out_format)?;
    if let Some(m) = crate::common::unknown_protocol(output) {
        return Err(Fail::Report(m));
    }
    let plan = dd(&img, output, &a.opts).map_err(|e| Fail::Report(e.message(output)))?;
    if plan.skip_past_end {
        prog.error(&format!("{input}: cannot skip to specified offset"));
    }
    Ok(())
}
