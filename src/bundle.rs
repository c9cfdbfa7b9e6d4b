//! The air-gap hand-off bundle (`product.md` §1): a directory carried from the offline workstation to the
//! connected host, holding
//!
//! - the encrypted image, under its own file name;
//! - `manifest.json` ([`Manifest`]): profile, sizes, the sha256 of the image file, the dm-verity root
//!   hash of the plaintext virtual disk (schema 2; schema 1 had its SHA-256), the LUKS UUID and parameters (or, for `ibm-classic-vhd`, the VHD's id and key hash),
//!   and what the KMS must wrap; never a secret;
//! - `dek.age`: the key file's bytes sealed with the age format to the agent's X25519 recipient
//!   (readable by the `age`/`rage` command-line tools).
//!
//! [`create`] proves the key opens the image (by decrypting what the image allocates, which also gives
//! the plaintext's root hash) before anything is written, builds the bundle in a temporary directory beside the
//! destination and renames it into place only on success.
//!
//! [`describe`] and [`write_manifest`] make the same manifest for an image alone, without the sealed key
//! ([`ImageManifest`], `diskseal encrypt --manifest FILE`).

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::Ordering;

use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::crypto::keys::VolumeKey;
use crate::error::{Error, ErrorKind, Result};
use crate::image::detect::Detected;
use crate::luks::{Luks, LuksVersion};
use crate::ops::{self, Run, Unlock};
use crate::profile::Profile;

/// The manifest's file name inside a bundle.
pub const MANIFEST: &str = "manifest.json";
/// The sealed key's file name inside a bundle.
pub const SEALED_KEY: &str = "dek.age";
/// The manifest schema this build writes (and reads, with [`SCHEMA_V1`]).
pub const SCHEMA: &str = "diskseal-bundle/2";
/// The first schema, still read: its plaintext digest is the SHA-256 of the whole disk.
pub const SCHEMA_V1: &str = "diskseal-bundle/1";
/// The schema of an [`ImageManifest`].
pub const IMAGE_SCHEMA: &str = "diskseal-manifest/2";

/// `manifest.json`: everything the connected host needs to know about the image, and no secret.
/// `K` is the key entry: the sealed key of a bundle ([`KeyEntry`]), or only what the key is
/// ([`KeyInfo`]) in the manifest `diskseal encrypt --manifest` writes ([`ImageManifest`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest<K = KeyEntry> {
    /// [`SCHEMA`] in a bundle, [`IMAGE_SCHEMA`] alone.
    pub schema: String,
    /// The diskseal version that wrote the bundle.
    pub created_by: String,
    /// The output profile (how the key file became the keyslot passphrase).
    pub profile: String,
    /// The encrypted image.
    pub image: ImageEntry,
    /// The plaintext virtual disk inside the image.
    pub plaintext: PlaintextEntry,
    /// The LUKS header's parameters (absent for `ibm-classic-vhd`, which has no LUKS header).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub luks: Option<LuksEntry>,
    /// The vhd-util encryption of an `ibm-classic-vhd` image (absent for the LUKS profiles).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vhd_util: Option<VhdUtilEntry>,
    /// The source `encrypt` read, with every backing file (absent when the bundle or manifest was made
    /// from an encrypted image alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceEntry>,
    /// The sealed key and what the KMS must wrap.
    pub key: K,
}

/// The manifest of an encrypted image on its own (`diskseal encrypt --manifest FILE`): a bundle's
/// manifest without the sealed key.
pub type ImageManifest = Manifest<KeyInfo>;

/// What the key of an [`ImageManifest`] is; the key itself is not there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyInfo {
    /// Length of the key file in bytes.
    pub length: usize,
    /// What the key file is: "passphrase" or "raw-dek" (see [`KeyEntry::kind`]).
    pub kind: String,
    /// What a KMS must wrap (see [`KeyEntry::kms_plaintext`]).
    pub kms_plaintext: String,
}

