//! Helpers: temp dirs, running the agent binary, making a real bundle with the diskseal library.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use diskseal::bundle::{BundleOptions, QuietRun};
use diskseal::crypto::keys::Passphrase;
use diskseal::luks::FormatOptions;
use diskseal::ops::{self, EncryptOptions};
use diskseal::profile::Profile;
use zeroize::Zeroizing;

pub const PASSPHRASE: &[u8] = b"correct horse battery";

#[derive(Debug)]
pub struct Ran {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    #[track_caller]
    pub fn ok(self) -> Ran {
        assert_eq!(
            self.code, 0,
            "failed:\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }
}

/// diskseal-agent ready to run in `dir` with its home at `dir/home` and extra environment (for tests
/// that spawn it and act on it while it runs).
pub fn agent_command(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_diskseal-agent"));
    c.args(args)
        .current_dir(dir)
        .env_remove("IBMCLOUD_API_KEY")
        .env("DISKSEAL_AGENT_HOME", dir.join("home"))
        .envs(env.iter().copied())
        .stdin(Stdio::null());
    c
}

/// Runs diskseal-agent in `dir` with its home at `dir/home` and extra environment.
pub fn agent(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Ran {
    let o = agent_command(dir, args, env).output().unwrap();
    Ran {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into(),
        stderr: String::from_utf8_lossy(&o.stderr).into(),
    }
}

/// True when `tool` runs; else prints a skip line, or panics when oracles are required (CI).
pub fn have(tool: &str) -> bool {
    let ok = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    found(tool, ok)
}

/// Like [`have`] for tools without `--version` (pkcs11-tool): only checks that it starts.
pub fn installed(tool: &str) -> bool {
    let ok = Command::new(tool)
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    found(tool, ok)
}

fn found(tool: &str, ok: bool) -> bool {
    if !ok {
        if std::env::var_os("DISKSEAL_REQUIRE_ORACLES").is_some_and(|v| v == "1") {
            panic!("oracle tool {tool} is missing and DISKSEAL_REQUIRE_ORACLES=1");
        }
        eprintln!("SKIPPED-ORACLE: {tool} not installed");
    }
    ok
}

/// Deterministic bytes.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1] ^ seed)
        .collect()
}

/// Encrypts a 1 MiB disk into `dir/disk.luks` (LUKS2, fast KDF) and bundles it into `dir/bundle` for
/// `recipient`. Returns the bundle path.
pub fn make_bundle(dir: &Path, recipient: &str) -> PathBuf {
    make_bundle_as(dir, recipient, Profile::Luks2)
}

/// The raw DEK of the `ibm-classic-vhd` test bundles.
pub fn classic_dek() -> Vec<u8> {
    pattern(64, 77)
}

/// Like [`make_bundle`] for `profile` (ibm-vpc: `disk.qcow2`, qcow2 with QEMU-native LUKS1;
/// ibm-classic-vhd: `disk.vhd`, a vhd-util encrypted dynamic VHD keyed by [`classic_dek`]).
pub fn make_bundle_as(dir: &Path, recipient: &str, profile: Profile) -> PathBuf {
    bundle_of(dir, recipient, profile, false)
}

/// Like [`make_bundle`], with the SHA-256 of the whole plaintext in the manifest too (what
/// `diskseal encrypt --bundle ... --plaintext-sha256` writes: both plaintext digests).
pub fn make_bundle_plaintext_sha256(dir: &Path, recipient: &str) -> PathBuf {
    bundle_of(dir, recipient, Profile::Luks2, true)
}

fn bundle_of(dir: &Path, recipient: &str, profile: Profile, plaintext_sha256: bool) -> PathBuf {
    let src = dir.join("disk.raw");
    std::fs::write(&src, pattern(1 << 20, 9)).unwrap();
    if profile == Profile::IbmClassicVhd {
        let img = dir.join("disk.vhd");
        let q = QuietRun::default();
        let dek = Zeroizing::new(classic_dek());
        let key = diskseal::crypto::keys::VolumeKey::from_bytes(dek.clone()).unwrap();
        let opts = EncryptOptions::new(ops::Container::ClassicVhd);
        ops::encrypt(&src, &img, &opts, ops::EncryptKey::Dek(key), &q.run()).unwrap();
        return bundle_image(dir, &img, &dek, recipient, profile, plaintext_sha256);
    }
    let vpc = profile == Profile::IbmVpc;
    let img = dir.join(if vpc { "disk.qcow2" } else { "disk.luks" });
    let q = QuietRun::default();
    let container = if vpc {
        ops::Container::Qcow2Luks
    } else {
        ops::Container::Raw
    };
    let opts = EncryptOptions {
        luks: FormatOptions::for_tests(profile.default_version()),
        ..EncryptOptions::new(container)
    };
    let key = ops::EncryptKey::Luks {
        passphrase: Passphrase::new(Zeroizing::new(PASSPHRASE.to_vec())).unwrap(),
        volume_key: None,
    };
    ops::encrypt(&src, &img, &opts, key, &q.run()).unwrap();
    bundle_image(
        dir,
        &img,
        &Zeroizing::new(PASSPHRASE.to_vec()),
        recipient,
        profile,
        plaintext_sha256,
    )
}

/// Bundles the encrypted `img` with the key file bytes `key` into `dir/bundle`.
fn bundle_image(
    dir: &Path,
    img: &Path,
    key: &Zeroizing<Vec<u8>>,
    recipient: &str,
    profile: Profile,
    plaintext_sha256: bool,
) -> PathBuf {
    let q = QuietRun::default();
    let out = dir.join("bundle");
    let bopts = BundleOptions {
        profile,
        recipient: recipient.into(),
        force: false,
        source: None,
        plaintext_sha256,
    };
    diskseal::bundle::create(img, key, &out, &bopts, &q.run()).unwrap();
    out
}

/// Encrypts a 1 MiB disk into `dir/name` with the test passphrase: `container` Raw is a LUKS2 file,
/// Qcow2Luks an ibm-vpc qcow2; `resize` grows the virtual disk.
pub fn encrypted(
    dir: &Path,
    name: &str,
    container: ops::Container,
    resize: Option<u64>,
) -> PathBuf {
    let src = dir.join(format!("{name}.src"));
    std::fs::write(&src, pattern(1 << 20, 5)).unwrap();
    let img = dir.join(name);
    let q = QuietRun::default();
    let version = if container == ops::Container::Raw {
        Profile::Luks2
    } else {
        Profile::IbmVpc
    }
    .default_version();
    let opts = EncryptOptions {
        luks: FormatOptions::for_tests(version),
        // qcow2 output is always sparse (and refuses the flag).
        sparse: container == ops::Container::Raw,
        resize,
        ..EncryptOptions::new(container)
    };
    let key = ops::EncryptKey::Luks {
        passphrase: Passphrase::new(Zeroizing::new(PASSPHRASE.to_vec())).unwrap(),
        volume_key: None,
    };
    ops::encrypt(&src, &img, &opts, key, &q.run()).unwrap();
    img
}

/// A checked-in file under the repository root.
pub fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

/// Runs `init` and returns the recipient.
pub fn init(dir: &Path) -> String {
    agent(dir, &["init"], &[]).ok().stdout.trim().to_owned()
}

/// A local test server process, killed when dropped.
#[derive(Debug)]
pub struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `cmd` (a server listening on 127.0.0.1:`port`) and waits until the port accepts connections.
pub fn start_server(mut cmd: Command, port: u16, name: &str) -> Server {
    let server = Server(
        cmd.stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let t = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t.elapsed() < std::time::Duration::from_secs(20),
            "{name} did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    server
}

/// moto's server in IAM mode (SigV4 checked) with extra `env`, plus a user allowed `action` ("s3:*",
/// "kms:*") made with boto3; `setup` is more Python run with `url` and the user's key pair `k`, whose
/// printed words follow the access key and secret in the result. None when moto, python3 or boto3 is
/// missing outside CI.
pub fn moto(
    env: &[(&str, &str)],
    action: &str,
    setup: &str,
) -> Option<(Server, String, Vec<String>)> {
    if !installed("moto_server") || !have("python3") {
        return None;
    }
    let port = free_port();
    let mut cmd = Command::new("moto_server");
    cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .env("INITIAL_NO_AUTH_ACTION_COUNT", "3");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let server = start_server(cmd, port, "moto_server");
    let url = format!("http://127.0.0.1:{port}");
    let script = format!(
        r#"
import boto3, json, sys
url = sys.argv[1]
iam = boto3.client("iam", endpoint_url=url, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
iam.create_user(UserName="ci")
iam.put_user_policy(UserName="ci", PolicyName="all", PolicyDocument=json.dumps(
  {{"Version": "2012-10-17", "Statement": [{{"Effect": "Allow", "Action": ["{action}"], "Resource": "*"}}]}}))
k = iam.create_access_key(UserName="ci")["AccessKey"]
{setup}
"#
    );
    let o = Command::new("python3")
        .args(["-c", &script, &url])
        .output()
        .unwrap();
    if !o.status.success() {
        let err = String::from_utf8_lossy(&o.stderr);
        if err.contains("No module named")
            && std::env::var_os("DISKSEAL_REQUIRE_ORACLES").is_none_or(|v| v != "1")
        {
            eprintln!("SKIPPED-ORACLE: boto3 not installed");
            return None;
        }
        panic!("moto setup failed: {err}");
    }
    let words = String::from_utf8(o.stdout)
        .unwrap()
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    Some((server, url, words))
}
