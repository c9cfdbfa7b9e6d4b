//! The parts of an OVF descriptor (DMTF DSP0243 2.1) that name the disks: `References/File` (`ovf:id`,
//! `ovf:href`, `ovf:size`, `ovf:compression`) and `DiskSection/Disk` (`ovf:diskId`, `ovf:fileRef`,
//! `ovf:capacity`, `ovf:capacityAllocationUnits`, `ovf:format`); and the `.mf` manifest lines
//! (`SHA1(name)= hex`, `SHA256(name)= hex`). Namespace prefixes are ignored; nothing else is read.

use quick_xml::events::Event;
use quick_xml::{Reader, XmlVersion};

use crate::error::{Error, Result};

/// Largest OVF descriptor read.
pub const MAX_SIZE: u64 = 4 << 20;

/// A `References/File`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FileRef {
    /// `ovf:id`.
    pub id: String,
    /// `ovf:href`: the file's name in the archive.
    pub href: String,
    /// `ovf:size`, when given.
    pub size: Option<u64>,
    /// `ovf:compression` ("gzip"), when given.
    pub compression: Option<String>,
}

/// A `DiskSection/Disk`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Disk {
    /// `ovf:diskId`.
    pub id: String,
    /// `ovf:fileRef` (empty for a blank disk).
    pub file_ref: String,
    /// Capacity in bytes (`ovf:capacity` × `ovf:capacityAllocationUnits`).
    pub capacity: Option<u64>,
    /// `ovf:format` URI.
    pub format: String,
}

/// What diskseal reads of an OVF.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ovf {
    /// The files.
    pub files: Vec<FileRef>,
    /// The disks, in order.
    pub disks: Vec<Disk>,
}

impl Ovf {
    /// The file a disk refers to.
    pub fn file_of(&self, d: &Disk) -> Option<&FileRef> {
        self.files.iter().find(|f| f.id == d.file_ref)
    }
}

/// `byte * 2^20`-style allocation units (only the `byte`, `byte * 2^N` and `KB`/`MB`/`GB` forms).
fn units(u: &str) -> Option<u64> {
    let u = u.trim();
    match u {
        "" | "byte" => return Some(1),
        "KB" | "kilobytes" => return Some(1 << 10),
        "MB" | "megabytes" => return Some(1 << 20),
        "GB" | "gigabytes" => return Some(1 << 30),
        _ => {}
    }
    let exp = u
        .strip_prefix("byte")?
        .trim()
        .strip_prefix('*')?
        .trim()
        .strip_prefix("2^")?;
    let e: u32 = exp.trim().parse().ok()?;
    1u64.checked_shl(e).filter(|_| e < 64)
}

/// Parses an OVF descriptor.
pub fn parse(text: &str) -> Result<Ovf> {
    let mut r = Reader::from_str(text);
    let mut ovf = Ovf::default();
    loop {
        let ev = r.read_event().map_err(|e| {
            Error::corrupt(format!("OVF descriptor is not well-formed XML: {e}"))
                .at(r.buffer_position())
        })?;
        let e = match ev {
            Event::Start(e) | Event::Empty(e) => e,
            Event::Eof => break,
            _ => continue,
        };
        let name = e.local_name();
        let kind = name.as_ref();
        if kind != b"File" && kind != b"Disk" {
            continue;
        }
        let mut attrs = Vec::new();
        for a in e.attributes() {
            let a = a.map_err(|err| Error::corrupt(format!("OVF attribute: {err}")))?;
            let v = a
                .normalized_value(XmlVersion::Implicit1_0)
                .map_err(|err| Error::corrupt(format!("OVF attribute value: {err}")))?;
            attrs.push((
                String::from_utf8_lossy(a.key.local_name().as_ref()).into_owned(),
                v.into_owned(),
            ));
        }
        let get = |k: &str| attrs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let number = |k: &str| -> Result<Option<u64>> {
            get(k)
                .map(|v| {
                    v.trim().parse::<u64>().map_err(|_| {
                        Error::corrupt(format!("OVF attribute {k}={v:?} is not a number"))
                    })
                })
                .transpose()
        };
        if kind == b"File" {
            ovf.files.push(FileRef {
                id: get("id").unwrap_or_default(),
                href: get("href").unwrap_or_default(),
                size: number("size")?,
                compression: get("compression").filter(|c| !c.is_empty() && c != "identity"),
            });
        } else {
            let unit = get("capacityAllocationUnits").unwrap_or_default();
            let mult = units(&unit).ok_or_else(|| {
                Error::unsupported(format!("OVF capacityAllocationUnits {unit:?}"))
            })?;
            ovf.disks.push(Disk {
                id: get("diskId").unwrap_or_default(),
                file_ref: get("fileRef").unwrap_or_default(),
                capacity: number("capacity")?.and_then(|c| c.checked_mul(mult)),
                format: get("format").unwrap_or_default(),
            });
        }
        if ovf.files.len() + ovf.disks.len() > 10_000 {
            return Err(Error::unsupported(
                "OVF descriptor names more than 10000 files and disks",
            ));
        }
    }
    Ok(ovf)
}

/// A manifest digest line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digest {
    /// "SHA1" or "SHA256" (others are listed but not checked).
    pub algorithm: String,
    /// The file's name.
    pub file: String,
    /// Lower-case hex.
    pub hex: String,
}

/// Parses a `.mf` manifest (`ALG(name)= hex` lines; other lines are ignored).
pub fn parse_manifest(text: &str) -> Vec<Digest> {
    text.lines()
        .filter_map(|l| {
            let (alg, rest) = l.trim().split_once('(')?;
            let (file, hex) = rest.rsplit_once(")=")?;
            Some(Digest {
                algorithm: alg.trim().to_ascii_uppercase(),
                file: file.to_owned(),
                hex: hex.trim().to_ascii_lowercase(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_files_disks_and_manifest() {
        let x = r#"<?xml version="1.0"?><Envelope xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1">
<References><File ovf:href="a &amp; b.vmdk" ovf:id="file1" ovf:size="123"/></References>
<!-- <Disk ovf:diskId="x"/> -->
<DiskSection><Info>d</Info><Disk ovf:capacity="4" ovf:capacityAllocationUnits="byte * 2^20" ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/></DiskSection></Envelope>"#;
        let o = parse(x).unwrap();
        assert_eq!(o.files[0].href, "a & b.vmdk");
        assert_eq!(o.files[0].size, Some(123));
        assert_eq!(o.disks.len(), 1);
        assert_eq!(o.disks[0].capacity, Some(4 << 20));
        assert_eq!(o.file_of(&o.disks[0]).unwrap().id, "file1");
        assert!(parse("<a><b></a>").is_err());
        let m = parse_manifest("SHA256(vm.ovf)= AB12\nSHA1(disk.vmdk)=cd\njunk\n");
        assert_eq!(m[0].algorithm, "SHA256");
        assert_eq!(m[0].hex, "ab12");
        assert_eq!(m[1].file, "disk.vmdk");
    }
}
