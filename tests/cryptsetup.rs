//! cryptsetup as the oracle: it must accept every LUKS header we write and decrypt our payloads, and
//! diskseal must open, verify and decrypt what cryptsetup writes.

use std::path::Path;

use crate::require;
use crate::util::{FAST_PBKDF2, diskseal, encrypt_fast, pattern, read, run_in, setup};

const MIB: usize = 1 << 20;

fn cryptsetup(dir: &Path, args: &[&str]) -> crate::util::Ran {
    run_in(dir, "cryptsetup", args)
}

/// The volume key cryptsetup recovers from `img` with the passphrase file `pw`.
fn dumped_volume_key(dir: &Path, img: &str) -> Vec<u8> {
    cryptsetup(
        dir,
        &[
            "luksDump",
            "--dump-volume-key",
            "--batch-mode",
            "--key-file",
            "pw",
            "--volume-key-file",
            "vk.dumped",
            img,
        ],
    )
    .ok();
    let vk = read(dir.join("vk.dumped"));
    std::fs::remove_file(dir.join("vk.dumped")).unwrap();
    vk
}

/// cryptsetup's own offline encryption of `src.raw` (deterministic with a volume key file).
/// Returns the file name; its payload starts at 16 MiB.
fn cryptsetup_encrypt(
    dir: &Path,
    name: &str,
    vk: &str,
    key_bits: &str,
    sector: &str,
    kdf: &[&str],
) -> String {
    std::fs::copy(dir.join("src.raw"), dir.join(name)).unwrap();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join(name))
        .unwrap();
    let len = f.metadata().unwrap().len();
    f.set_len(len + 32 * MIB as u64).unwrap();
    let mut args = vec![
        "reencrypt",
        "--encrypt",
        "--type",
        "luks2",
        "--reduce-device-size",
        "32M",
        "--force-offline-reencrypt",
        "--batch-mode",
        "--key-file",
        "pw",
        "--key-size",
        key_bits,
        "--sector-size",
        sector,
    ];
    if !vk.is_empty() {
        args.extend(["--volume-key-file", vk]);
    }
    args.extend(kdf);
    args.push(name);
    cryptsetup(dir, &args).ok();
    name.to_owned()
}

const ARGON: &[&str] = &[
    "--pbkdf-force-iterations",
    "4",
    "--pbkdf-memory",
    "32768",
    "--pbkdf-parallel",
    "1",
];

#[test]
fn luks2_headers_for_every_kdf_key_size_sector_and_hash() {
    require!("cryptsetup");
    let dir = setup(MIB, 1);
    let d = dir.path();
    let mut n = 0;
    for kdf in ["pbkdf2", "argon2i", "argon2id"] {
        for key_bits in ["256", "512"] {
            for sector in ["512", "4096"] {
                for hash in ["sha256", "sha512"] {
                    n += 1;
                    let vk = pattern(key_bits.parse::<usize>().unwrap() / 8, 100 + n);
                    std::fs::write(d.join("vk.bin"), &vk).unwrap();
                    let out = format!("m{n}.luks");
                    let cost: &[&str] = if kdf == "pbkdf2" {
                        &["--pbkdf-force-iterations", "1000"]
                    } else {
                        ARGON
                    };
                    let mut args = vec![
                        "encrypt",
                        "-q",
                        "--pbkdf",
                        kdf,
                        "--key-size",
                        key_bits,
                        "--sector-size",
                        sector,
                        "--hash",
                        hash,
                        "--key-file",
                        "pw",
                        "--volume-key-file",
                        "vk.bin",
                        "--label",
                        "lbl",
                        "--subsystem",
                        "sub",
                    ];
                    args.extend(cost);
                    args.extend(["src.raw", &out]);
                    diskseal(d, &args).ok();
                    let dump = cryptsetup(d, &["luksDump", &out]).ok().stdout;
                    let case = format!("{kdf}/{key_bits}/{sector}/{hash}");
                    assert!(dump.contains("Version:       \t2"), "{case}: {dump}");
                    assert!(
                        dump.contains(&format!("sector: {sector} [bytes]")),
                        "{case}: {dump}"
                    );
                    assert!(
                        dump.contains(&format!("PBKDF:      {kdf}")),
                        "{case}: {dump}"
                    );
                    assert!(
                        dump.contains(&format!("Key:        {key_bits} bits")),
                        "{case}: {dump}"
                    );
                    assert!(
                        dump.contains(&format!("AF hash:    {hash}")),
                        "{case}: {dump}"
                    );
                    assert!(dump.contains("Label:         \tlbl"), "{case}: {dump}");
                    assert!(dump.contains("Subsystem:     \tsub"), "{case}: {dump}");
                    cryptsetup(d, &["open", "--test-passphrase", "--key-file", "pw", &out]).ok();
                    assert_eq!(
                        dumped_volume_key(d, &out),
                        vk,
                        "{case}: cryptsetup recovers our volume key"
                    );
                    std::fs::remove_file(d.join(&out)).unwrap();
                }
            }
        }
    }
    assert_eq!(n, 24);
}

