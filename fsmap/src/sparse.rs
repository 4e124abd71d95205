//! A sparse image in memory (zeros where nothing was stored) and a reader that records
//! what a parser reads: the fuzz targets' input format, whose seeds are the few
//! metadata blocks a parser read from a real image (a few KiB standing for 300 MiB).

use std::cell::RefCell;
use std::io;
use std::ops::Range;

use crate::util::{le32, le64};
use crate::{Error, ReadAt, Usage};

/// Pieces of data at offsets in an image of `len` bytes; everything else reads as zeros.
#[derive(Debug, Clone, Default)]
pub struct Sparse {
    len: u64,
    /// Sorted by offset, disjoint.
    pieces: Vec<(u64, Vec<u8>)>,
}

impl Sparse {
    /// Decodes `len u64 LE`, then records `offset u64 LE, n u32 LE, n bytes` (a record
    /// cut short keeps what it has). Overlapping records: the later one wins where
    /// they overlap only in that the earlier one is dropped.
    pub fn decode(data: &[u8]) -> Sparse {
        let mut s = Sparse {
            len: le64(data, 0),
            pieces: Vec::new(),
        };
        let mut at = 8usize;
        while at + 12 <= data.len() {
            let off = le64(data, at);
            let n = le32(data, at + 8) as usize;
            at += 12;
            let n = n.min(data.len() - at);
            s.insert(off, data[at..at + n].to_vec());
            at += n;
        }
        s
    }

    /// The encoding `decode` reads.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.len.to_le_bytes().to_vec();
        for (off, d) in &self.pieces {
            out.extend_from_slice(&off.to_le_bytes());
            out.extend_from_slice(&(d.len() as u32).to_le_bytes());
            out.extend_from_slice(d);
        }
        out
    }

    /// The parts of `dev` within `ranges`, in an image as long as `dev`.
    pub fn capture(dev: &dyn ReadAt, ranges: &[Range<u64>]) -> io::Result<Sparse> {
        let mut s = Sparse {
            len: dev.len(),
            pieces: Vec::new(),
        };
        for r in crate::normalise(ranges.to_vec(), dev.len()) {
            let mut buf = vec![0u8; (r.end - r.start) as usize];
            dev.read_exact_at(&mut buf, r.start)?;
            // Zeros need not be stored: runs of 16 or more split the piece.
            let mut at = 0;
            while let Some(first) = buf[at..].iter().position(|&b| b != 0) {
                let first = at + first;
                let mut end = first;
                let mut zeros = 0;
                while end < buf.len() && zeros < 16 {
                    zeros = if buf[end] == 0 { zeros + 1 } else { 0 };
                    end += 1;
                }
                let end = end - zeros;
                s.insert(r.start + first as u64, buf[first..end].to_vec());
                at = end;
            }
        }
        Ok(s)
    }

    fn insert(&mut self, off: u64, d: Vec<u8>) {
        // An empty piece holds nothing, and beside one at its offset it would break
        // the order by end that reading relies on.
        if d.is_empty() {
            return;
        }
        let end = off.saturating_add(d.len() as u64);
        self.pieces
            .retain(|(o, p)| o.saturating_add(p.len() as u64) <= off || *o >= end);
        let at = self.pieces.partition_point(|(o, _)| *o < off);
        self.pieces.insert(at, (off, d));
    }
}

impl ReadAt for Sparse {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.len)
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.fill(0);
        let first = self
            .pieces
            .partition_point(|(o, p)| o.saturating_add(p.len() as u64) <= offset);
        for (o, p) in &self.pieces[first..] {
            if *o >= end {
                break;
            }
            let from = offset.max(*o);
            let to = end.min(o.saturating_add(p.len() as u64));
            if to <= from {
                continue;
            }
            buf[(from - offset) as usize..(to - offset) as usize]
                .copy_from_slice(&p[(from - o) as usize..(to - o) as usize]);
        }
        Ok(())
    }
    fn len(&self) -> u64 {
        self.len
    }
}

/// Passes reads through to `inner` and remembers their ranges (seeds, and tests that
/// check how much a parser reads).
pub struct Recorder<'a> {
    pub inner: &'a dyn ReadAt,
    pub reads: RefCell<Vec<Range<u64>>>,
}

impl<'a> Recorder<'a> {
    pub fn new(inner: &'a dyn ReadAt) -> Self {
        Recorder {
            inner,
            reads: RefCell::new(Vec::new()),
        }
    }
}

impl ReadAt for Recorder<'_> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.reads
            .borrow_mut()
            .push(offset..offset.saturating_add(buf.len() as u64));
        self.inner.read_exact_at(buf, offset)
    }
    fn len(&self) -> u64 {
        self.inner.len()
    }
}

/// The body of the parsers' fuzz targets (rescue/fuzz): `data` decoded as a sparse
/// image goes to `probe`; whatever it accepts must be sorted, disjoint ranges within
/// the image. Images over 1 GiB are skipped so that a hostile geometry's bounded walks
/// still take milliseconds.
pub fn fuzz_one(data: &[u8], probe: fn(&dyn ReadAt) -> Option<Result<Usage, Error>>) {
    let dev = Sparse::decode(data);
    if dev.len() > 1 << 30 {
        return;
    }
    if let Some(Ok(u)) = probe(&dev) {
        assert!(u.is_valid_within(dev.len()), "{u:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_pieces_and_zeros_and_round_trips() {
        let mut s = Sparse {
            len: 100,
            pieces: Vec::new(),
        };
        s.insert(10, vec![1, 2, 3]);
        s.insert(50, vec![9; 10]);
        s.insert(11, vec![7]); // replaces the piece it overlaps
        let s = Sparse::decode(&s.encode());
        let mut b = [0xffu8; 8];
        s.read_exact_at(&mut b, 8).unwrap();
        assert_eq!(b, [0, 0, 0, 7, 0, 0, 0, 0]);
        s.read_exact_at(&mut b, 95).unwrap_err(); // past the end
        let mut b = [0u8; 4];
        s.read_exact_at(&mut b, 58).unwrap();
        assert_eq!(b, [9, 9, 0, 0]);
        // Garbage decodes to something without panicking.
        let _ = Sparse::decode(&[0xff; 30]);
    }

    #[test]
    fn an_empty_record_beside_a_piece_at_its_offset_reads_alike() {
        // Found by fsmap_opaque: (0x400, 16 bytes) then (0x400, 0 bytes) kept both,
        // out of order by end, and a read inside the first underflowed.
        for order in [[16usize, 0], [0, 16]] {
            let mut enc = 0x1000u64.to_le_bytes().to_vec();
            for n in order {
                enc.extend_from_slice(&0x400u64.to_le_bytes());
                enc.extend_from_slice(&(n as u32).to_le_bytes());
                enc.extend(std::iter::repeat_n(5u8, n));
            }
            let s = Sparse::decode(&enc);
            let mut b = [0u8; 4];
            s.read_exact_at(&mut b, 0x408).unwrap();
            assert_eq!(b, [5, 5, 5, 5], "{order:?}");
        }
    }
}
