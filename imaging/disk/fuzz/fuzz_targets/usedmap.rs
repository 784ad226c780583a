//! Decoding a used-block map from an image manifest: never panics, and what
//! decodes survives a re-encoding unchanged (the bytes may differ: a varint
//! may be written with redundant continuation bytes).
#![no_main]
use libfuzzer_sys::fuzz_target;
use lifeline_disk::fs::UsedMap;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = UsedMap::from_bytes(data) {
        assert_eq!(UsedMap::from_bytes(&m.to_bytes()).unwrap(), m);
    }
});
