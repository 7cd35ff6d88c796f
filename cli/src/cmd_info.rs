//! `info [-f FMT | --image-opts] [-b] [-U] [--object OBJDEF]
//! [--output human|json] FILENAME`

use imgtool::io::{BlkdebugOptions, CacheMode, HostFile};
use imgtool::json::Json;
use imgtool::{ImageInfo, OpenOptions};
use std::path::Path;

use crate::app::{out, CmdResult, Fail, Prog};
use crate::common::{
    ch, parse_object, parse_output, ImageSpec, OutputFormat, Quorum, OPT_IMAGE_OPTS, OPT_OBJECT,
    OPT_OUTPUT,
};
use crate::getopt::{Getopt, HasArg::*, LongOpt};
use crate::render;

/// qemu-img 10.0.2's table for `info`, in its order (ambiguity messages
/// list candidates in this order).
const LONGS: &[LongOpt] = &[
    LongOpt::new("help", No, ch('h')),
    LongOpt::new("format", Required, ch('f')),
    LongOpt::new("output", Required, OPT_OUTPUT),
    LongOpt::new("backing-chain", No, ch('b')),
    LongOpt::new("object", Required, OPT_OBJECT),
    LongOpt::new("image-opts", No, OPT_IMAGE_OPTS),
    LongOpt::new("force-share", No, ch('U')),
];

#[derive(Debug, Default)]
struct Args {
    format: Option<String>,
    output: Option<OutputFormat>,
    chain: bool,
    image_opts: bool,
    force_share: bool,
    filename: String,
}

fn parse(prog: &Prog, args: Vec<String>) -> Result<Args, Fail> {
    let mut a = Args::default();
    let mut g = Getopt::new(&prog.argv0, args, "f:hbU", LONGS);
    for o in g.by_ref() {
        let o = o.map_err(Fail::Getopt)?;
        let arg = o.arg.unwrap_or_default();
        match o.val {
            v if v == ch('h') => {
                crate::help::print_command(prog, "info");
                return Err(Fail::Exit(0));
            }
            v if v == ch('f') => a.format = Some(arg),
            v if v == ch('b') => a.chain = true,
            v if v == ch('U') => a.force_share = true,
            OPT_OUTPUT => a.output = Some(parse_output(&arg)?),
            OPT_OBJECT => parse_object(&arg)?,
            OPT_IMAGE_OPTS => a.image_opts = true,
            _ => {}
        }
    }
    let mut rest = g.operands();
    if rest.len() != 1 {
        return Err(Fail::Usage("Expecting one image file name".into()));
    }
    a.filename = rest.remove(0);
    Ok(a)
}

pub fn run(prog: &Prog, args: Vec<String>) -> CmdResult {
    let a = parse(prog, args)?;
    let list = collect(&a)?;
    let text = match a.output.unwrap_or(OutputFormat::Human) {
        OutputFormat::Human => render::image_info_list(&list),
        OutputFormat::Json if a.chain => {
            Json::Array(list.iter().map(ImageInfo::to_json).collect()).to_pretty() + "\n"
        }
        OutputFormat::Json => list
            .first()
            .map(|i| i.to_json().to_pretty() + "\n")
            .unwrap_or_default(),
    };
    out(&text);
    Ok(())
}

/// A key secret is one of QEMU's "strong" runtime options, which a plain
/// filename cannot express, so QEMU names such a node by a `json:` tree.
fn strong_options_name(spec: &ImageSpec, format: &str) -> Option<String> {
    if let (Some((offset, size)), "raw") = (&spec.raw_window, format) {
        // raw's offset and size are strong options too (kept as given).
        let mut tree = Json::object();
        if let Some(o) = offset {
            tree.set("offset", o.clone());
        }
        if let Some(s) = size {
            tree.set("size", s.clone());
        }
        let file = Json::object()
            .with("driver", "file")
            .with("filename", spec.filename.as_str());
        let tree = tree.with("driver", format).with("file", file);
        return Some(format!("json:{}", tree.to_compact()));
    }
    let secret = spec.key_secret.as_deref()?;
    let key = match format {
        "qcow2" => "encrypt.key-secret",
        "luks" => "key-secret",
        _ => return None,
    };
    let file = Json::object()
        .with("driver", "file")
        .with("filename", spec.filename.as_str());
    let tree = Json::object()
        .with(key, secret)
        .with("driver", format)
        .with("file", file);
    Some(format!("json:{}", tree.to_compact()))
}

/// QEMU's name for a blkdebug node over `image`: `blkdebug:CONFIG:FILE`
/// when its options fit in that, else its `json:` tree (as a tree).
fn blkdebug_name(b: &BlkdebugOptions, image: Json, file: &str) -> Result<String, Json> {
    if b.rules.is_empty() && b.align == 0 {
        return Ok(format!(
            "blkdebug:{}:{file}",
            b.config.as_deref().unwrap_or("")
        ));
    }
    let mut tree = Json::object()
        .with("image", image)
        .with("driver", "blkdebug");
    if let Some(c) = b.config.as_deref().filter(|c| !c.is_empty()) {
        tree.set("config", c);
    }
    if b.align != 0 {
        tree.set("align", b.align);
    }
    for (k, v) in &b.rules {
        tree.set(k, v.as_str());
    }
    Err(tree)
}

