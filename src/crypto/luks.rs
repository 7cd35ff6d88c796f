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

/// An opened LUKS volume: its header, the payload cipher and the master
/// key (kept for adding key slots with `amend`).
pub struct Unlocked {
    pub header: Header,
    pub cipher: SectorCipher,
    pub master: Zeroizing<Vec<u8>>,
}

/// The master key slot `i` yields for `password`, if it is active and the
/// password is right (QEMU's qcrypto_block_luks_load_key).
fn load_key(
    header: &Header,
    i: usize,
    password: &[u8],
    read: &dyn Fn(u64, &mut [u8]) -> Result<()>,
) -> Result<Option<Zeroizing<Vec<u8>>>> {
    let Some(s) = header.slots.get(i).filter(|s| s.is_active()) else {
        return Ok(None);
    };
    let hash = header.hash()?;
    let spec = header.spec()?;
    let klen = header.key_bytes as usize;
    let mut slot_key = Zeroizing::new(vec![0u8; klen]);
    hash.pbkdf2(password, &s.salt, s.iters, &mut slot_key);
    let mut material = Zeroizing::new(vec![0u8; klen * s.stripes as usize]);
    read(s.key_offset as u64 * SECTOR as u64, &mut material)?;
    let c = SectorCipher::new(&spec, &slot_key)?;
    decrypt_any(&c, &mut material);
    let key = af::merge(hash, &material, klen);
    let mut digest = [0u8; DIGEST_LEN];
    hash.pbkdf2(&key, &header.mk_salt, header.mk_iters, &mut digest);
    Ok((digest == header.mk_digest).then_some(key))
}

/// Try each active slot with `password`; `read(off, buf)` reads the
/// header area (offsets from the header's start).
pub fn unlock(
    header: Header,
    password: &[u8],
    read: &dyn Fn(u64, &mut [u8]) -> Result<()>,
) -> Result<Unlocked> {
    let spec = header.spec()?;
    for i in 0..NUM_SLOTS {
        if let Some(master) = load_key(&header, i, password, read)? {
            let cipher = SectorCipher::new(&spec, &master)?;
            return Ok(Unlocked {
                header,
                cipher,
                master,
            });
        }
    }
    Err(Error::invalid(
        "Invalid password, cannot unlock any keyslot",
    ))
}

/// What `amend -o encrypt.*` asks of the key slots (secrets by id, looked
/// up when QEMU looks them up, so the first error is the same).
#[derive(Debug, Clone, Default)]
pub struct AmendParams {
    pub state: Option<String>,
    pub keyslot: Option<i64>,
    pub old_secret: Option<String>,
    pub new_secret: Option<String>,
    pub iter_time: Option<u64>,
}

impl AmendParams {
    /// From the `state`, `keyslot`, `old-secret`, `new-secret` and
    /// `iter-time` options as `get` returns them (already checked to be
    /// numbers where they must be).
    pub fn from_options(get: &dyn Fn(&str) -> Option<String>) -> Result<Self> {
        let num = |k: &str| -> Result<Option<i64>> {
            match get(k) {
                None => Ok(None),
                Some(v) => v.parse::<i64>().map(Some).map_err(|_| {
                    Error::invalid(format!("Parameter '{k}' expects an int64 value or range"))
                }),
            }
        };
        Ok(AmendParams {
            state: get("state"),
            keyslot: num("keyslot")?,
            old_secret: get("old-secret"),
            new_secret: get("new-secret"),
            iter_time: num("iter-time")?.map(|v| v.max(0) as u64),
        })
    }
}

/// Header-area writer: `write(off, bytes)`, offsets from the header start.
pub type WriteFn<'a> = &'a dyn Fn(u64, &[u8]) -> Result<()>;
/// Header-area reader: `read(off, buf)`.
pub type ReadFn<'a> = &'a dyn Fn(u64, &mut [u8]) -> Result<()>;

/// Passes QEMU's erase makes over a slot's key material.
const ERASE_PASSES: usize = 40;

fn count_active(h: &Header) -> usize {
    h.slots.iter().filter(|s| s.is_active()).count()
}

/// Put `master` into slot `i` under `password` and write header and key
/// material (QEMU's qcrypto_block_luks_store_key).
fn store_key(
    h: &mut Header,
    i: usize,
    password: &[u8],
    master: &[u8],
    iter_time_ms: u64,
    write: WriteFn<'_>,
) -> Result<()> {
    let hash = h.hash()?;
    let spec = h.spec()?;
    let klen = h.key_bytes as usize;
    let mut salt = [0u8; SALT_LEN];
    super::random_bytes(&mut salt)?;
    let n = iters(hash, password, &salt, klen, iter_time_ms, 1, MIN_SLOT_ITERS)?;
    let mut slot_key = Zeroizing::new(vec![0u8; klen]);
    hash.pbkdf2(password, &salt, n, &mut slot_key);
    let stripes = h.slots[i].stripes as usize;
    let mut material = af::split(hash, master, stripes)?;
    encrypt_any(&SectorCipher::new(&spec, &slot_key)?, &mut material);
    let s = &mut h.slots[i];
    s.salt = salt;
    s.iters = n;
    write(s.key_offset as u64 * SECTOR as u64, &material)?;
    s.active = SLOT_ENABLED;
    write(0, &h.serialize())
}

