//! The agent's age X25519 identity: made by `init` (file mode 0600, never overwritten, in the
//! `age-keygen` file format; `init` again prints the existing recipient), used to unseal a bundle's
//! `dek.age`.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::str::FromStr;

use age::secrecy::ExposeSecret;
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::secret::SecretBytes;

/// The recipient ("age1...") of the identity file at `path`, and whether `init` just made it: an
/// existing identity is never overwritten, its recipient is read back instead (so running `init` again
/// prints the same recipient).
pub fn init(path: &Path) -> Result<(String, bool)> {
    if std::fs::symlink_metadata(path).is_ok() {
        return Ok((recipient(path)?, false));
    }
    create(path).map(|r| (r, true))
}

/// The recipient of the first identity in the file at `path`.
pub fn recipient(path: &Path) -> Result<String> {
    let ids = load(path)?;
    Ok(ids[0].to_public().to_string())
}

/// Makes a new identity file at `path` and returns its recipient ("age1...").
fn create(path: &Path) -> Result<String> {
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("create directory", dir, e))?;
    }
    let id = age::x25519::Identity::generate();
    let recipient = id.to_public().to_string();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                Error::Identity(format!(
                    "{} already exists; init never overwrites an identity",
                    path.display()
                ))
            } else {
                Error::io("create identity file", path, e)
            }
        })?;
    let text = Zeroizing::new(format!(
        "# created: {}\n# public key: {recipient}\n{}\n",
        crate::time::event_time_now(),
        id.to_string().expose_secret()
    ));
    if let Err(e) = f.write_all(text.as_bytes()).and_then(|()| f.sync_all()) {
        let _ = std::fs::remove_file(path);
        return Err(Error::io("write identity file", path, e));
    }
    Ok(recipient)
}

/// The X25519 identities in an identity file (`age-keygen` format: comments and blank lines allowed).
pub fn load(path: &Path) -> Result<Vec<age::x25519::Identity>> {
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::Identity(format!(
                "{} does not exist; run `diskseal-agent init` first",
                path.display()
            ))
        } else {
            Error::io("read identity file", path, e)
        }
    })?);
    let mut ids = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let id = age::x25519::Identity::from_str(line).map_err(|_| {
            Error::Identity(format!(
                "{} line {}: not an age X25519 secret key",
                path.display(),
                n + 1
            ))
        })?;
        ids.push(id);
    }
    if ids.is_empty() {
        return Err(Error::Identity(format!(
            "{} holds no AGE-SECRET-KEY line",
            path.display()
        )));
    }
    Ok(ids)
}

/// Unseals age ciphertext with any of `ids`.
pub fn unseal(ids: &[age::x25519::Identity], sealed: &[u8], what: &Path) -> Result<SecretBytes> {
    let mut last = None;
    for id in ids {
        match age::decrypt(id, sealed) {
            Ok(plain) => return Ok(SecretBytes::new(Zeroizing::new(plain))),
            Err(e) => last = Some(e),
        }
    }
    let why = match last {
        Some(age::DecryptError::NoMatchingKeys) => {
            "it was sealed to another recipient (wrong identity)".to_owned()
        }
        Some(e) => e.to_string(),
        None => "no identity".to_owned(),
    };
    Err(Error::Identity(format!(
        "cannot unseal {}: {why}",
        what.display()
    )))
}