/// The image file of a bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageEntry {
    /// File name inside the bundle (no directory part).
    pub file: String,
    /// Container format: "luks1" or "luks2" (a raw file with a LUKS header), "qcow2+luks1" (qcow2 with
    /// QEMU-native LUKS, the ibm-vpc profile) or "vhd-util" (a vhd-util encrypted dynamic VHD, the
    /// ibm-classic-vhd profile).
    pub format: String,
    /// Size of the image file in bytes.
    pub file_size: u64,
    /// Virtual size of the disk the image holds (the LUKS payload) in bytes.
    pub virtual_size: u64,
    /// SHA-256 of the image file, lowercase hex.
    pub sha256: String,
}

/// The plaintext virtual disk's digests: schema 2 has its dm-verity root hash (and the SHA-256 of the
/// whole disk only when asked for: it costs a pass over every byte); schema 1 has the SHA-256 only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlaintextEntry {
    /// The dm-verity root hash of the decrypted virtual disk (schema 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dm_verity: Option<VerityEntry>,
    /// SHA-256 of the decrypted virtual disk, lowercase hex (schema 1; schema 2 with
    /// `--plaintext-sha256`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// The dm-verity root hash of the plaintext, which
/// `veritysetup format --no-superblock --hash sha256 --data-block-size D --hash-block-size 4096
/// --salt S DISK HASHFILE` prints as its "Root hash" (S is `-` for an empty salt).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerityEntry {
    /// The root hash, lowercase hex.
    pub root_hash: String,
    /// The salt, lowercase hex ("" for none).
    pub salt: String,
    /// The hash algorithm: "sha256".
    pub hash: String,
    /// dm-verity hash format: 1 (veritysetup's default; the salt is hashed before each block).
    pub hash_type: u32,
    /// Data block size in bytes (4096, or 512 when 4096 does not divide the disk).
    pub data_block_size: u32,
    /// Hash block size in bytes: 4096.
    pub hash_block_size: u32,
}

impl VerityEntry {
    /// The entry for a digest [`ops::verify`] computed.
    pub fn of(v: &ops::VerityDigest) -> VerityEntry {
        VerityEntry {
            root_hash: v.root_hash.clone(),
            salt: v.salt.clone(),
            hash: "sha256".into(),
            hash_type: 1,
            data_block_size: v.data_block_size,
            hash_block_size: crate::crypto::verity::HASH_BLOCK as u32,
        }
    }

    /// The salt's bytes (checked hex).
    pub fn salt_bytes(&self) -> Result<Vec<u8>> {
        unhex(&self.salt).ok_or_else(|| {
            Error::format("manifest field plaintext.dm_verity.salt is not lowercase hex")
        })
    }
}

/// The bytes of lowercase hex `s` (`None` when it is not).
fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2)
        || !s
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

/// LUKS header parameters (public header data).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LuksEntry {
    /// 1 or 2.
    pub version: u8,
    /// The header UUID.
    pub uuid: String,
    /// Cipher string, e.g. "aes-xts-plain64".
    pub cipher: String,
    /// Volume key size in bits.
    pub key_bits: u32,
    /// Payload sector size.
    pub sector_size: u32,
    /// Payload offset in bytes.
    pub data_offset: u64,
}

/// vhd-util (blktap) encryption parameters of an `ibm-classic-vhd` image (public VHD metadata).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VhdUtilEntry {
    /// The VHD footer's unique id.
    pub uuid: String,
    /// Key size in bits (256: AES-128-XTS, 512: AES-256-XTS).
    pub key_bits: u32,
    /// The batmap key hash, SHA-256(nonce || DEK), lowercase hex.
    pub keyhash: String,
}

/// The source image `encrypt` read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceEntry {
    /// The source file as given on the command line.
    pub file: String,
    /// The backing files its data was read through, top down: a backing file nobody expected is seen
    /// here before the key leaves.
    pub backing_files: Vec<String>,
}

