//! Reading vhd-util (blktap) encrypted VHDs, the `ibm-classic-vhd` format: [`read_batmap`] finds and
//! checks the batmap header and key hash of a dynamic VHD without any key (for `dump` and `keyhash`);
//! [`EncryptedVhd::open`] checks a key against the key hash **before reading any data**, then serves
//! the plaintext as a [`DiskImage`].
//!
//! Reads follow tapdisk (`vhd-util.md`, "How tapdisk reads"): a sector is present when its block is
//! allocated and either the block's batmap bit or the sector's own bitmap bit is set; present sectors
//! are AES-XTS decrypted per 512-byte sector with tweak = the 32-bit little-endian virtual sector
//! number (`crypto::iv::vhd_util_sector`); everything else reads as zeros.
//!
//! Refused: fixed VHDs (they cannot carry a key hash), differencing VHDs, VHDs whose creator is not
//! "tap\0" ≥ 1.2 or that have no batmap header (no key hash), a key hash cookie other than 1 (not
//! encrypted), and a key whose hash does not match.

use std::fs::File;
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::crypto::Xts;
use crate::crypto::iv::{VHD_UTIL_IV, vhd_util_sector};
use crate::crypto::keys::VolumeKey;
use crate::error::{Error, ErrorKind, Result};
use crate::image::detect::{self, Detected};
use crate::image::vhd::batmap::{self, BatmapHeader};
use crate::image::vhd::dynamic::{self, UNALLOCATED};
use crate::image::vhd::footer::{DiskType, fourcc};
use crate::image::vhd::{VhdImage, writer};
use crate::image::{DiskImage, Extent, ImageInfo};
use crate::io::read_exact_at;

/// A dynamic VHD's batmap, read and checked (no key involved).
#[derive(Debug, Clone)]
pub struct Batmap {
    /// Where the batmap header is.
    pub header_at: u64,
    /// The header as stored.
    pub header: BatmapHeader,
    /// The map bytes: the `batmap_size` sectors the header names, plus the rest of the map the blocks
    /// need when that is one sector more (libvhd's size rule, see [`batmap::checksum_sectors`]) and lies
    /// in the file.
    pub map: Vec<u8>,
    /// The checksum computed over the `batmap_size` sectors.
    pub computed_checksum: u32,
}

impl Batmap {
    /// True when the stored checksum is right.
    pub fn checksum_ok(&self) -> bool {
        self.computed_checksum == self.header.checksum
    }

    /// Blocks whose batmap bit is set, among the first `entries`.
    pub fn set_blocks(&self, entries: u64) -> Vec<u64> {
        (0..entries)
            .filter(|&i| batmap::test_bit(&self.map, i))
            .collect()
    }

    /// The batmap header and key hash as JSON (for `dump`).
    pub fn to_json(&self, entries: u64) -> serde_json::Value {
        let h = &self.header;
        json!({
            "header_offset": self.header_at,
            "cookie": String::from_utf8_lossy(&h.cookie),
            "batmap_offset": h.batmap_offset,
            "batmap_size_sectors": h.batmap_size,
            "version": format!("{}.{}", h.version >> 16, h.version & 0xffff),
            "checksum": format!("{:#010x}", h.checksum),
            "checksum_ok": self.checksum_ok(),
            "marker": h.marker,
            "blocks_set": self.set_blocks(entries),
            "keyhash": {
                "cookie": h.keyhash.cookie,
                "nonce": batmap::hex(&h.keyhash.nonce),
                "hash": batmap::hex(&h.keyhash.hash),
            },
        })
    }
}

/// Opens `path` as a VHD and reads its batmap; refuses what cannot carry a vhd-util key hash (see the
/// module docs). Does not look at the key hash cookie.
pub fn read_batmap(path: &Path) -> Result<(VhdImage, Batmap)> {
    let file = File::open(path).map_err(|e| Error::io("open", path, None, e))?;
    let len = file
        .metadata()
        .map_err(|e| Error::io("stat", path, None, e))?
        .len();
    let found = detect::detect(&file, len);
    let luks = found == Detected::VpcLuks;
    if found.qemu_name() != "vpc" {
        let what = match found {
            Detected::Raw => "not a VHD".to_owned(),
            other => format!("a {}", other.name()),
        };
        return Err(Error::format(format!("this is {what}, not a vhd-util encrypted VHD (no \"conectix\" footer)"))
            .with_path(path)
            .hint("--profile ibm-classic-vhd opens dynamic VHDs made by vhd-util or `diskseal encrypt --profile ibm-classic-vhd`; use the profile the image was made with"));
    }
    let img = VhdImage::open(file, path, &mut crate::image::Chain::default())?;
    let b = batmap_of(&img, luks)?;
    Ok((img, b))
}

