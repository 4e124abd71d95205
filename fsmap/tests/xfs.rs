//! The XFS parser on images made by mkfs.xfs: a copy of only the used ranges is a clean
//! filesystem with every file intact, the deleted data is not copied, damaged metadata
//! and a dirty log fall back.

#![allow(clippy::unwrap_used)]

mod fsimage;

use fsimage::{Fixture, missing, run};

const TOOLS: &[&str] = &["mkfs.xfs", "xfs_repair", "xfs_io"];

fn probe(f: &Fixture) -> Result<fsmap::Usage, fsmap::Error> {
    let dev = std::fs::File::open(&f.img).unwrap();
    fsmap::xfs::probe(&dev).expect("an XFS superblock")
}

#[test]
fn xfs_used_ranges_make_a_complete_copy_without_the_deleted_data() {
    if let Some(why) = missing(TOOLS) {
        eprintln!("skipped: {why}");
        return;
    }
    let mut f = Fixture::new(320, "mkfs.xfs", &["-q", "-L", "fixture"]);
    f.populate("xfs", 24, 40);
    let u = probe(&f).unwrap();
    assert_eq!(
        (u.fs, u.label.as_deref(), u.block_size),
        ("xfs", Some("fixture"), 4096)
    );
    let size = std::fs::metadata(&f.img).unwrap().len();
    let dev = std::fs::File::open(&f.img).unwrap();
    assert_eq!(fsmap::probe(&dev), fsmap::Verdict::Used(u.clone()));
    fsimage::report("xfs", u.used_bytes(), f.df_used, size);
    // df does not count the log (64 MiB here) but counts the per-AG reservations.
    let files: u64 = f.files.iter().map(|(_, d)| d.len() as u64).sum();
    assert!(u.used_bytes() >= files && u.used_bytes() <= f.df_used + (70 << 20));
    fsimage::write_seed(&f.img, "xfs/populated", |d| {
        format!("{:?}", fsmap::xfs::probe(d))
    });
    let (inside, outside) = f.deleted_blocks(&u.used);
    eprintln!("deleted blocks: {inside} in used, {outside} outside");
    assert!(outside > 9000 && inside < 100, "{inside} in, {outside} out");
    let copy = f.copy_used(&u.used);
    run("xfs_repair", &["-n", copy.to_str().unwrap()]);
    f.check_tree(&copy, "xfs", "");
}

#[test]
fn xfs_damaged_metadata_and_a_dirty_log_fall_back() {
    if let Some(why) = missing(TOOLS) {
        eprintln!("skipped: {why}");
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
