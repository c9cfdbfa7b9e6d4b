//! The AVX-512 VAES kernel of the XTS engine: XOR-encrypt-XOR of whole data units with the tweaks and the
//! data in 512-bit registers (four AES blocks each), the tweaks made in the registers with VPCLMULQDQ.
//!
//! Why: the `aes` crate already uses VAES, but [`super::xts`]'s portable path must write the tweaks to
//! memory and make three passes over each batch (XOR, `encrypt_blocks`, XOR). Fusing them keeps the AES
//! units busy; see `benches/xts.rs` for the figures. Used only when the CPU has AVX-512F, AVX-512BW, VAES
//! and VPCLMULQDQ (checked at run time by [`Keys::new`]); the portable path serves every other CPU and the
//! tests run both on the same vectors.
//!
//! Round keys are expanded with AES-NI's `aeskeygenassist` (FIPS-197 §5.2) and wiped on drop.
#![allow(unsafe_code)]

use std::arch::x86_64::*;

/// Expanded AES round keys for encryption and for the equivalent inverse cipher (FIPS-197 §5.3.5).
pub(crate) struct Keys {
    enc: [__m128i; 15],
    dec: [__m128i; 15],
    /// Number of rounds: 10 (AES-128) or 14 (AES-256).
    rounds: usize,
}

impl Drop for Keys {
    fn drop(&mut self) {
        for k in self.enc.iter_mut().chain(self.dec.iter_mut()) {
            // SAFETY: `k` is a valid, aligned, exclusively borrowed __m128i; a volatile write keeps the
            // compiler from dropping the wipe as a dead store.
            unsafe { std::ptr::write_volatile(k, _mm_setzero_si128()) };
        }
    }
}

/// True when this CPU runs the kernel.
fn supported() -> bool {
    std::arch::is_x86_feature_detected!("aes")
        && std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("vaes")
        && std::arch::is_x86_feature_detected!("vpclmulqdq")
}

impl Keys {
    /// Expands a 16- or 32-byte AES key, or returns `None` when the CPU lacks the needed features.
    pub(crate) fn new(key: &[u8]) -> Option<Keys> {
        if !supported() {
            return None;
        }
        // SAFETY: `supported()` confirmed AES-NI; the key length is checked inside.
        unsafe { expand(key) }
    }
}

/// One key-expansion step: XORs the prefix sums of round key `prev`'s words with `assist` (the
/// `aeskeygenassist` word broadcast to all four lanes).
#[inline]
#[target_feature(enable = "sse2")]
fn step(prev: __m128i, assist: __m128i) -> __m128i {
    let mut k = prev;
    k = _mm_xor_si128(k, _mm_slli_si128::<4>(k));
    k = _mm_xor_si128(k, _mm_slli_si128::<4>(k));
    k = _mm_xor_si128(k, _mm_slli_si128::<4>(k));
    _mm_xor_si128(k, assist)
}

