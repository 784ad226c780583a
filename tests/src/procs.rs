//! Running `lifeline-receiver` and `lifeline-agent` as child processes.

use std::fs;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::{bin_path, tail};

/// How many log lines the failure messages show.
const LOG_LINES: usize = 60;

/// Starts `cmd` with its output appended to `log`, without colours, as a
/// child that is killed on drop.
pub(crate) fn spawn_logged(cmd: &mut Command, log: &Path) -> Killed {
    if let Some(dir) = log.parent() {
        fs::create_dir_all(dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
    }
    let f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap_or_else(|e| panic!("open log {}: {e}", log.display()));
    let g = f.try_clone().expect("dup log fd");
    let child = cmd
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::from(f))
        .stderr(Stdio::from(g))
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {:?}: {e}", cmd.get_program()));
    Killed(child)
}

/// A child process that is SIGKILLed and reaped on drop.
pub(crate) struct Killed(Child);

impl Killed {
    pub(crate) fn id(&self) -> u32 {
        self.0.id()
    }

    pub(crate) fn is_running(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(None))
    }

    /// How the process ended, if it has (reaping it).
    pub(crate) fn exit_status(&mut self) -> Option<ExitStatus> {
        self.0.try_wait().ok().flatten()
    }

    pub(crate) fn kill(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill(); // SIGKILL
        }
        let _ = self.0.wait();
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

/// How to start `lifeline-receiver`.
#[derive(Clone, Debug)]
pub struct ReceiverOpts {
    pub store: PathBuf,
    /// Where stdout and stderr go (appended, also across restarts).
    pub log: PathBuf,
    /// The address to listen on (default 127.0.0.1); the harness connects to
    /// it to see the receiver ready.
    pub host: IpAddr,
    /// The port; `None` picks a free one (another one if it is taken before
    /// the receiver binds it).
    pub port: Option<u16>,
    /// Run the receiver inside this network namespace (`ip netns exec NS`,
    /// which execs it: the child's pid is the receiver's).
    pub netns: Option<String>,
    /// Extra environment variables (e.g. fault-injection hooks).
    pub env: Vec<(String, String)>,
}

impl ReceiverOpts {
    /// 127.0.0.1 on a free port, log at `<store>.receiver.log` (beside the
    /// store).
    pub fn new(store: &Path) -> ReceiverOpts {
        let mut log = store.as_os_str().to_owned();
        log.push(".receiver.log");
        ReceiverOpts {
            store: store.to_path_buf(),
            log: PathBuf::from(log),
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: None,
            netns: None,
            env: Vec::new(),
        }
    }
}

/// A running `lifeline-receiver --listen HOST:PORT --store DIR`; killed on
/// drop.
pub struct Receiver {
    child: Killed,
    port: u16,
    opts: ReceiverOpts,
}

impl Receiver {
    /// Starts a receiver on a free port with its log at
    /// `<store>.receiver.log` (beside the store).
    pub fn start(store: &Path) -> Receiver {
        Receiver::start_opts(ReceiverOpts::new(store))
    }

    /// Starts a receiver on a free port and waits until the port accepts
    /// connections. A receiver that exits while starting (another process
    /// took the port in between) is retried on another port.
    pub fn start_with_log(store: &Path, log: &Path) -> Receiver {
        let mut opts = ReceiverOpts::new(store);
        opts.log = log.to_path_buf();
        Receiver::start_opts(opts)
    }

    /// Starts a receiver as `opts` say and waits until its port accepts
    /// connections. Without a fixed port, a receiver that exits while
    /// starting (another process took the port in between) is retried on
    /// another port; with one, it is retried on the same port for a few
    /// seconds.
    pub fn start_opts(opts: ReceiverOpts) -> Receiver {
        fs::create_dir_all(&opts.store).unwrap_or_else(|e| panic!("mkdir {}: {e}", opts.store.display()));
        let mut last_failure = String::new();
        for attempt in 0..10 {
            if opts.port.is_none() && attempt >= 5 {
                break;
            }
            if opts.port.is_some() && attempt > 0 {
                std::thread::sleep(Duration::from_millis(500));
            }
            let port = opts.port.unwrap_or_else(free_port);
            let child = Receiver::spawn(&opts, port);
            let mut r = Receiver { child, port, opts: opts.clone() };
            match r.wait_accepting() {
                Ok(()) => return r,
                Err(e) => last_failure = e,
            }
        }
        panic!("{last_failure}\n--- {} ---\n{}", opts.log.display(), tail(&opts.log, LOG_LINES));
    }

