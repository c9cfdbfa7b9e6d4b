//! The operations behind the commands — encrypt, decrypt, verify — as library calls taking validated
//! options ("high args"); the CLI only parses, prompts and prints.

use std::fs::File;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::crypto::iv::luks_sector;
use crate::crypto::xts::Xts;
use crate::error::{Error, ErrorKind, Result};
use crate::image::{self, ImageFormat};
use crate::io::{OutputFile, read_exact_at, same_file};
use crate::luks::kdf::Kdf;
use crate::luks::keys::{Passphrase, VolumeKey};
use crate::luks::{self, FormatOptions, Luks, LuksVersion};
use crate::pipeline::{DEFAULT_CHUNK, Pipeline, Progress};

/// How a job is run: worker count, cancellation flag, progress counter.
#[derive(Debug)]
pub struct Run<'a> {
    /// Worker threads (all cores when `None`).
    pub threads: Option<usize>,
    /// Set to stop early (Ctrl-C); the output is then removed.
    pub cancel: &'a AtomicBool,
    /// Bytes done, read by the caller's progress display.
    pub progress: &'a Progress,
    /// Total bytes of the data phase, set once the header work is done.
    pub total: &'a std::sync::atomic::AtomicU64,
}

/// Options of [`encrypt`].
#[derive(Debug, Clone)]
pub struct EncryptOptions {
    /// The LUKS header to write (version, KDF, hash, label, offsets...). Its `sector_size` is ignored in
    /// favour of [`EncryptOptions::sector_size`].
    pub luks: FormatOptions,
    /// Volume key size when one is generated (32 or 64).
    pub key_bytes: usize,
    /// Payload sector size; `None` picks 4096 when the payload allows it (LUKS2), else 512.
    pub sector_size: Option<u32>,
    /// Pad a payload that is not a whole number of sectors with zeros instead of failing.
    pub pad: bool,
    /// Force the input format.
    pub input_format: Option<ImageFormat>,
    /// Replace an existing output.
    pub force: bool,
}

/// What [`encrypt`] did.
#[derive(Debug, Clone)]
pub struct EncryptReport {
    /// LUKS version written.
    pub version: LuksVersion,
    /// UUID written.
    pub uuid: String,
    /// Input format.
    pub input_format: &'static str,
    /// Source virtual size.
    pub virtual_size: u64,
    /// Zero bytes added by `--pad`.
    pub padded: u64,
    /// Payload offset.
    pub data_offset: u64,
    /// Payload sector size.
    pub sector_size: u32,
    /// Keyslot KDF and cost.
    pub kdf: Kdf,
    /// Output file size.
    pub output_size: u64,
    /// Time spent on the data.
    pub elapsed: Duration,
    /// Worker threads used.
    pub threads: usize,
}

fn refuse_same(src: &Path, dst: &Path) -> Result<()> {
    if same_file(src, dst) {
        return Err(Error::invalid("input and output are the same file")
            .with_path(dst)
            .hint("write the result to a new file"));
    }
    Ok(())
}

