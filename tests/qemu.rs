//! QEMU as the oracle for LUKS1: qemu-img must read our LUKS1 files (`driver=luks`), and diskseal must
//! decrypt what qemu-img writes.

use crate::require;
use std::path::Path;

use crate::util::{FAST_PBKDF2, Ran, diskseal, encrypt_fast, read, run_in, setup};

#[test]
fn qemu_img_reads_our_luks1_output() {
    require!("qemu-img");
    let dir = setup(3 << 20, 21);
    let d = dir.path();
    encrypt_fast(
        d,
        &["-q", "--profile", "luks1", "--key-file", "pw"],
        "src.raw",
        "ours.luks",
    )
    .ok();
    run_in(
        d,
        "qemu-img",
        &[
            "convert",
            "--object",
            "secret,id=sec0,file=pw",
            "--image-opts",
            "driver=luks,key-secret=sec0,file.filename=ours.luks",
            "-O",
            "raw",
            "back.raw",
        ],
    )
    .ok();
    assert!(
        read(d.join("back.raw")) == read(d.join("src.raw")),
        "qemu-img's plaintext differs from the source"
    );
    run_in(
        d,
        "qemu-img",
        &[
            "compare",
            "--object",
            "secret,id=sec0,file=pw",
            "--image-opts",
            "driver=luks,key-secret=sec0,file.filename=ours.luks",
            "driver=raw,file.filename=src.raw",
        ],
    )
    .ok();
}

#[test]
fn qemu_img_made_luks1_decrypts_with_diskseal() {
    require!("qemu-img");
    let dir = setup(5 << 20, 22);
    let d = dir.path();
    run_in(
        d,
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "luks",
            "--object",
            "secret,id=sec0,file=pw",
            "-o",
            "key-secret=sec0,iter-time=10",
            "src.raw",
            "qemu.luks",
        ],
    )
    .ok();
    let dump = diskseal(d, &["dump", "qemu.luks"]).ok().stdout;
    assert!(dump.contains("Payload offset: 4040 sectors"), "{dump}");
    diskseal(
        d,
        &[
            "verify",
            "-q",
            "--key-file",
            "pw",
            "--against",
            "src.raw",
            "qemu.luks",
        ],
    )
    .ok();
    diskseal(
        d,
        &[
            "decrypt",
            "-q",
            "--key-file",
            "pw",
            "qemu.luks",
            "plain.raw",
        ],
    )
    .ok();
    assert!(read(d.join("plain.raw")) == read(d.join("src.raw")));
}

/// A sparse source: `len` bytes with random data only at the given (offset, length) ranges.
fn sparse_source(d: &std::path::Path, name: &str, len: u64, data: &[(u64, usize)]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::create(d.join(name)).unwrap();
    f.set_len(len).unwrap();
    for (i, &(off, n)) in data.iter().enumerate() {
        f.write_all_at(&crate::util::pattern(n, 50 + i as u64), off)
            .unwrap();
    }
}

fn qemu_secret_opts(img: &str) -> String {
    format!("driver=qcow2,encrypt.key-secret=sec0,file.filename={img}")
}

/// `qemu-img OP --object secret,id=sec0,file=PASS --image-opts <the encrypted qcow2 IMG> REST...`.
fn qemu_with_secret(d: &Path, op: &str, pass: &str, img: &str, rest: &[&str]) -> Ran {
    let secret = format!("secret,id=sec0,file={pass}");
    let opts = qemu_secret_opts(img);
    let mut args = vec![op, "--object", &secret, "--image-opts", &opts];
    args.extend(rest);
    run_in(d, "qemu-img", &args)
}

/// `qemu-img check` of `img` exited 0 and found no errors.
fn assert_check_clean(check: &Ran, img: &str) {
    assert!(
        check.code == 0 && check.stdout.contains("No errors were found"),
        "qemu-img check {img}: {} {}",
        check.stdout,
        check.stderr
    );
}

/// `qemu-img info --output=json IMG`.
fn qemu_info(d: &Path, img: &str) -> serde_json::Value {
    serde_json::from_str(
        &run_in(d, "qemu-img", &["info", "--output=json", img])
            .ok()
            .stdout,
    )
    .unwrap()
}

