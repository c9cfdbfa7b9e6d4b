//! `--dry-run` of every command that talks to a service (wrap, unwrap, rewrap, upload, import, ship,
//! provision):
//! it prints the requests, secrets redacted, and sends nothing — every endpoint points at the IBM fake
//! (which also serves S3), and the fake records no request. With `--json` the plan is one JSON document.

use diskseal::profile::Profile;

use crate::fake_ibm::{API_KEY, FakeIbm, INSTANCE, ROOT_KEY};
use crate::import::import_args;
use crate::util::{PASSPHRASE, agent, init, make_bundle_as};

const AWS_SECRET: &str = "aws-secret-never-shown-0123456789";

/// The credentials every dry run here finds: the IBM fake's API key and HMAC keys.
const ENV: [(&str, &str); 3] = [
    ("IBMCLOUD_API_KEY", API_KEY),
    ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
    ("AWS_SECRET_ACCESS_KEY", AWS_SECRET),
];

/// Every service command in its dry run against `f`, run in `p` (with a bundle in `p/vpc`, a classic
/// bundle in `p/classic`, a WDEK file and a key file).
fn dry_runs(f: &FakeIbm, p: &std::path::Path) -> Vec<Vec<String>> {
    let recipient = init(p);
    let vpc = p.join("vpc");
    let classic = p.join("classic");
    std::fs::create_dir_all(&vpc).unwrap();
    std::fs::create_dir_all(&classic).unwrap();
    let vpc_bundle = make_bundle_as(&vpc, &recipient, Profile::IbmVpc);
    let classic_bundle = make_bundle_as(&classic, &recipient, Profile::IbmClassicVhd);
    std::fs::write(p.join("wdek"), "d2RlawAAAA==").unwrap();
    std::fs::write(p.join("dek"), [7u8; 32]).unwrap();
    let u = f.url.as_str();
    let kms: Vec<&str> = vec![
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
    let crn = FakeIbm::key_crn();
    let with = |head: &[&str], tail: &[&str]| -> Vec<String> {
        head.iter()
            .chain(tail)
            .map(|s| (*s).to_owned())
            .chain(["--dry-run".to_owned()])
            .collect()
    };
    let ship = |bundle: &std::path::Path, target: &str, object: &str, os: &str| {
        let mut a = with(
            &[
                "ship",
                bundle.to_str().unwrap(),
                "--target",
                target,
                "--object",
                object,
                "--s3-endpoint",
                u,
                "--os",
                os,
                "--allow-any-size",
            ],
            &kms,
        );
        match target {
            "ibm-vpc" => a.extend(["--vpc-endpoint".into(), u.into()]),
            "ibm-classic" => a.extend(["--sl-endpoint".into(), u.into()]),
            _ => {}
        }
        a
    };
    vec![
        with(&["wrap", "--bundle", vpc_bundle.to_str().unwrap()], &kms),
        with(&["wrap", "--dek-file", "dek"], &kms),
        with(&["wrap", "--generate-to", "new.dek"], &kms),
        with(&["unwrap", "--wdek-file", "wdek", "-o", "out.dek"], &kms),
        with(&["rewrap", "--wdek-file", "wdek"], &kms),
        with(&["upload", "dek", "s3://bkt/dek", "--s3-endpoint", u], &[]),
        with(
            &[
                "upload",
                "dek",
                "s3://bkt/dek",
                "--s3-endpoint",
                u,
                "--abort",
            ],
            &[],
        ),
        with(
            &import_args(
                "ibm-vpc",
                "cos://us-south/bkt/disk.qcow2",
                "debian-12-amd64",
                &crn,
                u,
                u,
            ),
            &[],
        ),
        with(
            &import_args(
                "ibm-classic",
                "cos://us-south/bkt/d.vhd-0.vhd",
                "UBUNTU_22_64",
                &crn,
                u,
                u,
            ),
            &[],
        ),
        ship(
            &vpc_bundle,
            "ibm-vpc",
            "cos://us-south/bkt/disk.qcow2",
            "debian-12-amd64",
        ),
        ship(
            &classic_bundle,
            "ibm-classic",
            "cos://us-south/bkt/disk.vhd-0.vhd",
            "UBUNTU_22_64",
        ),
        ship(&vpc_bundle, "s3-only", "s3://bkt/disk.qcow2", ""),
        with(&crate::provision::vpc_order(u), &[]),
        with(&crate::provision::classic_order("0B5DEAF4-0000", u), &[]),
    ]
}

#[test]
fn every_service_command_dry_runs_without_sending_a_request_in_text_and_json() {
    let f = FakeIbm::start();
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    use base64::Engine;
    let pass_b64 = base64::engine::general_purpose::STANDARD.encode(PASSPHRASE);
    let secrets = [
        API_KEY,
        AWS_SECRET,
        pass_b64.as_str(),
        std::str::from_utf8(PASSPHRASE).unwrap(),
    ];
    for args in dry_runs(&f, p) {
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let text = agent(p, &argv, &ENV).ok();
        assert!(
            text.stdout.contains(&f.url) || text.stdout.contains("nothing to abort"),
            "{args:?}: {}",
            text.stdout
        );
        let json = agent(p, &[&["--json"], &argv[..]].concat(), &ENV).ok();
        let v: serde_json::Value = serde_json::from_str(&json.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: not one JSON document ({e}): {}", json.stdout));
        assert_eq!(v["command"], args[0].as_str(), "{args:?}");
        assert_eq!(v["dry_run"], true, "{args:?}");
        assert!(v["requests"].is_array() && v["checked"].is_array(), "{v}");
        for out in [&text, &json] {
            for secret in secrets {
                assert!(
                    !out.stdout.contains(secret) && !out.stderr.contains(secret),
                    "{args:?} shows a secret:\n{}{}",
                    out.stdout,
                    out.stderr
                );
            }
        }
        assert_eq!(
            f.with(|s| s.requests.len()),
            0,
            "{args:?} sent a request in its dry run"
        );
    }
    // Nothing was written either.
    assert!(!p.join("new.dek").exists() && !p.join("out.dek").exists());
}

/// The part line of `upload`'s and `ship`'s dry runs says what each part carries: with HMAC keys the
/// signed payload hash (Content-MD5 only from a refusal on), with `--content-md5` Content-MD5 from the
/// first part.
#[test]
fn the_upload_plan_says_whether_parts_carry_content_md5() {
    let f = FakeIbm::start();
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let uploads = dry_runs(&f, p)
        .into_iter()
        .filter(|a| (a[0] == "upload" && !a.iter().any(|x| x == "--abort")) || a[0] == "ship");
    let mut seen = 0;
    for args in uploads {
        for flag in [false, true] {
            let mut argv: Vec<&str> = args.iter().map(String::as_str).collect();
            if flag {
                argv.push("--content-md5");
            }
            let out = agent(p, &argv, &ENV).ok();
            let put = out
                .stdout
                .lines()
                .find(|l| l.contains("partNumber="))
                .unwrap_or_else(|| panic!("{argv:?}: {}", out.stdout));
            let md5_first = put.contains("; Content-MD5, x-amz-checksum-sha256;");
            let md5_later = put.contains("signed x-amz-content-sha256 (Content-MD5 too from");
            assert!(md5_first == flag && md5_later != flag, "{argv:?}: {put}");
            seen += 1;
        }
    }
    assert_eq!(seen, 8);
    assert_eq!(f.with(|s| s.requests.len()), 0);
}
