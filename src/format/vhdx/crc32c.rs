//! CRC-32C (Castagnoli), the checksum of every VHDX header, region table
//! and log entry. crc32fast only does the IEEE polynomial, so a small
//! slice-by-one table implementation lives here (metadata is a few KiB).

const POLY: u32 = 0x82f6_3b78;

const TABLE: [u32; 256] = {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { (c >> 1) ^ POLY } else { c >> 1 };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
};

/// Running CRC-32C state (pre-inverted), fed in pieces.
#[derive(Debug, Clone, Copy)]
pub struct Crc32c(u32);

impl Default for Crc32c {
    fn default() -> Self {
        Self::new()
    }
}

impl Crc32c {
    pub fn new() -> Self {
        Crc32c(0xffff_ffff)
    }
    pub fn update(&mut self, data: &[u8]) {
        let mut c = self.0;
        for &b in data {
            c = TABLE[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8);
        }
        self.0 = c;
    }
    pub fn finish(self) -> u32 {
        self.0 ^ 0xffff_ffff
    }
}

/// CRC-32C of `buf` with the 4-byte field at `field` counted as zeros.
pub fn checksum_with_field_zeroed(buf: &[u8], field: usize) -> u32 {
    let mut c = Crc32c::new();
    match buf.get(..field) {
        Some(head) if field + 4 <= buf.len() => {
            c.update(head);
            c.update(&[0; 4]);
            c.update(&buf[field + 4..]);
        }
        _ => c.update(buf),
    }
    c.finish()
}

/// Whether the little-endian checksum stored at `field` matches.
pub fn is_valid(buf: &[u8], field: usize) -> bool {
    match buf.get(field..field + 4) {
        Some(s) => {
            let stored = u32::from_le_bytes([s[0], s[1], s[2], s[3]]);
            stored == checksum_with_field_zeroed(buf, field)
        }
        None => false,
    }
}

/// Store the checksum of `buf` at `field` (little-endian).
pub fn update(buf: &mut [u8], field: usize) {
    let c = checksum_with_field_zeroed(buf, field);
    buf[field..field + 4].copy_from_slice(&c.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vectors() {
        let mut c = Crc32c::new();
        c.update(b"123456789");
        assert_eq!(c.finish(), 0xe306_9283);
        let mut c = Crc32c::new();
        c.update(&[0u8; 32]);
        assert_eq!(c.finish(), 0x8a91_36aa);
    }
}
