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

/// The legacy qcow/qcow2 AES method: AES-128-CBC, plain64 IVs, the key
/// being the passphrase's first 16 bytes, zero padded.
pub fn qcow_aes(passphrase: &[u8]) -> Result<SectorCipher> {
    let mut key = zeroize::Zeroizing::new([0u8; 16]);
    let n = passphrase.len().min(16);
    key[..n].copy_from_slice(&passphrase[..n]);
    let spec = cipher::CipherSpec {
        aes_bytes: 16,
        mode: cipher::Mode::Cbc,
        ivgen: cipher::IvGen::Plain64,
    };
    SectorCipher::new(&spec, &key[..])
}

/// Random bytes for keys, salts and UUIDs (the kernel's CSPRNG).
pub fn random_bytes(buf: &mut [u8]) -> Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .map_err(|e| Error::invalid(format!("Unable to read random bytes: {e}")))
}
