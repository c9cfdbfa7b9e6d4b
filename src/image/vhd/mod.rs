//! Microsoft VHD ("vpc" in QEMU): fixed, dynamic and differencing images (formats.md §4).
//!
//! - [`footer`]: the 512-byte footer (decode/encode, checksum, CHS geometry, the virtual-size rule) and the
//!   writer side for `-O vhd` ([`footer::fixed_footer`], [`footer::aligned_size`]);
//! - [`dynamic`]: the dynamic disk header, the BAT and the parent locators;
//! - [`batmap`]: blktap's batmap header, batmap and key hash (vhd-util encrypted VHDs);
//! - [`writer`]: the vhd-util-style dynamic VHD writer of `ibm-classic-vhd`;
//! - [`classic`]: opening a vhd-util encrypted VHD with its key (key-hash check, decrypting reads);
//! - this file: [`open`] (choosing the footer copy, finding the parent) and [`VhdImage`], the [`DiskImage`].
//!
//! Decisions, each like QEMU 10.0.2 unless said otherwise:
//! - The footer at EOF−512 is used; when it is missing or damaged and the copy at offset 0 is good (dynamic
//!   and differencing images), the copy is used and a warning is recorded in `info` details. A footer whose
//!   checksum is wrong with no good copy is **refused**, as qemu-img 10 does ("Incorrect header checksum").
//! - A wrong dynamic-header checksum is only a warning: QEMU never checks it.
//! - Dynamic images: an allocated block reads from the file whatever its sector bitmap says (QEMU ignores
//!   bitmaps); unallocated BAT entries read as zeros.
//! - Differencing images: a set bitmap bit reads the sector from this file, a clear bit (or an unallocated
//!   block) from the parent; parts past the parent's size read as zeros. QEMU ignores parents altogether.
//! - The parent is looked for first where a relative name leads: the W2ru locator (against the child's
//!   directory), then the parent Unicode name in the child's directory; then where the absolute
//!   locators lead, W2ku and MacX (`file://` URL), which the backing-file rule refuses unless allowed
//!   ([`crate::image::BackingPolicy`]). The first one whose footer unique id equals the child's parent
//!   unique id is used.
//!
//! Reads are positional (`&self`, any thread). The BAT is kept in memory (4 bytes per block, at most
//! [`dynamic::MAX_BAT_ENTRIES`]); sector bitmaps are read on demand.

pub mod batmap;
mod bytes;
pub mod classic;
pub mod dynamic;
pub mod footer;
pub mod writer;

use std::fs::File;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::error::{Error, ErrorKind, Result};
use crate::image::{
    DiskImage, Extent, ExtentKind, ImageFormat, ImageInfo, Naming, coalesce, open_backing,
};
use crate::io::read_exact_at;

use dynamic::{DynamicHeader, HEADER_SIZE, RawDynamicHeader, UNALLOCATED};
use footer::{COOKIE, DiskType, FOOTER_SIZE, Footer, RawFooter, SizeRule, fourcc};

/// Opens a VHD file (fixed, dynamic or differencing; a differencing image opens its parent chain).
pub fn open(
    file: File,
    path: &Path,
    chain: &mut crate::image::Chain,
) -> Result<Box<dyn DiskImage>> {
    Ok(Box::new(VhdImage::open(file, path, chain)?))
}

/// An open VHD.
#[derive(Debug)]
pub struct VhdImage {
    file: File,
    path: PathBuf,
    footer: Footer,
    footer_at: u64,
    warnings: Vec<String>,
    sparse: Option<Sparse>,
}

/// The dynamic/differencing part.
#[derive(Debug)]
struct Sparse {
    header: DynamicHeader,
    bat: Vec<u32>,
    parent: Option<Parent>,
}

/// An opened parent image.
#[derive(Debug)]
struct Parent {
    image: Box<dyn DiskImage>,
    path: PathBuf,
}

fn uuid_string(b: &[u8; 16]) -> String {
    uuid::Uuid::from_bytes(*b).to_string()
}

