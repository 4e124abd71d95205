//! Fuzzes the control-message decoders: arbitrary bytes as the JSON body of
//! every message type (the first input byte picks the frame's kind, which only
//! names the message in errors). A message that decodes must pass its own
//! bounds check and encode again; its chunk ranges must come out normalised.
#![no_main]

use libfuzzer_sys::fuzz_target;
use usb4rescue_proto::ChunkRanges;
use usb4rescue_proto::frame::{Frame, Header};
use usb4rescue_proto::msg::{self, Bounded};

fn decodes<T: for<'de> serde::Deserialize<'de> + serde::Serialize + Bounded>(
    f: &Frame,
) -> Option<T> {
    let v: T = msg::from_json(f).ok()?;
    assert!(v.check().is_ok());
    assert!(!msg::to_json(&v).is_empty());
    Some(v)
}

fn normalised(ranges: &[ChunkRanges]) {
    for r in ranges {
        assert!(r.iter().all(|&(s, e)| s < e));
        assert!(r.windows(2).all(|w| w[0].1 < w[1].0));
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    let f = Frame {
        header: Header::new(kind % 23, 0, 0),
        payload: rest.to_vec(),
        intact: true,
    };
    let _ = decodes::<msg::Hello>(&f);
    let _ = decodes::<msg::Join>(&f);
    let _ = decodes::<msg::ErrorMsg>(&f);
    let _ = decodes::<msg::BackupBegin>(&f);
    if let Some(r) = decodes::<msg::BackupReady>(&f) {
        normalised(&r.have);
    }
    let _ = decodes::<msg::DiskEnd>(&f);
    let _ = decodes::<msg::DiskDone>(&f);
    let _ = decodes::<msg::SessionEnd>(&f);
    let _ = decodes::<msg::SessionDone>(&f);
    let _ = decodes::<msg::ListReq>(&f);
    let _ = decodes::<msg::Listing>(&f);
    if let Some(r) = decodes::<msg::RestoreBegin>(&f) {
        normalised(&r.have);
    }
    let _ = decodes::<msg::DigestsReq>(&f);
    let _ = decodes::<msg::RestoreReady>(&f);
    let _ = decodes::<msg::FreeReq>(&f);
    if let Some(r) = decodes::<msg::Free>(&f)
        && let Some(m) = r.free
    {
        // Whatever passes the disk check is cut into chunks without panicking.
        if m.check_for(1 << 40).is_ok() {
            assert!(
                m.within(0, 1 << 20)
                    .iter()
                    .all(|&(o, l)| l > 0 && o + l <= 1 << 20)
            );
        }
    }
});
