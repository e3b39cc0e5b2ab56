//! Capturing what the code under test logs, at every level, for tests that check a log line is
//! written (once) or that a secret never reaches one.

use std::io::Write;
use std::sync::Arc;

use parking_lot::Mutex;
use tracing::subscriber::DefaultGuard;

/// The log lines written while the guard of [`capture`] is alive.
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    /// Everything logged so far, as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock()).into_owned()
    }

    /// How many logged lines contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.text().lines().filter(|l| l.contains(needle)).count()
    }
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Captures every event at TRACE level on this thread until the guard is dropped (so use a
/// current-thread runtime for async code).
pub fn capture() -> (Captured, DefaultGuard) {
    let captured = Captured::default();
    let buf = Arc::clone(&captured.0);
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || Sink(Arc::clone(&buf)))
        .finish();
    let guard = tracing::subscriber::set_default(subscriber);
    // Tracing caches each callsite's interest process-wide; a callsite another test reached
    // without a subscriber may still be cached as disabled. Recompute with ours in place.
    tracing::callsite::rebuild_interest_cache();
    (captured, guard)
}
