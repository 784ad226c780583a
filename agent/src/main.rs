//! `lifeline-agent`: the always-on replication daemon and its control CLI.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use lifeline_agent::config::AgentConfig;
use lifeline_proto::control::v1::{AgentStatus, SetCaptureRequest, SetPausedRequest, StatusRequest, SyncRequest};
use lifeline_proto::control_client as control;

#[derive(Parser)]
#[command(name = "lifeline-agent", version, about = "Lifeline's real-time replication agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Default)]
struct ControlArgs {
    /// The agent's control socket.
    #[arg(long, env = "LIFELINE_CONTROL", default_value = "/var/lib/lifeline-agent/control.sock")]
    control: PathBuf,
}

// `Run` carries the whole configuration; the enum is parsed once.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run the daemon: capture changes under the watched directories and
    /// replicate them to the receiver.
    Run {
        /// TOML config file (flags override it).
        #[arg(long, env = "LIFELINE_CONFIG")]
        config: Option<PathBuf>,
        #[command(flatten)]
        flags: AgentConfig,
    },
    /// Show the agent's state: connection, lag, queue depth, bytes sent, last error.
    Status {
        #[command(flatten)]
        ctl: ControlArgs,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Switch automatic backup on: attach the eBPF programs (or watch the
    /// trees again on the inotify fallback) and catch up.
    On {
        #[command(flatten)]
        ctl: ControlArgs,
    },
    /// Switch automatic backup off: detach the eBPF programs (or drop the
    /// inotify watches).
    Off {
        #[command(flatten)]
        ctl: ControlArgs,
    },
    /// Reconcile the watched directories with the receiver now.
    Sync {
        #[command(flatten)]
        ctl: ControlArgs,
    },
    /// Pause sending: changes are still captured and queued, nothing is sent.
    Pause {
        #[command(flatten)]
        ctl: ControlArgs,
    },
    /// Resume sending what queued up while paused.
    Resume {
        #[command(flatten)]
        ctl: ControlArgs,
    },
    /// This machine's history on the receiver: the versions of PATH; with
    /// --as-of, PATH (a file or a tree) as it was then, written next to the
    /// live one as PATH.lifeline-<local time> (never over anything; --to DIR
    /// writes DIR/<name>, --overwrite replaces the live PATH); with
    /// --deleted, what was removed recently.
    History {
        /// TOML config file, the daemon's (flags override it): the receiver
        /// and the machine's credential.
        #[arg(long, env = "LIFELINE_CONFIG")]
        config: Option<PathBuf>,
        #[command(flatten)]
        flags: AgentConfig,
        /// The file or directory (as on this machine).
        #[arg(required_unless_present = "deleted")]
        path: Option<PathBuf>,
        /// Restore PATH as of this instant: ISO 8601 (2026-12-07T10:15:30Z,
        /// or with an offset; without one, UTC) or a time ago (-10m, -2h, -1d).
        #[arg(long, allow_hyphen_values = true)]
        as_of: Option<String>,
        /// Write the restore into this directory (as DIR/<name>) instead of
        /// next to PATH.
        #[arg(long, requires = "as_of")]
        to: Option<PathBuf>,
        /// Replace what is at the destination (the live PATH without
        /// --to): the restore is built beside it and exchanged in one
        /// rename.
        #[arg(long, requires = "as_of")]
        overwrite: bool,
        /// List the paths removed recently that the receiver no longer has.
        #[arg(long, conflicts_with_all = ["path", "as_of"])]
        deleted: bool,
        /// With --deleted: since when (default: a week ago).
        #[arg(long, allow_hyphen_values = true, default_value = "-7d", requires = "deleted")]
        since: String,
    },
    /// Check in about a second that eBPF capture works on this machine: the
    /// kernel's verifier figures for the programs, then a write by another
    /// process under DIR must come back with its exact byte range. Exits
    /// non-zero with the reason (the verifier's message) if not.
    CheckCapture {
        /// A directory on the filesystem to check (a temporary file is
        /// written there and removed).
        #[arg(long, default_value = "/var/tmp")]
        dir: PathBuf,
    },
}

/// `check-capture`: runs before any other thread exists (the check forks).
fn check_capture(dir: &std::path::Path) -> ! {
    match lifeline_capture::selfcheck::run(dir) {
        Ok(c) => {
            for r in &c.verifier {
                println!("verifier: {r}");
            }
            println!(
                "capture: ebpf ok: write {} offset {} len {} (seen after {:.1} ms)",
                c.path.display(),
                c.offset,
                c.len,
                c.latency.as_secs_f64() * 1000.0
            );
            std::process::exit(0)
        }
        Err(e) => {
            println!("capture: ebpf FAILED: {e:#}");
            eprintln!(
                "lifeline-agent: eBPF capture does not work on this machine; the agent would fall back \
                 to inotify (no byte ranges). The line above says why; the agent needs root and a kernel with BTF."
            );
            std::process::exit(1)
        }
    }
}

fn print_status(s: &AgentStatus, json: bool) {
    if json {
        let v = serde_json::json!({
            "connected": s.connected,
            "capture": s.capture,
            "queue_depth": s.queue_depth,
            "lag_ms": s.lag_ms,
            "bytes_sent": s.bytes_sent,
            "ops_sent": s.ops_sent,
            "acked_seq": s.acked_seq,
            "last_error": if s.last_error.is_empty() { None } else { Some(&s.last_error) },
            "initial_sync_done": s.initial_sync_done,
            "receiver": s.receiver,
            "machine": s.machine,
            "watched": s.watched,
            "kernel_events": s.kernel_events,
            "kernel_lost": s.kernel_lost,
            "reconciliations": s.reconciliations,
            "queue_log_bytes": s.queue_log_bytes,
            "unacked_changes": s.unacked_changes,
            "replays": s.replays,
            "deltas": s.deltas,
            "signature_bytes": s.signature_bytes,
            "delta_fallbacks": s.delta_fallbacks,
            "paused": s.paused,
            "bytes_sent_today": s.bytes_sent_today,
            "fallback_reason": if s.fallback_reason.is_empty() { None } else { Some(&s.fallback_reason) },
            "alarm": if s.alarm.is_empty() { None } else { Some(&s.alarm) },
            "recent_files": s
                .recent_files
                .iter()
                .map(|f| serde_json::json!({ "path": f.path, "unix_ms": f.unix_ms }))
                .collect::<Vec<_>>(),
        });
        println!("{v}");
        return;
    }
    if !s.alarm.is_empty() {
        println!("{}", s.alarm);
    }
    println!("machine:      {}", s.machine);
    println!("receiver:     {} ({})", s.receiver, if s.connected { "connected" } else { "NOT connected" });
    println!("capture:      {}{}", capture_line(s), if s.paused { " (sending paused)" } else { "" });
    println!("watched:      {}", s.watched.join(", "));
    println!("initial sync: {}", if s.initial_sync_done { "done" } else { "in progress" });
    println!("queue depth:  {}", s.queue_depth);
    println!(
        "queue log:    {} changes unacknowledged, {} bytes on disk, replayed {} times",
        s.unacked_changes, s.queue_log_bytes, s.replays
    );
    println!("lag:          {} ms", s.lag_ms);
    println!("sent:         {} ops, {} bytes ({} bytes today)", s.ops_sent, s.bytes_sent, s.bytes_sent_today);
    println!(
        "deltas:       {} files, {} signature bytes received, {} fell back to whole files",
        s.deltas, s.signature_bytes, s.delta_fallbacks
    );
    println!("kernel:       {} events, {} lost", s.kernel_events, s.kernel_lost);
    println!("last error:   {}", if s.last_error.is_empty() { "none" } else { &s.last_error });
}

/// The capture mode, and after a fallback, why and what it costs.
fn capture_line(s: &AgentStatus) -> String {
    match (s.capture.as_str(), s.fallback_reason.is_empty()) {
        (_, true) => s.capture.clone(),
        ("notify", false) => format!("notify (DEGRADED: inotify fallback, no byte ranges; {})", s.fallback_reason),
        (mode, false) => format!("{mode} (on the inotify fallback: {})", s.fallback_reason),
    }
}

fn main() {
    // File data moves through 1-4 MiB buffers. glibc would raise its mmap
    // threshold after the first one is freed and keep later ones in per-thread
    // arenas, so the agent's memory would stay at its peak; a fixed threshold
    // returns them to the system at once. musl (the static agent of the
    // boot OS) has no mallopt and needs none: its allocator has no arenas
    // and serves large blocks with mmap, unmapped when freed.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
    let cli = Cli::parse();
    if let Command::CheckCapture { dir } = &cli.command {
        check_capture(dir);
    }
    // Before any thread exists: threads inherit the priority it sets.
    let cfg = match &cli.command {
        Command::Run { config, flags } => {
            let flags = flags.clone();
            let cfg = match config {
                Some(path) => AgentConfig::load(path).map(|c| c.merge(flags)),
                None => Ok(flags),
            };
            match cfg {
                Ok(c) => {
                    lifeline_agent::daemon::set_priority(c.nice());
                    Some(c)
                }
                Err(e) => {
                    eprintln!("lifeline-agent: {e:#}");
                    std::process::exit(1);
                }
            }
        }
        _ => None,
    };
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    rt.block_on(async_main(cli, cfg));
}

async fn async_main(cli: Cli, cfg: Option<AgentConfig>) {
    let result = match cli.command {
        Command::Run { .. } => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
                )
                .init();
            lifeline_agent::daemon::run(cfg.expect("parsed above")).await
        }
        Command::Status { ctl, json } => {
            async {
                let s = control::client(&ctl.control).await?.status(StatusRequest {}).await?.into_inner();
                print_status(&s, json);
                Ok(())
            }
            .await
        }
        Command::On { ctl } => set(&ctl, true).await,
        Command::Off { ctl } => set(&ctl, false).await,
        Command::Pause { ctl } => pause(&ctl, true).await,
        Command::Resume { ctl } => pause(&ctl, false).await,
        Command::CheckCapture { .. } => unreachable!("handled before the runtime starts"),
        Command::History { config, flags, path, as_of, to, overwrite, deleted, since } => {
            // Progress of big restores goes to stderr.
            tracing_subscriber::fmt().with_writer(std::io::stderr).with_target(false).init();
            let cfg = match config {
                Some(c) => AgentConfig::load(&c).map(|c| c.merge(flags)),
                None => Ok(flags),
            };
            match cfg {
                Ok(cfg) => history(&cfg, HistoryArgs { path, as_of, to, overwrite, deleted, since }).await,
                Err(e) => Err(e),
            }
        }
        Command::Sync { ctl } => {
            async {
                let s = control::client(&ctl.control).await?.sync(SyncRequest {}).await?.into_inner();
                print_status(&s, false);
                Ok(())
            }
            .await
        }
    };
    if let Err(e) = result {
        eprintln!("lifeline-agent: {e:#}");
        std::process::exit(1);
    }
}