#[test]
fn payload_is_byte_identical_to_cryptsetup_reencrypt() {
    require!("cryptsetup");
    let dir = setup(3 * MIB, 2);
    let d = dir.path();
    let src_len = 3 * MIB;
    for key_bits in ["256", "512"] {
        for sector in ["512", "4096"] {
            let vk = pattern(key_bits.parse::<usize>().unwrap() / 8, 7);
            std::fs::write(d.join("vk.bin"), &vk).unwrap();
            encrypt_fast(
                d,
                &[
                    "-q",
                    "--sector-size",
                    sector,
                    "--key-file",
                    "pw",
                    "--volume-key-file",
                    "vk.bin",
                ],
                "src.raw",
                "ours.luks",
            )
            .ok();
            let theirs = cryptsetup_encrypt(
                d,
                "theirs.img",
                "vk.bin",
                key_bits,
                sector,
                &["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"],
            );
            let ours = read(d.join("ours.luks"));
            let theirs = read(d.join(theirs));
            assert_eq!(ours.len(), 16 * MIB + src_len);
            assert!(
                ours[16 * MIB..] == theirs[16 * MIB..16 * MIB + src_len],
                "payload differs from cryptsetup's for {key_bits}-bit keys, sector {sector}"
            );
            std::fs::remove_file(d.join("ours.luks")).unwrap();
            std::fs::remove_file(d.join("theirs.img")).unwrap();
        }
    }
}

#[test]
fn cryptsetup_reencrypt_decrypt_gives_back_the_source() {
    require!("cryptsetup");
    let dir = setup(2 * MIB, 3);
    let d = dir.path();
    for (sector, kdf) in [("4096", "argon2id"), ("512", "pbkdf2")] {
        let mut args = vec![
            "encrypt",
            "-q",
            "--sector-size",
            sector,
            "--pbkdf",
            kdf,
            "--key-file",
            "pw",
        ];
        args.extend(if kdf == "pbkdf2" {
            &["--pbkdf-force-iterations", "1000"][..]
        } else {
            ARGON
        });
        args.extend(["src.raw", "ours.luks"]);
        diskseal(d, &args).ok();
        // cryptsetup unlocks our keyslot, then decrypts our payload offline. Offline decryption needs a
        // detached header with data offset 0, so the payload is cut out and given a cryptsetup-made header
        // holding the volume key cryptsetup recovered from ours.
        let vk = dumped_volume_key(d, "ours.luks");
        std::fs::write(d.join("vk.cs"), &vk).unwrap();
        std::fs::write(
            d.join("payload.img"),
            &read(d.join("ours.luks"))[16 * MIB..],
        )
        .unwrap();
        let hdr = std::fs::File::create(d.join("detached.hdr")).unwrap();
        hdr.set_len(16 * MIB as u64).unwrap();
        cryptsetup(
            d,
            &[
                "luksFormat",
                "--batch-mode",
                "--type",
                "luks2",
                "--header",
                "detached.hdr",
                "--offset",
                "0",
                "--sector-size",
                sector,
                "--pbkdf",
                "pbkdf2",
                "--pbkdf-force-iterations",
                "1000",
                "--key-file",
                "pw",
                "--volume-key-file",
                "vk.cs",
                "--key-size",
                "512",
                "payload.img",
            ],
        )
        .ok();
        cryptsetup(
            d,
            &[
                "reencrypt",
                "--decrypt",
                "--force-offline-reencrypt",
                "--batch-mode",
                "--key-file",
                "pw",
                "--header",
                "detached.hdr",
                "payload.img",
            ],
        )
        .ok();
        assert!(
            read(d.join("payload.img")) == read(d.join("src.raw")),
            "sector {sector}: cryptsetup's decryption differs"
        );
        for f in ["ours.luks", "payload.img", "detached.hdr"] {
            std::fs::remove_file(d.join(f)).unwrap();
        }
    }
}

