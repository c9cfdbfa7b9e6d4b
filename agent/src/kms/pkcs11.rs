//! Any PKCS#11 HSM (SoftHSM2 in the tests) through `cryptoki`: the root key is a key-wrapping key on a
//! token found by label, the PIN comes from a file or the environment (never argv).
//!
//! - `aes-kwp` (default): `C_WrapKey`/`C_UnwrapKey` with `CKM_AES_KEY_WRAP_PAD` (RFC 5649) and an AES KEK;
//!   the DEK goes in as a session-only, extractable generic secret, so it never persists on the token;
//! - `rsa-oaep`: `C_Encrypt` with the public key / `C_Decrypt` with the private key, OAEP with a
//!   configurable hash (SoftHSM2 only does SHA-1).
//!
//! The WDEK is the base64 of the mechanism's output. This module needs no `unsafe`: cryptoki's API is safe.

use std::path::PathBuf;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11 as Ctx};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsOaepParams, PkcsOaepSource};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use zeroize::Zeroizing;

use super::{Generated, KeyWrapper, Unwrapped, Wrapped, b64};
use crate::http::{RemoteError, RemoteErrorKind, service};
use crate::secret::{SecretBytes, SecretString};

/// Which wrapping mechanism.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pkcs11Mechanism {
    /// CKM_AES_KEY_WRAP_PAD with an AES key-wrapping key.
    AesKwp,
    /// CKM_RSA_PKCS_OAEP with SHA-1 (MGF1-SHA1).
    RsaOaepSha1,
    /// CKM_RSA_PKCS_OAEP with SHA-256 (MGF1-SHA256).
    RsaOaepSha256,
}

impl Pkcs11Mechanism {
    /// Parses `aes-kwp`, `rsa-oaep` (SHA-1), `rsa-oaep-sha256`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "aes-kwp" => Some(Self::AesKwp),
            "rsa-oaep" | "rsa-oaep-sha1" => Some(Self::RsaOaepSha1),
            "rsa-oaep-sha256" => Some(Self::RsaOaepSha256),
            _ => None,
        }
    }
}

/// What the PKCS#11 backend needs.
#[derive(Debug, Clone)]
pub struct Pkcs11Settings {
    /// The module (`.so`).
    pub module: PathBuf,
    /// Token label.
    pub token_label: String,
    /// Label of the wrapping key (AES secret key, or RSA key pair).
    pub key_label: String,
    /// User PIN (redacted in Debug).
    pub pin: SecretString,
    /// Mechanism.
    pub mechanism: Pkcs11Mechanism,
}

/// The PKCS#11 backend.
#[derive(Debug)]
pub struct Pkcs11 {
    s: Pkcs11Settings,
    ctx: Ctx,
    slot: Slot,
}

/// A failure described in words (no PKCS#11 return value).
fn err(what: &str, e: impl std::fmt::Display) -> RemoteError {
    RemoteError {
        kind: RemoteErrorKind::Http,
        service: service::PKCS11,
        endpoint: "PKCS#11".into(),
        status: None,
        code: None,
        message: format!("{what}: {e}"),
        correlation_id: None,
        attempts: 1,
    }
}

/// A cryptoki error, with its CKR_ name as the reason code (`PinIncorrect` -> `CKR_PIN_INCORRECT`).
fn ck(what: &str, e: cryptoki::error::Error) -> RemoteError {
    let mut k = err(what, &e);
    if let cryptoki::error::Error::Pkcs11(rv, _) = &e {
        let name = format!("{rv:?}");
        let mut snake = String::from("CKR_");
        for (i, c) in name.chars().enumerate() {
            if c.is_ascii_uppercase() && i > 0 {
                snake.push('_');
            }
            snake.push(c.to_ascii_uppercase());
        }
        k.code = Some(snake);
    }
    k
}

