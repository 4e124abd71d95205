//! The data phase, the same in both directions (backup: client to server;
//! restore: server to client). The sending side reads and hashes chunks on two
//! threads and keeps a bounded window of unacknowledged chunks; the receiving
//! side verifies each chunk's SHA-256 before handing it to a writer thread, acks
//! cumulatively, and asks again (NAK) for anything damaged or missing.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use sha2::{Digest, Sha256};

use crate::cancel::Token;
use crate::progress::Bar;
use crate::proto::conn::{Conn, Event, OutChunk, peer_error};
use crate::proto::frame::{Frame, Header};
use crate::proto::msg::{self, ChunkBody, ChunkRanges, FLAG_DAMAGED, FLAG_ZERO, kind};
use crate::sha256x2::Stream;

/// Chunks in flight (sent, not yet acknowledged). Bounds memory on both sides.
pub const WINDOW: usize = 12;
/// With no acknowledgement for this long, everything in flight is sent again.
const STALL: Duration = Duration::from_secs(10);

/// The largest disk a peer may describe (2^56 bytes, 64 PiB).
pub const MAX_DISK_SIZE: u64 = 1 << 56;

/// Whether a chunk size from the peer is one an honest peer uses: a power of
/// two from 64 KiB to 8 MiB. Anything else divides by zero in `Geometry`,
/// allocates gigabytes per buffer, or does not fit a frame.
pub fn check_chunk_size(chunk: u32) -> Result<()> {
    if !(64 << 10..=8 << 20).contains(&chunk) || !chunk.is_power_of_two() {
        bail!("chunk size {chunk} is impossible (a power of two from 64 KiB to 8 MiB)");
    }
    Ok(())
}

/// Chunk geometry of one disk.
#[derive(Debug, Clone, Copy)]
pub struct Geometry {
    pub size: u64,
    pub chunk: u32,
}

impl Geometry {
    pub fn count(&self) -> u64 {
        self.size.div_ceil(u64::from(self.chunk))
    }

    pub fn len_of(&self, index: u64) -> u32 {
        let start = index * u64::from(self.chunk);
        (self.size - start).min(u64::from(self.chunk)) as u32
    }

    pub fn offset(&self, index: u64) -> u64 {
        index * u64::from(self.chunk)
    }

    /// Where chunk `index` starts, or the end of the image from the count on:
    /// the offset an ACK names once everything before `index` is held.
    pub fn start_of(&self, index: u64) -> u64 {
        self.offset(index).min(self.size)
    }
}

/// Chunk indices the receiver already holds, with a cursor to find the next gap.
pub struct Have<'a> {
    ranges: &'a ChunkRanges,
}

impl<'a> Have<'a> {
    pub fn new(ranges: &'a ChunkRanges) -> Self {
        Have { ranges }
    }

    /// The first index >= `i` that is not held.
    pub fn next_missing(&self, i: u64) -> u64 {
        self.ranges.next_missing(i)
    }

    pub fn held(&self) -> u64 {
        self.ranges.held()
    }
}

/// What the sender's hashing thread learned about a raw chunk before handing
/// it to the `digest` step, so that step does not scan or hash it again.
#[derive(Clone, Copy, Debug, Default)]
pub struct Known {
    /// Every byte is zero.
    pub zero: bool,
    /// Its SHA-256, when computed (two chunks at a time, see sha256x2).
    pub sha256: Option<[u8; 32]>,
}

/// Whole chunk read from a source, before hashing.
pub struct RawChunk {
    pub data: Vec<u8>,
    pub bad: Vec<(u32, u32)>,
}

