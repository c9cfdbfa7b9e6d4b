//! The command line's contract: error paths (each names the file and field, exits 2, leaves nothing
//! half-written), refusals, key-file semantics, exit codes and machine output.

use std::path::Path;

use crate::util::{
    FAST_PBKDF2, diskseal, diskseal_stdin, edit_luks2_json, encrypt_fast, pattern, read, run_in,
    setup,
};

const MIB: usize = 1 << 20;

/// Encrypts `src.raw` into `name` with the fast KDF.
fn make(d: &Path, name: &str, extra: &[&str]) {
    let mut args = vec!["encrypt", "-q", "--key-file", "pw"];
    args.extend(FAST_PBKDF2);
    args.extend(extra);
    args.extend(["src.raw", name]);
    diskseal(d, &args).ok();
}

/// Files in `d`, sorted.
fn listing(d: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[track_caller]
fn fails_with(r: crate::util::Ran, needles: &[&str]) {
    assert_eq!(
        r.code, 2,
        "expected exit 2; stdout {} stderr {}",
        r.stdout, r.stderr
    );
    for n in needles {
        assert!(r.stderr.contains(n), "stderr lacks {n:?}: {}", r.stderr);
    }
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
}

#[test]
fn help_has_examples_and_exit_codes() {
    let dir = setup(0, 0);
    let h = diskseal(dir.path(), &["--help"]).ok().stdout;
    assert!(
        h.contains("Examples:")
            && h.contains("Exit status: 0 success, 1 verification failed, 2 error"),
        "{h}"
    );
    let h = diskseal(dir.path(), &["encrypt", "--help"]).ok().stdout;
    for flag in [
        "--key-file",
        "--volume-key-file",
        "--pbkdf-force-iterations",
        "--sector-size",
        "--pad",
        "--strip-newline",
    ] {
        assert!(h.contains(flag), "encrypt --help lacks {flag}");
    }
}

#[test]
fn wrong_passphrase_and_wrong_volume_key() {
    let dir = setup(MIB, 30);
    let d = dir.path();
    make(d, "out.luks", &[]);
    std::fs::write(d.join("bad"), b"not it").unwrap();
    fails_with(
        diskseal(d, &["verify", "--key-file", "bad", "out.luks"]),
        &["out.luks", "no keyslot opens with this passphrase", "hint:"],
    );
    fails_with(
        diskseal(
            d,
            &["decrypt", "--key-file", "bad", "out.luks", "plain.raw"],
        ),
        &["no keyslot opens"],
    );
    assert!(!d.join("plain.raw").exists());
    std::fs::write(d.join("vk"), pattern(64, 1)).unwrap();
    fails_with(
        diskseal(d, &["verify", "--volume-key-file", "vk", "out.luks"]),
        &["does not match the header's digest"],
    );
}

#[test]
fn key_file_semantics() {
    let dir = setup(MIB, 31);
    let d = dir.path();
    std::fs::write(d.join("empty"), b"").unwrap();
    fails_with(
        diskseal(
            d,
            &["encrypt", "--key-file", "empty", "src.raw", "out.luks"],
        ),
        &["empty: key file is empty"],
    );
    assert_eq!(listing(d), ["empty", "pw", "src.raw"]);
    // A trailing newline is part of the passphrase, with a warning; --strip-newline drops it.
    std::fs::write(d.join("nl"), b"secret pass\n").unwrap();
    let r = encrypt_fast(d, &["--key-file", "nl"], "src.raw", "nl.luks").ok();
    assert!(r.stderr.contains("ends with a newline"), "{}", r.stderr);
    fails_with(
        diskseal(d, &["verify", "--key-file", "pw", "nl.luks"]),
        &["no keyslot opens"],
    );
    diskseal(d, &["verify", "-q", "--key-file", "nl", "nl.luks"]).ok();
    encrypt_fast(
        d,
        &["-q", "--key-file", "nl", "--strip-newline"],
        "src.raw",
        "strip.luks",
    )
    .ok();
    diskseal(d, &["verify", "-q", "--key-file", "pw", "strip.luks"]).ok();
    // "-" reads the key from stdin; without a key and without a terminal there is a clear error.
    diskseal_stdin(
        d,
        &["verify", "-q", "--key-file", "-", "strip.luks"],
        b"secret pass",
    )
    .ok();
    fails_with(
        diskseal(d, &["verify", "strip.luks"]),
        &["no key given", "--key-file"],
    );
    // The volume key file must be 32 or 64 bytes.
    std::fs::write(d.join("vk48"), pattern(48, 2)).unwrap();
    fails_with(
        diskseal(
            d,
            &[
                "encrypt",
                "--key-file",
                "pw",
                "--volume-key-file",
                "vk48",
                "src.raw",
                "x.luks",
            ],
        ),
        &["vk48", "32 or 64 bytes"],
    );
}

#[test]
fn refusals_input_equals_output_existing_output_unreadable_input() {
    let dir = setup(MIB, 32);
    let d = dir.path();
    let src = read(d.join("src.raw"));
    fails_with(
        diskseal(d, &["encrypt", "--key-file", "pw", "src.raw", "src.raw"]),
        &["same file"],
    );
    std::os::unix::fs::symlink(d.join("src.raw"), d.join("link.raw")).unwrap();
    fails_with(
        diskseal(
            d,
            &[
                "encrypt",
                "--key-file",
                "pw",
                "--force",
                "src.raw",
                "link.raw",
            ],
        ),
        &["same file"],
    );
    assert!(read(d.join("src.raw")) == src);
    std::fs::write(d.join("exists.luks"), b"keep me").unwrap();
    fails_with(
        diskseal(
            d,
            &["encrypt", "--key-file", "pw", "src.raw", "exists.luks"],
        ),
        &["exists.luks: output file already exists", "--force"],
    );
    assert_eq!(read(d.join("exists.luks")), b"keep me");
    // A directory is named as such the first time, not "already exists ... --force".
    std::fs::create_dir(d.join("outdir")).unwrap();
    std::fs::write(d.join("dek"), (0u8..32).collect::<Vec<u8>>()).unwrap();
    for args in [
        &["encrypt", "--key-file", "pw", "src.raw", "outdir"][..],
        &[
            "encrypt",
            "--profile",
            "ibm-classic-vhd",
            "--key-file",
            "dek",
            "src.raw",
            "outdir",
        ],
        &["decrypt", "--key-file", "pw", "exists.luks", "outdir"],
    ] {
        let r = diskseal(d, args);
        assert!(!r.stderr.contains("--force"), "{}", r.stderr);
        fails_with(
            r,
            &["outdir: output is a directory", "hint: give a file name"],
        );
    }
    make(d, "exists.luks", &["--force"]);
    diskseal(
        d,
        &[
            "verify",
            "-q",
            "--key-file",
            "pw",
            "--against",
            "src.raw",
            "exists.luks",
        ],
    )
    .ok();
    fails_with(
        diskseal(d, &["encrypt", "--key-file", "pw", "missing.raw", "o.luks"]),
        &["missing.raw", "No such file"],
    );
    std::fs::create_dir(d.join("adir")).unwrap();
    fails_with(
        diskseal(d, &["encrypt", "--key-file", "pw", "adir", "o.luks"]),
        &["adir", "directory"],
    );
    fails_with(
        diskseal(
            d,
            &[
                "encrypt",
                "--key-file",
                "pw",
                "--cipher",
                "aes-cbc-essiv:sha256",
                "src.raw",
                "o.luks",
            ],
        ),
        &["--cipher", "possible values: aes-xts-plain64"],
    );
    assert!(!d.join("o.luks").exists());
}

#[test]
fn sizes_that_are_not_whole_sectors_need_pad() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("pw"), b"secret pass").unwrap();
    std::fs::write(d.join("src.raw"), pattern(MIB + 1000, 33)).unwrap();
    fails_with(
        diskseal(d, &["encrypt", "--key-file", "pw", "src.raw", "o.luks"]),
        &["not a multiple of the 512-byte sector size", "--pad"],
    );
    make(d, "o.luks", &["--pad"]);
    let j: serde_json::Value =
        serde_json::from_str(&diskseal(d, &["dump", "--json", "o.luks"]).ok().stdout).unwrap();
    assert_eq!(j["payload_size"], (MIB + 1024) as u64);
    assert_eq!(j["sector_size"], 512);
    // The padding reads as zeros, so the payload still matches the source.
    diskseal(
        d,
        &[
            "verify",
            "-q",
            "--key-file",
            "pw",
            "--against",
            "src.raw",
            "o.luks",
        ],
    )
    .ok();
}

