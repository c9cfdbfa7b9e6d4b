//! LUKS containers, versions 1 and 2: the one way to format a header ([`format()`](fn@format)) and to open one
//! ([`Luks::open`]).
//!
//! - [`kdf`]: PBKDF2/Argon2 and the cost benchmark;
//! - [`af`]: the anti-forensic splitter;
//! - [`keyslot`]: keyslot material and the volume-key digest (shared by both versions);
//! - [`luks1`] and [`luks2`]: the on-disk headers.
//!
//! Keys live in [`crate::crypto::keys`]; a LUKS file read as a disk image is `image::luks`, above
//! this module (which imports nothing from `image`).

pub mod af;
pub mod kdf;
pub mod keyslot;
pub mod luks1;
pub mod luks2;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use serde_json::{Value, json};

use crate::crypto::hash::Hash;
use crate::crypto::iv::CipherSpec;
use crate::crypto::keys::{Filler, Passphrase, VolumeKey};
use crate::error::{Error, Result};
use kdf::{Kdf, KdfCost, KdfType};

/// LUKS on-disk version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum LuksVersion {
    /// LUKS1 (cryptsetup, QEMU).
    Luks1,
    /// LUKS2 (cryptsetup ≥ 2.0).
    Luks2,
}

impl LuksVersion {
    /// "luks1" or "luks2".
    pub fn name(self) -> &'static str {
        match self {
            LuksVersion::Luks1 => "luks1",
            LuksVersion::Luks2 => "luks2",
        }
    }
}

/// Everything needed to format a new header (the volume key and passphrase come separately).
#[derive(Debug, Clone)]
pub struct FormatOptions {
    /// LUKS1 or LUKS2.
    pub version: LuksVersion,
    /// Payload sector size (LUKS1: 512 only).
    pub sector_size: u32,
    /// Keyslot KDF.
    pub kdf: KdfType,
    /// Hash for PBKDF2, the AF splitter and the digest.
    pub hash: Hash,
    /// KDF cost.
    pub cost: KdfCost,
    /// LUKS2 label.
    pub label: String,
    /// LUKS2 subsystem.
    pub subsystem: String,
    /// UUID text; random when `None`.
    pub uuid: Option<String>,
    /// Payload offset in bytes; cryptsetup's default when `None`.
    pub data_offset: Option<u64>,
    /// LUKS2 metadata size per copy (`--luks2-metadata-size`).
    pub metadata_size: Option<u64>,
    /// LUKS2 keyslots area size (`--luks2-keyslots-size`).
    pub keyslots_size: Option<u64>,
    /// Fixed LUKS2 segment size (for containers with trailing data); "dynamic" when `None`.
    pub segment_size: Option<u64>,
    /// LUKS2 `allow-discards` flag.
    pub allow_discards: bool,
    /// The keyslot KDF with its cost, when the caller already chose it (to show the cost before the
    /// slow derivation); chosen from `kdf` and `cost` when `None`.
    pub chosen_kdf: Option<Kdf>,
}

impl FormatOptions {
    /// cryptsetup's defaults for `version` (argon2id for LUKS2, pbkdf2 for LUKS1; sha256; 512-byte sectors).
    pub fn new(version: LuksVersion) -> Self {
        FormatOptions {
            version,
            sector_size: 512,
            kdf: if version == LuksVersion::Luks2 {
                KdfType::Argon2id
            } else {
                KdfType::Pbkdf2
            },
            hash: Hash::Sha256,
            cost: KdfCost::default(),
            label: String::new(),
            subsystem: String::new(),
            uuid: None,
            data_offset: None,
            metadata_size: None,
            keyslots_size: None,
            segment_size: None,
            allow_discards: false,
            chosen_kdf: None,
        }
    }