#[test]
fn ibm_vpc_qcow2_passes_qemu_img_check_and_compare() {
    require!("qemu-img");
    let dir = setup(0, 0);
    let d = dir.path();
    // 4 GiB with ~64 MiB of data in three places, one of them unaligned to clusters.
    sparse_source(
        d,
        "src4g.raw",
        4 << 30,
        &[
            (0, 1 << 20),
            (1 << 30, 63 << 20),
            ((3 << 30) + 12345 * 512, 70_000),
        ],
    );
    encrypt_fast(
        d,
        &["-q", "--profile", "ibm-vpc", "--key-file", "pw"],
        "src4g.raw",
        "vpc.qcow2",
    )
    .ok();
    let check = qemu_with_secret(d, "check", "pw", "vpc.qcow2", &[]);
    assert_check_clean(&check, "vpc.qcow2");
    qemu_with_secret(
        d,
        "compare",
        "pw",
        "vpc.qcow2",
        &["driver=raw,file.filename=src4g.raw"],
    )
    .ok();
    let info = qemu_info(d, "vpc.qcow2");
    assert_eq!(info["virtual-size"], 4u64 << 30);
    assert_eq!(info["encrypted"], true);
    assert_eq!(info["format-specific"]["data"]["encrypt"]["format"], "luks");
    // Sparse: the file holds the data, the LUKS header and metadata, not 4 GiB.
    let size = std::fs::metadata(d.join("vpc.qcow2")).unwrap().len();
    assert!(size < 72 << 20, "output is {size} bytes");
}

#[test]
fn keygen_passphrase_opens_an_ibm_vpc_image_in_qemu_and_dump_shows_its_header() {
    require!("qemu-img");
    // 30 whole 64 KiB clusters and a short last one holding data: the writer pads it.
    let dir = setup(30 * 65536 + 34816, 29);
    let d = dir.path();
    diskseal(d, &["keygen", "--passphrase", "-o", "vpc.pass"]).ok();
    let text = std::fs::read(d.join("vpc.pass")).unwrap();
    assert_eq!(
        text.len(),
        43,
        "256 bits of base64url, no padding, no newline"
    );
    assert!(
        text.iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_')
    );
    encrypt_fast(
        d,
        &["-q", "--profile", "ibm-vpc", "--key-file", "vpc.pass"],
        "src.raw",
        "vpc.qcow2",
    )
    .ok();
    qemu_with_secret(
        d,
        "compare",
        "vpc.pass",
        "vpc.qcow2",
        &["driver=raw,file.filename=src.raw"],
    )
    .ok();
    let dump: serde_json::Value =
        serde_json::from_str(&diskseal(d, &["dump", "--json", "vpc.qcow2"]).ok().stdout).unwrap();
    assert_eq!(dump["container"], "qcow2");
    assert_eq!(dump["luks"]["version"], 1);
    assert_eq!(dump["luks"]["cipher"], "aes-xts-plain64");
    // Raw-file sizes mean nothing inside qcow2.
    assert!(dump["luks"].get("payload_size").is_none(), "{dump}");
    assert!(dump["luks"].get("file_size").is_none(), "{dump}");
}

#[test]
fn ibm_vpc_resize_and_utf8_passphrase() {
    require!("qemu-img");
    let dir = setup(3 << 20, 23);
    let d = dir.path();
    let r = encrypt_fast(
        d,
        &[
            "--profile",
            "ibm-vpc",
            "--resize",
            "100G",
            "--key-file",
            "pw",
        ],
        "src.raw",
        "vpc.qcow2",
    )
    .ok();
    assert!(!r.stderr.contains("10 to 250 GiB"), "{}", r.stderr);
    let info = qemu_info(d, "vpc.qcow2");
    assert_eq!(info["virtual-size"], 100u64 << 30);
    qemu_with_secret(d, "check", "pw", "vpc.qcow2", &[]).ok();
    // The first 3 MiB are the source, the rest reads as zeros.
    qemu_with_secret(d, "convert", "pw", "vpc.qcow2", &["-O", "raw", "back.raw"]).ok();
    let back = std::fs::File::open(d.join("back.raw")).unwrap();
    let mut head = vec![0u8; 3 << 20];
    std::os::unix::fs::FileExt::read_exact_at(&back, &mut head, 0).unwrap();
    assert!(head == read(d.join("src.raw")));
    // A small image gets a warning about IBM's 10-250 GiB rule.
    assert!(
        encrypt_fast(
            d,
            &["--profile", "ibm-vpc", "--key-file", "pw"],
            "src.raw",
            "small.qcow2"
        )
        .ok()
        .stderr
        .contains("10 to 250 GiB")
    );
    // QEMU reads the secret as UTF-8 text.
    std::fs::write(d.join("bin.key"), [0xffu8, 0xfe, 0x00, 0x01]).unwrap();
    let r = diskseal(
        d,
        &[
            "encrypt",
            "--profile",
            "ibm-vpc",
            "--key-file",
            "bin.key",
            "src.raw",
            "x.qcow2",
        ],
    );
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("UTF-8"), "{}", r.stderr);
    assert!(
        r.stderr
            .contains("hint: make a text passphrase with `diskseal keygen --passphrase"),
        "{}",
        r.stderr
    );
    assert!(!d.join("x.qcow2").exists());
    // Shrinking is refused.
    let r = diskseal(
        d,
        &[
            "encrypt",
            "--profile",
            "ibm-vpc",
            "--resize",
            "1M",
            "--key-file",
            "pw",
            "src.raw",
            "y.qcow2",
        ],
    );
    assert!(
        r.code == 2 && r.stderr.contains("smaller than the source"),
        "{}",
        r.stderr
    );
}

