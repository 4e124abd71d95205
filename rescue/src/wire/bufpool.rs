//! Recycles the megabyte buffers chunks travel in. Allocating a fresh one per
//! chunk costs an mmap, 256 page faults with kernel zeroing and an munmap each
//! time (large allocations bypass the heap in both glibc and musl); reusing a
//! few keeps the data path free of that.

use std::sync::Mutex;

/// More buffers than the window and the queues can hold are not worth keeping.
const KEEP: usize = 48;

static POOL: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// Buffers smaller than this come from the heap and are not kept.
const SMALL: usize = 64 * 1024;

/// A zeroed buffer of `len` bytes, recycled when one is available. A small
/// one (a control message, a zero chunk's frame) never takes a megabyte
/// buffer: it may be held long (the writer's queue keeps runs of zero chunks),
/// and the next data chunk would then pay for a fresh one.
pub(crate) fn take(len: usize) -> Vec<u8> {
    match reuse(len) {
        Some(mut b) => {
            b.clear();
            b.resize(len, 0);
            b
        }
        None => vec![0u8; len],
    }
}

/// A buffer of `len` bytes for a caller that overwrites every one of them
/// (a read that fills it whole, or fails and drops it): a recycled buffer keeps
/// its old bytes instead of being zeroed first, which was a megabyte memset per
/// data chunk on each side. Anything that leaves bytes unwritten must use
/// `take`.
pub(crate) fn take_to_overwrite(len: usize) -> Vec<u8> {
    match reuse(len) {
        Some(mut b) => {
            if b.len() >= len {
                b.truncate(len);
            } else {
                b.resize(len, 0);
            }
            b
        }
        None => vec![0u8; len],
    }
}

/// A kept buffer that holds `len` bytes, for a buffer of at least `SMALL`.
fn reuse(len: usize) -> Option<Vec<u8>> {
    if len < SMALL {
        return None;
    }
    let mut p = POOL.lock().ok()?;
    let i = p.iter().position(|b| b.capacity() >= len)?;
    Some(p.swap_remove(i))
}

/// Hands a buffer back for reuse (small ones are simply dropped).
pub(crate) fn give(b: Vec<u8>) {
    if b.capacity() < SMALL {
        return;
    }
    if let Ok(mut p) = POOL.lock()
        && p.len() < KEEP
    {
        p.push(b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_and_zeroes() {
        let mut b = take(100_000);
        b.fill(7);
        let cap = b.capacity();
        give(b);
        let b = take(90_000);
        assert!(b.capacity() >= 90_000);
        assert!(b.iter().all(|&x| x == 0));
        assert!(cap >= 90_000);
    }

    #[test]
    fn a_buffer_to_overwrite_has_the_length_asked_for() {
        let mut b = take(200_000);
        b.fill(7);
        give(b);
        for len in [150_000, 210_000, 100] {
            let b = take_to_overwrite(len);
            assert_eq!(b.len(), len);
            give(b);
        }
        // What `take` hands out after it is zeroed whatever the last user left.
        let mut b = take_to_overwrite(200_000);
        b.fill(9);
        give(b);
        assert!(take(200_000).iter().all(|&x| x == 0));
    }

    #[test]
    fn small_frames_never_hold_a_big_buffer() {
        give(vec![0u8; 1 << 20]);
        let b = take(72);
        assert_eq!(b.len(), 72);
        assert!(b.capacity() < SMALL);
    }
}
