//! Warnings that an attacker can trigger at will (a refused credential, a
//! limit hit) are logged at most once per [`WARN_EVERY`] each, saying how
//! many were left out, so that a flood of requests is not also a flood of
//! log lines.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often one kind of warning may be logged.
pub const WARN_EVERY: Duration = Duration::from_secs(10);

/// One kind of warning's last time logged.
#[derive(Debug, Default)]
pub struct Throttle {
    last: Mutex<Option<Instant>>,
    suppressed: AtomicU64,
}

impl Throttle {
    pub const fn new() -> Throttle {
        Throttle { last: Mutex::new(None), suppressed: AtomicU64::new(0) }
    }

    /// Calls `log` with how many earlier hits it left out, if it is time.
    pub fn hit(&self, log: impl FnOnce(u64)) {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|t| t.elapsed() < WARN_EVERY) {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        *last = Some(Instant::now());
        log(self.suppressed.swap(0, Ordering::Relaxed));
    }
}
