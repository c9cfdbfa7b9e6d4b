//! The allocate-in-guest-order mode of the pipeline, used by the sparse writers (qcow2, vhd-util VHD):
//! waves of chunks are read in parallel, their non-zero units allocated in guest order, then encrypted
//! and written in parallel while the next wave is read.

use super::extents::is_zero;
use super::{Pipeline, Run};
use crate::error::Result;

/// Encrypts and writes a run of allocated units that follow each other both in the guest and in the
/// file: (their bytes, the first unit's index, its host offset).
pub type StoreUnit<'a> = dyn Fn(&mut [u8], u64, u64) -> Result<()> + Sync + 'a;

/// A wave job: its buffer, guest offset, and (unit index in the chunk, host offset) of the units that
/// hold data.
type WaveJob = (Vec<u8>, u64, Vec<(u64, u64)>);

impl Pipeline {
    /// The allocate-in-guest-order data path of the sparse writers (qcow2, vhd-util VHD), in waves of
    /// chunks made of whole `unit`s:
    /// 1. `read(buf, offset)` fills each chunk in parallel; `false` means "known zeros, nothing read";
    /// 2. every unit that is not all zeros is allocated, in guest order, with `allocate(unit_index)`;
    /// 3. `store(bytes, unit_index, host_offset)` encrypts and writes the allocated units in parallel, one
    ///    call per run of units that are consecutive in the guest and in the file (one write instead of one
    ///    per unit); the last unit may be short when `len` is not a whole number of units.
    ///
    /// Step 3 of a wave runs alongside step 1 of the next one (two sets of wave buffers), so the workers
    /// read while the file's writes, which the kernel serialises per file, go on.
    /// `skip(offset)` returns the first offset at or after `offset` that may hold data, so holes cost no time.
    #[allow(clippy::too_many_arguments)]
    pub fn allocating_waves(
        &self,
        len: u64,
        unit: u64,
        run: &Run<'_>,
        skip: &dyn Fn(u64) -> u64,
        read: &(dyn Fn(&mut [u8], u64) -> Result<bool> + Sync),
        allocate: &mut dyn FnMut(u64) -> Result<u64>,
        store: &StoreUnit<'_>,
    ) -> Result<()> {
        use rayon::prelude::*;
        let chunk = (self.chunk() as u64 / unit).max(1) * unit;
        let wave = self.threads() * 2;
        let new_wave =
            || -> Vec<WaveJob> { (0..wave).map(|_| (Vec::new(), 0, Vec::new())).collect() };
        // Lays out the next wave from `off` on (holes are skipped and counted as done); returns its size.
        let mut off = 0u64;
        let mut plan = |bufs: &mut [WaveJob]| -> Result<usize> {
            let mut n = 0;
            while off < len && n < bufs.len() {
                Pipeline::check_cancel(run.cancel)?;
                let next = (skip(off).min(len) / unit * unit).max(off);
                if next > off {
                    Pipeline::advance(run.progress, next - off);
                    off = next;
                    continue;
                }
                let this = chunk.min(len - off);
                let b = &mut bufs[n];
                b.0.resize(this as usize, 0);
                b.1 = off;
                b.2.clear();
                n += 1;
                off += this;
            }
            Ok(n)
        };
        let fill = |jobs: &mut [WaveJob]| -> Result<()> {
            jobs.par_iter_mut()
                .try_for_each(|(buf, at, alloc)| -> Result<()> {
                    if !read(buf, *at)? {
                        return Ok(());
                    }
                    for (i, u) in buf.chunks(unit as usize).enumerate() {
                        if !is_zero(u) {
                            alloc.push((i as u64, 0));
                        }
                    }
                    Ok(())
                })
        };
        let write = |jobs: &mut [WaveJob]| -> Result<()> {
            jobs.par_iter_mut()
                .try_for_each(|(buf, at, alloc)| -> Result<()> {
                    let blen = buf.len() as u64;
                    let mut k = 0;
                    while k < alloc.len() {
                        let (i, host) = alloc[k];
                        let mut n = 1;
                        while alloc
                            .get(k + n)
                            .is_some_and(|&(j, h)| j == i + n as u64 && h == host + n as u64 * unit)
                        {
                            n += 1;
                        }
                        let run = &mut buf
                            [(i * unit) as usize..((i + n as u64) * unit).min(blen) as usize];
                        store(run, *at / unit + i, host)?;
                        k += n;
                    }
                    Ok(())
                })
        };
        let (mut cur, mut next) = (new_wave(), new_wave());
        let mut n_cur = plan(&mut cur)?;
        self.install(|| fill(&mut cur[..n_cur]))?;
        while n_cur > 0 {
            for job in cur[..n_cur].iter_mut() {
                let first = job.1 / unit;
                for (i, host) in job.2.iter_mut() {
                    *host = allocate(first + *i)?;
                }
            }
            let n_next = plan(&mut next)?;
            let (stored, filled) = self
                .install(|| rayon::join(|| write(&mut cur[..n_cur]), || fill(&mut next[..n_next])));
            stored?;
            filled?;
            for job in &cur[..n_cur] {
                Pipeline::advance(run.progress, job.0.len() as u64);
            }
            std::mem::swap(&mut cur, &mut next);
            n_cur = n_next;
        }
        Ok(())
    }
}
