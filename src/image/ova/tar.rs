//! The tar index of an OVA (POSIX.1-2001 ustar, with the pax `x` and GNU `L` long-name extensions
//! that `tar` writes): the name, offset and size of every regular file, found by walking the 512-byte
//! headers without reading any file's data. Checksums, octal/base-256 sizes and bounds are checked.

use std::fs::File;
use std::path::Path;

use crate::error::{Error, Result};
use crate::io::read_exact_at;

/// Most entries read from one archive.
pub const MAX_ENTRIES: usize = 10_000;
/// Largest pax header or GNU long name read.
pub const MAX_META: u64 = 1 << 20;

/// A regular file in the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The name (path inside the archive).
    pub name: String,
    /// Offset of its data in the archive file.
    pub offset: u64,
    /// Its size.
    pub size: u64,
}

/// True when `head` (at least 512 bytes) is a tar header: "ustar" magic and a right checksum.
pub fn is_tar(head: &[u8]) -> bool {
    head.len() >= 512 && &head[257..262] == b"ustar" && header_checksum_ok(&head[..512])
}

fn header_checksum_ok(h: &[u8]) -> bool {
    let Some(stored) = octal(&h[148..156]) else {
        return false;
    };
    let sum: u64 = h
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u64::from(b)
            }
        })
        .sum();
    sum == stored
}

/// An octal field (NUL/space terminated), or a base-256 one (high bit of the first byte set).
fn octal(f: &[u8]) -> Option<u64> {
    if f.first().is_some_and(|&b| b & 0x80 != 0) {
        let mut v: u64 = u64::from(f[0] & 0x7f);
        for &b in &f[1..] {
            v = v.checked_mul(256)?.checked_add(u64::from(b))?;
        }
        return Some(v);
    }
    let t: Vec<u8> = f
        .iter()
        .copied()
        .skip_while(|&b| b == b' ')
        .take_while(|&b| b != 0 && b != b' ')
        .collect();
    if t.is_empty() {
        return Some(0);
    }
    let s = std::str::from_utf8(&t).ok()?;
    u64::from_str_radix(s, 8).ok()
}

fn text(f: &[u8]) -> String {
    let end = f.iter().position(|&b| b == 0).unwrap_or(f.len());
    String::from_utf8_lossy(&f[..end]).into_owned()
}

/// The regular files of the archive at `path` (length `len`).
pub fn index(file: &File, path: &Path, len: u64) -> Result<Vec<Entry>> {
    let mut out = Vec::new();
    let mut pos = 0u64;
    let mut long_name: Option<String> = None;
    let mut pax_size: Option<u64> = None;
    let mut h = [0u8; 512];
    while pos + 512 <= len {
        read_exact_at(file, path, &mut h, pos)?;
        if h.iter().all(|&b| b == 0) {
            break;
        }
        let bad = |msg: String| {
            Error::corrupt(msg)
                .with_path(path)
                .at(pos)
                .hint("the OVA archive is damaged or truncated")
        };
        if !header_checksum_ok(&h) {
            return Err(bad("tar header checksum mismatch".into()));
        }
        let size = octal(&h[124..136])
            .ok_or_else(|| bad("tar header size field is not a number".into()))?;
        let size = pax_size.take().unwrap_or(size);
        let data = pos + 512;
        let next = data
            .checked_add(size.next_multiple_of(512))
            .ok_or_else(|| bad("tar entry size overflows".into()))?;
        let mut name = text(&h[..100]);
        if &h[257..262] == b"ustar" && h[345] != 0 {
            name = format!("{}/{name}", text(&h[345..500]));
        }
        let name = long_name.take().unwrap_or(name);
        if data.checked_add(size).is_none_or(|e| e > len) {
            return Err(bad(format!(
                "tar entry {name:?} ({size} bytes at {data:#x}) runs past the end of the archive ({len} bytes)"
            )));
        }
        let read_meta = |what: &str| -> Result<Vec<u8>> {
            if size > MAX_META {
                return Err(bad(format!("tar {what} of {size} bytes is too large")));
            }
            let mut b = vec![0u8; size as usize];
            read_exact_at(file, path, &mut b, data)?;
            Ok(b)
        };
        match h[156] {
            b'0' | 0 | b'7' => {
                if out.len() >= MAX_ENTRIES {
                    return Err(bad(format!("more than {MAX_ENTRIES} files in the archive")));
                }
                out.push(Entry {
                    name: name.trim_start_matches("./").to_owned(),
                    offset: data,
                    size,
                });
            }
            b'L' => long_name = Some(text(&read_meta("long name")?)),
            b'x' => {
                let b = read_meta("pax header")?;
                for (k, v) in pax_records(&b) {
                    match k.as_str() {
                        "path" => long_name = Some(v),
                        "size" => {
                            pax_size =
                                Some(v.parse().map_err(|_| {
                                    bad(format!("tar pax size {v:?} is not a number"))
                                })?)
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
        pos = next;
    }
    Ok(out)
}

/// The `LEN key=value\n` records of a pax header.
fn pax_records(b: &[u8]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = b;
    while !rest.is_empty() {
        let Some(sp) = rest.iter().position(|&c| c == b' ') else {
            break;
        };
        let Some(n) = std::str::from_utf8(&rest[..sp])
            .ok()
            .and_then(|s| s.parse::<usize>().ok())
        else {
            break;
        };
        if n <= sp + 1 || n > rest.len() {
            break;
        }
        let rec = &rest[sp + 1..n];
        let rec = rec.strip_suffix(b"\n").unwrap_or(rec);
        if let Some(eq) = rec.iter().position(|&c| c == b'=') {
            out.push((
                String::from_utf8_lossy(&rec[..eq]).into_owned(),
                String::from_utf8_lossy(&rec[eq + 1..]).into_owned(),
            ));
        }
        rest = &rest[n..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields() {
        assert_eq!(octal(b"0000644\0"), Some(0o644));
        assert_eq!(octal(b"     12 "), Some(0o12));
        assert_eq!(octal(&[0x80, 0, 0, 0, 0, 0, 0, 1, 0]), Some(256));
        assert_eq!(octal(b"9"), None);
        assert_eq!(
            pax_records(b"19 path=a/b/c.vmdk\n11 size=99\n"),
            vec![
                ("path".into(), "a/b/c.vmdk".into()),
                ("size".into(), "99".into())
            ]
        );
        assert!(pax_records(b"99 x").is_empty());
    }
}
