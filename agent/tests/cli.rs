//! The command line end to end: init, bundle verify (good and every kind of bad bundle), age CLI
//! interop both ways, wrap against the fake Key Protect, config errors, and no secret in any log.

use std::os::unix::fs::PermissionsExt;

use base64::Engine;

use crate::fake_ibm::{API_KEY, FakeIbm, INSTANCE, ROOT_KEY};
use crate::util::{PASSPHRASE, agent, have, init, make_bundle, make_bundle_as};

#[test]
fn init_makes_a_private_identity_and_never_overwrites() {
    let d = tempfile::tempdir().unwrap();
    let r = init(d.path());
    assert!(r.starts_with("age1") && r.len() > 50, "{r}");
    let id = d.path().join("home/identity.txt");
    assert_eq!(
        std::fs::metadata(&id).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let text = std::fs::read_to_string(&id).unwrap();
    assert!(text.contains(&format!("# public key: {r}")) && text.contains("AGE-SECRET-KEY-1"));
    // Run again: the same recipient, exit 0, the file untouched.
    let again = agent(d.path(), &["init"], &[]).ok();
    assert_eq!(again.stdout.trim(), r);
    assert!(again.stderr.contains("already exists"), "{}", again.stderr);
    let json = agent(d.path(), &["--json", "init"], &[]).ok();
    let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(
        (v["recipient"].as_str(), v["created"].as_bool()),
        (Some(r.as_str()), Some(false))
    );
    assert_eq!(std::fs::read_to_string(&id).unwrap(), text);
}

#[test]
fn bundle_verify_accepts_a_good_bundle() {
    let d = tempfile::tempdir().unwrap();
    let r = init(d.path());
    make_bundle(d.path(), &r);
    let out = agent(d.path(), &["bundle", "verify", "bundle"], &[]).ok();
    assert!(
        out.stdout.contains("OK") && out.stdout.contains("disk.luks"),
        "{}",
        out.stdout
    );
    let out = agent(d.path(), &["--json", "bundle", "verify", "bundle"], &[]).ok();
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["key_bytes"], PASSPHRASE.len());
}

#[test]
fn bad_bundles_are_refused_clearly() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let r = init(p);
    let b = make_bundle(p, &r);
    let check = |needle: &str, code: i32| {
        let out = agent(p, &["bundle", "verify", "bundle"], &[]);
        assert_eq!(out.code, code, "{needle}: {}", out.stderr);
        assert!(
            out.stderr.contains(needle),
            "{needle:?} not in {}",
            out.stderr
        );
        assert!(!out.stderr.contains("panicked"));
    };
    // Image byte flipped: hash mismatch.
    let img = b.join("disk.luks");
    let orig = std::fs::read(&img).unwrap();
    let mut bad = orig.clone();
    let n = bad.len() - 10;
    bad[n] ^= 1;
    std::fs::write(&img, &bad).unwrap();
    check("does not match the manifest", 1);
    // Truncated image.
    std::fs::write(&img, &orig[..orig.len() - 512]).unwrap();
    check("truncated or replaced", 1);
    std::fs::write(&img, &orig).unwrap();
    // Malformed and truncated manifests.
    let m = b.join("manifest.json");
    let text = std::fs::read_to_string(&m).unwrap();
    std::fs::write(&m, &text[..text.len() / 2]).unwrap();
    check("not a valid bundle manifest", 1);
    std::fs::write(&m, text.replace("\"profile\"", "\"profil\"")).unwrap();
    check("profil", 1);
    std::fs::write(&m, &text).unwrap();
    // Missing sealed key.
    std::fs::rename(b.join("dek.age"), p.join("dek.age.bak")).unwrap();
    check("cannot open dek.age", 1);
    std::fs::rename(p.join("dek.age.bak"), b.join("dek.age")).unwrap();
    agent(p, &["bundle", "verify", "bundle"], &[]).ok();
    // Wrong identity.
    let other = tempfile::tempdir().unwrap();
    init(other.path());
    let id = other.path().join("home/identity.txt");
    let out = agent(
        p,
        &[
            "--identity",
            id.to_str().unwrap(),
            "bundle",
            "verify",
            "bundle",
        ],
        &[],
    );
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("wrong identity") && out.stderr.contains("hint:"),
        "{}",
        out.stderr
    );
}

