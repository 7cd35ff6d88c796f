//! `check`: consistency check and repair with qemu-img's report.

use crate::error::{Error, ErrorKind, Result};
use crate::format::{CheckResult, Repair};
use crate::image::{Image, OpenOptions};
use crate::io::CacheMode;
use crate::json::Json;

#[derive(Debug, Clone, Default)]
pub struct CheckOptions {
    pub format: Option<String>,
    pub repair: Repair,
    pub force_share: bool,
    pub cache: CacheMode,
    /// Secret id unlocking an encrypted image.
    pub key_secret: Option<String>,
    /// qcow2's external data file, instead of the one the header names.
    pub data_file: Option<String>,
    /// A blkdebug node the image is opened through.
    pub blkdebug: Option<crate::io::BlkdebugOptions>,
}

/// QAPI ImageCheck: the final pass's counts plus what the repair fixed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    pub filename: String,
    pub format: String,
    pub result: CheckResult,
    /// Whether a repair pass fixed anything (then `result` is the re-check).
    pub repaired: bool,
}

impl CheckReport {
    /// qemu-img's exit code for this report: 0 clean, 1 check failed,
    /// 2 corruptions, 3 leaks only.
    pub fn exit_code(&self) -> i32 {
        let r = &self.result;
        if r.check_errors > 0 {
            1
        } else if r.corruptions > 0 {
            2
        } else if r.leaks > 0 {
            3
        } else {
            0
        }
    }

    pub fn to_json(&self) -> Json {
        let r = &self.result;
        let mut j = Json::object()
            .with("filename", self.filename.as_str())
            .with("format", self.format.as_str())
            .with("check-errors", r.check_errors);
        let opt = |j: &mut Json, k: &str, v: u64| {
            if v != 0 {
                j.set(k, v);
            }
        };
        opt(&mut j, "image-end-offset", r.image_end_offset);
        opt(&mut j, "corruptions", r.corruptions);
        opt(&mut j, "leaks", r.leaks);
        opt(&mut j, "corruptions-fixed", r.corruptions_fixed);
        opt(&mut j, "leaks-fixed", r.leaks_fixed);
        opt(&mut j, "total-clusters", r.total_clusters);
        opt(&mut j, "allocated-clusters", r.allocated_clusters);
        opt(&mut j, "fragmented-clusters", r.fragmented_clusters);
        opt(&mut j, "compressed-clusters", r.compressed_clusters);
        j
    }
}

/// Error for formats without a check (qemu-img exits 63 on it). Only the
/// check itself says so: an image that cannot be opened, even for an
/// unsupported feature, ends with exit 1 as qemu-img's open failure does.
pub fn is_unsupported(e: &Error) -> bool {
    e.kind() == ErrorKind::Unsupported && e.message() == NO_CHECKS
}

/// What qemu-img says for a format without checks.
pub const NO_CHECKS: &str = "This image format does not support checks";

/// Check `path`; with a repair mode, fix and re-check as qemu-img does.
/// `log` receives each finding line; `on_repaired` is called between the
/// passes with the fixed counts (qemu-img prints its summary there).
pub fn check(
    path: &str,
    opts: &CheckOptions,
    log: &mut dyn FnMut(&str),
    on_repaired: &mut dyn FnMut(&CheckResult),
) -> Result<CheckReport> {
    let oo = OpenOptions {
        format: opts.format.clone(),
        writable: opts.repair != Repair::None,
        cache: opts.cache,
        force_share: opts.force_share,
        // qemu-img check opens the chain: a missing backing file fails it.
        no_backing: false,
        for_check: true,
        key_secret: opts.key_secret.clone(),
        data_file: opts.data_file.clone(),
        blkdebug: opts.blkdebug.clone(),
        ..OpenOptions::default()
    };
    let img = Image::open(path, &oo)?;
    let first = img.driver().check(opts.repair, log)?;
    let mut result = first;
    let mut repaired = false;
    if opts.repair != Repair::None && (first.corruptions_fixed > 0 || first.leaks_fixed > 0) {
        on_repaired(&first);
        img.flush()?;
        result = img.driver().check(Repair::None, log)?;
        result.corruptions_fixed = first.corruptions_fixed;
        result.leaks_fixed = first.leaks_fixed;
        repaired = true;
    }
    let format = img.format().to_string();
    img.close()?;
    Ok(CheckReport {
        filename: path.to_string(),
        format,
        result,
        repaired,
    })
}
