//! The receiving side's writer: verified chunks go to a `Sink` (the store, or
//! a disk being restored) on a thread of their own, and the whole-image
//! SHA-256 is computed in order on another, from what was written (read back
//! from the sink where the hasher fell behind, so the transfer never waits
//! for it).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use super::sha256;
use crate::xfer::sha256x2::Sha256Stream;

/// A chunk that passed verification, on its way to the writer.
#[derive(Debug, Clone)]
pub(crate) struct Verified {
    pub(crate) offset: u64,
    pub(crate) len: u32,
    pub(crate) zero: bool,
    pub(crate) sha256: [u8; 32],
    pub(crate) bad: Vec<(u32, u32)>,
    /// The frame payload; the chunk's bytes are `payload[start..]`.
    pub(crate) payload: Arc<Vec<u8>>,
    pub(crate) start: usize,
    /// The sender's store could not produce it intact (FLAG_DAMAGED): it is
    /// written as zeros, and `zero` is set too.
    pub(crate) damaged: bool,
    /// The sender marked it unchanged and the base's copy (its bytes, here)
    /// passed the check: the sink may fill it from the base instead of
    /// writing the bytes.
    pub(crate) unchanged: bool,
}

impl Drop for Verified {
    fn drop(&mut self) {
        // The last holder (writer or hasher) recycles the buffer.
        let p = std::mem::replace(&mut self.payload, Arc::new(Vec::new()));
        if let Ok(v) = Arc::try_unwrap(p) {
            crate::wire::bufpool::give(v);
        }
    }
}

impl Verified {
    /// The chunk's data (empty for a zero chunk).
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.payload[self.start..]
    }
}

/// The base backup of an incremental backup, as the receiver reads it: the
/// digest its journal holds for the chunk at `offset` (zeros: none) and the
/// chunk's bytes as its image holds them.
pub(crate) trait BaseChunks: Send + Sync {
    fn chunk(&self, offset: u64, len: u32) -> Result<([u8; 32], Vec<u8>)>;
}

/// Where verified chunks go (the store, or a disk being restored).
pub(crate) trait Sink: Send {
    fn write(&mut self, c: &Verified) -> Result<()>;
    /// Makes everything written so far durable (called every few seconds).
    fn checkpoint(&mut self) -> Result<()>;
    /// A handle that reads back what `write` wrote (zero chunks as zeros),
    /// for the image hasher once it falls behind: the chunks' buffers are
    /// then not kept for it. None: the writer waits for the hasher instead.
    fn read_back(&self) -> Option<File> {
        None
    }
}

/// Runs a sink on a writer thread; a second thread computes the whole-image
/// SHA-256 from what the writer wrote, in order, so neither the chunk checks
/// nor the acknowledgements wait for it (a run of zero chunks costs the
/// hasher time but the transfer nothing: zeros are queued as ranges).
pub(crate) struct SinkPipeline<S: Sink + 'static> {
    tx: Option<SyncSender<Verified>>,
    writer: Option<thread::JoinHandle<Result<S>>>,
    /// The thread computing the image digest, until `finish` hands it out.
    hasher: Option<WholeDigest>,
    error: Arc<Mutex<Option<String>>>,
    /// Where chunks the sender marks unchanged come from (incremental backup).
    base: Option<Box<dyn BaseChunks>>,
    /// The free map the sender declared for this disk: a FLAG_FREE chunk may
    /// leave out only bytes it names (none without one).
    free: Option<crate::proto::msg::FreeMap>,
}

/// What the writer hands the image hasher: a written data chunk, or a run of
/// zero bytes (offset, length), which takes no memory however long it is, or
/// a run of written bytes to read back from the sink (the hasher was behind).
enum Piece {
    Data(Verified),
    Zeros(u64, u64),
    Written(u64, u64),
}

/// The whole-image SHA-256, fed with every chunk in order from offset 0.
#[derive(Clone, Default)]
struct Whole {
    stream: Sha256Stream,
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

