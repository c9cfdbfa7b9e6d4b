//! Disk images, behind one trait: [`DiskImage`] gives the virtual size, positional reads usable from
//! many threads, the allocation map as [`Extent`]s and an [`ImageInfo`] for `diskseal info`.
//! [`open`] finds the format with [`detect`] (raw as the fallback; `-f` forces one).
//!
//! - [`raw`]: plain files;
//! - [`vhd`]: Microsoft VHD (fixed, dynamic, differencing with parent chains);
//! - [`qcow2`]: QEMU qcow2 v2/v3 (zero, compressed zlib/zstd, extended L2, backing chains);
//! - [`vmdk`]: VMware VMDK (sparse, stream-optimized, flat, multi-extent, delta disks);
//! - [`vhdx`]: Hyper-V VHDX (dynamic, fixed, differencing);
//! - [`ova`]: a VMDK disk read straight out of an OVA archive;
//! - [`luks`]: a LUKS file's header (alone or inside `-O vhd`'s fixed VHD) and, unlocked, its
//!   plaintext.
//!
//! Backing files and parents are opened through [`open_backing`], which bounds the chain depth, refuses
//! loops, and follows a backing file only when it lies in the folder of the image that names it, unless
//! the [`BackingPolicy`] allows it (a hostile image can name `/etc/shadow` or `../x` as its backing file,
//! whose content would then be encrypted as the disk). Every reader inherits the rule.

pub mod detect;
pub mod luks;
pub mod ova;
pub mod qcow2;
pub mod raw;
pub mod vhd;
pub mod vhdx;
pub mod vmdk;

use std::fmt::Debug;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, Result};

/// What a run of the virtual disk holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtentKind {
    /// Data that must be read.
    Data,
    /// Known to read as zeros (allocated zeros or a zero flag).
    Zero,
    /// Not allocated in any layer: reads as zeros.
    Unallocated,
}

/// A run of the virtual disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Guest byte offset.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// What it holds.
    pub kind: ExtentKind,
}

/// What `diskseal info` shows about an image (like `qemu-img info`).
#[derive(Debug, Clone)]
pub struct ImageInfo {
    /// Format name as qemu-img prints it ("raw", "vpc", "qcow2").
    pub format: &'static str,
    /// The file.
    pub path: PathBuf,
    /// Virtual disk size.
    pub virtual_size: u64,
    /// Cluster (qcow2) or block (VHD) size.
    pub cluster_size: Option<u64>,
    /// The backing file / parent as named in the image, and its format if recorded.
    pub backing_file: Option<String>,
    /// The backing format recorded in the image.
    pub backing_format: Option<String>,
    /// The opened backing image's info (the chain).
    pub backing: Option<Box<ImageInfo>>,
    /// Format-specific details (qcow2 compat, compression type, VHD subformat, creator, ...).
    pub details: Value,
}

/// A readable virtual disk.
pub trait DiskImage: Debug + Send + Sync {
    /// The format's name, as `qemu-img info` prints it ("raw", "qcow2", "vpc").
    fn format_name(&self) -> &'static str;
    /// The virtual disk size in bytes.
    fn virtual_size(&self) -> u64;
    /// Fills `buf` with the virtual disk's bytes at `offset`; `offset + buf.len()` must not exceed the size.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()>;
    /// The allocation map, covering `0..virtual_size()` in order, with backing layers resolved.
    fn extents(&self) -> Result<Vec<Extent>> {
        Ok(vec![Extent {
            offset: 0,
            len: self.virtual_size(),
            kind: ExtentKind::Data,
        }])
    }
    /// Facts for `diskseal info`.
    fn info(&self) -> ImageInfo;
}

/// An image format diskseal reads (`-f`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    /// A plain disk image.
    Raw,
    /// Microsoft VHD ("vpc" in QEMU).
    Vpc,
    /// QEMU qcow2.
    Qcow2,
    /// VMware VMDK.
    Vmdk,
    /// Hyper-V VHDX.
    Vhdx,
    /// An OVA archive; the number picks a disk (1-based, `--disk`).
    Ova(Option<u16>),
}

