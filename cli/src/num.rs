//! Numbers from the command line, parsed exactly as qemu-img parses them
//! (`qemu_strtosz`, `qemu_strtol`), because the two failure classes
//! (not a number / out of range) produce different messages.

use crate::app::Fail;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NumError {
    /// Not a number (EINVAL).
    Invalid,
    /// A number, but out of range (ERANGE).
    Range,
}

/// Length of the prefix strtoul/strtod skip as white space.
fn skip_space(s: &[u8]) -> usize {
    s.iter()
        .take_while(|c| matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c))
        .count()
}

/// strtoull(s, &end, base) for base 10 or 16: (value, end, overflow, negative).
/// `end` is 0 when no digits were converted.
fn strtoull(s: &[u8], base: u32) -> (u64, usize, bool, bool) {
    let mut i = skip_space(s);
    let neg = s.get(i) == Some(&b'-');
    if matches!(s.get(i), Some(b'-' | b'+')) {
        i += 1;
    }
    if base == 16
        && s.get(i) == Some(&b'0')
        && matches!(s.get(i + 1), Some(b'x' | b'X'))
        && s.get(i + 2).is_some_and(|c| c.is_ascii_hexdigit())
    {
        i += 2;
    }
    let start = i;
    let mut val: u64 = 0;
    let mut overflow = false;
    while let Some(d) = s.get(i).and_then(|c| (*c as char).to_digit(base)) {
        match val
            .checked_mul(base as u64)
            .and_then(|v| v.checked_add(d as u64))
        {
            Some(v) => val = v,
            None => overflow = true,
        }
        i += 1;
    }
    if i == start {
        return (0, 0, false, false);
    }
    if overflow {
        val = u64::MAX;
    }
    let val = if neg && !overflow {
        val.wrapping_neg()
    } else {
        val
    };
    (val, i, overflow, neg)
}

