//! Block status through a chain with the flags QEMU's
//! `bdrv_block_status_above` returns: `compare -s` compares these flags
//! word for word, and the run lengths decide where compare's chunks start.

use crate::error::Result;
use crate::format::Status;
use crate::ops::map::layers::Layer;
use crate::ops::map::MapExtent;

pub const DATA: u32 = 0x01;
pub const ZERO: u32 = 0x02;
pub const OFFSET_VALID: u32 = 0x04;
pub const ALLOCATED: u32 = 0x10;
pub const EOF: u32 = 0x20;
pub const COMPRESSED: u32 = 0x80;

/// One image's chain, queried as QEMU queries it.
pub struct ChainStatus<'a> {
    layers: Vec<Layer<'a>>,
    /// Per layer, the unit one driver query covers at most (QEMU's vdi and
    /// qcow answer per block or cluster, vmdk per grain, vpc per allocated
    /// block), and whether only allocated runs are cut: the EOF flag
    /// `compare -s` compares depends on it.
    units: Vec<Option<(u64, bool)>>,
}

impl<'a> ChainStatus<'a> {
    pub fn new(img: &'a crate::image::Image) -> Self {
        let layers = Layer::chain(img);
        let units = layers
            .iter()
            .map(|l| {
                let img = l.image();
                let cs = || img.driver().info().cluster_size.filter(|c| *c > 0);
                match img.format() {
                    "vdi" | "qcow" | "vmdk" => cs().map(|c| (c, false)),
                    "vpc" => cs().map(|c| (c, true)),
                    _ => None,
                }
            })
            .collect();
        ChainStatus { layers, units }
    }

    /// `bdrv_block_status_above(top, NULL, off, bytes)`: (flags, bytes).
    pub fn above(&self, off: u64, bytes: u64) -> Result<(u32, u64)> {
        let (mut ret, mut pnum) = self.layer(0, off, bytes)?;
        if pnum == 0 || ret & ALLOCATED != 0 {
            return Ok((ret, pnum));
        }
        let eof = (ret & EOF != 0).then_some(off + pnum);
        let mut bytes = pnum;
        for d in 1..self.layers.len() {
            let (r, p) = self.layer(d, off, bytes)?;
            if p == 0 {
                // Beyond a short backing file: zeros, as if allocated there.
                ret = ZERO | ALLOCATED;
                pnum = bytes;
                break;
            }
            ret = r;
            pnum = p;
            if ret & ALLOCATED != 0 {
                ret &= !EOF;
                break;
            }
            bytes = pnum;
        }
        if Some(off + pnum) == eof {
            ret |= EOF;
        }
        Ok((ret, pnum))
    }

    /// `bdrv_co_do_block_status` of one layer.
    fn layer(&self, d: usize, off: u64, bytes: u64) -> Result<(u32, u64)> {
        let Some(layer) = self.layers.get(d) else {
            return Ok((EOF, 0));
        };
        let img = layer.image();
        let total = img.size();
        if off >= total {
            return Ok((EOF, 0));
        }
        let mut bytes = bytes.min(total - off);
        if let Some(cov) = layer.l2_coverage() {
            bytes = bytes.min(cov - off % cov);
        }
        let unit = self.units.get(d).copied().flatten();
        if let Some((u, false)) = unit {
            bytes = bytes.min(u - off % u);
        }
        let mut x = img.layer_status(off, bytes)?;
        if let (Some((u, true)), Status::Data) = (unit, x.status) {
            x.len = x.len.min(u - off % u);
        }
        let mut e = MapExtent {
            start: off,
            length: x.len.clamp(1, bytes),
            present: x.status != Status::Unallocated,
            zero: x.status == Status::Zero,
            data: x.status == Status::Data,
            compressed: x.compressed,
            offset: if x.compressed { None } else { x.offset },
            ..MapExtent::default()
        };
        layer.refine(&mut e)?;
        let mut ret = 0;
        if e.data {
            ret |= DATA;
        }
        if e.zero {
            ret |= ZERO;
        }
        if e.offset.is_some() {
            ret |= OFFSET_VALID;
        }
        if e.compressed {
            ret |= COMPRESSED;
        }
        if ret & (DATA | ZERO) != 0 {
            ret |= ALLOCATED;
        } else {
            match img.backing() {
                None => ret |= ZERO,
                Some(b) if off >= b.size() => ret |= ZERO,
                Some(_) => {}
            }
        }
        if off + e.length == total {
            ret |= EOF;
        }
        Ok((ret, e.length))
    }
}
