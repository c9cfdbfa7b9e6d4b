//! The VAES kernels of the XTS engine: XOR-encrypt-XOR of whole data units with the tweaks and the data
//! in wide registers (AVX-512: four AES blocks each; AVX2: two), the tweaks made in the registers with
//! VPCLMULQDQ.
//!
//! Why: the `aes` crate already uses VAES, but [`super::xts`]'s portable path must write the tweaks to
//! memory and make three passes over each batch (XOR, `encrypt_blocks`, XOR). Fusing them keeps the AES
//! units busy; see `benches/xts.rs` for the figures. [`Keys::with_width`] refuses a kernel the CPU cannot run
//! (AVX-512F + AVX-512BW, else AVX2; both need VAES and VPCLMULQDQ), checked at run time; the portable path
//! serves every other CPU, and the tests run every engine the CPU has on the same vectors.
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
    /// The kernel this CPU runs.
    width: Width,
}

/// Register width of the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Width {
    /// AVX-512: four blocks per register, 32 registers.
    Zmm,
    /// AVX2 + VAES (e.g. Zen 3, Alder Lake): two blocks per register, 16 registers.
    Ymm,
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

/// The widest kernel this CPU runs, if any (a CPU with the 512-bit kernel also runs the 256-bit one).
pub(crate) fn supported() -> Option<Width> {
    use std::arch::is_x86_feature_detected as has;
    if !(has!("aes") && has!("vaes") && has!("vpclmulqdq")) {
        return None;
    }
    if has!("avx512f") && has!("avx512bw") {
        Some(Width::Zmm)
    } else if has!("avx2") {
        Some(Width::Ymm)
    } else {
        None
    }
}

impl Keys {
    /// Expands a 16- or 32-byte AES key for the kernel of `width`, or returns `None` when this CPU does
    /// not run it (a CPU with the 512-bit kernel also runs the 256-bit one).
    pub(crate) fn with_width(key: &[u8], width: Width) -> Option<Keys> {
        let best = supported()?;
        if best == Width::Ymm && width == Width::Zmm {
            return None;
        }
        // SAFETY: `supported()` confirmed AES-NI; the key length is checked inside.
        let (enc, dec, rounds) = unsafe { expand(key) }?;
        Some(Keys {
            enc,
            dec,
            rounds,
            width,
        })
    }

