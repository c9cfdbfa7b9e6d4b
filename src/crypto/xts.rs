//! Our AES-XTS engine (IEEE Std 1619-2007), AES-128-XTS and AES-256-XTS, for data units of 512 to
//! 4096 bytes.
//!
//! Why our own: the `xts-mode` crate runs one 16-byte block at a time, so it cannot use the `aes` crate's
//! wide AES-NI/VAES paths (measured 3.3× slower in `formats.md` §6). Here each batch of up to 4 KiB is
//! processed in three passes: compute every block's tweak (the tweak start of each unit is encrypted in one
//! call, then doubled in GF(2^128) as a `u128`), XOR, one `encrypt_blocks` call over the whole batch, XOR.
//!
//! Key layout follows Linux/OpenSSL: the first half of the key is the data key (K1), the second half the
//! tweak key (K2). Data units are multiples of 16 bytes, so ciphertext stealing is never needed.

use aes::cipher::{BlockCipherDecrypt, BlockCipherEncrypt, KeyInit};
use aes::{Aes128, Aes256, Block};

use crate::crypto::iv::IvScheme;
use crate::error::{Error, Result};

/// Bytes processed per batch: one 4096-byte unit or eight 512-byte ones.
const BATCH_BYTES: usize = 4096;
const BATCH_BLOCKS: usize = BATCH_BYTES / 16;

/// One AES key schedule of either size.
enum Aes {
    A128(Aes128),
    A256(Aes256),
}

impl Aes {
    fn new(key: &[u8]) -> Result<Self> {
        let bad = |_| Error::invalid(format!("AES key of {} bytes", key.len()));
        Ok(match key.len() {
            16 => Aes::A128(Aes128::new_from_slice(key).map_err(bad)?),
            _ => Aes::A256(Aes256::new_from_slice(key).map_err(bad)?),
        })
    }

    fn encrypt(&self, blocks: &mut [Block]) {
        match self {
            Aes::A128(c) => c.encrypt_blocks(blocks),
            Aes::A256(c) => c.encrypt_blocks(blocks),
        }
    }

    fn decrypt(&self, blocks: &mut [Block]) {
        match self {
            Aes::A128(c) => c.decrypt_blocks(blocks),
            Aes::A256(c) => c.decrypt_blocks(blocks),
        }
    }
}

/// An AES-XTS key (both halves), ready to encrypt or decrypt runs of data units.
///
/// The key schedules are zeroized on drop (the `aes` crate's `zeroize` feature).
pub struct Xts {
    data: Aes,
    tweak: Aes,
    key_bytes: usize,
    /// The data key for the fused AVX-512 VAES kernel, when this CPU runs it.
    #[cfg(target_arch = "x86_64")]
    fast: Option<super::vaes::Keys>,
}

impl std::fmt::Debug for Xts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Xts {{ key_bits: {} }}", self.key_bytes * 8)
    }
}

/// Multiplies a tweak by x in GF(2^128) (IEEE 1619 little-endian convention).
#[inline(always)]
pub(super) fn double(t: u128) -> u128 {
    (t << 1) ^ ((t >> 127) * 0x87)
}

/// `REDUCE8[h]` is the carry-less product `h · 0x87`: what the 8 bits shifted out by a multiplication by
/// x^8 fold back into the low bits (the product has at most 15 bits, so no second reduction is needed).
const REDUCE8: [u16; 256] = {
    let mut t = [0u16; 256];
    let mut h = 0;
    while h < 256 {
        let mut acc = 0u16;
        let mut bit = 0;
        while bit < 8 {
            if h & (1 << bit) != 0 {
                acc ^= 0x87 << bit;
            }
            bit += 1;
        }
        t[h] = acc;
        h += 1;
    }
    t
};

/// Multiplies a tweak by x^8 in GF(2^128).
#[inline(always)]
fn times_x8(t: u128) -> u128 {
    (t << 8) ^ u128::from(REDUCE8[(t >> 120) as usize])
}