    /// The keyslot KDF with its cost: [`FormatOptions::chosen_kdf`], or chosen from `cost` (benchmarked
    /// unless forced) for a `key_len`-byte volume key. LUKS1 keyslots are PBKDF2 only.
    pub fn keyslot_kdf(&self, key_len: usize) -> Result<Kdf> {
        if let Some(k) = self.chosen_kdf {
            k.validate("keyslot KDF")?;
            return Ok(k);
        }
        if self.version == LuksVersion::Luks1 && self.kdf != KdfType::Pbkdf2 {
            return Err(Error::invalid(format!(
                "LUKS1 keyslots use pbkdf2, not {}",
                self.kdf.name()
            )));
        }
        self.cost.choose(self.kdf, self.hash, key_len)
    }

    /// Cheap KDF costs for tests (pbkdf2, 1000 iterations).
    #[doc(hidden)]
    pub fn for_tests(version: LuksVersion) -> Self {
        let mut o = Self::new(version);
        o.kdf = KdfType::Pbkdf2;
        o.cost.force_iterations = Some(1000);
        o
    }
}

/// A formatted header region, ready to be written at offset 0 of the output: `header`, then
/// random-looking bytes up to `filler_end` (the unused rest of the keyslots area), then zeros up to
/// `data_offset`. The filler is made as it is written: built whole, the 16 MiB of a LUKS2 header cost
/// 10 ms of page faults here before the first byte went out.
#[derive(Debug)]
pub struct Formatted {
    /// The bytes that carry the header: the binary header(s), the LUKS2 JSON areas, keyslot 0's
    /// key material.
    pub header: Vec<u8>,
    /// Where the filler ends (it starts at `header.len()`, a multiple of 512).
    pub filler_end: u64,
    /// Where the payload starts.
    pub data_offset: u64,
    /// The UUID written.
    pub uuid: String,
    /// The keyslot KDF with its chosen cost.
    pub keyslot_kdf: Kdf,
}

impl Formatted {
    /// The filler in pieces of at most this size.
    const PIECE: usize = 1 << 20;

    /// Writes the header region with `write(bytes, offset)`: the header, then the filler a piece at a
    /// time. The zeros after the filler are not written: a new file reads as zeros there.
    pub fn write(&self, write: &mut dyn FnMut(&[u8], u64) -> Result<()>) -> Result<()> {
        write(&self.header, 0)?;
        let filler = Filler::new()?;
        let (start, end) = (self.header.len() as u64, self.filler_end);
        let mut piece = vec![0u8; Self::PIECE.min(end.saturating_sub(start) as usize)];
        let mut at = start;
        while at < end {
            let n = (end - at).min(piece.len() as u64) as usize;
            filler.fill(&mut piece[..n], at - start)?;
            write(&piece[..n], at)?;
            at += n as u64;
        }
        Ok(())
    }

    /// The whole header region, `data_offset` bytes.
    pub fn bytes(&self) -> Result<Vec<u8>> {
        let mut all = vec![0u8; self.data_offset as usize];
        self.write(&mut |b, at| {
            all[at as usize..at as usize + b.len()].copy_from_slice(b);
            Ok(())
        })?;
        Ok(all)
    }
}

/// Formats a header of `opts.version` for `key`, with keyslot 0 opened by `passphrase`.
pub fn format(opts: &FormatOptions, key: &VolumeKey, passphrase: &Passphrase) -> Result<Formatted> {
    if let Some(u) = &opts.uuid {
        uuid::Uuid::parse_str(u)
            .map_err(|_| Error::invalid(format!("--uuid {u:?} is not a UUID")))?;
    }
    for (name, v) in [("label", &opts.label), ("subsystem", &opts.subsystem)] {
        if v.len() > 47 || v.contains('\0') {
            return Err(Error::invalid(format!(
                "the {name} must be at most 47 bytes without NUL"
            )));
        }
    }
    match opts.version {
        LuksVersion::Luks1 => luks1::format(opts, key, passphrase),
        LuksVersion::Luks2 => luks2::format(opts, key, passphrase),
    }
}

