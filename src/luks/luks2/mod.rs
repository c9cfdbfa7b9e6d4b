//! LUKS2: header assembly (both copies, JSON areas, keyslot area) and reading (pick the valid, newest
//! copy; unlock a keyslot; check the volume key against its digest).
//!
//! - [`binary`] owns the 4096-byte binary header and its checksum;
//! - [`json`](mod@json) owns the JSON metadata model and its validation.
//!
//! Layout written (cryptsetup's defaults, `formats.md` §1.1, §1.5):
//! `[hdr1 + JSON1 | hdr2 + JSON2 | keyslots area (random fill, keyslot 0 at 2*hdr_size) | pad | payload]`.

pub mod binary;
pub mod json;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use base64::Engine;
use serde_json::json;
use zeroize::Zeroizing;

use crate::crypto::hash::Hash;
use crate::crypto::iv::CipherSpec;
use crate::crypto::keys::{Passphrase, VolumeKey, random_bytes};
use crate::error::{Error, ErrorKind, Result};
use crate::luks::kdf::{self, Kdf, KdfType};
use crate::luks::keyslot::{self, STRIPES};
use crate::luks::{FormatOptions, Formatted, Segment};

use binary::{BIN_SIZE, BinaryHeader, HDR_SIZES};
use json::Metadata;

