//! The audit log: one CADF-shaped JSON event per line (the Activity Tracker shape of `ibm-cloud.md` §6),
//! hash-chained: each line carries `seq` and `prevHash`, the SHA-256 of the previous line's bytes (64
//! zeros for the first). A sidecar `<log>.head` records the last `seq` and line hash, so dropping or
//! editing the last lines is detected too. [`verify`] finds edited, removed, reordered and truncated
//! lines. (The chain proves integrity against edits, not against someone who rewrites the whole log
//! and its head: ship it to an append-only store for that.)
//!
//! `outcome` is CADF's `success` or `failure`, or `refused` (stopped before anything was sent) or
//! `dry-run`; the initiator is the local user (the real uid's name) at the host, with the kind of
//! credential the step used.
//!
//! No secret is ever written: events hold actions, outcomes, ids, hashes and versions only.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::error::{Error, Result};

/// `prevHash` of the first line.
pub use crate::records::GENESIS;

/// How an action ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Outcome {
    /// It was done.
    #[default]
    Success,
    /// It was tried and failed (the reason is in `reasonForFailure`).
    Failure,
    /// A pre-flight check or a safety rule stopped it before anything was sent.
    Refused,
    /// `--dry-run`: the requests were shown, none was sent.
    DryRun,
}

impl Outcome {
    /// `Success` for `true`, `Failure` for `false`.
    pub fn of(ok: bool) -> Outcome {
        if ok {
            Outcome::Success
        } else {
            Outcome::Failure
        }
    }

    /// The log's `outcome` and `reason.reasonType`.
    fn names(self) -> (&'static str, &'static str) {
        match self {
            Outcome::Success => ("success", "OK"),
            Outcome::Failure => ("failure", "Error"),
            Outcome::Refused => ("refused", "Refused"),
            Outcome::DryRun => ("dry-run", "DryRun"),
        }
    }
}

/// One event to log.
#[derive(Debug, Clone, Default)]
pub struct Event {
    /// `service.objectType.action`, e.g. `kms.secrets.wrap`.
    pub action: String,
    /// How it ended.
    pub outcome: Outcome,
    /// The kind of credential used (`apikey`, `hmac`, `aws-access-key`, `pkcs11-pin`, `age-identity`;
    /// empty: none).
    pub credential: String,
    /// HTTP-like reason code (200 on success, the KMS status on failure, 0 when none).
    pub reason_code: u16,
    /// Why it failed (an error message, never a secret).
    pub failure: Option<String>,
    /// What was acted on: a key CRN/ARN, a bundle path, a file.
    pub target_id: String,
    /// The target's type URI, e.g. `kms/secrets`.
    pub target_type: String,
    /// The request's correlation id.
    pub correlation_id: Option<String>,
    /// SHA-256 of the image concerned.
    pub image_sha256: Option<String>,
    /// Extra non-secret request facts (key version, bundle name...).
    pub details: Value,
}

fn head_path(log: &Path) -> PathBuf {
    let mut s = log.as_os_str().to_owned();
    s.push(".head");
    PathBuf::from(s)
}

use crate::records::sha_hex;

/// The local user running the agent: the real uid's name (the password database, NSS included),
/// else `$USER`, else `uid N`.
fn local_user() -> String {
    let uid = nix::unistd::getuid();
    nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map(|u| u.name)
        .or_else(|| std::env::var("USER").ok().filter(|u| !u.is_empty()))
        .unwrap_or_else(|| format!("uid {uid}"))
}

fn initiator(credential: &str) -> Value {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into());
    json!({
        "id": format!("{}@{host}", local_user()),
        "typeURI": "service/security/account/user",
        "credential": {"type": if credential.is_empty() { "none" } else { credential }},
        "host": {"agent": concat!("diskseal-agent/", env!("CARGO_PKG_VERSION"))},
    })
}

fn severity(code: u16, outcome: Outcome) -> &'static str {
    match (outcome, code) {
        (Outcome::Success | Outcome::DryRun, _) => "normal",
        (Outcome::Failure, 401 | 403 | 503 | 507) => "critical",
        _ => "warning",
    }
}

/// Reads the last line's seq and hash (the chain's tip), checking nothing else.
fn tip(log: &Path) -> Result<(u64, String)> {
    let text = match std::fs::read(log) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, GENESIS.into())),
        Err(e) => return Err(Error::io("read audit log", log, e)),
    };
    let Some(last) = text.split(|&b| b == b'\n').rfind(|l| !l.is_empty()) else {
        return Ok((0, GENESIS.into()));
    };
    let v: Value = serde_json::from_slice(last).map_err(|_| Error::Audit {
        path: log.to_owned(),
        message: "the last line is not JSON (truncated?); run `audit verify`".into(),
    })?;
    Ok((v["seq"].as_u64().unwrap_or(0), sha_hex(last)))
}

/// Set once this process has recorded a failure or a refusal.
static FAILURE_RECORDED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// True once this process has recorded a failure or a refusal (so a command's failure is recorded once).
pub fn failure_recorded() -> bool {
    FAILURE_RECORDED.load(std::sync::atomic::Ordering::Relaxed)
}

