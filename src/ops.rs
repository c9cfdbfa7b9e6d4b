//! The operations behind the commands — encrypt, decrypt, verify — as library calls taking validated
//! options ("high args"); the CLI only parses, prompts and prints.
//!
//! [`encrypt`] is one path for every [`Container`]: a prepare step (options, output path, source), the
//! container's writer (LUKS header + payload, qcow2 clusters, or vhd-util blocks) over the
//! [`Pipeline`]'s modes, and a finish step (commit, one [`EncryptReport`]).

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::crypto::IvScheme;
use crate::crypto::iv::{VHD_UTIL_IV, luks_sector, qcow2_sector, vhd_util_sector};
use crate::crypto::keys::{Passphrase, VolumeKey};
use crate::crypto::xts::Xts;
use crate::error::{Error, ErrorKind, Result};
use crate::image::detect::{self, Detected};
use crate::image::luks::LuksPayload;
use crate::image::qcow2::Qcow2Image;
use crate::image::qcow2::writer::{DEFAULT_CLUSTER_BITS, Qcow2Writer, check_cluster_bits};
use crate::image::vhd::batmap::KeyHash;
use crate::image::vhd::classic::EncryptedVhd;
use crate::image::vhd::footer as vhd_footer;
use crate::image::vhd::writer::{self as vhd_writer, ClassicVhdWriter};
use crate::image::{self, DiskImage, Extent, ExtentKind, ImageFormat};
use crate::io::{OutputFile, check_new_output, same_file};
use crate::luks::kdf::Kdf;
use crate::luks::{self, FormatOptions, LuksVersion};
use crate::pipeline::extents::{data_ranges, data_spans, fill, is_zero, next_data};
use crate::pipeline::{DEFAULT_CHUNK, Pipeline};

pub use crate::pipeline::Run;

/// The container the encrypted image is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Container {
    /// A LUKS file (header, then the payload).
    Raw,
    /// A LUKS file wrapped as a fixed VHD (a 512-byte footer after the payload); `align` rounds the
    /// virtual size up to a whole MiB (the payload grows by encrypted zeros).
    Vhd {
        /// Round the VHD size up to 1 MiB.
        align: bool,
    },
    /// QEMU qcow2 v3 with qcow2-native LUKS1 (`encrypt.format=luks`), sparse.
    Qcow2Luks,
    /// A dynamic VHD encrypted exactly as blktap's `vhd-util copy -k` lays it out (`ibm-classic-vhd`): no
    /// LUKS header, the key is the raw DEK ([`EncryptKey::Dek`]), only 2 MiB blocks holding non-zero data
    /// are allocated; the virtual size is rounded up to whole blocks, as vhd-util does.
    ClassicVhd,
}

impl Container {
    /// The name in `--json` output: raw, vhd, qcow2 or classic-vhd.
    pub fn name(self) -> &'static str {
        match self {
            Container::Raw => "raw",
            Container::Vhd { .. } => "vhd",
            Container::Qcow2Luks => "qcow2",
            Container::ClassicVhd => "classic-vhd",
        }
    }
}

/// The key material of [`encrypt`].
#[derive(Debug)]
pub enum EncryptKey {
    /// A LUKS container: the keyslot passphrase, and the volume key (generated, of
    /// [`EncryptOptions::key_bytes`], when `None`).
    Luks {
        /// The keyslot passphrase.
        passphrase: Passphrase,
        /// The volume key to use instead of a random one.
        volume_key: Option<VolumeKey>,
    },
    /// [`Container::ClassicVhd`]: the raw DEK (32 or 64 bytes).
    Dek(VolumeKey),
}

/// Options of [`encrypt`].
#[derive(Debug, Clone)]
pub struct EncryptOptions {
    /// The LUKS header to write (version, KDF, hash, label, offsets...). Its `sector_size` is ignored in
    /// favour of [`EncryptOptions::sector_size`]. Unused for [`Container::ClassicVhd`].
    pub luks: FormatOptions,
    /// Volume key size when one is generated (32 or 64).
    pub key_bytes: usize,
    /// Payload sector size; `None` picks 4096 when the payload allows it (LUKS2), else 512.
    pub sector_size: Option<u32>,
    /// Pad a payload that is not a whole number of sectors with zeros instead of failing.
    pub pad: bool,
    /// Force the input format.
    pub input_format: Option<ImageFormat>,
    /// Replace an existing output.
    pub force: bool,
    /// The output container.
    pub container: Container,
    /// Raw LUKS output: leave unallocated and zero runs of the source as holes instead of encrypting
    /// zeros (the guest then reads garbage there, not zeros).
    pub sparse: bool,
    /// New virtual size (grow only).
    pub resize: Option<u64>,
    /// qcow2 output: cluster size as `cluster_bits` (9..=21, 512 B to 2 MiB); `None` is 64 KiB
    /// ([`DEFAULT_CLUSTER_BITS`]). Refused with other containers.
    pub cluster_bits: Option<u32>,
    /// Which backing files of the source may be followed (default: only those in the folder of the
    /// image that names them).
    pub backing: image::BackingPolicy,
}

impl EncryptOptions {
    /// The defaults for `container`: LUKS2 for raw and VHD output, LUKS1 for qcow2 (the only version
    /// QEMU has), a generated 64-byte key, the source's format and size.
    pub fn new(container: Container) -> EncryptOptions {
        let version = match container {
            Container::Raw | Container::Vhd { .. } => LuksVersion::Luks2,
            Container::Qcow2Luks | Container::ClassicVhd => LuksVersion::Luks1,
        };
        EncryptOptions {
            luks: FormatOptions::new(version),
            key_bytes: 64,
            sector_size: None,
            pad: false,
            input_format: None,
            force: false,
            container,
            sparse: false,
            resize: None,
            cluster_bits: None,
            backing: image::BackingPolicy::default(),
        }
    }

