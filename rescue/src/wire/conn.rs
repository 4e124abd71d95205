//! A protocol connection over any byte stream: a reader thread that turns bytes
//! into frames, a keepalive thread so a busy peer is not mistaken for a dead one,
//! and request/response helpers that survive a corrupted message. It also keeps
//! a peer from holding a session without doing anything (see "Liveness" in
//! docs/protocol.md): silence, keepalives without progress, a stalled write.

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::cancel::{self, Interrupted, Token};
use crate::exit::{self, Exit};
use crate::proto::frame::{self, Frame, FrameError, FrameReader, Header, Read1};
use crate::proto::msg::{self, ErrorMsg, kind};
use crate::wire::transport::Stream;

/// How often each side proves it is alive while it has nothing else to say.
const KEEPALIVE: Duration = Duration::from_secs(2);
/// A request is sent again when no answer came in this long (and the peer lives).
const REQUEST_RETRY: Duration = Duration::from_secs(20);

/// A peer that completes no frame for this long while we read is gone: an honest
/// one sends a keepalive every 2 s, so this is ten missed in a row. It also ends
/// a frame that trickles in or stops half-way (a header announcing 8 MiB, then
/// nothing). Tests shorten it with RESCUE_PEER_SILENCE_MS.
pub(crate) fn peer_silence() -> Duration {
    crate::wire::transport::bound("RESCUE_PEER_SILENCE_MS", Duration::from_secs(20))
}

/// serve drops a peer that sends nothing but keepalives, and reports no local
/// work in them, for this long. An honest peer's keepalives count its reads
/// (a failing disk read sector by sector, a target compared for --resume), so
/// only a peer that does nothing, or a person leaving a prompt unanswered,
/// reaches it. Tests shorten it with RESCUE_PEER_PROGRESS_MS.
pub(crate) fn peer_progress() -> Duration {
    crate::wire::transport::bound("RESCUE_PEER_PROGRESS_MS", Duration::from_secs(300))
}

/// Local work done, sent in every keepalive (the PING header's offset) so the
/// peer can tell a slow honest side from one that only keeps the line open.
static WORK: AtomicU64 = AtomicU64::new(0);

/// Counts one piece of local work (a read of the source or of a target).
pub(crate) fn note_work() {
    WORK.fetch_add(1, Ordering::Relaxed);
}

/// A chunk ready to be sent, produced by the local read/hash pipeline.
#[derive(Debug)]
pub(crate) struct OutChunk {
    pub(crate) offset: u64,
    pub(crate) len: u32,
    pub(crate) zero: bool,
    pub(crate) sha256: [u8; 32],
    pub(crate) bad: Vec<(u32, u32)>,
    pub(crate) data: Vec<u8>,
    /// The source cannot produce this chunk intact (a damaged store): sent
    /// with FLAG_DAMAGED, without data.
    pub(crate) damaged: bool,
    /// Free ranges (used-block backups) inside the chunk: zeros in `data`, left
    /// out of the frame (FLAG_FREE). Ignored for a zero or damaged chunk.
    pub(crate) free: Vec<(u32, u32)>,
    /// Its digest is the base backup's for it: sent with FLAG_UNCHANGED,
    /// without data (the data is kept in case the receiver asks for it).
    pub(crate) unchanged: bool,
}

impl Drop for OutChunk {
    fn drop(&mut self) {
        crate::wire::bufpool::give(std::mem::take(&mut self.data));
    }
}

/// Everything the main loop of a session waits for, in one queue.
#[derive(Debug)]
pub(crate) enum Event {
    Frame(Frame),
    /// The stream ended or failed; no more frames will come.
    Closed(Closed),
    /// From the local pipeline: the next chunk to send.
    Chunk(OutChunk),
    /// The local pipeline has produced every chunk.
    SourceDone,
    /// The local pipeline failed (source unreadable as a whole, store bitrot, ...).
    SourceFailed(String),
}

#[derive(Debug, Clone)]
pub(crate) enum Closed {
    /// The peer closed its end (EOF).
    Eof,
    /// The cable or the peer is gone (ENXIO, reset).
    Gone(String),
    /// The peer speaks something we cannot read.
    Protocol(String),
    /// We stopped reading (shutdown, or the user interrupted).
    Stopped,
}

