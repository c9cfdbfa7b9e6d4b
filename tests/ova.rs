//! OVA inputs (`src/image/ova/`): a tar with an OVF (from `fixtures/ova/template.ovf`), stream-optimized
//! VMDKs made by qemu-img and a `.mf` manifest, built here with `tar`; the disk is read straight out of
//! the archive and must equal `qemu-img convert -O raw` of the VMDK; `--disk N`, `info`, the OVF size and
//! manifest digests, and damaged archives.

use std::path::Path;

use sha2::{Digest, Sha256};

use crate::require;
use crate::util::{diskseal, encrypt_fast, pattern, read, run_in};

const MIB: usize = 1 << 20;

fn template() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/ova/template.ovf"))
        .unwrap()
}

/// Writes `vm.ovf` naming `disks` (file, capacity) with their real sizes (or `size_override`).
fn write_ovf(d: &Path, disks: &[(&str, u64)], size_override: Option<u64>) {
    let mut files = String::new();
    let mut ds = String::new();
    let mut items = String::new();
    for (i, (f, cap)) in disks.iter().enumerate() {
        let size = size_override.unwrap_or_else(|| std::fs::metadata(d.join(f)).unwrap().len());
        files += &format!("    <File ovf:href=\"{f}\" ovf:id=\"file{i}\" ovf:size=\"{size}\"/>\n");
        ds += &format!(
            "    <Disk ovf:capacity=\"{}\" ovf:capacityAllocationUnits=\"byte * 2^20\" ovf:diskId=\"vmdisk{i}\" ovf:fileRef=\"file{i}\" ovf:format=\"http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized\"/>\n",
            cap >> 20
        );
        items += &format!(
            "      <Item>\n        <rasd:AddressOnParent>{i}</rasd:AddressOnParent>\n        <rasd:ElementName>Hard disk {}</rasd:ElementName>\n        <rasd:HostResource>ovf:/disk/vmdisk{i}</rasd:HostResource>\n        <rasd:InstanceID>{}</rasd:InstanceID>\n        <rasd:Parent>3</rasd:Parent>\n        <rasd:ResourceType>17</rasd:ResourceType>\n      </Item>\n",
            i + 1,
            10 + i
        );
    }
    let text = template()
        .replace("@FILES@", files.trim_end())
        .replace("@DISKS@", ds.trim_end())
        .replace("@ITEMS@", items.trim_end());
    std::fs::write(d.join("vm.ovf"), text).unwrap();
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

fn write_manifest(d: &Path, files: &[&str]) {
    let mut m = String::new();
    for f in files {
        m += &format!("SHA256({f})= {}\n", sha256_hex(&read(d.join(f))));
    }
    std::fs::write(d.join("vm.mf"), m).unwrap();
}

fn vmdk_of(d: &Path, raw: &str, vmdk: &str) {
    run_in(
        d,
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "vmdk",
            "-o",
            "subformat=streamOptimized",
            raw,
            vmdk,
        ],
    )
    .ok();
}

