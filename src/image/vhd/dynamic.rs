//! The 1024-byte dynamic disk header of dynamic and differencing VHDs (formats.md §4.2): the raw
//! [`RawDynamicHeader`] with decode/encode side by side, the validated [`DynamicHeader`] (block size,
//! bitmap size, BAT placement), the parent's name and locators ([`ParentLocator`], [`locator_path`]),
//! and reading the BAT ([`read_bat`]).
//!
//! The header checksum is not enforced: QEMU never checks it (qemu-img 10.0.2 opens an image whose
//! header checksum is wrong), so a mismatch is recorded as a warning; every field used is validated.

use std::fs::File;
use std::path::Path;

use crate::error::{Error, Result};
use crate::image::vhd::bytes::{arr, be32, be64};
use crate::image::vhd::footer::checksum;
use crate::io::read_exact_at;

/// Size of the dynamic disk header.
pub const HEADER_SIZE: usize = 1024;

/// The dynamic header's cookie.
pub const COOKIE: &[u8; 8] = b"cxsparse";

/// A BAT entry for a block with no data in this file.
pub const UNALLOCATED: u32 = 0xFFFF_FFFF;

/// Offset of the checksum field in the header.
pub const CHECKSUM_AT: usize = 36;

/// Largest block size accepted (256 MiB; QEMU writes 2 MiB, Hyper-V 2 MiB or 512 KiB).
pub const MAX_BLOCK_SIZE: u32 = 256 << 20;

/// Most BAT entries kept in memory (64 MiB of BAT); more means blocks absurdly small for the disk.
pub const MAX_BAT_ENTRIES: u64 = 1 << 24;

/// Largest parent locator payload read (a path; 64 KiB is far beyond any real one).
pub const MAX_LOCATOR_LEN: u32 = 64 << 10;

/// A parent locator entry as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ParentLocator {
    /// Platform code ("W2ku", "W2ru", "MacX", ... as a big-endian u32), 0 when unused.
    pub code: u32,
    /// Platform data space (sectors per the spec, bytes in practice).
    pub data_space: u32,
    /// Platform data length in bytes.
    pub data_length: u32,
    /// Reserved.
    pub reserved: u32,
    /// Absolute file offset of the platform data.
    pub data_offset: u64,
}

/// Platform code of an absolute Windows path (UTF-16LE).
pub const W2KU: u32 = u32::from_be_bytes(*b"W2ku");
/// Platform code of a relative Windows path (UTF-16LE).
pub const W2RU: u32 = u32::from_be_bytes(*b"W2ru");
/// Platform code of a Mac OS X `file://` URL (UTF-8).
pub const MACX: u32 = u32::from_be_bytes(*b"MacX");

/// The dynamic disk header exactly as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawDynamicHeader {
    /// "cxsparse".
    pub cookie: [u8; 8],
    /// Unused (all ones).
    pub data_offset: u64,
    /// Absolute offset of the BAT.
    pub table_offset: u64,
    /// Header version (0x00010000).
    pub header_version: u32,
    /// Number of BAT entries.
    pub max_table_entries: u32,
    /// Block size in bytes (data only, without the bitmap).
    pub block_size: u32,
    /// One's complement of the byte sum with this field zeroed.
    pub checksum: u32,
    /// The parent's footer unique id (differencing).
    pub parent_unique_id: [u8; 16],
    /// The parent's modification time.
    pub parent_timestamp: u32,
    /// Reserved.
    pub reserved1: u32,
    /// The parent's file name, UTF-16BE, NUL-padded.
    pub parent_unicode_name: [u8; 512],
    /// The 8 parent locators.
    pub parent_locators: [ParentLocator; 8],
    /// Reserved bytes 768..1024.
    pub reserved2: [u8; 256],
}

impl RawDynamicHeader {
    /// Decodes the 1024 stored bytes (no validation).
    pub fn decode(b: &[u8; HEADER_SIZE]) -> RawDynamicHeader {
        let mut parent_locators = [ParentLocator::default(); 8];
        for (i, l) in parent_locators.iter_mut().enumerate() {
            let at = 576 + 24 * i;
            *l = ParentLocator {
                code: be32(b, at),
                data_space: be32(b, at + 4),
                data_length: be32(b, at + 8),
                reserved: be32(b, at + 12),
                data_offset: be64(b, at + 16),
            };
        }
        RawDynamicHeader {
            cookie: arr(b, 0),
            data_offset: be64(b, 8),
            table_offset: be64(b, 16),
            header_version: be32(b, 24),
            max_table_entries: be32(b, 28),
            block_size: be32(b, 32),
            checksum: be32(b, 36),
            parent_unique_id: arr(b, 40),
            parent_timestamp: be32(b, 56),
            reserved1: be32(b, 60),
            parent_unicode_name: arr(b, 64),
            parent_locators,
            reserved2: arr(b, 768),
        }
    }

