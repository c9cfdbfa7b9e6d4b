//! Output profiles: what the key file means and which LUKS version a profile writes
//! (`product.md` §1, "Output profiles").
//!
//! - `luks2`, `luks1`: the key file is the passphrase, verbatim;
//! - `ibm-vpc`: qcow2 with QEMU-native LUKS1; the key file is the passphrase and must be UTF-8;
//! - `ibm-classic-luks`: the key file is the raw DEK and the keyslot passphrase is the **base64 text of
//!   the DEK, without newline** (IBM Cloud classic "end-to-end encryption", 2018 procedure:
//!   `echo -n $(… | base64) > secret.dek; cryptsetup luksFormat IMG secret.dek`); LUKS1 by default.

use base64::Engine;
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::luks::LuksVersion;
use crate::luks::keys::Passphrase;

/// An output profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// LUKS2 raw file, passphrase key file.
    Luks2,
    /// LUKS1 raw file, passphrase key file.
    Luks1,
    /// IBM classic LUKS import: raw DEK key file, passphrase = base64(DEK).
    IbmClassicLuks,
    /// IBM VPC encrypted custom image: qcow2 with QEMU-native LUKS1, UTF-8 passphrase key file.
    IbmVpc,
}

impl Profile {
    /// Parses `--profile`.
    pub fn parse(name: &str) -> Result<Profile> {
        match name {
            "luks2" => Ok(Profile::Luks2),
            "luks1" => Ok(Profile::Luks1),
            "ibm-classic-luks" => Ok(Profile::IbmClassicLuks),
            "ibm-vpc" => Ok(Profile::IbmVpc),
            other => Err(Error::invalid(format!("unknown profile {other:?}"))
                .hint("profiles: luks2, luks1, ibm-classic-luks, ibm-vpc")),
        }
    }

    /// The profile's name.
    pub fn name(self) -> &'static str {
        match self {
            Profile::Luks2 => "luks2",
            Profile::Luks1 => "luks1",
            Profile::IbmClassicLuks => "ibm-classic-luks",
            Profile::IbmVpc => "ibm-vpc",
        }
    }

    /// The LUKS version written unless `--type` says otherwise.
    pub fn default_version(self) -> LuksVersion {
        match self {
            Profile::Luks2 => LuksVersion::Luks2,
            Profile::Luks1 | Profile::IbmClassicLuks | Profile::IbmVpc => LuksVersion::Luks1,
        }
    }

    /// True when the key file holds the raw DEK rather than a passphrase.
    pub fn key_file_is_dek(self) -> bool {
        self == Profile::IbmClassicLuks
    }

    /// Turns the key file's bytes into the keyslot passphrase.
    pub fn passphrase(self, key_file: Zeroizing<Vec<u8>>) -> Result<Passphrase> {
        match self {
            Profile::Luks2 | Profile::Luks1 => Passphrase::new(key_file),
            Profile::IbmVpc => {
                if std::str::from_utf8(&key_file).is_err() {
                    return Err(Error::invalid("the ibm-vpc passphrase must be valid UTF-8 (QEMU reads it as text)")
                        .hint("use a text passphrase, e.g. `head -c 32 /dev/urandom | base64 -w0 > pass.txt`"));
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
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ibm_classic_passphrase_is_base64_without_newline() {
        let dek = Zeroizing::new(vec![0xffu8; 32]);
        let p = Profile::IbmClassicLuks.passphrase(dek).unwrap();
        assert_eq!(p.expose(), b"//////////////////////////////////////////8=");
        assert!(Profile::IbmClassicLuks.passphrase(Zeroizing::new(vec![1u8; 8])).is_err());
    }
}