    /// Feeds `len` zero bytes at `offset`, in steps so that a dropped
    /// `WholeDigest` stops a long run early.
    fn zeros(&mut self, offset: u64, len: u64, stop: &AtomicBool) {
        if !self.next_is(offset) {
            return;
        }
        let mut left = len;
        while left > 0 && !stop.load(Ordering::Relaxed) {
            let n = left.min(64 << 20);
            self.stream.update_zeros(n);
            self.pos += n;
            left -= n;
        }
    }

    fn data(&mut self, offset: u64, data: &[u8]) {
        if self.next_is(offset) {
            self.stream.update(data);
            self.pos += data.len() as u64;
        }
    }

    /// Feeds `len` bytes at `offset` read back from `f` through `buf`; one
    /// that cannot be read counts as a gap (the image is then read back whole).
    fn written(&mut self, f: &File, offset: u64, len: u64, buf: &mut [u8], stop: &AtomicBool) {
        if !self.next_is(offset) {
            return;
        }
        let mut left = len;
        while left > 0 && !stop.load(Ordering::Relaxed) {
            let n = left.min(buf.len() as u64) as usize;
            if f.read_exact_at(&mut buf[..n], self.pos).is_err() {
                self.gap = true;
                return;
            }
            self.stream.update(&buf[..n]);
            self.pos += n as u64;
            left -= n as u64;
        }
    }
}

/// The whole-image SHA-256 being computed on its own thread. `wait` gives it
/// when every byte of the image went through in order (else the caller reads
/// the image back); dropping it stops the thread without waiting.
pub(crate) struct WholeDigest {
    handle: Option<thread::JoinHandle<Whole>>,
    stop: Arc<AtomicBool>,
    size: u64,
}

impl WholeDigest {
    fn start(rx: mpsc::Receiver<Piece>, size: u64, back: Option<File>) -> WholeDigest {
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let handle = thread::spawn(move || {
            let mut w = Whole::default();
            let mut buf = Vec::new();
            for p in rx {
                if stop2.load(Ordering::Relaxed) {
                    break;
                }
                match p {
                    Piece::Zeros(o, l) => w.zeros(o, l, &stop2),
                    Piece::Data(c) => w.data(c.offset, c.bytes()),
                    Piece::Written(o, l) => match &back {
                        Some(f) => {
                            buf.resize(1 << 20, 0);
                            w.written(f, o, l, &mut buf, &stop2);
                        }
                        None => w.gap = true,
                    },
                }
            }
            hold_for_tests(&stop2);
            w
        });
        WholeDigest {
            handle: Some(handle),
            stop,
            size,
        }
    }

    /// Waits for the digest: `None` when a chunk was skipped or missing.
    pub(crate) fn wait(mut self) -> Option<[u8; 32]> {
        let w = self.handle.take()?.join().ok()?;
        (!w.gap && w.pos == self.size).then(|| w.stream.finish())
    }
}

