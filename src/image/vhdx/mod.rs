//! Microsoft VHDX (MS-VHDX v20240423):
//!
//! - [`header`]: file identifier, the two headers (CRC-32C, sequence numbers), the region tables and the
//!   log check (2.2, 2.3);
//! - [`metadata`]: the metadata region and its items, the parent locator (2.6);
//! - this file: the BAT (2.5: payload and sector-bitmap entries interleaved by the chunk ratio), every
//!   payload block state, differencing disks and their parent, and [`VhdxImage`], the [`DiskImage`].
//!
//! Block states as read: fully present blocks are data; zero and unmapped blocks read as zeros; not
//! present and undefined blocks read from the parent (differencing disks) or as zeros; partially
//! present blocks (differencing disks only) take each sector from the file when its bit in the chunk's
//! sector bitmap is set (bit `i % 8` of byte `i / 8` for sector `i` of the chunk), else from the
//! parent. The parent is found through the locator's `relative_path` (then the file name of
//! `absolute_win32_path`) in the child's folder, must be a VHDX whose data write GUID equals
//! `parent_linkage` (or `parent_linkage2`), and is opened through [`open_backing`]. QEMU reads no
//! differencing VHDX at all.

pub mod header;
pub mod metadata;

use std::fs::File;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::error::{Error, ErrorKind, Result};
use crate::image::{
    DiskImage, Extent, ExtentKind, ImageInfo, Naming, coalesce, open_backing, push_extent,
    resolve_below,
};
use crate::io::read_exact_at;
use header::{HeaderSection, guid_text};
use metadata::Metadata;

/// Payload block states (2.5.1.1).
pub const NOT_PRESENT: u64 = 0;
/// Undefined contents.
pub const UNDEFINED: u64 = 1;
/// Reads as zeros.
pub const ZERO: u64 = 2;
/// Unmapped (trimmed).
pub const UNMAPPED: u64 = 3;
/// Unmapped, as written by a pre-release of the format (QEMU reads it as unmapped).
pub const UNMAPPED_V095: u64 = 5;
/// Every sector in the file.
pub const FULLY_PRESENT: u64 = 6;
/// Sectors in the file where the sector bitmap says so (differencing disks).
pub const PARTIALLY_PRESENT: u64 = 7;
/// Sector bitmap block present.
pub const SB_PRESENT: u64 = 6;
/// Largest BAT loaded (entries; 32 MiB of memory).
pub const MAX_BAT_ENTRIES: u64 = 4 << 20;

#[derive(Debug)]
struct Parent {
    path: PathBuf,
    image: Box<dyn DiskImage>,
}

/// An opened VHDX.
#[derive(Debug)]
pub struct VhdxImage {
    file: File,
    path: PathBuf,
    headers: HeaderSection,
    meta: Metadata,
    chunk_ratio: u64,
    bat: Vec<u64>,
    parent: Option<Parent>,
}

