//! Counting, from outside a process, the eBPF programs it holds attached to
//! tracepoints.
//!
//! A tracepoint program is attached in one of two ways, and each shows in a
//! different place:
//! - the old way, `PERF_EVENT_IOC_SET_BPF` on a perf event fd: the fd shows
//!   in `bpftool -j perf list` (`{"pid","fd","prog_id","fd_type":
//!   "tracepoint","tracepoint":"sys_enter_openat"}`), as do raw-tracepoint
//!   links;
//! - a BPF perf link (`BPF_LINK_CREATE` with `BPF_PERF_EVENT`), which aya uses
//!   whenever the kernel has it, closing the perf event fd afterwards: only a
//!   `anon_inode:bpf_link` fd remains, which `bpftool perf list` does not
//!   show. Its `/proc/<pid>/fdinfo/<fd>` says `link_type: perf`, `prog_id`,
//!   and (Linux ≥ 6.10) `event_type: tracepoint` and `tp_name`.
//!
//! libbpf keeps both the perf fd and the link, so both views list the same
//! attachment; per (program, tracepoint) the larger of the two counts is
//! taken.

use std::collections::BTreeMap;
use std::fs;

use crate::run_cmd;

/// One tracepoint attachment held by a process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TracepointAttachment {
    pub fd: i32,
    pub prog_id: u32,
    /// The tracepoint's name without its category (`sys_enter_openat`), or
    /// `"?"` when the kernel does not say.
    pub tracepoint: String,
    /// `"perf_event"` (from `bpftool perf list`) or `"link"` (a BPF perf
    /// link found in `/proc/<pid>/fdinfo`).
    pub via: &'static str,
}

/// The tracepoint attachments held by process `pid`, from both views.
pub fn tracepoint_attachments(pid: u32) -> Vec<TracepointAttachment> {
    let mut out = perf_list(pid);
    out.extend(perf_links(pid));
    out
}

/// How many program attachments to tracepoints process `pid` holds (see the
/// module documentation for how both attachment styles are counted once).
pub fn attached_tracepoint_programs(pid: u32) -> usize {
    let mut per_key: BTreeMap<(u32, String), (usize, usize)> = BTreeMap::new();
    for a in tracepoint_attachments(pid) {
        let e = per_key.entry((a.prog_id, a.tracepoint)).or_default();
        if a.via == "link" {
            e.1 += 1;
        } else {
            e.0 += 1;
        }
    }
    per_key.values().map(|(p, l)| (*p).max(*l)).sum()
}

fn perf_list(pid: u32) -> Vec<TracepointAttachment> {
    let json = run_cmd("bpftool", &["-j", "perf", "list"]);
    let v: serde_json::Value = serde_json::from_str(json.trim())
        .unwrap_or_else(|e| panic!("`bpftool -j perf list` printed no JSON ({e}): {json:?}"));
    let entries = v.as_array().unwrap_or_else(|| panic!("`bpftool -j perf list` is not an array: {v}"));
    entries
        .iter()
        .filter(|e| e["pid"].as_u64() == Some(u64::from(pid)))
        .filter(|e| matches!(e["fd_type"].as_str(), Some("tracepoint" | "raw_tracepoint")))
        .map(|e| TracepointAttachment {
            fd: e["fd"].as_i64().unwrap_or(-1) as i32,
            prog_id: e["prog_id"].as_u64().unwrap_or(0) as u32,
            tracepoint: e["tracepoint"].as_str().unwrap_or("?").to_string(),
            via: "perf_event",
        })
        .collect()
}

fn parse_fdinfo(text: &str) -> BTreeMap<&str, &str> {
    text.lines().filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim(), v.trim())).collect()
}

