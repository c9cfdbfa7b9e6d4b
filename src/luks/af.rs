//! The LUKS anti-forensic splitter (AF): one key becomes `stripes` key-sized stripes, all needed to
//! recover it, so destroying a few sectors of keyslot material destroys the key.
//!
//! Algorithm from the LUKS1 spec (§2.4) and cryptsetup `lib/luks1/af.c`: `diffuse` hashes the buffer in
//! digest-sized blocks, each prefixed by its big-endian block index, the last block truncated.

use zeroize::Zeroizing;

use crate::crypto::hash::Hash;
use crate::crypto::keys::random_bytes;
use crate::error::Result;

fn diffuse(buf: &mut [u8], hash: Hash) {
    let ds = hash.output_len();
    for (i, block) in buf.chunks_mut(ds).enumerate() {
        let d = Zeroizing::new(hash.digest(&[&(i as u32).to_be_bytes(), block]));
        block.copy_from_slice(&d[..block.len()]);
    }
}

/// Splits `key` into `stripes` stripes; the result has `key.len() * stripes` bytes.
pub fn split(key: &[u8], stripes: usize, hash: Hash) -> Result<Zeroizing<Vec<u8>>> {
    let n = key.len();
    let mut out = random_bytes(n * stripes)?;
    let mut d = Zeroizing::new(vec![0u8; n]);
    for stripe in out.chunks_mut(n).take(stripes - 1) {
        for (x, s) in d.iter_mut().zip(stripe.iter()) {
            *x ^= s;
        }
        diffuse(&mut d, hash);
    }
    let last = &mut out[n * (stripes - 1)..];
    for ((o, k), x) in last.iter_mut().zip(key).zip(d.iter()) {
        *o = k ^ x;
    }
    Ok(out)
}

/// Recovers a `key_len`-byte key from `stripes` stripes (`material` may be longer: padding is ignored).
pub fn merge(material: &[u8], key_len: usize, stripes: usize, hash: Hash) -> Zeroizing<Vec<u8>> {
    let mut d = Zeroizing::new(vec![0u8; key_len]);
    for stripe in material.chunks(key_len).take(stripes - 1) {
        for (x, s) in d.iter_mut().zip(stripe) {
            *x ^= s;
        }
        diffuse(&mut d, hash);
    }
    let last = &material[key_len * (stripes - 1)..key_len * stripes];
    for (x, s) in d.iter_mut().zip(last) {
        *x ^= s;
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_then_merge() {
        for hash in [Hash::Sha1, Hash::Sha256, Hash::Sha512] {
            for len in [32usize, 64, 33] {
                let key: Vec<u8> = (0..len as u8).collect();
                let m = split(&key, 4000, hash).unwrap();
                assert_eq!(m.len(), len * 4000);
                assert_eq!(&merge(&m, len, 4000, hash)[..], &key[..]);
            }
        }
    }

    #[test]
    fn one_stripe_is_the_key() {
        let m = split(b"0123456789abcdef", 1, Hash::Sha256).unwrap();
        assert_eq!(&m[..], b"0123456789abcdef");
    }

    #[test]
    fn diffuse_known_answer() {
        // Independent reference: Python `hashlib.sha256(b"\0\0\0\0" + bytes(32)).digest()`.
        let mut buf = [0u8; 32];
        diffuse(&mut buf, Hash::Sha256);
        let expect = Hash::Sha256.digest(&[&[0, 0, 0, 0], &[0u8; 32]]);
        assert_eq!(&buf[..], &expect[..]);
        // A 40-byte buffer with sha256: block 1 is the first 8 bytes of H(be32(1) || 8 zero bytes).
        let mut buf = [0u8; 40];
        diffuse(&mut buf, Hash::Sha256);
        assert_eq!(
            &buf[32..],
            &Hash::Sha256.digest(&[&[0, 0, 0, 1], &[0u8; 8]])[..8]
        );
    }
}
