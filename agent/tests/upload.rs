//! `diskseal-agent upload` against moto's S3 in IAM mode (SigV4 signatures are checked), with
//! `S3_UPLOAD_PART_MIN_SIZE=1024` so parts can be small, and against s3s-fs 0.14.1 (strict SigV4, 5 MiB
//! parts) when installed: 256 MiB in parallel parts, kill -9 then resume,
//! wrong secret, a fault-injecting proxy, existing object and missing bucket.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::util::{Server, agent, free_port, have, pattern, start_server};

pub struct S3 {
    _server: Server,
    pub url: String,
    pub ak: String,
    pub sk: String,
    /// s3s-fs's data directory (objects are plain files there); None for moto.
    pub data: Option<tempfile::TempDir>,
    pub name: &'static str,
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

/// A proxy to `upstream` on 127.0.0.1 that delays every part upload by `delay`, and answers every
/// `fail_every`-th one with 500, 503 or a dropped connection in turn (0: never).
fn proxy(upstream: &str, fail_every: u64, delay: Duration) -> (String, Arc<AtomicU64>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let up = upstream.trim_start_matches("http://").to_owned();
    let parts = Arc::new(AtomicU64::new(0));
    let faults = Arc::new(AtomicU64::new(0));
    let (p2, f2) = (parts, faults.clone());
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(c) = c else { continue };
            let (up, parts, faults) = (up.clone(), p2.clone(), f2.clone());
            std::thread::spawn(move || serve(c, &up, fail_every, delay, &parts, &faults));
        }
    });
    (url, faults)
}

fn serve(
    c: TcpStream,
    up: &str,
    fail_every: u64,
    delay: Duration,
    parts: &AtomicU64,
    faults: &AtomicU64,
) {
    let mut r = BufReader::new(c.try_clone().unwrap());
    let mut w = c;
    loop {
        let mut head = Vec::new();
        let mut len = 0usize;
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
            if line.to_ascii_lowercase().starts_with("connection:") {
                continue;
            }
            if line == "\r\n" {
                head.extend_from_slice(b"Connection: close\r\n\r\n");
                break;
            }
            head.extend_from_slice(line.as_bytes());
        }
        let mut body = vec![0u8; len];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        let first =
            String::from_utf8_lossy(&head[..head.iter().position(|&b| b == b'\n').unwrap_or(0)])
                .into_owned();
        if first.starts_with("PUT ") && first.contains("partNumber=") {
            std::thread::sleep(delay);
            let n = parts.fetch_add(1, Ordering::SeqCst) + 1;
            if fail_every > 0 && n.is_multiple_of(fail_every) {
                let k = faults.fetch_add(1, Ordering::SeqCst);
                match k % 3 {
                    0 => return, // drop the connection
                    1 => {
                        let b = "<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";
                        let _ = write!(
                            w,
                            "HTTP/1.1 503 Service Unavailable\r\nContent-Length: {}\r\n\r\n{b}",
                            b.len()
                        );
                        continue;
                    }
                    _ => {
                        let b = "<Error><Code>InternalError</Code><Message>We encountered an internal error.</Message></Error>";
                        let _ = write!(
                            w,
                            "HTTP/1.1 500 Internal Server Error\r\nContent-Length: {}\r\n\r\n{b}",
                            b.len()
                        );
                        continue;
                    }
                }
            }
        }
        let Ok(mut u) = TcpStream::connect(up) else {
            return;
        };
        if u.write_all(&head)
            .and_then(|()| u.write_all(&body))
            .is_err()
        {
            return;
        }
        let mut resp = Vec::new();
        let _ = u.read_to_end(&mut resp);
        if w.write_all(&resp).is_err() {
            return;
        }
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
            "--endpoint",
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
            "--endpoint",
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
            "--endpoint",
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
            "--endpoint",
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
        "--endpoint",
        &purl,
        "--jobs",
        "2",
        "--part-size",
        ps,
    ];
    let mut child = Command::new(env!("CARGO_BIN_EXE_diskseal-agent"))
        .args(args)
        .current_dir(p)
        .env("DISKSEAL_AGENT_HOME", p.join("home"))
        .envs(env(s))
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
            "--endpoint",
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
        &["upload", "disk.img", "s3://bkt/x.img", "--endpoint", &s.url],
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
            "--endpoint",
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
            "--endpoint",
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
        &["upload", "disk.img", "s3://bkt/x.img", "--endpoint", &s.url],
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
            "--endpoint",
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
            "--endpoint",
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
fn ctrl_c_says_how_to_resume_or_abort() {
    let Some(s) = moto_s3() else { return };
    let (purl, _) = proxy(&s.url, 0, Duration::from_millis(200));
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    big_file(p, "disk.img", 8);
    let child = Command::new(env!("CARGO_BIN_EXE_diskseal-agent"))
        .args([
            "upload",
            "disk.img",
            "s3://bkt/int.img",
            "--endpoint",
            &purl,
            "--part-size",
            "1M",
            "--jobs",
            "1",
        ])
        .current_dir(p)
        .env("DISKSEAL_AGENT_HOME", p.join("home"))
        .envs(env(&s))
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
