//! The status window: a plain X11 client (x11rb, the core protocol's fills
//! and server-side fonts). No GPU, no toolkit: it opens on any X server
//! (Xvfb included), builds in seconds and stays a few MiB. Wayland desktops
//! show it through Xwayland.
//!
//! Left: a banner in the state's colour, then the agent's figures; right:
//! the tray's menu, drawn as a panel whose items work when clicked (the same
//! [`Look::menu`] the tray serves over dbusmenu), and below it the files
//! removed lately that the receiver keeps, each with a Restore button that
//! brings it back under a new name next to where it was.

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use lifeline_proto::control::v1::{AgentStatus, DeletedFile};
use x11rb::connection::Connection;
use x11rb::protocol::xproto::{
    AtomEnum, ChangeGCAux, ConnectionExt as _, CreateGCAux, CreateWindowAux, EventMask, Font, Gcontext, PropMode,
    Rectangle, Window, WindowClass,
};
use x11rb::protocol::Event;
use x11rb::rust_connection::RustConnection;
use x11rb::wrapper::ConnectionExt as _;

use crate::control::Agent;
use crate::state::{self, Action, Look, State};

const WIDTH: u16 = 680;
const HEIGHT: u16 = 520;
const BANNER: i16 = 44;
const MENU_X: i16 = WIDTH as i16 - 206;
const MENU_W: u16 = 190;
const ITEM_H: i16 = 24;
const MARGIN: i16 = 14;

const WHITE: u32 = 0xffffff;
const TEXT: u32 = 0x241f31;
const DIM: u32 = 0x77767b;
const PANEL: u32 = 0xf6f5f4;
const BORDER: u32 = 0xc0bfbc;
/// The Restore buttons.
pub const BUTTON: u32 = 0x3584e4;

/// The recent deletions' panel (right, below the menu): its header, then a
/// row each (the name, then a Restore button), at most [`DELETIONS_SHOWN`].
const DELETIONS_TOP: i16 = 252;
const DELETION_ROW: i16 = 46;
const DELETIONS_SHOWN: usize = 4;
const BUTTON_W: u16 = 84;
const BUTTON_H: u16 = 22;
/// Recent deletions are asked of the receiver (through the agent) this
/// often, not at every poll.
const DELETIONS_EVERY: Duration = Duration::from_secs(5);

/// What the window last knew.
struct Model {
    look: Look,
    status: Option<AgentStatus>,
    socket: String,
    /// Why the last click's action failed.
    action_error: Option<String>,
    /// Files removed lately, newest first; None: not known (the agent or
    /// the receiver did not answer).
    deletions: Option<Vec<DeletedFile>>,
    /// What the last Restore click did.
    notice: Option<String>,
}

struct Fonts {
    big: Font,
    body: Font,
    /// Cell width and ascent/descent of `body` (a fixed-width font).
    char_w: i16,
    ascent: i16,
    line: i16,
    big_ascent: i16,
}

struct Ui {
    conn: RustConnection,
    win: Window,
    gc: Gcontext,
    fonts: Fonts,
    colormap: u32,
    pixels: HashMap<u32, u32>,
    wm_delete: u32,
    net_wm_name: u32,
    utf8: u32,
    title: String,
}

