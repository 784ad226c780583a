//! History retention as the receiver runs it (docs/history.md,
//! "Retention"): each machine's policy from the management database, a
//! pass over every machine's history at an interval, and the operator's
//! `history prune`. Every pass that removed anything, and every warning
//! of the size bound, is audited.

use std::time::Duration;

use anyhow::Context as _;
use lifeline_core::credential::MachineName;
use lifeline_history::retention::{self, Policy, Report, DEFAULT_KEEP_ALL, DEFAULT_THIN};
use lifeline_history::{Clock, SystemClock};
use lifeline_store::db::history::RetentionSettings;
use lifeline_store::{Db, StoreLayout};
use tracing::{info, warn};

/// `machine`'s policy: its settings, the defaults where it has none.
pub fn policy(db: &Db, machine: &MachineName) -> anyhow::Result<Policy> {
    let s = db
        .history_retention(machine.as_str())?
        .with_context(|| format!("no machine {machine} is registered (see `lifeline-receiver machine list`)"))?;
    policy_of(&s)
}

/// The policy `s` says (defaults where it says nothing).
pub fn policy_of(s: &RetentionSettings) -> anyhow::Result<Policy> {
    let max = s.max_size.as_deref().map(lifeline_store::quota::parse_bytes).transpose().map_err(anyhow::Error::msg)?;
    Policy::parse(s.keep_all.as_deref().unwrap_or(DEFAULT_KEEP_ALL), s.thin.as_deref().unwrap_or(DEFAULT_THIN), max)
        .map_err(anyhow::Error::msg)
}

/// One retention pass over `machine`'s history now; audited when it
/// removed anything or warns. `by`: who asked (for the audit).
pub fn pass(store: &StoreLayout, db: &Db, machine: &MachineName, by: &str) -> anyhow::Result<Report> {
    let policy = policy(db, machine)?;
    let report = retention::apply(&store.history(machine), &policy, SystemClock.now_ns())
        .with_context(|| format!("thinning the history of {machine}"))?;
    if report.changed() || report.warning.is_some() {
        db.audit(Some(machine.as_str()), "history thinned", &format!("{by}: {report}"))?;
    }
    Ok(report)
}

/// Runs a pass over every registered machine's history each `every`, for
/// as long as the receiver serves.
pub async fn run(store: StoreLayout, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let store = store.clone();
        let done = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            let db = Db::open(store.root())?;
            for m in db.machines()? {
                let Ok(machine) = MachineName::new(&m.name) else { continue };
                if !store.history(&machine).is_dir() {
                    continue;
                }
                match pass(&store, &db, &machine, "retention") {
                    Ok(r) if r.warning.is_some() => warn!(machine = %machine, "history retention: {r}"),
                    Ok(r) if r.changed() => info!(machine = %machine, "history retention: {r}"),
                    Ok(_) => {}
                    Err(e) => warn!(machine = %machine, "history retention failed: {e:#}"),
                }
            }
            Ok(())
        })
        .await;
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!("history retention: {e:#}"),
            Err(e) => warn!("history retention stopped: {e}"),
        }
    }
}