/// cryptsetup's default metadata (binary + JSON) size per copy.
pub const DEFAULT_METADATA_SIZE: u64 = 0x4000;
/// cryptsetup's default data offset.
pub const DEFAULT_DATA_OFFSET: u64 = 16 * 1024 * 1024;
/// Largest keyslots area cryptsetup accepts.
pub const MAX_KEYSLOTS_SIZE: u64 = 128 * 1024 * 1024;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Builds a complete LUKS2 header region (`data_offset` bytes) holding one keyslot for `passphrase`.
pub fn format(opts: &FormatOptions, key: &VolumeKey, passphrase: &Passphrase) -> Result<Formatted> {
    let key_len = key.len();
    let metadata_size = opts.metadata_size.unwrap_or(DEFAULT_METADATA_SIZE);
    if !HDR_SIZES.contains(&metadata_size) {
        return Err(Error::invalid(format!(
            "--luks2-metadata-size {metadata_size} must be one of 16k, 32k, 64k, 128k, 256k, 512k, 1m, 2m, 4m"
        )));
    }
    let area_size = (keyslot::material_len(key_len, STRIPES) as u64).div_ceil(4096) * 4096;
    let data_offset = opts.data_offset.unwrap_or(DEFAULT_DATA_OFFSET);
    let sector = u64::from(opts.sector_size);
    if !data_offset.is_multiple_of(sector) {
        return Err(Error::invalid(format!(
            "data offset {data_offset} is not a multiple of the sector size {sector}"
        )));
    }
    let keyslots_size = match opts.keyslots_size {
        Some(k) => k,
        None => {
            (data_offset.saturating_sub(2 * metadata_size)).min(MAX_KEYSLOTS_SIZE) / 4096 * 4096
        }
    };
    if keyslots_size % 4096 != 0 || keyslots_size > MAX_KEYSLOTS_SIZE {
        return Err(Error::invalid(format!(
            "--luks2-keyslots-size {keyslots_size} must be a multiple of 4096 and at most 128 MiB"
        )));
    }
    if keyslots_size < area_size || 2 * metadata_size + keyslots_size > data_offset {
        return Err(Error::invalid(format!(
            "data offset {data_offset} leaves no room for two {metadata_size}-byte metadata copies and a \
             {area_size}-byte keyslot"
        ))
        .hint(format!("use --offset of at least {} sectors", (2 * metadata_size + area_size).div_ceil(512))));
    }

    let cipher = CipherSpec::AES_XTS_PLAIN64.to_dm_string();
    let kdf = opts.keyslot_kdf(key_len)?;
    let slot_salt = random_bytes(32)?;
    let slot_key = kdf.derive(passphrase.expose(), &slot_salt, key_len)?;
    let material = keyslot::seal(
        key.expose(),
        &slot_key,
        opts.hash,
        STRIPES,
        CipherSpec::AES_XTS_PLAIN64,
    )?;

    let digest_iterations = kdf::digest_iterations(opts.hash, opts.cost.force_iterations.is_some());
    let digest_salt = random_bytes(32)?;
    let digest = keyslot::digest(
        opts.hash,
        key.expose(),
        &digest_salt,
        digest_iterations,
        opts.hash.output_len(),
    );

    let kdf_json = match kdf {
        Kdf::Pbkdf2 { hash, iterations } => {
            json!({"type": "pbkdf2", "hash": hash.name(), "iterations": iterations, "salt": b64(&slot_salt)})
        }
        Kdf::Argon2 {
            kind,
            time,
            memory_kib,
            parallel,
        } => {
            json!({"type": kind.name(), "time": time, "memory": memory_kib, "cpus": parallel, "salt": b64(&slot_salt)})
        }
    };
    let area_offset = 2 * metadata_size;
    let size = match opts.segment_size {
        Some(s) => s.to_string(),
        None => "dynamic".to_owned(),
    };
    let mut config = json!({"json_size": (metadata_size - 4096).to_string(), "keyslots_size": keyslots_size.to_string()});
    if opts.allow_discards {
        config["flags"] = json!(["allow-discards"]);
    }
    let meta = json!({
        "keyslots": {"0": {
            "type": "luks2",
            "key_size": key_len,
            "af": {"type": "luks1", "stripes": STRIPES, "hash": opts.hash.name()},
            "area": {"type": "raw", "offset": area_offset.to_string(), "size": area_size.to_string(),
                     "encryption": cipher, "key_size": key_len},
            "kdf": kdf_json,
        }},
        "tokens": {},
        "segments": {"0": {
            "type": "crypt", "offset": data_offset.to_string(), "size": size, "iv_tweak": "0",
            "encryption": cipher, "sector_size": opts.sector_size,
        }},
        "digests": {"0": {
            "type": "pbkdf2", "keyslots": ["0"], "segments": ["0"], "hash": opts.hash.name(),
            "iterations": digest_iterations, "salt": b64(&digest_salt), "digest": b64(&digest),
        }},
        "config": config,
    });
    let text = meta.to_string();
    let json_size = (metadata_size - 4096) as usize;
    if text.len() >= json_size {
        return Err(Error::invalid(format!(
            "LUKS2 metadata needs {} bytes, more than the {json_size}-byte JSON area",
            text.len() + 1
        ))
        .hint("use a larger --luks2-metadata-size"));
    }

    let uuid = opts
        .uuid
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    // Keyslot 0's material starts the keyslots area; the rest of it gets random-looking bytes (the
    // filler), as cryptsetup fills it with random ones, so that unused slots look used.
    let mut header = vec![0u8; area_offset as usize];
    header.extend_from_slice(&material);
    for (primary, at) in [(true, 0u64), (false, metadata_size)] {
        let mut salt = [0u8; 64];
        salt.copy_from_slice(&random_bytes(64)?);
        let bin = BinaryHeader {
            primary,
            hdr_size: metadata_size,
            seqid: 1,
            label: opts.label.clone(),
            checksum_alg: "sha256".into(),
            salt,
            uuid: uuid.clone(),
            subsystem: opts.subsystem.clone(),
            hdr_offset: at,
            csum: [0; 64],
        };
        let mut bin_bytes = bin.encode();
        let mut area = vec![0u8; json_size];
        area[..text.len()].copy_from_slice(text.as_bytes());
        let csum = binary::checksum(Hash::Sha256, &bin_bytes, &area);
        binary::set_checksum(&mut bin_bytes, &csum);
        let at = at as usize;
        header[at..at + BIN_SIZE].copy_from_slice(&bin_bytes);
        header[at + BIN_SIZE..at + BIN_SIZE + json_size].copy_from_slice(&area);
    }
    Ok(Formatted {
        header,
        filler_end: area_offset + keyslots_size,
        data_offset,
        uuid,
        keyslot_kdf: kdf,
    })
}

