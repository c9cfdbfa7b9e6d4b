//! `diskseal-agent upload` against moto's S3 in IAM mode (SigV4 signatures are checked), with
//! `S3_UPLOAD_PART_MIN_SIZE=1024` so parts can be small, and against s3s-fs 0.14.1 (strict SigV4, 5 MiB
//! parts) when installed: 256 MiB in parallel parts, kill -9 then resume,
//! wrong secret, a fault-injecting proxy, existing object and missing bucket.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::util::{Server, agent, agent_command, free_port, have, pattern, start_server};

pub struct S3 {
    pub _server: Server,
    pub url: String,
    pub ak: String,
    pub sk: String,
    /// s3s-fs's data directory (objects are plain files there); None for moto.
    pub data: Option<tempfile::TempDir>,
    pub name: &'static str,
}

impl S3 {
    /// The environment of a `ship` to this server and the IBM fake: its HMAC keys and the fake's
    /// API key.
    pub fn ship_env(&self) -> [(&'static str, &str); 3] {
        [
            ("AWS_ACCESS_KEY_ID", self.ak.as_str()),
            ("AWS_SECRET_ACCESS_KEY", self.sk.as_str()),
            ("IBMCLOUD_API_KEY", crate::fake_ibm::API_KEY),
        ]
    }
}

/// What a `ship` test starts from: moto's S3, the IBM fake (an import is done after `import_polls`
/// polls), and a temporary directory with the agent's identity.
pub struct ShipWorld {
    pub s3: S3,
    pub f: crate::fake_ibm::FakeIbm,
    pub recipient: String,
    d: tempfile::TempDir,
}

impl ShipWorld {
    /// `None` without moto (the test is skipped).
    pub fn start(import_polls: u32) -> Option<ShipWorld> {
        let s3 = moto_s3()?;
        let f = crate::fake_ibm::FakeIbm::start();
        f.with(|s| s.import_polls = import_polls);
        let d = tempfile::tempdir().unwrap();
        let recipient = crate::util::init(d.path());
        Some(ShipWorld {
            s3,
            f,
            recipient,
            d,
        })
    }

    /// The temporary directory (the agent's home is `home` in it).
    pub fn p(&self) -> &Path {
        self.d.path()
    }

    /// A bundle of `profile` for the identity, made in `dir` (see [`crate::util::make_bundle_as`]).
    pub fn bundle(&self, dir: &Path, profile: diskseal::profile::Profile) -> std::path::PathBuf {
        crate::util::make_bundle_as(dir, &self.recipient, profile)
    }
}

/// moto in IAM mode with a user allowed s3:* and a bucket `bkt`.
pub fn moto_s3() -> Option<S3> {
    let setup = r#"s3 = boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id=k["AccessKeyId"], aws_secret_access_key=k["SecretAccessKey"])
s3.create_bucket(Bucket="bkt")
print(k["AccessKeyId"], k["SecretAccessKey"])"#;
    let (server, url, f) =
        crate::util::moto(&[("S3_UPLOAD_PART_MIN_SIZE", "1024")], "s3:*", setup)?;
    Some(S3 {
        _server: server,
        url,
        ak: f[0].clone(),
        sk: f[1].clone(),
        data: None,
        name: "moto",
    })
}

/// s3s-fs 0.14.1 (strict SigV4 and checksums) with a bucket `bkt`.
pub fn s3s_fs() -> Option<S3> {
    if !have("s3s-fs") {
        return None;
    }
    let port = free_port();
    let data = tempfile::tempdir().unwrap();
    std::fs::create_dir(data.path().join("bkt")).unwrap();
    let (ak, sk) = ("AKIDS3SFS".to_owned(), "s3s-fs-secret-key-0123".to_owned());
    let mut cmd = Command::new("s3s-fs");
    cmd.args([
        "--host",
        "127.0.0.1",
        "--port",
        &port.to_string(),
        "--access-key",
        &ak,
        "--secret-key",
        &sk,
    ])
    .arg(data.path());
    let server = start_server(cmd, port, "s3s-fs");
    Some(S3 {
        _server: server,
        url: format!("http://127.0.0.1:{port}"),
        ak,
        sk,
        data: Some(data),
        name: "s3s-fs",
    })
}

/// Every S3 server available: moto (IAM mode) and s3s-fs.
fn servers() -> Vec<S3> {
    moto_s3().into_iter().chain(s3s_fs()).collect()
}

/// sha256 of an object, downloaded with boto3 (moto) or read from s3s-fs's data directory.
pub fn remote_sha256(s: &S3, key: &str) -> String {
    if let Some(d) = &s.data {
        return diskseal::bundle::hex(&Sha256::digest(
            std::fs::read(d.path().join("bkt").join(key)).unwrap(),
        ));
    }
    let script = r#"
import boto3, hashlib, sys
url, ak, sk, key = sys.argv[1:5]
s3 = boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id=ak, aws_secret_access_key=sk)
h = hashlib.sha256()
for c in s3.get_object(Bucket="bkt", Key=key)["Body"].iter_chunks(1 << 20):
    h.update(c)
print(h.hexdigest())
"#;
    let o = Command::new("python3")
        .args(["-c", script, &s.url, &s.ak, &s.sk, key])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap().trim().to_owned()
}

fn big_file(dir: &Path, name: &str, mib: usize) -> String {
    let data = pattern(mib << 20, 3);
    std::fs::write(dir.join(name), &data).unwrap();
    diskseal::bundle::hex(&Sha256::digest(&data))
}

fn env(s: &S3) -> [(&str, &str); 2] {
    [
        ("AWS_ACCESS_KEY_ID", s.ak.as_str()),
        ("AWS_SECRET_ACCESS_KEY", s.sk.as_str()),
    ]
}

