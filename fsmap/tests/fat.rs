//! FAT parser against images mkfs.vfat makes as FAT12, FAT16 and FAT32, filled with
//! files and a deleted one: the used ranges are the FAT's clusters in use plus the
//! reserved region, FATs and root directory; the copy of only those is clean and
//! identical (seen through mtools); damage falls back to an error.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};

use common::*;

/// A FAT image filled with mtools (this kernel may have no vfat driver): the file
/// to delete first, the tree, then the deletion.
fn fixture(test: &str, args: &[&str], mib: u64) -> Option<(tempfile::TempDir, PathBuf, Vec<u8>)> {
    if !have(test, "mkfs.vfat") || !have(test, "fsck.vfat") || !have(test, "mcopy") {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("fs.img");
    blank(&img, mib);
    let i = img.to_str().unwrap();
    let mut a = vec!["-n", "ESP"];
    a.extend_from_slice(args);
    a.push(i);
    run("mkfs.vfat", &a);
    let mut rng = Rng::new(mib);
    let gone = rng.bytes(((mib as usize) << 20) / 4);
    let src = tempfile::tempdir().unwrap();
    let deleted = src.path().join("deleted.bin");
    std::fs::write(&deleted, &gone).unwrap();
    run("mcopy", &["-i", i, deleted.to_str().unwrap(), "::/"]);
    std::fs::remove_file(&deleted).unwrap();
    write_tree(src.path(), &mut rng);
    for e in std::fs::read_dir(src.path()).unwrap() {
        run(
            "mcopy",
            &[
                "-s",
                "-m",
                "-i",
                i,
                e.unwrap().path().to_str().unwrap(),
                "::/",
            ],
        );
    }
    run("mdel", &["-i", i, "::/deleted.bin"]);
    Some((dir, img, gone))
}

fn probe(img: &Path) -> Result<fsmap::Usage, fsmap::Error> {
    let f = std::fs::File::open(img).unwrap();
    fsmap::fat::probe(&f).expect("recognised as FAT")
}

/// `fsck.vfat -n -v`'s count of clusters in use and the cluster size.
fn fsck_clusters(img: &Path) -> u64 {
    let out = run("fsck.vfat", &["-n", img.to_str().unwrap()]);
    // "ESP: 17 files, 1234/4085 clusters"
    let t = out.rsplit(" files, ").next().unwrap();
    t.split('/').next().unwrap().trim().parse().unwrap()
}

/// Where the clusters start: after the reserved sectors, the FATs and the root
/// directory region, from the boot sector.
fn data_start(img: &Path) -> u64 {
    let b = peek(img, 0, 512);
    let u16_at = |o: usize| u64::from(u16::from_le_bytes([b[o], b[o + 1]]));
    let fat = match u16_at(0x16) {
        0 => u64::from(u32::from_le_bytes([b[0x24], b[0x25], b[0x26], b[0x27]])),
        n => n,
    };
    let sector = u16_at(0x0B);
    (u16_at(0x0E) + u64::from(b[0x10]) * fat) * sector
        + (u16_at(0x11) * 32).div_ceil(sector) * sector
}

fn layout(test: &str, args: &[&str], mib: u64) {
    let Some((_dir, img, gone)) = fixture(test, args, mib) else {
        return;
    };
    let u = probe(&img).unwrap();
    assert_eq!((u.fs, u.label.as_deref()), ("vfat", Some("ESP")));
    let clusters = fsck_clusters(&img);
    let meta = data_start(&img);
    // Used: the region before the data, the clusters in use, the slack at the end
    // (less than a cluster: mkfs.vfat sizes the filesystem to the image).
    let expected = meta + clusters * u.block_size;
    assert!(
        u.used_bytes() >= expected && u.used_bytes() < expected + u.block_size,
        "used {} bytes: {meta} before the data, {clusters} clusters of {}",
        u.used_bytes(),
        u.block_size
    );
    check_copy(&img, &u.used, &["fsck.vfat", "-n"], &View::Mtools, &gone, 0);
}

#[test]
fn fat12() {
    layout("fat12", &["-F", "12", "-s", "8"], 12);
}

#[test]
fn fat16() {
    layout("fat16", &["-F", "16"], 32);
}

#[test]
fn fat32() {
    layout("fat32", &["-F", "32", "-s", "1"], 48);
}

#[test]
fn damaged_fat_falls_back() {
    let Some((_dir, img, _)) = fixture("damaged_fat", &["-F", "16"], 32) else {
        return;
    };
    let pristine = std::fs::read(&img).unwrap();
    assert!(probe(&img).is_ok());
    let reserved = u64::from(u16::from_le_bytes([pristine[0x0E], pristine[0x0F]])) * 512;
    let check = |what: &str| match probe(&img) {
        Err(e) => assert!(e.to_string().contains(what), "{e}"),
        Ok(_) => panic!("damage not noticed: {what}"),
    };
    // The media byte at the FAT's start.
    poke(&img, reserved, &[0x00]);
    check("media byte");
    std::fs::write(&img, &pristine).unwrap();
    // Cluster 5's entry pointing past the last cluster.
    poke(&img, reserved + 10, &[0xF0, 0xFF]);
    check("no such cluster");
    std::fs::write(&img, &pristine).unwrap();
    let short = &pristine[..pristine.len() / 2];
    let e = fsmap::fat::probe(&short).unwrap().unwrap_err();
    assert!(e.to_string().contains("does not fit"), "{e}");
}

#[test]
fn other_boot_sectors_are_not_fat() {
    let mut b = vec![0u8; 1 << 16];
    assert!(fsmap::fat::probe(&&b[..]).is_none());
    // An NTFS boot sector: no FATs, no FAT size.
    b[0] = 0xEB;
    b[3..11].copy_from_slice(b"NTFS    ");
    b[0x0B] = 0;
    b[0x0C] = 2;
    b[0x0D] = 8;
    b[0x15] = 0xF8;
    b[0x1FE] = 0x55;
    b[0x1FF] = 0xAA;
    assert!(fsmap::fat::probe(&&b[..]).is_none());
}
