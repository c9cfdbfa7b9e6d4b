//! The allocate-in-guest-order mode of the pipeline, used by the sparse writers (qcow2, vhd-util VHD):
//! waves of chunks are read in parallel, their non-zero units allocated in guest order and encrypted in
//! parallel, then written by one thread in file order while the next wave is read and encrypted.

use super::extents::is_zero;
use super::{Pipeline, Run};
use crate::error::Result;

/// Encrypts, in place, a run of allocated units that follow each other both in the guest and in the
/// file: (their bytes, the first unit's index, its host offset). Called from the workers in parallel.
pub type SealUnits<'a> = dyn Fn(&mut [u8], u64, u64) -> Result<()> + Sync + 'a;

/// Writes a sealed run (same arguments as [`SealUnits`]). Called from one thread, in file order.
pub type PutUnits<'a> = dyn FnMut(&[u8], u64, u64) -> Result<()> + Send + 'a;

/// A chunk of a wave: its buffer (whole units), guest offset, bytes of the disk in it, and
/// (unit index in the chunk, host offset) of the units that hold data.
#[derive(Default)]
struct Job {
    buf: Vec<u8>,
    at: u64,
    len: usize,
    alloc: Vec<(u64, u64)>,
}

/// The runs of allocated units (`alloc`: unit index in the chunk, host offset) that are consecutive in
/// the guest and in the file, as (first unit index in the chunk, unit count, host offset): one seal and
/// one write per run.
fn runs(alloc: &[(u64, u64)], unit: u64) -> impl Iterator<Item = (u64, u64, u64)> + '_ {
    let mut k = 0;
    std::iter::from_fn(move || {
        let &(i, host) = alloc.get(k)?;
        let mut n = 1;
        while alloc
            .get(k + n)
            .is_some_and(|&(j, h)| j == i + n as u64 && h == host + n as u64 * unit)
        {
            n += 1;
        }
        k += n;
        Some((i, n as u64, host))
    })
}

