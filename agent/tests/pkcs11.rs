//! PKCS#11 through SoftHSM2 (a token made by the test in a temp dir): AES-KWP wrap/unwrap, checked
//! against an independent implementation (the `aes-kw` crate), RSA-OAEP, and a wrong PIN.

use std::path::{Path, PathBuf};
use std::process::Command;

use aes_kw::KeyInit;
use base64::Engine;

use crate::util::{agent, have, installed, pattern};

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
const PIN: &str = "123456";

struct Hsm {
    dir: tempfile::TempDir,
    conf: PathBuf,
    kek: Vec<u8>,
}

fn sh(conf: &Path, prog: &str, args: &[&str], cwd: &Path) {
    let o = Command::new(prog)
        .args(args)
        .env("SOFTHSM2_CONF", conf)
        .current_dir(cwd)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{prog} {args:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A fresh token "agent-test" with an AES-256 KEK "kek" of known bytes and an RSA key pair "rsa-kek".
fn hsm() -> Option<Hsm> {
    if !have("softhsm2-util") || !installed("pkcs11-tool") {
        return None;
    }
    assert!(
        Path::new(MODULE).exists(),
        "softhsm2-util is installed but {MODULE} is not"
    );
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::create_dir(p.join("tokens")).unwrap();
    let conf = p.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            p.join("tokens").display()
        ),
    )
    .unwrap();
    sh(
        &conf,
        "softhsm2-util",
        &[
            "--init-token",
            "--free",
            "--label",
            "agent-test",
            "--so-pin",
            "87654321",
            "--pin",
            PIN,
        ],
        p,
    );
    let kek = pattern(32, 0x33);
    std::fs::write(p.join("kek.bin"), &kek).unwrap();
    let login = [
        "--module",
        MODULE,
        "--token-label",
        "agent-test",
        "--login",
        "--pin",
        PIN,
    ];
    let mut a = login.to_vec();
    a.extend([
        "--write-object",
        "kek.bin",
        "--type",
        "secrkey",
        "--key-type",
        "AES:32",
        "--label",
        "kek",
        "--usage-wrap",
    ]);
    sh(&conf, "pkcs11-tool", &a, p);
    let mut a = login.to_vec();
    a.extend([
        "--keypairgen",
        "--key-type",
        "rsa:2048",
        "--label",
        "rsa-kek",
        "--usage-wrap",
        "--usage-decrypt",
    ]);
    sh(&conf, "pkcs11-tool", &a, p);
    std::fs::write(p.join("pin"), format!("{PIN}\n")).unwrap();
    Some(Hsm { dir, conf, kek })
}

impl Hsm {
    fn run(&self, args: &[&str], label: &str, mech: &str, pin_file: &str) -> crate::util::Ran {
        let conf = self.conf.to_str().unwrap().to_owned();
        let mut v: Vec<&str> = args.to_vec();
        v.extend([
            "--service",
            "pkcs11",
            "--pkcs11-module",
            MODULE,
            "--token-label",
            "agent-test",
            "--key-label",
            label,
            "--mechanism",
            mech,
            "--pin-file",
            pin_file,
        ]);
        agent(self.dir.path(), &v, &[("SOFTHSM2_CONF", &conf)])
    }
}

fn b64d(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .unwrap()
}

#[test]
fn aes_kwp_round_trip_matches_an_independent_implementation() {
    let Some(h) = hsm() else { return };
    let p = h.dir.path();
    for (name, dek) in [
        ("dek32", pattern(32, 1)),
        ("dek64", pattern(64, 2)),
        ("dek40", pattern(40, 3)),
    ] {
        std::fs::write(p.join(name), &dek).unwrap();
        let out = h
            .run(
                &["--json", "wrap", "--dek-file", name],
                "kek",
                "aes-kwp",
                "pin",
            )
            .ok();
        let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        let wdek = v["wdek"].as_str().unwrap().to_owned();
        let wrapped = b64d(&wdek);
        assert_eq!(wrapped.len(), dek.len().div_ceil(8) * 8 + 8, "{name}");
        // Independent check: RFC 5649 with the same KEK.
        let kwp = aes_kw::KwpAes256::new_from_slice(&h.kek).unwrap();
        let mut buf = vec![0u8; wrapped.len()];
        assert_eq!(
            kwp.wrap_key(&dek, &mut buf).unwrap(),
            &wrapped[..],
            "{name}: SoftHSM and aes-kw disagree"
        );
        std::fs::write(p.join(format!("{name}.wdek")), &wdek).unwrap();
        let out_file = format!("{name}.out");
        h.run(
            &[
                "unwrap",
                "--wdek-file",
                &format!("{name}.wdek"),
                "-o",
                &out_file,
            ],
            "kek",
            "aes-kwp",
            "pin",
        )
        .ok();
        assert_eq!(std::fs::read(p.join(&out_file)).unwrap(), dek, "{name}");
    }
    // An 11-byte passphrase (length not a multiple of 8): RFC 5649 (aes-kw, Python `cryptography`)
    // gives dfe80228...; SoftHSM2 2.6.1 zero-pads the key to 16 bytes first, so its WDEK would unwrap to
    // 16 bytes. The agent checks the round trip and refuses rather than hand out a wrong WDEK.
    let kwp = aes_kw::KwpAes256::new_from_slice(&h.kek).unwrap();
    let mut buf = vec![0u8; 24];
    assert_eq!(
        hex(kwp.wrap_key(b"abc123 pass", &mut buf).unwrap()),
        "dfe802280198a1f8f0db83dd88fc8c416b13fbe5f243dd6b"
    );
    std::fs::write(p.join("pass11"), b"abc123 pass").unwrap();
    let out = h.run(&["wrap", "--dek-file", "pass11"], "kek", "aes-kwp", "pin");
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("does not round-trip") && out.stderr.contains("rsa-oaep"),
        "{}",
        out.stderr
    );
    // RSA-OAEP takes it.
    h.run(
        &["wrap", "--dek-file", "pass11"],
        "rsa-kek",
        "rsa-oaep",
        "pin",
    )
    .ok();
    // A token-generated DEK (C_GenerateRandom), wrapped; its WDEK unwraps to the file written.
    let out = h
        .run(
            &["--json", "wrap", "--generate-to", "gen"],
            "kek",
            "aes-kwp",
            "pin",
        )
        .ok();
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    std::fs::write(p.join("gen.wdek"), v["wdek"].as_str().unwrap()).unwrap();
    h.run(
        &["unwrap", "--wdek-file", "gen.wdek", "-o", "gen.out"],
        "kek",
        "aes-kwp",
        "pin",
    )
    .ok();
    assert_eq!(
        std::fs::read(p.join("gen.out")).unwrap(),
        std::fs::read(p.join("gen")).unwrap()
    );
    assert_eq!(std::fs::read(p.join("gen")).unwrap().len(), 32);
    let log = std::fs::read_to_string(p.join("home/audit.jsonl")).unwrap();
    assert!(log.contains("pkcs11:token=agent-test;object=kek"));
    assert!(!log.contains(&base64::engine::general_purpose::STANDARD.encode(pattern(32, 1))));
    // The credential recorded is the token's PIN, never the PIN itself.
    for line in log.lines().filter(|l| l.contains("\"kms.secrets.")) {
        let e: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(e["initiator"]["credential"]["type"], "pkcs11-pin", "{line}");
    }
    assert!(!log.contains(&format!("\"{PIN}\"")) && !log.contains(&format!("{PIN}\\n")));
}

