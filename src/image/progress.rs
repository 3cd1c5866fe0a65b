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

    /// Starts a step of `total` bytes (0: not known).
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

    /// Ends the step's line (if a step was started).
    pub fn finish(&mut self) {
        if self.label.is_empty() {
            return;
        }
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
        let _ = if self.total == 0 {
            // A size not known ahead (a layer being written).
            write!(err, "\r{}: {:.1} MiB", self.label, mib(self.done))
        } else {
            write!(
                err,
                "\r{}: {:.1} / {:.1} MiB",
                self.label,
                mib(self.done),
                mib(self.total)
            )
        };
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

/// A writer that counts what passes through it on a [`Progress`].
pub struct CountedWriter<'a, W: Write> {
    inner: W,
    progress: &'a mut Progress,
}

impl<'a, W: Write> CountedWriter<'a, W> {
    /// Counts writes to `inner` on `progress`.
    pub fn new(inner: W, progress: &'a mut Progress) -> CountedWriter<'a, W> {
        CountedWriter { inner, progress }
    }

    /// The writer back.
    pub fn into_inner(self) -> W {
        self.inner
    }
}

impl<W: Write> Write for CountedWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.progress.advance(n as u64);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
