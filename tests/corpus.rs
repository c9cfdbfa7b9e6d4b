//! An invalid-header corpus in the spirit of cryptsetup's `tests/luks2-validation-test`: mutated LUKS2
//! headers that diskseal must accept or reject exactly as cryptsetup 2.6 does (`cryptsetup luksDump` is the
//! oracle), and when rejecting, name what is wrong.

use std::path::Path;

use serde_json::{Value, json};

use crate::require;
use crate::util::{diskseal, edit_luks2_json, encrypt_fast, read, run_in, setup};

type Mutation = (&'static str, fn(&Path));

fn json_edit(p: &Path, f: fn(&mut Value)) {
    edit_luks2_json(p, 2, f);
}

fn bytes_edit(p: &Path, f: impl Fn(&mut Vec<u8>)) {
    let mut b = read(p);
    f(&mut b);
    std::fs::write(p, b).unwrap();
}

fn mutations() -> Vec<Mutation> {
    vec![
        ("valid", |_| {}),
        ("primary-checksum", |p| bytes_edit(p, |b| b[4096 + 3] ^= 1)),
        ("secondary-checksum", |p| {
            bytes_edit(p, |b| b[16384 + 4096 + 3] ^= 1)
        }),
        ("both-checksums", |p| {
            bytes_edit(p, |b| {
                b[4096 + 3] ^= 1;
                b[16384 + 4096 + 3] ^= 1;
            })
        }),
        ("seqid-mismatch", |p| {
            bytes_edit(p, |b| b[16384 + 23] = 7);
            edit_luks2_json(p, 1, |_| {});
        }),
        ("hdr-size-20480", |p| {
            bytes_edit(p, |b| {
                b[8..16].copy_from_slice(&20480u64.to_be_bytes());
                b[16384 + 8..16384 + 16].copy_from_slice(&20480u64.to_be_bytes());
            })
        }),
        ("overlapping-keyslots", |p| {
            json_edit(p, |v| {
                let mut k1 = v["keyslots"]["0"].clone();
                k1["area"]["offset"] = json!("36864");
                v["keyslots"]["1"] = k1;
                v["digests"]["0"]["keyslots"] = json!(["0", "1"]);
            })
        }),
        ("area-beyond-keyslots", |p| {
            json_edit(p, |v| {
                v["keyslots"]["0"]["area"]["offset"] = json!("16777216")
            })
        }),
        ("area-unaligned-size-zero", |p| {
            json_edit(p, |v| v["keyslots"]["0"]["area"]["size"] = json!("0"))
        }),
        ("key-size-string", |p| {
            json_edit(p, |v| v["keyslots"]["0"]["key_size"] = json!("64"))
        }),
        ("segment-offset-number", |p| {
            json_edit(p, |v| v["segments"]["0"]["offset"] = json!(16777216))
        }),
        ("segment-offset-unaligned", |p| {
            json_edit(p, |v| v["segments"]["0"]["offset"] = json!("16777217"))
        }),
        ("segment-size-zero", |p| {
            json_edit(p, |v| v["segments"]["0"]["size"] = json!("0"))
        }),
        ("segment-sector-3000", |p| {
            json_edit(p, |v| v["segments"]["0"]["sector_size"] = json!(3000))
        }),
        ("segment-into-metadata", |p| {
            json_edit(p, |v| v["segments"]["0"]["offset"] = json!("32768"))
        }),
        ("segment-gap-in-ids", |p| {
            json_edit(p, |v| {
                let s = v["segments"]["0"].clone();
                v["segments"] = json!({"1": s});
                v["digests"]["0"]["segments"] = json!(["1"]);
            })
        }),
        ("uint64-overflow", |p| {
            json_edit(p, |v| {
                v["segments"]["0"]["iv_tweak"] = json!("18446744073709551616")
            })
        }),
        ("missing-tokens", |p| {
            json_edit(p, |v| {
                v.as_object_mut().unwrap().remove("tokens");
            })
        }),
        ("missing-config", |p| {
            json_edit(p, |v| {
                v.as_object_mut().unwrap().remove("config");
            })
        }),
        ("missing-digests", |p| {
            json_edit(p, |v| {
                v.as_object_mut().unwrap().remove("digests");
            })
        }),
        ("segment-without-digest", |p| {
            json_edit(p, |v| v["digests"]["0"]["segments"] = json!([]))
        }),
        ("digest-missing-keyslot", |p| {
            json_edit(p, |v| v["digests"]["0"]["keyslots"] = json!(["5"]))
        }),
        ("keyslot-two-digests", |p| {
            json_edit(p, |v| {
                v["digests"]["1"] = v["digests"]["0"].clone();
            })
        }),
        ("pbkdf2-leftover-params", |p| {
            json_edit(p, |v| v["keyslots"]["0"]["kdf"]["time"] = json!(4))
        }),
        ("json-size-wrong", |p| {
            json_edit(p, |v| v["config"]["json_size"] = json!("28672"))
        }),
        ("keyslots-size-unaligned", |p| {
            json_edit(p, |v| v["config"]["keyslots_size"] = json!("16744447"))
        }),
        ("keyslots-size-too-big", |p| {
            json_edit(p, |v| v["config"]["keyslots_size"] = json!("268435456"))
        }),
        ("flags-not-array", |p| {
            json_edit(p, |v| v["config"]["flags"] = json!("allow-discards"))
        }),
        ("token-bad-keyslot", |p| {
            json_edit(p, |v| {
                v["tokens"] = json!({"0": {"type": "x", "keyslots": ["9"]}})
            })
        }),
        ("object-key-not-number", |p| {
            json_edit(p, |v| {
                let k = v["keyslots"]["0"].clone();
                v["keyslots"] = json!({"a": k});
            })
        }),
        ("unknown-requirement", |p| {
            json_edit(p, |v| {
                v["config"]["requirements"] = json!({"mandatory": ["future-feature"]});
            })
        }),
        ("json-not-terminated", |p| {
            bytes_edit(p, |b| {
                b[4096..16384].fill(b' ');
                b[4096] = b'{';
            })
        }),
        ("junk-after-json", |p| {
            bytes_edit(p, |b| {
                b[16383] = b'x';
                b[16384 + 16383] = b'x';
            })
        }),
        ("magic-only", |p| bytes_edit(p, |b| b[6..4096].fill(0))),
    ]
}

#[test]
fn mutated_luks2_headers_are_judged_like_cryptsetup() {
    require!("cryptsetup");
    let dir = setup(1 << 20, 60);
    let d = dir.path();
    encrypt_fast(
        d,
        &["-q", "--sector-size", "512", "--key-file", "pw"],
        "src.raw",
        "good.luks",
    )
    .ok();
    let mut disagreements = Vec::new();
    let list = mutations();
    for (name, mutate) in &list {
        let f = format!("{name}.luks");
        std::fs::copy(d.join("good.luks"), d.join(&f)).unwrap();
        mutate(&d.join(&f));
        let theirs = run_in(d, "cryptsetup", &["luksDump", &f]).code == 0;
        let ours = diskseal(d, &["dump", &f]);
        assert!(!ours.stderr.contains("panicked"), "{name}: {}", ours.stderr);
        if theirs != (ours.code == 0) {
            disagreements.push(format!(
                "{name}: cryptsetup {}, diskseal {} {}",
                theirs,
                ours.code == 0,
                ours.stderr.trim()
            ));
        }
        if ours.code != 0 {
            assert!(
                ours.stderr.contains(&f),
                "{name}: the error names the file: {}",
                ours.stderr
            );
        }
    }
    assert!(
        disagreements.is_empty(),
        "{} of {} cases differ:\n{}",
        disagreements.len(),
        list.len(),
        disagreements.join("\n")
    );
}
