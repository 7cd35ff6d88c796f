//! The qcow2 header and its extensions (docs/interop/qcow2.txt).

use crate::error::{Error, Result};
use crate::format::bytes::{be32, be64};
use crate::format::BackingRef;

pub const EXT_END: u32 = 0;
pub const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
pub const EXT_FEATURE_TABLE: u32 = 0x6803_f857;
pub const EXT_CRYPTO: u32 = 0x0537_be77;
pub const EXT_DATA_FILE: u32 = 0x4441_5441;

pub const INCOMPAT_DIRTY: u64 = 1 << 0;
pub const INCOMPAT_CORRUPT: u64 = 1 << 1;
pub const INCOMPAT_DATA_FILE: u64 = 1 << 2;
pub const INCOMPAT_COMPRESSION: u64 = 1 << 3;
pub const INCOMPAT_EXTL2: u64 = 1 << 4;
const INCOMPAT_KNOWN: u64 = 0x1f;
pub const COMPAT_LAZY_REFCOUNTS: u64 = 1 << 0;
pub const AUTOCLEAR_BITMAPS: u64 = 1 << 0;
pub const AUTOCLEAR_DATA_FILE_RAW: u64 = 1 << 1;
/// Autoclear bits QEMU defines (bitmaps, data-file-raw).
pub const AUTOCLEAR_KNOWN: u64 = 0b11;

pub const V2_HEADER_LEN: u32 = 72;
pub const V3_HEADER_LEN: u32 = 112;
/// QEMU's limits; no real image comes near them, and they bound what a
/// hostile header can make us allocate.
pub const MAX_L1_BYTES: u64 = 32 << 20;
pub const MAX_REFTABLE_BYTES: u64 = 8 << 20;
pub const MAX_SNAPSHOTS: u32 = 65536;
pub const MAX_BACKING_NAME: u32 = 1023;

/// Compression method of compressed clusters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Zlib,
    Zstd,
}

impl Compression {
    pub fn name(self) -> &'static str {
        match self {
            Compression::Zlib => "zlib",
            Compression::Zstd => "zstd",
        }
    }
}

/// A header extension we keep as raw bytes so rewrites preserve it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extension {
    pub kind: u32,
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub version: u32,
    pub backing_file: Option<String>,
    pub cluster_bits: u32,
    pub size: u64,
    pub crypt_method: u32,
    pub l1_size: u32,
    pub l1_table_offset: u64,
    pub refcount_table_offset: u64,
    pub refcount_table_clusters: u32,
    pub nb_snapshots: u32,
    pub snapshots_offset: u64,
    pub incompatible: u64,
    pub compatible: u64,
    pub autoclear: u64,
    pub refcount_order: u32,
    pub header_length: u32,
    pub compression: Compression,
    /// Bytes of the header beyond the fields we know (v3 `header_length`
    /// may be larger); preserved on rewrite.
    pub extra: Vec<u8>,
    pub backing_format: Option<String>,
    pub data_file: Option<String>,
    /// Extensions other than backing format, feature table and data file,
    /// in file order (bitmaps, crypto, unknown ones).
    pub other_exts: Vec<Extension>,
    /// Feature names from the feature-name table: (type, bit, name).
    pub feature_names: Vec<(u8, u8, String)>,
}

