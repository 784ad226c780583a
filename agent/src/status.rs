//! What the agent reports and what it is told, kept apart: [`Counters`] are
//! the figures its threads publish for `status` (the CLI and the tray GUI
//! read them; a few also pace the agent's own background work, such as the
//! sender's check for a quiet queue and the watcher's reconciliation gap),
//! and [`Controls`] are the switches the control socket sets (`on`/`off`,
//! `pause`) and the agent's threads obey. The control socket's `status`
//! answer is both ([`Counters::snapshot`] with [`Controls::report`]).
//! Acknowledgements are neither: they reach the scheduler as messages
//! (`scheduler::SchedMsg::Acked`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Instant;

use lifeline_proto::control::v1::{AgentStatus, RecentFile};

/// How many replicated files the status keeps for the GUI's "last files".
pub const RECENT_FILES: usize = 10;

/// How changes are being captured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaptureMode {
    Ebpf,
    Off,
    Notify,
}

impl CaptureMode {
    pub fn as_str(self) -> &'static str {
        match self {
            CaptureMode::Ebpf => "ebpf",
            CaptureMode::Off => "off",
            CaptureMode::Notify => "notify",
        }
    }
}

/// The switches of the control socket. `sync` (a forced full sync) is the
/// reconciliation trigger the daemon hands around (`reconcile_now`).
#[derive(Debug)]
pub struct Controls {
    /// Capture on (and how) or off: the `on`/`off` switch.
    capture: Mutex<CaptureMode>,
    /// Sending held by the `pause` switch: the scheduler keeps capturing,
    /// logging and coalescing but dispatches nothing until resumed.
    paused: AtomicBool,
}

impl Controls {
    pub fn new(capture: CaptureMode) -> Controls {
        Controls { capture: Mutex::new(capture), paused: AtomicBool::new(false) }
    }

    pub fn capture_mode(&self) -> CaptureMode {
        *self.capture.lock().unwrap()
    }

    pub fn set_capture_mode(&self, mode: CaptureMode) {
        *self.capture.lock().unwrap() = mode;
    }

    pub fn paused(&self) -> bool {
        self.paused.load(Relaxed)
    }

    /// Returns what it was.
    pub fn set_paused(&self, paused: bool) -> bool {
        self.paused.swap(paused, Relaxed)
    }

    /// The switches' positions into a status answer.
    pub fn report(&self, status: &mut AgentStatus) {
        status.capture = self.capture_mode().as_str().to_string();
        status.paused = self.paused();
    }
}

impl Default for Controls {
    fn default() -> Controls {
        Controls::new(CaptureMode::Off)
    }
}

/// The figures the agent's threads publish for `status`.
pub struct Counters {
    pub started: Instant,
    pub receiver: String,
    pub machine: String,
    pub watched: Vec<String>,
    pub connected: AtomicBool,
    /// Items waiting in the scheduler.
    pub pending: AtomicU64,
    /// Capture time of the oldest item in the scheduler, as ms since `started`
    /// (u64::MAX when none).
    pub oldest_pending_ms: AtomicU64,
    /// Ops sent but not acknowledged.
    pub unacked_ops: AtomicU64,
    /// Capture time of the oldest change in an unacknowledged batch (as above).
    pub oldest_unacked_ms: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub ops_sent: AtomicU64,
    pub acked_seq: AtomicU64,
    pub kernel_events: AtomicU64,
    pub kernel_lost: AtomicU64,
    pub reconciliations: AtomicU64,
    /// How long the last completed reconciliation took, in ms.
    pub last_reconcile_ms: AtomicU64,
    pub initial_sync_done: AtomicBool,
    /// Bytes the queue log takes on disk.
    pub queue_log_bytes: AtomicU64,
    /// Changes logged and not yet acknowledged.
    pub unacked_changes: AtomicU64,
    /// Times the queue was replayed (each connection).
    pub replays: AtomicU64,
    /// Files sent as deltas against the mirror's copy, bytes of the
    /// signatures received for them, and deltas that fell back to sending
    /// the whole file (signature unavailable, or the receiver refused the
    /// delta).
    pub deltas: AtomicU64,
    pub signature_bytes: AtomicU64,
    pub delta_fallbacks: AtomicU64,
    pub last_error: Mutex<Option<String>>,
    /// Why the agent captures with the fallback watcher (empty with eBPF).
    fallback_reason: Mutex<String>,
    /// (local day, bytes sent that day): the GUI's "sent today".
    sent_today: Mutex<(i64, u64)>,
    /// The last files the receiver acknowledged, newest last.
    recent: Mutex<std::collections::VecDeque<RecentFile>>,
    /// Changes made at or after this time (ns since the epoch; i128::MAX:
    /// none) may have been lost; the next reconciliation compares such files
    /// by content. See [`Counters::suspect`].
    suspect_since_ns: Mutex<i128>,
    /// When changes were last possibly lost.
    last_loss: Mutex<Option<Instant>>,
    /// The receiver's standing alarm on this machine, as it words it
    /// (empty: none).
    alarm: Mutex<String>,
}