    /// Checks the options on their own (no file is opened): callers run it before asking for a
    /// passphrase; [`encrypt`] runs it first.
    pub fn check(&self) -> Result<()> {
        let classic = self.container == Container::ClassicVhd;
        let not_classic = |flag: &str| {
            Err(Error::invalid(format!(
                "{flag} does not apply to --profile ibm-classic-vhd"
            )))
        };
        if let Some(bits) = self.cluster_bits {
            match self.container {
                // Checked before the key derivation, not after it in the writer.
                Container::Qcow2Luks => check_cluster_bits(bits)?,
                Container::ClassicVhd => return not_classic("--cluster-size"),
                _ => {
                    return Err(Error::invalid(
                        "--cluster-size needs -O qcow2 (or --profile ibm-vpc)",
                    ));
                }
            }
        }
        if self.sparse {
            match self.container {
                Container::Qcow2Luks => {
                    return Err(Error::invalid(
                        "--sparse applies to raw and vhd LUKS output; qcow2 output is always sparse",
                    ));
                }
                Container::ClassicVhd => {
                    return not_classic("--sparse (the output is always sparse)");
                }
                _ => {}
            }
        }
        if classic {
            if self.sector_size.is_some_and(|s| s != 512) {
                return not_classic("--sector-size");
            }
            return Ok(());
        }
        let version = self.luks.version;
        if self.container == Container::Qcow2Luks && version != LuksVersion::Luks1 {
            return Err(
                Error::invalid("qcow2 output holds LUKS1 only (QEMU has no LUKS2)")
                    .hint("drop --type luks2"),
            );
        }
        if let Some(sector) = self.sector_size {
            if version == LuksVersion::Luks1 && sector != 512 {
                return Err(Error::invalid("LUKS1 supports only 512-byte sectors")
                    .hint("use --type luks2 for 4096-byte sectors"));
            }
            if !matches!(sector, 512 | 1024 | 2048 | 4096) {
                return Err(Error::invalid(format!(
                    "--sector-size {sector} must be 512, 1024, 2048 or 4096"
                )));
            }
        }
        Ok(())
    }
}

/// What [`encrypt`] did.
#[derive(Debug, Clone)]
pub struct EncryptReport {
    /// The container written.
    pub container: Container,
    /// The encryption's parameters.
    pub encryption: Encryption,
    /// The LUKS UUID, or the VHD footer's unique id.
    pub uuid: String,
    /// Input format.
    pub input_format: &'static str,
    /// Source virtual size.
    pub source_size: u64,
    /// Virtual size of the encrypted disk (after --resize, --pad, VHD alignment or 2 MiB blocks).
    pub virtual_size: u64,
    /// Zero bytes added beyond the size asked for (the source's, or --resize): --pad, -O vhd
    /// --vhd-align, or vhd-util's whole 2 MiB blocks.
    pub padded: u64,
    /// Key size in bytes (32: AES-128-XTS, 64: AES-256-XTS).
    pub key_bytes: usize,
    /// Output file size.
    pub output_size: u64,
    /// Bytes of the source read and encrypted (holes and zero runs are not read).
    pub data_bytes: u64,
    /// Time spent on the data.
    pub elapsed: Duration,
    /// Time spent choosing and running the keyslot KDF (and the volume-key digest).
    pub kdf_elapsed: Duration,
    /// Worker threads used.
    pub threads: usize,
    /// The backing files the source was read through, top down.
    pub backing_files: Vec<PathBuf>,
}

/// The container-specific part of an [`EncryptReport`].
#[derive(Debug, Clone)]
pub enum Encryption {
    /// A LUKS header (raw, VHD and qcow2 containers).
    Luks {
        /// LUKS version written.
        version: LuksVersion,
        /// Payload offset (raw LUKS) or LUKS header offset (qcow2).
        data_offset: u64,
        /// Payload sector size.
        sector_size: u32,
        /// Keyslot KDF and cost.
        kdf: Kdf,
    },
    /// vhd-util encryption ([`Container::ClassicVhd`]).
    VhdUtil {
        /// SHA-256(zero nonce || key), as stored in the batmap header (`vhd-util key -p`).
        keyhash: [u8; 32],
        /// Blocks allocated (and encrypted) out of the BAT's entries.
        allocated_blocks: u64,
        /// BAT entries.
        bat_entries: u64,
    },
}

/// Refuses to write `dst` when it is `src`, or exists without `force` (before any slow work;
/// [`OutputFile::create`] checks again).
fn check_output(src: &Path, dst: &Path, force: bool) -> Result<()> {
    if same_file(src, dst) {
        return Err(Error::invalid("input and output are the same file")
            .with_path(dst)
            .hint("write the result to a new file"));
    }
    check_new_output(dst, force)
}

/// The checked source of an encryption, common to every container.
struct Source {
    image: Box<dyn DiskImage>,
    extents: Vec<Extent>,
    /// The source's virtual size.
    size: u64,
    /// The size asked for: the source's, or `--resize`.
    want: u64,
}

/// The prepare step of [`encrypt`]: the options, the output path, and the source (readable, not
/// encrypted already, not empty, not larger than `--resize`).
fn prepare(src: &Path, dst: &Path, opts: &EncryptOptions) -> Result<Source> {
    opts.check()?;
    check_output(src, dst, opts.force)?;
    let image = image::open_with(src, opts.input_format, opts.backing.clone())?;
    if image.info().details.get("encrypt").is_some() {
        return Err(Error::invalid("the input is already encrypted; encrypting it again would hide the ciphertext, not the data")
            .with_path(src)
            .hint("decrypt it first (`diskseal decrypt`), or pass -f raw to encrypt the file's bytes as they are"));
    }
    let size = image.virtual_size();
    if size == 0 {
        return Err(Error::invalid("input is empty").with_path(src));
    }
    let want = match opts.resize {
        Some(r) if r < size => {
            return Err(Error::invalid(format!(
                "--resize {r} is smaller than the source's virtual size {size}"
            ))
            .hint("diskseal only grows disks; shrink the file system and the image first"));
        }
        Some(r) => r,
        None => size,
    };
    let extents = image.extents()?;
    Ok(Source {
        image,
        extents,
        size,
        want,
    })
}

