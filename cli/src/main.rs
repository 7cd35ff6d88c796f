//! `imgtool`: qemu-img's command line on top of libimgtool.
//!
//! main.rs parses the global options and dispatches; each command lives in
//! its own `cmd_*.rs`; `getopt.rs` reproduces glibc's option parsing and
//! messages; `render.rs` prints reports for humans.

mod app;
mod cmd_amend;
mod cmd_bench;
mod cmd_bitmap;
mod cmd_check;
mod cmd_commit;
mod cmd_compare;
mod cmd_convert;
mod cmd_create;
mod cmd_dd;
mod cmd_info;
mod cmd_map;
mod cmd_measure;
mod cmd_rebase;
mod cmd_resize;
mod cmd_snapshot;
mod common;
mod copy_steps;
mod createopts;
mod getopt;
mod help;
mod num;
mod progress;
mod render;

use app::{out, CmdResult, Fail, Prog};
use common::ch;
use getopt::{Getopt, HasArg, LongOpt};

type Handler = fn(&Prog, Vec<String>) -> CmdResult;

/// Every qemu-img command; those without a handler are separate work items
/// and fail clearly instead of being "not found".
const COMMANDS: &[(&str, Option<Handler>)] = &[
    ("amend", Some(cmd_amend::run)),
    ("bench", Some(cmd_bench::run)),
    ("bitmap", Some(cmd_bitmap::run)),
    ("check", Some(cmd_check::run)),
    ("commit", Some(cmd_commit::run)),
    ("compare", Some(cmd_compare::run)),
    ("convert", Some(cmd_convert::run)),
    ("create", Some(cmd_create::run)),
    ("dd", Some(cmd_dd::run)),
    ("info", Some(cmd_info::run)),
    ("map", Some(cmd_map::run)),
    ("measure", Some(cmd_measure::run)),
    ("rebase", Some(cmd_rebase::run)),
    ("resize", Some(cmd_resize::run)),
    ("snapshot", Some(cmd_snapshot::run)),
];

const LONGS: &[LongOpt] = &[
    LongOpt::new("help", HasArg::No, ch('h')),
    LongOpt::new("version", HasArg::No, ch('V')),
    LongOpt::new("trace", HasArg::Required, ch('T')),
];

fn main() {
    let args: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    std::process::exit(run(args));
}

fn run(mut args: Vec<String>) -> i32 {
    let argv0 = if args.is_empty() {
        "imgtool".to_string()
    } else {
        args.remove(0)
    };
    let prog = Prog::from_argv0(&argv0);
    match global(&prog, args) {
        Ok((cmd, rest)) => dispatch(&prog, &cmd, rest),
        Err(f) => prog.finish(Err(f)),
    }
}

/// Global options up to the command name (getopt "+hVT:").
fn global(prog: &Prog, args: Vec<String>) -> Result<(String, Vec<String>), Fail> {
    if args.is_empty() {
        return Err(Fail::Usage("Not enough arguments".into()));
    }
    let mut g = Getopt::new(&prog.argv0, args, "+hVT:", LONGS);
    for o in g.by_ref() {
        let o = o.map_err(Fail::Getopt)?;
        match o.val {
            v if v == ch('h') => {
                out(&help::main_text(prog));
                return Err(Fail::Exit(0));
            }
            v if v == ch('V') => {
                out(&help::version_text(prog));
                return Err(Fail::Exit(0));
            }
            // -T/--trace: QEMU trace events; we have none to enable.
            _ => {}
        }
    }
    let mut rest = g.operands();
    if rest.is_empty() {
        return Err(Fail::Usage("Not enough arguments".into()));
    }
    let cmd = rest.remove(0);
    Ok((cmd, rest))
}

fn dispatch(prog: &Prog, cmd: &str, args: Vec<String>) -> i32 {
    let Some((_, handler)) = COMMANDS.iter().find(|(n, _)| *n == cmd) else {
        return prog.finish(Err(Fail::Usage(format!("Command not found: {cmd}"))));
    };
    let cprog = prog.for_command(cmd);
    match handler {
        Some(h) => cprog.finish(h(&cprog, args)),
        None => cprog.finish(not_implemented(&cprog, cmd, &args)),
    }
}

/// Commands still to be written: `--help` works, anything else fails.
fn not_implemented(prog: &Prog, cmd: &str, args: &[String]) -> CmdResult {
    if args.iter().any(|a| a == "-h" || a == "--help") {
        help::print_command(prog, cmd);
        return Ok(());
    }
    Err(Fail::Report(format!(
        "Command '{cmd}' is not implemented yet"
    )))
}
