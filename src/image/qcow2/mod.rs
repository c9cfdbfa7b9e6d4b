//! QEMU qcow2 v2/v3, read-only: zero clusters, compressed clusters (zlib and zstd), extended L2
//! (subclusters), backing chains of any format. Refused: legacy AES encryption, external data files,
//! unknown incompatible features (named from the feature name table); LUKS-encrypted images open (for
//! `info`) but refuse reads.
//!
//! - `mod.rs`: [`open`] and [`Qcow2Image`], the [`DiskImage`] implementation (reads, extents, info);
//! - [`header`]: the raw header and extensions ↔ the checked [`header::Header`];
//! - [`mapping`]: L1/L2 lookup into runs of data, compressed, zero and backing bytes;
//! - [`compressed`]: compressed descriptors and zlib/zstd cluster decoding;
//! - [`writer`]: the streaming qcow2 v3 writer (plain or with QEMU-native LUKS1).

pub mod compressed;
pub mod header;
pub mod mapping;
pub mod writer;

use std::fs::File;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use self::compressed::{InflateError, inflate_zlib, inflate_zstd};
use self::header::Header;
use self::mapping::{Mapping, Run};
use crate::crypto::iv::qcow2_sector;
use crate::crypto::keys::{Passphrase, VolumeKey};
use crate::crypto::{IvScheme, Xts};
use crate::error::{Error, ErrorKind, Result};
use crate::image::{
    DiskImage, Extent, ExtentKind, ImageFormat, ImageInfo, Naming, coalesce, open_backing,
};
use crate::io::read_exact_at;
use crate::luks::luks1::Luks1Header;

/// An open qcow2 image (and its backing chain).
#[derive(Debug)]
pub struct Qcow2Image {
    path: PathBuf,
    header: Header,
    mapping: Mapping,
    backing: Option<Box<dyn DiskImage>>,
    encrypt: Option<Value>,
    /// The data key once [`Qcow2Image::set_key`] accepted it (QEMU-native LUKS).
    crypto: Option<Xts>,
    iv: IvScheme,
}

/// Opens a qcow2 file; `chain` holds the images above it (see [`open_backing`]).
pub fn open(
    file: File,
    path: &Path,
    chain: &mut crate::image::Chain,
) -> Result<Box<dyn DiskImage>> {
    Ok(Box::new(Qcow2Image::open(file, path, chain)?))
}

/// Where a backing file named `name` in the image at `image` lives: relative names are taken from the
/// directory of the image that names them.
pub fn resolve_backing(image: &Path, name: &str) -> PathBuf {
    let p = Path::new(name);
    if p.is_absolute() {
        return p.to_owned();
    }
    match image.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join(p),
        _ => p.to_owned(),
    }
}

impl Qcow2Image {
    /// Reads and checks the header, loads the L1 table and opens the backing chain.
    pub fn open(file: File, path: &Path, chain: &mut crate::image::Chain) -> Result<Qcow2Image> {
        let file_len = file
            .metadata()
            .map_err(|e| Error::io("stat", path, None, e))?
            .len();
        // Cluster 0 holds the header, the extensions and the backing file name.
        let mut head = [0u8; 24];
        let n = file_len.min(24) as usize;
        read_exact_at(&file, path, &mut head[..n], 0)?;
        let cb = if n >= 24 {
            u32::from_be_bytes([head[20], head[21], head[22], head[23]])
        } else {
            9
        };
        let want = if (header::MIN_CLUSTER_BITS..=header::MAX_CLUSTER_BITS).contains(&cb) {
            1u64 << cb
        } else {
            512
        };
        let mut c0 = vec![0u8; want.min(file_len) as usize];
        read_exact_at(&file, path, &mut c0, 0)?;
        let header = Header::parse(&c0, file_len, path)?;
        let encrypt = match (header.raw.crypt_method, header.fde) {
            (2, Some((off, len))) => Some(luks_details(&file, path, off, len, file_len)),
            _ => None,
        };
        let mapping = Mapping::load(file, path, &header, file_len)?;
        let backing = match &header.backing_file {
            None => None,
            Some(name) => {
                if name.starts_with("json:") {
                    return Err(Error::unsupported(format!(
                        "backing file {name:?} is a json: pseudo-filename"
                    ))
                    .with_path(path)
                    .at(header.raw.backing_file_offset)
                    .hint("rebase the image onto a plain file with `qemu-img rebase`"));
                }
                let format = match &header.backing_format {
                    Some(f) => Some(ImageFormat::parse(f).map_err(|e| {
                        Error::unsupported(format!(
                            "backing file {name:?} has format {f:?}, which diskseal cannot read"
                        ))
                        .with_path(path)
                        .hint(e.hint_text().unwrap_or("convert the backing file first"))
                    })?),
                    None => None,
                };
                let bpath = resolve_backing(path, name);
                Some(open_backing(&bpath, Naming::of(name), format, chain)?)
            }
        };
        Ok(Qcow2Image {
            path: path.to_owned(),
            header,
            mapping,
            backing,
            encrypt,
            crypto: None,
            iv: IvScheme::Plain64,
        })
    }