/// The sealed key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    /// File name of the sealed key ([`SEALED_KEY`]).
    pub file: String,
    /// Sealing scheme: "age-x25519".
    pub sealed_with: String,
    /// The age recipient the key was sealed to.
    pub recipient: String,
    /// Length of the key file in bytes.
    pub length: usize,
    /// What the key file is: "passphrase" (used verbatim) or "raw-dek" (passphrase = base64 of it).
    pub kind: String,
    /// What the KMS must wrap, as the KMS `plaintext` field: always "base64 of the key file" here, with
    /// the meaning spelled out (e.g. "base64 of the passphrase").
    pub kms_plaintext: String,
}

impl Manifest {
    /// Parses and checks a manifest: schema, file names without directories, hex digests, consistent sizes.
    pub fn parse(bytes: &[u8]) -> Result<Manifest> {
        let m: Manifest = serde_json::from_slice(bytes).map_err(|e| {
            Error::format(format!("manifest.json is not a valid bundle manifest: {e}"))
        })?;
        m.check()?;
        Ok(m)
    }

    /// The consistency checks of [`Manifest::parse`].
    pub fn check(&self) -> Result<()> {
        if self.schema != SCHEMA && self.schema != SCHEMA_V1 {
            return Err(Error::unsupported(format!(
                "manifest schema {:?} is not {SCHEMA:?} (nor {SCHEMA_V1:?})",
                self.schema
            )));
        }
        self.plaintext.check(self.schema == SCHEMA_V1)?;
        Profile::parse(&self.profile)?;
        for (field, name) in [
            ("image.file", &self.image.file),
            ("key.file", &self.key.file),
        ] {
            if name.is_empty()
                || name.contains('/')
                || name == "."
                || name == ".."
                || name == MANIFEST
            {
                return Err(Error::format(format!(
                    "manifest field {field} ({name:?}) must be a plain file name"
                )));
            }
        }
        check_sha256("image.sha256", &self.image.sha256)?;
        // A sparse qcow2 can be far smaller than its virtual disk, so only zero is refused.
        if self.image.virtual_size == 0 || self.image.file_size == 0 {
            return Err(Error::format(
                "manifest fields image.virtual_size and image.file_size must not be 0",
            ));
        }
        let vhd = Profile::parse(&self.profile)? == Profile::IbmClassicVhd;
        if vhd && (self.vhd_util.is_none() || self.luks.is_some()) {
            return Err(Error::format(
                "an ibm-classic-vhd manifest needs a vhd_util entry and no luks entry",
            ));
        }
        if !vhd && (self.luks.is_none() || self.vhd_util.is_some()) {
            return Err(Error::format(format!(
                "a {} manifest needs a luks entry and no vhd_util entry",
                self.profile
            )));
        }
        if self.key.sealed_with != "age-x25519" {
            return Err(Error::unsupported(format!(
                "manifest field key.sealed_with {:?} is not \"age-x25519\"",
                self.key.sealed_with
            )));
        }
        Ok(())
    }
}

/// Refuses a manifest field that is not a lowercase hex SHA-256.
fn check_sha256(field: &str, hex: &str) -> Result<()> {
    if hex.len() != 64 || unhex(hex).is_none() {
        return Err(Error::format(format!(
            "manifest field {field} is not a lowercase hex SHA-256"
        )));
    }
    Ok(())
}

impl PlaintextEntry {
    /// Schema 1 (`v1`): the SHA-256 and no dm-verity entry; schema 2: a dm-verity entry diskseal can
    /// check (sha256, format 1, 4096-byte hash blocks, 512- or 4096-byte data blocks, a salt of at most
    /// 256 bytes as veritysetup allows), and the SHA-256 if present.
    fn check(&self, v1: bool) -> Result<()> {
        match (&self.dm_verity, v1) {
            (Some(_), true) => {
                return Err(Error::format(
                    "a diskseal-bundle/1 manifest has no plaintext.dm_verity",
                ));
            }
            (None, false) => {
                return Err(Error::format(
                    "manifest field plaintext.dm_verity is missing",
                ));
            }
            (None, true) if self.sha256.is_none() => {
                return Err(Error::format("manifest field plaintext.sha256 is missing"));
            }
            _ => {}
        }
        if let Some(h) = &self.sha256 {
            check_sha256("plaintext.sha256", h)?;
        }
        if let Some(v) = &self.dm_verity {
            check_sha256("plaintext.dm_verity.root_hash", &v.root_hash)?;
            if v.salt_bytes()?.len() > 256 {
                return Err(Error::format(
                    "manifest field plaintext.dm_verity.salt is longer than 256 bytes",
                ));
            }
            if v.hash != "sha256"
                || v.hash_type != 1
                || v.hash_block_size != crate::crypto::verity::HASH_BLOCK as u32
                || !matches!(v.data_block_size, 512 | 4096)
            {
                return Err(Error::unsupported(format!(
                    "plaintext.dm_verity is {} format {} with {}-byte data and {}-byte hash blocks; \
                     diskseal checks sha256, format 1, 512- or 4096-byte data and 4096-byte hash blocks",
                    v.hash, v.hash_type, v.data_block_size, v.hash_block_size
                )));
            }
        }
        Ok(())
    }

