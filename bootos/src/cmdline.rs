//! The kernel parameters that tell a booted Lifeline boot OS who it is and
//! where to send its data.
//!
//! | parameter | value |
//! |---|---|
//! | `lifeline.receiver=https://HOST:PORT` | the receiver's address (`http://` or `https://`) |
//! | `lifeline.machine=NAME` | the machine's name: letters, digits, `-`, `_`, `.` |
//! | `lifeline.token=TOKEN` | the machine's credential, `NAME:SECRET` as `lifeline-receiver machine add` writes it (letters, digits, `-`, `_`, `.`, `~`, `+`, `/`, `=`, `:`) |
//! | `lifeline.mode=menu\|backup\|restore` | what to do after boot |
//! | `lifeline.style=receiver\|local` | back up over the network or to attached storage |
//! | `lifeline.image=NAME` | the image to restore (restore mode only) |
//! | `lifeline.shell=1` | debugging: drop to a shell instead of running the hook |
//!
//! [`BootParams::to_cmdline`] builds the string (validating every value) and
//! [`BootParams::parse`] reads it back from `/proc/cmdline` text, ignoring
//! unrelated parameters and rejecting malformed or unknown `lifeline.*` ones.
//! Values never contain spaces or quotes, so the kernel's quoting rules never
//! come into play.

use crate::error::{Error, Result};
use std::fmt;

/// What the boot OS does after it is up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Show a menu (the default).
    #[default]
    Menu,
    /// Back the machine's disks up.
    Backup,
    /// Restore an image (needs [`BootParams::image`]).
    Restore,
}

/// Where the backup goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Style {
    /// To the receiver over the network (the default).
    #[default]
    Receiver,
    /// To storage attached to the machine.
    Local,
}

impl Mode {
    /// The parameter value.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Menu => "menu",
            Mode::Backup => "backup",
            Mode::Restore => "restore",
        }
    }
}

impl Style {
    /// The parameter value.
    pub fn as_str(self) -> &'static str {
        match self {
            Style::Receiver => "receiver",
            Style::Local => "local",
        }
    }
}

impl std::str::FromStr for Mode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "menu" => Ok(Mode::Menu),
            "backup" => Ok(Mode::Backup),
            "restore" => Ok(Mode::Restore),
            _ => Err(Error::Invalid(format!("lifeline.mode={s:?} is not one of menu, backup, restore"))),
        }
    }
}

impl std::str::FromStr for Style {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "receiver" => Ok(Style::Receiver),
            "local" => Ok(Style::Local),
            _ => Err(Error::Invalid(format!("lifeline.style={s:?} is not one of receiver, local"))),
        }
    }
}

/// The `lifeline.*` kernel parameters.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BootParams {
    /// The receiver's URL, `https://HOST:PORT` (required for style receiver).
    pub receiver: Option<String>,
    /// The machine's name (required).
    pub machine: String,
    /// The machine's credential (`NAME:SECRET`).
    pub token: Option<String>,
    /// What to do after boot.
    pub mode: Mode,
    /// Where the backup goes.
    pub style: Style,
    /// Image to restore (restore mode).
    pub image: Option<String>,
    /// Drop to a shell instead of running the hook.
    pub shell: bool,
}

/// Prefix of every Lifeline kernel parameter.
pub const PREFIX: &str = "lifeline.";

impl BootParams {
    /// Parameters for `machine` with defaults (menu mode, receiver style).
    pub fn new(machine: impl Into<String>) -> Self {
        BootParams { machine: machine.into(), ..Default::default() }
    }

    /// Checks every value and the combination (receiver style needs a
    /// receiver; restore needs an image; an image only with restore).
    pub fn validate(&self) -> Result<()> {
        check_name("lifeline.machine", &self.machine)?;
        if let Some(r) = &self.receiver {
            check_receiver(r)?;
        }
        if let Some(t) = &self.token {
            check_token(t)?;
        }
        if let Some(i) = &self.image {
            check_name("lifeline.image", i)?;
        }
        if self.style == Style::Receiver && self.receiver.is_none() {
            return Err(Error::Invalid(
                "lifeline.receiver is missing: style receiver needs the receiver's https://HOST:PORT (or use lifeline.style=local)".into(),
            ));
        }
        match (self.mode, &self.image) {
            (Mode::Restore, None) => {
                Err(Error::Invalid("lifeline.mode=restore needs lifeline.image=NAME (the image to restore)".into()))
            }
            (Mode::Menu | Mode::Backup, Some(_)) => {
                Err(Error::Invalid("lifeline.image is only meaningful with lifeline.mode=restore".into()))
            }
            _ => Ok(()),
        }
    }

