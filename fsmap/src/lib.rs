//! Which bytes of a partition its filesystem uses, found by parsing the allocation
//! metadata read-only from the partition itself (never mounting it, no tools).
//!
//! `probe` looks at a partition (or a whole-disk filesystem) and answers either
//! `Verdict::Used`: the byte ranges that must be copied (every allocated block and all
//! filesystem metadata), or `Verdict::Raw`: copy it whole, with the reason in words a
//! technician can read ("LUKS: copied whole", "ext4: block bitmap checksum wrong in
//! group 7"). A parser that finds anything it cannot account for answers `Raw`: copying
//! too much is slow, copying too little loses data.
//!
//! Every parser bounds what it reads and allocates by the partition's size and by the
//! structure's own limits, so a hostile superblock cannot make it loop, panic or
//! allocate without bound (each has a fuzz target in rescue/fuzz).

pub mod ext4;
pub mod fat;
pub mod opaque;
pub mod swap;
mod util;

use std::io;
use std::ops::Range;

pub mod btrfs;
pub mod ntfs;
pub mod sparse;
pub mod xfs;

/// Random-access reads of the partition being probed. Offsets are relative to the
/// partition's first byte; a read past `len()` is an error.
pub trait ReadAt {
    /// Fills `buf` from `offset` exactly, or fails (short reads are errors).
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// The partition's size in bytes.
    fn len(&self) -> u64;
    /// True for an empty partition.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl ReadAt for [u8] {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let end = start
            .checked_add(buf.len())
            .filter(|&e| e <= <[u8]>::len(self))
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(&self[start..end]);
        Ok(())
    }
    fn len(&self) -> u64 {
        <[u8]>::len(self) as u64
    }
}

/// A reference reads as what it points to: `&bytes[..]` is a sized `&dyn ReadAt`.
impl<T: ReadAt + ?Sized> ReadAt for &T {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        (**self).read_exact_at(buf, offset)
    }
    fn len(&self) -> u64 {
        (**self).len()
    }
}

impl ReadAt for std::fs::File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
    }
    fn len(&self) -> u64 {
        use std::io::Seek;
        // A block device's metadata length is 0: its size is where the end is.
        let mut f: &std::fs::File = self;
        f.seek(io::SeekFrom::End(0)).unwrap_or(0)
    }
}

/// What a recognised filesystem uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage {
    /// The filesystem's name as `rescue disks` shows it ("ext4", "vfat", "xfs", ...).
    pub fs: &'static str,
    /// Its label, if it has one.
    pub label: Option<String>,
    /// The allocation unit in bytes (block, cluster).
    pub block_size: u64,
    /// The byte ranges to copy, relative to the partition start: sorted, disjoint, not
    /// adjacent, within the partition, including every piece of metadata.
    pub used: Vec<Range<u64>>,
}

impl Usage {
    /// Bytes in `used`.
    pub fn used_bytes(&self) -> u64 {
        self.used.iter().map(|r| r.end - r.start).sum()
    }

    /// What every parser's answer must be (the fuzz targets assert it): a block size,
    /// and ranges that are non-empty, sorted, disjoint, not adjacent and inside `len`.
    pub fn is_valid_within(&self, len: u64) -> bool {
        self.block_size > 0
            && self.used.iter().all(|r| r.start < r.end && r.end <= len)
            && self.used.windows(2).all(|w| w[0].end < w[1].start)
    }
}

/// The answer for one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Recognised and consistent: copy only `used`.
    Used(Usage),
    /// Copy every byte. `what` names the content if known ("LUKS", "LVM2 PV", "ext4"),
    /// `why` says in a few words why it is copied whole.
    Raw { what: Option<String>, why: String },
}

/// Why a parser gave up on a filesystem it recognised: its metadata is inconsistent or
/// unreadable. The partition is then copied whole with this as the reason.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading {what} at byte {offset}: {source}")]
    Read {
        what: &'static str,
        offset: u64,
        source: io::Error,
    },
    #[error("{0}")]
    Inconsistent(String),
    #[error("{0} is not supported")]
    Unsupported(String),
}

/// One parser: its filesystem's name (for the reason when it gives up) and its probe,
/// which answers None when the partition is not its filesystem.
type Parser = (
    &'static str,
    fn(&dyn ReadAt) -> Option<Result<Usage, Error>>,
);

/// The parsers, tried in order; the first that recognises the partition decides. Each
/// module adds its line here (`("ext4", ext4::probe)`). Formats that are copied whole
/// (LUKS, LVM, RAID, ...: `opaque::identify`) are looked for before any of these, so a
/// filesystem signature inside them (a RAID 1 member starts with the filesystem it
/// mirrors) is not mistaken for the content.
const PARSERS: &[Parser] = &[
    ("ext4", ext4::probe),
    // Before vfat: their signatures are exact, a FAT boot sector is recognised by
    // plausible numbers.
    ("xfs", xfs::probe),
    ("btrfs", btrfs::probe),
    ("ntfs", ntfs::probe),
    ("vfat", fat::probe),
    ("swap", swap::probe),
];

