//! qcow (version 1): QEMU's original copy-on-write format.
//!
//! Layout: a 48-byte big-endian header, the backing file name right after
//! it, then the L1 table. L1 entries point at L2 tables of `2^l2_bits`
//! entries; an L2 entry is 0 (unallocated: the backing file or zeros), the
//! host offset of a data cluster, or, with the top bit set, a compressed
//! cluster (`offset | size << (63 - cluster_bits)`, raw deflate). There are
//! no refcounts: new L2 tables and clusters are appended at the end of the
//! file (cluster-aligned), compressed clusters byte-packed at sector
//! granularity, and replaced clusters are simply abandoned, as in QEMU.
//!
//! Write order: a new L2 table is written (zeros) before the L1 entry that
//! points at it; data is written before the L2 entry that maps it. A crash
//! in between leaves unreferenced space at the end of the file, never a
//! mapping to unwritten data.

use std::path::Path;
use std::sync::Arc;

use flate2::{Compress, Decompress, FlushCompress, FlushDecompress};
use parking_lot::Mutex;

use super::qed::table::{check_request, Endian, TableCache, MAX_REQUEST_END};
use super::{
    BackingRead, BackingRef, CreateOptions, Driver, DriverInfo, DriverOpenOptions, Extent,
    NoBacking, OptDesc, OptKind, Status,
};
use crate::error::{Error, ErrorKind, Result};
use crate::format::bytes::{be32, be64};
use crate::io::HostFile;

pub const MAGIC: [u8; 4] = *b"QFI\xfb";
const VERSION: u32 = 1;
const HEADER_LEN: usize = 48;
const OFLAG_COMPRESSED: u64 = 1 << 63;
const MAX_BACKING_NAME: u32 = 1023;
/// QEMU's bound: the L1 table must fit in INT_MAX bytes.
const MAX_L1_ENTRIES: u64 = i32::MAX as u64 / 8;
/// L1 pages are read on demand; the cache holds at most this much of it.
const L1_PAGE: u64 = 64 << 10;
const L1_BUDGET: u64 = 32 << 20;
const L2_BUDGET: u64 = 32 << 20;
/// Highest byte offset the block layer addresses.
const MAX_OFFSET: u64 = MAX_REQUEST_END;

pub const CREATE_OPTS: &[OptDesc] = &[
    OptDesc {
        name: "backing_file",
        kind: OptKind::Str,
        help: "File name of a base image",
    },
    OptDesc {
        name: "backing_fmt",
        kind: OptKind::Str,
        help: "Format of the backing image",
    },
    OptDesc {
        name: "encrypt.format",
        kind: OptKind::Str,
        help: "Encrypt the image, format choices: 'aes'",
    },
    OptDesc {
        name: "encrypt.key-secret",
        kind: OptKind::Str,
        help: "ID of the secret that provides the AES encryption key",
    },
    OptDesc {
        name: "encryption",
        kind: OptKind::Bool,
        help: "Encrypt the image with format 'aes'. (Deprecated in favor of encrypt.format=aes)",
    },
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
    OptDesc {
        name: "size",
        kind: OptKind::Size,
        help: "Virtual disk size",
    },
];

/// qcow v1 magic and version 1 (QEMU's probe; the head is zero-padded).
pub fn probe(head: &[u8]) -> bool {
    head.len() >= 8 && head[..4] == MAGIC && be32(head, 4) == VERSION
}

#[derive(Debug, Clone)]
struct Header {
    size: u64,
    cluster_bits: u32,
    l2_bits: u32,
    crypt_method: u32,
    l1_table_offset: u64,
    l1_size: u64,
    backing_offset: u64,
    backing_len: u32,
}

