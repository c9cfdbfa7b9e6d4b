//! The LUKS2 JSON metadata: a checked model of `keyslots`, `segments`, `digests` and `config`, parsed
//! with errors that name the JSON path (`segments.0.offset`), and the writer's JSON in cryptsetup's
//! field order.
//!
//! Rules are cryptsetup's validators (`lib/luks2/luks2_json_metadata.c`, `LUKS2_hdr_validate`), see
//! `formats.md` §1.3–1.4: uint64 values are decimal strings, ints are JSON numbers, object keys are
//! decimal ids, areas lie inside the keyslots area and do not overlap, every crypt segment has a digest.

use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// One keyslot as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keyslot {
    /// Keyslot id.
    pub id: u32,
    /// `type` (only "luks2" keyslots hold a passphrase-protected key).
    pub kind: String,
    /// Size of the volume key this slot holds.
    pub key_size: u32,
    /// Details of a "luks2" keyslot.
    pub luks2: Option<Luks2Slot>,
    /// `priority` (0 = ignore, 1 = normal, 2 = high), when given.
    pub priority: Option<u64>,
}

/// The parts of a "luks2" keyslot needed to unlock it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Luks2Slot {
    /// `af.hash`.
    pub af_hash: String,
    /// `af.stripes`.
    pub stripes: u32,
    /// `area.offset`.
    pub area_offset: u64,
    /// `area.size`.
    pub area_size: u64,
    /// `area.encryption`.
    pub area_encryption: String,
    /// `area.key_size`.
    pub area_key_size: u32,
    /// `kdf.type`.
    pub kdf_type: String,
    /// `kdf.hash` (pbkdf2).
    pub kdf_hash: Option<String>,
    /// `kdf.iterations` (pbkdf2).
    pub iterations: Option<u32>,
    /// `kdf.time` (argon2).
    pub time: Option<u32>,
    /// `kdf.memory` in KiB (argon2).
    pub memory: Option<u32>,
    /// `kdf.cpus` (argon2).
    pub cpus: Option<u32>,
    /// `kdf.salt`, decoded.
    pub salt: Vec<u8>,
}

/// One segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Segment id.
    pub id: u32,
    /// `type` ("crypt", "linear" during reencryption).
    pub kind: String,
    /// Byte offset of the data.
    pub offset: u64,
    /// Fixed size in bytes, or `None` for "dynamic".
    pub size: Option<u64>,
    /// `iv_tweak` (crypt).
    pub iv_tweak: u64,
    /// `encryption` (crypt).
    pub encryption: String,
    /// `sector_size` (crypt).
    pub sector_size: u32,
    /// `flags` (e.g. "backup-previous" while a re-encryption is in progress).
    pub flags: Vec<String>,
}

impl Segment {
    /// A re-encryption backup segment (`backup-previous`, `backup-final`, `backup-moved-segment`):
    /// it describes a key, not data on the device.
    pub fn is_backup(&self) -> bool {
        self.flags.iter().any(|f| f.starts_with("backup-"))
    }
}

/// One digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digest {
    /// Digest id.
    pub id: u32,
    /// `type` (only "pbkdf2" exists).
    pub kind: String,
    /// Keyslots it verifies.
    pub keyslots: Vec<u32>,
    /// Segments it covers.
    pub segments: Vec<u32>,
    /// `hash`.
    pub hash: String,
    /// `iterations`.
    pub iterations: u32,
    /// `salt`, decoded.
    pub salt: Vec<u8>,
    /// `digest`, decoded.
    pub digest: Vec<u8>,
}

/// The `config` object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `json_size`.
    pub json_size: u64,
    /// `keyslots_size`.
    pub keyslots_size: u64,
    /// `flags` (e.g. "allow-discards").
    pub flags: Vec<String>,
    /// `requirements.mandatory`: features a reader must implement to use the device.
    pub requirements: Vec<String>,
}