/// Whether a buffer is all zeros. OR-folding 4 KiB blocks vectorises well and
/// still stops early on data.
pub fn is_zero(data: &[u8]) -> bool {
    data.chunks(4096)
        .all(|blk| blk.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

#[derive(Debug, Default, Clone)]
pub struct SendStats {
    pub chunks_sent: u64,
    pub bytes_sent: u64,
    pub zero_bytes: u64,
    pub resent_chunks: u64,
    pub skipped_bytes: u64,
    pub unreadable_bytes: u64,
    pub bytes_read: u64,
}

/// Sends every chunk of disk `disk` the receiver does not hold. `read` fetches a
/// chunk (on a reader thread), `digest` hashes or checks it (on a second thread,
/// which looks for zeros once and hashes two data chunks at a time when two are
/// ready, and passes what it found as `Known`).
#[allow(clippy::too_many_arguments)]
pub fn send_disk<R, D>(
    conn: &mut Conn,
    disk: u32,
    geo: Geometry,
    have: &ChunkRanges,
    mut read: R,
    digest: D,
    bar: &Bar,
) -> Result<SendStats>
where
    R: FnMut(u64, u32) -> Result<RawChunk> + Send,
    D: Fn(u64, RawChunk, Known) -> Result<OutChunk> + Send + Sync,
{
    let have = Have::new(have);
    let mut stats = SendStats {
        skipped_bytes: have_bytes(&have, geo),
        ..Default::default()
    };
    bar.set_position(stats.skipped_bytes);
    let cancel = Token::new();
    let (credit_tx, credit_rx) = mpsc::sync_channel::<()>(WINDOW);
    for _ in 0..WINDOW {
        let _ = credit_tx.send(());
    }
    let events = conn.event_sender();
    let (raw_tx, raw_rx) = mpsc::sync_channel::<(u64, RawChunk)>(2);

    thread::scope(|s| -> Result<SendStats> {
        let cancel_r = cancel.clone();
        s.spawn(move || {
            let mut i = have.next_missing(0);
            while i < geo.count() {
                if credit_rx.recv().is_err() || cancel_r.stopped() {
                    return;
                }
                let off = geo.offset(i);
                match read(off, geo.len_of(i)) {
                    Ok(raw) => {
                        if raw_tx.send((off, raw)).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = raw_tx.send((
                            u64::MAX,
                            RawChunk {
                                data: format!("{e:#}").into_bytes(),
                                bad: Vec::new(),
                            },
                        ));
                        return;
                    }
                }
                i = have.next_missing(i + 1);
            }
        });
        let cancel_d = cancel.clone();
        let digest = &digest;
        s.spawn(move || {
            let push = |ev: Event| push_event(&events, ev, &cancel_d);
            // (offset, chunk, what is known); offset u64::MAX carries a read error.
            let mut queue: VecDeque<(u64, RawChunk, Known)> = VecDeque::new();
            let queue_up = |q: &mut VecDeque<_>, (off, raw): (u64, RawChunk)| {
                let known = Known {
                    zero: off != u64::MAX && is_zero(&raw.data),
                    sha256: None,
                };
                q.push_back((off, raw, known));
            };
            loop {
                if queue.is_empty() {
                    match raw_rx.recv() {
                        Ok(x) => queue_up(&mut queue, x),
                        Err(_) => break,
                    }
                }
                if queue.len() == 1
                    && let Ok(x) = raw_rx.try_recv()
                {
                    queue_up(&mut queue, x);
                }
                // Two data chunks ready: one interleaved pass for both digests.
                if let [(a_off, a, ka), (b_off, b, kb)] = queue.make_contiguous()
                    && *a_off != u64::MAX
                    && *b_off != u64::MAX
                    && !ka.zero
                    && !kb.zero
                {
                    let (da, db) = crate::sha256x2::digest_pair(&a.data, &b.data);
                    (ka.sha256, kb.sha256) = (Some(da), Some(db));
                }
                while let Some((off, raw, known)) = queue.pop_front() {
                    if off == u64::MAX {
                        push(Event::SourceFailed(
                            String::from_utf8_lossy(&raw.data).into_owned(),
                        ));
                        return;
                    }
                    match digest(off, raw, known) {
                        Ok(c) => {
                            if !push(Event::Chunk(c)) {
                                return;
                            }
                        }
                        Err(e) => {
                            push(Event::SourceFailed(format!("{e:#}")));
                            return;
                        }
                    }
                }
            }
            push(Event::SourceDone);
        });

        let result = send_loop(conn, disk, &credit_tx, &mut stats, bar);
        cancel.stop();
        drop(credit_tx);
        // Unblock the pipeline threads so the scope can end.
        while conn.next_event(Duration::from_millis(1)).is_some_and(|e| {
            !matches!(
                e,
                Event::SourceDone | Event::SourceFailed(_) | Event::Closed(_)
            )
        }) {}
        result.map(|()| stats)
    })
}

fn have_bytes(have: &Have, geo: Geometry) -> u64 {
    have.ranges
        .iter()
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

fn push_event(tx: &SyncSender<Event>, mut ev: Event, cancel: &Token) -> bool {
    loop {
        match tx.try_send(ev) {
            Ok(()) => return true,
            Err(TrySendError::Full(e)) => {
                if cancel.stopped() {
                    return false;
                }
                ev = e;
                thread::sleep(Duration::from_micros(200));
            }
            Err(TrySendError::Disconnected(_)) => return false,
        }
    }
}

fn send_chunk(conn: &Conn, disk: u32, c: &OutChunk) -> Result<()> {
    let mut h = Header::new(kind::CHUNK, disk, c.offset);
    if c.zero {
        h.flags |= FLAG_ZERO;
    }
    if c.damaged {
        h.flags |= FLAG_DAMAGED;
    }
    let prefix = ChunkBody::encode_prefix(&c.sha256, c.len, &c.bad);
    if c.zero || c.damaged {
        conn.send(h, &prefix)
    } else {
        conn.send_parts(h, &[&prefix, &c.data])
    }
}

fn send_loop(
    conn: &mut Conn,
    disk: u32,
    credits: &SyncSender<()>,
    stats: &mut SendStats,
    bar: &Bar,
) -> Result<()> {
    let mut unacked: VecDeque<OutChunk> = VecDeque::new();
    let mut source_done = false;
    let mut last_progress = Instant::now();
    let mut told_resend = false;
    loop {
        if source_done && unacked.is_empty() {
            return Ok(());
        }
        match conn.next_event(Duration::from_millis(100)) {
            Some(Event::Chunk(c)) => {
                send_chunk(conn, disk, &c)?;
                stats.chunks_sent += 1;
                stats.bytes_read += u64::from(c.len);
                stats.unreadable_bytes += c.bad.iter().map(|b| u64::from(b.1)).sum::<u64>();
                if c.zero {
                    stats.zero_bytes += u64::from(c.len);
                } else {
                    stats.bytes_sent += u64::from(c.len);
                }
                if unacked.is_empty() {
                    last_progress = Instant::now();
                }
                unacked.push_back(c);
            }
            Some(Event::SourceDone) => source_done = true,
            Some(Event::SourceFailed(m)) => {
                conn.send_error("source", &m);
                bail!("{m}");
            }
            Some(Event::Frame(f)) if f.intact => match f.header.kind {
                kind::ACK | kind::NAK if f.header.disk == disk => {
                    let before = unacked.len();
                    // Only an ACK is cumulative: a NAK may name a chunk beyond
                    // others that are still on their way.
                    while f.header.kind == kind::ACK
                        && unacked
                            .front()
                            .is_some_and(|c| c.offset + u64::from(c.len) <= f.header.offset)
                    {
                        if let Some(c) = unacked.pop_front() {
                            bar.inc(u64::from(c.len));
                        }
                        let _ = credits.try_send(());
                    }
                    if unacked.len() != before {
                        last_progress = Instant::now();
                    }
                    if f.header.kind == kind::NAK {
                        if !told_resend {
                            bar.println(&format!(
                                "chunk at offset {} arrived damaged at the peer; sending it again",
                                f.header.offset
                            ));
                            told_resend = true;
                        }
                        // Selective repeat: the receiver keeps the chunks that
                        // came after a damaged one, so only that one goes again.
                        if let Some(c) = unacked.iter().find(|c| c.offset == f.header.offset) {
                            send_chunk(conn, disk, c)?;
                            stats.resent_chunks += 1;
                        }
                        last_progress = Instant::now();
                    }
                }
                kind::ERROR => return Err(peer_error(&f)),
                kind::BYE => return Err(peer_left("receiving")),
                _ => {}
            },
            Some(Event::Frame(_)) => {
                conn.stats
                    .corrupt_frames
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Some(Event::Closed(c)) => return Err(c.into_error("sending data")),
            None => {}
        }
        if !unacked.is_empty() && last_progress.elapsed() > STALL {
            // Nothing acknowledged for a long time: send again the chunk the
            // receiver's cumulative ACK waits for; it asks for any others.
            if let Some(c) = unacked.front() {
                send_chunk(conn, disk, c)?;
                stats.resent_chunks += 1;
            }
            last_progress = Instant::now();
        }
    }
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

/// A chunk that passed verification, on its way to the writer.
#[derive(Debug, Clone)]
pub struct Verified {
    pub offset: u64,
    pub len: u32,
    pub zero: bool,
    pub sha256: [u8; 32],
    pub bad: Vec<(u32, u32)>,
    /// The frame payload; the chunk's bytes are `payload[start..]`.
    pub payload: Arc<Vec<u8>>,
    pub start: usize,
    /// The sender's store could not produce it intact (FLAG_DAMAGED): it is
    /// written as zeros, and `zero` is set too.
    pub damaged: bool,
}

impl Drop for Verified {
    fn drop(&mut self) {
        // The last holder (writer or hasher) recycles the buffer.
        let p = std::mem::replace(&mut self.payload, Arc::new(Vec::new()));
        if let Ok(v) = Arc::try_unwrap(p) {
            crate::bufpool::give(v);
        }
    }
}

impl Verified {
    /// The chunk's data (empty for a zero chunk).
    pub fn bytes(&self) -> &[u8] {
        &self.payload[self.start..]
    }
}

/// Where verified chunks go (the store, or a disk being restored).
pub trait Sink: Send {
    fn write(&mut self, c: &Verified) -> Result<()>;
    /// Makes everything written so far durable (called every few seconds).
    fn checkpoint(&mut self) -> Result<()>;
}

/// How the receiver computes the whole-image SHA-256 next to the chunk checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HashMode {
    /// Chunk check and image digest in one interleaved pass on the receiving
    /// thread (sha256x2): the least CPU, for machines with few cores.
    Combined,
    /// Chunk check on the receiving thread, image digest on a thread of its
    /// own: more CPU in all, but each byte meets one stream per core, so data
    /// can arrive faster (about 1.9 against 1.3 GB/s with SHA-NI here).
    Parallel,
}

impl HashMode {
    /// Parallel where cores are to spare (reader, checker, writer and image
    /// hasher each get one), else Combined. RESCUE_HASH=combined|parallel
    /// overrides the choice (for benchmarks).
    pub fn auto() -> HashMode {
        match std::env::var("RESCUE_HASH").as_deref() {
            Ok("combined") => return HashMode::Combined,
            Ok("parallel") => return HashMode::Parallel,
            _ => {}
        }
        match thread::available_parallelism() {
            Ok(n) if n.get() >= 4 => HashMode::Parallel,
            _ => HashMode::Combined,
        }
    }
}

/// Runs a sink on a writer thread, and checks chunks while hashing the whole
/// image in order.
pub struct SinkPipeline<S: Sink + 'static> {
    tx: Option<SyncSender<Verified>>,
    writer: Option<thread::JoinHandle<Result<S>>>,
    mode: HashMode,
    /// Combined: the image digest, fed by `check` and `zero`.
    whole: Mutex<Whole>,
    /// Parallel: the thread computing it from what the writer wrote.
    hasher: Option<thread::JoinHandle<Whole>>,
    error: Arc<Mutex<Option<String>>>,
    size: u64,
}

/// The whole-image SHA-256, fed with every chunk in order from offset 0.
#[derive(Clone, Default)]
struct Whole {
    stream: Stream,
    pos: u64,
    /// Set once a chunk was skipped (held from an earlier run): the caller
    /// then reads the image back instead.
    gap: bool,
}

impl Whole {
    /// Whether the chunk at `offset` continues the image; notes a gap if not.
    fn next_is(&mut self, offset: u64) -> bool {
        if self.gap || self.pos != offset {
            self.gap = true;
        }
        !self.gap
    }

    fn zero(&mut self, offset: u64, len: u32) {
        if self.next_is(offset) {
            self.stream.update_zeros(u64::from(len));
            self.pos += u64::from(len);
        }
    }

    fn data(&mut self, offset: u64, data: &[u8]) {
        if self.next_is(offset) {
            self.stream.update(data);
            self.pos += data.len() as u64;
        }
    }
}

impl<S: Sink + 'static> SinkPipeline<S> {
    pub fn start(sink: S, size: u64) -> Self {
        SinkPipeline::with_mode(sink, size, HashMode::auto())
    }

    pub fn with_mode(mut sink: S, size: u64, mode: HashMode) -> Self {
        let (tx, rx) = mpsc::sync_channel::<Verified>(4);
        let (htx, hasher) = match mode {
            HashMode::Combined => (None, None),
            HashMode::Parallel => {
                let (htx, hrx) = mpsc::sync_channel::<Verified>(8);
                let h = thread::spawn(move || {
                    let mut w = Whole::default();
                    for c in hrx {
                        if c.zero {
                            w.zero(c.offset, c.len);
                        } else {
                            w.data(c.offset, c.bytes());
                        }
                    }
                    w
                });
                (Some(htx), Some(h))
            }
        };
        let error = Arc::new(Mutex::new(None));
        let err2 = error.clone();
        let writer = thread::spawn(move || -> Result<S> {
            let mut last = Instant::now();
            let mut since = 0u64;
            for c in rx {
                if let Err(e) = sink.write(&c) {
                    if let Ok(mut g) = err2.lock() {
                        *g = Some(format!("{e:#}"));
                    }
                    return Err(e);
                }
                since += u64::from(c.len);
                // The image hasher gets the chunk once it is written (in order).
                if let Some(h) = &htx {
                    let _ = h.send(c);
                }
                if since >= 256 << 20 || last.elapsed() > Duration::from_secs(3) {
                    if let Err(e) = sink.checkpoint() {
                        if let Ok(mut g) = err2.lock() {
                            *g = Some(format!("{e:#}"));
                        }
                        return Err(e);
                    }
                    since = 0;
                    last = Instant::now();
                }
            }
            drop(htx);
            sink.checkpoint()?;
            Ok(sink)
        });
        SinkPipeline {
            tx: Some(tx),
            writer: Some(writer),
            mode,
            whole: Mutex::new(Whole::default()),
            hasher,
            error,
            size,
        }
    }

    /// Whether `data`, the chunk at `offset`, has the SHA-256 `want`. A chunk
    /// that continues the image in order also feeds the whole-image digest, in
    /// the same pass over its bytes (see sha256x2); one that fails does not.
    pub fn check(&self, offset: u64, data: &[u8], want: &[u8; 32]) -> bool {
        if self.mode == HashMode::Parallel {
            return sha256(data) == *want;
        }
        let Ok(mut w) = self.whole.lock() else {
            return sha256(data) == *want;
        };
        if !w.next_is(offset) {
            return sha256(data) == *want;
        }
        let before = w.stream.clone();
        if w.stream.update_and_digest(data) == *want {
            w.pos += data.len() as u64;
            true
        } else {
            w.stream = before;
            false
        }
    }

    /// Records an all-zero chunk at `offset` in the whole-image digest.
    pub fn zero(&self, offset: u64, len: u32) {
        if self.mode == HashMode::Combined
            && let Ok(mut w) = self.whole.lock()
        {
            w.zero(offset, len);
        }
    }

    /// Queues a verified chunk (blocks while the writer is behind).
    pub fn submit(&self, c: Verified) -> Result<()> {
        self.failed()?;
        match &self.tx {
            Some(tx) => tx
                .send(c)
                .map_err(|_| anyhow!("{}", self.error_text().unwrap_or("writer stopped".into()))),
            None => bail!("writer already finished"),
        }
    }

    fn error_text(&self) -> Option<String> {
        self.error.lock().ok().and_then(|g| g.clone())
    }

    /// An error the writer hit (disk full, I/O error), if any.
    pub fn failed(&self) -> Result<()> {
        match self.error_text() {
            Some(e) => bail!("{e}"),
            None => Ok(()),
        }
    }

    /// Waits for the writer; returns the sink and the whole-image SHA-256 when
    /// every byte went through in order (else the caller re-reads the image).
    pub fn finish(mut self) -> Result<(S, Option<[u8; 32]>)> {
        drop(self.tx.take());
        let sink = match self.writer.take().map(|w| w.join()) {
            Some(Ok(r)) => r?,
            _ => bail!("the writer thread failed"),
        };
        let w = match self.hasher.take() {
            Some(h) => h.join().ok(),
            None => self.whole.get_mut().ok().map(|w| w.clone()),
        };
        let whole = match w {
            Some(w) if !w.gap && w.pos == self.size => Some(w.stream.finish()),
            _ => None,
        };
        Ok((sink, whole))
    }
}

impl<S: Sink + 'static> Drop for SinkPipeline<S> {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
        if let Some(h) = self.hasher.take() {
            let _ = h.join();
        }
    }
}

