//! The whole-image SHA-256 on the receiving side: a thread of its own hashes
//! what the writer wrote, in order from offset 0, fed through a queue that
//! never holds up the writer when the sink can read its bytes back.

use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::Duration;

use super::Verified;
use crate::xfer::sha256x2::Sha256Stream;

/// What the writer hands the image hasher, each piece continuing the one
/// before: a written data chunk, or a run of zero bytes (its length), which
/// takes no memory however long it is, or a run of written bytes to read back
/// from the sink (the hasher was behind).
enum Piece {
    Data(Verified),
    Zeros(u64),
    Written(u64),
}

/// Data chunks the queue holds with their buffers (each up to a chunk, 8 MiB
/// at most); past that they are read back, or the writer waits.
const MAX_DATA: usize = 8;

/// Ranges the queue holds for a hasher that is behind (a few dozen bytes
/// each). Past this, a range is merged into the last one, read back.
const MAX_RANGES: usize = 4096;

#[derive(Default)]
struct Queue {
    pieces: VecDeque<Piece>,
    /// How many of `pieces` are `Data`.
    data: usize,
    /// The writer wrote everything.
    closed: bool,
    /// The hasher stopped (dropped or finished): nothing waits for it.
    gone: bool,
    /// A chunk did not continue the image (it was held from an earlier run):
    /// the digest is void, and nothing more is queued.
    gap: bool,
    /// Where the next piece must start.
    next: u64,
}

/// The queue between the writer and the image hasher.
#[derive(Default)]
struct Shared {
    q: Mutex<Queue>,
    /// Signalled on every push, pop and close.
    changed: Condvar,
    /// Set when the `WholeDigest` is dropped: the hasher stops, mid-piece too.
    stop: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.q.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The writer's end of the queue to the image hasher. Zero chunks become
/// ranges of zeros (hashed without reading: reading a hole back costs the
/// kernel a page of zeros per 4 KiB, which doubled the hasher's time on a
/// 90 %-zeros image). Data chunks go with their buffers while fewer than
/// `MAX_DATA` are queued; past that they wait, unless the sink can read them
/// back (`back`): then they are queued as ranges to read back, so the writer
/// never waits for the hasher and memory stays bounded however far behind
/// it is.
pub(crate) struct ToHasher {
    shared: Arc<Shared>,
    /// The sink's read-back handle, when the hasher has one: a chunk left to
    /// be read back is asked into the page cache at once (a restore writes
    /// with O_DIRECT, and the store's pages may be gone by then), so the
    /// hasher does not wait for the disk later.
    back: Option<File>,
}

impl ToHasher {
    pub(crate) fn push(&mut self, c: Verified) {
        let (o, len) = (c.offset, u64::from(c.len));
        let mut q = self.shared.lock();
        if q.gone || q.gap {
            return;
        }
        if q.next != o {
            // The digest cannot be had from the stream: drop what is queued.
            q.gap = true;
            q.pieces.clear();
            q.data = 0;
            self.shared.changed.notify_all();
            return;
        }
        q.next = o + len;
        if !c.zero && self.back.is_none() {
            while q.data >= MAX_DATA && !q.gone {
                q = self
                    .shared
                    .changed
                    .wait(q)
                    .unwrap_or_else(|p| p.into_inner());
            }
        }
        if !c.zero && (q.data < MAX_DATA || self.back.is_none()) {
            q.data += 1;
            q.pieces.push_back(Piece::Data(c));
        } else {
            if !c.zero {
                self.prefetch(o, len);
            }
            append(&mut q.pieces, c.zero, len);
        }
        self.shared.changed.notify_all();
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
}

impl Drop for ToHasher {
    /// Everything was pushed: the hasher ends once the queue is empty.
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.changed.notify_all();
    }
}

/// Adds a range that continues the queue: merged with the last one where
/// they are of a kind, or where the queue holds `MAX_RANGES` already (the
/// merged range is read back, zeros included).
fn append(pieces: &mut VecDeque<Piece>, zero: bool, len: u64) {
    let full = pieces.len() >= MAX_RANGES;
    match pieces.back_mut() {
        Some(Piece::Zeros(l)) if zero => *l += len,
        Some(Piece::Written(l)) if !zero || full => *l += len,
        Some(last @ Piece::Zeros(_)) if full => {
            if let Piece::Zeros(l) = *last {
                *last = Piece::Written(l + len);
            }
        }
        _ => pieces.push_back(if zero {
            Piece::Zeros(len)
        } else {
            Piece::Written(len)
        }),
    }
}

/// The whole-image SHA-256, fed with every chunk in order from offset 0.
#[derive(Clone, Default)]
struct Whole {
    stream: Sha256Stream,
    pos: u64,
}

impl Whole {
    /// Feeds `len` zero bytes, in steps so that a dropped `WholeDigest`
    /// stops a long run early.
    fn zeros(&mut self, len: u64, stop: &AtomicBool) {
        let mut left = len;
        while left > 0 && !stop.load(Ordering::Relaxed) {
            let n = left.min(64 << 20);
            self.stream.update_zeros(n);
            self.pos += n;
            left -= n;
        }
    }

