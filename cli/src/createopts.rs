//! Creation options as qemu-img shows them: `-o help` and the
//! `Formatting '...', fmt=... ` line.
//!
//! QEMU merges the format's options with the file protocol's, prints them
//! in its declaration order with defaults filled in, and lists only the
//! format's own ones in `-o help` without a filename. The library gives
//! us the merged list, sorted by name, without defaults, so the order,
//! defaults and the protocol's share are kept here (see the report for
//! the library API that would replace this table).

use imgtool::format::{self, CreateOptions, OptDesc, OptKind};

use crate::app::{out, CmdResult, Fail};

/// The file protocol's creation options (QEMU's file-posix).
const PROTOCOL_OPTS: &[(&str, &str)] = &[
    ("size", "Virtual disk size"),
    ("nocow", "Turn off copy-on-write (valid only on btrfs)"),
    (
        "preallocation",
        "Preallocation mode (allowed values: off, falloc, full)",
    ),
    (
        "extent_size_hint",
        "Extent size hint for the image file, 0 to disable",
    ),
];

/// QEMU's declaration order for a format's merged option list, with the
/// defaults its `Formatting` line shows.
fn print_order(fmt: &str) -> &'static [(&'static str, Option<&'static str>)] {
    match fmt {
        "qcow2" => &[
            ("encryption", None),
            ("encrypt.format", None),
            ("encrypt.key-secret", None),
            ("encrypt.cipher-alg", None),
            ("encrypt.cipher-mode", None),
            ("encrypt.ivgen-alg", None),
            ("encrypt.ivgen-hash-alg", None),
            ("encrypt.hash-alg", None),
            ("encrypt.iter-time", None),
            ("cluster_size", Some("65536")),
            ("extended_l2", Some("off")),
            ("preallocation", None),
            ("compression_type", Some("zlib")),
            ("size", None),
            ("compat", None),
            ("backing_file", None),
            ("backing_fmt", None),
            ("data_file", None),
            ("data_file_raw", None),
            ("lazy_refcounts", Some("off")),
            ("refcount_bits", Some("16")),
            ("nocow", None),
            ("extent_size_hint", None),
        ],
        "qcow" => &[
            ("size", None),
            ("backing_file", None),
            ("backing_fmt", None),
            ("encryption", None),
            ("encrypt.format", None),
            ("encrypt.key-secret", None),
            ("nocow", None),
            ("preallocation", None),
            ("extent_size_hint", None),
        ],
        "qed" => &[
            ("size", None),
            ("backing_file", None),
            ("backing_fmt", None),
            ("cluster_size", Some("65536")),
            ("table_size", None),
            ("nocow", None),
            ("preallocation", None),
            ("extent_size_hint", None),
        ],
        "vdi" => &[
            ("size", None),
            ("static", Some("off")),
            ("nocow", None),
            ("preallocation", None),
            ("extent_size_hint", None),
        ],
        "vpc" => &[
            ("size", None),
            ("subformat", None),
            ("force_size", None),
            ("nocow", None),
            ("preallocation", None),
            ("extent_size_hint", None),
        ],
        "vhdx" => &[
            ("size", None),
            ("log_size", Some("1048576")),
            ("block_size", Some("0")),
            ("subformat", None),
            ("block_state_zero", None),
            ("nocow", None),
            ("preallocation", None),
            ("extent_size_hint", None),
        ],
        "vmdk" => &[
            ("size", None),
            ("adapter_type", None),
            ("backing_file", None),
            ("backing_fmt", None),
            ("compat6", Some("off")),
            ("hwversion", Some("undefined")),
            ("toolsversion", None),
            ("subformat", None),
            ("zeroed_grain", None),
            ("nocow", None),
            ("preallocation", None),
            ("extent_size_hint", None),
        ],
        "luks" => &[
            ("size", None),
            ("key-secret", None),
            ("cipher-alg", None),
            ("cipher-mode", None),
            ("ivgen-alg", None),
            ("ivgen-hash-alg", None),
            ("hash-alg", None),
            ("iter-time", None),
            ("detached-header", None),
            ("nocow", None),
            ("preallocation", None),
            ("extent_size_hint", None),
        ],
        _ => &[
            ("size", None),
            ("nocow", None),
            ("preallocation", None),
            ("extent_size_hint", None),
        ],
    }
}

