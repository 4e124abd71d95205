//! The fuzz targets' seeds (rescue/fuzz/seeds, one format for every filesystem
//! target: fsmap::sparse's) are what they stand for: each parser recognises its own
//! seeds, so the fuzzers start from real filesystems rather than noise.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::PathBuf;

use fsmap::sparse::Sparse;
use fsmap::{Error, ReadAt, Usage, Verdict};

type Probe = fn(&dyn ReadAt) -> Option<Result<Usage, Error>>;

fn seeds(target: &str) -> Vec<(String, Sparse)> {
    // Cargo's run-time value: the built-in one may name another checkout that shared
    // the target directory (cargo does not rebuild a test for a moved checkout).
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| env!("CARGO_MANIFEST_DIR").into(), PathBuf::from);
    let dir = manifest.join("../rescue/fuzz/seeds").join(target);
    let mut out: Vec<_> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, Sparse::decode(&fs::read(&p).unwrap()))
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(!out.is_empty(), "no seeds in {}", dir.display());
    out
}

#[test]
fn every_parser_recognises_its_seeds() {
    let targets: [(&str, Probe); 6] = [
        ("fsmap_ext4", fsmap::ext4::probe),
        ("fsmap_fat", fsmap::fat::probe),
        ("fsmap_swap", fsmap::swap::probe),
        ("xfs", fsmap::xfs::probe),
        ("btrfs", fsmap::btrfs::probe),
        ("ntfs", fsmap::ntfs::probe),
    ];
    for (target, probe) in targets {
        for (name, dev) in seeds(target) {
            // A seed may be a filesystem the parser refuses (a dirty log): recognised
            // all the same, and what it accepts lies within the image.
            match probe(&dev) {
                None => panic!("{target}/{name}: not recognised by its parser"),
                Some(Ok(u)) => assert!(u.is_valid_within(dev.len()), "{target}/{name}: {u:?}"),
                Some(Err(e)) => eprintln!("{target}/{name}: refused: {e}"),
            }
        }
    }
}

#[test]
fn opaque_seeds_are_named_or_mapped() {
    for (name, dev) in seeds("fsmap_opaque") {
        let named = fsmap::opaque::identify(&dev);
        match fsmap::probe(&dev) {
            Verdict::Used(u) => assert!(u.is_valid_within(dev.len()), "{name}: {u:?}"),
            Verdict::Raw { what, why } => assert!(
                named.is_some() && what.is_some(),
                "{name}: copied whole, unnamed: {why}"
            ),
        }
    }
}
