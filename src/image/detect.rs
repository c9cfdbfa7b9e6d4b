//! The one format detector: every command that has to know what a file is (`encrypt`, `info`, `verify`,
//! `decrypt`, `dump`, `bundle`) asks [`detect`].
//!
//! It recognises every format `qemu-img` probes, by the same magic (QEMU's `*_probe` functions, block/*.c):
//! qcow2 and qcow version 1 (`QFI\xfb` + version), QED (`QED\0`), VDI (signature `0xbeda107f` at 64),
//! Parallels (`WithoutFreeSpace`/`WithouFreSpacExt` + version 2), VMDK (`KDMV` hosted sparse, `COWD`
//! VMware 3, and text descriptor files: comment and blank lines, then `version=1..3`), VHDX
//! (`vhdxfile`), tar archives (`ustar` with a valid header checksum: an OVA, read by [`crate::image::ova`]
//! or refused, where QEMU sees a raw disk), VHD (`conectix` at 0 or in the last 512 bytes: QEMU probes only the head, so a fixed
//! VHD is raw to it; here it is a VHD), cloop (its shell-script header), DMG (the `koly` trailer; QEMU
//! goes by the `.dmg` name), Bochs (`Bochs Virtual HD Image`, type `Redolog`) and LUKS (`LUKS\xba\xbe`,
//! version 1 or 2). It also tells apart diskseal's own outputs: a qcow2 with QEMU-native LUKS
//! (`ibm-vpc`), a dynamic VHD whose blktap batmap carries a vhd-util key hash (`ibm-classic-vhd`) and a
//! fixed VHD wrapping a LUKS file (`-O vhd`).
//!
//! Raw is what is left when nothing matches (`-f raw` skips detection). Formats diskseal does not read
//! are refused by name with the `qemu-img convert` command that turns them into one it reads
//! ([`Detected::refusal`]).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::error::{Error, Result};
use crate::image::ImageFormat;
use crate::image::qcow2::header::MAGIC as QCOW_MAGIC;
use crate::image::vhd::{batmap, dynamic, footer};
use crate::luks::luks1::MAGIC as LUKS_MAGIC;

/// How many bytes of the head are probed (QEMU's `BLOCK_PROBE_BUF_SIZE`).
pub const PROBE_SIZE: usize = 2048;

/// VMDK hosted sparse extent magic ("KDMV" on disk, little-endian 0x564d444b).
pub const VMDK_MAGIC: [u8; 4] = *b"KDMV";
/// VMware 3 (Workstation 3 / ESX 2) sparse extent magic.
pub const VMDK3_MAGIC: [u8; 4] = *b"COWD";
/// VHDX file type identifier signature.
pub const VHDX_MAGIC: [u8; 8] = *b"vhdxfile";
/// QED header magic.
pub const QED_MAGIC: [u8; 4] = *b"QED\0";
/// VDI image signature (little-endian u32 at offset 64).
pub const VDI_SIGNATURE: u32 = 0xbeda_107f;
/// Parallels magics (old and extended).
pub const PARALLELS_MAGICS: [&[u8; 16]; 2] = [b"WithoutFreeSpace", b"WithouFreSpacExt"];
/// Bochs header magic.
pub const BOCHS_MAGIC: &[u8] = b"Bochs Virtual HD Image\0";
/// cloop V2.0 header, as QEMU probes it.
pub const CLOOP_MAGIC: &[u8] =
    b"#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n";
/// Apple UDIF (DMG) trailer magic, in the last 512 bytes.
pub const DMG_MAGIC: [u8; 4] = *b"koly";

