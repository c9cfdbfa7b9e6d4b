//! Disk images, behind one trait: [`DiskImage`] gives the virtual size, positional reads usable from
//! many threads, and the allocation map as [`Extent`]s. [`open`] sniffs the format.
//!
//! - [`raw`]: plain files.
//!
//! Container formats (VHD, QCOW2) are recognised by their magic and refused with a clear message until
//! their readers exist, so they are never encrypted as if they were raw disks.

pub mod raw;

use std::fmt::Debug;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::error::{Error, Result};

/// What a run of the virtual disk holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtentKind {
    /// Data that must be read.
    Data,
    /// Known to read as zeros (allocated or flagged zero).
    Zero,
    /// Not allocated: reads as zeros.
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

/// A readable virtual disk.
pub trait DiskImage: Debug + Send + Sync {
    /// The format's name, as `qemu-img info` prints it ("raw", "qcow2", "vpc").
    fn format_name(&self) -> &'static str;
    /// The virtual disk size in bytes.
    fn virtual_size(&self) -> u64;
    /// Fills `buf` with the virtual disk's bytes at `offset`; `offset + buf.len()` must not exceed the size.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()>;
    /// The allocation map, covering `0..virtual_size()` in order.
    fn extents(&self) -> Result<Vec<Extent>> {
        Ok(vec![Extent { offset: 0, len: self.virtual_size(), kind: ExtentKind::Data }])
    }
}

/// An image format diskseal can be told to use (`-f`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    /// A plain disk image.
    Raw,
}

impl ImageFormat {
    /// Parses `-f` values.
    pub fn parse(name: &str) -> Result<ImageFormat> {
        match name {
            "raw" => Ok(ImageFormat::Raw),
            other => Err(Error::unsupported(format!("unknown input format {other:?}")).hint("supported: raw")),
        }
    }
}

/// Opens `path` as a disk image: `format` forces one, otherwise the magic decides (raw as the fallback).
pub fn open(path: &Path, format: Option<ImageFormat>) -> Result<Box<dyn DiskImage>> {
    let file = File::open(path).map_err(|e| Error::io("open input", path, None, e))?;
    let meta = file.metadata().map_err(|e| Error::io("stat", path, None, e))?;
    if meta.is_dir() {
        return Err(Error::invalid("input is a directory").with_path(path));
    }
    if format.is_none()
        && let Some(name) = sniff(&file, meta.len()) {
            return Err(Error::unsupported(format!("input is a {name} image, which diskseal cannot read yet"))
                .with_path(path)
                .hint("convert it first with `qemu-img convert -O raw`, or pass -f raw to encrypt the file as it is"));
        }
    Ok(Box::new(raw::RawImage::new(file, path)?))
}

/// Names a container format found by its magic, if any.
fn sniff(file: &File, len: u64) -> Option<&'static str> {
    let mut head = [0u8; 8];
    if file.read_exact_at(&mut head, 0).is_err() {
        return None;
    }
    if head[..4] == *b"QFI\xfb" {
        return Some("QCOW2");
    }
    if head[..6] == *b"LUKS\xba\xbe" {
        return Some("LUKS (already encrypted)");
    }
    if &head == b"conectix" {
        return Some("VHD");
    }
    let mut tail = [0u8; 8];
    if len >= 512 && file.read_exact_at(&mut tail, len - 512).is_ok() && &tail == b"conectix" {
        return Some("VHD");
    }
    if &head == b"vhdxfile" {
        return Some("VHDX");
    }
    if head[..4] == *b"KDMV" {
        return Some("VMDK");
    }
    None
}