/// Fills `out` with `t0 · x^j`. The first eight are doubled serially; every later one is eight steps
/// after an earlier one, so eight independent chains keep the CPU busy instead of one long dependency.
#[inline(always)]
fn fill_tweaks(out: &mut [u128], t0: u128) {
    let mut t = t0;
    for slot in out.iter_mut().take(8) {
        *slot = t;
        t = double(t);
    }
    for j in 8..out.len() {
        out[j] = times_x8(out[j - 8]);
    }
}

/// An implementation of the XTS engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// The fused kernel in 512-bit registers (AVX-512F/BW, VAES, VPCLMULQDQ).
    Avx512Vaes,
    /// The fused kernel in 256-bit registers (AVX2, VAES, VPCLMULQDQ).
    Avx2Vaes,
    /// Tweaks in memory and the `aes` crate's block functions (which use AES-NI or VAES when present).
    Portable,
}

impl Engine {
    /// Every implementation this CPU runs, fastest first; the last is always [`Engine::Portable`].
    pub fn available() -> Vec<Engine> {
        let mut v = Vec::new();
        #[cfg(target_arch = "x86_64")]
        match super::vaes::supported() {
            Some(super::vaes::Width::Zmm) => v.extend([Engine::Avx512Vaes, Engine::Avx2Vaes]),
            Some(super::vaes::Width::Ymm) => v.push(Engine::Avx2Vaes),
            None => {}
        }
        v.push(Engine::Portable);
        v
    }

    /// A short name: `avx512-vaes`, `avx2-vaes` or `portable`.
    pub fn name(self) -> &'static str {
        match self {
            Engine::Avx512Vaes => "avx512-vaes",
            Engine::Avx2Vaes => "avx2-vaes",
            Engine::Portable => "portable",
        }
    }
}

#[derive(Clone, Copy)]
enum Direction {
    Encrypt,
    Decrypt,
}

impl Xts {
    /// Builds the engine from a 32-byte (AES-128-XTS) or 64-byte (AES-256-XTS) key, with the fastest
    /// implementation this CPU runs.
    pub fn new(key: &[u8]) -> Result<Self> {
        for engine in Engine::available() {
            if let Some(x) = Self::with_engine(key, engine)? {
                return Ok(x);
            }
        }
        // Not reached: the portable engine runs everywhere.
        Err(Error::invalid("no AES-XTS implementation runs on this CPU"))
    }

    /// Builds the engine with a chosen implementation, or `None` when this CPU cannot run it (for
    /// differential tests and benches).
    pub fn with_engine(key: &[u8], engine: Engine) -> Result<Option<Self>> {
        if key.len() != 32 && key.len() != 64 {
            return Err(Error::invalid(format!(
                "AES-XTS key must be 32 or 64 bytes, got {} bytes",
                key.len()
            )));
        }
        let (k1, k2) = key.split_at(key.len() / 2);
        #[cfg(target_arch = "x86_64")]
        let fast = match engine {
            Engine::Portable => None,
            Engine::Avx512Vaes | Engine::Avx2Vaes => {
                let width = if engine == Engine::Avx512Vaes {
                    super::vaes::Width::Zmm
                } else {
                    super::vaes::Width::Ymm
                };
                match super::vaes::Keys::with_width(k1, width) {
                    Some(k) => Some(k),
                    None => return Ok(None),
                }
            }
        };
        #[cfg(not(target_arch = "x86_64"))]
        if engine != Engine::Portable {
            return Ok(None);
        }
        Ok(Some(Xts {
            data: Aes::new(k1)?,
            tweak: Aes::new(k2)?,
            key_bytes: key.len(),
            #[cfg(target_arch = "x86_64")]
            fast,
        }))
    }

    /// The implementation in use.
    pub fn engine(&self) -> Engine {
        #[cfg(target_arch = "x86_64")]
        if let Some(k) = &self.fast {
            return match k.width() {
                super::vaes::Width::Zmm => Engine::Avx512Vaes,
                super::vaes::Width::Ymm => Engine::Avx2Vaes,
            };
        }
        Engine::Portable
    }