/// Why a received chunk was not accepted.
enum Reject {
    Damaged(String),
}

/// The receiver's ACKs and NAKs. Once a send fails (the peer is gone) it
/// stops sending and keeps the error, so the frames already received are
/// still checked and written (a resume then skips them) before it is returned.
struct Answers {
    disk: u32,
    last_nak: Option<(u64, Instant)>,
    gone: Option<anyhow::Error>,
}

impl Answers {
    fn send(&mut self, conn: &Conn, h: Header) {
        if self.gone.is_none()
            && let Err(e) = conn.send_keeping_queue(h, &[])
        {
            self.gone = Some(e);
        }
    }

    fn ack(&mut self, conn: &Conn, offset: u64) {
        self.send(conn, Header::new(kind::ACK, self.disk, offset));
    }

    /// Asks for the chunk at `offset` again; at most once a second for the
    /// same offset unless `force`.
    fn nak(&mut self, conn: &Conn, offset: u64, force: bool) {
        let due = match self.last_nak {
            Some((o, t)) => o != offset || t.elapsed() > Duration::from_secs(1) || force,
            None => true,
        };
        if due {
            self.send(conn, Header::new(kind::NAK, self.disk, offset));
            self.last_nak = Some((offset, Instant::now()));
        }
    }
}

/// What the receiver does with a chunk the sender marks FLAG_DAMAGED.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnDamaged {
    /// A backup client may not send one: it is asked for again like a chunk
    /// damaged in transit.
    Refuse,
    /// End the disk with a `StoreDamaged` error (restore without --skip-damaged).
    Stop,
    /// Write zeros in its place and list it in `Received::lost`.
    Skip,
}

