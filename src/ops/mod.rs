//! Whole-image operations: what the CLI commands and the C ABI both call.

pub mod amend;
pub mod bench;
pub mod bitmap;
pub mod check;
pub mod commit;
pub mod compare;
pub mod convert;
pub mod create;
pub mod dd;
pub mod map;
pub mod measure;
pub mod rebase;
pub mod resize;
pub mod snapshot;

/// Progress callback: gets the percentage done (0.0 ..= 100.0); returning
/// false cancels the operation.
pub type Progress<'a> = &'a mut (dyn FnMut(f64) -> bool + Send);