/// strtod on a text that has no exponent: (value, end); end 0 = no number.
fn strtod_plain(s: &[u8]) -> (f64, usize) {
    let mut i = skip_space(s);
    let num_start = i;
    if matches!(s.get(i), Some(b'-' | b'+')) {
        i += 1;
    }
    let int_digits = s[i..].iter().take_while(|c| c.is_ascii_digit()).count();
    i += int_digits;
    let mut frac_digits = 0;
    if s.get(i) == Some(&b'.') {
        frac_digits = s[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if int_digits + frac_digits > 0 {
            i += 1 + frac_digits;
        }
    }
    if int_digits + frac_digits == 0 {
        return (0.0, 0);
    }
    let text = String::from_utf8_lossy(&s[num_start..i]);
    let text = text.trim_end_matches('.');
    (text.parse::<f64>().unwrap_or(0.0), i)
}

fn suffix_mul(c: Option<&u8>) -> Option<u64> {
    Some(match c?.to_ascii_uppercase() {
        b'B' => 1,
        b'K' => 1 << 10,
        b'M' => 1 << 20,
        b'G' => 1 << 30,
        b'T' => 1 << 40,
        b'P' => 1 << 50,
        b'E' => 1 << 60,
        _ => return None,
    })
}

/// QEMU's `qemu_strtosz`: decimal, hex (`0x..`), or a fraction followed by
/// a binary suffix (b, k, M, G, T, P, E); the whole text must be used.
pub fn strtosz(text: &str) -> Result<u64, NumError> {
    let s = text.as_bytes();
    let (mut val, mut end, overflow, neg) = strtoull(s, 10);
    let mut valf: u64 = 0;
    let parsed = end > 0;
    if overflow {
        return Err(trailing(s, end, NumError::Range));
    }
    if parsed && neg {
        return Err(trailing(s, end, NumError::Range));
    }
    if parsed && val == 0 && matches!(s.get(end), Some(b'x' | b'X')) {
        let (v, e, ovf, _) = strtoull(s, 16);
        if ovf {
            return Err(trailing(s, e, NumError::Range));
        }
        if e == 0 || s.get(e) == Some(&b'.') || suffix_mul(s.get(e)).is_some() {
            return Err(NumError::Invalid);
        }
        val = v;
        end = e;
    } else if s.get(end) == Some(&b'.') || (!parsed && text.contains('.')) {
        if parsed && !s.get(end + 1).is_some_and(|c| c.is_ascii_digit()) {
            end += 1;
        } else {
            let tail = &s[end..];
            let cut = tail
                .iter()
                .position(|c| *c == b'e' || *c == b'E')
                .unwrap_or(tail.len());
            let (fraction, used) = strtod_plain(&tail[..cut]);
            if used == 0 {
                return Err(NumError::Invalid);
            }
            if fraction.is_sign_negative() {
                return Err(trailing(s, end + used, NumError::Range));
            }
            end += used;
            if fraction >= 1.0 {
                val = val.checked_add(1).ok_or(NumError::Range)?;
            } else {
                valf = (fraction * 18_446_744_073_709_551_616.0) as u64;
                if valf == 0 && fraction > 0.0 {
                    valf = 1;
                }
            }
        }
    } else if !parsed {
        return Err(NumError::Invalid);
    }
    let mul = match suffix_mul(s.get(end)) {
        Some(m) => {
            end += 1;
            m
        }
        None => 1,
    };
    if end < s.len() {
        return Err(NumError::Invalid);
    }
    if mul == 1 {
        return if valf != 0 {
            Err(NumError::Invalid)
        } else {
            Ok(val)
        };
    }
    let whole = val as u128 * mul as u128;
    let part = valf as u128 * mul as u128;
    let total = whole + (part >> 64) + ((part as u64) >> 63) as u128;
    u64::try_from(total).map_err(|_| NumError::Range)
}

/// With no end pointer, QEMU reports trailing text as EINVAL even after a
/// range error.
fn trailing(s: &[u8], end: usize, e: NumError) -> NumError {
    if end < s.len() {
        NumError::Invalid
    } else {
        e
    }
}

/// `qemu_strtol(text, NULL, 0, ..)`: C integer syntax (0x hex, 0 octal).
pub fn strtol(text: &str) -> Result<i64, NumError> {
    let s = text.as_bytes();
    let mut i = skip_space(s);
    let neg = s.get(i) == Some(&b'-');
    if matches!(s.get(i), Some(b'-' | b'+')) {
        i += 1;
    }
    let (base, digits_at) = if s.get(i) == Some(&b'0')
        && matches!(s.get(i + 1), Some(b'x' | b'X'))
        && s.get(i + 2).is_some_and(|c| c.is_ascii_hexdigit())
    {
        (16, i + 2)
    } else if s.get(i) == Some(&b'0') {
        (8, i)
    } else {
        (10, i)
    };
    let mut mag: u128 = 0;
    let mut j = digits_at;
    while let Some(d) = s.get(j).and_then(|c| (*c as char).to_digit(base)) {
        mag = (mag * base as u128 + d as u128).min(u128::from(u64::MAX) + 2);
        j += 1;
    }
    if j == digits_at || j < s.len() {
        return Err(NumError::Invalid);
    }
    let v = if neg { -(mag as i128) } else { mag as i128 };
    i64::try_from(v).map_err(|_| NumError::Range)
}

/// qemu-img's `cvtnum_full`: a size option with a range, and its messages.
pub fn cvtnum_full(name: &str, value: &str, min: i64, max: i64) -> Result<i64, Fail> {
    match strtosz(value) {
        Err(NumError::Invalid) => Err(Fail::Report(format!(
            "Invalid {name} specified: '{value}'."
        ))),
        Ok(v) if v >= min as u64 && v <= max as u64 => Ok(v as i64),
        _ => Err(Fail::Report(format!(
            "Invalid {name} specified. Must be between {min} and {max}."
        ))),
    }
}

/// `cvtnum`: 0 ..= INT64_MAX.
pub fn cvtnum(name: &str, value: &str) -> Result<u64, Fail> {
    cvtnum_full(name, value, 0, i64::MAX).map(|v| v as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expectations from `qemu-img create -f raw x SIZE` (qemu-img 10.0.2).
    #[test]
    fn sizes_like_qemu() {
        assert_eq!(strtosz("1.5k"), Ok(1536));
        assert_eq!(strtosz("0x10"), Ok(16));
        assert_eq!(strtosz("0X1f"), Ok(31));
        assert_eq!(strtosz(" 1M"), Ok(1 << 20));
        assert_eq!(strtosz("+1M"), Ok(1 << 20));
        assert_eq!(strtosz("1.k"), Ok(1024));
        assert_eq!(strtosz(".5k"), Ok(512));
        assert_eq!(strtosz("1b"), Ok(1));
        assert_eq!(strtosz("8191P"), Ok(9_222_246_136_947_933_184));
        assert_eq!(strtosz("7.99999E"), Ok(9_223_360_507_639_729_792));
        assert_eq!(strtosz("1.5e"), Ok(1_729_382_256_910_270_464));
        for bad in [
            "1Q", "1.5", "1M ", "1e3", "0x10k", "0.5", "1.5b", "12abc", "", "1,5k",
        ] {
            assert_eq!(strtosz(bad), Err(NumError::Invalid), "{bad}");
        }
        for range in ["-1", "16E", "18446744073709551616"] {
            assert_eq!(strtosz(range), Err(NumError::Range), "{range}");
        }
    }

    // Expectations from `qemu-img convert -m N`.
    #[test]
    fn strtol_like_qemu() {
        assert_eq!(strtol("0x10"), Ok(16));
        assert_eq!(strtol(" 3"), Ok(3));
        assert_eq!(strtol("+3"), Ok(3));
        assert_eq!(strtol("010"), Ok(8));
        assert_eq!(strtol("-5"), Ok(-5));
        for bad in ["3 ", "08", "", "abc", "2x"] {
            assert_eq!(strtol(bad), Err(NumError::Invalid), "{bad}");
        }
        assert_eq!(strtol("99999999999999999999"), Err(NumError::Range));
    }
}
