//! The qcow2 reader (header, extensions, L1/L2, compressed clusters, refcount-free reads) on arbitrary files.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    common::exercise_image("qcow2", data, diskseal::image::ImageFormat::Qcow2);
});
