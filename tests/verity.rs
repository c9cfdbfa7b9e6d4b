//! The plaintext digest (the dm-verity root hash, proven against `veritysetup format --no-superblock`),
//! and cost that grows with the data: `verify`, `verify --against`, `decrypt` and `--manifest` on a
//! 100 GiB ibm-vpc image with a few MiB of data decrypt only those MiB.

use std::path::Path;

use crate::require;
use crate::util::{diskseal, diskseal_bin, encrypt_fast, pattern, read, setup, veritysetup_root};

const MIB: u64 = 1 << 20;

/// A sparse raw disk `name` in `d` of `size` bytes with `pieces` (offset, length) of pseudo-random data.
fn sparse(d: &Path, name: &str, size: u64, pieces: &[(u64, usize)]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::create(d.join(name)).unwrap();
    f.set_len(size).unwrap();
    for (i, &(at, len)) in pieces.iter().enumerate() {
        f.write_all_at(&pattern(len, 90 + i as u64), at).unwrap();
    }
}

/// `diskseal verify --json` of `image` with `extra` flags (key file `pw`).
fn verify_json(d: &Path, image: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["verify", "--json", "--key-file", "pw"];
    args.extend(extra);
    args.push(image);
    let r = diskseal(d, &args).ok();
    serde_json::from_str(&r.stdout).unwrap()
}

#[test]
fn root_hash_is_what_veritysetup_computes() {
    require!("veritysetup");
    // Dense LUKS2 (4096-byte data blocks, two levels), a one-block disk (no level: the root is the
    // block's hash), LUKS1 of a size 4096 does not divide (512-byte data blocks), and a sparse 1 GiB
    // ibm-vpc image (three levels, whole zero subtrees at every level).
    let dir = setup(3 * MIB as usize + 8192, 81);
    let d = dir.path();
    std::fs::write(d.join("one.raw"), pattern(4096, 3)).unwrap();
    std::fs::write(d.join("odd.raw"), pattern(MIB as usize + 1536, 4)).unwrap();
    sparse(
        d,
        "sparse.raw",
        1 << 30,
        &[
            (0, 5000),
            (300 * MIB + 4096 * 7, 200_000),
            ((1 << 30) - 4096, 4096),
        ],
    );
    for (src, flags, out, block) in [
        ("src.raw", &[][..], "dense.luks", 4096),
        ("one.raw", &[][..], "one.luks", 4096),
        ("odd.raw", &["--type", "luks1"][..], "odd.luks", 512),
        (
            "sparse.raw",
            &["--profile", "ibm-vpc"][..],
            "sparse.qcow2",
            4096,
        ),
    ] {
        let mut f = vec!["-q", "--key-file", "pw"];
        f.extend(flags);
        encrypt_fast(d, &f, src, out).ok();
        let v = verify_json(d, out, &[]);
        let got = &v["plaintext_dm_verity"];
        assert_eq!(got["data_block_size"], block, "{out}: {v}");
        assert_eq!(
            got["root_hash"],
            veritysetup_root(d, src, block, "-"),
            "{out}"
        );
        assert!(v["plaintext_sha256"].is_null(), "{v}");
        // With --against the comparison is the proof: the root hash only on request.
        let v = verify_json(d, out, &["--against", src]);
        assert!(v["plaintext_dm_verity"].is_null(), "{v}");
        let v = verify_json(d, out, &["--against", src, "--root-hash"]);
        assert_eq!(
            v["plaintext_dm_verity"]["root_hash"],
            veritysetup_root(d, src, block, "-"),
            "{out}"
        );
        // A salt is hashed as veritysetup does (format 1: before each block).
        let salt = "00ff17e3a9";
        let v = verify_json(d, out, &["--salt", salt, "--plaintext-sha256"]);
        assert_eq!(
            v["plaintext_dm_verity"]["root_hash"],
            veritysetup_root(d, src, block, salt),
            "{out}"
        );
        use sha2::{Digest, Sha256};
        assert_eq!(
            v["plaintext_sha256"],
            hex::encode(Sha256::digest(read(d.join(src)))),
            "{out}"
        );
    }
    // The sparse image decrypted only what it allocates (the 4 KiB pieces round out to 4 KiB).
    let v = verify_json(d, "sparse.qcow2", &[]);
    assert!(v["data_bytes"].as_u64().unwrap() < 2 * MIB, "{v}");
    let r = diskseal(
        d,
        &["verify", "--key-file", "pw", "--salt", "xyz", "one.luks"],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("--salt"), "{}", r.stderr);
}

