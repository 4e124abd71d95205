//! Recognising what a volume holds from its superblock, the way blkid names it: ext2/3/4,
//! xfs, btrfs, vfat (FAT12/16/32), exfat, ntfs, squashfs, swap, LUKS, LVM2 PV and md RAID
//! members (metadata 0.90, 1.0, 1.1, 1.2), with label and UUID. `rescue disks` shows
//! these and the PID-1 store lookup (boot/store_mount.rs) finds its store by them. Superblocks
//! come from failing or hostile disks: every field is read through bounds-checked
//! accessors, never by indexing.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// What a superblock says.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(default)]
pub struct FsInfo {
    /// blkid's TYPE: "ext4", "vfat", "ntfs", "swap", "crypto_LUKS", "LVM2_member", ...
    #[serde(rename = "type")]
    pub fstype: String,
    pub label: Option<String>,
    /// In blkid's textual form ("3f1c2a7e-...", "ABCD-1234" for FAT, 16 hex digits for NTFS).
    pub uuid: Option<String>,
}

/// The most a probe reads from the start of a volume (btrfs keeps its superblock at 64
/// KiB); NTFS and exFAT labels take one more read where the volume says they are.
pub const PROBE_LEN: usize = 65536 + 4096;

/// The first bytes, read once: enough for every superblock except btrfs and large-page swap.
const HEAD_LEN: usize = 8192;

/// The most read for a label outside the head (one exFAT directory cluster, one NTFS
/// MFT record).
const LABEL_READ_MAX: u64 = 65536;

/// Something to probe: a device, a partition's window of its disk, or bytes in memory.
pub(crate) trait Volume {
    /// Up to `len` bytes at `offset`: fewer at the end of the volume, and fewer or none
    /// when the read fails (nothing is recognised in what could not be read).
    fn read(&self, offset: u64, len: usize) -> Vec<u8>;
    /// Its size, when known (md keeps some superblocks at the end).
    fn size(&self) -> Option<u64>;
}

impl Volume for &[u8] {
    fn size(&self) -> Option<u64> {
        Some(self.len() as u64)
    }

    fn read(&self, offset: u64, len: usize) -> Vec<u8> {
        let Ok(start) = usize::try_from(offset) else {
            return Vec::new();
        };
        let end = start.saturating_add(len).min(self.len());
        self.get(start..end).map(<[u8]>::to_vec).unwrap_or_default()
    }
}

/// A window of a file or block device: a partition read through its whole disk, so a
/// probe never reads past the partition's end into its neighbour.
pub(crate) struct Window<'a> {
    file: &'a File,
    start: u64,
    len: u64,
}

impl<'a> Window<'a> {
    pub fn new(file: &'a File, start: u64, len: u64) -> Self {
        Window { file, start, len }
    }
}