/// What a file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    /// Nothing matched: a plain disk.
    Raw,
    /// qcow2 (version 2 or 3) without QEMU-native LUKS encryption.
    Qcow2,
    /// qcow2 with QEMU-native LUKS (`encrypt.format=luks`, the `ibm-vpc` profile).
    Qcow2Luks,
    /// qcow version 1 (QEMU's "qcow").
    QcowV1,
    /// QEMU Enhanced Disk.
    Qed,
    /// VirtualBox VDI.
    Vdi,
    /// Parallels.
    Parallels,
    /// VMDK with a binary header: hosted sparse (`KDMV`, also streamOptimized) or VMware 3 (`COWD`).
    Vmdk,
    /// A VMDK text descriptor file (monolithicFlat, twoGbMaxExtent*, vmfs, ... : the data is elsewhere).
    VmdkDescriptor,
    /// Hyper-V VHDX.
    Vhdx,
    /// Microsoft VHD (fixed, dynamic or differencing) without vhd-util encryption.
    Vpc,
    /// A dynamic VHD encrypted by vhd-util / blktap (`ibm-classic-vhd`): its batmap carries a key hash.
    VpcEncrypted,
    /// A fixed VHD whose disk is a LUKS file (`diskseal encrypt -O vhd`).
    VpcLuks,
    /// cloop compressed loopback.
    Cloop,
    /// Apple disk image (UDIF).
    Dmg,
    /// Bochs growing/undoable/volatile redolog.
    Bochs,
    /// A LUKS file (version 1 or 2).
    Luks(u16),
    /// A tar archive: an OVA when it holds an `.ovf` descriptor.
    Ova,
}

impl Detected {
    /// The name users know it by, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Detected::Raw => "raw disk image",
            Detected::Qcow2 => "qcow2 image",
            Detected::Qcow2Luks => "qcow2 image with QEMU-native LUKS encryption",
            Detected::QcowV1 => "qcow version 1 image (the format before qcow2)",
            Detected::Qed => "QED (QEMU Enhanced Disk) image",
            Detected::Vdi => "VDI (VirtualBox) image",
            Detected::Parallels => "Parallels image",
            Detected::Vmdk => "VMDK (VMware) image",
            Detected::VmdkDescriptor => {
                "VMDK descriptor file (VMware; the disk data is in its extents)"
            }
            Detected::Vhdx => "VHDX (Hyper-V) image",
            Detected::Vpc => "VHD",
            Detected::VpcEncrypted => "VHD encrypted by vhd-util (ibm-classic-vhd)",
            Detected::VpcLuks => "LUKS file wrapped as a fixed VHD",
            Detected::Cloop => "cloop compressed image",
            Detected::Dmg => "DMG (Apple disk image)",
            Detected::Bochs => "Bochs image",
            Detected::Luks(1) => "LUKS1 file",
            Detected::Luks(_) => "LUKS2 file",
            Detected::Ova => "OVA (OVF package) or tar archive",
        }
    }

    /// The format's name in `qemu-img` (`-f`).
    pub fn qemu_name(self) -> &'static str {
        match self {
            Detected::Raw => "raw",
            Detected::Qcow2 | Detected::Qcow2Luks => "qcow2",
            Detected::QcowV1 => "qcow",
            Detected::Qed => "qed",
            Detected::Vdi => "vdi",
            Detected::Parallels => "parallels",
            Detected::Vmdk | Detected::VmdkDescriptor => "vmdk",
            Detected::Vhdx => "vhdx",
            Detected::Vpc | Detected::VpcEncrypted | Detected::VpcLuks => "vpc",
            Detected::Cloop => "cloop",
            Detected::Dmg => "dmg",
            Detected::Bochs => "bochs",
            Detected::Luks(_) => "luks",
            Detected::Ova => "ova",
        }
    }

    /// The reader diskseal opens it with as a plain disk image, if any.
    pub fn image_format(self) -> Option<ImageFormat> {
        match self {
            Detected::Raw => Some(ImageFormat::Raw),
            Detected::Qcow2 | Detected::Qcow2Luks => Some(ImageFormat::Qcow2),
            Detected::Vpc | Detected::VpcEncrypted | Detected::VpcLuks => Some(ImageFormat::Vpc),
            Detected::Vmdk | Detected::VmdkDescriptor => Some(ImageFormat::Vmdk),
            Detected::Vhdx => Some(ImageFormat::Vhdx),
            Detected::Ova => Some(ImageFormat::Ova(None)),
            _ => None,
        }
    }

    /// True for the containers diskseal's own profiles write (something `verify`/`decrypt` open).
    pub fn is_encrypted(self) -> bool {
        matches!(
            self,
            Detected::Qcow2Luks | Detected::VpcEncrypted | Detected::VpcLuks | Detected::Luks(_)
        )
    }

    /// The error for an input diskseal does not read as a disk image: its name, and how to convert it.
    pub fn refusal(self, path: &Path) -> Error {
        if let Detected::Luks(_) = self {
            return Error::unsupported(format!(
                "input is a {}: it is already encrypted",
                self.name()
            ))
            .with_path(path)
            .hint("`diskseal verify`/`decrypt` open it; pass -f raw to encrypt the container file as it is");
        }
        let (to, ext) = match self {
            Detected::QcowV1 => ("qcow2", "qcow2"),
            _ => ("raw", "raw"),
        };
        Error::unsupported(format!(
            "input is a {}, which diskseal cannot read",
            self.name()
        ))
        .with_path(path)
        .hint(format!(
            "convert it first: `qemu-img convert -f {} -O {to} {} disk.{ext}` (or pass -f raw to use the file as it is)",
            self.qemu_name(),
            path.display()
        ))
    }
}

