//! TFTP packets as the server reads them: read requests
//! (`tftp::parse_request`) and the client's answers while a block waits for
//! its ACK (`tftp::answer`). A request that parses names one plain file in
//! the served directory, with a block size the server can send.
#![no_main]
use libfuzzer_sys::fuzz_target;
use lifeline_boot_server::tftp::{answer, parse_request, Answer};
use lifeline_receiver_fuzz::write_seeds;

fuzz_target!(
    init: write_seeds(&[
        ("rrq", b"\0\x01undionly.kpxe\0octet\0blksize\x001432\0tsize\x000\0".to_vec()),
        ("rrq-plain", b"\0\x01ipxe.efi\0octet\0".to_vec()),
        ("ack", b"\0\x04\0\x01".to_vec()),
        ("error", b"\0\x05\0\x01no\0".to_vec()),
    ]),
    |data: &[u8]| {
        if let Ok(r) = parse_request(data) {
            assert!(!r.name.is_empty(), "an empty name");
            assert!(!r.name.contains(['/', '\\']) && !r.name.starts_with('.'), "{:?} leaves the directory", r.name);
            assert!(std::path::Path::new(&r.name).components().count() == 1, "{:?} is not one name", r.name);
            if let Some(b) = r.blksize {
                assert!((8..=1428).contains(&b), "block size {b}");
            }
        }
        for n in [0, 1, u16::MAX] {
            let a = answer(data, n);
            if a == Answer::Acked {
                assert_eq!(data[..4], [0, 4, (n >> 8) as u8, n as u8]);
            }
        }
    }
);
