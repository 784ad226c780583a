//! `lifeline-receiver`: the receiver daemon (`serve`, the default) and the
//! management of the machines allowed to replicate to it (`machine ...`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};

mod customers;
use lifeline_boot_server::bootmedia;
use lifeline_boot_server::netboot::HttpLimits;
use lifeline_boot_server::tftp::TftpLimits;
use std::os::unix::ffi::OsStrExt;

use lifeline_core::credential::Credential;
use lifeline_core::credential::MachineName;
use lifeline_receiver::{serve_with, tls, Limits, Receiver, TokenAuthenticator};
use lifeline_store::db::boot::{normalize_mac, BootMedia};
use lifeline_store::db::quota::{describe, Limits as QuotaLimits};
use lifeline_store::private::write_private;
use lifeline_store::{Db, Quotas, StoreLayout};
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
    /// Also serve network boot (iPXE scripts, kernels and initrds of boot
    /// media, plain HTTP) on this address, e.g. 0.0.0.0:8080. Machines
    /// chain http://ADDR/boot.ipxe.
    #[arg(long, env = "LIFELINE_HTTP_LISTEN")]
    http_listen: Option<String>,
    /// Also serve the web console (HTTPS, with the receiver's certificate)
    /// on this address, e.g. 0.0.0.0:7443. On a store with no console user
    /// yet, the first provider admin is made and its password printed.
    #[arg(long, env = "LIFELINE_CONSOLE_LISTEN")]
    console_listen: Option<String>,
    /// The static lifeline-image the console puts into the boot media its
    /// users ask for (scripts/test.sh builds it in
    /// target/lifeline-bootos-agent/); without it the console makes none.
    #[arg(long, env = "LIFELINE_BOOTOS_AGENT")]
    bootos_agent: Option<PathBuf>,
    /// How booted machines reach this receiver, for the boot media the
    /// console makes (https://backup.example.net:7700).
    #[arg(long, env = "LIFELINE_PUBLIC_URL")]
    public_url: Option<String>,
    /// Mail the console's notices (boot media made) to customers through
    /// this SMTP server: smtp://HOST:PORT (plain), smtp://HOST:587?tls=required
    /// or smtps://HOST:465, with USER:PASSWORD@ before HOST if it asks.
    #[arg(long, env = "LIFELINE_SMTP_URL")]
    smtp_url: Option<String>,
    /// The sender of the console's mail.
    #[arg(long, default_value = "lifeline@localhost")]
    smtp_from: String,
    /// The console's address as customers reach it, for links in mail
    /// (https://backup.example.net:7443).
    #[arg(long)]
    console_url: Option<String>,
    /// Anyone reaching the console may sign up as a new customer (its
    /// first administrator chooses a password); otherwise customers are
    /// added by the provider (`customer add`, or the console).
    #[arg(long, env = "LIFELINE_CONSOLE_SIGNUP")]
    console_signup: bool,
    /// Most console connections open at once...
    #[arg(long, default_value_t = lifeline_console::Limits::default().max_connections)]
    console_max_connections: usize,
    /// ... and from one IP address.
    #[arg(long, default_value_t = lifeline_console::Limits::default().max_connections_per_ip)]
    console_max_connections_per_ip: usize,
    /// Also serve the iPXE binaries over TFTP on this address (0.0.0.0:69),
    /// for PXE firmware that must chain-load iPXE first.
    #[arg(long, env = "LIFELINE_TFTP_LISTEN")]
    tftp_listen: Option<String>,
    /// Where the files served over TFTP are (Debian's ipxe package).
    #[arg(long, default_value = "/usr/lib/ipxe")]
    tftp_root: PathBuf,
    /// Free space the store's filesystem keeps whatever the quotas: writes
    /// that would leave less are refused (RESOURCE_EXHAUSTED) and wait on
    /// their machines. 0: no reserve.
    #[arg(long, default_value = "1G", value_parser = lifeline_store::quota::parse_bytes)]
    reserve_free: u64,
    /// Keep no history (what a machine's changes replace is lost): only
    /// to measure what keeping it costs.
    #[arg(long)]
    without_history: bool,
    /// How often every machine's history is thinned as its retention says
    /// (`machine set-history`).
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    history_retention_every: u64,
    /// Most gRPC connections open at once; more are closed on accept.
    #[arg(long, default_value_t = Limits::default().max_connections)]
    max_connections: usize,
    /// Most gRPC connections open at once from one IP address.
    #[arg(long, default_value_t = Limits::default().max_connections_per_ip)]
    max_connections_per_ip: usize,
    /// Most concurrent calls (HTTP/2 streams) on one gRPC connection.
    #[arg(long, default_value_t = Limits::default().max_streams)]
    max_streams: u32,
    /// Seconds a new gRPC connection has to make its first authenticated
    /// call (TLS handshake and headers included).
    #[arg(long, default_value_t = Limits::default().handshake_timeout.as_secs())]
    handshake_timeout_s: u64,
    /// Seconds a gRPC connection may stay open with no call in flight.
    #[arg(long, default_value_t = Limits::default().idle_timeout.as_secs())]
    idle_timeout_s: u64,
    /// Calls carrying data (replication streams, pack uploads, manifests)
    /// one machine may have in flight at once; more are refused
    /// (RESOURCE_EXHAUSTED) until one ends.
    #[arg(long, default_value_t = Limits::default().max_data_calls_per_machine)]
    max_data_calls_per_machine: usize,
    /// Network boot: scripts by MAC address (/ipxe/MAC) one IP address (an
    /// IPv6 /64) may ask for at once...
    #[arg(long, default_value_t = HttpLimits::default().script_burst)]
    http_script_burst: u32,
    /// ... and per minute after that.
    #[arg(long, default_value_t = HttpLimits::default().scripts_per_s * 60.0)]
    http_scripts_per_min: f64,
    /// Network boot: scripts by MAC address all addresses together may ask
    /// for at once...
    #[arg(long, default_value_t = HttpLimits::default().scripts_total_burst)]
    http_scripts_total_burst: u32,
    /// ... and per minute after that.
    #[arg(long, default_value_t = HttpLimits::default().scripts_total_per_s * 60.0)]
    http_scripts_total_per_min: f64,
    /// Most TFTP transfers in flight.
    #[arg(long, default_value_t = TftpLimits::default().max_transfers)]
    tftp_max_transfers: usize,
    /// Most TFTP transfers in flight to one IP address.
    #[arg(long, default_value_t = TftpLimits::default().max_transfers_per_ip)]
    tftp_max_transfers_per_ip: usize,
    /// TFTP requests one IP address may make at once...
    #[arg(long, default_value_t = TftpLimits::default().burst)]
    tftp_burst: u32,
    /// ... and per second after that.
    #[arg(long, default_value_t = TftpLimits::default().per_second)]
    tftp_requests_per_s: f64,
}

