//! Contract tests: IBM's official clients are the reference. For each operation the official Python SDK
//! (`contract/sdk.py`, run in the venv `scripts/test.sh` installs: softlayer, ibm-vpc,
//! ibm-cloud-sdk-core, keyprotect, ibm-cos-sdk) and the agent send their requests to the same fake
//! (`fake_ibm.rs`, which records them); the test asserts that the SDK parses the fake's answers and
//! that both requests agree on what defines the protocol: method, path, query keys (and values, but
//! for dates, masks and ids), authorisation scheme, content type, and the JSON body's keys and value
//! types. The fake is then proven by the official clients, the agent by the fake.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::fake_ibm::{
    API_KEY, FakeIbm, INSTANCE, KEY_ALIAS, KEY_ID, ROOT_KEY, Recorded, SL_KEY_ID, SUBNET_ID, VPC_ID,
};
use diskseal_agent::http::RetryPolicy;
use diskseal_agent::http::iam::IamTokens;
use diskseal_agent::import::{self, Cloud, ImportSettings, Resume};
use diskseal_agent::kms::KeyWrapper;
use diskseal_agent::kms::keyprotect::{KeyProtect, KmsSettings, Service};
use diskseal_agent::provision;
use diskseal_agent::s3;
use diskseal_agent::secret::{SecretBytes, SecretString};

/// The venv's python (`DISKSEAL_IBM_SDK_PYTHON` overrides).
fn python() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("DISKSEAL_IBM_SDK_PYTHON") {
        return Some(p.into());
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/ibm-sdk-venv/bin/python");
    p.exists().then_some(p)
}

/// Runs the official SDK's `op` against `f`: its parsed answer and the requests it sent (IAM's too
/// when `with_iam`). None (and `SKIPPED-ORACLE`) when the SDK venv is missing.
fn sdk_with(f: &FakeIbm, op: &str, args: &Value, with_iam: bool) -> Option<(Value, Vec<Recorded>)> {
    let Some(py) = python() else {
        eprintln!("SKIPPED-ORACLE: IBM SDK venv missing (bash scripts/test.sh installs it)");
        return None;
    };
    let n = f.with(|s| s.requests.len());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/contract/sdk.py");
    let out = Command::new(py)
        .arg(script)
        .arg(op)
        .arg(&f.url)
        .arg(args.to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the official SDK failed on {op} against the fake: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    Some((v, since(f, n, with_iam)))
}

fn sdk(f: &FakeIbm, op: &str, args: Value) -> Option<(Value, Vec<Recorded>)> {
    sdk_with(f, op, &args, false)
}

fn since(f: &FakeIbm, n: usize, with_iam: bool) -> Vec<Recorded> {
    f.with(|s| {
        s.requests[n..]
            .iter()
            .filter(|r| with_iam || r.path != "/identity/token")
            .cloned()
            .collect()
    })
}

/// The type skeleton of a JSON value: objects keep their keys, everything else becomes its type.
fn shape(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), shape(v))).collect()),
        Value::Array(a) => Value::Array(a.iter().take(1).map(shape).collect()),
        Value::String(_) => json!("string"),
        Value::Number(_) => json!("number"),
        Value::Bool(_) => json!("bool"),
        Value::Null => json!("null"),
    }
}

fn media_type(r: &Recorded) -> String {
    r.header("content-type")
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

fn body_shape(r: &Recorded) -> Value {
    if r.body.is_empty() {
        return Value::Null;
    }
    let text = String::from_utf8_lossy(&r.body);
    if let Ok(v) = serde_json::from_str::<Value>(&text) {
        return shape(&v);
    }
    if media_type(r) == "application/x-www-form-urlencoded" {
        let mut keys: Vec<&str> = text
            .split('&')
            .filter_map(|kv| kv.split('=').next())
            .collect();
        keys.sort_unstable();
        return json!({ "form": keys });
    }
    if text.trim_start().starts_with('<') {
        let mut tags: Vec<String> = text
            .split('<')
            .skip(1)
            .filter(|t| !t.starts_with('/') && !t.starts_with('?'))
            .filter_map(|t| t.split(['>', ' ']).next().map(str::to_owned))
            .collect();
        tags.sort();
        tags.dedup();
        return json!({ "xml": tags });
    }
    json!("bytes")
}

/// The form of an `x-amz-content-sha256` value.
fn payload_form(r: &Recorded) -> &'static str {
    match r.header("x-amz-content-sha256") {
        None => "none",
        Some("UNSIGNED-PAYLOAD") => "UNSIGNED-PAYLOAD",
        Some(v) if v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()) => "sha256",
        Some(_) => "other",
    }
}