/// The sender's store cannot produce a chunk intact.
#[derive(Debug, thiserror::Error)]
#[error("the chunk of disk {disk} at offset {offset} ({len} bytes) is damaged in the store")]
pub struct StoreDamaged {
    pub disk: u32,
    pub offset: u64,
    pub len: u32,
}

/// A disk received to the end.
pub struct Received {
    /// The sender's DISK_END, to answer.
    pub end: Frame,
    /// Chunks damaged in transit and asked for again.
    pub resent: u64,
    /// (offset, length) of the chunks the store could not produce (OnDamaged::Skip).
    pub lost: Vec<(u64, u32)>,
}

/// Receives disk `disk` into `pipe` until the sender's DISK_END, with a choice
/// of what a FLAG_DAMAGED chunk does (only a restore accepts one). Returns that
/// frame (to answer it), how many damaged chunks were asked for again and what
/// the store could not produce.
pub fn receive_disk<S: Sink + 'static>(
    conn: &mut Conn,
    disk: u32,
    geo: Geometry,
    have: &ChunkRanges,
    pipe: &SinkPipeline<S>,
    bar: &Bar,
    on_damaged: OnDamaged,
) -> Result<Received> {
    let mut lost = Vec::new();
    let have = Have::new(have);
    let mut next = have.next_missing(0);
    bar.set_position(have_bytes(&have, geo));
    // Intact chunks that arrived after a missing one, kept until the gap is
    // filled (selective repeat: at most a window's worth).
    let mut early: BTreeMap<u64, Frame> = BTreeMap::new();
    let mut ans = Answers {
        disk,
        last_nak: None,
        gone: None,
    };
    let mut damaged = 0u64;
    let mut bad_headers = conn.stats.bad_headers.load(Ordering::Relaxed);
    loop {
        pipe.failed()?;
        let ev = conn.next_event(Duration::from_millis(500));
        if let Some(Event::Closed(c)) = ev {
            return Err(c.into_error("receiving data"));
        }
        if ev.is_none()
            && let Some(e) = ans.gone.take()
        {
            // The peer went away and everything it had sent is written.
            return Err(e);
        }
        let next_off = geo.start_of(next);
        // A damaged header cannot say what it carried: the frame was skipped and
        // the expected chunk (often what it was) is asked for again. Checked
        // even when nothing else arrives: the lost frame may have been the
        // last the sender's window allowed.
        let now_bad = conn.stats.bad_headers.load(Ordering::Relaxed);
        if now_bad > bad_headers {
            damaged += now_bad - bad_headers;
            bar.println(&format!(
                "{} damaged message header(s) skipped; asking again for offset {next_off}",
                now_bad - bad_headers
            ));
            bad_headers = now_bad;
            if next < geo.count() {
                ans.nak(conn, next_off, true);
            }
        }
        let f = match ev {
            Some(Event::Frame(f)) => f,
            _ => {
                // Quiet while chunks wait behind a gap: ask again (at most once a second).
                if !early.is_empty() {
                    ans.nak(conn, next_off, false);
                }
                continue;
            }
        };
        if !f.intact {
            conn.stats
                .corrupt_frames
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if f.header.kind == kind::CHUNK && f.header.disk == disk && f.header.offset >= next_off
            {
                damaged += 1;
                bar.println(&format!(
                    "damaged chunk at offset {} (CRC mismatch): asking for it again",
                    f.header.offset
                ));
                // The header has its own CRC: its offset is trustworthy.
                ans.nak(conn, f.header.offset, true);
            }
            continue;
        }
        match f.header.kind {
            kind::CHUNK if f.header.disk == disk => {
                if f.header.offset == next_off && next < geo.count() {
                    // This chunk, then any kept ones it makes contiguous.
                    let mut f = f;
                    let mut accepted = false;
                    loop {
                        let at = f.header.offset;
                        match accept(f, geo, next, pipe, on_damaged) {
                            Ok(v) => {
                                if v.damaged && on_damaged == OnDamaged::Stop {
                                    let (offset, len) = (v.offset, v.len);
                                    return Err(StoreDamaged { disk, offset, len }.into());
                                }
                                if v.damaged {
                                    lost.push((v.offset, v.len));
                                }
                                let len = u64::from(v.len);
                                pipe.submit(v)?;
                                bar.inc(len);
                                next = have.next_missing(next + 1);
                                accepted = true;
                            }
                            Err(Reject::Damaged(why)) => {
                                damaged += 1;
                                bar.println(&format!(
                                    "chunk at offset {at} failed verification ({why}): asking for it again"
                                ));
                                ans.nak(conn, at, true);
                                break;
                            }
                        }
                        if next >= geo.count() {
                            break;
                        }
                        match early.remove(&geo.offset(next)) {
                            Some(k) => f = k,
                            None => break,
                        }
                    }
                    let ack = geo.start_of(next);
                    early.retain(|&o, _| o > ack);
                    if accepted {
                        ans.ack(conn, ack);
                    }
                    // Kept chunks beyond a new gap: that one is missing too.
                    if accepted && !early.is_empty() {
                        ans.nak(conn, ack, false);
                    }
                } else if f.header.offset > next_off {
                    let window_end = next_off.saturating_add(WINDOW as u64 * u64::from(geo.chunk));
                    if f.header.offset < window_end && early.len() < WINDOW {
                        early.entry(f.header.offset).or_insert(f);
                    }
                    ans.nak(conn, next_off, false);
                } else {
                    ans.ack(conn, next_off);
                }
            }
            kind::DISK_END if f.header.disk == disk => {
                if next < geo.count() {
                    bail!(
                        "the sender finished disk {disk} but chunks from offset {next_off} are missing"
                    );
                }
                return Ok(Received {
                    end: f,
                    resent: damaged,
                    lost,
                });
            }
            kind::DISK_END => {
                // A repeat for the previous disk: our answer was lost.
                conn.answered_before(&f)?;
            }
            kind::ERROR => return Err(peer_error(&f)),
            kind::BYE => return Err(peer_left("sending a disk")),
            _ => {}
        }
    }
}

