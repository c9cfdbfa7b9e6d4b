//! The allocate-in-guest-order mode of the pipeline, used by the sparse writers (qcow2, vhd-util VHD):
//! each worker reads a chunk (or the chunks of one unit), allocates its non-zero units when the
//! chunk's allocation turn comes, encrypts them, and writes them when its write turn comes: units are
//! allocated in guest order and written in file order, while the other workers read and encrypt.

use std::sync::Mutex;

use super::extents::is_zero;
use super::turns::{Turns, crew};
use super::{Pipeline, Run, lock};
use crate::error::Result;

/// Encrypts, in place, a run of allocated bytes that follow each other both in the guest and in the
/// file: (the bytes, their guest offset, their host offset). The run is whole units, or a whole part of
/// one unit when units are larger than a chunk. Called from the workers in parallel.
pub type SealUnits<'a> = dyn Fn(&mut [u8], u64, u64) -> Result<()> + Sync + 'a;

/// Writes a sealed run (same arguments as [`SealUnits`]). Called one run at a time, in file order.
pub type PutUnits<'a> = dyn FnMut(&[u8], u64, u64) -> Result<()> + Send + 'a;

/// A chunk of a group: its buffer (whole segments), guest offset, bytes of the disk in it, and (segment
/// index in the chunk, host offset) of the segments that are written.
#[derive(Default)]
struct Job {
    buf: Vec<u8>,
    at: u64,
    len: usize,
    alloc: Vec<(u64, u64)>,
}

/// The runs of written segments (`alloc`: segment index in the chunk, host offset) that are consecutive
/// in the guest and in the file, as (first segment index in the chunk, segment count, host offset): one
/// seal and one write per run.
fn runs(alloc: &[(u64, u64)], seg: u64) -> impl Iterator<Item = (u64, u64, u64)> + '_ {
    let mut k = 0;
    std::iter::from_fn(move || {
        let &(i, host) = alloc.get(k)?;
        let mut n = 1;
        while alloc
            .get(k + n)
            .is_some_and(|&(j, h)| j == i + n as u64 && h == host + n as u64 * seg)
        {
            n += 1;
        }
        k += n;
        Some((i, n as u64, host))
    })
}

/// How the scan cuts the disk for allocation units of `unit` bytes and chunks of about `chunk` bytes:
/// (chunk bytes, segment bytes, chunks per unit). A chunk holds whole units; a unit larger than a
/// chunk that whole chunks divide (vhd-util's 2 MiB blocks) is cut into chunks instead, so each piece is
/// read and encrypted while it is still in the worker's cache (a 2 MiB chunk made every encrypt ~9 %
/// slower than 1 MiB ones on tmpfs). The segment is what is tested for zeros and sealed at once.
fn layout(unit: u64, chunk: u64) -> (u64, u64, u64) {
    if unit > chunk && unit.is_multiple_of(chunk) {
        (chunk, chunk, unit / chunk)
    } else {
        let job = (chunk / unit).max(1) * unit;
        (job, unit, 1)
    }
}

