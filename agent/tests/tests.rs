//! The agent's one integration-test binary: the in-process IBM fake and the tests that drive it, the
//! CLI, bundles, age interop and the audit log.

#![allow(unreachable_pub, clippy::unwrap_used, missing_docs)]

mod audit;
mod aws;
mod cli;
mod contract;
mod cos_iam;
mod crash;
mod dry_run;
mod fake_compute;
mod fake_ibm;
mod ibm_rules;
mod import;
mod kms;
mod pkcs11;
mod provision;
mod seeds;
mod ship;
mod snapshots;
mod upload;
mod util;
mod wire;