fn accept<S: Sink + 'static>(
    f: Frame,
    geo: Geometry,
    index: u64,
    pipe: &SinkPipeline<S>,
    on_damaged: OnDamaged,
) -> std::result::Result<Verified, Reject> {
    let damaged = f.header.flags & FLAG_DAMAGED != 0;
    if damaged && on_damaged == OnDamaged::Refuse {
        return Err(Reject::Damaged(
            "marked damaged by a sender that may not".into(),
        ));
    }
    // A damaged chunk carries no data; its place is filled with zeros.
    let zero = f.header.flags & FLAG_ZERO != 0 || damaged;
    let offset = f.header.offset;
    let body = ChunkBody::decode(f.payload, zero, geo.chunk).map_err(Reject::Damaged)?;
    let want = geo.len_of(index);
    if body.len != want {
        return Err(Reject::Damaged(format!(
            "length {} instead of {want}",
            body.len
        )));
    }
    if zero {
        pipe.zero(offset, body.len);
    } else if !pipe.check(offset, body.data(), &body.sha256) {
        return Err(Reject::Damaged("SHA-256 mismatch".into()));
    }
    Ok(Verified {
        offset,
        len: body.len,
        zero,
        sha256: body.sha256,
        bad: body.bad,
        start: body.start,
        payload: Arc::new(body.payload),
        damaged,
    })
}