/// The payload segment of an opened header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Byte offset of the ciphertext.
    pub offset: u64,
    /// Fixed size, or `None` for "to the end of the file".
    pub size: Option<u64>,
    /// Added to the 512-byte sector number.
    pub iv_tweak: u64,
    /// Encryption sector size.
    pub sector_size: u32,
    /// The cipher.
    pub cipher: CipherSpec,
    /// The cipher string as stored.
    pub cipher_name: String,
    /// Volume key length.
    pub key_bytes: usize,
}

impl Segment {
    /// Payload length for a file of `file_len` bytes, checked to fit and to be whole sectors.
    pub fn payload_len(&self, file_len: u64) -> Result<u64> {
        let len = match self.size {
            Some(s) => {
                let end = self.offset.saturating_add(s);
                if end > file_len {
                    return Err(Error::corrupt(format!(
                        "truncated: expected {end} bytes, found {file_len}"
                    ))
                    .hint(format!(
                        "the segment ({s} bytes at {:#x}) runs past the end of the file; copy the file again",
                        self.offset
                    )));
                }
                s
            }
            None => file_len.checked_sub(self.offset).ok_or_else(|| {
                Error::corrupt(format!(
                    "the data offset {:#x} is beyond the end of the file ({file_len:#x})",
                    self.offset
                ))
                .hint("the file is truncated")
            })?,
        };
        let sector = u64::from(self.sector_size);
        if len % sector != 0 {
            return Err(Error::corrupt(format!(
                "truncated: expected {} bytes, found {file_len}",
                self.offset + len.div_ceil(sector) * sector
            ))
            .hint(format!(
                "the payload ({len} bytes) is not a whole number of {sector}-byte sectors; copy the file again"
            )));
        }
        Ok(len)
    }
}

/// An opened LUKS header of either version.
#[derive(Debug, Clone)]
pub enum Header {
    /// LUKS1.
    V1(luks1::Luks1Header),
    /// LUKS2.
    V2(Box<luks2::Luks2Header>),
}

/// A LUKS file: its header, the payload segment, and the file's size.
#[derive(Debug, Clone)]
pub struct Luks {
    /// The header.
    pub header: Header,
    /// The payload segment.
    pub segment: Segment,
    /// File size when opened.
    pub file_len: u64,
    /// Non-fatal problems (e.g. one damaged LUKS2 copy).
    pub warnings: Vec<String>,
    /// Structural damage that still lets the volume open (a damaged or stale LUKS2 header copy, a
    /// data segment over the header area): warned about, and `verify` fails on it.
    pub damage: Vec<String>,
}

