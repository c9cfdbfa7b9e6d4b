//! Snapshot tests of what users read: `--help` of every command and the wording of the main errors.
//! The expected texts live in `tests/snapshots/*.txt`; run with `UPDATE_SNAPSHOTS=1` to rewrite them
//! after an intended change (and review the diff).

use std::path::PathBuf;

use crate::util::{FAST_PBKDF2, diskseal, setup};

fn check(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/snapshots")
        .join(format!("{name}.txt"));
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("missing snapshot {}", path.display()));
    assert!(
        expected == actual,
        "snapshot {name} differs.\n--- expected\n{expected}\n--- actual\n{actual}"
    );
}

#[test]
fn help_texts() {
    let dir = setup(0, 0);
    for cmd in [
        "",
        "encrypt",
        "decrypt",
        "verify",
        "dump",
        "info",
        "keygen",
        "bundle",
        "keyhash",
        "completions",
        "man",
    ] {
        let args: Vec<&str> = if cmd.is_empty() {
            vec!["--help"]
        } else {
            vec![cmd, "--help"]
        };
        let r = diskseal(dir.path(), &args).ok();
        check(
            &format!("help-{}", if cmd.is_empty() { "diskseal" } else { cmd }),
            &r.stdout,
        );
    }
}

#[test]
fn error_wording() {
    let dir = setup(1 << 20, 99);
    let d = dir.path();
    let mut args = vec!["encrypt", "-q", "--key-file", "pw"];
    args.extend(FAST_PBKDF2);
    args.extend(["src.raw", "out.luks"]);
    diskseal(d, &args).ok();
    std::fs::write(d.join("wrong"), b"not the passphrase").unwrap();
    std::fs::write(d.join("dek48"), [1u8; 48]).unwrap();
    let cases: [(&str, &[&str]); 5] = [
        (
            "error-wrong-passphrase",
            &["verify", "--key-file", "wrong", "out.luks"],
        ),
        (
            "error-wrong-key-size",
            &[
                "encrypt",
                "--profile",
                "ibm-classic-vhd",
                "--key-file",
                "dek48",
                "src.raw",
                "x.vhd",
            ],
        ),
        (
            "error-unknown-format",
            &[
                "encrypt",
                "-f",
                "vmdk",
                "--key-file",
                "pw",
                "src.raw",
                "x.luks",
            ],
        ),
        (
            "error-output-exists",
            &["encrypt", "--key-file", "pw", "src.raw", "out.luks"],
        ),
        ("error-not-luks", &["dump", "src.raw"]),
    ];
    for (name, args) in cases {
        let r = diskseal(d, args);
        assert_eq!(r.code, 2, "{name}");
        check(name, &r.stderr);
    }
}

#[test]
fn completions_man_pages_and_closed_pipes() {
    let dir = setup(1 << 20, 98);
    let d = dir.path();
    let r = diskseal(d, &["completions", "bash"]).ok();
    assert!(
        r.stdout.contains("_diskseal()") && r.stdout.contains("encrypt"),
        "{}",
        r.stdout
    );
    diskseal(d, &["completions", "zsh"]).ok();
    diskseal(d, &["man", "man"]).ok();
    for page in ["diskseal.1", "diskseal-encrypt.1", "diskseal-verify.1"] {
        let text = std::fs::read_to_string(d.join("man").join(page)).unwrap();
        assert!(text.contains(".TH"), "{page}");
    }
    // A reader that stops early is not an error (no panic, exit 0).
    let mut child = std::process::Command::new(crate::util::diskseal_bin())
        .args(["completions", "bash"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The `--json` documents are an interface: their keys are listed in README ("Machine output") and
/// must not change by accident.
#[test]
fn json_documents_keep_their_keys() {
    let dir = setup(1 << 20, 97);
    let d = dir.path();
    let keys = |args: &[&str]| -> Vec<String> {
        let r = diskseal(d, args).ok();
        let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    let mut args = vec!["encrypt", "--json", "--key-file", "pw"];
    args.extend(FAST_PBKDF2);
    args.extend(["src.raw", "j.luks"]);
    let expect = |s: &str| -> Vec<String> { s.split_whitespace().map(str::to_owned).collect() };
    assert_eq!(
        keys(&args),
        expect(
            "cipher command container data_bytes_read data_offset input_format kdf key_bits luks_version output output_size padded_bytes profile seconds sector_size source source_size threads uuid virtual_size"
        )
    );
    assert_eq!(
        keys(&[
            "verify",
            "--json",
            "--key-file",
            "pw",
            "--against",
            "src.raw",
            "j.luks"
        ]),
        expect(
            "against command encryption first_mismatch image keyslot ok payload_size plaintext_sha256 source_size"
        )
    );
    assert_eq!(
        keys(&["decrypt", "--json", "--key-file", "pw", "j.luks", "j.raw"]),
        expect("command keyslot output payload_size seconds source")
    );
    assert_eq!(
        keys(&["dump", "--json", "j.luks"]),
        expect(
            "cipher data_offset file_size flags key_bits keyslots_size label metadata metadata_size payload_size requirements sector_size seqid subsystem uuid version warnings"
        )
    );
    assert_eq!(
        keys(&["info", "--json", "j.luks"]),
        expect("actual-size encrypted filename format format-specific virtual-size")
    );
    assert_eq!(
        keys(&["info", "--json", "src.raw"]),
        expect("actual-size allocation backing-chain encrypted filename format virtual-size")
    );
}
