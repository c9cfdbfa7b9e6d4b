//! The VHDX metadata region (MS-VHDX 2.6): the table ("metadata" signature, up to 2047 entries) and the
//! known items: file parameters (block size, leave-blocks-allocated, has-parent), virtual disk size,
//! page 83 data, logical and physical sector size, and the parent locator (2.6.2.6: UTF-16LE
//! key/value pairs such as `parent_linkage` and `relative_path`). Unknown required items are refused.

use std::fs::File;
use std::path::Path;

use crate::error::{Error, Result};
use crate::image::vhdx::header::{Region, guid, guid_at, guid_text, le16, le32, le64};
use crate::io::read_exact_at;

const FILE_PARAMETERS: [u8; 16] = guid(
    0xCAA1_6737,
    0xFA36,
    0x4D43,
    [0xB3, 0xB6, 0x33, 0xF0, 0xAA, 0x44, 0xE7, 0x6B],
);
const VIRTUAL_DISK_SIZE: [u8; 16] = guid(
    0x2FA5_4224,
    0xCD1B,
    0x4876,
    [0xB2, 0x11, 0x5D, 0xBE, 0xD8, 0x3B, 0xF4, 0xB8],
);
const PAGE83: [u8; 16] = guid(
    0xBECA_12AB,
    0xB2E6,
    0x4523,
    [0x93, 0xEF, 0xC3, 0x09, 0xE0, 0x00, 0xC7, 0x46],
);
const LOGICAL_SECTOR: [u8; 16] = guid(
    0x8141_BF1D,
    0xA96F,
    0x4709,
    [0xBA, 0x47, 0xF2, 0x33, 0xA8, 0xFA, 0xAB, 0x5F],
);
const PHYSICAL_SECTOR: [u8; 16] = guid(
    0xCDA3_48C7,
    0x445D,
    0x4471,
    [0x9C, 0xC9, 0xE9, 0x88, 0x52, 0x51, 0xC5, 0x56],
);
const PARENT_LOCATOR: [u8; 16] = guid(
    0xA8D3_5F2D,
    0xB30B,
    0x454D,
    [0xAB, 0xF7, 0xD3, 0xD8, 0x48, 0x34, 0xAB, 0x0C],
);
/// The VHDX parent locator type.
const VHDX_LOCATOR: [u8; 16] = guid(
    0xB04A_EFB7,
    0xD19E,
    0x4A81,
    [0xB7, 0x89, 0x25, 0xB8, 0xE9, 0x44, 0x59, 0x13],
);

/// The metadata items diskseal uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    /// Payload block size, bytes (1 MiB to 256 MiB, a power of two).
    pub block_size: u32,
    /// File parameters bit 0.
    pub leave_blocks_allocated: bool,
    /// File parameters bit 1: a differencing disk.
    pub has_parent: bool,
    /// Virtual disk size, bytes.
    pub virtual_size: u64,
    /// 512 or 4096.
    pub logical_sector_size: u32,
    /// 512 or 4096.
    pub physical_sector_size: u32,
    /// Page 83 data (the disk's id).
    pub page83: Option<String>,
    /// Parent locator key/value pairs (differencing disks).
    pub parent_locator: Vec<(String, String)>,
}

