//! The HTTP plumbing every remote client of the agent shares (`kms/`, [`crate::s3`], [`crate::import`]):
//! bounded retries with back-off, jitter and `Retry-After` (`with_retries`, [`RetryPolicy`]), IAM
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
    /// The `x-amz-bucket-region` header (S3's answer to a request sent to the wrong region).
    pub(crate) bucket_region: Option<String>,
}

/// True for an answer worth sending the request again: 429 and 5xx but 501, AWS KMS's HTTP 400
/// `ThrottlingException`; SoftLayer answers every error with a 500, so there only its rate limit.
fn retryable(service: Service, status: u16, body: &str) -> bool {
    match service {
        Service::SoftLayer => status == 429 || body.contains("RateLimit"),
        _ => {
            status == 429
                || (status >= 500 && status != 501)
                || (status == 400 && body.contains("ThrottlingException"))
        }
    }
}

/// A `Retry-After` value: delay seconds or an HTTP date (RFC 9110 §10.2.3), as a wait from now.
pub(crate) fn retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(s) = v.parse::<u64>() {
        return Some(Duration::from_secs(s));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// Sends with retries per `policy`; `send` makes one attempt. Retries connection errors, timeouts and
/// the answers [`retryable`] names, waiting `Retry-After` (seconds or an HTTP date) when given, else
/// exponential back-off with jitter, never longer than `policy.max_wait` at a time.
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
                let bucket_region = header("x-amz-bucket-region");
                let body = resp.body_mut().read_to_string().unwrap_or_default();
                if retryable(service, status, &body) && !last {
                    let wait = retry_after
                        .as_deref()
                        .and_then(self::retry_after)
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
                    bucket_region,
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
pub fn backoff(p: &RetryPolicy, attempt: u32) -> Duration {
    let d = p
        .base
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(p.max_wait);
    let mut r = [0u8; 4];
    let _ = getrandom::fill(&mut r);
    let frac = f64::from(u32::from_le_bytes(r)) / f64::from(u32::MAX);
    d.mul_f64(0.5 + frac / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_and_http_dates() {
        assert_eq!(retry_after(" 7 "), Some(Duration::from_secs(7)));
        let soon = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(20));
        let d = retry_after(&soon).unwrap();
        assert!((18..=20).contains(&d.as_secs()), "{d:?}");
        assert_eq!(
            retry_after("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after("soon"), None);
    }

    #[test]
    fn softlayer_errors_are_retried_only_for_rate_limits() {
        let sl = r#"{"error":"Unable to unwrap","code":"SoftLayer_Exception_Public"}"#;
        assert!(!retryable(Service::SoftLayer, 500, sl));
        assert!(retryable(
            Service::SoftLayer,
            500,
            r#"{"code":"SoftLayer_Exception_WebService_RateLimitExceeded"}"#
        ));
        assert!(retryable(Service::Vpc, 503, ""));
        assert!(!retryable(Service::S3, 501, ""));
    }
}
