//! LUKS1 header: parse and validate (every field is untrusted), unlock a
//! key slot with a passphrase, and create a header the way QEMU lays it
//! out (8 slots of 4000 stripes after a 4 KiB header, payload after).

use zeroize::Zeroizing;

use super::af;
use super::cipher::{CipherSpec, IvGen, Mode, SectorCipher, SECTOR};
use super::hash::HashAlg;
use crate::error::{Error, Result};
use crate::format::bytes::{be16, be32};

pub const MAGIC: &[u8; 6] = b"LUKS\xba\xbe";
/// Bytes of the fixed header and its 8 slot descriptors.
pub const HEADER_LEN: usize = 208 + 8 * 48;
pub const NUM_SLOTS: usize = 8;
pub const STRIPES: u32 = 4000;
const SLOT_ENABLED: u32 = 0x00AC_71F3;
const SLOT_DISABLED: u32 = 0x0000_DEAD;
/// Key material starts after this many bytes (QEMU's header area).
const KEY_SLOT_OFFSET: u64 = 4096;
const HEADER_SECTORS: u64 = KEY_SLOT_OFFSET / SECTOR as u64;
const DIGEST_LEN: usize = 20;
const SALT_LEN: usize = 32;
const MIN_SLOT_ITERS: u64 = 1000;
const MIN_MASTER_ITERS: u64 = 1000;
/// More PBKDF2 iterations than QEMU would write with any sane iter-time
/// (minutes of CPU): refused so a hostile header cannot hang us.
pub const MAX_ITERS: u32 = 1 << 26;

#[derive(Debug, Clone, Default)]
pub struct Slot {
    pub active: u32,
    pub iters: u32,
    pub salt: [u8; SALT_LEN],
    /// In 512-byte sectors from the start of the header.
    pub key_offset: u32,
    pub stripes: u32,
}

impl Slot {
    pub fn is_active(&self) -> bool {
        self.active == SLOT_ENABLED
    }
}

#[derive(Debug, Clone)]
pub struct Header {
    pub cipher_name: String,
    pub cipher_mode: String,
    pub hash_spec: String,
    /// In sectors from the start of the header.
    pub payload_offset: u32,
    pub key_bytes: u32,
    pub mk_digest: [u8; DIGEST_LEN],
    pub mk_salt: [u8; SALT_LEN],
    pub mk_iters: u32,
    pub uuid: String,
    pub slots: [Slot; NUM_SLOTS],
}

fn cstr(b: &[u8], what: &str) -> Result<String> {
    let end = b
        .iter()
        .position(|&c| c == 0)
        .ok_or_else(|| Error::invalid(format!("LUKS header {what} is not NUL terminated")))?;
    Ok(String::from_utf8_lossy(&b[..end]).into_owned())
}

fn put_str(b: &mut [u8], s: &str) {
    b[..s.len()].copy_from_slice(s.as_bytes());
}

/// Sectors one slot's key material takes, rounded as QEMU rounds it.
fn split_sectors(key_bytes: u64, stripes: u64) -> u64 {
    (key_bytes * stripes)
        .div_ceil(SECTOR as u64)
        .next_multiple_of(HEADER_SECTORS)
}

impl Header {
    /// Parse and check as QEMU does; `detached` headers have no payload.
    pub fn parse(b: &[u8]) -> Result<Header> {
        if b.len() < HEADER_LEN || &b[..6] != MAGIC {
            return Err(Error::invalid("Volume is not in LUKS format"));
        }
        let version = be16(b, 6);
        if version != 1 {
            return Err(Error::unsupported(format!(
                "LUKS version {version} is not supported"
            )));
        }
        let mut slots: [Slot; NUM_SLOTS] = Default::default();
        for (i, s) in slots.iter_mut().enumerate() {
            let d = &b[208 + i * 48..208 + (i + 1) * 48];
            s.active = be32(d, 0);
            s.iters = be32(d, 4);
            s.salt.copy_from_slice(&d[8..40]);
            s.key_offset = be32(d, 40);
            s.stripes = be32(d, 44);
        }
        let mut h = Header {
            cipher_name: cstr(&b[8..40], "cipher name")?,
            cipher_mode: cstr(&b[40..72], "cipher mode")?,
            hash_spec: cstr(&b[72..104], "hash spec")?,
            payload_offset: be32(b, 104),
            key_bytes: be32(b, 108),
            mk_digest: [0; DIGEST_LEN],
            mk_salt: [0; SALT_LEN],
            mk_iters: be32(b, 164),
            uuid: String::from_utf8_lossy(&b[168..208])
                .trim_end_matches('\0')
                .to_string(),
            slots,
        };
        h.mk_digest.copy_from_slice(&b[112..132]);
        h.mk_salt.copy_from_slice(&b[132..164]);
        h.check()?;
        Ok(h)
    }

