//! Fuzzes fsmap's fat parser with a hostile partition (see fsmap_dev.rs): it never
//! panics, loops or allocates without bound, and what it accepts is a valid Usage.
#![no_main]

#[path = "fsmap_dev.rs"]
mod dev;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(d) = dev::Dev::new(data) {
        dev::check(&d, fsmap::fat::probe(&d));
    }
});
