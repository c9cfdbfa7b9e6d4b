//! IBM Key Protect and Hyper Protect Crypto Services (one key API) over REST (`ibm-cloud.md` §2, §3):
//!
//! - `POST {kms}/api/v2/keys/{id}/actions/wrap|unwrap|rewrap` with `authorization: Bearer`,
//!   `bluemix-instance`, `correlation-id`, optional `x-kms-key-ring`, content type and accept
//!   `application/vnd.ibm.kms.key_action_<action>+json` and accept `application/json` (as the official
//!   client sends them); body `{"plaintext": base64}` or `{"ciphertext": WDEK}`;
//!   an empty body to `wrap` makes the service generate a 32-byte key;
//! - IAM bearer tokens from [`crate::http::iam::IamTokens`] (API-key grant), refreshed after 80 % of their
//!   lifetime and once more when the KMS answers 401;
//! - retries with exponential back-off and jitter on connection errors, 429 and 5xx (not 501),
//!   honouring `Retry-After` up to [`RetryPolicy::max_wait`](crate::http::RetryPolicy::max_wait);
//! - the documented error body (`resources[0].reasons[0].{code,message}`, IAM's `errorCode`/`errorMessage`)
//!   becomes a [`RemoteError`] with the reason code, message and correlation id.

use serde_json::json;
use zeroize::Zeroizing;

use super::{Generated, KeyWrapper, Unwrapped, Wrapped, b64, uuid4};
use crate::http::Reply;
use crate::http::iam::IamTokens;
use crate::http::{RemoteError, RemoteErrorKind, RetryPolicy, service};
use crate::secret::SecretBytes;
use crate::secret::SecretString;
use crate::wire;

/// Which IBM key service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// IBM Key Protect.
    KeyProtect,
    /// Hyper Protect Crypto Services (same key API).
    Hpcs,
}

/// Everything the IBM backend needs, resolved.
#[derive(Debug, Clone)]
pub struct KmsSettings {
    /// The service.
    pub service: Service,
    /// Region, when known (used in CRNs).
    pub region: Option<String>,
    /// KMS base URL (no trailing slash).
    pub endpoint: String,
    /// IAM base URL (no trailing slash).
    pub iam_endpoint: String,
    /// Instance GUID.
    pub instance_id: String,
    /// Root key id or alias.
    pub key_id: String,
    /// Optional key ring.
    pub key_ring: Option<String>,
    /// The API key (redacted in `Debug`).
    pub api_key: SecretString,
    /// Retries.
    pub retry: RetryPolicy,
}

impl KmsSettings {
    /// The root key's CRN (`crn:v1:bluemix:public:kms|hs-crypto:<region>:a/<account>:<instance>:key:<id>`);
    /// the account is not known locally, so it is left empty.
    pub fn key_crn(&self) -> String {
        let svc = match self.service {
            Service::KeyProtect => "kms",
            Service::Hpcs => "hs-crypto",
        };
        format!(
            "crn:v1:bluemix:public:{svc}:{}:a/:{}:key:{}",
            self.region.as_deref().unwrap_or(""),
            self.instance_id,
            self.key_id
        )
    }
}

/// The Key Protect / HPCS client.
#[derive(Debug)]
pub struct KeyProtect {
    s: KmsSettings,
    agent: ureq::Agent,
    iam: IamTokens,
}

