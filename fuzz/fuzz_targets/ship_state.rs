//! The agent's ship state file (`agent/src/records.rs` `ShipState`): what parses writes back the same.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "../../agent/src/records.rs"]
#[allow(dead_code)]
mod records;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = records::ShipState::parse(data) {
        let once = serde_json::to_vec(&s).unwrap();
        let again = records::ShipState::parse(&once).unwrap();
        assert_eq!(serde_json::to_vec(&again).unwrap(), once);
    }
});
