//! CRC32C (Castagnoli), which ext4, XFS and btrfs all use for metadata
//! checksums.

/// Reflected CRC32C without the final inversion: the kernel's `crc32c()`.
/// Callers pass the seed their filesystem starts from (`!0` for ext4 and XFS,
/// then invert as the format says; btrfs uses the standard form
/// `!crc32c(!0, data)`).
pub(crate) fn crc32c(mut crc: u32, data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let t = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, e) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 { (c >> 1) ^ 0x82F6_3B78 } else { c >> 1 };
            }
            *e = c;
        }
        t
    });
    for &b in data {
        crc = t[((crc ^ b as u32) & 0xFF) as usize] ^ (crc >> 8);
    }
    crc
}
