//! The command line: clap definitions ("low args"), their translation into the library's options
//! ("high args"), key input, progress display and output. Everything user-facing lives here.

mod bundle;
mod keys;
mod report;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use clap::{Args, Parser, Subcommand};
use serde_json::json;
use zeroize::Zeroizing;

use diskseal::crypto::hash::Hash;
use diskseal::image::ImageFormat;
use diskseal::image::qcow2::writer::DEFAULT_CLUSTER_BITS;
use diskseal::luks::kdf::{Kdf, KdfCost, KdfType};
use diskseal::luks::{self, FormatOptions, LuksVersion};
use diskseal::ops::{self, Container, EncryptOptions, Encryption, Run, Unlock};
use diskseal::pipeline::Progress;
use diskseal::profile::Profile;
use diskseal::{Error, Result};

use report::Out;

static CANCEL: AtomicBool = AtomicBool::new(false);

const EXAMPLES: &str = "\
Examples:
  # LUKS2 (argon2id keyslot), the passphrase read from a file, used verbatim:
  diskseal encrypt --key-file pass.txt disk.raw disk.luks
  # LUKS1 for QEMU's driver=luks, with a fixed KDF cost:
  diskseal encrypt --profile luks1 --pbkdf-force-iterations 100000 \\
      --key-file pass.txt disk.raw disk.luks1
  # IBM classic LUKS: the key file is the raw DEK, the passphrase its base64:
  diskseal keygen --bytes 32 -o dek.bin
  diskseal encrypt --profile ibm-classic-luks --key-file dek.bin \\
      disk.raw disk-enc.raw
  # IBM classic encrypted VHD, as `vhd-util copy -k` makes it (key file:
  # the raw 32/64-byte DEK):
  diskseal encrypt --profile ibm-classic-vhd --key-file dek.bin \\
      disk.qcow2 disk.vhd
  diskseal keyhash disk.vhd
  # Check the result against its source, then look at the header:
  diskseal verify --key-file pass.txt --against disk.raw disk.luks
  diskseal dump disk.luks

Exit status: 0 success, 1 verification failed, 2 error.";

/// Encrypt virtual-machine disk images into LUKS containers, offline.
#[derive(Debug, Parser)]
#[command(name = "diskseal", version, about, after_help = EXAMPLES, propagate_version = true)]
pub(crate) struct Cli {
    #[command(subcommand)]
    command: Command,
    /// No progress bar and no summary on success.
    #[arg(short, long, global = true, help_heading = "Global options")]
    quiet: bool,
    /// Print the result as JSON on stdout.
    #[arg(long, global = true, help_heading = "Global options")]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Encrypt a disk image into a new LUKS2/LUKS1 file.
    #[command(after_help = EXAMPLES)]
    Encrypt(Box<EncryptArgs>),
    /// Decrypt an encrypted image (LUKS file, qcow2 with LUKS, or vhd-util encrypted VHD) back into a raw
    /// image.
    Decrypt(DecryptArgs),
    /// Unlock a LUKS file, check every structure and decrypt the whole payload, printing its dm-verity root
    /// hash; with --against, compare it with a source image instead (exit 1 on mismatch).
    Verify(VerifyArgs),
    /// Show a LUKS header (LUKS file or qcow2 with QEMU-native LUKS), like `cryptsetup luksDump`, or the
    /// batmap and key hash of a vhd-util encrypted VHD.
    Dump(DumpArgs),
    /// Make a random data-encryption key file (mode 0600).
    Keygen(KeygenArgs),
    /// Make the air-gap hand-off bundle: the image, manifest.json and the key sealed with age (dek.age).
    #[command(after_help = bundle::EXAMPLES)]
    Bundle(bundle::BundleArgs),
    /// Describe a disk image (format, sizes, allocation, backing chain, encryption), laid out like
    /// `qemu-img info`.
    #[command(
        after_help = "With --json: the whole description as JSON (qemu-img's key names), with the LUKS2 metadata."
    )]
    Info(InfoArgs),
    /// The vhd-util key hash: of an encrypted VHD ("nonce hash", or "none", like `vhd-util key -p -n IMG`),
    /// of a raw DEK file (the hash, like `vhd-util key -C -k KEY`), or both: then exit 1 unless the key
    /// matches the image.
    Keyhash(KeyhashArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(CompletionsArgs),
    /// Write the man pages (diskseal.1 and one per command) into a directory.
    Man(ManArgs),
}

#[derive(Debug, Args)]
struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
struct ManArgs {
    /// Directory to write the pages into (created if missing).
    dir: PathBuf,
}

