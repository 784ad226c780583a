//! A pack's index (decrypted) and trailer: `lifeline_repo::pack::fuzz_index`.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    lifeline_repo::pack::fuzz_index(data);
});
