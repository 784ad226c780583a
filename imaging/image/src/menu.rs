//! `lifeline-image menu`: the attended text menu of the boot OS.
//!
//! The boot OS's hook runs it on the console when the media was made with
//! `lifeline.mode=menu`. Whoever sits at the machine chooses a service
//! (back up a disk, restore an image onto a disk), a disk (size and model
//! from sysfs), a destination (the receiver, a filesystem labelled
//! `LIFELINE`, or any partition or disk attached to this machine), an image
//! name and the repository password, typed without echo (twice for a new
//! repository). The password is never written anywhere: it goes to the
//! `lifeline-image` that does the job through a pipe.
//!
//! * The one-time boot token is traded for a boot session once, at start
//!   (style receiver); the session is kept in `WORK_DIR/token` so the menu
//!   started again (after the shell) does not claim again.
//! * Every refusal (no network, receiver unreachable, token refused, wrong
//!   password, no repository, a disk too small, no confirmation) is said in
//!   plain words and leads back to the main menu with no disk written.
//! * A restore names the disk it will overwrite and goes on only once its
//!   name is typed back.
//! * The jobs themselves are `lifeline-image backup` / `restore` run as
//!   children with the console inherited, so their progress line (bytes,
//!   rate, ETA) shows, and with the receiver they report the job to it.
//!
//! Questions are lines of their own starting with `? ` (the answer is typed
//! on the next line); results are marker lines as the unattended hook
//! prints them (`LIFELINE-BACKUP-OK image=NAME disk=/dev/DISK seconds=N`,
//! `LIFELINE-RESTORE-FAILED: why`, ...), and the main menu is announced by a
//! line starting with `LIFELINE-MENU`. The dialogue is [`Menu::run`] over
//! a [`Console`] and a [`System`], so it is tested with both in memory.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use lifeline_image::util::{format_utc, human_bytes};

/// The arguments of `lifeline-image menu` (the boot OS's hook passes them
/// from the kernel command line).
#[derive(clap::Args, Clone, Debug)]
pub struct MenuArgs {
    /// This machine's name (lifeline.machine).
    #[arg(long)]
    pub machine: String,
    /// receiver (images go to the receiver or a disk attached here) or local
    /// (attached disks only).
    #[arg(long, default_value = "receiver")]
    pub style: String,
    /// The receiver's address (lifeline.receiver); empty: none.
    #[arg(long, default_value = "")]
    pub receiver: String,
    /// The one-time boot token (NAME:SECRET), traded once for a session.
    #[arg(long)]
    pub boot_token_file: Option<PathBuf>,
    /// The receiver's CA certificate.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// The network interface that got a DHCP lease (empty: none did).
    #[arg(long, default_value = "")]
    pub network: String,
    /// Where the boot session's credential is kept.
    #[arg(long, default_value = "/run/lifeline")]
    pub work_dir: PathBuf,
    /// Where a destination filesystem is mounted.
    #[arg(long, default_value = "/mnt/lifeline")]
    pub mount_dir: PathBuf,
}

/// A whole disk of this machine.
#[derive(Clone, Debug, PartialEq)]
pub struct Disk {
    /// `vda`, `sda`, `nvme0n1`.
    pub name: String,
    pub size: u64,
    pub model: String,
}

impl Disk {
    fn describe(&self) -> String {
        format!("/dev/{}  {}  {}", self.name, human_bytes(self.size), self.model)
    }
}

/// A filesystem on a partition or a whole disk.
#[derive(Clone, Debug, PartialEq)]
pub struct Volume {
    /// `vdb1`.
    pub dev: String,
    /// The disk it is on (`vdb`).
    pub disk: String,
    pub size: u64,
    pub label: String,
    pub fstype: String,
}

impl Volume {
    fn describe(&self) -> String {
        let label = if self.label.is_empty() { String::new() } else { format!(" labelled {}", self.label) };
        format!("/dev/{}  {} {}{label}", self.dev, human_bytes(self.size), self.fstype)
    }
}

/// Where images are kept.
#[derive(Clone, Debug, PartialEq)]
pub enum Dest {
    /// The receiver, with the boot session's credential.
    Receiver { url: String },
    /// A repository directory on a filesystem attached to this machine.
    Local { dev: String, disk: String, repo: PathBuf },
}

impl Dest {
    fn describe(&self) -> String {
        match self {
            Dest::Receiver { url } => format!("the receiver {url}"),
            Dest::Local { dev, .. } => format!("/dev/{dev}"),
        }
    }
}

/// One image of a repository.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageRow {
    pub name: String,
    pub created: String,
    pub machine: String,
    pub disk_size: u64,
}

/// Why a repository did not open.
#[derive(Clone, Debug, PartialEq)]
pub enum OpenError {
    WrongPassword,
    NoRepository,
    Other(String),
}

/// What the menu's user may end with.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Power {
    Off,
    Reboot,
}

/// The dialogue's side: text out, lines in.
pub trait Console {
    /// Print one line.
    fn say(&mut self, line: &str);
    /// Read a line (trimmed); `None` at the end of input.
    fn line(&mut self) -> Option<String>;
    /// Ask `question` and read a line without echoing it (echo goes off
    /// before the question shows, so nothing typed early is echoed).
    fn secret(&mut self, question: &str) -> Option<String>;
}

