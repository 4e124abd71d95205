//! The XFS parser on images made by mkfs.xfs: a copy of only the used ranges is a clean
//! filesystem with every file intact, the deleted data is not copied, damaged metadata
//! and a dirty log fall back.

#![allow(clippy::unwrap_used)]

mod common;
mod fsimage;

use fsimage::{Fixture, run, skip};

const TOOLS: &[&str] = &["mkfs.xfs", "xfs_repair", "xfs_io"];

fn probe(f: &Fixture) -> Result<fsmap::Usage, fsmap::Error> {
    fsimage::probe(&f.img, fsmap::xfs::probe)
}

#[test]
fn xfs_used_ranges_make_a_complete_copy_without_the_deleted_data() {
    if skip(TOOLS) {
        return;
    }
    let mut f = Fixture::new(320, "mkfs.xfs", &["-q", "-L", "fixture"]);
    f.populate("xfs", 24, 40);
    // df does not count the log (64 MiB here) but counts the per-AG reservations.
    let u = fsimage::check_usage(&f, fsmap::xfs::probe, 70 << 20, "xfs/populated");
    assert_eq!(u.fs, "xfs");
    let copy = f.copy_used(&u.used);
    run("xfs_repair", &["-n", copy.to_str().unwrap()]);
    f.check_tree(&copy, "xfs", "");
}

#[test]
fn xfs_damaged_metadata_and_a_dirty_log_fall_back() {
    if skip(TOOLS) {
        return;
    }
    let mut f = Fixture::new(320, "mkfs.xfs", &["-q"]);
    f.populate("xfs", 1, 1);
    probe(&f).unwrap();
    // The superblock, the AGF of group 2, the bnobt root of group 1 (block 1 of it).
    let agblocks = 20480 * 4096;
    for at in [40, 2 * agblocks + 512 + 60, agblocks + 4096 + 60] {
        f.damage(at);
        let e = probe(&f).unwrap_err();
        eprintln!("damaged byte {at}: {e}");
        f.repair(at);
        probe(&f).unwrap();
    }
    // A shutdown after the log was written (-f) leaves it without an unmount record.
    let img = f.img.to_str().unwrap().to_string();
    let mnt = f.dir.path().join("mnt");
    let m = mnt.to_str().unwrap();
    run("mount", &["-o", "loop", &img, m]);
    std::fs::write(mnt.join("new"), b"x").unwrap();
    run("xfs_io", &["-x", "-c", "shutdown -f", m]);
    run("umount", &[m]);
    let e = probe(&f).unwrap_err().to_string();
    assert!(e.contains("log"), "{e}");
    fsimage::write_seed(&f.img, "xfs/dirty-log", |d| {
        format!("{:?}", fsmap::xfs::probe(d))
    });
}