/// The whole checked metadata.
#[derive(Debug, Clone)]
pub struct Metadata {
    /// Keyslots by id.
    pub keyslots: Vec<Keyslot>,
    /// Number of tokens.
    pub tokens: usize,
    /// Segments by id.
    pub segments: Vec<Segment>,
    /// Digests by id.
    pub digests: Vec<Digest>,
    /// Config.
    pub config: Config,
    /// The parsed JSON, for `dump --json`.
    pub raw: Value,
    /// Things cryptsetup 2.6 accepts but newer versions or the spec frown upon.
    pub warnings: Vec<String>,
}

/// A JSON object with the path that leads to it, so every error names the field.
struct Obj<'a> {
    map: &'a Map<String, Value>,
    path: String,
}

fn err(path: &str, what: impl std::fmt::Display) -> Error {
    Error::corrupt(format!("LUKS2 JSON {path}: {what}"))
}

impl<'a> Obj<'a> {
    fn new(v: &'a Value, path: String) -> Result<Self> {
        match v.as_object() {
            Some(map) => Ok(Obj { map, path }),
            None => Err(err(&path, "is not an object")),
        }
    }
    fn field(&self, name: &str) -> String {
        if self.path.is_empty() {
            name.to_owned()
        } else {
            format!("{}.{name}", self.path)
        }
    }
    fn get(&self, name: &str) -> Result<&'a Value> {
        self.map
            .get(name)
            .ok_or_else(|| err(&self.field(name), "is missing"))
    }
    fn obj(&self, name: &str) -> Result<Obj<'a>> {
        Obj::new(self.get(name)?, self.field(name))
    }
    fn string(&self, name: &str) -> Result<&'a str> {
        self.get(name)?
            .as_str()
            .ok_or_else(|| err(&self.field(name), "must be a string"))
    }
    fn opt_string(&self, name: &str) -> Result<Option<&'a str>> {
        if self.map.contains_key(name) {
            self.string(name).map(Some)
        } else {
            Ok(None)
        }
    }
    /// A "string-uint64": decimal digits only, no overflow.
    fn u64_str(&self, name: &str) -> Result<u64> {
        let s = self.string(name)?;
        parse_u64(s).ok_or_else(|| err(&self.field(name), format!("{s:?} is not a decimal uint64")))
    }
    fn u32_int(&self, name: &str) -> Result<u32> {
        let v = self.get(name)?;
        v.as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| {
                err(
                    &self.field(name),
                    format!("{v} is not an unsigned 32-bit integer"),
                )
            })
    }
    fn opt_u32(&self, name: &str) -> Result<Option<u32>> {
        if self.map.contains_key(name) {
            self.u32_int(name).map(Some)
        } else {
            Ok(None)
        }
    }
    fn base64(&self, name: &str) -> Result<Vec<u8>> {
        use base64::Engine;
        let s = self.string(name)?;
        base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(|_| err(&self.field(name), "is not valid base64"))
    }
    fn ids(&self, name: &str) -> Result<Vec<u32>> {
        let path = self.field(name);
        let arr = self
            .get(name)?
            .as_array()
            .ok_or_else(|| err(&path, "must be an array"))?;
        arr.iter()
            .map(|v| {
                v.as_str()
                    .and_then(parse_id)
                    .ok_or_else(|| err(&path, format!("{v} is not a numbered id string")))
            })
            .collect()
    }
    /// The members of a numbered-object map ("0", "1", ...), in id order.
    fn numbered(&self, name: &str) -> Result<Vec<(u32, Obj<'a>)>> {
        let o = self.obj(name)?;
        let mut out = Vec::new();
        for (k, v) in o.map {
            let path = o.field(k);
            let id = parse_id(k).ok_or_else(|| err(&path, "object key is not a decimal id"))?;
            out.push((id, Obj::new(v, path)?));
        }
        out.sort_by_key(|(id, _)| *id);
        Ok(out)
    }
}

