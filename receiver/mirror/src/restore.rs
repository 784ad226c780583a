//! A tree as it was at an instant, from the mirror (the present) and the
//! history's records newer than the instant, undone newest first
//! (docs/history.md). The mirror and the history are only read.
//!
//! The undo runs in a scratch tree laid out like the mirror, next to the
//! destination: the present copies of the paths that matter, then each
//! record undone there as a plain filesystem operation (a rename back, a
//! removal, an attic object copied in, old bytes written back). What
//! matters is the asked path and everything whose content a rename since
//! the instant carried into it (found before copying, to a fixpoint).
//! Finally the asked path moves from the scratch to `DIR/<path>`.

use std::fs::{self, File};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use lifeline_core::credential::MachineName;
use lifeline_history::record::{AttrChanged, Change, Shared};
use lifeline_history::{Journal, Record};
use lifeline_store::StoreLayout;
use rustix::fs::{Mode, OFlags};

use crate::safepath;

/// What a restore brought back.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Restored {
    /// Records undone.
    pub undone: usize,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
    /// Files whose setuid/setgid bits were not restored (never set by a
    /// restore: the receiver is not the machine).
    pub privileged_stripped: u64,
}

/// The error of a restore of a path that did not exist at the instant.
#[derive(Debug)]
pub struct Absent(pub String);

impl std::fmt::Display for Absent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} did not exist at that instant (nothing in the mirror or its history)", self.0)
    }
}

impl std::error::Error for Absent {}

