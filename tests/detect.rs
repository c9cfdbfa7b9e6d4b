//! The one format detector (`image/detect.rs`): every format qemu-img probes is recognised by name on
//! images qemu-img made, the ones diskseal does not read are refused with the `qemu-img convert` command
//! and never encrypted as raw (`-f raw` still forces it), and diskseal's own encrypted outputs are told
//! apart so `verify`/`decrypt`/`dump`/`bundle` need no `--profile` for a vhd-util encrypted VHD.

use std::path::Path;

use diskseal::image::detect::{Detected, detect_path};

use crate::require;
use crate::util::{diskseal, encrypt_fast, pattern, read, run_in};

const MIB: usize = 1 << 20;

fn vhd_util_fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/vhd-util")
        .join(name)
        .display()
        .to_string()
}

fn qemu(d: &Path, args: &[&str]) {
    run_in(d, "qemu-img", args).ok();
}

/// (file, qemu-img create arguments, what the detector says, words the refusal must contain).
fn containers() -> Vec<(&'static str, Vec<&'static str>, Detected, &'static str)> {
    vec![
        (
            "a.vdi",
            vec!["-f", "vdi"],
            Detected::Vdi,
            "VDI (VirtualBox)",
        ),
        ("a.qed", vec!["-f", "qed"], Detected::Qed, "QED"),
        (
            "a.parallels",
            vec!["-f", "parallels"],
            Detected::Parallels,
            "Parallels",
        ),
        (
            "a.qcow",
            vec!["-f", "qcow"],
            Detected::QcowV1,
            "qcow version 1",
        ),
    ]
}

#[test]
fn containers_qemu_img_makes_are_named_and_refused_never_encrypted_as_raw() {
    require!("qemu-img");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("pw"), b"pw").unwrap();
    for (name, fmt, want, words) in containers() {
        let mut args = vec!["create", "-q"];
        args.extend(&fmt);
        args.extend([name, "4M"]);
        qemu(d, &args);
        assert_eq!(detect_path(&d.join(name)).unwrap(), want, "{name}");
        let r = encrypt_fast(d, &["--key-file", "pw"], name, "out.luks");
        assert_eq!(r.code, 2, "{name} must be refused: {}", r.stderr);
        let convert = format!("qemu-img convert -f {}", want.qemu_name());
        for w in [words, name, convert.as_str(), "-f raw"] {
            assert!(r.stderr.contains(w), "{name}: no {w:?} in {}", r.stderr);
        }
        assert!(!d.join("out.luks").exists(), "{name}: output left behind");
        let r = diskseal(d, &["info", name]);
        assert!(
            r.code == 2 && r.stderr.contains(words),
            "{name}: {}",
            r.stderr
        );
        // verify/dump name it instead of "not a LUKS file".
        let r = diskseal(d, &["dump", name]);
        assert!(
            r.code == 2 && r.stderr.contains(words),
            "{name}: {}",
            r.stderr
        );
        // -f raw forces the file's bytes.
        encrypt_fast(
            d,
            &["-q", "-f", "raw", "--pad", "--key-file", "pw"],
            name,
            "out.luks",
        )
        .ok();
        std::fs::remove_file(d.join("out.luks")).unwrap();
    }
}

#[test]
fn qemu_img_luks_and_vmdk_descriptors_are_detected() {
    require!("qemu-img");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("pw"), b"pw").unwrap();
    qemu(
        d,
        &[
            "create",
            "-q",
            "--object",
            "secret,id=s,file=pw",
            "-f",
            "luks",
            "-o",
            "key-secret=s,iter-time=10",
            "a.luks",
            "4M",
        ],
    );
    assert_eq!(detect_path(&d.join("a.luks")).unwrap(), Detected::Luks(1));
    let r = encrypt_fast(d, &["--key-file", "pw"], "a.luks", "out.luks");
    assert!(
        r.code == 2 && r.stderr.contains("already encrypted"),
        "{}",
        r.stderr
    );
    qemu(
        d,
        &[
            "create",
            "-q",
            "-f",
            "vmdk",
            "-o",
            "subformat=monolithicFlat",
            "flat.vmdk",
            "4M",
        ],
    );
    assert_eq!(
        detect_path(&d.join("flat.vmdk")).unwrap(),
        Detected::VmdkDescriptor
    );
    for sub in ["monolithicSparse", "streamOptimized"] {
        let name = format!("{sub}.vmdk");
        qemu(
            d,
            &[
                "create",
                "-q",
                "-f",
                "vmdk",
                "-o",
                &format!("subformat={sub}"),
                &name,
                "4M",
            ],
        );
        assert_eq!(detect_path(&d.join(&name)).unwrap(), Detected::Vmdk);
    }
    qemu(d, &["create", "-q", "-f", "vhdx", "a.vhdx", "4M"]);
    assert_eq!(detect_path(&d.join("a.vhdx")).unwrap(), Detected::Vhdx);
}

