//! The agent's IBM VPC image / instance / volume and SoftLayer image template / virtual guest response
//! parsers.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "../../agent/src/wire.rs"]
#[allow(dead_code)]
mod wire;

fuzz_target!(|data: &[u8]| {
    let body = String::from_utf8_lossy(data);
    let _ = wire::vpc_error(&body);
    let _ = wire::softlayer_error(&body);
    let _ = wire::vpc_image(&body);
    let _ = wire::vpc_image_named(&body, "disk", "crn:v1:bluemix:public:kms:us-south:a/acct:i:key:k");
    let _ = wire::softlayer_created(&body);
    let t = wire::softlayer_template(&body);
    if let Some(k) = t.failed() {
        assert!(k.contains("FAIL") || k == "ERROR");
    }
    let _ = wire::softlayer_template_named(&body, "disk", "imported by diskseal-agent");
    let _ = wire::vpc_instance(&body);
    let _ = wire::vpc_instances(&body);
    let _ = wire::vpc_volume_key(&body);
    let g = wire::softlayer_guest(&body);
    if g.ready() {
        assert!(g.provisioned && g.transaction.is_none());
    }
    let _ = wire::softlayer_guests(&body);
});
