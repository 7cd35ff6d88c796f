//! luks: a raw LUKS1 volume (QEMU's `luks` driver). The header and key
//! slots come first; the guest disk is the encrypted payload after them,
//! with IVs numbered by guest sector.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use zeroize::Zeroizing;

use super::{
    BackingRead, CreateOptions, Driver, DriverInfo, DriverOpenOptions, Extent, OptDesc, OptKind,
    Prealloc, Status,
};
use crate::crypto::cipher::SECTOR;
use crate::crypto::{luks, secret, SectorCipher};
use crate::error::{Error, Result};
use crate::io::HostFile;
use crate::json::Json;

pub const CREATE_OPTS: &[OptDesc] = &[
    OptDesc {
        name: "cipher-alg",
        kind: OptKind::Str,
        help: "Name of encryption cipher algorithm",
    },
    OptDesc {
        name: "cipher-mode",
        kind: OptKind::Str,
        help: "Name of encryption cipher mode",
    },
    OptDesc {
        name: "detached-header",
        kind: OptKind::Bool,
        help: "Create a detached LUKS header",
    },
    OptDesc {
        name: "hash-alg",
        kind: OptKind::Str,
        help: "Name of encryption hash algorithm",
    },
    OptDesc {
        name: "iter-time",
        kind: OptKind::Number,
        help: "Time to spend in PBKDF in milliseconds",
    },
    OptDesc {
        name: "ivgen-alg",
        kind: OptKind::Str,
        help: "Name of IV generator algorithm",
    },
    OptDesc {
        name: "ivgen-hash-alg",
        kind: OptKind::Str,
        help: "Name of IV generator hash algorithm",
    },
    OptDesc {
        name: "key-secret",
        kind: OptKind::Str,
        help: "ID of the secret that provides the keyslot passphrase",
    },
    OptDesc {
        name: "size",
        kind: OptKind::Size,
        help: "Virtual disk size",
    },
    // The file protocol's.
    OptDesc {
        name: "extent_size_hint",
        kind: OptKind::Size,
        help: "Extent size hint for the image file, 0 to disable",
    },
    OptDesc {
        name: "nocow",
        kind: OptKind::Bool,
        help: "Turn off copy-on-write (valid only on btrfs)",
    },
    OptDesc {
        name: "preallocation",
        kind: OptKind::Str,
        help: "Preallocation mode (allowed values: off, falloc, full)",
    },
];

/// Options `amend` accepts (QEMU's block_crypto_amend_opts_luks).
pub const AMEND_OPTS: &[OptDesc] = &[
    OptDesc {
        name: "state",
        kind: OptKind::Str,
        help: "Select new state of affected keyslots (active/inactive)",
    },
    OptDesc {
        name: "keyslot",
        kind: OptKind::Number,
        help: "Select a single keyslot to modify explicitly",
    },
    OptDesc {
        name: "old-secret",
        kind: OptKind::Str,
        help: "Select all keyslots that match this password",
    },
    OptDesc {
        name: "new-secret",
        kind: OptKind::Str,
        help: "New secret to set in the matching keyslots. Empty string to erase",
    },
    OptDesc {
        name: "iter-time",
        kind: OptKind::Number,
        help: "Time to spend in PBKDF in milliseconds",
    },
];

pub fn probe(head: &[u8]) -> bool {
    head.len() >= 8 && &head[..6] == luks::MAGIC && head[6..8] == [0, 1]
}

pub struct Luks {
    file: HostFile,
    /// Payload start in the file.
    payload: u64,
    size: AtomicU64,
    /// None when opened for metadata only.
    cipher: Option<SectorCipher>,
    /// The header as last written and the master key (when unlocked), for
    /// key slot changes by `amend`.
    keys: Option<parking_lot::Mutex<(luks::Header, Zeroizing<Vec<u8>>)>>,
    writable: bool,
    info: Json,
}

const REQUIRED: &str = "Parameter 'key-secret' is required for cipher";

impl Luks {
    pub fn open(file: HostFile, opts: &DriverOpenOptions) -> Result<Self> {
        // QEMU looks the secret up before reading the header.
        let pw = if opts.metadata_only {
            None
        } else {
            let id = opts
                .key_secret
                .as_deref()
                .ok_or_else(|| Error::invalid(REQUIRED))?;
            Some(secret::passphrase(id)?)
        };
        let mut b = vec![0u8; luks::HEADER_LEN];
        file.read_exact_at(&mut b, 0)
            .map_err(|_| Error::invalid("Volume is not in LUKS format"))?;
        let h = luks::Header::parse(&b)?;
        h.spec()?;
        h.hash()?;
        let payload = h.payload_bytes();
        let len = file.len()?;
        if payload > len {
            return Err(Error::from_errno(libc::EIO));
        }
        let info = luks::info_json(&h, false);
        let (cipher, keys) = match pw {
            None => (None, None),
            Some(pw) => {
                let read = |o: u64, buf: &mut [u8]| {
                    if o.saturating_add(buf.len() as u64) > payload {
                        return Err(Error::invalid("LUKS key material lies past the header"));
                    }
                    file.read_exact_at(buf, o)
                };
                let u = luks::unlock(h, &pw, &read)?;
                (
                    Some(u.cipher),
                    Some(parking_lot::Mutex::new((u.header, u.master))),
                )
            }
        };
        Ok(Luks {
            file,
            payload,
            size: AtomicU64::new(len - payload),
            cipher,
            keys,
            writable: opts.writable,
            info,
        })
    }

    fn cipher(&self) -> Result<&SectorCipher> {
        self.cipher.as_ref().ok_or_else(|| Error::invalid(REQUIRED))
    }

