//! The web console's tests: a real receiver serving its console over HTTPS
//! on loopback, and the Python programs that drive it (Playwright with
//! Debian's Chromium in `tests/console/flow.py`, plain HTTPS clients in
//! `tests/console/load.py`).

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::{wait_until, Receiver, ReceiverOpts};

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ is inside the workspace").to_path_buf()
}

/// A receiver with its console, on a new store.
pub struct Console {
    pub receiver: Receiver,
    pub addr: SocketAddr,
    pub store: PathBuf,
}

impl Console {
    /// Starts a receiver on `store` (new) with its console on a free
    /// loopback port, and waits until the console answers and the first
    /// admin's password is written.
    pub fn start(store: &Path) -> Console {
        Console::start_with(store, Vec::new())
    }

    /// Like [`Console::start`], with more environment for the receiver
    /// (`LIFELINE_SMTP_URL`, `LIFELINE_BOOTOS_AGENT`, ...).
    pub fn start_with(store: &Path, env: Vec<(String, String)>) -> Console {
        let port = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0").local_addr().expect("local_addr").port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut opts = ReceiverOpts::new(store);
        opts.env = vec![("LIFELINE_CONSOLE_LISTEN".into(), addr.to_string())];
        opts.env.extend(env);
        let receiver = Receiver::start_opts(opts);
        let first_login = store.join("console-first-login");
        let ready = wait_until(Duration::from_secs(30), || {
            first_login.exists() && TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        });
        assert!(ready, "the console did not answer on {addr} within 30 s\n{}", receiver.log_tail(40));
        Console { receiver, addr, store: store.to_path_buf() }
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }
}

/// What a program printed, and how it ended (`None`: killed at its time
/// limit).
pub struct Ran {
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
    pub took: Duration,
}

/// Runs `cmd` to its end or for `limit` at most, reading its output as it
/// goes (a chatty program cannot block on a full pipe).
pub fn run_for(cmd: &mut Command, limit: Duration) -> Ran {
    let mut child =
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start the program");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the program") {
            break Some(status);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    Ran { status, stdout: out_reader.join().unwrap(), stderr: err_reader.join().unwrap(), took: start.elapsed() }
}
