//! The XTS engine on one thread: AES-128/256-XTS, 512- and 4096-byte data units, over a 4 MiB buffer
//! (the pipeline's chunk size); the default engine (the fastest this CPU runs) as `aesN-xts/...` and every
//! other one as `aesN-xts/<engine>/...` (`avx2-vaes`, `portable`); and the default engine on 1..cores
//! threads (`xts-threads/...`). Compare with `openssl speed -evp aes-256-xts` (see README, Performance).

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

/// The default engine on 1, 2, ... threads (up to the core count), each thread on its own 4 MiB chunk:
/// how the crypto alone scales, without the page cache in the way.
fn xts_threads(c: &mut Criterion) {
    use rayon::prelude::*;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = 4 << 20;
    let x = Xts::new(&[7u8; 64]).expect("key");
    let mut g = c.benchmark_group("xts-threads");
    for threads in 1..=cores {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("pool");
        let mut buf = vec![0x5au8; chunk * threads];
        g.throughput(Throughput::Bytes(buf.len() as u64));
        g.bench_function(format!("aes256-xts/unit4096/threads{threads}"), |b| {
            b.iter(|| {
                pool.install(|| {
                    buf.par_chunks_mut(chunk).enumerate().for_each(|(i, c)| {
                        let first = (i * chunk / 512) as u64;
                        x.encrypt(black_box(c), 4096, first, IvScheme::Plain64)
                            .expect("encrypt")
                    })
                })
            })
        });
    }
    g.finish();
}

criterion_group!(benches, xts, xts_threads);
criterion_main!(benches);
