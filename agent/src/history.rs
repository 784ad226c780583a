//! `lifeline-agent history`: this machine's history on the receiver (its
//! `History` service, with the machine's own credential, read-only): the
//! versions of a file, what was removed recently, and a file or tree
//! written back as of an instant.
//!
//! A restore never writes over anything unless asked: by default it lands
//! next to the live file as `PATH.lifeline-<local time>`. It is built in a
//! hidden temporary name beside its destination and renamed into place at
//! the end (exchanged with what is there, with `--overwrite`), so a restore
//! that fails halfway leaves nothing but that temporary name, removed.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use lifeline_core::wirepath;
use lifeline_proto::v1::restore_piece::Kind as Piece;
use lifeline_proto::v1::tree_entry::Kind;
use lifeline_proto::v1::{Attr, Deletion, ListVersionsRequest, RecentDeletionsRequest, RestoreRequest, Version};
use rustix::fs::{AtFlags, RenameFlags, Timespec, Timestamps, CWD, UTIME_OMIT};

use crate::remote::Remote;

/// A progress line every this many bytes of a restore.
const PROGRESS_EVERY: u64 = 256 << 20;

/// The wire path of a local path (made absolute against the working
/// directory, `.` and `..` resolved lexically, symlinks not followed: the
/// receiver keeps the path as the agent saw it).
pub fn wire_of(path: &Path) -> anyhow::Result<Vec<u8>> {
    let abs = if path.is_absolute() { path.to_path_buf() } else { std::env::current_dir()?.join(path) };
    wirepath::from_local(&wirepath::normalize(&abs))
        .map_err(|e| anyhow::anyhow!("{}: {e} (give a file or directory under a watched tree)", path.display()))
}

/// The versions of `path` the receiver keeps, oldest first, and what it is
/// there now.
pub async fn versions(remote: &Remote, path: &Path) -> anyhow::Result<(Vec<Version>, bool, String)> {
    let req = remote.request(ListVersionsRequest { path: wire_of(path)? });
    let v = remote.history().await?.list_versions(req).await.map_err(status)?.into_inner();
    Ok((v.versions, v.truncated, v.now))
}

/// Paths removed since `since_ns` that the receiver no longer has, newest
/// first (at most `limit`), and whether there were more.
pub async fn deletions(remote: &Remote, since_ns: i64, limit: u32) -> anyhow::Result<(Vec<Deletion>, bool)> {
    let req = remote.request(RecentDeletionsRequest { since_ns, limit });
    let d = remote.history().await?.recent_deletions(req).await.map_err(status)?.into_inner();
    Ok((d.deletions, d.truncated))
}

/// Where a restore goes and whether it may replace what is there.
pub struct Target {
    pub dest: PathBuf,
    pub overwrite: bool,
}

impl Target {
    /// `PATH.lifeline-<tag>`: next to the live file, never over anything.
    pub fn beside(path: &Path, tag: &str) -> anyhow::Result<Target> {
        let Some(name) = path.file_name() else { bail!("{} names no file", path.display()) };
        let mut name = name.to_os_string();
        name.push(format!(".lifeline-{tag}"));
        Ok(Target { dest: path.with_file_name(name), overwrite: false })
    }
}

/// What a restore wrote.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Written {
    pub entries: u64,
    pub bytes: u64,
}