/// Opens a VHDX; `chain` holds the images above it and this one.
pub fn open(file: File, path: &Path, chain: &mut crate::image::Chain) -> Result<VhdxImage> {
    let file_len = crate::io::input_len(&file, path)?;
    let headers = header::read(&file, path, file_len)?;
    let meta = metadata::read(&file, path, file_len, &headers.metadata)?;
    let block = u64::from(meta.block_size);
    let chunk_ratio = ((1u64 << 23) * u64::from(meta.logical_sector_size)) / block;
    let data_blocks = meta.virtual_size.div_ceil(block);
    let entries = if meta.has_parent {
        data_blocks.div_ceil(chunk_ratio) * (chunk_ratio + 1)
    } else {
        data_blocks + (data_blocks - 1) / chunk_ratio
    };
    let r = &headers.bat;
    if entries > MAX_BAT_ENTRIES {
        return Err(Error::unsupported(format!(
            "VHDX BAT of {entries} entries is larger than diskseal loads ({MAX_BAT_ENTRIES})"
        ))
        .with_path(path)
        .hint("convert with `qemu-img convert -f vhdx -O raw`"));
    }
    if u64::from(r.length) < entries * 8
        || r.offset
            .checked_add(entries * 8)
            .is_none_or(|e| e > file_len)
    {
        return Err(Error::corrupt(format!(
            "VHDX BAT region ({} bytes at {:#x}) cannot hold the {entries} entries the disk needs within the file ({file_len} bytes)",
            r.length, r.offset
        ))
        .with_path(path)
        .hint("the file is truncated or damaged"));
    }
    let mut raw = vec![0u8; (entries * 8) as usize];
    read_exact_at(&file, path, &mut raw, r.offset)?;
    let bat: Vec<u64> = raw
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
        .collect();
    // Every block the file holds lies within it.
    for (i, &e) in bat.iter().enumerate() {
        let i = i as u64;
        let is_sb = (i + 1).is_multiple_of(chunk_ratio + 1);
        let state = e & 7;
        let (present, len) = if is_sb {
            (state == SB_PRESENT, 1 << 20)
        } else {
            (matches!(state, FULLY_PRESENT | PARTIALLY_PRESENT), block)
        };
        let known = if is_sb {
            matches!(state, NOT_PRESENT | SB_PRESENT)
        } else {
            matches!(
                state,
                NOT_PRESENT
                    | UNDEFINED
                    | ZERO
                    | UNMAPPED
                    | UNMAPPED_V095
                    | FULLY_PRESENT
                    | PARTIALLY_PRESENT
            )
        };
        let at = r.offset + i * 8;
        if !known {
            return Err(Error::corrupt(format!(
                "VHDX BAT entry {i} has state {state}, which is not defined"
            ))
            .with_path(path)
            .at(at));
        }
        if state == PARTIALLY_PRESENT && !meta.has_parent && !is_sb {
            return Err(Error::corrupt(format!(
                "VHDX BAT entry {i} is partially present, which only differencing disks may be"
            ))
            .with_path(path)
            .at(at));
        }
        let off = e & !0xF_FFFF;
        if present && (off < 1 << 20 || off.checked_add(len).is_none_or(|end| end > file_len)) {
            return Err(Error::corrupt(format!(
                "VHDX BAT entry {i} points at {off:#x}, outside the file ({file_len} bytes)"
            ))
            .with_path(path)
            .at(at)
            .hint("the file is truncated or its BAT is damaged"));
        }
    }
    let parent = if meta.has_parent {
        Some(find_parent(path, &meta, chain)?)
    } else {
        None
    };
    Ok(VhdxImage {
        file,
        path: path.to_owned(),
        headers,
        meta,
        chunk_ratio,
        bat,
        parent,
    })
}

/// Finds, checks and opens the parent of a differencing VHDX.
fn find_parent(path: &Path, meta: &Metadata, chain: &mut crate::image::Chain) -> Result<Parent> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut candidates = Vec::new();
    if let Some(rel) = meta.locator("relative_path") {
        candidates.push((dir.join(rel.replace('\\', "/")), Naming::of(rel)));
    }
    if let Some(abs) = meta.locator("absolute_win32_path")
        && let Some(name) = abs.rsplit(['\\', '/']).next()
    {
        candidates.push((dir.join(name), Naming::Relative));
    }
    let want: Vec<&str> = ["parent_linkage", "parent_linkage2"]
        .iter()
        .filter_map(|k| meta.locator(k))
        .collect();
    let Some((p, named)) = candidates.iter().find(|(c, _)| c.is_file()) else {
        let looked: Vec<String> = candidates
            .iter()
            .map(|(c, _)| c.display().to_string())
            .collect();
        return Err(Error::new(
            ErrorKind::Io,
            format!(
                "parent of this differencing VHDX not found; looked for: {}",
                if looked.is_empty() {
                    "nowhere (no relative_path or absolute_win32_path)".to_owned()
                } else {
                    looked.join(", ")
                }
            ),
        )
        .with_path(path)
        .hint("put the parent image next to the child"));
    };
    let (f, flen) = crate::io::open_input(p)
        .map_err(|e| e.hint(format!("it is the parent of {}", path.display())))?;
    let hs = header::read(&f, p, flen)
        .map_err(|e| e.hint(format!("it is the parent of {}", path.display())))?;
    let got = format!("{{{}}}", guid_text(&hs.header.data_write_guid));
    if !want.iter().any(|w| w.eq_ignore_ascii_case(&got)) {
        return Err(Error::corrupt(format!(
            "parent {} has data write GUID {got}, but this differencing VHDX's parent_linkage is {}",
            p.display(),
            want.first().unwrap_or(&"missing")
        ))
        .with_path(path)
        .hint("the parent was modified or replaced after the child was created"));
    }
    drop(f);
    let image = open_backing(p, *named, Some(crate::image::ImageFormat::Vhdx), chain)?;
    Ok(Parent {
        path: p.clone(),
        image,
    })
}

