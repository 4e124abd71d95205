//! Disk listing against fake sysfs/proc/dev trees (tests/fixtures/laptop and
//! server), with partition tables written into the copied tree as sparse images and
//! the mkfs-made filesystems of tests/fixtures/fs written into their partitions.

#![allow(clippy::unwrap_used)]

mod common;
mod inspect_support;

use std::path::Path;

use inspect_support::*;
use rescue::Root;
use rescue::system::disks::{self, Disk};
use rescue::system::fsprobe::{self, FsInfo};

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
    let nvme = dir.join("dev/nvme0n1");
    put_fs(&nvme, 2048 * 512, "fat32");
    put_fs(&nvme, 1_050_624 * 512, "ext4");
    put_fs(&nvme, 959_995_904 * 512, "swap");
    (tmp, Root::new(dir))
}

const MD_UUID: [u8; 16] = *b"\x5e\x7e\xa1\x1d\x00\x00\x40\x00\x80\x00\x00\x00\x00\x00\x00\x01";

/// An md RAID member with a version 1.2 superblock (4 KiB in), as mdadm writes it.
fn md_member() -> Vec<u8> {
    let mut b = vec![0u8; 4096 + 256];
    b[4096..4100].copy_from_slice(&0xa92b_4efcu32.to_le_bytes());
    b[4100..4104].copy_from_slice(&1u32.to_le_bytes());
    b[4096 + 16..4096 + 32].copy_from_slice(&MD_UUID);
    b[4096 + 32..4096 + 40].copy_from_slice(b"server:0");
    b
}

/// An LVM2 physical volume label in sector 1, as pvcreate writes it.
fn lvm_pv() -> Vec<u8> {
    let mut b = vec![0u8; 1024];
    b[512..520].copy_from_slice(b"LABELONE");
    b[520..528].copy_from_slice(&1u64.to_le_bytes());
    b[532..536].copy_from_slice(&32u32.to_le_bytes());
    b[536..544].copy_from_slice(b"LVM2 001");
    b[544..576].copy_from_slice(b"Xq3vTb0kLm9sPz7RcW2nYd4FgH6jKe8A");
    b
}

/// sdd: 4096-byte logical sectors; sysfs still counts its size in 512-byte units.
const SDD_SECTORS: u64 = 1_953_525_168 / 8;

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
    put_bytes(&dev.join("sda"), 2048 * 512, &md_member());
    put_bytes(&dev.join("sda"), 3_907_020_800 * 512, &lvm_pv());
    put_bytes(&dev.join("sdb"), 2048 * 512, &md_member());
    put_fs(&dev.join("sdc"), 2048 * 512, "fat32-usb");
    let part = |n: u64, first: u64, sectors: u64, type_guid, name| GptPart {
        type_guid,
        uuid: [
            "",
            "d4e5f6a7-0001-4000-8000-0000000000d1",
            "d4e5f6a7-0002-4000-8000-0000000000d2",
            "d4e5f6a7-0003-4000-8000-0000000000d3",
            "d4e5f6a7-0004-4000-8000-0000000000d4",
        ][n as usize],
        first,
        last: first + sectors - 1,
        name,
    };
    gpt_layout(
        4096,
        SDD_SECTORS,
        "d4e5f6a7-0000-4000-8000-0000000000dd",
        &[
            part(1, 256, 65_536, EFI, "boot"),
            part(2, 65_792, 26_214_400, MS_DATA, "Basic data partition"),
            part(3, 26_280_192, 131_072_000, LINUX_FS, "pool"),
            part(4, 157_352_192, 83_886_080, LINUX_FS, "vault"),
        ],
    )
    .write(&dev.join("sdd"));
    for (at, fs) in [
        (256, "fat16-4k"),
        (65_792, "ntfs"),
        (26_280_192, "btrfs"),
        (157_352_192, "luks"),
    ] {
        put_fs(&dev.join("sdd"), at * 4096, fs);
    }
    write_image(&dev.join("sde"), 62_656_512 * 512, &[]);
    put_fs(&dev.join("sde"), 0, "exfat");
    put_fs(&dev.join("md0"), 0, "ext4");
    put_fs(&dev.join("dm-0"), 0, "xfs");
    put_bytes(&dev.join("loop0"), 0, b"hsqs");
    (tmp, Root::new(dir))
}

fn fs(fstype: &str, label: Option<&str>, uuid: Option<&str>) -> Option<FsInfo> {
    Some(FsInfo {
        fstype: fstype.into(),
        label: label.map(str::to_string),
        uuid: uuid.map(str::to_string),
    })
}

