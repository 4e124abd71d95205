//! Finding and mounting the image store named by `rescue.store=` (LABEL=, UUID= or
//! a /dev path). There is no udev in the initramfs, so /dev/disk/by-* links usually
//! do not exist: we read the filesystem superblocks ourselves (ext2/3/4, vfat,
//! exfat, xfs, btrfs) to find labels, UUIDs and the type to mount with.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::root::Root;

/// Where serve keeps images in PID-1 mode.
pub const STORE_MOUNT: &str = "/run/rescue/store";

/// What a superblock says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsInfo {
    /// Type for mount(2): ext4, vfat, exfat, xfs, btrfs.
    pub fstype: &'static str,
    pub label: Option<String>,
    /// In the usual textual form (blkid's).
    pub uuid: Option<String>,
}

/// A block device and its filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The device as seen in the root (`/dev/sdb1` mapped through `Root`).
    pub dev: PathBuf,
    /// The device's /dev name, e.g. `/dev/sdb1` (for messages and mount(2)).
    pub name: String,
    pub fs: FsInfo,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn uuid_text(b: &[u8]) -> Option<String> {
    if b.len() != 16 || b.iter().all(|&x| x == 0) {
        return None;
    }
    Some(format!(
        "{}-{}-{}-{}-{}",
        hex(&b[0..4]),
        hex(&b[4..6]),
        hex(&b[6..8]),
        hex(&b[8..10]),
        hex(&b[10..16])
    ))
}