/// The batmap of an open VHD (see [`read_batmap`]); `luks` adds a hint when the file starts with a LUKS
/// header.
pub fn batmap_of(img: &VhdImage, luks: bool) -> Result<Batmap> {
    let path = img.path();
    let f = img.footer();
    match f.disk_type {
        DiskType::Fixed => {
            let e = Error::unsupported(
                "this is a fixed VHD; vhd-util (ibm-classic-vhd) encrypted images are dynamic VHDs, whose batmap carries the key hash",
            )
            .with_path(path)
            .at(img.footer_at + 60);
            return Err(if luks {
                e.hint("this file is a LUKS container wrapped as a VHD: open it with --profile luks1/luks2/ibm-classic-luks")
            } else {
                e.hint("a fixed VHD cannot be a vhd-util encrypted image; encrypt it with `diskseal encrypt --profile ibm-classic-vhd`")
            });
        }
        DiskType::Differencing => {
            return Err(
                Error::unsupported("differencing VHDs are not ibm-classic-vhd images")
                    .with_path(path)
                    .at(img.footer_at + 60),
            );
        }
        DiskType::Dynamic => {}
    }
    let raw = &f.raw;
    if raw.creator_app != writer::CREATOR_APP || raw.creator_version < 0x0001_0002 {
        return Err(Error::format(format!(
            "VHD has no batmap, so no key hash: footer creator is \"{}\" version {}.{}, and blktap reads a batmap only in VHDs created by \"tap\\0\" 1.2 or later",
            fourcc(&raw.creator_app),
            raw.creator_version >> 16,
            raw.creator_version & 0xffff
        ))
        .with_path(path)
        .at(img.footer_at + 28)
        .hint("this VHD was not encrypted by vhd-util; encrypt it with `diskseal encrypt --profile ibm-classic-vhd`"));
    }
    let (header, entries) = match (img.dynamic_header(), img.bat()) {
        (Some(h), Some(b)) => (h, b.len() as u64),
        _ => return Err(Error::corrupt("dynamic VHD without a dynamic header").with_path(path)),
    };
    let header_at = header.raw.table_offset
        + (u64::from(header.raw.max_table_entries) * 4).next_multiple_of(512);
    let file_len = img
        .file()
        .metadata()
        .map_err(|e| Error::io("stat", path, None, e))?
        .len();
    if header_at + 512 > file_len {
        return Err(
            Error::format("VHD has no batmap header: the file ends right after the BAT")
                .with_path(path)
                .at(header_at)
                .hint("this VHD was not encrypted by vhd-util"),
        );
    }
    let mut hb = [0u8; batmap::HEADER_SIZE];
    read_exact_at(img.file(), path, &mut hb, header_at)?;
    let bh = BatmapHeader::decode(&hb);
    if &bh.cookie != batmap::COOKIE {
        return Err(
            Error::format("VHD has no batmap: no \"tdbatmap\" cookie after the BAT")
                .with_path(path)
                .at(header_at)
                .hint("this VHD was not encrypted by vhd-util"),
        );
    }
    if u64::from(bh.batmap_size) > batmap::map_sectors(dynamic::MAX_BAT_ENTRIES) {
        return Err(Error::corrupt(format!(
            "VHD batmap header field 'batmap size' is {} sectors: absurdly large",
            bh.batmap_size
        ))
        .with_path(path)
        .at(header_at + 16));
    }
    let summed = u64::from(bh.batmap_size) * 512;
    let need = batmap::map_sectors(entries) * 512;
    let map_end = bh.batmap_offset.checked_add(summed.max(need));
    let ok_end = bh.batmap_offset.checked_add(summed);
    if bh.batmap_offset < header_at + 512
        || bh.batmap_size == 0
        || ok_end.is_none_or(|e| e > file_len)
    {
        return Err(Error::corrupt(format!(
            "VHD batmap header fields 'batmap offset' {:#x} / 'batmap size' {} sectors point outside the file (length {file_len:#x})",
            bh.batmap_offset, bh.batmap_size
        ))
        .with_path(path)
        .at(header_at + 8));
    }
    let len = if map_end.is_some_and(|e| e <= file_len) {
        summed.max(need)
    } else {
        summed
    };
    let mut map = vec![
        0u8;
        usize::try_from(len)
            .map_err(|_| Error::unsupported("batmap too large").with_path(path))?
    ];
    read_exact_at(img.file(), path, &mut map, bh.batmap_offset)?;
    let computed_checksum = batmap::checksum(&map[..summed as usize]);
    Ok(Batmap {
        header_at,
        header: bh,
        map,
        computed_checksum,
    })
}

/// A vhd-util encrypted VHD opened with its key: the plaintext.
#[derive(Debug)]
pub struct EncryptedVhd {
    inner: VhdImage,
    path: PathBuf,
    batmap: Batmap,
    xts: Xts,
    warnings: Vec<String>,
}

