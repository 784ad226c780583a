//! The web console in a real browser: a real receiver process serving its
//! console over HTTPS on loopback (`LIFELINE_CONSOLE_LISTEN`, i.e.
//! `--console-listen`), and Debian's Chromium driven by Playwright for
//! Python through `tests/console/flow.py`: the first admin's sign-in and
//! password change, customers made on the pages, a second factor set up and
//! used (a used code refused), API tokens, one customer guessing another's
//! addresses (404 on the pages and the API), the lockout, CSRF from another
//! origin, keyboard-only sign-in, and a screenshot of every page.
//!
//! The screenshots go to the test's scratch directory;
//! `LIFELINE_WRITE_DOCS=1` writes them to `docs/console/` instead.

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lifeline_tests::{preflight, wait_until, Receiver, ReceiverOpts, TestDir};

/// The browser the flow drives (Debian's package `chromium`).
const CHROMIUM: &str = "/usr/bin/chromium";
/// The flow takes about 20 s; past this it is stuck.
const FLOW_TIMEOUT: Duration = Duration::from_secs(120);
/// The machines the flow gives to its customers A and B.
const MACHINE_A: &str = "acme-web1";
const MACHINE_B: &str = "beta-db1";

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ is inside the workspace").to_path_buf()
}

/// Panics unless Python can import Playwright's sync API (a missing one
/// fails the test, as every missing tool does).
fn require_playwright() {
    let out = Command::new("python3")
        .args(["-c", "import importlib.metadata as m, playwright.sync_api; print(m.version('playwright'))"])
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "Playwright for Python is missing (run scripts/setup.sh, which pins it): {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0").local_addr().expect("local_addr").port()
}

#[test]
fn console_in_chromium() {
    preflight(&["lifeline-receiver", "python3", "certutil", CHROMIUM]);
    require_playwright();
    let dir = TestDir::new("console");
    let store = dir.path().join("store");
    let console = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut opts = ReceiverOpts::new(&store);
    opts.env = vec![("LIFELINE_CONSOLE_LISTEN".into(), console.to_string())];
    let mut rx = Receiver::start_opts(opts);
    // The console listens once the receiver has made the first admin (and
    // written its password for the flow to read).
    let first_login = store.join("console-first-login");
    let ready = wait_until(Duration::from_secs(30), || {
        first_login.exists() && TcpStream::connect_timeout(&console, Duration::from_millis(200)).is_ok()
    });
    assert!(ready, "the console did not answer on {console} within 30 s\n{}", rx.log_tail(40));
    for m in [MACHINE_A, MACHINE_B, "spare-1"] {
        rx.credentials(m); // `lifeline-receiver machine add`
    }

    let shots = if std::env::var_os("LIFELINE_WRITE_DOCS").is_some() {
        workspace_root().join("docs/console")
    } else {
        dir.subdir("screenshots")
    };
    let artifacts = dir.subdir("artifacts");
    let mut child = Command::new("python3")
        .arg(workspace_root().join("tests/console/flow.py"))
        .arg("--url")
        .arg(format!("https://{console}"))
        .arg("--store")
        .arg(&store)
        .arg("--screenshots")
        .arg(&shots)
        .args(["--machine-a", MACHINE_A, "--machine-b", MACHINE_B])
        .arg("--receiver-bin")
        .arg(lifeline_tests::bin_path("lifeline-receiver"))
        .arg("--artifacts")
        .arg(&artifacts)
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python3 tests/console/flow.py");
    // Read both pipes while waiting, so that a chatty flow cannot block.
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
        if let Some(status) = child.try_wait().expect("wait for flow.py") {
            break Some(status);
        }
        if start.elapsed() > FLOW_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let (out, err) = (out_reader.join().unwrap(), err_reader.join().unwrap());
    println!("{out}");
    let report = || {
        format!(
            "--- flow.py stdout ---\n{out}\n--- flow.py stderr ---\n{err}\n{}\n(failure screenshots: {})",
            rx.log_tail(40),
            artifacts.display()
        )
    };
    match status {
        None => panic!("flow.py did not finish within {FLOW_TIMEOUT:?}\n{}", report()),
        Some(s) => assert!(s.success(), "flow.py failed ({s})\n{}", report()),
    }
    println!("console flow took {:.1} s", start.elapsed().as_secs_f64());

    // Every page's screenshot is a PNG of the asked width.
    for name in ["login", "second-factor", "machines", "machine", "customers", "audit", "account", "machines-phone"] {
        let path = shots.join(format!("{name}.png"));
        let png = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}\n{}", path.display(), report()));
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "{} is not a PNG", path.display());
        let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
        let want = if name == "machines-phone" { 390 } else { 1280 };
        assert_eq!(width, want, "{} is {width} px wide", path.display());
    }
    assert!(rx.is_running(), "the receiver died during the flow\n{}", rx.log_tail(40));
}