/// What a container's writer produced, for the finish step.
struct Written {
    out: OutputFile,
    encryption: Encryption,
    uuid: String,
    virtual_size: u64,
    key_bytes: usize,
    output_size: u64,
    /// When the data phase started.
    started: Instant,
    /// Time spent choosing and running the keyslot KDF (zero without LUKS).
    kdf_elapsed: Duration,
}

/// Encrypts the disk image `src` into a new file `dst`, in any [`Container`]: a LUKS file (raw or
/// wrapped as a fixed VHD), qcow2 with native LUKS, or a vhd-util encrypted VHD.
pub fn encrypt(
    src: &Path,
    dst: &Path,
    opts: &EncryptOptions,
    key: EncryptKey,
    run: &Run<'_>,
) -> Result<EncryptReport> {
    let source = prepare(src, dst, opts)?;
    let pipeline = Pipeline::new(run.threads, DEFAULT_CHUNK)?;
    let data_bytes = AtomicU64::new(0);
    let read = Reader {
        source: &source,
        data_bytes: &data_bytes,
    };
    let w = match (opts.container, key) {
        (Container::ClassicVhd, EncryptKey::Dek(key)) => {
            write_classic_vhd(&read, src, dst, opts, &key, &pipeline, run)?
        }
        (Container::ClassicVhd, EncryptKey::Luks { .. }) => {
            return Err(Error::invalid(
                "ibm-classic-vhd output takes the raw DEK, not a passphrase",
            ));
        }
        (
            _,
            EncryptKey::Luks {
                passphrase,
                volume_key,
            },
        ) => write_luks(
            &read,
            src,
            dst,
            opts,
            &passphrase,
            volume_key,
            &pipeline,
            run,
        )?,
        (_, EncryptKey::Dek(_)) => {
            return Err(Error::invalid(
                "LUKS output takes a passphrase (and optionally a volume key), not a DEK",
            ));
        }
    };
    // The finish step.
    let elapsed = w.started.elapsed();
    w.out.commit(0o644)?;
    Ok(EncryptReport {
        container: opts.container,
        encryption: w.encryption,
        uuid: w.uuid,
        input_format: source.image.format_name(),
        source_size: source.size,
        virtual_size: w.virtual_size,
        padded: w.virtual_size - source.want,
        key_bytes: w.key_bytes,
        output_size: w.output_size,
        data_bytes: data_bytes.into_inner(),
        elapsed,
        kdf_elapsed: w.kdf_elapsed,
        threads: pipeline.threads(),
        backing_files: image::backing_files(source.image.as_ref()),
    })
}

/// Reads the source for the writers, counting the bytes read.
struct Reader<'a> {
    source: &'a Source,
    data_bytes: &'a AtomicU64,
}

impl Reader<'_> {
    /// Fills `buf` with the source at `off` (zeros where it has no data).
    fn fill(&self, buf: &mut [u8], off: u64) -> Result<()> {
        let n = fill(self.source.image.as_ref(), &self.source.extents, buf, off)?;
        self.data_bytes.fetch_add(n, Ordering::Relaxed);
        Ok(())
    }

    /// Like [`Reader::fill`], but reads nothing and returns `false` when no `unit` of the chunk holds
    /// data (the `read` of [`Pipeline::scan_allocating`]).
    fn fill_units(&self, buf: &mut [u8], off: u64, unit: u64) -> Result<bool> {
        if data_ranges(&self.source.extents, off, buf.len() as u64, unit).is_empty() {
            return Ok(false);
        }
        self.fill(buf, off)?;
        Ok(true)
    }
}

