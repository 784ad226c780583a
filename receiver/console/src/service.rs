//! Self-service, as the design draws it: a customer registers a PC, asks
//! for boot media for that PC alone, is told when it is made (in the
//! console, and by mail when the receiver has an SMTP server), downloads it
//! or arms network boot for a window.
//!
//! Media are made by `lifeline_boot_server::bootmedia::make`, the same code
//! as `lifeline-receiver bootos make`, in the background: a boot OS takes
//! seconds to tens of seconds to build.

use std::path::PathBuf;
use std::sync::Arc;

use lifeline_boot_server::bootmedia::{self, MediaSpec};
use lifeline_bootos::cmdline::{Mode, Style};
use lifeline_core::credential::{Credential, MachineName};
use lifeline_store::db::console::{MachineRow, Role};
use lifeline_store::db::service::{MediaRequest, NewPc};
use lifeline_store::Db;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::session::Caller;
use crate::{api, Console, Error};

/// What the console needs to make boot media (`lifeline-receiver serve`
/// flags); without an agent binary, media cannot be made here.
#[derive(Debug, Clone, Default)]
pub struct MediaConfig {
    /// The static `lifeline-image` that goes into every boot OS.
    pub agent: Option<PathBuf>,
    /// How booted machines reach this receiver (`https://HOST:7700`).
    pub receiver_url: Option<String>,
    /// The kernel (default: the newest installed).
    pub kernel: Option<PathBuf>,
}

/// A PC to register, as the form or the API sends it.
#[derive(Debug, Clone, Deserialize)]
pub struct RegisterPc {
    pub name: String,
    #[serde(default)]
    pub mac: String,
    #[serde(default)]
    pub ip: String,
    /// receiver (to the service) or local (to attached storage).
    #[serde(default = "default_style")]
    pub style: String,
    #[serde(default)]
    pub notes: String,
}

fn default_style() -> String {
    "receiver".into()
}

/// A registered PC and its credential, which is shown this once.
#[derive(Debug, Clone, Serialize)]
pub struct Registered {
    pub machine: MachineRow,
    pub token: String,
}

/// Boot media to make.
#[derive(Debug, Clone, Deserialize)]
pub struct AskMedia {
    /// netboot, iso or usb.
    pub kind: String,
    /// backup, restore or menu (attended: whoever boots it chooses and
    /// types the repository password).
    #[serde(default = "default_mode")]
    pub mode: String,
    /// The image repository's password, for unattended backup or restore
    /// media (it goes into the boot OS, or with network boot, into the boot
    /// session).
    #[serde(default)]
    pub password: String,
    /// Restore media: the image to restore.
    #[serde(default)]
    pub image: String,
}

fn default_mode() -> String {
    "menu".into()
}

pub async fn register_pc(console: &Arc<Console>, caller: &Caller, pc: RegisterPc) -> Result<Registered, Error> {
    caller.require(Role::Operator)?;
    let name = MachineName::new(pc.name.trim()).map_err(|e| Error::BadRequest(format!("the name: {e}")))?;
    let cred = Credential::generate(name.as_str());
    let new = NewPc {
        name: name.clone(),
        mac: Some(pc.mac).filter(|m| !m.trim().is_empty()),
        ip: Some(pc.ip).filter(|i| !i.trim().is_empty()),
        style: pc.style,
        notes: pc.notes,
    };
    let (customer, actor, hash) = (caller.user.customer_id, caller.user.login.clone(), cred.secret_hash());
    let id = console.db(move |db| db.register_pc(customer, &new, &hash, &actor)).await.map_err(as_bad_request)?;
    let machine = api::machine(console, caller, id).await?;
    Ok(Registered { machine: machine.machine, token: cred.token() })
}

pub async fn ask_media(
    console: &Arc<Console>,
    caller: &Caller,
    machine_id: String,
    ask: AskMedia,
) -> Result<MediaRequest, Error> {
    caller.require(Role::Operator)?;
    let machine = api::machine(console, caller, machine_id).await?;
    let cfg = console.media.clone();
    let Some(agent) = cfg.agent.clone() else {
        return Err(Error::Forbidden(
            "this receiver makes no boot media (the provider runs it without --bootos-agent): ask your provider".into(),
        ));
    };
    let mode = match ask.mode.as_str() {
        "backup" => Mode::Backup,
        "restore" => Mode::Restore,
        "menu" => Mode::Menu,
        m => return Err(Error::BadRequest(format!("no mode {m:?}: backup, restore or menu"))),
    };
    if !matches!(ask.kind.as_str(), "netboot" | "iso" | "usb") {
        return Err(Error::BadRequest(format!("no media kind {:?}: netboot, iso or usb", ask.kind)));
    }
    let style = if machine.backup_style == "local" { Style::Local } else { Style::Receiver };
    let spec = MediaSpec {
        machine: MachineName::new(&machine.name).map_err(|e| Error::Internal(anyhow::anyhow!(e)))?,
        receiver_url: cfg.receiver_url.clone(),
        mode,
        style,
        image: Some(ask.image.trim().to_string()).filter(|i| !i.is_empty()),
        image_of: None,
        ca_pem: console.ca_pem()?,
        agent,
        password: Some(ask.password).filter(|p| !p.is_empty()),
        kernel: cfg.kernel.clone(),
        kind: ask.kind.clone(),
    };
    let (customer, actor, name, kind, mode_s) =
        (caller.user.customer_id, caller.user.login.clone(), machine.name.clone(), ask.kind, ask.mode);
    let request = console.db(move |db| db.add_media_request(customer, &name, &kind, &mode_s, &actor)).await?;
    let link = format!("/machines/{}#media-{}", machine.public_id, request.public_id);
    let me = console.clone();
    let id = request.id;
    tokio::spawn(async move {
        let maker = me.clone();
        let link2 = link.clone();
        let outcome = tokio::task::spawn_blocking(move || maker.make_media(id, spec, &link2)).await;
        if let (Ok(Some(text)), Some(customer)) = (outcome, customer) {
            me.mail_customer(customer, &text, &link).await;
        }
    });
    Ok(request)
}

