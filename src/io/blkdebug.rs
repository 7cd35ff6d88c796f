//! QEMU's blkdebug protocol driver: error injection between a format driver
//! and its file. Rules come from an INI config file (`blkdebug:CONF:FILE`)
//! and from `inject-error.N.*` / `set-state.N.*` options. A format driver
//! raises named events (`l1_update`, `read_aio`, ...) on its file; an event
//! matching an `inject-error` rule arms it, and the next matching request on
//! that file fails with the rule's errno, as in QEMU's block/blkdebug.c.

use parking_lot::Mutex;

use crate::error::{Error, Result};

/// QAPI's BlkdebugEvent names, in QEMU's order.
pub const EVENTS: &[&str] = &[
    "l1_update",
    "l1_grow_alloc_table",
    "l1_grow_write_table",
    "l1_grow_activate_table",
    "l2_load",
    "l2_update",
    "l2_update_compressed",
    "l2_alloc_cow_read",
    "l2_alloc_write",
    "read_aio",
    "read_backing_aio",
    "read_compressed",
    "write_aio",
    "write_compressed",
    "vmstate_load",
    "vmstate_save",
    "cow_read",
    "cow_write",
    "reftable_load",
    "reftable_grow",
    "reftable_update",
    "refblock_load",
    "refblock_update",
    "refblock_update_part",
    "refblock_alloc",
    "refblock_alloc_hookup",
    "refblock_alloc_write",
    "refblock_alloc_write_blocks",
    "refblock_alloc_write_table",
    "refblock_alloc_switch_table",
    "cluster_alloc",
    "cluster_alloc_bytes",
    "cluster_free",
    "flush_to_os",
    "flush_to_disk",
    "pwritev_rmw_head",
    "pwritev_rmw_after_head",
    "pwritev_rmw_tail",
    "pwritev_rmw_after_tail",
    "pwritev",
    "pwritev_zero",
    "pwritev_done",
    "empty_image_prepare",
    "l1_shrink_write_table",
    "l1_shrink_free_l2_clusters",
    "cor_write",
    "cluster_alloc_space",
    "none",
];

/// Kinds of request a rule can fail (QAPI BlkdebugIOType).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoType {
    Read = 0,
    Write = 1,
    WriteZeroes = 2,
    Discard = 3,
    Flush = 4,
    BlockStatus = 5,
}

const IOTYPES: &[&str] = &[
    "read",
    "write",
    "write-zeroes",
    "discard",
    "flush",
    "block-status",
];

/// Everything but block-status, QEMU's default mask.
const DEFAULT_MASK: u64 = 0b01_1111;

/// Options for a blkdebug node, as the user gave them; parsed (and
/// validated, with QEMU's messages) by [`Injector::new`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlkdebugOptions {
    /// The `config` file (None or empty: no file).
    pub config: Option<String>,
    /// `inject-error.*` and `set-state.*` keys with their values, in order.
    pub rules: Vec<(String, String)>,
    /// The `align` option (0: none).
    pub align: u64,
    /// The node's filename as QEMU shows it (`blkdebug:CONF:FILE`).
    pub name: String,
    /// blkdebug sits above a format node (`image.driver=qcow2`) instead of
    /// between a format and its file: the format's name. Requests are then
    /// checked at guest offsets.
    pub above: Option<String>,
}