impl Volume for Window<'_> {
    fn size(&self) -> Option<u64> {
        (self.len != u64::MAX).then_some(self.len)
    }

    fn read(&self, offset: u64, len: usize) -> Vec<u8> {
        let avail = self.len.saturating_sub(offset);
        let want = usize::try_from(avail).unwrap_or(usize::MAX).min(len);
        let Some(mut pos) = self.start.checked_add(offset) else {
            return Vec::new();
        };
        let mut buf = vec![0u8; want];
        let mut got = 0;
        while got < want {
            match self.file.read_at(&mut buf[got..], pos) {
                Ok(0) => break,
                Ok(n) => {
                    got += n;
                    pos = pos.saturating_add(n as u64);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        buf.truncate(got);
        buf
    }
}

/// Probes a whole device or image file.
pub(crate) fn probe_path(path: &Path) -> io::Result<Option<FsInfo>> {
    let mut f = File::open(path)?;
    // The size of a block device too (its metadata says 0).
    let size = f.seek(SeekFrom::End(0)).unwrap_or(u64::MAX);
    Ok(probe(&Window::new(&f, 0, size)))
}

/// Probes bytes from the start of a volume (at least `PROBE_LEN` of them to see btrfs).
pub fn probe_bytes(b: &[u8]) -> Option<FsInfo> {
    probe(&b)
}

/// Identifies what the volume holds. Containers (LUKS, LVM, md) come first, as blkid
/// does: their payload may start with a stale or nested filesystem.
///
/// A head that cannot be read in full (short of the volume's end) is all that is probed:
/// on a failing disk every further read of bad sectors can take the kernel minutes of
/// retries.
pub(crate) fn probe(v: &dyn Volume) -> Option<FsInfo> {
    let head = v.read(0, HEAD_LEN);
    let expected = v.size().map_or(HEAD_LEN as u64, |s| s.min(HEAD_LEN as u64));
    if (head.len() as u64) < expected {
        return probe(&head.as_slice());
    }
    let h = Bytes(&head);
    luks(h)
        .or_else(|| lvm(h))
        .or_else(|| md(h, v))
        .or_else(|| xfs(h))
        .or_else(|| ext(h))
        .or_else(|| ntfs(h, v))
        .or_else(|| exfat(h, v))
        .or_else(|| fat(h, v))
        .or_else(|| squashfs(h))
        .or_else(|| btrfs(v))
        .or_else(|| swap(h, v))
}

fn found(fstype: &str, label: Option<String>, uuid: Option<String>) -> Option<FsInfo> {
    Some(FsInfo {
        fstype: fstype.to_string(),
        label,
        uuid,
    })
}

/// Bounds-checked little/big-endian reads: `None` past the end, never a panic.
#[derive(Clone, Copy)]
struct Bytes<'a>(&'a [u8]);

impl<'a> Bytes<'a> {
    fn get(self, at: usize, len: usize) -> Option<&'a [u8]> {
        self.0.get(at..at.checked_add(len)?)
    }
    fn arr<const N: usize>(self, at: usize) -> Option<[u8; N]> {
        self.get(at, N)?.try_into().ok()
    }
    fn u8(self, at: usize) -> Option<u8> {
        self.0.get(at).copied()
    }
    fn le16(self, at: usize) -> Option<u16> {
        self.arr(at).map(u16::from_le_bytes)
    }
    fn be16(self, at: usize) -> Option<u16> {
        self.arr(at).map(u16::from_be_bytes)
    }
    fn le32(self, at: usize) -> Option<u32> {
        self.arr(at).map(u32::from_le_bytes)
    }
    fn be32(self, at: usize) -> Option<u32> {
        self.arr(at).map(u32::from_be_bytes)
    }
    fn le64(self, at: usize) -> Option<u64> {
        self.arr(at).map(u64::from_le_bytes)
    }
    fn is(self, at: usize, magic: &[u8]) -> bool {
        self.get(at, magic.len()) == Some(magic)
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A 16-byte UUID as 8-4-4-4-12 hex; none when all zero (not set).
fn uuid_text(b: &[u8]) -> Option<String> {
    if b.len() != 16 || b.iter().all(|&x| x == 0) {
        return None;
    }
    let (a, rest) = b.split_at(4);
    let (c, rest) = rest.split_at(2);
    let (d, rest) = rest.split_at(2);
    let (e, f) = rest.split_at(2);
    Some(format!(
        "{}-{}-{}-{}-{}",
        hex(a),
        hex(c),
        hex(d),
        hex(e),
        hex(f)
    ))
}

/// Text for a terminal: control characters (a hostile label could carry escape
/// sequences) become '?', surrounding blanks go; none when empty.
fn clean(s: &str) -> Option<String> {
    let s: String = s
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_string())
}

/// A fixed-size, NUL- or space-padded byte string.
fn label_text(b: &[u8]) -> Option<String> {
    let end = b.iter().position(|&x| x == 0).unwrap_or(b.len());
    clean(&String::from_utf8_lossy(b.get(..end)?))
}

/// UTF-16LE text up to a NUL (NTFS and exFAT labels).
fn utf16_text(b: &[u8]) -> Option<String> {
    let units = b
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0);
    let s: String = char::decode_utf16(units)
        .map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER))
        .collect();
    clean(&s)
}

