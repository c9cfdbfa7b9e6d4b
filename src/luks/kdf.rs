//! Password-based key derivation for keyslots (PBKDF2, Argon2i, Argon2id) and the cost benchmark that
//! picks their parameters the way cryptsetup does (`--iter-time`, `--pbkdf-memory`, `--pbkdf-parallel`,
//! `--pbkdf-force-iterations`).
//!
//! Limits are cryptsetup's (`lib/crypto_backend/pbkdf_check.c`): PBKDF2 ≥ 1000 iterations; Argon2
//! time ≥ 4, memory 32..4194304 KiB, 1..4 lanes. The volume-key digest is always PBKDF2, benchmarked at
//! 125 ms (`LUKS_MKD_ITERATIONS_MS`), or 1000 iterations when the cost is forced.

use std::time::Instant;

use argon2::{Algorithm, Argon2, Params, Version};
use zeroize::Zeroizing;

use crate::crypto::hash::Hash;
use crate::error::{Error, Result};

/// Smallest PBKDF2 iteration count cryptsetup accepts.
pub const PBKDF2_MIN_ITERATIONS: u32 = 1000;
/// Smallest Argon2 time cost cryptsetup accepts.
pub const ARGON2_MIN_TIME: u32 = 4;
/// Argon2 memory bounds in KiB.
pub const ARGON2_MEMORY_KIB: (u32, u32) = (32, 4 * 1024 * 1024);
/// Argon2 lanes bounds.
pub const ARGON2_PARALLEL: (u32, u32) = (1, 4);
/// Target time of the volume-key digest PBKDF2 benchmark.
const DIGEST_TARGET_MS: u32 = 125;

/// The KDF algorithm of a keyslot, without its parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum KdfType {
    /// PBKDF2-HMAC (LUKS1's only choice).
    Pbkdf2,
    /// Argon2i.
    Argon2i,
    /// Argon2id (cryptsetup's LUKS2 default).
    Argon2id,
}

impl KdfType {
    /// Parses cryptsetup's name (`pbkdf2`, `argon2i`, `argon2id`).
    pub fn parse(name: &str) -> Result<KdfType> {
        match name {
            "pbkdf2" => Ok(KdfType::Pbkdf2),
            "argon2i" => Ok(KdfType::Argon2i),
            "argon2id" => Ok(KdfType::Argon2id),
            other => Err(Error::unsupported(format!("unsupported KDF {other:?}"))
                .hint("use pbkdf2, argon2i or argon2id")),
        }
    }

    /// cryptsetup's name.
    pub fn name(self) -> &'static str {
        match self {
            KdfType::Pbkdf2 => "pbkdf2",
            KdfType::Argon2i => "argon2i",
            KdfType::Argon2id => "argon2id",
        }
    }
}

/// A KDF with all its cost parameters (the salt is stored beside it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kdf {
    /// PBKDF2-HMAC-`hash` with `iterations`.
    Pbkdf2 {
        /// The HMAC hash.
        hash: Hash,
        /// Iteration count.
        iterations: u32,
    },
    /// Argon2 (version 1.3).
    Argon2 {
        /// Argon2i or Argon2id.
        kind: KdfType,
        /// Time cost (passes).
        time: u32,
        /// Memory cost in KiB.
        memory_kib: u32,
        /// Lanes.
        parallel: u32,
    },
}

impl Kdf {
    /// The algorithm.
    pub fn kind(&self) -> KdfType {
        match self {
            Kdf::Pbkdf2 { .. } => KdfType::Pbkdf2,
            Kdf::Argon2 { kind, .. } => *kind,
        }
    }

    /// What a progress display says while deriving: "argon2id, 1 GiB, 4 iterations",
    /// "pbkdf2-sha256, 1000 iterations".
    pub fn summary(&self) -> String {
        match *self {
            Kdf::Pbkdf2 { hash, iterations } => {
                format!("pbkdf2-{}, {iterations} iterations", hash.name())
            }
            Kdf::Argon2 {
                kind,
                time,
                memory_kib,
                ..
            } => format!(
                "{}, {}, {time} iterations",
                kind.name(),
                memory_text(memory_kib)
            ),
        }
    }

