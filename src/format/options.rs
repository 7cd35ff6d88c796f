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
    let parsed = if let Some(h) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        u64::from_str_radix(h, 16).ok()
    } else {
        v.parse::<u64>().ok()
    };
    parsed.ok_or_else(|| Error::invalid(format!("Parameter '{key}' expects a number")))
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
}
