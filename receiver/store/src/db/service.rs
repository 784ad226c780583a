//! The service's self-service records (migration `0008_console.sql`): PCs a
//! customer registers, the boot media its users ask for, and what the
//! console tells them when it is done. Scoped like every console query
//! ([`Scope`]).

use rusqlite::{params, OptionalExtension, Row};

use super::console::{audit_by, public_id, Scope};
use super::{audit, boot::normalize_mac, Db};
use lifeline_core::credential::MachineName;

/// A PC as its customer registers it.
#[derive(Debug, Clone)]
pub struct NewPc {
    pub name: MachineName,
    pub mac: Option<String>,
    pub ip: Option<String>,
    /// `receiver` (images to the service) or `local` (to attached storage).
    pub style: String,
    pub notes: String,
}

/// Boot media asked for in the console.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MediaRequest {
    #[serde(skip)]
    pub id: i64,
    #[serde(rename = "id")]
    pub public_id: String,
    pub machine: String,
    pub kind: String,
    pub mode: String,
    /// making, ready or failed.
    pub state: String,
    /// The boot_media row once made.
    #[serde(skip)]
    pub media: Option<i64>,
    pub error: String,
    pub asked_by: String,
    pub created_at: String,
    pub done_at: Option<String>,
    /// Network boot: served until then (UTC), if armed.
    pub armed_until: Option<String>,
    pub used: bool,
    pub revoked: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Notification {
    pub id: i64,
    pub at: String,
    pub text: String,
    pub link: String,
}

const REQUEST_COLUMNS: &str = "r.id, r.public_id, r.machine, r.kind, r.mode, r.state, r.media, r.error, r.asked_by,
     r.created_at, r.done_at,
     CASE WHEN b.armed_until > strftime('%Y-%m-%dT%H:%M:%SZ', 'now') THEN b.armed_until END,
     b.used_at IS NOT NULL, coalesce(b.revoked, 0)";

fn request_of(r: &Row<'_>) -> rusqlite::Result<MediaRequest> {
    Ok(MediaRequest {
        id: r.get(0)?,
        public_id: r.get(1)?,
        machine: r.get(2)?,
        kind: r.get(3)?,
        mode: r.get(4)?,
        state: r.get(5)?,
        media: r.get(6)?,
        error: r.get(7)?,
        asked_by: r.get(8)?,
        created_at: r.get(9)?,
        done_at: r.get(10)?,
        armed_until: r.get(11)?,
        used: r.get(12)?,
        revoked: r.get(13)?,
    })
}