#[target_feature(enable = "aes")]
fn expand(key: &[u8]) -> Option<Keys> {
    macro_rules! assist {
        ($k:expr, $rcon:literal, $lane:literal) => {
            _mm_shuffle_epi32::<$lane>(_mm_aeskeygenassist_si128::<$rcon>($k))
        };
    }
    let mut enc = [_mm_setzero_si128(); 15];
    let rounds = match key.len() {
        16 => {
            // SAFETY: `key` is 16 bytes; unaligned loads are allowed.
            enc[0] = unsafe { _mm_loadu_si128(key.as_ptr().cast()) };
            enc[1] = step(enc[0], assist!(enc[0], 0x01, 0xff));
            enc[2] = step(enc[1], assist!(enc[1], 0x02, 0xff));
            enc[3] = step(enc[2], assist!(enc[2], 0x04, 0xff));
            enc[4] = step(enc[3], assist!(enc[3], 0x08, 0xff));
            enc[5] = step(enc[4], assist!(enc[4], 0x10, 0xff));
            enc[6] = step(enc[5], assist!(enc[5], 0x20, 0xff));
            enc[7] = step(enc[6], assist!(enc[6], 0x40, 0xff));
            enc[8] = step(enc[7], assist!(enc[7], 0x80, 0xff));
            enc[9] = step(enc[8], assist!(enc[8], 0x1b, 0xff));
            enc[10] = step(enc[9], assist!(enc[9], 0x36, 0xff));
            10
        }
        32 => {
            // SAFETY: `key` is 32 bytes; unaligned loads are allowed.
            unsafe {
                enc[0] = _mm_loadu_si128(key.as_ptr().cast());
                enc[1] = _mm_loadu_si128(key.as_ptr().add(16).cast());
            }
            // Even round keys take RotWord+SubWord+Rcon of the previous key's last word (lane 3),
            // odd ones SubWord alone (lane 2 of an rcon-0 assist).
            enc[2] = step(enc[0], assist!(enc[1], 0x01, 0xff));
            enc[3] = step(enc[1], assist!(enc[2], 0x00, 0xaa));
            enc[4] = step(enc[2], assist!(enc[3], 0x02, 0xff));
            enc[5] = step(enc[3], assist!(enc[4], 0x00, 0xaa));
            enc[6] = step(enc[4], assist!(enc[5], 0x04, 0xff));
            enc[7] = step(enc[5], assist!(enc[6], 0x00, 0xaa));
            enc[8] = step(enc[6], assist!(enc[7], 0x08, 0xff));
            enc[9] = step(enc[7], assist!(enc[8], 0x00, 0xaa));
            enc[10] = step(enc[8], assist!(enc[9], 0x10, 0xff));
            enc[11] = step(enc[9], assist!(enc[10], 0x00, 0xaa));
            enc[12] = step(enc[10], assist!(enc[11], 0x20, 0xff));
            enc[13] = step(enc[11], assist!(enc[12], 0x00, 0xaa));
            enc[14] = step(enc[12], assist!(enc[13], 0x40, 0xff));
            14
        }
        _ => return None,
    };
    let mut dec = [_mm_setzero_si128(); 15];
    dec[0] = enc[rounds];
    for i in 1..rounds {
        dec[i] = _mm_aesimc_si128(enc[rounds - i]);
    }
    dec[rounds] = enc[0];
    Some(Keys { enc, dec, rounds })
}

/// Multiplies each 128-bit lane by x^K in GF(2^128) (IEEE 1619 little-endian), for 0 < K < 57: the bits
/// shifted out of the low half carry into the high half; those shifted out of the high half fold back
/// as their carry-less product with 0x87 (at most K + 7 bits, so no second reduction).
/// `R` must be `64 - K`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,vpclmulqdq")]
fn times_xk<const K: u32, const R: u32>(t: __m512i, poly: __m512i) -> __m512i {
    let out = _mm512_srli_epi64::<R>(t);
    let shifted = _mm512_slli_epi64::<K>(t);
    let carry_up = _mm512_bslli_epi128::<8>(out);
    let folded = _mm512_clmulepi64_epi128::<0x01>(out, poly);
    _mm512_ternarylogic_epi64::<0x96>(shifted, carry_up, folded)
}

/// Encrypts (or decrypts) `buf` in place as units of `unit` bytes; unit `i` starts with the
/// already-encrypted tweak `starts[i]`.
///
/// # Panics
/// When `unit` is not a non-zero multiple of 512 or `buf` is not `starts.len()` units.
pub(crate) fn crypt(keys: &Keys, buf: &mut [u8], unit: usize, starts: &[u128], encrypt: bool) {
    assert!(unit > 0 && unit.is_multiple_of(512) && buf.len() == starts.len() * unit);
    // SAFETY: a `Keys` exists only when `supported()` said the CPU has every feature `kernel` enables;
    // the lengths were checked above.
    unsafe { kernel(keys, buf, unit, starts, encrypt) }
}