impl Counters {
    pub fn new(receiver: String, machine: String, watched: Vec<String>) -> Counters {
        Counters {
            started: Instant::now(),
            receiver,
            machine,
            watched,
            connected: AtomicBool::new(false),
            pending: AtomicU64::new(0),
            oldest_pending_ms: AtomicU64::new(u64::MAX),
            unacked_ops: AtomicU64::new(0),
            oldest_unacked_ms: AtomicU64::new(u64::MAX),
            bytes_sent: AtomicU64::new(0),
            ops_sent: AtomicU64::new(0),
            acked_seq: AtomicU64::new(0),
            kernel_events: AtomicU64::new(0),
            kernel_lost: AtomicU64::new(0),
            reconciliations: AtomicU64::new(0),
            last_reconcile_ms: AtomicU64::new(0),
            initial_sync_done: AtomicBool::new(false),
            queue_log_bytes: AtomicU64::new(0),
            unacked_changes: AtomicU64::new(0),
            replays: AtomicU64::new(0),
            deltas: AtomicU64::new(0),
            signature_bytes: AtomicU64::new(0),
            delta_fallbacks: AtomicU64::new(0),
            last_error: Mutex::new(None),
            fallback_reason: Mutex::new(String::new()),
            sent_today: Mutex::new((local_day(), 0)),
            recent: Mutex::new(std::collections::VecDeque::new()),
            suspect_since_ns: Mutex::new(i128::MAX),
            last_loss: Mutex::new(None),
            alarm: Mutex::new(String::new()),
        }
    }

    /// Milliseconds since the agent started, for the `*_ms` fields.
    pub fn ms(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.started).as_millis() as u64
    }

    /// Changes made since `since` may have been lost (a full ring buffer,
    /// the agent not running, capture off). A second of margin covers
    /// filesystems' coarse timestamps.
    pub fn suspect(&self, since: std::time::SystemTime) {
        let since = since - std::time::Duration::from_secs(1);
        let ns = since.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i128);
        self.suspect_ns(ns);
    }

    pub fn suspect_ns(&self, ns: i128) {
        let mut s = self.suspect_since_ns.lock().unwrap();
        *s = (*s).min(ns);
        *self.last_loss.lock().unwrap() = Some(Instant::now());
    }

    /// The suspect window for a reconciliation starting now (kept until
    /// [`Counters::settle_suspect`]).
    pub fn suspect_window(&self) -> i128 {
        *self.suspect_since_ns.lock().unwrap()
    }

    /// A reconciliation that started at `started` with window `window`
    /// completed. The window closes only if nothing was lost since a second
    /// before that start: what it sent may have been read while writes went
    /// on, and a loss after the read hides them again. Returns whether it
    /// closed (otherwise another reconciliation is due).
    pub fn settle_suspect(&self, window: i128, started: Instant) -> bool {
        if window == i128::MAX {
            return true;
        }
        let quiet = self.last_loss.lock().unwrap().is_none_or(|t| t + std::time::Duration::from_secs(1) <= started);
        let mut s = self.suspect_since_ns.lock().unwrap();
        if quiet && *s == window {
            *s = i128::MAX;
            return true;
        }
        false
    }

    /// What the receiver's last acknowledgement said of an alarm (every
    /// one carries it while it stands; none once the operator cleared it).
    pub fn set_alarm(&self, alarm: Option<&lifeline_proto::v1::StandingAlarm>) {
        let text = alarm.map(|a| a.text.clone()).unwrap_or_default();
        let mut current = self.alarm.lock().unwrap();
        if *current != text {
            if !text.is_empty() {
                tracing::error!("the receiver raised an alarm on this machine: {text}");
            }
            *current = text;
        }
    }

    pub fn set_fallback_reason(&self, why: String) {
        *self.fallback_reason.lock().unwrap() = why;
    }

    pub fn set_error(&self, e: impl Into<String>) {
        *self.last_error.lock().unwrap() = Some(e.into());
    }

    /// Counts `bytes` sent, in the total and in today's figure (which starts
    /// again at local midnight).
    pub fn count_sent(&self, bytes: u64) {
        self.bytes_sent.fetch_add(bytes, Relaxed);
        let day = local_day();
        let mut t = self.sent_today.lock().unwrap();
        if t.0 != day {
            *t = (day, 0);
        }
        t.1 += bytes;
    }

    /// The receiver acknowledged changes of `paths` (in order).
    pub fn replicated(&self, paths: &[String]) {
        let unix_ms =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let mut r = self.recent.lock().unwrap();
        for p in paths {
            // A file written in many batches shows once, as its latest.
            r.retain(|f| &f.path != p);
            r.push_back(RecentFile { path: p.clone(), unix_ms });
            while r.len() > RECENT_FILES {
                r.pop_front();
            }
        }
    }

    /// The figures, with the switches' fields left at their defaults (see
    /// [`Controls::report`]).
    pub fn snapshot(&self) -> AgentStatus {
        let now = self.ms(Instant::now());
        let oldest = self.oldest_pending_ms.load(Relaxed).min(self.oldest_unacked_ms.load(Relaxed));
        AgentStatus {
            connected: self.connected.load(Relaxed),
            capture: String::new(),
            queue_depth: self.pending.load(Relaxed) + self.unacked_ops.load(Relaxed),
            lag_ms: if oldest == u64::MAX { 0 } else { now.saturating_sub(oldest) },
            bytes_sent: self.bytes_sent.load(Relaxed),
            ops_sent: self.ops_sent.load(Relaxed),
            acked_seq: self.acked_seq.load(Relaxed),
            last_error: self.last_error.lock().unwrap().clone().unwrap_or_default(),
            initial_sync_done: self.initial_sync_done.load(Relaxed),
            receiver: self.receiver.clone(),
            machine: self.machine.clone(),
            watched: self.watched.clone(),
            kernel_events: self.kernel_events.load(Relaxed),
            kernel_lost: self.kernel_lost.load(Relaxed),
            reconciliations: self.reconciliations.load(Relaxed),
            queue_log_bytes: self.queue_log_bytes.load(Relaxed),
            unacked_changes: self.unacked_changes.load(Relaxed),
            replays: self.replays.load(Relaxed),
            deltas: self.deltas.load(Relaxed),
            signature_bytes: self.signature_bytes.load(Relaxed),
            delta_fallbacks: self.delta_fallbacks.load(Relaxed),
            paused: false,
            bytes_sent_today: {
                let t = self.sent_today.lock().unwrap();
                if t.0 == local_day() {
                    t.1
                } else {
                    0
                }
            },
            recent_files: self.recent.lock().unwrap().iter().rev().cloned().collect(),
            fallback_reason: self.fallback_reason.lock().unwrap().clone(),
            alarm: self.alarm.lock().unwrap().clone(),
        }
    }
}

