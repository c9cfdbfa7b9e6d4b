//! The LUKS1 phdr decoder and its checks, on arbitrary bytes and file sizes.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 592 + 8 {
        return;
    }
    let (len, hdr) = data.split_at(8);
    let file_len = u64::from_le_bytes(len.try_into().unwrap_or([0; 8]));
    let mut b = [0u8; 592];
    b.copy_from_slice(&hdr[..592]);
    if let Ok(h) = diskseal::luks::luks1::Luks1Header::decode(&b, file_len) {
        assert_eq!(diskseal::luks::luks1::Luks1Header::decode(&h.encode(), file_len).ok(), Some(h));
    }
});
