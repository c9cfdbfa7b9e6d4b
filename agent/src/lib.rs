//! `diskseal-agent`, the connected side of diskseal (`product.md` §2).
//!
//! - [`identity`]: the agent's age X25519 identity (`init`) and unsealing `dek.age`;
//! - [`verify`]: `bundle verify`: manifest schema, image hash, the key unseals;
//! - [`config`]: flags > environment > TOML file; region → endpoint tables; redacted secrets;
//! - [`http`]: what every remote client shares: retries with `Retry-After`, IAM tokens ([`http::iam`]),
//!   SigV4 ([`http::sigv4`]) and the one error type, [`http::RemoteError`];
//! - [`kms`]: key wrapping behind one trait, [`kms::KeyWrapper`], with an in-memory fake and IBM Key
//!   Protect / Hyper Protect Crypto Services over REST ([`kms::keyprotect`]);
//! - [`s3`]: resumable parallel multipart upload to S3 / IBM COS (`upload`), HMAC (SigV4) or IAM
//!   bearer auth; [`awsconfig`]: AWS profiles (`~/.aws/credentials`, `~/.aws/config`);
//! - [`import`]: IBM VPC / classic image import with pre-flight checks and polling (`import`);
//! - [`provision`]: ordering a server from the imported image (VPC instance, classic virtual guest),
//!   with name resolution, a quote, lookup by name before ordering and polling (`provision`);
//! - `cloud`: the VPC / SoftLayer REST client import and provision share;
//! - [`ship`]: bundle → wrapped key → uploaded object → imported image, resumable (`ship`);
//! - [`audit`]: the hash-chained CADF-shaped JSONL audit log and its verifier;
//! - [`wire`]: the server response parsers (S3 XML, IAM / Key Protect / AWS KMS / VPC /
//!   SoftLayer JSON) as pure functions, fuzzed in `fuzz/`.
//!
//! The library never prints; errors are [`Error`]s and never carry a secret.

#![forbid(unsafe_code)]

pub mod audit;
pub mod awsconfig;
pub mod cli;
pub(crate) mod cloud;
pub mod config;
pub mod error;
pub mod http;
pub mod identity;
pub mod import;
pub mod kms;
pub mod progress;
pub mod provision;
pub mod records;
pub mod s3;
pub mod secret;
pub mod ship;
pub mod time;
pub mod verify;
pub mod wire;

pub use error::{Error, Result};