impl Header {
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }
    pub fn refcount_bits(&self) -> u32 {
        1 << self.refcount_order
    }
    pub fn extended_l2(&self) -> bool {
        self.incompatible & INCOMPAT_EXTL2 != 0
    }
    pub fn l2_entry_size(&self) -> u64 {
        if self.extended_l2() {
            16
        } else {
            8
        }
    }
    /// Guest bytes one L2 table maps.
    pub fn l2_coverage(&self) -> u64 {
        (self.cluster_size() / self.l2_entry_size()) << self.cluster_bits
    }
    pub fn backing(&self) -> Option<BackingRef> {
        self.backing_file.as_ref().map(|f| BackingRef {
            filename: f.clone(),
            format: self.backing_format.clone(),
        })
    }

    /// Parse and validate the header from the first cluster of the file
    /// (`buf` holds at least the first cluster or the whole file if
    /// shorter). Every field is checked before use.
    pub fn parse(buf: &[u8]) -> Result<Header> {
        if buf.len() < 4 || buf[..4] != super::MAGIC {
            return Err(Error::corrupt("Image is not in qcow2 format"));
        }
        if buf.len() < V2_HEADER_LEN as usize {
            return Err(Error::corrupt("qcow2 header too short"));
        }
        let version = be32(buf, 4);
        if !(2..=3).contains(&version) {
            return Err(Error::unsupported(format!(
                "Unsupported qcow2 version {version}"
            )));
        }
        let cluster_bits = be32(buf, 20);
        if !(9..=21).contains(&cluster_bits) {
            return Err(Error::invalid(format!(
                "Unsupported cluster size: 2^{cluster_bits}"
            )));
        }
        let cs = 1u64 << cluster_bits;
        let mut h = Header {
            version,
            backing_file: None,
            cluster_bits,
            size: be64(buf, 24),
            crypt_method: be32(buf, 32),
            l1_size: be32(buf, 36),
            l1_table_offset: be64(buf, 40),
            refcount_table_offset: be64(buf, 48),
            refcount_table_clusters: be32(buf, 56),
            nb_snapshots: be32(buf, 60),
            snapshots_offset: be64(buf, 64),
            incompatible: 0,
            compatible: 0,
            autoclear: 0,
            refcount_order: 4,
            header_length: V2_HEADER_LEN,
            compression: Compression::Zlib,
            extra: Vec::new(),
            backing_format: None,
            data_file: None,
            other_exts: Vec::new(),
            feature_names: Vec::new(),
        };
        if version == 3 {
            if buf.len() < 104 {
                return Err(Error::corrupt("qcow2 header too short"));
            }
            h.incompatible = be64(buf, 72);
            h.compatible = be64(buf, 80);
            h.autoclear = be64(buf, 88);
            h.refcount_order = be32(buf, 96);
            h.header_length = be32(buf, 100);
            if h.header_length < 104 {
                return Err(Error::corrupt("qcow2 header too short"));
            }
            if h.header_length as u64 > cs || h.header_length as usize > buf.len() {
                return Err(Error::corrupt("qcow2 header exceeds cluster size"));
            }
            if h.header_length > 104 {
                let ct = buf[104];
                h.compression = match ct {
                    0 => Compression::Zlib,
                    1 => Compression::Zstd,
                    _ => {
                        // (Not "unsupported": that kind makes check exit 63.)
                        return Err(Error::invalid(format!(
                            "qcow2: unknown compression type: {ct}"
                        )));
                    }
                };
                let known_end = 105usize;
                h.extra = buf[known_end..h.header_length as usize].to_vec();
            }
            // The incompatible bit says exactly whether the type is not zlib.
            let flagged = h.incompatible & INCOMPAT_COMPRESSION != 0;
            match (h.compression, flagged) {
                (Compression::Zlib, true) => {
                    return Err(Error::corrupt(
                        "qcow2: Compression type incompatible feature bit must not be set",
                    ))
                }
                (Compression::Zstd, false) => {
                    return Err(Error::corrupt(
                        "qcow2: Compression type incompatible feature bit must be set",
                    ))
                }
                _ => {}
            }
        }
        if h.refcount_order > 6 {
            return Err(Error::invalid(
                "Reference count entry width too large; may not exceed 64 bits",
            ));
        }
        // Offsets: aligned and small enough that offset + size never overflows.
        let limit = 1u64 << 56;
        // QEMU's bound: the L1 index of the last cluster must fit an int.
        if h.size > i64::MAX as u64 || h.size.div_ceil(h.l2_coverage()) > i32::MAX as u64 {
            return Err(Error::invalid("Image is too big"));
        }
        if !h.refcount_table_offset.is_multiple_of(cs)
            || h.refcount_table_offset >= limit
            || h.refcount_table_offset == 0
        {
            return Err(Error::corrupt("Reference count table offset invalid"));
        }
        if h.refcount_table_clusters as u64 * cs > MAX_REFTABLE_BYTES
            || h.refcount_table_clusters == 0
        {
            return Err(Error::invalid("Reference count table too large"));
        }
        if h.l1_size as u64 * 8 > MAX_L1_BYTES {
            return Err(Error::invalid("Active L1 table too large"));
        }
        if h.l1_size > 0 && (!h.l1_table_offset.is_multiple_of(cs) || h.l1_table_offset >= limit) {
            return Err(Error::corrupt("Active L1 table offset invalid"));
        }
        let needed_l1 = h.size.div_ceil(h.l2_coverage());
        if (h.l1_size as u64) < needed_l1 {
            return Err(Error::corrupt("L1 table is too small"));
        }
        if h.nb_snapshots > MAX_SNAPSHOTS {
            return Err(Error::invalid("Snapshot table too large"));
        }
        if h.nb_snapshots > 0
            && (!h.snapshots_offset.is_multiple_of(cs) || h.snapshots_offset >= limit)
        {
            return Err(Error::corrupt("Snapshot table offset invalid"));
        }
        // Tables past the end of the file read as zeros, as in QEMU; their
        // sizes are already bounded above, so nothing is allocated unchecked.
        h.parse_extensions(buf, cs)?;
        // Backing file name.
        let bfo = be64(buf, 8);
        let bfs = be32(buf, 16);
        if bfo != 0 && bfs > 0 {
            if bfs > MAX_BACKING_NAME {
                return Err(Error::invalid("Backing file name too long"));
            }
            let end = bfo
                .checked_add(bfs as u64)
                .filter(|&e| e <= cs && e as usize <= buf.len());
            let Some(end) = end else {
                return Err(Error::corrupt("Invalid backing file offset"));
            };
            let name = String::from_utf8_lossy(&buf[bfo as usize..end as usize]).into_owned();
            h.backing_file = Some(name);
        }
        if h.incompatible & !INCOMPAT_KNOWN != 0 {
            return Err(Error::unsupported(h.unknown_features_message()));
        }
        if h.incompatible & INCOMPAT_DATA_FILE == 0 && h.autoclear & AUTOCLEAR_DATA_FILE_RAW != 0 {
            h.autoclear &= !AUTOCLEAR_DATA_FILE_RAW;
        }
        Ok(h)
    }

    fn unknown_features_message(&self) -> String {
        // Named bits in table order, then what is left as one mask.
        let mut parts = Vec::new();
        let mut unknown = self.incompatible & !INCOMPAT_KNOWN;
        for (t, b, n) in &self.feature_names {
            if *t == 0 && *b < 64 && unknown & (1u64 << b) != 0 {
                parts.push(n.clone());
                unknown &= !(1u64 << b);
            }
        }
        if unknown != 0 {
            parts.push(format!("Unknown incompatible feature: {unknown:x}"));
        }
        format!("Unsupported qcow2 feature(s): {}", parts.join(", "))
    }

    fn parse_extensions(&mut self, buf: &[u8], cs: u64) -> Result<()> {
        let mut off = self.header_length as usize;
        let end = (cs as usize).min(buf.len());
        // The backing file name may sit right after the extensions; it is
        // not part of them.
        loop {
            if off + 8 > end {
                // No end marker within the cluster: QEMU tolerates that.
                break;
            }
            let kind = be32(buf, off);
            let len = be32(buf, off + 4) as usize;
            off += 8;
            if kind == EXT_END {
                break;
            }
            if len > end - off {
                return Err(Error::corrupt("Header extension too large"));
            }
            let data = &buf[off..off + len];
            match kind {
                EXT_BACKING_FORMAT => {
                    // QEMU keeps the name in a 16-byte buffer.
                    if len >= 16 {
                        return Err(Error::corrupt(format!(
                            "ERROR: ext_backing_format: len={len} too large (>=16)"
                        )));
                    }
                    let s = String::from_utf8_lossy(data);
                    self.backing_format = Some(s.trim_end_matches('\0').to_string());
                }
                EXT_DATA_FILE => {
                    let s = String::from_utf8_lossy(data);
                    self.data_file = Some(s.trim_end_matches('\0').to_string());
                }
                EXT_FEATURE_TABLE => {
                    // A short last entry reads as if padded with zeros, and
                    // an entry without a name ends the table, as in QEMU.
                    for e in data.chunks(48) {
                        let mut ent = [0u8; 48];
                        ent[..e.len()].copy_from_slice(e);
                        let name_end = ent[2..].iter().position(|&c| c == 0).map_or(48, |p| p + 2);
                        if name_end == 2 {
                            break;
                        }
                        let name = String::from_utf8_lossy(&ent[2..name_end]).into_owned();
                        self.feature_names.push((ent[0], ent[1], name));
                    }
                }
                _ => self.other_exts.push(Extension {
                    kind,
                    data: data.to_vec(),
                }),
            }
            off += len.div_ceil(8) * 8;
        }
        Ok(())
    }

    /// Serialise header + extensions + backing name into one cluster-sized
    /// buffer (the first cluster of the file).
    pub fn serialize(&self) -> Result<Vec<u8>> {
        let cs = self.cluster_size() as usize;
        let mut b = vec![0u8; cs];
        let put32 = |b: &mut [u8], o: usize, v: u32| b[o..o + 4].copy_from_slice(&v.to_be_bytes());
        let put64 = |b: &mut [u8], o: usize, v: u64| b[o..o + 8].copy_from_slice(&v.to_be_bytes());
        b[..4].copy_from_slice(&super::MAGIC);
        put32(&mut b, 4, self.version);
        put32(&mut b, 20, self.cluster_bits);
        put64(&mut b, 24, self.size);
        put32(&mut b, 32, self.crypt_method);
        put32(&mut b, 36, self.l1_size);
        put64(&mut b, 40, self.l1_table_offset);
        put64(&mut b, 48, self.refcount_table_offset);
        put32(&mut b, 56, self.refcount_table_clusters);
        put32(&mut b, 60, self.nb_snapshots);
        put64(&mut b, 64, self.snapshots_offset);
        let mut off = V2_HEADER_LEN as usize;
        if self.version >= 3 {
            put64(&mut b, 72, self.incompatible);
            put64(&mut b, 80, self.compatible);
            put64(&mut b, 88, self.autoclear);
            put32(&mut b, 96, self.refcount_order);
            put32(&mut b, 100, self.header_length);
            if self.header_length > 104 {
                b[104] = match self.compression {
                    Compression::Zlib => 0,
                    Compression::Zstd => 1,
                };
                let n = self.extra.len().min(self.header_length as usize - 105);
                b[105..105 + n].copy_from_slice(&self.extra[..n]);
            }
            off = self.header_length as usize;
        }
        let mut exts: Vec<(u32, Vec<u8>)> = Vec::new();
        if let Some(f) = &self.backing_format {
            exts.push((EXT_BACKING_FORMAT, f.as_bytes().to_vec()));
        }
        if let Some(f) = &self.data_file {
            exts.push((EXT_DATA_FILE, f.as_bytes().to_vec()));
        }
        // QEMU's order: crypto before the feature table, the rest after.
        for e in self.other_exts.iter().filter(|e| e.kind == EXT_CRYPTO) {
            exts.push((e.kind, e.data.clone()));
        }
        if self.version >= 3 {
            exts.push((EXT_FEATURE_TABLE, feature_table()));
        }
        // QEMU leaves the (optional) feature-name table out when the first
        // cluster has no room for it, as with 512-byte clusters.
        let ext_bytes = |e: &[(u32, Vec<u8>)]| -> usize {
            e.iter()
                .map(|(_, d)| 8 + d.len().div_ceil(8) * 8)
                .sum::<usize>()
                + 8
        };
        let name_len = self.backing_file.as_ref().map_or(0, |n| n.len());
        let rest: Vec<(u32, Vec<u8>)> = self
            .other_exts
            .iter()
            .filter(|e| e.kind != EXT_CRYPTO)
            .map(|e| (e.kind, e.data.clone()))
            .collect();
        if off + ext_bytes(&exts) + ext_bytes(&rest) - 8 + name_len > cs {
            exts.retain(|(k, _)| *k != EXT_FEATURE_TABLE);
        }
        for e in self.other_exts.iter().filter(|e| e.kind != EXT_CRYPTO) {
            exts.push((e.kind, e.data.clone()));
        }
        for (kind, data) in exts.iter().chain(std::iter::once(&(EXT_END, Vec::new()))) {
            let padded = data.len().div_ceil(8) * 8;
            if off + 8 + padded > cs {
                return Err(Error::invalid(
                    "Header extensions do not fit in the first cluster",
                ));
            }
            put32(&mut b, off, *kind);
            put32(&mut b, off + 4, data.len() as u32);
            b[off + 8..off + 8 + data.len()].copy_from_slice(data);
            off += 8 + padded;
        }
        if let Some(name) = &self.backing_file {
            let nb = name.as_bytes();
            if nb.len() > MAX_BACKING_NAME as usize || off + nb.len() > cs {
                return Err(Error::invalid("Backing file name too long"));
            }
            put64(&mut b, 8, off as u64);
            put32(&mut b, 16, nb.len() as u32);
            b[off..off + nb.len()].copy_from_slice(nb);
        }
        Ok(b)
    }
}

