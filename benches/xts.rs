//! The XTS engine on one thread: AES-128/256-XTS, 512- and 4096-byte data units, over a 4 MiB buffer
//! (the pipeline's chunk size); the default engine (the fastest this CPU runs) as `aesN-xts/...` and every
//! other one as `aesN-xts/<engine>/...` (`avx2-vaes`, `portable`). Compare with `openssl speed -evp aes-256-xts` (see README, Performance).

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use diskseal::crypto::{Engine, IvScheme, Xts};

fn xts(c: &mut Criterion) {
    let mut buf = vec![0x5au8; 4 << 20];
    let mut g = c.benchmark_group("xts");
    g.throughput(Throughput::Bytes(buf.len() as u64));
    for key_len in [64usize, 32] {
        let key: Vec<u8> = (0..key_len as u8).collect();
        let x = Xts::new(&key).expect("key");
        let others: Vec<Xts> = Engine::available()[1..]
            .iter()
            .map(|&e| Xts::with_engine(&key, e).expect("key").expect("available"))
            .collect();
        for unit in [512usize, 4096] {
            // The default engine as "aesN-xts/encrypt/...", the others as "aesN-xts/<engine>/...".
            let tags: Vec<String> = others
                .iter()
                .map(|o| format!("{}/", o.engine().name()))
                .collect();
            let mut runs = vec![(&x, "")];
            runs.extend(others.iter().zip(tags.iter().map(String::as_str)));
            for (x, tag) in runs {
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
