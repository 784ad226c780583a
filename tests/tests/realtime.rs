//! End to end: a receiver, an agent watching a tree on a scratch filesystem,
//! and the mirror compared with the source.
//!
//! Needs root, bpftool, losetup, mkfs.ext4, and the workspace's binaries
//! (`cargo build --workspace --bins`). Each test has its own filesystem,
//! receiver (port, store), agent (state directory, control socket) and
//! machine name, so they may run in parallel.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{symlink, FileExt, PermissionsExt};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lifeline_tests::workload::{run_workload, run_workload_with, Pacing, WorkloadOptions};
use lifeline_tests::{differences, inotify_watches, preflight, tracepoint_attachments, wait_until, Rig, ScratchFs};

const SYNC_TIMEOUT: Duration = Duration::from_secs(30);
const TOOLS: &[&str] = &["bpftool", "lifeline-receiver", "lifeline-agent"];

fn randomized(name: &str, fs: ScratchFs, opts: WorkloadOptions) {
    randomized_capturing_with("ebpf", name, fs, opts)
}

fn randomized_capturing_with(capture: &str, name: &str, fs: ScratchFs, opts: WorkloadOptions) {
    preflight(TOOLS);
    let mut rig = Rig::new(name, fs);
    rig.start_agent_with(&["--capture", capture]);
    rig.wait_ready_capturing_with(capture);
    let stats = run_workload_with(&rig.src, &opts);
    assert!(stats.missing_kinds().is_empty(), "workload lacked {:?}", stats.missing_kinds());
    rig.assert_identical(SYNC_TIMEOUT, &format!("after {} workload operations", stats.total()));
}

/// (a) A randomized workload on ext4, as fast as it goes.
#[test]
fn randomized_workload_on_ext4_reaches_identical_mirror() {
    randomized("rand-ext4", ScratchFs::ext4(1024), WorkloadOptions::new(0x5EED_0001, 3000));
}

/// (b) Another seed on tmpfs, in bursts.
#[test]
fn randomized_workload_on_tmpfs_reaches_identical_mirror() {
    let mut opts = WorkloadOptions::new(0x5EED_0002, 3000);
    opts.pacing = Pacing::Bursts { ops: 250, pause: Duration::from_millis(100) };
    randomized("rand-tmpfs", ScratchFs::tmpfs(1024), opts);
}

/// Where eBPF cannot load, the inotify watcher takes over: the same
/// randomized workload still ends identical (whole files are sent).
#[test]
fn randomized_workload_with_the_notify_fallback_reaches_identical_mirror() {
    let mut opts = WorkloadOptions::new(0x5EED_0003, 2000);
    opts.pacing = Pacing::Bursts { ops: 250, pause: Duration::from_millis(100) };
    randomized_capturing_with("notify", "rand-notify", ScratchFs::tmpfs(1024), opts);
}

/// (c) `off` detaches every tracepoint program and stops replication; `on`
/// attaches them again and catches up with what changed meanwhile.
#[test]
fn off_detaches_and_stops_replication_on_resumes() {
    preflight(TOOLS);
    let mut rig = Rig::new("onoff", ScratchFs::tmpfs(256));
    let src = rig.src.clone();
    fs::create_dir(src.join("dir")).unwrap();
    fs::write(src.join("modify.txt"), b"before").unwrap();
    fs::write(src.join("delete.txt"), b"doomed").unwrap();
    fs::write(src.join("dir/keep.txt"), b"kept").unwrap();
    rig.start_agent();
    rig.wait_ready();
    rig.assert_identical(SYNC_TIMEOUT, "before off");
    if !wait_until(Duration::from_secs(5), || rig.attached() > 0) {
        let atts = tracepoint_attachments(rig.agent().pid());
        rig.fail(&format!("capture on but no tracepoint program attached: {atts:?}"));
    }

    rig.agent().ctl("off");
    if !wait_until(Duration::from_secs(2), || rig.attached() == 0) {
        let atts = tracepoint_attachments(rig.agent().pid());
        rig.fail(&format!("after `off` tracepoint programs are still attached: {atts:?}"));
    }
    let s = rig.agent().status();
    if s.capture != "off" {
        rig.fail(&format!("after `off` the status says capture {:?}", s.capture));
    }

    // Changes while off: create, modify, delete, mkdir.
    fs::write(src.join("new.txt"), b"created while off").unwrap();
    fs::write(src.join("modify.txt"), b"after, and longer").unwrap();
    fs::remove_file(src.join("delete.txt")).unwrap();
    fs::create_dir(src.join("newdir")).unwrap();
    fs::write(src.join("newdir/inner.txt"), b"inner").unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let m = &rig.mirror;
    let mut leaked = Vec::new();
    if m.join("new.txt").exists() {
        leaked.push("new.txt was created in the mirror");
    }
    if fs::read(m.join("modify.txt")).ok().as_deref() != Some(b"before".as_slice()) {
        leaked.push("modify.txt changed in the mirror");
    }
    if !m.join("delete.txt").exists() {
        leaked.push("delete.txt was deleted from the mirror");
    }
    if m.join("newdir").exists() {
        leaked.push("newdir was created in the mirror");
    }
    if !leaked.is_empty() || differences(&src, m).is_empty() {
        rig.fail(&format!("changes made while off reached the mirror: {leaked:?}"));
    }

    rig.agent().ctl("on");
    if !wait_until(Duration::from_secs(5), || rig.attached() > 0) {
        rig.fail("after `on` no tracepoint program is attached");
    }
    rig.agent().wait_status("capture back on", Duration::from_secs(5), |s| s.capture == "ebpf");
    rig.assert_identical(SYNC_TIMEOUT, "after `on`");

    // And capture works again, not only the catch-up.
    fs::write(src.join("after-on.txt"), b"live again").unwrap();
    fs::write(src.join("dir/keep.txt"), b"kept, changed").unwrap();
    rig.assert_identical(Duration::from_secs(10), "a change after `on`");
}

