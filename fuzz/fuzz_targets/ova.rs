//! The OVA reader (tar index, OVF XML, manifest, the VMDK inside) on arbitrary files.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    common::exercise_image("ova", data, diskseal::image::ImageFormat::Ova(None));
    // The OVF and manifest parsers on their own.
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = diskseal::image::ova::ovf::parse(text);
        let _ = diskseal::image::ova::ovf::parse_manifest(text);
    }
});
