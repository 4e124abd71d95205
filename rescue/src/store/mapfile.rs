//! GNU ddrescue mapfiles: which byte ranges of an image are good (`+`), could not
//! be read (`-`), or are not there yet (`?`). The format is ddrescue's, so its
//! tools (ddrescuelog) read ours.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// A block status in ddrescue's alphabet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockStatus {
    NonTried,
    Bad,
    Finished,
}

impl BlockStatus {
    fn ch(self) -> char {
        match self {
            BlockStatus::NonTried => '?',
            BlockStatus::Bad => '-',
            BlockStatus::Finished => '+',
        }
    }

    fn from_ch(c: &str) -> Option<BlockStatus> {
        match c {
            "?" => Some(BlockStatus::NonTried),
            "-" => Some(BlockStatus::Bad),
            "+" => Some(BlockStatus::Finished),
            // Non-trimmed, non-scraped: ddrescue's in-between states count as bad.
            "*" | "/" => Some(BlockStatus::Bad),
            _ => None,
        }
    }
}

/// The status of every byte of a `size`-byte image, as merged runs.
///
/// Kept in a B-tree keyed by run start, so marking a range costs O(log n) plus
/// the runs it replaces: a failing disk (or a hostile peer) can report tens of
/// thousands of unreadable ranges per chunk, and re-sorting every run for each
/// of them made one such chunk cost seconds of CPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Map {
    size: u64,
    /// start -> (end, status): contiguous, covering [0, size), and no two
    /// neighbours with the same status.
    runs: BTreeMap<u64, (u64, BlockStatus)>,
}

impl Map {
    pub fn new(size: u64) -> Map {
        let mut runs = BTreeMap::new();
        if size > 0 {
            runs.insert(0, (size, BlockStatus::NonTried));
        }
        Map { size, runs }
    }

    /// Marks [start, start+len) (clipped to the image) with `status`.
    pub(crate) fn set(&mut self, start: u64, len: u64, status: BlockStatus) {
        let end = start.saturating_add(len).min(self.size);
        if start < end {
            self.replace(start, end, &[(start, end, status)]);
        }
    }

    /// Marks one received chunk: [start, start+len) finished except the
    /// unreadable `bad` ranges (offsets within the chunk, in any order,
    /// possibly overlapping). One pass for the whole chunk, so a chunk with
    /// thousands of bad ranges costs O(k log k), not a map update per range.
    pub(crate) fn set_chunk(&mut self, start: u64, len: u64, bad: &[(u32, u32)]) {
        let end = start.saturating_add(len).min(self.size);
        if start >= end {
            return;
        }
        let mut holes: Vec<(u64, u64)> = bad
            .iter()
            .map(|&(o, l)| {
                let s = start.saturating_add(u64::from(o)).min(end);
                (s, s.saturating_add(u64::from(l)).min(end))
            })
            .filter(|h| h.0 < h.1)
            .collect();
        if !holes.is_sorted() {
            holes.sort_unstable();
        }
        let mut runs: Vec<(u64, u64, BlockStatus)> = Vec::with_capacity(2 * holes.len() + 1);
        let mut at = start;
        for (s, e) in holes {
            match runs.last_mut() {
                // Overlapping or touching the previous hole: extend it.
                Some(last) if last.2 == BlockStatus::Bad && s <= last.1 => last.1 = last.1.max(e),
                _ => {
                    if s > at {
                        runs.push((at, s, BlockStatus::Finished));
                    }
                    runs.push((s, e, BlockStatus::Bad));
                }
            }
            at = runs.last().map_or(at, |r| r.1);
        }
        if at < end {
            runs.push((at, end, BlockStatus::Finished));
        }
        self.replace(start, end, &runs);
    }

