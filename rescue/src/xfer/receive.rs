//! The receiving side of the data phase: each chunk's SHA-256 is checked
//! (on several threads, `checks.rs`, results in arrival order) before it goes
//! to the sink, in order; intact chunks after a gap wait (within a window)
//! while the missing one is asked for again (NAK); ACKs are cumulative.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use super::checks::{self, Checks};
use super::send::{MAX_ASKS, refused_too_often};
use super::{Geometry, Sink, SinkPipeline, Verified, have_bytes, peer_left, window};
use crate::proto::frame::{Frame, Header};
use crate::proto::msg::{
    ChunkBody, ChunkRanges, FLAG_DAMAGED, FLAG_FREE, FLAG_UNCHANGED, FLAG_ZERO, NAK_DATA, kind,
};
use crate::wire::conn::{Conn, Event, peer_error};
use crate::xfer::progress::Bar;

/// A chunk's check: ready to write, or why not.
type Checked = std::result::Result<Verified, Reject>;

/// Why a received chunk was not accepted.
enum Reject {
    Damaged(String),
    /// Marked unchanged, but the base cannot provide it: ask for the data.
    NeedData(String),
    /// Against what the sender declared: no resend can make it right.
    Refused(String),
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

    /// Asks for the chunk at `offset` again with its data (it was marked
    /// unchanged and the base cannot provide it).
    fn nak_data(&mut self, conn: &Conn, offset: u64) {
        let mut h = Header::new(kind::NAK, self.disk, offset);
        h.flags = NAK_DATA;
        self.send(conn, h);
        self.last_nak = Some((offset, Instant::now()));
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
pub(crate) enum OnDamaged {
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
pub(crate) struct StoreDamaged {
    pub(crate) disk: u32,
    pub(crate) offset: u64,
    pub(crate) len: u32,
}

/// A disk received to the end.
pub(crate) struct Received {
    /// The sender's DISK_END, to answer.
    pub(crate) end: Frame,
    /// Chunks damaged in transit and asked for again.
    pub(crate) resent: u64,
    /// (offset, length) of the chunks the store could not produce (OnDamaged::Skip).
    pub(crate) lost: Vec<(u64, u32)>,
    /// Chunks marked unchanged whose copy in the base failed its check.
    pub(crate) base_failed: u64,
}

/// Receives disk `disk` into `pipe` until the sender's DISK_END, with a choice
/// of what a FLAG_DAMAGED chunk does (only a restore accepts one). Returns that
/// frame (to answer it), how many damaged chunks were asked for again and what
/// the store could not produce.
pub(crate) fn receive_disk<S: Sink + 'static>(
    conn: &mut Conn,
    disk: u32,
    geo: Geometry,
    have: &ChunkRanges,
    pipe: &SinkPipeline<S>,
    bar: &Bar,
    on_damaged: OnDamaged,
) -> Result<Received> {
    bar.set_position(have_bytes(have, geo));
    let check = |f: Frame| accept(f, geo, pipe, on_damaged);
    std::thread::scope(|s| {
        let mut r = Receiving {
            disk,
            geo,
            next: have.next_missing(0),
            have,
            early: BTreeMap::new(),
            ans: Answers {
                disk,
                last_nak: None,
                gone: None,
            },
            damaged: 0,
            lost: Vec::new(),
            base_failed: 0,
            on_damaged,
            bad_headers: conn.stats.bad_headers.load(Ordering::Relaxed),
            reordering: conn.streams() > 1,
            window: window(conn.streams(), geo.chunk),
            refusals: HashMap::new(),
            checks: Checks::start(s, checks::workers(), &check),
        };
        r.run(conn, pipe, bar)
    })
}

/// The receiver's state for one disk.
struct Receiving<'a> {
    disk: u32,
    geo: Geometry,
    have: &'a ChunkRanges,
    /// The index of the next chunk to write (the first not held nor written).
    next: u64,
    /// Intact chunks that arrived after a missing one, checked and kept until
    /// the gap is filled (selective repeat: at most a window's worth).
    early: BTreeMap<u64, Verified>,
    ans: Answers,
    /// Chunks damaged in transit (asked for again).
    damaged: u64,
    /// (offset, length) of the chunks the store could not produce.
    lost: Vec<(u64, u32)>,
    base_failed: u64,
    on_damaged: OnDamaged,
    /// The connection's count of damaged headers, as last seen.
    bad_headers: u64,
    /// Chunks come over several streams: a later one arriving first says
    /// nothing about the missing one (it is on its way on another stream).
    /// A missing chunk is then asked for when nothing arrives (the streams
    /// lose nothing but what damage shows: those are asked for at once).
    reordering: bool,
    /// The sender's window (chunks in flight): as many are kept after a gap.
    window: usize,
    /// How often each chunk not yet written was refused (damaged, failing its
    /// check, or marked unchanged without a base copy): bounded by `MAX_ASKS`.
    refusals: HashMap<u64, u32>,
    /// The chunk checks in flight.
    checks: Checks<Checked>,
}

impl Receiving<'_> {
    /// Receives until the sender's DISK_END.
    fn run<S: Sink + 'static>(
        &mut self,
        conn: &mut Conn,
        pipe: &SinkPipeline<S>,
        bar: &Bar,
    ) -> Result<Received> {
        let mut quiet = Instant::now();
        loop {
            pipe.failed()?;
            while let Some((h, c)) = self.checks.next(false)? {
                self.checked(conn, pipe, bar, h, c)?;
            }
            let busy = self.checks.pending() > 0;
            let ev = conn.next_event(Duration::from_millis(if busy { 2 } else { 500 }));
            self.check_headers(conn, bar);
            match ev {
                Some(Event::Closed(c)) => {
                    // What arrived before the end is still checked and written.
                    self.drain(conn, pipe, bar)?;
                    return Err(c.into_error("receiving data"));
                }
                Some(Event::Frame(f)) => {
                    quiet = Instant::now();
                    if let Some(end) = self.frame(conn, pipe, bar, f)? {
                        return Ok(end);
                    }
                }
                _ if busy => {}
                _ => {
                    if let Some(e) = self.ans.gone.take() {
                        // The peer went away and everything it had sent is written.
                        return Err(e);
                    }
                    // Quiet while chunks wait behind a gap: ask again (at most once a second).
                    if !self.early.is_empty() && quiet.elapsed() >= Duration::from_millis(500) {
                        self.ans.nak(conn, self.next_off(), false);
                    }
                }
            }
        }
    }

    /// Hands every check in flight to `checked`.
    fn drain<S: Sink + 'static>(
        &mut self,
        conn: &Conn,
        pipe: &SinkPipeline<S>,
        bar: &Bar,
    ) -> Result<()> {
        while let Some((h, c)) = self.checks.next(true)? {
            self.checked(conn, pipe, bar, h, c)?;
        }
        Ok(())
    }

    /// A frame from the sender; the disk's end once DISK_END came.
    fn frame<S: Sink + 'static>(
        &mut self,
        conn: &mut Conn,
        pipe: &SinkPipeline<S>,
        bar: &Bar,
        f: Frame,
    ) -> Result<Option<Received>> {
        if !f.intact {
            self.damaged_frame(conn, bar, &f)?;
            return Ok(None);
        }
        let disk = self.disk;
        match f.header.kind {
            kind::CHUNK if f.header.disk == disk => self.incoming(conn, pipe, bar, f)?,
            kind::DISK_END if f.header.disk == disk => {
                self.drain(conn, pipe, bar)?;
                if self.next < self.geo.count() {
                    bail!(
                        "the sender finished disk {disk} but chunks from offset {} are missing",
                        self.next_off()
                    );
                }
                return Ok(Some(Received {
                    end: f,
                    resent: self.damaged,
                    lost: std::mem::take(&mut self.lost),
                    base_failed: self.base_failed,
                }));
            }
            kind::ERROR | kind::BYE => {
                self.drain(conn, pipe, bar)?;
                if f.header.kind == kind::BYE {
                    return Err(peer_left("sending a disk"));
                }
                return Err(peer_error(&f));
            }
            _ => {
                // A repeated request (DISK_END for the previous disk, or the
                // BACKUP_BEGIN whose answer arrived damaged): answer it again.
                conn.answered_before(&f)?;
            }
        }
        Ok(None)
    }

    /// An intact chunk of this disk: checked on a worker unless it is one
    /// already held (acknowledged again) or none of the disk's chunks starts
    /// there.
    fn incoming<S: Sink + 'static>(
        &mut self,
        conn: &Conn,
        pipe: &SinkPipeline<S>,
        bar: &Bar,
        f: Frame,
    ) -> Result<()> {
        let off = f.header.offset;
        if off < self.next_off() {
            self.ans.ack(conn, self.next_off());
            return Ok(());
        }
        if !off.is_multiple_of(u64::from(self.geo.chunk)) || off >= self.geo.size {
            return Ok(());
        }
        if self.checks.full()
            && let Some((h, c)) = self.checks.next(true)?
        {
            self.checked(conn, pipe, bar, h, c)?;
        }
        self.checks.submit(f)
    }

    /// Where the next chunk to write starts: the offset an ACK names.
    fn next_off(&self) -> u64 {
        self.geo.start_of(self.next)
    }

    /// A damaged header cannot say what it carried: the frame was skipped and
    /// the expected chunk (often what it was) is asked for again. Checked even
    /// when nothing else arrives: the lost frame may have been the last the
    /// sender's window allowed.
    fn check_headers(&mut self, conn: &Conn, bar: &Bar) {
        let now_bad = conn.stats.bad_headers.load(Ordering::Relaxed);
        if now_bad > self.bad_headers {
            let next_off = self.next_off();
            self.damaged += now_bad - self.bad_headers;
            bar.println(&format!(
                "{} damaged message header(s) skipped; asking again for offset {next_off}",
                now_bad - self.bad_headers
            ));
            self.bad_headers = now_bad;
            if self.next < self.geo.count() {
                self.ans.nak(conn, next_off, true);
            }
        }
    }

    /// A frame whose payload failed its CRC: a chunk not yet written is asked
    /// for again (the header has its own CRC: its offset is trustworthy).
    fn damaged_frame(&mut self, conn: &Conn, bar: &Bar, f: &Frame) -> Result<()> {
        conn.stats.corrupt_frames.fetch_add(1, Ordering::Relaxed);
        let h = &f.header;
        if h.kind == kind::CHUNK && h.disk == self.disk && h.offset >= self.next_off() {
            self.refused(conn, bar, h.offset)?;
            self.damaged += 1;
            bar.println(&format!(
                "damaged chunk at offset {} (CRC mismatch): asking for it again",
                h.offset
            ));
            self.ans.nak(conn, h.offset, true);
        }
        Ok(())
    }

    /// Counts a refusal of the chunk at `offset`; the `MAX_ASKS`th more ends
    /// the transfer (a sender that keeps sending it wrong, or a link that
    /// damages it every time, would otherwise be asked for it without end).
    fn refused(&mut self, conn: &Conn, bar: &Bar, offset: u64) -> Result<()> {
        let next = self.next_off();
        self.refusals.retain(|&o, _| o >= next);
        let n = self.refusals.entry(offset).or_default();
        *n += 1;
        if *n > MAX_ASKS {
            let what = "arrived damaged or failed its check";
            return Err(refused_too_often(conn, bar.name(), offset, what));
        }
        Ok(())
    }

    /// A checked chunk of this disk: the next one is written (with the kept
    /// ones it makes contiguous), a later one kept, an earlier one acked again.
    fn checked<S: Sink + 'static>(
        &mut self,
        conn: &Conn,
        pipe: &SinkPipeline<S>,
        bar: &Bar,
        h: Header,
        c: Checked,
    ) -> Result<()> {
        let next_off = self.next_off();
        if h.offset == next_off && self.next < self.geo.count() {
            let accepted = self.write_in_order(conn, pipe, bar, c)?;
            let ack = self.next_off();
            self.early.retain(|&o, _| o > ack);
            if accepted {
                self.ans.ack(conn, ack);
            }
            // Kept chunks beyond a new gap: that one is missing too.
            if accepted && !self.early.is_empty() && !self.reordering {
                self.ans.nak(conn, ack, false);
            }
        } else if h.offset > next_off {
            let v = match c {
                Ok(v) => v,
                Err(why) => return self.rejected(conn, bar, h.offset, why),
            };
            let window_end =
                next_off.saturating_add(self.window as u64 * u64::from(self.geo.chunk));
            if h.offset < window_end && self.early.len() < self.window {
                self.early.entry(h.offset).or_insert(v);
            }
            if !self.reordering {
                self.ans.nak(conn, next_off, false);
            }
        } else {
            self.ans.ack(conn, next_off);
        }
        Ok(())
    }

    /// A chunk that failed its check is asked for again (with its data, when
    /// the base could not provide it).
    fn rejected(&mut self, conn: &Conn, bar: &Bar, at: u64, why: Reject) -> Result<()> {
        match why {
            Reject::Refused(why) => {
                let m = format!(
                    "refusing the chunk of disk {} at offset {at}: {why}",
                    self.disk
                );
                conn.send_error("bad_request", &m);
                bail!(m);
            }
            Reject::Damaged(why) => {
                self.refused(conn, bar, at)?;
                self.damaged += 1;
                bar.println(&format!(
                    "chunk at offset {at} failed verification ({why}): asking for it again"
                ));
                self.ans.nak(conn, at, true);
            }
            Reject::NeedData(why) => {
                self.refused(conn, bar, at)?;
                self.base_failed += 1;
                bar.println(&format!(
                    "chunk at offset {at} is marked unchanged but {why}: asking for its data"
                ));
                self.ans.nak_data(conn, at);
            }
        }
        Ok(())
    }

    /// Writes `c`, the next chunk, then any kept ones it makes contiguous.
    /// Returns whether any was written; one that failed its check is asked
    /// for again.
    fn write_in_order<S: Sink + 'static>(
        &mut self,
        conn: &Conn,
        pipe: &SinkPipeline<S>,
        bar: &Bar,
        mut c: Checked,
    ) -> Result<bool> {
        let mut accepted = false;
        loop {
            let v = match c {
                Ok(v) => v,
                Err(why) => {
                    self.rejected(conn, bar, self.geo.offset(self.next), why)?;
                    return Ok(accepted);
                }
            };
            self.take(pipe, bar, v)?;
            accepted = true;
            if self.next >= self.geo.count() {
                return Ok(accepted);
            }
            match self.early.remove(&self.geo.offset(self.next)) {
                Some(k) => c = Ok(k),
                None => return Ok(accepted),
            }
        }
    }

    /// Hands the next chunk, verified, to the writer.
    fn take<S: Sink + 'static>(
        &mut self,
        pipe: &SinkPipeline<S>,
        bar: &Bar,
        v: Verified,
    ) -> Result<()> {
        if v.damaged && self.on_damaged == OnDamaged::Stop {
            let (disk, offset, len) = (self.disk, v.offset, v.len);
            return Err(StoreDamaged { disk, offset, len }.into());
        }
        if v.damaged {
            self.lost.push((v.offset, v.len));
        }
        let len = u64::from(v.len);
        pipe.submit(v)?;
        bar.inc(len);
        self.next = self.have.next_missing(self.next + 1);
        Ok(())
    }
}