    fn check(&self) -> Result<()> {
        let bad = |m: String| Err(Error::invalid(m));
        if (self.payload_offset as u64) < HEADER_SECTORS {
            return bad("LUKS payload is overlapping with the header".into());
        }
        if self.mk_iters == 0 {
            return bad("LUKS key iteration count is zero".into());
        }
        if self.mk_iters > MAX_ITERS {
            return bad(format!(
                "LUKS key iteration count {} is larger than {MAX_ITERS}",
                self.mk_iters
            ));
        }
        let kb = self.key_bytes as u64;
        for (i, s) in self.slots.iter().enumerate() {
            if s.stripes != STRIPES {
                return bad(format!(
                    "Keyslot {i} is corrupted (stripes {} != {STRIPES})",
                    s.stripes as i32
                ));
            }
            if s.active != SLOT_DISABLED && s.active != SLOT_ENABLED {
                return bad(format!("Keyslot {i} state (active/disable) is corrupted"));
            }
            if s.is_active() && s.iters == 0 {
                return bad(format!("Keyslot {i} iteration count is zero"));
            }
            if s.is_active() && s.iters > MAX_ITERS {
                return bad(format!(
                    "Keyslot {i} iteration count {} is larger than {MAX_ITERS}",
                    s.iters
                ));
            }
            let start = s.key_offset as u64;
            let len = split_sectors(kb, s.stripes as u64);
            if start < HEADER_SECTORS {
                return bad(format!("Keyslot {i} is overlapping with the LUKS header"));
            }
            if start + len > self.payload_offset as u64 {
                return bad(format!(
                    "Keyslot {i} is overlapping with the encrypted payload"
                ));
            }
            for (j, t) in self.slots.iter().enumerate().skip(i + 1) {
                let s2 = t.key_offset as u64;
                let l2 = split_sectors(kb, t.stripes as u64);
                if start < s2 + l2 && s2 < start + len {
                    return bad(format!(
                        "Keyslots {i} and {j} are overlapping in the header"
                    ));
                }
            }
        }
        Ok(())
    }

    pub fn hash(&self) -> Result<HashAlg> {
        HashAlg::from_name(&self.hash_spec).ok_or_else(|| {
            Error::unsupported(format!("Hash algorithm '{}' not supported", self.hash_spec))
        })
    }

    pub fn spec(&self) -> Result<CipherSpec> {
        CipherSpec::from_luks(&self.cipher_name, &self.cipher_mode, self.key_bytes)
    }

    /// Byte offset of the encrypted payload from the header's start.
    pub fn payload_bytes(&self) -> u64 {
        self.payload_offset as u64 * SECTOR as u64
    }

    pub fn serialize(&self) -> Vec<u8> {
        let mut b = vec![0u8; HEADER_LEN];
        b[..6].copy_from_slice(MAGIC);
        b[6..8].copy_from_slice(&1u16.to_be_bytes());
        put_str(&mut b[8..40], &self.cipher_name);
        put_str(&mut b[40..72], &self.cipher_mode);
        put_str(&mut b[72..104], &self.hash_spec);
        b[104..108].copy_from_slice(&self.payload_offset.to_be_bytes());
        b[108..112].copy_from_slice(&self.key_bytes.to_be_bytes());
        b[112..132].copy_from_slice(&self.mk_digest);
        b[132..164].copy_from_slice(&self.mk_salt);
        b[164..168].copy_from_slice(&self.mk_iters.to_be_bytes());
        put_str(&mut b[168..208], &self.uuid);
        for (i, s) in self.slots.iter().enumerate() {
            let d = &mut b[208 + i * 48..208 + (i + 1) * 48];
            d[0..4].copy_from_slice(&s.active.to_be_bytes());
            d[4..8].copy_from_slice(&s.iters.to_be_bytes());
            d[8..40].copy_from_slice(&s.salt);
            d[40..44].copy_from_slice(&s.key_offset.to_be_bytes());
            d[44..48].copy_from_slice(&s.stripes.to_be_bytes());
        }
        b
    }
}

