//! The qcow2 reader against qemu-img: every image is made at test time with qemu-img/qemu-io, read
//! whole and at odd offsets by `diskseal::image::open`, and compared byte for byte with
//! `qemu-img convert -O raw`; `extents()` is compared with `qemu-img map` and `info()` with
//! `qemu-img info`. Hostile inputs are qemu-img files with patched bytes.

use std::path::Path;

use diskseal::error::ErrorKind;
use diskseal::image::{self, DiskImage, ExtentKind, ImageInfo};
use serde_json::Value;

use crate::require;
use crate::util::{diskseal, encrypt_fast, pattern, read, run_in};

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

fn qimg(d: &Path, args: &[&str]) -> String {
    run_in(d, "qemu-img", args).ok().stdout
}

/// `qemu-img create -f qcow2 -b BACKING -F FORMAT NAME [SIZE]` (no size: the backing file's).
fn overlay(d: &Path, backing: &str, format: &str, name: &str, size: &str) {
    let mut args = vec![
        "create", "-q", "-f", "qcow2", "-b", backing, "-F", format, name,
    ];
    if !size.is_empty() {
        args.push(size);
    }
    qimg(d, &args);
}

/// Runs qemu-io commands on a qcow2 image (its backing chain is opened by qemu-io).
fn qio(d: &Path, img: &str, cmds: &[&str]) {
    let mut args = vec!["-f", "qcow2", img];
    for c in cmds {
        args.extend(["-c", c]);
    }
    run_in(d, "qemu-io", &args).ok();
}

/// Random data, zero runs and compressible text, in 48 KiB pieces (not cluster-aligned).
fn mixed(len: usize, seed: u64) -> Vec<u8> {
    let text = b"diskseal qcow2 test: the quick brown fox jumps over the lazy dog 0123456789\n";
    let piece = 48 * KIB;
    let mut out = Vec::with_capacity(len);
    let mut i = 0u64;
    while out.len() < len {
        match i % 4 {
            0 => out.extend(text.iter().cycle().take(piece)),
            1 => out.extend(pattern(piece, seed + i)),
            2 => out.extend(std::iter::repeat_n(0u8, piece)),
            _ => {
                out.extend(pattern(piece / 2, seed + i));
                out.extend(text.iter().cycle().take(piece / 2));
            }
        }
        i += 1;
    }
    out.truncate(len);
    out
}

fn write_mixed(d: &Path, name: &str, len: usize, seed: u64) {
    std::fs::write(d.join(name), mixed(len, seed)).unwrap();
}

/// Opens an image following every backing file (chains here use `../`; the rule that refuses such
/// backing files by default is tested in `backing_files_outside_the_image_folder_are_refused_unless_allowed`).
fn open(d: &Path, name: &str) -> Box<dyn DiskImage> {
    image::open_with(&d.join(name), None, image::BackingPolicy::trust_all())
        .unwrap_or_else(|e| panic!("open {name}: {e} ({e:?})"))
}

fn open_err(d: &Path, name: &str) -> diskseal::error::Error {
    match image::open(&d.join(name), None) {
        Ok(img) => panic!("{name} opened: {img:?}"),
        Err(e) => e,
    }
}

/// Per-512-byte kinds: 0 data, 1 zero, 2 unallocated.
fn kinds_from_extents(img: &dyn DiskImage) -> Vec<u8> {
    let ext = img.extents().unwrap();
    let mut out = Vec::new();
    let mut next = 0;
    for e in &ext {
        assert_eq!(e.offset, next, "extents must be contiguous: {ext:?}");
        assert!(e.len > 0);
        next = e.offset + e.len;
        let k = match e.kind {
            ExtentKind::Data => 0,
            ExtentKind::Zero => 1,
            ExtentKind::Unallocated => 2,
        };
        out.extend(std::iter::repeat_n(k, (e.len.div_ceil(512)) as usize));
    }
    assert_eq!(next, img.virtual_size(), "extents must cover the disk");
    out
}

fn kinds_from_qemu_map(d: &Path, name: &str) -> Vec<u8> {
    let map: Value = serde_json::from_str(&qimg(d, &["map", "--output=json", name])).unwrap();
    let mut out = Vec::new();
    for m in map.as_array().unwrap() {
        let k = if m["data"].as_bool().unwrap() {
            0
        } else if m["present"].as_bool().unwrap() {
            1
        } else {
            2
        };
        out.extend(std::iter::repeat_n(
            k,
            (m["length"].as_u64().unwrap().div_ceil(512)) as usize,
        ));
    }
    out
}

fn compare_info(ours: &ImageInfo, q: &Value) {
    assert_eq!(ours.format, q["format"].as_str().unwrap());
    assert_eq!(ours.virtual_size, q["virtual-size"].as_u64().unwrap());
    if ours.format == "qcow2" {
        assert_eq!(ours.cluster_size, q["cluster-size"].as_u64());
        let (dq, dd) = (&q["format-specific"]["data"], &ours.details);
        for key in [
            "compat",
            "compression-type",
            "lazy-refcounts",
            "refcount-bits",
            "corrupt",
            "extended-l2",
        ] {
            if !dq[key].is_null() {
                assert_eq!(dd[key], dq[key], "details.{key}: ours {dd} qemu {dq}");
            }
        }
    }
    assert_eq!(ours.backing_file.as_deref(), q["backing-filename"].as_str());
    assert_eq!(
        ours.backing_format.as_deref(),
        q["backing-filename-format"].as_str()
    );
}

