//! What the console shows of a machine that replicates: a real agent on a
//! real filesystem replicating to a real receiver whose console lists the
//! machine as connected, with the instant of its last change, and its
//! changes counted (read through the console's JSON API over HTTPS).

use std::process::Command;
use std::time::Duration;

use lifeline_tests::console::{run_for, workspace_root};
use lifeline_tests::{preflight, wait_until, RigOpts, ScratchFs};

/// The console's answer to `GET path`, signed in as the first admin.
fn api(url: &str, store: &std::path::Path, path: &str) -> serde_json::Value {
    let ran = run_for(
        Command::new("python3")
            .arg(workspace_root().join("tests/console/api_get.py"))
            .args(["--url", url, "--store"])
            .arg(store)
            .arg(path),
        Duration::from_secs(30),
    );
    assert!(ran.status.is_some_and(|s| s.success()), "GET {path}: {}\n{}", ran.stdout, ran.stderr);
    serde_json::from_str(&ran.stdout).unwrap_or_else(|e| panic!("GET {path}: {e}: {}", ran.stdout))
}

#[test]
fn the_console_shows_a_replicating_machine_connected_with_its_last_change() {
    preflight(&["bpftool", "lifeline-receiver", "lifeline-agent", "python3"]);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("https://127.0.0.1:{port}");
    let mut rig = RigOpts::new("console-live", ScratchFs::tmpfs(64))
        .receiver_env("LIFELINE_CONSOLE_LISTEN", &format!("127.0.0.1:{port}"))
        .build();
    let store = rig.receiver.store().to_path_buf();
    let state = |rig_machine: &str| {
        let page = api(&url, &store, &format!("/api/v1/machines?q={rig_machine}"));
        page["items"][0]["state"].clone()
    };
    let before = state(&rig.machine);
    assert_eq!(before["connected"], false, "{before}");
    assert_eq!(before["changes"], 0, "{before}");

    rig.start_agent();
    rig.wait_ready();
    std::fs::write(rig.src.join("a.txt"), "hello").unwrap();
    rig.assert_identical(Duration::from_secs(10), "after a write");
    let seen = wait_until(Duration::from_secs(10), || {
        let s = state(&rig.machine);
        s["connected"] == true && s["last_change"].is_string() && s["changes"].as_u64().is_some_and(|n| n > 0)
    });
    assert!(seen, "the console shows {} for the replicating machine", state(&rig.machine));

    // The agent stops (killed: its stream ends as a broken connection).
    drop(rig.agent.take());
    let gone = wait_until(Duration::from_secs(15), || state(&rig.machine)["connected"] == false);
    assert!(gone, "the console still shows the machine connected after its agent stopped: {}", state(&rig.machine));
}
