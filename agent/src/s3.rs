//! Resumable, parallel S3 multipart upload (AWS S3, IBM COS, any S3-compatible server), signed with
//! the SigV4 of [`crate::http::sigv4`] (HMAC keys) or authorised with an IBM IAM bearer token
//! ([`Auth::Iam`], IBM COS), and retried by the shared loop of [`crate::http`].
//!
//! - parts go out on `jobs` threads, each holding one part buffer (memory: jobs × part size);
//! - every part carries `x-amz-checksum-sha256`; with HMAC keys its SHA-256 is signed as
//!   `x-amz-content-sha256` (IBM COS asks for the payload's hash; its official SDK signs it), which
//!   the server checks, so no MD5 is computed; with IAM tokens nothing is signed, and the part
//!   carries `Content-MD5` (what IBM COS checks) instead;
//! - `Content-MD5` on every part with HMAC keys too when asked ([`Options::content_md5`]), or from the
//!   first part a server refuses for lack of it (a bucket with Object Lock or an immutable-storage
//!   retention policy): that part is sent again with it, and so is every part after
//!   it (the switch is a note of the upload and is kept in the state file for a rerun);
//! - a bucket in another region (`301 PermanentRedirect` / `x-amz-bucket-region`) is followed: the
//!   requests are signed for its region (and sent to its AWS endpoint);
//! - each part's answer is checked: an echoed `x-amz-checksum-sha256` must be the part's, and with
//!   IAM tokens an MD5 ETag the part's MD5; a mismatch, or the server's `BadDigest` (the body was
//!   damaged on the way), sends the part again, up to [`PART_TRIES`] times;
//! - with IAM tokens, a 401, or a 403 that names the token, refreshes the token once (one refresh
//!   shared by all workers) and repeats the request;
//! - a state file next to the source (`FILE.diskseal-upload.json`: upload id, part size, source size and
//!   mtime, finished parts with ETag, MD5 and SHA-256) lets a rerun send only the missing parts, after
//!   reconciling with ListParts (moto answers `ListPartsResponse`, S3 `ListPartsResult`: both are read);
//!   it outlives the upload until the caller has recorded the result ([`forget`]), so a run killed
//!   after Complete adopts the object (S3 has forgotten the upload; size and composite ETag match);
//! - the source is read once: a part's bytes give its SHA-256 (and MD5 with IAM tokens) and, in file
//!   order, the whole file's SHA-256 (`InOrder`);
//! - after Complete, HEAD must show the source's size and the composite ETag `md5(part ETags)-N`.

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use md5::Md5;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::http::RetryPolicy;
use crate::http::iam::IamTokens;
pub use crate::http::sigv4::Credentials;
use crate::http::sigv4::{SigV4, sigv4_authorization};
use crate::http::{RemoteError, RemoteErrorKind, service};
use crate::http::{Reply, with_retries};

/// S3's limit on parts per upload.
pub const MAX_PARTS: u64 = 10_000;
/// S3's minimum size of every part but the last.
pub const MIN_PART: u64 = 5 << 20;
/// S3's maximum part size.
pub const MAX_PART: u64 = 5 << 30;
/// The default part size for small files.
pub const DEFAULT_PART: u64 = 8 << 20;
/// Times a part is sent when the server's answer shows it did not arrive intact.
pub const PART_TRIES: u32 = 3;

/// Where an object goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Base URL, no trailing slash.
    pub endpoint: String,
    /// Signing region.
    pub region: String,
    /// Bucket.
    pub bucket: String,
    /// Object key.
    pub key: String,
}

impl Target {
    /// Parses `s3://BUCKET/KEY` (AWS endpoint of `region`) or `cos://REGION/BUCKET/KEY` (IBM COS's
    /// regional public endpoint); `endpoint` overrides the base URL.
    pub fn parse(url: &str, region: Option<&str>, endpoint: Option<&str>) -> Result<Target> {
        let bad = || {
            Error::Config(format!(
                "{url}: expected s3://BUCKET/KEY or cos://REGION/BUCKET/KEY"
            ))
        };
        let (region, rest, default_endpoint) = if let Some(rest) = url.strip_prefix("s3://") {
            let r = region.unwrap_or("us-east-1").to_owned();
            let e = format!("https://s3.{r}.amazonaws.com");
            (r, rest, e)
        } else if let Some(rest) = url.strip_prefix("cos://") {
            let (r, rest) = rest.split_once('/').ok_or_else(bad)?;
            if r.is_empty() {
                return Err(bad());
            }
            (
                r.to_owned(),
                rest,
                format!("https://s3.{r}.cloud-object-storage.appdomain.cloud"),
            )
        } else {
            return Err(bad());
        };
        let (bucket, key) = rest.split_once('/').ok_or_else(bad)?;
        if bucket.is_empty() || key.is_empty() {
            return Err(bad());
        }
        let endpoint = endpoint.map_or(default_endpoint, |e| e.trim_end_matches('/').to_owned());
        Ok(Target {
            endpoint,
            region,
            bucket: bucket.into(),
            key: key.into(),
        })
    }

    /// The object's URL, path style.
    pub fn url(&self) -> String {
        format!(
            "{}/{}/{}",
            self.endpoint,
            self.bucket,
            uri_encode(&self.key, false)
        )
    }
}

/// How requests are authorised.
#[derive(Debug, Clone)]
pub enum Auth {
    /// SigV4 with HMAC keys (AWS, IBM COS HMAC credentials, any S3 server).
    Hmac(Credentials),
    /// `Authorization: Bearer` with IBM Cloud IAM tokens made from an API key (IBM COS).
    Iam(Arc<IamTokens>),
}

impl Auth {
    /// What the dry runs and audit entries call it.
    pub fn name(&self) -> &'static str {
        match self {
            Auth::Hmac(_) => "hmac",
            Auth::Iam(_) => "iam",
        }
    }

    /// The credential behind it, for the audit log: `hmac` keys, or an IBM Cloud `apikey`.
    pub fn credential(&self) -> &'static str {
        match self {
            Auth::Hmac(_) => "hmac",
            Auth::Iam(_) => "apikey",
        }
    }

    /// The `Authorization` header as the dry runs show it.
    pub fn redacted(&self) -> &'static str {
        match self {
            Auth::Hmac(_) => "AWS4-HMAC-SHA256 <redacted>",
            Auth::Iam(_) => "Bearer <redacted IAM token>",
        }
    }
}

