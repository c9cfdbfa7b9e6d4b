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
/// as extents relative to `start`: holes are unallocated, the rest is data. A regular file with as many
/// blocks allocated as its length has no holes and is not asked: on tmpfs, `SEEK_HOLE` walks every
/// page of a file without holes (25 ms per GiB, 5 % of an encrypt).
pub fn file_extents(file: &File, start: u64, len: u64) -> Vec<Extent> {
    use rustix::fs::{SeekFrom, seek};
    use std::os::unix::fs::MetadataExt;
    let end = start + len;
    if file
        .metadata()
        .is_ok_and(|m| m.is_file() && m.blocks().saturating_mul(512) >= m.len() && end <= m.len())
    {
        return coalesce(vec![Extent {
            offset: 0,
            len,
            kind: ExtentKind::Data,
        }]);
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    /// A file with a hole is asked for its holes; a file with every block allocated is one data extent
    /// (of the range asked for), without asking.
    #[test]
    fn holes_are_found_and_dense_files_are_one_extent() {
        let dir = tempfile::tempdir().unwrap();
        let sparse = File::create_new(dir.path().join("sparse")).unwrap();
        sparse.set_len(4 << 20).unwrap();
        sparse.write_all_at(&[1u8; 4096], 1 << 20).unwrap();
        let ext = file_extents(&sparse, 0, 4 << 20);
        let data: Vec<_> = ext
            .iter()
            .filter(|e| e.kind == ExtentKind::Data)
            .map(|e| (e.offset, e.len))
            .collect();
        // File systems without SEEK_DATA report everything as data; tmpfs and ext4 find the block.
        assert!(
            data == [(1 << 20, 4096)] || data == [(0, 4 << 20)],
            "{ext:?}"
        );
        let dense = File::create_new(dir.path().join("dense")).unwrap();
        dense.write_all_at(&vec![2u8; 1 << 20], 0).unwrap();
        // Extents are relative to the start of the range.
        let one = |len| {
            vec![Extent {
                offset: 0,
                len,
                kind: ExtentKind::Data,
            }]
        };
        assert_eq!(file_extents(&dense, 0, 1 << 20), one(1 << 20));
        assert_eq!(file_extents(&dense, 4096, 8192), one(8192));
        assert!(file_extents(&dense, 0, 0).is_empty());
    }
}
