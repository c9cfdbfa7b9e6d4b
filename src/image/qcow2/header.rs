//! The qcow2 header in cluster 0: [`RawHeader`] mirrors the big-endian bytes (decode and encode live
//! together and round-trip), [`Extension`] the `type, length, data` records that follow it, and
//! [`Header`] is the checked form the reader works with. Every refusal names the field and its offset.

use std::path::Path;

use crate::error::{Error, Result};

/// "QFI\xfb".
pub const MAGIC: [u8; 4] = *b"QFI\xfb";
/// Length of a version 2 header.
pub const V2_HEADER_LEN: usize = 72;
/// Shortest version 3 header (without the compression type byte).
pub const V3_MIN_HEADER_LEN: usize = 104;
/// Smallest cluster_bits QEMU accepts.
pub const MIN_CLUSTER_BITS: u32 = 9;
/// Largest cluster_bits QEMU accepts (2 MiB clusters).
pub const MAX_CLUSTER_BITS: u32 = 21;
/// QEMU's limit on the L1 table size in bytes.
pub const MAX_L1_BYTES: u64 = 32 << 20;
/// Longest backing file name QEMU accepts.
pub const MAX_BACKING_NAME: u32 = 1023;

/// Extension type: backing file format name.
pub const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
/// Extension type: feature name table.
pub const EXT_FEATURE_NAMES: u32 = 0x6803_f857;
/// Extension type: bitmaps directory.
pub const EXT_BITMAPS: u32 = 0x2385_2875;
/// Extension type: full disk encryption header pointer.
pub const EXT_FDE: u32 = 0x0537_be77;
/// Extension type: external data file name.
pub const EXT_DATA_FILE: u32 = 0x4441_5441;

/// Incompatible feature bit 0: the image was not closed cleanly (refcounts may be stale).
pub const INCOMPAT_DIRTY: u64 = 1 << 0;
/// Incompatible feature bit 1: QEMU found the image corrupt.
pub const INCOMPAT_CORRUPT: u64 = 1 << 1;
/// Incompatible feature bit 2: guest data lives in an external data file.
pub const INCOMPAT_DATA_FILE: u64 = 1 << 2;
/// Incompatible feature bit 3: the compression type field is not zlib.
pub const INCOMPAT_COMPRESSION: u64 = 1 << 3;
/// Incompatible feature bit 4: extended L2 entries (subclusters).
pub const INCOMPAT_EXTL2: u64 = 1 << 4;
/// Compatible feature bit 0: lazy refcounts.
pub const COMPAT_LAZY_REFCOUNTS: u64 = 1 << 0;

const KNOWN_INCOMPAT: u64 =
    INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2;

/// The header fields exactly as stored (version 3 layout; version 2 leaves the v3 fields at their
/// implied values when decoded).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RawHeader {
    /// Magic at 0x0.
    pub magic: [u8; 4],
    /// Version at 0x4 (2 or 3).
    pub version: u32,
    /// Offset of the backing file name at 0x8 (0 = none).
    pub backing_file_offset: u64,
    /// Length of the backing file name at 0x10.
    pub backing_file_size: u32,
    /// log2 of the cluster size at 0x14.
    pub cluster_bits: u32,
    /// Virtual disk size at 0x18.
    pub size: u64,
    /// Encryption method at 0x20 (0 none, 1 AES, 2 LUKS).
    pub crypt_method: u32,
    /// L1 table entries at 0x24.
    pub l1_size: u32,
    /// L1 table offset at 0x28.
    pub l1_table_offset: u64,
    /// Refcount table offset at 0x30.
    pub refcount_table_offset: u64,
    /// Refcount table length in clusters at 0x38.
    pub refcount_table_clusters: u32,
    /// Number of internal snapshots at 0x3c.
    pub nb_snapshots: u32,
    /// Snapshot table offset at 0x40.
    pub snapshots_offset: u64,
    /// v3: incompatible feature bits at 0x48.
    pub incompatible_features: u64,
    /// v3: compatible feature bits at 0x50.
    pub compatible_features: u64,
    /// v3: autoclear feature bits at 0x58.
    pub autoclear_features: u64,
    /// v3: log2 of the refcount width in bits at 0x60 (v2: 4).
    pub refcount_order: u32,
    /// v3: header length at 0x64 (v2: 72).
    pub header_length: u32,
    /// v3 with header_length > 104: compression type at 0x68 (0 zlib, 1 zstd).
    pub compression_type: u8,
}

