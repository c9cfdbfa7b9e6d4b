//! blktap's batmap and key hash (`vhd-util.md`, "Layout of the output"): the 512-byte batmap header that
//! follows the BAT in VHDs created by tapdisk ("tap\0" ≥ 1.2), the one-bit-per-block batmap after it,
//! and the key hash (`cookie`, 32-byte nonce, SHA-256(nonce ‖ key)) that `vhd-util copy -k` stores in the
//! header. Decode/encode sit side by side; [`KeyHash::matches`] compares in constant time.
//!
//! Header fields (big-endian): cookie "tdbatmap" @0, batmap offset (u64) @8, batmap size in sectors (u32)
//! @16, version (u32) @20, checksum (u32) @24, marker (u8) @28, key hash cookie @29, nonce @30..62,
//! hash @62..94. The checksum (one's complement of the byte sum) covers the map only, and only
//! [`checksum_sectors`] sectors of it, exactly like libvhd; nothing covers the key hash.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::image::vhd::bytes::arr;

/// The batmap header's cookie.
pub const COOKIE: &[u8; 8] = b"tdbatmap";

/// Batmap version written by tapdisk 1.3 (and accepted: 1.1 and 1.2).
pub const VERSION: u32 = 0x0001_0002;

/// The size of the batmap header.
pub const HEADER_SIZE: usize = 512;

/// Offset of the key hash in the batmap header.
pub const KEYHASH_AT: usize = 29;

/// Key hash cookie meaning "a key hash is present".
pub const KEYHASH_PRESENT: u8 = 1;

/// The key hash: which key the data was encrypted with (`struct vhd_keyhash`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyHash {
    /// 1 when a key hash is set, 0 otherwise.
    pub cookie: u8,
    /// Any 32 bytes; `vhd-util copy` writes zeros.
    pub nonce: [u8; 32],
    /// SHA-256(nonce ‖ key).
    pub hash: [u8; 32],
}

impl KeyHash {
    /// The key hash of `key` with `nonce` (cookie 1).
    pub fn of_key(key: &[u8], nonce: [u8; 32]) -> KeyHash {
        KeyHash {
            cookie: KEYHASH_PRESENT,
            nonce,
            hash: hash_key(key, &nonce),
        }
    }

    /// True when `key` hashes to this key hash (constant-time comparison of the hashes).
    pub fn matches(&self, key: &[u8]) -> bool {
        bool::from(hash_key(key, &self.nonce).ct_eq(&self.hash))
    }
}

/// SHA-256(nonce ‖ key).
pub fn hash_key(key: &[u8], nonce: &[u8; 32]) -> [u8; 32] {
    let d = Sha256::new()
        .chain_update(nonce)
        .chain_update(key)
        .finalize();
    let mut out = [0u8; 32];
    out.copy_from_slice(&d);
    out
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The batmap header exactly as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatmapHeader {
    /// "tdbatmap".
    pub cookie: [u8; 8],
    /// Absolute file offset of the batmap.
    pub batmap_offset: u64,
    /// Batmap size in 512-byte sectors (as libvhd computes it, see [`checksum_sectors`]).
    pub batmap_size: u32,
    /// Batmap version (0x00010002).
    pub version: u32,
    /// One's complement of the byte sum of the first `batmap_size` sectors of the map.
    pub checksum: u32,
    /// Marker byte (0).
    pub marker: u8,
    /// The key hash.
    pub keyhash: KeyHash,
}

impl BatmapHeader {
    /// Decodes the 512 stored bytes (no validation).
    pub fn decode(b: &[u8; HEADER_SIZE]) -> BatmapHeader {
        BatmapHeader {
            cookie: arr(b, 0),
            batmap_offset: u64::from_be_bytes(arr(b, 8)),
            batmap_size: u32::from_be_bytes(arr(b, 16)),
            version: u32::from_be_bytes(arr(b, 20)),
            checksum: u32::from_be_bytes(arr(b, 24)),
            marker: b[28],
            keyhash: KeyHash {
                cookie: b[KEYHASH_AT],
                nonce: arr(b, 30),
                hash: arr(b, 62),
            },
        }
    }

    /// Encodes to the 512 stored bytes (bytes 94.. are zero).
    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..8].copy_from_slice(&self.cookie);
        b[8..16].copy_from_slice(&self.batmap_offset.to_be_bytes());
        b[16..20].copy_from_slice(&self.batmap_size.to_be_bytes());
        b[20..24].copy_from_slice(&self.version.to_be_bytes());
        b[24..28].copy_from_slice(&self.checksum.to_be_bytes());
        b[28] = self.marker;
        b[KEYHASH_AT] = self.keyhash.cookie;
        b[30..62].copy_from_slice(&self.keyhash.nonce);
        b[62..94].copy_from_slice(&self.keyhash.hash);
        b
    }
}

