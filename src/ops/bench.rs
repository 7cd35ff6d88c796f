//! `bench`: issue `count` reads or writes of `buffer_size` bytes, keeping
//! `depth` in flight, at offsets that advance by `step` (wrapping within
//! the image), with optional flushes every `flush_interval` requests.
//!
//! qemu-img keeps its requests in flight with AIO; we keep them in flight
//! with worker threads (one request each) through `Image::read_at` /
//! `write_at`, which take `&self` and run concurrently.

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::image::Image;

/// Most worker threads we start; deeper queues are capped here.
pub const MAX_THREADS: u32 = 256;
/// Most memory the request buffers may take together (qemu-img allocates
/// depth * buffer size at once and aborts when that fails).
pub const MAX_BUFFERS: u64 = 1 << 30;

#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// `-c`: number of requests.
    pub count: u32,
    /// `-d`: requests in flight.
    pub depth: u32,
    /// `-o`: offset of the first request.
    pub offset: u64,
    /// `-s`: bytes per request.
    pub buffer_size: u64,
    /// `-S`: offset increment (0: the buffer size).
    pub step: u64,
    /// `-w`: write instead of read.
    pub write: bool,
    /// `--pattern`: the byte written.
    pub pattern: u8,
    /// `--flush-interval`: flush after this many requests (0: never).
    pub flush_interval: u32,
    /// Wait for requests in flight before flushing (`--no-drain` clears).
    pub drain_on_flush: bool,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            count: 75000,
            depth: 64,
            offset: 0,
            buffer_size: 4096,
            step: 0,
            write: false,
            pattern: 0,
            flush_interval: 0,
            drain_on_flush: true,
        }
    }
}

impl BenchOptions {
    /// qemu-img's checks of the options that depend on each other (each
    /// number's own range is the caller's: the CLI parses it).
    pub fn check(&self) -> Result<()> {
        if !self.write && self.flush_interval > 0 {
            return Err(Error::invalid(
                "--flush-interval is only available in write tests",
            ));
        }
        if self.flush_interval > 0 && self.flush_interval < self.depth {
            return Err(Error::invalid("Flush interval can't be smaller than depth"));
        }
        Ok(())
    }

    pub fn effective_step(&self) -> u64 {
        if self.step == 0 {
            self.buffer_size
        } else {
            self.step
        }
    }

    /// The lines qemu-img prints before starting.
    pub fn header(&self) -> String {
        let mut s = format!(
            "Sending {} {} requests, {} bytes each, {} in parallel (starting at offset {}, step size {})\n",
            self.count,
            if self.write { "write" } else { "read" },
            self.buffer_size,
            self.depth,
            self.offset,
            self.effective_step()
        );
        if self.flush_interval > 0 {
            s.push_str(&format!(
                "Sending flush every {} requests\n",
                self.flush_interval
            ));
        }
        s
    }
}

/// A finished run.
#[derive(Debug, Clone, Copy)]
pub struct BenchReport {
    pub elapsed: Duration,
    pub requests: u32,
}

impl BenchReport {
    /// `Run completed in X.XXX seconds.`
    pub fn summary(&self) -> String {
        format!(
            "Run completed in {:.3} seconds.\n",
            self.elapsed.as_secs_f64()
        )
    }
}

/// Shared dispatch state (qemu-img's BenchData).
struct State {
    /// Requests not yet completed.
    n: u32,
    in_flight: u32,
    next_offset: u64,
    /// Draining for a flush: issue nothing until it is done.
    in_flush: bool,
    error: Option<Error>,
}

struct Shared<'a> {
    img: &'a Image,
    o: &'a BenchOptions,
    size: u64,
    state: Mutex<State>,
    wake: Condvar,
}

