//! File plumbing: positional reads and writes with errors that name the path and offset, and
//! [`OutputFile`], which writes to a temporary file beside the destination and only renames it into
//! place on success, so no half-written image is ever left behind. A run that was killed (SIGKILL, power
//! loss) leaves `.NAME.diskseal-PID-N.tmp`; the next run for the same destination removes it.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

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

/// True when `a` and `b` name the same existing file (same device and inode).
pub fn same_file(a: &Path, b: &Path) -> bool {
    match (fs::metadata(a), fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// Refuses an existing `dest` unless `force`: "output file already exists" (checked before slow work,
/// and again by [`OutputFile::create`]).
pub fn check_new_output(dest: &Path, force: bool) -> Result<()> {
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
}

impl OutputFile {
    /// Creates the temporary file for `dest`. Fails if `dest` exists and `force` is false.
    pub fn create(dest: &Path, force: bool) -> Result<OutputFile> {
        check_new_output(dest, force)?;
        if fs::metadata(dest).is_ok_and(|m| m.is_dir()) {
            return Err(Error::invalid("output is a directory").with_path(dest));
        }
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
                        file,
                        tmp,
                        dest: dest.to_owned(),
                        force,
                        committed: false,
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

    /// Writes all of `buf` at `offset`.
    pub fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.file
            .write_all_at(buf, offset)
            .map_err(|e| Error::io("write", &self.dest, Some(offset), e))
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