impl Header {
    /// Validate as QEMU's qcow_open does, in its order and words.
    fn parse(b: &[u8; HEADER_LEN]) -> Result<Header> {
        if b[..4] != MAGIC {
            return Err(Error::corrupt("Image not in qcow format"));
        }
        let version = be32(b, 4);
        if version != VERSION {
            let mut m = format!("qcow (v1) does not support qcow version {version}");
            if version == 2 || version == 3 {
                m.push_str("\nTry the 'qcow2' driver instead.");
            }
            return Err(Error::unsupported(m));
        }
        let size = be64(b, 24);
        if size <= 1 {
            return Err(Error::corrupt(
                "Image size is too small (must be at least 2 bytes)",
            ));
        }
        let cluster_bits = b[32] as u32;
        if !(9..=16).contains(&cluster_bits) {
            return Err(Error::corrupt("Cluster size must be between 512 and 64k"));
        }
        let l2_bits = b[33] as u32;
        if !(6..=13).contains(&l2_bits) {
            return Err(Error::corrupt("L2 table size must be between 512 and 64k"));
        }
        let crypt_method = be32(b, 36);
        if crypt_method > 1 {
            return Err(Error::corrupt("invalid encryption method in qcow header"));
        }
        let shift = cluster_bits + l2_bits;
        if size > u64::MAX - (1u64 << shift) {
            return Err(Error::invalid("Image too large"));
        }
        let l1_size = (size + (1u64 << shift) - 1) >> shift;
        if l1_size > MAX_L1_ENTRIES {
            return Err(Error::invalid("Image too large"));
        }
        Ok(Header {
            size,
            cluster_bits,
            l2_bits,
            crypt_method,
            l1_table_offset: be64(b, 40),
            l1_size,
            backing_offset: be64(b, 8),
            backing_len: be32(b, 16),
        })
    }
}

/// What one guest cluster maps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Unallocated,
    Data(u64),
    /// Stored deflate stream: (offset, bytes).
    Compressed(u64, u64),
}

/// A piece of a guest range and where its bytes come from.
#[derive(Debug, Clone, Copy)]
enum Seg {
    Host {
        host: u64,
        len: u64,
    },
    Backing {
        len: u64,
    },
    Compressed {
        coff: u64,
        clen: u64,
        skip: u64,
        len: u64,
    },
}

impl Seg {
    fn len(&self) -> u64 {
        match *self {
            Seg::Host { len, .. } | Seg::Backing { len } | Seg::Compressed { len, .. } => len,
        }
    }
}

/// Mutable metadata: held only for lookups and table updates.
struct Meta {
    l1: TableCache,
    l2: TableCache,
    /// End of the file as far as allocation is concerned.
    end: u64,
}

pub struct Qcow {
    file: HostFile,
    hdr: Header,
    backing: Option<String>,
    meta: Mutex<Meta>,
    /// Serialises writers; readers never take it.
    write_lock: Mutex<()>,
    writable: bool,
    /// The last decompressed cluster (offset of its stream, data).
    ccache: Mutex<Option<(u64, Arc<Vec<u8>>)>>,
    /// AES data cipher (IVs by guest sector) when encrypted and keyed.
    crypto: Option<crate::crypto::SectorCipher>,
}

/// `Could not open 'PATH': strerror`, as QEMU words a driver's bare errno.
fn open_errno(file: &HostFile, errno: i32) -> Error {
    let e = Error::from_errno(errno);
    let m = format!(
        "Could not open '{}': {}",
        file.path().display(),
        e.message()
    );
    e.with_message(m)
}

fn read_only() -> Error {
    Error::new(ErrorKind::PermissionDenied, "Image is read-only")
}

fn too_big() -> Error {
    Error::from_errno(libc::EFBIG)
}

impl Qcow {
    pub fn open(file: HostFile, opts: &DriverOpenOptions) -> Result<Qcow> {
        let mut head = [0u8; HEADER_LEN];
        file.read_at(&mut head, 0)?;
        let hdr = Header::parse(&head)?;
        // AES images need the key secret, except for `info` (no data read).
        let crypto = if hdr.crypt_method != 0 && !opts.metadata_only {
            let id = opts.key_secret.as_deref().ok_or_else(|| {
                Error::invalid("Parameter 'encrypt.key-secret' is required for cipher")
            })?;
            let pw = crate::crypto::secret::passphrase(id)?;
            Some(crate::crypto::qcow_aes(&pw)?)
        } else {
            None
        };
        let l1_end = hdr
            .l1_size
            .checked_mul(8)
            .and_then(|n| hdr.l1_table_offset.checked_add(n));
        if !matches!(l1_end, Some(e) if e <= MAX_OFFSET) {
            return Err(open_errno(&file, libc::EIO));
        }
        let mut backing = None;
        if hdr.backing_offset != 0 {
            if hdr.backing_len > MAX_BACKING_NAME {
                return Err(Error::invalid("Backing file name too long"));
            }
            let mut name = vec![0u8; hdr.backing_len as usize];
            // Past the end of the file it reads as zeros (no name); past
            // what the block layer addresses it is an I/O error.
            if check_request(hdr.backing_offset, hdr.backing_len as u64).is_err() {
                return Err(open_errno(&file, libc::EIO));
            }
            file.read_at(&mut name, hdr.backing_offset)?;
            let n = name.iter().position(|&c| c == 0).unwrap_or(name.len());
            if n > 0 {
                backing = Some(String::from_utf8_lossy(&name[..n]).into_owned());
            }
        }
        let end = file.len()?;
        let l2_bytes = 8u64 << hdr.l2_bits;
        let l1_page = (hdr.l1_size * 8).clamp(8, L1_PAGE);
        Ok(Qcow {
            meta: Mutex::new(Meta {
                l1: TableCache::new(Endian::Big, l1_page, L1_BUDGET),
                l2: TableCache::new(Endian::Big, l2_bytes, L2_BUDGET),
                end,
            }),
            hdr,
            backing,
            file,
            write_lock: Mutex::new(()),
            writable: opts.writable,
            ccache: Mutex::new(None),
            crypto,
        })
    }