impl Pipeline {
    /// The allocate-in-guest-order data path of the sparse writers (qcow2, vhd-util VHD), in waves of
    /// chunks made of whole `unit`s:
    /// 1. `read(buf, offset)` fills each chunk in parallel; `false` means "known zeros, nothing read";
    ///    a chunk that ends the disk inside a unit is padded with zeros to the whole unit;
    /// 2. every unit that is not all zeros is allocated, in guest order, with `allocate(unit_index)`;
    /// 3. `seal(bytes, unit_index, host_offset)` encrypts the allocated units in parallel, one call per run
    ///    of units that are consecutive in the guest and in the file;
    /// 4. `put` writes the same runs from one thread, in file order.
    ///
    /// Step 4 of a wave runs alongside steps 1-3 of the next one (two sets of wave buffers): one thread
    /// writes while the others read and encrypt. Two threads writing into one ext4 file at once
    /// serialise on its inode lock (see [`Pipeline::scan_ordered`]), so more writers would only wait.
    /// `skip(offset)` returns the first offset at or after `offset` that may hold data, so holes cost no time.
    #[allow(clippy::too_many_arguments)]
    pub fn allocating_waves(
        &self,
        len: u64,
        unit: u64,
        run: &Run<'_>,
        skip: &dyn Fn(u64) -> u64,
        read: &(dyn Fn(&mut [u8], u64) -> Result<bool> + Sync),
        allocate: &mut (dyn FnMut(u64) -> Result<u64> + Send),
        seal: &SealUnits<'_>,
        put: &mut PutUnits<'_>,
    ) -> Result<()> {
        use rayon::prelude::*;
        let chunk = (self.chunk() as u64 / unit).max(1) * unit;
        let wave = super::wave_chunks(self.threads(), chunk as usize);
        let new_wave = || -> Vec<Job> { (0..wave).map(|_| Job::default()).collect() };
        // Lays out the next wave from `off` on (holes are skipped and counted as done); returns its size.
        let mut off = 0u64;
        let mut plan = |jobs: &mut [Job]| -> Result<usize> {
            let mut n = 0;
            while off < len && n < jobs.len() {
                Pipeline::check_cancel(run.cancel)?;
                let next = (skip(off).min(len) / unit * unit).max(off);
                if next > off {
                    Pipeline::advance(run.progress, next - off);
                    off = next;
                    continue;
                }
                let this = chunk.min(len - off);
                let job = &mut jobs[n];
                job.buf.resize(this.next_multiple_of(unit) as usize, 0);
                job.buf[this as usize..].fill(0);
                job.at = off;
                job.len = this as usize;
                job.alloc.clear();
                n += 1;
                off += this;
            }
            Ok(n)
        };
        let fill = |jobs: &mut [Job]| -> Result<()> {
            jobs.par_iter_mut().try_for_each(|job| -> Result<()> {
                if !read(&mut job.buf[..job.len], job.at)? {
                    return Ok(());
                }
                for (i, u) in job.buf.chunks(unit as usize).enumerate() {
                    if !is_zero(u) {
                        job.alloc.push((i as u64, 0));
                    }
                }
                Ok(())
            })
        };
        let mut place = |jobs: &mut [Job]| -> Result<()> {
            for job in jobs {
                let first = job.at / unit;
                for (i, host) in job.alloc.iter_mut() {
                    *host = allocate(first + *i)?;
                }
            }
            Ok(())
        };
        let seal_all = |jobs: &mut [Job]| -> Result<()> {
            jobs.par_iter_mut().try_for_each(|job| -> Result<()> {
                for (i, n, host) in runs(&job.alloc, unit) {
                    let bytes = &mut job.buf[(i * unit) as usize..((i + n) * unit) as usize];
                    seal(bytes, job.at / unit + i, host)?;
                }
                Ok(())
            })
        };
        let mut put_all = |jobs: &[Job]| -> Result<()> {
            for job in jobs {
                for (i, n, host) in runs(&job.alloc, unit) {
                    let bytes = &job.buf[(i * unit) as usize..((i + n) * unit) as usize];
                    put(bytes, job.at / unit + i, host)?;
                }
            }
            Ok(())
        };
        let (mut cur, mut next) = (new_wave(), new_wave());
        let mut n_cur = plan(&mut cur)?;
        self.install(|| fill(&mut cur[..n_cur]))?;
        place(&mut cur[..n_cur])?;
        self.install(|| seal_all(&mut cur[..n_cur]))?;
        while n_cur > 0 {
            let n_next = plan(&mut next)?;
            let (written, prepared) = self.install(|| {
                rayon::join(
                    || put_all(&cur[..n_cur]),
                    || -> Result<()> {
                        fill(&mut next[..n_next])?;
                        place(&mut next[..n_next])?;
                        seal_all(&mut next[..n_next])
                    },
                )
            });
            written?;
            prepared?;
            for job in &cur[..n_cur] {
                Pipeline::advance(run.progress, job.len as u64);
            }
            std::mem::swap(&mut cur, &mut next);
            n_cur = n_next;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::Progress;
    use std::sync::atomic::{AtomicBool, AtomicU64};

    /// Units 0-1 and 4 and the short last unit hold data: they are allocated in guest order, sealed, and
    /// written in file order by one thread; the last unit is padded with zeros.
    #[test]
    fn units_are_allocated_in_order_and_written_in_order_by_one_thread() {
        let (unit, len) = (8u64, 8 * 10 + 3);
        let disk: Vec<u8> = (0..len)
            .map(|o| match o / unit {
                0 | 1 | 4 | 10 => o as u8 | 1,
                _ => 0,
            })
            .collect();
        let p = Pipeline::new(Some(2), 24).unwrap();
        let (cancel, progress, total) =
            (AtomicBool::new(false), Progress::new(), AtomicU64::new(len));
        let run = Run {
            threads: Some(2),
            cancel: &cancel,
            progress: &progress,
            total: &total,
        };
        let mut allocated = Vec::new();
        let mut written: Vec<(u64, u64, Vec<u8>, std::thread::ThreadId)> = Vec::new();
        p.allocating_waves(
            len,
            unit,
            &run,
            &|off| off,
            &|buf, at| {
                buf.copy_from_slice(&disk[at as usize..at as usize + buf.len()]);
                Ok(true)
            },
            &mut |i| {
                allocated.push(i);
                Ok(1000 + (allocated.len() as u64 - 1) * unit)
            },
            &|bytes, _, _| {
                bytes.iter_mut().for_each(|b| *b ^= 0xff);
                Ok(())
            },
            &mut |bytes, index, host| {
                written.push((index, host, bytes.to_vec(), std::thread::current().id()));
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(allocated, [0, 1, 4, 10]);
        let hosts: Vec<_> = written.iter().map(|w| (w.0, w.1)).collect();
        assert_eq!(hosts, [(0, 1000), (4, 1016), (10, 1024)]);
        assert!(written.iter().all(|w| w.3 == written[0].3));
        let sealed = |from: u64, to: u64| -> Vec<u8> {
            let mut v = disk[from as usize..to.min(len) as usize].to_vec();
            v.resize((to - from) as usize, 0);
            v.iter().map(|b| b ^ 0xff).collect()
        };
        assert_eq!(written[0].2, sealed(0, 16));
        assert_eq!(written[1].2, sealed(32, 40));
        assert_eq!(written[2].2, sealed(80, 88));
        assert_eq!(progress.done(), len);
    }
}
