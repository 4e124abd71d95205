//! Fuzzes the DIGESTS body decoder (restore --resume reads the peer's answer
//! through it): a body it accepts has exactly the digests its count says.
#![no_main]

use libfuzzer_sys::fuzz_target;
use usb4rescue_proto::digests::Digests;

fuzz_target!(|data: &[u8]| {
    let Ok(d) = Digests::decode(data) else {
        return;
    };
    assert_eq!(data.len(), 8 + d.len() as usize * 32);
    for i in 0..d.len() as usize {
        let _ = d.recorded(i);
    }
    assert!(d.recorded(d.len() as usize).is_none());
});