/// Writes `path` (a wire path: `srv/data`, as the mirror keeps it) of
/// `machine` as it was at `as_of_ns` (the receiver's clock) under `to`,
/// as `to/<path>`, which must not exist. Answers what was restored; `Err`
/// when nothing was there at that instant, or on an I/O error (the
/// scratch tree is removed either way).
pub fn restore_as_of(
    store: &StoreLayout,
    machine: &MachineName,
    as_of_ns: i64,
    path: &[u8],
    to: &Path,
) -> anyhow::Result<Restored> {
    lifeline_core::wirepath::validate(path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let dest = to.join(std::ffi::OsStr::from_bytes(path));
    if dest.symlink_metadata().is_ok() {
        bail!("{} exists: a restore never writes over anything; give another --to", dest.display());
    }
    fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    let scratch = Scratch::new(to)?;
    let undone = rebuild(store, machine, as_of_ns, |_| vec![path.to_vec()], &scratch.0)?;
    beneath(&scratch.0, path)?;
    let got = under(&scratch.0, path);
    if got.symlink_metadata().is_err() {
        return Err(Absent(String::from_utf8_lossy(path).into_owned()).into());
    }
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::rename(&got, &dest).with_context(|| format!("moving the restored tree to {}", dest.display()))?;
    Ok(Restored { undone, ..count(&dest)? })
}

/// The machine's whole tree as it was at `as_of_ns`, written under `to`
/// (missing or empty) as `to/<each top-level name>`.
pub fn restore_tree_as_of(
    store: &StoreLayout,
    machine: &MachineName,
    as_of_ns: i64,
    to: &Path,
) -> anyhow::Result<Restored> {
    fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    if fs::read_dir(to)?.next().is_some() {
        bail!("{} is not empty: a restore never writes over anything; give an empty --to", to.display());
    }
    let mirror = store.mirror(machine);
    let scratch = Scratch::new(to)?;
    // Every top-level name the mirror has now or a record since names.
    let undone = rebuild(
        store,
        machine,
        as_of_ns,
        |records| {
            let mut names = std::collections::BTreeSet::new();
            if let Ok(entries) = fs::read_dir(&mirror) {
                names.extend(entries.flatten().map(|e| e.file_name().as_bytes().to_vec()));
            }
            for r in records {
                for p in r.paths() {
                    names.insert(p.split(|b| *b == b'/').next().unwrap_or_default().to_vec());
                }
            }
            names.into_iter().filter(|n| !n.is_empty()).collect()
        },
        &scratch.0,
    )?;
    let mut restored = Restored { undone, ..Restored::default() };
    for entry in fs::read_dir(&scratch.0)? {
        let entry = entry?;
        let dest = to.join(entry.file_name());
        fs::rename(entry.path(), &dest).with_context(|| format!("moving the restored tree to {}", dest.display()))?;
        let c = count(&dest)?;
        restored.files += c.files;
        restored.dirs += c.dirs;
        restored.symlinks += c.symlinks;
        restored.bytes += c.bytes;
    }
    Ok(restored)
}

/// A scratch directory in `to`, removed when dropped.
pub(crate) struct Scratch(pub(crate) PathBuf);

impl Scratch {
    pub(crate) fn new(to: &Path) -> anyhow::Result<Scratch> {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = to.join(format!(".lifeline-restore.{}.{n}", std::process::id()));
        fs::create_dir(&p).with_context(|| format!("creating {}", p.display()))?;
        Ok(Scratch(p))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Rebuilds in `scratch` (laid out like the mirror) the paths `paths`
/// picks from the records after `as_of_ns`, as they were then; answers how
/// many records were undone. The mirror and the history are only read.
pub(crate) fn rebuild(
    store: &StoreLayout,
    machine: &MachineName,
    as_of_ns: i64,
    paths: impl FnOnce(&[Record]) -> Vec<Vec<u8>>,
    scratch: &Path,
) -> anyhow::Result<usize> {
    // Retention changes nothing while this is held.
    let _lock = lifeline_history::retention::Lock::shared(&store.history(machine))
        .with_context(|| format!("locking the history of {machine}"))?;
    let journal = Journal::open(&store.history_journal(machine));
    if let Some(horizon) = journal.horizon().with_context(|| format!("reading the history of {machine}"))? {
        if as_of_ns < horizon {
            bail!(
                "the history of {machine} is kept since {} (retention dropped what is older): ask for an instant after it",
                lifeline_history::instant::format(horizon)
            );
        }
    }
    let mirror = match Source::open(&store.mirror(machine)) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => bail!("machine {machine} has no mirror here"),
        Err(e) => return Err(e).with_context(|| format!("opening the mirror of {machine}")),
    };
    let attic = store.history_attic(machine);
    let attic = match Source::open(&attic) {
        Ok(a) => Some(a),
        // Nothing was ever removed or replaced whole.
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("opening {}", attic.display())),
    };
    let read = || journal.records_after(as_of_ns).with_context(|| format!("reading the history of {machine}"));
    let mut records = read()?;
    let roots = relevant_roots(&paths(&records), &records);
    // The machine may be replicating meanwhile: each change is recorded
    // before it is made, so a copy of the present is consistent with the
    // records read before it unless a record naming the copied paths came
    // after. Then the copy starts again (a few times, then gives up).
    let mut attempt = 0;
    let (mut links, roots) = loop {
        attempt += 1;
        let roots = relevant_roots(&roots, &records);
        let mut links = Links::default();
        links.wanted.extend(records.iter().filter_map(Record::shared).map(|id| (id.dev, id.ino)));
        let copied = roots.iter().try_for_each(|root| {
            let src = under(&mirror.path, root);
            match mirror.has(&src) {
                true => copy_tree(&mirror, &src, &under(scratch, root), &mut links),
                false => Ok(()),
            }
        });
        let again = read()?;
        let changed = again.get(records.len()..).unwrap_or_default().iter().find(|r| {
            r.paths().iter().any(|p| roots.iter().any(|root| within(p, root) || within(root, p)))
                || matches!(&r.change, Some(Change::Overwritten(o)) if o.shared.is_some())
        });
        let changed = changed.map(|r| String::from_utf8_lossy(&r.path).into_owned());
        records = again;
        match (changed, copied) {
            (None, Ok(())) => break (links, roots),
            (Some(_), _) if attempt < COPY_ATTEMPTS => {
                fs::remove_dir_all(scratch)?;
                fs::create_dir(scratch)?;
                // Changes come in bursts (an agent's batch): let one pass.
                std::thread::sleep(std::time::Duration::from_millis(50 * attempt as u64));
            }
            (None, Err(e)) => return Err(e),
            (Some(path), _) => bail!(
                "the machine kept changing what is restored while it was copied ({COPY_ATTEMPTS} tries; the last: {path}): try again, or pause its agent"
            ),
        }
    };
    let mut undone = 0;
    for rec in records.iter().rev() {
        if undo(rec, &roots, scratch, attic.as_ref(), &mut links)? {
            undone += 1;
        }
    }
    Ok(undone)
}

/// Copies of the present a restore makes before it gives up on a machine
/// that keeps changing what it restores.
const COPY_ATTEMPTS: usize = 10;

/// One change kept for a path, as `history list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub time_ns: i64,
    pub seq: u64,
    /// What the change did, and what was kept of what it replaced.
    pub what: String,
}