    /// Checks the parameters against cryptsetup's limits (`field` names where they came from).
    pub fn validate(&self, field: &str) -> Result<()> {
        match *self {
            Kdf::Pbkdf2 { iterations, .. } if iterations < PBKDF2_MIN_ITERATIONS => {
                Err(Error::corrupt(format!(
                    "{field}: pbkdf2 iterations {iterations} below the minimum {PBKDF2_MIN_ITERATIONS}"
                )))
            }
            Kdf::Argon2 {
                time,
                memory_kib,
                parallel,
                ..
            } => {
                if time < ARGON2_MIN_TIME
                    || !(ARGON2_MEMORY_KIB.0..=ARGON2_MEMORY_KIB.1).contains(&memory_kib)
                    || !(ARGON2_PARALLEL.0..=ARGON2_PARALLEL.1).contains(&parallel)
                {
                    return Err(Error::corrupt(format!(
                        "{field}: argon2 cost out of range (time {time}, memory {memory_kib} KiB, cpus {parallel}); \
                         cryptsetup allows time >= 4, memory 32..4194304 KiB, cpus 1..4"
                    )));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Derives `out_len` bytes from `password` and `salt`.
    pub fn derive(
        &self,
        password: &[u8],
        salt: &[u8],
        out_len: usize,
    ) -> Result<Zeroizing<Vec<u8>>> {
        let mut out = Zeroizing::new(vec![0u8; out_len]);
        match *self {
            Kdf::Pbkdf2 { hash, iterations } => hash.pbkdf2(password, salt, iterations, &mut out),
            Kdf::Argon2 {
                kind,
                time,
                memory_kib,
                parallel,
            } => {
                let algorithm = if kind == KdfType::Argon2i {
                    Algorithm::Argon2i
                } else {
                    Algorithm::Argon2id
                };
                let params = Params::new(memory_kib, time, parallel, Some(out_len))
                    .map_err(|e| Error::invalid(format!("argon2 parameters rejected: {e}")))?;
                Argon2::new(algorithm, Version::V0x13, params)
                    .hash_password_into(password, salt, &mut out)
                    .map_err(|e| Error::invalid(format!("argon2 failed: {e}")))?;
            }
        }
        Ok(out)
    }
}

/// A memory cost in KiB as the largest whole binary unit: "1 GiB", "412 MiB", "1000 KiB".
pub fn memory_text(kib: u32) -> String {
    match kib {
        k if k >= 1 << 20 && k % (1 << 20) == 0 => format!("{} GiB", k >> 20),
        k if k >= 1 << 10 && k % (1 << 10) == 0 => format!("{} MiB", k >> 10),
        k => format!("{k} KiB"),
    }
}

/// How expensive a new keyslot's KDF must be, as the user asked for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfCost {
    /// Target unlock time in milliseconds (`--iter-time`, default 2000).
    pub iter_time_ms: u32,
    /// Argon2 maximum memory in KiB (`--pbkdf-memory`, default 1 GiB capped at half the RAM).
    pub memory_kib: u32,
    /// Argon2 lanes (`--pbkdf-parallel`, default 4 capped at the online CPUs).
    pub parallel: u32,
    /// Skip the benchmark: PBKDF2 iterations or Argon2 time cost (`--pbkdf-force-iterations`).
    pub force_iterations: Option<u32>,
}

impl Default for KdfCost {
    fn default() -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
        KdfCost {
            iter_time_ms: 2000,
            memory_kib: default_memory_kib(),
            parallel: cpus.clamp(1, 4),
            force_iterations: None,
        }
    }
}

/// cryptsetup's default Argon2 memory: 1 GiB, at most half of the physical memory.
fn default_memory_kib() -> u32 {
    const ONE_GIB_KIB: u64 = 1024 * 1024;
    let total_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| {
                    l.split_whitespace()
                        .nth(1)
                        .and_then(|v| v.parse::<u64>().ok())
                })
        })
        .unwrap_or(2 * ONE_GIB_KIB);
    (total_kib / 2).clamp(u64::from(ARGON2_MEMORY_KIB.0), ONE_GIB_KIB) as u32
}

