//! Secret hygiene and resource bounds: no key material in any output, error or file we write except
//! where it is encrypted; hostile images fail fast in bounded memory.

use std::path::Path;

use base64::Engine;

use crate::require;
use crate::util::{FAST_PBKDF2, Ran, diskseal, encrypt_fast, pattern, read, run_in, setup};

/// Every textual form of `secret` a leak could take.
fn forms(secret: &[u8]) -> Vec<Vec<u8>> {
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    let spaced: String = secret.iter().map(|b| format!("{b:02x} ")).collect();
    vec![
        secret.to_vec(),
        hex.clone().into_bytes(),
        hex.to_uppercase().into_bytes(),
        spaced.trim_end().as_bytes().to_vec(),
        base64::engine::general_purpose::STANDARD
            .encode(secret)
            .into_bytes(),
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(secret)
            .into_bytes(),
    ]
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.len() <= hay.len() && hay.windows(needle.len()).any(|w| w == needle)
}

#[track_caller]
fn clean(what: &str, data: &[u8], secrets: &[(&str, Vec<u8>)]) {
    for (name, s) in secrets {
        for f in forms(s) {
            assert!(
                !contains(data, &f),
                "{what} leaks the {name} ({} bytes form)",
                f.len()
            );
        }
    }
}

fn outputs(r: &Ran) -> Vec<u8> {
    [r.stdout.as_bytes(), r.stderr.as_bytes()].concat()
}

#[test]
fn no_key_material_in_outputs_errors_or_files() {
    let dir = setup(2 << 20, 80);
    let d = dir.path();
    let vk = pattern(64, 81);
    std::fs::write(d.join("vk.bin"), &vk).unwrap();
    let pass = b"secret pass".to_vec();
    let secrets = [("volume key", vk.clone()), ("passphrase", pass)];
    let mut runs = Vec::new();
    for extra in [
        &["--profile", "luks2"][..],
        &["--profile", "luks1"],
        &["--profile", "ibm-vpc"],
        &["-O", "vhd"],
    ] {
        let mut args = vec![
            "encrypt",
            "--json",
            "--force",
            "--key-file",
            "pw",
            "--volume-key-file",
            "vk.bin",
        ];
        args.extend(FAST_PBKDF2);
        args.extend(extra);
        args.extend(["src.raw", "out.img"]);
        runs.push(diskseal(d, &args).ok());
        // The container must not hold the key in clear (keyslots hold it AF-split and encrypted).
        clean(
            &format!("encrypted image {extra:?}"),
            &read(d.join("out.img")),
            &secrets,
        );
        for cmd in [
            &[
                "verify",
                "--json",
                "--key-file",
                "pw",
                "--against",
                "src.raw",
                "out.img",
            ][..],
            &["dump", "--json", "out.img"],
            &["dump", "out.img"],
            &["info", "--json", "out.img"],
            &[
                "decrypt",
                "--json",
                "--force",
                "--key-file",
                "pw",
                "out.img",
                "back.raw",
            ],
            &["verify", "--json", "--volume-key-file", "vk.bin", "out.img"],
        ] {
            runs.push(diskseal(d, cmd));
        }
    }
    // Errors too: wrong passphrase, wrong volume key, bad sizes.
    std::fs::write(d.join("bad"), b"wrong").unwrap();
    runs.push(diskseal(d, &["verify", "--key-file", "bad", "out.img"]));
    let mut other = vk.clone();
    other[0] ^= 1;
    std::fs::write(d.join("vk2.bin"), &other).unwrap();
    runs.push(diskseal(
        d,
        &["verify", "--volume-key-file", "vk2.bin", "out.img"],
    ));
    runs.push(diskseal(
        d,
        &[
            "encrypt",
            "--key-file",
            "vk.bin",
            "--volume-key-file",
            "pw",
            "src.raw",
            "x.img",
        ],
    ));
    for (i, r) in runs.iter().enumerate() {
        clean(&format!("output of run {i}"), &outputs(r), &secrets);
    }
}

#[test]
fn ibm_classic_dek_and_its_base64_never_leak() {
    let dir = setup(1 << 20, 82);
    let d = dir.path();
    diskseal(d, &["keygen", "--bytes", "32", "-o", "dek.bin"]).ok();
    let dek = read(d.join("dek.bin"));
    let b64 = base64::engine::general_purpose::STANDARD
        .encode(&dek)
        .into_bytes();
    let secrets = [("DEK", dek), ("passphrase (base64 DEK)", b64)];
    let r = encrypt_fast(
        d,
        &[
            "--json",
            "--profile",
            "ibm-classic-luks",
            "--key-file",
            "dek.bin",
        ],
        "src.raw",
        "ibm.raw",
    )
    .ok();
    clean("encrypt output", &outputs(&r), &secrets);
    clean("encrypted image", &read(d.join("ibm.raw")), &secrets);
    let r = diskseal(
        d,
        &[
            "verify",
            "--json",
            "--profile",
            "ibm-classic-luks",
            "--key-file",
            "dek.bin",
            "ibm.raw",
        ],
    )
    .ok();
    clean("verify output", &outputs(&r), &secrets);
}

#[test]
fn secrets_are_not_accepted_as_arguments() {
    let dir = setup(1 << 20, 83);
    let d = dir.path();
    for flag in ["--passphrase", "--key", "--password", "--volume-key"] {
        let r = diskseal(d, &["encrypt", flag, "hunter2", "src.raw", "o.luks"]);
        assert_eq!(r.code, 2, "{flag} must not exist");
        assert!(r.stderr.contains("unexpected argument"), "{}", r.stderr);
    }
}