impl ServeArgs {
    fn limits(&self) -> Limits {
        Limits {
            max_connections: self.max_connections,
            max_connections_per_ip: self.max_connections_per_ip,
            max_streams: self.max_streams,
            handshake_timeout: std::time::Duration::from_secs(self.handshake_timeout_s),
            idle_timeout: std::time::Duration::from_secs(self.idle_timeout_s),
            max_data_calls_per_machine: self.max_data_calls_per_machine,
        }
    }

    fn http_limits(&self) -> HttpLimits {
        HttpLimits {
            script_burst: self.http_script_burst,
            scripts_per_s: self.http_scripts_per_min / 60.0,
            scripts_total_burst: self.http_scripts_total_burst,
            scripts_total_per_s: self.http_scripts_total_per_min / 60.0,
            ..HttpLimits::default()
        }
    }

    fn tftp_limits(&self) -> TftpLimits {
        TftpLimits {
            max_transfers: self.tftp_max_transfers,
            max_transfers_per_ip: self.tftp_max_transfers_per_ip,
            burst: self.tftp_burst,
            per_second: self.tftp_requests_per_s,
        }
    }
}

/// A machine's quota on the command line.
#[derive(clap::Args, Debug, Clone)]
struct QuotaArgs {
    /// Bytes its mirror and image repository may allocate together (50G,
    /// 500M, ...; "none": no limit).
    #[arg(long = "quota-bytes", value_parser = limit_of(lifeline_store::quota::parse_bytes))]
    bytes: Option<Limit>,
    /// Entries (files, directories, links) its mirror may hold (2M, 500K,
    /// ...; "none": no limit).
    #[arg(long = "quota-files", value_parser = limit_of(lifeline_store::quota::parse_count))]
    files: Option<Limit>,
}

/// A limit given on the command line; `None`: "none", no limit.
#[derive(Debug, Clone, Copy)]
struct Limit(Option<u64>);

/// "none" or what `parse` reads.
fn limit_of(parse: fn(&str) -> Result<u64, String>) -> impl Fn(&str) -> Result<Limit, String> + Clone {
    move |s| if s == "none" { Ok(Limit(None)) } else { parse(s).map(|n| Limit(Some(n))) }
}