    /// Replaces [start, end) by `runs`: (start, end, status), in order,
    /// contiguous, covering exactly that range, neighbours differing.
    fn replace(&mut self, start: u64, end: u64, runs: &[(u64, u64, BlockStatus)]) {
        self.split_at(start);
        self.split_at(end);
        while let Some((&s, _)) = self.runs.range(start..end).next() {
            self.runs.remove(&s);
        }
        for (i, &(s, e, st)) in runs.iter().enumerate() {
            // Only the first run can merge with what precedes it.
            if i == 0
                && let Some((&ps, &(pe, pst))) = self.runs.range(..s).next_back()
                && pe == s
                && pst == st
            {
                self.runs.insert(ps, (e, st));
            } else {
                self.runs.insert(s, (e, st));
            }
        }
        // And only the last with what follows.
        if let Some(&(ne, nst)) = self.runs.get(&end)
            && let Some((&ps, &(_, pst))) = self.runs.range(..end).next_back()
            && pst == nst
        {
            self.runs.remove(&end);
            self.runs.insert(ps, (ne, nst));
        }
    }

    /// Makes a run start at `at` (splitting the one that covers it).
    fn split_at(&mut self, at: u64) {
        if let Some((&s, &(e, st))) = self.runs.range(..=at).next_back()
            && s < at
            && at < e
        {
            self.runs.insert(s, (at, st));
            self.runs.insert(at, (e, st));
        }
    }