/// The dry run of an upload of `size` bytes to `url` with `auth` (none: no credentials were found):
/// the requests it would send, one per line. `done` is appended to each line (a step an earlier run
/// finished).
pub fn plan(
    url: &str,
    size: u64,
    o: &Options,
    max_attempts: u32,
    auth: Option<&Auth>,
    done: &str,
) -> Result<Vec<String>> {
    let part = choose_part_size(size, o.part_size)?;
    let n = size.div_ceil(part).max(1);
    let authorization = auth.map_or(
        "<no S3 credentials found: the upload would stop here>",
        Auth::redacted,
    );
    let checks = match auth {
        Some(Auth::Hmac(_)) if !o.content_md5 => {
            "x-amz-checksum-sha256, signed x-amz-content-sha256 (Content-MD5 too from the first part \
             refused without it)"
        }
        _ => "Content-MD5, x-amz-checksum-sha256",
    };
    Ok(vec![
        format!("HEAD {url}{done}"),
        format!("POST {url}?uploads (x-amz-checksum-algorithm: SHA256){done}"),
        format!(
            "PUT  {url}?partNumber=1..{n}&uploadId=<id> ({n} part{} of {part} bytes, {} in parallel, up to {} attempts each; {checks}; Authorization: {authorization}){done}",
            if n == 1 { "" } else { "s" },
            o.jobs,
            max_attempts.max(1)
        ),
        format!("POST {url}?uploadId=<id> (CompleteMultipartUpload), then HEAD {url}{done}"),
    ])
}

impl From<Credentials> for Auth {
    fn from(c: Credentials) -> Auth {
        Auth::Hmac(c)
    }
}

/// URI-encodes per SigV4: unreserved characters stay, everything else is `%XX`; `/` stays when
/// `slash_too` is false (object key paths).
pub fn uri_encode(s: &str, slash_too: bool) -> String {
    let mut o = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'_' | b'.' | b'~')
            || (b == b'/' && !slash_too)
        {
            o.push(b as char);
        } else {
            o.push_str(&format!("%{b:02X}"));
        }
    }
    o
}

fn hex(b: &[u8]) -> String {
    diskseal::bundle::hex(b)
}