impl QuotaArgs {
    /// `current` with what was given on the command line changed.
    fn apply(&self, current: QuotaLimits) -> QuotaLimits {
        QuotaLimits {
            bytes: self.bytes.map_or(current.bytes, |l| l.0),
            files: self.files.map_or(current.files, |l| l.0),
        }
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the receiver (what happens without a command).
    Serve(ServeArgs),
    /// Register, list, re-key and remove machines.
    #[command(subcommand)]
    Machine(MachineCmd),
    /// The provider's customers: each signs in to the console and sees
    /// only its own machines.
    #[command(subcommand)]
    Customer(customers::CustomerCmd),
    /// Boot media: a boot OS made for one machine (kernel, initramfs with
    /// the agent, kernel command line with a one-time token).
    #[command(subcommand)]
    Bootos(BootosCmd),
    /// Imaging jobs (backups and restores) machines reported, newest last.
    Jobs {
        #[arg(long)]
        machine: Option<String>,
        #[arg(long, default_value_t = 50)]
        last: usize,
    },
    /// Disk images the receiver holds, as their backups reported them.
    Images {
        #[arg(long)]
        machine: Option<String>,
    },
    /// A machine's files as they were at any instant: every change the
    /// receiver applied is kept (docs/history.md).
    #[command(subcommand)]
    History(HistoryCmd),
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
        /// The MAC address it network-boots from.
        #[arg(long)]
        mac: Option<String>,
        #[command(flatten)]
        quota: QuotaArgs,
    },
    /// Set how much of the store a machine may fill (takes effect within
    /// seconds, on a running receiver too).
    SetQuota {
        name: String,
        #[command(flatten)]
        quota: QuotaArgs,
    },
    /// Set how long a machine's history is kept (docs/history.md,
    /// "Retention"); what is not given stays as it is.
    SetHistory {
        name: String,
        /// Every change is kept this long (default 24h).
        #[arg(long)]
        keep_all: Option<String>,
        /// Then one point per EVERY until UNTIL old, per tier; older is
        /// dropped (default 1m:7d,1h:30d,1d:365d; "" drops after --keep-all).
        #[arg(long)]
        thin: Option<String>,
        /// History bigger than this drops its oldest records (a warning past
        /// 90 %), e.g. 50G.
        #[arg(long, conflicts_with = "no_max_size")]
        max_size: Option<String>,
        /// No size bound.
        #[arg(long)]
        no_max_size: bool,
    },
    /// Set (or with no MAC, forget) the MAC address a machine network-boots from.
    SetMac { name: String, mac: Option<String> },
    /// Show a machine: its MAC address and boot media.
    Show { name: String },
    /// Give a machine a new credential; the old one stops working at once.
    Reissue {
        name: String,
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
    /// List the registered machines.
    List,
    /// Unregister a machine: its credential stops working; its mirror and
    /// images are moved aside to STORE/removed/ (kept, served to nobody), so
    /// that a new machine of the same name starts empty.
    Remove { name: String },
}

#[derive(Subcommand, Debug)]
enum HistoryCmd {
    /// The changes kept for a path (as on the machine: /srv/data/f), oldest
    /// first, with the receiver's time of each.
    List {
        #[arg(long)]
        machine: String,
        path: PathBuf,
    },
    /// Write a file or tree as it was at an instant under DIR, with its
    /// path kept (DIR/srv/data/...); never over anything that exists.
    Restore {
        #[arg(long)]
        machine: String,
        /// ISO 8601 (2026-12-07T10:15:30.25Z; no offset: UTC), "now", or a
        /// time ago (-10m, -1h30m, -2d).
        #[arg(long = "as-of", allow_hyphen_values = true)]
        as_of: String,
        /// The file or directory, as on the machine (/srv/data); `/`: the
        /// machine's whole tree.
        #[arg(long)]
        path: PathBuf,
        /// Where to write it.
        #[arg(long)]
        to: PathBuf,
    },
    /// What changed between two instants: each path added (+), removed
    /// (-) or changed (~), below --path if given.
    Diff {
        #[arg(long)]
        machine: String,
        /// The first instant (as for restore --as-of).
        #[arg(allow_hyphen_values = true)]
        from: String,
        /// The second instant (default: now).
        #[arg(allow_hyphen_values = true, default_value = "now")]
        until: String,
        /// Only below this path (as on the machine).
        #[arg(long)]
        path: Option<PathBuf>,
    },
    /// What a machine's history keeps: its retention, size, the oldest
    /// instant it can restore, and a standing alarm.
    Show {
        #[arg(long)]
        machine: String,
    },
    /// Thin a machine's history now, as its retention says (audited); the
    /// receiver also does it on its own (--history-retention-every).
    Prune {
        #[arg(long)]
        machine: String,
    },
    /// The ransomware and mass-deletion alarm of a machine (docs/history.md,
    /// "Alarms"): while it stands nothing older is thinned.
    #[command(subcommand)]
    Alarm(AlarmCmd),
}

#[derive(Subcommand, Debug)]
enum AlarmCmd {
    /// Whether an alarm stands, what tripped it and the instant to restore
    /// as of.
    Show {
        #[arg(long)]
        machine: String,
    },
    /// Clear the standing alarm, once the machine is clean again (audited);
    /// the receiver watches for the next one.
    Clear {
        #[arg(long)]
        machine: String,
    },
}

// `Make` carries every option of a boot medium; the enum is parsed once.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum BootosCmd {
    /// Build boot media for a machine into STORE/boot/ID/ (vmlinuz,
    /// initrd.img, cmdline) and record it; network boot serves it to the
    /// machine's MAC address only while armed (`bootos arm`, or --arm here),
    /// until its one-time token is used.
    Make {
        name: String,
        /// The receiver's address as the booted machine reaches it (not for
        /// --style local).
        #[arg(long)]
        receiver_url: Option<String>,
        #[arg(long, value_parser = ["backup", "restore", "menu"], default_value = "backup")]
        mode: String,
        #[arg(long, value_parser = ["receiver", "local"], default_value = "receiver")]
        style: String,
        /// Image to restore (restore mode).
        #[arg(long)]
        image: Option<String>,
        /// Restore another machine's image (a replacement machine, a cloned
        /// disk): the boot session may read that machine's images, never
        /// write them; --password-file is that machine's repository password.
        #[arg(long, value_name = "MACHINE")]
        image_of: Option<String>,
        /// The static lifeline-image for the boot OS (scripts/test.sh builds
        /// it in target/lifeline-bootos-agent/).
        #[arg(long, env = "LIFELINE_BOOTOS_AGENT")]
        agent: PathBuf,
        /// The repository password, for unattended backup and restore (first
        /// line; it goes into the boot OS). Not for --mode menu: the menu asks
        /// for it on the console.
        #[arg(long)]
        password_file: Option<PathBuf>,
        /// Kernel image (default: the newest installed /boot/vmlinuz-*).
        #[arg(long)]
        kernel: Option<PathBuf>,
        /// netboot: served to the machine's MAC by --http-listen; iso: also a
        /// hybrid ISO (BIOS and UEFI, CD or USB stick) to download; usb: also
        /// a raw USB disk image (MBR + FAT, BIOS and UEFI) to write with dd.
        #[arg(long, value_parser = ["netboot", "iso", "usb"], default_value = "netboot")]
        kind: String,
        /// Arm the network-boot media at once (see `bootos arm`).
        #[arg(long)]
        arm: bool,
        /// How long --arm serves it (90s, 30m, 1h, 2d).
        #[arg(long = "for", value_name = "DURATION", default_value = "1h", value_parser = parse_duration, requires = "arm")]
        arm_for: u64,
    },
    /// Arm network-boot media: the network-boot server serves it (script
    /// with the one-time token, kernel, initrd) to its machine's MAC for a
    /// window, then nothing. Outside the window nothing is served.
    Arm {
        id: i64,
        /// How long (90s, 30m, 1h, 2d; at most 7d).
        #[arg(long = "for", value_name = "DURATION", default_value = "1h", value_parser = parse_duration)]
        arm_for: u64,
    },
    /// Close the armed window of network-boot media now.
    Disarm { id: i64 },
    /// List boot media (of one machine), with until when each is armed.
    List { name: Option<String> },
    /// Revoke boot media: its token stops working and its files are no longer served.
    Revoke { id: i64 },
}

