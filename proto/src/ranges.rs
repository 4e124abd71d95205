//! Chunk index ranges, as BACKUP_READY and RESTORE_BEGIN carry them: always
//! sorted, merged and without empty ranges, whoever made them (a peer's are
//! normalised as they are decoded), so a cursor over them and the figures
//! drawn from them cannot be confused.

use std::ops::Deref;

use serde::{Deserialize, Deserializer, Serialize};

/// Ranges of chunk indices `[start, end)`, sorted and disjoint: on the wire a
/// JSON array of `[start, end]` pairs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct ChunkRanges(Vec<(u64, u64)>);

impl ChunkRanges {
    pub fn new() -> Self {
        ChunkRanges(Vec::new())
    }

    /// Adds chunk `index`; cheap when indices come in ascending order.
    pub fn push(&mut self, index: u64) {
        match self.0.last_mut() {
            Some(r) if r.1 == index => r.1 += 1,
            Some(r) if r.1 > index => {
                let mut all = std::mem::take(&mut self.0);
                all.push((index, index + 1));
                *self = ChunkRanges::from(all);
            }
            _ => self.0.push((index, index + 1)),
        }
    }

    /// The ranges cut to the first `count` chunks (a disk's chunks: what a
    /// peer said beyond them means nothing).
    pub fn clipped(&self, count: u64) -> ChunkRanges {
        ChunkRanges(
            self.0
                .iter()
                .filter(|r| r.0 < count)
                .map(|&(s, e)| (s, e.min(count)))
                .collect(),
        )
    }

    /// How many chunks the ranges hold.
    pub fn held(&self) -> u64 {
        self.0.iter().map(|(s, e)| e - s).sum()
    }

    /// The first index >= `i` that is not held.
    pub fn next_missing(&self, i: u64) -> u64 {
        let after = self.0.partition_point(|r| r.1 <= i);
        match self.0.get(after) {
            Some(&(s, e)) if s <= i => e,
            _ => i,
        }
    }
}

impl Deref for ChunkRanges {
    type Target = [(u64, u64)];

    fn deref(&self) -> &[(u64, u64)] {
        &self.0
    }
}

impl From<Vec<(u64, u64)>> for ChunkRanges {
    /// Sorts and merges the ranges, dropping empty ones.
    fn from(mut ranges: Vec<(u64, u64)>) -> Self {
        ranges.retain(|&(s, e)| s < e);
        ranges.sort_unstable();
        let mut out: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
        for (s, e) in ranges {
            match out.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => out.push((s, e)),
            }
        }
        ChunkRanges(out)
    }
}

impl<'de> Deserialize<'de> for ChunkRanges {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Vec::<(u64, u64)>::deserialize(d).map(ChunkRanges::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalised_when_made_or_decoded() {
        let r = ChunkRanges::from(vec![(10, 20), (0, 3), (2, 4), (5, 5), (9, 2), (15, 40)]);
        assert_eq!(&r[..], [(0, 4), (10, 40)]);
        assert_eq!(r.clipped(30)[..], [(0, 4), (10, 30)]);
        assert_eq!(r.clipped(3)[..], [(0, 3)]);
        assert!(ChunkRanges::from(Vec::new()).is_empty());
        let d: ChunkRanges = serde_json::from_str("[[10,20],[0,3],[2,4],[7,1]]").unwrap();
        assert_eq!(&d[..], [(0, 4), (10, 20)]);
        assert_eq!(serde_json::to_string(&d).unwrap(), "[[0,4],[10,20]]");
        assert!(serde_json::from_str::<ChunkRanges>("[[1,2,3]]").is_err());
    }

    #[test]
    fn peer_ranges_are_sorted_merged_and_clipped() {
        let r = vec![
            (5, 2),
            (10, 20),
            (0, 3),
            (2, 4),
            (18, u64::MAX),
            (100, 200),
            (7, 7),
        ];
        assert_eq!(ChunkRanges::from(r).clipped(30)[..], [(0, 4), (10, 30)]);
        assert_eq!(ChunkRanges::from(Vec::new()).clipped(30)[..], []);
    }

    #[test]
    fn push_and_cursor() {
        let mut r = ChunkRanges::new();
        for i in [0, 1, 2, 5, 6, 9, 1, 3] {
            r.push(i);
        }
        assert_eq!(&r[..], [(0, 4), (5, 7), (9, 10)]);
        assert_eq!(r.held(), 7);
        assert_eq!(r.next_missing(0), 4);
        assert_eq!(r.next_missing(4), 4);
        assert_eq!(r.next_missing(5), 7);
        assert_eq!(r.next_missing(8), 8);
        assert_eq!(r.next_missing(9), 10);
        assert_eq!(r.next_missing(100), 100);
    }
}