/// True for a plain MD5 ETag (32 hex digits); SSE-KMS and some gateways answer other ETags, which
/// cannot be checked against the part's MD5 (Content-MD5 was still checked by the server).
fn looks_like_md5(etag: &str) -> bool {
    etag.len() == 32 && etag.bytes().all(|b| b.is_ascii_hexdigit())
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .filter_map(|i| u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn unquote(etag: &str) -> String {
    crate::wire::unquote(etag)
}

/// One S3 client.
#[derive(Debug)]
pub struct Client {
    t: Target,
    /// The signing region and base URL, moved when S3 says the bucket is elsewhere.
    at: std::sync::RwLock<(String, String)>,
    auth: Auth,
    retry: RetryPolicy,
    agent: ureq::Agent,
}

/// An UploadPart answer.
#[derive(Debug, Clone)]
pub struct PartReply {
    /// The ETag, unquoted.
    pub etag: String,
    /// The `x-amz-checksum-sha256` the server echoed (base64), if any.
    pub checksum_sha256: Option<String>,
}

/// True when a 401/403 answer is about the bearer token (expired, revoked, malformed) rather than
/// a permission the token's identity lacks; a 403 `AccessDenied` counts, since an expired IAM token
/// gets one from IBM COS: the refresh is tried once, then the error stands.
fn token_refused(r: &Reply) -> bool {
    match r.status {
        401 => true,
        403 => {
            let code = crate::wire::s3_error(&r.body).reason.unwrap_or_default();
            let code = code.as_str();
            matches!(
                code,
                "AccessDenied" | "ExpiredToken" | "InvalidToken" | "TokenRefreshRequired" | ""
            ) || r.body.to_ascii_lowercase().contains("token")
        }
        _ => false,
    }
}

/// True for the server saying a part's bytes do not match its Content-MD5 / checksum headers.
fn digest_refused(e: &Error) -> bool {
    matches!(e, Error::Remote(k) if k.status == Some(400) && matches!(
        k.code.as_deref(),
        Some("BadDigest" | "InvalidDigest" | "XAmzContentSHA256Mismatch" | "InvalidChecksum")
    ))
}

/// True for the server refusing a part because it carries no `Content-MD5`: S3 and IBM COS buckets with
/// Object Lock (or COS's immutable-storage retention) may require it. AWS answers `400 InvalidRequest`
/// "Content-MD5 OR x-amz-checksum- HTTP header is required for Put Part requests with Object Lock
/// parameters" (its PutObject wording: "Content-MD5 HTTP header is required ..."); S3-compatible servers
/// `400 MissingContentMD5`. A refused digest (`BadDigest`, ...) is not this.
fn md5_required(e: &Error) -> bool {
    matches!(e, Error::Remote(k) if k.status == Some(400)
        && !digest_refused(e)
        && (k.code.as_deref() == Some("MissingContentMD5")
            || k.message.to_ascii_lowercase().contains("content-md5")))
}

fn with_headers<B>(
    mut r: ureq::RequestBuilder<B>,
    h: &[(String, String)],
) -> ureq::RequestBuilder<B> {
    for (k, v) in h {
        if k != "host" {
            r = r.header(k.as_str(), v.as_str());
        }
    }
    r
}

impl Client {
    /// A client; nothing is sent yet.
    pub fn new(t: Target, auth: impl Into<Auth>, retry: RetryPolicy) -> Client {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(30)))
            // S3's region redirect (301 PermanentRedirect) has no Location: it is handled here.
            .max_redirects(0)
            .timeout_global(Some(retry.timeout.max(Duration::from_secs(600))))
            .build();
        Client {
            at: std::sync::RwLock::new((t.region.clone(), t.endpoint.clone())),
            t,
            auth: auth.into(),
            retry,
            agent: ureq::Agent::new_with_config(config),
        }
    }

    /// The target.
    pub fn target(&self) -> &Target {
        &self.t
    }

    fn label(&self) -> String {
        format!("S3 at {}", self.t.endpoint)
    }

    /// Whether requests carry a signed payload hash (`x-amz-content-sha256`) the server checks.
    fn signs_payload(&self) -> bool {
        matches!(self.auth, Auth::Hmac(_))
    }

    /// One signed request on the object (`object` true) or the bucket, with retries.
    fn send(
        &self,
        method: &str,
        object: bool,
        query: &[(&str, String)],
        extra: &[(&str, String)],
        body: &[u8],
    ) -> Result<Reply> {
        self.send_hashed(
            method,
            object,
            query,
            extra,
            body,
            hex(&Sha256::digest(body)),
        )
    }

    /// [`Client::send`] with the `x-amz-content-sha256` value given: the body's hex SHA-256, or `UNSIGNED-PAYLOAD`.
    fn send_hashed(
        &self,
        method: &str,
        object: bool,
        query: &[(&str, String)],
        extra: &[(&str, String)],
        body: &[u8],
        payload: String,
    ) -> Result<Reply> {
        let path = if object {
            format!("/{}/{}", self.t.bucket, uri_encode(&self.t.key, false))
        } else {
            format!("/{}", self.t.bucket)
        };
        let mut q: Vec<(String, String)> = query
            .iter()
            .map(|(k, v)| (uri_encode(k, true), uri_encode(v, true)))
            .collect();
        q.sort();
        let query: String = q
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        let mut refused = None;
        let mut moved = false;
        loop {
            let (region, endpoint) = self.at.read().map_or_else(
                |_| (self.t.region.clone(), self.t.endpoint.clone()),
                |a| a.clone(),
            );
            let url = if query.is_empty() {
                format!("{endpoint}{path}")
            } else {
                format!("{endpoint}{path}?{query}")
            };
            let host = endpoint.split("://").nth(1).unwrap_or(&endpoint).to_owned();
            let bearer = match (&self.auth, refused) {
                (Auth::Hmac(_), _) => None,
                (Auth::Iam(iam), None) => Some(iam.token()?),
                (Auth::Iam(iam), Some(g)) => Some(iam.refresh(g)?),
            };
            let reply = with_retries(service::S3, &self.retry, &self.label(), || {
                let mut h: Vec<(String, String)> = vec![("host".into(), host.clone())];
                h.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
                match (&self.auth, &bearer) {
                    (Auth::Hmac(c), _) => {
                        let now = SystemTime::now()
                            .duration_since(UNIX_EPOCH)
                            .unwrap_or_default()
                            .as_secs();
                        let amz_date = crate::time::amz_date(now);
                        h.push(("x-amz-date".into(), amz_date.clone()));
                        h.push(("x-amz-content-sha256".into(), payload.clone()));
                        if let Some(t) = &c.session_token {
                            h.push(("x-amz-security-token".into(), t.expose().to_owned()));
                        }
                        let hr: Vec<(&str, &str)> =
                            h.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                        let sig = SigV4 {
                            method,
                            path: &path,
                            query: &query,
                            headers: &hr,
                            body,
                            payload_sha256: Some(&payload),
                            region: &region,
                            service: "s3",
                            amz_date: &amz_date,
                        };
                        let auth = sigv4_authorization(
                            &sig,
                            &c.access_key_id,
                            c.secret_access_key.expose(),
                        );
                        h.push(("authorization".into(), auth));
                    }
                    (Auth::Iam(_), Some(b)) => {
                        h.push((
                            "authorization".into(),
                            format!("Bearer {}", b.token.expose()),
                        ));
                    }
                    (Auth::Iam(_), None) => {}
                }
                let r = match method {
                    "GET" => with_headers(self.agent.get(&url), &h).call(),
                    "HEAD" => with_headers(self.agent.head(&url), &h).call(),
                    "DELETE" => with_headers(self.agent.delete(&url), &h).call(),
                    "PUT" => with_headers(self.agent.put(&url), &h).send(body),
                    _ => with_headers(self.agent.post(&url), &h).send(body),
                };
                // The bearer token is in `h`: wipe it.
                for (_, v) in &mut h {
                    zeroize::Zeroize::zeroize(v);
                }
                r
            })?;
            if let Some(b) = &bearer
                && refused.is_none()
                && token_refused(&reply)
            {
                refused = Some(b.generation);
                continue;
            }
            // The bucket is in another region (301 PermanentRedirect, or 400 with the region named):
            // sign for that region, and for an AWS endpoint of the old region go to the new one's.
            if let Some(r) = reply
                .bucket_region
                .clone()
                .filter(|r| !moved && *r != region && matches!(reply.status, 301 | 307 | 400))
            {
                let aws = format!("https://s3.{region}.amazonaws.com");
                let endpoint = if endpoint == aws {
                    format!("https://s3.{r}.amazonaws.com")
                } else {
                    endpoint
                };
                if let Ok(mut a) = self.at.write() {
                    *a = (r, endpoint);
                }
                moved = true;
                continue;
            }
            return Ok(reply);
        }
    }

    fn fail(&self, what: &str, r: &Reply) -> Error {
        let e = crate::wire::s3_error(&r.body);
        let reason = e.reason.or_else(|| match r.status {
            404 => Some("NotFound".into()),
            403 => Some("Forbidden".into()),
            _ => None,
        });
        let message = e
            .message
            .unwrap_or_else(|| r.body.chars().take(200).collect());
        Error::Remote(RemoteError {
            kind: RemoteErrorKind::Http,
            service: service::S3,
            endpoint: format!("{} ({what} {})", self.label(), self.t.url()),
            status: Some(r.status),
            code: reason,
            message,
            correlation_id: r.correlation_id.clone().or(e.request_id),
            attempts: 1,
        })
    }

    /// HEAD on the object: `Some((size, etag))`, `None` when it does not exist.
    pub fn head(&self) -> Result<Option<(u64, String)>> {
        let r = self.send("HEAD", true, &[], &[], b"")?;
        match r.status {
            200 => Ok(Some((
                r.content_length.unwrap_or(0),
                unquote(r.etag.as_deref().unwrap_or("")),
            ))),
            404 => Ok(None),
            _ => {
                // HEAD replies carry no body: ask again with a 1-byte GET to get S3's Code and Message.
                let g = self.send("GET", true, &[], &[("range", "bytes=0-0".into())], b"")?;
                Err(self.fail("HEAD", if g.status >= 300 { &g } else { &r }))
            }
        }
    }

    /// CreateMultipartUpload; returns the upload id.
    pub fn create(&self) -> Result<String> {
        let r = self.send(
            "POST",
            true,
            &[("uploads", String::new())],
            &[("x-amz-checksum-algorithm", "SHA256".into())],
            b"",
        )?;
        if r.status != 200 {
            return Err(self.fail("CreateMultipartUpload", &r));
        }
        crate::wire::s3_initiate(&r.body)
            .ok_or_else(|| self.fail("CreateMultipartUpload (no UploadId)", &r))
    }

    /// UploadPart; returns the ETag and the echoed checksum.
    pub fn put_part(
        &self,
        upload_id: &str,
        n: u32,
        data: &[u8],
        md5: Option<&[u8]>,
        sha: &[u8],
    ) -> Result<PartReply> {
        let q = [
            ("partNumber", n.to_string()),
            ("uploadId", upload_id.to_owned()),
        ];
        let mut h = vec![("x-amz-checksum-sha256", b64(sha))];
        if let Some(md5) = md5 {
            h.push(("content-md5", b64(md5)));
        }
        // The payload's SHA-256 is signed (x-amz-content-sha256), as IBM COS asks and its official SDK
        // does; it is the part's SHA-256 the caller has already computed.
        let r = self.send_hashed("PUT", true, &q, &h, data, hex(sha))?;
        if r.status != 200 {
            return Err(self.fail(&format!("UploadPart {n}"), &r));
        }
        Ok(PartReply {
            etag: unquote(r.etag.as_deref().unwrap_or("")),
            checksum_sha256: r.checksum_sha256.map(|c| c.trim().to_owned()),
        })
    }

    /// ListParts (all pages): part number → ETag (empty when the server omits it).
    pub fn list_parts(&self, upload_id: &str) -> Result<Option<BTreeMap<u32, String>>> {
        let mut out = BTreeMap::new();
        let mut marker = 0u32;
        loop {
            let q = [
                ("uploadId", upload_id.to_owned()),
                ("part-number-marker", marker.to_string()),
            ];
            let r = self.send("GET", true, &q, &[], b"")?;
            if r.status == 404 {
                return Ok(None);
            }
            if r.status != 200 {
                return Err(self.fail("ListParts", &r));
            }
            let page = crate::wire::s3_list_parts(&r.body);
            out.extend(page.parts);
            match page.next_marker {
                Some(m) if m > marker => marker = m,
                _ => return Ok(Some(out)),
            }
        }
    }

    /// CompleteMultipartUpload; returns the ETag and, when the server gives it, the object's composite
    /// `ChecksumSHA256` (`base64(sha256(part checksums))-N` on S3).
    pub fn complete(
        &self,
        upload_id: &str,
        parts: &BTreeMap<u32, PartDone>,
    ) -> Result<(String, Option<String>)> {
        let mut x = String::from(
            "<CompleteMultipartUpload xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">",
        );
        for (n, p) in parts {
            x.push_str(&format!("<Part><PartNumber>{n}</PartNumber><ETag>\"{}\"</ETag><ChecksumSHA256>{}</ChecksumSHA256></Part>", p.etag, p.sha256_b64));
        }
        x.push_str("</CompleteMultipartUpload>");
        // As the official COS SDK sends it: Content-MD5, no content type.
        let r = self.send(
            "POST",
            true,
            &[("uploadId", upload_id.to_owned())],
            &[("content-md5", b64(&Md5::digest(x.as_bytes())))],
            x.as_bytes(),
        )?;
        // S3 may answer 200 with an <Error> body.
        match crate::wire::s3_complete(&r.body) {
            Ok(done) if r.status == 200 => Ok(done),
            _ => Err(self.fail("CompleteMultipartUpload", &r)),
        }
    }

    /// AbortMultipartUpload (a gone upload counts as aborted).
    pub fn abort(&self, upload_id: &str) -> Result<()> {
        let r = self.send(
            "DELETE",
            true,
            &[("uploadId", upload_id.to_owned())],
            &[],
            b"",
        )?;
        match r.status {
            200 | 204 | 404 => Ok(()),
            _ => Err(self.fail("AbortMultipartUpload", &r)),
        }
    }
}