fn main() -> anyhow::Result<()> {
    let matches = <Cli as clap::CommandFactory>::command().get_matches();
    let cli = <Cli as clap::FromArgMatches>::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    refuse_serve_flags_before_a_command(&cli, &matches)?;
    // The daemon logs what it does; the management commands only what goes wrong.
    let level = if matches!(cli.command, None | Some(Command::Serve(_))) { "info" } else { "warn" };
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level)))
        .init();
    match cli.command {
        None => serve(&cli.store, cli.serve),
        Some(Command::Serve(args)) => serve(&cli.store, args),
        Some(Command::Machine(cmd)) => machine(&cli.store, cmd),
        Some(Command::Customer(cmd)) => customers::run(&cli.store, cmd),
        Some(Command::Bootos(cmd)) => bootos(&cli.store, cmd),
        Some(Command::Jobs { machine, last }) => {
            let db = Db::open(&cli.store)?;
            for j in db.jobs(machine.as_deref(), last)? {
                let r = &j.report;
                let pct = (r.done_bytes * 100).checked_div(r.total_bytes).unwrap_or(0);
                println!(
                    "job {:<5} {:<12} {:<8} {:<8} {:>3}% of {:>12} B  {}  started {} {}  {}",
                    j.id,
                    j.machine,
                    shown(&r.kind),
                    shown(&r.state),
                    pct,
                    r.total_bytes,
                    shown(&r.image),
                    j.started_at,
                    j.finished_at.map(|f| format!("ended {f}")).unwrap_or_default(),
                    shown(&r.message)
                );
            }
            Ok(())
        }
        Some(Command::Images { machine }) => {
            let db = Db::open(&cli.store)?;
            for i in db.images(machine.as_deref())? {
                println!(
                    "{:<12} {:<32} disk {} ({} B)  read {} B, stored {} B new  {}",
                    i.machine,
                    shown(&i.name),
                    shown(&i.disk),
                    i.disk_size,
                    i.image_bytes,
                    i.stored_bytes,
                    i.created_at
                );
            }
            Ok(())
        }
        Some(Command::History(cmd)) => history(&cli.store, cmd),
        Some(Command::Audit { last }) => {
            let db = Db::open(&cli.store)?;
            for a in db.audit_trail(last)? {
                println!(
                    "{}  {:<20} {:<12} {}",
                    a.at,
                    shown(&a.event),
                    a.machine.unwrap_or_default(),
                    shown(&a.detail)
                );
            }
            Ok(())
        }
    }
}