/// Asserts that `agent` speaks the protocol `sdk` shows; query values of `any_value` keys only need
/// to be present.
fn same(what: &str, sdk: &Recorded, agent: &Recorded, any_value: &[&str]) {
    let ctx = || format!("{what}:\n  official: {sdk:?}\n  agent:    {agent:?}");
    assert_eq!(sdk.method, agent.method, "method: {}", ctx());
    assert_eq!(sdk.path, agent.path, "path: {}", ctx());
    let q = |r: &Recorded| {
        let mut v: Vec<(String, String)> = r
            .query
            .iter()
            .map(|(k, v)| {
                let v = if any_value.contains(&k.as_str()) {
                    String::new()
                } else {
                    v.clone()
                };
                (k.clone(), v)
            })
            .collect();
        v.sort();
        v
    };
    assert_eq!(q(sdk), q(agent), "query: {}", ctx());
    assert_eq!(
        sdk.auth_scheme(),
        agent.auth_scheme(),
        "auth scheme: {}",
        ctx()
    );
    if !sdk.body.is_empty() || !agent.body.is_empty() {
        assert_eq!(
            media_type(sdk),
            media_type(agent),
            "content type: {}",
            ctx()
        );
    }
    assert_eq!(body_shape(sdk), body_shape(agent), "body: {}", ctx());
    assert_eq!(
        payload_form(sdk),
        payload_form(agent),
        "x-amz-content-sha256: {}",
        ctx()
    );
    for h in [
        "bluemix-instance",
        "x-amz-checksum-sha256",
        "x-amz-checksum-algorithm",
    ] {
        assert_eq!(
            sdk.header(h).is_some(),
            agent.header(h).is_some(),
            "header {h}: {}",
            ctx()
        );
    }
}

fn find<'a>(rs: &'a [Recorded], method: &str, path_start: &str) -> &'a Recorded {
    rs.iter()
        .find(|r| r.method == method && r.path.starts_with(path_start))
        .unwrap_or_else(|| panic!("no {method} {path_start}... in {rs:?}"))
}

fn retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 2,
        base: Duration::from_millis(10),
        ..RetryPolicy::default()
    }
}

fn kp(f: &FakeIbm, key: &str) -> KeyProtect {
    KeyProtect::new(KmsSettings {
        service: Service::KeyProtect,
        region: Some("us-south".into()),
        endpoint: f.url.clone(),
        iam_endpoint: f.url.clone(),
        instance_id: INSTANCE.into(),
        key_id: key.into(),
        key_ring: None,
        api_key: SecretString::new(API_KEY.into()),
        retry: retry(),
    })
}

#[test]
fn iam_token_request_is_the_official_clients() {
    let f = FakeIbm::start();
    let Some((v, official)) = sdk_with(&f, "iam_token", &json!({}), true) else {
        return;
    };
    assert!(v["token"].as_str().is_some_and(|t| f.token_valid(t)));
    let n = f.with(|s| s.requests.len());
    IamTokens::new(&f.url, SecretString::new(API_KEY.into()), retry())
        .token()
        .unwrap();
    let agent = since(&f, n, true);
    same("IAM token", &official[0], &agent[0], &[]);
}

