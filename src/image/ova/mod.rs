//! OVA: a tar archive holding an OVF descriptor (first), its disks and optionally a `.mf` manifest
//! (DMTF DSP0243 2.1, "OVF Packages"). diskseal reads a disk straight out of the archive, without
//! extracting it:
//!
//! - [`tar`]: the archive's index (names, offsets, sizes);
//! - [`ovf`]: the disks and files the OVF names, and the manifest's digests;
//! - this file: [`package`] (what `info` lists) and [`open`]: the chosen disk (`--disk N`, 1-based;
//!   needed when there are several), checked against the OVF's `ovf:size` and, when the manifest lists
//!   them, the SHA-1/SHA-256 of the disk file and of the OVF, then opened as a sparse or stream-optimized
//!   VMDK over its byte range of the archive ([`crate::image::vmdk::open_window`]).
//!
//! Refused by name: gzip-compressed disk files, disks that are not VMDK, delta disks, archives whose OVF
//! names no disk or a file the archive does not hold.

pub mod ovf;
pub mod tar;

use std::fs::File;
use std::path::{Path, PathBuf};

use sha1::Sha1;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::error::{Error, Result};
use crate::image::vmdk::{self, VmdkImage};
use crate::io::read_exact_at;
use ovf::Ovf;
use tar::Entry;

/// One disk of the package, for `info`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageDisk {
    /// 1-based, the `--disk` number.
    pub number: usize,
    /// `ovf:diskId`.
    pub id: String,
    /// The file's name in the archive.
    pub file: String,
    /// The file's size in the archive.
    pub file_size: u64,
    /// The OVF capacity, bytes.
    pub capacity: Option<u64>,
    /// The OVF format URI.
    pub format: String,
}

/// What an OVA holds.
#[derive(Debug, Clone)]
pub struct Package {
    /// The OVF's name in the archive.
    pub ovf_name: String,
    /// The disks, in OVF order.
    pub disks: Vec<PackageDisk>,
    /// The manifest's name, if any.
    pub manifest: Option<String>,
    ovf: Ovf,
    entries: Vec<Entry>,
    ovf_entry: Entry,
}

/// Reads the archive's index, its OVF and the disk list.
pub fn package(file: &File, path: &Path) -> Result<Package> {
    let len = crate::io::input_len(file, path)?;
    let mut head = [0u8; 512];
    if len < 512 || read_exact_at(file, path, &mut head, 0).is_err() || !tar::is_tar(&head) {
        return Err(Error::format("not an OVA: the file is not a tar archive")
            .with_path(path)
            .at(0)
            .hint("-f ova and --disk apply to OVA files"));
    }
    let entries = tar::index(file, path, len)?;
    let ovf_entry = entries
        .iter()
        .find(|e| e.name.to_ascii_lowercase().ends_with(".ovf"))
        .cloned()
        .ok_or_else(|| {
            Error::format("this tar archive holds no .ovf descriptor, so it is not an OVA")
                .with_path(path)
        })?;
    if ovf_entry.size > ovf::MAX_SIZE {
        return Err(Error::unsupported(format!(
            "OVF descriptor {} is {} bytes (at most {})",
            ovf_entry.name,
            ovf_entry.size,
            ovf::MAX_SIZE
        ))
        .with_path(path));
    }
    let mut text = vec![0u8; ovf_entry.size as usize];
    read_exact_at(file, path, &mut text, ovf_entry.offset)?;
    let text = String::from_utf8(text).map_err(|_| {
        Error::corrupt(format!(
            "OVF descriptor {} is not UTF-8 text",
            ovf_entry.name
        ))
        .with_path(path)
    })?;
    let ovf = ovf::parse(&text).map_err(|e| {
        let m = format!("{}: {}", ovf_entry.name, e.message());
        Error::new(e.kind(), m).with_path(path)
    })?;
    let disks = ovf
        .disks
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let f = ovf.file_of(d);
            let name = f.map(|f| f.href.clone()).unwrap_or_default();
            PackageDisk {
                number: i + 1,
                id: d.id.clone(),
                file_size: entries
                    .iter()
                    .find(|e| e.name == name)
                    .map_or(0, |e| e.size),
                file: name,
                capacity: d.capacity,
                format: d.format.clone(),
            }
        })
        .collect();
    let manifest = entries
        .iter()
        .find(|e| e.name.to_ascii_lowercase().ends_with(".mf"))
        .map(|e| e.name.clone());
    Ok(Package {
        ovf_name: ovf_entry.name.clone(),
        disks,
        manifest,
        ovf,
        entries,
        ovf_entry,
    })
}

