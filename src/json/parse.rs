//! Reading JSON the way QEMU's parser accepts it for `json:{...}` filenames:
//! standard JSON plus single-quoted strings. Input comes from users, so
//! nesting depth and sizes are bounded and every error is a value.

use super::Json;

/// Deeper nesting than any block-options tree needs; keeps recursion bounded.
const MAX_DEPTH: usize = 64;

/// Parse one JSON value filling the whole of `s` (surrounding blanks allowed).
pub fn parse(s: &str) -> Option<Json> {
    parse_detailed(s).ok()
}

/// As [`parse`], with QEMU's parse-error text (`JSON parse error, ...`).
pub fn parse_detailed(s: &str) -> Result<Json, String> {
    let mut p = Parser {
        b: s.as_bytes(),
        i: 0,
    };
    let v = p.value(0);
    let why = match v {
        Some(v) => {
            p.blanks();
            if p.i == p.b.len() {
                return Ok(v);
            }
            return Err("Expecting at most one JSON value".into());
        }
        None if p.i >= p.b.len() => "premature EOI",
        None => "expecting value",
    };
    Err(format!("JSON parse error, {why}"))
}

struct Parser<'a> {
    b: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn blanks(&mut self) {
        while self.b.get(self.i).is_some_and(|c| c.is_ascii_whitespace()) {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        self.blanks();
        if self.b.get(self.i) == Some(&c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn value(&mut self, depth: usize) -> Option<Json> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.blanks();
        match *self.b.get(self.i)? {
            b'{' => {
                self.i += 1;
                let mut m: Vec<(String, Json)> = Vec::new();
                if self.eat(b'}') {
                    return Some(Json::Object(m));
                }
                loop {
                    self.blanks();
                    let k = self.string()?;
                    if !self.eat(b':') {
                        return None;
                    }
                    let v = self.value(depth + 1)?;
                    // A repeated key: the last one wins, as in a QDict.
                    m.retain(|(old, _)| *old != k);
                    m.push((k, v));
                    if self.eat(b'}') {
                        return Some(Json::Object(m));
                    }
                    if !self.eat(b',') {
                        return None;
                    }
                }
            }
            b'[' => {
                self.i += 1;
                let mut a = Vec::new();
                if self.eat(b']') {
                    return Some(Json::Array(a));
                }
                loop {
                    a.push(self.value(depth + 1)?);
                    if self.eat(b']') {
                        return Some(Json::Array(a));
                    }
                    if !self.eat(b',') {
                        return None;
                    }
                }
            }
            b'"' | b'\'' => self.string().map(Json::Str),
            b't' => self.word("true", Json::Bool(true)),
            b'f' => self.word("false", Json::Bool(false)),
            b'n' => self.word("null", Json::Null),
            _ => self.number(),
        }
    }

    fn word(&mut self, w: &str, v: Json) -> Option<Json> {
        if self.b[self.i..].starts_with(w.as_bytes()) {
            self.i += w.len();
            Some(v)
        } else {
            None
        }
    }

    fn number(&mut self) -> Option<Json> {
        let start = self.i;
        while self
            .b
            .get(self.i)
            .is_some_and(|c| c.is_ascii_digit() || b"+-.eE".contains(c))
        {
            self.i += 1;
        }
        let t = std::str::from_utf8(&self.b[start..self.i]).ok()?;
        if t.is_empty() {
            return None;
        }
        if let Ok(i) = t.parse::<i64>() {
            return Some(Json::Int(i));
        }
        if let Ok(u) = t.parse::<u64>() {
            return Some(Json::UInt(u));
        }
        t.parse::<f64>().ok().map(Json::Float)
    }

    /// A string in either quote; the other quote needs no escape inside it.
    fn string(&mut self) -> Option<String> {
        let q = *self.b.get(self.i)?;
        if q != b'"' && q != b'\'' {
            return None;
        }
        self.i += 1;
        let mut out: Vec<u8> = Vec::new();
        loop {
            let c = *self.b.get(self.i)?;
            self.i += 1;
            if c == q {
                return String::from_utf8(out).ok();
            }
            if c != b'\\' {
                out.push(c);
                continue;
            }
            let e = *self.b.get(self.i)?;
            self.i += 1;
            let ch = match e {
                b'"' | b'\'' | b'\\' | b'/' => e as char,
                b'b' => '\u{8}',
                b'f' => '\u{c}',
                b'n' => '\n',
                b'r' => '\r',
                b't' => '\t',
                b'u' => {
                    let h = self.b.get(self.i..self.i + 4)?;
                    self.i += 4;
                    let n = u32::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok()?;
                    char::from_u32(n)?
                }
                _ => return None,
            };
            let mut buf = [0u8; 4];
            out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
        }
    }
}

/// Flatten nested objects into dotted keys (`{"file": {"filename": "a"}}`
/// becomes `file.filename=a`), as QEMU's qdict_flatten does for block options.
/// Scalars become their option-string form; arrays are indexed (`a.0`).
pub fn flatten(v: &Json) -> Vec<(String, String)> {
    let mut out = Vec::new();
    flatten_into(v, "", &mut out);
    out
}

fn flatten_into(v: &Json, prefix: &str, out: &mut Vec<(String, String)>) {
    let key = |k: &str| {
        if prefix.is_empty() {
            k.to_string()
        } else {
            format!("{prefix}.{k}")
        }
    };
    match v {
        Json::Object(m) => m.iter().for_each(|(k, v)| flatten_into(v, &key(k), out)),
        Json::Array(a) => a
            .iter()
            .enumerate()
            .for_each(|(i, v)| flatten_into(v, &key(&i.to_string()), out)),
        Json::Str(s) => out.push((prefix.to_string(), s.clone())),
        Json::Bool(b) => out.push((prefix.to_string(), if *b { "on" } else { "off" }.into())),
        Json::Int(i) => out.push((prefix.to_string(), i.to_string())),
        Json::UInt(u) => out.push((prefix.to_string(), u.to_string())),
        Json::Float(f) => out.push((prefix.to_string(), f.to_string())),
        Json::Null => out.push((prefix.to_string(), String::new())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_nesting_and_flattening() {
        let v = parse(r#" {'driver':'qcow2', "file": {"driver": "file", "filename": "a'b"}, "n": 5, "ro": true} "#)
            .unwrap();
        assert_eq!(
            flatten(&v),
            vec![
                ("driver".to_string(), "qcow2".to_string()),
                ("file.driver".into(), "file".into()),
                ("file.filename".into(), "a'b".into()),
                ("n".into(), "5".into()),
                ("ro".into(), "on".into()),
            ]
        );
        assert!(parse("{").is_none());
        assert!(parse("{} x").is_none());
        assert!(parse(&"[".repeat(1000)).is_none());
    }
}
