//! A getopt_long work-alike with glibc's behaviour and messages, because
//! qemu-img's option errors are glibc's (`invalid option -- 'z'`,
//! `option '--o' is ambiguous; possibilities: ...`) and scripts match them.
//!
//! Options are yielded one at a time, in command-line order, so a command
//! can act on each option (and fail) exactly where qemu-img would; the
//! operands are collected in order (GNU permutation) and read at the end.

/// Whether a long option takes an argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HasArg {
    No,
    Required,
}

/// One entry of a `struct option` table. `val` is what the parser reports:
/// a short option letter (`'f' as i32`) or a command-specific code >= 256.
#[derive(Debug, Clone, Copy)]
pub struct LongOpt {
    pub name: &'static str,
    pub has_arg: HasArg,
    pub val: i32,
}

impl LongOpt {
    pub const fn new(name: &'static str, has_arg: HasArg, val: i32) -> Self {
        LongOpt { name, has_arg, val }
    }
}

/// A recognised option and its argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opt {
    pub val: i32,
    pub arg: Option<String>,
}

/// Scanning mode, from the first character of the short-option string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ordering {
    /// Default GNU behaviour: options may follow operands.
    Permute,
    /// `+` (or POSIXLY_CORRECT): stop at the first operand.
    RequireOrder,
}

pub struct Getopt<'a> {
    argv0: String,
    args: Vec<String>,
    shorts: &'a str,
    longs: &'a [LongOpt],
    ordering: Ordering,
    /// Next argument to look at.
    idx: usize,
    /// Position inside a cluster of short options (`-abc`), 0 when none.
    cluster: usize,
    operands: Vec<String>,
    done: bool,
}

impl<'a> Getopt<'a> {
    /// `argv0` is the name used in messages; `args` excludes it.
    pub fn new(argv0: &str, args: Vec<String>, shorts: &'a str, longs: &'a [LongOpt]) -> Self {
        let (ordering, shorts) = match shorts.strip_prefix('+') {
            Some(rest) => (Ordering::RequireOrder, rest),
            None if std::env::var_os("POSIXLY_CORRECT").is_some() => {
                (Ordering::RequireOrder, shorts)
            }
            None => (Ordering::Permute, shorts),
        };
        Getopt {
            argv0: argv0.to_string(),
            args,
            shorts,
            longs,
            ordering,
            idx: 0,
            cluster: 0,
            operands: Vec::new(),
            done: false,
        }
    }

    /// Operands (non-option arguments) in order; call after the iterator
    /// has returned None.
    pub fn operands(self) -> Vec<String> {
        self.operands
    }

    fn finish(&mut self) {
        self.done = true;
        let rest = self.args.split_off(self.idx.min(self.args.len()));
        self.operands.extend(rest);
    }

    fn next_opt(&mut self) -> Option<Result<Opt, String>> {
        if self.done {
            return None;
        }
        if self.cluster > 0 {
            return Some(self.short_opt());
        }
        loop {
            let Some(arg) = self.args.get(self.idx) else {
                self.done = true;
                return None;
            };
            if arg == "--" {
                self.idx += 1;
                self.finish();
                return None;
            }
            if arg.len() > 2 && arg.starts_with("--") {
                return Some(self.long_opt());
            }
            if arg.len() > 1 && arg.starts_with('-') {
                self.cluster = 1;
                return Some(self.short_opt());
            }
            match self.ordering {
                Ordering::RequireOrder => {
                    self.finish();
                    return None;
                }
                Ordering::Permute => {
                    self.operands.push(arg.clone());
                    self.idx += 1;
                }
            }
        }
    }

    fn short_opt(&mut self) -> Result<Opt, String> {
        // Invariant: 0 < cluster < arg.len() while inside a cluster.
        let arg = self.args[self.idx].clone();
        let c = arg[self.cluster..].chars().next().unwrap_or('?');
        self.cluster += c.len_utf8();
        let at_end = self.cluster >= arg.len();
        let spec = self.short_spec(c);
        let Some(takes_arg) = spec else {
            if at_end {
                self.cluster = 0;
                self.idx += 1;
            }
            return Err(format!("{}: invalid option -- '{c}'", self.argv0));
        };
        if !takes_arg {
            if at_end {
                self.cluster = 0;
                self.idx += 1;
            }
            return Ok(Opt {
                val: c as i32,
                arg: None,
            });
        }
        let rest = arg[self.cluster..].to_string();
        self.cluster = 0;
        self.idx += 1;
        if !rest.is_empty() {
            return Ok(Opt {
                val: c as i32,
                arg: Some(rest),
            });
        }
        match self.args.get(self.idx).cloned() {
            Some(v) => {
                self.idx += 1;
                Ok(Opt {
                    val: c as i32,
                    arg: Some(v),
                })
            }
            None => Err(format!(
                "{}: option requires an argument -- '{c}'",
                self.argv0
            )),
        }
    }

    /// None: not an option; Some(true): takes an argument.
    fn short_spec(&self, c: char) -> Option<bool> {
        if c == ':' || c == ';' {
            return None;
        }
        let pos = self.shorts.find(c)?;
        Some(self.shorts[pos + c.len_utf8()..].starts_with(':'))
    }