    /// Key size in bytes (32 or 64).
    pub fn key_bytes(&self) -> usize {
        self.key_bytes
    }

    /// Encrypts `buf` in place as consecutive data units of `unit` bytes. Unit `i` gets the tweak
    /// `iv.iv(first_sector + i * unit / 512)`: positions always count 512-byte sectors.
    pub fn encrypt(
        &self,
        buf: &mut [u8],
        unit: usize,
        first_sector: u64,
        iv: IvScheme,
    ) -> Result<()> {
        self.crypt(buf, unit, first_sector, iv, Direction::Encrypt)
    }

    /// Decrypts `buf` in place; the inverse of [`Xts::encrypt`] with the same arguments.
    pub fn decrypt(
        &self,
        buf: &mut [u8],
        unit: usize,
        first_sector: u64,
        iv: IvScheme,
    ) -> Result<()> {
        self.crypt(buf, unit, first_sector, iv, Direction::Decrypt)
    }

    /// Encrypts exactly one data unit (`buf.len()` a multiple of 16, at most 4096) whose tweak input is
    /// `tweak` (the IEEE 1619 "data unit sequence number", little-endian).
    pub fn encrypt_unit(&self, buf: &mut [u8], tweak: u128) -> Result<()> {
        self.check_unit(buf.len())?;
        self.crypt_units(buf, buf.len(), |_| tweak, Direction::Encrypt);
        Ok(())
    }

    /// Decrypts exactly one data unit; the inverse of [`Xts::encrypt_unit`].
    pub fn decrypt_unit(&self, buf: &mut [u8], tweak: u128) -> Result<()> {
        self.check_unit(buf.len())?;
        self.crypt_units(buf, buf.len(), |_| tweak, Direction::Decrypt);
        Ok(())
    }

    fn check_unit(&self, len: usize) -> Result<()> {
        if len == 0 || !len.is_multiple_of(16) || len > BATCH_BYTES {
            return Err(Error::invalid(format!(
                "XTS data unit of {len} bytes is not a multiple of 16 up to 4096"
            )));
        }
        Ok(())
    }

    fn crypt(
        &self,
        buf: &mut [u8],
        unit: usize,
        first_sector: u64,
        iv: IvScheme,
        dir: Direction,
    ) -> Result<()> {
        if !matches!(unit, 512 | 1024 | 2048 | 4096) {
            return Err(Error::invalid(format!(
                "XTS data unit must be 512, 1024, 2048 or 4096 bytes, got {unit}"
            )));
        }
        if !buf.len().is_multiple_of(unit) {
            return Err(Error::invalid(format!(
                "XTS buffer of {} bytes is not a whole number of {unit}-byte data units",
                buf.len()
            )));
        }
        let step = (unit / 512) as u64;
        self.crypt_units(
            buf,
            unit,
            |i| iv.iv(first_sector.wrapping_add(i as u64 * step)),
            dir,
        );
        Ok(())
    }

