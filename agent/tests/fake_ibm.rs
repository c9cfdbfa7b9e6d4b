//! An in-process fake of IAM, Key Protect, VPC, SoftLayer and (a minimal) IBM COS on tiny_http, bound to
//! 127.0.0.1:0. Its request and response shapes are those of IBM's official clients: the contract tests
//! (`contract.rs`) run the official Python SDKs against it and check that they parse every answer. It
//! records every request ([`State::requests`]), enforces the server rules the agent must meet (key CRNs
//! with an account, the VPC name rule and uniqueness, SoftLayer HTTP Basic `apikey` sign-in and its
//! HTTP 500 for an expired token, the COS payload SHA-256, S3 region redirects), and can inject faults
//! (status codes with `Retry-After`, delays, token revocation).

#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

pub const API_KEY: &str = "fake-api-key-0123456789";
pub const INSTANCE: &str = "11111111-2222-3333-4444-555555555555";
pub const ROOT_KEY: &str = "root-key-1";
/// The account the fake's key CRNs carry.
pub const ACCOUNT: &str = "0123456789abcdef0123456789abcdef";
/// The content type of Key Protect's answers (the official Python SDK parses only `application/json`).
pub const KEY_ACTION: &str = "application/json";
/// The root key's alias.
pub const KEY_ALIAS: &str = "disk-root";
/// The fake VPC's VPC, subnet (zone us-south-1) and SSH key; the classic SSH key.
pub const VPC_ID: &str = "r006-vpc-0001";
pub const SUBNET_ID: &str = "0717-subnet-1";
pub const KEY_ID: &str = "r006-key-0001";
pub const SL_KEY_ID: u64 = 4242;
/// The region of the fake COS bucket `elsewhere` (others are in the signing region asked for).
pub const OTHER_REGION: &str = "eu-de";

/// One request as the fake saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    /// Percent-decoded query parameters, in order.
    pub query: Vec<(String, String)>,
    /// Lower-cased header names with their values.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The authorisation scheme: `Bearer`, `Basic`, `AWS4-HMAC-SHA256`, or empty.
    pub fn auth_scheme(&self) -> String {
        self.header("authorization")
            .and_then(|a| a.split(' ').next())
            .unwrap_or("")
            .to_owned()
    }
}

/// A fault to inject into the next Key Protect (or IAM) request.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer with this status (429/5xx get the documented error body) and optional Retry-After seconds.
    Status(u16, Option<u64>),
    /// Answer with this status and exact body.
    Body(u16, String),
    /// Sleep before handling normally.
    Delay(Duration),
    /// Handle normally (a create goes through), then answer with this status: a lost answer.
    After(u16),
}

#[derive(Debug, Default)]
pub struct State {
    pub token_ttl_secs: u64,
    tokens: HashMap<String, Instant>,
    pub next: u64,
    wraps: HashMap<String, (String, String)>,
    pub kp_faults: VecDeque<Fault>,
    pub iam_faults: VecDeque<Fault>,
    pub iam_calls: u32,
    pub kp_calls: u32,
    /// (path, status, time) of every Key Protect request.
    pub kp_log: Vec<(String, u16, Instant)>,
    /// Every request body seen (to check what the agent sent).
    pub bodies: Vec<String>,
    /// Every request seen, in order.
    pub requests: Vec<Recorded>,
    /// COS objects: key -> (size, ETag); multipart uploads: id -> parts (number -> (md5 hex, bytes)).
    pub objects: HashMap<String, (u64, String)>,
    pub uploads: HashMap<String, std::collections::BTreeMap<u32, (String, Vec<u8>)>>,
    pub last_key_ring: Option<String>,
    /// Status polls an import stays pending/in transaction before it finishes.
    pub import_polls: u32,
    /// VPC images: id -> (polls left, final status, status reason code).
    pub images: HashMap<String, (u32, &'static str, Option<&'static str>)>,
    /// Classic templates: id -> polls left.
    pub templates: HashMap<u64, u32>,
    /// Classic templates finish without `blockDevicesDiskSpaceTotal` on their children (no official
    /// client waits for it).
    pub sl_no_disk_total: bool,
    /// Every image or template created: (id, name, key CRN for VPC / note for classic), in order.
    pub created: Vec<(String, String, String)>,
    /// VPC compute (`compute.rs`'s half of the fake): the VPCs, subnets, SSH keys and instance
    /// profiles the list calls return; profiles map to the zones they exist in.
    pub vpcs: Vec<Value>,
    pub subnets: Vec<Value>,
    pub ssh_keys: Vec<Value>,
    pub profiles: Vec<(String, Vec<String>)>,
    /// VPC instances (as `GET /v1/instances/{id}` shows them once running), polls left before they run.
    pub instances: Vec<Value>,
    pub instance_polls: HashMap<String, u32>,
    /// A status reason code an instance fails with instead of running.
    pub instance_fails: Option<&'static str>,
    /// The boot volumes: id -> volume.
    pub volumes: HashMap<String, Value>,
    /// KMS instance GUIDs Block Storage is authorised (IAM service to service) to read keys of.
    pub block_storage_authorised: Vec<String>,
    /// Instances (VPC) or guests (classic) the account may have.
    pub quota: usize,
    /// Classic guests, polls left before each is ready, SSH keys, and where templates are.
    pub guests: Vec<Value>,
    pub guest_polls: HashMap<u64, u32>,
    pub sl_keys: Vec<Value>,
    pub template_datacenters: Vec<String>,
    /// The VPC compute lists' largest page (0: the `limit` asked for).
    pub page_size: usize,
}

