//! AWS KMS over its JSON protocol (`POST /`, `X-Amz-Target: TrentService.<Op>`,
//! `application/x-amz-json-1.1`) signed with a hand-written SigV4 (service `kms`):
//! `Encrypt` (wrap), `Decrypt` (unwrap), `ReEncrypt` (rewrap), `GenerateDataKey` (generate, AES_256).
//! Credentials come from `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` (/ `AWS_SESSION_TOKEN`), never argv.
//! Error bodies may be JSON (`__type`, `message`) or, from some front ends, XML (`<Code>`, `<Message>`).

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::json;
use zeroize::Zeroizing;

use super::{Generated, KeyWrapper, Unwrapped, Wrapped, b64};
use crate::http::sigv4::{SigV4, sigv4_authorization};
use crate::http::{RemoteError, RemoteErrorKind, RetryPolicy, service};
use crate::secret::{SecretBytes, SecretString};
use crate::wire;

/// What the AWS backend needs.
#[derive(Debug, Clone)]
pub struct AwsSettings {
    /// Region, e.g. us-east-1.
    pub region: String,
    /// Endpoint (default `https://kms.<region>.amazonaws.com`).
    pub endpoint: String,
    /// Key id, ARN or alias.
    pub key_id: String,
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key (redacted).
    pub secret_access_key: SecretString,
    /// Session token, if any (redacted).
    pub session_token: Option<SecretString>,
    /// Retries and timeout (429, 5xx and KMS's HTTP 400 ThrottlingException are retried).
    pub retry: RetryPolicy,
}

/// The AWS KMS client.
#[derive(Debug)]
pub struct AwsKms {
    s: AwsSettings,
    agent: ureq::Agent,
}

impl AwsKms {
    /// A client; nothing is sent until the first call.
    pub fn new(s: AwsSettings) -> AwsKms {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(s.retry.timeout))
            .build();
        AwsKms {
            s,
            agent: ureq::Agent::new_with_config(config),
        }
    }

    fn label(&self) -> String {
        format!("AWS KMS at {}", self.s.endpoint)
    }

    fn call(&self, op: &str, body: &Zeroizing<String>) -> Result<wire::AwsKmsReply, RemoteError> {
        let url = format!("{}/", self.s.endpoint);
        let host = self
            .s
            .endpoint
            .split("://")
            .nth(1)
            .unwrap_or(&self.s.endpoint)
            .trim_end_matches('/')
            .to_owned();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let amz_date = crate::time::amz_date(now);
        let target = format!("TrentService.{op}");
        let mut headers = vec![
            ("content-type", "application/x-amz-json-1.1"),
            ("host", host.as_str()),
            ("x-amz-date", amz_date.as_str()),
            ("x-amz-target", target.as_str()),
        ];
        let token = self.s.session_token.as_ref().map(|t| t.expose().to_owned());
        if let Some(t) = &token {
            headers.push(("x-amz-security-token", t.as_str()));
        }
        let req = SigV4 {
            method: "POST",
            path: "/",
            query: "",
            headers: &headers,
            body: body.as_bytes(),
            payload_sha256: None,
            region: &self.s.region,
            service: "kms",
            amz_date: &amz_date,
        };
        let auth = sigv4_authorization(
            &req,
            &self.s.access_key_id,
            self.s.secret_access_key.expose(),
        );
        let reply =
            crate::http::with_retries(service::AWS_KMS, &self.s.retry, &self.label(), || {
                let mut req = self.agent.post(&url).header("authorization", &auth);
                for (k, v) in &headers {
                    if *k != "host" {
                        req = req.header(*k, *v);
                    }
                }
                req.send(body.as_str())
            })?;
        let (status, text, request_id) = (reply.status, reply.body, reply.correlation_id);
        if status != 200 {
            let e = wire::aws_kms_error(&text);
            return Err(RemoteError {
                kind: RemoteErrorKind::Http,
                service: service::AWS_KMS,
                endpoint: self.label(),
                status: Some(status),
                code: e.reason,
                message: e
                    .message
                    .unwrap_or_else(|| text.chars().take(200).collect()),
                correlation_id: request_id.or(e.request_id),
                attempts: 1,
            });
        }
        wire::aws_kms_reply(&text).map_err(|e| RemoteError {
            kind: RemoteErrorKind::BadResponse,
            service: service::AWS_KMS,
            endpoint: self.label(),
            status: Some(status),
            code: None,
            message: format!("{op} response is {e}"),
            correlation_id: request_id,
            attempts: 1,
        })
    }

    fn field(&self, v: Option<&String>, name: &str) -> Result<String, RemoteError> {
        v.cloned().ok_or_else(|| RemoteError {
            kind: RemoteErrorKind::BadResponse,
            service: service::AWS_KMS,
            endpoint: self.label(),
            status: Some(200),
            code: None,
            message: format!("no {name} in the response"),
            correlation_id: None,
            attempts: 1,
        })
    }

    fn plaintext(&self, v: &wire::AwsKmsReply) -> Result<SecretBytes, RemoteError> {
        let bad = |message: &str| RemoteError {
            kind: RemoteErrorKind::BadResponse,
            service: service::AWS_KMS,
            endpoint: self.label(),
            status: Some(200),
            code: None,
            message: message.into(),
            correlation_id: None,
            attempts: 1,
        };
        match &v.plaintext {
            Some(Ok(b)) => Ok(SecretBytes::new(b.clone())),
            Some(Err(())) => Err(bad("Plaintext is not base64")),
            None => Err(bad("no Plaintext in the response")),
        }
    }
}

