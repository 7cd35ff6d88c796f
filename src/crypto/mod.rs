//! Disk encryption as QEMU does it: LUKS1 (qcow2-embedded and the raw
//! `luks` driver) and the legacy qcow AES-CBC. Split by job: hash and
//! PBKDF2 ([`hash`]), the anti-forensic splitter ([`af`]), sector ciphers
//! ([`cipher`]), the LUKS header ([`luks`]) and the process-wide secret
//! store `--object secret` fills ([`secret`]).

pub mod af;
pub mod cipher;
pub mod hash;
pub mod luks;
pub mod secret;

pub use cipher::SectorCipher;

use crate::error::{Error, Result};

/// Random bytes for keys, salts and UUIDs (the kernel's CSPRNG).
pub fn random_bytes(buf: &mut [u8]) -> Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .map_err(|e| Error::invalid(format!("Unable to read random bytes: {e}")))
}
