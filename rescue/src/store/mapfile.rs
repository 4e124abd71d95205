//! GNU ddrescue mapfiles: which byte ranges of an image are good (`+`), could not
//! be read (`-`), or are not there yet (`?`). The format is ddrescue's, so its
//! tools (ddrescuelog) read ours.

use std::fmt::Write as _;

/// A block status in ddrescue's alphabet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    NonTried,
    Bad,
    Finished,
}

impl Status {
    fn ch(self) -> char {
        match self {
            Status::NonTried => '?',
            Status::Bad => '-',
            Status::Finished => '+',
        }
    }

    fn from_ch(c: &str) -> Option<Status> {
        match c {
            "?" => Some(Status::NonTried),
            "-" => Some(Status::Bad),
            "+" => Some(Status::Finished),
            // Non-trimmed, non-scraped: ddrescue's in-between states count as bad.
            "*" | "/" => Some(Status::Bad),
            _ => None,
        }
    }
}

/// The status of every byte of a `size`-byte image, as merged runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Map {
    size: u64,
    /// (start, len, status), sorted, contiguous, covering [0, size).
    runs: Vec<(u64, u64, Status)>,
}

impl Map {
    pub fn new(size: u64) -> Map {
        let runs = if size > 0 {
            vec![(0, size, Status::NonTried)]
        } else {
            Vec::new()
        };
        Map { size, runs }
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Marks [start, start+len) (clipped to the image) with `status`.
    pub fn set(&mut self, start: u64, len: u64, status: Status) {
        let end = start.saturating_add(len).min(self.size);
        if start >= end {
            return;
        }
        let mut out = Vec::with_capacity(self.runs.len() + 2);
        for &(s, l, st) in &self.runs {
            let e = s + l;
            if e <= start || s >= end {
                out.push((s, l, st));
                continue;
            }
            if s < start {
                out.push((s, start - s, st));
            }
            if e > end {
                out.push((end, e - end, st));
            }
        }
        out.push((start, end - start, status));
        out.sort_by_key(|r| r.0);
        let mut merged: Vec<(u64, u64, Status)> = Vec::with_capacity(out.len());
        for r in out {
            if let Some(last) = merged.last_mut()
                && last.2 == r.2
                && last.0 + last.1 == r.0
            {
                last.1 += r.1;
                continue;
            }
            merged.push(r);
        }
        self.runs = merged;
    }

    /// Total bytes with `status`.
    pub fn bytes(&self, status: Status) -> u64 {
        self.runs
            .iter()
            .filter(|r| r.2 == status)
            .map(|r| r.1)
            .sum()
    }

    /// The runs with `status`.
    pub fn ranges(&self, status: Status) -> Vec<(u64, u64)> {
        self.runs
            .iter()
            .filter(|r| r.2 == status)
            .map(|r| (r.0, r.1))
            .collect()
    }

    /// Renders the mapfile text.
    pub fn render(&self, header: &str) -> String {
        let mut s = String::new();
        for line in header.lines() {
            let _ = writeln!(s, "# {line}");
        }
        let (pos, status) = match self.runs.iter().find(|r| r.2 == Status::NonTried) {
            Some(r) => (r.0, '?'),
            None => (self.size, '+'),
        };
        let _ = writeln!(s, "# current_pos  current_status  current_pass");
        let _ = writeln!(s, "0x{pos:08X}     {status}               1");
        let _ = writeln!(s, "#      pos        size  status");
        for &(start, len, st) in &self.runs {
            let _ = writeln!(s, "0x{start:08X}  0x{len:08X}  {}", st.ch());
        }
        s
    }

    /// Parses a mapfile for an image of `size` bytes. Lines it does not
    /// understand are an error, so a damaged mapfile is never half-trusted.
    pub fn parse(text: &str, size: u64) -> Result<Map, String> {
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
            let st =
                Status::from_ch(f[2]).ok_or(format!("line {}: unknown status {}", i + 1, f[2]))?;
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
        m.set(0, 50, Status::Finished);
        m.set(50, 50, Status::Finished);
        assert_eq!(m.ranges(Status::Finished), vec![(0, 100)]);
        m.set(10, 5, Status::Bad);
        assert_eq!(m.ranges(Status::Bad), vec![(10, 5)]);
        assert_eq!(m.ranges(Status::Finished), vec![(0, 10), (15, 85)]);
        assert_eq!(m.bytes(Status::Finished), 95);
        m.set(90, 1000, Status::NonTried);
        assert_eq!(m.bytes(Status::NonTried), 10);
    }

    #[test]
    fn render_parse_roundtrip() {
        let mut m = Map::new(1 << 20);
        m.set(0, 4096, Status::Finished);
        m.set(4096, 512, Status::Bad);
        m.set(4608, 8192, Status::Finished);
        let text = m.render("Mapfile. Created by usb4rescue");
        assert!(text.contains("0x00001000  0x00000200  -"));
        assert_eq!(Map::parse(&text, 1 << 20).unwrap(), m);
        assert!(Map::parse("0x0 0x10 ?\nnonsense\n", 16).is_err());
    }
}
