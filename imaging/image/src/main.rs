//! `lifeline-image`: back up, restore, verify and inspect whole-disk images.
//!
//! A thin layer over the `lifeline_image` library: argument parsing, the
//! password, and printing. See the README's "Disk images" section.

mod media;
mod menu;

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use lifeline_image::manifest::{Content, Manifest};
use lifeline_image::progress::Watcher;
use lifeline_image::remote::{JobReporter, RemoteStore};
use lifeline_image::scan::ptype_name;
use lifeline_image::util::{human_bytes, human_secs};
use lifeline_image::{restore, BackupOptions, Rest, RestoreOptions};
use lifeline_proto::client::Connection;
use lifeline_proto::v1::JobReport;
use lifeline_repo::{DirStore, KdfParams, Repo, Store};
use serde_json::json;
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "lifeline-image",
    version,
    about = "Whole-disk images: used blocks only, deduplicated, compressed, encrypted"
)]
struct Cli {
    /// Print results as JSON (for scripts).
    #[arg(long, global = true)]
    json: bool,
    /// No progress display.
    #[arg(short, long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Clone)]
struct RepoArgs {
    /// Repository: a directory (local disk or a mounted network share), or a
    /// receiver's address `https://HOST:PORT` (then --token-file and --ca).
    #[arg(long, env = "LIFELINE_REPO")]
    repo: String,
    /// The machine's credential, for a receiver (`lifeline-receiver machine add` writes it).
    #[arg(long, env = "LIFELINE_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// The receiver's CA certificate (ca.crt, next to the credential).
    #[arg(long, env = "LIFELINE_CA")]
    ca: Option<PathBuf>,
    /// Name in the receiver's certificate, if not lifeline-receiver.
    #[arg(long)]
    tls_name: Option<String>,
    /// Read the password from this file (first line). Otherwise the
    /// LIFELINE_PASSWORD environment variable, otherwise a prompt.
    #[arg(long)]
    password_file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create an empty repository protected by a password.
    Init {
        #[command(flatten)]
        repo: RepoArgs,
    },
    /// Image a disk or image file into the repository.
    Backup {
        #[command(flatten)]
        repo: RepoArgs,
        /// Image name (default: MACHINE-DATE).
        #[arg(long)]
        name: Option<String>,
        /// Machine the disk belongs to (default: this host's name).
        #[arg(long)]
        machine: Option<String>,
        /// Cell size of the chunk grid in bytes (default from the disk size).
        #[arg(long)]
        chunk_size: Option<u64>,
        /// Worker threads (default: one per CPU).
        #[arg(long)]
        threads: Option<usize>,
        /// Image even though filesystems on it are mounted read-write.
        #[arg(long)]
        allow_mounted: bool,
        /// The disk (/dev/sda) or image file.
        source: PathBuf,
    },
    /// Write an image to a disk or image file (created if missing).
    Restore {
        #[command(flatten)]
        repo: RepoArgs,
        #[arg(long)]
        name: String,
        /// What to do with bytes the image does not cover.
        #[arg(long, value_enum, default_value_t = Rest::Keep)]
        rest: Rest,
        /// Read everything back after writing and compare with the image.
        #[arg(long)]
        read_back: bool,
        #[arg(long)]
        threads: Option<usize>,
        /// The disk or image file to overwrite.
        target: PathBuf,
    },
    /// Check images without restoring: every chunk is read, decrypted and hashed.
    Verify {
        #[command(flatten)]
        repo: RepoArgs,
        /// One image (default: every image).
        #[arg(long)]
        name: Option<String>,
        /// Also check every pack in the repository: every chunk, referenced or not.
        #[arg(long)]
        all_chunks: bool,
        #[arg(long)]
        threads: Option<usize>,
    },
    /// List the images.
    List {
        #[command(flatten)]
        repo: RepoArgs,
    },
    /// Show an image: disk, layout, filesystems, used and stored bytes.
    Info {
        #[command(flatten)]
        repo: RepoArgs,
        #[arg(long)]
        name: String,
    },
    /// Remove an image (its chunks stay until `prune`).
    Forget {
        #[command(flatten)]
        repo: RepoArgs,
        #[arg(long)]
        name: String,
    },
    /// Delete the packs no image uses a chunk of (reads every image: needs the password).
    Prune {
        #[command(flatten)]
        repo: RepoArgs,
    },
    /// Show what a backup of a disk would store, without a repository.
    Scan { source: PathBuf },
    /// Boot OS: trade the one-time boot token (--token-file) for a boot
    /// session with the receiver; its credential is written to --out and
    /// works for this machine's images only. Prints what the boot media is
    /// for (mode, style, image).
    Claim {
        #[command(flatten)]
        repo: RepoArgs,
        /// Where to write the session's credential (mode 0600).
        #[arg(long)]
        out: PathBuf,
        /// Where to write the repository password the receiver sends with
        /// the session (mode 0600): unattended network-boot media hold
        /// none. Not written when the reply carries none.
        #[arg(long)]
        password_out: Option<PathBuf>,
    },
    /// Boot OS: the attended text menu on the console (back up or restore
    /// a disk with a typed password; see menu.rs).
    Menu(menu::MenuArgs),
    /// This machine's boot media on the receiver: list them, or download
    /// one's ISO or USB image (with the machine's own credential).
    BootMedia(media::MediaArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("LIFELINE_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn threads(t: Option<usize>) -> usize {
    t.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
}

fn run(cli: &Cli) -> Result<()> {
    let progress = !cli.quiet;
    match &cli.cmd {
        Cmd::Init { repo } => {
            let store = store(repo)?;
            let pw = password(repo, true)?;
            let r = Repo::init_in(store, &pw, KdfParams::default())?;
            out(cli, json!({"repo": r.location(), "id": r.id()}), || {
                format!("created repository {} (id {})", r.location(), r.id())
            });
        }
        Cmd::Backup { repo, name, machine, chunk_size, threads: t, allow_mounted, source } => {
            // Reported from the start: a wrong password is a failed job too.
            let job = reporter(repo, "backup", name.as_deref().unwrap_or(""), &source.display().to_string());
            let result = open(repo).and_then(|r| {
                lifeline_image::backup(
                    &r,
                    source,
                    &BackupOptions {
                        name: name.clone(),
                        machine: machine.clone(),
                        chunk_size: *chunk_size,
                        threads: Some(threads(*t)),
                        progress,
                        allow_mounted: *allow_mounted,
                        watcher: watcher(&job),
                    },
                )
            });
            if let Some(j) = &job {
                j.finish(match &result {
                    Ok(m) => Ok(JobReport {
                        image: m.header.name.clone(),
                        disk: format!("{} {}", m.header.source.path, m.header.source.model.clone().unwrap_or_default()),
                        disk_size: m.header.source.size,
                        done_bytes: m.header.stats.image_bytes,
                        total_bytes: m.header.stats.image_bytes,
                        stored_bytes: m.header.stats.bytes_stored,
                        ..Default::default()
                    }),
                    Err(e) => Err(format!("{e:#}")),
                });
            }
            let m = result?;
            let h = &m.header;
            let s = &h.stats;
            for w in &h.warnings {
                eprintln!("warning: {w}");
            }
            out(cli, json!({"name": h.name, "source_size": h.source.size, "stats": s}), || {
                format!(
                    "image {}: read {} of a {} disk in {} ({}/s); {} new of {} chunks, {} stored",
                    h.name,
                    human_bytes(s.image_bytes),
                    human_bytes(h.source.size),
                    human_secs(s.seconds),
                    human_bytes((s.image_bytes as f64 / s.seconds.max(1e-3)) as u64),
                    s.new_chunks,
                    m.chunks.len(),
                    human_bytes(s.bytes_stored)
                )
            });
        }
        Cmd::Restore { repo, name, rest, read_back, threads: t, target } => {
            let job = reporter(repo, "restore", name, &target.display().to_string());
            let result = open(repo).and_then(|r| {
                restore(
                    &r,
                    name,
                    target,
                    &RestoreOptions {
                        rest: *rest,
                        read_back: *read_back,
                        threads: threads(*t),
                        progress,
                        watcher: watcher(&job),
                    },
                )
            });
            if let Some(j) = &job {
                j.finish(match &result {
                    Ok(rep) => Ok(JobReport {
                        image: name.clone(),
                        done_bytes: rep.bytes_written,
                        total_bytes: rep.bytes_written,
                        ..Default::default()
                    }),
                    Err(e) => Err(format!("{e:#}")),
                });
            }
            let rep = result?;
            for w in &rep.warnings {
                eprintln!("warning: {w}");
            }
            out(
                cli,
                json!({
                    "name": name, "target": target, "bytes_written": rep.bytes_written,
                    "bytes_zeroed": rep.bytes_zeroed, "verify_seconds": rep.verify_seconds,
                    "write_seconds": rep.write_seconds, "read_back_seconds": rep.read_back_seconds,
                    "gpt_moved": rep.gpt_moved,
                }),
                || {
                    let mut s = format!(
                        "restored {name} to {}: verified in {}, wrote {} (+{} zeros) in {}",
                        target.display(),
                        human_secs(rep.verify_seconds),
                        human_bytes(rep.bytes_written),
                        human_bytes(rep.bytes_zeroed),
                        human_secs(rep.write_seconds)
                    );
                    if let Some(rb) = rep.read_back_seconds {
                        s += &format!(", read back and matched in {}", human_secs(rb));
                    }
                    s
                },
            );
        }
        Cmd::Verify { repo, name, all_chunks, threads: t } => {
            let r = open(repo)?;
            let names = match name {
                Some(n) => vec![n.clone()],
                None => r.list()?,
            };
            let mut failed = Vec::new();
            let mut results = Vec::new();
            for n in &names {
                let res = lifeline_image::restore::load(&r, n).map(|m| {
                    let rep = lifeline_image::restore::verify(&r, &m, threads(*t));
                    (m.chunks.len(), rep)
                });
                match res {
                    Ok((chunks, rep)) if rep.ok() => {
                        results.push(json!({"name": n, "ok": true, "chunks": chunks}));
                        if !cli.json {
                            println!("{n}: ok ({chunks} chunks, {})", human_bytes(rep.bytes));
                        }
                    }
                    Ok((_, rep)) => {
                        let errs: Vec<String> = rep.errors.iter().map(|e| e.to_string()).collect();
                        if !cli.json {
                            println!("{n}: DAMAGED, {} errors checking {} chunks", errs.len(), rep.checked);
                            for e in errs.iter().take(10) {
                                println!("  {e}");
                            }
                        }
                        results.push(json!({"name": n, "ok": false, "errors": errs}));
                        failed.push(n.clone());
                    }
                    Err(e) => {
                        if !cli.json {
                            println!("{n}: DAMAGED, {e:#}");
                        }
                        results.push(json!({"name": n, "ok": false, "errors": [format!("{e:#}")]}));
                        failed.push(n.clone());
                    }
                }
            }
            if *all_chunks {
                let rep = r.verify_all_packs(threads(*t));
                if !cli.json {
                    println!(
                        "pack store: {} chunks in {} groups, {} errors, {} leftover temporary files",
                        rep.checked,
                        rep.groups,
                        rep.errors.len(),
                        rep.temp_files
                    );
                    for e in rep.errors.iter().take(10) {
                        println!("  {e}");
                    }
                }
                if !rep.ok() {
                    failed.push("(pack store)".into());
                }
            }
            if cli.json {
                println!("{}", json!({"images": results}));
            }
            if !failed.is_empty() {
                bail!("verification failed for {}", failed.join(", "));
            }
        }
        Cmd::List { repo } => {
            let r = open(repo)?;
            let mut rows = Vec::new();
            for n in r.list()? {
                match lifeline_image::restore::load(&r, &n) {
                    Ok(m) => {
                        let h = &m.header;
                        if !cli.json {
                            println!(
                                "{n}  {}  machine {}  disk {}  image {}",
                                m.created(),
                                h.machine,
                                human_bytes(h.source.size),
                                human_bytes(h.stats.image_bytes)
                            );
                        }
                        rows.push(json!({"name": n, "created_unix": h.created_unix, "machine": h.machine,
                            "disk_size": h.source.size, "image_bytes": h.stats.image_bytes}));
                    }
                    Err(e) => {
                        if !cli.json {
                            println!("{n}  (unreadable: {e:#})");
                        }
                        rows.push(json!({"name": n, "error": format!("{e:#}")}));
                    }
                }
            }
            if cli.json {
                println!("{}", json!(rows));
            }
        }
        Cmd::Info { repo, name } => {
            let r = open(repo)?;
            let m = lifeline_image::restore::load(&r, name)?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&m.header)?);
            } else {
                print_info(&m);
            }
        }
        Cmd::Forget { repo, name } => {
            let r = open(repo)?;
            lifeline_image::prune::forget(&r, name)?;
            out(cli, json!({"forgotten": name}), || {
                format!("forgot {name}; run `prune` to free the chunks no other image uses")
            });
        }
        Cmd::Prune { repo } => {
            let r = open(repo)?;
            let rep = lifeline_image::prune::prune(&r)?;
            out(cli, json!(rep), || {
                let p = &rep.packs;
                let mut s = format!(
                    "{} images: deleted {} packs ({} chunks, {}), kept {} packs ({} chunks in use, {} unused in partly used packs)",
                    rep.images,
                    p.packs_deleted,
                    p.chunks_deleted,
                    human_bytes(p.bytes_freed),
                    p.packs_kept,
                    p.chunks_used,
                    p.chunks_unused_kept
                );
                if p.packs_unreadable > 0 {
                    s += &format!("; {} unreadable packs kept (see `verify --all-chunks`)", p.packs_unreadable);
                }
                s
            });
        }
        Cmd::Claim { repo, out, password_out } => {
            let (Some(token), Some(ca)) = (&repo.token_file, &repo.ca) else {
                bail!("claim needs --token-file (the boot token) and --ca (the receiver's CA certificate)");
            };
            let conn =
                Connection::from_files(&repo.repo, token, ca, repo.tls_name.as_deref()).map_err(anyhow::Error::msg)?;
            let s = lifeline_image::remote::claim_boot(&conn).map_err(anyhow::Error::msg)?;
            write_secret(out, &s.credential)?;
            let password = match (&password_out, s.password.is_empty()) {
                (Some(p), false) => {
                    write_secret(p, &s.password)?;
                    true
                }
                _ => false,
            };
            if cli.json {
                println!(
                    "{}",
                    serde_json::json!({"media": s.media, "mode": s.mode, "style": s.style, "image": s.image, "expires_unix": s.expires_unix, "password": password})
                );
            } else {
                let with = if password { ", with the repository password" } else { "" };
                println!(
                    "boot session for media #{}: mode {} style {} image {:?}{with}",
                    s.media, s.mode, s.style, s.image
                );
            }
        }
        Cmd::Menu(args) => menu::run(args)?,
        Cmd::BootMedia(args) => media::run(args, cli.json, progress)?,
        Cmd::Scan { source } => {
            let disk = lifeline_image::device::Disk::open_source(source)?;
            let s = lifeline_image::scan::scan(&disk, disk.size, disk.sector_size)
                .with_context(|| format!("cannot read the partition table of {}", source.display()))?;
            let extents = s.extents();
            println!(
                "{}: {} disk, {}-byte sectors, {} table",
                source.display(),
                human_bytes(disk.size),
                disk.sector_size,
                lifeline_image::scan::table_string(s.layout.table)
            );
            print_parts(&s.partitions, &s.maps);
            println!("a backup reads {}", human_bytes(extents.bytes()));
            for w in &s.warnings {
                println!("warning: {w}");
            }
        }
    }
    Ok(())
}

