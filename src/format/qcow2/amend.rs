//! Header rewrites: the backing file reference (`rebase`) and `amend`
//! (compat upgrade/downgrade, lazy refcounts, refcount width, size).
//!
//! The header is always rewritten from what is on disk (so fields other
//! code updates in place, such as the refcount table location, are never
//! lost) and as one write of the first cluster after everything it points
//! to is stable, as QEMU's qcow2_update_header does.

use super::header::{self, Compression, Header};
use super::l2::{L2Cache, L1E_OFFSET_MASK, L2E_OFFSET_MASK, OFLAG_COPIED, OFLAG_ZERO};
use super::refcount::Refcounts;
use super::{Meta, Qcow2};
use crate::error::{Error, ErrorKind, Result};
use crate::format::{BackingRead, BackingRef, CreateOptions, OptDesc, OptKind, Prealloc};

/// Options `amend` accepts for qcow2, in the order QEMU applies them
/// (which decides which error comes first).
pub const AMEND_OPTS: &[OptDesc] = &[
    OptDesc {
        name: "encrypt.state",
        kind: OptKind::Str,
        help: "Select new state of affected keyslots (active/inactive)",
    },
    OptDesc {
        name: "encrypt.keyslot",
        kind: OptKind::Number,
        help: "Select a single keyslot to modify explicitly",
    },
    OptDesc {
        name: "encrypt.old-secret",
        kind: OptKind::Str,
        help: "Select all keyslots that match this password",
    },
    OptDesc {
        name: "encrypt.new-secret",
        kind: OptKind::Str,
        help: "New secret to set in the matching keyslots. Empty string to erase",
    },
    OptDesc {
        name: "encrypt.iter-time",
        kind: OptKind::Number,
        help: "Time to spend in PBKDF in milliseconds",
    },
    OptDesc {
        name: "size",
        kind: OptKind::Size,
        help: "Virtual disk size",
    },
    OptDesc {
        name: "compat",
        kind: OptKind::Str,
        help: "Compatibility level (v2 [0.10] or v3 [1.1])",
    },
    OptDesc {
        name: "backing_file",
        kind: OptKind::Str,
        help: "File name of a base image",
    },
    OptDesc {
        name: "backing_fmt",
        kind: OptKind::Str,
        help: "Image format of the base image",
    },
    OptDesc {
        name: "data_file",
        kind: OptKind::Str,
        help: "File name of an external data file",
    },
    OptDesc {
        name: "data_file_raw",
        kind: OptKind::Bool,
        help: "The external data file must stay valid as a raw image",
    },
    OptDesc {
        name: "lazy_refcounts",
        kind: OptKind::Bool,
        help: "Postpone refcount updates",
    },
    OptDesc {
        name: "refcount_bits",
        kind: OptKind::Number,
        help: "Width of a reference count entry in bits",
    },
];

const V3_HINT: &str = "(use compat=1.1 or greater)";

/// Set refcount entry `i` of a zeroed block (entries of `1 << order` bits,
/// sub-byte widths LSB first).
pub(super) fn put_refcount(block: &mut [u8], order: u32, i: usize, v: u64) {
    let bits = 1usize << order;
    if bits < 8 {
        let per = 8 / bits;
        block[i / per] |= ((v as u8) & ((1u16 << bits) - 1) as u8) << ((i % per) * bits);
    } else {
        let bytes = bits / 8;
        let be = v.to_be_bytes();
        block[i * bytes..(i + 1) * bytes].copy_from_slice(&be[8 - bytes..]);
    }
}

impl Qcow2 {
    /// The header as it is on disk now.
    fn header_from_disk(&self) -> Result<Header> {
        // Past EOF reads as zeros, as at open.
        let mut head = vec![0u8; self.cs() as usize];
        self.file.read_at(&mut head, 0)?;
        Header::parse(&head)
    }