#[test]
fn key_protect_requests_are_the_official_clients() {
    let f = FakeIbm::start();
    let Some((key, official)) = sdk(&f, "kp_get_key", json!({"key": KEY_ALIAS})) else {
        return;
    };
    assert_eq!(key["resources"][0]["crn"], json!(FakeIbm::key_crn()));
    let k = kp(&f, KEY_ALIAS);
    let n = f.with(|s| s.requests.len());
    assert_eq!(k.key_crn().unwrap(), FakeIbm::key_crn());
    same("get key", &official[0], &since(&f, n, false)[0], &[]);

    let plain = SecretBytes::new(zeroize::Zeroizing::new(b"0123456789abcdef".to_vec()));
    let (w, official) = sdk(
        &f,
        "kp_wrap",
        json!({"key": ROOT_KEY, "plaintext": "MDEyMzQ1Njc4OWFiY2RlZg=="}),
    )
    .unwrap();
    let wdek = w["ciphertext"].as_str().unwrap().to_owned();
    let k = kp(&f, ROOT_KEY);
    let n = f.with(|s| s.requests.len());
    k.wrap(&plain).unwrap();
    same("wrap", &official[0], &since(&f, n, false)[0], &[]);

    let (u, official) = sdk(
        &f,
        "kp_unwrap",
        json!({"key": ROOT_KEY, "ciphertext": wdek}),
    )
    .unwrap();
    assert_eq!(u["plaintext"], json!("MDEyMzQ1Njc4OWFiY2RlZg=="));
    let n = f.with(|s| s.requests.len());
    assert_eq!(k.unwrap(&wdek).unwrap().plaintext.expose(), plain.expose());
    same("unwrap", &official[0], &since(&f, n, false)[0], &[]);

    let (_, official) = sdk(
        &f,
        "kp_rewrap",
        json!({"key": ROOT_KEY, "ciphertext": wdek}),
    )
    .unwrap();
    let n = f.with(|s| s.requests.len());
    k.rewrap(&wdek).unwrap();
    same("rewrap", &official[0], &since(&f, n, false)[0], &[]);

    let (_, official) = sdk(&f, "kp_wrap", json!({"key": ROOT_KEY})).unwrap();
    let n = f.with(|s| s.requests.len());
    k.generate().unwrap();
    same(
        "wrap (generate)",
        &official[0],
        &since(&f, n, false)[0],
        &[],
    );
}

fn settings(f: &FakeIbm, cloud: Cloud, name: &str, wdek: String) -> ImportSettings {
    ImportSettings {
        cloud,
        endpoint: f.url.clone(),
        iam_endpoint: f.url.clone(),
        api_key: SecretString::new(API_KEY.into()),
        name: name.into(),
        cos_uri: match cloud {
            Cloud::Vpc => "cos://us-south/bucket/disk.qcow2".into(),
            Cloud::Classic => "cos://us-south/bucket/disk.vhd-0.vhd".into(),
        },
        os: match cloud {
            Cloud::Vpc => "debian-12-amd64".into(),
            Cloud::Classic => "UBUNTU_22_64".into(),
        },
        wdek,
        key_crn: FakeIbm::key_crn(),
        byol: false,
        tag: "contract".into(),
        poll: Duration::from_millis(5),
        timeout: Duration::from_secs(30),
        retry: retry(),
    }
}

#[test]
fn vpc_requests_are_the_official_clients() {
    let f = FakeIbm::start();
    f.with(|s| s.import_polls = 0);
    let wdek = f.wrap(b"passphrase");
    let Some((img, official_create)) = sdk(
        &f,
        "vpc_create_image",
        json!({"name": "sdk-image", "href": "cos://us-south/bucket/disk.qcow2", "os": "debian-12-amd64", "wdek": wdek, "crn": FakeIbm::key_crn()}),
    ) else {
        return;
    };
    assert_eq!(img["name"], json!("sdk-image"));
    let n = f.with(|s| s.requests.len());
    let done = import::import_resuming(
        settings(&f, Cloud::Vpc, "agent-image", wdek),
        Resume::MaybeSent,
        |_| Ok(()),
    )
    .unwrap();
    let agent = since(&f, n, false);
    let (_, official_list) = sdk(&f, "vpc_list_images", json!({"name": "agent-image"})).unwrap();
    let (got, official_get) = sdk(&f, "vpc_get_image", json!({"id": done.id})).unwrap();
    assert_eq!(got["status"], json!("available"));
    let any = ["version"];
    same(
        "list images by name",
        &official_list[0],
        find(&agent, "GET", "/v1/images"),
        &any,
    );
    same(
        "create image",
        &official_create[0],
        find(&agent, "POST", "/v1/images"),
        &any,
    );
    same(
        "get image",
        &official_get[0],
        find(&agent, "GET", &format!("/v1/images/{}", done.id)),
        &any,
    );
}