impl Luks {
    /// Opens the header of `file` (either version), checking every structure. The LUKS file ends at
    /// `end` (the file's length, less what a container around it adds after it: a fixed VHD's
    /// footer, which `image::luks::open` finds): a payload that runs to the end stops there.
    pub fn open(file: &File, path: &Path, end: u64) -> Result<Luks> {
        let file_len = crate::io::input_len(file, path)?;
        let mut head = [0u8; 8];
        if file_len < 8 {
            return Err(Error::format("file is too short to be LUKS")
                .with_path(path)
                .hint("is this the encrypted image?"));
        }
        file.read_exact_at(&mut head, 0)
            .map_err(|e| Error::io("read", path, Some(0), e))?;
        let version = u16::from_be_bytes([head[6], head[7]]);
        let (header, mut warnings) = if head[..6] == luks1::MAGIC && version == 1 {
            (
                Header::V1(luks1::Luks1Header::read(file, path, file_len)?),
                Vec::new(),
            )
        } else if version == 2 || head[..6] != luks1::MAGIC {
            // A LUKS2 primary, or a damaged primary whose secondary may still be intact.
            match luks2::Luks2Header::read(file, path, file_len) {
                Ok(h) => {
                    let w = h.warnings.clone();
                    (Header::V2(Box::new(h)), w)
                }
                Err(e)
                    if head[..6] != luks1::MAGIC && e.kind() == crate::ErrorKind::InvalidFormat =>
                {
                    return Err(Error::format("not a LUKS file (no LUKS magic at offset 0)")
                        .with_path(path)
                        .at(0)
                        .hint("is this the encrypted image?"));
                }
                Err(e) => return Err(e),
            }
        } else {
            return Err(
                Error::unsupported(format!("LUKS version {version} is not supported"))
                    .with_path(path)
                    .at(6),
            );
        };
        let segment = match &header {
            Header::V1(h) => h.segment(),
            Header::V2(h) => h.segment(),
        }
        .map_err(|e| e.with_path(path))?;
        let file_len = if segment.size.is_none() {
            end.min(file_len)
        } else {
            file_len
        };
        segment
            .payload_len(file_len)
            .map_err(|e| e.with_path(path))?;
        let mut damage = Vec::new();
        if let Header::V2(h) = &header {
            damage.extend(h.damage.iter().cloned());
            // Offset 0 is a detached-header layout; in one file the "data" would be the header itself.
            let areas_end = 2 * h.bin.hdr_size + h.meta.config.keyslots_size;
            if segment.offset < areas_end {
                let d = format!(
                    "the data segment at {:#x} overlaps the LUKS2 header area (metadata and keyslots \
                     end at {areas_end:#x}): the start of the decrypted data is the header itself",
                    segment.offset
                );
                warnings.push(d.clone());
                damage.push(d);
            }
        }
        Ok(Luks {
            header,
            segment,
            file_len,
            warnings,
            damage,
        })
    }

    /// A LUKS1 header embedded in another container (qcow2); the payload lives elsewhere, so the
    /// segment describes the header only and `file_len` is the container's size.
    pub fn embedded(header: luks1::Luks1Header, file_len: u64) -> Result<Luks> {
        let segment = header.segment()?;
        Ok(Luks {
            header: Header::V1(header),
            segment,
            file_len,
            warnings: Vec::new(),
            damage: Vec::new(),
        })
    }

    /// LUKS1 or LUKS2.
    pub fn version(&self) -> LuksVersion {
        match self.header {
            Header::V1(_) => LuksVersion::Luks1,
            Header::V2(_) => LuksVersion::Luks2,
        }
    }

    /// The UUID.
    pub fn uuid(&self) -> &str {
        match &self.header {
            Header::V1(h) => &h.uuid,
            Header::V2(h) => &h.bin.uuid,
        }
    }

    /// Payload length in bytes.
    pub fn payload_len(&self) -> u64 {
        self.segment.payload_len(self.file_len).unwrap_or(0)
    }

    /// Recovers the volume key with `passphrase`; returns it and the keyslot that opened.
    pub fn unlock(
        &self,
        file: &File,
        path: &Path,
        passphrase: &Passphrase,
    ) -> Result<(VolumeKey, u32)> {
        match &self.header {
            Header::V1(h) => h.unlock(file, path, passphrase),
            Header::V2(h) => h.unlock(file, path, passphrase),
        }
    }

    /// Checks that `key` is this volume's key (constant-time digest comparison).
    pub fn check_volume_key(&self, key: &VolumeKey) -> Result<()> {
        if key.len() != self.segment.key_bytes {
            return Err(Error::new(
                crate::ErrorKind::WrongKey,
                format!(
                    "the volume key has {} bytes, the header expects {}",
                    key.len(),
                    self.segment.key_bytes
                ),
            ));
        }
        let ok = match &self.header {
            Header::V1(h) => h.check_volume_key(key)?,
            Header::V2(h) => h.check_volume_key(key)?,
        };
        if ok {
            Ok(())
        } else {
            Err(Error::new(
                crate::ErrorKind::WrongKey,
                "the volume key does not match the header's digest",
            ))
        }
    }