impl VhdxImage {
    fn block(&self) -> u64 {
        u64::from(self.meta.block_size)
    }

    fn entry(&self, block: u64) -> u64 {
        self.bat[(block + block / self.chunk_ratio) as usize]
    }

    /// Reads `buf.len()` bytes at `pos` from the parent (zeros past its end), or zeros.
    fn read_below(&self, buf: &mut [u8], pos: u64) -> Result<()> {
        crate::image::read_parent(self.parent.as_ref().map(|p| &*p.image), buf, pos)
    }

    /// The sector-bitmap bits of block `b`, sectors `first..first + n` of the block.
    fn bitmap(&self, b: u64, first: u64, n: u64) -> Result<Vec<bool>> {
        let chunk = b / self.chunk_ratio;
        let i = chunk * (self.chunk_ratio + 1) + self.chunk_ratio;
        let e = self.bat[i as usize];
        if e & 7 != SB_PRESENT {
            return Err(Error::corrupt(format!(
                "VHDX block {b} is partially present but its sector bitmap (BAT entry {i}) is not present"
            ))
            .with_path(&self.path)
            .at(self.headers.bat.offset + i * 8));
        }
        let spb = self.block() / u64::from(self.meta.logical_sector_size);
        let bit0 = (b % self.chunk_ratio) * spb + first;
        let (byte0, byte1) = (bit0 / 8, (bit0 + n).div_ceil(8));
        let mut bytes = vec![0u8; (byte1 - byte0) as usize];
        read_exact_at(&self.file, &self.path, &mut bytes, (e & !0xF_FFFF) + byte0)?;
        Ok((bit0..bit0 + n)
            .map(|k| bytes[(k / 8 - byte0) as usize] >> (k % 8) & 1 == 1)
            .collect())
    }

    /// Runs of (start, len, from this file?) within block `b` for bytes `a..z` of the block.
    fn runs(&self, b: u64, a: u64, z: u64) -> Result<Vec<(u64, u64, bool)>> {
        let ss = u64::from(self.meta.logical_sector_size);
        let (s0, s1) = (a / ss, z.div_ceil(ss));
        let bits = self.bitmap(b, s0, s1 - s0)?;
        let mut out: Vec<(u64, u64, bool)> = Vec::new();
        for (k, &own) in bits.iter().enumerate() {
            let sa = ((s0 + k as u64) * ss).max(a);
            let sz = ((s0 + k as u64 + 1) * ss).min(z);
            match out.last_mut() {
                Some(l) if l.2 == own => l.1 += sz - sa,
                _ => out.push((sa, sz - sa, own)),
            }
        }
        Ok(out)
    }

