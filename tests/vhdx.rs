//! VHDX inputs (`src/image/vhdx/`), proven against qemu-img: dynamic and fixed VHDX of several block
//! and log sizes, with zeroed and discarded blocks, read byte for byte like `qemu-img convert -O raw`,
//! same virtual size as `qemu-img info`, encrypted to the profiles; a log that was never replayed (an
//! entry written here from MS-VHDX 2.3) is refused, and once qemu-img has replayed it the image reads as
//! qemu-img reads it; damaged headers and BATs get clear errors.

use std::path::Path;

use crate::require;
use crate::util::{diskseal, encrypt_fast, encrypts_to_every_profile, pattern, read, run_in};

const MIB: usize = 1 << 20;

fn qemu(d: &Path, args: &[&str]) {
    run_in(d, "qemu-img", args).ok();
}

fn same_as_qemu(d: &Path, img: &str) {
    qemu(
        d,
        &["convert", "-f", "vhdx", "-O", "raw", img, "expect.raw"],
    );
    let r = run_in(d, "qemu-img", &["info", "--output=json", img]).ok();
    let theirs: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let ours: serde_json::Value =
        serde_json::from_str(&diskseal(d, &["info", "--json", img]).ok().stdout).unwrap();
    assert_eq!(ours["format"], "vhdx", "{img}");
    assert_eq!(ours["virtual-size"], theirs["virtual-size"], "{img}");
    encrypt_fast(d, &["-q", "--force", "--key-file", "pw"], img, "out.luks").ok();
    diskseal(
        d,
        &[
            "verify",
            "-q",
            "--key-file",
            "pw",
            "--against",
            "expect.raw",
            "out.luks",
        ],
    )
    .ok();
}

fn crc32c_at(b: &mut [u8], at: usize) {
    b[at..at + 4].fill(0);
    let c = crc32c::crc32c(b);
    b[at..at + 4].copy_from_slice(&c.to_le_bytes());
}

#[test]
fn vhdx_dynamic_and_fixed_read_like_qemu_img() {
    require!("qemu-img", "qemu-io");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("pw"), b"pw").unwrap();
    std::fs::write(d.join("dek"), pattern(64, 5)).unwrap();
    let mut b = pattern(7 * MIB, 61);
    b[2 * MIB..3 * MIB].fill(0);
    std::fs::write(d.join("src.raw"), &b).unwrap();
    for (name, opts) in [
        ("dyn.vhdx", "subformat=dynamic"),
        ("dyn1m.vhdx", "subformat=dynamic,block_size=1M,log_size=1M"),
        ("fixed.vhdx", "subformat=fixed,block_size=2M"),
    ] {
        qemu(
            d,
            &[
                "convert", "-f", "raw", "-O", "vhdx", "-o", opts, "src.raw", name,
            ],
        );
        same_as_qemu(d, name);
        encrypts_to_every_profile(d, name, "vhdx");
    }
    // Zeroed and discarded blocks.
    for cmd in ["write -z 0 1M", "discard 4M 1M", "write -P 0x77 6M 4k"] {
        run_in(d, "qemu-io", &["-f", "vhdx", "-c", cmd, "dyn1m.vhdx"]).ok();
    }
    same_as_qemu(d, "dyn1m.vhdx");
    encrypts_to_every_profile(d, "dyn1m.vhdx", "vhdx");
}