/// A fixed-size, NUL- or space-padded label field.
fn label_text(b: &[u8]) -> Option<String> {
    let end = b.iter().position(|&x| x == 0).unwrap_or(b.len());
    let s = String::from_utf8_lossy(&b[..end]).trim_end().to_string();
    (!s.is_empty() && s != "NO NAME").then_some(s)
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

/// A vfat/exfat volume serial as blkid prints it ("ABCD-1234").
fn serial_text(b: &[u8], at: usize) -> String {
    format!("{:04X}-{:04X}", le16(b, at + 2), le16(b, at))
}

/// Bytes probed from the start of a device: enough for btrfs's superblock at 64 KiB.
pub const PROBE_LEN: usize = 65536 + 4096;

/// Identifies the filesystem in the first `PROBE_LEN` bytes of a device.
pub fn probe_bytes(b: &[u8]) -> Option<FsInfo> {
    // ext2/3/4: superblock at 1024, magic 0xEF53 at +0x38.
    if b.len() >= 2048 && le16(b, 1024 + 0x38) == 0xEF53 {
        return Some(FsInfo {
            fstype: "ext4",
            label: label_text(&b[1024 + 0x78..1024 + 0x88]),
            uuid: uuid_text(&b[1024 + 0x68..1024 + 0x78]),
        });
    }
    // xfs: "XFSB" at 0, uuid at 32, label (12 bytes) at 108.
    if b.len() >= 512 && &b[0..4] == b"XFSB" {
        return Some(FsInfo {
            fstype: "xfs",
            label: label_text(&b[108..120]),
            uuid: uuid_text(&b[32..48]),
        });
    }
    // btrfs: superblock at 64 KiB; magic at +0x40, fsid at +0x20, label at +0x12b.
    let s = 65536;
    if b.len() >= s + 0x22b && &b[s + 0x40..s + 0x48] == b"_BHRfS_M" {
        return Some(FsInfo {
            fstype: "btrfs",
            label: label_text(&b[s + 0x12b..s + 0x22b]),
            uuid: uuid_text(&b[s + 0x20..s + 0x30]),
        });
    }
    if b.len() >= 512 && b[510] == 0x55 && b[511] == 0xAA {
        // exfat: "EXFAT   " at 3; serial at 100. Its label lives in the root
        // directory, which we do not walk: exfat stores are found by UUID or path.
        if &b[3..11] == b"EXFAT   " {
            return Some(FsInfo {
                fstype: "exfat",
                label: None,
                uuid: Some(serial_text(b, 100)),
            });
        }
        // FAT32 keeps its extended boot record at 0x40, FAT12/16 at 0x24.
        if &b[0x52..0x57] == b"FAT32" && b[0x42] == 0x29 {
            return Some(FsInfo {
                fstype: "vfat",
                label: label_text(&b[0x47..0x52]),
                uuid: Some(serial_text(b, 0x43)),
            });
        }
        if &b[0x36..0x39] == b"FAT" && b[0x26] == 0x29 {
            return Some(FsInfo {
                fstype: "vfat",
                label: label_text(&b[0x2b..0x36]),
                uuid: Some(serial_text(b, 0x27)),
            });
        }
    }
    None
}

/// Probes a device file (or an image file in tests).
pub fn probe(dev: &Path) -> Result<Option<FsInfo>> {
    let mut f = File::open(dev).with_context(|| format!("open {}", dev.display()))?;
    let mut buf = Vec::with_capacity(PROBE_LEN);
    f.seek(SeekFrom::Start(0)).context("seek")?;
    f.take(PROBE_LEN as u64)
        .read_to_end(&mut buf)
        .with_context(|| format!("read {}", dev.display()))?;
    Ok(probe_bytes(&buf))
}

/// Block devices the kernel knows, disks and partitions, by /sys/class/block.
pub fn block_devices(root: &Root) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(root.path("/sys/class/block"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with("ram") && !n.starts_with("zram"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Resolves a store spec to a device with a filesystem we can mount.
pub fn find(root: &Root, spec: &str) -> Result<Found> {
    let spec = spec.trim();
    let (key, want) = if let Some(l) = spec.strip_prefix("LABEL=") {
        ("label", l)
    } else if let Some(u) = spec.strip_prefix("UUID=") {
        ("uuid", u)
    } else if spec.starts_with("/dev/") {
        let dev = root.path(spec);
        let fs = probe(&dev)?
            .with_context(|| format!("{spec}: no ext4, vfat, exfat, xfs or btrfs filesystem"))?;
        return Ok(Found {
            dev,
            name: spec.to_string(),
            fs,
        });
    } else {
        bail!("rescue.store={spec}: expected LABEL=name, UUID=id or /dev/NAME");
    };
    // Links from udev, when there is one (dracut), first.
    let link = root.path(format!("/dev/disk/by-{key}/{want}"));
    if let Ok(target) = fs::canonicalize(&link)
        && let Ok(Some(fs)) = probe(&target)
    {
        let name = format!(
            "/dev/{}",
            target.file_name().unwrap_or_default().to_string_lossy()
        );
        return Ok(Found {
            dev: target,
            name,
            fs,
        });
    }
    let mut seen = Vec::new();
    for n in block_devices(root) {
        let dev = root.path(format!("/dev/{n}"));
        let Ok(Some(fs)) = probe(&dev) else { continue };
        let hit = match key {
            "label" => fs.label.as_deref() == Some(want),
            _ => fs
                .uuid
                .as_deref()
                .is_some_and(|u| u.eq_ignore_ascii_case(want)),
        };
        if hit {
            return Ok(Found {
                dev,
                name: format!("/dev/{n}"),
                fs,
            });
        }
        seen.push(format!(
            "/dev/{n} ({} label={} uuid={})",
            fs.fstype,
            fs.label.as_deref().unwrap_or("-"),
            fs.uuid.as_deref().unwrap_or("-")
        ));
    }
    if seen.is_empty() {
        bail!("no filesystem with {key} {want}: no readable filesystems found");
    }
    bail!(
        "no filesystem with {key} {want}; found: {}",
        seen.join(", ")
    )
}

/// Finds the store and mounts it read-write at `STORE_MOUNT`, loading the
/// filesystem's module first through `load_fs` (given e.g. "ext4").
pub fn mount_store(root: &Root, spec: &str, load_fs: &mut dyn FnMut(&str)) -> Result<PathBuf> {
    let found = find(root, spec)?;
    load_fs(found.fs.fstype);
    let target = root.path(STORE_MOUNT);
    fs::create_dir_all(&target).with_context(|| format!("mkdir {}", target.display()))?;
    if root.is_host() {
        if crate::init::mounts::is_mountpoint(root, Path::new(STORE_MOUNT)) {
            return Ok(target);
        }
        nix::mount::mount(
            Some(&found.dev),
            &target,
            Some(found.fs.fstype),
            nix::mount::MsFlags::MS_NOATIME,
            None::<&str>,
        )
        .with_context(|| {
            format!(
                "mount {} ({}) on {STORE_MOUNT}",
                found.name, found.fs.fstype
            )
        })?;
    }
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ext4_label_uuid() {
        let mut b = vec![0u8; PROBE_LEN];
        b[1024 + 0x38] = 0x53;
        b[1024 + 0x39] = 0xEF;
        b[1024 + 0x68..1024 + 0x78].copy_from_slice(&[
            0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab,
            0xcd, 0xef,
        ]);
        b[1024 + 0x78..1024 + 0x78 + 7].copy_from_slice(b"backups");
        let fs = probe_bytes(&b).expect("ext4");
        assert_eq!(fs.fstype, "ext4");
        assert_eq!(fs.label.as_deref(), Some("backups"));
        assert_eq!(
            fs.uuid.as_deref(),
            Some("12345678-9abc-def0-0123-456789abcdef")
        );
    }

    #[test]
    fn nothing_on_zeros() {
        assert_eq!(probe_bytes(&vec![0u8; PROBE_LEN]), None);
        assert_eq!(probe_bytes(&[]), None);
    }
}
