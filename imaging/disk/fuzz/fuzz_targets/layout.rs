//! Partition table parsing (MBR, EBR chains, GPT headers and arrays) on
//! arbitrary bytes: never panics, never reads outside the disk, and whatever
//! it accepts is consistent (partitions inside the disk, keep ranges sorted).
#![no_main]
use libfuzzer_sys::fuzz_target;
use lifeline_disk::layout::read_layout;

fuzz_target!(|data: &[u8]| {
    let size = data.len() as u64 / 512 * 512;
    if let Ok(l) = read_layout(&data, size, 512) {
        for p in &l.partitions {
            assert!(p.start + p.len <= size);
        }
        for w in l.keep.windows(2) {
            assert!(w[0].end <= w[1].start);
        }
    }
});
