//! Output profiles: what the key file means and which LUKS version a profile writes
//! (`product.md` §1, "Output profiles").
//!
//! - `luks2`, `luks1`: the key file is the passphrase, verbatim;
//! - `ibm-vpc`: qcow2 with QEMU-native LUKS1; the key file is the passphrase and must be UTF-8;
//! - `ibm-classic-luks`: the key file is the raw DEK and the keyslot passphrase is the **base64 text of
//!   the DEK, without newline** (IBM Cloud classic "end-to-end encryption", 2018 procedure:
//!   `echo -n $(… | base64) > secret.dek; cryptsetup luksFormat IMG secret.dek`); LUKS1 by default;
//! - `ibm-classic-vhd`: no LUKS at all: a dynamic VHD encrypted like blktap's `vhd-util copy -k` (IBM Cloud
//!   classic, since 2019); the key file is the raw DEK, exactly 32 or 64 bytes ([`classic_vhd_key`]).

use base64::Engine;
use zeroize::Zeroizing;

use crate::crypto::keys::{Passphrase, VolumeKey};
use crate::error::{Error, Result};
use crate::luks::LuksVersion;

/// An output profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum Profile {
    /// LUKS2 raw file, passphrase key file.
    Luks2,
    /// LUKS1 raw file, passphrase key file.
    Luks1,
    /// IBM classic LUKS import: raw DEK key file, passphrase = base64(DEK).
    IbmClassicLuks,
    /// IBM VPC encrypted custom image: qcow2 with QEMU-native LUKS1, UTF-8 passphrase key file.
    IbmVpc,
    /// IBM classic encrypted VHD (vhd-util): dynamic VHD, raw 32/64-byte DEK key file, no LUKS.
    IbmClassicVhd,
}

impl Profile {
    /// Parses `--profile`.
    pub fn parse(name: &str) -> Result<Profile> {
        match name {
            "luks2" => Ok(Profile::Luks2),
            "luks1" => Ok(Profile::Luks1),
            "ibm-classic-luks" => Ok(Profile::IbmClassicLuks),
            "ibm-vpc" => Ok(Profile::IbmVpc),
            "ibm-classic-vhd" => Ok(Profile::IbmClassicVhd),
            other => Err(Error::invalid(format!("unknown profile {other:?}"))
                .hint("profiles: luks2, luks1, ibm-classic-luks, ibm-classic-vhd, ibm-vpc")),
        }
    }

    /// The profile's name.
    pub fn name(self) -> &'static str {
        match self {
            Profile::Luks2 => "luks2",
            Profile::Luks1 => "luks1",
            Profile::IbmClassicLuks => "ibm-classic-luks",
            Profile::IbmVpc => "ibm-vpc",
            Profile::IbmClassicVhd => "ibm-classic-vhd",
        }
    }

    /// The LUKS version written unless `--type` says otherwise.
    pub fn default_version(self) -> LuksVersion {
        match self {
            Profile::Luks2 => LuksVersion::Luks2,
            Profile::Luks1 | Profile::IbmClassicLuks | Profile::IbmVpc | Profile::IbmClassicVhd => {
                LuksVersion::Luks1
            }
        }
    }

    /// True when the key file holds the raw DEK rather than a passphrase.
    pub fn key_file_is_dek(self) -> bool {
        matches!(self, Profile::IbmClassicLuks | Profile::IbmClassicVhd)
    }

    /// Turns the key file's bytes into the keyslot passphrase.
    pub fn passphrase(self, key_file: Zeroizing<Vec<u8>>) -> Result<Passphrase> {
        match self {
            Profile::Luks2 | Profile::Luks1 => Passphrase::new(key_file),
            Profile::IbmVpc => {
                if std::str::from_utf8(&key_file).is_err() {
                    return Err(Error::invalid(
                        "the ibm-vpc passphrase must be valid UTF-8 (QEMU reads it as text)",
                    )
                    .hint(
                        "make a text passphrase with `diskseal keygen --passphrase -o pass.txt`",
                    ));
                }
                Passphrase::new(key_file)
            }
            Profile::IbmClassicLuks => {
                // IBM documented base64 text of 32 to 512 characters.
                if !(24..=384).contains(&key_file.len()) {
                    return Err(Error::invalid(format!(
                        "the ibm-classic-luks DEK must be 24 to 384 bytes (32 to 512 base64 characters), got {} bytes",
                        key_file.len()
                    ))
                    .hint("make one with `diskseal keygen --bytes 32 -o dek.bin`"));
                }
                let text = base64::engine::general_purpose::STANDARD.encode(&key_file[..]);
                Passphrase::new(Zeroizing::new(text.into_bytes()))
            }
            Profile::IbmClassicVhd => Err(Error::invalid(
                "the ibm-classic-vhd profile has no passphrase: its key file is the raw DEK",
            )),
        }
    }
}

/// How to make an `ibm-classic-vhd` key file.
const DEK_HINT: &str = "the key file must hold the raw DEK: make one with `diskseal keygen --bytes 64 -o dek.bin` \
(or --bytes 32), or decode the base64 DEK you wrapped: `echo -n <DEK> | base64 -d > dek.bin`";