/// Writes one log entry (MS-VHDX 2.3.1) that puts `data` (4 KiB) at `file_offset`, and points the
/// current header at it with a new log GUID.
fn add_log_entry(img: &Path, file_offset: u64, data: &[u8; 4096]) {
    let mut f = read(img);
    let le32 = |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
    let le64 = |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
    // The current header: the higher sequence number.
    let (h1, h2) = (64 << 10, 128 << 10);
    let cur = if le64(&f, h1 + 8) >= le64(&f, h2 + 8) {
        h1
    } else {
        h2
    };
    let log_offset = le64(&f, cur + 72) as usize;
    let log_guid = [0x42u8; 16];
    let seq: u64 = 7;
    let mut e = vec![0u8; 8192];
    e[..4].copy_from_slice(b"loge");
    e[8..12].copy_from_slice(&8192u32.to_le_bytes());
    e[12..16].copy_from_slice(&0u32.to_le_bytes());
    e[16..24].copy_from_slice(&seq.to_le_bytes());
    e[24..28].copy_from_slice(&1u32.to_le_bytes());
    e[32..48].copy_from_slice(&log_guid);
    e[48..56].copy_from_slice(&(f.len() as u64).to_le_bytes());
    e[56..64].copy_from_slice(&(f.len() as u64).to_le_bytes());
    // Data descriptor.
    e[64..68].copy_from_slice(b"desc");
    e[72..80].copy_from_slice(&le64(data, 0).to_le_bytes());
    e[68..72].copy_from_slice(&le32(data, 4092).to_le_bytes());
    e[80..88].copy_from_slice(&file_offset.to_le_bytes());
    e[88..96].copy_from_slice(&seq.to_le_bytes());
    // Data sector.
    let s = 4096;
    e[s..s + 4].copy_from_slice(b"data");
    e[s + 4..s + 8].copy_from_slice(&((seq >> 32) as u32).to_le_bytes());
    e[s + 8..s + 4092].copy_from_slice(&data[8..4092]);
    e[s + 4092..s + 4096].copy_from_slice(&(seq as u32).to_le_bytes());
    crc32c_at(&mut e, 4);
    f[log_offset..log_offset + 8192].copy_from_slice(&e);
    // Both headers: same content, new log GUID, higher sequence for the current one.
    for (h, bump) in [(h1, cur == h1), (h2, cur == h2)] {
        f[h + 48..h + 64].copy_from_slice(&log_guid);
        if bump {
            let s = le64(&f, h + 8) + 2;
            f[h + 8..h + 16].copy_from_slice(&s.to_le_bytes());
        }
        let mut hb = f[h..h + 4096].to_vec();
        crc32c_at(&mut hb, 4);
        f[h..h + 4096].copy_from_slice(&hb);
    }
    std::fs::write(img, f).unwrap();
}

#[test]
fn vhdx_log_is_refused_until_replayed_and_damage_is_named() {
    require!("qemu-img");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("pw"), b"pw").unwrap();
    std::fs::write(d.join("src.raw"), pattern(4 * MIB, 62)).unwrap();
    qemu(
        d,
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "vhdx",
            "-o",
            "subformat=fixed,block_size=1M",
            "src.raw",
            "l.vhdx",
        ],
    );
    // The first payload block's file offset, from the BAT (first entry).
    let img = read(d.join("l.vhdx"));
    let bat = region(&img, &[0x66, 0x77, 0xC2, 0x2D]);
    let block0 = u64le(&img, bat) & !0xF_FFFF;
    drop(img);
    let mut data = [0u8; 4096];
    data.copy_from_slice(&pattern(4096, 63));
    add_log_entry(&d.join("l.vhdx"), block0 + 8192, &data);
    let r = encrypt_fast(d, &["--key-file", "pw"], "l.vhdx", "x.luks");
    assert!(
        r.code == 2 && r.stderr.contains("never replayed") && r.stderr.contains("l.vhdx"),
        "{}",
        r.stderr
    );
    assert!(!d.join("x.luks").exists());
    // qemu-img replays it (opening read-write); then both read the same, the logged sector included.
    qemu(d, &["check", "-r", "all", "-f", "vhdx", "l.vhdx"]);
    same_as_qemu(d, "l.vhdx");
    assert_eq!(&read(d.join("expect.raw"))[8192..12288], &data[..]);

    // Damage: both headers bad; a BAT entry past the end of the file.
    qemu(
        d,
        &["convert", "-f", "raw", "-O", "vhdx", "src.raw", "ok.vhdx"],
    );
    let ok = read(d.join("ok.vhdx"));
    let mut b = ok.clone();
    b[(64 << 10) + 20] ^= 1;
    b[(128 << 10) + 20] ^= 1;
    std::fs::write(d.join("heads.vhdx"), &b).unwrap();
    let r = diskseal(d, &["info", "heads.vhdx"]);
    assert!(
        r.code == 2 && r.stderr.contains("neither VHDX header is valid"),
        "{}",
        r.stderr
    );
    // The BAT region: from region table 1 (its BAT entry is one of the first two).
    let rt = 192 << 10;
    let bat_guid = [0x66u8, 0x77, 0xC2, 0x2D, 0x23, 0xF6, 0x00, 0x42];
    let mut bat = 0;
    for i in 0..2 {
        let o = rt + 16 + i * 32;
        if b[o..o + 8] == bat_guid {
            bat = u64::from_le_bytes(ok[o + 16..o + 24].try_into().unwrap()) as usize;
        }
    }
    assert!(bat > 0);
    let mut b = ok.clone();
    let far: u64 = (1 << 40) | 6;
    b[bat..bat + 8].copy_from_slice(&far.to_le_bytes());
    std::fs::write(d.join("bat.vhdx"), &b).unwrap();
    let r = diskseal(d, &["info", "bat.vhdx"]);
    assert!(
        r.code == 2 && r.stderr.contains("BAT entry 0") && r.stderr.contains("outside the file"),
        "{}",
        r.stderr
    );
}

