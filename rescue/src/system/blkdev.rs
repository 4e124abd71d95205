//! The ioctls of block devices and FIEMAP (a file's extents, for `rescue store
//! list`): the only unsafe code of the data path, kept in one place. nix's macros
//! give each request the type the libc in use wants (c_ulong with glibc, c_int with
//! musl, the static build).

use std::fs::File;
use std::os::fd::AsRawFd;

use anyhow::{Context, Result};

mod sys {
    nix::ioctl_read!(blkgetsize64, 0x12, 114, u64);
    nix::ioctl_read_bad!(blksszget, 0x1268, libc::c_int);
    nix::ioctl_none!(blkrrpart, 0x12, 95);
    nix::ioctl_write_ptr!(blkzeroout, 0x12, 127, [u64; 2]);
    nix::ioctl_write_ptr_bad!(blkdiscard, nix::request_code_none!(0x12, 119), [u64; 2]);
    // _IOWR('f', 11, struct fiemap): the size is the header's (32 bytes); the extents
    // follow it in the same buffer.
    nix::ioctl_readwrite_bad!(
        fs_ioc_fiemap,
        nix::request_code_readwrite!(b'f', 11, 32),
        super::Fiemap
    );
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

/// One extent of a file as FIEMAP reports it: (physical start, or u64::MAX where
/// the filesystem has not placed it; length; shared with another file).
pub(crate) type Extent = (u64, u64, bool);

const FIEMAP_EXTENT_LAST: u32 = 0x1;
const FIEMAP_EXTENT_SHARED: u32 = 0x2000;
/// Flags under which `fe_physical` means nothing (not yet on disk, inline).
const FIEMAP_EXTENT_NOT_PLACED: u32 = 0x2 | 0x4 | 0x200;
const BATCH: usize = 256;

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct FiemapExtent {
    logical: u64,
    physical: u64,
    length: u64,
    reserved64: [u64; 2],
    flags: u32,
    reserved: [u32; 3],
}

#[repr(C)]
struct Fiemap {
    start: u64,
    length: u64,
    flags: u32,
    mapped: u32,
    count: u32,
    reserved: u32,
    extents: [FiemapExtent; BATCH],
}

/// The extents of `f`, or None where the filesystem has no FIEMAP (tmpfs).
pub(crate) fn extents(f: &File) -> Option<Vec<Extent>> {
    let mut out = Vec::new();
    let mut start = 0u64;
    loop {
        let mut m = Fiemap {
            start,
            length: u64::MAX - start,
            flags: 0,
            mapped: 0,
            count: BATCH as u32,
            reserved: 0,
            extents: [FiemapExtent::default(); BATCH],
        };
        // SAFETY: the kernel fills at most `count` extents of the struct we own.
        if unsafe { sys::fs_ioc_fiemap(f.as_raw_fd(), &mut m) }.is_err() {
            return None;
        }
        let got = &m.extents[..(m.mapped as usize).min(BATCH)];
        for e in got {
            let placed = e.flags & FIEMAP_EXTENT_NOT_PLACED == 0;
            out.push((
                if placed { e.physical } else { u64::MAX },
                e.length,
                e.flags & FIEMAP_EXTENT_SHARED != 0,
            ));
        }
        match got.last() {
            Some(e) if e.flags & FIEMAP_EXTENT_LAST == 0 => start = e.logical + e.length,
            _ => return Some(out),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::io::Write;

    use super::*;

    // The macro casts its literals to the libc's request type, which clippy sees through.
    #[allow(clippy::unnecessary_cast)]
    #[test]
    fn fiemap_request_is_the_kernels() {
        // FS_IOC_FIEMAP in <linux/fs.h>; the header nix sizes it by is 32 bytes.
        assert_eq!(
            nix::request_code_readwrite!(b'f', 11, 32) as u64,
            0xC020_660B
        );
        assert_eq!(std::mem::offset_of!(Fiemap, extents), 32);
        assert_eq!(std::mem::size_of::<FiemapExtent>(), 56);
    }

    #[test]
    fn extents_cover_a_written_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = File::create(dir.path().join("f")).unwrap();
        f.write_all(&vec![7u8; 1 << 20]).unwrap();
        f.sync_all().unwrap();
        let Some(ex) = extents(&f) else {
            eprintln!("no FIEMAP on {}: nothing to check", dir.path().display());
            return;
        };
        let total: u64 = ex.iter().map(|e| e.1).sum();
        assert!(total >= 1 << 20, "{ex:?}");
        assert!(ex.iter().all(|e| e.0 != u64::MAX && !e.2), "{ex:?}");
    }
}
