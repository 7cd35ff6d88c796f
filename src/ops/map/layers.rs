//! Per-layer refinements QEMU's block layer applies before qemu-img sees a
//! status, which the chain's block status alone does not give:
//!
//! - qcow2 zero clusters that keep a host cluster report its offset, one
//!   cluster at a time (offsets of neighbouring clusters are unrelated);
//! - with extended L2, an unallocated subcluster of an allocated cluster
//!   reports the host offset it would have (only the clusters at the ends
//!   of an unallocated run can be such clusters, so this costs O(1));
//! - when a qcow2 image looks metadata-preallocated, data runs are checked
//!   against the host file, and a hole there reads as zero (data + zero).

use std::cell::OnceCell;

use crate::error::Result;
use crate::format::Status;
use crate::image::Image;
use crate::io::HostFile;
use crate::json::Json;

use super::MapExtent;

/// qcow2 facts `map` needs, from the layer's `info`.
#[derive(Debug, Clone)]
struct Qcow2Facts {
    cluster_size: u64,
    extended_l2: bool,
    /// External data file name as recorded in the header.
    data_file: Option<String>,
}

pub(crate) struct Layer<'a> {
    img: &'a Image,
    qcow2: Option<Qcow2Facts>,
    /// Whether QEMU would treat this layer as metadata-preallocated
    /// (computed on first use, as QEMU does on its first status query).
    recurse: OnceCell<bool>,
}

