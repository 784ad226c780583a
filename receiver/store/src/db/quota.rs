//! Each machine's quota in the management database (see
//! `receiver/store/migrations/0006_quotas.sql`); [`crate::quota`] enforces
//! it.

use rusqlite::{params, OptionalExtension};

use super::{audit, Db};
use lifeline_core::credential::MachineName;

/// How much of the store one machine may fill; `None`: no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Bytes allocated by its mirror and its image repository together.
    pub bytes: Option<u64>,
    /// Entries (files, directories, links) in its mirror.
    pub files: Option<u64>,
}

impl Limits {
    pub fn is_unlimited(&self) -> bool {
        self.bytes.is_none() && self.files.is_none()
    }
}

impl Db {
    /// The limits of `machine`; `None` if it is not registered.
    pub fn quota(&self, machine: &str) -> anyhow::Result<Option<Limits>> {
        let row: Option<(Option<i64>, Option<i64>)> = self
            .conn
            .query_row("SELECT quota_bytes, quota_files FROM machines WHERE name = ?1", [machine], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?;
        Ok(row.map(|(b, f)| Limits { bytes: b.map(|b| b as u64), files: f.map(|f| f as u64) }))
    }

    /// Sets the limits of `machine` (audited).
    pub fn set_quota(&mut self, machine: &MachineName, limits: Limits) -> anyhow::Result<()> {
        let tx = self.write()?;
        let n = tx.execute(
            "UPDATE machines SET quota_bytes = ?2, quota_files = ?3 WHERE name = ?1",
            params![machine.as_str(), limits.bytes.map(|b| b as i64), limits.files.map(|f| f as i64)],
        )?;
        if n == 0 {
            anyhow::bail!("no machine {machine} is registered (see `lifeline-receiver machine list`)");
        }
        audit(&tx, Some(machine.as_str()), "quota set", &describe(limits))?;
        tx.commit()?;
        Ok(())
    }
}

/// "bytes 50 GiB, files 1000000", "no limit".
pub fn describe(l: Limits) -> String {
    let part = |what: &str, v: Option<u64>, unit: fn(u64) -> String| v.map(|v| format!("{what} {}", unit(v)));
    let parts: Vec<String> =
        [part("bytes", l.bytes, crate::quota::human_bytes), part("files", l.files, |f| f.to_string())]
            .into_iter()
            .flatten()
            .collect();
    if parts.is_empty() {
        "no limit".into()
    } else {
        parts.join(", ")
    }
}
