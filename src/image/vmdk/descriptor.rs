//! The VMDK text descriptor (Virtual Disk Format 5.0, "The Descriptor File"): `key=value` lines
//! (`version`, `CID`, `parentCID`, `createType`, `parentFileNameHint`), extent lines
//! (`ACCESS SECTORS TYPE "FILE" [OFFSET]`) and the disk database (`ddb.*`, kept for `info`).
//!
//! The text is parsed as written; what the extents and the parent mean is decided in `mod.rs`.

use crate::error::{Error, Result};

/// Largest descriptor read (QEMU reads at most 1 MiB too).
pub const MAX_SIZE: u64 = 1 << 20;

/// An extent's access mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// `RW`.
    ReadWrite,
    /// `RDONLY`.
    ReadOnly,
    /// `NOACCESS`.
    NoAccess,
}

/// One extent line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtentLine {
    /// 1-based line number in the descriptor.
    pub line: usize,
    /// Access mode.
    pub access: Access,
    /// Size in 512-byte sectors.
    pub sectors: u64,
    /// Type as written (`FLAT`, `SPARSE`, `ZERO`, `VMFS`, `VMFSSPARSE`, ...).
    pub kind: String,
    /// The extent file, as written (none for `ZERO`).
    pub file: Option<String>,
    /// Start of the data in the file, in sectors (`FLAT`/`VMFS`).
    pub offset: u64,
}

/// A parsed descriptor.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Descriptor {
    /// `createType`.
    pub create_type: Option<String>,
    /// `CID` (hex).
    pub cid: Option<String>,
    /// `parentCID` (hex; `ffffffff` means no parent).
    pub parent_cid: Option<String>,
    /// `parentFileNameHint`.
    pub parent_hint: Option<String>,
    /// The extents, in order.
    pub extents: Vec<ExtentLine>,
    /// `ddb.*` entries (adapter type, geometry, tools version, ...).
    pub ddb: Vec<(String, String)>,
}

fn unquote(v: &str) -> &str {
    let v = v.trim();
    v.strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(v)
}

impl Descriptor {
    /// Parses descriptor text (NUL bytes end it, as in an embedded descriptor's padding).
    pub fn parse(bytes: &[u8]) -> Result<Descriptor> {
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        let text = std::str::from_utf8(&bytes[..end]).map_err(|e| {
            Error::format("VMDK descriptor is not text (invalid UTF-8)").at(e.valid_up_to() as u64)
        })?;
        let mut d = Descriptor::default();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let first = line.split_whitespace().next().unwrap_or("");
            let access = match first {
                "RW" => Some(Access::ReadWrite),
                "RDONLY" => Some(Access::ReadOnly),
                "NOACCESS" => Some(Access::NoAccess),
                _ => None,
            };
            if let Some(access) = access {
                d.extents.push(extent_line(i + 1, access, line)?);
                continue;
            }
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            let (k, v) = (k.trim(), unquote(v));
            match k {
                "createType" => d.create_type = Some(v.to_owned()),
                "CID" => d.cid = Some(v.to_owned()),
                "parentCID" => d.parent_cid = Some(v.to_owned()),
                "parentFileNameHint" => d.parent_hint = Some(v.to_owned()),
                _ if k.starts_with("ddb.") && d.ddb.len() < 64 => {
                    d.ddb.push((k.to_owned(), v.to_owned()))
                }
                _ => {}
            }
        }
        Ok(d)
    }
}

/// `ACCESS SECTORS TYPE ["FILE" [OFFSET]]`.
fn extent_line(line: usize, access: Access, text: &str) -> Result<ExtentLine> {
    let bad = |what: &str| {
        Error::corrupt(format!(
            "VMDK descriptor line {line}: {what} in extent line {text:?}"
        ))
        .hint("an extent line reads: RW <sectors> SPARSE|FLAT|ZERO|VMFS|VMFSSPARSE \"<file>\" [<offset>]")
    };
    let mut rest = text
        .split_once(char::is_whitespace)
        .map_or("", |x| x.1)
        .trim_start();
    let mut word = || {
        let (w, r) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
        rest = r.trim_start();
        w
    };
    let sectors: u64 = word()
        .parse()
        .map_err(|_| bad("the size is not a number"))?;
    let kind = word().to_owned();
    if kind.is_empty() {
        return Err(bad("no extent type"));
    }
    let (file, tail) = if let Some(q) = rest.strip_prefix('"') {
        let (name, tail) = q
            .split_once('"')
            .ok_or_else(|| bad("unterminated file name"))?;
        (Some(name.to_owned()), tail.trim())
    } else {
        (None, rest.trim())
    };
    let offset = if tail.is_empty() {
        0
    } else {
        tail.parse()
            .map_err(|_| bad("the offset is not a number"))?
    };
    if file.is_none() && kind != "ZERO" {
        return Err(bad("no file name"));
    }
    Ok(ExtentLine {
        line,
        access,
        sectors,
        kind,
        file,
        offset,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_qemu_img_writes() {
        let text = b"# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType=\"twoGbMaxExtentFlat\"\n\n# Extent description\nRW 4194304 FLAT \"a-f001.vmdk\" 0\nRDONLY 100 ZERO\nRW 8 SPARSE \"b c.vmdk\"\n\n# The Disk Data Base\n#DDB\n\nddb.virtualHWVersion = \"4\"\nddb.adapterType = \"ide\"\n\0\0\0";
        let d = Descriptor::parse(text).unwrap();
        assert_eq!(d.create_type.as_deref(), Some("twoGbMaxExtentFlat"));
        assert_eq!(d.parent_cid.as_deref(), Some("ffffffff"));
        assert_eq!(d.extents.len(), 3);
        assert_eq!(d.extents[0].file.as_deref(), Some("a-f001.vmdk"));
        assert_eq!(d.extents[1].kind, "ZERO");
        assert_eq!(d.extents[1].access, Access::ReadOnly);
        assert_eq!(d.extents[2].file.as_deref(), Some("b c.vmdk"));
        assert_eq!(d.ddb[1], ("ddb.adapterType".into(), "ide".into()));
        assert!(Descriptor::parse(b"RW x FLAT \"a\"").is_err());
        assert!(Descriptor::parse(b"RW 1 FLAT \"a").is_err());
        assert!(Descriptor::parse(b"RW 1 FLAT").is_err());
    }
}
