//! Lifeline's capture layer: loads the kernel programs, attaches them to the
//! syscall tracepoints (and detaches them: the on/off switch), tells them
//! which filesystems are watched, and turns their ring-buffer records into
//! file modification messages ([`FileChange`]).
//!
//! ```text
//!  kernel: sys_exit program ──ring buffer──► Reader (thread)
//!          decode → resolve paths (mountinfo, watched roots) → Sink
//! ```

pub mod btf;
pub mod change;
pub mod mounts;
pub mod record;
pub mod selfcheck;
pub mod verifier;

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf};
use aya::programs::tp_btf::BtfTracePointLinkId;
use aya::programs::BtfTracePoint;
use aya::{Ebpf, EbpfLoader};
use lifeline_ebpf_common::{flags, stat, Config, Run, RUN_ENDED, RUN_WINDOW_NS};
use std::collections::HashMap;
use tracing::{debug, info, warn};

pub use change::{ChangeKind, FileChange, PathResolver, Unresolved};

/// The compiled kernel programs (built by build.rs).
static PROGRAMS: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lifeline-ebpf.o"));

#[derive(Clone, Debug)]
pub struct CaptureOptions {
    /// Size of the kernel → agent ring buffer (a power of two, in bytes).
    pub ring_buffer_bytes: u32,
}

impl Default for CaptureOptions {
    fn default() -> Self {
        CaptureOptions { ring_buffer_bytes: 16 << 20 }
    }
}

/// The programs, each attached to the (BTF-enabled) tracepoint of its name.
const PROGRAMS_ATTACHED: [&str; 1] = ["sys_exit"];

/// Counters kept by the kernel programs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelStats {
    pub emitted: u64,
    /// Records dropped because the ring buffer was full.
    pub lost: u64,
}

/// The loaded programs and their attachments.
pub struct Capture {
    ebpf: Ebpf,
    links: Vec<(&'static str, BtfTracePointLinkId)>,
    reader: Option<Reader>,
}

impl Capture {
    /// Loads (but does not attach) the programs. Fails with a message saying
    /// why when eBPF is not available (not root, no BTF, locked down).
    pub fn load(opts: &CaptureOptions) -> anyhow::Result<Capture> {
        // Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK.
        let rlim = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
        unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) };

        let programs = programs()?;
        let config = config()?;
        let mut ebpf = EbpfLoader::new()
            .override_global("CONFIG", &config, true)
            .map_max_entries("EVENTS", opts.ring_buffer_bytes.next_power_of_two().max(4096))
            .load(programs)
            .context("loading the eBPF programs (the agent must run as root on a kernel with BTF)")?;
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(l) => Some(l),
            Err(e) => {
                warn!("eBPF logs unavailable: {e}");
                None
            }
        };
        let kernel_btf = aya::Btf::from_sys_fs().context("reading the kernel's BTF")?;
        for name in PROGRAMS_ATTACHED {
            let prog: &mut BtfTracePoint =
                ebpf.program_mut(name).ok_or_else(|| anyhow!("program {name} missing from the object"))?.try_into()?;
            prog.load(name, &kernel_btf).with_context(|| format!("the kernel's verifier refused {name}"))?;
        }
        let events = RingBuf::try_from(ebpf.take_map("EVENTS").ok_or_else(|| anyhow!("no EVENTS map"))?)?;
        let stats = PerCpuArray::try_from(ebpf.take_map("STATS").ok_or_else(|| anyhow!("no STATS map"))?)?;
        let runs = BpfHashMap::try_from(ebpf.take_map("RUNS").ok_or_else(|| anyhow!("no RUNS map"))?)?;
        let reader = Reader { events, stats, runs, logger, open_runs: HashMap::new() };
        Ok(Capture { ebpf, links: Vec::new(), reader: Some(reader) })
    }

    /// The ring-buffer reader, to run on its own thread. Taken once.
    pub fn take_reader(&mut self) -> Option<Reader> {
        self.reader.take()
    }

    /// Replaces the set of watched filesystems (kernel filter for fd-based
    /// calls), given any path on each.
    pub fn set_watched(&mut self, paths: &[PathBuf]) -> anyhow::Result<()> {
        use std::os::unix::fs::MetadataExt;
        let mut map: BpfHashMap<_, u32, u8> =
            BpfHashMap::try_from(self.ebpf.map_mut("WATCHED").ok_or_else(|| anyhow!("no WATCHED map"))?)?;
        let old: Vec<u32> = map.keys().filter_map(Result::ok).collect();
        for k in old {
            map.remove(&k)?;
        }
        for p in paths {
            let dev = std::fs::metadata(p).with_context(|| format!("stat {}", p.display()))?.dev();
            map.insert(mounts::user_dev_to_kernel(dev), 1, 0)?;
        }
        Ok(())
    }

    pub fn attached(&self) -> bool {
        !self.links.is_empty()
    }

    /// Attaches the program to the `sys_exit` tracepoint (BTF-enabled).
    pub fn attach(&mut self) -> anyhow::Result<()> {
        if self.attached() {
            return Ok(());
        }
        let started = Instant::now();
        for name in PROGRAMS_ATTACHED {
            let prog: &mut BtfTracePoint = self.ebpf.program_mut(name).expect("loaded").try_into()?;
            let id = prog.attach().with_context(|| format!("attaching to the {name} tracepoint"))?;
            self.links.push((name, id));
        }
        info!("eBPF programs attached in {:?}", started.elapsed());
        Ok(())
    }

    /// Detaches every program: the kernel stops reporting.
    ///
    pub fn detach(&mut self) -> anyhow::Result<()> {
        let started = Instant::now();
        for (prog_name, id) in self.links.drain(..) {
            let prog: &mut BtfTracePoint = self.ebpf.program_mut(prog_name).expect("loaded").try_into()?;
            prog.detach(id)?;
        }
        info!("eBPF programs detached in {:?}", started.elapsed());
        Ok(())
    }
}