#[test]
fn softlayer_requests_are_the_official_clients() {
    let f = FakeIbm::start();
    f.with(|s| s.import_polls = 0);
    let wdek = f.wrap(b"passphrase");
    let Some((t, official_create)) = sdk(
        &f,
        "sl_create_from_icos",
        json!({"name": "sdk-template", "uri": "cos://us-south/bucket/disk.vhd-0.vhd", "os": "UBUNTU_22_64", "note": "imported by diskseal-agent (contract)", "wdek": wdek, "crn": FakeIbm::key_crn()}),
    ) else {
        return;
    };
    assert!(t["id"].is_number());
    let n = f.with(|s| s.requests.len());
    let done = import::import_resuming(
        settings(&f, Cloud::Classic, "agent-template", wdek),
        Resume::MaybeSent,
        |_| Ok(()),
    )
    .unwrap();
    let agent = since(&f, n, false);
    let (_, official_find) = sdk(&f, "sl_find_by_name", json!({"name": "agent-template"})).unwrap();
    let (got, official_get) = sdk(
        &f,
        "sl_get_object",
        json!({"id": done.id.parse::<u64>().unwrap()}),
    )
    .unwrap();
    assert_eq!(got["id"].to_string(), done.id);
    let any = ["objectMask", "objectFilter"];
    let base = "/rest/v3.1/";
    same(
        "template lookup by name",
        &official_find[0],
        find(&agent, "GET", &format!("{base}SoftLayer_Account/")),
        &any,
    );
    same(
        "createFromIcos",
        &official_create[0],
        find(&agent, "POST", base),
        &any,
    );
    same(
        "getObject",
        &official_get[0],
        find(
            &agent,
            "GET",
            &format!(
                "{base}SoftLayer_Virtual_Guest_Block_Device_Template_Group/{}",
                done.id
            ),
        ),
        &any,
    );
    // The lookup filters on the name as the official client writes it.
    let filter: Value = serde_json::from_str(
        &find(&agent, "GET", &format!("{base}SoftLayer_Account/"))
            .query
            .iter()
            .find(|(k, _)| k == "objectFilter")
            .unwrap()
            .1,
    )
    .unwrap();
    let official: Value = serde_json::from_str(
        &official_find[0]
            .query
            .iter()
            .find(|(k, _)| k == "objectFilter")
            .unwrap()
            .1,
    )
    .unwrap();
    assert_eq!(filter, official);
}

fn cos_contract(auth: &str) {
    let f = FakeIbm::start();
    let data: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
    let args = |extra: Value| {
        let mut a = json!({"bucket": "cos-bucket", "key": "sdk.qcow2", "auth": auth});
        a.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        a
    };
    let Some((c, official_create)) = sdk(&f, "cos_create", args(json!({}))) else {
        return;
    };
    let id = c["UploadId"].as_str().unwrap().to_owned();
    let hex: String = data.iter().map(|b| format!("{b:02x}")).collect();
    let (p, official_part) =
        sdk(&f, "cos_part", args(json!({"upload_id": id, "hex": hex}))).unwrap();
    let sha = {
        use sha2::Digest;
        diskseal_agent::kms::b64(&sha2::Sha256::digest(&data))
    };
    let (_, official_complete) = sdk(
        &f,
        "cos_complete",
        args(json!({"upload_id": id, "etag": p["ETag"], "sha256_b64": sha})),
    )
    .unwrap();
    let (_, official_head) = sdk(&f, "cos_head", args(json!({}))).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("agent.qcow2");
    std::fs::write(&file, &data).unwrap();
    let target = s3::Target {
        endpoint: f.url.clone(),
        region: "us-south".into(),
        bucket: "cos-bucket".into(),
        key: "sdk.qcow2".into(),
    };
    let a = match auth {
        "iam" => s3::Auth::Iam(std::sync::Arc::new(IamTokens::new(
            &f.url,
            SecretString::new(API_KEY.into()),
            retry(),
        ))),
        _ => s3::Auth::Hmac(s3::Credentials {
            access_key_id: "AKFAKE".into(),
            secret_access_key: SecretString::new("fake-secret".into()),
            session_token: None,
        }),
    };
    let client = s3::Client::new(target, a, retry());
    let n = f.with(|s| s.requests.len());
    let o = s3::Options {
        jobs: 1,
        part_size: None,
        force: true,
        content_md5: false,
    };
    s3::upload(&client, &file, &o, &mut |_| {}).unwrap();
    let agent = since(&f, n, false);
    let any = ["uploadId"];
    same(
        "CreateMultipartUpload",
        &official_create[0],
        find(&agent, "POST", "/cos-bucket/"),
        &any,
    );
    same(
        "UploadPart",
        &official_part[0],
        find(&agent, "PUT", "/cos-bucket/"),
        &any,
    );
    let complete = agent.iter().filter(|r| r.method == "POST").nth(1).unwrap();
    same(
        "CompleteMultipartUpload",
        &official_complete[0],
        complete,
        &any,
    );
    same("HEAD", &official_head[0], agent.last().unwrap(), &any);
}