/// Peak RSS (KiB) and wall time of a diskseal run, via /usr/bin/time.
fn measured(d: &Path, args: &[&str]) -> (Ran, u64, f64) {
    let bin = crate::util::diskseal_bin();
    let mut full = vec!["-f", "MEASURED %M %e", bin.to_str().unwrap()];
    full.extend(args);
    let r = run_in(d, "/usr/bin/time", &full);
    let line = r
        .stderr
        .lines()
        .find(|l| l.starts_with("MEASURED"))
        .unwrap_or_else(|| panic!("no measurement: {}", r.stderr))
        .to_owned();
    let mut it = line.split_whitespace().skip(1);
    let rss = it.next().unwrap().parse().unwrap();
    let secs = it.next().unwrap().parse().unwrap();
    (r, rss, secs)
}

#[test]
fn hostile_images_fail_fast_in_bounded_memory() {
    require!("/usr/bin/time");
    let dir = setup(1 << 20, 84);
    let d = dir.path();
    let mut cases: Vec<(String, Vec<&str>)> = Vec::new();
    // qcow2 claiming 2^63 bytes, and one whose L1 table claims billions of L2 tables.
    let mut q = vec![0u8; 1 << 16];
    q[..4].copy_from_slice(b"QFI\xfb");
    q[4..8].copy_from_slice(&3u32.to_be_bytes());
    q[20..24].copy_from_slice(&16u32.to_be_bytes());
    q[24..32].copy_from_slice(&(1u64 << 62).to_be_bytes());
    q[36..40].copy_from_slice(&u32::MAX.to_be_bytes());
    q[40..48].copy_from_slice(&(1u64 << 16).to_be_bytes());
    q[96..100].copy_from_slice(&4u32.to_be_bytes());
    q[100..104].copy_from_slice(&104u32.to_be_bytes());
    std::fs::write(d.join("huge.qcow2"), &q).unwrap();
    cases.push(("huge.qcow2".into(), vec!["info", "huge.qcow2"]));
    // A qcow2 that is its own backing file.
    let mut s = q.clone();
    s[24..32].copy_from_slice(&(1u64 << 20).to_be_bytes());
    s[36..40].copy_from_slice(&1u32.to_be_bytes());
    s[8..16].copy_from_slice(&512u64.to_be_bytes());
    s[16..20].copy_from_slice(&9u32.to_be_bytes());
    s[512..521].copy_from_slice(b"self.qcow");
    s.resize(3 << 16, 0);
    std::fs::write(d.join("self.qcow"), &s).unwrap();
    cases.push(("self.qcow".into(), vec!["info", "self.qcow"]));
    // A VHD whose BAT claims 2^32 entries.
    let mut v = vec![0u8; 4096];
    v[..8].copy_from_slice(b"conectix");
    std::fs::write(d.join("bat.vhd"), &v).unwrap();
    cases.push(("bat.vhd".into(), vec!["info", "-f", "vpc", "bat.vhd"]));
    // A VMDK claiming 16 TiB whose grain directory (2 MiB) lies past the end of its 4 KiB file.
    let mut k = vec![0u8; 4096];
    k[..4].copy_from_slice(b"KDMV");
    k[4..8].copy_from_slice(&1u32.to_le_bytes());
    k[12..20].copy_from_slice(&(1u64 << 35).to_le_bytes());
    k[20..28].copy_from_slice(&128u64.to_le_bytes());
    k[44..48].copy_from_slice(&512u32.to_le_bytes());
    k[56..64].copy_from_slice(&1u64.to_le_bytes());
    std::fs::write(d.join("huge.vmdk"), &k).unwrap();
    cases.push(("huge.vmdk".into(), vec!["info", "huge.vmdk"]));
    // A VHDX of 2 MiB with no valid header.
    let mut x = vec![0u8; 2 << 20];
    x[..8].copy_from_slice(b"vhdxfile");
    std::fs::write(d.join("bad.vhdx"), &x).unwrap();
    cases.push(("bad.vhdx".into(), vec!["info", "bad.vhdx"]));
    // An OVA whose tar entry claims 2^60 bytes (base-256 size field).
    let mut t = vec![0u8; 2048];
    t[..6].copy_from_slice(b"vm.ovf");
    t[100..108].copy_from_slice(b"0000644\0");
    t[124] = 0x80;
    t[124 + 4] = 0x10;
    t[156] = b'0';
    t[257..263].copy_from_slice(b"ustar\0");
    t[263..265].copy_from_slice(b"00");
    t[148..156].fill(b' ');
    let sum: u32 = t[..512].iter().map(|&b| u32::from(b)).sum();
    t[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    std::fs::write(d.join("huge.ova"), &t).unwrap();
    cases.push(("huge.ova".into(), vec!["info", "huge.ova"]));
    // A LUKS2 header with a 4 MiB JSON area full of one huge JSON value.
    encrypt_fast(
        d,
        &[
            "-q",
            "--luks2-metadata-size",
            "4m",
            "--offset",
            "32768",
            "--key-file",
            "pw",
        ],
        "src.raw",
        "big.luks",
    )
    .ok();
    crate::util::edit_luks2_json(&d.join("big.luks"), 2, |v| {
        v["tokens"] =
            serde_json::json!({"0": {"type": "x", "keyslots": [], "blob": "A".repeat(4_000_000)}});
    });
    cases.push(("big.luks".into(), vec!["dump", "big.luks"]));
    for (name, args) in &cases {
        let (r, rss_kib, secs) = measured(d, args);
        assert!(!r.stderr.contains("panicked"), "{name}: {}", r.stderr);
        assert!(rss_kib < 128 * 1024, "{name}: peak RSS {rss_kib} KiB");
        assert!(secs < 10.0, "{name}: took {secs} s");
        if name != "big.luks" {
            assert_eq!(r.code, 2, "{name} must be refused: {}", r.stderr);
        }
    }
}