#[test]
fn cluster_size_is_checked_and_needs_qcow2_output() {
    let dir = setup(MIB, 34);
    let d = dir.path();
    make(d, "o.luks", &[]);
    let encrypt = |extra: &[&str]| {
        let mut args = vec!["encrypt", "--key-file", "pw"];
        args.extend(FAST_PBKDF2);
        args.extend(extra);
        args.extend(["src.raw", "out.img"]);
        diskseal(d, &args)
    };
    let range = "must be a power of two from 512 to 2M";
    for (bad, shown) in [
        ("3000", "3000"),
        ("256", "256"),
        ("4M", "4194304"),
        ("0", "0"),
    ] {
        let flag = format!("--cluster-size {shown}");
        fails_with(
            encrypt(&["--profile", "ibm-vpc", "--cluster-size", bad]),
            &[&flag, range],
        );
        fails_with(
            diskseal(
                d,
                &[
                    "decrypt",
                    "-O",
                    "qcow2",
                    "--cluster-size",
                    bad,
                    "--key-file",
                    "pw",
                    "o.luks",
                    "out.img",
                ],
            ),
            &[&flag, range],
        );
    }
    fails_with(
        encrypt(&["--cluster-size", "4K"]),
        &["--cluster-size needs -O qcow2"],
    );
    fails_with(
        encrypt(&["-O", "vhd", "--cluster-size", "4K"]),
        &["--cluster-size needs -O qcow2"],
    );
    fails_with(
        diskseal(
            d,
            &[
                "decrypt",
                "--cluster-size",
                "4K",
                "--key-file",
                "pw",
                "o.luks",
                "out.img",
            ],
        ),
        &["--cluster-size needs -O qcow2"],
    );
    fails_with(
        diskseal(
            d,
            &[
                "encrypt",
                "--profile",
                "ibm-classic-vhd",
                "--cluster-size",
                "4K",
                "--key-file",
                "pw",
                "src.raw",
                "out.img",
            ],
        ),
        &["--cluster-size does not apply to --profile ibm-classic-vhd"],
    );
    // A size clap cannot parse is a usage error (exit 2 too) naming the flag.
    fails_with(
        encrypt(&["--profile", "ibm-vpc", "--cluster-size", "big"]),
        &["--cluster-size"],
    );
    assert!(!d.join("out.img").exists());
}