impl Drop for WholeDigest {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Tests hold the image digest back while the file `RESCUE_HOLD_IMAGE_DIGEST`
/// names exists, to see what waits for it (nothing else reads it).
fn hold_for_tests(stop: &AtomicBool) {
    let Some(p) = std::env::var_os("RESCUE_HOLD_IMAGE_DIGEST") else {
        return;
    };
    while std::path::Path::new(&p).exists() && !stop.load(Ordering::Relaxed) {
        thread::sleep(Duration::from_millis(50));
    }
}

/// The writer's side of the queue to the image hasher: zero chunks are merged
/// into one pending range, so a hasher behind on zeros never holds up the
/// writer. Data chunks go with their buffers while there is room; without
/// room they wait for it, unless the hasher can read them back from the
/// sink (`back`): then they join a pending range read back (zeros included),
/// and memory stays bounded however far behind the hasher is.
struct ToHasher {
    tx: SyncSender<Piece>,
    /// Not handed over yet: a `Zeros` or `Written` range.
    pending: Option<Piece>,
    /// The sink's read-back handle, when the hasher has one: a chunk left to
    /// be read back is asked into the page cache at once (the store writes
    /// with O_DIRECT), so the hasher does not wait for the disk later.
    back: Option<File>,
}

impl ToHasher {
    fn push(&mut self, c: Verified) {
        if !c.zero && self.back.is_none() {
            self.flush();
            let _ = self.tx.send(Piece::Data(c));
            return;
        }
        self.try_flush();
        let (o, len) = (c.offset, u64::from(c.len));
        if self.pending.is_none() && !c.zero {
            // Dropping a chunk that found no room recycles its buffer.
            if let Err(TrySendError::Full(_)) = self.tx.try_send(Piece::Data(c)) {
                self.pending = Some(Piece::Written(o, len));
                self.prefetch(o, len);
            }
            return;
        }
        if !c.zero {
            self.prefetch(o, len);
        }
        match (&mut self.pending, c.zero) {
            (Some(Piece::Zeros(po, pl) | Piece::Written(po, pl)), true)
            | (Some(Piece::Written(po, pl)), false)
                if *po + *pl == o =>
            {
                *pl += len;
            }
            // Data after zeros still pending: read both back.
            (Some(Piece::Zeros(po, pl)), false) if *po + *pl == o => {
                self.pending = Some(Piece::Written(*po, *pl + len));
            }
            _ => {
                self.flush();
                self.pending = Some(if c.zero {
                    Piece::Zeros(o, len)
                } else {
                    Piece::Written(o, len)
                });
            }
        }
        self.try_flush();
    }

    /// Starts reading `len` bytes at `offset` into the page cache (a hint:
    /// the hasher reads them either way).
    fn prefetch(&self, offset: u64, len: u64) {
        use nix::fcntl::{PosixFadviseAdvice, posix_fadvise};
        if let Some(f) = &self.back {
            let advice = PosixFadviseAdvice::POSIX_FADV_WILLNEED;
            let _ = posix_fadvise(f, offset as i64, len as i64, advice);
        }
    }

    /// Hands over the pending range if there is room.
    fn try_flush(&mut self) {
        if let Some(p) = self.pending.take()
            && let Err(TrySendError::Full(p)) = self.tx.try_send(p)
        {
            self.pending = Some(p);
        }
    }

    /// Hands over the pending range, waiting for room.
    fn flush(&mut self) {
        if let Some(p) = self.pending.take() {
            let _ = self.tx.send(p);
        }
    }
}

impl<S: Sink + 'static> SinkPipeline<S> {
    pub(crate) fn start(mut sink: S, size: u64) -> Self {
        let (tx, rx) = mpsc::sync_channel::<Verified>(4);
        let (htx, hrx) = mpsc::sync_channel::<Piece>(8);
        let back = sink.read_back();
        let ahead = back.as_ref().and_then(|f| f.try_clone().ok());
        let hasher = WholeDigest::start(hrx, size, back);
        let error = Arc::new(Mutex::new(None));
        let err2 = error.clone();
        let note = move |e: &anyhow::Error| {
            if let Ok(mut g) = err2.lock() {
                *g = Some(format!("{e:#}"));
            }
        };
        let writer = thread::spawn(move || -> Result<S> {
            let mut to_hasher = ToHasher {
                tx: htx,
                pending: None,
                back: ahead,
            };
            let mut last = Instant::now();
            let mut since = 0u64;
            for c in rx {
                sink.write(&c).inspect_err(&note)?;
                since += u64::from(c.len);
                // The image hasher gets the chunk once it is written (in order).
                to_hasher.push(c);
                if since >= 256 << 20 || last.elapsed() > Duration::from_secs(3) {
                    sink.checkpoint().inspect_err(&note)?;
                    since = 0;
                    last = Instant::now();
                }
            }
            to_hasher.flush();
            sink.checkpoint()?;
            Ok(sink)
        });
        SinkPipeline {
            tx: Some(tx),
            writer: Some(writer),
            hasher: Some(hasher),
            error,
            base: None,
            free: None,
        }
    }

