//! Which bytes of a disk a used-block backup leaves out: each partition (or a
//! filesystem on the whole disk) is probed read-only by `fsmap`; the free space of
//! those it recognises becomes the disk's free map, stored as zeros. Everything
//! outside partitions (tables, gaps, the end), every partition not recognised or
//! found inconsistent, and partitions that overlap another are read whole.

use std::io;
use std::ops::Range;

use fsmap::{ReadAt, Verdict};

use crate::proto::msg::{FreeMap, MAX_FREE_PARTS, MAX_FREE_RANGES, PartUse};
use crate::system::partitions::{self, PartitionTable};
use crate::system::source::DiskReader;

/// Free ranges shorter than this are read anyway: they save little and would
/// make the map and the chunks' free lists long.
const MIN_FREE: u64 = 4096;

/// A window of the disk being backed up, as the parsers read it: plain reads,
/// no retries (a read error makes the parser give up, and the partition is then
/// read whole, sector by sector where needed).
pub(crate) struct DiskWindow<'a> {
    pub(crate) reader: &'a DiskReader,
    pub(crate) start: u64,
    pub(crate) len: u64,
}

impl ReadAt for DiskWindow<'_> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let end = offset.checked_add(buf.len() as u64);
        if end.is_none_or(|e| e > self.len) {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.reader.read_plain(buf, self.start + offset)
    }
    fn len(&self) -> u64 {
        self.len
    }
}

/// The free map of a disk: `name` is the disk's ("sda"), `sector` its logical
/// sector size. Never fails: what cannot be read or recognised is read whole.
pub(crate) fn plan(reader: &DiskReader, name: &str, sector: u32) -> FreeMap {
    plan_with(reader, name, sector, fsmap::probe)
}

fn plan_with(
    reader: &DiskReader,
    name: &str,
    sector: u32,
    probe: impl Fn(&dyn ReadAt) -> Verdict,
) -> FreeMap {
    let size = reader.size();
    let whole = DiskWindow {
        reader,
        start: 0,
        len: size,
    };
    let table = partitions::read_table_at(&whole, sector).ok().flatten();
    let spans = match &table {
        Some(t) => spans_of(t, name, size),
        None => vec![(name.to_string(), 0..size)],
    };
    let mut map = FreeMap::default();
    for (i, (pname, span)) in spans.iter().enumerate() {
        let overlap = spans
            .iter()
            .enumerate()
            .find(|(j, (_, o))| *j != i && o.start < span.end && span.start < o.end);
        let verdict = match overlap {
            Some((_, (other, _))) => Verdict::Raw {
                what: None,
                why: format!("overlaps {other}"),
            },
            None => probe(&DiskWindow {
                reader,
                start: span.start,
                len: span.end - span.start,
            }),
        };
        let (part, free) = decide(pname, span, verdict);
        map.ranges.extend(free);
        if map.parts.len() < MAX_FREE_PARTS {
            map.parts.push(part);
        }
    }
    // The tables themselves are never free, whatever a partition claims.
    let keep = table
        .as_ref()
        .map_or_else(Vec::new, |t| table_areas(t, sector, size));
    map.ranges = cap(subtract(map.ranges, &keep));
    map
}

/// The partitions to probe, clipped to the disk, extended-partition containers
/// left out (their logical partitions are listed).
fn spans_of(t: &PartitionTable, disk: &str, size: u64) -> Vec<(String, Range<u64>)> {
    let sep = if disk.ends_with(|c: char| c.is_ascii_digit()) {
        "p"
    } else {
        ""
    };
    t.entries
        .iter()
        .filter(|e| !matches!(e.type_id.as_str(), "0x05" | "0x0f" | "0x85"))
        .map(|e| {
            let end = e.start_bytes.saturating_add(e.size_bytes).min(size);
            (
                format!("{disk}{sep}{}", e.number),
                e.start_bytes.min(end)..end,
            )
        })
        .filter(|(_, r)| !r.is_empty())
        .collect()
}

/// The record of one partition and its free ranges (on the disk).
fn decide(name: &str, span: &Range<u64>, verdict: Verdict) -> (PartUse, Vec<(u64, u64)>) {
    let mut part = PartUse {
        name: name.to_string(),
        start: span.start,
        end: span.end,
        ..Default::default()
    };
    match verdict {
        Verdict::Used(u) => {
            let len = span.end - span.start;
            let used = fsmap::normalise(u.used, len);
            let mut free = Vec::new();
            let mut at = 0u64;
            for r in used.iter().chain(std::iter::once(&(len..len))) {
                if r.start >= at.saturating_add(MIN_FREE) {
                    free.push((span.start + at, span.start + r.start));
                }
                at = at.max(r.end);
            }
            part.fs = Some(u.fs.to_string());
            part.label = u.label;
            part.used = Some(len - free.iter().map(|(s, e)| e - s).sum::<u64>());
            (part, free)
        }
        Verdict::Raw { what, why } => {
            part.fs = what;
            part.why = why;
            (part, Vec::new())
        }
    }
}