/// Opens `name`, and checks reads, extents and info against qemu-img. Returns the image.
fn check(d: &Path, name: &str) -> Box<dyn DiskImage> {
    let img = open(d, name);
    let exp_name = format!("{name}.expected.raw");
    qimg(d, &["convert", "-O", "raw", name, &exp_name]);
    let want = read(d.join(&exp_name));
    std::fs::remove_file(d.join(&exp_name)).unwrap();
    assert_eq!(
        img.virtual_size(),
        want.len() as u64,
        "{name}: virtual size"
    );
    // Whole disk in 1 MiB + 4 KiB chunks (not cluster-aligned after the first).
    let mut got = vec![0u8; want.len()];
    for (i, chunk) in got.chunks_mut(MIB + 4 * KIB).enumerate() {
        img.read_at(chunk, (i * (MIB + 4 * KIB)) as u64)
            .unwrap_or_else(|e| panic!("{name}: read: {e}"));
    }
    assert!(
        got == want,
        "{name}: contents differ from qemu-img convert at byte {:?}",
        got.iter().zip(&want).position(|(a, b)| a != b)
    );
    // Odd offsets and lengths crossing cluster boundaries.
    let len = want.len() as u64;
    let mut x = 0x9e37_79b9_u64;
    for _ in 0..200 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let off = x % len;
        let n = (x >> 20) % (300 * KIB as u64).min(len - off) + 1;
        let mut buf = vec![0u8; n as usize];
        img.read_at(&mut buf, off).unwrap();
        assert!(
            buf[..] == want[off as usize..(off + n) as usize],
            "{name}: read of {n} at {off} differs"
        );
    }
    let mut one = [0u8; 1];
    img.read_at(&mut one, len - 1).unwrap();
    assert_eq!(one[0], want[want.len() - 1]);
    assert!(
        img.read_at(&mut one, len).is_err(),
        "read past the end must fail"
    );
    // Allocation map.
    let ours = kinds_from_extents(img.as_ref());
    let theirs = kinds_from_qemu_map(d, name);
    if let Some(i) = ours.iter().zip(&theirs).position(|(a, b)| a != b) {
        panic!(
            "{name}: extents differ from qemu-img map at byte {:#x}: ours {:?}, qemu {}",
            i * 512,
            img.extents().unwrap(),
            qimg(d, &["map", "--output=json", name])
        );
    }
    assert_eq!(ours.len(), theirs.len());
    // Extents never claim data where there is none: Zero/Unallocated read as zeros.
    for e in img.extents().unwrap() {
        if e.kind != ExtentKind::Data {
            assert!(
                want[e.offset as usize..(e.offset + e.len) as usize]
                    .iter()
                    .all(|&b| b == 0),
                "{name}: {e:?} is not zero"
            );
        }
    }
    // Allocated clusters of the top layer, as qemu-img check counts them.
    let checked: Value =
        serde_json::from_str(&run_in(d, "qemu-img", &["check", "--output=json", name]).stdout)
            .unwrap();
    // (qemu-img leaves the field out when it is 0.)
    let theirs = checked["allocated-clusters"].as_u64().unwrap_or(0);
    assert_eq!(
        img.info().details["allocated-clusters"].as_u64(),
        Some(theirs),
        "{name}: allocated clusters"
    );
    // Info, down the chain.
    let chain: Value = serde_json::from_str(&qimg(
        d,
        &["info", "--output=json", "--backing-chain", name],
    ))
    .unwrap();
    let mut info = Some(img.info());
    for q in chain.as_array().unwrap() {
        let i = info
            .take()
            .unwrap_or_else(|| panic!("{name}: our chain is shorter than qemu's"));
        compare_info(&i, q);
        info = i.backing.map(|b| *b);
    }
    assert!(info.is_none(), "{name}: our chain is longer than qemu's");
    img
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().unwrap())
}

fn patch(path: &Path, at: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, at).unwrap();
}

/// The file offset of the first L2 entry of L1 entry 0, and the L1 entry's own offset.
fn first_l2(path: &Path) -> (u64, u64) {
    let b = read(path);
    let l1 = be64(&b, 40) as usize;
    (be64(&b, l1) & 0x00ff_ffff_ffff_fe00, l1 as u64)
}

#[test]
fn qcow2_v2_and_v3_with_zero_clusters_match_qemu() {
    require!("qemu-img", "qemu-io");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_mixed(d, "src.raw", 6 * MIB + 5 * KIB, 1);
    qimg(
        d,
        &[
            "convert",
            "-O",
            "qcow2",
            "-o",
            "compat=0.10",
            "src.raw",
            "v2.qcow2",
        ],
    );
    qimg(d, &["convert", "-O", "qcow2", "src.raw", "v3.qcow2"]);
    qio(
        d,
        "v3.qcow2",
        &[
            "write -z 64k 192k",
            "write -z -u 1M 128k",
            "write -P 0x33 3000k 7k",
        ],
    );
    qio(
        d,
        "v2.qcow2",
        &["write -z 64k 192k", "write -P 0x33 3000k 7k"],
    );
    let v2 = check(d, "v2.qcow2");
    assert_eq!(v2.info().details["compat"], "0.10");
    let v3 = check(d, "v3.qcow2");
    assert!(
        v3.extents()
            .unwrap()
            .iter()
            .any(|e| e.kind == ExtentKind::Zero)
    );
    // Internal snapshots: only the active L1 table counts.
    qimg(d, &["snapshot", "-c", "s1", "v3.qcow2"]);
    qio(d, "v3.qcow2", &["write -P 0x71 0 100k", "write -z 2M 64k"]);
    let snap = check(d, "v3.qcow2");
    assert_eq!(snap.info().details["snapshots"], 1);
    // Empty image: everything unallocated, reads zeros.
    qimg(d, &["create", "-q", "-f", "qcow2", "empty.qcow2", "3M"]);
    let e = check(d, "empty.qcow2");
    assert_eq!(
        e.extents().unwrap(),
        vec![image::Extent {
            offset: 0,
            len: 3 * MIB as u64,
            kind: ExtentKind::Unallocated
        }]
    );
}

