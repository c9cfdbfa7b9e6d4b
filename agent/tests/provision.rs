//! `diskseal-agent provision` from the command line, against the fake: the dry run sends nothing and
//! redacts; without `--yes` and without a terminal nothing is ordered (refused, audited); with `--yes`
//! the server is ordered, polled to running and printed; a rerun adopts it; every step is audited.

use crate::fake_ibm::{API_KEY, FakeIbm};
use crate::util::agent;

/// `provision` of a VPC server from the image `disk` against the fake at `url`.
pub fn vpc_order(url: &str) -> Vec<&str> {
    vec![
        "provision",
        "--target",
        "ibm-vpc",
        "--image",
        "disk",
        "--profile",
        "bx2-2x8",
        "--subnet",
        "my-subnet",
        "--keys",
        "my-key",
        "--vpc-endpoint",
        url,
        "--iam-endpoint",
        url,
    ]
}

/// The classic guest the tests order: 1 core and 2 GiB in dal13.
const CLASSIC_GUEST: [&str; 8] = [
    "--domain",
    "example.com",
    "--datacenter",
    "dal13",
    "--cpus",
    "1",
    "--memory",
    "2048",
];

/// `provision` of the [`CLASSIC_GUEST`] `vm` from the template `image` against the fake at `url`.
pub fn classic_order<'a>(image: &'a str, url: &'a str) -> Vec<&'a str> {
    let mut a = vec![
        "provision",
        "--target",
        "ibm-classic",
        "--image",
        image,
        "--name",
        "vm",
        "--keys",
        "my-key",
        "--sl-endpoint",
        url,
    ];
    a.extend(CLASSIC_GUEST);
    a
}

/// [`vpc_order`] polling every 5 ms with `user-data.yaml`, and `extra`.
fn vpc_args<'a>(url: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vpc_order(url);
    a.extend(["--poll-ms", "5", "--user-data", "user-data.yaml"]);
    a.extend_from_slice(extra);
    a
}