fn machine(store: &Path, cmd: MachineCmd) -> anyhow::Result<()> {
    StoreLayout::create(store).with_context(|| format!("cannot create the store {}", store.display()))?;
    let mut db = Db::open(store)?;
    match cmd {
        MachineCmd::Add { name, out, notes, mac, quota } => {
            let name = MachineName::new(&name).map_err(anyhow::Error::msg)?;
            if let Some(m) = &mac {
                normalize_mac(m).map_err(anyhow::Error::msg)?;
            }
            if StoreLayout::new(store).has_machine_data(&name) {
                anyhow::bail!(
                    "the store still holds data under the name {name} ({}), left by a machine removed by an older \
                     receiver: move it away first, or a new machine of that name would inherit it",
                    StoreLayout::new(store).mirror(&name).display()
                );
            }
            let cred = Credential::generate(name.as_str());
            db.add_machine(&name, &cred.secret_hash(), &notes)?;
            if mac.is_some() {
                db.set_mac(&name, mac.as_deref())?;
            }
            let limits = quota.apply(QuotaLimits::default());
            if !limits.is_unlimited() {
                db.set_quota(&name, limits)?;
            }
            hand_out(store, &cred, &out, "registered")
        }
        MachineCmd::SetQuota { name, quota } => {
            let name = MachineName::new(&name).map_err(anyhow::Error::msg)?;
            let Some(current) = db.quota(name.as_str())? else {
                anyhow::bail!("no machine {name} is registered (see `lifeline-receiver machine list`)");
            };
            let limits = quota.apply(current);
            db.set_quota(&name, limits)?;
            println!("machine {name}: quota {}", describe(limits));
            Ok(())
        }
        MachineCmd::SetHistory { name, keep_all, thin, max_size, no_max_size } => {
            let name = MachineName::new(&name).map_err(anyhow::Error::msg)?;
            let Some(mut settings) = db.history_retention(name.as_str())? else {
                anyhow::bail!("no machine {name} is registered (see `lifeline-receiver machine list`)");
            };
            settings.keep_all = keep_all.or(settings.keep_all);
            settings.thin = thin.or(settings.thin);
            settings.max_size = if no_max_size { None } else { max_size.or(settings.max_size) };
            let policy = lifeline_receiver::retention::policy_of(&settings)?;
            db.set_history_retention(&name, &settings, &policy.to_string())?;
            println!("machine {name}: history kept: {policy}");
            Ok(())
        }
        MachineCmd::SetMac { name, mac } => {
            let name = MachineName::new(&name).map_err(anyhow::Error::msg)?;
            db.set_mac(&name, mac.as_deref())?;
            println!("machine {name}: MAC {}", db.mac_of(name.as_str())?.unwrap_or_else(|| "none".into()));
            Ok(())
        }
        MachineCmd::Show { name } => {
            let Some(m) = db.machines()?.into_iter().find(|m| m.name == name) else {
                anyhow::bail!("no machine {name} is registered (see `lifeline-receiver machine list`)");
            };
            println!(
                "machine {}
  registered {}
  notes {}",
                m.name, m.created_at, m.notes
            );
            println!("  MAC {}", db.mac_of(&m.name)?.unwrap_or_else(|| "none (machine set-mac NAME MAC)".into()));
            let limits = db.quota(&m.name)?.unwrap_or_default();
            let usage = Quotas::new(&StoreLayout::new(store), 0)?
                .measure(&MachineName::new(&m.name).map_err(anyhow::Error::msg)?);
            println!(
                "  quota {}; uses {} and {} entries",
                describe(limits),
                lifeline_store::quota::human_bytes(usage.bytes),
                usage.files
            );
            print_media(&db.boot_media_of(Some(&m.name))?);
            Ok(())
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
            match StoreLayout::new(store).retire_machine_data(&name) {
                Ok(Some(to)) => println!(
                    "machine {name} removed; its mirror and images are kept in {} (served to nobody; delete it to free the space)",
                    to.display()
                ),
                Ok(None) => println!("machine {name} removed; it had no data here"),
                Err(e) => anyhow::bail!(
                    "machine {name} is removed (its credential no longer works), but its data could not be moved \
                     aside ({e}): move {} away before registering a machine of that name",
                    StoreLayout::new(store).mirror(&name).display()
                ),
            }
            Ok(())
        }
    }
}

fn bootos(store: &Path, cmd: BootosCmd) -> anyhow::Result<()> {
    use bootmedia::{Mode, Style};
    StoreLayout::create(store).with_context(|| format!("cannot create the store {}", store.display()))?;
    let layout = StoreLayout::new(store);
    let mut db = Db::open(store)?;
    match cmd {
        BootosCmd::Make {
            name,
            receiver_url,
            mode,
            style,
            image,
            image_of,
            agent,
            password_file,
            kernel,
            kind,
            arm,
            arm_for,
        } => {
            if arm && kind != "netboot" {
                anyhow::bail!("--arm is for network-boot media (--kind netboot): ISO and USB media are never served");
            }
            let password = match &password_file {
                Some(f) => {
                    let s = std::fs::read_to_string(f)
                        .with_context(|| format!("cannot read the password file {}", f.display()))?;
                    Some(s.lines().next().unwrap_or("").to_string())
                }
                None => None,
            };
            let spec = bootmedia::MediaSpec {
                machine: MachineName::new(&name).map_err(anyhow::Error::msg)?,
                receiver_url,
                mode: match mode.as_str() {
                    "backup" => Mode::Backup,
                    "restore" => Mode::Restore,
                    _ => Mode::Menu,
                },
                style: if style == "local" { Style::Local } else { Style::Receiver },
                image,
                image_of: image_of.map(|m: String| MachineName::new(&m)).transpose().map_err(anyhow::Error::msg)?,
                ca_pem: receiver_ca(&layout)?,
                agent,
                password,
                kernel,
                kind,
            };
            let made = bootmedia::make(&layout, &mut db, &spec)?;
            println!(
                "boot media #{} for machine {name} ({} {}) in {}",
                made.media.id,
                made.media.mode,
                made.media.style,
                made.dir.display()
            );
            println!(
                "  kernel {}
  initrd {} ({} bytes)",
                made.kernel.display(),
                made.initrd.display(),
                made.initrd_bytes
            );
            if let Some(iso) = &made.iso {
                let what = if made.media.kind == "usb" {
                    "USB disk image: write it to a USB stick with dd (BIOS and UEFI)"
                } else {
                    "ISO: boot it from CD, or write it to a USB stick with dd"
                };
                println!("  {what}: {} ({} bytes)", iso.display(), std::fs::metadata(iso)?.len());
            }
            if made.media.mode == "menu" {
                println!("  attended media: the menu asks for the repository password; the boot OS holds none");
            } else if made.iso.is_none() {
                println!("  unattended network-boot media: the boot OS holds no password; its claim gets it over TLS");
            } else {
                println!("  unattended media: the boot OS holds the repository password; keep its files as private as the password");
            }
            match db.mac_of(&name)? {
                _ if made.iso.is_some() => {}
                Some(mac) => println!("  network boot: machine {mac} chains http://RECEIVER:HTTP-PORT/boot.ipxe (lifeline-receiver --http-listen)"),
                None => println!("  network boot needs its MAC: lifeline-receiver machine set-mac {name} MAC"),
            }
            if arm {
                let m = db.arm_boot_media(made.media.id, arm_for)?;
                println!("  armed: network boot serves it until {}", m.armed_until.unwrap_or_default());
            } else if made.iso.is_none() {
                println!("  not served until armed: lifeline-receiver bootos arm {} [--for 1h]", made.media.id);
            }
            println!(
                "  its one-time token works for one boot; the kernel command line is in {}/cmdline",
                made.dir.display()
            );
            Ok(())
        }
        BootosCmd::Arm { id, arm_for } => {
            let m = db.arm_boot_media(id, arm_for)?;
            let mac = db.mac_of(&m.machine)?.unwrap_or_else(|| "(no MAC: machine set-mac)".into());
            println!(
                "boot media #{id} of machine {} armed until {}: network boot serves it to {mac}",
                m.machine,
                m.armed_until.unwrap_or_default()
            );
            Ok(())
        }
        BootosCmd::Disarm { id } => {
            let m = db.arm_boot_media(id, 0)?;
            println!("boot media #{id} of machine {} disarmed: network boot serves it no more", m.machine);
            Ok(())
        }
        BootosCmd::List { name } => {
            print_media(&db.boot_media_of(name.as_deref())?);
            Ok(())
        }
        BootosCmd::Revoke { id } => {
            let m = db.revoke_boot_media(id)?;
            let _ = std::fs::remove_dir_all(layout.boot_media(id));
            println!("boot media #{id} of machine {} revoked; its files are deleted", m.machine);
            Ok(())
        }
    }
}

