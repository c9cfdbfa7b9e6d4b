//! The 512-byte VHD hard disk footer (formats.md §4.1): the raw on-disk [`RawFooter`] with
//! [`RawFooter::decode`]/[`RawFooter::encode`] side by side, its [`checksum`], the validated [`Footer`]
//! (disk type, virtual size and which size rule chose it), the spec's CHS [`geometry`], and the writer
//! side for `-O vhd`: [`fixed_footer`] and [`aligned_size`].
//!
//! Virtual size, as QEMU 10 computes it (formats.md §4.5, checked with qemu-img 10.0.2): images whose
//! creator application is `"vpc "` or `"qemu"` use cylinders × heads × sectors × 512, unless the geometry
//! is the maximum 65535/16/255; every other creator uses `current_size` (rounded down to whole sectors).

use std::path::Path;

use crate::error::{Error, Result};
use crate::image::vhd::bytes::{arr, be32, be64};

/// Size of the footer (and of its copy at offset 0 in dynamic and differencing images).
pub const FOOTER_SIZE: usize = 512;

/// The footer's cookie.
pub const COOKIE: &[u8; 8] = b"conectix";

/// Largest virtual size accepted: 0xff000000 sectors (2040 GiB). qemu-img 10 refuses more ("File too large").
pub const MAX_VIRTUAL_SIZE: u64 = 0xff00_0000 * 512;

/// `data offset` of a fixed disk (no dynamic header).
pub const NO_DATA_OFFSET: u64 = u64::MAX;

/// The creator application diskseal writes: `"qem2"`, the id QEMU uses with `force_size`. Every QEMU reads
/// `current_size` for it (older releases only for a whitelist containing it; QEMU 10 for everything but
/// `"vpc "`/`"qemu"`), so the size QEMU reports is exactly the data size, whatever the CHS rounding.
pub const WRITER_CREATOR_APP: [u8; 4] = *b"qem2";

/// The creator version diskseal writes: 0x0000_0001, diskseal 0.1 (major in the high 16 bits, minor in the low).
pub const WRITER_CREATOR_VERSION: u32 = 0x0000_0001;

/// The creator host OS diskseal writes: `"Wi2k"`, as QEMU and Hyper-V do.
pub const WRITER_CREATOR_OS: [u8; 4] = *b"Wi2k";

/// The footer exactly as stored (all fields big-endian on disk).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFooter {
    /// "conectix".
    pub cookie: [u8; 8],
    /// Feature flags (0x2 reserved bit, 0x1 temporary).
    pub features: u32,
    /// File format version (0x00010000).
    pub version: u32,
    /// Absolute offset of the dynamic header; all ones for fixed disks.
    pub data_offset: u64,
    /// Seconds since 2000-01-01 00:00:00 UTC.
    pub timestamp: u32,
    /// Creator application ("qemu", "win ", ...).
    pub creator_app: [u8; 4],
    /// Creator version.
    pub creator_version: u32,
    /// Creator host OS ("Wi2k", "Mac ").
    pub creator_os: [u8; 4],
    /// Size at creation, bytes.
    pub original_size: u64,
    /// Current size, bytes.
    pub current_size: u64,
    /// CHS cylinders.
    pub cylinders: u16,
    /// CHS heads.
    pub heads: u8,
    /// CHS sectors per track.
    pub sectors: u8,
    /// 2 fixed, 3 dynamic, 4 differencing.
    pub disk_type: u32,
    /// One's complement of the byte sum with this field zeroed.
    pub checksum: u32,
    /// Unique id (a differencing child records its parent's).
    pub unique_id: [u8; 16],
    /// Saved-state flag.
    pub saved_state: u8,
    /// Reserved bytes 85..512 (kept so encode(decode(b)) == b).
    pub reserved: [u8; 427],
}

impl RawFooter {
    /// Decodes the 512 stored bytes (no validation).
    pub fn decode(b: &[u8; FOOTER_SIZE]) -> RawFooter {
        RawFooter {
            cookie: arr(b, 0),
            features: be32(b, 8),
            version: be32(b, 12),
            data_offset: be64(b, 16),
            timestamp: be32(b, 24),
            creator_app: arr(b, 28),
            creator_version: be32(b, 32),
            creator_os: arr(b, 36),
            original_size: be64(b, 40),
            current_size: be64(b, 48),
            cylinders: u16::from_be_bytes([b[56], b[57]]),
            heads: b[58],
            sectors: b[59],
            disk_type: be32(b, 60),
            checksum: be32(b, 64),
            unique_id: arr(b, 68),
            saved_state: b[84],
            reserved: arr(b, 85),
        }
    }

