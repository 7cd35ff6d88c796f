//! qcow2 (QEMU copy-on-write v2/v3).

use std::path::Path;

use super::{BackingRead, CreateOptions, Driver, DriverOpenOptions, Extent, OptDesc, OptKind};
use crate::error::{Error, Result};
use crate::io::HostFile;

pub const MAGIC: [u8; 4] = *b"QFI\xfb";

pub const CREATE_OPTS: &[OptDesc] = &[
    OptDesc {
        name: "backing_file",
        kind: OptKind::Str,
        help: "File name of a base image",
    },
    OptDesc {
        name: "backing_fmt",
        kind: OptKind::Str,
        help: "Image format of the base image",
    },
    OptDesc {
        name: "cluster_size",
        kind: OptKind::Size,
        help: "qcow2 cluster size",
    },
    OptDesc {
        name: "compat",
        kind: OptKind::Str,
        help: "Compatibility level (v2 [0.10] or v3 [1.1])",
    },
    OptDesc {
        name: "compression_type",
        kind: OptKind::Str,
        help: "Compression method used for image cluster compression",
    },
    OptDesc {
        name: "data_file",
        kind: OptKind::Str,
        help: "File name of an external data file",
    },
    OptDesc {
        name: "data_file_raw",
        kind: OptKind::Bool,
        help: "The external data file must stay valid as a raw image",
    },
    OptDesc {
        name: "encrypt.cipher-alg",
        kind: OptKind::Str,
        help: "Name of encryption cipher algorithm",
    },
    OptDesc {
        name: "encrypt.cipher-mode",
        kind: OptKind::Str,
        help: "Name of encryption cipher mode",
    },
    OptDesc {
        name: "encrypt.format",
        kind: OptKind::Str,
        help: "Encrypt the image, format choices: 'aes', 'luks'",
    },
    OptDesc {
        name: "encrypt.hash-alg",
        kind: OptKind::Str,
        help: "Name of encryption hash algorithm",
    },
    OptDesc {
        name: "encrypt.iter-time",
        kind: OptKind::Number,
        help: "Time to spend in PBKDF in milliseconds",
    },
    OptDesc {
        name: "encrypt.ivgen-alg",
        kind: OptKind::Str,
        help: "Name of IV generator algorithm",
    },
    OptDesc {
        name: "encrypt.ivgen-hash-alg",
        kind: OptKind::Str,
        help: "Name of IV generator hash algorithm",
    },
    OptDesc {
        name: "encrypt.key-secret",
        kind: OptKind::Str,
        help: "ID of secret providing qcow AES key or LUKS passphrase",
    },
    OptDesc {
        name: "encryption",
        kind: OptKind::Bool,
        help: "Encrypt the image with format 'aes'. (Deprecated in favor of encrypt.format=aes)",
    },
    OptDesc {
        name: "extended_l2",
        kind: OptKind::Bool,
        help: "Extended L2 tables",
    },
    OptDesc {
        name: "extent_size_hint",
        kind: OptKind::Size,
        help: "Extent size hint for the image file, 0 to disable",
    },
    OptDesc {
        name: "lazy_refcounts",
        kind: OptKind::Bool,
        help: "Postpone refcount updates",
    },
    OptDesc {
        name: "nocow",
        kind: OptKind::Bool,
        help: "Turn off copy-on-write (valid only on btrfs)",
    },
    OptDesc {
        name: "preallocation",
        kind: OptKind::Str,
        help: "Preallocation mode (allowed values: off, metadata, falloc, full)",
    },
    OptDesc {
        name: "refcount_bits",
        kind: OptKind::Number,
        help: "Width of a reference count entry in bits",
    },
    OptDesc {
        name: "size",
        kind: OptKind::Size,
        help: "Virtual disk size",
    },
];

pub fn probe(head: &[u8]) -> bool {
    head.len() >= 8
        && head[..4] == MAGIC
        && u32::from_be_bytes([head[4], head[5], head[6], head[7]]) >= 2
}

pub struct Qcow2 {
    file: HostFile,
}

impl Qcow2 {
    pub fn open(file: HostFile, _opts: &DriverOpenOptions) -> Result<Self> {
        let _ = &file;
        Err(Error::unsupported("qcow2 is not implemented yet"))
    }
}

pub fn create(_path: &Path, _size: u64, _opts: &CreateOptions) -> Result<()> {
    Err(Error::unsupported("qcow2 is not implemented yet"))
}

impl Driver for Qcow2 {
    fn format_name(&self) -> &'static str {
        "qcow2"
    }
    fn virtual_size(&self) -> u64 {
        0
    }
    fn host_file(&self) -> &HostFile {
        &self.file
    }
    fn block_status(&self, _off: u64, _max: u64) -> Result<Extent> {
        Err(Error::unsupported("qcow2 is not implemented yet"))
    }
    fn read_at(&self, _buf: &mut [u8], _off: u64, _b: &dyn BackingRead) -> Result<()> {
        Err(Error::unsupported("qcow2 is not implemented yet"))
    }
    fn write_at(&self, _buf: &[u8], _off: u64, _b: &dyn BackingRead) -> Result<()> {
        Err(Error::unsupported("qcow2 is not implemented yet"))
    }
    fn write_zeroes(&self, _off: u64, _len: u64, _u: bool, _b: &dyn BackingRead) -> Result<()> {
        Err(Error::unsupported("qcow2 is not implemented yet"))
    }
    fn flush(&self) -> Result<()> {
        Ok(())
    }
}