#[test]
fn qcow2_compressed_zlib_and_zstd_match_qemu() {
    require!("qemu-img", "qemu-io");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_mixed(d, "src.raw", 5 * MIB + 512, 2);
    for ct in ["zlib", "zstd"] {
        let name = format!("{ct}.qcow2");
        qimg(
            d,
            &[
                "convert",
                "-c",
                "-O",
                "qcow2",
                "-o",
                &format!("compression_type={ct}"),
                "src.raw",
                &name,
            ],
        );
        let img = check(d, &name);
        assert_eq!(img.info().details["compression-type"], ct);
        // Many threads at once (the zstd decoder is per thread).
        let want = read(d.join("src.raw"));
        std::thread::scope(|s| {
            for t in 0..3u64 {
                let (img, want) = (&img, &want);
                s.spawn(move || {
                    let mut buf = vec![0u8; 100 * KIB + 7];
                    let mut off = t * 4099;
                    while off + buf.len() as u64 <= want.len() as u64 {
                        img.read_at(&mut buf, off).unwrap();
                        assert!(buf[..] == want[off as usize..off as usize + buf.len()]);
                        off += 211 * KIB as u64;
                    }
                });
            }
        });
        // Overwrite parts: compressed and plain clusters side by side.
        qio(d, &name, &["write -P 0x44 100k 20k"]);
        check(d, &name);
        // 4 KiB clusters, compressed.
        let small = format!("{ct}-4k.qcow2");
        qimg(
            d,
            &[
                "convert",
                "-c",
                "-O",
                "qcow2",
                "-o",
                &format!("compression_type={ct},cluster_size=4096"),
                "src.raw",
                &small,
            ],
        );
        check(d, &small);
    }
    qimg(
        d,
        &[
            "convert",
            "-c",
            "-O",
            "qcow2",
            "-o",
            "compat=0.10",
            "src.raw",
            "v2z.qcow2",
        ],
    );
    check(d, "v2z.qcow2");
}

#[test]
fn qcow2_extended_l2_subclusters_match_qemu() {
    require!("qemu-img", "qemu-io");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_mixed(d, "base.raw", 4 * MIB, 3);
    qimg(
        d,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "extended_l2=on,cluster_size=64k",
            "e.qcow2",
            "4M",
        ],
    );
    qio(
        d,
        "e.qcow2",
        &[
            "write -P 0x55 4k 8k",
            "write -P 0x66 70k 2k",
            "write -z 200k 6k",
            "write -P 0x77 1M 64k",
        ],
    );
    let img = check(d, "e.qcow2");
    assert_eq!(img.info().details["extended-l2"], true);
    // Over a backing file: unallocated subclusters read the backing file.
    qimg(
        d,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "extended_l2=on,cluster_size=128k",
            "-b",
            "base.raw",
            "-F",
            "raw",
            "eb.qcow2",
            "4M",
        ],
    );
    qio(
        d,
        "eb.qcow2",
        &[
            "write -P 0x55 4k 8k",
            "write -z 20k 4k",
            "write -P 0x66 300k 1k",
            "write -z 1M 128k",
            "write -P 0x12 2000k 40k",
        ],
    );
    check(d, "eb.qcow2");
    // Compressed clusters with extended L2.
    qimg(
        d,
        &[
            "convert",
            "-c",
            "-O",
            "qcow2",
            "-o",
            "extended_l2=on",
            "base.raw",
            "ec.qcow2",
        ],
    );
    qio(d, "ec.qcow2", &["write -P 0x55 4k 8k"]);
    check(d, "ec.qcow2");
}

#[test]
fn qcow2_three_deep_backing_chain_with_raw_base() {
    require!("qemu-img", "qemu-io");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("m")).unwrap();
    // The base is shorter than the overlays: what lies past its end reads as zeros.
    write_mixed(d, "base.raw", 3 * MIB, 4);
    // mid names its backing file relative to its own directory.
    overlay(d, "../base.raw", "raw", "m/mid.qcow2", "5M");
    qio(
        d,
        "m/mid.qcow2",
        &[
            "write -P 0x21 0 64k",
            "write -P 0x22 1000k 300k",
            "write -z 2M 64k",
            "write -P 0x23 4M 100k",
        ],
    );
    overlay(d, "m/mid.qcow2", "qcow2", "top.qcow2", "6M");
    qio(
        d,
        "top.qcow2",
        &[
            "write -P 0x31 32k 64k",
            "write -z 1M 64k",
            "write -P 0x32 5M 10k",
        ],
    );
    let img = check(d, "top.qcow2");
    let info = img.info();
    assert_eq!(info.backing_file.as_deref(), Some("m/mid.qcow2"));
    let mid = info.backing.unwrap();
    assert_eq!(mid.backing.as_ref().unwrap().format, "raw");
    // Read from many threads at once.
    let want = {
        qimg(d, &["convert", "-O", "raw", "top.qcow2", "want.raw"]);
        read(d.join("want.raw"))
    };
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let (img, want) = (&img, &want);
            s.spawn(move || {
                let mut buf = vec![0u8; 77 * KIB];
                let mut off = t * 12345;
                while off + buf.len() as u64 <= want.len() as u64 {
                    img.read_at(&mut buf, off).unwrap();
                    assert!(buf[..] == want[off as usize..off as usize + buf.len()]);
                    off += 333 * KIB as u64;
                }
            });
        }
    });
    // Without the backing format extension the format is probed (the extension type is patched to an
    // unknown one, which must be ignored).
    let top = d.join("top.qcow2");
    let b = read(&top);
    let at = (104..4096)
        .step_by(8)
        .find(|&i| be32(&b, i) == 0xe279_2aca)
        .unwrap();
    patch(&top, at as u64, &0x0bad_0bad_u32.to_be_bytes());
    let img = open(d, "top.qcow2");
    assert_eq!(img.info().backing_format, None);
    let mut got = vec![0u8; want.len()];
    img.read_at(&mut got, 0).unwrap();
    assert!(got == want);
}

