//! Output for humans and machines: errors with their hint, warnings, the summary line, JSON, and the
//! progress bar (on a terminal; elsewhere a plain line every 10 s; never with -q or --json).

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use diskseal::Error;
use diskseal::pipeline::Progress;

/// Where and how to print.
#[derive(Debug)]
pub(super) struct Out {
    quiet: bool,
    pub(super) json: bool,
    tty: bool,
}

impl Out {
    pub(super) fn new(quiet: bool, json: bool) -> Out {
        Out {
            quiet,
            json,
            tty: std::io::stderr().is_terminal(),
        }
    }

    pub(super) fn show_progress(&self) -> bool {
        self.tty && !self.quiet && !self.json
    }

    /// Plain progress lines instead of the bar: stderr is not a terminal (a log, a pipe).
    pub(super) fn show_lines(&self) -> bool {
        !self.tty && !self.quiet && !self.json
    }

    /// An error: what failed, then what to try.
    pub(super) fn error(&self, e: &Error) {
        eprintln!("diskseal: error: {e}");
        if let Some(h) = e.hint_text() {
            eprintln!("  hint: {h}");
        }
    }

    pub(super) fn warn(&self, msg: &str) {
        if !self.quiet {
            eprintln!("diskseal: warning: {msg}");
        }
    }

    /// A line on stderr, shown unless quiet or JSON (also when stderr is not a terminal).
    pub(super) fn info(&self, msg: &str) {
        if !self.quiet && !self.json {
            eprintln!("{msg}");
        }
    }

    pub(super) fn summary(&self, msg: &str) {
        if !self.quiet {
            emit(msg);
        }
    }

    pub(super) fn always(&self, msg: &str) {
        emit(msg);
    }

    pub(super) fn print_json(&self, v: &serde_json::Value) {
        emit(&serde_json::to_string_pretty(v).unwrap_or_default());
    }
}

/// Writes a line to stdout. A closed pipe (`diskseal dump x | head`) ends the program quietly with
/// success, as a reader that stopped reading is not an error.
pub(super) fn emit(text: &str) {
    emit_bytes(format!("{text}\n").as_bytes());
}

/// Writes bytes to stdout with the same closed-pipe rule as [`emit`].
pub(super) fn emit_bytes(bytes: &[u8]) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(bytes).and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("diskseal: error: cannot write to stdout: {e}");
        std::process::exit(2);
    }
}

/// Until `done` is set: a spinner with the job's stage (e.g. "deriving key (argon2id, 1 GiB, 4
/// iterations)") while there is no data total yet, then the bar with rate and ETA.
pub(super) fn progress_bar(label: &str, progress: &Progress, total: &AtomicU64, done: &AtomicBool) {
    let bar = indicatif::ProgressBar::new_spinner();
    if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} {msg} {elapsed}") {
        bar.set_style(style);
    }
    let mut in_data = false;
    while !done.load(Ordering::SeqCst) {
        let len = total.load(Ordering::Relaxed);
        if len == 0 {
            let stage = progress.stage();
            bar.set_message(if stage.is_empty() {
                label.to_owned()
            } else {
                stage
            });
            bar.tick();
        } else {
            bar.set_length(len);
            bar.set_position(progress.done());
            if !in_data {
                in_data = true;
                let style = indicatif::ProgressStyle::with_template(
                    "{msg} [{bar:40}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
                )
                .map(|s| s.progress_chars("=> "));
                if let Ok(style) = style {
                    bar.set_style(style);
                }
                bar.set_message(label.to_owned());
                bar.reset_elapsed();
                bar.reset_eta();
            }
        }
        std::thread::park_timeout(Duration::from_millis(100));
    }
    bar.finish_and_clear();
}

/// "1.50 GiB".
pub(super) fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

/// "1 thread", "4 threads".
pub(super) fn count(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// "1.23 GB/s".
pub(super) fn rate(n: u64, d: Duration) -> String {
    let s = d.as_secs_f64().max(1e-9);
    format!("{:.2} GB/s", n as f64 / s / 1e9)
}
