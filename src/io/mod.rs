//! Host files: positional I/O, allocation control, sparseness queries and
//! locks. The only place (besides `ffi`) that talks to libc directly.

pub mod blkdebug;
mod buf;
mod cputime;
mod file;
mod lock;

pub use blkdebug::{BlkdebugOptions, Injector};
pub use buf::AlignedBuf;
pub use cputime::thread_cpu_time;
pub use file::{CacheMode, HostFile};
pub use lock::LockMode;
