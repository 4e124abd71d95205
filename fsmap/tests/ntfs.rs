//! The NTFS parser on images made by mkntfs (ntfs-3g): a copy of only the used ranges
//! is a clean filesystem with every file intact, the deleted data is not copied, a
//! damaged boot sector or MFT record falls back.

#![allow(clippy::unwrap_used)]

mod common;
mod fsimage;

use fsimage::{Fixture, run, skip};

const TOOLS: &[&str] = &["mkntfs", "ntfsfix", "mount.ntfs-3g"];

fn probe(f: &Fixture) -> Result<fsmap::Usage, fsmap::Error> {
    fsimage::probe(&f.img, fsmap::ntfs::probe)
}

#[test]
fn ntfs_used_ranges_make_a_complete_copy_without_the_deleted_data() {
    if skip(TOOLS) {
        return;
    }
    let mut f = Fixture::new(128, "mkntfs", &["-q", "-F", "-f", "-L", "fixture"]);
    f.populate("ntfs-3g", 24, 40);
    let u = fsimage::check_usage(&f, fsmap::ntfs::probe, 1 << 20, "ntfs/populated");
    assert_eq!(u.fs, "ntfs");
    let copy = f.copy_used(&u.used);
    let out = run("ntfsfix", &["-n", copy.to_str().unwrap()]);
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));
    f.check_tree(&copy, "ntfs-3g", "");
}

#[test]
fn ntfs_damaged_boot_sector_or_record_and_a_dirty_volume_fall_back() {
    if skip(TOOLS) {
        return;
    }
    let mut f = Fixture::new(64, "mkntfs", &["-q", "-F", "-f"]);
    f.populate("ntfs-3g", 1, 1);
    probe(&f).unwrap();
    // The boot sector's signature, and the end of the first sector of $Bitmap's record
    // (its update sequence): the MFT starts at cluster 4 here.
    let bitmap_rec = 4 * 4096 + 6 * 1024;
    for at in [0x1fe, bitmap_rec + 510] {
        f.damage(at);
        let e = probe(&f).unwrap_err();
        eprintln!("damaged byte {at}: {e}");
        f.repair(at);
        probe(&f).unwrap();
    }
    // ntfsfix marks the volume dirty so that Windows checks it.
    run("ntfsfix", &[f.img.to_str().unwrap()]);
    let e = probe(&f).unwrap_err().to_string();
    assert!(e.contains("dirty"), "{e}");
    fsimage::write_seed(&f.img, "ntfs/dirty", |d| {
        format!("{:?}", fsmap::ntfs::probe(d))
    });
}