    fn data(&mut self, data: &[u8]) {
        self.stream.update(data);
        self.pos += data.len() as u64;
    }

    /// Feeds `len` bytes read back from `f` through `buf`; false when they
    /// cannot be read (the image is then read back whole).
    fn written(&mut self, f: &File, len: u64, buf: &mut [u8], stop: &AtomicBool) -> bool {
        let mut left = len;
        while left > 0 && !stop.load(Ordering::Relaxed) {
            let n = left.min(buf.len() as u64) as usize;
            if f.read_exact_at(&mut buf[..n], self.pos).is_err() {
                return false;
            }
            self.stream.update(&buf[..n]);
            self.pos += n as u64;
            left -= n as u64;
        }
        true
    }
}

/// The whole-image SHA-256 being computed on its own thread. `wait` gives it
/// when every byte of the image went through in order (else the caller reads
/// the image back); dropping it stops the thread without waiting.
pub(crate) struct WholeDigest {
    handle: Option<thread::JoinHandle<Option<Whole>>>,
    shared: Arc<Shared>,
    size: u64,
}

impl WholeDigest {
    /// Starts the hasher for an image of `size` bytes; `back` reads back what
    /// the writer wrote (None: the writer waits for the hasher instead).
    pub(crate) fn start(size: u64, back: Option<File>) -> (WholeDigest, ToHasher) {
        let shared = Arc::new(Shared::default());
        let ahead = back.as_ref().and_then(|f| f.try_clone().ok());
        let to = ToHasher {
            shared: shared.clone(),
            // Without a second handle nothing is read back: the writer waits.
            back: ahead,
        };
        let back = if to.back.is_some() { back } else { None };
        let shared2 = shared.clone();
        let handle = thread::spawn(move || {
            if back.is_some() {
                yield_to_transfer();
            }
            let w = hash_queue(&shared2, back.as_ref());
            let mut q = shared2.lock();
            q.gone = true;
            shared2.changed.notify_all();
            drop(q);
            hold_for_tests(&shared2.stop);
            w
        });
        let digest = WholeDigest {
            handle: Some(handle),
            shared,
            size,
        };
        (digest, to)
    }

    /// Waits for the digest: `None` when a chunk was skipped or missing.
    pub(crate) fn wait(mut self) -> Option<[u8; 32]> {
        let w = self.handle.take()?.join().ok()??;
        (w.pos == self.size).then(|| w.stream.finish())
    }
}

impl Drop for WholeDigest {
    fn drop(&mut self) {
        // Under the lock, so the hasher cannot miss it between its check of
        // `stop` and its wait.
        let _q = self.shared.lock();
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.changed.notify_all();
    }
}

/// Lowers the calling thread's priority to `HASHER_NICE`. The image hasher
/// runs so when nothing waits for it (the sink can read back).
fn yield_to_transfer() {
    // SAFETY: plain syscalls on the calling thread; on Linux PRIO_PROCESS
    // with a thread id sets that thread's nice value alone.
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, HASHER_NICE);
    }
}