/// A LUKS2 header read from a file: the copy that was used, and its checked metadata.
#[derive(Debug, Clone)]
pub struct Luks2Header {
    /// The binary header of the copy in use.
    pub bin: BinaryHeader,
    /// The checked JSON metadata.
    pub meta: Metadata,
    /// Problems found in the other copy (shown to the user as warnings).
    pub warnings: Vec<String>,
    /// Header damage: a copy that is damaged or stale. The volume still opens (from the good copy),
    /// but `verify` fails until it is repaired.
    pub damage: Vec<String>,
}

/// One copy read and checked: its header and metadata.
fn read_copy(file: &File, path: &Path, at: u64, file_len: u64) -> Result<(BinaryHeader, Metadata)> {
    if at + BIN_SIZE as u64 > file_len {
        return Err(Error::format("file too short for a LUKS2 header").at(at));
    }
    let mut bin = [0u8; BIN_SIZE];
    file.read_exact_at(&mut bin, at)
        .map_err(|e| Error::io("read LUKS2 header", path, Some(at), e))?;
    let hdr = BinaryHeader::decode(&bin, at)?;
    if at + hdr.hdr_size > file_len {
        return Err(Error::corrupt(format!(
            "LUKS2 header of {} bytes runs past the end of the file",
            hdr.hdr_size
        ))
        .at(at));
    }
    let mut area = vec![0u8; (hdr.hdr_size - BIN_SIZE as u64) as usize];
    file.read_exact_at(&mut area, at + BIN_SIZE as u64)
        .map_err(|e| Error::io("read LUKS2 JSON area", path, Some(at + 4096), e))?;
    let hash = hdr.checksum_hash().map_err(|e| e.at(at + 72))?;
    let csum = binary::checksum(hash, &bin, &area);
    if !keyslot::digest_matches(&csum, &hdr.csum[..csum.len()]) {
        return Err(Error::corrupt("LUKS2 header checksum mismatch").at(at + 448));
    }
    let json_at = at + BIN_SIZE as u64;
    if area.first() != Some(&b'{') {
        return Err(Error::corrupt("LUKS2 JSON area does not start with '{'").at(json_at));
    }
    let end = area
        .iter()
        .position(|&b| b == 0)
        .ok_or_else(|| Error::corrupt("LUKS2 JSON area has no terminating NUL").at(json_at))?;
    if let Some(p) = area[end..].iter().position(|&b| b != 0) {
        return Err(
            Error::corrupt("LUKS2 JSON area has non-NUL bytes after the JSON text")
                .at(json_at + (end + p) as u64),
        );
    }
    let text = std::str::from_utf8(&area[..end])
        .map_err(|_| Error::corrupt("LUKS2 JSON area is not UTF-8").at(json_at))?;
    let meta = Metadata::parse(text, hdr.hdr_size, file_len).map_err(|e| e.at(json_at))?;
    Ok((hdr, meta))
}