impl KeyProtect {
    /// A client for `settings`; nothing is sent until the first call.
    pub fn new(settings: KmsSettings) -> KeyProtect {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(settings.retry.timeout))
            .user_agent(concat!("diskseal-agent/", env!("CARGO_PKG_VERSION")))
            .build();
        KeyProtect {
            iam: IamTokens::new(
                &settings.iam_endpoint,
                settings.api_key.clone(),
                settings.retry,
            ),
            s: settings,
            agent: ureq::Agent::new_with_config(config),
        }
    }

    fn service_name(&self) -> crate::http::Service {
        match self.s.service {
            Service::KeyProtect => service::KEY_PROTECT,
            Service::Hpcs => service::HPCS,
        }
    }

    fn with_retries(
        &self,
        label: &str,
        send: impl FnMut() -> Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<Reply, RemoteError> {
        crate::http::with_retries(self.service_name(), &self.s.retry, label, send)
    }

    fn kms_label(&self) -> String {
        format!("{} at {}", self.service_name(), self.s.endpoint)
    }

    /// The root key's CRN as the service has it (`GET /api/v2/keys/{id or alias}`, `resources[0].crn`):
    /// the account id and the key id, where the configured key may be an alias. A CRN without an
    /// account is refused: the import backplanes cannot find the key by it.
    pub fn key_crn(&self) -> Result<String, RemoteError> {
        let url = format!(
            "{}/api/v2/keys/{}",
            self.s.endpoint,
            path_segment(&self.s.key_id)
        );
        let body = self.call("GET", &url, None)?.0;
        let crn = wire::kp_key_crn(&body).ok_or_else(|| {
            RemoteError::bad_response(
                self.service_name(),
                &self.kms_label(),
                "no resources[0].crn in the key",
            )
        })?;
        let account = crn.split(':').nth(6).and_then(|a| a.strip_prefix("a/"));
        if account.is_none_or(str::is_empty) {
            return Err(RemoteError::bad_response(
                self.service_name(),
                &self.kms_label(),
                &format!("the key's CRN {crn} names no account"),
            ));
        }
        Ok(crn)
    }

    /// One key action; refreshes the token once on 401.
    fn action(
        &self,
        action: &str,
        body: &Zeroizing<String>,
    ) -> Result<(wire::KeyAction, Option<String>), RemoteError> {
        let url = format!(
            "{}/api/v2/keys/{}/actions/{action}",
            self.s.endpoint,
            path_segment(&self.s.key_id)
        );
        // The official client's content type names the action (key_action_wrap+json, ...).
        let ct = format!("application/vnd.ibm.kms.key_action_{action}+json");
        let (text, cid_out) = self.call("POST", &url, Some((&ct, body)))?;
        let v = wire::kp_key_action(&text).map_err(|e| {
            RemoteError::bad_response(
                self.service_name(),
                &self.kms_label(),
                &format!("{action} response is {e}"),
            )
        })?;
        Ok((v, cid_out))
    }

    /// One request with a bearer token, the instance and a correlation id; refreshes the token once
    /// on 401. Returns the body and the correlation id.
    fn call(
        &self,
        method: &str,
        url: &str,
        body: Option<(&str, &Zeroizing<String>)>,
    ) -> Result<(String, Option<String>), RemoteError> {
        let cid = uuid4();
        let mut refused = None;
        loop {
            let b = match refused {
                None => self.iam.token()?,
                Some(g) => self.iam.refresh(g)?,
            };
            let auth = Zeroizing::new(format!("Bearer {}", b.token.expose()));
            let headers = |r: ureq::RequestBuilder<_>| {
                let r = r
                    .header("accept", "application/json")
                    .header("authorization", auth.as_str())
                    .header("bluemix-instance", &self.s.instance_id)
                    .header("correlation-id", &cid);
                match &self.s.key_ring {
                    Some(ring) => r.header("x-kms-key-ring", ring),
                    None => r,
                }
            };
            let reply = self.with_retries(&self.kms_label(), || match (method, body) {
                ("GET", _) | (_, None) => {
                    let r = self.agent.get(url);
                    let r = r
                        .header("accept", "application/json")
                        .header("authorization", auth.as_str())
                        .header("bluemix-instance", &self.s.instance_id)
                        .header("correlation-id", &cid);
                    match &self.s.key_ring {
                        Some(ring) => r.header("x-kms-key-ring", ring).call(),
                        None => r.call(),
                    }
                }
                (_, Some((ct, b))) => headers(self.agent.post(url))
                    .header("content-type", ct)
                    .send(b.as_str()),
            })?;
            let cid_out = reply.correlation_id.clone().or_else(|| Some(cid.clone()));
            if reply.status == 401 && refused.is_none() {
                refused = Some(b.generation);
                continue;
            }
            if !(200..300).contains(&reply.status) {
                return Err(self.kp_error(reply.status, &reply.body, cid_out));
            }
            return Ok((reply.body, cid_out));
        }
    }

    /// The documented error body: `resources[0].errorMsg` and `resources[0].reasons[0].{code,message}`.
    fn kp_error(&self, status: u16, body: &str, correlation_id: Option<String>) -> RemoteError {
        let e = wire::kp_error(body);
        let message = e.message.unwrap_or_else(|| {
            if body.trim().is_empty() {
                "(empty body)".into()
            } else {
                snippet(body)
            }
        });
        RemoteError {
            kind: RemoteErrorKind::Http,
            service: self.service_name(),
            endpoint: self.kms_label(),
            status: Some(status),
            code: e.reason,
            message,
            correlation_id,
            attempts: 1,
        }
    }

    fn wrapped(
        &self,
        v: &wire::KeyAction,
        cid: Option<String>,
        action: &str,
    ) -> Result<Wrapped, RemoteError> {
        let ciphertext = v.ciphertext.clone().ok_or_else(|| {
            RemoteError::bad_response(
                self.service_name(),
                &self.kms_label(),
                &format!("no ciphertext in the {action} response"),
            )
        })?;
        Ok(Wrapped {
            ciphertext,
            key_version: v
                .rewrapped_key_version
                .clone()
                .or_else(|| v.key_version.clone()),
            correlation_id: cid,
        })
    }

    fn plaintext(&self, v: &wire::KeyAction) -> Result<SecretBytes, RemoteError> {
        match &v.plaintext {
            Some(Ok(b)) => Ok(SecretBytes::new(b.clone())),
            Some(Err(())) => Err(RemoteError::bad_response(
                self.service_name(),
                &self.kms_label(),
                "the plaintext in the response is not base64",
            )),
            None => Err(RemoteError::bad_response(
                self.service_name(),
                &self.kms_label(),
                "no plaintext in the response",
            )),
        }
    }
}