#[test]
fn dek_of_a_size_the_profile_forbids_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let r = init(p);
    let b = make_bundle(p, &r);
    // Reseal a 5-byte key and claim the ibm-classic-luks profile (24..384 bytes).
    let rec: age::x25519::Recipient = r.parse().unwrap();
    std::fs::write(b.join("dek.age"), age::encrypt(&rec, b"short").unwrap()).unwrap();
    let m = b.join("manifest.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&m).unwrap()).unwrap();
    v["profile"] = "ibm-classic-luks".into();
    v["key"]["length"] = 5.into();
    std::fs::write(&m, v.to_string()).unwrap();
    let out = agent(p, &["bundle", "verify", "bundle"], &[]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("DEK must be 24 to 384 bytes"),
        "{}",
        out.stderr
    );
}

#[test]
fn age_cli_interop_both_ways() {
    if !have("age") || !have("age-keygen") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    // A bundle sealed by diskseal opens with `age -d -i` and the agent's identity.
    let r = init(p);
    let b = make_bundle(p, &r);
    let o = std::process::Command::new("age")
        .args(["-d", "-i", "home/identity.txt"])
        .arg(b.join("dek.age"))
        .current_dir(p)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(o.stdout, PASSPHRASE);
    // A key sealed by the age CLI (to an age-keygen identity) opens in the agent.
    let o = std::process::Command::new("age-keygen")
        .args(["-o", "cli-id.txt"])
        .current_dir(p)
        .output()
        .unwrap();
    assert!(o.status.success());
    let text = std::fs::read_to_string(p.join("cli-id.txt")).unwrap();
    let cli_recipient = text
        .lines()
        .find_map(|l| l.strip_prefix("# public key: "))
        .unwrap()
        .to_owned();
    std::fs::write(p.join("pass"), PASSPHRASE).unwrap();
    let o = std::process::Command::new("age")
        .args(["-r", &cli_recipient, "-o"])
        .arg(b.join("dek.age"))
        .arg("pass")
        .current_dir(p)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = agent(
        p,
        &["--identity", "cli-id.txt", "bundle", "verify", "bundle"],
        &[],
    )
    .ok();
    assert!(out.stdout.contains("unseals"), "{}", out.stdout);
}

#[test]
fn unknown_config_field_is_named() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("c.toml"),
        "region = \"us-south\"\nkey_idd = \"x\"\n",
    )
    .unwrap();
    let out = agent(
        d.path(),
        &["--config", "c.toml", "wrap", "--dek-file", "c.toml"],
        &[("IBMCLOUD_API_KEY", "k")],
    );
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("unknown field")
            && out.stderr.contains("key_idd")
            && out.stderr.contains("c.toml"),
        "{}",
        out.stderr
    );
}

#[test]
fn missing_api_key_is_explained() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("dek"), [7u8; 32]).unwrap();
    let out = agent(
        d.path(),
        &[
            "wrap",
            "--region",
            "us-south",
            "--instance-id",
            "i",
            "--key-id",
            "k",
            "--dek-file",
            "dek",
        ],
        &[],
    );
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("no IBM Cloud API key") && out.stderr.contains("IBMCLOUD_API_KEY"),
        "{}",
        out.stderr
    );
}

