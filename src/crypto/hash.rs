//! Hash algorithms LUKS names in its header, with PBKDF2 and the
//! iteration benchmark QEMU uses to turn `iter-time` into a count.

use std::time::Duration;

use crate::io::thread_cpu_time;

use hmac::Hmac;
use sha1::Sha1;
use sha2::{Digest, Sha224, Sha256, Sha384, Sha512};

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashAlg {
    Sha1,
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

impl HashAlg {
    pub fn from_name(name: &str) -> Option<HashAlg> {
        Some(match name {
            "sha1" => HashAlg::Sha1,
            "sha224" => HashAlg::Sha224,
            "sha256" => HashAlg::Sha256,
            "sha384" => HashAlg::Sha384,
            "sha512" => HashAlg::Sha512,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            HashAlg::Sha1 => "sha1",
            HashAlg::Sha224 => "sha224",
            HashAlg::Sha256 => "sha256",
            HashAlg::Sha384 => "sha384",
            HashAlg::Sha512 => "sha512",
        }
    }

    pub fn digest_len(self) -> usize {
        match self {
            HashAlg::Sha1 => 20,
            HashAlg::Sha224 => 28,
            HashAlg::Sha256 => 32,
            HashAlg::Sha384 => 48,
            HashAlg::Sha512 => 64,
        }
    }

    /// Digest of the concatenation of `parts`.
    pub fn digest(self, parts: &[&[u8]]) -> Vec<u8> {
        fn go<D: Digest>(parts: &[&[u8]]) -> Vec<u8> {
            let mut d = D::new();
            for p in parts {
                d.update(p);
            }
            d.finalize().to_vec()
        }
        match self {
            HashAlg::Sha1 => go::<Sha1>(parts),
            HashAlg::Sha224 => go::<Sha224>(parts),
            HashAlg::Sha256 => go::<Sha256>(parts),
            HashAlg::Sha384 => go::<Sha384>(parts),
            HashAlg::Sha512 => go::<Sha512>(parts),
        }
    }

    /// PBKDF2-HMAC filling `out`.
    pub fn pbkdf2(self, password: &[u8], salt: &[u8], iters: u32, out: &mut [u8]) {
        use pbkdf2::pbkdf2 as kdf;
        // HMAC accepts keys of any length, so this cannot fail.
        let _ = match self {
            HashAlg::Sha1 => kdf::<Hmac<Sha1>>(password, salt, iters, out),
            HashAlg::Sha224 => kdf::<Hmac<Sha224>>(password, salt, iters, out),
            HashAlg::Sha256 => kdf::<Hmac<Sha256>>(password, salt, iters, out),
            HashAlg::Sha384 => kdf::<Hmac<Sha384>>(password, salt, iters, out),
            HashAlg::Sha512 => kdf::<Hmac<Sha512>>(password, salt, iters, out),
        };
    }

    /// PBKDF2 iterations this machine does in `ms` milliseconds of CPU
    /// time for an output of `out_len` bytes. QEMU times runs of at least
    /// 500 ms; a shorter measurement is as good for the count and keeps
    /// `create` with a small iter-time fast.
    pub fn iters_for(self, password: &[u8], salt: &[u8], out_len: usize, ms: u64) -> Result<u64> {
        let mut out = vec![0u8; out_len];
        let budget = Duration::from_millis(ms.clamp(20, 250));
        let mut iters: u32 = 1 << 10;
        loop {
            let t = thread_cpu_time();
            self.pbkdf2(password, salt, iters, &mut out);
            let el = thread_cpu_time().saturating_sub(t);
            if el >= budget || iters >= 1 << 30 {
                let per_sec = iters as u128 * 1_000_000 / el.as_micros().max(1);
                let scaled = per_sec * ms as u128 / 1000;
                return u64::try_from(scaled).map_err(|_| {
                    Error::out_of_range(format!("PBKDF iterations {scaled} too large to scale"))
                });
            }
            iters *= 2;
        }
    }
}