    /// Write `h` as the first cluster once everything before it is stable.
    pub(super) fn write_header(&self, h: &Header) -> Result<()> {
        let buf = h.serialize().map_err(|_| Error::from_errno(libc::ENOSPC))?;
        self.flush_all()?;
        self.file.write_at(&buf, 0)?;
        self.file.flush()?;
        *self.hdr.lock() = h.clone();
        Ok(())
    }

    fn flush_all(&self) -> Result<()> {
        if let Some(d) = &self.data_file {
            d.flush()?;
        }
        self.file.flush()
    }

    fn require_writable(&self) -> Result<()> {
        if !self.writable {
            return Err(Error::new(
                ErrorKind::PermissionDenied,
                "Image is read-only",
            ));
        }
        Ok(())
    }

    /// Point the header at another backing file (or none); errors carry
    /// the errno QEMU's bdrv_change_backing_file returns.
    pub(super) fn set_backing(&self, b: Option<&BackingRef>) -> Result<()> {
        self.require_writable()?;
        if b.is_some_and(|b| b.filename.len() > header::MAX_BACKING_NAME as usize) {
            return Err(Error::from_errno(libc::EINVAL));
        }
        let mut h = self.header_from_disk()?;
        h.backing_file = b.map(|b| b.filename.clone());
        h.backing_format = b.and_then(|b| b.format.clone());
        self.write_header(&h)
    }