impl<'a> Layer<'a> {
    /// Every layer of `img`, top first.
    pub(crate) fn chain(img: &'a Image) -> Vec<Layer<'a>> {
        let mut v = Vec::new();
        let mut cur = Some(img);
        while let Some(i) = cur {
            v.push(Layer::new(i));
            cur = i.backing();
        }
        v
    }

    fn new(img: &'a Image) -> Layer<'a> {
        let qcow2 = (img.format() == "qcow2").then(|| {
            let info = img.driver().info();
            let data = info.format_specific.as_ref().and_then(|f| f.get("data"));
            let get = |k: &str| data.and_then(|d| d.get(k));
            Qcow2Facts {
                cluster_size: info.cluster_size.unwrap_or(65536).max(512),
                extended_l2: matches!(get("extended-l2"), Some(Json::Bool(true))),
                data_file: match get("data-file") {
                    Some(Json::Str(s)) => Some(s.clone()),
                    _ => None,
                },
            }
        });
        Layer {
            img,
            qcow2,
            recurse: OnceCell::new(),
        }
    }

    pub(crate) fn image(&self) -> &'a Image {
        self.img
    }

    /// Guest bytes one qcow2 L2 table maps: QEMU's status queries stop at
    /// its end.
    pub(crate) fn l2_coverage(&self) -> Option<u64> {
        self.qcow2.as_ref().map(|q| {
            let entry = if q.extended_l2 { 16 } else { 8 };
            q.cluster_size * (q.cluster_size / entry)
        })
    }

    /// The file host offsets of this layer refer to.
    pub(crate) fn filename(&self) -> &str {
        match self.qcow2.as_ref().and_then(|q| q.data_file.as_deref()) {
            Some(d) => d,
            None => self.img.filename(),
        }
    }

    /// Apply this layer's refinements to a run it decided.
    pub(crate) fn refine(&self, e: &mut MapExtent) -> Result<()> {
        if let Some(q) = &self.qcow2 {
            if e.present && e.zero && !e.data {
                self.zero_run(e, q.cluster_size)?;
            } else if !e.present && q.extended_l2 {
                self.unallocated_run(e, q.cluster_size)?;
            }
        }
        if e.data && !e.zero && !e.compressed && e.offset.is_some() && self.recurses() {
            self.check_host(e);
        }
        Ok(())
    }

    /// A zero run, redone the way QEMU's qcow2 counts it: cluster by
    /// cluster within one L2 table, while host offsets stay contiguous (zero
    /// clusters that keep their host cluster) or stay absent.
    fn zero_run(&self, e: &mut MapExtent, cs: u64) -> Result<()> {
        let cov = self.l2_coverage().unwrap_or(u64::MAX);
        let limit = e.end().min(e.start - e.start % cov + cov);
        let (first, n) = self.zero_piece(e.start, limit, cs)?;
        let mut pos = e.start + n;
        let mut expect = first.map(|o| o + n);
        while pos < limit && pos.is_multiple_of(cs) {
            let (o, n) = self.zero_piece(pos, limit, cs)?;
            if n == 0 || o != expect {
                break;
            }
            pos += n;
            expect = expect.map(|x| x + n);
        }
        e.length = pos - e.start;
        e.offset = first;
        Ok(())
    }

    /// The zero run at `pos` up to the end of its cluster: (host offset,
    /// bytes); no bytes when `pos` does not read as zero here.
    fn zero_piece(&self, pos: u64, limit: u64, cs: u64) -> Result<(Option<u64>, u64)> {
        let cend = (pos - pos % cs + cs).min(limit);
        let x = self.img.layer_status(pos, cend - pos)?;
        if x.status != Status::Zero {
            return Ok((None, 0));
        }
        Ok((x.offset, x.len.clamp(1, cend - pos)))
    }

    /// An unallocated run (extended L2). Clusters it covers whole have no
    /// allocated subcluster and no offset we can learn (QEMU has one only
    /// when the L2 entry keeps a host cluster for nothing); a cluster it
    /// covers in part may have a host cluster, and then the run there has
    /// that cluster's offset. Runs without offsets merge, as QEMU counts
    /// them; only the clusters at the ends need a look.
    fn unallocated_run(&self, e: &mut MapExtent, cs: u64) -> Result<()> {
        let size = self.img.size();
        let (start, end) = (e.start, e.end());
        let c0 = start - start % cs;
        let first_end = (c0 + cs).min(size);
        let whole_first = start == c0 && end >= first_end;
        if !whole_first {
            if let Some(b) = self.cluster_base(c0, first_end)? {
                e.length = first_end.min(end) - start;
                e.offset = Some(b + (start - c0));
                return Ok(());
            }
        }
        let last = end - end % cs;
        // The run's last cluster, when it covers it only in part, keeps the
        // run's end unless that cluster has a host offset.
        let partial_last = end != size && last > c0 && last != end;
        let keep = if partial_last && self.cluster_base(last, (last + cs).min(size))?.is_some() {
            last
        } else {
            end
        };
        e.length = keep - start;
        e.offset = None;
        Ok(())
    }

    /// Host offset of the cluster [c0, cend), from any subcluster that has one.
    fn cluster_base(&self, c0: u64, cend: u64) -> Result<Option<u64>> {
        let mut q = c0;
        while q < cend {
            let x = self.img.layer_status(q, cend - q)?;
            if let (Some(o), false) = (x.offset, x.compressed) {
                return Ok(o.checked_sub(q - c0));
            }
            q += x.len.max(1);
        }
        Ok(None)
    }

    fn recurses(&self) -> bool {
        *self.recurse.get_or_init(|| match &self.qcow2 {
            Some(q) if q.data_file.is_none() => {
                metadata_preallocated(self.img.driver().host_file(), q.cluster_size)
            }
            _ => false,
        })
    }

    /// A data run checked against the host file: a hole reads as zero.
    fn check_host(&self, e: &mut MapExtent) {
        let Some(off) = e.offset else { return };
        // QEMU ignores errors here: the answer is only extra information.
        if let Ok((is_data, n)) = self.img.driver().host_file().data_status(off, e.length) {
            e.length = n.clamp(1, e.length);
            if !is_data {
                e.zero = true;
            }
        }
    }
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map(u32::from_be_bytes)
}

fn be64(b: &[u8], at: usize) -> Option<u64> {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_be_bytes)
}