    /// The kernel's register width.
    pub(crate) fn width(&self) -> Width {
        self.width
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

/// The encryption and decryption round keys and the round count of a 16- or 32-byte key.
#[target_feature(enable = "aes")]
fn expand(key: &[u8]) -> Option<([__m128i; 15], [__m128i; 15], usize)> {
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
    Some((enc, dec, rounds))
}

/// Encrypts (or decrypts) `buf` in place as units of `unit` bytes; unit `i` starts with the
/// already-encrypted tweak `starts[i]`.
///
/// # Panics
/// When `unit` is not a non-zero multiple of 512 or `buf` is not `starts.len()` units.
pub(crate) fn crypt(keys: &Keys, buf: &mut [u8], unit: usize, starts: &[u128], encrypt: bool) {
    assert!(unit > 0 && unit.is_multiple_of(512) && buf.len() == starts.len() * unit);
    match keys.width {
        // SAFETY: `Keys::new` chose this width only after `supported()` found every feature the kernel
        // enables; the lengths were checked above.
        Width::Zmm => unsafe { zmm::kernel(keys, buf, unit, starts, encrypt) },
        // SAFETY: as above, for the 256-bit kernel's features.
        Width::Ymm => unsafe { ymm::kernel(keys, buf, unit, starts, encrypt) },
    }
}

/// One kernel per register width, from one body. In each, register `j` of a group holds the tweaks of
/// blocks `LANES*j ..`; the first register of a unit is made in scalar code, the next seven step by
/// x^LANES, and every later group of eight steps by x^(8*LANES) from the group before, so the eight
/// tweak chains are independent. The round count is a constant, so the rounds unroll.
macro_rules! wide_kernel {
    (
        $module:ident, $features:literal, $vec:ty, $lanes:literal, shift: $sh:ty,
        zero: $zero:ident, bcast: $bcast:ident, load: $load:ident, store: $store:ident, xor: $xor:ident,
        srli: $srli:ident, slli: $slli:ident, bslli: $bslli:ident, clmul: $clmul:ident,
        enc: $enc:ident, enclast: $enclast:ident, dec: $dec:ident, declast: $declast:ident,
        poly: $poly:expr
    ) => {
        mod $module {
            use super::*;

            /// Bytes per group: eight registers.
            const GROUP: usize = 8 * 16 * $lanes;

            /// Multiplies each 128-bit lane by x^K in GF(2^128) (IEEE 1619 little-endian), 0 < K < 57,
            /// `R = 64 - K`: the bits shifted out of the low half carry into the high half; those shifted
            /// out of the high half fold back as their carry-less product with 0x87 (at most K + 7 bits,
            /// so no second reduction).
            #[inline]
            #[target_feature(enable = $features)]
            fn times_xk<const K: $sh, const R: $sh>(t: $vec, poly: $vec) -> $vec {
                let out = $srli::<R>(t);
                let carry_up = $bslli::<8>(out);
                let folded = $clmul::<0x01>(out, poly);
                $xor($xor($slli::<K>(t), carry_up), folded)
            }

            #[target_feature(enable = $features)]
            pub(super) fn kernel(
                keys: &Keys,
                buf: &mut [u8],
                unit: usize,
                starts: &[u128],
                encrypt: bool,
            ) {
                match (keys.rounds, encrypt) {
                    (10, true) => units::<11, true>(&keys.enc, buf, unit, starts),
                    (10, false) => units::<11, false>(&keys.dec, buf, unit, starts),
                    (_, true) => units::<15, true>(&keys.enc, buf, unit, starts),
                    (_, false) => units::<15, false>(&keys.dec, buf, unit, starts),
                }
            }

            /// [`kernel`] for `NK` round keys, encrypting when `ENC`.
            #[inline]
            #[target_feature(enable = $features)]
            fn units<const NK: usize, const ENC: bool>(
                schedule: &[__m128i; 15],
                buf: &mut [u8],
                unit: usize,
                starts: &[u128],
            ) {
                let mut rk = [$zero(); NK];
                for (w, k) in rk.iter_mut().zip(schedule) {
                    *w = $bcast(*k);
                }
                let poly = $poly;
                for (data, &start) in buf.chunks_exact_mut(unit).zip(starts) {
                    let mut lanes = [start; $lanes];
                    for l in 1..$lanes {
                        lanes[l] = super::super::xts::double(lanes[l - 1]);
                    }
                    // SAFETY: `lanes` holds exactly one register's bytes; unaligned loads are allowed.
                    let mut tweaks = [unsafe { $load(lanes.as_ptr().cast()) }; 8];
                    for j in 1..8 {
                        tweaks[j] = times_xk::<$lanes, { 64 - $lanes }>(tweaks[j - 1], poly);
                    }
                    for (g, group) in data.chunks_exact_mut(GROUP).enumerate() {
                        if g > 0 {
                            for t in tweaks.iter_mut() {
                                *t = times_xk::<{ 8 * $lanes }, { 64 - 8 * $lanes }>(*t, poly);
                            }
                        }
                        let ptr = group.as_mut_ptr();
                        let mut x = [$zero(); 8];
                        for j in 0..8 {
                            // SAFETY: `group` is GROUP bytes, so register j's bytes are in bounds;
                            // unaligned load.
                            let block = unsafe { $load(ptr.add(16 * $lanes * j).cast()) };
                            x[j] = $xor($xor(block, tweaks[j]), rk[0]);
                        }
                        for k in &rk[1..NK - 1] {
                            for v in x.iter_mut() {
                                *v = if ENC { $enc(*v, *k) } else { $dec(*v, *k) };
                            }
                        }
                        for v in x.iter_mut() {
                            *v = if ENC {
                                $enclast(*v, rk[NK - 1])
                            } else {
                                $declast(*v, rk[NK - 1])
                            };
                        }
                        for j in 0..8 {
                            // SAFETY: as for the load above.
                            unsafe {
                                $store(ptr.add(16 * $lanes * j).cast(), $xor(x[j], tweaks[j]))
                            };
                        }
                    }
                }
                // Round keys in registers die with the frame; wipe the broadcast copies on the stack.
                for w in rk.iter_mut() {
                    // SAFETY: `w` is a valid, aligned, exclusively borrowed local.
                    unsafe { std::ptr::write_volatile(w, $zero()) };
                }
            }
        }
    };
}

wide_kernel!(
    zmm, "avx512f,avx512bw,vaes,vpclmulqdq", __m512i, 4, shift: u32,
    zero: _mm512_setzero_si512, bcast: _mm512_broadcast_i32x4, load: _mm512_loadu_si512,
    store: _mm512_storeu_si512, xor: _mm512_xor_si512, srli: _mm512_srli_epi64, slli: _mm512_slli_epi64,
    bslli: _mm512_bslli_epi128, clmul: _mm512_clmulepi64_epi128,
    enc: _mm512_aesenc_epi128, enclast: _mm512_aesenclast_epi128,
    dec: _mm512_aesdec_epi128, declast: _mm512_aesdeclast_epi128,
    poly: _mm512_set_epi64(0, 0x87, 0, 0x87, 0, 0x87, 0, 0x87)
);

wide_kernel!(
    ymm, "avx2,vaes,vpclmulqdq", __m256i, 2, shift: i32,
    zero: _mm256_setzero_si256, bcast: _mm256_broadcastsi128_si256, load: _mm256_loadu_si256,
    store: _mm256_storeu_si256, xor: _mm256_xor_si256, srli: _mm256_srli_epi64, slli: _mm256_slli_epi64,
    bslli: _mm256_bslli_epi128, clmul: _mm256_clmulepi64_epi128,
    enc: _mm256_aesenc_epi128, enclast: _mm256_aesenclast_epi128,
    dec: _mm256_aesdec_epi128, declast: _mm256_aesdeclast_epi128,
    poly: _mm256_set_epi64x(0, 0x87, 0, 0x87)
);