    fn spawn(opts: &ReceiverOpts, port: u16) -> Killed {
        let exe = bin_path("lifeline-receiver");
        let mut cmd = match &opts.netns {
            Some(ns) => {
                let mut c = Command::new(crate::require_tool("ip"));
                c.args(["netns", "exec", ns]).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        cmd.arg("--listen").arg(SocketAddr::new(opts.host, port).to_string()).arg("--store").arg(&opts.store);
        if !opts.host.is_loopback() {
            // The generated server certificate must name the address agents
            // connect to.
            cmd.arg("--tls-name").arg(opts.host.to_string());
        }
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        spawn_logged(&mut cmd, &opts.log)
    }

    /// Waits until the port accepts connections; Err if the receiver exits
    /// first. Panics (with the log) after 30 s.
    fn wait_accepting(&mut self) -> Result<(), String> {
        let addr = SocketAddr::new(self.opts.host, self.port);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.exit_status() {
                return Err(format!("receiver exited while starting on {addr}: {status}"));
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                panic!("receiver did not accept connections on {addr} within 30 s\n{}", self.log_tail(LOG_LINES));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILLs the receiver if it still runs, and starts it again with the
    /// same options on the same port (same store, same log), with `env`
    /// instead of the environment it had.
    pub fn restart_with_env(&mut self, env: Vec<(String, String)>) {
        self.child.kill();
        let mut opts = self.opts.clone();
        opts.port = Some(self.port);
        opts.env = env;
        *self = Receiver::start_opts(opts);
    }

    /// SIGKILLs the receiver if it still runs, and starts it again on the
    /// same port, store and log.
    pub fn restart(&mut self) {
        self.restart_with_env(self.opts.env.clone());
    }

    pub fn opts(&self) -> &ReceiverOpts {
        &self.opts
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `https://HOST:PORT`, what `lifeline-agent run --receiver` takes.
    pub fn url(&self) -> String {
        format!("https://{}", SocketAddr::new(self.opts.host, self.port))
    }

    /// Where the credentials this receiver issued are written.
    pub fn credentials_dir(&self) -> PathBuf {
        let mut d = self.opts.store.as_os_str().to_owned();
        d.push(".credentials");
        PathBuf::from(d)
    }

    /// The credential file of `machine` and the receiver's CA certificate,
    /// registering the machine (`lifeline-receiver machine add`) the first
    /// time.
    pub fn credentials(&self, machine: &str) -> (PathBuf, PathBuf) {
        let dir = self.credentials_dir();
        let token = dir.join(format!("{machine}.token"));
        if !token.exists() {
            let out = Command::new(bin_path("lifeline-receiver"))
                .args(["machine", "add", machine, "--store"])
                .arg(&self.opts.store)
                .arg("--out")
                .arg(&dir)
                .output()
                .expect("run lifeline-receiver machine add");
            assert!(
                out.status.success(),
                "lifeline-receiver machine add {machine} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        (token, dir.join("ca.crt"))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn store(&self) -> &Path {
        &self.opts.store
    }

    /// `<store>/mirror/<machine>`.
    pub fn machine_root(&self, machine: &str) -> PathBuf {
        self.opts.store.join("mirror").join(machine)
    }

    /// Where the receiver keeps machine `machine`'s copy of the absolute
    /// path `src`: `<store>/mirror/<machine>/<src without its leading />`.
    pub fn mirror_of(&self, machine: &str, src: &Path) -> PathBuf {
        let rel = src.strip_prefix("/").unwrap_or_else(|_| panic!("{} is not absolute", src.display()));
        self.machine_root(machine).join(rel)
    }

    pub fn log_path(&self) -> &Path {
        &self.opts.log
    }

    /// The last `n` lines of the log, headed by its path.
    pub fn log_tail(&self, n: usize) -> String {
        format!("--- receiver log {} ---\n{}", self.opts.log.display(), tail(&self.opts.log, n))
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.is_running()
    }

    /// How the process ended, if it has.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.exit_status()
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        self.child.kill();
    }
}

/// How to start `lifeline-agent run`.
#[derive(Clone, Debug)]
pub struct AgentOpts {
    /// `--receiver`, e.g. [`Receiver::url`].
    pub receiver: String,
    pub machine: String,
    /// `--token-file` and `--ca` (issued by the receiver in `new`).
    pub token_file: PathBuf,
    pub ca: PathBuf,
    pub watch: Vec<PathBuf>,
    pub state_dir: PathBuf,
    /// `--interval-ms`, if set.
    pub interval_ms: Option<u64>,
    /// `--control`; `None` leaves the agent's default `<state_dir>/control.sock`.
    pub control: Option<PathBuf>,
    /// Where stdout and stderr go; default `<state_dir>/agent.log`.
    pub log: Option<PathBuf>,
    /// Extra arguments after the ones above.
    pub extra_args: Vec<String>,
    /// Run as this (uid, gid) instead of root.
    pub run_as: Option<(u32, u32)>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// How long `start` waits for `status --json` to answer.
    pub start_timeout: Duration,
}

impl AgentOpts {
    /// Options with `--interval-ms 5`, the default control socket and log,
    /// and a credential for `machine` from `receiver` (registered if new).
    pub fn new(receiver: &Receiver, machine: &str, watch: &[&Path], state_dir: &Path) -> AgentOpts {
        let (token_file, ca) = receiver.credentials(machine);
        AgentOpts {
            receiver: receiver.url(),
            machine: machine.to_string(),
            token_file,
            ca,
            watch: watch.iter().map(|p| p.to_path_buf()).collect(),
            state_dir: state_dir.to_path_buf(),
            interval_ms: Some(5),
            control: None,
            log: None,
            extra_args: Vec::new(),
            run_as: None,
            env: Vec::new(),
            start_timeout: Duration::from_secs(30),
        }
    }
}

/// What `lifeline-agent status --json` prints.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct AgentStatus {
    pub connected: bool,
    /// `"ebpf"`, `"off"` or `"notify"`.
    pub capture: String,
    pub queue_depth: u64,
    pub lag_ms: u64,
    pub bytes_sent: u64,
    pub ops_sent: u64,
    pub acked_seq: u64,
    pub last_error: Option<String>,
    pub initial_sync_done: bool,
    /// Records the kernel delivered for the watched trees.
    pub kernel_events: u64,
    /// Records lost (ring buffer full).
    pub kernel_lost: u64,
    /// Reconciliations run.
    #[serde(default)]
    pub reconciliations: u64,
    /// Times the queue log was replayed (once per connection).
    #[serde(default)]
    pub replays: u64,
    /// Changes in the queue log not yet acknowledged.
    #[serde(default)]
    pub unacked_changes: u64,
    /// Bytes the queue log takes on disk.
    #[serde(default)]
    pub queue_log_bytes: u64,
    /// Sending held by `pause` (capture and queueing go on).
    #[serde(default)]
    pub paused: bool,
    /// Bytes sent since local midnight.
    #[serde(default)]
    pub bytes_sent_today: u64,
    /// Why the agent runs on the inotify fallback (absent with eBPF).
    #[serde(default)]
    pub fallback_reason: Option<String>,
}

/// A running `lifeline-agent run`; SIGKILLed on drop.
pub struct Agent {
    child: Killed,
    opts: AgentOpts,
    control: PathBuf,
    log: PathBuf,
}

impl Agent {
    /// Spawns the agent and waits until `status --json` answers with a
    /// status object; panics (with the log) if the agent exits or does not
    /// answer within `opts.start_timeout`.
    pub fn start(opts: AgentOpts) -> Agent {
        let exe = bin_path("lifeline-agent");
        fs::create_dir_all(&opts.state_dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", opts.state_dir.display()));
        let control = opts.control.clone().unwrap_or_else(|| opts.state_dir.join("control.sock"));
        let log = opts.log.clone().unwrap_or_else(|| opts.state_dir.join("agent.log"));
        let mut cmd = Command::new(&exe);
        cmd.arg("run")
            .arg("--receiver")
            .arg(&opts.receiver)
            .arg("--machine")
            .arg(&opts.machine)
            .arg("--token-file")
            .arg(&opts.token_file)
            .arg("--ca")
            .arg(&opts.ca);
        for w in &opts.watch {
            cmd.arg("--watch").arg(w);
        }
        cmd.arg("--state-dir").arg(&opts.state_dir);
        if let Some(ms) = opts.interval_ms {
            cmd.arg("--interval-ms").arg(ms.to_string());
        }
        if let Some(c) = &opts.control {
            cmd.arg("--control").arg(c);
        }
        cmd.args(&opts.extra_args);
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        if let Some((uid, gid)) = opts.run_as {
            use std::os::unix::process::CommandExt;
            cmd.uid(uid).gid(gid);
        }
        let child = spawn_logged(&mut cmd, &log);
        let mut agent = Agent { child, opts, control, log };
        let deadline = Instant::now() + agent.opts.start_timeout;
        loop {
            if let Ok(Some(status)) = agent.child.0.try_wait() {
                panic!("agent exited while starting: {status}\n{}", agent.log_tail(LOG_LINES));
            }
            let last = match agent.try_status() {
                Ok(_) => return agent,
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                panic!(
                    "agent did not answer `status --json` within {:?}: {last}\n{}",
                    agent.opts.start_timeout,
                    agent.log_tail(LOG_LINES)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn opts(&self) -> &AgentOpts {
        &self.opts
    }

    pub fn control_path(&self) -> &Path {
        &self.control
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last `n` lines of the log, headed by its path.
    pub fn log_tail(&self, n: usize) -> String {
        format!("--- agent log {} ---\n{}", self.log.display(), tail(&self.log, n))
    }

    fn cli(&self, args: &[&str]) -> Output {
        let exe = bin_path("lifeline-agent");
        Command::new(&exe)
            .args(args)
            .arg("--control")
            .arg(&self.control)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", exe.display()))
    }

    /// `lifeline-agent status --json` parsed as JSON, or why not.
    pub fn try_status_json(&self) -> Result<serde_json::Value, String> {
        let out = self.cli(&["status", "--json"]);
        if !out.status.success() {
            return Err(format!(
                "`status --json` failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        serde_json::from_slice(&out.stdout).map_err(|e| {
            format!("`status --json` printed no JSON object ({e}): {:?}", String::from_utf8_lossy(&out.stdout))
        })
    }

    /// `lifeline-agent status --json` as [`AgentStatus`], or why not.
    pub fn try_status(&self) -> Result<AgentStatus, String> {
        let v = self.try_status_json()?;
        serde_json::from_value(v.clone())
            .map_err(|e| format!("`status --json` does not match the documented fields ({e}): {v}"))
    }

    /// The raw status object; panics if the agent does not answer.
    pub fn status_json(&self) -> serde_json::Value {
        self.try_status_json().unwrap_or_else(|e| panic!("{e}\n{}", self.log_tail(LOG_LINES)))
    }

    /// The status; panics if the agent does not answer.
    pub fn status(&self) -> AgentStatus {
        self.try_status().unwrap_or_else(|e| panic!("{e}\n{}", self.log_tail(LOG_LINES)))
    }

    /// Polls the status until `pred` holds; returns the last status, or
    /// panics with it after `timeout`.
    pub fn wait_status(
        &self,
        what: &str,
        timeout: Duration,
        mut pred: impl FnMut(&AgentStatus) -> bool,
    ) -> AgentStatus {
        let deadline = Instant::now() + timeout;
        loop {
            let last = self.try_status();
            if let Ok(s) = &last {
                if pred(s) {
                    return s.clone();
                }
            }
            if Instant::now() >= deadline {
                panic!(
                    "agent: {what}: not reached within {timeout:?}; last status: {last:?}\n{}",
                    self.log_tail(LOG_LINES)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs `lifeline-agent <cmd> --control SOCK` (`on`, `off`, `sync`) and
    /// panics unless it succeeds; returns its stdout.
    pub fn ctl(&self, cmd: &str) -> String {
        let out = self.cli(&[cmd]);
        assert!(
            out.status.success(),
            "`lifeline-agent {cmd}` failed ({}): {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            self.log_tail(LOG_LINES)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.is_running()
    }

    /// How the process ended, if it has.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.exit_status()
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        self.child.kill();
    }

    /// SIGKILLs the agent if it still runs and starts it again with the same
    /// options (same state directory: it replays its queue log); waits as
    /// [`Agent::start`] does.
    pub fn restart(&mut self) {
        self.child.kill();
        *self = Agent::start(self.opts.clone());
    }
}
