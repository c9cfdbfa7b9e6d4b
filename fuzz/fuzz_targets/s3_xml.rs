//! The agent's S3 XML parsers (InitiateMultipartUpload, ListParts, CompleteMultipartUpload, errors).
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "../../agent/src/wire.rs"]
#[allow(dead_code)]
mod wire;

fuzz_target!(|data: &[u8]| {
    let body = String::from_utf8_lossy(data);
    let _ = wire::s3_error(&body);
    let _ = wire::s3_initiate(&body);
    let page = wire::s3_list_parts(&body);
    if page.next_marker.is_some() {
        assert!(body.contains("<IsTruncated>"));
    }
    for etag in page.parts.values() {
        assert!(!etag.starts_with('"') && !etag.ends_with('"'), "quotes left in {etag:?}");
    }
    let _ = wire::s3_complete(&body);
});
