//! The hash algorithms LUKS names by string (`"sha256"`), dispatched to the RustCrypto crates for
//! plain digests and PBKDF2-HMAC.

use blake2::{Blake2b512, Blake2s256};
use ripemd::Ripemd160;
use sha1::Sha1;
use sha2::{Digest, Sha224, Sha256, Sha384, Sha512};
use sha3::{Sha3_256, Sha3_384, Sha3_512};
use sm3::Sm3;
use whirlpool::Whirlpool;

use crate::error::{Error, Result};

/// A hash algorithm usable for LUKS keyslots, the AF splitter, digests and header checksums: every hash
/// cryptsetup 2.6 (OpenSSL backend) accepts for `--hash`, except stribog, which it lacks here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hash {
    /// SHA-1 (the old LUKS1 default).
    Sha1,
    /// SHA-224.
    Sha224,
    /// SHA-256 (the default everywhere).
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
    /// SHA3-256.
    Sha3_256,
    /// SHA3-384.
    Sha3_384,
    /// SHA3-512.
    Sha3_512,
    /// RIPEMD-160.
    Ripemd160,
    /// Whirlpool.
    Whirlpool,
    /// BLAKE2b-512.
    Blake2b512,
    /// BLAKE2s-256.
    Blake2s256,
    /// SM3.
    Sm3,
}

/// Every supported hash, with cryptsetup's name.
pub const ALL: [(Hash, &str); 13] = [
    (Hash::Sha1, "sha1"),
    (Hash::Sha224, "sha224"),
    (Hash::Sha256, "sha256"),
    (Hash::Sha384, "sha384"),
    (Hash::Sha512, "sha512"),
    (Hash::Sha3_256, "sha3-256"),
    (Hash::Sha3_384, "sha3-384"),
    (Hash::Sha3_512, "sha3-512"),
    (Hash::Ripemd160, "ripemd160"),
    (Hash::Whirlpool, "whirlpool"),
    (Hash::Blake2b512, "blake2b-512"),
    (Hash::Blake2s256, "blake2s-256"),
    (Hash::Sm3, "sm3"),
];

/// Runs `$body` with `$t` bound to the RustCrypto type of `$hash`.
macro_rules! with_hash {
    ($hash:expr, $t:ident => $body:expr) => {
        match $hash {
            Hash::Sha1 => {
                type $t = Sha1;
                $body
            }
            Hash::Sha224 => {
                type $t = Sha224;
                $body
            }
            Hash::Sha256 => {
                type $t = Sha256;
                $body
            }
            Hash::Sha384 => {
                type $t = Sha384;
                $body
            }
            Hash::Sha512 => {
                type $t = Sha512;
                $body
            }
            Hash::Sha3_256 => {
                type $t = Sha3_256;
                $body
            }
            Hash::Sha3_384 => {
                type $t = Sha3_384;
                $body
            }
            Hash::Sha3_512 => {
                type $t = Sha3_512;
                $body
            }
            Hash::Ripemd160 => {
                type $t = Ripemd160;
                $body
            }
            Hash::Whirlpool => {
                type $t = Whirlpool;
                $body
            }
            Hash::Blake2b512 => {
                type $t = Blake2b512;
                $body
            }
            Hash::Blake2s256 => {
                type $t = Blake2s256;
                $body
            }
            Hash::Sm3 => {
                type $t = Sm3;
                $body
            }
        }
    };
}

impl Hash {
    /// Parses cryptsetup's name for the hash (case-insensitive).
    pub fn parse(name: &str) -> Result<Hash> {
        let lower = name.to_ascii_lowercase();
        ALL.iter()
            .find(|(_, n)| *n == lower)
            .map(|(h, _)| *h)
            .ok_or_else(|| {
                Error::unsupported(format!("unsupported hash {name:?}")).hint(format!(
                    "diskseal supports {}",
                    ALL.iter().map(|(_, n)| *n).collect::<Vec<_>>().join(", ")
                ))
            })
    }

    /// cryptsetup's name for the hash.
    pub fn name(self) -> &'static str {
        ALL.iter().find(|(h, _)| *h == self).map_or("?", |(_, n)| n)
    }

    /// Digest length in bytes.
    pub fn output_len(self) -> usize {
        with_hash!(self, H => <H as Digest>::output_size())
    }

    /// The digest of the concatenation of `parts`.
    pub fn digest(self, parts: &[&[u8]]) -> Vec<u8> {
        with_hash!(self, H => {
            let mut h = H::new();
            for p in parts {
                Digest::update(&mut h, p);
            }
            h.finalize().to_vec()
        })
    }

    /// PBKDF2-HMAC with this hash, filling `out`.
    pub fn pbkdf2(self, password: &[u8], salt: &[u8], iterations: u32, out: &mut [u8]) {
        // BLAKE2's lazy buffering rules out the precomputed `Hmac`; `SimpleHmac` computes the same MAC.
        // HMAC accepts keys of any length, so the generic `pbkdf2` cannot fail here.
        const ANY_KEY: &str = "HMAC accepts keys of any length";
        match self {
            Hash::Blake2b512 => {
                pbkdf2::pbkdf2::<hmac::SimpleHmac<Blake2b512>>(password, salt, iterations, out)
                    .expect(ANY_KEY)
            }
            Hash::Blake2s256 => {
                pbkdf2::pbkdf2::<hmac::SimpleHmac<Blake2s256>>(password, salt, iterations, out)
                    .expect(ANY_KEY)
            }
            Hash::Sha1 => pbkdf2::pbkdf2_hmac::<Sha1>(password, salt, iterations, out),
            Hash::Sha224 => pbkdf2::pbkdf2_hmac::<Sha224>(password, salt, iterations, out),
            Hash::Sha256 => pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, out),
            Hash::Sha384 => pbkdf2::pbkdf2_hmac::<Sha384>(password, salt, iterations, out),
            Hash::Sha512 => pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, iterations, out),
            Hash::Sha3_256 => pbkdf2::pbkdf2_hmac::<Sha3_256>(password, salt, iterations, out),
            Hash::Sha3_384 => pbkdf2::pbkdf2_hmac::<Sha3_384>(password, salt, iterations, out),
            Hash::Sha3_512 => pbkdf2::pbkdf2_hmac::<Sha3_512>(password, salt, iterations, out),
            Hash::Ripemd160 => pbkdf2::pbkdf2_hmac::<Ripemd160>(password, salt, iterations, out),
            Hash::Whirlpool => pbkdf2::pbkdf2_hmac::<Whirlpool>(password, salt, iterations, out),
            Hash::Sm3 => pbkdf2::pbkdf2_hmac::<Sm3>(password, salt, iterations, out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc6070_pbkdf2_sha1() {
        // RFC 6070 test case 2: P="password", S="salt", c=2, dkLen=20.
        let mut out = [0u8; 20];
        Hash::Sha1.pbkdf2(b"password", b"salt", 2, &mut out);
        assert_eq!(hex(&out), "ea6c014dc72d6f8ccd1ed92ace1d41f0d8de8957");
    }

    #[test]
    fn sha256_of_abc() {
        // FIPS 180-2 appendix B.1.
        assert_eq!(
            hex(&Hash::Sha256.digest(&[b"a", b"bc"])),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn names_round_trip() {
        for (h, _) in ALL {
            assert_eq!(Hash::parse(h.name()).unwrap(), h);
            assert_eq!(h.digest(&[b""]).len(), h.output_len());
        }
        assert!(Hash::parse("stribog512").is_err());
        assert!(Hash::parse("md5").is_err());
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }
}