/// Writes `path` as it was at `as_of_ns` to `target`, with modes, mtimes
/// and (as root) owners; setuid/setgid bits never come back.
pub async fn restore(remote: &Remote, path: &Path, as_of_ns: i64, target: &Target) -> anyhow::Result<Written> {
    let dest = &target.dest;
    if !target.overwrite && dest.symlink_metadata().is_ok() {
        bail!("{} exists: a restore never writes over anything unless given --overwrite", dest.display());
    }
    let (Some(parent), Some(name)) = (dest.parent(), dest.file_name()) else {
        bail!("{} names no file", dest.display());
    };
    let parent = if parent.as_os_str().is_empty() { Path::new(".") } else { parent };
    let req = remote.request(RestoreRequest { path: wire_of(path)?, as_of_ns });
    let mut stream = remote.history().await?.restore(req).await.map_err(status)?.into_inner();
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".lifeline-tmp-{}", std::process::id()));
    let mut tree = Building::new(parent.join(tmp_name));
    let built = async {
        while let Some(piece) = stream.message().await.map_err(status)? {
            match piece.kind {
                Some(Piece::Entry(e)) => tree.entry(&e.path, e.kind, e.size, e.attr, &e.symlink_target)?,
                Some(Piece::Data(d)) => tree.data(&d)?,
                None => {}
            }
        }
        tree.finish()
    }
    .await;
    if let Err(e) = built {
        tree.discard();
        return Err(e);
    }
    tree.place(dest, target.overwrite)?;
    Ok(tree.written)
}

/// A restored tree being written under a temporary name.
struct Building {
    root: PathBuf,
    /// Directories made so far (relative): an entry must be in one of them.
    dirs: HashSet<Vec<u8>>,
    /// Directories' attributes, set last (their mtimes would move).
    dir_attrs: Vec<(PathBuf, Attr)>,
    /// The regular file being written: its attributes and bytes still due.
    open: Option<(File, PathBuf, Attr, u64)>,
    started: bool,
    written: Written,
    reported: u64,
}

impl Building {
    fn new(root: PathBuf) -> Building {
        Building {
            root,
            dirs: HashSet::new(),
            dir_attrs: Vec::new(),
            open: None,
            started: false,
            written: Written::default(),
            reported: 0,
        }
    }

    /// The local path of a relative path the receiver sent, which must lie
    /// in a directory this restore made (never through anything else).
    fn local(&self, rel: &[u8]) -> anyhow::Result<PathBuf> {
        if rel.is_empty() {
            if self.started {
                bail!("the receiver sent the restored path twice");
            }
            return Ok(self.root.clone());
        }
        wirepath::validate(rel).map_err(|e| anyhow::anyhow!("the receiver sent a bad path: {e}"))?;
        let parent = rel.iter().rposition(|b| *b == b'/').map_or(&b""[..], |i| &rel[..i]);
        if !self.dirs.contains(parent) {
            bail!("the receiver sent {} outside the directories it restored", String::from_utf8_lossy(rel));
        }
        Ok(self.root.join(std::ffi::OsStr::from_bytes(rel)))
    }

