//! A streaming writer of **dynamic** VHDs laid out exactly as blktap's `vhd-util copy` writes them
//! (`vhd-util.md`, "Layout of the output" and "Pitfalls"), with the batmap and its key hash: the format
//! IBM Cloud classic imports as an encrypted image (`ibm-classic-vhd`).
//!
//! Layout: footer copy at 0, dynamic header at 512, BAT at 1536 (padded with zeros to a sector), batmap
//! header right after the BAT, the batmap after it, then the 2 MiB blocks, each a 512-byte sector bitmap
//! (all ones) followed by the data, placed so the data starts on a 4 KiB boundary; the footer after the
//! last block. Like vhd-util, which appends each block where the footer was and rewrites the footer
//! after it, a stale copy of the footer stays right after the batmap and in the 3.5 KiB gap after every
//! block. Creator "tap\0" 1.3, host OS 0; `current_size` = `original_size` = BAT entries × 2 MiB
//! with the CHS geometry of that size.
//!
//! Blocks are allocated in increasing guest order, so the n-th allocated block always lives at
//! `first_block + n × stride`; the caller writes each block's bitmap ([`FULL_BITMAP`]) and data there, in
//! parallel, and [`ClassicVhdWriter::finish`] writes the metadata last. Every allocated block gets its
//! batmap bit: with a full bitmap that is what tapdisk expects (pitfalls 7 and 8).

use crate::error::{Error, Result};
use crate::image::vhd::batmap::{self, BatmapHeader, KeyHash};
use crate::image::vhd::dynamic::{self, RawDynamicHeader, UNALLOCATED};
use crate::image::vhd::footer::{self, MAX_VIRTUAL_SIZE};
use crate::io::OutputFile;

/// Block size (libvhd hard-codes 2 MiB).
pub const BLOCK_SIZE: u64 = 2 << 20;

/// 512-byte sectors per block.
pub const SECTORS_PER_BLOCK: u64 = BLOCK_SIZE / 512;

/// Creator application that makes libvhd look for the batmap.
pub const CREATOR_APP: [u8; 4] = *b"tap\0";

/// Creator version written (1.3, like vhd-util; libvhd wants ≥ 1.2, tapdisk refuses > 1.3).
pub const CREATOR_VERSION: u32 = 0x0001_0003;

/// Where the BAT starts.
pub const BAT_OFFSET: u64 = 1536;

/// Data alignment of each block (the bitmap sits in the sector before it).
pub const DATA_ALIGN: u64 = 4096;

/// The sector bitmap of every allocated block: all 4096 sectors present.
pub const FULL_BITMAP: [u8; 512] = [0xff; 512];

/// Where everything goes, for a given virtual size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Virtual size (a multiple of [`BLOCK_SIZE`]).
    pub virtual_size: u64,
    /// BAT entries (= blocks).
    pub entries: u64,
    /// Offset of the batmap header.
    pub batmap_header_at: u64,
    /// Offset of the batmap.
    pub batmap_at: u64,
    /// Sectors reserved (and written) for the batmap.
    pub batmap_sectors: u64,
    /// End of the metadata (after the batmap): where vhd-util first puts the footer.
    pub meta_end: u64,
    /// Offset of the first block's bitmap sector.
    pub first_block: u64,
    /// Distance between consecutive allocated blocks.
    pub stride: u64,
}

impl Layout {
    /// The layout of a disk of `virtual_size` bytes (a multiple of 2 MiB, at most 2040 GiB).
    pub fn new(virtual_size: u64) -> Result<Layout> {
        if virtual_size == 0 || !virtual_size.is_multiple_of(BLOCK_SIZE) {
            return Err(Error::invalid(format!(
                "dynamic VHD size {virtual_size} is not a positive multiple of 2 MiB"
            )));
        }
        if virtual_size > MAX_VIRTUAL_SIZE {
            return Err(Error::invalid(format!(
                "dynamic VHD size {virtual_size} is beyond VHD's 2040 GiB limit ({MAX_VIRTUAL_SIZE})"
            )));
        }
        let entries = virtual_size / BLOCK_SIZE;
        let batmap_header_at = BAT_OFFSET + (entries * 4).next_multiple_of(512);
        let batmap_at = batmap_header_at + 512;
        let batmap_sectors = batmap::map_sectors(entries);
        let meta_end = batmap_at + batmap_sectors * 512;
        let first_block = (meta_end + 512).next_multiple_of(DATA_ALIGN) - 512;
        let stride = (BLOCK_SIZE + 512).next_multiple_of(DATA_ALIGN);
        Ok(Layout {
            virtual_size,
            entries,
            batmap_header_at,
            batmap_at,
            batmap_sectors,
            meta_end,
            first_block,
            stride,
        })
    }