/// The filesystems and formats the parsers recognise, in the order tried (tests use
/// it to expect used blocks where a parser exists).
pub fn parsers() -> Vec<&'static str> {
    PARSERS.iter().map(|(name, _)| *name).collect()
}

/// What to copy of a partition (or a whole-disk filesystem): a format copied whole is
/// `Raw` naming it; otherwise the first parser that recognises it decides; a parser's error becomes `Raw` naming the filesystem and the
/// reason; nothing recognised is `Raw` "not recognised".
pub fn probe(dev: &dyn ReadAt) -> Verdict {
    if let Some((what, why)) = opaque::identify(dev) {
        return Verdict::Raw {
            what: Some(what.to_string()),
            why: why.to_string(),
        };
    }
    probe_with(PARSERS, dev)
}

fn probe_with(parsers: &[Parser], dev: &dyn ReadAt) -> Verdict {
    for (name, parse) in parsers {
        match parse(dev) {
            None => continue,
            Some(Ok(usage)) => return Verdict::Used(usage),
            Some(Err(e)) => {
                return Verdict::Raw {
                    what: Some((*name).to_string()),
                    why: e.to_string(),
                };
            }
        }
    }
    Verdict::Raw {
        what: None,
        why: "not recognised".to_string(),
    }
}

/// Sorts and merges byte ranges (overlapping or adjacent ones become one), drops empty
/// ones and clips them to `0..len`. Every parser ends with it.
pub fn normalise(mut ranges: Vec<Range<u64>>, len: u64) -> Vec<Range<u64>> {
    for r in &mut ranges {
        r.end = r.end.min(len);
    }
    ranges.retain(|r| r.start < r.end);
    ranges.sort_by_key(|r| r.start);
    let mut out: Vec<Range<u64>> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match out.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::single_range_in_vec_init)]
    use super::*;

    #[test]
    fn a_valid_usage_is_sorted_disjoint_not_adjacent_and_inside() {
        let u = |used| Usage {
            fs: "t",
            label: None,
            block_size: 4096,
            used,
        };
        assert!(u(vec![0..10, 11..20]).is_valid_within(20));
        assert!(!u(vec![0..10, 10..20]).is_valid_within(20)); // adjacent
        assert!(!u(vec![11..20, 0..10]).is_valid_within(20)); // unsorted
        assert!(!u(vec![5..5]).is_valid_within(20)); // empty
        assert!(!u(vec![0..21]).is_valid_within(20)); // outside
        assert!(
            !Usage {
                block_size: 0,
                ..u(vec![])
            }
            .is_valid_within(20)
        );
    }

    #[test]
    fn normalise_merges_sorts_and_clips() {
        let got = normalise(vec![10..20, 0..5, 5..7, 15..30, 40..40, 90..200], 100);
        assert_eq!(got, vec![0..7, 10..30, 90..100]);
    }

    fn never(_: &dyn ReadAt) -> Option<Result<Usage, Error>> {
        None
    }
    fn broken(_: &dyn ReadAt) -> Option<Result<Usage, Error>> {
        Some(Err(Error::Inconsistent(
            "bitmap checksum wrong in group 7".into(),
        )))
    }
    fn whole(dev: &dyn ReadAt) -> Option<Result<Usage, Error>> {
        Some(Ok(Usage {
            fs: "testfs",
            label: None,
            block_size: 1,
            used: vec![0..dev.len()],
        }))
    }

    #[test]
    fn probe_takes_the_first_parser_that_recognises_and_names_a_failing_one() {
        let d: &[u8] = &[0u8; 8];
        let none = probe_with(&[("a", never)], &d);
        assert_eq!(
            none,
            Verdict::Raw {
                what: None,
                why: "not recognised".into()
            }
        );
        match probe_with(&[("a", never), ("testfs", whole), ("b", broken)], &d) {
            Verdict::Used(u) => assert_eq!((u.fs, u.used), ("testfs", vec![0..8])),
            v => panic!("{v:?}"),
        }
        let raw = probe_with(&[("a", never), ("ext4", broken), ("c", whole)], &d);
        assert_eq!(
            raw,
            Verdict::Raw {
                what: Some("ext4".into()),
                why: "bitmap checksum wrong in group 7".into()
            }
        );
    }

    #[test]
    fn a_slice_reads_exactly_or_fails() {
        let d = [1u8, 2, 3, 4];
        let mut b = [0u8; 2];
        d[..].read_exact_at(&mut b, 2).unwrap();
        assert_eq!(b, [3, 4]);
        assert!(d[..].read_exact_at(&mut b, 3).is_err());
        assert!(d[..].read_exact_at(&mut b, u64::MAX).is_err());
    }
}