/// The format's merged options in QEMU's order, then any the table misses.
fn ordered(fmt: &str, descs: &'static [OptDesc]) -> Vec<(&'static OptDesc, Option<&'static str>)> {
    let table = print_order(fmt);
    let mut v: Vec<_> = table
        .iter()
        .filter_map(|(n, def)| descs.iter().find(|d| d.name == *n).map(|d| (d, *def)))
        .collect();
    v.extend(
        descs
            .iter()
            .filter(|d| !table.iter().any(|(n, _)| *n == d.name))
            .map(|d| (d, None)),
    );
    v
}

fn is_protocol_opt(d: &OptDesc) -> bool {
    d.name != "size"
        && PROTOCOL_OPTS
            .iter()
            .any(|(n, h)| *n == d.name && *h == d.help)
}

/// qemu_opts_print's escaping: a comma is doubled.
fn escaped(v: &str) -> String {
    v.replace(',', ",,")
}

/// `Formatting 'FILE', fmt=FMT opt=val ...` (without the newline).
pub fn formatting_line(filename: &str, fmt: &str, opts: &CreateOptions, size: u64) -> String {
    let descs = format::create_options(fmt).unwrap_or(&[]);
    let mut parts = Vec::new();
    for (d, def) in ordered(fmt, descs) {
        let given = if d.name == "size" {
            Some(size.to_string())
        } else {
            opts.get(d.name).map(str::to_string)
        };
        let Some(value) = given.clone().or(def.map(str::to_string)) else {
            continue;
        };
        let shown = match d.kind {
            OptKind::Str => escaped(&value),
            OptKind::Size | OptKind::Number if given.is_some() => numeric(opts, d, &value),
            _ => value,
        };
        parts.push(format!("{}={shown}", d.name));
    }
    format!("Formatting '{filename}', fmt={fmt} {}", parts.join(" "))
}

/// A number option as QEMU prints it once parsed (PRId64).
fn numeric(opts: &CreateOptions, d: &OptDesc, raw: &str) -> String {
    let v = match d.kind {
        OptKind::Size => opts.get_size(d.name).ok().flatten(),
        _ => opts.get_number(d.name).ok().flatten(),
    };
    match v {
        Some(n) => (n as i64).to_string(),
        None => raw.to_string(),
    }
}

/// One `-o help` line: `  name=<type>`, padded to 24 columns, ` - help`.
fn help_line(d: &OptDesc) -> String {
    let head = format!("  {}={}", d.name, d.kind.tag());
    format!("{head:<24} - {}", d.help)
}

/// qemu-img's print_block_option_help: with a filename, the format's and
/// the protocol's options; without, only the format's own.
pub fn print_help(fmt: &str, filename: Option<&str>) -> CmdResult {
    if !format::is_known(fmt) {
        return Err(Fail::Report(format!("Unknown file format '{fmt}'")));
    }
    let descs = format::create_options(fmt).map_err(Fail::from)?;
    let mut lines: Vec<String> = descs
        .iter()
        .filter(|d| filename.is_some() || !is_protocol_opt(d))
        .map(help_line)
        .collect();
    lines.sort();
    let mut text = match filename {
        Some(_) => "Supported options:\n".to_string(),
        None => format!("Supported {fmt} options:\n"),
    };
    for l in lines {
        text.push_str(&l);
        text.push('\n');
    }
    if filename.is_none() {
        text.push_str(
            "\nThe protocol level may support further options.\n\
             Specify the target filename to include those options.\n",
        );
    }
    out(&text);
    Ok(())
}

/// qemu-img's is_valid_option_list: no leading comma, no odd run of
/// trailing commas, not empty.
pub fn is_valid_option_list(list: &str) -> bool {
    if list.is_empty() || list.starts_with(',') {
        return false;
    }
    let trailing = list.len() - list.trim_end_matches(',').len();
    trailing.is_multiple_of(2)
}

/// `-o` given several times: joined with commas, each checked first.
pub fn accumulate(acc: &mut Option<String>, list: &str) -> Result<(), Fail> {
    if !is_valid_option_list(list) {
        return Err(Fail::Report(format!("Invalid option list: {list}")));
    }
    *acc = Some(match acc.take() {
        Some(prev) => format!("{prev},{list}"),
        None => list.to_string(),
    });
    Ok(())
}

