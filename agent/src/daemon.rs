//! `lifeline-agent run`: wires capture → scheduler → network backup unit,
//! reconciliation and the control socket together.
//!
//! ```text
//!  capture reader thread ──(queue unit: channel)──► scheduler thread
//!        │ gaps                      ▲   ▲              │ batches, delta jobs
//!        ▼                           │   │ acks         ▼
//!  reconciliation task ──(findings)──┘   └──────── sender task ──gRPC──► receiver
//!  control socket: status (Counters) / on, off, pause (Controls) / sync
//! ```

use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context;
use lifeline_capture::{Capture, CaptureMsg, CaptureOptions, PathResolver};
use tokio::sync::Notify;
use tracing::{error, info};

use crate::config::{AgentConfig, CaptureChoice};
use crate::control::{self, ControlService};
use crate::remote::Remote;
use crate::scheduler::{self, SchedMsg, SchedulerOptions};
use crate::status::{CaptureMode, Controls, Counters};
use crate::{fallback, mapped, reconcile, sender};

/// Drains the kernel's records on a thread of its own into the queue.
fn spawn_reader(
    reader: lifeline_capture::Reader,
    roots: &[PathBuf],
    tx: crossbeam_channel::Sender<SchedMsg>,
    counters: Arc<Counters>,
    reconcile_now: Arc<Notify>,
) -> anyhow::Result<()> {
    let resolver = PathResolver::new(roots.to_vec())?;
    // Shared writable mappings are watched on a thread of their own.
    let (map_tx, map_rx) = crossbeam_channel::unbounded();
    {
        let tx = tx.clone();
        std::thread::Builder::new().name("mapped".into()).spawn(move || mapped::run(map_rx, tx))?;
    }
    std::thread::Builder::new().name("capture".into()).spawn(move || {
        reader.run(resolver, |msg| match msg {
            CaptureMsg::Change(ch) => {
                counters.kernel_events.fetch_add(1, Relaxed);
                if matches!(ch.kind, lifeline_capture::ChangeKind::MmapShared) {
                    let _ = map_tx.send(mapped::Mapping { tgid: ch.tgid, path: ch.path.clone() });
                }
                tx.send(SchedMsg::Change(ch, Instant::now())).is_ok()
            }
            CaptureMsg::Gap { lost, since, .. } => {
                counters.kernel_lost.fetch_add(lost, Relaxed);
                counters.suspect(since);
                reconcile_now.notify_one();
                true
            }
        })
    })?;
    Ok(())
}

/// Why eBPF capture could not be used, in one line for `status` and the
/// tray: the verifier's own reason when it refused a program (the line of
/// its log that says why, e.g. "combined stack size of 3 calls is 576. Too
/// large"), else the loader's first line.
pub fn fallback_reason(e: &anyhow::Error) -> String {
    let text = format!("{e:#}");
    if let Some((_, log)) = text.split_once("Verifier output:") {
        // The log ends with the reason, then statistics; before the reason
        // come the instructions and register states it went through. After
        // it, the error chain goes on (": Permission denied (os error 13)").
        let log = log.split("\n: ").next().unwrap_or(log);
        let stats = ["processed ", "verification time", "stack depth", "max_states", "peak_states", "mark_read"];
        let why = log.lines().map(str::trim).filter(|l| !l.is_empty()).rev().find(|l| {
            !stats.iter().any(|s| l.starts_with(s))
                && !l.starts_with(';')
                && !l.starts_with("from ")
                && !l.split_once(':').is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        });
        if let Some(why) = why {
            return format!("eBPF refused: {why}");
        }
    }
    let first = text.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("unknown error");
    format!("eBPF unavailable: {first}")
}

/// Lowers (or raises) the process's CPU priority; call before spawning
/// threads, which inherit it.
pub fn set_priority(nice: i32) {
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) } != 0 {
        tracing::warn!("cannot set the agent's nice value to {nice}: {}", std::io::Error::last_os_error());
    }
}

