//! The VMDK text descriptor: `createType`, `CID`/`parentCID`,
//! `parentFileNameHint` and the extent lines, parsed the way QEMU reads
//! them (substring search and scanf-style fields), and written in
//! qemu-img's template.

/// Value of `name="value"` (QEMU's vmdk_parse_description: the first
/// occurrence of `name`, two characters skipped, up to the next quote).
pub fn quoted_value(desc: &str, name: &str) -> Option<String> {
    let pos = desc.find(name)? + name.len() + 2;
    let rest = desc.get(pos..)?;
    if rest.is_empty() {
        return None;
    }
    let end = rest.find('"')?;
    Some(rest[..end].to_string())
}

/// `CID` (first occurrence of "CID") or `parentCID`, as hexadecimal after
/// one separator character; scanf's `%x` skips blanks and takes an
/// optional 0x prefix.
pub fn read_cid(desc: &str, parent: bool) -> Option<u32> {
    let key = if parent { "parentCID" } else { "CID" };
    let pos = desc.find(key)? + key.len() + 1;
    let s = desc
        .get(pos..)?
        .trim_start_matches([' ', '\t', '\n', '\r', '\x0b', '\x0c']);
    let s = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .filter(|r| r.starts_with(|c: char| c.is_ascii_hexdigit()))
        .unwrap_or(s);
    let digits: String = s.chars().take_while(|c| c.is_ascii_hexdigit()).collect();
    if digits.is_empty() {
        return None;
    }
    // scanf converts with strtoul and stores the low 32 bits.
    let v = u64::from_str_radix(&digits, 16).unwrap_or(u64::MAX);
    Some(v as u32)
}

/// The `parentFileNameHint` value: Ok(None) when absent, Err when it is
/// unterminated or too long (QEMU's limit is its 4 KiB filename buffer).
pub fn parent_hint(desc: &str) -> Result<Option<String>, ()> {
    let Some(pos) = desc.find("parentFileNameHint") else {
        return Ok(None);
    };
    let start = pos + "parentFileNameHint".len() + 2;
    let rest = desc.get(start..).ok_or(())?;
    let end = rest.find('"').ok_or(())?;
    if end > 4095 {
        return Err(());
    }
    Ok(Some(rest[..end].to_string()))
}

/// One extent line of a descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtentLine {
    pub sectors: i64,
    pub kind: String,
    pub file: String,
    pub flat_offset: i64,
}

/// What one line holds: nothing of interest, an extent, or an invalid
/// extent line (QEMU then refuses the image).
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    Skip,
    Extent(ExtentLine),
    Invalid(String),
}

fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

/// A tiny scanf: fields are read from `s` at `*i`.
struct Scan<'a> {
    s: &'a [u8],
    i: usize,
}

impl Scan<'_> {
    fn skip_space(&mut self) {
        while self.i < self.s.len() && is_space(self.s[self.i]) {
            self.i += 1;
        }
    }
    /// `%Ns`
    fn word(&mut self, max: usize) -> Option<String> {
        self.skip_space();
        let st = self.i;
        while self.i < self.s.len() && !is_space(self.s[self.i]) && self.i - st < max {
            self.i += 1;
        }
        if self.i == st {
            return None;
        }
        Some(String::from_utf8_lossy(&self.s[st..self.i]).into_owned())
    }
    /// `%ld` (saturating like strtol).
    fn int(&mut self) -> Option<i64> {
        self.skip_space();
        let st = self.i;
        let mut neg = false;
        if self.i < self.s.len() && (self.s[self.i] == b'-' || self.s[self.i] == b'+') {
            neg = self.s[self.i] == b'-';
            self.i += 1;
        }
        let ds = self.i;
        let mut v: i64 = 0;
        while self.i < self.s.len() && self.s[self.i].is_ascii_digit() {
            let d = (self.s[self.i] - b'0') as i64;
            v = v.saturating_mul(10).saturating_add(d);
            self.i += 1;
        }
        if self.i == ds {
            self.i = st;
            return None;
        }
        Some(if neg { -v } else { v })
    }
    /// A literal character after optional blanks (` \"`).
    fn lit_after_space(&mut self, c: u8) -> bool {
        self.skip_space();
        self.lit(c)
    }
    fn lit(&mut self, c: u8) -> bool {
        if self.i < self.s.len() && self.s[self.i] == c {
            self.i += 1;
            true
        } else {
            false
        }
    }
    /// `%511[^\n\r"]`
    fn name(&mut self) -> Option<String> {
        let st = self.i;
        while self.i < self.s.len()
            && !matches!(self.s[self.i], b'\n' | b'\r' | b'"')
            && self.i - st < 511
        {
            self.i += 1;
        }
        if self.i == st {
            return None;
        }
        Some(String::from_utf8_lossy(&self.s[st..self.i]).into_owned())
    }
}

