//! What every reader target checks: on arbitrary bytes a reader never panics
//! (no out-of-bounds slice, overflow or huge allocation from a hostile
//! field), and a map it returns is well formed.
use lifeline_disk::fs::FsReader;

pub fn reader(r: &dyn FsReader, part: &[u8]) {
    let len = part.len() as u64;
    if let Ok(Some(map)) = r.probe(&part, len) {
        for w in map.runs().windows(2) {
            assert!(w[0].0 + w[0].1 < w[1].0, "runs not sorted and disjoint");
        }
        assert!(map.used_bytes() <= map.total_bytes());
    }
}
