//! Hosted sparse extents (Virtual Disk Format 5.0, "Hosted Sparse Extent Header", "Grain Directories and
//! Grain Tables", "Stream-Optimized Compressed Sparse Extents"): the 512-byte little-endian header
//! ([`RawHeader`], decoded apart from its checks in [`SparseExtent::open`]), the grain directory (GD) and
//! grain tables (GT), zeroed-grain entries, and streamOptimized grains (zlib-deflated, each behind a
//! 12-byte grain marker) with the footer that holds the real GD offset when the header says `GD_AT_END`.
//!
//! The GD is read at open (bounded); grain tables are read when needed. The redundant GD is ignored, as
//! QEMU does. Every offset is checked against the file's length before it is followed.

use std::fs::File;
use std::path::{Path, PathBuf};

use flate2::{Decompress, FlushDecompress, Status};

use crate::error::{Error, Result};
use crate::image::{Extent, ExtentKind, push_extent};
use crate::io::read_exact_at;

/// Size of the header (and of a marker sector).
pub const HEADER_SIZE: usize = 512;
/// "KDMV".
pub const MAGIC: [u8; 4] = crate::image::detect::VMDK_MAGIC;
/// `gdOffset` value meaning "the GD offset is in the footer".
pub const GD_AT_END: u64 = u64::MAX;
/// Flag: zeroed-grain GT entries (value 1) are used.
pub const FLAG_ZERO_GRAIN: u32 = 1 << 2;
/// Flag: grains are compressed.
pub const FLAG_COMPRESSED: u32 = 1 << 16;
/// Flag: the stream has markers.
pub const FLAG_MARKERS: u32 = 1 << 17;
/// `compressAlgorithm` deflate (zlib stream).
pub const COMPRESS_DEFLATE: u16 = 1;
/// GT entry of a zeroed grain.
pub const GTE_ZEROED: u32 = 1;
/// Marker types (stream-optimized): end of stream, grain table, grain directory, footer.
pub const MARKER_EOS: u32 = 0;
/// Footer marker type.
pub const MARKER_FOOTER: u32 = 3;
/// Largest grain accepted (VMware and qemu-img write 64 KiB; QEMU reads up to 1 GiB, which would cost
/// three times that much memory per compressed read and thread).
pub const MAX_GRAIN: u64 = 2 << 20;
/// Largest grain directory accepted, in entries (QEMU: 32 Mi).
pub const MAX_GD_ENTRIES: u64 = 32 << 20;

/// The header exactly as stored (little-endian).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawHeader {
    /// "KDMV".
    pub magic: [u8; 4],
    /// 1, 2 or 3.
    pub version: u32,
    /// Flags (newline test, redundant GD, zeroed grain, compressed, markers).
    pub flags: u32,
    /// Capacity in sectors.
    pub capacity: u64,
    /// Grain size in sectors.
    pub grain_size: u64,
    /// Embedded descriptor offset, sectors.
    pub desc_offset: u64,
    /// Embedded descriptor size, sectors.
    pub desc_size: u64,
    /// GT entries per grain table.
    pub num_gtes_per_gt: u32,
    /// Redundant GD offset, sectors.
    pub rgd_offset: u64,
    /// GD offset, sectors ([`GD_AT_END`]: in the footer).
    pub gd_offset: u64,
    /// Metadata overhead, sectors.
    pub overhead: u64,
    /// Unclean shutdown flag.
    pub unclean_shutdown: u8,
    /// `\n`, ` `, `\r`, `\n` (corruption test for text-mode transfers).
    pub newline_test: [u8; 4],
    /// 0 none, 1 deflate.
    pub compress_algorithm: u16,
}

impl RawHeader {
    /// Decodes the 512-byte header.
    pub fn decode(b: &[u8; HEADER_SIZE]) -> RawHeader {
        let u32_at = |at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        let u64_at = |at: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[at..at + 8]);
            u64::from_le_bytes(x)
        };
        RawHeader {
            magic: [b[0], b[1], b[2], b[3]],
            version: u32_at(4),
            flags: u32_at(8),
            capacity: u64_at(12),
            grain_size: u64_at(20),
            desc_offset: u64_at(28),
            desc_size: u64_at(36),
            num_gtes_per_gt: u32_at(44),
            rgd_offset: u64_at(48),
            gd_offset: u64_at(56),
            overhead: u64_at(64),
            unclean_shutdown: b[72],
            newline_test: [b[73], b[74], b[75], b[76]],
            compress_algorithm: u16::from_le_bytes([b[77], b[78]]),
        }
    }
}