impl Closed {
    /// The error a user sees when the stream ends in the middle of something.
    pub(crate) fn into_error(self, doing: &str) -> anyhow::Error {
        match self {
            Closed::Eof => Exit::new(
                exit::PEER_GONE,
                format!("the peer closed the connection while {doing}"),
            )
            .into(),
            Closed::Gone(why) => Exit::new(
                exit::PEER_GONE,
                format!(
                    "the peer is gone while {doing} ({why}): is the cable plugged in and rescue running on the other machine?"
                ),
            )
            .into(),
            Closed::Protocol(why) => anyhow::anyhow!("protocol error while {doing}: {why}"),
            Closed::Stopped => Interrupted::new("interrupted").into(),
        }
    }
}

/// Counters a session reports at the end.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) bytes_out: AtomicU64,
    pub(crate) bytes_in: AtomicU64,
    pub(crate) corrupt_frames: AtomicU64,
    pub(crate) skipped_bytes: AtomicU64,
    /// Frame headers found damaged (the frame was skipped to resynchronise).
    pub(crate) bad_headers: AtomicU64,
    /// When the last frame (any, keepalives included) arrived, or the reader
    /// last waited for us to take one, in ms since the start.
    pub(crate) last_rx_ms: AtomicU64,
    /// When the peer last made progress (a message other than a keepalive, a
    /// keepalive reporting new work, or our answer starting its turn), in ms.
    pub(crate) last_progress_ms: AtomicU64,
    /// The reader holds a frame and waits for room in the queue: the peer is
    /// waiting for us, its silence is ours.
    pub(crate) reader_waiting: AtomicBool,
    /// Frames taken from the queue, so the reader knows whether the last one it
    /// queued is still waiting there.
    pub(crate) frames_taken: AtomicU64,
}

type Writer = Arc<Mutex<Box<dyn Write + Send>>>;

/// A further stream of the session (protocol 6): it carries chunks only, and
/// its frames join the same queue as the first stream's.
struct DataStream {
    writer: Writer,
    stream: Stream,
}

pub struct Conn {
    writer: Writer,
    /// The session's further streams (none: one stream carries everything).
    data: Vec<DataStream>,
    /// Chunks go round the streams in turn.
    turn: AtomicUsize,
    events: Receiver<Event>,
    sender: SyncSender<Event>,
    stop: Token,
    threads: Vec<JoinHandle<()>>,
    pub(crate) stats: Arc<Stats>,
    /// The last answer we gave, to repeat when the same request comes again.
    reply_cache: Option<(u8, u32, Header, Vec<u8>)>,
    /// How the stream ended, once known (also when a failed send saw it first).
    closed: RefCell<Option<Closed>>,
    stream: Stream,
    started: Instant,
    /// After the handshake: a peer silent for this long is gone.
    liveness: Option<Duration>,
    /// serve: a peer without progress for this long is dropped.
    progress: Option<Duration>,
    /// A write failed: nothing more (not even BYE) is worth waiting to send.
    broken: AtomicBool,
    /// A frame taken from the queue by a loop that does not handle it, for
    /// the next `next_event` (see `put_back`).
    put_back: Option<Frame>,
}

fn classify(e: &io::Error) -> Closed {
    match e.raw_os_error() {
        Some(libc::ENXIO) => Closed::Gone("no such device: cable unplugged or peer gone".into()),
        Some(libc::ECONNRESET) | Some(libc::EPIPE) => Closed::Gone("connection reset".into()),
        Some(libc::ESHUTDOWN) | Some(libc::ENODEV) => Closed::Gone(e.to_string()),
        _ => Closed::Gone(e.to_string()),
    }
}

impl Conn {
    /// Starts the reader and keepalive threads on an open stream.
    pub fn new(stream: Stream) -> Result<Conn> {
        let (sender, events) = mpsc::sync_channel(24);
        let stop = Token::new();
        let stats = Arc::new(Stats::default());
        let started = Instant::now();
        let mut threads = Vec::new();
        let writer = start_reader(&stream, &sender, &stats, &stop, started, &mut threads, true)?;
        {
            let writer = writer.clone();
            let stop = stop.clone();
            threads.push(
                thread::Builder::new()
                    .name("keepalive".into())
                    .spawn(move || keepalive_loop(writer, stop))?,
            );
        }
        Ok(Conn {
            writer,
            data: Vec::new(),
            turn: AtomicUsize::new(0),
            events,
            sender,
            stop,
            threads,
            stats,
            reply_cache: None,
            closed: RefCell::new(None),
            stream,
            started,
            liveness: None,
            progress: None,
            broken: AtomicBool::new(false),
            put_back: None,
        })
    }

