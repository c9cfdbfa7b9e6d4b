//! Every input kind qemu-img makes, encrypted by diskseal, decrypted by an independent consumer (QEMU's
//! `driver=luks` for LUKS1; cryptsetup's volume key + our byte-exact LUKS2 payload is proven elsewhere),
//! must equal `qemu-img convert -O raw` of the source; and `diskseal info --json` must agree with
//! `qemu-img info --output=json` on format, virtual size and backing chain.

use std::path::Path;

use crate::require;
use crate::util::{diskseal, encrypt_fast, pattern, read, run_in};

fn qemu(d: &Path, args: &[&str]) {
    run_in(d, "qemu-img", args).ok();
}

fn qemu_io(d: &Path, fmt: &str, img: &str, cmd: &str) {
    run_in(d, "qemu-io", &["-f", fmt, "-c", cmd, img]).ok();
}

/// A 24 MiB raw source with random data, zero runs and compressible text, and a hole.
fn make_source(d: &Path) {
    let mut b = pattern(24 << 20, 90);
    b[4 << 20..7 << 20].fill(0);
    for (i, x) in b[10 << 20..12 << 20].iter_mut().enumerate() {
        *x = b"diskseal compressible text "[i % 27];
    }
    std::fs::write(d.join("src.raw"), &b).unwrap();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(d.join("src.raw"))
        .unwrap();
    f.set_len(32 << 20).unwrap();
}

/// The inputs: (file name, format) built from src.raw.
fn make_inputs(d: &Path) -> Vec<(String, &'static str)> {
    let mut v = Vec::new();
    let mut conv = |name: &str, fmt: &'static str, opts: &[&str]| {
        let mut args = vec!["convert", "-f", "raw", "-O", fmt];
        args.extend(opts);
        args.extend(["src.raw", name]);
        qemu(d, &args);
        v.push((name.to_owned(), fmt));
    };
    conv("fixed.vhd", "vpc", &["-o", "subformat=fixed"]);
    conv("dynamic.vhd", "vpc", &["-o", "subformat=dynamic"]);
    conv(
        "force.vhd",
        "vpc",
        &["-o", "subformat=dynamic,force_size=on"],
    );
    conv("v2.qcow2", "qcow2", &["-o", "compat=0.10"]);
    conv("v3.qcow2", "qcow2", &[]);
    conv(
        "zlib.qcow2",
        "qcow2",
        &["-c", "-o", "compression_type=zlib"],
    );
    conv(
        "zstd.qcow2",
        "qcow2",
        &["-c", "-o", "compression_type=zstd"],
    );
    conv(
        "l2.qcow2",
        "qcow2",
        &["-o", "extended_l2=on,cluster_size=128k"],
    );
    conv("prealloc.qcow2", "qcow2", &["-o", "preallocation=metadata"]);
    conv("so.vmdk", "vmdk", &["-o", "subformat=streamOptimized"]);
    conv("flat.vmdk", "vmdk", &["-o", "subformat=monolithicFlat"]);
    conv("dyn.vhdx", "vhdx", &["-o", "block_size=1M"]);
    // A 3-deep chain with a raw base: base.raw <- mid.qcow2 <- top.qcow2, each layer written to.
    std::fs::copy(d.join("src.raw"), d.join("base.raw")).unwrap();
    qemu(
        d,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "base.raw",
            "-F",
            "raw",
            "mid.qcow2",
        ],
    );
    qemu_io(d, "qcow2", "mid.qcow2", "write -P 0x11 1M 3M");
    qemu_io(d, "qcow2", "mid.qcow2", "write -z 20M 1M");
    qemu(
        d,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "mid.qcow2",
            "-F",
            "qcow2",
            "top.qcow2",
        ],
    );
    qemu_io(d, "qcow2", "top.qcow2", "write -P 0x22 2M 64k");
    qemu_io(d, "qcow2", "top.qcow2", "write -P 0x33 30M 1M");
    v.push(("top.qcow2".to_owned(), "qcow2"));
    // A qcow2 overlay on a dynamic VHD.
    qemu(
        d,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "dynamic.vhd",
            "-F",
            "vpc",
            "onvhd.qcow2",
        ],
    );
    qemu_io(d, "qcow2", "onvhd.qcow2", "write -P 0x44 5M 128k");
    v.push(("onvhd.qcow2".to_owned(), "qcow2"));
    v
}

#[test]
fn every_input_kind_encrypts_to_what_qemu_decrypts() {
    require!("qemu-img", "qemu-io");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("pw"), b"secret pass").unwrap();
    make_source(d);
    for (name, fmt) in make_inputs(d) {
        qemu(d, &["convert", "-f", fmt, "-O", "raw", &name, "expect.raw"]);
        encrypt_fast(
            d,
            &["-q", "--force", "--profile", "luks1", "--key-file", "pw"],
            name.as_str(),
            "out.luks",
        )
        .ok();
        qemu(
            d,
            &[
                "convert",
                "--object",
                "secret,id=s,file=pw",
                "--image-opts",
                "driver=luks,key-secret=s,file.filename=out.luks",
                "-O",
                "raw",
                "got.raw",
            ],
        );
        assert!(
            read(d.join("got.raw")) == read(d.join("expect.raw")),
            "{name}: QEMU's plaintext differs from the source"
        );
        // LUKS2 output of the same input verifies against the source too (its payload is byte-exact with
        // cryptsetup's, see tests/cryptsetup.rs).
        encrypt_fast(
            d,
            &["-q", "--force", "--key-file", "pw"],
            name.as_str(),
            "out2.luks",
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
                "expect.raw",
                "out2.luks",
            ],
        )
        .ok();
    }
}

#[test]
fn info_agrees_with_qemu_img() {
    require!("qemu-img", "qemu-io");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_source(d);
    for (name, fmt) in make_inputs(d) {
        let ours: serde_json::Value =
            serde_json::from_str(&diskseal(d, &["info", "--json", &name]).ok().stdout).unwrap();
        let theirs: serde_json::Value = serde_json::from_str(
            &run_in(
                d,
                "qemu-img",
                &["info", "-f", fmt, "--output=json", "--backing-chain", &name],
            )
            .ok()
            .stdout,
        )
        .unwrap();
        let chain = theirs.as_array().unwrap();
        assert_eq!(ours["format"], chain[0]["format"], "{name}");
        assert_eq!(ours["virtual-size"], chain[0]["virtual-size"], "{name}");
        assert_eq!(
            ours["backing-filename"], chain[0]["backing-filename"],
            "{name}"
        );
        let our_chain = ours["backing-chain"].as_array().unwrap();
        assert_eq!(our_chain.len() + 1, chain.len(), "{name}: chain length");
        for (o, t) in our_chain.iter().zip(&chain[1..]) {
            assert_eq!(o["format"], t["format"], "{name}");
            assert_eq!(o["virtual-size"], t["virtual-size"], "{name}");
        }
    }
}