/// An opened hosted sparse extent.
#[derive(Debug)]
pub struct SparseExtent {
    file: File,
    path: PathBuf,
    /// Where the extent starts in `file` (non-zero inside an OVA).
    base: u64,
    /// The extent's length in `file`.
    file_len: u64,
    /// The header in effect (the footer's, for `GD_AT_END`).
    pub header: RawHeader,
    /// Capacity in bytes.
    pub capacity: u64,
    /// Grain size in bytes.
    pub grain: u64,
    gtes: u64,
    gd: Vec<u32>,
    compressed: bool,
    markers: bool,
    zero_grain: bool,
}

/// The state of one grain.
enum Grain {
    Unallocated,
    Zero,
    At(u64),
}

impl SparseExtent {
    /// Reads and checks the header (and footer), and loads the grain directory. `head` is the file's
    /// first sector.
    pub fn open(file: File, path: &Path, head: &[u8; HEADER_SIZE]) -> Result<SparseExtent> {
        let file_len = crate::io::input_len(&file, path)?;
        SparseExtent::open_window(file, path, 0, file_len, head)
    }

    /// Like [`SparseExtent::open`], for an extent stored at `base..base + file_len` of `file` (a file in
    /// a tar archive); every offset is relative to `base`.
    pub fn open_window(
        file: File,
        path: &Path,
        base: u64,
        file_len: u64,
        head: &[u8; HEADER_SIZE],
    ) -> Result<SparseExtent> {
        let mut h = RawHeader::decode(head);
        let bad = |msg: String, at: u64| Error::corrupt(msg).with_path(path).at(at);
        if h.magic != MAGIC {
            return Err(
                Error::format("not a VMDK sparse extent (no \"KDMV\" magic)")
                    .with_path(path)
                    .at(0),
            );
        }
        if h.gd_offset == GD_AT_END {
            h = read_footer(&file, path, base, file_len)?;
        }
        if !(1..=3).contains(&h.version) {
            return Err(
                Error::unsupported(format!("VMDK sparse extent version {}", h.version))
                    .with_path(path)
                    .at(4)
                    .hint("versions 1 to 3 are known"),
            );
        }
        if h.compress_algorithm > COMPRESS_DEFLATE {
            return Err(Error::unsupported(format!(
                "VMDK compressAlgorithm {} (known: 0 none, 1 deflate)",
                h.compress_algorithm
            ))
            .with_path(path)
            .at(77));
        }
        let grain = h
            .grain_size
            .checked_mul(512)
            .filter(|&g| g > 0 && g <= MAX_GRAIN)
            .ok_or_else(|| {
                bad(
                    format!(
                        "VMDK header field 'grainSize' is {} sectors (diskseal accepts 1 to {})",
                        h.grain_size,
                        MAX_GRAIN / 512
                    ),
                    20,
                )
            })?;
        if h.num_gtes_per_gt == 0 || h.num_gtes_per_gt > 512 {
            return Err(bad(
                format!(
                    "VMDK header field 'numGTEsPerGT' is {} (1 to 512)",
                    h.num_gtes_per_gt
                ),
                44,
            ));
        }
        let capacity = h.capacity.checked_mul(512).ok_or_else(|| {
            bad(
                format!("VMDK capacity {} sectors overflows", h.capacity),
                12,
            )
        })?;
        let gtes = u64::from(h.num_gtes_per_gt);
        let gd_len = capacity.div_ceil(grain).div_ceil(gtes);
        if gd_len > MAX_GD_ENTRIES {
            return Err(bad(
                format!("VMDK grain directory of {gd_len} entries is too large"),
                12,
            ));
        }
        let gd_at = h
            .gd_offset
            .checked_mul(512)
            .filter(|at| at.checked_add(gd_len * 4).is_some_and(|e| e <= file_len))
            .ok_or_else(|| {
                bad(
                    format!(
                        "VMDK grain directory ({gd_len} entries at sector {}) lies past the end of the file ({file_len} bytes)",
                        h.gd_offset
                    ),
                    56,
                )
                .hint("the file is truncated or the header is damaged")
            })?;
        let mut raw = vec![0u8; usize::try_from(gd_len * 4).unwrap_or(usize::MAX)];
        read_exact_at(&file, path, &mut raw, base + gd_at)?;
        let gd = raw
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok(SparseExtent {
            file,
            path: path.to_owned(),
            base,
            file_len,
            compressed: h.compress_algorithm == COMPRESS_DEFLATE,
            markers: h.flags & FLAG_MARKERS != 0,
            zero_grain: h.flags & FLAG_ZERO_GRAIN != 0,
            header: h,
            capacity,
            grain,
            gtes,
            gd,
        })
    }

