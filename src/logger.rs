//! A minimal `log` backend: stderr in the foreground, syslog once the daemon has detached.

use std::sync::atomic::{AtomicBool, Ordering};

use log::{LevelFilter, Log, Metadata, Record};

use crate::sys::process;

static TO_SYSLOG: AtomicBool = AtomicBool::new(false);

struct Logger;

static LOGGER: Logger = Logger;

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        if TO_SYSLOG.load(Ordering::Relaxed) {
            process::syslog(record.level(), &record.args().to_string());
        } else {
            eprintln!("overlayfuse: {}: {}", record.level(), record.args());
        }
    }

    fn flush(&self) {}
}

/// Installs the logger on stderr at the level `OVERLAYFUSE_LOG` names (default: warnings).
pub fn init() {
    let level = match std::env::var("OVERLAYFUSE_LOG").ok().as_deref() {
        Some("trace") => LevelFilter::Trace,
        Some("debug") => LevelFilter::Debug,
        Some("info") => LevelFilter::Info,
        Some("error") => LevelFilter::Error,
        _ => LevelFilter::Warn,
    };
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(level);
    }
}

/// Raises the level to debug (`-d`, `-o debug`).
pub fn enable_debug() {
    if log::max_level() < LevelFilter::Debug {
        log::set_max_level(LevelFilter::Debug);
    }
}

/// Sends every later record to syslog (the daemon has no stderr once detached).
pub fn use_syslog() {
    TO_SYSLOG.store(true, Ordering::Relaxed);
}