/// Encrypts the disk image `src` into a new LUKS file `dst`.
pub fn encrypt(
    src: &Path,
    dst: &Path,
    opts: &EncryptOptions,
    passphrase: &Passphrase,
    volume_key: Option<VolumeKey>,
    run: &Run<'_>,
) -> Result<EncryptReport> {
    refuse_same(src, dst)?;
    if !opts.force && std::fs::symlink_metadata(dst).is_ok() {
        return Err(Error::invalid("output file already exists").with_path(dst).hint("pass --force to overwrite it"));
    }
    let image = image::open(src, opts.input_format)?;
    let vsize = image.virtual_size();
    let version = opts.luks.version;
    let sector = match opts.sector_size {
        Some(s) => s,
        None if version == LuksVersion::Luks2 && vsize % 4096 == 0 => 4096,
        None => 512,
    };
    if version == LuksVersion::Luks1 && sector != 512 {
        return Err(Error::invalid("LUKS1 supports only 512-byte sectors").hint("use --type luks2 for 4096-byte sectors"));
    }
    if !matches!(sector, 512 | 1024 | 2048 | 4096) {
        return Err(Error::invalid(format!("--sector-size {sector} must be 512, 1024, 2048 or 4096")));
    }
    let payload_len = vsize.div_ceil(u64::from(sector)) * u64::from(sector);
    if payload_len != vsize && !opts.pad {
        return Err(Error::invalid(format!(
            "input size {vsize} is not a multiple of the {sector}-byte sector size"
        ))
        .with_path(src)
        .hint("pass --pad to pad the payload with zeros, or choose a smaller --sector-size"));
    }
    if vsize == 0 {
        return Err(Error::invalid("input is empty").with_path(src));
    }
    let key = match volume_key {
        Some(k) => k,
        None => VolumeKey::generate(opts.key_bytes)?,
    };
    let mut fmt = opts.luks.clone();
    fmt.sector_size = sector;
    let formatted = luks::format(&fmt, &key, passphrase)?;
    let out = OutputFile::create(dst, opts.force)?;
    let data_offset = formatted.data_offset;
    out.write_at(&formatted.header, 0)?;
    let output_size = data_offset + payload_len;

    let xts = Xts::new(key.expose())?;
    let pipeline = Pipeline::new(run.threads, DEFAULT_CHUNK)?;
    run.total.store(payload_len, std::sync::atomic::Ordering::Relaxed);
    let start = Instant::now();
    let unit = sector as usize;
    pipeline.run(payload_len, run.cancel, run.progress, |buf, off| {
        let real = vsize.saturating_sub(off).min(buf.len() as u64) as usize;
        image.read_at(&mut buf[..real], off)?;
        buf[real..].fill(0);
        xts.encrypt(buf, unit, luks_sector(0, off), fmt_iv())?;
        out.write_at(buf, data_offset + off)
    })?;
    let elapsed = start.elapsed();
    out.set_len(output_size)?;
    out.commit(0o644)?;
    Ok(EncryptReport {
        version,
        uuid: formatted.uuid,
        input_format: image.format_name(),
        virtual_size: vsize,
        padded: payload_len - vsize,
        data_offset,
        sector_size: sector,
        kdf: formatted.keyslot_kdf,
        output_size,
        elapsed,
        threads: pipeline.threads(),
    })
}

/// The payload IV scheme diskseal writes (aes-xts-plain64).
fn fmt_iv() -> crate::crypto::IvScheme {
    crate::crypto::IvScheme::Plain64
}

/// How to unlock an existing LUKS file.
#[derive(Debug)]
pub enum Unlock {
    /// Try the keyslots with a passphrase.
    Passphrase(Passphrase),
    /// Use the volume key directly (checked against the digest).
    VolumeKey(VolumeKey),
}

/// An unlocked LUKS file.
#[derive(Debug)]
pub struct Unlocked {
    /// The open file.
    pub file: File,
    /// Its header.
    pub luks: Luks,
    /// The keyslot that opened, when a passphrase was used.
    pub keyslot: Option<u32>,
    xts: Xts,
}

/// Opens `path`, checks its header, and recovers (or checks) the volume key.
pub fn unlock(path: &Path, how: Unlock) -> Result<Unlocked> {
    let file = File::open(path).map_err(|e| Error::io("open", path, None, e))?;
    let luks = Luks::open(&file, path)?;
    let (key, keyslot) = match how {
        Unlock::Passphrase(p) => {
            let (k, slot) = luks.unlock(&file, path, &p)?;
            (k, Some(slot))
        }
        Unlock::VolumeKey(k) => {
            luks.check_volume_key(&k).map_err(|e| e.with_path(path))?;
            (k, None)
        }
    };
    let xts = Xts::new(key.expose())?;
    Ok(Unlocked { file, luks, keyslot, xts })
}

impl Unlocked {
    /// Decrypts the payload bytes at `off` (sector-aligned, whole sectors) into `buf`.
    fn read_plain(&self, path: &Path, buf: &mut [u8], off: u64) -> Result<()> {
        let seg = &self.luks.segment;
        read_exact_at(&self.file, path, buf, seg.offset + off)?;
        self.xts.decrypt(buf, seg.sector_size as usize, luks_sector(seg.iv_tweak, off), seg.cipher.iv)
    }
}

