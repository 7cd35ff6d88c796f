//! Secrets by id, as QEMU's `--object secret,id=ID,...` defines them for
//! the whole process; drivers look the id given in `key-secret` up here.

use std::sync::Mutex;

use zeroize::Zeroizing;

use crate::error::{Error, Result};

pub type Secret = Zeroizing<Vec<u8>>;

/// A process has a handful of secrets: a list, searched linearly. (A
/// HashMap's table pointer points into its allocation, which valgrind
/// reports as "possibly lost" in C programs that exit with secrets set.)
static STORE: Mutex<Vec<(String, Secret)>> = Mutex::new(Vec::new());

/// Define (or replace) secret `id`.
pub fn add(id: &str, data: &[u8]) {
    let mut s = STORE.lock().unwrap_or_else(|e| e.into_inner());
    let v = Zeroizing::new(data.to_vec());
    match s.iter_mut().find(|(k, _)| k == id) {
        Some((_, old)) => *old = v,
        None => s.push((id.to_string(), v)),
    }
}

/// True when secret `id` exists.
pub fn exists(id: &str) -> bool {
    let s = STORE.lock().unwrap_or_else(|e| e.into_inner());
    s.iter().any(|(k, _)| k == id)
}

/// Secret `id`'s bytes, or QEMU's error for an unknown id.
pub fn get(id: &str) -> Result<Secret> {
    let s = STORE.lock().unwrap_or_else(|e| e.into_inner());
    s.iter()
        .find(|(k, _)| k == id)
        .map(|(_, v)| v.clone())
        .ok_or_else(|| Error::invalid(format!("No secret with id '{id}'")))
}

/// A secret used as a passphrase: QEMU takes it as a C string, so it
/// ends at the first NUL.
pub fn passphrase(id: &str) -> Result<Secret> {
    let s = get(id)?;
    let end = s.iter().position(|&c| c == 0).unwrap_or(s.len());
    Ok(Zeroizing::new(s[..end].to_vec()))
}

/// Forget secret `id`; true when it existed.
pub fn remove(id: &str) -> bool {
    let mut s = STORE.lock().unwrap_or_else(|e| e.into_inner());
    let n = s.len();
    s.retain(|(k, _)| k != id);
    s.len() != n
}
