//! The C ABI of libimgtool (`include/imgtool.h` is generated from this
//! module by cbindgen in `build.rs`).
//!
//! A thin layer: it checks and converts C arguments, calls into
//! [`crate::image`] and [`crate::ops`], and maps errors to codes. Conventions
//! (see ARCHITECTURE.md, "C ABI conventions"):
//!
//! - every fallible function returns `int`: `IMGTOOL_OK` (0) or a negative
//!   `IMGTOOL_E*` code, with the message in `imgtool_last_error()` and the
//!   errno in `imgtool_last_errno()` (per thread, until the next call);
//! - every body runs inside the panic boundary (the private `panic`
//!   module), so a panic becomes `IMGTOOL_EPANIC` and never unwinds into C;
//! - every pointer is NULL-checked and every string checked to be UTF-8;
//! - options structs start with `uint32_t struct_size`, filled by their
//!   `_init` function and checked by the callee (`args::read_options`);
//! - handles are `Box`es handed to C by `imgtool_open` and taken back by
//!   `imgtool_close`; strings handed to C are freed by
//!   `imgtool_free_string`.
//!
//! Every `unsafe` block here carries a `// SAFETY:` comment saying why it
//! holds; the `# Safety` section of each function is its contract with C.

#![deny(unsafe_op_in_unsafe_fn)]

// Declaration order is the order of the generated header: codes and
// strings first, then the image handle, then whole-image operations.
pub mod error;

pub mod strings;

pub mod image;

pub mod secret;

pub mod zeroes;

pub mod info;

pub mod map;

pub mod snapshot;

pub mod create;

pub mod convert;

pub mod check;

pub mod compare;

pub mod measure;

pub mod commit;

pub mod rebase;

pub mod resize;

pub mod amend;

pub mod dd;

pub mod bench;

pub mod notice;

mod args;
mod panic;
mod progress;

#[cfg(test)]
mod tests;

pub use amend::*;
pub use bench::*;
pub use check::*;
pub use commit::*;
pub use compare::*;
pub use convert::*;
pub use create::*;
pub use dd::*;
pub use error::*;
pub use image::*;
pub use info::*;
pub use map::*;
pub use measure::*;
pub use notice::*;
pub use rebase::*;
pub use resize::*;
pub use secret::*;
pub use snapshot::*;
pub use strings::*;
pub use zeroes::*;
