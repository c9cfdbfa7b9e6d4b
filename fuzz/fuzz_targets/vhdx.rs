//! The VHDX reader (headers, region tables, metadata, parent locator, BAT, log check) on files built
//! from a compact input, so that each execution writes kilobytes instead of the 3+ MiB a VHDX needs
//! (its regions sit on 1 MiB boundaries):
//!
//! - byte 0: bit 0 set: write correct CRC-32C checksums into both headers and both region tables
//!   (otherwise almost every mutation stops at a checksum); bits 1-7: the file's length in MiB, at
//!   least (the file is also as long as the last block written);
//! - then records of a 2-byte little-endian block number (4 KiB blocks, so anywhere in the first
//!   256 MiB) and up to 4096 bytes written there; everything else reads as zeros (a sparse file).
//!
//! `fuzz/seeds/vhdx/small.vhdx.blocks` is qemu-img's file in this form (see fuzz/README.md).
#![no_main]
use std::os::unix::fs::FileExt;

use diskseal::image::vhdx::header::{
    HEADER_OFFSETS, HEADER_SIZE, REGION_OFFSETS, REGION_TABLE_SIZE, checksum,
};
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

const BLOCK: u64 = 4096;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, mut rest)) = data.split_first() else {
        return;
    };
    let path = common::scratch("vhdx");
    let f = std::fs::File::create(&path).expect("create scratch file");
    let mut end = u64::from(flags >> 1) << 20;
    while rest.len() > 2 {
        let at = u64::from(u16::from_le_bytes([rest[0], rest[1]])) * BLOCK;
        let n = (rest.len() - 2).min(BLOCK as usize);
        f.write_all_at(&rest[2..2 + n], at).expect("write scratch file");
        end = end.max(at + n as u64);
        rest = &rest[2 + n..];
    }
    if flags & 1 == 1 {
        let sums = HEADER_OFFSETS.iter().map(|&at| (at, HEADER_SIZE));
        for (at, len) in sums.chain(REGION_OFFSETS.iter().map(|&at| (at, REGION_TABLE_SIZE))) {
            let mut b = vec![0u8; len];
            let _ = f.read_at(&mut b, at);
            f.write_all_at(&checksum(&b, 4).to_le_bytes(), at + 4).expect("write checksum");
            end = end.max(at + len as u64);
        }
    }
    f.set_len(end).expect("size scratch file");
    drop(f);
    common::exercise_file(&path, diskseal::image::ImageFormat::Vhdx);
});
