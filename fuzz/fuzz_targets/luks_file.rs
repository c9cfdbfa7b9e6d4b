//! The whole LUKS open path (version detection, both LUKS2 copies, LUKS1) and dump on arbitrary files.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let path = common::scratch("luks");
    std::fs::write(&path, data).expect("write scratch file");
    let file = std::fs::File::open(&path).expect("open scratch file");
    if let Ok(l) = diskseal::image::luks::open(&file, &path) {
        let _ = l.dump_text();
        let _ = l.to_json();
    }
});