/// The machine's side: disks, filesystems and the jobs.
pub trait System {
    fn disks(&mut self) -> Vec<Disk>;
    fn volumes(&mut self) -> Vec<Volume>;
    /// Mount `dev`; the mount point.
    fn mount(&mut self, dev: &str) -> Result<PathBuf, String>;
    /// Unmount what [`System::mount`] mounted (nothing if nothing is).
    fn unmount(&mut self);
    /// Trade the boot token for a session; a line saying what for.
    fn claim(&mut self) -> Result<String, String>;
    /// The images of the repository at `dest` (checks the password).
    fn open(&mut self, dest: &Dest, password: &str) -> Result<Vec<ImageRow>, OpenError>;
    fn init(&mut self, dest: &Dest, password: &str) -> Result<(), String>;
    fn backup(&mut self, dest: &Dest, password: &str, disk: &str, name: &str) -> Result<(), String>;
    fn restore(&mut self, dest: &Dest, password: &str, image: &str, disk: &str) -> Result<(), String>;
    fn power(&mut self, what: Power) -> String;
    /// Unix seconds now.
    fn now(&self) -> u64;
}

/// How the receiver stands.
#[derive(Clone, Debug, PartialEq)]
enum ReceiverState {
    /// Style local: none is offered.
    None,
    Ready(String),
    /// Not usable, and why; `retry`: connecting again may help.
    Unavailable {
        why: String,
        retry: bool,
    },
}

/// How [`Menu::run`] ended.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum End {
    /// The user asked for a shell.
    Shell,
    /// The input ended.
    Eof,
    /// Power off or reboot was asked for (and did not happen: a test).
    Power(Power),
}

/// A step that did not go on: back to the main menu, or no more input.
#[derive(Debug, PartialEq)]
enum Stop {
    Back,
    Eof,
}

type Step<T> = Result<T, Stop>;

/// The attended menu.
pub struct Menu {
    pub machine: String,
    pub receiver_url: String,
    receiver: ReceiverState,
}

impl Menu {
    /// `style`: receiver or local; `receiver_url` empty for none; `network`:
    /// the interface with a lease, empty if none.
    pub fn new(machine: &str, style: &str, receiver_url: &str, network: &str) -> Menu {
        let receiver = if style == "local" {
            ReceiverState::None
        } else if receiver_url.is_empty() {
            ReceiverState::Unavailable {
                why: "the boot media names no receiver (lifeline.receiver)".into(),
                retry: false,
            }
        } else if network.is_empty() {
            ReceiverState::Unavailable {
                why: "no network: no interface got an address by DHCP (is the cable in?)".into(),
                retry: false,
            }
        } else {
            ReceiverState::Unavailable { why: "not connected yet".into(), retry: true }
        };
        Menu { machine: machine.to_string(), receiver_url: receiver_url.to_string(), receiver }
    }

    /// Connect to the receiver (claim the boot token) if that may work.
    fn connect(&mut self, c: &mut dyn Console, s: &mut dyn System) {
        if !matches!(self.receiver, ReceiverState::Unavailable { retry: true, .. }) {
            return;
        }
        c.say(&format!("Connecting to the receiver {} ...", self.receiver_url));
        self.receiver = match s.claim() {
            Ok(what) => ReceiverState::Ready(what),
            Err(e) => {
                // A refused token stays refused; an unreachable receiver may come back.
                let refused = e.contains("boot token") && !e.contains("cannot reach");
                let why = if refused {
                    format!("the receiver refused this boot's token: {e}")
                } else {
                    format!("the receiver cannot be reached: {e}")
                };
                ReceiverState::Unavailable { why, retry: !refused }
            }
        };
    }

    /// The dialogue, until the user leaves it or the input ends.
    pub fn run(&mut self, c: &mut dyn Console, s: &mut dyn System) -> End {
        c.say("");
        c.say(&format!("Lifeline boot OS for machine {}", self.machine));
        self.connect(c, s);
        loop {
            c.say("");
            match &self.receiver {
                ReceiverState::None => {
                    c.say("Images go to a disk attached to this machine (no receiver: local media).")
                }
                ReceiverState::Ready(what) => c.say(&format!("Receiver {}: connected ({what}).", self.receiver_url)),
                ReceiverState::Unavailable { why, .. } => {
                    c.say(&format!("Receiver unavailable: {why}. Disks attached to this machine can still be used."))
                }
            }
            let retry = matches!(self.receiver, ReceiverState::Unavailable { retry: true, .. });
            let mut items = vec![
                "Back up a disk".to_string(),
                "Restore an image onto a disk".to_string(),
                "Shell (for experts; exit it to come back)".to_string(),
                "Reboot".to_string(),
                "Power off".to_string(),
            ];
            if retry {
                items.push("Connect to the receiver again".to_string());
            }
            c.say(&format!("LIFELINE-MENU machine={}", self.machine));
            let choice = match choose(c, "What do you want to do?", &items, false) {
                Ok(i) => i,
                Err(_) => return End::Eof,
            };
            let done = match choice {
                0 => self.backup(c, s),
                1 => self.restore(c, s),
                2 => return End::Shell,
                3 => return self.power(c, s, Power::Reboot),
                4 => return self.power(c, s, Power::Off),
                _ => {
                    self.connect(c, s);
                    Ok(None)
                }
            };
            s.unmount();
            match done {
                Err(Stop::Eof) => return End::Eof,
                Err(Stop::Back) | Ok(None) => {}
                Ok(Some(())) => match choose(
                    c,
                    "What now?",
                    &["Back to the menu".into(), "Reboot".into(), "Power off".into()],
                    false,
                ) {
                    Ok(0) => {}
                    Ok(1) => return self.power(c, s, Power::Reboot),
                    Ok(_) => return self.power(c, s, Power::Off),
                    Err(_) => return End::Eof,
                },
            }
        }
    }

    fn power(&mut self, c: &mut dyn Console, s: &mut dyn System, what: Power) -> End {
        c.say(match what {
            Power::Off => "Powering off.",
            Power::Reboot => "Rebooting.",
        });
        let e = s.power(what);
        c.say(&e);
        End::Power(what)
    }