/// A finished part.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PartDone {
    /// The server's ETag (unquoted).
    pub etag: String,
    /// Hex MD5 of the part, when computed (IAM uploads, and parts adopted on resume); empty when
    /// the signed payload hash was the check.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub md5: String,
    /// Base64 SHA-256 of the part.
    pub sha256_b64: String,
}

/// The state file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    /// Format version.
    pub version: u32,
    /// The object URL.
    pub url: String,
    /// The multipart upload id.
    pub upload_id: String,
    /// Part size.
    pub part_size: u64,
    /// Source size.
    pub size: u64,
    /// Source mtime, ns since the epoch.
    pub mtime_ns: u128,
    /// Finished parts.
    pub parts: BTreeMap<u32, PartDone>,
    /// The server refused a part without `Content-MD5`: every part carries it (a rerun too).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub content_md5: bool,
}

/// `FILE.diskseal-upload.json`.
pub fn state_path(source: &Path) -> PathBuf {
    let mut s = source.as_os_str().to_owned();
    s.push(".diskseal-upload.json");
    PathBuf::from(s)
}

fn save_state(path: &Path, s: &State) -> Result<()> {
    let text = serde_json::to_vec_pretty(s).unwrap_or_default();
    write_atomically(path, &text).map_err(|e| Error::io("write upload state", path, e))
}

/// Writes `bytes` to `path` (a JSON state file) so that a crash or power loss at any point leaves the
/// old or the new file, whole: a temporary file beside it, fsynced, renamed over it, then the directory
/// fsynced.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Reads the state file: `Ok(None)` when absent.
pub fn load_state(path: &Path) -> Result<Option<State>> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
            Error::Upload(format!("upload state {} is corrupt ({e}); run with --abort to abort the upload it names, or delete it to start over", path.display()))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("read upload state", path, e)),
    }
}

/// The part size: `requested`, else 8 MiB grown (in MiB steps) until `size` fits in 10,000 parts.
pub fn choose_part_size(size: u64, requested: Option<u64>) -> Result<u64> {
    let p = match requested {
        Some(p) => p,
        None => DEFAULT_PART.max(size.div_ceil(MAX_PARTS).div_ceil(1 << 20) << 20),
    };
    if p == 0 || p > MAX_PART {
        return Err(Error::Config(format!(
            "part size {p} is out of range (1 B to 5 GiB)"
        )));
    }
    if size.div_ceil(p) > MAX_PARTS {
        return Err(Error::Config(format!(
            "{size} bytes in parts of {p} would need more than {MAX_PARTS} parts"
        )));
    }
    Ok(p)
}

/// Upload options.
#[derive(Debug, Clone)]
pub struct Options {
    /// Parallel part uploads.
    pub jobs: usize,
    /// Part size override.
    pub part_size: Option<u64>,
    /// Overwrite an existing object.
    pub force: bool,
    /// `Content-MD5` on every part with HMAC keys too (IAM uploads always send it).
    pub content_md5: bool,
}

