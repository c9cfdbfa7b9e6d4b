//! QEMU qcow2 v2/v3. (Reader in progress.)

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::image::DiskImage;

/// Opens a qcow2 file.
pub fn open(_file: File, path: &Path, _chain: &mut Vec<PathBuf>) -> Result<Box<dyn DiskImage>> {
    Err(Error::unsupported("QCOW2 input is not supported yet")
        .with_path(path)
        .hint("convert it first with `qemu-img convert -O raw`, or pass -f raw to use the file as it is"))
}
pub mod writer;
