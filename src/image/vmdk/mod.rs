//! VMware VMDK (Virtual Disk Format 5.0), read the way `qemu-img` reads it:
//!
//! - [`descriptor`]: the text descriptor (a separate `.vmdk` file, or embedded in a sparse extent);
//! - [`sparse`]: hosted sparse extents (`KDMV`: grain directory and tables, zeroed grains) and
//!   stream-optimized ones (deflated grains with markers, the footer for `GD_AT_END`);
//! - this file: [`open`] (a sparse file on its own, or a descriptor and its extents), the extent list
//!   (`SPARSE`/`VMFSSPARSE`, `FLAT`/`VMFS` at their offset, `ZERO`), the parent of a delta disk
//!   (`parentFileNameHint`, opened through [`open_backing`]) and [`VmdkImage`], the [`DiskImage`].
//!
//! Like QEMU: a sparse file whose header gives a capacity is one extent (its embedded descriptor only
//! names the create type and the parent); a sparse extent's size is its header's capacity; unallocated
//! grains read from the parent (or zeros). Unlike QEMU, `RDONLY` and `ZERO` extent lines are part of the
//! disk (QEMU skips every line that is not `RW`, which makes the disk shorter than VMware's); `NOACCESS`
//! extents, VMware 3 (`COWD`) and seSparse extents, and raw-device create types are refused by name.
//! Extent files follow the backing-file rule ([`crate::image::BackingPolicy`]): one outside the
//! descriptor's folder (absolute, `../`, a symbolic link out) is refused unless `--allow-backing` or
//! `--trust-backing` allows it, so a descriptor cannot make diskseal encrypt any file it names.

pub mod descriptor;
pub mod sparse;

use std::fs::File;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::error::{Error, ErrorKind, Result};
use crate::image::raw::file_extents;
use crate::image::{
    Chain, DiskImage, Extent, ExtentKind, ImageInfo, Naming, coalesce, detect, open_backing,
    resolve_below,
};
use crate::io::read_exact_at;
use descriptor::{Access, Descriptor};
use sparse::SparseExtent;

/// Create types whose descriptor diskseal follows.
const DESCRIPTOR_TYPES: [&str; 7] = [
    "monolithicFlat",
    "twoGbMaxExtentFlat",
    "twoGbMaxExtentSparse",
    "vmfs",
    "vmfsSparse",
    "monolithicSparse",
    "streamOptimized",
];

#[derive(Debug)]
enum Data {
    Flat {
        file: File,
        path: PathBuf,
        base: u64,
    },
    Zero,
    Sparse(Box<SparseExtent>),
}

#[derive(Debug)]
struct Part {
    start: u64,
    len: u64,
    kind: String,
    file: Option<PathBuf>,
    data: Data,
}

#[derive(Debug)]
struct Parent {
    hint: String,
    image: Box<dyn DiskImage>,
}

/// An opened VMDK.
#[derive(Debug)]
pub struct VmdkImage {
    path: PathBuf,
    size: u64,
    create_type: String,
    descriptor: Option<Descriptor>,
    parts: Vec<Part>,
    parent: Option<Parent>,
}