pub fn kms_args(fake: &FakeIbm) -> Vec<String> {
    [
        "--kms-endpoint",
        &fake.url,
        "--iam-endpoint",
        &fake.url,
        "--instance-id",
        INSTANCE,
        "--key-id",
        ROOT_KEY,
        "--retry-base-ms",
        "10",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

#[test]
fn wrap_a_bundle_then_unwrap_and_audit_without_secrets() {
    let fake = FakeIbm::start();
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let r = init(p);
    make_bundle(p, &r);
    let env = [("IBMCLOUD_API_KEY", API_KEY)];
    let mut args: Vec<String> = vec![
        "--json".into(),
        "wrap".into(),
        "--bundle".into(),
        "bundle".into(),
    ];
    args.extend(kms_args(&fake));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = agent(p, &argv, &env).ok();
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let wdek = v["wdek"].as_str().unwrap().to_owned();
    assert_eq!(v["key_version"], "kv-1");
    // Text output: the WDEK, then the key version.
    let argv_text: Vec<&str> = argv[1..].to_vec();
    let out = agent(p, &argv_text, &env).ok();
    assert!(
        out.stdout.lines().next().unwrap().len() > 40 && out.stdout.contains("key version: kv-1"),
        "{}",
        out.stdout
    );
    // Unwrap gives the passphrase back, into a 0600 file.
    std::fs::write(p.join("wdek.txt"), &wdek).unwrap();
    let mut args: Vec<String> = vec![
        "unwrap".into(),
        "--wdek-file".into(),
        "wdek.txt".into(),
        "-o".into(),
        "key.out".into(),
    ];
    args.extend(kms_args(&fake));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    agent(p, &argv, &env).ok();
    assert_eq!(std::fs::read(p.join("key.out")).unwrap(), PASSPHRASE);
    assert_eq!(
        std::fs::metadata(p.join("key.out"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    // A failing wrap (unknown key) is logged too, with the reason.
    let mut args: Vec<String> = vec!["wrap".into(), "--bundle".into(), "bundle".into()];
    args.extend(
        kms_args(&fake)
            .into_iter()
            .map(|a| if a == ROOT_KEY { "nope".to_owned() } else { a }),
    );
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = agent(p, &argv, &env);
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("KEY_NOT_FOUND_ERR") && out.stderr.contains("hint: check --key-id"),
        "{}",
        out.stderr
    );

    let log_path = p.join("home/audit.jsonl");
    let log = std::fs::read_to_string(&log_path).unwrap();
    let events: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let actions: Vec<&str> = events
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions.iter().filter(|a| **a == "kms.secrets.wrap").count(),
        3,
        "{actions:?}"
    );
    assert!(
        actions.contains(&"kms.secrets.unwrap")
            && actions.contains(&"diskseal.bundle.verify")
            && actions[0] == "diskseal.identity.create"
    );
    let wrap = events
        .iter()
        .find(|e| e["action"] == "kms.secrets.wrap")
        .unwrap();
    assert_eq!(wrap["outcome"], "success");
    assert_eq!(wrap["reason"]["reasonCode"], 200);
    assert_eq!(
        wrap["target"]["id"],
        format!("crn:v1:bluemix:public:kms::a/:{INSTANCE}:key:{ROOT_KEY}")
    );
    assert_eq!(wrap["correlationId"].as_str().unwrap().len(), 36);
    assert_eq!(
        wrap["requestData"]["imageSha256"].as_str().unwrap().len(),
        64
    );
    assert!(wrap["eventTime"].as_str().unwrap().ends_with("+0000"));
    let failed = events
        .iter()
        .rfind(|e| e["action"] == "kms.secrets.wrap")
        .unwrap();
    assert_eq!(failed["outcome"], "failure");
    assert_eq!(failed["reason"]["reasonCode"], 404);
    assert!(
        failed["reason"]["reasonForFailure"]
            .as_str()
            .unwrap()
            .contains("KEY_NOT_FOUND_ERR")
    );
    // No secret anywhere in the log: not the passphrase, its base64, nor the API key.
    let b64 = base64::engine::general_purpose::STANDARD.encode(PASSPHRASE);
    for s in [std::str::from_utf8(PASSPHRASE).unwrap(), &b64, API_KEY] {
        assert!(!log.contains(s), "secret {s:?} in the audit log");
    }
    let raw = std::fs::read(&log_path).unwrap();
    assert!(!raw.windows(PASSPHRASE.len()).any(|w| w == PASSPHRASE));
    let out = agent(p, &["audit", "verify", log_path.to_str().unwrap()], &[]).ok();
    assert!(
        out.stdout.contains(&format!("OK, {} lines", events.len())),
        "{}",
        out.stdout
    );
}

#[test]
fn wrap_a_dek_file_and_a_generated_dek() {
    let fake = FakeIbm::start();
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let dek = [0x42u8; 32];
    std::fs::write(p.join("dek.bin"), dek).unwrap();
    let env = [("IBMCLOUD_API_KEY", API_KEY)];
    let mut args: Vec<String> = vec![
        "--json".into(),
        "wrap".into(),
        "--dek-file".into(),
        "dek.bin".into(),
    ];
    args.extend(kms_args(&fake));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    agent(p, &argv, &env).ok();
    let mut args: Vec<String> = vec![
        "--json".into(),
        "wrap".into(),
        "--generate-to".into(),
        "gen.bin".into(),
    ];
    args.extend(kms_args(&fake));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = agent(p, &argv, &env).ok();
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert!(v["wdek"].as_str().is_some());
    assert_eq!(std::fs::read(p.join("gen.bin")).unwrap().len(), 32);
    let log = std::fs::read_to_string(p.join("home/audit.jsonl")).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(dek);
    assert!(!log.contains(&b64));
}

#[test]
fn kms_unreachable_through_the_cli() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("dek"), [7u8; 32]).unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let out = agent(
        d.path(),
        &[
            "wrap",
            "--dek-file",
            "dek",
            "--kms-endpoint",
            &url,
            "--iam-endpoint",
            &url,
            "--instance-id",
            "i",
            "--key-id",
            "k",
            "--max-attempts",
            "2",
            "--retry-base-ms",
            "10",
        ],
        &[("IBMCLOUD_API_KEY", "k")],
    );
    assert_eq!(out.code, 2);
    assert!(
        out.stderr
            .contains(&format!("cannot reach IAM at {url} after 2 attempt(s)"))
            && out.stderr.contains("hint:"),
        "{}",
        out.stderr
    );
}

#[test]
fn deep_verify_unlocks_the_image() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let r = init(p);
    let b = make_bundle(p, &r);
    let out = agent(p, &["--json", "bundle", "verify", "--deep", "bundle"], &[]).ok();
    assert!(out.stdout.contains("\"deep\": true"), "{}", out.stdout);
    // A sealed key of the right size that does not open the image: only --deep sees it.
    let rec: age::x25519::Recipient = r.parse().unwrap();
    let wrong = vec![b'x'; PASSPHRASE.len()];
    std::fs::write(b.join("dek.age"), age::encrypt(&rec, &wrong).unwrap()).unwrap();
    agent(p, &["bundle", "verify", "bundle"], &[]).ok();
    let out = agent(p, &["bundle", "verify", "--deep", "bundle"], &[]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("the sealed key does not open disk.luks"),
        "{}",
        out.stderr
    );
}

