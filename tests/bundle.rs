//! `diskseal bundle` and `encrypt --bundle`: the manifest's facts, the sealed key (opened by the `age`
//! CLI), refusals, and nothing left behind on failure.

use std::path::Path;

use crate::require;
use crate::util::{
    FAST_PBKDF2, diskseal, encrypt_fast, have, read, run_in, setup, veritysetup_root,
};

const MIB: usize = 1 << 20;

/// A fresh age identity (via the library) as (identity file text, recipient).
fn identity(d: &Path) -> String {
    let id = age::x25519::Identity::generate();
    use age::secrecy::ExposeSecret;
    std::fs::write(
        d.join("id.txt"),
        format!("{}\n", id.to_string().expose_secret()),
    )
    .unwrap();
    id.to_public().to_string()
}

fn encrypt(d: &Path, extra: &[&str]) {
    let mut args = vec!["encrypt", "-q", "--key-file", "pw"];
    args.extend(FAST_PBKDF2);
    args.extend(extra);
    args.extend(["src.raw", "disk.luks"]);
    diskseal(d, &args).ok();
}

/// Checks that the manifest `m` holds the dm-verity root hash veritysetup computes for `plain` (a
/// file in `d` holding the plaintext disk), with no salt, and no SHA-256 of the plaintext.
#[track_caller]
fn assert_verity(d: &Path, m: &serde_json::Value, plain: &str) {
    let v = &m["plaintext"]["dm_verity"];
    assert_eq!(v["salt"], "", "{m}");
    assert_eq!(v["hash"], "sha256");
    assert_eq!(v["hash_type"], 1);
    assert_eq!(v["hash_block_size"], 4096);
    assert!(m["plaintext"].get("sha256").is_none(), "{m}");
    if have("veritysetup") {
        let block = v["data_block_size"].as_u64().unwrap() as u32;
        assert_eq!(
            v["root_hash"],
            veritysetup_root(d, plain, block, "-"),
            "{m}"
        );
    }
}

fn sha256_hex(b: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(b))
}