async fn set(ctl: &ControlArgs, enabled: bool) -> anyhow::Result<()> {
    let s = control::client(&ctl.control)
        .await?
        .set_capture(SetCaptureRequest { enabled })
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.message()))?
        .into_inner();
    println!("automatic backup is {}", if s.capture == "off" { "off" } else { "on" });
    Ok(())
}

async fn pause(ctl: &ControlArgs, paused: bool) -> anyhow::Result<()> {
    let s = control::client(&ctl.control)
        .await?
        .set_paused(SetPausedRequest { paused })
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.message()))?
        .into_inner();
    println!("sending is {}", if s.paused { "paused (changes are still captured and queued)" } else { "on" });
    Ok(())
}

/// `history`'s arguments.
struct HistoryArgs {
    path: Option<PathBuf>,
    as_of: Option<String>,
    to: Option<PathBuf>,
    overwrite: bool,
    deleted: bool,
    since: String,
}

/// `lifeline-agent history ...`.
async fn history(cfg: &AgentConfig, args: HistoryArgs) -> anyhow::Result<()> {
    use lifeline_agent::history::{self, local_time, Target};
    use lifeline_history::{instant, Clock, SystemClock};
    let remote = lifeline_agent::remote::Remote::from_config(cfg)?;
    let now = SystemClock.now_ns();
    if args.deleted {
        let since = instant::parse(&args.since, now).map_err(anyhow::Error::msg)?;
        let (found, more) = history::deletions(&remote, since, 0).await?;
        for d in &found {
            println!("{}  {}", local_time(d.time_ns, false), lifeline_core::wirepath::to_local(&d.path).display());
        }
        if found.is_empty() {
            println!("nothing removed since {}", local_time(since, false));
        } else if more {
            println!("(more: give a later --since)");
        }
        return Ok(());
    }
    let path = args.path.expect("clap requires PATH without --deleted");
    let Some(as_of) = args.as_of else {
        let (versions, truncated, now) = history::versions(&remote, &path).await?;
        if truncated {
            println!("(older versions left out)");
        }
        for v in &versions {
            println!("{}  op {:<8} {}", local_time(v.time_ns, false), v.seq, v.what);
        }
        if versions.is_empty() {
            println!("(no change kept for {})", path.display());
        }
        println!("now: {now}");
        return Ok(());
    };
    let at = instant::parse(&as_of, now).map_err(anyhow::Error::msg)?;
    let target = match (&args.to, args.overwrite) {
        (Some(dir), overwrite) => {
            let name = path.file_name().ok_or_else(|| anyhow::anyhow!("{} names no file", path.display()))?;
            Target { dest: dir.join(name), overwrite }
        }
        (None, true) => Target { dest: path.clone(), overwrite: true },
        (None, false) => Target::beside(&path, &local_time(at, true))?,
    };
    let started = std::time::Instant::now();
    let w = history::restore(&remote, &path, at, &target).await?;
    println!(
        "restored {} as of {} to {}: {} entries, {} bytes in {:.1?}",
        path.display(),
        local_time(at, false),
        target.dest.display(),
        w.entries,
        w.bytes,
        started.elapsed()
    );
    Ok(())
}
