//! The btrfs parser on images made by mkfs.btrfs (single and DUP metadata): a copy of
//! only the used ranges is a clean filesystem with every file intact, the deleted data
//! is not copied, a damaged superblock or tree node falls back.

#![allow(clippy::unwrap_used)]

mod common;
mod fsimage;

use fsimage::{Fixture, run, skip};

const TOOLS: &[&str] = &["mkfs.btrfs", "btrfs"];

fn probe(f: &Fixture) -> Result<fsmap::Usage, fsmap::Error> {
    fsimage::probe(&f.img, fsmap::btrfs::probe)
}

fn used_copy_is_complete(profile: &str) {
    if skip(TOOLS) {
        return;
    }
    let mut f = Fixture::new(
        256,
        "mkfs.btrfs",
        &["-q", "-L", "fixture", "-m", profile, "-d", "single"],
    );
    f.populate("btrfs", 24, 40);
    // df counts data extents and both copies of metadata; the parser adds the first
    // MiB and the superblocks.
    let seed = format!("btrfs/{profile}");
    let u = fsimage::check_usage(&f, fsmap::btrfs::probe, 4 << 20, &seed);
    assert_eq!(u.fs, "btrfs");
    let copy = f.copy_used(&u.used);
    run("btrfs", &["check", "--readonly", copy.to_str().unwrap()]);
    f.check_tree(&copy, "btrfs", "");
    scrub(&f, &copy);
}

/// btrfs check reads one copy of each node: a scrub reads both copies of DUP (and
/// every data block) and checks their checksums.
fn scrub(f: &Fixture, img: &std::path::Path) {
    let mnt = f.dir.path().join("scrub");
    std::fs::create_dir_all(&mnt).unwrap();
    let m = mnt.to_str().unwrap();
    run("mount", &["-o", "loop,ro", img.to_str().unwrap(), m]);
    let out = std::process::Command::new("btrfs")
        .args(["scrub", "start", "-B", "-r", m])
        .output()
        .unwrap();
    run("umount", &[m]);
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.contains("no errors found"));
}

#[test]
fn btrfs_single_used_ranges_make_a_complete_copy_without_the_deleted_data() {
    used_copy_is_complete("single");
}

#[test]
fn btrfs_dup_used_ranges_make_a_complete_copy_without_the_deleted_data() {
    used_copy_is_complete("dup");
}

#[test]
fn btrfs_damaged_superblock_or_node_falls_back() {
    if skip(TOOLS) {
        return;
    }
    let mut f = Fixture::new(256, "mkfs.btrfs", &["-q", "-m", "single"]);
    f.populate("btrfs", 1, 1);
    let u = probe(&f).unwrap();
    // The superblock, and a byte inside the first metadata node after it: with single
    // metadata there is no second copy to fall back on.
    let dev = std::fs::File::open(&f.img).unwrap();
    let node = first_node_after(&dev, &u.used);
    for at in [0x10000 + 0x100, node + 200] {
        f.damage(at);
        let e = probe(&f).unwrap_err();
        eprintln!("damaged byte {at}: {e}");
        f.repair(at);
        probe(&f).unwrap();
    }
}

/// The byte offset of the first block after 1 MiB that starts with a btrfs node header
/// (the fsid of the superblock at offset 32).
fn first_node_after(dev: &std::fs::File, used: &[std::ops::Range<u64>]) -> u64 {
    use std::os::unix::fs::FileExt;
    let mut sb = [0u8; 48];
    dev.read_exact_at(&mut sb, 0x10000).unwrap();
    let mut b = [0u8; 48];
    for r in used {
        let mut at = r.start.max(1 << 20).next_multiple_of(4096);
        while at + 4096 <= r.end {
            dev.read_exact_at(&mut b, at).unwrap();
            if b[32..48] == sb[32..48] {
                return at;
            }
            at += 4096;
        }
    }
    panic!("no tree node found");
}