/// What the file at `path` is (see the module docs).
pub fn detect_path(path: &Path) -> Result<Detected> {
    let (file, len) = crate::io::open_input(path)?;
    Ok(detect(&file, len))
}

/// What `file` (of length `len`) is. Never fails: what cannot be read is raw.
pub fn detect(file: &File, len: u64) -> Detected {
    let mut head = vec![0u8; PROBE_SIZE.min(usize::try_from(len).unwrap_or(PROBE_SIZE))];
    if file.read_exact_at(&mut head, 0).is_err() {
        return Detected::Raw;
    }
    let mut tail = [0u8; footer::FOOTER_SIZE];
    let has_tail = len >= 1024 && file.read_exact_at(&mut tail, len - 512).is_ok();
    detect_bytes(&head, has_tail.then_some(&tail), len, |buf, at| {
        file.read_exact_at(buf, at).is_ok()
    })
}

/// The detector over the first [`PROBE_SIZE`] bytes, the last 512 (when the file has at least 1 KiB) and
/// a reader for the few structures further in (the vhd-util batmap).
pub fn detect_bytes(
    head: &[u8],
    tail: Option<&[u8; footer::FOOTER_SIZE]>,
    len: u64,
    read_at: impl Fn(&mut [u8], u64) -> bool,
) -> Detected {
    let be32 = |b: &[u8], at: usize| {
        b.get(at..at + 4)
            .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    };
    let le32 = |b: &[u8], at: usize| {
        b.get(at..at + 4)
            .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    };
    let starts = |m: &[u8]| head.len() >= m.len() && &head[..m.len()] == m;

    if starts(&QCOW_MAGIC) {
        return match be32(head, 4) {
            Some(1) => Detected::QcowV1,
            // crypt_method 2 = LUKS.
            _ if be32(head, 32) == Some(2) => Detected::Qcow2Luks,
            _ => Detected::Qcow2,
        };
    }
    if starts(&QED_MAGIC) {
        return Detected::Qed;
    }
    if le32(head, 64) == Some(VDI_SIGNATURE) {
        return Detected::Vdi;
    }
    if head.len() >= 64
        && PARALLELS_MAGICS.iter().any(|m| starts(&m[..]))
        && le32(head, 16) == Some(2)
    {
        return Detected::Parallels;
    }
    if starts(&VMDK_MAGIC) || starts(&VMDK3_MAGIC) {
        return Detected::Vmdk;
    }
    if starts(&VHDX_MAGIC) {
        return Detected::Vhdx;
    }
    if starts(CLOOP_MAGIC) && head.len() > CLOOP_MAGIC.len() {
        return Detected::Cloop;
    }
    if starts(BOCHS_MAGIC) && head.get(32..40) == Some(b"Redolog\0") {
        return Detected::Bochs;
    }
    // A VHD: the footer copy at 0 (dynamic, differencing) or the footer at the end (fixed).
    let vhd_footer = if starts(footer::COOKIE) {
        Some(head)
    } else {
        tail.filter(|t| t.starts_with(footer::COOKIE))
            .map(|t| &t[..])
    };
    if let Some(f) = vhd_footer {
        return match be32(f, 60) {
            Some(3) if is_vhd_util_encrypted(f, len, &read_at) => Detected::VpcEncrypted,
            Some(2) if starts(&LUKS_MAGIC) => Detected::VpcLuks,
            _ => Detected::Vpc,
        };
    }
    if starts(&LUKS_MAGIC) {
        return Detected::Luks(
            head.get(6..8)
                .map_or(0, |v| u16::from_be_bytes([v[0], v[1]])),
        );
    }
    if tail.is_some_and(|t| t.starts_with(&DMG_MAGIC)) {
        return Detected::Dmg;
    }
    // Any tar archive: an OVA if it holds an .ovf (the OVA reader says so when it does not); never raw.
    if crate::image::ova::tar::is_tar(head) {
        return Detected::Ova;
    }
    if is_vmdk_descriptor(head) {
        return Detected::VmdkDescriptor;
    }
    Detected::Raw
}

