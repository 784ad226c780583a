//! The kernel verifier's own figures for our programs: instructions processed
//! and stack depth per subprogram, combined along the deepest call chain.
//!
//! Why this exists: kernels without private BPF stacks refuse any call chain
//! whose frames add up to more than 512 bytes, and how much stack the
//! compiler gives each function changes from one toolchain to the next (the
//! same source measured 576 to 608 bytes). A margin is only kept if it is
//! measured, so the test suite and `lifeline-agent check-capture` read these
//! figures from the verifier of the running kernel.
//!
//! aya keeps the verifier's log only when a load fails, so this loads the
//! program a second time the way aya does (parse, create the maps, relocate
//! maps and calls) and calls `BPF_PROG_LOAD` itself with a statistics log.
//! The program is released right after; nothing is attached.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

use anyhow::{anyhow, bail, Context};
use aya::maps::MapData;
use aya_obj::btf::BtfKind;
use aya_obj::generated::{bpf_attach_type, bpf_attr, bpf_cmd, bpf_insn, bpf_map_type, bpf_prog_type};
use aya_obj::Object;

/// The verifier refuses a combined stack above this (no private stacks).
pub const MAX_BPF_STACK: u32 = 512;

/// What the verifier reported for one program.
#[derive(Clone, Debug)]
pub struct VerifierReport {
    pub program: String,
    /// Instructions the verifier processed (its limit is 1,000,000).
    pub insns_processed: u64,
    /// Stack depth of each subprogram, in instruction order (the verifier's
    /// "stack depth a+b+c" line).
    pub stack_per_subprog: Vec<u32>,
    /// The deepest call chain, as subprogram indexes from the entry.
    pub deepest_chain: Vec<usize>,
    /// Its combined stack as the verifier adds it up (each frame rounded
    /// up to 16 bytes with the JIT, to 32 without).
    pub deepest_chain_bytes: u32,
    /// The verifier's statistics lines as it printed them.
    pub log: String,
}

impl std::fmt::Display for VerifierReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let chain: Vec<String> = self.deepest_chain.iter().map(|&i| self.stack_per_subprog[i].to_string()).collect();
        write!(
            f,
            "{}: deepest call chain {} bytes of stack ({}; limit {MAX_BPF_STACK}), {} instructions processed (limit 1000000)",
            self.program,
            self.deepest_chain_bytes,
            chain.join("+"),
            self.insns_processed
        )
    }
}

/// Loads `program` (a BTF-enabled tracepoint program) of the object `elf`
/// with `globals` patched in, and returns the verifier's figures. Fails with
/// the verifier's message if it refuses the program.
pub fn report(elf: &[u8], program: &str, globals: &[(&str, &[u8])]) -> anyhow::Result<VerifierReport> {
    let mut obj = Object::parse(elf).context("parsing the eBPF object")?;
    obj.patch_map_data(globals.iter().map(|(n, d)| (*n, (*d, true))).collect())
        .context("setting the programs' globals")?;

    // Maps as aya makes them (sizes adjusted, read-only data frozen), so the
    // verifier sees what it sees when the agent loads the programs.
    // The definitions stay for `relocate_maps`; each map is made from a copy.
    let defs = std::mem::take(&mut obj.maps);
    let mut maps: HashMap<String, MapData> = HashMap::new();
    for (name, def) in &defs {
        let mut m = def.clone();
        let ty = m.map_type();
        if ty == bpf_map_type::BPF_MAP_TYPE_PERF_EVENT_ARRAY as u32 && m.max_entries() == 0 {
            m.set_max_entries(aya::util::nr_cpus().map_err(|(p, e)| anyhow!("{p}: {e}"))? as u32);
        }
        if ty == bpf_map_type::BPF_MAP_TYPE_RINGBUF as u32 {
            m.set_value_size(0);
        }
        let data = m.data().to_vec();
        let rodata = m.section_kind() == aya_obj::EbpfSectionKind::Rodata;
        let map = MapData::create(m, name, None).with_context(|| format!("creating map {name}"))?;
        if !data.is_empty() {
            map_update(map.fd().as_fd().as_raw_fd(), &data).with_context(|| format!("filling map {name}"))?;
        }
        if rodata {
            map_freeze(map.fd().as_fd().as_raw_fd()).with_context(|| format!("freezing map {name}"))?;
        }
        maps.insert(name.clone(), map);
    }
    let text: HashSet<usize> = obj.functions.keys().map(|(s, _)| *s).collect();
    obj.relocate_maps(maps.iter().map(|(n, m)| (n.as_str(), m.fd().as_fd().as_raw_fd(), &defs[n])), &text)
        .context("relocating map references")?;
    obj.relocate_calls(&text).context("relocating calls")?;
    let prog = obj.programs.get(program).ok_or_else(|| anyhow!("program {program} missing from the object"))?;
    let function = &obj.functions[&prog.function_key()];
    let insns = &function.instructions;

    let kernel_btf = aya::Btf::from_sys_fs().context("reading the kernel's BTF")?;
    let attach_btf_id = kernel_btf
        .id_by_type_name_kind(&format!("btf_trace_{program}"), BtfKind::Typedef)
        .with_context(|| format!("the kernel has no BTF for the {program} tracepoint"))?;

    let license = prog.license.clone();
    // One BPF_PROG_LOAD with a log of `level` into `size` bytes: the program
    // (or the error) and the log.
    let load = |level: u32, size: usize| {
        let mut log = vec![0u8; size];
        let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
        unsafe {
            let u = &mut attr.__bindgen_anon_3;
            u.prog_type = bpf_prog_type::BPF_PROG_TYPE_TRACING as u32;
            u.expected_attach_type = bpf_attach_type::BPF_TRACE_RAW_TP as u32;
            u.attach_btf_id = attach_btf_id;
            u.insns = insns.as_ptr() as u64;
            u.insn_cnt = insns.len() as u32;
            u.license = license.as_ptr() as u64;
            u.log_level = level;
            u.log_buf = log.as_mut_ptr() as u64;
            u.log_size = log.len() as u32;
        }
        let fd = sys_bpf(bpf_cmd::BPF_PROG_LOAD, &mut attr);
        let prog =
            if fd < 0 { Err(std::io::Error::last_os_error()) } else { Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) }) };
        let len = log.iter().position(|&b| b == 0).unwrap_or(log.len());
        let text = String::from_utf8_lossy(&log[..len]).into_owned();
        (prog, text)
    };
    // BPF_LOG_STATS: the closing statistics only, not the whole trace.
    let (prog, text_log) = load(BPF_LOG_STATS, 1 << 20);
    if let Err(err) = prog {
        bail!(
            "the kernel's verifier refused {program} ({err}):\n{}",
            refusal(&text_log, || load(BPF_LOG_LEVEL1 | BPF_LOG_STATS, 16 << 20).1)
        );
    }
    // Released at once: nothing is attached.
    drop(prog);
    drop(maps);
    parse(program, insns, &text_log)
}