/// Reads both footer copies and picks one (see the module docs). Returns the footer, where it was read and
/// where the data area ends (before the end footer when that one has its cookie).
fn read_footer(
    file: &File,
    path: &Path,
    len: u64,
    warnings: &mut Vec<String>,
) -> Result<(Footer, u64, u64)> {
    if len < FOOTER_SIZE as u64 {
        return Err(Error::corrupt(format!(
            "file is {len} bytes, too short for the 512-byte VHD footer"
        ))
        .with_path(path)
        .at(0)
        .hint("the file is truncated"));
    }
    let end_at = len - FOOTER_SIZE as u64;
    let mut end = [0u8; FOOTER_SIZE];
    read_exact_at(file, path, &mut end, end_at)?;
    let mut head = [0u8; FOOTER_SIZE];
    let has_head = end_at > 0 && {
        read_exact_at(file, path, &mut head, 0)?;
        &head[..8] == COOKIE
    };
    let end_has_cookie = &end[..8] == COOKIE;
    let data_end = if end_has_cookie { end_at } else { len };
    match Footer::validate(RawFooter::decode(&end), path, end_at) {
        Ok(f) => {
            if has_head && f.disk_type != DiskType::Fixed {
                let raw = RawFooter::decode(&head);
                if raw.computed_checksum() != raw.checksum {
                    warnings.push("the footer copy at offset 0 has a wrong checksum; the footer at the end is used".into());
                } else if head != end {
                    warnings.push("the footer copy at offset 0 differs from the footer at the end; the end one is used".into());
                }
            }
            Ok((f, end_at, data_end))
        }
        Err(end_err) => {
            if has_head
                && let Ok(f) = Footer::validate(RawFooter::decode(&head), path, 0)
                && f.disk_type != DiskType::Fixed
            {
                warnings.push(format!(
                    "the footer at the end (offset {end_at:#x}) is unusable ({}); the copy at offset 0 is used",
                    end_err.message()
                ));
                return Ok((f, 0, data_end));
            }
            if !end_has_cookie && !has_head {
                return Err(Error::format("no VHD footer (\"conectix\") at the end of the file or at offset 0")
                    .with_path(path)
                    .at(end_at)
                    .hint("the file is not a VHD, or it is truncated; pass -f raw to read it as a raw disk"));
            }
            Err(end_err)
        }
    }
}

impl VhdImage {
    /// Opens and validates a VHD; `chain` holds the images above it (for the parent's loop and depth checks).
    pub fn open(file: File, path: &Path, chain: &mut crate::image::Chain) -> Result<VhdImage> {
        let len = file
            .metadata()
            .map_err(|e| Error::io("stat", path, None, e))?
            .len();
        let mut warnings = Vec::new();
        let (footer, footer_at, data_end) = read_footer(&file, path, len, &mut warnings)?;
        let vsize = footer.virtual_size;
        let sparse = match footer.disk_type {
            DiskType::Fixed => {
                if vsize > data_end {
                    let (field, field_at) = match footer.size_rule {
                        SizeRule::Chs => ("disk geometry", 56),
                        _ => ("current size", 48),
                    };
                    return Err(Error::corrupt(format!(
                        "fixed VHD is truncated: {data_end} bytes of data before the footer, but footer field '{field}' gives a virtual size of {vsize}"
                    ))
                    .with_path(path)
                    .at(footer_at + field_at)
                    .hint("the file is truncated"));
                }
                None
            }
            DiskType::Dynamic | DiskType::Differencing => {
                let at = footer.raw.data_offset;
                if at < FOOTER_SIZE as u64
                    || at
                        .checked_add(HEADER_SIZE as u64)
                        .is_none_or(|e| e > data_end)
                {
                    return Err(Error::corrupt(format!(
                        "VHD footer field 'data offset' is {at:#x}: no room there for the 1024-byte dynamic header (data area ends at {data_end:#x})"
                    ))
                    .with_path(path)
                    .at(footer_at + 16)
                    .hint("the file is truncated or the footer is damaged"));
                }
                let mut hb = [0u8; HEADER_SIZE];
                read_exact_at(&file, path, &mut hb, at)?;
                let header =
                    DynamicHeader::validate(RawDynamicHeader::decode(&hb), path, at, len, vsize)?;
                if !header.checksum_ok {
                    warnings.push(format!(
                        "the dynamic header checksum at {:#x} is wrong (stored {:#010x}, computed {:#010x}); QEMU ignores it too",
                        at + dynamic::CHECKSUM_AT as u64,
                        header.raw.checksum,
                        header.raw.computed_checksum()
                    ));
                }
                let bat = dynamic::read_bat(&file, path, &header, data_end, vsize)?;
                let parent = if footer.disk_type == DiskType::Differencing {
                    Some(find_parent(
                        &file,
                        path,
                        len,
                        &header,
                        vsize,
                        chain,
                        &mut warnings,
                    )?)
                } else {
                    None
                };
                Some(Sparse {
                    header,
                    bat,
                    parent,
                })
            }
        };
        Ok(VhdImage {
            file,
            path: path.to_owned(),
            footer,
            footer_at,
            warnings,
            sparse,
        })
    }