/// A FAT/exFAT volume serial as blkid prints it ("ABCD-1234").
fn serial_text(b: [u8; 4]) -> String {
    format!("{:02X}{:02X}-{:02X}{:02X}", b[3], b[2], b[1], b[0])
}

fn luks(h: Bytes) -> Option<FsInfo> {
    if !h.is(0, b"LUKS\xba\xbe") {
        return None;
    }
    // LUKS1 and LUKS2 both keep the UUID (ASCII) at 0xa8; only LUKS2 has a label.
    let label = if h.be16(6)? == 2 {
        label_text(h.get(0x18, 48)?)
    } else {
        None
    };
    found("crypto_LUKS", label, label_text(h.get(0xa8, 40)?))
}

/// LVM2 physical volume: a "LABELONE" sector among the first four, pointing at the PV
/// header whose first field is the 32-character UUID.
fn lvm(h: Bytes) -> Option<FsInfo> {
    let at = (0..4)
        .map(|s| s * 512)
        .find(|&at| h.is(at, b"LABELONE") && h.is(at + 24, b"LVM2 001"))?;
    found("LVM2_member", None, lvm_uuid(h, at))
}

/// The PV UUID as blkid prints it (6-4-4-4-4-4-6), when the header is where the label
/// says and holds one.
fn lvm_uuid(h: Bytes, label: usize) -> Option<String> {
    let pv = label.checked_add(usize::try_from(h.le32(label + 20)?).ok()?)?;
    let id = h.get(pv, 32)?;
    if !id.iter().all(u8::is_ascii_alphanumeric) {
        return None;
    }
    let s = String::from_utf8_lossy(id);
    let parts: Vec<&str> = [
        (0, 6),
        (6, 10),
        (10, 14),
        (14, 18),
        (18, 22),
        (22, 26),
        (26, 32),
    ]
    .iter()
    .filter_map(|&(a, b)| s.get(a..b))
    .collect();
    Some(parts.join("-"))
}

/// md RAID member: a version 1.1 (at 0) or 1.2 (at 4 KiB) superblock, else 1.0 (8 KiB
/// before the end, 4 KiB aligned) or 0.90 (the last 64 KiB-aligned 64 KiB), both of
/// which leave the member's data, often a plain filesystem, at its start.
fn md(h: Bytes, v: &dyn Volume) -> Option<FsInfo> {
    const MAGIC: u32 = 0xa92b_4efc;
    let is_md = |b: Bytes, at: usize, major: u32| {
        b.le32(at) == Some(MAGIC) && b.le32(at + 4) == Some(major)
    };
    let v1 = |b: Bytes, at: usize| {
        found(
            "linux_raid_member",
            label_text(b.get(at + 32, 32)?),
            uuid_text(b.get(at + 16, 16)?),
        )
    };
    if let Some(at) = [0usize, 4096].into_iter().find(|&at| is_md(h, at, 1)) {
        return v1(h, at);
    }
    let size = v.size()?;
    if let Some(end) = size.checked_sub(8192).filter(|e| *e >= 8192) {
        let sb = v.read(end & !4095, 256);
        if is_md(Bytes(&sb), 0, 1) {
            return v1(Bytes(&sb), 0);
        }
    }
    let at = (size & !65535).checked_sub(65536).filter(|a| *a > 0)?;
    let sb = v.read(at, 64);
    let b = Bytes(&sb);
    if !is_md(b, 0, 0) {
        return None;
    }
    // The set UUID is split: word 5, then words 13 to 15.
    let mut uuid = b.get(0x14, 4)?.to_vec();
    uuid.extend_from_slice(b.get(0x34, 12)?);
    found("linux_raid_member", None, uuid_text(&uuid))
}

fn xfs(h: Bytes) -> Option<FsInfo> {
    let bs = h.be32(4)?;
    if !h.is(0, b"XFSB") || !bs.is_power_of_two() || !(512..=65536).contains(&bs) {
        return None;
    }
    found(
        "xfs",
        label_text(h.get(108, 12)?),
        uuid_text(h.get(32, 16)?),
    )
}

