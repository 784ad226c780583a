//! A desktop for the GUI's tests: a private D-Bus session bus
//! (`dbus-daemon --session`), a virtual X server (`Xvfb`), `lifeline-gui`
//! itself, and screenshots of X windows (read back from the X server, saved
//! as PNG). All are real processes, killed on drop.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use x11rb::connection::Connection;
use x11rb::protocol::xproto::{
    ChangeGCAux, ConnectionExt as _, CreateGCAux, CreateWindowAux, ImageFormat, Rectangle, WindowClass,
};
use x11rb::wrapper::ConnectionExt as _;

use crate::procs::{spawn_logged, Killed};
use crate::{bin_path, require_tool, tail, wait_until};

/// A session bus of its own (`dbus-daemon --session --address=unix:path=...`).
pub struct SessionBus {
    _child: Killed,
    address: String,
}

impl SessionBus {
    /// Starts a bus whose socket lives in `dir`; waits until it is there.
    pub fn start(dir: &Path) -> SessionBus {
        let exe = require_tool("dbus-daemon");
        fs::create_dir_all(dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        let socket = dir.join("bus");
        let address = format!("unix:path={}", socket.display());
        let log = dir.join("dbus-daemon.log");
        let mut child = spawn_logged(
            Command::new(exe).args(["--session", "--nofork", "--nopidfile"]).arg(format!("--address={address}")),
            &log,
        );
        if !wait_until(Duration::from_secs(10), || socket.exists() || !child.is_running()) || !socket.exists() {
            panic!("dbus-daemon did not create {}\n{}", socket.display(), tail(&log, 30));
        }
        SessionBus { _child: child, address }
    }

    /// What DBUS_SESSION_BUS_ADDRESS must say.
    pub fn address(&self) -> &str {
        &self.address
    }
}

/// A virtual X server on a display number no other server uses.
pub struct Xvfb {
    child: Killed,
    display: String,
}

impl Xvfb {
    /// Starts `Xvfb :N -screen 0 WxHx24` on the first free N from 70 up.
    pub fn start(log: &Path, width: u32, height: u32) -> Xvfb {
        let exe = require_tool("Xvfb");
        for n in 70..130 {
            let socket = PathBuf::from(format!("/tmp/.X11-unix/X{n}"));
            let lock = PathBuf::from(format!("/tmp/.X{n}-lock"));
            match fs::read_to_string(&lock) {
                Ok(pid) if server_alive(&pid) => continue,
                // A server that died without cleaning up: its number is free.
                Ok(_) => {
                    let _ = fs::remove_file(&lock);
                    let _ = fs::remove_file(&socket);
                }
                Err(_) if socket.exists() => continue,
                Err(_) => {}
            }
            let display = format!(":{n}");
            let mut child = spawn_logged(
                Command::new(&exe).arg(&display).args([
                    "-screen",
                    "0",
                    &format!("{width}x{height}x24"),
                    "-nolisten",
                    "tcp",
                    // No server reset when the last client leaves (xdotool's
                    // polls): a client connecting meanwhile would be dropped.
                    "-noreset",
                ]),
                log,
            );
            // Another server may take the number in between: then this one
            // exits and the next number is tried.
            wait_until(Duration::from_secs(10), || socket.exists() || !child.is_running());
            // Ready when a client gets through the connection setup.
            let ready = || x11rb::connect(Some(&display)).is_ok();
            if child.is_running() && socket.exists() && wait_until(Duration::from_secs(10), ready) {
                return Xvfb { child, display };
            }
        }
        panic!("no Xvfb display could be started\n{}", tail(log, 30));
    }

    /// What DISPLAY must say (":N").
    pub fn display(&self) -> &str {
        &self.display
    }