    /// Encodes to the 512 stored bytes (the checksum field as it is; see [`RawFooter::seal`]).
    pub fn encode(&self) -> [u8; FOOTER_SIZE] {
        let mut b = [0u8; FOOTER_SIZE];
        b[0..8].copy_from_slice(&self.cookie);
        b[8..12].copy_from_slice(&self.features.to_be_bytes());
        b[12..16].copy_from_slice(&self.version.to_be_bytes());
        b[16..24].copy_from_slice(&self.data_offset.to_be_bytes());
        b[24..28].copy_from_slice(&self.timestamp.to_be_bytes());
        b[28..32].copy_from_slice(&self.creator_app);
        b[32..36].copy_from_slice(&self.creator_version.to_be_bytes());
        b[36..40].copy_from_slice(&self.creator_os);
        b[40..48].copy_from_slice(&self.original_size.to_be_bytes());
        b[48..56].copy_from_slice(&self.current_size.to_be_bytes());
        b[56..58].copy_from_slice(&self.cylinders.to_be_bytes());
        b[58] = self.heads;
        b[59] = self.sectors;
        b[60..64].copy_from_slice(&self.disk_type.to_be_bytes());
        b[64..68].copy_from_slice(&self.checksum.to_be_bytes());
        b[68..84].copy_from_slice(&self.unique_id);
        b[84] = self.saved_state;
        b[85..].copy_from_slice(&self.reserved);
        b
    }

    /// The checksum the stored bytes should carry.
    pub fn computed_checksum(&self) -> u32 {
        checksum(&self.encode(), CHECKSUM_AT)
    }

    /// Sets the checksum field to the computed value.
    pub fn seal(&mut self) {
        self.checksum = self.computed_checksum();
    }
}

/// Offset of the checksum field in the footer.
pub const CHECKSUM_AT: usize = 64;

/// One's complement of the sum of all bytes, the 4 bytes at `skip` counted as zero (footer and dynamic header).
pub fn checksum(bytes: &[u8], skip: usize) -> u32 {
    let sum = bytes
        .iter()
        .enumerate()
        .filter(|(i, _)| !(skip..skip + 4).contains(i))
        .fold(0u32, |s, (_, &b)| s.wrapping_add(u32::from(b)));
    !sum
}

/// A CHS geometry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Cylinders.
    pub cylinders: u16,
    /// Heads.
    pub heads: u8,
    /// Sectors per track.
    pub sectors: u8,
}

impl Geometry {
    /// The largest geometry (65535/16/255); with it QEMU always uses `current_size`.
    pub const MAX: Geometry = Geometry {
        cylinders: 65535,
        heads: 16,
        sectors: 255,
    };

    /// Cylinders × heads × sectors.
    pub fn total_sectors(&self) -> u64 {
        u64::from(self.cylinders) * u64::from(self.heads) * u64::from(self.sectors)
    }
}

/// The spec's CHS geometry for `total_sectors` 512-byte sectors (formats.md §4.4, the spec's algorithm with
/// `>=`); the product may round down, and sizes past 65535×16×255 sectors get the maximum.
pub fn geometry(total_sectors: u64) -> Geometry {
    let ts = total_sectors.min(65535 * 16 * 255);
    let (spt, heads, cth) = if ts >= 65535 * 16 * 63 {
        (255u64, 16u64, ts / 255)
    } else {
        let mut spt = 17;
        let mut cth = ts / spt;
        let mut heads = cth.div_ceil(1024).max(4);
        if cth >= heads * 1024 || heads > 16 {
            spt = 31;
            heads = 16;
            cth = ts / spt;
        }
        if cth >= heads * 1024 {
            spt = 63;
            heads = 16;
            cth = ts / spt;
        }
        (spt, heads, cth)
    };
    // All three fit: cth/heads <= 65535 by the clamp above, heads <= 16, spt <= 255.
    Geometry {
        cylinders: u16::try_from(cth / heads).unwrap_or(u16::MAX),
        heads: u8::try_from(heads).unwrap_or(16),
        sectors: u8::try_from(spt).unwrap_or(255),
    }
}