/// Opens the status window and runs until it is closed.
pub fn run(socket: &Path, poll: Duration) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let mut agent = Agent::new(socket);
    let mut ui = Ui::open()?;
    let shown = socket.display().to_string();
    let mut model = refresh(&rt, &mut agent, &shown, None);
    model.deletions = rt.block_on(agent.recent_deletions(DELETIONS_SHOWN as u32)).ok();
    let mut dirty = true;
    let mut next_poll = Instant::now() + poll;
    let mut next_deletions = Instant::now() + DELETIONS_EVERY;
    loop {
        if dirty {
            ui.draw(&model)?;
            dirty = false;
        }
        ui.conn.flush()?;
        let mut event = ui.conn.poll_for_event()?;
        if event.is_none() {
            // Sleep until the X server speaks or the next poll is due.
            let wait = next_poll.saturating_duration_since(Instant::now());
            let mut fd = libc::pollfd { fd: ui.conn.stream().as_raw_fd(), events: libc::POLLIN, revents: 0 };
            // SAFETY: one valid pollfd for the duration of the call.
            unsafe { libc::poll(&mut fd, 1, wait.as_millis().min(i32::MAX as u128) as i32) };
            event = ui.conn.poll_for_event()?;
        }
        while let Some(ev) = event {
            match ev {
                Event::Expose(e) if e.count == 0 => dirty = true,
                Event::ClientMessage(m) if m.data.as_data32()[0] == ui.wm_delete => return Ok(()),
                Event::ButtonPress(b) => {
                    let shown_deletions = model.deletions.as_deref().unwrap_or_default();
                    if let Some(file) = hit_restore(shown_deletions, b.event_x, b.event_y).cloned() {
                        model.notice = Some(match rt.block_on(agent.restore_deleted(&file)) {
                            Ok(to) => format!("restored as {to}"),
                            Err(e) => format!("not restored: {e}"),
                        });
                        model.deletions = rt.block_on(agent.recent_deletions(DELETIONS_SHOWN as u32)).ok();
                        dirty = true;
                    } else if let Some(action) = hit(&model.look, b.event_x, b.event_y) {
                        match action {
                            Action::Quit => return Ok(()),
                            Action::OpenWindow => {}
                            a => {
                                let error = rt.block_on(agent.act(a)).err();
                                model = refresh(&rt, &mut agent, &shown, error).keeping(model);
                                dirty = true;
                            }
                        }
                    }
                }
                _ => {}
            }
            event = ui.conn.poll_for_event()?;
        }
        if Instant::now() >= next_poll {
            let mut new = refresh(&rt, &mut agent, &shown, model.action_error.take());
            dirty |= new.look != model.look || new.status != model.status;
            if Instant::now() >= next_deletions {
                new.deletions = rt.block_on(agent.recent_deletions(DELETIONS_SHOWN as u32)).ok();
                dirty |= new.deletions != model.deletions;
                next_deletions = Instant::now() + DELETIONS_EVERY;
                model.deletions = None;
            }
            model = new.keeping(model);
            next_poll = Instant::now() + poll;
        }
    }
}

fn refresh(rt: &tokio::runtime::Runtime, agent: &mut Agent, socket: &str, action_error: Option<String>) -> Model {
    let status = rt.block_on(agent.status());
    let look = match &status {
        Ok(s) => state::look(Some(s), socket, ""),
        Err(e) => state::look(None, socket, e),
    };
    Model { look, status: status.ok(), socket: socket.to_string(), action_error, deletions: None, notice: None }
}

impl Model {
    /// This model with what `old` knew of the deletions, where this one
    /// does not know.
    fn keeping(mut self, old: Model) -> Model {
        self.deletions = self.deletions.or(old.deletions);
        self.notice = self.notice.or(old.notice);
        self
    }
}

/// The Restore button of the `i`th recent deletion: x, y, width, height.
fn restore_button(i: usize) -> (i16, i16, u16, u16) {
    let top = DELETIONS_TOP + 20 + i as i16 * DELETION_ROW;
    (MENU_X, top + 18, BUTTON_W, BUTTON_H)
}

/// The deletion whose Restore button is under (x, y).
fn hit_restore(deletions: &[DeletedFile], x: i16, y: i16) -> Option<&DeletedFile> {
    deletions.iter().take(DELETIONS_SHOWN).enumerate().find_map(|(i, d)| {
        let (bx, by, w, h) = restore_button(i);
        (x >= bx && x < bx + w as i16 && y >= by && y < by + h as i16).then_some(d)
    })
}

/// The menu item under (x, y), if enabled.
fn hit(look: &Look, x: i16, y: i16) -> Option<Action> {
    if x < MENU_X || x >= MENU_X + MENU_W as i16 {
        return None;
    }
    let (mut top, _) = menu_top();
    for e in &look.menu {
        let h = if e.is_separator() { 9 } else { ITEM_H };
        if y >= top && y < top + h {
            return if e.enabled { e.action } else { None };
        }
        top += h;
    }
    None
}

/// Top of the menu panel's first item, and of its header.
fn menu_top() -> (i16, i16) {
    (BANNER + MARGIN + 22, BANNER + MARGIN)
}

