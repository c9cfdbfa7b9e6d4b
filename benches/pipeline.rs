//! raw → LUKS2 end to end through the library (read, encrypt, write), on tmpfs (/dev/shm when present),
//! at 1 and all threads, with a fixed low KDF cost so the data path dominates.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use diskseal::luks::keys::Passphrase;
use diskseal::luks::{FormatOptions, LuksVersion};
use diskseal::ops::{self, EncryptOptions, Run};
use diskseal::pipeline::Progress;
use zeroize::Zeroizing;

const SIZE: u64 = 256 << 20;

fn scratch() -> PathBuf {
    let shm = PathBuf::from("/dev/shm");
    let base = if shm.is_dir() {
        shm
    } else {
        std::env::temp_dir()
    };
    base.join(format!("diskseal-bench-{}", std::process::id()))
}

fn pipeline(c: &mut Criterion) {
    let dir = scratch();
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let src = dir.join("src.raw");
    let data: Vec<u8> = (0..SIZE)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&src, &data).expect("write source");
    drop(data);
    let dst = dir.join("out.luks");
    let pass = Passphrase::new(Zeroizing::new(b"bench".to_vec())).expect("pass");
    let opts = EncryptOptions {
        luks: FormatOptions::for_tests(LuksVersion::Luks2),
        key_bytes: 64,
        sector_size: Some(4096),
        pad: false,
        input_format: None,
        force: true,
        container: ops::Container::Raw,
        sparse: false,
        resize: None,
        cluster_bits: None,
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut g = c.benchmark_group("raw-to-luks2");
    g.throughput(Throughput::Bytes(SIZE));
    g.sample_size(10);
    for t in [1, threads] {
        g.bench_function(format!("{}MiB/threads{t}", SIZE >> 20), |b| {
            b.iter(|| {
                let cancel = AtomicBool::new(false);
                let progress = Progress::new();
                let total = AtomicU64::new(0);
                let run = Run {
                    threads: Some(t),
                    cancel: &cancel,
                    progress: &progress,
                    total: &total,
                };
                ops::encrypt(&src, &dst, &opts, &pass, None, &run).expect("encrypt")
            })
        });
    }
    g.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