/// `--deep` compares the plaintext's dm-verity root hash (schema 2) with the manifest's, or, in a
/// bundle of schema 1, the SHA-256 of the whole plaintext; it says how far it is on stderr.
#[test]
fn deep_verify_checks_the_plaintext_digest_of_either_schema() {
    use sha2::{Digest, Sha256};
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let r = init(p);
    let b = make_bundle(p, &r);
    let manifest = b.join("manifest.json");
    let good: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    assert_eq!(good["schema"], "diskseal-bundle/2");
    let rewrite = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut m = good.clone();
        edit(&mut m);
        std::fs::write(&manifest, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    };
    let deep = || {
        agent(
            p,
            &["bundle", "verify", "--deep", "bundle"],
            &[("DISKSEAL_PROGRESS_SECONDS", "0.001")],
        )
    };
    // A line comes only when the run outlasts the 1 ms interval, and on a loaded machine the thread
    // that prints it may not run before a deep verify of 1 MiB is done (it failed 2 runs of ~20 that
    // way): one of several runs shows it.
    let shown = (0..20).any(|_| deep().ok().stderr.contains("diskseal-agent: deep verify: "));
    assert!(shown, "no progress line in 20 deep verifies");
    // Another root hash: the shallow check passes, the deep one does not.
    rewrite(&|m| m["plaintext"]["dm_verity"]["root_hash"] = "ab".repeat(32).into());
    agent(p, &["bundle", "verify", "bundle"], &[]).ok();
    let out = deep();
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("plaintext dm-verity root hash")
            && out.stderr.contains("does not match"),
        "{}",
        out.stderr
    );
    // Schema 1: the SHA-256 of the whole disk.
    let sha = diskseal::bundle::hex(&Sha256::digest(std::fs::read(p.join("disk.raw")).unwrap()));
    let v1 = |sha: String| {
        move |m: &mut serde_json::Value| {
            m["schema"] = "diskseal-bundle/1".into();
            m["plaintext"] = serde_json::json!({ "sha256": sha.clone() });
        }
    };
    rewrite(&v1(sha));
    deep().ok();
    rewrite(&v1("0".repeat(64)));
    let out = deep();
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("plaintext sha256"), "{}", out.stderr);
}