impl Ui {
    fn open() -> anyhow::Result<Ui> {
        let (conn, screen_num) = x11rb::connect(None)
            .map_err(|e| anyhow::anyhow!("cannot open the status window: no X display ({e}); is DISPLAY set?"))?;
        let screen = conn.setup().roots[screen_num].clone();
        let win = conn.generate_id()?;
        conn.create_window(
            x11rb::COPY_DEPTH_FROM_PARENT,
            win,
            screen.root,
            40,
            40,
            WIDTH,
            HEIGHT,
            0,
            WindowClass::INPUT_OUTPUT,
            0,
            &CreateWindowAux::new()
                .background_pixel(screen.white_pixel)
                .event_mask(EventMask::EXPOSURE | EventMask::BUTTON_PRESS | EventMask::STRUCTURE_NOTIFY),
        )?;
        let atom = |name: &str| -> anyhow::Result<u32> { Ok(conn.intern_atom(false, name.as_bytes())?.reply()?.atom) };
        let wm_protocols = atom("WM_PROTOCOLS")?;
        let wm_delete = atom("WM_DELETE_WINDOW")?;
        let net_wm_name = atom("_NET_WM_NAME")?;
        let utf8 = atom("UTF8_STRING")?;
        conn.change_property32(PropMode::REPLACE, win, wm_protocols, AtomEnum::ATOM, &[wm_delete])?;
        conn.change_property8(
            PropMode::REPLACE,
            win,
            AtomEnum::WM_CLASS,
            AtomEnum::STRING,
            b"lifeline-gui\0Lifeline\0",
        )?;
        // A fixed size: the layout is laid out for it (WM_NORMAL_HINTS:
        // flags PMinSize|PMaxSize, then min and max width/height).
        let mut hints = [0u32; 18];
        hints[0] = 16 | 32;
        hints[5] = WIDTH as u32;
        hints[6] = HEIGHT as u32;
        hints[7] = WIDTH as u32;
        hints[8] = HEIGHT as u32;
        conn.change_property32(PropMode::REPLACE, win, AtomEnum::WM_NORMAL_HINTS, AtomEnum::WM_SIZE_HINTS, &hints)?;
        let fonts = Fonts::open(&conn)?;
        let gc = conn.generate_id()?;
        conn.create_gc(gc, win, &CreateGCAux::new().font(fonts.body).graphics_exposures(0))?;
        conn.map_window(win)?;
        conn.flush()?;
        Ok(Ui {
            conn,
            win,
            gc,
            fonts,
            colormap: screen.default_colormap,
            pixels: HashMap::new(),
            wm_delete,
            net_wm_name,
            utf8,
            title: String::new(),
        })
    }

    /// The screen pixel for 0xRRGGBB (exact on TrueColor screens).
    fn pixel(&mut self, rgb: u32) -> anyhow::Result<u32> {
        if let Some(p) = self.pixels.get(&rgb) {
            return Ok(*p);
        }
        let c = |shift: u32| ((rgb >> shift) & 0xff) as u16 * 257;
        let p = self.conn.alloc_color(self.colormap, c(16), c(8), c(0))?.reply()?.pixel;
        self.pixels.insert(rgb, p);
        Ok(p)
    }

    fn fill(&mut self, rgb: u32, x: i16, y: i16, w: u16, h: u16) -> anyhow::Result<()> {
        let p = self.pixel(rgb)?;
        self.conn.change_gc(self.gc, &ChangeGCAux::new().foreground(p))?;
        self.conn.poly_fill_rectangle(self.win, self.gc, &[Rectangle { x, y, width: w, height: h }])?;
        Ok(())
    }

    /// Text with its top-left at (x, y) on background `bg`, cut to `max`
    /// characters (core fonts take Latin-1: other characters become '?').
    fn text(&mut self, s: &str, x: i16, y: i16, fg: u32, bg: u32, big: bool) -> anyhow::Result<()> {
        let bytes: Vec<u8> = s.chars().take(255).map(|c| if (c as u32) < 256 { c as u8 } else { b'?' }).collect();
        let (font, ascent) =
            if big { (self.fonts.big, self.fonts.big_ascent) } else { (self.fonts.body, self.fonts.ascent) };
        let fg = self.pixel(fg)?;
        let bg = self.pixel(bg)?;
        self.conn.change_gc(self.gc, &ChangeGCAux::new().foreground(fg).background(bg).font(font))?;
        self.conn.image_text8(self.win, self.gc, x, y + ascent, &bytes)?;
        Ok(())
    }

