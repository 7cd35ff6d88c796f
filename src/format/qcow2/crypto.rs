//! qcow2 encryption: the LUKS header QEMU embeds (via the full-disk
//! encryption header extension) or the legacy AES method; described for
//! `info` as QAPI QCryptoBlockInfo does, unlocked with the key secret for
//! data I/O, and created for `encrypt.format=luks`.

use super::header::{Header, EXT_CRYPTO};
use crate::crypto::cipher::SECTOR;
use crate::crypto::{luks, secret, SectorCipher};
use crate::error::{Error, Result};
use crate::format::bytes::be64;
use crate::io::HostFile;
use crate::json::Json;

const LUKS_HEADER_LEN: usize = luks::HEADER_LEN;

/// The `encrypt` member of qcow2's format-specific info, if encrypted.
pub fn info(h: &Header, file: &HostFile) -> Option<Json> {
    match h.crypt_method {
        0 => None,
        1 => Some(Json::object().with("format", "aes")),
        _ => luks(h, file),
    }
}

fn luks(h: &Header, file: &HostFile) -> Option<Json> {
    let (off, len) = ext_location(h).ok()?;
    let mut b = vec![0u8; LUKS_HEADER_LEN];
    read_area(file, off, len, 0, &mut b).ok()?;
    let lh = luks::Header::parse(&b).ok()?;
    Some(luks::info_json(&lh, true))
}

/// The data cipher of an opened encrypted image. LUKS numbers sectors by
/// host offset, legacy AES by guest offset (QEMU's crypt_physical_offset).
pub(super) struct DataCrypto {
    cipher: SectorCipher,
    physical: bool,
    /// LUKS only: the header as last written and the master key, for
    /// key slot changes by `amend`.
    luks: Option<parking_lot::Mutex<LuksKeys>>,
}

struct LuksKeys {
    header: luks::Header,
    master: zeroize::Zeroizing<Vec<u8>>,
}

impl DataCrypto {
    fn sector(&self, host: u64, guest: u64) -> u64 {
        (if self.physical { host } else { guest }) / SECTOR as u64
    }

    /// Decrypt whole sectors read from `host` (guest offset `guest`).
    pub fn decrypt(&self, host: u64, guest: u64, buf: &mut [u8]) {
        self.cipher.decrypt(self.sector(host, guest), buf);
    }

    pub fn encrypt(&self, host: u64, guest: u64, buf: &mut [u8]) {
        self.cipher.encrypt(self.sector(host, guest), buf);
    }
}

/// Check the `encrypt.*` open options against the header and unlock.
pub(super) fn open(
    h: &Header,
    file: &HostFile,
    opts: &crate::format::DriverOpenOptions,
) -> Result<Option<DataCrypto>> {
    let method = match h.crypt_method {
        0 => None,
        1 => Some("aes"),
        _ => Some("luks"),
    };
    match (method, opts.encrypt_format.as_deref()) {
        (None, Some(f)) => {
            return Err(Error::invalid(format!(
                "No encryption in image header, but options specified format '{f}'"
            )))
        }
        (Some(m), Some(f)) if m != f => {
            return Err(Error::invalid(format!(
                "Header reported '{m}' encryption format but options specify '{f}'"
            )))
        }
        _ => {}
    }
    let Some(method) = method else {
        if h.other_exts.iter().any(|e| e.kind == EXT_CRYPTO) {
            return Err(Error::invalid(
                "CRYPTO header extension only expected with LUKS encryption method",
            ));
        }
        return Ok(None);
    };
    // QEMU's order: the secret first (unless no I/O is wanted), then the
    // LUKS header, which is checked even for info.
    let pw = if opts.metadata_only {
        None
    } else {
        let id = opts.key_secret.as_deref().ok_or_else(|| {
            Error::invalid("Parameter 'encrypt.key-secret' is required for cipher")
        })?;
        let pw = secret::passphrase(id)?;
        if std::str::from_utf8(&pw).is_err() {
            return Err(Error::invalid(format!(
                "Data from secret {id} is not valid UTF-8"
            )));
        }
        Some(pw)
    };
    if method == "aes" {
        let Some(pw) = pw else { return Ok(None) };
        return Ok(Some(DataCrypto {
            cipher: crate::crypto::qcow_aes(&pw)?,
            physical: false,
            luks: None,
        }));
    }
    let (off, len) = ext_location(h)?;
    let mut b = vec![0u8; LUKS_HEADER_LEN];
    read_area(file, off, len, 0, &mut b)?;
    let lh = luks::Header::parse(&b)?;
    lh.spec()?;
    lh.hash()?;
    let Some(pw) = pw else { return Ok(None) };
    let read = |o: u64, buf: &mut [u8]| read_area(file, off, len, o, buf);
    let u = luks::unlock(lh, &pw, &read)?;
    Ok(Some(DataCrypto {
        cipher: u.cipher,
        physical: true,
        luks: Some(parking_lot::Mutex::new(LuksKeys {
            header: u.header,
            master: u.master,
        })),
    }))
}