    /// The entry for what [`ops::verify`] found.
    fn of(r: &ops::VerifyReport) -> PlaintextEntry {
        PlaintextEntry {
            dm_verity: r.verity.as_ref().map(VerityEntry::of),
            sha256: r.plaintext_sha256.clone(),
        }
    }
}

/// Options of [`create`].
#[derive(Debug, Clone)]
pub struct BundleOptions {
    /// How the key file becomes the keyslot passphrase.
    pub profile: Profile,
    /// The age X25519 recipient ("age1...").
    pub recipient: String,
    /// Replace an existing bundle directory.
    pub force: bool,
    /// The source `encrypt` read, recorded in the manifest.
    pub source: Option<SourceEntry>,
    /// Also record the SHA-256 of the whole plaintext (a pass over every byte of the virtual disk).
    pub plaintext_sha256: bool,
}

/// What [`create`] wrote.
#[derive(Debug, Clone)]
pub struct BundleReport {
    /// The bundle directory.
    pub dir: PathBuf,
    /// The manifest written.
    pub manifest: Manifest,
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses an age X25519 recipient, with an error that says what was expected.
pub fn parse_recipient(text: &str) -> Result<age::x25519::Recipient> {
    age::x25519::Recipient::from_str(text.trim()).map_err(|e| {
        Error::invalid(format!("{:?} is not an age X25519 recipient: {e}", text.trim()))
            .hint("ask the connected host for it: `diskseal-agent init` prints it (it starts with \"age1\")")
    })
}

/// Seals `secret` to `recipient` in the binary age format.
pub fn seal(recipient: &age::x25519::Recipient, secret: &[u8]) -> Result<Vec<u8>> {
    age::encrypt(recipient, secret)
        .map_err(|e| Error::new(ErrorKind::Io, format!("age encryption failed: {e}")))
}

/// A bundle directory under construction: removed unless committed.
#[derive(Debug)]
struct TempDir {
    path: PathBuf,
    done: bool,
    /// Dropped after the directory is removed.
    _live: crate::io::LiveOutput,
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

fn temp_dir_for(dest: &Path) -> Result<TempDir> {
    let name = dest
        .file_name()
        .ok_or_else(|| Error::invalid("bundle path has no directory name").with_path(dest))?
        .to_string_lossy()
        .into_owned();
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let mut live = Some(crate::io::LiveOutput::register());
    for attempt in 0..100 {
        let path = parent.join(format!(
            ".{name}.diskseal-{}-{attempt}.tmp",
            std::process::id()
        ));
        match fs::create_dir(&path) {
            Ok(()) => {
                return Ok(TempDir {
                    path,
                    done: false,
                    _live: live.take().unwrap_or_else(crate::io::LiveOutput::register),
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::io("create bundle directory", &path, None, e)),
        }
    }
    Err(Error::invalid("cannot find a free temporary name for the bundle").with_path(dest))
}

fn create_file(path: &Path, mode: u32) -> Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| Error::io("create", path, None, e))
}

/// The length and SHA-256 of `src`; with `dst`, also copies it there (a new file). Progress restarts
/// with the file's length as its total.
fn hash_file(src: &Path, dst: Option<&Path>, run: &Run<'_>) -> Result<(u64, String)> {
    let mut input = File::open(src).map_err(|e| Error::io("open image", src, None, e))?;
    if let Ok(m) = input.metadata() {
        run.progress.restart();
        run.total.store(m.len().max(1), Ordering::Relaxed);
    }
    let mut output = dst
        .map(|d| create_file(d, 0o644).map(|f| (f, d)))
        .transpose()?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        if run.cancel.load(Ordering::SeqCst) {
            return Err(Error::new(ErrorKind::Interrupted, "interrupted"));
        }
        let n = input
            .read(&mut buf)
            .map_err(|e| Error::io("read", src, Some(total), e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        crate::pipeline::Pipeline::advance(run.progress, n as u64);
        if let Some((f, d)) = &mut output {
            f.write_all(&buf[..n])
                .map_err(|e| Error::io("write", d, Some(total), e))?;
        }
        total += n as u64;
    }
    if let Some((f, d)) = &output {
        f.sync_all().map_err(|e| Error::io("flush", d, None, e))?;
    }
    Ok((total, hex(&hasher.finalize())))
}

/// What the KMS must wrap for `profile`, and what the key file is.
fn key_meaning(profile: Profile) -> (&'static str, &'static str) {
    if profile == Profile::IbmClassicVhd {
        (
            "raw-dek",
            "base64 of the raw DEK (the key file); vhd-util uses the DEK itself as the AES-XTS key",
        )
    } else if profile.key_file_is_dek() {
        (
            "raw-dek",
            "base64 of the raw DEK (the key file); the LUKS passphrase is that same base64 text",
        )
    } else {
        (
            "passphrase",
            "base64 of the passphrase (the key file, verbatim, no newline added)",
        )
    }
}

/// Builds the bundle `dir` from the LUKS image `image` and the key file bytes `key` (the same bytes that
/// were given to `diskseal encrypt --key-file`).
pub fn create(
    image: &Path,
    key: &Zeroizing<Vec<u8>>,
    dir: &Path,
    opts: &BundleOptions,
    run: &Run<'_>,
) -> Result<BundleReport> {
    let recipient = parse_recipient(&opts.recipient)?;
    if !opts.force && fs::symlink_metadata(dir).is_ok() {
        return Err(Error::invalid("bundle directory already exists")
            .with_path(dir)
            .hint("pass --force to replace it"));
    }
    let file_name = file_name(image)?;
    if file_name == MANIFEST || file_name == SEALED_KEY {
        return Err(
            Error::invalid(format!("the image may not be called {file_name}")).with_path(image),
        );
    }
    let (header, format, report) = inspect(image, key, opts.profile, opts.plaintext_sha256, run)?;

    let tmp = temp_dir_for(dir)?;
    let (file_size, image_sha) = hash_file(image, Some(&tmp.path.join(&file_name)), run)?;
    let sealed = seal(&recipient, key)?;
    let sealed_path = tmp.path.join(SEALED_KEY);
    let mut f = create_file(&sealed_path, 0o600)?;
    f.write_all(&sealed)
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::io("write", &sealed_path, None, e))?;

    let (kind, kms_plaintext) = key_meaning(opts.profile);
    let manifest = Manifest {
        schema: SCHEMA.into(),
        created_by: created_by(),
        profile: opts.profile.name().into(),
        image: ImageEntry {
            file: file_name,
            format,
            file_size,
            virtual_size: report.payload_len,
            sha256: image_sha,
        },
        plaintext: PlaintextEntry::of(&report),
        luks: header.luks_entry(),
        source: opts.source.clone(),
        vhd_util: header.vhd_util_entry(),
        key: KeyEntry {
            file: SEALED_KEY.into(),
            sealed_with: "age-x25519".into(),
            recipient: recipient.to_string(),
            length: key.len(),
            kind: kind.into(),
            kms_plaintext: kms_plaintext.into(),
        },
    };
    manifest.check()?;
    let text = serde_json::to_string_pretty(&manifest)
        .map_err(|e| Error::invalid(format!("manifest: {e}")))?;
    let manifest_path = tmp.path.join(MANIFEST);
    let mut f = create_file(&manifest_path, 0o644)?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.write_all(b"\n"))
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::io("write", &manifest_path, None, e))?;
    commit(tmp, dir, opts.force)?;
    Ok(BundleReport {
        dir: dir.to_owned(),
        manifest,
    })
}