    fn set_title(&mut self, title: &str) -> anyhow::Result<()> {
        if self.title == title {
            return Ok(());
        }
        let latin1: Vec<u8> = title.chars().map(|c| if (c as u32) < 256 { c as u8 } else { b'?' }).collect();
        self.conn.change_property8(PropMode::REPLACE, self.win, AtomEnum::WM_NAME, AtomEnum::STRING, &latin1)?;
        self.conn.change_property8(PropMode::REPLACE, self.win, self.net_wm_name, self.utf8, title.as_bytes())?;
        self.title = title.to_string();
        Ok(())
    }

    fn draw(&mut self, m: &Model) -> anyhow::Result<()> {
        let look = &m.look;
        self.set_title(&look.title)?;
        let colour = look.state.colour();
        self.fill(WHITE, 0, 0, WIDTH, HEIGHT)?;
        self.fill(colour, 0, 0, WIDTH, BANNER as u16)?;
        self.text(&look.headline, MARGIN, 12, WHITE, colour, true)?;

        let line = self.fonts.line;
        let x = MARGIN;
        let mut y = BANNER + MARGIN;
        let text_w = (MENU_X - MARGIN - x) as usize / self.fonts.char_w as usize;
        for l in wrap(&look.detail, text_w) {
            self.text(&l, x, y, TEXT, WHITE, false)?;
            y += line;
        }
        y += line / 2;
        match &m.status {
            Some(s) => {
                let rows = [
                    ("Machine", s.machine.clone()),
                    (
                        "Receiver",
                        format!("{} ({})", s.receiver, if s.connected { "connected" } else { "NOT connected" }),
                    ),
                    (
                        "Automatic backup",
                        match s.capture.as_str() {
                            "ebpf" => "on (eBPF)".to_string(),
                            "off" => "off".to_string(),
                            other => format!("on ({other} fallback, no byte ranges)"),
                        },
                    ),
                    (
                        "Capture",
                        // The whole reason is in the detail above (wrapped).
                        if s.fallback_reason.is_empty() {
                            "eBPF".to_string()
                        } else {
                            right_cut(&s.fallback_reason, text_w.saturating_sub(18))
                        },
                    ),
                    ("Sending", if s.paused { "paused".into() } else { "active".into() }),
                    ("Replication lag", state::duration(s.lag_ms)),
                    ("Queue depth", format!("{} changes", s.queue_depth)),
                    ("Sent today", state::bytes(s.bytes_sent_today)),
                ];
                for (k, v) in rows {
                    self.text(&format!("{k}:"), x, y, DIM, WHITE, false)?;
                    self.text(&v, x + 18 * self.fonts.char_w, y, TEXT, WHITE, false)?;
                    y += line;
                }
                y += line / 2;
                self.text("Last files replicated:", x, y, DIM, WHITE, false)?;
                y += line;
                if s.recent_files.is_empty() {
                    self.text("  none yet", x, y, TEXT, WHITE, false)?;
                    y += line;
                }
                for f in s.recent_files.iter().take(6) {
                    let entry = format!("  {}  {}", clock(f.unix_ms), left_cut(&f.path, text_w - 12));
                    self.text(&entry, x, y, TEXT, WHITE, false)?;
                    y += line;
                }
                y += line / 2;
                let error = match (&m.action_error, s.last_error.is_empty()) {
                    (Some(e), _) => format!("the last action failed: {e}"),
                    (None, true) => String::new(),
                    (None, false) => format!("{} -> {}", s.last_error, state::advice(&s.last_error)),
                };
                if error.is_empty() {
                    self.text("Last error: none", x, y, DIM, WHITE, false)?;
                } else {
                    self.text("Last error:", x, y, DIM, WHITE, false)?;
                    y += line;
                    for l in wrap(&error, text_w).into_iter().take(((HEIGHT as i16 - y) / line).max(0) as usize) {
                        self.text(&l, x, y, 0xa51d2d, WHITE, false)?;
                        y += line;
                    }
                }
            }
            None => {
                self.text(&format!("Control socket: {}", m.socket), x, y, DIM, WHITE, false)?;
            }
        }
        self.draw_menu(look)?;
        self.draw_deletions(m)?;
        Ok(())
    }

