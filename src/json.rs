//! A small ordered JSON value and a printer that writes exactly what QEMU's
//! QObject pretty printer writes (4-space indent, `[` / `]` on their own lines
//! even when empty), so `--output=json` is byte-identical to qemu-img's.

pub mod parse;

#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

impl Json {
    pub fn object() -> Self {
        Json::Object(Vec::new())
    }
    /// Append a key (objects keep insertion order, as QEMU's output does).
    pub fn set(&mut self, key: &str, v: impl Into<Json>) -> &mut Self {
        if let Json::Object(m) = self {
            m.push((key.to_string(), v.into()));
        }
        self
    }
    pub fn with(mut self, key: &str, v: impl Into<Json>) -> Self {
        self.set(key, v);
        self
    }
    pub fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Object(m) => m.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// QEMU's pretty form (qobject_to_json_pretty).
    pub fn to_pretty(&self) -> String {
        let mut s = String::new();
        self.write(&mut s, 0, true);
        s
    }
    /// Compact form, as QEMU writes it on one line (`{"a": 1, "b": 2}`).
    pub fn to_compact(&self) -> String {
        let mut s = String::new();
        self.write(&mut s, 0, false);
        s
    }

    fn write(&self, out: &mut String, level: usize, pretty: bool) {
        let nl = |out: &mut String, lvl: usize| {
            if pretty {
                out.push('\n');
                for _ in 0..lvl {
                    out.push_str("    ");
                }
            }
        };
        match self {
            Json::Null => out.push_str("null"),
            Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Json::Int(i) => out.push_str(&i.to_string()),
            Json::UInt(u) => out.push_str(&u.to_string()),
            Json::Float(f) => out.push_str(&format_float(*f)),
            Json::Str(s) => write_str(out, s),
            Json::Array(a) => {
                out.push('[');
                for (i, v) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                        if !pretty {
                            out.push(' ');
                        }
                    }
                    nl(out, level + 1);
                    v.write(out, level + 1, pretty);
                }
                nl(out, level);
                out.push(']');
            }
            Json::Object(m) => {
                out.push('{');
                for (i, (k, v)) in qdict_order(m).into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                        if !pretty {
                            out.push(' ');
                        }
                    }
                    nl(out, level + 1);
                    write_str(out, k);
                    out.push_str(": ");
                    v.write(out, level + 1, pretty);
                }
                nl(out, level);
                out.push('}');
            }
        }
    }
}

/// QEMU keeps objects in a QDict: a 512-bucket hash table (tdb hash) whose
/// buckets are walked in order, newest insertion first within a bucket. We
/// build objects in QAPI field order and print them in that walk's order.
fn qdict_order(m: &[(String, Json)]) -> Vec<&(String, Json)> {
    let mut idx: Vec<(u32, usize)> = m
        .iter()
        .enumerate()
        .map(|(i, (k, _))| (qdict_bucket(k), i))
        .collect();
    idx.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
    idx.into_iter().map(|(_, i)| &m[i]).collect()
}

/// The tdb hash QEMU's QDict uses, reduced to its bucket number.
pub fn qdict_bucket(key: &str) -> u32 {
    let bytes = key.as_bytes();
    let mut value: u32 = 0x238F_13AFu32.wrapping_mul(bytes.len() as u32);
    for (i, &c) in bytes.iter().enumerate() {
        value = value.wrapping_add((c as u32) << ((i * 5) % 24));
    }
    1_103_515_243u32.wrapping_mul(value).wrapping_add(12345) % 512
}

fn format_float(f: f64) -> String {
    // QEMU prints doubles with %.17g; Rust's shortest round-trip form is the
    // same value and reads back identically.
    if f.fract() == 0.0 && f.abs() < 1e15 {
        format!("{f:.0}")
    } else {
        format!("{f}")
    }
}

fn write_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\u{:04X}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

impl From<bool> for Json {
    fn from(b: bool) -> Self {
        Json::Bool(b)
    }
}
impl From<u64> for Json {
    fn from(v: u64) -> Self {
        Json::UInt(v)
    }
}
impl From<i64> for Json {
    fn from(v: i64) -> Self {
        Json::Int(v)
    }
}
impl From<u32> for Json {
    fn from(v: u32) -> Self {
        Json::UInt(v as u64)
    }
}
impl From<i32> for Json {
    fn from(v: i32) -> Self {
        Json::Int(v as i64)
    }
}
impl From<f64> for Json {
    fn from(v: f64) -> Self {
        Json::Float(v)
    }
}
impl From<&str> for Json {
    fn from(v: &str) -> Self {
        Json::Str(v.to_string())
    }
}
impl From<String> for Json {
    fn from(v: String) -> Self {
        Json::Str(v)
    }
}
impl From<Vec<Json>> for Json {
    fn from(v: Vec<Json>) -> Self {
        Json::Array(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_order_is_qdict_walk() {
        // ImageInfo fields in QAPI order; qemu-img prints them in this order.
        let mut j = Json::object();
        for k in [
            "filename",
            "format",
            "dirty-flag",
            "actual-size",
            "virtual-size",
            "cluster-size",
            "backing-filename",
            "full-backing-filename",
            "backing-filename-format",
            "format-specific",
            "children",
        ] {
            j.set(k, 0u64);
        }
        let keys: Vec<&str> = qdict_order(match &j {
            Json::Object(m) => m,
            _ => unreachable!(),
        })
        .iter()
        .map(|(k, _)| k.as_str())
        .collect();
        assert_eq!(
            keys,
            [
                "children",
                "backing-filename-format",
                "virtual-size",
                "filename",
                "cluster-size",
                "format",
                "actual-size",
                "format-specific",
                "full-backing-filename",
                "backing-filename",
                "dirty-flag"
            ]
        );
    }

    #[test]
    fn pretty_matches_qemu_shape() {
        let j = Json::object()
            .with("children", Json::Array(vec![]))
            .with("data", Json::object());
        assert_eq!(
            j.to_pretty(),
            "{\n    \"children\": [\n    ],\n    \"data\": {\n    }\n}"
        );
        assert_eq!(Json::from("a\"b").to_pretty(), "\"a\\\"b\"");
    }
}