/// (d) A tree made before the agent starts reaches the mirror by the initial
/// sync, which also deletes what only the mirror has and fixes what differs.
#[test]
fn initial_sync_copies_existing_tree_and_removes_extraneous_mirror_files() {
    preflight(TOOLS);
    let mut rig = Rig::new("startup", ScratchFs::ext4(512));
    let src = rig.src.clone();
    run_workload(&src, 0x5EED_0003, 800);
    fs::create_dir_all(src.join("pre/nested")).unwrap();
    fs::write(src.join("pre/nested/a.txt"), b"made before the agent").unwrap();
    fs::write(src.join("pre/exec.sh"), b"#!/bin/sh\n").unwrap();
    fs::set_permissions(src.join("pre/exec.sh"), fs::Permissions::from_mode(0o750)).unwrap();
    symlink("nested/a.txt", src.join("pre/link")).unwrap();
    fs::write(src.join("stale.txt"), b"the source's content").unwrap();

    // Planted in the mirror by hand before the agent starts.
    let m = rig.mirror.clone();
    fs::create_dir_all(m.join("planted-dir/sub")).unwrap();
    fs::write(m.join("planted.txt"), b"only in the mirror").unwrap();
    fs::write(m.join("planted-dir/sub/x"), b"only in the mirror").unwrap();
    fs::write(m.join("stale.txt"), b"the mirror's old content, longer").unwrap();

    rig.start_agent();
    rig.assert_identical(SYNC_TIMEOUT, "initial sync");
    rig.agent().wait_status("initial sync done", SYNC_TIMEOUT, |s| s.initial_sync_done);
    assert!(!m.join("planted.txt").exists() && !m.join("planted-dir").exists());
}