/// The changes kept for `path` (a wire path) of `machine`, oldest first:
/// changes at the path, renames to it, and removals or replacements of a
/// directory above it; the newest `most` of them, and whether there were
/// more. The journal is read a segment at a time.
pub fn versions(
    store: &StoreLayout,
    machine: &MachineName,
    path: &[u8],
    most: usize,
) -> anyhow::Result<(Vec<Version>, bool)> {
    lifeline_core::wirepath::validate(path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut out = std::collections::VecDeque::new();
    let mut truncated = false;
    Journal::open(&store.history_journal(machine))
        .for_each_after(i64::MIN, |r| {
            let Some(what) = version_of(&r, path) else { return };
            if out.len() == most {
                out.pop_front();
                truncated = true;
            }
            out.push_back(Version { time_ns: r.time_ns, seq: r.seq, what });
        })
        .with_context(|| format!("reading the history of {machine}"))?;
    Ok((out.into(), truncated))
}

/// What `r` did to `path`, in words; None when it did nothing to it.
fn version_of(r: &Record, path: &[u8]) -> Option<String> {
    let at = r.path == path;
    let above = within(path, &r.path) && !at;
    Some(match &r.change {
        Some(Change::Created(_)) if at => "created".to_string(),
        Some(Change::Created(_)) if above => format!("created with {}", String::from_utf8_lossy(&r.path)),
        Some(Change::Displaced(_)) if at => "removed or replaced (kept whole)".to_string(),
        Some(Change::Displaced(_)) if above => {
            format!("removed or replaced with {} (kept whole)", String::from_utf8_lossy(&r.path))
        }
        Some(Change::Renamed(x)) if at => format!("renamed to {}", String::from_utf8_lossy(&x.to)),
        Some(Change::Renamed(x)) if x.to == path => format!("renamed here from {}", String::from_utf8_lossy(&r.path)),
        Some(Change::Exchanged(x)) if at || x.with == path => "exchanged".to_string(),
        Some(Change::Overwritten(o)) if at => format!(
            "written: was {} bytes, {} bytes of it kept",
            o.old_size,
            o.ranges.iter().map(|r| r.data.len()).sum::<usize>()
        ),
        Some(Change::AttrChanged(a)) if at => format!("attributes changed: were mode {:o}", a.mode),
        _ => return None,
    })
}

/// What is at `path` (a wire path) in `machine`'s mirror now, reached
/// through directories only (a path through a symlink is absent); `None`
/// when nothing is.
pub fn present(store: &StoreLayout, machine: &MachineName, path: &[u8]) -> anyhow::Result<Option<fs::Metadata>> {
    lifeline_core::wirepath::validate(path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mirror = match Source::open(&store.mirror(machine)) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("opening the mirror of {machine}")),
    };
    Ok(mirror.open_at(&under(&mirror.path, path), OFlags::PATH).and_then(|f| f.metadata()).ok())
}

/// What [`present`] found, in words: `a directory`, `a symbolic link`,
/// `N bytes` or `absent`.
pub fn describe(now: Option<&fs::Metadata>) -> String {
    match now {
        Some(md) if md.is_dir() => "a directory".into(),
        Some(md) if md.file_type().is_symlink() => "a symbolic link".into(),
        Some(md) => format!("{} bytes", md.len()),
        None => "absent".into(),
    }
}

/// A path removed from the mirror and not there since.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deletion {
    pub path: Vec<u8>,
    /// When it was removed (the record's time): it is back as of a
    /// nanosecond earlier.
    pub time_ns: i64,
    pub seq: u64,
}

/// The paths of `machine` removed or replaced whole (kept in the attic)
/// after `since_ns` that its mirror no longer has, newest first, each once;
/// at most `limit`, and whether there were more.
pub fn recent_deletions(
    store: &StoreLayout,
    machine: &MachineName,
    since_ns: i64,
    limit: usize,
) -> anyhow::Result<(Vec<Deletion>, bool)> {
    // The newest removal of each path, read a segment at a time.
    let mut newest = std::collections::HashMap::new();
    Journal::open(&store.history_journal(machine))
        .for_each_after(since_ns, |r| {
            if matches!(r.change, Some(Change::Displaced(_))) {
                newest.insert(r.path, (r.time_ns, r.seq));
            }
        })
        .with_context(|| format!("reading the history of {machine}"))?;
    let mut found: Vec<_> = newest.into_iter().collect();
    found.sort_by_key(|d| std::cmp::Reverse(d.1));
    let mut out = Vec::new();
    for (path, (time_ns, seq)) in found {
        if present(store, machine, &path)?.is_some() {
            continue;
        }
        if out.len() == limit {
            return Ok((out, true));
        }
        out.push(Deletion { path, time_ns, seq });
    }
    Ok((out, false))
}

