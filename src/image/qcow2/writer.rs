//! A streaming qcow2 v3 writer: data clusters first, in guest order, then the L2 tables, the L1 table,
//! the refcount blocks and table, and last the header. Optionally with QEMU's native LUKS encryption
//! (`encrypt.format=luks`): a LUKS1 header in refcounted clusters named by the FDE header extension
//! (0x0537be77), and data sectors encrypted with IV = host file offset / 512.
//!
//! Only clusters that hold data are allocated (the output stays sparse); every cluster has refcount 1 and
//! every L1/L2 entry has the COPIED bit, which is what `qemu-img check` wants (`formats.md` §3, §5.3).
//!
//! The cluster size is chosen per image, as `qemu-img create -o cluster_size=` does: a power of two from
//! 512 B to 2 MiB ([`MIN_CLUSTER_BITS`]..=[`MAX_CLUSTER_BITS`]), 64 KiB by default. It sets everything
//! else: an L2 table (one cluster) maps `cluster_size / 8` clusters, a refcount block (16-bit entries)
//! counts `cluster_size / 2`, and the header and its extensions must fit in cluster 0 (with small
//! clusters the optional feature name table is left out, as QEMU does).
//!
//! Because clusters are allocated in guest order, the k-th allocated cluster always lives at
//! `data_start + k * cluster_size`: the writer keeps one bit per guest cluster, not a map.

use crate::error::{Error, Result};
use crate::io::OutputFile;

pub use super::header::{MAX_CLUSTER_BITS, MIN_CLUSTER_BITS};

/// Default cluster size written (64 KiB, QEMU's default).
pub const DEFAULT_CLUSTER_BITS: u32 = 16;
const COPIED: u64 = 1 << 63;
/// FDE ("full disk encryption") header pointer extension.
const EXT_FDE: u32 = 0x0537_be77;
/// Feature name table extension (written so `qemu-img info` can name our feature bits).
const EXT_FEATURES: u32 = 0x6803_f857;
/// QEMU's maximum L1 table size.
const MAX_L1_BYTES: u64 = 32 << 20;

/// The cluster_bits of a cluster size in bytes, if the writer (and QEMU) accepts it: a power of two
/// from 512 B to 2 MiB.
pub fn cluster_bits_of(size: u64) -> Option<u32> {
    let bits = size.trailing_zeros();
    (size.is_power_of_two() && (MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&bits))
        .then_some(bits)
}

/// Refuses a `cluster_bits` the writer (and QEMU) does not accept; library callers check it before
/// slow work (key derivation), [`Qcow2Writer::new`] checks it again.
pub fn check_cluster_bits(cluster_bits: u32) -> Result<()> {
    if (MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_bits) {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "qcow2 cluster_bits {cluster_bits} out of range {MIN_CLUSTER_BITS}..={MAX_CLUSTER_BITS} (512 B to 2 MiB)"
        )))
    }
}

/// Builds a qcow2 file in an [`OutputFile`].
#[derive(Debug)]
pub struct Qcow2Writer {
    cluster_bits: u32,
    cluster_size: u64,
    virtual_size: u64,
    luks: Option<(u64, u64)>,
    data_start: u64,
    allocated: Vec<u64>,
    count: u64,
    last: Option<u64>,
}

impl Qcow2Writer {
    /// Starts an image of `virtual_size` bytes with clusters of `1 << cluster_bits` bytes (see
    /// [`DEFAULT_CLUSTER_BITS`]); with `luks_header`, writes it at cluster 1 and records it in the FDE
    /// extension (the header's length is rounded up to whole clusters on disk).
    pub fn new(
        out: &OutputFile,
        virtual_size: u64,
        luks_header: Option<&[u8]>,
        cluster_bits: u32,
    ) -> Result<Qcow2Writer> {
        check_cluster_bits(cluster_bits)?;
        let cluster_size = 1u64 << cluster_bits;
        let clusters = virtual_size.div_ceil(cluster_size);
        let l1_entries = clusters.div_ceil(cluster_size / 8);
        if l1_entries * 8 > MAX_L1_BYTES {
            return Err(Error::invalid(format!(
                "virtual size {virtual_size} needs an L1 table beyond QEMU's 32 MiB limit"
            ))
            .hint("choose larger qcow2 clusters"));
        }
        let mut data_start = cluster_size;
        let luks = match luks_header {
            Some(h) => {
                out.write_at(h, cluster_size)?;
                let len = h.len() as u64;
                data_start += len.div_ceil(cluster_size) * cluster_size;
                Some((cluster_size, len))
            }
            None => None,
        };
        Ok(Qcow2Writer {
            cluster_bits,
            cluster_size,
            virtual_size,
            luks,
            data_start,
            allocated: vec![0u64; clusters.div_ceil(64) as usize],
            count: 0,
            last: None,
        })
    }