fn perf_links(pid: u32) -> Vec<TracepointAttachment> {
    let mut out = Vec::new();
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return out; // gone (or never was): nothing attached
    };
    let mut prog_types: Option<BTreeMap<u64, String>> = None;
    for ent in fds.flatten() {
        let Ok(target) = fs::read_link(ent.path()) else {
            continue;
        };
        if target.as_os_str() != "anon_inode:bpf_link" {
            continue;
        }
        let name = ent.file_name();
        let Ok(info) = fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", name.to_string_lossy())) else {
            continue; // closed meanwhile
        };
        let info = parse_fdinfo(&info);
        if info.get("link_type") != Some(&"perf") {
            continue; // raw tracepoint links already show in `perf list`
        }
        let prog_id: u64 = info.get("prog_id").and_then(|s| s.parse().ok()).unwrap_or(0);
        let is_tracepoint = match info.get("event_type") {
            Some(t) => *t == "tracepoint",
            // Older kernels do not describe the event: a perf link of a
            // tracepoint-type program can only be on a tracepoint.
            None => {
                prog_types.get_or_insert_with(program_types).get(&prog_id).map(String::as_str) == Some("tracepoint")
            }
        };
        if is_tracepoint {
            out.push(TracepointAttachment {
                fd: name.to_string_lossy().parse().unwrap_or(-1),
                prog_id: prog_id as u32,
                tracepoint: info.get("tp_name").unwrap_or(&"?").to_string(),
                via: "link",
            });
        }
    }
    out
}

/// Program id → type, from `bpftool -j prog show`.
fn program_types() -> BTreeMap<u64, String> {
    let json = run_cmd("bpftool", &["-j", "prog", "show"]);
    let v: serde_json::Value = serde_json::from_str(json.trim())
        .unwrap_or_else(|e| panic!("`bpftool -j prog show` printed no JSON ({e}): {json:?}"));
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| Some((p["id"].as_u64()?, p["type"].as_str()?.to_string())))
        .collect()
}

/// How many inotify watches process `pid` holds, over all its inotify
/// instances (`inotify wd:` lines of `/proc/<pid>/fdinfo/<fd>`): what the
/// agent's fallback watcher watches, counted from outside.
pub fn inotify_watches(pid: u32) -> usize {
    let dir = format!("/proc/{pid}/fdinfo");
    let entries = fs::read_dir(&dir).unwrap_or_else(|e| panic!("cannot list {dir}: {e}"));
    entries
        .filter_map(|e| fs::read_to_string(e.ok()?.path()).ok())
        .map(|info| info.lines().filter(|l| l.starts_with("inotify wd:")).count())
        .sum()
}

#[cfg(test)]
mod tests {
    //! Attaches a trivial program to a tracepoint in this very process, the
    //! three ways user space does it, and checks the count.

    use super::*;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    const BPF_PROG_LOAD: libc::c_long = 5;
    const BPF_LINK_CREATE: libc::c_long = 28;
    const BPF_PROG_TYPE_TRACEPOINT: u32 = 5;
    const BPF_PERF_EVENT: u32 = 41;
    const PERF_TYPE_TRACEPOINT: u32 = 2;
    const PERF_SAMPLE_RAW: u64 = 1 << 10;
    const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 8;
    const PERF_EVENT_IOC_SET_BPF: libc::c_ulong = 0x4004_2408;
    const PERF_EVENT_IOC_ENABLE: libc::c_ulong = 0x2400;