    /// The kernel command line fragment, e.g.
    /// `lifeline.receiver=https://10.0.2.2:7700 lifeline.machine=pc1 lifeline.mode=backup lifeline.style=receiver`.
    pub fn to_cmdline(&self) -> Result<String> {
        self.validate()?;
        let mut parts = Vec::new();
        if let Some(r) = &self.receiver {
            parts.push(format!("lifeline.receiver={r}"));
        }
        parts.push(format!("lifeline.machine={}", self.machine));
        if let Some(t) = &self.token {
            parts.push(format!("lifeline.token={t}"));
        }
        parts.push(format!("lifeline.mode={}", self.mode.as_str()));
        parts.push(format!("lifeline.style={}", self.style.as_str()));
        if let Some(i) = &self.image {
            parts.push(format!("lifeline.image={i}"));
        }
        if self.shell {
            parts.push("lifeline.shell=1".into());
        }
        Ok(parts.join(" "))
    }

    /// Parses `/proc/cmdline` text. Parameters not starting with
    /// `lifeline.` are ignored (quoted values of other parameters are
    /// skipped as the kernel does); a `lifeline.*` parameter that is unknown,
    /// repeated, lacks `=VALUE` or has a bad value is an error, and so is an
    /// incomplete set (see [`BootParams::validate`]).
    pub fn parse(cmdline: &str) -> Result<Self> {
        let mut p = BootParams::default();
        let mut seen: Vec<&str> = Vec::new();
        for word in split_kernel_words(cmdline) {
            let Some(rest) = word.strip_prefix(PREFIX) else {
                continue;
            };
            let (key, value) = rest
                .split_once('=')
                .ok_or_else(|| Error::Invalid(format!("kernel parameter {word:?} has no value: write {word}=VALUE")))?;
            if seen.contains(&key) {
                return Err(Error::Invalid(format!("kernel parameter lifeline.{key} is given twice")));
            }
            if value.contains('"') || value.is_empty() {
                return Err(Error::Invalid(format!("kernel parameter lifeline.{key} has an empty or quoted value")));
            }
            match key {
                "receiver" => {
                    check_receiver(value)?;
                    p.receiver = Some(value.into());
                }
                "machine" => {
                    check_name("lifeline.machine", value)?;
                    p.machine = value.into();
                }
                "token" => {
                    check_token(value)?;
                    p.token = Some(value.into());
                }
                "mode" => p.mode = value.parse()?,
                "style" => p.style = value.parse()?,
                "image" => {
                    check_name("lifeline.image", value)?;
                    p.image = Some(value.into());
                }
                "shell" => {
                    p.shell = match value {
                        "1" | "yes" | "true" => true,
                        "0" | "no" | "false" => false,
                        _ => {
                            return Err(Error::Invalid(format!(
                                "lifeline.shell={value:?}: use 1 or 0"
                            )))
                        }
                    }
                }
                _ => {
                    return Err(Error::Invalid(format!(
                        "unknown kernel parameter lifeline.{key}: known are receiver, machine, token, mode, style, image, shell"
                    )))
                }
            }
            seen.push(key);
        }
        if !seen.contains(&"machine") {
            return Err(Error::Invalid(
                "lifeline.machine is missing from the kernel command line: the boot medium was not made by Lifeline's boot OS builder".into(),
            ));
        }
        p.validate()?;
        Ok(p)
    }
}

impl fmt::Display for BootParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.to_cmdline() {
            Ok(s) => f.write_str(&s),
            Err(e) => write!(f, "<invalid: {e}>"),
        }
    }
}

/// Splits a kernel command line into words the way the kernel does: on
/// whitespace, except inside double quotes.
fn split_kernel_words(s: &str) -> Vec<&str> {
    let mut words = Vec::new();
    let mut start = None;
    let mut quoted = false;
    for (i, c) in s.char_indices() {
        if c == '"' {
            quoted = !quoted;
        }
        if c.is_whitespace() && !quoted {
            if let Some(st) = start.take() {
                words.push(&s[st..i]);
            }
        } else if start.is_none() {
            start = Some(i);
        }
    }
    if let Some(st) = start {
        words.push(&s[st..]);
    }
    words
}

fn check_name(what: &str, v: &str) -> Result<()> {
    let ok = !v.is_empty()
        && v.len() <= 64
        && v.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !v.starts_with(['.', '-']);
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "{what}={v:?} is not a valid name: use 1-64 letters, digits, '-', '_' or '.', not starting with '.' or '-'"
        )))
    }
}

fn check_token(v: &str) -> Result<()> {
    let ok = !v.is_empty() && v.len() <= 256 && v.chars().all(|c| c.is_ascii_alphanumeric() || "-_.~+/=:".contains(c));
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(
            "lifeline.token is malformed: use letters, digits and -_.~+/=: only (no spaces or quotes), at most 256 characters".into(),
        ))
    }
}