/// The VHD disk type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskType {
    /// Raw data followed by the footer.
    Fixed,
    /// Sparse, with a dynamic header and a BAT.
    Dynamic,
    /// Sparse, on top of a parent image.
    Differencing,
}

impl DiskType {
    /// The name `diskseal info` shows ("fixed", "dynamic", "differencing").
    pub fn name(self) -> &'static str {
        match self {
            DiskType::Fixed => "fixed",
            DiskType::Dynamic => "dynamic",
            DiskType::Differencing => "differencing",
        }
    }
}

/// Which rule chose the virtual size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeRule {
    /// cylinders × heads × sectors (creator "vpc " or "qemu").
    Chs,
    /// `current_size` (every other creator).
    CurrentSize,
    /// `current_size`, because the geometry is the maximum 65535/16/255.
    CurrentSizeMaxGeometry,
}

impl SizeRule {
    /// Short name for `diskseal info`.
    pub fn name(self) -> &'static str {
        match self {
            SizeRule::Chs => "chs",
            SizeRule::CurrentSize => "current_size",
            SizeRule::CurrentSizeMaxGeometry => "current_size (geometry at maximum)",
        }
    }
}

/// A footer that passed validation.
#[derive(Debug, Clone)]
pub struct Footer {
    /// The stored fields.
    pub raw: RawFooter,
    /// Fixed, dynamic or differencing.
    pub disk_type: DiskType,
    /// The virtual disk size in bytes (a multiple of 512).
    pub virtual_size: u64,
    /// How the virtual size was chosen.
    pub size_rule: SizeRule,
}

/// Creator apps whose images QEMU sizes by CHS geometry.
fn uses_chs(creator_app: &[u8; 4]) -> bool {
    creator_app == b"vpc " || creator_app == b"qemu"
}

impl Footer {
    /// Validates a decoded footer read at `at` in `path`: cookie, checksum, disk type and virtual size.
    pub fn validate(raw: RawFooter, path: &Path, at: u64) -> Result<Footer> {
        if &raw.cookie != COOKIE {
            return Err(
                Error::format("VHD footer field 'cookie' is not \"conectix\"")
                    .with_path(path)
                    .at(at),
            );
        }
        let computed = raw.computed_checksum();
        if computed != raw.checksum {
            return Err(Error::corrupt(format!(
                "VHD footer field 'checksum' is {:#010x}, the footer sums to {computed:#010x}",
                raw.checksum
            ))
            .with_path(path)
            .at(at + CHECKSUM_AT as u64)
            .hint(
                "the footer is damaged (qemu-img 10 refuses it too: \"Incorrect header checksum\")",
            ));
        }
        let disk_type = match raw.disk_type {
            2 => DiskType::Fixed,
            3 => DiskType::Dynamic,
            4 => DiskType::Differencing,
            t => {
                return Err(Error::unsupported(format!(
                    "VHD footer field 'disk type' is {t}; only 2 (fixed), 3 (dynamic) and 4 (differencing) exist"
                ))
                .with_path(path)
                .at(at + 60));
            }
        };
        let geom = Geometry {
            cylinders: raw.cylinders,
            heads: raw.heads,
            sectors: raw.sectors,
        };
        let (virtual_size, size_rule, field_at) = if geom == Geometry::MAX {
            (
                raw.current_size / 512 * 512,
                SizeRule::CurrentSizeMaxGeometry,
                48,
            )
        } else if uses_chs(&raw.creator_app) {
            (geom.total_sectors() * 512, SizeRule::Chs, 56)
        } else {
            (raw.current_size / 512 * 512, SizeRule::CurrentSize, 48)
        };
        if virtual_size > MAX_VIRTUAL_SIZE {
            let field = if field_at == 48 {
                "current size"
            } else {
                "disk geometry"
            };
            return Err(Error::unsupported(format!(
                "VHD footer field '{field}' gives a virtual size of {virtual_size} bytes, beyond VHD's 2040 GiB limit ({MAX_VIRTUAL_SIZE})"
            ))
            .with_path(path)
            .at(at + field_at));
        }
        Ok(Footer {
            raw,
            disk_type,
            virtual_size,
            size_rule,
        })
    }

    /// The CHS geometry stored in the footer.
    pub fn geometry(&self) -> Geometry {
        Geometry {
            cylinders: self.raw.cylinders,
            heads: self.raw.heads,
            sectors: self.raw.sectors,
        }
    }
}

