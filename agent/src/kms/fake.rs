//! An in-memory [`KeyWrapper`]: WDEKs are random handles into a map. For tests above the trait.

use std::collections::HashMap;
use std::sync::Mutex;

use zeroize::Zeroizing;

use super::{Generated, KeyWrapper, Unwrapped, Wrapped, b64, uuid4};
use crate::http::{RemoteError, RemoteErrorKind};
use crate::secret::SecretBytes;

/// The fake KMS.
#[derive(Debug, Default)]
pub struct FakeWrapper {
    keys: Mutex<HashMap<String, Zeroizing<Vec<u8>>>>,
}

impl FakeWrapper {
    /// An empty fake.
    pub fn new() -> Self {
        Self::default()
    }

    fn store(&self, plain: &[u8]) -> Wrapped {
        let ciphertext = b64(uuid4().as_bytes());
        if let Ok(mut m) = self.keys.lock() {
            m.insert(ciphertext.clone(), Zeroizing::new(plain.to_vec()));
        }
        Wrapped {
            ciphertext,
            key_version: Some("fake-v1".into()),
            correlation_id: Some(uuid4()),
        }
    }
}

impl KeyWrapper for FakeWrapper {
    fn target(&self) -> String {
        "fake:root-key".into()
    }

    fn wrap(&self, plaintext: &SecretBytes) -> Result<Wrapped, RemoteError> {
        Ok(self.store(plaintext.expose()))
    }

    fn unwrap(&self, ciphertext: &str) -> Result<Unwrapped, RemoteError> {
        let found = self
            .keys
            .lock()
            .ok()
            .and_then(|m| m.get(ciphertext).cloned());
        match found {
            Some(k) => Ok(Unwrapped {
                plaintext: SecretBytes::new(k),
                key_version: Some("fake-v1".into()),
                rewrapped: None,
                correlation_id: None,
            }),
            None => Err(RemoteError {
                kind: RemoteErrorKind::Http,
                service: crate::http::Service::Fake,
                endpoint: "fake KMS".into(),
                status: Some(422),
                code: Some("UNPROCESSABLE_CIPHERTEXT_ERR".into()),
                message: "The provided ciphertext is invalid or corrupted".into(),
                correlation_id: None,
                attempts: 1,
            }),
        }
    }

    fn rewrap(&self, ciphertext: &str) -> Result<Wrapped, RemoteError> {
        let u = self.unwrap(ciphertext)?;
        Ok(self.store(u.plaintext.expose()))
    }

    fn generate(&self) -> Result<Generated, RemoteError> {
        let key = diskseal::crypto::keys::random_bytes(32).map_err(|e| RemoteError {
            kind: RemoteErrorKind::BadResponse,
            service: crate::http::Service::Fake,
            endpoint: "fake KMS".into(),
            status: None,
            code: None,
            message: e.message().to_owned(),
            correlation_id: None,
            attempts: 1,
        })?;
        let wrapped = self.store(&key);
        Ok(Generated {
            plaintext: SecretBytes::new(key),
            wrapped,
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn fake_passes_the_conformance_suite() {
        super::super::conformance(&super::FakeWrapper::new());
    }
}