fn print_media(media: &[BootMedia]) {
    if media.is_empty() {
        println!("  no boot media (`lifeline-receiver bootos make NAME` makes some)");
    }
    for m in media {
        let state = match (&m.used_at, m.revoked) {
            (_, true) => "revoked".to_string(),
            (Some(at), _) => format!("used {at} from {}", m.used_from),
            (None, _) if m.kind != "netboot" => "waiting".to_string(),
            (None, _) => match &m.armed_until {
                Some(until) => format!("waiting, armed until {until}"),
                None => "waiting, not armed".to_string(),
            },
        };
        println!(
            "  #{:<4} {:<10} {:<12} {:<8} {:<8} made {}  {state}",
            m.id, m.machine, m.kind, m.mode, m.style, m.created_at
        );
    }
}

/// `lifeline-receiver history ...`.
fn history(store: &std::path::Path, cmd: HistoryCmd) -> anyhow::Result<()> {
    use lifeline_history::{instant, Clock, SystemClock};
    let layout = StoreLayout::new(store);
    // A machine with a mirror here.
    let mirrored = |machine: &str| -> anyhow::Result<MachineName> {
        let machine = MachineName::new(machine).map_err(anyhow::Error::msg)?;
        if !layout.mirror(&machine).is_dir() {
            anyhow::bail!("no mirror of machine {machine} in {} (lifeline-receiver machine list)", store.display());
        }
        Ok(machine)
    };
    // A path as the mirror keeps it.
    let wire = |path: &Path| {
        lifeline_core::wirepath::from_local(path)
            .map_err(|e| anyhow::anyhow!("{}: {e} (give the path as on the machine, e.g. /srv/data)", path.display()))
    };
    match cmd {
        HistoryCmd::Show { machine } => {
            history_retention(&layout, &MachineName::new(&machine).map_err(anyhow::Error::msg)?, false)
        }
        HistoryCmd::Prune { machine } => {
            history_retention(&layout, &MachineName::new(&machine).map_err(anyhow::Error::msg)?, true)
        }
        HistoryCmd::Alarm(cmd) => {
            let (AlarmCmd::Show { machine } | AlarmCmd::Clear { machine }) = &cmd;
            history_alarm(&layout, &mirrored(machine)?, &cmd)
        }
        HistoryCmd::Diff { machine, from, until, path } => {
            let now = SystemClock.now_ns();
            let from = instant::parse(&from, now).map_err(anyhow::Error::msg)?;
            let until = instant::parse(&until, now).map_err(anyhow::Error::msg)?;
            let machine = mirrored(&machine)?;
            let only = path.as_deref().map(wire).transpose()?;
            let diffs = lifeline_mirror::diff::diff(&layout, &machine, from, until, only.as_deref())?;
            for d in &diffs {
                println!("/{}  {}", shown(&String::from_utf8_lossy(&d.path)), d.describe());
            }
            println!("{} paths differ between {} and {}", diffs.len(), instant::format(from), instant::format(until));
            Ok(())
        }
        HistoryCmd::List { machine, path } => {
            let (machine, wire) = (mirrored(&machine)?, wire(&path)?);
            let (versions, _) = lifeline_mirror::restore::versions(&layout, &machine, &wire, usize::MAX)?;
            for v in &versions {
                println!("{}  op {:<8} {}", instant::format(v.time_ns), v.seq, shown(&v.what));
            }
            let now = lifeline_mirror::restore::present(&layout, &machine, &wire)?;
            println!("now: {}", lifeline_mirror::restore::describe(now.as_ref()));
            if versions.is_empty() {
                println!("(no change kept for {})", path.display());
            }
            Ok(())
        }
        HistoryCmd::Restore { machine, as_of, path, to } => {
            let at = instant::parse(&as_of, SystemClock.now_ns()).map_err(anyhow::Error::msg)?;
            let started = std::time::Instant::now();
            let machine = mirrored(&machine)?;
            // `/`: the whole tree.
            let wire = match path == Path::new("/") {
                true => Vec::new(),
                false => wire(&path)?,
            };
            let r = match wire.is_empty() {
                true => lifeline_mirror::restore::restore_tree_as_of(&layout, &machine, at, &to)?,
                false => lifeline_mirror::restore::restore_as_of(&layout, &machine, at, &wire, &to)?,
            };
            println!(
                "restored {} as of {} to {}: {} files ({} bytes), {} directories, {} symlinks; {} changes undone in {:.2?}",
                path.display(),
                instant::format(at),
                to.join(std::ffi::OsStr::from_bytes(&wire)).display(),
                r.files,
                r.bytes,
                r.dirs,
                r.symlinks,
                r.undone,
                started.elapsed()
            );
            Ok(())
        }
    }
}