/// The compiled programs, unless this binary was built without them.
fn programs() -> anyhow::Result<&'static [u8]> {
    if PROGRAMS.is_empty() {
        anyhow::bail!(
            "this agent was built without its eBPF programs (LIFELINE_WITHOUT_EBPF=1); rebuild it without that \
             variable (scripts/setup.sh installs the nightly toolchain and bpf-linker the build needs)"
        );
    }
    Ok(PROGRAMS)
}

/// The programs' load-time configuration: kernel structure offsets from
/// this kernel's BTF, and our own process (whose I/O is never reported).
fn config() -> anyhow::Result<Config> {
    let offsets = btf::Btf::from_sys_fs()?.offsets()?;
    Ok(Config { offsets, agent_tgid: std::process::id(), _pad: 0 })
}

/// What this kernel's verifier says of our programs (instructions processed,
/// the deepest call chain's stack), loading them once more without
/// attaching. Fails with the verifier's message if it refuses one.
pub fn verifier_reports() -> anyhow::Result<Vec<verifier::VerifierReport>> {
    let programs = programs()?;
    let config = config()?;
    let bytes =
        unsafe { std::slice::from_raw_parts(&config as *const Config as *const u8, std::mem::size_of::<Config>()) };
    PROGRAMS_ATTACHED.iter().map(|p| verifier::report(programs, p, &[("CONFIG", bytes)])).collect()
}

/// What the reader hands on.
#[derive(Debug)]
pub enum CaptureMsg {
    Change(FileChange),
    /// Changes were lost (ring buffer full) or could not be resolved to a
    /// complete path: the watched trees must be reconciled.
    Gap {
        lost: u64,
        incomplete: u64,
        /// The lost changes happened after this (the previous check of the
        /// loss counter found none).
        since: std::time::SystemTime,
    },
}

/// How long the reader lets records accumulate after a pass that found some.
const BATCH_WINDOW: Duration = Duration::from_millis(1);

/// Drains the ring buffer on its own thread.
pub struct Reader {
    events: RingBuf<MapData>,
    stats: PerCpuArray<MapData, u64>,
    runs: BpfHashMap<MapData, u64, Run>,
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    /// Runs opened by the kernel whose end is not known yet, by (pid_tgid, t0).
    open_runs: HashMap<(u64, u64), OpenRun>,
}

/// A run of contiguous writes the kernel is absorbing (see
/// `lifeline_ebpf_common::Run`): its first write was reported; the rest is
/// learnt from its RUN_END record or by reading the `RUNS` map once the
/// window is over.
struct OpenRun {
    change: FileChange,
    first_end: u64,
    /// When to look at the map.
    check_at: Instant,
    /// Give up (and reconcile) if the end is still unknown by then.
    give_up_at: Instant,
}

/// How long after the window the agent looks (slack for clock differences).
const RUN_CHECK_SLACK: Duration = Duration::from_millis(1);

impl Reader {
    pub fn kernel_stats(&self) -> KernelStats {
        let sum = |i: u32| self.stats.get(&i, 0).map(|v| v.iter().sum()).unwrap_or(0);
        KernelStats { emitted: sum(stat::EMITTED), lost: sum(stat::LOST) }
    }

