//! Fuzzes the NTFS parser (fsmap::ntfs) on sparse images (fsmap::sparse's format: the
//! seeds are the metadata blocks read from real images): never a panic, a loop or an
//! unbounded allocation, and what it accepts is a valid set of ranges.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    fsmap::sparse::fuzz_one(data, fsmap::ntfs::probe);
});