    /// Cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        self.cluster_size
    }

    /// Allocates guest cluster `index` (calls must come in increasing guest order) and returns its host
    /// offset.
    pub fn allocate(&mut self, index: u64) -> Result<u64> {
        let word = (index / 64) as usize;
        if index >= self.virtual_size.div_ceil(self.cluster_size) {
            return Err(Error::invalid(format!(
                "cluster {index} is beyond the virtual disk"
            )));
        }
        if self.last.is_some_and(|l| index <= l) {
            return Err(Error::invalid(format!(
                "qcow2 clusters must be allocated in increasing order ({index})"
            )));
        }
        self.last = Some(index);
        self.allocated[word] |= 1 << (index % 64);
        let host = self.data_start + self.count * self.cluster_size;
        self.count += 1;
        Ok(host)
    }

    /// Number of data clusters allocated so far.
    pub fn data_clusters(&self) -> u64 {
        self.count
    }

    /// Writes L2 tables, the L1 table, refcounts and the header; returns the file length.
    pub fn finish(self, out: &OutputFile) -> Result<u64> {
        let cs = self.cluster_size;
        let per_l2 = cs / 8;
        let clusters = self.virtual_size.div_ceil(cs);
        let l1_entries = clusters.div_ceil(per_l2);
        let mut next = self.data_start + self.count * cs;

        // L2 tables, one per L1 entry that covers an allocated cluster.
        let mut l1 = vec![0u64; l1_entries as usize];
        let mut rank = 0u64;
        let mut l2 = vec![0u8; cs as usize];
        for (t, l1_entry) in l1.iter_mut().enumerate() {
            let first = t as u64 * per_l2;
            let last = (first + per_l2).min(clusters);
            // A table covers a whole number of bitmap words (per_l2 >= 64): skip empty ones at once,
            // so a huge sparse disk costs time for its data, not for its size.
            let words = &self.allocated[(first / 64) as usize..last.div_ceil(64) as usize];
            if words.iter().all(|&w| w == 0) {
                continue;
            }
            l2.fill(0);
            for i in first..last {
                if self.allocated[(i / 64) as usize] & (1 << (i % 64)) != 0 {
                    let host = self.data_start + rank * cs;
                    rank += 1;
                    let at = ((i - first) * 8) as usize;
                    l2[at..at + 8].copy_from_slice(&(host | COPIED).to_be_bytes());
                }
            }
            out.write_at(&l2, next)?;
            *l1_entry = next | COPIED;
            next += cs;
        }
        let l1_offset = next;
        let l1_bytes: Vec<u8> = l1.iter().flat_map(|e| e.to_be_bytes()).collect();
        let l1_clusters = (l1_bytes.len() as u64).div_ceil(cs).max(1);
        if !l1_bytes.is_empty() {
            out.write_at(&l1_bytes, l1_offset)?;
        }
        next += l1_clusters * cs;

        // Refcounts (16-bit): every cluster up to the end, refcount blocks and table included.
        let per_block = cs / 2;
        let refcount_start = next;
        let (mut blocks, mut table_clusters) = (1u64, 1u64);
        loop {
            let total = refcount_start / cs + blocks + table_clusters;
            let need_blocks = total.div_ceil(per_block);
            let need_table = (need_blocks * 8).div_ceil(cs);
            if need_blocks == blocks && need_table == table_clusters {
                break;
            }
            blocks = need_blocks;
            table_clusters = need_table;
        }
        let total_clusters = refcount_start / cs + blocks + table_clusters;
        let table_offset = refcount_start + blocks * cs;
        let mut table = vec![0u8; (table_clusters * cs) as usize];
        let mut block = vec![0u8; cs as usize];
        for b in 0..blocks {
            block.fill(0);
            let first = b * per_block;
            let last = (first + per_block).min(total_clusters);
            for c in first..last {
                let at = ((c - first) * 2) as usize;
                block[at..at + 2].copy_from_slice(&1u16.to_be_bytes());
            }
            let off = refcount_start + b * cs;
            out.write_at(&block, off)?;
            table[(b * 8) as usize..(b * 8 + 8) as usize].copy_from_slice(&off.to_be_bytes());
        }
        out.write_at(&table, table_offset)?;
        let file_len = table_offset + table_clusters * cs;

        out.write_at(
            &self.header(l1_entries, l1_offset, table_offset, table_clusters),
            0,
        )?;
        out.set_len(file_len)?;
        Ok(file_len)
    }

    fn header(
        &self,
        l1_entries: u64,
        l1_offset: u64,
        table_offset: u64,
        table_clusters: u64,
    ) -> Vec<u8> {
        let mut h = vec![0u8; 112];
        h[0..4].copy_from_slice(&super::header::MAGIC);
        h[4..8].copy_from_slice(&3u32.to_be_bytes());
        h[20..24].copy_from_slice(&self.cluster_bits.to_be_bytes());
        h[24..32].copy_from_slice(&self.virtual_size.to_be_bytes());
        let crypt_method: u32 = if self.luks.is_some() { 2 } else { 0 };
        h[32..36].copy_from_slice(&crypt_method.to_be_bytes());
        h[36..40].copy_from_slice(&(l1_entries as u32).to_be_bytes());
        h[40..48].copy_from_slice(&l1_offset.to_be_bytes());
        h[48..56].copy_from_slice(&table_offset.to_be_bytes());
        h[56..60].copy_from_slice(&(table_clusters as u32).to_be_bytes());
        h[96..100].copy_from_slice(&4u32.to_be_bytes()); // refcount_order: 16-bit
        h[100..104].copy_from_slice(&112u32.to_be_bytes()); // header_length (byte 104: zlib)
        if let Some((offset, len)) = self.luks {
            push_ext(
                &mut h,
                EXT_FDE,
                &[offset.to_be_bytes(), len.to_be_bytes()].concat(),
            );
        }
        // Feature name table, as qemu-img writes it when it fits in cluster 0 with the end marker
        // (not with 512-byte clusters).
        let names: [(u8, u8, &str); 8] = [
            (0, 0, "dirty bit"),
            (0, 1, "corrupt bit"),
            (0, 2, "external data file"),
            (0, 3, "compression type"),
            (0, 4, "extended L2 entries"),
            (1, 0, "lazy refcounts"),
            (2, 0, "bitmaps"),
            (2, 1, "raw external data"),
        ];
        let mut table = Vec::new();
        for (kind, bit, name) in names {
            let mut entry = [0u8; 48];
            entry[0] = kind;
            entry[1] = bit;
            entry[2..2 + name.len()].copy_from_slice(name.as_bytes());
            table.extend_from_slice(&entry);
        }
        if (h.len() + 8 + table.len() + 8) as u64 <= self.cluster_size {
            push_ext(&mut h, EXT_FEATURES, &table);
        }
        h.extend_from_slice(&[0u8; 8]); // end of extensions
        h
    }
}