    /// A backup; `Ok(Some(()))` once a job ran (whatever its result).
    fn backup(&mut self, c: &mut dyn Console, s: &mut dyn System) -> Step<Option<()>> {
        let disks = s.disks();
        if disks.is_empty() {
            c.say("No disk found on this machine: nothing to back up.");
            return Err(Stop::Back);
        }
        let rows: Vec<String> = disks.iter().map(Disk::describe).collect();
        let disk = disks[choose(c, "Which disk do you want to back up?", &rows, true)?].clone();
        let dest = self.destination(c, s, Some(&disk.name), "Where should the image go?")?;
        let default = format!("{}-{}", self.machine, stamp(s.now()));
        let name = loop {
            c.say(&format!("? Image name (Enter for {default}):"));
            let n = c.line().ok_or(Stop::Eof)?;
            let n = if n.is_empty() { default.clone() } else { n };
            match check_name(&n) {
                Ok(()) => break n,
                Err(why) => c.say(&format!("{n:?} cannot be an image name: {why}.")),
            }
        };
        let (password, _) = self.password(c, s, &dest, true, "backup")?;
        c.say(&format!(
            "Back up /dev/{} ({}, {}) to {} as image {name}.",
            disk.name,
            human_bytes(disk.size),
            disk.model,
            dest.describe()
        ));
        if !yes(c, "? Start the backup? (yes/no)")? {
            c.say("Not started; nothing was written.");
            return Err(Stop::Back);
        }
        let t0 = s.now();
        match s.backup(&dest, &password, &disk.name, &name) {
            Ok(()) => c.say(&format!(
                "LIFELINE-BACKUP-OK image={name} disk=/dev/{} seconds={}",
                disk.name,
                s.now().saturating_sub(t0)
            )),
            Err(e) => c.say(&format!("LIFELINE-BACKUP-FAILED: {e}")),
        }
        Ok(Some(()))
    }

    fn restore(&mut self, c: &mut dyn Console, s: &mut dyn System) -> Step<Option<()>> {
        let dest = self.destination(c, s, None, "Where are the images?")?;
        let (password, mut images) = self.password(c, s, &dest, false, "restore")?;
        if images.is_empty() {
            c.say(&format!("{} holds no image yet: nothing to restore.", dest.describe()));
            return Err(Stop::Back);
        }
        // This machine's first, newest first.
        images.sort_by(|a, b| {
            (a.machine != self.machine).cmp(&(b.machine != self.machine)).then(b.created.cmp(&a.created))
        });
        let rows: Vec<String> = images
            .iter()
            .map(|i| format!("{}  {}  machine {}  disk {}", i.name, i.created, i.machine, human_bytes(i.disk_size)))
            .collect();
        let image = images[choose(c, "Which image do you want to restore?", &rows, true)?].clone();
        let exclude = match &dest {
            Dest::Local { disk, .. } => Some(disk.clone()),
            Dest::Receiver { .. } => None,
        };
        let disks: Vec<Disk> = s.disks().into_iter().filter(|d| Some(&d.name) != exclude.as_ref()).collect();
        if disks.is_empty() {
            c.say("No disk to restore onto.");
            return Err(Stop::Back);
        }
        let rows: Vec<String> = disks.iter().map(Disk::describe).collect();
        let disk = disks
            [choose(c, "Which disk should the image be written to? EVERYTHING ON IT WILL BE REPLACED.", &rows, true)?]
        .clone();
        if disk.size < image.disk_size {
            c.say(&format!(
                "/dev/{} ({}) is smaller than the image's disk ({}): choose a disk at least as large. Nothing was written.",
                disk.name,
                human_bytes(disk.size),
                human_bytes(image.disk_size)
            ));
            return Err(Stop::Back);
        }
        c.say(&format!(
            "Restoring {} overwrites /dev/{} ({}, {}): everything on that disk will be replaced.",
            image.name,
            disk.name,
            human_bytes(disk.size),
            disk.model
        ));
        c.say(&format!("? Type the disk's name ({}) to restore onto it, anything else to go back:", disk.name));
        let typed = c.line().ok_or(Stop::Eof)?;
        if typed != disk.name && typed != format!("/dev/{}", disk.name) {
            c.say("Not confirmed; nothing was written.");
            return Err(Stop::Back);
        }
        let t0 = s.now();
        match s.restore(&dest, &password, &image.name, &disk.name) {
            Ok(()) => c.say(&format!(
                "LIFELINE-RESTORE-OK image={} disk=/dev/{} seconds={}",
                image.name,
                disk.name,
                s.now().saturating_sub(t0)
            )),
            Err(e) => c.say(&format!("LIFELINE-RESTORE-FAILED: {e}")),
        }
        Ok(Some(()))
    }

    /// The repository password, checked by opening the repository (and for a
    /// backup to a place with none yet, typed twice and the repository made).
    fn password(
        &mut self,
        c: &mut dyn Console,
        s: &mut dyn System,
        dest: &Dest,
        create: bool,
        job: &str,
    ) -> Step<(String, Vec<ImageRow>)> {
        let tag = job.to_uppercase();
        let pw = c.secret("? Repository password (not shown as you type):").ok_or(Stop::Eof)?;
        if pw.is_empty() {
            c.say("An empty password is not allowed. Nothing was written.");
            return Err(Stop::Back);
        }
        match s.open(dest, &pw) {
            Ok(images) => Ok((pw, images)),
            Err(OpenError::WrongPassword) => {
                c.say(&format!(
                    "LIFELINE-{tag}-FAILED: wrong password for the repository on {}. Nothing was written.",
                    dest.describe()
                ));
                Err(Stop::Back)
            }
            Err(OpenError::NoRepository) if create => {
                c.say(&format!(
                    "{} holds no repository yet: a new one will be made with this password.",
                    dest.describe()
                ));
                let again = c.secret("? Type the password again:").ok_or(Stop::Eof)?;
                if again != pw {
                    c.say("The two passwords differ. Nothing was written.");
                    return Err(Stop::Back);
                }
                match s.init(dest, &pw) {
                    Ok(()) => {
                        c.say(&format!("Created the repository on {}.", dest.describe()));
                        Ok((pw, Vec::new()))
                    }
                    Err(e) => {
                        c.say(&format!(
                            "LIFELINE-{tag}-FAILED: cannot create the repository on {}: {e}",
                            dest.describe()
                        ));
                        Err(Stop::Back)
                    }
                }
            }
            Err(OpenError::NoRepository) => {
                c.say(&format!("LIFELINE-{tag}-FAILED: {} holds no repository: nothing to restore.", dest.describe()));
                Err(Stop::Back)
            }
            Err(OpenError::Other(e)) => {
                c.say(&format!("LIFELINE-{tag}-FAILED: cannot open the repository on {}: {e}", dest.describe()));
                Err(Stop::Back)
            }
        }
    }