/// `root/<wire path>`.
fn under(root: &Path, wire: &[u8]) -> PathBuf {
    root.join(std::ffi::OsStr::from_bytes(wire))
}

/// `a` is `b` or below it.
pub(crate) fn within(a: &[u8], b: &[u8]) -> bool {
    a == b || (a.starts_with(b) && a.get(b.len()) == Some(&b'/'))
}

/// `paths` and every path whose content the records' renames (undone,
/// newest first) carry into them, to a fixpoint; none below another.
fn relevant_roots(paths: &[Vec<u8>], records: &[Record]) -> Vec<Vec<u8>> {
    let mut roots: Vec<Vec<u8>> = Vec::new();
    for p in paths {
        if !roots.iter().any(|r| within(p, r)) {
            roots.retain(|r| !within(r, p));
            roots.push(p.clone());
        }
    }
    loop {
        let before = roots.len();
        for rec in records.iter().rev() {
            let moves: Vec<(&[u8], &[u8])> = match &rec.change {
                // Undone: what is at `to` goes back to `path`.
                Some(Change::Renamed(r)) => vec![(&r.to, &rec.path)],
                Some(Change::Exchanged(x)) => vec![(&x.with, &rec.path), (&rec.path, &x.with)],
                _ => continue,
            };
            for (from, into) in moves {
                let mut add = Vec::new();
                for r in &roots {
                    if within(into, r) {
                        // Lands in a root: all of `from` matters.
                        add.push(from.to_vec());
                    } else if within(r, into) {
                        // A root lies inside where it lands: its part of `from`.
                        let mut p = from.to_vec();
                        p.extend_from_slice(&r[into.len()..]);
                        add.push(p);
                    }
                }
                for p in add {
                    if !roots.iter().any(|r| within(&p, r)) {
                        roots.retain(|r| !within(r, &p));
                        roots.push(p);
                    }
                }
            }
        }
        if roots.len() == before {
            return roots;
        }
    }
}

/// Refuses a wire path that would lead out of `scratch`: every component
/// above the last must be a real directory or missing, never a symlink (the
/// undo replays the mirror's past in order, so a record's path never runs
/// through a symlink at its moment; a journal that says otherwise is
/// damaged or forged, and the restore must not write where it points).
/// `false`: a non-directory is in the way (a record of a change that
/// failed), nothing to undo there.
fn beneath(scratch: &Path, wire: &[u8]) -> anyhow::Result<bool> {
    lifeline_core::wirepath::validate(wire).map_err(|e| anyhow::anyhow!("a history record's path: {e}"))?;
    let mut at = scratch.to_path_buf();
    let comps: Vec<&[u8]> = wire.split(|b| *b == b'/').collect();
    for comp in &comps[..comps.len() - 1] {
        at.push(std::ffi::OsStr::from_bytes(comp));
        match at.symlink_metadata() {
            Ok(md) if md.is_dir() => {}
            Ok(md) if md.file_type().is_symlink() => bail!(
                "a history record's path {} runs through a symlink: the journal is damaged; nothing written there",
                String::from_utf8_lossy(wire)
            ),
            Ok(_) => return Ok(false),
            Err(_) => break,
        }
    }
    Ok(true)
}