impl KdfCost {
    /// Checks user-given values against cryptsetup's limits.
    pub fn validate(&self, kind: KdfType) -> Result<()> {
        if self.iter_time_ms == 0 {
            return Err(Error::invalid("--iter-time must be at least 1 ms"));
        }
        if let Some(n) = self.force_iterations {
            let min = if kind == KdfType::Pbkdf2 {
                PBKDF2_MIN_ITERATIONS
            } else {
                ARGON2_MIN_TIME
            };
            if n < min {
                return Err(Error::invalid(format!(
                    "--pbkdf-force-iterations {n} is below the minimum {min} for {}",
                    kind.name()
                )));
            }
        }
        if kind != KdfType::Pbkdf2 {
            if !(ARGON2_MEMORY_KIB.0..=ARGON2_MEMORY_KIB.1).contains(&self.memory_kib) {
                return Err(Error::invalid(format!(
                    "--pbkdf-memory {} KiB is outside 32..4194304 KiB",
                    self.memory_kib
                )));
            }
            if !(ARGON2_PARALLEL.0..=ARGON2_PARALLEL.1).contains(&self.parallel) {
                return Err(Error::invalid(format!(
                    "--pbkdf-parallel {} is outside 1..4",
                    self.parallel
                )));
            }
        }
        Ok(())
    }

    /// Picks the keyslot KDF parameters: forced, or benchmarked on this machine to take `iter_time_ms`.
    pub fn choose(&self, kind: KdfType, hash: Hash, key_len: usize) -> Result<Kdf> {
        self.validate(kind)?;
        match kind {
            KdfType::Pbkdf2 => {
                let iterations = match self.force_iterations {
                    Some(n) => n,
                    None => pbkdf2_iterations_for(hash, self.iter_time_ms, key_len),
                };
                Ok(Kdf::Pbkdf2 { hash, iterations })
            }
            KdfType::Argon2i | KdfType::Argon2id => {
                let (time, memory_kib) = match self.force_iterations {
                    Some(t) => (t, self.memory_kib),
                    None => self.argon2_benchmark(kind, key_len)?,
                };
                Ok(Kdf::Argon2 {
                    kind,
                    time,
                    memory_kib,
                    parallel: self.parallel,
                })
            }
        }
    }

    /// Argon2 cost for the target time: start at time 4 and full memory; if that is already too slow,
    /// lower the memory (as cryptsetup does), otherwise raise the time cost.
    fn argon2_benchmark(&self, kind: KdfType, key_len: usize) -> Result<(u32, u32)> {
        let target = f64::from(self.iter_time_ms);
        let mut memory = self.memory_kib;
        let run = |time: u32, memory_kib: u32| -> Result<f64> {
            let kdf = Kdf::Argon2 {
                kind,
                time,
                memory_kib,
                parallel: self.parallel,
            };
            let start = Instant::now();
            kdf.derive(b"diskseal benchmark", &[0u8; 32], key_len)?;
            Ok(start.elapsed().as_secs_f64() * 1000.0)
        };
        let ms = run(ARGON2_MIN_TIME, memory)?.max(0.01);
        if ms > target {
            let scaled = (f64::from(memory) * target / ms) as u32;
            memory = scaled.max(ARGON2_MEMORY_KIB.0);
            return Ok((ARGON2_MIN_TIME, memory));
        }
        let time = (f64::from(ARGON2_MIN_TIME) * target / ms) as u32;
        Ok((time.max(ARGON2_MIN_TIME), memory))
    }
}

/// PBKDF2 iterations that take about `target_ms` here (at least 1000).
pub fn pbkdf2_iterations_for(hash: Hash, target_ms: u32, out_len: usize) -> u32 {
    let mut iterations: u32 = 4096;
    let mut out = vec![0u8; out_len.max(1)];
    loop {
        let start = Instant::now();
        hash.pbkdf2(b"diskseal benchmark", &[0u8; 32], iterations, &mut out);
        let ms = start.elapsed().as_secs_f64() * 1000.0;
        if ms >= 50.0 || iterations >= u32::MAX / 4 {
            let per_ms = f64::from(iterations) / ms.max(0.001);
            let n = (per_ms * f64::from(target_ms)).min(f64::from(u32::MAX));
            return (n as u32).max(PBKDF2_MIN_ITERATIONS);
        }
        iterations *= 4;
    }
}

