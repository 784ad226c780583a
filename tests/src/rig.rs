//! The end-to-end rig: one test's receiver and agent replicating a source
//! tree on a scratch filesystem, and the mirror to compare it with.
//!
//! ```no_run
//! use lifeline_tests::{preflight, Rig, ScratchFs};
//! preflight(&["bpftool", "lifeline-receiver", "lifeline-agent"]);
//! let mut rig = Rig::new("example", ScratchFs::tmpfs(256));
//! std::fs::write(rig.src.join("f"), b"x").unwrap();
//! rig.start_agent();
//! rig.wait_ready();
//! rig.assert_identical(std::time::Duration::from_secs(30), "a new file");
//! ```
//!
//! [`RigOpts`] chooses the rest: the receiver in a network namespace of the
//! test's own ([`NetNs`], a link the test can cut) instead of on loopback,
//! extra environment for the receiver and for the agent, arguments every
//! agent start gets, and how long readiness may take.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::{
    attached_tracepoint_programs, log_lines, summarize, wait_identical, wait_until, Agent, AgentOpts, AgentStatus,
    NetNs, Receiver, ReceiverOpts, ScratchFs, TestDir,
};

/// How many log lines a failure shows of each daemon.
const LOG_LINES: usize = 80;

/// How to build a [`Rig`].
pub struct RigOpts {
    name: String,
    fs: ScratchFs,
    netns: bool,
    receiver_env: Vec<(String, String)>,
    agent_env: Vec<(String, String)>,
    agent_args: Vec<String>,
    sync_timeout: Duration,
}

impl RigOpts {
    /// The rig `name` (its scratch directory and machine name) watching
    /// `<fs>/src`; receiver on 127.0.0.1, no extra environment or agent
    /// arguments, 30 s for the agent to be ready.
    pub fn new(name: &str, fs: ScratchFs) -> RigOpts {
        RigOpts {
            name: name.to_string(),
            fs,
            netns: false,
            receiver_env: Vec::new(),
            agent_env: Vec::new(),
            agent_args: Vec::new(),
            sync_timeout: Duration::from_secs(30),
        }
    }

    /// Runs the receiver in a network namespace of its own ([`NetNs`]); the
    /// agent connects from the root namespace over the veth pair.
    pub fn netns(mut self) -> RigOpts {
        self.netns = true;
        self
    }

    /// An environment variable for the receiver (e.g. a fault-injection
    /// hook).
    pub fn receiver_env(mut self, key: &str, value: &str) -> RigOpts {
        self.receiver_env.push((key.to_string(), value.to_string()));
        self
    }

    /// An environment variable for every start of the agent.
    pub fn agent_env(mut self, key: &str, value: &str) -> RigOpts {
        self.agent_env.push((key.to_string(), value.to_string()));
        self
    }

