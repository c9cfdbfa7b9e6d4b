//! Guest-to-host mapping: the L1 table (loaded at open; QEMU caps it at 32 MiB), L2 entries read on
//! demand with positional reads (only the entries a request touches, so no cache, no lock and bounded
//! memory), and the classification of each cluster or subcluster into a [`Run`]. Every host offset is
//! checked before use: cluster alignment, not inside the header, L1 or refcount table, not past the end
//! of the file.

use std::fs::File;
use std::path::{Path, PathBuf};

use super::compressed::CompressedDesc;
use super::header::Header;
use crate::error::{Error, Result};
use crate::io::read_exact_at;

/// Bits 9..=55 of an L1 or standard L2 entry: the host offset.
const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// L2 entry bit 62: compressed cluster.
const COMPRESSED: u64 = 1 << 62;
/// L2 entry bit 0 (v3, without extended L2): reads as zeros.
const ZERO_FLAG: u64 = 1;
/// Subclusters per cluster with extended L2 entries.
const SUBCLUSTERS: u64 = 32;

/// What a run of guest bytes maps to in this layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Run {
    /// Stored at this host offset (of the run's first byte).
    Data(u64),
    /// Inside this compressed cluster; the guest cluster starts at the given guest offset.
    Compressed(CompressedDesc, u64),
    /// Reads as zeros.
    Zero,
    /// Not allocated here: the backing file (or zeros).
    Backing,
}

