//! `compare`: do two images read the same? Walks both chains' block status
//! so runs that read as zero in both are skipped unread, compares the rest
//! in 2 MiB chunks, and treats the tail of the larger image as qemu-img
//! does (it must read as zeros unless `strict`).

use crate::error::Error;
use crate::image::Image;
use crate::io::AlignedBuf;
use crate::json::Json;

pub(crate) mod status;

use status::{ChainStatus, ALLOCATED, ZERO};

/// qemu-img's IO_BUF_SIZE: the most compare reads at once.
const CHUNK: u64 = 2 << 20;
/// Mismatches are reported at 512-byte sector granularity.
const SECTOR: u64 = 512;

#[derive(Debug, Clone, Copy, Default)]
pub struct CompareOptions {
    /// `-s`: sizes and block status must match too.
    pub strict: bool,
}

/// What `compare` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Identical,
    /// First differing 512-byte sector (relative to the chunk qemu-img read).
    ContentMismatch(u64),
    /// Strict mode: the sizes differ.
    SizeMismatch,
    /// Strict mode: block status differs at this offset.
    StatusMismatch(u64),
}

impl Verdict {
    /// qemu-img's exit code (0 identical, 1 different).
    pub fn exit_code(&self) -> i32 {
        match self {
            Verdict::Identical => 0,
            _ => 1,
        }
    }

    /// The line qemu-img prints (with its newline).
    pub fn message(&self) -> String {
        match self {
            Verdict::Identical => "Images are identical.\n".into(),
            Verdict::ContentMismatch(o) => format!("Content mismatch at offset {o}!\n"),
            Verdict::SizeMismatch => "Strict mode: Image size mismatch!\n".into(),
            Verdict::StatusMismatch(o) => {
                format!("Strict mode: Offset {o} block status mismatch!\n")
            }
        }
    }
}

/// The outcome of a comparison that ran to its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompareReport {
    pub verdict: Verdict,
    /// Sizes differ (non-strict): qemu-img warns before the verdict.
    pub size_mismatch: bool,
}

impl CompareReport {
    pub fn to_json(&self) -> Json {
        let (kind, off) = match self.verdict {
            Verdict::Identical => ("identical", None),
            Verdict::ContentMismatch(o) => ("content-mismatch", Some(o)),
            Verdict::SizeMismatch => ("size-mismatch", None),
            Verdict::StatusMismatch(o) => ("status-mismatch", Some(o)),
        };
        let mut j = Json::object()
            .with("result", kind)
            .with("size-mismatch", self.size_mismatch);
        if let Some(o) = off {
            j.set("offset", o);
        }
        j
    }
}

/// Why a comparison could not finish (qemu-img exits 3 or 4).
#[derive(Debug, Clone)]
pub enum CompareError {
    /// Block status failed on image 1 or 2 (exit code 3).
    Status { image: u8, error: Error },
    /// Reading failed on image 1 or 2 at `offset` (exit code 4).
    Read {
        image: u8,
        offset: u64,
        error: Error,
    },
}

impl CompareError {
    pub fn exit_code(&self) -> i32 {
        match self {
            CompareError::Status { .. } => 3,
            CompareError::Read { .. } => 4,
        }
    }

    /// qemu-img's message, naming the images as the caller did.
    pub fn message(&self, name1: &str, name2: &str) -> String {
        let name = |i: u8| if i == 1 { name1 } else { name2 };
        match self {
            CompareError::Status { image, .. } => {
                format!("Sector allocation test failed for {}", name(*image))
            }
            CompareError::Read {
                image,
                offset,
                error,
            } => format!(
                "Error while reading offset {offset} of {}: {}",
                name(*image),
                error.message()
            ),
        }
    }
}

/// What the caller hears while a comparison runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CompareEvent {
    /// Percentage done so far, accumulated in single precision exactly as
    /// qemu-img accumulates it (so progress lines match).
    Progress(f32),
    /// The sizes differ; qemu-img prints its warning at this point.
    SizeMismatch,
}

/// Compare `a` (image 1) with `b` (image 2).
pub fn compare(
    a: &Image,
    b: &Image,
    opts: CompareOptions,
    events: &mut dyn FnMut(CompareEvent),
) -> std::result::Result<CompareReport, CompareError> {
    Comparison {
        sa: ChainStatus::new(a),
        sb: ChainStatus::new(b),
        a,
        b,
        buf1: AlignedBuf::with_len(CHUNK as usize),
        buf2: AlignedBuf::with_len(CHUNK as usize),
        base: a.size().max(b.size()),
        done: 0.0,
        events,
    }
    .run(opts)
}

struct Comparison<'a, 'e> {
    a: &'a Image,
    b: &'a Image,
    sa: ChainStatus<'a>,
    sb: ChainStatus<'a>,
    buf1: AlignedBuf,
    buf2: AlignedBuf,
    base: u64,
    done: f32,
    events: &'e mut dyn FnMut(CompareEvent),
}

type Step = std::result::Result<Option<Verdict>, CompareError>;

