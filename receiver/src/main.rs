//! `lifeline-receiver`: the receiver daemon (`serve`, the default) and the
//! management of the machines allowed to replicate to it (`machine ...`).

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Parser, Subcommand};
use lifeline_core::credential::Credential;
use lifeline_receiver::db::Db;
use lifeline_receiver::{serve_with, tls, MachineName, Receiver};
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

/// Lifeline's receiver: keeps a live mirror of each machine's watched trees.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Store directory: mirrors (STORE/mirror/MACHINE/), the machine database
    /// (STORE/receiver.db), the TLS identity (STORE/tls/).
    #[arg(long, global = true, env = "LIFELINE_STORE", default_value = "./lifeline-store")]
    store: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(clap::Args, Debug, Clone)]
struct ServeArgs {
    /// Address to listen on for agents (gRPC over TLS).
    #[arg(long, env = "LIFELINE_LISTEN", default_value = "127.0.0.1:7700")]
    listen: String,
    /// More names (DNS names or IP addresses) the generated server
    /// certificate must hold, besides lifeline-receiver, localhost, loopback
    /// and the host name.
    #[arg(long = "tls-name")]
    tls_names: Vec<String>,
    /// Present this certificate (PEM) instead of a generated one.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the receiver (what happens without a command).
    Serve(ServeArgs),
    /// Register, list, re-key and remove machines.
    #[command(subcommand)]
    Machine(MachineCmd),
    /// Show the audit trail (registrations, credential changes, removals).
    Audit {
        /// How many of the latest entries.
        #[arg(long, default_value_t = 50)]
        last: usize,
    },
}

#[derive(Subcommand, Debug)]
enum MachineCmd {
    /// Register a machine and write its credential to OUT/NAME.token (and the
    /// CA its agent must trust to OUT/ca.crt).
    Add {
        name: String,
        /// Where to write the credential (a directory, created if missing).
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// Free text kept with the machine.
        #[arg(long, default_value = "")]
        notes: String,
    },
    /// Give a machine a new credential; the old one stops working at once.
    Reissue {
        name: String,
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
    /// List the registered machines.
    List,
    /// Unregister a machine: its credential stops working; its mirror stays
    /// on disk.
    Remove { name: String },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The daemon logs what it does; the management commands only what goes wrong.
    let level = if matches!(cli.command, None | Some(Command::Serve(_))) { "info" } else { "warn" };
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level)))
        .init();
    match cli.command {
        None => serve(&cli.store, cli.serve),
        Some(Command::Serve(args)) => serve(&cli.store, args),
        Some(Command::Machine(cmd)) => machine(&cli.store, cmd),
        Some(Command::Audit { last }) => {
            let db = Db::open(&cli.store)?;
            for a in db.audit_trail(last)? {
                println!("{}  {:<20} {:<12} {}", a.at, a.event, a.machine.unwrap_or_default(), a.detail);
            }
            Ok(())
        }
    }
}

fn machine(store: &Path, cmd: MachineCmd) -> anyhow::Result<()> {
    std::fs::create_dir_all(store).with_context(|| format!("cannot create the store {}", store.display()))?;
    let mut db = Db::open(store)?;
    match cmd {
        MachineCmd::Add { name, out, notes } => {
            let name = MachineName::new(&name).map_err(anyhow::Error::msg)?;
            let cred = Credential::generate(name.as_str());
            db.add_machine(&name, &cred.secret_hash(), &notes)?;
            hand_out(store, &cred, &out, "registered")
        }
        MachineCmd::Reissue { name, out } => {
            let name = MachineName::new(&name).map_err(anyhow::Error::msg)?;
            let cred = Credential::generate(name.as_str());
            db.reissue(&name, &cred.secret_hash())?;
            hand_out(store, &cred, &out, "has a new credential")
        }
        MachineCmd::List => {
            let machines = db.machines()?;
            if machines.is_empty() {
                println!("no machines registered (`lifeline-receiver machine add NAME` registers one)");
            }
            for m in machines {
                println!("{:<24} registered {}  {}", m.name, m.created_at, m.notes);
            }
            Ok(())
        }
        MachineCmd::Remove { name } => {
            let name = MachineName::new(&name).map_err(anyhow::Error::msg)?;
            db.remove_machine(&name)?;
            println!("machine {name} removed; its mirror stays in {}", store.join("mirror").join(name.as_str()).display());
            Ok(())
        }
    }
}

/// Writes the credential (readable by root only) and the CA, and says how to
/// start the agent with them.
fn hand_out(store: &Path, cred: &Credential, out: &Path, what: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let token_path = out.join(format!("{}.token", cred.machine()));
    tls::write_private(&token_path, &format!("{}\n", cred.token()))?;
    let identity = tls::load_or_create(store, &[])?;
    let ca_out = out.join("ca.crt");
    if let Some(ca) = identity.ca_path {
        if std::fs::canonicalize(&ca).ok() != std::fs::canonicalize(&ca_out).ok() {
            std::fs::copy(&ca, &ca_out).with_context(|| format!("cannot write {}", ca_out.display()))?;
        }
    }
    println!("machine {} {what}", cred.machine());
    println!("  credential: {}  (secret: copy it to the machine, readable by root only)", token_path.display());
    println!("  receiver CA: {}", ca_out.display());
    println!(
        "  on the machine: lifeline-agent run --receiver https://THIS-HOST:7700 --token-file {} --ca {} --watch DIR",
        token_path.display(),
        ca_out.display()
    );
    Ok(())
}

fn serve(store: &Path, args: ServeArgs) -> anyhow::Result<()> {
    raise_fd_limit();
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let receiver = Receiver::new(store).with_context(|| format!("store {}", store.display()))?;
        let identity = match (&args.tls_cert, &args.tls_key) {
            (Some(c), Some(k)) => tls::load(c, k)?,
            _ => tls::load_or_create(receiver.store(), &args.tls_names)?,
        };
        let listener = TcpListener::bind(&args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        println!(
            "lifeline-receiver listening on {} (TLS), store {}{}",
            listener.local_addr()?,
            receiver.store().display(),
            identity.ca_path.as_ref().map(|p| format!(", agents trust {}", p.display())).unwrap_or_default()
        );
        serve_with(listener, receiver, Some(identity.server_config()), shutdown_signal()).await
    })
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