    /// Encodes to the 1024 stored bytes (the checksum field as it is; see [`RawDynamicHeader::seal`]).
    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..8].copy_from_slice(&self.cookie);
        b[8..16].copy_from_slice(&self.data_offset.to_be_bytes());
        b[16..24].copy_from_slice(&self.table_offset.to_be_bytes());
        b[24..28].copy_from_slice(&self.header_version.to_be_bytes());
        b[28..32].copy_from_slice(&self.max_table_entries.to_be_bytes());
        b[32..36].copy_from_slice(&self.block_size.to_be_bytes());
        b[36..40].copy_from_slice(&self.checksum.to_be_bytes());
        b[40..56].copy_from_slice(&self.parent_unique_id);
        b[56..60].copy_from_slice(&self.parent_timestamp.to_be_bytes());
        b[60..64].copy_from_slice(&self.reserved1.to_be_bytes());
        b[64..576].copy_from_slice(&self.parent_unicode_name);
        for (i, l) in self.parent_locators.iter().enumerate() {
            let at = 576 + 24 * i;
            b[at..at + 4].copy_from_slice(&l.code.to_be_bytes());
            b[at + 4..at + 8].copy_from_slice(&l.data_space.to_be_bytes());
            b[at + 8..at + 12].copy_from_slice(&l.data_length.to_be_bytes());
            b[at + 12..at + 16].copy_from_slice(&l.reserved.to_be_bytes());
            b[at + 16..at + 24].copy_from_slice(&l.data_offset.to_be_bytes());
        }
        b[768..].copy_from_slice(&self.reserved2);
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

/// A dynamic header whose fields passed validation against the file and the virtual size.
#[derive(Debug, Clone)]
pub struct DynamicHeader {
    /// The stored fields.
    pub raw: RawDynamicHeader,
    /// Where the header is in the file.
    pub at: u64,
    /// Block size (a power of two, 512..=[`MAX_BLOCK_SIZE`]).
    pub block_size: u64,
    /// Bytes of sector bitmap before each block's data (a multiple of 512).
    pub bitmap_size: u64,
    /// BAT entries the virtual size needs (≤ max_table_entries).
    pub entries: u64,
    /// False when the stored checksum is wrong (a warning; QEMU ignores it).
    pub checksum_ok: bool,
}

impl DynamicHeader {
    /// Validates a decoded header read at `at` in a file of `file_len` bytes, for a disk of `virtual_size`.
    pub fn validate(
        raw: RawDynamicHeader,
        path: &Path,
        at: u64,
        file_len: u64,
        virtual_size: u64,
    ) -> Result<DynamicHeader> {
        let err = |kind: fn(String) -> Error, field_at: u64, msg: String| {
            kind(msg).with_path(path).at(at + field_at)
        };
        if &raw.cookie != COOKIE {
            return Err(err(
                Error::corrupt,
                0,
                "VHD dynamic header field 'cookie' is not \"cxsparse\"".into(),
            )
            .hint("the footer's 'data offset' does not point at a dynamic disk header"));
        }
        let checksum_ok = raw.computed_checksum() == raw.checksum;
        let bs = raw.block_size;
        if !bs.is_power_of_two() || bs < 512 {
            return Err(err(
                Error::corrupt,
                32,
                format!(
                    "VHD dynamic header field 'block size' is {bs}, not a power of two of at least 512"
                ),
            ));
        }
        if bs > MAX_BLOCK_SIZE {
            return Err(err(
                Error::unsupported,
                32,
                format!(
                    "VHD dynamic header field 'block size' is {bs}, beyond the {MAX_BLOCK_SIZE} bytes diskseal accepts"
                ),
            ));
        }
        let block_size = u64::from(bs);
        let bitmap_size = (block_size / 512).div_ceil(8).next_multiple_of(512);
        let mte = u64::from(raw.max_table_entries);
        let entries = virtual_size.div_ceil(block_size);
        if mte > super::footer::MAX_VIRTUAL_SIZE / block_size {
            return Err(err(
                Error::corrupt,
                28,
                format!(
                    "VHD dynamic header field 'max table entries' is {mte}: absurdly large for {bs}-byte blocks (more than 2040 GiB)"
                ),
            ));
        }
        if mte < entries {
            return Err(err(
                Error::corrupt,
                28,
                format!(
                    "VHD dynamic header field 'max table entries' is {mte}: too small, {mte} blocks of {bs} bytes cover {} bytes but the virtual size is {virtual_size}",
                    mte * block_size
                ),
            ));
        }
        if entries > MAX_BAT_ENTRIES {
            return Err(err(
                Error::unsupported,
                32,
                format!(
                    "VHD has {entries} blocks of {bs} bytes; diskseal keeps at most {MAX_BAT_ENTRIES} BAT entries in memory"
                ),
            ));
        }
        let table = raw.table_offset;
        let table_end = table.checked_add(mte * 4);
        if table_end.is_none_or(|e| e > file_len) {
            return Err(err(
                Error::corrupt,
                16,
                format!(
                    "VHD dynamic header field 'table offset' {table:#x}: the BAT ({mte} entries) runs beyond the end of the file ({file_len:#x})"
                ),
            ));
        }
        let table_end = table + mte * 4;
        if mte > 0 && (table < 512 || overlaps(table, table_end, at, at + HEADER_SIZE as u64)) {
            return Err(err(
                Error::corrupt,
                16,
                format!(
                    "VHD dynamic header field 'table offset' {table:#x}: the BAT overlaps the footer copy or the dynamic header"
                ),
            ));
        }
        Ok(DynamicHeader {
            raw,
            at,
            block_size,
            bitmap_size,
            entries,
            checksum_ok,
        })
    }