    /// The footer in use.
    pub fn footer(&self) -> &Footer {
        &self.footer
    }

    /// The open file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The dynamic header (dynamic and differencing images).
    pub fn dynamic_header(&self) -> Option<&DynamicHeader> {
        self.sparse.as_ref().map(|s| &s.header)
    }

    /// The BAT entries covering the virtual size (dynamic and differencing images).
    pub fn bat(&self) -> Option<&[u32]> {
        self.sparse.as_ref().map(|s| &s.bat[..])
    }

    /// Warnings found while opening.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Reads `buf.len()` bytes at `pos` from the layer below (the parent, zeros past its end, or zeros).
    fn read_below(&self, s: &Sparse, buf: &mut [u8], pos: u64) -> Result<()> {
        crate::image::read_parent(s.parent.as_ref().map(|p| &*p.image), buf, pos)
    }

    /// Reads the sector-bitmap bytes covering sectors `first..=last` of the block whose BAT entry is `entry`.
    fn bitmap(&self, entry: u32, first: u64, last: u64) -> Result<Vec<u8>> {
        let mut bm = vec![0u8; (last / 8 - first / 8 + 1) as usize];
        read_exact_at(
            &self.file,
            &self.path,
            &mut bm,
            u64::from(entry) * 512 + first / 8,
        )?;
        Ok(bm)
    }

    /// Reads the part `in_block..in_block + buf.len()` of block `bi`.
    fn read_block_part(&self, s: &Sparse, bi: usize, in_block: u64, buf: &mut [u8]) -> Result<()> {
        let bs = s.header.block_size;
        let block_first = bi as u64 * bs;
        let entry = s.bat[bi];
        if entry == UNALLOCATED {
            return self.read_below(s, buf, block_first + in_block);
        }
        let data_at = u64::from(entry) * 512 + s.header.bitmap_size;
        if s.parent.is_none() {
            return read_exact_at(&self.file, &self.path, buf, data_at + in_block);
        }
        let end = in_block + buf.len() as u64;
        let (first, last) = (in_block / 512, (end - 1) / 512);
        let bm = self.bitmap(entry, first, last)?;
        let bit =
            |sector: u64| (bm[(sector / 8 - first / 8) as usize] >> (7 - sector % 8)) & 1 == 1;
        let mut sec = first;
        while sec <= last {
            let own = bit(sec);
            let mut run_end = sec + 1;
            while run_end <= last && bit(run_end) == own {
                run_end += 1;
            }
            let a = (sec * 512).max(in_block);
            let b = (run_end * 512).min(end);
            let part = &mut buf[(a - in_block) as usize..(b - in_block) as usize];
            if own {
                read_exact_at(&self.file, &self.path, part, data_at + a)?;
            } else {
                self.read_below(s, part, block_first + a)?;
            }
            sec = run_end;
        }
        Ok(())
    }

