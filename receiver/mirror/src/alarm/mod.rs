//! Ransomware and mass-deletion alarms (issue 15; docs/history.md
//! "Alarms"): the [`detector`] judges each machine's stream as the applier
//! applies it; [`Watch`] raises what it finds: the standing alarm
//! (`lifeline_history::alarm`, which holds retention), a warning in the
//! log, an audit entry, and the alarm in every acknowledgement so that the
//! agent's status and tray show it. Only the operator clears it
//! (`lifeline-receiver history alarm clear`).

pub mod detector;

use std::sync::Arc;

use lifeline_history::alarm::{self, Alarm};
use lifeline_history::Clock;
use lifeline_proto::v1::StandingAlarm;
use lifeline_store::{Db, MachineName, StoreLayout};
use tracing::{error, warn};

pub use detector::{Detector, Limits, Overwrite, SAMPLE};

/// One machine's detector, and the alarm standing for it.
pub struct Watch {
    detector: Detector,
    clock: Arc<dyn Clock>,
    store: StoreLayout,
    machine: MachineName,
    standing: Option<Alarm>,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch").field("machine", &self.machine).field("standing", &self.standing).finish()
    }
}

impl Watch {
    /// Watches `machine`'s stream, with the alarm standing for it (if any).
    pub fn new(store: &StoreLayout, machine: &MachineName, clock: Arc<dyn Clock>, limits: Limits) -> Watch {
        let mut w = Watch {
            detector: Detector::new(clock.clone(), limits),
            clock,
            store: store.clone(),
            machine: machine.clone(),
            standing: None,
        };
        w.refresh();
        w
    }

    pub fn detector(&mut self) -> &mut Detector {
        &mut self.detector
    }

    /// Reads the standing alarm again: the operator may have cleared it
    /// (the detector is armed again then).
    pub fn refresh(&mut self) {
        match alarm::standing(&self.store.history(&self.machine)) {
            Ok(a) => self.standing = a,
            // Unreadable: keep what was known (and never raise over it).
            Err(e) => warn!(machine = %self.machine, "cannot read the standing alarm: {e}"),
        }
        self.detector.set_standing(self.standing.is_some());
    }

    /// After an op: raises what the detector found.
    pub fn after_op(&mut self) {
        let Some(trip) = self.detector.check() else { return };
        let a = Alarm { raised_ns: self.clock.now_ns(), last_good_ns: trip.last_good_ns, reason: trip.reason };
        let text = a.describe(self.machine.as_str());
        warn!(machine = %self.machine, last_good_ns = a.last_good_ns, "{text}");
        if let Err(e) = alarm::raise(&self.store.history(&self.machine), &a) {
            // The agent and the log still say it; retention would not hold.
            error!(machine = %self.machine, "cannot record the alarm (retention is not held): {e}; check the store's disk");
        }
        let audited =
            Db::open(self.store.root()).and_then(|db| db.audit(Some(self.machine.as_str()), "alarm raised", &text));
        if let Err(e) = audited {
            error!(machine = %self.machine, "cannot write the alarm to the audit trail: {e:#}");
        }
        self.standing = Some(a);
    }

    /// How close the stream came to an alarm (see [`Detector::peaks`]).
    pub fn peaks(&self) -> String {
        self.detector.peaks()
    }

    /// The alarm for the machine's acknowledgements.
    pub fn standing(&self) -> Option<StandingAlarm> {
        self.standing.as_ref().map(|a| StandingAlarm {
            raised_ns: a.raised_ns,
            last_good_ns: a.last_good_ns,
            reason: a.reason.clone(),
            text: a.describe(self.machine.as_str()),
        })
    }
}

#[cfg(test)]
mod watch_tests;
