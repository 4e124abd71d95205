//! The partition the fsmap fuzz targets probe: the input's first byte `s` makes the
//! partition `rest.len() << s` bytes long (at most 1 TiB), the input's bytes first
//! and zeros after, so a small input can stand for a large filesystem whose
//! metadata claims much; what a parser accepts must be a valid `Usage`.

use std::io;

pub struct Dev<'a> {
    data: &'a [u8],
    len: u64,
}

impl<'a> Dev<'a> {
    pub fn new(input: &'a [u8]) -> Option<Dev<'a>> {
        let (&s, data) = input.split_first()?;
        let len = (data.len() as u64)
            .checked_shl(u32::from(s % 41))
            .unwrap_or(0)
            .min(1 << 40);
        Some(Dev { data, len })
    }
}

impl fsmap::ReadAt for Dev<'_> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.len)
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.fill(0);
        let have = self.data.len() as u64;
        if offset < have {
            let n = (end.min(have) - offset) as usize;
            buf[..n].copy_from_slice(&self.data[offset as usize..offset as usize + n]);
        }
        Ok(())
    }
    fn len(&self) -> u64 {
        self.len
    }
}

/// What every accepted answer must be: sorted, disjoint, not adjacent, non-empty
/// ranges inside the partition.
pub fn check(dev: &Dev, got: Option<Result<fsmap::Usage, fsmap::Error>>) {
    if let Some(Ok(u)) = got {
        assert!(u.is_valid_within(fsmap::ReadAt::len(dev)), "{u:?}");
    }
}
