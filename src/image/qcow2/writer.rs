//! A streaming qcow2 v3 writer: data clusters first, in guest order, then the L2 tables, the L1 table,
//! the refcount blocks and table, and last the header. Optionally with QEMU's native LUKS encryption
//! (`encrypt.format=luks`): a LUKS1 header in refcounted clusters named by the FDE header extension
//! (0x0537be77), and data sectors encrypted with IV = host file offset / 512.
//!
//! Only clusters that hold data are allocated (the output stays sparse); every cluster has refcount 1 and
//! every L1/L2 entry has the COPIED bit, which is what `qemu-img check` wants (`formats.md` §3, §5.3).
//!
//! Because clusters are allocated in guest order, the k-th allocated cluster always lives at
//! `data_start + k * cluster_size`: the writer keeps one bit per guest cluster, not a map.

use crate::error::{Error, Result};
use crate::io::OutputFile;

/// Cluster size written (64 KiB, QEMU's default).
pub const CLUSTER_BITS: u32 = 16;
const COPIED: u64 = 1 << 63;
/// FDE ("full disk encryption") header pointer extension.
const EXT_FDE: u32 = 0x0537_be77;
/// Feature name table extension (written so `qemu-img info` can name our feature bits).
const EXT_FEATURES: u32 = 0x6803_f857;
/// QEMU's maximum L1 table size.
const MAX_L1_BYTES: u64 = 32 << 20;

/// Builds a qcow2 file in an [`OutputFile`].
#[derive(Debug)]
pub struct Qcow2Writer {
    cluster_size: u64,
    virtual_size: u64,
    luks: Option<(u64, u64)>,
    data_start: u64,
    allocated: Vec<u64>,
    count: u64,
    last: Option<u64>,
}

impl Qcow2Writer {
    /// Starts an image of `virtual_size` bytes; with `luks_header`, writes it at cluster 1 and records it
    /// in the FDE extension (the header's length is rounded up to whole clusters on disk).
    pub fn new(
        out: &OutputFile,
        virtual_size: u64,
        luks_header: Option<&[u8]>,
    ) -> Result<Qcow2Writer> {
        let cluster_size = 1u64 << CLUSTER_BITS;
        let clusters = virtual_size.div_ceil(cluster_size);
        let l1_entries = clusters.div_ceil(cluster_size / 8);
        if l1_entries * 8 > MAX_L1_BYTES {
            return Err(Error::invalid(format!(
                "virtual size {virtual_size} needs an L1 table beyond QEMU's 32 MiB limit"
            )));
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
            let mut any = false;
            l2.fill(0);
            for i in first..last {
                if self.allocated[(i / 64) as usize] & (1 << (i % 64)) != 0 {
                    let host = self.data_start + rank * cs;
                    rank += 1;
                    let at = ((i - first) * 8) as usize;
                    l2[at..at + 8].copy_from_slice(&(host | COPIED).to_be_bytes());
                    any = true;
                }
            }
            if any {
                out.write_at(&l2, next)?;
                *l1_entry = next | COPIED;
                next += cs;
            }
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
        h[0..4].copy_from_slice(b"QFI\xfb");
        h[4..8].copy_from_slice(&3u32.to_be_bytes());
        h[20..24].copy_from_slice(&CLUSTER_BITS.to_be_bytes());
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
        // Feature name table, as qemu-img writes it.
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
        push_ext(&mut h, EXT_FEATURES, &table);
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