/// A dynamic VHD (footer `f`) whose blktap batmap header, right after the BAT, has the key hash set.
fn is_vhd_util_encrypted(f: &[u8], len: u64, read_at: &impl Fn(&mut [u8], u64) -> bool) -> bool {
    let Some(data_offset) = f
        .get(16..24)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
    else {
        return false;
    };
    let mut dh = [0u8; dynamic::HEADER_SIZE];
    if data_offset
        .checked_add(dynamic::HEADER_SIZE as u64)
        .is_none_or(|e| e > len)
        || !read_at(&mut dh, data_offset)
        || &dh[..8] != dynamic::COOKIE
    {
        return false;
    }
    let table = u64::from_be_bytes(dh[16..24].try_into().unwrap_or([0xff; 8]));
    let entries = u64::from(u32::from_be_bytes(dh[28..32].try_into().unwrap_or([0; 4])));
    let Some(at) = table.checked_add((entries * 4).next_multiple_of(512)) else {
        return false;
    };
    let mut bh = [0u8; batmap::HEADER_SIZE];
    at.checked_add(batmap::HEADER_SIZE as u64)
        .is_some_and(|e| e <= len)
        && read_at(&mut bh, at)
        && &bh[..8] == batmap::COOKIE
        && bh[batmap::KEYHASH_AT] == batmap::KEYHASH_PRESENT
}

/// QEMU's test for a VMDK descriptor file: comment lines and blank lines, then a `version=1`, `2` or `3`
/// line (empty lines are accepted too).
fn is_vmdk_descriptor(head: &[u8]) -> bool {
    for line in head.split(|&c| c == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.starts_with(b"#") || line.iter().all(|&c| c == b' ') {
            continue;
        }
        return matches!(line, b"version=1" | b"version=2" | b"version=3");
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(head: &[u8]) -> Detected {
        detect_bytes(head, None, head.len() as u64, |_, _| false)
    }

    #[test]
    fn magics() {
        assert_eq!(of(b"QFI\xfb\0\0\0\x01"), Detected::QcowV1);
        assert_eq!(of(b"QFI\xfb\0\0\0\x03"), Detected::Qcow2);
        assert_eq!(of(b"QED\0xxxx"), Detected::Qed);
        assert_eq!(of(b"KDMV\x01\0\0\0"), Detected::Vmdk);
        assert_eq!(of(b"vhdxfile"), Detected::Vhdx);
        assert_eq!(of(b"LUKS\xba\xbe\0\x02"), Detected::Luks(2));
        assert_eq!(
            of(b"# Disk DescriptorFile\n\n  \r\nversion=1\nCID=fffffffe\n"),
            Detected::VmdkDescriptor
        );
        assert_eq!(
            of(b"# Disk DescriptorFile\nCID=1\nversion=1\n"),
            Detected::Raw
        );
        assert_eq!(of(b"hello"), Detected::Raw);
        assert_eq!(of(b""), Detected::Raw);
        let mut vdi = vec![0u8; 512];
        vdi[64..68].copy_from_slice(&VDI_SIGNATURE.to_le_bytes());
        assert_eq!(of(&vdi), Detected::Vdi);
    }
}