/// Where the partition table lives: the first sectors (MBR, GPT header and
/// array) and, for GPT, the backup array and header at the end.
fn table_areas(t: &PartitionTable, sector: u32, size: u64) -> Vec<(u64, u64)> {
    let s = u64::from(sector);
    let array = t.gpt_array_bytes.max(16 << 10);
    let head = 2 * s + array;
    let mut v = vec![(0, head.min(size))];
    if t.kind == "gpt" {
        v.push((size.saturating_sub(s + array), size));
    }
    v
}

/// `free` without the bytes of `keep` (both sorted by start).
fn subtract(free: Vec<(u64, u64)>, keep: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::with_capacity(free.len());
    for (mut s, e) in free {
        for &(ks, ke) in keep {
            if ks < e && s < ke {
                if ks > s {
                    out.push((s, ks));
                }
                s = s.max(ke);
            }
        }
        if s < e {
            out.push((s, e));
        }
    }
    out
}

/// At most MAX_FREE_RANGES ranges: the smallest are dropped (read), so the map
/// stays within what a peer accepts.
fn cap(mut free: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    free.sort_by_key(|&(s, _)| s);
    if free.len() <= MAX_FREE_RANGES {
        return free;
    }
    free.sort_by_key(|&(s, e)| std::cmp::Reverse(e - s));
    free.truncate(MAX_FREE_RANGES);
    free.sort_by_key(|&(s, _)| s);
    free
}

