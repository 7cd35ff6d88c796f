//! Encryption metadata for `info`: the LUKS header QEMU embeds (via the
//! full-disk-encryption header extension) or the legacy AES method. We do
//! not decrypt; we describe, as QAPI QCryptoBlockInfo does.

use super::header::{Header, EXT_CRYPTO};
use crate::format::bytes::{be16, be32, be64};
use crate::io::HostFile;
use crate::json::Json;

const LUKS_MAGIC: &[u8; 6] = b"LUKS\xba\xbe";
const LUKS_HEADER_LEN: usize = 208 + 8 * 48;
const SLOT_ACTIVE: u32 = 0x00AC_71F3;

fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// The `encrypt` member of qcow2's format-specific info, if encrypted.
pub fn info(h: &Header, file: &HostFile) -> Option<Json> {
    match h.crypt_method {
        0 => None,
        1 => Some(Json::object().with("format", "aes")),
        _ => luks(h, file),
    }
}

fn luks(h: &Header, file: &HostFile) -> Option<Json> {
    let ext = h.other_exts.iter().find(|e| e.kind == EXT_CRYPTO)?;
    if ext.data.len() < 16 {
        return None;
    }
    let off = be64(&ext.data, 0);
    let mut b = vec![0u8; LUKS_HEADER_LEN];
    file.read_exact_at(&mut b, off).ok()?;
    if &b[..6] != LUKS_MAGIC || be16(&b, 6) != 1 {
        return None;
    }
    let cipher = cstr(&b[8..40]);
    let mode_spec = cstr(&b[40..72]);
    let hash = cstr(&b[72..104]);
    let key_bytes = be32(&b, 108);
    let (mode, ivgen) = mode_spec
        .split_once('-')
        .unwrap_or((mode_spec.as_str(), ""));
    let (ivgen_alg, ivgen_hash) = match ivgen.split_once(':') {
        Some((a, h)) => (a.to_string(), Some(h.to_string())),
        None => (ivgen.to_string(), None),
    };
    // XTS splits the key in two; the cipher is named by one half.
    let bits = if mode == "xts" {
        key_bytes * 4
    } else {
        key_bytes * 8
    };
    let mut j = Json::object()
        .with("format", "luks")
        .with("cipher-alg", format!("{cipher}-{bits}"))
        .with("cipher-mode", mode)
        .with("ivgen-alg", ivgen_alg);
    if let Some(hh) = ivgen_hash {
        j.set("ivgen-hash-alg", hh);
    }
    j.set("hash-alg", hash);
    j.set("detached-header", false);
    j.set("payload-offset", be32(&b, 104) as u64 * 512);
    j.set("master-key-iters", be32(&b, 164) as u64);
    j.set("uuid", cstr(&b[168..208]));
    let slots = (0..8)
        .map(|i| {
            let s = &b[208 + i * 48..208 + (i + 1) * 48];
            let active = be32(s, 0) == SLOT_ACTIVE;
            let mut o = Json::object().with("active", active);
            if active {
                o.set("iters", be32(s, 4) as u64);
                o.set("stripes", be32(s, 44) as u64);
            }
            o.set("key-offset", be32(s, 40) as u64 * 512);
            o
        })
        .collect();
    j.set("slots", Json::Array(slots));
    Some(j)
}