    fn entry(&mut self, rel: &[u8], kind: i32, size: u64, attr: Option<Attr>, target: &[u8]) -> anyhow::Result<()> {
        self.finish_file()?;
        let p = self.local(rel)?;
        self.started = true;
        let attr = attr.unwrap_or_default();
        match Kind::try_from(kind) {
            Ok(Kind::Dir) => {
                fs::create_dir(&p).with_context(|| format!("creating {}", p.display()))?;
                self.dirs.insert(rel.to_vec());
                self.dir_attrs.push((p, attr));
            }
            Ok(Kind::Symlink) => {
                std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(target), &p)
                    .with_context(|| format!("creating {}", p.display()))?;
                set_attrs(&p, &attr, false)?;
            }
            Ok(Kind::File) => {
                let f = File::create_new(&p).with_context(|| format!("creating {}", p.display()))?;
                self.open = Some((f, p, attr, size));
            }
            Err(_) => bail!("the receiver sent an entry of an unknown kind ({kind}): is this agent older than it?"),
        }
        self.written.entries += 1;
        Ok(())
    }

    fn data(&mut self, data: &[u8]) -> anyhow::Result<()> {
        let Some((f, p, _, left)) = &mut self.open else { bail!("the receiver sent data for no file") };
        if data.len() as u64 > *left {
            bail!("the receiver sent more bytes for {} than its size", p.display());
        }
        f.write_all(data).with_context(|| format!("writing {}", p.display()))?;
        *left -= data.len() as u64;
        self.written.bytes += data.len() as u64;
        if self.written.bytes >= self.reported + PROGRESS_EVERY {
            self.reported = self.written.bytes;
            tracing::info!("restored {} MiB, {} entries so far", self.written.bytes >> 20, self.written.entries);
        }
        Ok(())
    }

    fn finish_file(&mut self) -> anyhow::Result<()> {
        let Some((f, p, attr, left)) = self.open.take() else { return Ok(()) };
        if left > 0 {
            bail!("the restore of {} ended {left} bytes short", p.display());
        }
        f.sync_all()?;
        drop(f);
        set_attrs(&p, &attr, true)
    }

    fn finish(&mut self) -> anyhow::Result<()> {
        self.finish_file()?;
        if !self.started {
            bail!("the receiver sent nothing");
        }
        for (p, attr) in self.dir_attrs.drain(..).rev() {
            set_attrs(&p, &attr, true)?;
        }
        Ok(())
    }

    /// Moves the finished tree to `dest`: only where nothing is, unless
    /// `overwrite` (then exchanged with what is there, which is removed).
    fn place(&self, dest: &Path, overwrite: bool) -> anyhow::Result<()> {
        let flags =
            if overwrite && dest.symlink_metadata().is_ok() { RenameFlags::EXCHANGE } else { RenameFlags::NOREPLACE };
        if let Err(e) = rustix::fs::renameat_with(CWD, &self.root, CWD, dest, flags) {
            self.discard();
            if e == rustix::io::Errno::EXIST {
                bail!("{} appeared during the restore: nothing written over it (give --overwrite)", dest.display());
            }
            bail!("moving the restore to {}: {e}", dest.display());
        }
        if flags == RenameFlags::EXCHANGE {
            // What was there now has the temporary name.
            self.discard();
        }
        Ok(())
    }

    fn discard(&self) {
        let _ = match self.root.symlink_metadata() {
            Ok(md) if md.is_dir() => fs::remove_dir_all(&self.root),
            Ok(_) => fs::remove_file(&self.root),
            Err(_) => Ok(()),
        };
    }
}

/// Mode (not for a symlink), owner (as root; otherwise the restorer's) and
/// mtime of `p`.
fn set_attrs(p: &Path, a: &Attr, mode: bool) -> anyhow::Result<()> {
    if let (Some(uid), Some(gid)) = (a.uid, a.gid) {
        let _ = rustix::fs::chownat(
            CWD,
            p,
            Some(rustix::fs::Uid::from_raw(uid)),
            Some(rustix::fs::Gid::from_raw(gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        );
    }
    if mode {
        fs::set_permissions(p, fs::Permissions::from_mode(a.mode & 0o1777))
            .with_context(|| format!("setting the mode of {}", p.display()))?;
    }
    let times = Timestamps {
        last_access: Timespec { tv_sec: 0, tv_nsec: UTIME_OMIT },
        last_modification: Timespec { tv_sec: a.mtime_sec, tv_nsec: a.mtime_nsec.into() },
    };
    rustix::fs::utimensat(CWD, p, &times, AtFlags::SYMLINK_NOFOLLOW)
        .with_context(|| format!("setting the mtime of {}", p.display()))?;
    Ok(())
}

/// A refusal or failure of the receiver, as its message says it.
fn status(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("the receiver: {}", s.message())
}

/// `ns` since the epoch in this machine's local time:
/// `2026-12-07 16:20:01 +0100`, or `20261207T162001` with `compact`.
pub fn local_time(ns: i64, compact: bool) -> String {
    let secs = ns.div_euclid(1_000_000_000) as libc::time_t;
    // SAFETY: localtime_r writes only the tm it is given.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    if unsafe { libc::localtime_r(&secs, &mut tm) }.is_null() {
        return lifeline_history::instant::format(ns);
    }
    let (y, mo, d, h, mi, s) = (tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
    if compact {
        return format!("{y:04}{mo:02}{d:02}T{h:02}{mi:02}{s:02}");
    }
    let off = tm.tm_gmtoff / 60;
    let sign = if off < 0 { '-' } else { '+' };
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02} {sign}{:02}{:02}", off.abs() / 60, off.abs() % 60)
}