fn part_fs(d: &Disk) -> Vec<Option<FsInfo>> {
    d.partitions.iter().map(|p| p.filesystem.clone()).collect()
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
                p.partname.as_deref(),
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
    assert_eq!(d.partitions[1].start_sector, 1_050_624);
    assert_eq!(d.partitions[1].sectors, 958_945_280);
    assert_eq!(
        d.partitions[1].partuuid.as_deref(),
        Some("a1b2c3d4-0002-4000-8000-000000000002")
    );
    // Read from the superblocks mkfs wrote, not from the GPT names.
    assert_eq!(
        part_fs(d),
        [
            fs("vfat", Some("EFI"), Some("1234-ABCD")),
            fs(
                "ext4",
                Some("rootfs"),
                Some("3f1c2a7e-5d44-4c1b-9a0e-8e6f2b1d7c55")
            ),
            fs(
                "swap",
                Some("laptop-swap"),
                Some("0a1b2c3d-0000-4000-8000-00000000abcd")
            ),
        ]
    );
    assert_eq!(
        d.filesystem, None,
        "a partitioned disk holds no filesystem itself"
    );
    assert_eq!(
        (d.sectors, d.size_bytes),
        (NVME_SECTORS, NVME_SECTORS * 512)
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
    assert_eq!(names(&list), ["sda", "sdb", "sdc", "sdd", "sde"]);
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
    assert_eq!(sda.partitions[1].partuuid.as_deref(), Some("5e7e0001-02"));
    let md = fs(
        "linux_raid_member",
        Some("server:0"),
        Some("5e7ea11d-0000-4000-8000-000000000001"),
    );
    assert_eq!(
        part_fs(sda),
        [
            md.clone(),
            fs(
                "LVM2_member",
                None,
                Some("Xq3vTb-0kLm-9sPz-7RcW-2nYd-4FgH-6jKe8A")
            )
        ]
    );
    assert_eq!(part_fs(&list[1]), [md]);
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
    assert_eq!(
        part_fs(sdc),
        [fs("vfat", Some("RESCUE"), Some("4C53-0001"))]
    );
    // A stick formatted whole: the filesystem is the disk's own.
    let sde = &list[4];
    assert!(sde.partitions.is_empty() && sde.table.is_none());
    assert_eq!(
        sde.filesystem,
        fs("exfat", Some("STICK"), Some("1A2B-3C4D"))
    );
    expect("server", "expected-disks.txt", &disks::render_table(&list));
}

#[test]
fn sector_counts_are_in_the_disks_own_sectors() {
    let (_t, root) = server();
    let sdd = disks::find(&root, "sdd").unwrap();
    assert_eq!(sdd.logical_block_size, 4096);
    assert_eq!(sdd.sectors, SDD_SECTORS);
    assert_eq!(sdd.size_bytes, SDD_SECTORS * 4096);
    assert_eq!(sdd.size_bytes(), 1_953_525_168 * 512);
    assert_eq!(sdd.table.as_deref(), Some("gpt"));
    assert!(sdd.table_warnings.is_empty(), "{:?}", sdd.table_warnings);
    let p: Vec<_> = sdd
        .partitions
        .iter()
        .map(|p| {
            (
                p.start_sector,
                p.sectors,
                p.start_bytes,
                p.partname.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        p,
        [
            (256, 65_536, 256 * 4096, Some("boot")),
            (
                65_792,
                26_214_400,
                65_792 * 4096,
                Some("Basic data partition")
            ),
            (26_280_192, 131_072_000, 26_280_192 * 4096, Some("pool")),
            (157_352_192, 83_886_080, 157_352_192 * 4096, Some("vault")),
        ]
    );
    assert_eq!(
        part_fs(&sdd),
        [
            fs("vfat", Some("BOOT4K"), Some("0BAD-CAFE")),
            fs("ntfs", Some("Data"), Some("0123456789ABCDEF")),
            fs(
                "btrfs",
                Some("pool"),
                Some("6b7c8d9e-2222-4333-8444-a55566667777")
            ),
            fs(
                "crypto_LUKS",
                Some("cryptdata"),
                Some("7c8d9eaf-3333-4444-8555-b66677778888")
            ),
        ]
    );
}

/// The real superblocks of fixtures/fs, cut short anywhere or with bytes overwritten
/// at random: recognised less or not at all, never a panic.
#[test]
fn real_superblocks_truncated_or_corrupted_do_not_panic() {
    let noise = common::random_bytes(1 << 20, 0x2545_f491_4f6c_dd1d);
    let mut words = noise
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap()) as usize)
        .cycle();
    let mut rnd = move || words.next().unwrap();
    for name in [
        "ext4", "fat32", "fat16-4k", "swap", "xfs", "btrfs", "ntfs", "exfat", "luks",
    ] {
        let runs = fs_image(name);
        let len = runs
            .iter()
            .map(|(o, b)| *o as usize + b.len())
            .max()
            .unwrap();
        let mut img = vec![0u8; len];
        for (o, b) in &runs {
            img[*o as usize..*o as usize + b.len()].copy_from_slice(b);
        }
        let whole = fsprobe::probe_bytes(&img).unwrap_or_else(|| panic!("{name}"));
        assert!(
            whole.label.is_some() && whole.uuid.is_some(),
            "{name}: {whole:?}"
        );
        for n in (0..len).step_by(61) {
            let _ = fsprobe::probe_bytes(&img[..n]);
        }
        for _ in 0..200 {
            let mut bad = img.clone();
            for _ in 0..1 + rnd() % 64 {
                let at = rnd() % len;
                bad[at] = rnd() as u8;
            }
            let _ = fsprobe::probe_bytes(&bad);
        }
    }
}

#[test]
fn server_all_shows_everything() {
    let (_t, root) = server();
    let list = disks::list(&root, true).unwrap();
    // loop1 is an unused loop device (0 B): not a disk, not even with --all.
    assert_eq!(
        names(&list),
        [
            "dm-0", "loop0", "md0", "sda", "sdb", "sdc", "sdd", "sde", "sr0", "zram0"
        ]
    );
    let by = |n: &str| list.iter().find(|d| d.name == n).unwrap();
    assert_eq!(by("loop0").mounts, ["/snap/core/1234"]);
    assert_eq!(by("loop0").transport, "virtual");
    assert_eq!(
        by("loop0").backing_file.as_deref(),
        Some("/var/lib/snapd/snaps/core_1234.snap")
    );
    assert_eq!(by("loop0").filesystem, fs("squashfs", None, None));
    assert_eq!(
        by("md0").filesystem,
        fs(
            "ext4",
            Some("rootfs"),
            Some("3f1c2a7e-5d44-4c1b-9a0e-8e6f2b1d7c55")
        )
    );
    assert_eq!(
        by("dm-0").filesystem,
        fs(
            "xfs",
            Some("srv"),
            Some("5a6b7c8d-1111-4222-8333-944455556666")
        )
    );
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
    let json = serde_json::to_string_pretty(&list).unwrap() + "\n";
    expect("server", "expected-disks-all.json", &json);
    let back: Vec<Disk> = serde_json::from_str(&json).unwrap();
    assert_eq!(back, list);
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

/// The laptop's NVMe disk with only its EFI partition, named `name`.
fn laptop_efi_only(name: &str) -> GptLayout {
    gpt_layout(
        512,
        NVME_SECTORS,
        "9d1f3c2a-4b5e-4f60-8a7b-1c2d3e4f5a6b",
        &[GptPart {
            type_guid: EFI,
            uuid: "a1b2c3d4-0001-4000-8000-000000000001",
            first: 2048,
            last: 1_050_623,
            name,
        }],
    )
}

/// Model, serial and GPT names come from the device: a hostile one must not drive the
/// terminal that shows `rescue disks`.
#[test]
fn hostile_device_strings_are_escaped_in_the_table() {
    let (_t, dir) = fixture_root("laptop");
    let nv = dir.join("sys/devices/pci0000:00/0000:00:1d.0/0000:3d:00.0/nvme/nvme0");
    std::fs::write(nv.join("model"), "Evil\x1b[2J\x1b]0;owned\x07").unwrap();
    laptop_efi_only("line\rforged").write(&dir.join("dev/nvme0n1"));
    let list = disks::list(&Root::new(&dir), false).unwrap();
    assert_eq!(
        list[0].partitions[0].partname.as_deref(),
        Some("line\rforged")
    );
    let text = disks::render_table(&list);
    assert!(
        !text.chars().any(|c| c.is_control() && c != '\n'),
        "{text:?}"
    );
    assert!(text.contains("Evil\\x1b[2J\\x1b]0;owned\\x07"), "{text}");
    assert!(text.contains("line\\rforged"), "{text}");
}

#[test]
fn damaged_table_is_reported() {
    let (_t, dir) = fixture_root("laptop");
    let mut g = laptop_efi_only("EFI");
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
