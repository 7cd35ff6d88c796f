//! Creating a qcow2 image: validate the options as QEMU does, write a
//! minimal image (header, refcount table, one refcount block), then grow
//! the L1 table and preallocate through the normal allocation paths.

use std::path::Path;

use super::header::{self, Compression, Header};
use super::Qcow2;
use crate::error::{Error, Result};
use crate::format::{CreateOptions, DriverOpenOptions, Prealloc};
use crate::io::HostFile;

/// Typed qcow2 creation parameters.
#[derive(Debug, Clone)]
pub struct Qcow2Params {
    pub version: u32,
    pub cluster_bits: u32,
    pub refcount_order: u32,
    pub lazy_refcounts: bool,
    pub extended_l2: bool,
    pub compression: Compression,
    pub prealloc: Prealloc,
    pub backing_file: Option<String>,
    pub backing_fmt: Option<String>,
    /// External data file (name as stored in the header).
    pub data_file: Option<String>,
    pub data_file_raw: bool,
    pub encrypt: Option<Encrypt>,
}

/// Encryption of a new image.
#[derive(Clone)]
pub enum Encrypt {
    /// The LUKS area (header and key slots) to embed.
    Luks(Vec<u8>),
    /// Legacy AES-CBC: nothing stored but the method.
    Aes,
}

impl std::fmt::Debug for Encrypt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Encrypt::Luks(_) => "Luks",
            Encrypt::Aes => "Aes",
        })
    }
}

const V3_HINT: &str = "(use version=v3 or greater)";

impl Qcow2Params {
    pub fn from_options(o: &CreateOptions) -> Result<Self> {
        let version = match o.get("compat") {
            None | Some("1.1") | Some("v3") => 3,
            Some("0.10") | Some("v2") => 2,
            Some(v) => {
                return Err(Error::invalid(format!(
                    "Parameter 'version' does not accept value '{v}'"
                )))
            }
        };
        let cs = o.get_size("cluster_size")?.unwrap_or(65536);
        if !cs.is_power_of_two() || !(512..=2 << 20).contains(&cs) {
            return Err(Error::invalid(
                "Cluster size must be a power of two between 512 and 2048k",
            ));
        }
        let rb = o.get_number("refcount_bits")?.unwrap_or(16);
        if !rb.is_power_of_two() || rb > 64 {
            return Err(Error::invalid(
                "Refcount width must be a power of two and may not exceed 64 bits",
            ));
        }
        if version < 3 && rb != 16 {
            return Err(Error::invalid(format!(
                "Different refcount widths than 16 bits require compatibility level 1.1 or above {V3_HINT}"
            )));
        }
        let lazy = o.get_bool("lazy_refcounts", false)?;
        if lazy && version < 3 {
            return Err(Error::invalid(format!(
                "Lazy refcounts only supported with compatibility level 1.1 and above {V3_HINT}"
            )));
        }
        let extended_l2 = o.get_bool("extended_l2", false)?;
        if extended_l2 {
            if version < 3 {
                return Err(Error::invalid(format!(
                    "Extended L2 entries are only supported with compatibility level 1.1 and above {V3_HINT}"
                )));
            }
            if cs < 16384 {
                return Err(Error::invalid(
                    "Extended L2 entries are only supported with cluster sizes of at least 16384 bytes",
                ));
            }
        }
        let compression = match o.get("compression_type") {
            None | Some("zlib") => Compression::Zlib,
            Some("zstd") => Compression::Zstd,
            Some(v) => {
                return Err(Error::invalid(format!(
                    "Parameter 'compression-type' does not accept value '{v}'"
                )))
            }
        };
        if compression != Compression::Zlib && version < 3 {
            return Err(Error::invalid(format!(
                "Non-zlib compression type is only supported with compatibility level 1.1 and above {V3_HINT}"
            )));
        }
        let prealloc = match o.get("preallocation") {
            None => Prealloc::Off,
            Some(p @ ("off" | "metadata" | "falloc" | "full")) => Prealloc::parse(p)?,
            Some(v) => {
                return Err(Error::invalid(format!(
                    "Parameter 'preallocation' does not accept value '{v}'"
                )))
            }
        };
        let encrypt = match (o.get("encrypt.format"), o.get_bool("encryption", false)?) {
            (Some("luks"), _) => Some(Encrypt::Luks(super::crypto::new_luks_area(o)?)),
            (Some("aes"), _) | (None, true) => {
                let id = o.get("encrypt.key-secret").ok_or_else(|| {
                    Error::invalid("Parameter 'encrypt.key-secret' is required for cipher")
                })?;
                crate::crypto::secret::get(id)?;
                Some(Encrypt::Aes)
            }
            (Some(f), _) => {
                return Err(Error::invalid(format!(
                    "Parameter 'encrypt.format' does not accept value '{f}'"
                )))
            }
            (None, false) => None,
        };
        let data_file = o.get("data_file").map(str::to_string);
        let data_file_raw = o.get_bool("data_file_raw", false)?;
        if data_file_raw && data_file.is_none() {
            return Err(Error::invalid("data-file-raw requires data-file"));
        }
        if data_file.is_some() && version < 3 {
            return Err(Error::invalid(format!(
                "External data files are only supported with compatibility level 1.1 and above {V3_HINT}"
            )));
        }
        let backing_file = o.get("backing_file").map(str::to_string);
        if backing_file.is_some() && prealloc != Prealloc::Off && !extended_l2 {
            return Err(Error::invalid(
                "Backing file and preallocation can only be used at the same time if extended_l2 is on",
            ));
        }
        if backing_file.is_none() && o.get("backing_fmt").is_some() {
            return Err(Error::invalid(
                "Backing format cannot be used without backing file",
            ));
        }
        Ok(Qcow2Params {
            version,
            cluster_bits: cs.trailing_zeros(),
            refcount_order: rb.trailing_zeros(),
            lazy_refcounts: lazy,
            extended_l2,
            compression,
            prealloc,
            backing_file,
            backing_fmt: o.get("backing_fmt").map(str::to_string),
            data_file,
            data_file_raw,
            encrypt,
        })
    }
}

