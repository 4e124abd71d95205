//! Disk listing against fake sysfs/proc/dev trees (tests/fixtures/laptop and
//! server), with partition tables written into the copied tree as sparse images.

#![allow(clippy::unwrap_used)]

mod inspect_support;

use std::path::Path;

use inspect_support::*;
use rescue::Root;
use rescue::disks::{self, Disk};

const NVME_SECTORS: u64 = 976_773_168;

fn laptop() -> (tempfile::TempDir, Root) {
    let (tmp, dir) = fixture_root("laptop");
    gpt_layout(
        512,
        NVME_SECTORS,
        "9d1f3c2a-4b5e-4f60-8a7b-1c2d3e4f5a6b",
        &[
            GptPart {
                type_guid: EFI,
                uuid: "a1b2c3d4-0001-4000-8000-000000000001",
                first: 2048,
                last: 1_050_623,
                name: "EFI system partition",
            },
            GptPart {
                type_guid: LINUX_FS,
                uuid: "a1b2c3d4-0002-4000-8000-000000000002",
                first: 1_050_624,
                last: 1_050_624 + 958_945_280 - 1,
                name: "root",
            },
            GptPart {
                type_guid: LINUX_SWAP,
                uuid: "a1b2c3d4-0003-4000-8000-000000000003",
                first: 959_995_904,
                last: 959_995_904 + 16_777_216 - 1,
                name: "swap",
            },
        ],
    )
    .write(&dir.join("dev/nvme0n1"));
    (tmp, Root::new(dir))
}

fn server() -> (tempfile::TempDir, Root) {
    let (tmp, dir) = fixture_root("server");
    let dev = dir.join("dev");
    let big = 7_814_037_168u64 * 512;
    let sda = mbr_sector(
        0x5e7e_0001,
        &[
            (0xfd, 2048, 3_907_018_752),
            (0x8e, 3_907_020_800, 3_907_016_335),
        ],
    );
    write_image(&dev.join("sda"), big, &[(0, &sda)]);
    let sdb = mbr_sector(0x5e7e_0002, &[(0xfd, 2048, 3_907_018_752)]);
    write_image(&dev.join("sdb"), big, &[(0, &sdb)]);
    let sdc = mbr_sector(0x00c0_ffee, &[(0x0c, 2048, 61_339_648)]);
    write_image(&dev.join("sdc"), 61_341_696 * 512, &[(0, &sdc)]);
    (tmp, Root::new(dir))
}

fn names(d: &[Disk]) -> Vec<&str> {
    d.iter().map(|d| d.name.as_str()).collect()
}

#[test]
fn laptop_nvme_with_gpt() {
    let (_t, root) = laptop();
    let list = disks::list(&root, false).unwrap();
    assert_eq!(names(&list), ["nvme0n1"]);
    let d = &list[0];
    assert_eq!(d.path, "/dev/nvme0n1");
    assert_eq!((d.major, d.minor), (259, 0));
    assert_eq!(d.size_bytes(), NVME_SECTORS * 512);
    assert_eq!(d.transport, "nvme");
    assert_eq!(d.model.as_deref(), Some("Samsung SSD 980 PRO 500GB"));
    assert_eq!(d.serial.as_deref(), Some("S5GYNX0R123456K"));
    assert_eq!(d.wwn.as_deref(), Some("eui.002538b211b4a1c2"));
    assert_eq!((d.logical_block_size, d.physical_block_size), (512, 512));
    assert!(!d.rotational && !d.removable && !d.read_only);
    assert_eq!(d.table.as_deref(), Some("gpt"));
    assert!(d.table_warnings.is_empty(), "{:?}", d.table_warnings);
    let p: Vec<_> = d
        .partitions
        .iter()
        .map(|p| {
            (
                p.name.as_str(),
                p.type_name.as_deref(),
                p.label.as_deref(),
                p.mounts.clone(),
                p.swap,
            )
        })
        .collect();
    assert_eq!(
        p,
        vec![
            (
                "nvme0n1p1",
                Some("EFI System"),
                Some("EFI system partition"),
                vec!["/boot/efi".to_string()],
                false
            ),
            (
                "nvme0n1p2",
                Some("Linux filesystem"),
                Some("root"),
                vec!["/".to_string()],
                false
            ),
            ("nvme0n1p3", Some("Linux swap"), Some("swap"), vec![], true),
        ]
    );
    assert_eq!(d.partitions[1].start_bytes, 1_050_624 * 512);
    assert_eq!(
        d.partitions[1].uuid.as_deref(),
        Some("a1b2c3d4-0002-4000-8000-000000000002")
    );
    assert_eq!(
        d.busy_reason().as_deref(),
        Some(
            "nvme0n1p1 is mounted on /boot/efi; nvme0n1p2 is mounted on /; nvme0n1p3 is active swap"
        )
    );

    expect("laptop", "expected-disks.txt", &disks::render_table(&list));
    let json = serde_json::to_string_pretty(&list).unwrap() + "\n";
    expect("laptop", "expected-disks.json", &json);
    let back: Vec<Disk> = serde_json::from_str(&json).unwrap();
    assert_eq!(back, list);
}

