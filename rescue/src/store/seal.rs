//! Finishing a backup after its session: once every chunk is verified and
//! durable the client is released, and the whole-image SHA-256s (computed
//! while receiving, or read back) are recorded here, on a thread of their own.
//! The manifest says `sealing` meanwhile; a server that dies before the end
//! leaves it so, and the next `serve` (or `rescue verify`) completes it.

use std::sync::Mutex;
use std::thread::JoinHandle;

use anyhow::{Context, Result};

use super::image::ImageSink;
use super::{BackupDir, BackupState, Store};
use crate::util::hex;
use crate::xfer::WholeDigest;

/// A disk whose chunks are all held, and its image digest if one is being
/// computed (none: read the image back).
pub(crate) type Pending = (usize, Option<WholeDigest>);

/// The sealing threads of one serve process, waited for before it exits:
/// those finishing a session's digests (short: what the hasher had left), and
/// those reading back what a stopped server left (as long as the images).
#[derive(Default)]
pub(crate) struct Sealers {
    after_session: Mutex<Vec<JoinHandle<()>>>,
    after_restart: Mutex<Vec<JoinHandle<()>>>,
}

/// Joins the threads in `list`.
fn join_all(list: &Mutex<Vec<JoinHandle<()>>>) {
    let handles = match list.lock() {
        Ok(mut v) => std::mem::take(&mut *v),
        Err(_) => return,
    };
    for h in handles {
        let _ = h.join();
    }
}

impl BackupDir {
    /// Records that disk `i` was verified whole: its image SHA-256 and what
    /// the source could not read.
    pub(crate) fn disk_verified(&mut self, i: usize, sha256: &str, unreadable: u64) {
        let md = &mut self.manifest.disks[i];
        md.sha256 = Some(sha256.to_string());
        md.complete = true;
        md.unreadable_bytes = unreadable;
    }

    /// Gives every disk of a sealing backup its whole-image SHA-256, then marks
    /// the backup complete (SHA256SUMS, manifest). A disk without a digest from
    /// `pending` is read back and checked against its journal; one that fails
    /// loses the damaged chunks from its journal and fails the backup, which a
    /// rerun then resumes. An error (the store failing) leaves it sealing.
    pub(crate) fn seal(&mut self, mut pending: Vec<Pending>) -> Result<()> {
        for i in 0..self.manifest.disks.len() {
            if self.manifest.disks[i].complete {
                continue;
            }
            let whole = pending
                .iter_mut()
                .find(|(d, _)| *d == i)
                .and_then(|(_, w)| w.take())
                .and_then(WholeDigest::wait);
            let name = self.manifest.disks[i].image.clone();
            let (verdict, unreadable) = match whole {
                // Recorded when its last chunk was made durable.
                Some(w) => (Ok(hex(&w)), self.manifest.disks[i].unreadable_bytes),
                None => {
                    let mut sink = ImageSink::open(self, i)?;
                    let v = sink
                        .finalize(None)
                        .with_context(|| format!("reading {name} back"))?;
                    (v, sink.unreadable_bytes())
                }
            };
            match verdict {
                Ok(sha) => self.disk_verified(i, &sha, unreadable),
                Err(why) => {
                    eprintln!("{name}: verification FAILED: {why}");
                    self.manifest.status = BackupState::Failed;
                }
            }
            self.save()?;
        }
        if self.manifest.status == BackupState::Sealing {
            // finish() decides between complete and complete with errors.
            self.manifest.status = BackupState::InProgress;
        }
        self.finish()
    }
}

impl Sealers {
    /// Seals `b` on a thread of its own, kept in `list`.
    fn spawn(list: &Mutex<Vec<JoinHandle<()>>>, mut b: BackupDir, pending: Vec<Pending>) {
        let h = std::thread::spawn(move || {
            let id = format!("{}/{}", b.host, b.manifest.backup_id);
            match b.seal(pending) {
                Ok(()) => eprintln!("backup {id} is {}", b.manifest.status.word()),
                Err(e) => eprintln!(
                    "completing backup {id} failed: {e:#}; the next `rescue serve` on this store, or `rescue verify`, tries again"
                ),
            }
        });
        if let Ok(mut v) = list.lock() {
            v.retain(|h| !h.is_finished());
            v.push(h);
        }
    }
}

impl Store {
    /// Completes `b`, in the sealing state, after its session (see `seal`).
    pub(crate) fn seal_later(&self, b: BackupDir, pending: Vec<Pending>) {
        Sealers::spawn(&self.sealers.after_session, b, pending);
    }

    /// Completes the backups a server that stopped early left sealing, by
    /// reading their images back.
    pub(crate) fn seal_unfinished(&self) {
        for b in self.list(None) {
            if b.manifest.status == BackupState::Sealing {
                eprintln!(
                    "backup {}/{} was verified but not completed: computing its image SHA-256 now",
                    b.host, b.manifest.backup_id
                );
                Sealers::spawn(&self.sealers.after_restart, b, Vec::new());
            }
        }
    }

    /// Waits until the backups of earlier sessions are complete, so that a
    /// restore right after a backup finds it so (the peer's keepalives go on).
    pub(crate) fn wait_session_sealed(&self) {
        join_all(&self.sealers.after_session);
    }

    /// Waits until every backup being sealed is complete (public for the
    /// session fuzzer, which runs sessions without serve's loop).
    pub fn wait_sealed(&self) {
        join_all(&self.sealers.after_session);
        join_all(&self.sealers.after_restart);
    }
}