fn audit(p: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(p.join("home/audit.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn instance_posts(f: &FakeIbm) -> usize {
    f.with(|s| {
        s.requests
            .iter()
            .filter(|r| r.method == "POST" && r.path == "/v1/instances")
            .count()
    })
}

#[test]
fn provision_vpc_dry_run_refusal_order_and_rerun() {
    let f = FakeIbm::start();
    f.with(|s| s.import_polls = 1);
    f.add_image("disk");
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    std::fs::write(
        p.join("user-data.yaml"),
        "#cloud-config\npassword: s3cret-user-data\n",
    )
    .unwrap();
    let env = [("IBMCLOUD_API_KEY", API_KEY)];
    // The dry run: every request, nothing sent, the API key and the user data redacted.
    let out = agent(p, &vpc_args(&f.url, &["--dry-run"]), &env).ok();
    for want in [
        "/identity/token",
        "/v1/images?",
        "/v1/subnets?",
        "/v1/keys?",
        "POST",
        "/v1/instances?",
        "<user data: ",
    ] {
        assert!(out.stdout.contains(want), "{want}: {}", out.stdout);
    }
    assert!(!out.stdout.contains(API_KEY) && !out.stdout.contains("s3cret-user-data"));
    assert_eq!(f.with(|s| s.requests.len()), 0);
    // No --yes and no terminal: refused, nothing ordered, audited as a refusal.
    let out = agent(p, &vpc_args(&f.url, &[]), &env);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("refused") && out.stderr.contains("--yes"),
        "{}",
        out.stderr
    );
    assert_eq!(instance_posts(&f), 0);
    let log = audit(p);
    let refusal = log
        .iter()
        .find(|e| e["action"] == "diskseal.instance.order.ibm-vpc")
        .unwrap();
    assert_eq!(refusal["outcome"], "refused");
    assert_eq!(refusal["requestData"]["details"]["refused"], true);
    // --yes: ordered, polled to running, printed.
    let out = agent(p, &vpc_args(&f.url, &["--yes", "--json"]), &env).ok();
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let documented = crate::snapshots::JSON_KEYS
        .iter()
        .find(|(c, _)| *c == "provision")
        .unwrap()
        .1;
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        documented.split_whitespace().collect::<Vec<_>>(),
        "the README's keys"
    );
    assert_eq!(v["status"], "running");
    assert_eq!(v["boot_volume_key"], FakeIbm::key_crn());
    assert!(v["primary_ip"].as_str().unwrap().starts_with("10.240."));
    assert_eq!(v["adopted"], false);
    let sent = f.with(|s| {
        s.requests
            .iter()
            .find(|r| r.method == "POST" && r.path == "/v1/instances")
            .cloned()
            .unwrap()
    });
    let body: serde_json::Value = serde_json::from_slice(&sent.body).unwrap();
    assert_eq!(body["name"], "disk");
    assert!(
        body["user_data"]
            .as_str()
            .unwrap()
            .contains("s3cret-user-data")
    );
    // A rerun adopts the instance: nothing ordered twice.
    let out = agent(p, &vpc_args(&f.url, &["--yes"]), &env).ok();
    assert!(out.stdout.contains("adopted"), "{}", out.stdout);
    assert_eq!(instance_posts(&f), 1);
    // Every step audited; no secret in the log.
    let text = std::fs::read_to_string(p.join("home/audit.jsonl")).unwrap();
    for a in [
        "diskseal.instance.verify.ibm-vpc",
        "diskseal.instance.order.ibm-vpc",
        "diskseal.instance.provision.ibm-vpc",
    ] {
        assert!(text.contains(a), "{a}");
    }
    assert!(!text.contains(API_KEY) && !text.contains("s3cret-user-data"));
    // A check that stops the order before anything is ordered is a refusal in the log.
    let out = agent(
        p,
        &vpc_args(&f.url, &["--yes", "--zone", "us-south-2"]),
        &env,
    );
    assert_eq!(out.code, 2);
    assert!(
        out.stderr
            .contains("subnet my-subnet is in zone us-south-1"),
        "{}",
        out.stderr
    );
    let last = audit(p).pop().unwrap();
    assert_eq!(
        (last["action"].as_str(), last["outcome"].as_str()),
        (Some("diskseal.instance.verify.ibm-vpc"), Some("refused"))
    );
    // --verify-only resolves and checks, orders nothing.
    let out = agent(
        p,
        &vpc_args(&f.url, &["--verify-only", "--name", "vm-2"]),
        &env,
    )
    .ok();
    assert!(
        out.stdout.contains("nothing ordered") && out.stdout.contains("profile: bx2-2x8"),
        "{}",
        out.stdout
    );
    assert_eq!(instance_posts(&f), 1);
}

