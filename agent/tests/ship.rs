//! `diskseal-agent ship` end to end: bundle -> wrap (fake Key Protect) -> upload (moto S3) -> import
//! (fake VPC) -> available; a rerun repeats nothing; --dry-run prints the requests with secrets redacted.

use diskseal::profile::Profile;

use crate::fake_ibm::{API_KEY, FakeIbm, INSTANCE, ROOT_KEY};
use crate::upload::{ShipWorld, remote_sha256};
use crate::util::agent;

#[test]
fn ship_goes_bundle_wrap_upload_import_available_and_a_rerun_repeats_nothing() {
    let Some(w) = ShipWorld::start(2) else { return };
    let (s3, f, p) = (&w.s3, &w.f, w.p());
    let bundle = w.bundle(p, Profile::IbmVpc);
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(bundle.join("manifest.json")).unwrap())
            .unwrap();
    let sha = manifest["image"]["sha256"].as_str().unwrap().to_owned();
    let env = s3.ship_env();
    let bundle_s = bundle.to_str().unwrap();
    let args = ship_args(bundle_s, &s3.url, &f.url);
    // Dry run first: nothing is sent to the KMS, S3 or the VPC; secrets are redacted.
    let mut dry = args.to_vec();
    dry.extend(["--dry-run", "--s3-max-attempts", "9"]);
    let out = agent(p, &dry, &env).ok();
    assert!(
        out.stdout.contains("/v1/images?version=")
            && out.stdout.contains("<redacted>")
            && out.stdout.contains("partNumber=1..1")
            && out.stdout.contains("up to 9 attempts each"),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains(API_KEY) && !out.stdout.contains(&s3.sk));
    assert_eq!(f.with(|s| (s.kp_calls, s.images.len())), (0, 0));
    // The real run.
    let out = agent(p, &args, &env).ok();
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let id = v["image_id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("r006-"));
    assert_eq!(f.with(|s| s.images[&id].1), "available");
    assert_eq!(remote_sha256(s3, "disk.qcow2"), sha);
    let kp_calls = f.with(|s| s.kp_calls);
    // A rerun: no new wrap, upload or import; the same image id.
    let out = agent(p, &args, &env).ok();
    let v2: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v2["image_id"], id.as_str());
    assert_eq!(f.with(|s| (s.kp_calls, s.images.len())), (kp_calls, 1));
    // Every step is in the audit log; no secret is.
    let log = std::fs::read_to_string(p.join("home/audit.jsonl")).unwrap();
    for action in [
        "diskseal.bundle.verify",
        "kms.secrets.wrap",
        "diskseal.object.upload",
        "diskseal.image.import.ibm-vpc",
        "diskseal.ship",
    ] {
        assert!(log.contains(action), "{action} missing");
    }
    use base64::Engine;
    let pass_b64 = base64::engine::general_purpose::STANDARD.encode(crate::util::PASSPHRASE);
    for secret in [
        API_KEY,
        s3.sk.as_str(),
        pass_b64.as_str(),
        std::str::from_utf8(crate::util::PASSPHRASE).unwrap(),
    ] {
        assert!(
            !log.contains(secret) && !out.stdout.contains(secret) && !out.stderr.contains(secret),
            "a secret leaked"
        );
    }
    agent(
        p,
        &[
            "audit",
            "verify",
            p.join("home/audit.jsonl").to_str().unwrap(),
        ],
        &[],
    )
    .ok();
}

#[test]
fn ship_interrupted_while_the_import_is_pending_polls_the_same_image_on_rerun() {
    let Some(w) = ShipWorld::start(30) else {
        return;
    };
    let (s3, f, p) = (&w.s3, &w.f, w.p());
    let bundle = w.bundle(p, Profile::IbmVpc);
    let env = s3.ship_env();
    let bundle_s = bundle.to_str().unwrap();
    let mut args = ship_args(bundle_s, &s3.url, &f.url);
    let mut first = args.clone();
    first.extend(["--wait-secs", "0"]);
    let out = agent(p, &first, &env);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("still"), "{}", out.stderr);
    let wraps = |f: &FakeIbm| {
        f.with(|s| {
            s.kp_log
                .iter()
                .filter(|(u, _, _)| u.contains("/actions/wrap"))
                .count()
        })
    };
    let wrapped = wraps(f);
    args.extend(["--wait-secs", "60"]);
    let out = agent(p, &args, &env).ok();
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(
        (f.with(|s| s.images.len()), wraps(f)),
        (1, wrapped),
        "no second import, no second wrap"
    );
    assert_eq!(
        f.with(|s| s.images[v["image_id"].as_str().unwrap()].1),
        "available"
    );
}

