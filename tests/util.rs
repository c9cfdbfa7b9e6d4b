//! Test helpers: temporary directories, running the `diskseal` binary and the oracle tools, and
//! deterministic test data.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub use tempfile::TempDir;

/// The diskseal binary built for this test run.
pub fn diskseal_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_diskseal"))
}

/// True when a tool runs here; otherwise prints a skip line, or panics when oracles are required.
pub fn have(tool: &str) -> bool {
    let ok = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        if std::env::var_os("DISKSEAL_REQUIRE_ORACLES").is_some_and(|v| v == "1") {
            panic!("oracle tool {tool} is missing and DISKSEAL_REQUIRE_ORACLES=1");
        }
        eprintln!("SKIPPED-ORACLE: {tool} not installed");
    }
    ok
}

/// Skips the calling test (returns) when `tool` is missing.
#[macro_export]
macro_rules! require {
    ($($tool:expr),+) => {
        $( if !$crate::util::have($tool) { return; } )+
    };
}

/// Result of running a command.
#[derive(Debug)]
pub struct Ran {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    fn from(o: Output) -> Ran {
        Ran {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    /// Panics with the output unless the exit code is 0.
    #[track_caller]
    pub fn ok(self) -> Ran {
        assert_eq!(
            self.code, 0,
            "command failed:\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }
}

/// Runs a program with arguments in `dir`.
pub fn run_in(dir: &Path, prog: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> Ran {
    let o = Command::new(prog.as_ref())
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {:?}: {e}", prog.as_ref()));
    Ran::from(o)
}

/// How often diskseal writes a progress line when stderr is not a terminal, in the runs of
/// [`diskseal`] and [`diskseal_stdin`]: never within a test (their stderr is compared), unless a test
/// sets it itself.
pub const PROGRESS_SECONDS: (&str, &str) = ("DISKSEAL_PROGRESS_SECONDS", "86400");

/// Runs `diskseal` with arguments in `dir`.
pub fn diskseal(dir: &Path, args: &[&str]) -> Ran {
    let o = Command::new(diskseal_bin())
        .args(args)
        .current_dir(dir)
        .env(PROGRESS_SECONDS.0, PROGRESS_SECONDS.1)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run diskseal: {e}"));
    Ran::from(o)
}

/// Runs `diskseal` feeding `stdin`.
pub fn diskseal_stdin(dir: &Path, args: &[&str], stdin: &[u8]) -> Ran {
    use std::io::Write;
    let mut child = Command::new(diskseal_bin())
        .args(args)
        .current_dir(dir)
        .env(PROGRESS_SECONDS.0, PROGRESS_SECONDS.1)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn diskseal");
    // diskseal may exit before reading stdin (a refusal before any work is what some tests check):
    // the closed pipe is then not an error of the test.
    match child.stdin.take().expect("stdin").write_all(stdin) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => panic!("write stdin: {e}"),
        _ => {}
    }
    Ran::from(child.wait_with_output().expect("wait"))
}

/// Deterministic pseudo-random bytes (xorshift), different per `seed`.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A new temp dir with a source image `src.raw` of `len` bytes and a passphrase file `pw` ("secret pass").
pub fn setup(len: usize, seed: u64) -> TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("src.raw"), pattern(len, seed)).expect("write src");
    std::fs::write(dir.path().join("pw"), b"secret pass").expect("write pw");
    dir
}

/// Cheap KDF arguments for diskseal encrypt.
pub const FAST_PBKDF2: &[&str] = &["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"];

/// Reads a file.
pub fn read(p: impl AsRef<Path>) -> Vec<u8> {
    std::fs::read(p.as_ref()).unwrap_or_else(|e| panic!("read {}: {e}", p.as_ref().display()))
}

/// Rewrites the JSON of both LUKS2 header copies with `edit` and fixes their checksums
/// (`which`: 0 = primary only, 1 = secondary only, 2 = both).
pub fn edit_luks2_json(path: &Path, which: usize, edit: impl Fn(&mut serde_json::Value)) {
    use sha2::{Digest, Sha256};
    let mut data = read(path);
    let hdr = u64::from_be_bytes(data[8..16].try_into().unwrap()) as usize;
    for (i, at) in [0usize, hdr].into_iter().enumerate() {
        if which != 2 && which != i {
            continue;
        }
        let area = &data[at + 4096..at + hdr];
        let end = area.iter().position(|&b| b == 0).unwrap();
        let mut v: serde_json::Value = serde_json::from_slice(&area[..end]).unwrap();
        edit(&mut v);
        let text = v.to_string();
        assert!(text.len() < hdr - 4096);
        let area = &mut data[at + 4096..at + hdr];
        area.fill(0);
        area[..text.len()].copy_from_slice(text.as_bytes());
        data[at + 448..at + 512].fill(0);
        let sum = Sha256::new()
            .chain_update(&data[at..at + 4096])
            .chain_update(&data[at + 4096..at + hdr])
            .finalize();
        data[at + 448..at + 480].copy_from_slice(&sum);
    }
    std::fs::write(path, data).unwrap();
}

/// Runs `diskseal encrypt FLAGS... SRC DST` in `dir` with the fast KDF ([`FAST_PBKDF2`]).
pub fn encrypt_fast(dir: &Path, flags: &[&str], src: &str, dst: &str) -> Ran {
    let mut args = vec!["encrypt"];
    args.extend(flags);
    args.extend(FAST_PBKDF2);
    args.extend([src, dst]);
    diskseal(dir, &args)
}

/// `img` (in `dir`, read by QEMU's `driver`) encrypts to every profile but LUKS2 (its callers verify that
/// one already), and each output holds the disk of `expect.raw`, qemu-img's raw conversion of `img`:
/// ibm-vpc by `qemu-img compare` against the image itself, LUKS1 and ibm-classic-luks by
/// `verify --against`, ibm-classic-vhd by decrypting (its disk is rounded up to whole 2 MiB blocks of
/// zeros). Needs the key files `pw` (a passphrase) and `dek` (64 bytes) in `dir`.
pub fn encrypts_to_every_profile(dir: &Path, img: &str, driver: &str) {
    let ok = |args: &[&str]| diskseal(dir, args).ok();
    encrypt_fast(
        dir,
        &["-q", "--force", "--profile", "ibm-vpc", "--key-file", "pw"],
        img,
        "every.qcow2",
    )
    .ok();
    run_in(
        dir,
        "qemu-img",
        &[
            "compare",
            "--object",
            "secret,id=s,file=pw",
            "--image-opts",
            "driver=qcow2,encrypt.key-secret=s,file.filename=every.qcow2",
            &format!("driver={driver},file.filename={img}"),
        ],
    )
    .ok();
    for (profile, key) in [("luks1", "pw"), ("ibm-classic-luks", "dek")] {
        encrypt_fast(
            dir,
            &["-q", "--force", "--profile", profile, "--key-file", key],
            img,
            "every.luks",
        )
        .ok();
        ok(&[
            "verify",
            "-q",
            "--profile",
            profile,
            "--key-file",
            key,
            "--against",
            "expect.raw",
            "every.luks",
        ]);
    }
    ok(&[
        "encrypt",
        "-q",
        "--force",
        "--profile",
        "ibm-classic-vhd",
        "--key-file",
        "dek",
        img,
        "every.vhd",
    ]);
    ok(&[
        "decrypt",
        "-q",
        "--force",
        "--key-file",
        "dek",
        "every.vhd",
        "every.raw",
    ]);
    let (got, want) = (read(dir.join("every.raw")), read(dir.join("expect.raw")));
    assert!(
        got[..want.len()] == want[..] && got[want.len()..].iter().all(|&b| b == 0),
        "{img}: ibm-classic-vhd"
    );
}

/// The root hash `veritysetup format --no-superblock` prints for the disk `file` in `dir` (SHA-256,
/// format 1, 4096-byte hash blocks, `data_block`-byte data blocks, `salt` in hex or "-" for none): the
/// reference for diskseal's plaintext digest. Callers `require!("veritysetup")` first.
pub fn veritysetup_root(dir: &Path, file: &str, data_block: u32, salt: &str) -> String {
    let hash = dir.join(format!("{file}.verity"));
    let out = run_in(
        dir,
        "veritysetup",
        &[
            "format",
            "--no-superblock",
            "--hash",
            "sha256",
            "--format",
            "1",
            "--hash-block-size",
            "4096",
            "--data-block-size",
            &data_block.to_string(),
            "--salt",
            salt,
            file,
            hash.to_str().unwrap(),
        ],
    )
    .ok();
    let _ = std::fs::remove_file(&hash);
    out.stdout
        .lines()
        .find_map(|l| l.strip_prefix("Root hash:"))
        .unwrap_or_else(|| panic!("no root hash in {}", out.stdout))
        .trim()
        .to_owned()
}

/// `diskseal encrypt` of `img` (in `d`, with the key file `pw`) is refused because the image names
/// its backing file `backing` by an absolute path, and succeeds with `--allow-backing BACKING`.
pub fn absolute_backing_needs_allowing(d: &Path, img: &str, backing: &str) {
    let r = encrypt_fast(d, &["--key-file", "pw"], img, "allowed.luks");
    assert!(
        r.code == 2
            && r.stderr.contains("named by an absolute path")
            && r.stderr.contains("--allow-backing"),
        "{}{}",
        r.stdout,
        r.stderr
    );
    assert!(!d.join("allowed.luks").exists());
    encrypt_fast(
        d,
        &["--key-file", "pw", "--allow-backing", backing],
        img,
        "allowed.luks",
    )
    .ok();
}