/// What [`upload`] tells its caller as it goes.
#[derive(Debug, Clone, Copy)]
pub enum Progress<'a> {
    /// The multipart upload `upload_id` is under way; its state is in `state` (a rerun resumes it).
    Started {
        /// The upload id.
        upload_id: &'a str,
        /// The state file.
        state: &'a Path,
    },
    /// `done` of the `total` bytes this run sends are sent, after `elapsed`.
    Sent {
        /// Bytes sent.
        done: u64,
        /// Bytes to send.
        total: u64,
        /// Since the first part.
        elapsed: Duration,
    },
    /// Every part is sent.
    PartsDone,
}

/// What an upload did.
#[derive(Debug, Clone, Serialize)]
pub struct Uploaded {
    /// Object URL.
    pub url: String,
    /// Bytes.
    pub size: u64,
    /// Hex SHA-256 of the source.
    pub sha256: String,
    /// The object's ETag.
    pub etag: String,
    /// Parts in the object.
    pub parts: usize,
    /// Parts sent by this run.
    pub parts_uploaded: usize,
    /// Parts found done by an earlier run.
    pub parts_reused: usize,
    /// Whether an earlier run's upload was resumed.
    pub resumed: bool,
    /// Notes for the user (e.g. "source changed, started over").
    pub notes: Vec<String>,
}

fn mtime_ns(m: &std::fs::Metadata) -> u128 {
    m.modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos())
}

fn read_part(
    f: &std::fs::File,
    path: &Path,
    buf: &mut Vec<u8>,
    off: u64,
    len: usize,
) -> Result<()> {
    buf.resize(len, 0);
    f.read_exact_at(buf, off).map_err(|e| {
        let why = if e.kind() == std::io::ErrorKind::UnexpectedEof {
            "the file ended early: it shrank after the upload started".to_owned()
        } else {
            e.to_string()
        };
        Error::Upload(format!(
            "cannot read {} at offset {off} ({len} bytes): {why}",
            path.display()
        ))
    })
}

/// Removes `source`'s state file once the caller has recorded the finished upload: until then, a
/// run killed after the upload completed finds the state, and the next one adopts the object
/// instead of uploading it again.
pub fn forget(source: &Path) {
    let _ = std::fs::remove_file(state_path(source));
}

/// Aborts the upload named by `source`'s state file and removes it; returns the upload id.
pub fn abort(client: &Client, source: &Path) -> Result<Option<String>> {
    let sp = state_path(source);
    let Some(s) = load_state(&sp)? else {
        return Ok(None);
    };
    client.abort(&s.upload_id)?;
    std::fs::remove_file(&sp).map_err(|e| Error::io("remove upload state", &sp, e))?;
    Ok(Some(s.upload_id))
}

