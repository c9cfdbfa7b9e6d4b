//! The operations behind the commands — encrypt, decrypt, verify — as library calls taking validated
//! options ("high args"); the CLI only parses, prompts and prints.

use std::fs::File;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::crypto::IvScheme;
use crate::crypto::iv::{luks_sector, qcow2_sector};
use crate::crypto::xts::Xts;
use crate::error::{Error, ErrorKind, Result};
use crate::image::detect::{self, Detected};
use crate::image::qcow2::Qcow2Image;
use crate::image::qcow2::writer::{DEFAULT_CLUSTER_BITS, Qcow2Writer, check_cluster_bits};
use crate::image::vhd::batmap::KeyHash;
use crate::image::vhd::classic::EncryptedVhd;
use crate::image::vhd::footer as vhd_footer;
use crate::image::vhd::writer::{self as vhd_writer, ClassicVhdWriter};
use crate::image::{self, DiskImage, Extent, ExtentKind, ImageFormat};
use crate::io::{OutputFile, same_file};
use crate::luks::kdf::Kdf;
use crate::luks::keys::{Passphrase, VolumeKey};
use crate::luks::payload::LuksPayload;
use crate::luks::{self, FormatOptions, Luks, LuksVersion};
use crate::pipeline::{DEFAULT_CHUNK, Pipeline, Progress};

/// How a job is run: worker count, cancellation flag, progress counter.
#[derive(Debug)]
pub struct Run<'a> {
    /// Worker threads (all cores when `None`).
    pub threads: Option<usize>,
    /// Set to stop early (Ctrl-C); the output is then removed.
    pub cancel: &'a AtomicBool,
    /// Bytes done, read by the caller's progress display.
    pub progress: &'a Progress,
    /// Total bytes of the data phase, set once the header work is done.
    pub total: &'a std::sync::atomic::AtomicU64,
}

/// The LUKS container the encrypted image is written in. (`ibm-classic-vhd` output has no LUKS header:
/// [`encrypt_classic_vhd`] writes it.)
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
}

/// Options of [`encrypt`].
#[derive(Debug, Clone)]
pub struct EncryptOptions {
    /// The LUKS header to write (version, KDF, hash, label, offsets...). Its `sector_size` is ignored in
    /// favour of [`EncryptOptions::sector_size`].
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
}

/// What [`encrypt`] did.
#[derive(Debug, Clone)]
pub struct EncryptReport {
    /// LUKS version written.
    pub version: LuksVersion,
    /// UUID written.
    pub uuid: String,
    /// Input format.
    pub input_format: &'static str,
    /// Source virtual size.
    pub source_size: u64,
    /// Virtual size of the encrypted disk (after --resize / --pad).
    pub virtual_size: u64,
    /// Zero bytes added by `--pad`.
    pub padded: u64,
    /// Payload offset (raw LUKS) or LUKS header offset (qcow2).
    pub data_offset: u64,
    /// Payload sector size.
    pub sector_size: u32,
    /// Keyslot KDF and cost.
    pub kdf: Kdf,
    /// Output file size.
    pub output_size: u64,
    /// Bytes of the source read and encrypted (holes and zero runs are not read).
    pub data_bytes: u64,
    /// Time spent on the data.
    pub elapsed: Duration,
    /// Worker threads used.
    pub threads: usize,
}

fn refuse_same(src: &Path, dst: &Path) -> Result<()> {
    if same_file(src, dst) {
        return Err(Error::invalid("input and output are the same file")
            .with_path(dst)
            .hint("write the result to a new file"));
    }
    Ok(())
}