fn push_ext(h: &mut Vec<u8>, kind: u32, data: &[u8]) {
    h.extend_from_slice(&kind.to_be_bytes());
    h.extend_from_slice(&(data.len() as u32).to_be_bytes());
    h.extend_from_slice(data);
    h.resize(h.len().div_ceil(8) * 8, 0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::qcow2::header::Header;

    #[test]
    fn cluster_sizes_are_powers_of_two_from_512_to_2m() {
        assert_eq!(cluster_bits_of(512), Some(MIN_CLUSTER_BITS));
        assert_eq!(cluster_bits_of(64 << 10), Some(DEFAULT_CLUSTER_BITS));
        assert_eq!(cluster_bits_of(2 << 20), Some(MAX_CLUSTER_BITS));
        for bad in [0, 1, 256, 3000, 96 << 10, 4 << 20, u64::MAX] {
            assert_eq!(cluster_bits_of(bad), None, "{bad}");
        }
    }

    #[test]
    fn every_cluster_size_writes_a_header_that_fits_cluster_0_and_parses() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.qcow2");
        for bits in [MIN_CLUSTER_BITS - 1, MAX_CLUSTER_BITS + 1] {
            let out = OutputFile::create(&path, true).unwrap();
            let e = Qcow2Writer::new(&out, 1 << 20, None, bits).unwrap_err();
            assert!(e.message().contains("out of range"), "{e}");
        }
        let size = (5u64 << 20) + 512;
        for bits in MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS {
            for luks in [None, Some(&[7u8; 4608][..])] {
                let out = OutputFile::create(&path, true).unwrap();
                let mut w = Qcow2Writer::new(&out, size, luks, bits).unwrap();
                let cs = w.cluster_size();
                assert_eq!(cs, 1 << bits);
                let first = w.allocate(0).unwrap();
                // Data after the header cluster and the LUKS header's whole clusters.
                assert_eq!(
                    first,
                    cs + luks.map_or(0, |h| (h.len() as u64).next_multiple_of(cs))
                );
                w.allocate(size.div_ceil(cs) - 1).unwrap();
                let len = w.finish(&out).unwrap();
                out.commit(0o644).unwrap();
                let data = std::fs::read(&path).unwrap();
                assert_eq!(data.len() as u64, len);
                let h = Header::parse(&data[..cs as usize], len, &path).unwrap();
                assert_eq!((h.cluster_bits, h.size), (bits, size));
                assert_eq!(h.l2_bits, bits - 3);
            }
        }
    }
}
