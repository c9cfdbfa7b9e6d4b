//! `bundle verify`: the manifest parses and is consistent, the image is there with the recorded size and
//! SHA-256 (compared in constant time), and the sealed key opens with the agent's identity and has a
//! size the profile allows.

use std::io::Read;
use std::path::{Path, PathBuf};

use diskseal::bundle::{MANIFEST, Manifest, hex};
use diskseal::crypto::keys::VolumeKey;
use diskseal::ops::Unlock;
use diskseal::profile::Profile;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::config::Layers;
use crate::error::{Error, Result};
use crate::secret::SecretBytes;

/// Largest manifest or sealed key read (both are small).
const MAX_SMALL_FILE: u64 = 1 << 20;

/// A verified bundle with its unsealed key.
#[derive(Debug)]
pub struct Verified {
    /// The bundle directory.
    pub dir: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
    /// The key file's bytes (what the KMS wraps, base64-encoded).
    pub key: SecretBytes,
}

fn bad(dir: &Path, message: impl Into<String>) -> Error {
    Error::Bundle {
        path: dir.to_owned(),
        message: message.into(),
    }
}

fn read_small(dir: &Path, name: &str) -> Result<Vec<u8>> {
    let path = dir.join(name);
    let f = std::fs::File::open(&path).map_err(|e| bad(dir, format!("cannot open {name}: {e}")))?;
    let mut buf = Vec::new();
    f.take(MAX_SMALL_FILE + 1)
        .read_to_end(&mut buf)
        .map_err(|e| Error::io("read", &path, e))?;
    if buf.len() as u64 > MAX_SMALL_FILE {
        return Err(bad(dir, format!("{name} is larger than 1 MiB")));
    }
    Ok(buf)
}

