//! Formats that are copied whole, recognised only to tell the technician what they
//! are: encrypted volumes (LUKS, BitLocker), containers whose content is not looked
//! into (LVM2 physical volumes, MD RAID members, bcache, ZFS pool members, Ceph
//! BlueStore), and filesystems no parser here reads (exFAT, HFS+, APFS, F2FS, ...).
//!
//! `identify` runs before every filesystem parser: an MD RAID 1 member with its
//! superblock at the end (metadata 0.90 or 1.0) starts with the filesystem it
//! mirrors, which must not be reduced to that filesystem's used blocks (the RAID
//! superblock and the other members' view would be lost), and a filesystem
//! signature left inside a LUKS or LVM header area is stale.

use crate::ReadAt;

const ENCRYPTED: &str = "encrypted: copied whole";
const LVM: &str = "LVM physical volume: copied whole (its logical volumes are not looked into)";
const RAID: &str = "RAID member: copied whole";
const CONTAINER: &str = "not parsed: copied whole";

/// Signatures at a fixed offset from the start: (offset, bytes, name, why).
const AT_START: &[(u64, &[u8], &str, &str)] = &[
    (0, b"LUKS\xba\xbe\x00\x01", "LUKS1", ENCRYPTED),
    (0, b"LUKS\xba\xbe\x00\x02", "LUKS2", ENCRYPTED),
    // LUKS2's second header copy, where a damaged first one leaves only it.
    (0x4000, b"SKUL\xba\xbe\x00\x02", "LUKS2", ENCRYPTED),
    (0x8000, b"SKUL\xba\xbe\x00\x02", "LUKS2", ENCRYPTED),
    (3, b"-FVE-FS-", "BitLocker", ENCRYPTED),
    (0, b"bluestore block device", "Ceph BlueStore", CONTAINER),
    (
        4096 + 24,
        b"\xc6\x85\x73\xf6\x4e\x1a\x45\xca\x82\x65\xf5\x7f\x48\xba\x6d\x81",
        "bcache",
        CONTAINER,
    ),
    (
        4096 + 24,
        b"\xc6\x85\x73\xf6\x66\xce\x90\xa9\xd9\x6a\x60\xcf\x80\x3d\xf7\xef",
        "bcachefs",
        CONTAINER,
    ),
    (3, b"EXFAT   ", "exFAT", CONTAINER),
    (1024, b"H+\x00\x04", "HFS+", CONTAINER),
    (1024, b"HX\x00\x05", "HFSX", CONTAINER),
    (32, b"NXSB", "APFS", CONTAINER),
    (1024, b"\x10\x20\xf5\xf2", "F2FS", CONTAINER),
    (0x10000 + 52, b"ReIsEr", "ReiserFS", CONTAINER),
    (0x8000, b"JFS1", "JFS", CONTAINER),
    (0, b"hsqs", "squashfs", CONTAINER),
    (0x8001, b"CD001", "ISO 9660", CONTAINER),
];

const MD_MAGIC: u32 = 0xa92b_4efc;
const ZFS_UBERBLOCK_MAGIC: u64 = 0x00ba_b10c;

/// What a partition is if it is copied whole whatever else it looks like, and why:
/// `("LUKS2", "encrypted: copied whole")`. `None` for everything else.
pub fn identify(dev: &dyn ReadAt) -> Option<(&'static str, &'static str)> {
    for &(at, magic, name, why) in AT_START {
        if peek(dev, at, magic.len()).is_some_and(|b| b == magic) {
            return Some((name, why));
        }
    }
    if lvm2(dev) {
        return Some(("LVM2 PV", LVM));
    }
    if let Some(name) = md(dev) {
        return Some((name, RAID));
    }
    if zfs(dev) {
        return Some(("ZFS member", CONTAINER));
    }
    None
}

fn peek(dev: &dyn ReadAt, offset: u64, len: usize) -> Option<Vec<u8>> {
    if offset.checked_add(len as u64)? > dev.len() {
        return None;
    }
    let mut b = vec![0u8; len];
    dev.read_exact_at(&mut b, offset).ok()?;
    Some(b)
}