/// Undoes `rec` in `scratch`, where it touches the roots; answers whether
/// it did anything.
fn undo(
    rec: &Record,
    roots: &[Vec<u8>],
    scratch: &Path,
    attic: Option<&Source>,
    links: &mut Links,
) -> anyhow::Result<bool> {
    let q = &rec.path[..];
    // Checked before anything is written below the paths.
    let other = match &rec.change {
        Some(Change::Renamed(r)) => Some(&r.to[..]),
        Some(Change::Exchanged(x)) => Some(&x.with[..]),
        _ => None,
    };
    if !beneath(scratch, q)? || !other.map_or(Ok(true), |o| beneath(scratch, o))? {
        return Ok(false);
    }
    let touches = |p: &[u8]| roots.iter().any(|r| within(p, r) || within(r, p));
    let here = under(scratch, q);
    match &rec.change {
        Some(Change::Created(_)) if touches(q) => remove(&here)?,
        Some(Change::Displaced(d)) if touches(q) => {
            let obj = attic.map(|a| a.path.join(&d.object));
            let Some((attic, obj)) = attic.zip(obj).filter(|(a, o)| a.has(o)) else {
                // Recorded, then the move failed (or the receiver died
                // between the two): nothing was displaced.
                return Ok(false);
            };
            remove(&here)?;
            if roots.iter().any(|r| within(q, r)) {
                copy_tree(attic, &obj, &here, links)?;
                if let Some(id) = &d.shared {
                    links.register((id.dev, id.ino), &here)?;
                }
            } else {
                // Only the roots' parts of a bigger tree.
                for r in roots.iter().filter(|r| within(r, q)) {
                    let part = obj.join(std::ffi::OsStr::from_bytes(&r[q.len() + 1..]));
                    if attic.has(&part) {
                        copy_tree(attic, &part, &under(scratch, r), links)?;
                    }
                }
            }
        }
        Some(Change::Renamed(r)) if touches(q) || touches(&r.to) => move_entry(&under(scratch, &r.to), &here)?,
        Some(Change::Exchanged(x)) if touches(q) || touches(&x.with) => {
            let other = under(scratch, &x.with);
            let tmp = scratch.join(".lifeline-exchange");
            move_entry(&here, &tmp)?;
            move_entry(&other, &here)?;
            move_entry(&tmp, &other)?;
        }
        Some(Change::Overwritten(o)) if touches(q) => {
            let mut files = links
                .others(o.shared.as_ref(), &here)
                .into_iter()
                .map(|f| f.try_clone())
                .collect::<Result<Vec<_>, _>>()?;
            if here.symlink_metadata().is_ok_and(|md| md.file_type().is_file()) {
                files.push(fs::OpenOptions::new().write(true).open(&here)?);
            }
            if files.is_empty() {
                return Ok(false);
            }
            for f in &files {
                f.set_len(o.old_size)?;
                for r in &o.ranges {
                    f.write_all_at(&r.data, r.offset)?;
                }
                if let Some(a) = &o.attr {
                    set_attrs_fd(f, a)?;
                }
            }
        }
        Some(Change::AttrChanged(a)) if touches(q) => {
            for f in links.others(a.shared.as_ref(), &here) {
                set_attrs_fd(f, a)?;
            }
            if here.symlink_metadata().is_err() {
                return Ok(false);
            }
            set_attrs(&here, a)?;
        }
        _ => return Ok(false),
    }
    Ok(true)
}

