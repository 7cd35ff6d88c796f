//! Pieces several commands share: `--object`, `--output`, `--image-opts`
//! and opening an image with qemu-img's error text.

use imgtool::format::CreateOptions;
use imgtool::io::{BlkdebugOptions, CacheMode};
use imgtool::json::Json;
use imgtool::{Image, OpenOptions};

use crate::app::Fail;

/// Codes qemu-img gives its long-only options (kept for readable tables).
pub const OPT_OUTPUT: i32 = 256;
pub const OPT_OBJECT: i32 = 258;
pub const OPT_IMAGE_OPTS: i32 = 259;

pub const fn ch(c: char) -> i32 {
    c as i32
}

/// `--output human|json`, checked where the option appears.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    Human,
    Json,
}

pub fn parse_output(arg: &str) -> Result<OutputFormat, Fail> {
    match arg {
        "human" => Ok(OutputFormat::Human),
        "json" => Ok(OutputFormat::Json),
        _ => Err(Fail::Usage(format!(
            "--output expects 'human' or 'json' not '{arg}'"
        ))),
    }
}

/// User-creatable object types QEMU's tools know; `secret` is stored for
/// `key-secret` options, the others are accepted and unused.
const OBJECT_TYPES: &[&str] = &[
    "secret",
    "secret_keyring",
    "iothread",
    "throttle-group",
    "tls-creds-anon",
    "tls-creds-psk",
    "tls-creds-x509",
    "tls-cipher-suites",
    "authz-list",
    "authz-listfile",
    "authz-pam",
    "authz-simple",
];

/// `--object TYPE,id=ID,...`: validated the way QEMU reports the common
/// mistakes.
pub fn parse_object(def: &str) -> Result<(), Fail> {
    let opts = CreateOptions::parse(def).map_err(Fail::from)?;
    let Some((qom_type, _)) = opts.items().first() else {
        return Err(Fail::report("Parameter 'qom-type' is missing"));
    };
    let qom_type = match opts.get("qom-type") {
        Some(t) => t.to_string(),
        None => qom_type.clone(),
    };
    if !OBJECT_TYPES.contains(&qom_type.as_str()) {
        return Err(Fail::report(format!(
            "Parameter 'qom-type' does not accept value '{qom_type}'"
        )));
    }
    if opts.get("id").is_none() {
        return Err(Fail::report("Parameter 'id' is missing"));
    }
    if qom_type == "secret" {
        define_secret(&opts)?;
    }
    Ok(())
}

/// Properties a `secret` object takes.
const SECRET_KEYS: &[&str] = &[
    "qom-type", "id", "data", "file", "format", "keyid", "iv", "loaded",
];

/// Store a `secret` object's bytes under its id, checked as QEMU checks.
fn define_secret(opts: &CreateOptions) -> Result<(), Fail> {
    let id = opts.get("id").unwrap_or_default();
    for (i, (k, _)) in opts.items().iter().enumerate() {
        // The first item is the type (`secret` or `qom-type=secret`).
        if i > 0 && !SECRET_KEYS.contains(&k.as_str()) {
            return Err(Fail::report(format!("Parameter '{k}' is unexpected")));
        }
    }
    let base64 = match opts.get("format") {
        None | Some("raw") => false,
        Some("base64") => true,
        Some(f) => {
            return Err(Fail::report(format!(
                "Parameter 'format' does not accept value '{f}'"
            )))
        }
    };
    let raw: zeroize::Zeroizing<Vec<u8>> = match (opts.get("data"), opts.get("file")) {
        (Some(_), Some(_)) => return Err(Fail::report("'file' and 'data' are mutually exclusive")),
        (None, None) => return Err(Fail::report("Either 'file' or 'data' must be provided")),
        (Some(d), None) => zeroize::Zeroizing::new(d.as_bytes().to_vec()),
        (None, Some(f)) => zeroize::Zeroizing::new(std::fs::read(f).map_err(|e| {
            let why = imgtool::Error::from(e);
            Fail::report(format!(
                "Unable to read {f}: Failed to open file \u{201c}{f}\u{201d}: {}",
                why.message()
            ))
        })?),
    };
    let data = if base64 {
        zeroize::Zeroizing::new(
            base64_decode(&raw)
                .ok_or_else(|| Fail::report("Base64 data contains invalid characters"))?,
        )
    } else {
        raw
    };
    if let Some(k) = opts.get("keyid") {
        // Secrets encrypted under another secret (AES-256-CBC) are not
        // supported; an undefined key id fails as in QEMU.
        imgtool::crypto::secret::get(k).map_err(|e| Fail::report(e.message()))?;
        return Err(Fail::report(format!(
            "Secret '{id}' encrypted with key '{k}' is not supported"
        )));
    }
    if imgtool::crypto::secret::exists(id) {
        return Err(Fail::report(format!(
            "attempt to add duplicate property '{id}' to object (type 'container')"
        )));
    }
    imgtool::crypto::secret::add(id, &data);
    Ok(())
}

