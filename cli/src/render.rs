//! Human rendering of `info` reports, as QEMU's `bdrv_node_info_dump` and
//! `dump_qobject` print them. Works on any `format_specific` JSON.

use std::fmt::Write;

use imgtool::format::SnapshotInfo;
use imgtool::json::{qdict_bucket, Json};
use imgtool::size::format_human;
use imgtool::ImageInfo;

/// One image as `qemu-img info` prints it (with its `Child node` blocks).
pub fn image_info(info: &ImageInfo) -> String {
    let mut s = String::new();
    graph_node(&mut s, info, 0, "/");
    s
}

/// Several images (`--backing-chain`), separated by blank lines.
pub fn image_info_list(list: &[ImageInfo]) -> String {
    list.iter().map(image_info).collect::<Vec<_>>().join("\n")
}

fn graph_node(s: &mut String, info: &ImageInfo, indent: usize, path: &str) {
    let protocol = info.file_child.is_none() && info.extent_children.is_empty();
    node_info(s, info, indent, protocol);
    for (name, child) in info.extent_children.iter().rev() {
        let _ = writeln!(s, "{:w$}Child node '{path}{name}':", "", w = indent * 4);
        graph_node(s, child, indent + 1, &format!("{path}{name}/"));
    }
    if let Some(child) = &info.file_child {
        let _ = writeln!(s, "{:w$}Child node '{path}file':", "", w = indent * 4);
        graph_node(s, child, indent + 1, &format!("{path}file/"));
    }
}

fn node_info(s: &mut String, info: &ImageInfo, indent: usize, protocol: bool) {
    let ind = " ".repeat(indent * 4);
    let protocol = protocol && indent > 0;
    let (l_name, l_fmt, l_size) = if protocol {
        ("filename", "protocol type", "file length")
    } else {
        ("image", "file format", "virtual size")
    };
    let disk = info
        .actual_size
        .map_or_else(|| "unavailable".to_string(), format_human);
    let _ = writeln!(s, "{ind}{l_name}: {}", info.filename);
    let _ = writeln!(s, "{ind}{l_fmt}: {}", info.format);
    let _ = writeln!(
        s,
        "{ind}{l_size}: {} ({} bytes)",
        format_human(info.virtual_size),
        info.virtual_size
    );
    let _ = writeln!(s, "{ind}disk size: {disk}");
    if info.encrypted {
        let _ = writeln!(s, "{ind}encrypted: yes");
    }
    if let Some(c) = info.cluster_size {
        let _ = writeln!(s, "{ind}cluster_size: {c}");
    }
    if info.dirty_flag {
        let _ = writeln!(s, "{ind}cleanly shut down: no");
    }
    backing_lines(s, info, &ind);
    if !info.snapshots.is_empty() {
        let _ = writeln!(s, "{ind}Snapshot list:");
        let _ = writeln!(s, "{ind}{}", snapshot_header());
        for sn in &info.snapshots {
            let _ = writeln!(s, "{ind}{}", snapshot_row(sn));
        }
    }
    if let Some(data) = info.format_specific.as_ref().and_then(|f| f.get("data")) {
        if !is_empty_dump(data) {
            let _ = writeln!(s, "{ind}Format specific information:");
            dump(s, indent + 1, data);
        }
    }
}

fn backing_lines(s: &mut String, info: &ImageInfo, ind: &str) {
    let Some(b) = &info.backing_filename else {
        return;
    };
    let _ = write!(s, "{ind}backing file: {b}");
    match &info.full_backing_filename {
        None => s.push_str(" (cannot determine actual path)"),
        Some(full) if full != b => {
            let _ = write!(s, " (actual path: {full})");
        }
        Some(_) => {}
    }
    s.push('\n');
    if let Some(f) = &info.backing_filename_format {
        let _ = writeln!(s, "{ind}backing file format: {f}");
    }
}

/// The snapshot table header (`bdrv_snapshot_dump(NULL)`).
pub fn snapshot_header() -> String {
    format!(
        "{:<7} {:<16} {:>8} {:>19} {:>15} {:>10}",
        "ID", "TAG", "VM_SIZE", "DATE", "VM_CLOCK", "ICOUNT"
    )
}