#[test]
fn verify_reports_a_mismatch_with_exit_1() {
    let dir = setup(2 * MIB, 34);
    let d = dir.path();
    make(d, "o.luks", &[]);
    let mut other = read(d.join("src.raw"));
    other[MIB + 77] ^= 1;
    std::fs::write(d.join("other.raw"), other).unwrap();
    let r = diskseal(
        d,
        &[
            "verify",
            "--key-file",
            "pw",
            "--against",
            "other.raw",
            "o.luks",
        ],
    );
    assert_eq!(r.code, 1, "{} {}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains(&"MISMATCH".to_string()) && r.stdout.contains(&format!("({})", MIB + 77)),
        "{}",
        r.stdout
    );
    let r = diskseal(
        d,
        &[
            "verify",
            "--json",
            "--key-file",
            "pw",
            "--against",
            "other.raw",
            "o.luks",
        ],
    );
    assert_eq!(r.code, 1);
    let j: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(j["ok"], false);
    assert_eq!(j["first_mismatch"], (MIB + 77) as u64);
}

#[test]
fn json_output_and_plaintext_hash() {
    let dir = setup(MIB, 35);
    let d = dir.path();
    let j: serde_json::Value = serde_json::from_str(
        &encrypt_fast(
            d,
            &["--json", "--key-file", "pw", "--label", "disk"],
            "src.raw",
            "o.luks",
        )
        .ok()
        .stdout,
    )
    .unwrap();
    assert_eq!(j["luks_version"], "luks2");
    assert_eq!(j["sector_size"], 4096);
    assert_eq!(j["data_offset"], 16 * MIB as u64);
    assert_eq!(j["output_size"], 17 * MIB as u64);
    let v: serde_json::Value = serde_json::from_str(
        &diskseal(
            d,
            &[
                "verify",
                "--json",
                "--key-file",
                "pw",
                "--plaintext-sha256",
                "o.luks",
            ],
        )
        .ok()
        .stdout,
    )
    .unwrap();
    use sha2::Digest;
    let expect: String = sha2::Sha256::digest(read(d.join("src.raw")))
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(v["plaintext_sha256"], expect);
    let dump: serde_json::Value =
        serde_json::from_str(&diskseal(d, &["dump", "--json", "o.luks"]).ok().stdout).unwrap();
    assert_eq!(dump["label"], "disk");
    let text = dump.to_string();
    assert!(!text.contains("secret pass"));
}

