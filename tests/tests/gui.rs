//! The tray GUI (`lifeline-gui`) against a real agent, a real D-Bus session
//! bus and a real X server:
//!
//! - over D-Bus, the test is the desktop's StatusNotifierWatcher/host: it
//!   gets the icon's registration, reads its properties and its menu over
//!   dbusmenu, and clicks the menu items; the agent's status and the
//!   kernel's list of attached programs show that the clicks act;
//! - under Xvfb, the status window opens, is found by its title and its
//!   screenshot shows the state's colour; clicking its menu pauses the agent.
//!
//! `LIFELINE_WRITE_DOCS=1` also saves the screenshots, and a picture of
//! what the host read over D-Bus, to `docs/`.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lifeline_tests::desktop::{wait_window, Gui, Image, MenuLine, SessionBus, Xvfb};
use lifeline_tests::{
    differences, inotify_watches, preflight, require_tool, wait_until, Rig, RigOpts, ScratchFs, TestDir,
};
use zbus::zvariant::{OwnedObjectPath, OwnedValue, Value};

const SYNC_TIMEOUT: Duration = Duration::from_secs(30);
const LOG_LINES: usize = 40;
const SNI: &str = "org.kde.StatusNotifierItem";

// State colours of gui/src/state.rs (the window test checks its pixels).
const GREEN_IN_SYNC: u32 = 0x26a269;
const AMBER_PAUSED: u32 = 0xe5a50a;
const GREY_AGENT_DOWN: u32 = 0x5e5c64;
const AMBER_DEGRADED: u32 = 0xffbf00;
// The status window's Restore buttons (gui/src/window.rs).
const RESTORE_BUTTON: u32 = 0x3584e4;

/// The unprivileged user the status window runs as.
const NOBODY: u32 = 65534;

/// The desktop side of the StatusNotifierItem protocol: items register here.
struct Watcher {
    /// (unique bus name of the caller, the service it registered).
    items: Arc<Mutex<Vec<(String, String)>>>,
}

#[zbus::interface(name = "org.kde.StatusNotifierWatcher")]
impl Watcher {
    async fn register_status_notifier_item(&self, service: &str, #[zbus(header)] hdr: zbus::message::Header<'_>) {
        let sender = hdr.sender().map(|s| s.to_string()).unwrap_or_default();
        self.items.lock().unwrap().push((sender, service.to_string()));
    }

    async fn register_status_notifier_host(&self, _service: &str) {}

    #[zbus(property)]
    async fn registered_status_notifier_items(&self) -> Vec<String> {
        self.items.lock().unwrap().iter().map(|(_, s)| s.clone()).collect()
    }

    #[zbus(property)]
    async fn is_status_notifier_host_registered(&self) -> bool {
        true
    }

    #[zbus(property)]
    async fn protocol_version(&self) -> i32 {
        0
    }
}

/// The StatusNotifierItem's ToolTip: icon name, icon pixmaps (width,
/// height, ARGB32), title, description.
type SniToolTip = (String, Vec<(i32, i32, Vec<u8>)>, String, String);

/// A dbusmenu layout item: id, properties, children (each a variant holding
/// a layout item).
type LayoutItem = (i32, HashMap<String, OwnedValue>, Vec<OwnedValue>);

/// One menu item as read over dbusmenu.
#[derive(Debug, Clone)]
struct MenuItem {
    id: i32,
    label: String,
    enabled: bool,
    /// `toggle-state` of a checkmark item.
    checked: Option<bool>,
    separator: bool,
}

