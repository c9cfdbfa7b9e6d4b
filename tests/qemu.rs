//! QEMU as the oracle for LUKS1: qemu-img must read our LUKS1 files (`driver=luks`), and diskseal must
//! decrypt what qemu-img writes.

use crate::require;
use crate::util::{FAST_PBKDF2, diskseal, read, run_in, setup};

#[test]
fn qemu_img_reads_our_luks1_output() {
    require!("qemu-img");
    let dir = setup(3 << 20, 21);
    let d = dir.path();
    let mut args = vec!["encrypt", "-q", "--profile", "luks1", "--key-file", "pw"];
    args.extend(FAST_PBKDF2);
    args.extend(["src.raw", "ours.luks"]);
    diskseal(d, &args).ok();
    run_in(d, "qemu-img", &[
        "convert", "--object", "secret,id=sec0,file=pw", "--image-opts", "driver=luks,key-secret=sec0,file.filename=ours.luks",
        "-O", "raw", "back.raw",
    ])
    .ok();
    assert!(read(d.join("back.raw")) == read(d.join("src.raw")), "qemu-img's plaintext differs from the source");
    run_in(d, "qemu-img", &[
        "compare", "--object", "secret,id=sec0,file=pw", "--image-opts", "driver=luks,key-secret=sec0,file.filename=ours.luks",
        "driver=raw,file.filename=src.raw",
    ])
    .ok();
}

#[test]
fn qemu_img_made_luks1_decrypts_with_diskseal() {
    require!("qemu-img");
    let dir = setup(5 << 20, 22);
    let d = dir.path();
    run_in(d, "qemu-img", &[
        "convert", "-f", "raw", "-O", "luks", "--object", "secret,id=sec0,file=pw", "-o", "key-secret=sec0,iter-time=10",
        "src.raw", "qemu.luks",
    ])
    .ok();
    let dump = diskseal(d, &["dump", "qemu.luks"]).ok().stdout;
    assert!(dump.contains("Payload offset: 4040 sectors"), "{dump}");
    diskseal(d, &["verify", "-q", "--key-file", "pw", "--against", "src.raw", "qemu.luks"]).ok();
    diskseal(d, &["decrypt", "-q", "--key-file", "pw", "qemu.luks", "plain.raw"]).ok();
    assert!(read(d.join("plain.raw")) == read(d.join("src.raw")));
}