impl ImageFormat {
    /// Parses `-f` values (QEMU's names; "vhd" is accepted for "vpc").
    pub fn parse(name: &str) -> Result<ImageFormat> {
        match name {
            "raw" => Ok(ImageFormat::Raw),
            "vpc" | "vhd" => Ok(ImageFormat::Vpc),
            "qcow2" => Ok(ImageFormat::Qcow2),
            "vmdk" => Ok(ImageFormat::Vmdk),
            "vhdx" => Ok(ImageFormat::Vhdx),
            "ova" => Ok(ImageFormat::Ova(None)),
            "qcow" | "qed" | "vdi" | "parallels" | "cloop" | "dmg" | "bochs" => {
                Err(
                    Error::unsupported(format!("diskseal cannot read {name} images"))
                        .hint(format!("convert it first: `qemu-img convert -f {name} -O raw IMAGE disk.raw`; diskseal reads raw, vpc (vhd), qcow2, vmdk, vhdx, ova")),
                )
            }
            other => Err(
                Error::unsupported(format!("unknown image format {other:?}"))
                    .hint("supported: raw, vpc (vhd), qcow2, vmdk, vhdx, ova"),
            ),
        }
    }
}

/// Deepest backing chain accepted (QEMU has no fixed limit; this bounds memory and file handles).
pub const MAX_CHAIN_DEPTH: usize = 64;

/// Which backing files may be followed. By default only those inside the folder of the image that
/// names them (after resolving `..` and symbolic links).
#[derive(Debug, Clone, Default)]
pub struct BackingPolicy {
    /// Follow every backing file (`--trust-backing`).
    pub trust_all: bool,
    /// Backing files allowed wherever they are (`--allow-backing PATH`).
    pub allowed: Vec<PathBuf>,
}

impl BackingPolicy {
    /// Follows every backing file (for `info`, which only shows the chain).
    pub fn trust_all() -> BackingPolicy {
        BackingPolicy {
            trust_all: true,
            allowed: Vec::new(),
        }
    }

    /// Refuses `backing` (named by the image `naming`, canonical, as `named`) unless the policy allows
    /// it: an absolute name is refused wherever it points, a relative one when it resolves outside
    /// `naming`'s folder.
    fn check(&self, naming: &Path, backing: &Path, named: Naming) -> Result<()> {
        if self.trust_all {
            return Ok(());
        }
        // What cannot be resolved does not exist: opening it gives the error.
        let Ok(target) = std::fs::canonicalize(backing) else {
            return Ok(());
        };
        if self
            .allowed
            .iter()
            .any(|a| std::fs::canonicalize(a).is_ok_and(|a| a == target))
        {
            return Ok(());
        }
        let folder = naming.parent().unwrap_or(Path::new("/"));
        let why = match named {
            Naming::Relative if target.starts_with(folder) => return Ok(()),
            Naming::Relative => format!(
                "backing file {} (resolved to {}) lies outside {}, the folder of the image that names it",
                backing.display(),
                target.display(),
                folder.display()
            ),
            Naming::Absolute => format!(
                "backing file {} is named by an absolute path, which points wherever the image's \
                 author chose",
                backing.display()
            ),
        };
        Err(Error::invalid(format!(
            "{why}; diskseal does not follow it unless told to"
        ))
        .with_path(naming)
        .hint(format!(
            "an image can name any file as its backing file, and that file's content would be \
             encrypted as the disk; if this one is expected, pass --allow-backing {} (or \
             --trust-backing)",
            backing.display()
        )))
    }
}

/// How an image names a backing file, parent or extent: relative to its own folder (followed when it
/// stays inside that folder) or by an absolute path (followed only when allowed by name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Naming {
    /// Relative to the folder of the image that names it.
    Relative,
    /// An absolute path (`/x`, `C:\x`, `\\server\x`).
    Absolute,
}

impl Naming {
    /// How `name`, as the image wrote it, names its file (`/x`, `C:\x` and `\\server\x` are absolute).
    pub fn of(name: &str) -> Naming {
        let b = name.as_bytes();
        let drive = b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1] == b':';
        if name.starts_with(['/', '\\']) || drive {
            Naming::Absolute
        } else {
            Naming::Relative
        }
    }
}

