//! The dm-verity root hash of a disk, as `veritysetup format --no-superblock` computes it (hash format
//! 1, SHA-256, 4096-byte hash blocks, the salt hashed before each block), without reading the disk's
//! known-zero runs.
//!
//! The tree: every data block's hash H(salt || block) is packed, 128 to a 4096-byte hash block (the
//! last one of a level padded with zero bytes); each hash block is hashed the same way into the level
//! above, until one block is left, whose hash is the root. An all-zero data block always has the same
//! hash, so a hash block made only of zero-block hashes does too, and so on up: [`VerityTree`] keeps
//! that hash per level, and a run of N zero blocks costs O(levels × 128) hashes, not N.

use sha2::{Digest, Sha256};

/// Hash block size (and the data block size when the disk allows it).
pub const HASH_BLOCK: usize = 4096;
/// SHA-256 digest length.
const DIGEST: usize = 32;
/// Digests per hash block.
const PER_BLOCK: u64 = (HASH_BLOCK / DIGEST) as u64;

/// Hashes data blocks the way the tree does (H(salt || block)); cheap to share between workers.
#[derive(Debug, Clone)]
pub struct BlockHasher {
    salted: Sha256,
    block: usize,
    zero: [u8; DIGEST],
}

impl BlockHasher {
    /// The hash of the data block `data` (shorter than a block: padded with zeros, the disk's tail).
    pub fn hash(&self, data: &[u8]) -> [u8; DIGEST] {
        if crate::pipeline::extents::is_zero(data) {
            return self.zero;
        }
        let mut h = self.salted.clone();
        h.update(data);
        if data.len() < self.block {
            h.update(vec![0u8; self.block - data.len()]);
        }
        h.finalize().into()
    }

    /// The hashes of the consecutive data blocks of `buf`.
    pub fn hash_all(&self, buf: &[u8]) -> Vec<[u8; DIGEST]> {
        buf.chunks(self.block).map(|b| self.hash(b)).collect()
    }

    /// The data block size.
    pub fn block(&self) -> usize {
        self.block
    }
}

/// The dm-verity data block size diskseal uses for a disk of `size` bytes: 4096 when it divides the
/// size, else 512 (veritysetup's `--data-block-size`).
pub fn data_block_size(size: u64) -> u32 {
    if size.is_multiple_of(HASH_BLOCK as u64) {
        HASH_BLOCK as u32
    } else {
        512
    }
}

/// A dm-verity hash tree built in data order: [`VerityTree::push`] the hash of each data block (or
/// [`VerityTree::push_zeros`] for a run of zero blocks), then [`VerityTree::finish`].
#[derive(Debug, Clone)]
pub struct VerityTree {
    hasher: BlockHasher,
    levels: usize,
    /// Per level, the hash block being filled.
    pending: Vec<Vec<u8>>,
    /// `zero[l]`: the hash of an all-zero input block of level `l` (a data block at level 0).
    zero: Vec<[u8; DIGEST]>,
    blocks: u64,
    pushed: u64,
    root: Option<[u8; DIGEST]>,
}

impl VerityTree {
    /// A tree over `size` bytes in data blocks of `data_block` bytes (a short last block is padded with
    /// zeros), hashed with `salt`.
    pub fn new(size: u64, data_block: u32, salt: &[u8]) -> VerityTree {
        let mut salted = Sha256::new();
        salted.update(salt);
        let block = data_block as usize;
        let blocks = size.div_ceil(u64::from(data_block)).max(1);
        // veritysetup's level count: the fewest levels whose top holds a single hash block.
        let mut levels = 0;
        while 7 * levels < 64 && (blocks - 1) >> (7 * levels) != 0 {
            levels += 1;
        }
        let hash = |parts: &[&[u8]]| -> [u8; DIGEST] {
            let mut h = salted.clone();
            for p in parts {
                h.update(p);
            }
            h.finalize().into()
        };
        let mut zero = vec![hash(&[&vec![0u8; block]])];
        for l in 0..levels {
            let full = zero[l].repeat(PER_BLOCK as usize);
            zero.push(hash(&[&full]));
        }
        VerityTree {
            hasher: BlockHasher {
                salted,
                block,
                zero: zero[0],
            },
            levels,
            pending: vec![Vec::with_capacity(HASH_BLOCK); levels],
            zero,
            blocks,
            pushed: 0,
            root: None,
        }
    }