impl EncryptedVhd {
    /// Opens `path`, checks `key` against the batmap key hash (constant time) and only then allows reads.
    pub fn open(path: &Path, key: &VolumeKey) -> Result<EncryptedVhd> {
        let (inner, batmap) = read_batmap(path)?;
        let kh = &batmap.header.keyhash;
        let kh_at = batmap.header_at + batmap::KEYHASH_AT as u64;
        if kh.cookie != batmap::KEYHASH_PRESENT {
            return Err(Error::format(format!(
                "VHD batmap header field 'key hash cookie' is {}: this VHD carries no key hash, it is not encrypted",
                kh.cookie
            ))
            .with_path(path)
            .at(kh_at)
            .hint("read it as a plain VHD (`diskseal info`), or encrypt it with --profile ibm-classic-vhd"));
        }
        if !kh.matches(key.expose()) {
            return Err(Error::new(
                ErrorKind::WrongKey,
                format!(
                    "the {}-byte key does not match the VHD's key hash (SHA-256(nonce || key) differs from the batmap header's 'key hash')",
                    key.len()
                ),
            )
            .with_path(path)
            .at(kh_at + 33)
            .hint("use the raw DEK the image was encrypted with (`base64 -d` of the DEK you wrapped); no data was read"));
        }
        if let Some(h) = inner.dynamic_header()
            && h.block_size != writer::BLOCK_SIZE
        {
            return Err(Error::unsupported(format!(
                "VHD block size is {}: blktap encrypted VHDs use 2 MiB blocks",
                h.block_size
            ))
            .with_path(path)
            .at(h.at + 32));
        }
        let mut warnings = inner.warnings().to_vec();
        if !batmap.checksum_ok() {
            warnings.push(format!(
                "the batmap checksum at {:#x} is wrong (stored {:#010x}, computed {:#010x}); `vhd-util check` would refuse this image",
                batmap.header_at + 24,
                batmap.header.checksum,
                batmap.computed_checksum
            ));
        }
        let xts = Xts::new(key.expose())?;
        Ok(EncryptedVhd {
            inner,
            path: path.to_owned(),
            batmap,
            xts,
            warnings,
        })
    }

    /// The batmap.
    pub fn batmap(&self) -> &Batmap {
        &self.batmap
    }

    /// Warnings found while opening.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Reads and decrypts the sector-aligned part `[s0, s1)` (sectors within block `bi`) into `out`.
    fn read_sectors(&self, bi: u64, entry: u32, s0: u64, s1: u64, out: &mut [u8]) -> Result<()> {
        let data_at = u64::from(entry) * 512 + 512;
        read_exact_at(self.inner.file(), &self.path, out, data_at + s0 * 512)?;
        let first = bi * writer::SECTORS_PER_BLOCK;
        if batmap::test_bit(&self.batmap.map, bi) {
            return self
                .xts
                .decrypt(out, 512, vhd_util_sector((first + s0) * 512), VHD_UTIL_IV);
        }
        let mut bm = vec![0u8; (s1 - 1) as usize / 8 - s0 as usize / 8 + 1];
        read_exact_at(
            self.inner.file(),
            &self.path,
            &mut bm,
            u64::from(entry) * 512 + s0 / 8,
        )?;
        for (k, sector) in out.chunks_exact_mut(512).enumerate() {
            let s = s0 + k as u64;
            let i = s / 8 - s0 / 8;
            if bm[i as usize] & (0x80 >> (s % 8)) != 0 {
                self.xts
                    .decrypt(sector, 512, vhd_util_sector((first + s) * 512), VHD_UTIL_IV)?;
            } else {
                sector.fill(0);
            }
        }
        Ok(())
    }
}

impl DiskImage for EncryptedVhd {
    fn format_name(&self) -> &'static str {
        "vpc"
    }

    fn virtual_size(&self) -> u64 {
        self.inner.virtual_size()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let vsize = self.virtual_size();
        crate::image::check_read(&self.path, vsize, offset, buf.len())?;
        let bat = self.inner.bat().unwrap_or(&[]);
        let bs = writer::BLOCK_SIZE;
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let (bi, in_block) = (pos / bs, pos % bs);
            let n = ((bs - in_block) as usize).min(buf.len() - done);
            let part = &mut buf[done..done + n];
            let entry = bat.get(bi as usize).copied().unwrap_or(UNALLOCATED);
            if entry == UNALLOCATED {
                part.fill(0);
            } else {
                let s0 = in_block / 512;
                let s1 = (in_block + n as u64).div_ceil(512);
                if in_block.is_multiple_of(512) && n.is_multiple_of(512) {
                    self.read_sectors(bi, entry, s0, s1, part)?;
                } else {
                    let mut tmp = vec![0u8; ((s1 - s0) * 512) as usize];
                    self.read_sectors(bi, entry, s0, s1, &mut tmp)?;
                    let skip = (in_block - s0 * 512) as usize;
                    part.copy_from_slice(&tmp[skip..skip + n]);
                }
            }
            done += n;
        }
        Ok(())
    }

    fn extents(&self) -> Result<Vec<Extent>> {
        self.inner.extents()
    }

    fn info(&self) -> ImageInfo {
        self.inner.info()
    }
}
