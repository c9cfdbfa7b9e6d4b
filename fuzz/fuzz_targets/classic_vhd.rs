//! The vhd-util encrypted-VHD reader (batmap header, batmap, key hash, decrypting reads) on arbitrary
//! files, with a fixed key.
#![no_main]
use libfuzzer_sys::fuzz_target;

use diskseal::image::DiskImage;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let path = common::scratch("classic");
    std::fs::write(&path, data).expect("write scratch file");
    let _ = diskseal::image::vhd::classic::read_batmap(&path);
    let key: Vec<u8> = (0u8..64).collect();
    let key = diskseal::crypto::keys::VolumeKey::from_bytes(zeroize::Zeroizing::new(key)).expect("key");
    if let Ok(img) = diskseal::image::vhd::classic::EncryptedVhd::open(&path, &key) {
        let size = img.virtual_size();
        let mut buf = vec![0u8; 4096];
        let n = size.min(4096) as usize;
        let _ = img.read_at(&mut buf[..n], 0);
        let _ = img.extents();
    }
});