impl KeyWrapper for AwsKms {
    fn target(&self) -> String {
        self.s.key_id.clone()
    }

    fn wrap(&self, plaintext: &SecretBytes) -> Result<Wrapped, RemoteError> {
        let body = Zeroizing::new(
            json!({"KeyId": self.s.key_id, "Plaintext": b64(plaintext.expose())}).to_string(),
        );
        let v = self.call("Encrypt", &body)?;
        Ok(Wrapped {
            ciphertext: self.field(v.ciphertext_blob.as_ref(), "CiphertextBlob")?,
            key_version: v.key_id.clone(),
            correlation_id: None,
        })
    }

    fn unwrap(&self, ciphertext: &str) -> Result<Unwrapped, RemoteError> {
        let body = Zeroizing::new(
            json!({"KeyId": self.s.key_id, "CiphertextBlob": ciphertext}).to_string(),
        );
        let v = self.call("Decrypt", &body)?;
        Ok(Unwrapped {
            plaintext: self.plaintext(&v)?,
            key_version: v.key_id.clone(),
            rewrapped: None,
            correlation_id: None,
        })
    }

    fn rewrap(&self, ciphertext: &str) -> Result<Wrapped, RemoteError> {
        let body = Zeroizing::new(
            json!({"CiphertextBlob": ciphertext, "DestinationKeyId": self.s.key_id}).to_string(),
        );
        let v = self.call("ReEncrypt", &body)?;
        Ok(Wrapped {
            ciphertext: self.field(v.ciphertext_blob.as_ref(), "CiphertextBlob")?,
            key_version: v.key_id.clone(),
            correlation_id: None,
        })
    }

    fn generate(&self) -> Result<Generated, RemoteError> {
        let body =
            Zeroizing::new(json!({"KeyId": self.s.key_id, "KeySpec": "AES_256"}).to_string());
        let v = self.call("GenerateDataKey", &body)?;
        Ok(Generated {
            plaintext: self.plaintext(&v)?,
            wrapped: Wrapped {
                ciphertext: self.field(v.ciphertext_blob.as_ref(), "CiphertextBlob")?,
                key_version: v.key_id.clone(),
                correlation_id: None,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml_errors_are_read() {
        let body = "<ErrorResponse><Error><Code>SignatureDoesNotMatch</Code><Message>The request signature we calculated does not match</Message></Error><RequestId>r-1</RequestId></ErrorResponse>";
        let e = wire::aws_kms_error(body);
        assert_eq!(e.reason.as_deref(), Some("SignatureDoesNotMatch"));
        assert_eq!(e.request_id.as_deref(), Some("r-1"));
    }
}