    /// The embedded LUKS1 header of a QEMU-native LUKS image (crypt_method 2) and where it starts.
    pub fn luks_header(&self) -> Result<Option<(Luks1Header, u64)>> {
        match (self.header.raw.crypt_method, self.header.fde) {
            (2, Some((off, len))) => {
                let h = Luks1Header::read_at(self.mapping.file(), &self.path, off, len)?;
                if h.cipher_name != "aes" || !h.cipher_mode.starts_with("xts-") {
                    return Err(Error::unsupported(format!(
                        "qcow2 LUKS cipher {}-{} is not supported",
                        h.cipher_name, h.cipher_mode
                    ))
                    .with_path(&self.path)
                    .at(off + 8)
                    .hint("diskseal reads aes-xts-plain64 / aes-xts-plain"));
                }
                Ok(Some((h, off)))
            }
            _ => Ok(None),
        }
    }

    /// Unlocks the embedded LUKS1 header with `passphrase`; returns the volume key and keyslot.
    pub fn unlock(&self, passphrase: &Passphrase) -> Result<(VolumeKey, u32)> {
        let Some((h, off)) = self.luks_header()? else {
            return Err(Error::invalid("this qcow2 image is not encrypted").with_path(&self.path));
        };
        h.unlock_at(self.mapping.file(), &self.path, off, passphrase)
    }

    /// Checks `key` against the embedded LUKS1 digest and, if it matches, decrypts data reads with it
    /// (512-byte sectors, IV = host offset / 512, as QEMU does).
    pub fn set_key(&mut self, key: &VolumeKey) -> Result<()> {
        let Some((h, off)) = self.luks_header()? else {
            return Err(Error::invalid("this qcow2 image is not encrypted").with_path(&self.path));
        };
        if key.len() != h.key_bytes as usize || !h.check_volume_key(key)? {
            return Err(Error::new(
                ErrorKind::WrongKey,
                "the volume key does not match the qcow2 LUKS header's digest",
            )
            .with_path(&self.path)
            .at(off));
        }
        let cipher = crate::crypto::iv::CipherSpec::parse_luks1(&h.cipher_name, &h.cipher_mode)?;
        self.iv = cipher.iv;
        self.crypto = Some(Xts::new(key.expose())?);
        Ok(())
    }

    /// The checked header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    fn backing_read(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        match &self.backing {
            None => buf.fill(0),
            Some(b) => {
                let bsize = b.virtual_size();
                let n = if offset >= bsize {
                    0
                } else {
                    (bsize - offset).min(buf.len() as u64) as usize
                };
                if n > 0 {
                    b.read_at(&mut buf[..n], offset)?;
                }
                buf[n..].fill(0);
            }
        }
        Ok(())
    }

    fn data_read(&self, buf: &mut [u8], host: u64) -> Result<()> {
        if let Some(xts) = &self.crypto {
            // Whole 512-byte sectors are decrypted, IV = host sector number.
            let start = host / 512 * 512;
            let end = (host + buf.len() as u64).div_ceil(512) * 512;
            if start == host && end == host + buf.len() as u64 {
                self.plain_read(buf, host)?;
                return xts.decrypt(buf, 512, qcow2_sector(host), self.iv);
            }
            let mut tmp = vec![0u8; (end - start) as usize];
            self.plain_read(&mut tmp, start)?;
            xts.decrypt(&mut tmp, 512, qcow2_sector(start), self.iv)?;
            let at = (host - start) as usize;
            buf.copy_from_slice(&tmp[at..at + buf.len()]);
            return Ok(());
        }
        self.plain_read(buf, host)
    }

    fn plain_read(&self, buf: &mut [u8], host: u64) -> Result<()> {
        // A file may end inside its last data cluster: the rest reads as zeros, as in QEMU.
        let flen = self.mapping.file_len();
        let n = if host >= flen {
            0
        } else {
            (flen - host).min(buf.len() as u64) as usize
        };
        read_exact_at(self.mapping.file(), &self.path, &mut buf[..n], host)?;
        buf[n..].fill(0);
        Ok(())
    }

    /// Inflates the compressed cluster at `d` whose guest cluster starts at `guest`.
    fn inflate(&self, d: compressed::CompressedDesc, guest: u64) -> Result<Vec<u8>> {
        let flen = self.mapping.file_len();
        let n = d.len.min(flen.saturating_sub(d.offset)) as usize;
        let mut input = vec![0u8; n];
        read_exact_at(self.mapping.file(), &self.path, &mut input, d.offset)?;
        let mut out = vec![0u8; self.header.cluster_size as usize];
        let r = if self.header.compression_type == 1 {
            inflate_zstd(&input, &mut out)
        } else {
            inflate_zlib(&input, &mut out)
        };
        r.map_err(|e: InflateError| {
            let codec = if self.header.compression_type == 1 {
                "zstd"
            } else {
                "zlib"
            };
            Error::corrupt(format!(
                "compressed cluster for guest offset {guest:#x}: {codec}: {e}"
            ))
            .with_path(&self.path)
            .at(d.offset)
        })?;
        Ok(out)
    }
}