/// What [`decrypt`] did.
#[derive(Debug, Clone)]
pub struct DecryptReport {
    /// Plaintext bytes written.
    pub payload_len: u64,
    /// Keyslot used, if a passphrase was given.
    pub keyslot: Option<u32>,
    /// Time spent on the data.
    pub elapsed: Duration,
    /// Header warnings.
    pub warnings: Vec<String>,
}

/// Decrypts the LUKS file `src` into a raw image `dst`.
pub fn decrypt(src: &Path, dst: &Path, how: Unlock, force: bool, run: &Run<'_>) -> Result<DecryptReport> {
    refuse_same(src, dst)?;
    if !force && std::fs::symlink_metadata(dst).is_ok() {
        return Err(Error::invalid("output file already exists").with_path(dst).hint("pass --force to overwrite it"));
    }
    let u = unlock(src, how)?;
    let len = u.luks.payload_len();
    let out = OutputFile::create(dst, force)?;
    let pipeline = Pipeline::new(run.threads, DEFAULT_CHUNK)?;
    run.total.store(len, std::sync::atomic::Ordering::Relaxed);
    let start = Instant::now();
    pipeline.run(len, run.cancel, run.progress, |buf, off| {
        u.read_plain(src, buf, off)?;
        out.write_at(buf, off)
    })?;
    let elapsed = start.elapsed();
    out.set_len(len)?;
    out.commit(0o644)?;
    Ok(DecryptReport { payload_len: len, keyslot: u.keyslot, elapsed, warnings: u.luks.warnings.clone() })
}

/// What [`verify`] found.
#[derive(Debug, Clone)]
pub struct VerifyReport {
    /// LUKS version.
    pub version: LuksVersion,
    /// Keyslot used, if a passphrase was given.
    pub keyslot: Option<u32>,
    /// Payload size.
    pub payload_len: u64,
    /// SHA-256 of the decrypted payload, hex.
    pub plaintext_sha256: String,
    /// With a source: its virtual size.
    pub source_size: Option<u64>,
    /// With a source: the first differing byte offset, if any.
    pub mismatch: Option<u64>,
    /// Header warnings.
    pub warnings: Vec<String>,
}

impl VerifyReport {
    /// True when everything checked out.
    pub fn ok(&self) -> bool {
        self.mismatch.is_none()
    }
}

/// Unlocks `enc`, decrypts the whole payload (hashing it), and compares it with `against` if given.
pub fn verify(enc: &Path, how: Unlock, against: Option<(&Path, Option<ImageFormat>)>, run: &Run<'_>) -> Result<VerifyReport> {
    let u = unlock(enc, how)?;
    let len = u.luks.payload_len();
    let source = match against {
        Some((p, f)) => Some(image::open(p, f)?),
        None => None,
    };
    let src_size = source.as_ref().map(|s| s.virtual_size());
    // A padded payload is longer than its source; the extra bytes must then be zeros.
    let mismatch = Mutex::new(match src_size {
        Some(s) if s > len => Some(len),
        _ => None,
    });
    let pipeline = Pipeline::new(run.threads, DEFAULT_CHUNK)?;
    run.total.store(len, std::sync::atomic::Ordering::Relaxed);
    let mut hasher = Sha256::new();
    pipeline.scan_ordered(
        len,
        run.cancel,
        run.progress,
        |buf, off| {
            u.read_plain(enc, buf, off)?;
            if let (Some(src), Some(size)) = (&source, src_size) {
                let real = size.saturating_sub(off).min(buf.len() as u64) as usize;
                let mut theirs = vec![0u8; buf.len()];
                src.read_at(&mut theirs[..real], off)?;
                if let Some(i) = buf.iter().zip(&theirs).position(|(a, b)| a != b) {
                    let at = off + i as u64;
                    let mut m = mismatch.lock().map_err(|_| Error::new(ErrorKind::Io, "worker panicked"))?;
                    if m.is_none_or(|x| at < x) {
                        *m = Some(at);
                    }
                }
            }
            Ok(())
        },
        |buf, _| {
            hasher.update(buf);
            Ok(())
        },
    )?;
    let plaintext_sha256 = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok(VerifyReport {
        version: u.luks.version(),
        keyslot: u.keyslot,
        payload_len: len,
        plaintext_sha256,
        source_size: src_size,
        mismatch: mismatch.into_inner().unwrap_or(None),
        warnings: u.luks.warnings.clone(),
    })
}
