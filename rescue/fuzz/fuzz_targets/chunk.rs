//! Fuzzes the CHUNK body decoder: digest, length, unreadable ranges and (FLAG_FREE)
//! free ranges checked against the payload. The first input byte sets the zero flag,
//! the free flag and the largest chunk accepted. Whatever it accepts must be
//! consistent: ranges inside the chunk, data of the announced length less the free
//! bytes (none for a zero chunk), and it expands to exactly the chunk's length.
#![no_main]

use libfuzzer_sys::fuzz_target;
use usb4rescue_proto::msg::ChunkBody;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let zero = mode & 1 != 0;
    let free = mode & 4 != 0;
    let max_len = if mode & 2 != 0 { 8 << 20 } else { 64 };
    let Ok(c) = ChunkBody::decode_with(rest.to_vec(), zero, free, max_len) else {
        return;
    };
    assert!(c.len >= 1 && c.len <= max_len);
    let free_bytes: u64 = c.free.iter().map(|&(_, l)| u64::from(l)).sum();
    let carried = if zero {
        0
    } else {
        u64::from(c.len) - free_bytes
    };
    assert_eq!(c.data().len() as u64, carried);
    for &(o, l) in c.bad.iter().chain(&c.free) {
        assert!(l > 0 && u64::from(o) + u64::from(l) <= u64::from(c.len));
    }
    if !zero {
        let mut out = Vec::new();
        c.expand(&mut out);
        assert_eq!(out.len(), c.len as usize);
    }
});
