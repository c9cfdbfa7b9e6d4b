//! `diskseal-agent import` against the in-process IBM fake: VPC and classic imports that poll to
//! available, a VPC import failing with `encrypted_data_key_invalid` (passphrase wrapped with a
//! trailing newline) explained, SoftLayer errors shown, and the pre-flight checks.

use crate::fake_ibm::{API_KEY, FakeIbm};
use crate::util::{PASSPHRASE, agent};

fn b64(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn run(
    f: &FakeIbm,
    p: &std::path::Path,
    target: &str,
    object: &str,
    wdek: &str,
    extra: &[&str],
) -> crate::util::Ran {
    std::fs::write(p.join("wdek"), wdek).unwrap();
    let crn = FakeIbm::key_crn();
    let mut a = vec![
        "--json",
        "import",
        "--target",
        target,
        object,
        "--os",
        "debian-12-amd64",
        "--wdek-file",
        "wdek",
        "--key-crn",
        &crn,
        "--endpoint",
        &f.url,
        "--iam-endpoint",
        &f.url,
        "--poll-ms",
        "10",
    ];
    a.extend_from_slice(extra);
    agent(p, &a, &[("IBMCLOUD_API_KEY", API_KEY)])
}

#[test]
fn vpc_import_polls_to_available_and_is_logged() {
    let f = FakeIbm::start();
    let d = tempfile::tempdir().unwrap();
    let wdek = f.wrap(b64(PASSPHRASE).as_bytes());
    let out = run(
        &f,
        d.path(),
        "ibm-vpc",
        "cos://us-south/bkt/disk.qcow2",
        &wdek,
        &[],
    )
    .ok();
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["status"], "available");
    assert!(v["id"].as_str().unwrap().starts_with("r006-"));
    assert_eq!(v["polls"], 3);
    let log = std::fs::read_to_string(d.path().join("home/audit.jsonl")).unwrap();
    assert!(
        log.contains("diskseal.image.import.ibm-vpc") && log.contains(v["id"].as_str().unwrap())
    );
    assert!(
        !log.contains(API_KEY) && !out.stdout.contains(API_KEY) && !out.stderr.contains(API_KEY)
    );
}

#[test]
fn vpc_import_with_a_newline_in_the_passphrase_fails_with_the_reason_explained() {
    let f = FakeIbm::start();
    let d = tempfile::tempdir().unwrap();
    let mut p = PASSPHRASE.to_vec();
    p.push(b'\n');
    let wdek = f.wrap(b64(&p).as_bytes());
    let out = run(
        &f,
        d.path(),
        "ibm-vpc",
        "cos://us-south/bkt/disk.qcow2",
        &wdek,
        &[],
    );
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("failed")
            && out.stderr.contains("encrypted_data_key_invalid")
            && out.stderr.contains("trailing newline"),
        "{}",
        out.stderr
    );
}

#[test]
fn classic_import_polls_until_the_transaction_is_gone() {
    let f = FakeIbm::start();
    let d = tempfile::tempdir().unwrap();
    let wdek = f.wrap(&[7u8; 32]);
    let out = run(
        &f,
        d.path(),
        "ibm-classic",
        "cos://us-south/bkt/disk.vhd-0.vhd",
        &wdek,
        &[],
    )
    .ok();
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["status"], "ACTIVE");
    assert!(
        v["global_identifier"]
            .as_str()
            .unwrap()
            .starts_with("0B5DEAF4")
    );
    // The API key goes to SoftLayer in the body (ibmApiKey) but never to the output or the log.
    assert!(f.with(|s| {
        s.bodies
            .iter()
            .any(|b| b.contains("\"ibmApiKey\"") && b.contains("\"isEncrypted\":true"))
    }));
    let log = std::fs::read_to_string(d.path().join("home/audit.jsonl")).unwrap();
    assert!(!log.contains(API_KEY) && !out.stdout.contains(API_KEY));
    // A WDEK that does not unwrap: SoftLayer's error text reaches the user.
    let out = run(
        &f,
        d.path(),
        "ibm-classic",
        "cos://us-south/bkt/disk.vhd-0.vhd",
        "bm90LWEtd2Rlaw==",
        &[],
    );
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("SoftLayer_Exception_Public")
            && out.stderr.contains("HTTP 500")
            && out.stderr.contains("unwrap"),
        "{}",
        out.stderr
    );
}

#[test]
fn preflight_catches_the_documented_pitfalls() {
    let f = FakeIbm::start();
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let wdek = f.wrap(b"x");
    let bad = |target: &str, object: &str, extra: &[&str], what: &str| {
        let out = run(&f, p, target, object, &wdek, extra);
        assert_eq!(out.code, 2, "{object}");
        assert!(
            out.stderr.contains("pre-flight") && out.stderr.contains(what),
            "{}",
            out.stderr
        );
    };
    bad("ibm-vpc", "cos://us-south/bkt/disk.QCOW2", &[], "lowercase");
    bad("ibm-vpc", "cos://us-south/bkt/disk.raw", &[], ".qcow2");
    bad(
        "ibm-classic",
        "cos://us-south/bkt/disk.vhd",
        &[],
        "vhd-0.vhd",
    );
    // A qcow2 header: LUKS (crypt_method 2), virtual size 1 GiB -> outside 10-250 GB.
    let qcow = |size: u64, crypt: u32| {
        let mut h = vec![0u8; 512];
        h[..4].copy_from_slice(b"QFI\xfb");
        h[4..8].copy_from_slice(&3u32.to_be_bytes());
        h[24..32].copy_from_slice(&size.to_be_bytes());
        h[32..36].copy_from_slice(&crypt.to_be_bytes());
        h
    };
    std::fs::write(p.join("small.qcow2"), qcow(1 << 30, 2)).unwrap();
    bad(
        "ibm-vpc",
        "cos://us-south/bkt/disk.qcow2",
        &["--image", "small.qcow2"],
        "10-250 GB",
    );
    std::fs::write(p.join("plain.qcow2"), qcow(100_000_000_000, 0)).unwrap();
    bad(
        "ibm-vpc",
        "cos://us-south/bkt/disk.qcow2",
        &["--image", "plain.qcow2"],
        "not LUKS",
    );
    std::fs::write(p.join("raw.img"), vec![0u8; 4096]).unwrap();
    bad(
        "ibm-vpc",
        "cos://us-south/bkt/disk.qcow2",
        &["--image", "raw.img"],
        "qcow2",
    );
    bad(
        "ibm-classic",
        "cos://us-south/bkt/disk.vhd-0.vhd",
        &["--image", "raw.img"],
        "VHD",
    );
    // 100 GB exactly, LUKS: accepted (and imported).
    std::fs::write(p.join("ok.qcow2"), qcow(100_000_000_000, 2)).unwrap();
    let wdek = f.wrap(b64(PASSPHRASE).as_bytes());
    run(
        &f,
        p,
        "ibm-vpc",
        "cos://us-south/bkt/disk.qcow2",
        &wdek,
        &["--image", "ok.qcow2"],
    )
    .ok();
    // Nothing was sent for the refused ones.
    assert_eq!(f.with(|s| s.images.len()), 1);
}
