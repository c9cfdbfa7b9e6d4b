//! The audit log: one CADF-shaped JSON event per line (the Activity Tracker shape of `ibm-cloud.md` §6),
//! hash-chained: each line carries `seq` and `prevHash`, the SHA-256 of the previous line's bytes (64
//! zeros for the first). A sidecar `<log>.head` records the last `seq` and line hash, so dropping or
//! editing the last lines is detected too. [`verify`] finds edited, removed, reordered and truncated
//! lines. (The chain proves integrity against edits, not against someone who rewrites the whole log
//! and its head: ship it to an append-only store for that.)
//!
//! No secret is ever written: events hold actions, outcomes, ids, hashes and versions only.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::error::{Error, Result};

/// `prevHash` of the first line.
pub use crate::records::GENESIS;

/// One event to log.
#[derive(Debug, Clone, Default)]
pub struct Event {
    /// `service.objectType.action`, e.g. `kms.secrets.wrap`.
    pub action: String,
    /// `success` or `failure`.
    pub success: bool,
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

fn initiator() -> Value {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into());
    json!({
        "id": format!("{user}@{host}"),
        "typeURI": "service/security/account/user",
        "credential": {"type": "apikey"},
        "host": {"agent": concat!("diskseal-agent/", env!("CARGO_PKG_VERSION"))},
    })
}

fn severity(code: u16, success: bool) -> &'static str {
    match code {
        _ if success => "normal",
        401 | 403 | 503 | 507 => "critical",
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
    let outcome = if ev.success { "success" } else { "failure" };
    let mut reason = json!({"reasonCode": ev.reason_code, "reasonType": if ev.success { "OK" } else { "Error" }});
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
        "severity": severity(ev.reason_code, ev.success),
        "initiator": initiator(),
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
    let (success, reason_code, failure, correlation_id) = match r {
        Ok(cid) => (true, 200, None, cid),
        Err(e) => (
            false,
            e.reason_code(),
            Some(e.to_string()),
            e.correlation_id.clone(),
        ),
    };
    log(
        l,
        Event {
            action: action.into(),
            success,
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
