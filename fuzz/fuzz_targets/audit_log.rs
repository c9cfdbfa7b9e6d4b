//! The agent's audit log check (`agent/src/records.rs` `check_chain`): the log's lines, then a NUL byte
//! and the head file (no NUL: no head file).
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "../../agent/src/records.rs"]
#[allow(dead_code)]
mod records;

fuzz_target!(|data: &[u8]| {
    let (log, head) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], Some(&data[i + 1..])),
        None => (data, None),
    };
    if let Ok((lines, tip)) = records::check_chain(log.to_vec(), head, "log.head") {
        assert_eq!(tip.len(), 64);
        assert!(lines as usize <= log.len());
    }
});
