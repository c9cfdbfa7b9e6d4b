//! The audit log's hash chain: every kind of tampering is detected.

use std::path::Path;

use diskseal_agent::audit::{self, Event};

fn write_log(path: &Path, n: usize) {
    for i in 0..n {
        let ev = Event {
            action: "kms.secrets.wrap".into(),
            success: i % 2 == 0,
            reason_code: if i % 2 == 0 { 200 } else { 503 },
            target_id: format!("crn:test:{i}"),
            target_type: "kms/secrets".into(),
            ..Event::default()
        };
        audit::append(path, &ev).unwrap();
    }
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn put(path: &Path, l: &[String]) {
    std::fs::write(path, l.iter().map(|s| format!("{s}\n")).collect::<String>()).unwrap();
}

#[track_caller]
fn detected(path: &Path, needle: &str) {
    let e = audit::verify(path).unwrap_err().to_string();
    assert!(e.contains(needle), "{needle:?} not in {e}");
}

#[test]
fn sound_log_verifies() {
    let d = tempfile::tempdir().unwrap();
    let log = d.path().join("a.jsonl");
    write_log(&log, 5);
    let v = audit::verify(&log).unwrap();
    assert_eq!(v.lines, 5);
    let first: serde_json::Value = serde_json::from_str(&lines(&log)[0]).unwrap();
    assert_eq!(first["prevHash"], audit::GENESIS);
    assert_eq!(first["severity"], "normal");
    let second: serde_json::Value = serde_json::from_str(&lines(&log)[1]).unwrap();
    assert_eq!(second["outcome"], "failure");
    assert_eq!(second["severity"], "critical");
}

#[test]
fn edited_lines_are_detected() {
    let d = tempfile::tempdir().unwrap();
    let log = d.path().join("a.jsonl");
    write_log(&log, 5);
    let orig = lines(&log);
    let mut l = orig.clone();
    l[2] = l[2].replace("crn:test:2", "crn:test:X");
    put(&log, &l);
    detected(&log, "line 4: prevHash does not match the hash of line 3");
    // Editing the last line is caught by the head file.
    let mut l = orig.clone();
    l[4] = l[4].replace("crn:test:4", "crn:test:Y");
    put(&log, &l);
    detected(&log, "the last line (line 5) does not match");
}

#[test]
fn removed_lines_are_detected() {
    let d = tempfile::tempdir().unwrap();
    let log = d.path().join("a.jsonl");
    write_log(&log, 5);
    let mut l = lines(&log);
    l.remove(1);
    put(&log, &l);
    detected(&log, "line 2 has seq 3");
}

#[test]
fn reordered_lines_are_detected() {
    let d = tempfile::tempdir().unwrap();
    let log = d.path().join("a.jsonl");
    write_log(&log, 5);
    let mut l = lines(&log);
    l.swap(1, 2);
    put(&log, &l);
    detected(&log, "line 2 has seq 3");
}

#[test]
fn truncation_is_detected() {
    let d = tempfile::tempdir().unwrap();
    let log = d.path().join("a.jsonl");
    write_log(&log, 5);
    let l = lines(&log);
    put(&log, &l[..3]);
    detected(&log, "the log has 3 lines but");
    // Cut in the middle of a line.
    let text = l.join("\n");
    std::fs::write(&log, &text[..text.len() - 20]).unwrap();
    detected(&log, "incomplete");
    // The head file removed.
    put(&log, &l);
    audit::verify(&log).unwrap();
    std::fs::remove_file(d.path().join("a.jsonl.head")).unwrap();
    detected(&log, "truncation cannot be ruled out");
}

#[test]
fn tampering_makes_audit_verify_exit_1() {
    let d = tempfile::tempdir().unwrap();
    let log = d.path().join("a.jsonl");
    write_log(&log, 3);
    let mut l = lines(&log);
    l[0] = l[0].replace("\"success\"", "\"failure\"");
    put(&log, &l);
    let out = crate::util::agent(d.path(), &["audit", "verify", "a.jsonl"], &[]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("line 2: prevHash"), "{}", out.stderr);
}

#[test]
fn concurrent_writers_keep_the_chain() {
    let d = tempfile::tempdir().unwrap();
    let log = d.path().join("a.jsonl");
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| write_log(&log, 10));
        }
    });
    assert_eq!(audit::verify(&log).unwrap().lines, 40);
}

/// A writer killed between appending its line and renaming the head leaves the head one line behind:
/// the log still verifies (and the next append brings the head up to date); two lines behind is not that.
#[test]
fn a_head_one_line_behind_is_a_killed_writer_not_tampering() {
    let d = tempfile::tempdir().unwrap();
    let log = d.path().join("a.jsonl");
    let head = d.path().join("a.jsonl.head");
    write_log(&log, 3);
    let three = std::fs::read(&head).unwrap();
    write_log(&log, 1);
    let four = std::fs::read(&head).unwrap();
    write_log(&log, 1);
    std::fs::write(&head, &four).unwrap();
    assert_eq!(audit::verify(&log).unwrap().lines, 5);
    std::fs::write(&head, &three).unwrap();
    detected(&log, "the log has 5 lines but");
    // One line behind but naming another line: an edit.
    std::fs::write(&head, &four).unwrap();
    let mut l = lines(&log);
    l[3] = l[3].replace("crn:test:0", "crn:test:Z");
    put(&log, &l);
    assert!(audit::verify(&log).is_err());
}

/// A writer killed in the middle of its line leaves an unterminated tail the head never covered: the
/// log still verifies, and the next append cuts the tail and chains to the last whole line.
#[test]
fn a_torn_last_line_from_a_killed_writer_is_cut_by_the_next_append() {
    let d = tempfile::tempdir().unwrap();
    let log = d.path().join("a.jsonl");
    write_log(&log, 3);
    let whole = std::fs::read(&log).unwrap();
    let mut torn = whole.clone();
    torn.extend_from_slice(br#"{"seq":4,"prevHash":"ab"#);
    std::fs::write(&log, &torn).unwrap();
    assert_eq!(audit::verify(&log).unwrap().lines, 3);
    write_log(&log, 1);
    assert_eq!(audit::verify(&log).unwrap().lines, 4);
    assert!(std::fs::read(&log).unwrap().starts_with(&whole));
    // A torn tail where whole lines are missing too is a truncation.
    let l = lines(&log);
    let mut cut = l[..2].join("\n").into_bytes();
    cut.extend_from_slice(b"\n{\"seq\":3");
    std::fs::write(&log, cut).unwrap();
    detected(&log, "incomplete");
}