/// IBM VPC's 100 GiB disks with little data: everything costs what is allocated, not 100 GiB (before,
/// `verify` took 70 s, `--manifest` 81 s and `decrypt` wrote 100 GiB of zeros).
#[test]
fn a_100_gib_image_costs_its_data() {
    let dir = setup(0, 82);
    let d = dir.path();
    let size = 100u64 << 30;
    sparse(
        d,
        "big.raw",
        size,
        &[(0, 65536), (37 << 30, 3 << 20), (size - MIB, MIB as usize)],
    );
    let r = encrypt_fast(
        d,
        &[
            "--json",
            "--profile",
            "ibm-vpc",
            "--key-file",
            "pw",
            "--manifest",
            "m.json",
        ],
        "big.raw",
        "big.qcow2",
    )
    .ok();
    let j: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let v = verify_json(d, "big.qcow2", &[]);
    assert!(v["data_bytes"].as_u64().unwrap() <= 5 * MIB, "{v}");
    assert_eq!(
        j["manifest"]["manifest"]["plaintext"]["dm_verity"]["root_hash"],
        v["plaintext_dm_verity"]["root_hash"]
    );
    // Against the source: what is allocated on either side is read, the rest is equal.
    let v = verify_json(d, "big.qcow2", &["--against", "big.raw"]);
    assert_eq!(v["ok"], true, "{v}");
    assert!(v["data_bytes"].as_u64().unwrap() <= 5 * MIB, "{v}");
    // A difference where the image has no data but the source has is found.
    sparse(d, "other.raw", size, &[(0, 65536), (37 << 30, 3 << 20)]);
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(d.join("other.raw"))
            .unwrap();
        f.write_all_at(&[1], 50 << 30).unwrap();
    }
    let r = diskseal(
        d,
        &[
            "verify",
            "--json",
            "--key-file",
            "pw",
            "--against",
            "other.raw",
            "big.qcow2",
        ],
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["first_mismatch"], 50u64 << 30, "{v}");
    // decrypt writes holes: raw and qcow2 outputs take about the data's room.
    use std::os::unix::fs::MetadataExt;
    for (flags, out) in [
        (&[][..], "plain.raw"),
        (&["-O", "qcow2"][..], "plain.qcow2"),
    ] {
        let mut args = vec!["decrypt", "-q", "--key-file", "pw"];
        args.extend(flags);
        args.extend(["big.qcow2", out]);
        diskseal(d, &args).ok();
        let used = std::fs::metadata(d.join(out)).unwrap().blocks() * 512;
        assert!(used < 16 * MIB, "{out} takes {used} bytes");
    }
    let v = verify_json(d, "big.qcow2", &["--against", "plain.qcow2"]);
    assert_eq!(v["ok"], true, "{v}");
}

/// Without a terminal, long jobs say how far they are on stderr with a plain line (here every 10 ms);
/// -q and --json keep stderr quiet.
#[test]
fn progress_lines_without_a_terminal() {
    let dir = setup(48 * MIB as usize, 83);
    let d = dir.path();
    encrypt_fast(d, &["-q", "--key-file", "pw"], "src.raw", "disk.luks").ok();
    let recipient = age::x25519::Identity::generate().to_public().to_string();
    let run = |extra: &[&str]| {
        let mut args = extra.to_vec();
        args.extend(["--key-file", "pw", "disk.luks"]);
        if args[0] == "bundle" {
            args.push("b");
        }
        let o = std::process::Command::new(diskseal_bin())
            .args(&args)
            .current_dir(d)
            .env("DISKSEAL_PROGRESS_SECONDS", "0.01")
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stderr).unwrap()
    };
    let err = run(&["verify"]);
    assert!(err.contains("diskseal: verifying: "), "{err}");
    assert!(err.lines().any(|l| l.contains(" GiB (")), "{err}");
    assert_eq!(run(&["verify", "-q"]), "");
    assert_eq!(run(&["verify", "--json"]), "");
    // bundle: the root hash, then the copy of the image file, each counted to its own total.
    let err = run(&["bundle", "--recipient", &recipient, "--force"]);
    assert!(err.contains("diskseal: bundling: "), "{err}");
}
