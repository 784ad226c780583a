//! The receiver trusts nobody: real receiver and agent processes over TLS,
//! with credentials that are missing, wrong, another machine's or revoked,
//! and a receiver certificate the agent must not trust. Each is refused with
//! a clear error and nothing reaches any mirror.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use lifeline_tests::{bin_path, preflight, wait_identical, wait_until, Agent, AgentOpts, Receiver, TestDir};

/// Starts an agent for `machine` with `opts` tweaked by `tweak`.
fn agent(dir: &TestDir, rcv: &Receiver, machine: &str, src: &Path, tweak: impl FnOnce(&mut AgentOpts)) -> Agent {
    let mut opts = AgentOpts::new(rcv, machine, &[src], &dir.subdir(&format!("state-{machine}")));
    tweak(&mut opts);
    Agent::start(opts)
}

/// Waits until the agent reports an error containing `what`, and returns it.
fn refused(a: &Agent, what: &str) -> String {
    let mut last = String::new();
    let seen = wait_until(Duration::from_secs(20), || {
        last = a.try_status().ok().and_then(|s| s.last_error).unwrap_or_default();
        last.contains(what)
    });
    assert!(seen, "agent never reported {what:?}; last error: {last:?}\n{}", a.log_tail(20));
    assert!(!a.status().connected);
    last
}

fn run_agent_cli(args: &[&str]) -> (bool, String) {
    let out = Command::new(bin_path("lifeline-agent")).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout))
}

#[test]
fn forged_and_revoked_credentials_are_refused_and_change_nothing() {
    preflight(&["lifeline-receiver", "lifeline-agent"]);
    let dir = TestDir::new("auth");
    let src = dir.subdir("src");
    fs::write(src.join("data.txt"), b"precious").unwrap();
    let rcv = Receiver::start(&dir.path().join("store"));
    // Two registered machines; m1 replicates normally.
    let m1 = agent(&dir, &rcv, "auth-m1", &src, |_| {});
    let (m2_token, _) = rcv.credentials("auth-m2");
    let m1_mirror = rcv.mirror_of("auth-m1", &src);
    wait_identical(&src, &m1_mirror, Duration::from_secs(20)).unwrap();

    // m1's name with m2's secret.
    let (m1_token, _) = rcv.credentials("auth-m1");
    let forged = dir.path().join("forged.token");
    let m2_secret = fs::read_to_string(&m2_token).unwrap().trim().split_once(':').unwrap().1.to_string();
    fs::write(&forged, format!("auth-m1:{m2_secret}\n")).unwrap();
    let f = agent(&dir, &rcv, "auth-m1", &dir.subdir("forged-src"), |o| o.token_file = forged.clone());
    let e = refused(&f, "refused");
    assert!(e.contains("credential refused for machine auth-m1"), "{e}");
    drop(f);

    // An unregistered machine's self-made credential.
    let stranger = dir.path().join("stranger.token");
    fs::write(&stranger, format!("auth-m9:{}\n", "ab".repeat(32))).unwrap();
    let s = agent(&dir, &rcv, "auth-m2", &dir.subdir("stranger-src"), |o| {
        o.machine = "auth-m9".into();
        o.token_file = stranger.clone();
    });
    let e = refused(&s, "refused");
    assert!(e.contains("credential refused for machine auth-m9: unknown here, or not its current secret"), "{e}");
    drop(s);

    // Another machine's credential under this machine's name: the agent
    // itself refuses to start.
    let (ok, out) = run_agent_cli(&[
        "run",
        "--receiver",
        &rcv.url(),
        "--machine",
        "auth-m1",
        "--token-file",
        m2_token.to_str().unwrap(),
        "--ca",
        rcv.credentials("auth-m1").1.to_str().unwrap(),
        "--watch",
        src.to_str().unwrap(),
        "--state-dir",
        dir.subdir("state-x").to_str().unwrap(),
    ]);
    assert!(!ok && out.contains("is machine auth-m2's"), "{out}");

    // A CA that did not sign the receiver's certificate.
    let other_store = dir.path().join("other-store");
    let other = Command::new(bin_path("lifeline-receiver"))
        .args(["machine", "add", "x", "--store"])
        .arg(&other_store)
        .arg("--out")
        .arg(dir.path().join("other-creds"))
        .output()
        .unwrap();
    assert!(other.status.success());
    let wrong_ca = dir.path().join("other-creds/ca.crt");
    let w = agent(&dir, &rcv, "auth-m2", &dir.subdir("wrongca-src"), |o| o.ca = wrong_ca.clone());
    let e = refused(&w, "unreachable");
    assert!(e.to_lowercase().contains("certificate"), "{e}");
    drop(w);

    // Revoked while running: m1's stream keeps nothing it should not, and
    // its next connection is refused.
    let out = Command::new(bin_path("lifeline-receiver"))
        .args(["machine", "reissue", "auth-m1", "--store"])
        .arg(rcv.store())
        .arg("--out")
        .arg(dir.path().join("reissued"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Its open stream ends within about a second.
    let reissued = std::time::Instant::now();
    let ended =
        wait_until(Duration::from_secs(5), || m1.log_tail(20).contains("was open when the credential was revoked"));
    let took = reissued.elapsed();
    assert!(ended, "the revoked stream is still open after {took:?}\n{}", m1.log_tail(20));
    println!("reissued: m1's open stream ended within {took:?}");
    drop(m1);
    let m1_again = agent(&dir, &rcv, "auth-m1", &src, |o| o.token_file = m1_token.clone());
    let e = refused(&m1_again, "refused");
    assert!(e.contains("credential refused for machine auth-m1"), "{e}");
    drop(m1_again);

    // Nothing reached any other mirror: only m1's exists, and it holds what
    // m1 sent before.
    let mirrors: Vec<_> = fs::read_dir(rcv.store().join("mirror")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(mirrors, ["auth-m1"], "{mirrors:?}");
    assert_eq!(fs::read(m1_mirror.join("data.txt")).unwrap(), b"precious");
    let audit =
        Command::new(bin_path("lifeline-receiver")).args(["audit", "--store"]).arg(rcv.store()).output().unwrap();
    let audit = String::from_utf8_lossy(&audit.stdout);
    assert!(audit.contains("credential reissued"), "{audit}");
}
