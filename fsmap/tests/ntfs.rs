//! The NTFS parser on images made by mkntfs (ntfs-3g): a copy of only the used ranges
//! is a clean filesystem with every file intact, the deleted data is not copied, a
//! damaged boot sector or MFT record falls back.

#![allow(clippy::unwrap_used)]

mod fsimage;

use fsimage::{Fixture, missing, run};

const TOOLS: &[&str] = &["mkntfs", "ntfsfix", "mount.ntfs-3g"];

fn probe(f: &Fixture) -> Result<fsmap::Usage, fsmap::Error> {
    let dev = std::fs::File::open(&f.img).unwrap();
    fsmap::ntfs::probe(&dev).expect("an NTFS boot sector")
}

#[test]
fn ntfs_used_ranges_make_a_complete_copy_without_the_deleted_data() {
    if let Some(why) = missing(TOOLS) {
        eprintln!("skipped: {why}");
        return;
    }
    let mut f = Fixture::new(128, "mkntfs", &["-q", "-F", "-f", "-L", "fixture"]);
    f.populate("ntfs-3g", 24, 40);
    let u = probe(&f).unwrap();
    assert_eq!((u.fs, u.label.as_deref(), u.block_size), ("ntfs", Some("fixture"), 4096));
    let size = std::fs::metadata(&f.img).unwrap().len();
    let dev = std::fs::File::open(&f.img).unwrap();
    assert_eq!(fsmap::probe(&dev), fsmap::Verdict::Used(u.clone()));
    fsimage::report("ntfs", u.used_bytes(), f.df_used, size);
    let files: u64 = f.files.iter().map(|(_, d)| d.len() as u64).sum();
    assert!(u.used_bytes() >= files && u.used_bytes() <= f.df_used + (1 << 20));
    let (inside, outside) = f.deleted_blocks(&u.used);
    eprintln!("deleted blocks: {inside} in used, {outside} outside");
    assert!(outside > 9000 && inside < 100, "{inside} in, {outside} out");
    fsimage::write_seed(&f.img, "ntfs/populated", |d| {
        format!("{:?}", fsmap::ntfs::probe(d))
    });
    let copy = f.copy_used(&u.used);
    let out = run("ntfsfix", &["-n", copy.to_str().unwrap()]);
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));
    f.check_tree(&copy, "ntfs-3g", "");
}

#[test]
fn ntfs_damaged_boot_sector_or_record_and_a_dirty_volume_fall_back() {
    if let Some(why) = missing(TOOLS) {
        eprintln!("skipped: {why}");
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
    fsimage::write_seed(&f.img, "ntfs/dirty", |d| format!("{:?}", fsmap::ntfs::probe(d)));
}
