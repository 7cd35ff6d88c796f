//! Secrets by id, as QEMU's `--object secret,id=ID,...` defines them for
//! the whole process; drivers look the id given in `key-secret` up here.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use zeroize::Zeroizing;

use crate::error::{Error, Result};

pub type Secret = Zeroizing<Vec<u8>>;

fn store() -> &'static Mutex<HashMap<String, Secret>> {
    static S: OnceLock<Mutex<HashMap<String, Secret>>> = OnceLock::new();
    S.get_or_init(Default::default)
}

/// Define (or replace) secret `id`.
pub fn add(id: &str, data: &[u8]) {
    let mut s = store().lock().unwrap_or_else(|e| e.into_inner());
    s.insert(id.to_string(), Zeroizing::new(data.to_vec()));
}

/// True when secret `id` exists.
pub fn exists(id: &str) -> bool {
    let s = store().lock().unwrap_or_else(|e| e.into_inner());
    s.contains_key(id)
}

/// Secret `id`'s bytes, or QEMU's error for an unknown id.
pub fn get(id: &str) -> Result<Secret> {
    let s = store().lock().unwrap_or_else(|e| e.into_inner());
    s.get(id)
        .cloned()
        .ok_or_else(|| Error::invalid(format!("No secret with id '{id}'")))
}

/// A secret used as a passphrase: QEMU takes it as a C string, so it
/// ends at the first NUL.
pub fn passphrase(id: &str) -> Result<Secret> {
    let s = get(id)?;
    let end = s.iter().position(|&c| c == 0).unwrap_or(s.len());
    Ok(Zeroizing::new(s[..end].to_vec()))
}
