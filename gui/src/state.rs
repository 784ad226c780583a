//! What the GUI shows for an agent status: pure, so every state's icon,
//! colour, texts and enabled menu items are unit-tested without a desktop.
//! The tray (`tray.rs`) and the status window (`window.rs`) both draw from a
//! [`Look`], so they never disagree.

use lifeline_proto::control::v1::AgentStatus;

/// The state at a glance, in order of precedence (the first that holds wins).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// The control socket does not answer: the agent is not running (or
    /// this user may not use its socket).
    AgentDown,
    /// The receiver raised a ransomware or mass-deletion alarm on this
    /// machine: it keeps the tree from before it until its operator clears
    /// it. Above everything else the agent reports: it needs people.
    Alarm,
    /// The agent runs but cannot reach its receiver.
    Disconnected,
    /// Automatic backup switched off: the eBPF programs are detached.
    Off,
    /// Capturing and queueing, but sending is held.
    Paused,
    /// Capturing with the inotify fallback instead of eBPF (the kernel
    /// refused the programs, or no privileges): whole files are sent, no
    /// byte ranges, writes through shared mappings only seen by the periodic
    /// reconciliation. Never shown as "in sync": it needs a look.
    Degraded,
    /// Changes are on their way (queue not empty, or the initial sync runs).
    Replicating,
    /// Connected, capturing, nothing waiting.
    InSync,
}

