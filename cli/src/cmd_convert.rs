use crate::app::{CmdResult, Prog};
pub fn run(_prog: &Prog, _args: Vec<String>) -> CmdResult { Ok(()) }