impl Pkcs11 {
    /// Loads the module and finds the token by label.
    pub fn new(s: Pkcs11Settings) -> Result<Pkcs11, RemoteError> {
        let ctx = Ctx::new(&s.module).map_err(|e| {
            ck(
                &format!("cannot load PKCS#11 module {}", s.module.display()),
                e,
            )
        })?;
        ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
            .map_err(|e| ck("C_Initialize", e))?;
        let mut found = None;
        let mut labels = Vec::new();
        for slot in ctx
            .get_slots_with_token()
            .map_err(|e| ck("C_GetSlotList", e))?
        {
            let info = ctx
                .get_token_info(slot)
                .map_err(|e| ck("C_GetTokenInfo", e))?;
            let label = info.label().trim().to_owned();
            if label == s.token_label {
                found = Some(slot);
                break;
            }
            labels.push(label);
        }
        let slot = found.ok_or_else(|| {
            err(
                "no token",
                format!("no token labelled {:?} (tokens: {labels:?})", s.token_label),
            )
        })?;
        Ok(Pkcs11 { s, ctx, slot })
    }

    fn session(&self) -> Result<Session, RemoteError> {
        let session = self
            .ctx
            .open_rw_session(self.slot)
            .map_err(|e| ck("C_OpenSession", e))?;
        let pin = cryptoki::types::AuthPin::from(self.s.pin.expose().to_owned());
        session
            .login(UserType::User, Some(&pin))
            .map_err(|e| ck("C_Login (is the PIN right?)", e))?;
        Ok(session)
    }

    fn find(&self, session: &Session, class: ObjectClass) -> Result<ObjectHandle, RemoteError> {
        let t = [
            Attribute::Class(class),
            Attribute::Label(self.s.key_label.as_bytes().to_vec()),
        ];
        let mut v = session
            .find_objects(&t)
            .map_err(|e| ck("C_FindObjects", e))?;
        match v.len() {
            1 => Ok(v.remove(0)),
            0 => Err(err(
                "no key",
                format!(
                    "no {class} labelled {:?} on token {:?}",
                    self.s.key_label, self.s.token_label
                ),
            )),
            n => Err(err(
                "ambiguous key",
                format!("{n} objects labelled {:?}", self.s.key_label),
            )),
        }
    }

    fn oaep(&self) -> Mechanism<'static> {
        let (hash, mgf) = match self.s.mechanism {
            Pkcs11Mechanism::RsaOaepSha256 => (MechanismType::SHA256, PkcsMgfType::MGF1_SHA256),
            _ => (MechanismType::SHA1, PkcsMgfType::MGF1_SHA1),
        };
        Mechanism::RsaPkcsOaep(PkcsOaepParams::new(hash, mgf, PkcsOaepSource::empty()))
    }

    fn secret_template(extra: Vec<Attribute>) -> Vec<Attribute> {
        let mut t = vec![
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::GENERIC_SECRET),
            Attribute::Token(false),
            Attribute::Extractable(true),
            Attribute::Sensitive(false),
        ];
        t.extend(extra);
        t
    }

    fn wrap_bytes(&self, session: &Session, plain: &[u8]) -> Result<Vec<u8>, RemoteError> {
        match self.s.mechanism {
            Pkcs11Mechanism::AesKwp => {
                let kek = self.find(session, ObjectClass::SECRET_KEY)?;
                let dek = session
                    .create_object(&Self::secret_template(vec![Attribute::Value(
                        plain.to_vec(),
                    )]))
                    .map_err(|e| ck("C_CreateObject", e))?;
                let r = session
                    .wrap_key(&Mechanism::AesKeyWrapPad, kek, dek)
                    .map_err(|e| ck("C_WrapKey", e));
                let _ = session.destroy_object(dek);
                r
            }
            _ => {
                let public = self.find(session, ObjectClass::PUBLIC_KEY)?;
                session
                    .encrypt(&self.oaep(), public, plain)
                    .map_err(|e| ck("C_Encrypt (RSA-OAEP)", e))
            }
        }
    }

    fn unwrap_bytes(
        &self,
        session: &Session,
        wrapped: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, RemoteError> {
        match self.s.mechanism {
            Pkcs11Mechanism::AesKwp => {
                let kek = self.find(session, ObjectClass::SECRET_KEY)?;
                let obj = session
                    .unwrap_key(
                        &Mechanism::AesKeyWrapPad,
                        kek,
                        wrapped,
                        &Self::secret_template(vec![]),
                    )
                    .map_err(|e| ck("C_UnwrapKey", e))?;
                let attrs = session
                    .get_attributes(obj, &[AttributeType::Value])
                    .map_err(|e| ck("C_GetAttributeValue", e));
                let _ = session.destroy_object(obj);
                match attrs?.into_iter().next() {
                    Some(Attribute::Value(v)) => Ok(Zeroizing::new(v)),
                    _ => Err(err(
                        "C_GetAttributeValue",
                        "the unwrapped key's value is not readable",
                    )),
                }
            }
            _ => {
                let private = self.find(session, ObjectClass::PRIVATE_KEY)?;
                session
                    .decrypt(&self.oaep(), private, wrapped)
                    .map(Zeroizing::new)
                    .map_err(|e| ck("C_Decrypt (RSA-OAEP)", e))
            }
        }
    }

    fn decode(ciphertext: &str) -> Result<Vec<u8>, RemoteError> {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(ciphertext.trim())
            .map_err(|_| err("bad WDEK", "the WDEK is not base64"))
    }
}