/// Strict base64 (QEMU refuses anything outside the alphabet).
fn base64_decode(s: &[u8]) -> Option<Vec<u8>> {
    fn val(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let body = s
        .strip_suffix(b"==")
        .or_else(|| s.strip_suffix(b"="))
        .unwrap_or(s);
    if !s.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    for chunk in body.chunks(4) {
        let mut acc = 0u32;
        for &c in chunk {
            acc = (acc << 6) | val(c)?;
        }
        let n = chunk.len();
        acc <<= 6 * (4 - n) as u32;
        let b = acc.to_be_bytes();
        out.extend_from_slice(&b[1..n]);
    }
    Some(out)
}

/// Block-layer option keys every format node accepts (runtime options we
/// have no use for are accepted and ignored, as they change no output).
const NODE_KEYS: &[&str] = &[
    "driver",
    "file",
    "file.driver",
    "file.filename",
    "file.locking",
    "file.aio",
    "file.cache.direct",
    "file.cache.no-flush",
    "read-only",
    "auto-read-only",
    "force-share",
    "node-name",
    "discard",
    "detect-zeroes",
    "cache.direct",
    "cache.no-flush",
    "backing",
    "encrypt.key-secret",
    "encrypt.format",
    "key-secret",
];

/// qcow2's own runtime options (block/qcow2.c's runtime list).
const QCOW2_KEYS: &[&str] = &[
    "lazy-refcounts",
    "pass-discard-request",
    "pass-discard-snapshot",
    "pass-discard-other",
    "discard-no-unref",
    "overlap-check",
    "overlap-check.template",
    "overlap-check.main-header",
    "overlap-check.active-l1",
    "overlap-check.active-l2",
    "overlap-check.refcount-table",
    "overlap-check.refcount-block",
    "overlap-check.snapshot-table",
    "overlap-check.inactive-l1",
    "overlap-check.inactive-l2",
    "overlap-check.bitmap-directory",
    "cache-size",
    "l2-cache-size",
    "l2-cache-entry-size",
    "refcount-cache-size",
    "cache-clean-interval",
    "data-file.driver",
    "data-file.filename",
];

fn key_known(driver: &str, key: &str) -> bool {
    NODE_KEYS.contains(&key)
        || (driver == "qcow2" && QCOW2_KEYS.contains(&key))
        || (driver == "raw" && (key == "offset" || key == "size"))
}

/// QEMU's path_has_protocol: a ':' before any '/'.
fn has_protocol(path: &str) -> bool {
    path.find([':', '/'])
        .is_some_and(|i| path.as_bytes()[i] == b':')
}

/// Protocol drivers qemu-img 10.0.2 has (some as modules that may be
/// missing); any other `NAME:` prefix is refused.
const PROTOCOLS: &[&str] = &[
    "blkdebug",
    "blkverify",
    "fat",
    "file",
    "ftp",
    "ftps",
    "gluster",
    "gluster+tcp",
    "gluster+unix",
    "host_cdrom",
    "host_device",
    "http",
    "https",
    "iscsi",
    "iser",
    "json",
    "nbd",
    "nbd+tcp",
    "nbd+unix",
    "nfs",
    "null-aio",
    "null-co",
    "nvme",
    "rbd",
    "ssh",
];

/// bdrv_find_protocol's error for a plain file name whose prefix names no
/// protocol driver: `Unknown protocol 'NAME'`.
pub fn unknown_protocol(filename: &str) -> Option<String> {
    if !has_protocol(filename) {
        return None;
    }
    let name = filename.split(':').next().unwrap_or_default();
    // QEMU copies the name into a 128-byte buffer.
    let mut end = name.len().min(127);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    let name = &name[..end];
    (!PROTOCOLS.contains(&name)).then(|| format!("Unknown protocol '{name}'"))
}

/// A quorum node's `json:` name (QEMU's key order) and its first child's
/// file name, from the flattened `file.children.N.*` options.
fn quorum_node(items: &[(String, String)]) -> Result<Quorum, String> {
    let get = |key: &str| {
        items
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    };
    let mut children = Vec::new();
    while let Some(f) = get(&format!("file.children.{}.filename", children.len())) {
        match get(&format!("file.children.{}.driver", children.len())).as_deref() {
            None | Some("file") => {}
            Some(d) => return Err(format!("Unknown protocol driver '{d}'")),
        }
        children.push(f);
    }
    if children.is_empty() {
        return Err("Number of provided children must be 1 or more".into());
    };
    let Some(threshold) = get("file.vote-threshold") else {
        return Err("Parameter 'vote-threshold' is missing".into());
    };
    let q = |s: &str| imgtool::json::Json::Str(s.to_string()).to_compact();
    let list: Vec<String> = children
        .iter()
        .map(|f| format!("{{\"driver\": \"file\", \"filename\": {}}}", q(f)))
        .collect();
    let name = format!(
        "json:{{\"children\": [{}], \"driver\": \"quorum\", \"vote-threshold\": {threshold}}}",
        list.join(", ")
    );
    Ok(Quorum { name, children })
}

/// A VMDK text descriptor naming an extent by a relative path.
fn vmdk_descriptor_has_relative_extent(path: &str) -> bool {
    use std::io::Read;
    let mut head = Vec::new();
    let Ok(f) = std::fs::File::open(path) else {
        return false;
    };
    if f.take(64 * 1024).read_to_end(&mut head).is_err() {
        return false;
    }
    let text = String::from_utf8_lossy(&head);
    if !text.starts_with("# Disk DescriptorFile") && !text.starts_with("# Disk Descriptor File") {
        return false;
    }
    text.lines()
        .filter(|l| {
            ["RW ", "RDONLY ", "NOACCESS "]
                .iter()
                .any(|p| l.starts_with(p))
        })
        .filter_map(|l| l.split('"').nth(1))
        .any(|name| !name.starts_with('/'))
}

/// The message QEMU gives where a quorum node's directory is needed.
pub const QUORUM_NO_DIR: &str = "Cannot generate a base directory for quorum nodes";

/// `backing.file.filename` is relative to the working directory, not to
/// the image as a header's backing name is.
fn absolute(name: &str) -> String {
    if name.starts_with('/') {
        return name.to_string();
    }
    match std::env::current_dir() {
        Ok(d) => d.join(name).to_string_lossy().into_owned(),
        Err(_) => name.to_string(),
    }
}

const EMPTY_BACKING_WARNING: &str =
    "Use of \"backing\": \"\" is deprecated; use \"backing\": null instead";

/// What an image argument names: a file and maybe a format.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageSpec {
    /// The argument as given (used in "Could not open" messages).
    pub arg: String,
    pub filename: String,
    pub format: Option<String>,
    /// `encrypt.key-secret` (qcow2) or `key-secret` (luks).
    pub key_secret: Option<String>,
    pub encrypt_format: Option<String>,
    /// qcow2's `data-file.filename`: the external data file to use.
    pub data_file: Option<String>,
    /// `backing.*`: the backing image given as options instead of by the
    /// name in the header.
    pub backing: Option<Box<ImageSpec>>,
    /// The `backing` option itself: None when absent, Some("") for null/""
    /// (no backing file), else a node name (which we never have).
    pub backing_ref: Option<String>,
    /// A blkdebug node between the format and the file.
    pub blkdebug: Option<BlkdebugOptions>,
    /// A plain name's unknown protocol prefix, refused when opening.
    pub protocol_error: Option<String>,
    /// `cache.direct=on` (or `file.cache.direct=on`): O_DIRECT semantics.
    pub direct: bool,
    /// raw's `offset` and `size` options, as given (QEMU names such an
    /// image by a `json:` tree holding them).
    pub raw_window: Option<(Option<Json>, Option<Json>)>,
    /// `file.driver=quorum`: QEMU's name for the quorum node; the image is
    /// read through its first child (the children hold the same bytes).
    pub quorum: Option<Quorum>,
    /// A null-co node (no file): its options.
    pub null_co: Option<imgtool::format::null::NullOptions>,
}