/// `lifeline-receiver history alarm ...`.
fn history_alarm(layout: &StoreLayout, machine: &MachineName, cmd: &AlarmCmd) -> anyhow::Result<()> {
    use lifeline_history::alarm;
    let dir = layout.history(machine);
    let standing = alarm::standing(&dir).map_err(|e| anyhow::anyhow!("{e}; remove it to clear the alarm"))?;
    match (cmd, standing) {
        (_, None) => println!("no alarm stands for machine {machine}"),
        (AlarmCmd::Show { .. }, Some(a)) => println!("{}", shown(&a.describe(machine.as_str()))),
        (AlarmCmd::Clear { .. }, Some(a)) => {
            // Audited first: a clear the trail does not show never happens.
            let db = Db::open(layout.root())?;
            db.audit(Some(machine.as_str()), "alarm cleared", &a.describe(machine.as_str()))?;
            alarm::clear(&dir)?;
            println!(
                "alarm of machine {machine} cleared (it was: {}); the receiver watches for the next one",
                shown(&a.reason)
            );
        }
    }
    Ok(())
}

/// `history show` (`prune`: `history prune`, a pass first).
fn history_retention(layout: &StoreLayout, machine: &MachineName, prune: bool) -> anyhow::Result<()> {
    use lifeline_history::{instant, Journal};
    let db = Db::open(layout.root())?;
    let policy = lifeline_receiver::retention::policy(&db, machine)?;
    if prune {
        let r = lifeline_receiver::retention::pass(layout, &db, machine, "the operator's history prune")?;
        println!("history of {machine}: {r}");
        return Ok(());
    }
    let journal = Journal::open(&layout.history_journal(machine));
    let segments = journal.segments()?;
    let bytes = lifeline_history::retention::size(&layout.history(machine))?;
    println!("history of {machine}");
    println!("  kept: {policy}");
    println!(
        "  size: {} in {} journal segments and the attic",
        lifeline_store::quota::human_bytes(bytes),
        segments.len()
    );
    match journal.horizon()? {
        Some(h) => println!("  restorable since: {} (retention dropped what is older)", instant::format(h)),
        None => match segments.first() {
            Some(s) => println!("  restorable since: {} (nothing dropped yet)", instant::format(s.first_ns)),
            None => println!("  restorable since: (nothing kept yet)"),
        },
    }
    match lifeline_history::alarm::standing(&layout.history(machine))? {
        Some(a) => println!(
            "  ALARM raised {}: {}; restore as of {}",
            instant::format(a.raised_ns),
            shown(&a.reason),
            instant::format(a.last_good_ns)
        ),
        None => println!("  alarm: none"),
    }
    Ok(())
}

/// Text a machine sent (a job's message, an image's name), safe to print on
/// the operator's terminal: control characters (escape sequences among
/// them) are shown escaped, never interpreted.
fn shown(s: &str) -> std::borrow::Cow<'_, str> {
    if s.chars().any(char::is_control) {
        s.chars().map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() }).collect()
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

/// Longest window network-boot media may be armed for.
const MAX_ARM_SECS: u64 = 7 * 24 * 3600;