/// SHA-256 of a file, streaming; the bytes read count on `progress`.
pub fn sha256_file(
    path: &Path,
    progress: &diskseal::pipeline::Progress,
) -> Result<(u64, [u8; 32])> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io("open", path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let got = f.read(&mut buf).map_err(|e| Error::io("read", path, e))?;
        if got == 0 {
            break;
        }
        h.update(&buf[..got]);
        diskseal::pipeline::Pipeline::advance(progress, got as u64);
        n += got as u64;
    }
    Ok((n, h.finalize().into()))
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if s.len() != 64 {
        return None;
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Verifies the bundle `dir` and unseals its key with `identities` (with `show`, a progress line on
/// stderr every 10 s while the image is hashed).
pub fn verify(dir: &Path, identities: &[age::x25519::Identity], show: bool) -> Result<Verified> {
    if !dir.is_dir() {
        return Err(bad(dir, "not a directory"));
    }
    let manifest = Manifest::parse(&read_small(dir, MANIFEST)?)
        .map_err(|e| bad(dir, e.message().to_owned()))?;
    let image = dir.join(&manifest.image.file);
    let meta = std::fs::metadata(&image)
        .map_err(|e| bad(dir, format!("image {}: {e}", manifest.image.file)))?;
    if meta.len() != manifest.image.file_size {
        return Err(bad(
            dir,
            format!(
                "image {} has {} bytes, the manifest says {} (truncated or replaced?)",
                manifest.image.file,
                meta.len(),
                manifest.image.file_size
            ),
        ));
    }
    let q = diskseal::bundle::QuietRun::default();
    let (_, digest) = crate::progress::with_lines("bundle verify", &q, show, |run| {
        run.total
            .store(meta.len().max(1), std::sync::atomic::Ordering::Relaxed);
        sha256_file(&image, run.progress)
    })?;
    let expected = unhex(&manifest.image.sha256)
        .ok_or_else(|| bad(dir, "manifest image.sha256 is not hex"))?;
    if !bool::from(digest.ct_eq(&expected)) {
        return Err(bad(
            dir,
            format!(
                "image {} sha256 {} does not match the manifest's {}",
                manifest.image.file,
                hex(&digest),
                manifest.image.sha256
            ),
        ));
    }
    let sealed = read_small(dir, &manifest.key.file)?;
    let key = crate::identity::unseal(identities, &sealed, &dir.join(&manifest.key.file))?;
    if key.expose().len() != manifest.key.length {
        return Err(bad(
            dir,
            format!(
                "the sealed key has {} bytes, the manifest says {}",
                key.expose().len(),
                manifest.key.length
            ),
        ));
    }
    let profile = Profile::parse(&manifest.profile)?;
    unlock_with(profile, &key).map_err(|e| bad(dir, format!("sealed key: {}", e.message())))?;
    Ok(Verified {
        dir: dir.to_owned(),
        manifest,
        key,
    })
}

/// The deep check: unlocks the image with the unsealed key, decrypts what it allocates and compares every
/// plaintext digest the manifest records with its own (in constant time): the dm-verity root hash
/// (schema 2, a KDF plus a read of the allocated data) and the SHA-256 of the whole disk (schema 1, and
/// schema 2 written with `--plaintext-sha256`: a read of every byte of the virtual size). The error
/// names each digest that does not match.
/// With `show`, a progress line goes to stderr every 10 s.
pub fn verify_plaintext(v: &Verified, show: bool) -> Result<()> {
    let profile = Profile::parse(&v.manifest.profile)?;
    let unlock = unlock_with(profile, &v.key)?;
    let image = v.dir.join(&v.manifest.image.file);
    let plain = &v.manifest.plaintext;
    let digests = diskseal::ops::Digests {
        verity_salt: match &plain.dm_verity {
            Some(d) => Some(
                d.salt_bytes()
                    .map_err(|e| bad(&v.dir, e.message().to_owned()))?,
            ),
            None => None,
        },
        sha256: plain.sha256.is_some(),
    };
    let q = diskseal::bundle::QuietRun::default();
    let r = crate::progress::with_lines("deep verify", &q, show, |run| {
        diskseal::ops::verify(&image, unlock, None, &digests, run)
    })
    .map_err(|e| {
        if e.kind() == diskseal::ErrorKind::WrongKey {
            bad(
                &v.dir,
                format!(
                    "the sealed key does not open {}: {}",
                    v.manifest.image.file,
                    e.message()
                ),
            )
        } else {
            Error::Diskseal(e)
        }
    })?;
    // Every digest the manifest records is checked; the error names each one that differs.
    let mut checks = Vec::new();
    if let Some(d) = &plain.dm_verity {
        checks.push((
            "plaintext dm-verity root hash",
            r.verity.as_ref().map_or("", |v| v.root_hash.as_str()),
            d.root_hash.as_str(),
        ));
    }
    if let Some(want) = &plain.sha256 {
        checks.push((
            "plaintext sha256",
            r.plaintext_sha256.as_deref().unwrap_or_default(),
            want.as_str(),
        ));
    }
    if checks.is_empty() {
        return Err(bad(&v.dir, "the manifest has no plaintext digest"));
    }
    let failed: Vec<String> = checks
        .into_iter()
        .filter(|(_, found, expected)| {
            !unhex(found)
                .zip(unhex(expected))
                .is_some_and(|(a, b)| bool::from(a.ct_eq(&b)))
        })
        .map(|(what, found, expected)| {
            format!("{what} {found} does not match the manifest's {expected}")
        })
        .collect();
    if !failed.is_empty() {
        return Err(bad(&v.dir, failed.join("; ")));
    }
    Ok(())
}

/// How the key file opens an image of `profile`: the keyslot passphrase, or for `ibm-classic-vhd` the raw
/// DEK itself (32 or 64 bytes).
fn unlock_with(profile: Profile, key: &SecretBytes) -> diskseal::Result<Unlock> {
    let bytes = Zeroizing::new(key.expose().to_vec());
    if profile == Profile::IbmClassicVhd {
        return Ok(Unlock::ClassicVhd(VolumeKey::from_bytes(bytes)?));
    }
    Ok(Unlock::Passphrase(profile.passphrase(bytes)?))
}
/// [`verify`] (and with `deep` [`verify_plaintext`], with progress lines when `show`) with the identity
/// `l` names, logged to `l`'s audit log.
pub fn verify_logged(l: &Layers, bundle: &Path, deep: bool, show: bool) -> Result<Verified> {
    let r = crate::identity::load(&l.identity())
        .and_then(|ids| verify(bundle, &ids, show))
        .and_then(|v| {
            if deep {
                verify_plaintext(&v, show)?;
            }
            Ok(v)
        });
    let (ok, failure) = match &r {
        Ok(_) => (true, None),
        Err(e) => (false, Some(e.to_string())),
    };
    crate::audit::log(
        l,
        crate::audit::Event {
            action: "diskseal.bundle.verify".into(),
            outcome: crate::audit::Outcome::of(ok),
            credential: "age-identity".into(),
            reason_code: if ok { 200 } else { 400 },
            failure,
            target_id: bundle.display().to_string(),
            target_type: "diskseal/bundle".into(),
            image_sha256: r.as_ref().ok().map(|v| v.manifest.image.sha256.clone()),
            details: serde_json::json!({"deep": deep}),
            ..crate::audit::Event::default()
        },
    )?;
    r
}