/// Unlocks `image` with the key file bytes `key` as `profile` uses them (which proves it is the right
/// key) and hashes the plaintext on the way (its dm-verity root hash with no salt; with `sha256` its
/// SHA-256 too): (the header entry, the container's name, the report).
fn inspect(
    image: &Path,
    key: &Zeroizing<Vec<u8>>,
    profile: Profile,
    sha256: bool,
    run: &Run<'_>,
) -> Result<(Header, String, ops::VerifyReport)> {
    let (header, format, unlock) = if profile == Profile::IbmClassicVhd {
        let (img, batmap) = crate::image::vhd::classic::read_batmap(image)?;
        let vk = VolumeKey::from_bytes(Zeroizing::new(key.to_vec())).map_err(|e| {
            e.hint("the ibm-classic-vhd key file is the raw DEK given to `diskseal encrypt`")
        })?;
        let entry = VhdUtilEntry {
            uuid: uuid::Uuid::from_bytes(img.footer().raw.unique_id).to_string(),
            key_bits: (key.len() * 8) as u32,
            keyhash: hex(&batmap.header.keyhash.hash),
        };
        (
            Header::VhdUtil(entry),
            "vhd-util".to_owned(),
            Unlock::ClassicVhd(vk),
        )
    } else {
        let (luks, format) = read_header(image)?;
        let passphrase = profile.passphrase(Zeroizing::new(key.to_vec()))?;
        (
            Header::Luks(Box::new(luks)),
            format,
            Unlock::Passphrase(passphrase),
        )
    };
    // Unlocking with the key proves it is the right one, and hashes the plaintext on the way.
    let digests = ops::Digests {
        verity_salt: Some(Vec::new()),
        sha256,
    };
    let report = ops::verify(image, unlock, None, &digests, run).map_err(|e| {
        if e.kind() == ErrorKind::WrongKey {
            e.hint(format!(
                "the key file must be the one given to `diskseal encrypt --profile {}`",
                profile.name()
            ))
        } else {
            e
        }
    })?;
    Ok((header, format, report))
}