impl State {
    /// See [`FakeIbm::token_valid`].
    pub fn token_valid(&self, token: &str) -> bool {
        self.tokens
            .get(token)
            .is_some_and(|exp| Instant::now() < *exp)
    }

    /// See [`FakeIbm::revoke_tokens`].
    pub fn revoke_tokens(&mut self) {
        self.tokens.clear();
    }
}

pub struct FakeIbm {
    pub url: String,
    pub state: Arc<Mutex<State>>,
    server: Arc<tiny_http::Server>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for FakeIbm {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl FakeIbm {
    pub fn start() -> FakeIbm {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
        let port = server.server_addr().to_ip().unwrap().port();
        let state = Arc::new(Mutex::new(State {
            token_ttl_secs: 3600,
            import_polls: 2,
            vpcs: vec![json!({"id": VPC_ID, "name": "my-vpc"})],
            subnets: vec![
                json!({"id": SUBNET_ID, "name": "my-subnet", "vpc": {"id": VPC_ID, "name": "my-vpc"}, "zone": {"name": "us-south-1"}}),
                json!({"id": "0727-subnet-2", "name": "other-subnet", "vpc": {"id": VPC_ID, "name": "my-vpc"}, "zone": {"name": "us-south-2"}}),
            ],
            ssh_keys: vec![json!({"id": KEY_ID, "name": "my-key", "type": "ed25519"})],
            profiles: vec![
                ("bx2-2x8".into(), vec![]),
                ("gx3-16x80x1l4".into(), vec!["us-south-2".into()]),
            ],
            block_storage_authorised: vec![INSTANCE.into()],
            quota: 10,
            sl_keys: vec![json!({"id": SL_KEY_ID, "label": "my-key"})],
            template_datacenters: vec!["dal13".into()],
            ..State::default()
        }));
        let (s2, st2) = (server.clone(), state.clone());
        let thread = std::thread::spawn(move || {
            for req in s2.incoming_requests() {
                handle(req, &st2);
            }
        });
        FakeIbm {
            url: format!("http://127.0.0.1:{port}"),
            state,
            server,
            thread: Some(thread),
        }
    }

    pub fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }

    /// A WDEK of `plain` under the root key, as Key Protect's wrap would return it.
    pub fn wrap(&self, plain: &[u8]) -> String {
        self.with(|s| {
            s.next += 1;
            let handle = format!("h-{}", s.next);
            s.wraps.insert(handle.clone(), (ROOT_KEY.to_owned(), b64(plain)));
            b64(json!({"ciphertext": b64(b"sealed"), "iv": "aXY=", "version": "4.0.0", "handle": handle}).to_string().as_bytes())
        })
    }

    /// An available VPC image named `name` encrypted under the root key; its id.
    pub fn add_image(&self, name: &str) -> String {
        self.with(|s| {
            s.next += 1;
            let id = format!("r006-{:08}", s.next);
            s.images.insert(id.clone(), (0, "available", None));
            s.created
                .push((id.clone(), name.into(), FakeIbm::key_crn()));
            id
        })
    }

    /// A finished classic image template named `name`; its global identifier.
    pub fn add_template(&self, name: &str) -> String {
        self.with(|s| {
            s.next += 1;
            let id = 1000 + s.next;
            s.templates.insert(id, 0);
            s.created.push((
                id.to_string(),
                name.into(),
                "imported by diskseal-agent".into(),
            ));
            format!("0B5DEAF4-0000-0000-0000-{id:012}")
        })
    }

    /// The root key's CRN.
    pub fn key_crn() -> String {
        format!("crn:v1:bluemix:public:kms:us-south:a/{ACCOUNT}:{INSTANCE}:key:{ROOT_KEY}")
    }

    /// Invalidates every token issued so far (as if they expired server-side).
    pub fn revoke_tokens(&self) {
        self.with(|s| s.tokens.clear());
    }

    /// True when `token` was issued by this fake IAM and has neither expired nor been revoked (other
    /// fake IBM services, e.g. a COS proxy in the upload tests, accept bearer tokens by this).
    pub fn token_valid(&self, token: &str) -> bool {
        self.with(|s| s.token_valid(token))
    }
}

fn header(req: &tiny_http::Request, name: &str) -> Option<String> {
    req.headers()
        .iter()
        .find(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name))
        .map(|h| h.value.as_str().to_owned())
}