pub fn create(path: &Path, size: u64, opts: &CreateOptions) -> Result<()> {
    let p = Qcow2Params::from_options(opts)?;
    // QEMU rounds the virtual size up to whole sectors.
    let size = size
        .checked_next_multiple_of(512)
        .ok_or_else(|| Error::invalid("Image size too large"))?;
    // QEMU writes the empty image, then truncates it to the size, where
    // the block layer checks the size before qcow2 sees it.
    if size > i64::MAX as u64 {
        return Err(Error::invalid(
            "Could not resize image: Image size cannot be negative",
        ));
    }
    // BDRV_MAX_LENGTH: INT64_MAX aligned down to the 1 GiB maximum alignment.
    let max = i64::MAX as u64 & !((1u64 << 30) - 1);
    if size > max {
        return Err(Error::invalid(format!(
            "Could not resize image: offset({size}) exceeds maximum({max})"
        )));
    }
    create_with(path, size, &p)
}

pub fn create_with(path: &Path, size: u64, p: &Qcow2Params) -> Result<()> {
    let cs = 1u64 << p.cluster_bits;
    let mut incompatible = 0;
    if p.extended_l2 {
        incompatible |= header::INCOMPAT_EXTL2;
    }
    if p.compression != Compression::Zlib {
        incompatible |= header::INCOMPAT_COMPRESSION;
    }
    if p.data_file.is_some() {
        incompatible |= header::INCOMPAT_DATA_FILE;
    }
    let h = Header {
        version: p.version,
        backing_file: p.backing_file.clone(),
        cluster_bits: p.cluster_bits,
        size: 0,
        crypt_method: 0,
        l1_size: 0,
        l1_table_offset: 0,
        refcount_table_offset: cs,
        refcount_table_clusters: 1,
        nb_snapshots: 0,
        snapshots_offset: 0,
        incompatible,
        compatible: if p.lazy_refcounts {
            header::COMPAT_LAZY_REFCOUNTS
        } else {
            0
        },
        autoclear: if p.data_file_raw {
            header::AUTOCLEAR_DATA_FILE_RAW
        } else {
            0
        },
        refcount_order: if p.version >= 3 { p.refcount_order } else { 4 },
        header_length: if p.version >= 3 {
            header::V3_HEADER_LEN
        } else {
            header::V2_HEADER_LEN
        },
        compression: p.compression,
        extra: Vec::new(),
        backing_format: p.backing_fmt.clone(),
        data_file: p.data_file.clone(),
        other_exts: Vec::new(),
        feature_names: Vec::new(),
    };
    let mut first = h.serialize()?;
    let file = HostFile::create(path)?;
    // Cluster 1: refcount table pointing at the block in cluster 2, which
    // counts clusters 0..=2.
    let mut reftable = vec![0u8; cs as usize];
    reftable[..8].copy_from_slice(&(2 * cs).to_be_bytes());
    let mut block = vec![0u8; cs as usize];
    for c in 0..3 {
        set_refcount(&mut block, h.refcount_order, c, 1);
    }
    first.extend_from_slice(&reftable);
    first.extend_from_slice(&block);
    file.write_at(&first, 0)?;
    drop(file);

    if let Some(name) = &p.data_file {
        // The data file is created (empty, sized below by preallocation or
        // left sparse) next to the image, as QEMU resolves its name.
        // QEMU opens the data file by the stored name as given (relative to
        // the working directory, not to the image).
        let dpath = name.clone();
        let df = HostFile::create(Path::new(&dpath))?;
        df.set_len(size)?;
    }
    let file = HostFile::open(path, true, Default::default())?;
    let q = Qcow2::open(
        file,
        &DriverOpenOptions {
            writable: true,
            for_check: false,
            metadata_only: false,
            ..Default::default()
        },
    )?;
    let result = (|| {
        // A raw data file is fully mapped from the start (QEMU preallocates
        // its metadata), so the file stays readable as a raw image.
        let prealloc = if p.data_file_raw && p.prealloc == Prealloc::Off {
            Prealloc::Metadata
        } else {
            p.prealloc
        };
        q.resize(size, prealloc)?;
        // QEMU sets encryption up after sizing: the LUKS area follows the
        // L1 table (and any preallocated clusters).
        if let Some(e) = &p.encrypt {
            q.set_up_encryption(e)?;
        }
        crate::format::Driver::flush(&q)
    })();
    drop(q);
    result
}

fn set_refcount(block: &mut [u8], order: u32, i: usize, v: u64) {
    let bits = 1usize << order;
    if bits < 8 {
        let per = 8 / bits;
        block[i / per] |= (v as u8) << ((i % per) * bits);
    } else {
        let bytes = bits / 8;
        let be = v.to_be_bytes();
        block[i * bytes..(i + 1) * bytes].copy_from_slice(&be[8 - bytes..]);
    }
}