fn u32_at(dev: &dyn ReadAt, offset: u64) -> Option<u32> {
    peek(dev, offset, 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// An LVM2 label: "LABELONE" in one of the first four sectors, type "LVM2 001".
fn lvm2(dev: &dyn ReadAt) -> bool {
    (0..4).any(|s| {
        peek(dev, s * 512, 32).is_some_and(|b| &b[..8] == b"LABELONE" && &b[24..32] == b"LVM2 001")
    })
}

/// An MD superblock: 1.1 at the start, 1.2 at 4 KiB, 1.0 near the end (8 KiB
/// before it, 4 KiB aligned), 0.90 in the last 64 KiB-aligned 64 KiB.
fn md(dev: &dyn ReadAt) -> Option<&'static str> {
    let len = dev.len();
    let sectors = len / 512;
    let v1 = [
        (0, "Linux RAID member (md 1.1)"),
        (4096, "Linux RAID member (md 1.2)"),
        (
            (sectors.saturating_sub(16) & !7) * 512,
            "Linux RAID member (md 1.0)",
        ),
    ];
    for (at, name) in v1 {
        if sectors >= 16 && u32_at(dev, at) == Some(MD_MAGIC) && u32_at(dev, at + 4) == Some(1) {
            return Some(name);
        }
    }
    if len >= 0x20000 {
        let at = (len & !0xFFFF) - 0x10000;
        // Written in the host's byte order: a big-endian system's reads swapped.
        let magic = u32_at(dev, at)?;
        let major = u32_at(dev, at + 4)?;
        if (magic == MD_MAGIC || magic == MD_MAGIC.swap_bytes()) && major == 0 {
            return Some("Linux RAID member (md 0.90)");
        }
    }
    None
}

/// A ZFS vdev label: an uberblock's magic in the uberblock ring (the second half of
/// the 256 KiB label) of the first or the third label (512 KiB before the end).
fn zfs(dev: &dyn ReadAt) -> bool {
    let len = dev.len();
    let labels = [Some(0), len.checked_sub(512 << 10)];
    labels.into_iter().flatten().any(|label| {
        peek(dev, label + (128 << 10), 128 << 10).is_some_and(|ring| {
            ring.chunks_exact(1024).any(|ub| {
                let m =
                    u64::from_le_bytes([ub[0], ub[1], ub[2], ub[3], ub[4], ub[5], ub[6], ub[7]]);
                m == ZFS_UBERBLOCK_MAGIC || m == ZFS_UBERBLOCK_MAGIC.swap_bytes()
            })
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md_superblocks_are_found_where_each_version_puts_them() {
        let mut d = vec![0u8; 1 << 20];
        assert_eq!(identify(&&d[..]), None);
        let at = ((d.len() / 512 - 16) & !7) * 512;
        d[at..at + 4].copy_from_slice(&MD_MAGIC.to_le_bytes());
        d[at + 4] = 1;
        assert_eq!(
            identify(&&d[..]).map(|x| x.0),
            Some("Linux RAID member (md 1.0)")
        );
        let mut d = vec![0u8; 1 << 20];
        let at = d.len() - 0x10000;
        d[at..at + 4].copy_from_slice(&MD_MAGIC.to_le_bytes());
        assert_eq!(
            identify(&&d[..]).map(|x| x.0),
            Some("Linux RAID member (md 0.90)")
        );
    }

    #[test]
    fn a_zfs_uberblock_names_a_pool_member() {
        let mut d = vec![0u8; 1 << 20];
        let at = (128 << 10) + 5 * 1024;
        d[at..at + 8].copy_from_slice(&ZFS_UBERBLOCK_MAGIC.to_le_bytes());
        assert_eq!(identify(&&d[..]), Some(("ZFS member", CONTAINER)));
    }

    #[test]
    fn tiny_partitions_are_nothing() {
        for n in [0, 1, 511, 4096, 70000] {
            assert_eq!(identify(&&vec![0u8; n][..]), None);
        }
    }
}
