//! Secret strings and bytes: zeroized on drop, `<redacted>` in `Debug`.

use zeroize::Zeroizing;

/// A secret text (API key, bearer token).
#[derive(Clone)]
pub struct SecretString(Zeroizing<String>);

impl SecretString {
    /// Wraps `s`.
    pub fn new(s: String) -> Self {
        SecretString(Zeroizing::new(s))
    }
    /// The text.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Secret bytes (a DEK or passphrase).
#[derive(Clone)]
pub struct SecretBytes(Zeroizing<Vec<u8>>);

impl SecretBytes {
    /// Wraps `b`.
    pub fn new(b: Zeroizing<Vec<u8>>) -> Self {
        SecretBytes(b)
    }
    /// The bytes.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretBytes({} bytes, <redacted>)", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        assert_eq!(
            format!("{:?}", SecretString::new("hunter2".into())),
            "<redacted>"
        );
        assert!(
            !format!(
                "{:?}",
                SecretBytes::new(Zeroizing::new(b"hunter2".to_vec()))
            )
            .contains("hunter2")
        );
    }
}
