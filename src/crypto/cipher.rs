//! Sector ciphers: AES in XTS or CBC mode with QEMU's IV generators
//! (plain, plain64, essiv), over 512-byte sectors.

use aes::cipher::{generic_array::GenericArray, BlockDecrypt, BlockEncrypt, KeyInit};
use aes::{Aes128, Aes192, Aes256};
use xts_mode::Xts128;

use super::hash::HashAlg;
use crate::error::{Error, Result};

pub const SECTOR: usize = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Xts,
    Cbc,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IvGen {
    Plain,
    Plain64,
    Essiv(HashAlg),
}

/// What a LUKS header (or the qcow AES method) describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CipherSpec {
    /// AES key size in bytes (16, 24, 32); XTS keys are twice that.
    pub aes_bytes: usize,
    pub mode: Mode,
    pub ivgen: IvGen,
}

impl CipherSpec {
    pub fn key_len(&self) -> usize {
        match self.mode {
            Mode::Xts => self.aes_bytes * 2,
            Mode::Cbc => self.aes_bytes,
        }
    }

    /// From LUKS's cipher name ("aes") and mode ("xts-plain64",
    /// "cbc-essiv:sha256") with the header's key length.
    pub fn from_luks(name: &str, mode: &str, key_bytes: u32) -> Result<Self> {
        if name != "aes" {
            return Err(Error::unsupported(format!(
                "Algorithm '{name}' with key size {key_bytes} bytes not supported"
            )));
        }
        let (m, iv) = mode.split_once('-').ok_or_else(|| {
            Error::invalid(format!("Unexpected cipher mode string format '{mode}'"))
        })?;
        let mode_e = match m {
            "xts" => Mode::Xts,
            "cbc" => Mode::Cbc,
            _ => {
                return Err(Error::unsupported(format!(
                    "Cipher mode '{m}' not supported"
                )))
            }
        };
        let (ivname, ivhash) = match iv.split_once(':') {
            Some((a, h)) => (a, Some(h)),
            None => (iv, None),
        };
        let ivgen = match ivname {
            "plain" => IvGen::Plain,
            "plain64" => IvGen::Plain64,
            "essiv" => {
                let h = ivhash
                    .ok_or_else(|| Error::invalid("Missing IV generator hash specification"))?;
                IvGen::Essiv(HashAlg::from_name(h).ok_or_else(|| {
                    Error::unsupported(format!("Hash algorithm '{h}' not supported"))
                })?)
            }
            _ => {
                return Err(Error::unsupported(format!(
                    "IV generator '{ivname}' not supported"
                )))
            }
        };
        let kb = key_bytes as usize;
        let aes_bytes = if mode_e == Mode::Xts { kb / 2 } else { kb };
        if ![16, 24, 32].contains(&aes_bytes) || (mode_e == Mode::Xts && !kb.is_multiple_of(2)) {
            return Err(Error::unsupported(format!(
                "Algorithm '{name}' with key size {key_bytes} bytes not supported"
            )));
        }
        Ok(CipherSpec {
            aes_bytes,
            mode: mode_e,
            ivgen,
        })
    }
}

trait Engine: Send + Sync {
    fn encrypt(&self, iv: [u8; 16], sector: &mut [u8]);
    fn decrypt(&self, iv: [u8; 16], sector: &mut [u8]);
}

struct XtsEngine<
    C: BlockEncrypt + BlockDecrypt + aes::cipher::BlockCipher<BlockSize = aes::cipher::consts::U16>,
>(Xts128<C>);

impl<C> Engine for XtsEngine<C>
where
    C: BlockEncrypt + BlockDecrypt + aes::cipher::BlockCipher<BlockSize = aes::cipher::consts::U16>,
    C: Send + Sync,
{
    fn encrypt(&self, iv: [u8; 16], sector: &mut [u8]) {
        self.0.encrypt_sector(sector, iv);
    }
    fn decrypt(&self, iv: [u8; 16], sector: &mut [u8]) {
        self.0.decrypt_sector(sector, iv);
    }
}

struct CbcEngine<C>(C);

impl<C> Engine for CbcEngine<C>
where
    C: BlockEncrypt + BlockDecrypt + aes::cipher::BlockCipher<BlockSize = aes::cipher::consts::U16>,
    C: Send + Sync,
{
    fn encrypt(&self, iv: [u8; 16], sector: &mut [u8]) {
        let mut prev = iv;
        for b in sector.chunks_exact_mut(16) {
            for (x, p) in b.iter_mut().zip(prev) {
                *x ^= p;
            }
            self.0.encrypt_block(GenericArray::from_mut_slice(b));
            prev.copy_from_slice(b);
        }
    }
    fn decrypt(&self, iv: [u8; 16], sector: &mut [u8]) {
        let mut prev = iv;
        for b in sector.chunks_exact_mut(16) {
            let mut ct = [0u8; 16];
            ct.copy_from_slice(b);
            self.0.decrypt_block(GenericArray::from_mut_slice(b));
            for (x, p) in b.iter_mut().zip(prev) {
                *x ^= p;
            }
            prev = ct;
        }
    }
}