fn parse_u64(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn parse_id(s: &str) -> Option<u32> {
    if s.len() > 9 {
        None
    } else {
        parse_u64(s).map(|n| n as u32)
    }
}

impl Metadata {
    /// The segment that holds the data: the first crypt segment that is not a re-encryption backup.
    pub fn data_segment(&self) -> Option<&Segment> {
        self.segments
            .iter()
            .find(|s| !s.is_backup() && s.kind == "crypt")
    }

    /// True when keyslot `id` is assigned (through its digest) to the data segment; an unbound keyslot
    /// (`cryptsetup luksAddKey --unbound`) holds some other key and cannot unlock the data.
    pub fn is_bound(&self, id: u32) -> bool {
        self.data_segment().is_some_and(|s| {
            self.digests
                .iter()
                .any(|d| d.keyslots.contains(&id) && d.segments.contains(&s.id))
        })
    }

    /// Parses and validates the JSON text of a header with binary `hdr_size` on a file of `file_len` bytes.
    pub fn parse(text: &str, hdr_size: u64, file_len: u64) -> Result<Metadata> {
        let raw: Value = serde_json::from_str(text)
            .map_err(|e| Error::corrupt(format!("LUKS2 JSON does not parse: {e}")))?;
        let root = Obj::new(&raw, String::new())?;

        let cfg = root.obj("config")?;
        let mut config = Config {
            json_size: cfg.u64_str("json_size")?,
            keyslots_size: cfg.u64_str("keyslots_size")?,
            flags: match cfg.map.get("flags") {
                None => Vec::new(),
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|f| {
                        f.as_str()
                            .map(str::to_owned)
                            .ok_or_else(|| err("config.flags", "must hold strings"))
                    })
                    .collect::<Result<_>>()?,
                Some(_) => return Err(err("config.flags", "must be an array")),
            },
            requirements: Vec::new(),
        };
        if let Some(req) = cfg.map.get("requirements") {
            let req = Obj::new(req, "config.requirements".into())?;
            if let Some(m) = req.map.get("mandatory") {
                let names: Vec<String> = m
                    .as_array()
                    .ok_or_else(|| err("config.requirements.mandatory", "must be an array"))?
                    .iter()
                    .map(|v| v.as_str().unwrap_or("?").to_owned())
                    .collect();
                config.requirements = names;
            }
        }
        if config.json_size != hdr_size - 4096 {
            return Err(err(
                "config.json_size",
                format!(
                    "{} does not match the binary header's JSON area of {} bytes",
                    config.json_size,
                    hdr_size - 4096
                ),
            ));
        }
        if !config.keyslots_size.is_multiple_of(4096) || config.keyslots_size > 128 * 1024 * 1024 {
            return Err(err(
                "config.keyslots_size",
                format!(
                    "{} is not 4 KiB-aligned or exceeds 128 MiB",
                    config.keyslots_size
                ),
            ));
        }
        let areas_end = 2 * hdr_size + config.keyslots_size;

        let mut warnings = Vec::new();
        let mut keyslots = Vec::new();
        for (id, o) in root.numbered("keyslots")? {
            let kind = o.string("type")?.to_owned();
            let key_size = o.u32_int("key_size")?;
            let priority = match o.map.get("priority") {
                None => None,
                Some(v) => Some(
                    v.as_u64()
                        .ok_or_else(|| err(&o.field("priority"), "must be an integer"))?,
                ),
            };
            let luks2 = if kind == "luks2" {
                Some(parse_luks2_slot(&o, &mut warnings)?)
            } else {
                None
            };
            if let Some(s) = &luks2 {
                let area_path = o.field("area");
                if s.area_size == 0 {
                    return Err(err(&area_path, "size is zero"));
                }
                let end = s
                    .area_offset
                    .checked_add(s.area_size)
                    .ok_or_else(|| err(&area_path, "offset + size overflows"))?;
                if s.area_offset < 2 * hdr_size || end > areas_end {
                    return Err(err(
                        &area_path,
                        format!(
                            "[{:#x}, {end:#x}) lies outside the keyslots area [{:#x}, {areas_end:#x})",
                            s.area_offset,
                            2 * hdr_size
                        ),
                    ));
                }
                if end > file_len {
                    return Err(err(
                        &area_path,
                        format!("ends at {end:#x}, beyond the end of the file ({file_len:#x})"),
                    )
                    .hint("the file is truncated"));
                }
            }
            keyslots.push(Keyslot {
                id,
                kind,
                key_size,
                luks2,
                priority,
            });
        }
        // Areas must not overlap.
        let mut areas: Vec<(u64, u64, u32)> = keyslots
            .iter()
            .filter_map(|k| k.luks2.as_ref().map(|s| (s.area_offset, s.area_size, k.id)))
            .collect();
        areas.sort();
        for w in areas.windows(2) {
            if w[0].0 + w[0].1 > w[1].0 {
                return Err(err(
                    &format!("keyslots.{}.area", w[1].2),
                    format!("overlaps keyslot {}", w[0].2),
                ));
            }
        }

        let mut segments = Vec::new();
        for (id, o) in root.numbered("segments")? {
            let kind = o.string("type")?.to_owned();
            let offset = o.u64_str("offset")?;
            let size = match o.string("size")? {
                "dynamic" => None,
                _ => Some(o.u64_str("size")?),
            };
            if offset % 512 != 0 {
                return Err(err(
                    &o.field("offset"),
                    format!("{offset} is not 512-byte aligned"),
                ));
            }
            if let Some(s) = size {
                if s == 0 || s % 512 != 0 {
                    return Err(err(
                        &o.field("size"),
                        format!("{s} is zero or not 512-byte aligned"),
                    ));
                }
                if offset.checked_add(s).is_none() {
                    return Err(err(&o.field("size"), "offset + size overflows"));
                }
            }
            let (iv_tweak, encryption, sector_size) = if kind == "crypt" {
                let ss = o.u32_int("sector_size")?;
                if !matches!(ss, 512 | 1024 | 2048 | 4096) {
                    return Err(err(
                        &o.field("sector_size"),
                        format!("{ss} is not 512, 1024, 2048 or 4096"),
                    ));
                }
                if size.is_some_and(|s| s % u64::from(ss) != 0) {
                    return Err(err(
                        &o.field("size"),
                        format!("is not a multiple of sector_size {ss}"),
                    ));
                }
                let enc = o.string("encryption")?;
                if enc.is_empty() {
                    return Err(err(&o.field("encryption"), "is empty"));
                }
                (o.u64_str("iv_tweak")?, enc.to_owned(), ss)
            } else {
                (0, String::new(), 512)
            };
            let flags = match o.map.get("flags") {
                None => Vec::new(),
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|f| {
                        f.as_str()
                            .map(str::to_owned)
                            .ok_or_else(|| err(&o.field("flags"), "must hold strings"))
                    })
                    .collect::<Result<_>>()?,
                Some(_) => return Err(err(&o.field("flags"), "must be an array")),
            };
            segments.push(Segment {
                id,
                kind,
                offset,
                size,
                iv_tweak,
                encryption,
                sector_size,
                flags,
            });
        }
        if segments.is_empty() {
            return Err(err("segments", "has no segment"));
        }
        for (i, s) in segments.iter().enumerate() {
            if s.id as usize != i {
                return Err(err(
                    "segments",
                    format!("ids must run 0..n-1, found {}", s.id),
                ));
            }
        }
        // Backup segments (re-encryption) are set apart, as cryptsetup's validator does.
        let data: Vec<&Segment> = segments.iter().filter(|s| !s.is_backup()).collect();
        for (i, s) in data.iter().enumerate() {
            if s.size.is_none() && i + 1 != data.len() {
                return Err(err(
                    &format!("segments.{}.size", s.id),
                    "only the last segment may be dynamic",
                ));
            }
        }
        let min_offset = segments.iter().map(|s| s.offset).min().unwrap_or(0);
        if min_offset != 0 && min_offset < areas_end {
            return Err(err(
                "segments",
                format!(
                    "data offset {min_offset:#x} overlaps the metadata and keyslots area ending at {areas_end:#x}"
                ),
            ));
        }

        let mut digests = Vec::new();
        for (id, o) in root.numbered("digests")? {
            let kind = o.string("type")?.to_owned();
            let keyslot_ids = o.ids("keyslots")?;
            let segment_ids = o.ids("segments")?;
            for k in &keyslot_ids {
                if !keyslots.iter().any(|s| s.id == *k) {
                    return Err(err(
                        &o.field("keyslots"),
                        format!("references missing keyslot {k}"),
                    ));
                }
            }
            for s in &segment_ids {
                if !segments.iter().any(|x| x.id == *s) {
                    return Err(err(
                        &o.field("segments"),
                        format!("references missing segment {s}"),
                    ));
                }
            }
            let (hash, iterations, salt, digest) = if kind == "pbkdf2" {
                (
                    o.string("hash")?.to_owned(),
                    o.u32_int("iterations")?,
                    o.base64("salt")?,
                    o.base64("digest")?,
                )
            } else {
                (String::new(), 0, Vec::new(), Vec::new())
            };
            digests.push(Digest {
                id,
                kind,
                keyslots: keyslot_ids,
                segments: segment_ids,
                hash,
                iterations,
                salt,
                digest,
            });
        }
        for s in segments.iter().filter(|s| s.kind == "crypt") {
            if !digests.iter().any(|d| d.segments.contains(&s.id)) {
                return Err(err(
                    &format!("segments.{}", s.id),
                    "is not referenced by any digest",
                ));
            }
        }
        for k in keyslots.iter().filter(|k| k.kind == "luks2") {
            let n = digests
                .iter()
                .filter(|d| d.keyslots.contains(&k.id))
                .count();
            if n != 1 {
                return Err(err(
                    &format!("keyslots.{}", k.id),
                    format!("is assigned to {n} digests, expected exactly 1"),
                ));
            }
        }

        let tokens_obj = root.obj("tokens")?;
        for (k, v) in tokens_obj.map {
            let t = Obj::new(v, tokens_obj.field(k))?;
            t.string("type")?;
            for id in t.ids("keyslots")? {
                if !keyslots.iter().any(|s| s.id == id) {
                    return Err(err(
                        &t.field("keyslots"),
                        format!("references missing keyslot {id}"),
                    ));
                }
            }
        }
        let tokens = tokens_obj.map.len();
        Ok(Metadata {
            keyslots,
            tokens,
            segments,
            digests,
            config,
            raw,
            warnings,
        })
    }
}

