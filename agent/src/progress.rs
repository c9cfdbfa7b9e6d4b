//! Plain progress lines on stderr for the agent's long local work (`bundle verify`: hashing the image,
//! and with `--deep` decrypting it): one line every 10 s (`DISKSEAL_PROGRESS_SECONDS`), terminal or
//! not, unless the caller says quiet.

use std::sync::atomic::{AtomicBool, Ordering};

use diskseal::bundle::QuietRun;
use diskseal::ops::Run;

/// Runs `job` on `q`'s [`Run`], printing "diskseal-agent: LABEL: ..." lines while it runs when `show`.
pub fn with_lines<T>(label: &str, q: &QuietRun, show: bool, job: impl FnOnce(&Run<'_>) -> T) -> T {
    let run = q.run();
    if !show {
        return job(&run);
    }
    let done = AtomicBool::new(false);
    let every = diskseal::pipeline::progress_interval();
    std::thread::scope(|s| {
        let lines = s.spawn(|| {
            diskseal::pipeline::progress_lines(
                label,
                run.progress,
                run.total,
                &done,
                every,
                &mut |l| eprintln!("diskseal-agent: {l}"),
            )
        });
        let r = job(&run);
        done.store(true, Ordering::SeqCst);
        lines.thread().unpark();
        r
    })
}
