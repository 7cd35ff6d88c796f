//! `measure`: how large a new image would be, for a given virtual size or
//! for the contents of an existing image, with qemu-img's arithmetic.
//!
//! raw: the virtual size (whole sectors). qcow2: header + L1 + L2 tables +
//! refcount structures for a fully allocated image ("fully allocated"), and
//! the same with only the clusters holding data ("required").

use crate::error::{Error, Result};
use crate::format::{self, CreateOptions, OptDesc};
use crate::image::Image;
use crate::json::Json;

mod bitmaps;

/// QEMU's cap on the L1 table (QCOW_MAX_L1_SIZE).
const MAX_L1_BYTES: u64 = 32 << 20;

/// QAPI BlockMeasureInfo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Measure {
    pub required: u64,
    pub fully_allocated: u64,
    /// Space for the source's persistent bitmaps, when both sides can
    /// store them (qcow2 v3).
    pub bitmaps: Option<u64>,
}

impl Measure {
    pub fn to_json(&self) -> Json {
        let mut j = Json::object()
            .with("required", self.required)
            .with("fully-allocated", self.fully_allocated);
        if let Some(b) = self.bitmaps {
            j.set("bitmaps", b);
        }
        j
    }

    /// The human lines qemu-img prints.
    pub fn human(&self) -> String {
        let mut s = format!(
            "required size: {}\nfully allocated size: {}\n",
            self.required, self.fully_allocated
        );
        if let Some(b) = self.bitmaps {
            s.push_str(&format!("bitmaps size: {b}\n"));
        }
        s
    }
}

/// QEMU drivers that create images but cannot measure them.
const NO_MEASURE: &[&str] = &[
    "file",
    "host_cdrom",
    "host_device",
    "nbd",
    "nvme",
    "parallels",
    "qcow",
    "qed",
    "vdi",
    "vhdx",
    "vmdk",
    "vpc",
];

/// QEMU drivers that cannot create images at all.
pub(crate) const NO_CREATE: &[&str] = &[
    "blkdebug",
    "blklogwrites",
    "blkverify",
    "bochs",
    "cloop",
    "compress",
    "copy-before-write",
    "copy-on-read",
    "dmg",
    "null-aio",
    "null-co",
    "preallocate",
    "quorum",
    "replication",
    "snapshot-access",
    "throttle",
    "vvfat",
];

/// Check that `-O fmt` can be measured, with qemu-img's messages.
pub fn check_format(fmt: &str) -> Result<()> {
    // QEMU measures only raw and qcow2 (and luks).
    if fmt == "raw" || fmt == "qcow2" {
        return Ok(());
    }
    if NO_CREATE.contains(&fmt) {
        return Err(Error::unsupported(format!(
            "Format driver '{fmt}' does not support image creation"
        )));
    }
    if NO_MEASURE.contains(&fmt) {
        return Err(Error::unsupported(format!(
            "Block driver '{fmt}' does not support size measurement"
        )));
    }
    if fmt == "luks" {
        return Err(Error::invalid(
            "Parameter 'key-secret' is required for cipher",
        ));
    }
    Err(Error::invalid(format!("Unknown file format '{fmt}'")))
}

/// Parse `-o` for `fmt`: its creation options plus the file protocol's,
/// type-checked as QemuOpts does (the caller adds qemu-img's
/// "Invalid options for file format" line on error).
pub fn parse_options(fmt: &str, list: &str) -> Result<CreateOptions> {
    let mut known: Vec<OptDesc> = format::create_options(fmt)?.to_vec();
    for d in format::raw::CREATE_OPTS {
        if !known.iter().any(|k| k.name == d.name) {
            known.push(*d);
        }
    }
    let o = CreateOptions::parse(list)?;
    o.validate(&known)?;
    Ok(o)
}