/// Today's number in local time (year * 1000 + day of the year), so that
/// "sent today" restarts at the user's midnight, not UTC's.
fn local_day() -> i64 {
    // SAFETY: time(NULL) and localtime_r with valid pointers have no other
    // preconditions; `tm` is plain data.
    unsafe {
        let now = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&now, &mut tm).is_null() {
            return now / 86400;
        }
        tm.tm_year as i64 * 1000 + tm.tm_yday as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_files_are_newest_first_deduplicated_and_bounded() {
        let s = Counters::new(String::new(), String::new(), Vec::new());
        s.replicated(&["/a".into(), "/b".into()]);
        s.replicated(&["/a".into()]);
        let names: Vec<String> = s.snapshot().recent_files.into_iter().map(|f| f.path).collect();
        assert_eq!(names, ["/a", "/b"]);
        let many: Vec<String> = (0..25).map(|i| format!("/f{i}")).collect();
        s.replicated(&many);
        let snap = s.snapshot().recent_files;
        assert_eq!(snap.len(), RECENT_FILES);
        assert_eq!(snap[0].path, "/f24");
    }

    #[test]
    fn the_receivers_alarm_shows_until_an_ack_comes_without_it() {
        let s = Counters::new(String::new(), String::new(), Vec::new());
        let a =
            lifeline_proto::v1::StandingAlarm { text: "ALARM since ...: restore as of T".into(), ..Default::default() };
        s.set_alarm(Some(&a));
        assert_eq!(s.snapshot().alarm, a.text);
        s.set_alarm(None);
        assert_eq!(s.snapshot().alarm, "", "cleared by the operator");
    }

    #[test]
    fn bytes_sent_today_counts_with_the_total() {
        let s = Counters::new(String::new(), String::new(), Vec::new());
        s.count_sent(100);
        s.count_sent(23);
        let snap = s.snapshot();
        assert_eq!(snap.bytes_sent, 123);
        assert_eq!(snap.bytes_sent_today, 123);
    }
}