/// The LUKS containers: the header, then the payload (raw, VHD) or the qcow2 clusters.
#[allow(clippy::too_many_arguments)]
fn write_luks(
    read: &Reader<'_>,
    src: &Path,
    dst: &Path,
    opts: &EncryptOptions,
    passphrase: &Passphrase,
    volume_key: Option<VolumeKey>,
    pipeline: &Pipeline,
    run: &Run<'_>,
) -> Result<Written> {
    let source = read.source;
    let vsize = source.want;
    let version = opts.luks.version;
    if opts.container == Container::Qcow2Luks && std::str::from_utf8(passphrase.expose()).is_err() {
        return Err(Error::invalid(
            "the passphrase is not valid UTF-8, which QEMU requires for qcow2 encryption",
        )
        .hint("make a text passphrase with `diskseal keygen --passphrase -o pass.txt`"));
    }
    let sector = match opts.sector_size {
        Some(s) => s,
        None if version == LuksVersion::Luks2 && vsize.is_multiple_of(4096) => 4096,
        None => 512,
    };
    let mut payload_len = vsize.div_ceil(u64::from(sector)) * u64::from(sector);
    if payload_len != vsize && !opts.pad {
        return Err(Error::invalid(format!(
            "input size {vsize} is not a multiple of the {sector}-byte sector size"
        ))
        .with_path(src)
        .hint("pass --pad to pad the payload with zeros, or choose a smaller --sector-size"));
    }
    let mut fmt = opts.luks.clone();
    fmt.sector_size = sector;
    if let Container::Vhd { align } = opts.container {
        // The data offset is a whole MiB, so aligning the VHD size aligns the payload.
        if align {
            payload_len = vhd_footer::aligned_size(payload_len);
        }
        if version == LuksVersion::Luks2 {
            // A fixed segment size keeps the footer out of the encrypted device.
            fmt.segment_size = Some(payload_len);
        }
    }
    let key = match volume_key {
        Some(k) => k,
        None => VolumeKey::generate(opts.key_bytes)?,
    };
    // The keyslot KDF takes seconds (by design): the progress display says so, with its cost.
    let kdf_start = Instant::now();
    if fmt.chosen_kdf.is_none() && fmt.cost.force_iterations.is_none() {
        run.progress.set_stage(format!(
            "benchmarking {} for --iter-time {} ms",
            fmt.kdf.name(),
            fmt.cost.iter_time_ms
        ));
    }
    let kdf = fmt.keyslot_kdf(key.len())?;
    run.progress
        .set_stage(format!("deriving key ({})", kdf.summary()));
    fmt.chosen_kdf = Some(kdf);
    let formatted = luks::format(&fmt, &key, passphrase)?;
    let kdf_elapsed = kdf_start.elapsed();
    let out = OutputFile::create(dst, opts.force)?;
    let xts = Xts::new(key.expose())?;
    run.total.store(payload_len, Ordering::Relaxed);
    let started = Instant::now();
    let (data_offset, output_size) = match opts.container {
        Container::Qcow2Luks => {
            let writer = Qcow2Writer::new(
                &out,
                payload_len,
                Some(&formatted.bytes()?),
                opts.cluster_bits.unwrap_or(DEFAULT_CLUSTER_BITS),
            )?;
            let cs = writer.cluster_size();
            let fill = |buf: &mut [u8], at: u64| read.fill_units(buf, at, cs);
            let size = write_qcow2(
                pipeline,
                payload_len,
                &source.extents,
                &fill,
                Some(&xts),
                writer,
                &out,
                run,
            )?;
            // The LUKS header sits at cluster 1.
            (cs, size)
        }
        _ => {
            let data_offset = formatted.data_offset;
            formatted.write(&mut |b, at| out.write_at(b, at))?;
            let unit = sector as usize;
            let sparse = opts.sparse;
            let sector = u64::from(sector);
            // Workers read and encrypt in parallel and write the chunks in order, one at a time (two
            // writers into one ext4 file at once serialise on its inode lock, see `crate::pipeline`).
            pipeline.scan_ordered(
                payload_len,
                run.cancel,
                run.progress,
                |buf, off| {
                    read.fill(buf, off)?;
                    if sparse {
                        for (a, b) in data_ranges(&source.extents, off, buf.len() as u64, sector) {
                            let part = &mut buf[a as usize..b as usize];
                            xts.encrypt(part, unit, luks_sector(0, off + a), IvScheme::Plain64)?;
                        }
                        return Ok(());
                    }
                    xts.encrypt(buf, unit, luks_sector(0, off), IvScheme::Plain64)
                },
                |buf, off| {
                    if sparse {
                        for (a, b) in data_ranges(&source.extents, off, buf.len() as u64, sector) {
                            out.write_at(&buf[a as usize..b as usize], data_offset + off + a)?;
                        }
                        return Ok(());
                    }
                    out.write_at(buf, data_offset + off)
                },
            )?;
            let mut size = data_offset + payload_len;
            if let Container::Vhd { .. } = opts.container {
                vhd_footer::check_fixed_size(size)?;
                let uuid = uuid::Uuid::parse_str(&formatted.uuid)
                    .map(|u| *u.as_bytes())
                    .unwrap_or([0; 16]);
                let since_2000 = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs().saturating_sub(946_684_800))
                    as u32;
                out.write_at(&vhd_footer::fixed_footer(size, uuid, since_2000), size)?;
                size += 512;
            }
            out.set_len(size)?;
            (data_offset, size)
        }
    };
    Ok(Written {
        out,
        encryption: Encryption::Luks {
            version,
            data_offset,
            sector_size: sector,
            kdf: formatted.keyslot_kdf,
        },
        uuid: formatted.uuid,
        virtual_size: payload_len,
        key_bytes: key.len(),
        output_size,
        started,
        kdf_elapsed,
    })
}

/// The qcow2 data path: reads through `read` (see [`Pipeline::scan_allocating`]), allocates non-zero
/// clusters in guest order, encrypts them with `xts` (IV = host offset / 512) when given, writes them,
/// and finishes the metadata. Returns the final file length.
#[allow(clippy::too_many_arguments)]
fn write_qcow2(
    pipeline: &Pipeline,
    len: u64,
    extents: &[Extent],
    read: &(dyn Fn(&mut [u8], u64) -> Result<bool> + Sync),
    xts: Option<&Xts>,
    mut writer: Qcow2Writer,
    out: &OutputFile,
    run: &Run<'_>,
) -> Result<u64> {
    let cs = writer.cluster_size();
    // The pipeline pads the disk's last cluster to a whole one.
    let seal = |data: &mut [u8], _guest: u64, host: u64| -> Result<()> {
        match xts {
            Some(xts) => xts.encrypt(data, 512, qcow2_sector(host), IvScheme::Plain64),
            None => Ok(()),
        }
    };
    let skip = |off: u64| next_data(extents, off, len);
    pipeline.scan_allocating(
        len,
        cs,
        run,
        &skip,
        read,
        &mut |i| writer.allocate(i),
        &seal,
        &mut |data, _, host| out.write_at(data, host),
    )?;
    writer.finish(out)
}

