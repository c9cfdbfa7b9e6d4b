//! The hand-off bundle's manifest.json parser.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = diskseal::bundle::Manifest::parse(data);
});