fn be32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(a)
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

impl RawHeader {
    /// Decodes the header from the start of cluster 0. Fails (naming the field) when `b` is too short
    /// for the version's header or the magic is wrong.
    pub fn decode(b: &[u8], path: &Path) -> Result<RawHeader> {
        let short = |need: usize| {
            Error::corrupt(format!(
                "file too short for a qcow2 header: {} bytes, need {need}",
                b.len()
            ))
            .with_path(path)
            .at(0)
            .hint("the file is truncated")
        };
        if b.len() < V2_HEADER_LEN {
            return Err(short(V2_HEADER_LEN));
        }
        let mut h = RawHeader {
            magic: [b[0], b[1], b[2], b[3]],
            version: be32(b, 4),
            backing_file_offset: be64(b, 8),
            backing_file_size: be32(b, 16),
            cluster_bits: be32(b, 20),
            size: be64(b, 24),
            crypt_method: be32(b, 32),
            l1_size: be32(b, 36),
            l1_table_offset: be64(b, 40),
            refcount_table_offset: be64(b, 48),
            refcount_table_clusters: be32(b, 56),
            nb_snapshots: be32(b, 60),
            snapshots_offset: be64(b, 64),
            refcount_order: 4,
            header_length: V2_HEADER_LEN as u32,
            ..RawHeader::default()
        };
        if h.magic != MAGIC {
            return Err(Error::format("not a qcow2 file: bad magic")
                .with_path(path)
                .at(0));
        }
        if h.version >= 3 {
            if b.len() < V3_MIN_HEADER_LEN {
                return Err(short(V3_MIN_HEADER_LEN));
            }
            h.incompatible_features = be64(b, 72);
            h.compatible_features = be64(b, 80);
            h.autoclear_features = be64(b, 88);
            h.refcount_order = be32(b, 96);
            h.header_length = be32(b, 100);
            if h.header_length as usize > V3_MIN_HEADER_LEN && b.len() > V3_MIN_HEADER_LEN {
                h.compression_type = b[104];
            }
        }
        Ok(h)
    }

    /// Encodes the header: 72 bytes for version 2, `header_length` bytes (at least 104) for version 3.
    pub fn encode(&self) -> Vec<u8> {
        let len = if self.version >= 3 {
            (self.header_length as usize).max(V3_MIN_HEADER_LEN)
        } else {
            V2_HEADER_LEN
        };
        let mut b = vec![0u8; len];
        b[0..4].copy_from_slice(&self.magic);
        b[4..8].copy_from_slice(&self.version.to_be_bytes());
        b[8..16].copy_from_slice(&self.backing_file_offset.to_be_bytes());
        b[16..20].copy_from_slice(&self.backing_file_size.to_be_bytes());
        b[20..24].copy_from_slice(&self.cluster_bits.to_be_bytes());
        b[24..32].copy_from_slice(&self.size.to_be_bytes());
        b[32..36].copy_from_slice(&self.crypt_method.to_be_bytes());
        b[36..40].copy_from_slice(&self.l1_size.to_be_bytes());
        b[40..48].copy_from_slice(&self.l1_table_offset.to_be_bytes());
        b[48..56].copy_from_slice(&self.refcount_table_offset.to_be_bytes());
        b[56..60].copy_from_slice(&self.refcount_table_clusters.to_be_bytes());
        b[60..64].copy_from_slice(&self.nb_snapshots.to_be_bytes());
        b[64..72].copy_from_slice(&self.snapshots_offset.to_be_bytes());
        if self.version >= 3 {
            b[72..80].copy_from_slice(&self.incompatible_features.to_be_bytes());
            b[80..88].copy_from_slice(&self.compatible_features.to_be_bytes());
            b[88..96].copy_from_slice(&self.autoclear_features.to_be_bytes());
            b[96..100].copy_from_slice(&self.refcount_order.to_be_bytes());
            b[100..104].copy_from_slice(&self.header_length.to_be_bytes());
            if len > V3_MIN_HEADER_LEN {
                b[104] = self.compression_type;
            }
        }
        b
    }
}