    /// The engine: `buf` is whole units of `unit` bytes (multiple of 16, at most [`BATCH_BYTES`]); unit `i`
    /// (counted from the start of `buf`) has tweak input `tweak_of(i)`.
    fn crypt_units(
        &self,
        buf: &mut [u8],
        unit: usize,
        tweak_of: impl Fn(usize) -> u128,
        dir: Direction,
    ) {
        let blocks_per_unit = unit / 16;
        let units_per_batch = BATCH_BYTES / unit;
        let mut starts = [Block::default(); BATCH_BLOCKS];
        let mut tweaks = [0u128; BATCH_BLOCKS];
        for (b, batch) in buf.chunks_mut(units_per_batch * unit).enumerate() {
            let units = batch.len() / unit;
            // Tweak starts: T = AES-enc(K2, IV) for every unit of the batch, in one call.
            for (u, start) in starts[..units].iter_mut().enumerate() {
                *start = Block::from(tweak_of(b * units_per_batch + u).to_le_bytes());
            }
            self.tweak.encrypt(&mut starts[..units]);
            #[cfg(target_arch = "x86_64")]
            if let Some(keys) = &self.fast
                && unit.is_multiple_of(512)
            {
                let mut t = [0u128; BATCH_BYTES / 512];
                for (t, s) in t.iter_mut().zip(&starts[..units]) {
                    *t = u128::from_le_bytes(s.0);
                }
                let encrypt = matches!(dir, Direction::Encrypt);
                super::vaes::crypt(keys, batch, unit, &t[..units], encrypt);
                continue;
            }
            for (u, start) in starts[..units].iter().enumerate() {
                fill_tweaks(
                    &mut tweaks[u * blocks_per_unit..(u + 1) * blocks_per_unit],
                    u128::from_le_bytes(start.0),
                );
            }
            let tweaks = &tweaks[..batch.len() / 16];
            xor_tweaks(batch, tweaks);
            let (blocks, _) = Block::slice_as_chunks_mut(batch);
            match dir {
                Direction::Encrypt => self.data.encrypt(blocks),
                Direction::Decrypt => self.data.decrypt(blocks),
            }
            xor_tweaks(batch, tweaks);
        }
    }
}

#[inline(always)]
fn xor_tweaks(batch: &mut [u8], tweaks: &[u128]) {
    let (blocks, _) = batch.as_chunks_mut::<16>();
    for (block, t) in blocks.iter_mut().zip(tweaks) {
        *block = (u128::from_le_bytes(*block) ^ t).to_le_bytes();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_x8_is_eight_doublings() {
        let mut t = 0x8000_0000_0000_0000_0000_0000_0000_0001u128 ^ 0xdead_beef << 64;
        for _ in 0..1000 {
            let mut d = t;
            for _ in 0..8 {
                d = double(d);
            }
            assert_eq!(times_x8(t), d);
            t = t.wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835) ^ (t >> 61);
        }
        let mut tw = [0u128; 40];
        fill_tweaks(&mut tw, 3);
        let mut d = 3u128;
        for x in tw {
            assert_eq!(x, d);
            d = double(d);
        }
    }

    #[test]
    fn rejects_bad_sizes() {
        assert!(Xts::new(&[0u8; 48]).is_err());
        let x = Xts::new(&[1u8; 64]).unwrap();
        let mut buf = vec![0u8; 1000];
        assert!(x.encrypt(&mut buf, 512, 0, IvScheme::Plain64).is_err());
        assert!(
            x.encrypt(&mut buf[..512], 256, 0, IvScheme::Plain64)
                .is_err()
        );
    }

    #[test]
    fn round_trip_all_unit_sizes() {
        for key_len in [32, 64] {
            let key: Vec<u8> = (0..key_len as u8).collect();
            let x = Xts::new(&key).unwrap();
            for unit in [512, 1024, 2048, 4096] {
                let plain: Vec<u8> = (0..3 * 4096).map(|i| (i * 7 % 251) as u8).collect();
                let mut buf = plain.clone();
                x.encrypt(&mut buf, unit, 77, IvScheme::Plain64).unwrap();
                assert_ne!(buf, plain);
                x.decrypt(&mut buf, unit, 77, IvScheme::Plain64).unwrap();
                assert_eq!(buf, plain);
            }
        }
    }

    #[test]
    fn units_are_independent_of_batching() {
        // Encrypting 8 units at once equals encrypting each unit alone at its own sector.
        let x = Xts::new(&[9u8; 64]).unwrap();
        let plain: Vec<u8> = (0..8192).map(|i| (i % 253) as u8).collect();
        let mut all = plain.clone();
        x.encrypt(&mut all, 512, 1000, IvScheme::Plain64).unwrap();
        for (i, chunk) in plain.chunks(512).enumerate() {
            let mut one = chunk.to_vec();
            x.encrypt(&mut one, 512, 1000 + i as u64, IvScheme::Plain64)
                .unwrap();
            assert_eq!(one, all[i * 512..(i + 1) * 512]);
        }
    }
}