/// The format's `-o` options, parsed and type-checked (qemu_opts_do_parse).
pub fn parse_for_format(fmt: &str, list: Option<&str>) -> Result<CreateOptions, Fail> {
    if !format::is_known(fmt) {
        return Err(Fail::Report(format!("Unknown file format '{fmt}'")));
    }
    let known = format::create_options(fmt).map_err(Fail::from)?;
    let o = CreateOptions::parse(list.unwrap_or_default()).map_err(Fail::from)?;
    o.validate(known).map_err(Fail::from)?;
    Ok(o)
}

/// `-b`/`-B` and `-F` as creation options (add_old_style_options).
pub fn add_backing(
    o: &mut CreateOptions,
    fmt: &str,
    backing: Option<&str>,
    backing_fmt: Option<&str>,
) -> Result<(), Fail> {
    let known = format::create_options(fmt).map_err(Fail::from)?;
    let supports = |n: &str| known.iter().any(|d| d.name == n);
    if let Some(b) = backing {
        if !supports("backing_file") {
            return Err(Fail::Report(format!(
                "Backing file not supported for file format '{fmt}'"
            )));
        }
        o.set("backing_file", b);
    }
    if let Some(f) = backing_fmt {
        if !supports("backing_fmt") {
            return Err(Fail::Report(format!(
                "Backing file format not supported for file format '{fmt}'"
            )));
        }
        o.set("backing_fmt", f);
    }
    Ok(())
}

/// True when `-o` asks for help (`help` or `?` as a bare option).
pub fn wants_help(list: &str) -> bool {
    CreateOptions::parse(list).is_ok_and(|o| o.wants_help())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Lines printed by qemu-img 10.0.2 `create -f qcow2 ...`.
    #[test]
    fn formatting_line_like_qemu() {
        let o = CreateOptions::new();
        assert_eq!(
            formatting_line("xq", "qcow2", &o, 1048576),
            "Formatting 'xq', fmt=qcow2 cluster_size=65536 extended_l2=off compression_type=zlib size=1048576 lazy_refcounts=off refcount_bits=16"
        );
        let o = CreateOptions::parse("preallocation=metadata,cluster_size=4k,nocow=on").unwrap();
        assert_eq!(
            formatting_line("xq", "qcow2", &o, 1048576),
            "Formatting 'xq', fmt=qcow2 cluster_size=4096 extended_l2=off preallocation=metadata compression_type=zlib size=1048576 lazy_refcounts=off refcount_bits=16 nocow=on"
        );
        let o = CreateOptions::parse(
            "backing_file=base.qcow2,backing_fmt=qcow2,refcount_bits=0x10,extended_l2=yes",
        )
        .unwrap();
        assert_eq!(
            formatting_line("xq", "qcow2", &o, 67108864),
            "Formatting 'xq', fmt=qcow2 cluster_size=65536 extended_l2=yes compression_type=zlib size=67108864 backing_file=base.qcow2 backing_fmt=qcow2 lazy_refcounts=off refcount_bits=16"
        );
        let o = CreateOptions::parse("preallocation=falloc").unwrap();
        assert_eq!(
            formatting_line("x", "raw", &o, 1048576),
            "Formatting 'x', fmt=raw size=1048576 preallocation=falloc"
        );
    }

    #[test]
    fn option_lists() {
        assert!(!is_valid_option_list(""));
        assert!(!is_valid_option_list(",a"));
        assert!(!is_valid_option_list("a,"));
        assert!(is_valid_option_list("a,,"));
    }

    #[test]
    fn help_lines_like_qemu() {
        let d = OptDesc {
            name: "data_file_raw",
            kind: OptKind::Bool,
            help: "The external data file must stay valid as a raw image",
        };
        assert_eq!(
            help_line(&d),
            "  data_file_raw=<bool (on/off)> - The external data file must stay valid as a raw image"
        );
        let d = OptDesc {
            name: "size",
            kind: OptKind::Size,
            help: "Virtual disk size",
        };
        assert_eq!(
            help_line(&d),
            "  size=<size>            - Virtual disk size"
        );
    }
}