impl KeyWrapper for KeyProtect {
    fn target(&self) -> String {
        self.s.key_crn()
    }

    fn wrap(&self, plaintext: &SecretBytes) -> Result<Wrapped, RemoteError> {
        let body = Zeroizing::new(json!({ "plaintext": b64(plaintext.expose()) }).to_string());
        let (v, cid) = self.action("wrap", &body)?;
        self.wrapped(&v, cid, "wrap")
    }

    fn unwrap(&self, ciphertext: &str) -> Result<Unwrapped, RemoteError> {
        let body = Zeroizing::new(json!({ "ciphertext": ciphertext }).to_string());
        let (v, cid) = self.action("unwrap", &body)?;
        Ok(Unwrapped {
            plaintext: self.plaintext(&v)?,
            key_version: v.key_version.clone(),
            rewrapped: v.ciphertext.clone(),
            correlation_id: cid,
        })
    }

    fn rewrap(&self, ciphertext: &str) -> Result<Wrapped, RemoteError> {
        let body = Zeroizing::new(json!({ "ciphertext": ciphertext }).to_string());
        let (v, cid) = self.action("rewrap", &body)?;
        self.wrapped(&v, cid, "rewrap")
    }

    fn generate(&self) -> Result<Generated, RemoteError> {
        let (v, cid) = self.action("wrap", &Zeroizing::new("{}".to_owned()))?;
        Ok(Generated {
            plaintext: self.plaintext(&v)?,
            wrapped: self.wrapped(&v, cid, "wrap")?,
        })
    }
}

/// Percent-encodes a key id or alias for a URL path segment.
fn path_segment(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The start of a non-JSON body, for messages (a proxy's HTML page, say).
fn snippet(body: &str) -> String {
    let t: String = body.chars().take(200).collect();
    format!("unrecognised error body: {}", t.trim())
}