/// One header extension as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extension {
    /// Extension type.
    pub kind: u32,
    /// Its data (without padding).
    pub data: Vec<u8>,
    /// File offset of the extension's type field.
    pub offset: u64,
}

/// Parses the extensions starting at `start` in cluster 0 (`c0`, the first cluster or the whole file
/// if shorter), up to the end marker. `end` is where the area ends (the cluster size).
pub fn decode_extensions(
    c0: &[u8],
    start: usize,
    end: usize,
    path: &Path,
) -> Result<Vec<Extension>> {
    let mut out = Vec::new();
    let mut at = start;
    loop {
        if at + 8 > end {
            // QEMU stops without an end marker when the cluster is exhausted.
            return Ok(out);
        }
        if at + 8 > c0.len() {
            return Err(Error::corrupt(format!(
                "the file ends at {:#x}, inside its header: the header extension area continues at {at:#x}",
                c0.len()
            ))
            .with_path(path)
            .at(at as u64)
            .hint("the file is truncated"));
        }
        let kind = be32(c0, at);
        let len = be32(c0, at + 4) as usize;
        if kind == 0 {
            return Ok(out);
        }
        let data_end = (at + 8).checked_add(len).filter(|&e| e <= end);
        let Some(data_end) = data_end else {
            return Err(Error::corrupt(format!(
                "header extension {kind:#010x} of length {len:#x} runs past the end of cluster 0 ({end:#x})"
            ))
            .with_path(path)
            .at(at as u64));
        };
        if data_end > c0.len() {
            // Inside the cluster, past the end of the file: the file was cut inside its header.
            return Err(Error::corrupt(format!(
                "the file ends at {:#x}, inside its header: header extension {kind:#010x} of length \
                 {len:#x} at {at:#x} needs {data_end:#x} bytes",
                c0.len()
            ))
            .with_path(path)
            .at(at as u64)
            .hint("the file is truncated"));
        }
        out.push(Extension {
            kind,
            data: c0[at + 8..data_end].to_vec(),
            offset: at as u64,
        });
        at = data_end.div_ceil(8) * 8;
    }
}

/// Encodes extensions, padded to 8 bytes each, with the end marker.
pub fn encode_extensions(exts: &[Extension]) -> Vec<u8> {
    let mut b = Vec::new();
    for e in exts {
        b.extend_from_slice(&e.kind.to_be_bytes());
        b.extend_from_slice(&(e.data.len() as u32).to_be_bytes());
        b.extend_from_slice(&e.data);
        b.resize(b.len().div_ceil(8) * 8, 0);
    }
    b.extend_from_slice(&[0u8; 8]);
    b
}

/// A feature name table entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureName {
    /// 0 incompatible, 1 compatible, 2 autoclear.
    pub kind: u8,
    /// Bit number.
    pub bit: u8,
    /// The name.
    pub name: String,
}