/// (d') Names of one file that the mirror holds as separate files (links
/// made while no agent ran, a link op the receiver could not apply) are
/// linked again by reconciliation, so that a write through one name reaches
/// every name in the mirror; a mirror file shared by names of two source
/// files is split. The mirror's copies have the source's size and mtime,
/// which no size-and-mtime comparison tells apart.
#[test]
fn names_of_one_file_split_in_the_mirror_are_linked_again() {
    use std::os::unix::fs::MetadataExt;
    preflight(TOOLS);
    let mut rig = Rig::new("relink", ScratchFs::ext4(256));
    let (src, m) = (rig.src.clone(), rig.mirror.clone());
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    fs::create_dir_all(src.join("d")).unwrap();
    fs::write(src.join("a"), &data).unwrap();
    fs::hard_link(src.join("a"), src.join("d/b")).unwrap();
    fs::hard_link(src.join("a"), src.join("c")).unwrap();
    fs::write(src.join("x"), &data).unwrap();
    fs::write(src.join("y"), &data).unwrap();
    // The mirror: the same bytes, mode and mtimes, linked the wrong way.
    fs::create_dir_all(m.join("d")).unwrap();
    for name in ["a", "d/b", "c", "x"] {
        fs::write(m.join(name), &data).unwrap();
    }
    fs::hard_link(m.join("x"), m.join("y")).unwrap();
    for name in ["a", "d/b", "c", "x"] {
        let mtime = fs::metadata(src.join(name)).unwrap().modified().unwrap();
        fs::File::options().write(true).open(m.join(name)).unwrap().set_modified(mtime).unwrap();
    }
    let dir_mode = fs::metadata(src.join("d")).unwrap().permissions();
    fs::set_permissions(m.join("d"), dir_mode).unwrap();

    rig.start_agent();
    rig.wait_ready();
    let ino = |n: &str| fs::metadata(m.join(n)).map(|md| md.ino()).unwrap_or(0);
    let linked = wait_until(SYNC_TIMEOUT, || {
        ino("a") != 0 && ino("a") == ino("d/b") && ino("a") == ino("c") && ino("x") != ino("y")
    });
    if !linked {
        rig.fail(&format!(
            "mirror inodes after the initial sync: a {} d/b {} c {}, x {} y {}; want a = d/b = c and x != y",
            ino("a"),
            ino("d/b"),
            ino("c"),
            ino("x"),
            ino("y")
        ));
    }
    // Written through one name: every name changes, on both sides.
    let f = OpenOptions::new().write(true).open(src.join("c")).unwrap();
    f.write_all_at(b"written through c", 150_000).unwrap();
    drop(f);
    OpenOptions::new().append(true).open(src.join("x")).unwrap().write_all(b"x only").unwrap();
    rig.assert_identical(SYNC_TIMEOUT, "a write through one name of a relinked file");
}

/// (d'') Setuid and setgid entries of the watched tree reach the mirror
/// without those bits (issue 14, finding 7: the receiver host must never
/// hold a setuid-root binary a machine sent), and the agent, whose
/// reconciliation compares modes with `ListTree`'s, does not send them
/// again and again: the listing reports the modes the machine has.
#[test]
fn setuid_files_reach_the_mirror_stripped_and_are_not_sent_again() {
    use lifeline_core::tree::{compare, scan, CompareOptions};
    preflight(TOOLS);
    let mut rig = Rig::new("setuid", ScratchFs::ext4(128));
    let (src, m) = (rig.src.clone(), rig.mirror.clone());
    fs::create_dir_all(src.join("bin")).unwrap();
    fs::create_dir_all(src.join("shared/sub")).unwrap();
    for (name, mode) in [("bin/su", 0o4755), ("bin/wall", 0o2755), ("bin/both", 0o6711), ("shared/sub/f", 0o644)] {
        fs::write(src.join(name), format!("{name} contents")).unwrap();
        fs::set_permissions(src.join(name), fs::Permissions::from_mode(mode)).unwrap();
    }
    fs::set_permissions(src.join("shared"), fs::Permissions::from_mode(0o2775)).unwrap();

    rig.start_agent_with(&["--reconcile-every-s", "1"]);
    rig.wait_ready();
    // Contents and kinds identical; modes differ on disk by design.
    let same = wait_until(SYNC_TIMEOUT, || {
        m.is_dir() && compare(&src, &m, CompareOptions { mode: false, mtime: false }).is_ok_and(|d| d.is_empty())
    });
    if !same {
        rig.fail("the mirror's contents never matched the source's");
    }
    // A setuid file written while the agent runs, by the real-time path.
    fs::write(src.join("bin/later"), b"later").unwrap();
    fs::set_permissions(src.join("bin/later"), fs::Permissions::from_mode(0o4750)).unwrap();
    if !wait_until(SYNC_TIMEOUT, || m.join("bin/later").exists()) {
        rig.fail("bin/later never reached the mirror");
    }
    // Settled: the agent acknowledged everything.
    rig.wait_agent("everything acknowledged", SYNC_TIMEOUT, |s| s.queue_depth == 0 && s.unacked_changes == 0);

    let store = rig.dir.path().join("store");
    let privileged: Vec<String> = scan(&store)
        .unwrap()
        .into_iter()
        .filter(|e| e.mode & 0o6000 != 0)
        .map(|e| format!("{} {:o}", e.rel.display(), e.mode))
        .collect();
    if !privileged.is_empty() {
        rig.fail(&format!("setuid/setgid entries in the receiver's store: {privileged:?}"));
    }

    // Reconciliations compare modes with the listing's: none sends a file
    // again. (Each sends the watched root, whose own mode no listing holds:
    // one op and one path per pass.)
    let log = rig.agent_log();
    let before = rig.agent().status();
    let queued_before = lifeline_tests::log_lines(&log, "reconciliation queued").len();
    rig.wait_agent("three more reconciliations", SYNC_TIMEOUT, |s| s.reconciliations >= before.reconciliations + 3);
    let after = rig.agent().status();
    let passes = after.reconciliations - before.reconciliations;
    let queued: Vec<String> = lifeline_tests::log_lines(&log, "reconciliation queued")
        .into_iter()
        .skip(queued_before)
        .filter(|l| !l.contains("queued 0 paths") && !l.contains("queued 1 paths"))
        .collect();
    if after.ops_sent - before.ops_sent > passes || !queued.is_empty() {
        rig.fail(&format!(
            "reconciliation sent setuid files again: {passes} passes sent {} ops; {queued:?}",
            after.ops_sent - before.ops_sent
        ));
    }
}

