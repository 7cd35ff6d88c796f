//! `map [-f FMT | --image-opts] [--object OBJDEF] [--output human|json]
//! [--start-offset OFFSET] [--max-length LENGTH] [-U] FILENAME`

use std::io::Write;

use imgtool::ops::map::{human_line, MapIter, MapOptions, HUMAN_HEADER};
use imgtool::OpenOptions;

use crate::app::{CmdResult, Fail, Prog};
use crate::common::{
    ch, parse_object, parse_output, ImageSpec, OutputFormat, OPT_IMAGE_OPTS, OPT_OBJECT, OPT_OUTPUT,
};
use crate::getopt::{Getopt, HasArg::*, LongOpt};
use crate::num::cvtnum;

/// qemu-img 10.0.2's table for `map`, in its order.
const LONGS: &[LongOpt] = &[
    LongOpt::new("help", No, ch('h')),
    LongOpt::new("format", Required, ch('f')),
    LongOpt::new("image-opts", No, OPT_IMAGE_OPTS),
    LongOpt::new("start-offset", Required, ch('s')),
    LongOpt::new("max-length", Required, ch('l')),
    LongOpt::new("output", Required, OPT_OUTPUT),
    LongOpt::new("object", Required, OPT_OBJECT),
    LongOpt::new("force-share", No, ch('U')),
];

#[derive(Debug, Default)]
struct Args {
    format: Option<String>,
    output: Option<OutputFormat>,
    image_opts: bool,
    force_share: bool,
    range: MapOptions,
    filename: String,
}

fn parse(prog: &Prog, args: Vec<String>) -> Result<Args, Fail> {
    let mut a = Args::default();
    let mut g = Getopt::new(&prog.argv0, args, "hf:s:l:U", LONGS);
    for o in g.by_ref() {
        let o = o.map_err(Fail::Getopt)?;
        let arg = o.arg.unwrap_or_default();
        match o.val {
            v if v == ch('h') => {
                crate::help::print_command(prog, "map");
                return Err(Fail::Exit(0));
            }
            v if v == ch('f') => a.format = Some(arg),
            v if v == ch('U') => a.force_share = true,
            v if v == ch('s') => a.range.start = cvtnum("start offset", &arg)?,
            v if v == ch('l') => a.range.max_length = Some(cvtnum("max length", &arg)?),
            OPT_OUTPUT => a.output = Some(parse_output(&arg)?),
            OPT_OBJECT => parse_object(&arg)?,
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

pub fn run(prog: &Prog, args: Vec<String>) -> CmdResult {
    let a = parse(prog, args)?;
    let spec = ImageSpec::parse(&a.filename, a.image_opts, a.format.as_deref())?;
    let img = spec.open(&OpenOptions {
        force_share: a.force_share,
        ..OpenOptions::default()
    })?;
    let stdout = std::io::stdout();
    let mut w = std::io::BufWriter::new(stdout.lock());
    let r = match a.output.unwrap_or(OutputFormat::Human) {
        OutputFormat::Human => human(&mut w, MapIter::new(&img, a.range)),
        OutputFormat::Json => json(&mut w, MapIter::new(&img, a.range)),
    };
    // A closed pipe is not an error for qemu-img either.
    let _ = w.flush();
    r
}

fn human(w: &mut impl Write, it: MapIter<'_>) -> CmdResult {
    let _ = w.write_all(HUMAN_HEADER.as_bytes());
    for e in it {
        match human_line(&e?) {
            Ok(Some(line)) => {
                let _ = w.write_all(line.as_bytes());
            }
            Ok(None) => {}
            Err(msg) => return Err(Fail::report(msg)),
        }
    }
    Ok(())
}

/// `[` entries separated by `,\n` `]`; an entry is printed with its comma
/// once the next one is known, as qemu-img does (so a failure leaves the
/// same partial text).
fn json(w: &mut impl Write, it: MapIter<'_>) -> CmdResult {
    let _ = w.write_all(b"[");
    let mut pending: Option<String> = None;
    for e in it {
        if let Some(p) = pending.take() {
            let _ = writeln!(w, "{p},");
        }
        pending = Some(e?.json_line());
    }
    let _ = writeln!(w, "{}]", pending.unwrap_or_default());
    Ok(())
}