#[test]
fn qcow2_preallocation_and_cluster_sizes_match_qemu() {
    require!("qemu-img", "qemu-io");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_mixed(d, "src.raw", 3 * MIB, 5);
    qimg(
        d,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "preallocation=metadata",
            "pm.qcow2",
            "3M",
        ],
    );
    qio(d, "pm.qcow2", &["write -P 0x42 100k 300k"]);
    check(d, "pm.qcow2");
    qimg(
        d,
        &[
            "convert",
            "-O",
            "qcow2",
            "-o",
            "cluster_size=512",
            "src.raw",
            "c512.qcow2",
        ],
    );
    qio(
        d,
        "c512.qcow2",
        &["write -z 1000 3000", "write -P 0x9 777k 1k"],
    );
    check(d, "c512.qcow2");
    qimg(
        d,
        &[
            "convert",
            "-O",
            "qcow2",
            "-o",
            "cluster_size=2M",
            "src.raw",
            "c2m.qcow2",
        ],
    );
    qio(d, "c2m.qcow2", &["write -z 2M 1M"]);
    check(d, "c2m.qcow2");
    qimg(
        d,
        &[
            "convert",
            "-c",
            "-O",
            "qcow2",
            "-o",
            "cluster_size=2M",
            "src.raw",
            "c2mz.qcow2",
        ],
    );
    check(d, "c2mz.qcow2");
}

#[test]
fn qcow2_feature_bits_dirty_corrupt_unknown() {
    require!("qemu-img");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_mixed(d, "src.raw", MIB, 6);
    qimg(d, &["convert", "-O", "qcow2", "src.raw", "a.qcow2"]);
    let p = d.join("a.qcow2");
    let orig = read(&p);
    let want = read(d.join("src.raw"));
    let read_all = |img: &dyn DiskImage| {
        let mut b = vec![0u8; want.len()];
        img.read_at(&mut b, 0).unwrap();
        assert!(b == want);
    };
    // Dirty: accepted.
    patch(&p, 0x48, &1u64.to_be_bytes());
    let img = open(d, "a.qcow2");
    assert_eq!(img.info().details["dirty"], true);
    read_all(img.as_ref());
    // Corrupt: opens read-only, flagged in the details.
    patch(&p, 0x48, &2u64.to_be_bytes());
    let img = open(d, "a.qcow2");
    assert_eq!(img.info().details["corrupt"], true);
    read_all(img.as_ref());
    // Unknown incompatible bit, no name for it.
    patch(&p, 0x48, &(1u64 << 40).to_be_bytes());
    let e = open_err(d, "a.qcow2");
    assert_eq!(e.kind(), ErrorKind::Unsupported);
    assert!(
        e.to_string().contains("bit 40")
            && e.to_string().contains("a.qcow2")
            && e.to_string().contains("0x48"),
        "{e}"
    );
    // Named by the feature name table: rename the "extended l2" entry to bit 9 and set bit 9.
    std::fs::write(&p, &orig).unwrap();
    let at = (104..4096)
        .step_by(8)
        .find(|&i| be32(&orig, i) == 0x6803_f857)
        .unwrap();
    let n = be32(&orig, at + 4) as usize / 48;
    let entry = (0..n)
        .map(|k| at + 8 + 48 * k)
        .find(|&o| orig[o] == 0 && orig[o + 1] == 4)
        .unwrap();
    let name = String::from_utf8_lossy(&orig[entry + 2..entry + 48])
        .trim_end_matches('\0')
        .to_owned();
    patch(&p, entry as u64 + 1, &[9]);
    patch(&p, 0x48, &(1u64 << 9).to_be_bytes());
    let e = open_err(d, "a.qcow2");
    assert!(e.to_string().contains(&format!("{name:?} (bit 9)")), "{e}");
    // A persistent bitmap (bitmaps extension, autoclear bit 0) changes nothing for reading.
    std::fs::write(&p, &orig).unwrap();
    qimg(d, &["bitmap", "--add", "a.qcow2", "b0"]);
    let img = open(d, "a.qcow2");
    assert_eq!(img.info().details["bitmaps"], true);
    read_all(img.as_ref());
    // Legacy AES.
    std::fs::write(&p, &orig).unwrap();
    patch(&p, 0x20, &1u32.to_be_bytes());
    let e = open_err(d, "a.qcow2");
    assert!(
        e.kind() == ErrorKind::Unsupported
            && e.to_string().contains("AES")
            && e.to_string().contains("0x20"),
        "{e}"
    );
}