    /// The receiver or a filesystem attached to this machine (not on
    /// `exclude`, the disk being backed up); a local one is mounted.
    fn destination(
        &mut self,
        c: &mut dyn Console,
        s: &mut dyn System,
        exclude: Option<&str>,
        question: &str,
    ) -> Step<Dest> {
        let vols: Vec<Volume> = s.volumes().into_iter().filter(|v| Some(v.disk.as_str()) != exclude).collect();
        let mut items = Vec::new();
        let mut choices: Vec<Option<Volume>> = Vec::new();
        match &self.receiver {
            ReceiverState::Ready(_) => {
                items.push(format!("The receiver {}", self.receiver_url));
                choices.push(None);
            }
            ReceiverState::Unavailable { why, .. } => c.say(&format!("(The receiver is not offered: {why}.)")),
            ReceiverState::None => {}
        }
        for v in vols.iter().filter(|v| v.label == "LIFELINE") {
            items.push(format!("The disk attached here labelled LIFELINE: {}", v.describe()));
            choices.push(Some(v.clone()));
        }
        let others = !vols.is_empty();
        if others {
            items.push("Another partition or disk attached to this machine".into());
        }
        if items.is_empty() {
            c.say("There is nowhere to keep images: no receiver, and no filesystem on a disk attached to this machine. Attach a disk (a filesystem labelled LIFELINE is offered first) and choose again.");
            return Err(Stop::Back);
        }
        let i = choose(c, question, &items, true)?;
        let vol = if others && i == items.len() - 1 {
            let rows: Vec<String> = vols.iter().map(Volume::describe).collect();
            vols[choose(
                c,
                "Which filesystem holds (or should hold) the images? They go to its directory lifeline-images.",
                &rows,
                true,
            )?]
            .clone()
        } else {
            match &choices[i] {
                None => return Ok(Dest::Receiver { url: self.receiver_url.clone() }),
                Some(v) => v.clone(),
            }
        };
        match s.mount(&vol.dev) {
            Ok(dir) => {
                Ok(Dest::Local { dev: vol.dev.clone(), disk: vol.disk.clone(), repo: dir.join("lifeline-images") })
            }
            Err(e) => {
                c.say(&format!("Cannot mount /dev/{}: {e}", vol.dev));
                Err(Stop::Back)
            }
        }
    }
}

/// Ask `question` with numbered `items` until a valid number comes; `back`:
/// 0 goes back to the main menu.
fn choose(c: &mut dyn Console, question: &str, items: &[String], back: bool) -> Step<usize> {
    loop {
        for (i, it) in items.iter().enumerate() {
            c.say(&format!("  {}) {it}", i + 1));
        }
        if back {
            c.say("  0) Back to the menu");
        }
        c.say(&format!("? {question} Type a number:"));
        let a = c.line().ok_or(Stop::Eof)?;
        match a.parse::<usize>() {
            Ok(0) if back => return Err(Stop::Back),
            Ok(n) if n >= 1 && n <= items.len() => return Ok(n - 1),
            _ => c.say(&format!("{a:?} is not one of the numbers shown.")),
        }
    }
}

fn yes(c: &mut dyn Console, question: &str) -> Step<bool> {
    c.say(question);
    let a = c.line().ok_or(Stop::Eof)?;
    Ok(matches!(a.to_ascii_lowercase().as_str(), "y" | "yes"))
}

/// `20261122-061503` (UTC).
fn stamp(secs: u64) -> String {
    let s = format_utc(secs);
    s.chars().filter(|c| c.is_ascii_digit()).enumerate().fold(String::new(), |mut acc, (i, ch)| {
        if i == 8 {
            acc.push('-');
        }
        acc.push(ch);
        acc
    })
}

/// An image name as the repository takes it (letters, digits, `.`, `_`, `-`).
fn check_name(n: &str) -> Result<(), &'static str> {
    if n.len() > 100 {
        return Err("at most 100 characters");
    }
    if n.starts_with('.') || n.starts_with('-') {
        return Err("it must not start with . or -");
    }
    if !n.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')) {
        return Err("only letters, digits, '.', '_' and '-'");
    }
    Ok(())
}

/// The console: standard input and output; secrets with echo off when the
/// input is a terminal.
pub struct Tty;

impl Console for Tty {
    fn say(&mut self, line: &str) {
        let mut o = std::io::stdout().lock();
        let _ = writeln!(o, "{line}");
        let _ = o.flush();
    }

