//! Partition table reading on generated GPT and MBR images, including damaged and
//! hostile ones (which must give an error or a partial table, never a panic).

#![allow(clippy::unwrap_used)]

mod inspect_support;

use std::path::Path;

use inspect_support::*;
use rescue::system::partitions::{PartitionTable, read_table};

const DISK_GUID: &str = "5b1e3ba8-9f2a-4c1d-8e7f-0a1b2c3d4e5f";

fn sample(sector: u32, total: u64) -> GptLayout {
    gpt_layout(
        sector,
        total,
        DISK_GUID,
        &[
            GptPart {
                type_guid: EFI,
                uuid: "11111111-2222-3333-4444-555555555555",
                first: 34,
                last: 99,
                name: "EFI system partition",
            },
            GptPart {
                type_guid: LINUX_FS,
                uuid: "0fc63daf-0000-0000-0000-000000000002",
                first: 100,
                last: 179,
                name: "root é",
            },
            GptPart {
                type_guid: "01234567-89ab-cdef-0123-456789abcdef",
                uuid: "00000000-0000-0000-0000-000000000003",
                first: 180,
                last: 189,
                name: "",
            },
        ],
    )
}

fn read(path: &Path) -> Option<PartitionTable> {
    read_table(path, 512).unwrap()
}

#[test]
fn reads_a_valid_gpt() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk");
    sample(512, 256).write(&img);
    let t = read(&img).unwrap();
    assert_eq!(t.kind, "gpt");
    assert_eq!(t.disk_guid.as_deref(), Some(DISK_GUID));
    assert!(t.warnings.is_empty(), "{:?}", t.warnings);
    assert_eq!(t.entries.len(), 3);
    let e = &t.entries[0];
    assert_eq!(
        (e.number, e.start_bytes, e.size_bytes),
        (1, 34 * 512, 66 * 512)
    );
    assert_eq!(e.type_name, "EFI System");
    assert_eq!(e.type_id, EFI);
    assert_eq!(e.name.as_deref(), Some("EFI system partition"));
    assert_eq!(
        e.uuid.as_deref(),
        Some("11111111-2222-3333-4444-555555555555")
    );
    assert_eq!(t.entries[1].type_name, "Linux filesystem");
    assert_eq!(t.entries[1].name.as_deref(), Some("root é"));
    assert_eq!(t.entries[2].type_name, "unknown");
    assert_eq!(t.entries[2].name, None);
}

#[test]
fn reads_a_4k_gpt_even_when_told_512() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk");
    sample(4096, 256).write(&img);
    let t = read_table(&img, 4096).unwrap().unwrap();
    assert!(t.warnings.is_empty());
    assert_eq!(t.entries[0].start_bytes, 34 * 4096);
    let t = read(&img).unwrap();
    assert_eq!(t.entries[0].start_bytes, 34 * 4096);
    assert!(
        t.warnings[0].contains("4096-byte sectors"),
        "{:?}",
        t.warnings
    );
}

#[test]
fn bad_primary_header_crc_uses_the_backup() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk");
    let mut g = sample(512, 256);
    g.primary_header[16] ^= 0xff;
    g.write(&img);
    let t = read(&img).unwrap();
    assert_eq!(t.entries.len(), 3);
    assert!(
        t.warnings.iter().any(|w| w.contains("backup")),
        "{:?}",
        t.warnings
    );

    // Both headers bad: still a (partial) answer, clearly flagged.
    g.backup_header[16] ^= 0xff;
    g.write(&img);
    let t = read(&img).unwrap();
    assert!(
        t.warnings.iter().any(|w| w.contains("CRC32 is invalid")),
        "{:?}",
        t.warnings
    );
}

#[test]
fn bad_entry_array_crc_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk");
    let mut g = sample(512, 256);
    g.entries[32] ^= 1;
    g.write(&img);
    let t = read(&img).unwrap();
    assert!(
        t.warnings.iter().any(|w| w.contains("entry array CRC32")),
        "{:?}",
        t.warnings
    );
}

fn with_header(edit: impl Fn(&mut Vec<u8>)) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk");
    let mut g = sample(512, 256);
    edit(&mut g.primary_header);
    fix_header_crc(&mut g.primary_header);
    g.backup_header = vec![0; 512];
    g.write(&img);
    (dir, img)
}

