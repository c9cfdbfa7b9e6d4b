//! The agent's IAM, Key Protect / HPCS and AWS KMS response parsers.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "../../agent/src/wire.rs"]
#[allow(dead_code)]
mod wire;

fuzz_target!(|data: &[u8]| {
    let body = String::from_utf8_lossy(data);
    if let Ok(t) = wire::iam_token(&body) {
        // Debug never shows the token: it is exactly the redacted form, whatever the token (a check
        // that the token is not a substring failed on the token "access_token", the field's name).
        let redacted = format!(
            "IamToken {{ access_token: \"<redacted>\", expires_in: {}, expiration: {:?} }}",
            t.expires_in, t.expiration
        );
        assert_eq!(format!("{t:?}"), redacted);
    }
    let _ = wire::kp_key_action(&body).map(|k| format!("{k:?}"));
    let _ = wire::aws_kms_reply(&body).map(|r| format!("{r:?}"));
    let _ = wire::iam_error(&body);
    let _ = wire::kp_key_action(&body);
    let _ = wire::kp_error(&body);
    let _ = wire::aws_kms_reply(&body);
    let _ = wire::aws_kms_error(&body);
});