    /// Whether `data` has the SHA-256 `want` (the chunk check; the image
    /// digest is the hasher thread's).
    pub(crate) fn check(&self, data: &[u8], want: &[u8; 32]) -> bool {
        sha256(data) == *want
    }

    /// Takes chunks marked unchanged from `base` (an incremental backup).
    pub(crate) fn set_base(&mut self, base: Box<dyn BaseChunks>) {
        self.base = Some(base);
    }

    /// Holds FLAG_FREE chunks to `map`, the free map declared for the disk.
    pub(crate) fn set_free_map(&mut self, map: crate::proto::msg::FreeMap) {
        self.free = Some(map);
    }

    /// Why a chunk at `offset` may not leave out its `free` ranges: they are
    /// not all free space in the declared map (or there is none).
    pub(crate) fn free_refused(&self, offset: u64, free: &[(u32, u32)]) -> Option<String> {
        let Some(map) = &self.free else {
            return Some(
                "it leaves out free space, but no free map was declared for its disk".into(),
            );
        };
        map.uncovered(offset, free).map(|(s, e)| {
            format!("it leaves out bytes {s}..{e}, which the disk's declared free map does not say are free")
        })
    }

    /// The base chunks marked unchanged come from, if any.
    pub(crate) fn base(&self) -> Option<&dyn BaseChunks> {
        self.base.as_deref()
    }

    /// Queues a verified chunk (blocks while the writer is behind).
    pub(crate) fn submit(&self, c: Verified) -> Result<()> {
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
    pub(crate) fn failed(&self) -> Result<()> {
        match self.error_text() {
            Some(e) => bail!("{e}"),
            None => Ok(()),
        }
    }

    /// Waits for the writer (everything submitted is written); returns the
    /// sink and the whole-image digest, which may still be being computed.
    pub(crate) fn finish(mut self) -> Result<(S, WholeDigest)> {
        drop(self.tx.take());
        let sink = match self.writer.take().map(|w| w.join()) {
            Some(Ok(r)) => r?,
            _ => bail!("the writer thread failed"),
        };
        let hasher = self.hasher.take().context("the image hasher was taken")?;
        Ok((sink, hasher))
    }
}

impl<S: Sink + 'static> Drop for SinkPipeline<S> {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::io::Read;

    use super::*;

