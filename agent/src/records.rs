//! The records the agent reads back from its own files, as pure functions of their bytes: the audit
//! log's hash chain ([`check_chain`]) and the ship state ([`ShipState`]). They need only serde,
//! serde_json and sha2, so the fuzz targets `audit_log` and `ship_state` include this file by path.

use serde_json::Value;
use sha2::{Digest, Sha256};

/// `prevHash` of the first line.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Lowercase hex SHA-256 of one log line.
pub fn sha_hex(line: &[u8]) -> String {
    Sha256::digest(line)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Checks an audit log's text and its head file (`head_name` names it in messages): every line's
/// `seq` and `prevHash`, and the head against the last line. Returns the number of lines and the hash
/// of the last one, or what is wrong.
pub fn check_chain(
    mut text: Vec<u8>,
    head: Option<&[u8]>,
    head_name: &str,
) -> Result<(u64, String), String> {
    // A writer killed in the middle of its line (the kernel may stop a write between pages) leaves an
    // unterminated tail that the head never covered: accepted below only if the head matches the whole
    // lines before it, else it is a truncation.
    let torn = text.last().is_some_and(|&b| b != b'\n');
    if torn {
        let keep = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        text.truncate(keep);
    }
    let incomplete = || "the last line is incomplete (the log was truncated)".to_owned();
    let mut prev = GENESIS.to_owned();
    let mut before_last = GENESIS.to_owned();
    let mut n = 0u64;
    let body = text.strip_suffix(b"\n").unwrap_or(&text);
    let lines: Vec<&[u8]> = if body.is_empty() {
        Vec::new()
    } else {
        body.split(|&b| b == b'\n').collect()
    };
    for (i, line) in lines.into_iter().enumerate() {
        let lineno = i + 1;
        let v: Value = serde_json::from_slice(line)
            .map_err(|_| format!("line {lineno} is not JSON (edited or truncated)"))?;
        let seq = v["seq"]
            .as_u64()
            .ok_or_else(|| format!("line {lineno} has no seq"))?;
        if seq != lineno as u64 {
            return Err(format!(
                "line {lineno} has seq {seq}: a line was removed, inserted or reordered"
            ));
        }
        if v["prevHash"].as_str() != Some(prev.as_str()) {
            return Err(format!(
                "line {lineno}: prevHash does not match the hash of line {}: that line was edited, or lines were removed or reordered",
                lineno - 1
            ));
        }
        before_last = std::mem::replace(&mut prev, sha_hex(line));
        n += 1;
    }
    let h: Value = head
        .and_then(|b| serde_json::from_slice(b).ok())
        .ok_or_else(|| {
            format!("{head_name} is missing or unreadable: truncation cannot be ruled out")
        })?;
    // A writer killed between appending its line and renaming the head leaves the head one line behind,
    // naming the line before: whole, and no weaker (anyone who can append can chain a line).
    let lagging = n > 0
        && h["seq"].as_u64() == Some(n - 1)
        && h["sha256"].as_str() == Some(before_last.as_str());
    if lagging {
        return Ok((n, prev));
    }
    if torn && (h["seq"].as_u64() != Some(n) || h["sha256"].as_str() != Some(prev.as_str())) {
        return Err(incomplete());
    }
    if h["seq"].as_u64() != Some(n) {
        return Err(format!(
            "the log has {n} lines but {} records {}: lines were removed from the end",
            head_name, h["seq"]
        ));
    }
    if h["sha256"].as_str() != Some(prev.as_str()) {
        return Err(format!(
            "the last line (line {n}) does not match {}: it was edited",
            head_name
        ));
    }
    Ok((n, prev))
}

/// What a `ship` run has done so far (`ship-<sha>.json` beside the audit log): a rerun skips every step
/// recorded here. No secret: the WDEK is wrapped.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct ShipState {
    /// The image's sha256.
    pub image_sha256: String,
    /// `ibm-vpc` or `ibm-classic`.
    pub target: String,
    /// The object URL.
    pub object: String,
    /// The wrapped key, once wrapped.
    pub wdek: Option<String>,
    /// The root key version that wrapped it.
    pub key_version: Option<String>,
    /// The uploaded object's ETag.
    pub uploaded_etag: Option<String>,
    /// Created by the cloud, maybe not yet available: a rerun polls it instead of importing again.
    pub image_created: Option<(String, Option<String>)>,
    /// The image id, once available.
    pub image_id: Option<String>,
    /// The upload was started by a ship (the object did not exist, or --force): a rerun may replace it.
    #[serde(default)]
    pub upload_started: bool,
    /// The create request was sent but its answer maybe not recorded: a rerun looks the image up first.
    #[serde(default)]
    pub import_sent: bool,
    /// `--provision`: the order was sent (a rerun looks the server up by name before ordering).
    #[serde(default)]
    pub provision_sent: bool,
    /// `--provision`: the server ordered (or adopted); a rerun only polls it.
    #[serde(default)]
    pub instance_id: Option<String>,
}

impl ShipState {
    /// Parses a state file.
    pub fn parse(bytes: &[u8]) -> Result<ShipState, String> {
        serde_json::from_slice(bytes).map_err(|e| e.to_string())
    }
}