const BPF_LOG_LEVEL1: u32 = 1;
const BPF_LOG_STATS: u32 = 4;

/// What to show of a refusal: the statistics log (with the verifier's
/// reason: 6.18 and 6.1 print it at the statistics level), then the last
/// lines of the full log from a second load (`full_load`), which show the
/// instructions and register states that led to it: on Debian's 6.1 that
/// tail was what told where a bound got lost. A full log can be long; when
/// it does not fit, kernels from 6.4 keep its end (which closes with the
/// statistics), older ones its beginning, which is not worth showing.
fn refusal(stats_log: &str, full_load: impl FnOnce() -> String) -> String {
    const TAIL: usize = 40;
    let full = full_load();
    let stats_log = stats_log.trim_end();
    let complete = full.lines().rev().find(|l| !l.trim().is_empty()).is_some_and(|l| l.starts_with("processed "));
    if !complete {
        return format!(
            "{stats_log}\n(the verifier's full log did not fit in memory; bpftool prog load or veristat print it)"
        );
    }
    let lines: Vec<&str> = full.trim_end().lines().collect();
    let from = lines.len().saturating_sub(TAIL);
    format!(
        "{stats_log}\n--- the last {} lines of the verifier's full log ---\n{}",
        lines.len() - from,
        lines[from..].join("\n")
    )
}

/// Builds the report from the relocated instructions and the statistics log.
fn parse(program: &str, insns: &[bpf_insn], log: &str) -> anyhow::Result<VerifierReport> {
    let insns_processed = log
        .lines()
        .find_map(|l| l.strip_prefix("processed ")?.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| anyhow!("no 'processed N insns' line in the verifier's log:\n{log}"))?;
    let stack_per_subprog: Vec<u32> = log
        .lines()
        .find_map(|l| l.strip_prefix("stack depth "))
        .ok_or_else(|| anyhow!("no 'stack depth' line in the verifier's log:\n{log}"))?
        .trim()
        .split('+')
        .map(|d| d.parse::<u32>())
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow!("unreadable stack depth in the verifier's log ({e}):\n{log}"))?;
    let graph = call_graph(insns);
    if graph.len() != stack_per_subprog.len() {
        bail!(
            "{} subprograms in the instructions but {} stack depths in the verifier's log",
            graph.len(),
            stack_per_subprog.len()
        );
    }
    let jit = std::fs::read_to_string("/proc/sys/net/core/bpf_jit_enable").map(|s| s.trim() != "0").unwrap_or(true);
    let frame = |d: u32| {
        if jit {
            d.next_multiple_of(16)
        } else {
            d.max(1).next_multiple_of(32)
        }
    };
    let (deepest_chain_bytes, deepest_chain) = deepest(0, &graph, &stack_per_subprog, &frame);
    Ok(VerifierReport {
        program: program.to_string(),
        insns_processed,
        stack_per_subprog,
        deepest_chain,
        deepest_chain_bytes,
        log: log.trim_end().to_string(),
    })
}