/// Encrypts one block in place (the ESSIV cipher).
type BlockFn = Box<dyn Fn(&mut [u8; 16]) + Send + Sync>;

fn aes_enc(key: &[u8]) -> Result<BlockFn> {
    fn mk<C>(key: &[u8]) -> BlockFn
    where
        C: KeyInit + BlockEncrypt + Send + Sync + 'static,
        C: aes::cipher::BlockCipher<BlockSize = aes::cipher::consts::U16>,
    {
        let c = C::new(GenericArray::from_slice(key));
        Box::new(move |b| c.encrypt_block(GenericArray::from_mut_slice(b)))
    }
    Ok(match key.len() {
        16 => mk::<Aes128>(key),
        24 => mk::<Aes192>(key),
        32 => mk::<Aes256>(key),
        n => {
            return Err(Error::unsupported(format!(
                "No AES cipher with key size {n} available"
            )))
        }
    })
}

/// A keyed sector cipher. Key schedules are zeroed on drop by the aes
/// crate's `zeroize` feature.
pub struct SectorCipher {
    engine: Box<dyn Engine>,
    ivgen: IvGen,
    essiv: Option<BlockFn>,
}

impl SectorCipher {
    pub fn new(spec: &CipherSpec, key: &[u8]) -> Result<Self> {
        if key.len() != spec.key_len() {
            return Err(Error::invalid("Cipher key length does not match"));
        }
        fn xts<C>(key: &[u8]) -> Box<dyn Engine>
        where
            C: KeyInit + BlockEncrypt + BlockDecrypt + Send + Sync + 'static,
            C: aes::cipher::BlockCipher<BlockSize = aes::cipher::consts::U16>,
        {
            let h = key.len() / 2;
            Box::new(XtsEngine(Xts128::new(
                C::new(GenericArray::from_slice(&key[..h])),
                C::new(GenericArray::from_slice(&key[h..])),
            )))
        }
        fn cbc<C>(key: &[u8]) -> Box<dyn Engine>
        where
            C: KeyInit + BlockEncrypt + BlockDecrypt + Send + Sync + 'static,
            C: aes::cipher::BlockCipher<BlockSize = aes::cipher::consts::U16>,
        {
            Box::new(CbcEngine(C::new(GenericArray::from_slice(key))))
        }
        let engine = match (spec.mode, spec.aes_bytes) {
            (Mode::Xts, 16) => xts::<Aes128>(key),
            (Mode::Xts, 24) => xts::<Aes192>(key),
            (Mode::Xts, 32) => xts::<Aes256>(key),
            (Mode::Cbc, 16) => cbc::<Aes128>(key),
            (Mode::Cbc, 24) => cbc::<Aes192>(key),
            (Mode::Cbc, 32) => cbc::<Aes256>(key),
            (_, n) => {
                return Err(Error::unsupported(format!(
                    "No AES cipher with key size {n} available"
                )))
            }
        };
        // ESSIV: IVs are sector numbers encrypted under hash(key), with
        // AES sized by the digest.
        let essiv = match spec.ivgen {
            IvGen::Essiv(h) => {
                let hk = zeroize::Zeroizing::new(h.digest(&[key]));
                Some(aes_enc(&hk)?)
            }
            _ => None,
        };
        Ok(SectorCipher {
            engine,
            ivgen: spec.ivgen,
            essiv,
        })
    }

    fn iv(&self, sector: u64) -> [u8; 16] {
        let mut iv = [0u8; 16];
        match self.ivgen {
            IvGen::Plain => iv[..4].copy_from_slice(&(sector as u32).to_le_bytes()),
            IvGen::Plain64 => iv[..8].copy_from_slice(&sector.to_le_bytes()),
            IvGen::Essiv(_) => {
                iv[..8].copy_from_slice(&sector.to_le_bytes());
                if let Some(e) = &self.essiv {
                    e(&mut iv);
                }
            }
        }
        iv
    }

    /// Encrypt whole sectors in place; `first` numbers the first one.
    pub fn encrypt(&self, first: u64, buf: &mut [u8]) {
        for (i, s) in buf.chunks_exact_mut(SECTOR).enumerate() {
            self.engine.encrypt(self.iv(first + i as u64), s);
        }
    }

    pub fn decrypt(&self, first: u64, buf: &mut [u8]) {
        for (i, s) in buf.chunks_exact_mut(SECTOR).enumerate() {
            self.engine.decrypt(self.iv(first + i as u64), s);
        }
    }
}

impl SectorCipher {
    /// A final partial sector (a multiple of 16 bytes).
    pub fn encrypt_short(&self, sector: u64, buf: &mut [u8]) {
        self.engine.encrypt(self.iv(sector), buf);
    }

    pub fn decrypt_short(&self, sector: u64, buf: &mut [u8]) {
        self.engine.decrypt(self.iv(sector), buf);
    }
}
