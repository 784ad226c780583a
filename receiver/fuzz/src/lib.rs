//! What the receiver's fuzz targets share: one tokio runtime per process, a
//! scratch directory for a temporary store, the record framing of inputs
//! that carry several messages, seeds written where `scripts/fuzz.sh` asks,
//! and a snapshot of a tree to check that nothing changed outside the
//! places a request may write.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use lifeline_core::credential::MachineName;
use lifeline_store::Authenticator;
use tonic::{Extensions, Status};

/// The runtime every input runs on, built once per process (building one
/// per input would cost more than most inputs).
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime"))
}

static SCRATCH: OnceLock<PathBuf> = OnceLock::new();

extern "C" fn remove_scratch() {
    if let Some(d) = SCRATCH.get() {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// This process's scratch directory: in /dev/shm where there is one (the
/// mirror syncs its filesystem after each group of batches, which costs
/// nothing on tmpfs), removed when the process exits (libFuzzer ends with
/// `exit`), and by a later run when a crash left it behind.
pub fn scratch(target: &str) -> &'static Path {
    SCRATCH.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        let base = if shm.is_dir() { shm.to_path_buf() } else { std::env::temp_dir() };
        if let Ok(entries) = std::fs::read_dir(&base) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let Some(pid) = name.strip_prefix("lifeline-fuzz-").and_then(|r| r.rsplit('-').next()) else {
                    continue;
                };
                if !Path::new("/proc").join(pid).exists() {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let dir = base.join(format!("lifeline-fuzz-{target}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a scratch directory");
        // SAFETY: registers a plain function with no arguments.
        unsafe { libc::atexit(remove_scratch) };
        dir
    })
}

/// Splits an input into records `[kind: u8][len: u16 LE][len bytes]` (the
/// last may be shorter than its length says): how one input carries several
/// messages, each decoded on its own so that a mutation inside one leaves
/// the others whole.
pub fn records(mut data: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    std::iter::from_fn(move || {
        let (&kind, rest) = data.split_first()?;
        let (len, rest) = match rest {
            [a, b, rest @ ..] => (usize::from(u16::from_le_bytes([*a, *b])), rest),
            _ => (0, &[][..]),
        };
        let (payload, tail) = rest.split_at(len.min(rest.len()));
        data = tail;
        Some((kind, payload))
    })
}

/// One record, for seeds.
pub fn record(kind: u8, payload: &[u8]) -> Vec<u8> {
    let len = u16::try_from(payload.len()).expect("a seed record under 64 KiB");
    let mut r = vec![kind];
    r.extend_from_slice(&len.to_le_bytes());
    r.extend_from_slice(payload);
    r
}

/// A gRPC frame (uncompressed) holding `msg`, as a client sends it.
pub fn grpc_frame(msg: &[u8]) -> Vec<u8> {
    let mut f = vec![0];
    f.extend_from_slice(&u32::try_from(msg.len()).expect("a small message").to_be_bytes());
    f.extend_from_slice(msg);
    f
}

/// Writes `seeds` into the directory named by `LIFELINE_FUZZ_SEEDS`, if set
/// (by `scripts/fuzz.sh`, before libFuzzer reads its corpus): seeds made
/// with the real encoders, so the fuzzer starts from valid messages.
pub fn write_seeds(seeds: &[(&str, Vec<u8>)]) {
    let Some(dir) = std::env::var_os("LIFELINE_FUZZ_SEEDS") else { return };
    let dir = PathBuf::from(dir);
    let _ = std::fs::create_dir_all(&dir);
    for (name, bytes) in seeds {
        let p = dir.join(format!("seed-{name}"));
        if !p.exists() {
            std::fs::write(&p, bytes).expect("a seed written");
        }
    }
}

/// Every entry under `root` (symlinks never followed) with what may not
/// change outside the places a request may write: kind, mode, owner,
/// length, link target. Entries for which `skip` holds are left out, with
/// what is under them.
pub fn snapshot(root: &Path, skip: &dyn Fn(&Path) -> bool) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if skip(&p) {
                continue;
            }
            let Ok(md) = p.symlink_metadata() else { continue };
            let target = std::fs::read_link(&p).ok();
            let len = if md.is_file() { md.len() } else { 0 };
            out.insert(p.clone(), format!("{:o} {}:{} {len} {target:?}", md.mode(), md.uid(), md.gid()));
            if md.is_dir() {
                todo.push(p);
            }
        }
    }
    out
}

/// Panics naming what differs between two snapshots.
pub fn assert_same(before: &BTreeMap<PathBuf, String>, after: &BTreeMap<PathBuf, String>, what: &str) {
    if before == after {
        return;
    }
    let changed: Vec<_> = before
        .iter()
        .filter(|(p, v)| after.get(*p) != Some(v))
        .map(|(p, v)| format!("{}: {v} -> {:?}", p.display(), after.get(p)))
        .chain(after.iter().filter(|(p, _)| !before.contains_key(*p)).map(|(p, v)| format!("{}: new {v}", p.display())))
        .collect();
    panic!("{what}: changed outside the places it may write: {changed:#?}");
}

/// Removes `p`, a directory or a file, if there.
pub fn remove(p: &Path) {
    if std::fs::remove_dir_all(p).is_err() {
        let _ = std::fs::remove_file(p);
    }
}

/// Every request speaks for one machine, as the receiver's authenticator
/// says after checking its credential.
pub struct Machine(pub MachineName);

impl Authenticator for Machine {
    fn authenticate(&self, _: &tonic::metadata::MetadataMap, _: &Extensions) -> Result<MachineName, Status> {
        Ok(self.0.clone())
    }
}