    fn long_opt(&mut self) -> Result<Opt, String> {
        let text = self.args[self.idx][2..].to_string();
        self.idx += 1;
        let (name, value) = match text.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (text.as_str(), None),
        };
        let found = self.match_long(name, &text)?;
        match (found.has_arg, value) {
            (HasArg::No, Some(_)) => Err(format!(
                "{}: option '--{}' doesn't allow an argument",
                self.argv0, found.name
            )),
            (HasArg::No, None) => Ok(Opt {
                val: found.val,
                arg: None,
            }),
            (HasArg::Required, Some(v)) => Ok(Opt {
                val: found.val,
                arg: Some(v),
            }),
            (HasArg::Required, None) => match self.args.get(self.idx).cloned() {
                Some(v) => {
                    self.idx += 1;
                    Ok(Opt {
                        val: found.val,
                        arg: Some(v),
                    })
                }
                None => Err(format!(
                    "{}: option '--{}' requires an argument",
                    self.argv0, found.name
                )),
            },
        }
    }

    /// glibc's matching: an exact name wins; otherwise a unique prefix, or
    /// several prefixes that all mean the same thing.
    fn match_long(&self, name: &str, text: &str) -> Result<LongOpt, String> {
        if let Some(o) = self.longs.iter().find(|o| o.name == name) {
            return Ok(*o);
        }
        let matches: Vec<&LongOpt> = self
            .longs
            .iter()
            .filter(|o| o.name.starts_with(name))
            .collect();
        let Some(first) = matches.first() else {
            return Err(format!("{}: unrecognized option '--{text}'", self.argv0));
        };
        let differs = |o: &&&LongOpt| o.has_arg != first.has_arg || o.val != first.val;
        if !matches.iter().skip(1).any(|o| differs(&o)) {
            return Ok(**first);
        }
        let mut msg = format!(
            "{}: option '--{text}' is ambiguous; possibilities:",
            self.argv0
        );
        let listed = std::iter::once(*first).chain(matches.iter().skip(1).filter(differs).copied());
        for o in listed {
            msg.push_str(&format!(" '--{}'", o.name));
        }
        Err(msg)
    }
}

impl Iterator for Getopt<'_> {
    /// `Err` holds glibc's complete message (prefixed with argv0).
    type Item = Result<Opt, String>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_opt()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONGS: &[LongOpt] = &[
        LongOpt::new("help", HasArg::No, 'h' as i32),
        LongOpt::new("format", HasArg::Required, 'f' as i32),
        LongOpt::new("output", HasArg::Required, 256),
        LongOpt::new("backing-chain", HasArg::No, 'b' as i32),
        LongOpt::new("object", HasArg::Required, 258),
        LongOpt::new("image-opts", HasArg::No, 259),
        LongOpt::new("force-share", HasArg::No, 'U' as i32),
    ];

    fn run(args: &[&str]) -> (Vec<Result<Opt, String>>, Vec<String>) {
        let mut g = Getopt::new(
            "qemu-img info",
            args.iter().map(|s| s.to_string()).collect(),
            "f:hbU",
            LONGS,
        );
        let opts: Vec<_> = g.by_ref().collect();
        (opts, g.operands())
    }

    fn opt(c: char, arg: Option<&str>) -> Result<Opt, String> {
        Ok(Opt {
            val: c as i32,
            arg: arg.map(str::to_string),
        })
    }

    #[test]
    fn permutes_and_clusters() {
        let (o, rest) = run(&["a", "-Ufqcow2", "b", "-f", "raw", "--", "-c"]);
        assert_eq!(
            o,
            vec![
                opt('U', None),
                opt('f', Some("qcow2")),
                opt('f', Some("raw"))
            ]
        );
        assert_eq!(rest, vec!["a", "b", "-c"]);
    }

    #[test]
    fn long_forms() {
        let (o, _) = run(&["--format=raw", "--format", "qcow2", "--out=json", "--back"]);
        assert_eq!(o[0], opt('f', Some("raw")));
        assert_eq!(o[1], opt('f', Some("qcow2")));
        assert_eq!(
            o[2],
            Ok(Opt {
                val: 256,
                arg: Some("json".into())
            })
        );
        assert_eq!(o[3], opt('b', None));
    }

    // Messages captured from qemu-img 10.0.2 (glibc 2.36).
    #[test]
    fn glibc_messages() {
        let (o, _) = run(&["-z"]);
        assert_eq!(o[0], Err("qemu-img info: invalid option -- 'z'".into()));
        let (o, _) = run(&["--zz"]);
        assert_eq!(
            o[0],
            Err("qemu-img info: unrecognized option '--zz'".into())
        );
        let (o, _) = run(&["--o=json"]);
        assert_eq!(
            o[0],
            Err("qemu-img info: option '--o=json' is ambiguous; possibilities: '--output' '--object'".into())
        );
        let (o, _) = run(&["--f"]);
        assert_eq!(
            o[0],
            Err("qemu-img info: option '--f' is ambiguous; possibilities: '--format' '--force-share'".into())
        );
        let (o, _) = run(&["--help=x"]);
        assert_eq!(
            o[0],
            Err("qemu-img info: option '--help' doesn't allow an argument".into())
        );
        let (o, _) = run(&["--form"]);
        assert_eq!(
            o[0],
            Err("qemu-img info: option '--format' requires an argument".into())
        );
        let (o, _) = run(&["-f"]);
        assert_eq!(
            o[0],
            Err("qemu-img info: option requires an argument -- 'f'".into())
        );
    }

    #[test]
    fn require_order_stops_at_operand() {
        let mut g = Getopt::new(
            "qemu-img",
            vec!["-h".into(), "info".into(), "-f".into()],
            "+hVT:",
            &[],
        );
        assert_eq!(g.next(), Some(opt('h', None)));
        assert_eq!(g.next(), None);
        assert_eq!(g.operands(), vec!["info", "-f"]);
    }

    #[test]
    fn lone_dash_is_operand() {
        let (o, rest) = run(&["-", "-b"]);
        assert_eq!(o, vec![opt('b', None)]);
        assert_eq!(rest, vec!["-"]);
    }
}
