//! Lifeline's capture layer: loads the kernel programs, attaches them to the
//! syscall tracepoints (and detaches them: the on/off switch), tells them
//! which filesystems are watched, and turns their ring-buffer records into
//! file modification messages ([`FileChange`]).
//!
//! ```text
//!  kernel: sys_enter/sys_exit programs ──ring buffer──► Reader (thread)
//!          decode → resolve paths (mountinfo, watched roots) → Sink
//! ```

pub mod btf;
pub mod change;
pub mod mounts;
pub mod record;

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf};
use aya::programs::raw_trace_point::RawTracePointLinkId;
use aya::programs::RawTracePoint;
use aya::{Ebpf, EbpfLoader};
use lifeline_ebpf_common::{stat, Config};
use tracing::{debug, info, warn};

pub use change::{ChangeKind, FileChange, Resolver, Unresolved};

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

/// Counters kept by the kernel programs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelStats {
    pub emitted: u64,
    /// Records dropped because the ring buffer was full.
    pub lost: u64,
    pub missed_entry: u64,
}

/// The loaded programs and their attachments.
pub struct Capture {
    ebpf: Ebpf,
    links: Vec<(&'static str, RawTracePointLinkId)>,
    reader: Option<Reader>,
}

impl Capture {
    /// Loads (but does not attach) the programs. Fails with a message saying
    /// why when eBPF is not available (not root, no BTF, locked down).
    pub fn load(opts: &CaptureOptions) -> anyhow::Result<Capture> {
        // Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK.
        let rlim = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
        unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) };

        let offsets = btf::Btf::from_sys_fs()?.offsets()?;
        let config = Config { offsets, agent_tgid: std::process::id(), _pad: 0 };
        let mut ebpf = EbpfLoader::new()
            .override_global("CONFIG", &config, true)
            .map_max_entries("EVENTS", opts.ring_buffer_bytes.next_power_of_two().max(4096))
            .load(PROGRAMS)
            .context("loading the eBPF programs (the agent must run as root on a kernel with BTF)")?;
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(l) => Some(l),
            Err(e) => {
                warn!("eBPF logs unavailable: {e}");
                None
            }
        };
        for name in ["sys_enter", "sys_exit"] {
            let prog: &mut RawTracePoint = ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("program {name} missing from the object"))?
                .try_into()?;
            prog.load().with_context(|| format!("the kernel's verifier refused {name}"))?;
        }
        let events = RingBuf::try_from(ebpf.take_map("EVENTS").ok_or_else(|| anyhow!("no EVENTS map"))?)?;
        let stats = PerCpuArray::try_from(ebpf.take_map("STATS").ok_or_else(|| anyhow!("no STATS map"))?)?;
        Ok(Capture { ebpf, links: Vec::new(), reader: Some(Reader { events, stats, logger }) })
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

    /// Attaches the programs to the `sys_enter` / `sys_exit` raw tracepoints.
    pub fn attach(&mut self) -> anyhow::Result<()> {
        if self.attached() {
            return Ok(());
        }
        let started = Instant::now();
        for name in ["sys_enter", "sys_exit"] {
            let prog: &mut RawTracePoint = self.ebpf.program_mut(name).expect("loaded").try_into()?;
            let id = prog.attach(name).with_context(|| format!("attaching to the {name} raw tracepoint"))?;
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
            let prog: &mut RawTracePoint = self.ebpf.program_mut(prog_name).expect("loaded").try_into()?;
            prog.detach(id)?;
        }
        info!("eBPF programs detached in {:?}", started.elapsed());
        Ok(())
    }
}

/// What the reader hands on.
#[derive(Debug)]
pub enum CaptureMsg {
    Change(FileChange),
    /// Changes were lost (ring buffer full) or could not be resolved to a
    /// complete path: the watched trees must be reconciled.
    Gap { lost: u64, incomplete: u64 },
}

/// Drains the ring buffer on its own thread.
pub struct Reader {
    events: RingBuf<MapData>,
    stats: PerCpuArray<MapData, u64>,
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
}

impl Reader {
    pub fn kernel_stats(&self) -> KernelStats {
        let sum = |i: u32| self.stats.get(&i, 0).map(|v| v.iter().sum()).unwrap_or(0);
        KernelStats { emitted: sum(stat::EMITTED), lost: sum(stat::LOST), missed_entry: sum(stat::MISSED_ENTRY) }
    }

    /// Reads records until `sink` returns false. Blocks in poll(2) when idle.
    pub fn run(mut self, mut resolver: Resolver, mut sink: impl FnMut(CaptureMsg) -> bool) {
        let mut last_lost = self.kernel_stats().lost;
        let mut incomplete = 0u64;
        let mut last_check = Instant::now();
        loop {
            let mut fds = vec![libc::pollfd { fd: self.events.as_raw_fd(), events: libc::POLLIN, revents: 0 }];
            if let Some(l) = &self.logger {
                fds.push(libc::pollfd { fd: l.as_raw_fd(), events: libc::POLLIN, revents: 0 });
            }
            unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 50) };
            if let Some(l) = &mut self.logger {
                l.flush();
            }
            while let Some(item) = self.events.next() {
                let msg = match record::decode(&item) {
                    Ok(raw) => match resolver.resolve(&raw) {
                        Ok(change) => Some(CaptureMsg::Change(change)),
                        Err(Unresolved::Outside) => None,
                        Err(Unresolved::Incomplete) => {
                            debug!("unresolvable path in record {:?}", raw.header);
                            incomplete += 1;
                            None
                        }
                    },
                    Err(e) => {
                        warn!("{e}");
                        incomplete += 1;
                        None
                    }
                };
                drop(item);
                if let Some(m) = msg {
                    if !sink(m) {
                        return;
                    }
                }
            }
            if last_check.elapsed() >= Duration::from_millis(100) {
                last_check = Instant::now();
                let lost = self.kernel_stats().lost;
                if lost > last_lost || incomplete > 0 {
                    warn!(
                        "kernel events lost: {} (ring buffer full), {} unresolvable; reconciling",
                        lost - last_lost,
                        incomplete
                    );
                    if !sink(CaptureMsg::Gap { lost: lost - last_lost, incomplete }) {
                        return;
                    }
                    last_lost = lost;
                    incomplete = 0;
                }
            }
        }
    }
}