#[test]
fn bundle_holds_image_manifest_and_sealed_key() {
    let dir = setup(2 * MIB, 71);
    let d = dir.path();
    let recipient = identity(d);
    encrypt(d, &[]);
    diskseal(
        d,
        &[
            "bundle",
            "-q",
            "--recipient",
            &recipient,
            "--key-file",
            "pw",
            "disk.luks",
            "out",
        ],
    )
    .ok();
    let b = d.join("out");
    assert_eq!(read(b.join("disk.luks")), read(d.join("disk.luks")));
    let m: serde_json::Value = serde_json::from_slice(&read(b.join("manifest.json"))).unwrap();
    assert_eq!(m["schema"], "diskseal-bundle/2");
    assert_eq!(m["profile"], "luks2");
    assert_eq!(m["image"]["file"], "disk.luks");
    assert_eq!(m["image"]["format"], "luks2");
    assert_eq!(m["image"]["virtual_size"], 2 * MIB);
    assert_eq!(
        m["image"]["file_size"],
        std::fs::metadata(d.join("disk.luks")).unwrap().len()
    );
    assert_eq!(m["image"]["sha256"], sha256_hex(&read(d.join("disk.luks"))));
    assert_verity(d, &m, "src.raw");
    assert_eq!(m["luks"]["version"], 2);
    assert_eq!(m["luks"]["cipher"], "aes-xts-plain64");
    assert_eq!(m["key"]["recipient"], recipient.as_str());
    assert_eq!(
        m["key"]["kms_plaintext"],
        "base64 of the passphrase (the key file, verbatim, no newline added)"
    );
    let dump = diskseal(d, &["dump", "--json", "disk.luks"]).ok().stdout;
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    assert_eq!(m["luks"]["uuid"], dump["uuid"]);
    // No secret in the manifest; the key opens with the identity.
    let text = String::from_utf8(read(b.join("manifest.json"))).unwrap();
    assert!(!text.contains("secret pass") && !text.contains("c2VjcmV0IHBhc3M="));
    let id: age::x25519::Identity = String::from_utf8(read(d.join("id.txt")))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(
        age::decrypt(&id, &read(b.join("dek.age"))).unwrap(),
        b"secret pass"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(b.join("dek.age"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
}

#[test]
fn age_cli_opens_the_sealed_key() {
    require!("age");
    let dir = setup(MIB, 72);
    let d = dir.path();
    let recipient = identity(d);
    encrypt(d, &["--bundle", "b", "--recipient", &recipient]);
    let r = run_in(
        d,
        "age",
        &["-d", "-i", "id.txt", "-o", "dek.out", "b/dek.age"],
    )
    .ok();
    assert!(r.stderr.is_empty(), "{}", r.stderr);
    assert_eq!(read(d.join("dek.out")), b"secret pass");
}

#[test]
fn ibm_classic_bundle_says_what_to_wrap() {
    let dir = setup(MIB, 73);
    let d = dir.path();
    let recipient = identity(d);
    diskseal(d, &["keygen", "--bytes", "32", "-o", "dek.bin"]).ok();
    encrypt_fast(
        d,
        &[
            "-q",
            "--profile",
            "ibm-classic-luks",
            "--key-file",
            "dek.bin",
        ],
        "src.raw",
        "disk.luks",
    )
    .ok();
    let r = diskseal(
        d,
        &[
            "bundle",
            "--json",
            "--profile",
            "ibm-classic-luks",
            "--recipient",
            &recipient,
            "--key-file",
            "dek.bin",
            "disk.luks",
            "b",
        ],
    )
    .ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["manifest"]["key"]["kind"], "raw-dek");
    assert_eq!(v["manifest"]["key"]["length"], 32);
    assert_eq!(v["manifest"]["luks"]["version"], 1);
    assert!(
        v["manifest"]["key"]["kms_plaintext"]
            .as_str()
            .unwrap()
            .starts_with("base64 of the raw DEK")
    );
}

#[test]
fn bundle_refusals_leave_nothing_behind() {
    let dir = setup(MIB, 74);
    let d = dir.path();
    let recipient = identity(d);
    encrypt(d, &[]);
    let before: Vec<_> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    // Wrong key: refused before anything is written.
    std::fs::write(d.join("bad"), b"not it").unwrap();
    let r = diskseal(
        d,
        &[
            "bundle",
            "--recipient",
            &recipient,
            "--key-file",
            "bad",
            "disk.luks",
            "out",
        ],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("no keyslot opens"), "{}", r.stderr);
    // Bad recipient.
    let r = diskseal(
        d,
        &[
            "bundle",
            "--recipient",
            "age1garbage",
            "--key-file",
            "pw",
            "disk.luks",
            "out",
        ],
    );
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("not an age X25519 recipient")
            && r.stderr.contains("diskseal-agent init"),
        "{}",
        r.stderr
    );
    // Not a LUKS image.
    let r = diskseal(
        d,
        &[
            "bundle",
            "--recipient",
            &recipient,
            "--key-file",
            "pw",
            "src.raw",
            "out",
        ],
    );
    assert!(
        r.code == 2 && r.stderr.contains("not a LUKS file nor a qcow2"),
        "{}",
        r.stderr
    );
    // Wrong DEK size for the profile.
    let r = diskseal(
        d,
        &[
            "bundle",
            "--profile",
            "ibm-classic-luks",
            "--recipient",
            &recipient,
            "--key-file",
            "bad",
            "disk.luks",
            "out",
        ],
    );
    assert!(
        r.code == 2 && r.stderr.contains("DEK must be 24 to 384 bytes"),
        "{}",
        r.stderr
    );
    let mut now: Vec<_> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    now.retain(|n| n != "bad");
    assert_eq!(now.len(), before.len(), "{now:?}");
    // An existing directory is kept without --force, replaced with it.
    std::fs::create_dir(d.join("out")).unwrap();
    std::fs::write(d.join("out/old"), b"x").unwrap();
    let r = diskseal(
        d,
        &[
            "bundle",
            "--recipient",
            &recipient,
            "--key-file",
            "pw",
            "disk.luks",
            "out",
        ],
    );
    assert!(
        r.code == 2 && r.stderr.contains("already exists") && r.stderr.contains("--force"),
        "{}",
        r.stderr
    );
    assert!(d.join("out/old").exists());
    diskseal(
        d,
        &[
            "bundle",
            "-q",
            "--force",
            "--recipient",
            &recipient,
            "--key-file",
            "pw",
            "disk.luks",
            "out",
        ],
    )
    .ok();
    assert!(!d.join("out/old").exists() && d.join("out/manifest.json").exists());
}

#[test]
fn encrypt_with_bundle_reports_one_json_document() {
    let dir = setup(MIB, 75);
    let d = dir.path();
    let recipient = identity(d);
    let mut args = vec!["encrypt", "--json", "--key-file", "pw"];
    args.extend(FAST_PBKDF2);
    args.extend([
        "--bundle",
        "b",
        "--recipient",
        &recipient,
        "src.raw",
        "disk.luks",
    ]);
    let r = diskseal(d, &args).ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["command"], "encrypt");
    assert_eq!(v["bundle"]["manifest"]["luks"]["uuid"], v["uuid"]);
    // --bundle needs --recipient, and a key file that can be read twice (not stdin).
    let r = diskseal(
        d,
        &[
            "encrypt",
            "--key-file",
            "pw",
            "--bundle",
            "c",
            "src.raw",
            "x.luks",
        ],
    );
    assert!(
        r.code == 2 && r.stderr.contains("--recipient"),
        "{}",
        r.stderr
    );
    let r = diskseal(
        d,
        &[
            "encrypt",
            "--key-file",
            "-",
            "--bundle",
            "c",
            "--recipient",
            &recipient,
            "src.raw",
            "x.luks",
        ],
    );
    assert!(
        r.code == 2 && r.stderr.contains("not stdin"),
        "{}",
        r.stderr
    );
    assert!(!d.join("c").exists() && !d.join("x.luks").exists());
}

