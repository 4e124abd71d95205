//! Fuzzes the message decoder: arbitrary bytes through the frame reader, then
//! every frame through the chunk and control-message decoders. Nothing may
//! panic or allocate beyond the documented limits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rescue::proto::frame::{FrameReader, Read1};
use rescue::proto::msg::{self, ChunkBody};

fuzz_target!(|data: &[u8]| {
    let mut r = FrameReader::new(data);
    for _ in 0..64 {
        let f = match r.read_frame() {
            Ok(Read1::Frame(f)) => f,
            _ => break,
        };
        let zero = f.header.flags & msg::FLAG_ZERO != 0;
        let _ = ChunkBody::decode(f.payload.clone(), zero, 8 << 20);
        let _ = msg::from_json::<msg::Hello>(&f);
        let _ = msg::from_json::<msg::BackupBegin>(&f);
        let _ = msg::from_json::<msg::BackupReady>(&f);
        let _ = msg::from_json::<msg::RestoreBegin>(&f);
        let _ = msg::from_json::<msg::Listing>(&f);
        let _ = msg::from_json::<msg::ErrorMsg>(&f);
        let _ = msg::from_json::<msg::DiskDone>(&f);
    }
});