impl State {
    /// Short words for titles, tooltips and the window's banner.
    pub fn words(self) -> &'static str {
        match self {
            State::AgentDown => "agent not running",
            State::Alarm => "ALARM: possible ransomware or mass deletion",
            State::Disconnected => "receiver unreachable",
            State::Off => "automatic backup off",
            State::Paused => "paused",
            State::Degraded => "inotify fallback: no byte ranges",
            State::Replicating => "replicating",
            State::InSync => "in sync",
        }
    }

    /// A freedesktop icon name every icon theme has; hosts that lack it use
    /// the pixmap the tray also sends (a disc of [`State::colour`]).
    pub fn icon_name(self) -> &'static str {
        match self {
            State::AgentDown => "dialog-error",
            State::Alarm => "security-low",
            State::Disconnected => "network-offline",
            State::Off => "media-playback-stop",
            State::Paused => "media-playback-pause",
            State::Degraded => "dialog-warning",
            State::Replicating => "emblem-synchronizing",
            State::InSync => "emblem-default",
        }
    }

    /// 0xRRGGBB: the icon's disc and the status window's banner. Distinct
    /// enough to tell apart at a glance (and for the window test's pixels).
    pub fn colour(self) -> u32 {
        match self {
            State::AgentDown => 0x5e5c64,    // dark grey: nothing runs
            State::Alarm => 0xe01b24,        // bright red: act now
            State::Disconnected => 0xc01c28, // red: backups are not leaving
            State::Off => 0x9a9996,          // light grey: switched off
            State::Paused => 0xe5a50a,       // amber: held on purpose
            State::Degraded => 0xffbf00,     // bright amber: working, but less than it should
            State::Replicating => 0x1c71d8,  // blue: working
            State::InSync => 0x26a269,       // green: all is well
        }
    }

    /// The StatusNotifierItem status: hosts hide `Passive` items in their
    /// overflow, so only states that need a look are `Active`/`NeedsAttention`.
    pub fn urgency(self) -> Urgency {
        match self {
            State::AgentDown | State::Alarm | State::Disconnected => Urgency::NeedsAttention,
            State::Off | State::Paused | State::Degraded | State::Replicating => Urgency::Active,
            State::InSync => Urgency::Passive,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Urgency {
    Passive,
    Active,
    NeedsAttention,
}

/// What a menu entry (tray menu, and the status window's buttons) does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Switch automatic backup on (true: attach and reconcile) or off.
    SetBackup(bool),
    /// Pause (true) or resume sending.
    SetPaused(bool),
    SyncNow,
    OpenWindow,
    Quit,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MenuEntry {
    pub label: String,
    /// None: a separator (no label, no action).
    pub action: Option<Action>,
    pub enabled: bool,
    /// Some: a checkmark item, checked or not.
    pub checked: Option<bool>,
}

impl MenuEntry {
    fn item(label: &str, action: Action, enabled: bool) -> MenuEntry {
        MenuEntry { label: label.into(), action: Some(action), enabled, checked: None }
    }

    fn separator() -> MenuEntry {
        MenuEntry { label: String::new(), action: None, enabled: false, checked: None }
    }

    pub fn is_separator(&self) -> bool {
        self.action.is_none() && self.label.is_empty()
    }
}

/// Everything the GUI shows for one status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Look {
    pub state: State,
    /// Window title and tray title: "Lifeline - MACHINE - in sync".
    pub title: String,
    /// One line for the tooltip's title and the menu's first (disabled) line.
    pub headline: String,
    /// The tooltip's text: lag, queue, what to do.
    pub detail: String,
    /// The tray menu, top to bottom (the status window shows the same).
    pub menu: Vec<MenuEntry>,
}

/// The look for `status` (None: the socket at `socket` did not answer, with
/// `error` saying why).
pub fn look(status: Option<&AgentStatus>, socket: &str, error: &str) -> Look {
    let Some(s) = status else {
        let permission = error.contains("ermission denied");
        let detail = if permission {
            format!("This user may not use the agent's control socket {socket}: ask for membership in its group.")
        } else {
            format!(
                "No agent answers on {socket}. Start it as root (lifeline-agent run --receiver URL --watch DIR ...); \
                 this shows its state by itself once it runs."
            )
        };
        return Look {
            state: State::AgentDown,
            title: format!("Lifeline - {}", State::AgentDown.words()),
            headline: if permission {
                "Lifeline: no access to the agent".into()
            } else {
                "Lifeline: agent not running".into()
            },
            detail,
            // Nothing that needs the agent can work: only the window (which
            // says how to start it) and quitting stay enabled.
            menu: vec![
                MenuEntry {
                    checked: Some(false),
                    ..MenuEntry::item("Automatic backup", Action::SetBackup(true), false)
                },
                MenuEntry::item("Pause sending", Action::SetPaused(true), false),
                MenuEntry::item("Sync now", Action::SyncNow, false),
                MenuEntry::separator(),
                MenuEntry::item("Status window...", Action::OpenWindow, true),
                MenuEntry::item("Quit", Action::Quit, true),
            ],
        };
    };
    let state = state_of(s);
    let backup_on = s.capture != "off";
    let headline = format!("Lifeline: {}", state.words());
    let mut detail = match state {
        // The receiver's own words: what tripped it, the instant to restore
        // as of, who clears it.
        State::Alarm => s.alarm.clone(),
        State::Disconnected if s.last_error.contains("has no room for this machine") => {
            format!("The receiver {} has no room for this machine; changes wait in the queue.", s.receiver)
        }
        State::Disconnected => format!("Cannot reach the receiver {}; changes wait in the queue.", s.receiver),
        State::Off => "Changes are not captured; switching on catches up.".to_string(),
        State::Paused => format!("{} changes wait; resume to send them.", s.queue_depth),
        State::Degraded => format!(
            "Capturing with the inotify fallback, not eBPF: whole files are sent, no byte ranges. Why: {}. {} changes on their way.",
            if s.fallback_reason.is_empty() { "not given" } else { s.fallback_reason.as_str() },
            s.queue_depth
        ),
        State::Replicating => format!("{} changes on their way, lag {}.", s.queue_depth, duration(s.lag_ms)),
        State::InSync => format!("Everything under {} is on {}.", s.watched.join(", "), s.receiver),
        State::AgentDown => unreachable!("handled above"),
    };
    if !s.last_error.is_empty() && state == State::Disconnected {
        detail.push(' ');
        detail.push_str(advice(&s.last_error));
    }
    Look {
        state,
        title: format!("Lifeline - {} - {}", s.machine, state.words()),
        headline,
        detail,
        menu: vec![
            MenuEntry {
                checked: Some(backup_on),
                ..MenuEntry::item("Automatic backup", Action::SetBackup(!backup_on), true)
            },
            if s.paused {
                MenuEntry::item("Resume sending", Action::SetPaused(false), true)
            } else {
                MenuEntry::item("Pause sending", Action::SetPaused(true), true)
            },
            // A reconciliation compares with the mirror: needs the receiver.
            MenuEntry::item("Sync now", Action::SyncNow, s.connected),
            MenuEntry::separator(),
            MenuEntry::item("Status window...", Action::OpenWindow, true),
            MenuEntry::item("Quit", Action::Quit, true),
        ],
    }
}

fn state_of(s: &AgentStatus) -> State {
    if !s.alarm.is_empty() {
        State::Alarm
    } else if !s.connected {
        State::Disconnected
    } else if s.capture == "off" {
        State::Off
    } else if s.paused {
        State::Paused
    } else if s.capture == "notify" {
        State::Degraded
    } else if s.queue_depth > 0 || s.lag_ms > 0 || !s.initial_sync_done {
        State::Replicating
    } else {
        State::InSync
    }
}

/// What to do about the agent's last error, in a sentence. The agent's own
/// messages already name the cause; this adds the next step.
pub fn advice(error: &str) -> &'static str {
    if error.contains("refused this agent") {
        "Re-issue this machine's credential on the receiver (lifeline-receiver machine reissue NAME) and install it."
    } else if error.contains("has no room for this machine") {
        "The receiver's operator raises this machine's quota or frees space; they are sent then."
    } else if error.contains("unreachable") {
        "Check that lifeline-receiver runs and the network path to it is up; the agent retries by itself."
    } else if error.contains("queue log reached") {
        "Nothing to do once the receiver is back: a reconciliation sends what the dropped log held."
    } else if error.contains("could not apply") {
        "The agent reconciles by itself; if it repeats, check the receiver's disk and log."
    } else {
        "See the agent's log (its standard error) for details."
    }
}