/// Appends `ev` to `log` (created with mode 0600), chained to the previous line; updates the head file.
pub fn append(log: &Path, ev: &Event) -> Result<()> {
    if let Some(dir) = log.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("create directory", dir, e))?;
    }
    use std::os::unix::fs::OpenOptionsExt;
    // A new log gets its head (at the genesis) before the log file exists, so a writer killed at any
    // point leaves no log, or a log whose head is at most one line behind (see `verify`).
    let head = head_path(log);
    if !log.exists() && !head.exists() {
        write_head(&head, 0, GENESIS)?;
    }
    // One writer at a time: the lock covers reading the tip, appending and updating the head.
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o600)
        .open(log)
        .map_err(|e| Error::io("open audit log", log, e))?;
    f.lock().map_err(|e| Error::io("lock audit log", log, e))?;
    drop_torn_tail(&f, log)?;
    let (seq, prev) = tip(log)?;
    if seq == 0 && !head.exists() {
        write_head(&head, 0, GENESIS)?;
    }
    let (outcome, reason_type) = ev.outcome.names();
    let mut reason = json!({"reasonCode": ev.reason_code, "reasonType": reason_type});
    if let Some(f) = &ev.failure {
        reason["reasonForFailure"] = json!(f);
    }
    let line = json!({
        "seq": seq + 1,
        "prevHash": prev,
        "id": crate::kms::uuid4(),
        "eventTime": crate::time::event_time_now(),
        "action": ev.action,
        "outcome": outcome,
        "reason": reason,
        "severity": severity(ev.reason_code, ev.outcome),
        "initiator": initiator(&ev.credential),
        "target": {"id": ev.target_id, "typeURI": ev.target_type},
        "observer": {"name": "diskseal-agent"},
        "correlationId": ev.correlation_id,
        "requestData": {"imageSha256": ev.image_sha256, "details": ev.details},
        "message": format!("diskseal-agent: {} {}", ev.action, outcome),
    })
    .to_string();
    f.write_all(format!("{line}\n").as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::io("append to audit log", log, e))?;
    write_head(&head, seq + 1, &sha_hex(line.as_bytes()))?;
    if matches!(ev.outcome, Outcome::Failure | Outcome::Refused) {
        FAILURE_RECORDED.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    f.unlock()
        .map_err(|e| Error::io("unlock audit log", log, e))?;
    Ok(())
}

/// Cuts an unterminated last line (a writer killed mid-write; never covered by the head) so the next
/// line starts on a line of its own. Called with the log locked.
fn drop_torn_tail(f: &std::fs::File, log: &Path) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let len = f
        .metadata()
        .map_err(|e| Error::io("stat audit log", log, e))?
        .len();
    let mut last = [0u8; 1];
    if len == 0
        || f.read_exact_at(&mut last, len - 1)
            .map_err(|e| Error::io("read audit log", log, e))
            .map(|()| last[0] == b'\n')?
    {
        return Ok(());
    }
    let text = std::fs::read(log).map_err(|e| Error::io("read audit log", log, e))?;
    let keep = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    f.set_len(keep as u64)
        .map_err(|e| Error::io("cut the torn last line of the audit log", log, e))
}

/// Replaces the head file (temporary file + rename: always whole).
fn write_head(head: &Path, seq: u64, sha256: &str) -> Result<()> {
    // A name of its own per call: the genesis head of a new log is written before the lock is taken,
    // so two writers may be here at once.
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = head.with_extension(format!("head.{}-{n}.tmp", std::process::id()));
    let text = json!({"seq": seq, "sha256": sha256}).to_string();
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, head))
        .map_err(|e| Error::io("write audit head", head, e))
}

/// What [`verify`] found in a sound log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Lines checked.
    pub lines: u64,
    /// Hash of the last line.
    pub tip: String,
}

/// Checks the whole chain and the head file.
pub fn verify(log: &Path) -> Result<Verified> {
    let fail = |message: String| Error::Audit {
        path: log.to_owned(),
        message,
    };
    let text = std::fs::read(log).map_err(|e| Error::io("read audit log", log, e))?;
    let head = head_path(log);
    let head_bytes = std::fs::read(&head).ok();
    let (lines, tip) =
        crate::records::check_chain(text, head_bytes.as_deref(), &head.display().to_string())
            .map_err(fail)?;
    Ok(Verified { lines, tip })
}
/// Appends `ev` to the audit log `l` names.
pub fn log(l: &crate::config::Layers, ev: Event) -> Result<()> {
    append(&l.audit_log(), &ev)
}

/// Logs a KMS call: its outcome, the root key, the correlation id.
pub fn log_kms(
    l: &crate::config::Layers,
    action: &str,
    kms: &dyn crate::kms::KeyWrapper,
    r: std::result::Result<Option<String>, crate::http::RemoteError>,
    image_sha256: Option<String>,
    details: serde_json::Value,
) -> Result<()> {
    let (outcome, reason_code, failure, correlation_id) = match r {
        Ok(cid) => (Outcome::Success, 200, None, cid),
        Err(e) => (
            Outcome::Failure,
            e.reason_code(),
            Some(e.to_string()),
            e.correlation_id.clone(),
        ),
    };
    log(
        l,
        Event {
            action: action.into(),
            outcome,
            credential: l.kms_credential(),
            reason_code,
            failure,
            target_id: kms.target(),
            target_type: "kms/secrets".into(),
            correlation_id,
            image_sha256,
            details,
        },
    )
}