#[test]
fn luks1_output_is_accepted_and_byte_identical() {
    require!("cryptsetup");
    let dir = setup(2 * MIB, 4);
    let d = dir.path();
    let vk = pattern(64, 9);
    std::fs::write(d.join("vk.bin"), &vk).unwrap();
    encrypt_fast(
        d,
        &[
            "-q",
            "--profile",
            "luks1",
            "--key-file",
            "pw",
            "--volume-key-file",
            "vk.bin",
        ],
        "src.raw",
        "ours.luks1",
    )
    .ok();
    let dump = cryptsetup(d, &["luksDump", "ours.luks1"]).ok().stdout;
    assert!(dump.contains("Version:       \t1"), "{dump}");
    assert!(dump.contains("Payload offset:\t4096"), "{dump}");
    assert!(dump.contains("Cipher mode:   \txts-plain64"), "{dump}");
    cryptsetup(
        d,
        &[
            "open",
            "--test-passphrase",
            "--key-file",
            "pw",
            "ours.luks1",
        ],
    )
    .ok();
    assert_eq!(dumped_volume_key(d, "ours.luks1"), vk);
    // LUKS1 and LUKS2 with 512-byte sectors share the payload encryption: compare with cryptsetup's.
    let theirs = cryptsetup_encrypt(
        d,
        "theirs.img",
        "vk.bin",
        "512",
        "512",
        &["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"],
    );
    assert!(read(d.join("ours.luks1"))[2 * MIB..] == read(d.join(theirs))[16 * MIB..18 * MIB]);
}

#[test]
fn cryptsetup_made_luks2_images_open_verify_and_decrypt() {
    require!("cryptsetup");
    let dir = setup(3 * MIB, 5);
    let d = dir.path();
    for (kdf, sector) in [("pbkdf2", "4096"), ("argon2id", "512"), ("argon2i", "4096")] {
        let cost: Vec<&str> = if kdf == "pbkdf2" {
            vec!["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"]
        } else {
            [&["--pbkdf", kdf][..], ARGON].concat()
        };
        let img = cryptsetup_encrypt(d, "cs.img", "", "512", sector, &cost);
        // reencrypt encrypted the source; the last 16 MiB it was given as room were never written.
        std::fs::OpenOptions::new()
            .write(true)
            .open(d.join(&img))
            .unwrap()
            .set_len((16 + 3) * MIB as u64)
            .unwrap();
        let dump = diskseal(d, &["dump", &img]).ok().stdout;
        assert!(
            dump.contains("Version:        2") && dump.contains(&format!("PBKDF:      {kdf}")),
            "{dump}"
        );
        let json: serde_json::Value =
            serde_json::from_str(&diskseal(d, &["dump", "--json", &img]).ok().stdout).unwrap();
        assert_eq!(json["sector_size"], sector.parse::<u64>().unwrap());
        assert_eq!(json["data_offset"], 16 * MIB as u64);
        let v = diskseal(
            d,
            &["verify", "--key-file", "pw", "--against", "src.raw", &img],
        )
        .ok();
        assert!(v.stdout.contains("OK"), "{}", v.stdout);
        diskseal(d, &["decrypt", "-q", "--key-file", "pw", &img, "plain.raw"]).ok();
        let plain = read(d.join("plain.raw"));
        assert!(
            plain == read(d.join("src.raw")),
            "{kdf}: decrypted data differs"
        );
        // The volume key route gives the same.
        let vk = dumped_volume_key(d, &img);
        std::fs::write(d.join("vk.cs"), vk).unwrap();
        diskseal(
            d,
            &[
                "verify",
                "-q",
                "--volume-key-file",
                "vk.cs",
                "--against",
                "src.raw",
                &img,
            ],
        )
        .ok();
        for f in [img.as_str(), "plain.raw"] {
            std::fs::remove_file(d.join(f)).unwrap();
        }
    }
}