pub async fn run(cfg: AgentConfig) -> anyhow::Result<()> {
    if cfg.watch.is_empty() {
        anyhow::bail!("nothing to watch: give at least one --watch DIR (or `watch = [...]` in the config file)");
    }
    let mut roots = Vec::new();
    for w in &cfg.watch {
        let root = std::fs::canonicalize(w)
            .with_context(|| format!("watched directory {} does not exist; create it or fix --watch", w.display()))?;
        if !root.is_dir() {
            anyhow::bail!("watched path {} is not a directory", root.display());
        }
        roots.push(root);
    }
    let state_dir = cfg.state_dir();
    create_private_dir(&state_dir)?;
    let remote = Remote::from_config(&cfg)?;
    let counters = Arc::new(Counters::new(
        remote.endpoint().to_owned(),
        remote.machine().to_owned(),
        roots.iter().map(|r| r.display().to_string()).collect(),
    ));
    let controls = Arc::new(Controls::new(CaptureMode::Off));
    let queue_dir = state_dir.join("queue");
    let queue_log = scheduler::queue_log::QueueLog::open(&queue_dir)
        .with_context(|| format!("cannot open the queue log in {}", queue_dir.display()))?;
    let queue_id = queue_log.queue_id();
    if let Some(t) = queue_log.previous_write() {
        // The previous run's last changes may not have reached the log.
        counters.suspect(t);
    }
    let reconcile_now = Arc::new(Notify::new());
    let (queue_tx, queue_rx) = crossbeam_channel::unbounded::<SchedMsg>();

    // Capture first, so nothing written from now on is missed; the initial
    // sync (a reconciliation) then covers everything before.
    let started = Instant::now();
    let ebpf = match cfg.capture() {
        CaptureChoice::Notify => {
            counters.set_fallback_reason("chosen with --capture notify".to_string());
            None
        }
        choice => match Capture::load(&CaptureOptions { ring_buffer_bytes: cfg.ring_buffer_bytes()? }) {
            Ok(c) => Some(c),
            Err(e) if choice == CaptureChoice::Auto => {
                counters.set_fallback_reason(fallback_reason(&e));
                error!(
                    "eBPF capture is unavailable: {e:#}. FALLING BACK to the inotify watcher: no byte ranges \
                     (whole files are sent), a watch per directory, writes through shared mappings only seen \
                     by the periodic reconciliation. Run the agent as root on a kernel with BTF for eBPF \
                     capture, or pass --capture notify to choose the watcher knowingly."
                );
                None
            }
            Err(e) => return Err(e.context("eBPF capture is unavailable (--capture ebpf)")),
        },
    };
    let mut watcher = None;
    let capture = match ebpf {
        Some(mut capture) => {
            capture.set_watched(&roots)?;
            capture.attach()?;
            controls.set_capture_mode(CaptureMode::Ebpf);
            let reader = capture.take_reader().expect("fresh capture has its reader");
            spawn_reader(reader, &roots, queue_tx.clone(), counters.clone(), reconcile_now.clone())?;
            Some(capture)
        }
        None => {
            watcher =
                Some(fallback::Watcher::start(&roots, queue_tx.clone(), reconcile_now.clone(), counters.clone())?);
            controls.set_capture_mode(CaptureMode::Notify);
            None
        }
    };
    info!(
        "capturing changes under {:?} with {} (ready in {:?})",
        roots,
        controls.capture_mode().as_str(),
        started.elapsed()
    );
    let capture = Arc::new(Mutex::new(capture));

    // Small queues: a batch holds up to 4 MiB of file data, and a big file
    // must not be read into memory faster than the network takes it.
    let (batch_tx, batch_rx) = tokio::sync::mpsc::channel(2);
    {
        let counters = counters.clone();
        let roots = roots.clone();
        // Reconciliation's big files go to the sender as delta jobs (it
        // fetches the signatures). (The environment variable is for
        // measuring the threshold: bench/reconcile.py's workload (c).)
        let delta_min_size = std::env::var("LIFELINE_DELTA_MIN_SIZE")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(scheduler::dispatcher::DELTA_MIN_SIZE);
        let opts = SchedulerOptions {
            interval: cfg.interval(),
            delta_min_size: Some(delta_min_size),
            queue_max_bytes: cfg.queue_max_bytes(),
            reconcile: Some(reconcile_now.clone()),
            controls: controls.clone(),
            ..Default::default()
        };
        std::thread::Builder::new()
            .name("scheduler".into())
            .spawn(move || scheduler::run(queue_rx, batch_tx, counters, roots, opts, queue_log))?;
    }

    let channels = sender::SendChannels { batches: batch_rx, scheduler: queue_tx.clone(), queue_id };
    let history_remote = remote.clone();
    tokio::spawn(sender::run(remote.clone(), channels, counters.clone(), reconcile_now.clone()));
    tokio::spawn(reconcile::run(remote, roots, queue_tx, counters.clone(), reconcile_now.clone()));
    let every = match controls.capture_mode() {
        // The watcher misses more: reconcile often unless told otherwise.
        CaptureMode::Notify if cfg.reconcile_every_s.is_none() => Some(std::time::Duration::from_secs(10)),
        _ => cfg.reconcile_every(),
    };
    if let Some(every) = every {
        let trigger = reconcile_now.clone();
        let controls = controls.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            loop {
                tick.tick().await;
                // Switched off: nothing goes out by itself (`on` catches up).
                if controls.capture_mode() != CaptureMode::Off {
                    trigger.notify_one();
                }
            }
        });
    }
    let control_path: PathBuf = cfg.control();
    let service = ControlService {
        counters,
        controls,
        capture: capture.clone(),
        watcher,
        reconcile: reconcile_now,
        remote: Some(history_remote),
    };
    let control = tokio::spawn(control::serve(control_path.clone(), service));

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => info!("interrupted; stopping"),
        _ = term.recv() => info!("terminated; stopping"),
        r = control => if let Ok(Err(e)) = r { error!("{e:#}") },
    }
    // The kernel detaches the programs when the process ends.
    control::remove_socket(&control_path);
    // Threads and in-flight tasks hold nothing that needs an orderly end; a
    // lingering agent would fight its successor for the receiver stream.
    std::process::exit(0);
}