/// A quorum node below the format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quorum {
    /// QEMU's `json:` name for the node.
    pub name: String,
    /// The children's file names, in order.
    pub children: Vec<String>,
}

impl ImageSpec {
    pub fn plain(filename: &str, format: Option<&str>) -> Self {
        if let Some(rest) = filename.strip_prefix("blkdebug:") {
            // blkdebug:CONFIG:IMAGE; the syntax error shows when opening.
            let (config, image) = rest.split_once(':').unwrap_or(("", ""));
            let mut s = Self::plain(image, format);
            s.arg = filename.to_string();
            s.blkdebug = Some(BlkdebugOptions {
                config: Some(config.to_string()),
                name: filename.to_string(),
                ..Default::default()
            });
            if !rest.contains(':') {
                s.filename = String::new();
            }
            return s;
        }
        // `file:NAME` names a host file explicitly; a NAME that itself looks
        // like it has a protocol prefix is shown as `./NAME`, as QEMU does.
        let name = match filename.strip_prefix("file:") {
            Some(rest) if has_protocol(rest) => format!("./{rest}"),
            Some(rest) => rest.to_string(),
            None => filename.to_string(),
        };
        ImageSpec {
            arg: filename.to_string(),
            filename: name,
            format: format.map(str::to_string),
            key_secret: None,
            encrypt_format: None,
            data_file: None,
            backing: None,
            backing_ref: None,
            blkdebug: None,
            protocol_error: unknown_protocol(filename),
            direct: false,
            quorum: None,
            raw_window: None,
            null_co: None,
        }
    }