    /// Adds a further stream to the session (its JOIN was answered): its
    /// frames join the queue, and `send_data` sends chunks over it in turn.
    /// Any stream's end is the session's: a resume continues it.
    pub(crate) fn add_stream(&mut self, stream: Stream) -> Result<()> {
        let writer = start_reader(
            &stream,
            &self.sender,
            &self.stats,
            &self.stop,
            self.started,
            &mut self.threads,
            false,
        )?;
        self.data.push(DataStream { writer, stream });
        Ok(())
    }

    /// How many streams the session runs over.
    pub(crate) fn streams(&self) -> usize {
        1 + self.data.len()
    }

    /// Sends a chunk over the next stream in turn (the first stream too):
    /// chunks are addressed by (disk, offset), so the receiver needs no order.
    pub(crate) fn send_data(&self, header: Header, parts: &[&[u8]]) -> Result<()> {
        let i = self.turn.fetch_add(1, Ordering::Relaxed) % self.streams();
        let w = match i {
            0 => &self.writer,
            _ => &self.data[i - 1].writer,
        };
        self.write_to(w, header, parts).map_err(|e| {
            self.pending_error()
                .unwrap_or_else(|| classify(&e).into_error("sending"))
        })
    }

    /// A handle through which local producers (the read pipeline) queue events.
    pub(crate) fn event_sender(&self) -> SyncSender<Event> {
        self.sender.clone()
    }

    /// Sends one frame.
    pub(crate) fn send(&self, header: Header, payload: &[u8]) -> Result<()> {
        self.send_parts(header, &[payload])
    }

    /// Sends one frame whose payload is `parts` one after the other.
    pub(crate) fn send_parts(&self, header: Header, parts: &[&[u8]]) -> Result<()> {
        self.write_parts(header, parts).map_err(|e| {
            // The peer often says why before it hangs up (disk full): prefer that.
            self.pending_error()
                .unwrap_or_else(|| classify(&e).into_error("sending"))
        })
    }

    /// Sends a frame without looking for a queued ERROR when that fails: the
    /// queue is left as it is, for a receiver that still wants to process the
    /// chunks that arrived before the peer went away (it meets any ERROR there).
    pub(crate) fn send_keeping_queue(&self, header: Header, payload: &[u8]) -> Result<()> {
        self.write_parts(header, &[payload])
            .map_err(|e| classify(&e).into_error("sending"))
    }

    fn write_parts(&self, header: Header, parts: &[&[u8]]) -> std::io::Result<()> {
        self.write_to(&self.writer, header, parts)
    }