/// `ship --provision`: refused up front without `--yes` and without a terminal (nothing wrapped,
/// uploaded or imported); the dry run shows the order; with `--yes` the server is ordered after the
/// import; a rerun polls the recorded server; a run killed after sending the order, before recording
/// it, adopts the server by name: one server in every case.
#[test]
fn ship_provision_orders_one_server_across_reruns() {
    use diskseal::profile::Profile;
    let Some(w) = crate::upload::ShipWorld::start(1) else {
        return;
    };
    let (s3, f, p) = (&w.s3, &w.f, w.p());
    let bundle = w.bundle(p, Profile::IbmVpc);
    let env = s3.ship_env();
    let mut args = crate::ship::ship_args_to(
        "ibm-vpc",
        "cos://us-south/bkt/disk.qcow2",
        "debian-12-amd64",
        bundle.to_str().unwrap(),
        &s3.url,
        &f.url,
    );
    args.extend([
        "--provision",
        "--instance-profile",
        "bx2-2x8",
        "--subnet",
        "my-subnet",
        "--keys",
        "my-key",
    ]);
    let out = agent(p, &args, &env);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("refused") && out.stderr.contains("--yes"),
        "{}",
        out.stderr
    );
    assert_eq!(f.with(|s| (s.kp_calls, s.images.len())), (0, 0));
    let refused = audit(p);
    assert!(
        refused
            .iter()
            .any(|e| e["action"] == "diskseal.ship" && e["outcome"] == "refused"),
        "{refused:?}"
    );
    let mut dry = args.clone();
    dry.push("--dry-run");
    let out = agent(p, &dry, &env).ok();
    assert!(
        out.stdout.contains("/v1/instances?") && out.stdout.contains("<the imported image>"),
        "{}",
        out.stdout
    );
    assert_eq!(f.with(|s| s.kp_calls), 0);
    args.push("--yes");
    let out = agent(p, &args, &env).ok();
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let image = v["image_id"].as_str().unwrap().to_owned();
    let inst = v["instance"]["id"].as_str().unwrap().to_owned();
    assert_eq!(v["instance"]["status"], "running");
    assert_eq!(v["instance"]["boot_volume_key"], FakeIbm::key_crn());
    assert_eq!(
        f.with(|s| s.instances[0]["image"]["id"].clone()),
        image.as_str()
    );
    // A rerun: the recorded server is polled, nothing ordered.
    let v: serde_json::Value = serde_json::from_str(&agent(p, &args, &env).ok().stdout).unwrap();
    assert_eq!(v["instance"]["id"], inst.as_str());
    assert_eq!(instance_posts(f), 1);
    // Killed after the order went out, before its id was recorded: the rerun adopts it by name.
    let state = std::fs::read_dir(p.join("home"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("ship-")
        })
        .unwrap();
    let mut st: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    assert_eq!(st["instance_id"], inst.as_str());
    st["instance_id"] = serde_json::Value::Null;
    std::fs::write(&state, st.to_string()).unwrap();
    let v: serde_json::Value = serde_json::from_str(&agent(p, &args, &env).ok().stdout).unwrap();
    assert_eq!(
        (
            v["instance"]["id"].as_str(),
            v["instance"]["adopted"].as_bool()
        ),
        (Some(inst.as_str()), Some(true))
    );
    assert_eq!(instance_posts(f), 1);
    let log = std::fs::read_to_string(p.join("home/audit.jsonl")).unwrap();
    assert!(log.contains("diskseal.instance.provision.ibm-vpc") && !log.contains(API_KEY));
}

/// Runs `args` on a pseudo-terminal (util-linux `script`), typing `answer` after a moment.
fn on_terminal(p: &std::path::Path, args: &[&str], answer: &str) -> (i32, String) {
    use std::io::Write;
    let quote = |a: &str| format!("'{}'", a.replace('\'', r"'\''"));
    let line: Vec<String> = std::iter::once(env!("CARGO_BIN_EXE_diskseal-agent"))
        .chain(args.iter().copied())
        .map(quote)
        .collect();
    let mut child = std::process::Command::new("script")
        .args(["-qec", &line.join(" "), "/dev/null"])
        .current_dir(p)
        .env("DISKSEAL_AGENT_HOME", p.join("home"))
        .env("IBMCLOUD_API_KEY", API_KEY)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(answer.as_bytes()).unwrap();
    drop(stdin);
    let o = child.wait_with_output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into(),
    )
}

/// On a terminal, without `--yes`: the order is shown (profile, zone, image, boot volume key, billing)
/// and asked about; "n" orders nothing, "y" orders.
#[test]
fn provision_asks_on_a_terminal() {
    if !crate::util::have("script") {
        return;
    }
    let f = FakeIbm::start();
    f.with(|s| s.import_polls = 0);
    f.add_image("disk");
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    std::fs::write(p.join("user-data.yaml"), "#cloud-config\n").unwrap();
    let args = vpc_args(&f.url, &[]);
    let (code, out) = on_terminal(p, &args, "n\n");
    assert_eq!(code, 2, "{out}");
    for want in [
        "about to order (this costs money)",
        "profile: bx2-2x8",
        "zone: us-south-1",
        "image: disk (",
        "boot volume key: crn:",
        "billing: hourly",
        "Order it? [y/N]",
        "declined at the prompt",
    ] {
        assert!(out.contains(want), "{want}: {out}");
    }
    assert_eq!(instance_posts(&f), 0);
    let (code, out) = on_terminal(p, &args, "y\n");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("is running"), "{out}");
    assert_eq!(instance_posts(&f), 1);
}