#[test]
fn diskseal_outputs_are_told_apart() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("src.raw"), pattern(3 * MIB, 5)).unwrap();
    std::fs::write(d.join("pw"), b"pw").unwrap();
    std::fs::write(d.join("dek"), pattern(64, 6)).unwrap();
    let cases: [(&str, &[&str], Detected); 5] = [
        ("a.luks", &["--profile", "luks1"], Detected::Luks(1)),
        ("b.luks", &[], Detected::Luks(2)),
        ("c.qcow2", &["--profile", "ibm-vpc"], Detected::Qcow2Luks),
        ("d.vhd", &["-O", "vhd"], Detected::VpcLuks),
        (
            "e.vhd",
            &["--profile", "ibm-classic-vhd"],
            Detected::VpcEncrypted,
        ),
    ];
    for (name, flags, want) in cases {
        let key = if want == Detected::VpcEncrypted {
            "dek"
        } else {
            "pw"
        };
        let mut f = vec!["-q", "--key-file", key];
        f.extend(flags);
        if want == Detected::VpcEncrypted {
            let mut args = vec!["encrypt"];
            args.extend(&f);
            args.extend(["src.raw", name]);
            diskseal(d, &args).ok();
        } else {
            encrypt_fast(d, &f, "src.raw", name).ok();
        }
        let got = detect_path(&d.join(name)).unwrap();
        assert_eq!(got, want, "{name}");
        assert!(got.is_encrypted(), "{name}");
    }
    assert_eq!(detect_path(&d.join("src.raw")).unwrap(), Detected::Raw);
}

#[test]
fn vhd_util_encrypted_vhd_needs_no_profile() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let vhd = vhd_util_fixture("encrypted-aes256.vhd");
    let key = vhd_util_fixture("key-aes256-xts.bin");
    let r = diskseal(d, &["verify", "--key-file", &key, &vhd]).ok();
    let said = format!("{}{}", r.stdout, r.stderr);
    assert!(said.contains("OK") && said.contains("vhd-util"), "{said}");
    diskseal(d, &["decrypt", "-q", "--key-file", &key, &vhd, "plain.raw"]).ok();
    use sha2::{Digest, Sha256};
    let plain = read(d.join("plain.raw"));
    assert_eq!(
        hex::encode(Sha256::digest(&plain[..8 * MIB])),
        "fa416fd2d4eb3c0904e6a65033058574faec32aa0cdac3ac12598115e3ff053b"
    );
    let r = diskseal(d, &["dump", &vhd]).ok();
    assert!(r.stdout.contains("batmap"), "{}", r.stdout);
    // bundle: the profile comes from the image too.
    let id = age::x25519::Identity::generate().to_public().to_string();
    diskseal(
        d,
        &[
            "bundle",
            "--recipient",
            &id,
            "--key-file",
            &key,
            &vhd,
            "bundle",
        ],
    )
    .ok();
    let m: serde_json::Value =
        serde_json::from_slice(&read(d.join("bundle/manifest.json"))).unwrap();
    assert_eq!(m["profile"], "ibm-classic-vhd", "{m}");
    // An explicit LUKS profile is refused with the reason.
    let r = diskseal(
        d,
        &["verify", "--profile", "luks2", "--key-file", &key, &vhd],
    );
    assert!(
        r.code == 2 && r.stderr.contains("raw DEK, not a passphrase"),
        "{}",
        r.stderr
    );
}

#[test]
fn ibm_classic_luks_without_profile_hints_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("src.raw"), pattern(MIB, 8)).unwrap();
    std::fs::write(d.join("dek"), pattern(32, 9)).unwrap();
    encrypt_fast(
        d,
        &["-q", "--profile", "ibm-classic-luks", "--key-file", "dek"],
        "src.raw",
        "out.luks",
    )
    .ok();
    let r = diskseal(d, &["verify", "--key-file", "dek", "out.luks"]);
    assert!(
        r.code == 2 && r.stderr.contains("--profile ibm-classic-luks"),
        "{}",
        r.stderr
    );
    diskseal(
        d,
        &[
            "verify",
            "-q",
            "--profile",
            "ibm-classic-luks",
            "--key-file",
            "dek",
            "out.luks",
        ],
    )
    .ok();
}
