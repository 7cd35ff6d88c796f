//! Big-endian field access for on-disk structures. Callers bounds-check
//! `o + width <= b.len()` first (headers are read into buffers of known
//! size); these helpers only decode.

pub fn be16(b: &[u8], o: usize) -> u16 {
    u16::from_be_bytes([b[o], b[o + 1]])
}

pub fn be32(b: &[u8], o: usize) -> u32 {
    u32::from_be_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

pub fn be64(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_be_bytes(a)
}

/// A table of big-endian u64 entries (L1 tables, refcount tables).
pub fn be64_table(raw: &[u8]) -> Vec<u64> {
    raw.chunks_exact(8).map(|c| be64(c, 0)).collect()
}