#[derive(Debug, Args)]
struct KeyhashArgs {
    /// The raw DEK (32 or 64 bytes).
    #[arg(long, value_name = "FILE")]
    key_file: Option<PathBuf>,
    /// A vhd-util / ibm-classic-vhd encrypted VHD.
    image: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct InfoArgs {
    /// Force the image format (default: detected).
    #[arg(short = 'f', long = "format", value_name = "FMT")]
    input_format: Option<String>,
    /// With an OVA: describe disk N (1-based, as listed) instead of listing the disks.
    #[arg(long, value_name = "N")]
    disk: Option<u16>,
    /// The image.
    src: PathBuf,
}

#[derive(Debug, Args)]
struct KeyArgs {
    /// Passphrase file, used verbatim ("-" reads stdin). With --profile ibm-classic-luks or
    /// ibm-classic-vhd: the raw DEK.
    /// Without it, the passphrase is asked for on a terminal.
    #[arg(long, value_name = "FILE")]
    key_file: Option<PathBuf>,
    /// Drop one trailing newline from the key file.
    #[arg(long)]
    strip_newline: bool,
    /// Volume (master) key file: raw bytes, 32 or 64.
    #[arg(long, value_name = "FILE")]
    volume_key_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct EncryptArgs {
    /// Output profile: luks2, luks1, ibm-classic-luks, ibm-vpc or ibm-classic-vhd (a dynamic VHD as
    /// `vhd-util copy -k` writes it; the key file is the raw 32/64-byte DEK).
    #[arg(long, value_enum, hide_possible_values = true, default_value_t = Profile::Luks2, value_name = "PROFILE")]
    profile: Profile,
    /// Input format (default: detected; raw): raw, vpc (vhd), qcow2, vmdk, vhdx or ova.
    #[arg(short = 'f', long = "format", value_name = "FMT")]
    input_format: Option<String>,
    /// With an OVA input: encrypt disk N (1-based, as `diskseal info` lists them); needed when the OVA
    /// holds several disks.
    #[arg(long, value_name = "N")]
    disk: Option<u16>,
    /// Follow this backing file although the image names it by an absolute path or it lies outside
    /// the folder of the image that names it (repeatable). By default such backing files are
    /// refused: a hostile image could name any file, and its content would be encrypted as the disk.
    #[arg(long, value_name = "PATH")]
    allow_backing: Vec<PathBuf>,
    /// Follow every backing file, wherever it lies.
    #[arg(long)]
    trust_backing: bool,
    /// Output container: raw (a LUKS file), vhd (the LUKS file wrapped as a fixed VHD, still opened by
    /// cryptsetup as is) or qcow2 (QEMU-native LUKS1; the ibm-vpc default).
    #[arg(short = 'O', long = "output-format", value_enum, value_name = "FMT")]
    output_format: Option<OutputFormat>,
    /// With -O vhd: round the virtual size up to a whole MiB (Azure-style consumers require it).
    #[arg(long)]
    vhd_align: bool,
    /// Grow the virtual disk to SIZE (e.g. 100G; IBM VPC wants exactly 100 GiB for re-captured images).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    resize: Option<u64>,
    /// Raw LUKS output: leave the source's unallocated and zero runs as holes instead of encrypting zeros.
    /// WARNING: dm-crypt decrypts a hole as random-looking bytes, not zeros; only use this when the guest
    /// never reads blocks it did not write (e.g. a file system that was trimmed).
    #[arg(long)]
    sparse: bool,
    /// LUKS version: luks1 or luks2 (default: the profile's).
    #[arg(
        long = "type",
        value_enum,
        hide_possible_values = true,
        value_name = "TYPE"
    )]
    luks_type: Option<LuksVersion>,
    /// Payload cipher.
    #[arg(long, default_value = "aes-xts-plain64", value_parser = ["aes-xts-plain64"], value_name = "CIPHER")]
    cipher: String,
    /// Volume key size in bits: 256 (AES-128-XTS) or 512 (AES-256-XTS).
    #[arg(long, value_enum, value_name = "BITS")]
    key_size: Option<KeySize>,
    /// Payload sector size: 512 or 4096 (default: 4096 when the image allows it, LUKS2 only).
    #[arg(long, value_name = "BYTES")]
    sector_size: Option<u32>,
    /// Keyslot KDF: argon2id (LUKS2 default), argon2i or pbkdf2.
    #[arg(long, value_enum, hide_possible_values = true, value_name = "KDF")]
    pbkdf: Option<KdfType>,
    /// Target keyslot unlock time in ms.
    #[arg(long, default_value_t = 2000, value_name = "MS")]
    iter_time: u32,
    /// Argon2 memory cost in KiB (default: 1 GiB, at most half the RAM).
    #[arg(long, value_name = "KIB")]
    pbkdf_memory: Option<u32>,
    /// Argon2 lanes (default: CPUs, at most 4).
    #[arg(long, value_name = "N")]
    pbkdf_parallel: Option<u32>,
    /// Skip the KDF benchmark: PBKDF2 iterations or Argon2 time cost.
    #[arg(long, value_name = "N")]
    pbkdf_force_iterations: Option<u32>,
    /// Hash for PBKDF2, the AF splitter and the digest.
    #[arg(long, default_value = "sha256", value_name = "HASH")]
    hash: String,
    /// LUKS2 label.
    #[arg(long, default_value = "", value_name = "LABEL")]
    label: String,
    /// LUKS2 subsystem.
    #[arg(long, default_value = "", value_name = "NAME")]
    subsystem: String,
    /// UUID of the new header (default: random).
    #[arg(long, value_name = "UUID")]
    uuid: Option<String>,
    /// Payload offset in 512-byte sectors (default: 16 MiB for LUKS2, 2 MiB for LUKS1).
    #[arg(long, value_name = "SECTORS")]
    offset: Option<u64>,
    /// LUKS2 metadata size per copy (16k..4m).
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    luks2_metadata_size: Option<u64>,
    /// LUKS2 keyslots area size.
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    luks2_keyslots_size: Option<u64>,
    /// qcow2 output: cluster size, a power of two from 512 to 2M (default 64K, as qemu-img's
    /// `-o cluster_size=`).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    cluster_size: Option<u64>,
    /// Pad an input that is not a whole number of sectors with zeros.
    #[arg(long)]
    pad: bool,
    /// Worker threads (default: all cores).
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// Overwrite DST if it exists (and the --bundle directory).
    #[arg(long)]
    force: bool,
    /// Also write the air-gap hand-off bundle DIR (see `diskseal bundle`); needs --recipient.
    #[arg(long, value_name = "DIR", requires = "recipient")]
    bundle: Option<PathBuf>,
    /// The agent's age recipient for --bundle.
    #[arg(long, value_name = "AGE1...", requires = "bundle")]
    recipient: Option<String>,
    /// Also write the image's manifest to FILE: sizes, sha256 of the file, the plaintext's dm-verity root
    /// hash, LUKS or vhd-util parameters, what a KMS must wrap; no secret. Reads the output back (unlocks
    /// it with --key-file FILE, which it needs).
    #[arg(long, value_name = "FILE")]
    manifest: Option<PathBuf>,
    /// With --bundle or --manifest: also record the SHA-256 of the whole plaintext disk (reads every
    /// byte of the virtual size, the unallocated zeros too).
    #[arg(long)]
    plaintext_sha256: bool,
    #[command(flatten)]
    key: KeyArgs,
    /// Source disk image.
    src: PathBuf,
    /// Encrypted output.
    dst: PathBuf,
}

#[derive(Debug, Args)]
struct DecryptArgs {
    /// How to read the key file: luks2/luks1 (passphrase), ibm-classic-luks (raw DEK) or ibm-classic-vhd
    /// (raw DEK, the input is a vhd-util encrypted VHD). Default: ibm-classic-vhd when the input is a
    /// vhd-util encrypted VHD, luks2 (the key file is the passphrase) otherwise.
    #[arg(long, value_enum, hide_possible_values = true, value_name = "PROFILE")]
    profile: Option<Profile>,
    /// Output format: raw, or qcow2 (plain, sparse: only non-zero clusters are stored).
    #[arg(short = 'O', long = "output-format", value_enum, default_value_t = PlainFormat::Raw, value_name = "FMT")]
    output_format: PlainFormat,
    /// With -O qcow2: cluster size, a power of two from 512 to 2M (default 64K, as qemu-img's
    /// `-o cluster_size=`).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    cluster_size: Option<u64>,
    /// Worker threads (default: all cores).
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// Overwrite DST if it exists.
    #[arg(long)]
    force: bool,
    /// Permissions of the plaintext output, in octal (default 0600: the decrypted disk is readable by
    /// its owner only).
    #[arg(long, value_name = "OCTAL", value_parser = parse_mode)]
    mode: Option<u32>,
    #[command(flatten)]
    key: KeyArgs,
    /// Encrypted image: LUKS file, qcow2 with LUKS, or vhd-util encrypted VHD.
    src: PathBuf,
    /// Plain output image.
    dst: PathBuf,
}

#[derive(Debug, Args)]
struct VerifyArgs {
    /// How to read the key file: luks2/luks1 (passphrase), ibm-classic-luks (raw DEK) or ibm-classic-vhd
    /// (raw DEK, the input is a vhd-util encrypted VHD). Default: ibm-classic-vhd when the input is a
    /// vhd-util encrypted VHD, luks2 (the key file is the passphrase) otherwise.
    #[arg(long, value_enum, hide_possible_values = true, value_name = "PROFILE")]
    profile: Option<Profile>,
    /// Source image the plaintext must equal.
    #[arg(long, value_name = "SRC")]
    against: Option<PathBuf>,
    /// Format of the --against image (default: detected).
    #[arg(short = 'f', long = "format", value_name = "FMT")]
    input_format: Option<String>,
    /// With an OVA as --against: compare with its disk N (1-based, as `diskseal info` lists them).
    #[arg(long, value_name = "N")]
    disk: Option<u16>,
    /// Worker threads (default: all cores).
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// Also compute the SHA-256 of the whole plaintext disk (reads every byte of the virtual size, the
    /// unallocated zeros too; the dm-verity root hash costs only what holds data).
    #[arg(long)]
    plaintext_sha256: bool,
    /// With --against, also compute the plaintext's dm-verity root hash (always done without it; a
    /// SHA-256 of every 4 KiB block that holds data, about 0.5 s of CPU per GiB).
    #[arg(long)]
    root_hash: bool,
    /// The salt of the dm-verity root hash, hex (default: none, veritysetup's `--salt -`; a manifest
    /// records the one it used). Implies --root-hash.
    #[arg(long, value_name = "HEX")]
    salt: Option<String>,
    #[command(flatten)]
    key: KeyArgs,
    /// Encrypted image: LUKS file, qcow2 with LUKS, or vhd-util encrypted VHD.
    src: PathBuf,
}

#[derive(Debug, Args)]
struct DumpArgs {
    /// Encrypted LUKS file, qcow2 with QEMU-native LUKS, or vhd-util encrypted VHD (batmap and key hash).
    src: PathBuf,
}

