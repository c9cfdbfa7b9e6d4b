//! Raw images: the file is the disk. The allocation map comes from the file system
//! (`SEEK_DATA`/`SEEK_HOLE`): holes are reported as unallocated and are never read.

use std::fs::File;
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::error::{Error, Result};
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
        let size = file
            .metadata()
            .map_err(|e| Error::io("stat", path, None, e))?
            .len();
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
        use rustix::fs::{SeekFrom, seek};
        let mut out = Vec::new();
        let mut pos = 0u64;
        while pos < self.size {
            // ENXIO: no data after `pos`; any other error (no SEEK_DATA support): treat the rest as data.
            let data = match seek(&self.file, SeekFrom::Data(pos)) {
                Ok(d) => d.min(self.size),
                Err(rustix::io::Errno::NXIO) => self.size,
                Err(_) => pos,
            };
            if data > pos {
                out.push(Extent {
                    offset: pos,
                    len: data - pos,
                    kind: ExtentKind::Unallocated,
                });
            }
            if data >= self.size {
                break;
            }
            let hole = match seek(&self.file, SeekFrom::Hole(data)) {
                Ok(h) => h.min(self.size),
                Err(_) => self.size,
            };
            let hole = hole.max(data + 1).min(self.size);
            out.push(Extent {
                offset: data,
                len: hole - data,
                kind: ExtentKind::Data,
            });
            pos = hole;
        }
        Ok(coalesce(out))
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
