//! The XTS engine against independent references: the IEEE 1619 vectors, ciphertext made by OpenSSL,
//! and the `xts-mode` crate on random inputs. Every test runs each engine this CPU has (the fused AVX-512
//! and AVX2 VAES kernels where available, and the portable one).

use aes::cipher::KeyInit;
use diskseal::crypto::{Engine, IvScheme, Xts};

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/fixtures/vectors/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("fixture")
}

/// Every engine this CPU runs, for `key`.
fn engines(key: &[u8]) -> Vec<Xts> {
    let all = Engine::available();
    assert_eq!(all.last(), Some(&Engine::Portable));
    assert_eq!(
        Xts::new(key).unwrap().engine(),
        all[0],
        "the default is the fastest"
    );
    if all.len() == 1 {
        eprintln!("this CPU has no VAES: testing the portable engine only");
    }
    all.into_iter()
        .map(|e| {
            let x = Xts::with_engine(key, e).unwrap().unwrap();
            assert_eq!(x.engine(), e);
            x
        })
        .collect()
}

struct Vector {
    count: u32,
    key: Vec<u8>,
    dataunit: u128,
    pt: Vec<u8>,
    ct: Vec<u8>,
}

fn ieee_vectors() -> Vec<Vector> {
    let text = String::from_utf8(fixture("xts-ieee1619.txt")).unwrap();
    let mut out = Vec::new();
    for block in text.split("\n\n") {
        let mut f = std::collections::HashMap::new();
        for line in block
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        {
            let (k, v) = line.split_once(" = ").expect("name = value");
            f.insert(k.to_owned(), v.to_owned());
        }
        if f.is_empty() {
            continue;
        }
        let mut key = hex::decode(&f["key1"]).unwrap();
        key.extend(hex::decode(&f["key2"]).unwrap());
        out.push(Vector {
            count: f["count"].parse().unwrap(),
            key,
            dataunit: f["dataunit"].parse().unwrap(),
            pt: hex::decode(&f["pt"]).unwrap(),
            ct: hex::decode(&f["ct"]).unwrap(),
        });
    }
    out
}

#[test]
fn ieee_1619_vectors() {
    let vectors = ieee_vectors();
    assert!(vectors.len() >= 18, "only {} vectors parsed", vectors.len());
    let mut checked = 0;
    for v in vectors.iter().filter(|v| v.pt.len() % 16 == 0) {
        for x in engines(&v.key) {
            let mut buf = v.pt.clone();
            x.encrypt_unit(&mut buf, v.dataunit).unwrap();
            assert_eq!(
                hex::encode(&buf),
                hex::encode(&v.ct),
                "vector {} encrypt ({})",
                v.count,
                x.engine().name()
            );
            x.decrypt_unit(&mut buf, v.dataunit).unwrap();
            assert_eq!(
                buf,
                v.pt,
                "vector {} decrypt ({})",
                v.count,
                x.engine().name()
            );
        }
        checked += 1;
    }
    assert_eq!(checked, 15, "vectors 1-14 and 19 have whole blocks");
}

#[test]
fn ieee_512_byte_vectors_through_the_sector_api() {
    // Vectors with 512-byte units and a data unit number below 2^64 are plain64 sectors.
    for v in ieee_vectors()
        .iter()
        .filter(|v| v.pt.len() == 512 && v.dataunit < u128::from(u64::MAX))
    {
        for x in engines(&v.key) {
            let mut buf = v.pt.clone();
            x.encrypt(&mut buf, 512, v.dataunit as u64, IvScheme::Plain64)
                .unwrap();
            assert_eq!(buf, v.ct, "vector {} ({})", v.count, x.engine().name());
        }
    }
}

#[test]
fn openssl_made_ciphertext() {
    // fixtures/vectors/make-openssl-vectors.sh: keys 00..3f / 00..1f, first sector 5.
    let plain = fixture("plain-8k.bin");
    let key64: Vec<u8> = (0u8..64).collect();
    let key32: Vec<u8> = (0u8..32).collect();
    let cases = [
        (&key64, 512, "openssl-aes256-xts-u512.bin"),
        (&key64, 4096, "openssl-aes256-xts-u4096.bin"),
        (&key32, 512, "openssl-aes128-xts-u512.bin"),
    ];
    for (key, unit, name) in cases {
        for x in engines(key) {
            let mut buf = plain.clone();
            x.encrypt(&mut buf, unit, 5, IvScheme::Plain64).unwrap();
            assert!(buf == fixture(name), "{name} ({})", x.engine().name());
            x.decrypt(&mut buf, unit, 5, IvScheme::Plain64).unwrap();
            assert!(buf == plain, "{name} decrypt ({})", x.engine().name());
        }
    }
}

/// Differential test against the `xts-mode` crate (one block at a time, independent code), for every
/// engine, both directions, random keys, unit sizes, lengths and sector numbers.
#[test]
fn matches_xts_mode_crate_on_random_inputs() {
    let mut seed = 0x1234_5678_9abc_def0u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..400 {
        let key_len = if round % 2 == 0 { 64 } else { 32 };
        let key: Vec<u8> = (0..key_len).map(|_| next() as u8).collect();
        let unit = [512usize, 1024, 2048, 4096][(next() % 4) as usize];
        let units = 1 + (next() % 9) as usize;
        let first = if round % 5 == 0 {
            u64::MAX - 3
        } else {
            next() >> 8
        };
        let scheme = if round % 7 == 0 {
            IvScheme::Plain
        } else {
            IvScheme::Plain64
        };
        let plain: Vec<u8> = (0..unit * units).map(|_| next() as u8).collect();

        let ours: Vec<Vec<u8>> = engines(&key)
            .iter()
            .map(|x| {
                let mut buf = plain.clone();
                x.encrypt(&mut buf, unit, first, scheme).unwrap();
                let mut back = buf.clone();
                x.decrypt(&mut back, unit, first, scheme).unwrap();
                assert!(
                    back == plain,
                    "round {round}: {} decrypt",
                    x.engine().name()
                );
                buf
            })
            .collect();

        let mut theirs = plain.clone();
        let half = key_len / 2;
        let step = (unit / 512) as u64;
        let tweak = |i: u128| {
            aes::Block::from(scheme.iv(first.wrapping_add(i as u64 * step)).to_le_bytes())
        };
        if key_len == 64 {
            let x = xts_mode::Xts128::<aes::Aes256>::new(
                aes::Aes256::new_from_slice(&key[..half]).unwrap(),
                aes::Aes256::new_from_slice(&key[half..]).unwrap(),
            );
            x.encrypt_area(&mut theirs, unit, 0, tweak);
        } else {
            let x = xts_mode::Xts128::<aes::Aes128>::new(
                aes::Aes128::new_from_slice(&key[..half]).unwrap(),
                aes::Aes128::new_from_slice(&key[half..]).unwrap(),
            );
            x.encrypt_area(&mut theirs, unit, 0, tweak);
        }
        for (i, ours) in ours.iter().enumerate() {
            assert!(
                *ours == theirs,
                "round {round}, engine {i}: unit {unit}, {units} units, first {first}, {scheme:?}"
            );
        }
    }
}