    /// The recent deletions, each with its Restore button, and what the
    /// last click did.
    fn draw_deletions(&mut self, m: &Model) -> anyhow::Result<()> {
        let cw = self.fonts.char_w;
        let width = (MENU_W as i16 / cw) as usize;
        self.text("Recently deleted", MENU_X, DELETIONS_TOP, DIM, WHITE, false)?;
        let mut y = DELETIONS_TOP + 20;
        match m.deletions.as_deref() {
            None => {
                self.text("(the receiver does not say)", MENU_X, y, DIM, WHITE, false)?;
                y += DELETION_ROW;
            }
            Some([]) => {
                self.text("nothing this week", MENU_X, y, TEXT, WHITE, false)?;
                y += DELETION_ROW;
            }
            Some(files) => {
                for (i, f) in files.iter().take(DELETIONS_SHOWN).enumerate() {
                    self.text(&left_cut(&f.path, width), MENU_X, y, TEXT, WHITE, false)?;
                    let (bx, by, w, h) = restore_button(i);
                    self.fill(BUTTON, bx, by, w, h)?;
                    let label_x = bx + (w as i16 - 7 * cw) / 2;
                    self.text("Restore", label_x, by + (h as i16 - self.fonts.line) / 2, WHITE, BUTTON, false)?;
                    let removed = clock((f.removed_ns / 1_000_000).max(0) as u64);
                    self.text(&removed, bx + w as i16 + cw, by + 4, DIM, WHITE, false)?;
                    y += DELETION_ROW;
                }
            }
        }
        if let Some(n) = &m.notice {
            for l in wrap(n, width).into_iter().take(((HEIGHT as i16 - y) / self.fonts.line).max(0) as usize) {
                self.text(&l, MENU_X, y, TEXT, WHITE, false)?;
                y += self.fonts.line;
            }
        }
        Ok(())
    }

    /// The tray menu as a panel: checkmark item with a box, disabled items
    /// greyed, separators as lines.
    fn draw_menu(&mut self, look: &Look) -> anyhow::Result<()> {
        let (items_top, header_top) = menu_top();
        let height: i16 = look.menu.iter().map(|e| if e.is_separator() { 9 } else { ITEM_H }).sum();
        self.text("Tray menu", MENU_X, header_top, DIM, WHITE, false)?;
        self.fill(BORDER, MENU_X - 1, items_top - 1, MENU_W + 2, height as u16 + 2)?;
        self.fill(PANEL, MENU_X, items_top, MENU_W, height as u16)?;
        let mut y = items_top;
        let cw = self.fonts.char_w;
        for e in &look.menu {
            if e.is_separator() {
                self.fill(BORDER, MENU_X + 6, y + 4, MENU_W - 12, 1)?;
                y += 9;
                continue;
            }
            let fg = if e.enabled { TEXT } else { 0xa8a6a3 };
            let ty = y + (ITEM_H - self.fonts.line) / 2;
            let mut tx = MENU_X + 10;
            if let Some(checked) = e.checked {
                let b = self.fonts.ascent.max(10);
                self.fill(fg, tx, ty + 1, b as u16, b as u16)?;
                let inner = if checked { colour_for_check(look.state) } else { WHITE };
                self.fill(inner, tx + 2, ty + 3, (b - 4) as u16, (b - 4) as u16)?;
                tx += b + cw;
            }
            self.text(&e.label, tx, ty, fg, PANEL, false)?;
            y += ITEM_H;
        }
        Ok(())
    }
}

/// The filled box of a checked checkmark item.
fn colour_for_check(state: State) -> u32 {
    if state == State::AgentDown {
        0xa8a6a3
    } else {
        0x1c71d8
    }
}

impl Fonts {
    /// Core X fonts: xfonts-base's clean fixed-width faces, else "fixed",
    /// which every X server has built in.
    fn open(conn: &RustConnection) -> anyhow::Result<Fonts> {
        let open = |names: &[&str]| -> anyhow::Result<Font> {
            for name in names {
                let id = conn.generate_id()?;
                if conn.open_font(id, name.as_bytes())?.check().is_ok() {
                    return Ok(id);
                }
            }
            anyhow::bail!("no usable X font (tried {names:?}); install xfonts-base")
        };
        let big = open(&["-misc-fixed-bold-r-normal--18-*-*-*-*-*-iso8859-1", "9x15bold", "fixed"])?;
        let body = open(&["-misc-fixed-medium-r-normal--13-*-*-*-*-*-iso8859-1", "7x13", "fixed"])?;
        let q = conn.query_font(body)?.reply().context("query the body font")?;
        let qb = conn.query_font(big)?.reply().context("query the banner font")?;
        Ok(Fonts {
            big,
            body,
            char_w: q.max_bounds.character_width.max(1),
            ascent: q.font_ascent,
            line: q.font_ascent + q.font_descent + 3,
            big_ascent: qb.font_ascent,
        })
    }
}

