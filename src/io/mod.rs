//! File plumbing: positional reads and writes with errors that name the path and offset, opening inputs
//! ([`open_input`]: regular files and block devices only, a FIFO would block forever), and
//! [`OutputFile`], which writes to a temporary file beside the destination and only renames it into
//! place on success, so no half-written image is ever left behind. A run that was killed (SIGKILL, power
//! loss) leaves `.NAME.diskseal-PID-N.tmp`; the next run for the same destination removes it.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// How many outputs (temporary files or directories) exist right now; see [`exit_if_nothing_written`].
static LIVE_OUTPUTS: std::sync::Mutex<usize> = std::sync::Mutex::new(0);

/// Marks an output as being written from before it is created until after it is removed or committed
/// (hold it in a field declared after the file, or drop it last).
#[derive(Debug)]
pub struct LiveOutput(());

impl LiveOutput {
    /// Registers an output about to be created.
    pub fn register() -> LiveOutput {
        if let Ok(mut n) = LIVE_OUTPUTS.lock() {
            *n += 1;
        }
        LiveOutput(())
    }
}

impl Drop for LiveOutput {
    fn drop(&mut self) {
        if let Ok(mut n) = LIVE_OUTPUTS.lock() {
            *n = n.saturating_sub(1);
        }
    }
}

/// Ends the process with `code` at once when no output is being written, so there is nothing to clean
/// up (an interrupt during the key derivation); returns otherwise, and the caller cancels cleanly.
/// The registry stays locked until the process is gone, so no output can start meanwhile.
pub fn exit_if_nothing_written(code: i32) {
    if let Ok(n) = LIVE_OUTPUTS.lock()
        && *n == 0
    {
        std::process::exit(code);
    }
}

/// The largest single `pwrite` of an [`OutputFile`]. Buffered writes of 256 KiB and more into a new ext4
/// file cost 3-4× the system time and wall time of 128 KiB ones (Linux 6.18, 2 GiB with `sync`:
/// `dd bs=4M` 15 s, `bs=1M` 11 s, `bs=512K` 8.6 s, `bs=128K` 3.7 s, `cp` 2.4 s; reads of 4 MiB are not
/// affected: `dd ibs=4M obs=128K` 3.7 s), so chunks are written in 128 KiB pieces.
pub const WRITE_PIECE: usize = 128 << 10;

/// Writes of at least this size ask the kernel to start writing them to the disk at once (see
/// [`start_writeback`]).
const WRITEBACK_MIN: usize = 1 << 20;

/// Starts writing `len` bytes at `offset` to the disk now, without waiting (`sync_file_range` with
/// `SYNC_FILE_RANGE_WRITE`): the output is flushed before it is renamed into place anyway, and this lets
/// the disk work while the next chunks are encrypted instead of all at the final flush. A file system
/// without it is not an error; one kept in memory is not asked (see [`in_memory`]).
#[allow(unsafe_code)]
fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: sync_file_range takes a file descriptor and three integers and touches no memory of ours.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE);
    }
}

/// Reads exactly `buf.len()` bytes at `offset`, or fails naming `path` and the offset.
pub fn read_exact_at(file: &File, path: &Path, buf: &mut [u8], offset: u64) -> Result<()> {
    file.read_exact_at(buf, offset).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            Error::corrupt(format!(
                "unexpected end of file reading {} bytes",
                buf.len()
            ))
            .with_path(path)
            .at(offset)
            .hint("the file is truncated")
        } else {
            Error::io("read", path, Some(offset), e)
        }
    })
}

/// Opens an input image or encrypted file for reading, with its size. Regular files and block devices
/// (a whole disk, `/dev/sdX`; its size comes from the `BLKGETSIZE64` ioctl) are accepted; directories,
/// FIFOs, sockets and character devices are refused before anything blocks on them.
pub fn open_input(path: &Path) -> Result<(File, u64)> {
    let meta = fs::metadata(path).map_err(|e| Error::io("open", path, None, e))?;
    refuse_special(&meta, path)?;
    // O_NONBLOCK: should the path be swapped for a FIFO after the check, the open does not hang
    // (it has no effect on regular files and block devices).
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)
        .map_err(|e| Error::io("open", path, None, e))?;
    let len = input_len(&file, path)?;
    Ok((file, len))
}

/// The size of an open input: its length, or for a block device the device size.
pub fn input_len(file: &File, path: &Path) -> Result<u64> {
    use std::os::unix::fs::FileTypeExt;
    let meta = file
        .metadata()
        .map_err(|e| Error::io("stat", path, None, e))?;
    refuse_special(&meta, path)?;
    if meta.file_type().is_block_device() {
        block_device_size(file)
            .map_err(|e| Error::io("read the size of block device", path, None, e))
    } else {
        Ok(meta.len())
    }
}