    fn cs(&self) -> u64 {
        1 << self.hdr.cluster_bits
    }
    fn l2_entries(&self) -> u64 {
        1 << self.hdr.l2_bits
    }
    /// Bits of a compressed entry that hold the offset.
    fn coff_mask(&self) -> u64 {
        (1u64 << (63 - self.hdr.cluster_bits)) - 1
    }

    fn encrypted_error(&self) -> Result<()> {
        if self.hdr.crypt_method != 0 && self.crypto.is_none() {
            return Err(Error::unsupported(
                "Parameter 'encrypt.key-secret' is required for cipher",
            ));
        }
        Ok(())
    }

    fn decode(&self, e: u64) -> Kind {
        if e == 0 {
            Kind::Unallocated
        } else if e & OFLAG_COMPRESSED != 0 {
            let shift = 63 - self.hdr.cluster_bits;
            Kind::Compressed(e & self.coff_mask(), (e >> shift) & (self.cs() - 1))
        } else {
            Kind::Data(e)
        }
    }

    /// (L1 index, L2 index) of guest cluster `ci`, checked against the L1.
    fn indexes(&self, ci: u64) -> Result<(u64, u64)> {
        let l1i = ci >> self.hdr.l2_bits;
        if l1i >= self.hdr.l1_size {
            return Err(Error::out_of_range("Cluster beyond the L1 table"));
        }
        Ok((l1i, ci & (self.l2_entries() - 1)))
    }

    fn kind(&self, m: &mut Meta, ci: u64) -> Result<Kind> {
        let (l1i, l2i) = self.indexes(ci)?;
        let l2 = m.l1.get(&self.file, self.hdr.l1_table_offset, l1i)?;
        if l2 == 0 {
            return Ok(Kind::Unallocated);
        }
        Ok(self.decode(m.l2.get(&self.file, l2, l2i)?))
    }

    /// Segments covering guest [off, off+len), merged where contiguous.
    fn map(&self, off: u64, len: u64) -> Result<Vec<Seg>> {
        let cs = self.cs();
        let cb = self.hdr.cluster_bits;
        let mut segs: Vec<Seg> = Vec::new();
        let mut m = self.meta.lock();
        let mut pos = off;
        let end = off + len;
        while pos < end {
            let ci = pos >> cb;
            let in_c = pos & (cs - 1);
            let n = (cs - in_c).min(end - pos);
            let seg = match self.kind(&mut m, ci)? {
                Kind::Unallocated => Seg::Backing { len: n },
                Kind::Data(h) => Seg::Host {
                    host: data_offset(h)? + in_c,
                    len: n,
                },
                Kind::Compressed(coff, clen) => Seg::Compressed {
                    coff,
                    clen,
                    skip: in_c,
                    len: n,
                },
            };
            pos += n;
            match (segs.last_mut(), seg) {
                (Some(Seg::Host { host, len }), Seg::Host { host: h2, len: l2 })
                    if *host + *len == h2 =>
                {
                    *len += l2
                }
                (Some(Seg::Backing { len }), Seg::Backing { len: l2 }) => *len += l2,
                _ => segs.push(seg),
            }
        }
        Ok(segs)
    }

    /// Inflate one compressed cluster (cached: reads of one cluster in
    /// small pieces decompress it once).
    fn cluster_data(&self, coff: u64, clen: u64) -> Result<Arc<Vec<u8>>> {
        if let Some((o, d)) = self.ccache.lock().as_ref() {
            if *o == coff {
                return Ok(d.clone());
            }
        }
        let mut input = vec![0u8; clen as usize];
        check_request(coff, clen)?;
        self.file.read_at(&mut input, coff)?;
        let mut out = vec![0u8; self.cs() as usize];
        inflate(&input, &mut out)?;
        let d = Arc::new(out);
        *self.ccache.lock() = Some((coff, d.clone()));
        Ok(d)
    }