fn remove(p: &Path) -> io::Result<()> {
    match p.symlink_metadata() {
        Ok(md) if md.is_dir() => fs::remove_dir_all(p),
        Ok(_) => fs::remove_file(p),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Moves `from` to `to` (replacing it), if `from` exists.
fn move_entry(from: &Path, to: &Path) -> io::Result<()> {
    if from.symlink_metadata().is_err() {
        return Ok(());
    }
    remove(to)?;
    if let Some(parent) = to.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::rename(from, to)
}

/// The files of the scratch tree that were one file with several names in
/// the mirror.
#[derive(Default)]
struct Links {
    /// The first copy of each mirror file with several names: its (device,
    /// inode) in the mirror to where it was copied (the other names are
    /// hard links to it).
    first: std::collections::HashMap<(u64, u64), PathBuf>,
    /// Every scratch file standing for a mirror file (device, inode) that
    /// records name as `Shared`, open: they follow their file through the
    /// renames the undo makes.
    shared: std::collections::HashMap<(u64, u64), Vec<File>>,
    /// The identities records name as `Shared`: the mirror files copied
    /// that have one are registered, whatever their names now.
    wanted: std::collections::HashSet<(u64, u64)>,
}

impl Links {
    fn register(&mut self, id: (u64, u64), scratch: &Path) -> io::Result<()> {
        let f = fs::OpenOptions::new().read(true).write(true).open(scratch)?;
        self.shared.entry(id).or_default().push(f);
        Ok(())
    }

    /// The scratch files standing for `shared`, but the one at `here`.
    fn others(&self, shared: Option<&Shared>, here: &Path) -> Vec<&File> {
        let Some(id) = shared else { return Vec::new() };
        let mine = here.symlink_metadata().ok().map(|m| (m.dev(), m.ino()));
        let mut seen = std::collections::HashSet::new();
        self.shared
            .get(&(id.dev, id.ino))
            .into_iter()
            .flatten()
            .filter(|f| {
                let id = f.metadata().map(|m| (m.dev(), m.ino())).ok();
                id != mine && seen.insert(id)
            })
            .collect()
    }
}

/// A trusted directory a restore reads from (the mirror or the attic),
/// held open: every read below it resolves beneath it and refuses a
/// symlink on the way ([`safepath::RESOLVE`]). The mirror holds the
/// machine's symlinks, pointing anywhere, and a replication running during
/// a restore may swap a directory for one; since a machine can ask for a
/// restore over gRPC, a path string is never followed there.
struct Source {
    root: OwnedFd,
    path: PathBuf,
}

impl Source {
    fn open(path: &Path) -> io::Result<Source> {
        let root = rustix::fs::open(path, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
        Ok(Source { root, path: path.to_path_buf() })
    }

    /// Opens `p` (a path below the source) without following any symlink,
    /// the last component's included.
    fn open_at(&self, p: &Path, flags: OFlags) -> io::Result<File> {
        let rel = p.strip_prefix(&self.path).map_err(|_| io::Error::other(format!("{} is outside", p.display())))?;
        let rel = if rel.as_os_str().is_empty() { Path::new(".") } else { rel };
        let fd =
            safepath::open_beneath(self.root.as_fd(), rel, flags | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())?;
        Ok(File::from(fd))
    }

    /// `p` is there, reached through directories only.
    fn has(&self, p: &Path) -> bool {
        self.open_at(p, OFlags::PATH).is_ok()
    }
}

/// Copies the mirror or attic entry `src` (below `from`, never following a
/// symlink) to `dst`, with the mode the machine sent (setuid/setgid left
/// off), owner and mtime.
fn copy_tree(from: &Source, src: &Path, dst: &Path, links: &mut Links) -> anyhow::Result<()> {
    if let Some(parent) = dst.parent() {
        fs::create_dir_all(parent)?;
    }
    let mut dirs = Vec::new();
    for entry in walkdir::WalkDir::new(src).follow_links(false).follow_root_links(false) {
        let entry = entry?;
        let rel = entry.path().strip_prefix(src).expect("below the walk's root");
        let to = if rel.as_os_str().is_empty() { dst.to_path_buf() } else { dst.join(rel) };
        let md = from.open_at(entry.path(), OFlags::PATH)?.metadata()?;
        let ft = md.file_type();
        if ft.is_dir() {
            fs::create_dir(&to)?;
            dirs.push((to, entry.path().to_path_buf(), md));
        } else if ft.is_symlink() {
            let link = from.open_at(entry.path(), OFlags::PATH)?;
            let target = rustix::fs::readlinkat(&link, "", Vec::new())?;
            std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(target.as_bytes()), &to)?;
            let _ = rustix::fs::chownat(
                rustix::fs::CWD,
                &to,
                Some(rustix::fs::Uid::from_raw(md.uid())),
                Some(rustix::fs::Gid::from_raw(md.gid())),
                rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
            );
        } else if ft.is_file() {
            // Names of one file stay one file: a write through one of them
            // changed them all, and its undo must too.
            if md.nlink() > 1 {
                if let Some(first) = links.first.get(&(md.dev(), md.ino())) {
                    if fs::hard_link(first, &to).is_ok() {
                        continue;
                    }
                }
                links.first.insert((md.dev(), md.ino()), to.clone());
            }
            let mut file = from.open_at(entry.path(), OFlags::RDONLY)?;
            let md = file.metadata()?;
            io::copy(&mut file, &mut File::create_new(&to)?)?;
            // A mirror file with other names is registered under its
            // identity; an attic copy of one, under the identity it keeps.
            let id = shared_id_of(&file).unwrap_or((md.dev(), md.ino()));
            if links.wanted.contains(&id) {
                links.register(id, &to)?;
            }
            let mode = crate::attrs::original_mode_fd(file.as_fd(), md.mode())?;
            set_attrs(&to, &attrs(&md, mode))?;
        }
    }
    // Directories last (and deepest first), so that their mtimes stay.
    for (to, path, md) in dirs.into_iter().rev() {
        let dir = from.open_at(&path, OFlags::RDONLY | OFlags::DIRECTORY)?;
        let mode = crate::attrs::original_mode_fd(dir.as_fd(), md.mode())?;
        set_attrs(&to, &attrs(&md, mode))?;
    }
    Ok(())
}

/// The identity an attic copy keeps of the mirror file it was a name of.
fn shared_id_of(f: &File) -> Option<(u64, u64)> {
    let mut buf = [0u8; 48];
    let n = rustix::fs::fgetxattr(f, crate::history::SHARED_XATTR, &mut buf[..]).ok()?;
    let (dev, ino) = std::str::from_utf8(&buf[..n]).ok()?.split_once(':')?;
    Some((dev.parse().ok()?, ino.parse().ok()?))
}

fn attrs(md: &fs::Metadata, mode: u32) -> AttrChanged {
    AttrChanged {
        mode,
        uid: md.uid(),
        gid: md.gid(),
        mtime_sec: md.mtime(),
        mtime_nsec: md.mtime_nsec() as u32,
        shared: None,
    }
}

/// Sets owner, mode (without setuid/setgid) and mtime on `p` (no symlink).
fn set_attrs(p: &Path, a: &AttrChanged) -> io::Result<()> {
    let md = p.symlink_metadata()?;
    if md.file_type().is_symlink() {
        return Ok(());
    }
    // chown fails for an unprivileged receiver: the files are its own then.
    let _ = std::os::unix::fs::chown(p, Some(a.uid), Some(a.gid));
    fs::set_permissions(p, fs::Permissions::from_mode(a.mode & 0o1777))?;
    let times = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec { tv_sec: 0, tv_nsec: rustix::fs::UTIME_OMIT },
        last_modification: rustix::fs::Timespec { tv_sec: a.mtime_sec, tv_nsec: a.mtime_nsec.into() },
    };
    rustix::fs::utimensat(rustix::fs::CWD, p, &times, rustix::fs::AtFlags::empty())?;
    Ok(())
}

/// [`set_attrs`] on an open regular file.
fn set_attrs_fd(f: &File, a: &AttrChanged) -> io::Result<()> {
    let _ = std::os::unix::fs::fchown(f, Some(a.uid), Some(a.gid));
    f.set_permissions(fs::Permissions::from_mode(a.mode & 0o1777))?;
    let times = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec { tv_sec: 0, tv_nsec: rustix::fs::UTIME_OMIT },
        last_modification: rustix::fs::Timespec { tv_sec: a.mtime_sec, tv_nsec: a.mtime_nsec.into() },
    };
    rustix::fs::futimens(f, &times)?;
    Ok(())
}

