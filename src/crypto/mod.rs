//! Cryptographic building blocks that no crate provides the way we need them.
//!
//! - [`xts`]: our AES-XTS engine over the `aes` crate's wide block functions (tweaks computed for a whole
//!   data unit, one `encrypt_blocks` call per batch, never one block at a time).
//! - `vaes`: the engine's fused VAES kernels (AVX-512 and AVX2), chosen at run time on CPUs that have them.
//! - [`iv`]: every IV rule (plain64, plain, the qcow2 host-offset counter) lives here and nowhere else.
//! - [`keys`]: `VolumeKey` and `Passphrase`, zeroizing and redacted (used by LUKS, qcow2-LUKS and
//!   vhd-util encryption alike), and random bytes.
//! - [`hash`]: the hash algorithms LUKS names by string, for PBKDF2, the AF splitter and checksums.
//! - [`verity`]: the dm-verity root hash of a plaintext disk (the manifests' digest), zero runs for free.

pub mod hash;
pub mod iv;
pub mod keys;
#[cfg(target_arch = "x86_64")]
mod vaes;
pub mod verity;
pub mod xts;

pub use iv::IvScheme;
pub use xts::{Engine, Xts};