/// The checked header and what its extensions say.
#[derive(Debug, Clone)]
pub struct Header {
    /// The raw fields.
    pub raw: RawHeader,
    /// 2 or 3.
    pub version: u32,
    /// log2 of the cluster size.
    pub cluster_bits: u32,
    /// Cluster size in bytes.
    pub cluster_size: u64,
    /// Virtual disk size.
    pub size: u64,
    /// Extended L2 entries (32 subclusters per cluster).
    pub extended_l2: bool,
    /// log2 of the number of L2 entries per table.
    pub l2_bits: u32,
    /// L1 entries.
    pub l1_size: u64,
    /// L1 table offset.
    pub l1_offset: u64,
    /// Refcount width in bits.
    pub refcount_bits: u64,
    /// zlib (0) or zstd (1).
    pub compression_type: u8,
    /// The incompatible corrupt bit.
    pub corrupt: bool,
    /// The incompatible dirty bit.
    pub dirty: bool,
    /// The compatible lazy refcounts bit.
    pub lazy_refcounts: bool,
    /// The backing file name as stored.
    pub backing_file: Option<String>,
    /// The backing format extension.
    pub backing_format: Option<String>,
    /// LUKS header pointer (offset, length) from the FDE extension, when crypt_method is 2.
    pub fde: Option<(u64, u64)>,
    /// The bitmaps extension is present.
    pub has_bitmaps: bool,
    /// The feature name table.
    pub feature_names: Vec<FeatureName>,
}