/// Fills `buf` with the source's bytes at `off`: only `Data` extents are read, the rest (and anything past
/// the source's end) is zeroed. Returns the number of bytes read from the source.
fn fill(image: &dyn DiskImage, extents: &[Extent], buf: &mut [u8], off: u64) -> Result<u64> {
    let end = off + buf.len() as u64;
    buf.fill(0);
    let mut read = 0;
    let first = extents.partition_point(|e| e.offset + e.len <= off);
    for e in extents[first..].iter().take_while(|e| e.offset < end) {
        if e.kind != ExtentKind::Data {
            continue;
        }
        let a = e.offset.max(off);
        let b = (e.offset + e.len).min(end);
        image.read_at(&mut buf[(a - off) as usize..(b - off) as usize], a)?;
        read += b - a;
    }
    Ok(read)
}

/// Sub-ranges of `[off, off+len)` (relative, sector-aligned) that hold source data.
fn data_ranges(extents: &[Extent], off: u64, len: u64, sector: u64) -> Vec<(u64, u64)> {
    let end = off + len;
    let mut out: Vec<(u64, u64)> = Vec::new();
    let first = extents.partition_point(|e| e.offset + e.len <= off);
    for e in extents[first..].iter().take_while(|e| e.offset < end) {
        if e.kind != ExtentKind::Data {
            continue;
        }
        let a = (e.offset.max(off) - off) / sector * sector;
        let b = ((e.offset + e.len).min(end) - off).div_ceil(sector) * sector;
        match out.last_mut() {
            Some(last) if last.1 >= a => last.1 = last.1.max(b),
            _ => out.push((a, b.min(len))),
        }
    }
    out
}

