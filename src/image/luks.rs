//! A LUKS file as an image: [`open`] reads its header (alone, or wrapped as a fixed VHD by `-O vhd`)
//! and [`LuksPayload`] is the plaintext view of an unlocked one, as a [`DiskImage`]: positional reads
//! decrypt whole sectors (aes-xts with the segment's IV rule), so decrypt and verify treat a LUKS file
//! like any image.

use std::fs::File;
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::crypto::Xts;
use crate::crypto::iv::luks_sector;
use crate::crypto::keys::VolumeKey;
use crate::error::Result;
use crate::image::{DiskImage, ImageInfo};
use crate::io::read_exact_at;
use crate::luks::Luks;

/// Opens the LUKS header of `file`; a fixed-VHD footer after the LUKS file is not payload.
pub fn open(file: &File, path: &Path) -> Result<Luks> {
    let len = crate::io::input_len(file, path)?;
    Luks::open(
        file,
        path,
        crate::image::vhd::footer::fixed_data_end(file, len),
    )
}

/// An unlocked LUKS file's payload.
#[derive(Debug)]
pub struct LuksPayload {
    file: File,
    path: PathBuf,
    luks: Luks,
    xts: Xts,
}

impl LuksPayload {
    /// Wraps an opened header and a volume key already checked against it.
    pub fn new(file: File, path: &Path, luks: Luks, key: &VolumeKey) -> Result<LuksPayload> {
        Ok(LuksPayload {
            file,
            path: path.to_owned(),
            xts: Xts::new(key.expose())?,
            luks,
        })
    }

    /// The header.
    pub fn luks(&self) -> &Luks {
        &self.luks
    }

    /// Decrypts whole sectors at the sector-aligned payload offset `off`.
    fn read_sectors(&self, buf: &mut [u8], off: u64) -> Result<()> {
        let seg = &self.luks.segment;
        read_exact_at(&self.file, &self.path, buf, seg.offset + off)?;
        self.xts.decrypt(
            buf,
            seg.sector_size as usize,
            luks_sector(seg.iv_tweak, off),
            seg.cipher.iv,
        )
    }
}

impl DiskImage for LuksPayload {
    fn format_name(&self) -> &'static str {
        "luks"
    }

    fn virtual_size(&self) -> u64 {
        self.luks.payload_len()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        crate::image::check_read(&self.path, self.virtual_size(), offset, buf.len())?;
        let end = offset + buf.len() as u64;
        let sector = u64::from(self.luks.segment.sector_size);
        let (start, stop) = (offset / sector * sector, end.div_ceil(sector) * sector);
        if start == offset && stop == end {
            return self.read_sectors(buf, offset);
        }
        let mut tmp = vec![0u8; (stop - start) as usize];
        self.read_sectors(&mut tmp, start)?;
        let at = (offset - start) as usize;
        buf.copy_from_slice(&tmp[at..at + buf.len()]);
        Ok(())
    }

    fn info(&self) -> ImageInfo {
        ImageInfo {
            format: "luks",
            path: self.path.clone(),
            virtual_size: self.virtual_size(),
            cluster_size: None,
            backing_file: None,
            backing_format: None,
            backing: None,
            details: json!({}),
        }
    }
}