    fn line(&mut self) -> Option<String> {
        let mut s = String::new();
        match std::io::stdin().lock().read_line(&mut s) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(s.trim().to_string()),
        }
    }

    fn secret(&mut self, question: &str) -> Option<String> {
        // SAFETY: termios calls on standard input with a struct they fill.
        let mut old: libc::termios = unsafe { std::mem::zeroed() };
        let tty = unsafe { libc::tcgetattr(0, &mut old) } == 0;
        if tty {
            let mut t = old;
            t.c_lflag &= !libc::ECHO;
            t.c_lflag |= libc::ECHONL;
            unsafe { libc::tcsetattr(0, libc::TCSANOW, &t) };
        }
        self.say(question);
        let mut s = String::new();
        let r = std::io::stdin().lock().read_line(&mut s);
        if tty {
            unsafe { libc::tcsetattr(0, libc::TCSANOW, &old) };
        }
        match r {
            Ok(0) | Err(_) => None,
            // Only the line end: a password may start or end with blanks.
            Ok(_) => Some(s.trim_end_matches(['\n', '\r']).to_string()),
        }
    }
}

/// The boot OS: sysfs, blkid, mount, and this very program for the jobs.
pub struct BootOs {
    args: MenuArgs,
    exe: PathBuf,
    mounted: bool,
}

impl BootOs {
    pub fn new(args: MenuArgs) -> BootOs {
        let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/bin/lifeline-image"));
        BootOs { args, exe, mounted: false }
    }

    fn session(&self) -> PathBuf {
        self.args.work_dir.join("token")
    }

    /// `--repo ...` for `dest`.
    fn repo_args(&self, dest: &Dest) -> Vec<String> {
        match dest {
            Dest::Receiver { url } => {
                let mut v =
                    vec!["--repo".into(), url.clone(), "--token-file".into(), self.session().display().to_string()];
                if let Some(ca) = &self.args.ca {
                    v.extend(["--ca".into(), ca.display().to_string()]);
                }
                v
            }
            Dest::Local { repo, .. } => vec!["--repo".into(), repo.display().to_string()],
        }
    }

    /// Run this program with `args` and the password on a pipe (never in a
    /// file nor the environment). `capture`: collect stdout and stderr;
    /// otherwise they go to the console (the progress line).
    fn job(&self, args: &[String], dest: &Dest, password: &str, capture: bool) -> Result<String, String> {
        let mut cmd = Command::new(&self.exe);
        cmd.args(args).args(self.repo_args(dest)).args(["--password-file", "/proc/self/fd/0"]);
        cmd.stdin(Stdio::piped());
        if capture {
            cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        }
        cmd.env_remove("LIFELINE_PASSWORD");
        let mut child = cmd.spawn().map_err(|e| format!("cannot run {}: {e}", self.exe.display()))?;
        if let Some(mut i) = child.stdin.take() {
            let _ = writeln!(i, "{password}");
        }
        let out = child.wait_with_output().map_err(|e| format!("{e}"))?;
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).to_string())
        } else {
            let last =
                text.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("").trim_start_matches("error: ").to_string();
            Err(if last.is_empty() { format!("exited with {}", out.status) } else { last })
        }
    }
}

fn read_trim(p: &Path) -> String {
    std::fs::read_to_string(p).map(|s| s.trim().to_string()).unwrap_or_default()
}

impl System for BootOs {
    fn disks(&mut self) -> Vec<Disk> {
        let mut v = Vec::new();
        let Ok(rd) = std::fs::read_dir("/sys/block") else {
            return v;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if ["loop", "ram", "zram", "sr", "fd", "nbd"].iter().any(|p| name.starts_with(p)) {
                continue;
            }
            let d = e.path();
            let size = read_trim(&d.join("size")).parse::<u64>().unwrap_or(0) * 512;
            if size == 0 {
                continue;
            }
            // (virtio's vendor file holds a PCI id, not a name.)
            let mut model = [read_trim(&d.join("device/vendor")), read_trim(&d.join("device/model"))]
                .into_iter()
                .filter(|s| !s.is_empty() && !s.starts_with("0x"))
                .collect::<Vec<_>>()
                .join(" ");
            if model.is_empty() {
                model = if name.starts_with("vd") { "virtio disk".into() } else { "unknown model".into() };
            }
            if read_trim(&d.join("removable")) == "1" {
                model += " (removable)";
            }
            v.push(Disk { name, size, model });
        }
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    fn volumes(&mut self) -> Vec<Volume> {
        let Ok(out) = Command::new("blkid").output() else {
            return Vec::new();
        };
        let text = String::from_utf8_lossy(&out.stdout);
        let mut v: Vec<Volume> = text.lines().filter_map(parse_blkid).collect();
        for vol in &mut v {
            let sys = PathBuf::from("/sys/class/block").join(&vol.dev);
            vol.size = read_trim(&sys.join("size")).parse::<u64>().unwrap_or(0) * 512;
            vol.disk = if sys.join("partition").exists() {
                std::fs::canonicalize(sys.join(".."))
                    .ok()
                    .and_then(|p| p.file_name().map(|f| f.to_string_lossy().to_string()))
                    .unwrap_or_else(|| vol.dev.clone())
            } else {
                vol.dev.clone()
            };
        }
        v.retain(|x| !["swap", "iso9660", "squashfs", "LVM2_member", "crypto_LUKS"].contains(&x.fstype.as_str()));
        v.sort_by(|a, b| a.dev.cmp(&b.dev));
        v
    }

    fn mount(&mut self, dev: &str) -> Result<PathBuf, String> {
        self.unmount();
        let dir = self.args.mount_dir.clone();
        std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let out = Command::new("mount")
            .arg(format!("/dev/{dev}"))
            .arg(&dir)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        self.mounted = true;
        Ok(dir)
    }

    fn unmount(&mut self) {
        if self.mounted {
            unsafe { libc::sync() };
            let _ = Command::new("umount").arg(&self.args.mount_dir).status();
            self.mounted = false;
        }
    }

    fn claim(&mut self) -> Result<String, String> {
        if self.session().is_file() {
            return Ok("boot session already open".into());
        }
        let (Some(token), Some(ca)) = (&self.args.boot_token_file, &self.args.ca) else {
            return Err("no boot token on the kernel command line (lifeline.token)".into());
        };
        if !token.is_file() {
            return Err(format!("the boot token {} is missing", token.display()));
        }
        std::fs::create_dir_all(&self.args.work_dir).map_err(|e| e.to_string())?;
        let out = Command::new(&self.exe)
            .args(["--quiet", "claim", "--repo", &self.args.receiver, "--token-file"])
            .arg(token)
            .arg("--ca")
            .arg(ca)
            .arg("--out")
            .arg(self.session())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", self.exe.display()))?;
        if out.status.success() {
            let _ = std::fs::remove_file(token);
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            let err = String::from_utf8_lossy(&out.stderr);
            Err(err.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("").trim_start_matches("error: ").to_string())
        }
    }

    fn open(&mut self, dest: &Dest, password: &str) -> Result<Vec<ImageRow>, OpenError> {
        match self.job(&["--quiet".into(), "--json".into(), "list".into()], dest, password, true) {
            Ok(json) => parse_list(&json).map_err(OpenError::Other),
            Err(e) if e.contains("wrong password") => Err(OpenError::WrongPassword),
            Err(e) if e.contains("not a Lifeline repository") => Err(OpenError::NoRepository),
            Err(e) if matches!(dest, Dest::Local { .. }) && e.contains("No such file") => Err(OpenError::NoRepository),
            Err(e) => Err(OpenError::Other(e)),
        }
    }

    fn init(&mut self, dest: &Dest, password: &str) -> Result<(), String> {
        if let Dest::Local { repo, .. } = dest {
            std::fs::create_dir_all(repo).map_err(|e| format!("cannot create {}: {e}", repo.display()))?;
        }
        self.job(&["--quiet".into(), "init".into()], dest, password, true).map(|_| ())
    }

    fn backup(&mut self, dest: &Dest, password: &str, disk: &str, name: &str) -> Result<(), String> {
        let args =
            ["backup", "--name", name, "--machine", &self.args.machine, &format!("/dev/{disk}")].map(String::from);
        self.job(&args, dest, password, false).map(|_| ())
    }

    fn restore(&mut self, dest: &Dest, password: &str, image: &str, disk: &str) -> Result<(), String> {
        let args = ["restore", "--name", image, &format!("/dev/{disk}")].map(String::from);
        self.job(&args, dest, password, false).map(|_| ())
    }

    fn power(&mut self, what: Power) -> String {
        self.unmount();
        unsafe { libc::sync() };
        let cmd = match what {
            Power::Off => "poweroff",
            Power::Reboot => "reboot",
        };
        match Command::new(cmd).arg("-f").status() {
            Ok(s) => format!("{cmd} -f: {s}"),
            Err(e) => format!("cannot run {cmd}: {e}"),
        }
    }

    fn now(&self) -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
    }
}

