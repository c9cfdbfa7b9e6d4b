//! [`RemoteError`]: the one error type of every remote call, whichever service answered.

/// What kind of remote failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteErrorKind {
    /// The service answered with an error status.
    Http,
    /// No answer: connection refused, DNS, timeout (after the retries).
    Unreachable,
    /// The answer could not be understood.
    BadResponse,
}

/// A failure of a remote service (IAM, a KMS, S3 / COS, VPC, SoftLayer): which service and endpoint,
/// the HTTP status, the service's own error code and message, the correlation id.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", self.render())]
pub struct RemoteError {
    /// Kind.
    pub kind: RemoteErrorKind,
    /// The service.
    pub service: Service,
    /// The service ("Key Protect", "IAM") and base URL.
    pub endpoint: String,
    /// HTTP status, if one came back.
    pub status: Option<u16>,
    /// The service's error code (e.g. `KEY_NOT_FOUND_ERR`, `BXNIM0415E`, `NoSuchKey`).
    pub code: Option<String>,
    /// The service's message, or the transport error.
    pub message: String,
    /// The correlation / request id.
    pub correlation_id: Option<String>,
    /// Attempts made.
    pub attempts: u32,
}

impl RemoteError {
    /// A response from `endpoint` that could not be understood.
    pub fn bad_response(service: Service, endpoint: &str, message: &str) -> RemoteError {
        RemoteError {
            kind: RemoteErrorKind::BadResponse,
            service,
            endpoint: endpoint.to_owned(),
            status: None,
            code: None,
            message: message.to_owned(),
            correlation_id: None,
            attempts: 1,
        }
    }

    fn render(&self) -> String {
        let mut s = match self.kind {
            RemoteErrorKind::Unreachable => format!(
                "cannot reach {} after {} attempt(s): {}",
                self.endpoint, self.attempts, self.message
            ),
            RemoteErrorKind::BadResponse => {
                format!("{}: unexpected response: {}", self.endpoint, self.message)
            }
            RemoteErrorKind::Http => {
                let mut head: Vec<String> = Vec::new();
                if let Some(s) = self.status {
                    head.push(format!("HTTP {s}"));
                }
                if let Some(r) = &self.code {
                    head.push(r.clone());
                }
                if head.is_empty() {
                    format!("{}: {}", self.endpoint, self.message)
                } else {
                    format!("{}: {}: {}", self.endpoint, head.join(" "), self.message)
                }
            }
        };
        if let Some(c) = &self.correlation_id {
            s.push_str(&format!(" (correlation id {c})"));
        }
        s
    }

    /// The status as an audit reason code (0 when there was none).
    pub fn reason_code(&self) -> u16 {
        self.status.unwrap_or(0)
    }
}

/// Which remote service failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// IBM Cloud IAM.
    Iam,
    /// IBM Key Protect.
    KeyProtect,
    /// IBM Hyper Protect Crypto Services.
    Hpcs,
    /// AWS KMS.
    AwsKms,
    /// A PKCS#11 token.
    Pkcs11,
    /// S3 or IBM COS.
    S3,
    /// IBM Cloud VPC.
    Vpc,
    /// IBM Cloud classic infrastructure (SoftLayer).
    SoftLayer,
    /// The in-memory test KMS.
    Fake,
}

impl std::fmt::Display for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Service::Iam => "IAM",
            Service::KeyProtect => "Key Protect",
            Service::Hpcs => "Hyper Protect Crypto Services",
            Service::AwsKms => "AWS KMS",
            Service::Pkcs11 => "PKCS#11",
            Service::S3 => "S3",
            Service::Vpc => "VPC",
            Service::SoftLayer => "SoftLayer",
            Service::Fake => "fake KMS",
        })
    }
}

/// The [`Service`]s by the names the code uses.
pub mod service {
    pub use super::Service;
    /// IBM Cloud IAM.
    pub const IAM: Service = Service::Iam;
    /// IBM Key Protect.
    pub const KEY_PROTECT: Service = Service::KeyProtect;
    /// IBM Hyper Protect Crypto Services.
    pub const HPCS: Service = Service::Hpcs;
    /// AWS KMS.
    pub const AWS_KMS: Service = Service::AwsKms;
    /// A PKCS#11 token.
    pub const PKCS11: Service = Service::Pkcs11;
    /// S3 or IBM COS.
    pub const S3: Service = Service::S3;
    /// IBM Cloud VPC.
    pub const VPC: Service = Service::Vpc;
    /// IBM Cloud classic infrastructure (SoftLayer).
    pub const SOFTLAYER: Service = Service::SoftLayer;
}
