//! An opened image: the top driver plus its backing chain, with reads,
//! writes and block status resolved across the chain.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::format::{self, BackingRead, Driver, DriverOpenOptions, Extent, NoBacking, Status};
use crate::io::{CacheMode, HostFile, LockMode};

/// Deepest backing chain we follow; far beyond any real deployment, and it
/// keeps a hostile chain from exhausting descriptors.
pub const MAX_CHAIN_DEPTH: usize = 1024;

/// How to open an image.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// Format name; probed when None.
    pub format: Option<String>,
    pub writable: bool,
    pub cache: CacheMode,
    /// `-U`: take no locks.
    pub force_share: bool,
    /// Do not open the backing chain (`-u`-style operations, `info`
    /// without `--backing-chain` still opens it, as qemu-img does).
    pub no_backing: bool,
    /// Override the backing file recorded in the header (`-o backing_file`).
    pub backing_override: Option<(String, Option<String>)>,
    /// Open this internal snapshot of the top image, read-only (`-l`).
    pub snapshot: Option<String>,
    /// Opened for `check` (see [`format::DriverOpenOptions::for_check`]).
    pub for_check: bool,
    /// Only metadata is needed (`info`); see
    /// [`format::DriverOpenOptions::metadata_only`].
    pub metadata_only: bool,
    /// Secret id unlocking the top image (backing images get none).
    pub key_secret: Option<String>,
    /// `encrypt.format` the top image must have.
    pub encrypt_format: Option<String>,
    /// External data file of the top image (`data-file.filename`).
    pub data_file: Option<String>,
    /// Secret id unlocking the first backing image (`backing.encrypt.key-secret`).
    pub backing_key_secret: Option<String>,
    /// A blkdebug node between the top image's format and its file.
    pub blkdebug: Option<crate::io::BlkdebugOptions>,
    /// Open a null-co node of these options instead of a file (the path
    /// is then only its name).
    pub null_co: Option<crate::format::null::NullOptions>,
    /// raw's `offset` and `size` options: the image is that window of the
    /// file (a `size` also makes it fixed-size).
    pub raw_offset: Option<u64>,
    pub raw_size: Option<u64>,
}

impl OpenOptions {
    pub fn read_only() -> Self {
        Self::default()
    }
    pub fn read_write() -> Self {
        OpenOptions {
            writable: true,
            ..Self::default()
        }
    }
}

/// Status of a run of guest bytes resolved through the whole chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainExtent {
    pub len: u64,
    /// Layer that decided this run (0 = top).
    pub depth: usize,
    /// Allocated in some layer (false: no layer has it, reads as zeros).
    pub present: bool,
    pub zero: bool,
    pub data: bool,
    pub compressed: bool,
    /// Host offset in the deciding layer's file, when known.
    pub offset: Option<u64>,
}

pub struct Image {
    driver: Box<dyn Driver>,
    backing: Option<Box<Image>>,
    filename: String,
    /// The blkdebug node the top file was opened under, if any.
    blkdebug: Option<crate::io::BlkdebugOptions>,
    format: &'static str,
    /// Whether the format was given or guessed (guessed raw restricts block 0 writes).
    probed: bool,
    /// Secret id it was unlocked with, so operations can reopen it.
    key_secret: Option<String>,
}