#[test]
fn ibm_vpc_qcow2_bundle() {
    let dir = setup(MIB, 76);
    let d = dir.path();
    let recipient = identity(d);
    // Sparse: 64 MiB virtual, 1 MiB of data; the qcow2 file stays much smaller than its disk.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(d.join("src.raw"))
        .unwrap();
    f.set_len(64 * MIB as u64).unwrap();
    std::fs::write(d.join("vpc-pass"), b"abc123").unwrap();
    let mut args = vec![
        "encrypt",
        "-q",
        "--profile",
        "ibm-vpc",
        "--key-file",
        "vpc-pass",
    ];
    args.extend(["--pbkdf-force-iterations", "1000"]);
    args.extend(["src.raw", "disk.qcow2"]);
    diskseal(d, &args).ok();
    let r = diskseal(
        d,
        &[
            "bundle",
            "--json",
            "--profile",
            "ibm-vpc",
            "--recipient",
            &recipient,
            "--key-file",
            "vpc-pass",
            "disk.qcow2",
            "b",
        ],
    )
    .ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let m = &v["manifest"];
    assert_eq!(m["image"]["format"], "qcow2+luks1");
    assert_eq!(m["luks"]["version"], 1);
    assert_eq!(m["image"]["virtual_size"], 64 * MIB);
    assert!(
        m["image"]["file_size"].as_u64().unwrap() < 8 * MIB as u64,
        "{m}"
    );
    assert_verity(d, m, "src.raw");
    assert_eq!(m["key"]["kind"], "passphrase");
}