impl Console {
    /// Makes the media of request `id` (a blocking task), records the
    /// outcome, tells the customer in the console: what it said.
    fn make_media(&self, id: i64, spec: MediaSpec, link: &str) -> Option<String> {
        let started = std::time::Instant::now();
        let made = Db::open(self.store.root()).and_then(|mut db| bootmedia::make(&self.store, &mut db, &spec));
        let outcome = match made {
            Ok(m) => {
                info!(
                    "console: made {} boot media #{} for {} in {:.1} s",
                    m.media.kind,
                    m.media.id,
                    spec.machine,
                    started.elapsed().as_secs_f64()
                );
                Ok(m.media.id)
            }
            Err(e) => {
                warn!("console: boot media for {} failed: {e:#}", spec.machine);
                Err(format!("{e:#}"))
            }
        };
        let finished = Db::open(self.store.root()).and_then(|mut db| db.finish_media_request(id, outcome, link));
        match finished {
            Ok(text) => Some(text),
            Err(e) => {
                warn!("console: cannot record the outcome of boot media request {id}: {e:#}");
                None
            }
        }
    }

    /// Mails `text` to the customer's contact address, if there are both a
    /// mailer and an address. A failure is logged: the notice is in the
    /// console anyway.
    async fn mail_customer(self: &Arc<Self>, customer: i64, text: &str, link: &str) {
        let Some(mailer) = &self.mailer else { return };
        let Ok(Some(to)) = self.db(move |db| db.customer_email(customer)).await else { return };
        let url = self.public_url.as_deref().map(|u| format!("{}{link}", u.trim_end_matches('/'))).unwrap_or_default();
        let body = format!("{text}\n\n{url}\n\n-- \nLifeline backup service\n");
        match mailer.send(&to, text, body).await {
            Ok(()) => info!("console: mailed {to}: {text}"),
            Err(e) => warn!("console: {e:#}"),
        }
    }

    /// The CA booted machines must trust: the receiver's own.
    fn ca_pem(&self) -> Result<Vec<u8>, Error> {
        let path = self.store.ca_cert();
        std::fs::read(&path).map_err(|e| {
            Error::Internal(anyhow::anyhow!(
                "cannot read the receiver's CA {} ({e}): a receiver with a certificate of its own (--tls-cert) cannot make boot media here yet",
                path.display()
            ))
        })
    }
}

/// A request's errors that are the caller's to fix.
fn as_bad_request(e: Error) -> Error {
    match e {
        Error::Internal(e) => Error::BadRequest(format!("{e:#}")),
        e => e,
    }
}

/// The media request with this URL id, if the caller may see it.
pub async fn media_request(console: &Arc<Console>, caller: &Caller, id: String) -> Result<MediaRequest, Error> {
    let scope = caller.scope();
    console.db(move |db| db.media_request(scope, &id)).await?.ok_or(Error::NotFound)
}

/// Arms ready network-boot media for `minutes` (0: disarms it).
pub async fn arm(console: &Arc<Console>, caller: &Caller, id: String, minutes: u64) -> Result<MediaRequest, Error> {
    caller.require(Role::Operator)?;
    if minutes > 7 * 24 * 60 {
        return Err(Error::BadRequest("network boot is armed for at most 7 days".into()));
    }
    let r = media_request(console, caller, id.clone()).await?;
    let media = r.media.ok_or_else(|| Error::BadRequest("these media are not made yet".into()))?;
    console.db(move |db| db.arm_boot_media(media, minutes * 60)).await.map_err(as_bad_request)?;
    media_request(console, caller, id).await
}

/// Revokes media: its token stops working, nothing of it is served.
pub async fn revoke(console: &Arc<Console>, caller: &Caller, id: String) -> Result<MediaRequest, Error> {
    caller.require(Role::Operator)?;
    let r = media_request(console, caller, id.clone()).await?;
    let media = r.media.ok_or_else(|| Error::BadRequest("these media are not made yet".into()))?;
    console.db(move |db| db.revoke_boot_media(media)).await?;
    media_request(console, caller, id).await
}

/// The file of ready ISO or USB media, and the name to save it under.
pub async fn media_file(console: &Arc<Console>, caller: &Caller, id: String) -> Result<(PathBuf, String), Error> {
    caller.require(Role::Operator)?;
    let r = media_request(console, caller, id).await?;
    let (Some(media), "ready", false) = (r.media, r.state.as_str(), r.revoked) else {
        return Err(Error::NotFound);
    };
    let file = lifeline_boot_server::mediadownload::media_file(&r.kind).ok_or(Error::NotFound)?;
    let path = console.store.boot_media(media).join(file);
    let ext = if r.kind == "iso" { "iso" } else { "img" };
    let (actor, customer, machine) = (caller.user.login.clone(), caller.user.customer_id, r.machine.clone());
    console
        .db(move |db| db.audit_by(customer, Some(&machine), &actor, "boot media downloaded", &format!("#{media}")))
        .await?;
    Ok((path, format!("lifeline-{}-{}.{ext}", r.machine, r.mode)))
}
