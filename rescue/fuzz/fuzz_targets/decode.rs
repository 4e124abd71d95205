//! Fuzzes the message decoder: arbitrary bytes through the frame reader, then
//! every frame through the chunk and control-message decoders. Nothing may
//! panic or allocate beyond the documented limits. The first input byte picks
//! raw bytes, or a payload wrapped in a valid header (random bytes almost never
//! pass the header CRC, and the decoders behind it deserve the fuzzing too).
#![no_main]

use libfuzzer_sys::fuzz_target;
use rescue::proto::frame::{FrameReader, Header, Read1, write_frame};
use rescue::proto::msg::{self, ChunkBody};

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
        let f = match r.read_frame() {
            Ok(Read1::Frame(f)) => f,
            _ => break,
        };
        let zero = f.header.flags & msg::FLAG_ZERO != 0;
        if let Ok(c) = ChunkBody::decode(f.payload.clone(), zero, 8 << 20) {
            let _ = c.data().len();
        }
        let _ = msg::from_json::<msg::Hello>(&f);
        let _ = msg::from_json::<msg::BackupBegin>(&f);
        let _ = msg::from_json::<msg::BackupReady>(&f);
        let _ = msg::from_json::<msg::RestoreBegin>(&f);
        let _ = msg::from_json::<msg::Listing>(&f);
        let _ = msg::from_json::<msg::ErrorMsg>(&f);
        let _ = msg::from_json::<msg::DiskDone>(&f);
    }
});