    /// The data-block hasher, for workers.
    pub fn hasher(&self) -> &BlockHasher {
        &self.hasher
    }

    /// Adds the hash of the next data block.
    pub fn push(&mut self, hash: [u8; DIGEST]) {
        self.pushed += 1;
        self.add(0, hash);
    }

    /// Adds `n` all-zero data blocks.
    pub fn push_zeros(&mut self, n: u64) {
        self.pushed += n;
        self.add_zeros(0, n);
    }

    /// Data blocks added so far.
    pub fn pushed(&self) -> u64 {
        self.pushed
    }

    fn add(&mut self, level: usize, hash: [u8; DIGEST]) {
        if level == self.levels {
            self.root = Some(hash);
            return;
        }
        self.pending[level].extend_from_slice(&hash);
        if self.pending[level].len() == HASH_BLOCK {
            let h = self.hash_pending(level);
            self.add(level + 1, h);
        }
    }

    fn add_zeros(&mut self, level: usize, mut n: u64) {
        if level == self.levels {
            if n > 0 {
                self.root = Some(self.zero[level]);
            }
            return;
        }
        // Up to the next hash-block boundary one by one, then whole zero blocks one level up.
        while n > 0 && !self.pending[level].is_empty() {
            self.add(level, self.zero[level]);
            n -= 1;
        }
        if n >= PER_BLOCK {
            self.add_zeros(level + 1, n / PER_BLOCK);
        }
        for _ in 0..n % PER_BLOCK {
            self.add(level, self.zero[level]);
        }
    }

    /// Hashes the pending block of `level` (padded with zero bytes) and empties it.
    fn hash_pending(&mut self, level: usize) -> [u8; DIGEST] {
        let p = &mut self.pending[level];
        p.resize(HASH_BLOCK, 0);
        let mut h = self.hasher.salted.clone();
        h.update(&p[..]);
        p.clear();
        h.finalize().into()
    }

    /// The root hash. Blocks not pushed by then count as zeros.
    pub fn finish(mut self) -> [u8; DIGEST] {
        let missing = self.blocks.saturating_sub(self.pushed);
        self.push_zeros(missing);
        for level in 0..self.levels {
            if !self.pending[level].is_empty() {
                let h = self.hash_pending(level);
                self.add(level + 1, h);
            }
        }
        self.root.unwrap_or(self.zero[self.levels])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tree the slow way, level by level over every block (the shape of veritysetup's loop).
    fn naive(data: &[u8], block: usize, salt: &[u8]) -> [u8; 32] {
        let h = |b: &[u8]| -> [u8; 32] {
            let mut s = Sha256::new();
            s.update(salt);
            s.update(b);
            s.finalize().into()
        };
        let mut hashes: Vec<[u8; 32]> = data.chunks(block).map(h).collect();
        if hashes.len() == 1 {
            return hashes[0];
        }
        loop {
            let next: Vec<[u8; 32]> = hashes
                .chunks(128)
                .map(|c| {
                    let mut b = c.concat();
                    b.resize(HASH_BLOCK, 0);
                    h(&b)
                })
                .collect();
            if next.len() == 1 {
                return next[0];
            }
            hashes = next;
        }
    }

    #[test]
    fn zero_runs_give_the_same_root_as_hashing_every_block() {
        for (blocks, data_at) in [
            (1u64, vec![0u64]),
            (1, vec![]),
            (2, vec![1]),
            (128, vec![]),
            (129, vec![128]),
            (300, vec![0, 200]),
            (128 * 128 + 5, vec![7, 128 * 128 + 1]),
            (128 * 128 * 2, vec![128 * 128]),
        ] {
            for block in [512usize, 4096] {
                let mut data = vec![0u8; blocks as usize * block];
                for &b in &data_at {
                    data[b as usize * block + 3] = b as u8 + 1;
                }
                let want = naive(&data, block, b"salt");
                let mut t = VerityTree::new(data.len() as u64, block as u32, b"salt");
                let mut next = 0;
                for &b in &data_at {
                    t.push_zeros(b - next);
                    let at = b as usize * block;
                    t.push(t.hasher().hash(&data[at..at + block]));
                    next = b + 1;
                }
                assert_eq!(
                    t.finish(),
                    want,
                    "{blocks} blocks of {block}, data at {data_at:?}"
                );
            }
        }
    }
}
