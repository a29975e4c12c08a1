//! A logger for unit tests that checks what husk logs: warnings and errors of the whole
//! test process are kept in memory (tests run in parallel, so a test looks for a line
//! only it can produce).

use std::sync::{Mutex, Once};

static LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::Level::Warn
    }

    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            let line = format!("{}: {}", r.level(), r.args());
            LINES.lock().unwrap_or_else(|e| e.into_inner()).push(line);
        }
    }

    fn flush(&self) {}
}

/// Start keeping warnings and errors (idempotent).
pub fn capture() {
    static INSTALL: Once = Once::new();
    static LOGGER: Capture = Capture;
    INSTALL.call_once(|| {
        let _ = log::set_logger(&LOGGER);
        log::set_max_level(log::LevelFilter::Warn);
    });
}

/// How many kept lines contain `text`.
pub fn count(text: &str) -> usize {
    let lines = LINES.lock().unwrap_or_else(|e| e.into_inner());
    lines.iter().filter(|l| l.contains(text)).count()
}
