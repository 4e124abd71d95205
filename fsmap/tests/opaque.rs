//! Formats copied whole: LUKS1/2 made by cryptsetup, an LVM2 PV made by pvcreate on a
//! loop device, and MD RAID members (a 1.0 or 0.90 superblock at the end of a
//! partition that starts with an ext4 it mirrors must not be taken for that ext4).
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;

use common::*;

fn whole(img: &Path) -> (Option<String>, String) {
    let f = std::fs::File::open(img).unwrap();
    match fsmap::probe(&f) {
        fsmap::Verdict::Raw { what, why } => (what, why),
        fsmap::Verdict::Used(u) => panic!("{} taken as {}", img.display(), u.fs),
    }
}

#[test]
fn luks_is_copied_whole() {
    if !have("luks", "cryptsetup") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    std::fs::write(&key, b"not a secret").unwrap();
    for (ty, name) in [("luks1", "LUKS1"), ("luks2", "LUKS2")] {
        let img = dir.path().join(format!("{ty}.img"));
        blank(&img, 20);
        run(
            "cryptsetup",
            &[
                "luksFormat",
                "-q",
                "--type",
                ty,
                "--pbkdf",
                "pbkdf2",
                "--pbkdf-force-iterations",
                "1000",
                img.to_str().unwrap(),
                key.to_str().unwrap(),
            ],
        );
        let (what, why) = whole(&img);
        assert_eq!(what.as_deref(), Some(name));
        assert!(why.contains("encrypted"), "{why}");
    }
}

#[test]
fn lvm2_pv_is_copied_whole() {
    if !can_mount("lvm2_pv") || !have("lvm2_pv", "pvcreate") || !have("lvm2_pv", "losetup") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("pv.img");
    blank(&img, 16);
    // An ext4 signature left from before: the PV label wins.
    run("mkfs.ext4", &["-q", "-F", img.to_str().unwrap()]);
    let dev = run("losetup", &["-f", "--show", img.to_str().unwrap()]);
    let dev = dev.trim();
    let made = std::process::Command::new("pvcreate")
        .args([
            "-y",
            "-ff",
            "--config",
            "devices { filter=[\"a|.*|\"] } activation { udev_sync=0 udev_rules=0 }",
            dev,
        ])
        .output()
        .unwrap();
    run("losetup", &["-d", dev]);
    assert!(
        made.status.success(),
        "pvcreate: {}",
        String::from_utf8_lossy(&made.stderr)
    );
    let (what, why) = whole(&img);
    assert_eq!(what.as_deref(), Some("LVM2 PV"));
    assert!(why.contains("LVM physical volume"), "{why}");
}

/// The kernel here may have no MD driver (mdadm --create needs it), so the member is
/// an ext4 image with the superblock's magic and major version written where each
/// metadata version keeps it.
#[test]
fn an_md_member_with_its_superblock_at_the_end_is_not_its_ext4() {
    if !have("md_member", "mkfs.ext4") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("member.img");
    blank(&img, 16);
    run("mkfs.ext4", &["-q", "-F", img.to_str().unwrap()]);
    let pristine = std::fs::read(&img).unwrap();
    let len = pristine.len() as u64;
    assert!(matches!(
        fsmap::probe(&&pristine[..]),
        fsmap::Verdict::Used(_)
    ));
    let magic = 0xa92b_4efcu32.to_le_bytes();
    for (at, major, name) in [
        (((len / 512 - 16) & !7) * 512, 1u8, "md 1.0"),
        ((len & !0xFFFF) - 0x10000, 0, "md 0.90"),
    ] {
        std::fs::write(&img, &pristine).unwrap();
        poke(&img, at, &magic);
        poke(&img, at + 4, &[major, 0, 0, 0]);
        let (what, why) = whole(&img);
        assert!(what.as_deref().unwrap().contains(name), "{what:?}");
        assert!(why.contains("RAID member"), "{why}");
    }
}