/// Encrypts the disk image `src` into a new file `dst` (a LUKS file, or qcow2 with native LUKS).
pub fn encrypt(
    src: &Path,
    dst: &Path,
    opts: &EncryptOptions,
    passphrase: &Passphrase,
    volume_key: Option<VolumeKey>,
    run: &Run<'_>,
) -> Result<EncryptReport> {
    refuse_same(src, dst)?;
    if !opts.force && std::fs::symlink_metadata(dst).is_ok() {
        return Err(Error::invalid("output file already exists")
            .with_path(dst)
            .hint("pass --force to overwrite it"));
    }
    let image = image::open(src, opts.input_format)?;
    let source_size = image.virtual_size();
    if source_size == 0 {
        return Err(Error::invalid("input is empty").with_path(src));
    }
    let vsize = match opts.resize {
        Some(r) if r < source_size => {
            return Err(Error::invalid(format!(
                "--resize {r} is smaller than the source's virtual size {source_size}"
            ))
            .hint("diskseal only grows disks; shrink the file system and the image first"));
        }
        Some(r) => r,
        None => source_size,
    };
    let extents = image.extents()?;
    let version = opts.luks.version;
    if let Some(bits) = opts.cluster_bits {
        if opts.container != Container::Qcow2Luks {
            return Err(Error::invalid("--cluster-size needs qcow2 output"));
        }
        // Checked before the key derivation, not after it in the writer.
        check_cluster_bits(bits)?;
    }
    if opts.container == Container::Qcow2Luks {
        if version != LuksVersion::Luks1 {
            return Err(Error::invalid(
                "qcow2 images hold LUKS1 only (QEMU has no LUKS2)",
            ));
        }
        if std::str::from_utf8(passphrase.expose()).is_err() {
            return Err(Error::invalid(
                "the passphrase is not valid UTF-8, which QEMU requires for qcow2 encryption",
            )
            .hint("use a text passphrase, e.g. the base64 of random bytes"));
        }
    }
    let sector = match opts.sector_size {
        Some(s) => s,
        None if version == LuksVersion::Luks2 && vsize % 4096 == 0 => 4096,
        None => 512,
    };
    if version == LuksVersion::Luks1 && sector != 512 {
        return Err(Error::invalid("LUKS1 supports only 512-byte sectors")
            .hint("use --type luks2 for 4096-byte sectors"));
    }
    if !matches!(sector, 512 | 1024 | 2048 | 4096) {
        return Err(Error::invalid(format!(
            "--sector-size {sector} must be 512, 1024, 2048 or 4096"
        )));
    }
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
    let formatted = luks::format(&fmt, &key, passphrase)?;
    let out = OutputFile::create(dst, opts.force)?;
    let xts = Xts::new(key.expose())?;
    let pipeline = Pipeline::new(run.threads, DEFAULT_CHUNK)?;
    run.total
        .store(payload_len, std::sync::atomic::Ordering::Relaxed);
    let start = Instant::now();
    let data_bytes = AtomicU64::new(0);
    let (data_offset, output_size) = match opts.container {
        Container::Raw | Container::Vhd { .. } => {
            let data_offset = formatted.data_offset;
            out.write_at(&formatted.header, 0)?;
            let unit = sector as usize;
            let sparse = opts.sparse;
            pipeline.run(payload_len, run.cancel, run.progress, |buf, off| {
                data_bytes.fetch_add(fill(image.as_ref(), &extents, buf, off)?, Ordering::Relaxed);
                if sparse {
                    for (a, b) in data_ranges(&extents, off, buf.len() as u64, u64::from(sector)) {
                        let part = &mut buf[a as usize..b as usize];
                        xts.encrypt(part, unit, luks_sector(0, off + a), IvScheme::Plain64)?;
                        out.write_at(part, data_offset + off + a)?;
                    }
                    return Ok(());
                }
                xts.encrypt(buf, unit, luks_sector(0, off), IvScheme::Plain64)?;
                out.write_at(buf, data_offset + off)
            })?;
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
        Container::Qcow2Luks => {
            let writer = Qcow2Writer::new(
                &out,
                payload_len,
                Some(&formatted.header),
                opts.cluster_bits.unwrap_or(DEFAULT_CLUSTER_BITS),
            )?;
            let cs = writer.cluster_size();
            let read = |buf: &mut [u8], at: u64| -> Result<bool> {
                if data_ranges(&extents, at, buf.len() as u64, cs).is_empty() {
                    return Ok(false);
                }
                data_bytes.fetch_add(fill(image.as_ref(), &extents, buf, at)?, Ordering::Relaxed);
                Ok(true)
            };
            let size = write_qcow2(
                &pipeline,
                payload_len,
                &extents,
                &read,
                Some(&xts),
                writer,
                &out,
                run,
            )?;
            // The LUKS header sits at cluster 1.
            (cs, size)
        }
    };
    let elapsed = start.elapsed();
    out.commit(0o644)?;
    Ok(EncryptReport {
        version,
        uuid: formatted.uuid,
        input_format: image.format_name(),
        source_size,
        virtual_size: payload_len,
        padded: payload_len - vsize,
        data_offset,
        sector_size: sector,
        kdf: formatted.keyslot_kdf,
        output_size,
        data_bytes: data_bytes.into_inner(),
        elapsed,
        threads: pipeline.threads(),
    })
}

/// Encrypts and writes a run of allocated units that follow each other both in the guest and in the
/// file: (their bytes, the first unit's index, its host offset).
type StoreUnit<'a> = dyn Fn(&mut [u8], u64, u64) -> Result<()> + Sync + 'a;

/// A wave job: its buffer, guest offset, and (unit index in the chunk, host offset) of the units that
/// hold data.
type WaveJob = (Vec<u8>, u64, Vec<(u64, u64)>);

/// The allocate-in-guest-order data path of the sparse writers (qcow2, vhd-util VHD), in waves of
/// chunks made of whole `unit`s:
/// 1. `read(buf, offset)` fills each chunk in parallel; `false` means "known zeros, nothing read";
/// 2. every unit that is not all zeros is allocated, in guest order, with `allocate(unit_index)`;
/// 3. `store(bytes, unit_index, host_offset)` encrypts and writes the allocated units in parallel, one
///    call per run of units that are consecutive in the guest and in the file (one write instead of one
///    per unit); the last unit may be short when `len` is not a whole number of units.
///
/// Step 3 of a wave runs alongside step 1 of the next one (two sets of wave buffers), so the workers
/// read while the file's writes, which the kernel serialises per file, go on.
/// `skip(offset)` returns the first offset at or after `offset` that may hold data, so holes cost no time.
#[allow(clippy::too_many_arguments)]
fn allocating_waves(
    pipeline: &Pipeline,
    len: u64,
    unit: u64,
    run: &Run<'_>,
    skip: &dyn Fn(u64) -> u64,
    read: &(dyn Fn(&mut [u8], u64) -> Result<bool> + Sync),
    allocate: &mut dyn FnMut(u64) -> Result<u64>,
    store: &StoreUnit<'_>,
) -> Result<()> {
    use rayon::prelude::*;
    let chunk = (pipeline.chunk() as u64 / unit).max(1) * unit;
    let wave = pipeline.threads() * 2;
    let new_wave = || -> Vec<WaveJob> { (0..wave).map(|_| (Vec::new(), 0, Vec::new())).collect() };
    // Lays out the next wave from `off` on (holes are skipped and counted as done); returns its size.
    let mut off = 0u64;
    let mut plan = |bufs: &mut [WaveJob]| -> Result<usize> {
        let mut n = 0;
        while off < len && n < bufs.len() {
            Pipeline::check_cancel(run.cancel)?;
            let next = (skip(off).min(len) / unit * unit).max(off);
            if next > off {
                Pipeline::advance(run.progress, next - off);
                off = next;
                continue;
            }
            let this = chunk.min(len - off);
            let b = &mut bufs[n];
            b.0.resize(this as usize, 0);
            b.1 = off;
            b.2.clear();
            n += 1;
            off += this;
        }
        Ok(n)
    };
    let fill = |jobs: &mut [WaveJob]| -> Result<()> {
        jobs.par_iter_mut()
            .try_for_each(|(buf, at, alloc)| -> Result<()> {
                if !read(buf, *at)? {
                    return Ok(());
                }
                for (i, u) in buf.chunks(unit as usize).enumerate() {
                    if !is_zero(u) {
                        alloc.push((i as u64, 0));
                    }
                }
                Ok(())
            })
    };
    let write = |jobs: &mut [WaveJob]| -> Result<()> {
        jobs.par_iter_mut()
            .try_for_each(|(buf, at, alloc)| -> Result<()> {
                let blen = buf.len() as u64;
                let mut k = 0;
                while k < alloc.len() {
                    let (i, host) = alloc[k];
                    let mut n = 1;
                    while alloc
                        .get(k + n)
                        .is_some_and(|&(j, h)| j == i + n as u64 && h == host + n as u64 * unit)
                    {
                        n += 1;
                    }
                    let run =
                        &mut buf[(i * unit) as usize..((i + n as u64) * unit).min(blen) as usize];
                    store(run, *at / unit + i, host)?;
                    k += n;
                }
                Ok(())
            })
    };
    let (mut cur, mut next) = (new_wave(), new_wave());
    let mut n_cur = plan(&mut cur)?;
    pipeline.install(|| fill(&mut cur[..n_cur]))?;
    while n_cur > 0 {
        for job in cur[..n_cur].iter_mut() {
            let first = job.1 / unit;
            for (i, host) in job.2.iter_mut() {
                *host = allocate(first + *i)?;
            }
        }
        let n_next = plan(&mut next)?;
        let (stored, filled) = pipeline
            .install(|| rayon::join(|| write(&mut cur[..n_cur]), || fill(&mut next[..n_next])));
        stored?;
        filled?;
        for job in &cur[..n_cur] {
            Pipeline::advance(run.progress, job.0.len() as u64);
        }
        std::mem::swap(&mut cur, &mut next);
        n_cur = n_next;
    }
    Ok(())
}

/// The first offset at or after `off` where `extents` has data (`len` if none).
fn next_data(extents: &[Extent], off: u64, len: u64) -> u64 {
    extents[extents.partition_point(|e| e.offset + e.len <= off)..]
        .iter()
        .find(|e| e.kind == ExtentKind::Data)
        .map_or(len, |e| e.offset.max(off))
}

/// The qcow2 data path: reads through `read` (see [`allocating_waves`]), allocates non-zero clusters in
/// guest order, encrypts them with `xts` (IV = host offset / 512) when given, writes them, and finishes
/// the metadata. Returns the final file length.
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
    let store = |data: &mut [u8], _index: u64, host: u64| -> Result<()> {
        // Only the disk's last cluster can be short: pad it to a whole cluster.
        let mut padded;
        let data: &mut [u8] = if (data.len() as u64).is_multiple_of(cs) {
            data
        } else {
            padded = vec![0u8; (data.len() as u64).next_multiple_of(cs) as usize];
            padded[..data.len()].copy_from_slice(data);
            &mut padded
        };
        if let Some(xts) = xts {
            xts.encrypt(data, 512, qcow2_sector(host), IvScheme::Plain64)?;
        }
        out.write_at(data, host)
    };
    let skip = |off: u64| next_data(extents, off, len);
    allocating_waves(
        pipeline,
        len,
        cs,
        run,
        &skip,
        read,
        &mut |i| writer.allocate(i),
        &store,
    )?;
    writer.finish(out)
}

