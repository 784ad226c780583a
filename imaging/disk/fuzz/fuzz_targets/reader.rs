//! Every filesystem reader on arbitrary bytes. The first byte picks the
//! reader (so one target covers them all and a new reader in `READERS` is
//! fuzzed without a new target); the rest is the partition. A reader must not
//! panic, and a map it returns must lie inside the partition.
#![no_main]
use libfuzzer_sys::fuzz_target;
use lifeline_disk::fs::READERS;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, part)) = data.split_first() else { return };
    let reader = READERS[pick as usize % READERS.len()];
    let len = part.len() as u64;
    if let Ok(Some(map)) = reader.probe(&part, len) {
        for r in map.byte_ranges() {
            assert!(r.start <= r.end);
        }
        assert!(map.used_bytes() <= map.total_bytes());
    }
});