#[test]
fn ova_disks_stream_out_of_the_archive_and_are_checked() {
    require!("qemu-img", "tar");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("pw"), b"pw").unwrap();
    let mut a = pattern(5 * MIB, 51);
    a[MIB..2 * MIB].fill(0);
    std::fs::write(d.join("a.raw"), &a).unwrap();
    std::fs::write(d.join("b.raw"), pattern(2 * MIB, 52)).unwrap();
    vmdk_of(d, "a.raw", "disk1.vmdk");
    vmdk_of(d, "b.raw", "disk2.vmdk");
    // One disk, VMware's order (OVF, manifest, disk), ustar.
    write_ovf(d, &[("disk1.vmdk", 5 << 20)], None);
    write_manifest(d, &["vm.ovf", "disk1.vmdk"]);
    run_in(
        d,
        "tar",
        &[
            "--format=ustar",
            "-cf",
            "one.ova",
            "vm.ovf",
            "vm.mf",
            "disk1.vmdk",
        ],
    )
    .ok();
    encrypt_fast(d, &["-q", "--key-file", "pw"], "one.ova", "one.luks").ok();
    diskseal(
        d,
        &[
            "verify",
            "-q",
            "--key-file",
            "pw",
            "--against",
            "a.raw",
            "one.luks",
        ],
    )
    .ok();
    let info = diskseal(d, &["info", "one.ova"]).ok();
    assert!(
        info.stdout.contains("disk1.vmdk") && info.stdout.contains("vmdisk0"),
        "{}",
        info.stdout
    );
    // Two disks, pax format: --disk picks one; without it, the disks are listed.
    write_ovf(d, &[("disk1.vmdk", 5 << 20), ("disk2.vmdk", 2 << 20)], None);
    write_manifest(d, &["vm.ovf", "disk1.vmdk", "disk2.vmdk"]);
    run_in(
        d,
        "tar",
        &[
            "--format=pax",
            "-cf",
            "two.ova",
            "vm.ovf",
            "vm.mf",
            "disk1.vmdk",
            "disk2.vmdk",
        ],
    )
    .ok();
    let r = encrypt_fast(d, &["--key-file", "pw"], "two.ova", "two.luks");
    assert!(
        r.code == 2 && r.stderr.contains("2 disks") && r.stderr.contains("--disk"),
        "{}",
        r.stderr
    );
    encrypt_fast(
        d,
        &[
            "-q",
            "--disk",
            "2",
            "--profile",
            "ibm-vpc",
            "--key-file",
            "pw",
        ],
        "two.ova",
        "two.qcow2",
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
            "b.raw",
            "two.qcow2",
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
            "--disk",
            "2",
            "--against",
            "two.ova",
            "two.qcow2",
        ],
    )
    .ok();
    let j: serde_json::Value =
        serde_json::from_str(&diskseal(d, &["info", "--json", "two.ova"]).ok().stdout).unwrap();
    assert_eq!(j["format"], "ova", "{j}");
    assert_eq!(j["disks"][1]["capacity"], 2 << 20, "{j}");
    // A manifest that does not match.
    std::fs::write(
        d.join("vm.mf"),
        format!("SHA256(disk1.vmdk)= {}\n", "0".repeat(64)),
    )
    .unwrap();
    write_ovf(d, &[("disk1.vmdk", 5 << 20)], None);
    run_in(
        d,
        "tar",
        &["-cf", "badmf.ova", "vm.ovf", "vm.mf", "disk1.vmdk"],
    )
    .ok();
    let r = encrypt_fast(d, &["--key-file", "pw"], "badmf.ova", "x.luks");
    assert!(
        r.code == 2 && r.stderr.contains("does not match the OVA manifest"),
        "{}",
        r.stderr
    );
    // An OVF size that is not the file's.
    write_ovf(d, &[("disk1.vmdk", 5 << 20)], Some(12345));
    run_in(d, "tar", &["-cf", "badsize.ova", "vm.ovf", "disk1.vmdk"]).ok();
    let r = encrypt_fast(d, &["--key-file", "pw"], "badsize.ova", "x.luks");
    assert!(r.code == 2 && r.stderr.contains("12345"), "{}", r.stderr);
    // --disk on something that is not an OVA.
    let r = encrypt_fast(d, &["--disk", "1", "--key-file", "pw"], "a.raw", "x.luks");
    assert!(
        r.code == 2 && r.stderr.contains("not an OVA"),
        "{}",
        r.stderr
    );
    // A tar without an OVF is not taken for a raw disk.
    run_in(d, "tar", &["-cf", "plain.tar", "disk1.vmdk"]).ok();
    let r = encrypt_fast(d, &["--key-file", "pw"], "plain.tar", "x.luks");
    assert!(r.code == 2 && r.stderr.contains("no .ovf"), "{}", r.stderr);
    // A truncated archive: the disk entry runs past the end.
    let one = read(d.join("one.ova"));
    std::fs::write(d.join("cut.ova"), &one[..one.len() - 65536]).unwrap();
    let r = encrypt_fast(d, &["--key-file", "pw"], "cut.ova", "x.luks");
    assert!(
        r.code == 2 && r.stderr.contains("runs past the end of the archive"),
        "{}",
        r.stderr
    );
    assert!(!d.join("x.luks").exists());
}
