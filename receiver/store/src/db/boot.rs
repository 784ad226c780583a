//! The boot media part of the management database: MAC addresses of
//! machines, the boot OSes made for them and the one-time tokens those carry
//! (see `receiver/store/migrations/0002_boot.sql`).
//!
//! A boot token is a credential in the machine's usual `NAME:SECRET` form
//! that works exactly once: claiming it (`BootSessions.Claim`, the first
//! thing the boot OS does) marks the media used and opens a boot session,
//! a fresh credential good for the machine's image store only and for a
//! limited time. A second boot with the same token is refused, so a boot OS
//! left on a USB stick or a copied network-boot file is worth nothing.
//!
//! Network-boot media are served over plain HTTP, so only while an
//! operator has armed them ([`Db::arm_boot_media`], for a window) and only
//! at an unguessable URL (their `url_secret`, never the sequential id); ISO
//! and USB media have no URL and are never served. A token found already
//! claimed when the machine boots (a second claim of it, or the machine
//! asking for its script from another address than the claim came from)
//! is an alarm in the audit trail (event `boot token alarm`, see
//! [`BOOT_TOKEN_ALARM`]).

use anyhow::Context;
use rusqlite::{params, OptionalExtension};

use crate::db::{audit, Db};
use lifeline_core::credential::MachineName;

/// How long a boot session's credential works.
pub const SESSION_SECS: i64 = 24 * 3600;

/// The audit event of a boot token found claimed by someone else.
pub const BOOT_TOKEN_ALARM: &str = "boot token alarm";

/// UTC now as the database writes times.
const NOW: &str = "strftime('%Y-%m-%dT%H:%M:%SZ', 'now')";

/// A boot OS made for a machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootMedia {
    pub id: i64,
    pub machine: String,
    pub kind: String,
    pub mode: String,
    pub style: String,
    pub image: String,
    pub cmdline: String,
    pub created_at: String,
    pub used_at: Option<String>,
    pub used_from: String,
    pub revoked: bool,
    /// Restore media reading another machine's images (`None`: its own).
    pub image_of: Option<String>,
    /// The secret path component network boot serves the files under
    /// (network-boot media only; `None`: never served).
    pub url_secret: Option<String>,
    /// Until when network boot serves it (UTC), if it was ever armed.
    pub armed_until: Option<String>,
}

impl BootMedia {
    /// Media of `machine` as made, before the database records it: no id,
    /// unused, not armed, no image, command line or URL yet.
    pub fn new(machine: &str, kind: &str, mode: &str, style: &str) -> BootMedia {
        BootMedia {
            id: 0,
            machine: machine.to_owned(),
            kind: kind.to_owned(),
            mode: mode.to_owned(),
            style: style.to_owned(),
            image: String::new(),
            cmdline: String::new(),
            created_at: String::new(),
            used_at: None,
            used_from: String::new(),
            revoked: false,
            image_of: None,
            url_secret: None,
            armed_until: None,
        }
    }

    /// Its token may still be claimed.
    pub fn usable(&self) -> bool {
        self.used_at.is_none() && !self.revoked
    }
}

/// Why a boot token was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Unknown,
    Used { media: i64, at: String, from: String },
    Revoked { media: i64 },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Unknown => {
                f.write_str("no boot media of this machine has this token (made for another machine, or removed)")
            }
            Refusal::Used { media, at, from } => {
                write!(f, "the token of boot media #{media} was already used at {at} from {from}; each works once")
            }
            Refusal::Revoked { media } => write!(f, "boot media #{media} was revoked"),
        }
    }
}

/// A MAC address in the form the database keeps (`aa:bb:cc:dd:ee:ff`).
pub fn normalize_mac(mac: &str) -> Result<String, String> {
    let hex: String = mac.chars().filter(|c| !matches!(c, ':' | '-' | '.')).collect::<String>().to_ascii_lowercase();
    if hex.len() != 12 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!("{mac:?} is not a MAC address (like 52:54:00:12:34:56)"));
    }
    Ok(hex.as_bytes().chunks(2).map(|p| std::str::from_utf8(p).expect("hex")).collect::<Vec<_>>().join(":"))
}

const MEDIA_COLUMNS: &str =
    "id, machine, kind, mode, style, image, cmdline, created_at, used_at, used_from, revoked, image_of, url_secret, \
     armed_until";