#[derive(Debug, Args)]
struct KeygenArgs {
    /// Key length: 32 (AES-128-XTS) or 64 (AES-256-XTS) bytes.
    #[arg(long, default_value_t = 64, value_parser = parse_key_bytes)]
    bytes: usize,
    /// Write a text passphrase instead: 43 base64url characters (256 random bits), no newline, for
    /// `--profile ibm-vpc` (QEMU wants UTF-8) or luks2/luks1.
    #[arg(long, conflicts_with = "bytes")]
    passphrase: bool,
    /// Where to write the key (must not exist).
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    output: PathBuf,
}

/// `encrypt -O`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum OutputFormat {
    Raw,
    Vhd,
    Qcow2,
}

/// `decrypt -O`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum PlainFormat {
    Raw,
    Qcow2,
}

/// `--key-size`, in bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum KeySize {
    #[value(name = "256")]
    Aes128,
    #[value(name = "512")]
    Aes256,
}

impl KeySize {
    fn bits(self) -> usize {
        match self {
            KeySize::Aes128 => 256,
            KeySize::Aes256 => 512,
        }
    }
    fn bytes(self) -> usize {
        self.bits() / 8
    }
}

fn parse_key_bytes(s: &str) -> std::result::Result<usize, String> {
    match s {
        "32" => Ok(32),
        "64" => Ok(64),
        _ => Err("must be 32 or 64".into()),
    }
}

/// Parses "16384", "16k", "4m", "1g" (binary units).
fn parse_mode(s: &str) -> std::result::Result<u32, String> {
    u32::from_str_radix(s, 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("{s:?} is not an octal file mode from 0 to 777 (e.g. 0640)"))
}

fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim().to_ascii_lowercase();
    let (num, mult) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        None => (t.as_str(), 1u64),
        Some((i, _)) => {
            let mult = match &t[i..] {
                "k" | "kib" => 1 << 10,
                "m" | "mib" => 1 << 20,
                "g" | "gib" => 1 << 30,
                "t" | "tib" => 1 << 40,
                "p" | "pib" => 1 << 50,
                other => return Err(format!("unknown size unit {other:?} (use k, m, g, t or p)")),
            };
            (&t[..i], mult)
        }
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("{s:?} is not a size"))
}

/// Checks `--cluster-size` (a power of two from 512 B to 2 MiB) and returns its cluster_bits.
fn cluster_bits(size: Option<u64>) -> Result<Option<u32>> {
    use diskseal::image::qcow2::writer::cluster_bits_of;
    size.map(|s| {
        cluster_bits_of(s).ok_or_else(|| {
            Error::invalid(format!(
                "--cluster-size {s} must be a power of two from 512 to 2M (512 B to 2 MiB)"
            ))
            .hint("e.g. --cluster-size 64K, qemu-img's default")
        })
    })
    .transpose()
}

/// Entry point: parse, run, report.
pub(crate) fn main() -> ExitCode {
    let cli = Cli::parse();
    let out = Out::new(cli.quiet, cli.json);
    ignore_sigxfsz();
    let _ = ctrlc::set_handler(|| {
        if CANCEL.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        // Nothing written yet (e.g. during the key derivation): stop now. Otherwise the workers see
        // CANCEL and the output's temporary file is removed on the way out.
        diskseal::io::exit_if_nothing_written(130);
    });
    match run(&cli, &out) {
        Ok(code) => code,
        Err(e) => {
            out.error(&e);
            ExitCode::from(2)
        }
    }
}

/// A file-size limit (`ulimit -f`) must fail the write with EFBIG, so that the error is reported and the
/// temporary file removed, instead of SIGXFSZ killing the process and leaving it behind.
#[allow(unsafe_code)]
fn ignore_sigxfsz() {
    // SAFETY: setting a signal's disposition to SIG_IGN installs no handler code; it runs first in
    // main, before any thread is started.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
}

fn run(cli: &Cli, out: &Out) -> Result<ExitCode> {
    match &cli.command {
        Command::Encrypt(a) => encrypt(a, out),
        Command::Decrypt(a) => decrypt(a, out),
        Command::Verify(a) => verify(a, out),
        Command::Dump(a) => dump(a, out),
        Command::Keygen(a) => keygen(a, out),
        Command::Completions(a) => {
            use clap::CommandFactory;
            let mut script = Vec::new();
            clap_complete::generate(a.shell, &mut Cli::command(), "diskseal", &mut script);
            report::emit_bytes(&script);
            Ok(ExitCode::SUCCESS)
        }
        Command::Man(a) => man(&a.dir, out),
        Command::Bundle(a) => bundle::run(a, out),
        Command::Info(a) => info(a, out),
        Command::Keyhash(a) => keyhash(a, out),
    }
}

fn input_format(f: &Option<String>) -> Result<Option<ImageFormat>> {
    f.as_deref().map(ImageFormat::parse).transpose()
}

/// `-f` with `--disk N` (which implies an OVA).
fn input_format_disk(f: &Option<String>, disk: Option<u16>) -> Result<Option<ImageFormat>> {
    match (input_format(f)?, disk) {
        (fmt, None) => Ok(fmt),
        (None | Some(ImageFormat::Ova(_)), Some(n)) => Ok(Some(ImageFormat::Ova(Some(n)))),
        (Some(_), Some(_)) => Err(Error::invalid(
            "--disk picks a disk of an OVA: it needs -f ova or no -f",
        )),
    }
}

