//! The data phase, the same in both directions (backup: client to server;
//! restore: server to client). The sending side (send.rs) reads and hashes
//! chunks on two threads and keeps a bounded window of unacknowledged chunks;
//! the receiving side (receive.rs) verifies each chunk's SHA-256 before handing
//! it to a writer thread (sink.rs), acks cumulatively, and asks again (NAK) for
//! anything damaged or missing. This file holds what both sides share: the
//! chunk geometry, the held ranges and the chunk checks.

mod checks;
pub(crate) mod progress;
mod receive;
mod send;
pub(crate) mod sha256x2;
mod sink;
mod whole;

pub(crate) use receive::{OnDamaged, Received, StoreDamaged, receive_disk};
pub(crate) use send::{SendStats, against_base, digest_fresh, finish_disk, send_disk};
pub(crate) use sink::{BaseChunks, Sink, SinkPipeline, Verified};
pub(crate) use whole::WholeDigest;

use anyhow::{Result, bail};
use sha2::{Digest, Sha256};

use crate::proto::msg::ChunkRanges;

/// Chunks in flight (sent, not yet acknowledged) per stream. Bounds memory on
/// both sides.
pub const WINDOW: usize = 12;

/// The bytes in flight over several streams at most (chunks of 1 MiB: 12 over
/// one stream, 24 over two, 32 over three or more). One stream's `WINDOW`
/// stays allowed whatever the chunk size, as it always was.
const WINDOW_BYTES: u64 = 32 << 20;

/// Chunks in flight over `streams` streams of chunks of `chunk` bytes: a
/// `WINDOW` per stream (a single window shared by all left each stream a
/// few chunks, too few to keep it busy), bounded by `WINDOW_BYTES`. Sender
/// and receiver compute it from the same agreed stream count and chunk size.
pub(crate) fn window(streams: usize, chunk: u32) -> usize {
    let by_bytes = (WINDOW_BYTES / u64::from(chunk.max(1))) as usize;
    (WINDOW * streams.max(1)).min(by_bytes.max(WINDOW))
}

/// The largest disk a peer may describe (2^56 bytes, 64 PiB).
pub(crate) const MAX_DISK_SIZE: u64 = 1 << 56;

/// Whether a chunk size from the peer is one an honest peer uses: a power of
/// two from 64 KiB to 8 MiB. Anything else divides by zero in `Geometry`,
/// allocates gigabytes per buffer, or does not fit a frame.
pub(crate) fn check_chunk_size(chunk: u32) -> Result<()> {
    if !(64 << 10..=8 << 20).contains(&chunk) || !chunk.is_power_of_two() {
        bail!("chunk size {chunk} is impossible (a power of two from 64 KiB to 8 MiB)");
    }
    Ok(())
}

/// Chunk geometry of one disk.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Geometry {
    pub(crate) size: u64,
    pub(crate) chunk: u32,
}

impl Geometry {
    pub(crate) fn count(&self) -> u64 {
        self.size.div_ceil(u64::from(self.chunk))
    }

    pub(crate) fn len_of(&self, index: u64) -> u32 {
        let start = index * u64::from(self.chunk);
        (self.size - start).min(u64::from(self.chunk)) as u32
    }

    pub(crate) fn offset(&self, index: u64) -> u64 {
        index * u64::from(self.chunk)
    }

    /// Where chunk `index` starts, or the end of the image from the count on:
    /// the offset an ACK names once everything before `index` is held.
    pub(crate) fn start_of(&self, index: u64) -> u64 {
        self.offset(index).min(self.size)
    }
}

/// What the sender's hashing thread learned about a raw chunk before handing
/// it to the `digest` step, so that step does not scan or hash it again.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Known {
    /// Every byte is zero.
    pub(crate) zero: bool,
    /// Its SHA-256, when computed (two chunks at a time, see sha256x2).
    pub(crate) sha256: Option<[u8; 32]>,
}

/// Whole chunk read from a source, before hashing.
pub(crate) struct RawChunk {
    pub(crate) data: Vec<u8>,
    pub(crate) bad: Vec<(u32, u32)>,
    /// Free ranges of a used-block backup inside the chunk (relative, sorted): not
    /// read, zeros in `data`, not sent (FLAG_FREE).
    pub(crate) free: Vec<(u32, u32)>,
    /// Known to be all zeros without reading it (holes of an image file, free
    /// space): its length, and `data` is empty.
    pub(crate) zeros: Option<u32>,
}

impl RawChunk {
    /// The chunk's length in bytes.
    pub(crate) fn len(&self) -> u32 {
        self.zeros.unwrap_or(self.data.len() as u32)
    }
}

/// Whether a buffer is all zeros. OR-folding 4 KiB blocks vectorises well and
/// still stops early on data.
pub(crate) fn is_zero(data: &[u8]) -> bool {
    data.chunks(4096)
        .all(|blk| blk.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// Bytes of the image the held ranges cover (where the progress bar starts).
fn have_bytes(have: &ChunkRanges, geo: Geometry) -> u64 {
    have.iter()
        .map(|&(s, e)| {
            let e = e.min(geo.count());
            if e <= s {
                0
            } else {
                geo.start_of(e) - geo.offset(s)
            }
        })
        .sum()
}

/// A peer that said goodbye in the middle of a disk (it was stopped, e.g. by
/// Ctrl-C, after saving what it had): gone, so the command says how to resume.
fn peer_left(doing: &str) -> anyhow::Error {
    crate::exit::Exit::new(
        crate::exit::PEER_GONE,
        format!("the peer ended the session while {doing}"),
    )
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_detection() {
        assert!(is_zero(&[0u8; 1000]));
        let mut v = vec![0u8; 1 << 20];
        assert!(is_zero(&v));
        v[777_777] = 1;
        assert!(!is_zero(&v));
        v[777_777] = 0;
        let last = v.len() - 1;
        v[last] = 3;
        assert!(!is_zero(&v));
        assert!(!is_zero(&[0, 0, 1]));
    }

    #[test]
    fn have_cursor() {
        let r = ChunkRanges::from(vec![(0, 3), (5, 7)]);
        let h = &r;
        assert_eq!(h.next_missing(0), 3);
        assert_eq!(h.next_missing(4), 4);
        assert_eq!(h.next_missing(5), 7);
        assert_eq!(h.held(), 5);
    }

    #[test]
    fn the_window_grows_with_the_streams_within_its_bound() {
        let mib = 1 << 20;
        let got: Vec<usize> = (1..=5).map(|n| window(n, mib)).collect();
        assert_eq!(got, [12, 24, 32, 32, 32]);
        // Small chunks: a window per stream; large ones: one stream's window.
        assert_eq!(window(4, 64 << 10), 48);
        assert_eq!((window(1, 8 << 20), window(4, 8 << 20)), (12, 12));
        assert_eq!(window(0, mib), 12);
    }

    #[test]
    fn geometry() {
        let g = Geometry {
            size: 2500,
            chunk: 1000,
        };
        assert_eq!(g.count(), 3);
        assert_eq!(g.len_of(2), 500);
        assert_eq!(
            (g.start_of(2), g.start_of(3), g.start_of(4)),
            (2000, 2500, 2500)
        );
    }
}