    /// Offset of the bitmap of the `n`-th allocated block.
    pub fn block_at(&self, n: u64) -> u64 {
        self.first_block + n * self.stride
    }
}

/// Builds an encrypted dynamic VHD in an [`OutputFile`].
#[derive(Debug)]
pub struct ClassicVhdWriter {
    layout: Layout,
    footer: [u8; 512],
    bat: Vec<u32>,
    count: u64,
    last: Option<u64>,
}

impl ClassicVhdWriter {
    /// Starts a disk of `virtual_size` bytes (a multiple of 2 MiB, at most 2040 GiB) whose footer has
    /// unique id `uuid` and `timestamp` (seconds since 2000-01-01 UTC).
    pub fn new(virtual_size: u64, uuid: [u8; 16], timestamp: u32) -> Result<ClassicVhdWriter> {
        let layout = Layout::new(virtual_size)?;
        let bat = vec![
            UNALLOCATED;
            usize::try_from(layout.entries)
                .map_err(|_| Error::invalid("BAT too large"))?
        ];
        Ok(ClassicVhdWriter {
            layout,
            footer: footer_bytes(virtual_size, uuid, timestamp),
            bat,
            count: 0,
            last: None,
        })
    }

    /// The footer. vhd-util appends each block where its footer was and rewrites the footer after it, so
    /// a copy stays behind in the gap after every block but the last: the caller writes this at
    /// `bitmap offset + 512 + BLOCK_SIZE` of every block it writes (the last one is the real footer).
    pub fn footer(&self) -> &[u8; 512] {
        &self.footer
    }

    /// The layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Allocates guest block `index` (calls must come in increasing order) and returns the offset of its
    /// bitmap sector; the data goes 512 bytes after it.
    pub fn allocate(&mut self, index: u64) -> Result<u64> {
        if index >= self.layout.entries {
            return Err(Error::invalid(format!(
                "block {index} is beyond the virtual disk ({} blocks)",
                self.layout.entries
            )));
        }
        if self.last.is_some_and(|l| index <= l) {
            return Err(Error::invalid(format!(
                "VHD blocks must be allocated in increasing order ({index})"
            )));
        }
        let at = self.layout.block_at(self.count);
        let sector = u32::try_from(at / 512)
            .ok()
            .filter(|&s| s != UNALLOCATED)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "block {index} would lie at {at:#x}, beyond what a VHD BAT can address"
                ))
            })?;
        self.bat[index as usize] = sector;
        self.last = Some(index);
        self.count += 1;
        Ok(at)
    }

    /// Number of blocks allocated so far.
    pub fn allocated(&self) -> u64 {
        self.count
    }

    /// Writes the footer (at the end and its copy at 0), the dynamic header, the BAT, the batmap header
    /// with `keyhash`, and the batmap; sets the file length; returns it.
    pub fn finish(self, out: &OutputFile, keyhash: &KeyHash) -> Result<u64> {
        let l = self.layout;
        let end = if self.count == 0 {
            l.meta_end
        } else {
            l.block_at(self.count - 1) + 512 + BLOCK_SIZE
        };
        let foot = self.footer;
        out.write_at(&foot, 0)?;
        out.write_at(&header_bytes(l.entries), 512)?;
        let mut bat: Vec<u8> = self.bat.iter().flat_map(|e| e.to_be_bytes()).collect();
        bat.resize((l.batmap_header_at - BAT_OFFSET) as usize, 0);
        out.write_at(&bat, BAT_OFFSET)?;
        let mut map = vec![0u8; (l.batmap_sectors * 512) as usize];
        for (i, &e) in self.bat.iter().enumerate() {
            if e != UNALLOCATED {
                batmap::set_bit(&mut map, i as u64);
            }
        }
        let summed = (batmap::checksum_sectors(l.virtual_size) * 512) as usize;
        let header = BatmapHeader {
            cookie: *batmap::COOKIE,
            batmap_offset: l.batmap_at,
            batmap_size: u32::try_from(summed / 512).unwrap_or(u32::MAX),
            version: batmap::VERSION,
            checksum: batmap::checksum(&map[..summed.min(map.len())]),
            marker: 0,
            keyhash: keyhash.clone(),
        };
        out.write_at(&header.encode(), l.batmap_header_at)?;
        out.write_at(&map, l.batmap_at)?;
        if self.count > 0 && l.meta_end + 512 <= l.first_block {
            // vhd-util creates the file with its footer right after the batmap, then appends blocks at
            // the next 4 KiB-aligned data position; that first footer stays behind as a stale copy.
            out.write_at(&foot, l.meta_end)?;
        }
        out.write_at(&foot, end)?;
        let len = end + 512;
        out.set_len(len)?;
        Ok(len)
    }
}

