//! `info`: a typed report with the JSON form of QAPI's ImageInfo.

use crate::format::SnapshotInfo;
use crate::image::{combine_backing_path, Image};
use crate::json::Json;

/// What `qemu-img info` reports for one layer.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageInfo {
    pub filename: String,
    /// Format name; `file` for the protocol child.
    pub format: String,
    pub dirty_flag: bool,
    pub actual_size: Option<u64>,
    pub virtual_size: u64,
    pub cluster_size: Option<u64>,
    pub encrypted: bool,
    pub backing_filename: Option<String>,
    pub full_backing_filename: Option<String>,
    pub backing_filename_format: Option<String>,
    pub snapshots: Vec<SnapshotInfo>,
    /// `{"type": ..., "data": {...}}`.
    pub format_specific: Option<Json>,
    /// The protocol layer under the format (`file`), as qemu-img shows it.
    pub file_child: Option<Box<ImageInfo>>,
    /// Extent files apart from `file` (vmdk), as (`extents.N`, info).
    pub extent_children: Vec<(String, ImageInfo)>,
}

impl ImageInfo {
    /// Info of the top layer of `img` (not its backing files).
    pub fn of(img: &Image) -> ImageInfo {
        let d = img.driver();
        let di = d.info();
        let mut child = Self::protocol(img.filename(), d.host_file());
        if img.format() == "file" {
            // The protocol node is the image: no child below it.
            return ImageInfo {
                filename: img.display_name().to_string(),
                virtual_size: img.size(),
                ..child
            };
        }
        if img.blkdebug().is_some_and(|b| b.above.is_none()) {
            // blkdebug between format and file: its own node (which knows
            // no disk size), with the file as its `image` child.
            child = ImageInfo {
                filename: img.display_name().to_string(),
                format: "blkdebug".into(),
                actual_size: None,
                format_specific: None,
                file_child: None,
                extent_children: vec![("image".into(), child.clone())],
                ..child
            };
        }
        let extent_children: Vec<(String, ImageInfo)> = d
            .extent_files()
            .into_iter()
            .map(|(i, f)| {
                let name = f.path().display().to_string();
                (format!("extents.{i}"), Self::protocol(&name, f))
            })
            .collect();
        // QEMU's vmdk counts every extent file into the image's disk size.
        let mut actual = child.actual_size;
        for (_, c) in &extent_children {
            actual = actual.zip(c.actual_size).map(|(a, b)| a + b);
        }
        let backing = d.backing();
        ImageInfo {
            filename: img.display_name().to_string(),
            format: img.format().to_string(),
            dirty_flag: di.dirty,
            actual_size: actual,
            virtual_size: img.size(),
            cluster_size: di.cluster_size,
            encrypted: di.encrypted,
            full_backing_filename: backing
                .as_ref()
                .map(|b| combine_backing_path(img.filename(), &b.filename)),
            backing_filename_format: backing.as_ref().and_then(|b| b.format.clone()),
            backing_filename: backing.map(|b| b.filename),
            snapshots: di.snapshots,
            format_specific: di.format_specific,
            file_child: Some(Box::new(child)),
            extent_children,
        }
    }

    /// The protocol node of one host file.
    pub fn protocol(filename: &str, host: &crate::io::HostFile) -> ImageInfo {
        // The protocol layer reports whole sectors, as QEMU's does.
        let file_len = host.len().unwrap_or(0).next_multiple_of(512);
        let actual = host.allocated_size().ok();
        ImageInfo {
            filename: filename.to_string(),
            format: "file".into(),
            dirty_flag: false,
            actual_size: actual,
            virtual_size: file_len,
            cluster_size: None,
            encrypted: false,
            backing_filename: None,
            full_backing_filename: None,
            backing_filename_format: None,
            snapshots: Vec::new(),
            format_specific: Some(
                Json::object()
                    .with("type", "file")
                    .with("data", Json::object()),
            ),
            file_child: None,
            extent_children: Vec::new(),
        }
    }

    /// Info of every layer, top first (`--backing-chain`).
    pub fn chain(img: &Image) -> Vec<ImageInfo> {
        let mut v = vec![Self::of(img)];
        let mut cur = img.backing();
        while let Some(b) = cur {
            v.push(Self::of(b));
            cur = b.backing();
        }
        v
    }

    /// QAPI ImageInfo as JSON (fields in schema order; the printer orders
    /// them as QEMU does).
    pub fn to_json(&self) -> Json {
        let mut j = Json::object();
        j.set("filename", self.filename.as_str());
        j.set("format", self.format.as_str());
        // quorum has no bdrv_get_info, so QEMU leaves the flag out.
        if self.format != "quorum" {
            j.set("dirty-flag", self.dirty_flag);
        }
        if let Some(a) = self.actual_size {
            j.set("actual-size", a);
        }
        j.set("virtual-size", self.virtual_size);
        if let Some(c) = self.cluster_size {
            j.set("cluster-size", c);
        }
        if self.encrypted {
            j.set("encrypted", true);
        }
        if let Some(b) = &self.backing_filename {
            j.set("backing-filename", b.as_str());
        }
        if let Some(b) = &self.full_backing_filename {
            j.set("full-backing-filename", b.as_str());
        }
        if let Some(b) = &self.backing_filename_format {
            j.set("backing-filename-format", b.as_str());
        }
        if !self.snapshots.is_empty() {
            j.set(
                "snapshots",
                Json::Array(self.snapshots.iter().map(snapshot_json).collect()),
            );
        }
        if let Some(fs) = &self.format_specific {
            j.set("format-specific", fs.clone());
        }
        // QEMU lists children newest first: the extents last to first,
        // then `file`.
        let mut children: Vec<Json> = self
            .extent_children
            .iter()
            .rev()
            .map(|(n, c)| {
                Json::object()
                    .with("name", n.as_str())
                    .with("info", c.to_json())
            })
            .collect();
        if let Some(c) = &self.file_child {
            children.push(
                Json::object()
                    .with("name", "file")
                    .with("info", c.to_json()),
            );
        }
        j.set("children", Json::Array(children));
        j
    }
}

/// QAPI SnapshotInfo.
pub fn snapshot_json(s: &SnapshotInfo) -> Json {
    let mut j = Json::object()
        .with("id", s.id.as_str())
        .with("name", s.name.as_str())
        .with("vm-state-size", s.vm_state_size)
        .with("date-sec", s.date_sec)
        .with("date-nsec", s.date_nsec)
        .with("vm-clock-sec", s.vm_clock_nsec / 1_000_000_000)
        .with("vm-clock-nsec", s.vm_clock_nsec % 1_000_000_000);
    if let Some(i) = s.icount {
        j.set("icount", i);
    }
    j
}