fn out(cli: &Cli, j: serde_json::Value, text: impl FnOnce() -> String) {
    if cli.json {
        println!("{j}");
    } else {
        println!("{}", text());
    }
}

fn print_info(m: &Manifest) {
    let h = &m.header;
    let s = &h.stats;
    println!("image     {}", h.name);
    println!("machine   {}", h.machine);
    println!("created   {} by {}", m.created(), h.tool);
    let mut disk = format!("{} ({} bytes), {}-byte sectors", h.source.path, h.source.size, h.source.sector_size);
    if let Some(model) = &h.source.model {
        disk += &format!(", model {model}");
    }
    if let Some(serial) = &h.source.serial {
        disk += &format!(", serial {serial}");
    }
    println!("disk      {disk}");
    let mut table = h.table.to_uppercase();
    if let Some(g) = &h.disk_guid {
        table += &format!(" {g}");
    }
    println!("table     {table}");
    print_parts(&h.partitions, &m.maps);
    println!(
        "image     {} covered, {} cells of {} ({} all-zero), {} chunks",
        human_bytes(s.image_bytes),
        s.cells,
        human_bytes(h.chunk_size),
        s.zero_cells,
        m.chunks.len()
    );
    println!(
        "stored    {} new chunks, {} new data stored as {} (backup took {})",
        s.new_chunks,
        human_bytes(s.bytes_new),
        human_bytes(s.bytes_stored),
        human_secs(s.seconds)
    );
    for w in &h.warnings {
        println!("warning   {w}");
    }
}

