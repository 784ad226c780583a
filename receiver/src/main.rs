//! `lifeline-receiver --listen ADDR --store DIR`: the receiver daemon.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use lifeline_receiver::{serve_with, Receiver};
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

/// Lifeline's receiver: keeps a live mirror of each machine's watched trees.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Address to listen on for agents (gRPC).
    #[arg(long, env = "LIFELINE_LISTEN", default_value = "127.0.0.1:7700")]
    listen: String,
    /// Store directory; machine M's mirror is STORE/mirror/M/.
    #[arg(long, env = "LIFELINE_STORE", default_value = "./lifeline-store")]
    store: PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    raise_fd_limit();
    let receiver =
        Receiver::new(&args.store).with_context(|| format!("store {}", args.store.display()))?;
    let listener = TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    println!(
        "lifeline-receiver listening on {}, store {}",
        listener.local_addr()?,
        receiver.store().display()
    );
    serve_with(listener, receiver, shutdown_signal()).await
}

/// Every stream keeps a few directories open: allow as many fds as we may.
fn raise_fd_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut lim = getrlimit(Resource::Nofile);
    if lim.current < lim.maximum {
        lim.current = lim.maximum;
        let _ = setrlimit(Resource::Nofile, lim);
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("cannot watch SIGTERM: {e}");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