    /// `--image-opts driver=qcow2,file.filename=x.qcow2`.
    pub fn from_image_opts(optstr: &str) -> Result<Self, Fail> {
        let fail = |m: String| Fail::Report(format!("Could not open '{optstr}': {m}"));
        let opts = CreateOptions::parse(optstr).map_err(|e| fail(e.message().into()))?;
        // QEMU's implied option name: a first element without '=' is `file`.
        let first = optstr.split(',').next().unwrap_or_default();
        let node = if first.contains('=') || first.is_empty() {
            opts.get("file").map(str::to_string)
        } else {
            Some(first.to_string())
        };
        if opts.get("backing") == Some("") {
            crate::app::warn(EMPTY_BACKING_WARNING);
        }
        Self::from_options(optstr, opts.items(), node)
    }

    /// `json:{"driver": "qcow2", "file": {"filename": "x.qcow2"}}`, the
    /// same tree as `--image-opts` written as a JSON object.
    pub fn from_json(arg: &str, text: &str) -> Result<Self, Fail> {
        let fail = |m: &str| Fail::Report(format!("Could not open '{arg}': {m}"));
        let v = imgtool::json::parse::parse_detailed(text)
            .map_err(|e| fail(&format!("Could not parse the JSON options: {e}")))?;
        if !matches!(v, imgtool::json::Json::Object(_)) {
            return Err(fail("Invalid JSON object given"));
        }
        let items = imgtool::json::parse::flatten(&v);
        if let Some(imgtool::json::Json::Str(b)) = v.get("backing") {
            if b.is_empty() {
                crate::app::warn(EMPTY_BACKING_WARNING);
            }
        }
        // A string `file` names another node, as `file=x` does in options.
        let node = v.get("file").and_then(|f| match f {
            imgtool::json::Json::Str(s) => Some(s.clone()),
            _ => None,
        });
        let mut spec = Self::from_options(arg, &items, node)?;
        // JSON numbers stay numbers in QEMU's name for the image.
        if let Some(w) = &mut spec.raw_window {
            for (slot, key) in [(&mut w.0, "offset"), (&mut w.1, "size")] {
                if let Some(j @ (Json::Int(_) | Json::UInt(_))) = v.get(key) {
                    *slot = Some(j.clone());
                }
            }
        }
        Ok(spec)
    }