    fn read(&self, buf: &mut [u8], off: u64, backing: &dyn BackingRead) -> Result<()> {
        self.encrypted_error()?;
        let mut pos = 0usize;
        for seg in self.map(off, buf.len() as u64)? {
            let n = seg.len() as usize;
            let out = &mut buf[pos..pos + n];
            match seg {
                Seg::Host { host, .. } => {
                    check_request(host, n as u64)?;
                    self.read_host(out, host, off + pos as u64)?
                }
                Seg::Backing { .. } => backing.read_backing(out, off + pos as u64)?,
                Seg::Compressed {
                    coff,
                    clen,
                    skip,
                    len,
                } => {
                    let d = self.cluster_data(coff, clen)?;
                    out.copy_from_slice(&d[skip as usize..(skip + len) as usize]);
                }
            }
            pos += n;
        }
        Ok(())
    }

    fn status(&self, off: u64, max: u64) -> Result<Extent> {
        let cs = self.cs();
        let cb = self.hdr.cluster_bits;
        let end = off.saturating_add(max).min(self.virtual_size());
        let mut m = self.meta.lock();
        let first = self.kind(&mut m, off >> cb)?;
        let in_c = off & (cs - 1);
        let mut pos = (off - in_c + cs).min(end);
        if !matches!(first, Kind::Compressed(..)) {
            while pos < end {
                let k = self.kind(&mut m, pos >> cb)?;
                let same = match (first, k) {
                    (Kind::Unallocated, Kind::Unallocated) => true,
                    (Kind::Data(h0), Kind::Data(h)) => h == h0 + (pos - (off - in_c)),
                    _ => false,
                };
                if !same {
                    break;
                }
                pos = (pos + cs).min(end);
            }
        }
        let crypt = self.hdr.crypt_method != 0;
        let (status, offset, compressed) = match first {
            Kind::Unallocated => (Status::Unallocated, None, false),
            Kind::Data(h) => (Status::Data, (!crypt).then_some(h + in_c), false),
            Kind::Compressed(..) => (Status::Data, None, true),
        };
        Ok(Extent {
            len: (pos - off).max(1),
            status,
            offset,
            compressed,
        })
    }

    fn prepare_write(&self) -> Result<()> {
        if !self.writable {
            return Err(read_only());
        }
        self.encrypted_error()
    }

    /// The L2 table for `l1i`, allocated (zeroed, then linked) if missing.
    fn l2_for_write(&self, m: &mut Meta, l1i: u64) -> Result<u64> {
        let cur = m.l1.get(&self.file, self.hdr.l1_table_offset, l1i)?;
        if cur != 0 {
            return Ok(cur);
        }
        let bytes = 8u64 << self.hdr.l2_bits;
        // QEMU appends at the (sector-rounded) end, cluster-aligned.
        let off = m.end.next_multiple_of(512).next_multiple_of(self.cs());
        if off.checked_add(bytes).is_none_or(|e| e > MAX_OFFSET) {
            return Err(too_big());
        }
        self.file.write_at(&vec![0u8; bytes as usize], off)?;
        m.end = m.end.max(off + bytes);
        m.l2.insert_zeroed(off, bytes);
        m.l1.set(&self.file, self.hdr.l1_table_offset, l1i, &[off])?;
        Ok(off)
    }

    /// Write `data` (whole clusters) into `k` new clusters for guest
    /// clusters `ci..ci+k` (one L2 table), then map them.
    fn alloc_write(&self, ci: u64, data: &[u8]) -> Result<()> {
        let cs = self.cs();
        let k = data.len() as u64 / cs;
        let (l1i, l2i) = self.indexes(ci)?;
        let mut m = self.meta.lock();
        let l2 = self.l2_for_write(&mut m, l1i)?;
        let host = m.end.next_multiple_of(512).next_multiple_of(cs);
        let host_end = host.checked_add(k * cs).filter(|&e| e <= MAX_OFFSET);
        let Some(host_end) = host_end else {
            return Err(too_big());
        };
        m.end = m.end.max(host_end);
        drop(m);
        self.write_host(data, host, ci << self.hdr.cluster_bits)?;
        let entries: Vec<u64> = (0..k).map(|i| host + i * cs).collect();
        let mut m = self.meta.lock();
        m.l2.set(&self.file, l2, l2i, &entries)
    }

