//! `create [-f FMT] [-o FMT_OPTS] [-b BACKING_FILENAME [-F BACKING_FMT]]
//! [--object OBJDEF] [-u] [-q] FILENAME [SIZE]`
//!
//! Checks run in the order of QEMU's bdrv_img_create so the first error
//! reported is the one qemu-img reports; the library does the creating.

use imgtool::format::CreateOptions;
use imgtool::image::combine_backing_path;
use imgtool::ops::create::{create, CreateRequest};
use imgtool::{Image, OpenOptions};

use crate::app::{out, CmdResult, Fail, Prog};
use crate::common::{ch, parse_object, unknown_protocol, ImageSpec, OPT_OBJECT};
use crate::createopts;
use crate::getopt::{Getopt, HasArg::*, LongOpt};
use crate::num::cvtnum;

const LONGS: &[LongOpt] = &[
    LongOpt::new("help", No, ch('h')),
    LongOpt::new("quiet", No, ch('q')),
    LongOpt::new("object", Required, OPT_OBJECT),
    LongOpt::new("format", Required, ch('f')),
    LongOpt::new("backing", Required, ch('b')),
    LongOpt::new("backing-format", Required, ch('F')),
    LongOpt::new("backing-unsafe", No, ch('u')),
    LongOpt::new("options", Required, ch('o')),
];

#[derive(Debug)]
struct Args {
    format: String,
    backing: Option<String>,
    backing_fmt: Option<String>,
    options: Option<String>,
    quiet: bool,
    unsafe_backing: bool,
    operands: Vec<String>,
}

fn parse(prog: &Prog, args: Vec<String>) -> Result<Args, Fail> {
    let mut a = Args {
        format: "raw".into(),
        backing: None,
        backing_fmt: None,
        options: None,
        quiet: false,
        unsafe_backing: false,
        operands: Vec::new(),
    };
    let mut g = Getopt::new(&prog.argv0, args, "F:b:f:ho:qu", LONGS);
    for o in g.by_ref() {
        let o = o.map_err(Fail::Getopt)?;
        let arg = o.arg.unwrap_or_default();
        match o.val {
            v if v == ch('h') => {
                crate::help::print_command(prog, "create");
                return Err(Fail::Exit(0));
            }
            v if v == ch('F') => a.backing_fmt = Some(arg),
            v if v == ch('b') => a.backing = Some(arg),
            v if v == ch('f') => a.format = arg,
            v if v == ch('o') => createopts::accumulate(&mut a.options, &arg)?,
            v if v == ch('q') => a.quiet = true,
            v if v == ch('u') => a.unsafe_backing = true,
            OPT_OBJECT => parse_object(&arg)?,
            _ => {}
        }
    }
    a.operands = g.operands();
    Ok(a)
}

pub fn run(prog: &Prog, args: Vec<String>) -> CmdResult {
    let a = parse(prog, args)?;
    let mut operands = a.operands.iter();
    let filename = operands.next();
    if a.options.as_deref().is_some_and(createopts::wants_help) {
        return createopts::print_help(&a.format, filename.map(String::as_str));
    }
    let Some(filename) = filename else {
        return Err(Fail::Usage("Expecting image file name".into()));
    };
    let size = operands
        .next()
        .map(|s| cvtnum("image size", s))
        .transpose()?;
    if let Some(extra) = operands.next() {
        return Err(Fail::Usage(format!("Unexpected argument: {extra}")));
    }
    img_create(&a, filename, size).map_err(|e| match e {
        Fail::Report(m) => Fail::Report(format!("{filename}: {m}")),
        other => other,
    })
}