/// The filter of media network boot serves now: network-boot, unused, not
/// revoked, with a URL, inside their armed window.
const SERVED: &str = "kind = 'netboot' AND used_at IS NULL AND revoked = 0 AND url_secret IS NOT NULL \
     AND armed_until > strftime('%Y-%m-%dT%H:%M:%SZ', 'now')";

fn media_row(r: &rusqlite::Row) -> rusqlite::Result<BootMedia> {
    Ok(BootMedia {
        id: r.get(0)?,
        machine: r.get(1)?,
        kind: r.get(2)?,
        mode: r.get(3)?,
        style: r.get(4)?,
        image: r.get(5)?,
        cmdline: r.get(6)?,
        created_at: r.get(7)?,
        used_at: r.get(8)?,
        used_from: r.get(9)?,
        revoked: r.get::<_, i64>(10)? != 0,
        image_of: r.get(11)?,
        url_secret: r.get(12)?,
        armed_until: r.get(13)?,
    })
}

fn now_unix() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

impl Db {
    /// Records the MAC address `name` network-boots from (`None`: forget it).
    pub fn set_mac(&mut self, name: &MachineName, mac: Option<&str>) -> anyhow::Result<()> {
        let mac = mac.map(normalize_mac).transpose().map_err(anyhow::Error::msg)?;
        let tx = self.write()?;
        if let Some(m) = &mac {
            let other: Option<String> = tx
                .query_row("SELECT name FROM machines WHERE mac = ?1 AND name != ?2", params![m, name.as_str()], |r| {
                    r.get(0)
                })
                .optional()?;
            if let Some(other) = other {
                anyhow::bail!("MAC {m} is machine {other}'s already (`lifeline-receiver machine show {other}`)");
            }
        }
        let n = tx.execute("UPDATE machines SET mac = ?2 WHERE name = ?1", params![name.as_str(), mac])?;
        if n == 0 {
            anyhow::bail!("no machine {name} is registered (see `lifeline-receiver machine list`)");
        }
        audit(&tx, Some(name.as_str()), "mac set", mac.as_deref().unwrap_or("none"))?;
        tx.commit()?;
        Ok(())
    }

    /// The MAC address of `name`, if one is recorded.
    pub fn mac_of(&self, name: &str) -> anyhow::Result<Option<String>> {
        Ok(self.conn.query_row("SELECT mac FROM machines WHERE name = ?1", [name], |r| r.get(0)).optional()?.flatten())
    }

    /// The machine that network-boots from `mac`.
    pub fn machine_by_mac(&self, mac: &str) -> anyhow::Result<Option<String>> {
        let Ok(mac) = normalize_mac(mac) else { return Ok(None) };
        Ok(self.conn.query_row("SELECT name FROM machines WHERE mac = ?1", [mac], |r| r.get(0)).optional()?)
    }

    /// Records boot media made for `m.machine` (its `id` is assigned) with
    /// the hash of its one-time token; returns the id.
    pub fn add_boot_media(&mut self, m: &BootMedia, token_hash: &[u8; 32]) -> anyhow::Result<i64> {
        let tx = self.write()?;
        tx.execute(
            "INSERT INTO boot_media (machine, kind, mode, style, image, cmdline, token_hash, image_of, url_secret) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![m.machine, m.kind, m.mode, m.style, m.image, m.cmdline, &token_hash[..], m.image_of, m.url_secret],
        )
        .with_context(|| format!("recording boot media for machine {} (is it registered?)", m.machine))?;
        let id = tx.last_insert_rowid();
        audit(&tx, Some(&m.machine), "boot media made", &format!("#{id} {} {} {}", m.kind, m.mode, m.style))?;
        tx.commit()?;
        Ok(id)
    }

    pub fn boot_media(&self, id: i64) -> anyhow::Result<Option<BootMedia>> {
        media_by_id(&self.conn, id)
    }