    /// `amend -o ...`. `backing`/`backing_size` are the opened backing
    /// chain and its length (a grown area must not show it); `progress`
    /// gets percentages.
    pub(super) fn amend(
        &self,
        opts: &CreateOptions,
        backing: &dyn BackingRead,
        backing_size: Option<u64>,
        force: bool,
        progress: &mut dyn FnMut(f64),
    ) -> Result<()> {
        self.require_writable()?;
        opts.validate(AMEND_OPTS)?;
        let h = self.header_from_disk()?;
        let old_version = h.version;
        let mut new_version = old_version;
        let mut new_size = None;
        let mut backing_file: Option<String> = None;
        let mut backing_fmt: Option<String> = None;
        let mut data_file: Option<String> = None;
        let mut lazy = h.compatible & header::COMPAT_LAZY_REFCOUNTS != 0;
        let mut refcount_bits = h.refcount_bits() as u64;
        let mut data_file_raw = h.autoclear & header::AUTOCLEAR_DATA_FILE_RAW != 0;
        let has_data_file = h.incompatible & header::INCOMPAT_DATA_FILE != 0;
        let mut encryption_update = false;
        for d in AMEND_OPTS {
            let Some(v) = opts.get(d.name) else {
                continue;
            };
            match d.name {
                n if n.starts_with("encrypt.") => {
                    if h.crypt_method == 0 {
                        return Err(Error::invalid(
                            "Can't amend encryption options - encryption not present",
                        ));
                    }
                    if h.crypt_method != 2 {
                        return Err(Error::unsupported(
                            "Only LUKS encryption options can be amended",
                        ));
                    }
                    encryption_update = true;
                }
                "size" => new_size = opts.get_size("size")?.filter(|&s| s != 0),
                "compat" => {
                    new_version = match v {
                        "0.10" | "v2" => 2,
                        "1.1" | "v3" => 3,
                        _ => {
                            return Err(Error::invalid(format!("Unknown compatibility level {v}")))
                        }
                    }
                }
                "backing_file" => backing_file = Some(v.to_string()),
                "backing_fmt" => backing_fmt = Some(v.to_string()),
                "data_file" => {
                    if !has_data_file {
                        return Err(Error::invalid(
                            "data-file can only be set for images that use an external data file",
                        ));
                    }
                    data_file = Some(v.to_string());
                }
                "data_file_raw" => {
                    data_file_raw = opts.get_bool("data_file_raw", data_file_raw)?;
                    if data_file_raw && h.autoclear & header::AUTOCLEAR_DATA_FILE_RAW == 0 {
                        return Err(Error::invalid(
                            "data-file-raw cannot be set on existing images",
                        ));
                    }
                }
                "lazy_refcounts" => lazy = opts.get_bool("lazy_refcounts", lazy)?,
                "refcount_bits" => {
                    refcount_bits = opts.get_number("refcount_bits")?.unwrap_or(0);
                    if refcount_bits == 0 || refcount_bits > 64 || !refcount_bits.is_power_of_two()
                    {
                        return Err(Error::invalid(
                            "Refcount width must be a power of two and may not exceed 64 bits",
                        ));
                    }
                }
                _ => {}
            }
        }

        // Upgrade first: later steps may need v3.
        if new_version > old_version {
            progress(0.0);
            self.upgrade()?;
            progress(50.0);
            progress(100.0);
        }
        if encryption_update {
            let get = |k: &str| opts.get(&format!("encrypt.{k}")).map(str::to_string);
            let p = crate::crypto::luks::AmendParams::from_options(&get)?;
            self.amend_keyslots(&p, force)?;
        }
        if backing_file.is_some() || backing_fmt.is_some() {
            let cur = self.hdr.lock().clone();
            if backing_file != cur.backing_file || backing_fmt != cur.backing_format {
                return Err(Error::invalid(
                    "Cannot amend the backing file\nYou can use 'qemu-img rebase' instead.",
                ));
            }
        }
        let cur_lazy = self.hdr.lock().compatible & header::COMPAT_LAZY_REFCOUNTS != 0;
        if cur_lazy != lazy {
            if lazy && new_version < 3 {
                return Err(Error::invalid(format!(
                    "Lazy refcounts only supported with compatibility level 1.1 and above {V3_HINT}"
                )));
            }
            let mut h = self.header_from_disk()?;
            if lazy {
                h.compatible |= header::COMPAT_LAZY_REFCOUNTS;
            } else {
                // Our refcounts are always written through: clean already.
                h.incompatible &= !header::INCOMPAT_DIRTY;
                h.compatible &= !header::COMPAT_LAZY_REFCOUNTS;
            }
            self.write_header(&h)?;
        }
        if refcount_bits != self.hdr.lock().refcount_bits() as u64 {
            if new_version < 3 && refcount_bits != 16 {
                return Err(Error::invalid(format!(
                    "Refcount widths other than 16 bits require compatibility level 1.1 or above {V3_HINT}"
                )));
            }
            self.change_refcount_order(refcount_bits.trailing_zeros(), progress)?;
        }
        {
            let mut h = self.header_from_disk()?;
            if data_file_raw {
                h.autoclear |= header::AUTOCLEAR_DATA_FILE_RAW;
            } else {
                h.autoclear &= !header::AUTOCLEAR_DATA_FILE_RAW;
            }
            if let Some(f) = data_file {
                h.data_file = (!f.is_empty()).then_some(f);
            }
            self.write_header(&h)
                .map_err(|e| e.context("Failed to update the image header"))?;
        }
        if let Some(size) = new_size {
            let cur = self.virtual_size_now();
            if size > cur && backing_size.is_some_and(|b| b > cur) {
                self.grow_zeroed(size, Prealloc::Off, backing)?;
            } else {
                self.resize_any(size, Prealloc::Off)?;
            }
        }
        // Downgrade last, once features it cannot keep are gone.
        if new_version < old_version {
            self.downgrade(progress)?;
        }
        Ok(())
    }

    fn upgrade(&self) -> Result<()> {
        // Snapshots written by v2 may lack the v3 extra data; rewriting the
        // table adds it.
        let short = self.snapshots.iter().any(|s| s.disk_size.is_none());
        if short {
            self.rewrite_snapshot_table()
                .map_err(|e| e.context("Failed to update the snapshot table"))?;
        }
        let mut h = self.header_from_disk()?;
        h.version = 3;
        h.header_length = header::V3_HEADER_LEN;
        h.refcount_order = 4;
        h.compression = Compression::Zlib;
        h.extra.clear();
        h.incompatible = 0;
        h.compatible = 0;
        h.autoclear = 0;
        self.write_header(&h)
            .map_err(|e| e.context("Failed to update the image header"))
    }

