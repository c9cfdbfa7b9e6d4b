//! Keyslot material and the volume-key digest, shared by LUKS1 and LUKS2.
//!
//! A keyslot stores `AF_split(volume_key)` (zero-padded to 512 bytes), encrypted with a key derived from
//! the passphrase, in 512-byte XTS units whose IVs start at 0 at the keyslot area (cryptsetup
//! `crypt_storage_wrapper_init(offset = area, iv_start = 0, sector_size = 512)`).
//! The digest is PBKDF2 of the volume key; it is compared in constant time.

use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::crypto::hash::Hash;
use crate::crypto::iv::CipherSpec;
use crate::crypto::xts::Xts;
use crate::error::Result;
use crate::luks::af;

/// cryptsetup's stripe count; QEMU requires exactly this.
pub const STRIPES: u32 = 4000;

/// Bytes of keyslot material actually stored: `round_up(key_len * stripes, 512)`.
pub fn material_len(key_len: usize, stripes: u32) -> usize {
    (key_len * stripes as usize).div_ceil(512) * 512
}

/// Splits and encrypts `volume_key` with `slot_key` (the KDF output).
pub fn seal(
    volume_key: &[u8],
    slot_key: &[u8],
    hash: Hash,
    stripes: u32,
    cipher: CipherSpec,
) -> Result<Zeroizing<Vec<u8>>> {
    let mut material = af::split(volume_key, stripes as usize, hash)?;
    material.resize(material_len(volume_key.len(), stripes), 0);
    Xts::new(slot_key)?.encrypt(&mut material, 512, 0, cipher.iv)?;
    Ok(material)
}

/// Decrypts keyslot `material` (exactly [`material_len`] bytes) with `slot_key` and merges the stripes.
pub fn open(
    mut material: Zeroizing<Vec<u8>>,
    slot_key: &[u8],
    hash: Hash,
    stripes: u32,
    key_len: usize,
    cipher: CipherSpec,
) -> Result<Zeroizing<Vec<u8>>> {
    Xts::new(slot_key)?.decrypt(&mut material, 512, 0, cipher.iv)?;
    Ok(af::merge(&material, key_len, stripes as usize, hash))
}

/// The PBKDF2 digest of a volume key (`len` bytes: 20 for LUKS1, the hash size for LUKS2).
pub fn digest(hash: Hash, volume_key: &[u8], salt: &[u8], iterations: u32, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    hash.pbkdf2(volume_key, salt, iterations, &mut out);
    out
}

/// Constant-time comparison of a computed digest with the stored one.
pub fn digest_matches(computed: &[u8], stored: &[u8]) -> bool {
    computed.len() == stored.len() && bool::from(computed.ct_eq(stored))
}
