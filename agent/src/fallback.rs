//! The fallback capture where eBPF cannot be loaded (not root, no BTF, a
//! locked-down kernel, a verifier that refuses the programs): an inotify
//! watch on every directory of the watched trees ("notify" mode).
//!
//! It knows which paths changed but not which bytes, and sees nothing of
//! writes through shared mappings: every changed path is queued as a
//! reconciliation finding (the whole file is sent), reconciliation runs
//! every 10 seconds by default and once a burst of changes has settled.
//! inotify's own limits apply (a watch per directory, an event queue that
//! can overflow: an overflow triggers a reconciliation).
//!
//! It uses inotify directly rather than the `notify` crate, whose recursive
//! watch follows symlinks when it adds watches (it stats and walks a new
//! directory by path, so a symlink to an ancestor or to `/` put in its place
//! is walked, and watching `/proc` fails the whole watch). Here:
//! - every directory is opened by descriptor, `O_NOFOLLOW | O_DIRECTORY`,
//!   from its parent's descriptor (or `openat2` `RESOLVE_NO_SYMLINKS` from
//!   the root), and watched through that descriptor (`/proc/self/fd/N`):
//!   a symlink is never watched through, it is replicated as a symlink;
//! - a directory that cannot be watched (permissions, the watch limit) is
//!   logged and left to reconciliation; it never stops the agent;
//! - `set_enabled(false)` drops every watch (the automatic-backup switch),
//!   `set_enabled(true)` watches the trees again.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask, Watches};
use lifeline_core::nofollow;
use lifeline_core::tree::{self, Kind};
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use crate::scheduler::{Reconcile, SchedMsg};
use crate::status::Counters;

/// A reconciliation follows a burst of changes once none came for this long:
/// what events cannot say (a write through another name of a hard-linked
/// file, changes in the moment before a new directory's watch) is found then,
/// not at the next periodic pass.
const SETTLE: Duration = Duration::from_secs(1);
/// ... but not more often than this, nor than every 10 times as long as
/// the last pass took (a big tree's pass must not run back to back because
/// something writes every couple of seconds).
const SETTLE_MIN_GAP: Duration = Duration::from_secs(3);

fn mask() -> WatchMask {
    WatchMask::CREATE
        | WatchMask::DELETE
        | WatchMask::MODIFY
        | WatchMask::ATTRIB
        | WatchMask::CLOSE_WRITE
        | WatchMask::MOVED_FROM
        | WatchMask::MOVED_TO
        | WatchMask::DELETE_SELF
        | WatchMask::ONLYDIR
        | WatchMask::EXCL_UNLINK
}

/// The watches, by descriptor and by path.
struct Watched {
    watches: Watches,
    by_wd: HashMap<WatchDescriptor, PathBuf>,
    by_path: HashMap<PathBuf, WatchDescriptor>,
    /// Directories moved away (by rename cookie), until their new name comes.
    moved_from: HashMap<u32, PathBuf>,
    enabled: bool,
    /// Directories that could not be watched (logged once per path).
    unwatchable: std::collections::HashSet<PathBuf>,
}

/// The fallback watcher; watches until the process ends.
pub struct Watcher {
    roots: Vec<PathBuf>,
    state: Arc<Mutex<Watched>>,
    queue: Sender<SchedMsg>,
    reconcile: Arc<Notify>,
}

