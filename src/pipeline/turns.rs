//! Turn-taking between the workers: the steps that must happen once per chunk and in chunk order
//! (writing, hashing, allocating) are done by the worker that prepared the chunk, when its turn comes.
//!
//! A worker that waits for its turn spins first: with as many workers as cores the wait is shorter than
//! one write, and waking a sleeping thread costs tens of microseconds in a VM, on the path of every
//! chunk. It sleeps once the wait grows long (a slow disk), and at once when there are more workers
//! than cores (a spinning worker would take the core of the one whose turn it is: 8 spinning workers on
//! 2 cores took 1.75× the time of 2; sleeping at once, 1.1×).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread::Thread;
use std::time::{Duration, Instant};

use super::lock;
use crate::error::Result;

/// How long a worker spins for its turn before it sleeps.
const SPIN: Duration = Duration::from_micros(500);

/// The number of the chunk whose turn it is, whether the run has stopped (an error elsewhere), and the
/// workers asleep waiting for a turn.
#[derive(Debug, Default)]
pub(super) struct Turns {
    /// How long to spin before sleeping.
    spin: Duration,
    next: AtomicU64,
    stopped: AtomicBool,
    /// How many entries `sleepers` has: read without its lock, so a turn with no sleeper costs no lock.
    asleep: AtomicUsize,
    /// (the chunk it waits for, the thread) of each sleeping worker: a turn wakes only its own worker.
    sleepers: Mutex<Vec<(u64, Thread)>>,
}

impl Turns {
    /// Turns for `workers` threads: they spin while waiting if each can have a core of its own.
    pub(super) fn new(workers: usize) -> Turns {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Turns {
            spin: if workers <= cores {
                SPIN
            } else {
                Duration::ZERO
            },
            ..Turns::default()
        }
    }

    /// Waits until it is chunk `i`'s turn: true then, false if the run stopped first.
    pub(super) fn wait(&self, i: u64) -> bool {
        let ready = || self.next.load(Ordering::SeqCst) == i;
        let stopped = || self.stopped.load(Ordering::SeqCst);
        let start = Instant::now();
        let mut spins = 0u32;
        while !ready() && !stopped() {
            spins = spins.wrapping_add(1);
            if !spins.is_multiple_of(64) || start.elapsed() < self.spin {
                std::hint::spin_loop();
                continue;
            }
            // Sleep. `pass` moves `next` on, then reads `asleep`; this thread counts itself in
            // `asleep`, then reads `next`: one of the two sees the other, so a turn is never missed
            // (and an `unpark` before `park` makes `park` return at once).
            {
                let mut sleepers = self.sleepers();
                sleepers.push((i, std::thread::current()));
                self.asleep.store(sleepers.len(), Ordering::SeqCst);
            }
            while !ready() && !stopped() {
                std::thread::park();
            }
            let mut sleepers = self.sleepers();
            sleepers.retain(|(j, _)| *j != i);
            self.asleep.store(sleepers.len(), Ordering::SeqCst);
        }
        ready()
    }

    /// Runs `step` in chunk `i`'s turn, then ends the turn: `Some` of its value, or `None` if the run
    /// stopped before the turn came. An error in `step` is returned and the turn is not passed (the
    /// caller's error stops the run, see [`crew`]).
    pub(super) fn take<T>(&self, i: u64, step: impl FnOnce() -> Result<T>) -> Result<Option<T>> {
        if !self.wait(i) {
            return Ok(None);
        }
        let value = step()?;
        self.pass(i);
        Ok(Some(value))
    }

    /// Ends chunk `i`'s turn: the next chunk's worker goes on.
    pub(super) fn pass(&self, i: u64) {
        self.next.store(i + 1, Ordering::SeqCst);
        if self.asleep.load(Ordering::SeqCst) > 0 {
            for (_, t) in self.sleepers().iter().filter(|(j, _)| *j == i + 1) {
                t.unpark();
            }
        }
    }

    /// Stops the run: every waiting worker returns.
    pub(super) fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        for (_, t) in self.sleepers().iter() {
            t.unpark();
        }
    }

    fn sleepers(&self) -> MutexGuard<'_, Vec<(u64, Thread)>> {
        lock(&self.sleepers)
    }
}

/// Runs `worker` on `workers` threads of `pool` at once and waits for all of them. The first error a
/// worker returns stops `turns` (so the others stop waiting for a turn that will not come) and is
/// returned; a worker's panic stops them too, then reaches the caller (instead of a hang).
pub(super) fn crew(
    pool: &rayon::ThreadPool,
    workers: usize,
    turns: &[&Turns],
    worker: impl Fn() -> Result<()> + Sync,
) -> Result<()> {
    let failure = Mutex::new(None);
    pool.broadcast(|ctx| {
        if ctx.index() >= workers {
            return;
        }
        let stop = || turns.iter().for_each(|t| t.stop());
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(&worker)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                lock(&failure).get_or_insert(e);
                stop();
            }
            Err(panic) => {
                stop();
                std::panic::resume_unwind(panic);
            }
        }
    });
    failure
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner)
        .map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turns_go_in_order_and_sleepers_wake() {
        let turns = Turns::new(1);
        let order = Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let (turns, order) = (&turns, &order);
                s.spawn(move || {
                    for i in (t..40).step_by(4) {
                        if t == 3 && i == 3 {
                            // Long enough for the others to fall asleep waiting.
                            std::thread::sleep(SPIN * 4);
                        }
                        assert!(turns.wait(i));
                        order.lock().unwrap().push(i);
                        turns.pass(i);
                    }
                });
            }
        });
        assert_eq!(order.into_inner().unwrap(), (0..40).collect::<Vec<_>>());
    }

    /// A worker that panics while the others wait for its turn: the panic reaches the caller.
    #[test]
    fn a_panic_stops_the_crew() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        let turns = Turns::new(3);
        let next = AtomicU64::new(0);
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            crew(&pool, 3, &[&turns], || {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i == 4 {
                        std::thread::sleep(SPIN * 4);
                        panic!("boom");
                    }
                    if !turns.wait(i) {
                        return Ok(());
                    }
                    turns.pass(i);
                }
            })
        }));
        assert!(outcome.is_err());
    }

    #[test]
    fn stop_releases_the_waiters() {
        let turns = Turns::new(1);
        std::thread::scope(|s| {
            let waiter = s.spawn(|| turns.wait(5));
            std::thread::sleep(SPIN * 4);
            turns.stop();
            assert!(!waiter.join().unwrap());
        });
    }
}
