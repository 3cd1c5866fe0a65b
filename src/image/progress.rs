//! Progress of a long import or export on stderr, only when stderr is a terminal: one line,
//! rewritten in place at most ten times a second.

use std::io::{IsTerminal, Read, Write};
use std::time::{Duration, Instant};

/// A progress line (or nothing, off a terminal).
#[derive(Debug)]
pub struct Progress {
    on: bool,
    label: String,
    done: u64,
    total: u64,
    shown: Option<Instant>,
}

impl Progress {
    /// Progress on stderr where it is a terminal.
    pub fn for_stderr() -> Progress {
        Progress::new(std::io::stderr().is_terminal())
    }

    /// Progress shown only when `on`.
    pub fn new(on: bool) -> Progress {
        Progress {
            on,
            label: String::new(),
            done: 0,
            total: 0,
            shown: None,
        }
    }

    /// Starts a step of `total` bytes.
    pub fn start(&mut self, label: String, total: u64) {
        self.label = label;
        self.done = 0;
        self.total = total;
        self.shown = None;
        self.show(false);
    }

    /// Counts `n` more bytes of the step.
    pub fn advance(&mut self, n: u64) {
        self.done += n;
        self.show(false);
    }

    /// Ends the step's line.
    pub fn finish(&mut self) {
        self.done = self.total.max(self.done);
        self.show(true);
        if self.on {
            eprintln!();
        }
    }

    fn show(&mut self, now: bool) {
        if !self.on {
            return;
        }
        let due = self
            .shown
            .map_or(true, |t| t.elapsed() >= Duration::from_millis(100));
        if !now && !due {
            return;
        }
        self.shown = Some(Instant::now());
        let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r{}: {:.1} / {:.1} MiB",
            self.label,
            mib(self.done),
            mib(self.total)
        );
        let _ = err.flush();
    }
}

/// A reader that counts what passes through it on a [`Progress`].
pub struct Counted<'a, R: Read> {
    inner: R,
    progress: &'a mut Progress,
}

impl<'a, R: Read> Counted<'a, R> {
    /// Counts reads of `inner` on `progress`.
    pub fn new(inner: R, progress: &'a mut Progress) -> Counted<'a, R> {
        Counted { inner, progress }
    }
}

impl<R: Read> Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.advance(n as u64);
        Ok(n)
    }
}
