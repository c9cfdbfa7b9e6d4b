//! The parallel engine: a byte range is cut into chunks that a pool of workers processes with a bounded
//! set of buffers (memory does not grow with the image).
//!
//! - [`Pipeline::scan_ordered`]: parallel work in waves (read, encrypt or decrypt), and one in-order
//!   pass over each wave (write, hash) while the next wave is worked on. Writes go out from one thread,
//!   in order, 4 MiB at a time: two threads `pwrite`-ing into one ext4 file serialise on its inode lock
//!   and its dirty-page throttling, which made two threads 3-4× slower than one on a real disk.
//! - [`Pipeline::allocating_waves`] (`waves.rs`): the sparse writers' mode: units that hold data are
//!   allocated in guest order, then encrypted and written in parallel.
//! - [`extents`]: which parts of a chunk hold source data, and the all-zero test.
//!
//! Cancellation (Ctrl-C) is checked between chunks; progress is an atomic counter the caller reads.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use rayon::prelude::*;

use crate::error::{Error, ErrorKind, Result};

pub mod extents;
mod waves;

pub use waves::StoreUnit;

/// Default chunk size: large enough to amortise syscalls, small enough for many chunks per core.
pub const DEFAULT_CHUNK: usize = 4 << 20;

/// The most chunks in one wave of [`Pipeline::scan_ordered`] (two waves in memory: 48 MiB of buffers).
pub const MAX_WAVE: usize = 6;

/// Counts processed bytes; cheap enough to update per chunk from every worker. Before the data phase,
/// the stage says what the job is doing (e.g. "deriving key (argon2id, 1 GiB, 4 iterations)").
#[derive(Debug, Default)]
pub struct Progress {
    done: AtomicU64,
    stage: std::sync::Mutex<String>,
}

impl Progress {
    /// A counter at zero.
    pub fn new() -> Self {
        Self::default()
    }
    /// Says what the job does before its data phase.
    pub fn set_stage(&self, stage: impl Into<String>) {
        if let Ok(mut s) = self.stage.lock() {
            *s = stage.into();
        }
    }
    /// The current stage ("" until one is set).
    pub fn stage(&self) -> String {
        self.stage.lock().map(|s| s.clone()).unwrap_or_default()
    }
    /// Bytes processed so far.
    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }
    fn add(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
    }
}

/// How a job is run: worker count, cancellation flag, progress counter.
#[derive(Debug)]
pub struct Run<'a> {
    /// Worker threads (all cores when `None`).
    pub threads: Option<usize>,
    /// Set to stop early (Ctrl-C); the output is then removed.
    pub cancel: &'a AtomicBool,
    /// Bytes done, read by the caller's progress display.
    pub progress: &'a Progress,
    /// Total bytes of the data phase, set once the header work is done.
    pub total: &'a AtomicU64,
}

/// A worker pool and a chunk size.
#[derive(Debug)]
pub struct Pipeline {
    pool: rayon::ThreadPool,
    chunk: usize,
}

fn interrupted() -> Error {
    Error::new(ErrorKind::Interrupted, "interrupted; no output was written")
}

impl Pipeline {
    /// A pool of `threads` workers (all cores when `None`) working on `chunk`-byte pieces.
    pub fn new(threads: Option<usize>, chunk: usize) -> Result<Pipeline> {
        if threads == Some(0) {
            return Err(Error::invalid("--threads must be at least 1"));
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.unwrap_or(0))
            .thread_name(|i| format!("diskseal-{i}"))
            .build()
            .map_err(|e| Error::invalid(format!("cannot start worker threads: {e}")))?;
        Ok(Pipeline { pool, chunk })
    }

    /// Number of workers.
    pub fn threads(&self) -> usize {
        self.pool.current_num_threads()
    }

    /// Chunk size in bytes.
    pub fn chunk(&self) -> usize {
        self.chunk
    }