/// `ibm-classic-vhd`: the bundle holds a vhd-util encrypted VHD; its manifest has a `vhd_util` entry (the
/// VHD's id, key size and batmap key hash) instead of a `luks` one, and says the KMS wraps the raw DEK.
#[test]
fn ibm_classic_vhd_bundle() {
    let dir = setup(MIB, 77);
    let d = dir.path();
    let recipient = identity(d);
    let dek: Vec<u8> = (0..64u8).collect();
    std::fs::write(d.join("dek.bin"), &dek).unwrap();
    diskseal(
        d,
        &[
            "encrypt",
            "-q",
            "--profile",
            "ibm-classic-vhd",
            "--key-file",
            "dek.bin",
            "src.raw",
            "disk.vhd",
        ],
    )
    .ok();
    let bundle = |key: &str, out: &str| {
        diskseal(
            d,
            &[
                "bundle",
                "--json",
                "--profile",
                "ibm-classic-vhd",
                "--recipient",
                &recipient,
                "--key-file",
                key,
                "disk.vhd",
                out,
            ],
        )
    };
    let r = bundle("dek.bin", "b").ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let m = &v["manifest"];
    assert_eq!(m["image"]["format"], "vhd-util");
    assert!(m.get("luks").is_none(), "{m}");
    assert_eq!(m["vhd_util"]["key_bits"], 512);
    // SHA-256(32 zero bytes of nonce || DEK), as vhd-util computes it.
    let mut nonce_key = vec![0u8; 32];
    nonce_key.extend(&dek);
    assert_eq!(m["vhd_util"]["keyhash"], sha256_hex(&nonce_key));
    assert_eq!(m["key"]["kind"], "raw-dek");
    assert_eq!(m["key"]["length"], 64);
    // The plaintext is the source padded to whole 2 MiB blocks.
    let mut plain = read(d.join("src.raw"));
    plain.resize(2 * MIB, 0);
    std::fs::write(d.join("plain.raw"), &plain).unwrap();
    assert_verity(d, m, "plain.raw");
    // Another DEK does not open it: refused, nothing written.
    let other: Vec<u8> = (1..65u8).collect();
    std::fs::write(d.join("other.bin"), &other).unwrap();
    let r = bundle("other.bin", "b2");
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(!d.join("b2").exists());
    // `encrypt --bundle` makes the same bundle in one step (it used to ignore --bundle here).
    let r = diskseal(
        d,
        &[
            "encrypt",
            "--json",
            "--profile",
            "ibm-classic-vhd",
            "--key-file",
            "dek.bin",
            "--bundle",
            "b3",
            "--recipient",
            &recipient,
            "src.raw",
            "disk3.vhd",
        ],
    )
    .ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let m3: serde_json::Value = serde_json::from_slice(&read(d.join("b3/manifest.json"))).unwrap();
    assert_eq!(v["bundle"]["manifest"], m3);
    assert_eq!(m3["vhd_util"]["keyhash"], m["vhd_util"]["keyhash"]);
    assert_eq!(m3["plaintext"], m["plaintext"]);
    assert_eq!(read(d.join("b3/disk3.vhd")), read(d.join("disk3.vhd")));
    assert!(d.join("b3/dek.age").exists());
}

