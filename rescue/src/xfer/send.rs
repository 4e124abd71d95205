//! The sending side of the data phase: a reader thread fetches the chunks the
//! receiver does not hold, a hashing thread digests them (two at a time), and
//! the calling thread sends them within a window of unacknowledged chunks,
//! sending again what the receiver asks for or leaves unacknowledged.

use std::collections::{HashMap, VecDeque};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use super::{Geometry, Known, RawChunk, have_bytes, is_zero, peer_left, sha256, window};
use crate::cancel::Token;
use crate::proto::frame::Header;
use crate::proto::msg::{
    self, ChunkBody, ChunkRanges, FLAG_DAMAGED, FLAG_FREE, FLAG_UNCHANGED, FLAG_ZERO, NAK_DATA,
    kind, used_parts,
};
use crate::wire::conn::{Conn, Event, OutChunk, peer_error};
use crate::xfer::progress::Bar;

/// With no acknowledgement for this long, everything in flight is sent again.
const STALL: Duration = Duration::from_secs(10);

/// How often one chunk is sent again at the receiver's request before the
/// transfer stops: a receiver that keeps refusing a chunk (or a link that
/// damages it every time) would otherwise have it sent without end.
pub(crate) const MAX_ASKS: u32 = 32;

/// The error that ends a transfer whose chunk at `offset` was refused
/// `MAX_ASKS` times (by the sender: asked for again; by the receiver:
/// damaged or failing its check); the peer is told with ERROR `verify`.
pub(crate) fn refused_too_often(conn: &Conn, disk: &str, offset: u64, what: &str) -> anyhow::Error {
    let m = format!(
        "the chunk of {disk} at offset {offset} {what} {MAX_ASKS} times: stopping the transfer (what was verified is kept: running the command again resumes from it)"
    );
    conn.send_error("verify", &m);
    crate::exit::Exit::new(crate::exit::VERIFY_FAILED, m).into()
}

#[derive(Debug, Default, Clone)]
pub(crate) struct SendStats {
    pub(crate) chunks_sent: u64,
    pub(crate) bytes_sent: u64,
    pub(crate) zero_bytes: u64,
    pub(crate) resent_chunks: u64,
    pub(crate) skipped_bytes: u64,
    pub(crate) unreadable_bytes: u64,
    pub(crate) bytes_read: u64,
    /// Free space of recognised filesystems, neither read nor sent.
    pub(crate) free_bytes: u64,
    /// Holes of an image file: not read, sent as zeros (set by the caller,
    /// whose reader knows them; not in `bytes_read`).
    pub(crate) hole_bytes: u64,
    /// Bytes marked unchanged since the base backup (not sent; free space
    /// in those chunks counts as free).
    pub(crate) unchanged_bytes: u64,
    /// Chunks marked unchanged that the receiver asked for after all (its
    /// base's copy failed the check).
    pub(crate) base_failed: u64,
}

impl SendStats {
    /// Counts chunk `c`, sent for the first time. Its free ranges (neither read
    /// nor sent) count as free whatever else it is.
    fn count(&mut self, c: &OutChunk) {
        self.chunks_sent += 1;
        let free = free_len(&c.free);
        let used = u64::from(c.len) - free;
        self.free_bytes += free;
        self.bytes_read += used;
        self.unreadable_bytes += c.bad.iter().map(|b| u64::from(b.1)).sum::<u64>();
        if c.zero {
            self.zero_bytes += used;
        } else if c.unchanged {
            self.unchanged_bytes += used;
        } else {
            self.bytes_sent += used;
        }
    }

    /// Chunk `c`, counted as unchanged, goes with its data after all (NAK_DATA).
    fn sent_after_all(&mut self, c: &OutChunk) {
        let used = u64::from(c.len) - free_len(&c.free);
        self.base_failed += 1;
        self.unchanged_bytes -= used;
        self.bytes_sent += used;
    }
}

/// What the reader thread hands the hashing thread, in disk order.
enum Read {
    /// The chunk at this offset.
    Chunk(u64, RawChunk),
    /// Reading stopped with this error; nothing follows.
    Failed(String),
}