/// Length of a LUKS1 header with its eight keyslot descriptors.
const LUKS1_PHDR_LEN: usize = 208 + 8 * 48;

/// What `qemu-img info` shows of a qcow2-embedded LUKS header (best effort: never fails; without a
/// readable LUKS1 header only the format and the header's place are given).
fn luks_details(file: &File, path: &Path, off: u64, len: u64, file_len: u64) -> Value {
    let mut v = json!({"format": "luks", "header-offset": off, "header-length": len});
    let mut hdr = [0u8; LUKS1_PHDR_LEN];
    let readable = off
        .checked_add(LUKS1_PHDR_LEN as u64)
        .is_some_and(|e| e <= file_len)
        && read_exact_at(file, path, &mut hdr, off).is_ok()
        && hdr[..6] == crate::luks::luks1::MAGIC;
    if !readable {
        return v;
    }
    let text = |r: std::ops::Range<usize>| {
        let b = &hdr[r];
        let e = b.iter().position(|&c| c == 0).unwrap_or(b.len());
        String::from_utf8_lossy(&b[..e]).into_owned()
    };
    let u32_at = |at: usize| u32::from_be_bytes([hdr[at], hdr[at + 1], hdr[at + 2], hdr[at + 3]]);
    let (cipher, mode_spec) = (text(8..40), text(40..72));
    let (mode, ivgen) = mode_spec
        .split_once('-')
        .unwrap_or((mode_spec.as_str(), ""));
    let key_bits = u64::from(u32_at(108)) * 8 / if mode == "xts" { 2 } else { 1 };
    v["cipher-alg"] = json!(format!("{cipher}-{key_bits}"));
    v["cipher-mode"] = json!(mode);
    match ivgen.split_once(':') {
        Some((alg, hash)) => {
            v["ivgen-alg"] = json!(alg);
            v["ivgen-hash-alg"] = json!(hash);
        }
        None => v["ivgen-alg"] = json!(ivgen),
    }
    v["hash-alg"] = json!(text(72..104));
    v["payload-offset"] = json!(u64::from(u32_at(104)) * 512);
    v["master-key-iters"] = json!(u32_at(164));
    v["uuid"] = json!(text(168..208));
    let slots: Vec<Value> = (0..8)
        .map(|i| {
            let at = 208 + 48 * i;
            let active = u32_at(at) == 0x00ac_71f3;
            let mut s = json!({"active": active, "key-offset": u64::from(u32_at(at + 40)) * 512});
            if active {
                s["iters"] = json!(u32_at(at + 4));
                s["stripes"] = json!(u32_at(at + 44));
            }
            s
        })
        .collect();
    v["slots"] = json!(slots);
    v
}