    /// A sink that writes nothing (for the receiving side's tests).
    pub(crate) struct NullSink;

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
        let ok = pipe.check(data, &want);
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
                unchanged: false,
            })
            .unwrap();
        }
        ok
    }

    fn zero_chunk(offset: u64, len: u32) -> Verified {
        Verified {
            offset,
            len,
            zero: true,
            sha256: [0; 32],
            bad: Vec::new(),
            payload: Arc::new(Vec::new()),
            start: 0,
            damaged: false,
            unchanged: false,
        }
    }

    #[test]
    fn whole_digest_skips_rejected_chunks() {
        let a = vec![1u8; 4096];
        let b = vec![2u8; 4000];
        let pipe = SinkPipeline::start(NullSink, 4096 * 2 + 4000);
        assert!(receive(&pipe, 0, &a, sha256(&a)));
        pipe.submit(zero_chunk(4096, 4096)).unwrap();
        // Damaged in transit: rejected, and must not enter the image digest.
        assert!(!receive(&pipe, 8192, &b, sha256(&a)));
        assert!(receive(&pipe, 8192, &b, sha256(&b)));
        let (_, whole) = pipe.finish().unwrap();
        let mut all = a.clone();
        all.extend(vec![0u8; 4096]);
        all.extend(&b);
        assert_eq!(whole.wait(), Some(sha256(&all)));
    }

    #[test]
    fn no_whole_digest_after_a_gap() {
        let a = vec![1u8; 4096];
        let pipe = SinkPipeline::start(NullSink, 8192);
        // Chunk 0 was held from an earlier run: only chunk 1 arrives.
        assert!(receive(&pipe, 4096, &a, sha256(&a)));
        let (_, whole) = pipe.finish().unwrap();
        assert_eq!(whole.wait(), None);
    }

    #[test]
    fn zero_chunks_never_wait_for_the_image_hasher() {
        // A hasher that reads nothing: the queue has room for one piece.
        let (tx, rx) = mpsc::sync_channel::<Piece>(1);
        let mut to = ToHasher {
            tx,
            pending: None,
            back: None,
        };
        for i in 0..1000u64 {
            to.push(zero_chunk(i * 4096, 4096));
        }
        // Everything after the first queued piece was merged, not waited for.
        let Ok(Piece::Zeros(0, first)) = rx.try_recv() else {
            panic!("the first zero run was not queued");
        };
        to.flush();
        let Ok(Piece::Zeros(o, rest)) = rx.try_recv() else {
            panic!("the rest was not merged into one run");
        };
        assert_eq!((o, first + rest), (first, 1000 * 4096));
    }

    fn data_chunk(offset: u64, data: &[u8]) -> Verified {
        Verified {
            offset,
            len: data.len() as u32,
            zero: false,
            sha256: sha256(data),
            bad: Vec::new(),
            payload: Arc::new(data.to_vec()),
            start: 0,
            damaged: false,
            unchanged: false,
        }
    }

    /// A hasher that can read the image back never holds up the writer, data
    /// chunks included (the writer waited for it, and the transfer with it,
    /// on a 90 %-zeros image); what it reads back gives the same digest.
    #[test]
    fn data_chunks_never_wait_for_a_hasher_that_reads_back() {
        const N: u64 = 200;
        let mut img = tempfile::tempfile().unwrap();
        img.set_len(N * 4096).unwrap();
        let chunk = |i: u64| vec![(i % 250) as u8 + 1; 4096];
        let (tx, rx) = mpsc::sync_channel::<Piece>(1);
        let (done_tx, done_rx) = mpsc::channel();
        let writer_img = img.try_clone().unwrap();
        let back = img.try_clone().unwrap();
        std::thread::spawn(move || {
            let mut to = ToHasher {
                tx,
                pending: None,
                back: Some(back),
            };
            // One chunk in ten holds data, as in the benchmark's image.
            for i in 0..N {
                if i % 10 == 3 {
                    writer_img.write_all_at(&chunk(i), i * 4096).unwrap();
                    to.push(data_chunk(i * 4096, &chunk(i)));
                } else {
                    to.push(zero_chunk(i * 4096, 4096));
                }
            }
            let _ = done_tx.send(());
            to.flush();
        });
        done_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the writer waited for the image hasher");
        let mut w = Whole::default();
        let (stop, mut buf) = (AtomicBool::new(false), vec![0u8; 8192]);
        let mut kinds = Vec::new();
        for p in rx.iter() {
            match p {
                Piece::Zeros(o, l) => w.zeros(o, l, &stop),
                Piece::Data(c) => w.data(c.offset, c.bytes()),
                Piece::Written(o, l) => {
                    kinds.push((o, l));
                    w.written(&img, o, l, &mut buf, &stop);
                }
            }
        }
        let mut all = Vec::new();
        img.read_to_end(&mut all).unwrap();
        assert_eq!(all.len() as u64, N * 4096);
        assert!(!kinds.is_empty(), "nothing was left to read back");
        assert!(!w.gap && w.pos == N * 4096);
        assert_eq!(w.stream.finish(), sha256(&all));
    }
}