impl Watcher {
    /// Watches every directory below `roots` and starts the thread that
    /// turns events into findings for the scheduler. Only a failure to
    /// create the inotify instance itself is an error; a directory that
    /// cannot be watched is logged (reconciliation covers it).
    pub fn start(
        roots: &[PathBuf],
        queue: Sender<SchedMsg>,
        reconcile: Arc<Notify>,
        counters: Arc<Counters>,
    ) -> anyhow::Result<Arc<Watcher>> {
        let inotify = Inotify::init().map_err(|e| {
            anyhow::anyhow!("cannot create an inotify instance: {e} (raise fs.inotify.max_user_instances?)")
        })?;
        let state = Arc::new(Mutex::new(Watched {
            watches: inotify.watches(),
            by_wd: HashMap::new(),
            by_path: HashMap::new(),
            moved_from: HashMap::new(),
            enabled: true,
            unwatchable: Default::default(),
        }));
        let w = Arc::new(Watcher { roots: roots.to_vec(), state, queue, reconcile });
        let started = Instant::now();
        let n = w.watch_roots();
        info!("watching {n} directories with inotify (in {:?})", started.elapsed());
        let last_event = Arc::new(AtomicU64::new(0));
        let dirty = Arc::new(AtomicBool::new(false));
        {
            let w = w.clone();
            let (last_event, dirty, counters) = (last_event.clone(), dirty.clone(), counters.clone());
            std::thread::Builder::new()
                .name("inotify".into())
                .spawn(move || w.read(inotify, counters, &last_event, &dirty))?;
        }
        // The settle trigger (see SETTLE).
        let reconcile = w.reconcile.clone();
        std::thread::Builder::new().name("inotify-settle".into()).spawn(move || {
            let t0 = Instant::now();
            let mut last_run: Option<Instant> = None;
            loop {
                std::thread::sleep(Duration::from_millis(200));
                let quiet = t0.elapsed().saturating_sub(Duration::from_millis(last_event.load(Relaxed)));
                let gap = SETTLE_MIN_GAP.max(Duration::from_millis(10 * counters.last_reconcile_ms.load(Relaxed)));
                if dirty.load(Relaxed) && quiet >= SETTLE && last_run.is_none_or(|t| t.elapsed() >= gap) {
                    dirty.store(false, Relaxed);
                    last_run = Some(Instant::now());
                    debug!("changes settled; reconciling");
                    reconcile.notify_one();
                }
            }
        })?;
        Ok(w)
    }

    /// The automatic-backup switch: off drops every watch (nothing is
    /// captured, nothing sent); on watches the trees again (the caller then
    /// reconciles what changed meanwhile).
    pub fn set_enabled(&self, enabled: bool) {
        if enabled {
            self.state.lock().unwrap().enabled = true;
            let n = self.watch_roots();
            info!("watching {n} directories with inotify again");
        } else {
            let mut st = self.state.lock().unwrap();
            st.enabled = false;
            let wds: Vec<WatchDescriptor> = st.by_wd.drain().map(|(wd, _)| wd).collect();
            st.by_path.clear();
            st.moved_from.clear();
            for wd in wds {
                // (Fails only for a watch the kernel already dropped.)
                let _ = st.watches.remove(wd);
            }
            info!("inotify watches dropped");
        }
    }

    /// Number of directories watched now.
    pub fn watched(&self) -> usize {
        self.state.lock().unwrap().by_wd.len()
    }

    fn watch_roots(&self) -> usize {
        let mut st = self.state.lock().unwrap();
        for root in &self.roots {
            add_tree(&mut st, root);
        }
        st.by_wd.len()
    }

