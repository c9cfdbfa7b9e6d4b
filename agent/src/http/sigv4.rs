//! AWS Signature Version 4 (`Authorization: AWS4-HMAC-SHA256 ...`) for AWS KMS and S3 / IBM COS with
//! HMAC keys, and the HMAC [`Credentials`] it signs with.

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::secret::SecretString;

/// S3 credentials (HMAC).
#[derive(Debug, Clone)]
pub struct Credentials {
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key (redacted).
    pub secret_access_key: SecretString,
    /// Session token (redacted).
    pub session_token: Option<SecretString>,
}

fn hex(b: &[u8]) -> String {
    diskseal::bundle::hex(b)
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

/// What SigV4 signs.
#[derive(Debug)]
pub struct SigV4<'a> {
    /// HTTP method.
    pub method: &'a str,
    /// URI-encoded path.
    pub path: &'a str,
    /// Canonical query string.
    pub query: &'a str,
    /// Headers to sign; must include `host` and `x-amz-date`.
    pub headers: &'a [(&'a str, &'a str)],
    /// Request body.
    pub body: &'a [u8],
    /// The `x-amz-content-sha256` value when the caller already has it (S3: the part's hex SHA-256,
    /// hashed once for the checksum and the signature, or `UNSIGNED-PAYLOAD`); None hashes `body`.
    pub payload_sha256: Option<&'a str>,
    /// Region.
    pub region: &'a str,
    /// Service, e.g. "kms".
    pub service: &'a str,
    /// The `x-amz-date` value.
    pub amz_date: &'a str,
}

/// A SigV4 `Authorization` header; the headers are signed lower-cased, trimmed and sorted.
pub fn sigv4_authorization(r: &SigV4<'_>, access_key: &str, secret: &str) -> String {
    let SigV4 {
        method,
        path,
        query,
        headers,
        body,
        payload_sha256,
        region,
        service,
        amz_date,
    } = *r;
    let mut h: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    h.sort();
    let canonical_headers: String = h.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
    let signed: Vec<&str> = h.iter().map(|(k, _)| k.as_str()).collect();
    let signed = signed.join(";");
    let payload = payload_sha256.map_or_else(|| hex(&Sha256::digest(body)), str::to_owned);
    let creq = format!("{method}\n{path}\n{query}\n{canonical_headers}\n{signed}\n{payload}");
    let date = &amz_date[..8];
    let scope = format!("{date}/{region}/{service}/aws4_request");
    let sts = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex(&Sha256::digest(creq.as_bytes()))
    );
    let k_secret = Zeroizing::new(format!("AWS4{secret}"));
    let k = hmac(k_secret.as_bytes(), date.as_bytes());
    let k = hmac(&k, region.as_bytes());
    let k = hmac(&k, service.as_bytes());
    let k = hmac(&k, b"aws4_request");
    let sig = hex(&hmac(&k, sts.as_bytes()));
    format!(
        "AWS4-HMAC-SHA256 Credential={access_key}/{scope}, SignedHeaders={signed}, Signature={sig}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// AWS's published SigV4 test suite, case "get-vanilla".
    #[test]
    fn sigv4_get_vanilla() {
        let req = SigV4 {
            method: "GET",
            path: "/",
            query: "",
            headers: &[
                ("host", "example.amazonaws.com"),
                ("x-amz-date", "20150830T123600Z"),
            ],
            body: b"",
            payload_sha256: None,
            region: "us-east-1",
            service: "service",
            amz_date: "20150830T123600Z",
        };
        let auth = sigv4_authorization(
            &req,
            "AKIDEXAMPLE",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        );
        assert_eq!(
            auth,
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, \
             Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
    }
}
