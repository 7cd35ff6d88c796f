//! Compressed clusters: zlib (raw deflate, 4 KiB window as QEMU uses) and
//! zstd. Decompression stops once a cluster is full: the stored bytes are
//! sector-rounded and may be followed by unrelated data.

use flate2::{Compress, Decompress, FlushCompress, FlushDecompress, Status};

use super::header::Compression;
use crate::error::{Error, Result};

/// QEMU deflates with windowBits -12 and inflates with the same, so our
/// streams must not use a larger window.
const ZLIB_WINDOW_BITS: u8 = 12;
/// zstd's default level, which QEMU uses.
const ZSTD_LEVEL: i32 = 3;

/// Bytes sampled by the incompressibility probe.
const PROBE_BYTES: usize = 8192;

/// True when `data` is almost surely incompressible (random, encrypted or
/// already compressed): its byte histogram is flat to within a sample's
/// noise AND a fast deflate of its head finds nothing to shrink. A full
/// deflate of such a cluster costs as much as a compressible one and is
/// thrown away (QEMU then stores it raw, as we do); skipping it is where
/// most of `convert -c`'s time on real disks goes.
fn likely_incompressible(data: &[u8]) -> bool {
    if data.len() < 4 * PROBE_BYTES {
        return false;
    }
    let mut hist = [0u32; 256];
    for &b in data {
        hist[b as usize] += 1;
    }
    let n = data.len() as f64;
    let entropy: f64 = hist
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / n;
            -p * p.log2()
        })
        .sum();
    // 64 KiB of uniform random bytes measure ~7.997 bits/byte; anything
    // with structure (text, code, repeated blocks of up to a few KiB) is
    // clearly below.
    if entropy < 7.99 {
        return false;
    }
    let mut c =
        Compress::new_with_window_bits(flate2::Compression::fast(), false, ZLIB_WINDOW_BITS);
    let mut out = vec![0u8; PROBE_BYTES - PROBE_BYTES / 64];
    !matches!(
        c.compress(&data[..PROBE_BYTES], &mut out, FlushCompress::Finish),
        Ok(Status::StreamEnd)
    )
}

/// Compress one cluster. None when the result would not be smaller than
/// `cluster_size - 1` bytes (then the cluster is stored uncompressed).
pub fn compress(kind: Compression, data: &[u8], cluster_size: usize) -> Result<Option<Vec<u8>>> {
    if likely_incompressible(data) {
        return Ok(None);
    }
    let limit = cluster_size - 1;
    match kind {
        Compression::Zlib => {
            let mut c = Compress::new_with_window_bits(
                flate2::Compression::default(),
                false,
                ZLIB_WINDOW_BITS,
            );
            let mut out = vec![0u8; limit];
            match c.compress(data, &mut out, FlushCompress::Finish) {
                Ok(Status::StreamEnd) => {
                    out.truncate(c.total_out() as usize);
                    Ok(Some(out))
                }
                Ok(_) => Ok(None),
                Err(e) => Err(Error::new(
                    crate::error::ErrorKind::Io,
                    format!("zlib compression failed: {e}"),
                )),
            }
        }
        Compression::Zstd => {
            let mut out = vec![0u8; limit];
            match zstd::bulk::compress_to_buffer(data, &mut out, ZSTD_LEVEL) {
                Ok(n) => {
                    out.truncate(n);
                    Ok(Some(out))
                }
                // "Destination buffer is too small": not worth compressing.
                Err(_) => Ok(None),
            }
        }
    }
}

/// Decompress into `out` (one cluster); the input may carry trailing bytes.
pub fn decompress(kind: Compression, input: &[u8], out: &mut [u8]) -> Result<()> {
    // QEMU reports a bad compressed cluster as a plain I/O error.
    let bad = || Error::from_errno(libc::EIO);
    match kind {
        Compression::Zlib => {
            let mut d = Decompress::new(false);
            match d.decompress(input, out, FlushDecompress::Finish) {
                Ok(_) if d.total_out() as usize == out.len() => Ok(()),
                _ => Err(bad()),
            }
        }
        Compression::Zstd => {
            use zstd::stream::raw::{Decoder, InBuffer, Operation, OutBuffer};
            let mut dec = Decoder::new().map_err(|_| bad())?;
            let mut inb = InBuffer::around(input);
            let mut outb = OutBuffer::around(out);
            loop {
                let before_in = inb.pos();
                let before_out = outb.pos();
                let hint = dec.run(&mut inb, &mut outb).map_err(|_| bad())?;
                if outb.pos() == outb.capacity() {
                    return Ok(());
                }
                if hint == 0
                    || (inb.pos() == before_in && outb.pos() == before_out)
                    || inb.pos() >= input.len()
                {
                    // Frame ended or no progress before the cluster filled.
                    if outb.pos() == outb.capacity() {
                        return Ok(());
                    }
                    return Err(bad());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_both_kinds() {
        let data: Vec<u8> = (0..65536u32)
            .map(|i| (i % 251) as u8 ^ (i / 4096) as u8)
            .collect();
        for kind in [Compression::Zlib, Compression::Zstd] {
            let c = compress(kind, &data, 65536).unwrap().expect("compressible");
            let mut padded = c.clone();
            padded.extend_from_slice(&[0xAA; 700]);
            let mut out = vec![0u8; 65536];
            decompress(kind, &padded, &mut out).unwrap();
            assert_eq!(out, data);
        }
    }

    #[test]
    fn random_data_is_not_compressed() {
        let mut x = 0x1234_5678u32;
        let data: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        assert!(compress(Compression::Zlib, &data, 4096).unwrap().is_none());
    }

    #[test]
    fn probe_keeps_structured_data() {
        // A 2 KiB random block repeated: flat-ish histogram, but deflate's
        // 4 KiB window finds the repeats, so it must still be compressed.
        let mut x = 0x9e37_79b9u32;
        let block: Vec<u8> = (0..2048)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        let data: Vec<u8> = block.iter().cycle().take(65536).copied().collect();
        assert!(compress(Compression::Zlib, &data, 65536).unwrap().is_some());
        let random: Vec<u8> = (0..65536)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x >> 11) as u8
            })
            .collect();
        assert!(likely_incompressible(&random));
        assert!(compress(Compression::Zstd, &random, 65536)
            .unwrap()
            .is_none());
    }

    #[test]
    fn garbage_fails_cleanly() {
        let mut out = vec![0u8; 4096];
        for kind in [Compression::Zlib, Compression::Zstd] {
            assert!(decompress(kind, &[0xff; 100], &mut out).is_err());
            assert!(decompress(kind, &[], &mut out).is_err());
        }
    }
}