    /// Reads events until the process ends.
    fn read(&self, mut inotify: Inotify, counters: Arc<Counters>, last_event: &AtomicU64, dirty: &AtomicBool) {
        let t0 = Instant::now();
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let events = match inotify.read_events_blocking(&mut buf) {
                Ok(ev) => ev,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    warn!("reading inotify events failed: {e}; changes are found by the periodic reconciliation only");
                    return;
                }
            };
            let mut items = Vec::new();
            let mut st = self.state.lock().unwrap();
            for ev in events {
                if ev.mask.contains(EventMask::Q_OVERFLOW) {
                    warn!("the inotify event queue overflowed (events were lost); reconciling");
                    counters.suspect(std::time::SystemTime::now());
                    self.reconcile.notify_one();
                    continue;
                }
                if ev.mask.contains(EventMask::IGNORED) {
                    // The directory was removed (or its watch dropped).
                    if let Some(p) = st.by_wd.remove(&ev.wd) {
                        if st.by_path.get(&p) == Some(&ev.wd) {
                            st.by_path.remove(&p);
                        }
                    }
                    continue;
                }
                if !st.enabled {
                    continue;
                }
                let Some(dir) = st.by_wd.get(&ev.wd).cloned() else {
                    continue;
                };
                let Some(name) = ev.name else {
                    // DELETE_SELF: its parent's DELETE says it went.
                    continue;
                };
                let path = dir.join(name);
                let is_dir = ev.mask.contains(EventMask::ISDIR);
                if is_dir && ev.mask.contains(EventMask::MOVED_FROM) {
                    st.moved_from.insert(ev.cookie, path.clone());
                    items.push(Reconcile::Path(path));
                } else if is_dir && ev.mask.intersects(EventMask::CREATE | EventMask::MOVED_TO) {
                    if ev.mask.contains(EventMask::MOVED_TO) {
                        if let Some(old) = st.moved_from.remove(&ev.cookie) {
                            forget_below(&mut st, &old);
                        }
                    }
                    add_tree(&mut st, &path);
                    // Whole: files may have appeared in it before its watch.
                    items.push(Reconcile::Tree(path));
                } else if is_dir && ev.mask.contains(EventMask::DELETE) {
                    forget_below(&mut st, &path);
                    items.push(Reconcile::Path(path));
                } else {
                    items.push(Reconcile::Path(path));
                }
            }
            // A directory moved out of the trees: nothing below it is ours.
            for (_, old) in std::mem::take(&mut st.moved_from) {
                let wds = forget_below(&mut st, &old);
                for wd in wds {
                    let _ = st.watches.remove(wd);
                }
            }
            drop(st);
            if !items.is_empty() {
                last_event.store(t0.elapsed().as_millis() as u64, Relaxed);
                dirty.store(true, Relaxed);
                if self.queue.send(SchedMsg::Reconcile(items)).is_err() {
                    return; // the scheduler is gone: the agent is stopping
                }
            }
        }
    }
}

/// Drops the mapping of `dir` and everything below it; returns their
/// descriptors (for a caller that removes the watches too).
fn forget_below(st: &mut Watched, dir: &Path) -> Vec<WatchDescriptor> {
    let below: Vec<PathBuf> = st.by_path.keys().filter(|p| p.starts_with(dir)).cloned().collect();
    let mut wds = Vec::new();
    for p in below {
        if let Some(wd) = st.by_path.remove(&p) {
            if st.by_wd.get(&wd) == Some(&p) {
                st.by_wd.remove(&wd);
                wds.push(wd);
            }
        }
    }
    wds
}

/// Watches `top` and every directory below it, never through a symlink.
fn add_tree(st: &mut Watched, top: &Path) {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW;
    let fd = match nofollow::open(top, flags) {
        Ok(fd) => fd,
        // Gone, or no longer a directory: its own event follows.
        Err(e) if nofollow::is_race(&e) => return,
        Err(e) => return unwatchable(st, top, &e.to_string()),
    };
    let mut stack: Vec<(PathBuf, OwnedFd)> = vec![(top.to_path_buf(), fd)];
    while let Some((path, fd)) = stack.pop() {
        if !add_one(st, &path, &fd) {
            continue;
        }
        let entries = match tree::list_dir_fd(fd.as_fd()) {
            Ok(e) => e,
            Err(e) => {
                unwatchable(st, &path, &format!("cannot list it: {e}"));
                continue;
            }
        };
        for e in entries.into_iter().filter(|e| e.kind == Kind::Dir) {
            match rustix::fs::openat(&fd, &e.rel, flags | OFlags::CLOEXEC, Mode::empty()) {
                Ok(sub) => stack.push((path.join(&e.rel), sub)),
                Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP) => {}
                Err(err) => unwatchable(st, &path.join(&e.rel), &err.to_string()),
            }
        }
    }
}