fn file_tree(file: &str) -> Json {
    Json::object().with("driver", "file").with("filename", file)
}

/// blkdebug between the format and its file: both nodes named as QEMU
/// names them.
fn blkdebug_below_names(info: &mut ImageInfo, b: &BlkdebugOptions, file: &str) {
    let (node, top) = match blkdebug_name(b, file_tree(file), file) {
        Ok(n) => (n.clone(), n),
        Err(tree) => {
            let top = Json::object()
                .with("driver", info.format.as_str())
                .with("file", tree.clone());
            (
                format!("json:{}", tree.to_compact()),
                format!("json:{}", top.to_compact()),
            )
        }
    };
    info.filename = top;
    if let Some(c) = info.file_child.as_mut().filter(|c| c.format == "blkdebug") {
        c.filename = node;
    }
}

/// blkdebug above a format: its own node (format `blkdebug`, no disk size
/// of its own) with the format node as its `image` child.
fn blkdebug_above_info(mut inner: ImageInfo, b: &BlkdebugOptions, file: &str) -> ImageInfo {
    inner.filename = file.to_string();
    let image = Json::object()
        .with("driver", inner.format.as_str())
        .with("file", file_tree(file));
    let name =
        blkdebug_name(b, image, file).unwrap_or_else(|tree| format!("json:{}", tree.to_compact()));
    ImageInfo {
        filename: name,
        format: "blkdebug".into(),
        actual_size: None,
        encrypted: false,
        backing_filename: None,
        full_backing_filename: None,
        backing_filename_format: None,
        snapshots: Vec::new(),
        format_specific: None,
        file_child: None,
        extent_children: vec![("image".into(), inner.clone())],
        ..inner
    }
}

/// A quorum node as the file: its own node (format `quorum`) over the
/// children, with their disk sizes summed; and
/// no directory to resolve a backing name against.
fn quorum_info(info: &mut ImageInfo, q: &Quorum, format: &str) {
    info.full_backing_filename = None;
    let tree = q.name.strip_prefix("json:").unwrap_or(&q.name);
    info.filename = format!("json:{{\"driver\": \"{format}\", \"file\": {tree}}}");
    let kids: Vec<ImageInfo> = q
        .children
        .iter()
        .filter_map(|f| {
            let h = HostFile::open(Path::new(f), false, CacheMode::default()).ok()?;
            Some(ImageInfo::protocol(f, &h))
        })
        .collect();
    let Some(first) = kids.first().cloned() else {
        return;
    };
    let total = kids
        .iter()
        .try_fold(0u64, |t, k| k.actual_size.map(|a| t + a));
    let own = info.file_child.as_ref().and_then(|c| c.actual_size);
    // The format's disk size counts its file node's (plus any extents).
    info.actual_size = match (info.actual_size, own, total) {
        (Some(a), Some(o), Some(t)) => Some(a - o + t),
        _ => None,
    };
    let node = ImageInfo {
        filename: q.name.clone(),
        format: "quorum".into(),
        actual_size: total,
        format_specific: None,
        file_child: None,
        extent_children: kids
            .into_iter()
            .enumerate()
            .map(|(i, k)| (format!("children.{i}"), k))
            .collect(),
        ..first
    };
    info.file_child = Some(Box::new(node));
}

/// Open each layer on its own (no backing), following the chain by the
/// names recorded in the headers, as qemu-img's collect_image_info_list.
fn collect(a: &Args) -> Result<Vec<ImageInfo>, Fail> {
    let mut list: Vec<ImageInfo> = Vec::new();
    let mut seen: Vec<String> = Vec::new();
    let mut spec = ImageSpec::parse(&a.filename, a.image_opts, a.format.as_deref())?;
    loop {
        if seen.contains(&spec.arg) {
            return Err(Fail::report(format!(
                "Backing file '{}' creates an infinite loop.",
                spec.arg
            )));
        }
        seen.push(spec.arg.clone());
        let opts = OpenOptions {
            force_share: a.force_share,
            no_backing: true,
            metadata_only: true,
            ..OpenOptions::default()
        };
        let img = spec.open(&opts)?;
        let mut info = ImageInfo::of(&img);
        if let Some(name) = strong_options_name(&spec, img.format()) {
            info.filename = name;
        }
        if let Some(q) = &spec.quorum {
            quorum_info(&mut info, q, img.format());
        }
        match spec.blkdebug.as_ref() {
            Some(b) if b.above.is_some() => info = blkdebug_above_info(info, b, &spec.filename),
            Some(b) => blkdebug_below_names(&mut info, b, &spec.filename),
            None => {}
        }
        drop(img);
        let next = match (&info.full_backing_filename, &info.backing_filename) {
            (Some(full), _) if a.chain => Some(ImageSpec::plain(
                full,
                info.backing_filename_format.as_deref(),
            )),
            (None, Some(b)) if a.chain => {
                return Err(Fail::report(format!(
                "Could not determine absolute backing filename, but backing filename '{b}' present"
            )))
            }
            _ => None,
        };
        list.push(info);
        match next {
            Some(n) => spec = n,
            None => return Ok(list),
        }
    }
}
