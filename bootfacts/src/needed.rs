//! The kernel modules the rescue system needs, by purpose: what PID 1 loads first,
//! what it loads to mount a store, and (all of them) what the image ships when the
//! kernel has them as modules. The dracut module asks `rescue` for its list.

/// ConfigFS, where streams are configured; a module in Debian's kernels.
pub const CONFIGFS: &str = "configfs";

/// The driver that provides /dev/tbstreamN and its ConfigFS subsystem.
pub const STREAM_MODULE: &str = "thunderbolt_stream";

/// The kernel's USB4STREAM stack in load order: the Thunderbolt bus, then streams.
pub const STREAM_STACK: [&str; 2] = ["thunderbolt", STREAM_MODULE];

/// The virtual USB4 host of the VM tests (kmod/, out of tree): it stands in for
/// `thunderbolt` under the kernel's own `thunderbolt_stream`.
pub const VIRTUAL_HOST: &str = "usb4vhost";

/// Storage controllers and disks.
pub const STORAGE: &[&str] = &[
    "nvme",
    "vmd",
    "ahci",
    "ata_piix",
    "sd_mod",
    "virtio_blk",
    "virtio_scsi",
    "virtio_pci",
    "mmc_block",
    "sdhci_pci",
];

/// USB: host controllers, disks, keyboards.
pub const USB: &[&str] = &[
    "xhci_pci",
    "ehci_pci",
    "ohci_pci",
    "uhci_hcd",
    "usb_storage",
    "uas",
    "usbhid",
    "hid_generic",
    "atkbd",
];

/// The filesystems a store may use.
pub const STORE_FILESYSTEMS: &[&str] = &["ext4", "vfat", "xfs", "btrfs", "exfat"];

/// The code pages a vfat mount asks for (loaded with vfat).
pub const VFAT_CODEPAGES: &[&str] = &["nls_cp437", "nls_iso8859_1", "nls_utf8", "nls_ascii"];

/// Checksums filesystems ask for by softdep.
pub const CHECKSUMS: &[&str] = &["crc32c_generic", "crc32c"];

/// Every module the rescue initramfs wants when the kernel has it as a module
/// (missing ones, built in or not in that kernel, are skipped).
pub fn image_modules() -> impl Iterator<Item = &'static str> {
    std::iter::once(CONFIGFS)
        .chain(STREAM_STACK)
        .chain(STORAGE.iter().copied())
        .chain(USB.iter().copied())
        .chain(STORE_FILESYSTEMS.iter().copied())
        .chain(VFAT_CODEPAGES.iter().copied())
        .chain(CHECKSUMS.iter().copied())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_image_has_every_group() {
        let all: Vec<&str> = image_modules().collect();
        for m in [
            "configfs",
            "thunderbolt",
            "thunderbolt_stream",
            "nvme",
            "usb_storage",
        ] {
            assert!(all.contains(&m), "{m}");
        }
        assert!(VFAT_CODEPAGES.iter().all(|m| all.contains(m)));
        assert!(
            !all.contains(&VIRTUAL_HOST),
            "the virtual host is an extra module"
        );
        let mut dedup = all.clone();
        dedup.sort();
        dedup.dedup();
        assert_eq!(dedup.len(), all.len(), "listed twice");
    }
}