/// Opens disk `number` (1-based; may be left out when the OVA has one disk) of the OVA `file`.
pub fn open(file: File, path: &Path, number: Option<u16>) -> Result<VmdkImage> {
    let p = package(&file, path)?;
    let list = || {
        p.disks
            .iter()
            .map(|d| format!("{}: {} ({})", d.number, d.file, d.id))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let n = match (number, p.disks.len()) {
        (_, 0) => {
            return Err(
                Error::unsupported(format!("OVF {} names no disk", p.ovf_name)).with_path(path),
            );
        }
        (None, 1) => 1,
        (None, k) => {
            return Err(
                Error::invalid(format!("this OVA holds {k} disks: {}", list()))
                    .with_path(path)
                    .hint("pick one with --disk N (`diskseal info` lists them)"),
            );
        }
        (Some(n), k) if n == 0 || usize::from(n) > k => {
            return Err(Error::invalid(format!(
                "--disk {n}: this OVA holds {k} disk(s): {}",
                list()
            ))
            .with_path(path));
        }
        (Some(n), _) => usize::from(n),
    };
    let disk = &p.ovf.disks[n - 1];
    let fref = p.ovf.file_of(disk).ok_or_else(|| {
        Error::corrupt(format!(
            "OVF disk {:?} refers to file {:?}, which the References section does not list",
            disk.id, disk.file_ref
        ))
        .with_path(path)
    })?;
    let entry = p
        .entries
        .iter()
        .find(|e| e.name == fref.href)
        .ok_or_else(|| {
            Error::corrupt(format!(
                "the OVA does not hold {:?}, the file of OVF disk {:?}",
                fref.href, disk.id
            ))
            .with_path(path)
        })?;
    if let Some(c) = &fref.compression {
        return Err(Error::unsupported(format!("OVA disk file {} is {c}-compressed", fref.href))
            .with_path(path)
            .hint(format!("extract it (`tar xf`), decompress it, and encrypt the VMDK: `diskseal encrypt {}`", fref.href)));
    }
    if let Some(size) = fref.size
        && size != entry.size
    {
        return Err(Error::corrupt(format!(
            "OVF says {} is {size} bytes, the archive holds {} bytes",
            fref.href, entry.size
        ))
        .with_path(path)
        .hint("the OVA is damaged or was repacked without updating its OVF"));
    }
    if let Some(mf) = &p.manifest {
        check_manifest(&file, path, &p, mf, &[&p.ovf_entry, entry])?;
    }
    let shown = PathBuf::from(format!("{}[{}]", path.display(), entry.name));
    vmdk::open_window(file, &shown, entry.offset, entry.size)
}

/// Checks the digests the manifest `mf` lists for `files` (SHA-1 and SHA-256; other algorithms are
/// refused, a file it does not list is accepted).
fn check_manifest(file: &File, path: &Path, p: &Package, mf: &str, files: &[&Entry]) -> Result<()> {
    let e = p
        .entries
        .iter()
        .find(|e| e.name == mf)
        .ok_or_else(|| Error::corrupt("manifest vanished"))?;
    if e.size > 1 << 20 {
        return Err(
            Error::unsupported(format!("OVA manifest {mf} is {} bytes", e.size)).with_path(path),
        );
    }
    let mut text = vec![0u8; e.size as usize];
    read_exact_at(file, path, &mut text, e.offset)?;
    let digests = ovf::parse_manifest(&String::from_utf8_lossy(&text));
    for f in files {
        for d in digests.iter().filter(|d| d.file == f.name) {
            let got = match d.algorithm.as_str() {
                "SHA1" => hash::<Sha1>(file, path, f)?,
                "SHA256" => hash::<Sha256>(file, path, f)?,
                other => {
                    return Err(Error::unsupported(format!(
                        "OVA manifest {mf} uses {other} for {}; diskseal checks SHA1 and SHA256",
                        f.name
                    ))
                    .with_path(path));
                }
            };
            if !bool::from(got.as_bytes().ct_eq(d.hex.as_bytes())) {
                return Err(Error::corrupt(format!(
                    "{} does not match the OVA manifest {mf}: {} is {got}, the manifest says {}",
                    f.name, d.algorithm, d.hex
                ))
                .with_path(path)
                .hint("the OVA is damaged or was modified after it was exported"));
            }
        }
    }
    Ok(())
}

fn hash<D: sha2::Digest>(file: &File, path: &Path, e: &Entry) -> Result<String> {
    let mut d = D::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0;
    while pos < e.size {
        let n = (e.size - pos).min(buf.len() as u64) as usize;
        read_exact_at(file, path, &mut buf[..n], e.offset + pos)?;
        d.update(&buf[..n]);
        pos += n as u64;
    }
    Ok(d.finalize().iter().map(|b| format!("{b:02x}")).collect())
}