    fn downgrade(&self, progress: &mut dyn FnMut(f64)) -> Result<()> {
        let h = self.header_from_disk()?;
        if h.refcount_order != 4 {
            return Err(Error::unsupported("compat=0.10 requires refcount_bits=16"));
        }
        if h.incompatible & header::INCOMPAT_DATA_FILE != 0 {
            return Err(Error::unsupported(
                "Cannot downgrade an image with a data file",
            ));
        }
        let size = self.virtual_size_now();
        for s in self.snapshots.iter() {
            let disk = s.disk_size.unwrap_or(size);
            if s.info.vm_state_size > u32::MAX as u64 || disk != size {
                return Err(Error::unsupported(
                    "Internal snapshots prevent downgrade of image",
                ));
            }
        }
        let blocking = h.incompatible & !header::INCOMPAT_DIRTY & !header::INCOMPAT_COMPRESSION;
        if blocking != 0 {
            return Err(Error::unsupported(format!(
                "Cannot downgrade an image with incompatible features {blocking:#x} set"
            )));
        }
        self.expand_zero_clusters(h.backing_file.is_some(), progress)
            .map_err(|e| e.context("Failed to turn zero into data clusters"))?;
        let mut h = self.header_from_disk()?;
        if h.incompatible & header::INCOMPAT_COMPRESSION != 0 {
            if self.has_compressed_clusters()? {
                return Err(Error::unsupported(
                    "Cannot downgrade an image with zstd compression type and existing compressed clusters",
                ));
            }
            h.compression = Compression::Zlib;
        }
        h.version = 2;
        h.header_length = header::V2_HEADER_LEN;
        h.incompatible = 0;
        h.compatible = 0;
        h.autoclear = 0;
        h.extra.clear();
        self.write_header(&h)
            .map_err(|e| e.context("Failed to update the image header"))
    }

    /// v2 has no zero flag: zero clusters become unallocated (no backing
    /// file) or real clusters of zeros, in every L1 table.
    fn expand_zero_clusters(&self, has_backing: bool, progress: &mut dyn FnMut(f64)) -> Result<()> {
        self.prepare_write()?;
        let _w = self.write_lock.lock();
        let mut m = self.meta.lock();
        let mut tables = vec![m.l1.clone()];
        for s in self.snapshots.iter() {
            if let Err((msg, errno)) = self.validate_snapshot_l1(s.l1_table_offset, s.l1_size) {
                crate::events::notice(&crate::format::vhdx::error_report(msg));
                return Err(Error::from_errno(errno));
            }
            let mut raw = vec![0u8; s.l1_size as usize * 8];
            self.file.read_exact_at(&mut raw, s.l1_table_offset)?;
            tables.push(crate::format::bytes::be64_table(&raw));
        }
        // Progress advances per L1 entry visited, over all tables, as QEMU's.
        let total: usize = tables.iter().map(Vec::len).sum();
        let mut visited = 0usize;
        for l1 in tables {
            for e in l1 {
                let l2off = e & L1E_OFFSET_MASK;
                if l2off != 0 {
                    self.expand_in_l2(&mut m, l2off, has_backing)?;
                }
                visited += 1;
                progress(100.0 * visited as f64 / total as f64);
            }
        }
        m.comp_cursor = 0;
        Ok(())
    }

