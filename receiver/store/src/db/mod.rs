//! The receiver's management database (SQLite, `<store>/receiver.db`):
//! machines and their credentials, and an audit trail (here); boot media and
//! sessions ([`boot`]); jobs and images ([`jobs`]); quotas ([`quota`]). The schema lives in
//! `receiver/store/migrations/NNNN_*.sql`, applied in order; `PRAGMA
//! user_version` records how many have run.
//!
//! Several processes use the file at once (the daemon authenticating agents,
//! `lifeline-receiver machine add` registering one), so it runs in WAL mode
//! with a busy timeout.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use rusqlite::{params, Connection, OptionalExtension};

use lifeline_core::credential::MachineName;

use crate::layout::StoreLayout;

pub mod boot;
pub mod console;
pub mod history;
pub mod jobs;
pub mod quota;
pub mod service;

/// The migrations, in order. Append only: a released one never changes.
const MIGRATIONS: &[(&str, &str)] = &[
    ("0001_machines", include_str!("../../migrations/0001_machines.sql")),
    ("0002_boot", include_str!("../../migrations/0002_boot.sql")),
    ("0003_jobs", include_str!("../../migrations/0003_jobs.sql")),
    ("0004_restore_from", include_str!("../../migrations/0004_restore_from.sql")),
    ("0005_netboot_armed", include_str!("../../migrations/0005_netboot_armed.sql")),
    ("0006_quotas", include_str!("../../migrations/0006_quotas.sql")),
    ("0007_history_retention", include_str!("../../migrations/0007_history_retention.sql")),
    ("0008_console", include_str!("../../migrations/0008_console.sql")),
];

/// A registered machine, as `machine list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    pub name: String,
    pub created_at: String,
    pub notes: String,
}

/// One row of the audit trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub at: String,
    pub machine: Option<String>,
    pub event: String,
    pub detail: String,
}

pub struct Db {
    pub(crate) conn: Connection,
    path: PathBuf,
}

impl Db {
    /// The database of the store at `store`, created and migrated as needed.
    pub fn open(store: &Path) -> anyhow::Result<Db> {
        let path = StoreLayout::new(store).database();
        create_private_file(&path)?;
        let conn = Connection::open(&path).with_context(|| format!("cannot open the database {}", path.display()))?;
        conn.busy_timeout(Duration::from_secs(10))?;
        set_wal(&conn).with_context(|| format!("cannot switch the database {} to WAL", path.display()))?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        let mut db = Db { conn, path };
        db.migrate()?;
        Ok(db)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Applies the migrations this database lacks, one IMMEDIATE transaction
    /// each. The version is read again inside the write lock: two processes
    /// opening a new store at once (a receiver starting while an operator
    /// adds a machine) must not both apply the same migration.
    fn migrate(&mut self) -> anyhow::Result<()> {
        // Up to date (every open but the first): no write lock taken, which
        // would make other connections' transactions wait or fail.
        let version: usize = self.conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version == MIGRATIONS.len() {
            return Ok(());
        }
        loop {
            let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let version: usize = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
            if version > MIGRATIONS.len() {
                anyhow::bail!(
                    "the database {} has schema version {version}, newer than this receiver knows ({}); run a newer lifeline-receiver",
                    self.path.display(),
                    MIGRATIONS.len()
                );
            }
            let Some((name, sql)) = MIGRATIONS.get(version) else {
                return Ok(());
            };
            tx.execute_batch(sql).with_context(|| format!("migration {name}"))?;
            tx.pragma_update(None, "user_version", version + 1)?;
            tx.commit()?;
            tracing::info!("database {}: applied migration {name}", self.path.display());
        }
    }

    /// A write transaction, holding SQLite's write lock from its start. A
    /// deferred one that reads first cannot take the lock later while
    /// another connection writes: SQLite answers "database is locked" at
    /// once rather than waiting (the busy timeout does not apply).
    pub(crate) fn write(&mut self) -> rusqlite::Result<rusqlite::Transaction<'_>> {
        self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
    }

    /// Registers `name` with the credential secret whose hash is given.
    pub fn add_machine(&mut self, name: &MachineName, token_hash: &[u8; 32], notes: &str) -> anyhow::Result<()> {
        let tx = self.write()?;
        let exists: Option<i64> =
            tx.query_row("SELECT id FROM machines WHERE name = ?1", [name.as_str()], |r| r.get(0)).optional()?;
        if exists.is_some() {
            anyhow::bail!(
                "machine {name} is already registered; `lifeline-receiver machine reissue {name}` gives it a new credential"
            );
        }
        tx.execute(
            "INSERT INTO machines (name, token_hash, notes, public_id) VALUES (?1, ?2, ?3, ?4)",
            params![name.as_str(), &token_hash[..], notes, console::public_id()],
        )?;
        audit(&tx, Some(name.as_str()), "machine added", notes)?;
        tx.commit()?;
        Ok(())
    }

    /// Replaces the credential of `name`; the old one stops working.
    pub fn reissue(&mut self, name: &MachineName, token_hash: &[u8; 32]) -> anyhow::Result<()> {
        let tx = self.write()?;
        let n =
            tx.execute("UPDATE machines SET token_hash = ?2 WHERE name = ?1", params![name.as_str(), &token_hash[..]])?;
        if n == 0 {
            anyhow::bail!("no machine {name} is registered (see `lifeline-receiver machine list`)");
        }
        audit(&tx, Some(name.as_str()), "credential reissued", "")?;
        tx.commit()?;
        Ok(())
    }

