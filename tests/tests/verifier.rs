//! The kernel program within the verifier's limits, with margin, on this
//! machine's kernel, and capture working end to end through the real
//! `lifeline-agent check-capture`.
//!
//! Kernels without private BPF stacks (this one) refuse a call chain whose
//! frames add up to more than 512 bytes; how much stack the compiler gives a
//! function changes between toolchains (the same source measured 576 to 608
//! bytes before records moved to the per-CPU scratch map). 448 keeps a
//! margin for the next toolchain; past it, move more state out of the stack.

use std::process::Command;

use lifeline_tests::verifier::{figures, INSN_BUDGET, STACK_BUDGET};
use lifeline_tests::{bin_path, preflight, ScratchFs};

/// Runs `lifeline-agent check-capture` in `dir`: (success, stdout + stderr).
fn check_capture(dir: &std::path::Path) -> (bool, String) {
    let out = Command::new(bin_path("lifeline-agent"))
        .args(["check-capture", "--dir"])
        .arg(dir)
        .output()
        .expect("running lifeline-agent check-capture");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn the_program_fits_the_verifier_with_margin_and_reports_exact_ranges() {
    preflight(&["lifeline-agent"]);
    let fs = ScratchFs::tmpfs(16);
    let (ok, out) = check_capture(fs.path());
    assert!(ok, "check-capture failed on this kernel:\n{out}");
    let verifier: Vec<&str> = out.lines().filter(|l| l.starts_with("verifier: ")).collect();
    assert_eq!(verifier.len(), 1, "one program, one verifier line:\n{out}");
    let line = verifier[0];
    let (stack, insns) = figures(line).unwrap_or_else(|| panic!("no stack or instruction figure: {line}"));
    println!("{line}");
    assert!(
        stack <= STACK_BUDGET as u64,
        "the deepest call chain uses {stack} bytes of stack, over the {STACK_BUDGET}-byte budget (the \
         kernel refuses 512): keep records and reports in the SCRATCH map, not on the stack\n{line}"
    );
    assert!(stack > 0, "a stack figure of 0 means the figures were not read: {line}");
    assert!(insns <= INSN_BUDGET, "the verifier processed {insns} instructions, over {INSN_BUDGET}: {line}");
    let capture = out
        .lines()
        .find(|l| l.starts_with("capture: ebpf ok: write "))
        .unwrap_or_else(|| panic!("no capture line:\n{out}"));
    assert!(
        capture.contains(" offset 12288 len 4096 "),
        "the write of 4096 bytes at 12288 came back otherwise: {capture}"
    );
    assert!(capture.contains(fs.path().to_str().unwrap()), "the path is not under the checked directory: {capture}");
}

#[test]
fn check_capture_fails_loudly_on_a_directory_that_does_not_exist() {
    preflight(&["lifeline-agent"]);
    let (ok, out) = check_capture(std::path::Path::new("/nonexistent/lifeline-check"));
    assert!(!ok, "check-capture succeeded without a directory:\n{out}");
    assert!(out.contains("capture: ebpf FAILED"), "no plain failure line:\n{out}");
}