/// The menu as a host shows it, in text: "[x]" a checked item, "(greyed)" a
/// disabled one.
fn menu_text(menu: &[MenuItem]) -> String {
    let mut out = String::new();
    for m in menu {
        let line = if m.separator {
            "  ----------------------".to_string()
        } else {
            let check = match m.checked {
                Some(true) => "[x] ",
                Some(false) => "[ ] ",
                None => "    ",
            };
            format!("  {check}{}{}", m.label, if m.enabled { "" } else { "   (greyed)" })
        };
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// A StatusNotifierHost on the test's session bus.
struct Host {
    rt: tokio::runtime::Runtime,
    conn: zbus::Connection,
    items: Arc<Mutex<Vec<(String, String)>>>,
}

impl Host {
    fn start(bus: &SessionBus) -> Host {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let items = Arc::new(Mutex::new(Vec::new()));
        let watcher = Watcher { items: items.clone() };
        let conn = rt
            .block_on(async {
                zbus::connection::Builder::address(bus.address())?
                    .serve_at("/StatusNotifierWatcher", watcher)?
                    .name("org.kde.StatusNotifierWatcher")?
                    .build()
                    .await
            })
            .unwrap_or_else(|e| panic!("cannot be the StatusNotifierWatcher on {}: {e}", bus.address()));
        Host { rt, conn, items }
    }

    /// The bus name of the first item that registers.
    fn wait_item(&self, gui: &Gui, timeout: Duration) -> String {
        if !wait_until(timeout, || !self.items.lock().unwrap().is_empty()) {
            panic!("no StatusNotifierItem registered within {timeout:?}\n{}", gui.log_tail(LOG_LINES));
        }
        let (sender, service) = self.items.lock().unwrap()[0].clone();
        // The spec allows an object path instead of a name: then the item is
        // the caller itself.
        if service.starts_with('/') {
            sender
        } else {
            service
        }
    }

    fn prop(&self, item: &str, name: &str) -> OwnedValue {
        self.rt
            .block_on(async {
                let p = zbus::fdo::PropertiesProxy::builder(&self.conn)
                    .destination(item.to_string())?
                    .path("/StatusNotifierItem")?
                    .build()
                    .await?;
                p.get(zbus::names::InterfaceName::from_static_str_unchecked(SNI), name).await.map_err(zbus::Error::from)
            })
            .unwrap_or_else(|e| panic!("property {name} of {item}: {e}"))
    }

    fn string_prop(&self, item: &str, name: &str) -> String {
        String::try_from(self.prop(item, name)).unwrap_or_else(|e| panic!("{name} is no string: {e}"))
    }

    /// ToolTip's (title, description).
    fn tooltip(&self, item: &str) -> (String, String) {
        let v = self.prop(item, "ToolTip");
        let (_icon, _pixmaps, title, text): SniToolTip =
            v.try_into().unwrap_or_else(|e| panic!("ToolTip is no (sa(iiay)ss): {e}"));
        (title, text)
    }

    fn menu_path(&self, item: &str) -> OwnedObjectPath {
        OwnedObjectPath::try_from(self.prop(item, "Menu")).expect("Menu is an object path")
    }

    /// The menu's top level, read with dbusmenu's GetLayout.
    fn menu(&self, item: &str) -> Vec<MenuItem> {
        let path = self.menu_path(item);
        let (_rev, (_root, _props, children)): (u32, LayoutItem) = self
            .rt
            .block_on(async {
                let reply = self
                    .conn
                    .call_method(
                        Some(item),
                        path.as_str(),
                        Some("com.canonical.dbusmenu"),
                        "GetLayout",
                        &(0i32, -1i32, Vec::<String>::new()),
                    )
                    .await?;
                reply.body().deserialize()
            })
            .unwrap_or_else(|e| panic!("GetLayout on {item}: {e}"));
        children
            .into_iter()
            .map(|c| {
                let (id, props, _sub): LayoutItem = c.try_into().expect("a layout item is (ia{sv}av)");
                let get = |k: &str| props.get(k).and_then(|v| v.try_clone().ok());
                MenuItem {
                    id,
                    label: get("label").and_then(|v| String::try_from(v).ok()).unwrap_or_default(),
                    // dbusmenu leaves out properties at their defaults.
                    enabled: get("enabled").and_then(|v| bool::try_from(v).ok()).unwrap_or(true),
                    checked: get("toggle-state").and_then(|v| i32::try_from(v).ok()).map(|s| s == 1),
                    separator: get("type").and_then(|v| String::try_from(v).ok()).as_deref() == Some("separator"),
                }
            })
            .collect()
    }

    fn item_labelled(&self, item: &str, label: &str) -> MenuItem {
        let menu = self.menu(item);
        menu.iter().find(|m| m.label == label).cloned().unwrap_or_else(|| panic!("no menu item {label:?} in {menu:?}"))
    }

    /// What a host does when the user clicks a menu item.
    fn click(&self, item: &str, id: i32) {
        let path = self.menu_path(item);
        self.rt
            .block_on(async {
                self.conn
                    .call_method(
                        Some(item),
                        path.as_str(),
                        Some("com.canonical.dbusmenu"),
                        "Event",
                        &(id, "clicked", Value::from(0i32), 0u32),
                    )
                    .await
            })
            .unwrap_or_else(|e| panic!("Event(clicked) on item {id} of {item}: {e}"));
    }
}

const TOOLS: &[&str] = &["dbus-daemon", "lifeline-receiver", "lifeline-agent", "lifeline-gui"];

/// A tray under `dir` for the agent at `control`: a private session bus, a
/// StatusNotifierWatcher host on it, and `lifeline-gui` registered there
/// (polling every 200 ms). Returns them with the gui's item; the bus goes
/// last when the caller's bindings drop.
fn tray(dir: &Path, control: &str) -> (SessionBus, Host, Gui, String) {
    let bus = SessionBus::start(&dir.join("dbus"));
    let host = Host::start(&bus);
    let gui = Gui::start(
        &["--control", control, "--poll-ms", "200"],
        &[("DBUS_SESSION_BUS_ADDRESS", bus.address())],
        &dir.join("gui.log"),
    );
    let item = host.wait_item(&gui, Duration::from_secs(15));
    (bus, host, gui, item)
}

/// A receiver and an agent replicating a fresh tmpfs tree, in sync.
fn world(name: &str) -> Rig {
    world_capturing_with(name, "ebpf")
}

/// The agent started with `--capture <capture>` and found capturing so.
fn world_capturing_with(name: &str, capture: &str) -> Rig {
    let mut w = RigOpts::new(name, ScratchFs::tmpfs(64)).agent_args(&["--capture", capture]).build();
    fs::write(w.src.join("before.txt"), b"there before the GUI").unwrap();
    w.start_agent();
    w.wait_ready();
    w.assert_identical(SYNC_TIMEOUT, "at start");
    w
}

/// The tray's switch, clicked over dbusmenu by a StatusNotifierHost, detaches
/// the agent's eBPF programs (checked in the kernel's list and the agent's
/// status), the icon changes, a change made while off stays out of the
/// mirror; clicked again it re-attaches and the change arrives. Pause and
/// resume hold and release sending the same way. With the receiver gone the
/// icon asks for attention; with the agent gone it says so and the switch is
/// greyed out.
#[test]
fn tray_menu_over_dbus_switches_backup_and_pauses() {
    preflight(TOOLS);
    let mut w = world("gui-tray");
    let (_bus, host, mut gui, item) = tray(w.dir.path(), &w.control());

    // The icon says "in sync" and the menu's switch is on.
    let in_sync = wait_until(Duration::from_secs(5), || host.string_prop(&item, "IconName") == "emblem-default");
    assert!(in_sync, "icon is {:?}, not in sync\n{}", host.string_prop(&item, "IconName"), gui.log_tail(LOG_LINES));
    let title = host.string_prop(&item, "Title");
    assert!(title.contains(&w.machine) && title.contains("in sync"), "title {title:?}");
    let (tip, _) = host.tooltip(&item);
    assert_eq!(tip, "Lifeline: in sync");
    let switch = host.item_labelled(&item, "Automatic backup");
    assert_eq!((switch.checked, switch.enabled), (Some(true), true), "{switch:?}");
    assert!(w.attached() > 0, "no eBPF program attached before the click");
    // For docs/: an X server to draw what the host read (only then).
    let docs_x = docs_wanted().then(|| Xvfb::start(&w.dir.path().join("xvfb.log"), 1024, 768));
    let mut views = vec![host_view(&host, &item, docs_x.as_ref())];
    let mut doc = format!(
        "The tray icon as a StatusNotifierHost reads it over D-Bus (written by tests/tests/gui.rs)\n\n\
         In sync: IconName {:?}, ToolTip {:?}\n{}\n",
        host.string_prop(&item, "IconName"),
        host.tooltip(&item),
        menu_text(&host.menu(&item))
    );

    // Off: detached in the kernel, "off" in the agent, a grey icon and an
    // unchecked switch on the bus.
    host.click(&item, switch.id);
    if !wait_until(Duration::from_secs(5), || w.attached() == 0) {
        w.fail(&format!("after the switch was clicked off, {} programs are still attached", w.attached()));
    }
    w.agent().wait_status("capture off", Duration::from_secs(5), |s| s.capture == "off");
    let icon_off = wait_until(Duration::from_secs(5), || {
        host.string_prop(&item, "IconName") == "media-playback-stop"
            && host.item_labelled(&item, "Automatic backup").checked == Some(false)
    });
    assert!(icon_off, "icon {:?} / menu {:?} after off", host.string_prop(&item, "IconName"), host.menu(&item));
    assert_eq!(host.string_prop(&item, "Status"), "Active");
    views.push(host_view(&host, &item, docs_x.as_ref()));
    doc.push_str(&format!(
        "Backup switched off: IconName {:?}, ToolTip {:?}\n{}\n",
        host.string_prop(&item, "IconName"),
        host.tooltip(&item),
        menu_text(&host.menu(&item))
    ));

    fs::write(w.src.join("while-off.txt"), b"written while backup was off").unwrap();
    std::thread::sleep(Duration::from_secs(1));
    if w.mirror.join("while-off.txt").exists() || differences(&w.src, &w.mirror).is_empty() {
        w.fail("a change made while off reached the mirror");
    }

    // On again: re-attached, reconciled, the change arrives.
    host.click(&item, host.item_labelled(&item, "Automatic backup").id);
    if !wait_until(Duration::from_secs(5), || w.attached() > 0) {
        w.fail("after the switch was clicked on, no program is attached");
    }
    w.agent().wait_status("capture on", Duration::from_secs(5), |s| s.capture == "ebpf");
    w.assert_identical(SYNC_TIMEOUT, "after on");
    assert!(wait_until(Duration::from_secs(5), || host.item_labelled(&item, "Automatic backup").checked == Some(true)));

    // Pause: captured and queued, not sent; resume: sent.
    host.click(&item, host.item_labelled(&item, "Pause sending").id);
    w.agent().wait_status("paused", Duration::from_secs(5), |s| s.paused);
    assert!(
        wait_until(Duration::from_secs(5), || host.string_prop(&item, "IconName") == "media-playback-pause"),
        "icon {:?} while paused",
        host.string_prop(&item, "IconName")
    );
    views.push(host_view(&host, &item, docs_x.as_ref()));
    doc.push_str(&format!(
        "Sending paused: IconName {:?}, ToolTip {:?}\n{}",
        host.string_prop(&item, "IconName"),
        host.tooltip(&item),
        menu_text(&host.menu(&item))
    ));
    save_doc_text(&doc, "gui-tray-menu.txt");
    let views: Vec<Image> = views.into_iter().flatten().collect();
    if let Some((first, rest)) = views.split_first() {
        let all = rest.iter().fold(first.clone(), |acc, v| acc.beside(v, 0xffffff));
        save_doc(&all, "gui-tray-menu.png");
    }
    fs::write(w.src.join("while-paused.txt"), b"written while paused").unwrap();
    let queued = w.agent().wait_status("change queued", Duration::from_secs(5), |s| s.queue_depth > 0);
    std::thread::sleep(Duration::from_secs(1));
    if w.mirror.join("while-paused.txt").exists() {
        w.fail("a change made while paused was sent");
    }
    assert_eq!(queued.capture, "ebpf", "pause must not stop capture");
    host.click(&item, host.item_labelled(&item, "Resume sending").id);
    w.assert_identical(SYNC_TIMEOUT, "after resume");
    let s = w.agent().wait_status("resumed", Duration::from_secs(5), |s| !s.paused && s.queue_depth == 0);
    assert!(s.bytes_sent_today > 0, "bytes sent today: {s:?}");
    let recent = w.agent().status_json()["recent_files"].clone();
    let listed = recent
        .as_array()
        .is_some_and(|files| files.iter().any(|f| f["path"].as_str().is_some_and(|p| p.ends_with("while-paused.txt"))));
    assert!(listed, "while-paused.txt not among the last files replicated: {recent}");

    // The receiver goes away: the icon asks for attention and says what to do.
    w.receiver.kill();
    let icon = |name: &str| wait_until(Duration::from_secs(10), || host.string_prop(&item, "IconName") == name);
    assert!(icon("network-offline"), "icon {:?} with the receiver down", host.string_prop(&item, "IconName"));
    assert_eq!(host.string_prop(&item, "Status"), "NeedsAttention");
    let (title, text) = host.tooltip(&item);
    assert_eq!(title, "Lifeline: receiver unreachable");
    assert!(text.contains("Check that lifeline-receiver runs"), "tooltip {text:?}");
    assert!(!host.item_labelled(&item, "Sync now").enabled);

    // The agent goes away: "not running", the switch greyed out.
    w.agent_mut().kill();
    assert!(icon("dialog-error"), "icon {:?} with the agent down", host.string_prop(&item, "IconName"));
    assert!(!host.item_labelled(&item, "Automatic backup").enabled);
    assert!(gui.is_running(), "lifeline-gui exited\n{}", gui.log_tail(LOG_LINES));
}

/// Without an agent the icon says so and the menu offers only what can work
/// (the status window, quitting).
#[test]
fn tray_without_agent_says_so_and_disables_actions() {
    require_tool("dbus-daemon");
    let dir = TestDir::new("gui-noagent");
    let socket = dir.path().join("no-agent.sock");
    let (_bus, host, _gui, item) = tray(dir.path(), &socket.display().to_string());
    assert_eq!(host.string_prop(&item, "IconName"), "dialog-error");
    assert_eq!(host.string_prop(&item, "Status"), "NeedsAttention");
    let (title, text) = host.tooltip(&item);
    assert_eq!(title, "Lifeline: agent not running");
    assert!(text.contains(&socket.display().to_string()), "tooltip {text:?} does not name the socket");
    let menu = host.menu(&item);
    for label in ["Automatic backup", "Pause sending", "Sync now"] {
        let m = menu.iter().find(|m| m.label == label).unwrap_or_else(|| panic!("no {label:?} in {menu:?}"));
        assert!(!m.enabled, "{label:?} is enabled without an agent: {menu:?}");
    }
    for label in ["Status window...", "Quit"] {
        let m = menu.iter().find(|m| m.label == label).unwrap_or_else(|| panic!("no {label:?} in {menu:?}"));
        assert!(m.enabled, "{label:?} is disabled: {menu:?}");
    }
}

/// The status window opens under Xvfb with the machine and state in its
/// title; its screenshot shows the state's colour and the figures; a click
/// on its "Pause sending" pauses the agent and the banner turns amber. The
/// GUI runs as an unprivileged user (nobody) in the control socket's group
/// (the agent's: root here): no root needed, the socket's mode decides.
#[test]
fn status_window_under_xvfb_shows_state_and_acts() {
    preflight(&[TOOLS, &["Xvfb", "xdotool"]].concat());
    let mut w = world("gui-win");
    let x = Xvfb::start(&w.dir.path().join("xvfb.log"), 1024, 768);
    // The way to the socket (mode 0660, the agent's group) must be open to
    // the group; the scratch directory is 0700.
    let socket = w.agent().control_path().to_path_buf();
    for d in socket.ancestors().skip(1).take_while(|d| d.starts_with(w.dir.path())) {
        fs::set_permissions(d, fs::Permissions::from_mode(0o750)).unwrap();
    }
    let mut gui = Gui::start_as(
        &["--window", "--control", &w.control(), "--poll-ms", "200"],
        &[("DISPLAY", x.display())],
        &w.dir.path().join("gui-window.log"),
        Some((NOBODY, 0)),
    );
    let title = format!("Lifeline - {} - in sync", w.machine);
    let Some(win) = wait_window(x.display(), &title, Duration::from_secs(15)) else {
        panic!("no window titled {title:?} on {}\n{}", x.display(), gui.log_tail(LOG_LINES));
    };
    // The window draws after it is mapped: wait for the banner.
    let shot = wait_shot(&x, win, |img| img.count(0, 0, 400, 40, GREEN_IN_SYNC) > 10_000).unwrap_or_else(|img| {
        panic!("no green banner: pixel (5,5) is {:06x}\n{}", img.pixel(5, 5), gui.log_tail(LOG_LINES))
    });
    save_doc(&shot, "gui-status-window.png");
    let proc_status = fs::read_to_string(format!("/proc/{}/status", gui.pid())).unwrap();
    let uid_line = proc_status.lines().find(|l| l.starts_with("Uid:")).unwrap_or_default();
    assert!(
        uid_line.split_whitespace().skip(1).all(|u| u == NOBODY.to_string()),
        "lifeline-gui does not run as nobody: {uid_line}"
    );
    let xprop = run(&["xprop", "-id", &win.to_string(), "WM_NAME"], x.display());
    assert!(xprop.contains(&w.machine), "xprop says {xprop:?}");

    // The menu panel's "Pause sending" (second item: see gui/src/window.rs's
    // layout: panel at x = 680 - 206, items from y = 80, 24 px each).
    click_pause_item(win, x.display());
    w.agent().wait_status("paused from the window", Duration::from_secs(5), |s| s.paused);
    let paused_title = format!("Lifeline - {} - paused", w.machine);
    assert!(
        wait_window(x.display(), &paused_title, Duration::from_secs(5)).is_some(),
        "title did not change to {paused_title:?}\n{}",
        gui.log_tail(LOG_LINES)
    );
    wait_shot(&x, win, |img| img.count(0, 0, 400, 40, AMBER_PAUSED) > 10_000)
        .unwrap_or_else(|img| panic!("no amber banner: pixel (5,5) is {:06x}", img.pixel(5, 5)));
    click_pause_item(win, x.display());
    w.agent().wait_status("resumed from the window", Duration::from_secs(5), |s| !s.paused);

    // The agent goes away: the window says so.
    w.agent_mut().kill();
    let shot = wait_shot(&x, win, |img| img.count(0, 0, 400, 40, GREY_AGENT_DOWN) > 10_000)
        .unwrap_or_else(|img| panic!("no 'agent not running' banner: pixel (5,5) is {:06x}", img.pixel(5, 5)));
    save_doc(&shot, "gui-status-window-agent-down.png");
    assert!(gui.is_running(), "lifeline-gui exited\n{}", gui.log_tail(LOG_LINES));
}

/// The status window lists a file removed on the machine (from the
/// receiver's history, asked through the agent) with a Restore button; a
/// click brings it back next to where it was, under a new name
/// (`letter.txt.lifeline-restored-<time>`), byte for byte with its mode;
/// nothing is written at its old name.
#[test]
fn status_window_restores_a_recent_deletion_under_a_new_name() {
    preflight(&[TOOLS, &["Xvfb", "xdotool"]].concat());
    let w = world("gui-deleted");
    let letter = w.src.join("letter.txt");
    fs::write(&letter, b"dear receiver, keep this").unwrap();
    fs::set_permissions(&letter, fs::Permissions::from_mode(0o640)).unwrap();
    w.assert_identical(SYNC_TIMEOUT, "letter written");
    fs::remove_file(&letter).unwrap();
    w.assert_identical(SYNC_TIMEOUT, "letter removed");
    let (x, mut gui, win) = status_window(&w, "in sync");
    // The first deletion's Restore button (gui/src/window.rs's layout:
    // x = 680 - 206, y = 252 + 20 + 18, 84 x 22).
    let shot = wait_shot(&x, win, |img| img.count(474, 290, 84, 22, RESTORE_BUTTON) > 1_000).unwrap_or_else(|img| {
        panic!("no Restore button: pixel (480,295) is {:06x}\n{}", img.pixel(480, 295), gui.log_tail(LOG_LINES))
    });
    save_doc(&shot, "gui-status-window-deleted.png");
    run(&["xdotool", "mousemove", "--window", &win.to_string(), "516", "301", "click", "1"], x.display());
    let restored = || -> Vec<std::path::PathBuf> {
        fs::read_dir(&w.src)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("letter.txt.lifeline-restored-"))
            .collect()
    };
    if !wait_until(Duration::from_secs(10), || restored().len() == 1) {
        panic!("nothing restored next to {}\n{}", letter.display(), gui.log_tail(LOG_LINES));
    }
    let back = &restored()[0];
    assert_eq!(fs::read(back).unwrap(), b"dear receiver, keep this");
    assert_eq!(fs::metadata(back).unwrap().permissions().mode() & 0o7777, 0o640);
    assert!(!letter.exists(), "written at its old name");
    assert!(gui.is_running(), "lifeline-gui exited\n{}", gui.log_tail(LOG_LINES));
}

/// An agent on the inotify fallback (`--capture notify`): the tray shows
/// the degraded state (amber, dialog-warning, "inotify fallback: no byte
/// ranges", the reason in the tooltip), never the green "in sync", even with
/// nothing left to send; its switch, clicked over dbusmenu, drops the
/// agent's inotify watches and then watches again and catches up; the
/// status window under Xvfb shows the amber banner and the same title.
#[test]
fn tray_and_window_show_the_notify_fallback_as_degraded_and_its_switch_works() {
    preflight(&[TOOLS, &["Xvfb"]].concat());
    let w = world_capturing_with("gui-notify", "notify");
    let (_bus, host, mut gui, item) = tray(w.dir.path(), &w.control());
    let degraded = wait_until(Duration::from_secs(5), || host.string_prop(&item, "IconName") == "dialog-warning");
    assert!(degraded, "icon is {:?}, not degraded\n{}", host.string_prop(&item, "IconName"), gui.log_tail(LOG_LINES));
    // In sync with the receiver, and still never green: watch a while.
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(1) {
        let icon = host.string_prop(&item, "IconName");
        assert_eq!(icon, "dialog-warning", "the tray left the degraded state");
        std::thread::sleep(Duration::from_millis(100));
    }
    let title = host.string_prop(&item, "Title");
    assert!(title.contains(&w.machine) && title.ends_with("inotify fallback: no byte ranges"), "title {title:?}");
    assert_eq!(host.string_prop(&item, "Status"), "Active");
    let (tip, text) = host.tooltip(&item);
    assert_eq!(tip, "Lifeline: inotify fallback: no byte ranges");
    assert!(
        text.contains("no byte ranges") && text.contains("chosen with --capture notify"),
        "tooltip text {text:?} does not say why"
    );

    // The switch: off drops the watches, on watches again and catches up.
    let switch = host.item_labelled(&item, "Automatic backup");
    assert_eq!((switch.checked, switch.enabled), (Some(true), true), "{switch:?}");
    assert!(inotify_watches(w.agent().pid()) > 0, "no inotify watch before the click");
    host.click(&item, switch.id);
    w.agent().wait_status("capture off", Duration::from_secs(5), |s| s.capture == "off");
    if !wait_until(Duration::from_secs(5), || inotify_watches(w.agent().pid()) == 0) {
        w.fail(&format!(
            "after the switch was clicked off the agent holds {} inotify watches",
            inotify_watches(w.agent().pid())
        ));
    }
    assert!(wait_until(Duration::from_secs(5), || { host.string_prop(&item, "IconName") == "media-playback-stop" }));
    fs::write(w.src.join("while-off.txt"), b"written while backup was off").unwrap();
    std::thread::sleep(Duration::from_secs(1));
    if w.mirror.join("while-off.txt").exists() {
        w.fail("a change made while off reached the mirror");
    }
    host.click(&item, host.item_labelled(&item, "Automatic backup").id);
    w.agent().wait_status("capture on", Duration::from_secs(5), |s| s.capture == "notify");
    if !wait_until(Duration::from_secs(5), || inotify_watches(w.agent().pid()) > 0) {
        w.fail("after the switch was clicked on the agent watches nothing");
    }
    w.assert_identical(SYNC_TIMEOUT, "after on");
    assert!(wait_until(Duration::from_secs(5), || { host.string_prop(&item, "IconName") == "dialog-warning" }));

    // The status window: amber banner, the degraded title.
    let (x, mut win_gui, win) = status_window(&w, "inotify fallback: no byte ranges");
    let shot = wait_shot(&x, win, |img| img.count(0, 0, 400, 40, AMBER_DEGRADED) > 10_000)
        .unwrap_or_else(|img| panic!("no amber banner: pixel (5,5) is {:06x}", img.pixel(5, 5)));
    assert_eq!(shot.count(0, 0, 400, 40, GREEN_IN_SYNC), 0, "green in the degraded banner");
    save_doc(&shot, "gui-status-window-degraded.png");
    assert!(gui.is_running() && win_gui.is_running(), "lifeline-gui exited");
}

/// An X server and the status window on it for `w`'s agent (polling every
/// 200 ms), found once its title says `state`.
fn status_window(w: &Rig, state: &str) -> (Xvfb, Gui, u32) {
    let x = Xvfb::start(&w.dir.path().join("xvfb.log"), 1024, 768);
    let gui = Gui::start(
        &["--window", "--control", &w.control(), "--poll-ms", "200"],
        &[("DISPLAY", x.display())],
        &w.dir.path().join("gui-window.log"),
    );
    let title = format!("Lifeline - {} - {state}", w.machine);
    let Some(win) = wait_window(x.display(), &title, Duration::from_secs(15)) else {
        panic!("no window titled {title:?}\n{}", gui.log_tail(LOG_LINES));
    };
    (x, gui, win)
}

/// Screenshots `win` until `ok` holds (Ok) or 10 s pass (Err: the last one).
fn wait_shot(
    x: &Xvfb,
    win: u32,
    ok: impl Fn(&lifeline_tests::desktop::Image) -> bool,
) -> Result<lifeline_tests::desktop::Image, lifeline_tests::desktop::Image> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let img = x.screenshot(win);
        if ok(&img) {
            return Ok(img);
        }
        if Instant::now() >= deadline {
            return Err(img);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn run(args: &[&str], display: &str) -> String {
    let out = std::process::Command::new(require_tool(args[0]))
        .args(&args[1..])
        .env("DISPLAY", display)
        .output()
        .unwrap_or_else(|e| panic!("run {args:?}: {e}"));
    assert!(out.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn docs_wanted() -> bool {
    std::env::var_os("LIFELINE_WRITE_DOCS").is_some()
}

/// What a host shows for the item now (its icon pixmap, tooltip title and
/// menu, all read over D-Bus), drawn on `x`; None without an X server.
fn host_view(host: &Host, item: &str, x: Option<&Xvfb>) -> Option<Image> {
    let x = x?;
    let pixmaps: Vec<(i32, i32, Vec<u8>)> = host.prop(item, "IconPixmap").try_into().expect("IconPixmap is a(iiay)");
    let icon = pixmaps.iter().find(|p| p.0 == 22);
    let (title, _) = host.tooltip(item);
    let lines: Vec<MenuLine> = host
        .menu(item)
        .into_iter()
        .map(|m| MenuLine { label: m.label, enabled: m.enabled, checked: m.checked, separator: m.separator })
        .collect();
    Some(x.render_menu(icon.map(|(w, h, d)| (*w as usize, *h as usize, d.as_slice())), &title, &lines))
}

/// With LIFELINE_WRITE_DOCS=1, keeps `text` as docs/NAME.
fn save_doc_text(text: &str, name: &str) {
    if docs_wanted() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs").join(name);
        fs::write(&p, text).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        eprintln!("wrote {}", p.display());
    }
}

/// With LIFELINE_WRITE_DOCS=1, keeps the screenshot as docs/NAME.
fn save_doc(img: &Image, name: &str) {
    if docs_wanted() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs").join(name);
        img.write_png(&p);
        eprintln!("wrote {}", p.display());
    }
}

/// Clicks the window's menu panel's "Pause sending" / "Resume sending" item
/// (second item: see gui/src/window.rs's layout: panel at x = 680 - 206,
/// items from y = 80, 24 px each).
fn click_pause_item(win: u32, display: &str) {
    run(&["xdotool", "mousemove", "--window", &win.to_string(), "520", "112", "click", "1"], display);
}