/// One request as a test proxy sees it.
pub struct Req {
    /// `METHOD /path?query HTTP/1.1`.
    pub line: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Req {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn remove_header(&mut self, name: &str) {
        self.headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
    }

    /// The part number of an UploadPart request.
    pub fn part(&self) -> Option<u32> {
        if !self.line.starts_with("PUT ") {
            return None;
        }
        let q = self.line.split_whitespace().nth(1)?.split_once('?')?.1;
        q.split('&')
            .find_map(|kv| kv.strip_prefix("partNumber="))
            .and_then(|n| n.parse().ok())
    }
}

/// An upstream answer as a test proxy sees it: the status line and headers, the raw body.
pub struct Resp {
    pub status: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn set_header(&mut self, name: &str, value: &str) {
        self.headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
        self.headers.push((name.to_owned(), value.to_owned()));
    }
}

/// What a test proxy does with a request.
pub enum Act {
    Forward,
    Respond(u16, String),
    Drop,
}

type OnRequest = dyn Fn(&mut Req) -> Act + Send + Sync;
type OnResponse = dyn Fn(&Req, &mut Resp) + Send + Sync;

/// A proxy to `upstream` on 127.0.0.1 that shows every request to `on_req` (which may change it,
/// answer it or drop the connection) and every forwarded answer to `on_resp` (which may change it).
pub fn hook_proxy(
    upstream: &str,
    on_req: impl Fn(&mut Req) -> Act + Send + Sync + 'static,
    on_resp: impl Fn(&Req, &mut Resp) + Send + Sync + 'static,
) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let up = upstream.trim_start_matches("http://").to_owned();
    let hooks: Arc<(Box<OnRequest>, Box<OnResponse>)> =
        Arc::new((Box::new(on_req), Box::new(on_resp)));
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(c) = c else { continue };
            let (up, hooks) = (up.clone(), hooks.clone());
            std::thread::spawn(move || serve(c, &up, &hooks));
        }
    });
    url
}

/// A proxy to `upstream` on 127.0.0.1 that delays every part upload by `delay`, and answers every
/// `fail_every`-th one with 500, 503 or a dropped connection in turn (0: never).
fn proxy(upstream: &str, fail_every: u64, delay: Duration) -> (String, Arc<AtomicU64>) {
    let parts = AtomicU64::new(0);
    let faults = Arc::new(AtomicU64::new(0));
    let f2 = faults.clone();
    let url = hook_proxy(
        upstream,
        move |r| {
            if r.part().is_none() {
                return Act::Forward;
            }
            std::thread::sleep(delay);
            let n = parts.fetch_add(1, Ordering::SeqCst) + 1;
            if fail_every == 0 || !n.is_multiple_of(fail_every) {
                return Act::Forward;
            }
            match f2.fetch_add(1, Ordering::SeqCst) % 3 {
                0 => Act::Drop,
                1 => Act::Respond(503, "<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>".into()),
                _ => Act::Respond(500, "<Error><Code>InternalError</Code><Message>We encountered an internal error.</Message></Error>".into()),
            }
        },
        |_, _| {},
    );
    (url, faults)
}

/// A proxy in front of moto that records every S3 request line and, as S3 does and moto does not,
/// forgets a multipart upload once it is completed: ListParts, UploadPart and Complete on it get
/// `404 NoSuchUpload` (moto still lists and completes it again). The first `lose` successful
/// Complete answers are replaced by a 500, as if the answer was lost on the way back.
pub struct S3Like {
    pub url: String,
    seen: Arc<Mutex<Vec<String>>>,
}

impl S3Like {
    pub fn start(upstream: &str, lose: usize) -> S3Like {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let done: Arc<Mutex<Vec<String>>> = Arc::default();
        let upload_id = |line: &str| {
            line.split_whitespace()
                .nth(1)
                .and_then(|t| t.split_once('?'))
                .and_then(|(_, q)| q.split('&').find_map(|kv| kv.strip_prefix("uploadId=")))
                .map(str::to_owned)
        };
        let (log, gone, gone2) = (seen.clone(), done.clone(), done);
        let lost = AtomicUsize::new(0);
        let url = hook_proxy(
            upstream,
            move |r| {
                log.lock().unwrap().push(r.line.clone());
                match upload_id(&r.line) {
                    Some(id) if gone.lock().unwrap().contains(&id) => Act::Respond(
                        404,
                        "<Error><Code>NoSuchUpload</Code><Message>The specified upload does not \
                         exist.</Message></Error>"
                            .into(),
                    ),
                    _ => Act::Forward,
                }
            },
            move |r, resp| {
                if r.line.starts_with("POST ") && resp.status.contains(" 200") {
                    gone2.lock().unwrap().extend(upload_id(&r.line));
                    if upload_id(&r.line).is_some() && lost.fetch_add(1, Ordering::SeqCst) < lose {
                        resp.status = "HTTP/1.1 500 Internal Server Error".into();
                        resp.body = b"<Error><Code>InternalError</Code><Message>We encountered \
                            an internal error.</Message></Error>"
                            .to_vec();
                    }
                }
            },
        );
        S3Like { url, seen }
    }

    /// The requests seen under `prefix`, but the parts.
    pub fn requests(&self, prefix: &str) -> Vec<String> {
        let seen = self.seen.lock().unwrap();
        seen.iter()
            .filter(|l| l.contains(prefix) && !l.contains("partNumber="))
            .cloned()
            .collect()
    }

    /// Asserts [`S3Like::counts`] under `prefix`.
    #[track_caller]
    pub fn expect(&self, prefix: &str, want: (usize, usize, usize)) {
        assert_eq!(self.counts(prefix), want, "{:#?}", self.requests(prefix));
    }

    /// (objects completed or put whole, multipart uploads started, part requests) under `prefix`.
    pub fn counts(&self, prefix: &str) -> (usize, usize, usize) {
        let seen = self.seen.lock().unwrap();
        let mine = || seen.iter().filter(|l| l.contains(prefix));
        let completes = mine()
            .filter(|l| {
                (l.starts_with("POST ") && l.contains("uploadId="))
                    || (l.starts_with("PUT ") && !l.contains("partNumber="))
            })
            .count();
        let starts = mine()
            .filter(|l| l.starts_with("POST ") && l.contains("?uploads"))
            .count();
        let parts = mine()
            .filter(|l| l.starts_with("PUT ") && l.contains("partNumber="))
            .count();
        (completes, starts, parts)
    }
}

fn read_head(r: &mut impl BufRead) -> Option<(String, Vec<(String, String)>)> {
    let mut first = String::new();
    if r.read_line(&mut first).unwrap_or(0) == 0 {
        return None;
    }
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return None;
        }
        if line == "\r\n" {
            return Some((first.trim_end().to_owned(), headers));
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
}