/// A 4-byte creator id as text: trailing NULs and spaces dropped ("tap\0" is `tap`, "win " is `win`,
/// "Wi2k" stays), or `0x` and its 8 hex digits when what is left is empty or not printable ASCII.
pub fn fourcc(b: &[u8; 4]) -> String {
    let end = b
        .iter()
        .rposition(|&c| c != 0 && c != b' ')
        .map_or(0, |i| i + 1);
    let text = &b[..end];
    if !text.is_empty() && text.iter().all(|&c| c == b' ' || c.is_ascii_graphic()) {
        String::from_utf8_lossy(text).into_owned()
    } else {
        format!("{:#010x}", u32::from_be_bytes(*b))
    }
}

/// What differs between the footers diskseal writes.
#[derive(Debug, Clone, Copy)]
pub struct FooterSpec {
    /// Disk type (2 fixed, 3 dynamic).
    pub disk_type: u32,
    /// `data_offset`: [`NO_DATA_OFFSET`] for fixed disks, the dynamic header's offset otherwise.
    pub data_offset: u64,
    /// Creator application.
    pub creator_app: [u8; 4],
    /// Creator version.
    pub creator_version: u32,
    /// Creator host OS.
    pub creator_os: [u8; 4],
}

/// Builds a sealed footer for a disk of `size` bytes (`current_size` = `original_size` = `size`, the
/// spec's geometry for `size / 512` sectors), `timestamp` in seconds since 2000-01-01 UTC.
pub fn build_footer(
    spec: FooterSpec,
    size: u64,
    uuid: [u8; 16],
    timestamp: u32,
) -> [u8; FOOTER_SIZE] {
    let g = geometry(size / 512);
    let mut raw = RawFooter {
        cookie: *COOKIE,
        features: 2,
        version: 0x0001_0000,
        data_offset: spec.data_offset,
        timestamp,
        creator_app: spec.creator_app,
        creator_version: spec.creator_version,
        creator_os: spec.creator_os,
        original_size: size,
        current_size: size,
        cylinders: g.cylinders,
        heads: g.heads,
        sectors: g.sectors,
        disk_type: spec.disk_type,
        checksum: 0,
        unique_id: uuid,
        saved_state: 0,
        reserved: [0; 427],
    };
    raw.seal();
    raw.encode()
}

/// Where the data of a fixed VHD ends: `file_len - 512` when the last 512 bytes of `file` are a valid
/// fixed-VHD footer describing the rest of the file (how `-O vhd` wraps a LUKS file), else `file_len`.
pub fn fixed_data_end(file: &std::fs::File, file_len: u64) -> u64 {
    use std::os::unix::fs::FileExt;
    if file_len < 1024 {
        return file_len;
    }
    let mut b = [0u8; FOOTER_SIZE];
    if file.read_exact_at(&mut b, file_len - 512).is_err() {
        return file_len;
    }
    let raw = RawFooter::decode(&b);
    let fixed = &raw.cookie == COOKIE
        && raw.disk_type == 2
        && raw.checksum == raw.computed_checksum()
        && raw.current_size == file_len - 512;
    if fixed { file_len - 512 } else { file_len }
}

/// Builds the footer of a **fixed** VHD whose data part is `size` bytes (`size` must be a multiple of 512 and
/// at most [`MAX_VIRTUAL_SIZE`]; see [`check_fixed_size`]). The creator is [`WRITER_CREATOR_APP`] (so QEMU
/// reports exactly `size`).
pub fn fixed_footer(size: u64, uuid: [u8; 16], timestamp: u32) -> [u8; FOOTER_SIZE] {
    let spec = FooterSpec {
        disk_type: 2,
        data_offset: NO_DATA_OFFSET,
        creator_app: WRITER_CREATOR_APP,
        creator_version: WRITER_CREATOR_VERSION,
        creator_os: WRITER_CREATOR_OS,
    };
    build_footer(spec, size, uuid, timestamp)
}

/// Checks that `size` can be the data size of a fixed VHD written with [`fixed_footer`].
pub fn check_fixed_size(size: u64) -> Result<()> {
    if !size.is_multiple_of(512) {
        return Err(Error::invalid(format!(
            "VHD data size {size} is not a multiple of 512 bytes"
        )));
    }
    if size > MAX_VIRTUAL_SIZE {
        return Err(Error::invalid(format!(
            "VHD data size {size} is beyond VHD's 2040 GiB limit ({MAX_VIRTUAL_SIZE})"
        )));
    }
    Ok(())
}

