//! Progress of long work: bytes done of a known total, rate and ETA, redrawn
//! on one terminal line. Shown only when stderr is a terminal, so scripts and
//! logs stay quiet; the engine just bumps a counter either way.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::util::{human_bytes, human_secs};

/// A counter other threads add to; a drawing thread when on a terminal.
pub struct Progress {
    shared: Arc<Shared>,
    drawer: Option<JoinHandle<()>>,
    watcher: Option<JoinHandle<()>>,
}

/// Someone else following long work (the receiver's job record): called
/// with (what, bytes done, total) about every [`WATCH_EVERY`] and once at
/// the end.
#[derive(Clone)]
pub struct Watcher(Arc<WatchFn>);

/// (what, bytes done, total).
type WatchFn = dyn Fn(&str, u64, u64) + Send + Sync;

/// How often a [`Watcher`] hears of progress.
pub const WATCH_EVERY: Duration = Duration::from_secs(2);

impl Watcher {
    pub fn new(f: impl Fn(&str, u64, u64) + Send + Sync + 'static) -> Watcher {
        Watcher(Arc::new(f))
    }
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Watcher")
    }
}

struct Shared {
    what: String,
    total: u64,
    done: AtomicU64,
    stop: AtomicBool,
    started: Instant,
}

impl Progress {
    /// Start reporting `what` over `total` bytes. `show`: draw if stderr is a
    /// terminal (false forces quiet).
    pub fn start(what: &str, total: u64, show: bool) -> Progress {
        let shared = Arc::new(Shared {
            what: what.to_string(),
            total,
            done: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            started: Instant::now(),
        });
        let drawer = (show && std::io::stderr().is_terminal()).then(|| {
            let s = shared.clone();
            std::thread::spawn(move || {
                while !s.stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(250));
                    eprint!("\r{}\x1b[K", s.line());
                    let _ = std::io::stderr().flush();
                }
                eprint!("\r\x1b[K");
            })
        });
        Progress { shared, drawer, watcher: None }
    }

    /// Also tell `w` (if any) how the work goes.
    pub fn watched(mut self, w: Option<Watcher>) -> Progress {
        if let Some(w) = w {
            let s = self.shared.clone();
            self.watcher = Some(std::thread::spawn(move || {
                let mut last = Instant::now();
                while !s.stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                    if last.elapsed() >= WATCH_EVERY {
                        last = Instant::now();
                        (w.0)(&s.what, s.done.load(Ordering::Relaxed).min(s.total), s.total);
                    }
                }
                (w.0)(&s.what, s.done.load(Ordering::Relaxed).min(s.total), s.total);
            }));
        }
        self
    }

    /// A handle worker threads can add to.
    pub fn counter(&self) -> Counter {
        Counter(self.shared.clone())
    }

    pub fn add(&self, n: u64) {
        self.shared.done.fetch_add(n, Ordering::Relaxed);
    }

    pub fn elapsed(&self) -> Duration {
        self.shared.started.elapsed()
    }

    /// Stop drawing and clear the line.
    pub fn finish(mut self) -> Duration {
        self.stop();
        self.shared.started.elapsed()
    }

    fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.drawer.take() {
            let _ = h.join();
        }
        if let Some(h) = self.watcher.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Cloneable adder for worker threads.
#[derive(Clone)]
pub struct Counter(Arc<Shared>);

impl Counter {
    pub fn add(&self, n: u64) {
        self.0.done.fetch_add(n, Ordering::Relaxed);
    }
}

impl Shared {
    fn line(&self) -> String {
        let done = self.done.load(Ordering::Relaxed).min(self.total);
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let rate = done as f64 / secs;
        let pct = if self.total == 0 { 100.0 } else { done as f64 * 100.0 / self.total as f64 };
        let eta = if rate > 0.0 { human_secs((self.total - done) as f64 / rate) } else { "?".into() };
        format!(
            "{}: {} / {} ({pct:.0}%), {}/s, ETA {eta}",
            self.what,
            human_bytes(done),
            human_bytes(self.total),
            human_bytes(rate as u64)
        )
    }
}
