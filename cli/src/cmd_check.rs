//! `check [-f FMT | --image-opts] [-T CACHE] [-r leaks|all] [-q] [-U]
//! [--output human|json] [--object OBJDEF] FILENAME`

use imgtool::format::{CheckResult, Repair};
use imgtool::io::CacheMode;
use imgtool::ops::check::{self, CheckOptions, CheckReport};

use crate::app::{out, CmdResult, Fail, Prog};
use crate::common::{
    ch, parse_object, parse_output, ImageSpec, OutputFormat, OPT_IMAGE_OPTS, OPT_OBJECT, OPT_OUTPUT,
};
use crate::getopt::{Getopt, HasArg::*, LongOpt};

const LONGS: &[LongOpt] = &[
    LongOpt::new("help", No, ch('h')),
    LongOpt::new("object", Required, OPT_OBJECT),
    LongOpt::new("image-opts", No, OPT_IMAGE_OPTS),
    LongOpt::new("quiet", No, ch('q')),
    LongOpt::new("format", Required, ch('f')),
    LongOpt::new("cache", Required, ch('T')),
    LongOpt::new("repair", Required, ch('r')),
    LongOpt::new("force-share", No, ch('U')),
    LongOpt::new("output", Required, OPT_OUTPUT),
];

#[derive(Debug, Default)]
struct Args {
    format: Option<String>,
    output: Option<OutputFormat>,
    repair: Repair,
    cache: Option<String>,
    quiet: bool,
    image_opts: bool,
    force_share: bool,
    filename: String,
}

fn parse(prog: &Prog, args: Vec<String>) -> Result<Args, Fail> {
    let mut a = Args::default();
    let mut g = Getopt::new(&prog.argv0, args, "hf:r:T:qU", LONGS);
    for o in g.by_ref() {
        let o = o.map_err(Fail::Getopt)?;
        let arg = o.arg.unwrap_or_default();
        match o.val {
            v if v == ch('h') => {
                crate::help::print_command(prog, "check");
                return Err(Fail::Exit(0));
            }
            v if v == ch('f') => a.format = Some(arg),
            v if v == ch('r') => {
                a.repair = match arg.as_str() {
                    "leaks" => Repair::Leaks,
                    "all" => Repair::All,
                    _ => {
                        return Err(Fail::Usage(format!(
                            "--repair (-r) expects 'leaks' or 'all' not '{arg}'"
                        )))
                    }
                }
            }
            v if v == ch('T') => a.cache = Some(arg),
            v if v == ch('q') => a.quiet = true,
            v if v == ch('U') => a.force_share = true,
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
    let cache = match &a.cache {
        Some(c) => CacheMode::parse(c)
            .map_err(|_| Fail::report(format!("Invalid source cache option: {c}")))?,
        None => CacheMode::default(),
    };
    let spec = ImageSpec::parse(&a.filename, a.image_opts, a.format.as_deref())?;
    if a.force_share && a.repair != Repair::None {
        return Err(Fail::report(format!(
            "Could not open '{}': force-share=on can only be used with read-only images",
            spec.arg
        )));
    }
    let opts = CheckOptions {
        format: spec.format.clone(),
        repair: a.repair,
        force_share: a.force_share,
        cache,
        key_secret: spec.key_secret.clone(),
        data_file: spec.data_file.clone(),
        blkdebug: spec.blkdebug.clone(),
    };
    spec.check_name()?;
    let human = a.output.unwrap_or(OutputFormat::Human) == OutputFormat::Human;
    let quiet = a.quiet;
    let mut log = |line: &str| eprintln!("{line}");
    // qemu-img's stdout is block-buffered when piped, so its repair summary
    // lands after every finding line; keep that order.
    let mut summary = String::new();
    let mut on_repaired = |r: &CheckResult| {
        if human && !quiet {
            summary.push_str(&repaired_text(r));
        }
    };
    let report = match check::check(&spec.filename, &opts, &mut log, &mut on_repaired) {
        // qemu-img reports the argument as given.
        Ok(r) => CheckReport {
            filename: spec.arg.clone(),
            ..r
        },
        // The open error names the argument as given (image-opts, json:).
        Err(e) if spec.arg != spec.filename && e.message().starts_with("Could not open '") => {
            let prefix = format!("Could not open '{}': ", spec.filename);
            let inner = e.message().strip_prefix(&prefix).unwrap_or(e.message());
            return Err(Fail::Report(format!(
                "Could not open '{}': {inner}",
                spec.arg
            )));
        }
        Err(e) if check::is_unsupported(&e) => {
            prog.error(e.message());
            return Err(Fail::Exit(63));
        }
        Err(e) => return Err(e.into()),
    };
    if !quiet {
        if human {
            out(&(summary + &human_text(&report)));
        } else {
            out(&(report.to_json().to_pretty() + "\n"));
        }
    }
    match report.exit_code() {
        0 => Ok(()),
        n => Err(Fail::Exit(n)),
    }
}

fn repaired_text(r: &CheckResult) -> String {
    format!(
        "The following inconsistencies were found and repaired:\n\n    {} leaked clusters\n    {} corruptions\n\nDouble checking the fixed image now...\n",
        r.leaks_fixed, r.corruptions_fixed
    )
}

/// qemu-img's dump_human_image_check.
fn human_text(rep: &CheckReport) -> String {
    let r = &rep.result;
    let mut s = String::new();
    if r.corruptions == 0 && r.leaks == 0 && r.check_errors == 0 {
        s.push_str("No errors were found on the image.\n");
    } else {
        if r.corruptions > 0 {
            s.push_str(&format!(
                "\n{} errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.\n",
                r.corruptions
            ));
        }
        if r.leaks > 0 {
            s.push_str(&format!(
                "\n{} leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.\n",
                r.leaks
            ));
        }
        if r.check_errors > 0 {
            s.push_str(&format!(
                "\n{} internal errors have occurred during the check.\n",
                r.check_errors
            ));
        }
    }
    if r.total_clusters != 0 && r.allocated_clusters != 0 {
        let pct = |n: u64, d: u64| n as f64 * 100.0 / d as f64;
        s.push_str(&format!(
            "{}/{} = {:.2}% allocated, {:.2}% fragmented, {:.2}% compressed clusters\n",
            r.allocated_clusters,
            r.total_clusters,
            pct(r.allocated_clusters, r.total_clusters),
            pct(r.fragmented_clusters, r.allocated_clusters),
            pct(r.compressed_clusters, r.allocated_clusters)
        ));
    }
    if r.image_end_offset > 0 {
        s.push_str(&format!("Image end offset: {}\n", r.image_end_offset));
    }
    s
}
