//! Fake lib/modules/VERSION trees for the tests of rescue and image, which both
//! read them through bootfacts: module files and depmod's index files, as data.
//! Included by path (`#[path = ...] mod modtree;`) from each test crate.

use std::fs;
use std::path::Path;

/// Writes `bytes` at `path`, making its directories.
pub fn write(path: &Path, bytes: &[u8]) {
    fs::create_dir_all(path.parent().expect("a path with a parent")).expect("mkdir");
    fs::write(path, bytes).expect("writing a fixture file");
}

/// Writes the module tree `m`: each file below it (modules and index files
/// alike) with its contents.
pub fn write_tree(m: &Path, files: &[(&str, &[u8])]) {
    for (rel, body) in files {
        write(&m.join(rel), body);
    }
}