    /// The embedded descriptor's bytes, if the header names one (bounded, within the file).
    pub fn embedded_descriptor(&self) -> Result<Option<Vec<u8>>> {
        let h = &self.header;
        if h.desc_offset == 0 || h.desc_size == 0 {
            return Ok(None);
        }
        let at = h.desc_offset.saturating_mul(512);
        let len = h
            .desc_size
            .saturating_mul(512)
            .min(super::descriptor::MAX_SIZE);
        if at.checked_add(len).is_none_or(|e| e > self.file_len) {
            return Err(Error::corrupt(format!(
                "VMDK embedded descriptor (sector {}, {} sectors) lies past the end of the file",
                h.desc_offset, h.desc_size
            ))
            .with_path(&self.path)
            .at(28));
        }
        let mut b = vec![0u8; len as usize];
        self.pread(&mut b, at)?;
        Ok(Some(b))
    }

    /// Reads `buf.len()` bytes at extent offset `at`.
    fn pread(&self, buf: &mut [u8], at: u64) -> Result<()> {
        read_exact_at(&self.file, &self.path, buf, self.base + at)
    }

    /// True for stream-optimized (compressed) extents.
    pub fn is_compressed(&self) -> bool {
        self.compressed
    }

    /// The GT entries of grains `first..first + n` (all within one grain table); `None` when the table
    /// is not allocated.
    fn table(&self, first: u64, n: u64) -> Result<Option<Vec<u32>>> {
        let gt = first / self.gtes;
        let sector = self.gd[gt as usize];
        if sector == 0 {
            return Ok(None);
        }
        let at = u64::from(sector) * 512 + (first % self.gtes) * 4;
        if at + n * 4 > self.file_len {
            return Err(Error::corrupt(format!(
                "VMDK grain table {gt} (sector {sector}) lies past the end of the file ({} bytes)",
                self.file_len
            ))
            .with_path(&self.path)
            .at(self.header.gd_offset * 512 + gt * 4)
            .hint("the file is truncated or its grain directory is damaged"));
        }
        let mut raw = vec![0u8; (n * 4) as usize];
        self.pread(&mut raw, at)?;
        Ok(Some(
            raw.chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ))
    }

    fn grain_of(&self, g: u64, entry: u32) -> Result<Grain> {
        Ok(match entry {
            0 => Grain::Unallocated,
            GTE_ZEROED if self.zero_grain => Grain::Zero,
            e => {
                let at = u64::from(e) * 512;
                if at >= self.file_len {
                    return Err(Error::corrupt(format!(
                        "VMDK grain {g} is at sector {e}, past the end of the file ({} bytes)",
                        self.file_len
                    ))
                    .with_path(&self.path)
                    .hint("the file is truncated or its grain table is damaged"));
                }
                Grain::At(at)
            }
        })
    }