/// Run the benchmark on `img`.
pub fn bench(img: &Image, o: &BenchOptions) -> Result<BenchReport> {
    let sh = Shared {
        img,
        o,
        size: img.size(),
        state: Mutex::new(State {
            n: o.count,
            in_flight: 0,
            next_offset: o.offset,
            in_flush: false,
            error: None,
        }),
        wake: Condvar::new(),
    };
    // One buffer per thread: keep them within MAX_BUFFERS bytes in all.
    let by_memory = (MAX_BUFFERS / o.buffer_size.max(1)).clamp(1, MAX_THREADS as u64) as u32;
    let threads = o.depth.clamp(1, MAX_THREADS).min(by_memory);
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| worker(&sh));
        }
    });
    let st = sh.state.into_inner().unwrap_or_else(|p| p.into_inner());
    if let Some(e) = st.error {
        return Err(e);
    }
    Ok(BenchReport {
        elapsed: start.elapsed(),
        requests: o.count,
    })
}

fn worker(sh: &Shared<'_>) {
    // Page-aligned as qemu-img's (unaligned copies are slower in the kernel).
    let mut buf = crate::io::AlignedBuf::with_len(sh.o.buffer_size as usize);
    buf.fill(sh.o.pattern);
    while let Some(off) = take(sh) {
        let r = if sh.o.write {
            sh.img.write_at(&buf, off)
        } else {
            sh.img.read_at(&mut buf, off)
        };
        if let Err(e) = r.and_then(|()| complete(sh)) {
            fail(sh, e);
            return;
        }
    }
}

fn lock<'a>(sh: &'a Shared<'_>) -> std::sync::MutexGuard<'a, State> {
    sh.state.lock().unwrap_or_else(|p| p.into_inner())
}

/// Wait for a request to issue; None when there is nothing left to do.
fn take(sh: &Shared<'_>) -> Option<u64> {
    let mut st = lock(sh);
    loop {
        if st.error.is_some() || st.n <= st.in_flight {
            return None;
        }
        if !st.in_flush && st.in_flight < sh.o.depth {
            break;
        }
        st = sh.wake.wait(st).unwrap_or_else(|p| p.into_inner());
    }
    let off = st.next_offset;
    st.in_flight += 1;
    let mut next = st.next_offset.wrapping_add(sh.o.effective_step());
    // qemu-img wraps at the image size (a request that then crosses the
    // end fails, as it does there).
    next = if sh.size <= sh.o.buffer_size {
        0
    } else {
        next % sh.size
    };
    st.next_offset = next;
    Some(off)
}

/// A request finished: account for it and flush when it is time.
fn complete(sh: &Shared<'_>) -> Result<()> {
    let mut st = lock(sh);
    let remaining = st.n - st.in_flight;
    st.n -= 1;
    st.in_flight -= 1;
    let fi = sh.o.flush_interval;
    if fi > 0 && remaining.is_multiple_of(fi) {
        if sh.o.drain_on_flush {
            st.in_flush = true;
            if st.in_flight > 0 {
                // The last request in flight flushes.
                return Ok(());
            }
            drop(st);
            let r = sh.img.flush();
            let mut st = lock(sh);
            st.in_flush = false;
            drop(st);
            sh.wake.notify_all();
            return r;
        }
        drop(st);
        sh.img.flush()?;
        sh.wake.notify_all();
        return Ok(());
    }
    if st.in_flush && st.in_flight == 0 {
        // Drained: the flush that waited for us is ours to issue.
        drop(st);
        let r = sh.img.flush();
        lock(sh).in_flush = false;
        sh.wake.notify_all();
        return r;
    }
    drop(st);
    sh.wake.notify_all();
    Ok(())
}

fn fail(sh: &Shared<'_>, e: Error) {
    let mut st = lock(sh);
    if st.error.is_none() {
        st.error = Some(e);
    }
    drop(st);
    sh.wake.notify_all();
}

/// qemu-img's message for a failed request.
pub fn request_error(e: &Error) -> String {
    let text = match e.errno() {
        Some(n) => crate::error::strerror(n),
        // Requests past the end fail with EIO in QEMU.
        None => crate::error::strerror(libc::EIO),
    };
    format!("Failed request: {text}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_like_qemu() {
        let o = BenchOptions::default();
        assert_eq!(
            o.header(),
            "Sending 75000 read requests, 4096 bytes each, 64 in parallel (starting at offset 0, step size 4096)\n"
        );
        let o = BenchOptions {
            write: true,
            flush_interval: 64,
            ..BenchOptions::default()
        };
        assert!(o.header().ends_with("Sending flush every 64 requests\n"));
    }
}