impl Db {
    /// Registers a PC for `customer` with the credential whose hash is
    /// given, within the customer's machine quota. Audited.
    pub fn register_pc(
        &mut self,
        customer: Option<i64>,
        pc: &NewPc,
        token_hash: &[u8; 32],
        actor: &str,
    ) -> anyhow::Result<String> {
        if !matches!(pc.style.as_str(), "receiver" | "local") {
            anyhow::bail!("a backup style is receiver (to the service) or local (to storage attached to the PC)");
        }
        let mac = pc
            .mac
            .as_deref()
            .filter(|m| !m.trim().is_empty())
            .map(normalize_mac)
            .transpose()
            .map_err(anyhow::Error::msg)?;
        let ip = match pc.ip.as_deref().map(str::trim).filter(|i| !i.is_empty()) {
            Some(ip) => Some(
                ip.parse::<std::net::IpAddr>()
                    .map_err(|_| anyhow::anyhow!("{ip:?} is not an IP address (192.0.2.10, 2001:db8::10)"))?
                    .to_string(),
            ),
            None => None,
        };
        let tx = self.write()?;
        if let Some(c) = customer {
            let (count, quota): (i64, Option<i64>) = tx.query_row(
                "SELECT (SELECT count(*) FROM machines WHERE customer_id = ?1), quota_machines FROM customers WHERE id = ?1",
                [c],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            if quota.is_some_and(|q| count >= q) {
                anyhow::bail!(
                    "your plan allows {} machines and all are registered: remove one or ask your provider for more",
                    quota.unwrap_or(0)
                );
            }
        }
        let taken: bool =
            tx.query_row("SELECT count(*) FROM machines WHERE name = ?1", [pc.name.as_str()], |r| r.get(0))?;
        if taken {
            anyhow::bail!("the name {} is taken: choose another", pc.name);
        }
        if let Some(mac) = &mac {
            let taken: bool = tx.query_row("SELECT count(*) FROM machines WHERE mac = ?1", [mac], |r| r.get(0))?;
            if taken {
                anyhow::bail!("the MAC address {mac} is registered already: check it");
            }
        }
        let id = public_id();
        tx.execute(
            "INSERT INTO machines (name, token_hash, notes, public_id, customer_id, mac, ip, backup_style)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![pc.name.as_str(), &token_hash[..], pc.notes.trim(), id, customer, mac, ip, pc.style],
        )?;
        audit_by(
            &tx,
            customer,
            Some(pc.name.as_str()),
            actor,
            "machine added",
            &format!("registered in the console ({} backups)", pc.style),
        )?;
        tx.commit()?;
        Ok(id)
    }

    /// Records boot media asked for (state `making`).
    pub fn add_media_request(
        &mut self,
        customer: Option<i64>,
        machine: &str,
        kind: &str,
        mode: &str,
        actor: &str,
    ) -> anyhow::Result<MediaRequest> {
        let id = public_id();
        self.conn.execute(
            "INSERT INTO media_requests (public_id, customer_id, machine, kind, mode, asked_by) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![id, customer, machine, kind, mode, actor],
        )?;
        audit_by(&self.conn, customer, Some(machine), actor, "boot media asked for", &format!("{kind} ({mode})"))?;
        Ok(self.media_request(Scope::Provider, &id)?.expect("just inserted"))
    }

    /// Marks a request made (`Ok(media id)`) or failed, and tells its
    /// customer: what it told.
    pub fn finish_media_request(
        &mut self,
        id: i64,
        outcome: Result<i64, String>,
        link: &str,
    ) -> anyhow::Result<String> {
        let (customer, machine, kind): (Option<i64>, String, String) =
            self.conn.query_row("SELECT customer_id, machine, kind FROM media_requests WHERE id = ?1", [id], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?;
        let what = match kind.as_str() {
            "iso" => "boot ISO",
            "usb" => "USB boot image",
            _ => "network boot",
        };
        let text = match &outcome {
            Ok(media) => {
                self.conn.execute(
                    "UPDATE media_requests SET state = 'ready', media = ?2, done_at = strftime('%Y-%m-%dT%H:%M:%SZ', 'now') WHERE id = ?1",
                    params![id, media],
                )?;
                format!("The {what} for {machine} is ready.")
            }
            Err(why) => {
                self.conn.execute(
                    "UPDATE media_requests SET state = 'failed', error = ?2, done_at = strftime('%Y-%m-%dT%H:%M:%SZ', 'now') WHERE id = ?1",
                    params![id, why],
                )?;
                format!("The {what} for {machine} could not be made: {why}")
            }
        };
        self.conn.execute(
            "INSERT INTO notifications (customer_id, text, link) VALUES (?1, ?2, ?3)",
            params![customer, text, link],
        )?;
        audit(
            &self.conn,
            Some(&machine),
            if outcome.is_ok() { "boot media made" } else { "boot media failed" },
            &text,
        )?;
        Ok(text)
    }

    /// Requests left `making` by a receiver that stopped: failed, so that
    /// nobody waits on them.
    pub fn fail_unfinished_media_requests(&mut self) -> anyhow::Result<usize> {
        Ok(self.conn.execute(
            "UPDATE media_requests SET state = 'failed', error = 'the receiver stopped while making it: ask again',
                 done_at = strftime('%Y-%m-%dT%H:%M:%SZ', 'now') WHERE state = 'making'",
            [],
        )?)
    }

    pub fn media_request(&self, scope: Scope, public_id: &str) -> anyhow::Result<Option<MediaRequest>> {
        Ok(self
            .conn
            .query_row(
                &format!(
                    "SELECT {REQUEST_COLUMNS} FROM media_requests r LEFT JOIN boot_media b ON b.id = r.media
                     WHERE r.public_id = ?1 AND (?2 IS NULL OR r.customer_id = ?2)"
                ),
                params![public_id, scope.customer()],
                request_of,
            )
            .optional()?)
    }

    /// A machine's media requests, newest first.
    pub fn media_requests_of(&self, machine: &str) -> anyhow::Result<Vec<MediaRequest>> {
        let mut st = self.conn.prepare(&format!(
            "SELECT {REQUEST_COLUMNS} FROM media_requests r LEFT JOIN boot_media b ON b.id = r.media
             WHERE r.machine = ?1 ORDER BY r.id DESC LIMIT 50"
        ))?;
        let rows = st.query_map([machine], request_of)?.collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// The newest notifications for `scope`'s users.
    pub fn notifications(&self, scope: Scope, limit: i64) -> anyhow::Result<Vec<Notification>> {
        let mut st = self.conn.prepare(
            "SELECT id, at, text, link FROM notifications WHERE customer_id IS ?1 ORDER BY id DESC LIMIT ?2",
        )?;
        let rows = st
            .query_map(params![scope.customer(), limit], |r| {
                Ok(Notification { id: r.get(0)?, at: r.get(1)?, text: r.get(2)?, link: r.get(3)? })
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// The contact address of a customer, for mail.
    pub fn customer_email(&self, customer: i64) -> anyhow::Result<Option<String>> {
        Ok(self
            .conn
            .query_row("SELECT email FROM customers WHERE id = ?1", [customer], |r| r.get::<_, String>(0))
            .optional()?
            .filter(|e| !e.is_empty()))
    }
}