fn parse_luks2_slot(o: &Obj<'_>, warnings: &mut Vec<String>) -> Result<Luks2Slot> {
    let af = o.obj("af")?;
    if af.string("type")? != "luks1" {
        return Err(err(&af.field("type"), "must be \"luks1\""));
    }
    let area = o.obj("area")?;
    if area.string("type")? != "raw" {
        return Err(Error::unsupported(format!(
            "LUKS2 JSON {}: keyslot area type is not \"raw\"",
            area.field("type")
        )));
    }
    let kdf = o.obj("kdf")?;
    let kdf_type = kdf.string("type")?.to_owned();
    let expected: &[&str] = match kdf_type.as_str() {
        "pbkdf2" => &["type", "hash", "iterations", "salt"],
        "argon2i" | "argon2id" => &["type", "time", "memory", "cpus", "salt"],
        other => {
            return Err(Error::unsupported(format!(
                "LUKS2 JSON {}: unknown KDF {other:?}",
                kdf.field("type")
            )));
        }
    };
    // cryptsetup 2.6 ignores extra members; later versions refuse them ("pbkdf2-leftover-params").
    for key in kdf.map.keys() {
        if !expected.contains(&key.as_str()) {
            warnings.push(format!("LUKS2 JSON {} is not a {kdf_type} parameter (ignored; cryptsetup >= 2.7 refuses it)", kdf.field(key)));
        }
    }
    Ok(Luks2Slot {
        af_hash: af.string("hash")?.to_owned(),
        stripes: af.u32_int("stripes")?,
        area_offset: area.u64_str("offset")?,
        area_size: area.u64_str("size")?,
        area_encryption: area.string("encryption")?.to_owned(),
        area_key_size: area.u32_int("key_size")?,
        kdf_type,
        kdf_hash: kdf.opt_string("hash")?.map(str::to_owned),
        iterations: kdf.opt_u32("iterations")?,
        time: kdf.opt_u32("time")?,
        memory: kdf.opt_u32("memory")?,
        cpus: kdf.opt_u32("cpus")?,
        salt: kdf.base64("salt")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The metadata cryptsetup 2.6.1 wrote (formats.md §1.3), on a 32 MiB file.
    const CRYPTSETUP: &str = r#"{"keyslots":{"0":{"type":"luks2","key_size":64,"af":{"type":"luks1","stripes":4000,"hash":"sha256"},"area":{"type":"raw","offset":"32768","size":"258048","encryption":"aes-xts-plain64","key_size":64},"kdf":{"type":"pbkdf2","hash":"sha256","iterations":1000,"salt":"tIJOjsobyj+8gHh2lRe+2uoXNocNPKqPYcqQilXp/zM="}}},"tokens":{},"segments":{"0":{"type":"crypt","offset":"16777216","size":"dynamic","iv_tweak":"0","encryption":"aes-xts-plain64","sector_size":4096}},"digests":{"0":{"type":"pbkdf2","keyslots":["0"],"segments":["0"],"hash":"sha256","iterations":1000,"salt":"rPO9iTFDDT9x7rlz4dxQsn5cfq8h+Q5sYTMgBrL+gBg=","digest":"PDo4nRY2jjsY49JjqqHhiRg9sl+WXxwldadnCrZNGk0="}},"config":{"json_size":"12288","keyslots_size":"16744448"}}"#;

    fn parse(text: &str) -> Result<Metadata> {
        Metadata::parse(text, 16384, 32 << 20)
    }

    #[test]
    fn accepts_cryptsetup_output() {
        let m = parse(CRYPTSETUP).unwrap();
        assert_eq!(m.segments[0].offset, 16 << 20);
        assert_eq!(m.segments[0].sector_size, 4096);
        assert_eq!(m.keyslots[0].luks2.as_ref().unwrap().area_size, 258048);
        assert_eq!(m.digests[0].digest.len(), 32);
    }

    fn mutated(from: &str, to: &str) -> String {
        assert!(CRYPTSETUP.contains(from), "{from}");
        CRYPTSETUP.replacen(from, to, 1)
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                r#""offset":"16777216""#,
                r#""offset":"16777217""#,
                "segments.0.offset",
            ),
            (
                r#""offset":"16777216""#,
                r#""offset":"99999999999999999999""#,
                "segments.0.offset",
            ),
            (
                r#""offset":"32768""#,
                r#""offset":"4096""#,
                "keyslots.0.area",
            ),
            (
                r#""offset":"32768""#,
                r#""offset":32768"#,
                "keyslots.0.area.offset",
            ),
            (
                r#""json_size":"12288""#,
                r#""json_size":"12289""#,
                "config.json_size",
            ),
            (
                r#""keyslots":["0"]"#,
                r#""keyslots":["3"]"#,
                "digests.0.keyslots",
            ),
            (r#""segments":["0"]"#, r#""segments":[]"#, "segments.0"),
            (
                r#""sector_size":4096"#,
                r#""sector_size":3000"#,
                "segments.0.sector_size",
            ),
        ];
        for (from, to, field) in cases {
            let e = parse(&mutated(from, to)).unwrap_err();
            assert!(e.message().contains(field), "{field}: {e}");
        }
    }

    #[test]
    fn records_requirements_and_leftover_kdf_params() {
        let t = mutated(
            r#""keyslots_size":"16744448""#,
            r#""keyslots_size":"16744448","requirements":{"mandatory":["future-thing"]}"#,
        );
        assert_eq!(parse(&t).unwrap().config.requirements, ["future-thing"]);
        let t = mutated(
            r#""iterations":1000,"salt":"t"#,
            r#""iterations":1000,"extra":1,"salt":"t"#,
        );
        assert!(parse(&t).unwrap().warnings[0].contains("keyslots.0.kdf.extra"));
    }

    #[test]
    fn keyslot_beyond_eof() {
        let e = Metadata::parse(CRYPTSETUP, 16384, 100_000).unwrap_err();
        assert!(e.message().contains("beyond the end of the file"), "{e}");
    }

    #[test]
    fn missing_and_wrong_types() {
        assert!(parse("[]").unwrap_err().message().contains("not an object"));
        assert!(
            parse("{}")
                .unwrap_err()
                .message()
                .contains("config: is missing")
        );
        let e = parse(&mutated(r#""tokens":{},"#, "")).unwrap_err();
        assert!(e.message().contains("tokens: is missing"), "{e}");
    }
}