    /// Guest bytes at `host` (guest offset `guest`), decrypted in whole
    /// sectors when encrypted (a cluster never splits a sector).
    fn read_host(&self, out: &mut [u8], host: u64, guest: u64) -> Result<()> {
        self.file.event("read_aio");
        let Some(c) = &self.crypto else {
            return self.file.read_at(out, host);
        };
        let head = host % 512;
        let h1 = (host + out.len() as u64).next_multiple_of(512);
        let mut buf = zeroize::Zeroizing::new(vec![0u8; (h1 - host + head) as usize]);
        self.file.read_at(&mut buf, host - head)?;
        c.decrypt((guest - head) / 512, &mut buf);
        out.copy_from_slice(&buf[head as usize..head as usize + out.len()]);
        Ok(())
    }

    /// Store guest bytes at `host`, encrypted when the image is; a range
    /// off sector boundaries is merged with the sectors' content first.
    fn write_host(&self, data: &[u8], host: u64, guest: u64) -> Result<()> {
        self.file.event("write_aio");
        let Some(c) = &self.crypto else {
            return self.file.write_at(data, host);
        };
        let head = host % 512;
        let end = host + data.len() as u64;
        let h1 = end.next_multiple_of(512);
        let mut buf = zeroize::Zeroizing::new(vec![0u8; (h1 - host + head) as usize]);
        if head != 0 || h1 != end {
            self.read_host(&mut buf, host - head, guest - head)?;
        }
        buf[head as usize..head as usize + data.len()].copy_from_slice(data);
        c.encrypt((guest - head) / 512, &mut buf);
        self.file.write_at(&buf, host - head)
    }

    fn write(&self, buf: &[u8], off: u64, backing: &dyn BackingRead) -> Result<()> {
        self.prepare_write()?;
        let _w = self.write_lock.lock();
        self.write_locked(buf, off, backing)
    }

    fn write_locked(&self, buf: &[u8], off: u64, backing: &dyn BackingRead) -> Result<()> {
        let cs = self.cs();
        let cb = self.hdr.cluster_bits;
        let len = buf.len();
        let mut pos = 0usize;
        while pos < len {
            let g = off + pos as u64;
            let ci = g >> cb;
            let in_c = g & (cs - 1);
            let n = ((cs - in_c) as usize).min(len - pos);
            let kind = self.kind(&mut self.meta.lock(), ci)?;
            match kind {
                Kind::Data(h) => {
                    // Extend over following clusters stored right after it.
                    let mut total = n;
                    let mut next = ci + 1;
                    while pos + total < len {
                        let k = self.kind(&mut self.meta.lock(), next)?;
                        if k != Kind::Data(h + (next - ci) * cs) {
                            break;
                        }
                        total += (cs as usize).min(len - pos - total);
                        next += 1;
                    }
                    let host = data_offset(h)? + in_c;
                    check_request(host, total as u64)?;
                    self.write_host(&buf[pos..pos + total], host, g)?;
                    pos += total;
                }
                _ if in_c == 0 && n == cs as usize => {
                    // Whole clusters needing allocation, within one L2 table.
                    let room = self.l2_entries() - (ci & (self.l2_entries() - 1));
                    let mut k = 1u64;
                    while k < room && pos + ((k + 1) * cs) as usize <= len {
                        let next = self.kind(&mut self.meta.lock(), ci + k)?;
                        if matches!(next, Kind::Data(_)) {
                            break;
                        }
                        k += 1;
                    }
                    let end = pos + (k * cs) as usize;
                    self.alloc_write(ci, &buf[pos..end])?;
                    pos = end;
                }
                old => {
                    // Part of a cluster: copy the rest from what it read as.
                    let mut cluster = vec![0u8; cs as usize];
                    match old {
                        Kind::Compressed(coff, clen) => {
                            cluster.copy_from_slice(&self.cluster_data(coff, clen)?)
                        }
                        _ => backing.read_backing(&mut cluster, ci << cb)?,
                    }
                    cluster[in_c as usize..in_c as usize + n].copy_from_slice(&buf[pos..pos + n]);
                    self.alloc_write(ci, &cluster)?;
                    pos += n;
                }
            }
        }
        Ok(())
    }

