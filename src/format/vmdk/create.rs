//! Creating VMDK images as qemu-img does: one hosted sparse file with an
//! embedded descriptor (monolithicSparse, streamOptimized), or a text
//! descriptor plus flat or sparse extent files (monolithicFlat,
//! twoGbMaxExtentSparse, twoGbMaxExtentFlat).

use std::path::Path;

use super::sparse::{self, Vmdk4Header};
use super::{desc, read_cid_of};
use crate::error::{Error, Result};
use crate::format::CreateOptions;
use crate::io::HostFile;

/// VMDK's constant split size for twoGbMaxExtent* images.
const SPLIT_SIZE: u64 = 0x8000_0000;

fn invalid_value(v: &str) -> Error {
    Error::invalid(format!("invalid parameter value: {v}"))
}

/// `dir/`, `name`, `.ext` of a filename (QEMU's filename_decompose).
fn decompose(filename: &str) -> Result<(String, String, String)> {
    if filename.is_empty() {
        return Err(Error::invalid("No filename provided"));
    }
    let cut = filename
        .rfind('/')
        .or_else(|| filename.rfind('\\'))
        .or_else(|| filename.rfind(':'));
    let (path, base) = match cut {
        Some(i) => (&filename[..=i], &filename[i + 1..]),
        None => ("", filename),
    };
    let (prefix, postfix) = match base.rfind('.') {
        Some(i) => (&base[..i], &base[i..]),
        None => (base, ""),
    };
    Ok((path.to_string(), prefix.to_string(), postfix.to_string()))
}

/// Write a new hosted sparse extent of `size` bytes (vmdk_init_extent).
fn init_sparse(file: &HostFile, size: u64, compress: bool, zeroed_grain: bool) -> Result<()> {
    let capacity = size / 512;
    let granularity = 128u64;
    let gtes = 512u64;
    let grains = capacity.div_ceil(granularity);
    let gt_size = (gtes * 4).div_ceil(512);
    let gt_count = grains.div_ceil(gtes);
    let gd_sectors = (gt_count * 4).div_ceil(512);
    let desc_offset = 1u64;
    let desc_size = 20u64;
    let rgd_offset = desc_offset + desc_size;
    let gd_offset = rgd_offset + gd_sectors + gt_size * gt_count;
    let grain_offset = (gd_offset + gd_sectors + gt_size * gt_count).next_multiple_of(granularity);
    let h = Vmdk4Header {
        version: if compress {
            3
        } else if zeroed_grain {
            2
        } else {
            1
        },
        flags: sparse::FLAG_RGD
            | sparse::FLAG_NL_DETECT
            | if compress {
                sparse::FLAG_COMPRESS | sparse::FLAG_MARKER
            } else {
                0
            }
            | if zeroed_grain {
                sparse::FLAG_ZERO_GRAIN
            } else {
                0
            },
        capacity,
        granularity,
        desc_offset,
        desc_size,
        num_gtes_per_gt: gtes as u32,
        rgd_offset,
        gd_offset,
        grain_offset,
        compress_algorithm: if compress {
            sparse::COMPRESSION_DEFLATE
        } else {
            0
        },
    };
    let hdr = h.serialize();
    file.write_at(&hdr[..4 + sparse::VMDK4_HEADER_LEN], 0)?;
    file.set_len(grain_offset * 512)?;
    // Both directories point at preallocated (zeroed) grain tables.
    for dir in [rgd_offset, gd_offset] {
        let mut gd = vec![0u8; (gd_sectors * 512) as usize];
        let mut t = (dir + gd_sectors) as u32;
        for i in 0..gt_count as usize {
            gd[i * 4..i * 4 + 4].copy_from_slice(&t.to_le_bytes());
            t = t.wrapping_add(gt_size as u32);
        }
        file.write_at(&gd, dir * 512)?;
    }
    Ok(())
}

