//! The VHDX header section (MS-VHDX 2.2): the file type identifier (`vhdxfile`), the two 4 KiB headers
//! (CRC-32C, sequence number; the current one chosen as 2.2.2.1 says), the two 64 KiB region tables
//! (BAT and metadata regions, unknown required regions refused) and the log check (2.3): a log that
//! holds a valid entry for the header's log GUID has not been replayed, and reading the file without
//! replaying it would return stale data.

use std::fs::File;
use std::path::Path;

use crate::error::{Error, Result};
use crate::io::read_exact_at;

/// Header 1 and 2 offsets.
pub const HEADER_OFFSETS: [u64; 2] = [64 << 10, 128 << 10];
/// Region table 1 and 2 offsets.
pub const REGION_OFFSETS: [u64; 2] = [192 << 10, 256 << 10];
/// Header size covered by its checksum.
pub const HEADER_SIZE: usize = 4096;
/// Region table size covered by its checksum.
pub const REGION_TABLE_SIZE: usize = 64 << 10;
/// The BAT region's GUID (2DC27766-F623-4200-9D64-115E9BFD4A08) as stored.
pub const BAT_GUID: [u8; 16] = guid(
    0x2DC2_7766,
    0xF623,
    0x4200,
    [0x9D, 0x64, 0x11, 0x5E, 0x9B, 0xFD, 0x4A, 0x08],
);
/// The metadata region's GUID (8B7CA206-4790-4B9A-B8FE-575F050F886E) as stored.
pub const METADATA_GUID: [u8; 16] = guid(
    0x8B7C_A206,
    0x4790,
    0x4B9A,
    [0xB8, 0xFE, 0x57, 0x5F, 0x05, 0x0F, 0x88, 0x6E],
);

/// A GUID's 16 bytes as stored (first three fields little-endian).
pub const fn guid(a: u32, b: u16, c: u16, d: [u8; 8]) -> [u8; 16] {
    let a = a.to_le_bytes();
    let b = b.to_le_bytes();
    let c = c.to_le_bytes();
    [
        a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d[0], d[1], d[2], d[3], d[4], d[5], d[6],
        d[7],
    ]
}

/// A stored GUID as text.
pub fn guid_text(g: &[u8; 16]) -> String {
    format!(
        "{:08X}-{:04X}-{:04X}-{:02X}{:02X}-{}",
        u32::from_le_bytes([g[0], g[1], g[2], g[3]]),
        u16::from_le_bytes([g[4], g[5]]),
        u16::from_le_bytes([g[6], g[7]]),
        g[8],
        g[9],
        g[10..]
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<String>()
    )
}

pub(crate) fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
pub(crate) fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
pub(crate) fn le64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}
pub(crate) fn guid_at(b: &[u8], at: usize) -> [u8; 16] {
    let mut g = [0u8; 16];
    g.copy_from_slice(&b[at..at + 16]);
    g
}

/// CRC-32C of `b` with the 4 bytes at `at` taken as zero (how every VHDX checksum is computed).
pub fn checksum(b: &[u8], at: usize) -> u32 {
    let c = crc32c::crc32c(&b[..at]);
    let c = crc32c::crc32c_append(c, &[0; 4]);
    crc32c::crc32c_append(c, &b[at + 4..])
}

/// A VHDX header (2.2.2) as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawHeader {
    /// "head".
    pub signature: [u8; 4],
    /// CRC-32C of the 4 KiB header.
    pub checksum: u32,
    /// Higher is newer.
    pub sequence_number: u64,
    /// Changes on every open for writing.
    pub file_write_guid: [u8; 16],
    /// Changes when user data is written.
    pub data_write_guid: [u8; 16],
    /// Non-zero: the log may hold entries for this GUID.
    pub log_guid: [u8; 16],
    /// 0.
    pub log_version: u16,
    /// 1.
    pub version: u16,
    /// Log length, bytes.
    pub log_length: u32,
    /// Log offset, bytes.
    pub log_offset: u64,
}

