//! Each machine's history retention in the management database (see
//! `receiver/store/migrations/0007_history_retention.sql`). Kept as the
//! operator wrote it; `lifeline_history::retention::Policy` reads it.

use rusqlite::{params, OptionalExtension};

use super::{audit, Db};
use lifeline_core::credential::MachineName;

/// A machine's retention settings; `None`: the default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionSettings {
    pub keep_all: Option<String>,
    pub thin: Option<String>,
    pub max_size: Option<String>,
}

impl Db {
    /// The retention settings of `machine`; `None` if it is not registered.
    pub fn history_retention(&self, machine: &str) -> anyhow::Result<Option<RetentionSettings>> {
        Ok(self
            .conn
            .query_row(
                "SELECT history_keep_all, history_thin, history_max_size FROM machines WHERE name = ?1",
                [machine],
                |r| Ok(RetentionSettings { keep_all: r.get(0)?, thin: r.get(1)?, max_size: r.get(2)? }),
            )
            .optional()?)
    }

    /// Sets the retention of `machine` (audited, with `described`: the
    /// policy in words).
    pub fn set_history_retention(
        &mut self,
        machine: &MachineName,
        s: &RetentionSettings,
        described: &str,
    ) -> anyhow::Result<()> {
        let tx = self.write()?;
        let n = tx.execute(
            "UPDATE machines SET history_keep_all = ?2, history_thin = ?3, history_max_size = ?4 WHERE name = ?1",
            params![machine.as_str(), s.keep_all, s.thin, s.max_size],
        )?;
        if n == 0 {
            anyhow::bail!("no machine {machine} is registered (see `lifeline-receiver machine list`)");
        }
        audit(&tx, Some(machine.as_str()), "history retention set", described)?;
        tx.commit()?;
        Ok(())
    }
}