#[test]
fn laptop_without_readable_table_still_lists() {
    // The fixture as committed has no /dev/nvme0n1 image.
    let root = Root::new(fixtures().join("laptop"));
    let list = disks::list(&root, false).unwrap();
    assert_eq!(list[0].partitions.len(), 3);
    assert_eq!(list[0].table, None);
    assert_eq!(list[0].partitions[0].type_name, None);
    assert!(list[0].is_busy());
}

#[test]
fn find_accepts_names_paths_and_links() {
    let (_t, root) = laptop();
    for spec in [
        "nvme0n1",
        " nvme0n1 ",
        "/dev/nvme0n1",
        "/dev/disk/by-id/nvme-Samsung_SSD_980_PRO_500GB_S5GYNX0R123456K",
        "/sys/block/nvme0n1",
    ] {
        let d = disks::find(&root, spec).unwrap_or_else(|e| panic!("{spec}: {e:#}"));
        assert_eq!(d.name, "nvme0n1");
        assert_eq!(d.partitions.len(), 3);
    }
}

#[test]
fn find_explains_what_is_wrong() {
    let (_t, root) = laptop();
    let err = |spec: &str| format!("{:#}", disks::find(&root, spec).unwrap_err());
    let e = err("sda");
    assert!(e.contains("\"sda\"") && e.contains("rescue disks"), "{e}");
    let e = err("/dev/disk/by-id/nvme-Samsung_SSD_980_PRO_500GB_S5GYNX0R123456K-part2");
    assert!(
        e.contains("partition nvme0n1p2 of disk nvme0n1") && e.contains("/dev/nvme0n1"),
        "{e}"
    );
    let e = err("nvme0n1p2");
    assert!(e.contains("partition"), "{e}");
    let e = err("/dev/disk/by-uuid/3f1c2a7e-5d44-4c1b-9a0e-8e6f2b1d7c55");
    assert!(e.contains("partition nvme0n1p2"), "{e}");
    for spec in [
        "",
        "/home/me/disk.img",
        "../nvme0n1",
        "/dev/disk/by-id",
        "..",
    ] {
        let e = err(spec);
        assert!(e.contains("rescue disks"), "{spec}: {e}");
    }
}

#[test]
fn server_hides_virtual_and_stacked_devices() {
    let (_t, root) = server();
    let list = disks::list(&root, false).unwrap();
    assert_eq!(names(&list), ["sda", "sdb", "sdc"]);
    let sda = &list[0];
    assert_eq!(sda.transport, "sata");
    assert_eq!(sda.vendor.as_deref(), Some("ATA"));
    assert_eq!(sda.serial.as_deref(), Some("ZC1A2B3C"));
    assert_eq!(sda.wwn.as_deref(), Some("naa.5000c500a1b2c300"));
    assert!(sda.rotational);
    assert_eq!(
        (sda.logical_block_size, sda.physical_block_size),
        (512, 4096)
    );
    assert_eq!(sda.table.as_deref(), Some("dos"));
    assert_eq!(sda.disk_guid.as_deref(), Some("5e7e0001"));
    assert_eq!(
        sda.partitions[0].type_name.as_deref(),
        Some("Linux raid autodetect")
    );
    assert_eq!(sda.partitions[1].uuid.as_deref(), Some("5e7e0001-02"));
    assert_eq!(
        sda.busy_reason().as_deref(),
        Some(
            "sda1 is held by md0 (md RAID raid1, mounted on /); \
             sda2 is held by dm-0 (device mapper vg0-srv, mounted on /srv)"
        )
    );
    assert_eq!(
        list[1].busy_reason().as_deref(),
        Some("sdb1 is held by md0 (md RAID raid1, mounted on /)")
    );
    let sdc = &list[2];
    assert_eq!(sdc.transport, "usb");
    assert!(sdc.removable);
    assert_eq!(sdc.serial.as_deref(), Some("4C530001230607112345"));
    assert_eq!(sdc.model.as_deref(), Some("Ultra Fit"));
    assert_eq!(sdc.busy_reason(), None);
    assert_eq!(
        sdc.partitions[0].type_name.as_deref(),
        Some("W95 FAT32 (LBA)")
    );
    expect("server", "expected-disks.txt", &disks::render_table(&list));
}