    fn from_options(
        arg: &str,
        items: &[(String, String)],
        node: Option<String>,
    ) -> Result<Self, Fail> {
        let fail = |m: String| Fail::Report(format!("Could not open '{arg}': {m}"));
        let (sub, own): (Vec<_>, Vec<_>) = items
            .iter()
            .cloned()
            .partition(|(k, _)| k.starts_with("backing."));
        let items = &own[..];
        let backing = if sub.is_empty() {
            None
        } else {
            let sub: Vec<(String, String)> = sub
                .into_iter()
                .map(|(k, v)| (k["backing.".len()..].to_string(), v))
                .collect();
            let b = if sub.iter().any(|(k, _)| k == "file.filename") {
                Self::from_options(arg, &sub, None)?
            } else {
                // Options for the backing file the header names.
                let get = |key: &str| {
                    sub.iter()
                        .rev()
                        .find(|(k, _)| k == key)
                        .map(|(_, v)| v.clone())
                };
                ImageSpec {
                    key_secret: get("encrypt.key-secret").or_else(|| get("key-secret")),
                    ..Self::plain("", None)
                }
            };
            Some(Box::new(b))
        };
        let get = |key: &str| {
            items
                .iter()
                .rev()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
        };
        if let Some(node) = node {
            return Err(fail(format!(
                "Cannot find device='{node}' nor node-name='{node}'"
            )));
        }
        let driver = get("driver");
        if driver.as_deref() == Some("blkdebug") {
            let (mut b, image) = BlkdebugOptions::from_flat(items, "").map_err(fail)?;
            b.name = arg.to_string();
            return Ok(ImageSpec {
                arg: arg.to_string(),
                filename: image,
                format: b.above.clone(),
                key_secret: None,
                encrypt_format: None,
                data_file: None,
                backing: None,
                backing_ref: None,
                blkdebug: Some(b),
                protocol_error: None,
                direct: false,
                quorum: None,
                raw_window: None,
                null_co: None,
            });
        }
        if driver.as_deref() == Some("null-co") {
            return Self::null_co(arg, items).map_err(fail);
        }
        if driver.as_deref() == Some("file") {
            // The protocol driver as the image: `filename` names the file.
            return Self::file_node(arg, items, &get);
        }
        let blkdebug_below = get("file.driver").as_deref() == Some("blkdebug");
        let quorum = get("file.driver").as_deref() == Some("quorum");
        if let (Some(d), Some((k, _))) = (
            &driver,
            items.iter().find(|(k, _)| {
                let below = (blkdebug_below || quorum) && k.starts_with("file.");
                !(key_known(driver.as_deref().unwrap_or_default(), k.as_str()) || below)
            }),
        ) {
            return Err(fail(format!(
                "Block format '{d}' does not support the option '{k}'"
            )));
        }
        let mut filename = get("file.filename");
        let mut blkdebug = None;
        let mut quorum_name = None;
        match get("file.driver").as_deref() {
            None | Some("file") => {}
            Some("quorum") => {
                let q = quorum_node(items).map_err(fail)?;
                filename = q.children.first().cloned();
                quorum_name = Some(q);
            }
            Some("blkdebug") => {
                let (mut b, image) = BlkdebugOptions::from_flat(items, "file.").map_err(fail)?;
                b.name = arg.to_string();
                filename = Some(image);
                blkdebug = Some(b);
            }
            Some(d) => return Err(fail(format!("Unknown protocol driver '{d}'"))),
        }
        let Some(filename) = filename else {
            return Err(fail(if driver.is_some() {
                "A block device must be specified for \"file\"".into()
            } else {
                "Must specify either driver or file".into()
            }));
        };
        match get("data-file.driver").as_deref() {
            None | Some("file") => {}
            Some(d) => return Err(fail(format!("Unknown protocol driver '{d}'"))),
        }
        let key_secret = get("encrypt.key-secret").or_else(|| get("key-secret"));
        Ok(ImageSpec {
            arg: arg.to_string(),
            filename,
            format: driver,
            key_secret,
            encrypt_format: get("encrypt.format"),
            data_file: get("data-file.filename"),
            backing,
            backing_ref: get("backing"),
            blkdebug,
            protocol_error: None,
            quorum: quorum_name,
            raw_window: match (get("offset"), get("size")) {
                (None, None) => None,
                (o, s) => Some((o.map(Json::Str), s.map(Json::Str))),
            },
            direct: [get("cache.direct"), get("file.cache.direct")]
                .iter()
                .any(|v| v.as_deref() == Some("on")),
            null_co: None,
        })
    }

