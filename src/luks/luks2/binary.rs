//! The 4096-byte LUKS2 binary header: raw layout, validation, encoding and its SHA checksum.
//!
//! Layout (big-endian, LUKS2 On-Disk Format Specification v1.1.4, Fig. 2; cryptsetup `luks2.h`):
//! ```text
//! magic[6] version u16 hdr_size u64 seqid u64 label[48] checksum_alg[32] salt[64] uuid[40]
//! subsystem[48] hdr_offset u64 pad[184] csum[64] pad[3584]
//! ```
//! The checksum covers the binary header (csum zeroed) and the whole JSON area after it.

use crate::crypto::hash::Hash;
use crate::error::{Error, Result};

/// Size of the binary part of each header copy.
pub const BIN_SIZE: usize = 4096;
/// Magic of the primary header.
pub const MAGIC_PRIMARY: [u8; 6] = crate::luks::luks1::MAGIC;
/// Magic of the secondary header.
pub const MAGIC_SECONDARY: [u8; 6] = *b"SKUL\xba\xbe";
/// Allowed header sizes (binary + JSON area), 16 KiB .. 4 MiB.
pub const HDR_SIZES: [u64; 9] = [
    0x4000, 0x8000, 0x10000, 0x20000, 0x40000, 0x80000, 0x100000, 0x200000, 0x400000,
];

const CSUM_OFF: usize = 448;

/// A decoded binary header (not yet checked against its JSON area).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinaryHeader {
    /// True for "LUKS\xba\xbe", false for "SKUL\xba\xbe".
    pub primary: bool,
    /// Binary header plus JSON area size.
    pub hdr_size: u64,
    /// Sequence id; the higher copy wins.
    pub seqid: u64,
    /// Label (may be empty).
    pub label: String,
    /// Checksum algorithm name.
    pub checksum_alg: String,
    /// Per-copy salt.
    pub salt: [u8; 64],
    /// UUID text.
    pub uuid: String,
    /// Subsystem (may be empty).
    pub subsystem: String,
    /// Where this copy says it lives.
    pub hdr_offset: u64,
    /// Stored checksum (first `hash.output_len()` bytes used).
    pub csum: [u8; 64],
}

fn be64(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_be_bytes(a)
}

/// A NUL-terminated string field; `name` is used in errors.
fn cstr(b: &[u8], name: &str, off: usize) -> Result<String> {
    let end = b.iter().position(|&c| c == 0).ok_or_else(|| {
        Error::corrupt(format!("LUKS2 header field {name} is not NUL-terminated")).at(off as u64)
    })?;
    String::from_utf8(b[..end].to_vec()).map_err(|_| {
        Error::corrupt(format!("LUKS2 header field {name} is not valid UTF-8")).at(off as u64)
    })
}

fn put_str(b: &mut [u8], s: &str) {
    b[..s.len()].copy_from_slice(s.as_bytes());
}

impl BinaryHeader {
    /// Decodes and checks the fixed fields of one copy read at file offset `at`.
    pub fn decode(b: &[u8; BIN_SIZE], at: u64) -> Result<BinaryHeader> {
        let primary = if b[0..6] == MAGIC_PRIMARY {
            true
        } else if b[0..6] == MAGIC_SECONDARY {
            false
        } else {
            return Err(Error::format("no LUKS2 header magic").at(at));
        };
        let version = u16::from_be_bytes([b[6], b[7]]);
        if version != 2 {
            return Err(
                Error::format(format!("LUKS header version {version}, expected 2")).at(at + 6),
            );
        }
        let hdr_size = be64(b, 8);
        if !HDR_SIZES.contains(&hdr_size) {
            return Err(Error::corrupt(format!(
                "LUKS2 hdr_size {hdr_size:#x} is not one of the allowed sizes 16 KiB..4 MiB"
            ))
            .at(at + 8));
        }
        let hdr_offset = be64(b, 256);
        if hdr_offset != at {
            return Err(Error::corrupt(format!(
                "LUKS2 hdr_offset says {hdr_offset:#x} but the header copy is at {at:#x}"
            ))
            .at(at + 256));
        }
        let mut salt = [0u8; 64];
        salt.copy_from_slice(&b[104..168]);
        let mut csum = [0u8; 64];
        csum.copy_from_slice(&b[CSUM_OFF..CSUM_OFF + 64]);
        Ok(BinaryHeader {
            primary,
            hdr_size,
            seqid: be64(b, 16),
            label: cstr(&b[24..72], "label", 24).map_err(|e| e.at(at + 24))?,
            checksum_alg: cstr(&b[72..104], "checksum_alg", 72).map_err(|e| e.at(at + 72))?,
            salt,
            uuid: cstr(&b[168..208], "uuid", 168).map_err(|e| e.at(at + 168))?,
            subsystem: cstr(&b[208..256], "subsystem", 208).map_err(|e| e.at(at + 208))?,
            hdr_offset,
            csum,
        })
    }