/// An open backing chain: the images above the one being opened (canonical paths, for the loop and
/// depth checks; it dereferences to that list) and the [`BackingPolicy`].
#[derive(Debug, Default)]
pub struct Chain {
    open: Vec<PathBuf>,
    policy: BackingPolicy,
}

impl Chain {
    /// An empty chain with `policy`.
    pub fn new(policy: BackingPolicy) -> Chain {
        Chain {
            open: Vec::new(),
            policy,
        }
    }
}

impl Chain {
    /// Refuses `path`, named by the image last opened (as `named`), unless the policy allows it.
    pub fn check(&self, path: &Path, named: Naming) -> Result<()> {
        match self.last() {
            Some(naming) => self.policy.check(naming, path, named),
            None => Ok(()),
        }
    }
}

impl std::ops::Deref for Chain {
    type Target = Vec<PathBuf>;
    fn deref(&self) -> &Vec<PathBuf> {
        &self.open
    }
}

impl std::ops::DerefMut for Chain {
    fn deref_mut(&mut self) -> &mut Vec<PathBuf> {
        &mut self.open
    }
}

/// Opens `path` as a disk image: `format` forces one, otherwise the magic decides (raw as the fallback).
/// Backing files outside the folder of the image that names them are refused ([`open_with`] allows them).
pub fn open(path: &Path, format: Option<ImageFormat>) -> Result<Box<dyn DiskImage>> {
    open_with(path, format, BackingPolicy::default())
}

/// [`open`] with the backing files `policy` allows.
pub fn open_with(
    path: &Path,
    format: Option<ImageFormat>,
    policy: BackingPolicy,
) -> Result<Box<dyn DiskImage>> {
    open_backing(path, Naming::Relative, format, &mut Chain::new(policy))
}

/// Every backing file of an opened image, top down (from its [`ImageInfo`] chain).
pub fn backing_files(image: &dyn DiskImage) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let info = image.info();
    let mut next = info.backing.as_deref();
    while let Some(b) = next {
        out.push(b.path.clone());
        next = b.backing.as_deref();
    }
    out
}

/// Opens an image that is part of a chain; `chain` holds the files already open above it (for loop and
/// depth checks) and is extended by the callee before it opens its own backing file. `named` says how
/// the image above named `path` (see [`BackingPolicy`]).
pub fn open_backing(
    path: &Path,
    named: Naming,
    format: Option<ImageFormat>,
    chain: &mut Chain,
) -> Result<Box<dyn DiskImage>> {
    chain.check(path, named)?;
    let (file, len) = crate::io::open_input(path).map_err(|err| {
        if chain.is_empty() {
            err
        } else {
            err.hint(format!(
                "it is the backing file of {}",
                chain[chain.len() - 1].display()
            ))
        }
    })?;
    let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    if chain.contains(&canonical) {
        return Err(Error::corrupt("backing chain loops back to this file").with_path(path));
    }
    if chain.len() >= MAX_CHAIN_DEPTH {
        return Err(Error::unsupported(format!(
            "backing chain deeper than {MAX_CHAIN_DEPTH} images"
        ))
        .with_path(path));
    }
    let format = match format {
        Some(f) => f,
        None => {
            let found = detect::detect(&file, len);
            found.image_format().ok_or_else(|| found.refusal(path))?
        }
    };
    chain.push(canonical);
    let r = match format {
        ImageFormat::Raw => {
            raw::RawImage::new(file, path).map(|i| Box::new(i) as Box<dyn DiskImage>)
        }
        ImageFormat::Vpc => vhd::open(file, path, chain),
        ImageFormat::Qcow2 => qcow2::open(file, path, chain),
        ImageFormat::Vmdk => {
            vmdk::open(file, path, chain).map(|i| Box::new(i) as Box<dyn DiskImage>)
        }
        ImageFormat::Vhdx => {
            vhdx::open(file, path, chain).map(|i| Box::new(i) as Box<dyn DiskImage>)
        }
        ImageFormat::Ova(n) => ova::open(file, path, n).map(|i| Box::new(i) as Box<dyn DiskImage>),
    };
    chain.pop();
    r
}