/// The L1 table and what is needed to read and check L2 entries.
#[derive(Debug)]
pub struct Mapping {
    file: File,
    path: PathBuf,
    file_len: u64,
    cluster_bits: u32,
    l2_bits: u32,
    extended_l2: bool,
    zero_flag: bool,
    size: u64,
    l1: Vec<u64>,
    l1_offset: u64,
    /// Host byte ranges that hold metadata data clusters must not overlap.
    metadata: Vec<(u64, u64, &'static str)>,
}

impl Mapping {
    /// Loads the L1 table described by `h` from `file` (`file_len` bytes long).
    pub fn load(file: File, path: &Path, h: &Header, file_len: u64) -> Result<Mapping> {
        let cs = h.cluster_size;
        let mut raw = vec![0u8; (h.l1_size * 8) as usize];
        read_exact_at(&file, path, &mut raw, h.l1_offset)?;
        let l1 = raw
            .chunks_exact(8)
            .map(|c| u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect();
        let mut metadata = vec![(0, cs, "the header cluster")];
        if h.l1_size > 0 {
            metadata.push((
                h.l1_offset,
                h.l1_offset + (h.l1_size * 8).div_ceil(cs) * cs,
                "the L1 table",
            ));
        }
        let rt = h.raw.refcount_table_offset;
        let rt_len = u64::from(h.raw.refcount_table_clusters) * cs;
        if rt != 0 && rt.is_multiple_of(cs) && rt.checked_add(rt_len).is_some_and(|e| e <= file_len)
        {
            metadata.push((rt, rt + rt_len, "the refcount table"));
        }
        Ok(Mapping {
            file,
            path: path.to_owned(),
            file_len,
            cluster_bits: h.cluster_bits,
            l2_bits: h.l2_bits,
            extended_l2: h.extended_l2,
            zero_flag: h.version >= 3 && !h.extended_l2,
            size: h.size,
            l1,
            l1_offset: h.l1_offset,
            metadata,
        })
    }

    /// The image file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The image file's length when opened.
    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Checks a host cluster offset named by the entry at `entry_at`.
    fn check_host(&self, what: &str, host: u64, guest: u64, entry_at: u64) -> Result<()> {
        let err = |msg: String| Err(Error::corrupt(msg).with_path(&self.path).at(entry_at));
        if !host.is_multiple_of(self.cluster_size()) {
            return err(format!(
                "{what} offset {host:#x} (guest offset {guest:#x}) is not cluster-aligned"
            ));
        }
        if host >= self.file_len {
            return err(format!(
                "{what} offset {host:#x} (guest offset {guest:#x}) is beyond the end of the file ({:#x})",
                self.file_len
            ));
        }
        if let Some((_, _, name)) = self
            .metadata
            .iter()
            .find(|(s, e, _)| host < *e && host + self.cluster_size() > *s)
        {
            return err(format!(
                "{what} offset {host:#x} (guest offset {guest:#x}) overlaps {name}"
            ));
        }
        Ok(())
    }

    /// The L2 table offset for L1 index `i`, or `None` when unallocated.
    fn l2_offset(&self, i: usize) -> Result<Option<u64>> {
        let entry = self.l1.get(i).copied().unwrap_or(0);
        let off = entry & OFFSET_MASK;
        if off == 0 {
            return Ok(None);
        }
        let guest = (i as u64) << (self.cluster_bits + self.l2_bits);
        let entry_at = self.l1_offset + i as u64 * 8;
        self.check_host(&format!("L1 entry {i}: L2 table"), off, guest, entry_at)?;
        if off + self.cluster_size() > self.file_len {
            return Err(Error::corrupt(format!(
                "L1 entry {i}: L2 table at {off:#x} runs past the end of the file"
            ))
            .with_path(&self.path)
            .at(entry_at)
            .hint("the file is truncated"));
        }
        Ok(Some(off))
    }

    /// Calls `f(start, end, run)` for consecutive runs covering guest bytes `start..end` (in order, at
    /// most one call per cluster or subcluster, and one per L2 table that is not allocated).
    pub fn runs(
        &self,
        start: u64,
        end: u64,
        f: &mut dyn FnMut(u64, u64, Run) -> Result<()>,
    ) -> Result<()> {
        let cb = self.cluster_bits;
        let cs = self.cluster_size();
        let table_span_bits = cb + self.l2_bits;
        let esz: u64 = if self.extended_l2 { 16 } else { 8 };
        let mut pos = start;
        while pos < end {
            let l1_index = (pos >> table_span_bits) as usize;
            let table_end = (((l1_index as u64) + 1) << table_span_bits).min(end);
            let Some(l2) = self.l2_offset(l1_index)? else {
                f(pos, table_end, Run::Backing)?;
                pos = table_end;
                continue;
            };
            let mask = (1u64 << self.l2_bits) - 1;
            let first = (pos >> cb) & mask;
            let last = ((table_end - 1) >> cb) & mask;
            let count = last - first + 1;
            let mut raw = vec![0u8; (count * esz) as usize];
            read_exact_at(&self.file, &self.path, &mut raw, l2 + first * esz)?;
            for (k, e) in raw.chunks_exact(esz as usize).enumerate() {
                let word = u64::from_be_bytes([e[0], e[1], e[2], e[3], e[4], e[5], e[6], e[7]]);
                let bitmap = if esz == 16 {
                    u64::from_be_bytes([e[8], e[9], e[10], e[11], e[12], e[13], e[14], e[15]])
                } else {
                    0
                };
                let entry_at = l2 + (first + k as u64) * esz;
                let cstart = ((pos >> cb) + k as u64) << cb;
                let lo = cstart.max(pos);
                let hi = (cstart + cs).min(table_end);
                self.cluster_runs(word, bitmap, cstart, lo, hi, entry_at, f)?;
            }
            pos = table_end;
        }
        Ok(())
    }

    /// Emits the runs of guest bytes `lo..hi` inside the cluster starting at `cstart`.
    #[allow(clippy::too_many_arguments)]
    fn cluster_runs(
        &self,
        word: u64,
        bitmap: u64,
        cstart: u64,
        lo: u64,
        hi: u64,
        entry_at: u64,
        f: &mut dyn FnMut(u64, u64, Run) -> Result<()>,
    ) -> Result<()> {
        if word & COMPRESSED != 0 {
            let d = CompressedDesc::from_entry(word, self.cluster_bits);
            if d.offset < self.cluster_size() || d.offset >= self.file_len {
                let why = if d.offset >= self.file_len {
                    "is beyond the end of the file"
                } else {
                    "is inside the header cluster"
                };
                return Err(Error::corrupt(format!(
                    "compressed cluster data at {:#x} (guest offset {cstart:#x}) {why}",
                    d.offset
                ))
                .with_path(&self.path)
                .at(entry_at));
            }
            return f(lo, hi, Run::Compressed(d, cstart));
        }
        let host = word & OFFSET_MASK;
        if !self.extended_l2 {
            if word & ZERO_FLAG != 0 {
                if self.zero_flag {
                    return f(lo, hi, Run::Zero);
                }
                // QEMU reports this as corruption too (its block status fails on it).
                return Err(Error::corrupt(format!("L2 entry for guest offset {cstart:#x} has the zero flag, which version 2 images do not have"))
                    .with_path(&self.path)
                    .at(entry_at));
            }
            if host == 0 {
                return f(lo, hi, Run::Backing);
            }
            self.check_host("data cluster", host, cstart, entry_at)?;
            return f(lo, hi, Run::Data(host + (lo - cstart)));
        }
        let alloc = bitmap & 0xffff_ffff;
        let zero = bitmap >> 32;
        if alloc & zero != 0 {
            return Err(Error::corrupt(format!(
                "extended L2 entry for guest offset {cstart:#x} marks subclusters both allocated and zero (bitmap {bitmap:#018x})"
            ))
            .with_path(&self.path)
            .at(entry_at + 8));
        }
        if alloc != 0 {
            if host == 0 {
                return Err(Error::corrupt(format!(
                    "extended L2 entry for guest offset {cstart:#x} has allocated subclusters but no host offset"
                ))
                .with_path(&self.path)
                .at(entry_at));
            }
            self.check_host("data cluster", host, cstart, entry_at)?;
        }
        let scs = self.cluster_size() / SUBCLUSTERS;
        let mut p = lo;
        while p < hi {
            let i = (p - cstart) / scs;
            let run = if alloc >> i & 1 != 0 {
                Run::Data(host + (p - cstart))
            } else if zero >> i & 1 != 0 {
                Run::Zero
            } else {
                Run::Backing
            };
            let e = (cstart + (i + 1) * scs).min(hi);
            f(p, e, run)?;
            p = e;
        }
        Ok(())
    }

    /// Guest clusters this layer stores (standard clusters with a host offset, zero-flagged or not, and
    /// compressed clusters), as `qemu-img check` counts "allocated-clusters". Returns `None` without
    /// reading anything when the allocated L2 tables hold more than `max_l2_bytes`.
    pub fn allocated_clusters(&self, max_l2_bytes: u64) -> Result<Option<u64>> {
        let cs = self.cluster_size();
        let allocated_tables = self.l1.iter().filter(|&&e| e & OFFSET_MASK != 0).count() as u64;
        if allocated_tables.saturating_mul(cs) > max_l2_bytes {
            return Ok(None);
        }
        let esz: usize = if self.extended_l2 { 16 } else { 8 };
        let guest_clusters = self.size.div_ceil(cs);
        let per_table = 1u64 << self.l2_bits;
        let mut table = vec![0u8; cs as usize];
        let mut count = 0;
        for i in 0..self.l1.len() {
            let Some(l2) = self.l2_offset(i)? else {
                continue;
            };
            let first = i as u64 * per_table;
            if first >= guest_clusters {
                break;
            }
            let n = (guest_clusters - first).min(per_table) as usize;
            read_exact_at(&self.file, &self.path, &mut table[..n * esz], l2)?;
            count += table[..n * esz]
                .chunks_exact(esz)
                .map(|e| u64::from_be_bytes([e[0], e[1], e[2], e[3], e[4], e[5], e[6], e[7]]))
                .filter(|w| w & COMPRESSED != 0 || w & OFFSET_MASK != 0)
                .count() as u64;
        }
        Ok(Some(count))
    }

    /// The guest size this mapping covers.
    pub fn size(&self) -> u64 {
        self.size
    }
}