/// Classic from the command line: the import prints the template's global identifier; `--verify-only`
/// prices the order with verifyOrder and orders nothing; with `--yes` the guest is ordered and polled
/// until it runs.
#[test]
fn provision_classic_verify_only_then_order() {
    let f = FakeIbm::start();
    f.with(|s| s.import_polls = 1);
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let env = [("IBMCLOUD_API_KEY", API_KEY)];
    // The import says the template's global identifier, which the order names.
    std::fs::write(p.join("wdek"), f.wrap(&[7u8; 32])).unwrap();
    let crn = FakeIbm::key_crn();
    let mut import = crate::import::import_args(
        "ibm-classic",
        "cos://us-south/bkt/disk.vhd-0.vhd",
        "UBUNTU_22_64",
        &crn,
        &f.url,
        &f.url,
    );
    import.extend(["--poll-ms", "5"]);
    let out = agent(p, &import, &env).ok();
    let guid = out
        .stdout
        .split("(global identifier ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .unwrap_or_else(|| panic!("{}", out.stdout))
        .to_owned();
    let args = |extra: &[&'static str]| {
        let mut a: Vec<String> = classic_order(&guid, &f.url)
            .iter()
            .chain(&["--poll-ms", "5"])
            .map(|s| (*s).to_owned())
            .collect();
        a.extend(extra.iter().map(|s| (*s).to_owned()));
        a
    };
    let run = |a: Vec<String>| agent(p, &a.iter().map(String::as_str).collect::<Vec<_>>(), &env);
    let out = run(args(&["--verify-only"])).ok();
    assert!(
        out.stdout.contains("billing: hourly: 0.055 USD per hour")
            && out.stdout.contains("nothing ordered"),
        "{}",
        out.stdout
    );
    assert_eq!(f.with(|s| s.guests.len()), 0);
    let out = run(args(&["--yes", "--json"])).ok();
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(
        (v["status"].as_str(), v["name"].as_str()),
        (Some("RUNNING"), Some("vm.example.com"))
    );
    assert_eq!(f.with(|s| s.guests.len()), 1);
    let log = std::fs::read_to_string(p.join("home/audit.jsonl")).unwrap();
    assert!(
        log.contains("diskseal.instance.order.ibm-classic")
            && log.contains("diskseal.instance.provision.ibm-classic")
    );
}

/// `ship --provision --target ibm-classic`: the guest is ordered from the template the import made
/// (its global identifier), and a rerun orders nothing.
#[test]
fn ship_provision_classic_orders_from_the_imported_template() {
    use diskseal::profile::Profile;
    let Some(w) = crate::upload::ShipWorld::start(1) else {
        return;
    };
    let (s3, f, p) = (&w.s3, &w.f, w.p());
    let bundle = w.bundle(p, Profile::IbmClassicVhd);
    let env = s3.ship_env();
    let mut args = crate::ship::ship_args_to(
        "ibm-classic",
        "cos://us-south/bkt/disk.vhd-0.vhd",
        "UBUNTU_22_64",
        bundle.to_str().unwrap(),
        &s3.url,
        &f.url,
    );
    args.extend(["--provision", "--yes", "--instance-name", "vm"]);
    args.extend(CLASSIC_GUEST);
    let v: serde_json::Value = serde_json::from_str(&agent(p, &args, &env).ok().stdout).unwrap();
    assert_eq!(v["instance"]["status"], "RUNNING");
    let guid = f.with(|s| s.guests[0]["blockDeviceTemplateGroup"]["globalIdentifier"].clone());
    let template = v["image_id"].as_str().unwrap().parse::<u64>().unwrap();
    assert_eq!(
        guid,
        format!("0B5DEAF4-0000-0000-0000-{template:012}").as_str()
    );
    agent(p, &args, &env).ok();
    assert_eq!(f.with(|s| s.guests.len()), 1);
}