/// Uploads `source` (resuming per its state file).
pub fn upload(
    client: &Client,
    source: &Path,
    o: &Options,
    on: &mut dyn FnMut(Progress<'_>),
) -> Result<Uploaded> {
    let f = std::fs::File::open(source).map_err(|e| Error::io("open", source, e))?;
    let meta = f.metadata().map_err(|e| Error::io("stat", source, e))?;
    let (size, mtime) = (meta.len(), mtime_ns(&meta));
    let sp = state_path(source);
    let url = client.target().url();
    let mut notes = Vec::new();
    let mut state = match load_state(&sp)? {
        Some(s)
            if !s.url.ends_with(&format!(
                "/{}/{}",
                client.t.bucket,
                uri_encode(&client.t.key, false)
            )) =>
        {
            return Err(Error::Upload(format!(
                "{} holds an unfinished upload of this file to {}; finish it (rerun with that URL) or abort it (--abort) first",
                sp.display(),
                s.url
            )));
        }
        Some(s)
            if s.size != size
                || s.mtime_ns != mtime
                || o.part_size.is_some_and(|p| p != s.part_size) =>
        {
            notes.push(format!("{} changed since the interrupted upload {} began (size/mtime/part size differ): aborted it, starting over", source.display(), s.upload_id));
            client.abort(&s.upload_id)?;
            None
        }
        s => s,
    };
    // Killed after CompleteMultipartUpload but before the state file was removed: S3 has forgotten
    // the upload, and the object is there, made of exactly the parts the state recorded.
    let mut completed_earlier = false;
    if let Some(s) = &mut state {
        match client.list_parts(&s.upload_id)? {
            None if is_the_completed_object(client, s)? => {
                notes.push(format!(
                    "upload {} was completed by an earlier run: the object is there, made of its parts",
                    s.upload_id
                ));
                completed_earlier = true;
            }
            None => {
                notes.push(format!(
                    "upload {} is gone on the server (aborted or expired): starting over",
                    s.upload_id
                ));
                state = None;
            }
            Some(listed) => {
                // Keep parts the server confirms; adopt parts it has that the state missed (killed between
                // the part's 200 and the state write) when their ETag is the local MD5.
                s.parts
                    .retain(|n, p| listed.get(n).is_some_and(|e| e.is_empty() || *e == p.etag));
                let mut buf = Vec::new();
                for (n, etag) in &listed {
                    if s.parts.contains_key(n) || etag.is_empty() {
                        continue;
                    }
                    let off = u64::from(*n - 1) * s.part_size;
                    if off >= size {
                        continue;
                    }
                    read_part(
                        &f,
                        source,
                        &mut buf,
                        off,
                        (size - off).min(s.part_size) as usize,
                    )?;
                    let md5 = hex(&Md5::digest(&buf));
                    if md5 == *etag {
                        s.parts.insert(
                            *n,
                            PartDone {
                                etag: etag.clone(),
                                md5,
                                sha256_b64: b64(&Sha256::digest(&buf)),
                            },
                        );
                    }
                }
                save_state(&sp, s)?;
            }
        }
    }
    let resumed = state.is_some();
    let mut state = match state {
        Some(s) => s,
        None => {
            if !o.force
                && let Some((sz, _)) = client.head()?
            {
                return Err(Error::Refused(format!(
                    "upload: {url} already exists ({sz} bytes); use --force to overwrite it"
                )));
            }
            let part_size = choose_part_size(size, o.part_size)?;
            let upload_id = client.create()?;
            let s = State {
                version: 1,
                url: url.clone(),
                upload_id,
                part_size,
                size,
                mtime_ns: mtime,
                parts: BTreeMap::new(),
                content_md5: false,
            };
            save_state(&sp, &s)?;
            s
        }
    };
    let nparts = size.div_ceil(state.part_size).max(1) as u32;
    let reused = state.parts.len();
    let missing: Vec<u32> = (1..=nparts)
        .filter(|n| !state.parts.contains_key(n))
        .collect();
    let interrupted = |e: Error, id: &str| {
        Error::Upload(format!(
            "{e}\nupload {id} interrupted; its state is in {}: rerun the same command to resume, or add --abort to abort it",
            sp.display()
        ))
    };
    let upload_id = state.upload_id.clone();
    on(Progress::Started {
        upload_id: &upload_id,
        state: &sp,
    });
    let (sha, failure) = send_parts(
        client, &f, source, &mut state, &sp, &missing, o, &mut notes, on,
    );
    if let Some(e) = failure {
        return Err(interrupted(e, &upload_id));
    }
    let sha = sha?;
    let (etag, composite_checksum) = if completed_earlier {
        (String::new(), None)
    } else {
        match client.complete(&upload_id, &state.parts) {
            Ok(done) => done,
            // An earlier attempt's answer was lost and the retry found the upload gone.
            Err(Error::Remote(e))
                if e.status == Some(404) && is_the_completed_object(client, &state)? =>
            {
                notes.push(format!(
                    "upload {upload_id} was completed by an earlier attempt whose answer was lost: \
                     the object is there, made of its parts"
                ));
                (String::new(), None)
            }
            Err(e) => return Err(interrupted(e, &upload_id)),
        }
    };
    let expected = composite_etag(&state.parts);
    let Some((got_size, got_etag)) = client.head()? else {
        return Err(Error::Upload(format!(
            "{url}: HEAD after CompleteMultipartUpload says it does not exist"
        )));
    };
    if got_size != size {
        return Err(Error::Upload(format!(
            "{url}: the object has {got_size} bytes, the source {size}"
        )));
    }
    let md5_etags = state.parts.values().all(|p| looks_like_md5(&p.etag));
    if !md5_etags {
        match composite_checksum.filter(|c| c.contains('-')) {
            Some(got) => {
                let mut shas = Vec::new();
                for p in state.parts.values() {
                    shas.extend(
                        base64::engine::general_purpose::STANDARD
                            .decode(&p.sha256_b64)
                            .unwrap_or_default(),
                    );
                }
                let want = format!("{}-{}", b64(&Sha256::digest(&shas)), state.parts.len());
                if got != want {
                    return Err(Error::Upload(format!(
                        "{url}: the composite ChecksumSHA256 {got} is not that of the parts sent ({want})"
                    )));
                }
                notes.push("the server's part ETags are not MD5s (e.g. SSE-KMS): checked the size and the composite ChecksumSHA256 instead of the composite ETag".into());
            }
            None => notes.push("the server's part ETags are not MD5s (e.g. SSE-KMS): checked the size, not the composite ETag".into()),
        }
    } else if got_etag != expected {
        return Err(Error::Upload(format!(
            "{url}: ETag {got_etag} is not the composite of the parts sent ({expected})"
        )));
    }
    Ok(Uploaded {
        url,
        size,
        sha256: sha,
        etag: if etag.is_empty() { got_etag } else { etag },
        parts: state.parts.len(),
        parts_uploaded: missing.len(),
        parts_reused: reused,
        resumed,
        notes,
    })
}

/// The composite ETag S3 gives an object completed from `parts`: `md5(part ETags)-N` (each part's
/// ETag is the MD5 the server computed of the bytes it stored).
fn composite_etag(parts: &BTreeMap<u32, PartDone>) -> String {
    let mut md5s = Vec::new();
    for p in parts.values() {
        md5s.extend(unhex(&p.etag));
    }
    format!("{}-{}", hex(&Md5::digest(&md5s)), parts.len())
}

/// Whether the object exists as the completion of the upload `s` describes: `s` holds every part,
/// and the object has the source's size and the composite ETag of those parts.
fn is_the_completed_object(client: &Client, s: &State) -> Result<bool> {
    let nparts = s.size.div_ceil(s.part_size).max(1);
    if s.parts.len() as u64 != nparts || !s.parts.values().all(|p| looks_like_md5(&p.etag)) {
        return Ok(false);
    }
    Ok(client
        .head()?
        .is_some_and(|(size, etag)| size == s.size && etag == composite_etag(&s.parts)))
}

/// Sends `missing` parts on `o.jobs` threads, each part read once for its digests, the upload and the
/// whole source's SHA-256 ([`InOrder`]); records each finished part in the state file. Returns (the
/// source's sha256, the first failure).
#[allow(clippy::too_many_arguments)]
fn send_parts(
    client: &Client,
    f: &std::fs::File,
    source: &Path,
    state: &mut State,
    sp: &Path,
    missing: &[u32],
    o: &Options,
    notes: &mut Vec<String>,
    on: &mut dyn FnMut(Progress<'_>),
) -> (Result<String>, Option<Error>) {
    let size = state.size;
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let part_size = state.part_size;
    let upload_id = state.upload_id.clone();
    let total_missing: u64 = missing
        .iter()
        .map(|n| (size - u64::from(n - 1) * part_size).min(part_size))
        .sum();
    let nparts = size.div_ceil(part_size).max(1) as u32;
    let whole = InOrder {
        f,
        source,
        size,
        part_size,
        nparts,
        sent_now: missing.iter().copied().collect(),
        st: std::sync::Mutex::new((1, BTreeMap::new(), Sha256::new())),
    };
    let md5 = Md5Mode {
        on: AtomicBool::new(o.content_md5 || state.content_md5 || !client.signs_payload()),
        refused: std::sync::OnceLock::new(),
    };
    std::thread::scope(|sc| {
        let (tx, rx) = mpsc::channel::<Result<(u32, Sent, u64)>>();
        for _ in 0..o.jobs.max(1) {
            let tx = tx.clone();
            let (next, stop, upload_id, whole, md5) = (&next, &stop, &upload_id, &whole, &md5);
            sc.spawn(move || {
                let mut buf = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&n) = missing.get(i) else { break };
                    let off = u64::from(n - 1) * part_size;
                    let len = (size - off).min(part_size);
                    let r = send_part(client, whole, md5, &mut buf, upload_id, n, off, len)
                        .map(|sent| (n, sent, len));
                    let failed = r.is_err();
                    if tx.send(r).is_err() || failed {
                        break;
                    }
                }
            });
        }
        drop(tx);
        let mut failure = None;
        let (t0, mut done) = (Instant::now(), 0u64);
        let (mut checks, mut resent) = (BTreeMap::new(), 0u32);
        for r in rx {
            match r {
                Ok((n, sent, len)) => {
                    *checks.entry(sent.check).or_insert(0) += 1;
                    resent += sent.tries - 1;
                    state.parts.insert(n, sent.part);
                    state.content_md5 |= md5.refused.get().is_some();
                    if let Err(e) = save_state(sp, state) {
                        failure.get_or_insert(e);
                        stop.store(true, Ordering::Relaxed);
                    }
                    done += len;
                    on(Progress::Sent {
                        done,
                        total: total_missing,
                        elapsed: t0.elapsed(),
                    });
                }
                Err(e) => {
                    failure.get_or_insert(e);
                    stop.store(true, Ordering::Relaxed);
                }
            }
        }
        on(Progress::PartsDone);
        let sha = whole.finish();
        if resent > 0 {
            notes.push(format!("{resent} part(s) sent again: the server's answer showed they had not arrived intact"));
        }
        if let Some(why) = md5.refused.get() {
            notes.push(format!("{why}: it and every part after it went out with Content-MD5 (buckets with Object Lock or an immutable-storage retention policy require it); pass --content-md5 to send it from the first part"));
        }
        if let Some(k) = checks.get(&Check::Checksum) {
            notes.push(format!("{k} part(s) answered with ETags that are not MD5s (e.g. SSE-KMS): checked against the x-amz-checksum-sha256 the server echoed"));
        }
        if let Some(k) = checks.get(&Check::ServerOnly) {
            notes.push(format!("{k} part(s) answered with ETags that are not MD5s and no checksum: not checked here (the server checked the signed payload hash or Content-MD5, and x-amz-checksum-sha256)"));
        }
        (sha, failure)
    })
}