impl KeyWrapper for Pkcs11 {
    fn target(&self) -> String {
        format!(
            "pkcs11:token={};object={}",
            self.s.token_label, self.s.key_label
        )
    }

    fn wrap(&self, plaintext: &SecretBytes) -> Result<Wrapped, RemoteError> {
        let session = self.session()?;
        let w = self.wrap_bytes(&session, plaintext.expose())?;
        // Check the round trip before anyone relies on the WDEK: SoftHSM2 2.6.1 zero-pads a key whose
        // length is not a multiple of 8 before CKM_AES_KEY_WRAP_PAD, so its WDEK unwraps (there and in
        // any RFC 5649 implementation) to a longer key.
        let back = self.unwrap_bytes(&session, &w)?;
        if back.as_slice() != plaintext.expose() {
            return Err(err(
                "the token's wrap does not round-trip",
                format!(
                    "a {}-byte key came back as {} bytes; this token pads keys whose length is not a multiple of 8 \
                     (not RFC 5649): use --mechanism rsa-oaep, or a key of a multiple of 8 bytes",
                    plaintext.expose().len(),
                    back.len()
                ),
            ));
        }
        Ok(Wrapped {
            ciphertext: b64(&w),
            key_version: None,
            correlation_id: None,
        })
    }

    fn unwrap(&self, ciphertext: &str) -> Result<Unwrapped, RemoteError> {
        let session = self.session()?;
        let plain = self.unwrap_bytes(&session, &Self::decode(ciphertext)?)?;
        Ok(Unwrapped {
            plaintext: SecretBytes::new(plain),
            key_version: None,
            rewrapped: None,
            correlation_id: None,
        })
    }

    fn rewrap(&self, ciphertext: &str) -> Result<Wrapped, RemoteError> {
        let u = self.unwrap(ciphertext)?;
        self.wrap(&u.plaintext)
    }

    fn generate(&self) -> Result<Generated, RemoteError> {
        let session = self.session()?;
        let key = session
            .generate_random_vec(32)
            .map_err(|e| ck("C_GenerateRandom", e))?;
        let plaintext = SecretBytes::new(Zeroizing::new(key));
        let w = self.wrap_bytes(&session, plaintext.expose())?;
        Ok(Generated {
            plaintext,
            wrapped: Wrapped {
                ciphertext: b64(&w),
                key_version: None,
                correlation_id: None,
            },
        })
    }
}