#[test]
fn sparse_raw_sources_are_read_only_where_they_hold_data() {
    require!("qemu-img");
    let dir = setup(0, 0);
    let d = dir.path();
    std::fs::write(d.join("pw"), b"secret pass").unwrap();
    sparse_source(
        d,
        "sp.raw",
        256 << 20,
        &[(5 << 20, 1 << 20), (200 << 20, 4096)],
    );
    let info: serde_json::Value =
        serde_json::from_str(&diskseal(d, &["info", "--json", "sp.raw"]).ok().stdout).unwrap();
    let qinfo = qemu_info(d, "sp.raw");
    assert_eq!(info["virtual-size"], qinfo["virtual-size"]);
    assert_eq!(info["format"], qinfo["format"]);
    assert!(
        info["allocation"]["data"].as_u64().unwrap() <= 2 << 20,
        "{info}"
    );
    // Default: zeros are encrypted (the guest reads zeros); only the data was read.
    let j: serde_json::Value = serde_json::from_str(
        &encrypt_fast(d, &["--json", "--key-file", "pw"], "sp.raw", "full.luks")
            .ok()
            .stdout,
    )
    .unwrap();
    assert!(j["data_bytes_read"].as_u64().unwrap() <= 2 << 20, "{j}");
    diskseal(
        d,
        &[
            "verify",
            "-q",
            "--key-file",
            "pw",
            "--against",
            "sp.raw",
            "full.luks",
        ],
    )
    .ok();
    // --sparse: holes stay holes in the output; the data still decrypts.
    encrypt_fast(
        d,
        &["-q", "--sparse", "--key-file", "pw"],
        "sp.raw",
        "holey.luks",
    )
    .ok();
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(d.join("holey.luks")).unwrap();
    assert_eq!(m.len(), (16 << 20) + (256 << 20));
    assert!(
        m.blocks() * 512 < 24 << 20,
        "allocated {} bytes",
        m.blocks() * 512
    );
    diskseal(
        d,
        &[
            "decrypt",
            "-q",
            "--key-file",
            "pw",
            "holey.luks",
            "holey.raw",
        ],
    )
    .ok();
    let (a, b) = (read(d.join("holey.raw")), read(d.join("sp.raw")));
    assert!(
        a[5 << 20..6 << 20] == b[5 << 20..6 << 20]
            && a[200 << 20..(200 << 20) + 4096] == b[200 << 20..(200 << 20) + 4096]
    );
}

#[test]
fn decrypt_to_plain_qcow2() {
    require!("qemu-img");
    let dir = setup(0, 0);
    let d = dir.path();
    std::fs::write(d.join("pw"), b"secret pass").unwrap();
    sparse_source(
        d,
        "sp.raw",
        64 << 20,
        &[(1 << 20, 3 << 20), ((40 << 20) + 512, 1000)],
    );
    encrypt_fast(d, &["-q", "--key-file", "pw"], "sp.raw", "e.luks").ok();
    diskseal(
        d,
        &[
            "decrypt",
            "-q",
            "-O",
            "qcow2",
            "--key-file",
            "pw",
            "e.luks",
            "plain.qcow2",
        ],
    )
    .ok();
    let check = run_in(d, "qemu-img", &["check", "plain.qcow2"]);
    assert_eq!(check.code, 0, "{} {}", check.stdout, check.stderr);
    run_in(
        d,
        "qemu-img",
        &[
            "compare",
            "-f",
            "qcow2",
            "-F",
            "raw",
            "plain.qcow2",
            "sp.raw",
        ],
    )
    .ok();
    assert!(std::fs::metadata(d.join("plain.qcow2")).unwrap().len() < 6 << 20);
}