/// Measure for target format `fmt` with options `opts` (`size` among them
/// when there is no source), from `source` when given.
pub fn measure(fmt: &str, opts: &CreateOptions, source: Option<&Image>) -> Result<Measure> {
    check_format(fmt)?;
    match fmt {
        "qcow2" => qcow2(opts, source),
        _ => raw(opts, source),
    }
}

fn raw(opts: &CreateOptions, source: Option<&Image>) -> Result<Measure> {
    let required = match source {
        Some(img) => img.size(),
        None => round_up(opts.get_size("size")?.unwrap_or(0), 512)?,
    };
    Ok(Measure {
        required,
        fully_allocated: required,
        bitmaps: None,
    })
}

fn round_up(v: u64, to: u64) -> Result<u64> {
    v.checked_next_multiple_of(to)
        .ok_or_else(|| Error::invalid("The image size is too large"))
}

/// qcow2 target parameters as qcow2_measure reads them, in its order.
struct Target {
    cluster_size: u64,
    version: u32,
    refcount_order: u32,
    extended_l2: bool,
    full_prealloc: bool,
    backing: bool,
    /// LUKS area bytes, cluster-rounded (0 unencrypted).
    luks_payload: u64,
}

fn target(o: &CreateOptions) -> Result<Target> {
    let extended_l2 = o.get_bool("extended_l2", false)?;
    let cs = o.get_size("cluster_size")?.unwrap_or(65536);
    if !cs.is_power_of_two() || !(512..=2 << 20).contains(&cs) {
        return Err(Error::invalid(
            "Cluster size must be a power of two between 512 and 2048k",
        ));
    }
    if extended_l2 && cs < 16384 {
        return Err(Error::invalid(
            "Extended L2 entries are only supported with cluster sizes of at least 16384 bytes",
        ));
    }
    let version = match o.get("compat") {
        None | Some("1.1") => 3,
        Some("0.10") => 2,
        Some(v) => {
            return Err(Error::invalid(format!(
                "Invalid compatibility level: '{v}'"
            )))
        }
    };
    let rb = o.get_number("refcount_bits")?.unwrap_or(16);
    if !rb.is_power_of_two() || rb > 64 {
        return Err(Error::invalid(
            "Refcount width must be a power of two and may not exceed 64 bits",
        ));
    }
    if version < 3 && rb != 16 {
        return Err(Error::invalid(
            "Different refcount widths than 16 bits require compatibility level 1.1 or above (use compat=1.1 or greater)",
        ));
    }
    let full_prealloc = match o.get("preallocation") {
        None | Some("off") | Some("metadata") => false,
        Some("falloc") | Some("full") => true,
        Some(v) => return Err(Error::invalid(format!("invalid parameter value: {v}"))),
    };
    // A LUKS area is added in whole clusters, as QEMU measures it (its
    // size depends only on the cipher's key length).
    let luks_payload = if o.get("encrypt.format") == Some("luks") {
        let id = o.get("encrypt.key-secret").ok_or_else(|| {
            Error::invalid("Parameter 'encrypt.key-secret' is required for cipher")
        })?;
        crate::crypto::secret::get(id)?;
        let get = |k: &str| o.get(&format!("encrypt.{k}")).map(str::to_string);
        let p = crate::crypto::luks::CreateParams::from_options(&get, "encrypt.")?;
        crate::crypto::luks::area_len(&p).next_multiple_of(cs)
    } else {
        0
    };
    Ok(Target {
        cluster_size: cs,
        version,
        refcount_order: rb.trailing_zeros(),
        extended_l2,
        full_prealloc,
        backing: o.get("backing_file").is_some(),
        luks_payload,
    })
}