/// For each subprogram (in instruction order, as the verifier numbers them),
/// the subprograms it calls.
fn call_graph(insns: &[bpf_insn]) -> Vec<BTreeSet<usize>> {
    const BPF_JMP_CALL: u8 = 0x85;
    const BPF_PSEUDO_CALL: u8 = 1;
    let is_call = |i: &bpf_insn| i.code == BPF_JMP_CALL && i.src_reg() == BPF_PSEUDO_CALL;
    let target = |at: usize, i: &bpf_insn| (at as i64 + i.imm as i64 + 1) as usize;
    let mut starts: BTreeSet<usize> = BTreeSet::from([0]);
    for (at, i) in insns.iter().enumerate() {
        if is_call(i) {
            starts.insert(target(at, i));
        }
    }
    let starts: Vec<usize> = starts.into_iter().collect();
    let subprog_of = |at: usize| starts.partition_point(|&s| s <= at) - 1;
    let mut graph = vec![BTreeSet::new(); starts.len()];
    for (at, i) in insns.iter().enumerate() {
        if is_call(i) {
            graph[subprog_of(at)].insert(subprog_of(target(at, i)));
        }
    }
    graph
}

/// The deepest chain from `at`: (combined bytes, subprograms).
fn deepest(at: usize, graph: &[BTreeSet<usize>], depth: &[u32], frame: &dyn Fn(u32) -> u32) -> (u32, Vec<usize>) {
    let (below, mut chain) = graph[at]
        .iter()
        .filter(|&&c| c != at)
        .map(|&c| deepest(c, graph, depth, frame))
        .max_by_key(|(b, _)| *b)
        .unwrap_or((0, Vec::new()));
    chain.insert(0, at);
    (frame(depth[at]) + below, chain)
}

fn sys_bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> i64 {
    unsafe { libc::syscall(libc::SYS_bpf, cmd as u32, attr as *mut bpf_attr, std::mem::size_of::<bpf_attr>()) }
}

fn map_update(fd: i32, value: &[u8]) -> anyhow::Result<()> {
    let key = 0u32;
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    unsafe {
        let u = &mut attr.__bindgen_anon_2;
        u.map_fd = fd as u32;
        u.key = &key as *const u32 as u64;
        u.__bindgen_anon_1.value = value.as_ptr() as u64;
    }
    if sys_bpf(bpf_cmd::BPF_MAP_UPDATE_ELEM, &mut attr) < 0 {
        bail!("{}", std::io::Error::last_os_error());
    }
    Ok(())
}

fn map_freeze(fd: i32) -> anyhow::Result<()> {
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    attr.__bindgen_anon_2.map_fd = fd as u32;
    if sys_bpf(bpf_cmd::BPF_MAP_FREEZE, &mut attr) < 0 {
        bail!("{}", std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn insn(code: u8, src: u8, imm: i32) -> bpf_insn {
        let mut i: bpf_insn = unsafe { std::mem::zeroed() };
        i.code = code;
        i.set_src_reg(src);
        i.imm = imm;
        i
    }

    #[test]
    fn the_deepest_chain_adds_rounded_frames_along_calls() {
        // 0: call 3 (subprog 1); 1: call 5 (subprog 2); 2: exit;
        // 3: call 5 (1 -> 2); 4: exit; 5: exit
        let exit = insn(0x95, 0, 0);
        let insns = [insn(0x85, 1, 2), insn(0x85, 1, 3), exit, insn(0x85, 1, 1), exit, exit];
        let log = "processed 42 insns (limit 1000000) max_states_per_insn 0\nstack depth 100+8+296\n";
        let r = parse("p", &insns, log).unwrap();
        assert_eq!(r.insns_processed, 42);
        assert_eq!(r.stack_per_subprog, vec![100, 8, 296]);
        assert_eq!(r.deepest_chain, vec![0, 1, 2]);
        let jit = std::fs::read_to_string("/proc/sys/net/core/bpf_jit_enable").map(|s| s.trim() != "0").unwrap_or(true);
        assert_eq!(r.deepest_chain_bytes, if jit { 112 + 16 + 304 } else { 128 + 32 + 320 });
    }

    #[test]
    fn a_refusal_shows_the_reason_then_the_full_logs_tail() {
        let stats = "R3 unbounded memory access\nstack depth 56+24\nprocessed 3377 insns (limit 1000000)\n";
        let full: String = (0..100).map(|i| format!("{i}: insn\n")).collect::<String>()
            + "R3 unbounded memory access\nprocessed 3377 insns (limit 1000000)\n";
        let r = refusal(stats, || full.clone());
        assert!(r.starts_with(stats.trim_end()), "{r}");
        assert!(r.contains("the last 40 lines") && r.contains("\n99: insn\n"), "{r}");
        assert!(!r.contains("\n61: insn"), "only the tail: {r}");
        let r = refusal(stats, || "0: insn\n1: insn\n".into());
        assert!(r.starts_with(stats.trim_end()) && r.contains("did not fit"), "{r}");
    }

    #[test]
    fn a_log_without_figures_is_an_error() {
        assert!(parse("p", &[], "nothing here").is_err());
    }
}
