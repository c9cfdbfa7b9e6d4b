//! VMDK inputs (`src/image/vmdk/`), proven against qemu-img: every subformat qemu-img writes
//! (monolithicSparse, monolithicFlat, twoGbMaxExtentSparse, twoGbMaxExtentFlat, streamOptimized, and a
//! streamOptimized file turned into VMware's `GD_AT_END` layout), a hand-written multi-extent descriptor
//! (FLAT at an offset, SPARSE, FLAT), delta disks with `parentFileNameHint`, read byte for byte like
//! `qemu-img convert -O raw`, with the same virtual size as `qemu-img info`, and encrypted to every
//! profile; bad input gets a clear error.

use std::path::Path;

use crate::require;
use crate::util::{diskseal, encrypt_fast, encrypts_to_every_profile, pattern, read, run_in};

const MIB: usize = 1 << 20;

fn qemu(d: &Path, args: &[&str]) {
    run_in(d, "qemu-img", args).ok();
}

/// A 9 MiB + 512 B raw source: random data, a zero run, compressible text, and a hole at the end.
fn make_source(d: &Path) {
    let mut b = pattern(6 * MIB, 31);
    b[MIB..2 * MIB].fill(0);
    for (i, x) in b[3 * MIB..4 * MIB].iter_mut().enumerate() {
        *x = b"vmdk grains "[i % 12];
    }
    std::fs::write(d.join("src.raw"), &b).unwrap();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(d.join("src.raw"))
        .unwrap();
    f.set_len(9 * MIB as u64 + 512).unwrap();
}

/// `qemu-img convert` of `src.raw` to a VMDK of `subformat` named `name`.
fn vmdk_from_source(d: &Path, subformat: &str, name: &str) {
    qemu(
        d,
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "vmdk",
            "-o",
            &format!("subformat={subformat}"),
            "src.raw",
            name,
        ],
    );
}

fn qemu_size(d: &Path, img: &str) -> u64 {
    let r = run_in(d, "qemu-img", &["info", "--output=json", img]).ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    v["virtual-size"].as_u64().unwrap()
}

/// `img` read by diskseal equals qemu-img's raw conversion: encrypt (LUKS2) and `verify --against`,
/// and `info` agrees on format and virtual size.
fn same_as_qemu(d: &Path, img: &str) {
    qemu(
        d,
        &["convert", "-f", "vmdk", "-O", "raw", img, "expect.raw"],
    );
    let info: serde_json::Value =
        serde_json::from_str(&diskseal(d, &["info", "--json", img]).ok().stdout).unwrap();
    assert_eq!(info["format"], "vmdk", "{img}");
    assert_eq!(info["virtual-size"], qemu_size(d, img), "{img}");
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

#[test]
fn every_vmdk_subformat_reads_like_qemu_img_and_encrypts_to_every_profile() {
    require!("qemu-img");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("pw"), b"pw").unwrap();
    std::fs::write(d.join("dek"), pattern(64, 3)).unwrap();
    make_source(d);
    for sub in [
        "monolithicSparse",
        "monolithicFlat",
        "twoGbMaxExtentSparse",
        "twoGbMaxExtentFlat",
        "streamOptimized",
    ] {
        let name = format!("{sub}.vmdk");
        vmdk_from_source(d, sub, &name);
        same_as_qemu(d, &name);
        encrypts_to_every_profile(d, &name, "vmdk");
    }
}

/// Appends VMware's footer (footer marker, header copy, end-of-stream marker) to a stream-optimized file
/// and sets the header's GD offset to `GD_AT_END`, as VMware's exports are laid out.
fn gd_at_end(src: &Path, dst: &Path) {
    let mut b = read(src);
    let header = b[..512].to_vec();
    b[56..64].copy_from_slice(&u64::MAX.to_le_bytes());
    let marker = |ty: u32| {
        let mut m = vec![0u8; 512];
        m[12..16].copy_from_slice(&ty.to_le_bytes());
        m
    };
    let pad = b.len().next_multiple_of(512);
    b.resize(pad, 0);
    b.extend(marker(3));
    b.extend(&header);
    b.extend(marker(0));
    std::fs::write(dst, b).unwrap();
}

