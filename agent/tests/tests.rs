//! The agent's one integration-test binary: the in-process IBM fake and the tests that drive it, the
//! CLI, bundles, age interop and the audit log.

#![allow(unreachable_pub, clippy::unwrap_used, missing_docs)]

mod fake_ibm;
mod kms;
mod audit;
mod cli;
mod util;
mod pkcs11;
mod aws;
mod upload;
mod import;
mod ship;
