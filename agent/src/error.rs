//! The agent's error type: one variant per kind of failure, each message naming the file, endpoint or
//! field, never a secret.

use std::path::PathBuf;

/// An agent error.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad flag, environment variable or config file.
    #[error("configuration: {0}")]
    Config(String),
    /// A file could not be read or written.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The bundle is malformed, incomplete, or does not match its manifest.
    #[error("bundle {}: {message}", path.display())]
    Bundle {
        /// The bundle directory.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The age identity is missing, malformed or does not open the sealed key.
    #[error("identity: {0}")]
    Identity(String),
    /// A remote service (IAM, a KMS, S3 / COS, VPC, SoftLayer) answered with an error, or did not answer.
    #[error("{0}")]
    Remote(#[from] crate::http::RemoteError),
    /// The audit log is damaged or was tampered with.
    #[error("audit log {}: {message}", path.display())]
    Audit {
        /// The log.
        path: PathBuf,
        /// What is wrong, with the line number.
        message: String,
    },
    /// An upload could not go on (its state, the source, the object's checks).
    #[error("upload: {0}")]
    Upload(String),
    /// An image import was refused by a pre-flight check or failed in the cloud.
    #[error("import: {0}")]
    Import(String),
    /// A server order was refused by a check, by the operator, or failed in the cloud.
    #[error("provision: {0}")]
    Provision(String),
    /// A pre-flight check or a safety rule refused the action before anything was sent (an image the
    /// cloud would reject, an object that exists without --force, a file that is never overwritten);
    /// the message carries its own prefix (`import: pre-flight: ...`).
    #[error("{0}")]
    Refused(String),
    /// An error from the diskseal library.
    #[error("{0}")]
    Diskseal(#[from] diskseal::Error),
}

impl Error {
    /// Shorthand for [`Error::Io`].
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// True for a failed verification (exit status 1) rather than an operational error (2).
    pub fn is_verification_failure(&self) -> bool {
        matches!(self, Error::Bundle { .. } | Error::Audit { .. })
    }
}

/// Result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;