impl DiskImage for Qcow2Image {
    fn format_name(&self) -> &'static str {
        "qcow2"
    }

    fn virtual_size(&self) -> u64 {
        self.header.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.header.size)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "read of {:#x} bytes at {offset:#x} is past the virtual size {:#x}",
                    buf.len(),
                    self.header.size
                ))
                .with_path(&self.path)
            })?;
        if self.encrypt.is_some() && self.crypto.is_none() {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "qcow2 image is LUKS-encrypted (crypt_method 2)",
            )
            .with_path(&self.path)
            .at(0x20)
            .hint(
                "use `diskseal decrypt --key-file PASSFILE IMAGE plain.raw` (or verify) to read it",
            ));
        }
        if buf.is_empty() {
            return Ok(());
        }
        // Gather runs, merging neighbours that can be served by one read.
        let mut runs: Vec<(u64, u64, Run)> = Vec::new();
        self.mapping.runs(offset, end, &mut |s, e, r| {
            if let Some(last) = runs.last_mut() {
                let merge = match (last.2, r) {
                    (Run::Data(h0), Run::Data(h1)) => h0 + (last.1 - last.0) == h1,
                    (Run::Zero, Run::Zero) | (Run::Backing, Run::Backing) => true,
                    (Run::Compressed(a, g0), Run::Compressed(b, g1)) => a == b && g0 == g1,
                    _ => false,
                };
                if merge && last.1 == s {
                    last.1 = e;
                    return Ok(());
                }
            }
            runs.push((s, e, r));
            Ok(())
        })?;
        for (s, e, r) in runs {
            let out = &mut buf[(s - offset) as usize..(e - offset) as usize];
            match r {
                Run::Data(host) => self.data_read(out, host)?,
                Run::Zero => out.fill(0),
                Run::Backing => self.backing_read(out, s)?,
                Run::Compressed(d, guest) => {
                    let cluster = self.inflate(d, guest)?;
                    let at = (s - guest) as usize;
                    out.copy_from_slice(&cluster[at..at + out.len()]);
                }
            }
        }
        Ok(())
    }

    fn extents(&self) -> Result<Vec<Extent>> {
        let below = match &self.backing {
            Some(b) => Some((b.extents()?, b.virtual_size())),
            None => None,
        };
        let mut out: Vec<Extent> = Vec::new();
        let mut push = |offset: u64, len: u64, kind: ExtentKind| {
            if len == 0 {
                return;
            }
            match out.last_mut() {
                Some(l) if l.kind == kind && l.offset + l.len == offset => l.len += len,
                _ => out.push(Extent { offset, len, kind }),
            }
        };
        self.mapping.runs(0, self.header.size, &mut |s, e, r| {
            match r {
                Run::Data(_) | Run::Compressed(..) => push(s, e - s, ExtentKind::Data),
                Run::Zero => push(s, e - s, ExtentKind::Zero),
                Run::Backing => match &below {
                    None => push(s, e - s, ExtentKind::Unallocated),
                    Some((ext, bsize)) => {
                        let stop = e.min(*bsize);
                        // First backing extent that ends after s.
                        let mut i = ext.partition_point(|x| x.offset + x.len <= s);
                        let mut p = s;
                        while p < stop && i < ext.len() {
                            let x = ext[i];
                            let q = (x.offset + x.len).min(stop);
                            push(p, q - p, x.kind);
                            p = q;
                            i += 1;
                        }
                        push(p, e - p, ExtentKind::Unallocated);
                    }
                },
            }
            Ok(())
        })?;
        Ok(coalesce(out))
    }

    fn info(&self) -> ImageInfo {
        let h = &self.header;
        let mut details = json!({
            "compat": if h.version == 2 { "0.10" } else { "1.1" },
            "compression-type": if h.compression_type == 1 { "zstd" } else { "zlib" },
            "extended-l2": h.extended_l2,
            "lazy-refcounts": h.lazy_refcounts,
            "refcount-bits": h.refcount_bits,
            "corrupt": h.corrupt,
            "dirty": h.dirty,
            "snapshots": h.raw.nb_snapshots,
            "bitmaps": h.has_bitmaps,
        });
        // Only when cheap: at most 8 MiB of L2 tables are read.
        if let Ok(Some(n)) = self.mapping.allocated_clusters(8 << 20) {
            details["allocated-clusters"] = json!(n);
        }
        if let Some(enc) = &self.encrypt {
            details["encrypt"] = enc.clone();
        }
        ImageInfo {
            format: "qcow2",
            path: self.path.clone(),
            virtual_size: h.size,
            cluster_size: Some(h.cluster_size),
            backing_file: h.backing_file.clone(),
            backing_format: h.backing_format.clone(),
            backing: self.backing.as_ref().map(|b| Box::new(b.info())),
            details,
        }
    }
}