    fn zero(&self, off: u64, len: u64, backing: &dyn BackingRead) -> Result<()> {
        self.prepare_write()?;
        let _w = self.write_lock.lock();
        let cs = self.cs();
        let cb = self.hdr.cluster_bits;
        let zeros = vec![0u8; cs as usize];
        let end = off + len;
        let mut pos = off;
        while pos < end {
            let in_c = pos & (cs - 1);
            let n = (cs - in_c).min(end - pos);
            // qcow has no zero clusters: unallocated clusters without a
            // backing file already read as zeros, the rest get zeros written.
            let kind = self.kind(&mut self.meta.lock(), pos >> cb)?;
            if !(kind == Kind::Unallocated && backing.is_none()) {
                self.write_locked(&zeros[..n as usize], pos, backing)?;
            }
            pos += n;
        }
        Ok(())
    }

    /// Unmap everything (`commit` without `-d`), as QEMU does: zero the
    /// L1 table and cut the file right after it (L2 tables and data go).
    fn empty(&self) -> Result<()> {
        self.prepare_write()?;
        let _w = self.write_lock.lock();
        let mut m = self.meta.lock();
        let len = self.hdr.l1_size * 8;
        let zeros = vec![0u8; len.min(1 << 20) as usize];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(zeros.len() as u64);
            self.file
                .write_at(&zeros[..n as usize], self.hdr.l1_table_offset + done)?;
            done += n;
        }
        // The L1 must be zero on disk before the tables it pointed at go.
        self.file.flush()?;
        let end = self.hdr.l1_table_offset + len;
        self.file.set_len(end)?;
        let l1_page = (self.hdr.l1_size * 8).clamp(8, L1_PAGE);
        m.l1 = TableCache::new(Endian::Big, l1_page, L1_BUDGET);
        m.l2 = TableCache::new(Endian::Big, 8u64 << self.hdr.l2_bits, L2_BUDGET);
        m.end = end;
        *self.ccache.lock() = None;
        Ok(())
    }

    /// Store an already-compressed cluster at guest offset `off`.
    fn store_compressed(&self, data: &[u8], off: u64) -> Result<()> {
        if self.crypto.is_some() {
            return Err(Error::from_errno(libc::ENOTSUP));
        }
        let cs = self.cs();
        if !off.is_multiple_of(cs) || data.is_empty() || data.len() as u64 >= cs {
            return Err(Error::invalid(
                "Compressed write must cover one aligned cluster",
            ));
        }
        self.prepare_write()?;
        let _w = self.write_lock.lock();
        let ci = off >> self.hdr.cluster_bits;
        let (l1i, l2i) = self.indexes(ci)?;
        let mut m = self.meta.lock();
        let l2 = self.l2_for_write(&mut m, l1i)?;
        // Byte-packed at the sector-rounded end of the file, as QEMU does.
        let coff = m.end.next_multiple_of(512);
        let len = data.len() as u64;
        if coff.checked_add(len).is_none_or(|e| e > self.coff_mask()) {
            return Err(too_big());
        }
        m.end = m.end.max(coff + len);
        drop(m);
        self.file.write_at(data, coff)?;
        let entry = OFLAG_COMPRESSED | (len << (63 - self.hdr.cluster_bits)) | coff;
        self.meta.lock().l2.set(&self.file, l2, l2i, &[entry])
    }
}

/// A data cluster's host offset; QEMU fails I/O on one that is not
/// sector-aligned.
fn data_offset(h: u64) -> Result<u64> {
    if h & 511 != 0 {
        return Err(Error::from_errno(libc::EIO));
    }
    Ok(h)
}

/// Raw deflate with the 4 KiB window QEMU's qcow uses; None when the
/// result would not be smaller than a cluster.
fn deflate(data: &[u8], cluster_size: usize) -> Result<Option<Vec<u8>>> {
    let mut c = Compress::new_with_window_bits(flate2::Compression::default(), false, 12);
    let mut out = vec![0u8; cluster_size - 1];
    match c.compress(data, &mut out, FlushCompress::Finish) {
        Ok(flate2::Status::StreamEnd) => {
            out.truncate(c.total_out() as usize);
            Ok(Some(out))
        }
        Ok(_) => Ok(None),
        Err(e) => Err(Error::new(
            ErrorKind::Io,
            format!("zlib compression failed: {e}"),
        )),
    }
}

/// Inflate one cluster; it must come out exactly full (QEMU: EIO if not).
fn inflate(input: &[u8], out: &mut [u8]) -> Result<()> {
    let mut d = Decompress::new(false);
    match d.decompress(input, out, FlushDecompress::Finish) {
        Ok(_) if d.total_out() as usize == out.len() => Ok(()),
        _ => Err(Error::from_errno(libc::EIO)),
    }
}