fn qcow2(o: &CreateOptions, source: Option<&Image>) -> Result<Measure> {
    let t = target(o)?;
    let cs = t.cluster_size;
    let too_large =
        || Error::invalid("The image size is too large (try using a larger cluster size)");
    let mut virtual_size =
        round_up(o.get_size("size")?.unwrap_or(0), cs).map_err(|_| too_large())?;
    let l2e: u64 = if t.extended_l2 { 16 } else { 8 };
    let l2_tables = (virtual_size / cs).div_ceil(cs / l2e);
    if l2_tables.saturating_mul(8) > MAX_L1_BYTES {
        return Err(too_large());
    }
    let mut required = 0;
    let mut bitmaps = None;
    if let Some(img) = source {
        let ssize = img.size();
        virtual_size = round_up(ssize, cs)?;
        required = if t.backing {
            // The new backing file may share nothing with the source.
            virtual_size
        } else {
            data_clusters(img, cs)? * cs
        };
        if t.version >= 3 {
            bitmaps = bitmaps::size(img, ssize, cs);
        }
    }
    if t.full_prealloc {
        required = virtual_size;
    }
    let fully = prealloc_size(virtual_size, cs, t.refcount_order, l2e)
        .and_then(|f| f.checked_add(t.luks_payload))
        .ok_or_else(too_large)?;
    Ok(Measure {
        required: fully - virtual_size + required,
        fully_allocated: fully,
        bitmaps,
    })
}

/// Clusters (of the target's size) holding any data of `img` through its
/// chain; runs that read as zero do not count.
fn data_clusters(img: &Image, cs: u64) -> Result<u64> {
    use crate::ops::compare::status::{ChainStatus, ALLOCATED, DATA, ZERO};
    let st = ChainStatus::new(img);
    let size = img.size();
    let mut count = 0;
    let mut off = 0;
    while off < size {
        let (flags, n) = st
            .above(off, size - off)
            .map_err(|e| e.context("Unable to get block status"))?;
        let n = n.max(1);
        if flags & ZERO == 0 && flags & (DATA | ALLOCATED) == DATA | ALLOCATED {
            let first = off / cs;
            let end = (off + n).div_ceil(cs);
            count += end - first;
            off = end * cs;
        } else {
            off += n;
        }
    }
    Ok(count)
}

/// qcow2 file size with every cluster allocated: header, L2 tables, L1
/// table, refcount table and blocks (a fixed point), and the data.
pub fn prealloc_size(total: u64, cs: u64, refcount_order: u32, l2e: u64) -> Option<u64> {
    let aligned = total.checked_next_multiple_of(cs)?;
    let mut meta = cs;
    let nl2e = (aligned / cs).checked_next_multiple_of(cs / l2e)?;
    meta = meta.checked_add(nl2e.checked_mul(l2e)?)?;
    let nl1e = (nl2e * l2e / cs).checked_next_multiple_of(cs / 8)?;
    meta = meta.checked_add(nl1e.checked_mul(8)?)?;
    let clusters = meta.checked_add(aligned)? / cs;
    meta = meta.checked_add(refcount_metadata(clusters, cs, refcount_order)?)?;
    meta.checked_add(aligned)
}

/// Refcount table + blocks needed to count `clusters` clusters and
/// themselves.
fn refcount_metadata(clusters: u64, cs: u64, order: u32) -> Option<u64> {
    let per_table_cluster = cs / 8;
    let per_block = (cs * 8) >> order;
    let (mut table, mut blocks, mut n) = (0u64, 0u64, 0u64);
    loop {
        let last = n;
        blocks = clusters
            .checked_add(table)?
            .checked_add(blocks)?
            .div_ceil(per_block);
        table = blocks.div_ceil(per_table_cluster);
        n = clusters + blocks + table;
        if n == last {
            return blocks.checked_add(table)?.checked_mul(cs);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_like_qemu() {
        // `qemu-img measure -O qcow2 --size 1G`: 393216 / 1074135040.
        assert_eq!(prealloc_size(1 << 30, 65536, 4, 8), Some(1074135040));
        // `qemu-img measure -O qcow2 --size 0`.
        assert_eq!(prealloc_size(0, 65536, 4, 8), Some(196608));
    }
}