    /// Runs `f` inside the worker pool (so rayon parallel iterators in it use these workers).
    pub fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.pool.install(f)
    }

    /// Counts `n` bytes as done.
    pub fn advance(progress: &Progress, n: u64) {
        progress.add(n);
    }

    /// True once cancellation was requested; as an error ready to return.
    pub fn check_cancel(cancel: &AtomicBool) -> Result<()> {
        if cancel.load(Ordering::Relaxed) {
            Err(interrupted())
        } else {
            Ok(())
        }
    }

    /// Runs `work(buf, offset)` on waves of chunks in parallel, and `consume(buf, offset)` on each chunk
    /// of a wave in order, while the next wave is being worked on (two sets of wave buffers of at most
    /// [`MAX_WAVE`] chunks: memory does not grow with the thread count beyond that).
    pub fn scan_ordered<F, C>(
        &self,
        len: u64,
        cancel: &AtomicBool,
        progress: &Progress,
        work: F,
        mut consume: C,
    ) -> Result<()>
    where
        F: Fn(&mut [u8], u64) -> Result<()> + Sync,
        C: FnMut(&[u8], u64) -> Result<()> + Send,
    {
        let chunk = self.chunk as u64;
        let wave = (self.threads() * 2).clamp(2, MAX_WAVE);
        let mut off = 0u64;
        // Lays out the next wave's chunks from `off` on; returns how many.
        let mut plan = |bufs: &mut [(Vec<u8>, u64)]| -> usize {
            let mut n = 0;
            while off < len && n < bufs.len() {
                let this = chunk.min(len - off) as usize;
                bufs[n].0.resize(this, 0);
                bufs[n].1 = off;
                off += this as u64;
                n += 1;
            }
            n
        };
        let fill = |jobs: &mut [(Vec<u8>, u64)]| -> Result<()> {
            jobs.par_iter_mut().try_for_each(|(buf, o)| work(buf, *o))
        };
        let mut cur: Vec<(Vec<u8>, u64)> = vec![(Vec::new(), 0); wave];
        let mut next = cur.clone();
        let mut n_cur = plan(&mut cur);
        self.pool.install(|| fill(&mut cur[..n_cur]))?;
        while n_cur > 0 {
            if cancel.load(Ordering::Relaxed) {
                return Err(interrupted());
            }
            let n_next = plan(&mut next);
            let (consumed, filled) = self.pool.install(|| {
                rayon::join(
                    || -> Result<()> {
                        for (buf, o) in &cur[..n_cur] {
                            consume(buf, *o)?;
                            progress.add(buf.len() as u64);
                        }
                        Ok(())
                    },
                    || fill(&mut next[..n_next]),
                )
            });
            consumed?;
            filled?;
            std::mem::swap(&mut cur, &mut next);
            n_cur = n_next;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_is_in_order() {
        let p = Pipeline::new(Some(2), 7).unwrap();
        let mut out = Vec::new();
        p.scan_ordered(
            100,
            &AtomicBool::new(false),
            &Progress::new(),
            |buf, off| {
                for (i, b) in buf.iter_mut().enumerate() {
                    *b = (off as usize + i) as u8;
                }
                Ok(())
            },
            |buf, _| {
                out.extend_from_slice(buf);
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(out, (0..100).map(|i| i as u8).collect::<Vec<_>>());
    }

    #[test]
    fn scan_stops_with_interrupted_and_errors_reach_the_caller() {
        let p = Pipeline::new(Some(2), 10).unwrap();
        let e = p
            .scan_ordered(
                100,
                &AtomicBool::new(true),
                &Progress::new(),
                |_, _| Ok(()),
                |_, _| Ok(()),
            )
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Interrupted);
        let fail_at = |at: u64| {
            move |_: &[u8], off: u64| {
                if off == at {
                    Err(Error::invalid("boom"))
                } else {
                    Ok(())
                }
            }
        };
        for at in [0, 40, 90] {
            let work = |b: &mut [u8], o: u64| fail_at(at)(b, o);
            let e = p
                .scan_ordered(
                    100,
                    &AtomicBool::new(false),
                    &Progress::new(),
                    work,
                    |_, _| Ok(()),
                )
                .unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{at}");
            let e = p
                .scan_ordered(
                    100,
                    &AtomicBool::new(false),
                    &Progress::new(),
                    |_, _| Ok(()),
                    fail_at(at),
                )
                .unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{at}");
        }
    }
}