#[test]
fn ship_to_classic_goes_bundle_wrap_upload_create_from_icos_and_polls_until_the_transaction_is_gone()
 {
    let Some(w) = ShipWorld::start(3) else { return };
    let (s3, f, p) = (&w.s3, &w.f, w.p());
    let bundle = w.bundle(p, Profile::IbmClassicVhd);
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(bundle.join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(
        (
            manifest["image"]["format"].as_str(),
            manifest["key"]["kind"].as_str()
        ),
        (Some("vhd-util"), Some("raw-dek"))
    );
    let sha = manifest["image"]["sha256"].as_str().unwrap().to_owned();
    let env = s3.ship_env();
    let args = ship_args_to(
        "ibm-classic",
        "cos://us-south/bkt/disk.vhd-0.vhd",
        "UBUNTU_22_64",
        bundle.to_str().unwrap(),
        &s3.url,
        &f.url,
    );
    let mut dry = args.clone();
    dry.push("--dry-run");
    let out = agent(p, &dry, &env).ok();
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let requests = v["requests"].as_array().unwrap();
    assert!(
        requests.iter().any(|r| {
            let r = r.as_str().unwrap();
            r.contains("createFromIcos") && r.contains("\"ibmApiKey\":\"<redacted>\"")
        }),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains(API_KEY));
    let out = agent(p, &args, &env).ok();
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let id = v["image_id"].as_str().unwrap().to_owned();
    let n: u64 = id.parse().expect("a numeric SoftLayer template id");
    // The fake polled down to the finished state: the transaction is gone.
    assert_eq!(f.with(|s| s.templates.get(&n).copied()), Some(0));
    assert_eq!(remote_sha256(s3, "disk.vhd-0.vhd"), sha);
    // createFromIcos got an encrypted template whose wrappedDek the fake unwrapped with the crkCrn.
    let created = f.with(|s| {
        s.bodies
            .iter()
            .filter(|b| b.contains("\"wrappedDek\"") && b.contains("\"isEncrypted\":true"))
            .count()
    });
    assert_eq!(created, 1);
    let log = std::fs::read_to_string(p.join("home/audit.jsonl")).unwrap();
    for action in [
        "diskseal.bundle.verify",
        "kms.secrets.wrap",
        "diskseal.object.upload",
        "diskseal.image.import.ibm-classic",
        "diskseal.ship",
    ] {
        assert!(log.contains(action), "{action} missing");
    }
    assert!(log.contains(&id));
    for secret in [API_KEY, s3.sk.as_str()] {
        assert!(
            !log.contains(secret) && !out.stdout.contains(secret) && !out.stderr.contains(secret)
        );
    }
    // A rerun: the same id, nothing created again.
    let kp = f.with(|s| s.kp_calls);
    let v2: serde_json::Value = serde_json::from_str(&agent(p, &args, &env).ok().stdout).unwrap();
    assert_eq!(v2["image_id"], id.as_str());
    assert_eq!(f.with(|s| (s.kp_calls, s.templates.len())), (kp, 1));
    agent(
        p,
        &[
            "audit",
            "verify",
            p.join("home/audit.jsonl").to_str().unwrap(),
        ],
        &[],
    )
    .ok();
}

/// `diskseal-agent --json ship BUNDLE` to ibm-vpc against the local S3 server and the IBM fake.
fn ship_args<'a>(bundle: &'a str, s3: &'a str, ibm: &'a str) -> Vec<&'a str> {
    ship_args_to(
        "ibm-vpc",
        "cos://us-south/bkt/disk.qcow2",
        "debian-12-amd64",
        bundle,
        s3,
        ibm,
    )
}

/// `diskseal-agent --json ship BUNDLE --target TARGET --object OBJECT --os OS` against the local S3
/// server and the IBM fake.
pub fn ship_args_to<'a>(
    target: &'a str,
    object: &'a str,
    os: &'a str,
    bundle: &'a str,
    s3: &'a str,
    ibm: &'a str,
) -> Vec<&'a str> {
    vec![
        "--json",
        "ship",
        bundle,
        "--target",
        target,
        "--object",
        object,
        "--s3-endpoint",
        s3,
        if target == "ibm-classic" {
            "--sl-endpoint"
        } else {
            "--vpc-endpoint"
        },
        ibm,
        "--os",
        os,
        "--allow-any-size",
        "--poll-ms",
        "10",
        "--kms-endpoint",
        ibm,
        "--iam-endpoint",
        ibm,
        "--instance-id",
        INSTANCE,
        "--key-id",
        ROOT_KEY,
        "--region",
        "us-south",
    ]
}
