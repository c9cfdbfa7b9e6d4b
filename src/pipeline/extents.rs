//! The extent helpers every data path uses: which parts of a chunk hold source data, where the next
//! data starts, filling a chunk from the source's data extents only, and the all-zero test.

use crate::error::Result;
use crate::image::{DiskImage, Extent, ExtentKind};

/// Fills `buf` with the source's bytes at `off`: only `Data` extents are read, the rest (and anything past
/// the source's end) is zeroed. Returns the number of bytes read from the source. Only the gaps are
/// zeroed: a dense chunk costs one read, not a memset and a read.
pub fn fill(image: &dyn DiskImage, extents: &[Extent], buf: &mut [u8], off: u64) -> Result<u64> {
    let end = off + buf.len() as u64;
    let (mut read, mut filled) = (0, off);
    let first = extents.partition_point(|e| e.offset + e.len <= off);
    for e in extents[first..].iter().take_while(|e| e.offset < end) {
        if e.kind != ExtentKind::Data {
            continue;
        }
        let a = e.offset.max(filled);
        let b = (e.offset + e.len).min(end);
        if a >= b {
            continue;
        }
        buf[(filled - off) as usize..(a - off) as usize].fill(0);
        image.read_at(&mut buf[(a - off) as usize..(b - off) as usize], a)?;
        read += b - a;
        filled = b;
    }
    buf[(filled - off) as usize..].fill(0);
    Ok(read)
}

/// Sub-ranges of `[off, off+len)` (relative, rounded out to whole `unit`s, merged) that hold source
/// data.
pub fn data_ranges(extents: &[Extent], off: u64, len: u64, unit: u64) -> Vec<(u64, u64)> {
    let end = off + len;
    let mut out: Vec<(u64, u64)> = Vec::new();
    let first = extents.partition_point(|e| e.offset + e.len <= off);
    for e in extents[first..].iter().take_while(|e| e.offset < end) {
        if e.kind != ExtentKind::Data {
            continue;
        }
        let a = (e.offset.max(off) - off) / unit * unit;
        let b = ((e.offset + e.len).min(end) - off).div_ceil(unit) * unit;
        match out.last_mut() {
            Some(last) if last.1 >= a => last.1 = last.1.max(b),
            _ => out.push((a, b.min(len))),
        }
    }
    out
}

/// The parts of `0..len` where any of the allocation maps `maps` has data, rounded out to whole `unit`s
/// (clipped to `len`), merged, as sorted `(offset, length)` pairs: everything else reads as zeros in
/// every map, so [`Pipeline::scan_ranges`](super::Pipeline::scan_ranges) need not visit it.
pub fn data_spans(maps: &[&[Extent]], len: u64, unit: u64) -> Vec<(u64, u64)> {
    let mut spans: Vec<(u64, u64)> = maps
        .iter()
        .flat_map(|m| m.iter())
        .filter(|e| e.kind == ExtentKind::Data && e.offset < len && e.len > 0)
        .map(|e| {
            let a = e.offset / unit * unit;
            let b = (e.offset + e.len)
                .div_ceil(unit)
                .saturating_mul(unit)
                .min(len);
            (a, b)
        })
        .collect();
    spans.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(spans.len());
    for (a, b) in spans {
        match out.last_mut() {
            Some(last) if last.0 + last.1 >= a => last.1 = last.1.max(b - last.0),
            _ => out.push((a, b - a)),
        }
    }
    out
}

/// The first offset at or after `off` where `extents` has data (`len` if none).
pub fn next_data(extents: &[Extent], off: u64, len: u64) -> u64 {
    extents[extents.partition_point(|e| e.offset + e.len <= off)..]
        .iter()
        .find(|e| e.kind == ExtentKind::Data)
        .map_or(len, |e| e.offset.max(off))
}