/// Decodes and checks a chunk (on a worker): its length must be that of the
/// chunk at its offset, which lies inside the disk.
fn accept<S: Sink + 'static>(
    f: Frame,
    geo: Geometry,
    pipe: &SinkPipeline<S>,
    on_damaged: OnDamaged,
) -> Checked {
    let index = f.header.offset / u64::from(geo.chunk);
    let damaged = f.header.flags & FLAG_DAMAGED != 0;
    if damaged && on_damaged == OnDamaged::Refuse {
        return Err(Reject::Damaged(
            "marked damaged by a sender that may not".into(),
        ));
    }
    // A damaged chunk carries no data; its place is filled with zeros.
    let zero = f.header.flags & FLAG_ZERO != 0 || damaged;
    let unchanged = f.header.flags & FLAG_UNCHANGED != 0 && !zero;
    let offset = f.header.offset;
    let free = f.header.flags & FLAG_FREE != 0;
    if unchanged && free {
        // An unchanged chunk names the base's chunk as stored, free parts and
        // all: it has no free list to carry.
        return Err(Reject::Damaged("marked both unchanged and free".into()));
    }
    let mut body = ChunkBody::decode_with(f.payload, zero || unchanged, free, geo.chunk)
        .map_err(Reject::Damaged)?;
    if !body.free.is_empty() {
        if let Some(why) = pipe.free_refused(offset, &body.free) {
            return Err(Reject::Refused(why));
        }
        // The chunk as stored: its carried bytes in place, zeros in the free
        // ranges; the digest and the writer see that.
        let mut whole = crate::wire::bufpool::take(body.len as usize);
        body.expand(&mut whole);
        crate::wire::bufpool::give(std::mem::replace(&mut body.payload, whole));
        body.start = 0;
    }
    let want = geo.len_of(index);
    if body.len != want {
        return Err(Reject::Damaged(format!(
            "length {} instead of {want}",
            body.len
        )));
    }
    if unchanged {
        return from_base(body, offset, pipe);
    }
    if !zero && !pipe.check(body.data(), &body.sha256) {
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
        unchanged: false,
    })
}