impl Luks2Header {
    /// Reads both copies and keeps the valid one with the highest seqid (warning about the other).
    pub fn read(file: &File, path: &Path, file_len: u64) -> Result<Luks2Header> {
        let primary = read_copy(file, path, 0, file_len);
        let secondary_at: Vec<u64> = match &primary {
            Ok((h, _)) => vec![h.hdr_size],
            Err(_) => {
                // The primary may be damaged anywhere: look for the secondary at every allowed size.
                let mut bin = [0u8; BIN_SIZE];
                if file.read_exact_at(&mut bin, 0).is_ok() {
                    if let Ok(h) = BinaryHeader::decode(&bin, 0) {
                        vec![h.hdr_size]
                    } else {
                        HDR_SIZES.to_vec()
                    }
                } else {
                    HDR_SIZES.to_vec()
                }
            }
        };
        let mut secondary = Err(Error::corrupt("no secondary LUKS2 header found"));
        for at in secondary_at {
            let mut magic = [0u8; 6];
            if at + 6 > file_len
                || file.read_exact_at(&mut magic, at).is_err()
                || magic != binary::MAGIC_SECONDARY
            {
                if secondary.is_err() {
                    secondary = Err(Error::corrupt("secondary LUKS2 header has no magic").at(at));
                }
                continue;
            }
            secondary = read_copy(file, path, at, file_len);
            if secondary.is_ok() {
                break;
            }
        }
        let (bin, meta, damage) = match (primary, secondary) {
            (Ok(p), Ok(s)) => {
                let mut damage = Vec::new();
                if p.0.seqid != s.0.seqid {
                    damage.push(format!(
                        "the two LUKS2 header copies differ (seqid {} and {}); using the newer, the {} copy",
                        p.0.seqid,
                        s.0.seqid,
                        if s.0.seqid > p.0.seqid { "secondary" } else { "primary" }
                    ));
                }
                let (bin, meta) = if s.0.seqid > p.0.seqid { s } else { p };
                (bin, meta, damage)
            }
            (Ok((bin, meta)), Err(e)) => (
                bin,
                meta,
                vec![format!(
                    "secondary header copy is damaged, using the primary: {e}"
                )],
            ),
            (Err(e), Ok((bin, meta))) => {
                let at = bin.hdr_offset;
                (
                    bin,
                    meta,
                    vec![format!(
                        "primary header copy is damaged, using the secondary at {at:#x}: {e}"
                    )],
                )
            }
            (Err(e), Err(_)) => return Err(e.with_path(path)),
        };
        let mut warnings = damage.clone();
        warnings.extend(meta.warnings.iter().cloned());
        Ok(Luks2Header {
            bin,
            meta,
            warnings,
            damage,
        })
    }

    /// The payload segment. Only a single data segment of type `crypt` is supported; while a
    /// re-encryption is in progress (a mandatory requirement is set), the first crypt segment is
    /// returned for `dump`, and [`unlock`](Self::unlock) refuses.
    pub fn segment(&self) -> Result<Segment> {
        let data: Vec<&json::Segment> = self
            .meta
            .segments
            .iter()
            .filter(|s| !s.is_backup())
            .collect();
        let single = data.len() == 1 && data[0].kind == "crypt";
        let s = match self.meta.data_segment() {
            Some(s) if single || !self.meta.config.requirements.is_empty() => s,
            _ => {
                return Err(Error::unsupported(format!(
                    "LUKS2 header has {} data segment(s) of type {}; diskseal needs exactly one crypt segment",
                    data.len(),
                    data.iter().map(|s| s.kind.as_str()).collect::<Vec<_>>().join("+")
                ))
                .hint("an interrupted reencryption must be finished with cryptsetup first"));
            }
        };
        let key_bytes = self
            .meta
            .digests
            .iter()
            .find(|d| d.segments.contains(&s.id))
            .and_then(|d| d.keyslots.first())
            .and_then(|k| self.meta.keyslots.iter().find(|x| x.id == *k))
            .map(|k| k.key_size as usize)
            .unwrap_or(64);
        Ok(Segment {
            offset: s.offset,
            size: s.size,
            iv_tweak: s.iv_tweak,
            sector_size: s.sector_size,
            cipher: CipherSpec::parse(&s.encryption)
                .map_err(|e| Error::new(e.kind(), format!("segment 0: {}", e.message())))?,
            cipher_name: s.encryption.clone(),
            key_bytes,
        })
    }

