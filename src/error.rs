//! The library's one error type: a matchable [`ErrorKind`], a message that names the field, and the
//! context a user needs to act on it (the file, the byte offset, a hint).
//!
//! Secrets never reach an [`Error`]: messages are built from field names, offsets and sizes only.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// What kind of failure this is; stable, so callers (and the CLI's exit codes) can match on it.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Reading or writing a file failed (the OS error is the source).
    Io,
    /// The input is not of the expected format (bad magic, wrong version).
    InvalidFormat,
    /// The input has the right format but a structure in it is damaged or inconsistent.
    Corrupt,
    /// The input uses a feature or parameter this build does not implement.
    Unsupported,
    /// No keyslot opens with the given passphrase, or a volume key does not match the digest.
    WrongKey,
    /// The caller asked for something impossible (bad option value, output equals input, ...).
    InvalidArgument,
    /// The operation was cancelled (Ctrl-C).
    Interrupted,
}

/// A library error: kind, message, and where it happened.
pub struct Error {
    kind: ErrorKind,
    message: String,
    path: Option<PathBuf>,
    offset: Option<u64>,
    hint: Option<String>,
    source: Option<io::Error>,
}

/// Result alias used across the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A new error of `kind` with a message that names the field or action.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            path: None,
            offset: None,
            hint: None,
            source: None,
        }
    }

    /// An I/O error while doing `op` (e.g. "read", "write") on `path` at `offset`.
    pub fn io(op: &str, path: &Path, offset: Option<u64>, source: io::Error) -> Self {
        let (message, hint) = match source.raw_os_error() {
            Some(28) => (
                format!("cannot {op}: no space left on device"),
                Some("free space on that file system or write the output elsewhere"),
            ),
            Some(27) => (
                format!("cannot {op}: {source}"),
                Some(
                    "the file size limit (ulimit -f) or the file system's largest file is too small",
                ),
            ),
            _ => (format!("cannot {op}: {source}"), None),
        };
        Error {
            kind: ErrorKind::Io,
            message,
            path: Some(path.to_owned()),
            offset,
            hint: hint.map(str::to_owned),
            source: Some(source),
        }
    }

    /// Shorthand for [`ErrorKind::InvalidFormat`].
    pub fn format(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidFormat, message)
    }

    /// Shorthand for [`ErrorKind::Corrupt`].
    pub fn corrupt(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Corrupt, message)
    }

    /// Shorthand for [`ErrorKind::Unsupported`].
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unsupported, message)
    }

    /// Shorthand for [`ErrorKind::InvalidArgument`].
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, message)
    }

    /// Attaches the file the error is about (kept if one is already set).
    #[must_use]
    pub fn with_path(mut self, path: &Path) -> Self {
        if self.path.is_none() {
            self.path = Some(path.to_owned());
        }
        self
    }

    /// Attaches the byte offset in that file (kept if one is already set).
    #[must_use]
    pub fn at(mut self, offset: u64) -> Self {
        if self.offset.is_none() {
            self.offset = Some(offset);
        }
        self
    }

    /// Attaches a hint: one line on what the user can try.
    #[must_use]
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        if self.hint.is_none() {
            self.hint = Some(hint.into());
        }
        self
    }

    /// Replaces the hint (for a caller that knows better than the callee what the user should try).
    #[must_use]
    pub fn replace_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// The kind of failure.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message, without path or offset.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The file the error is about, if known.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The byte offset in that file, if known.
    pub fn offset(&self) -> Option<u64> {
        self.offset
    }

    /// What the user can try, if anything.
    pub fn hint_text(&self) -> Option<&str> {
        self.hint.as_deref()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(path) = &self.path {
            write!(f, "{}: ", path.display())?;
        }
        f.write_str(&self.message)?;
        if let Some(offset) = self.offset {
            write!(f, " (at offset {offset:#x})")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.kind)
            .field("message", &self.message)
            .field("path", &self.path)
            .field("offset", &self.offset)
            .field("hint", &self.hint)
            .finish()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_ref().map(|e| e as _)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_path_and_offset() {
        let e = Error::corrupt("LUKS2 header checksum mismatch")
            .with_path(Path::new("x.img"))
            .at(0x4000);
        assert_eq!(
            e.to_string(),
            "x.img: LUKS2 header checksum mismatch (at offset 0x4000)"
        );
        assert_eq!(e.kind(), ErrorKind::Corrupt);
    }

    #[test]
    fn enospc_is_spelled_out() {
        let e = Error::io(
            "write",
            Path::new("out"),
            Some(7),
            io::Error::from_raw_os_error(28),
        );
        assert!(e.to_string().contains("no space left on device"), "{e}");
    }
}