fn check_receiver(v: &str) -> Result<()> {
    let err = |why: &str| {
        Err(Error::Invalid(format!("lifeline.receiver={v:?} is not a receiver address ({why}): use https://HOST:PORT")))
    };
    let Some(rest) = v.strip_prefix("https://").or_else(|| v.strip_prefix("http://")) else {
        return err("it must start with https:// or http://");
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains('/') {
        return err("no path is allowed");
    }
    let (host, port) = if let Some(r) = authority.strip_prefix('[') {
        // [IPv6]:port
        let Some((h, p)) = r.split_once("]:") else {
            return err("an IPv6 host needs [ADDR]:PORT");
        };
        if h.is_empty() || !h.chars().all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.') {
            return err("bad IPv6 address");
        }
        (h, p)
    } else {
        let Some((h, p)) = authority.rsplit_once(':') else {
            return err("the port is missing");
        };
        (h, p)
    };
    if host.is_empty() || !host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ':')) {
        return err("bad host name");
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => err("the port must be 1-65535"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> BootParams {
        BootParams {
            receiver: Some("https://10.0.2.2:7700".into()),
            machine: "pc1".into(),
            token: Some("abc-DEF_123.x~y+z/w==".into()),
            mode: Mode::Backup,
            style: Style::Receiver,
            image: None,
            shell: false,
        }
    }

    #[test]
    fn build_and_parse_round_trip() {
        let p = full();
        let s = p.to_cmdline().unwrap();
        assert_eq!(
            s,
            "lifeline.receiver=https://10.0.2.2:7700 lifeline.machine=pc1 lifeline.token=abc-DEF_123.x~y+z/w== lifeline.mode=backup lifeline.style=receiver"
        );
        let line = format!("BOOT_IMAGE=/vmlinuz root=/dev/sda1 ro quiet console=ttyS0 {s} foo=\"a b lifeline.x\"\n");
        assert_eq!(BootParams::parse(&line).unwrap(), p);

        let r = BootParams {
            mode: Mode::Restore,
            image: Some("pc1-2026-11-22.img".into()),
            style: Style::Local,
            receiver: None,
            shell: true,
            ..full()
        };
        assert_eq!(BootParams::parse(&r.to_cmdline().unwrap()).unwrap(), r);
        assert_eq!(r.to_string(), r.to_cmdline().unwrap());

        // The receiver's credential format, NAME:64hex.
        let c = BootParams { token: Some(format!("pc1:{}", "0123456789abcdef".repeat(4))), ..full() };
        assert_eq!(BootParams::parse(&c.to_cmdline().unwrap()).unwrap(), c);
    }

    #[test]
    fn builder_rejects_bad_values() {
        let bad = [
            BootParams { machine: "pc 1".into(), ..full() },
            BootParams { machine: "pc\"1".into(), ..full() },
            BootParams { machine: "".into(), ..full() },
            BootParams { machine: "-x".into(), ..full() },
            BootParams { receiver: Some("ftp://h:1".into()), ..full() },
            BootParams { receiver: Some("https://h".into()), ..full() },
            BootParams { receiver: Some("https://h:99999".into()), ..full() },
            BootParams { receiver: Some("https://h:1/path".into()), ..full() },
            BootParams { receiver: None, ..full() },
            BootParams { token: Some("a b".into()), ..full() },
            BootParams { mode: Mode::Restore, ..full() },
            BootParams { image: Some("x".into()), ..full() },
        ];
        for p in bad {
            assert!(p.to_cmdline().is_err(), "{p:?} accepted");
        }
        let v6 = BootParams { receiver: Some("https://[fd00::2]:7700".into()), ..full() };
        v6.to_cmdline().unwrap();
    }

    #[test]
    fn parser_errors_are_clear() {
        let base = "console=ttyS0 lifeline.machine=pc1 lifeline.receiver=https://r:1";
        BootParams::parse(base).unwrap();
        let cases = [
            ("console=ttyS0", "lifeline.machine is missing"),
            (&format!("{base} lifeline.mode=nuke"), "not one of menu"),
            (&format!("{base} lifeline.mode"), "has no value"),
            (&format!("{base} lifeline.colour=red"), "unknown kernel parameter lifeline.colour"),
            (&format!("{base} lifeline.machine=pc2"), "given twice"),
            (&format!("{base} lifeline.token=\"a b\""), "quoted"),
            (&format!("{base} lifeline.mode=restore"), "needs lifeline.image"),
            ("lifeline.machine=pc1", "lifeline.receiver is missing"),
        ];
        for (line, want) in cases {
            let e = BootParams::parse(line).unwrap_err().to_string();
            assert!(e.contains(want), "{line:?}: {e:?} lacks {want:?}");
        }
        // Unrelated parameters, even odd ones, are ignored.
        let p = BootParams::parse(&format!("  {base}  lifelinex=1 x.lifeline.mode=q \"quoted thing\"\n")).unwrap();
        assert_eq!(p.machine, "pc1");
    }
}