/// QEMU's bdrv_img_create; errors come back without the filename prefix.
fn img_create(a: &Args, filename: &str, size: Option<u64>) -> CmdResult {
    let fmt = a.format.as_str();
    // bdrv_img_create looks up the protocol right after the format.
    if imgtool::format::is_known(fmt) {
        if let Some(m) = unknown_protocol(filename) {
            return Err(Fail::Report(m));
        }
    }
    let mut opts = createopts::parse_for_format(fmt, a.options.as_deref())?;
    let o_size = opts.get_size("size").map_err(Fail::from)?;
    if o_size.is_some() && size.is_some() {
        return Err(Fail::report("The image size must be specified only once"));
    }
    createopts::add_backing(
        &mut opts,
        fmt,
        a.backing.as_deref(),
        a.backing_fmt.as_deref(),
    )?;
    let backing_size = check_backing(a, filename, &opts)?;
    let size = size
        .or(o_size)
        .or(backing_size)
        .ok_or_else(|| Fail::report("Image creation needs a size parameter"))?;
    if !a.quiet {
        out(&(createopts::formatting_line(filename, fmt, &opts, size) + "\n"));
    }
    opts.remove("size");
    let req = CreateRequest {
        format: fmt.to_string(),
        filename: filename.to_string(),
        size: Some(size),
        options: opts.clone(),
        unsafe_backing: true,
    };
    create(&req)
        .map(|_| ())
        .map_err(|e| create_error(e, fmt, &opts))
}

/// The backing checks; when the backing image is opened, its size.
fn check_backing(a: &Args, filename: &str, opts: &CreateOptions) -> Result<Option<u64>, Fail> {
    let Some(bf) = opts.get("backing_file") else {
        return Ok(None);
    };
    if bf == filename {
        return Err(Fail::report(
            "Error: Trying to create an image with the same filename as the backing file",
        ));
    }
    if bf.is_empty() {
        return Err(Fail::report("Expected backing file name, got empty string"));
    }
    let bfmt = opts.get("backing_fmt");
    if a.unsafe_backing {
        return match bfmt {
            Some(_) => Ok(None),
            None => Err(Fail::report(
                "Backing file specified without backing format",
            )),
        };
    }
    let oo = OpenOptions {
        format: bfmt.map(str::to_string),
        force_share: true,
        no_backing: true,
        // BDRV_O_NO_IO: an encrypted backing file opens without its secret.
        metadata_only: true,
        ..OpenOptions::default()
    };
    if bf.starts_with("json:") {
        // A JSON backing name is an options tree, opened as such (its file
        // names are relative to the working directory).
        let strip = |f: Fail| match f {
            Fail::Report(m) => {
                let p = format!("Could not open '{bf}': ");
                let inner = m.strip_prefix(&p).unwrap_or(&m).to_string();
                Fail::Report(format!("{inner}\nCould not open backing image."))
            }
            other => other,
        };
        let spec = ImageSpec::parse(bf, false, bfmt).map_err(strip)?;
        let img = spec.open(&oo).map_err(strip)?;
        // A driver inside the JSON does not count as backing_fmt.
        if bfmt.is_none() {
            return Err(Fail::Report(format!(
                "Backing file specified without backing format\nDetected format of {}.",
                img.format()
            )));
        }
        return Ok(Some(img.size()));
    }
    // Relative to the host file (`file:NAME` names NAME).
    let host = filename.strip_prefix("file:").unwrap_or(filename);
    let bpath = combine_backing_path(host, bf);
    let img = Image::open(&bpath, &oo).map_err(|e| {
        Fail::Report(format!(
            "{}\nCould not open backing image.",
            unwrapped(&e, &bpath)
        ))
    })?;
    if bfmt.is_none() {
        return Err(Fail::Report(format!(
            "Backing file specified without backing format\nDetected format of {}.",
            img.format()
        )));
    }
    Ok(Some(img.size()))
}

/// bdrv_open's own message: the library adds a `Could not open 'PATH': `
/// prefix that qemu-img does not print here.
fn unwrapped(e: &imgtool::Error, path: &str) -> String {
    let m = e.message();
    m.strip_prefix(&format!("Could not open '{path}': "))
        .unwrap_or(m)
        .to_string()
}

/// bdrv_img_create's EFBIG message; other errors as the driver says them.
fn create_error(e: imgtool::Error, fmt: &str, opts: &CreateOptions) -> Fail {
    if e.errno() == Some(libc::EFBIG) {
        // QEMU asks for cluster_size with the format's default filled in.
        let default_cs = matches!(fmt, "qcow2" | "qed");
        let hint = match opts.get_size("cluster_size") {
            Ok(Some(c)) if c > 0 => " (try using a larger cluster size)",
            Ok(None) if default_cs => " (try using a larger cluster size)",
            _ => "",
        };
        return Fail::Report(format!(
            "The image size is too large for file format '{fmt}'{hint}"
        ));
    }
    Fail::from(e)
}