/// QEMU's heuristic for a metadata-preallocated qcow2 image: at least
/// max(real * 10 / 9, real + 2) clusters within the file have a non-zero
/// refcount, where `real` is the number of clusters the host allocated.
/// Read-only and bounded; any inconsistency answers false.
fn metadata_preallocated(file: &HostFile, cs: u64) -> bool {
    scan_refcounts(file, cs).unwrap_or(false)
}

fn scan_refcounts(file: &HostFile, cs: u64) -> Option<bool> {
    let mut h = [0u8; 104];
    file.read_at(&mut h, 0).ok()?;
    let version = be32(&h, 4)?;
    let cluster_bits = be32(&h, 20)?;
    if !(9..=21).contains(&cluster_bits) || 1u64 << cluster_bits != cs {
        return None;
    }
    let rt_offset = be64(&h, 48)?;
    let rt_clusters = be32(&h, 56)? as u64;
    let order = if version >= 3 { be32(&h, 96)? } else { 4 };
    if order > 6 {
        return None;
    }
    let file_len = file.len().ok()?.next_multiple_of(512);
    let real = file.allocated_size().ok()? / cs;
    let threshold = (real * 10 / 9).max(real + 2);
    let end_cluster = file_len.div_ceil(cs);
    // Refcount entries per refblock: cluster bytes * 8 / refcount bits.
    let rb_bits = cluster_bits + 3 - order;
    let rt_entries = rt_clusters.saturating_mul(cs) / 8;
    let mut block = vec![0u8; cs as usize];
    let mut loaded: Option<u64> = None;
    let mut count = 0u64;
    let mut i = 0u64;
    while i < end_cluster && count < threshold {
        let idx = i >> rb_bits;
        if idx >= rt_entries {
            break;
        }
        let mut e = [0u8; 8];
        file.read_at(&mut e, rt_offset.checked_add(idx * 8)?).ok()?;
        let rb = u64::from_be_bytes(e) & 0xffff_ffff_ffff_fe00;
        let per_block = 1u64 << rb_bits;
        if rb == 0 {
            i = (idx + 1) * per_block;
            continue;
        }
        if rb % cs != 0 {
            return None;
        }
        if loaded != Some(rb) {
            file.read_at(&mut block, rb).ok()?;
            loaded = Some(rb);
        }
        let stop = ((idx + 1) * per_block).min(end_cluster);
        while i < stop && count < threshold {
            if refcount(&block, order, (i & (per_block - 1)) as usize)? != 0 {
                count += 1;
            }
            i += 1;
        }
    }
    Some(count >= threshold)
}

/// Entry `i` of a refblock with 2^order-bit refcounts.
fn refcount(block: &[u8], order: u32, i: usize) -> Option<u64> {
    Some(match order {
        0 => (*block.get(i / 8)? >> (i % 8)) as u64 & 1,
        1 => (*block.get(i / 4)? >> (2 * (i % 4))) as u64 & 3,
        2 => (*block.get(i / 2)? >> (4 * (i % 2))) as u64 & 15,
        3 => *block.get(i)? as u64,
        4 => u16::from_be_bytes(block.get(i * 2..i * 2 + 2)?.try_into().ok()?) as u64,
        5 => u32::from_be_bytes(block.get(i * 4..i * 4 + 4)?.try_into().ok()?) as u64,
        _ => u64::from_be_bytes(block.get(i * 8..i * 8 + 8)?.try_into().ok()?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refcount_widths() {
        let b = [0b1011_0010u8, 0x12, 0x34, 0x56, 0x78, 0, 0, 0];
        assert_eq!(refcount(&b, 0, 1), Some(1));
        assert_eq!(refcount(&b, 0, 0), Some(0));
        assert_eq!(refcount(&b, 1, 0), Some(2));
        assert_eq!(refcount(&b, 2, 1), Some(0xb));
        assert_eq!(refcount(&b, 4, 1), Some(0x3456));
        assert_eq!(refcount(&b, 5, 1), Some(0x7800_0000));
        assert_eq!(refcount(&b, 6, 1), None);
    }
}
