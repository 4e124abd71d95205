//! Reads a file or disk front to back on a thread of its own while the caller
//! hashes what was read: reading and SHA-256 then overlap instead of taking
//! turns (a read-back of a 2 TB disk takes as long as the slower of the two,
//! not their sum).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::mpsc;
use std::thread;

/// Buffers in flight between the reader and the caller.
const DEPTH: usize = 4;

/// Calls `each(offset, bytes)` for consecutive pieces of `piece` bytes (the
/// last one shorter) covering bytes `start..end` of `f`, in order. Stops at
/// the first error, from the read or from `each`.
pub(crate) fn for_each_piece<E>(
    f: &File,
    start: u64,
    end: u64,
    piece: usize,
    mut each: impl FnMut(u64, &[u8]) -> Result<(), E>,
) -> Result<(), E>
where
    E: From<io::Error>,
{
    let piece = piece.max(1);
    let (full_tx, full_rx) = mpsc::sync_channel::<io::Result<(u64, Vec<u8>)>>(DEPTH);
    let (empty_tx, empty_rx) = mpsc::sync_channel::<Vec<u8>>(DEPTH + 1);
    for _ in 0..DEPTH {
        let _ = empty_tx.send(vec![0u8; piece]);
    }
    thread::scope(move |s| {
        s.spawn(move || {
            let mut pos = start;
            while pos < end {
                let Ok(mut buf) = empty_rx.recv() else {
                    return;
                };
                let n = (end - pos).min(piece as u64) as usize;
                buf.resize(n, 0);
                let r = f.read_exact_at(&mut buf, pos).map(|()| (pos, buf));
                // Reported in keepalives: comparing a large target is work, not idling.
                crate::wire::conn::note_work();
                let failed = r.is_err();
                if full_tx.send(r).is_err() || failed {
                    return;
                }
                pos += n as u64;
            }
        });
        let mut result = Ok(());
        for item in full_rx.iter() {
            let step = item.map_err(E::from).and_then(|(pos, buf)| {
                each(pos, &buf)?;
                // The reader may have finished: then the buffer is simply dropped.
                let _ = empty_tx.try_send(buf);
                Ok(())
            });
            if step.is_err() {
                result = step;
                break;
            }
        }
        // Unblock the reader (waiting to send or for a buffer) so the scope can end.
        drop(full_rx);
        drop(empty_tx);
        result
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn visits_every_piece_in_order() {
        let mut t = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..100_003u32).map(|i| (i % 253) as u8).collect();
        t.write_all(&data).unwrap();
        let mut seen = Vec::new();
        let mut next = 0u64;
        for_each_piece::<io::Error>(&t, 0, data.len() as u64, 4096, |off, b| {
            assert_eq!(off, next);
            next += b.len() as u64;
            seen.extend_from_slice(b);
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, data);
        // A range in the middle.
        let mut mid = Vec::new();
        for_each_piece::<io::Error>(&t, 5000, 60_000, 1000, |_, b| {
            mid.extend_from_slice(b);
            Ok(())
        })
        .unwrap();
        assert_eq!(mid, &data[5000..60_000]);
    }

    #[test]
    fn stops_at_the_first_error() {
        let t = tempfile::tempfile().unwrap();
        t.set_len(10_000).unwrap();
        // Asks for more than the file holds: the read past its end fails.
        let mut calls = 0;
        let r = for_each_piece::<io::Error>(&t, 0, 20_000, 4096, |_, _| {
            calls += 1;
            Ok(())
        });
        assert!(r.is_err());
        assert_eq!(calls, 2);
        let r = for_each_piece::<io::Error>(&t, 0, 10_000, 4096, |off, _| {
            if off >= 4096 {
                Err(io::Error::other("enough"))
            } else {
                Ok(())
            }
        });
        assert_eq!(r.unwrap_err().to_string(), "enough");
    }
}