/// `encrypt --manifest FILE`: the facts are those of the real file and source (LUKS UUID as
/// cryptsetup and qemu-img read it), for a LUKS2, an ibm-vpc and an ibm-classic-vhd output; no secret.
#[test]
fn encrypt_manifest_describes_the_output_for_every_profile_kind() {
    let dir = setup(4 * MIB, 79);
    let d = dir.path();
    let src_sha = sha256_hex(&read(d.join("src.raw")));
    std::fs::write(d.join("dek"), crate::util::pattern(64, 5)).unwrap();
    for (flags, out, format) in [
        (&["--key-file", "pw"][..], "disk.luks", "luks2"),
        (
            &["--profile", "ibm-vpc", "--key-file", "pw"][..],
            "disk.qcow2",
            "qcow2+luks1",
        ),
        (
            &["--profile", "ibm-classic-vhd", "--key-file", "dek"][..],
            "disk.vhd",
            "vhd-util",
        ),
    ] {
        let mut f = vec!["--json", "--manifest", "m.json", "--force"];
        f.extend(flags);
        let r = if format == "vhd-util" {
            let mut args = vec!["encrypt"];
            args.extend(&f);
            args.extend(["src.raw", out]);
            diskseal(d, &args).ok()
        } else {
            encrypt_fast(d, &f, "src.raw", out).ok()
        };
        let j: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
        let text = read(d.join("m.json"));
        let m: serde_json::Value = serde_json::from_slice(&text).unwrap();
        assert_eq!(j["manifest"]["manifest"], m, "{out}");
        assert_eq!(m["schema"], "diskseal-manifest/2");
        assert_eq!(m["image"]["file"], out);
        assert_eq!(m["image"]["format"], format);
        let image = read(d.join(out));
        assert_eq!(m["image"]["file_size"], image.len());
        assert_eq!(m["image"]["sha256"], sha256_hex(&image));
        assert_eq!(m["image"]["virtual_size"], 4 * MIB);
        assert_verity(d, &m, "src.raw");
        assert!(m.get("key").and_then(|k| k.get("recipient")).is_none());
        let t = String::from_utf8(text).unwrap();
        assert!(
            !t.contains("secret pass") && !t.contains("c2VjcmV0IHBhc3M="),
            "{t}"
        );
        match format {
            "vhd-util" => {
                assert_eq!(m["vhd_util"]["keyhash"], j["keyhash"]["hash"]);
                assert_eq!(m["key"]["kind"], "raw-dek");
                assert_eq!(m["key"]["length"], 64);
            }
            _ => {
                assert_eq!(m["luks"]["uuid"], j["uuid"]);
                assert_eq!(m["key"]["kind"], "passphrase");
            }
        }
        // The UUID as the real consumers read it.
        if format == "luks2" && crate::util::have("cryptsetup") {
            let dump = run_in(d, "cryptsetup", &["luksDump", out]).ok().stdout;
            assert!(dump.contains(m["luks"]["uuid"].as_str().unwrap()), "{dump}");
        }
        if format == "qcow2+luks1" && crate::util::have("qemu-img") {
            let info = run_in(d, "qemu-img", &["info", "--output=json", out])
                .ok()
                .stdout;
            let info: serde_json::Value = serde_json::from_str(&info).unwrap();
            assert_eq!(
                info["format-specific"]["data"]["encrypt"]["uuid"],
                m["luks"]["uuid"]
            );
        }
    }
    // --plaintext-sha256 adds the SHA-256 of the whole plaintext (here the source) to the root hash.
    encrypt_fast(
        d,
        &[
            "-q",
            "--force",
            "--manifest",
            "m.json",
            "--plaintext-sha256",
            "--key-file",
            "pw",
        ],
        "src.raw",
        "disk.luks",
    )
    .ok();
    let m: serde_json::Value = serde_json::from_slice(&read(d.join("m.json"))).unwrap();
    assert_eq!(m["plaintext"]["sha256"], src_sha.as_str());
    assert_eq!(m["plaintext"]["dm_verity"]["data_block_size"], 4096);
}

#[test]
fn encrypt_manifest_refusals_happen_before_any_work() {
    let dir = setup(MIB, 80);
    let d = dir.path();
    std::fs::write(d.join("m.json"), b"keep me").unwrap();
    let r = encrypt_fast(
        d,
        &["--manifest", "m.json", "--key-file", "pw"],
        "src.raw",
        "o.luks",
    );
    assert!(
        r.code == 2 && r.stderr.contains("already exists") && r.stderr.contains("--force"),
        "{}",
        r.stderr
    );
    assert_eq!(read(d.join("m.json")), b"keep me");
    let r = encrypt_fast(
        d,
        &["--manifest", "o.luks", "--key-file", "pw"],
        "src.raw",
        "o.luks",
    );
    assert!(
        r.code == 2 && r.stderr.contains("neither the source nor the output"),
        "{}",
        r.stderr
    );
    let r = crate::util::diskseal_stdin(
        d,
        &[
            "encrypt",
            "--manifest",
            "n.json",
            "--key-file",
            "-",
            "--pbkdf",
            "pbkdf2",
            "--pbkdf-force-iterations",
            "1000",
            "src.raw",
            "o.luks",
        ],
        b"secret pass",
    );
    assert!(
        r.code == 2 && r.stderr.contains("--manifest needs --key-file FILE"),
        "{}",
        r.stderr
    );
    assert!(!d.join("o.luks").exists() && !d.join("n.json").exists());
}
