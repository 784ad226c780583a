//! The agent's configuration: a TOML file, overridden by command-line flags.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum CaptureChoice {
    Auto,
    Ebpf,
    Notify,
}

/// Everything `lifeline-agent run` needs. Every field can come from the config
/// file (same names, with `_`) or a flag (with `-`); flags win.
#[derive(Clone, Debug, Default, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Receiver address, e.g. `https://backup-host:7700`.
    #[arg(long)]
    pub receiver: Option<String>,
    /// File holding this machine's credential (`lifeline-receiver machine add
    /// NAME` writes it). It names the machine.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// The receiver's CA certificate (`ca.crt`, written beside the credential).
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Name the receiver's certificate must carry (default `lifeline-receiver`,
    /// which the receiver's own certificates always do).
    #[arg(long)]
    pub tls_name: Option<String>,
    /// This machine's name (default: the one in the credential; if given, it
    /// must be the same).
    #[arg(long)]
    pub machine: Option<String>,
    /// A directory to replicate (repeat for several).
    #[serde(default)]
    #[arg(long = "watch")]
    pub watch: Vec<PathBuf>,
    /// Where the agent keeps its state: the queue log, the control socket
    /// (default /var/lib/lifeline-agent).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Coalescing interval in milliseconds (default 5).
    #[arg(long)]
    pub interval_ms: Option<u64>,
    /// Control socket path (default: `<state_dir>/control.sock`).
    #[arg(long)]
    pub control: Option<PathBuf>,
    /// Kernel ring buffer size in MiB (default 16).
    #[arg(long)]
    pub ring_buffer_mib: Option<u32>,
    /// How to capture changes: `auto` (eBPF, else the inotify watcher, loudly),
    /// `ebpf` (fail without it), `notify` (the watcher).
    #[arg(long, value_enum)]
    pub capture: Option<CaptureChoice>,
    /// Reconcile with the receiver every this many seconds (0: never), to
    /// catch what no event reports (writes through shared mmap, changes made
    /// while the agent was not running are caught at start anyway).
    #[arg(long)]
    pub reconcile_every_s: Option<u64>,
    /// CPU priority of the agent's threads (nice value, default 10): the
    /// agent yields the CPU to the applications whose files it protects, and
    /// catches up when they leave it idle.
    #[arg(long, allow_hyphen_values = true)]
    pub nice: Option<i32>,
    /// Largest size of the queue log in MiB (default 1024). While the
    /// receiver is unreachable the log grows with every change; past this it
    /// is dropped, and the reconciliation that follows the next connection
    /// finds what it held (as whole files or deltas, not ranges).
    #[arg(long)]
    pub queue_max_mib: Option<u64>,
}

impl AgentConfig {
    pub fn load(path: &std::path::Path) -> anyhow::Result<AgentConfig> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read config file {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))
    }

    /// Values from `other` win where set.
    pub fn merge(mut self, other: AgentConfig) -> AgentConfig {
        macro_rules! take {
            ($($f:ident),*) => { $( if other.$f.is_some() { self.$f = other.$f; } )* };
        }
        take!(
            receiver,
            token_file,
            ca,
            tls_name,
            machine,
            state_dir,
            interval_ms,
            control,
            ring_buffer_mib,
            capture,
            reconcile_every_s,
            nice,
            queue_max_mib
        );
        if !other.watch.is_empty() {
            self.watch = other.watch;
        }
        self
    }

    pub fn receiver(&self) -> String {
        self.receiver.clone().unwrap_or_else(|| "https://127.0.0.1:7700".into())
    }

    pub fn state_dir(&self) -> PathBuf {
        self.state_dir.clone().unwrap_or_else(|| PathBuf::from("/var/lib/lifeline-agent"))
    }

    pub fn control(&self) -> PathBuf {
        self.control.clone().unwrap_or_else(|| self.state_dir().join("control.sock"))
    }

    pub fn capture(&self) -> CaptureChoice {
        self.capture.unwrap_or(CaptureChoice::Auto)
    }

    /// Default: every 10 minutes.
    pub fn reconcile_every(&self) -> Option<Duration> {
        match self.reconcile_every_s.unwrap_or(600) {
            0 => None,
            s => Some(Duration::from_secs(s)),
        }
    }

    pub fn nice(&self) -> i32 {
        self.nice.unwrap_or(10)
    }

    /// The kernel ring buffer's size: a power of two from 1 to 1024 MiB
    /// (the kernel wants a power-of-two number of pages).
    pub fn ring_buffer_bytes(&self) -> anyhow::Result<u32> {
        let mib = self.ring_buffer_mib.unwrap_or(16);
        if !(1..=1024).contains(&mib) || !mib.is_power_of_two() {
            anyhow::bail!("--ring-buffer-mib {mib}: give a power of two from 1 to 1024 (default 16)");
        }
        Ok(mib << 20)
    }

    pub fn queue_max_bytes(&self) -> u64 {
        self.queue_max_mib.unwrap_or(1024) << 20
    }

    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms.unwrap_or(5))
    }
}