#[test]
fn rsa_oaep_round_trip_and_unsupported_hash_is_clear() {
    let Some(h) = hsm() else { return };
    let p = h.dir.path();
    std::fs::write(p.join("dek"), pattern(32, 5)).unwrap();
    let out = h
        .run(
            &["--json", "wrap", "--dek-file", "dek"],
            "rsa-kek",
            "rsa-oaep",
            "pin",
        )
        .ok();
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(b64d(v["wdek"].as_str().unwrap()).len(), 256);
    std::fs::write(p.join("w"), v["wdek"].as_str().unwrap()).unwrap();
    h.run(
        &["unwrap", "--wdek-file", "w", "-o", "back"],
        "rsa-kek",
        "rsa-oaep",
        "pin",
    )
    .ok();
    assert_eq!(std::fs::read(p.join("back")).unwrap(), pattern(32, 5));
    // SoftHSM2 implements OAEP with SHA-1 only: SHA-256 fails with the token's reason.
    let out = h.run(
        &["wrap", "--dek-file", "dek"],
        "rsa-kek",
        "rsa-oaep-sha256",
        "pin",
    );
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("CKR_"), "{}", out.stderr);
}

#[test]
fn wrong_pin_and_unknown_key_label_are_clear() {
    let Some(h) = hsm() else { return };
    let p = h.dir.path();
    std::fs::write(p.join("dek"), pattern(32, 6)).unwrap();
    std::fs::write(p.join("badpin"), "000000").unwrap();
    let out = h.run(&["wrap", "--dek-file", "dek"], "kek", "aes-kwp", "badpin");
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("C_Login") && out.stderr.contains("CKR_PIN_INCORRECT"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("000000"));
    // No PIN at all, and no terminal to ask on.
    let conf = h.conf.to_str().unwrap().to_owned();
    let out = agent(
        p,
        &[
            "wrap",
            "--dek-file",
            "dek",
            "--service",
            "pkcs11",
            "--pkcs11-module",
            MODULE,
            "--token-label",
            "agent-test",
            "--key-label",
            "kek",
        ],
        &[("SOFTHSM2_CONF", &conf)],
    );
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("no PKCS#11 PIN") && out.stderr.contains("--pin-file"),
        "{}",
        out.stderr
    );
    let out = h.run(&["wrap", "--dek-file", "dek"], "nokey", "aes-kwp", "pin");
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("labelled \"nokey\""), "{}", out.stderr);
}

/// The independent implementation itself passes RFC 5649 §6's two vectors (20- and 7-byte keys).
#[test]
fn rfc5649_vector_7_bytes() {
    let kek = hex_bytes("5840df6e29b02af1ab493b705bf16ea1ae8338f4dcc176a8");
    let key = hex_bytes("466f7250617369");
    let want = hex_bytes("afbeb0f07dfbf5419200f2ccb50bb24f");
    let kwp = aes_kw::KwpAes192::new_from_slice(&kek).unwrap();
    let mut buf = vec![0u8; 16];
    let got = kwp.wrap_key(&key, &mut buf).map(<[u8]>::to_vec);
    assert_eq!(got.unwrap(), want);
    let key = hex_bytes("c37b7e6492584340bed12207808941155068f738");
    let want = hex_bytes("138bdeaa9b8fa7fc61f97742e72248ee5ae6ae5360d1ae6a5f54f373fa543b6a");
    let mut buf = vec![0u8; 32];
    let got = kwp.wrap_key(&key, &mut buf).map(<[u8]>::to_vec);
    assert_eq!(got.unwrap(), want);
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn hex_bytes(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}