#[test]
fn keygen_mode_size_and_no_overwrite() {
    use std::os::unix::fs::PermissionsExt;
    let dir = setup(0, 0);
    let d = dir.path();
    diskseal(d, &["keygen", "-o", "k64"]).ok();
    diskseal(d, &["keygen", "--bytes", "32", "-o", "k32"]).ok();
    assert_eq!(read(d.join("k64")).len(), 64);
    assert_eq!(read(d.join("k32")).len(), 32);
    assert_eq!(
        std::fs::metadata(d.join("k64"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    diskseal(d, &["keygen", "--passphrase", "-o", "p.txt"]).ok();
    assert_eq!(read(d.join("p.txt")).len(), 43);
    assert_eq!(
        std::fs::metadata(d.join("p.txt"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    assert_ne!(
        diskseal(d, &["keygen", "--passphrase", "--bytes", "32", "-o", "q"]).code,
        0
    );
    let before = read(d.join("k64"));
    fails_with(
        diskseal(d, &["keygen", "-o", "k64"]),
        &["k64", "already exists"],
    );
    assert_eq!(read(d.join("k64")), before);
}

#[test]
fn damaged_headers_are_reported_with_file_field_and_offset() {
    let dir = setup(MIB, 36);
    let d = dir.path();
    make(d, "good.luks", &[]);
    let good = read(d.join("good.luks"));
    let variant = |name: &str, f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = good.clone();
        f(&mut b);
        std::fs::write(d.join(name), b).unwrap();
    };

    variant("trunc.luks", &|b| b.truncate(8192));
    fails_with(
        diskseal(d, &["dump", "trunc.luks"]),
        &["trunc.luks", "LUKS2"],
    );
    variant("trunc2.luks", &|b| b.truncate(64 * 1024));
    fails_with(
        diskseal(d, &["dump", "trunc2.luks"]),
        &[
            "trunc2.luks",
            "keyslots.0.area",
            "beyond the end of the file",
            "truncated",
        ],
    );
    variant("zero.luks", &|b| b[..1 << 20].fill(0));
    fails_with(
        diskseal(d, &["dump", "zero.luks"]),
        &["zero.luks", "not a LUKS file"],
    );
    variant("empty.luks", &|b| b.clear());
    fails_with(
        diskseal(d, &["verify", "--key-file", "pw", "empty.luks"]),
        &["empty.luks", "too short"],
    );

    // One damaged copy: the other is used, with a warning; both damaged: a clear failure.
    variant("csum1.luks", &|b| b[4096 + 10] ^= 0x20);
    let r = diskseal(
        d,
        &[
            "verify",
            "--key-file",
            "pw",
            "--against",
            "src.raw",
            "csum1.luks",
        ],
    );
    assert!(
        r.code == 1
            && r.stderr.contains("primary header copy is damaged")
            && r.stderr.contains("using the secondary at 0x4000")
            && r.stderr.contains("checksum mismatch")
            && r.stdout.contains("DAMAGED")
            && r.stdout.contains("cryptsetup repair")
            && !r.stdout.contains("all structures valid"),
        "{}{}",
        r.stdout,
        r.stderr
    );
    // decrypt still works from the good copy, with the warning.
    let r = diskseal(
        d,
        &["decrypt", "--key-file", "pw", "csum1.luks", "csum1.raw"],
    )
    .ok();
    assert!(
        r.stderr.contains("primary header copy is damaged"),
        "{}",
        r.stderr
    );
    assert!(read(d.join("csum1.raw")) == read(d.join("src.raw")));
    // A data segment at offset 0 in a single file: the "data" starts with the header.
    std::fs::copy(d.join("good.luks"), d.join("off0.luks")).unwrap();
    edit_luks2_json(&d.join("off0.luks"), 2, |v| {
        v["segments"]["0"]["offset"] = serde_json::json!("0")
    });
    let r = diskseal(d, &["verify", "--key-file", "pw", "off0.luks"]);
    assert!(
        r.code == 1
            && r.stdout.contains("DAMAGED")
            && r.stdout.contains("overlaps the LUKS2 header area")
            && !r.stdout.contains("all structures valid"),
        "{}{}",
        r.stdout,
        r.stderr
    );
    variant("csum2.luks", &|b| b[16384 + 4096 + 10] ^= 0x20);
    let r = diskseal(d, &["dump", "csum2.luks"]).ok();
    assert!(
        r.stdout.contains("secondary header copy is damaged"),
        "{}",
        r.stdout
    );
    variant("csum12.luks", &|b| {
        b[4096 + 10] ^= 0x20;
        b[16384 + 4096 + 10] ^= 0x20;
    });
    fails_with(
        diskseal(d, &["verify", "--key-file", "pw", "csum12.luks"]),
        &["csum12.luks", "checksum mismatch", "0x1c0"],
    );
    // Non-NUL bytes after the JSON text.
    variant("junk.luks", &|b| {
        b[16383] = b'x';
        b[16384 + 16383] = b'x';
    });
    fails_with(diskseal(d, &["dump", "junk.luks"]), &["junk.luks"]);
    // The seqid decides between two valid copies.
    variant("seq.luks", &|b| b[16384 + 23] = 9);
    edit_luks2_json(&d.join("seq.luks"), 1, |_| {});
    let r = diskseal(d, &["dump", "seq.luks"]).ok();
    assert!(
        r.stdout.contains("Epoch:          9") && r.stdout.contains("differ"),
        "{}",
        r.stdout
    );
}

#[test]
fn hostile_json_metadata() {
    let dir = setup(MIB, 37);
    let d = dir.path();
    make(d, "good.luks", &[]);
    type Edit = fn(&mut serde_json::Value);
    let cases: [(&str, Edit, &[&str]); 8] = [
        (
            "req",
            |v| {
                v["config"]["requirements"] =
                    serde_json::json!({"mandatory": ["online-reencrypt-v9"]})
            },
            &["online-reencrypt-v9", "requirements"],
        ),
        (
            "nokdf",
            |v| {
                v["keyslots"]["0"].as_object_mut().unwrap().remove("kdf");
            },
            &["keyslots.0.kdf: is missing"],
        ),
        (
            "noseg",
            |v| v["segments"] = serde_json::json!({}),
            &["segments: has no segment"],
        ),
        (
            "bigoff",
            |v| v["segments"]["0"]["offset"] = "18446744073709551104".into(),
            &["beyond the end of the file"],
        ),
        (
            "overflow",
            |v| v["segments"]["0"]["offset"] = "99999999999999999999999".into(),
            &["segments.0.offset", "uint64"],
        ),
        (
            "area",
            |v| v["keyslots"]["0"]["area"]["offset"] = "1048576000".into(),
            &["keyslots.0.area", "outside the keyslots area"],
        ),
        (
            "cipher",
            |v| v["segments"]["0"]["encryption"] = "serpent-xts-plain64".into(),
            &["segment 0", "unsupported cipher \"serpent-xts-plain64\""],
        ),
        (
            "ksize",
            |v| v["config"]["keyslots_size"] = "999999999999".into(),
            &["config.keyslots_size"],
        ),
    ];
    for (name, edit, needles) in cases {
        let f = format!("{name}.luks");
        std::fs::copy(d.join("good.luks"), d.join(&f)).unwrap();
        edit_luks2_json(&d.join(&f), 2, edit);
        let r = diskseal(d, &["verify", "--key-file", "pw", &f]);
        fails_with(r, &[&[f.as_str()][..], needles].concat());
    }
}

#[test]
fn hostile_luks1_headers() {
    let dir = setup(MIB, 38);
    let d = dir.path();
    make(d, "l1.luks", &["--profile", "luks1"]);
    let good = read(d.join("l1.luks"));
    let mut t = good.clone();
    t.truncate(100_000);
    std::fs::write(d.join("t.luks"), t).unwrap();
    fails_with(
        diskseal(d, &["dump", "t.luks"]),
        &["t.luks", "payloadOffset", "beyond the end of the file"],
    );
    let mut s = good.clone();
    s[208 + 40..208 + 44].copy_from_slice(&5000u32.to_be_bytes());
    std::fs::write(d.join("s.luks"), s).unwrap();
    fails_with(
        diskseal(d, &["dump", "s.luks"]),
        &["s.luks", "keyslot 0 key material", "0xf8"],
    );
    let mut h = good;
    h[72..80].copy_from_slice(b"md5\0\0\0\0\0");
    std::fs::write(d.join("h.luks"), h).unwrap();
    fails_with(
        diskseal(d, &["verify", "--key-file", "pw", "h.luks"]),
        &["h.luks", "hashSpec", "unsupported hash \"md5\""],
    );
}

/// A 1 MiB qcow2 v3 image with 64 KiB clusters whose first cluster holds data (header, refcount table,
/// refcount block, L1, L2, data), and the raw disk it stands for.
fn minimal_qcow2() -> (Vec<u8>, Vec<u8>) {
    const C: usize = 65536;
    let mut q = vec![0u8; 6 * C];
    let put32 =
        |q: &mut Vec<u8>, at: usize, v: u32| q[at..at + 4].copy_from_slice(&v.to_be_bytes());
    let put64 =
        |q: &mut Vec<u8>, at: usize, v: u64| q[at..at + 8].copy_from_slice(&v.to_be_bytes());
    q[..4].copy_from_slice(b"QFI\xfb");
    put32(&mut q, 4, 3); // version
    put32(&mut q, 20, 16); // cluster_bits
    put64(&mut q, 24, MIB as u64); // size
    put32(&mut q, 36, 1); // l1_size
    put64(&mut q, 40, 3 * C as u64); // l1_table_offset
    put64(&mut q, 48, C as u64); // refcount_table_offset
    put32(&mut q, 56, 1); // refcount_table_clusters
    put32(&mut q, 96, 4); // refcount_order
    put32(&mut q, 100, 104); // header_length
    put64(&mut q, C, 2 * C as u64); // refcount table -> refcount block
    for i in 0..6 {
        q[2 * C + 2 * i + 1] = 1; // 16-bit refcount 1 for clusters 0..=5
    }
    put64(&mut q, 3 * C, (1 << 63) | (4 * C as u64)); // L1[0] -> L2
    put64(&mut q, 4 * C, (1 << 63) | (5 * C as u64)); // L2[0] -> data
    let data = pattern(C, 77);
    q[5 * C..].copy_from_slice(&data);
    let mut plain = data;
    plain.resize(MIB, 0);
    (q, plain)
}

#[test]
fn container_inputs_are_not_mistaken_for_raw() {
    let dir = setup(MIB, 39);
    let d = dir.path();
    make(d, "o.luks", &[]);
    fails_with(
        diskseal(d, &["encrypt", "--key-file", "pw", "o.luks", "x.luks"]),
        &["o.luks", "LUKS2 file: it is already encrypted", "-f raw"],
    );
    // A valid qcow2 (built by hand, laid out as in formats.md §5.3) is read as qcow2, not as raw.
    let (q, plain) = minimal_qcow2();
    std::fs::write(d.join("q.img"), q).unwrap();
    std::fs::write(d.join("q.raw"), plain).unwrap();
    encrypt_fast(d, &["-q", "--key-file", "pw"], "q.img", "x.luks").ok();
    diskseal(
        d,
        &[
            "verify",
            "-q",
            "--key-file",
            "pw",
            "--against",
            "q.raw",
            "x.luks",
        ],
    )
    .ok();
    make(d, "forced.luks", &["-f", "raw", "--force"]);
}

/// A write that fails mid-way (file size limit) reports the error and leaves no output or temp file.
#[test]
fn write_failure_midway_leaves_nothing() {
    let dir = setup(8 * MIB, 40);
    let d = dir.path();
    let bin = crate::util::diskseal_bin();
    // No `trap '' XFSZ` here: diskseal itself must ignore SIGXFSZ (exit 153 and a temp file left before).
    let script = "ulimit -f 18432; exec \"$0\" \"$@\"";
    let mut args = vec![
        "-c",
        script,
        bin.to_str().unwrap(),
        "encrypt",
        "--key-file",
        "pw",
    ];
    args.extend(FAST_PBKDF2);
    args.extend(["src.raw", "out.luks"]);
    let r = run_in(d, "bash", &args);
    fails_with(
        r,
        &["out.luks", "cannot write", "File too large", "at offset"],
    );
    assert_eq!(listing(d), ["pw", "src.raw"]);
}

/// A destination on a tiny tmpfs (mounted in a private user + mount namespace with `unshare -rm`, so
/// no privileges are needed): every writer reports "no space left on device" with the file and leaves
/// nothing on the file system.
#[test]
fn full_disk_is_reported_and_leaves_nothing() {
    let probe = std::process::Command::new("unshare")
        .args(["-rm", "true"])
        .status();
    if !probe.is_ok_and(|s| s.success()) {
        eprintln!(
            "skipped: this sandbox allows no user namespaces (unshare -rm), so no tmpfs can be mounted"
        );
        return;
    }
    let dir = setup(8 * MIB, 41);
    let d = dir.path();
    std::fs::create_dir(d.join("tiny")).unwrap();
    diskseal(d, &["keygen", "-o", "dek.bin"]).ok();
    let bin = crate::util::diskseal_bin();
    // Mount 4 MiB of tmpfs on ./tiny, run diskseal, then list what is left in ./tiny.
    let script = r#"mount -t tmpfs -o size=4m tmpfs tiny || exit 99
"$0" "$@"; rc=$?; echo "left: [$(ls -A tiny)]"; exit $rc"#;
    let mut cases: Vec<Vec<&str>> = Vec::new();
    let fast = FAST_PBKDF2.to_vec();
    cases.push(
        [
            &["encrypt", "--key-file", "pw"][..],
            &fast,
            &["src.raw", "tiny/o.luks"],
        ]
        .concat(),
    );
    cases.push(
        [
            &["encrypt", "--profile", "ibm-vpc", "--key-file", "pw"][..],
            &fast,
            &["src.raw", "tiny/o.qcow2"],
        ]
        .concat(),
    );
    cases.push(vec![
        "encrypt",
        "--profile",
        "ibm-classic-vhd",
        "--key-file",
        "dek.bin",
        "src.raw",
        "tiny/o.vhd",
    ]);
    make(d, "x.luks", &[]);
    cases.push(vec![
        "decrypt",
        "--key-file",
        "pw",
        "x.luks",
        "tiny/back.raw",
    ]);
    for args in cases {
        let mut full = vec!["-rm", "bash", "-c", script, bin.to_str().unwrap()];
        full.extend(&args);
        let r = run_in(d, "unshare", &full);
        assert!(
            r.stdout.contains("left: []"),
            "{args:?} left files: {}",
            r.stdout
        );
        let dst = args.last().unwrap().trim_start_matches("tiny/");
        fails_with(r, &[dst, "no space left on device", "hint: free space"]);
    }
}

/// Ctrl-C during encryption removes the partial output.
#[test]
fn interrupt_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("pw"), b"secret pass").unwrap();
    // A large sparse input keeps the encryption busy long enough to be interrupted.
    std::fs::File::create(d.join("big.raw"))
        .unwrap()
        .set_len(16 << 30)
        .unwrap();
    let child = std::process::Command::new(crate::util::diskseal_bin())
        .args(["encrypt", "--threads", "1", "--key-file", "pw"])
        .args(FAST_PBKDF2)
        .args(["big.raw", "out.luks"])
        .current_dir(d)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !listing(d).iter().any(|f| f.ends_with(".tmp")) {
        assert!(
            std::time::Instant::now() < deadline,
            "no temp output appeared"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    run_in(d, "kill", &["-INT", &child.id().to_string()]).ok();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("interrupted"));
    assert_eq!(listing(d), ["big.raw", "pw"]);
}

/// SIGKILL at random points: the destination is either absent or (with --force) still the old file,
/// and the next run removes the leftover temporary file.
#[test]
fn kill_9_never_leaves_a_partial_output() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("pw"), b"secret pass").unwrap();
    let f = std::fs::File::create(d.join("src.raw")).unwrap();
    f.set_len(1 << 30).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &pattern(64 << 20, 5), 100 << 20).unwrap();
    std::fs::write(d.join("old.luks"), b"the previous image").unwrap();
    let delays = pattern(40, 77);
    for (trial, &delay) in delays.iter().take(20).enumerate() {
        let (dst, force) = if trial % 2 == 0 {
            ("new.luks", false)
        } else {
            ("old.luks", true)
        };
        let mut cmd = std::process::Command::new(crate::util::diskseal_bin());
        cmd.args(["encrypt", "-q", "--threads", "2", "--key-file", "pw"])
            .args(FAST_PBKDF2);
        if force {
            cmd.arg("--force");
        }
        let mut child = cmd.args(["src.raw", dst]).current_dir(d).spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(u64::from(delay) * 3));
        let _ = child.kill();
        let status = child.wait().unwrap();
        if status.success() {
            std::fs::remove_file(d.join(dst)).ok();
            if force {
                std::fs::write(d.join("old.luks"), b"the previous image").unwrap();
            }
            continue;
        }
        if force {
            assert_eq!(
                read(d.join("old.luks")),
                b"the previous image",
                "trial {trial}"
            );
        } else {
            assert!(
                !d.join("new.luks").exists(),
                "trial {trial}: partial output left"
            );
        }
    }
    // The next run cleans up what killed runs left behind.
    make(d, "new.luks", &["--force"]);
    make(d, "old.luks", &["--force"]);
    let left: Vec<String> = listing(d)
        .into_iter()
        .filter(|f| f.ends_with(".tmp"))
        .collect();
    assert!(left.is_empty(), "stale temporary files: {left:?}");
    // The same for decrypt.
    for &delay in delays.iter().skip(20).take(8) {
        let mut child = std::process::Command::new(crate::util::diskseal_bin())
            .args(["decrypt", "-q", "--key-file", "pw", "new.luks", "plain.raw"])
            .current_dir(d)
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(u64::from(delay) * 2));
        let _ = child.kill();
        if child.wait().unwrap().success() {
            std::fs::remove_file(d.join("plain.raw")).unwrap();
        } else {
            assert!(!d.join("plain.raw").exists(), "partial decrypt output left");
        }
    }
    diskseal(
        d,
        &["decrypt", "-q", "--key-file", "pw", "new.luks", "plain.raw"],
    )
    .ok();
    let left: Vec<String> = listing(d)
        .into_iter()
        .filter(|f| f.ends_with(".tmp"))
        .collect();
    assert!(
        left.is_empty(),
        "stale temporary files after decrypt: {left:?}"
    );
}