/// Creates the agent's state directory (its queue log names every changed
/// file) readable by root only, and tightens one an older agent left open.
fn create_private_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create the state directory {}", dir.display()))?;
    let mode = std::fs::metadata(dir)?.permissions().mode();
    if mode & 0o077 != 0 {
        tracing::warn!("the state directory {} was mode {:o}: tightened to 0700", dir.display(), mode & 0o777);
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::fallback_reason;

    #[test]
    fn the_fallback_reason_is_the_verifiers_line_or_the_loaders_first() {
        // As this kernel (6.18) refused it, through aya and anyhow.
        let log = "the BPF_PROG_LOAD syscall returned Permission denied (os error 13). Verifier output: \
                   combined stack size of 3 calls is 576. Too large\nverification time 975991 usec\n\
                   stack depth 192+96+0+288+208\nprocessed 293635 insns (limit 1000000) max_states_per_insn 19 \
                   total_states 6162 peak_states 1405 mark_read 0\n: Permission denied (os error 13)";
        let e = anyhow::anyhow!(log.to_string()).context("the kernel's verifier refused sys_exit");
        assert_eq!(fallback_reason(&e), "eBPF refused: combined stack size of 3 calls is 576. Too large");
        // A full log: instructions and register states before the reason.
        let log = "the BPF_PROG_LOAD syscall returned Argument list too long (os error 7). Verifier output: \
                   func#0 @0\n0: R1=ctx() R10=fp0\n0: (bf) r6 = r1\n; let x = 1 @ main.rs:12\n\
                   back-edge from insn 77 to 12\nverification time 1234 usec\n\
                   stack depth 192+96\nprocessed 4321 insns (limit 1000000) max_states_per_insn 4\n";
        let e = anyhow::anyhow!(log.to_string()).context("the kernel's verifier refused sys_exit");
        assert_eq!(fallback_reason(&e), "eBPF refused: back-edge from insn 77 to 12");
        let e = anyhow::anyhow!("Operation not permitted (os error 1)\nmore").context("loading the eBPF programs");
        assert_eq!(
            fallback_reason(&e),
            "eBPF unavailable: loading the eBPF programs: Operation not permitted (os error 1)"
        );
    }
}