/// ext2/3/4 (and an external ext journal), told apart by feature flags as blkid does:
/// any feature beyond ext3's makes it ext4, a journal without them ext3.
fn ext(h: Bytes) -> Option<FsInfo> {
    const SB: usize = 1024;
    const EXT3_INCOMPAT: u32 = 0x2 | 0x4 | 0x10; // filetype, recover, meta_bg
    const EXT3_RO_COMPAT: u32 = 0x1 | 0x2 | 0x4; // sparse_super, large_file, btree_dir
    if h.le16(SB + 0x38)? != 0xef53 {
        return None;
    }
    let compat = h.le32(SB + 0x5c)?;
    let incompat = h.le32(SB + 0x60)?;
    let ro_compat = h.le32(SB + 0x64)?;
    let fstype = if incompat & 0x8 != 0 {
        "jbd"
    } else if incompat & !(EXT3_INCOMPAT) != 0 || ro_compat & !EXT3_RO_COMPAT != 0 {
        "ext4"
    } else if compat & 0x4 != 0 {
        "ext3"
    } else {
        "ext2"
    };
    found(
        fstype,
        label_text(h.get(SB + 0x78, 16)?),
        uuid_text(h.get(SB + 0x68, 16)?),
    )
}

fn btrfs(v: &dyn Volume) -> Option<FsInfo> {
    let sb = v.read(0x10000, 0x1000);
    let b = Bytes(&sb);
    if !b.is(0x40, b"_BHRfS_M") {
        return None;
    }
    found(
        "btrfs",
        label_text(b.get(0x12b, 256)?),
        uuid_text(b.get(0x20, 16)?),
    )
}

fn squashfs(h: Bytes) -> Option<FsInfo> {
    if !h.is(0, b"hsqs") {
        return None;
    }
    found("squashfs", None, None)
}

/// FAT12/16/32 by the extended boot record (boot signature 0x29), which holds the
/// serial and a label: at 0x40 for FAT32, at 0x24 for FAT12/16. The label that counts
/// is the root directory's (Windows writes only that one, leaving "NO NAME" in the boot
/// sector), as for blkid; the boot sector's is the fallback.
fn fat(h: Bytes, v: &dyn Volume) -> Option<FsInfo> {
    if !h.is(510, &[0x55, 0xaa]) {
        return None;
    }
    let ebr = if h.is(0x52, b"FAT32") {
        0x40
    } else if h.is(0x36, b"FAT") {
        0x24
    } else {
        return None;
    };
    if h.u8(ebr + 2)? != 0x29 {
        return None;
    }
    let label = fat_root_label(h, v, ebr == 0x40)
        .or_else(|| label_text(h.get(ebr + 7, 11)?))
        .filter(|l| l != "NO NAME");
    found("vfat", label, Some(serial_text(h.arr(ebr + 3)?)))
}

/// The volume label entry of the FAT root directory: a fixed area after the FATs on
/// FAT12/16, the root cluster on FAT32 (its first cluster is all that is read).
fn fat_root_label(h: Bytes, v: &dyn Volume, fat32: bool) -> Option<String> {
    let sector = u64::from(h.le16(0x0b)?);
    let cluster = sector.checked_mul(u64::from(h.u8(0x0d)?))?;
    let fats = u64::from(h.u8(0x10)?);
    let reserved = u64::from(h.le16(0x0e)?);
    let (fat_size, root_len) = if fat32 {
        (u64::from(h.le32(0x24)?), cluster)
    } else {
        (u64::from(h.le16(0x16)?), u64::from(h.le16(0x11)?) * 32)
    };
    let data = reserved
        .checked_add(fats.checked_mul(fat_size)?)?
        .checked_mul(sector)?;
    let off = if fat32 {
        let root = u64::from(h.le32(0x2c)?).checked_sub(2)?;
        data.checked_add(root.checked_mul(cluster)?)?
    } else {
        data
    };
    let dir = v.read(off, usize::try_from(root_len.min(LABEL_READ_MAX)).ok()?);
    for e in dir.chunks_exact(32) {
        let attr = *e.get(11)?;
        match e.first()? {
            0x00 => return None, // end of directory
            0xe5 => {}           // deleted
            // A volume label, not a long-name piece (0x0f) nor a directory.
            _ if attr != 0x0f && attr & 0x18 == 0x08 => return label_text(e.get(..11)?),
            _ => {}
        }
    }
    None
}