#[target_feature(enable = "avx512f,avx512bw,vaes,vpclmulqdq")]
fn kernel(keys: &Keys, buf: &mut [u8], unit: usize, starts: &[u128], encrypt: bool) {
    // The round count as a constant lets the compiler unroll the rounds and keep the keys in registers.
    match (keys.rounds, encrypt) {
        (10, true) => units::<11, true>(&keys.enc, buf, unit, starts),
        (10, false) => units::<11, false>(&keys.dec, buf, unit, starts),
        (_, true) => units::<15, true>(&keys.enc, buf, unit, starts),
        (_, false) => units::<15, false>(&keys.dec, buf, unit, starts),
    }
}

/// [`kernel`] for `NK` round keys, encrypting when `ENC`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,vaes,vpclmulqdq")]
fn units<const NK: usize, const ENC: bool>(
    schedule: &[__m128i; 15],
    buf: &mut [u8],
    unit: usize,
    starts: &[u128],
) {
    let mut rk = [_mm512_setzero_si512(); NK];
    for (w, k) in rk.iter_mut().zip(schedule) {
        *w = _mm512_broadcast_i32x4(*k);
    }
    let poly = _mm512_set_epi64(0, 0x87, 0, 0x87, 0, 0x87, 0, 0x87);
    for (data, &start) in buf.chunks_exact_mut(unit).zip(starts) {
        // Lanes of register j hold the tweaks of blocks 4j..4j+3; the first register is made in scalar
        // code, the next seven step by x^4, and every later group of eight steps by x^32 from the group
        // before, so the eight chains are independent.
        let t1 = super::xts::double(start);
        let t2 = super::xts::double(t1);
        let t3 = super::xts::double(t2);
        let lanes = [start, t1, t2, t3];
        // SAFETY: `lanes` is 64 readable bytes; unaligned loads are allowed.
        let mut tweaks = [unsafe { _mm512_loadu_si512(lanes.as_ptr().cast()) }; 8];
        for j in 1..8 {
            tweaks[j] = times_xk::<4, 60>(tweaks[j - 1], poly);
        }
        for (g, group) in data.chunks_exact_mut(512).enumerate() {
            if g > 0 {
                for t in tweaks.iter_mut() {
                    *t = times_xk::<32, 32>(*t, poly);
                }
            }
            let ptr = group.as_mut_ptr();
            let mut x = [_mm512_setzero_si512(); 8];
            for j in 0..8 {
                // SAFETY: `group` is 512 bytes, so bytes 64j..64j+64 are in bounds; unaligned load.
                let block = unsafe { _mm512_loadu_si512(ptr.add(64 * j).cast()) };
                x[j] = _mm512_ternarylogic_epi64::<0x96>(block, tweaks[j], rk[0]);
            }
            for k in &rk[1..NK - 1] {
                for v in x.iter_mut() {
                    *v = if ENC {
                        _mm512_aesenc_epi128(*v, *k)
                    } else {
                        _mm512_aesdec_epi128(*v, *k)
                    };
                }
            }
            for v in x.iter_mut() {
                *v = if ENC {
                    _mm512_aesenclast_epi128(*v, rk[NK - 1])
                } else {
                    _mm512_aesdeclast_epi128(*v, rk[NK - 1])
                };
            }
            for j in 0..8 {
                let out = _mm512_xor_si512(x[j], tweaks[j]);
                // SAFETY: as for the load above.
                unsafe { _mm512_storeu_si512(ptr.add(64 * j).cast(), out) };
            }
        }
    }
    // Round keys in registers die with the frame; wipe the broadcast copies on the stack.
    for w in rk.iter_mut() {
        // SAFETY: `w` is a valid, aligned, exclusively borrowed local.
        unsafe { std::ptr::write_volatile(w, _mm512_setzero_si512()) };
    }
}
