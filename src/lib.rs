//! diskseal: offline, pure-Rust encryption of virtual-machine disk images into LUKS containers.
//!
//! ```text
//!  image::open(src) ──► DiskImage::read_at ──► pipeline (rayon workers, bounded buffers)
//!                                                 │  crypto::Xts::encrypt (aes-xts-plain64)
//!  luks::format(opts, volume key, passphrase) ──► header bytes ──► io::OutputFile (temp + rename)
//! ```
//!
//! - [`crypto`]: our AES-XTS engine and the IV rules;
//! - [`luks`]: LUKS1/LUKS2 headers, keyslots, KDFs, the AF splitter;
//! - [`image`]: disk-image readers behind the [`image::DiskImage`] trait;
//! - [`pipeline`]: the parallel chunk engine;
//! - [`io`]: positional I/O and safe output files;
//! - [`ops`]: encrypt / decrypt / verify as library calls;
//! - [`bundle`]: the air-gap hand-off bundle (image, manifest, age-sealed key).
//!
//! The library never prints and never exits; errors are [`Error`]s that name the file, field and offset.

#![deny(unsafe_code)]

pub mod bundle;
pub mod crypto;
pub mod error;
pub mod image;
pub mod io;
pub mod luks;
pub mod ops;
pub mod pipeline;
pub mod profile;

pub use error::{Error, ErrorKind, Result};