    /// Refuses a header whose mandatory requirements diskseal does not implement (it can still be dumped).
    pub fn check_requirements(&self) -> Result<()> {
        let req = &self.meta.config.requirements;
        if req.is_empty() {
            return Ok(());
        }
        let list = req.join(", ");
        if req.iter().any(|r| r.starts_with("online-reencrypt")) {
            return Err(Error::unsupported(format!(
                "a LUKS2 re-encryption of this device is in progress or was interrupted \
                 (config.requirements.mandatory: {list}): part of the data may be under the old key and \
                 part under the new one, so diskseal cannot read it"
            ))
            .hint("finish it with `cryptsetup reencrypt --resume-only FILE` (or roll it back with \
                   cryptsetup), then run diskseal again"));
        }
        Err(Error::unsupported(format!(
            "LUKS2 config.requirements.mandatory lists {list}, which diskseal does not implement"
        ))
        .hint("finish or roll back the operation that set them with cryptsetup"))
    }

    /// Tries every usable keyslot (high priority first) with `passphrase`.
    pub fn unlock(
        &self,
        file: &File,
        path: &Path,
        passphrase: &Passphrase,
    ) -> Result<(VolumeKey, u32)> {
        self.check_requirements().map_err(|e| e.with_path(path))?;
        // Only keyslots whose digest covers the data segment hold its key; `priority: 0` ("ignore")
        // keyslots are skipped, as cryptsetup does when no keyslot is named.
        let mut slots: Vec<&json::Keyslot> = self
            .meta
            .keyslots
            .iter()
            .filter(|k| k.luks2.is_some() && k.priority != Some(0) && self.meta.is_bound(k.id))
            .collect();
        slots.sort_by_key(|k| std::cmp::Reverse(k.priority.unwrap_or(1)));
        let skipped: Vec<String> = self
            .meta
            .keyslots
            .iter()
            .filter(|k| k.luks2.is_some() && !slots.iter().any(|s| s.id == k.id))
            .map(|k| {
                let why = if self.meta.is_bound(k.id) {
                    "priority ignore"
                } else {
                    "unbound: its key is not the data key"
                };
                format!("{} ({why})", k.id)
            })
            .collect();
        let skipped_hint = if skipped.is_empty() {
            String::new()
        } else {
            format!("; keyslots not tried: {}", skipped.join(", "))
        };
        if slots.is_empty() {
            return Err(Error::new(
                ErrorKind::WrongKey,
                format!("the LUKS2 header has no usable keyslot{skipped_hint}"),
            )
            .with_path(path)
            .hint("cryptsetup says the same (\"No usable keyslot is available\")"));
        }
        for k in slots {
            if let Some(key) = self.try_keyslot(file, path, k, passphrase)? {
                return Ok((key, k.id));
            }
        }
        Err(Error::new(
            ErrorKind::WrongKey,
            format!("no keyslot opens with this passphrase{skipped_hint}"),
        )
        .with_path(path)
            .hint("check the key file: it is used verbatim, a trailing newline counts (see --strip-newline)"))
    }