/// What is under `p`.
fn count(p: &Path) -> io::Result<Restored> {
    let mut r = Restored::default();
    for entry in walkdir::WalkDir::new(p).follow_links(false).follow_root_links(false) {
        let entry = entry.map_err(io::Error::other)?;
        let md = entry.path().symlink_metadata()?;
        if md.is_dir() {
            r.dirs += 1;
        } else if md.file_type().is_symlink() {
            r.symlinks += 1;
        } else {
            r.files += 1;
            r.bytes += md.len();
        }
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn renamed(from: &str, to: &str) -> Record {
        Record {
            time_ns: 1,
            seq: 1,
            path: from.as_bytes().to_vec(),
            change: Some(Change::Renamed(lifeline_history::record::Renamed { to: to.as_bytes().to_vec() })),
        }
    }

    /// A damaged or forged journal cannot make a restore write outside its
    /// destination: a record whose path runs through a symlink (which the
    /// applier never lets happen) stops the restore, and the file the
    /// symlink points at is untouched.
    #[test]
    fn a_forged_journal_cannot_lead_a_restore_outside() {
        use lifeline_history::record::{Displaced, OldRange, Overwritten};
        use lifeline_history::{JournalWriter, ManualClock};
        let store_dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("passwd"), b"root:x:0:0").unwrap();
        let store = StoreLayout::new(store_dir.path());
        let m = MachineName::new("m").unwrap();
        fs::create_dir_all(store.mirror(&m).join("srv")).unwrap();
        fs::create_dir_all(store.history_attic(&m)).unwrap();
        std::os::unix::fs::symlink(outside.path(), store.history_attic(&m).join("evil")).unwrap();
        let clock = std::sync::Arc::new(ManualClock::at(1_000));
        let mut j = JournalWriter::open(&store.history_journal(&m), clock.clone()).unwrap();
        clock.set(2_000);
        let write = Overwritten {
            old_size: 4,
            ranges: vec![OldRange { offset: 0, data: b"pwnd".to_vec() }],
            attr: None,
            shared: None,
        };
        j.append(1, b"srv/x/passwd", Change::Overwritten(write)).unwrap();
        clock.set(3_000);
        let evil = Displaced { object: "evil".into(), kind: 0o120000, shared: None };
        j.append(2, b"srv/x", Change::Displaced(evil)).unwrap();
        j.sync().unwrap();
        let to = tempfile::tempdir().unwrap();
        let e = restore_as_of(&store, &m, 1_500, b"srv", to.path()).unwrap_err();
        assert!(format!("{e:#}").contains("symlink"), "{e:#}");
        assert_eq!(fs::read(outside.path().join("passwd")).unwrap(), b"root:x:0:0");
    }

    /// A machine's symlink in its mirror leads a restore nowhere: asked
    /// for a path through it (as a machine may over gRPC), the restore
    /// finds nothing there instead of the receiver's file it points at.
    #[test]
    fn a_restore_never_follows_the_mirrors_symlinks() {
        let store_dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("shadow"), b"root:secret").unwrap();
        let store = StoreLayout::new(store_dir.path());
        let m = MachineName::new("m").unwrap();
        fs::create_dir_all(store.mirror(&m).join("srv")).unwrap();
        std::os::unix::fs::symlink(outside.path(), store.mirror(&m).join("srv/etc")).unwrap();
        let to = tempfile::tempdir().unwrap();
        let e = restore_as_of(&store, &m, i64::MAX - 1, b"srv/etc/shadow", to.path()).unwrap_err();
        assert!(format!("{e:#}").contains("did not exist"), "{e:#}");
        // The symlink itself comes back as a symlink, never what it points at.
        restore_as_of(&store, &m, i64::MAX - 1, b"srv", to.path()).unwrap();
        assert!(to.path().join("srv/etc").symlink_metadata().unwrap().file_type().is_symlink());
        let found: Vec<_> = walkdir::WalkDir::new(to.path()).into_iter().filter_map(|e| e.ok()).collect();
        assert!(found.iter().all(|e| e.file_name() != "shadow"), "{found:?}");
    }

    /// A listing keeps the newest versions, and says it left some out.
    #[test]
    fn versions_are_bounded_to_the_newest() {
        use lifeline_history::record::Overwritten;
        use lifeline_history::{JournalWriter, ManualClock};
        let store_dir = tempfile::tempdir().unwrap();
        let store = StoreLayout::new(store_dir.path());
        let m = MachineName::new("m").unwrap();
        let clock = std::sync::Arc::new(ManualClock::at(1_000));
        let mut j = JournalWriter::open(&store.history_journal(&m), clock.clone()).unwrap();
        for i in 1..=5u64 {
            clock.set(1_000 + i as i64);
            let write = Overwritten { old_size: i, ranges: vec![], attr: None, shared: None };
            j.append(i, b"srv/f", Change::Overwritten(write)).unwrap();
        }
        j.append(6, b"srv/other", Change::Created(lifeline_history::record::Created {})).unwrap();
        j.sync().unwrap();
        let (v, truncated) = versions(&store, &m, b"srv/f", 3).unwrap();
        assert!(truncated);
        assert_eq!(v.iter().map(|v| v.seq).collect::<Vec<_>>(), [3, 4, 5]);
        let (v, truncated) = versions(&store, &m, b"srv/f", usize::MAX).unwrap();
        assert!(!truncated && v.len() == 5 && v[0].what.starts_with("written: was 1 bytes"));
    }

    #[test]
    fn renames_since_the_instant_make_their_targets_matter() {
        // Since the instant: x/f was renamed to d/f, then d to e.
        let recs = [renamed("x/f", "d/f"), renamed("d", "e")];
        let sorted = |mut v: Vec<Vec<u8>>| {
            v.sort();
            v
        };
        // d was e's content; f was not in it then.
        assert_eq!(sorted(relevant_roots(&[b"d".to_vec()], &recs)), [b"d".to_vec(), b"e".to_vec()]);
        // x's f is now e/f (d/f, then renamed with d).
        assert_eq!(sorted(relevant_roots(&[b"x".to_vec()], &recs)), [b"d/f".to_vec(), b"e/f".to_vec(), b"x".to_vec()]);
        assert_eq!(relevant_roots(&[b"y".to_vec()], &recs), [b"y".to_vec()]);
    }
}