    fn write_to(&self, writer: &Writer, header: Header, parts: &[&[u8]]) -> std::io::Result<()> {
        let mut w = writer
            .lock()
            .map_err(|_| std::io::Error::other("writer lock poisoned"))?;
        frame::write_frame_parts(&mut *w, header, parts).inspect_err(|_| {
            self.broken.store(true, Ordering::Relaxed);
        })?;
        drop(w);
        let len: usize = parts.iter().map(|p| p.len()).sum();
        self.stats
            .bytes_out
            .fetch_add((frame::HEADER_LEN + len) as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Counts a frame taken from the queue (see `read_loop`'s repeat rule).
    fn note_taken<E>(&self, got: &Result<Event, E>) {
        if let Ok(Event::Frame(_)) = got {
            self.stats.frames_taken.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// An ERROR the peer sent that is still queued, waiting briefly for it.
    /// The end of the stream met on the way is kept for `next_event`, which
    /// would otherwise wait for an event that never comes.
    fn pending_error(&self) -> Option<anyhow::Error> {
        self.queued_error(0).map(|f| peer_error(&f))
    }

    /// The peer's ERROR, if one comes within half a second, once `ends` of
    /// the streams were seen to end. Over several streams another stream's
    /// end can overtake the ERROR the peer sent on the first before closing:
    /// the wait goes on until every stream ended.
    fn queued_error(&self, mut ends: usize) -> Option<Frame> {
        let until = Instant::now() + Duration::from_millis(500);
        while Instant::now() < until && ends < self.streams() {
            let got = self.events.recv_timeout(Duration::from_millis(50));
            self.note_taken(&got);
            match got {
                Ok(Event::Frame(f)) if f.intact && f.header.kind == kind::ERROR => {
                    return Some(f);
                }
                Ok(Event::Closed(c)) => {
                    ends += 1;
                    if self.closed.borrow().is_none() {
                        self.closed.replace(Some(c));
                    }
                }
                Err(RecvTimeoutError::Disconnected) => return None,
                _ => {}
            }
        }
        None
    }

    /// Sends a control message with a JSON body.
    pub(crate) fn send_json<T: serde::Serialize>(&self, k: u8, body: &T) -> Result<()> {
        self.send(Header::new(k, 0, 0), &msg::to_json(body))
    }

    /// Sends an error for the peer to print, ignoring failures (we are failing already).
    pub(crate) fn send_error(&self, code: &str, message: &str) {
        let _ = self.send_json(
            kind::ERROR,
            &ErrorMsg {
                code: code.into(),
                message: message.into(),
            },
        );
    }

    /// From now on, a peer that sends nothing (not even keepalives) for `limit`
    /// is treated as gone.
    pub(crate) fn set_liveness(&mut self, limit: Duration) {
        self.stats
            .last_rx_ms
            .store(self.now_ms(), Ordering::Relaxed);
        self.liveness = Some(limit);
    }

    /// From now on (serve), a peer that makes no progress for `limit` is
    /// dropped: keepalives alone do not keep a session.
    pub(crate) fn require_progress(&mut self, limit: Duration) {
        self.rearm();
        self.progress = Some(limit);
    }

    /// Our answer went out: the peer's turn starts now.
    fn rearm(&self) {
        self.stats
            .last_progress_ms
            .store(self.now_ms(), Ordering::Relaxed);
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn since(&self, at: &AtomicU64) -> Duration {
        Duration::from_millis(self.now_ms().saturating_sub(at.load(Ordering::Relaxed)))
    }

    /// Why the peer counts as gone now, if it does. Called only with nothing
    /// queued, so a busy main loop never blames the peer for its own delay.
    /// The flag says whether the peer is still listening (to be told why).
    fn stalled(&self) -> Option<(Closed, bool)> {
        if self.stats.reader_waiting.load(Ordering::Relaxed) {
            return None;
        }
        if let Some(limit) = self.liveness {
            let quiet = self.since(&self.stats.last_rx_ms);
            if quiet > limit {
                return Some((
                    Closed::Gone(format!("no word from the peer for {}s", quiet.as_secs())),
                    false,
                ));
            }
        }
        if let Some(limit) = self.progress {
            let idle = self.since(&self.stats.last_progress_ms);
            if idle > limit {
                return Some((
                    Closed::Gone(format!(
                        "only keepalives from the peer for {}s, no progress",
                        idle.as_secs()
                    )),
                    true,
                ));
            }
        }
        None
    }

    /// Hands `f` to the next `next_event` before anything queued: a loop that
    /// read one frame too many (the first chunk after the requests it serves).
    pub(crate) fn put_back(&mut self, f: Frame) {
        self.put_back = Some(f);
    }

    /// Waits for the next event. `None` after `timeout`.
    pub(crate) fn next_event(&mut self, timeout: Duration) -> Option<Event> {
        if let Some(f) = self.put_back.take() {
            return Some(Event::Frame(f));
        }
        if let Some(c) = self.closed.borrow().as_ref() {
            return Some(Event::Closed(c.clone()));
        }
        if cancel::interrupted() {
            self.closed.replace(Some(Closed::Stopped));
            return Some(Event::Closed(Closed::Stopped));
        }
        let got = match self.events.try_recv() {
            Ok(ev) => Ok(ev),
            Err(TryRecvError::Disconnected) => Err(RecvTimeoutError::Disconnected),
            Err(TryRecvError::Empty) => {
                if let Some((c, tell)) = self.stalled() {
                    // A peer that keeps the line open hears why it is dropped.
                    if let (true, Closed::Gone(why)) = (tell, &c) {
                        self.send_error("timeout", &format!("closing the session: {why}"));
                    }
                    self.closed.replace(Some(c.clone()));
                    return Some(Event::Closed(c));
                }
                self.events.recv_timeout(timeout)
            }
        };
        self.note_taken(&got);
        match got {
            Ok(Event::Closed(c)) => {
                self.closed.replace(Some(c.clone()));
                // The peer may have said why on another stream.
                if let Some(f) = self.queued_error(1) {
                    return Some(Event::Frame(f));
                }
                Some(Event::Closed(c))
            }
            Ok(ev) => Some(ev),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => Some(Event::Closed(Closed::Stopped)),
        }
    }

    /// Waits for a control message of one of `kinds` (ERROR becomes an error).
    /// Other frames are handed to `other` (e.g. stale chunk acks); corrupted ones
    /// are counted and make `on_corrupt` run (to repeat a request).
    pub(crate) fn wait_control(
        &mut self,
        kinds: &[u8],
        doing: &str,
        mut on_retry: impl FnMut(&Conn) -> Result<()>,
    ) -> Result<Frame> {
        let mut last = Instant::now();
        loop {
            match self.next_event(Duration::from_millis(500)) {
                Some(Event::Frame(f)) => {
                    if !f.intact {
                        self.stats.corrupt_frames.fetch_add(1, Ordering::Relaxed);
                        on_retry(self)?;
                        last = Instant::now();
                        continue;
                    }
                    if f.header.kind == kind::ERROR {
                        return Err(peer_error(&f));
                    }
                    if kinds.contains(&f.header.kind) {
                        return Ok(f);
                    }
                    if f.header.kind == kind::BYE {
                        return Err(Closed::Eof.into_error(doing));
                    }
                }
                Some(Event::Closed(c)) => return Err(c.into_error(doing)),
                Some(_) => {}
                None => {
                    if last.elapsed() > REQUEST_RETRY {
                        on_retry(self)?;
                        last = Instant::now();
                    }
                }
            }
        }
    }

    /// Sends a request and waits for its answer, repeating it when a message was
    /// lost to corruption.
    pub(crate) fn request<T: serde::Serialize>(
        &mut self,
        k: u8,
        body: &T,
        answers: &[u8],
        doing: &str,
    ) -> Result<Frame> {
        let payload = msg::to_json(body);
        self.send(Header::new(k, 0, 0), &payload)?;
        self.wait_control(answers, doing, |c| c.send(Header::new(k, 0, 0), &payload))
    }

    /// Answers a request and remembers the answer for a repeated request.
    pub(crate) fn reply(
        &mut self,
        request: &Frame,
        header: Header,
        payload: Vec<u8>,
    ) -> Result<()> {
        self.send(header, &payload)?;
        self.rearm();
        self.reply_cache = Some((
            request.header.kind,
            request.header.payload_crc,
            header,
            payload,
        ));
        Ok(())
    }

    pub(crate) fn reply_json<T: serde::Serialize>(
        &mut self,
        request: &Frame,
        k: u8,
        body: &T,
    ) -> Result<()> {
        self.reply(request, Header::new(k, 0, 0), msg::to_json(body))
    }

    /// If `request` repeats the last one answered, answers it again and says so.
    pub(crate) fn answered_before(&self, request: &Frame) -> Result<bool> {
        if let Some((k, crc, h, p)) = &self.reply_cache
            && *k == request.header.kind
            && *crc == request.header.payload_crc
        {
            self.send(*h, p)?;
            self.rearm();
            return Ok(true);
        }
        Ok(false)
    }

    /// Says goodbye and stops the threads. The peer reads BYE, then EOF.
    /// Skipped when the stream is known broken: a peer that stopped reading
    /// would hold us for the write deadline.
    pub(crate) fn close(mut self) {
        let ended = matches!(
            self.closed.borrow().as_ref(),
            Some(Closed::Gone(_) | Closed::Protocol(_))
        );
        if !ended && !self.broken.load(Ordering::Relaxed) {
            let _ = self.write_parts(Header::new(kind::BYE, 0, 0), &[&[]]);
        }
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.stop();
        self.stream.shutdown();
        for d in &self.data {
            d.stream.shutdown();
        }
        // Drain so a reader blocked on a full queue can see the stop flag.
        while self.events.try_recv().is_ok() {}
        for t in self.threads.drain(..) {
            while !t.is_finished() {
                while self.events.try_recv().is_ok() {}
                thread::sleep(Duration::from_millis(5));
            }
            let _ = t.join();
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The message of an ERROR frame from the peer, as an error.
pub(crate) fn peer_error(f: &Frame) -> anyhow::Error {
    match msg::from_json::<ErrorMsg>(f) {
        Ok(e) => {
            let code = match e.code.as_str() {
                "refused" => exit::REFUSED,
                "verify" => exit::VERIFY_FAILED,
                _ => exit::ERROR,
            };
            Exit::new(
                code,
                format!("the peer reports: {}", crate::util::Escaped(&e.message)),
            )
            .into()
        }
        Err(err) => err,
    }
}

/// Starts the reader thread of `stream` (feeding `sender`) and returns its
/// writer, which gives up once that reader saw the peer's end go. `first`:
/// the stream that carries requests (see `read_loop`'s repeat rule).
fn start_reader(
    stream: &Stream,
    sender: &SyncSender<Event>,
    stats: &Arc<Stats>,
    stop: &Token,
    started: Instant,
    threads: &mut Vec<JoinHandle<()>>,
    first: bool,
) -> Result<Writer> {
    let reader = stream.reader(stop.clone())?;
    // Set by the reader when the peer's end goes, to free a blocked writer.
    let peer_closed = Token::new();
    let writer: Writer = Arc::new(Mutex::new(stream.writer(peer_closed.clone())?));
    let (sender, stats) = (sender.clone(), stats.clone());
    threads.push(thread::Builder::new().name("rx".into()).spawn(move || {
        read_loop(reader, sender, stats, started, first);
        peer_closed.stop();
    })?);
    Ok(writer)
}

fn read_loop(
    reader: Box<dyn Read + Send>,
    sender: SyncSender<Event>,
    stats: Arc<Stats>,
    started: Instant,
    first: bool,
) {
    let now_ms = || started.elapsed().as_millis() as u64;
    let mut fr = FrameReader::new(reader).with_buffers(crate::wire::bufpool::take_to_overwrite);
    // The work counter of the peer's last keepalive.
    let mut work = 0u64;
    // The last frame queued and how many were queued in all, to drop a repeat
    // of it while it is still waiting in a full queue (never once it was taken:
    // a receiver's second NAK for the same chunk must reach the sender).
    let mut queued: Option<Header> = None;
    let mut queued_count = 0u64;
    // This reader's counts so far: the stats add up every stream's.
    let (mut skipped, mut bad) = (0u64, 0u64);
    loop {
        let ev = match fr.read_frame() {
            Ok(Read1::Frame(f)) => {
                stats.bytes_in.fetch_add(
                    (frame::HEADER_LEN + f.payload.len()) as u64,
                    Ordering::Relaxed,
                );
                let (s, b) = (fr.skipped - skipped, fr.bad_headers - bad);
                (skipped, bad) = (fr.skipped, fr.bad_headers);
                stats.skipped_bytes.fetch_add(s, Ordering::Relaxed);
                stats.bad_headers.fetch_add(b, Ordering::Relaxed);
                stats.last_rx_ms.store(now_ms(), Ordering::Relaxed);
                if f.header.kind == kind::PING && f.intact {
                    if f.header.offset != work {
                        work = f.header.offset;
                        stats.last_progress_ms.store(now_ms(), Ordering::Relaxed);
                    }
                    continue;
                }
                if f.intact {
                    stats.last_progress_ms.store(now_ms(), Ordering::Relaxed);
                }
                Event::Frame(f)
            }
            Ok(Read1::Eof) => Event::Closed(Closed::Eof),
            Err(FrameError::Io(e)) if cancel::is_stopped(&e) => Event::Closed(Closed::Stopped),
            Err(FrameError::Io(e)) => Event::Closed(classify(&e)),
            Err(e) => Event::Closed(Closed::Protocol(e.to_string())),
        };
        let end = matches!(ev, Event::Closed(_));
        let header = match &ev {
            Event::Frame(f) if f.intact => Some(f.header),
            _ => None,
        };
        let is_frame = matches!(ev, Event::Frame(_));
        let ev = match sender.try_send(ev) {
            Ok(()) => None,
            // The same frame again (a request repeated while we were busy) while
            // the first is still queued: that one gets the answer, this can go.
            Err(TrySendError::Full(_))
                if first
                    && header.is_some()
                    && header == queued
                    && stats.frames_taken.load(Ordering::Relaxed) < queued_count =>
            {
                continue;
            }
            Err(TrySendError::Full(ev)) => Some(ev),
            Err(TrySendError::Disconnected(_)) => return,
        };
        if let Some(ev) = ev {
            stats.reader_waiting.store(true, Ordering::Relaxed);
            let sent = sender.send(ev);
            // The peer was waiting for us meanwhile: its clocks restart.
            stats.last_rx_ms.store(now_ms(), Ordering::Relaxed);
            stats.last_progress_ms.store(now_ms(), Ordering::Relaxed);
            stats.reader_waiting.store(false, Ordering::Relaxed);
            if sent.is_err() {
                return;
            }
        }
        queued = header;
        queued_count += u64::from(is_frame);
        if end {
            return;
        }
    }
}

fn keepalive_loop(writer: Arc<Mutex<Box<dyn Write + Send>>>, stop: Token) {
    let mut next = Instant::now() + KEEPALIVE;
    loop {
        if stop.sleep(next.saturating_duration_since(Instant::now())) {
            return;
        }
        if Instant::now() < next {
            continue;
        }
        next = Instant::now() + KEEPALIVE;
        let Ok(mut w) = writer.lock() else { return };
        let ping = Header::new(kind::PING, 0, WORK.load(Ordering::Relaxed));
        if frame::write_frame(&mut *w, ping, &[]).is_err() {
            return;
        }
    }
}

/// Waits for the peer's first message of `kind` after connecting, with a deadline.
pub(crate) fn expect_within(
    conn: &mut Conn,
    k: u8,
    within: Duration,
    doing: &str,
) -> Result<Frame> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!(
                "no answer from the peer while {doing} (waited {}s)",
                within.as_secs()
            );
        }
        match conn.next_event(left.min(Duration::from_millis(500))) {
            Some(Event::Frame(f)) if f.intact && f.header.kind == k => return Ok(f),
            Some(Event::Frame(f)) if f.intact && f.header.kind == kind::ERROR => {
                return Err(peer_error(&f));
            }
            Some(Event::Frame(f)) if !f.intact => {
                conn.stats.corrupt_frames.fetch_add(1, Ordering::Relaxed);
            }
            Some(Event::Closed(c)) => return Err(c.into_error(doing)),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn a_silent_peer_is_gone() {
        let (a, _b) = UnixStream::pair().unwrap();
        let mut c = Conn::new(Stream::Unix(a)).unwrap();
        c.set_liveness(Duration::from_millis(300));
        let t = Instant::now();
        loop {
            match c.next_event(Duration::from_millis(50)) {
                Some(Event::Closed(Closed::Gone(why))) => {
                    assert!(why.contains("no word from the peer"), "{why}");
                    break;
                }
                Some(other) => panic!("unexpected {other:?}"),
                None => assert!(t.elapsed() < Duration::from_secs(10), "never noticed"),
            }
        }
    }

    #[test]
    fn keepalives_keep_a_quiet_peer_alive_and_requests_are_answered_once() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut c = Conn::new(Stream::Unix(a)).unwrap();
        let mut d = Conn::new(Stream::Unix(b)).unwrap();
        c.set_liveness(Duration::from_millis(2500));
        // d says nothing but its keepalive for 3 s: c must not give up.
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(3) {
            if let Some(Event::Closed(why)) = c.next_event(Duration::from_millis(100)) {
                panic!("closed: {why:?}");
            }
        }
        // A repeated request gets the cached answer, not a second action.
        c.send_json(kind::LIST, &msg::ListReq::default()).unwrap();
        c.send_json(kind::LIST, &msg::ListReq::default()).unwrap();
        let mut answered = 0;
        let mut repeats = 0;
        let t = Instant::now();
        while answered + repeats < 2 && t.elapsed() < Duration::from_secs(5) {
            if let Some(Event::Frame(f)) = d.next_event(Duration::from_millis(100)) {
                if d.answered_before(&f).unwrap() {
                    repeats += 1;
                } else {
                    answered += 1;
                    d.reply_json(&f, kind::LISTING, &msg::Listing::default())
                        .unwrap();
                }
            }
        }
        assert_eq!((answered, repeats), (1, 1));
    }
}
