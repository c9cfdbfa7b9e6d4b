//! Snapshot tests of what users read: `--help` of every command, the wording of the main errors, and
//! what the README's usage examples print when run as written.
//! The expected texts live in `tests/snapshots/*.txt`; run with `UPDATE_SNAPSHOTS=1` to rewrite them
//! after an intended change (and review the diff).

use std::path::PathBuf;

use crate::util::{FAST_PBKDF2, diskseal, encrypt_fast, setup};

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
        // Examples are copied as they are: none may wrap on an 80-column terminal.
        let examples = r.stdout.split("Examples:").skip(1).flat_map(str::lines);
        for line in examples.filter(|l| l.starts_with("  ")) {
            assert!(
                line.chars().count() <= 80,
                "{cmd}: this example line wraps on an 80-column terminal:\n{line}"
            );
        }
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
    encrypt_fast(d, &["-q", "--key-file", "pw"], "src.raw", "out.luks").ok();
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
                "bogus",
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
            "backing_files cipher command container data_bytes_read data_offset input_format kdf kdf_seconds key_bits luks_version output output_size padded_bytes profile seconds sector_size source source_size threads uuid virtual_size"
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
            "against command damage data_bytes encryption first_mismatch image keyslot ok payload_size plaintext_dm_verity plaintext_sha256 source_size"
        )
    );
    assert_eq!(
        keys(&["decrypt", "--json", "--key-file", "pw", "j.luks", "j.raw"]),
        expect("command keyslot output payload_size seconds source")
    );
    assert_eq!(
        keys(&["dump", "--json", "j.luks"]),
        expect(
            "cipher damage data_offset file_size flags key_bits keyslots_size label metadata metadata_size payload_size requirements sector_size seqid subsystem unbound_keyslots uuid version warnings"
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

/// Machine-dependent parts of an output (UUIDs, hashes, sizes, times, KDF costs) as placeholders, so the
/// wording is what the snapshot holds.
fn normalize(text: &str) -> String {
    let is_hex = |c: char| c.is_ascii_digit() || ('a'..='f').contains(&c);
    let mut out = String::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        // A UUID: 8-4-4-4-12 hex digits.
        let uuid = [8, 4, 4, 4, 12];
        let mut j = i;
        let mut is_uuid = true;
        for (k, n) in uuid.iter().enumerate() {
            if k > 0 {
                if chars.get(j) != Some(&'-') {
                    is_uuid = false;
                    break;
                }
                j += 1;
            }
            if !(0..*n).all(|m| chars.get(j + m).is_some_and(|&c| is_hex(c))) {
                is_uuid = false;
                break;
            }
            j += n;
        }
        if is_uuid && !chars.get(j).is_some_and(|&c| is_hex(c)) {
            out.push_str("<uuid>");
            i = j;
            continue;
        }
        if is_hex(chars[i]) && (i == 0 || !chars[i - 1].is_ascii_alphanumeric()) {
            let mut j = i;
            while j < chars.len() && is_hex(chars[j]) {
                j += 1;
            }
            let word_ends = j == chars.len() || !chars[j].is_ascii_alphanumeric();
            let run: String = chars[i..j].iter().collect();
            if word_ends && run.len() >= 32 {
                out.push_str("<hex>");
                i = j;
                continue;
            }
        }
        if chars[i].is_ascii_digit() {
            while i < chars.len() && chars[i].is_ascii_digit() {
                i += 1;
            }
            out.push('#');
            continue;
        }
        out.push(chars[i]);
        i += 1;
    }
    out
}

/// Every `diskseal` command in the README's "Usage" block runs as written (on inputs made for it) and
/// prints what `tests/snapshots/examples-usage.txt` holds, up to machine-dependent numbers.
#[test]
fn readme_usage_examples_run_as_written() {
    crate::require!("qemu-img");
    let readme =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("README.md"))
            .unwrap();
    let usage = &readme[readme.find("## Usage").expect("a Usage section")..];
    let block = usage
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("a sh block in Usage");
    let commands: Vec<String> = block
        .lines()
        .filter(|l| l.starts_with("diskseal "))
        .map(|l| {
            let l = l.split(" # ").next().unwrap_or(l);
            l.replace("[--json] ", "").trim().to_owned()
        })
        .collect();
    assert!(
        commands.len() >= 12,
        "only {} examples found",
        commands.len()
    );
    let dir = setup(0, 0);
    let d = dir.path();
    // 6 MiB with a hole in the middle, as raw, qcow2 and dynamic VHD.
    let mut disk = crate::util::pattern(6 << 20, 7);
    disk[2 << 20..4 << 20].fill(0);
    std::fs::write(d.join("disk.raw"), &disk).unwrap();
    std::fs::write(d.join("pass.txt"), b"correct horse battery staple").unwrap();
    for (fmt, name) in [("qcow2", "disk.qcow2"), ("vpc", "disk.vhd")] {
        crate::util::run_in(
            d,
            "qemu-img",
            &["convert", "-f", "raw", "-O", fmt, "disk.raw", name],
        )
        .ok();
    }
    let mut transcript = String::new();
    for c in &commands {
        let args: Vec<&str> = c.split_whitespace().skip(1).collect();
        let r = diskseal(d, &args);
        assert_eq!(r.code, 0, "{c}: {}{}", r.stdout, r.stderr);
        // Whether the Argon2 benchmark lowers the memory depends on the machine's speed.
        let stderr: String = r
            .stderr
            .lines()
            .filter(|l| !l.starts_with("diskseal: note: Argon2 memory lowered"))
            .map(|l| format!("{l}\n"))
            .collect();
        transcript.push_str(&format!("$ {c}\n{}{stderr}", r.stdout));
    }
    check("examples-usage", &normalize(&transcript));
}

#[test]
fn normalize_keeps_words_and_hides_numbers() {
    assert_eq!(
        normalize(
            "a.raw: UUID 74fc5eb3-fc30-4cc2-ae00-91f8bf224829, AES-256-XTS, in 0.03 s; key hash 6eb2d4ef2fde36ffb772e7af65beb99260ad271aac09c8c4a7147c2e30301b2c, added bad face"
        ),
        "a.raw: UUID <uuid>, AES-#-XTS, in #.# s; key hash <hex>, added bad face"
    );
}