/// How a sent part was checked against the server's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Check {
    /// The payload's SHA-256 was signed (`x-amz-content-sha256`) and the server checked it (and an
    /// echoed checksum, if any, is the part's SHA-256).
    Signed,
    /// The ETag is the part's MD5 (and an echoed checksum, if any, its SHA-256).
    Md5,
    /// The ETag is not an MD5; the echoed `x-amz-checksum-sha256` is the part's.
    Checksum,
    /// Neither can be checked: the server's own Content-MD5 / checksum validation is all there is.
    ServerOnly,
}

/// Whether parts carry `Content-MD5`, and the first refusal of a part without it, which switched it on
/// for the rest of the upload.
struct Md5Mode {
    on: AtomicBool,
    refused: std::sync::OnceLock<String>,
}

impl Md5Mode {
    /// Part `n` was refused without `Content-MD5` (`e`, see [`md5_required`]): every part carries it
    /// from now on.
    fn switch(&self, n: u32, e: &Error) {
        self.on.store(true, Ordering::Relaxed);
        self.refused.get_or_init(|| match e {
            Error::Remote(k) => format!(
                "the server refused part {n} without Content-MD5 ({} {}: {})",
                k.status.unwrap_or_default(),
                k.code.as_deref().unwrap_or("?"),
                k.message
            ),
            _ => format!("the server refused part {n} without Content-MD5 ({e})"),
        });
    }
}

/// A part the server took.
#[derive(Debug)]
struct Sent {
    part: PartDone,
    check: Check,
    tries: u32,
}

/// The source's SHA-256 (for the audit log and the bundle check), fed the parts in file order as the
/// workers read them, so each byte is read once: a part read out of order waits in `st` until its turn;
/// parts an earlier run sent are read here when their turn comes.
struct InOrder<'a> {
    f: &'a std::fs::File,
    source: &'a Path,
    size: u64,
    part_size: u64,
    nparts: u32,
    /// The parts this run reads (the others were sent by an earlier run).
    sent_now: std::collections::BTreeSet<u32>,
    /// The next part to hash, the parts read ahead of it, the hash so far.
    #[allow(clippy::type_complexity)]
    st: std::sync::Mutex<(u32, BTreeMap<u32, Arc<Vec<u8>>>, Sha256)>,
}

impl InOrder<'_> {
    /// Part `n` was read: hash it, and whatever follows it, when its turn has come.
    fn feed(&self, n: u32, data: Arc<Vec<u8>>) -> Result<()> {
        let mut g = self
            .st
            .lock()
            .map_err(|_| Error::Upload("the whole-file hash was poisoned".into()))?;
        g.1.insert(n, data);
        self.advance(&mut g)
    }

    fn advance(&self, g: &mut (u32, BTreeMap<u32, Arc<Vec<u8>>>, Sha256)) -> Result<()> {
        let mut buf = Vec::new();
        while g.0 <= self.nparts {
            let n = g.0;
            if let Some(d) = g.1.remove(&n) {
                g.2.update(&d[..]);
            } else if !self.sent_now.contains(&n) {
                let off = u64::from(n - 1) * self.part_size;
                let len = (self.size - off).min(self.part_size) as usize;
                read_part(self.f, self.source, &mut buf, off, len)?;
                g.2.update(&buf);
            } else {
                break;
            }
            g.0 += 1;
        }
        Ok(())
    }

    /// The hex SHA-256 of the whole source, once every part has been fed.
    fn finish(&self) -> Result<String> {
        let mut g = self
            .st
            .lock()
            .map_err(|_| Error::Upload("the whole-file hash was poisoned".into()))?;
        self.advance(&mut g)?;
        if g.0 <= self.nparts {
            return Err(Error::Upload(format!(
                "stopped: part {} of {} was not read",
                g.0, self.nparts
            )));
        }
        Ok(hex(&std::mem::take(&mut g.2).finalize()))
    }
}

