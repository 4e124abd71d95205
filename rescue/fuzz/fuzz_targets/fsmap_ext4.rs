//! Fuzzes fsmap's ext4 parser on sparse images (fsmap::sparse's format, as every
//! filesystem target; the seeds are small real images, make_seeds.py): it never
//! panics, loops or allocates without bound, and what it accepts is a valid Usage.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    fsmap::sparse::fuzz_one(data, fsmap::ext4::probe);
});