/// Words of `s` in lines of at most `width` characters.
fn wrap(s: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut cur = String::new();
    for word in s.split_whitespace() {
        if !cur.is_empty() && cur.len() + 1 + word.len() > width {
            lines.push(std::mem::take(&mut cur));
        }
        if !cur.is_empty() {
            cur.push(' ');
        }
        cur.push_str(word);
        while cur.len() > width {
            let rest = cur.split_off(cur.char_indices().nth(width).map_or(cur.len(), |(i, _)| i));
            lines.push(std::mem::replace(&mut cur, rest));
        }
    }
    if !cur.is_empty() {
        lines.push(cur);
    }
    lines
}

/// The end of `path` if it is longer than `max` characters ("...tail").
/// `s` cut to `max` characters, keeping its start.
fn right_cut(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let head: String = s.chars().take(max.saturating_sub(3)).collect();
    format!("{head}...")
}

fn left_cut(path: &str, max: usize) -> String {
    let n = path.chars().count();
    if n <= max {
        return path.to_string();
    }
    let tail: String = path.chars().skip(n - max.saturating_sub(3)).collect();
    format!("...{tail}")
}

/// Local wall-clock time "HH:MM:SS" of a Unix time in ms.
fn clock(unix_ms: u64) -> String {
    let t = (unix_ms / 1000) as libc::time_t;
    // SAFETY: localtime_r with valid pointers; `tm` is plain data.
    let tm = unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&t, &mut tm).is_null() {
            return "--:--:--".into();
        }
        tm
    };
    format!("{:02}:{:02}:{:02}", tm.tm_hour, tm.tm_min, tm.tm_sec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_keeps_words_and_width() {
        assert_eq!(wrap("one two three", 7), ["one two", "three"]);
        assert_eq!(wrap("abcdefghij", 4), ["abcd", "efgh", "ij"]);
        assert!(wrap("", 5).is_empty());
    }

    #[test]
    fn right_cut_keeps_the_start() {
        assert_eq!(right_cut("eBPF refused: too large", 12), "eBPF refu...");
        assert_eq!(right_cut("short", 12), "short");
    }

    #[test]
    fn left_cut_keeps_the_file_name() {
        assert_eq!(left_cut("/srv/data/file.txt", 40), "/srv/data/file.txt");
        assert_eq!(left_cut("/srv/data/file.txt", 11), "...file.txt");
    }

    #[test]
    fn clicks_hit_enabled_menu_items_only() {
        let up = state::look(
            Some(&AgentStatus {
                connected: true,
                capture: "ebpf".into(),
                initial_sync_done: true,
                ..Default::default()
            }),
            "/s",
            "",
        );
        let (top, _) = menu_top();
        assert_eq!(hit(&up, MENU_X + 5, top + 2), Some(Action::SetBackup(false)));
        assert_eq!(hit(&up, MENU_X + 5, top + ITEM_H + 2), Some(Action::SetPaused(true)));
        assert_eq!(hit(&up, MENU_X - 5, top + 2), None);
        let down = state::look(None, "/s", "refused");
        assert_eq!(hit(&down, MENU_X + 5, top + 2), None);
    }

    #[test]
    fn restore_buttons_hit_their_own_file() {
        let file = |p: &str| DeletedFile { path: p.into(), raw_path: p.as_bytes().to_vec(), removed_ns: 1 };
        let files = [file("/a"), file("/b")];
        let (x, y, w, h) = restore_button(1);
        assert_eq!(hit_restore(&files, x + 1, y + 1).map(|f| f.path.as_str()), Some("/b"));
        assert_eq!(hit_restore(&files, x + w as i16 - 1, y + h as i16 - 1).map(|f| f.path.as_str()), Some("/b"));
        assert_eq!(hit_restore(&files, x - 1, y + 1), None);
        // The row of a file not there has no button.
        let (x, y, _, _) = restore_button(2);
        assert_eq!(hit_restore(&files, x + 1, y + 1), None);
        // Below the menu, inside the window.
        let (_, top, _, _) = restore_button(0);
        let (_, bottom, _, h) = restore_button(DELETIONS_SHOWN - 1);
        assert!(top > 230 && bottom + h as i16 <= HEIGHT as i16);
    }
}
