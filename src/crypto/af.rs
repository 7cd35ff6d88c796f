//! LUKS anti-forensic information splitter: a key is stored as `stripes`
//! blocks, all of which are needed to recover it.

use zeroize::Zeroizing;

use super::hash::HashAlg;
use crate::error::Result;

/// Replace `block` with its diffusion: each digest-sized chunk hashed
/// with its big-endian index in front.
fn diffuse(hash: HashAlg, block: &mut [u8]) {
    let ds = hash.digest_len();
    for (i, chunk) in block.chunks_mut(ds).enumerate() {
        let d = hash.digest(&[&(i as u32).to_be_bytes(), chunk]);
        let n = chunk.len();
        chunk.copy_from_slice(&d[..n]);
    }
}

/// Split `key` into `stripes` blocks of its length.
pub fn split(hash: HashAlg, key: &[u8], stripes: usize) -> Result<Zeroizing<Vec<u8>>> {
    let n = key.len();
    let mut out = Zeroizing::new(vec![0u8; n * stripes]);
    super::random_bytes(&mut out[..n * (stripes - 1)])?;
    let mut d = Zeroizing::new(vec![0u8; n]);
    for i in 0..stripes - 1 {
        for (a, b) in d.iter_mut().zip(&out[i * n..(i + 1) * n]) {
            *a ^= b;
        }
        diffuse(hash, &mut d);
    }
    for ((o, a), k) in out[(stripes - 1) * n..].iter_mut().zip(d.iter()).zip(key) {
        *o = a ^ k;
    }
    Ok(out)
}

/// Recover the key from `stripes` blocks of `key_len` bytes.
pub fn merge(hash: HashAlg, split: &[u8], key_len: usize) -> Zeroizing<Vec<u8>> {
    let stripes = split.len() / key_len;
    let mut d = Zeroizing::new(vec![0u8; key_len]);
    for i in 0..stripes.saturating_sub(1) {
        for (a, b) in d.iter_mut().zip(&split[i * key_len..(i + 1) * key_len]) {
            *a ^= b;
        }
        diffuse(hash, &mut d);
    }
    if stripes > 0 {
        for (a, b) in d.iter_mut().zip(&split[(stripes - 1) * key_len..]) {
            *a ^= b;
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_then_merge_gives_the_key() {
        let key: Vec<u8> = (0..64u8).collect();
        for h in [HashAlg::Sha1, HashAlg::Sha256, HashAlg::Sha512] {
            let s = split(h, &key, 40).unwrap();
            assert_eq!(&merge(h, &s, key.len())[..], &key[..]);
            // Every stripe matters.
            let mut t = s.clone();
            t[3] ^= 1;
            assert_ne!(&merge(h, &t, key.len())[..], &key[..]);
        }
    }
}