impl Header {
    /// Decodes and checks cluster 0 (`c0`: the first cluster, or the whole file if shorter);
    /// `file_len` bounds the tables.
    pub fn parse(c0: &[u8], file_len: u64, path: &Path) -> Result<Header> {
        let raw = RawHeader::decode(c0, path)?;
        let bad = |msg: String, at: u64| Error::corrupt(msg).with_path(path).at(at);
        if raw.version != 2 && raw.version != 3 {
            return Err(Error::unsupported(format!(
                "qcow2 version {} (only 2 and 3 exist)",
                raw.version
            ))
            .with_path(path)
            .at(4));
        }
        if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&raw.cluster_bits) {
            return Err(bad(
                format!(
                    "cluster_bits {} out of range {MIN_CLUSTER_BITS}..={MAX_CLUSTER_BITS}",
                    raw.cluster_bits
                ),
                0x14,
            ));
        }
        let cluster_bits = raw.cluster_bits;
        let cluster_size = 1u64 << cluster_bits;
        if raw.version == 3 {
            if (raw.header_length as usize) < V3_MIN_HEADER_LEN {
                return Err(bad(
                    format!(
                        "header_length {:#x} shorter than the minimum {V3_MIN_HEADER_LEN:#x}",
                        raw.header_length
                    ),
                    0x64,
                ));
            }
            if !raw.header_length.is_multiple_of(8) {
                return Err(bad(
                    format!(
                        "header_length {:#x} is not a multiple of 8",
                        raw.header_length
                    ),
                    0x64,
                ));
            }
            if u64::from(raw.header_length) > cluster_size {
                return Err(bad(
                    format!(
                        "header_length {:#x} exceeds the cluster size {cluster_size:#x}",
                        raw.header_length
                    ),
                    0x64,
                ));
            }
            if raw.header_length as usize > c0.len() {
                return Err(bad(
                    format!(
                        "header_length {:#x} runs past the end of the file",
                        raw.header_length
                    ),
                    0x64,
                )
                .hint("the file is truncated"));
            }
            if raw.refcount_order > 6 {
                return Err(bad(
                    format!("refcount_order {} out of range 0..=6", raw.refcount_order),
                    0x60,
                ));
            }
        }
        let ext_start = if raw.version == 2 {
            V2_HEADER_LEN
        } else {
            raw.header_length as usize
        };
        let ext_end = if raw.backing_file_offset > ext_start as u64
            && raw.backing_file_offset < cluster_size
        {
            raw.backing_file_offset as usize
        } else {
            cluster_size as usize
        };
        let exts = decode_extensions(c0, ext_start, ext_end, path)?;
        let mut feature_names = Vec::new();
        let mut backing_format = None;
        let mut fde = None;
        let mut has_bitmaps = false;
        let mut data_file = None;
        for e in &exts {
            match e.kind {
                EXT_BACKING_FORMAT => {
                    backing_format = Some(
                        String::from_utf8_lossy(&e.data)
                            .trim_end_matches('\0')
                            .to_owned(),
                    );
                }
                EXT_FEATURE_NAMES => {
                    for ch in e.data.chunks_exact(48) {
                        let name = &ch[2..];
                        let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
                        feature_names.push(FeatureName {
                            kind: ch[0],
                            bit: ch[1],
                            name: String::from_utf8_lossy(&name[..end]).into_owned(),
                        });
                    }
                }
                EXT_BITMAPS => has_bitmaps = true,
                EXT_FDE => {
                    if e.data.len() < 16 {
                        return Err(bad(
                            format!(
                                "full disk encryption extension too short ({} bytes, need 16)",
                                e.data.len()
                            ),
                            e.offset,
                        ));
                    }
                    fde = Some((be64(&e.data, 0), be64(&e.data, 8)));
                }
                EXT_DATA_FILE => data_file = Some(String::from_utf8_lossy(&e.data).into_owned()),
                _ => {} // Unknown extensions are optional by definition.
            }
        }
        let unknown = raw.incompatible_features & !KNOWN_INCOMPAT;
        if unknown != 0 {
            let names: Vec<String> = (0..64)
                .filter(|b| unknown & (1u64 << b) != 0)
                .map(|b| {
                    match feature_names
                        .iter()
                        .find(|f| f.kind == 0 && u32::from(f.bit) == b)
                    {
                        Some(f) => format!("{:?} (bit {b})", f.name),
                        None => format!("unknown (bit {b})"),
                    }
                })
                .collect();
            return Err(Error::unsupported(format!(
                "qcow2 incompatible feature not supported: {}",
                names.join(", ")
            ))
            .with_path(path)
            .at(0x48));
        }
        if raw.incompatible_features & INCOMPAT_DATA_FILE != 0 {
            let name = data_file.map(|n| format!(" ({n:?})")).unwrap_or_default();
            return Err(Error::unsupported(format!(
                "qcow2 image keeps its data in an external data file{name}"
            ))
            .with_path(path)
            .at(0x48)
            .hint("convert it first with `qemu-img convert -O raw` or `-O qcow2`"));
        }
        let compression_type = raw.compression_type;
        if compression_type > 1 {
            return Err(Error::unsupported(format!(
                "compression_type {compression_type} (known: 0 zlib, 1 zstd)"
            ))
            .with_path(path)
            .at(0x68));
        }
        if (compression_type != 0) != (raw.incompatible_features & INCOMPAT_COMPRESSION != 0) {
            return Err(bad(
                format!(
                    "compression_type {compression_type} disagrees with incompatible feature bit 3"
                ),
                0x68,
            ));
        }
        let extended_l2 = raw.incompatible_features & INCOMPAT_EXTL2 != 0;
        if extended_l2 && cluster_bits < 14 {
            return Err(bad(
                format!("extended L2 entries need cluster_bits >= 14, found {cluster_bits}"),
                0x14,
            ));
        }
        match raw.crypt_method {
            0 | 2 => {}
            1 => {
                return Err(
                    Error::unsupported("qcow2 legacy AES encryption (crypt_method 1)")
                        .with_path(path)
                        .at(0x20)
                        .hint(
                            "decrypt it first with `qemu-img convert --object secret,... -O raw`",
                        ),
                );
            }
            m => {
                return Err(bad(
                    format!("crypt_method {m} unknown (0 none, 1 AES, 2 LUKS)"),
                    0x20,
                ));
            }
        }
        if raw.crypt_method == 2 && fde.is_none() {
            return Err(bad(
                "crypt_method is LUKS but the full disk encryption extension is missing".into(),
                0x20,
            ));
        }
        if raw.size > i64::MAX as u64 {
            return Err(bad(
                format!(
                    "virtual size {:#x} exceeds the maximum 0x7fffffffffffffff",
                    raw.size
                ),
                0x18,
            ));
        }
        let l2_bits = cluster_bits - if extended_l2 { 4 } else { 3 };
        let l1_needed = raw.size.div_ceil(cluster_size).div_ceil(1u64 << l2_bits);
        if l1_needed * 8 > MAX_L1_BYTES {
            return Err(bad(
                format!(
                    "virtual size {:#x} needs an L1 table of {:#x} bytes, more than QEMU's limit {MAX_L1_BYTES:#x}",
                    raw.size,
                    l1_needed * 8
                ),
                0x18,
            ));
        }
        let l1_size = u64::from(raw.l1_size);
        if l1_size * 8 > MAX_L1_BYTES {
            return Err(bad(
                format!(
                    "l1_size {l1_size:#x} entries exceeds QEMU's limit of {MAX_L1_BYTES:#x} bytes"
                ),
                0x24,
            ));
        }
        if l1_size < l1_needed {
            return Err(bad(
                format!(
                    "l1_size {l1_size:#x} too small for virtual size {:#x} (needs {l1_needed:#x})",
                    raw.size
                ),
                0x24,
            ));
        }
        let l1_offset = raw.l1_table_offset;
        if l1_size > 0 {
            if !l1_offset.is_multiple_of(cluster_size) {
                return Err(bad(
                    format!("l1_table_offset {l1_offset:#x} is not cluster-aligned"),
                    0x28,
                ));
            }
            if l1_offset < cluster_size {
                return Err(bad(
                    format!("l1_table_offset {l1_offset:#x} overlaps the header cluster"),
                    0x28,
                ));
            }
            if l1_offset
                .checked_add(l1_size * 8)
                .is_none_or(|e| e > file_len)
            {
                return Err(bad(
                    format!("L1 table ({l1_size:#x} entries at {l1_offset:#x}) runs past the end of the file ({file_len:#x})"),
                    0x28,
                )
                .hint("the file is truncated"));
            }
        }
        let backing_file = if raw.backing_file_offset != 0 {
            let (off, len) = (raw.backing_file_offset, u64::from(raw.backing_file_size));
            if raw.backing_file_size > MAX_BACKING_NAME {
                return Err(bad(
                    format!("backing_file_size {len} exceeds the maximum {MAX_BACKING_NAME}"),
                    0x10,
                ));
            }
            if off.checked_add(len).is_none_or(|e| e > cluster_size) {
                return Err(bad(
                    format!(
                        "backing file name ({len} bytes at {off:#x}) runs past the end of cluster 0"
                    ),
                    0x8,
                ));
            }
            if off + len > c0.len() as u64 {
                return Err(bad(
                    format!(
                        "backing file name ({len} bytes at {off:#x}) runs past the end of the file"
                    ),
                    0x8,
                )
                .hint("the file is truncated"));
            }
            let name = &c0[off as usize..(off + len) as usize];
            let name = std::str::from_utf8(name)
                .map_err(|_| bad("backing file name is not UTF-8".into(), off))?;
            (!name.is_empty()).then(|| name.to_owned())
        } else {
            None
        };
        Ok(Header {
            raw,
            version: raw.version,
            cluster_bits,
            cluster_size,
            size: raw.size,
            extended_l2,
            l2_bits,
            l1_size,
            l1_offset,
            refcount_bits: 1u64 << raw.refcount_order,
            compression_type,
            corrupt: raw.incompatible_features & INCOMPAT_CORRUPT != 0,
            dirty: raw.incompatible_features & INCOMPAT_DIRTY != 0,
            lazy_refcounts: raw.compatible_features & COMPAT_LAZY_REFCOUNTS != 0,
            backing_file,
            backing_format,
            fde,
            has_bitmaps,
            feature_names,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> RawHeader {
        RawHeader {
            magic: MAGIC,
            version: 3,
            backing_file_offset: 0,
            backing_file_size: 0,
            cluster_bits: 16,
            size: 1 << 30,
            crypt_method: 0,
            l1_size: 2,
            l1_table_offset: 0x30000,
            refcount_table_offset: 0x10000,
            refcount_table_clusters: 1,
            nb_snapshots: 0,
            snapshots_offset: 0,
            incompatible_features: INCOMPAT_COMPRESSION,
            compatible_features: 1,
            autoclear_features: 0,
            refcount_order: 4,
            header_length: 112,
            compression_type: 1,
        }
    }

    #[test]
    fn raw_header_round_trips_v3_and_v2() {
        let h = sample();
        let b = h.encode();
        assert_eq!(b.len(), 112);
        assert_eq!(RawHeader::decode(&b, Path::new("x")).unwrap(), h);
        let v2 = RawHeader {
            version: 2,
            incompatible_features: 0,
            compatible_features: 0,
            header_length: 72,
            compression_type: 0,
            ..h
        };
        let b = v2.encode();
        assert_eq!(b.len(), 72);
        assert_eq!(RawHeader::decode(&b, Path::new("x")).unwrap(), v2);
    }

    #[test]
    fn extensions_round_trip_and_overrun_is_refused() {
        let exts = vec![
            Extension {
                kind: EXT_BACKING_FORMAT,
                data: b"raw".to_vec(),
                offset: 112,
            },
            Extension {
                kind: 0x1234_5678,
                data: vec![7; 9],
                offset: 112 + 16,
            },
        ];
        let mut c0 = sample().encode();
        c0.extend(encode_extensions(&exts));
        c0.resize(4096, 0);
        assert_eq!(
            decode_extensions(&c0, 112, 4096, Path::new("x")).unwrap(),
            exts
        );
        // A length that runs past the end of the cluster.
        c0[112 + 4..112 + 8].copy_from_slice(&0x1000u32.to_be_bytes());
        let e = decode_extensions(&c0, 112, 4096, Path::new("x")).unwrap_err();
        assert!(
            e.to_string().contains("runs past the end of cluster 0") && e.offset() == Some(112),
            "{e}"
        );
        // A file cut inside its header (the cluster is longer than the file): truncated, and where.
        c0[112 + 4..112 + 8].copy_from_slice(&9u32.to_be_bytes());
        let e = decode_extensions(&c0[..125], 112, 4096, Path::new("x")).unwrap_err();
        assert!(
            e.to_string()
                .contains("the file ends at 0x7d, inside its header")
                && e.hint_text().is_some_and(|h| h.contains("truncated")),
            "{e}"
        );
    }

    #[test]
    fn parse_checks_fields() {
        let mut c0 = sample().encode();
        c0.extend(encode_extensions(&[]));
        c0.resize(65536, 0);
        let h = Header::parse(&c0, 0x40000, Path::new("x")).unwrap();
        assert_eq!(
            (
                h.cluster_size,
                h.l2_bits,
                h.compression_type,
                h.lazy_refcounts
            ),
            (65536, 13, 1, true)
        );
        let mut bad = c0.clone();
        bad[0x14..0x18].copy_from_slice(&22u32.to_be_bytes());
        assert!(
            Header::parse(&bad, 0x40000, Path::new("x"))
                .unwrap_err()
                .to_string()
                .contains("cluster_bits 22")
        );
        let mut bad = c0.clone();
        bad[0x48..0x50].copy_from_slice(&(INCOMPAT_COMPRESSION | 1 << 9).to_be_bytes());
        assert!(
            Header::parse(&bad, 0x40000, Path::new("x"))
                .unwrap_err()
                .to_string()
                .contains("bit 9")
        );
    }
}
