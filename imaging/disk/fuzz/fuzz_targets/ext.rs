//! The ext reader on arbitrary bytes (see check.rs).
#![no_main]
#[path = "check.rs"]
mod check;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| check::reader(&lifeline_disk::fs::Ext, data));