#[test]
fn server_all_shows_everything() {
    let (_t, root) = server();
    let list = disks::list(&root, true).unwrap();
    assert_eq!(
        names(&list),
        ["dm-0", "loop0", "md0", "sda", "sdb", "sdc", "sr0", "zram0"]
    );
    let by = |n: &str| list.iter().find(|d| d.name == n).unwrap();
    assert_eq!(by("loop0").mounts, ["/snap/core/1234"]);
    assert_eq!(by("loop0").transport, "virtual");
    assert_eq!(by("md0").mounts, ["/"]);
    assert_eq!(by("dm-0").mounts, ["/srv"]);
    assert!(by("zram0").swap);
    assert_eq!(
        by("zram0").busy_reason().as_deref(),
        Some("zram0 is active swap")
    );
    assert_eq!(by("sr0").transport, "sata");
    assert_eq!(by("sr0").size_bytes(), 0);
    expect(
        "server",
        "expected-disks-all.txt",
        &disks::render_table(&list),
    );
    // A hidden device can still be named explicitly.
    assert_eq!(
        disks::find(&root, "/dev/mapper/vg0-srv").unwrap().name,
        "dm-0"
    );
    assert_eq!(disks::find(&root, "zram0").unwrap().name, "zram0");
    let e = format!(
        "{:#}",
        disks::find(
            &root,
            "/dev/disk/by-id/usb-SanDisk_Ultra_Fit_4C530001230607112345-0:0-part1"
        )
        .unwrap_err()
    );
    assert!(e.contains("partition sdc1 of disk sdc"), "{e}");
}

#[test]
fn missing_sysfs_is_a_clear_error() {
    let t = tempfile::tempdir().unwrap();
    let e = format!(
        "{:#}",
        disks::list(&Root::new(t.path()), false).unwrap_err()
    );
    assert!(e.starts_with("reading /sys/block"), "{e}");
    assert!(disks::render_table(&[]).contains("no disks"));
}

#[test]
fn odd_sysfs_values_do_not_panic() {
    let t = tempfile::tempdir().unwrap();
    let b = t.path().join("sys/block/sdz");
    std::fs::create_dir_all(b.join("sdz1")).unwrap();
    std::fs::create_dir_all(b.join("queue")).unwrap();
    let put = |p: &str, v: &[u8]| std::fs::write(b.join(p), v).unwrap();
    put("size", b"18446744073709551615\n");
    put("dev", b"garbage");
    put("queue/logical_block_size", b"99999999999");
    put("sdz1/partition", b"-1");
    put("ro", b"\xff\xfe");
    std::fs::create_dir_all(t.path().join("dev")).unwrap();
    std::fs::write(t.path().join("dev/sdz"), b"short").unwrap();
    let root = Root::new(t.path());
    let list = disks::list(&root, true).unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].logical_block_size, 512);
    assert!(list[0].partitions.is_empty());
    // No /proc here: the disk must not pass for unused.
    let why = list[0].busy_reason().unwrap();
    assert!(
        why.starts_with("cannot tell whether sdz is in use: reading /proc/self/mountinfo"),
        "{why}"
    );
    let _ = disks::render_table(&list);
    let _ = Path::new("/");
}

#[test]
fn damaged_table_is_reported() {
    let (_t, dir) = fixture_root("laptop");
    let mut g = gpt_layout(
        512,
        NVME_SECTORS,
        "9d1f3c2a-4b5e-4f60-8a7b-1c2d3e4f5a6b",
        &[GptPart {
            type_guid: EFI,
            uuid: "a1b2c3d4-0001-4000-8000-000000000001",
            first: 2048,
            last: 1_050_623,
            name: "EFI",
        }],
    );
    g.primary_header[16] ^= 1;
    g.backup_header[16] ^= 1;
    g.write(&dir.join("dev/nvme0n1"));
    let list = disks::list(&Root::new(&dir), false).unwrap();
    assert_eq!(
        list[0].partitions[0].type_name.as_deref(),
        Some("EFI System")
    );
    let text = disks::render_table(&list);
    assert!(
        text.contains("note: nvme0n1: GPT header CRC32 is invalid"),
        "{text}"
    );
}