/// Iterations for the volume-key digest: benchmarked at 125 ms, or the minimum when the cost is forced.
pub fn digest_iterations(hash: Hash, forced: bool) -> u32 {
    if forced {
        PBKDF2_MIN_ITERATIONS
    } else {
        pbkdf2_iterations_for(hash, DIGEST_TARGET_MS, hash.output_len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_name_the_cost() {
        let a = Kdf::Argon2 {
            kind: KdfType::Argon2id,
            time: 4,
            memory_kib: 1 << 20,
            parallel: 4,
        };
        assert_eq!(a.summary(), "argon2id, 1 GiB, 4 iterations");
        let p = Kdf::Pbkdf2 {
            hash: Hash::Sha256,
            iterations: 1000,
        };
        assert_eq!(p.summary(), "pbkdf2-sha256, 1000 iterations");
        assert_eq!(memory_text(412 << 10), "412 MiB");
        assert_eq!(memory_text(1000), "1000 KiB");
    }

    #[test]
    fn argon2_known_answers() {
        // Independent reference: argon2-cffi (the C reference implementation), e.g.
        // python3 -c "import argon2.low_level as a; print(a.hash_secret_raw(b'password',
        //   b'somesaltsomesalt', 4, 32, 1, 32, a.Type.ID).hex())"
        let kdf = Kdf::Argon2 {
            kind: KdfType::Argon2id,
            time: 4,
            memory_kib: 32,
            parallel: 1,
        };
        let out = kdf.derive(b"password", b"somesaltsomesalt", 32).unwrap();
        assert_eq!(
            hex(&out),
            "fe636ce62231abda1cc9e744293b773105d3092e885ee6c9c969bb2d4dd7cea1"
        );
        // ... (b'password', b'somesaltsomesalt', 4, 64, 2, 64, a.Type.I)
        let kdf = Kdf::Argon2 {
            kind: KdfType::Argon2i,
            time: 4,
            memory_kib: 64,
            parallel: 2,
        };
        let out = kdf.derive(b"password", b"somesaltsomesalt", 64).unwrap();
        assert_eq!(
            hex(&out),
            "c3b5f8646e335a0c73aafe1b495929a47e61f17533bfd5307cbb865c92e4d90f\
             a9addc359b8a80deba79781e53aa07e302061bd729b60fd538cadab6ea190f50"
        );
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn forced_costs_skip_the_benchmark() {
        let cost = KdfCost {
            force_iterations: Some(1000),
            ..KdfCost::default()
        };
        assert_eq!(
            cost.choose(KdfType::Pbkdf2, Hash::Sha256, 64).unwrap(),
            Kdf::Pbkdf2 {
                hash: Hash::Sha256,
                iterations: 1000
            }
        );
        let cost = KdfCost {
            force_iterations: Some(999),
            ..KdfCost::default()
        };
        assert!(cost.choose(KdfType::Pbkdf2, Hash::Sha256, 64).is_err());
        let cost = KdfCost {
            force_iterations: Some(4),
            memory_kib: 16,
            ..KdfCost::default()
        };
        assert!(cost.choose(KdfType::Argon2id, Hash::Sha256, 64).is_err());
    }

    #[test]
    fn benchmark_hits_the_target_roughly() {
        let cost = KdfCost {
            iter_time_ms: 20,
            memory_kib: 1024,
            parallel: 1,
            force_iterations: None,
        };
        match cost.choose(KdfType::Argon2id, Hash::Sha256, 64).unwrap() {
            Kdf::Argon2 {
                time, memory_kib, ..
            } => assert!(time >= 4 && memory_kib <= 1024),
            other => panic!("unexpected {other:?}"),
        }
        assert!(pbkdf2_iterations_for(Hash::Sha256, 10, 32) >= PBKDF2_MIN_ITERATIONS);
    }
}
