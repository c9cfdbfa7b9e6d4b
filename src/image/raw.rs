//! Raw images: the file is the disk. The allocation map comes from the file system
//! (`SEEK_DATA`/`SEEK_HOLE`): holes are reported as unallocated and are never read.

use std::fs::File;
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::error::Result;
use crate::image::{DiskImage, Extent, ExtentKind, ImageInfo, coalesce};
use crate::io::read_exact_at;

/// A raw disk image file.
#[derive(Debug)]
pub struct RawImage {
    file: File,
    path: PathBuf,
    size: u64,
}

impl RawImage {
    /// Wraps an open file.
    pub fn new(file: File, path: &Path) -> Result<RawImage> {
        let size = crate::io::input_len(&file, path)?;
        Ok(RawImage {
            file,
            path: path.to_owned(),
            size,
        })
    }
}

impl DiskImage for RawImage {
    fn format_name(&self) -> &'static str {
        "raw"
    }

    fn virtual_size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        read_exact_at(&self.file, &self.path, buf, offset)
    }

    fn extents(&self) -> Result<Vec<Extent>> {
        Ok(file_extents(&self.file, 0, self.size))
    }

    fn info(&self) -> ImageInfo {
        ImageInfo {
            format: "raw",
            path: self.path.clone(),
            virtual_size: self.size,
            cluster_size: None,
            backing_file: None,
            backing_format: None,
            backing: None,
            details: json!({}),
        }
    }
}

/// The allocation of `file`'s bytes `start..start + len` from the file system (`SEEK_DATA`/`SEEK_HOLE`),
/// as extents relative to `start`: holes are unallocated, the rest is data.
pub fn file_extents(file: &File, start: u64, len: u64) -> Vec<Extent> {
    use rustix::fs::{SeekFrom, seek};
    let end = start + len;
    let mut out = Vec::new();
    let mut pos = start;
    while pos < end {
        // ENXIO: no data after `pos`; any other error (no SEEK_DATA support): treat the rest as data.
        let data = match seek(file, SeekFrom::Data(pos)) {
            Ok(d) => d.min(end),
            Err(rustix::io::Errno::NXIO) => end,
            Err(_) => pos,
        };
        if data > pos {
            out.push(Extent {
                offset: pos - start,
                len: data - pos,
                kind: ExtentKind::Unallocated,
            });
        }
        if data >= end {
            break;
        }
        let hole = match seek(file, SeekFrom::Hole(data)) {
            Ok(h) => h.min(end),
            Err(_) => end,
        };
        let hole = hole.max(data + 1).min(end);
        out.push(Extent {
            offset: data - start,
            len: hole - data,
            kind: ExtentKind::Data,
        });
        pos = hole;
    }
    coalesce(out)
}