    /// The byte range the BAT occupies in the file.
    pub fn bat_range(&self) -> (u64, u64) {
        (
            self.raw.table_offset,
            self.raw.table_offset + u64::from(self.raw.max_table_entries) * 4,
        )
    }

    /// The parent's name from the header (UTF-16BE up to the first NUL), if any.
    pub fn parent_name(&self) -> Option<String> {
        let units: Vec<u16> = self
            .raw
            .parent_unicode_name
            .chunks_exact(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .take_while(|&u| u != 0)
            .collect();
        if units.is_empty() {
            None
        } else {
            Some(String::from_utf16_lossy(&units))
        }
    }
}

/// True when `[a, a_end)` and `[b, b_end)` share a byte.
pub fn overlaps(a: u64, a_end: u64, b: u64, b_end: u64) -> bool {
    a < b_end && b < a_end
}

/// Reads the first `header.entries` BAT entries and checks each allocated block lies in the file
/// (`data_end`: where the data area ends, before the footer) and overlaps no metadata.
pub fn read_bat(
    file: &File,
    path: &Path,
    header: &DynamicHeader,
    data_end: u64,
    virtual_size: u64,
) -> Result<Vec<u32>> {
    let (table, table_end) = header.bat_range();
    let n = usize::try_from(header.entries)
        .map_err(|_| Error::unsupported("BAT too large").with_path(path))?;
    let mut bytes = vec![0u8; n * 4];
    read_exact_at(file, path, &mut bytes, table)?;
    let bat: Vec<u32> = bytes
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    for (i, &e) in bat.iter().enumerate() {
        if e == UNALLOCATED {
            continue;
        }
        let start = u64::from(e) * 512;
        let block_first = i as u64 * header.block_size;
        let used = (virtual_size - block_first)
            .min(header.block_size)
            .next_multiple_of(512);
        let end = start + header.bitmap_size + used;
        let entry_at = table + 4 * i as u64;
        if end > data_end {
            return Err(Error::corrupt(format!(
                "VHD BAT entry {i} points at {start:#x}; the block ends at {end:#x}, beyond the end of the data area ({data_end:#x})"
            ))
            .with_path(path)
            .at(entry_at)
            .hint("the file is truncated or the BAT is damaged"));
        }
        let what = if start < 512 {
            Some("the footer copy at offset 0")
        } else if overlaps(start, end, header.at, header.at + HEADER_SIZE as u64) {
            Some("the dynamic header")
        } else if overlaps(start, end, table, table_end) {
            Some("the BAT")
        } else {
            None
        };
        if let Some(what) = what {
            return Err(Error::corrupt(format!(
                "VHD BAT entry {i} points at {start:#x}, overlapping {what}"
            ))
            .with_path(path)
            .at(entry_at));
        }
    }
    Ok(bat)
}

/// Reads a locator's payload and turns it into a path string (UTF-16LE for W2ku/W2ru, a `file://` URL for
/// MacX); `None` for unused entries or other platforms. Errors name the locator and its offset.
pub fn locator_path(
    file: &File,
    path: &Path,
    file_len: u64,
    index: usize,
    l: &ParentLocator,
    header_at: u64,
) -> Result<Option<String>> {
    if !matches!(l.code, W2KU | W2RU | MACX) || l.data_length == 0 {
        return Ok(None);
    }
    let field_at = header_at + 576 + 24 * index as u64;
    if l.data_length > MAX_LOCATOR_LEN
        || l.data_offset
            .checked_add(u64::from(l.data_length))
            .is_none_or(|e| e > file_len)
    {
        return Err(Error::corrupt(format!(
            "VHD parent locator {index}: {} bytes at {:#x} lie beyond the end of the file or are absurdly long",
            l.data_length, l.data_offset
        ))
        .with_path(path)
        .at(field_at));
    }
    let mut bytes = vec![0u8; l.data_length as usize];
    read_exact_at(file, path, &mut bytes, l.data_offset)?;
    let text = if l.code == MACX {
        let s = String::from_utf8_lossy(&bytes)
            .trim_end_matches('\0')
            .to_string();
        let rest = s
            .strip_prefix("file://localhost")
            .or_else(|| s.strip_prefix("file://"))
            .ok_or_else(|| {
                Error::corrupt(format!(
                    "VHD parent locator {index} (MacX) is not a file:// URL"
                ))
                .with_path(path)
                .at(field_at)
            })?;
        percent_decode(rest)
    } else {
        let units: Vec<u16> = bytes
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&u| u != 0)
            .collect();
        String::from_utf16_lossy(&units).replace('\\', "/")
    };
    Ok(if text.is_empty() { None } else { Some(text) })
}

