//! Reading JSON the way QEMU's parser accepts it for `json:{...}` filenames:
//! standard JSON plus single-quoted strings. Input comes from users, so
//! nesting depth and sizes are bounded and every error is a value.

use super::Json;

/// QEMU's limit on open brackets and braces (json-streamer's MAX_NESTING).
const MAX_NESTING: i64 = 1 << 10;

/// Parse one JSON value filling the whole of `s` (surrounding blanks allowed).
pub fn parse(s: &str) -> Option<Json> {
    parse_detailed(s).ok()
}

/// As [`parse`], with QEMU's error text: the input goes through the same
/// stages as in qobject_from_json (lexer, streamer, parser), so the first
/// error reported is the one qemu-img reports.
pub fn parse_detailed(s: &str) -> Result<Json, String> {
    let mut st = Streamer::default();
    let mut lx = Lexer::default();
    for &b in s.as_bytes() {
        lx.feed(b, false, &mut st);
    }
    lx.feed(0, true, &mut st);
    st.end_of_input();
    match (st.result, st.err) {
        (_, Some(e)) => Err(e),
        (Some(v), None) => Ok(v),
        (None, None) => Err("Expecting a JSON value".into()),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok {
    LCurly,
    RCurly,
    LSquare,
    RSquare,
    Colon,
    Comma,
    Integer,
    Float,
    Keyword,
    Str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum State {
    #[default]
    Start,
    Recovery,
    DqEscape,
    Dq,
    SqEscape,
    Sq,
    Zero,
    ExpDigits,
    ExpSign,
    ExpE,
    Mantissa,
    MantissaDigits,
    Digits,
    Sign,
    Keyword,
}

/// What one byte does in a state (json-lexer.c's table).
enum Step {
    /// Go to the state, consuming the byte.
    Go(State),
    /// Back to the start without consuming (lookahead): a resync point.
    Restart,
    /// A token ends; `true` if the byte is part of it.
    Emit(Tok, bool),
    /// A lexical error; the byte is part of the bad token.
    Error,
}

fn step(state: State, c: u8) -> Step {
    use State::*;
    use Step::*;
    let digit = c.is_ascii_digit();
    match state {
        Recovery => match c {
            b'\t' => Go(Recovery),
            0..=0x1f | 0xfe | 0xff | b'[' | b']' | b'{' | b'}' | b':' | b',' => Restart,
            _ => Go(Recovery),
        },
        DqEscape | SqEscape if (0x20..=0xfd).contains(&c) => {
            Go(if state == DqEscape { Dq } else { Sq })
        }
        Dq | Sq if c == b'\\' => Go(if state == Dq { DqEscape } else { SqEscape }),
        Dq if c == b'"' => Emit(Tok::Str, true),
        Sq if c == b'\'' => Emit(Tok::Str, true),
        Dq | Sq if (0x20..=0xfd).contains(&c) => Go(state),
        Zero if digit => Error,
        Zero if c == b'.' => Go(Mantissa),
        Zero => Emit(Tok::Integer, false),
        ExpDigits if digit => Go(ExpDigits),
        ExpDigits => Emit(Tok::Float, false),
        ExpSign if digit => Go(ExpDigits),
        ExpE if c == b'-' || c == b'+' => Go(ExpSign),
        ExpE if digit => Go(ExpDigits),
        MantissaDigits if digit => Go(MantissaDigits),
        MantissaDigits if c == b'e' || c == b'E' => Go(ExpE),
        MantissaDigits => Emit(Tok::Float, false),
        Mantissa if digit => Go(MantissaDigits),
        Digits if digit => Go(Digits),
        Digits if c == b'e' || c == b'E' => Go(ExpE),
        Digits if c == b'.' => Go(Mantissa),
        Digits => Emit(Tok::Integer, false),
        Sign if c == b'0' => Go(Zero),
        Sign if digit => Go(Digits),
        Keyword if c.is_ascii_lowercase() => Go(Keyword),
        Keyword => Emit(Tok::Keyword, false),
        Start => match c {
            b'"' => Go(Dq),
            b'\'' => Go(Sq),
            b'0' => Go(Zero),
            b'1'..=b'9' => Go(Digits),
            b'-' => Go(Sign),
            b'{' => Emit(Tok::LCurly, true),
            b'}' => Emit(Tok::RCurly, true),
            b'[' => Emit(Tok::LSquare, true),
            b']' => Emit(Tok::RSquare, true),
            b',' => Emit(Tok::Comma, true),
            b':' => Emit(Tok::Colon, true),
            b'a'..=b'z' => Go(Keyword),
            b' ' | b'\t' | b'\r' | b'\n' => Restart,
            _ => Error,
        },
        _ => Error,
    }
}

#[derive(Default)]
struct Lexer {
    state: State,
    token: Vec<u8>,
}

impl Lexer {
    /// json_lexer_feed_char; `flush` ends the input (the byte is ignored).
    fn feed(&mut self, c: u8, flush: bool, st: &mut Streamer) {
        loop {
            if flush && self.state == State::Start {
                return;
            }
            let (consumed, next) = match step(self.state, c) {
                Step::Go(s) => (true, s),
                Step::Restart => {
                    // Whitespace at the start is consumed; a resync is not.
                    let ws = self.state == State::Start;
                    self.token.clear();
                    (ws, State::Start)
                }
                Step::Emit(t, with) => {
                    if with && !flush {
                        self.token.push(c);
                    }
                    st.token(Some(t), &self.token);
                    self.token.clear();
                    self.state = State::Start;
                    if with || flush {
                        if flush {
                            continue;
                        }
                        return;
                    }
                    continue;
                }
                Step::Error => {
                    if !flush {
                        self.token.push(c);
                    }
                    st.token(None, &self.token);
                    self.token.clear();
                    self.state = State::Recovery;
                    if flush {
                        continue;
                    }
                    return;
                }
            };
            let consumed = consumed && !flush;
            if consumed && next != State::Start && next != State::Recovery {
                self.token.push(c);
            }
            if next == State::Recovery {
                self.token.clear();
            }
            self.state = next;
            if consumed {
                return;
            }
        }
    }
}

/// json-streamer: collects tokens until brackets balance, then parses;
/// qjson's consume_json keeps the first value or error.
#[derive(Default)]
struct Streamer {
    tokens: std::collections::VecDeque<(Tok, Vec<u8>)>,
    braces: i64,
    brackets: i64,
    result: Option<Json>,
    err: Option<String>,
}

impl Streamer {
    /// A token from the lexer; None is a lexical error.
    fn token(&mut self, t: Option<Tok>, text: &[u8]) {
        let Some(t) = t else {
            let m = format!(
                "JSON parse error, stray '{}'",
                String::from_utf8_lossy(text)
            );
            return self.emit(Err(m));
        };
        match t {
            Tok::LCurly => self.braces += 1,
            Tok::RCurly => self.braces -= 1,
            Tok::LSquare => self.brackets += 1,
            Tok::RSquare => self.brackets -= 1,
            _ => {}
        }
        if self.braces + self.brackets > MAX_NESTING {
            return self.emit(Err("JSON nesting depth limit exceeded".into()));
        }
        self.tokens.push_back((t, text.to_vec()));
        if (self.braces > 0 || self.brackets > 0) && self.braces >= 0 && self.brackets >= 0 {
            return;
        }
        let r = self.parse();
        self.emit(r);
    }

    fn end_of_input(&mut self) {
        if !self.tokens.is_empty() {
            let r = self.parse();
            self.emit(r);
        }
    }

    fn parse(&mut self) -> Result<Json, String> {
        let mut p = TokParser {
            toks: std::mem::take(&mut self.tokens),
            err: None,
        };
        match p.value() {
            Some(v) if p.err.is_none() => Ok(v),
            _ => Err(p
                .err
                .unwrap_or_else(|| "JSON parse error, expecting value".into())),
        }
    }

    fn emit(&mut self, r: Result<Json, String>) {
        self.braces = 0;
        self.brackets = 0;
        self.tokens.clear();
        if self.result.take().is_some() {
            self.err = Some("Expecting at most one JSON value".into());
        }
        if self.err.is_some() {
            return;
        }
        match r {
            Ok(v) => self.result = Some(v),
            Err(e) => self.err = Some(e),
        }
    }
}

/// json-parser.c over one balanced run of tokens; the first error wins.
struct TokParser {
    toks: std::collections::VecDeque<(Tok, Vec<u8>)>,
    err: Option<String>,
}

impl TokParser {
    fn error(&mut self, m: &str) {
        if self.err.is_none() {
            self.err = Some(format!("JSON parse error, {m}"));
        }
    }

    fn peek(&self) -> Option<Tok> {
        self.toks.front().map(|t| t.0)
    }

    fn value(&mut self) -> Option<Json> {
        let Some(t) = self.peek() else {
            self.error("premature EOI");
            return None;
        };
        match t {
            Tok::LCurly => self.object(),
            Tok::LSquare => self.array(),
            Tok::Integer | Tok::Float | Tok::Str => self.literal(),
            Tok::Keyword => {
                let (_, w) = self.toks.pop_front()?;
                match &w[..] {
                    b"true" => Some(Json::Bool(true)),
                    b"false" => Some(Json::Bool(false)),
                    b"null" => Some(Json::Null),
                    _ => {
                        let m = format!("invalid keyword '{}'", String::from_utf8_lossy(&w));
                        self.error(&m);
                        None
                    }
                }
            }
            _ => {
                self.error("expecting value");
                None
            }
        }
    }

    fn object(&mut self) -> Option<Json> {
        self.toks.pop_front();
        let mut m: Vec<(String, Json)> = Vec::new();
        match self.peek() {
            None => {
                self.error("premature EOI");
                return None;
            }
            Some(Tok::RCurly) => {
                self.toks.pop_front();
                return Some(Json::Object(m));
            }
            Some(_) => {}
        }
        loop {
            self.pair(&mut m)?;
            match self.toks.pop_front() {
                None => {
                    self.error("premature EOI");
                    return None;
                }
                Some((Tok::RCurly, _)) => return Some(Json::Object(m)),
                Some((Tok::Comma, _)) => {}
                Some(_) => {
                    self.error("expected separator in dict");
                    return None;
                }
            }
        }
    }

    fn pair(&mut self, m: &mut Vec<(String, Json)>) -> Option<()> {
        if self.peek().is_none() {
            self.error("premature EOI");
            return None;
        }
        let key = match self.value() {
            Some(Json::Str(k)) => k,
            _ => {
                self.error("key is not a string in object");
                return None;
            }
        };
        match self.toks.pop_front() {
            None => {
                self.error("premature EOI");
                return None;
            }
            Some((Tok::Colon, _)) => {}
            Some(_) => {
                self.error("missing : in object pair");
                return None;
            }
        }
        let Some(v) = self.value() else {
            self.error("Missing value in dict");
            return None;
        };
        if m.iter().any(|(k, _)| *k == key) {
            self.error("duplicate key");
            return None;
        }
        m.push((key, v));
        Some(())
    }

    fn array(&mut self) -> Option<Json> {
        self.toks.pop_front();
        let mut a = Vec::new();
        match self.peek() {
            None => {
                self.error("premature EOI");
                return None;
            }
            Some(Tok::RSquare) => {
                self.toks.pop_front();
                return Some(Json::Array(a));
            }
            Some(_) => {}
        }
        loop {
            let Some(v) = self.value() else {
                self.error("expecting value");
                return None;
            };
            a.push(v);
            match self.toks.pop_front() {
                None => {
                    self.error("premature EOI");
                    return None;
                }
                Some((Tok::RSquare, _)) => return Some(Json::Array(a)),
                Some((Tok::Comma, _)) => {}
                Some(_) => {
                    self.error("expected separator in list");
                    return None;
                }
            }
        }
    }

    fn literal(&mut self) -> Option<Json> {
        let (t, text) = self.toks.pop_front()?;
        let s = String::from_utf8_lossy(&text).into_owned();
        match t {
            Tok::Str => match parse_string(&text) {
                Ok(v) => Some(Json::Str(v)),
                Err(m) => {
                    self.error(&m);
                    None
                }
            },
            Tok::Integer => {
                if let Ok(i) = s.parse::<i64>() {
                    return Some(Json::Int(i));
                }
                if !s.starts_with('-') {
                    if let Ok(u) = s.parse::<u64>() {
                        return Some(Json::UInt(u));
                    }
                }
                Some(Json::Float(s.parse::<f64>().unwrap_or(f64::INFINITY)))
            }
            _ => Some(Json::Float(s.parse::<f64>().unwrap_or(0.0))),
        }
    }
}

/// util/unicode.c's is_valid_codepoint (no surrogates or noncharacters).
fn valid_codepoint(cp: i64) -> bool {
    (0..=0x10ffff).contains(&cp)
        && !((0xfdd0..=0xfdef).contains(&cp) || (cp & 0xfffe) == 0xfffe)
        && !(0xd800..=0xdfff).contains(&cp)
}

/// Four hex digits at `s` (fewer available counts as invalid), or -1.
fn hex4(s: &[u8]) -> i64 {
    let Some(h) = s.get(..4) else {
        return -1;
    };
    match std::str::from_utf8(h)
        .ok()
        .filter(|t| t.bytes().all(|c| c.is_ascii_hexdigit()))
    {
        Some(t) => i64::from_str_radix(t, 16).unwrap_or(-1),
        None => -1,
    }
}

/// A string token (with its quotes) to its value, in parse_string's words.
fn parse_string(tok: &[u8]) -> Result<String, String> {
    let q = tok.first().copied().unwrap_or(b'"');
    let mut out = String::new();
    let mut i = 1;
    while i < tok.len() && tok[i] != q {
        if tok[i] != b'\\' {
            // The token is valid UTF-8 up to here unless cut by the lexer.
            let rest = &tok[i..];
            let n = match rest[0] {
                0..=0x7f => 1,
                0xc0..=0xdf => 2,
                0xe0..=0xef => 3,
                _ => 4,
            };
            let ch = rest
                .get(..n)
                .and_then(|b| std::str::from_utf8(b).ok())
                .and_then(|t| t.chars().next())
                .filter(|c| valid_codepoint(*c as i64));
            let Some(ch) = ch else {
                return Err("invalid UTF-8 sequence in string".into());
            };
            out.push(ch);
            i += n;
            continue;
        }
        let beg = i;
        let e = tok.get(i + 1).copied().unwrap_or(0);
        i += 2;
        let ch = match e {
            b'"' => '"',
            b'\'' => '\'',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let mut cp = hex4(&tok[i.min(tok.len())..]);
                i += 4;
                if (0xd800..=0xdbff).contains(&cp)
                    && tok.get(i) == Some(&b'\\')
                    && tok.get(i + 1) == Some(&b'u')
                {
                    cp = 0x10000 + ((cp & 0x3ff) << 10);
                    let trailing = hex4(&tok[(i + 2).min(tok.len())..]);
                    if (0xdc00..=0xdfff).contains(&trailing) {
                        cp |= trailing & 0x3ff;
                        i += 6;
                    } else {
                        cp = -1;
                    }
                }
                match u32::try_from(cp)
                    .ok()
                    .filter(|_| valid_codepoint(cp))
                    .and_then(char::from_u32)
                {
                    Some(c) => c,
                    None => {
                        let end = i.min(tok.len());
                        return Err(format!(
                            "{} is not a valid Unicode character",
                            String::from_utf8_lossy(&tok[beg..end])
                        ));
                    }
                }
            }
            _ => return Err("invalid escape sequence in string".into()),
        };
        out.push(ch);
    }
    Ok(out)
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