/// The documented Key Protect error body.
pub fn kp_error(status: u16, code: &str, message: &str) -> String {
    json!({"metadata": {"collectionType": "application/vnd.ibm.kms.error+json", "collectionTotal": 1},
        "resources": [{"errorMsg": format!("{message} ({code})"),
            "reasons": [{"code": code, "message": message, "status": status, "moreInfo": "https://cloud.ibm.com/apidocs/key-protect"}]}]})
    .to_string()
}

fn respond(req: tiny_http::Request, status: u16, body: String, extra: &[(&str, String)]) {
    let mut resp = tiny_http::Response::from_string(body).with_status_code(status);
    for (k, v) in extra {
        resp = resp.with_header(tiny_http::Header::from_bytes(k.as_bytes(), v.as_bytes()).unwrap());
    }
    let _ = req.respond(resp);
}

fn handle(mut req: tiny_http::Request, state: &Arc<Mutex<State>>) {
    let mut raw = Vec::new();
    let _ = req.as_reader().read_to_end(&mut raw);
    let body = String::from_utf8_lossy(&raw).into_owned();
    let url = req.url().to_owned();
    let is_iam = url == "/identity/token";
    let (path, query) = url.split_once('?').unwrap_or((&url, ""));
    let rec = Recorded {
        method: req.method().as_str().to_owned(),
        path: path.to_owned(),
        query: query
            .split('&')
            .filter(|kv| !kv.is_empty())
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                (percent_decode(k), percent_decode(v))
            })
            .collect(),
        headers: req
            .headers()
            .iter()
            .map(|h| {
                (
                    h.field.as_str().as_str().to_ascii_lowercase(),
                    h.value.as_str().to_owned(),
                )
            })
            .collect(),
        body: raw.clone(),
    };
    let fault = {
        let mut s = state.lock().unwrap();
        s.bodies.push(body.clone());
        s.requests.push(rec.clone());
        if is_iam {
            s.iam_calls += 1;
            s.iam_faults.pop_front()
        } else {
            s.kp_calls += 1;
            s.kp_faults.pop_front()
        }
    };
    let cid = header(&req, "correlation-id").unwrap_or_default();
    let cid_h = [("correlation-id", cid.clone())];
    match fault {
        Some(Fault::Status(code, retry_after)) => {
            let mut extra = vec![("correlation-id", cid.clone())];
            if let Some(s) = retry_after {
                extra.push(("retry-after", s.to_string()));
            }
            log(state, &url, code);
            return respond(
                req,
                code,
                kp_error(code, "TOO_MANY_REQUESTS_OR_SERVER_ERR", "injected fault"),
                &extra,
            );
        }
        Some(Fault::Body(code, b)) => {
            log(state, &url, code);
            return respond(req, code, b, &cid_h);
        }
        Some(Fault::Delay(d)) => std::thread::sleep(d),
        Some(Fault::After(code)) => {
            if url.starts_with("/v1/") || url.starts_with("/rest/v3.1/") {
                let _ = import(&req, &url, &body, state);
            } else {
                let _ = kp(&req, &url, &body, state);
            }
            log(state, &url, code);
            return respond(
                req,
                code,
                kp_error(code, "SERVICE_UNAVAILABLE", "injected lost answer"),
                &cid_h,
            );
        }
        None => {}
    }
    if is_iam {
        return iam(req, &body, state);
    }
    if url.starts_with("/cos-bucket/") || url.starts_with("/elsewhere/") {
        return cos(req, &rec, state);
    }
    if url.starts_with("/v1/") || url.starts_with("/rest/v3.1/") {
        let (status, out) = import(&req, &url, &body, state);
        return respond(
            req,
            status,
            out,
            &[("content-type", "application/json".into())],
        );
    }
    let (status, out) = kp(&req, &url, &body, state);
    log(state, &url, status);
    respond(
        req,
        status,
        out,
        &[("correlation-id", cid), ("content-type", KEY_ACTION.into())],
    );
}

fn log(state: &Arc<Mutex<State>>, url: &str, status: u16) {
    if url != "/identity/token" {
        state
            .lock()
            .unwrap()
            .kp_log
            .push((url.to_owned(), status, Instant::now()));
    }
}