/// A bundle with both plaintext digests (`diskseal encrypt --bundle ... --plaintext-sha256`): `--deep`
/// computes and checks both, and names the one that does not match.
#[test]
fn deep_verify_checks_both_plaintext_digests() {
    use sha2::{Digest, Sha256};
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let r = init(p);
    let b = crate::util::make_bundle_plaintext_sha256(p, &r);
    let manifest = b.join("manifest.json");
    let good: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    let sha = diskseal::bundle::hex(&Sha256::digest(std::fs::read(p.join("disk.raw")).unwrap()));
    assert_eq!(good["schema"], "diskseal-bundle/2");
    assert_eq!(good["plaintext"]["sha256"], sha.as_str());
    assert!(good["plaintext"]["dm_verity"]["root_hash"].is_string());
    let deep = || agent(p, &["bundle", "verify", "--deep", "bundle"], &[]);
    deep().ok();
    // (field, the name in the error); the manifest is not signed, the image and key stay consistent.
    for (field, name) in [
        ("sha256", "plaintext sha256"),
        ("dm_verity", "plaintext dm-verity root hash"),
    ] {
        let mut m = good.clone();
        if field == "sha256" {
            m["plaintext"]["sha256"] = "0".repeat(64).into();
        } else {
            m["plaintext"]["dm_verity"]["root_hash"] = "ab".repeat(32).into();
        }
        std::fs::write(&manifest, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
        agent(p, &["bundle", "verify", "bundle"], &[]).ok();
        let out = deep();
        assert_eq!(out.code, 1, "{field}: {}", out.stderr);
        let other = if field == "sha256" {
            "plaintext dm-verity root hash"
        } else {
            "plaintext sha256"
        };
        assert!(
            out.stderr.contains(&format!("{name} "))
                && out.stderr.contains("does not match")
                && !out.stderr.contains(other),
            "{field}: {}",
            out.stderr
        );
    }
}

#[test]
fn ibm_vpc_qcow2_bundle_verifies_deep_and_wraps_base64_of_the_passphrase() {
    let fake = FakeIbm::start();
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let r = init(p);
    make_bundle_as(p, &r, diskseal::profile::Profile::IbmVpc);
    let out = agent(p, &["--json", "bundle", "verify", "--deep", "bundle"], &[]).ok();
    assert!(out.stdout.contains("disk.qcow2"), "{}", out.stdout);
    let mut args: Vec<String> = vec!["wrap".into(), "--bundle".into(), "bundle".into()];
    args.extend(kms_args(&fake));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    agent(p, &argv, &[("IBMCLOUD_API_KEY", API_KEY)]).ok();
    // What reached Key Protect is base64 of the passphrase, without a newline (the VPC docs' `echo -n`).
    let b64 = base64::engine::general_purpose::STANDARD.encode(PASSPHRASE);
    assert!(fake.with(|s| {
        s.bodies
            .iter()
            .any(|b| *b == format!("{{\"plaintext\":\"{b64}\"}}"))
    }));
}

/// `diskseal-agent ... | head`: a reader that closed the pipe is not an error, and never a panic.
#[test]
fn closed_stdout_is_not_a_panic() {
    for args in [&["init"][..], &["completions", "bash"]] {
        let d = tempfile::tempdir().unwrap();
        let mut child = crate::util::agent_command(d.path(), args, &[])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && !err.contains("panicked"),
            "{args:?}: {err}"
        );
    }
}

/// `--json` is honoured by every command: stdout is one JSON document whose `command` names it (the
/// service commands, their dry runs included, are in `snapshots` and `dry_run`).
#[test]
fn json_is_one_document_for_every_local_command() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let r = init(p);
    make_bundle(p, &r);
    let log = p.join("home/audit.jsonl");
    let log = log.to_str().unwrap();
    for args in [
        &["init"][..],
        &["bundle", "verify", "bundle"],
        &["audit", "verify", log],
        &["completions", "bash"],
        &["man", "man"],
    ] {
        let out = agent(p, &[&["--json"], args].concat(), &[]).ok();
        let v: serde_json::Value = serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: not one JSON document ({e}): {}", out.stdout));
        let name = if args[0] == "bundle" || args[0] == "audit" {
            args[..2].join(" ")
        } else {
            args[0].to_owned()
        };
        assert_eq!(v["command"], name.as_str(), "{}", out.stdout);
    }
}