/// Runs `job` with a progress bar (on a terminal), or a plain progress line on stderr every 10 s
/// (`DISKSEAL_PROGRESS_SECONDS`) when stderr is not a terminal; neither when quiet or JSON.
fn with_progress<T>(
    out: &Out,
    label: &str,
    threads: Option<usize>,
    job: impl FnOnce(&Run<'_>) -> Result<T>,
) -> Result<T> {
    let progress = Progress::new();
    let total = AtomicU64::new(0);
    let run = Run {
        threads,
        cancel: &CANCEL,
        progress: &progress,
        total: &total,
    };
    if !out.show_progress() && !out.show_lines() {
        return job(&run);
    }
    let done = AtomicBool::new(false);
    let every = diskseal::pipeline::progress_interval();
    std::thread::scope(|s| {
        let shown = if out.show_progress() {
            s.spawn(|| report::progress_bar(label, &progress, &total, &done))
        } else {
            s.spawn(|| {
                diskseal::pipeline::progress_lines(
                    label,
                    &progress,
                    &total,
                    &done,
                    every,
                    &mut |l| eprintln!("diskseal: {l}"),
                )
            })
        };
        let r = job(&run);
        done.store(true, Ordering::SeqCst);
        shown.thread().unpark();
        r
    })
}

fn encrypt(a: &EncryptArgs, out: &Out) -> Result<ExitCode> {
    let profile = a.profile;
    let container = container(a)?;
    let mut opts = EncryptOptions::new(container);
    if container == Container::ClassicVhd {
        classic_vhd_flags(a)?;
    } else {
        opts.luks = luks_options(a, a.luks_type.unwrap_or(profile.default_version()))?;
    }
    opts.sector_size = a.sector_size;
    opts.pad = a.pad;
    opts.input_format = input_format_disk(&a.input_format, a.disk)?;
    opts.force = a.force;
    opts.sparse = a.sparse;
    opts.resize = a.resize;
    opts.cluster_bits = cluster_bits(a.cluster_size)?;
    opts.backing = diskseal::image::BackingPolicy {
        trust_all: a.trust_backing,
        allowed: a.allow_backing.clone(),
    };
    opts.check()?;
    let bundle_req = bundle_request(a, profile)?;
    let manifest = manifest_request(a, profile)?;
    let key = encrypt_key(a, out)?;
    let r = with_progress(out, "encrypting", a.threads, |run| {
        ops::encrypt(&a.src, &a.dst, &opts, key, run)
    })?;
    encrypt_finish(a, &r, bundle_req, manifest, out)
}

/// The output container from --profile, -O and --vhd-align.
fn container(a: &EncryptArgs) -> Result<Container> {
    let c = match (a.profile, a.output_format) {
        (Profile::IbmClassicVhd, None | Some(OutputFormat::Vhd)) => Container::ClassicVhd,
        (Profile::IbmClassicVhd, Some(_)) => {
            return Err(Error::invalid(
                "-O does not apply to --profile ibm-classic-vhd",
            ));
        }
        (_, Some(OutputFormat::Qcow2)) | (Profile::IbmVpc, None) => Container::Qcow2Luks,
        (Profile::IbmVpc, Some(_)) => {
            return Err(
                Error::invalid("the ibm-vpc profile writes qcow2").hint("drop -O or use -O qcow2")
            );
        }
        (_, Some(OutputFormat::Vhd)) => Container::Vhd { align: a.vhd_align },
        (_, Some(OutputFormat::Raw) | None) => Container::Raw,
    };
    if a.vhd_align && !matches!(c, Container::Vhd { .. }) {
        return Err(Error::invalid(if c == Container::ClassicVhd {
            "--vhd-align does not apply to --profile ibm-classic-vhd"
        } else {
            "--vhd-align needs -O vhd"
        }));
    }
    Ok(c)
}

/// `--profile ibm-classic-vhd` has no LUKS header: refuses the LUKS-only flags `ops` cannot tell from
/// their defaults, and a missing --key-file (the DEK).
fn classic_vhd_flags(a: &EncryptArgs) -> Result<()> {
    let luks_only = [
        (a.luks_type.is_some(), "--type"),
        (
            a.pbkdf.is_some() || a.pbkdf_force_iterations.is_some(),
            "--pbkdf",
        ),
        (a.offset.is_some(), "--offset"),
        (a.uuid.is_some(), "--uuid"),
        (
            a.key.volume_key_file.is_some(),
            "--volume-key-file (give the DEK with --key-file)",
        ),
    ];
    if let Some((_, flag)) = luks_only.iter().find(|(set, _)| *set) {
        return Err(Error::invalid(format!(
            "{flag} does not apply to --profile ibm-classic-vhd"
        )));
    }
    if a.key.key_file.is_none() {
        return Err(Error::invalid("--profile ibm-classic-vhd needs --key-file with the raw DEK (32 or 64 bytes)")
            .hint("make one with `diskseal keygen --bytes 64 -o dek.bin`, or `echo -n <DEK> | base64 -d > dek.bin`"));
    }
    Ok(())
}

/// The LUKS header options from the flags.
fn luks_options(a: &EncryptArgs, version: LuksVersion) -> Result<FormatOptions> {
    let mut luks = FormatOptions::new(version);
    if let Some(k) = a.pbkdf {
        luks.kdf = k;
    }
    luks.hash = Hash::parse(&a.hash)?;
    let mut cost = KdfCost {
        iter_time_ms: a.iter_time,
        force_iterations: a.pbkdf_force_iterations,
        ..KdfCost::default()
    };
    if let Some(m) = a.pbkdf_memory {
        cost.memory_kib = m;
    }
    if let Some(p) = a.pbkdf_parallel {
        cost.parallel = p;
    }
    luks.cost = cost;
    luks.label = a.label.clone();
    luks.subsystem = a.subsystem.clone();
    luks.uuid = a.uuid.clone();
    luks.data_offset = a
        .offset
        .map(|s| {
            s.checked_mul(512)
                .ok_or_else(|| Error::invalid("--offset is too large"))
        })
        .transpose()?;
    luks.metadata_size = a.luks2_metadata_size;
    luks.keyslots_size = a.luks2_keyslots_size;
    if version == LuksVersion::Luks1
        && (a.luks2_metadata_size.is_some() || a.luks2_keyslots_size.is_some())
    {
        return Err(Error::invalid(
            "--luks2-metadata-size and --luks2-keyslots-size need --type luks2",
        ));
    }
    Ok(luks)
}

/// The key material: the raw DEK (ibm-classic-vhd), or the passphrase and an optional volume key;
/// --key-size must match a given key.
fn encrypt_key(a: &EncryptArgs, out: &Out) -> Result<ops::EncryptKey> {
    let mismatch = |len: usize, what: &str| {
        Error::invalid(format!(
            "--key-size {} does not match the {len}-byte {what}",
            a.key_size.map_or(0, KeySize::bits)
        ))
    };
    if a.profile == Profile::IbmClassicVhd {
        let path = a.key.key_file.as_deref().unwrap_or(Path::new("-"));
        let key = keys::read_dek(path)?;
        if a.key_size.is_some_and(|k| k.bytes() != key.len()) {
            return Err(mismatch(key.len(), "DEK").with_path(path));
        }
        return Ok(ops::EncryptKey::Dek(key));
    }
    let volume_key = a
        .key
        .volume_key_file
        .as_deref()
        .map(keys::read_volume_key)
        .transpose()?;
    if let (Some(k), Some(size)) = (&volume_key, a.key_size)
        && size.bytes() != k.len()
    {
        return Err(mismatch(k.len(), "volume key file"));
    }
    let passphrase = keys::passphrase(&a.key, a.profile, out, Some(&a.dst), true)?;
    Ok(ops::EncryptKey::Luks {
        passphrase,
        volume_key,
    })
}

/// The finish step of `encrypt`: the warnings, the summary (text or JSON), then --bundle and
/// --manifest.
fn encrypt_finish(
    a: &EncryptArgs,
    r: &ops::EncryptReport,
    bundle_req: Option<bundle::Request<'_>>,
    manifest: Option<(PathBuf, Zeroizing<Vec<u8>>)>,
    out: &Out,
) -> Result<ExitCode> {
    let profile = a.profile;
    if profile == Profile::IbmVpc && !(10 << 30..=250 << 30).contains(&r.virtual_size) {
        out.warn(&format!(
            "IBM VPC boot images must be 10 to 250 GiB; this one is {} (use --resize 100G)",
            report::bytes(r.virtual_size)
        ));
    }
    let mut v = json!({
        "command": "encrypt",
        "profile": profile.name(),
        "source": a.src, "output": a.dst,
        "input_format": r.input_format,
        "uuid": r.uuid,
        "key_bits": r.key_bytes * 8,
        "container": r.container.name(),
        "source_size": r.source_size,
        "virtual_size": r.virtual_size,
        "padded_bytes": r.padded,
        "data_bytes_read": r.data_bytes,
        "output_size": r.output_size,
        "seconds": r.elapsed.as_secs_f64(),
        "threads": r.threads,
        "backing_files": r.backing_files,
    });
    if !r.backing_files.is_empty() && !out.json {
        let names: Vec<String> = r
            .backing_files
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        out.always(&format!(
            "{}: read through backing file(s) {}",
            a.src.display(),
            names.join(" <- ")
        ));
    }
    let source = diskseal::bundle::SourceEntry {
        file: a.src.display().to_string(),
        backing_files: r
            .backing_files
            .iter()
            .map(|p| p.display().to_string())
            .collect(),
    };
    let rate = report::rate(r.virtual_size, r.elapsed);
    match &r.encryption {
        Encryption::Luks {
            version,
            data_offset,
            sector_size,
            kdf,
        } => {
            let lowered = argon2_memory_lowered(
                kdf,
                a.pbkdf_memory,
                a.pbkdf_memory.unwrap_or(KdfCost::default().memory_kib),
                a.iter_time,
            );
            let kdf = kdf_text(kdf);
            v["kdf_seconds"] = json!(r.kdf_elapsed.as_secs_f64());
            if let Some(l) = lowered {
                out.info(&format!(
                    "diskseal: note: {}",
                    l["text"].as_str().unwrap_or("")
                ));
                v["argon2_memory_lowered"] = l;
            }
            v["luks_version"] = json!(version.name());
            v["cipher"] = json!(a.cipher);
            v["sector_size"] = json!(sector_size);
            v["data_offset"] = json!(data_offset);
            v["kdf"] = json!(kdf);
            if !out.json {
                if r.padded > 0 {
                    out.warn(&format!(
                        "payload padded with {} zero bytes to a whole sector",
                        r.padded
                    ));
                }
                out.summary(&format!(
                    "{} -> {}: {}{} aes-xts-plain64 {}-bit, sector {sector_size}, {kdf}, UUID {}; key derivation {:.2} s; data {} in {:.2} s ({rate}), {}",
                    a.src.display(),
                    a.dst.display(),
                    if r.container == Container::Qcow2Luks { "qcow2 + " } else { "" },
                    version.name().to_uppercase(),
                    r.key_bytes * 8,
                    r.uuid,
                    r.kdf_elapsed.as_secs_f64(),
                    report::bytes(r.virtual_size),
                    r.elapsed.as_secs_f64(),
                    report::count(r.threads, "thread")
                ));
            }
        }
        Encryption::VhdUtil {
            keyhash,
            allocated_blocks,
            bat_entries,
        } => {
            let cipher = if r.key_bytes == 64 {
                "AES-256-XTS"
            } else {
                "AES-128-XTS"
            };
            let hash = diskseal::image::vhd::batmap::hex(keyhash);
            v["cipher"] = json!(cipher);
            v["keyhash"] = json!({"nonce": "00".repeat(32), "hash": hash});
            v["bat_entries"] = json!(bat_entries);
            v["allocated_blocks"] = json!(allocated_blocks);
            if !out.json {
                if r.padded > 0 {
                    out.warn(&format!(
                        "the virtual size grew from {} to {} bytes: VHD blocks are 2 MiB and vhd-util rounds up the same way",
                        r.virtual_size - r.padded,
                        r.virtual_size
                    ));
                }
                out.summary(&format!(
                    "{} -> {}: dynamic VHD (vhd-util layout), {cipher}, {allocated_blocks} of {bat_entries} blocks allocated, key hash {hash}; {} in {:.2} s ({rate}), {}",
                    a.src.display(),
                    a.dst.display(),
                    report::bytes(r.virtual_size),
                    r.elapsed.as_secs_f64(),
                    report::count(r.threads, "thread")
                ));
            }
        }
    }
    if let Some(mut req) = bundle_req {
        req.opts.source = Some(source.clone());
        let rep = bundle::build(req, out)?;
        if out.json {
            v["bundle"] = json!({"dir": rep.dir, "manifest": rep.manifest});
        } else {
            bundle::summary(&rep, out);
        }
    }
    if let Some((path, key)) = &manifest {
        let m = write_manifest(a, path, key, profile, source, out)?;
        if out.json {
            v["manifest"] = json!({"file": path, "manifest": m});
        } else {
            manifest_summary(path, &m, out);
        }
    }
    if out.json {
        out.print_json(&v);
    }
    Ok(ExitCode::SUCCESS)
}

/// `--bundle DIR --recipient AGE1...`, checked before any work: the recipient parses, DIR is new (or
/// --force), and the key file is read (it is sealed into the bundle).
fn bundle_request(a: &EncryptArgs, profile: Profile) -> Result<Option<bundle::Request<'_>>> {
    let (Some(dir), Some(recipient)) = (&a.bundle, &a.recipient) else {
        return Ok(None);
    };
    let key = key_file_bytes(a, "--bundle", profile)?;
    diskseal::bundle::parse_recipient(recipient)?;
    if !a.force && std::fs::symlink_metadata(dir).is_ok() {
        return Err(Error::invalid("bundle directory already exists")
            .with_path(dir)
            .hint("pass --force to replace it"));
    }
    Ok(Some(bundle::Request {
        image: &a.dst,
        key,
        dir,
        opts: diskseal::bundle::BundleOptions {
            profile,
            recipient: recipient.clone(),
            force: a.force,
            source: None,
            plaintext_sha256: a.plaintext_sha256,
        },
        threads: a.threads,
    }))
}