/// Decrypted plaintext is 0600 whatever the umask, unless --mode says otherwise.
#[test]
fn decrypted_plaintext_is_private_unless_mode_says_otherwise() {
    use std::os::unix::fs::PermissionsExt;
    let dir = setup(MIB, 42);
    let d = dir.path();
    make(d, "m.luks", &[]);
    let mode = |f: &str| std::fs::metadata(d.join(f)).unwrap().permissions().mode() & 0o777;
    diskseal(d, &["decrypt", "-q", "--key-file", "pw", "m.luks", "p.raw"]).ok();
    assert_eq!(mode("p.raw"), 0o600);
    diskseal(
        d,
        &[
            "decrypt",
            "-q",
            "-O",
            "qcow2",
            "--key-file",
            "pw",
            "m.luks",
            "p.qcow2",
        ],
    )
    .ok();
    assert_eq!(mode("p.qcow2"), 0o600);
    diskseal(
        d,
        &[
            "decrypt",
            "-q",
            "--mode",
            "0640",
            "--key-file",
            "pw",
            "m.luks",
            "w.raw",
        ],
    )
    .ok();
    assert_eq!(mode("w.raw"), 0o640);
    assert!(read(d.join("w.raw")) == read(d.join("src.raw")));
    let r = diskseal(
        d,
        &[
            "decrypt",
            "--mode",
            "999",
            "--key-file",
            "pw",
            "m.luks",
            "x.raw",
        ],
    );
    assert!(r.code == 2 && r.stderr.contains("octal"), "{}", r.stderr);
    assert!(!d.join("x.raw").exists());
    let help = diskseal(d, &["decrypt", "--help"]).ok().stdout;
    assert!(help.contains("--mode") && help.contains("0600"), "{help}");
}

