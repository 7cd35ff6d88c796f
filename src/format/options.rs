//! `-o key=value,...` creation options, parsed as QEMU's QemuOpts does.

use crate::error::{Error, Result};
use crate::size::parse_size;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptKind {
    Str,
    Bool,
    Size,
    Number,
}

impl OptKind {
    /// The type tag `-o help` prints.
    pub fn tag(self) -> &'static str {
        match self {
            OptKind::Str => "<str>",
            OptKind::Bool => "<bool (on/off)>",
            OptKind::Size => "<size>",
            OptKind::Number => "<num>",
        }
    }
}

/// One creation option a format accepts.
#[derive(Debug, Clone, Copy)]
pub struct OptDesc {
    pub name: &'static str,
    pub kind: OptKind,
    pub help: &'static str,
}

/// Parsed `-o` options, in the order given; later values win.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CreateOptions {
    items: Vec<(String, String)>,
}

impl CreateOptions {
    pub fn new() -> Self {
        Self::default()
    }

    /// Parse `a=b,c=d` (`,,` is a literal comma; a bare `key` means `key=on`).
    pub fn parse(s: &str) -> Result<Self> {
        let mut o = Self::new();
        o.merge_str(s)?;
        Ok(o)
    }

    pub fn merge_str(&mut self, s: &str) -> Result<()> {
        for part in split_escaped(s) {
            if part.is_empty() {
                continue;
            }
            match part.split_once('=') {
                Some((k, v)) => self.set(k, v),
                None => self.set(&part, "on"),
            }
        }
        Ok(())
    }

    pub fn set(&mut self, key: &str, val: &str) {
        self.items.retain(|(k, _)| k != key);
        self.items.push((key.to_string(), val.to_string()));
    }

    pub fn remove(&mut self, key: &str) -> Option<String> {
        let v = self.get(key).map(str::to_string);
        self.items.retain(|(k, _)| k != key);
        v
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.items
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn items(&self) -> &[(String, String)] {
        &self.items
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// True for `-o help` / `-o ?`.
    pub fn wants_help(&self) -> bool {
        self.items
            .iter()
            .any(|(k, v)| (k == "help" || k == "?") && v == "on")
    }

    /// Reject options the format does not know, with QEMU's message.
    pub fn validate(&self, known: &[OptDesc]) -> Result<()> {
        for (k, v) in &self.items {
            let Some(d) = known.iter().find(|d| d.name == k) else {
                return Err(Error::invalid(format!("Invalid parameter '{k}'")));
            };
            match d.kind {
                OptKind::Bool => {
                    parse_bool(k, v)?;
                }
                OptKind::Size => {
                    parse_opt_size(k, v)?;
                }
                OptKind::Number => {
                    parse_number(k, v)?;
                }
                OptKind::Str => {}
            }
        }
        Ok(())
    }

    pub fn get_bool(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            Some(v) => parse_bool(key, v),
            None => Ok(default),
        }
    }

    pub fn get_size(&self, key: &str) -> Result<Option<u64>> {
        self.get(key).map(|v| parse_opt_size(key, v)).transpose()
    }

    pub fn get_number(&self, key: &str) -> Result<Option<u64>> {
        self.get(key).map(|v| parse_number(key, v)).transpose()
    }
}

fn split_escaped(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ',' {
            if chars.peek() == Some(&',') {
                chars.next();
                cur.push(',');
            } else {
                out.push(std::mem::take(&mut cur));
            }
        } else {
            cur.push(c);
        }
    }
    out.push(cur);
    out
}

pub fn parse_bool(key: &str, v: &str) -> Result<bool> {
    match v {
        "on" | "yes" | "true" | "y" => Ok(true),
        "off" | "no" | "false" | "n" => Ok(false),
        _ => Err(Error::invalid(format!(
            "Parameter '{key}' expects 'on' or 'off'"
        ))),
    }
}

fn parse_opt_size(key: &str, v: &str) -> Result<u64> {
    parse_size(v).ok_or_else(|| {
        Error::invalid(format!(
            "Parameter '{key}' expects a non-negative number below 2^64\nOptional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\nand exabytes, respectively."
        ))
    })
}

fn parse_number(key: &str, v: &str) -> Result<u64> {
    match strtou64(v) {
        Ok(n) => Ok(n),
        Err(true) => Err(Error::invalid(format!(
            "Value '{v}' is too large for parameter '{key}'"
        ))),
        Err(false) => Err(Error::invalid(format!(
            "Parameter '{key}' expects a number"
        ))),
    }
}

/// C's strtoull with base 0 over the whole string, as QEMU's qemu_strtou64
/// reads numbers: leading blanks, a sign (a minus wraps around), `0x` hex or
/// `0` octal. `Err(true)` is out of range, `Err(false)` not a number.
fn strtou64(v: &str) -> std::result::Result<u64, bool> {
    let s = v.trim_start_matches([' ', '\t', '\n', '\r', '\x0b', '\x0c']);
    let (neg, s) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let (radix, digits) = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) if h.bytes().next().is_some_and(|c| c.is_ascii_hexdigit()) => (16, h),
        _ if s.starts_with('0') => (8, s),
        _ => (10, s),
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return Err(false);
    }
    let n = u64::from_str_radix(digits, radix).map_err(|_| true)?;
    Ok(if neg { n.wrapping_neg() } else { n })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_escape() {
        let o = CreateOptions::parse("cluster_size=4k,backing_file=a,,b,lazy_refcounts").unwrap();
        assert_eq!(o.get("backing_file"), Some("a,b"));
        assert_eq!(o.get_size("cluster_size").unwrap(), Some(4096));
        assert!(o.get_bool("lazy_refcounts", false).unwrap());
    }

    #[test]
    fn numbers_as_strtoull() {
        assert_eq!(strtou64("0x10"), Ok(16));
        assert_eq!(strtou64("010"), Ok(8));
        assert_eq!(strtou64(" -1"), Ok(u64::MAX));
        assert_eq!(strtou64("0x"), Err(false));
        assert_eq!(strtou64("08"), Err(false));
        assert_eq!(strtou64("99999999999999999999"), Err(true));
    }
}