/// [`Container::ClassicVhd`]: `key` is the raw DEK (32 or 64 bytes); only 2 MiB blocks holding non-zero
/// data are allocated, and every sector of them is AES-XTS encrypted with vhd-util's IV
/// ([`vhd_util_sector`]); the key hash SHA-256(zero nonce || key) goes into the batmap header. The
/// virtual size is the requested one rounded up to whole 2 MiB blocks (as vhd-util does); sizes beyond
/// VHD's 2040 GiB are refused.
fn write_classic_vhd(
    read: &Reader<'_>,
    src: &Path,
    dst: &Path,
    opts: &EncryptOptions,
    key: &VolumeKey,
    pipeline: &Pipeline,
    run: &Run<'_>,
) -> Result<Written> {
    let want = read.source.want;
    if want > vhd_footer::MAX_VIRTUAL_SIZE {
        return Err(Error::invalid(format!(
            "the disk is {want} bytes, beyond VHD's 2040 GiB limit ({} bytes): it cannot be an ibm-classic-vhd image",
            vhd_footer::MAX_VIRTUAL_SIZE
        ))
        .with_path(src)
        .hint("shrink the file system and the image first (IBM classic imports at most 100 GB anyway)"));
    }
    let vsize = want.next_multiple_of(vhd_writer::BLOCK_SIZE);
    let xts = Xts::new(key.expose())?;
    let uuid = uuid::Uuid::new_v4();
    let mut writer =
        ClassicVhdWriter::new(vsize, *uuid.as_bytes(), vhd_writer::vhd_timestamp_now())?;
    let footer = *writer.footer();
    let out = OutputFile::create(dst, opts.force)?;
    run.total.store(vsize, Ordering::Relaxed);
    let started = Instant::now();
    let bs = vhd_writer::BLOCK_SIZE;
    let fill = |buf: &mut [u8], at: u64| read.fill_units(buf, at, 512);
    // Every sector of an allocated block is encrypted, then bitmap + data + a stale footer copy are
    // written, as vhd-util does. `allocate` gives the block's bitmap offset; the pipeline hands over
    // the block in parts (each at that offset plus its offset in the block), never two blocks at once
    // (each block is preceded by its bitmap in the file).
    let seal = |data: &mut [u8], guest: u64, _host: u64| -> Result<()> {
        xts.encrypt(data, 512, vhd_util_sector(guest), VHD_UTIL_IV)
    };
    let mut put = |data: &[u8], guest: u64, host: u64| -> Result<()> {
        let within = guest % bs;
        let block = host - within;
        if within == 0 {
            out.write_at(&vhd_writer::FULL_BITMAP, block)?;
        }
        out.write_at(data, block + 512 + within)?;
        if within + data.len() as u64 == bs {
            out.write_at(&footer, block + 512 + bs)?;
        }
        Ok(())
    };
    let extents = &read.source.extents;
    let skip = |off: u64| next_data(extents, off, vsize);
    pipeline.scan_allocating(
        vsize,
        bs,
        run,
        &skip,
        &fill,
        &mut |i| writer.allocate(i),
        &seal,
        &mut put,
    )?;
    let keyhash = KeyHash::of_key(key.expose(), [0; 32]);
    let allocated_blocks = writer.allocated();
    let bat_entries = writer.layout().entries;
    let output_size = writer.finish(&out, &keyhash)?;
    Ok(Written {
        out,
        encryption: Encryption::VhdUtil {
            keyhash: keyhash.hash,
            allocated_blocks,
            bat_entries,
        },
        uuid: uuid.to_string(),
        virtual_size: vsize,
        key_bytes: key.len(),
        output_size,
        started,
        kdf_elapsed: Duration::ZERO,
    })
}

/// How to unlock an existing LUKS file.
#[derive(Debug)]
pub enum Unlock {
    /// Try the keyslots with a passphrase.
    Passphrase(Passphrase),
    /// Use the volume key directly (checked against the digest).
    VolumeKey(VolumeKey),
    /// A vhd-util encrypted dynamic VHD (`ibm-classic-vhd`): the raw DEK, checked against the batmap
    /// key hash before any data is read.
    ClassicVhd(VolumeKey),
}

/// An unlocked encrypted image: its plaintext as a [`DiskImage`].
#[derive(Debug)]
pub struct Unlocked {
    /// The plaintext view.
    pub image: Box<dyn DiskImage>,
    /// What it is: "LUKS1", "LUKS2" or "qcow2 + LUKS1".
    pub kind: &'static str,
    /// The keyslot that opened, when a passphrase was used.
    pub keyslot: Option<u32>,
    /// Header warnings.
    pub warnings: Vec<String>,
    /// Header damage the image opened despite (see [`luks::Luks::damage`]); `verify` fails on it.
    pub damage: Vec<String>,
}

/// Opens an encrypted image (a LUKS file, or a qcow2 with QEMU-native LUKS), checks its header, and
/// recovers (or checks) the volume key.
pub fn unlock(path: &Path, how: Unlock) -> Result<Unlocked> {
    let (file, len) = crate::io::open_input(path)?;
    let found = detect::detect(&file, len);
    let how = match (found, how) {
        // A vhd-util encrypted VHD's key is the raw DEK, whatever the key option was called.
        (Detected::VpcEncrypted, Unlock::VolumeKey(k)) | (_, Unlock::ClassicVhd(k)) => {
            drop(file);
            let img = EncryptedVhd::open(path, &k)?;
            let warnings = img.warnings().to_vec();
            return Ok(Unlocked {
                image: Box::new(img),
                kind: "vhd-util (blktap) VHD",
                keyslot: None,
                warnings,
                damage: Vec::new(),
            });
        }
        (Detected::VpcEncrypted, Unlock::Passphrase(_)) => {
            return Err(Error::invalid(
                "this is a VHD encrypted by vhd-util (ibm-classic-vhd): its key is the raw DEK, not a passphrase",
            )
            .with_path(path)
            .hint("pass the raw DEK with --key-file and --profile ibm-classic-vhd (or leave --profile out)"));
        }
        (_, other) => other,
    };
    if matches!(found, Detected::Qcow2 | Detected::Qcow2Luks) {
        let mut q = Qcow2Image::open(file, path, &mut crate::image::Chain::default())?;
        if q.luks_header()?.is_none() {
            return Err(Error::invalid("this qcow2 image is not encrypted").with_path(path));
        }
        let (key, keyslot) = match how {
            Unlock::Passphrase(p) => {
                let (k, slot) = q.unlock(&p)?;
                (k, Some(slot))
            }
            Unlock::VolumeKey(k) | Unlock::ClassicVhd(k) => (k, None),
        };
        q.set_key(&key)?;
        return Ok(Unlocked {
            image: Box::new(q),
            kind: "qcow2 + LUKS1",
            keyslot,
            warnings: Vec::new(),
            damage: Vec::new(),
        });
    }
    match found {
        Detected::Vpc => {
            return Err(Error::format("this is a VHD that is not encrypted (no LUKS header, no vhd-util key hash)")
                .with_path(path)
                .hint("diskseal opens LUKS files, qcow2 with LUKS (ibm-vpc), LUKS wrapped as a fixed VHD and vhd-util encrypted VHDs"));
        }
        Detected::Raw | Detected::Luks(_) | Detected::VpcLuks => {}
        other => {
            return Err(
                Error::format(format!("this is a {}, not an encrypted image", other.name()))
                    .with_path(path)
                    .hint("diskseal opens LUKS files, qcow2 with LUKS (ibm-vpc), LUKS wrapped as a fixed VHD and vhd-util encrypted VHDs"),
            );
        }
    }
    let luks = crate::image::luks::open(&file, path)?;
    let (key, keyslot) = match how {
        Unlock::Passphrase(p) => {
            let (k, slot) = luks.unlock(&file, path, &p)?;
            (k, Some(slot))
        }
        Unlock::VolumeKey(k) | Unlock::ClassicVhd(k) => {
            luks.check_volume_key(&k).map_err(|e| e.with_path(path))?;
            (k, None)
        }
    };
    let kind = if luks.version() == LuksVersion::Luks1 {
        "LUKS1"
    } else {
        "LUKS2"
    };
    let warnings = luks.warnings.clone();
    let damage = luks.damage.clone();
    Ok(Unlocked {
        image: Box::new(LuksPayload::new(file, path, luks, &key)?),
        kind,
        keyslot,
        warnings,
        damage,
    })
}

