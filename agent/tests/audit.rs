//! The audit log's hash chain: every kind of tampering is detected.

use std::path::Path;

use diskseal_agent::audit::{self, Event};

fn write_log(path: &Path, n: usize) {
    for i in 0..n {
        let ev = Event {
            action: "kms.secrets.wrap".into(),
            outcome: audit::Outcome::of(i % 2 == 0),
            reason_code: if i % 2 == 0 { 200 } else { 503 },
            target_id: format!("crn:test:{i}"),
            target_type: "kms/secrets".into(),
            ..Event::default()
        };
        audit::append(path, &ev).unwrap();
    }
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn put(path: &Path, l: &[String]) {
    std::fs::write(path, l.iter().map(|s| format!("{s}\n")).collect::<String>()).unwrap();
}

#[track_caller]
fn detected(path: &Path, needle: &str) {
    let e = audit::verify(path).unwrap_err().to_string();
    assert!(e.contains(needle), "{needle:?} not in {e}");
}

#[test]
fn sound_log_verifies() {
    let d = tempfile::tempdir().unwrap();
    let log = d.path().join("a.jsonl");
    write_log(&log, 5);
    let v = audit::verify(&log).unwrap();
    assert_eq!(v.lines, 5);
    let first: serde_json::Value = serde_json::from_str(&lines(&log)[0]).unwrap();
    assert_eq!(first["prevHash"], audit::GENESIS);
    assert_eq!(first["severity"], "normal");
    let second: serde_json::Value = serde_json::from_str(&lines(&log)[1]).unwrap();
    assert_eq!(second["outcome"], "failure");
    assert_eq!(second["severity"], "critical");
}

#[test]
fn edited_lines_are_detected() {
    let d = tempfile::tempdir().unwrap();
    let log = d.path().join("a.jsonl");
    write_log(&log, 5);
    let orig = lines(&log);
    let mut l = orig.clone();
    l[2] = l[2].replace("crn:test:2", "crn:test:X");
    put(&log, &l);
    detected(&log, "line 4: prevHash does not match the hash of line 3");
    // Editing the last line is caught by the head file.
    let mut l = orig.clone();
    l[4] = l[4].replace("crn:test:4", "crn:test:Y");
    put(&log, &l);
    detected(&log, "the last line (line 5) does not match");
}

#[test]
fn removed_lines_are_detected() {
    let d = tempfile::tempdir().unwrap();
    let log = d.path().join("a.jsonl");
    write_log(&log, 5);
    let mut l = lines(&log);
    l.remove(1);
    put(&log, &l);
    detected(&log, "line 2 has seq 3");
}

#[test]
fn reordered_lines_are_detected() {
    let d = tempfile::tempdir().unwrap();
    let log = d.path().join("a.jsonl");
    write_log(&log, 5);
    let mut l = lines(&log);
    l.swap(1, 2);
    put(&log, &l);
    detected(&log, "line 2 has seq 3");
}

#[test]
fn truncation_is_detected() {
    let d = tempfile::tempdir().unwrap();
    let log = d.path().join("a.jsonl");
    write_log(&log, 5);
    let l = lines(&log);
    put(&log, &l[..3]);
    detected(&log, "the log has 3 lines but");
    // Cut in the middle of a line.
    let text = l.join("\n");
    std::fs::write(&log, &text[..text.len() - 20]).unwrap();
    detected(&log, "incomplete");
    // The head file removed.
    put(&log, &l);
    audit::verify(&log).unwrap();
    std::fs::remove_file(d.path().join("a.jsonl.head")).unwrap();
    detected(&log, "truncation cannot be ruled out");
}

#[test]
fn tampering_makes_audit_verify_exit_1() {
    let d = tempfile::tempdir().unwrap();
    let log = d.path().join("a.jsonl");
    write_log(&log, 3);
    let mut l = lines(&log);
    l[0] = l[0].replace("\"success\"", "\"failure\"");
    put(&log, &l);
    let out = crate::util::agent(d.path(), &["audit", "verify", "a.jsonl"], &[]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("line 2: prevHash"), "{}", out.stderr);
}

#[test]
fn concurrent_writers_keep_the_chain() {
    let d = tempfile::tempdir().unwrap();
    let log = d.path().join("a.jsonl");
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| write_log(&log, 10));
        }
    });
    assert_eq!(audit::verify(&log).unwrap().lines, 40);
}

