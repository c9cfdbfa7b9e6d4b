//! diskseal: offline, pure-Rust encryption of virtual-machine disk images into LUKS containers.
//!
//! ```text
//!  image::open(src) ──► DiskImage::read_at ──► pipeline (rayon workers, bounded buffers)
//!                                                 │  crypto::Xts::encrypt (aes-xts-plain64)
//!  luks::format(opts, volume key, passphrase) ──► header + filler ──► io::OutputFile (temp + rename)
//! ```
//!
//! - [`crypto`]: our AES-XTS engine and the IV rules;
//! - [`luks`]: LUKS1/LUKS2 headers, keyslots, KDFs, the AF splitter;
//! - [`image`]: disk-image readers behind the [`image::DiskImage`] trait;
//! - [`pipeline`]: the parallel chunk engine and its modes, and the extent helpers;
//! - [`io`]: positional I/O and safe output files;
//! - [`ops`]: encrypt / decrypt / verify as library calls;
//! - [`bundle`]: the air-gap hand-off bundle (image, manifest, age-sealed key).
//!
//! The library never prints and never exits; errors are [`Error`]s that name the file, field and offset.
//!
//! # Examples
//!
//! Encrypt a disk image into LUKS2, then prove the plaintext equals the source:
//!
//! ```
//! use std::sync::atomic::{AtomicBool, AtomicU64};
//! use diskseal::crypto::keys::Passphrase;
//! use diskseal::luks::{FormatOptions, LuksVersion};
//! use diskseal::ops::{self, Container, EncryptKey, EncryptOptions, Encryption, Run, Unlock};
//! use diskseal::pipeline::Progress;
//! use zeroize::Zeroizing;
//!
//! # fn main() -> diskseal::Result<()> {
//! let dir = tempfile::tempdir().unwrap();
//! let (src, dst) = (dir.path().join("disk.raw"), dir.path().join("disk.luks"));
//! std::fs::write(&src, vec![7u8; 1 << 20]).unwrap();
//!
//! let mut luks = FormatOptions::new(LuksVersion::Luks2);
//! luks.cost.force_iterations = Some(4); // argon2id time cost; omit to benchmark like cryptsetup
//! luks.cost.memory_kib = 32 * 1024;
//! let opts = EncryptOptions { luks, ..EncryptOptions::new(Container::Raw) };
//! let pass = || Passphrase::new(Zeroizing::new(b"correct horse".to_vec()));
//! let (cancel, progress, total) = (AtomicBool::new(false), Progress::new(), AtomicU64::new(0));
//! let run = Run { threads: None, cancel: &cancel, progress: &progress, total: &total };
//!
//! let key = EncryptKey::Luks { passphrase: pass()?, volume_key: None };
//! let report = ops::encrypt(&src, &dst, &opts, key, &run)?;
//! assert!(matches!(report.encryption, Encryption::Luks { sector_size: 4096, .. }));
//! let check = ops::verify(&dst, Unlock::Passphrase(pass()?), Some((&src, None)), &Default::default(), &run)?;
//! assert!(check.ok());
//! # Ok(())
//! # }
//! ```
//!
//! Read any supported image through the one trait:
//!
//! ```no_run
//! use diskseal::image::{self, ExtentKind};
//!
//! # fn main() -> diskseal::Result<()> {
//! let disk = image::open("vm.qcow2".as_ref(), None)?; // format sniffed; backing chain opened
//! let data: u64 = disk.extents()?.iter().filter(|e| e.kind == ExtentKind::Data).map(|e| e.len).sum();
//! let mut first = vec![0u8; 512];
//! disk.read_at(&mut first, 0)?;
//! println!("{} of {} bytes hold data", data, disk.virtual_size());
//! # Ok(())
//! # }
//! ```

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