    /// Reads records until `sink` returns false. Blocks in poll(2) when idle.
    pub fn run(mut self, mut resolver: PathResolver, mut sink: impl FnMut(CaptureMsg) -> bool) {
        let mut last_lost = self.kernel_stats().lost;
        let mut incomplete = 0u64;
        let mut last_check = Instant::now();
        let mut last_check_wall = std::time::SystemTime::now();
        loop {
            let mut fds = vec![libc::pollfd { fd: self.events.as_raw_fd(), events: libc::POLLIN, revents: 0 }];
            if let Some(l) = &self.logger {
                fds.push(libc::pollfd { fd: l.as_raw_fd(), events: libc::POLLIN, revents: 0 });
            }
            let timeout = self
                .open_runs
                .values()
                .map(|r| r.check_at.saturating_duration_since(Instant::now()))
                .min()
                .map_or(100, |d| d.as_millis().clamp(1, 100) as i32);
            unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
            if let Some(l) = &mut self.logger {
                l.flush();
            }
            let mut raws = Vec::new();
            while let Some(item) = self.events.next() {
                match record::decode(&item) {
                    Ok(raw) => raws.push(raw),
                    Err(e) => {
                        warn!("{e}");
                        incomplete += 1;
                    }
                }
            }
            let mut out = Vec::with_capacity(raws.len());
            for raw in raws {
                self.record(raw, &mut resolver, &mut incomplete, &mut out);
            }
            self.check_runs(&mut incomplete, &mut out);
            let drained = !out.is_empty();
            for m in out {
                if !sink(m) {
                    return;
                }
            }
            if drained {
                // The kernel does not wake us while records are waiting, so
                // under load this is one pass per millisecond, in batches.
                std::thread::sleep(BATCH_WINDOW);
            }
            if last_check.elapsed() >= Duration::from_millis(100) {
                last_check = Instant::now();
                let since = std::mem::replace(&mut last_check_wall, std::time::SystemTime::now());
                let lost = self.kernel_stats().lost;
                if lost > last_lost || incomplete > 0 {
                    warn!(
                        "kernel events lost: {} (ring buffer full), {} unresolvable; reconciling",
                        lost - last_lost,
                        incomplete
                    );
                    if !sink(CaptureMsg::Gap { lost: lost - last_lost, incomplete, since }) {
                        return;
                    }
                    last_lost = lost;
                    incomplete = 0;
                }
            }
        }
    }

    fn record(
        &mut self,
        raw: record::RawEvent,
        resolver: &mut PathResolver,
        incomplete: &mut u64,
        out: &mut Vec<CaptureMsg>,
    ) {
        let h = raw.header;
        if h.flags & flags::RUN_END != 0 {
            if let Some(run) = self.open_runs.remove(&(h.aux, h.ktime_ns)) {
                finish_run(run, h.offset + h.len, out);
            }
            return;
        }
        match resolver.resolve(&raw) {
            Ok(change) => {
                if let ChangeKind::Rename { to, exchange: false } = &change.kind {
                    // A file renamed while a run still writes to it: its end
                    // belongs to the new name.
                    for run in self.open_runs.values_mut() {
                        if let Ok(rest) = run.change.path.strip_prefix(&change.path) {
                            run.change.path = if rest.as_os_str().is_empty() { to.clone() } else { to.join(rest) };
                        }
                    }
                }
                if h.flags & flags::RUN_OPEN != 0 {
                    // One task's records arrive in the order it emitted them:
                    // a RUN_END of its earlier runs would have come before
                    // this. Those still open ended having absorbed nothing.
                    self.open_runs.retain(|(task, _), _| *task != h.aux);
                    let window = Duration::from_nanos(RUN_WINDOW_NS);
                    let now = Instant::now();
                    self.open_runs.insert(
                        (h.aux, h.ktime_ns),
                        OpenRun {
                            change: change.clone(),
                            first_end: h.offset + h.len,
                            check_at: now + window + RUN_CHECK_SLACK,
                            give_up_at: now + Duration::from_secs(1),
                        },
                    );
                }
                out.push(CaptureMsg::Change(change));
            }
            Err(Unresolved::Outside) => {}
            Err(Unresolved::Incomplete) => {
                debug!("unresolvable path in record {:?}", raw.header);
                *incomplete += 1;
            }
        }
    }

    /// Runs whose window is over: their end is final in the map, unless the
    /// kernel ended them itself (then their RUN_END record is on its way).
    fn check_runs(&mut self, incomplete: &mut u64, out: &mut Vec<CaptureMsg>) {
        let now = Instant::now();
        let due: Vec<(u64, u64)> = self.open_runs.iter().filter(|(_, r)| r.check_at <= now).map(|(k, _)| *k).collect();
        for key @ (pid_tgid, t0) in due {
            match self.runs.get(&pid_tgid, 0) {
                // Open (its end is final now the window is over) or closed
                // having absorbed nothing: either way the map has the end.
                Ok(run) if run.t0 == t0 && run.ended != RUN_ENDED => {
                    let r = self.open_runs.remove(&key).expect("due run");
                    finish_run(r, run.end, out);
                }
                _ => {
                    let r = self.open_runs.get_mut(&key).expect("due run");
                    if now >= r.give_up_at {
                        warn!("the end of a write run on {} never arrived; reconciling", r.change.path.display());
                        self.open_runs.remove(&key);
                        *incomplete += 1;
                    } else {
                        r.check_at = now + Duration::from_millis(5);
                    }
                }
            }
        }
    }
}

/// Reports what a run's absorbed writes covered, `[first_end, end)`, under
/// the name the file has at this point of the event stream (renames seen so
/// far were applied to it). The file system itself may be ahead of the
/// stream: a rename or unlink still on its way carries or cancels the change
/// in the scheduler, and the send-time inode check guards the rest.
fn finish_run(run: OpenRun, end: u64, out: &mut Vec<CaptureMsg>) {
    if end <= run.first_end {
        return;
    }
    let mut change = run.change;
    change.kind = ChangeKind::Write { offset: run.first_end, len: end - run.first_end };
    out.push(CaptureMsg::Change(change));
}
