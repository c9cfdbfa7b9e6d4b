//! The one integration-test binary: every test module is declared here.
//!
//! Oracle tests need `cryptsetup` and `qemu-img`; without them they skip with a `SKIPPED-ORACLE` line,
//! unless `DISKSEAL_REQUIRE_ORACLES=1` (as in CI), where a missing tool fails the test.

#![allow(unreachable_pub, clippy::unwrap_used)]

mod util;

mod bundle;
mod classic_vhd;
mod cli;
mod corpus;
mod cryptsetup;
mod detect;
mod hygiene;
mod inputs;
mod ova;
mod qcow2;
mod qemu;
mod snapshots;
mod verity;
mod vhd;
mod vhdx;
mod vmdk;
mod xts;