/// Sends every chunk of disk `disk` the receiver does not hold. `read` fetches a
/// chunk (on a reader thread), `digest` hashes or checks it (on a second thread,
/// which looks for zeros once and hashes two data chunks at a time when two are
/// ready, and passes what it found as `Known`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn send_disk<R, D>(
    conn: &mut Conn,
    disk: u32,
    geo: Geometry,
    have: &ChunkRanges,
    read: R,
    digest: D,
    bar: &Bar,
) -> Result<SendStats>
where
    R: FnMut(u64, u32) -> Result<RawChunk> + Send,
    D: Fn(u64, RawChunk, Known) -> Result<OutChunk> + Send + Sync,
{
    let mut stats = SendStats {
        skipped_bytes: have_bytes(have, geo),
        ..Default::default()
    };
    bar.set_position(stats.skipped_bytes);
    let cancel = Token::new();
    // One credit per chunk the window has room for: the reader stays at most a
    // window ahead of the acknowledgements.
    let window = window(conn.streams(), geo.chunk);
    let (credit_tx, credit_rx) = mpsc::sync_channel::<()>(window);
    for _ in 0..window {
        let _ = credit_tx.send(());
    }
    let events = conn.event_sender();
    let (raw_tx, raw_rx) = mpsc::sync_channel::<Read>(2);

    thread::scope(|s| -> Result<SendStats> {
        let cancel_r = cancel.clone();
        s.spawn(move || read_chunks(have, geo, &credit_rx, &cancel_r, read, &raw_tx));
        let cancel_d = cancel.clone();
        let digest = &digest;
        s.spawn(move || {
            let push = |ev: Event| push_event(&events, ev, &cancel_d);
            if let Some(end) = digest_chunks(&raw_rx, digest, push) {
                push(end);
            }
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

/// The reader thread: every chunk not held, in order, one per credit, until
/// the end, a read error or `cancel`.
fn read_chunks<R>(
    have: &ChunkRanges,
    geo: Geometry,
    credits: &Receiver<()>,
    cancel: &Token,
    mut read: R,
    tx: &SyncSender<Read>,
) where
    R: FnMut(u64, u32) -> Result<RawChunk>,
{
    let mut i = have.next_missing(0);
    while i < geo.count() {
        if credits.recv().is_err() || cancel.stopped() {
            return;
        }
        let off = geo.offset(i);
        let r = match read(off, geo.len_of(i)) {
            Ok(raw) => Read::Chunk(off, raw),
            Err(e) => Read::Failed(format!("{e:#}")),
        };
        let failed = matches!(r, Read::Failed(_));
        if tx.send(r).is_err() || failed {
            return;
        }
        i = have.next_missing(i + 1);
    }
}

/// The hashing thread: digests what the reader hands over (two data chunks in
/// one interleaved pass when two are ready) and pushes each chunk to the
/// sending thread. Returns the event that ends the source: done, or failed
/// (after the chunks read before the failure); None once pushing was refused
/// (the sending side stopped).
fn digest_chunks<D>(rx: &Receiver<Read>, digest: &D, push: impl Fn(Event) -> bool) -> Option<Event>
where
    D: Fn(u64, RawChunk, Known) -> Result<OutChunk>,
{
    let mut queue: VecDeque<(u64, RawChunk, Known)> = VecDeque::new();
    // Queues a chunk, or returns the read error that ends the source.
    let queue_up = |q: &mut VecDeque<_>, r: Read| match r {
        Read::Chunk(off, raw) => {
            let known = Known {
                zero: raw.zeros.is_some() || is_zero(&raw.data),
                sha256: None,
            };
            q.push_back((off, raw, known));
            None
        }
        Read::Failed(m) => Some(m),
    };
    loop {
        let mut failed = None;
        if queue.is_empty() {
            match rx.recv() {
                Ok(r) => failed = queue_up(&mut queue, r),
                Err(_) => return Some(Event::SourceDone),
            }
        }
        if queue.len() == 1
            && let Ok(r) = rx.try_recv()
        {
            failed = queue_up(&mut queue, r);
        }
        // Two data chunks ready: one interleaved pass for both digests.
        if let [(_, a, ka), (_, b, kb)] = queue.make_contiguous()
            && !ka.zero
            && !kb.zero
        {
            let (da, db) = crate::xfer::sha256x2::digest_pair(&a.data, &b.data);
            (ka.sha256, kb.sha256) = (Some(da), Some(db));
        }
        while let Some((off, raw, known)) = queue.pop_front() {
            match digest(off, raw, known) {
                Ok(c) => {
                    if !push(Event::Chunk(c)) {
                        return None;
                    }
                }
                Err(e) => return Some(Event::SourceFailed(format!("{e:#}"))),
            }
        }
        if let Some(m) = failed {
            return Some(Event::SourceFailed(m));
        }
    }
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
    if c.unchanged {
        h.flags |= FLAG_UNCHANGED;
    }
    // An unchanged chunk carries no data, free ranges or not: its digest covers
    // the chunk as stored (free = zeros), as the base journal's does.
    if c.zero || c.damaged || c.unchanged {
        return conn.send_data(h, &[&ChunkBody::encode_prefix(&c.sha256, c.len, &c.bad)]);
    }
    if c.free.is_empty() {
        let prefix = ChunkBody::encode_prefix(&c.sha256, c.len, &c.bad);
        return conn.send_data(h, &[&prefix, &c.data]);
    }
    // Only the bytes outside the free ranges travel; the digest covers the
    // chunk as stored (free = zeros), which the receiver rebuilds.
    h.flags |= FLAG_FREE;
    let prefix = ChunkBody::encode_prefix_free(&c.sha256, c.len, &c.bad, &c.free);
    let mut parts: Vec<&[u8]> = vec![&prefix];
    parts.extend(
        used_parts(c.len, &c.free)
            .into_iter()
            .map(|(s, e)| &c.data[s as usize..e as usize]),
    );
    conn.send_data(h, &parts)
}

/// Bytes of a chunk inside its free ranges.
pub(crate) fn free_len(free: &[(u32, u32)]) -> u64 {
    free.iter().map(|&(_, l)| u64::from(l)).sum()
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
    // How often each unacknowledged chunk was asked for again.
    let mut asked: HashMap<u64, u32> = HashMap::new();
    loop {
        if source_done && unacked.is_empty() {
            return Ok(());
        }
        match conn.next_event(Duration::from_millis(100)) {
            Some(Event::Chunk(c)) => {
                send_chunk(conn, disk, &c)?;
                stats.count(&c);
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
                        asked.retain(|&o, _| unacked.iter().any(|c| c.offset == o));
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
                        if let Some(c) = unacked.iter_mut().find(|c| c.offset == f.header.offset) {
                            count_ask(&mut asked, conn, bar, c.offset)?;
                            if f.header.flags & NAK_DATA != 0 && c.unchanged {
                                // The base cannot provide it: send the data after all.
                                c.unchanged = false;
                                stats.sent_after_all(c);
                            } else {
                                stats.resent_chunks += 1;
                            }
                            send_chunk(conn, disk, c)?;
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

/// Counts one more request for the chunk at `offset`; past `MAX_ASKS` the
/// transfer ends.
fn count_ask(asked: &mut HashMap<u64, u32>, conn: &Conn, bar: &Bar, offset: u64) -> Result<()> {
    let n = asked.entry(offset).or_default();
    *n += 1;
    if *n > MAX_ASKS {
        let what = "was asked for again by the peer";
        return Err(refused_too_often(conn, bar.name(), offset, what));
    }
    Ok(())
}

/// Builds the chunk to send from raw bytes and what is known about them.
pub(crate) fn digest_fresh(offset: u64, raw: RawChunk, known: Known) -> Result<OutChunk> {
    let len = raw.len();
    let RawChunk {
        data, bad, free, ..
    } = raw;
    if known.zero {
        crate::wire::bufpool::give(data);
        return Ok(OutChunk {
            offset,
            len,
            zero: true,
            sha256: [0; 32],
            bad,
            data: Vec::new(),
            damaged: false,
            free,
            unchanged: false,
        });
    }
    Ok(OutChunk {
        offset,
        len,
        zero: false,
        sha256: known.sha256.unwrap_or_else(|| sha256(&data)),
        bad,
        data,
        damaged: false,
        free,
        unchanged: false,
    })
}

/// Marks a chunk unchanged when its digest is the one the base backup's
/// journal holds for it (`base`: the digests by chunk index, `None` where the
/// base holds nothing). A zero chunk stays a zero chunk (cheaper), and one
/// with unreadable ranges is sent: its zeros are not the base's bytes.
pub(crate) fn against_base(mut c: OutChunk, chunk: u32, base: &[Option<[u8; 32]>]) -> OutChunk {
    let index = (c.offset / u64::from(chunk)) as usize;
    if !c.zero
        && !c.damaged
        && c.bad.is_empty()
        && base.get(index).copied().flatten() == Some(c.sha256)
    {
        c.unchanged = true;
    }
    c
}

/// Sends DISK_END and waits for DISK_DONE (repeating DISK_END if either is lost).
pub(crate) fn finish_disk(conn: &mut Conn, disk: u32, end: &msg::DiskEnd) -> Result<msg::DiskDone> {
    let payload = msg::to_json(end);
    conn.send(Header::new(kind::DISK_END, disk, 0), &payload)?;
    let f = conn.wait_control(&[kind::DISK_DONE], "finishing a disk", |c| {
        c.send(Header::new(kind::DISK_END, disk, 0), &payload)
    })?;
    msg::from_json(&f)
}
