//! `map`: the guest address space as runs of equal allocation status,
//! merged exactly as `qemu-img map` merges them.
//!
//! Each step asks the chain for the status at the current offset, refines
//! it the way QEMU's block layer does (see [`layers`]), and merges it into
//! the pending run when every field agrees and host offsets are contiguous.

use crate::error::{Error, Result};
use crate::image::Image;
use crate::json::Json;

pub(crate) mod layers;

use layers::Layer;

/// One run of `map` output (QAPI MapEntry).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MapExtent {
    pub start: u64,
    pub length: u64,
    /// Backing-chain depth of the layer that decided this run (0 = top).
    pub depth: u64,
    /// Allocated in some layer.
    pub present: bool,
    pub zero: bool,
    pub data: bool,
    pub compressed: bool,
    /// Host offset in `filename`, when the data sits at a known place.
    pub offset: Option<u64>,
    /// The file `offset` refers to (absent without an offset).
    pub filename: Option<String>,
}

impl MapExtent {
    /// QAPI MapEntry as JSON, fields in schema order (for C and Go callers;
    /// `qemu-img map --output=json` prints [`MapExtent::json_line`] instead).
    pub fn to_json(&self) -> Json {
        let mut j = Json::object()
            .with("start", self.start)
            .with("length", self.length)
            .with("data", self.data)
            .with("zero", self.zero)
            .with("compressed", self.compressed)
            .with("depth", self.depth)
            .with("present", self.present);
        if let Some(o) = self.offset {
            j.set("offset", o);
        }
        if let Some(f) = &self.filename {
            j.set("filename", f.as_str());
        }
        j
    }

    /// The entry as `qemu-img map --output=json` prints it (no newline).
    pub fn json_line(&self) -> String {
        let mut s = format!(
            "{{ \"start\": {}, \"length\": {}, \"depth\": {}, \"present\": {}, \"zero\": {}, \"data\": {}, \"compressed\": {}",
            self.start,
            self.length,
            self.depth,
            self.present,
            self.zero,
            self.data,
            self.compressed
        );
        if let Some(o) = self.offset {
            s.push_str(&format!(", \"offset\": {o}"));
        }
        s.push('}');
        s
    }

    fn end(&self) -> u64 {
        self.start + self.length
    }

    /// qemu-img's `entry_mergeable(self, next)`.
    fn mergeable(&self, next: &MapExtent) -> bool {
        if self.length == 0 {
            return false;
        }
        let same = self.zero == next.zero
            && self.data == next.data
            && self.compressed == next.compressed
            && self.depth == next.depth
            && self.present == next.present
            && self.filename == next.filename
            && self.offset.is_some() == next.offset.is_some();
        same && match (self.offset, next.offset) {
            (Some(a), Some(b)) => a.checked_add(self.length) == Some(b),
            _ => true,
        }
    }
}

/// The range `map` covers.
#[derive(Debug, Clone, Copy, Default)]
pub struct MapOptions {
    /// `--start-offset` (0 ..= i64::MAX).
    pub start: u64,
    /// `--max-length` (0 ..= i64::MAX); the rest of the image when None.
    pub max_length: Option<u64>,
}

/// Merged extents of `img`, produced lazily. Like qemu-img, an empty range
/// yields one zero-length entry at the start offset.
pub struct MapIter<'a> {
    layers: Vec<Layer<'a>>,
    img: &'a Image,
    end: u64,
    curr: MapExtent,
    finished: bool,
}

impl<'a> MapIter<'a> {
    pub fn new(img: &'a Image, opts: MapOptions) -> MapIter<'a> {
        // qemu-img computes MIN(start + max_length, length) in int64 arithmetic.
        let size = img.size() as i64;
        let start = opts.start as i64;
        let end = match opts.max_length {
            Some(m) => start.wrapping_add(m as i64).min(size),
            None => size,
        };
        MapIter {
            layers: Layer::chain(img),
            img,
            end: end.max(0) as u64,
            curr: MapExtent {
                start: opts.start,
                ..MapExtent::default()
            },
            finished: false,
        }
    }

    /// Status of the run at `pos` (at most `max` bytes), refined as QEMU's
    /// block layer reports it to qemu-img.
    fn step(&self, pos: u64, max: u64) -> Result<MapExtent> {
        let ce = self.img.block_status(pos, max)?;
        let layer = self
            .layers
            .get(ce.depth)
            .ok_or_else(|| Error::corrupt("block status names a layer outside the chain"))?;
        let mut e = MapExtent {
            start: pos,
            length: ce.len.clamp(1, max),
            depth: ce.depth as u64,
            present: ce.present,
            zero: ce.zero,
            data: ce.data,
            compressed: ce.compressed,
            // QEMU gives compressed clusters no host offset.
            offset: if ce.compressed { None } else { ce.offset },
            filename: None,
        };
        layer.refine(&mut e)?;
        if e.offset.is_some() {
            e.filename = Some(layer.filename().to_string());
        }
        Ok(e)
    }
}

impl Iterator for MapIter<'_> {
    type Item = Result<MapExtent>;