#[test]
fn cos_requests_with_hmac_keys_are_the_official_clients() {
    cos_contract("hmac");
}

#[test]
fn cos_requests_with_iam_tokens_are_the_official_clients() {
    cos_contract("iam");
}

fn order_settings(f: &FakeIbm, cloud: Cloud, order: provision::Order) -> provision::Settings {
    provision::Settings {
        cloud,
        endpoint: f.url.clone(),
        iam_endpoint: f.url.clone(),
        api_key: SecretString::new(API_KEY.into()),
        order,
        poll: Duration::from_millis(5),
        timeout: Duration::from_secs(30),
        retry: retry(),
    }
}

fn arg<'a>(r: &'a Recorded, key: &str) -> &'a str {
    r.query
        .iter()
        .find(|(k, _)| k == key)
        .map_or("", |(_, v)| v.as_str())
}

/// The VPC order: the official ibm-vpc client creates an instance from an encrypted image (the
/// `...InstanceByImage...ByNetworkInterface` prototype, a boot volume with its own root key, keys,
/// user data) and reads it back; the agent resolves the same names with the list calls the client
/// has, orders, polls and reads the boot volume, and every request agrees with the client's.
#[test]
fn vpc_instance_requests_are_the_official_clients() {
    let f = FakeIbm::start();
    f.with(|s| s.import_polls = 1);
    let sdk_image = f.add_image("sdk-disk");
    f.add_image("agent-disk");
    let crn = FakeIbm::key_crn();
    let proto = |name: &str, image: &str| {
        json!({"name": name, "image": {"id": image}, "zone": {"name": "us-south-1"},
            "profile": {"name": "bx2-2x8"}, "vpc": {"id": VPC_ID},
            "primary_network_interface": {"subnet": {"id": SUBNET_ID}}, "keys": [{"id": KEY_ID}],
            "user_data": "#cloud-config\n",
            "boot_volume_attachment": {"volume": {"profile": {"name": "general-purpose"}, "encryption_key": {"crn": crn}}}})
    };
    let Some((created, official_create)) = sdk(
        &f,
        "vpc_create_instance",
        json!({"prototype": proto("sdk-vm", &sdk_image)}),
    ) else {
        return;
    };
    assert_eq!(created["status"], json!("pending"));
    let order = provision::Order {
        image: "agent-disk".into(),
        name: Some("agent-vm".into()),
        keys: vec!["my-key".into()],
        user_data: Some(SecretString::new("#cloud-config\n".into())),
        profile: Some("bx2-2x8".into()),
        vpc: Some("my-vpc".into()),
        subnet: Some("my-subnet".into()),
        boot_volume_key: Some(crn.clone()),
        ..provision::Order::default()
    };
    let n = f.with(|s| s.requests.len());
    let pv = provision::Provisioner::connect(order_settings(&f, Cloud::Vpc, order)).unwrap();
    let p = pv.prepare().unwrap();
    assert_eq!(pv.find(&p).unwrap(), None);
    let id = pv.create(&p).unwrap();
    let done = pv.wait(&id).unwrap();
    let agent = since(&f, n, false);
    assert_eq!(done.status, "running");
    assert_eq!(done.boot_volume_key.as_deref(), Some(crn.as_str()));
    let (got, official_get) = sdk(&f, "vpc_get_instance", json!({"id": id})).unwrap();
    assert_eq!(
        got["primary_network_interface"]["primary_ip"]["address"].as_str(),
        done.primary_ip.as_deref()
    );
    let vol = got["boot_volume_attachment"]["volume"]["id"]
        .as_str()
        .unwrap();
    let (v, official_vol) = sdk(&f, "vpc_get_volume", json!({"id": vol})).unwrap();
    assert_eq!(v["encryption_key"]["crn"], json!(crn));
    let l = json!(100);
    let ops = [
        (
            "vpc_list_images",
            json!({"name": "agent-disk", "limit": l}),
            "GET",
            "/v1/images",
        ),
        ("vpc_list_vpcs", json!({"limit": l}), "GET", "/v1/vpcs"),
        (
            "vpc_list_subnets",
            json!({"limit": l, "vpc_id": VPC_ID}),
            "GET",
            "/v1/subnets",
        ),
        (
            "vpc_list_instance_profiles",
            json!({"limit": l}),
            "GET",
            "/v1/instance/profiles",
        ),
        ("vpc_list_keys", json!({"limit": l}), "GET", "/v1/keys"),
        (
            "vpc_list_instances",
            json!({"name": "agent-vm", "limit": l}),
            "GET",
            "/v1/instances",
        ),
    ];
    let any = ["version"];
    for (op, a, method, path) in ops {
        let (_, official) = sdk(&f, op, a).unwrap();
        let mine = agent
            .iter()
            .find(|r| r.method == method && r.path == path)
            .unwrap_or_else(|| panic!("the agent sent no {method} {path}"));
        same(op, &official[0], mine, &any);
    }
    same(
        "create instance",
        &official_create[0],
        find(&agent, "POST", "/v1/instances"),
        &any,
    );
    same(
        "get instance",
        &official_get[0],
        find(&agent, "GET", &format!("/v1/instances/{id}")),
        &any,
    );
    same(
        "get volume",
        &official_vol[0],
        find(&agent, "GET", "/v1/volumes/"),
        &any,
    );
    // An image given by id: looked up by name first, then read with get_image.
    let by_id = provision::Order {
        image: sdk_image.clone(),
        name: Some("agent-vm2".into()),
        profile: Some("bx2-2x8".into()),
        subnet: Some(SUBNET_ID.into()),
        ..provision::Order::default()
    };
    let n = f.with(|s| s.requests.len());
    let pv = provision::Provisioner::connect(order_settings(&f, Cloud::Vpc, by_id)).unwrap();
    assert_eq!(pv.prepare().unwrap().image_id, sdk_image);
    let agent = since(&f, n, false);
    let (_, official) = sdk(&f, "vpc_get_image", json!({"id": sdk_image})).unwrap();
    same(
        "get image",
        &official[0],
        find(&agent, "GET", &format!("/v1/images/{sdk_image}")),
        &any,
    );
    assert_eq!(arg(find(&agent, "GET", "/v1/images"), "name"), sdk_image);
}