#[test]
fn qcow2_luks_and_external_data_file_are_refused_clearly() {
    require!("qemu-img");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    qimg(
        d,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "--object",
            "secret,id=s0,data=abc",
            "-o",
            "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10",
            "enc.qcow2",
            "1M",
        ],
    );
    let img = open(d, "enc.qcow2");
    let info = img.info();
    let enc = &info.details["encrypt"];
    assert_eq!(enc["format"], "luks", "{}", info.details);
    let q: Value = serde_json::from_str(&qimg(d, &["info", "--output=json", "enc.qcow2"])).unwrap();
    let qenc = &q["format-specific"]["data"]["encrypt"];
    for key in [
        "format",
        "cipher-alg",
        "cipher-mode",
        "ivgen-alg",
        "hash-alg",
        "payload-offset",
        "master-key-iters",
        "uuid",
        "slots",
    ] {
        assert_eq!(enc[key], qenc[key], "encrypt.{key}: ours {enc} qemu {qenc}");
    }
    let mut buf = [0u8; 512];
    let e = img.read_at(&mut buf, 0).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported);
    assert!(
        e.to_string().contains("LUKS") && e.hint_text().unwrap().contains("diskseal decrypt"),
        "{e}"
    );

    qimg(
        d,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "data_file=data.raw",
            "ext.qcow2",
            "1M",
        ],
    );
    let e = open_err(d, "ext.qcow2");
    assert_eq!(e.kind(), ErrorKind::Unsupported);
    assert!(
        e.to_string().contains("external data file") && e.to_string().contains("data.raw"),
        "{e}"
    );
}

#[test]
fn qcow2_backing_chain_errors() {
    require!("qemu-img");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Missing backing file: the message shows the path looked for.
    qimg(d, &["create", "-q", "-f", "raw", "gone.raw", "1M"]);
    overlay(d, "gone.raw", "raw", "orphan.qcow2", "1M");
    std::fs::remove_file(d.join("gone.raw")).unwrap();
    let e = open_err(d, "orphan.qcow2");
    assert!(
        e.to_string()
            .contains(&d.join("gone.raw").display().to_string()),
        "{e}"
    );
    assert!(e.hint_text().unwrap().contains("orphan.qcow2"), "{e:?}");
    // A backing format diskseal does not read.
    qimg(d, &["create", "-q", "-f", "vdi", "b.vdi", "1M"]);
    overlay(d, "b.vdi", "vdi", "onvdi.qcow2", "1M");
    let e = open_err(d, "onvdi.qcow2");
    assert!(
        e.kind() == ErrorKind::Unsupported
            && e.to_string().contains("\"vdi\"")
            && e.to_string().contains("onvdi.qcow2"),
        "{e}"
    );
    // A loop: a -> b -> a.
    qimg(d, &["create", "-q", "-f", "qcow2", "a.qcow2", "1M"]);
    overlay(d, "a.qcow2", "qcow2", "b.qcow2", "1M");
    qimg(
        d,
        &["rebase", "-u", "-b", "b.qcow2", "-F", "qcow2", "a.qcow2"],
    );
    let e = open_err(d, "b.qcow2");
    assert!(e.to_string().contains("loops"), "{e}");
    // Too deep: 70 layers.
    qimg(d, &["create", "-q", "-f", "qcow2", "l0.qcow2", "1M"]);
    for i in 1..70 {
        let (below, this) = (format!("l{}.qcow2", i - 1), format!("l{i}.qcow2"));
        overlay(d, &below, "qcow2", &this, "1M");
    }
    let e = open_err(d, "l69.qcow2");
    assert!(e.to_string().contains("deeper than"), "{e}");
    let img = open(d, "l40.qcow2");
    let mut b = vec![1u8; 4096];
    img.read_at(&mut b, 0).unwrap();
    assert!(b.iter().all(|&x| x == 0));
}