    /// Encodes the header with a zero checksum field.
    pub fn encode(&self) -> [u8; BIN_SIZE] {
        let mut b = [0u8; BIN_SIZE];
        b[0..6].copy_from_slice(if self.primary {
            &MAGIC_PRIMARY
        } else {
            &MAGIC_SECONDARY
        });
        b[6..8].copy_from_slice(&2u16.to_be_bytes());
        b[8..16].copy_from_slice(&self.hdr_size.to_be_bytes());
        b[16..24].copy_from_slice(&self.seqid.to_be_bytes());
        put_str(&mut b[24..72], &self.label);
        put_str(&mut b[72..104], &self.checksum_alg);
        b[104..168].copy_from_slice(&self.salt);
        put_str(&mut b[168..208], &self.uuid);
        put_str(&mut b[208..256], &self.subsystem);
        b[256..264].copy_from_slice(&self.hdr_offset.to_be_bytes());
        b
    }

    /// The hash named by `checksum_alg`.
    pub fn checksum_hash(&self) -> Result<Hash> {
        Hash::parse(&self.checksum_alg).map_err(|_| {
            Error::unsupported(format!(
                "unsupported LUKS2 checksum_alg {:?}",
                self.checksum_alg
            ))
        })
    }
}

/// Checksum of one copy: hash(binary header with csum zeroed || JSON area).
pub fn checksum(hash: Hash, bin: &[u8; BIN_SIZE], json_area: &[u8]) -> Vec<u8> {
    let mut zeroed = *bin;
    zeroed[CSUM_OFF..CSUM_OFF + 64].fill(0);
    hash.digest(&[&zeroed, json_area])
}

/// Writes `csum` into an encoded header.
pub fn set_checksum(bin: &mut [u8; BIN_SIZE], csum: &[u8]) {
    bin[CSUM_OFF..CSUM_OFF + csum.len()].copy_from_slice(csum);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> BinaryHeader {
        BinaryHeader {
            primary: true,
            hdr_size: 0x4000,
            seqid: 3,
            label: "lbl".into(),
            checksum_alg: "sha256".into(),
            salt: [5; 64],
            uuid: "fbcb5ed2-b742-4cdd-9753-d1af94f39c9d".into(),
            subsystem: String::new(),
            hdr_offset: 0,
            csum: [0; 64],
        }
    }

    #[test]
    fn round_trip() {
        let h = sample();
        assert_eq!(BinaryHeader::decode(&h.encode(), 0).unwrap(), h);
    }

    #[test]
    fn hostile_fields_are_named() {
        let mut b = sample().encode();
        b[8..16].copy_from_slice(&20480u64.to_be_bytes());
        let e = BinaryHeader::decode(&b, 0).unwrap_err();
        assert!(e.message().contains("hdr_size"), "{e}");
        let mut b = sample().encode();
        b[24..72].fill(b'x');
        assert!(
            BinaryHeader::decode(&b, 0)
                .unwrap_err()
                .message()
                .contains("label")
        );
        let b = sample().encode();
        assert!(
            BinaryHeader::decode(&b, 0x4000)
                .unwrap_err()
                .message()
                .contains("hdr_offset")
        );
    }
}
