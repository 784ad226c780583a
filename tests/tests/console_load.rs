//! The console under load (issue 17): a real receiver, its database seeded
//! with 10,000 machines, 100,000 images and jobs and 1,000,000 audit
//! entries, and 50 users at once (the provider's admin and 49 customers'
//! admins, each from its own loopback address, each viewing a page about
//! every second) paging and searching every list over HTTPS:
//! `tests/console/load.py` asserts no request fails and every list page's
//! server time (the console's `Server-Timing` header) is p99 ≤ 50 ms, and
//! prints the table this test shows.

use std::process::Command;
use std::time::Duration;

use lifeline_tests::console::{run_for, workspace_root, Console};
use lifeline_tests::{preflight, TestDir};

#[test]
fn fifty_users_page_through_a_big_service_quickly() {
    preflight(&["lifeline-receiver", "python3"]);
    let dir = TestDir::new("console-load");
    let console = Console::start(&dir.path().join("store"));
    let ran = run_for(
        Command::new("python3")
            .arg(workspace_root().join("tests/console/load.py"))
            .arg("--url")
            .arg(console.url())
            .arg("--store")
            .arg(&console.store)
            .args(["--users", "50", "--rounds", "2", "--p99-ms", "50"])
            .env("PYTHONUNBUFFERED", "1"),
        Duration::from_secs(240),
    );
    println!("{}", ran.stdout);
    match ran.status {
        None => panic!("load.py did not finish in 240 s\n{}\n{}", ran.stderr, console.receiver.log_tail(20)),
        Some(s) => assert!(
            s.success(),
            "load.py failed ({s})\n{}\n{}\n{}",
            ran.stdout,
            ran.stderr,
            console.receiver.log_tail(20)
        ),
    }
}