/// The footer of a vhd-util-style dynamic VHD of `size` bytes.
pub fn footer_bytes(size: u64, uuid: [u8; 16], timestamp: u32) -> [u8; 512] {
    let spec = footer::FooterSpec {
        disk_type: 3,
        data_offset: 512,
        creator_app: CREATOR_APP,
        creator_version: CREATOR_VERSION,
        creator_os: [0; 4],
    };
    footer::build_footer(spec, size, uuid, timestamp)
}

/// The dynamic header for `entries` 2 MiB blocks, BAT at [`BAT_OFFSET`].
pub fn header_bytes(entries: u64) -> [u8; dynamic::HEADER_SIZE] {
    let mut raw = RawDynamicHeader {
        cookie: *dynamic::COOKIE,
        data_offset: u64::MAX,
        table_offset: BAT_OFFSET,
        header_version: 0x0001_0000,
        max_table_entries: u32::try_from(entries).unwrap_or(u32::MAX),
        block_size: BLOCK_SIZE as u32,
        checksum: 0,
        parent_unique_id: [0; 16],
        parent_timestamp: 0,
        reserved1: 0,
        parent_unicode_name: [0; 512],
        parent_locators: [dynamic::ParentLocator::default(); 8],
        reserved2: [0; 256],
    };
    raw.seal();
    raw.encode()
}

/// Seconds since 2000-01-01 00:00:00 UTC, now (the VHD timestamp).
pub fn vhd_timestamp_now() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| {
            u32::try_from(d.as_secs().saturating_sub(946_684_800)).unwrap_or(u32::MAX)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_vhd_util() {
        // fixtures/vhd-util/encrypted-*.vhd: 5 blocks, batmap header at 0x800, batmap at 0xa00,
        // blocks at 0xe00 and 0x201e00.
        let l = Layout::new(10 << 20).unwrap();
        assert_eq!(
            (
                l.entries,
                l.batmap_header_at,
                l.batmap_at,
                l.batmap_sectors,
                l.meta_end
            ),
            (5, 0x800, 0xa00, 1, 0xc00)
        );
        assert_eq!((l.block_at(0), l.block_at(1)), (0xe00, 0x201e00));
        let big = Layout::new(MAX_VIRTUAL_SIZE).unwrap();
        assert_eq!(big.entries, 1_044_480);
        assert_eq!((big.block_at(0) + 512) % 4096, 0);
        assert!(big.block_at(big.entries - 1) / 512 < u64::from(u32::MAX));
        assert!(Layout::new(MAX_VIRTUAL_SIZE + BLOCK_SIZE).is_err());
        assert!(Layout::new(3 << 20).is_err());
    }

    #[test]
    fn footer_and_header_like_vhd_util() {
        let f = footer::RawFooter::decode(&footer_bytes(10 << 20, [1; 16], 5));
        assert_eq!((f.cylinders, f.heads, f.sectors), (301, 4, 17));
        assert_eq!(f.computed_checksum(), f.checksum);
        let h = RawDynamicHeader::decode(&header_bytes(5));
        // Byte-identical to the header vhd-util wrote (same checksum).
        assert_eq!(h.checksum, 0xffff_f472);
    }

    #[test]
    fn batmap_one_sector_short_edge_like_libvhd() {
        // 8 GiB + 2 MiB: 4097 blocks need 2 batmap sectors; libvhd's size rule says 1. The header says 1
        // and the checksum covers 1 sector (what libvhd checks); both sectors are reserved and written.
        let size = (8u64 << 30) + BLOCK_SIZE;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("edge.vhd");
        let out = OutputFile::create(&path, false).unwrap();
        let mut w = ClassicVhdWriter::new(size, [5; 16], 1).unwrap();
        assert_eq!(w.layout().batmap_sectors, 2);
        let at = w.allocate(4096).unwrap();
        out.write_at(&FULL_BITMAP, at).unwrap();
        let key: Vec<u8> = (1u8..=64).collect();
        let len = w.finish(&out, &KeyHash::of_key(&key, [0; 32])).unwrap();
        out.commit(0o644).unwrap();
        assert_eq!(len, at + 512 + BLOCK_SIZE + 512);
        let (_, b) = crate::image::vhd::classic::read_batmap(&path).unwrap();
        assert_eq!(b.header.batmap_size, 1);
        assert!(b.checksum_ok());
        assert_eq!(b.map.len(), 1024);
        assert_eq!(b.set_blocks(4097), [4096]);
        assert!(b.header.keyhash.matches(&key));
    }

    #[test]
    fn allocation_order_is_enforced() {
        let mut w = ClassicVhdWriter::new(10 << 20, [1; 16], 0).unwrap();
        assert_eq!(w.allocate(0).unwrap(), 0xe00);
        assert_eq!(w.allocate(3).unwrap(), 0x201e00);
        assert!(w.allocate(2).is_err());
        assert!(w.allocate(5).is_err());
        assert_eq!(w.allocated(), 2);
    }
}