impl BlkdebugOptions {
    /// blkdebug's own keys below `prefix` (`file.` for `file.driver=blkdebug`):
    /// its options and the filename of the image it sits on.
    pub fn from_flat(
        items: &[(String, String)],
        prefix: &str,
    ) -> std::result::Result<(BlkdebugOptions, String), String> {
        let get = |key: &str| {
            items
                .iter()
                .rev()
                .find(|(k, _)| k.strip_prefix(prefix) == Some(key))
                .map(|(_, v)| v.clone())
        };
        let mut b = BlkdebugOptions {
            config: get("config"),
            above: get("image.driver").filter(|d| d != "file"),
            ..Default::default()
        };
        for (k, v) in items {
            let Some(k) = k.strip_prefix(prefix) else {
                continue;
            };
            if b.above.is_some() && k.starts_with("image.") {
                // The format node's own options: its opener judges them.
                continue;
            }
            if k.starts_with("inject-error.") || k.starts_with("set-state.") {
                b.rules.push((k.to_string(), v.clone()));
            } else if !matches!(
                k,
                "driver"
                    | "config"
                    | "x-image"
                    | "image"
                    | "image.driver"
                    | "image.filename"
                    | "image.locking"
                    | "image.aio"
                    | "align"
                    | "max-transfer"
                    | "opt-write-zero"
                    | "max-write-zero"
                    | "opt-discard"
                    | "max-discard"
                    | "take-child-perms"
                    | "unshare-child-perms"
            ) && !k.starts_with("take-child-perms.")
                && !k.starts_with("unshare-child-perms.")
            {
                return Err(format!("Invalid parameter '{k}'"));
            }
        }
        if let Some(a) = get("align") {
            b.align = crate::size::parse_size(&a).ok_or_else(|| {
                "Parameter 'align' expects a non-negative number below 2^64".to_string()
            })?;
        }
        if b.above.is_some() {
            return match (
                get("image.file.driver").as_deref(),
                get("image.file.filename"),
            ) {
                (None | Some("file"), Some(f)) => Ok((b, f)),
                (None | Some("file"), None) => {
                    Err("A block device must be specified for \"file\"".into())
                }
                (Some(d), _) => Err(format!("Unknown protocol driver '{d}'")),
            };
        }
        let image = match (get("image.filename"), get("x-image"), get("image")) {
            (Some(f), _, _) => f,
            (None, Some(f), _) => f.strip_prefix("file:").unwrap_or(&f).to_string(),
            (None, None, Some(node)) => {
                return Err(format!(
                    "Cannot find device='{node}' nor node-name='{node}'"
                ))
            }
            (None, None, None) => {
                return Err("A block device must be specified for \"image\"".into())
            }
        };
        Ok((b, image))
    }
}

#[derive(Debug, Clone)]
enum Action {
    Inject {
        errno: i32,
        once: bool,
        offset: Option<u64>,
        mask: u64,
    },
    SetState(i64),
}

#[derive(Debug, Clone)]
struct Rule {
    event: usize,
    state: i64,
    action: Action,
    removed: bool,
}

#[derive(Debug)]
struct State {
    /// Newest rule first, as QEMU's QLIST_INSERT_HEAD keeps them.
    rules: Vec<Rule>,
    /// Indices of armed inject-error rules, most recently armed first.
    active: Vec<usize>,
    state: i64,
}

/// The armed state of one blkdebug node, shared by the threads using it.
#[derive(Debug)]
pub struct Injector {
    inner: Mutex<State>,
}

/// One `[group]` section of options, keys as given.
type Section = (String, Vec<(String, String)>);

const INJECT_KEYS: &[&str] = &[
    "event",
    "state",
    "iotype",
    "errno",
    "sector",
    "once",
    "immediately",
];
const SET_STATE_KEYS: &[&str] = &["event", "state", "new_state"];

/// Take up to `max` non-blank characters (sscanf's `%Ns`).
fn token(s: &str, max: usize) -> (&str, &str) {
    let s = s.trim_start_matches([' ', '\t', '\n', '\r', '\x0b', '\x0c']);
    let end = s
        .char_indices()
        .find(|(_, c)| c.is_ascii_whitespace())
        .map_or(s.len(), |(i, _)| i);
    let end = s.char_indices().nth(max).map_or(end, |(i, _)| i.min(end));
    (&s[..end], &s[end..])
}

/// `key = "value"` the way QEMU's config reader scans it: a key is any
/// run of non-blanks, and a line that has one but no well-formed value
/// still names that key with an empty value.
fn scan_assignment(line: &str) -> Option<(String, String)> {
    let (key, rest) = token(line, 63);
    if key.is_empty() {
        return None;
    }
    let value = rest
        .trim_start()
        .strip_prefix('=')
        .map(str::trim_start)
        .and_then(|r| r.strip_prefix('"'))
        .map(|r| {
            let v = &r[..r.find('"').unwrap_or(r.len())];
            // %1023[^"] stops at 1023 characters.
            v.char_indices()
                .nth(1023)
                .map_or(v, |(i, _)| &v[..i])
                .to_string()
        })
        .unwrap_or_default();
    Some((key.to_string(), value))
}