/// What [`decrypt`] did.
#[derive(Debug, Clone)]
pub struct DecryptReport {
    /// Plaintext bytes written.
    pub payload_len: u64,
    /// Keyslot used, if a passphrase was given.
    pub keyslot: Option<u32>,
    /// Time spent on the data.
    pub elapsed: Duration,
    /// Header warnings.
    pub warnings: Vec<String>,
}

/// Decrypts the LUKS file `src` into a plain image `dst`: raw, or with `qcow2 = Some(cluster_bits)` a
/// sparse qcow2 with clusters of `1 << cluster_bits` bytes ([`DEFAULT_CLUSTER_BITS`] is QEMU's 64 KiB).
pub fn decrypt(
    src: &Path,
    dst: &Path,
    how: Unlock,
    force: bool,
    qcow2: Option<u32>,
    run: &Run<'_>,
) -> Result<DecryptReport> {
    check_output(src, dst, force)?;
    if let Some(bits) = qcow2 {
        // Before the key derivation, as in `encrypt`.
        check_cluster_bits(bits)?;
    }
    let u = unlock(src, how)?;
    let image = u.image.as_ref();
    let len = image.virtual_size();
    let extents = image.extents()?;
    let out = OutputFile::create(dst, force)?;
    let pipeline = Pipeline::new(run.threads, DEFAULT_CHUNK)?;
    run.total.store(len, std::sync::atomic::Ordering::Relaxed);
    let start = Instant::now();
    if let Some(cluster_bits) = qcow2 {
        let writer = Qcow2Writer::new(&out, len, None, cluster_bits)?;
        let cs = writer.cluster_size();
        let read = |buf: &mut [u8], at: u64| -> Result<bool> {
            if data_ranges(&extents, at, buf.len() as u64, cs).is_empty() {
                return Ok(false);
            }
            fill(image, &extents, buf, at)?;
            Ok(true)
        };
        write_qcow2(&pipeline, len, &extents, &read, None, writer, &out, run)?;
    } else {
        // Zero runs and what the image does not allocate are left as holes of the new file (it reads
        // the same, and costs no disk); the latter are not even visited.
        let spans = data_spans(&[&extents], len, HOLE_UNIT as u64);
        pipeline.scan_ranges(
            len,
            &spans,
            run.cancel,
            run.progress,
            |buf, off| fill(image, &extents, buf, off).map(|_| ()),
            |buf, off, ()| write_nonzero(&out, buf, off),
        )?;
        out.set_len(len)?;
    }
    let elapsed = start.elapsed();
    // Plaintext: readable by its owner only (the CLI's --mode widens it on request).
    out.commit(0o600)?;
    Ok(DecryptReport {
        payload_len: len,
        keyslot: u.keyslot,
        elapsed,
        warnings: u.warnings,
    })
}

/// Writes the parts of `buf` (at `off`) that are not all zeros, in runs of whole [`HOLE_UNIT`]s; the
/// rest stays a hole of the new output file.
fn write_nonzero(out: &OutputFile, buf: &[u8], off: u64) -> Result<()> {
    let mut start = None;
    let mut at = 0;
    for piece in buf.chunks(HOLE_UNIT) {
        match (is_zero(piece), start) {
            (false, None) => start = Some(at),
            (true, Some(a)) => {
                out.write_at(&buf[a..at], off + a as u64)?;
                start = None;
            }
            _ => {}
        }
        at += piece.len();
    }
    if let Some(a) = start {
        out.write_at(&buf[a..], off + a as u64)?;
    }
    Ok(())
}

/// The granularity of the holes `decrypt` leaves (ext4's and XFS's block size is 4 KiB; 64 KiB keeps the
/// writes few and large, as qemu-img's 64 KiB clusters do).
const HOLE_UNIT: usize = 64 << 10;

/// Which digests of the plaintext [`verify`] computes.
#[derive(Debug, Clone, Default)]
pub struct Digests {
    /// The dm-verity root hash, with this salt (empty: no salt, `veritysetup --salt -`); `None`: not
    /// computed (a SHA-256 of every 4 KiB block that holds data, about 0.5 s of CPU per GiB).
    pub verity_salt: Option<Vec<u8>>,
    /// Also the SHA-256 of the whole plaintext: a pass over every byte, the unallocated zeros included,
    /// so its cost grows with the virtual size.
    pub sha256: bool,
}

