//! Small helpers the parsers share: little-endian fields, checked reads, the CRCs
//! on-disk structures use, and a bounded builder for the used ranges.

use std::ops::Range;

use crate::{Error, ReadAt, normalise};

pub(crate) fn le16(b: &[u8], o: usize) -> u16 {
    b.get(o..o + 2)
        .map_or(0, |s| u16::from_le_bytes([s[0], s[1]]))
}

pub(crate) fn le32(b: &[u8], o: usize) -> u32 {
    b.get(o..o + 4)
        .map_or(0, |s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

pub(crate) fn le64(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(field(b, o))
}

pub(crate) fn be16(b: &[u8], o: usize) -> u16 {
    u16::from_be_bytes(field(b, o))
}

pub(crate) fn be32(b: &[u8], o: usize) -> u32 {
    u32::from_be_bytes(field(b, o))
}

pub(crate) fn be64(b: &[u8], o: usize) -> u64 {
    u64::from_be_bytes(field(b, o))
}

/// `N` bytes at `o`, zeros where `b` ends first (a value the parser then rejects).
fn field<const N: usize>(b: &[u8], o: usize) -> [u8; N] {
    let mut v = [0u8; N];
    if let Some(s) = o.checked_add(N).and_then(|e| b.get(o..e)) {
        v.copy_from_slice(s);
    }
    v
}

/// Reads `len` bytes at `offset` into a new buffer, naming `what` in the error.
pub(crate) fn read_vec(
    dev: &dyn ReadAt,
    what: &'static str,
    offset: u64,
    len: usize,
) -> Result<Vec<u8>, Error> {
    let mut buf = vec![0u8; len];
    read(dev, what, offset, &mut buf)?;
    Ok(buf)
}

/// Reads `buf.len()` bytes at `offset`, naming `what` in the error.
pub(crate) fn read(
    dev: &dyn ReadAt,
    what: &'static str,
    offset: u64,
    buf: &mut [u8],
) -> Result<(), Error> {
    dev.read_exact_at(buf, offset)
        .map_err(|source| Error::Read {
            what,
            offset,
            source,
        })
}

const fn crc32c_table() -> [u32; 256] {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0x82F6_3B78
            } else {
                c >> 1
            };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
}

static CRC32C: [u32; 256] = crc32c_table();

/// CRC32C (Castagnoli) without the final inversion, continuing from `crc`: the form
/// ext4 and the kernel's `crc32c()` use (ext4 starts from `!0`).
pub(crate) fn crc32c(mut crc: u32, data: &[u8]) -> u32 {
    for &b in data {
        crc = CRC32C[((crc ^ u32::from(b)) & 0xFF) as usize] ^ (crc >> 8);
    }
    crc
}

const fn crc16_table() -> [u16; 256] {
    let mut t = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u16;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0xA001
            } else {
                c >> 1
            };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
}

static CRC16: [u16; 256] = crc16_table();

/// CRC16 (ANSI, reflected 0x8005) continuing from `crc`: ext4's `gdt_csum` descriptors.
pub(crate) fn crc16(mut crc: u16, data: &[u8]) -> u16 {
    for &b in data {
        crc = CRC16[((crc ^ u16::from(b)) & 0xFF) as usize] ^ (crc >> 8);
    }
    crc
}

/// Most separate used ranges a parser keeps (16 bytes each: 64 MiB): a bitmap
/// fragmented past that (or a hostile one) is copied whole instead.
pub(crate) const MAX_EXTENTS: usize = 1 << 22;

/// Collects used byte ranges, merging each with the previous one when they touch, so
/// that a bitmap read in order costs one entry per run; bounded by `MAX_EXTENTS`.
pub(crate) struct Extents {
    ranges: Vec<Range<u64>>,
    len: u64,
}

impl Extents {
    /// Ranges within a partition of `len` bytes (anything past it is clipped).
    pub(crate) fn new(len: u64) -> Self {
        Extents {
            ranges: Vec::new(),
            len,
        }
    }

    pub(crate) fn add(&mut self, r: Range<u64>) -> Result<(), Error> {
        let r = r.start.min(self.len)..r.end.min(self.len);
        if r.start >= r.end {
            return Ok(());
        }
        if let Some(last) = self.ranges.last_mut()
            && r.start >= last.start
            && r.start <= last.end
        {
            last.end = last.end.max(r.end);
            return Ok(());
        }
        if self.ranges.len() >= MAX_EXTENTS {
            // Out-of-order additions (metadata) may merge: compact once before giving up.
            self.ranges = normalise(std::mem::take(&mut self.ranges), self.len);
            if self.ranges.len() >= MAX_EXTENTS / 2 {
                return Err(Error::Unsupported(format!(
                    "allocation split into more than {} separate extents",
                    MAX_EXTENTS / 2
                )));
            }
        }
        self.ranges.push(r);
        Ok(())
    }

    pub(crate) fn finish(self) -> Vec<Range<u64>> {
        normalise(self.ranges, self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        // The catalogued check value of CRC-32C over "123456789" (with both inversions).
        assert_eq!(!crc32c(!0, b"123456789"), 0xE306_9283);
    }

    #[test]
    fn crc16_matches_the_standard_check_value() {
        // CRC-16/ARC of "123456789".
        assert_eq!(crc16(0, b"123456789"), 0xBB3D);
    }

    #[test]
    fn extents_merge_touching_runs_and_clip() {
        let mut e = Extents::new(100);
        for r in [0..10, 10..20, 30..40, 5..8, 95..200, 150..160] {
            e.add(r).unwrap();
        }
        assert_eq!(e.finish(), vec![0..20, 30..40, 95..100]);
    }
}
