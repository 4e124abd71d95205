//! Fuzzes the frame reader: arbitrary bytes, resynchronising after garbage and
//! damaged headers. Nothing may panic, and no payload may exceed the limit the
//! reader enforces. The first input byte picks raw bytes, or the rest wrapped in
//! a valid header (random bytes almost never pass the header CRC) and followed
//! by garbage.
#![no_main]

use libfuzzer_sys::fuzz_target;
use usb4rescue_proto::frame::{FrameReader, Header, MAX_PAYLOAD, Read1, write_frame};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let bytes = if mode & 1 == 0 {
        rest.to_vec()
    } else {
        let kind = rest.first().copied().unwrap_or(0) % 20;
        let mut h = Header::new(kind, u32::from(mode >> 4), u64::from(mode));
        h.flags = u16::from((mode >> 1) & 1);
        let mut v = Vec::new();
        let _ = write_frame(&mut v, h, rest.get(1..).unwrap_or(&[]));
        if mode & 4 != 0 {
            // Garbage after a valid frame exercises resynchronisation.
            v.extend_from_slice(rest);
        }
        v
    };
    let mut r = FrameReader::new(&bytes[..]);
    for _ in 0..64 {
        match r.read_frame() {
            Ok(Read1::Frame(f)) => {
                assert!(f.payload.len() <= MAX_PAYLOAD as usize);
                assert_eq!(f.payload.len(), f.header.len as usize);
            }
            _ => break,
        }
    }
});