/// Runs diskseal in `dir`; kills it and fails if it has not finished after `secs` seconds.
fn diskseal_within(dir: &Path, args: &[&str], secs: u64) -> crate::util::Ran {
    use std::process::{Command, Stdio};
    let mut child = Command::new(crate::util::diskseal_bin())
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed().as_secs() >= secs {
            let _ = child.kill();
            let _ = child.wait();
            panic!("diskseal {args:?} still running after {secs} s");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let o = child.wait_with_output().unwrap();
    crate::util::Ran {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// FIFOs, sockets and character devices are refused up front (a FIFO with no writer hung every
/// command); a block device is read whole, its size from the block-device ioctl.
#[test]
fn special_files_are_refused_and_block_devices_read() {
    let dir = setup(MIB, 43);
    let d = dir.path();
    make(d, "ok.luks", &[]);
    assert!(run_in(d, "mkfifo", &["fifo"]).code == 0, "mkfifo failed");
    let _sock = std::os::unix::net::UnixListener::bind(d.join("sock")).unwrap();
    let cases: [(&str, &str); 3] = [
        ("fifo", "a FIFO"),
        ("sock", "a socket"),
        ("/dev/zero", "a character device"),
    ];
    for (input, what) in cases {
        let fast: Vec<&str> = FAST_PBKDF2.to_vec();
        let enc = [
            &["encrypt", "--key-file", "pw"][..],
            &fast,
            &[input, "o.luks"],
        ]
        .concat();
        let commands: Vec<Vec<&str>> = vec![
            enc,
            vec!["decrypt", "--key-file", "pw", input, "o.raw"],
            vec!["verify", "--key-file", "pw", input],
            vec!["verify", "--key-file", "pw", "--against", input, "ok.luks"],
            vec!["dump", input],
            vec!["info", input],
        ];
        for args in commands {
            let r = diskseal_within(d, &args, 20);
            fails_with(
                r,
                &[
                    input,
                    &format!("input is {what}"),
                    "regular files and block devices",
                ],
            );
        }
        assert!(!d.join("o.luks").exists() && !d.join("o.raw").exists());
    }

    // A loop device over src.raw (needs root; skipped elsewhere, CI runs as root).
    let lo = run_in(d, "losetup", &["-f", "--show", "src.raw"]);
    if lo.code != 0 {
        eprintln!(
            "skipped the block-device part: losetup failed ({})",
            lo.stderr.trim()
        );
        return;
    }
    let dev = lo.stdout.trim().to_owned();
    let r = encrypt_fast(d, &["-q", "--key-file", "pw"], &dev, "dev.luks");
    let info = diskseal(d, &["info", "--json", &dev]);
    run_in(d, "losetup", &["-d", &dev]);
    r.ok();
    let info: serde_json::Value = serde_json::from_str(&info.ok().stdout).unwrap();
    assert_eq!(info["virtual-size"], MIB as u64);
    diskseal(
        d,
        &[
            "verify",
            "-q",
            "--key-file",
            "pw",
            "--against",
            "src.raw",
            "dev.luks",
        ],
    )
    .ok();
}

/// Ctrl-C during the key derivation stops at once (it ran to the end before: 9-10 s of Argon2), with
/// nothing written.
#[test]
fn interrupt_during_key_derivation_stops_at_once() {
    let dir = setup(MIB, 44);
    let d = dir.path();
    // PBKDF2 with 2^31 iterations: minutes of work if the derivation were not interrupted.
    let mut child = std::process::Command::new(crate::util::diskseal_bin())
        .args([
            "encrypt",
            "--key-file",
            "pw",
            "--pbkdf",
            "pbkdf2",
            "--pbkdf-force-iterations",
            "2147483647",
            "src.raw",
            "o.luks",
        ])
        .current_dir(d)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(800));
    assert!(child.try_wait().unwrap().is_none(), "finished too early");
    let pid = child.id().to_string();
    let sent = std::time::Instant::now();
    run_in(d, "kill", &["-INT", &pid]).ok();
    let mut waited = 0;
    while child.try_wait().unwrap().is_none() && waited < 300 {
        std::thread::sleep(std::time::Duration::from_millis(10));
        waited += 1;
    }
    let elapsed = sent.elapsed();
    if child.try_wait().unwrap().is_none() {
        let _ = child.kill();
    }
    let status = child.wait().unwrap();
    assert!(elapsed.as_secs_f64() < 2.0, "took {elapsed:?} to stop");
    assert_eq!(status.code(), Some(130));
    assert_eq!(listing(d), ["pw", "src.raw"]);
}

/// `decrypt` to raw leaves the zero runs of the plaintext as holes (the file reads the same and takes
/// only its data's space), even when the encrypted image is dense.
#[test]
fn decrypt_leaves_zero_runs_as_holes() {
    use std::os::unix::fs::MetadataExt;
    let dir = setup(MIB, 41);
    let d = dir.path();
    let mut src = read(d.join("src.raw"));
    src.resize(16 * MIB, 0);
    src[9 * MIB + 5] = 1;
    std::fs::write(d.join("src.raw"), &src).unwrap();
    make(d, "o.luks", &[]);
    diskseal(
        d,
        &["decrypt", "-q", "--key-file", "pw", "o.luks", "back.raw"],
    )
    .ok();
    assert!(read(d.join("back.raw")) == src);
    let meta = std::fs::metadata(d.join("back.raw")).unwrap();
    assert_eq!(meta.len(), 16 * MIB as u64);
    // 1 MiB of data and one 64 KiB piece around the lone byte; a file system without holes (tmpfs has
    // them too) would show all 16 MiB.
    assert!(
        meta.blocks() * 512 <= 2 * MIB as u64,
        "{} bytes allocated",
        meta.blocks() * 512
    );
}

#[test]
fn truncated_luks_files_say_truncated_with_both_sizes() {
    let dir = setup(MIB, 41);
    let d = dir.path();
    make(d, "good.luks", &[]);
    let good = read(d.join("good.luks"));
    let full = good.len();
    // Cut inside a sector: the payload is not whole sectors.
    std::fs::write(d.join("cut.luks"), &good[..full - 100]).unwrap();
    fails_with(
        diskseal(d, &["verify", "--key-file", "pw", "cut.luks"]),
        &[
            "cut.luks",
            &format!("truncated: expected {full} bytes, found {}", full - 100),
            "4096-byte sectors",
        ],
    );
    // Cut on a sector boundary: only the source tells; a size, not a difference at an offset.
    std::fs::write(d.join("short.luks"), &good[..full - 8192]).unwrap();
    let r = diskseal(
        d,
        &[
            "verify",
            "--key-file",
            "pw",
            "--against",
            "src.raw",
            "short.luks",
        ],
    );
    assert!(!r.stderr.contains("MISMATCH") && !r.stdout.contains("offset"));
    fails_with(
        r,
        &[
            "short.luks",
            &format!("truncated: expected {full} bytes, found {}", full - 8192),
        ],
    );
}

#[test]
fn encrypt_summary_times_key_derivation_and_data_apart_and_says_when_argon2_memory_was_lowered() {
    let dir = setup(MIB, 42);
    let d = dir.path();
    // 64 MiB asked, 1 ms to unlock: the benchmark must lower the memory, and says by how much.
    let args = [
        "encrypt",
        "--threads",
        "1",
        "--pbkdf-memory",
        "65536",
        "--iter-time",
        "1",
        "--key-file",
        "pw",
        "src.raw",
    ];
    let r = diskseal(d, &[&args[..], &["a.luks"]].concat()).ok();
    assert!(r.stdout.contains("; key derivation "), "{}", r.stdout);
    assert!(r.stdout.contains(" s; data 1.00 MiB in "), "{}", r.stdout);
    assert!(r.stdout.trim_end().ends_with(", 1 thread"), "{}", r.stdout);
    assert!(
        r.stderr
            .contains("diskseal: note: Argon2 memory lowered from 64 MiB to ")
            && r.stderr.contains(
                "% less): the benchmark lowered it to unlock in about --iter-time 1 ms here"
            ),
        "{}",
        r.stderr
    );
    let r = diskseal(d, &[&args[..], &["--json", "j.luks"]].concat()).ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert!(v["kdf_seconds"].as_f64().unwrap() > 0.0, "{v}");
    assert_eq!(v["argon2_memory_lowered"]["requested_kib"], 65536);
    assert!(v["argon2_memory_lowered"]["used_kib"].as_u64().unwrap() < 65536);
    // Nothing lowered, nothing said.
    let mut fast = vec!["encrypt", "--key-file", "pw"];
    fast.extend(FAST_PBKDF2);
    let r = diskseal(d, &[&fast[..], &["src.raw", "p.luks"]].concat()).ok();
    assert!(!r.stderr.contains("lowered"), "{}", r.stderr);
}

/// On a terminal, the key derivation shows a spinner naming the KDF and its cost before the data bar.
#[test]
fn progress_names_the_key_derivation_on_a_terminal() {
    crate::require!("script");
    let dir = setup(4 * MIB, 43);
    let d = dir.path();
    let cmd = format!(
        "{} encrypt --pbkdf pbkdf2 --pbkdf-force-iterations 1500000 --key-file pw src.raw t.luks",
        crate::util::diskseal_bin().display()
    );
    let r = run_in(d, "script", &["-qec", &cmd, "/dev/null"]).ok();
    assert!(
        r.stdout
            .contains("deriving key (pbkdf2-sha256, 1500000 iterations)"),
        "{}",
        r.stdout
    );
    assert!(!r.stdout.contains("0 B/0 B"), "{}", r.stdout);
}