fn u16le(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
}
fn u32le(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn u64le(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// The GUID text ("{XXXXXXXX-XXXX-...}") of 16 stored bytes.
fn guid_text(g: &[u8]) -> String {
    format!(
        "{{{:08X}-{:04X}-{:04X}-{}-{}}}",
        u32le(g, 0),
        u16le(g, 4),
        u16le(g, 6),
        hex::encode_upper(&g[8..10]),
        hex::encode_upper(&g[10..16])
    )
}

/// Offset of the region whose GUID starts with `prefix`, from region table 1.
fn region(f: &[u8], prefix: &[u8]) -> usize {
    let rt = 192 << 10;
    (0..u32le(f, rt + 8) as usize)
        .map(|i| rt + 16 + i * 32)
        .find(|&o| f[o..o + prefix.len()] == *prefix)
        .map(|o| u64le(f, o + 16) as usize)
        .unwrap()
}

/// Turns qemu-img's empty 4 MiB dynamic VHDX (1 MiB blocks) `child` into a differencing disk over
/// `parent` by the rules of MS-VHDX 2.5 and 2.6.2.6 (qemu-img makes none): the has-parent flag, a parent
/// locator (`parent_linkage` = the parent's data write GUID, `relative_path`), and a BAT in the
/// differencing layout with block 0 fully present (0x31), block 1 partially present (sectors 0-7 and 100
/// from the child, 0x32), block 2 zero and block 3 not present. Returns the expected disk, given the
/// parent's.
fn make_child(child: &Path, parent: &Path, parent_disk: &[u8]) -> Vec<u8> {
    let p = read(parent);
    let cur = if u64le(&p, (64 << 10) + 8) >= u64le(&p, (128 << 10) + 8) {
        64 << 10
    } else {
        128 << 10
    };
    let linkage = guid_text(&p[cur + 32..cur + 48]);
    let mut f = read(child);
    // Metadata: the has-parent flag and a parent locator item after the last item.
    let m = region(&f, &[0x06, 0xA2, 0x7C, 0x8B]);
    let count = u16le(&f, m + 10) as usize;
    let mut end = 0;
    for i in 0..count {
        let o = m + 32 + i * 32;
        let (off, len) = (u32le(&f, o + 16) as usize, u32le(&f, o + 20) as usize);
        end = end.max(off + len);
        if f[o..o + 4] == [0x37, 0x67, 0xA1, 0xCA] {
            f[m + off + 4] |= 2;
        }
    }
    let loc_off = end.next_multiple_of(4096);
    let utf16 = |s: &str| {
        s.encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect::<Vec<u8>>()
    };
    let pairs = [
        ("parent_linkage", linkage),
        ("relative_path", ".\\parent.vhdx".to_owned()),
    ];
    let mut loc = vec![
        0xB7, 0xEF, 0x4A, 0xB0, 0x9E, 0xD1, 0x81, 0x4A, 0xB7, 0x89, 0x25, 0xB8, 0xE9, 0x44, 0x59,
        0x13,
    ];
    loc.extend(0u16.to_le_bytes());
    loc.extend((pairs.len() as u16).to_le_bytes());
    let mut strings: Vec<u8> = Vec::new();
    let base = 20 + 12 * pairs.len();
    for (k, v) in &pairs {
        let (k, v) = (utf16(k), utf16(v));
        let ko = base + strings.len();
        strings.extend(&k);
        let vo = base + strings.len();
        strings.extend(&v);
        loc.extend((ko as u32).to_le_bytes());
        loc.extend((vo as u32).to_le_bytes());
        loc.extend((k.len() as u16).to_le_bytes());
        loc.extend((v.len() as u16).to_le_bytes());
    }
    loc.extend(strings);
    f[m + loc_off..m + loc_off + loc.len()].copy_from_slice(&loc);
    let e = m + 32 + count * 32;
    f[e..e + 16].copy_from_slice(&[
        0x2D, 0x5F, 0xD3, 0xA8, 0x0B, 0xB3, 0x4D, 0x45, 0xAB, 0xF7, 0xD3, 0xD8, 0x48, 0x34, 0xAB,
        0x0C,
    ]);
    f[e + 16..e + 20].copy_from_slice(&(loc_off as u32).to_le_bytes());
    f[e + 20..e + 24].copy_from_slice(&(loc.len() as u32).to_le_bytes());
    f[e + 24..e + 28].copy_from_slice(&4u32.to_le_bytes());
    f[m + 10..m + 12].copy_from_slice(&((count + 1) as u16).to_le_bytes());
    // Three new 1 MiB blocks at the end: block 0's data, block 1's data, chunk 0's sector bitmap.
    let at = f.len().next_multiple_of(MIB);
    f.resize(at + 3 * MIB, 0);
    f[at..at + MIB].fill(0x31);
    f[at + MIB..at + 2 * MIB].fill(0x32);
    let sb = at + 2 * MIB;
    // Block 1 is the second block of the chunk: its bits start at 2048 (1 MiB / 512).
    f[sb + 256] = 0xFF;
    f[sb + (2048 + 100) / 8] |= 1 << ((2048 + 100) % 8);
    let bat = region(&f, &[0x66, 0x77, 0xC2, 0x2D]);
    let put = |f: &mut Vec<u8>, i: usize, v: u64| {
        f[bat + i * 8..bat + i * 8 + 8].copy_from_slice(&v.to_le_bytes())
    };
    put(&mut f, 0, at as u64 | 6);
    put(&mut f, 1, (at + MIB) as u64 | 7);
    put(&mut f, 2, 2);
    put(&mut f, 3, 0);
    put(&mut f, 4096, sb as u64 | 6);
    std::fs::write(child, f).unwrap();
    let mut want = parent_disk.to_vec();
    want[..MIB].fill(0x31);
    want[MIB..MIB + 8 * 512].fill(0x32);
    want[MIB + 100 * 512..MIB + 101 * 512].fill(0x32);
    want[2 * MIB..3 * MIB].fill(0);
    want
}

#[test]
fn vhdx_differencing_disk_reads_its_parent_where_the_spec_says() {
    require!("qemu-img", "qemu-io");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("pw"), b"pw").unwrap();
    std::fs::write(d.join("src.raw"), pattern(4 * MIB, 64)).unwrap();
    qemu(
        d,
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "vhdx",
            "-o",
            "block_size=1M",
            "src.raw",
            "parent.vhdx",
        ],
    );
    qemu(
        d,
        &[
            "create",
            "-q",
            "-f",
            "vhdx",
            "-o",
            "block_size=1M,log_size=1M",
            "child.vhdx",
            "4M",
        ],
    );
    let want = make_child(
        &d.join("child.vhdx"),
        &d.join("parent.vhdx"),
        &read(d.join("src.raw")),
    );
    std::fs::write(d.join("want.raw"), &want).unwrap();
    encrypt_fast(d, &["-q", "--key-file", "pw"], "child.vhdx", "c.luks").ok();
    diskseal(
        d,
        &[
            "verify",
            "-q",
            "--key-file",
            "pw",
            "--against",
            "want.raw",
            "c.luks",
        ],
    )
    .ok();
    let info: serde_json::Value =
        serde_json::from_str(&diskseal(d, &["info", "--json", "child.vhdx"]).ok().stdout).unwrap();
    assert!(
        info["backing-filename"]
            .as_str()
            .unwrap()
            .ends_with("parent.vhdx"),
        "{info}"
    );
    // A parent written to after the child was made (new data write GUID) is refused.
    run_in(
        d,
        "qemu-io",
        &["-f", "vhdx", "-c", "write -P 1 0 4k", "parent.vhdx"],
    )
    .ok();
    let r = diskseal(d, &["info", "child.vhdx"]);
    assert!(
        r.code == 2 && r.stderr.contains("data write GUID"),
        "{}",
        r.stderr
    );
}
