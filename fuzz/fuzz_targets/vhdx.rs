//! The VHDX reader (headers, region tables, metadata, parent locator, BAT, log check) on arbitrary files.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    common::exercise_image("vhdx", data, diskseal::image::ImageFormat::Vhdx);
});