/// Options of [`encrypt_classic_vhd`].
#[derive(Debug, Clone, Default)]
pub struct ClassicVhdOptions {
    /// Force the input format.
    pub input_format: Option<ImageFormat>,
    /// Replace an existing output.
    pub force: bool,
    /// New virtual size (grow only; rounded up to 2 MiB like the source size).
    pub resize: Option<u64>,
}

/// What [`encrypt_classic_vhd`] did.
#[derive(Debug, Clone)]
pub struct ClassicVhdReport {
    /// The footer's unique id.
    pub uuid: String,
    /// Input format.
    pub input_format: &'static str,
    /// Source virtual size.
    pub source_size: u64,
    /// Virtual size of the VHD (`current_size`: the source size rounded up to whole 2 MiB blocks).
    pub virtual_size: u64,
    /// Key size in bytes (32: AES-128-XTS, 64: AES-256-XTS).
    pub key_bytes: usize,
    /// SHA-256(zero nonce || key), as stored in the batmap header (`vhd-util key -p`).
    pub keyhash: [u8; 32],
    /// Blocks allocated (and encrypted) out of the BAT's entries.
    pub allocated_blocks: u64,
    /// BAT entries.
    pub bat_entries: u64,
    /// Output file size.
    pub output_size: u64,
    /// Bytes of the source read (holes and zero runs are not read).
    pub data_bytes: u64,
    /// Time spent on the data.
    pub elapsed: Duration,
    /// Worker threads used.
    pub threads: usize,
}

