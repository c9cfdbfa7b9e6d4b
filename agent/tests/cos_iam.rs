//! `upload cos://…` with IBM IAM bearer tokens: a COS stand-in on 127.0.0.1 that accepts only bearer
//! tokens the fake IAM ([`crate::fake_ibm`]) issued and still holds valid, and forwards the S3 request
//! to a moto without IAM checks (bearer requests carry no SigV4 to check). Tokens are revoked or made
//! short-lived mid-upload while 4 workers send parts in parallel.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::fake_ibm::{API_KEY, FakeIbm, State};
use crate::upload::{Act, S3, hook_proxy, remote_sha256};
use crate::util::{agent, free_port, installed, pattern, start_server};

/// moto without IAM checks (anything is accepted) and 1 KiB minimum parts, with a bucket `bkt`.
fn open_moto() -> Option<S3> {
    if !installed("moto_server") {
        return None;
    }
    let port = free_port();
    let mut cmd = Command::new("moto_server");
    cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .env("S3_UPLOAD_PART_MIN_SIZE", "1024");
    let server = start_server(cmd, port, "moto_server");
    let url = format!("http://127.0.0.1:{port}");
    let r = ureq::put(&format!("{url}/bkt")).send_empty().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    Some(S3 {
        _server: server,
        url,
        ak: "any".into(),
        sk: "any".into(),
        data: None,
        name: "moto (no auth)",
    })
}

/// The COS stand-in: 403 AccessDenied (what IBM COS answers an expired token) unless the bearer
/// token is valid at the fake IAM; `before` runs first on every part upload with its 1-based count.
fn cos(
    s3: &S3,
    fake: &FakeIbm,
    before: impl Fn(u32, &mut State) + Send + Sync + 'static,
    refused: Arc<AtomicU32>,
) -> String {
    let state = fake.state.clone();
    let parts = AtomicU32::new(0);
    hook_proxy(
        &s3.url,
        move |r| {
            if r.part().is_some() {
                before(
                    parts.fetch_add(1, Ordering::SeqCst) + 1,
                    &mut state.lock().unwrap(),
                );
            }
            let token = r
                .header("authorization")
                .and_then(|a| a.strip_prefix("Bearer "))
                .unwrap_or("");
            if !state.lock().unwrap().token_valid(token) {
                refused.fetch_add(1, Ordering::SeqCst);
                return Act::Respond(403, "<Error><Code>AccessDenied</Code><Message>Access Denied</Message><Resource>/bkt</Resource></Error>".into());
            }
            if r.header("x-amz-date").is_some() {
                return Act::Respond(400, "<Error><Code>InvalidArgument</Code><Message>a SigV4 header was sent with a bearer token</Message></Error>".into());
            }
            r.remove_header("authorization");
            Act::Forward
        },
        |_, _| {},
    )
}

fn run(
    dir: &std::path::Path,
    purl: &str,
    fake: &FakeIbm,
    key: &str,
    jobs: &str,
) -> crate::util::Ran {
    let home = dir.display().to_string();
    agent(
        dir,
        &[
            "--json",
            "upload",
            "disk.img",
            &format!("cos://us-south/bkt/{key}"),
            "--s3-endpoint",
            purl,
            "--iam-endpoint",
            &fake.url,
            "--jobs",
            jobs,
            "--part-size",
            "1M",
        ],
        &[
            ("IBMCLOUD_API_KEY", API_KEY),
            ("HOME", home.as_str()),
            ("AWS_ACCESS_KEY_ID", ""),
            ("AWS_SECRET_ACCESS_KEY", ""),
        ],
    )
}

#[test]
fn cos_upload_with_iam_tokens_survives_a_revocation_mid_upload_with_one_shared_refresh() {
    let Some(s3) = open_moto() else { return };
    let fake = FakeIbm::start();
    let refused = Arc::new(AtomicU32::new(0));
    // Revoke every token when the 20th part upload arrives: the workers' parts in flight are refused.
    let purl = cos(
        &s3,
        &fake,
        |n, s| {
            if n == 20 {
                s.revoke_tokens();
            }
        },
        refused.clone(),
    );
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let data = pattern(48 << 20, 5);
    std::fs::write(p.join("disk.img"), &data).unwrap();
    let sha = diskseal::bundle::hex(&Sha256::digest(&data));
    let out = run(p, &purl, &fake, "iam.img", "4").ok();
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["sha256"], sha.as_str());
    assert_eq!(v["parts"], 48);
    assert_eq!(remote_sha256(&s3, "iam.img"), sha);
    assert!(refused.load(Ordering::SeqCst) >= 1, "nothing was refused");
    // One token at the start, one refresh after the revocation, shared by the 4 workers.
    assert_eq!(fake.with(|s| s.iam_calls), 2);
    let log = std::fs::read_to_string(p.join("home/audit.jsonl")).unwrap();
    assert!(log.contains("\"auth\":\"iam\""), "{log}");
    for text in [&log, &out.stdout, &out.stderr] {
        assert!(!text.contains(API_KEY) && !text.contains("eyJ"), "{text}");
    }
}