    /// Arguments every start of the agent gets (after the ones the rig
    /// sets). A `--capture MODE` among them is the capture
    /// [`Rig::wait_ready`] expects.
    pub fn agent_args(mut self, args: &[&str]) -> RigOpts {
        self.agent_args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// How long [`Rig::wait_ready`] waits (default 30 s).
    pub fn sync_timeout(mut self, timeout: Duration) -> RigOpts {
        self.sync_timeout = timeout;
        self
    }

    /// Mounted filesystem, source directory and running receiver; no agent
    /// yet (fill the tree first, or plant files in the mirror, then
    /// [`Rig::start_agent`]).
    pub fn build(self) -> Rig {
        let dir = TestDir::new(&self.name);
        let src = self.fs.subdir("src");
        let netns = self.netns.then(NetNs::new);
        let mut ro = ReceiverOpts::new(&dir.path().join("store"));
        ro.log = dir.path().join("receiver.log");
        if let Some(ns) = &netns {
            ro.host = ns.inner_addr();
            ro.netns = Some(ns.name().to_string());
        }
        ro.env = self.receiver_env;
        let receiver = Receiver::start_opts(ro);
        let machine = format!("{}-{}", self.name, std::process::id());
        // Registered now: a test may plant files in its mirror before the
        // agent starts, and the receiver refuses to register a name that
        // already has data (it would inherit a removed machine's).
        receiver.credentials(&machine);
        let mirror = receiver.mirror_of(&machine, &src);
        Rig {
            agent: None,
            receiver,
            netns,
            fs: self.fs,
            dir,
            machine,
            src,
            mirror,
            agent_env: self.agent_env,
            agent_args: self.agent_args,
            sync_timeout: self.sync_timeout,
        }
    }
}

/// One test's world. Fields drop in order: agent, receiver, network
/// namespace, filesystem, scratch directory (kept if the test fails).
pub struct Rig {
    /// Started by [`Rig::start_agent`] and its variants.
    pub agent: Option<Agent>,
    /// Store and log in `dir`.
    pub receiver: Receiver,
    /// Where the receiver runs, with [`RigOpts::netns`].
    pub netns: Option<NetNs>,
    pub fs: ScratchFs,
    /// Receiver store, agent state directory and both logs.
    pub dir: TestDir,
    /// `<name>-<pid>`.
    pub machine: String,
    /// The watched tree, `<fs>/src`.
    pub src: PathBuf,
    /// Where the receiver keeps `src`.
    pub mirror: PathBuf,
    agent_env: Vec<(String, String)>,
    agent_args: Vec<String>,
    sync_timeout: Duration,
}

impl Rig {
    /// [`RigOpts::new`]`(name, fs).build()`: the receiver on loopback.
    pub fn new(name: &str, fs: ScratchFs) -> Rig {
        RigOpts::new(name, fs).build()
    }

    /// The options the rig starts its agent with: `src` watched, state in
    /// `<dir>/state`, log `<dir>/agent.log`, the rig's agent arguments and
    /// environment.
    pub fn agent_opts(&self) -> AgentOpts {
        let mut opts = AgentOpts::new(&self.receiver, &self.machine, &[&self.src], &self.dir.path().join("state"));
        opts.log = Some(self.agent_log());
        opts.extra_args = self.agent_args.clone();
        opts.env = self.agent_env.clone();
        opts
    }

    /// Starts the agent with [`Rig::agent_opts`].
    pub fn start_agent(&mut self) -> &Agent {
        self.start_agent_with(&[])
    }

    /// Starts the agent with [`Rig::agent_opts`] and `args` after the rig's
    /// agent arguments.
    pub fn start_agent_with(&mut self, args: &[&str]) -> &Agent {
        let mut opts = self.agent_opts();
        opts.extra_args.extend(args.iter().map(|a| a.to_string()));
        self.start_agent_opts(opts)
    }

    /// Starts the agent with `opts` (e.g. [`Rig::agent_opts`], changed).
    pub fn start_agent_opts(&mut self, opts: AgentOpts) -> &Agent {
        self.agent = Some(Agent::start(opts));
        self.agent()
    }

    pub fn agent(&self) -> &Agent {
        self.agent.as_ref().expect("agent started")
    }

    pub fn agent_mut(&mut self) -> &mut Agent {
        self.agent.as_mut().expect("agent started")
    }

    /// `<dir>/agent.log`.
    pub fn agent_log(&self) -> PathBuf {
        self.dir.path().join("agent.log")
    }

    /// The capture the agent was asked for (`--capture MODE` in its
    /// arguments), else `"ebpf"`.
    fn expected_capture(&self) -> String {
        let args = self.agent.as_ref().map_or(&self.agent_args, |a| &a.opts().extra_args);
        args.iter()
            .position(|a| a == "--capture")
            .and_then(|i| args.get(i + 1))
            .cloned()
            .unwrap_or_else(|| "ebpf".to_string())
    }

    /// Waits until the agent is connected, its initial sync done, capturing
    /// as it was asked to (eBPF unless `--capture` says otherwise).
    pub fn wait_ready(&self) -> AgentStatus {
        self.wait_ready_capturing_with(&self.expected_capture())
    }