/// A writer killed between appending its line and renaming the head leaves the head one line behind:
/// the log still verifies (and the next append brings the head up to date); two lines behind is not that.
#[test]
fn a_head_one_line_behind_is_a_killed_writer_not_tampering() {
    let d = tempfile::tempdir().unwrap();
    let log = d.path().join("a.jsonl");
    let head = d.path().join("a.jsonl.head");
    write_log(&log, 3);
    let three = std::fs::read(&head).unwrap();
    write_log(&log, 1);
    let four = std::fs::read(&head).unwrap();
    write_log(&log, 1);
    std::fs::write(&head, &four).unwrap();
    assert_eq!(audit::verify(&log).unwrap().lines, 5);
    std::fs::write(&head, &three).unwrap();
    detected(&log, "the log has 5 lines but");
    // One line behind but naming another line: an edit.
    std::fs::write(&head, &four).unwrap();
    let mut l = lines(&log);
    l[3] = l[3].replace("crn:test:0", "crn:test:Z");
    put(&log, &l);
    assert!(audit::verify(&log).is_err());
}

/// A writer killed in the middle of its line leaves an unterminated tail the head never covered: the
/// log still verifies, and the next append cuts the tail and chains to the last whole line.
#[test]
fn a_torn_last_line_from_a_killed_writer_is_cut_by_the_next_append() {
    let d = tempfile::tempdir().unwrap();
    let log = d.path().join("a.jsonl");
    write_log(&log, 3);
    let whole = std::fs::read(&log).unwrap();
    let mut torn = whole.clone();
    torn.extend_from_slice(br#"{"seq":4,"prevHash":"ab"#);
    std::fs::write(&log, &torn).unwrap();
    assert_eq!(audit::verify(&log).unwrap().lines, 3);
    write_log(&log, 1);
    assert_eq!(audit::verify(&log).unwrap().lines, 4);
    assert!(std::fs::read(&log).unwrap().starts_with(&whole));
    // A torn tail where whole lines are missing too is a truncation.
    let l = lines(&log);
    let mut cut = l[..2].join("\n").into_bytes();
    cut.extend_from_slice(b"\n{\"seq\":3");
    std::fs::write(&log, cut).unwrap();
    detected(&log, "incomplete");
}

/// Every command that starts an action records how it ended: success, failure with the reason, refused
/// by a pre-flight check, dry run; the initiator is the real local user and host, the credential the
/// kind really used; no secret reaches the log, and the chain stays sound.
#[test]
fn every_action_records_its_outcome_initiator_and_credential_and_no_secret() {
    use crate::fake_ibm::{API_KEY, FakeIbm, INSTANCE, ROOT_KEY};
    use crate::util::{PASSPHRASE, agent, init, make_bundle_as};
    const AWS_SECRET: &str = "aws-secret-for-the-audit-test-0123456789";
    const WRONG_KEY: &str = "wrong-api-key-never-logged-9876543210";
    let f = FakeIbm::start();
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let recipient = init(p);
    let bundle = make_bundle_as(p, &recipient, diskseal::profile::Profile::IbmVpc);
    let bundle = bundle.to_str().unwrap();
    std::fs::write(p.join("wdek"), "d2RlawAAAA==").unwrap();
    let env = [
        ("IBMCLOUD_API_KEY", API_KEY),
        ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
        ("AWS_SECRET_ACCESS_KEY", AWS_SECRET),
    ];
    let u = f.url.as_str();
    let kms = [
        "--kms-endpoint",
        u,
        "--iam-endpoint",
        u,
        "--instance-id",
        INSTANCE,
        "--key-id",
        ROOT_KEY,
        "--region",
        "us-south",
    ];
    let run = |args: &[&str], env: &[(&str, &str)]| agent(p, args, env);
    // Success: bundle verify (the age identity), wrap with Key Protect (the API key).
    run(&["bundle", "verify", bundle], &env).ok();
    run(&[&["wrap", "--bundle", bundle][..], &kms].concat(), &env).ok();
    // Failure with the reason: a wrong API key (the KMS step records it), no key id (nothing ran).
    let wrong = [("IBMCLOUD_API_KEY", WRONG_KEY)];
    assert_eq!(
        run(
            &[&["rewrap", "--wdek-file", "wdek"][..], &kms].concat(),
            &wrong
        )
        .code,
        2
    );
    assert_eq!(
        run(
            &[
                "unwrap",
                "--wdek-file",
                "wdek",
                "-o",
                "k",
                "--region",
                "us-south"
            ],
            &env
        )
        .code,
        2
    );
    // Refused by pre-flight: an object name VPC would reject; a ship whose import would be refused.
    let import = crate::import::import_args(
        "ibm-vpc",
        "cos://us-south/bkt/disk.QCOW2",
        "debian-12-amd64",
        "crn:v1:x",
        u,
        u,
    );
    assert_eq!(run(&import, &env).code, 2);
    let ship = |object: &'static str| -> Vec<&str> {
        [
            &[
                "ship",
                bundle,
                "--target",
                "ibm-vpc",
                "--object",
                object,
                "--os",
                "debian-12-amd64",
                "--s3-endpoint",
                u,
                "--vpc-endpoint",
                u,
                "--allow-any-size",
            ][..],
            &kms,
        ]
        .concat()
    };
    assert_eq!(run(&ship("cos://us-south/bkt/disk.img"), &env).code, 2);
    // Dry runs.
    run(
        &[&ship("cos://us-south/bkt/disk.qcow2")[..], &["--dry-run"]].concat(),
        &env,
    )
    .ok();
    run(
        &[
            &import[..3],
            &["cos://us-south/bkt/disk.qcow2"],
            &import[4..],
            &["--dry-run"],
        ]
        .concat(),
        &env,
    )
    .ok();
    // An upload with HMAC keys (to the fake, which serves S3 too).
    std::fs::write(p.join("f.bin"), b"bytes").unwrap();
    run(
        &["upload", "f.bin", "s3://bkt/f.bin", "--s3-endpoint", u],
        &env,
    );

    let log = std::fs::read_to_string(p.join("home/audit.jsonl")).unwrap();
    let events: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let find = |action: &str, outcome: &str| {
        events
            .iter()
            .find(|e| e["action"] == action && e["outcome"] == outcome)
            .unwrap_or_else(|| panic!("no {action} {outcome} in\n{log}"))
    };
    let credential = |e: &serde_json::Value| e["initiator"]["credential"]["type"].clone();
    assert_eq!(
        credential(find("diskseal.identity.create", "success")),
        "none"
    );
    assert_eq!(
        credential(find("diskseal.bundle.verify", "success")),
        "age-identity"
    );
    assert_eq!(credential(find("kms.secrets.wrap", "success")), "apikey");
    let e = find("kms.secrets.rewrap", "failure");
    assert!(
        e["reason"]["reasonForFailure"]
            .as_str()
            .unwrap()
            .contains("IAM"),
        "{e}"
    );
    let e = find("kms.secrets.unwrap", "failure");
    assert!(
        e["reason"]["reasonForFailure"]
            .as_str()
            .unwrap()
            .contains("configuration"),
        "{e}"
    );
    let e = find("diskseal.image.import.ibm-vpc", "refused");
    assert_eq!(e["reason"]["reasonType"], "Refused");
    assert!(
        e["reason"]["reasonForFailure"]
            .as_str()
            .unwrap()
            .contains("pre-flight"),
        "{e}"
    );
    let e = find("diskseal.ship", "refused");
    assert!(
        e["reason"]["reasonForFailure"]
            .as_str()
            .unwrap()
            .contains("pre-flight"),
        "{e}"
    );
    find("diskseal.ship", "dry-run");
    find("diskseal.image.import.ibm-vpc", "dry-run");
    assert_eq!(
        credential(
            events
                .iter()
                .find(|e| e["action"] == "diskseal.object.upload")
                .expect("an upload record")
        ),
        "hmac"
    );
    // A dry-run or refused ship is never recorded as a success of anything but the local bundle check.
    for e in &events {
        if e["outcome"] == "success" {
            assert!(
                [
                    "diskseal.identity.create",
                    "diskseal.bundle.verify",
                    "kms.secrets.wrap",
                    "diskseal.object.upload"
                ]
                .contains(&e["action"].as_str().unwrap()),
                "{e}"
            );
        }
    }
    // The initiator: the real local user and host.
    let user = std::process::Command::new("id")
        .arg("-un")
        .output()
        .unwrap();
    let user = String::from_utf8(user.stdout).unwrap();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let who = format!("{}@{}", user.trim(), host.trim());
    assert!(
        events.iter().all(|e| e["initiator"]["id"] == who.as_str()),
        "want {who}:\n{log}"
    );
    // No secret: API keys, AWS secret, passphrase (raw and base64, what the KMS wrapped).
    use base64::Engine;
    let pass_b64 = base64::engine::general_purpose::STANDARD.encode(PASSPHRASE);
    for secret in [
        API_KEY,
        WRONG_KEY,
        AWS_SECRET,
        &pass_b64,
        std::str::from_utf8(PASSPHRASE).unwrap(),
    ] {
        assert!(!log.contains(secret), "{secret} is in the log");
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
