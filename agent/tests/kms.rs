//! The IBM Key Protect backend against the in-process fake: the conformance suite, token refresh,
//! retries, and every documented failure turned into a clear error.

use std::time::{Duration, Instant};

use diskseal_agent::http::RetryPolicy;
use diskseal_agent::kms::keyprotect::KeyProtect;
use diskseal_agent::kms::keyprotect::{KmsSettings, Service};
use diskseal_agent::kms::{KeyWrapper, RemoteErrorKind, conformance};
use diskseal_agent::secret::{SecretBytes, SecretString};
use zeroize::Zeroizing;

use crate::fake_ibm::{API_KEY, FakeIbm, Fault, INSTANCE, ROOT_KEY, kp_error};

pub fn settings(fake: &FakeIbm) -> KmsSettings {
    KmsSettings {
        service: Service::KeyProtect,
        region: Some("us-south".into()),
        endpoint: fake.url.clone(),
        iam_endpoint: fake.url.clone(),
        instance_id: INSTANCE.into(),
        key_id: ROOT_KEY.into(),
        key_ring: None,
        api_key: SecretString::new(API_KEY.into()),
        retry: RetryPolicy {
            max_attempts: 3,
            base: Duration::from_millis(20),
            max_wait: Duration::from_secs(5),
            timeout: Duration::from_secs(5),
        },
    }
}

fn secret(b: &[u8]) -> SecretBytes {
    SecretBytes::new(Zeroizing::new(b.to_vec()))
}

#[test]
fn key_protect_passes_the_conformance_suite() {
    let fake = FakeIbm::start();
    let kp = KeyProtect::new(settings(&fake));
    conformance(&kp);
    // One token served the whole suite.
    assert_eq!(fake.with(|s| s.iam_calls), 1);
}

