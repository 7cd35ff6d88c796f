//! libimgtool: create, inspect, read, write and convert disk images in the
//! formats QEMU uses, with the behaviour of `qemu-img`.
//!
//! Layers (see ARCHITECTURE.md): `ffi` (C ABI) and the CLI call `ops`
//! (whole-image operations), which use `image` (a driver plus its backing
//! chain), which uses `format` drivers, which do host I/O through `io`.

pub mod crypto;
pub mod error;
pub mod events;
pub mod ffi;
pub mod format;
pub mod image;
pub mod info;
pub mod io;
pub mod json;
pub mod ops;
pub mod size;

pub use error::{Error, ErrorKind, Result};
pub use image::{ChainExtent, Image, OpenOptions};
pub use info::ImageInfo;

/// Library version (also `imgtool_version()` in C).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