    fn expand_in_l2(&self, m: &mut Meta, l2off: u64, has_backing: bool) -> Result<()> {
        let cs = self.cs();
        let cb = self.geo.cluster_bits;
        if l2off & (cs - 1) != 0 {
            return Err(Error::corrupt(format!(
                "L2 table offset {l2off:#x} unaligned"
            )));
        }
        let l2_refcount = m.rc.get(&self.file, l2off >> cb)?;
        let mut table = m.l2.get(&self.file, &self.geo, l2off)?.clone();
        let mut dirty = false;
        for s in table.iter_mut() {
            if self.geo.is_compressed(s) || s.entry & OFLAG_ZERO == 0 {
                continue;
            }
            let mut off = s.entry & L2E_OFFSET_MASK;
            if off == 0 {
                if !has_backing {
                    s.entry = 0;
                    dirty = true;
                    continue;
                }
                off = m.rc.alloc(&self.file, 1)?;
                if l2_refcount > 1 {
                    let extra = i64::try_from(l2_refcount - 1)
                        .map_err(|_| Error::corrupt("Reference count overflow"))?;
                    m.rc.add(&self.file, off >> cb, 1, extra)?;
                }
            }
            if off & (cs - 1) != 0 {
                return Err(Error::corrupt(format!(
                    "Cluster allocation offset {off:#x} unaligned (L2 offset: {l2off:#x})"
                )));
            }
            self.file.write_zeroes_allocated(off, cs)?;
            s.entry = if l2_refcount == 1 {
                off | OFLAG_COPIED
            } else {
                off
            };
            dirty = true;
        }
        if dirty {
            self.file.flush()?;
            self.file
                .write_at(&super::l2::encode(&table, self.geo.extended), l2off)?;
            m.l2.insert(l2off, table);
        }
        Ok(())
    }