/// `size` rounded up to a whole MiB (`--vhd-align`; Azure wants fixed VHDs of whole MiB). Saturates at the
/// largest MiB multiple that fits a u64.
pub fn aligned_size(size: u64) -> u64 {
    const MIB: u64 = 1 << 20;
    size.checked_next_multiple_of(MIB)
        .unwrap_or(u64::MAX / MIB * MIB)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creator_ids_read_as_text_or_hex() {
        assert_eq!(fourcc(b"tap\0"), "tap");
        assert_eq!(fourcc(b"Wi2k"), "Wi2k");
        assert_eq!(fourcc(b"win "), "win");
        assert_eq!(fourcc(&[0; 4]), "0x00000000");
        assert_eq!(fourcc(&[0xff, b'a', 0, 1]), "0xff610001");
    }

    #[test]
    fn raw_footer_round_trips() {
        let mut b = fixed_footer(10 << 20, [7; 16], 1234);
        b[100] = 0x5a; // reserved bytes survive too
        let raw = RawFooter::decode(&b);
        assert_eq!(raw.encode(), b);
        assert_eq!(RawFooter::decode(&raw.encode()), raw);
    }

    #[test]
    fn fixed_footer_validates_to_its_size() {
        for size in [
            512u64,
            10 << 20,
            (10 << 20) + 12345 * 512,
            127 << 30,
            MAX_VIRTUAL_SIZE,
        ] {
            let f = Footer::validate(
                RawFooter::decode(&fixed_footer(size, [1; 16], 0)),
                Path::new("x"),
                0,
            )
            .unwrap();
            assert_eq!(f.virtual_size, size);
            assert_eq!(f.disk_type, DiskType::Fixed);
            assert!(matches!(
                f.size_rule,
                SizeRule::CurrentSize | SizeRule::CurrentSizeMaxGeometry
            ));
        }
    }

    #[test]
    fn geometry_matches_qemu_written_values() {
        // Values qemu-img 10.0.2 wrote for CHS-rounded sizes (formats.md §4.5 and experiments).
        assert_eq!(
            geometry(32844),
            Geometry {
                cylinders: 483,
                heads: 4,
                sectors: 17
            }
        );
        assert_eq!(
            geometry(1_048_707_072 / 512),
            Geometry {
                cylinders: 2032,
                heads: 16,
                sectors: 63
            }
        );
        assert_eq!(geometry(u64::MAX), Geometry::MAX);
        // The ATA limit switches to 255 sectors per track.
        assert_eq!(geometry(65535 * 16 * 63).sectors, 255);
    }

    #[test]
    fn checksum_skips_its_field() {
        let b = fixed_footer(1 << 20, [0; 16], 0);
        assert_eq!(checksum(&b, CHECKSUM_AT), be32(&b, CHECKSUM_AT));
    }

    #[test]
    fn aligned_size_rounds_up_to_mib() {
        assert_eq!(aligned_size(0), 0);
        assert_eq!(aligned_size(1), 1 << 20);
        assert_eq!(aligned_size(1 << 20), 1 << 20);
        assert_eq!(aligned_size((1 << 20) + 512), 2 << 20);
        assert_eq!(aligned_size(u64::MAX), u64::MAX / (1 << 20) * (1 << 20));
    }

    #[test]
    fn validate_rejects_bad_fields() {
        let mut raw = RawFooter::decode(&fixed_footer(1 << 20, [0; 16], 0));
        raw.disk_type = 5;
        raw.seal();
        let e = Footer::validate(raw.clone(), Path::new("x"), 0x1000).unwrap_err();
        assert!(
            e.to_string().contains("'disk type' is 5") && e.offset() == Some(0x103c),
            "{e}"
        );
        raw.disk_type = 2;
        raw.current_size = (1 << 63) + 512;
        raw.seal();
        let e = Footer::validate(raw.clone(), Path::new("x"), 0).unwrap_err();
        assert!(e.to_string().contains("2040 GiB"), "{e}");
        raw.current_size = 1 << 20;
        raw.checksum ^= 1;
        let e = Footer::validate(raw, Path::new("x"), 0).unwrap_err();
        assert!(
            e.to_string().contains("'checksum'") && e.offset() == Some(64),
            "{e}"
        );
    }
}