fn print_parts(parts: &[lifeline_image::manifest::PartRecord], maps: &[lifeline_disk::fs::UsedMap]) {
    for p in parts {
        let what = match &p.content {
            Content::UsedBlocks { variant, map, block_size, used_blocks, total_blocks, .. } => format!(
                "{variant}, {} of {} used ({used_blocks}/{total_blocks} blocks of {block_size} B, {} runs)",
                human_bytes(used_blocks * *block_size as u64),
                human_bytes(total_blocks * *block_size as u64),
                maps.get(*map as usize).map_or(0, |m| m.runs().len())
            ),
            Content::EveryBlock { reason } => format!("every block ({reason})"),
        };
        let mut label = ptype_name(&p.ptype).to_string();
        if !p.name.is_empty() {
            label += &format!(" \"{}\"", p.name);
        }
        println!("  part {:>2}  {:>10} at {:>12}  {:<28} {what}", p.index, human_bytes(p.len), p.start, label);
    }
}

fn open(a: &RepoArgs) -> Result<Repo> {
    let store = store(a)?;
    let pw = password(a, false)?;
    Ok(Repo::open_in(store, &pw)?)
}

/// For a receiver's repository: the job's record there (None for a
/// directory, or when the receiver cannot be told: the job goes on).
fn reporter(a: &RepoArgs, kind: &str, image: &str, disk: &str) -> Option<Arc<JobReporter>> {
    if !a.repo.starts_with("https://") {
        return None;
    }
    let (token, ca) = (a.token_file.as_ref()?, a.ca.as_ref()?);
    let conn = Connection::from_files(&a.repo, token, ca, a.tls_name.as_deref()).ok()?;
    JobReporter::start(&conn, kind, image, disk).map(Arc::new)
}