/// A chunk the sender marked unchanged: the base's copy, once its journal
/// holds the digest the sender named and its bytes hash to it (the check also
/// feeds the whole-image digest, as a received chunk's would).
fn from_base<S: Sink + 'static>(
    body: ChunkBody,
    offset: u64,
    pipe: &SinkPipeline<S>,
) -> std::result::Result<Verified, Reject> {
    if !body.bad.is_empty() {
        return Err(Reject::Damaged(
            "marked unchanged with unreadable ranges".into(),
        ));
    }
    let Some(base) = pipe.base() else {
        return Err(Reject::NeedData("there is no base backup".into()));
    };
    let (recorded, data) = base
        .chunk(offset, body.len)
        .map_err(|e| Reject::NeedData(format!("the base cannot be read ({e:#})")))?;
    if recorded != body.sha256 {
        crate::wire::bufpool::give(data);
        return Err(Reject::NeedData(
            "the base's journal holds another digest".into(),
        ));
    }
    if !pipe.check(&data, &body.sha256) {
        crate::wire::bufpool::give(data);
        return Err(Reject::NeedData(
            "the base's copy does not match its digest".into(),
        ));
    }
    crate::wire::bufpool::give(body.payload);
    Ok(Verified {
        offset,
        len: body.len,
        zero: false,
        sha256: body.sha256,
        bad: Vec::new(),
        payload: Arc::new(data),
        start: 0,
        damaged: false,
        unchanged: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xfer::sink::tests::NullSink;

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
        let pipe = SinkPipeline::start(NullSink, 8192);
        // From a backup client it is damage, asked for again.
        assert!(accept(frame(), geo, &pipe, OnDamaged::Refuse).is_err());
        // On restore it stands for zeros, marked.
        let v = accept(frame(), geo, &pipe, OnDamaged::Skip).ok().unwrap();
        assert!(v.damaged && v.zero && v.len == 4096 && v.bytes().is_empty());
    }

    #[test]
    fn a_chunk_marked_unchanged_and_free_is_refused() {
        let geo = Geometry {
            size: 8192,
            chunk: 4096,
        };
        let mut h = Header::new(kind::CHUNK, 0, 4096);
        h.flags |= FLAG_UNCHANGED | FLAG_FREE;
        let f = Frame {
            header: h,
            payload: ChunkBody::encode_prefix_free(&[1; 32], 4096, &[], &[(0, 4096)]),
            intact: true,
        };
        let pipe = SinkPipeline::start(NullSink, 8192);
        let Err(Reject::Damaged(why)) = accept(f, geo, &pipe, OnDamaged::Refuse) else {
            panic!("a chunk marked unchanged and free was accepted")
        };
        assert_eq!(why, "marked both unchanged and free");
    }
}
