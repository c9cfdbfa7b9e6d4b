//! The VHD reader (footer, dynamic header, BAT, bitmaps, locators) on arbitrary files.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    common::exercise_image("vhd", data, diskseal::image::ImageFormat::Vpc);
});