/// Builds the chunk to send from raw bytes and what is known about them.
pub fn digest_fresh(offset: u64, raw: RawChunk, known: Known) -> Result<OutChunk> {
    let len = raw.data.len() as u32;
    if known.zero {
        let RawChunk { data, bad } = raw;
        crate::bufpool::give(data);
        return Ok(OutChunk {
            offset,
            len,
            zero: true,
            sha256: [0; 32],
            bad,
            data: Vec::new(),
            damaged: false,
        });
    }
    Ok(OutChunk {
        offset,
        len,
        zero: false,
        sha256: known.sha256.unwrap_or_else(|| sha256(&raw.data)),
        bad: raw.bad,
        data: raw.data,
        damaged: false,
    })
}

/// Sends DISK_END and waits for DISK_DONE (repeating DISK_END if either is lost).
pub fn finish_disk(conn: &mut Conn, disk: u32, end: &msg::DiskEnd) -> Result<msg::DiskDone> {
    let payload = msg::to_json(end);
    conn.send(Header::new(kind::DISK_END, disk, 0), &payload)?;
    let f = conn.wait_control(&[kind::DISK_DONE], "finishing a disk", |c| {
        c.send(Header::new(kind::DISK_END, disk, 0), &payload)
    })?;
    msg::from_json(&f)
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
        let h = Have::new(&r);
        assert_eq!(h.next_missing(0), 3);
        assert_eq!(h.next_missing(4), 4);
        assert_eq!(h.next_missing(5), 7);
        assert_eq!(h.held(), 5);
    }

    struct NullSink;

    impl Sink for NullSink {
        fn write(&mut self, _: &Verified) -> Result<()> {
            Ok(())
        }
        fn checkpoint(&mut self) -> Result<()> {
            Ok(())
        }
    }

    /// What the receive loop does with a chunk: check it, then hand it on.
    fn receive(pipe: &SinkPipeline<NullSink>, offset: u64, data: &[u8], want: [u8; 32]) -> bool {
        let ok = pipe.check(offset, data, &want);
        if ok {
            pipe.submit(Verified {
                offset,
                len: data.len() as u32,
                zero: false,
                sha256: want,
                bad: Vec::new(),
                payload: Arc::new(data.to_vec()),
                start: 0,
                damaged: false,
            })
            .unwrap();
        }
        ok
    }

    fn receive_zero(pipe: &SinkPipeline<NullSink>, offset: u64, len: u32) {
        pipe.zero(offset, len);
        pipe.submit(Verified {
            offset,
            len,
            zero: true,
            sha256: [0; 32],
            bad: Vec::new(),
            payload: Arc::new(Vec::new()),
            start: 0,
            damaged: false,
        })
        .unwrap();
    }

    #[test]
    fn whole_digest_skips_rejected_chunks() {
        for mode in [HashMode::Combined, HashMode::Parallel] {
            let a = vec![1u8; 4096];
            let b = vec![2u8; 4000];
            let pipe = SinkPipeline::with_mode(NullSink, 4096 * 2 + 4000, mode);
            assert!(receive(&pipe, 0, &a, sha256(&a)));
            receive_zero(&pipe, 4096, 4096);
            // Damaged in transit: rejected, and must not enter the image digest.
            assert!(!receive(&pipe, 8192, &b, sha256(&a)));
            assert!(receive(&pipe, 8192, &b, sha256(&b)));
            let (_, whole) = pipe.finish().unwrap();
            let mut all = a.clone();
            all.extend(vec![0u8; 4096]);
            all.extend(&b);
            assert_eq!(whole, Some(sha256(&all)), "{mode:?}");
        }
    }

    #[test]
    fn no_whole_digest_after_a_gap() {
        for mode in [HashMode::Combined, HashMode::Parallel] {
            let a = vec![1u8; 4096];
            let pipe = SinkPipeline::with_mode(NullSink, 8192, mode);
            // Chunk 0 was held from an earlier run: only chunk 1 arrives.
            assert!(receive(&pipe, 4096, &a, sha256(&a)));
            let (_, whole) = pipe.finish().unwrap();
            assert_eq!(whole, None, "{mode:?}");
        }
    }

    #[test]
    fn only_a_restore_accepts_a_chunk_marked_damaged() {
        let geo = Geometry {
            size: 8192,
            chunk: 4096,
        };
        let frame = || {
            let mut h = Header::new(kind::CHUNK, 0, 4096);
            h.flags |= FLAG_DAMAGED;
            Frame {
                header: h,
                payload: ChunkBody::encode_prefix(&[0; 32], 4096, &[]),
                intact: true,
            }
        };
        let pipe = SinkPipeline::with_mode(NullSink, 8192, HashMode::Combined);
        // From a backup client it is damage, asked for again.
        assert!(accept(frame(), geo, 1, &pipe, OnDamaged::Refuse).is_err());
        // On restore it stands for zeros, marked.
        let v = accept(frame(), geo, 1, &pipe, OnDamaged::Skip)
            .ok()
            .unwrap();
        assert!(v.damaged && v.zero && v.len == 4096 && v.bytes().is_empty());
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