/// An opened LUKS volume: its header and the payload cipher.
pub struct Unlocked {
    pub header: Header,
    pub cipher: SectorCipher,
}

/// Try each active slot with `password`; `read(off, buf)` reads the
/// header area (offsets from the header's start).
pub fn unlock(
    header: Header,
    password: &[u8],
    read: &dyn Fn(u64, &mut [u8]) -> Result<()>,
) -> Result<Unlocked> {
    let hash = header.hash()?;
    let spec = header.spec()?;
    let klen = header.key_bytes as usize;
    for s in header.slots.iter().filter(|s| s.is_active()) {
        let mut slot_key = Zeroizing::new(vec![0u8; klen]);
        hash.pbkdf2(password, &s.salt, s.iters, &mut slot_key);
        let mut material = Zeroizing::new(vec![0u8; klen * s.stripes as usize]);
        read(s.key_offset as u64 * SECTOR as u64, &mut material)?;
        let c = SectorCipher::new(&spec, &slot_key)?;
        decrypt_any(&c, &mut material);
        let key = af::merge(hash, &material, klen);
        let mut digest = [0u8; DIGEST_LEN];
        hash.pbkdf2(&key, &header.mk_salt, header.mk_iters, &mut digest);
        if digest == header.mk_digest {
            let cipher = SectorCipher::new(&spec, &key)?;
            return Ok(Unlocked { header, cipher });
        }
    }
    Err(Error::invalid(
        "Invalid password, cannot unlock any keyslot",
    ))
}

/// Decrypt key material whose length need not be whole sectors (QEMU
/// takes the tail as a short last sector).
fn decrypt_any(c: &SectorCipher, buf: &mut [u8]) {
    let whole = buf.len() / SECTOR * SECTOR;
    c.decrypt(0, &mut buf[..whole]);
    if whole < buf.len() {
        c.decrypt_short((whole / SECTOR) as u64, &mut buf[whole..]);
    }
}

fn encrypt_any(c: &SectorCipher, buf: &mut [u8]) {
    let whole = buf.len() / SECTOR * SECTOR;
    c.encrypt(0, &mut buf[..whole]);
    if whole < buf.len() {
        c.encrypt_short((whole / SECTOR) as u64, &mut buf[whole..]);
    }
}

/// Creation parameters (QEMU's defaults: aes-256-xts-plain64, sha256).
#[derive(Debug, Clone)]
pub struct CreateParams {
    pub spec: CipherSpec,
    pub hash: HashAlg,
    pub iter_time_ms: u64,
}

impl Default for CreateParams {
    fn default() -> Self {
        CreateParams {
            spec: CipherSpec {
                aes_bytes: 32,
                mode: Mode::Xts,
                ivgen: IvGen::Plain64,
            },
            hash: HashAlg::Sha256,
            iter_time_ms: 2000,
        }
    }
}

impl CreateParams {
    /// From `cipher-alg`, `cipher-mode`, `ivgen-alg`, `ivgen-hash-alg`,
    /// `hash-alg`, `iter-time` as `get` returns them (option names as
    /// given, for messages, are `prefix` + key).
    pub fn from_options(get: &dyn Fn(&str) -> Option<String>, prefix: &str) -> Result<Self> {
        let bad = |k: &str, v: &str| {
            Err(Error::invalid(format!(
                "Parameter '{prefix}{k}' does not accept value '{v}'"
            )))
        };
        let mut p = CreateParams::default();
        if let Some(v) = get("cipher-alg") {
            p.spec.aes_bytes = match v.as_str() {
                "aes-128" => 16,
                "aes-192" => 24,
                "aes-256" => 32,
                _ => return bad("cipher-alg", &v),
            };
        }
        if let Some(v) = get("cipher-mode") {
            p.spec.mode = match v.as_str() {
                "xts" => Mode::Xts,
                "cbc" => Mode::Cbc,
                _ => return bad("cipher-mode", &v),
            };
        }
        let ivhash = match get("ivgen-hash-alg") {
            Some(v) => match HashAlg::from_name(&v) {
                Some(h) => Some(h),
                None => return bad("ivgen-hash-alg", &v),
            },
            None => None,
        };
        if let Some(v) = get("ivgen-alg") {
            p.spec.ivgen = match v.as_str() {
                "plain" => IvGen::Plain,
                "plain64" => IvGen::Plain64,
                "essiv" => IvGen::Essiv(ivhash.unwrap_or(HashAlg::Sha256)),
                _ => return bad("ivgen-alg", &v),
            };
        }
        if let Some(v) = get("hash-alg") {
            p.hash = match HashAlg::from_name(&v) {
                Some(h) => h,
                None => return bad("hash-alg", &v),
            };
        }
        if let Some(v) = get("iter-time") {
            p.iter_time_ms = match v.parse::<u64>() {
                Ok(n) if n > 0 => n,
                _ => {
                    return Err(Error::invalid(format!(
                        "Parameter '{prefix}iter-time' expects a number"
                    )))
                }
            };
        }
        Ok(p)
    }

