//! Read path and block status: map a guest range to segments under the
//! metadata lock, then do the data I/O without it.

use super::compress;
use super::l2::Kind;
use super::Qcow2;
use crate::error::Result;
use crate::format::{BackingRead, Extent, Status};

/// A piece of a guest range and where its bytes come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Seg {
    Host {
        host: u64,
        len: u64,
    },
    Zero {
        len: u64,
    },
    Backing {
        len: u64,
    },
    /// Part of a compressed cluster: stored extent, byte offset inside the
    /// cluster and length.
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
            Seg::Host { len, .. }
            | Seg::Zero { len }
            | Seg::Backing { len }
            | Seg::Compressed { len, .. } => len,
        }
    }
}

impl Qcow2 {
    /// Segments covering guest [off, off+len), merged where contiguous.
    pub(super) fn map(&self, off: u64, len: u64) -> Result<Vec<Seg>> {
        let mut segs: Vec<Seg> = Vec::new();
        let sc = self.geo.sc_size();
        let cb = self.geo.cluster_bits;
        let mut m = self.meta.lock();
        let mut pos = off;
        let end = off + len;
        while pos < end {
            let ci = pos >> cb;
            let slot = self.slot(&mut m, ci)?;
            let in_cluster = pos & (self.cs() - 1);
            let sci = (in_cluster / sc) as u32;
            let n = (((in_cluster / sc) + 1) * sc - in_cluster).min(end - pos);
            let seg = match self.geo.kind(&slot, sci)? {
                Kind::Data(h) => Seg::Host {
                    host: h + (in_cluster % sc),
                    len: n,
                },
                Kind::Zero(_) => Seg::Zero { len: n },
                Kind::Unallocated => Seg::Backing { len: n },
                Kind::Compressed(coff, clen) => {
                    let n = (self.cs() - in_cluster).min(end - pos);
                    Seg::Compressed {
                        coff,
                        clen,
                        skip: in_cluster,
                        len: n,
                    }
                }
            };
            pos += seg.len();
            match (segs.last_mut(), seg) {
                (Some(Seg::Host { host, len }), Seg::Host { host: h2, len: l2 })
                    if *host + *len == h2 =>
                {
                    *len += l2
                }
                (Some(Seg::Zero { len }), Seg::Zero { len: l2 }) => *len += l2,
                (Some(Seg::Backing { len }), Seg::Backing { len: l2 }) => *len += l2,
                _ => segs.push(seg),
            }
        }
        Ok(segs)
    }

    pub(super) fn read(&self, buf: &mut [u8], off: u64, backing: &dyn BackingRead) -> Result<()> {
        self.check_readable()?;
        let segs = self.map(off, buf.len() as u64)?;
        let mut pos = 0usize;
        for seg in segs {
            let n = seg.len() as usize;
            let out = &mut buf[pos..pos + n];
            match seg {
                Seg::Host { host, .. } => {
                    self.file.event("read_aio");
                    self.read_host(out, host, off + pos as u64)?
                }
                Seg::Zero { .. } => out.fill(0),
                Seg::Backing { .. } => {
                    self.file.event("read_backing_aio");
                    backing.read_backing(out, off + pos as u64)?
                }
                Seg::Compressed {
                    coff,
                    clen,
                    skip,
                    len,
                } => {
                    let cluster = self.read_compressed(coff, clen)?;
                    out.copy_from_slice(&cluster[skip as usize..(skip + len) as usize]);
                }
            }
            pos += n;
        }
        Ok(())
    }

    fn check_readable(&self) -> Result<()> {
        if self.hdr.lock().crypt_method != 0 && self.crypto.is_none() {
            return Err(crate::error::Error::unsupported(
                "Parameter 'encrypt.key-secret' is required for cipher",
            ));
        }
        Ok(())
    }