/// "850 ms", "12 s", "3 min".
pub fn duration(ms: u64) -> String {
    match ms {
        0..=999 => format!("{ms} ms"),
        1000..=119_999 => format!("{} s", ms / 1000),
        _ => format!("{} min", ms / 60_000),
    }
}

/// "0 B", "12.3 KiB", "4.0 MiB", "1.2 GiB".
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status() -> AgentStatus {
        AgentStatus {
            connected: true,
            capture: "ebpf".into(),
            initial_sync_done: true,
            machine: "web1".into(),
            receiver: "https://backup:7700".into(),
            watched: vec!["/srv".into()],
            ..Default::default()
        }
    }

    fn entry<'a>(l: &'a Look, label: &str) -> &'a MenuEntry {
        l.menu.iter().find(|e| e.label == label).unwrap_or_else(|| panic!("no {label:?} in {:?}", l.menu))
    }

    #[test]
    fn agent_not_running_says_so_and_disables_what_cannot_work() {
        let l = look(None, "/var/lib/lifeline-agent/control.sock", "connection refused");
        assert_eq!(l.state, State::AgentDown);
        assert!(l.headline.contains("agent not running"), "{}", l.headline);
        assert!(
            l.detail.contains("/var/lib/lifeline-agent/control.sock") && l.detail.contains("Start"),
            "{}",
            l.detail
        );
        for label in ["Automatic backup", "Pause sending", "Sync now"] {
            assert!(!entry(&l, label).enabled, "{label} enabled while the agent is down");
        }
        assert!(entry(&l, "Status window...").enabled);
        assert!(entry(&l, "Quit").enabled);
    }

    #[test]
    fn no_permission_on_the_socket_is_told_apart() {
        let l = look(None, "/s", "cannot reach ...: Permission denied (os error 13)");
        assert_eq!(l.state, State::AgentDown);
        assert!(l.detail.contains("group"), "{}", l.detail);
    }

    #[test]
    fn each_state_has_its_own_icon_and_colour() {
        let mut s = status();
        assert_eq!(look(Some(&s), "", "").state, State::InSync);
        s.queue_depth = 3;
        s.lag_ms = 1500;
        let l = look(Some(&s), "", "");
        assert_eq!(l.state, State::Replicating);
        assert!(l.detail.contains("1 s"), "{}", l.detail);
        s.paused = true;
        let l = look(Some(&s), "", "");
        assert_eq!(l.state, State::Paused);
        assert_eq!(entry(&l, "Resume sending").action, Some(Action::SetPaused(false)));
        s.capture = "off".into();
        let l = look(Some(&s), "", "");
        assert_eq!(l.state, State::Off);
        assert_eq!(entry(&l, "Automatic backup").checked, Some(false));
        assert_eq!(entry(&l, "Automatic backup").action, Some(Action::SetBackup(true)));
        s.connected = false;
        s.last_error = "receiver https://x:7700 unreachable or the stream broke".into();
        let l = look(Some(&s), "", "");
        assert_eq!(l.state, State::Disconnected);
        assert!(!entry(&l, "Sync now").enabled);
        assert!(l.detail.contains("Check that lifeline-receiver runs"), "{}", l.detail);
        // A full receiver (quota or free-space reserve) says so, and who acts.
        s.last_error = "the receiver https://x:7700 has no room for this machine: machine m is at its quota".into();
        let l = look(Some(&s), "", "");
        assert_eq!(l.state, State::Disconnected);
        assert!(l.detail.contains("has no room for this machine; changes wait"), "{}", l.detail);
        assert!(l.detail.contains("raises this machine's quota"), "{}", l.detail);

        // An alarm outranks the rest, and says what to do.
        s.alarm = "ALARM since ...: 2000 files renamed to .locked; restore as of 2026-12-07T15:00:00.000000Z \
                   (...); the operator clears it with `lifeline-receiver history alarm clear --machine web1`"
            .into();
        let l = look(Some(&s), "", "");
        assert_eq!((l.state, l.state.urgency()), (State::Alarm, Urgency::NeedsAttention));
        assert!(
            l.detail.contains("restore as of 2026-12-07T15:00:00") && l.detail.contains("alarm clear"),
            "{}",
            l.detail
        );
        assert!(l.title.contains("ALARM"), "{}", l.title);

        let all = [
            State::AgentDown,
            State::Alarm,
            State::Disconnected,
            State::Off,
            State::Paused,
            State::Degraded,
            State::Replicating,
            State::InSync,
        ];
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert_ne!(a.colour(), b.colour(), "{a:?} and {b:?}");
                assert_ne!(a.icon_name(), b.icon_name(), "{a:?} and {b:?}");
            }
        }
    }

    #[test]
    fn switch_reflects_capture_on_ebpf_and_on_the_fallback_watcher() {
        let s = status();
        let l = look(Some(&s), "", "");
        let sw = entry(&l, "Automatic backup");
        assert_eq!((sw.checked, sw.action, sw.enabled), (Some(true), Some(Action::SetBackup(false)), true));
        assert!(l.title.contains("web1"), "{}", l.title);
        let s = AgentStatus { capture: "notify".into(), ..status() };
        let sw = entry(&look(Some(&s), "", ""), "Automatic backup").clone();
        assert_eq!((sw.checked, sw.action, sw.enabled), (Some(true), Some(Action::SetBackup(false)), true));
    }

    /// On the inotify fallback the state is degraded (amber, its own icon,
    /// the reason in the detail), in sync or not: never the green "in sync".
    #[test]
    fn the_fallback_watcher_is_degraded_never_in_sync() {
        let reason = "eBPF refused: combined stack size of 3 calls is 576. Too large";
        let s = AgentStatus { capture: "notify".into(), fallback_reason: reason.into(), ..status() };
        let l = look(Some(&s), "", "");
        assert_eq!(l.state, State::Degraded);
        assert_ne!(l.state.colour(), State::InSync.colour());
        assert_eq!(l.headline, "Lifeline: inotify fallback: no byte ranges");
        assert!(l.title.ends_with("inotify fallback: no byte ranges"), "{}", l.title);
        assert!(l.detail.contains(reason), "{}", l.detail);
        let busy = AgentStatus { queue_depth: 5, lag_ms: 300, ..s.clone() };
        assert_eq!(look(Some(&busy), "", "").state, State::Degraded);
        // Switched off, or disconnected, it says that first.
        let off = AgentStatus { capture: "off".into(), ..s.clone() };
        assert_eq!(look(Some(&off), "", "").state, State::Off);
        let down = AgentStatus { connected: false, ..s };
        assert_eq!(look(Some(&down), "", "").state, State::Disconnected);
    }

    #[test]
    fn units() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(5 << 30), "5.0 GiB");
        assert_eq!(duration(250), "250 ms");
        assert_eq!(duration(90_000), "90 s");
        assert_eq!(duration(600_000), "10 min");
    }
}