fn refuse_special(meta: &fs::Metadata, path: &Path) -> Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    let what = if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO (named pipe)"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() {
        "a character device"
    } else {
        return Ok(());
    };
    Err(Error::invalid(format!("input is {what}"))
        .with_path(path)
        .hint(
            "diskseal reads regular files and block devices (it needs random access and the size); \
         copy the data to a file first",
        ))
}

/// `ioctl(BLKGETSIZE64)`: the size in bytes of a block device.
#[allow(unsafe_code)]
fn block_device_size(file: &File) -> io::Result<u64> {
    use rustix::ioctl::{Getter, ioctl, opcode};
    // BLKGETSIZE64 is _IOR(0x12, 114, size_t) in <linux/fs.h>; size_t is 64 bits on every target we build.
    const BLKGETSIZE64: rustix::ioctl::Opcode = opcode::read::<u64>(0x12, 114);
    // SAFETY: BLKGETSIZE64 writes exactly one u64 to its argument, which is what Getter<_, u64> passes.
    let size = unsafe { ioctl(file, Getter::<BLKGETSIZE64, u64>::new()) }?;
    Ok(size)
}

/// True when `a` and `b` name the same existing file (same device and inode).
pub fn same_file(a: &Path, b: &Path) -> bool {
    match (fs::metadata(a), fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// Refuses a directory as `dest` (said first, as `--force` cannot help), and an existing `dest` unless
/// `force`: "output file already exists" (checked before slow work, and again by
/// [`OutputFile::create`]).
pub fn check_new_output(dest: &Path, force: bool) -> Result<()> {
    if fs::metadata(dest).is_ok_and(|m| m.is_dir()) {
        return Err(Error::invalid("output is a directory")
            .with_path(dest)
            .hint("give a file name for the output, e.g. DIR/disk.luks"));
    }
    if !force && fs::symlink_metadata(dest).is_ok() {
        return Err(Error::invalid("output file already exists")
            .with_path(dest)
            .hint("pass --force to overwrite it"));
    }
    Ok(())
}

/// The temporary name prefix for `dest`'s file name: `.NAME.diskseal-PID-N.tmp`.
fn temp_prefix(name: &str) -> String {
    format!(".{name}.diskseal-")
}

/// Removes temporary files a killed run left for `name` in `dir` (their PID is no longer running).
fn remove_stale_temps(dir: &Path, name: &str) {
    let prefix = temp_prefix(name);
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let file_name = e.file_name();
        let Some(rest) = file_name
            .to_str()
            .and_then(|f| f.strip_prefix(&prefix))
            .and_then(|r| r.strip_suffix(".tmp"))
        else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_file(e.path());
        }
    }
}

/// An output being written under a temporary name; renamed to its final name by [`OutputFile::commit`],
/// removed if dropped before that (error, panic or cancellation).
#[derive(Debug)]
pub struct OutputFile {
    file: File,
    tmp: PathBuf,
    dest: PathBuf,
    force: bool,
    committed: bool,
    /// The file lives in memory (tmpfs, ramfs): there is no disk to start writing to.
    in_memory: bool,
    /// Dropped after [`Drop::drop`] has removed the temporary file.
    _live: LiveOutput,
}

/// True when `file` lives on a file system kept in memory (tmpfs, ramfs), which has no writeback:
/// `sync_file_range` there costs a system call per write and does nothing (15 ms of a 1 GiB encrypt's
/// writing thread on tmpfs).
fn in_memory(file: &File) -> bool {
    const TMPFS_MAGIC: u64 = 0x0102_1994;
    const RAMFS_MAGIC: u64 = 0x8584_58f6;
    rustix::fs::fstatfs(file).is_ok_and(|s| {
        #[allow(clippy::unnecessary_cast)]
        let t = s.f_type as u64;
        t == TMPFS_MAGIC || t == RAMFS_MAGIC
    })
}