/// True when `b` is non-empty base64 text (standard or URL alphabet, `=` padding, optional final newline).
fn looks_like_base64(b: &[u8]) -> bool {
    let t = b.strip_suffix(b"\n").unwrap_or(b);
    let t = t.strip_suffix(b"\r").unwrap_or(t);
    !t.is_empty()
        && t.iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'-' | b'_' | b'='))
        && t.iter()
            .position(|&c| c == b'=')
            .is_none_or(|p| t[p..].iter().all(|&c| c == b'='))
}

/// The `ibm-classic-vhd` key: the key file's bytes are the raw DEK, exactly 32 (AES-128-XTS) or 64
/// (AES-256-XTS) bytes, as `vhd-util copy -k` requires. Recognised mistakes, each refused with a hint:
/// base64 text instead of the bytes (the IBM docs' `base64 -d` step skipped), a trailing newline added
/// to a 32/64-byte key, any other size, and a key whose two XTS halves are identical.
pub fn classic_vhd_key(key_file: Zeroizing<Vec<u8>>) -> Result<VolumeKey> {
    let n = key_file.len();
    if looks_like_base64(&key_file) {
        // Raw random keys are base64 text by chance with probability ~(65/256)^32 < 1e-19.
        let text = key_file.strip_suffix(b"\n").unwrap_or(&key_file);
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(text)
            .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(text))
            .map(|d| d.len())
            .ok();
        let what = match decoded {
            Some(d) => format!("the base64 text of a {d}-byte key"),
            None => "text, not raw key bytes".to_string(),
        };
        return Err(Error::invalid(format!("the ibm-classic-vhd key file ({n} bytes) looks like {what}; vhd-util reads the raw DEK bytes"))
            .hint("decode it first: `base64 -d dek.b64 > dek.bin` (IBM's docs: `echo <data_key> | base64 -d - > keyfile`)"));
    }
    if (n == 33 || n == 65) && key_file.last() == Some(&b'\n') {
        return Err(Error::invalid(format!(
            "the ibm-classic-vhd key file is {n} bytes and ends with a newline: a {}-byte key plus a newline? vhd-util only takes exactly 32 or 64 bytes",
            n - 1
        ))
        .hint("write the key without a newline (e.g. `head -c {n-1} file > dek.bin` if the newline was added by an editor or echo)".replace("{n-1}", &(n - 1).to_string())));
    }
    if n != 32 && n != 64 {
        return Err(Error::invalid(format!(
            "the ibm-classic-vhd key file is {n} bytes; the raw DEK must be exactly 32 bytes (AES-128-XTS, IBM's \"AES 256 bit\") or 64 bytes (AES-256-XTS, \"AES 512 bit\")"
        ))
        .hint(DEK_HINT));
    }
    VolumeKey::from_bytes(key_file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ibm_classic_passphrase_is_base64_without_newline() {
        let dek = Zeroizing::new(vec![0xffu8; 32]);
        let p = Profile::IbmClassicLuks.passphrase(dek).unwrap();
        assert_eq!(p.expose(), b"//////////////////////////////////////////8=");
        assert!(
            Profile::IbmClassicLuks
                .passphrase(Zeroizing::new(vec![1u8; 8]))
                .is_err()
        );
    }

    #[test]
    fn classic_vhd_key_checks() {
        let key: Vec<u8> = (0u8..64).collect();
        assert_eq!(
            classic_vhd_key(Zeroizing::new(key.clone())).unwrap().len(),
            64
        );
        assert_eq!(
            classic_vhd_key(Zeroizing::new(key[..32].to_vec()))
                .unwrap()
                .len(),
            32
        );
        // A genuine key may end in 0x0a.
        let mut k = key.clone();
        k[63] = b'\n';
        assert!(classic_vhd_key(Zeroizing::new(k)).is_ok());
        let mut nl = key.clone();
        nl.push(b'\n');
        assert!(
            classic_vhd_key(Zeroizing::new(nl))
                .unwrap_err()
                .to_string()
                .contains("newline")
        );
        let b64 = base64::engine::general_purpose::STANDARD.encode(&key);
        let e = classic_vhd_key(Zeroizing::new(format!("{b64}\n").into_bytes())).unwrap_err();
        assert!(
            e.to_string().contains("base64 text of a 64-byte key"),
            "{e}"
        );
        // 32 base64 characters is a valid length but text all the same.
        let e = classic_vhd_key(Zeroizing::new(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdef".to_vec()))
            .unwrap_err();
        assert!(e.to_string().contains("base64"), "{e}");
        assert!(
            classic_vhd_key(Zeroizing::new(vec![1u8; 48]))
                .unwrap_err()
                .to_string()
                .contains("48 bytes")
        );
        let mut same = key[..32].to_vec();
        same.extend_from_slice(&key[..32]);
        assert!(
            classic_vhd_key(Zeroizing::new(same))
                .unwrap_err()
                .to_string()
                .contains("identical")
        );
    }
}