/// A line of busybox's or util-linux's `blkid`:
/// `/dev/vdb1: LABEL="LIFELINE" UUID="..." TYPE="ext4"`.
fn parse_blkid(line: &str) -> Option<Volume> {
    let (dev, rest) = line.split_once(": ")?;
    let dev = dev.strip_prefix("/dev/")?.to_string();
    let field = |k: &str| {
        let pat = format!(" {k}=\"");
        let r = format!(" {rest}");
        let at = r.find(&pat)? + pat.len();
        let end = r[at..].find('"')?;
        Some(r[at..at + end].to_string())
    };
    let fstype = field("TYPE")?;
    Some(Volume { disk: dev.clone(), dev, size: 0, label: field("LABEL").unwrap_or_default(), fstype })
}

/// `lifeline-image --json list`'s output.
fn parse_list(json: &str) -> Result<Vec<ImageRow>, String> {
    let v: serde_json::Value = serde_json::from_str(json.trim()).map_err(|e| format!("unreadable image list: {e}"))?;
    let rows = v.as_array().ok_or("the image list is not a list")?;
    Ok(rows
        .iter()
        .filter(|r| r.get("error").is_none())
        .map(|r| ImageRow {
            name: r["name"].as_str().unwrap_or("").to_string(),
            created: format_utc(r["created_unix"].as_u64().unwrap_or(0)),
            machine: r["machine"].as_str().unwrap_or("").to_string(),
            disk_size: r["disk_size"].as_u64().unwrap_or(0),
        })
        .collect())
}

