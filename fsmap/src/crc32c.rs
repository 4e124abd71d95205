//! CRC-32C (Castagnoli), the checksum of XFS v5, btrfs and ext4 metadata_csum.

/// The reflected polynomial 0x1EDC6F41.
const POLY: u32 = 0x82F6_3B78;

const TABLE: [u32; 256] = {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { (c >> 1) ^ POLY } else { c >> 1 };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
};

/// Continues a raw CRC-32C register over `data`, without the initial and final
/// inversion: ext4 chains it this way (seeded with the filesystem's UUID checksum).
pub fn crc32c_update(mut crc: u32, data: &[u8]) -> u32 {
    for &b in data {
        crc = TABLE[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    crc
}

/// The standard CRC-32C of `data` (register starts at all ones, inverted at the end),
/// as XFS and btrfs store it.
pub fn crc32c(data: &[u8]) -> u32 {
    !crc32c_update(!0, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        // The check value of CRC-32C and RFC 3720's 32 zero bytes.
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        let (a, b) = b"123456789".split_at(4);
        assert_eq!(!crc32c_update(crc32c_update(!0, a), b), 0xE306_9283);
    }
}