#[test]
fn huge_entry_counts_are_bounded() {
    let (_d, img) = with_header(|h| h[80..84].copy_from_slice(&u32::MAX.to_le_bytes()));
    let t = read(&img).unwrap();
    assert_eq!(t.entries.len(), 3);
    assert!(
        t.warnings.iter().any(|w| w.contains("4294967295")),
        "{:?}",
        t.warnings
    );
}

#[test]
fn hostile_header_fields_give_errors() {
    for edit in [
        |h: &mut Vec<u8>| h[84..88].copy_from_slice(&u32::MAX.to_le_bytes()),
        |h: &mut Vec<u8>| h[84..88].copy_from_slice(&0u32.to_le_bytes()),
        |h: &mut Vec<u8>| h[84..88].copy_from_slice(&129u32.to_le_bytes()),
        |h: &mut Vec<u8>| h[72..80].copy_from_slice(&u64::MAX.to_le_bytes()),
        |h: &mut Vec<u8>| h[72..80].copy_from_slice(&(1u64 << 55).to_le_bytes()),
        |h: &mut Vec<u8>| h[72..80].copy_from_slice(&0u64.to_le_bytes()),
    ] {
        let (_d, img) = with_header(edit);
        assert!(read_table(&img, 512).is_err());
    }
    // Header size larger than the sector: CRC cannot be checked, so it is flagged.
    let (_d, img) = with_header(|_| {});
    let mut g = sample(512, 256);
    g.primary_header[12..16].copy_from_slice(&100_000u32.to_le_bytes());
    g.backup_header = vec![0; 512];
    g.write(&img);
    assert!(!read(&img).unwrap().warnings.is_empty());
}

#[test]
fn hostile_entries_are_skipped_or_flagged() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk");
    let g = gpt_layout(
        512,
        256,
        DISK_GUID,
        &[
            GptPart {
                type_guid: LINUX_FS,
                uuid: DISK_GUID,
                first: 100,
                last: 50,
                name: "backwards",
            },
            GptPart {
                type_guid: LINUX_FS,
                uuid: DISK_GUID,
                first: u64::MAX - 1,
                last: u64::MAX,
                name: "overflow",
            },
            GptPart {
                type_guid: LINUX_FS,
                uuid: DISK_GUID,
                first: 0,
                last: u64::MAX,
                name: "all",
            },
            GptPart {
                type_guid: LINUX_FS,
                uuid: DISK_GUID,
                first: 200,
                last: 100_000,
                name: "beyond",
            },
        ],
    );
    g.write(&img);
    let t = read(&img).unwrap();
    assert_eq!(t.entries.len(), 1);
    assert_eq!(t.entries[0].name.as_deref(), Some("beyond"));
    assert_eq!(t.warnings.len(), 4, "{:?}", t.warnings);
}

#[test]
fn truncated_images_do_not_panic() {
    let dir = tempfile::tempdir().unwrap();
    let full = dir.path().join("full");
    sample(512, 256).write(&full);
    let bytes = std::fs::read(&full).unwrap();
    let img = dir.path().join("cut");
    for len in [
        0, 1, 100, 511, 512, 513, 600, 1024, 1100, 2048, 5000, 17408, 20000,
    ] {
        std::fs::write(&img, &bytes[..len]).unwrap();
        if let Ok(Some(t)) = read_table(&img, 512) {
            assert!(!t.warnings.is_empty() || t.kind == "dos" || len > 17408);
        }
    }
    assert!(read_table(&dir.path().join("missing"), 512).is_err());
}

#[test]
fn random_damage_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk");
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..400 {
        let mut g = sample(512, 64);
        let n = 1 + next() % 8;
        for _ in 0..n {
            let r = next();
            match r % 3 {
                0 => {
                    let i = (next() % 92) as usize;
                    g.primary_header[i] = next() as u8;
                    if round % 2 == 0 {
                        fix_header_crc(&mut g.primary_header);
                    }
                }
                1 => {
                    let i = (next() % g.entries.len() as u64) as usize;
                    g.entries[i] = next() as u8;
                }
                _ => {
                    let i = 446 + (next() % 66) as usize;
                    g.mbr[i] = next() as u8;
                }
            }
        }
        g.write(&img);
        let _ = read_table(&img, 512);
    }
}