impl RawHeader {
    /// Decodes the first 80 bytes of a header.
    pub fn decode(b: &[u8]) -> RawHeader {
        RawHeader {
            signature: [b[0], b[1], b[2], b[3]],
            checksum: le32(b, 4),
            sequence_number: le64(b, 8),
            file_write_guid: guid_at(b, 16),
            data_write_guid: guid_at(b, 32),
            log_guid: guid_at(b, 48),
            log_version: le16(b, 64),
            version: le16(b, 66),
            log_length: le32(b, 68),
            log_offset: le64(b, 72),
        }
    }
}

/// A region table entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Region {
    /// Which region.
    pub guid: [u8; 16],
    /// Offset, bytes (1 MiB aligned).
    pub offset: u64,
    /// Length, bytes.
    pub length: u32,
    /// Bit 0: the region must be understood.
    pub required: bool,
}

/// What the header section gives: the current header (and which copy), the BAT and metadata regions.
#[derive(Debug, Clone)]
pub struct HeaderSection {
    /// The current header.
    pub header: RawHeader,
    /// 1 or 2.
    pub which: u8,
    /// The BAT region.
    pub bat: Region,
    /// The metadata region.
    pub metadata: Region,
    /// Problems that did not stop reading (a damaged copy).
    pub warnings: Vec<String>,
}

/// Reads and checks the header section of `file`.
pub fn read(file: &File, path: &Path, file_len: u64) -> Result<HeaderSection> {
    if file_len < 1 << 20 {
        return Err(Error::corrupt(format!(
            "VHDX file of {file_len} bytes is too short for its header section (1 MiB)"
        ))
        .with_path(path)
        .hint("the file is truncated"));
    }
    let mut sig = [0u8; 8];
    read_exact_at(file, path, &mut sig, 0)?;
    if &sig != b"vhdxfile" {
        return Err(Error::format("not a VHDX file (no \"vhdxfile\" signature)")
            .with_path(path)
            .at(0));
    }
    let mut warnings = Vec::new();
    let mut headers: Vec<(u8, RawHeader, Vec<u8>)> = Vec::new();
    for (i, &at) in HEADER_OFFSETS.iter().enumerate() {
        let mut b = vec![0u8; HEADER_SIZE];
        read_exact_at(file, path, &mut b, at)?;
        let h = RawHeader::decode(&b);
        let problem = if &h.signature != b"head" {
            Some("no \"head\" signature".to_owned())
        } else if checksum(&b, 4) != h.checksum {
            Some("checksum mismatch".to_owned())
        } else if h.version != 1 {
            Some(format!("version {} (1 is known)", h.version))
        } else {
            None
        };
        match problem {
            Some(p) => warnings.push(format!(
                "VHDX header {} at {at:#x} is not valid: {p}",
                i + 1
            )),
            None => headers.push((i as u8 + 1, h, b)),
        }
    }
    let (which, header) = match headers.as_slice() {
        [] => {
            return Err(Error::corrupt(format!(
                "neither VHDX header is valid ({})",
                warnings.join("; ")
            ))
            .with_path(path)
            .at(HEADER_OFFSETS[0])
            .hint("the file is damaged"));
        }
        [(w, h, _)] => (*w, h.clone()),
        [(w1, h1, b1), (w2, h2, b2)] => {
            if h1.sequence_number > h2.sequence_number {
                (*w1, h1.clone())
            } else if h2.sequence_number > h1.sequence_number {
                (*w2, h2.clone())
            } else if b1 == b2 {
                (*w1, h1.clone())
            } else {
                return Err(Error::corrupt(format!(
                    "both VHDX headers are valid, differ, and have the same sequence number {}",
                    h1.sequence_number
                ))
                .with_path(path)
                .at(HEADER_OFFSETS[0] + 8)
                .hint("the file is damaged: the current header cannot be chosen"));
            }
        }
        _ => unreachable!("two header copies at most"),
    };
    let (bat, metadata) = regions(file, path, &mut warnings)?;
    check_log(file, path, file_len, &header, which)?;
    Ok(HeaderSection {
        header,
        which,
        bat,
        metadata,
        warnings,
    })
}