#[test]
fn wrap_unwrap_round_trip_with_key_ring_and_no_aad() {
    let fake = FakeIbm::start();
    let mut s = settings(&fake);
    s.key_ring = Some("ring-7".into());
    let kp = KeyProtect::new(s);
    let w = kp.wrap(&secret(b"abc123")).unwrap();
    assert_eq!(w.key_version.as_deref(), Some("kv-1"));
    assert_eq!(w.correlation_id.as_ref().map(String::len), Some(36));
    assert_eq!(
        fake.with(|s| s.last_key_ring.clone()).as_deref(),
        Some("ring-7")
    );
    // The VPC example: plaintext is base64("abc123") = YWJjMTIz, no newline, no aad.
    assert!(fake.with(|s| s.bodies.iter().any(|b| b == r#"{"plaintext":"YWJjMTIz"}"#)));
    assert_eq!(
        kp.unwrap(&w.ciphertext).unwrap().plaintext.expose(),
        b"abc123"
    );
    let r = kp.rewrap(&w.ciphertext).unwrap();
    assert_eq!(r.key_version.as_deref(), Some("kv-2"));
}

#[test]
fn expired_token_is_refreshed_before_expiry_and_on_401() {
    let fake = FakeIbm::start();
    fake.with(|s| s.token_ttl_secs = 1);
    let kp = KeyProtect::new(settings(&fake));
    kp.wrap(&secret(b"k1")).unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    kp.wrap(&secret(b"k2")).unwrap();
    assert_eq!(
        fake.with(|s| s.iam_calls),
        2,
        "the token was not refreshed before expiry"
    );
    // Server-side revocation: the 401 makes the agent fetch a new token once and retry.
    fake.with(|s| s.token_ttl_secs = 3600);
    kp.wrap(&secret(b"k3")).unwrap();
    let before = fake.with(|s| (s.iam_calls, s.kp_calls));
    fake.revoke_tokens();
    kp.wrap(&secret(b"k4")).unwrap();
    let after = fake.with(|s| (s.iam_calls, s.kp_calls));
    assert_eq!(
        (after.0 - before.0, after.1 - before.1),
        (1, 2),
        "expected one refresh and one retried wrap"
    );
}

#[test]
fn persistent_401_is_not_retried_forever() {
    let fake = FakeIbm::start();
    let kp = KeyProtect::new(settings(&fake));
    let body = kp_error(
        401,
        "UNAUTHORIZED_ERR",
        "Unauthorized: The user does not have access to the specified resource",
    );
    fake.with(|s| {
        s.kp_faults.push_back(Fault::Body(401, body.clone()));
        s.kp_faults.push_back(Fault::Body(401, body));
    });
    let e = kp.wrap(&secret(b"k")).unwrap_err();
    assert_eq!(e.status, Some(401));
    assert!(e.to_string().contains("UNAUTHORIZED_ERR"), "{e}");
    assert_eq!(fake.with(|s| (s.iam_calls, s.kp_calls)), (2, 2));
}

#[test]
fn retry_after_on_429_is_honoured() {
    let fake = FakeIbm::start();
    let kp = KeyProtect::new(settings(&fake));
    fake.with(|s| s.kp_faults.push_back(Fault::Status(429, Some(1))));
    let t = Instant::now();
    kp.wrap(&secret(b"k")).unwrap();
    let log = fake.with(|s| s.kp_log.clone());
    assert_eq!(log.iter().map(|l| l.1).collect::<Vec<_>>(), vec![429, 200]);
    let gap = log[1].2 - log[0].2;
    assert!(
        gap >= Duration::from_millis(950),
        "waited only {gap:?} after Retry-After: 1"
    );
    assert!(t.elapsed() < Duration::from_secs(4));
}

#[test]
fn server_errors_are_retried_with_backoff_then_reported() {
    let fake = FakeIbm::start();
    let kp = KeyProtect::new(settings(&fake));
    fake.with(|s| {
        s.kp_faults.push_back(Fault::Status(500, None));
        s.kp_faults.push_back(Fault::Status(503, None));
    });
    kp.wrap(&secret(b"k")).unwrap();
    assert_eq!(fake.with(|s| s.kp_calls), 3);
    // Three failures exhaust max_attempts = 3: the last error is reported with its status.
    fake.with(|s| (0..3).for_each(|_| s.kp_faults.push_back(Fault::Status(502, None))));
    let e = kp.wrap(&secret(b"k")).unwrap_err();
    assert_eq!(e.status, Some(502));
    assert_eq!(fake.with(|s| s.kp_calls), 6);
    // 501 is not retried.
    fake.with(|s| s.kp_faults.push_back(Fault::Status(501, None)));
    assert_eq!(kp.wrap(&secret(b"k")).unwrap_err().status, Some(501));
    assert_eq!(fake.with(|s| s.kp_calls), 7);
}

#[test]
fn documented_error_body_reaches_the_user() {
    let fake = FakeIbm::start();
    let kp = KeyProtect::new(settings(&fake));
    let body = kp_error(
        400,
        "KEY_ROOT_REQ_ERR",
        "Requested action can only be completed with a root key",
    );
    fake.with(|s| s.kp_faults.push_back(Fault::Body(400, body)));
    let e = kp.wrap(&secret(b"k")).unwrap_err();
    let text = e.to_string();
    assert_eq!(e.kind, RemoteErrorKind::Http);
    for needle in [
        "HTTP 400",
        "KEY_ROOT_REQ_ERR",
        "Requested action can only be completed with a root key",
        "correlation id",
        &fake.url,
    ] {
        assert!(text.contains(needle), "{needle:?} missing from {text}");
    }
    assert_eq!(e.correlation_id.as_ref().map(String::len), Some(36));
    // Garbage ciphertext: 422 UNPROCESSABLE_CIPHERTEXT_ERR.
    let e = kp.unwrap("bm9wZQ==").unwrap_err();
    assert!(
        e.to_string().contains("UNPROCESSABLE_CIPHERTEXT_ERR"),
        "{e}"
    );
}

#[test]
fn wrong_api_key_is_a_clear_iam_error() {
    let fake = FakeIbm::start();
    let mut s = settings(&fake);
    s.api_key = SecretString::new("not-the-key".into());
    let kp = KeyProtect::new(s);
    let e = kp.wrap(&secret(b"k")).unwrap_err();
    let text = e.to_string();
    assert!(text.starts_with("IAM at http://127.0.0.1:"), "{text}");
    assert!(
        text.contains("BXNIM0415E")
            && text.contains("Provided API key could not be found")
            && text.contains("req-iam-42"),
        "{text}"
    );
    assert!(!text.contains("not-the-key"), "the API key leaked: {text}");
    assert!(!format!("{kp:?}").contains("not-the-key"));
    assert_eq!(fake.with(|s| (s.iam_calls, s.kp_calls)), (1, 0));
}

#[test]
fn unknown_key_id_gives_the_404_body() {
    let fake = FakeIbm::start();
    let mut s = settings(&fake);
    s.key_id = "no-such-key".into();
    let e = KeyProtect::new(s).wrap(&secret(b"k")).unwrap_err();
    assert_eq!(e.status, Some(404));
    assert!(
        e.to_string().contains("KEY_NOT_FOUND_ERR")
            && e.to_string().contains("Key could not be found"),
        "{e}"
    );
}

#[test]
fn unreachable_kms_names_the_endpoint_after_bounded_retries() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let fake = FakeIbm::start();
    let mut s = settings(&fake);
    s.endpoint = format!("http://127.0.0.1:{port}");
    let t = Instant::now();
    let e = KeyProtect::new(s).wrap(&secret(b"k")).unwrap_err();
    assert_eq!(e.kind, RemoteErrorKind::Unreachable);
    assert_eq!(e.attempts, 3);
    let text = e.to_string();
    assert!(
        text.contains(&format!(
            "cannot reach Key Protect at http://127.0.0.1:{port} after 3 attempt(s)"
        )),
        "{text}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "retries not bounded: {:?}",
        t.elapsed()
    );
}

#[test]
fn slow_kms_times_out_and_is_retried() {
    let fake = FakeIbm::start();
    let mut s = settings(&fake);
    s.retry.timeout = Duration::from_millis(500);
    fake.with(|st| {
        st.kp_faults
            .push_back(Fault::Delay(Duration::from_millis(900)))
    });
    let kp = KeyProtect::new(s);
    kp.wrap(&secret(b"k")).unwrap();
    assert_eq!(fake.with(|s| s.kp_calls), 2);
}

#[test]
fn hpcs_speaks_the_same_key_api() {
    let fake = FakeIbm::start();
    let mut s = settings(&fake);
    s.service = Service::Hpcs;
    let kp = KeyProtect::new(s);
    assert!(
        kp.target()
            .starts_with("crn:v1:bluemix:public:hs-crypto:us-south:"),
        "{}",
        kp.target()
    );
    let w = kp.wrap(&secret(b"hpcs")).unwrap();
    assert_eq!(
        kp.unwrap(&w.ciphertext).unwrap().plaintext.expose(),
        b"hpcs"
    );
    let e = kp.unwrap("bm9wZQ==").unwrap_err();
    assert!(
        e.to_string()
            .starts_with("Hyper Protect Crypto Services at http://127.0.0.1:"),
        "{e}"
    );
}

#[test]
fn aws_style_throttling_400_is_retried_by_the_shared_loop() {
    let fake = FakeIbm::start();
    let kp = KeyProtect::new(settings(&fake));
    let body = r#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#.to_owned();
    fake.with(|s| s.kp_faults.push_back(Fault::Body(400, body)));
    kp.wrap(&secret(b"k")).unwrap();
    assert_eq!(fake.with(|s| s.kp_calls), 2);
}