    /// `{"driver": "null-co", "size": N, "read-zeroes": B}` (QEMU aborts
    /// on a malformed value; we report it).
    fn null_co(arg: &str, items: &[(String, String)]) -> Result<Self, String> {
        let mut n = imgtool::format::null::NullOptions {
            size: imgtool::format::null::DEFAULT_SIZE,
            read_zeroes: false,
        };
        for (k, v) in items {
            match k.as_str() {
                "driver" | "latency-ns" => {}
                "size" => {
                    n.size = imgtool::size::parse_size(v).ok_or_else(|| {
                        "Parameter 'size' expects a non-negative number below 2^64".to_string()
                    })?
                }
                "read-zeroes" => {
                    n.read_zeroes = match v.as_str() {
                        "on" | "true" => true,
                        "off" | "false" => false,
                        _ => return Err("Parameter 'read-zeroes' expects 'on' or 'off'".into()),
                    }
                }
                _ => {
                    return Err(format!(
                        "Block protocol 'null-co' doesn't support the option '{k}'"
                    ))
                }
            }
        }
        Ok(ImageSpec {
            null_co: Some(n),
            format: Some("null-co".into()),
            ..Self::plain(arg, None)
        })
    }

    pub fn parse(arg: &str, image_opts: bool, format: Option<&str>) -> Result<Self, Fail> {
        if image_opts && format.is_some() {
            return Err(Fail::report(
                "--image-opts and --format are mutually exclusive",
            ));
        }
        if image_opts {
            Self::from_image_opts(arg)
        } else if let Some(text) = arg.strip_prefix("json:") {
            if format.is_some() {
                // QEMU merges -f into the tree as `driver`; a clash is refused.
                return Self::from_json(arg, text).map(|s| ImageSpec {
                    format: format.map(str::to_string).or(s.format),
                    ..s
                });
            }
            Self::from_json(arg, text)
        } else {
            Ok(Self::plain(arg, format))
        }
    }