    /// Calls `f(first grain, count, grain)` for the grains overlapping `off..off + len`: one call per
    /// grain, or one per run of grains whose grain table is not allocated.
    fn each_grain(
        &self,
        off: u64,
        len: u64,
        mut f: impl FnMut(u64, u64, Grain) -> Result<()>,
    ) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        let (first, last) = (off / self.grain, (off + len - 1) / self.grain);
        let mut g = first;
        while g <= last {
            let n = (self.gtes - g % self.gtes).min(last - g + 1);
            match self.table(g, n)? {
                None => f(g, n, Grain::Unallocated)?,
                Some(t) => {
                    for (i, &e) in t.iter().enumerate() {
                        f(g + i as u64, 1, self.grain_of(g + i as u64, e)?)?;
                    }
                }
            }
            g += n;
        }
        Ok(())
    }

    /// Reads `buf.len()` bytes at extent offset `off`; unallocated grains come from `below(buf, off)`.
    pub fn read(
        &self,
        buf: &mut [u8],
        off: u64,
        below: &dyn Fn(&mut [u8], u64) -> Result<()>,
    ) -> Result<()> {
        let end = off + buf.len() as u64;
        let mut scratch = Vec::new();
        self.each_grain(off, buf.len() as u64, |g, n, grain| {
            let gs = g * self.grain;
            let (a, b) = (gs.max(off), (gs + n * self.grain).min(end));
            let part = &mut buf[(a - off) as usize..(b - off) as usize];
            match grain {
                Grain::Unallocated => below(part, a),
                Grain::Zero => {
                    part.fill(0);
                    Ok(())
                }
                Grain::At(at) if self.compressed => {
                    self.inflate(g, at, &mut scratch)?;
                    let from = (a - gs) as usize;
                    part.copy_from_slice(&scratch[from..from + part.len()]);
                    Ok(())
                }
                Grain::At(at) => self.pread(part, at + (a - gs)),
            }
        })
    }

    /// Inflates compressed grain `g` stored at `at` into `out` (one grain; short streams are padded with
    /// zeros only past the extent's capacity).
    fn inflate(&self, g: u64, at: u64, out: &mut Vec<u8>) -> Result<()> {
        let grain = self.grain as usize;
        let (data_at, len) = if self.markers {
            let mut m = [0u8; 12];
            self.pread(&mut m, at)?;
            let size = u64::from(u32::from_le_bytes([m[8], m[9], m[10], m[11]]));
            if size == 0 || size > 2 * self.grain || at + 12 + size > self.file_len {
                return Err(Error::corrupt(format!(
                    "VMDK grain marker of grain {g} gives a compressed size of {size} bytes (at most two grains, within the file)"
                ))
                .with_path(&self.path)
                .at(at + 8));
            }
            (at + 12, size)
        } else {
            (at, (2 * self.grain).min(self.file_len - at))
        };
        let mut packed = vec![0u8; len as usize];
        self.pread(&mut packed, data_at)?;
        out.clear();
        out.resize(grain + 1, 0);
        let mut z = Decompress::new(true);
        let status = z.decompress(&packed, out, FlushDecompress::Finish);
        let made = z.total_out() as usize;
        let bad = |why: &str| {
            Error::corrupt(format!("VMDK compressed grain {g} does not inflate: {why}"))
                .with_path(&self.path)
                .at(data_at)
                .hint("the file is damaged or truncated")
        };
        if made > grain {
            return Err(bad("it holds more than one grain"));
        }
        match status {
            Ok(Status::StreamEnd) => {}
            Ok(_) => return Err(bad("the deflate stream is cut short")),
            Err(e) => return Err(bad(&e.to_string())),
        }
        let need = (self.capacity - g * self.grain).min(self.grain) as usize;
        if made < need {
            return Err(bad(&format!(
                "it holds {made} bytes, the grain needs {need}"
            )));
        }
        out.truncate(grain);
        out[made..].fill(0);
        Ok(())
    }

    /// The extent's allocation: data, zeroed grains, and unallocated grains (extent-relative offsets).
    pub fn map(&self) -> Result<Vec<Extent>> {
        let mut out = Vec::new();
        self.each_grain(0, self.capacity, |g, n, grain| {
            let offset = g * self.grain;
            let kind = match grain {
                Grain::Unallocated => ExtentKind::Unallocated,
                Grain::Zero => ExtentKind::Zero,
                Grain::At(_) => ExtentKind::Data,
            };
            push_extent(
                &mut out,
                offset,
                (n * self.grain).min(self.capacity - offset),
                kind,
            );
            Ok(())
        })?;
        Ok(out)
    }
}

/// The footer of a stream-optimized extent whose header says `GD_AT_END`: footer marker, header copy,
/// end-of-stream marker in the last three sectors.
fn read_footer(file: &File, path: &Path, base: u64, file_len: u64) -> Result<RawHeader> {
    let bad = |what: &str, at: u64| {
        Error::corrupt(format!(
            "VMDK header says the grain directory is in the footer (GD_AT_END), but {what}"
        ))
        .with_path(path)
        .at(at)
        .hint("the stream-optimized file is truncated or damaged")
    };
    if file_len < 1536 + 512 {
        return Err(bad("the file is too short for a footer", 56));
    }
    let at = file_len - 1536;
    let mut b = [0u8; 1536];
    read_exact_at(file, path, &mut b, base + at)?;
    let le32 = |x: &[u8]| u32::from_le_bytes([x[0], x[1], x[2], x[3]]);
    let marker_ok = |m: &[u8], ty: u32| le32(&m[8..12]) == 0 && le32(&m[12..16]) == ty;
    if !marker_ok(&b[..512], MARKER_FOOTER) {
        return Err(bad(
            "there is no footer marker 1536 bytes before the end",
            at,
        ));
    }
    if !marker_ok(&b[1024..], MARKER_EOS) || b[1024..1032] != [0; 8] {
        return Err(bad(
            "there is no end-of-stream marker in the last sector",
            at + 1024,
        ));
    }
    let mut hb = [0u8; HEADER_SIZE];
    hb.copy_from_slice(&b[512..1024]);
    let h = RawHeader::decode(&hb);
    if h.magic != MAGIC {
        return Err(bad("the footer has no \"KDMV\" magic", at + 512));
    }
    if h.gd_offset == GD_AT_END {
        return Err(bad("the footer says GD_AT_END too", at + 512 + 56));
    }
    Ok(h)
}
