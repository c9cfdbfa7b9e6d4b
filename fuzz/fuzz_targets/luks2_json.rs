//! The LUKS2 JSON metadata validator on arbitrary text (first 16 bytes pick hdr_size and file size).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 9 {
        return;
    }
    let sizes = diskseal::luks::luks2::binary::HDR_SIZES;
    let hdr_size = sizes[data[0] as usize % sizes.len()];
    let file_len = u64::from_le_bytes(data[1..9].try_into().unwrap_or([0; 8]));
    if let Ok(text) = std::str::from_utf8(&data[9..]) {
        let _ = diskseal::luks::luks2::json::Metadata::parse(text, hdr_size, file_len);
    }
});