    /// The runs in order, as (start, len, status).
    fn iter(&self) -> impl Iterator<Item = (u64, u64, BlockStatus)> + '_ {
        self.runs.iter().map(|(&s, &(e, st))| (s, e - s, st))
    }

    /// Total bytes with `status`.
    pub(crate) fn bytes(&self, status: BlockStatus) -> u64 {
        self.iter().filter(|r| r.2 == status).map(|r| r.1).sum()
    }

    /// The runs with `status`.
    #[cfg(test)]
    pub(crate) fn ranges(&self, status: BlockStatus) -> Vec<(u64, u64)> {
        self.iter()
            .filter(|r| r.2 == status)
            .map(|r| (r.0, r.1))
            .collect()
    }

    /// Bytes with `status` within [from, to).
    fn bytes_in(&self, from: u64, to: u64, status: BlockStatus) -> u64 {
        let first = self
            .runs
            .range(..=from)
            .next_back()
            .map_or(from, |(&s, _)| s);
        self.runs
            .range(first..to)
            .filter(|(_, r)| r.1 == status)
            .map(|(&s, &(e, _))| e.min(to).saturating_sub(s.max(from)))
            .sum()
    }

    /// The parts of the image outside `held` (sorted, disjoint (start, len)).
    fn outside(&self, held: &[(u64, u64)]) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut at = 0;
        for &(s, l) in held {
            if s > at {
                out.push((at, s - at));
            }
            at = at.max(s.saturating_add(l));
        }
        if at < self.size {
            out.push((at, self.size - at));
        }
        out
    }

    /// How the map disagrees with `held`, the byte ranges (start, len; sorted,
    /// disjoint) whose chunks the journal holds: (bytes held but marked not
    /// received, bytes marked received or unreadable but not held).
    pub(crate) fn disagreement(&self, held: &[(u64, u64)]) -> (u64, u64) {
        let unmarked = held
            .iter()
            .map(|&(s, l)| self.bytes_in(s, s.saturating_add(l), BlockStatus::NonTried))
            .sum();
        let claimed = self
            .outside(held)
            .iter()
            .map(|&(s, l)| l - self.bytes_in(s, s + l, BlockStatus::NonTried))
            .sum();
        (unmarked, claimed)
    }

    /// Makes the map agree with the journal, which is written only after the
    /// data it describes is synced and so is the truth about what is held:
    /// outside `held` nothing is received; inside, what the map still calls
    /// not received is finished. Unreadable ranges inside `held` stay (the map
    /// is written before the journal claims a chunk with unreadable sectors).
    pub(crate) fn follow_journal(&mut self, held: &[(u64, u64)]) {
        for (s, l) in self.outside(held) {
            self.set(s, l, BlockStatus::NonTried);
        }
        for &(s, l) in held {
            let e = s.saturating_add(l).min(self.size);
            let first = self.runs.range(..=s).next_back().map_or(s, |(&k, _)| k);
            let todo: Vec<(u64, u64)> = self
                .runs
                .range(first..e)
                .filter(|(_, r)| r.1 == BlockStatus::NonTried)
                .map(|(&rs, &(re, _))| (rs.max(s), re.min(e)))
                .collect();
            for (a, b) in todo {
                self.set(a, b - a, BlockStatus::Finished);
            }
        }
    }

    /// Renders the mapfile text.
    pub fn render(&self, header: &str) -> String {
        let mut s = String::new();
        for line in header.lines() {
            let _ = writeln!(s, "# {line}");
        }
        let (pos, status) = match self.iter().find(|r| r.2 == BlockStatus::NonTried) {
            Some(r) => (r.0, '?'),
            None => (self.size, '+'),
        };
        let _ = writeln!(s, "# current_pos  current_status  current_pass");
        let _ = writeln!(s, "0x{pos:08X}     {status}               1");
        let _ = writeln!(s, "#      pos        size  status");
        for (start, len, st) in self.iter() {
            let _ = writeln!(s, "0x{start:08X}  0x{len:08X}  {}", st.ch());
        }
        s
    }

    /// Parses a mapfile for an image of `size` bytes. Lines it does not
    /// understand are an error, so a damaged mapfile is never half-trusted.
    pub(crate) fn parse(text: &str, size: u64) -> Result<Map, String> {
        let mut map = Map::new(size);
        let mut seen_status_line = false;
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let f: Vec<&str> = line.split_whitespace().collect();
            if !seen_status_line {
                seen_status_line = true;
                if f.len() >= 2 && f[0].starts_with("0x") {
                    continue;
                }
            }
            if f.len() != 3 {
                return Err(format!("line {}: expected 'pos size status'", i + 1));
            }
            let num = |s: &str| {
                let s = s.trim_start_matches("0x").trim_start_matches("0X");
                u64::from_str_radix(s, 16).map_err(|_| format!("line {}: bad number", i + 1))
            };
            let (pos, len) = (num(f[0])?, num(f[1])?);
            let st = BlockStatus::from_ch(f[2]).ok_or(format!(
                "line {}: unknown status {}",
                i + 1,
                f[2]
            ))?;
            map.set(pos, len, st);
        }
        Ok(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_merges_and_splits() {
        let mut m = Map::new(100);
        m.set(0, 50, BlockStatus::Finished);
        m.set(50, 50, BlockStatus::Finished);
        assert_eq!(m.ranges(BlockStatus::Finished), vec![(0, 100)]);
        m.set(10, 5, BlockStatus::Bad);
        assert_eq!(m.ranges(BlockStatus::Bad), vec![(10, 5)]);
        assert_eq!(m.ranges(BlockStatus::Finished), vec![(0, 10), (15, 85)]);
        assert_eq!(m.bytes(BlockStatus::Finished), 95);
        m.set(90, 1000, BlockStatus::NonTried);
        assert_eq!(m.bytes(BlockStatus::NonTried), 10);
    }

    #[test]
    fn set_agrees_with_a_byte_by_byte_model() {
        let mut m = Map::new(300);
        let mut model = vec![BlockStatus::NonTried; 300];
        let mut x = 12345u64;
        let all = [
            BlockStatus::NonTried,
            BlockStatus::Bad,
            BlockStatus::Finished,
        ];
        for _ in 0..2000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let (start, len, st) = (x % 310, (x >> 20) % 40, all[(x >> 40) as usize % 3]);
            let mut mark = |from: u64, n: u64, st: BlockStatus| {
                let to = (from + n).min(300).min(start + len);
                for b in model.iter_mut().take(to as usize).skip(from as usize) {
                    *b = st;
                }
            };
            let n = (x >> 60) as u32;
            if n < 6 {
                m.set(start, len, st);
                mark(start, len, st);
            } else {
                // A chunk with bad ranges, unsorted, overlapping, sticking out.
                let bad: Vec<(u32, u32)> = (0..n - 6)
                    .map(|k| {
                        let y = x.rotate_right(7 * k);
                        ((y % 45) as u32, ((y >> 8) % 9) as u32)
                    })
                    .collect();
                m.set_chunk(start, len, &bad);
                mark(start, len, BlockStatus::Finished);
                for &(o, l) in &bad {
                    mark(start + u64::from(o), u64::from(l), BlockStatus::Bad);
                }
            }
            let runs: Vec<_> = m.iter().collect();
            let mut at = 0;
            for (i, &(s, l, st)) in runs.iter().enumerate() {
                assert_eq!(s, at, "runs are contiguous");
                assert!(l > 0);
                assert!(i == 0 || runs[i - 1].2 != st, "neighbours are merged");
                assert!(model[s as usize..(s + l) as usize].iter().all(|&b| b == st));
                at = s + l;
            }
            assert_eq!(at, 300);
        }
    }

    #[test]
    fn many_unreadable_ranges_per_chunk_are_not_quadratic() {
        // A failing disk with every other sector bad: 16,384 ranges in each of
        // 24 chunks of 8 MiB, marked as ImageSink::write does. Re-sorting the
        // runs for every range took minutes; well under a second here, 6 s in a
        // debug build on a machine at load 16. The bound only catches quadratic
        // behaviour, so it leaves room for a loaded machine.
        const CHUNK: u64 = 8 << 20;
        let t = std::time::Instant::now();
        let mut m = Map::new(24 * CHUNK);
        for c in 0..24 {
            let bad: Vec<(u32, u32)> = (0..16_384u32).map(|r| (r * 512, 256)).collect();
            m.set_chunk(c * CHUNK, CHUNK, &bad);
        }
        let took = t.elapsed();
        assert_eq!(m.ranges(BlockStatus::Bad).len(), 24 * 16_384);
        assert_eq!(m.bytes(BlockStatus::Bad), 24 * 16_384 * 256);
        assert_eq!(m.bytes(BlockStatus::NonTried), 0);
        assert!(took.as_secs() < 60, "24 chunks took {took:?}");
    }

    #[test]
    fn a_map_behind_or_ahead_of_the_journal_is_made_to_follow_it() {
        // Chunks of 10 bytes; the journal holds chunks 0-5 and 8. The map was
        // last written after chunk 2 (with an unreadable range in chunk 1) and
        // still marks chunk 7, whose journal record was dropped as damaged.
        let mut m = Map::new(100);
        m.set_chunk(0, 30, &[(13, 4)]);
        m.set(70, 10, BlockStatus::Finished);
        let held = [(0, 60), (80, 10)];
        assert_eq!(m.disagreement(&held), (40, 10));
        m.follow_journal(&held);
        assert_eq!(m.disagreement(&held), (0, 0));
        assert_eq!(m.ranges(BlockStatus::Bad), vec![(13, 4)]);
        assert_eq!(
            m.ranges(BlockStatus::Finished),
            vec![(0, 13), (17, 43), (80, 10)]
        );
        assert_eq!(m.ranges(BlockStatus::NonTried), vec![(60, 20), (90, 10)]);
        // A map that agrees is left as it is.
        let before = m.clone();
        m.follow_journal(&held);
        assert_eq!(m, before);
    }

    #[test]
    fn render_parse_roundtrip() {
        let mut m = Map::new(1 << 20);
        m.set(0, 4096, BlockStatus::Finished);
        m.set(4096, 512, BlockStatus::Bad);
        m.set(4608, 8192, BlockStatus::Finished);
        let text = m.render("Mapfile. Created by usb4rescue");
        assert!(text.contains("0x00001000  0x00000200  -"));
        assert_eq!(Map::parse(&text, 1 << 20).unwrap(), m);
        assert!(Map::parse("0x0 0x10 ?\nnonsense\n", 16).is_err());
    }
}
