//! `diskseal-agent import` against the in-process IBM fake: VPC and classic imports that poll to
//! available, a VPC import failing with `encrypted_data_key_invalid` (passphrase wrapped with a
//! trailing newline) explained, SoftLayer errors shown, and the pre-flight checks.

use crate::fake_ibm::{API_KEY, FakeIbm};
use diskseal::ops::Container;

use crate::util::{PASSPHRASE, agent, encrypted, repo_file};

fn b64(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// `import --target TARGET OBJECT --os OS --wdek-file wdek --key-crn CRN` against `endpoint` (its flag:
/// `--sl-endpoint` for ibm-classic, else `--vpc-endpoint`) and the IAM at `iam`.
pub fn import_args<'a>(
    target: &'a str,
    object: &'a str,
    os: &'a str,
    crn: &'a str,
    endpoint: &'a str,
    iam: &'a str,
) -> Vec<&'a str> {
    vec![
        "import",
        "--target",
        target,
        object,
        "--os",
        os,
        "--wdek-file",
        "wdek",
        "--key-crn",
        crn,
        if target == "ibm-classic" {
            "--sl-endpoint"
        } else {
            "--vpc-endpoint"
        },
        endpoint,
        "--iam-endpoint",
        iam,
    ]
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
    let mut a = vec!["--json"];
    a.extend(import_args(
        target,
        object,
        "debian-12-amd64",
        &crn,
        &f.url,
        &f.url,
    ));
    a.extend(["--poll-ms", "10"]);
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

/// An import polls longer than a token lives (here 1 s; IAM's are 1 h, imports can take an hour): the
/// agent refreshes the token before it expires, and a token revoked mid-poll gets one fresh one.
#[test]
fn import_outlives_its_iam_tokens_and_survives_a_revocation() {
    let f = FakeIbm::start();
    f.with(|s| {
        s.token_ttl_secs = 1;
        s.import_polls = 250;
    });
    let d = tempfile::tempdir().unwrap();
    let wdek = f.wrap(b64(PASSPHRASE).as_bytes());
    let calls_before = f.with(|s| s.iam_calls);
    let out = std::thread::scope(|scope| {
        scope.spawn(|| {
            std::thread::sleep(std::time::Duration::from_millis(1200));
            f.revoke_tokens();
        });
        run(
            &f,
            d.path(),
            "ibm-vpc",
            "cos://us-south/bkt/disk.qcow2",
            &wdek,
            &[],
        )
    })
    .ok();
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["status"], "available", "{}", out.stderr);
    // 250 polls 10 ms apart outlast several 1 s tokens (and one revocation).
    let calls = f.with(|s| s.iam_calls) - calls_before;
    assert!(calls >= 3, "IAM was asked {calls} times");
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
    // A real ibm-vpc qcow2 of 1 MiB: LUKS, but outside 10-250 GB.
    let small = encrypted(p, "small.qcow2", Container::Qcow2Luks, None);
    bad(
        "ibm-vpc",
        "cos://us-south/bkt/disk.qcow2",
        &["--image", small.to_str().unwrap()],
        "10-250 GiB",
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
    // 100 GiB exactly (`diskseal encrypt --resize 100G`, as IBM's own `qemu-img resize 100G`), LUKS:
    // accepted without a warning (and imported); 100 decimal GB is accepted with the recommendation.
    let ok = encrypted(p, "ok.qcow2", Container::Qcow2Luks, Some(100 << 30));
    let wdek = f.wrap(b64(PASSPHRASE).as_bytes());
    let out = run(
        &f,
        p,
        "ibm-vpc",
        "cos://us-south/bkt/disk.qcow2",
        &wdek,
        &["--image", ok.to_str().unwrap()],
    )
    .ok();
    assert!(!out.stderr.contains("warning"), "{}", out.stderr);
    let gb = encrypted(p, "gb.qcow2", Container::Qcow2Luks, Some(100_000_000_000));
    let out = run(
        &f,
        p,
        "ibm-vpc",
        "cos://us-south/bkt/disk.qcow2",
        &wdek,
        &["--image", gb.to_str().unwrap(), "--name", "disk-gb"],
    )
    .ok();
    assert!(out.stderr.contains("exactly 100 GiB"), "{}", out.stderr);
    // Nothing was sent for the refused ones.
    assert_eq!(f.with(|s| s.images.len()), 2);
}

