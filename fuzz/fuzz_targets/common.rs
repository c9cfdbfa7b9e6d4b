//! Shared by the file-based targets: write the input to a per-process file on tmpfs and exercise a reader.
// Each target uses a part of this file.
#![allow(dead_code)]
use std::path::PathBuf;

use diskseal::image::{self, ImageFormat};

pub fn scratch(name: &str) -> PathBuf {
    let dir = if std::path::Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
    dir.join(format!("diskseal-fuzz-{name}-{}", std::process::id()))
}

/// Opens `data` as an image of `format` and reads its metadata and a few ranges.
pub fn exercise_image(name: &str, data: &[u8], format: ImageFormat) {
    let path = scratch(name);
    std::fs::write(&path, data).expect("write scratch file");
    exercise_file(&path, format);
}

/// Opens the file at `path` as an image of `format` and reads its metadata and a few ranges.
pub fn exercise_file(path: &std::path::Path, format: ImageFormat) {
    if let Ok(img) = image::open(path, Some(format)) {
        let size = img.virtual_size();
        let _ = img.info();
        if let Ok(ext) = img.extents() {
            let mut end = 0;
            for e in &ext {
                assert_eq!(e.offset, end, "extents must be contiguous");
                end = e.offset + e.len;
            }
            assert_eq!(end, size, "extents must cover the disk");
        }
        let mut buf = vec![0u8; 4096];
        for at in [0, size / 2, size.saturating_sub(4096)] {
            let n = (size - at.min(size)).min(4096) as usize;
            let _ = img.read_at(&mut buf[..n], at);
        }
    }
}
