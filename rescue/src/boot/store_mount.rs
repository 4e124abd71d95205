//! Finding and mounting the image store named by `rescue.store=` (LABEL=, UUID= or
//! a /dev path). There is no udev in the initramfs, so /dev/disk/by-* links usually
//! do not exist: the superblocks are read ourselves (fsprobe.rs; a store can be on
//! ext2/3/4, vfat, exfat, xfs or btrfs) to find labels, UUIDs and the type to mount with.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::root::Root;
use crate::system::fsprobe;

/// Bytes probed from the start of a device.
pub use crate::system::fsprobe::PROBE_LEN;

/// Where serve keeps images in PID-1 mode.
pub(crate) const STORE_MOUNT: &str = "/run/rescue/store";

/// What a superblock says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountFs {
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
    pub(crate) dev: PathBuf,
    /// The device's /dev name, e.g. `/dev/sdb1` (for messages and mount(2)).
    pub name: String,
    pub fs: MountFs,
}

/// The type mount(2) takes for what the shared probe recognised, when rescue can
/// keep a store on it (the ext4 driver mounts ext2 and ext3 too).
fn mount_type(fstype: &str) -> Option<&'static str> {
    Some(match fstype {
        "ext2" | "ext3" | "ext4" => "ext4",
        "vfat" => "vfat",
        "exfat" => "exfat",
        "xfs" => "xfs",
        "btrfs" => "btrfs",
        _ => return None,
    })
}

fn mountable(fs: fsprobe::FsInfo) -> Option<MountFs> {
    Some(MountFs {
        fstype: mount_type(&fs.fstype)?,
        label: fs.label,
        uuid: fs.uuid,
    })
}

/// Probes a device file (or an image file in tests) for a filesystem a store can be on.
pub(crate) fn probe(dev: &Path) -> Result<Option<MountFs>> {
    let fs = fsprobe::probe_path(dev).with_context(|| format!("open {}", dev.display()))?;
    Ok(fs.and_then(mountable))
}

/// Block devices the kernel knows, disks and partitions, by /sys/class/block.
pub(crate) fn block_devices(root: &Root) -> Vec<String> {
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
        if crate::boot::mounts::is_mountpoint(root, Path::new(STORE_MOUNT)) {
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

/// Syncs and unmounts the store at `STORE_MOUNT` if it is mounted there.
pub(crate) fn unmount_store(root: &Root) -> Result<()> {
    if !root.is_host() || !crate::boot::mounts::is_mountpoint(root, Path::new(STORE_MOUNT)) {
        return Ok(());
    }
    nix::unistd::sync();
    nix::mount::umount(STORE_MOUNT).with_context(|| format!("unmount {STORE_MOUNT}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_filesystems_a_store_can_be_on_are_mountable() {
        let fs = |t: &str| fsprobe::FsInfo {
            fstype: t.to_string(),
            label: Some("x".into()),
            ..fsprobe::FsInfo::default()
        };
        let m = mountable(fs("ext2")).expect("ext2");
        assert_eq!((m.fstype, m.label.as_deref()), ("ext4", Some("x")));
        assert_eq!(mountable(fs("btrfs")).map(|m| m.fstype), Some("btrfs"));
        for t in ["swap", "crypto_LUKS", "LVM2_member", "ntfs", "jbd"] {
            assert_eq!(mountable(fs(t)), None, "{t}");
        }
    }
}