    /// The virtual disk as runs of (offset, len, true = this file's data / false = the layer below).
    fn own_runs(&self, s: &Sparse) -> Result<Vec<(u64, u64, bool)>> {
        let bs = s.header.block_size;
        let vsize = self.footer.virtual_size;
        let mut runs: Vec<(u64, u64, bool)> = Vec::new();
        let mut push = |off: u64, len: u64, own: bool| match runs.last_mut() {
            Some(l) if l.2 == own && l.0 + l.1 == off => l.1 += len,
            _ => runs.push((off, len, own)),
        };
        for (bi, &entry) in s.bat.iter().enumerate() {
            let start = bi as u64 * bs;
            let len = (vsize - start).min(bs);
            if entry == UNALLOCATED || s.parent.is_none() {
                push(start, len, entry != UNALLOCATED);
                continue;
            }
            let sectors = len.div_ceil(512);
            let bm = self.bitmap(entry, 0, sectors - 1)?;
            let mut sec = 0;
            while sec < sectors {
                let own = (bm[(sec / 8) as usize] >> (7 - sec % 8)) & 1 == 1;
                let mut end = sec + 1;
                while end < sectors && ((bm[(end / 8) as usize] >> (7 - end % 8)) & 1 == 1) == own {
                    end += 1;
                }
                let a = sec * 512;
                let b = (end * 512).min(len);
                push(start + a, b - a, own);
                sec = end;
            }
        }
        Ok(runs)
    }

    fn details(&self) -> Value {
        let r = &self.footer.raw;
        let g = self.footer.geometry();
        let mut d = json!({
            "subformat": self.footer.disk_type.name(),
            "creator_app": fourcc(&r.creator_app),
            "creator_version": format!("{}.{}", r.creator_version >> 16, r.creator_version & 0xffff),
            "creator_os": fourcc(&r.creator_os),
            "uuid": uuid_string(&r.unique_id),
            "size_rule": self.footer.size_rule.name(),
            "current_size": r.current_size,
            "original_size": r.original_size,
            "geometry": {"cylinders": g.cylinders, "heads": g.heads, "sectors": g.sectors},
            "timestamp": r.timestamp,
            "footer_offset": self.footer_at,
            "warnings": self.warnings,
        });
        if let Some(s) = &self.sparse {
            d["block_size"] = json!(s.header.block_size);
            d["bat_entries"] = json!(s.header.raw.max_table_entries);
            d["allocated_blocks"] = json!(s.bat.iter().filter(|&&e| e != UNALLOCATED).count());
            if r.creator_app == writer::CREATOR_APP
                && let Ok(b) = classic::batmap_of(self, false)
                && b.header.keyhash.cookie == batmap::KEYHASH_PRESENT
            {
                d["encrypt"] = json!({"format": "vhd-util (blktap) aes-xts-plain", "batmap": b.to_json(s.bat.len() as u64)});
            }
            if let Some(p) = &s.parent {
                d["parent_uuid"] = json!(uuid_string(&s.header.raw.parent_unique_id));
                d["parent_name"] = json!(s.header.parent_name());
                d["parent_timestamp"] = json!(s.header.raw.parent_timestamp);
                d["parent_path"] = json!(p.path.display().to_string());
            }
        }
        d
    }
}

/// Finds and opens the parent of a differencing image (see the module docs for the search order).
fn find_parent(
    file: &File,
    path: &Path,
    len: u64,
    header: &DynamicHeader,
    child_size: u64,
    chain: &mut crate::image::Chain,
    warnings: &mut Vec<String>,
) -> Result<Parent> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let mut candidates: Vec<(PathBuf, Naming)> = Vec::new();
    for code in [dynamic::W2RU, dynamic::W2KU, dynamic::MACX] {
        for (i, l) in header
            .raw
            .parent_locators
            .iter()
            .enumerate()
            .filter(|(_, l)| l.code == code)
        {
            match dynamic::locator_path(file, path, len, i, l, header.at) {
                Ok(Some(s)) => {
                    let named = Naming::of(&s);
                    candidates.push(match named {
                        Naming::Absolute => (PathBuf::from(&s), named),
                        Naming::Relative => (dir.join(&s), named),
                    });
                }
                Ok(None) => {}
                Err(e) => warnings.push(format!("{e}")),
            }
        }
    }
    if let Some(name) = header.parent_name() {
        let base = name.rsplit(['/', '\\']).next().unwrap_or(&name).to_string();
        if !base.is_empty() {
            candidates.push((dir.join(base), Naming::Relative));
        }
    }
    // Relative names first: an absolute one is followed only when allowed.
    candidates.sort_by_key(|(_, named)| *named == Naming::Absolute);
    let mut seen: Vec<PathBuf> = Vec::new();
    let want = uuid_string(&header.raw.parent_unique_id);
    let mut mismatch: Option<(PathBuf, String)> = None;
    for (c, named) in candidates {
        if seen.contains(&c) {
            continue;
        }
        seen.push(c.clone());
        if !c.exists() {
            continue;
        }
        let image = open_backing(&c, named, Some(ImageFormat::Vpc), chain)?;
        let got = image
            .info()
            .details
            .get("uuid")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if got == want {
            let psize = image.virtual_size();
            if psize != child_size {
                warnings.push(format!(
                    "the parent's virtual size {psize} differs from this image's {child_size}; what lies past the parent's end reads as zeros"
                ));
            }
            return Ok(Parent { image, path: c });
        }
        mismatch.get_or_insert((c, got));
    }
    if let Some((p, got)) = mismatch {
        return Err(Error::corrupt(format!(
            "parent {} has unique id {got}, but this differencing VHD's 'parent unique id' is {want}",
            p.display()
        ))
        .with_path(path)
        .at(header.at + 40)
        .hint("the parent was replaced or modified after the child was created"));
    }
    let looked: Vec<String> = seen.iter().map(|p| p.display().to_string()).collect();
    let looked = if looked.is_empty() {
        "nowhere: no parent locator or parent name".to_string()
    } else {
        looked.join(", ")
    };
    Err(Error::new(ErrorKind::Io, format!("parent of this differencing VHD not found; looked for: {looked}"))
        .with_path(path)
        .at(header.at + 64)
        .hint("put the parent image next to the child, or convert the chain with a tool that knows its location"))
}

