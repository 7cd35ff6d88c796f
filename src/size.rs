//! Sizes as QEMU reads and prints them.

/// Parse a size the way QEMU's `qemu_strtosz` does: a decimal number
/// (a fraction is allowed when a suffix follows), then an optional suffix
/// b/B (bytes), k/K, M, G, T, P, E (binary multiples). Returns None when the
/// text is not a valid size or overflows 64 bits.
pub fn parse_size(s: &str) -> Option<u64> {
    parse_size_default(s, 1)
}

/// Like [`parse_size`] but a bare number is multiplied by `unit`.
pub fn parse_size_default(s: &str, unit: u64) -> Option<u64> {
    let s = s.trim_start();
    // "0x..." is hexadecimal, with neither a fraction nor a suffix.
    if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        if hex.is_empty() || !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        return u64::from_str_radix(hex, 16).ok()?.checked_mul(unit);
    }
    let num_end = s
        .char_indices()
        .find(|&(_, c)| !(c.is_ascii_digit() || c == '.'))
        .map(|(i, _)| i)
        .unwrap_or(s.len());
    let (num, rest) = s.split_at(num_end);
    if num.is_empty() || num.starts_with('.') {
        return None;
    }
    let mult: u64 = match rest {
        "" => unit,
        "b" | "B" => 1,
        "k" | "K" => 1 << 10,
        "m" | "M" => 1 << 20,
        "g" | "G" => 1 << 30,
        "t" | "T" => 1 << 40,
        "p" | "P" => 1 << 50,
        "e" | "E" => 1 << 60,
        _ => return None,
    };
    if let Some((int, frac)) = num.split_once('.') {
        if frac.contains('.') || (rest.is_empty() && unit == 1) {
            return None;
        }
        let i: u64 = int.parse().ok()?;
        let f: f64 = format!("0.{}", if frac.is_empty() { "0" } else { frac })
            .parse()
            .ok()?;
        let whole = i.checked_mul(mult)?;
        let part = (f * mult as f64) as u64;
        return whole.checked_add(part);
    }
    let v: u64 = num.parse().ok()?;
    v.checked_mul(mult)
}

/// QEMU's `size_to_str`: "64 MiB", "192 KiB", "1.5 GiB" (printf "%0.3g").
pub fn format_human(val: u64) -> String {
    const SUFFIXES: [&str; 7] = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
    let scaled = val as f64 / (1000.0 / 1024.0);
    // frexp exponent: scaled = m * 2^e with 0.5 <= m < 1.
    let e = if scaled <= 0.0 {
        0
    } else {
        scaled.log2().floor() as i32 + 1
    };
    let i = ((e - 1).max(0) / 10) as usize;
    let i = i.min(SUFFIXES.len() - 1);
    let div = (1u128 << (i * 10)) as f64;
    format!("{} {}B", format_g3(val as f64 / div), SUFFIXES[i])
}

/// printf("%0.3g", v) for non-negative v.
pub fn format_g3(v: f64) -> String {
    format_g(v, 3)
}

/// printf("%.*g", prec, v) for non-negative finite v.
pub fn format_g(v: f64, prec: usize) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let p = prec.max(1);
    // Round to p significant digits in scientific form to learn the exponent.
    let sci = format!("{:.*e}", p - 1, v);
    let (mant, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let x: i32 = exp.parse().unwrap_or(0);
    if x < -4 || x >= p as i32 {
        let m = strip_zeros(mant);
        let sign = if x < 0 { '-' } else { '+' };
        format!("{m}e{sign}{:02}", x.abs())
    } else {
        let decimals = (p as i32 - 1 - x).max(0) as usize;
        strip_zeros(&format!("{:.*}", decimals, v))
    }
}

fn strip_zeros(s: &str) -> String {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse() {
        assert_eq!(parse_size("1M"), Some(1 << 20));
        assert_eq!(parse_size("64k"), Some(65536));
        assert_eq!(parse_size("1.5G"), Some(3 << 29));
        assert_eq!(parse_size("512"), Some(512));
        assert_eq!(parse_size("1x"), None);
        assert_eq!(parse_size("-1"), None);
        assert_eq!(parse_size("16E"), None);
    }

    #[test]
    fn human() {
        // Values checked against qemu-img 10.0.2's "virtual size"/"disk size".
        assert_eq!(format_human(67108864), "64 MiB");
        assert_eq!(format_human(197120), "192 KiB");
        assert_eq!(format_human(4096), "4 KiB");
        assert_eq!(format_human(1 << 30), "1 GiB");
        assert_eq!(format_human(0), "0 B");
        assert_eq!(format_human(512), "512 B");
        assert_eq!(format_human(1536 << 20), "1.5 GiB");
    }
}