    fn next(&mut self) -> Option<Result<MapExtent>> {
        if self.finished {
            return None;
        }
        while self.curr.end() < self.end {
            let pos = self.curr.end();
            let next = match self.step(pos, self.end - pos) {
                Ok(n) => n,
                Err(e) => {
                    self.finished = true;
                    return Some(Err(e.clone().with_message(format!(
                        "Could not read file metadata: {}",
                        e.message()
                    ))));
                }
            };
            if self.curr.mergeable(&next) {
                self.curr.length += next.length;
                continue;
            }
            let done = std::mem::replace(&mut self.curr, next);
            if done.length > 0 {
                return Some(Ok(done));
            }
        }
        self.finished = true;
        Some(Ok(std::mem::take(&mut self.curr)))
    }
}

/// All merged extents of `img` in the range.
pub fn map(img: &Image, opts: MapOptions) -> Result<Vec<MapExtent>> {
    MapIter::new(img, opts).collect()
}

/// The whole `qemu-img map --output=json` text for `entries`.
pub fn json_document(entries: &[MapExtent]) -> String {
    let lines: Vec<String> = entries.iter().map(MapExtent::json_line).collect();
    format!("[{}]\n", lines.join(",\n"))
}

/// The human table's header line.
pub const HUMAN_HEADER: &str = "Offset          Length          Mapped to       File\n";

/// Why a run cannot be shown in the human table.
pub const HUMAN_UNMAPPABLE: &str = "File contains external, encrypted or compressed clusters.";

/// One human table row for `e`: `Ok(None)` for runs the table leaves out
/// (zero or unallocated), `Err` for data without a host offset.
pub fn human_line(e: &MapExtent) -> std::result::Result<Option<String>, &'static str> {
    if e.data && e.offset.is_none() {
        return Err(HUMAN_UNMAPPABLE);
    }
    if !e.data || e.zero {
        return Ok(None);
    }
    Ok(Some(format!(
        "{:<16}{:<16}{:<16}{}\n",
        hex(e.start),
        hex(e.length),
        hex(e.offset.unwrap_or(0)),
        e.filename.as_deref().unwrap_or("")
    )))
}

/// printf's `%#x`: no prefix for zero.
fn hex(v: u64) -> String {
    if v == 0 {
        "0".into()
    } else {
        format!("{v:#x}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_line_shape() {
        // From `qemu-img map --output=json` on a raw file.
        let e = MapExtent {
            start: 0,
            length: 4096,
            depth: 0,
            present: true,
            zero: false,
            data: true,
            compressed: false,
            offset: Some(0),
            filename: Some("r.raw".into()),
        };
        assert_eq!(
            e.json_line(),
            "{ \"start\": 0, \"length\": 4096, \"depth\": 0, \"present\": true, \"zero\": false, \"data\": true, \"compressed\": false, \"offset\": 0}"
        );
        assert_eq!(
            human_line(&e),
            Ok(Some(
                "0               0x1000          0               r.raw\n".to_string()
            ))
        );
        let empty = MapExtent::default();
        assert_eq!(
            json_document(&[empty]),
            "[{ \"start\": 0, \"length\": 0, \"depth\": 0, \"present\": false, \"zero\": false, \"data\": false, \"compressed\": false}]\n"
        );
    }

    #[test]
    fn merge_rules() {
        let a = MapExtent {
            start: 0,
            length: 10,
            data: true,
            present: true,
            offset: Some(100),
            filename: Some("f".into()),
            ..MapExtent::default()
        };
        let mut b = MapExtent {
            start: 10,
            offset: Some(110),
            ..a.clone()
        };
        assert!(a.mergeable(&b));
        b.offset = Some(111);
        assert!(!a.mergeable(&b));
        let z = MapExtent {
            length: 0,
            ..a.clone()
        };
        assert!(!z.mergeable(&a));
    }
}