#[test]
fn reads_mbr_with_logical_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk");
    let sig = 0x1234_abcd;
    let mbr = mbr_sector(
        sig,
        &[(0x83, 2048, 2048), (0x05, 4096, 8192), (0x0c, 12288, 1024)],
    );
    // EBR chain: data entries are relative to their EBR, links to the extended start.
    let ebr1 = mbr_sector(0, &[(0x82, 2048, 1024), (0x05, 4096, 4096)]);
    let ebr2 = mbr_sector(0, &[(0x8e, 2048, 2048)]);
    write_image(
        &img,
        16 << 20,
        &[(0, &mbr), (4096 * 512, &ebr1), (8192 * 512, &ebr2)],
    );
    let t = read(&img).unwrap();
    assert_eq!(t.kind, "dos");
    assert_eq!(t.disk_guid.as_deref(), Some("1234abcd"));
    assert!(t.warnings.is_empty(), "{:?}", t.warnings);
    let got: Vec<_> = t
        .entries
        .iter()
        .map(|e| {
            (
                e.number,
                e.start_bytes / 512,
                e.size_bytes / 512,
                e.type_name.as_str(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (1, 2048, 2048, "Linux"),
            (2, 4096, 8192, "Extended"),
            (3, 12288, 1024, "W95 FAT32 (LBA)"),
            (5, 6144, 1024, "Linux swap / Solaris"),
            (6, 10240, 2048, "Linux LVM"),
        ]
    );
    assert_eq!(t.entries[3].uuid.as_deref(), Some("1234abcd-05"));
    assert_eq!(t.entries[0].type_id, "0x83");
}

#[test]
fn ebr_loops_and_bad_links_stop() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk");
    let mbr = mbr_sector(1, &[(0x0f, 2048, 8192)]);
    // Each EBR points back at the first one.
    let ebr = mbr_sector(0, &[(0x83, 1, 10), (0x05, 0, 100)]);
    write_image(&img, 8 << 20, &[(0, &mbr), (2048 * 512, &ebr)]);
    let t = read(&img).unwrap();
    assert_eq!(t.entries.len(), 2);
    assert!(
        t.warnings.iter().any(|w| w.contains("loops")),
        "{:?}",
        t.warnings
    );

    // A link far beyond the disk.
    let ebr = mbr_sector(0, &[(0x83, 1, 10), (0x05, u32::MAX, 100)]);
    write_image(&img, 8 << 20, &[(0, &mbr), (2048 * 512, &ebr)]);
    let t = read(&img).unwrap();
    assert_eq!(t.entries.len(), 2);
    assert!(
        t.warnings.iter().any(|w| w.contains("beyond")),
        "{:?}",
        t.warnings
    );

    // A long but valid-looking chain is cut off.
    let mut writes = vec![(0u64, mbr.clone())];
    for i in 0..300u32 {
        writes.push((
            ((2048 + i * 2) as u64) * 512,
            mbr_sector(0, &[(0x83, 1, 1), (0x05, (i + 1) * 2, 2)]),
        ));
    }
    let w: Vec<(u64, &[u8])> = writes.iter().map(|(o, b)| (*o, b.as_slice())).collect();
    write_image(&img, 8 << 20, &w);
    let t = read(&img).unwrap();
    assert!(t.entries.len() <= 1 + 256);
    assert!(
        t.warnings.iter().any(|w| w.contains("more than")),
        "{:?}",
        t.warnings
    );
}

#[test]
fn no_table_is_none() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk");
    write_image(&img, 1 << 20, &[]);
    assert!(read(&img).is_none());
    // A FAT filesystem directly on the device.
    let mut vbr = vec![0u8; 512];
    vbr[0..3].copy_from_slice(&[0xeb, 0x58, 0x90]);
    vbr[3..11].copy_from_slice(b"mkfs.fat");
    vbr[82..90].copy_from_slice(b"FAT32   ");
    vbr[510] = 0x55;
    vbr[511] = 0xaa;
    write_image(&img, 1 << 20, &[(0, &vbr)]);
    assert!(read(&img).is_none());
    // Protective MBR with no GPT behind it.
    write_image(&img, 1 << 20, &[(0, &mbr_sector(0, &[(0xee, 1, 2047)]))]);
    let t = read(&img).unwrap();
    assert_eq!(t.kind, "dos");
    assert!(t.warnings[0].contains("no GPT"));
}