impl OutputFile {
    /// Creates the temporary file for `dest`. Fails if `dest` exists and `force` is false.
    pub fn create(dest: &Path, force: bool) -> Result<OutputFile> {
        check_new_output(dest, force)?;
        let name = dest
            .file_name()
            .ok_or_else(|| Error::invalid("output path has no file name").with_path(dest))?
            .to_string_lossy()
            .into_owned();
        let dir = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        remove_stale_temps(&dir, &name);
        let live = LiveOutput::register();
        let mut attempt = 0u32;
        loop {
            let tmp = dir.join(format!(
                "{}{}-{attempt}.tmp",
                temp_prefix(&name),
                std::process::id()
            ));
            match OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
            {
                Ok(file) => {
                    return Ok(OutputFile {
                        in_memory: in_memory(&file),
                        file,
                        tmp,
                        dest: dest.to_owned(),
                        force,
                        committed: false,
                        _live: live,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt < 100 => attempt += 1,
                Err(e) => return Err(Error::io("create output", &tmp, None, e)),
            }
        }
    }

    /// The open temporary file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The final destination (used in messages).
    pub fn dest(&self) -> &Path {
        &self.dest
    }

    /// Writes all of `buf` at `offset`, in calls of at most [`WRITE_PIECE`] bytes.
    pub fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        let mut at = offset;
        for piece in buf.chunks(WRITE_PIECE) {
            self.file
                .write_all_at(piece, at)
                .map_err(|e| Error::io("write", &self.dest, Some(at), e))?;
            at += piece.len() as u64;
        }
        if buf.len() >= WRITEBACK_MIN && !self.in_memory {
            start_writeback(&self.file, offset, buf.len() as u64);
        }
        Ok(())
    }

    /// Sets the file length (holes read as zeros).
    pub fn set_len(&self, len: u64) -> Result<()> {
        self.file
            .set_len(len)
            .map_err(|e| Error::io("resize", &self.dest, Some(len), e))
    }

    /// Flushes to disk, gives the file its final permissions (0644 less the umask is not known here,
    /// so 0644) and renames it into place. Without `force`, an existing destination is never replaced.
    pub fn commit(mut self, mode: u32) -> Result<()> {
        self.file
            .sync_all()
            .map_err(|e| Error::io("flush", &self.dest, None, e))?;
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&self.tmp, fs::Permissions::from_mode(mode))
            .map_err(|e| Error::io("set permissions on", &self.dest, None, e))?;
        if self.force {
            fs::rename(&self.tmp, &self.dest)
                .map_err(|e| Error::io("rename output into", &self.dest, None, e))?;
        } else {
            // A hard link fails if the destination appeared meanwhile: no silent overwrite.
            fs::hard_link(&self.tmp, &self.dest).map_err(|e| {
                if e.kind() == io::ErrorKind::AlreadyExists {
                    Error::invalid("output file already exists")
                        .with_path(&self.dest)
                        .hint("pass --force to overwrite it")
                } else {
                    Error::io("rename output into", &self.dest, None, e)
                }
            })?;
            let _ = fs::remove_file(&self.tmp);
        }
        self.committed = true;
        Ok(())
    }
}

impl Drop for OutputFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropped_output_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.img");
        {
            let out = OutputFile::create(&dest, false).unwrap();
            out.write_at(b"partial", 0).unwrap();
        }
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    /// A large write (which also starts its writeback) lands whole, at its offset, in the committed file
    /// (in the test's temporary folder, on the disk where the checkout is when TMPDIR says so).
    #[test]
    fn large_writes_land_whole() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.img");
        let data: Vec<u8> = (0..3 << 20).map(|i: u32| (i % 251) as u8).collect();
        let out = OutputFile::create(&dest, false).unwrap();
        out.write_at(&data, 4096).unwrap();
        out.commit(0o600).unwrap();
        let back = fs::read(&dest).unwrap();
        assert_eq!(back.len(), 4096 + data.len());
        assert!(back[..4096].iter().all(|&b| b == 0));
        assert!(back[4096..] == data[..]);
    }

    /// A file in /dev/shm (when it is a tmpfs) is in memory; one beside the build is not, unless that
    /// is a tmpfs or ramfs too.
    #[test]
    fn tmpfs_outputs_are_known_to_be_in_memory() {
        let mounts = fs::read_to_string("/proc/mounts").unwrap_or_default();
        let in_ram = |dir: &str| {
            mounts
                .lines()
                .filter_map(|l| {
                    let mut f = l.split(' ');
                    Some((f.nth(1)?, f.next()?))
                })
                .filter(|(at, _)| dir.starts_with(at))
                .max_by_key(|(at, _)| at.len())
                .is_some_and(|(_, kind)| kind == "tmpfs" || kind == "ramfs")
        };
        for dir in ["/dev/shm", env!("CARGO_MANIFEST_DIR")] {
            let Ok(d) = tempfile::tempdir_in(dir) else {
                continue;
            };
            let out = OutputFile::create(&d.path().join("o"), false).unwrap();
            assert_eq!(out.in_memory, in_ram(dir), "{dir}");
        }
    }

    #[test]
    fn commit_refuses_to_clobber_without_force() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.img");
        fs::write(&dest, b"old").unwrap();
        assert!(OutputFile::create(&dest, false).is_err());
        let out = OutputFile::create(&dest, true).unwrap();
        out.write_at(b"new", 0).unwrap();
        out.commit(0o644).unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"new");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