/// One line per partition for the user: "sda2 ext4 'root': 412 MiB used of 900
/// MiB: used blocks only", "sda3: LUKS: copied whole (not a filesystem rescue
/// reads)".
pub(crate) fn describe(p: &PartUse) -> String {
    use crate::util::{Escaped, human_bytes};
    let what =
        p.fs.as_deref()
            .map(|f| format!(" {}", Escaped(f)))
            .unwrap_or_default();
    let label = p
        .label
        .as_deref()
        .filter(|l| !l.is_empty())
        .map(|l| format!(" '{}'", Escaped(l)))
        .unwrap_or_default();
    match p.used {
        Some(u) => format!(
            "{}{what}{label}: {} used of {}: used blocks only",
            p.name,
            human_bytes(u),
            human_bytes(p.end - p.start)
        ),
        // Some reasons say it already ("encrypted: copied whole").
        None if p.why.ends_with("copied whole") => {
            format!("{}{what}{label}: {}", p.name, Escaped(&p.why))
        }
        None => format!(
            "{}{what}{label}: copied whole ({})",
            p.name,
            Escaped(&p.why)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fsmap::Usage;

    /// A "filesystem" whose first 8 bytes are "USEDFS01", followed by its used
    /// ranges as (start u32, len u32) pairs until a zero length; "BROKENFS"
    /// stands for one whose metadata is inconsistent.
    fn fake(dev: &dyn ReadAt) -> Verdict {
        let mut b = [0u8; 64];
        if dev.read_exact_at(&mut b, 0).is_err() {
            return Verdict::Raw {
                what: None,
                why: "unreadable".into(),
            };
        }
        if &b[..8] == b"BROKENFS" {
            return Verdict::Raw {
                what: Some("fakefs".into()),
                why: "bitmap checksum wrong".into(),
            };
        }
        if &b[..8] != b"USEDFS01" {
            return Verdict::Raw {
                what: None,
                why: "not recognised".into(),
            };
        }
        let mut used = Vec::new();
        for p in b[8..].chunks(8) {
            let s = u64::from(u32::from_le_bytes([p[0], p[1], p[2], p[3]]));
            let l = u64::from(u32::from_le_bytes([p[4], p[5], p[6], p[7]]));
            if l == 0 {
                break;
            }
            used.push(s..s + l);
        }
        Verdict::Used(Usage {
            fs: "fakefs",
            label: Some("root".into()),
            block_size: 4096,
            used,
        })
    }

    fn fs_header(tag: &[u8; 8], used: &[(u32, u32)]) -> Vec<u8> {
        let mut v = tag.to_vec();
        for (s, l) in used {
            v.extend(s.to_le_bytes());
            v.extend(l.to_le_bytes());
        }
        v
    }

    fn reader(img: Vec<u8>) -> DiskReader {
        let size = img.len() as u64;
        DiskReader::new(Box::new(Mem(img)), None, 512, size)
    }

    struct Mem(Vec<u8>);
    impl crate::system::source::BlockRead for Mem {
        fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
            let s = (offset as usize).min(self.0.len());
            let n = buf.len().min(self.0.len() - s);
            buf[..n].copy_from_slice(&self.0[s..s + n]);
            Ok(n)
        }
    }

    /// An MBR disk of 4 MiB: partition 1 at 1 MiB (1 MiB long), partition 2 at
    /// 2 MiB (1 MiB long).
    fn mbr_disk(p1: &[u8], p2: &[u8]) -> Vec<u8> {
        let mut img = vec![0u8; 4 << 20];
        for (i, start) in [(0usize, 2048u32), (1, 4096)] {
            let e = 446 + i * 16;
            img[e + 4] = 0x83;
            img[e + 8..e + 12].copy_from_slice(&start.to_le_bytes());
            img[e + 12..e + 16].copy_from_slice(&2048u32.to_le_bytes());
        }
        img[510] = 0x55;
        img[511] = 0xAA;
        img[1 << 20..(1 << 20) + p1.len()].copy_from_slice(p1);
        img[2 << 20..(2 << 20) + p2.len()].copy_from_slice(p2);
        img
    }

    #[test]
    fn free_space_of_recognised_partitions_only_and_a_broken_one_whole() {
        let p1 = fs_header(b"USEDFS01", &[(0, 4096), (65536, 8192)]);
        let p2 = fs_header(b"BROKENFS", &[(0, 4096)]);
        let r = reader(mbr_disk(&p1, &p2));
        let m = plan_with(&r, "sda", 512, fake);
        let mb = 1u64 << 20;
        assert_eq!(
            m.ranges,
            vec![(mb + 4096, mb + 65536), (mb + 65536 + 8192, 2 * mb)]
        );
        assert_eq!(m.parts.len(), 2);
        assert_eq!(m.parts[0].used, Some(4096 + 8192));
        assert_eq!(
            describe(&m.parts[0]),
            "sda1 fakefs 'root': 12 KiB used of 1 MiB: used blocks only"
        );
        assert_eq!(m.parts[1].used, None);
        assert_eq!(
            describe(&m.parts[1]),
            "sda2 fakefs: copied whole (bitmap checksum wrong)"
        );
        assert!(m.check_for(r.size()).is_ok());
    }

    #[test]
    fn a_whole_disk_filesystem_keeps_nothing_of_a_table_and_overlaps_are_read_whole() {
        let mut img = fs_header(b"USEDFS01", &[(0, 4096)]);
        img.resize(1 << 20, 0);
        let m = plan_with(&reader(img), "vdb", 512, fake);
        assert_eq!(m.ranges, vec![(4096, 1 << 20)]);
        assert_eq!(m.parts[0].name, "vdb");
        // Two partitions over the same bytes: neither is trusted.
        let p = fs_header(b"USEDFS01", &[(0, 4096)]);
        let mut img = mbr_disk(&p, &p);
        img[446 + 16 + 8..446 + 16 + 12].copy_from_slice(&3000u32.to_le_bytes());
        let m = plan_with(&reader(img), "nvme0n1", 512, fake);
        assert!(m.ranges.is_empty(), "{:?}", m.ranges);
        assert_eq!(m.parts[0].name, "nvme0n1p1");
        assert!(m.parts.iter().all(|p| p.why.starts_with("overlaps")));
    }

    #[test]
    fn small_gaps_are_read_and_the_map_is_capped() {
        let (p, free) = decide(
            "sda1",
            &(0..100_000),
            Verdict::Used(Usage {
                fs: "x",
                label: None,
                block_size: 1024,
                used: vec![0..1024, 2048..3072, 50_000..60_000],
            }),
        );
        assert_eq!(free, vec![(3072, 50_000), (60_000, 100_000)]);
        assert_eq!(p.used, Some(100_000 - 46_928 - 40_000));
        let many: Vec<(u64, u64)> = (0..MAX_FREE_RANGES as u64 + 5)
            .map(|i| (i * 10_000, i * 10_000 + 5000 + i % 7))
            .collect();
        let c = cap(many);
        assert_eq!(c.len(), MAX_FREE_RANGES);
        assert!(c.windows(2).all(|w| w[0].1 <= w[1].0));
        assert_eq!(
            subtract(vec![(0, 100)], &[(10, 20), (50, 60)]),
            [(0, 10), (20, 50), (60, 100)]
        );
    }
}