/// Reads part `n` (into `buf`, or a new buffer when the whole-file hash still holds `buf`), hashes it
/// once for its SHA-256 (and its MD5 while `md5` is on) and hands it to the whole-file hash, then sends
/// it, again while the server's answer shows the bytes did not arrive intact (an MD5 ETag or an echoed
/// checksum that differs, or `BadDigest`), up to [`PART_TRIES`]; a refusal for lack of `Content-MD5`
/// switches `md5` on and sends the part again at once, with it.
#[allow(clippy::too_many_arguments)]
fn send_part(
    client: &Client,
    whole: &InOrder<'_>,
    md5_mode: &Md5Mode,
    buf: &mut Vec<u8>,
    upload_id: &str,
    n: u32,
    off: u64,
    len: u64,
) -> Result<Sent> {
    let mut data = std::mem::take(buf);
    read_part(whole.f, whole.source, &mut data, off, len as usize)?;
    // A signed payload hash is checked by the server: MD5 (1.4 s of CPU per GiB) only without one, or
    // when the bucket requires it.
    let mut md5 = md5_mode
        .on
        .load(Ordering::Relaxed)
        .then(|| Md5::digest(&data[..]));
    let sha = Sha256::digest(&data[..]);
    let sha_b64 = b64(&sha);
    let data = Arc::new(data);
    whole.feed(n, Arc::clone(&data))?;
    let mut why = String::new();
    let mut sent = None;
    for tries in 1..=PART_TRIES {
        let r = match client.put_part(upload_id, n, &data, md5.as_deref(), &sha) {
            Err(e) if md5.is_none() && md5_required(&e) => {
                md5_mode.switch(n, &e);
                md5 = Some(Md5::digest(&data[..]));
                client.put_part(upload_id, n, &data, md5.as_deref(), &sha)
            }
            r => r,
        };
        let r = match r {
            Ok(r) => r,
            Err(e) if digest_refused(&e) => {
                why = e.to_string();
                continue;
            }
            Err(e) => return Err(e),
        };
        let echoed_ok = r.checksum_sha256.as_ref().map(|c| *c == sha_b64);
        let etag_is_md5 = looks_like_md5(&r.etag);
        let check = if let Some(md5) = md5.map(|m| hex(&m))
            && etag_is_md5
        {
            if r.etag != md5 {
                why = format!("the server's ETag {} is not the part's MD5 {md5}", r.etag);
                continue;
            }
            Check::Md5
        } else if md5.is_none() && etag_is_md5 {
            Check::Signed
        } else if echoed_ok.is_some() {
            Check::Checksum
        } else {
            Check::ServerOnly
        };
        if echoed_ok == Some(false) {
            why = format!(
                "the server's x-amz-checksum-sha256 {} is not the part's {sha_b64}",
                r.checksum_sha256.unwrap_or_default()
            );
            continue;
        }
        sent = Some(Sent {
            part: PartDone {
                etag: r.etag,
                md5: md5.map(|m| hex(&m)).unwrap_or_default(),
                sha256_b64: sha_b64.clone(),
            },
            check,
            tries,
        });
        break;
    }
    // The buffer comes back for the next part once the whole-file hash is done with it.
    if let Ok(d) = Arc::try_unwrap(data) {
        *buf = d;
    }
    sent.ok_or_else(|| {
        Error::Upload(format!(
            "part {n} did not arrive intact in {PART_TRIES} attempts: {why}"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        let t = Target::parse("s3://b/dir/a b+c.qcow2", Some("eu-west-1"), None)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.endpoint, "https://s3.eu-west-1.amazonaws.com");
        assert_eq!(
            t.url(),
            "https://s3.eu-west-1.amazonaws.com/b/dir/a%20b%2Bc.qcow2"
        );
        let t = Target::parse("cos://us-south/bkt/img.vhd", None, None)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            t.endpoint,
            "https://s3.us-south.cloud-object-storage.appdomain.cloud"
        );
        assert_eq!(
            (t.region.as_str(), t.bucket.as_str(), t.key.as_str()),
            ("us-south", "bkt", "img.vhd")
        );
        assert!(Target::parse("s3://bucket", None, None).is_err());
        assert!(Target::parse("http://x/y", None, None).is_err());
    }

    #[test]
    fn part_sizes_fit_in_10000_parts() {
        assert_eq!(choose_part_size(1 << 30, None).ok(), Some(8 << 20));
        let five_tb = 5u64 << 40;
        let p = choose_part_size(five_tb, None).unwrap_or(0);
        assert!(five_tb.div_ceil(p) <= MAX_PARTS && p <= MAX_PART, "{p}");
        assert!(choose_part_size(1 << 40, Some(1 << 20)).is_err());
    }

    #[test]
    fn md5_etags_are_told_apart() {
        assert!(looks_like_md5("9e107d9d372bb6826bd81d3542a419d6"));
        assert!(!looks_like_md5("9e107d9d372bb6826bd81d3542a419d6-3"));
        assert!(!looks_like_md5("kms-opaque-etag"));
    }

    #[test]
    fn encoding_follows_sigv4() {
        assert_eq!(uri_encode("a b/c~d+e=", false), "a%20b/c~d%2Be%3D");
        assert_eq!(uri_encode("a/b", true), "a%2Fb");
    }

    /// AWS's published example: GET Object with a Range header (S3 SigV4 docs, "Example: GET Object").
    #[test]
    fn sigv4_s3_get_object_example() {
        let h = [
            ("host", "examplebucket.s3.amazonaws.com"),
            ("range", "bytes=0-9"),
            (
                "x-amz-content-sha256",
                "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            ),
            ("x-amz-date", "20130524T000000Z"),
        ];
        let r = SigV4 {
            method: "GET",
            path: "/test.txt",
            query: "",
            headers: &h,
            body: b"",
            payload_sha256: None,
            region: "us-east-1",
            service: "s3",
            amz_date: "20130524T000000Z",
        };
        let a = sigv4_authorization(
            &r,
            "AKIAIOSFODNN7EXAMPLE",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        );
        assert!(
            a.ends_with(
                "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
            ),
            "{a}"
        );
    }

    fn reply(status: u16, body: &str) -> Reply {
        Reply {
            status,
            body: body.into(),
            correlation_id: None,
            etag: None,
            content_length: None,
            checksum_sha256: None,
            bucket_region: None,
        }
    }

    #[test]
    fn refused_tokens_and_damaged_parts_are_told_apart() {
        assert!(token_refused(&reply(401, "")));
        // HEAD answers have no body; COS answers an expired token with AccessDenied.
        assert!(token_refused(&reply(403, "")));
        assert!(token_refused(&reply(
            403,
            "<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>"
        )));
        assert!(!token_refused(&reply(
            403,
            "<Error><Code>SignatureDoesNotMatch</Code></Error>"
        )));
        assert!(!token_refused(&reply(404, "")));
        let kms = |status, reason: &str| {
            Error::Remote(RemoteError {
                kind: RemoteErrorKind::Http,
                service: service::S3,
                endpoint: String::new(),
                status: Some(status),
                code: Some(reason.into()),
                message: String::new(),
                correlation_id: None,
                attempts: 1,
            })
        };
        assert!(digest_refused(&kms(400, "BadDigest")));
        assert!(digest_refused(&kms(400, "XAmzContentSHA256Mismatch")));
        assert!(!digest_refused(&kms(400, "EntityTooSmall")));
        assert!(!digest_refused(&kms(403, "BadDigest")));
    }

    #[test]
    fn list_parts_roots_and_etags() {
        let body = "<ListPartsResponse><Part><PartNumber>2</PartNumber><ETag>&quot;ab&quot;</ETag></Part></ListPartsResponse>";
        let page = crate::wire::s3_list_parts(body);
        assert_eq!(page.parts.get(&2).map(String::as_str), Some("ab"));
        assert_eq!(unquote("&quot;ab&quot;"), "ab");
    }
}
