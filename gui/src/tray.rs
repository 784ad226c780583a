//! The tray icon: a StatusNotifierItem (with its dbusmenu) served by `ksni`
//! on the session bus. The menu's callbacks only queue an [`Action`]: the
//! RPC runs in [`run`]'s loop, never inside the D-Bus handler, so a slow
//! agent cannot freeze the host's menu.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use ksni::menu::{CheckmarkItem, StandardItem};
use ksni::{MenuItem, TrayMethods};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::control::Agent;
use crate::state::{self, Action, Look, Urgency};

pub struct LifelineTray {
    look: Look,
    /// Why the last menu action failed (shown in the tooltip until the next
    /// one succeeds).
    action_error: Option<String>,
    actions: mpsc::UnboundedSender<Action>,
}

impl ksni::Tray for LifelineTray {
    fn id(&self) -> String {
        "lifeline".into()
    }

    fn category(&self) -> ksni::Category {
        ksni::Category::SystemServices
    }

    fn title(&self) -> String {
        self.look.title.clone()
    }

    fn status(&self) -> ksni::Status {
        match self.look.state.urgency() {
            Urgency::Passive => ksni::Status::Passive,
            Urgency::Active => ksni::Status::Active,
            Urgency::NeedsAttention => ksni::Status::NeedsAttention,
        }
    }

    fn icon_name(&self) -> String {
        self.look.state.icon_name().into()
    }

    fn icon_pixmap(&self) -> Vec<ksni::Icon> {
        [16, 22, 32].into_iter().map(|size| disc(size, self.look.state.colour())).collect()
    }

    fn tool_tip(&self) -> ksni::ToolTip {
        let mut description = self.look.detail.clone();
        if let Some(e) = &self.action_error {
            description = format!("{description}\nLast action failed: {e}");
        }
        ksni::ToolTip { title: self.look.headline.clone(), description, ..Default::default() }
    }

    /// A left click opens the status window, as most tray apps do.
    fn activate(&mut self, _x: i32, _y: i32) {
        let _ = self.actions.send(Action::OpenWindow);
    }

    fn menu(&self) -> Vec<MenuItem<Self>> {
        // First a disabled line saying the state, so the menu alone tells it.
        let mut items: Vec<MenuItem<Self>> = vec![
            StandardItem { label: self.look.headline.clone(), enabled: false, ..Default::default() }.into(),
            MenuItem::Separator,
        ];
        for e in &self.look.menu {
            let Some(action) = e.action else {
                items.push(MenuItem::Separator);
                continue;
            };
            let activate = Box::new(move |t: &mut Self| {
                let _ = t.actions.send(action);
            });
            items.push(match e.checked {
                Some(checked) => CheckmarkItem {
                    label: e.label.clone(),
                    enabled: e.enabled,
                    checked,
                    activate,
                    ..Default::default()
                }
                .into(),
                None => {
                    StandardItem { label: e.label.clone(), enabled: e.enabled, activate, ..Default::default() }.into()
                }
            });
        }
        items
    }
}

/// An ARGB32 (network byte order) disc of `rgb` on transparency.
fn disc(size: i32, rgb: u32) -> ksni::Icon {
    let mut data = Vec::with_capacity((size * size * 4) as usize);
    let c = (size as f32 - 1.0) / 2.0;
    let r = size as f32 / 2.0 - 1.0;
    for y in 0..size {
        for x in 0..size {
            let d = ((x as f32 - c).powi(2) + (y as f32 - c).powi(2)).sqrt();
            // One pixel of anti-aliasing at the rim.
            let alpha = ((r - d + 0.5).clamp(0.0, 1.0) * 255.0) as u8;
            data.extend_from_slice(&[alpha, (rgb >> 16) as u8, (rgb >> 8) as u8, rgb as u8]);
        }
    }
    ksni::Icon { width: size, height: size, data }
}

/// Serves the tray icon until Quit, polling the agent every `poll`.
pub async fn run(socket: &Path, poll: Duration) -> anyhow::Result<()> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut agent = Agent::new(socket);
    let shown = socket.display().to_string();
    let mut look = current_look(&mut agent, &shown).await;
    info!("agent: {}", look.headline);
    let tray = LifelineTray { look: look.clone(), action_error: None, actions: tx };
    // Without a StatusNotifierWatcher yet (the desktop still starting), keep
    // running: ksni registers as soon as one appears.
    let handle = tray.assume_sni_available(true).spawn().await.map_err(|e| {
        anyhow::anyhow!(
            "cannot put the icon in the tray: {e} (is there a D-Bus session bus, DBUS_SESSION_BUS_ADDRESS? \
             lifeline-gui --window shows the status window without a tray)"
        )
    })?;
    let mut window: Option<Child> = None;
    let mut tick = tokio::time::interval(poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut action_error = None;
        tokio::select! {
            _ = tick.tick() => {}
            a = rx.recv() => match a {
                None | Some(Action::Quit) => break,
                Some(Action::OpenWindow) => open_window(&mut window, socket),
                Some(a) => {
                    info!("menu: {a:?}");
                    match agent.act(a).await {
                        Ok(_) => action_error = Some(None),
                        Err(e) => {
                            warn!("{a:?} failed: {e}");
                            action_error = Some(Some(e));
                        }
                    }
                }
            },
        }
        let new = current_look(&mut agent, &shown).await;
        if new.state != look.state {
            info!("agent: {}", new.headline);
        }
        if new != look || action_error.is_some() {
            look = new.clone();
            handle
                .update(move |t| {
                    t.look = new;
                    if let Some(e) = action_error {
                        t.action_error = e;
                    }
                })
                .await;
        }
    }
    handle.shutdown().await;
    if let Some(mut w) = window {
        let _ = w.kill();
        let _ = w.wait();
    }
    Ok(())
}

async fn current_look(agent: &mut Agent, socket: &str) -> Look {
    match agent.status().await {
        Ok(s) => state::look(Some(&s), socket, ""),
        Err(e) => state::look(None, socket, &e),
    }
}

/// Starts the status window as a child process (`lifeline-gui --window`): a
/// plain X11 client with its own loop, so the tray's D-Bus service never
/// waits on drawing. One at a time.
fn open_window(window: &mut Option<Child>, socket: &Path) {
    if let Some(w) = window {
        if matches!(w.try_wait(), Ok(None)) {
            return; // already open
        }
    }
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("lifeline-gui"));
    match Command::new(&exe).arg("--window").arg("--control").arg(socket).spawn() {
        Ok(c) => *window = Some(c),
        Err(e) => warn!("cannot open the status window ({}): {e}", exe.display()),
    }
}
