//! `lifeline-image boot-media list|download`: the machine's owner fetches
//! its boot media (ISO or USB image) from the receiver, over TLS, with the
//! machine's own credential (`BootMediaStore` in proto/image.proto). Only
//! that machine's media can be listed or downloaded.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use lifeline_image::util::human_bytes;
use lifeline_proto::client::Connection;
use lifeline_proto::v1::boot_media_store_client::BootMediaStoreClient;
use lifeline_proto::v1::{BootMediaInfo, BootMediaRequest, ListBootMediaRequest};

#[derive(clap::Args, Clone, Debug)]
pub struct MediaArgs {
    /// The receiver, `https://HOST:PORT`.
    #[arg(long, env = "LIFELINE_REPO")]
    pub repo: String,
    /// The machine's credential (`lifeline-receiver machine add` writes it).
    #[arg(long, env = "LIFELINE_TOKEN_FILE")]
    pub token_file: PathBuf,
    /// The receiver's CA certificate.
    #[arg(long, env = "LIFELINE_CA")]
    pub ca: PathBuf,
    /// Name in the receiver's certificate, if not lifeline-receiver.
    #[arg(long)]
    pub tls_name: Option<String>,
    #[command(subcommand)]
    pub cmd: MediaCmd,
}

#[derive(clap::Subcommand, Clone, Debug)]
pub enum MediaCmd {
    /// This machine's boot media.
    List,
    /// Download one media's file (ISO or USB image).
    Download {
        /// The media's number (`list` shows them).
        id: u64,
        /// Where to write it (mode 0600).
        #[arg(long)]
        out: PathBuf,
    },
}

fn describe(m: &BootMediaInfo) -> String {
    let state = if m.revoked {
        "revoked"
    } else if m.used {
        "used"
    } else {
        "usable"
    };
    let file =
        if m.file.is_empty() { "network boot only".to_string() } else { format!("{} {}", m.file, human_bytes(m.size)) };
    let pw = if m.holds_password { "holds the repository password" } else { "attended: holds no password" };
    format!("#{:<4} {:<8} {:<8} {:<9} made {}  {state}  {file}  {pw}", m.id, m.kind, m.mode, m.style, m.created_at)
}

fn json(m: &BootMediaInfo) -> serde_json::Value {
    serde_json::json!({"id": m.id, "kind": m.kind, "mode": m.mode, "style": m.style, "image": m.image,
        "created_at": m.created_at, "file": m.file, "size": m.size, "used": m.used, "revoked": m.revoked,
        "holds_password": m.holds_password})
}

pub fn run(a: &MediaArgs, as_json: bool, progress: bool) -> Result<()> {
    let conn =
        Connection::from_files(&a.repo, &a.token_file, &a.ca, a.tls_name.as_deref()).map_err(anyhow::Error::msg)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let mut client = BootMediaStoreClient::new(conn.channel().await.map_err(anyhow::Error::msg)?)
            .max_decoding_message_size(lifeline_proto::MAX_MESSAGE + (1 << 20));
        match &a.cmd {
            MediaCmd::List => {
                let list = client
                    .list_boot_media(conn.request(ListBootMediaRequest {}))
                    .await
                    .map_err(|s| anyhow::anyhow!("the receiver refused: {}", s.message()))?
                    .into_inner();
                if as_json {
                    println!("{}", serde_json::Value::Array(list.media.iter().map(json).collect()));
                } else if list.media.is_empty() {
                    println!("no boot media for machine {}", conn.machine());
                } else {
                    for m in &list.media {
                        println!("{}", describe(m));
                    }
                }
            }
            MediaCmd::Download { id, out } => {
                let mut stream = client
                    .download_boot_media(conn.request(BootMediaRequest { id: *id }))
                    .await
                    .map_err(|s| anyhow::anyhow!("the receiver refused boot media #{id}: {}", s.message()))?
                    .into_inner();
                let tmp = out.with_extension("part");
                let mut f = {
                    use std::os::unix::fs::OpenOptionsExt;
                    std::fs::File::options()
                        .write(true)
                        .create(true)
                        .truncate(true)
                        .mode(0o600)
                        .open(&tmp)
                        .with_context(|| format!("cannot write {}", tmp.display()))?
                };
                let show = progress && std::io::stderr().is_terminal();
                let t0 = Instant::now();
                let mut info: Option<BootMediaInfo> = None;
                let mut got = 0u64;
                loop {
                    let msg = match stream.message().await {
                        Ok(Some(m)) => m,
                        Ok(None) => break,
                        Err(s) => {
                            let _ = std::fs::remove_file(&tmp);
                            bail!("the download of boot media #{id} broke off: {}", s.message());
                        }
                    };
                    if let Some(i) = msg.info {
                        info = Some(i);
                    }
                    f.write_all(&msg.data).with_context(|| format!("cannot write {}", tmp.display()))?;
                    got += msg.data.len() as u64;
                    if show {
                        let total = info.as_ref().map_or(0, |i| i.size).max(1);
                        let rate = got as f64 / t0.elapsed().as_secs_f64().max(1e-3);
                        eprint!("\rdownloading #{id}: {} of {} ({:.0}%), {}/s   ", human_bytes(got), human_bytes(total), got as f64 * 100.0 / total as f64, human_bytes(rate as u64));
                    }
                }
                if show {
                    eprintln!();
                }
                let Some(info) = info else {
                    let _ = std::fs::remove_file(&tmp);
                    bail!("the receiver sent nothing for boot media #{id}");
                };
                if got != info.size {
                    let _ = std::fs::remove_file(&tmp);
                    bail!("boot media #{id}: got {got} bytes of {}", info.size);
                }
                f.sync_all()?;
                drop(f);
                std::fs::rename(&tmp, out).with_context(|| format!("cannot rename {} to {}", tmp.display(), out.display()))?;
                if as_json {
                    let mut j = json(&info);
                    j["out"] = serde_json::json!(out);
                    println!("{j}");
                } else {
                    println!("boot media #{id} ({} {} {}) written to {} ({} bytes)", info.kind, info.mode, info.style, out.display(), got);
                    let what = if info.kind == "usb" { "write it to a USB stick with dd" } else { "boot it from CD, or write it to a USB stick with dd" };
                    println!("  {what}; its one-time token works for one boot");
                    if info.holds_password {
                        println!("  WARNING: unattended media: this file holds the repository password; keep it as private as the password");
                    } else {
                        println!("  attended media: the menu asks for the repository password; this file holds none");
                    }
                }
            }
        }
        Ok(())
    })
}
