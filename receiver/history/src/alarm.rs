//! A machine's standing alarm (issue 15: ransomware and mass deletions):
//! raised by the receiver when a machine's stream looks like an attack,
//! cleared only by the operator. While one stands, retention keeps
//! everything (nothing older than the alarm is thinned or dropped), so the
//! last good instant stays restorable.
//!
//! Kept as `STORE/history/<machine>/alarm`, a few `key=value` lines,
//! written whole (a temporary file renamed over it).

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// An alarm that stands until the operator clears it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alarm {
    /// When it was raised (the receiver's clock).
    pub raised_ns: i64,
    /// The last instant before the suspicious changes began: the tree as
    /// of it is the one to restore.
    pub last_good_ns: i64,
    /// What tripped it, for people (one line).
    pub reason: String,
}

impl Alarm {
    /// The alarm in one line for people (the agent's status, the tray, the
    /// receiver's `history alarm show`): what tripped it, the instant to
    /// restore as of, how it is cleared.
    pub fn describe(&self, machine: &str) -> String {
        let good = crate::instant::format(self.last_good_ns);
        format!(
            "ALARM since {}: {}; restore as of {good} (lifeline-receiver history restore --machine {machine} --as-of {good} ...); \
             the operator clears it with `lifeline-receiver history alarm clear --machine {machine}`",
            crate::instant::format(self.raised_ns),
            self.reason,
        )
    }
}

fn file(history_dir: &Path) -> PathBuf {
    history_dir.join("alarm")
}

/// The alarm standing for the machine whose history is `history_dir`.
pub fn standing(history_dir: &Path) -> io::Result<Option<Alarm>> {
    let text = match fs::read_to_string(file(history_dir)) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let bad = || io::Error::new(io::ErrorKind::InvalidData, format!("{} is damaged", file(history_dir).display()));
    let (mut raised, mut good, mut reason) = (None, None, String::new());
    for line in text.lines() {
        match line.split_once('=') {
            Some(("raised_ns", v)) => raised = v.parse().ok(),
            Some(("last_good_ns", v)) => good = v.parse().ok(),
            Some(("reason", v)) => reason = v.to_string(),
            _ => {}
        }
    }
    Ok(Some(Alarm { raised_ns: raised.ok_or_else(bad)?, last_good_ns: good.ok_or_else(bad)?, reason }))
}

/// Raises `alarm` (replacing one standing).
pub fn raise(history_dir: &Path, alarm: &Alarm) -> io::Result<()> {
    fs::create_dir_all(history_dir)?;
    let tmp = history_dir.join(".alarm.tmp");
    let reason: String = alarm.reason.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    let mut f = fs::File::create(&tmp)?;
    write!(f, "raised_ns={}\nlast_good_ns={}\nreason={reason}\n", alarm.raised_ns, alarm.last_good_ns)?;
    f.sync_all()?;
    fs::rename(&tmp, file(history_dir))
}

/// Clears the standing alarm; answers whether one stood.
pub fn clear(history_dir: &Path) -> io::Result<bool> {
    match fs::remove_file(file(history_dir)) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_alarm_stands_until_cleared() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(standing(d.path()).unwrap(), None);
        let a = Alarm { raised_ns: 5, last_good_ns: 3, reason: "2000 files\nrewritten".into() };
        raise(d.path(), &a).unwrap();
        let got = standing(d.path()).unwrap().unwrap();
        assert_eq!((got.raised_ns, got.last_good_ns, got.reason.as_str()), (5, 3, "2000 files rewritten"));
        let text = got.describe("m1");
        assert!(text.starts_with("ALARM since 1970-01-01T00:00:00"), "{text}");
        assert!(text.contains("history alarm clear --machine m1"), "{text}");
        assert!(clear(d.path()).unwrap());
        assert!(!clear(d.path()).unwrap());
        assert_eq!(standing(d.path()).unwrap(), None);
    }
}