fn exfat(h: Bytes, v: &dyn Volume) -> Option<FsInfo> {
    if !h.is(3, b"EXFAT   ") || !h.is(510, &[0x55, 0xaa]) {
        return None;
    }
    found("exfat", exfat_label(h, v), Some(serial_text(h.arr(100)?)))
}

/// The exFAT label is a directory entry (type 0x83) in the root directory, normally
/// in its first cluster, which is all that is read.
fn exfat_label(h: Bytes, v: &dyn Volume) -> Option<String> {
    let sector_shift = u32::from(h.u8(0x6c)?);
    let cluster_shift = sector_shift.checked_add(u32::from(h.u8(0x6d)?))?;
    if !(9..=12).contains(&sector_shift) || cluster_shift > 25 {
        return None;
    }
    let heap = u64::from(h.le32(0x58)?).checked_shl(sector_shift)?;
    let root = u64::from(h.le32(0x60)?).checked_sub(2)?;
    let off = heap.checked_add(root.checked_mul(1u64 << cluster_shift)?)?;
    let len = (1u64 << cluster_shift).min(LABEL_READ_MAX);
    let dir = v.read(off, usize::try_from(len).ok()?);
    for e in dir.chunks_exact(32) {
        match e.first()? {
            0x00 => return None, // end of directory
            0x83 => {
                let n = usize::from(*e.get(1)?).min(11);
                return utf16_text(e.get(2..2 + 2 * n)?);
            }
            _ => {}
        }
    }
    None
}

fn ntfs(h: Bytes, v: &dyn Volume) -> Option<FsInfo> {
    if !h.is(3, b"NTFS    ") {
        return None;
    }
    let serial = h.le64(0x48)?;
    let uuid = (serial != 0).then(|| format!("{serial:016X}"));
    found("ntfs", ntfs_label(h, v), uuid)
}

/// The NTFS label is the $VOLUME_NAME attribute of MFT record 3 ($Volume).
fn ntfs_label(h: Bytes, v: &dyn Volume) -> Option<String> {
    let sector = u64::from(h.le16(0x0b)?);
    if !sector.is_power_of_two() || !(256..=4096).contains(&sector) {
        return None;
    }
    // Sectors per cluster; above 0x80 it is a negative power of two (large clusters).
    let spc = h.u8(0x0d)?;
    let cluster = match spc {
        1..=0x80 if spc.is_power_of_two() => sector * u64::from(spc),
        0xe0..=0xff => sector.checked_shl(256 - u32::from(spc))?,
        _ => return None,
    };
    // Record size: clusters when positive, else 2^-n bytes.
    let rec = match h.u8(0x40)? as i8 {
        n @ 1..=64 => cluster.checked_mul(n as u64)?,
        n @ -16..=-9 => 1u64 << (-i32::from(n)),
        _ => return None,
    };
    if !(512..=LABEL_READ_MAX).contains(&rec) {
        return None;
    }
    let off = h.le64(0x30)?.checked_mul(cluster)?.checked_add(3 * rec)?;
    let mut r = v.read(off, usize::try_from(rec).ok()?);
    if r.len() as u64 != rec || !r.starts_with(b"FILE") {
        return None;
    }
    ntfs_fixup(&mut r)?;
    ntfs_volume_name(Bytes(&r))
}

/// Undoes the update sequence: the last two bytes of every 512-byte block of a record
/// were swapped for a check value, kept in an array in the header. A mismatch means
/// a torn write: the record is not trusted.
fn ntfs_fixup(r: &mut [u8]) -> Option<()> {
    let b = Bytes(r);
    let usa = usize::from(b.le16(4)?);
    let count = usize::from(b.le16(6)?);
    let check: [u8; 2] = b.arr(usa)?;
    let saved = b.get(usa, count.checked_mul(2)?)?.to_vec();
    for i in 1..count {
        let end = i.checked_mul(512)?;
        let slot = r.get_mut(end - 2..end)?;
        if slot != check {
            return None;
        }
        slot.copy_from_slice(saved.get(i * 2..i * 2 + 2)?);
    }
    Some(())
}