/// Sectors of the batmap libvhd sizes, reads and checksums for a disk of `current_size` bytes:
/// `max(1, ceil((current_size >> 24) / 512))`. For sizes of k·8 GiB + 2..14 MiB this is one sector short
/// of the map ([`map_sectors`]); the writer still reserves and fills the whole map.
pub fn checksum_sectors(current_size: u64) -> u64 {
    (current_size >> 24).div_ceil(512).max(1)
}

/// Sectors the batmap of `blocks` blocks really needs (one bit per block).
pub fn map_sectors(blocks: u64) -> u64 {
    blocks.div_ceil(8).div_ceil(512).max(1)
}

/// One's complement of the unsigned byte sum of `map`.
pub fn checksum(map: &[u8]) -> u32 {
    !map.iter().fold(0u32, |s, &b| s.wrapping_add(u32::from(b)))
}

/// True when block `i`'s bit is set (most significant bit first).
pub fn test_bit(map: &[u8], i: u64) -> bool {
    map.get((i / 8) as usize)
        .is_some_and(|b| b & (0x80 >> (i % 8)) != 0)
}

/// Sets block `i`'s bit (most significant bit first); ignores bits past the map.
pub fn set_bit(map: &mut [u8], i: u64) {
    if let Some(b) = map.get_mut((i / 8) as usize) {
        *b |= 0x80 >> (i % 8);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_matches_vhd_util() {
        // The batmap header of fixtures/vhd-util/encrypted-aes256.vhd (bytes 0x800..0x85e).
        let key: Vec<u8> = (0u8..64).collect();
        let h = BatmapHeader {
            cookie: *COOKIE,
            batmap_offset: 0xa00,
            batmap_size: 1,
            version: VERSION,
            checksum: checksum(&[0x90]),
            marker: 0,
            keyhash: KeyHash::of_key(&key, [0; 32]),
        };
        assert_eq!(h.checksum, 0xffff_ff6f);
        assert_eq!(
            hex(&h.keyhash.hash),
            "dc7a48014fc1fac8b52af39bc7ea5cafafabf8bb81fb8f880fdf3b4a4566795c"
        );
        let b = h.encode();
        assert_eq!(BatmapHeader::decode(&b), h);
        assert_eq!(
            hex(&b[8..30]),
            "0000000000000a000000000100010002ffffff6f0001"
        );
        assert!(h.keyhash.matches(&key));
        assert!(!h.keyhash.matches(&key[..32]));
    }

    #[test]
    fn sizes_like_libvhd() {
        assert_eq!(checksum_sectors(10 << 20), 1);
        assert_eq!(checksum_sectors(8 << 30), 1);
        // k·8 GiB + 2 MiB: libvhd's count is one sector short of the map.
        assert_eq!(checksum_sectors((8 << 30) + (2 << 20)), 1);
        assert_eq!(map_sectors(((8u64 << 30) + (2 << 20)) >> 21), 2);
        assert_eq!(checksum_sectors((16 << 30) + (16 << 20)), 3);
        assert_eq!(map_sectors(1), 1);
        let mut m = [0u8; 2];
        set_bit(&mut m, 0);
        set_bit(&mut m, 3);
        set_bit(&mut m, 9);
        set_bit(&mut m, 99);
        assert_eq!(m, [0x90, 0x40]);
        assert!(test_bit(&m, 3) && !test_bit(&m, 4) && !test_bit(&m, 99));
    }
}