/// Sleeps until just after the next wall-clock second begins, so a short
/// burst fits within one second of mtime.
fn align_to_second() {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let into = Duration::from_nanos(u64::from(now.subsec_nanos()));
    std::thread::sleep(Duration::from_secs(1) - into + Duration::from_millis(5));
}

/// (e) Many same-size rewrites of one file within one second: the mirror
/// ends with the last one.
#[test]
fn same_size_overwrites_within_one_second_reach_mirror() {
    preflight(TOOLS);
    let mut rig = Rig::new("overwrite", ScratchFs::tmpfs(256));
    let hot = rig.src.join("hot.bin");
    fs::write(&hot, [0u8; 4096]).unwrap();
    rig.start_agent();
    rig.wait_ready();
    rig.assert_identical(SYNC_TIMEOUT, "before the burst");

    align_to_second();
    let start = Instant::now();
    let fd = OpenOptions::new().write(true).open(&hot).unwrap();
    for i in 0u32..200 {
        let block: Vec<u8> = (0..4096u32).map(|j| (i.wrapping_mul(31) ^ j.wrapping_mul(7)) as u8).collect();
        if i % 2 == 0 {
            fd.write_all_at(&block, 0).unwrap();
        } else {
            let mut f = OpenOptions::new().write(true).truncate(true).open(&hot).unwrap();
            f.write_all(&block).unwrap();
        }
    }
    drop(fd);
    let took = start.elapsed();
    assert!(took < Duration::from_millis(900), "the burst took {took:?}, not within one second");
    assert_eq!(fs::metadata(&hot).unwrap().len(), 4096);
    rig.assert_identical(Duration::from_secs(10), "after 200 same-size rewrites");
}

/// (f) A file kept open and written every 10 ms: while still open, the
/// mirror shows the newest content within a second.
#[test]
fn file_kept_open_is_replicated_within_one_second() {
    preflight(TOOLS);
    let mut rig = Rig::new("held-open", ScratchFs::ext4(256));
    rig.start_agent();
    rig.wait_ready();

    let path = rig.src.join("live.log");
    let published = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (path, published, stop) = (path.clone(), published.clone(), stop.clone());
        std::thread::spawn(move || {
            let f = OpenOptions::new().write(true).create_new(true).open(&path).unwrap();
            f.write_all_at(&header(0), 0).unwrap();
            let mut end = header(0).len() as u64;
            let mut seq = 0u64;
            while !stop.load(Ordering::SeqCst) {
                seq += 1;
                let line = line(seq);
                f.write_all_at(&line, end).unwrap();
                end += line.len() as u64;
                f.write_all_at(&header(seq), 0).unwrap(); // in place
                published.store(seq, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(10));
            }
            // The file stays open until here.
        })
    };

    std::thread::sleep(Duration::from_millis(500));
    let mirror = rig.receiver.mirror_of(&rig.machine, &path);
    for checkpoint in 0..4 {
        std::thread::sleep(Duration::from_millis(700));
        let seq = published.load(Ordering::SeqCst);
        let mut seen = None;
        let ok = wait_until(Duration::from_secs(1), || {
            let Ok(data) = fs::read(&mirror) else {
                return false;
            };
            let got = parse_header(&data);
            seen = got;
            got.is_some_and(|n| n >= seq) && contains(&data, &line(seq))
        });
        if !ok {
            stop.store(true, Ordering::SeqCst);
            rig.fail(&format!(
                "checkpoint {checkpoint}: 1 s after seq {seq} was written the mirror's header says {seen:?} \
                 (or line {seq} is missing)"
            ));
        }
    }
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    rig.assert_identical(Duration::from_secs(10), "after the writer closed the file");
}