/// Parse one line (`line` is the rest of the descriptor from the line's
/// start: scanf may read past the newline, as QEMU's does).
pub fn parse_line(rest: &str) -> Line {
    let mut sc = Scan {
        s: rest.as_bytes(),
        i: 0,
    };
    let mut matches = 0;
    let mut access = String::new();
    let mut sectors = 0i64;
    let mut kind = String::new();
    let mut file = String::new();
    let mut flat_offset = -1i64;
    'scan: {
        let Some(a) = sc.word(10) else { break 'scan };
        access = a;
        matches += 1;
        let Some(n) = sc.int() else { break 'scan };
        sectors = n;
        matches += 1;
        let Some(t) = sc.word(10) else { break 'scan };
        kind = t;
        matches += 1;
        if !sc.lit_after_space(b'"') {
            break 'scan;
        }
        let Some(f) = sc.name() else { break 'scan };
        file = f;
        matches += 1;
        if !sc.lit(b'"') {
            break 'scan;
        }
        if let Some(o) = sc.int() {
            flat_offset = o;
            matches += 1;
        }
    }
    if matches < 4 || access != "RW" {
        return Line::Skip;
    }
    let invalid = || {
        let line = rest.split('\n').next().unwrap_or("");
        Line::Invalid(line.to_string())
    };
    match kind.as_str() {
        "FLAT" if matches != 5 || flat_offset < 0 => return invalid(),
        "FLAT" => {}
        "VMFS" if matches == 4 => flat_offset = 0,
        "VMFS" => return invalid(),
        _ if matches != 4 => return invalid(),
        _ => {}
    }
    if sectors <= 0
        || !matches!(
            kind.as_str(),
            "FLAT" | "SPARSE" | "VMFS" | "VMFSSPARSE" | "SESPARSE"
        )
    {
        return Line::Skip;
    }
    Line::Extent(ExtentLine {
        sectors,
        kind,
        file,
        flat_offset,
    })
}

/// Every line of a descriptor in order.
pub fn lines(desc: &str) -> Vec<Line> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < desc.len() {
        out.push(parse_line(&desc[start..]));
        match desc[start..].find('\n') {
            Some(n) => start += n + 1,
            None => break,
        }
    }
    out
}

/// The descriptor with its CID replaced as QEMU's vmdk_write_cid does:
/// everything from the first "CID" value up to "parentCID" becomes the
/// new hexadecimal value and a newline. None when there is no parentCID.
pub fn with_new_cid(desc: &str, cid: u32) -> Option<String> {
    let parent = desc.find("parentCID")?;
    let tail = &desc[parent..];
    let pos = desc.find("CID")? + 4;
    let head = desc.get(..pos)?;
    let mut s = String::with_capacity(desc.len() + 8);
    s.push_str(head);
    s.push_str(&format!("{cid:x}\n"));
    s.push_str(tail);
    Some(s)
}

/// What a new descriptor says.
pub struct NewDesc<'a> {
    pub cid: u32,
    pub parent_cid: u32,
    pub create_type: &'a str,
    pub parent_hint: Option<&'a str>,
    pub extents: &'a str,
    pub hw_version: &'a str,
    pub cylinders: u64,
    pub heads: u32,
    pub adapter: &'a str,
    pub tools_version: &'a str,
}

/// qemu-img's descriptor template.
pub fn render(d: &NewDesc<'_>) -> String {
    let parent = d
        .parent_hint
        .map(|p| format!("parentFileNameHint=\"{p}\""))
        .unwrap_or_default();
    format!(
        "# Disk DescriptorFile\nversion=1\nCID={:x}\nparentCID={:x}\ncreateType=\"{}\"\n{}\n# Extent description\n{}\n# The Disk Data Base\n#DDB\n\nddb.virtualHWVersion = \"{}\"\nddb.geometry.cylinders = \"{}\"\nddb.geometry.heads = \"{}\"\nddb.geometry.sectors = \"63\"\nddb.adapterType = \"{}\"\nddb.toolsVersion = \"{}\"\n",
        d.cid,
        d.parent_cid,
        d.create_type,
        parent,
        d.extents,
        d.hw_version,
        d.cylinders,
        d.heads,
        d.adapter,
        d.tools_version
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "# Disk DescriptorFile\nversion=1\nCID=1d967d7\nparentCID=ffffffff\ncreateType=\"twoGbMaxExtentFlat\"\nparentFileNameHint=\"base.vmdk\"\n# Extent description\nRW 4194304 FLAT \"y-f001.vmdk\" 0\nRW 2097152 SPARSE \"y-s002.vmdk\"\nRDONLY 100 FLAT \"ro.vmdk\" 0\nRW 10 FLAT \"bad.vmdk\"\n";

    #[test]
    fn fields() {
        assert_eq!(
            quoted_value(D, "createType").as_deref(),
            Some("twoGbMaxExtentFlat")
        );
        assert_eq!(read_cid(D, false), Some(0x1d967d7));
        assert_eq!(read_cid(D, true), Some(0xffff_ffff));
        assert_eq!(parent_hint(D), Ok(Some("base.vmdk".into())));
        let ls: Vec<Line> = lines(D).into_iter().filter(|l| *l != Line::Skip).collect();
        assert_eq!(ls.len(), 3);
        assert_eq!(
            ls[0],
            Line::Extent(ExtentLine {
                sectors: 4194304,
                kind: "FLAT".into(),
                file: "y-f001.vmdk".into(),
                flat_offset: 0
            })
        );
        assert_eq!(ls[2], Line::Invalid("RW 10 FLAT \"bad.vmdk\"".into()));
    }

    #[test]
    fn cid_rewrite_odd_text() {
        assert_eq!(with_new_cid("CIDé parentCID", 1), None);
        assert_eq!(with_new_cid("CID", 1), None);
    }

    #[test]
    fn cid_rewrite() {
        let d = "CID=1\nparentCID=ffffffff\nx";
        assert_eq!(
            with_new_cid(d, 0xabc).as_deref(),
            Some("CID=abc\nparentCID=ffffffff\nx")
        );
    }
}
