//! Progress for long phases: a bar redrawn in place on a terminal, or a plain line every ten
//! seconds when output goes to a file or a pipe.
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

pub struct Progress {
    label: String,
    total: usize,
    done: usize,
    start: Instant,
    last: Instant,
    tty: bool,
}

impl Progress {
    pub fn new(label: &str, total: usize) -> Self {
        let now = Instant::now();
        Progress { label: label.to_string(), total, done: 0, start: now, last: now, tty: std::io::stderr().is_terminal() }
    }

    /// A progress that began at `start` (shown only once a phase turns out to be long).
    pub fn started(label: &str, total: usize, start: Instant) -> Self {
        Progress { start, ..Progress::new(label, total) }
    }

    fn line(&self, note: &str) -> String {
        let secs = self.start.elapsed().as_secs_f64();
        let rate = self.done as f64 / secs.max(1e-9);
        let eta = if rate > 0.0 { (self.total.saturating_sub(self.done)) as f64 / rate } else { 0.0 };
        let eta = humantime::format_duration(Duration::from_secs(eta.round() as u64));
        format!("{} {}/{} ({:.2}/s, eta {eta}) {note}", self.label, self.done, self.total, rate)
    }

    /// Records `n` more units done, with a short note (e.g. the current loss).
    pub fn tick(&mut self, n: usize, note: &str) {
        self.done += n;
        if self.tty {
            let width = 24;
            let filled = (width * self.done / self.total.max(1)).min(width);
            eprint!("\r[{}{}] {}\x1b[K", "#".repeat(filled), "-".repeat(width - filled), self.line(note));
            let _ = std::io::stderr().flush();
        } else if self.last.elapsed() >= Duration::from_secs(10) {
            eprintln!("{}", self.line(note));
            self.last = Instant::now();
        }
    }

    /// Ends the bar with a final line.
    pub fn finish(&mut self, note: &str) {
        if self.tty {
            eprintln!();
        }
        let secs = humantime::format_duration(Duration::from_secs(self.start.elapsed().as_secs()));
        eprintln!("{} done: {} in {secs} {note}", self.label, self.done);
    }
}

/// Peak resident memory of this process in MiB (VmHWM), where the OS reports it.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Starts the peak over from the memory in use now (Linux: `5` written to
/// `/proc/self/clear_refs`); false where the OS does not allow it.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}