fn iam(req: tiny_http::Request, body: &str, state: &Arc<Mutex<State>>) {
    let ct = header(&req, "content-type").unwrap_or_default();
    let form: HashMap<String, String> = body
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.replace("%3A", ":").replace("%3a", ":")))
        .collect();
    if !ct.starts_with("application/x-www-form-urlencoded")
        || form.get("grant_type").map(String::as_str)
            != Some("urn:ibm:params:oauth:grant-type:apikey")
    {
        return respond(req, 400, json!({"errorCode": "BXNIM0109E", "errorMessage": "Property missing or empty", "context": {"requestId": "req-1"}}).to_string(), &[]);
    }
    if form.get("apikey").map(String::as_str) != Some(API_KEY) {
        return respond(req, 400, json!({"errorCode": "BXNIM0415E", "errorMessage": "Provided API key could not be found.", "context": {"requestId": "req-iam-42"}}).to_string(), &[]);
    }
    let mut s = state.lock().unwrap();
    s.next += 1;
    let ttl = s.token_ttl_secs;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // IAM access tokens are JWTs: the official SDKs read `iat` and `exp` from them (unverified).
    let url64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let token = format!(
        "{}.{}.{}",
        url64(json!({"alg": "RS256", "typ": "JWT", "kid": "fake"})),
        url64(
            json!({"iam_id": "iam-fake", "iat": now, "exp": now + ttl, "jti": format!("tok-{}-{}", s.next, std::process::id())})
        ),
        url64(json!("signature"))
    );
    s.tokens
        .insert(token.clone(), Instant::now() + Duration::from_secs(ttl));
    drop(s);
    respond(
        req,
        200,
        json!({"access_token": token, "refresh_token": "not_supported", "token_type": "Bearer", "expires_in": ttl, "expiration": now + ttl}).to_string(),
        &[("content-type", "application/json".into())],
    );
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn kp(req: &tiny_http::Request, url: &str, body: &str, state: &Arc<Mutex<State>>) -> (u16, String) {
    let mut s = state.lock().unwrap();
    let auth = header(req, "authorization").unwrap_or_default();
    let valid = auth
        .strip_prefix("Bearer ")
        .and_then(|t| s.tokens.get(t))
        .is_some_and(|exp| Instant::now() < *exp);
    if !valid {
        return (
            401,
            kp_error(
                401,
                "UNAUTHORIZED_ERR",
                "Unauthorized: The user does not have access to the specified resource",
            ),
        );
    }
    if header(req, "bluemix-instance").as_deref() != Some(INSTANCE) {
        return (
            400,
            kp_error(
                400,
                "INSTANCE_NOT_FOUND_ERR",
                "Bad Request: the bluemix-instance header is missing or wrong",
            ),
        );
    }
    if header(req, "correlation-id").is_some_and(|c| c.len() != 36) {
        return (
            400,
            kp_error(400, "BAD_HEADER_ERR", "correlation-id must be a UUID"),
        );
    }
    s.last_key_ring = header(req, "x-kms-key-ring");
    let Some(rest) = url.strip_prefix("/api/v2/keys/") else {
        return (404, kp_error(404, "NOT_FOUND", "no such route"));
    };
    if req.method() == &tiny_http::Method::Get {
        // GET /api/v2/keys/{id or alias} (the official client's get_key): the key with its CRN.
        if rest != ROOT_KEY && rest != KEY_ALIAS {
            return (
                404,
                kp_error(
                    404,
                    "KEY_NOT_FOUND_ERR",
                    "Not Found: Key could not be found",
                ),
            );
        }
        return (200, json!({"metadata": {"collectionType": "application/vnd.ibm.kms.key+json", "collectionTotal": 1},
            "resources": [{"type": "application/vnd.ibm.kms.key+json", "id": ROOT_KEY, "name": "root", "aliases": [KEY_ALIAS],
                "state": 1, "extractable": false, "crn": FakeIbm::key_crn(), "keyRingID": "default",
                "creationDate": "2026-01-01T00:00:00Z", "algorithmType": "AES", "imported": false}]}).to_string());
    }
    let Some((key, action)) = rest.split_once("/actions/") else {
        return (404, kp_error(404, "NOT_FOUND", "no such route"));
    };
    // The official client's content types: key_action_wrap+json, key_action_unwrap+json, ...
    let want = format!("application/vnd.ibm.kms.key_action_{action}+json");
    if header(req, "content-type").as_deref() != Some(want.as_str())
        || !header(req, "accept").is_some_and(|a| a.contains("application/json"))
    {
        return (
            400,
            kp_error(
                400,
                "BAD_BODY_ERR",
                &format!("content-type must be {want}, accept application/json"),
            ),
        );
    }
    let key = if key == KEY_ALIAS { ROOT_KEY } else { key };
    if key != ROOT_KEY {
        return (
            404,
            kp_error(
                404,
                "KEY_NOT_FOUND_ERR",
                "Not Found: Key could not be found",
            ),
        );
    }
    let v: Value = if body.trim().is_empty() {
        json!({})
    } else {
        match serde_json::from_str(body) {
            Ok(v) => v,
            Err(_) => {
                return (
                    400,
                    kp_error(400, "BAD_BODY_ERR", "Bad Request: the body is not JSON"),
                );
            }
        }
    };
    if v.get("aad").is_some() {
        return (
            400,
            kp_error(400, "INVALID_FIELD_ERR", "the agent must not send aad"),
        );
    }
    let new_wrap = |s: &mut State, plain_b64: String| -> String {
        s.next += 1;
        let handle = format!("h-{}", s.next);
        s.wraps.insert(handle.clone(), (key.to_owned(), plain_b64));
        b64(json!({"ciphertext": b64(format!("sealed-{}", s.next).as_bytes()), "iv": "aXY=", "version": "4.0.0", "handle": handle}).to_string().as_bytes())
    };
    let lookup = |s: &State, v: &Value| -> Option<String> {
        let c = v["ciphertext"].as_str()?;
        let doc: Value =
            serde_json::from_slice(&base64::engine::general_purpose::STANDARD.decode(c).ok()?)
                .ok()?;
        let (k, p) = s.wraps.get(doc["handle"].as_str()?)?;
        (k == key).then(|| p.clone())
    };
    match action {
        "wrap" => {
            let (plain, generated) = match v["plaintext"].as_str() {
                Some(p) => {
                    if base64::engine::general_purpose::STANDARD.decode(p).is_err() {
                        return (
                            400,
                            kp_error(
                                400,
                                "INVALID_FIELD_ERR",
                                "The field `plaintext` must be: a base64 encoded key material",
                            ),
                        );
                    }
                    (p.to_owned(), false)
                }
                None => (b64(&[0x5au8; 32].map(|b| b ^ (s.next as u8))), true),
            };
            let ct = new_wrap(&mut s, plain.clone());
            let mut out = json!({"ciphertext": ct, "keyVersion": {"id": "kv-1"}});
            if generated {
                out["plaintext"] = json!(plain);
            }
            (200, out.to_string())
        }
        "unwrap" => match lookup(&s, &v) {
            Some(p) => (
                200,
                json!({"plaintext": p, "keyVersion": {"id": "kv-1"}}).to_string(),
            ),
            None => (
                422,
                kp_error(
                    422,
                    "UNPROCESSABLE_CIPHERTEXT_ERR",
                    "The provided ciphertext is invalid or corrupted",
                ),
            ),
        },
        "rewrap" => match lookup(&s, &v) {
            Some(p) => {
                let ct = new_wrap(&mut s, p);
                (200, json!({"ciphertext": ct, "keyVersion": {"id": "kv-1"}, "rewrappedKeyVersion": {"id": "kv-2"}}).to_string())
            }
            None => (
                422,
                kp_error(
                    422,
                    "UNPROCESSABLE_CIPHERTEXT_ERR",
                    "The provided ciphertext is invalid or corrupted",
                ),
            ),
        },
        _ => (404, kp_error(404, "NOT_FOUND", "no such action")),
    }
}