fn ntfs_volume_name(r: Bytes) -> Option<String> {
    let used = usize::try_from(r.le32(0x18)?).ok()?.min(r.0.len());
    let mut pos = usize::from(r.le16(0x14)?);
    while pos.checked_add(16)? <= used {
        let kind = r.le32(pos)?;
        let len = usize::try_from(r.le32(pos + 4)?).ok()?;
        if kind == 0xffff_ffff || len < 16 {
            return None;
        }
        // $VOLUME_NAME, resident (its value lies inside the record).
        if kind == 0x60 && r.u8(pos + 8)? == 0 {
            let vlen = usize::try_from(r.le32(pos + 0x10)?).ok()?;
            let voff = usize::from(r.le16(pos + 0x14)?);
            return utf16_text(r.get(pos.checked_add(voff)?, vlen)?);
        }
        pos = pos.checked_add(len)?;
    }
    None
}

/// Swap (and a hibernation image in swap): the signature ends the first page, whose
/// size is not known, so each page size Linux uses is tried.
fn swap(h: Bytes, v: &dyn Volume) -> Option<FsInfo> {
    for page in [4096usize, 8192, 16384, 32768, 65536] {
        let at = page - 10;
        let sig = match h.get(at, 10) {
            Some(s) => s.to_vec(),
            None => v.read(at as u64, 10),
        };
        let fstype = if sig == b"SWAPSPACE2" {
            "swap"
        } else if [&b"S1SUSPEND"[..], b"S2SUSPEND", b"ULSUSPEND", b"LINHIB0001"]
            .iter()
            .any(|m| sig.starts_with(m))
        {
            "swsuspend"
        } else if sig == b"SWAP-SPACE" {
            return found("swap", None, None); // version 0: no label, no UUID
        } else {
            continue;
        };
        // The version 1 header follows 1 KiB of boot bits.
        if h.le32(1024) != Some(1) {
            return found(fstype, None, None);
        }
        return found(
            fstype,
            label_text(h.get(1024 + 28, 16)?),
            uuid_text(h.get(1024 + 12, 16)?),
        );
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(b: &mut [u8], at: usize, v: &[u8]) {
        b[at..at + v.len()].copy_from_slice(v);
    }

    const UUID: [u8; 16] = [
        0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd,
        0xef,
    ];
    const UUID_TEXT: &str = "12345678-9abc-def0-0123-456789abcdef";

    fn ext(incompat: u32, compat: u32) -> Vec<u8> {
        let mut b = vec![0u8; PROBE_LEN];
        put(&mut b, 1024 + 0x38, &0xef53u16.to_le_bytes());
        put(&mut b, 1024 + 0x5c, &compat.to_le_bytes());
        put(&mut b, 1024 + 0x60, &incompat.to_le_bytes());
        put(&mut b, 1024 + 0x68, &UUID);
        put(&mut b, 1024 + 0x78, b"backups");
        b
    }

    fn luks2() -> Vec<u8> {
        let mut b = vec![0u8; 4096];
        put(&mut b, 0, b"LUKS\xba\xbe\x00\x02");
        put(&mut b, 0x18, b"cryptroot");
        put(&mut b, 0xa8, UUID_TEXT.as_bytes());
        b
    }

    fn lvm() -> Vec<u8> {
        let mut b = vec![0u8; 4096];
        put(&mut b, 512, b"LABELONE");
        put(&mut b, 512 + 20, &32u32.to_le_bytes());
        put(&mut b, 512 + 24, b"LVM2 001");
        put(&mut b, 512 + 32, b"0123456789abcdefghijABCDEFGHIJkl");
        b
    }

    fn md12() -> Vec<u8> {
        let mut b = vec![0u8; 8192];
        put(&mut b, 4096, &0xa92b_4efcu32.to_le_bytes());
        put(&mut b, 4100, &1u32.to_le_bytes());
        put(&mut b, 4096 + 16, &UUID);
        put(&mut b, 4096 + 32, b"server:0");
        b
    }

    /// md members with the superblock at the end: 1.0 and 0.90, over an ext4 start.
    fn md_at_end(major: u32) -> Vec<u8> {
        let mut b = ext(0x40, 0x4);
        b.resize(1 << 20, 0);
        let at = if major == 1 {
            (b.len() - 8192) & !4095
        } else {
            b.len() - 65536
        };
        put(&mut b, at, &0xa92b_4efcu32.to_le_bytes());
        put(&mut b, at + 4, &major.to_le_bytes());
        if major == 1 {
            put(&mut b, at + 16, &UUID);
            put(&mut b, at + 32, b"boot");
        } else {
            put(&mut b, at + 0x14, &UUID[..4]);
            put(&mut b, at + 0x34, &UUID[4..]);
        }
        b
    }

    fn swap64k() -> Vec<u8> {
        let mut b = vec![0u8; 65536];
        put(&mut b, 1024, &1u32.to_le_bytes());
        put(&mut b, 1024 + 12, &UUID);
        put(&mut b, 1024 + 28, b"swap0");
        put(&mut b, 65536 - 10, b"SWAPSPACE2");
        b
    }

    fn info(fstype: &str, label: Option<&str>, uuid: Option<&str>) -> Option<FsInfo> {
        found(fstype, label.map(str::to_string), uuid.map(str::to_string))
    }

    #[test]
    fn ext_generations_by_features() {
        let ext4 = info("ext4", Some("backups"), Some(UUID_TEXT));
        assert_eq!(probe_bytes(&ext(0x2 | 0x40, 0x4)), ext4); // extents
        assert_eq!(probe_bytes(&ext(0x2, 0x4)).unwrap().fstype, "ext3");
        assert_eq!(probe_bytes(&ext(0, 0)).unwrap().fstype, "ext2");
        assert_eq!(probe_bytes(&ext(0x8, 0)).unwrap().fstype, "jbd");
    }

    #[test]
    fn containers_and_swap() {
        assert_eq!(
            probe_bytes(&luks2()),
            info("crypto_LUKS", Some("cryptroot"), Some(UUID_TEXT))
        );
        assert_eq!(
            probe_bytes(&lvm()),
            info(
                "LVM2_member",
                None,
                Some("012345-6789-abcd-efgh-ijAB-CDEF-GHIJkl")
            )
        );
        assert_eq!(
            probe_bytes(&md12()),
            info("linux_raid_member", Some("server:0"), Some(UUID_TEXT))
        );
        assert_eq!(
            probe_bytes(&swap64k()),
            info("swap", Some("swap0"), Some(UUID_TEXT))
        );
        assert_eq!(
            probe_bytes(&md_at_end(1)),
            info("linux_raid_member", Some("boot"), Some(UUID_TEXT))
        );
        assert_eq!(
            probe_bytes(&md_at_end(0)),
            info("linux_raid_member", None, Some(UUID_TEXT))
        );
        let mut hib = swap64k();
        put(&mut hib, 65536 - 10, b"S1SUSPEND\0");
        assert_eq!(probe_bytes(&hib).unwrap().fstype, "swsuspend");
    }

    #[test]
    fn hostile_labels_cannot_drive_the_terminal() {
        let mut b = ext(0, 0);
        put(&mut b, 1024 + 0x78, b"\x1b[2Jx\n\xff");
        assert_eq!(
            probe_bytes(&b).unwrap().label.as_deref(),
            Some("?[2Jx?\u{fffd}")
        );
    }

    #[test]
    fn nothing_on_zeros_or_nothing() {
        assert_eq!(probe_bytes(&vec![0u8; PROBE_LEN]), None);
        assert_eq!(probe_bytes(&[]), None);
    }

    /// Every prefix of each superblock is probed: a short read recognises less, or
    /// nothing, and never panics.
    #[test]
    fn truncated_superblocks_do_not_panic() {
        for b in [
            ext(0x40, 4),
            luks2(),
            lvm(),
            md12(),
            swap64k(),
            md_at_end(1),
        ] {
            let full = probe_bytes(&b);
            assert!(full.is_some());
            for n in (0..b.len()).step_by(if b.len() > PROBE_LEN { 509 } else { 7 }) {
                let _ = probe_bytes(&b[..n]);
            }
        }
        // The LVM header points past the end of what was read.
        let mut l = lvm();
        put(&mut l, 512 + 20, &u32::MAX.to_le_bytes());
        assert_eq!(probe_bytes(&l).unwrap().uuid, None);
    }

    /// Garbage behind each magic number, from a fixed xorshift seed: the parsers of
    /// lengths and offsets (NTFS records, exFAT directories) must bound every access.
    #[test]
    fn garbage_behind_magic_numbers_does_not_panic() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let plant: [(usize, &[u8]); 9] = [
            (3, b"NTFS    "),
            (3, b"EXFAT   "),
            (0x52, b"FAT32"),
            (0x36, b"FAT"),
            (0, b"XFSB"),
            (0, b"LUKS\xba\xbe"),
            (512, b"LABELONE"),
            (1024 + 0x38, &[0x53, 0xef]),
            (0x10040, b"_BHRfS_M"),
        ];
        let mut b = vec![0u8; PROBE_LEN];
        for round in 0..300 {
            for w in b.chunks_mut(8) {
                let r = rnd().to_le_bytes();
                w.copy_from_slice(&r[..w.len()]);
            }
            let (at, magic) = plant[round % plant.len()];
            put(&mut b, at, magic);
            put(&mut b, 510, &[0x55, 0xaa]);
            // Small values where a parser takes offsets, so deeper paths are reached.
            if round % 2 == 0 {
                put(&mut b, 0x0b, &[0, 2, 1]);
                put(&mut b, 0x30, &2u64.to_le_bytes());
                b[0x40] = 0xf6;
                put(&mut b, 4096, b"FILE");
                put(&mut b, 0x58, &16u32.to_le_bytes());
                put(&mut b, 0x60, &2u32.to_le_bytes());
                b[0x6c] = 9;
                b[0x6d] = 0;
                b[8192] = 0x83;
            }
            let _ = probe_bytes(&b);
            let _ = probe_bytes(&b[..(rnd() as usize) % b.len()]);
        }
    }

    /// Reads like a disk whose sectors from `bad` on fail, counting the reads.
    struct Failing {
        data: Vec<u8>,
        bad: usize,
        reads: std::cell::Cell<usize>,
    }

    impl Volume for Failing {
        fn read(&self, offset: u64, len: usize) -> Vec<u8> {
            self.reads.set(self.reads.get() + 1);
            let end = (offset as usize).saturating_add(len).min(self.bad);
            self.data
                .get(offset as usize..end)
                .unwrap_or_default()
                .to_vec()
        }
        fn size(&self) -> Option<u64> {
            Some(self.data.len() as u64)
        }
    }

    #[test]
    fn an_unreadable_head_is_read_once() {
        let v = Failing {
            data: md_at_end(1),
            bad: 4096,
            reads: Default::default(),
        };
        // The ext superblock in the readable part is still seen.
        assert_eq!(probe(&v).unwrap().fstype, "ext4");
        assert_eq!(v.reads.get(), 1);
        // Readable up to the superblock at the end: found there.
        let v = Failing {
            bad: usize::MAX,
            ..v
        };
        assert_eq!(probe(&v).unwrap().fstype, "linux_raid_member");
    }

    #[test]
    fn windows_stay_inside_their_partition() {
        let t = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(t.path(), (0..=255u8).cycle().take(8192).collect::<Vec<_>>()).unwrap();
        let f = File::open(t.path()).unwrap();
        let w = Window::new(&f, 4096, 100);
        assert_eq!(w.read(0, 4), vec![0, 1, 2, 3]);
        assert_eq!(w.read(98, 10).len(), 2);
        assert!(w.read(200, 10).is_empty());
        assert!(Window::new(&f, u64::MAX, 10).read(5, 10).is_empty());
        assert!(Window::new(&f, 8000, u64::MAX).read(0, 1000).len() == 192);
    }
}