impl Driver for Qcow {
    fn format_name(&self) -> &'static str {
        "qcow"
    }
    fn virtual_size(&self) -> u64 {
        // QEMU counts whole sectors of the header's size.
        self.hdr.size & !511
    }
    fn host_file(&self) -> &HostFile {
        &self.file
    }
    fn backing(&self) -> Option<BackingRef> {
        // qcow stores no backing format: it is probed.
        self.backing.as_ref().map(|f| BackingRef {
            filename: f.clone(),
            format: None,
        })
    }
    fn info(&self) -> DriverInfo {
        DriverInfo {
            cluster_size: Some(self.cs()),
            encrypted: self.hdr.crypt_method != 0,
            ..DriverInfo::default()
        }
    }
    fn block_status(&self, off: u64, max: u64) -> Result<Extent> {
        self.status(off, max)
    }
    fn read_at(&self, buf: &mut [u8], off: u64, backing: &dyn BackingRead) -> Result<()> {
        self.read(buf, off, backing)
    }
    fn write_at(&self, buf: &[u8], off: u64, backing: &dyn BackingRead) -> Result<()> {
        self.write(buf, off, backing)
    }
    fn write_zeroes(
        &self,
        off: u64,
        len: u64,
        _may_unmap: bool,
        backing: &dyn BackingRead,
    ) -> Result<()> {
        self.zero(off, len, backing)
    }
    fn compression_cluster_size(&self) -> Option<u64> {
        Some(self.cs())
    }
    fn compress_cluster(&self, buf: &[u8]) -> Result<Option<Vec<u8>>> {
        let cs = self.cs() as usize;
        if buf.len() == cs {
            return deflate(buf, cs);
        }
        // The tail of the image: zero-padded to a whole cluster.
        let mut full = vec![0u8; cs];
        let n = buf.len().min(cs);
        full[..n].copy_from_slice(&buf[..n]);
        deflate(&full, cs)
    }
    fn write_compressed_raw(&self, data: &[u8], off: u64) -> Result<()> {
        self.store_compressed(data, off)
    }
    fn write_compressed(&self, buf: &[u8], off: u64) -> Result<()> {
        match self.compress_cluster(buf)? {
            Some(c) => self.store_compressed(&c, off),
            None => self.write(buf, off, &NoBacking),
        }
    }
    fn flush(&self) -> Result<()> {
        self.file.flush()
    }
    fn io_granularity(&self) -> u64 {
        self.cs().max(65536)
    }
    fn truncate_zeroed(
        &self,
        _size: u64,
        _prealloc: super::Prealloc,
        _backing: &dyn BackingRead,
    ) -> Result<()> {
        Err(Error::unsupported(
            "Image format driver does not support resize",
        ))
    }
    fn make_empty(&self) -> Result<()> {
        self.empty()
    }
}

/// The protocol layer's preallocation option, as a format without its own
/// accepts it: the file is rewritten by the format anyway.
pub(crate) fn check_protocol_prealloc(opts: &CreateOptions) -> Result<()> {
    match opts.get("preallocation") {
        None | Some("off" | "falloc" | "full") => Ok(()),
        Some("metadata") => Err(Error::invalid("Unsupported preallocation mode: metadata")),
        Some(v) => Err(Error::invalid(format!("invalid parameter value: {v}"))),
    }
}

/// qcow's encryption options checked as qemu-img checks them (same
/// messages, same order); true when the image is to be AES encrypted.
fn check_encryption(opts: &CreateOptions, size_zero: bool) -> Result<bool> {
    let legacy = opts.get_bool("encryption", false)?;
    let format = opts.get("encrypt.format");
    let secret = opts.get("encrypt.key-secret");
    if legacy && format.is_some() {
        return Err(Error::invalid(
            "'encrypt.format' and its alias 'encryption' can't be used at the same time",
        ));
    }
    let format = if legacy { Some("aes") } else { format };
    match format {
        Some("aes" | "luks") | None => {}
        Some(other) => {
            return Err(Error::invalid(format!(
                "Parameter 'format' does not accept value '{other}'"
            )))
        }
    }
    if format.is_none() && secret.is_some() {
        return Err(Error::invalid("Parameter 'encrypt.format' is missing"));
    }
    if size_zero {
        return Err(Error::invalid(
            "Image size is too small, cannot be zero length",
        ));
    }
    match (format, secret) {
        (Some("luks"), _) => Err(Error::unsupported("Unsupported encryption format")),
        (Some(_), Some(id)) => crate::crypto::secret::get(id).map(|_| true),
        (Some(_), None) => Err(Error::invalid(
            "Parameter 'encrypt.key-secret' is required for cipher",
        )),
        (None, _) => Ok(false),
    }
}