impl Metadata {
    /// A parent locator value.
    pub fn locator(&self, key: &str) -> Option<&str> {
        self.parent_locator
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads and checks the metadata region.
pub fn read(file: &File, path: &Path, file_len: u64, region: &Region) -> Result<Metadata> {
    let len = u64::from(region.length);
    if len < 64 << 10
        || region.offset.checked_add(len).is_none_or(|e| e > file_len)
        || len > 8 << 20
    {
        return Err(Error::corrupt(format!(
            "VHDX metadata region ({len} bytes at {:#x}) lies outside the file ({file_len} bytes) or has a bad size",
            region.offset
        ))
        .with_path(path)
        .hint("the file is truncated or damaged"));
    }
    let mut b = vec![0u8; len as usize];
    read_exact_at(file, path, &mut b, region.offset)?;
    let bad = |msg: String, at: usize| {
        Error::corrupt(msg)
            .with_path(path)
            .at(region.offset + at as u64)
    };
    if &b[..8] != b"metadata" {
        return Err(bad(
            "VHDX metadata table has no \"metadata\" signature".into(),
            0,
        ));
    }
    let count = usize::from(le16(&b, 10));
    if count > 2047 {
        return Err(bad(
            format!("VHDX metadata table has {count} entries (at most 2047)"),
            10,
        ));
    }
    let mut m = Metadata {
        block_size: 0,
        leave_blocks_allocated: false,
        has_parent: false,
        virtual_size: 0,
        logical_sector_size: 0,
        physical_sector_size: 0,
        page83: None,
        parent_locator: Vec::new(),
    };
    let mut seen = [false; 4];
    for e in 0..count {
        let o = 32 + e * 32;
        let id = guid_at(&b, o);
        let (off, ilen, flags) = (
            le32(&b, o + 16) as usize,
            le32(&b, o + 20) as usize,
            le32(&b, o + 24),
        );
        let item = off
            .checked_add(ilen)
            .filter(|&end| end <= b.len() && (ilen == 0 || off >= 64 << 10))
            .map(|end| &b[off..end])
            .ok_or_else(|| {
                bad(
                    format!(
                        "VHDX metadata item {} ({ilen} bytes at {off:#x}) lies outside the metadata region",
                        guid_text(&id)
                    ),
                    o + 16,
                )
            })?;
        let need = |n: usize| {
            if item.len() < n {
                Err(bad(
                    format!(
                        "VHDX metadata item {} is {} bytes, needs {n}",
                        guid_text(&id),
                        item.len()
                    ),
                    o + 20,
                ))
            } else {
                Ok(())
            }
        };
        if id == FILE_PARAMETERS {
            need(8)?;
            m.block_size = le32(item, 0);
            let f = le32(item, 4);
            m.leave_blocks_allocated = f & 1 != 0;
            m.has_parent = f & 2 != 0;
            seen[0] = true;
        } else if id == VIRTUAL_DISK_SIZE {
            need(8)?;
            m.virtual_size = le64(item, 0);
            seen[1] = true;
        } else if id == LOGICAL_SECTOR {
            need(4)?;
            m.logical_sector_size = le32(item, 0);
            seen[2] = true;
        } else if id == PHYSICAL_SECTOR {
            need(4)?;
            m.physical_sector_size = le32(item, 0);
            seen[3] = true;
        } else if id == PAGE83 {
            need(16)?;
            m.page83 = Some(guid_text(&guid_at(item, 0)));
        } else if id == PARENT_LOCATOR {
            m.parent_locator = parent_locator(item)
                .map_err(|why| bad(format!("VHDX parent locator: {why}"), off))?;
        } else if flags & 4 != 0 {
            return Err(Error::unsupported(format!(
                "VHDX metadata item {} is marked required and is not known",
                guid_text(&id)
            ))
            .with_path(path)
            .at(region.offset + o as u64)
            .hint(
                "a newer VHDX feature; convert with Hyper-V or `qemu-img convert -f vhdx -O raw`",
            ));
        }
    }
    let names = [
        "file parameters",
        "virtual disk size",
        "logical sector size",
        "physical sector size",
    ];
    if let Some(i) = seen.iter().position(|s| !s) {
        return Err(bad(format!("VHDX metadata has no {} item", names[i]), 0));
    }
    if !m.block_size.is_power_of_two() || !(1 << 20..=256 << 20).contains(&m.block_size) {
        return Err(bad(
            format!(
                "VHDX block size {} is not a power of two from 1 MiB to 256 MiB",
                m.block_size
            ),
            0,
        ));
    }
    if !matches!(m.logical_sector_size, 512 | 4096) || !matches!(m.physical_sector_size, 512 | 4096)
    {
        return Err(bad(
            format!(
                "VHDX sector sizes {} / {} (512 or 4096)",
                m.logical_sector_size, m.physical_sector_size
            ),
            0,
        ));
    }
    if m.virtual_size == 0
        || m.virtual_size > 64 << 40
        || !m
            .virtual_size
            .is_multiple_of(u64::from(m.logical_sector_size))
    {
        return Err(bad(
            format!(
                "VHDX virtual disk size {} is not a multiple of the logical sector size up to 64 TiB",
                m.virtual_size
            ),
            0,
        ));
    }
    if m.has_parent && m.parent_locator.is_empty() {
        return Err(bad(
            "VHDX differencing disk without a parent locator".into(),
            0,
        ));
    }
    Ok(m)
}

/// The key/value pairs of a parent locator item.
fn parent_locator(item: &[u8]) -> std::result::Result<Vec<(String, String)>, String> {
    if item.len() < 20 {
        return Err("shorter than its header".into());
    }
    if guid_at(item, 0) != VHDX_LOCATOR {
        return Err(format!(
            "locator type {} is not the VHDX one",
            guid_text(&guid_at(item, 0))
        ));
    }
    let count = usize::from(le16(item, 18));
    let mut out = Vec::with_capacity(count.min(64));
    for i in 0..count {
        let o = 20 + i * 12;
        if o + 12 > item.len() {
            return Err(format!("entry {i} lies past the item"));
        }
        let text = |off: usize, len: usize| -> std::result::Result<String, String> {
            let s = item
                .get(off..off.checked_add(len).ok_or("overflow")?)
                .ok_or_else(|| format!("entry {i} points outside the item"))?;
            if !len.is_multiple_of(2) {
                return Err(format!("entry {i} has an odd UTF-16 length"));
            }
            let units: Vec<u16> = s
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16(&units).map_err(|_| format!("entry {i} is not UTF-16"))
        };
        let k = text(le32(item, o) as usize, usize::from(le16(item, o + 8)))?;
        let v = text(le32(item, o + 4) as usize, usize::from(le16(item, o + 10)))?;
        out.push((k, v));
    }
    Ok(out)
}