fn header(seq: u64) -> Vec<u8> {
    format!("last={seq:010}\n").into_bytes()
}

fn line(seq: u64) -> Vec<u8> {
    format!("seq {seq:010}\n").into_bytes()
}

fn parse_header(data: &[u8]) -> Option<u64> {
    let h = data.get(..16)?;
    std::str::from_utf8(h.strip_prefix(b"last=")?.strip_suffix(b"\n")?).ok()?.parse().ok()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn header_round_trips() {
    assert_eq!(parse_header(&header(123)), Some(123));
    assert_eq!(header(1).len(), 16);
    assert!(contains(b"xx seq 0000000005\nyy", &line(5)));
}

/// Contiguous writes the kernel coalesces into one run, then a rename while
/// the file is still open and the run still absorbing writes: every byte
/// reaches the mirror under the new name, though the file is never closed.
#[test]
fn write_run_renamed_while_open_reaches_mirror() {
    preflight(TOOLS);
    let mut rig = Rig::new("runrename", ScratchFs::tmpfs(256));
    rig.start_agent();
    rig.wait_ready();
    let first = rig.src.join("growing.log");
    let second = rig.src.join("renamed.log");
    let mut f = OpenOptions::new().create(true).append(true).open(&first).unwrap();
    for i in 0..2000u32 {
        // 2000 contiguous appends: one run in the kernel, not 2000 records.
        f.write_all(format!("line {i:05} {}\n", "x".repeat(40)).as_bytes()).unwrap();
    }
    fs::rename(&first, &second).unwrap();
    f.write_all(b"after the rename\n").unwrap();
    rig.assert_identical(Duration::from_secs(5), "with the file still open");
    drop(f);
    let status = rig.agent().status();
    assert!(
        status.kernel_events < 1000,
        "2001 contiguous writes produced {} kernel records: runs are not coalesced",
        status.kernel_events
    );
}

/// Writes through a shared mapping bypass the write syscalls: the agent
/// watches a file mapped shared and writable, re-checks it when its mtime
/// moves (msync, writeback) and once more when the mapping goes away.
#[test]
fn writes_through_shared_mmap_reach_the_mirror_while_mapped_and_at_unmap() {
    preflight(TOOLS);
    let mut rig = Rig::new("mmap", ScratchFs::ext4(256));
    let path = rig.src.join("mapped.bin");
    let len = 64 * 1024;
    fs::write(&path, vec![b'a'; len]).unwrap();
    // No periodic reconciliation: only the mapping watcher can see these.
    rig.start_agent_with(&["--reconcile-every-s", "0"]);
    rig.wait_ready();
    rig.assert_identical(SYNC_TIMEOUT, "before mapping");
    let f = OpenOptions::new().read(true).write(true).open(&path).unwrap();
    unsafe {
        use std::os::fd::AsRawFd;
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        );
        assert_ne!(p, libc::MAP_FAILED, "mmap: {}", std::io::Error::last_os_error());
        let bytes = std::slice::from_raw_parts_mut(p as *mut u8, len);
        // Written and synced while the file stays mapped (and open).
        std::thread::sleep(Duration::from_millis(300));
        bytes[1000..1010].copy_from_slice(b"0123456789");
        assert_eq!(libc::msync(p, len, libc::MS_SYNC), 0);
        rig.assert_identical(Duration::from_secs(5), "after msync, still mapped");
        // Written and unmapped without msync.
        bytes[60_000] = b'z';
        libc::munmap(p, len);
    }
    drop(f);
    rig.assert_identical(Duration::from_secs(5), "after munmap");
}

