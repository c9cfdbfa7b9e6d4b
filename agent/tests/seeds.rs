//! Captures the IBM fake's response bodies as fuzz seeds for the agent's parsers (`fuzz/README.md`):
//! `DISKSEAL_CAPTURE_SEEDS=1 cargo test -p diskseal-agent --test agent capture_fuzz_seeds -- --ignored`
//! writes `fuzz/seeds/kms_json/fake-*.json` (IAM, Key Protect) and `fuzz/seeds/import_json/fake-*.json`
//! (VPC, SoftLayer).

use std::io::{Read, Write};
use std::path::PathBuf;

use crate::fake_ibm::{API_KEY, FakeIbm, INSTANCE, ROOT_KEY, SUBNET_ID};

/// One HTTP/1.1 request to the fake (Connection: close): (status, body).
fn http(
    base: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let addr = base.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    // tiny_http may send a chunked body.
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut b = String::new();
        let mut r = rest;
        while let Some((len, tail)) = r.split_once("\r\n") {
            let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
            if n == 0 {
                break;
            }
            b.push_str(&tail[..n]);
            r = &tail[n + 2..];
        }
        b
    } else {
        rest.to_owned()
    };
    (status, body)
}

#[test]
#[ignore = "writes fuzz seeds; run with DISKSEAL_CAPTURE_SEEDS=1 and --ignored"]
fn capture_fuzz_seeds() {
    if std::env::var_os("DISKSEAL_CAPTURE_SEEDS").is_none() {
        return;
    }
    let seeds = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds");
    let save = |dir: &str, name: &str, (status, body): (u16, String)| {
        std::fs::write(
            seeds.join(dir).join(format!("fake-{name}-{status}.json")),
            body,
        )
        .unwrap();
    };
    let f = FakeIbm::start();
    let u = f.url.as_str();
    let form = [("content-type", "application/x-www-form-urlencoded")];
    let token_body =
        format!("grant_type=urn%3Aibm%3Aparams%3Aoauth%3Agrant-type%3Aapikey&apikey={API_KEY}");
    let r = http(u, "POST", "/identity/token", &form, &token_body);
    let token: serde_json::Value = serde_json::from_str(&r.1).unwrap();
    let bearer = format!("Bearer {}", token["access_token"].as_str().unwrap());
    save("kms_json", "iam-token", r);
    save(
        "kms_json",
        "iam-token-bad-key",
        http(
            u,
            "POST",
            "/identity/token",
            &form,
            "grant_type=urn%3Aibm%3Aparams%3Aoauth%3Agrant-type%3Aapikey&apikey=nope",
        ),
    );
    let action = |key: &str, a: &str, body: &str| {
        let ct = format!("application/vnd.ibm.kms.key_action_{a}+json");
        let kp = [
            ("authorization", bearer.as_str()),
            ("bluemix-instance", INSTANCE),
            ("content-type", ct.as_str()),
            ("accept", "application/json"),
            ("correlation-id", "00000000-0000-4000-8000-000000000001"),
        ];
        http(
            u,
            "POST",
            &format!("/api/v2/keys/{key}/actions/{a}"),
            &kp,
            body,
        )
    };
    let w = action(
        ROOT_KEY,
        "wrap",
        r#"{"plaintext":"Y29ycmVjdCBob3JzZSBiYXR0ZXJ5"}"#,
    );
    let wdek: serde_json::Value = serde_json::from_str(&w.1).unwrap();
    let ct = wdek["ciphertext"].as_str().unwrap().to_owned();
    save("kms_json", "kp-wrap", w);
    save("kms_json", "kp-generate", action(ROOT_KEY, "wrap", "{}"));
    save(
        "kms_json",
        "kp-unwrap",
        action(ROOT_KEY, "unwrap", &format!(r#"{{"ciphertext":"{ct}"}}"#)),
    );
    save(
        "kms_json",
        "kp-rewrap",
        action(ROOT_KEY, "rewrap", &format!(r#"{{"ciphertext":"{ct}"}}"#)),
    );
    save(
        "kms_json",
        "kp-missing-key",
        action("no-such-key", "wrap", r#"{"plaintext":"eA=="}"#),
    );
    save(
        "kms_json",
        "kp-bad-ciphertext",
        action(ROOT_KEY, "unwrap", r#"{"ciphertext":"bm9wZQ=="}"#),
    );
    // VPC: create, poll pending -> available, list by name, a failed import, a missing image.
    let json_h = [
        ("authorization", bearer.as_str()),
        ("content-type", "application/json"),
    ];
    let q = "version=2024-04-30&generation=2";
    let crn = FakeIbm::key_crn();
    let good = f.wrap(b"Y29ycmVjdCBob3JzZQ==");
    let body = |wdek: &str, name: &str| {
        serde_json::json!({"name": name, "file": {"href": "cos://us-south/bkt/disk.qcow2"}, "operating_system": {"name": "debian-12-amd64"}, "encrypted_data_key": wdek, "encryption_key": {"crn": crn}}).to_string()
    };
    let c = http(
        u,
        "POST",
        &format!("/v1/images?{q}"),
        &json_h,
        &body(&good, "disk"),
    );
    let id = serde_json::from_str::<serde_json::Value>(&c.1).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    save("import_json", "vpc-create", c);
    for i in 0..3 {
        save(
            "import_json",
            &format!("vpc-poll{i}"),
            http(u, "GET", &format!("/v1/images/{id}?{q}"), &json_h, ""),
        );
    }
    save(
        "import_json",
        "vpc-list",
        http(u, "GET", &format!("/v1/images?{q}&name=disk"), &json_h, ""),
    );
    let newline = f.wrap(b"Y29ycmVjdCBob3JzZQo=");
    let c = http(
        u,
        "POST",
        &format!("/v1/images?{q}"),
        &json_h,
        &body(&newline, "bad"),
    );
    let bad = serde_json::from_str::<serde_json::Value>(&c.1).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for _ in 0..3 {
        http(u, "GET", &format!("/v1/images/{bad}?{q}"), &json_h, "");
    }
    save(
        "import_json",
        "vpc-failed",
        http(u, "GET", &format!("/v1/images/{bad}?{q}"), &json_h, ""),
    );
    save(
        "import_json",
        "vpc-missing",
        http(u, "GET", &format!("/v1/images/r006-nope?{q}"), &json_h, ""),
    );
    // SoftLayer: createFromIcos, getObject while copying and when done, the template list, errors.
    let sl = "/rest/v3.1/SoftLayer_Virtual_Guest_Block_Device_Template_Group";
    let tpl = |wdek: &str| {
        serde_json::json!({"parameters": [{"name": "disk", "note": "imported by diskseal-agent", "operatingSystemReferenceCode": "UBUNTU_22_64", "uri": "cos://us-south/bkt/disk.vhd-0.vhd", "ibmApiKey": "<redacted>", "crkCrn": crn, "wrappedDek": wdek, "cloudInit": true, "isEncrypted": true, "byol": false}]}).to_string()
    };
    let c = http(
        u,
        "POST",
        &format!("{sl}/createFromIcos.json"),
        &json_h,
        &tpl(&good),
    );
    let tid = serde_json::from_str::<serde_json::Value>(&c.1).unwrap()["id"]
        .as_u64()
        .unwrap();
    save("import_json", "sl-create", c);
    let get = format!("{sl}/{tid}/getObject.json?objectMask=mask%5Bid%5D");
    for i in 0..3 {
        save(
            "import_json",
            &format!("sl-poll{i}"),
            http(u, "GET", &get, &json_h, ""),
        );
    }
    let filter = "%7B%22blockDeviceTemplateGroups%22%3A%7B%22name%22%3A%7B%22operation%22%3A%22disk%22%7D%7D%7D";
    save(
        "import_json",
        "sl-list",
        http(
            u,
            "GET",
            &format!(
                "/rest/v3.1/SoftLayer_Account/getBlockDeviceTemplateGroups.json?objectFilter={filter}"
            ),
            &json_h,
            "",
        ),
    );
    save(
        "import_json",
        "sl-bad-dek",
        http(
            u,
            "POST",
            &format!("{sl}/createFromIcos.json"),
            &json_h,
            &tpl("bm9wZQ=="),
        ),
    );
    save(
        "import_json",
        "sl-missing",
        http(
            u,
            "GET",
            &format!("{sl}/999/getObject.json?objectMask=mask%5Bid%5D"),
            &json_h,
            "",
        ),
    );
    // provision: a VPC instance created, polled pending -> running, listed by name, its boot volume, a
    // name clash; a SoftLayer guest ordered, polled provisioning -> running, listed by hostname.
    let image = f.add_image("disk");
    let inst =
        serde_json::json!({"name": "vm", "image": {"id": image}, "zone": {"name": "us-south-1"},
        "profile": {"name": "bx2-2x8"}, "primary_network_interface": {"subnet": {"id": SUBNET_ID}}})
        .to_string();
    let c = http(u, "POST", &format!("/v1/instances?{q}"), &json_h, &inst);
    let v: serde_json::Value = serde_json::from_str(&c.1).unwrap();
    let (iid, vol) = (
        v["id"].as_str().unwrap().to_owned(),
        v["boot_volume_attachment"]["volume"]["id"]
            .as_str()
            .unwrap()
            .to_owned(),
    );
    save("import_json", "vpc-instance-create", c);
    for i in 0..3 {
        save(
            "import_json",
            &format!("vpc-instance-poll{i}"),
            http(u, "GET", &format!("/v1/instances/{iid}?{q}"), &json_h, ""),
        );
    }
    save(
        "import_json",
        "vpc-instance-list",
        http(u, "GET", &format!("/v1/instances?{q}&name=vm"), &json_h, ""),
    );
    save(
        "import_json",
        "vpc-volume",
        http(u, "GET", &format!("/v1/volumes/{vol}?{q}"), &json_h, ""),
    );
    save(
        "import_json",
        "vpc-instance-duplicate",
        http(u, "POST", &format!("/v1/instances?{q}"), &json_h, &inst),
    );
    let guid = f.add_template("disk");
    let guest = serde_json::json!({"parameters": [{"hostname": "vm", "domain": "example.com",
        "startCpus": 1, "maxMemory": 2048, "hourlyBillingFlag": true, "localDiskFlag": true,
        "datacenter": {"name": "dal13"}, "blockDeviceTemplateGroup": {"globalIdentifier": guid}}]})
    .to_string();
    let vg = "/rest/v3.1/SoftLayer_Virtual_Guest";
    let c = http(
        u,
        "POST",
        &format!("{vg}/createObject.json"),
        &json_h,
        &guest,
    );
    let gid = serde_json::from_str::<serde_json::Value>(&c.1).unwrap()["id"]
        .as_u64()
        .unwrap();
    save("import_json", "sl-guest-create", c);
    for i in 0..3 {
        save(
            "import_json",
            &format!("sl-guest-poll{i}"),
            http(
                u,
                "GET",
                &format!("{vg}/{gid}/getObject.json?objectMask=mask%5Bid%5D"),
                &json_h,
                "",
            ),
        );
    }
    save(
        "import_json",
        "sl-guest-list",
        http(
            u,
            "GET",
            "/rest/v3.1/SoftLayer_Account/getVirtualGuests.json",
            &json_h,
            "",
        ),
    );
}