/// Read the INI config file into sections.
fn parse_config(text: &str) -> Result<Vec<Section>> {
    let mut out: Vec<Section> = Vec::new();
    let mut ids: Vec<(String, String)> = Vec::new();
    // fgets with a 1024-byte buffer: longer lines arrive in pieces.
    let mut lines = Vec::new();
    for l in text.split_inclusive('\n') {
        let mut l = l;
        while l.len() > 1023 {
            let mut cut = 1023;
            while !l.is_char_boundary(cut) {
                cut -= 1;
            }
            lines.push(&l[..cut]);
            l = &l[cut..];
        }
        lines.push(l);
    }
    for line in lines {
        // fgets hands C strings on: a NUL ends the line.
        let line = &line[..line.find('\0').unwrap_or(line.len())];
        if line.starts_with('\n') || line.starts_with('#') {
            continue;
        }
        if let Some(rest) = line.strip_prefix('[') {
            let name = &rest[..rest.find(']').unwrap_or(rest.len())];
            // `[group "id"]` or `[group]`; the id has no use here.
            let (g, after) = token(rest, 63);
            let id = after
                .trim_start()
                .strip_prefix('"')
                .and_then(|r| r.find('"').filter(|&n| n > 0).map(|n| &r[..n]));
            let group = if let Some(id) = id {
                // QemuOpts refuses a second section with the same id.
                if ids.iter().any(|(gg, ii)| gg == g && ii == id) {
                    return Err(Error::invalid(format!("Duplicate ID '{id}' for {g}")));
                }
                ids.push((g.to_string(), id.to_string()));
                Some(g)
            } else if !name.is_empty() {
                Some(&name[..name.char_indices().nth(63).map_or(name.len(), |(i, _)| i)])
            } else {
                None
            };
            if let Some(group) = group {
                out.push((group.to_string(), Vec::new()));
                continue;
            }
        }
        match scan_assignment(line) {
            Some(kv) => match out.last_mut() {
                Some((_, items)) => items.push(kv),
                None => return Err(Error::invalid("no group defined")),
            },
            None => return Err(Error::invalid("parse error")),
        }
    }
    Ok(out)
}

/// `inject-error.0.event` / `inject-error.event` keys into sections.
fn option_sections(items: &[(String, String)]) -> Result<Vec<Section>> {
    let mut out: Vec<Section> = Vec::new();
    for group in ["inject-error", "set-state"] {
        let prefix = format!("{group}.");
        let mut plain: Vec<(String, String)> = Vec::new();
        let mut numbered: Vec<(u64, Vec<(String, String)>)> = Vec::new();
        for (k, v) in items {
            let Some(rest) = k.strip_prefix(&prefix) else {
                continue;
            };
            match rest.split_once('.') {
                Some((n, key)) if n.parse::<u64>().is_ok() => {
                    let n = n.parse::<u64>().unwrap_or_default();
                    match numbered.iter_mut().find(|(i, _)| *i == n) {
                        Some((_, kv)) => kv.push((key.to_string(), v.clone())),
                        None => numbered.push((n, vec![(key.to_string(), v.clone())])),
                    }
                }
                _ => plain.push((rest.to_string(), v.clone())),
            }
        }
        if !plain.is_empty() && !numbered.is_empty() {
            return Err(Error::invalid(format!(
                "Unknown option '{}' for [{group}]",
                plain[0].0
            )));
        }
        if !plain.is_empty() {
            out.push((group.to_string(), plain));
        }
        numbered.sort_by_key(|(i, _)| *i);
        for (want, (i, kv)) in numbered.into_iter().enumerate() {
            if i != want as u64 {
                return Err(Error::invalid(format!(
                    "Unused option '{i}.{}' for [{group}]",
                    kv.first().map_or("", |(k, _)| k.as_str())
                )));
            }
            out.push((group.to_string(), kv));
        }
    }
    Ok(out)
}

/// QEMU's qemu_strtou64 with base 0 (decimal, 0x hex, 0 octal; a leading
/// '-' negates modulo 2^64).
fn parse_number(key: &str, v: &str) -> Result<u64> {
    let bad = || Error::invalid(format!("Parameter '{key}' expects a number"));
    let s = v.trim_start();
    let (neg, s) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let (radix, digits) = if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        (16, h)
    } else if s.len() > 1 && s.starts_with('0') {
        (8, &s[1..])
    } else {
        (10, s)
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return Err(bad());
    }
    let n = u64::from_str_radix(digits, radix)
        .map_err(|_| Error::invalid(format!("Value '{v}' is too large for parameter '{key}'")))?;
    Ok(if neg { n.wrapping_neg() } else { n })
}