    /// A screenshot of `window` (its own pixels, read back from the server).
    pub fn screenshot(&self, window: u32) -> Image {
        let (conn, _) =
            x11rb::connect(Some(&self.display)).unwrap_or_else(|e| panic!("connect to {}: {e}", self.display));
        let geo = conn
            .get_geometry(window)
            .map_err(x11rb::errors::ReplyError::from)
            .and_then(|c| c.reply())
            .unwrap_or_else(|e| panic!("geometry of window {window:#x}: {e}"));
        let reply = conn
            .get_image(ImageFormat::Z_PIXMAP, window, 0, 0, geo.width, geo.height, !0)
            .unwrap_or_else(|e| panic!("GetImage: {e}"))
            .reply()
            .unwrap_or_else(|e| panic!("GetImage of window {window:#x}: {e}"));
        let (w, h) = (geo.width as usize, geo.height as usize);
        assert_eq!(reply.depth, 24, "the test X server runs at depth 24");
        // Depth 24 in Z format: 32 bits per pixel, B G R x (little endian).
        assert!(reply.data.len() >= w * h * 4, "short image: {} bytes for {w}x{h}", reply.data.len());
        let mut rgb = Vec::with_capacity(w * h * 3);
        for px in reply.data.chunks_exact(4).take(w * h) {
            rgb.extend_from_slice(&[px[2], px[1], px[0]]);
        }
        Image { width: w, height: h, rgb }
    }
}

/// One entry of a menu as a tray host read it (see [`Xvfb::render_menu`]).
pub struct MenuLine {
    pub label: String,
    pub enabled: bool,
    /// Some: a checkmark item, checked or not.
    pub checked: Option<bool>,
    pub separator: bool,
}

impl Xvfb {
    /// Draws what a tray host shows: the icon (`icon`: width, height,
    /// ARGB32 pixels, as the item's IconPixmap), `title` beside it, and the
    /// menu `lines` below, in a window of its own (core X fonts); returns
    /// its screenshot. For documentation: the picture of a menu read over
    /// D-Bus.
    pub fn render_menu(&self, icon: Option<(usize, usize, &[u8])>, title: &str, lines: &[MenuLine]) -> Image {
        const W: u16 = 300;
        const ROW: i16 = 22;
        const TOP: i16 = 32;
        let (conn, screen_num) = x11rb::connect(Some(&self.display)).expect("connect to Xvfb");
        let screen = conn.setup().roots[screen_num].clone();
        let height: i16 = TOP + 4 + lines.iter().map(|l| if l.separator { 9 } else { ROW }).sum::<i16>() + 4;
        let win = conn.generate_id().unwrap();
        conn.create_window(
            x11rb::COPY_DEPTH_FROM_PARENT,
            win,
            screen.root,
            500,
            20,
            W,
            height as u16,
            0,
            WindowClass::INPUT_OUTPUT,
            0,
            &CreateWindowAux::new().background_pixel(0xffffff).override_redirect(1),
        )
        .unwrap();
        conn.map_window(win).unwrap();
        let font = conn.generate_id().unwrap();
        let ok = conn.open_font(font, b"-misc-fixed-medium-r-normal--13-*-*-*-*-*-iso8859-1").unwrap().check().is_ok();
        if !ok {
            conn.open_font(font, b"fixed").unwrap().check().expect("the built-in font");
        }
        let gc = conn.generate_id().unwrap();
        conn.create_gc(gc, win, &CreateGCAux::new().font(font)).unwrap();
        let fill = |rgb: u32, x: i16, y: i16, w: u16, h: u16| {
            conn.change_gc(gc, &ChangeGCAux::new().foreground(rgb)).unwrap();
            conn.poly_fill_rectangle(win, gc, &[Rectangle { x, y, width: w, height: h }]).unwrap();
        };
        let text = |s: &str, x: i16, y: i16, fg: u32, bg: u32| {
            conn.change_gc(gc, &ChangeGCAux::new().foreground(fg).background(bg)).unwrap();
            let bytes: Vec<u8> = s.chars().map(|c| if (c as u32) < 256 { c as u8 } else { b'?' }).collect();
            conn.image_text8(win, gc, x, y, &bytes).unwrap();
        };
        // The panel (the icon is blended in after the screenshot).
        fill(0x3d3846, 0, 0, W, TOP as u16);
        text(title, 36, 20, 0xffffff, 0x3d3846);
        fill(0xc0bfbc, 0, TOP, W, (height - TOP) as u16);
        fill(0xf6f5f4, 1, TOP + 1, W - 2, (height - TOP - 2) as u16);
        let mut y = TOP + 4;
        for l in lines {
            if l.separator {
                fill(0xc0bfbc, 8, y + 4, W - 16, 1);
                y += 9;
                continue;
            }
            let fg = if l.enabled { 0x241f31 } else { 0xa8a6a3 };
            let mut x = 12;
            if let Some(checked) = l.checked {
                fill(fg, x, y + 5, 11, 11);
                fill(if checked { 0x1c71d8 } else { 0xffffff }, x + 2, y + 7, 7, 7);
                x += 18;
            }
            text(&l.label, x, y + 15, fg, 0xf6f5f4);
            y += ROW;
        }
        conn.sync().unwrap();
        let mut img = self.screenshot(win);
        if let Some((w, h, argb)) = icon {
            img.blend_argb(6, (TOP as usize - h) / 2, w, h, argb);
        }
        conn.destroy_window(win).unwrap();
        conn.flush().unwrap();
        img
    }
}

impl Drop for Xvfb {
    /// SIGTERM first: Xvfb then removes its lock file and socket (after a
    /// SIGKILL they stay and use up display numbers).
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        wait_until(Duration::from_secs(3), || !self.child.is_running());
    }
}