/// Where eBPF cannot load (here: no privileges), the agent says so loudly
/// and replicates with the inotify watcher and periodic reconciliation.
#[test]
fn without_privileges_the_agent_falls_back_loudly_to_the_watcher() {
    preflight(TOOLS);
    let mut rig = Rig::new("noroot", ScratchFs::tmpfs(64));
    let nobody = (65534u32, 65534u32);
    let own = |p: &std::path::Path| std::os::unix::fs::chown(p, Some(nobody.0), Some(nobody.1)).unwrap();
    // The unprivileged agent must reach its files: open up our scratch
    // directories above the watched tree (never /tmp itself).
    for d in rig.src.ancestors().skip(1).take_while(|d| d.starts_with("/tmp/") && *d != std::path::Path::new("/tmp/")) {
        fs::set_permissions(d, fs::Permissions::from_mode(0o755)).unwrap();
    }
    fs::create_dir(rig.src.join("d")).unwrap();
    fs::write(rig.src.join("d/before.txt"), b"before the agent").unwrap();
    for p in [rig.src.clone(), rig.src.join("d"), rig.src.join("d/before.txt")] {
        own(&p);
    }
    let home = rig.fs.subdir("agent-home");
    let state = home.join("state");
    fs::create_dir(&state).unwrap();
    own(&home);
    own(&state);
    let (token, ca) = rig.receiver.credentials(&rig.machine);
    let (my_token, my_ca) = (home.join("agent.token"), home.join("ca.crt"));
    fs::copy(&token, &my_token).unwrap();
    fs::copy(&ca, &my_ca).unwrap();
    own(&my_token);
    let mut opts = rig.agent_opts();
    opts.state_dir = state;
    opts.token_file = my_token;
    opts.ca = my_ca;
    opts.run_as = Some(nobody);
    rig.start_agent_opts(opts);
    rig.wait_ready_capturing_with("notify");
    // `status` says why, in one line (the loader's or verifier's).
    let reason = rig.agent().status().fallback_reason.unwrap_or_default();
    assert!(
        reason.starts_with("eBPF unavailable: ") || reason.starts_with("eBPF refused: "),
        "no fallback reason in the status: {reason:?}"
    );
    assert!(!reason.contains('\n'), "{reason:?}");
    let text = rig.agent().ctl("status");
    assert!(
        text.contains(&format!("DEGRADED: inotify fallback, no byte ranges; {reason}")),
        "`status` does not say why the agent is degraded:\n{text}"
    );
    let log = fs::read_to_string(rig.agent_log()).unwrap();
    assert!(log.contains("FALLING BACK to the inotify watcher"), "no loud fallback message:\n{log}");
    rig.assert_identical(SYNC_TIMEOUT, "initial sync without privileges");
    fs::write(rig.src.join("d/after.txt"), b"written while watched").unwrap();
    fs::rename(rig.src.join("d/before.txt"), rig.src.join("d/renamed.txt")).unwrap();
    fs::create_dir(rig.src.join("new")).unwrap();
    fs::write(rig.src.join("new/f"), vec![7u8; 100_000]).unwrap();
    rig.assert_identical(SYNC_TIMEOUT, "changes seen by the watcher");
}

/// The real directories of `root` (itself included): what the inotify
/// fallback may watch, and no more.
fn real_dirs(root: &std::path::Path) -> usize {
    1 + lifeline_core::tree::scan(root).unwrap().iter().filter(|e| e.kind == lifeline_core::tree::Kind::Dir).count()
}

/// On the inotify fallback, symlinks to `/`, to the tree's parent, to the
/// root and to their own directory are replicated as symlinks, never
/// watched or walked through (the agent holds one watch per real
/// directory), also when a watched directory is replaced by one; SIGKILLed
/// and restarted with them in the tree, the agent starts and replicates.
/// `status` says the capture is degraded and why.
#[test]
fn notify_fallback_replicates_symlinks_as_symlinks_and_restarts_with_a_symlink_to_root() {
    preflight(TOOLS);
    let mut rig = Rig::new("notify-links", ScratchFs::tmpfs(64));
    let src = rig.src.clone();
    fs::create_dir_all(src.join("d/e")).unwrap();
    fs::write(src.join("d/e/f"), b"real").unwrap();
    symlink("/", src.join("slash")).unwrap();
    symlink("..", src.join("up")).unwrap();
    symlink(&src, src.join("d/root")).unwrap();
    symlink(".", src.join("d/e/self")).unwrap();
    rig.start_agent_with(&["--capture", "notify"]);
    rig.wait_ready_capturing_with("notify");
    rig.assert_identical(SYNC_TIMEOUT, "initial sync with symlinks to / and ancestors");
    for l in ["slash", "up", "d/root", "d/e/self"] {
        let md = fs::symlink_metadata(rig.mirror.join(l));
        if !md.as_ref().is_ok_and(|m| m.file_type().is_symlink()) {
            rig.fail(&format!("{l} is not a symlink in the mirror: {md:?}"));
        }
    }
    let watches = || inotify_watches(rig.agent().pid());
    if watches() != real_dirs(&src) {
        rig.fail(&format!("{} inotify watches for {} real directories", watches(), real_dirs(&src)));
    }

    // Live: a new symlink to /, a watched directory replaced by a symlink
    // to the tree's parent, a write beside them.
    symlink("/", src.join("d/slash2")).unwrap();
    fs::remove_dir_all(src.join("d/e")).unwrap();
    symlink("../..", src.join("d/e")).unwrap();
    fs::write(src.join("d/after"), b"written after").unwrap();
    rig.assert_identical(Duration::from_secs(10), "symlinks made while watched");
    if !wait_until(Duration::from_secs(2), || watches() == real_dirs(&src)) {
        rig.fail(&format!("{} inotify watches for {} real directories after the changes", watches(), real_dirs(&src)));
    }

    let s = rig.agent().status();
    assert_eq!(s.fallback_reason.as_deref(), Some("chosen with --capture notify"), "{s:?}");
    let text = rig.agent().ctl("status");
    assert!(
        text.contains(
            "capture:      notify (DEGRADED: inotify fallback, no byte ranges; chosen with --capture notify)"
        ),
        "`status` does not say plainly that capture is degraded and why:\n{text}"
    );

    // SIGKILLed and restarted with a symlink to / in the tree (it used to
    // try to watch /proc and exit).
    rig.agent_mut().restart();
    rig.wait_ready_capturing_with("notify");
    fs::write(src.join("d/after-restart"), b"written after the restart").unwrap();
    rig.assert_identical(Duration::from_secs(10), "a change after the restart");
    let watches = inotify_watches(rig.agent().pid());
    if watches != real_dirs(&src) {
        rig.fail(&format!("{watches} inotify watches for {} real directories after the restart", real_dirs(&src)));
    }
}