    fn details(&self) -> Value {
        let h = &self.headers.header;
        let m = &self.meta;
        let states: [(&str, u64); 6] = [
            ("not_present", NOT_PRESENT),
            ("zero", ZERO),
            ("unmapped", UNMAPPED),
            ("undefined", UNDEFINED),
            ("fully_present", FULLY_PRESENT),
            ("partially_present", PARTIALLY_PRESENT),
        ];
        let blocks = self.meta.virtual_size.div_ceil(self.block());
        let mut counts = serde_json::Map::new();
        for (name, s) in states {
            let n = (0..blocks).filter(|&b| self.entry(b) & 7 == s).count();
            counts.insert(name.into(), json!(n));
        }
        json!({
            "subformat": if m.has_parent { "differencing" } else if counts["fully_present"] == json!(blocks) && m.leave_blocks_allocated { "fixed" } else { "dynamic" },
            "block_size": m.block_size,
            "logical_sector_size": m.logical_sector_size,
            "physical_sector_size": m.physical_sector_size,
            "leave_blocks_allocated": m.leave_blocks_allocated,
            "header": self.headers.which,
            "sequence_number": h.sequence_number,
            "data_write_guid": guid_text(&h.data_write_guid),
            "log_guid": guid_text(&h.log_guid),
            "page83": m.page83,
            "blocks": counts,
            "parent_locator": m.parent_locator.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
            "warnings": self.headers.warnings,
        })
    }
}

impl DiskImage for VhdxImage {
    fn format_name(&self) -> &'static str {
        "vhdx"
    }

    fn virtual_size(&self) -> u64 {
        self.meta.virtual_size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let vsize = self.meta.virtual_size;
        crate::image::check_read(&self.path, vsize, offset, buf.len())?;
        let bs = self.block();
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let (b, in_block) = (pos / bs, pos % bs);
            let n = usize::try_from(bs - in_block)
                .unwrap_or(usize::MAX)
                .min(buf.len() - done);
            let part = &mut buf[done..done + n];
            let e = self.entry(b);
            let data = e & !0xF_FFFF;
            match e & 7 {
                FULLY_PRESENT => read_exact_at(&self.file, &self.path, part, data + in_block)?,
                PARTIALLY_PRESENT => {
                    for (a, len, own) in self.runs(b, in_block, in_block + n as u64)? {
                        let p = &mut part[(a - in_block) as usize..(a - in_block + len) as usize];
                        if own {
                            read_exact_at(&self.file, &self.path, p, data + a)?;
                        } else {
                            self.read_below(p, b * bs + a)?;
                        }
                    }
                }
                NOT_PRESENT | UNDEFINED => self.read_below(part, pos)?,
                _ => part.fill(0),
            }
            done += n;
        }
        Ok(())
    }

    fn extents(&self) -> Result<Vec<Extent>> {
        let bs = self.block();
        let vsize = self.meta.virtual_size;
        let mut own = Vec::new();
        for b in 0..vsize.div_ceil(bs) {
            let start = b * bs;
            let len = bs.min(vsize - start);
            let mut push = |offset, len, kind| push_extent(&mut own, offset, len, kind);
            match self.entry(b) & 7 {
                FULLY_PRESENT => push(start, len, ExtentKind::Data),
                PARTIALLY_PRESENT => {
                    for (a, l, mine) in self.runs(b, 0, len)? {
                        push(
                            start + a,
                            l,
                            if mine {
                                ExtentKind::Data
                            } else {
                                ExtentKind::Unallocated
                            },
                        );
                    }
                }
                NOT_PRESENT | UNDEFINED => push(start, len, ExtentKind::Unallocated),
                ZERO => push(start, len, ExtentKind::Zero),
                _ if self.parent.is_some() => push(start, len, ExtentKind::Zero),
                _ => push(start, len, ExtentKind::Unallocated),
            }
        }
        let below = match &self.parent {
            Some(p) => Some(p.image.extents()?),
            None => None,
        };
        Ok(coalesce(resolve_below(own, below.as_deref())))
    }

    fn info(&self) -> ImageInfo {
        ImageInfo {
            format: "vhdx",
            path: self.path.clone(),
            virtual_size: self.meta.virtual_size,
            cluster_size: Some(self.block()),
            backing_file: self.parent.as_ref().map(|p| p.path.display().to_string()),
            backing_format: self.parent.as_ref().map(|_| "vhdx".to_owned()),
            backing: self.parent.as_ref().map(|p| Box::new(p.image.info())),
            details: self.details(),
        }
    }
}