/// The BAT and metadata regions from the first valid region table.
fn regions(file: &File, path: &Path, warnings: &mut Vec<String>) -> Result<(Region, Region)> {
    let mut problems = Vec::new();
    for (i, &at) in REGION_OFFSETS.iter().enumerate() {
        let mut b = vec![0u8; REGION_TABLE_SIZE];
        read_exact_at(file, path, &mut b, at)?;
        let count = le32(&b, 8);
        let problem = if &b[..4] != b"regi" {
            Some("no \"regi\" signature".to_owned())
        } else if checksum(&b, 4) != le32(&b, 4) {
            Some("checksum mismatch".to_owned())
        } else if count > 2047 {
            Some(format!("entry count {count} (at most 2047)"))
        } else {
            None
        };
        if let Some(p) = problem {
            problems.push(format!(
                "VHDX region table {} at {at:#x} is not valid: {p}",
                i + 1
            ));
            continue;
        }
        let (mut bat, mut meta) = (None, None);
        for e in 0..count as usize {
            let o = 16 + e * 32;
            let r = Region {
                guid: guid_at(&b, o),
                offset: le64(&b, o + 16),
                length: le32(&b, o + 24),
                required: le32(&b, o + 28) & 1 != 0,
            };
            if r.guid == BAT_GUID {
                bat = Some(r);
            } else if r.guid == METADATA_GUID {
                meta = Some(r);
            } else if r.required {
                return Err(Error::unsupported(format!(
                    "VHDX region {} is marked required and is not known",
                    guid_text(&r.guid)
                ))
                .with_path(path)
                .at(at + o as u64)
                .hint("a newer VHDX feature; convert with Hyper-V or `qemu-img convert -f vhdx -O raw`"));
            }
        }
        let (Some(bat), Some(meta)) = (bat, meta) else {
            return Err(
                Error::corrupt("VHDX region table has no BAT or no metadata region")
                    .with_path(path)
                    .at(at),
            );
        };
        warnings.extend(problems);
        return Ok((bat, meta));
    }
    Err(Error::corrupt(problems.join("; "))
        .with_path(path)
        .at(REGION_OFFSETS[0])
        .hint("the file is damaged"))
}

/// Refuses a file whose log holds a valid entry for the current header's log GUID (2.3.3: it must be
/// replayed before the file is read).
fn check_log(file: &File, path: &Path, file_len: u64, h: &RawHeader, which: u8) -> Result<()> {
    if h.log_guid == [0; 16] || h.log_length == 0 {
        return Ok(());
    }
    let at = h.log_offset;
    let len = u64::from(h.log_length);
    if at.checked_add(len).is_none_or(|e| e > file_len) {
        return Err(Error::corrupt(format!(
            "VHDX log ({len} bytes at {at:#x}) lies past the end of the file"
        ))
        .with_path(path)
        .at(HEADER_OFFSETS[usize::from(which - 1)] + 68));
    }
    let mut b = vec![0u8; 4096];
    let mut pos = 0;
    while pos + 4096 <= len {
        read_exact_at(file, path, &mut b, at + pos)?;
        if &b[..4] == b"loge" && b[32..48] == h.log_guid {
            let entry_len = u64::from(le32(&b, 8));
            if entry_len >= 4096 && entry_len.is_multiple_of(4096) && pos + entry_len <= len {
                let mut e = vec![0u8; entry_len as usize];
                read_exact_at(file, path, &mut e, at + pos)?;
                if checksum(&e, 4) == le32(&e, 4) {
                    return Err(Error::unsupported(format!(
                        "VHDX log holds entries that were never replayed (sequence {} at {:#x}): the file's metadata and data are not up to date",
                        le64(&e, 16),
                        at + pos
                    ))
                    .with_path(path)
                    .at(at + pos)
                    .hint("the image was not closed cleanly; attach and detach it once in Hyper-V, or replay it with `qemu-img check -r all` on a copy, then encrypt that"));
                }
            }
        }
        pos += 4096;
    }
    Ok(())
}