fn parse_bool(key: &str, v: &str) -> Result<bool> {
    match v {
        "on" | "yes" | "true" | "y" => Ok(true),
        "off" | "no" | "false" | "n" => Ok(false),
        _ => Err(Error::invalid(format!(
            "Parameter '{key}' expects 'on' or 'off'"
        ))),
    }
}

/// Check a section's keys and value types, as QemuOpts does while reading.
fn validate(group: &str, items: &[(String, String)]) -> Result<()> {
    let keys = match group {
        "inject-error" => INJECT_KEYS,
        "set-state" => SET_STATE_KEYS,
        _ => {
            return Err(Error::invalid(format!(
                "There is no option group '{group}'"
            )))
        }
    };
    for (k, v) in items {
        if !keys.contains(&k.as_str()) {
            return Err(Error::invalid(format!("Invalid parameter '{k}'")));
        }
        match k.as_str() {
            "state" | "errno" | "sector" | "new_state" => {
                parse_number(k, v)?;
            }
            "once" | "immediately" => {
                parse_bool(k, v)?;
            }
            _ => {}
        }
    }
    Ok(())
}

fn make_rule(group: &str, items: &[(String, String)]) -> Result<Rule> {
    let get = |key: &str| items.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v);
    let num = |key: &str, def: u64| get(key).map_or(Ok(def), |v| parse_number(key, v));
    let Some(ev) = get("event") else {
        return Err(Error::invalid("Missing event name for rule"));
    };
    let event = EVENTS
        .iter()
        .position(|e| e == ev)
        .ok_or_else(|| Error::invalid(format!("invalid parameter value: {ev}")))?;
    let state = num("state", 0)? as i64;
    let action = if group == "inject-error" {
        let errno = num("errno", libc::EIO as u64)? as i32;
        let flag = |key: &str| get(key).map_or(Ok(false), |v| parse_bool(key, v));
        let once = flag("once")?;
        flag("immediately")?;
        let sector = num("sector", u64::MAX)?;
        let mask = match get("iotype") {
            None => DEFAULT_MASK,
            Some(t) => {
                let i = IOTYPES
                    .iter()
                    .position(|x| x == t)
                    .ok_or_else(|| Error::invalid(format!("invalid parameter value: {t}")))?;
                1 << i
            }
        };
        Action::Inject {
            errno,
            once,
            offset: (sector != u64::MAX).then(|| sector.wrapping_mul(512)),
            mask,
        }
    } else {
        Action::SetState(num("new_state", 0)? as i64)
    };
    Ok(Rule {
        event,
        state,
        action,
        removed: false,
    })
}

/// Biggest config file we read: real ones are a few lines.
const MAX_CONFIG: u64 = 16 << 20;

impl Injector {
    /// Build the rules of a blkdebug node, reporting bad options with
    /// QEMU's words. Rules named by event `none` are armed at once.
    pub fn new(opts: &BlkdebugOptions) -> Result<Injector> {
        let mut sections = Vec::new();
        if let Some(path) = opts.config.as_deref().filter(|p| !p.is_empty()) {
            let text = read_config(path)?;
            sections.extend(parse_config(&text)?);
        }
        sections.extend(option_sections(&opts.rules)?);
        for (g, items) in &sections {
            validate(g, items)?;
        }
        let mut rules = Vec::new();
        for group in ["inject-error", "set-state"] {
            for (g, items) in sections.iter().filter(|(g, _)| g == group) {
                rules.push(make_rule(g, items)?);
            }
        }
        if opts.align != 0 && (opts.align >= i32::MAX as u64 || !opts.align.is_power_of_two()) {
            return Err(Error::invalid(format!(
                "Cannot meet constraints with align {}",
                opts.align
            )));
        }
        rules.reverse();
        let inj = Injector {
            inner: Mutex::new(State {
                rules,
                active: Vec::new(),
                state: 1,
            }),
        };
        inj.event("none");
        Ok(inj)
    }