/// Encrypts the disk image `src` into a new dynamic VHD `dst` exactly as blktap's `vhd-util copy -k`
/// lays it out (`ibm-classic-vhd`): `key` is the raw DEK (32 or 64 bytes); only 2 MiB blocks holding
/// non-zero data are allocated, and every sector of them is AES-XTS encrypted with tweak = 32-bit LE
/// virtual sector number; the key hash SHA-256(zero nonce || key) goes into the batmap header.
/// The virtual size is the source's rounded up to whole 2 MiB blocks (as vhd-util does); sources beyond
/// VHD's 2040 GiB are refused.
pub fn encrypt_classic_vhd(
    src: &Path,
    dst: &Path,
    opts: &ClassicVhdOptions,
    key: &VolumeKey,
    run: &Run<'_>,
) -> Result<ClassicVhdReport> {
    refuse_same(src, dst)?;
    if !opts.force && std::fs::symlink_metadata(dst).is_ok() {
        return Err(Error::invalid("output file already exists")
            .with_path(dst)
            .hint("pass --force to overwrite it"));
    }
    let image = image::open(src, opts.input_format)?;
    if image.info().details.get("encrypt").is_some() {
        return Err(Error::invalid("the input is already encrypted; encrypting it again would hide the ciphertext, not the data")
            .with_path(src)
            .hint("decrypt it first (`diskseal decrypt`), or pass -f raw to encrypt the file's bytes as they are"));
    }
    let source_size = image.virtual_size();
    if source_size == 0 {
        return Err(Error::invalid("input is empty").with_path(src));
    }
    let want = match opts.resize {
        Some(r) if r < source_size => {
            return Err(Error::invalid(format!(
                "--resize {r} is smaller than the source's virtual size {source_size}"
            ))
            .hint("diskseal only grows disks; shrink the file system and the image first"));
        }
        Some(r) => r,
        None => source_size,
    };
    if want > vhd_footer::MAX_VIRTUAL_SIZE {
        return Err(Error::invalid(format!(
            "the disk is {want} bytes, beyond VHD's 2040 GiB limit ({} bytes): it cannot be an ibm-classic-vhd image",
            vhd_footer::MAX_VIRTUAL_SIZE
        ))
        .with_path(src)
        .hint("shrink the file system and the image first (IBM classic imports at most 100 GB anyway)"));
    }
    let vsize = want.next_multiple_of(vhd_writer::BLOCK_SIZE);
    let extents = image.extents()?;
    let xts = Xts::new(key.expose())?;
    let uuid = uuid::Uuid::new_v4();
    let mut writer =
        ClassicVhdWriter::new(vsize, *uuid.as_bytes(), vhd_writer::vhd_timestamp_now())?;
    let footer = *writer.footer();
    let out = OutputFile::create(dst, opts.force)?;
    let pipeline = Pipeline::new(run.threads, DEFAULT_CHUNK)?;
    run.total.store(vsize, Ordering::Relaxed);
    let start = Instant::now();
    let data_bytes = AtomicU64::new(0);
    let bs = vhd_writer::BLOCK_SIZE;
    let read = |buf: &mut [u8], at: u64| -> Result<bool> {
        if data_ranges(&extents, at, buf.len() as u64, 512).is_empty() {
            return Ok(false);
        }
        data_bytes.fetch_add(fill(image.as_ref(), &extents, buf, at)?, Ordering::Relaxed);
        Ok(true)
    };
    // Every sector of an allocated block is encrypted (tweak = virtual sector), then bitmap + data
    // + a stale footer copy are written, as vhd-util does.
    // Each block is preceded by its bitmap in the file, so runs are single blocks.
    let store = |block: &mut [u8], index: u64, at: u64| -> Result<()> {
        debug_assert_eq!(block.len() as u64, bs);
        xts.encrypt(block, 512, index * bs / 512, IvScheme::Plain)?;
        out.write_at(&vhd_writer::FULL_BITMAP, at)?;
        out.write_at(block, at + 512)?;
        out.write_at(&footer, at + 512 + bs)
    };
    let skip = |off: u64| next_data(&extents, off, vsize);
    allocating_waves(
        &pipeline,
        vsize,
        bs,
        run,
        &skip,
        &read,
        &mut |i| writer.allocate(i),
        &store,
    )?;
    let keyhash = KeyHash::of_key(key.expose(), [0; 32]);
    let allocated_blocks = writer.allocated();
    let bat_entries = writer.layout().entries;
    let output_size = writer.finish(&out, &keyhash)?;
    let elapsed = start.elapsed();
    out.commit(0o644)?;
    Ok(ClassicVhdReport {
        uuid: uuid.to_string(),
        input_format: image.format_name(),
        source_size,
        virtual_size: vsize,
        key_bytes: key.len(),
        keyhash: keyhash.hash,
        allocated_blocks,
        bat_entries,
        output_size,
        data_bytes: data_bytes.into_inner(),
        elapsed,
        threads: pipeline.threads(),
    })
}