/// `lifeline-image menu`.
pub fn run(args: &MenuArgs) -> anyhow::Result<()> {
    let mut menu = Menu::new(&args.machine, &args.style, &args.receiver, &args.network);
    let mut sys = BootOs::new(args.clone());
    let end = menu.run(&mut Tty, &mut sys);
    sys.unmount();
    match end {
        End::Shell => println!("lifeline: leaving the menu for a shell"),
        End::Eof => println!("lifeline: no more input on the console; leaving the menu"),
        End::Power(_) => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// Scripted answers; everything said is kept.
    struct Script {
        answers: VecDeque<&'static str>,
        out: Vec<String>,
        secrets_asked: usize,
    }

    impl Script {
        fn new(answers: &[&'static str]) -> Script {
            Script { answers: answers.iter().copied().collect(), out: Vec::new(), secrets_asked: 0 }
        }
        fn text(&self) -> String {
            self.out.join("\n")
        }
    }

    impl Console for Script {
        fn say(&mut self, line: &str) {
            self.out.push(line.to_string());
        }
        fn line(&mut self) -> Option<String> {
            let a = self.answers.pop_front()?;
            self.out.push(format!("<< {a}"));
            Some(a.to_string())
        }
        fn secret(&mut self, question: &str) -> Option<String> {
            self.say(question);
            self.secrets_asked += 1;
            let a = self.answers.pop_front()?;
            self.out.push("<< (secret)".into());
            Some(a.to_string())
        }
    }

    /// A machine with vda (96 MiB) and vdb (LIFELINE on vdb1), a receiver
    /// repository with password "pw" (or none), and a log of what ran.
    struct Fake {
        claim: Result<String, String>,
        claims: usize,
        repo: Option<&'static str>,
        local_repo: Option<&'static str>,
        images: Vec<ImageRow>,
        ran: Vec<String>,
        mounted: Option<String>,
    }

    impl Fake {
        fn new() -> Fake {
            Fake {
                claim: Ok("boot session for media #3".into()),
                claims: 0,
                repo: Some("pw"),
                local_repo: None,
                images: vec![ImageRow {
                    name: "pc1-old".into(),
                    created: "2026-11-01".into(),
                    machine: "pc1".into(),
                    disk_size: 96 << 20,
                }],
                ran: Vec::new(),
                mounted: None,
            }
        }
    }

    impl System for Fake {
        fn disks(&mut self) -> Vec<Disk> {
            vec![
                Disk { name: "vda".into(), size: 96 << 20, model: "virtio disk".into() },
                Disk { name: "vdb".into(), size: 256 << 20, model: "virtio disk".into() },
            ]
        }
        fn volumes(&mut self) -> Vec<Volume> {
            vec![
                Volume {
                    dev: "vda1".into(),
                    disk: "vda".into(),
                    size: 32 << 20,
                    label: String::new(),
                    fstype: "vfat".into(),
                },
                Volume {
                    dev: "vdb1".into(),
                    disk: "vdb".into(),
                    size: 255 << 20,
                    label: "LIFELINE".into(),
                    fstype: "ext4".into(),
                },
            ]
        }
        fn mount(&mut self, dev: &str) -> Result<PathBuf, String> {
            self.mounted = Some(dev.into());
            self.ran.push(format!("mount {dev}"));
            Ok(PathBuf::from("/mnt/x"))
        }
        fn unmount(&mut self) {
            if let Some(d) = self.mounted.take() {
                self.ran.push(format!("umount {d}"));
            }
        }
        fn claim(&mut self) -> Result<String, String> {
            self.claims += 1;
            self.claim.clone()
        }
        fn open(&mut self, dest: &Dest, password: &str) -> Result<Vec<ImageRow>, OpenError> {
            let repo = if matches!(dest, Dest::Receiver { .. }) { self.repo } else { self.local_repo };
            match repo {
                None => Err(OpenError::NoRepository),
                Some(p) if p == password => Ok(self.images.clone()),
                Some(_) => Err(OpenError::WrongPassword),
            }
        }
        fn init(&mut self, dest: &Dest, password: &str) -> Result<(), String> {
            self.ran.push(format!("init {} {password}", dest.describe()));
            Ok(())
        }
        fn backup(&mut self, dest: &Dest, password: &str, disk: &str, name: &str) -> Result<(), String> {
            self.ran.push(format!("backup {disk} to {} as {name} with {password}", dest.describe()));
            Ok(())
        }
        fn restore(&mut self, dest: &Dest, password: &str, image: &str, disk: &str) -> Result<(), String> {
            self.ran.push(format!("restore {image} from {} to {disk} with {password}", dest.describe()));
            Ok(())
        }
        fn power(&mut self, what: Power) -> String {
            self.ran.push(format!("power {what:?}"));
            String::new()
        }
        fn now(&self) -> u64 {
            1_795_000_000
        }
    }

    fn menu() -> Menu {
        Menu::new("pc1", "receiver", "https://10.0.2.2:7700", "eth0")
    }

    #[test]
    fn backup_to_the_receiver_with_the_default_name() {
        let mut f = Fake::new();
        // backup, disk 1, the receiver, default name, password, yes, then power off.
        let mut c = Script::new(&["1", "1", "1", "", "pw", "yes", "3"]);
        assert_eq!(menu().run(&mut c, &mut f), End::Power(Power::Off));
        let name = format!("pc1-{}", stamp(1_795_000_000));
        assert_eq!(
            f.ran,
            vec![format!("backup vda to the receiver https://10.0.2.2:7700 as {name} with pw"), "power Off".into()]
        );
        let t = c.text();
        assert!(t.contains(&format!("LIFELINE-BACKUP-OK image={name} disk=/dev/vda")), "{t}");
        assert!(t.contains("Receiver https://10.0.2.2:7700: connected (boot session for media #3)"), "{t}");
        assert!(!t.contains("pw\n") && !t.contains("with pw"), "the password was shown:\n{t}");
        assert_eq!(f.claims, 1);
        assert_eq!(stamp(0), "19700101-000000");
    }

    #[test]
    fn a_new_repository_asks_the_password_twice() {
        let mut f = Fake::new();
        f.repo = None;
        let mut c = Script::new(&["1", "1", "1", "nightly", "secret", "secret", "y", "1"]);
        assert_eq!(menu().run(&mut c, &mut f), End::Eof);
        assert_eq!(c.secrets_asked, 2);
        assert_eq!(
            f.ran,
            vec![
                "init the receiver https://10.0.2.2:7700 secret".to_string(),
                "backup vda to the receiver https://10.0.2.2:7700 as nightly with secret".into()
            ]
        );
        // Differing passwords: nothing happens.
        let mut f = Fake::new();
        f.repo = None;
        let mut c = Script::new(&["1", "1", "1", "", "secret", "secreT"]);
        menu().run(&mut c, &mut f);
        assert!(f.ran.is_empty(), "{:?}", f.ran);
        assert!(c.text().contains("The two passwords differ. Nothing was written."));
    }

    #[test]
    fn a_wrong_password_on_restore_goes_back_to_the_menu_untouched() {
        let mut f = Fake::new();
        let mut c = Script::new(&["2", "1", "wrong", "5"]);
        assert_eq!(menu().run(&mut c, &mut f), End::Power(Power::Off));
        let t = c.text();
        assert!(t.contains("LIFELINE-RESTORE-FAILED: wrong password for the repository on the receiver"), "{t}");
        assert_eq!(t.matches("LIFELINE-MENU machine=pc1").count(), 2, "{t}");
        assert_eq!(f.ran, vec!["power Off".to_string()]);
    }

    #[test]
    fn restore_needs_the_disk_name_typed_back() {
        let mut f = Fake::new();
        // restore, receiver, pw, image 1, disk vda, a wrong confirmation.
        let mut c = Script::new(&["2", "1", "pw", "1", "1", "yes"]);
        menu().run(&mut c, &mut f);
        assert!(f.ran.is_empty(), "{:?}", f.ran);
        assert!(c.text().contains("Not confirmed; nothing was written."));
        // And with it.
        let mut c = Script::new(&["2", "1", "pw", "1", "1", "vda", "1"]);
        menu().run(&mut c, &mut f);
        assert_eq!(f.ran, vec!["restore pc1-old from the receiver https://10.0.2.2:7700 to vda with pw".to_string()]);
        assert!(c.text().contains("LIFELINE-RESTORE-OK image=pc1-old disk=/dev/vda"));
    }

    #[test]
    fn local_disk_destination_excludes_the_source_disk_and_is_unmounted() {
        let mut f = Fake::new();
        f.local_repo = Some("pw");
        let mut local = Menu::new("pc1", "local", "", "");
        // backup vda: the only destinations are vdb1 (LIFELINE) and "another".
        let mut c = Script::new(&["1", "1", "1", "img", "pw", "yes", "1"]);
        local.run(&mut c, &mut f);
        assert_eq!(
            f.ran,
            vec!["mount vdb1".to_string(), "backup vda to /dev/vdb1 as img with pw".into(), "umount vdb1".into()]
        );
        let t = c.text();
        assert!(t.contains("1) The disk attached here labelled LIFELINE: /dev/vdb1"), "{t}");
        assert!(!t.contains("The receiver"), "{t}");
        assert_eq!(f.claims, 0);
        // "Another partition": only vdb1 is listed (vda1 is on the source disk).
        let mut f = Fake::new();
        let mut c = Script::new(&["1", "1", "3", "1", "img", "pw"]);
        menu().run(&mut c, &mut f);
        let t = c.text();
        assert!(t.contains("  1) /dev/vdb1") && !t.contains("/dev/vda1"), "{t}");
        // A restore from vdb1 cannot target vdb.
        let mut f = Fake::new();
        f.local_repo = Some("pw");
        let mut c = Script::new(&["2", "2", "pw", "1", "2"]);
        menu().run(&mut c, &mut f);
        assert!(c.text().contains("\"2\" is not one of the numbers shown."), "{}", c.text());
    }

    #[test]
    fn refused_token_and_no_network_are_said_and_the_receiver_is_not_offered() {
        let mut f = Fake::new();
        f.claim = Err("boot token refused: already used".into());
        let mut c = Script::new(&["1", "1", "0", "4"]);
        assert_eq!(menu().run(&mut c, &mut f), End::Power(Power::Reboot));
        let t = c.text();
        assert!(
            t.contains(
                "Receiver unavailable: the receiver refused this boot's token: boot token refused: already used"
            ),
            "{t}"
        );
        assert!(!t.contains("Connect to the receiver again"), "{t}");
        assert!(!t.contains("1) The receiver"), "{t}");
        // Unreachable: retry offered, and a retry that works makes it usable.
        let mut f = Fake::new();
        f.claim = Err("transport error: connection refused".into());
        let mut c = Script::new(&["6"]);
        let mut m = menu();
        m.run(&mut c, &mut f);
        assert!(c.text().contains("6) Connect to the receiver again"), "{}", c.text());
        // No network: no claim at all.
        let mut f = Fake::new();
        let mut c = Script::new(&["3"]);
        assert_eq!(Menu::new("pc1", "receiver", "https://x:1", "").run(&mut c, &mut f), End::Shell);
        assert_eq!(f.claims, 0);
        assert!(c.text().contains("no network"), "{}", c.text());
    }

    #[test]
    fn bad_answers_are_asked_again() {
        let mut f = Fake::new();
        let mut c = Script::new(&["9", "x", "1", "1", "1", "bad name!", "ok-name", "pw", "no", "5"]);
        assert_eq!(menu().run(&mut c, &mut f), End::Power(Power::Off));
        let t = c.text();
        assert!(
            t.contains("\"9\" is not one of the numbers shown.") && t.contains("\"bad name!\" cannot be an image name"),
            "{t}"
        );
        assert!(t.contains("Not started; nothing was written."), "{t}");
        assert_eq!(f.ran, vec!["power Off".to_string()]);
    }

    #[test]
    fn parsers() {
        let v = parse_blkid(r#"/dev/vdb1: LABEL="LIFELINE" UUID="1234" TYPE="ext4""#).unwrap();
        assert_eq!((v.dev.as_str(), v.label.as_str(), v.fstype.as_str()), ("vdb1", "LIFELINE", "ext4"));
        let v = parse_blkid(r#"/dev/vda2: UUID="ab" TYPE="swap""#).unwrap();
        assert_eq!((v.label.as_str(), v.fstype.as_str()), ("", "swap"));
        assert!(parse_blkid("/dev/vda: PTUUID=\"x\" PTTYPE=\"gpt\"").is_none());
        let rows = parse_list(
            r#"[{"name":"a","created_unix":0,"machine":"pc1","disk_size":5,"image_bytes":1},{"name":"b","error":"x"}]"#,
        )
        .unwrap();
        assert_eq!(
            rows,
            vec![ImageRow { name: "a".into(), created: format_utc(0), machine: "pc1".into(), disk_size: 5 }]
        );
        assert!(check_name("pc1-20261122-000000").is_ok() && check_name("../x").is_err() && check_name("a b").is_err());
    }
}