/// Each hostile input gives an error that names the file, the field and a hex offset; never a panic.
#[test]
fn qcow2_hostile_inputs_are_clear_errors() {
    require!("qemu-img");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_mixed(d, "src.raw", 2 * MIB, 7);
    qimg(d, &["convert", "-O", "qcow2", "src.raw", "good.qcow2"]);
    qimg(d, &["convert", "-c", "-O", "qcow2", "src.raw", "z.qcow2"]);
    qimg(
        d,
        &[
            "convert",
            "-c",
            "-O",
            "qcow2",
            "-o",
            "compression_type=zstd",
            "src.raw",
            "zs.qcow2",
        ],
    );
    let good = read(d.join("good.qcow2"));
    let p = d.join("bad.qcow2");
    let (l2, l1_at) = first_l2(&d.join("good.qcow2"));
    let rt = be64(&good, 48);

    // Fails at open or at the first whole-disk read; returns the error text.
    let fail = |what: &str, needles: &[&str]| {
        let r = image::open(&p, None).and_then(|img| {
            let mut b = vec![0u8; img.virtual_size() as usize];
            img.read_at(&mut b, 0)?;
            img.extents().map(|_| ())
        });
        let e = r.expect_err(what);
        let s = format!("{e}");
        assert!(
            s.contains("bad.qcow2") && s.contains("(at offset 0x"),
            "{what}: {s}"
        );
        for n in needles {
            assert!(s.contains(n), "{what}: {s:?} lacks {n:?}");
        }
    };
    let with = |base: &[u8], edits: &[(u64, &[u8])]| {
        std::fs::write(&p, base).unwrap();
        for (at, b) in edits {
            patch(&p, *at, b);
        }
    };

    with(&good[..100], &[]);
    fail("truncated header", &["too short"]);
    with(&good[..0x38000.min(good.len())], &[]);
    fail("truncated after L1", &["beyond the end of the file"]);
    with(&good[..good.len() - 300 * KIB], &[]);
    fail("truncated data", &["beyond the end of the file"]);
    for cb in [8u32, 22, 64] {
        with(&good, &[(0x14, &cb.to_be_bytes())]);
        fail("cluster_bits", &[&format!("cluster_bits {cb}"), "0x14"]);
    }
    with(&good, &[(0x18, &((1u64 << 63) - 512).to_be_bytes())]);
    fail("size near 2^63", &["virtual size", "0x18"]);
    with(&good, &[(0x18, &u64::MAX.to_be_bytes())]);
    fail("size 2^64-1", &["virtual size", "0x18"]);
    with(&good, &[(0x24, &0x0100_0000u32.to_be_bytes())]);
    fail("L1 over 32 MiB", &["l1_size", "limit"]);
    with(&good, &[(0x24, &0x0010_0000u32.to_be_bytes())]);
    fail("L1 past EOF", &["L1 table", "end of the file"]);
    with(&good, &[(0x24, &0u32.to_be_bytes())]);
    fail("L1 too small", &["l1_size 0x0 too small"]);
    with(&good, &[(0x28, &0x30200u64.to_be_bytes())]);
    fail(
        "unaligned L1",
        &["l1_table_offset 0x30200 is not cluster-aligned"],
    );
    with(
        &good,
        &[(
            l1_at,
            &(0x8000_0000_0000_0000u64 | 0x7fff_0000).to_be_bytes(),
        )],
    );
    fail(
        "L1 entry beyond EOF",
        &[
            "L2 table",
            "beyond the end of the file",
            &format!("{l1_at:#x}"),
        ],
    );
    with(
        &good,
        &[(
            l1_at,
            &(0x8000_0000_0000_0000u64 | (l2 + 0x200)).to_be_bytes(),
        )],
    );
    fail("unaligned L2", &["L2 table", "not cluster-aligned"]);
    with(
        &good,
        &[(
            l1_at,
            &(0x8000_0000_0000_0000u64 | (l1_at & !0xffff)).to_be_bytes(),
        )],
    );
    fail("L2 on the L1 table", &["overlaps the L1 table"]);
    with(
        &good,
        &[(l2, &(0x8000_0000_0000_0000u64 | rt).to_be_bytes())],
    );
    fail(
        "data on the refcount table",
        &[
            "data cluster",
            "overlaps the refcount table",
            &format!("{l2:#x}"),
        ],
    );
    with(
        &good,
        &[(
            l2,
            &(0x8000_0000_0000_0000u64 | 0x7_0000_0000).to_be_bytes(),
        )],
    );
    fail(
        "data beyond EOF",
        &["data cluster", "beyond the end of the file"],
    );
    with(
        &good,
        &[(l2, &(0x8000_0000_0000_0000u64 | 0x5_0200).to_be_bytes())],
    );
    fail("unaligned data", &["data cluster", "not cluster-aligned"]);
    with(&good, &[(0x64, &105u32.to_be_bytes())]);
    fail(
        "header_length odd",
        &["header_length 0x69", "multiple of 8", "0x64"],
    );
    with(&good, &[(0x64, &96u32.to_be_bytes())]);
    fail("header_length small", &["header_length 0x60", "0x64"]);
    let first_ext = be32(&good, 0x64) as u64;
    with(&good, &[(first_ext + 4, &0xfff0u32.to_be_bytes())]);
    fail(
        "extension past the cluster",
        &[
            "header extension",
            "runs past the end of cluster 0",
            &format!("{first_ext:#x}"),
        ],
    );

    // Compressed clusters: garbage, too short, inside the header.
    for src in ["z.qcow2", "zs.qcow2"] {
        let z = read(d.join(src));
        let (zl2, _) = first_l2(&d.join(src));
        let (at, entry) = (0..8192u64)
            .map(|k| (zl2 + k * 8, be64(&z, (zl2 + k * 8) as usize)))
            .find(|(_, e)| e & (1 << 62) != 0)
            .unwrap();
        let x = 62 - (16 - 8);
        let host = entry & ((1u64 << x) - 1);
        with(&z, &[(host, &[0xa5; 64])]);
        fail(
            "compressed garbage",
            &["compressed cluster", &format!("{host:#x}")],
        );
        let one_sector = (entry & !(0xffu64 << x)) | (1 << 62);
        with(&z, &[(at, &one_sector.to_be_bytes())]);
        fail("compressed short", &["compressed cluster"]);
        with(
            &z,
            &[(at, &((entry & !((1u64 << x) - 1)) | 0x100).to_be_bytes())],
        );
        fail(
            "compressed in header",
            &["compressed cluster", "inside the header cluster"],
        );
    }
    // The zero flag in a version 2 image (QEMU calls it corruption as well).
    qimg(
        d,
        &[
            "convert",
            "-O",
            "qcow2",
            "-o",
            "compat=0.10",
            "src.raw",
            "v2.qcow2",
        ],
    );
    let v2 = read(d.join("v2.qcow2"));
    let (v2l2, _) = first_l2(&d.join("v2.qcow2"));
    let e0 = be64(&v2, v2l2 as usize);
    with(&v2, &[(v2l2, &(e0 | 1).to_be_bytes())]);
    fail(
        "v2 zero flag",
        &["zero flag", "version 2", &format!("{v2l2:#x}")],
    );
    // The original still reads.
    std::fs::write(&p, &good).unwrap();
    let img = image::open(&p, None).unwrap();
    let mut b = vec![0u8; 2 * MIB];
    img.read_at(&mut b, 0).unwrap();
    assert!(b == read(d.join("src.raw")));
}