/// A duration such as `90s`, `30m`, `1h`, `2d` (a bare number: seconds).
fn parse_duration(s: &str) -> Result<u64, String> {
    let (n, unit) = s.trim().split_at(s.trim().find(|c: char| !c.is_ascii_digit()).unwrap_or(s.trim().len()));
    let n: u64 = n.parse().map_err(|_| format!("{s:?}: a duration is a number and a unit (90s, 30m, 1h, 2d)"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        "d" => n.saturating_mul(86400),
        _ => return Err(format!("{s:?}: the unit is s, m, h or d")),
    };
    if secs == 0 || secs > MAX_ARM_SECS {
        return Err(format!("{s:?}: between 1s and 7d"));
    }
    Ok(secs)
}

/// The receiver's own CA certificate (made on first use), which boot media
/// trust.
fn receiver_ca(store: &StoreLayout) -> anyhow::Result<Vec<u8>> {
    let identity = tls::load_or_create(store, &[])?;
    let ca =
        identity.ca_path.context("the receiver uses a certificate of your own (--tls-cert): its CA is unknown here")?;
    std::fs::read(&ca).with_context(|| format!("cannot read {}", ca.display()))
}

/// Writes the credential (readable by root only) and the CA, and says how to
/// start the agent with them.
fn hand_out(store: &Path, cred: &Credential, out: &Path, what: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let token_path = out.join(format!("{}.token", cred.machine()));
    write_private(&token_path, &format!("{}\n", cred.token()))?;
    let identity = tls::load_or_create(&StoreLayout::new(store), &[])?;
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
        StoreLayout::create(store).with_context(|| format!("cannot create the store {}", store.display()))?;
        let auth = Arc::new(TokenAuthenticator::new(Db::open(store)?)?);
        let receiver = Receiver::with_options(store, auth, args.reserve_free)
            .with_context(|| format!("store {}", store.display()))?
            .with_limits(args.limits())
            .with_retention_every(Some(std::time::Duration::from_secs(args.history_retention_every)));
        let receiver = match args.without_history {
            true => {
                tracing::warn!("DEGRADED: --without-history: no machine's past is kept (an rm -rf or ransomware on a machine reaches its mirror for good)");
                receiver.without_history()
            }
            false => receiver,
        };
        let identity = match (&args.tls_cert, &args.tls_key) {
            (Some(c), Some(k)) => tls::load(c, k)?,
            _ => tls::load_or_create(receiver.store(), &args.tls_names)?,
        };
        let listener =
            TcpListener::bind(&args.listen).await.with_context(|| format!("cannot listen on {}", args.listen))?;
        println!(
            "lifeline-receiver listening on {} (TLS), store {}{}",
            listener.local_addr()?,
            receiver.store().root().display(),
            identity.ca_path.as_ref().map(|p| format!(", agents trust {}", p.display())).unwrap_or_default()
        );
        if let Some(addr) = &args.http_listen {
            let http =
                TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr} (--http-listen)"))?;
            println!("network boot on http://{}/boot.ipxe", http.local_addr()?);
            let limits = args.http_limits();
            limits.script_budgets().map_err(|e| anyhow::anyhow!("--http-script*: {e}"))?;
            let nb = std::sync::Arc::new(lifeline_boot_server::netboot::NetBoot::new(receiver.store())?);
            tokio::spawn(nb.serve_within(http, limits));
        }
        if let Some(addr) = &args.console_listen {
            let listener =
                TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr} (--console-listen)"))?;
            let acceptor = lifeline_console::setup::tls_acceptor(&identity.cert_pem, &identity.key_pem)?;
            let media = lifeline_console::service::MediaConfig {
                agent: args.bootos_agent.clone(),
                receiver_url: args.public_url.clone(),
                kernel: None,
            };
            if media.agent.is_none() {
                tracing::warn!("DEGRADED: the console makes no boot media: give --bootos-agent (a static lifeline-image)");
            }
            let mailer = match &args.smtp_url {
                Some(url) => Some(lifeline_console::mail::Mailer::new(url, &args.smtp_from)?),
                None => None,
            };
            let console = lifeline_console::Console::with(
                receiver.store(),
                lifeline_console::Options {
                    secure: true,
                    media,
                    mailer,
                    public_url: args.console_url.clone(),
                    signup: args.console_signup,
                    live: Some(receiver.live_states()),
                },
            )?;
            println!("console on https://{}/", listener.local_addr()?);
            match lifeline_console::setup::first_admin(receiver.store())? {
                Some((login, password)) => println!(
                    "console first login: {login} / {password}  (kept in {} until changed under Account)",
                    lifeline_console::setup::first_login_file(receiver.store()).display()
                ),
                None if lifeline_console::setup::first_login_file(receiver.store()).exists() => println!(
                    "console first login: see {}",
                    lifeline_console::setup::first_login_file(receiver.store()).display()
                ),
                None => {}
            }
            let limits = lifeline_console::Limits {
                max_connections: args.console_max_connections,
                max_connections_per_ip: args.console_max_connections_per_ip,
                ..Default::default()
            };
            tokio::spawn(lifeline_console::serve(
                listener,
                Some(acceptor),
                console.router(),
                limits,
                std::future::pending(),
            ));
        }
        if let Some(addr) = &args.tftp_listen {
            args.tftp_limits().quota().map_err(anyhow::Error::msg)?;
            let udp = tokio::net::UdpSocket::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (--tftp-listen)"))?;
            println!("TFTP on {} serving {}", udp.local_addr()?, args.tftp_root.display());
            tokio::spawn(lifeline_boot_server::tftp::serve(udp, args.tftp_root.clone(), args.tftp_limits()));
        }
        serve_with(listener, receiver, Some(identity.server_config()), shutdown_signal()).await
    })
}

/// `lifeline-receiver --listen X serve` (or any command) would drop the
/// daemon's flags given before the command without a word: refused, saying
/// where they go.
fn refuse_serve_flags_before_a_command(cli: &Cli, matches: &clap::ArgMatches) -> anyhow::Result<()> {
    let Some(command) = &cli.command else { return Ok(()) };
    let serve_flags = <ServeArgs as clap::Args>::augment_args(clap::Command::new("serve"));
    let given: Vec<String> = serve_flags
        .get_arguments()
        .filter(|a| matches.value_source(a.get_id().as_str()) == Some(clap::parser::ValueSource::CommandLine))
        .map(|a| format!("--{}", a.get_long().unwrap_or(a.get_id().as_str())))
        .collect();
    if given.is_empty() {
        return Ok(());
    }
    match command {
        Command::Serve(_) => anyhow::bail!(
            "{} before `serve` would be ignored: put them after it (lifeline-receiver --store S serve {} ...)",
            given.join(", "),
            given[0]
        ),
        _ => anyhow::bail!("{} are `serve` flags: this command does not take them", given.join(", ")),
    }
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