#[test]
fn vhd_wrapped_luks_reads_in_qemu_and_opens_in_cryptsetup() {
    require!("qemu-img", "cryptsetup");
    let dir = setup((5 << 20) + 4096, 24);
    let d = dir.path();
    for (ty, align) in [("luks2", false), ("luks2", true), ("luks1", false)] {
        let mut args = vec![
            "encrypt",
            "-q",
            "--type",
            ty,
            "-O",
            "vhd",
            "--key-file",
            "pw",
        ];
        if align {
            args.push("--vhd-align");
        }
        args.extend(FAST_PBKDF2);
        args.extend(["src.raw", "w.vhd"]);
        diskseal(d, &args).ok();
        let len = std::fs::metadata(d.join("w.vhd")).unwrap().len();
        let info: serde_json::Value = serde_json::from_str(
            &run_in(
                d,
                "qemu-img",
                &["info", "-f", "vpc", "--output=json", "w.vhd"],
            )
            .ok()
            .stdout,
        )
        .unwrap();
        assert_eq!(
            info["virtual-size"],
            len - 512,
            "{ty}: qemu sees the LUKS file as the VHD's disk"
        );
        if align {
            assert_eq!((len - 512) % (1 << 20), 0);
        }
        // cryptsetup opens the file as it is; the LUKS2 segment stops before the footer.
        run_in(
            d,
            "cryptsetup",
            &["open", "--test-passphrase", "--key-file", "pw", "w.vhd"],
        )
        .ok();
        if ty == "luks2" {
            let dump = run_in(d, "cryptsetup", &["luksDump", "w.vhd"]).ok().stdout;
            assert!(!dump.contains("(whole device)"), "{dump}");
        }
        // `info` names it as qemu-img does (vpc, its disk the whole LUKS file), and what it holds.
        let info = diskseal(d, &["info", "w.vhd"]).ok().stdout;
        assert!(
            info.contains(&format!(
                "file format: vpc (fixed) holding {}\nvirtual size: ",
                ty.to_uppercase()
            )) && info.contains(&format!("({} bytes)", len - 512)),
            "{info}"
        );
        // diskseal sees through the footer; with --vhd-align the payload grows by zeros.
        diskseal(
            d,
            &[
                "verify",
                "-q",
                "--key-file",
                "pw",
                "--against",
                "src.raw",
                "w.vhd",
            ],
        )
        .ok();
        std::fs::remove_file(d.join("w.vhd")).unwrap();
    }
}

#[test]
fn qcow2_luks_images_decrypt_and_verify_both_ways() {
    require!("qemu-img");
    let dir = setup(0, 0);
    let d = dir.path();
    std::fs::write(d.join("pw"), b"secret pass").unwrap();
    sparse_source(
        d,
        "sp.raw",
        32 << 20,
        &[(0, 1 << 20), ((20 << 20) + 512, 300_000)],
    );
    // qemu-img's own qcow2-LUKS (the IBM docs' command).
    run_in(
        d,
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "qcow2",
            "--object",
            "secret,id=sec0,file=pw",
            "-o",
            "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10",
            "sp.raw",
            "qemu.qcow2",
        ],
    )
    .ok();
    // ours.
    encrypt_fast(
        d,
        &["-q", "--profile", "ibm-vpc", "--key-file", "pw"],
        "sp.raw",
        "ours.qcow2",
    )
    .ok();
    for img in ["qemu.qcow2", "ours.qcow2"] {
        let v = diskseal(
            d,
            &["verify", "--key-file", "pw", "--against", "sp.raw", img],
        )
        .ok();
        assert!(
            v.stdout.contains("qcow2 + LUKS1") && v.stdout.contains("identical"),
            "{}",
            v.stdout
        );
        diskseal(
            d,
            &[
                "decrypt",
                "-q",
                "--force",
                "--key-file",
                "pw",
                img,
                "plain.raw",
            ],
        )
        .ok();
        assert!(read(d.join("plain.raw")) == read(d.join("sp.raw")), "{img}");
        diskseal(
            d,
            &[
                "decrypt",
                "-q",
                "--force",
                "-O",
                "qcow2",
                "--key-file",
                "pw",
                img,
                "plain.qcow2",
            ],
        )
        .ok();
        run_in(
            d,
            "qemu-img",
            &[
                "compare",
                "-f",
                "qcow2",
                "-F",
                "raw",
                "plain.qcow2",
                "sp.raw",
            ],
        )
        .ok();
        let info: serde_json::Value =
            serde_json::from_str(&diskseal(d, &["info", "--json", img]).ok().stdout).unwrap();
        assert_eq!(info["encrypted"], true, "{info}");
        assert_eq!(info["format-specific"]["encrypt"]["format"], "luks");
        let dump = diskseal(d, &["dump", img]).ok().stdout;
        assert!(
            dump.contains("QEMU-native LUKS")
                && dump.contains("Version:        1")
                && dump.contains("0: ENABLED"),
            "{dump}"
        );
    }
    std::fs::write(d.join("bad"), b"nope").unwrap();
    let r = diskseal(d, &["verify", "--key-file", "bad", "ours.qcow2"]);
    assert!(
        r.code == 2 && r.stderr.contains("no keyslot opens"),
        "{}",
        r.stderr
    );
    // A plain qcow2 is not an encrypted image.
    let r = diskseal(d, &["verify", "--key-file", "pw", "plain.qcow2"]);
    assert!(
        r.code == 2 && r.stderr.contains("not encrypted"),
        "{}",
        r.stderr
    );
}