    /// Whether the active state maps any compressed cluster.
    fn has_compressed_clusters(&self) -> Result<bool> {
        let mut m = self.meta.lock();
        let l1 = m.l1.clone();
        for e in l1 {
            let l2off = e & L1E_OFFSET_MASK;
            if l2off == 0 {
                continue;
            }
            let t = m.l2.get(&self.file, &self.geo, l2off)?;
            if t.iter().any(|s| self.geo.is_compressed(s)) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Rebuild the refcount structures with entries of `1 << order` bits:
    /// new refcount blocks and table go after the end of the file, the
    /// header switches to them in one write, and the old ones are free in
    /// the new counts.
    fn change_refcount_order(&self, order: u32, progress: &mut dyn FnMut(f64)) -> Result<()> {
        self.prepare_write()?;
        let _w = self.write_lock.lock();
        let mut m = self.meta.lock();
        let cs = self.cs();
        let cb = self.geo.cluster_bits;
        let bits = 1u32 << order;
        let max = if bits == 64 {
            u64::MAX
        } else {
            (1u64 << bits) - 1
        };
        let file_clusters = self.file.len()?.div_ceil(cs);
        // Current counts up to the last cluster in use.
        let old_blocks: Vec<u64> = m.rc.block_offsets().collect();
        let old_table = (m.rc.table_offset(), m.rc.table_clusters() as u64);
        let mut counts: Vec<u64> = Vec::new();
        let scan_end = file_clusters;
        const MAX_CLUSTERS: u64 = 1 << 27;
        if scan_end > MAX_CLUSTERS {
            return Err(Error::unsupported(
                "Image too large to change the refcount width in memory",
            ));
        }
        for c in 0..scan_end {
            counts.push(m.rc.get(&self.file, c)?);
        }
        // The old structures are free once the header points elsewhere.
        let mut free = |off: u64, n: u64| {
            for c in (off >> cb)..(off >> cb) + n {
                if let Some(v) = counts.get_mut(c as usize) {
                    *v = 0;
                }
            }
        };
        free(old_table.0, old_table.1);
        for b in &old_blocks {
            free(*b, 1);
        }
        if let Some((c, &v)) = counts.iter().enumerate().find(|(_, &v)| v > max) {
            return Err(Error::invalid(format!(
                "Cannot decrease refcount entry width to {bits} bits: Cluster at offset {:#x} has a refcount of {v}",
                (c as u64) << cb
            )));
        }
        let last_used = counts
            .iter()
            .rposition(|&v| v != 0)
            .map_or(1, |p| p as u64 + 1);
        counts.truncate(last_used as usize);
        let epb_shift = cb + 3 - order;
        let epb = 1u64 << epb_shift;
        // Blocks that ranges in use before the new area need.
        let start = file_clusters.max(last_used);
        let mut base_blocks: Vec<u64> = Vec::new();
        for (c, &v) in counts.iter().enumerate() {
            let bi = c as u64 >> epb_shift;
            if v != 0 && base_blocks.last() != Some(&bi) {
                base_blocks.push(bi);
            }
        }
        // Fixed point: the new structures count themselves.
        let (mut nb, mut nt) = (0u64, 1u64);
        let blocks = loop {
            let end = start + nb + nt;
            let mut bl = base_blocks.clone();
            for bi in (start >> epb_shift)..=((end - 1) >> epb_shift) {
                if !bl.contains(&bi) {
                    bl.push(bi);
                }
            }
            bl.sort_unstable();
            let max_bi = bl.last().copied().unwrap_or(0);
            let nt2 = ((max_bi + 1) * 8).div_ceil(cs).max(1);
            if bl.len() as u64 == nb && nt2 == nt {
                break bl;
            }
            nb = bl.len() as u64;
            nt = nt2;
        };
        if (nt << cb) > header::MAX_REFTABLE_BYTES {
            return Err(Error::from_errno(libc::EFBIG));
        }
        // QEMU walks twice (the second walk sees the new reftable), and once
        // more when the reftable needs a refcount block nothing else needs.
        let refblocks_only = {
            // The same fixed point without the reftable.
            let mut n = 0usize;
            loop {
                let mut bl = base_blocks.clone();
                for c in start..start + n as u64 {
                    let bi = c >> epb_shift;
                    if !bl.contains(&bi) {
                        bl.push(bi);
                    }
                }
                if bl.len() == n {
                    break n;
                }
                n = bl.len();
            }
        };
        let walks = if blocks.len() > refblocks_only { 3 } else { 2 };
        let rts = old_table.1 * cs / 8;
        let walk = |progress: &mut dyn FnMut(f64), w: u64, total: u64| {
            for i in 0..rts {
                progress(100.0 * (w * rts + i) as f64 / (total * rts) as f64);
            }
            progress(100.0 * (w + 1) as f64 / total as f64);
        };
        for w in 0..walks {
            walk(progress, w, (w + 2).max(3));
        }
        let end = start + nb + nt;
        counts.resize(end as usize, 0);
        for v in &mut counts[start as usize..end as usize] {
            *v = 1;
        }
        let mut table = vec![0u8; (nt * cs) as usize];
        for (k, &bi) in blocks.iter().enumerate() {
            let mut block = vec![0u8; cs as usize];
            let first = bi * epb;
            for i in 0..epb {
                if let Some(&v) = counts.get((first + i) as usize) {
                    if v != 0 {
                        put_refcount(&mut block, order, i as usize, v);
                    }
                }
            }
            let off = (start + k as u64) << cb;
            self.file.write_at(&block, off)?;
            table[bi as usize * 8..bi as usize * 8 + 8].copy_from_slice(&off.to_be_bytes());
        }
        let table_off = (start + nb) << cb;
        self.file.write_at(&table, table_off)?;
        self.file.flush()?;
        let mut h = self.header_from_disk()?;
        h.refcount_order = order;
        h.refcount_table_offset = table_off;
        h.refcount_table_clusters = nt as u32;
        self.write_header(&h)?;
        m.rc = Refcounts::load(&self.file, cb, order, table_off, nt as u32)?;
        m.l2 = L2Cache::new(cs);
        m.comp_cursor = 0;
        walk(progress, walks, walks + 1);
        Ok(())
    }

    /// Rewrite the snapshot table as it is (adds v3 extra data).
    fn rewrite_snapshot_table(&self) -> Result<()> {
        self.prepare_write()?;
        let _w = self.write_lock.lock();
        let mut m = self.meta.lock();
        self.rewrite_table_locked(&mut m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refcount_entries_pack_like_refcount_rs() {
        let mut b = vec![0u8; 16];
        put_refcount(&mut b, 0, 1, 1);
        assert_eq!(b[0], 0b10);
        let mut b = vec![0u8; 16];
        put_refcount(&mut b, 4, 1, 0x1234);
        assert_eq!(&b[2..4], &[0x12, 0x34]);
        let mut b = vec![0u8; 16];
        put_refcount(&mut b, 2, 1, 0xf);
        assert_eq!(b[0], 0xf0);
    }
}
