//! End to end through the library (read, encrypt, write), on tmpfs (/dev/shm when present), at 1 and
//! all threads, with a fixed low KDF cost so the data path dominates:
//! - `raw-to-luks2`: 256 MiB of dense data → LUKS2;
//! - `qcow2-to-ibm-vpc`: a 1 GiB qcow2 (made by `qemu-img convert`; skipped without it) holding 256 MiB
//!   of data in four runs → qcow2 + QEMU-native LUKS1 (the ibm-vpc profile). Throughput counts the
//!   allocated data: time should follow it, not the virtual size.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use diskseal::crypto::keys::Passphrase;
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

/// One `encrypt` of `src` into `dst` on `t` threads.
fn encrypt_once(src: &Path, dst: &Path, opts: &EncryptOptions, pass: &Passphrase, t: usize) {
    let cancel = AtomicBool::new(false);
    let progress = Progress::new();
    let total = AtomicU64::new(0);
    let run = Run {
        threads: Some(t),
        cancel: &cancel,
        progress: &progress,
        total: &total,
    };
    let key = ops::EncryptKey::Luks {
        passphrase: Passphrase::new(Zeroizing::new(pass.expose().to_vec())).expect("pass"),
        volume_key: None,
    };
    ops::encrypt(src, dst, opts, key, &run).expect("encrypt");
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
        sector_size: Some(4096),
        force: true,
        ..EncryptOptions::new(ops::Container::Raw)
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut g = c.benchmark_group("raw-to-luks2");
    g.throughput(Throughput::Bytes(SIZE));
    g.sample_size(10);
    for t in [1, threads] {
        g.bench_function(format!("{}MiB/threads{t}", SIZE >> 20), |b| {
            b.iter(|| encrypt_once(&src, &dst, &opts, &pass, t))
        });
    }
    g.finish();
    qcow2_to_ibm_vpc(c, &dir, &src, &pass, threads);
    let _ = std::fs::remove_dir_all(&dir);
}

fn qcow2_to_ibm_vpc(c: &mut Criterion, dir: &Path, data: &Path, pass: &Passphrase, threads: usize) {
    // 1 GiB virtual; the 256 MiB of data in four 64 MiB runs, one at the start of each 256 MiB.
    let sparse = dir.join("sparse.raw");
    let f = std::fs::File::create(&sparse).expect("sparse source");
    f.set_len(4 * SIZE).expect("sparse size");
    let bytes = std::fs::read(data).expect("read data");
    for (i, run) in bytes.chunks((SIZE / 4) as usize).enumerate() {
        f.write_all_at(run, i as u64 * SIZE).expect("write run");
    }
    drop((f, bytes));
    let src = dir.join("src.qcow2");
    let made = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&sparse)
        .arg(&src)
        .status();
    let _ = std::fs::remove_file(&sparse);
    if !made.is_ok_and(|s| s.success()) {
        eprintln!("qcow2-to-ibm-vpc: skipped (qemu-img is needed to make the source)");
        return;
    }
    let opts = EncryptOptions {
        luks: FormatOptions::for_tests(LuksVersion::Luks1),
        sector_size: Some(512),
        force: true,
        ..EncryptOptions::new(ops::Container::Qcow2Luks)
    };
    let dst = dir.join("out.qcow2");
    let mut g = c.benchmark_group("qcow2-to-ibm-vpc");
    g.throughput(Throughput::Bytes(SIZE));
    g.sample_size(10);
    for t in [1, threads] {
        g.bench_function(format!("1GiB-with-{}MiB/threads{t}", SIZE >> 20), |b| {
            b.iter(|| encrypt_once(&src, &dst, &opts, pass, t))
        });
    }
    g.finish();
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