fn serve(c: TcpStream, up: &str, hooks: &(Box<OnRequest>, Box<OnResponse>)) {
    let mut r = BufReader::new(c.try_clone().unwrap());
    let mut w = c;
    loop {
        let Some((line, headers)) = read_head(&mut r) else {
            return;
        };
        let len = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .map_or(0, |(_, v)| v.parse().unwrap());
        let mut body = vec![0u8; len];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        let mut req = Req {
            line,
            headers,
            body,
        };
        match (hooks.0)(&mut req) {
            Act::Drop => return,
            Act::Respond(status, b) => {
                let _ = write!(
                    w,
                    "HTTP/1.1 {status} Error\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n{b}",
                    b.len()
                );
                continue;
            }
            Act::Forward => {}
        }
        let Ok(mut u) = TcpStream::connect(up) else {
            return;
        };
        let mut head = format!("{}\r\n", req.line);
        for (k, v) in &req.headers {
            if !k.eq_ignore_ascii_case("connection") && !k.eq_ignore_ascii_case("content-length") {
                head.push_str(&format!("{k}: {v}\r\n"));
            }
        }
        head.push_str(&format!(
            "Content-Length: {}\r\nConnection: close\r\n\r\n",
            req.body.len()
        ));
        if u.write_all(head.as_bytes())
            .and_then(|()| u.write_all(&req.body))
            .is_err()
        {
            return;
        }
        let mut ur = BufReader::new(u);
        let Some((status, headers)) = read_head(&mut ur) else {
            return;
        };
        let mut body = Vec::new();
        let _ = ur.read_to_end(&mut body);
        let mut resp = Resp {
            status,
            headers,
            body,
        };
        (hooks.1)(&req, &mut resp);
        let mut out = format!("{}\r\n", resp.status);
        for (k, v) in &resp.headers {
            if !k.eq_ignore_ascii_case("connection") {
                out.push_str(&format!("{k}: {v}\r\n"));
            }
        }
        out.push_str("Connection: close\r\n\r\n");
        if w.write_all(out.as_bytes())
            .and_then(|()| w.write_all(&resp.body))
            .is_err()
        {
            return;
        }
        // The answer was sent with `Connection: close`: the client opens a new connection.
        return;
    }
}