/// The feature-name table QEMU writes into every v3 image.
fn feature_table() -> Vec<u8> {
    const FEATURES: &[(u8, u8, &str)] = &[
        (0, 0, "dirty bit"),
        (0, 1, "corrupt bit"),
        (0, 2, "external data file"),
        (0, 3, "compression type"),
        (0, 4, "extended L2 entries"),
        (1, 0, "lazy refcounts"),
        (2, 0, "bitmaps"),
        (2, 1, "raw external data"),
    ];
    let mut v = Vec::with_capacity(FEATURES.len() * 48);
    for (t, bit, name) in FEATURES {
        let mut e = [0u8; 48];
        e[0] = *t;
        e[1] = *bit;
        e[2..2 + name.len()].copy_from_slice(name.as_bytes());
        v.extend_from_slice(&e);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_rejected_without_panic() {
        let mut b = vec![0u8; 512];
        b[..4].copy_from_slice(&super::super::MAGIC);
        for v in [0u32, 1, 4, 0xffff_ffff] {
            b[4..8].copy_from_slice(&v.to_be_bytes());
            assert!(Header::parse(&b).is_err());
        }
        b[4..8].copy_from_slice(&3u32.to_be_bytes());
        for cb in [0u32, 8, 22, 64, u32::MAX] {
            b[20..24].copy_from_slice(&cb.to_be_bytes());
            assert!(Header::parse(&b).is_err());
        }
    }
}
