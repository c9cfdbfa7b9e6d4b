//! The IBM Cloud REST client [`crate::import`] and [`crate::provision`] share: the VPC API with an IAM
//! bearer token (one retry with a fresh token after a 401), SoftLayer REST with HTTP Basic
//! `apikey:<API key>` as softlayer-python signs in, the retries of [`crate::http`], and errors that
//! name the service, the endpoint and the call.

use serde_json::Value;

use crate::error::{Error, Result};
use crate::http::iam::IamTokens;
use crate::http::{RemoteError, RemoteErrorKind, Service, service};
use crate::http::{Reply, RetryPolicy, with_retries};
use crate::import::Cloud;
use crate::secret::SecretString;
use crate::wire;
use base64::Engine as _;

/// A signed-in client of the VPC API or SoftLayer REST at one endpoint.
pub(crate) struct Client {
    /// VPC or classic.
    pub(crate) cloud: Cloud,
    /// `https://<region>.iaas.cloud.ibm.com` or `https://api.softlayer.com` (or a test server).
    pub(crate) endpoint: String,
    /// The default retries of each request.
    pub(crate) retry: RetryPolicy,
    api_key: SecretString,
    agent: ureq::Agent,
    /// VPC: bearer tokens, refreshed before they expire (a poll can last an hour, a token's life).
    tokens: Option<IamTokens>,
}

impl Client {
    /// A client of `endpoint`; for VPC the first IAM token is fetched now, so a refused API key stops
    /// the run before anything else is sent.
    pub(crate) fn new(
        cloud: Cloud,
        endpoint: &str,
        iam_endpoint: &str,
        api_key: SecretString,
        retry: RetryPolicy,
    ) -> Result<Client> {
        let agent = ureq::Agent::new_with_config(
            ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(retry.timeout))
                .build(),
        );
        let tokens = match cloud {
            Cloud::Vpc => {
                let t = IamTokens::new(iam_endpoint, api_key.clone(), retry);
                t.token()?;
                Some(t)
            }
            Cloud::Classic => None,
        };
        Ok(Client {
            cloud,
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            retry,
            api_key,
            agent,
            tokens,
        })
    }

    /// The service this client speaks to.
    pub(crate) fn service(&self) -> Service {
        match self.cloud {
            Cloud::Vpc => service::VPC,
            Cloud::Classic => service::SOFTLAYER,
        }
    }

    /// `VPC at URL` / `SoftLayer at URL`.
    pub(crate) fn label(&self) -> String {
        match self.cloud {
            Cloud::Vpc => format!("VPC at {}", self.endpoint),
            Cloud::Classic => format!("SoftLayer at {}", self.endpoint),
        }
    }

    /// The error an answer `r` to the call `what` is: the service's own code, message and trace id.
    pub(crate) fn error(&self, what: &str, r: &Reply) -> RemoteError {
        let e = match self.cloud {
            Cloud::Vpc => wire::vpc_error(&r.body),
            Cloud::Classic => wire::softlayer_error(&r.body),
        };
        RemoteError {
            kind: RemoteErrorKind::Http,
            service: self.service(),
            endpoint: format!("{} ({what})", self.label()),
            status: Some(r.status),
            code: e.reason,
            message: e
                .message
                .unwrap_or_else(|| r.body.chars().take(200).collect()),
            correlation_id: e.request_id.or_else(|| r.correlation_id.clone()),
            attempts: 1,
        }
    }

    /// One request (GET without `body`, POST with it) with the retries of `retry`.
    pub(crate) fn call_with(
        &self,
        retry: &RetryPolicy,
        method: &str,
        url: &str,
        body: Option<&Value>,
    ) -> Result<Reply> {
        let Some(tokens) = &self.tokens else {
            let basic = base64::engine::general_purpose::STANDARD
                .encode(format!("apikey:{}", self.api_key.expose()));
            return self.send(retry, method, url, body, &format!("Basic {basic}"));
        };
        let bearer = tokens.token()?;
        let auth = format!("Bearer {}", bearer.token.expose());
        let r = self.send(retry, method, url, body, &auth)?;
        if r.status != 401 {
            return Ok(r);
        }
        let fresh = tokens.refresh(bearer.generation)?;
        self.send(
            retry,
            method,
            url,
            body,
            &format!("Bearer {}", fresh.token.expose()),
        )
    }

    /// [`Client::call_with`] with the default retries.
    pub(crate) fn call(&self, method: &str, url: &str, body: Option<&Value>) -> Result<Reply> {
        self.call_with(&self.retry, method, url, body)
    }

    /// A GET whose answer must be 200: its body (for a [`crate::wire`] parser).
    pub(crate) fn get_body(&self, what: &str, url: &str) -> Result<String> {
        let r = self.call("GET", url, None)?;
        if r.status != 200 {
            return Err(Error::Remote(self.error(what, &r)));
        }
        Ok(r.body)
    }

    /// A GET whose answer must be 200 and JSON.
    pub(crate) fn get_json(&self, what: &str, url: &str) -> Result<Value> {
        let body = self.get_body(what, url)?;
        serde_json::from_str(&body).map_err(|e| {
            Error::Remote(RemoteError::bad_response(
                self.service(),
                &format!("{} ({what})", self.label()),
                &format!("not JSON: {e}"),
            ))
        })
    }

    fn send(
        &self,
        retry: &RetryPolicy,
        method: &str,
        url: &str,
        body: Option<&Value>,
        auth: &str,
    ) -> Result<Reply> {
        let auth = zeroize::Zeroizing::new(auth.to_owned());
        Ok(with_retries(
            self.service(),
            retry,
            &self.label(),
            || match (method, body) {
                ("POST", Some(b)) => self
                    .agent
                    .post(url)
                    .header("authorization", auth.as_str())
                    .header("content-type", "application/json")
                    .header("accept", "application/json")
                    .send(b.to_string()),
                _ => self
                    .agent
                    .get(url)
                    .header("authorization", auth.as_str())
                    .header("accept", "application/json")
                    .call(),
            },
        )?)
    }
}
