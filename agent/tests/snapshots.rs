//! What users and scripts read: `--help` of every `diskseal-agent` command (snapshots in
//! `agent/tests/snapshots/*.txt`; `UPDATE_SNAPSHOTS=1` rewrites them after an intended change, review the
//! diff), and the `--json` keys of the results, exactly the ones the README documents.

use std::collections::BTreeSet;
use std::path::PathBuf;

use diskseal::profile::Profile;

use crate::fake_ibm::{API_KEY, FakeIbm};
use crate::import::import_args;
use crate::upload::moto_s3;
use crate::util::{PASSPHRASE, agent, make_bundle, make_bundle_as};

fn check(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/snapshots")
        .join(format!("{name}.txt"));
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("missing snapshot {}", path.display()));
    assert!(
        expected == actual,
        "snapshot {name} differs.\n--- expected\n{expected}\n--- actual\n{actual}"
    );
}

/// Every command, as `diskseal-agent help` lists them (the test fails when one is missing here).
const COMMANDS: &[&str] = &[
    "",
    "init",
    "bundle",
    "bundle verify",
    "wrap",
    "unwrap",
    "rewrap",
    "upload",
    "import",
    "ship",
    "provision",
    "audit",
    "audit verify",
    "completions",
    "man",
];

#[test]
fn help_texts() {
    use clap::CommandFactory;
    let d = tempfile::tempdir().unwrap();
    for cmd in COMMANDS {
        let mut args: Vec<&str> = cmd.split_whitespace().collect();
        args.push("--help");
        let r = agent(d.path(), &args, &[]).ok();
        let name = if cmd.is_empty() {
            "diskseal-agent".to_owned()
        } else {
            cmd.replace(' ', "-")
        };
        check(&format!("help-{name}"), &r.stdout);
        // Every command has worked examples, none wider than an 80-column terminal.
        assert!(r.stdout.contains("\nExample"), "{cmd:?} has no examples");
        let examples = r.stdout.split("\nExample").skip(1).flat_map(str::lines);
        for line in examples.filter(|l| l.starts_with("  ")) {
            assert!(
                line.chars().count() <= 80,
                "{cmd:?}: this example line wraps on an 80-column terminal:\n{line}"
            );
        }
        // Each default is said once: by clap's "[default: ...]", not also in the text.
        let mut entries: Vec<String> = Vec::new();
        for line in r.stdout.lines() {
            match entries.last_mut() {
                Some(e) if !line.trim_start().starts_with('-') => e.push_str(line),
                _ => entries.push(line.to_owned()),
            }
        }
        for entry in entries.iter().filter(|e| e.contains("[default:")) {
            let text = entry.split("[default:").next().unwrap_or("");
            assert!(
                !text.contains("default "),
                "{cmd:?}: the default is said twice:\n{entry}"
            );
        }
    }
    let mut all = vec![String::new()];
    let top = diskseal_agent::cli::Cli::command();
    for sub in top.get_subcommands().filter(|s| s.get_name() != "help") {
        all.push(sub.get_name().to_owned());
        for s2 in sub.get_subcommands().filter(|s| s.get_name() != "help") {
            all.push(format!("{} {}", sub.get_name(), s2.get_name()));
        }
    }
    let listed: BTreeSet<&str> = COMMANDS.iter().copied().collect();
    for c in &all {
        assert!(listed.contains(c.as_str()), "no --help snapshot for {c:?}");
    }
}

fn keys(stdout: &str) -> BTreeSet<String> {
    let v: serde_json::Value = serde_json::from_str(stdout).unwrap();
    v.as_object().unwrap().keys().cloned().collect()
}

#[track_caller]
fn has_keys(stdout: &str, documented: &str) {
    let want: BTreeSet<String> = documented.split_whitespace().map(str::to_owned).collect();
    assert_eq!(keys(stdout), want, "{stdout}");
}

/// The README's "Machine output (`--json`)" table for the agent, key for key.
pub const JSON_KEYS: &[(&str, &str)] = &[
    ("init", "command identity recipient created"),
    (
        "bundle verify",
        "command bundle ok deep image image_sha256 profile key_bytes",
    ),
    ("wrap", "command wdek key_version correlation_id"),
    (
        "upload",
        "command url size sha256 etag parts parts_uploaded parts_reused resumed notes",
    ),
    ("import", "command id global_identifier status polls"),
    (
        "ship",
        "command image_id object sha256 etag wdek key_version instance",
    ),
    (
        "provision",
        "command id name status primary_ip boot_volume_key adopted polls",
    ),
];

fn documented(cmd: &str) -> &'static str {
    JSON_KEYS.iter().find(|(c, _)| *c == cmd).unwrap().1
}