    fn mode_string(&self) -> String {
        let m = match self.spec.mode {
            Mode::Xts => "xts",
            Mode::Cbc => "cbc",
        };
        let iv = match self.spec.ivgen {
            IvGen::Plain => "plain".to_string(),
            IvGen::Plain64 => "plain64".to_string(),
            IvGen::Essiv(h) => format!("essiv:{}", h.name()),
        };
        format!("{m}-{iv}")
    }
}

/// Bytes of the LUKS area (header and 8 key slots) `p` creates.
pub fn area_len(p: &CreateParams) -> u64 {
    (HEADER_SECTORS + NUM_SLOTS as u64 * split_sectors(p.spec.key_len() as u64, STRIPES as u64))
        * SECTOR as u64
}

fn uuid() -> Result<String> {
    let mut u = [0u8; 16];
    super::random_bytes(&mut u)?;
    u[6] = (u[6] & 0x0f) | 0x40;
    u[8] = (u[8] & 0x3f) | 0x80;
    let h: String = u.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    ))
}

fn iters(
    hash: HashAlg,
    pw: &[u8],
    salt: &[u8],
    out: usize,
    ms: u64,
    div: u64,
    min: u64,
) -> Result<u32> {
    let n = hash.iters_for(pw, salt, out, ms)? / div;
    u32::try_from(n.max(min))
        .map_err(|_| Error::out_of_range(format!("PBKDF iterations {n} larger than {}", u32::MAX)))
}

/// A new LUKS header area (header plus slot 0 holding a fresh master key
/// under `password`), zero elsewhere, and the payload cipher.
pub fn create(p: &CreateParams, password: &[u8]) -> Result<(Vec<u8>, Unlocked)> {
    let klen = p.spec.key_len();
    let mut master = Zeroizing::new(vec![0u8; klen]);
    super::random_bytes(&mut master)?;
    let mut mk_salt = [0u8; SALT_LEN];
    super::random_bytes(&mut mk_salt)?;
    // As QEMU: an eighth of iter-time's worth for the digest.
    let mk_iters = iters(
        p.hash,
        &master,
        &mk_salt,
        DIGEST_LEN,
        p.iter_time_ms,
        8,
        MIN_MASTER_ITERS,
    )?;
    let mut mk_digest = [0u8; DIGEST_LEN];
    p.hash.pbkdf2(&master, &mk_salt, mk_iters, &mut mk_digest);
    let sks = split_sectors(klen as u64, STRIPES as u64);
    let mut slots: [Slot; NUM_SLOTS] = Default::default();
    for (i, s) in slots.iter_mut().enumerate() {
        s.active = SLOT_DISABLED;
        s.key_offset = (HEADER_SECTORS + i as u64 * sks) as u32;
        s.stripes = STRIPES;
    }
    let payload = HEADER_SECTORS + NUM_SLOTS as u64 * sks;
    let mut h = Header {
        cipher_name: "aes".into(),
        cipher_mode: p.mode_string(),
        hash_spec: p.hash.name().into(),
        payload_offset: payload as u32,
        key_bytes: klen as u32,
        mk_digest,
        mk_salt,
        mk_iters,
        uuid: uuid()?,
        slots,
    };
    let mut area = vec![0u8; (payload * SECTOR as u64) as usize];
    // Slot 0: the master key split, under a key derived from the password.
    let s0 = &mut h.slots[0];
    super::random_bytes(&mut s0.salt)?;
    s0.iters = iters(
        p.hash,
        password,
        &s0.salt,
        klen,
        p.iter_time_ms,
        1,
        MIN_SLOT_ITERS,
    )?;
    let mut slot_key = Zeroizing::new(vec![0u8; klen]);
    p.hash.pbkdf2(password, &s0.salt, s0.iters, &mut slot_key);
    let mut material = af::split(p.hash, &master, STRIPES as usize)?;
    encrypt_any(&SectorCipher::new(&p.spec, &slot_key)?, &mut material);
    let off = s0.key_offset as usize * SECTOR;
    area[off..off + material.len()].copy_from_slice(&material);
    s0.active = SLOT_ENABLED;
    area[..HEADER_LEN].copy_from_slice(&h.serialize());
    let cipher = SectorCipher::new(&p.spec, &master)?;
    Ok((area, Unlocked { header: h, cipher }))
}

