//! IBM Cloud IAM bearer tokens from an API key (`ibm-cloud.md` §3), shared by every IBM client of the
//! agent (Key Protect / HPCS, IBM COS uploads):
//!
//! - `POST {iam}/identity/token` with the API-key grant and `response_type=cloud_iam` (as the official
//!   SDKs' IAM authenticator sends it); the answer's `expires_in` and `expiration`
//!   give the token's life;
//! - a cached token is reused until 80 % of its life has passed (as IBM's SDKs do), then fetched anew;
//! - [`IamTokens::refresh`] takes the generation of the token a server refused: the first caller with
//!   that generation fetches a new token, every other caller (parallel upload workers) waits on the
//!   lock and gets that same new token, so one refusal costs one IAM request, not one per worker.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::{RemoteError, RemoteErrorKind, RetryPolicy, service, with_retries};
use crate::secret::SecretString;

#[derive(Debug)]
struct Token {
    value: SecretString,
    refresh_at: Instant,
    generation: u64,
}

/// A token source for one API key; cheap to share between threads (`&IamTokens` or in an `Arc`).
#[derive(Debug)]
pub struct IamTokens {
    endpoint: String,
    api_key: SecretString,
    retry: RetryPolicy,
    agent: ureq::Agent,
    slot: Mutex<(Option<Token>, u64)>,
}

/// A bearer token and the generation to pass to [`IamTokens::refresh`] when a server refuses it.
#[derive(Debug, Clone)]
pub struct Bearer {
    /// The access token (redacted in `Debug`).
    pub token: SecretString,
    /// Which fetch produced it.
    pub generation: u64,
}

impl IamTokens {
    /// A token source; nothing is sent until the first [`IamTokens::token`].
    pub fn new(iam_endpoint: &str, api_key: SecretString, retry: RetryPolicy) -> IamTokens {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(retry.timeout))
            .user_agent(concat!("diskseal-agent/", env!("CARGO_PKG_VERSION")))
            .build();
        IamTokens {
            endpoint: iam_endpoint.trim_end_matches('/').to_owned(),
            api_key,
            retry,
            agent: ureq::Agent::new_with_config(config),
            slot: Mutex::new((None, 0)),
        }
    }

    /// The label used in errors: `IAM at URL`.
    pub fn label(&self) -> String {
        format!("IAM at {}", self.endpoint)
    }

    /// A valid token: the cached one, or a new one when none is cached or it is due for refresh.
    pub fn token(&self) -> Result<Bearer, RemoteError> {
        self.get(None)
    }

    /// A token other than generation `refused` (which a server turned down): fetched now unless
    /// another thread already replaced it.
    pub fn refresh(&self, refused: u64) -> Result<Bearer, RemoteError> {
        self.get(Some(refused))
    }

    fn get(&self, refused: Option<u64>) -> Result<Bearer, RemoteError> {
        let mut slot = self.slot.lock().map_err(|_| {
            RemoteError::bad_response(service::IAM, &self.label(), "token cache poisoned")
        })?;
        if let Some(t) = slot.0.as_ref()
            && refused != Some(t.generation)
            && Instant::now() < t.refresh_at
        {
            return Ok(Bearer {
                token: t.value.clone(),
                generation: t.generation,
            });
        }
        let (value, refresh_at) = self.fetch()?;
        slot.1 += 1;
        let generation = slot.1;
        slot.0 = Some(Token {
            value: value.clone(),
            refresh_at,
            generation,
        });
        Ok(Bearer {
            token: value,
            generation,
        })
    }

    /// One token request (with the shared retries); returns the token and when to refresh it.
    fn fetch(&self) -> Result<(SecretString, Instant), RemoteError> {
        let url = format!("{}/identity/token", self.endpoint);
        let label = self.label();
        let reply = with_retries(service::IAM, &self.retry, &label, || {
            self.agent
                .post(&url)
                .header("accept", "application/json")
                .send_form([
                    ("grant_type", "urn:ibm:params:oauth:grant-type:apikey"),
                    ("apikey", self.api_key.expose()),
                    ("response_type", "cloud_iam"),
                ])
        })?;
        if reply.status != 200 {
            let e = crate::wire::iam_error(&reply.body);
            let message = e.message.unwrap_or_else(|| {
                let t: String = reply.body.chars().take(200).collect();
                format!("unrecognised error body: {}", t.trim())
            });
            return Err(RemoteError {
                kind: RemoteErrorKind::Http,
                service: service::IAM,
                endpoint: label,
                status: Some(reply.status),
                code: e.reason,
                message: format!("the API key was refused: {message}"),
                correlation_id: e.request_id.or(reply.correlation_id),
                attempts: 1,
            });
        }
        let t = crate::wire::iam_token(&reply.body)
            .map_err(|e| RemoteError::bad_response(service::IAM, &label, &e))?;
        let refresh_at = Instant::now() + refresh_in(Some(t.expires_in), t.expiration);
        Ok((SecretString::new(t.access_token.to_string()), refresh_at))
    }
}

/// How long a fresh token may be used: until `expiration - 0.2 × expires_in` (IBM's SDKs), measured
/// from now; `expires_in` alone gives 80 % of it; neither gives 48 minutes (80 % of IAM's hour).
/// A token with less than a fifth of its life left is refreshed at the next use.
fn refresh_in(expires_in: Option<u64>, expiration: Option<u64>) -> Duration {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    let ttl_ms = u128::from(expires_in.unwrap_or(3600)) * 1000;
    // An `expiration` already past says the local clock is ahead of IAM's: trust `expires_in` then,
    // rather than fetching a token for every request.
    let left_ms = match expiration.map(|e| u128::from(e) * 1000) {
        Some(exp) if exp > now => (exp - now).min(ttl_ms),
        _ => ttl_ms,
    };
    let ms = left_ms.saturating_sub(ttl_ms / 5);
    Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_no_key_or_token() {
        let t = IamTokens::new(
            "http://127.0.0.1:9/",
            SecretString::new("api-key-secret".into()),
            RetryPolicy::default(),
        );
        *t.slot.lock().unwrap_or_else(|e| e.into_inner()) = (
            Some(Token {
                value: SecretString::new("bearer-secret".into()),
                refresh_at: Instant::now(),
                generation: 1,
            }),
            1,
        );
        let shown = format!("{t:?}");
        assert!(
            !shown.contains("api-key-secret") && !shown.contains("bearer-secret"),
            "{shown}"
        );
        assert_eq!(t.label(), "IAM at http://127.0.0.1:9");
    }

    #[test]
    fn refresh_comes_at_80_percent_of_the_life() {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let d = refresh_in(Some(3600), Some(now + 3600));
        assert!(
            (2870..=2880).contains(&d.as_secs()),
            "{d:?} is not about 48 minutes"
        );
        // A clock behind IAM's: `expiration` is nearer than `expires_in` says; it wins.
        let d = refresh_in(Some(3600), Some(now + 1800));
        assert!((1070..=1080).contains(&d.as_secs()), "{d:?}");
        assert_eq!(refresh_in(Some(10), None), Duration::from_secs(8));
        assert_eq!(refresh_in(Some(10), Some(now + 1)), Duration::ZERO);
        // A local clock ahead of IAM's.
        assert_eq!(
            refresh_in(Some(10), Some(now - 100)),
            Duration::from_secs(8)
        );
    }
}