impl Comparison<'_, '_> {
    fn run(mut self, opts: CompareOptions) -> std::result::Result<CompareReport, CompareError> {
        let (size1, size2) = (self.a.size(), self.b.size());
        let report = |verdict, size_mismatch| CompareReport {
            verdict,
            size_mismatch,
        };
        if opts.strict && size1 != size2 {
            return Ok(report(Verdict::SizeMismatch, false));
        }
        let common = size1.min(size2);
        let mut off = 0;
        while off < common {
            let (chunk, verdict) = self.common_step(off, opts.strict)?;
            if let Some(v) = verdict {
                return Ok(report(v, false));
            }
            off += chunk;
            self.advance(chunk);
        }
        if size1 == size2 {
            return Ok(report(Verdict::Identical, false));
        }
        (self.events)(CompareEvent::SizeMismatch);
        let which = if size1 > size2 { 1 } else { 2 };
        let img = if which == 1 { self.a } else { self.b };
        while off < self.base {
            let over = if which == 1 { &self.sa } else { &self.sb };
            let (st, n) =
                over.above(off, self.base - off)
                    .map_err(|error| CompareError::Status {
                        image: which,
                        error,
                    })?;
            let mut chunk = n.max(1);
            if st & ALLOCATED != 0 && st & ZERO == 0 {
                chunk = chunk.min(CHUNK);
                if let Some(v) = self.check_empty(img, which, off, chunk)? {
                    return Ok(report(v, true));
                }
            }
            off += chunk;
            self.advance(chunk);
        }
        Ok(report(Verdict::Identical, true))
    }

    /// qemu_progress_print(chunk / base * 100, 100) in float arithmetic.
    fn advance(&mut self, chunk: u64) {
        let delta = (chunk as f32 / self.base as f32) * 100.0;
        self.done += delta / 100.0 * 100.0;
        (self.events)(CompareEvent::Progress(self.done));
    }

    /// One step over the range both images have: (bytes, verdict).
    fn common_step(
        &mut self,
        off: u64,
        strict: bool,
    ) -> std::result::Result<(u64, Option<Verdict>), CompareError> {
        let status = |s: &ChainStatus, img: &Image, image| {
            s.above(off, img.size() - off)
                .map_err(|error| CompareError::Status { image, error })
        };
        let (st1, n1) = status(&self.sa, self.a, 1)?;
        let (st2, n2) = status(&self.sb, self.b, 2)?;
        let mut chunk = n1.min(n2).max(1);
        if strict && st1 != st2 {
            return Ok((chunk, Some(Verdict::StatusMismatch(off))));
        }
        let (al1, al2) = (st1 & ALLOCATED != 0, st2 & ALLOCATED != 0);
        if st1 & ZERO != 0 && st2 & ZERO != 0 {
            return Ok((chunk, None));
        }
        chunk = chunk.min(CHUNK);
        let verdict = match (al1, al2) {
            (true, true) => self.compare_chunk(off, chunk)?,
            (false, false) => None,
            (true, false) => self.check_empty(self.a, 1, off, chunk)?,
            (false, true) => self.check_empty(self.b, 2, off, chunk)?,
        };
        Ok((chunk, verdict))
    }

    fn compare_chunk(&mut self, off: u64, chunk: u64) -> Step {
        let n = chunk as usize;
        read(self.a, 1, &mut self.buf1[..n], off)?;
        read(self.b, 2, &mut self.buf2[..n], off)?;
        let (x, y) = (&self.buf1[..n], &self.buf2[..n]);
        // qemu-img's compare_buffers: sector by sector from the chunk start.
        let s = SECTOR as usize;
        let first = x.chunks(s).zip(y.chunks(s)).position(|(p, q)| p != q);
        Ok(first.map(|i| Verdict::ContentMismatch(off + (i * s) as u64)))
    }

    fn check_empty(&mut self, img: &Image, which: u8, off: u64, chunk: u64) -> Step {
        let n = chunk as usize;
        read(img, which, &mut self.buf1[..n], off)?;
        let s = SECTOR as usize;
        let first = self.buf1[..n]
            .chunks(s)
            .position(|p| p.iter().any(|&c| c != 0));
        Ok(first.map(|i| Verdict::ContentMismatch(off + (i * s) as u64)))
    }
}

fn read(img: &Image, which: u8, buf: &mut [u8], off: u64) -> std::result::Result<(), CompareError> {
    img.read_at(buf, off).map_err(|error| CompareError::Read {
        image: which,
        offset: off,
        error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages() {
        assert_eq!(Verdict::Identical.message(), "Images are identical.\n");
        assert_eq!(
            Verdict::ContentMismatch(65536).message(),
            "Content mismatch at offset 65536!\n"
        );
        assert_eq!(
            Verdict::StatusMismatch(0).message(),
            "Strict mode: Offset 0 block status mismatch!\n"
        );
        assert_eq!(Verdict::SizeMismatch.exit_code(), 1);
    }
}