/// Appends a run to an allocation map being built in order, merging it with the last run when they
/// touch and are of the same kind (so a map costs memory per run, not per cluster).
pub fn push_extent(out: &mut Vec<Extent>, offset: u64, len: u64, kind: ExtentKind) {
    match out.last_mut() {
        Some(l) if l.kind == kind && l.offset + l.len == offset => l.len += len,
        _ if len == 0 => {}
        _ => out.push(Extent { offset, len, kind }),
    }
}

/// Refuses a read of `len` bytes at `offset` that does not lie inside the `vsize`-byte virtual disk of
/// the image at `path` (the readers' `read_at` check).
pub(crate) fn check_read(path: &Path, vsize: u64, offset: u64, len: usize) -> Result<()> {
    if offset.checked_add(len as u64).is_none_or(|e| e > vsize) {
        return Err(Error::invalid(format!(
            "read of {len} bytes at {offset:#x} goes past the end of the {vsize}-byte virtual disk"
        ))
        .with_path(path));
    }
    Ok(())
}

/// Fills `buf` with the bytes at `pos` of the layer below (`parent`), zeros past its end; all zeros
/// without a parent.
pub(crate) fn read_parent(parent: Option<&dyn DiskImage>, buf: &mut [u8], pos: u64) -> Result<()> {
    let k = parent.map_or(0, |p| {
        usize::try_from(p.virtual_size().saturating_sub(pos))
            .unwrap_or(usize::MAX)
            .min(buf.len())
    });
    if let Some(p) = parent.filter(|_| k > 0) {
        p.read_at(&mut buf[..k], pos)?;
    }
    buf[k..].fill(0);
    Ok(())
}

/// Merges adjacent extents of the same kind (helper for readers).
pub fn coalesce(extents: Vec<Extent>) -> Vec<Extent> {
    let mut out: Vec<Extent> = Vec::with_capacity(extents.len());
    for e in extents.into_iter().filter(|e| e.len > 0) {
        match out.last_mut() {
            Some(last) if last.kind == e.kind && last.offset + last.len == e.offset => {
                last.len += e.len
            }
            _ => out.push(e),
        }
    }
    out
}

/// Resolves the runs of `own` that are [`ExtentKind::Unallocated`] (not in this layer) against the
/// allocation map of the layer below, `below` (none: they stay unallocated; past its end: unallocated).
pub fn resolve_below(own: Vec<Extent>, below: Option<&[Extent]>) -> Vec<Extent> {
    let Some(below) = below else {
        return coalesce(own);
    };
    let mut out = Vec::with_capacity(own.len());
    for e in own {
        if e.kind != ExtentKind::Unallocated {
            out.push(e);
            continue;
        }
        let end = e.offset + e.len;
        let mut pos = e.offset;
        let first = below.partition_point(|b| b.offset + b.len <= pos);
        for b in &below[first..] {
            if b.offset >= end {
                break;
            }
            let (a, z) = (b.offset.max(pos), (b.offset + b.len).min(end));
            if a > pos {
                out.push(Extent {
                    offset: pos,
                    len: a - pos,
                    kind: ExtentKind::Unallocated,
                });
            }
            if z > a {
                out.push(Extent {
                    offset: a,
                    len: z - a,
                    kind: b.kind,
                });
                pos = z;
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
    coalesce(out)
}

#[cfg(test)]
mod tests {
    use super::Naming;

    #[test]
    fn absolute_names_are_unix_windows_and_unc_paths() {
        for name in [
            "/etc/shadow",
            "C:\\disks\\base.vhd",
            "c:/x",
            "\\\\server\\share\\x",
        ] {
            assert_eq!(Naming::of(name), Naming::Absolute, "{name}");
        }
        for name in ["base.raw", "../x", "sub/base.vhd", ".\\base.vhd", "C", ""] {
            assert_eq!(Naming::of(name), Naming::Relative, "{name}");
        }
    }
}