/// `--manifest FILE`, checked before any work: FILE is new (or --force) and is neither SRC nor DST, and
/// the key file is read (the manifest's plaintext hash comes from unlocking the output with it).
fn manifest_request(
    a: &EncryptArgs,
    profile: Profile,
) -> Result<Option<(PathBuf, Zeroizing<Vec<u8>>)>> {
    let Some(path) = &a.manifest else {
        return Ok(None);
    };
    if [&a.src, &a.dst]
        .iter()
        .any(|p| *p == path || diskseal::io::same_file(p, path))
    {
        return Err(
            Error::invalid("--manifest FILE must be neither the source nor the output")
                .with_path(path),
        );
    }
    if !a.force && std::fs::symlink_metadata(path).is_ok() {
        return Err(Error::invalid("manifest file already exists")
            .with_path(path)
            .hint("pass --force to overwrite it"));
    }
    Ok(Some((
        path.clone(),
        key_file_bytes(a, "--manifest", profile)?,
    )))
}

/// The key file's bytes for `flag` (`--bundle`, `--manifest`), which uses the key again after the
/// encryption and so needs it in a file, not on stdin or from a prompt.
fn key_file_bytes(a: &EncryptArgs, flag: &str, profile: Profile) -> Result<Zeroizing<Vec<u8>>> {
    match &a.key.key_file {
        Some(k) if k.as_os_str() != "-" && profile == Profile::IbmClassicVhd => {
            Ok(Zeroizing::new(keys::read_dek(k)?.expose().to_vec()))
        }
        Some(k) if k.as_os_str() != "-" => {
            keys::read_key_file(k, a.key.strip_newline, &Out::new(true, false))
        }
        _ => Err(Error::invalid(format!(
            "{flag} needs --key-file FILE (not stdin or a prompt)"
        ))),
    }
}

/// Describes the finished output and writes its manifest.
fn write_manifest(
    a: &EncryptArgs,
    path: &Path,
    key: &Zeroizing<Vec<u8>>,
    profile: Profile,
    source: diskseal::bundle::SourceEntry,
    out: &Out,
) -> Result<diskseal::bundle::ImageManifest> {
    let mut m = with_progress(out, "describing", a.threads, |run| {
        diskseal::bundle::describe(&a.dst, key, profile, a.plaintext_sha256, run)
    })?;
    m.source = Some(source);
    diskseal::bundle::write_manifest(path, &m, a.force)?;
    Ok(m)
}

fn manifest_summary(path: &Path, m: &diskseal::bundle::ImageManifest, out: &Out) {
    out.summary(&format!(
        "{}: manifest of {} (sha256 {}; plaintext {})",
        path.display(),
        m.image.file,
        m.image.sha256,
        plaintext_digests(&m.plaintext)
    ));
}

/// "dm-verity root hash R[, sha256 S]" for summaries.
fn plaintext_digests(p: &diskseal::bundle::PlaintextEntry) -> String {
    let mut t = p.dm_verity.as_ref().map_or(String::new(), |v| {
        format!("dm-verity root hash {}", v.root_hash)
    });
    if let Some(s) = &p.sha256 {
        if !t.is_empty() {
            t.push_str(", ");
        }
        t.push_str(&format!("sha256 {s}"));
    }
    t
}