/// The image hasher's nice value: the transfer, which holds the source until
/// every chunk is durable, gets the CPU first, yet the hasher keeps a share
/// of it (CFS weight 335 against 1024) rather than only the cycles the
/// transfer leaves idle. Measured on 2 cores, 1 GiB 90 % zeros, 7 alternating
/// rounds: nice 19 released the client in 0.85x bmaptool's time and completed
/// the store in 1.05x one SHA-256 pass (the hasher starved until the transfer
/// ended, then did 0.7 s of work alone); nice 5 0.85x and 1.03x; nice 0 0.98x
/// and 0.95x (the client slowed by 15 %).
const HASHER_NICE: libc::c_int = 5;

/// The hasher thread: every piece in order until the writer closes the queue
/// (None: the digest cannot be had this way).
fn hash_queue(shared: &Shared, back: Option<&File>) -> Option<Whole> {
    let stop = &shared.stop;
    let mut w = Whole::default();
    let mut buf = Vec::new();
    loop {
        let piece = {
            let mut q = shared.lock();
            loop {
                if stop.load(Ordering::Relaxed) || q.gap {
                    return None;
                }
                if let Some(p) = q.pieces.pop_front() {
                    if matches!(p, Piece::Data(_)) {
                        q.data -= 1;
                    }
                    shared.changed.notify_all();
                    break p;
                }
                if q.closed {
                    return Some(w);
                }
                q = shared.changed.wait(q).unwrap_or_else(|p| p.into_inner());
            }
        };
        match piece {
            Piece::Zeros(l) => w.zeros(l, stop),
            Piece::Data(c) => w.data(c.bytes()),
            Piece::Written(l) => {
                buf.resize(1 << 20, 0);
                if !back.is_some_and(|f| w.written(f, l, &mut buf, stop)) {
                    return None;
                }
            }
        }
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

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::sync::mpsc;

    use super::*;
    use crate::xfer::sha256;
    use crate::xfer::sink::tests::{data_chunk, zero_chunk};

    /// The writer's end of a queue no hasher reads yet.
    fn unread(back: Option<File>) -> (Arc<Shared>, ToHasher) {
        let shared = Arc::new(Shared::default());
        let to = ToHasher {
            shared: shared.clone(),
            back,
        };
        (shared, to)
    }

    /// What is queued, as (kind, length): 'd' data, 'z' zeros, 'w' read back.
    fn kinds(shared: &Shared) -> Vec<(char, u64)> {
        let q = shared.lock();
        let kind = |p: &Piece| match p {
            Piece::Data(c) => ('d', u64::from(c.len)),
            Piece::Zeros(l) => ('z', *l),
            Piece::Written(l) => ('w', *l),
        };
        q.pieces.iter().map(kind).collect()
    }

    #[test]
    fn zero_chunks_never_wait_for_the_image_hasher() {
        let (shared, mut to) = unread(None);
        for i in 0..1000u64 {
            to.push(zero_chunk(i * 4096, 4096));
        }
        // One run of zeros, queued without anyone reading it.
        assert_eq!(kinds(&shared), [('z', 1000 * 4096)]);
    }

    /// Writes one data chunk in `every` (ten: as in the benchmark's image) to `img`
    /// and pushes all `n` on a thread; panics if that waits for a hasher.
    fn push_sparse(img: &File, n: u64, every: u64) -> Arc<Shared> {
        let chunk = |i: u64| vec![(i % 250) as u8 + 1; 4096];
        let (shared, mut to) = unread(Some(img.try_clone().unwrap()));
        let (done_tx, done_rx) = mpsc::channel();
        let writer_img = img.try_clone().unwrap();
        std::thread::spawn(move || {
            for i in 0..n {
                if i % every == 3 % every {
                    writer_img.write_all_at(&chunk(i), i * 4096).unwrap();
                    to.push(data_chunk(i * 4096, &chunk(i)));
                } else {
                    to.push(zero_chunk(i * 4096, 4096));
                }
            }
            drop(to);
            let _ = done_tx.send(());
        });
        done_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the writer waited for the image hasher");
        shared
    }

    /// The hasher, run on what is queued, gives the SHA-256 of all of `img`
    /// (`size` bytes).
    fn assert_hashes_to_the_image(shared: &Shared, img: &mut File, size: u64) {
        let w = hash_queue(shared, Some(img)).expect("no digest");
        assert_eq!(w.pos, size);
        let mut all = Vec::new();
        img.read_to_end(&mut all).unwrap();
        assert_eq!(all.len() as u64, size);
        assert_eq!(w.stream.finish(), sha256(&all));
    }

    /// A hasher that can read the image back never holds up the writer, data
    /// chunks included (the writer waited for it, and the transfer with it,
    /// on a 90 %-zeros image); zeros are never read back, and what is read
    /// back gives the same digest.
    #[test]
    fn data_chunks_never_wait_for_a_hasher_that_reads_back() {
        const N: u64 = 200;
        let mut img = tempfile::tempfile().unwrap();
        img.set_len(N * 4096).unwrap();
        let shared = push_sparse(&img, N, 10);
        let k = kinds(&shared);
        assert_eq!(k.iter().filter(|p| p.0 == 'd').count(), MAX_DATA);
        assert!(
            k.contains(&('w', 4096)),
            "nothing was left to read back: {k:?}"
        );
        // Zeros stay zeros: every range read back is one data chunk.
        assert!(k.iter().all(|p| p.0 != 'w' || p.1 == 4096), "{k:?}");
        assert_hashes_to_the_image(&shared, &mut img, N * 4096);
    }

    /// However far behind the hasher is, the queue stays within its bound:
    /// past `MAX_RANGES`, ranges are merged and read back, zeros and all.
    #[test]
    fn the_queue_is_bounded_and_still_gives_the_digest() {
        let n = 3 * MAX_RANGES as u64;
        let mut img = tempfile::tempfile().unwrap();
        img.set_len(n * 4096).unwrap();
        let shared = push_sparse(&img, n, 2);
        let k = kinds(&shared);
        assert!(
            k.len() <= MAX_RANGES + MAX_DATA + 1,
            "{} pieces queued",
            k.len()
        );
        assert!(
            k.iter().any(|p| p.0 == 'w' && p.1 > 4096),
            "nothing was merged"
        );
        assert_hashes_to_the_image(&shared, &mut img, n * 4096);
    }

    /// A chunk that does not continue the image voids the digest at once and
    /// frees what was queued.
    #[test]
    fn a_gap_voids_the_digest_and_empties_the_queue() {
        let (shared, mut to) = unread(None);
        to.push(data_chunk(0, &[1; 4096]));
        to.push(zero_chunk(8192, 4096));
        to.push(zero_chunk(12288, 4096));
        drop(to);
        assert!(kinds(&shared).is_empty());
        assert!(hash_queue(&shared, None).is_none());
    }

    /// Without read-back the writer waits for room for its data chunks (their
    /// buffers are the only copy the hasher gets), and goes on once the
    /// hasher takes one.
    #[test]
    fn without_read_back_the_writer_waits_for_room() {
        let (shared, mut to) = unread(None);
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for i in 0..=MAX_DATA as u64 {
                to.push(data_chunk(i * 4096, &[7; 4096]));
                let _ = tx.send(i);
            }
        });
        for i in 0..MAX_DATA as u64 {
            assert_eq!(rx.recv_timeout(Duration::from_secs(20)), Ok(i));
        }
        assert!(
            rx.recv_timeout(Duration::from_millis(200)).is_err(),
            "it did not wait"
        );
        let mut q = shared.lock();
        q.pieces.pop_front();
        q.data -= 1;
        shared.changed.notify_all();
        drop(q);
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(20)),
            Ok(MAX_DATA as u64)
        );
    }
}
