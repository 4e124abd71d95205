//! The receiver's chunk checks on several threads (issue 15): each intact
//! chunk is decoded and its SHA-256 checked (or, marked unchanged, its base
//! copy read and checked) by one of a few workers, and the results come back
//! in the order the chunks arrived, so the receiver's in-order logic sees
//! what it saw when it checked each chunk itself, only sooner.

use std::collections::BTreeMap;
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::Scope;

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
    done: Receiver<(u64, Header, T)>,
    /// Submitted so far, and handed back so far (in order).
    sent: u64,
    taken: u64,
    /// Results that finished ahead of an earlier one.
    parked: BTreeMap<u64, (Header, T)>,
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
                    if done_tx.send((seq, h, check(f))).is_err() {
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
    pub(crate) fn next(&mut self, wait: bool) -> Option<(Header, T)> {
        while self.pending() > 0 {
            if let Some(r) = self.parked.remove(&self.taken) {
                self.taken += 1;
                return Some(r);
            }
            let got = if wait {
                self.done.recv().ok()
            } else {
                match self.done.try_recv() {
                    Ok(r) => Some(r),
                    Err(TryRecvError::Empty) => return None,
                    Err(TryRecvError::Disconnected) => None,
                }
            };
            // Every worker is gone (a check panicked): nothing more comes.
            let (seq, h, t) = got?;
            self.parked.insert(seq, (h, t));
        }
        None
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
            std::iter::from_fn(|| c.next(true))
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
}