/// Where the crypto header extension says the LUKS area is.
fn ext_location(h: &Header) -> Result<(u64, u64)> {
    let ext = h
        .other_exts
        .iter()
        .find(|e| e.kind == EXT_CRYPTO)
        .ok_or_else(|| {
            Error::invalid(format!(
                "Missing CRYPTO header for crypt method {}",
                h.crypt_method
            ))
        })?;
    if ext.data.len() != 16 {
        return Err(Error::invalid(format!(
            "CRYPTO header extension size {}, but expected size 16",
            ext.data.len()
        )));
    }
    let off = be64(&ext.data, 0);
    let cs = h.cluster_size();
    if !off.is_multiple_of(cs) {
        return Err(Error::invalid(format!(
            "Encryption header offset '{off}' is not a multiple of cluster size '{cs}'"
        )));
    }
    Ok((off, be64(&ext.data, 8)))
}

/// Host offset of `n` bytes at `at` inside the LUKS area (`off`, `len`
/// bytes), refused when they reach outside it.
fn area_pos(off: u64, len: u64, at: u64, n: usize) -> Result<u64> {
    let outside = || Error::invalid("Request for data outside of extension header");
    if at.checked_add(n as u64).is_none_or(|end| end > len) {
        return Err(outside());
    }
    off.checked_add(at).ok_or_else(outside)
}

/// Read inside the LUKS area only, as QEMU's header read callback does.
fn read_area(file: &HostFile, off: u64, len: u64, at: u64, buf: &mut [u8]) -> Result<()> {
    let pos = area_pos(off, len, at, buf.len())?;
    file.read_exact_at(buf, pos)
        .map_err(|e| Error::invalid(format!("Could not read encryption header: {}", e.message())))
}

/// Write inside the LUKS area only, as QEMU's header write callback does.
fn write_area(file: &HostFile, off: u64, len: u64, at: u64, buf: &[u8]) -> Result<()> {
    let pos = area_pos(off, len, at, buf.len())?;
    file.write_at(buf, pos).map_err(|e| {
        Error::invalid(format!(
            "Could not write encryption header: {}",
            e.message()
        ))
    })
}

impl super::Qcow2 {
    /// `amend -o encrypt.*`: add or erase LUKS key slots (the image was
    /// opened with its key secret, so the master key is at hand).
    pub(super) fn amend_keyslots(&self, p: &luks::AmendParams, force: bool) -> Result<()> {
        let h = self.hdr.lock().clone();
        let (off, len) = ext_location(&h)?;
        let keys = self
            .crypto
            .as_ref()
            .and_then(|c| c.luks.as_ref())
            .ok_or_else(|| {
                Error::invalid("Parameter 'encrypt.key-secret' is required for cipher")
            })?;
        let mut k = keys.lock();
        let LuksKeys { header, master } = &mut *k;
        let file = &self.file;
        let read = |o: u64, buf: &mut [u8]| read_area(file, off, len, o, buf);
        let write = |o: u64, buf: &[u8]| write_area(file, off, len, o, buf);
        let r = luks::amend(header, master, p, force, &read, &write);
        self.file.flush()?;
        r
    }
}

/// Build the LUKS area for a new image: returns its bytes (to be placed in
/// newly allocated clusters) from the `encrypt.*` creation options.
pub(super) fn new_luks_area(o: &crate::format::CreateOptions) -> Result<Vec<u8>> {
    let id = o
        .get("encrypt.key-secret")
        .ok_or_else(|| Error::invalid("Parameter 'encrypt.key-secret' is required for cipher"))?;
    let pw = secret::passphrase(id)?;
    let get = |k: &str| o.get(&format!("encrypt.{k}")).map(str::to_string);
    let p = luks::CreateParams::from_options(&get, "encrypt.")?;
    Ok(luks::create(&p, &pw)?.0)
}

/// The extension's payload: area offset and length.
pub(super) fn ext_data(off: u64, len: u64) -> Vec<u8> {
    let mut d = off.to_be_bytes().to_vec();
    d.extend_from_slice(&len.to_be_bytes());
    d
}

impl super::Qcow2 {
    /// Mark a new image encrypted; LUKS gets its area in fresh clusters
    /// and the header extension pointing at it.
    pub(super) fn set_up_encryption(&self, e: &super::create::Encrypt) -> Result<()> {
        let mut h = self.hdr.lock().clone();
        match e {
            super::create::Encrypt::Aes => h.crypt_method = 1,
            super::create::Encrypt::Luks(area) => {
                let cs = self.cs();
                let len = area.len() as u64;
                let off = self.meta.lock().rc.alloc(&self.file, len.div_ceil(cs))?;
                let mut buf = area.clone();
                buf.resize((len.div_ceil(cs) * cs) as usize, 0);
                self.file.write_at(&buf, off)?;
                h.crypt_method = 2;
                h.other_exts.push(super::header::Extension {
                    kind: EXT_CRYPTO,
                    data: ext_data(off, len),
                });
            }
        }
        self.write_header(&h)
    }
}