/// qcow2 (compressed, with a backing chain) → `diskseal encrypt` → `diskseal verify --against` the
/// qemu-img plaintext.
#[test]
fn qcow2_encrypt_end_to_end() {
    require!("qemu-img", "qemu-io");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("pw"), b"secret pass").unwrap();
    write_mixed(d, "base.raw", 3 * MIB, 8);
    qimg(
        d,
        &["convert", "-c", "-O", "qcow2", "base.raw", "base.qcow2"],
    );
    overlay(d, "base.qcow2", "qcow2", "top.qcow2", "4M");
    qio(
        d,
        "top.qcow2",
        &[
            "write -P 0x5a 100k 200k",
            "write -z 1M 64k",
            "write -P 0x11 3M 512k",
        ],
    );
    qimg(d, &["convert", "-O", "raw", "top.qcow2", "plain.raw"]);
    encrypt_fast(d, &["-q", "--key-file", "pw"], "top.qcow2", "out.luks").ok();
    diskseal(
        d,
        &[
            "verify",
            "-q",
            "--key-file",
            "pw",
            "--against",
            "plain.raw",
            "out.luks",
        ],
    )
    .ok();
    diskseal(
        d,
        &[
            "verify",
            "-q",
            "--key-file",
            "pw",
            "--against",
            "top.qcow2",
            "out.luks",
        ],
    )
    .ok();
    diskseal(
        d,
        &["decrypt", "-q", "--key-file", "pw", "out.luks", "back.raw"],
    )
    .ok();
    assert!(read(d.join("back.raw")) == read(d.join("plain.raw")));
}

/// A 2 TiB image opens without reading its L2 tables, and its map and scattered reads stay cheap.
#[test]
fn qcow2_huge_sparse_image_is_cheap() {
    require!("qemu-img", "qemu-io");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    qimg(d, &["create", "-q", "-f", "qcow2", "huge.qcow2", "2T"]);
    qio(
        d,
        "huge.qcow2",
        &[
            "write -P 0x61 1T 64k",
            "write -z 1536G 1M",
            "write -P 0x62 2199023190016 65536",
        ],
    );
    let t = std::time::Instant::now();
    let img = open(d, "huge.qcow2");
    let ext = img.extents().unwrap();
    assert!(t.elapsed().as_secs() < 5, "took {:?}", t.elapsed());
    let t40 = 1u64 << 40;
    let size = 2 * t40;
    assert_eq!(
        ext,
        vec![
            image::Extent {
                offset: 0,
                len: t40,
                kind: ExtentKind::Unallocated
            },
            image::Extent {
                offset: t40,
                len: 65536,
                kind: ExtentKind::Data
            },
            image::Extent {
                offset: t40 + 65536,
                len: t40 / 2 - 65536,
                kind: ExtentKind::Unallocated
            },
            image::Extent {
                offset: 3 * t40 / 2,
                len: 1 << 20,
                kind: ExtentKind::Zero
            },
            image::Extent {
                offset: 3 * t40 / 2 + (1 << 20),
                len: size - 65536 - (3 * t40 / 2 + (1 << 20)),
                kind: ExtentKind::Unallocated
            },
            image::Extent {
                offset: size - 65536,
                len: 65536,
                kind: ExtentKind::Data
            },
        ]
    );
    let mut b = vec![0u8; 100_000];
    img.read_at(&mut b, t40 - 30_000).unwrap();
    assert!(
        b[..30_000].iter().all(|&x| x == 0)
            && b[30_000..95_536].iter().all(|&x| x == 0x61)
            && b[95_536..].iter().all(|&x| x == 0)
    );
    img.read_at(&mut b, size - 100_000).unwrap();
    assert!(
        b[..100_000 - 65536].iter().all(|&x| x == 0)
            && b[100_000 - 65536..].iter().all(|&x| x == 0x62)
    );
}

/// Random byte corruption in the metadata and compressed data of qemu-img files gives errors or
/// data, never a panic, a hang or a huge allocation.
#[test]
fn qcow2_random_corruption_never_panics() {
    require!("qemu-img", "qemu-io");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_mixed(d, "src.raw", 2 * MIB, 9);
    qimg(
        d,
        &[
            "convert",
            "-c",
            "-O",
            "qcow2",
            "-o",
            "cluster_size=4096",
            "src.raw",
            "z.qcow2",
        ],
    );
    qimg(
        d,
        &[
            "convert",
            "-c",
            "-O",
            "qcow2",
            "-o",
            "compression_type=zstd,cluster_size=16k",
            "src.raw",
            "zs.qcow2",
        ],
    );
    qimg(
        d,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "extended_l2=on",
            "-b",
            "src.raw",
            "-F",
            "raw",
            "e.qcow2",
            "2M",
        ],
    );
    qio(d, "e.qcow2", &["write -P 0x55 4k 8k", "write -z 200k 6k"]);
    let p = d.join("bad.qcow2");
    let mut x = 0x1234_5678_9abc_def1_u64;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let (mut opened, mut failed) = (0, 0);
    for src in ["z.qcow2", "zs.qcow2", "e.qcow2"] {
        let orig = read(d.join(src));
        for _ in 0..150 {
            let mut b = orig.clone();
            for _ in 0..1 + rnd() % 4 {
                // The header, the first clusters (tables), or anywhere.
                let span = match rnd() % 3 {
                    0 => b.len() as u64,
                    1 => 256,
                    _ => (b.len() as u64).min(0x40000),
                };
                let at = (rnd() % span) as usize;
                b[at] ^= 1 << (rnd() % 8);
                if rnd() % 4 == 0 {
                    b[at] = rnd() as u8;
                }
            }
            std::fs::write(&p, &b).unwrap();
            match image::open(&p, None) {
                Err(_) => failed += 1,
                Ok(img) => {
                    opened += 1;
                    let size = img.virtual_size();
                    let mut buf = vec![0u8; size.min(2 * MIB as u64) as usize];
                    if img.read_at(&mut buf, 0).is_err() {
                        failed += 1;
                    }
                    let tail = buf.len().min(1000);
                    let _ = img.read_at(&mut buf[..tail], size - tail as u64);
                    if size <= 1 << 40 {
                        let _ = img.extents();
                    }
                    let _ = img.info();
                }
            }
        }
    }
    assert!(opened > 0 && failed > 0, "opened {opened}, failed {failed}");
}