    /// A summary for `dump --json` (no secrets: salts and digests are public header data).
    pub fn to_json(&self) -> Value {
        let seg = &self.segment;
        let mut v = json!({
            "version": match self.version() { LuksVersion::Luks1 => 1, LuksVersion::Luks2 => 2 },
            "uuid": self.uuid(),
            "cipher": seg.cipher_name,
            "key_bits": seg.key_bytes * 8,
            "sector_size": seg.sector_size,
            "data_offset": seg.offset,
            "payload_size": self.payload_len(),
            "file_size": self.file_len,
        });
        match &self.header {
            Header::V1(h) => {
                v["hash"] = json!(h.hash_spec);
                v["mk_digest_iterations"] = json!(h.mk_digest_iterations);
                v["keyslots"] = Value::Array(
                    h.slots
                        .iter()
                        .enumerate()
                        .filter(|(_, s)| s.active)
                        .map(|(i, s)| json!({"id": i, "type": "pbkdf2", "hash": h.hash_spec, "iterations": s.iterations,
                            "key_material_offset": u64::from(s.key_material_offset) * 512, "stripes": s.stripes}))
                        .collect(),
                );
            }
            Header::V2(h) => {
                v["label"] = json!(h.bin.label);
                v["subsystem"] = json!(h.bin.subsystem);
                v["seqid"] = json!(h.bin.seqid);
                v["metadata_size"] = json!(h.bin.hdr_size);
                v["keyslots_size"] = json!(h.meta.config.keyslots_size);
                v["flags"] = json!(h.meta.config.flags);
                v["requirements"] = json!(h.meta.config.requirements);
                v["unbound_keyslots"] = json!(
                    h.meta
                        .keyslots
                        .iter()
                        .filter(|k| !h.meta.is_bound(k.id))
                        .map(|k| k.id)
                        .collect::<Vec<_>>()
                );
                v["metadata"] = h.meta.raw.clone();
            }
        }
        v["warnings"] = json!(self.warnings);
        v["damage"] = json!(self.damage);
        v
    }