/// Disable slot `i`, then overwrite its key material with random bytes
/// (QEMU's qcrypto_block_luks_erase_key).
fn erase_key(h: &mut Header, i: usize, write: WriteFn<'_>) -> Result<()> {
    let len = h.key_bytes as usize * h.slots[i].stripes as usize;
    let s = &mut h.slots[i];
    s.salt = [0; SALT_LEN];
    s.iters = 0;
    s.active = SLOT_DISABLED;
    let at = s.key_offset as u64 * SECTOR as u64;
    let stored = write(0, &h.serialize());
    let mut garbage = Zeroizing::new(vec![0u8; len]);
    for _ in 0..ERASE_PASSES {
        super::random_bytes(&mut garbage)?;
        write(at, &garbage)?;
    }
    stored
}

fn secret_str(id: &str) -> Result<super::secret::Secret> {
    let pw = super::secret::passphrase(id)?;
    if std::str::from_utf8(&pw).is_err() {
        return Err(Error::invalid(format!(
            "Data from secret {id} is not valid UTF-8"
        )));
    }
    Ok(pw)
}

/// Add or erase key slots of an unlocked volume as QEMU's
/// qcrypto_block_luks_amend_options does, with its checks and messages.
/// `header` is kept in step with what is written; `master` is the volume
/// key found at open.
pub fn amend(
    header: &mut Header,
    master: &[u8],
    p: &AmendParams,
    force: bool,
    read: ReadFn<'_>,
    write: WriteFn<'_>,
) -> Result<()> {
    let bad = |m: String| Err(Error::invalid(m));
    let last = NUM_SLOTS - 1;
    match p.state.as_deref() {
        None => bad("Parameter 'state' is missing".into()),
        Some("active") => {
            let Some(new_id) = &p.new_secret else {
                return bad("'new-secret' is required to activate a keyslot".into());
            };
            if p.old_secret.is_some() {
                return bad("'old-secret' must not be given when activating keyslots".into());
            }
            let slot = match p.keyslot {
                Some(k) if !(0..NUM_SLOTS as i64).contains(&k) => {
                    return bad(format!(
                        "Invalid keyslot {} specified, must be between 0 and {last}",
                        k as u32
                    ))
                }
                Some(k) => k as usize,
                None => match header.slots.iter().position(|s| !s.is_active()) {
                    Some(i) => i,
                    None => return bad("Can't add a keyslot - all keyslots are in use".into()),
                },
            };
            if !force && header.slots[slot].is_active() {
                return bad(format!(
                    "Refusing to overwrite active keyslot {slot} - please erase it first"
                ));
            }
            let pw = secret_str(new_id)?;
            store_key(
                header,
                slot,
                &pw,
                master,
                p.iter_time.unwrap_or(2000),
                write,
            )
        }
        Some("inactive") => {
            if p.new_secret.is_some() {
                return bad("'new-secret' must not be given when erasing keyslots".into());
            }
            if p.iter_time.is_some() {
                return bad("'iter-time' must not be given when erasing keyslots".into());
            }
            let old = match &p.old_secret {
                Some(id) => Some(secret_str(id)?),
                None => None,
            };
            if let Some(k) = p.keyslot {
                if !(0..NUM_SLOTS as i64).contains(&k) {
                    return bad(format!(
                        "Invalid keyslot {k} specified, must be between 0 and {last}"
                    ));
                }
                let k = k as usize;
                if let Some(pw) = &old {
                    if load_key(header, k, pw, read)?.is_none() {
                        return bad(format!(
                            "Given keyslot {k} doesn't contain the given old password for erase operation"
                        ));
                    }
                }
                if !force && !header.slots[k].is_active() {
                    return bad(format!("Given keyslot {k} is already erased (inactive) "));
                }
                if !force && count_active(header) == 1 {
                    return bad(format!(
                        "Attempt to erase the only active keyslot {k} which will erase all the data in the image irreversibly - refusing operation"
                    ));
                }
                erase_key(header, k, write)
            } else if let Some(pw) = &old {
                let mut hits = Vec::new();
                for i in 0..NUM_SLOTS {
                    if load_key(header, i, pw, read)?.is_some() {
                        hits.push(i);
                    }
                }
                if hits.is_empty() {
                    return bad("No keyslots match given (old) password for erase operation".into());
                }
                if !force && hits.len() == count_active(header) {
                    return bad("All the active keyslots match the (old) password that was given and erasing them will erase all the data in the image irreversibly - refusing operation".into());
                }
                for i in hits {
                    erase_key(header, i, write)?;
                }
                Ok(())
            } else {
                bad("To erase keyslot(s), either explicit keyslot index or the password currently contained in them must be given".into())
            }
        }
        Some(v) => bad(format!("Parameter 'state' does not accept value '{v}'")),
    }
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
    Ok((
        area,
        Unlocked {
            header: h,
            cipher,
            master,
        },
    ))
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