pub fn create(path: &Path, size: u64, opts: &CreateOptions) -> Result<()> {
    if let Some(f) = opts.get("backing_fmt") {
        if f != "vmdk" {
            return Err(Error::invalid("backing_file must be a vmdk image"));
        }
    }
    let filename = path.to_string_lossy().to_string();
    let (dir, prefix, postfix) = decompose(&filename)?;
    let size = size
        .checked_next_multiple_of(512)
        .ok_or_else(|| Error::invalid("Image size too large"))?;
    let adapter = match opts.get("adapter_type") {
        None => "ide",
        Some(a @ ("ide" | "buslogic" | "lsilogic" | "legacyESX")) => a,
        Some(a) => return Err(invalid_value(a)),
    };
    let backing = opts.get("backing_file");
    let hw = opts.get("hwversion").filter(|h| *h != "undefined");
    let tools = opts.get("toolsversion").unwrap_or("2147483647");
    let compat6 = opts.get_bool("compat6", false)?;
    let subformat = match opts.get("subformat") {
        None => "monolithicSparse",
        Some(
            s @ ("monolithicSparse"
            | "monolithicFlat"
            | "twoGbMaxExtentSparse"
            | "twoGbMaxExtentFlat"
            | "streamOptimized"),
        ) => s,
        Some(s) => return Err(invalid_value(s)),
    };
    let zeroed_grain = opts.get_bool("zeroed_grain", false)?;
    if compat6 && hw.is_some() {
        return Err(Error::invalid(
            "compat6 cannot be enabled with hwversion set",
        ));
    }
    let hw = if compat6 { "6" } else { hw.unwrap_or("4") };
    let heads: u32 = if adapter == "ide" { 16 } else { 255 };
    let split = subformat.starts_with("twoGbMaxExtent");
    let flat = subformat == "monolithicFlat" || subformat == "twoGbMaxExtentFlat";
    let compress = subformat == "streamOptimized";
    if flat && backing.is_some() {
        return Err(Error::unsupported("Flat image can't have backing file"));
    }
    if flat && zeroed_grain {
        return Err(Error::unsupported("Flat image can't enable zeroed grain"));
    }
    // The protocol layer checks its preallocation option on each file.
    match opts.get("preallocation") {
        None | Some("off" | "falloc" | "full") => {}
        Some("metadata") => return Err(Error::invalid("Unsupported preallocation mode: metadata")),
        Some(p) => return Err(invalid_value(p)),
    }

    let basename = |p: &str| p.rsplit('/').next().unwrap_or(p).to_string();
    let line = |sz: u64, name: &str| {
        if flat {
            format!("RW {} FLAT \"{}\" 0\n", sz.div_ceil(512), basename(name))
        } else {
            format!("RW {} SPARSE \"{}\"\n", sz.div_ceil(512), basename(name))
        }
    };
    let mut lines = String::new();
    let monolithic = !split && !flat;
    let desc_file = HostFile::create(path)?;
    let mut created = 0u64;
    if monolithic {
        init_sparse(&desc_file, size, compress, zeroed_grain)?;
        lines.push_str(&line(size, &filename));
        created = size;
    }
    let mut parent_cid = 0xffff_ffffu32;
    if let Some(b) = backing {
        let full = crate::image::combine_backing_path(&filename, b);
        // A json: name opens its node tree (maybe through blkdebug).
        let img;
        let opened;
        let bf: &HostFile = if full.starts_with("json:") {
            img = crate::image::Image::open(
                &full,
                &crate::image::OpenOptions {
                    force_share: true,
                    no_backing: true,
                    metadata_only: true,
                    ..Default::default()
                },
            )?;
            img.driver().host_file()
        } else {
            opened = HostFile::open(Path::new(&full), false, Default::default())?;
            &opened
        };
        let fmt = crate::format::probe(bf)?;
        if fmt != "vmdk" {
            return Err(Error::invalid(format!(
                "Invalid backing file format: {fmt}. Must be vmdk"
            )));
        }
        parent_cid = read_cid_of(bf).ok_or_else(|| Error::invalid("Failed to read parent CID"))?;
    }
    let extent_size = if split { SPLIT_SIZE } else { size };
    let mut idx = 1;
    while created < size {
        let cur = (size - created).min(extent_size);
        let name = if split {
            format!(
                "{dir}{prefix}-{}{idx:03}{postfix}",
                if flat { 'f' } else { 's' }
            )
        } else {
            format!("{dir}{prefix}-flat{postfix}")
        };
        let f = HostFile::create(Path::new(&name))?;
        if flat {
            f.set_len(cur)?;
        } else {
            init_sparse(&f, cur, compress, zeroed_grain)?;
        }
        f.flush()?;
        lines.push_str(&line(cur, &name));
        created += cur;
        idx += 1;
    }
    let mut r = [0u8; 4];
    crate::format::vpc::fill_random(&mut r);
    let text = desc::render(&desc::NewDesc {
        cid: u32::from_le_bytes(r),
        parent_cid,
        create_type: subformat,
        parent_hint: backing,
        extents: &lines,
        hw_version: hw,
        cylinders: size / (63 * heads as u64 * 512),
        heads,
        adapter,
        tools_version: tools,
    });
    if monolithic {
        desc_file.write_at(text.as_bytes(), 0x200)?;
    } else {
        desc_file.write_at(text.as_bytes(), 0)?;
        desc_file.set_len(text.len() as u64)?;
    }
    desc_file.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decomposes_like_qemu() {
        let d = |s: &str| decompose(s).unwrap();
        assert_eq!(d("a/b.vmdk"), ("a/".into(), "b".into(), ".vmdk".into()));
        assert_eq!(d("b"), ("".into(), "b".into(), "".into()));
        assert_eq!(d("x.y.vmdk"), ("".into(), "x.y".into(), ".vmdk".into()));
    }
}