    /// A human-readable dump in the spirit of `cryptsetup luksDump`.
    pub fn dump_text(&self) -> String {
        use std::fmt::Write;
        let seg = &self.segment;
        let mut s = String::new();
        let _ = writeln!(s, "LUKS header information");
        let _ = writeln!(
            s,
            "Version:        {}",
            if self.version() == LuksVersion::Luks1 {
                1
            } else {
                2
            }
        );
        let _ = writeln!(s, "UUID:           {}", self.uuid());
        match &self.header {
            Header::V1(h) => {
                let _ = writeln!(s, "Cipher name:    {}", h.cipher_name);
                let _ = writeln!(s, "Cipher mode:    {}", h.cipher_mode);
                let _ = writeln!(s, "Hash spec:      {}", h.hash_spec);
                let _ = writeln!(
                    s,
                    "Payload offset: {} sectors ({} bytes)",
                    h.payload_offset, seg.offset
                );
                let _ = writeln!(s, "MK bits:        {}", h.key_bytes * 8);
                let _ = writeln!(s, "MK iterations:  {}", h.mk_digest_iterations);
                let _ = writeln!(s, "\nKeyslots:");
                for (i, k) in h.slots.iter().enumerate() {
                    if k.active {
                        let _ = writeln!(
                            s,
                            "  {i}: ENABLED  pbkdf2-{}  iterations {}  material at sector {}  stripes {}",
                            h.hash_spec, k.iterations, k.key_material_offset, k.stripes
                        );
                    } else {
                        let _ = writeln!(s, "  {i}: DISABLED");
                    }
                }
            }
            Header::V2(h) => {
                let _ = writeln!(
                    s,
                    "Label:          {}",
                    if h.bin.label.is_empty() {
                        "(no label)"
                    } else {
                        &h.bin.label
                    }
                );
                let _ = writeln!(
                    s,
                    "Subsystem:      {}",
                    if h.bin.subsystem.is_empty() {
                        "(no subsystem)"
                    } else {
                        &h.bin.subsystem
                    }
                );
                let _ = writeln!(s, "Epoch:          {}", h.bin.seqid);
                let _ = writeln!(s, "Metadata area:  {} [bytes]", h.bin.hdr_size);
                let _ = writeln!(s, "Keyslots area:  {} [bytes]", h.meta.config.keyslots_size);
                if !h.meta.config.flags.is_empty() {
                    let _ = writeln!(s, "Flags:          {}", h.meta.config.flags.join(" "));
                }
                let req = &h.meta.config.requirements;
                if !req.is_empty() {
                    let _ = writeln!(
                        s,
                        "Requirements:   {} (unmet: diskseal cannot unlock this device)",
                        req.join(" ")
                    );
                    if req.iter().any(|r| r.starts_with("online-reencrypt")) {
                        let _ = writeln!(
                            s,
                            "                a re-encryption is in progress or was interrupted; finish it with\n\
                             \x20               `cryptsetup reencrypt --resume-only FILE`"
                        );
                    }
                }
                let _ = writeln!(s, "\nData segments:");
                for g in &h.meta.segments {
                    let size = g
                        .size
                        .map_or("dynamic".to_owned(), |v| format!("{v} [bytes]"));
                    let _ = writeln!(s, "  {}: {}", g.id, g.kind);
                    let _ = writeln!(s, "\toffset: {} [bytes]\n\tlength: {size}", g.offset);
                    if !g.flags.is_empty() {
                        let _ = writeln!(s, "\tflags:  {}", g.flags.join(" "));
                    }
                    if g.kind == "crypt" {
                        let _ = writeln!(
                            s,
                            "\tcipher: {}\n\tsector: {} [bytes]",
                            g.encryption, g.sector_size
                        );
                    }
                }
                let _ = writeln!(s, "\nKeyslots:");
                for k in &h.meta.keyslots {
                    let unbound = if h.meta.is_bound(k.id) {
                        ""
                    } else {
                        " (unbound)"
                    };
                    let _ = writeln!(s, "  {}: {}{unbound}", k.id, k.kind);
                    let priority = match k.priority {
                        Some(0) => "ignored",
                        Some(2) => "high",
                        _ => "normal",
                    };
                    let _ = writeln!(s, "\tPriority:   {priority}");
                    if let Some(l) = &k.luks2 {
                        let _ = writeln!(s, "\tKey:        {} bits", k.key_size * 8);
                        let _ = writeln!(s, "\tCipher:     {}", l.area_encryption);
                        let _ = writeln!(s, "\tPBKDF:      {}", l.kdf_type);
                        if let Some(h) = &l.kdf_hash {
                            let _ = writeln!(s, "\tHash:       {h}");
                        }
                        if let Some(i) = l.iterations {
                            let _ = writeln!(s, "\tIterations: {i}");
                        }
                        if let (Some(t), Some(m), Some(c)) = (l.time, l.memory, l.cpus) {
                            let _ = writeln!(
                                s,
                                "\tTime cost:  {t}\n\tMemory:     {m}\n\tThreads:    {c}"
                            );
                        }
                        let _ = writeln!(
                            s,
                            "\tAF stripes: {}\n\tAF hash:    {}",
                            l.stripes, l.af_hash
                        );
                        let _ = writeln!(
                            s,
                            "\tArea offset: {} [bytes]\n\tArea length: {} [bytes]",
                            l.area_offset, l.area_size
                        );
                    }
                }
                let _ = writeln!(s, "Tokens:         {}", h.meta.tokens);
                let _ = writeln!(s, "Digests:");
                for d in &h.meta.digests {
                    let _ = writeln!(
                        s,
                        "  {}: {}\n\tHash:       {}\n\tIterations: {}",
                        d.id, d.kind, d.hash, d.iterations
                    );
                }
            }
        }
        for w in &self.warnings {
            let _ = writeln!(s, "WARNING: {w}");
        }
        s
    }
}