#[test]
fn json_results_have_the_documented_keys() {
    let f = FakeIbm::start();
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let out = agent(p, &["--json", "init"], &[]).ok();
    has_keys(&out.stdout, documented("init"));
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let recipient = v["recipient"].as_str().unwrap().to_owned();
    let luks = tempfile::tempdir().unwrap();
    std::fs::copy(p.join("home/identity.txt"), {
        std::fs::create_dir(luks.path().join("home")).unwrap();
        luks.path().join("home/identity.txt")
    })
    .unwrap();
    make_bundle(luks.path(), &recipient);
    let out = agent(luks.path(), &["--json", "bundle", "verify", "bundle"], &[]).ok();
    has_keys(&out.stdout, documented("bundle verify"));
    assert!(
        out.stdout
            .trim_start()
            .starts_with("{\n  \"command\": \"bundle verify\"")
    );
    let mut args = vec![
        "--json".to_owned(),
        "wrap".into(),
        "--bundle".into(),
        "bundle".into(),
    ];
    args.extend(crate::cli::kms_args(&f));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let env = [("IBMCLOUD_API_KEY", API_KEY)];
    has_keys(
        &agent(luks.path(), &argv, &env).ok().stdout,
        documented("wrap"),
    );
    // import (classic: global_identifier is set).
    use base64::Engine;
    let wdek = f.wrap(
        base64::engine::general_purpose::STANDARD
            .encode(PASSPHRASE)
            .as_bytes(),
    );
    std::fs::write(p.join("wdek"), wdek).unwrap();
    let crn = FakeIbm::key_crn();
    let import = import_args(
        "ibm-classic",
        "cos://us-south/bkt/d.vhd-0.vhd",
        "UBUNTU_22_64",
        &crn,
        &f.url,
        &f.url,
    );
    let out = agent(
        p,
        &[&["--json"], &import[..], &["--poll-ms", "10"]].concat(),
        &env,
    )
    .ok();
    has_keys(&out.stdout, documented("import"));
    // upload and ship need the S3 server.
    let Some(s3) = moto_s3() else { return };
    let s3env = s3.ship_env();
    std::fs::write(p.join("f.bin"), b"some bytes").unwrap();
    let out = agent(
        p,
        &[
            "--json",
            "upload",
            "f.bin",
            "s3://bkt/f.bin",
            "--s3-endpoint",
            &s3.url,
        ],
        &s3env,
    )
    .ok();
    has_keys(&out.stdout, documented("upload"));
    let vpc = p.join("vpc");
    std::fs::create_dir(&vpc).unwrap();
    let bundle = make_bundle_as(&vpc, &recipient, Profile::IbmVpc);
    let args = crate::ship::ship_args_to(
        "ibm-vpc",
        "cos://us-south/bkt/disk.qcow2",
        "debian-12-amd64",
        bundle.to_str().unwrap(),
        &s3.url,
        &f.url,
    );
    has_keys(&agent(p, &args, &s3env).ok().stdout, documented("ship"));
    // --quiet: nothing on stdout on success.
    let out = agent(
        p,
        &["-q", "bundle", "verify", bundle.to_str().unwrap()],
        &[],
    )
    .ok();
    assert_eq!(out.stdout, "");
}

/// The dry runs' text and the endpoint flag messages (snapshots `message-*.txt`): fixed endpoints, and
/// nothing is sent, so no server is needed.
#[test]
fn dry_run_and_endpoint_messages() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    std::fs::write(p.join("wdek"), "d2RlawAAAA==").unwrap();
    std::fs::write(p.join("disk.img"), vec![0u8; 20 << 20]).unwrap();
    let env = [
        ("IBMCLOUD_API_KEY", API_KEY),
        ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
        ("AWS_SECRET_ACCESS_KEY", "secret"),
    ];
    let import = |target: &str, object: &str, flag: &str| -> Vec<String> {
        [
            "import",
            "--target",
            target,
            object,
            "--os",
            "debian-12-amd64",
            "--wdek-file",
            "wdek",
            "--key-crn",
            "crn:v1:bluemix:public:kms:us-south:a/ACCOUNT:INSTANCE:key:KEY",
            flag,
            "https://import.example",
            "--iam-endpoint",
            "https://iam.example",
            "--dry-run",
        ]
        .map(str::to_owned)
        .to_vec()
    };
    let kms = [
        "--kms-endpoint",
        "https://kms.example",
        "--iam-endpoint",
        "https://iam.example",
        "--instance-id",
        "INSTANCE",
        "--key-id",
        "KEY",
        "--key-ring",
        "RING",
        "--dry-run",
    ];
    let cases: Vec<(&str, Vec<String>, i32)> = vec![
        (
            "dry-run-import-vpc",
            import("ibm-vpc", "cos://us-south/bkt/disk.qcow2", "--vpc-endpoint"),
            0,
        ),
        (
            "dry-run-import-classic",
            import(
                "ibm-classic",
                "cos://us-south/bkt/disk.vhd-0.vhd",
                "--sl-endpoint",
            ),
            0,
        ),
        (
            "dry-run-wrap",
            [&["wrap", "--generate-to", "dek.bin"][..], &kms]
                .concat()
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            0,
        ),
        (
            "dry-run-upload",
            [
                "upload",
                "disk.img",
                "s3://bkt/disk.img",
                "--s3-endpoint",
                "https://s3.example",
                "--part-size",
                "8M",
                "--dry-run",
            ]
            .map(str::to_owned)
            .to_vec(),
            0,
        ),
        (
            "error-endpoint-of-the-other-target",
            import(
                "ibm-classic",
                "cos://us-south/bkt/disk.vhd-0.vhd",
                "--vpc-endpoint",
            ),
            2,
        ),
    ];
    for (name, args, code) in cases {
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = agent(p, &argv, &env);
        assert_eq!(out.code, code, "{name}: {}", out.stderr);
        check(
            &format!("message-{name}"),
            &format!("{}{}", out.stdout, out.stderr),
        );
    }
}