fn file_id(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Resolve a backing filename relative to the image that names it, as
/// QEMU's path_combine does.
pub fn combine_backing_path(image: &str, backing: &str) -> String {
    if backing.starts_with('/') || backing.contains("://") || backing.starts_with("json:") {
        return backing.to_string();
    }
    match image.rfind('/') {
        Some(i) => format!("{}{}", &image[..=i], backing),
        None => backing.to_string(),
    }
}

/// What a `json:{...}` filename opens: the host file, the format (None:
/// probe) and a blkdebug node between them.
fn json_target(text: &str) -> Result<(String, Option<String>, Option<crate::io::BlkdebugOptions>)> {
    let v = crate::json::parse::parse_detailed(text)
        .map_err(|e| Error::invalid(format!("Could not parse the JSON options: {e}")))?;
    if !matches!(v, crate::json::Json::Object(_)) {
        return Err(Error::invalid("Invalid JSON object given"));
    }
    let items = crate::json::parse::flatten(&v);
    let get = |key: &str| {
        items
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    };
    let format = get("driver");
    if format.as_deref() == Some("blkdebug") {
        let (b, f) = crate::io::BlkdebugOptions::from_flat(&items, "").map_err(Error::invalid)?;
        return Ok((f, b.above.clone(), Some(b)));
    }
    let (file, blkdebug) = match get("file.driver").as_deref() {
        Some("blkdebug") => {
            let (b, f) =
                crate::io::BlkdebugOptions::from_flat(&items, "file.").map_err(Error::invalid)?;
            (Some(f), Some(b))
        }
        None | Some("file") => (get("file.filename"), None),
        Some(d) => return Err(Error::invalid(format!("Unknown protocol driver '{d}'"))),
    };
    let file = match file {
        Some(f) => f,
        None if format.is_some() => {
            return Err(Error::invalid(
                "A block device must be specified for \"file\"",
            ))
        }
        None => return Err(Error::invalid("Must specify either driver or file")),
    };
    Ok((file, format, blkdebug))
}

impl Image {
    /// Open `path` and its backing chain.
    pub fn open(path: &str, opts: &OpenOptions) -> Result<Image> {
        let mut seen = Vec::new();
        Self::open_inner(path, opts, &mut seen, 0).map_err(|e| {
            // qemu-img reports a loop on its own, without the open prefix.
            if e.message().ends_with("creates an infinite loop.") {
                return e;
            }
            let m = format!("Could not open '{path}': {}", e.message());
            e.with_message(m)
        })
    }

    fn open_inner(
        path: &str,
        opts: &OpenOptions,
        seen: &mut Vec<(u64, u64)>,
        depth: usize,
    ) -> Result<Image> {
        if depth > MAX_CHAIN_DEPTH {
            return Err(Error::invalid(format!(
                "Backing chain of '{path}' is too deep"
            )));
        }
        if let Some(n) = opts.null_co {
            return Ok(Image {
                driver: Box::new(format::null::Null::open(n)?),
                backing: None,
                filename: path.to_string(),
                blkdebug: None,
                format: "null-co",
                probed: false,
                key_secret: None,
            });
        }
        if let Some(text) = path.strip_prefix("json:") {
            // A json: name (typically a backing file): the node tree names
            // the format and the file, maybe through blkdebug.
            let (file, format, mut blkdebug) = json_target(text)?;
            if let Some(b) = blkdebug.as_mut() {
                b.name = path.to_string();
            }
            let inner = OpenOptions {
                format: format.or_else(|| opts.format.clone()),
                blkdebug: blkdebug.or_else(|| opts.blkdebug.clone()),
                ..opts.clone()
            };
            return Self::open_inner(&file, &inner, seen, depth);
        }
        // blkdebug reads its rules before it opens the image below it.
        let injector = match &opts.blkdebug {
            Some(b) => Some(std::sync::Arc::new(crate::io::Injector::new(b)?)),
            None => None,
        };
        let mut file = HostFile::open(Path::new(path), opts.writable, opts.cache)?;
        // Above a format, blkdebug wraps the driver instead (below).
        let above = opts.blkdebug.as_ref().is_some_and(|b| b.above.is_some());
        let mut filter = None;
        match injector {
            Some(inj) if above => filter = Some(inj),
            Some(inj) => file.set_injector(inj),
            None => {}
        }
        if let Some(id) = file_id(Path::new(path)) {
            if seen.contains(&id) {
                return Err(Error::invalid(format!(
                    "Backing file '{path}' creates an infinite loop."
                )));
            }
            seen.push(id);
        }
        let (format, probed) = match &opts.format {
            // `-f file`: the protocol driver itself, the host file as is.
            Some(f) if f == "file" => ("file", false),
            Some(f) => {
                let f = format::FORMATS
                    .iter()
                    .find(|k| **k == f.as_str())
                    .ok_or_else(|| Error::invalid(format!("Unknown driver '{f}'")))?;
                (*f, false)
            }
            None => (
                format::probe(&file)
                    .map_err(|e| e.context("Could not read image for determining its format"))?,
                true,
            ),
        };
        if !opts.force_share {
            file.lock(if opts.writable {
                LockMode::Write
            } else {
                LockMode::Read
            })?;
        }
        let mut driver = format::open_driver(
            format,
            file,
            &DriverOpenOptions {
                writable: opts.writable,
                for_check: opts.for_check,
                metadata_only: opts.metadata_only,
                key_secret: opts.key_secret.clone(),
                encrypt_format: opts.encrypt_format.clone(),
                data_file: opts.data_file.clone(),
                raw_offset: opts.raw_offset,
                raw_size: opts.raw_size,
            },
        )?;
        if let Some(inj) = filter {
            driver = Box::new(format::blkdebug::Filter::new(driver, inj));
        }
        if let Some(snap) = &opts.snapshot {
            if opts.writable {
                return Err(Error::invalid("Snapshots can only be opened read-only"));
            }
            driver = driver.snapshot(snap)?;
        }
        let backing_ref = match &opts.backing_override {
            Some((f, fmt)) if !f.is_empty() => Some(format::BackingRef {
                filename: f.clone(),
                format: fmt.clone(),
            }),
            Some(_) => None,
            None => driver.backing(),
        };
        let backing = match backing_ref {
            Some(b) if !opts.no_backing => {
                let bpath = combine_backing_path(path, &b.filename);
                let bopts = OpenOptions {
                    format: b.format.clone(),
                    writable: false,
                    cache: opts.cache,
                    force_share: opts.force_share,
                    no_backing: false,
                    backing_override: None,
                    snapshot: None,
                    for_check: false,
                    metadata_only: opts.metadata_only,
                    key_secret: opts.backing_key_secret.clone(),
                    ..Default::default()
                };
                let img = Self::open_inner(&bpath, &bopts, seen, depth + 1).map_err(|e| {
                    // QEMU prefixes once per level of the chain.
                    if e.message().contains("creates an infinite loop") {
                        return e;
                    }
                    let m = format!("Could not open backing file: {}", e.message());
                    e.with_message(m)
                })?;
                Some(Box::new(img))
            }
            _ => None,
        };
        Ok(Image {
            driver,
            backing,
            filename: path.to_string(),
            blkdebug: opts.blkdebug.clone(),
            format,
            probed,
            key_secret: opts.key_secret.clone(),
        })
    }

    /// Secret id this layer was opened with (`encrypt.key-secret`).
    pub fn key_secret(&self) -> Option<&str> {
        self.key_secret.as_deref()
    }

    pub fn filename(&self) -> &str {
        &self.filename
    }
    /// The name QEMU gives this image: its filename, or the name of the
    /// blkdebug node it was opened through.
    pub fn display_name(&self) -> &str {
        match &self.blkdebug {
            Some(b) if !b.name.is_empty() => &b.name,
            _ => &self.filename,
        }
    }
    pub fn blkdebug(&self) -> Option<&crate::io::BlkdebugOptions> {
        self.blkdebug.as_ref()
    }
    pub fn format(&self) -> &'static str {
        self.format
    }
    pub fn format_was_probed(&self) -> bool {
        self.probed
    }
    pub fn driver(&self) -> &dyn Driver {
        self.driver.as_ref()
    }
    pub fn backing(&self) -> Option<&Image> {
        self.backing.as_deref()
    }
    pub fn size(&self) -> u64 {
        self.driver.virtual_size()
    }
    /// Number of layers (1 without a backing file).
    pub fn chain_len(&self) -> usize {
        1 + self.backing.as_ref().map_or(0, |b| b.chain_len())
    }

    fn below(&self) -> &dyn BackingRead {
        match &self.backing {
            Some(b) => b.as_ref(),
            None => &NoBacking,
        }
    }

    fn check_range(&self, off: u64, len: u64) -> Result<()> {
        match off.checked_add(len) {
            Some(end) if end <= self.size() => Ok(()),
            _ => Err(Error::out_of_range(format!(
                "Request [{off}, +{len}) is beyond the end of the image ({} bytes)",
                self.size()
            ))),
        }
    }

    pub fn read_at(&self, buf: &mut [u8], off: u64) -> Result<()> {
        self.check_range(off, buf.len() as u64)?;
        self.driver.read_at(buf, off, self.below())
    }

    pub fn write_at(&self, buf: &[u8], off: u64) -> Result<()> {
        self.check_range(off, buf.len() as u64)?;
        self.driver.write_at(buf, off, self.below())
    }

    pub fn write_zeroes(&self, off: u64, len: u64, may_unmap: bool) -> Result<()> {
        self.check_range(off, len)?;
        self.driver.write_zeroes(off, len, may_unmap, self.below())
    }

    pub fn discard(&self, off: u64, len: u64) -> Result<()> {
        self.check_range(off, len)?;
        self.driver.discard(off, len)
    }

    pub fn flush(&self) -> Result<()> {
        self.driver.flush()
    }

    /// Write back everything and mark the image clean.
    pub fn close(self) -> Result<()> {
        self.driver.close()
    }

    /// Status of the top layer alone.
    pub fn layer_status(&self, off: u64, max: u64) -> Result<Extent> {
        self.driver.block_status(off, max)
    }

    /// Status of the run at `off` (at most `max` bytes) through the chain.
    pub fn block_status(&self, off: u64, max: u64) -> Result<ChainExtent> {
        self.check_range(off, 0)?;
        let max = max.min(self.size() - off);
        if max == 0 {
            return Err(Error::out_of_range("block status at end of image"));
        }
        self.chain_status(off, max, 0)
    }

    fn chain_status(&self, off: u64, max: u64, depth: usize) -> Result<ChainExtent> {
        let e = self.driver.block_status(off, max)?;
        let mut len = e.len.clamp(1, max);
        match e.status {
            Status::Data => {
                let mut zero = false;
                if let (Some(host), false) = (e.offset, e.compressed) {
                    if self.driver.defers_to_host(off) {
                        // As QEMU: the file's answer limits the run, and its
                        // errors are ignored (the answer is only a hint).
                        if let Ok((is_data, n)) = self.driver.file_at(off).data_status(host, len) {
                            len = n.clamp(1, len);
                            zero = !is_data;
                        }
                    }
                }
                Ok(ChainExtent {
                    len,
                    depth,
                    present: true,
                    zero,
                    data: true,
                    compressed: e.compressed,
                    offset: e.offset,
                })
            }
            Status::Zero => Ok(ChainExtent {
                len,
                depth,
                present: true,
                zero: true,
                data: false,
                compressed: false,
                offset: e.offset,
            }),
            Status::Unallocated => match &self.backing {
                Some(b) if off < b.size() => {
                    let mut r = b.chain_status(off, len.min(b.size() - off), depth + 1)?;
                    r.len = r.len.min(len);
                    Ok(r)
                }
                _ => Ok(ChainExtent {
                    len,
                    depth,
                    present: false,
                    zero: true,
                    data: false,
                    compressed: false,
                    offset: e.offset,
                }),
            },
        }
    }

    /// Allocated size on the host of this layer's file.
    pub fn actual_size(&self) -> Option<u64> {
        self.driver.host_file().allocated_size().ok()
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(&self.filename)
    }
}

impl BackingRead for Image {
    fn read_backing(&self, buf: &mut [u8], off: u64) -> Result<()> {
        let size = self.size();
        if off >= size {
            buf.fill(0);
            return Ok(());
        }
        let n = ((size - off).min(buf.len() as u64)) as usize;
        let (head, tail) = buf.split_at_mut(n);
        self.driver.read_at(head, off, self.below())?;
        tail.fill(0);
        Ok(())
    }
    fn is_none(&self) -> bool {
        false
    }
}