/// Describes the encrypted image `image` (the output of `diskseal encrypt` with the key file bytes `key`
/// and `profile`): unlocks it and hashes its plaintext (with `sha256`, also its SHA-256), hashes the
/// file, and fills an [`ImageManifest`].
pub fn describe(
    image: &Path,
    key: &Zeroizing<Vec<u8>>,
    profile: Profile,
    sha256: bool,
    run: &Run<'_>,
) -> Result<ImageManifest> {
    let file = file_name(image)?;
    let (header, format, report) = inspect(image, key, profile, sha256, run)?;
    let (file_size, sha256) = hash_file(image, None, run)?;
    let (kind, kms_plaintext) = key_meaning(profile);
    Ok(Manifest {
        schema: IMAGE_SCHEMA.into(),
        created_by: created_by(),
        profile: profile.name().into(),
        image: ImageEntry {
            file,
            format,
            file_size,
            virtual_size: report.payload_len,
            sha256,
        },
        plaintext: PlaintextEntry::of(&report),
        source: None,
        luks: header.luks_entry(),
        vhd_util: header.vhd_util_entry(),
        key: KeyInfo {
            length: key.len(),
            kind: kind.into(),
            kms_plaintext: kms_plaintext.into(),
        },
    })
}

/// Writes `manifest` as pretty JSON to `path` (a temporary file renamed on success; an existing file is
/// replaced only with `force`).
pub fn write_manifest(path: &Path, manifest: &ImageManifest, force: bool) -> Result<()> {
    let mut text = serde_json::to_string_pretty(manifest)
        .map_err(|e| Error::invalid(format!("manifest: {e}")))?;
    text.push('\n');
    let out = crate::io::OutputFile::create(path, force)?;
    out.write_at(text.as_bytes(), 0)?;
    out.commit(0o644)
}

