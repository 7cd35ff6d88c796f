//! `create`: validate options, resolve the size from the backing file when
//! none is given, and let the format write the new image.

use std::path::Path;

use crate::error::{Error, Result};
use crate::format::{self, CreateOptions};
use crate::image::{combine_backing_path, Image, OpenOptions};

/// A create request as `qemu-img create` builds it.
#[derive(Debug, Clone, Default)]
pub struct CreateRequest {
    pub format: String,
    pub filename: String,
    /// Virtual size; taken from the backing file when None.
    pub size: Option<u64>,
    /// `-o` options (backing_file/backing_fmt may also sit here).
    pub options: CreateOptions,
    /// `-u`: do not open the backing file (size must then be given).
    pub unsafe_backing: bool,
}

/// The resolved size and options a create will use (what qemu-img prints
/// in its "Formatting ..." line).
#[derive(Debug, Clone)]
pub struct CreatePlan {
    pub size: u64,
    pub options: CreateOptions,
}

/// Check a create request and work out its size, without writing anything.
pub fn plan(req: &CreateRequest) -> Result<CreatePlan> {
    if !format::is_known(&req.format) {
        return Err(Error::invalid(format!(
            "Unknown file format '{}'",
            req.format
        )));
    }
    let known = format::create_options(&req.format)?;
    let mut opts = req.options.clone();
    opts.validate(known)?;
    let mut size = match opts.remove("size") {
        Some(s) => Some(crate::size::parse_size(&s).ok_or_else(|| {
            Error::invalid("Parameter 'size' expects a non-negative number below 2^64\nOptional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\nand exabytes, respectively.")
        })?),
        None => None,
    };
    if req.size.is_some() {
        size = req.size;
    }
    if let Some(bf) = opts.get("backing_file").map(str::to_string) {
        if bf == req.filename {
            return Err(Error::invalid(
                "Error: Trying to create an image with the same filename as the backing file",
            ));
        }
        if !req.unsafe_backing {
            let bpath = combine_backing_path(host_path(&req.filename), &bf);
            let bopts = OpenOptions {
                format: opts.get("backing_fmt").map(str::to_string),
                force_share: true,
                // BDRV_O_NO_IO: an encrypted backing file needs no secret.
                metadata_only: true,
                ..OpenOptions::default()
            };
            match Image::open(&bpath, &bopts) {
                Ok(b) => {
                    if opts.get("backing_fmt").is_none() {
                        opts.set("backing_fmt", b.format());
                    }
                    if size.is_none() {
                        size = Some(b.size());
                    }
                }
                Err(e) => {
                    let m = format!("Could not open backing image: {}", e.message());
                    return Err(e.with_message(m));
                }
            }
        }
    }
    let size = size.ok_or_else(|| Error::invalid("Image creation needs a size parameter"))?;
    Ok(CreatePlan {
        size,
        options: opts,
    })
}

/// The host file a filename names: `file:NAME` is NAME (QEMU's explicit
/// file protocol prefix).
fn host_path(filename: &str) -> &str {
    filename.strip_prefix("file:").unwrap_or(filename)
}

/// Create the image file.
pub fn create(req: &CreateRequest) -> Result<CreatePlan> {
    let plan = plan(req)?;
    let path = Path::new(host_path(&req.filename));
    if let Err(e) = format::create(&req.format, path, plan.size, &plan.options) {
        leave_files_as_qemu_does(&req.format, path, &plan.options, &e);
        return Err(e);
    }
    Ok(plan)
}

/// QEMU's drivers create the (empty) host file before the format layer
/// checks its options, so a failed create still changes the disk: qcow2
/// deletes what it created (image and data file); qcow, qed, vdi, vhdx
/// and vpc leave an empty file behind. Scripts see either, so do the same.
fn leave_files_as_qemu_does(format: &str, path: &Path, opts: &CreateOptions, e: &Error) {
    use crate::error::ErrorKind;
    let msg = e.message();
    // Failures of the file layer itself, which happen before any file exists.
    if e.kind() == ErrorKind::Locked
        || msg.starts_with("invalid parameter value")
        || msg.starts_with("unrecognized backing format")
    {
        return;
    }
    match format {
        "qcow2" => {
            let _ = std::fs::remove_file(path);
            if let Some(df) = opts.get("data_file") {
                // Named relative to the working directory, as QEMU creates it.
                let _ = std::fs::remove_file(df);
            }
        }
        "qcow" | "qed" | "vdi" | "vhdx" | "vpc" => {
            let _ = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(path);
        }
        _ => {}
    }
}
