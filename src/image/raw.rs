//! Raw images: the file is the disk.

use std::fs::File;
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::error::{Error, Result};
use crate::image::{DiskImage, ImageInfo};
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
        let size = file.metadata().map_err(|e| Error::io("stat", path, None, e))?.len();
        Ok(RawImage { file, path: path.to_owned(), size })
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