/// True when `buf` holds only zero bytes (word-wise, fast on the all-zero case).
fn is_zero(buf: &[u8]) -> bool {
    let (words, rest) = buf.split_at(buf.len() / 8 * 8);
    words.chunks_exact(64).all(|c| {
        c.chunks_exact(8).fold(0u64, |acc, w| {
            acc | u64::from_ne_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]])
        }) == 0
    }) && words.chunks_exact(64).remainder().iter().all(|&b| b == 0)
        && rest.iter().all(|&b| b == 0)
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
    /// Header damage the image opened despite (see [`Luks::damage`]); `verify` fails on it.
    pub damage: Vec<String>,
}

/// Opens an encrypted image (a LUKS file, or a qcow2 with QEMU-native LUKS), checks its header, and
/// recovers (or checks) the volume key.
pub fn unlock(path: &Path, how: Unlock) -> Result<Unlocked> {
    let file = File::open(path).map_err(|e| Error::io("open", path, None, e))?;
    let len = file
        .metadata()
        .map_err(|e| Error::io("stat", path, None, e))?
        .len();
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
        let mut q = Qcow2Image::open(file, path, &mut Vec::new())?;
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
    let luks = Luks::open(&file, path)?;
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
    refuse_same(src, dst)?;
    if !force && std::fs::symlink_metadata(dst).is_ok() {
        return Err(Error::invalid("output file already exists")
            .with_path(dst)
            .hint("pass --force to overwrite it"));
    }
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
        pipeline.run(len, run.cancel, run.progress, |buf, off| {
            fill(image, &extents, buf, off)?;
            out.write_at(buf, off)
        })?;
        out.set_len(len)?;
    }
    let elapsed = start.elapsed();
    out.commit(0o644)?;
    Ok(DecryptReport {
        payload_len: len,
        keyslot: u.keyslot,
        elapsed,
        warnings: u.warnings,
    })
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
    /// SHA-256 of the decrypted payload, hex.
    pub plaintext_sha256: String,
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