/// Opens a VMDK: `file` is a sparse extent (`KDMV`) or a descriptor file. `chain` holds the images above
/// it and this one (for the parent's loop and depth checks).
pub fn open(file: File, path: &Path, chain: &mut crate::image::Chain) -> Result<VmdkImage> {
    let len = crate::io::input_len(&file, path)?;
    let mut head = [0u8; sparse::HEADER_SIZE];
    let n = usize::try_from(len.min(512)).unwrap_or(512);
    read_exact_at(&file, path, &mut head[..n], 0)?;
    if head[..4] == detect::VMDK3_MAGIC {
        return Err(Error::unsupported(
            "VMware 3 / ESX 2 (\"COWD\") sparse extents are not read by diskseal",
        )
        .with_path(path)
        .hint(format!(
            "convert it first: `qemu-img convert -f vmdk -O raw {} disk.raw`",
            path.display()
        )));
    }
    let raw_header = sparse::RawHeader::decode(&head);
    let (create_type, descriptor, parts) =
        if head[..4] == sparse::MAGIC && raw_header.capacity == 0 && raw_header.desc_offset != 0 {
            // A descriptor stored in a sparse file of no capacity (as QEMU reads it): its extents make
            // the disk, the rest of the header does not matter.
            let at = raw_header.desc_offset.saturating_mul(512);
            let n = raw_header
                .desc_size
                .saturating_mul(512)
                .min(descriptor::MAX_SIZE)
                .min(len.saturating_sub(at));
            if n == 0 {
                return Err(Error::corrupt(format!(
                    "VMDK embedded descriptor (sector {}) lies past the end of the file",
                    raw_header.desc_offset
                ))
                .with_path(path)
                .at(28));
            }
            let mut text = vec![0u8; n as usize];
            read_exact_at(&file, path, &mut text, at)?;
            let d = Descriptor::parse(&text).map_err(|e| e.with_path(path))?;
            let (ct, parts) = descriptor_parts(&d, path, chain)?;
            (ct, Some(d), parts)
        } else if head[..4] == sparse::MAGIC {
            let ext = SparseExtent::open(file, path, &head)?;
            let embedded = ext.embedded_descriptor()?;
            let (ct, d, mut parts) = single(ext, embedded);
            parts[0].file = Some(path.to_owned());
            (ct, d, parts)
        } else {
            if len > descriptor::MAX_SIZE {
                return Err(Error::format(format!(
                "not a VMDK: no sparse header, and {len} bytes is too large for a descriptor file"
            ))
            .with_path(path));
            }
            let mut text = vec![0u8; len as usize];
            read_exact_at(&file, path, &mut text, 0)?;
            let d = Descriptor::parse(&text).map_err(|e| e.with_path(path))?;
            let (ct, parts) = descriptor_parts(&d, path, chain)?;
            (ct, Some(d), parts)
        };
    let size = parts.iter().map(|p| p.len).sum();
    let parent = match descriptor.as_ref().and_then(|d| d.parent_hint.clone()) {
        Some(hint) if !hint.is_empty() => {
            let base = path.parent().unwrap_or(Path::new("."));
            let p = base.join(&hint);
            let image = open_backing(&p, Naming::of(&hint), None, chain).map_err(|e| {
                if e.kind() == ErrorKind::Io {
                    e.hint(format!(
                        "it is the parent of the VMDK delta disk {} (parentFileNameHint {hint:?})",
                        path.display()
                    ))
                } else {
                    e
                }
            })?;
            Some(Parent { hint, image })
        }
        _ => None,
    };
    Ok(VmdkImage {
        path: path.to_owned(),
        size,
        create_type,
        descriptor,
        parts,
        parent,
    })
}

/// A disk made of one sparse extent (its embedded descriptor, if any, names the parent).
fn single(ext: SparseExtent, embedded: Option<Vec<u8>>) -> (String, Option<Descriptor>, Vec<Part>) {
    let d = embedded.and_then(|b| Descriptor::parse(&b).ok());
    let ct = if ext.is_compressed() {
        "streamOptimized"
    } else {
        "monolithicSparse"
    };
    let part = Part {
        start: 0,
        len: ext.capacity,
        kind: "SPARSE".into(),
        file: None,
        data: Data::Sparse(Box::new(ext)),
    };
    (ct.to_owned(), d, vec![part])
}

/// Opens the single-file sparse VMDK stored at `base..base + len` of `file` (a disk inside an OVA);
/// `path` names it in messages. Delta disks and descriptor files are refused.
pub fn open_window(file: File, path: &Path, base: u64, len: u64) -> Result<VmdkImage> {
    let mut head = [0u8; sparse::HEADER_SIZE];
    if len < 512 {
        return Err(
            Error::corrupt(format!("VMDK of {len} bytes is too short for a header"))
                .with_path(path),
        );
    }
    read_exact_at(&file, path, &mut head, base)?;
    if head[..4] != sparse::MAGIC {
        return Err(Error::unsupported(
            "this disk is not a single-file sparse or stream-optimized VMDK (no \"KDMV\" header)",
        )
        .with_path(path)
        .hint(
            "extract the OVA with `tar xf` and convert the disk with `qemu-img convert -O raw`",
        ));
    }
    let ext = SparseExtent::open_window(file, path, base, len, &head)?;
    let embedded = ext.embedded_descriptor()?;
    let (create_type, descriptor, parts) = single(ext, embedded);
    if descriptor
        .as_ref()
        .is_some_and(|d| d.parent_hint.as_deref().is_some_and(|h| !h.is_empty()))
    {
        return Err(
            Error::unsupported("this VMDK is a delta disk (it names a parent)")
                .with_path(path)
                .hint("an OVA's disks must be whole disks"),
        );
    }
    Ok(VmdkImage {
        path: path.to_owned(),
        size: parts.iter().map(|p| p.len).sum(),
        create_type,
        descriptor,
        parts,
        parent: None,
    })
}

