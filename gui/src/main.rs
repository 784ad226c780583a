//! `lifeline-gui`: the desktop face of the agent. By default a tray icon
//! (StatusNotifierItem) whose menu switches automatic backup, pauses, syncs
//! and opens the status window; `--window` opens only the status window.
//! It talks only to the agent's control socket and never needs root.

mod control;
mod state;
mod tray;
mod window;

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

#[derive(Parser)]
#[command(name = "lifeline-gui", version, about = "Lifeline's tray icon and status window")]
struct Cli {
    /// The agent's control socket (its group decides who may use it).
    #[arg(long, env = "LIFELINE_CONTROL", default_value = "/var/lib/lifeline-agent/control.sock")]
    control: PathBuf,
    /// Open the status window only (no tray icon).
    #[arg(long)]
    window: bool,
    /// How often the agent's status is read.
    #[arg(long, default_value_t = 1000)]
    poll_ms: u64,
}

fn main() {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let poll = Duration::from_millis(cli.poll_ms.max(100));
    let result = if cli.window {
        window::run(&cli.control, poll)
    } else {
        // One thread is plenty: a D-Bus service and a poll a second.
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(tray::run(&cli.control, poll)))
    };
    if let Err(e) = result {
        eprintln!("lifeline-gui: {e:#}");
        std::process::exit(1);
    }
}