    /// Open as qemu-img's `img_open` does, reporting failures as
    /// `Could not open 'ARG': ...`.
    pub fn open(&self, opts: &OpenOptions) -> Result<Image, Fail> {
        if let Some(node) = self.backing_ref.as_deref().filter(|b| !b.is_empty()) {
            // A node name: opened without its backing file (info), the
            // option is left over; otherwise the lookup of the node fails.
            let driver = self.format.as_deref().unwrap_or("raw");
            return Err(Fail::Report(format!(
                "Could not open '{}': {}",
                self.arg,
                if opts.no_backing || driver == "raw" {
                    format!("Block format '{driver}' does not support the option 'backing'")
                } else {
                    format!(
                        "Could not open backing file: Cannot find device='{node}' nor node-name='{node}'"
                    )
                }
            )));
        }
        self.check_name()?;
        if let Some(q) = &self.quorum {
            return self.open_quorum(q, opts);
        }
        let opts = OpenOptions {
            no_backing: opts.no_backing || self.backing_ref.is_some(),
            format: self.format.clone(),
            key_secret: self.key_secret.clone().or_else(|| opts.key_secret.clone()),
            encrypt_format: self.encrypt_format.clone(),
            data_file: self.data_file.clone(),
            backing_override: self
                .backing
                .as_ref()
                .filter(|b| !b.filename.is_empty())
                .map(|b| (absolute(&b.filename), b.format.clone()))
                .or_else(|| opts.backing_override.clone()),
            backing_key_secret: self.backing.as_ref().and_then(|b| b.key_secret.clone()),
            blkdebug: self.blkdebug.clone(),
            null_co: self.null_co,
            cache: if self.direct && !opts.cache.direct() {
                CacheMode::None
            } else {
                opts.cache
            },
            raw_offset: self.raw_option(0)?,
            raw_size: self.raw_option(1)?,
            ..opts.clone()
        };
        let img = Image::open(&self.filename, &opts).map_err(|e| {
            let inner_prefix = format!("Could not open '{}': ", self.filename);
            let msg = e.message();
            let inner = msg.strip_prefix(&inner_prefix).unwrap_or(msg);
            Fail::Report(format!("Could not open '{}': {inner}", self.arg))
        })?;
        if self.raw_window.is_some() && img.format() != "raw" {
            // A probed format other than raw has no such options.
            let k = if self.raw_option(0)?.is_some() {
                "offset"
            } else {
                "size"
            };
            return Err(Fail::Report(format!(
                "Could not open '{}': Block format '{}' does not support the option '{k}'",
                self.arg,
                img.format()
            )));
        }
        Ok(img)
    }

    /// raw's `offset` (0) or `size` (1) option as a number.
    fn raw_option(&self, which: usize) -> Result<Option<u64>, Fail> {
        let Some(w) = &self.raw_window else {
            return Ok(None);
        };
        let (key, v) = if which == 0 {
            ("offset", &w.0)
        } else {
            ("size", &w.1)
        };
        let v = match v {
            None => return Ok(None),
            Some(Json::Str(s)) => s.clone(),
            Some(j) => j.to_compact(),
        };
        let mut o = CreateOptions::default();
        o.set(key, &v);
        o.get_size(key)
            .map_err(|e| Fail::Report(format!("Could not open '{}': {}", self.arg, e.message())))
    }

