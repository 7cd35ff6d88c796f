//! `snapshot [-f FMT | --image-opts] [-l | -a SNAPSHOT | -c SNAPSHOT |
//! -d SNAPSHOT] [-U] [-q] [--object OBJDEF] FILENAME`

use imgtool::ops::snapshot;
use imgtool::OpenOptions;

use crate::app::{out, CmdResult, Fail, Prog};
use crate::cmd_resize::warn_if_probed_raw;
use crate::common::{ch, parse_object, ImageSpec, OPT_IMAGE_OPTS, OPT_OBJECT};
use crate::getopt::{Getopt, HasArg::*, LongOpt};
use crate::render;

/// qemu-img 10.0.2's table for `snapshot`, in its order. Its long forms
/// of -a/-c/-d take no argument (the snapshot name is then missing).
const LONGS: &[LongOpt] = &[
    LongOpt::new("help", No, ch('h')),
    LongOpt::new("quiet", No, ch('q')),
    LongOpt::new("object", Required, OPT_OBJECT),
    LongOpt::new("image-opts", No, OPT_IMAGE_OPTS),
    LongOpt::new("format", Required, ch('f')),
    LongOpt::new("force-share", No, ch('U')),
    LongOpt::new("list", No, ch('l')),
    LongOpt::new("apply", No, ch('a')),
    LongOpt::new("create", No, ch('c')),
    LongOpt::new("delete", No, ch('d')),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    List,
    Apply,
    Create,
    Delete,
}

#[derive(Debug, Default)]
struct Args {
    format: Option<String>,
    image_opts: bool,
    force_share: bool,
    action: Option<Action>,
    /// None when a long option named the action (printed as "(null)").
    name: Option<String>,
    operands: Vec<String>,
}

fn parse(prog: &Prog, args: Vec<String>) -> Result<Args, Fail> {
    let mut a = Args::default();
    let mut g = Getopt::new(&prog.argv0, args, "la:c:d:f:hqU", LONGS);
    for o in g.by_ref() {
        let o = o.map_err(Fail::Getopt)?;
        let action = match char::from_u32(o.val as u32).unwrap_or('\0') {
            'l' => Some(Action::List),
            'a' => Some(Action::Apply),
            'c' => Some(Action::Create),
            'd' => Some(Action::Delete),
            _ => None,
        };
        if let Some(act) = action {
            if a.action.is_some() {
                return Err(Fail::Usage("Cannot mix '-l', '-a', '-c', '-d'".into()));
            }
            a.action = Some(act);
            a.name = o.arg;
            continue;
        }
        let arg = o.arg.unwrap_or_default();
        match o.val {
            v if v == ch('h') => {
                crate::help::print_command(prog, "snapshot");
                return Err(Fail::Exit(0));
            }
            v if v == ch('f') => a.format = Some(arg),
            v if v == ch('U') => a.force_share = true,
            OPT_OBJECT => parse_object(&arg)?,
            OPT_IMAGE_OPTS => a.image_opts = true,
            _ => {}
        }
    }
    a.operands = g.operands();
    Ok(a)
}

fn list_text(img: &imgtool::Image) -> String {
    let list = snapshot::list(img);
    if list.is_empty() {
        return String::new();
    }
    let mut s = String::from("Snapshot list:\n");
    s.push_str(&render::snapshot_header());
    s.push('\n');
    for sn in &list {
        s.push_str(&render::snapshot_row(sn));
        s.push('\n');
    }
    s
}

pub fn run(prog: &Prog, args: Vec<String>) -> CmdResult {
    let a = parse(prog, args)?;
    if a.operands.len() != 1 {
        return Err(Fail::Usage("Expecting one image file name".into()));
    }
    let action = a.action.unwrap_or(Action::List);
    let writable = action != Action::List;
    let spec = ImageSpec::parse(&a.operands[0], a.image_opts, a.format.as_deref())?;
    if writable && a.force_share {
        return Err(Fail::Report(format!(
            "Could not open '{}': force-share=on can only be used with read-only images",
            spec.arg
        )));
    }
    let img = spec.open(&OpenOptions {
        writable,
        force_share: a.force_share,
        ..OpenOptions::default()
    })?;
    if writable {
        warn_if_probed_raw(&img);
    }
    let name = a.name.as_deref();
    let shown = name.unwrap_or("(null)");
    match action {
        Action::List => out(&list_text(&img)),
        Action::Create => match name {
            Some(n) => {
                snapshot::create(&img, n)?;
            }
            // qemu-img 10.0.2 crashes here; we refuse instead.
            None => {
                return Err(Fail::Report(format!(
                    "Could not create snapshot '{shown}': Invalid argument"
                )))
            }
        },
        Action::Apply => match name {
            Some(n) => {
                // QEMU's goto falls back to the raw node's file child and
                // reopens it, which probes (and warns) a second time.
                if img.format() == "raw" {
                    warn_if_probed_raw(&img);
                }
                snapshot::apply(&img, n)?
            }
            None => {
                return Err(Fail::Report(format!(
                    "Could not apply snapshot '{shown}': Failed to load snapshot: No such file or directory"
                )))
            }
        },
        Action::Delete => match name {
            Some(n) => snapshot::delete(&img, n)?,
            None => {
                return Err(Fail::Report(format!(
                    "Could not delete snapshot '{shown}': snapshot not found"
                )))
            }
        },
    }
    img.close()?;
    Ok(())
}