/// The parts of the disk a descriptor's extent lines describe.
fn descriptor_parts(d: &Descriptor, path: &Path, chain: &Chain) -> Result<(String, Vec<Part>)> {
    let ct = d.create_type.clone().unwrap_or_default();
    if !DESCRIPTOR_TYPES.contains(&ct.as_str()) {
        let what = if ct.is_empty() {
            "a VMDK descriptor without createType".to_owned()
        } else {
            format!("VMDK createType {ct:?}")
        };
        return Err(
            Error::unsupported(format!("{what} is not read by diskseal"))
                .with_path(path)
                .hint(format!(
                    "diskseal reads {}; convert others with `qemu-img convert -f vmdk -O raw`",
                    DESCRIPTOR_TYPES.join(", ")
                )),
        );
    }
    if d.extents.is_empty() {
        return Err(Error::corrupt("VMDK descriptor has no extent lines").with_path(path));
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut parts = Vec::with_capacity(d.extents.len());
    let mut start = 0u64;
    for x in &d.extents {
        if x.access == Access::NoAccess {
            return Err(Error::unsupported(format!(
                "VMDK descriptor line {}: extent is NOACCESS, its data cannot be read",
                x.line
            ))
            .with_path(path));
        }
        let bytes = x.sectors.checked_mul(512).ok_or_else(|| {
            Error::corrupt(format!("VMDK descriptor line {}: size overflows", x.line))
                .with_path(path)
        })?;
        let open_extent = |name: &str| -> Result<(File, PathBuf)> {
            let p = dir.join(name);
            // The backing-file rule: an extent outside the descriptor's folder (absolute, ../, or a
            // symbolic link out) is refused unless --allow-backing/--trust-backing allow it.
            chain.check(&p, Naming::of(name)).map_err(|e| {
                    Error::new(
                        e.kind(),
                        format!("VMDK descriptor line {}: extent file {name:?}: {}", x.line, e.message()),
                    )
                    .with_path(path)
                    .hint(format!(
                        "a descriptor can name any file as an extent, and its content would be encrypted as the disk; \
                         if this one is expected, pass --allow-backing {} (or --trust-backing)",
                        p.display()
                    ))
                })?;
            let (f, _) = crate::io::open_input(&p).map_err(|e| {
                e.hint(format!(
                    "it is named on line {} of {}",
                    x.line,
                    path.display()
                ))
            })?;
            Ok((f, p))
        };
        let (len, data, file) = match x.kind.as_str() {
            "ZERO" => (bytes, Data::Zero, None),
            "FLAT" | "VMFS" => {
                let (f, p) = open_extent(x.file.as_deref().unwrap_or_default())?;
                let base = x.offset.saturating_mul(512);
                let flen = f
                    .metadata()
                    .map_err(|e| Error::io("stat", &p, None, e))?
                    .len();
                if base.checked_add(bytes).is_none_or(|e| e > flen) {
                    return Err(Error::corrupt(format!(
                        "VMDK descriptor line {}: the extent needs {bytes} bytes from offset {base} of {}, which has {flen}",
                        x.line,
                        p.display()
                    ))
                    .with_path(path)
                    .hint("the extent file is truncated or is not the one the descriptor describes"));
                }
                (
                    bytes,
                    Data::Flat {
                        file: f,
                        path: p.clone(),
                        base,
                    },
                    Some(p),
                )
            }
            "SPARSE" | "VMFSSPARSE" => {
                let (f, p) = open_extent(x.file.as_deref().unwrap_or_default())?;
                let mut head = [0u8; sparse::HEADER_SIZE];
                read_exact_at(&f, &p, &mut head, 0)?;
                if head[..4] != sparse::MAGIC {
                    return Err(Error::unsupported(format!(
                        "VMDK descriptor line {}: {} is not a hosted sparse extent (\"KDMV\")",
                        x.line,
                        p.display()
                    ))
                    .with_path(path)
                    .hint("VMware 3 (\"COWD\") extents are not read; convert with `qemu-img convert -f vmdk -O raw`"));
                }
                let ext = SparseExtent::open(f, &p, &head)?;
                (ext.capacity, Data::Sparse(Box::new(ext)), Some(p))
            }
            other => {
                return Err(Error::unsupported(format!(
                    "VMDK descriptor line {}: extent type {other:?} is not read by diskseal",
                    x.line
                ))
                .with_path(path)
                .hint("diskseal reads SPARSE, VMFSSPARSE, FLAT, VMFS and ZERO extents; convert others with `qemu-img convert -f vmdk -O raw`"));
            }
        };
        parts.push(Part {
            start,
            len,
            kind: x.kind.clone(),
            file,
            data,
        });
        start = start.checked_add(len).ok_or_else(|| {
            Error::corrupt("VMDK extents add up to more than 2^64 bytes").with_path(path)
        })?;
    }
    Ok((ct, parts))
}

impl VmdkImage {
    /// Reads `buf.len()` bytes at `pos` from the parent (zeros past its end), or zeros.
    fn read_below(&self, buf: &mut [u8], pos: u64) -> Result<()> {
        crate::image::read_parent(self.parent.as_ref().map(|p| &*p.image), buf, pos)
    }

    fn details(&self) -> Value {
        let d = self.descriptor.as_ref();
        let extents: Vec<Value> = self
            .parts
            .iter()
            .map(|p| {
                let mut v = json!({"type": p.kind, "virtual-size": p.len, "offset": p.start});
                if let Some(f) = &p.file {
                    v["filename"] = json!(f.display().to_string());
                }
                if let Data::Sparse(s) = &p.data {
                    v["cluster-size"] = json!(s.grain);
                    v["compressed"] = json!(s.is_compressed());
                    v["version"] = json!(s.header.version);
                }
                v
            })
            .collect();
        json!({
            "create-type": self.create_type,
            "cid": d.and_then(|d| d.cid.clone()),
            "parent-cid": d.and_then(|d| d.parent_cid.clone()),
            "ddb": d.map(|d| d.ddb.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>()),
            "extents": extents,
        })
    }
}

impl DiskImage for VmdkImage {
    fn format_name(&self) -> &'static str {
        "vmdk"
    }

    fn virtual_size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        crate::image::check_read(&self.path, self.size, offset, buf.len())?;
        let end = offset + buf.len() as u64;
        let first = self.parts.partition_point(|p| p.start + p.len <= offset);
        for p in &self.parts[first..] {
            if p.start >= end {
                break;
            }
            let (a, b) = (p.start.max(offset), (p.start + p.len).min(end));
            let part = &mut buf[(a - offset) as usize..(b - offset) as usize];
            let rel = a - p.start;
            match &p.data {
                Data::Zero => part.fill(0),
                Data::Flat { file, path, base } => read_exact_at(file, path, part, base + rel)?,
                Data::Sparse(s) => {
                    let start = p.start;
                    s.read(part, rel, &|b, pos| self.read_below(b, start + pos))?;
                }
            }
        }
        Ok(())
    }

    fn extents(&self) -> Result<Vec<Extent>> {
        let mut own = Vec::new();
        for p in &self.parts {
            let shifted = |v: Vec<Extent>| {
                v.into_iter().map(move |e| Extent {
                    offset: e.offset + p.start,
                    ..e
                })
            };
            match &p.data {
                Data::Zero => own.push(Extent {
                    offset: p.start,
                    len: p.len,
                    kind: ExtentKind::Zero,
                }),
                Data::Flat { file, base, .. } => {
                    // Holes of a flat extent read as zeros, never from the parent.
                    let hole = if self.parent.is_some() {
                        ExtentKind::Zero
                    } else {
                        ExtentKind::Unallocated
                    };
                    own.extend(shifted(file_extents(file, *base, p.len)).map(|e| Extent {
                        kind: if e.kind == ExtentKind::Unallocated {
                            hole
                        } else {
                            e.kind
                        },
                        ..e
                    }));
                }
                Data::Sparse(s) => own.extend(shifted(s.map()?)),
            }
        }
        let below = match &self.parent {
            Some(p) => Some(p.image.extents()?),
            None => None,
        };
        Ok(coalesce(resolve_below(own, below.as_deref())))
    }

    fn info(&self) -> ImageInfo {
        let first_grain = self.parts.iter().find_map(|p| match &p.data {
            Data::Sparse(s) => Some(s.grain),
            _ => None,
        });
        ImageInfo {
            format: "vmdk",
            path: self.path.clone(),
            virtual_size: self.size,
            cluster_size: first_grain,
            backing_file: self.parent.as_ref().map(|p| p.hint.clone()),
            backing_format: self.parent.as_ref().map(|_| "vmdk".to_owned()),
            backing: self.parent.as_ref().map(|p| Box::new(p.image.info())),
            details: self.details(),
        }
    }
}
