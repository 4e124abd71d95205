//! ext2/3/4 parser against images mkfs.ext2/3/4 makes in each layout a technician
//! meets (1k and 4k blocks, flex_bg or not, metadata_csum or gdt_csum or neither,
//! 64bit with meta_bg, bigalloc, sparse_super2), filled with files and a deleted one:
//! the used ranges are exactly the allocated blocks, the copy of only those is clean
//! and identical, and damage falls back to an error.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};

use common::*;

/// Builds a fixture: `mkfs` with `args` on a `mib` MiB image, filled and with a
/// deleted file; `None` (the test skipped, saying why) without root or the tool.
fn fixture(
    test: &str,
    mkfs: &str,
    args: &[&str],
    mib: u64,
) -> Option<(tempfile::TempDir, PathBuf, Vec<u8>)> {
    if !can_mount(test) || !have(test, mkfs) || !have(test, "e2fsck") {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("fs.img");
    blank(&img, mib);
    let mut a = vec!["-q", "-F", "-L", "data"];
    a.extend_from_slice(args);
    a.push(img.to_str().unwrap());
    run(mkfs, &a);
    let gone = {
        let m = Mount::new(&img, "rw");
        let mut rng = Rng::new(mib ^ args.len() as u64);
        let gone = populate(m.path(), &mut rng, 3 << 10);
        std::fs::create_dir(m.path().join("links")).unwrap();
        std::os::unix::fs::symlink("../small.txt", m.path().join("links/s")).unwrap();
        gone
    };
    Some((dir, img, gone))
}

/// `dumpe2fs -h`'s value of `field` ("Block count").
fn dumpe2fs(img: &Path, field: &str) -> u64 {
    let out = run("dumpe2fs", &["-h", img.to_str().unwrap()]);
    let line = out
        .lines()
        .find(|l| l.starts_with(&format!("{field}:")))
        .unwrap_or_else(|| panic!("dumpe2fs -h shows no {field}"));
    line.split(':').nth(1).unwrap().trim().parse().unwrap()
}

fn probe(img: &Path) -> Result<fsmap::Usage, fsmap::Error> {
    let f = std::fs::File::open(img).unwrap();
    fsmap::ext4::probe(&f).expect("recognised as ext2/3/4")
}

/// The whole check for one layout.
fn layout(test: &str, mkfs: &str, args: &[&str], mib: u64, name: &str) {
    let Some((_dir, img, gone)) = fixture(test, mkfs, args, mib) else {
        return;
    };
    let u = probe(&img).unwrap();
    assert_eq!((u.fs, u.label.as_deref()), (name, Some("data")));
    let block = dumpe2fs(&img, "Block size");
    let allocated = dumpe2fs(&img, "Block count") - dumpe2fs(&img, "Free blocks");
    assert_eq!(
        u.used_bytes(),
        allocated * block,
        "used bytes are the allocated blocks"
    );
    assert!(
        u.used_bytes() < (mib << 20) / 2,
        "the deleted file's blocks are not used"
    );
    // A file's last cluster keeps stale data past its last block (bigalloc).
    let slack = (u.block_size - block) as usize / 512 * 20;
    check_copy(
        &img,
        &u.used,
        &["e2fsck", "-fn"],
        &View::Mount("ro"),
        &gone,
        slack,
    );
}

#[test]
fn ext4_default_with_metadata_csum_flex_bg_and_uninit_groups() {
    layout(
        "ext4_default",
        "mkfs.ext4",
        &["-b", "4096", "-g", "2048"],
        64,
        "ext4",
    );
}

#[test]
fn ext4_1k_blocks_with_gdt_csum() {
    layout(
        "ext4_1k_gdt_csum",
        "mkfs.ext4",
        &["-b", "1024", "-O", "^metadata_csum,uninit_bg"],
        32,
        "ext4",
    );
}

#[test]
fn ext4_without_flex_bg() {
    layout(
        "ext4_no_flex_bg",
        "mkfs.ext4",
        &["-b", "4096", "-g", "2048", "-O", "^flex_bg"],
        32,
        "ext4",
    );
}

#[test]
fn ext4_64bit_meta_bg() {
    layout(
        "ext4_meta_bg",
        "mkfs.ext4",
        &[
            "-b",
            "1024",
            "-g",
            "1024",
            "-O",
            "64bit,meta_bg,^resize_inode",
        ],
        32,
        "ext4",
    );
}

#[test]
fn ext4_bigalloc() {
    layout(
        "ext4_bigalloc",
        "mkfs.ext4",
        &["-b", "4096", "-O", "bigalloc", "-C", "16384"],
        64,
        "ext4",
    );
}

#[test]
fn ext4_sparse_super2() {
    layout(
        "ext4_sparse_super2",
        "mkfs.ext4",
        &["-b", "1024", "-O", "sparse_super2"],
        32,
        "ext4",
    );
}

#[test]
fn ext3_4k() {
    layout(
        "ext3_4k",
        "mkfs.ext3",
        &["-b", "4096", "-g", "2048"],
        32,
        "ext3",
    );
}

#[test]
fn ext2_1k() {
    layout("ext2_1k", "mkfs.ext2", &["-b", "1024"], 32, "ext2");
}

/// The first group's block bitmap location, from dumpe2fs.
fn first_block_bitmap(img: &Path) -> u64 {
    let out = run("dumpe2fs", &[img.to_str().unwrap()]);
    let at = out.find("Block bitmap at ").unwrap() + "Block bitmap at ".len();
    out[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

fn assert_falls_back(img: &Path, why: &str) {
    match probe(img) {
        Err(e) => assert!(e.to_string().contains(why), "{e}"),
        Ok(u) => panic!("damage not noticed ({why}): {} bytes used", u.used_bytes()),
    }
}

#[test]
fn damaged_checksummed_ext4_falls_back() {
    let Some((_dir, img, _)) = fixture(
        "damaged_csum",
        "mkfs.ext4",
        &["-b", "4096", "-g", "2048"],
        32,
    ) else {
        return;
    };
    let pristine = std::fs::read(&img).unwrap();
    let restore = || std::fs::write(&img, &pristine).unwrap();
    assert!(probe(&img).is_ok());
    // A bit flipped in the label: the superblock checksum no longer matches.
    let b = peek(&img, 1024 + 0x78, 1)[0];
    poke(&img, 1024 + 0x78, &[b ^ 1]);
    assert_falls_back(&img, "superblock checksum");
    restore();
    // A group descriptor's used-directories count changed.
    let d = peek(&img, 4096 + 0x10, 1)[0];
    poke(&img, 4096 + 0x10, &[d ^ 1]);
    assert_falls_back(&img, "descriptor checksum");
    restore();
    let bb = first_block_bitmap(&img) * 4096;
    let last = bb + 2048 / 8 - 1;
    poke(&img, last, &[peek(&img, last, 1)[0] ^ 0x80]);
    assert_falls_back(&img, "block bitmap checksum");
    restore();
    run(
        "debugfs",
        &["-w", "-R", "feature needs_recovery", img.to_str().unwrap()],
    );
    assert_falls_back(&img, "journal needs recovery");
    restore();
    run(
        "debugfs",
        &["-w", "-R", "ssv state 3", img.to_str().unwrap()],
    );
    assert_falls_back(&img, "having errors");
    restore();
    // A partition shorter than the filesystem (a truncated image, a wrong table).
    let short = &pristine[..pristine.len() / 2];
    let e = fsmap::ext4::probe(&short).unwrap().unwrap_err();
    assert!(e.to_string().contains("do not fit"), "{e}");
}

#[test]
fn a_damaged_bitmap_without_checksums_falls_back() {
    let Some((_dir, img, _)) = fixture("damaged_bitmap", "mkfs.ext2", &["-b", "1024"], 32) else {
        return;
    };
    assert!(probe(&img).is_ok());
    // A bit flipped near the end of group 0: the free count disagrees.
    let last = first_block_bitmap(&img) * 1024 + 8192 / 8 - 1;
    poke(&img, last, &[peek(&img, last, 1)[0] ^ 0x80]);
    assert_falls_back(&img, "free clusters");
}

#[test]
fn not_ext_is_none() {
    let zeros = vec![0u8; 1 << 16];
    assert!(fsmap::ext4::probe(&&zeros[..]).is_none());
    assert!(fsmap::ext4::probe(&&zeros[..100]).is_none());
}
