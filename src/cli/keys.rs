//! Key input for the CLI: key files read verbatim (or stdin with "-"), the terminal prompt, volume-key
//! files, and `keygen` output. Secrets go straight into zeroizing types and are never echoed or logged.

use std::fs::OpenOptions;
use std::io::{IsTerminal, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use zeroize::Zeroizing;

use diskseal::crypto::keys::{Passphrase, VolumeKey, random_bytes};
use diskseal::profile::Profile;
use diskseal::{Error, Result};

use super::KeyArgs;
use super::report::Out;

/// Largest key file accepted (cryptsetup's default keyfile-size limit is 8 MiB).
const MAX_KEY_FILE: u64 = 8 << 20;

fn read_limited(mut r: impl Read, path: &Path) -> Result<Zeroizing<Vec<u8>>> {
    let mut buf = Zeroizing::new(Vec::new());
    r.by_ref()
        .take(MAX_KEY_FILE + 1)
        .read_to_end(&mut buf)
        .map_err(|e| Error::io("read key file", path, None, e))?;
    if buf.len() as u64 > MAX_KEY_FILE {
        return Err(Error::invalid("key file is larger than 8 MiB").with_path(path));
    }
    Ok(buf)
}

/// Reads a key file verbatim ("-" = stdin); refuses an empty one; warns about a trailing newline.
pub(super) fn read_key_file(
    path: &Path,
    strip_newline: bool,
    out: &Out,
) -> Result<Zeroizing<Vec<u8>>> {
    let mut bytes = if path == Path::new("-") {
        read_limited(std::io::stdin().lock(), Path::new("<stdin>"))?
    } else {
        let f = std::fs::File::open(path).map_err(|e| Error::io("open key file", path, None, e))?;
        read_limited(f, path)?
    };
    if bytes.last() == Some(&b'\n') {
        if strip_newline {
            bytes.pop();
        } else {
            out.warn(&format!(
                "key file {} ends with a newline, which is part of the passphrase; pass --strip-newline to drop it",
                path.display()
            ));
        }
    }
    if bytes.is_empty() {
        return Err(Error::invalid("key file is empty")
            .with_path(path)
            .hint("an empty passphrase cannot protect a keyslot"));
    }
    Ok(bytes)
}

/// The keyslot passphrase for `profile`: from --key-file, or asked for on a terminal.
pub(super) fn passphrase(
    k: &KeyArgs,
    profile: Profile,
    out: &Out,
    target: Option<&Path>,
    confirm: bool,
) -> Result<Passphrase> {
    if let Some(path) = &k.key_file {
        let bytes = read_key_file(path, k.strip_newline, out)?;
        return profile.passphrase(bytes).map_err(|e| e.with_path(path));
    }
    if profile.key_file_is_dek() {
        return Err(Error::invalid(format!(
            "profile {} needs --key-file with the raw DEK",
            profile.name()
        ))
        .hint("make one with `diskseal keygen --bytes 32 -o dek.bin`"));
    }
    if !std::io::stdin().is_terminal() {
        return Err(Error::invalid("no key given")
            .hint("pass --key-file FILE (or --key-file - to read stdin)"));
    }
    let name = target.map(|p| p.display().to_string()).unwrap_or_default();
    let ask = |prompt: &str| -> Result<Zeroizing<Vec<u8>>> {
        rpassword::prompt_password(prompt)
            .map(|s| Zeroizing::new(s.into_bytes()))
            .map_err(|e| Error::io("read passphrase from", Path::new("/dev/tty"), None, e))
    };
    let first = ask(&format!("Enter passphrase for {name}: "))?;
    if confirm {
        let second = ask("Verify passphrase: ")?;
        if first != second {
            return Err(Error::invalid("passphrases do not match"));
        }
    }
    profile.passphrase(first)
}

/// Reads the raw DEK of the `ibm-classic-vhd` profile ("-" = stdin): exactly 32 or 64 bytes, checked by
/// [`diskseal::profile::classic_vhd_key`] (newline, base64 text and size mistakes get a hint).
pub(super) fn read_dek(path: &Path) -> Result<VolumeKey> {
    let bytes = if path == Path::new("-") {
        read_limited(std::io::stdin().lock(), Path::new("<stdin>"))?
    } else {
        let f = std::fs::File::open(path).map_err(|e| Error::io("open key file", path, None, e))?;
        read_limited(f, path)?
    };
    diskseal::profile::classic_vhd_key(bytes).map_err(|e| e.with_path(path))
}

/// Reads a volume key file (raw 32 or 64 bytes).
pub(super) fn read_volume_key(path: &Path) -> Result<VolumeKey> {
    let f =
        std::fs::File::open(path).map_err(|e| Error::io("open volume key file", path, None, e))?;
    let bytes = read_limited(f, path)?;
    VolumeKey::from_bytes(bytes).map_err(|e| e.with_path(path))
}

/// Writes `len` random bytes to a new file with mode 0600; never overwrites.
pub(super) fn write_new_key(path: &Path, len: usize) -> Result<()> {
    write_new_secret(path, &random_bytes(len)?)
}

/// Writes a new text passphrase (base64url of 32 random bytes, no newline) with mode 0600; returns its
/// length.
pub(super) fn write_new_passphrase(path: &Path) -> Result<usize> {
    use base64::Engine as _;
    let text = Zeroizing::new(
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(random_bytes(32)?.as_slice())
            .into_bytes(),
    );
    write_new_secret(path, &text)?;
    Ok(text.len())
}

fn write_new_secret(path: &Path, key: &[u8]) -> Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                Error::invalid("key file already exists; keygen never overwrites a key")
                    .with_path(path)
            } else {
                Error::io("create key file", path, None, e)
            }
        })?;
    let written = f.write_all(key).and_then(|()| f.sync_all());
    if let Err(e) = written {
        let _ = std::fs::remove_file(path);
        return Err(Error::io("write key file", path, None, e));
    }
    Ok(())
}
