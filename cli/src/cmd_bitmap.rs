//! `bitmap (--merge SOURCE | --add | --remove | --clear | --enable |
//! --disable)... [-b SOURCE_FILE [-F SOURCE_FMT]] [-g GRANULARITY]
//! [--object OBJECTDEF] [--image-opts | -f FMT] FILENAME BITMAP`

use imgtool::ops::bitmap;
use imgtool::OpenOptions;

use crate::app::{CmdResult, Fail, Prog};
use crate::cmd_resize::warn_if_probed_raw;
use crate::common::{ch, parse_object, ImageSpec, OPT_IMAGE_OPTS, OPT_OBJECT};
use crate::getopt::{Getopt, HasArg::*, LongOpt};
use crate::num::cvtnum;

const OPT_ADD: i32 = 260;
const OPT_REMOVE: i32 = 261;
const OPT_CLEAR: i32 = 262;
const OPT_ENABLE: i32 = 263;
const OPT_DISABLE: i32 = 264;
const OPT_MERGE: i32 = 265;

/// qemu-img 10.0.2's table for `bitmap`, in its order.
const LONGS: &[LongOpt] = &[
    LongOpt::new("help", No, ch('h')),
    LongOpt::new("object", Required, OPT_OBJECT),
    LongOpt::new("image-opts", No, OPT_IMAGE_OPTS),
    LongOpt::new("add", No, OPT_ADD),
    LongOpt::new("remove", No, OPT_REMOVE),
    LongOpt::new("clear", No, OPT_CLEAR),
    LongOpt::new("enable", No, OPT_ENABLE),
    LongOpt::new("disable", No, OPT_DISABLE),
    LongOpt::new("merge", Required, OPT_MERGE),
    LongOpt::new("granularity", Required, ch('g')),
    LongOpt::new("source-file", Required, ch('b')),
    LongOpt::new("source-format", Required, ch('F')),
];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Action {
    Add,
    Remove,
    Clear,
    Enable,
    Disable,
    Merge(String),
}

impl Action {
    fn op(&self) -> &'static str {
        match self {
            Action::Add => "add",
            Action::Remove => "remove",
            Action::Clear => "clear",
            Action::Enable => "enable",
            Action::Disable => "disable",
            Action::Merge(_) => "merge",
        }
    }
}

#[derive(Debug, Default)]
struct Args {
    format: Option<String>,
    src_format: Option<String>,
    src_file: Option<String>,
    image_opts: bool,
    granularity: u64,
    actions: Vec<Action>,
    operands: Vec<String>,
}

fn parse(prog: &Prog, args: Vec<String>) -> Result<Args, Fail> {
    let mut a = Args::default();
    let mut g = Getopt::new(&prog.argv0, args, "b:f:F:g:h", LONGS);
    for o in g.by_ref() {
        let o = o.map_err(Fail::Getopt)?;
        let arg = o.arg.unwrap_or_default();
        match o.val {
            v if v == ch('h') => {
                crate::help::print_command(prog, "bitmap");
                return Err(Fail::Exit(0));
            }
            v if v == ch('b') => a.src_file = Some(arg),
            v if v == ch('f') => a.format = Some(arg),
            v if v == ch('F') => a.src_format = Some(arg),
            v if v == ch('g') => a.granularity = cvtnum("granularity", &arg)?,
            OPT_ADD => a.actions.push(Action::Add),
            OPT_REMOVE => a.actions.push(Action::Remove),
            OPT_CLEAR => a.actions.push(Action::Clear),
            OPT_ENABLE => a.actions.push(Action::Enable),
            OPT_DISABLE => a.actions.push(Action::Disable),
            OPT_MERGE => a.actions.push(Action::Merge(arg)),
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
    if a.actions.is_empty() {
        return Err(Fail::report(
            "Need at least one of --add, --remove, --clear, --enable, --disable, or --merge",
        ));
    }
    let add = a.actions.contains(&Action::Add);
    let merge = a.actions.iter().any(|x| matches!(x, Action::Merge(_)));
    if a.granularity != 0 && !add {
        return Err(Fail::report("granularity only supported with --add"));
    }
    if a.src_format.is_some() && a.src_file.is_none() {
        return Err(Fail::report("-F only supported with -b"));
    }
    if a.src_file.is_some() && !merge {
        return Err(Fail::report(
            "Merge bitmap source file only supported with --merge",
        ));
    }
    if a.operands.len() != 2 {
        return Err(Fail::report("Expecting filename and bitmap name"));
    }
    let name = a.operands[1].as_str();
    // Bitmaps live in this image alone: no backing chain is opened.
    let spec = ImageSpec::parse(&a.operands[0], a.image_opts, a.format.as_deref())?;
    let img = spec.open(&OpenOptions {
        writable: true,
        no_backing: true,
        ..OpenOptions::default()
    })?;
    warn_if_probed_raw(&img);
    let src = match &a.src_file {
        Some(f) => {
            let s = ImageSpec::parse(f, false, a.src_format.as_deref())?;
            Some(s.open(&OpenOptions {
                no_backing: true,
                ..OpenOptions::default()
            })?)
        }
        None => None,
    };
    let result = (|| -> imgtool::Result<()> {
        for act in &a.actions {
            let r = match act {
                Action::Add => {
                    bitmap::add(&img, name, Some(a.granularity).filter(|&g| g != 0), true)
                }
                Action::Remove => bitmap::remove(&img, name),
                Action::Clear => bitmap::clear(&img, name),
                Action::Enable => bitmap::enable(&img, name),
                Action::Disable => bitmap::disable(&img, name),
                Action::Merge(s) => bitmap::merge(&img, name, src.as_ref().unwrap_or(&img), s),
            };
            r.map_err(|e| {
                let m = format!(
                    "Operation {} on bitmap {name} failed: {}",
                    act.op(),
                    e.message()
                );
                e.with_message(m)
            })?;
        }
        Ok(())
    })();
    // Bitmaps are stored on close, also after a failed operation (as
    // qemu-img's inactivation does).
    drop(src);
    let closed = img.close();
    result?;
    if let Err(e) = closed {
        return Err(Fail::Report(format!(
            "Error while closing the image: {}",
            imgtool::format::errno_text(&e)
        )));
    }
    Ok(())
}