/// The plaintext a WDEK unwraps to under the key named at the end of `crn`, base64.
fn unwraps(s: &State, wdek: &str, crn: &str) -> Option<String> {
    let key = crn.rsplit(':').next()?;
    let doc: Value = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(wdek)
            .ok()?,
    )
    .ok()?;
    let (k, p) = s.wraps.get(doc["handle"].as_str()?)?;
    (k == key).then(|| p.clone())
}

fn passphrase_of(wrapped_b64: &str) -> Vec<u8> {
    let e = &base64::engine::general_purpose::STANDARD;
    let text = e.decode(wrapped_b64).unwrap_or_default();
    e.decode(String::from_utf8_lossy(&text).trim_end_matches('\n'))
        .unwrap_or(text)
}

pub fn vpc_error(status: u16, code: &str, message: &str) -> (u16, String) {
    (status, json!({"errors": [{"code": code, "message": message, "more_info": "https://cloud.ibm.com/docs/vpc"}], "trace": "trace-77", "status_code": status}).to_string())
}

pub fn sl_error(status: u16, code: &str, message: &str) -> (u16, String) {
    (status, json!({"error": message, "code": code}).to_string())
}

/// VPC `POST /v1/images`, `GET /v1/images/{id}`; SoftLayer `createFromIcos`, `{id}/getObject` (ibm-cloud.md §5).
fn import(
    req: &tiny_http::Request,
    url: &str,
    body: &str,
    state: &Arc<Mutex<State>>,
) -> (u16, String) {
    let mut s = state.lock().unwrap();
    let auth = header(req, "authorization").unwrap_or_default();
    let valid = auth
        .strip_prefix("Bearer ")
        .and_then(|t| s.tokens.get(t))
        .is_some_and(|exp| Instant::now() < *exp);
    let vpc = url.starts_with("/v1/");
    if vpc && !valid {
        return vpc_error(401, "not_authorized", "The request is not authorized");
    }
    if !vpc {
        // SoftLayer REST: HTTP Basic `apikey:<API key>` (softlayer-python's BasicHTTPAuthentication), or
        // an IAM bearer token; an expired or unknown token is an HTTP 500 AccessTokenValidation.
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("apikey:{API_KEY}"));
        let basic_ok = auth.strip_prefix("Basic ") == Some(basic.as_str());
        if auth.starts_with("Bearer ") && !valid {
            return sl_error(
                500,
                "SoftLayer_Exception_Account_Authentication_AccessTokenValidation",
                "The access token is expired or invalid.",
            );
        }
        if !basic_ok && !valid {
            return sl_error(401, "SoftLayer_Exception_Public", "Access Denied.");
        }
    }
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    if vpc {
        if !query.contains("version=") || !query.contains("generation=2") {
            return vpc_error(
                400,
                "validation_required_field_missing",
                "version and generation=2 are required",
            );
        }
        if !path.starts_with("/v1/images") {
            return crate::fake_compute::vpc(&mut s, req.method().as_str(), path, query, &v);
        }
        if path == "/v1/images" && req.method() == &tiny_http::Method::Post {
            let name = v["name"].as_str().unwrap_or("");
            if !vpc_name_ok(name) {
                return vpc_error(
                    400,
                    "validation_invalid_name",
                    "The name must match ^([a-z]|[a-z][-a-z0-9]*[a-z0-9])$, be at most 63 characters and not begin with ibm-",
                );
            }
            if s.created
                .iter()
                .any(|c| c.0.starts_with("r006-") && c.1 == name)
            {
                return vpc_error(
                    409,
                    "image_name_duplicate",
                    "The image name is already in use in this region",
                );
            }
            let crn = v["encryption_key"]["crn"].as_str().unwrap_or("");
            if v.get("encryption_key").is_some() && !crn_ok(crn) {
                return vpc_error(
                    400,
                    "validation_invalid_crn",
                    "encryption_key.crn is not the CRN of a key (crn:v1:...:a/ACCOUNT:INSTANCE:key:ID)",
                );
            }
            let href = v["file"]["href"].as_str().unwrap_or("");
            if href.is_empty() || v["operating_system"]["name"].as_str().is_none() {
                return vpc_error(
                    400,
                    "validation_required_field_missing",
                    "file.href and operating_system.name are required",
                );
            }
            let (fin, reason) = match v["encrypted_data_key"].as_str() {
                None => ("available", None),
                Some(w) => {
                    match unwraps(&s, w, v["encryption_key"]["crn"].as_str().unwrap_or("")) {
                        // The WDEK holds base64(passphrase): the backplane decodes it; a passphrase ending in a newline
                        // does not open the image.
                        Some(p) if !passphrase_of(&p).ends_with(b"\n") => ("available", None),
                        _ => ("failed", Some("encrypted_data_key_invalid")),
                    }
                }
            };
            s.next += 1;
            let id = format!("r006-{:08}", s.next);
            let polls = s.import_polls;
            s.images.insert(id.clone(), (polls, fin, reason));
            let crn = v["encryption_key"]["crn"].as_str().unwrap_or("").to_owned();
            let name = v["name"].as_str().unwrap_or("").to_owned();
            s.created.push((id.clone(), name, crn));
            let enc = if v["encrypted_data_key"].is_string() {
                "user_managed"
            } else {
                "none"
            };
            return (201, json!({"id": id, "name": v["name"], "status": "pending", "encryption": enc, "file": {"href": href}}).to_string());
        }
        if path == "/v1/images" {
            // GET /v1/images?name=: the images with that name.
            let want = query_param(query, "name");
            let images: Vec<Value> = s
                .created
                .iter()
                .filter(|(id, name, _)| id.starts_with("r006-") && Some(name) == want.as_ref())
                .map(|(id, name, crn)| json!({"id": id, "name": name, "status": if s.images[id].0 > 0 { "pending" } else { s.images[id].1 }, "encryption": if crn.is_empty() { "none" } else { "user_managed" }, "encryption_key": {"crn": crn}}))
                .collect();
            return (200, json!({"images": images, "limit": 50}).to_string());
        }
        let Some(id) = path.strip_prefix("/v1/images/") else {
            return vpc_error(404, "not_found", "no such route");
        };
        let Some(img) = s.images.get_mut(id) else {
            return vpc_error(404, "image_not_found", "Image not found");
        };
        if img.0 > 0 {
            img.0 -= 1;
            return (200, json!({"id": id, "status": "pending", "status_reasons": [{"code": "image_request_in_progress", "message": "in progress"}]}).to_string());
        }
        let reasons = img.2.map_or(json!([]), |c| json!([{"code": c, "message": "The encrypted data key is not valid for the encryption key."}]));
        let status = img.1;
        let (name, crn) = s
            .created
            .iter()
            .find(|c| c.0 == id)
            .map(|c| (c.1.clone(), c.2.clone()))
            .unwrap_or_default();
        let mut out = json!({"id": id, "name": name, "status": status, "status_reasons": reasons, "encryption": "none"});
        if !crn.is_empty() {
            out["encryption"] = json!("user_managed");
            out["encryption_key"] = json!({"crn": crn});
        }
        return (200, out.to_string());
    }
    if let Some(r) = crate::fake_compute::softlayer(&mut s, req.method().as_str(), path, query, &v)
    {
        return r;
    }
    if path == "/rest/v3.1/SoftLayer_Account/getPrivateBlockDeviceTemplateGroups.json" {
        // softlayer-python's list_private_images(name=): objectFilter
        // {"privateBlockDeviceTemplateGroups":{"name":{"operation":"_= NAME"}}}.
        let filter: Value = query_param(query, "objectFilter")
            .and_then(|f| serde_json::from_str(&f).ok())
            .unwrap_or(Value::Null);
        let want = filter["privateBlockDeviceTemplateGroups"]["name"]["operation"]
            .as_str()
            .map(|o| o.strip_prefix("_= ").unwrap_or(o));
        let list: Vec<Value> = s
            .created
            .iter()
            .filter(|(id, name, _)| !id.starts_with("r006-") && want.is_none_or(|w| w == name))
            .map(|(id, name, note)| json!({"id": id.parse::<u64>().unwrap(), "name": name, "note": note, "globalIdentifier": format!("0B5DEAF4-0000-0000-0000-{id:0>12}")}))
            .collect();
        return (200, Value::Array(list).to_string());
    }
    let base = "/rest/v3.1/SoftLayer_Virtual_Guest_Block_Device_Template_Group/";
    let Some(rest) = path.strip_prefix(base) else {
        return sl_error(404, "SoftLayer_Exception_Public", "no such service");
    };
    if rest == "createFromIcos.json" || rest == "createFromIcos" {
        let c = &v["parameters"][0];
        if !c["uri"].as_str().unwrap_or("").starts_with("cos://") {
            return sl_error(
                500,
                "SoftLayer_Exception_Public",
                "Template configuration uri specified an invalid network storage service resource protocol.",
            );
        }
        if c["isEncrypted"] == json!(true) && !crn_ok(c["crkCrn"].as_str().unwrap_or("")) {
            return sl_error(
                500,
                "SoftLayer_Exception_Public",
                "The crkCrn is not the CRN of a root key.",
            );
        }
        if c["isEncrypted"] == json!(true)
            && unwraps(
                &s,
                c["wrappedDek"].as_str().unwrap_or(""),
                c["crkCrn"].as_str().unwrap_or(""),
            )
            .is_none()
        {
            return sl_error(
                500,
                "SoftLayer_Exception_Public",
                "Unable to unwrap the provided wrappedDek with the given crkCrn.",
            );
        }
        if c["cloudInit"] != json!(true) || c["ibmApiKey"].as_str().is_none() {
            return sl_error(
                500,
                "SoftLayer_Exception_Public",
                "cloudInit must be true and ibmApiKey given for encrypted images.",
            );
        }
        s.next += 1;
        let id = 1000 + s.next;
        let polls = s.import_polls;
        s.templates.insert(id, polls);
        let name = c["name"].as_str().unwrap_or("").to_owned();
        let note = c["note"].as_str().unwrap_or("").to_owned();
        s.created.push((id.to_string(), name, note));
        return (200, json!({"id": id, "globalIdentifier": format!("0B5DEAF4-0000-0000-0000-{id:012}"), "name": c["name"], "createDate": "2026-11-23T16:00:00-06:00"}).to_string());
    }
    let Some((id, method)) = rest.split_once('/') else {
        return sl_error(404, "SoftLayer_Exception_Public", "no such method");
    };
    let id_n = id.parse::<u64>().unwrap_or(0);
    let name = s
        .created
        .iter()
        .find(|c| c.0 == id)
        .map(|c| c.1.clone())
        .unwrap_or_default();
    let Some(left) = s.templates.get_mut(&id_n) else {
        return sl_error(
            404,
            "SoftLayer_Exception_ObjectNotFound",
            "Unable to find object with id of '…'.",
        );
    };
    if !method.starts_with("getObject") || !query.contains("objectMask=") {
        return sl_error(
            400,
            "SoftLayer_Exception_Public",
            "getObject with an objectMask expected",
        );
    }
    if *left > 0 {
        *left -= 1;
        let tx =
            json!({"transactionStatus": {"name": "COPY_IMAGE", "friendlyName": "Copying image"}});
        return (200, json!({"id": id_n, "status": {"keyName": "ACTIVE"}, "transaction": tx, "children": [{"id": 1, "transaction": tx}]}).to_string());
    }
    let mut child = json!({"id": 1, "datacenter": {"name": "dal13"}, "blockDevicesDiskSpaceTotal": 107374182400u64});
    if s.sl_no_disk_total {
        child = json!({"id": 1, "datacenter": {"name": "dal13"}});
    }
    (200, json!({"id": id_n, "name": name, "status": {"keyName": "ACTIVE", "name": "Active"}, "children": [child]}).to_string())
}

