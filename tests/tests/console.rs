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

use std::process::Command;
use std::time::Duration;

use lifeline_tests::console::{run_for, workspace_root, Console};
use lifeline_tests::{preflight, TestDir};

/// The browser the flow drives (Debian's package `chromium`).
const CHROMIUM: &str = "/usr/bin/chromium";
/// The flow takes about a minute (the boot media most of it); past this it
/// is stuck.
const FLOW_TIMEOUT: Duration = Duration::from_secs(300);
/// The machines the flow gives to its customers A and B.
const MACHINE_A: &str = "acme-web1";
const MACHINE_B: &str = "beta-db1";

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

#[test]
fn console_in_chromium() {
    preflight(&["lifeline-receiver", "python3", "certutil", CHROMIUM]);
    require_playwright();
    let dir = TestDir::new("console");
    let store = dir.path().join("store");
    // The boot OS the console makes carries the static lifeline-image
    // (scripts/test.sh builds it before the tests).
    let agent = lifeline_testvm::static_build::static_binary(&workspace_root()).unwrap_or_else(|e| panic!("{e}"));
    let smtp_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let env = [
        ("LIFELINE_BOOTOS_AGENT", agent.display().to_string()),
        ("LIFELINE_PUBLIC_URL", "https://backup.example.net:7700".into()),
        ("LIFELINE_SMTP_URL", format!("smtp://127.0.0.1:{smtp_port}")),
        ("LIFELINE_CONSOLE_SIGNUP", "true".into()),
    ];
    let Console { receiver: mut rx, addr: console, .. } =
        Console::start_with(&store, env.into_iter().map(|(k, v)| (k.to_string(), v)).collect());
    for m in [MACHINE_A, MACHINE_B, "spare-1"] {
        rx.credentials(m); // `lifeline-receiver machine add`
    }

    let shots = if std::env::var_os("LIFELINE_WRITE_DOCS").is_some() {
        workspace_root().join("docs/console")
    } else {
        dir.subdir("screenshots")
    };
    let artifacts = dir.subdir("artifacts");
    let ran = run_for(
        Command::new("python3")
            .arg(workspace_root().join("tests/console/flow.py"))
            .arg("--url")
            .arg(format!("https://{console}"))
            .arg("--store")
            .arg(&store)
            .arg("--screenshots")
            .arg(&shots)
            .args(["--machine-a", MACHINE_A, "--machine-b", MACHINE_B])
            .arg("--smtp-port")
            .arg(smtp_port.to_string())
            .arg("--receiver-bin")
            .arg(lifeline_tests::bin_path("lifeline-receiver"))
            .arg("--artifacts")
            .arg(&artifacts)
            .env("PYTHONUNBUFFERED", "1"),
        FLOW_TIMEOUT,
    );
    let (status, out, err) = (ran.status, ran.stdout, ran.stderr);
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
    println!("console flow took {:.1} s", ran.took.as_secs_f64());

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