/// One snapshot row; the date is in local time, as QEMU prints it.
pub fn snapshot_row(sn: &SnapshotInfo) -> String {
    let secs = sn.vm_clock_nsec / 1_000_000_000;
    let clock = format!(
        "{:04}:{:02}:{:02}.{:03}",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60,
        (sn.vm_clock_nsec / 1_000_000) % 1000
    );
    let icount = sn
        .icount
        .map_or_else(|| "--".to_string(), |i| i.to_string());
    format!(
        "{:<7} {:<16} {:>8} {:>19} {:>15} {:>10}",
        sn.id,
        sn.name,
        format_human(sn.vm_state_size),
        local_date(sn.date_sec),
        clock,
        icount
    )
}

/// `%Y-%m-%d %H:%M:%S` in the local time zone.
fn local_date(secs: u64) -> String {
    let t = secs.min(i64::MAX as u64) as libc::time_t;
    // SAFETY: localtime_r only writes the tm we pass; a zeroed tm is valid.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let ok = unsafe { !libc::localtime_r(&t, &mut tm).is_null() };
    if !ok {
        return "1970-01-01 00:00:00".into();
    }
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        tm.tm_year as i64 + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

/// Whether `dump` would print nothing (empty dict or list).
fn is_empty_dump(j: &Json) -> bool {
    match j {
        Json::Object(m) => m.is_empty(),
        Json::Array(a) => a.is_empty(),
        _ => false,
    }
}

fn is_composite(j: &Json) -> bool {
    matches!(j, Json::Object(_) | Json::Array(_))
}

/// `dump_qobject`: scalars inline, dicts and lists on following lines.
fn dump(s: &mut String, indent: usize, j: &Json) {
    match j {
        Json::Object(m) => dump_dict(s, indent, m),
        Json::Array(a) => dump_list(s, indent, a),
        scalar => s.push_str(&scalar_text(scalar)),
    }
}

fn scalar_text(j: &Json) -> String {
    match j {
        Json::Null => "null".into(),
        Json::Bool(b) => b.to_string(),
        Json::Int(i) => i.to_string(),
        Json::UInt(u) => u.to_string(),
        Json::Float(f) => f.to_string(),
        Json::Str(t) => t.clone(),
        Json::Array(_) | Json::Object(_) => String::new(),
    }
}

fn dump_entry(s: &mut String, indent: usize, label: &str, v: &Json) {
    let composite = is_composite(v);
    let sep = if composite { '\n' } else { ' ' };
    let _ = write!(s, "{:w$}{label}:{sep}", "", w = indent * 4);
    dump(s, indent + 1, v);
    if !composite {
        s.push('\n');
    }
}

fn dump_list(s: &mut String, indent: usize, a: &[Json]) {
    for (i, v) in a.iter().enumerate() {
        dump_entry(s, indent, &format!("[{i}]"), v);
    }
}

fn dump_dict(s: &mut String, indent: usize, m: &[(String, Json)]) {
    for (k, v) in qdict_walk(m) {
        dump_entry(s, indent, &k.replace('-', " "), v);
    }
}

/// Entries in the order QEMU's QDict iterates them (the order its JSON
/// printer uses too): by hash bucket, newest first within a bucket.
fn qdict_walk(m: &[(String, Json)]) -> Vec<(&str, &Json)> {
    let mut idx: Vec<(u32, usize)> = m
        .iter()
        .enumerate()
        .map(|(i, (k, _))| (qdict_bucket(k), i))
        .collect();
    idx.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
    idx.into_iter()
        .filter_map(|(_, i)| m.get(i).map(|(k, v)| (k.as_str(), v)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qcow2_specific(with_bitmaps: bool) -> Json {
        let mut d = Json::object()
            .with("compat", "1.1")
            .with("compression-type", "zlib")
            .with("lazy-refcounts", false);
        if with_bitmaps {
            d.set(
                "bitmaps",
                Json::Array(vec![
                    Json::object()
                        .with("flags", Json::Array(vec![Json::from("auto")]))
                        .with("name", "b0")
                        .with("granularity", 65536u64),
                    Json::object()
                        .with("flags", Json::Array(vec![]))
                        .with("name", "b1")
                        .with("granularity", 131072u64),
                ]),
            );
        }
        d.set("refcount-bits", 16u64);
        d.set("corrupt", false);
        d.set("extended-l2", false);
        Json::object().with("type", "qcow2").with("data", d)
    }

    fn file_child(name: &str, len: u64, disk: u64) -> ImageInfo {
        ImageInfo {
            filename: name.into(),
            format: "file".into(),
            dirty_flag: false,
            actual_size: Some(disk),
            virtual_size: len,
            cluster_size: None,
            encrypted: false,
            backing_filename: None,
            full_backing_filename: None,
            backing_filename_format: None,
            snapshots: vec![],
            format_specific: Some(
                Json::object()
                    .with("type", "file")
                    .with("data", Json::object()),
            ),
            file_child: None,
            extent_children: Vec::new(),
        }
    }

    // Captured from `qemu-img info bm.qcow2` (qemu-img 10.0.2), an image
    // with two bitmaps added by `qemu-img bitmap`.
    #[test]
    fn qcow2_with_bitmaps_like_qemu() {
        let info = ImageInfo {
            filename: "bm.qcow2".into(),
            format: "qcow2".into(),
            dirty_flag: false,
            actual_size: Some(229376),
            virtual_size: 1048576,
            cluster_size: Some(65536),
            encrypted: false,
            backing_filename: None,
            full_backing_filename: None,
            backing_filename_format: None,
            snapshots: vec![],
            format_specific: Some(qcow2_specific(true)),
            file_child: Some(Box::new(file_child("bm.qcow2", 590336, 229376))),
            extent_children: Vec::new(),
        };
        let expected = "image: bm.qcow2
file format: qcow2
virtual size: 1 MiB (1048576 bytes)
disk size: 224 KiB
cluster_size: 65536
Format specific information:
    compat: 1.1
    compression type: zlib
    lazy refcounts: false
    bitmaps:
        [0]:
            flags:
                [0]: auto
            name: b0
            granularity: 65536
        [1]:
            flags:
            name: b1
            granularity: 131072
    refcount bits: 16
    corrupt: false
    extended l2: false
Child node '/file':
    filename: bm.qcow2
    protocol type: file
    file length: 576 KiB (590336 bytes)
    disk size: 224 KiB
";
        assert_eq!(image_info(&info), expected);
    }

    // Captured from `qemu-img info sub/ov2.qcow2` (backing ../base.qcow2).
    #[test]
    fn backing_with_actual_path_like_qemu() {
        let info = ImageInfo {
            filename: "sub/ov2.qcow2".into(),
            format: "qcow2".into(),
            dirty_flag: false,
            actual_size: Some(200704),
            virtual_size: 67108864,
            cluster_size: Some(65536),
            encrypted: false,
            backing_filename: Some("../base.qcow2".into()),
            full_backing_filename: Some("sub/../base.qcow2".into()),
            backing_filename_format: Some("qcow2".into()),
            snapshots: vec![],
            format_specific: Some(qcow2_specific(false)),
            file_child: Some(Box::new(file_child("sub/ov2.qcow2", 197120, 200704))),
            extent_children: Vec::new(),
        };
        let expected = "image: sub/ov2.qcow2
file format: qcow2
virtual size: 64 MiB (67108864 bytes)
disk size: 196 KiB
cluster_size: 65536
backing file: ../base.qcow2 (actual path: sub/../base.qcow2)
backing file format: qcow2
Format specific information:
    compat: 1.1
    compression type: zlib
    lazy refcounts: false
    refcount bits: 16
    corrupt: false
    extended l2: false
Child node '/file':
    filename: sub/ov2.qcow2
    protocol type: file
    file length: 192 KiB (197120 bytes)
    disk size: 196 KiB
";
        assert_eq!(image_info(&info), expected);
    }

    // Captured from `qemu-img info s.qcow2` after two `snapshot -c`.
    #[test]
    fn snapshot_table_like_qemu() {
        assert_eq!(
            snapshot_header(),
            "ID      TAG               VM_SIZE                DATE        VM_CLOCK     ICOUNT"
        );
        let sn = SnapshotInfo {
            id: "2".into(),
            name: "a longer snapshot name here".into(),
            vm_state_size: 0,
            date_sec: 0,
            date_nsec: 0,
            vm_clock_nsec: 3_723_004_000_000,
            icount: Some(0),
        };
        let row = snapshot_row(&sn);
        assert!(row.starts_with("2       a longer snapshot name here      0 B "));
        assert!(row.ends_with("  0001:02:03.004          0"), "{row}");
    }
}
