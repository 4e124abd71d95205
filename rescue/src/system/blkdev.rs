//! Block-device ioctls, the only unsafe code of the data path, kept in one place.

use std::fs::File;
use std::os::fd::AsRawFd;

use anyhow::{Context, Result};

mod sys {
    nix::ioctl_read!(blkgetsize64, 0x12, 114, u64);
    nix::ioctl_read_bad!(blksszget, 0x1268, libc::c_int);
    nix::ioctl_none!(blkrrpart, 0x12, 95);
    nix::ioctl_write_ptr!(blkzeroout, 0x12, 127, [u64; 2]);
    nix::ioctl_write_ptr_bad!(blkdiscard, nix::request_code_none!(0x12, 119), [u64; 2]);
}

/// Whether `f` is a block device.
pub(crate) fn is_block(f: &File) -> bool {
    use std::os::unix::fs::FileTypeExt;
    f.metadata().is_ok_and(|m| m.file_type().is_block_device())
}

/// Size in bytes: the device size for a block device, the length for a file.
pub(crate) fn size_of(f: &File) -> Result<u64> {
    if !is_block(f) {
        return Ok(f.metadata().context("reading file size")?.len());
    }
    let mut size = 0u64;
    // SAFETY: BLKGETSIZE64 writes one u64 into `size`, which outlives the call.
    unsafe { sys::blkgetsize64(f.as_raw_fd(), &mut size) }.context("BLKGETSIZE64")?;
    Ok(size)
}

/// Logical sector size (512 for regular files).
pub(crate) fn logical_sector(f: &File) -> u32 {
    if !is_block(f) {
        return 512;
    }
    let mut s: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one int into `s`.
    match unsafe { sys::blksszget(f.as_raw_fd(), &mut s) } {
        Ok(_) if s >= 512 => s as u32,
        _ => 512,
    }
}

/// Asks the kernel to re-read the partition table (after a restore).
pub(crate) fn reread_partitions(f: &File) -> Result<()> {
    if !is_block(f) {
        return Ok(());
    }
    // SAFETY: BLKRRPART takes no argument.
    unsafe { sys::blkrrpart(f.as_raw_fd()) }.context("BLKRRPART")?;
    Ok(())
}

/// Zeroes a range of a block device efficiently; false when unsupported.
pub(crate) fn zero_out(f: &File, offset: u64, len: u64) -> bool {
    if !is_block(f) {
        return false;
    }
    let range = [offset, len];
    // SAFETY: BLKZEROOUT reads two u64 from `range`.
    unsafe { sys::blkzeroout(f.as_raw_fd(), &range) }.is_ok()
}

/// Discards (TRIMs) a range of a block device; false when the device does not
/// support it (or `f` is not one).
pub(crate) fn discard(f: &File, offset: u64, len: u64) -> bool {
    if !is_block(f) {
        return false;
    }
    let range = [offset, len];
    // SAFETY: BLKDISCARD reads two u64 from `range`.
    unsafe { sys::blkdiscard(f.as_raw_fd(), &range) }.is_ok()
}