fn keyhash(a: &KeyhashArgs, out: &Out) -> Result<ExitCode> {
    use diskseal::image::vhd::batmap::{KeyHash, hex};
    if a.key_file.is_none() && a.image.is_none() {
        return Err(Error::invalid(
            "give an encrypted VHD, --key-file DEK, or both",
        ));
    }
    let key = a.key_file.as_deref().map(keys::read_dek).transpose()?;
    let stored = match &a.image {
        Some(p) => {
            let (_, b) = diskseal::image::vhd::classic::read_batmap(p)?;
            if b.header.keyhash.cookie != 1 {
                // `vhd-util key -p` prints "none" for a VHD without key hash.
                if out.json {
                    out.print_json(
                        &json!({"command": "keyhash", "image": a.image, "stored": null}),
                    );
                } else {
                    out.always("none");
                }
                return Ok(if key.is_some() {
                    ExitCode::from(1)
                } else {
                    ExitCode::SUCCESS
                });
            }
            Some(b.header.keyhash)
        }
        None => None,
    };
    let computed = key
        .as_ref()
        .map(|k| KeyHash::of_key(k.expose(), stored.as_ref().map_or([0; 32], |s| s.nonce)));
    let matches = match (&stored, &key) {
        (Some(s), Some(k)) => Some(s.matches(k.expose())),
        _ => None,
    };
    if out.json {
        let show = |h: &Option<KeyHash>| {
            h.as_ref()
                .map(|h| json!({"nonce": hex(&h.nonce), "hash": hex(&h.hash)}))
        };
        out.print_json(&json!({"command": "keyhash", "image": a.image, "stored": show(&stored),
            "key_size": key.as_ref().map(|k| k.len()), "computed": show(&computed), "matches": matches}));
    } else {
        if let Some(s) = &stored {
            out.always(&format!("{} {}", hex(&s.nonce), hex(&s.hash)));
        }
        if let (Some(c), Some(k), Some(p)) = (&computed, &key, &a.key_file) {
            // Like `vhd-util key -C -k KEY`: the size on stderr, the hash alone on stdout.
            out.info(&format!(
                "using keyfile {}, Size (bytes) {}",
                p.display(),
                k.len()
            ));
            out.always(&hex(&c.hash));
        }
        match matches {
            Some(true) => out.summary("the key matches the image's key hash"),
            Some(false) => out.always("MISMATCH: the key does not match the image's key hash"),
            None => {}
        }
    }
    Ok(if matches == Some(false) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// When the Argon2 memory used is below what was asked for (`--pbkdf-memory`, else cryptsetup's 1 GiB):
/// by how much and why (capped at half the RAM, or lowered by the benchmark to unlock in about
/// `--iter-time`, as cryptsetup does). JSON with the figures and a sentence under "text".
fn argon2_memory_lowered(
    kdf: &Kdf,
    asked: Option<u32>,
    allowed: u32,
    iter_time_ms: u32,
) -> Option<serde_json::Value> {
    use diskseal::luks::kdf::memory_text;
    let Kdf::Argon2 { memory_kib, .. } = *kdf else {
        return None;
    };
    let requested = asked.unwrap_or(1 << 20);
    if memory_kib >= requested {
        return None;
    }
    let mut why = Vec::new();
    if allowed < requested {
        why.push("the default is capped at half the RAM".to_owned());
    }
    if memory_kib < allowed {
        why.push(format!(
            "the benchmark lowered it to unlock in about --iter-time {iter_time_ms} ms here"
        ));
    }
    let less = 100 - u64::from(memory_kib) * 100 / u64::from(requested);
    let text = format!(
        "Argon2 memory lowered from {} to {} ({less}% less): {}, as cryptsetup does; \
         --pbkdf-memory and --iter-time set it",
        memory_text(requested),
        memory_text(memory_kib),
        why.join("; ")
    );
    Some(json!({"requested_kib": requested, "used_kib": memory_kib, "text": text}))
}

fn kdf_text(k: &Kdf) -> String {
    match k {
        Kdf::Pbkdf2 { hash, iterations } => {
            format!("pbkdf2-{} {iterations} iterations", hash.name())
        }
        Kdf::Argon2 {
            kind,
            time,
            memory_kib,
            parallel,
        } => {
            format!(
                "{} time {time}, memory {memory_kib} KiB, {parallel} lanes",
                kind.name()
            )
        }
    }
}

/// The profile `decrypt`/`verify`/`bundle` read the key file with: the one given, else the one the image
/// shows (a vhd-util key hash means ibm-classic-vhd), else luks2.
fn profile_for(given: Option<Profile>, target: &Path) -> Result<Profile> {
    use diskseal::image::detect::{Detected, detect_path};
    match given {
        Some(p) => Ok(p),
        None if detect_path(target).is_ok_and(|d| d == Detected::VpcEncrypted) => {
            Ok(Profile::IbmClassicVhd)
        }
        None => Ok(Profile::Luks2),
    }
}

/// Adds, to a wrong-key error when no --profile was given and the key file is not text, the hint that
/// the key file may be an ibm-classic-luks raw DEK.
fn hint_profile(e: Error, k: &KeyArgs, given: Option<Profile>) -> Error {
    if e.kind() != diskseal::ErrorKind::WrongKey || given.is_some() {
        return e;
    }
    let binary = k
        .key_file
        .as_deref()
        .filter(|p| p.as_os_str() != "-")
        .and_then(|p| std::fs::read(p).ok())
        .is_some_and(|b| {
            std::str::from_utf8(&b).is_err() || b.iter().any(|&c| c < 0x20 && c != b'\n')
        });
    if binary {
        e.replace_hint("the key file is binary: if it is the raw DEK of an IBM classic image (passphrase = its base64 text), pass --profile ibm-classic-luks")
    } else {
        e
    }
}

fn unlock_how(k: &KeyArgs, given: Option<Profile>, out: &Out, target: &Path) -> Result<Unlock> {
    let profile = profile_for(given, target)?;
    if profile == Profile::IbmClassicVhd {
        let path = k
            .key_file
            .as_deref()
            .or(k.volume_key_file.as_deref())
            .ok_or_else(|| {
                Error::invalid(
                    "--profile ibm-classic-vhd needs --key-file with the raw DEK (32 or 64 bytes)",
                )
            })?;
        return Ok(Unlock::ClassicVhd(keys::read_dek(path)?));
    }
    if let Some(vk) = &k.volume_key_file {
        if k.key_file.is_some() {
            return Err(Error::invalid(
                "give either --key-file or --volume-key-file, not both",
            ));
        }
        return Ok(Unlock::VolumeKey(keys::read_volume_key(vk)?));
    }
    Ok(Unlock::Passphrase(keys::passphrase(
        k,
        profile,
        out,
        Some(target),
        false,
    )?))
}

fn decrypt(a: &DecryptArgs, out: &Out) -> Result<ExitCode> {
    let cluster_bits = cluster_bits(a.cluster_size)?;
    let qcow2 = match (a.output_format, cluster_bits) {
        (PlainFormat::Qcow2, bits) => Some(bits.unwrap_or(DEFAULT_CLUSTER_BITS)),
        (_, Some(_)) => return Err(Error::invalid("--cluster-size needs -O qcow2")),
        (_, None) => None,
    };
    let how = unlock_how(&a.key, a.profile, out, &a.src)?;
    let r = with_progress(out, "decrypting", a.threads, |run| {
        ops::decrypt(&a.src, &a.dst, how, a.force, qcow2, run)
    })
    .map_err(|e| hint_profile(e, &a.key, a.profile))?;
    if let Some(mode) = a.mode {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&a.dst, std::fs::Permissions::from_mode(mode))
            .map_err(|e| Error::io("set permissions on", &a.dst, None, e))?;
    }
    for w in &r.warnings {
        out.warn(w);
    }
    if out.json {
        out.print_json(
            &json!({"command": "decrypt", "source": a.src, "output": a.dst, "keyslot": r.keyslot,
            "payload_size": r.payload_len, "seconds": r.elapsed.as_secs_f64()}),
        );
    } else {
        out.summary(&format!(
            "{} -> {}: {} decrypted in {:.2} s ({})",
            a.src.display(),
            a.dst.display(),
            report::bytes(r.payload_len),
            r.elapsed.as_secs_f64(),
            report::rate(r.payload_len, r.elapsed)
        ));
    }
    Ok(ExitCode::SUCCESS)
}

fn verify(a: &VerifyArgs, out: &Out) -> Result<ExitCode> {
    let how = unlock_how(&a.key, a.profile, out, &a.src)?;
    let fmt = input_format_disk(&a.input_format, a.disk)?;
    let against = a.against.as_deref().map(|p| (p, fmt));
    let digests = ops::Digests {
        verity_salt: match &a.salt {
            Some(h) => Some(parse_hex_salt(h)?),
            None if a.root_hash || a.against.is_none() => Some(Vec::new()),
            None => None,
        },
        sha256: a.plaintext_sha256,
    };
    let r = with_progress(out, "verifying", a.threads, |run| {
        ops::verify(&a.src, how, against, &digests, run)
    })
    .map_err(|e| hint_profile(e, &a.key, a.profile))?;
    for w in &r.warnings {
        out.warn(w);
    }
    if out.json {
        out.print_json(&json!({"command": "verify", "image": a.src, "ok": r.ok(), "encryption": r.kind,
            "keyslot": r.keyslot, "payload_size": r.payload_len, "plaintext_sha256": r.plaintext_sha256,
            "plaintext_dm_verity": r.verity.as_ref().map(|v| json!({"root_hash": v.root_hash,
                "salt": v.salt, "data_block_size": v.data_block_size, "hash_block_size": 4096,
                "hash": "sha256"})),
            "data_bytes": r.data_bytes,
            "against": a.against, "source_size": r.source_size, "first_mismatch": r.mismatch,
            "damage": r.damage}));
    } else if let Some(m) = r.mismatch {
        out.always(&format!(
            "{}: MISMATCH: the decrypted payload differs from {} at byte offset {m:#x} ({m})",
            a.src.display(),
            a.against.as_deref().unwrap_or(Path::new("?")).display()
        ));
    } else if !r.damage.is_empty() {
        let what = match &a.against {
            Some(p) => format!("the payload is identical to {}, but ", p.display()),
            None => String::new(),
        };
        out.always(&format!(
            "{}: DAMAGED: {what}the header is not intact: {}",
            a.src.display(),
            r.damage.join("; ")
        ));
        if r.damage
            .iter()
            .any(|d| d.contains("copy") || d.contains("copies"))
        {
            out.always(
                "hint: `cryptsetup repair FILE` rewrites the bad header copy from the good one",
            );
        }
    } else {
        let what = match &a.against {
            Some(p) => format!("identical to {}", p.display()),
            None => "all structures valid".into(),
        };
        let digests = [
            r.verity
                .as_ref()
                .map(|v| format!("dm-verity root hash {}", v.root_hash)),
            r.plaintext_sha256.as_ref().map(|s| format!("sha256 {s}")),
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>();
        let digests = if digests.is_empty() {
            String::new()
        } else {
            format!("; plaintext {}", digests.join(", "))
        };
        out.summary(&format!(
            "{}: OK, {}, payload {} {what}{digests}",
            a.src.display(),
            r.kind,
            report::bytes(r.payload_len),
        ));
    }
    Ok(if r.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `--salt HEX`: at most 256 bytes, as veritysetup allows ("-" is no salt).
fn parse_hex_salt(h: &str) -> Result<Vec<u8>> {
    let h = h.trim();
    if h == "-" {
        return Ok(Vec::new());
    }
    let bytes: Option<Vec<u8>> = if h.len().is_multiple_of(2) && h.is_ascii() {
        (0..h.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&h[i..i + 2], 16).ok())
            .collect()
    } else {
        None
    };
    match bytes {
        Some(b) if b.len() <= 256 => Ok(b),
        _ => Err(Error::invalid(format!(
            "--salt {h:?} is not a hex salt of at most 256 bytes"
        ))
        .hint("give the salt as veritysetup prints it (or a manifest's plaintext.dm_verity.salt), or - for none")),
    }
}

fn dump(a: &DumpArgs, out: &Out) -> Result<ExitCode> {
    use diskseal::image::detect::{self, Detected};
    let (file, len) = diskseal::io::open_input(&a.src)?;
    let found = detect::detect(&file, len);
    if matches!(found, Detected::Qcow2 | Detected::Qcow2Luks) {
        let q = diskseal::image::qcow2::Qcow2Image::open(
            file,
            &a.src,
            &mut diskseal::image::Chain::default(),
        )?;
        let Some((h, base)) = q.luks_header()? else {
            return Err(Error::invalid("this qcow2 image is not encrypted")
                .with_path(&a.src)
                .hint("see `diskseal info`"));
        };
        let l = luks::Luks::embedded(h, std::fs::metadata(&a.src).map_or(0, |m| m.len()))?;
        if out.json {
            // The payload and file sizes describe a raw LUKS file; inside qcow2 the payload is the
            // qcow2 clusters (see `diskseal info`), so they are left out.
            let mut luks = l.to_json();
            if let Some(m) = luks.as_object_mut() {
                m.remove("payload_size");
                m.remove("file_size");
            }
            out.print_json(
                &json!({"container": "qcow2", "luks_header_offset": base, "luks": luks}),
            );
        } else {
            out.always(&format!(
                "qcow2 image with QEMU-native LUKS; LUKS header at offset {base:#x}"
            ));
            out.always(l.dump_text().trim_end());
        }
        return Ok(ExitCode::SUCCESS);
    }
    match found {
        Detected::Vpc | Detected::VpcEncrypted => return dump_classic_vhd(a, out),
        Detected::Raw | Detected::Luks(_) | Detected::VpcLuks => {}
        other => {
            return Err(Error::format(format!(
                "this is a {}, not an encrypted image",
                other.name()
            ))
            .with_path(&a.src)
            .hint("see `diskseal info`"));
        }
    }
    let l = diskseal::image::luks::open(&file, &a.src)?;
    if out.json {
        out.print_json(&l.to_json());
    } else {
        out.always(l.dump_text().trim_end());
    }
    Ok(ExitCode::SUCCESS)
}

/// `dump` of a vhd-util encrypted (dynamic) VHD: footer facts, the batmap header and the key hash.
fn dump_classic_vhd(a: &DumpArgs, out: &Out) -> Result<ExitCode> {
    use diskseal::image::DiskImage;
    use diskseal::image::vhd::batmap::hex;
    let (img, b) = diskseal::image::vhd::classic::read_batmap(&a.src)?;
    let info = img.info();
    let entries = img.bat().map_or(0, |x| x.len() as u64);
    let d = &info.details;
    if out.json {
        out.print_json(&json!({"container": "vhd", "vhd": d, "virtual_size": info.virtual_size, "batmap": b.to_json(entries)}));
        return Ok(ExitCode::SUCCESS);
    }
    let h = &b.header;
    let set = b.set_blocks(entries);
    let shown: Vec<String> = set.iter().take(32).map(u64::to_string).collect();
    let more = if set.len() > 32 {
        format!(" … ({} in all)", set.len())
    } else {
        String::new()
    };
    let text = format!(
        "VHD (dynamic) with a blktap batmap{}\n\
         creator:         {} {} (host OS {})\n\
         virtual size:    {} bytes (current_size), geometry {}/{}/{}\n\
         blocks:          {} of {} allocated, {} bytes each\n\
         uuid:            {}\n\
         batmap header at {:#x}:\n\
         \tversion:   {}.{}\n\
         \toffset:    {:#x}\n\
         \tsize:      {} sectors\n\
         \tchecksum:  {:#010x} ({})\n\
         \tmarker:    {}\n\
         \tblocks set: {}{more}\n\
         key hash (batmap header + 29):\n\
         \tcookie:    {}{}\n\
         \tnonce:     {}\n\
         \thash:      {}",
        if h.keyhash.cookie == 1 {
            " and a key hash (vhd-util encrypted, aes-xts-plain)"
        } else {
            ""
        },
        d["creator_app"].as_str().unwrap_or("?"),
        d["creator_version"].as_str().unwrap_or("?"),
        diskseal::image::vhd::footer::fourcc(&img.footer().raw.creator_os),
        info.virtual_size,
        d["geometry"]["cylinders"],
        d["geometry"]["heads"],
        d["geometry"]["sectors"],
        d["allocated_blocks"],
        entries,
        d["block_size"],
        d["uuid"].as_str().unwrap_or("?"),
        b.header_at,
        h.version >> 16,
        h.version & 0xffff,
        h.batmap_offset,
        h.batmap_size,
        h.checksum,
        if b.checksum_ok() {
            "ok".to_string()
        } else {
            format!("WRONG, computed {:#010x}", b.computed_checksum)
        },
        h.marker,
        if shown.is_empty() {
            "none".to_string()
        } else {
            shown.join(" ")
        },
        h.keyhash.cookie,
        if h.keyhash.cookie == 1 {
            " (key hash set)"
        } else {
            " (no key hash: not encrypted)"
        },
        hex(&h.keyhash.nonce),
        hex(&h.keyhash.hash),
    );
    out.always(&text);
    Ok(ExitCode::SUCCESS)
}

fn info(a: &InfoArgs, out: &Out) -> Result<ExitCode> {
    let v = ops::info(&a.src, input_format_disk(&a.input_format, a.disk)?)?;
    if out.json {
        out.print_json(&v);
        return Ok(ExitCode::SUCCESS);
    }
    let num = |k: &str| v[k].as_u64().unwrap_or(0);
    let mut format = v["format"].as_str().unwrap_or("?").to_owned();
    if let (Some(sub), Some(holds)) = (v["vpc-subformat"].as_str(), v["holds"].as_str()) {
        format = format!("{format} ({sub}) holding {}", holds.to_uppercase());
    }
    let mut text = format!(
        "image: {}\nfile format: {format}\nvirtual size: {} ({} bytes)\ndisk size: {}\n",
        a.src.display(),
        report::bytes(num("virtual-size")),
        num("virtual-size"),
        report::bytes(num("actual-size")),
    );
    if let Some(c) = v["cluster-size"].as_u64() {
        text += &format!("cluster_size: {c}\n");
    }
    text += &format!(
        "encrypted: {}\n",
        if v["encrypted"] == true { "yes" } else { "no" }
    );
    if let Some(b) = v["backing-filename"].as_str() {
        text += &format!("backing file: {b}\n");
    }
    if let Some(b) = v["backing-filename-format"].as_str() {
        text += &format!("backing file format: {b}\n");
    }
    if let Some(a) = v.get("allocation") {
        text += &format!(
            "allocation: data {}, zero {}, unallocated {}\n",
            report::bytes(a["data"].as_u64().unwrap_or(0)),
            report::bytes(a["zero"].as_u64().unwrap_or(0)),
            report::bytes(a["unallocated"].as_u64().unwrap_or(0))
        );
    }
    if let Some(f) = v.get("format-specific") {
        text += "Format specific information:\n";
        indented(&mut text, f, 1);
    }
    for d in v["disks"].as_array().into_iter().flatten() {
        text += &format!(
            "disk {}: {} ({}), capacity {}, file {} bytes\n",
            d["number"],
            d["file"].as_str().unwrap_or("?"),
            d["disk-id"].as_str().unwrap_or("?"),
            d["capacity"].as_u64().map_or("?".into(), report::bytes),
            d["file-size"]
        );
    }
    for (i, b) in v["backing-chain"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        text += &format!(
            "backing {}: {} ({}, {})\n",
            i + 1,
            b["filename"].as_str().unwrap_or("?"),
            b["format"].as_str().unwrap_or("?"),
            report::bytes(b["virtual-size"].as_u64().unwrap_or(0))
        );
    }
    out.always(text.trim_end());
    Ok(ExitCode::SUCCESS)
}

/// Format-specific data laid out as `qemu-img info` does: one `key: value` a line, nested objects and
/// lists on the following lines indented by four more spaces, list items as `[N]:`, `_` and `-` in keys
/// read as spaces. The raw LUKS2 JSON metadata is left to `--json` and `diskseal dump`.
fn indented(text: &mut String, v: &serde_json::Value, depth: usize) {
    use serde_json::Value;
    let pad = "    ".repeat(depth);
    let entries: Vec<(String, &Value)> = match v {
        Value::Object(m) => m
            .iter()
            .filter(|(k, v)| *k != "metadata" && !v.is_null() && **v != "")
            .map(|(k, v)| (k.replace(['_', '-'], " "), v))
            .collect(),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .map(|(i, v)| (format!("[{i}]"), v))
            .collect(),
        other => {
            text.push_str(&format!("{pad}{other}\n"));
            return;
        }
    };
    for (k, v) in entries {
        match v {
            Value::Object(m) if m.is_empty() => text.push_str(&format!("{pad}{k}: none\n")),
            Value::Array(a) if a.is_empty() => text.push_str(&format!("{pad}{k}: none\n")),
            Value::Object(_) | Value::Array(_) => {
                text.push_str(&format!("{pad}{k}:\n"));
                indented(text, v, depth + 1);
            }
            Value::String(s) => text.push_str(&format!("{pad}{k}: {s}\n")),
            other => text.push_str(&format!("{pad}{k}: {other}\n")),
        }
    }
}

/// Writes diskseal.1 and diskseal-COMMAND.1 into `dir`.
fn man(dir: &Path, out: &Out) -> Result<ExitCode> {
    use clap::CommandFactory;
    std::fs::create_dir_all(dir).map_err(|e| Error::io("create", dir, None, e))?;
    let cmd = Cli::command();
    let mut pages = vec![(dir.join("diskseal.1"), cmd.clone())];
    for sub in cmd.get_subcommands() {
        let name = format!("diskseal-{}", sub.get_name());
        pages.push((dir.join(format!("{name}.1")), sub.clone().name(name)));
    }
    for (path, page) in &pages {
        let mut buf = Vec::new();
        clap_mangen::Man::new(page.clone())
            .render(&mut buf)
            .map_err(|e| Error::io("render man page", path, None, e))?;
        std::fs::write(path, buf).map_err(|e| Error::io("write", path, None, e))?;
    }
    out.summary(&format!(
        "wrote {} man pages into {}",
        pages.len(),
        dir.display()
    ));
    Ok(ExitCode::SUCCESS)
}

fn keygen(a: &KeygenArgs, out: &Out) -> Result<ExitCode> {
    let (bytes, what) = if a.passphrase {
        (keys::write_new_passphrase(&a.output)?, "passphrase")
    } else {
        keys::write_new_key(&a.output, a.bytes)?;
        (a.bytes, "key")
    };
    if out.json {
        out.print_json(
            &json!({"command": "keygen", "output": a.output, "bytes": bytes, "kind": what}),
        );
    } else {
        out.summary(&format!(
            "{}: wrote a random {bytes}-byte {what} (mode 0600)",
            a.output.display(),
        ));
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn verify_cli() {
        Cli::command().debug_assert();
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("16k"), Ok(16384));
        assert_eq!(parse_size("4M"), Ok(4 << 20));
        assert_eq!(parse_size("123"), Ok(123));
        assert_eq!(parse_size("2T"), Ok(2 << 40));
        assert_eq!(parse_size("1p"), Ok(1 << 50));
        assert!(parse_size("1e").is_err());
        assert!(parse_size("16385p").is_err());
        assert!(parse_size("99999999999999999999g").is_err());
    }

    #[test]
    fn every_encrypt_flag_parses() {
        let cli = Cli::try_parse_from([
            "diskseal",
            "encrypt",
            "--profile",
            "luks1",
            "-f",
            "raw",
            "--type",
            "luks2",
            "--key-size",
            "256",
            "--sector-size",
            "4096",
            "--pbkdf",
            "argon2i",
            "--iter-time",
            "10",
            "--pbkdf-memory",
            "1024",
            "--pbkdf-parallel",
            "2",
            "--pbkdf-force-iterations",
            "4",
            "--hash",
            "sha512",
            "--label",
            "l",
            "--subsystem",
            "s",
            "--uuid",
            "fbcb5ed2-b742-4cdd-9753-d1af94f39c9d",
            "--offset",
            "32768",
            "--luks2-metadata-size",
            "16k",
            "--luks2-keyslots-size",
            "1m",
            "--pad",
            "--threads",
            "2",
            "--force",
            "--key-file",
            "k",
            "--strip-newline",
            "--volume-key-file",
            "v",
            "-q",
            "--json",
            "a",
            "b",
        ])
        .unwrap();
        assert!(cli.quiet && cli.json);
        assert!(
            Cli::try_parse_from(["diskseal", "encrypt", "--key-size", "384", "a", "b"]).is_err()
        );
        assert!(Cli::try_parse_from(["diskseal", "keygen", "--bytes", "48", "-o", "x"]).is_err());
    }
}