fn created_by() -> String {
    format!("diskseal {}", env!("CARGO_PKG_VERSION"))
}

/// The image's file name, which a manifest records.
fn file_name(image: &Path) -> Result<String> {
    Ok(image
        .file_name()
        .ok_or_else(|| Error::invalid("image path has no file name").with_path(image))?
        .to_str()
        .ok_or_else(|| Error::invalid("image file name is not UTF-8").with_path(image))?
        .to_owned())
}

/// What identifies the image's encryption in the manifest.
enum Header {
    Luks(Box<Luks>),
    VhdUtil(VhdUtilEntry),
}

impl Header {
    fn luks_entry(&self) -> Option<LuksEntry> {
        let Header::Luks(luks) = self else {
            return None;
        };
        Some(LuksEntry {
            version: match luks.version() {
                LuksVersion::Luks1 => 1,
                LuksVersion::Luks2 => 2,
            },
            uuid: luks.uuid().into(),
            cipher: luks.segment.cipher_name.clone(),
            key_bits: (luks.segment.key_bytes * 8) as u32,
            sector_size: luks.segment.sector_size,
            data_offset: luks.segment.offset,
        })
    }

    fn vhd_util_entry(&self) -> Option<VhdUtilEntry> {
        match self {
            Header::VhdUtil(v) => Some(v.clone()),
            Header::Luks(_) => None,
        }
    }
}

/// The LUKS header of a LUKS file or of a qcow2 with QEMU-native LUKS, and the container's name.
fn read_header(image: &Path) -> Result<(Luks, String)> {
    let f = File::open(image).map_err(|e| Error::io("open image", image, None, e))?;
    let len = f
        .metadata()
        .map_err(|e| Error::io("stat", image, None, e))?
        .len();
    let found = crate::image::detect::detect(&f, len);
    if found == Detected::Qcow2 || found == Detected::Qcow2Luks {
        let q =
            crate::image::qcow2::Qcow2Image::open(f, image, &mut crate::image::Chain::default())?;
        let Some((h, _)) = q.luks_header()? else {
            return Err(Error::unsupported("the qcow2 image is not encrypted")
                .with_path(image)
                .hint("bundle the output of `diskseal encrypt`"));
        };
        return Ok((Luks::embedded(h, len)?, "qcow2+luks1".into()));
    }
    if !matches!(found, Detected::Luks(_) | Detected::VpcLuks) {
        return Err(Error::unsupported(format!(
            "the image is a {}, not a LUKS file nor a qcow2 with LUKS encryption",
            found.name()
        ))
        .with_path(image)
        .hint("bundle the output of `diskseal encrypt`"));
    }
    let l = crate::image::luks::open(&f, image)?;
    let name = l.version().name().to_owned();
    Ok((l, name))
}

fn commit(mut tmp: TempDir, dir: &Path, force: bool) -> Result<()> {
    if fs::symlink_metadata(dir).is_ok() {
        if !force {
            return Err(Error::invalid("bundle directory already exists")
                .with_path(dir)
                .hint("pass --force to replace it"));
        }
        let meta = fs::symlink_metadata(dir).map_err(|e| Error::io("stat", dir, None, e))?;
        let removed = if meta.is_dir() {
            fs::remove_dir_all(dir)
        } else {
            fs::remove_file(dir)
        };
        removed.map_err(|e| Error::io("remove old bundle", dir, None, e))?;
    }
    fs::rename(&tmp.path, dir).map_err(|e| Error::io("rename bundle into", dir, None, e))?;
    tmp.done = true;
    Ok(())
}

/// The base64 text the KMS `plaintext` field carries for a key file (`kms_plaintext` in the manifest).
pub fn kms_plaintext(key: &[u8]) -> Zeroizing<String> {
    Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(key))
}