/// Create a qcow image: header, backing name, zeroed L1 table (whole
/// sectors), as QEMU lays it out.
pub fn create(path: &Path, size: u64, opts: &CreateOptions) -> Result<()> {
    check_protocol_prealloc(opts)?;
    let size = size
        .checked_next_multiple_of(512)
        .filter(|&s| s <= MAX_OFFSET)
        .ok_or_else(|| Error::invalid("Image size too large"))?;
    let aes = check_encryption(opts, size == 0)?;
    let backing = opts.get("backing_file").filter(|b| *b != "fat:");
    // With a backing file, 512-byte clusters avoid copying unmodified
    // sectors (QEMU's choice); "fat:" (vvfat) keeps them but is not stored.
    let (cluster_bits, l2_bits) = if opts.get("backing_file").is_some() {
        (9u32, 12u32)
    } else {
        (12, 9)
    };
    let mut b = vec![0u8; HEADER_LEN];
    b[..4].copy_from_slice(&MAGIC);
    b[4..8].copy_from_slice(&VERSION.to_be_bytes());
    let mut header_len = HEADER_LEN as u64;
    if let Some(name) = backing {
        let len = name.len() as u64;
        if len > MAX_BACKING_NAME as u64 {
            return Err(Error::invalid("Backing file name too long"));
        }
        b[8..16].copy_from_slice(&(HEADER_LEN as u64).to_be_bytes());
        b[16..20].copy_from_slice(&(len as u32).to_be_bytes());
        b.extend_from_slice(name.as_bytes());
        header_len += len;
    }
    b[24..32].copy_from_slice(&size.to_be_bytes());
    b[32] = cluster_bits as u8;
    b[33] = l2_bits as u8;
    if aes {
        b[36..40].copy_from_slice(&1u32.to_be_bytes());
    }
    let l1_offset = header_len.next_multiple_of(8);
    b[40..48].copy_from_slice(&l1_offset.to_be_bytes());
    let shift = cluster_bits + l2_bits;
    let l1_size = size.div_ceil(1u64 << shift);
    if l1_size > MAX_L1_ENTRIES {
        return Err(Error::invalid("Image too large"));
    }
    // QEMU writes the L1 table as whole zero sectors; a sparse extension
    // reads the same.
    let l1_bytes = (l1_size * 8).next_multiple_of(512);
    let file = HostFile::create(path)?;
    file.write_at(&b, 0)?;
    file.set_len(l1_offset + l1_bytes)?;
    file.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(f: impl FnOnce(&mut [u8; HEADER_LEN])) -> Result<Header> {
        let mut b = [0u8; HEADER_LEN];
        b[..4].copy_from_slice(&MAGIC);
        b[4..8].copy_from_slice(&1u32.to_be_bytes());
        b[24..32].copy_from_slice(&(1u64 << 20).to_be_bytes());
        b[32] = 12;
        b[33] = 9;
        b[40..48].copy_from_slice(&48u64.to_be_bytes());
        f(&mut b);
        Header::parse(&b)
    }

    #[test]
    fn header_checks_in_qemu_order() {
        assert!(header(|_| {}).is_ok());
        let msg = |r: Result<Header>| r.err().map(|e| e.message().to_string());
        assert_eq!(
            msg(header(|b| b[7] = 2)).as_deref(),
            Some("qcow (v1) does not support qcow version 2\nTry the 'qcow2' driver instead.")
        );
        assert_eq!(
            msg(header(|b| {
                b[24..32].copy_from_slice(&1u64.to_be_bytes());
                b[32] = 8;
            }))
            .as_deref(),
            Some("Image size is too small (must be at least 2 bytes)")
        );
        for cb in [0u8, 8, 17, 255] {
            assert!(header(|b| b[32] = cb).is_err());
        }
        assert!(header(|b| b[24..32].copy_from_slice(&u64::MAX.to_be_bytes())).is_err());
        assert!(header(|b| b[39] = 2).is_err());
    }

    #[test]
    fn compression_round_trip() {
        let data: Vec<u8> = (0..4096u32).map(|i| (i % 7) as u8).collect();
        let c = deflate(&data, 4096).unwrap().unwrap();
        let mut padded = c.clone();
        padded.extend_from_slice(&[0x55; 100]);
        let mut out = vec![0u8; 4096];
        inflate(&padded, &mut out).unwrap();
        assert_eq!(out, data);
        assert!(inflate(&[0xff; 10], &mut out).is_err());
    }
}