/// A qemu-img qcow2 cut anywhere inside its header area is reported as truncated, with where the file
/// ends, not as a header extension "running past cluster 0".
#[test]
fn qcow2_cut_inside_its_header_is_reported_as_truncated() {
    require!("qemu-img");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    qimg(d, &["create", "-q", "-f", "qcow2", "whole.qcow2", "1M"]);
    let whole = read(d.join("whole.qcow2"));
    for len in 104..=503 {
        std::fs::write(d.join("cut.qcow2"), &whole[..len]).unwrap();
        let e = open_err(d, "cut.qcow2");
        let text = format!("{e} {}", e.hint_text().unwrap_or(""));
        assert!(
            text.contains("truncated") && !text.contains("past the end of cluster 0"),
            "{len}: {text}"
        );
        if len >= 120 {
            assert!(
                text.contains(&format!("the file ends at {len:#x}")),
                "{len}: {text}"
            );
        }
    }
}

/// A backing file outside the folder of the image that names it (absolute elsewhere, or `../`) is
/// refused unless --allow-backing names it or --trust-backing is given; every backing file used is
/// named in the summary, in --json and in the manifest.
#[test]
fn backing_files_outside_the_image_folder_are_refused_unless_allowed() {
    require!("qemu-img");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("img")).unwrap();
    std::fs::create_dir_all(d.join("outside")).unwrap();
    std::fs::write(d.join("pw"), b"secret pass").unwrap();
    std::fs::write(d.join("outside/secret.raw"), pattern(MIB, 80)).unwrap();
    std::fs::write(d.join("img/base.raw"), pattern(MIB, 81)).unwrap();
    let secret = d.join("outside/secret.raw");
    let secret = secret.to_str().unwrap();
    // As in the report: `qemu-img create -b /etc/shadow -F raw -u evil.qcow2`.
    for (name, backing, why) in [
        ("abs.qcow2", secret, "named by an absolute path"),
        ("rel.qcow2", "../outside/secret.raw", "lies outside"),
    ] {
        qimg(
            d,
            &[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-b",
                backing,
                "-F",
                "raw",
                "-u",
                &format!("img/{name}"),
                "1M",
            ],
        );
        let img = format!("img/{name}");
        let r = encrypt_fast(d, &["--key-file", "pw"], &img, "out.luks");
        assert_eq!(r.code, 2, "{name}: {}{}", r.stdout, r.stderr);
        for want in [
            &img[..],
            "outside/secret.raw",
            why,
            "--allow-backing",
            "--trust-backing",
        ] {
            assert!(r.stderr.contains(want), "{name}: {want}: {}", r.stderr);
        }
        assert!(!d.join("out.luks").exists());
    }
    // Allowed by name: encrypted, and named in the summary, --json and the manifest.
    let r = encrypt_fast(
        d,
        &[
            "--key-file",
            "pw",
            "--allow-backing",
            "outside/secret.raw",
            "--manifest",
            "m.json",
        ],
        "img/rel.qcow2",
        "out.luks",
    )
    .ok();
    assert!(
        r.stdout.contains("read through backing file(s)")
            && r.stdout.contains("outside/secret.raw"),
        "{}",
        r.stdout
    );
    let m: Value = serde_json::from_slice(&read(d.join("m.json"))).unwrap();
    let files = m["source"]["backing_files"].as_array().unwrap();
    assert!(
        files.len() == 1 && files[0].as_str().unwrap().ends_with("outside/secret.raw"),
        "{m}"
    );
    diskseal(
        d,
        &[
            "verify",
            "-q",
            "--key-file",
            "pw",
            "--against",
            "outside/secret.raw",
            "out.luks",
        ],
    )
    .ok();
    // --trust-backing follows anything; --json lists it.
    let r = encrypt_fast(
        d,
        &["--json", "--trust-backing", "--key-file", "pw"],
        "img/abs.qcow2",
        "t.luks",
    )
    .ok();
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert!(
        v["backing_files"][0]
            .as_str()
            .unwrap()
            .ends_with("outside/secret.raw"),
        "{v}"
    );
    // A backing file in the image's own folder needs no flag, and is named too.
    overlay(d, "base.raw", "raw", "img/ok.qcow2", "");
    let r = encrypt_fast(
        d,
        &["--json", "--key-file", "pw"],
        "img/ok.qcow2",
        "ok.luks",
    )
    .ok();
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert!(
        v["backing_files"][0]
            .as_str()
            .unwrap()
            .ends_with("img/base.raw"),
        "{v}"
    );
    // The same file named by an absolute path: refused although it lies in the folder (the image's
    // author, not the user, chose where it points), followed when allowed by name.
    let abs = d.join("img/base.raw");
    overlay(d, abs.to_str().unwrap(), "raw", "img/absin.qcow2", "");
    crate::util::absolute_backing_needs_allowing(d, "img/absin.qcow2", "img/base.raw");
}