    /// Whole sectors around guest [off, off+len).
    fn span(off: u64, len: u64) -> (u64, u64) {
        let s = SECTOR as u64;
        let a = off - off % s;
        (a, (off + len).next_multiple_of(s))
    }
}

pub fn create(path: &Path, size: u64, opts: &CreateOptions) -> Result<()> {
    let id = opts
        .get("key-secret")
        .ok_or_else(|| Error::invalid(REQUIRED))?;
    let pw = secret::passphrase(id)?;
    if opts.get_bool("detached-header", false)? {
        return Err(Error::unsupported(
            "Detached LUKS headers are not supported",
        ));
    }
    let get = |k: &str| opts.get(k).map(str::to_string);
    let p = luks::CreateParams::from_options(&get, "")?;
    let prealloc = match opts.get("preallocation") {
        None => Prealloc::Off,
        Some(v) => Prealloc::parse(v)?,
    };
    let size = size
        .checked_next_multiple_of(512)
        .ok_or_else(|| Error::invalid("Image size too large"))?;
    let (area, u) = luks::create(&p, &pw)?;
    let file = HostFile::create(path)?;
    let payload = u.header.payload_bytes();
    super::raw::preallocate(&file, 0, payload + size, prealloc)?;
    // Only the header and slot 0 hold data (as QEMU writes them); the
    // rest stays sparse.
    let end = area.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    file.write_at(&area[..end], 0)?;
    file.flush()
}

impl Driver for Luks {
    fn format_name(&self) -> &'static str {
        "luks"
    }
    fn virtual_size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }
    fn host_file(&self) -> &HostFile {
        &self.file
    }
    fn info(&self) -> DriverInfo {
        DriverInfo {
            encrypted: true,
            format_specific: Some(
                Json::object()
                    .with("type", "luks")
                    .with("data", self.info.clone()),
            ),
            ..DriverInfo::default()
        }
    }
    fn block_status(&self, off: u64, max: u64) -> Result<Extent> {
        // QEMU's crypto driver reports everything as data.
        Ok(Extent {
            len: max.min(self.virtual_size().saturating_sub(off)).max(1),
            status: Status::Data,
            offset: None,
            compressed: false,
        })
    }
    fn read_at(&self, buf: &mut [u8], off: u64, _backing: &dyn BackingRead) -> Result<()> {
        let c = self.cipher()?;
        let (a, b) = Self::span(off, buf.len() as u64);
        let mut tmp = Zeroizing::new(vec![0u8; (b - a) as usize]);
        self.file.read_at(&mut tmp, self.payload + a)?;
        c.decrypt(a / SECTOR as u64, &mut tmp);
        let head = (off - a) as usize;
        buf.copy_from_slice(&tmp[head..head + buf.len()]);
        Ok(())
    }
    fn write_at(&self, buf: &[u8], off: u64, backing: &dyn BackingRead) -> Result<()> {
        let c = self.cipher()?;
        let (a, b) = Self::span(off, buf.len() as u64);
        let mut tmp = Zeroizing::new(vec![0u8; (b - a) as usize]);
        if a != off || b != off + buf.len() as u64 {
            self.read_at(&mut tmp, a, backing)?;
        }
        let head = (off - a) as usize;
        tmp[head..head + buf.len()].copy_from_slice(buf);
        c.encrypt(a / SECTOR as u64, &mut tmp);
        self.file.write_at(&tmp, self.payload + a)
    }
    fn write_zeroes(&self, off: u64, len: u64, _unmap: bool, b: &dyn BackingRead) -> Result<()> {
        // Zeros must be stored encrypted; no shortcut keeps them reading
        // as zeros.
        let chunk = 1u64 << 20;
        let zeros = vec![0u8; chunk as usize];
        let mut pos = off;
        while pos < off + len {
            let n = (off + len - pos).min(chunk);
            self.write_at(&zeros[..n as usize], pos, b)?;
            pos += n;
        }
        Ok(())
    }
    fn flush(&self) -> Result<()> {
        self.file.flush()
    }
    fn has_zero_init(&self) -> bool {
        false
    }
    fn truncate(&self, size: u64, prealloc: Prealloc) -> Result<()> {
        let cur = self.virtual_size();
        let prealloc = if prealloc == Prealloc::Metadata {
            Prealloc::Off
        } else {
            prealloc
        };
        super::raw::preallocate(
            &self.file,
            self.payload + cur,
            self.payload + size,
            prealloc,
        )?;
        self.size.store(size, Ordering::Release);
        Ok(())
    }
    fn amend(
        &self,
        opts: &CreateOptions,
        _backing: &dyn BackingRead,
        _backing_size: Option<u64>,
        force: bool,
        _progress: &mut dyn FnMut(f64),
    ) -> Result<()> {
        if !self.writable {
            return Err(Error::invalid("Image is read-only"));
        }
        opts.validate(AMEND_OPTS)?;
        let get = |k: &str| opts.get(k).map(str::to_string);
        let p = luks::AmendParams::from_options(&get)?;
        let keys = self.keys.as_ref().ok_or_else(|| Error::invalid(REQUIRED))?;
        let mut k = keys.lock();
        let (header, master) = &mut *k;
        let end = self.payload;
        let file = &self.file;
        // Key material lives in the header area, before the payload.
        let inside = |o: u64, n: usize| {
            if o.saturating_add(n as u64) > end {
                return Err(Error::invalid("LUKS key material lies past the header"));
            }
            Ok(())
        };
        let read = |o: u64, buf: &mut [u8]| {
            inside(o, buf.len())?;
            file.read_exact_at(buf, o)
        };
        let write = |o: u64, buf: &[u8]| {
            inside(o, buf.len())?;
            file.write_at(buf, o)
        };
        let r = luks::amend(header, master, &p, force, &read, &write);
        self.file.flush()?;
        r
    }
}
