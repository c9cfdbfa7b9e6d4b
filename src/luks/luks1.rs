//! LUKS1: the 592-byte `phdr` with 8 keyslots (LUKS On-Disk Format Specification 1.2.3; QEMU
//! `crypto/block-luks.c`), written with cryptsetup 2.x's layout and read with QEMU's and cryptsetup's
//! checks.
//!
//! Layout (big-endian):
//! ```text
//! magic[6] version u16 cipherName[32] cipherMode[32] hashSpec[32]
//! payloadOffset u32 keyBytes u32 mkDigest[20] mkDigestSalt[32] mkDigestIterations u32 uuid[40], then
//! 8 × { active u32, iterations u32, salt[32], keyMaterialOffset u32, stripes u32 }
//! ```
//! Written layout (cryptsetup 2.6.1, checked with `luksDump`): key material at sector 8, slots
//! `round_up(key*4000, 4096)` apart, payload at the next 1 MiB boundary (sector 4096 for 64-byte keys).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use zeroize::Zeroizing;

use crate::crypto::hash::Hash;
use crate::crypto::iv::CipherSpec;
use crate::crypto::keys::{Passphrase, VolumeKey, random_bytes};
use crate::error::{Error, ErrorKind, Result};
use crate::luks::kdf::{self, Kdf, KdfType};
use crate::luks::keyslot::{self, STRIPES};
use crate::luks::{FormatOptions, Formatted, Segment};

/// Size of the LUKS1 header.
pub const PHDR_SIZE: usize = 592;
/// Magic.
pub const MAGIC: [u8; 6] = *b"LUKS\xba\xbe";
/// `active` value of an enabled keyslot.
pub const KEY_ENABLED: u32 = 0x00AC_71F3;
/// `active` value of a disabled keyslot.
pub const KEY_DISABLED: u32 = 0x0000_DEAD;
const SLOT_BASE: usize = 208;
const SLOT_SIZE: usize = 48;

/// One LUKS1 keyslot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    /// Enabled?
    pub active: bool,
    /// PBKDF2 iterations.
    pub iterations: u32,
    /// PBKDF2 salt.
    pub salt: [u8; 32],
    /// Start of the key material, in 512-byte sectors.
    pub key_material_offset: u32,
    /// AF stripes.
    pub stripes: u32,
}

/// A decoded and checked LUKS1 header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Luks1Header {
    /// Cipher name ("aes").
    pub cipher_name: String,
    /// Cipher mode ("xts-plain64").
    pub cipher_mode: String,
    /// Hash for PBKDF2 and AF ("sha256").
    pub hash_spec: String,
    /// Payload start in 512-byte sectors.
    pub payload_offset: u32,
    /// Volume key length in bytes.
    pub key_bytes: u32,
    /// PBKDF2 digest of the volume key.
    pub mk_digest: [u8; 20],
    /// Its salt.
    pub mk_digest_salt: [u8; 32],
    /// Its iterations.
    pub mk_digest_iterations: u32,
    /// UUID text.
    pub uuid: String,
    /// The 8 keyslots.
    pub slots: Vec<Slot>,
}

