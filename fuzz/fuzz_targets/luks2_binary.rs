//! The LUKS2 binary header decoder: anything that decodes must encode back to a header that decodes the same.
#![no_main]
use libfuzzer_sys::fuzz_target;
use diskseal::luks::luks2::binary::{BIN_SIZE, BinaryHeader};

fuzz_target!(|data: &[u8]| {
    let mut b = [0u8; BIN_SIZE];
    let n = data.len().min(BIN_SIZE);
    b[..n].copy_from_slice(&data[..n]);
    for at in [0u64, 0x4000] {
        if let Ok(h) = BinaryHeader::decode(&b, at) {
            let again = BinaryHeader::decode(&h.encode(), at).expect("re-decode");
            assert_eq!(again.hdr_size, h.hdr_size);
            assert_eq!(again.uuid, h.uuid);
        }
    }
});