#[test]
fn stream_optimized_with_footer_descriptor_extents_and_delta_disks() {
    require!("qemu-img", "qemu-io");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("pw"), b"pw").unwrap();
    make_source(d);
    vmdk_from_source(d, "streamOptimized", "so.vmdk");
    gd_at_end(&d.join("so.vmdk"), &d.join("end.vmdk"));
    same_as_qemu(d, "end.vmdk");
    // A hand-written descriptor: 1 MiB of a.raw from sector 2048, a sparse extent, 512 KiB of a.raw
    // from 0. (The comment line matters to qemu-img 10: after an empty line its sscanf skips the newline
    // and reads the next extent line twice, a disk 1 MiB longer than described.)
    std::fs::write(d.join("a.raw"), pattern(3 * MIB, 7)).unwrap();
    qemu(d, &["create", "-q", "-f", "vmdk", "b.vmdk", "2M"]);
    run_in(
        d,
        "qemu-io",
        &["-f", "vmdk", "-c", "write -P 0x61 64k 128k", "b.vmdk"],
    )
    .ok();
    std::fs::write(
        d.join("multi.vmdk"),
        "# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\ncreateType=\"twoGbMaxExtentFlat\"\n\n# Extent description\nRW 2048 FLAT \"a.raw\" 2048\nRW 4096 SPARSE \"b.vmdk\"\nRW 1024 FLAT \"a.raw\" 0\n",
    )
    .unwrap();
    same_as_qemu(d, "multi.vmdk");
    // A descriptor kept in a sparse header of capacity 0 (ESX style): QEMU reads its extents.
    let mut h = vec![0u8; 1024];
    h[..4].copy_from_slice(b"KDMV");
    h[4..8].copy_from_slice(&1u32.to_le_bytes());
    h[28..36].copy_from_slice(&1u64.to_le_bytes());
    h[36..44].copy_from_slice(&1u64.to_le_bytes());
    let text = b"# Disk DescriptorFile\nversion=1\nCID=2\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n\n# Extent description\nRW 4096 FLAT \"a.raw\" 1024\n";
    h[512..512 + text.len()].copy_from_slice(text);
    std::fs::write(d.join("holder.vmdk"), &h).unwrap();
    same_as_qemu(d, "holder.vmdk");
    // A delta disk chain: base <- mid <- top, each written to.
    qemu(
        d,
        &["convert", "-f", "raw", "-O", "vmdk", "src.raw", "base.vmdk"],
    );
    for (child, parent, cmd) in [
        ("mid.vmdk", "base.vmdk", "write -P 0x11 1M 3M"),
        ("top.vmdk", "mid.vmdk", "write -P 0x22 2M 64k"),
    ] {
        qemu(
            d,
            &[
                "create", "-q", "-f", "vmdk", "-b", parent, "-F", "vmdk", child,
            ],
        );
        run_in(d, "qemu-io", &["-f", "vmdk", "-c", cmd, child]).ok();
    }
    same_as_qemu(d, "top.vmdk");
    let info: serde_json::Value =
        serde_json::from_str(&diskseal(d, &["info", "--json", "top.vmdk"]).ok().stdout).unwrap();
    assert_eq!(info["backing-filename"], "mid.vmdk", "{info}");
}

#[test]
fn bad_vmdk_input_is_refused_clearly() {
    require!("qemu-img");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("pw"), b"pw").unwrap();
    make_source(d);
    let fails = |img: &str, words: &[&str]| {
        let r = encrypt_fast(d, &["--key-file", "pw"], img, "x.luks");
        assert_eq!(r.code, 2, "{img} must be refused: {}", r.stderr);
        assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
        for w in words {
            assert!(r.stderr.contains(w), "{img}: no {w:?} in {}", r.stderr);
        }
        assert!(!d.join("x.luks").exists());
    };
    qemu(
        d,
        &["convert", "-f", "raw", "-O", "vmdk", "src.raw", "s.vmdk"],
    );
    let s = read(d.join("s.vmdk"));
    let gd = u64::from_le_bytes(s[56..64].try_into().unwrap()) as usize * 512;
    let gt0 = u32::from_le_bytes(s[gd..gd + 4].try_into().unwrap()) as usize * 512;
    // Cut inside the first grain table.
    std::fs::write(d.join("cut.vmdk"), &s[..gt0 + 100]).unwrap();
    fails("cut.vmdk", &["cut.vmdk", "past the end of the file"]);
    // A GD entry pointing past the end.
    let mut b = s.clone();
    b[gd..gd + 4].copy_from_slice(&0x00ff_ffffu32.to_le_bytes());
    std::fs::write(d.join("gd.vmdk"), &b).unwrap();
    fails("gd.vmdk", &["grain table 0", "past the end of the file"]);
    // A compressed grain that does not inflate.
    vmdk_from_source(d, "streamOptimized", "so.vmdk");
    let mut b = read(d.join("so.vmdk"));
    let gd = u64::from_le_bytes(b[56..64].try_into().unwrap()) as usize * 512;
    let gt0 = u32::from_le_bytes(b[gd..gd + 4].try_into().unwrap()) as usize * 512;
    let g0 = u32::from_le_bytes(b[gt0..gt0 + 4].try_into().unwrap()) as usize * 512;
    for x in &mut b[g0 + 14..g0 + 60] {
        *x ^= 0x5a;
    }
    std::fs::write(d.join("deflate.vmdk"), &b).unwrap();
    fails("deflate.vmdk", &["compressed grain 0", "does not inflate"]);
    // Extents outside the descriptor's folder (absolute, ../, a symbolic link out), and missing ones.
    std::fs::create_dir(d.join("sub")).unwrap();
    std::fs::write(d.join("x.raw"), vec![0u8; MIB]).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", d.join("sub/link.raw")).unwrap();
    for (name, extent, words) in [
        (
            "sub/abs.vmdk",
            "/etc/passwd",
            &["named by an absolute path", "--allow-backing"][..],
        ),
        (
            "sub/up.vmdk",
            "../x.raw",
            &["lies outside", "--allow-backing"][..],
        ),
        ("sub/link.vmdk", "link.raw", &["lies outside", "line 5"][..]),
        ("sub/gone.vmdk", "gone.raw", &["gone.raw", "line 5"][..]),
    ] {
        std::fs::write(
            d.join(name),
            format!("# Disk DescriptorFile\nversion=1\ncreateType=\"monolithicFlat\"\n\nRW 1 FLAT \"{extent}\" 0\n"),
        )
        .unwrap();
        fails(name, words);
    }
    // --allow-backing lets a named extent outside the folder through.
    encrypt_fast(
        d,
        &["-q", "--allow-backing", "x.raw", "--key-file", "pw"],
        "sub/up.vmdk",
        "up.luks",
    )
    .ok();
    // A parent loop: a delta disk naming itself.
    std::fs::write(
        d.join("loop.vmdk"),
        "# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=2\ncreateType=\"monolithicFlat\"\nparentFileNameHint=\"loop.vmdk\"\n\nRW 1 FLAT \"src.raw\" 0\n",
    )
    .unwrap();
    fails("loop.vmdk", &["loops back"]);
}