/// Whether the X server whose lock file says `pid` still runs.
fn server_alive(pid: &str) -> bool {
    match pid.trim().parse::<libc::pid_t>() {
        // SAFETY: signal 0 only checks that the process exists.
        Ok(p) if p > 0 => unsafe { libc::kill(p, 0) == 0 || *libc::__errno_location() == libc::EPERM },
        _ => false,
    }
}

/// An RGB image.
#[derive(Clone)]
pub struct Image {
    pub width: usize,
    pub height: usize,
    /// Row by row, 3 bytes a pixel.
    pub rgb: Vec<u8>,
}

impl Image {
    /// 0xRRGGBB at (x, y).
    pub fn pixel(&self, x: usize, y: usize) -> u32 {
        let i = (y * self.width + x) * 3;
        (self.rgb[i] as u32) << 16 | (self.rgb[i + 1] as u32) << 8 | self.rgb[i + 2] as u32
    }

    /// This image with `other` to its right (10 px apart), on `bg`.
    pub fn beside(&self, other: &Image, bg: u32) -> Image {
        let (w, h) = (self.width + 10 + other.width, self.height.max(other.height));
        let [_, r, g, b] = bg.to_be_bytes();
        let mut rgb = [r, g, b].repeat(w * h);
        for (img, x0) in [(self, 0), (other, self.width + 10)] {
            for y in 0..img.height {
                let src = &img.rgb[y * img.width * 3..(y + 1) * img.width * 3];
                let at = (y * w + x0) * 3;
                rgb[at..at + src.len()].copy_from_slice(src);
            }
        }
        Image { width: w, height: h, rgb }
    }

    /// Draws an ARGB32 (network byte order) picture over the image at (x, y).
    pub fn blend_argb(&mut self, x: usize, y: usize, w: usize, h: usize, argb: &[u8]) {
        for (i, px) in argb.chunks_exact(4).take(w * h).enumerate() {
            let (xx, yy) = (x + i % w, y + i / w);
            if xx >= self.width || yy >= self.height {
                continue;
            }
            let a = px[0] as u32;
            let o = (yy * self.width + xx) * 3;
            for c in 0..3 {
                let under = self.rgb[o + c] as u32;
                self.rgb[o + c] = ((px[1 + c] as u32 * a + under * (255 - a)) / 255) as u8;
            }
        }
    }