/// The dm-verity root hash of a plaintext disk (hash format 1, SHA-256, 4096-byte hash blocks), as
/// `veritysetup format --no-superblock --data-block-size B --salt S DISK HASHFILE` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerityDigest {
    /// The root hash, lowercase hex.
    pub root_hash: String,
    /// The salt, lowercase hex ("" for none).
    pub salt: String,
    /// The data block size (4096, or 512 when 4096 does not divide the disk).
    pub data_block_size: u32,
}

/// What [`verify`] found.
#[derive(Debug, Clone)]
pub struct VerifyReport {
    /// What was verified: "LUKS1", "LUKS2" or "qcow2 + LUKS1".
    pub kind: &'static str,
    /// Keyslot used, if a passphrase was given.
    pub keyslot: Option<u32>,
    /// Payload size.
    pub payload_len: u64,
    /// The dm-verity root hash of the decrypted payload, when [`Digests::verity_salt`] asked for it.
    pub verity: Option<VerityDigest>,
    /// SHA-256 of the decrypted payload, hex, when [`Digests::sha256`] asked for it.
    pub plaintext_sha256: Option<String>,
    /// Bytes decrypted (the rest is unallocated in the image and, with a source, in the source too).
    pub data_bytes: u64,
    /// With a source: its virtual size.
    pub source_size: Option<u64>,
    /// With a source: the first differing byte offset, if any.
    pub mismatch: Option<u64>,
    /// Header warnings.
    pub warnings: Vec<String>,
    /// Header damage (a damaged or stale header copy, a segment over the header): verify fails.
    pub damage: Vec<String>,
}

impl VerifyReport {
    /// True when everything checked out.
    pub fn ok(&self) -> bool {
        self.mismatch.is_none() && self.damage.is_empty()
    }
}

/// Unlocks `enc`, decrypts the payload (computing `digests`), and compares it with `against` if given.
/// Only what holds data in the image or in the source is read: the rest reads as zeros on both sides
/// and costs nothing (as `qemu-img compare` skips what is unallocated in both).
pub fn verify(
    enc: &Path,
    how: Unlock,
    against: Option<(&Path, Option<ImageFormat>)>,
    digests: &Digests,
    run: &Run<'_>,
) -> Result<VerifyReport> {
    let u = unlock(enc, how)?;
    let image = u.image.as_ref();
    let len = image.virtual_size();
    let extents = image.extents()?;
    let source = match against {
        // The source the user names: its chain is only compared, nothing leaves.
        Some((p, f)) => Some(image::open_with(p, f, image::BackingPolicy::trust_all())?),
        None => None,
    };
    let src_size = source.as_ref().map(|s| s.virtual_size());
    // A LUKS file's payload runs to the end of the file: one cut on a sector boundary is shorter than
    // its source, which is said as such rather than as a difference at the payload's end.
    if let Some(s) = src_size
        && s > len
        && matches!(u.kind, "LUKS1" | "LUKS2")
    {
        let found = std::fs::metadata(enc).map_or(0, |m| m.len());
        return Err(Error::corrupt(format!(
            "truncated: expected {} bytes, found {found}",
            found + (s - len)
        ))
        .with_path(enc)
        .hint(format!(
            "the payload is {len} bytes and the source {s}: copy the encrypted file again, or check that it was made from this source"
        )));
    }
    let src_extents = match &source {
        Some(s) => s.extents()?,
        None => Vec::new(),
    };
    // A padded payload is longer than its source; the extra bytes must then be zeros.
    let mismatch = Mutex::new(match src_size {
        Some(s) if s > len => Some(len),
        _ => None,
    });
    let pipeline = Pipeline::new(run.threads, DEFAULT_CHUNK)?;
    run.total.store(len, std::sync::atomic::Ordering::Relaxed);
    let block = crate::crypto::verity::data_block_size(len);
    let mut tree = digests
        .verity_salt
        .as_ref()
        .map(|salt| crate::crypto::verity::VerityTree::new(len, block, salt));
    let hasher = tree.as_ref().map(|t| t.hasher().clone());
    let mut sha = digests.sha256.then(Sha256::new);
    let zeros = vec![0u8; DEFAULT_CHUNK];
    let hash_zeros = |sha: &mut Sha256, mut n: u64| {
        while n > 0 {
            let k = n.min(zeros.len() as u64);
            sha.update(&zeros[..k as usize]);
            n -= k;
        }
    };
    let spans = data_spans(&[&extents, &src_extents], len, u64::from(block));
    let data_bytes = spans.iter().map(|s| s.1).sum();
    // The source's bytes for a chunk, in buffers reused across chunks (one per worker at most).
    let spare: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());
    let lock_failed = || Error::new(ErrorKind::Io, "worker panicked");
    let mut pos = 0u64;
    pipeline.scan_ranges(
        len,
        &spans,
        run.cancel,
        run.progress,
        |buf, off| {
            fill(image, &extents, buf, off)?;
            if let (Some(src), Some(size)) = (&source, src_size) {
                let real = size.saturating_sub(off).min(buf.len() as u64) as usize;
                let mut theirs = spare
                    .lock()
                    .map_err(|_| lock_failed())?
                    .pop()
                    .unwrap_or_default();
                theirs.resize(buf.len(), 0);
                theirs[real..].fill(0);
                let filled = fill(src.as_ref(), &src_extents, &mut theirs[..real], off);
                let differs = filled.is_ok() && *buf != theirs[..];
                if differs && let Some(i) = buf.iter().zip(&theirs).position(|(a, b)| a != b) {
                    let at = off + i as u64;
                    let mut m = mismatch.lock().map_err(|_| lock_failed())?;
                    if m.is_none_or(|x| at < x) {
                        *m = Some(at);
                    }
                }
                spare.lock().map_err(|_| lock_failed())?.push(theirs);
                filled?;
            }
            Ok(hasher.as_ref().map(|h| h.hash_all(buf)))
        },
        |buf, off, hashes| {
            // The gap before this chunk holds zeros.
            if let (Some(tree), Some(hashes)) = (&mut tree, hashes) {
                tree.push_zeros((off - pos) / u64::from(block));
                for h in hashes {
                    tree.push(h);
                }
            }
            if let Some(sha) = &mut sha {
                hash_zeros(sha, off - pos);
                sha.update(buf);
            }
            pos = off + buf.len() as u64;
            Ok(())
        },
    )?;
    if let Some(sha) = &mut sha {
        hash_zeros(sha, len - pos);
    }
    let hex = |b: &[u8]| b.iter().map(|b| format!("{b:02x}")).collect::<String>();
    Ok(VerifyReport {
        kind: u.kind,
        keyslot: u.keyslot,
        payload_len: len,
        verity: tree
            .zip(digests.verity_salt.as_ref())
            .map(|(tree, salt)| VerityDigest {
                root_hash: hex(&tree.finish()),
                salt: hex(salt),
                data_block_size: block,
            }),
        plaintext_sha256: sha.map(|s| hex(&s.finalize())),
        data_bytes,
        source_size: src_size,
        mismatch: mismatch.into_inner().unwrap_or(None),
        warnings: u.warnings,
        damage: u.damage,
    })
}