    /// Guest data stored at `host` (guest offset `guest`), decrypted when
    /// the image is encrypted: whole 512-byte sectors are read around the
    /// range (a cluster never splits a sector).
    pub(super) fn read_host(&self, out: &mut [u8], host: u64, guest: u64) -> Result<()> {
        let Some(c) = &self.crypto else {
            return self.data().read_at(out, host);
        };
        let s = crate::crypto::cipher::SECTOR as u64;
        let head = host % s;
        let h0 = host - head;
        let h1 = (host + out.len() as u64).next_multiple_of(s);
        let mut buf = zeroize::Zeroizing::new(vec![0u8; (h1 - h0) as usize]);
        self.data().read_at(&mut buf, h0)?;
        c.decrypt(h0, guest - head, &mut buf);
        out.copy_from_slice(&buf[head as usize..head as usize + out.len()]);
        Ok(())
    }

    /// Read and inflate one compressed cluster.
    pub(super) fn read_compressed(&self, coff: u64, clen: u64) -> Result<Vec<u8>> {
        let cs = self.cs() as usize;
        // A compressed cluster never needs more than cluster_size + one
        // sector of input; the field could claim more.
        let clen = clen.min(cs as u64 + 512) as usize;
        let mut input = vec![0u8; clen];
        self.file.event("read_compressed");
        self.data().read_at(&mut input, coff)?;
        let mut out = vec![0u8; cs];
        compress::decompress(self.compression, &input, &mut out)?;
        Ok(out)
    }

    /// Status of the run at `off`: same kind (and contiguous host offsets
    /// for data) over at most `max` bytes.
    pub(super) fn status(&self, off: u64, max: u64) -> Result<Extent> {
        let sc = self.geo.sc_size();
        let cb = self.geo.cluster_bits;
        let end = off.saturating_add(max).min(self.virtual_size_now());
        let mut m = self.meta.lock();
        let mut pos = off;
        let mut first: Option<(Status, Option<u64>, bool)> = None;
        let mut next_host: Option<u64> = None;
        while pos < end {
            let ci = pos >> cb;
            let slot = self.slot(&mut m, ci)?;
            let in_cluster = pos & (self.cs() - 1);
            let sci = (in_cluster / sc) as u32;
            let step = (((in_cluster / sc) + 1) * sc - in_cluster).min(end - pos);
            let (st, host, comp) = match self.geo.kind(&slot, sci)? {
                Kind::Data(h) => (Status::Data, Some(h + in_cluster % sc), false),
                Kind::Zero(h) => (Status::Zero, h.map(|h| h + in_cluster), false),
                // A reserved host cluster (extended L2 preallocation) is
                // reported with its offset, as QEMU's map does.
                Kind::Unallocated => {
                    let host = slot.entry & super::l2::L2E_OFFSET_MASK;
                    (
                        Status::Unallocated,
                        self.geo.has_host(&slot).then_some(host + in_cluster),
                        false,
                    )
                }
                Kind::Compressed(c, _) => (Status::Data, Some(c), true),
            };
            match first {
                None => {
                    first = Some((st, host, comp));
                    if comp {
                        // Each compressed cluster is its own extent.
                        pos += (self.cs() - in_cluster).min(end - pos);
                        break;
                    }
                }
                Some((fs, _, _)) => {
                    let contiguous = match (next_host, host) {
                        (Some(a), Some(b)) => a == b,
                        (None, None) => true,
                        _ => false,
                    };
                    if st != fs || comp || (fs == Status::Data && !contiguous) {
                        break;
                    }
                }
            }
            next_host = host.map(|h| h + step);
            pos += step;
        }
        let (status, mut offset, compressed) = first.unwrap_or((Status::Unallocated, None, false));
        // QEMU gives no host offset for encrypted data (it is not the
        // guest's bytes).
        if self.crypto.is_some() {
            offset = None;
        }
        Ok(Extent {
            len: (pos - off).max(1),
            status,
            offset,
            compressed,
        })
    }

    pub(super) fn virtual_size_now(&self) -> u64 {
        self.size.load(std::sync::atomic::Ordering::Acquire)
    }
}