/// Unlocks `enc`, decrypts the whole payload (hashing it), and compares it with `against` if given.
pub fn verify(
    enc: &Path,
    how: Unlock,
    against: Option<(&Path, Option<ImageFormat>)>,
    run: &Run<'_>,
) -> Result<VerifyReport> {
    let u = unlock(enc, how)?;
    let image = u.image.as_ref();
    let len = image.virtual_size();
    let extents = image.extents()?;
    let source = match against {
        Some((p, f)) => Some(image::open(p, f)?),
        None => None,
    };
    let src_size = source.as_ref().map(|s| s.virtual_size());
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
    let mut hasher = Sha256::new();
    // The source's bytes for a chunk, in buffers reused across chunks (one per worker at most).
    let spare: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());
    let lock_failed = || Error::new(ErrorKind::Io, "worker panicked");
    pipeline.scan_ordered(
        len,
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
            Ok(())
        },
        |buf, _| {
            hasher.update(buf);
            Ok(())
        },
    )?;
    let plaintext_sha256 = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(VerifyReport {
        kind: u.kind,
        keyslot: u.keyslot,
        payload_len: len,
        plaintext_sha256,
        source_size: src_size,
        mismatch: mismatch.into_inner().unwrap_or(None),
        warnings: u.warnings,
        damage: u.damage,
    })
}

/// `diskseal info`: what the image is, like `qemu-img info --output=json` (same key names where they
/// exist), with the allocation summary and the backing chain. LUKS files are described too.
pub fn info(path: &Path, format: Option<ImageFormat>) -> Result<serde_json::Value> {
    use serde_json::json;
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).map_err(|e| Error::io("stat", path, None, e))?;
    let actual = meta.blocks() * 512;
    let file = File::open(path).map_err(|e| Error::io("open", path, None, e))?;
    let found = detect::detect(&file, meta.len());
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
        let l = Luks::open(&file, path)?;
        return Ok(json!({
            "filename": path,
            "format": "luks",
            "virtual-size": l.payload_len(),
            "actual-size": actual,
            "encrypted": true,
            "format-specific": l.to_json(),
        }));
    }
    drop(file);
    let image = image::open(path, format)?;
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