/// QAPI QCryptoBlockInfoLUKS of `h` (qcow2 adds `"format": "luks"` in
/// front when `with_format`).
pub fn info_json(h: &Header, with_format: bool) -> crate::json::Json {
    use crate::json::Json;
    let (mode, ivgen) = h
        .cipher_mode
        .split_once('-')
        .unwrap_or((h.cipher_mode.as_str(), ""));
    let (ivgen_alg, ivgen_hash) = match ivgen.split_once(':') {
        Some((a, hh)) => (a.to_string(), Some(hh.to_string())),
        None => (ivgen.to_string(), None),
    };
    // XTS splits the key in two; the cipher is named by one half.
    let bits = if mode == "xts" {
        h.key_bytes as u64 * 4
    } else {
        h.key_bytes as u64 * 8
    };
    let mut j = Json::object();
    if with_format {
        j.set("format", "luks");
    }
    j.set("cipher-alg", format!("{}-{bits}", h.cipher_name));
    j.set("cipher-mode", mode);
    j.set("ivgen-alg", ivgen_alg);
    if let Some(hh) = ivgen_hash {
        j.set("ivgen-hash-alg", hh);
    }
    j.set("hash-alg", h.hash_spec.clone());
    j.set("detached-header", false);
    j.set("payload-offset", h.payload_bytes());
    j.set("master-key-iters", h.mk_iters as u64);
    j.set("uuid", h.uuid.clone());
    let slots = h
        .slots
        .iter()
        .map(|s| {
            let mut o = Json::object().with("active", s.is_active());
            if s.is_active() {
                o.set("iters", s.iters as u64);
                o.set("stripes", s.stripes as u64);
            }
            o.set("key-offset", s.key_offset as u64 * SECTOR as u64);
            o
        })
        .collect();
    j.set("slots", Json::Array(slots));
    j
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_then_unlock() {
        let p = CreateParams {
            iter_time_ms: 5,
            ..Default::default()
        };
        let (area, u) = create(&p, b"pw").unwrap();
        let h = Header::parse(&area).unwrap();
        let read = |off: u64, buf: &mut [u8]| {
            buf.copy_from_slice(&area[off as usize..off as usize + buf.len()]);
            Ok(())
        };
        let v = unlock(h.clone(), b"pw", &read).unwrap();
        let mut a = vec![7u8; 1024];
        u.cipher.encrypt(5, &mut a);
        v.cipher.decrypt(5, &mut a);
        assert_eq!(a, vec![7u8; 1024]);
        let e = unlock(h, b"px", &read).err().unwrap();
        assert_eq!(e.message(), "Invalid password, cannot unlock any keyslot");
    }

    #[test]
    fn hostile_fields_are_refused() {
        let p = CreateParams {
            iter_time_ms: 5,
            ..Default::default()
        };
        let (area, _) = create(&p, b"pw").unwrap();
        let edit = |at: usize, v: u32| {
            let mut b = area[..HEADER_LEN].to_vec();
            b[at..at + 4].copy_from_slice(&v.to_be_bytes());
            Header::parse(&b).err().map(|e| e.message().to_string())
        };
        // Stripes, iterations, key offsets of slot 1; key length.
        let s1 = 208 + 48;
        assert!(edit(s1 + 44, 1 << 30).unwrap().contains("stripes"));
        assert!(edit(208 + 4, u32::MAX).unwrap().contains("iteration"));
        assert!(edit(164, u32::MAX).unwrap().contains("iteration"));
        assert!(edit(s1 + 40, u32::MAX).unwrap().contains("overlapping"));
        assert!(edit(s1 + 40, 0).unwrap().contains("overlapping"));
        let big_key = {
            let mut b = area[..HEADER_LEN].to_vec();
            b[108..112].copy_from_slice(&u32::MAX.to_be_bytes());
            Header::parse(&b)
        };
        assert!(big_key.is_err());
    }
}
