//! `measure [--output=human|json] [-O OUTPUT_FMT] [-o OPTIONS]
//! [--size N | [--object OBJDEF] [--image-opts] [-f FMT] [-l SNAPSHOT]
//! FILENAME]`

use imgtool::format::CreateOptions;
use imgtool::ops::measure::{check_format, measure, parse_options};
use imgtool::{Image, OpenOptions};

use crate::app::{out, CmdResult, Fail, Prog};
use crate::common::{
    ch, parse_object, parse_output, ImageSpec, OutputFormat, OPT_IMAGE_OPTS, OPT_OBJECT, OPT_OUTPUT,
};
use crate::createopts;
use crate::getopt::{Getopt, HasArg::*, LongOpt};
use crate::num::cvtnum;

const OPT_SIZE: i32 = 264;

/// qemu-img 10.0.2's table for `measure` (ambiguity messages list
/// `--snapshot --size`, `--format --force-share`, `--options --object
/// --output` in this order).
const LONGS: &[LongOpt] = &[
    LongOpt::new("help", No, ch('h')),
    LongOpt::new("target-format", Required, ch('O')),
    LongOpt::new("options", Required, ch('o')),
    LongOpt::new("snapshot", Required, ch('l')),
    LongOpt::new("size", Required, OPT_SIZE),
    LongOpt::new("format", Required, ch('f')),
    LongOpt::new("image-opts", No, OPT_IMAGE_OPTS),
    LongOpt::new("object", Required, OPT_OBJECT),
    LongOpt::new("output", Required, OPT_OUTPUT),
    LongOpt::new("force-share", No, ch('U')),
];

#[derive(Debug, Default)]
struct Args {
    fmt: Option<String>,
    out_fmt: Option<String>,
    options: Option<String>,
    snapshot: Option<String>,
    size: Option<u64>,
    output: Option<OutputFormat>,
    image_opts: bool,
    force_share: bool,
    filename: Option<String>,
}

fn parse(prog: &Prog, args: Vec<String>) -> Result<Args, Fail> {
    let mut a = Args::default();
    let mut g = Getopt::new(&prog.argv0, args, "hf:O:o:l:U", LONGS);
    for o in g.by_ref() {
        let o = o.map_err(Fail::Getopt)?;
        let arg = o.arg.unwrap_or_default();
        match o.val {
            v if v == ch('h') => {
                crate::help::print_command(prog, "measure");
                return Err(Fail::Exit(0));
            }
            v if v == ch('f') => a.fmt = Some(arg),
            v if v == ch('O') => a.out_fmt = Some(arg),
            v if v == ch('o') => createopts::accumulate(&mut a.options, &arg)?,
            v if v == ch('l') => {
                check_snapshot_param(prog, &arg)?;
                a.snapshot = Some(arg);
            }
            v if v == ch('U') => a.force_share = true,
            OPT_OBJECT => parse_object(&arg)?,
            OPT_IMAGE_OPTS => a.image_opts = true,
            OPT_OUTPUT => a.output = Some(parse_output(&arg)?),
            OPT_SIZE => a.size = Some(cvtnum("image size", &arg)?),
            _ => {}
        }
    }
    let mut rest = g.operands();
    if rest.len() > 1 {
        return Err(Fail::report("At most one filename argument is allowed."));
    }
    a.filename = rest.pop();
    Ok(a)
}

/// `-l snapshot.id=ID,snapshot.name=NAME` must name only those keys.
fn check_snapshot_param(prog: &Prog, arg: &str) -> CmdResult {
    if !arg.starts_with("snapshot.") {
        return Ok(());
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
    Ok(())
}

pub fn run(prog: &Prog, args: Vec<String>) -> CmdResult {
    let a = parse(prog, args)?;
    if a.filename.is_none() && (a.image_opts || a.fmt.is_some() || a.snapshot.is_some()) {
        return Err(Fail::report(
            "--image-opts, -f, and -l require a filename argument.",
        ));
    }
    if a.filename.is_some() && a.size.is_some() {
        return Err(Fail::report(
            "--size N cannot be used together with a filename.",
        ));
    }
    if a.filename.is_none() && a.size.is_none() {
        return Err(Fail::report(
            "Either --size N or one filename must be specified.",
        ));
    }
    let source = match &a.filename {
        Some(f) => Some(open_source(&a, f)?),
        None => None,
    };
    let out_fmt = a.out_fmt.as_deref().unwrap_or("raw");
    check_format(out_fmt)?;
    let mut opts =
        parse_options(out_fmt, a.options.as_deref().unwrap_or_default()).map_err(|e| {
            prog.error(e.message());
            Fail::Report(format!("Invalid options for file format '{out_fmt}'"))
        })?;
    if let Some(s) = a.size {
        opts.set("size", &s.to_string());
    }
    let m = measure(out_fmt, &opts, source.as_ref())?;
    out(&match a.output.unwrap_or(OutputFormat::Human) {
        OutputFormat::Human => m.human(),
        OutputFormat::Json => m.to_json().to_pretty() + "\n",
    });
    Ok(())
}

fn open_source(a: &Args, filename: &str) -> Result<Image, Fail> {
    let spec = ImageSpec::parse(filename, a.image_opts, a.fmt.as_deref())?;
    let oo = OpenOptions {
        force_share: a.force_share,
        ..OpenOptions::default()
    };
    let img = spec.open(&oo)?;
    let Some(sn) = &a.snapshot else {
        return Ok(img);
    };
    if img.format() != "qcow2" {
        return Err(Fail::Report(format!(
            "Failed to load snapshot: Block format '{}' used by device '' does not support temporarily loading internal snapshots",
            img.format()
        )));
    }
    drop(img);
    let oo = OpenOptions {
        snapshot: Some(sn.clone()),
        ..oo
    };
    Image::open(
        &spec.filename,
        &OpenOptions {
            format: spec.format.clone(),
            ..oo
        },
    )
    .map_err(|e| {
        let m = e.message();
        let inner = m
            .split_once("Failed to load snapshot: ")
            .map_or(m, |(_, r)| r);
        Fail::Report(format!("Failed to load snapshot: {inner}"))
    })
}
