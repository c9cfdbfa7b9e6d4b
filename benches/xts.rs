//! The XTS engine on one thread: AES-128/256-XTS, 512- and 4096-byte data units, over a 4 MiB buffer
//! (the pipeline's chunk size); the default engine (the AVX-512 VAES kernel where the CPU has it) and the
//! portable one (`aesN-xts/portable/...`). Compare with `openssl speed -evp aes-256-xts` (see README, Performance).

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use diskseal::crypto::{IvScheme, Xts};

fn xts(c: &mut Criterion) {
    let mut buf = vec![0x5au8; 4 << 20];
    let mut g = c.benchmark_group("xts");
    g.throughput(Throughput::Bytes(buf.len() as u64));
    for key_len in [64usize, 32] {
        let key: Vec<u8> = (0..key_len as u8).collect();
        let x = Xts::new(&key).expect("key");
        let portable = Xts::portable(&key).expect("key");
        for unit in [512usize, 4096] {
            // The default engine as "aesN-xts/encrypt/...", the portable one as "aesN-xts/portable/...".
            for (x, tag) in [(&x, ""), (&portable, "portable/")] {
                let name = format!("aes{}-xts/{tag}encrypt/unit{unit}", key_len * 4);
                g.bench_function(&name, |b| {
                    b.iter(|| {
                        x.encrypt(black_box(&mut buf), unit, 0, IvScheme::Plain64)
                            .expect("encrypt")
                    })
                });
            }
        }
        let name = format!("aes{}-xts/decrypt/unit4096", key_len * 4);
        g.bench_function(&name, |b| {
            b.iter(|| {
                x.decrypt(black_box(&mut buf), 4096, 0, IvScheme::Plain64)
                    .expect("decrypt")
            })
        });
    }
    g.finish();
}

criterion_group!(benches, xts);
criterion_main!(benches);