    /// `driver=file,filename=NAME`: the host file itself as the image.
    fn file_node(
        arg: &str,
        items: &[(String, String)],
        get: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, Fail> {
        let fail = |m: String| Fail::Report(format!("Could not open '{arg}': {m}"));
        // file-posix's own options, besides the generic node ones.
        const FILE_KEYS: &[&str] = &[
            "filename",
            "aio",
            "aio-max-batch",
            "locking",
            "pr-manager",
            "drop-cache",
            "x-check-cache-dropped",
        ];
        if let Some((k, _)) = items.iter().find(|(k, _)| {
            let node = NODE_KEYS.contains(&k.as_str()) && !k.starts_with("file.");
            !(FILE_KEYS.contains(&k.as_str()) || node)
        }) {
            return Err(fail(format!(
                "Block protocol 'file' doesn't support the option '{k}'"
            )));
        }
        let Some(filename) = get("filename") else {
            return Err(fail("The 'file' block driver requires a file name".into()));
        };
        Ok(ImageSpec {
            direct: get("cache.direct").as_deref() == Some("on"),
            ..Self::plain_file(arg, &filename)
        })
    }

    /// A spec for the host file `filename` opened with `-f file`.
    fn plain_file(arg: &str, filename: &str) -> Self {
        ImageSpec {
            arg: arg.to_string(),
            filename: filename.to_string(),
            format: Some("file".into()),
            protocol_error: None,
            ..Self::plain("", None)
        }
    }

    /// Below a quorum node nothing can be found relative to the image: a
    /// VMDK descriptor's relative extents and a backing file fail to open.
    fn open_quorum(&self, q: &Quorum, opts: &OpenOptions) -> Result<Image, Fail> {
        let fail = |m: String| Fail::Report(format!("Could not open '{}': {m}", self.arg));
        if matches!(self.format.as_deref(), None | Some("vmdk"))
            && vmdk_descriptor_has_relative_extent(&self.filename)
        {
            return Err(fail(format!(
                "Cannot use relative paths with VMDK descriptor file '{}': {QUORUM_NO_DIR}",
                q.name
            )));
        }
        let plain = ImageSpec {
            quorum: None,
            ..self.clone()
        };
        let img = plain.open(&OpenOptions {
            no_backing: true,
            ..opts.clone()
        })?;
        if !opts.no_backing
            && imgtool::info::ImageInfo::of(&img)
                .backing_filename
                .is_some()
        {
            return Err(fail(QUORUM_NO_DIR.to_string()));
        }
        Ok(img)
    }

    /// A name that cannot be opened at all (an unknown protocol prefix, a
    /// `blkdebug:` name without an image): qemu-img's words for it.
    pub fn check_name(&self) -> Result<(), Fail> {
        if let Some(m) = &self.protocol_error {
            return Err(Fail::Report(format!("Could not open '{}': {m}", self.arg)));
        }
        if self.blkdebug.is_some() && self.filename.is_empty() {
            let both = self
                .arg
                .strip_prefix("blkdebug:")
                .is_some_and(|r| !r.contains(':'));
            return Err(Fail::Report(format!(
                "Could not open '{}': {}",
                self.arg,
                if both {
                    "blkdebug requires both config file and image path"
                } else {
                    "The 'file' block driver requires a file name"
                }
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_opts() {
        let s = ImageSpec::from_image_opts("driver=qcow2,file.filename=x.qcow2").unwrap();
        assert_eq!(s.filename, "x.qcow2");
        assert_eq!(s.format.as_deref(), Some("qcow2"));
        let s = ImageSpec::from_image_opts("file.filename=a,,b").unwrap();
        assert_eq!(s.filename, "a,b");
        assert_eq!(s.format, None);
        // Messages from qemu-img 10.0.2.
        assert_eq!(
            ImageSpec::from_image_opts("filename=r.raw"),
            Err(Fail::report(
                "Could not open 'filename=r.raw': Must specify either driver or file"
            ))
        );
        assert_eq!(
            ImageSpec::from_image_opts("base.qcow2"),
            Err(Fail::report(
                "Could not open 'base.qcow2': Cannot find device='base.qcow2' nor node-name='base.qcow2'"
            ))
        );
    }
}