fn be32(b: &[u8], off: usize) -> u32 {
    u32::from_be_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

fn cstr(b: &[u8], field: &str, off: usize) -> Result<String> {
    let end = b.iter().position(|&c| c == 0).ok_or_else(|| {
        Error::corrupt(format!("LUKS1 header field {field} is not NUL-terminated")).at(off as u64)
    })?;
    String::from_utf8(b[..end].to_vec()).map_err(|_| {
        Error::corrupt(format!("LUKS1 header field {field} is not valid UTF-8")).at(off as u64)
    })
}

fn put_str(b: &mut [u8], s: &str) {
    b[..s.len()].copy_from_slice(s.as_bytes());
}

impl Luks1Header {
    /// Decodes the header and checks it the way QEMU and cryptsetup do, against a file of `file_len`.
    pub fn decode(b: &[u8; PHDR_SIZE], file_len: u64) -> Result<Luks1Header> {
        if b[0..6] != MAGIC {
            return Err(Error::format("no LUKS magic").at(0));
        }
        let version = u16::from_be_bytes([b[6], b[7]]);
        if version != 1 {
            return Err(Error::format(format!("LUKS header version {version}, expected 1")).at(6));
        }
        let mut mk_digest = [0u8; 20];
        mk_digest.copy_from_slice(&b[112..132]);
        let mut mk_digest_salt = [0u8; 32];
        mk_digest_salt.copy_from_slice(&b[132..164]);
        let mut h = Luks1Header {
            cipher_name: cstr(&b[8..40], "cipherName", 8)?,
            cipher_mode: cstr(&b[40..72], "cipherMode", 40)?,
            hash_spec: cstr(&b[72..104], "hashSpec", 72)?,
            payload_offset: be32(b, 104),
            key_bytes: be32(b, 108),
            mk_digest,
            mk_digest_salt,
            mk_digest_iterations: be32(b, 164),
            uuid: cstr(&b[168..208], "uuid", 168)?,
            slots: Vec::with_capacity(8),
        };
        for i in 0..8 {
            let o = SLOT_BASE + i * SLOT_SIZE;
            let active = match be32(b, o) {
                KEY_ENABLED => true,
                KEY_DISABLED => false,
                v => {
                    return Err(Error::corrupt(format!(
                        "LUKS1 keyslot {i} active field {v:#010x} is neither enabled nor disabled"
                    ))
                    .at(o as u64));
                }
            };
            let mut salt = [0u8; 32];
            salt.copy_from_slice(&b[o + 8..o + 40]);
            h.slots.push(Slot {
                active,
                iterations: be32(b, o + 4),
                salt,
                key_material_offset: be32(b, o + 40),
                stripes: be32(b, o + 44),
            });
        }
        h.check(file_len)?;
        Ok(h)
    }

    fn check(&self, file_len: u64) -> Result<()> {
        if self.key_bytes != 32 && self.key_bytes != 64 {
            return Err(Error::unsupported(format!(
                "LUKS1 keyBytes {} is not 32 or 64 (AES-XTS)",
                self.key_bytes
            ))
            .at(108));
        }
        if self.payload_offset < 8 {
            return Err(Error::corrupt(format!(
                "LUKS1 payloadOffset {} is inside the header",
                self.payload_offset
            ))
            .at(104));
        }
        if self.mk_digest_iterations == 0 {
            return Err(Error::corrupt("LUKS1 mkDigestIterations is zero").at(164));
        }
        let payload = u64::from(self.payload_offset) * 512;
        if payload > file_len {
            return Err(Error::corrupt(format!(
                "LUKS1 payloadOffset {payload:#x} is beyond the end of the file ({file_len:#x})"
            ))
            .at(104)
            .hint("the file is truncated"));
        }
        let mut ranges = Vec::new();
        for (i, s) in self.slots.iter().enumerate().filter(|(_, s)| s.active) {
            let at = (SLOT_BASE + i * SLOT_SIZE) as u64;
            if s.iterations == 0 {
                return Err(Error::corrupt(format!(
                    "LUKS1 keyslot {i} is enabled with zero iterations"
                ))
                .at(at + 4));
            }
            if s.stripes == 0 || s.stripes > 100_000 {
                return Err(
                    Error::corrupt(format!("LUKS1 keyslot {i} has {} stripes", s.stripes))
                        .at(at + 44),
                );
            }
            let start = u64::from(s.key_material_offset);
            let sectors = (keyslot::material_len(self.key_bytes as usize, s.stripes) / 512) as u64;
            if start < 8 || start + sectors > u64::from(self.payload_offset) {
                return Err(Error::corrupt(format!(
                    "LUKS1 keyslot {i} key material (sectors {start}..{}) is outside the header area (8..{})",
                    start + sectors,
                    self.payload_offset
                ))
                .at(at + 40));
            }
            ranges.push((start, start + sectors, i));
        }
        ranges.sort();
        for w in ranges.windows(2) {
            if w[0].1 > w[1].0 {
                return Err(Error::corrupt(format!(
                    "LUKS1 keyslots {} and {} overlap",
                    w[0].2, w[1].2
                )));
            }
        }
        Ok(())
    }

    /// Encodes the header.
    pub fn encode(&self) -> [u8; PHDR_SIZE] {
        let mut b = [0u8; PHDR_SIZE];
        b[0..6].copy_from_slice(&MAGIC);
        b[6..8].copy_from_slice(&1u16.to_be_bytes());
        put_str(&mut b[8..40], &self.cipher_name);
        put_str(&mut b[40..72], &self.cipher_mode);
        put_str(&mut b[72..104], &self.hash_spec);
        b[104..108].copy_from_slice(&self.payload_offset.to_be_bytes());
        b[108..112].copy_from_slice(&self.key_bytes.to_be_bytes());
        b[112..132].copy_from_slice(&self.mk_digest);
        b[132..164].copy_from_slice(&self.mk_digest_salt);
        b[164..168].copy_from_slice(&self.mk_digest_iterations.to_be_bytes());
        put_str(&mut b[168..208], &self.uuid);
        for (i, s) in self.slots.iter().enumerate() {
            let o = SLOT_BASE + i * SLOT_SIZE;
            b[o..o + 4].copy_from_slice(
                &(if s.active { KEY_ENABLED } else { KEY_DISABLED }).to_be_bytes(),
            );
            b[o + 4..o + 8].copy_from_slice(&s.iterations.to_be_bytes());
            b[o + 8..o + 40].copy_from_slice(&s.salt);
            b[o + 40..o + 44].copy_from_slice(&s.key_material_offset.to_be_bytes());
            b[o + 44..o + 48].copy_from_slice(&s.stripes.to_be_bytes());
        }
        b
    }

    /// Reads and checks the header of `file`.
    pub fn read(file: &File, path: &Path, file_len: u64) -> Result<Luks1Header> {
        Self::read_at(file, path, 0, file_len)
    }

    /// Reads and checks a header embedded at `base` in `file`, in a region of `region_len` bytes (qcow2's
    /// FDE header area); offsets inside the header are relative to `base`.
    pub fn read_at(file: &File, path: &Path, base: u64, region_len: u64) -> Result<Luks1Header> {
        if region_len < PHDR_SIZE as u64 {
            return Err(Error::format("too short for a LUKS1 header")
                .with_path(path)
                .at(base));
        }
        let mut b = [0u8; PHDR_SIZE];
        file.read_exact_at(&mut b, base)
            .map_err(|e| Error::io("read LUKS1 header", path, Some(base), e))?;
        Self::decode(&b, region_len).map_err(|e| {
            let at = e.offset().unwrap_or(0);
            Error::new(e.kind(), e.message())
                .with_path(path)
                .at(base + at)
        })
    }

    fn hash(&self) -> Result<Hash> {
        Hash::parse(&self.hash_spec)
            .map_err(|e| Error::new(e.kind(), format!("LUKS1 hashSpec: {}", e.message())).at(72))
    }

    fn cipher(&self) -> Result<CipherSpec> {
        CipherSpec::parse_luks1(&self.cipher_name, &self.cipher_mode)
            .map_err(|e| Error::new(e.kind(), format!("LUKS1 cipher: {}", e.message())).at(8))
    }

    /// The payload segment (LUKS1: 512-byte sectors, IV from 0, to the end of the file).
    pub fn segment(&self) -> Result<Segment> {
        Ok(Segment {
            offset: u64::from(self.payload_offset) * 512,
            size: None,
            iv_tweak: 0,
            sector_size: 512,
            cipher: self.cipher()?,
            cipher_name: format!("{}-{}", self.cipher_name, self.cipher_mode),
            key_bytes: self.key_bytes as usize,
        })
    }

    /// Tries each enabled keyslot with `passphrase`.
    pub fn unlock(
        &self,
        file: &File,
        path: &Path,
        passphrase: &Passphrase,
    ) -> Result<(VolumeKey, u32)> {
        self.unlock_at(file, path, 0, passphrase)
    }

    /// [`Luks1Header::unlock`] for a header embedded at `base`.
    pub fn unlock_at(
        &self,
        file: &File,
        path: &Path,
        base: u64,
        passphrase: &Passphrase,
    ) -> Result<(VolumeKey, u32)> {
        let hash = self.hash().map_err(|e| e.with_path(path))?;
        let cipher = self.cipher().map_err(|e| e.with_path(path))?;
        let key_len = self.key_bytes as usize;
        for (i, s) in self.slots.iter().enumerate().filter(|(_, s)| s.active) {
            let kdf = Kdf::Pbkdf2 {
                hash,
                iterations: s.iterations,
            };
            let slot_key = kdf.derive(passphrase.expose(), &s.salt, key_len)?;
            let offset = base + u64::from(s.key_material_offset) * 512;
            let mut material = Zeroizing::new(vec![0u8; keyslot::material_len(key_len, s.stripes)]);
            file.read_exact_at(&mut material, offset)
                .map_err(|e| Error::io("read keyslot", path, Some(offset), e))?;
            let candidate = keyslot::open(material, &slot_key, hash, s.stripes, key_len, cipher)?;
            if self.key_matches(hash, &candidate) {
                return Ok((VolumeKey::from_bytes(candidate)?, i as u32));
            }
        }
        Err(Error::new(ErrorKind::WrongKey, "no keyslot opens with this passphrase")
            .with_path(path)
            .hint("check the key file: it is used verbatim, a trailing newline counts (see --strip-newline)"))
    }

    fn key_matches(&self, hash: Hash, key: &[u8]) -> bool {
        let d = keyslot::digest(
            hash,
            key,
            &self.mk_digest_salt,
            self.mk_digest_iterations,
            20,
        );
        keyslot::digest_matches(&d, &self.mk_digest)
    }

    /// Checks a volume key against the header's digest.
    pub fn check_volume_key(&self, key: &VolumeKey) -> Result<bool> {
        Ok(self.key_matches(self.hash()?, key.expose()))
    }
}

/// Builds a LUKS1 header region (up to the payload) holding keyslot 0 for `passphrase`.
pub fn format(opts: &FormatOptions, key: &VolumeKey, passphrase: &Passphrase) -> Result<Formatted> {
    if opts.sector_size != 512 {
        return Err(Error::invalid("LUKS1 supports only 512-byte sectors")
            .hint("use --type luks2 for 4096-byte sectors"));
    }
    if opts.kdf != KdfType::Pbkdf2 {
        return Err(Error::invalid(format!(
            "LUKS1 keyslots use pbkdf2, not {}",
            opts.kdf.name()
        )));
    }
    if !opts.label.is_empty() || !opts.subsystem.is_empty() {
        return Err(
            Error::invalid("LUKS1 has no label or subsystem field").hint("use --type luks2")
        );
    }
    let key_len = key.len();
    let slot_sectors =
        ((keyslot::material_len(key_len, STRIPES) as u64).div_ceil(4096) * 4096 / 512) as u32;
    let slots_end = 8 + 8 * u64::from(slot_sectors);
    let payload_sectors = match opts.data_offset {
        Some(off) => {
            if off % 512 != 0 || off / 512 < slots_end || off / 512 > u64::from(u32::MAX) {
                return Err(Error::invalid(format!(
                    "LUKS1 data offset {off} must be a multiple of 512 and at least {} bytes",
                    slots_end * 512
                )));
            }
            (off / 512) as u32
        }
        None => slots_end.div_ceil(2048) as u32 * 2048,
    };
    let kdf = opts.keyslot_kdf(key_len)?;
    let Kdf::Pbkdf2 { iterations, .. } = kdf else {
        return Err(Error::invalid("LUKS1 keyslots use pbkdf2"));
    };
    let mut salt = [0u8; 32];
    salt.copy_from_slice(&random_bytes(32)?);
    let slot_key = kdf.derive(passphrase.expose(), &salt, key_len)?;
    let material = keyslot::seal(
        key.expose(),
        &slot_key,
        opts.hash,
        STRIPES,
        CipherSpec::AES_XTS_PLAIN64,
    )?;
    let mk_digest_iterations =
        kdf::digest_iterations(opts.hash, opts.cost.force_iterations.is_some());
    let mut mk_digest_salt = [0u8; 32];
    mk_digest_salt.copy_from_slice(&random_bytes(32)?);
    let mut mk_digest = [0u8; 20];
    mk_digest.copy_from_slice(&keyslot::digest(
        opts.hash,
        key.expose(),
        &mk_digest_salt,
        mk_digest_iterations,
        20,
    ));
    let uuid = opts
        .uuid
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let slots = (0..8)
        .map(|i| Slot {
            active: i == 0,
            iterations: if i == 0 { iterations } else { 0 },
            salt: if i == 0 { salt } else { [0; 32] },
            key_material_offset: 8 + i * slot_sectors,
            stripes: STRIPES,
        })
        .collect();
    let h = Luks1Header {
        cipher_name: "aes".into(),
        cipher_mode: "xts-plain64".into(),
        hash_spec: opts.hash.name().into(),
        payload_offset: payload_sectors,
        key_bytes: key_len as u32,
        mk_digest,
        mk_digest_salt,
        mk_digest_iterations,
        uuid: uuid.clone(),
        slots,
    };
    let data_offset = u64::from(payload_sectors) * 512;
    // Keyslot 0's material at 4096; the unused key material areas after it get random-looking bytes
    // (the filler), as cryptsetup fills them with random ones.
    let mut header = vec![0u8; 4096];
    header[..PHDR_SIZE].copy_from_slice(&h.encode());
    header.extend_from_slice(&material);
    Ok(Formatted {
        header,
        filler_end: slots_end * 512,
        data_offset,
        uuid,
        keyslot_kdf: kdf,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_headers_are_refused_with_the_field() {
        let key = VolumeKey::generate(64).unwrap();
        let pass = Passphrase::new(Zeroizing::new(b"pw".to_vec())).unwrap();
        let opts = FormatOptions::for_tests(crate::luks::LuksVersion::Luks1);
        let f = format(&opts, &key, &pass).unwrap();
        let good: [u8; PHDR_SIZE] = f.header[..PHDR_SIZE].try_into().unwrap();
        let len = 4 << 20;
        assert!(Luks1Header::decode(&good, len).is_ok());
        let cases: [(usize, &[u8], &str); 5] = [
            (104, &[0, 0, 0, 4], "payloadOffset"),
            (104, &[0xff, 0, 0, 0], "beyond the end"),
            (108, &[0, 0, 0, 48], "keyBytes"),
            (208, &[1, 2, 3, 4], "active"),
            (208 + 40, &[0, 0, 0x10, 0], "key material"),
        ];
        for (off, bytes, what) in cases {
            let mut b = good;
            b[off..off + bytes.len()].copy_from_slice(bytes);
            let e = Luks1Header::decode(&b, len).unwrap_err();
            assert!(e.to_string().contains(what), "{what}: {e}");
        }
        let mut b = good;
        b[8..40].fill(b'a');
        assert!(
            Luks1Header::decode(&b, len)
                .unwrap_err()
                .message()
                .contains("cipherName")
        );
    }
}