/// Watches the directory open as `fd` (named `path`); false if it cannot.
fn add_one(st: &mut Watched, path: &Path, fd: &OwnedFd) -> bool {
    // Through the descriptor: the directory we opened without following a
    // symlink, whatever its name points to by now.
    let via = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
    let added = st.watches.add(&via, mask()).or_else(|e| {
        if e.kind() == std::io::ErrorKind::NotFound && !Path::new("/proc/self/fd").is_dir() {
            // No /proc: by name, refusing a symlink at least as the last
            // component.
            st.watches.add(path, mask() | WatchMask::DONT_FOLLOW)
        } else {
            Err(e)
        }
    });
    match added {
        Ok(wd) => {
            // The same directory under another name (renamed): one watch.
            if let Some(old) = st.by_wd.insert(wd.clone(), path.to_path_buf()) {
                if old != path && st.by_path.get(&old) == Some(&wd) {
                    st.by_path.remove(&old);
                }
            }
            st.by_path.insert(path.to_path_buf(), wd);
            true
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => {
            unwatchable(st, path, "the inotify watch limit is reached (raise fs.inotify.max_user_watches)");
            false
        }
        Err(e) => {
            unwatchable(st, path, &e.to_string());
            false
        }
    }
}

fn unwatchable(st: &mut Watched, path: &Path, why: &str) {
    if st.unwatchable.insert(path.to_path_buf()) {
        warn!(
            "cannot watch {} with inotify: {why}; changes below it are found by the periodic reconciliation only",
            path.display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Waits up to 5 s for findings until `want` is among them.
    fn expect(rx: &crossbeam_channel::Receiver<SchedMsg>, want: &Reconcile) -> Vec<Reconcile> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            if let Ok(SchedMsg::Reconcile(items)) = rx.recv_timeout(left) {
                seen.extend(items);
                if seen.contains(want) {
                    return seen;
                }
            }
        }
        panic!("no {want:?} within 5 s; saw {seen:?}");
    }

    fn wait_watched(w: &Watcher, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while w.watched() != n {
            assert!(Instant::now() < deadline, "{} directories watched, not {n}", w.watched());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// One watch per real directory, none through a symlink (to `/`, to
    /// the parent); a new directory is watched and sent whole; a renamed
    /// one keeps reporting under its new name; one replaced by a symlink
    /// is no longer watched; the switch drops and restores every watch.
    #[test]
    fn watches_real_directories_only_and_follows_renames() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().canonicalize().unwrap();
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::os::unix::fs::symlink("/", root.join("slash")).unwrap();
        std::os::unix::fs::symlink("..", root.join("a/up")).unwrap();
        let (tx, rx) = crossbeam_channel::unbounded();
        let counters = Arc::new(Counters::new(String::new(), String::new(), Vec::new()));
        let w = Watcher::start(std::slice::from_ref(&root), tx, Arc::new(Notify::new()), counters).unwrap();
        assert_eq!(w.watched(), 3, "the root, a and a/b; nothing through the symlinks");

        std::fs::create_dir(root.join("a/c")).unwrap();
        expect(&rx, &Reconcile::Tree(root.join("a/c")));
        wait_watched(&w, 4);

        std::fs::rename(root.join("a"), root.join("z")).unwrap();
        expect(&rx, &Reconcile::Tree(root.join("z")));
        std::fs::write(root.join("z/c/f"), b"after the rename").unwrap();
        expect(&rx, &Reconcile::Path(root.join("z/c/f")));
        wait_watched(&w, 4);

        std::fs::remove_dir_all(root.join("z/c")).unwrap();
        std::os::unix::fs::symlink("/", root.join("z/c")).unwrap();
        expect(&rx, &Reconcile::Path(root.join("z/c")));
        wait_watched(&w, 3);

        w.set_enabled(false);
        assert_eq!(w.watched(), 0);
        std::fs::write(root.join("z/while-off"), b"x").unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let off = Reconcile::Path(root.join("z/while-off"));
        let leaked = rx.try_iter().any(|m| matches!(m, SchedMsg::Reconcile(items) if items.contains(&off)));
        assert!(!leaked, "a change while off was reported");
        w.set_enabled(true);
        assert_eq!(w.watched(), 3);
        std::fs::write(root.join("z/b/after-on"), b"y").unwrap();
        expect(&rx, &Reconcile::Path(root.join("z/b/after-on")));
    }
}
