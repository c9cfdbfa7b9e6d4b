//! The agent's IAM, Key Protect / HPCS and AWS KMS response parsers.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "../../agent/src/wire.rs"]
#[allow(dead_code)]
mod wire;

fuzz_target!(|data: &[u8]| {
    let body = String::from_utf8_lossy(data);
    if let Ok(t) = wire::iam_token(&body) {
        // Debug never shows the token.
        if t.access_token.len() > 8 {
            assert!(!format!("{t:?}").contains(t.access_token.as_str()));
        }
    }
    let _ = wire::iam_error(&body);
    let _ = wire::kp_key_action(&body);
    let _ = wire::kp_error(&body);
    let _ = wire::aws_kms_reply(&body);
    let _ = wire::aws_kms_error(&body);
});