    /// Unregisters `name`: its credential stops working (its data is the
    /// caller's to move aside: `StoreLayout::retire_machine_data`).
    pub fn remove_machine(&mut self, name: &MachineName) -> anyhow::Result<()> {
        let tx = self.write()?;
        // Audited first: the entry takes its customer from the machine's row.
        audit(&tx, Some(name.as_str()), "machine removed", "")?;
        let n = tx.execute("DELETE FROM machines WHERE name = ?1", [name.as_str()])?;
        if n == 0 {
            anyhow::bail!("no machine {name} is registered (see `lifeline-receiver machine list`)");
        }
        tx.commit()?;
        Ok(())
    }

    pub fn machines(&self) -> anyhow::Result<Vec<Machine>> {
        let mut st = self.conn.prepare("SELECT name, created_at, notes FROM machines ORDER BY name")?;
        let rows = st.query_map([], |r| Ok(Machine { name: r.get(0)?, created_at: r.get(1)?, notes: r.get(2)? }))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The credential hash of `name`, if it is registered.
    pub fn token_hash(&self, name: &str) -> anyhow::Result<Option<[u8; 32]>> {
        let h: Option<Vec<u8>> =
            self.conn.query_row("SELECT token_hash FROM machines WHERE name = ?1", [name], |r| r.get(0)).optional()?;
        Ok(h.and_then(|v| v.try_into().ok()))
    }

    pub fn audit(&self, machine: Option<&str>, event: &str, detail: &str) -> anyhow::Result<()> {
        audit(&self.conn, machine, event, detail)
    }

    /// The last `n` audit entries, oldest first.
    pub fn audit_trail(&self, n: usize) -> anyhow::Result<Vec<AuditEntry>> {
        let mut st = self.conn.prepare(
            "SELECT at, machine, event, detail FROM (SELECT * FROM audit ORDER BY id DESC LIMIT ?1) ORDER BY id",
        )?;
        let rows = st.query_map([n as i64], |r| {
            Ok(AuditEntry { at: r.get(0)?, machine: r.get(1)?, event: r.get(2)?, detail: r.get(3)? })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

/// Appends to the audit trail; the entry concerns the machine's customer
/// (so that the customer's users see it in the console).
pub(crate) fn audit(conn: &Connection, machine: Option<&str>, event: &str, detail: &str) -> anyhow::Result<()> {
    conn.execute(
        "INSERT INTO audit (machine, event, detail, customer_id)
         VALUES (?1, ?2, ?3, (SELECT customer_id FROM machines WHERE name = ?1))",
        params![machine, event, detail],
    )?;
    Ok(())
}

/// The database holds every machine's credential hash and the audit trail:
/// mode 0600, set before SQLite first opens it (its `-wal` and `-shm` files
/// take the database file's mode), and tightened on a store an older
/// receiver made.
fn create_private_file(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            for p in [path.to_path_buf(), path.with_extension("db-wal"), path.with_extension("db-shm")] {
                if p.exists() {
                    crate::private::tighten(&p, 0o600)?;
                }
            }
            Ok(())
        }
        Err(e) => Err(e).with_context(|| format!("cannot create the database {}", path.display())),
    }
}

/// Switches to WAL once for good (the mode is stored in the file). SQLite
/// answers BUSY at once, without its busy handler, when another connection
/// holds the file while the mode changes: that happens when two processes
/// open a new store together, so the switch is retried for the busy timeout.
fn set_wal(conn: &Connection) -> rusqlite::Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get::<_, String>(0)) {
            Ok(_) => return Ok(()),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A receiver starting while an operator's command opens the same new
    /// store: every opener must see one fully migrated schema (this failed
    /// with "duplicate column name" when the version was read outside the
    /// migration's write lock).
    #[test]
    fn openers_racing_on_a_new_store_migrate_it_once() {
        for _ in 0..20 {
            let d = tempfile::tempdir().unwrap();
            let barrier = std::sync::Barrier::new(4);
            std::thread::scope(|s| {
                let openers: Vec<_> = (0..4)
                    .map(|_| {
                        s.spawn(|| {
                            barrier.wait();
                            Db::open(d.path()).map(|_| ())
                        })
                    })
                    .collect();
                for o in openers {
                    o.join().unwrap().unwrap();
                }
            });
            let db = Db::open(d.path()).unwrap();
            let v: usize = db.conn.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
            assert_eq!(v, MIGRATIONS.len());
        }
    }

    #[test]
    fn machines_are_registered_once_and_audited() {
        let d = tempfile::tempdir().unwrap();
        let mut db = Db::open(d.path()).unwrap();
        let m = MachineName::new("web1").unwrap();
        db.add_machine(&m, &[1; 32], "rack 3").unwrap();
        let e = db.add_machine(&m, &[2; 32], "").unwrap_err();
        assert!(e.to_string().contains("already registered"), "{e}");
        assert_eq!(db.token_hash("web1").unwrap(), Some([1; 32]));
        db.reissue(&m, &[3; 32]).unwrap();
        assert_eq!(db.token_hash("web1").unwrap(), Some([3; 32]));
        drop(db);
        // Reopened (migrations not run twice), seen by another connection.
        let mut db = Db::open(d.path()).unwrap();
        assert_eq!(db.machines().unwrap().len(), 1);
        assert_eq!(db.machines().unwrap()[0].notes, "rack 3");
        db.remove_machine(&m).unwrap();
        assert_eq!(db.token_hash("web1").unwrap(), None);
        assert!(db.remove_machine(&m).is_err());
        let events: Vec<_> = db.audit_trail(10).unwrap().into_iter().map(|a| a.event).collect();
        assert_eq!(events, ["machine added", "credential reissued", "machine removed"]);
    }
}