    /// Waits until the agent is connected and its initial sync done, and
    /// fails unless it captures with `capture` ("ebpf", "notify").
    pub fn wait_ready_capturing_with(&self, capture: &str) -> AgentStatus {
        let s = self
            .agent()
            .wait_status("connected, initial sync done", self.sync_timeout, |s| s.connected && s.initial_sync_done);
        if s.capture != capture {
            self.fail(&format!("agent captures with {:?}, not {capture:?}", s.capture));
        }
        s
    }

    /// Polls the agent's status until `pred` holds; fails the test (with
    /// both logs) after `timeout`.
    pub fn wait_agent(&self, what: &str, timeout: Duration, mut pred: impl FnMut(&AgentStatus) -> bool) -> AgentStatus {
        let mut last = None;
        let ok = wait_until(timeout, || match self.agent().try_status() {
            Ok(s) => {
                let done = pred(&s);
                last = Some(s);
                done
            }
            Err(_) => false,
        });
        if !ok {
            self.fail(&format!("{what}: not reached within {timeout:?}; last status {last:?}"));
        }
        last.expect("a status when reached")
    }

    /// Panics with `msg`, the agent's status and the tails of both logs.
    pub fn fail(&self, msg: &str) -> ! {
        let mut out = format!("[{} on {}] {msg}\n", self.machine, self.fs.kind());
        if let Some(a) = &self.agent {
            out.push_str(&format!("agent status: {:?}\n", a.try_status_json()));
            out.push_str(&a.log_tail(LOG_LINES));
            out.push('\n');
        }
        out.push_str(&self.receiver.log_tail(LOG_LINES));
        panic!("{out}");
    }

    /// Waits until the mirror is identical to the source, failing the test
    /// after `within`; returns how long that took.
    pub fn assert_identical(&self, within: Duration, what: &str) -> Duration {
        let t = Instant::now();
        if let Err(d) = wait_identical(&self.src, &self.mirror, within) {
            self.fail(&format!(
                "{what}: mirror {} not identical to {} after {within:?}; {} differences:\n{}",
                self.mirror.display(),
                self.src.display(),
                d.len(),
                summarize(&d, 40)
            ));
        }
        t.elapsed()
    }

    /// The `n`-th (0-based) line of `log` containing `needle`, waiting up to
    /// `timeout` for it to be written.
    pub fn nth_log_line(&self, log: &Path, needle: &str, n: usize, timeout: Duration) -> String {
        let mut found = None;
        wait_until(timeout, || {
            found = log_lines(log, needle).into_iter().nth(n);
            found.is_some()
        });
        found.unwrap_or_else(|| {
            self.fail(&format!("{}: no line #{} with {needle:?} within {timeout:?}", log.display(), n + 1))
        })
    }

    /// Runs `lifeline-receiver --store STORE ARGS...` on the rig's store;
    /// fails the test unless it succeeds. Its output, stdout then stderr.
    pub fn receiver_cli(&self, args: &[&str]) -> String {
        let out = std::process::Command::new(crate::bin_path("lifeline-receiver"))
            .arg("--store")
            .arg(self.receiver.store())
            .args(args)
            .output()
            .unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        if !out.status.success() {
            self.fail(&format!("lifeline-receiver {args:?}: {text}"));
        }
        text
    }

    /// `lifeline-receiver history restore` of the machine's `path` as of
    /// `at` into `to` (which gets `to/<path>`); its output.
    pub fn history_restore(&self, at: &str, path: &Path, to: &Path) -> String {
        let (path, to) = (path.to_str().unwrap(), to.to_str().unwrap());
        let args = ["history", "restore", "--machine", &self.machine, "--as-of", at, "--path", path, "--to", to];
        let printed = self.receiver_cli(&args);
        assert!(printed.contains("restored"), "{printed}");
        printed
    }

    /// The eBPF programs the agent holds attached to tracepoints.
    pub fn attached(&self) -> usize {
        attached_tracepoint_programs(self.agent().pid())
    }

    /// The agent's control socket, as `--control` takes it.
    pub fn control(&self) -> String {
        self.agent().control_path().display().to_string()
    }
}
