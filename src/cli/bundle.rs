//! `diskseal bundle` (and `encrypt --bundle`): the air-gap hand-off directory for the connected host.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use serde_json::json;
use zeroize::Zeroizing;

use diskseal::bundle::{self, BundleOptions};
use diskseal::profile::Profile;
use diskseal::{Error, Result};

use super::report::Out;
use super::{keys, with_progress};

pub(super) const EXAMPLES: &str = "\
Examples:
  # On the connected host, once: make the agent's identity, print its recipient
  diskseal-agent init
  # On the workstation: encrypt, then bundle the image with its key sealed to
  # that recipient
  diskseal encrypt --key-file pass.txt disk.raw disk.luks
  diskseal bundle --recipient age1... --key-file pass.txt \\
      disk.luks /media/usb/disk-bundle
  # The same in one step
  diskseal encrypt --key-file pass.txt --recipient age1... \\
      --bundle /media/usb/disk-bundle disk.raw disk.luks";

#[derive(Debug, Args)]
pub(super) struct BundleArgs {
    /// The agent's age X25519 recipient (public; `diskseal-agent init` prints it).
    #[arg(long, value_name = "AGE1...")]
    recipient: String,
    /// The key file given to `diskseal encrypt` ("-" reads stdin).
    #[arg(long, value_name = "FILE")]
    key_file: PathBuf,
    /// Drop one trailing newline from the key file.
    #[arg(long)]
    strip_newline: bool,
    /// How the key file was used: luks2/luks1/ibm-vpc (passphrase), ibm-classic-luks or ibm-classic-vhd
    /// (raw DEK). Default: ibm-classic-vhd when the image is a vhd-util encrypted VHD, luks2 otherwise.
    #[arg(long, value_enum, hide_possible_values = true, value_name = "PROFILE")]
    profile: Option<Profile>,
    /// Replace DIR if it exists.
    #[arg(long)]
    force: bool,
    /// Worker threads (default: all cores).
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// Also record the SHA-256 of the whole plaintext disk in the manifest (reads every byte of the
    /// virtual size, the unallocated zeros too; the dm-verity root hash costs only what holds data).
    #[arg(long)]
    plaintext_sha256: bool,
    /// The encrypted image (`diskseal encrypt` output).
    image: PathBuf,
    /// The bundle directory to create.
    dir: PathBuf,
}

/// Shared by `bundle` and `encrypt --bundle`.
pub(super) struct Request<'a> {
    pub(super) image: &'a Path,
    pub(super) key: Zeroizing<Vec<u8>>,
    pub(super) dir: &'a Path,
    pub(super) opts: BundleOptions,
    pub(super) threads: Option<usize>,
}

pub(super) fn run(a: &BundleArgs, out: &Out) -> Result<ExitCode> {
    let profile = super::profile_for(a.profile, &a.image)?;
    bundle::parse_recipient(&a.recipient)?;
    let key = keys::read_key_file(&a.key_file, a.strip_newline, out)?;
    let opts = BundleOptions {
        profile,
        recipient: a.recipient.clone(),
        force: a.force,
        source: None,
        plaintext_sha256: a.plaintext_sha256,
    };
    let rep = build(
        Request {
            image: &a.image,
            key,
            dir: &a.dir,
            opts,
            threads: a.threads,
        },
        out,
    )?;
    if out.json {
        out.print_json(&json!({"command": "bundle", "dir": rep.dir, "manifest": rep.manifest}));
    } else {
        summary(&rep, out);
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes the bundle.
pub(super) fn build(r: Request<'_>, out: &Out) -> Result<bundle::BundleReport> {
    if r.image.starts_with(r.dir) {
        return Err(Error::invalid("the image is inside the bundle directory").with_path(r.image));
    }
    with_progress(out, "bundling", r.threads, |run| {
        bundle::create(r.image, &r.key, r.dir, &r.opts, run)
    })
}

/// The human summary line.
pub(super) fn summary(rep: &bundle::BundleReport, out: &Out) {
    let m = &rep.manifest;
    {
        out.summary(&format!(
            "{}: bundle with {} ({} {}, sha256 {}), {} and {} sealed to {}",
            rep.dir.display(),
            m.image.file,
            m.image.format.to_uppercase(),
            m.luks
                .as_ref()
                .map(|l| l.uuid.as_str())
                .or(m.vhd_util.as_ref().map(|v| v.uuid.as_str()))
                .unwrap_or("?"),
            m.image.sha256,
            bundle::MANIFEST,
            bundle::SEALED_KEY,
            m.key.recipient
        ));
    }
}
