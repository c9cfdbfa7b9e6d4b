//! Compressed clusters: decoding the L2 descriptor into a host byte range, and inflating it into one
//! whole cluster. zlib clusters are raw deflate streams (no zlib header); zstd clusters hold one zstd
//! frame. As in QEMU, the stored length is only known to 512-byte precision, so a cluster decodes
//! successfully when the output cluster is *full* (trailing input is ignored); an image whose data
//! inflates to less, or to more, is refused.

use std::io::Read;

/// Where a compressed cluster's bytes are in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompressedDesc {
    /// Host byte offset (not aligned).
    pub offset: u64,
    /// Bytes to read (up to the end of the last sector the data touches).
    pub len: u64,
}

impl CompressedDesc {
    /// Decodes a compressed L2 entry (bit 62 set) for `cluster_bits`.
    pub fn from_entry(entry: u64, cluster_bits: u32) -> CompressedDesc {
        let x = 62 - (cluster_bits - 8);
        let offset = entry & ((1u64 << x) - 1);
        let sectors = ((entry >> x) & ((1u64 << (cluster_bits - 8)) - 1)) + 1;
        CompressedDesc {
            offset,
            len: sectors * 512 - (offset & 511),
        }
    }
}

/// Why a cluster did not decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InflateError {
    /// The stream is malformed (the codec's message).
    Garbage(String),
    /// The stream ended after this many bytes, short of the cluster size.
    Short(usize),
    /// The stream holds more than one cluster of data.
    TooLong,
}

impl std::fmt::Display for InflateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InflateError::Garbage(m) => write!(f, "invalid compressed data ({m})"),
            InflateError::Short(n) => write!(f, "compressed data inflates to only {n:#x} bytes"),
            InflateError::TooLong => {
                f.write_str("compressed data inflates to more than one cluster")
            }
        }
    }
}

/// Largest zstd window accepted: QEMU compresses one cluster (≤ 2 MiB) per frame, so its windows are
/// at most 2 MiB; this bounds what a hostile frame can make the (per-thread, reused) decoder allocate.
const MAX_ZSTD_WINDOW: u64 = 8 << 20;

/// Inflates raw deflate `input` into `out` (one cluster); success iff `out` is filled.
pub fn inflate_zlib(input: &[u8], out: &mut [u8]) -> Result<(), InflateError> {
    let mut d = flate2::Decompress::new(false);
    loop {
        let before_in = d.total_in();
        let before_out = d.total_out();
        let pos_in = before_in as usize;
        let pos_out = before_out as usize;
        let status = d
            .decompress(
                &input[pos_in..],
                &mut out[pos_out..],
                flate2::FlushDecompress::Finish,
            )
            .map_err(|e| InflateError::Garbage(e.to_string()))?;
        let produced = d.total_out() as usize;
        if produced == out.len() {
            return Ok(());
        }
        match status {
            flate2::Status::StreamEnd => return Err(InflateError::Short(produced)),
            _ if d.total_in() == before_in && d.total_out() == before_out => {
                return Err(InflateError::Short(produced));
            }
            _ => {}
        }
    }
}

/// Decodes a zstd frame in `input` into `out` (one cluster); success iff `out` is filled and the frame
/// produces nothing more.
pub fn inflate_zstd(input: &[u8], out: &mut [u8]) -> Result<(), InflateError> {
    thread_local! {
        // The decoder's tables and buffers are reused across clusters (per thread).
        static DECODER: std::cell::RefCell<ruzstd::decoding::FrameDecoder> = std::cell::RefCell::new({
            let mut d = ruzstd::decoding::FrameDecoder::new();
            d.set_max_window_size(MAX_ZSTD_WINDOW);
            d
        });
    }
    DECODER.with(|d| match d.try_borrow_mut() {
        Ok(mut d) => inflate_zstd_with(&mut d, input, out),
        Err(_) => {
            let mut fresh = ruzstd::decoding::FrameDecoder::new();
            fresh.set_max_window_size(MAX_ZSTD_WINDOW);
            inflate_zstd_with(&mut fresh, input, out)
        }
    })
}

fn inflate_zstd_with(
    decoder: &mut ruzstd::decoding::FrameDecoder,
    input: &[u8],
    out: &mut [u8],
) -> Result<(), InflateError> {
    let mut src = input;
    let mut dec = ruzstd::decoding::StreamingDecoder::new_with_decoder(&mut src, decoder)
        .map_err(|e| InflateError::Garbage(e.to_string()))?;
    let mut filled = 0;
    while filled < out.len() {
        match dec.read(&mut out[filled..]) {
            Ok(0) => return Err(InflateError::Short(filled)),
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(InflateError::Garbage(e.to_string())),
        }
    }
    let mut extra = [0u8; 1];
    match dec.read(&mut extra) {
        Ok(0) => Ok(()),
        Ok(_) => Err(InflateError::TooLong),
        // The input is only known to sector precision: running out of it after a full cluster is fine
        // only if the frame was complete, which the decoder would have reported as 0 above.
        Err(e) => Err(InflateError::Garbage(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn descriptor_decodes_offset_and_length() {
        // 64 KiB clusters: x = 54; 3 sectors starting at 0x50123.
        let entry = (1u64 << 62) | (2u64 << 54) | 0x50123;
        let d = CompressedDesc::from_entry(entry, 16);
        assert_eq!(
            d,
            CompressedDesc {
                offset: 0x50123,
                len: 3 * 512 - 0x123
            }
        );
    }

    #[test]
    fn zlib_full_output_is_success_and_short_is_refused() {
        let data: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
        let mut enc =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(&data).unwrap();
        let mut z = enc.finish().unwrap();
        z.resize(z.len().div_ceil(512) * 512, 0xAA); // sector padding junk
        let mut out = vec![0u8; 4096];
        inflate_zlib(&z, &mut out).unwrap();
        assert_eq!(out, data);
        let mut big = vec![0u8; 8192];
        assert!(matches!(
            inflate_zlib(&z, &mut big),
            Err(InflateError::Short(4096))
        ));
        let mut out = vec![0u8; 4096];
        assert!(inflate_zlib(&[0xff; 64], &mut out).is_err());
        assert!(inflate_zlib(&[], &mut out).is_err());
    }

    #[test]
    fn zstd_exact_cluster_only() {
        let data: Vec<u8> = (0..8192u32).map(|i| (i % 13) as u8).collect();
        let mut z = ruzstd::encoding::compress_to_vec(
            &data[..],
            ruzstd::encoding::CompressionLevel::Fastest,
        );
        z.resize(z.len().div_ceil(512) * 512, 0); // sector padding
        let mut out = vec![0u8; 8192];
        inflate_zstd(&z, &mut out).unwrap();
        assert_eq!(out, data);
        assert_eq!(
            inflate_zstd(&z, &mut [0u8; 4096]),
            Err(InflateError::TooLong)
        );
        assert_eq!(
            inflate_zstd(&z, &mut vec![0u8; 16384]),
            Err(InflateError::Short(8192))
        );
        // The reused decoder is not disturbed by the failures.
        inflate_zstd(&z, &mut out).unwrap();
        assert_eq!(out, data);
    }

    #[test]
    fn zstd_garbage_is_an_error() {
        let mut out = vec![0u8; 4096];
        assert!(inflate_zstd(&[0xff; 64], &mut out).is_err());
        assert!(inflate_zstd(&[], &mut out).is_err());
        let mut frame = vec![0x28, 0xb5, 0x2f, 0xfd];
        frame.extend([0xff; 60]);
        assert!(inflate_zstd(&frame, &mut out).is_err());
    }
}
