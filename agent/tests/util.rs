//! Helpers: temp dirs, running the agent binary, making a real bundle with the diskseal library.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use diskseal::bundle::{BundleOptions, QuietRun};
use diskseal::luks::FormatOptions;
use diskseal::luks::keys::Passphrase;
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

/// Runs diskseal-agent in `dir` with its home at `dir/home` and extra environment.
pub fn agent(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Ran {
    let o = Command::new(env!("CARGO_BIN_EXE_diskseal-agent"))
        .args(args)
        .current_dir(dir)
        .env_remove("IBMCLOUD_API_KEY")
        .env("DISKSEAL_AGENT_HOME", dir.join("home"))
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap();
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

/// Like [`make_bundle`] for `profile` (ibm-vpc: `disk.qcow2`, qcow2 with QEMU-native LUKS1).
pub fn make_bundle_as(dir: &Path, recipient: &str, profile: Profile) -> PathBuf {
    let src = dir.join("disk.raw");
    std::fs::write(&src, pattern(1 << 20, 9)).unwrap();
    let vpc = profile == Profile::IbmVpc;
    let img = dir.join(if vpc { "disk.qcow2" } else { "disk.luks" });
    let q = QuietRun::default();
    let opts = EncryptOptions {
        luks: FormatOptions::for_tests(profile.default_version()),
        key_bytes: 64,
        sector_size: None,
        pad: false,
        input_format: None,
        force: false,
        container: if vpc {
            ops::Container::Qcow2Luks
        } else {
            ops::Container::Raw
        },
        sparse: false,
        resize: None,
    };
    let pass = Passphrase::new(Zeroizing::new(PASSPHRASE.to_vec())).unwrap();
    ops::encrypt(&src, &img, &opts, &pass, None, &q.run()).unwrap();
    let out = dir.join("bundle");
    let bopts = BundleOptions {
        profile,
        recipient: recipient.into(),
        force: false,
    };
    diskseal::bundle::create(
        &img,
        &Zeroizing::new(PASSPHRASE.to_vec()),
        &out,
        &bopts,
        &q.run(),
    )
    .unwrap();
    out
}

/// Runs `init` and returns the recipient.
pub fn init(dir: &Path) -> String {
    agent(dir, &["init"], &[]).ok().stdout.trim().to_owned()
}