fn s3_error(req: tiny_http::Request, status: u16, code: &str, extra: &[(&str, String)]) {
    respond(
        req,
        status,
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>{code}</Message><RequestId>fake-1</RequestId></Error>"
        ),
        extra,
    );
}

/// A minimal IBM COS / S3 (path style): CreateMultipartUpload, UploadPart, CompleteMultipartUpload,
/// HEAD. HMAC requests must carry the payload's SHA-256 in `x-amz-content-sha256` (what the official
/// COS SDK sends); the bucket `elsewhere` lives in [`OTHER_REGION`] and answers a request signed for
/// another region with a `301 PermanentRedirect` and `x-amz-bucket-region`, as S3 does.
fn cos(req: tiny_http::Request, rec: &Recorded, state: &Arc<Mutex<State>>) {
    use md5::Digest as _;
    let auth = rec.header("authorization").unwrap_or("").to_owned();
    let mut s = state.lock().unwrap();
    if let Some(t) = auth.strip_prefix("Bearer ") {
        if !s.token_valid(t) {
            drop(s);
            return s3_error(req, 403, "AccessDenied", &[]);
        }
    } else if auth.starts_with("AWS4-HMAC-SHA256 ") {
        let scope_region = auth
            .split("Credential=")
            .nth(1)
            .and_then(|c| c.split('/').nth(2))
            .unwrap_or("")
            .to_owned();
        if rec.path.starts_with("/elsewhere/") && scope_region != OTHER_REGION {
            drop(s);
            return s3_error(
                req,
                301,
                "PermanentRedirect",
                &[("x-amz-bucket-region", OTHER_REGION.into())],
            );
        }
        let sha = rec.header("x-amz-content-sha256").unwrap_or("");
        let want = hex(&sha2::Sha256::digest(&rec.body));
        if sha != want {
            drop(s);
            return s3_error(req, 400, "XAmzContentSHA256Mismatch", &[]);
        }
    } else {
        drop(s);
        return s3_error(req, 403, "AccessDenied", &[]);
    }
    let q = |k: &str| {
        rec.query
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
    };
    let key = rec.path.clone();
    let m = rec.method.as_str();
    if m == "POST" && q("uploads").is_some() {
        s.next += 1;
        let id = format!("upload-{}", s.next);
        s.uploads.insert(id.clone(), Default::default());
        drop(s);
        let (b, k) = key[1..].split_once('/').unwrap();
        return respond(
            req,
            200,
            format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?><InitiateMultipartUploadResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Bucket>{b}</Bucket><Key>{k}</Key><UploadId>{id}</UploadId></InitiateMultipartUploadResult>"
            ),
            &[("content-type", "application/xml".into())],
        );
    }
    if m == "PUT" {
        let (Some(id), Some(n)) = (
            q("uploadId"),
            q("partNumber").and_then(|n| n.parse::<u32>().ok()),
        ) else {
            drop(s);
            return s3_error(req, 400, "InvalidRequest", &[]);
        };
        let etag = hex(&md5::Md5::digest(&rec.body));
        let Some(parts) = s.uploads.get_mut(&id) else {
            drop(s);
            return s3_error(req, 404, "NoSuchUpload", &[]);
        };
        parts.insert(n, (etag.clone(), rec.body.clone()));
        drop(s);
        return respond(req, 200, String::new(), &[("etag", format!("\"{etag}\""))]);
    }
    if m == "POST" {
        let Some(parts) = q("uploadId").and_then(|id| s.uploads.remove(&id)) else {
            drop(s);
            return s3_error(req, 404, "NoSuchUpload", &[]);
        };
        let mut md5s = Vec::new();
        let mut size = 0;
        for (e, b) in parts.values() {
            md5s.extend((0..16).map(|i| u8::from_str_radix(&e[2 * i..2 * i + 2], 16).unwrap()));
            size += b.len() as u64;
        }
        let etag = format!("{}-{}", hex(&md5::Md5::digest(&md5s)), parts.len());
        s.objects.insert(key.clone(), (size, etag.clone()));
        drop(s);
        return respond(
            req,
            200,
            format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?><CompleteMultipartUploadResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Location>{key}</Location><Key>{key}</Key><ETag>\"{etag}\"</ETag></CompleteMultipartUploadResult>"
            ),
            &[("content-type", "application/xml".into())],
        );
    }
    if m == "HEAD" || m == "GET" {
        let Some((size, etag)) = s.objects.get(&key).cloned() else {
            drop(s);
            return s3_error(req, 404, "NoSuchKey", &[]);
        };
        drop(s);
        let resp = tiny_http::Response::empty(200)
            .with_header(
                tiny_http::Header::from_bytes(&b"etag"[..], format!("\"{etag}\"").as_bytes())
                    .unwrap(),
            )
            .with_header(
                tiny_http::Header::from_bytes(
                    &b"last-modified"[..],
                    &b"Wed, 01 Jan 2026 00:00:00 GMT"[..],
                )
                .unwrap(),
            );
        let resp = tiny_http::Response::new(
            resp.status_code(),
            resp.headers().to_vec(),
            std::io::empty(),
            Some(size as usize),
            None,
        );
        let _ = req.respond(resp);
        return;
    }
    drop(s);
    s3_error(req, 405, "MethodNotAllowed", &[])
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The VPC name rule: `^([a-z]|[a-z][-a-z0-9]*[a-z0-9])$`, at most 63 characters, not `ibm-...`.
pub fn vpc_name_ok(n: &str) -> bool {
    let b = n.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[b.len() - 1] != b'-'
        && !n.starts_with("ibm-")
}

/// A key CRN: `crn:v1:bluemix:public:kms|hs-crypto:REGION:a/ACCOUNT:INSTANCE:key:ID`, every part set.
pub fn crn_ok(crn: &str) -> bool {
    let p: Vec<&str> = crn.split(':').collect();
    p.len() == 10
        && p[0] == "crn"
        && matches!(p[4], "kms" | "hs-crypto")
        && p[6].strip_prefix("a/").is_some_and(|a| !a.is_empty())
        && p[8] == "key"
        && p.iter().all(|x| !x.is_empty())
}

/// The percent-decoded value of `key` in a query string.
pub fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let h = std::str::from_utf8(&b[i + 1..i + 3]).ok();
                match h.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(x) => {
                        out.push(x);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
