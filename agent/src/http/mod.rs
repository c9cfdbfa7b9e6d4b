//! The HTTP plumbing every remote client of the agent shares (`kms/`, [`crate::s3`], [`crate::import`]):
//! bounded retries with back-off, jitter and `Retry-After` ([`with_retries`], [`RetryPolicy`]), IAM
//! bearer tokens ([`iam`]), SigV4 ([`sigv4`]) and the one error type, [`RemoteError`].

mod error;
pub mod iam;
pub mod sigv4;

use std::time::Duration;

pub use error::{RemoteError, RemoteErrorKind, Service, service};

/// Retry policy for KMS and IAM requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts, the first included.
    pub max_attempts: u32,
    /// First back-off step (doubled each time, with jitter).
    pub base: Duration,
    /// Cap on any single wait, `Retry-After` included.
    pub max_wait: Duration,
    /// Per-request timeout.
    pub timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 4,
            base: Duration::from_millis(500),
            max_wait: Duration::from_secs(30),
            timeout: Duration::from_secs(30),
        }
    }
}

/// A response: status, body and correlation id header.
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) body: String,
    pub(crate) correlation_id: Option<String>,
    /// The `ETag` header (S3).
    pub(crate) etag: Option<String>,
    /// The `Content-Length` header (S3 HEAD).
    pub(crate) content_length: Option<u64>,
    /// The `x-amz-checksum-sha256` header (S3 UploadPart echoes the checksum it verified).
    pub(crate) checksum_sha256: Option<String>,
}

/// Sends with retries per `policy`; `send` makes one attempt. Retries connection errors, timeouts,
/// 429, 5xx except 501 and AWS's 400 `ThrottlingException`, waiting `Retry-After` seconds when given, else exponential back-off with
/// jitter, never longer than `policy.max_wait` at a time.
pub(crate) fn with_retries(
    service: Service,
    policy: &RetryPolicy,
    label: &str,
    mut send: impl FnMut() -> Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<Reply, RemoteError> {
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let last = attempt >= policy.max_attempts;
        match send() {
            Ok(mut resp) => {
                let status = resp.status().as_u16();
                let header = |name: &str| {
                    resp.headers()
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned)
                };
                let retry_after = header("retry-after");
                let correlation_id = header("correlation-id")
                    .or_else(|| header("transaction-id"))
                    .or_else(|| header("x-amzn-requestid"))
                    .or_else(|| header("x-amz-request-id"));
                let etag = header("etag");
                let content_length = header("content-length").and_then(|v| v.trim().parse().ok());
                let checksum_sha256 = header("x-amz-checksum-sha256");
                let body = resp.body_mut().read_to_string().unwrap_or_default();
                // AWS KMS throttles with HTTP 400 and `ThrottlingException` in the body.
                let throttled = status == 400 && body.contains("ThrottlingException");
                let retryable = status == 429 || (status >= 500 && status != 501) || throttled;
                if retryable && !last {
                    let wait = retry_after
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(Duration::from_secs)
                        .unwrap_or_else(|| backoff(policy, attempt));
                    std::thread::sleep(wait.min(policy.max_wait));
                    continue;
                }
                return Ok(Reply {
                    status,
                    body,
                    correlation_id,
                    etag,
                    content_length,
                    checksum_sha256,
                });
            }
            Err(e) => {
                let transient = matches!(
                    e,
                    ureq::Error::Io(_)
                        | ureq::Error::ConnectionFailed
                        | ureq::Error::Timeout(_)
                        | ureq::Error::HostNotFound
                );
                if transient && !last {
                    std::thread::sleep(backoff(policy, attempt).min(policy.max_wait));
                    continue;
                }
                return Err(RemoteError {
                    kind: RemoteErrorKind::Unreachable,
                    service,
                    endpoint: label.to_owned(),
                    status: None,
                    code: None,
                    message: e.to_string(),
                    correlation_id: None,
                    attempts: attempt,
                });
            }
        }
    }
}

/// Exponential back-off with jitter: a random wait in [d/2, d] for d = base * 2^(attempt-1).
fn backoff(p: &RetryPolicy, attempt: u32) -> Duration {
    let d = p
        .base
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(p.max_wait);
    let mut r = [0u8; 4];
    let _ = getrandom::fill(&mut r);
    let frac = f64::from(u32::from_le_bytes(r)) / f64::from(u32::MAX);
    d.mul_f64(0.5 + frac / 2.0)
}