impl Pipeline {
    /// The allocate-in-guest-order data path of the sparse writers (qcow2, vhd-util VHD), by chunks
    /// (units larger than a chunk are cut into chunk-sized parts, see `layout`, and a worker takes all
    /// the parts of one unit):
    /// 1. `read(buf, offset)` fills each chunk, in parallel; `false` means "known zeros, nothing
    ///    read"; the disk's last unit is padded with zeros to a whole unit;
    /// 2. every unit that is not all zeros is allocated, in guest order, with `allocate(unit_index)`,
    ///    which returns its host offset;
    /// 3. `seal(bytes, guest_offset, host_offset)` encrypts the allocated units in parallel, one call
    ///    per run of bytes that are consecutive in the guest and in the file (a part of a unit lies at
    ///    the unit's host offset plus its offset in the unit);
    /// 4. `put` writes the same runs one at a time, in file order.
    ///
    /// Steps 2 and 4 take turns in chunk order (see the module docs of [`crate::pipeline`]); steps 1
    /// and 3 run in parallel with the other workers' turns. `skip(offset)` returns the first offset at
    /// or after `offset` that may hold data, so holes cost no time.
    #[allow(clippy::too_many_arguments)]
    pub fn scan_allocating(
        &self,
        len: u64,
        unit: u64,
        run: &Run<'_>,
        skip: &(dyn Fn(u64) -> u64 + Sync),
        read: &(dyn Fn(&mut [u8], u64) -> Result<bool> + Sync),
        allocate: &mut (dyn FnMut(u64) -> Result<u64> + Send),
        seal: &SealUnits<'_>,
        put: &mut PutUnits<'_>,
    ) -> Result<()> {
        let (chunk, seg, parts) = layout(unit, self.chunk() as u64);
        // The next group to do (a chunk, or the `parts` chunks of one unit: the parts of a unit are
        // allocated together): (its number, the offset it starts at). Holes are skipped and counted as
        // done. The disk's last unit gets all its parts, past the end of the disk if need be (zeros).
        let plan = Mutex::new((0u64, 0u64));
        let next_group = |jobs: &mut [Job]| -> Result<Option<(u64, usize)>> {
            let mut guard = lock(&plan);
            let (i, off) = &mut *guard;
            let mut n = 0;
            while (*off < len || (parts > 1 && !off.is_multiple_of(unit))) && n < jobs.len() {
                Pipeline::check_cancel(run.cancel)?;
                if n == 0 {
                    let next = (skip(*off).min(len) / unit * unit).max(*off);
                    if next > *off {
                        Pipeline::advance(run.progress, next - *off);
                        *off = next;
                        continue;
                    }
                }
                let this = chunk.min(len.saturating_sub(*off));
                let job = &mut jobs[n];
                job.buf
                    .resize(this.max(1).next_multiple_of(seg) as usize, 0);
                job.buf[this as usize..].fill(0);
                job.at = *off;
                job.len = this as usize;
                job.alloc.clear();
                n += 1;
                *off += if parts > 1 { chunk } else { this };
            }
            if n == 0 {
                return Ok(None);
            }
            *i += 1;
            Ok(Some((*i - 1, n)))
        };
        let fill = |job: &mut Job| -> Result<()> {
            if job.len == 0 || !read(&mut job.buf[..job.len], job.at)? {
                return Ok(());
            }
            for (i, u) in job.buf.chunks(seg as usize).enumerate() {
                if !is_zero(u) {
                    job.alloc.push((i as u64, 0));
                }
            }
            Ok(())
        };
        let allocate = Mutex::new(allocate);
        // Units of one chunk or less: allocates every unit with data, in guest order.
        let place = |group: &mut [Job]| -> Result<()> {
            let mut allocate = lock(&allocate);
            for job in group {
                let first = job.at / unit;
                for (i, host) in job.alloc.iter_mut() {
                    *host = allocate(first + *i)?;
                }
            }
            Ok(())
        };
        // Units larger than a chunk: a unit whose parts are not all zeros is allocated and written
        // whole. Part `p` of the unit at `host` is written at `host + p * seg`; a part with no data is
        // zeros, zeroed here, as one known to be zeros was not read and its buffer holds an earlier
        // chunk's bytes.
        let claim_part = |job: &mut Job, p: usize, host: u64| {
            if job.alloc.is_empty() {
                job.buf.fill(0);
            }
            job.alloc.clear();
            job.alloc.push((0, host + p as u64 * seg));
        };
        let seal_all = |group: &mut [Job]| -> Result<()> {
            for job in group {
                for (i, n, host) in runs(&job.alloc, seg) {
                    let bytes = &mut job.buf[(i * seg) as usize..((i + n) * seg) as usize];
                    seal(bytes, job.at + i * seg, host)?;
                }
            }
            Ok(())
        };
        let put = Mutex::new(put);
        let put_all = |group: &[Job]| -> Result<()> {
            let mut put = lock(&put);
            for job in group {
                for (i, n, host) in runs(&job.alloc, seg) {
                    let bytes = &job.buf[(i * seg) as usize..((i + n) * seg) as usize];
                    put(bytes, job.at + i * seg, host)?;
                }
                Pipeline::advance(run.progress, job.len as u64);
            }
            Ok(())
        };
        let workers = self.workers((chunk * parts) as usize);
        let (allocating, putting) = (Turns::new(workers), Turns::new(workers));
        crew(
            &self.pool,
            workers,
            &[&allocating, &putting],
            || -> Result<()> {
                let mut jobs: Vec<Job> = (0..parts).map(|_| Job::default()).collect();
                while let Some((i, n)) = next_group(&mut jobs)? {
                    let group = &mut jobs[..n];
                    if parts == 1 {
                        group.iter_mut().try_for_each(fill)?;
                        if allocating.take(i, || place(group))?.is_none() {
                            return Ok(());
                        }
                        seal_all(group)?;
                    } else {
                        // Each part is encrypted right after its read, while it is in the cache: the
                        // unit is allocated as soon as one of its parts holds data (the parts before
                        // it are zeros), or not at all.
                        debug_assert!(group[0].at.is_multiple_of(unit));
                        let mut host = None;
                        for p in 0..n {
                            fill(&mut group[p])?;
                            if host.is_none() && !group[p].alloc.is_empty() {
                                let unit_index = group[0].at / unit;
                                let allocated =
                                    allocating.take(i, || lock(&allocate)(unit_index))?;
                                let Some(h) = allocated else {
                                    return Ok(());
                                };
                                for (q, job) in group[..p].iter_mut().enumerate() {
                                    claim_part(job, q, h);
                                    seal_all(std::slice::from_mut(job))?;
                                }
                                host = Some(h);
                            }
                            if let Some(h) = host {
                                claim_part(&mut group[p], p, h);
                                seal_all(&mut group[p..=p])?;
                            }
                        }
                        if host.is_none() && allocating.take(i, || Ok(()))?.is_none() {
                            return Ok(());
                        }
                    }
                    if putting.take(i, || put_all(group))?.is_none() {
                        return Ok(());
                    }
                }
                Ok(())
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::Progress;
    use std::sync::atomic::{AtomicBool, AtomicU64};

    /// What a run of the scan did: the allocated unit indexes, the writes (guest offset, host offset,
    /// bytes), the progress at the end.
    type Outcome = (Vec<u64>, Vec<(u64, u64, Vec<u8>)>, u64);

    /// Runs the scan over `disk` with 2 threads and `chunk`-byte chunks. With `known_zeros`, a chunk of
    /// zeros is not read (so its buffer keeps what it held), else every chunk is read; the n-th
    /// allocated unit (from 0) lies at `host(n)`; sealing flips every bit. Every run is sealed with the
    /// same guest and host offsets it is written with.
    fn run_scan(
        disk: &[u8],
        unit: u64,
        chunk: usize,
        known_zeros: bool,
        host: impl Fn(u64) -> u64 + Sync,
    ) -> Outcome {
        let len = disk.len() as u64;
        let p = Pipeline::new(Some(2), chunk).unwrap();
        let (cancel, progress, total) =
            (AtomicBool::new(false), Progress::new(), AtomicU64::new(len));
        let run = Run {
            threads: Some(2),
            cancel: &cancel,
            progress: &progress,
            total: &total,
        };
        let mut allocated = Vec::new();
        let mut written = Vec::new();
        let seals = std::sync::Mutex::new(Vec::new());
        p.scan_allocating(
            len,
            unit,
            &run,
            &|off| off,
            &|buf, at| {
                let part = &disk[at as usize..at as usize + buf.len()];
                if known_zeros && part.iter().all(|&b| b == 0) {
                    return Ok(false);
                }
                buf.copy_from_slice(part);
                Ok(true)
            },
            &mut |i| {
                allocated.push(i);
                Ok(host(allocated.len() as u64 - 1))
            },
            &|bytes, guest, host| {
                seals.lock().unwrap().push((guest, host, bytes.len()));
                bytes.iter_mut().for_each(|b| *b ^= 0xff);
                Ok(())
            },
            &mut |bytes, guest, host| {
                written.push((guest, host, bytes.to_vec()));
                Ok(())
            },
        )
        .unwrap();
        let mut seals = seals.into_inner().unwrap();
        seals.sort_unstable();
        let mut puts: Vec<_> = written.iter().map(|w| (w.0, w.1, w.2.len())).collect();
        puts.sort_unstable();
        assert_eq!(seals, puts);
        (allocated, written, progress.done())
    }

    /// `disk[from..to]`, zeros past its end, sealed.
    fn sealed(disk: &[u8], from: u64, to: u64) -> Vec<u8> {
        (from..to)
            .map(|o| !disk.get(o as usize).copied().unwrap_or(0))
            .collect()
    }

    /// Units 0-1 and 4 and the short last unit hold data: they are allocated in guest order, sealed, and
    /// written in file order (`put` is `FnMut`: one call at a time); the last unit is padded with zeros.
    #[test]
    fn units_are_allocated_in_order_and_written_in_order() {
        let (unit, len) = (8u64, 8 * 10 + 3);
        let disk: Vec<u8> = (0..len)
            .map(|o| match o / unit {
                0 | 1 | 4 | 10 => o as u8 | 1,
                _ => 0,
            })
            .collect();
        let (allocated, written, done) = run_scan(&disk, unit, 24, false, |n| 1000 + n * unit);
        assert_eq!(allocated, [0, 1, 4, 10]);
        let hosts: Vec<_> = written.iter().map(|w| (w.0, w.1)).collect();
        assert_eq!(hosts, [(0, 1000), (32, 1016), (80, 1024)]);
        assert_eq!(written[0].2, sealed(&disk, 0, 16));
        assert_eq!(written[1].2, sealed(&disk, 32, 40));
        assert_eq!(written[2].2, sealed(&disk, 80, 88));
        assert_eq!(done, len);
    }

    /// Units of 32 bytes with chunks of 8 are cut into four parts: a unit with data in any part is
    /// allocated, sealed and written whole, part by part, each at the unit's host offset plus its offset
    /// in the unit; the disk ends inside the last unit's second part, and every part of it is written.
    /// Parts known to be zeros are not read, and their buffers held another chunk's data before.
    #[test]
    fn units_larger_than_a_chunk_are_written_whole_in_parts() {
        assert_eq!(layout(32, 8), (8, 8, 4));
        assert_eq!(layout(24, 16), (24, 24, 1));
        assert_eq!(layout(8, 24), (24, 8, 1));
        let (unit, len) = (32u64, 32 * 3 + 10);
        // Unit 0: data in its last part only; unit 1: zeros; unit 2: data in its first part; unit 3:
        // 10 bytes of data, then the end of the disk.
        let disk: Vec<u8> = (0..len)
            .map(|o| match o {
                24..=31 | 64..=65 | 96.. => 7,
                _ => 0,
            })
            .collect();
        let (allocated, written, done) = run_scan(&disk, unit, 8, true, |n| 1000 * (n + 1));
        assert_eq!(allocated, [0, 2, 3]);
        let hosts: Vec<_> = written.iter().map(|w| (w.0, w.1)).collect();
        let parts = |guest: u64, host: u64| (0..4).map(move |p| (guest + 8 * p, host + 8 * p));
        let want: Vec<_> = parts(0, 1000)
            .chain(parts(64, 2000))
            .chain(parts(96, 3000))
            .collect();
        assert_eq!(hosts, want);
        for (guest, _, bytes) in &written {
            assert_eq!(bytes, &sealed(&disk, *guest, guest + 8), "{guest}");
        }
        assert_eq!(done, len);
    }

    /// An error in any step, at the first, a middle or the last unit, ends the scan with that error,
    /// whichever worker meets it and however many wait for their turn; so does a cancellation.
    #[test]
    fn errors_and_cancellation_end_the_scan() {
        use crate::error::{Error, ErrorKind};
        let len = 8 * 40u64;
        let disk = vec![1u8; len as usize];
        // (unit, chunk, units to fail at): units of two per chunk, and units of four chunks.
        let cases = [(8u64, 16, [0, 12, 38]), (32, 8, [0, 5, 9])];
        for ((unit, chunk, bads), threads) in
            cases.into_iter().flat_map(|c| [1, 2, 5].map(|t| (c, t)))
        {
            let p = Pipeline::new(Some(threads), chunk).unwrap();
            for step in 0..5 {
                for bad in bads {
                    let (cancel, progress, total) = (
                        AtomicBool::new(step == 4),
                        Progress::new(),
                        AtomicU64::new(len),
                    );
                    let run = Run {
                        threads: Some(threads),
                        cancel: &cancel,
                        progress: &progress,
                        total: &total,
                    };
                    let fail = |s: usize, at: u64| -> Result<()> {
                        if s == step && at / unit == bad {
                            Err(Error::invalid("boom"))
                        } else {
                            Ok(())
                        }
                    };
                    let e = p
                        .scan_allocating(
                            len,
                            unit,
                            &run,
                            &|off| off,
                            &|buf, at| {
                                fail(0, at)?;
                                buf.copy_from_slice(&disk[at as usize..at as usize + buf.len()]);
                                Ok(true)
                            },
                            &mut |i| fail(1, i * unit).map(|()| 1000 + i * unit),
                            &|_, guest, _| fail(2, guest),
                            &mut |_, guest, _| fail(3, guest),
                        )
                        .unwrap_err();
                    let want = if step == 4 {
                        ErrorKind::Interrupted
                    } else {
                        ErrorKind::InvalidArgument
                    };
                    assert_eq!(
                        e.kind(),
                        want,
                        "unit {unit}, threads {threads}, step {step}, at {bad}"
                    );
                }
            }
        }
    }
}