/// The pre-flight checks open the image with diskseal's readers: classic needs a dynamic VHD whose
/// batmap carries a vhd-util key hash, VPC a qcow2 with QEMU-native LUKS; anything else is refused
/// before a request is sent, naming the file and the `diskseal encrypt --profile` that makes a good one.
#[test]
fn preflight_refuses_images_that_are_not_encrypted_the_way_the_target_needs() {
    let f = FakeIbm::start();
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let wdek = f.wrap(&[7u8; 32]);
    let luks2 = encrypted(p, "disk.luks", Container::Raw, None);
    let vpc_qcow2 = encrypted(p, "vpc.qcow2", Container::Qcow2Luks, None);
    let plain_vhd = repo_file("fixtures/vhd-util/source.vhd");
    let fixed_vhd = repo_file("fuzz/seeds/vhd/fixed.vhd");
    let plain_qcow2 = repo_file("fuzz/seeds/qcow2/empty.qcow2");
    let classic = ("ibm-classic", "cos://us-south/bkt/disk.vhd-0.vhd");
    let vpc = ("ibm-vpc", "cos://us-south/bkt/disk.qcow2");
    let tap_vhd = tap_vhd_without_key_hash(p);
    let cases: [((&str, &str), &std::path::Path, &str); 8] = [
        // A dynamic VHD laid out as tapdisk does, with a batmap whose key hash cookie is 0.
        (classic, &tap_vhd, "it is not encrypted"),
        // A plain dynamic VHD made by qemu-img: no batmap at all.
        (classic, &plain_vhd, "no batmap"),
        (classic, &fixed_vhd, "not a vhd-util encrypted VHD"),
        (classic, &luks2, "this is a raw LUKS file"),
        (classic, &vpc_qcow2, "this is a qcow2 image"),
        (vpc, &plain_qcow2, "not LUKS-encrypted"),
        (vpc, &luks2, "this is a raw LUKS file"),
        (vpc, &plain_vhd, "this is a VHD"),
    ];
    for ((target, object), image, what) in cases {
        let out = run(
            &f,
            p,
            target,
            object,
            &wdek,
            &["--image", image.to_str().unwrap()],
        );
        let name = image.file_name().unwrap().to_str().unwrap();
        let hint = if target == "ibm-vpc" {
            "diskseal encrypt --profile ibm-vpc"
        } else {
            "diskseal encrypt --profile ibm-classic-vhd"
        };
        assert_eq!(out.code, 2, "{target} {name}: {}", out.stderr);
        assert!(
            out.stderr.contains("pre-flight")
                && out.stderr.contains(name)
                && out.stderr.contains(what)
                && out.stderr.contains(hint),
            "{target} {name}: {}",
            out.stderr
        );
    }
    assert_eq!(f.with(|s| (s.images.len(), s.templates.len())), (0, 0));
    // A real vhd-util encrypted VHD passes and is imported.
    let good = repo_file("fixtures/vhd-util/encrypted-aes256.vhd");
    run(
        &f,
        p,
        classic.0,
        classic.1,
        &wdek,
        &["--image", good.to_str().unwrap()],
    )
    .ok();
    assert_eq!(f.with(|s| s.templates.len()), 1);
}

/// `dir/tap.vhd`: an empty 2 MiB dynamic VHD written like vhd-util's (creator "tap", batmap) but with
/// no key hash (cookie 0), i.e. not encrypted.
fn tap_vhd_without_key_hash(dir: &std::path::Path) -> std::path::PathBuf {
    use diskseal::image::vhd::batmap::KeyHash;
    use diskseal::image::vhd::writer::ClassicVhdWriter;
    let path = dir.join("tap.vhd");
    let w = ClassicVhdWriter::new(2 << 20, [3; 16], 0).unwrap();
    let out = diskseal::io::OutputFile::create(&path, false).unwrap();
    let none = KeyHash {
        cookie: 0,
        nonce: [0; 32],
        hash: [0; 32],
    };
    w.finish(&out, &none).unwrap();
    out.commit(0o644).unwrap();
    path
}