/// Decodes `%XX` escapes of a URL path.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: Option<&u8>| c.and_then(|&c| (c as char).to_digit(16));
        if b[i] == b'%'
            && let (Some(h), Some(l)) = (hex(b.get(i + 1)), hex(b.get(i + 2)))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> RawDynamicHeader {
        let mut name = [0u8; 512];
        for (i, u) in "parent.vhd".encode_utf16().enumerate() {
            name[2 * i..2 * i + 2].copy_from_slice(&u.to_be_bytes());
        }
        let mut raw = RawDynamicHeader {
            cookie: *COOKIE,
            data_offset: u64::MAX,
            table_offset: 1536,
            header_version: 0x0001_0000,
            max_table_entries: 5,
            block_size: 2 << 20,
            checksum: 0,
            parent_unique_id: [9; 16],
            parent_timestamp: 77,
            reserved1: 0,
            parent_unicode_name: name,
            parent_locators: [ParentLocator::default(); 8],
            reserved2: [0; 256],
        };
        raw.parent_locators[1] = ParentLocator {
            code: W2RU,
            data_space: 512,
            data_length: 20,
            reserved: 0,
            data_offset: 2048,
        };
        raw.seal();
        raw
    }

    #[test]
    fn raw_header_round_trips() {
        let raw = sample();
        let mut b = raw.encode();
        assert_eq!(RawDynamicHeader::decode(&b), raw);
        b[900] = 1;
        assert_eq!(RawDynamicHeader::decode(&b).encode(), b);
    }

    #[test]
    fn validate_and_parent_name() {
        let h = DynamicHeader::validate(sample(), Path::new("x"), 512, 1 << 30, 10 << 20).unwrap();
        assert!(h.checksum_ok);
        assert_eq!(h.bitmap_size, 512);
        assert_eq!(h.entries, 5);
        assert_eq!(h.parent_name().as_deref(), Some("parent.vhd"));
    }

    #[test]
    fn validate_refuses_bad_geometry() {
        let mut raw = sample();
        raw.block_size = 3000;
        let e = DynamicHeader::validate(raw, Path::new("x"), 512, 1 << 30, 10 << 20).unwrap_err();
        assert!(
            e.to_string().contains("'block size' is 3000") && e.offset() == Some(512 + 32),
            "{e}"
        );
        let e =
            DynamicHeader::validate(sample(), Path::new("x"), 512, 1 << 30, 11 << 20).unwrap_err();
        assert!(
            e.to_string().contains("too small") && e.offset() == Some(512 + 28),
            "{e}"
        );
        let mut raw = sample();
        raw.table_offset = 600;
        let e = DynamicHeader::validate(raw, Path::new("x"), 512, 1 << 30, 10 << 20).unwrap_err();
        assert!(e.to_string().contains("overlaps"), "{e}");
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("/a%20b/c%2"), "/a b/c%2");
    }
}