    /// The boot media of `machine` (all machines: `None`), newest last.
    pub fn boot_media_of(&self, machine: Option<&str>) -> anyhow::Result<Vec<BootMedia>> {
        let sql = format!("SELECT {MEDIA_COLUMNS} FROM boot_media WHERE ?1 IS NULL OR machine = ?1 ORDER BY id");
        let mut st = self.conn.prepare(&sql)?;
        let rows = st.query_map([machine], media_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The newest network-boot media of `machine` whose token is unused.
    pub fn pending_netboot(&self, machine: &str) -> anyhow::Result<Option<BootMedia>> {
        let sql = format!(
            "SELECT {MEDIA_COLUMNS} FROM boot_media WHERE machine = ?1 AND kind = 'netboot' \
             AND used_at IS NULL AND revoked = 0 ORDER BY id DESC LIMIT 1"
        );
        Ok(self.conn.query_row(&sql, [machine], media_row).optional()?)
    }

    /// The newest media of `machine` network boot serves now (armed).
    pub fn armed_netboot(&self, machine: &str) -> anyhow::Result<Option<BootMedia>> {
        let sql =
            format!("SELECT {MEDIA_COLUMNS} FROM boot_media WHERE machine = ?1 AND {SERVED} ORDER BY id DESC LIMIT 1");
        Ok(self.conn.query_row(&sql, [machine], media_row).optional()?)
    }

    /// The media network boot serves now at secret path component `secret`.
    pub fn served_media(&self, secret: &str) -> anyhow::Result<Option<BootMedia>> {
        let sql = format!("SELECT {MEDIA_COLUMNS} FROM boot_media WHERE url_secret = ?1 AND {SERVED}");
        Ok(self.conn.query_row(&sql, [secret], media_row).optional()?)
    }

    /// The newest network-boot media of `machine` claimed while its armed
    /// window is still open: asked for again in that window, from another
    /// address, someone else claimed it.
    pub fn claimed_while_armed(&self, machine: &str) -> anyhow::Result<Option<BootMedia>> {
        let sql = format!(
            "SELECT {MEDIA_COLUMNS} FROM boot_media WHERE machine = ?1 AND kind = 'netboot' AND used_at IS NOT NULL \
             AND armed_until > {NOW} ORDER BY id DESC LIMIT 1"
        );
        Ok(self.conn.query_row(&sql, [machine], media_row).optional()?)
    }

    /// Arms network-boot media `id` for `secs` seconds from now (0: disarms
    /// it): network boot serves it to its machine until then. Only unused,
    /// unrevoked network-boot media with a URL can be armed.
    pub fn arm_boot_media(&mut self, id: i64, secs: u64) -> anyhow::Result<BootMedia> {
        let tx = self.write()?;
        let Some(m) = media_by_id(&tx, id)? else {
            anyhow::bail!("no boot media #{id} (see `lifeline-receiver bootos list`)");
        };
        if m.kind != "netboot" {
            anyhow::bail!("boot media #{id} is {} media: it is carried by hand, never served over the network", m.kind);
        }
        if !m.usable() {
            anyhow::bail!(
                "boot media #{id} was used or revoked: make new media (`lifeline-receiver bootos make {} --arm`)",
                m.machine
            );
        }
        if m.url_secret.is_none() {
            anyhow::bail!(
                "boot media #{id} was made by an older receiver (its initrd may hold the password): revoke it and make new media (`lifeline-receiver bootos make {} --arm`)",
                m.machine
            );
        }
        tx.execute(
            "UPDATE boot_media SET armed_until = strftime('%Y-%m-%dT%H:%M:%SZ', 'now', ?2) WHERE id = ?1",
            params![id, format!("+{secs} seconds")],
        )?;
        let m = media_by_id(&tx, id)?.context("boot media vanished")?;
        let until = m.armed_until.clone().unwrap_or_default();
        let event = if secs == 0 { "boot media disarmed" } else { "boot media armed" };
        audit(&tx, Some(&m.machine), event, &format!("#{id} until {until}"))?;
        tx.commit()?;
        Ok(m)
    }

    /// Revokes boot media: its token stops working, its files are no longer
    /// served.
    pub fn revoke_boot_media(&mut self, id: i64) -> anyhow::Result<BootMedia> {
        let tx = self.write()?;
        let Some(m) = media_by_id(&tx, id)? else {
            anyhow::bail!("no boot media #{id} (see `lifeline-receiver bootos list`)");
        };
        tx.execute("UPDATE boot_media SET revoked = 1 WHERE id = ?1", [id])?;
        tx.execute("DELETE FROM boot_sessions WHERE media = ?1", [id])?;
        audit(&tx, Some(&m.machine), "boot media revoked", &format!("#{id}"))?;
        tx.commit()?;
        Ok(m)
    }

    /// Claims the boot token of `machine` whose hash is `token_hash`, once:
    /// marks its media used and opens a boot session whose credential hash
    /// is `session_hash`. Returns the media.
    pub fn claim_boot(
        &mut self,
        machine: &str,
        token_hash: &[u8; 32],
        session_hash: &[u8; 32],
        from: &str,
    ) -> anyhow::Result<Result<Claimed, Refusal>> {
        let sql = format!("SELECT {MEDIA_COLUMNS} FROM boot_media WHERE machine = ?1 AND token_hash = ?2");
        // Refusals are decided by a read, and written to the audit trail by
        // the caller, aggregated (`crate::refusals`): a flood of bogus
        // claims costs no write transaction each.
        let refusal = |m: &BootMedia| {
            if m.revoked {
                Some(Refusal::Revoked { media: m.id })
            } else {
                m.used_at.clone().map(|at| Refusal::Used { media: m.id, at, from: m.used_from.clone() })
            }
        };
        match self.conn.query_row(&sql, params![machine, &token_hash[..]], media_row).optional()? {
            None => return Ok(Err(Refusal::Unknown)),
            Some(m) => {
                if let Some(r) = refusal(&m) {
                    return Ok(Err(r));
                }
            }
        }
        // Claimed under the write lock, checked again: two claims of one
        // token race, one wins.
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let Some(m) = tx.query_row(&sql, params![machine, &token_hash[..]], media_row).optional()? else {
            return Ok(Err(Refusal::Unknown));
        };
        if let Some(r) = refusal(&m) {
            return Ok(Err(r));
        }
        tx.execute(
            "UPDATE boot_media SET used_at = strftime('%Y-%m-%dT%H:%M:%SZ', 'now'), used_from = ?2 WHERE id = ?1",
            params![m.id, from],
        )?;
        let expires_unix = now_unix() + SESSION_SECS;
        tx.execute(
            "INSERT INTO boot_sessions (token_hash, media, machine, expires, image_of) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![&session_hash[..], m.id, machine, expires_unix, m.image_of],
        )?;
        audit(&tx, Some(machine), "boot token claimed", &format!("#{} from {from}", m.id))?;
        tx.commit()?;
        Ok(Ok(Claimed { media: m, expires_unix }))
    }

    /// The live boot session of `machine` with `session_hash`: `Some(None)`
    /// for one on its own images, `Some(Some(other))` for a restore from
    /// machine `other`'s images.
    pub fn boot_session(&self, machine: &str, session_hash: &[u8; 32]) -> anyhow::Result<Option<Option<String>>> {
        Ok(self
            .conn
            .query_row(
                "SELECT image_of FROM boot_sessions WHERE machine = ?1 AND token_hash = ?2 AND expires > ?3",
                params![machine, &session_hash[..], now_unix()],
                |r| r.get::<_, Option<String>>(0),
            )
            .optional()?)
    }
}

/// A boot token traded for a session: the media, and when the session ends
/// (seconds since the epoch).
#[derive(Debug, PartialEq, Eq)]
pub struct Claimed {
    pub media: BootMedia,
    pub expires_unix: i64,
}

fn media_by_id(conn: &rusqlite::Connection, id: i64) -> anyhow::Result<Option<BootMedia>> {
    let sql = format!("SELECT {MEDIA_COLUMNS} FROM boot_media WHERE id = ?1");
    Ok(conn.query_row(&sql, [id], media_row).optional()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn media(machine: &str) -> BootMedia {
        BootMedia { cmdline: "lifeline.machine=pc1".into(), ..BootMedia::new(machine, "netboot", "backup", "receiver") }
    }

    #[test]
    fn a_boot_token_opens_one_session_once_and_only_for_its_machine() {
        let d = tempfile::tempdir().unwrap();
        let mut db = Db::open(d.path()).unwrap();
        for n in ["pc1", "pc2"] {
            db.add_machine(&MachineName::new(n).unwrap(), &[0; 32], "").unwrap();
        }
        db.set_mac(&MachineName::new("pc1").unwrap(), Some("52-54-00-12-34-5A")).unwrap();
        assert_eq!(db.machine_by_mac("52:54:00:12:34:5a").unwrap().as_deref(), Some("pc1"));
        assert!(
            db.set_mac(&MachineName::new("pc2").unwrap(), Some("52:54:00:12:34:5a")).is_err(),
            "one MAC, one machine"
        );

        let id = db.add_boot_media(&media("pc1"), &[7; 32]).unwrap();
        assert_eq!(db.pending_netboot("pc1").unwrap().map(|m| m.id), Some(id));
        // Another machine's name with pc1's token: unknown.
        assert_eq!(db.claim_boot("pc2", &[7; 32], &[1; 32], "10.0.2.15").unwrap(), Err(Refusal::Unknown));
        let claimed = db.claim_boot("pc1", &[7; 32], &[1; 32], "10.0.2.15").unwrap().unwrap();
        assert_eq!(claimed.media.id, id);
        assert!(claimed.expires_unix > now_unix());
        assert!(db.boot_session("pc1", &[1; 32]).unwrap().is_some());
        assert!(db.boot_session("pc2", &[1; 32]).unwrap().is_none());
        assert!(db.pending_netboot("pc1").unwrap().is_none());
        match db.claim_boot("pc1", &[7; 32], &[2; 32], "10.0.2.16").unwrap() {
            Err(Refusal::Used { media, from, .. }) => assert_eq!((media, from.as_str()), (id, "10.0.2.15")),
            other => panic!("a second claim: {other:?}"),
        }
        assert!(db.boot_session("pc1", &[2; 32]).unwrap().is_none());

        let id2 = db.add_boot_media(&media("pc1"), &[8; 32]).unwrap();
        db.revoke_boot_media(id2).unwrap();
        assert_eq!(db.claim_boot("pc1", &[8; 32], &[3; 32], "x").unwrap(), Err(Refusal::Revoked { media: id2 }));
        // Removing the machine removes its media.
        db.remove_machine(&MachineName::new("pc1").unwrap()).unwrap();
        assert!(db.boot_media_of(Some("pc1")).unwrap().is_empty());
    }

    #[test]
    fn network_boot_serves_armed_netboot_media_only_at_their_secret() {
        let d = tempfile::tempdir().unwrap();
        let mut db = Db::open(d.path()).unwrap();
        db.add_machine(&MachineName::new("pc1").unwrap(), &[0; 32], "").unwrap();
        let secret = "0123456789abcdef0123456789abcdef";
        let net = db.add_boot_media(&BootMedia { url_secret: Some(secret.into()), ..media("pc1") }, &[7; 32]).unwrap();
        let iso = db.add_boot_media(&BootMedia { kind: "iso".into(), ..media("pc1") }, &[8; 32]).unwrap();
        let old = db.add_boot_media(&media("pc1"), &[9; 32]).unwrap();
        // Made, not armed: nothing served.
        assert!(db.armed_netboot("pc1").unwrap().is_none());
        assert!(db.served_media(secret).unwrap().is_none());
        assert!(db.arm_boot_media(iso, 3600).is_err(), "ISO media armed");
        assert!(db.arm_boot_media(old, 3600).is_err(), "media without a URL armed");
        let m = db.arm_boot_media(net, 3600).unwrap();
        assert!(m.armed_until.is_some());
        assert_eq!(db.armed_netboot("pc1").unwrap().map(|m| m.id), Some(net));
        assert_eq!(db.served_media(secret).unwrap().map(|m| m.id), Some(net));
        assert!(db.served_media(&net.to_string()).unwrap().is_none());
        // Disarmed: nothing.
        db.arm_boot_media(net, 0).unwrap();
        assert!(db.served_media(secret).unwrap().is_none());
        db.arm_boot_media(net, 3600).unwrap();
        // Claimed: no longer served; a second claim is an alarm.
        db.claim_boot("pc1", &[7; 32], &[1; 32], "10.0.2.99").unwrap().unwrap();
        assert!(db.served_media(secret).unwrap().is_none());
        assert_eq!(db.claimed_while_armed("pc1").unwrap().map(|m| m.used_from), Some("10.0.2.99".to_string()));
        assert!(matches!(db.claim_boot("pc1", &[7; 32], &[2; 32], "10.0.2.15").unwrap(), Err(Refusal::Used { .. })));
        assert!(db.arm_boot_media(net, 3600).is_err(), "used media armed");
    }
}
