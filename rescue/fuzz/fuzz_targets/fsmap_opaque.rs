//! Fuzzes fsmap's whole-copy formats and the dispatch (`fsmap::probe`, which tries
//! them first and then every parser) on sparse images (fsmap::sparse's format, as
//! every filesystem target).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    fsmap::sparse::fuzz_one(data, |dev| {
        let _ = fsmap::opaque::identify(dev);
        match fsmap::probe(dev) {
            fsmap::Verdict::Used(u) => Some(Ok(u)),
            fsmap::Verdict::Raw { .. } => None,
        }
    });
});