/// The disk size of a file that ends in a valid fixed-VHD footer.
fn fixed_vhd_disk_size(file: &std::fs::File, len: u64) -> Option<u64> {
    use std::os::unix::fs::FileExt;
    let at = len.checked_sub(vhd_footer::FOOTER_SIZE as u64)?;
    let mut b = [0u8; vhd_footer::FOOTER_SIZE];
    file.read_exact_at(&mut b, at).ok()?;
    let raw = vhd_footer::RawFooter::decode(&b);
    let footer = vhd_footer::Footer::validate(raw, Path::new(""), at).ok()?;
    (footer.disk_type == vhd_footer::DiskType::Fixed).then_some(footer.virtual_size)
}

/// `diskseal info`: what the image is, like `qemu-img info --output=json` (same key names where they
/// exist), with the allocation summary and the backing chain. LUKS files are described too.
pub fn info(path: &Path, format: Option<ImageFormat>) -> Result<serde_json::Value> {
    use serde_json::json;
    use std::os::unix::fs::MetadataExt;
    let (file, len) = crate::io::open_input(path)?;
    let actual = file
        .metadata()
        .map_err(|e| Error::io("stat", path, None, e))?
        .blocks()
        * 512;
    let found = detect::detect(&file, len);
    if matches!(format, None | Some(ImageFormat::Ova(None))) && found == Detected::Ova {
        let p = image::ova::package(&file, path)?;
        let disks: Vec<serde_json::Value> = p
            .disks
            .iter()
            .map(|d| json!({"number": d.number, "disk-id": d.id, "file": d.file, "file-size": d.file_size, "capacity": d.capacity, "format": d.format}))
            .collect();
        return Ok(json!({
            "filename": path,
            "format": "ova",
            "virtual-size": p.disks.iter().filter_map(|d| d.capacity).sum::<u64>(),
            "actual-size": actual,
            "encrypted": false,
            "ovf": p.ovf_name,
            "manifest": p.manifest,
            "disks": disks,
        }));
    }
    if format.is_none() && matches!(found, Detected::Luks(_) | Detected::VpcLuks) {
        let l = crate::image::luks::open(&file, path)?;
        let mut v = json!({
            "filename": path,
            "format": "luks",
            "virtual-size": l.payload_len(),
            "actual-size": actual,
            "encrypted": true,
            "format-specific": l.to_json(),
        });
        // `-O vhd` output: a LUKS file with a fixed-VHD footer, which qemu-img reads as vpc (its disk
        // being the whole LUKS file).
        if matches!(found, Detected::VpcLuks)
            && let Some(disk) = fixed_vhd_disk_size(&file, len)
        {
            v["format"] = json!("vpc");
            v["vpc-subformat"] = json!("fixed");
            v["holds"] = json!(l.version().name());
            v["virtual-size"] = json!(disk);
        }
        return Ok(v);
    }
    drop(file);
    // `info` shows the chain (with every backing file named); it does not encrypt it.
    let image = image::open_with(path, format, image::BackingPolicy::trust_all())?;
    let extents = image.extents()?;
    let sum = |k: ExtentKind| {
        extents
            .iter()
            .filter(|e| e.kind == k)
            .map(|e| e.len)
            .sum::<u64>()
    };
    fn describe(i: &image::ImageInfo) -> serde_json::Value {
        let mut v = json!({
            "filename": i.path,
            "format": i.format,
            "virtual-size": i.virtual_size,
        });
        if let Some(c) = i.cluster_size {
            v["cluster-size"] = json!(c);
        }
        if let Some(b) = &i.backing_file {
            v["backing-filename"] = json!(b);
        }
        if let Some(b) = &i.backing_format {
            v["backing-filename-format"] = json!(b);
        }
        if !i.details.is_null() && i.details != json!({}) {
            v["format-specific"] = i.details.clone();
        }
        v
    }
    let top = image.info();
    let mut v = describe(&top);
    v["actual-size"] = json!(actual);
    v["encrypted"] = json!(top.details.get("encrypt").is_some());
    v["allocation"] = json!({
        "data": sum(ExtentKind::Data),
        "zero": sum(ExtentKind::Zero),
        "unallocated": sum(ExtentKind::Unallocated),
    });
    let mut chain = Vec::new();
    let mut next = top.backing.as_deref();
    while let Some(b) = next {
        chain.push(describe(b));
        next = b.backing.as_deref();
    }
    v["backing-chain"] = json!(chain);
    Ok(v)
}