/// True when `buf` holds only zero bytes (word-wise, fast on the all-zero case).
pub fn is_zero(buf: &[u8]) -> bool {
    let (words, rest) = buf.split_at(buf.len() / 8 * 8);
    words.chunks_exact(64).all(|c| {
        c.chunks_exact(8).fold(0u64, |acc, w| {
            acc | u64::from_ne_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]])
        }) == 0
    }) && words.chunks_exact(64).remainder().iter().all(|&b| b == 0)
        && rest.iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(offset: u64, len: u64, kind: ExtentKind) -> Extent {
        Extent { offset, len, kind }
    }

    /// A disk whose byte at `o` is `o | 1` (never zero).
    #[derive(Debug)]
    struct Counting;
    impl DiskImage for Counting {
        fn format_name(&self) -> &'static str {
            "raw"
        }
        fn virtual_size(&self) -> u64 {
            1 << 20
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
            for (i, b) in buf.iter_mut().enumerate() {
                *b = (offset + i as u64) as u8 | 1;
            }
            Ok(())
        }
        fn info(&self) -> crate::image::ImageInfo {
            unreachable!()
        }
    }

    /// Data extents are read, everything else (holes, zero extents, past the end) is zeros, whatever the
    /// buffer held before.
    #[test]
    fn fill_reads_data_and_zeroes_only_the_rest() {
        let e = [
            ext(0, 10, ExtentKind::Data),
            ext(10, 20, ExtentKind::Unallocated),
            ext(30, 5, ExtentKind::Data),
            ext(35, 5, ExtentKind::Data),
            ext(40, 10, ExtentKind::Zero),
            ext(50, 6, ExtentKind::Data),
        ];
        for (off, len) in [
            (0u64, 64usize),
            (5, 30),
            (12, 10),
            (33, 4),
            (52, 12),
            (60, 8),
        ] {
            let mut buf = vec![0xeeu8; len];
            let n = fill(&Counting, &e, &mut buf, off).unwrap();
            let want: Vec<u8> = (off..off + len as u64)
                .map(|o| {
                    let data = e.iter().any(|x| {
                        x.kind == ExtentKind::Data && (x.offset..x.offset + x.len).contains(&o)
                    });
                    if data { o as u8 | 1 } else { 0 }
                })
                .collect();
            assert_eq!(buf, want, "{off}+{len}");
            assert_eq!(
                n,
                want.iter().filter(|&&b| b != 0).count() as u64,
                "{off}+{len}"
            );
        }
    }

    #[test]
    fn ranges_round_out_and_merge() {
        let e = [
            ext(0, 100, ExtentKind::Unallocated),
            ext(100, 10, ExtentKind::Data),
            ext(110, 400, ExtentKind::Zero),
            ext(510, 20, ExtentKind::Data),
            ext(530, 1000, ExtentKind::Unallocated),
        ];
        assert_eq!(data_ranges(&e, 0, 1024, 512), vec![(0, 1024)]);
        assert_eq!(data_ranges(&e, 0, 1024, 64), vec![(64, 128), (448, 576)]);
        assert_eq!(next_data(&e, 0, 2000), 100);
        assert_eq!(next_data(&e, 120, 2000), 510);
        assert_eq!(next_data(&e, 600, 2000), 2000);
    }

    #[test]
    fn spans_merge_maps_and_round_out() {
        let a = [
            ext(0, 100, ExtentKind::Unallocated),
            ext(100, 10, ExtentKind::Data),
            ext(110, 4000, ExtentKind::Zero),
            ext(9000, 10, ExtentKind::Data),
        ];
        let b = [
            ext(0, 4096, ExtentKind::Zero),
            ext(4096, 5000, ExtentKind::Data),
        ];
        assert_eq!(data_spans(&[&a], 9010, 512), vec![(0, 512), (8704, 306)]);
        assert_eq!(data_spans(&[&a, &b], 9010, 4096), vec![(0, 9010)]);
        assert_eq!(data_spans(&[&b], 20000, 4096), vec![(4096, 8192)]);
        assert!(data_spans(&[], 100, 512).is_empty());
    }

    #[test]
    fn zero_test() {
        let mut b = vec![0u8; 1003];
        assert!(is_zero(&b));
        for i in [0, 511, 512, 1002] {
            b[i] = 1;
            assert!(!is_zero(&b), "{i}");
            b[i] = 0;
        }
    }
}