    fn try_keyslot(
        &self,
        file: &File,
        path: &Path,
        k: &json::Keyslot,
        pass: &Passphrase,
    ) -> Result<Option<VolumeKey>> {
        let Some(s) = &k.luks2 else { return Ok(None) };
        let field = format!("keyslots.{}", k.id);
        let key_len = k.key_size as usize;
        if key_len != 32 && key_len != 64 {
            return Err(
                Error::unsupported(format!("{field}.key_size {key_len} is not 32 or 64"))
                    .with_path(path),
            );
        }
        let hash = |name: &str, f: &str| {
            Hash::parse(name).map_err(|e| {
                Error::new(e.kind(), format!("{field}.{f}: {}", e.message())).with_path(path)
            })
        };
        let af_hash = hash(&s.af_hash, "af.hash")?;
        let kdf = match s.kdf_type.as_str() {
            "pbkdf2" => Kdf::Pbkdf2 {
                hash: hash(s.kdf_hash.as_deref().unwrap_or(""), "kdf.hash")?,
                iterations: s.iterations.unwrap_or(0),
            },
            t => Kdf::Argon2 {
                kind: KdfType::parse(t)?,
                time: s.time.unwrap_or(0),
                memory_kib: s.memory.unwrap_or(0),
                parallel: s.cpus.unwrap_or(0),
            },
        };
        kdf.validate(&format!("{field}.kdf"))
            .map_err(|e| e.with_path(path))?;
        if s.salt.len() != 32 {
            return Err(Error::corrupt(format!(
                "{field}.kdf.salt has {} bytes, expected 32",
                s.salt.len()
            ))
            .with_path(path));
        }
        let cipher = CipherSpec::parse(&s.area_encryption).map_err(|e| {
            Error::new(
                e.kind(),
                format!("{field}.area.encryption: {}", e.message()),
            )
            .with_path(path)
        })?;
        if s.stripes == 0 {
            return Err(Error::corrupt(format!("{field}.af.stripes is zero")).with_path(path));
        }
        let len = keyslot::material_len(key_len, s.stripes);
        if len as u64 > s.area_size {
            return Err(Error::corrupt(format!(
                "{field}.area.size {} is smaller than the {len} bytes of key material",
                s.area_size
            ))
            .with_path(path));
        }
        let slot_key = kdf.derive(pass.expose(), &s.salt, s.area_key_size as usize)?;
        let mut material = Zeroizing::new(vec![0u8; len]);
        file.read_exact_at(&mut material, s.area_offset)
            .map_err(|e| Error::io("read keyslot", path, Some(s.area_offset), e))?;
        let candidate = keyslot::open(material, &slot_key, af_hash, s.stripes, key_len, cipher)?;
        if self
            .digest_for_keyslot(k.id, &candidate)
            .map_err(|e| e.with_path(path))?
        {
            return Ok(Some(VolumeKey::from_bytes(candidate)?));
        }
        Ok(None)
    }

    fn digest_for_keyslot(&self, id: u32, key: &[u8]) -> Result<bool> {
        let d = self
            .meta
            .digests
            .iter()
            .find(|d| d.keyslots.contains(&id))
            .ok_or_else(|| Error::corrupt(format!("keyslot {id} has no digest")))?;
        check_digest(d, key)
    }

    /// Checks a volume key against the digest of the payload segment.
    pub fn check_volume_key(&self, key: &VolumeKey) -> Result<bool> {
        self.check_requirements()?;
        let seg = self
            .meta
            .data_segment()
            .ok_or_else(|| Error::corrupt("the LUKS2 header has no crypt data segment"))?;
        let d = self
            .meta
            .digests
            .iter()
            .find(|d| d.segments.contains(&seg.id))
            .ok_or_else(|| Error::corrupt(format!("segment {} has no digest", seg.id)))?;
        check_digest(d, key.expose())
    }
}

fn check_digest(d: &json::Digest, key: &[u8]) -> Result<bool> {
    let field = format!("digests.{}", d.id);
    if d.kind != "pbkdf2" {
        return Err(Error::unsupported(format!(
            "{field}.type {:?} is not pbkdf2",
            d.kind
        )));
    }
    let hash = Hash::parse(&d.hash)
        .map_err(|e| Error::new(e.kind(), format!("{field}.hash: {}", e.message())))?;
    if d.salt.len() != 32 {
        return Err(Error::corrupt(format!(
            "{field}.salt has {} bytes, expected 32",
            d.salt.len()
        )));
    }
    if d.digest.len() != 20 && d.digest.len() != hash.output_len() {
        return Err(Error::corrupt(format!(
            "{field}.digest has {} bytes",
            d.digest.len()
        )));
    }
    if d.iterations < kdf::PBKDF2_MIN_ITERATIONS {
        return Err(Error::corrupt(format!(
            "{field}.iterations {} is below 1000",
            d.iterations
        )));
    }
    let computed = keyslot::digest(hash, key, &d.salt, d.iterations, d.digest.len());
    Ok(keyslot::digest_matches(&computed, &d.digest))
}
