//! The receiver's chunk checks on several threads (issue 15): each intact
//! chunk is decoded and its SHA-256 checked (or, marked unchanged, its base
//! copy read and checked) by one of a few workers, and the results come back
//! in the order the chunks arrived, so the receiver's in-order logic sees
//! what it saw when it checked each chunk itself, only sooner.

use std::collections::BTreeMap;
use std::panic::{self, AssertUnwindSafe};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::Scope;

use anyhow::{Result, bail};

use crate::proto::frame::{Frame, Header};

/// Threads that check chunks: one per core, at most 8 (the writer, the image
/// hasher and the stream readers mostly wait for I/O).
pub(crate) fn workers() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 8)
}

/// Checks running on workers, handed back in the order they were submitted.
pub(crate) struct Checks<T> {
    jobs: SyncSender<(u64, Frame)>,
    /// Each result, or the message of the check that panicked on it.
    done: Receiver<(u64, Header, Result<T, String>)>,
    /// Submitted so far, and handed back so far (in order).
    sent: u64,
    taken: u64,
    /// Results that finished ahead of an earlier one.
    parked: BTreeMap<u64, (Header, Result<T, String>)>,
    /// Checks in flight at most (each holds a chunk).
    limit: usize,
}

impl<T: Send> Checks<T> {
    /// Starts `n` workers in scope `s` running `check` on what is submitted;
    /// they end once the `Checks` is dropped.
    pub(crate) fn start<'s, 'e, F>(s: &'s Scope<'s, 'e>, n: usize, check: &'e F) -> Self
    where
        F: Fn(Frame) -> T + Sync,
        T: 's,
    {
        let n = n.max(1);
        let (jobs, rx) = mpsc::sync_channel::<(u64, Frame)>(n);
        let rx = Arc::new(Mutex::new(rx));
        let (done_tx, done) = mpsc::channel();
        for _ in 0..n {
            let (rx, done_tx) = (rx.clone(), done_tx.clone());
            s.spawn(move || {
                loop {
                    // One worker waits for the next job, the others for the lock.
                    let job = match rx.lock() {
                        Ok(r) => r.recv(),
                        Err(_) => return,
                    };
                    let Ok((seq, f)) = job else { return };
                    let h = f.header;
                    // A panic is a bug, but the others wait for this result in
                    // order: it goes back as an error, and the worker ends (what
                    // it shared with the others may be half updated).
                    let r = panic::catch_unwind(AssertUnwindSafe(|| check(f))).map_err(|p| {
                        format!("the check panicked ({})", crate::util::panic_message(&*p))
                    });
                    let panicked = r.is_err();
                    if done_tx.send((seq, h, r)).is_err() || panicked {
                        return;
                    }
                }
            });
        }
        Checks {
            jobs,
            done,
            sent: 0,
            taken: 0,
            parked: BTreeMap::new(),
            limit: 2 * n,
        }
    }

    /// Checks submitted and not yet handed back.
    pub(crate) fn pending(&self) -> usize {
        (self.sent - self.taken) as usize
    }

    /// Whether as many checks are in flight as may be.
    pub(crate) fn full(&self) -> bool {
        self.pending() >= self.limit
    }

    /// Hands `f` to a worker; fails only when every worker is gone (a check
    /// panicked), so that a chunk is never dropped unnoticed.
    pub(crate) fn submit(&mut self, f: Frame) -> anyhow::Result<()> {
        let at = f.header.offset;
        if self.jobs.send((self.sent, f)).is_err() {
            anyhow::bail!("the chunk checks stopped (a check thread failed) at offset {at}");
        }
        self.sent += 1;
        Ok(())
    }

    /// The oldest check's result once it is done (`wait`: waiting for it);
    /// None when none is pending, or without `wait` when it is not done yet.
    /// A check that panicked, or checks that can no longer end (every worker
    /// gone), end the transfer with an error naming the chunk.
    pub(crate) fn next(&mut self, wait: bool) -> Result<Option<(Header, T)>> {
        while self.pending() > 0 {
            if let Some((h, r)) = self.parked.remove(&self.taken) {
                self.taken += 1;
                return match r {
                    Ok(t) => Ok(Some((h, t))),
                    Err(m) => bail!(
                        "checking the chunk at offset {} failed: {m} (a bug in rescue; what was verified before it is kept)",
                        h.offset
                    ),
                };
            }
            let got = if wait {
                self.done.recv().ok()
            } else {
                match self.done.try_recv() {
                    Ok(r) => Some(r),
                    Err(TryRecvError::Empty) => return Ok(None),
                    Err(TryRecvError::Disconnected) => None,
                }
            };
            let Some((seq, h, r)) = got else {
                bail!(
                    "the chunk checks stopped (every check thread failed) with {} chunks unchecked",
                    self.pending()
                );
            };
            self.parked.insert(seq, (h, r));
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[test]
    fn checks_run_side_by_side_and_come_back_in_order() {
        let (now, most) = (AtomicUsize::new(0), AtomicUsize::new(0));
        // The first chunks take longest, so they finish last.
        let check = |f: Frame| {
            let at = now.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(at, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(100 - 20 * f.header.offset));
            now.fetch_sub(1, Ordering::SeqCst);
            f.header.offset * 10
        };
        let got: Vec<(u64, u64)> = std::thread::scope(|s| {
            let mut c = Checks::start(s, 2, &check);
            for off in 0..4 {
                let header = Header::new(5, 0, off);
                c.submit(Frame {
                    header,
                    payload: Vec::new(),
                    intact: true,
                })
                .unwrap();
            }
            assert!(c.full());
            std::iter::from_fn(|| c.next(true).unwrap())
                .map(|(h, t)| (h.offset, t))
                .collect()
        });
        assert_eq!(got, vec![(0, 0), (1, 10), (2, 20), (3, 30)]);
        assert_eq!(
            most.load(Ordering::SeqCst),
            2,
            "the checks ran one at a time"
        );
    }

    /// A check panicking on chunk 2 while the other workers live: the
    /// results before it come back, then an error naming it (it waited forever).
    #[test]
    fn a_panicking_check_ends_with_an_error_naming_its_chunk() {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let check = |f: Frame| {
                assert!(f.header.offset != 2, "test panic on chunk 2");
                f.header.offset
            };
            let got = std::thread::scope(|s| {
                let mut c = Checks::start(s, 3, &check);
                let mut got = Vec::new();
                for off in 0..5 {
                    let header = Header::new(5, 0, off);
                    let frame = Frame {
                        header,
                        payload: Vec::new(),
                        intact: true,
                    };
                    c.submit(frame).unwrap();
                }
                loop {
                    match c.next(true) {
                        Ok(Some((_, t))) => got.push(Ok(t)),
                        Ok(None) => break,
                        Err(e) => {
                            got.push(Err(e.to_string()));
                            break;
                        }
                    }
                }
                got
            });
            let _ = tx.send(got);
        });
        let got = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the checks hung after a worker panicked");
        assert_eq!(got[..2], [Ok(0), Ok(1)]);
        let Err(m) = &got[2] else {
            panic!("no error after the panic: {got:?}")
        };
        assert!(
            m.contains("offset 2") && m.contains("test panic on chunk 2"),
            "{m}"
        );
        assert_eq!(got.len(), 3);
    }
}