/// A part size the server accepts for non-last parts (moto: any with S3_UPLOAD_PART_MIN_SIZE=1024;
/// s3s-fs: S3's 5 MiB).
fn part(s: &S3, moto: &'static str) -> &'static str {
    if s.data.is_some() { "5M" } else { moto }
}

fn parse(out: &str) -> serde_json::Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[test]
fn upload_256mib_in_parallel_parts_round_trips_and_is_logged() {
    for s in servers() {
        eprintln!(
            "upload_256mib_in_parallel_parts_round_trips_and_is_logged against {}",
            s.name
        );
        upload_256mib_in_parallel_parts_round_trips_and_is_logged_on(&s);
    }
}

fn upload_256mib_in_parallel_parts_round_trips_and_is_logged_on(s: &S3) {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let sha = big_file(p, "disk.img", 256);
    let e = env(s);
    let out = agent(
        p,
        &[
            "--json",
            "upload",
            "disk.img",
            "s3://bkt/images/disk 1.img",
            "--s3-endpoint",
            &s.url,
            "--jobs",
            "4",
            "--part-size",
            "8M",
        ],
        &e,
    )
    .ok();
    let v = parse(&out.stdout);
    assert_eq!(v["sha256"], sha.as_str());
    assert_eq!(v["size"], 256u64 << 20);
    assert_eq!(v["parts"], 32);
    assert!(v["etag"].as_str().unwrap().ends_with("-32"), "{v}");
    assert_eq!(remote_sha256(s, "images/disk 1.img"), sha);
    assert!(!p.join("disk.img.diskseal-upload.json").exists());
    let log = std::fs::read_to_string(p.join("home/audit.jsonl")).unwrap();
    assert!(
        log.contains("diskseal.object.upload")
            && log.contains(&sha)
            && log.contains("images/disk%201.img"),
        "{log}"
    );
    assert!(!log.contains(&s.sk) && !out.stdout.contains(&s.sk) && !out.stderr.contains(&s.sk));
    // An existing key is refused without --force, and overwritten with it.
    let again = agent(
        p,
        &[
            "upload",
            "disk.img",
            "s3://bkt/images/disk 1.img",
            "--s3-endpoint",
            &s.url,
        ],
        &e,
    );
    assert_eq!(again.code, 2);
    assert!(
        again.stderr.contains("already exists") && again.stderr.contains("--force"),
        "{}",
        again.stderr
    );
    agent(
        p,
        &[
            "upload",
            "disk.img",
            "s3://bkt/images/disk 1.img",
            "--s3-endpoint",
            &s.url,
            "--force",
        ],
        &e,
    )
    .ok();
    // A missing bucket: S3's code reaches the user. (s3s-fs 0.14.1 accepts multipart uploads into a
    // bucket that does not exist, so this is checked on moto only.)
    if s.data.is_some() {
        return;
    }
    let nb = agent(
        p,
        &[
            "upload",
            "disk.img",
            "s3://no-such-bucket/x.img",
            "--s3-endpoint",
            &s.url,
        ],
        &e,
    );
    assert_eq!(nb.code, 2);
    assert!(
        nb.stderr.contains("NoSuchBucket") && nb.stderr.contains("HTTP 404"),
        "{}",
        nb.stderr
    );
}

#[test]
fn upload_killed_mid_way_resumes_with_only_the_missing_parts() {
    for s in servers() {
        eprintln!(
            "upload_killed_mid_way_resumes_with_only_the_missing_parts against {}",
            s.name
        );
        upload_killed_mid_way_resumes_with_only_the_missing_parts_on(&s);
    }
}

fn upload_killed_mid_way_resumes_with_only_the_missing_parts_on(s: &S3) {
    let (purl, _) = proxy(&s.url, 0, Duration::from_millis(40));
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let sha = big_file(p, "disk.img", 64);
    let ps = part(s, "1M");
    let total: u64 = if ps == "1M" { 64 } else { 13 };
    let args = [
        "--json",
        "upload",
        "disk.img",
        "s3://bkt/disk.img",
        "--s3-endpoint",
        &purl,
        "--jobs",
        "2",
        "--part-size",
        ps,
    ];
    let mut child = agent_command(p, &args, &env(s))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let state = p.join("disk.img.diskseal-upload.json");
    let t = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(&state)
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
            && v["parts"]
                .as_object()
                .is_some_and(|o| o.len() as u64 >= total / 4)
        {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let before: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    let done_before = before["parts"].as_object().unwrap().len();
    assert!((done_before as u64) < total);
    let out = agent(p, &args, &env(s)).ok();
    let v = parse(&out.stdout);
    assert_eq!(v["resumed"], true);
    assert_eq!(v["parts"], total);
    assert!(
        v["parts_reused"].as_u64().unwrap() >= done_before as u64,
        "{v}"
    );
    assert_eq!(
        v["parts_uploaded"].as_u64().unwrap() + v["parts_reused"].as_u64().unwrap(),
        total
    );
    assert_eq!(v["sha256"], sha.as_str());
    assert_eq!(remote_sha256(s, "disk.img"), sha);
    assert!(!state.exists());
}

#[test]
fn upload_survives_500_503_and_dropped_connections() {
    for s in servers() {
        eprintln!(
            "upload_survives_500_503_and_dropped_connections against {}",
            s.name
        );
        upload_survives_500_503_and_dropped_connections_on(&s);
    }
}

fn upload_survives_500_503_and_dropped_connections_on(s: &S3) {
    let (purl, faults) = proxy(
        &s.url,
        if s.data.is_some() { 3 } else { 10 },
        Duration::ZERO,
    );
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let sha = big_file(p, "disk.img", 64);
    let out = agent(
        p,
        &[
            "--json",
            "upload",
            "disk.img",
            "s3://bkt/faulty.img",
            "--s3-endpoint",
            &purl,
            "--jobs",
            "4",
            "--part-size",
            part(s, "1M"),
            "--retry-base-ms",
            "10",
        ],
        &env(s),
    )
    .ok();
    let v = parse(&out.stdout);
    assert_eq!(v["sha256"], sha.as_str());
    assert!(
        faults.load(Ordering::SeqCst) >= 3,
        "only {} faults injected",
        faults.load(Ordering::SeqCst)
    );
    assert_eq!(remote_sha256(s, "faulty.img"), sha);
}

#[test]
fn upload_with_a_wrong_secret_says_signature_does_not_match_and_abort_cleans_up() {
    for s in servers() {
        eprintln!(
            "upload_with_a_wrong_secret_says_signature_does_not_match_and_abort_cleans_up against {}",
            s.name
        );
        upload_with_a_wrong_secret_says_signature_does_not_match_and_abort_cleans_up_on(&s);
    }
}

fn upload_with_a_wrong_secret_says_signature_does_not_match_and_abort_cleans_up_on(s: &S3) {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    big_file(p, "disk.img", 1);
    let bad = [
        ("AWS_ACCESS_KEY_ID", s.ak.as_str()),
        ("AWS_SECRET_ACCESS_KEY", "wrong-secret-value"),
    ];
    let out = agent(
        p,
        &[
            "upload",
            "disk.img",
            "s3://bkt/x.img",
            "--s3-endpoint",
            &s.url,
        ],
        &bad,
    );
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("HTTP 403") && out.stderr.contains("SignatureDoesNotMatch"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("wrong-secret-value"));
    // A source whose upload failed mid-way keeps its state; --abort removes it and the server's upload.
    let (purl, _) = proxy(&s.url, 1, Duration::ZERO); // every part upload fails
    let out = agent(
        p,
        &[
            "upload",
            "disk.img",
            "s3://bkt/x.img",
            "--s3-endpoint",
            &purl,
            "--part-size",
            part(s, "256K"),
            "--max-attempts",
            "2",
            "--retry-base-ms",
            "1",
        ],
        &env(s),
    );
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("rerun the same command to resume") && out.stderr.contains("--abort"),
        "{}",
        out.stderr
    );
    assert!(p.join("disk.img.diskseal-upload.json").exists());
    agent(
        p,
        &[
            "upload",
            "disk.img",
            "s3://bkt/x.img",
            "--s3-endpoint",
            &s.url,
            "--abort",
        ],
        &env(s),
    )
    .ok();
    assert!(!p.join("disk.img.diskseal-upload.json").exists());
    // A corrupt state file is a clear error.
    std::fs::write(p.join("disk.img.diskseal-upload.json"), "{not json").unwrap();
    let out = agent(
        p,
        &[
            "upload",
            "disk.img",
            "s3://bkt/x.img",
            "--s3-endpoint",
            &s.url,
        ],
        &env(s),
    );
    assert!(
        out.code == 2 && out.stderr.contains("corrupt"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_source_changed_since_the_state_file_starts_over() {
    for s in servers() {
        eprintln!(
            "a_source_changed_since_the_state_file_starts_over against {}",
            s.name
        );
        a_source_changed_since_the_state_file_starts_over_on(&s);
    }
}

fn a_source_changed_since_the_state_file_starts_over_on(s: &S3) {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    big_file(p, "disk.img", 2);
    let (purl, _) = proxy(&s.url, 1, Duration::ZERO);
    let out = agent(
        p,
        &[
            "upload",
            "disk.img",
            "s3://bkt/c.img",
            "--s3-endpoint",
            &purl,
            "--part-size",
            part(s, "256K"),
            "--max-attempts",
            "1",
        ],
        &env(s),
    );
    assert_eq!(out.code, 2);
    let sha = big_file(p, "disk.img", 3);
    let out = agent(
        p,
        &[
            "--json",
            "upload",
            "disk.img",
            "s3://bkt/c.img",
            "--s3-endpoint",
            &s.url,
            "--part-size",
            part(s, "256K"),
        ],
        &env(s),
    )
    .ok();
    assert!(
        out.stderr.contains("changed since the interrupted upload"),
        "{}",
        out.stderr
    );
    assert_eq!(parse(&out.stdout)["sha256"], sha.as_str());
    assert_eq!(remote_sha256(s, "c.img"), sha);
}

#[test]
fn a_read_error_mid_upload_keeps_the_state_and_names_file_and_offset() {
    for s in servers() {
        eprintln!(
            "a_read_error_mid_upload_keeps_the_state_and_names_file_and_offset against {}",
            s.name
        );
        a_read_error_mid_upload_keeps_the_state_and_names_file_and_offset_on(&s);
    }
}

/// The source shrinks under a running upload (the read error a failing disk or a careless user
/// gives): the upload stops with the file, offset and how to go on; its state survives; the rerun
/// sees the change, starts over and finishes with the right object.
fn a_read_error_mid_upload_keeps_the_state_and_names_file_and_offset_on(s: &S3) {
    let (purl, _) = proxy(&s.url, 0, Duration::from_millis(40));
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    big_file(p, "disk.img", 16);
    let ps = part(s, "256K");
    let args = [
        "upload",
        "disk.img",
        "s3://bkt/shrunk.img",
        "--s3-endpoint",
        &purl,
        "--jobs",
        "1",
        "--part-size",
        ps,
    ];
    let child = agent_command(p, &args, &env(s))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let state = p.join("disk.img.diskseal-upload.json");
    let t = Instant::now();
    while !std::fs::read_to_string(&state).is_ok_and(|t| t.contains("\"etag\"")) {
        assert!(t.elapsed() < Duration::from_secs(60), "no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
    std::fs::OpenOptions::new()
        .write(true)
        .open(p.join("disk.img"))
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("disk.img at offset")
            && err.contains("shrank")
            && err.contains("rerun the same command to resume"),
        "{err}"
    );
    assert!(state.exists(), "the state file is kept");
    let sha = big_file(p, "disk.img", 3);
    let mut again = vec!["--json"];
    again.extend(args);
    again[5] = &s.url;
    let out = agent(p, &again, &env(s)).ok();
    assert!(
        out.stderr.contains("changed since the interrupted upload"),
        "{}",
        out.stderr
    );
    assert_eq!(parse(&out.stdout)["sha256"], sha.as_str());
    assert_eq!(remote_sha256(s, "shrunk.img"), sha);
}

/// A part that fails stops the upload at once: the thread hashing the whole source for the audit log
/// stops too, instead of reading a 64 GiB (sparse) file to its end before the error is reported.
#[test]
fn a_failed_part_of_a_huge_file_is_reported_without_hashing_the_rest() {
    let s = &servers()[0];
    let (purl, _) = proxy(&s.url, 1, Duration::ZERO);
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    std::fs::File::create(p.join("huge.img"))
        .unwrap()
        .set_len(64 << 30)
        .unwrap();
    let t = Instant::now();
    let out = agent(
        p,
        &[
            "upload",
            "huge.img",
            "s3://bkt/huge.img",
            "--s3-endpoint",
            &purl,
            "--part-size",
            "8M",
            "--max-attempts",
            "1",
        ],
        &env(s),
    );
    // Hashing 64 GiB takes over 20 s on any machine (SHA-256 runs at 1-2 GB/s); stopping takes < 1 s.
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "took {:?}",
        t.elapsed()
    );
    assert!(
        out.code == 2 && out.stderr.contains("rerun the same command to resume"),
        "{}",
        out.stderr
    );
}

/// CompleteMultipartUpload reached the server but its answer was lost; S3 then forgets the upload.
/// Within the run, the retried Complete gets NoSuchUpload: the object is checked (size and composite
/// ETag) and adopted. With no retry left the run stops keeping its state, and the rerun (ListParts:
/// NoSuchUpload) adopts the object too. Neither uploads a byte again.
#[test]
fn a_complete_whose_answer_was_lost_is_adopted_not_uploaded_again() {
    let Some(s) = moto_s3() else { return };
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let sha = big_file(p, "disk.img", 3);
    let upload = |proxy: &S3Like, key: &str, more: &[&str]| {
        let mut a = vec![
            "--json",
            "upload",
            "disk.img",
            key,
            "--s3-endpoint",
            &proxy.url,
            "--part-size",
            "1M",
        ];
        a.extend(more);
        agent(p, &a, &env(&s))
    };
    // Within one run.
    let proxy = S3Like::start(&s.url, 1);
    let v = parse(&upload(&proxy, "s3://bkt/a.img", &[]).ok().stdout);
    assert_eq!(v["sha256"], sha.as_str());
    assert!(format!("{v}").contains("completed by an earlier"), "{v}");
    proxy.expect("/bkt/a.img", (2, 1, 3));
    assert_eq!(remote_sha256(&s, "a.img"), sha);
    // Across runs.
    let proxy = S3Like::start(&s.url, 1);
    let out = upload(&proxy, "s3://bkt/b.img", &["--max-attempts", "1"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(p.join("disk.img.diskseal-upload.json").exists());
    let v = parse(&upload(&proxy, "s3://bkt/b.img", &[]).ok().stdout);
    assert_eq!(v["sha256"], sha.as_str());
    assert_eq!(
        (v["parts_uploaded"].as_u64(), v["resumed"].as_bool()),
        (Some(0), Some(true)),
        "{v}"
    );
    proxy.expect("/bkt/b.img", (1, 1, 3));
    assert_eq!(remote_sha256(&s, "b.img"), sha);
    assert!(!p.join("disk.img.diskseal-upload.json").exists());
}

#[test]
fn ctrl_c_says_how_to_resume_or_abort() {
    let Some(s) = moto_s3() else { return };
    let (purl, _) = proxy(&s.url, 0, Duration::from_millis(200));
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    big_file(p, "disk.img", 8);
    let args = [
        "upload",
        "disk.img",
        "s3://bkt/int.img",
        "--s3-endpoint",
        &purl,
        "--part-size",
        "1M",
        "--jobs",
        "1",
    ];
    let child = agent_command(p, &args, &env(&s))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let state = p.join("disk.img.diskseal-upload.json");
    let t = Instant::now();
    while !state.exists() {
        assert!(t.elapsed() < Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(
        err.contains("rerun the same command to resume") && err.contains("--abort"),
        "{err}"
    );
    assert!(state.exists());
}

fn b64(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// Like S3: a body that does not match its Content-MD5 gets 400 BadDigest (no local server checks
/// UploadPart digests, agent-testing.md §1.2).
/// What S3 answers a part whose body does not match its Content-MD5 or its signed payload hash.
fn bad_digest(r: &Req) -> Option<Act> {
    if let Some(want) = r.header("content-md5")
        && b64(&md5::Md5::digest(&r.body)) != want
    {
        return Some(Act::Respond(400, "<Error><Code>BadDigest</Code><Message>The Content-MD5 you specified did not match what we received.</Message></Error>".into()));
    }
    let want = r.header("x-amz-content-sha256")?;
    (want != "UNSIGNED-PAYLOAD" && diskseal::bundle::hex(&Sha256::digest(&r.body)) != want).then(|| {
        Act::Respond(400, "<Error><Code>XAmzContentSHA256Mismatch</Code><Message>The provided 'x-amz-content-sha256' header does not match what was computed.</Message></Error>".into())
    })
}

fn upload_via(s: &S3, dir: &Path, purl: &str, key: &str) -> crate::util::Ran {
    upload_via_with(s, dir, purl, key, &[])
}

/// [`upload_via`] with `more` arguments.
fn upload_via_with(s: &S3, dir: &Path, purl: &str, key: &str, more: &[&str]) -> crate::util::Ran {
    let url = format!("s3://bkt/{key}");
    let mut args = vec![
        "--json",
        "upload",
        "disk.img",
        &url,
        "--s3-endpoint",
        purl,
        "--jobs",
        "3",
        "--part-size",
        part(s, "1M"),
        "--retry-base-ms",
        "10",
    ];
    args.extend(more);
    agent(dir, &args, &env(s))
}

/// What a bucket that requires `Content-MD5` on UploadPart answers a part without it: AWS S3 with
/// Object Lock (`InvalidRequest`, its wording), or an S3-compatible server's `MissingContentMD5`.
const MD5_REQUIRED: [&str; 2] = [
    "<Error><Code>InvalidRequest</Code><Message>Content-MD5 OR x-amz-checksum- HTTP header is required for Put Part requests with Object Lock parameters</Message><RequestId>4442587FB7D0A2F9</RequestId></Error>",
    "<Error><Code>MissingContentMD5</Code><Message>Missing required header for this request: Content-Md5.</Message><RequestId>4442587FB7D0A2F9</RequestId></Error>",
];

/// A proxy in front of `s` that answers every UploadPart without `Content-MD5` with `refusal` (400) and
/// checks the digests of the others as S3 does ([`bad_digest`]), and part `denied` (if any) with 403;
/// counts (refused, parts with MD5).
fn md5_bucket(
    s: &S3,
    refusal: &'static str,
    denied: Option<u32>,
) -> (String, Arc<AtomicU64>, Arc<AtomicU64>) {
    let (refused, with_md5) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (r2, m2) = (refused.clone(), with_md5.clone());
    let url = hook_proxy(
        &s.url,
        move |r| {
            if r.part().is_none() {
                return Act::Forward;
            }
            if r.part() == denied {
                return Act::Respond(
                    403,
                    "<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>"
                        .into(),
                );
            }
            if r.header("content-md5").is_none() {
                r2.fetch_add(1, Ordering::SeqCst);
                return Act::Respond(400, refusal.into());
            }
            m2.fetch_add(1, Ordering::SeqCst);
            bad_digest(r).unwrap_or(Act::Forward)
        },
        |_, _| {},
    );
    (url, refused, with_md5)
}

/// A bucket that requires Content-MD5 (Object Lock, IBM COS retention): with HMAC keys the parts go
/// out without it until the first refusal, then that part and every later one carry it, with a note
/// on stderr, in the result and in the audit log; with `--content-md5` none is refused.
#[test]
fn a_bucket_that_requires_content_md5_switches_the_upload_to_it() {
    for s in servers() {
        for (i, refusal) in MD5_REQUIRED.iter().enumerate() {
            eprintln!("Content-MD5 required against {}, answer {i}", s.name);
            let d = tempfile::tempdir().unwrap();
            let p = d.path();
            let sha = big_file(p, "disk.img", 16);
            let parts = if s.data.is_some() { 4 } else { 16 };
            let (purl, refused, with_md5) = md5_bucket(&s, refusal, None);
            let key = format!("md5-{i}.img");
            let out = upload_via(&s, p, &purl, &key).ok();
            let v = parse(&out.stdout);
            assert_eq!(v["sha256"], sha.as_str());
            assert_eq!(remote_sha256(&s, &key), sha);
            // Only the parts already on their way when the first was refused (3 jobs) go out without it.
            let r = refused.load(Ordering::SeqCst);
            assert!((1..=3).contains(&r), "{r} parts refused");
            assert_eq!(with_md5.load(Ordering::SeqCst), parts);
            let notes = v["notes"].to_string();
            assert!(
                notes.contains("without Content-MD5 (400 ")
                    && notes.contains("--content-md5")
                    && notes.contains(if i == 0 {
                        "InvalidRequest"
                    } else {
                        "MissingContentMD5"
                    })
                    && !notes.contains("sent again"),
                "{notes}"
            );
            assert!(
                out.stderr
                    .contains("diskseal-agent: note: the server refused part"),
                "{}",
                out.stderr
            );
            let log = std::fs::read_to_string(p.join("home/audit.jsonl")).unwrap();
            assert!(log.contains("pass --content-md5"), "{log}");
            // Asked for: every part carries it from the first.
            let (purl, refused, with_md5) = md5_bucket(&s, refusal, None);
            let out =
                upload_via_with(&s, p, &purl, &format!("flag-{key}"), &["--content-md5"]).ok();
            assert_eq!(refused.load(Ordering::SeqCst), 0);
            assert_eq!(with_md5.load(Ordering::SeqCst), parts);
            assert!(
                !parse(&out.stdout)["notes"]
                    .to_string()
                    .contains("Content-MD5")
            );
            assert_eq!(remote_sha256(&s, &format!("flag-{key}")), sha);
        }
    }
}

#[test]
fn a_part_damaged_on_the_way_gets_bad_digest_and_is_sent_again() {
    for s in servers() {
        eprintln!("damaged part against {}", s.name);
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        let sha = big_file(p, "disk.img", 16);
        let damaged = Arc::new(AtomicU64::new(0));
        let dm = damaged.clone();
        let digests = Arc::new(AtomicU64::new(0));
        let dg = digests.clone();
        // The first send of part 2 loses a bit on the way; the proxy checks the signed payload hash
        // (and Content-MD5) as S3 does.
        let purl = hook_proxy(
            &s.url,
            move |r| {
                if r.part() == Some(2) && dm.fetch_add(1, Ordering::SeqCst) == 0 {
                    r.body[1000] ^= 0x10;
                }
                match bad_digest(r) {
                    Some(a) => {
                        dg.fetch_add(1, Ordering::SeqCst);
                        a
                    }
                    None => Act::Forward,
                }
            },
            |_, _| {},
        );
        let out = upload_via(&s, p, &purl, "damaged.img").ok();
        assert_eq!(parse(&out.stdout)["sha256"], sha.as_str());
        assert_eq!(
            damaged.load(Ordering::SeqCst),
            2,
            "part 2 was not sent again"
        );
        assert_eq!(digests.load(Ordering::SeqCst), 1);
        assert_eq!(remote_sha256(&s, "damaged.img"), sha);
    }
}

/// The switch to Content-MD5 is kept in the state file: a rerun of an interrupted upload sends it from
/// its first part.
#[test]
fn an_upload_switched_to_content_md5_resumes_with_it() {
    let Some(s) = moto_s3() else { return };
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let sha = big_file(p, "disk.img", 8);
    // Part 6 is refused for good (403, not retried): the upload stops after the switch.
    let (purl, _, _) = md5_bucket(&s, MD5_REQUIRED[0], Some(6));
    let out = upload_via(&s, p, &purl, "resumed.img");
    assert_eq!(out.code, 2, "{}", out.stderr);
    let state = std::fs::read_to_string(p.join("disk.img.diskseal-upload.json")).unwrap();
    assert!(state.contains("\"content_md5\": true"), "{state}");
    let (purl, refused, _) = md5_bucket(&s, MD5_REQUIRED[0], None);
    let out = upload_via(&s, p, &purl, "resumed.img").ok();
    assert_eq!(refused.load(Ordering::SeqCst), 0);
    assert_eq!(parse(&out.stdout)["sha256"], sha.as_str());
    assert_eq!(remote_sha256(&s, "resumed.img"), sha);
}

#[test]
fn non_md5_part_etags_fall_back_to_the_echoed_sha256_checksum() {
    // moto only: the proxy rewrites the CompleteMultipartUpload body, whose signed payload hash
    // s3s-fs would check.
    let Some(s) = moto_s3() else { return };
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let sha = big_file(p, "disk.img", 8);
    // SSE-KMS-like opaque part ETags, and the checksum echoed as S3 does; the proxy puts the real
    // ETags back into CompleteMultipartUpload. Part 2's first answer echoes a wrong checksum.
    let etags = OpaqueEtags::default();
    let e2 = etags.clone();
    let seen2 = Arc::new(AtomicU64::new(0));
    let purl = hook_proxy(
        &s.url,
        move |r| {
            etags.restore(r);
            Act::Forward
        },
        move |r, resp| {
            let Some(n) = r.part() else { return };
            e2.disguise(n, resp);
            let mut sum = b64(&Sha256::digest(&r.body));
            if n == 2 && seen2.fetch_add(1, Ordering::SeqCst) == 0 {
                sum = b64(&Sha256::digest(b"something else"));
            }
            resp.set_header("x-amz-checksum-sha256", &sum);
        },
    );
    let out = upload_via(&s, p, &purl, "kms.img").ok();
    let v = parse(&out.stdout);
    assert_eq!(v["sha256"], sha.as_str());
    let notes = v["notes"].to_string();
    assert!(
        notes.contains("x-amz-checksum-sha256 the server echoed")
            && notes.contains("not the composite ETag")
            && notes.contains("1 part(s) sent again"),
        "{notes}"
    );
    assert_eq!(remote_sha256(&s, "kms.img"), sha);
    let log = std::fs::read_to_string(p.join("home/audit.jsonl")).unwrap();
    assert!(
        log.contains("x-amz-checksum-sha256 the server echoed"),
        "{log}"
    );
}

#[test]
fn upload_with_an_aws_profile_from_the_shared_files() {
    for s in servers() {
        eprintln!("profiles against {}", s.name);
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        let sha = big_file(p, "disk.img", 2);
        std::fs::create_dir(p.join(".aws")).unwrap();
        std::fs::write(
            p.join(".aws/credentials"),
            format!("[default]\naws_access_key_id = {}\naws_secret_access_key = wrong-default\n\n[ci]\naws_access_key_id = {}\naws_secret_access_key = {}\n", s.ak, s.ak, s.sk),
        )
        .unwrap();
        std::fs::write(p.join(".aws/config"), "[profile ci]\nregion = us-east-1\n").unwrap();
        let home = p.display().to_string();
        let up = |extra: &[&str], env: &[(&str, &str)]| {
            let mut args = vec![
                "--json",
                "upload",
                "disk.img",
                "s3://bkt/prof.img",
                "--s3-endpoint",
                &s.url,
                "--force",
            ];
            args.extend_from_slice(extra);
            let mut e = vec![("HOME", home.as_str())];
            e.extend_from_slice(env);
            agent(p, &args, &e)
        };
        // AWS_PROFILE picks the profile when no keys are in the environment.
        let out = up(&[], &[("AWS_PROFILE", "ci")]).ok();
        assert_eq!(parse(&out.stdout)["sha256"], sha.as_str());
        // Keys in the environment come before AWS_PROFILE (here: wrong ones, so 403) ...
        let wrong = [
            ("AWS_PROFILE", "ci"),
            ("AWS_ACCESS_KEY_ID", s.ak.as_str()),
            ("AWS_SECRET_ACCESS_KEY", "wrong-env"),
        ];
        let out = up(&[], &wrong);
        assert!(
            out.code == 2 && out.stderr.contains("SignatureDoesNotMatch"),
            "{}",
            out.stderr
        );
        // ... but --profile beats them, as in the AWS CLI.
        up(&["--profile", "ci"], &wrong).ok();
        // The default profile is used without any setting (its secret is wrong here).
        let out = up(&[], &[]);
        assert!(
            out.code == 2 && out.stderr.contains("SignatureDoesNotMatch"),
            "{}",
            out.stderr
        );
        // The files' locations from AWS_SHARED_CREDENTIALS_FILE / AWS_CONFIG_FILE.
        std::fs::rename(p.join(".aws/credentials"), p.join("creds.ini")).unwrap();
        let creds = p.join("creds.ini").display().to_string();
        up(
            &["--profile", "ci"],
            &[("AWS_SHARED_CREDENTIALS_FILE", creds.as_str())],
        )
        .ok();
        let out = up(
            &["--profile", "nope"],
            &[("AWS_SHARED_CREDENTIALS_FILE", creds.as_str())],
        );
        assert!(
            out.code == 2 && out.stderr.contains("\"nope\""),
            "{}",
            out.stderr
        );
        for t in [&out.stderr, &out.stdout] {
            assert!(!t.contains(&s.sk) && !t.contains("wrong-default"), "{t}");
        }
    }
}

/// SSE-KMS-like opaque part ETags: the proxy answers `kmsN-...` instead of a part's MD5 and puts the
/// real ETags back into CompleteMultipartUpload on the way to the server.
#[derive(Clone, Default)]
struct OpaqueEtags(Arc<std::sync::Mutex<Vec<(String, String)>>>);

impl OpaqueEtags {
    fn restore(&self, r: &mut Req) {
        if is_complete_upload(r) {
            let mut body = String::from_utf8(r.body.clone()).unwrap();
            for (fake, real) in self.0.lock().unwrap().iter() {
                body = body.replace(fake, real);
            }
            r.body = body.into_bytes();
        }
    }

    fn disguise(&self, part: u32, resp: &mut Resp) {
        let real = resp
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("etag"))
            .map(|(_, v)| v.trim_matches('"').to_owned())
            .unwrap_or_default();
        let fake = format!("kms{part}-{}", &real[..8]);
        self.0.lock().unwrap().push((fake.clone(), real));
        resp.set_header("ETag", &format!("\"{fake}\""));
    }
}

fn is_complete_upload(r: &Req) -> bool {
    r.line.starts_with("POST ") && r.line.contains("uploadId=")
}

/// A proxy answering opaque part ETags, and CompleteMultipartUpload with `<ChecksumSHA256>` set to
/// the composite of the part checksums as S3 computes it (moto gives none), or a wrong one.
fn composite_proxy(s: &S3, wrong: bool) -> String {
    type Sums = std::collections::BTreeMap<u32, Vec<u8>>;
    let etags = OpaqueEtags::default();
    let sums = Arc::new(std::sync::Mutex::new(Sums::new()));
    let e2 = etags.clone();
    hook_proxy(
        &s.url,
        move |r| {
            etags.restore(r);
            Act::Forward
        },
        move |r, resp| {
            if let Some(n) = r.part() {
                e2.disguise(n, resp);
                sums.lock()
                    .unwrap()
                    .insert(n, Sha256::digest(&r.body).to_vec());
            } else if is_complete_upload(r) {
                let parts = sums.lock().unwrap();
                let mut all: Vec<u8> = parts.values().flatten().copied().collect();
                if wrong {
                    all[0] ^= 1;
                }
                let sum = format!("{}-{}", b64(&Sha256::digest(&all)), parts.len());
                let body = String::from_utf8(resp.body.clone()).unwrap().replace(
                    "</ETag>",
                    &format!("</ETag><ChecksumSHA256>{sum}</ChecksumSHA256>"),
                );
                resp.set_header("Content-Length", &body.len().to_string());
                resp.body = body.into_bytes();
            }
        },
    )
}

#[test]
fn non_md5_part_etags_are_checked_through_the_composite_checksum_when_given() {
    let Some(s) = moto_s3() else { return };
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let sha = big_file(p, "disk.img", 4);
    let out = upload_via(&s, p, &composite_proxy(&s, false), "sum.img").ok();
    let v = parse(&out.stdout);
    assert_eq!(v["sha256"], sha.as_str());
    assert!(
        v["notes"]
            .to_string()
            .contains("composite ChecksumSHA256 instead of the composite ETag"),
        "{v}"
    );
    assert_eq!(remote_sha256(&s, "sum.img"), sha);
    let out = upload_via(&s, p, &composite_proxy(&s, true), "sum2.img");
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("composite ChecksumSHA256")
            && out.stderr.contains("is not that of the parts sent"),
        "{}",
        out.stderr
    );
}

/// The bytes this process has read so far (`rchar` of /proc/self/io: files and sockets).
fn bytes_read() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("rchar: "))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Issue 17: the upload reads each byte of the source once: the parts' MD5 and SHA-256 and the whole
/// file's SHA-256 (the audit log's) come from the same read. The upload runs in this process, so
/// `/proc/self/io` counts its reads (it read 2x the file when a second thread hashed the whole file).
/// It runs alone in a child process (this test binary, filtered to this test): other tests of this
/// process read files too.
#[test]
fn upload_reads_each_byte_of_the_source_once() {
    if std::env::var_os("DISKSEAL_READ_ONCE_CHILD").is_none() {
        let out = Command::new(std::env::current_exe().unwrap())
            .args([
                "upload::upload_reads_each_byte_of_the_source_once",
                "--exact",
                "--nocapture",
            ])
            .env("DISKSEAL_READ_ONCE_CHILD", "1")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success() && text.contains("1 passed"), "{text}");
        eprint!("{text}");
        return;
    }
    let Some(s) = s3s_fs().or_else(moto_s3) else {
        return;
    };
    let d = tempfile::tempdir().unwrap();
    let sha = big_file(d.path(), "once.img", 40);
    let size = 40u64 << 20;
    let t = diskseal_agent::s3::Target {
        endpoint: s.url.clone(),
        region: "us-east-1".into(),
        bucket: "bkt".into(),
        key: "once.img".into(),
    };
    let creds = diskseal_agent::s3::Credentials {
        access_key_id: s.ak.clone(),
        secret_access_key: diskseal_agent::secret::SecretString::new(s.sk.clone()),
        session_token: None,
    };
    let c = diskseal_agent::s3::Client::new(
        t,
        diskseal_agent::s3::Auth::Hmac(creds),
        diskseal_agent::http::RetryPolicy::default(),
    );
    let o = diskseal_agent::s3::Options {
        jobs: 3,
        part_size: Some(8 << 20),
        force: true,
        content_md5: false,
    };
    let before = bytes_read();
    let u = diskseal_agent::s3::upload(&c, &d.path().join("once.img"), &o, &mut |_| {}).unwrap();
    let read = bytes_read() - before;
    assert_eq!(u.sha256, sha);
    assert!(
        read < size + size / 4,
        "{} read {read} bytes for a {size}-byte file",
        s.name
    );
}