    /// How many pixels in the rectangle are exactly `rgb`.
    pub fn count(&self, x: usize, y: usize, w: usize, h: usize, rgb: u32) -> usize {
        (y..(y + h).min(self.height))
            .flat_map(|yy| (x..(x + w).min(self.width)).map(move |xx| (xx, yy)))
            .filter(|&(xx, yy)| self.pixel(xx, yy) == rgb)
            .count()
    }

    /// Writes a PNG (8-bit RGB, zlib-compressed rows with no filter).
    pub fn write_png(&self, path: &Path) {
        fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
            out.extend_from_slice(&(data.len() as u32).to_be_bytes());
            let mut crc = crc32fast::Hasher::new();
            crc.update(kind);
            crc.update(data);
            out.extend_from_slice(kind);
            out.extend_from_slice(data);
            out.extend_from_slice(&crc.finalize().to_be_bytes());
        }
        let mut ihdr = Vec::new();
        ihdr.extend_from_slice(&(self.width as u32).to_be_bytes());
        ihdr.extend_from_slice(&(self.height as u32).to_be_bytes());
        ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8 bits, RGB, deflate, no filter, no interlace
        let mut raw = Vec::with_capacity((self.width * 3 + 1) * self.height);
        for row in self.rgb.chunks_exact(self.width * 3) {
            raw.push(0);
            raw.extend_from_slice(row);
        }
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
        z.write_all(&raw).expect("deflate");
        let idat = z.finish().expect("deflate");
        let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
        chunk(&mut out, b"IHDR", &ihdr);
        chunk(&mut out, b"IDAT", &idat);
        chunk(&mut out, b"IEND", &[]);
        if let Some(d) = path.parent() {
            fs::create_dir_all(d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
        }
        fs::write(path, out).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }
}

/// A running `lifeline-gui ARGS`; killed on drop.
pub struct Gui {
    child: Killed,
    log: PathBuf,
}

impl Gui {
    /// Starts `lifeline-gui args...` with `env` added, logging to `log`.
    pub fn start(args: &[&str], env: &[(&str, &str)], log: &Path) -> Gui {
        Gui::start_as(args, env, log, None)
    }

    /// As [`Gui::start`], as user and group `run_as` (uid, gid) if given:
    /// the GUI needs no root, only access to the control socket.
    pub fn start_as(args: &[&str], env: &[(&str, &str)], log: &Path, run_as: Option<(u32, u32)>) -> Gui {
        let mut cmd = Command::new(bin_path("lifeline-gui"));
        cmd.args(args).env("RUST_LOG", "info");
        for (k, v) in env {
            cmd.env(k, v);
        }
        if let Some((uid, gid)) = run_as {
            use std::os::unix::process::CommandExt;
            cmd.uid(uid).gid(gid);
        }
        Gui { child: spawn_logged(&mut cmd, log), log: log.to_path_buf() }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn is_running(&mut self) -> bool {
        self.child.is_running()
    }

    /// The last `n` lines of its log, headed by its path.
    pub fn log_tail(&self, n: usize) -> String {
        format!("--- lifeline-gui log {} ---\n{}", self.log.display(), tail(&self.log, n))
    }
}

/// Polls `xdotool search --name PATTERN` on `display` until a window shows;
/// returns its id.
pub fn wait_window(display: &str, pattern: &str, timeout: Duration) -> Option<u32> {
    let xdotool = require_tool("xdotool");
    let deadline = Instant::now() + timeout;
    loop {
        let out = Command::new(&xdotool)
            .args(["search", "--name", pattern])
            .env("DISPLAY", display)
            .output()
            .expect("run xdotool");
        let found = String::from_utf8_lossy(&out.stdout).lines().next().and_then(|l| l.trim().parse().ok());
        if found.is_some() {
            return found;
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