    /// A named event happened: arm matching inject-error rules (replacing
    /// the armed set) and apply state changes.
    pub fn event(&self, name: &str) {
        let Some(ev) = EVENTS.iter().position(|e| *e == name) else {
            return;
        };
        let mut s = self.inner.lock();
        let cur = s.state;
        let mut new_state = cur;
        let mut injected = 0;
        for i in 0..s.rules.len() {
            let r = &s.rules[i];
            if r.removed || r.event != ev || (r.state != 0 && r.state != cur) {
                continue;
            }
            match r.action {
                Action::Inject { .. } => {
                    if injected == 0 {
                        s.active.clear();
                    }
                    injected += 1;
                    s.active.insert(0, i);
                }
                Action::SetState(n) => new_state = n,
            }
        }
        s.state = new_state;
    }

    /// A request is about to reach the file: fail it if an armed rule says so.
    pub fn check(&self, io: IoType, off: u64, len: u64) -> Result<()> {
        let mut s = self.inner.lock();
        let hit = s.active.iter().position(|&i| match s.rules[i].action {
            Action::Inject { offset, mask, .. } => {
                let in_range = match offset {
                    None => true,
                    Some(o) => len != 0 && o >= off && o - off < len,
                };
                in_range && mask & (1 << io as u64) != 0
            }
            Action::SetState(_) => false,
        });
        let Some(pos) = hit else {
            return Ok(());
        };
        let ri = s.active[pos];
        let Action::Inject { errno, once, .. } = s.rules[ri].action else {
            return Ok(());
        };
        // QEMU returns -errno: zero or a negative errno reads as success.
        if errno <= 0 {
            return Ok(());
        }
        if once {
            s.active.remove(pos);
            s.rules[ri].removed = true;
        }
        Err(Error::from_errno(errno))
    }
}

fn read_config(path: &str) -> Result<String> {
    use std::io::Read;
    let fail = |what: &str, e: std::io::Error| {
        let err = Error::from(e);
        let m = format!("{what}: {}", err.message());
        err.with_message(m)
    };
    let f =
        std::fs::File::open(path).map_err(|e| fail("Could not read blkdebug config file", e))?;
    let mut buf = Vec::new();
    f.take(MAX_CONFIG)
        .read_to_end(&mut buf)
        .map_err(|e| fail("Cannot read config file", e))?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inj(conf: &[(&str, &str)]) -> Result<Injector> {
        Injector::new(&BlkdebugOptions {
            rules: conf
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        })
    }

    #[test]
    fn config_scan() {
        let s = parse_config("[inject-error]\nevent = \"read_aio\"\nonce =\"off\"\n").unwrap();
        assert_eq!(s[0].0, "inject-error");
        assert_eq!(s[0].1[1], ("once".into(), "off".into()));
        let s = parse_config("[set-state \"x\"]\nerrno=\"7\"\n").unwrap();
        assert_eq!(s[0].0, "set-state");
        assert_eq!(s[0].1[0], ("errno=\"7\"".into(), String::new()));
        assert!(parse_config("garbage\n").is_err());
        assert!(parse_config("[a]\n   \n").is_err());
    }

    #[test]
    fn arm_and_fire() {
        let i = inj(&[
            ("inject-error.0.event", "l1_update"),
            ("inject-error.0.once", "on"),
            ("inject-error.0.errno", "28"),
        ])
        .unwrap();
        assert!(i.check(IoType::Write, 0, 512).is_ok());
        i.event("l1_update");
        assert_eq!(
            i.check(IoType::Write, 0, 512).unwrap_err().errno(),
            Some(28)
        );
        assert!(i.check(IoType::Write, 0, 512).is_ok());
        let i = inj(&[
            ("inject-error.0.event", "none"),
            ("inject-error.0.iotype", "block-status"),
            ("inject-error.0.sector", "2"),
        ])
        .unwrap();
        assert!(i.check(IoType::Read, 1024, 512).is_ok());
        assert!(i.check(IoType::BlockStatus, 0, 1024).is_ok());
        assert!(i.check(IoType::BlockStatus, 512, 1024).is_err());
    }

    #[test]
    fn hostile_values() {
        assert!(inj(&[("inject-error.0.event", "bogus")]).is_err());
        assert!(inj(&[
            ("inject-error.0.event", "none"),
            ("inject-error.0.errno", "9".repeat(40).as_str())
        ])
        .is_err());
        let i = inj(&[
            ("inject-error.0.event", "none"),
            ("inject-error.0.errno", "-2147483648"),
            ("inject-error.0.sector", "18446744073709551614"),
        ])
        .unwrap();
        let _ = i.check(IoType::Read, u64::MAX - 10, 10);
        assert!(inj(&[("inject-error.5.event", "none")]).is_err());
    }
}