#[test]
fn cluster_size_512_4k_2m_for_ibm_vpc_and_decrypt_match_qemu() {
    require!("qemu-img");
    let dir = setup(0, 0);
    let d = dir.path();
    // 9 MiB + 1.5 KiB: data at unaligned places and in the short last cluster (2 MiB clusters), holes
    // between.
    let len = (9 << 20) + 1536;
    sparse_source(
        d,
        "cs.raw",
        len,
        &[(4096, 300_000), (6_000_001, 70_000), (len - 1000, 1000)],
    );
    encrypt_fast(
        d,
        &["-q", "--profile", "luks1", "--key-file", "pw"],
        "cs.raw",
        "cs.luks",
    )
    .ok();
    for (arg, size) in [("512", 512u64), ("4K", 4096), ("2M", 2 << 20)] {
        let vpc = format!("vpc-{arg}.qcow2");
        let flags = [
            "--json",
            "--profile",
            "ibm-vpc",
            "--cluster-size",
            arg,
            "--key-file",
            "pw",
        ];
        let report: serde_json::Value =
            serde_json::from_str(&encrypt_fast(d, &flags, "cs.raw", &vpc).ok().stdout).unwrap();
        // The LUKS header sits at cluster 1.
        assert_eq!(report["data_offset"], size, "{report}");
        let check = qemu_with_secret(d, "check", "pw", &vpc, &[]);
        assert_check_clean(&check, &vpc);
        let info = qemu_info(d, &vpc);
        assert_eq!(info["cluster-size"], size, "{info}");
        assert_eq!(info["virtual-size"], len, "{info}");
        assert_eq!(info["format-specific"]["data"]["encrypt"]["format"], "luks");
        qemu_with_secret(
            d,
            "compare",
            "pw",
            &vpc,
            &["driver=raw,file.filename=cs.raw"],
        )
        .ok();
        // And diskseal reads its own output back.
        diskseal(
            d,
            &[
                "verify",
                "-q",
                "--key-file",
                "pw",
                "--against",
                "cs.raw",
                &vpc,
            ],
        )
        .ok();

        // Decrypting a LUKS file into a plain qcow2 with that cluster size.
        let plain = format!("plain-{arg}.qcow2");
        diskseal(
            d,
            &[
                "decrypt",
                "-q",
                "-O",
                "qcow2",
                "--cluster-size",
                arg,
                "--key-file",
                "pw",
                "cs.luks",
                &plain,
            ],
        )
        .ok();
        let check = run_in(d, "qemu-img", &["check", &plain]);
        assert_check_clean(&check, &plain);
        let info = qemu_info(d, &plain);
        assert_eq!(info["cluster-size"], size, "{info}");
        run_in(
            d,
            "qemu-img",
            &["compare", "-f", "qcow2", "-F", "raw", &plain, "cs.raw"],
        )
        .ok();
    }
}
