//! The VMDK reader (sparse header, footer, grain directory and tables, compressed grains, embedded
//! descriptor; a descriptor file naming extents) on arbitrary files.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    common::exercise_image("vmdk", data, diskseal::image::ImageFormat::Vmdk);
});