/// The classic order: softlayer-python's `VSManager` prices (`order_guest(test=True)`:
/// generateOrderTemplate, verifyOrder), creates (`create_instance`: createObject with the template's
/// global identifier), finds (`list_instances(hostname=, domain=)`) and reads (`get_instance`) a
/// virtual server, and resolves an SSH key label (`SshKeyManager.list_keys(label=)`); the agent's
/// requests agree.
#[test]
fn softlayer_guest_requests_are_the_official_clients() {
    let f = FakeIbm::start();
    f.with(|s| s.import_polls = 1);
    let guid = f.add_template("disk");
    let guest = |host: &str| {
        json!({"hostname": host, "domain": "example.com", "cpus": 2, "memory": 4096, "hourly": true,
            "datacenter": "dal13", "image_id": guid, "local_disk": true, "nic_speed": 100,
            "ssh_keys": [SL_KEY_ID], "post_uri": "https://example.com/post.sh", "userdata": "#cloud-config\n"})
    };
    let Some((quote, official_verify)) =
        sdk(&f, "sl_verify_guest", json!({"guest": guest("sdk-vm")}))
    else {
        return;
    };
    assert!(quote["prices"][0]["hourlyRecurringFee"].is_string());
    let (created, official_create) =
        sdk(&f, "sl_create_guest", json!({"guest": guest("sdk-vm")})).unwrap();
    assert!(created["id"].is_number());
    let order = provision::Order {
        image: guid.clone(),
        name: Some("agent-vm".into()),
        domain: Some("example.com".into()),
        datacenter: Some("dal13".into()),
        cpus: Some(2),
        memory_mb: Some(4096),
        network_speed: Some(100),
        keys: vec!["my-key".into()],
        post_install: Some("https://example.com/post.sh".into()),
        user_data: Some(SecretString::new("#cloud-config\n".into())),
        ..provision::Order::default()
    };
    let n = f.with(|s| s.requests.len());
    let pv = provision::Provisioner::connect(order_settings(&f, Cloud::Classic, order)).unwrap();
    let p = pv.prepare().unwrap();
    assert!(
        p.summary_lines()
            .iter()
            .any(|l| l
                == "billing: hourly: 0.055 USD per hour (verifyOrder's hourlyRecurringFee total)"),
        "{:?}",
        p.summary_lines()
    );
    assert_eq!(pv.find(&p).unwrap(), None);
    let id = pv.create(&p).unwrap();
    let done = pv.wait(&id).unwrap();
    assert_eq!(done.status, "RUNNING");
    assert!(done.polls >= 2, "polled while provisioning");
    let agent = since(&f, n, false);
    let mask = "mask[id,globalIdentifier,hostname,domain,fullyQualifiedDomainName,primaryIpAddress,primaryBackendIpAddress,provisionDate,powerState,status,activeTransaction[id,transactionStatus[name,friendlyName]],lastOperatingSystemReload.id,blockDeviceTemplateGroup[id,name,globalIdentifier]]";
    let (got, official_get) = sdk(
        &f,
        "sl_get_guest",
        json!({"id": id.parse::<u64>().unwrap(), "mask": mask}),
    )
    .unwrap();
    assert_eq!(got["primaryIpAddress"].as_str(), done.primary_ip.as_deref());
    let (_, official_find) = sdk(
        &f,
        "sl_find_guest",
        json!({"hostname": "agent-vm", "domain": "example.com", "mask": mask}),
    )
    .unwrap();
    let (_, official_keys) = sdk(&f, "sl_ssh_keys", json!({"label": "my-key"})).unwrap();
    let any = ["objectMask", "objectFilter"];
    let base = "/rest/v3.1/";
    let by_path = |p: &str| {
        find(
            &agent,
            if p.contains("/get") { "GET" } else { "POST" },
            &format!("{base}{p}"),
        )
    };
    same(
        "getSshKeys",
        &official_keys[0],
        by_path("SoftLayer_Account/getSshKeys"),
        &any,
    );
    same(
        "generateOrderTemplate",
        &official_verify[0],
        by_path("SoftLayer_Virtual_Guest/generateOrderTemplate"),
        &any,
    );
    same(
        "verifyOrder",
        &official_verify[1],
        by_path("SoftLayer_Product_Order/verifyOrder"),
        &any,
    );
    same(
        "getVirtualGuests",
        &official_find[0],
        by_path("SoftLayer_Account/getVirtualGuests"),
        &any,
    );
    same(
        "createObject",
        &official_create[0],
        by_path("SoftLayer_Virtual_Guest/createObject"),
        &any,
    );
    same(
        "getObject",
        &official_get[0],
        find(
            &agent,
            "GET",
            &format!("{base}SoftLayer_Virtual_Guest/{id}/getObject"),
        ),
        &any,
    );
    // The filters are the official client's, value for value.
    let filter = |r: &Recorded| -> Value { serde_json::from_str(arg(r, "objectFilter")).unwrap() };
    assert_eq!(
        filter(by_path("SoftLayer_Account/getVirtualGuests")),
        filter(&official_find[0])
    );
    assert_eq!(
        filter(by_path("SoftLayer_Account/getSshKeys")),
        filter(&official_keys[0])
    );
    // A rerun finds the guest by hostname and domain and adopts it.
    assert_eq!(pv.find(&p).unwrap(), Some(id));
}
