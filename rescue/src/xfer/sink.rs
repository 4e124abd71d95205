//! The receiving side's writer: verified chunks go to a `Sink` (the store, or
//! a disk being restored) on a thread of their own, and the whole-image
//! SHA-256 is computed in order on another, from what was written (read back
//! from the sink where the hasher fell behind, so the transfer never waits
//! for it).

use std::fs::File;
use std::sync::mpsc::{self, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use super::sha256;
use super::whole::WholeDigest;

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

    /// Whether it holds bytes to write, and so one of the writer queue's
    /// `QUEUED_DATA` slots (taken by `submit`, given back by the writer).
    fn holds_data(&self) -> bool {
        !self.bytes().is_empty()
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
    /// One token per queued chunk that carries bytes (see `QUEUED_DATA`).
    data_slots: SyncSender<()>,
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

/// Chunks with bytes the writer holds at most, the one it is writing
/// included: they bound the memory the queue holds, and the ones queued keep
/// the disk busy while the next one arrives.
const QUEUED_DATA: usize = 4;

/// Chunks queued for the writer at most. Zero chunks cost the queue nothing
/// but a slot, and a run of them must not stop the receiver (and so its
/// acknowledgements) while the writer waits for the disk with one data chunk:
/// the chunks behind them would then arrive only after it.
const QUEUED: usize = 256;

impl<S: Sink + 'static> SinkPipeline<S> {
    pub(crate) fn start(mut sink: S, size: u64) -> Self {
        let (tx, rx) = mpsc::sync_channel::<Verified>(QUEUED);
        let (data_slots, slots) = mpsc::sync_channel::<()>(QUEUED_DATA);
        let (hasher, mut to_hasher) = WholeDigest::start(size, sink.read_back());
        let error = Arc::new(Mutex::new(None));
        let err2 = error.clone();
        let note = move |e: &anyhow::Error| {
            if let Ok(mut g) = err2.lock() {
                *g = Some(format!("{e:#}"));
            }
        };
        let writer = thread::spawn(move || -> Result<S> {
            let mut last = Instant::now();
            let mut since = 0u64;
            for c in rx {
                sink.write(&c).inspect_err(&note)?;
                if c.holds_data() {
                    // Its token was queued before it; the receiver may queue the next.
                    let _ = slots.try_recv();
                }
                since += u64::from(c.len);
                // The image hasher gets the chunk once it is written (in order).
                to_hasher.push(c);
                if since >= 256 << 20 || last.elapsed() > Duration::from_secs(3) {
                    sink.checkpoint().inspect_err(&note)?;
                    since = 0;
                    last = Instant::now();
                }
            }
            // The hasher goes on with what is queued; nothing waits for it.
            drop(to_hasher);
            sink.checkpoint()?;
            Ok(sink)
        });
        SinkPipeline {
            tx: Some(tx),
            data_slots,
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
        let stopped = || anyhow!("{}", self.error_text().unwrap_or("writer stopped".into()));
        let Some(tx) = &self.tx else {
            bail!("writer already finished");
        };
        if c.holds_data() {
            self.data_slots.send(()).map_err(|_| stopped())?;
        }
        tx.send(c).map_err(|_| stopped())
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

    pub(crate) fn zero_chunk(offset: u64, len: u32) -> Verified {
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

    pub(crate) fn data_chunk(offset: u64, data: &[u8]) -> Verified {
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

    /// A sink whose data writes wait for the test to let them through.
    struct GatedSink {
        entered: mpsc::Sender<u64>,
        go: mpsc::Receiver<()>,
    }

    impl Sink for GatedSink {
        fn write(&mut self, c: &Verified) -> Result<()> {
            if !c.zero {
                let _ = self.entered.send(c.offset);
                let _ = self.go.recv();
            }
            Ok(())
        }
        fn checkpoint(&mut self) -> Result<()> {
            Ok(())
        }
    }

    #[test]
    fn zero_runs_queue_behind_a_slow_write_but_data_is_bounded() {
        let (entered, writing) = mpsc::channel();
        let (go, gate) = mpsc::channel();
        let n = 4096u64;
        let data = vec![7u8; n as usize];
        // Longer than any window of chunks in flight (four streams' worth).
        const RUN: u64 = 200;
        let chunks = 1 + RUN + QUEUED_DATA as u64;
        let pipe = Arc::new(SinkPipeline::start(
            GatedSink { entered, go: gate },
            chunks * n,
        ));
        pipe.submit(data_chunk(0, &data)).unwrap();
        // The writer now waits inside the disk write of chunk 0.
        assert_eq!(writing.recv_timeout(Duration::from_secs(30)), Ok(0));
        // A long run of zeros is taken without the writer moving, and so are
        // data chunks up to QUEUED_DATA with the one being written, not one more.
        let (done_tx, done) = mpsc::channel();
        let p2 = pipe.clone();
        let data2 = data.clone();
        let submitter = thread::spawn(move || {
            let mut off = n;
            for _ in 0..RUN {
                p2.submit(zero_chunk(off, n as u32)).unwrap();
                off += n;
            }
            for _ in 0..QUEUED_DATA {
                p2.submit(data_chunk(off, &data2)).unwrap();
                let _ = done_tx.send(off);
                off += n;
            }
        });
        let first_data = n * (1 + RUN);
        for k in 0..QUEUED_DATA as u64 - 1 {
            let got = done.recv_timeout(Duration::from_secs(30));
            assert_eq!(got, Ok(first_data + k * n), "data chunk {k} was not queued");
        }
        // The next one waits for a data slot (it would have arrived by now).
        assert!(done.recv_timeout(Duration::from_millis(300)).is_err());
        // Each data write the writer finishes lets one more in.
        for _ in 0..=QUEUED_DATA {
            go.send(()).unwrap();
        }
        assert!(done.recv_timeout(Duration::from_secs(30)).is_ok());
        submitter.join().unwrap();
        let pipe = Arc::try_unwrap(pipe).ok().expect("the submitter is done");
        let (_, whole) = pipe.finish().unwrap();
        assert!(whole.wait().is_some());
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
}