#[test]
fn cryptsetup_made_luks1_image_opens_and_decrypts() {
    require!("cryptsetup");
    let dir = setup(2 * MIB, 6);
    let d = dir.path();
    let vk = pattern(64, 11);
    std::fs::write(d.join("vk.bin"), &vk).unwrap();
    // cryptsetup writes the LUKS1 header; LUKS1 offline reencryption needs device-mapper, so the payload
    // is cryptsetup's LUKS2 reencrypt output for the same key (same cipher, 512-byte sectors, IV from 0).
    let img = d.join("cs1.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(4 * MIB as u64)
        .unwrap();
    cryptsetup(
        d,
        &[
            "luksFormat",
            "--batch-mode",
            "--type",
            "luks1",
            "--key-file",
            "pw",
            "--volume-key-file",
            "vk.bin",
            "--key-size",
            "512",
            "--hash",
            "sha1",
            "--pbkdf-force-iterations",
            "1000",
            "cs1.img",
        ],
    )
    .ok();
    let theirs = cryptsetup_encrypt(
        d,
        "cs2.img",
        "vk.bin",
        "512",
        "512",
        &["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"],
    );
    let mut data = read(&img);
    data[2 * MIB..].copy_from_slice(&read(d.join(theirs))[16 * MIB..18 * MIB]);
    std::fs::write(&img, data).unwrap();
    let dump = diskseal(d, &["dump", "cs1.img"]).ok().stdout;
    assert!(
        dump.contains("Version:        1") && dump.contains("Hash spec:      sha1"),
        "{dump}"
    );
    diskseal(
        d,
        &[
            "verify",
            "-q",
            "--key-file",
            "pw",
            "--against",
            "src.raw",
            "cs1.img",
        ],
    )
    .ok();
    diskseal(
        d,
        &["decrypt", "-q", "--key-file", "pw", "cs1.img", "plain.raw"],
    )
    .ok();
    assert!(read(d.join("plain.raw")) == read(d.join("src.raw")));
}

#[test]
fn ibm_classic_luks_passphrase_is_the_base64_dek() {
    require!("cryptsetup");
    use base64::Engine;
    let dir = setup(MIB, 8);
    let d = dir.path();
    diskseal(d, &["keygen", "--bytes", "32", "-o", "dek.bin"]).ok();
    let b64 = base64::engine::general_purpose::STANDARD.encode(read(d.join("dek.bin")));
    std::fs::write(d.join("dek.b64"), &b64).unwrap();
    for (ty, version) in [(None, "1"), (Some("luks2"), "2")] {
        let mut args = vec![
            "encrypt",
            "-q",
            "--profile",
            "ibm-classic-luks",
            "--key-file",
            "dek.bin",
        ];
        if let Some(t) = ty {
            args.extend(["--type", t]);
        }
        args.extend(FAST_PBKDF2);
        args.extend(["src.raw", "ibm.raw"]);
        diskseal(d, &args).ok();
        let dump = cryptsetup(d, &["luksDump", "ibm.raw"]).ok().stdout;
        assert!(
            dump.contains(&format!("Version:       \t{version}")),
            "{dump}"
        );
        cryptsetup(
            d,
            &[
                "open",
                "--test-passphrase",
                "--key-file",
                "dek.b64",
                "ibm.raw",
            ],
        )
        .ok();
        // The raw DEK itself is not the passphrase.
        assert_ne!(
            cryptsetup(
                d,
                &[
                    "open",
                    "--test-passphrase",
                    "--key-file",
                    "dek.bin",
                    "ibm.raw"
                ]
            )
            .code,
            0
        );
        diskseal(
            d,
            &[
                "verify",
                "-q",
                "--profile",
                "ibm-classic-luks",
                "--key-file",
                "dek.bin",
                "--against",
                "src.raw",
                "ibm.raw",
            ],
        )
        .ok();
        std::fs::remove_file(d.join("ibm.raw")).unwrap();
    }
}

#[test]
fn every_hash_cryptsetup_allows_both_ways() {
    require!("cryptsetup");
    let dir = setup(MIB, 12);
    let d = dir.path();
    for (_, hash) in diskseal::crypto::hash::ALL {
        // Ours (LUKS2 keyslot, AF and digest with this hash) opens in cryptsetup.
        encrypt_fast(
            d,
            &["-q", "--hash", hash, "--key-file", "pw"],
            "src.raw",
            "h.luks",
        )
        .ok();
        let dump = cryptsetup(d, &["luksDump", "h.luks"]).ok().stdout;
        assert!(
            dump.contains(&format!("AF hash:    {hash}")),
            "{hash}: {dump}"
        );
        cryptsetup(
            d,
            &["open", "--test-passphrase", "--key-file", "pw", "h.luks"],
        )
        .ok();
        // cryptsetup's LUKS1 with this hash opens in diskseal.
        std::fs::File::create(d.join("h1.luks"))
            .unwrap()
            .set_len(3 * MIB as u64)
            .unwrap();
        cryptsetup(
            d,
            &[
                "luksFormat",
                "--batch-mode",
                "--type",
                "luks1",
                "--hash",
                hash,
                "--pbkdf-force-iterations",
                "1000",
                "--key-file",
                "pw",
                "h1.luks",
            ],
        )
        .ok();
        let r = diskseal(d, &["verify", "--json", "--key-file", "pw", "h1.luks"]).ok();
        assert!(r.stdout.contains("\"keyslot\": 0"), "{hash}: {}", r.stdout);
        std::fs::remove_file(d.join("h.luks")).unwrap();
        std::fs::remove_file(d.join("h1.luks")).unwrap();
    }
}

/// A diskseal LUKS2 image `img` of `src.raw` opened by `pw`, with the fast KDF.
fn small_luks2(d: &Path, img: &str) {
    encrypt_fast(
        d,
        &["-q", "--sector-size", "512", "--key-file", "pw"],
        "src.raw",
        img,
    )
    .ok();
}

#[test]
fn unbound_and_ignored_keyslots_do_not_unlock_as_in_cryptsetup() {
    require!("cryptsetup");
    let dir = setup(MIB, 70);
    let d = dir.path();
    std::fs::write(d.join("pw2"), b"other pass").unwrap();
    small_luks2(d, "u.luks");
    cryptsetup(
        d,
        &[
            "luksAddKey",
            "--batch-mode",
            "--unbound",
            "--key-size",
            "512",
            "--key-file",
            "pw2",
            "--pbkdf",
            "pbkdf2",
            "--pbkdf-force-iterations",
            "1000",
            "u.luks",
            "pw2",
        ],
    )
    .ok();
    // The oracle: the unbound keyslot's passphrase does not open the data.
    let theirs = cryptsetup(
        d,
        &["open", "--test-passphrase", "--key-file", "pw2", "u.luks"],
    );
    assert_ne!(theirs.code, 0, "{}", theirs.stderr);
    let dump = diskseal(d, &["dump", "u.luks"]).ok().stdout;
    assert!(dump.contains("  1: luks2 (unbound)"), "{dump}");
    let json: serde_json::Value =
        serde_json::from_str(&diskseal(d, &["dump", "--json", "u.luks"]).ok().stdout).unwrap();
    assert_eq!(json["unbound_keyslots"], serde_json::json!([1]));
    for cmd in [
        &["decrypt", "--key-file", "pw2", "u.luks", "plain.raw"][..],
        &["verify", "--key-file", "pw2", "u.luks"],
    ] {
        let r = diskseal(d, cmd);
        assert_eq!(r.code, 2, "{cmd:?}: {}{}", r.stdout, r.stderr);
        assert!(
            r.stderr.contains("no keyslot opens") && r.stderr.contains("1 (unbound"),
            "{}",
            r.stderr
        );
        assert!(!d.join("plain.raw").exists());
    }
    diskseal(
        d,
        &[
            "verify",
            "-q",
            "--key-file",
            "pw",
            "--against",
            "src.raw",
            "u.luks",
        ],
    )
    .ok();

    // Priority "ignore": cryptsetup does not try the keyslot unless it is named, nor does diskseal.
    cryptsetup(
        d,
        &[
            "config",
            "--priority",
            "ignore",
            "--key-slot",
            "0",
            "u.luks",
        ],
    )
    .ok();
    let theirs = cryptsetup(
        d,
        &["open", "--test-passphrase", "--key-file", "pw", "u.luks"],
    );
    assert!(
        theirs.code != 0 && theirs.stderr.contains("No usable keyslot"),
        "{}",
        theirs.stderr
    );
    let r = diskseal(d, &["decrypt", "--key-file", "pw", "u.luks", "plain.raw"]);
    assert!(
        r.code == 2
            && r.stderr.contains("no usable keyslot")
            && r.stderr.contains("0 (priority ignore)"),
        "{}",
        r.stderr
    );
    assert!(
        diskseal(d, &["dump", "u.luks"])
            .ok()
            .stdout
            .contains("Priority:   ignored")
    );
}

#[test]
fn reencryption_in_progress_is_shown_and_refused_until_cryptsetup_finishes_it() {
    require!("cryptsetup");
    let dir = setup(MIB, 71);
    let d = dir.path();
    small_luks2(d, "r.luks");
    let kdf = ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"];
    let mut args = vec![
        "reencrypt",
        "--init-only",
        "--batch-mode",
        "--key-file",
        "pw",
    ];
    args.extend(kdf);
    args.push("r.luks");
    cryptsetup(d, &args).ok();
    assert!(
        cryptsetup(d, &["luksDump", "r.luks"])
            .ok()
            .stdout
            .contains("online-reencrypt")
    );
    let dump = diskseal(d, &["dump", "r.luks"]).ok().stdout;
    for want in [
        "Requirements:   online-reencrypt",
        "flags:  backup-previous",
        "flags:  backup-final",
        "reencrypt (unbound)",
        "cryptsetup reencrypt --resume-only",
    ] {
        assert!(dump.contains(want), "{want}: {dump}");
    }
    for cmd in [
        &["decrypt", "--key-file", "pw", "r.luks", "plain.raw"][..],
        &[
            "verify",
            "--key-file",
            "pw",
            "--against",
            "src.raw",
            "r.luks",
        ],
    ] {
        let r = diskseal(d, cmd);
        assert_ne!(r.code, 0, "{cmd:?}: {}", r.stdout);
        assert!(
            r.stderr.contains("r.luks")
                && r.stderr.contains("re-encryption")
                && r.stderr.contains("online-reencrypt")
                && r.stderr.contains("cryptsetup reencrypt --resume-only"),
            "{cmd:?}: {}",
            r.stderr
        );
        assert!(!d.join("plain.raw").exists());
    }
    // Finished by cryptsetup (offline), it verifies again.
    cryptsetup(
        d,
        &[
            "reencrypt",
            "--resume-only",
            "--force-offline-reencrypt",
            "--batch-mode",
            "--key-file",
            "pw",
            "r.luks",
        ],
    )
    .ok();
    diskseal(
        d,
        &[
            "verify",
            "-q",
            "--key-file",
            "pw",
            "--against",
            "src.raw",
            "r.luks",
        ],
    )
    .ok();
}