impl DiskImage for VhdImage {
    fn format_name(&self) -> &'static str {
        "vpc"
    }

    fn virtual_size(&self) -> u64 {
        self.footer.virtual_size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let vsize = self.footer.virtual_size;
        crate::image::check_read(&self.path, vsize, offset, buf.len())?;
        let Some(s) = &self.sparse else {
            return read_exact_at(&self.file, &self.path, buf, offset);
        };
        let bs = s.header.block_size;
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let in_block = pos % bs;
            let n = usize::try_from(bs - in_block)
                .unwrap_or(usize::MAX)
                .min(buf.len() - done);
            self.read_block_part(s, (pos / bs) as usize, in_block, &mut buf[done..done + n])?;
            done += n;
        }
        Ok(())
    }

    fn extents(&self) -> Result<Vec<Extent>> {
        let vsize = self.footer.virtual_size;
        let Some(s) = &self.sparse else {
            return Ok(coalesce(vec![Extent {
                offset: 0,
                len: vsize,
                kind: ExtentKind::Data,
            }]));
        };
        let runs = self.own_runs(s)?;
        let below = match &s.parent {
            Some(p) => p.image.extents()?,
            None => Vec::new(),
        };
        let mut out = Vec::new();
        for (off, len, own) in runs {
            if own {
                out.push(Extent {
                    offset: off,
                    len,
                    kind: ExtentKind::Data,
                });
                continue;
            }
            let end = off + len;
            let mut pos = off;
            let start_idx = below.partition_point(|e| e.offset + e.len <= off);
            for e in &below[start_idx..] {
                if e.offset >= end {
                    break;
                }
                let a = e.offset.max(pos);
                let b = (e.offset + e.len).min(end);
                if a > pos {
                    out.push(Extent {
                        offset: pos,
                        len: a - pos,
                        kind: ExtentKind::Unallocated,
                    });
                }
                if b > a {
                    out.push(Extent {
                        offset: a,
                        len: b - a,
                        kind: e.kind,
                    });
                    pos = b;
                }
            }
            if pos < end {
                out.push(Extent {
                    offset: pos,
                    len: end - pos,
                    kind: ExtentKind::Unallocated,
                });
            }
        }
        Ok(coalesce(out))
    }

    fn info(&self) -> ImageInfo {
        let parent = self.sparse.as_ref().and_then(|s| s.parent.as_ref());
        ImageInfo {
            format: "vpc",
            path: self.path.clone(),
            virtual_size: self.footer.virtual_size,
            cluster_size: self.sparse.as_ref().map(|s| s.header.block_size),
            backing_file: parent.map(|p| p.path.display().to_string()),
            backing_format: None,
            backing: parent.map(|p| Box::new(p.image.info())),
            details: self.details(),
        }
    }
}