/// The state behind a [`Run`] for callers without a progress display or Ctrl-C handler (tests, the agent).
#[derive(Debug, Default)]
pub struct QuietRun {
    cancel: std::sync::atomic::AtomicBool,
    progress: crate::pipeline::Progress,
    total: std::sync::atomic::AtomicU64,
}

impl QuietRun {
    /// A [`Run`] borrowing this state, on all cores.
    pub fn run(&self) -> Run<'_> {
        Run {
            threads: None,
            cancel: &self.cancel,
            progress: &self.progress,
            total: &self.total,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            schema: SCHEMA.into(),
            created_by: "diskseal test".into(),
            profile: "luks2".into(),
            image: ImageEntry {
                file: "d.luks".into(),
                format: "luks2".into(),
                file_size: 100,
                virtual_size: 50,
                sha256: "a".repeat(64),
            },
            plaintext: PlaintextEntry {
                dm_verity: Some(VerityEntry {
                    root_hash: "c".repeat(64),
                    salt: String::new(),
                    hash: "sha256".into(),
                    hash_type: 1,
                    data_block_size: 4096,
                    hash_block_size: 4096,
                }),
                sha256: None,
            },
            source: None,
            luks: Some(LuksEntry {
                version: 2,
                uuid: "u".into(),
                cipher: "aes-xts-plain64".into(),
                key_bits: 512,
                sector_size: 4096,
                data_offset: 16 << 20,
            }),
            vhd_util: None,
            key: KeyEntry {
                file: SEALED_KEY.into(),
                sealed_with: "age-x25519".into(),
                recipient: "age1x".into(),
                length: 11,
                kind: "passphrase".into(),
                kms_plaintext: "base64 of the passphrase".into(),
            },
        }
    }

    #[test]
    fn manifest_round_trips_and_is_checked() {
        let m = sample();
        let text = serde_json::to_vec(&m).unwrap();
        assert_eq!(Manifest::parse(&text).unwrap(), m);
        let mut bad = m.clone();
        bad.image.file = "../etc/passwd".into();
        assert!(bad.check().unwrap_err().message().contains("image.file"));
        let mut bad = m.clone();
        bad.image.sha256 = "xyz".into();
        assert!(bad.check().unwrap_err().message().contains("image.sha256"));
        // Schema 1 (SHA-256 of the plaintext) is still read; each schema has its own digest.
        let mut v1 = m.clone();
        v1.schema = SCHEMA_V1.into();
        v1.plaintext = PlaintextEntry {
            dm_verity: None,
            sha256: Some("b".repeat(64)),
        };
        v1.check().unwrap();
        let mut bad = v1.clone();
        bad.plaintext.sha256 = None;
        assert!(
            bad.check()
                .unwrap_err()
                .message()
                .contains("plaintext.sha256")
        );
        let mut bad = m.clone();
        bad.plaintext.dm_verity = None;
        assert!(bad.check().unwrap_err().message().contains("dm_verity"));
        let mut bad = m.clone();
        if let Some(v) = &mut bad.plaintext.dm_verity {
            v.salt = "abc".into();
        }
        assert!(bad.check().unwrap_err().message().contains("salt"));
        let mut bad = m.clone();
        if let Some(v) = &mut bad.plaintext.dm_verity {
            v.data_block_size = 1024;
        }
        assert!(bad.check().unwrap_err().message().contains("data"));
        let mut v: serde_json::Value = serde_json::from_slice(&text).unwrap();
        v["surprise"] = serde_json::json!(1);
        let e = Manifest::parse(v.to_string().as_bytes()).unwrap_err();
        assert!(e.message().contains("surprise"), "{}", e.message());
    }

    #[test]
    fn sealed_key_opens_with_the_identity() {
        let id = age::x25519::Identity::generate();
        let r = parse_recipient(&id.to_public().to_string()).unwrap();
        let sealed = seal(&r, b"secret pass").unwrap();
        assert_eq!(age::decrypt(&id, &sealed).unwrap(), b"secret pass");
        assert!(parse_recipient("age1nope").is_err());
    }
}
