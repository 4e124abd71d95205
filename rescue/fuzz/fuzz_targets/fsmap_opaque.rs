//! Fuzzes fsmap's whole-copy formats and the dispatch (`fsmap::probe`, which tries
//! them first and then every parser) with a hostile partition (see fsmap_dev.rs).
#![no_main]

#[path = "fsmap_dev.rs"]
mod dev;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(d) = dev::Dev::new(data) {
        let _ = fsmap::opaque::identify(&d);
        if let fsmap::Verdict::Used(u) = fsmap::probe(&d) {
            dev::check(&d, Some(Ok(u)));
        }
    }
});
