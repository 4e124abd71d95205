//! Fuzzes the CHUNK body decoder: digest, length and unreadable ranges checked
//! against the payload. The first input byte sets the zero flag and the largest
//! chunk accepted. Whatever it accepts must be consistent: ranges inside the
//! chunk, data of the announced length (none for a zero chunk).
#![no_main]

use libfuzzer_sys::fuzz_target;
use usb4rescue_proto::msg::ChunkBody;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let zero = mode & 1 != 0;
    let max_len = if mode & 2 != 0 { 8 << 20 } else { 64 };
    let Ok(c) = ChunkBody::decode(rest.to_vec(), zero, max_len) else {
        return;
    };
    assert!(c.len >= 1 && c.len <= max_len);
    assert_eq!(c.data().len(), if zero { 0 } else { c.len as usize });
    for &(o, l) in &c.bad {
        assert!(l > 0 && u64::from(o) + u64::from(l) <= u64::from(c.len));
    }
});
