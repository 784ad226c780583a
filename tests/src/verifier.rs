//! The verifier's budget for the kernel programs, the same on every kernel
//! the tests load them on (this machine's: tests/tests/verifier.rs; Debian
//! 12's 6.1 in qemu: tests/tests/kernels.rs), and reading the figures
//! `lifeline-agent check-capture` prints.
//!
//! Kernels without private BPF stacks refuse a call chain whose frames add
//! up to more than 512 bytes; how much stack the compiler gives a function
//! changes between toolchains (the same source measured 576 to 608 bytes
//! before records moved to the per-CPU scratch map). 448 keeps a margin for
//! the next toolchain; past it, move more state out of the stack. How many
//! instructions the verifier walks differs between kernels (the same program:
//! 79,448 on 6.18, 129,664 on 6.1; before `emit` was told which walks each
//! call site needs, 123,973 and 442,503), so the instruction budget is
//! checked on each.

/// The deepest call chain's combined stack may not exceed this.
pub const STACK_BUDGET: u32 = 448;
/// Instructions the verifier may process (its limit is 1,000,000; the
/// program needs about 130,000 on 6.1).
pub const INSN_BUDGET: u64 = 300_000;

/// (deepest call chain's bytes of stack, instructions processed) from a
/// check-capture line `verifier: PROG: deepest call chain N bytes of stack
/// (...), M instructions processed (...)`.
pub fn figures(line: &str) -> Option<(u64, u64)> {
    let stack = number_between(line, "deepest call chain ", " bytes")?;
    let insns = number_between(line, "), ", " instructions processed")?;
    Some((stack, insns))
}

/// The number after `before` and before `after` in `line`.
fn number_between(line: &str, before: &str, after: &str) -> Option<u64> {
    let rest = &line[line.find(before)? + before.len()..];
    rest[..rest.find(after)?].trim().parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_the_figures() {
        let l = "verifier: sys_exit: deepest call chain 336 bytes of stack (112+72+24+112+0; limit 512), 442503 instructions processed (limit 1000000)";
        assert_eq!(super::figures(l), Some((336, 442503)));
        assert_eq!(super::figures("verifier: nothing"), None);
    }
}