/// On the inotify fallback the automatic-backup switch works: `off` drops
/// every watch (counted in /proc) and nothing changed meanwhile reaches the
/// mirror, not even by the periodic reconciliation (every second here);
/// `on` watches the trees again, reconciles what changed while off, and
/// live changes flow again.
#[test]
fn notify_fallback_off_drops_the_watches_and_on_catches_up() {
    preflight(TOOLS);
    let mut rig = Rig::new("notify-onoff", ScratchFs::tmpfs(128));
    let src = rig.src.clone();
    fs::create_dir(src.join("dir")).unwrap();
    fs::write(src.join("modify.txt"), b"before").unwrap();
    fs::write(src.join("delete.txt"), b"doomed").unwrap();
    rig.start_agent_with(&["--capture", "notify", "--reconcile-every-s", "1"]);
    rig.wait_ready_capturing_with("notify");
    rig.assert_identical(SYNC_TIMEOUT, "before off");
    let watches = || inotify_watches(rig.agent().pid());
    assert_eq!(watches(), 2, "src and dir watched");

    let out = rig.agent().ctl("off");
    assert!(out.contains("automatic backup is off"), "{out}");
    if !wait_until(Duration::from_secs(2), || watches() == 0) {
        rig.fail(&format!("after `off` the agent still holds {} inotify watches", watches()));
    }
    assert_eq!(rig.agent().status().capture, "off");
    let before = rig.agent().status().reconciliations;
    fs::write(src.join("new.txt"), b"created while off").unwrap();
    fs::write(src.join("modify.txt"), b"after, and longer").unwrap();
    fs::remove_file(src.join("delete.txt")).unwrap();
    fs::create_dir(src.join("newdir")).unwrap();
    fs::write(src.join("newdir/inner.txt"), b"inner").unwrap();
    // Past two periodic ticks.
    std::thread::sleep(Duration::from_millis(2500));
    let m = &rig.mirror;
    let leaked = m.join("new.txt").exists()
        || fs::read(m.join("modify.txt")).ok().as_deref() != Some(b"before".as_slice())
        || !m.join("delete.txt").exists()
        || m.join("newdir").exists();
    if leaked {
        rig.fail(&format!("changes made while off reached the mirror: {:?}", differences(&src, m)));
    }
    let s = rig.agent().status();
    if s.reconciliations != before {
        rig.fail(&format!("{} reconciliations ran while off", s.reconciliations - before));
    }

    let out = rig.agent().ctl("on");
    assert!(out.contains("automatic backup is on"), "{out}");
    rig.agent().wait_status("capture back on", Duration::from_secs(5), |s| s.capture == "notify");
    if !wait_until(Duration::from_secs(2), || watches() == 3) {
        rig.fail(&format!("after `on` the agent holds {} inotify watches, not 3", watches()));
    }
    rig.assert_identical(Duration::from_secs(10), "after `on`");
    fs::write(src.join("newdir/after-on.txt"), b"live again").unwrap();
    fs::write(src.join("modify.txt"), b"changed after on").unwrap();
    rig.assert_identical(Duration::from_secs(5), "a change after `on`");
}