fn watcher(job: &Option<Arc<JobReporter>>) -> Option<Watcher> {
    let job = job.clone()?;
    Some(Watcher::new(move |_, done, total| job.progress(done, total)))
}

/// A directory, or the receiver for an `https://` address.
fn store(a: &RepoArgs) -> Result<Arc<dyn Store>> {
    if !a.repo.starts_with("https://") {
        return Ok(Arc::new(DirStore::new(&a.repo)));
    }
    let (Some(token), Some(ca)) = (&a.token_file, &a.ca) else {
        bail!("a receiver repository needs --token-file (the machine's credential) and --ca (the receiver's CA certificate)");
    };
    let conn = Connection::from_files(&a.repo, token, ca, a.tls_name.as_deref()).map_err(anyhow::Error::msg)?;
    Ok(Arc::new(RemoteStore::connect(conn)?))
}

/// Writes one line readable by its owner only (a credential, a password).
fn write_secret(path: &Path, line: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::File::options()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    writeln!(f, "{line}")?;
    Ok(())
}

/// The repository password: `--password-file`, `LIFELINE_PASSWORD`, or a
/// prompt on the terminal (twice when creating).
fn password(a: &RepoArgs, confirm: bool) -> Result<Vec<u8>> {
    if let Some(f) = &a.password_file {
        let s = std::fs::read_to_string(f).with_context(|| format!("cannot read the password file {}", f.display()))?;
        let pw = s.lines().next().unwrap_or("").to_string();
        if pw.is_empty() {
            bail!("the password file {} is empty", f.display());
        }
        return Ok(pw.into_bytes());
    }
    if let Ok(pw) = std::env::var("LIFELINE_PASSWORD") {
        if !pw.is_empty() {
            return Ok(pw.into_bytes());
        }
    }
    if !std::io::stdin().is_terminal() {
        bail!("no password: pass --password-file FILE or set LIFELINE_PASSWORD");
    }
    let pw = prompt("repository password: ")?;
    if pw.is_empty() {
        bail!("an empty password is not allowed");
    }
    if confirm && prompt("again: ")? != pw {
        bail!("the two passwords differ");
    }
    Ok(pw.into_bytes())
}

/// Read a line from the terminal with echo off.
fn prompt(what: &str) -> Result<String> {
    use std::os::unix::io::AsRawFd;
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(Path::new("/dev/tty"))
        .context("cannot open the terminal to ask for the password")?;
    let fd = tty.as_raw_fd();
    // SAFETY: termios calls on our own descriptor with a zeroed struct they fill.
    let mut old: libc::termios = unsafe { std::mem::zeroed() };
    let have = unsafe { libc::tcgetattr(fd, &mut old) } == 0;
    if have {
        let mut t = old;
        t.c_lflag &= !libc::ECHO;
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &t) };
    }
    (&tty).write_all(what.as_bytes())?;
    let mut line = String::new();
    let r = std::io::BufRead::read_line(&mut std::io::BufReader::new(&tty), &mut line);
    if have {
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &old) };
    }
    (&tty).write_all(b"\n")?;
    r?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}
