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

/// Compress one cluster. None when the result would not be smaller than
/// `cluster_size - 1` bytes (then the cluster is stored uncompressed).
pub fn compress(kind: Compression, data: &[u8], cluster_size: usize) -> Result<Option<Vec<u8>>> {
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
    let bad = || Error::corrupt("Could not decompress cluster");
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
    fn garbage_fails_cleanly() {
        let mut out = vec![0u8; 4096];
        for kind in [Compression::Zlib, Compression::Zstd] {
            assert!(decompress(kind, &[0xff; 100], &mut out).is_err());
            assert!(decompress(kind, &[], &mut out).is_err());
        }
    }
}