/// Reconciliation alone (the fallback switched off: no watches, passes run
/// by `sync` only) while another thread keeps changing the kinds of names
/// (file <-> directory <-> symlink to `/` or `..`), renaming directories
/// that are being listed and deleting trees: every pass completes (none
/// fails), and once the tree is still, one more brings the mirror to it.
#[test]
fn reconciliation_racing_type_changes_renames_and_deletions_completes_and_converges() {
    use rand::{Rng, SeedableRng};
    preflight(TOOLS);
    let mut rig = Rig::new("recon-race", ScratchFs::tmpfs(256));
    let src = rig.src.clone();
    // Enough to list that a pass takes a while: 40 directories of 25 files.
    for d in 0..40 {
        fs::create_dir(src.join(format!("d{d}"))).unwrap();
        for f in 0..25 {
            fs::write(src.join(format!("d{d}/f{f}")), vec![b'x'; 100]).unwrap();
        }
    }
    rig.start_agent_with(&["--capture", "notify", "--reconcile-every-s", "0"]);
    rig.wait_ready_capturing_with("notify");
    rig.assert_identical(SYNC_TIMEOUT, "before the race");
    rig.agent().ctl("off");
    let before = rig.agent().status().reconciliations;
    let stop = Arc::new(AtomicBool::new(false));
    let changes = Arc::new(AtomicU64::new(0));
    let racer = {
        let (src, stop, changes) = (src.clone(), stop.clone(), changes.clone());
        std::thread::spawn(move || {
            let mut rng = rand::rngs::StdRng::seed_from_u64(0x21_0004);
            let clear = |p: &std::path::Path| match fs::symlink_metadata(p) {
                Ok(m) if m.is_dir() => drop(fs::remove_dir_all(p)),
                Ok(_) => drop(fs::remove_file(p)),
                Err(_) => {}
            };
            while !stop.load(Ordering::Relaxed) {
                let p = src.join(format!("d{}", rng.random_range(0..40)));
                let q = src.join(format!("d{}", rng.random_range(0..40)));
                let _ = match rng.random_range(0..5) {
                    0 => {
                        clear(&p);
                        fs::write(&p, b"a file now")
                    }
                    1 => {
                        clear(&p);
                        symlink(if rng.random_bool(0.5) { "/" } else { ".." }, &p)
                    }
                    2 => {
                        clear(&p);
                        fs::create_dir(&p)
                            .and_then(|_| (0..25).try_for_each(|f| fs::write(p.join(format!("f{f}")), b"again")))
                    }
                    3 => fs::rename(&p, &q),
                    _ => {
                        clear(&p);
                        Ok(())
                    }
                };
                changes.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(rng.random_range(0..3)));
            }
        })
    };
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(4) {
        rig.agent().ctl("sync");
        std::thread::sleep(Duration::from_millis(150));
    }
    stop.store(true, Ordering::Relaxed);
    racer.join().unwrap();
    let racing = rig.agent().status().reconciliations - before;
    let log = rig.agent_log();
    let failed: Vec<String> = fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("reconciliation failed"))
        .map(str::to_string)
        .collect();
    if !failed.is_empty() {
        rig.fail(&format!("reconciliation passes failed while the tree changed:\n{}", failed.join("\n")));
    }
    if racing < 5 {
        rig.fail(&format!("only {racing} passes completed in 4 s of `sync` while the tree changed"));
    }
    let done = rig.agent().status().reconciliations;
    let t = Instant::now();
    rig.agent().ctl("sync");
    rig.agent().wait_status("a pass after the race", Duration::from_secs(10), |s| s.reconciliations > done);
    rig.assert_identical(Duration::from_secs(10), "after the race, one `sync`");
    let raced: u64 = fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("changed while being compared"))
        .filter_map(|l| l.split_whitespace().find_map(|w| w.parse::<u64>().ok()))
        .sum();
    eprintln!(
        "RECONCILE race: {} changes in 4 s, {racing} passes completed meanwhile, {raced} directories raced, \
         none failed; identical {:.2} s after the last `sync`",
        changes.load(Ordering::Relaxed),
        t.elapsed().as_secs_f64()
    );
}