#[test]
fn cos_upload_with_short_lived_iam_tokens_refreshes_them_before_and_after_expiry() {
    let Some(s3) = open_moto() else { return };
    let fake = FakeIbm::start();
    fake.with(|s| s.token_ttl_secs = 1);
    let refused = Arc::new(AtomicU32::new(0));
    // Slow parts: the upload takes several token lifetimes.
    let purl = cos(
        &s3,
        &fake,
        |_, _| std::thread::sleep(Duration::from_millis(150)),
        refused,
    );
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let data = pattern(24 << 20, 6);
    std::fs::write(p.join("disk.img"), &data).unwrap();
    let sha = diskseal::bundle::hex(&Sha256::digest(&data));
    let out = run(p, &purl, &fake, "short.img", "2").ok();
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["sha256"], sha.as_str());
    assert_eq!(remote_sha256(&s3, "short.img"), sha);
    let calls = fake.with(|s| s.iam_calls);
    assert!(
        calls >= 3,
        "only {calls} IAM token requests in a ~2 s upload of 1 s tokens"
    );
}

#[test]
fn cos_upload_without_hmac_keys_or_api_key_says_what_to_set() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    std::fs::write(p.join("disk.img"), b"x").unwrap();
    let home = p.display().to_string();
    let out = agent(
        p,
        &[
            "upload",
            "disk.img",
            "cos://us-south/bkt/x.img",
            "--s3-endpoint",
            "http://127.0.0.1:9",
        ],
        &[
            ("HOME", home.as_str()),
            ("AWS_ACCESS_KEY_ID", ""),
            ("AWS_SECRET_ACCESS_KEY", ""),
        ],
    );
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("AWS_ACCESS_KEY_ID") && out.stderr.contains("IBMCLOUD_API_KEY"),
        "{}",
        out.stderr
    );
    // A wrong API key: IAM's refusal reaches the user, and nothing is uploaded.
    let fake = FakeIbm::start();
    let out = agent(
        p,
        &[
            "upload",
            "disk.img",
            "s3://bkt/x.img",
            "--auth",
            "iam",
            "--s3-endpoint",
            "http://127.0.0.1:9",
            "--iam-endpoint",
            &fake.url,
        ],
        &[("IBMCLOUD_API_KEY", "not-the-key"), ("HOME", home.as_str())],
    );
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("API key was refused") && !out.stderr.contains("not-the-key"),
        "{}",
        out.stderr
    );
}

/// With IAM tokens nothing is signed, so each part's MD5 is computed, sent as Content-MD5 and checked
/// against the ETag: a part whose first answer carries a wrong ETag is sent again; one that always
/// does stops the upload, naming the part and both values. (With HMAC keys the server checks the
/// signed payload hash instead: `upload::a_part_damaged_on_the_way_gets_bad_digest_and_is_sent_again`.)
#[test]
fn with_iam_tokens_a_part_etag_that_is_not_its_md5_is_sent_again_and_a_persistent_one_fails() {
    let Some(s3) = open_moto() else { return };
    let fake = FakeIbm::start();
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let data = pattern(6 << 20, 9);
    std::fs::write(p.join("disk.img"), &data).unwrap();
    let cos_url = cos(&s3, &fake, |_, _| {}, Arc::default());
    let wrong = "\"0123456789abcdef0123456789abcdef\"";
    let sends = Arc::new(AtomicU32::new(0));
    let s2 = sends.clone();
    let purl = hook_proxy(
        &cos_url,
        |_| Act::Forward,
        move |r, resp| {
            if r.part() == Some(3) && s2.fetch_add(1, Ordering::SeqCst) == 0 {
                resp.set_header("ETag", wrong);
            }
        },
    );
    let out = run(p, &purl, &fake, "etag.img", "2").ok();
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(sends.load(Ordering::SeqCst), 2, "{v}");
    assert!(v["notes"].to_string().contains("sent again"), "{v}");
    assert_eq!(
        remote_sha256(&s3, "etag.img"),
        diskseal::bundle::hex(&Sha256::digest(&data))
    );
    let purl = hook_proxy(
        &cos_url,
        |_| Act::Forward,
        move |r, resp| {
            if r.part() == Some(2) {
                resp.set_header("ETag", wrong);
            }
        },
    );
    let out = run(p, &purl, &fake, "etag2.img", "2");
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("part 2 did not arrive intact in 3 attempts")
            && out
                .stderr
                .contains("ETag 0123456789abcdef0123456789abcdef is not the part's MD5"),
        "{}",
        out.stderr
    );
}