    fn bpf(cmd: libc::c_long, attr: &mut [u8]) -> std::io::Result<OwnedFd> {
        // SAFETY: attr is a valid, writable union bpf_attr prefix of the size given.
        let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len() as u32) };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a successful bpf() returns a new fd that we own.
        Ok(unsafe { OwnedFd::from_raw_fd(r as i32) })
    }

    fn put<const N: usize>(buf: &mut [u8], off: usize, v: [u8; N]) {
        buf[off..off + N].copy_from_slice(&v);
    }

    /// `r0 = 0; exit`, as a tracepoint program.
    fn load_prog() -> OwnedFd {
        let insns: [u64; 2] = [
            u64::from_le_bytes([0xb7, 0, 0, 0, 0, 0, 0, 0]), // mov64 r0, 0
            u64::from_le_bytes([0x95, 0, 0, 0, 0, 0, 0, 0]), // exit
        ];
        let license = b"GPL\0";
        let mut attr = [0u8; 128];
        put(&mut attr, 0, BPF_PROG_TYPE_TRACEPOINT.to_ne_bytes());
        put(&mut attr, 4, 2u32.to_ne_bytes());
        put(&mut attr, 8, (insns.as_ptr() as u64).to_ne_bytes());
        put(&mut attr, 16, (license.as_ptr() as u64).to_ne_bytes());
        put(&mut attr, 48, *b"lifeline_test\0\0\0");
        bpf(BPF_PROG_LOAD, &mut attr).expect("BPF_PROG_LOAD of a trivial tracepoint program (root needed)")
    }

    fn tracepoint_id(category: &str, name: &str) -> u64 {
        for base in ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"] {
            if let Ok(s) = fs::read_to_string(format!("{base}/events/{category}/{name}/id")) {
                return s.trim().parse().expect("tracepoint id");
            }
        }
        panic!("tracefs is not mounted: `mount -t tracefs nodev /sys/kernel/tracing` (scripts/setup.sh does it)");
    }

    fn perf_open(tp_id: u64) -> OwnedFd {
        let mut attr = [0u8; 128];
        put(&mut attr, 0, PERF_TYPE_TRACEPOINT.to_ne_bytes());
        put(&mut attr, 4, 128u32.to_ne_bytes());
        put(&mut attr, 8, tp_id.to_ne_bytes());
        put(&mut attr, 16, 1u64.to_ne_bytes()); // sample_period
        put(&mut attr, 24, PERF_SAMPLE_RAW.to_ne_bytes());
        put(&mut attr, 48, 1u32.to_ne_bytes()); // wakeup_events
                                                // SAFETY: attr is a valid perf_event_attr of the size it declares.
        let r = unsafe {
            libc::syscall(libc::SYS_perf_event_open, attr.as_ptr(), -1i32, 0i32, -1i32, PERF_FLAG_FD_CLOEXEC)
        };
        assert!(r >= 0, "perf_event_open: {}", std::io::Error::last_os_error());
        // SAFETY: a new fd that we own.
        unsafe { OwnedFd::from_raw_fd(r as i32) }
    }

    fn attach_ioctl(perf: &OwnedFd, prog: &OwnedFd) {
        // SAFETY: plain ioctls on a perf event fd we own.
        unsafe {
            assert_eq!(libc::ioctl(perf.as_raw_fd(), PERF_EVENT_IOC_SET_BPF, prog.as_raw_fd()), 0);
            assert_eq!(libc::ioctl(perf.as_raw_fd(), PERF_EVENT_IOC_ENABLE, 0), 0);
        }
    }

    fn attach_link(perf: &OwnedFd, prog: &OwnedFd) -> OwnedFd {
        let mut attr = [0u8; 64];
        put(&mut attr, 0, (prog.as_raw_fd() as u32).to_ne_bytes());
        put(&mut attr, 4, (perf.as_raw_fd() as u32).to_ne_bytes());
        put(&mut attr, 8, BPF_PERF_EVENT.to_ne_bytes());
        bpf(BPF_LINK_CREATE, &mut attr).expect("BPF_LINK_CREATE")
    }

    fn count_self() -> usize {
        attached_tracepoint_programs(std::process::id())
    }

    // One test, not several: the counts are of this whole process, and the
    // test harness runs tests on parallel threads.
    #[test]
    fn counts_tracepoint_attachments_of_every_style() {
        crate::require_root();
        crate::require_tool("bpftool");
        assert_eq!(count_self(), 0, "nothing attached yet: {:?}", tracepoint_attachments(std::process::id()));

        let prog = load_prog();
        let tp = tracepoint_id("syscalls", "sys_enter_getppid");
        assert_eq!(count_self(), 0, "a loaded, unattached program is not attached");

        // The old way: the perf fd carries the program.
        let perf = perf_open(tp);
        attach_ioctl(&perf, &prog);
        assert_eq!(count_self(), 1, "{:?}", tracepoint_attachments(std::process::id()));
        drop(perf);
        assert_eq!(count_self(), 0);

        // aya's way: a perf link, the perf fd closed.
        let perf = perf_open(tp);
        let link = attach_link(&perf, &prog);
        drop(perf);
        let atts = tracepoint_attachments(std::process::id());
        assert_eq!(count_self(), 1, "{atts:?}");
        assert_eq!(atts[0].via, "link");
        drop(link);
        assert_eq!(count_self(), 0);

        // libbpf's way: a perf link and the perf fd both kept.
        let perf = perf_open(tp);
        let link = attach_link(&perf, &prog);
        let perf2 = perf_open(tracepoint_id("syscalls", "sys_exit_getppid"));
        let link2 = attach_link(&perf2, &prog);
        assert_eq!(count_self(), 2, "{:?}", tracepoint_attachments(std::process::id()));
        drop((link, link2, perf, perf2));
        assert_eq!(count_self(), 0);

        // Another pid's attachments are not ours; a pid that does not exist has none.
        assert_eq!(attached_tracepoint_programs(u32::MAX - 1), 0);
    }
}
