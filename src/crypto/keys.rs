//! Secret types: the volume key (the LUKS master key / DEK) and passphrases.
//!
//! Both hold their bytes in [`Zeroizing`] buffers, are read only through `expose()`, and print as
//! `<redacted>` in `Debug`, so they cannot leak through logs or error messages.

use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// Fills a fresh buffer from the operating system's CSPRNG.
pub fn random_bytes(len: usize) -> Result<Zeroizing<Vec<u8>>> {
    let mut buf = Zeroizing::new(vec![0u8; len]);
    getrandom::fill(&mut buf).map_err(|e| {
        Error::new(
            crate::ErrorKind::Io,
            format!("OS random generator failed: {e}"),
        )
    })?;
    Ok(buf)
}

/// Bytes that cannot be told from random ones, for the unused LUKS keyslot areas that cryptsetup fills
/// with random data so that they look used: AES-256-XTS of zeros under a fresh random key, each
/// 512-byte sector with its own number (and the OS generator for a tail shorter than a sector). Our
/// engine makes the 16 MiB of a LUKS2 keyslots area in about a millisecond; the kernel's generator took
/// 50 ms here, 7% of a 1 GiB encrypt. Never use it for keys or salts: those come from [`random_bytes`].
#[derive(Debug)]
pub struct Filler(crate::crypto::xts::Xts);

impl Filler {
    /// A filler with a fresh random key.
    pub fn new() -> Result<Filler> {
        let key = VolumeKey::generate(64)?;
        Ok(Filler(crate::crypto::xts::Xts::new(key.expose())?))
    }

    /// Fills `buf` with the filler's bytes `at..at + buf.len()` (`at` a multiple of 512: the pieces of
    /// one area, filled in any order, never repeat each other).
    pub fn fill(&self, buf: &mut [u8], at: u64) -> Result<()> {
        buf.fill(0);
        let whole = buf.len() / 512 * 512;
        self.0.encrypt(
            &mut buf[..whole],
            512,
            at / 512,
            crate::crypto::iv::IvScheme::Plain64,
        )?;
        let tail = random_bytes(buf.len() - whole)?;
        buf[whole..].copy_from_slice(&tail);
        Ok(())
    }
}

/// The key that encrypts the payload (LUKS "volume key"/"master key"): 32 or 64 bytes of AES-XTS key.
pub struct VolumeKey(Zeroizing<Vec<u8>>);

impl VolumeKey {
    /// A new random key of `len` bytes (32 or 64) whose two XTS halves differ.
    pub fn generate(len: usize) -> Result<Self> {
        check_len(len)?;
        loop {
            let bytes = random_bytes(len)?;
            if let Ok(key) = Self::from_bytes(bytes) {
                return Ok(key);
            }
        }
    }

    /// Wraps existing key bytes; refuses a wrong length or two identical XTS halves
    /// (OpenSSL and the kernel in FIPS mode reject K1 == K2).
    pub fn from_bytes(bytes: Zeroizing<Vec<u8>>) -> Result<Self> {
        check_len(bytes.len())?;
        let (k1, k2) = bytes.split_at(bytes.len() / 2);
        if k1 == k2 {
            return Err(Error::invalid(
                "the volume key's two XTS halves are identical, which XTS forbids",
            )
            .hint("use a key from `diskseal keygen` or another random source"));
        }
        Ok(VolumeKey(bytes))
    }

    /// The key bytes.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Key length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always false: a volume key has 32 or 64 bytes.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn check_len(len: usize) -> Result<()> {
    if len == 32 || len == 64 {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "volume key must be 32 or 64 bytes (AES-128/256-XTS), got {len}"
        )))
    }
}

impl std::fmt::Debug for VolumeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VolumeKey({} bits, <redacted>)", self.0.len() * 8)
    }
}

/// A keyslot passphrase: arbitrary bytes, used verbatim.
pub struct Passphrase(Zeroizing<Vec<u8>>);

impl Passphrase {
    /// Wraps passphrase bytes; an empty passphrase is refused.
    pub fn new(bytes: Zeroizing<Vec<u8>>) -> Result<Self> {
        if bytes.is_empty() {
            return Err(Error::invalid("the passphrase is empty")
                .hint("an empty key file cannot open a keyslot"));
        }
        Ok(Passphrase(bytes))
    }

    /// The passphrase bytes.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Passphrase(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_bytes() {
        let key = VolumeKey::generate(64).unwrap();
        let shown = format!("{key:?}");
        assert_eq!(shown, "VolumeKey(512 bits, <redacted>)");
        let pass = Passphrase::new(Zeroizing::new(b"hunter2".to_vec())).unwrap();
        assert!(!format!("{pass:?}").contains("hunter2"));
    }

    #[test]
    fn refuses_weak_keys() {
        assert!(VolumeKey::from_bytes(Zeroizing::new(vec![7u8; 64])).is_err());
        assert!(VolumeKey::from_bytes(Zeroizing::new(vec![7u8; 48])).is_err());
        assert!(Passphrase::new(Zeroizing::new(Vec::new())).is_err());
    }

    /// The filler looks random: every byte value about as often as the others, no repeated 16-byte
    /// block (within a piece or across two pieces of one area), a different stream each time, and a
    /// tail shorter than a sector filled too.
    #[test]
    fn filler_looks_random() {
        let filler = |n: usize| {
            let mut v = vec![0xeeu8; n];
            Filler::new().unwrap().fill(&mut v, 0).unwrap();
            v
        };
        let (a, b) = (filler(1 << 20), filler(1 << 20));
        assert_ne!(a, b);
        let mut counts = [0u32; 256];
        a.iter().for_each(|&x| counts[x as usize] += 1);
        // 4096 expected per value; 6 standard deviations is about 384.
        assert!(
            counts.iter().all(|&c| (3700..4500).contains(&c)),
            "{counts:?}"
        );
        let blocks: std::collections::HashSet<_> = a.chunks(16).collect();
        assert_eq!(blocks.len(), a.len() / 16);
        let t = filler(512 + 100);
        assert_ne!(&t[512..], &[0u8; 100][..]);
        // Two pieces of one area: the second is not the first again.
        let f = Filler::new().unwrap();
        let (mut p, mut q) = (vec![0u8; 4096], vec![0u8; 4096]);
        f.fill(&mut p, 0).unwrap();
        f.fill(&mut q, 4096).unwrap();
        let blocks: std::collections::HashSet<_> = p.chunks(16).chain(q.chunks(16)).collect();
        assert_eq!(blocks.len(), 2 * 4096 / 16);
    }
}
