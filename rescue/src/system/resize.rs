//! Restoring an image onto a disk of another size: whether its partitions fit,
//! where the image is cut, and the GPT structures rewritten for the new end of
//! the disk as `sgdisk -e` would (backup array and header at the end, primary
//! header's alternate and last usable LBA, CRCs). Pure functions of the table
//! bytes and the sizes; `restore` reads and writes.
//!
//! The table comes from a backup (from its owner's failing disk, through a
//! server): every field is checked before it is used, a bad one is an error.

use std::fs::File;
use std::os::unix::fs::FileExt;

use anyhow::{Context, Result, bail};

use crate::proto::msg::DiskLayout;
use crate::system::partitions::{self, PartitionTable, le32, le64};
use crate::util::human_bytes;

/// The largest GPT entry array a restore rewrites (as partitions.rs reads).
const MAX_ARRAY_BYTES: u64 = 1 << 20;

/// What a restore onto a target of another size does, decided before anything
/// is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The image is written up to here (bytes); the rest is not sent.
    pub cut: u64,
    /// After the image: rewrite the GPT for the target's size.
    pub fix_gpt: bool,
    /// A GPT backup header the target held from before, beyond the image, to
    /// be zeroed (byte offset of its sector).
    pub zero_stale: Option<u64>,
    /// What changes, in words, for the confirmation and the summary.
    pub changes: Vec<String>,
}

/// A write that makes the tables right: `bytes` at byte `off`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Patch {
    pub off: u64,
    pub bytes: Vec<u8>,
    /// What it is, in words ("GPT backup header at LBA 8191").
    pub what: String,
}

/// The layout of an image the server describes in its listing.
pub fn layout_of(table: Option<&PartitionTable>, sector: u32) -> DiskLayout {
    let mut l = DiskLayout {
        table: "none".into(),
        sector,
        end: 0,
        last: 0,
        gpt_array_bytes: 0,
    };
    let Some(t) = table else { return l };
    l.table = t.kind.clone();
    l.gpt_array_bytes = t.gpt_array_bytes;
    for e in &t.entries {
        let end = e.start_bytes.saturating_add(e.size_bytes);
        if end > l.end {
            l.end = end;
            l.last = e.number;
        }
    }
    l
}

/// Sectors a GPT entry array of `bytes` takes.
fn array_sectors(bytes: u64, sector: u64) -> u64 {
    bytes.div_ceil(sector)
}

/// Decides how an image of `source` bytes with layout `l` goes onto a target of
/// `target` bytes with `target_sector`-byte sectors. `stale_gpt`: the target's
/// last sector holds a GPT header from before. Err: refused, the message says
/// why (both sizes, where the last partition ends).
pub fn plan(
    l: &DiskLayout,
    source: u64,
    target: u64,
    target_sector: u32,
    stale_gpt: bool,
) -> std::result::Result<Plan, String> {
    let sector = u64::from(l.sector);
    if !(512..=65536).contains(&l.sector) || !l.sector.is_power_of_two() {
        return Err(format!(
            "the backup's disk has an impossible sector size of {} bytes",
            l.sector
        ));
    }
    let sizes = format!(
        "the target holds {} ({target} bytes), the image is {} ({source} bytes)",
        human_bytes(target),
        human_bytes(source)
    );
    if l.table != "none" && target_sector != l.sector {
        return Err(format!(
            "{sizes}; the backup's disk has {}-byte sectors and the target {target_sector}-byte ones: its partition table would point to the wrong places",
            l.sector
        ));
    }
    let mut p = Plan {
        cut: source.min(target),
        fix_gpt: false,
        zero_stale: None,
        changes: Vec::new(),
    };
    if source == target {
        return Ok(p);
    }
    let last_lba = |size: u64| (size / sector).saturating_sub(1);
    let ends = format!(
        "its last partition ({}) ends at byte {} (LBA {})",
        l.last,
        l.end,
        (l.end / sector).saturating_sub(1)
    );
    match l.table.as_str() {
        "gpt" => gpt_plan(l, source, target, &sizes, &ends, &mut p)?,
        "dos" | "none" if target > source => {
            p.changes.push(if l.table == "dos" {
                "MBR: nothing to change (an MBR does not record the disk's size); the space after the image stays unpartitioned".into()
            } else {
                "no partition table: the image is written whole; the space after it stays unused".into()
            });
        }
        "dos" => {
            if l.end > target {
                return Err(format!(
                    "{sizes}; {ends}: the target must hold at least {} bytes",
                    l.end
                ));
            }
            p.cut = l.end.max(512).min(source);
            p.changes.push(format!(
                "image cut at byte {} ({}), after the last partition ({}); the MBR stays as it is",
                p.cut,
                human_bytes(p.cut),
                l.last
            ));
        }
        _ => {
            return Err(format!(
                "{sizes} and has no partition table (a filesystem on the whole disk, or unknown contents) that shows what could be left out: restore it onto a target at least as large"
            ));
        }
    }
    if stale_gpt && !p.fix_gpt && last_lba(target) * sector >= p.cut {
        let at = last_lba(target) * sector;
        p.zero_stale = Some(at);
        p.changes.push(format!(
            "a GPT backup header the target held from before (LBA {}) zeroed",
            last_lba(target)
        ));
    }
    Ok(p)
}

/// The GPT part of [`plan`]: room for the backup array and header after the
/// last partition, and what moves.
fn gpt_plan(
    l: &DiskLayout,
    source: u64,
    target: u64,
    sizes: &str,
    ends: &str,
    p: &mut Plan,
) -> std::result::Result<(), String> {
    let sector = u64::from(l.sector);
    let last_lba = |size: u64| (size / sector).saturating_sub(1);
    let arr = array_sectors(l.gpt_array_bytes, sector);
    if l.gpt_array_bytes == 0 || l.gpt_array_bytes > MAX_ARRAY_BYTES {
        return Err(format!(
            "the backup's GPT declares a partition array of {} bytes",
            l.gpt_array_bytes
        ));
    }
    // The backup array and header at the target's end, and the last
    // partition before them.
    let need = l
        .end
        .max((2 + arr) * sector)
        .saturating_add((arr + 1) * sector);
    if target / sector * sector < need {
        return Err(format!(
            "{sizes}; {ends} and the backup GPT needs {} after it: the target must hold at least {need} bytes",
            human_bytes((arr + 1) * sector)
        ));
    }
    p.fix_gpt = true;
    let new_last = last_lba(target);
    p.changes.push(format!(
        "GPT backup header moved from LBA {} to {new_last}, its partition array to LBA {}",
        last_lba(source),
        new_last - arr
    ));
    p.changes.push(format!(
        "GPT last usable LBA becomes {}, primary header and CRCs updated",
        new_last - arr - 1
    ));
    if target < source {
        p.cut = l.end.max((2 + arr) * sector).min(source);
        p.changes.push(format!(
            "image cut at byte {} ({}), after the last partition ({})",
            p.cut,
            human_bytes(p.cut),
            l.last
        ));
    } else {
        p.changes.push(format!(
            "the source's backup GPT (LBA {} and its array) zeroed",
            last_lba(source)
        ));
    }
    Ok(())
}

/// Whether a sector starts with a GPT header signature.
pub fn is_gpt_header(block: &[u8]) -> bool {
    block.starts_with(b"EFI PART")
}

/// The table of an image written onto a target, read back from its first
/// sectors: the MBR, the primary GPT header and its entry array.
pub struct GptHead<'a> {
    pub mbr: &'a [u8],
    pub header: &'a [u8],
    pub array: &'a [u8],
}

/// Where the primary GPT's entry array lies and how long it is, from the
/// header sector (checked: signature, CRC, at LBA 1, sizes bounded).
pub fn gpt_array_at(header: &[u8], sector: u32) -> Result<(u64, usize)> {
    let Some(h) = partitions::parse_gpt_header(header) else {
        bail!("no GPT header at LBA 1");
    };
    if !h.crc_ok || h.my_lba != 1 {
        bail!("the primary GPT header is damaged (CRC32 mismatch or not at LBA 1)");
    }
    let bytes = u64::from(h.num_entries) * u64::from(h.entry_size);
    if !(128..=4096).contains(&h.entry_size)
        || !h.entry_size.is_multiple_of(128)
        || bytes == 0
        || bytes > MAX_ARRAY_BYTES
    {
        bail!(
            "the GPT declares {} entries of {} bytes",
            h.num_entries,
            h.entry_size
        );
    }
    let off = h
        .entries_lba
        .checked_mul(u64::from(sector))
        .filter(|_| h.entries_lba >= 2 && h.entries_lba < h.first_usable_lba);
    match off {
        Some(off) => Ok((off, bytes as usize)),
        None => bail!(
            "the GPT's partition array at LBA {} is not between the header and the first usable LBA {}",
            h.entries_lba,
            h.first_usable_lba
        ),
    }
}

fn put32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

fn put64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

/// Recomputes a header's CRC32 (over its declared size, the field zeroed).
fn seal(h: &mut [u8], size: usize) {
    put32(h, 16, 0);
    let crc = crc32fast::hash(&h[..size]);
    put32(h, 16, crc);
}

/// The writes that make an image's GPT right for a target of `target` bytes:
/// protective MBR size, primary header (alternate LBA, last usable LBA, CRCs),
/// the partition array when `grow` extends the last partition to the new end,
/// the backup array and header at the end, and the image's own backup GPT
/// zeroed when it now lies inside the target. Refuses a table whose
/// partitions do not fit.
pub fn gpt_patches(
    head: &GptHead,
    source: u64,
    target: u64,
    sector: u32,
    grow: bool,
) -> Result<Vec<Patch>> {
    let (array_off, array_len) = gpt_array_at(head.header, sector)?;
    let Some(h) = partitions::parse_gpt_header(head.header) else {
        bail!("no GPT header at LBA 1");
    };
    if head.array.len() != array_len || crc32fast::hash(head.array) != h.entries_crc {
        bail!("the GPT partition array does not match its header's CRC32");
    }
    let sec = u64::from(sector);
    let arr = array_sectors(array_len as u64, sec);
    let new_last = (target / sec).saturating_sub(1);
    let Some(new_usable) = new_last
        .checked_sub(arr + 1)
        .filter(|&u| u >= h.first_usable_lba)
    else {
        bail!("a target of {target} bytes has no room for a GPT with a {array_len}-byte array");
    };
    let mut array = head.array.to_vec();
    let entry = h.entry_size as usize;
    let (last_slot, last_end) = last_entry(&array, entry)?;
    if last_end > new_usable {
        bail!(
            "partition {} ends at LBA {last_end}, after the target's last usable LBA {new_usable}",
            last_slot + 1
        );
    }
    let mut out = Vec::new();
    if let Some(p) = protective_mbr(head.mbr, new_last) {
        out.push(p);
    }
    let grown = grow && last_end < new_usable && last_slot < array.len() / entry;
    if grown {
        put64(&mut array, last_slot * entry + 40, new_usable);
        out.push(Patch {
            off: array_off,
            bytes: array.clone(),
            what: format!(
                "partition {} grown from LBA {last_end} to end at LBA {new_usable} (its filesystem is not: grow it with resize2fs, xfs_growfs or btrfs filesystem resize)",
                last_slot + 1
            ),
        });
    }
    let array_crc = crc32fast::hash(&array);
    let size = h.header_size as usize;
    let mut primary = head.header.to_vec();
    put64(&mut primary, 32, new_last);
    put64(&mut primary, 48, new_usable);
    put32(&mut primary, 88, array_crc);
    seal(&mut primary, size);
    out.push(Patch {
        off: sec,
        bytes: primary.clone(),
        what: format!(
            "primary GPT header: backup at LBA {new_last} (was {}), last usable LBA {new_usable} (was {})",
            h.alternate_lba, h.last_usable_lba
        ),
    });
    out.extend(stale_backup(&h, source, target, sec, arr, last_end));
    let mut backup = primary;
    put64(&mut backup, 24, new_last);
    put64(&mut backup, 32, 1);
    put64(&mut backup, 72, new_last - arr);
    seal(&mut backup, size);
    out.push(Patch {
        off: (new_last - arr) * sec,
        bytes: array,
        what: format!("GPT backup partition array at LBA {}", new_last - arr),
    });
    out.push(Patch {
        off: new_last * sec,
        bytes: backup,
        what: format!("GPT backup header at LBA {new_last}"),
    });
    Ok(out)
}

/// The used entry that ends last: (slot, last LBA). Entries with a range that
/// ends before it starts are refused (a table no tool would write).
fn last_entry(array: &[u8], entry: usize) -> Result<(usize, u64)> {
    let mut best = (usize::MAX, 0u64);
    for (i, e) in array.chunks_exact(entry).enumerate() {
        if e[0..16].iter().all(|&b| b == 0) {
            continue;
        }
        let (first, last) = (le64(e, 32), le64(e, 40));
        if last < first {
            bail!(
                "GPT partition {} ends (LBA {last}) before it starts (LBA {first})",
                i + 1
            );
        }
        if best.0 == usize::MAX || last > best.1 {
            best = (i, last);
        }
    }
    Ok(best)
}

/// A protective MBR (one 0xEE entry from LBA 1) sized for the new disk: it
/// covers the disk up to its last LBA, at most 2^32 - 1 sectors. Hybrid MBRs
/// (other entries beside it) are left alone.
fn protective_mbr(mbr: &[u8], new_last: u64) -> Option<Patch> {
    if mbr.len() < 512 || mbr[510] != 0x55 || mbr[511] != 0xAA {
        return None;
    }
    let slots: Vec<usize> = (0..4).map(|i| 446 + i * 16).collect();
    let pmbr: Vec<usize> = slots
        .iter()
        .copied()
        .filter(|&o| mbr[o + 4] == 0xEE)
        .collect();
    let others = slots.iter().any(|&o| mbr[o + 4] != 0 && mbr[o + 4] != 0xEE);
    let [o] = pmbr[..] else { return None };
    if others || le32(mbr, o + 8) != 1 {
        return None;
    }
    let sectors = u32::try_from(new_last).unwrap_or(u32::MAX);
    if le32(mbr, o + 12) == sectors {
        return None;
    }
    let mut m = mbr[..512].to_vec();
    put32(&mut m, o + 12, sectors);
    Some(Patch {
        off: 0,
        bytes: m,
        what: format!(
            "protective MBR covers {sectors} sectors (was {})",
            le32(mbr, o + 12)
        ),
    })
}

/// Zeros the image's own backup GPT (header and array) when a larger target
/// holds it in what is now free space after the last partition: left there it
/// would be taken for a table by tools that scan for one.
fn stale_backup(
    h: &partitions::GptHeader,
    source: u64,
    target: u64,
    sec: u64,
    arr: u64,
    last_end: u64,
) -> Option<Patch> {
    let old_last = (source / sec).checked_sub(1)?;
    let new_array = (target / sec).saturating_sub(1 + arr);
    let from = old_last.checked_sub(arr)?;
    if target <= source || from <= last_end || old_last >= new_array || h.alternate_lba != old_last
    {
        return None;
    }
    Some(Patch {
        off: from * sec,
        bytes: vec![0; ((arr + 1) * sec) as usize],
        what: format!("the image's backup GPT at LBA {old_last} (and its array) zeroed"),
    })
}

// ------------------------------------------------------------------ on a target

/// The plan for one target before anything is written: `target` is None for a
/// new image file (made the image's size). A target's sector size is the
/// disk's, an image file's the source's; its last sector is read to find a
/// GPT header left from before.
pub fn for_target(
    layout: Option<&DiskLayout>,
    source: u64,
    target: Option<(&File, u64)>,
) -> std::result::Result<Plan, String> {
    let same = Plan {
        cut: source,
        fix_gpt: false,
        zero_stale: None,
        changes: Vec::new(),
    };
    let Some((file, size)) = target.filter(|&(_, size)| size != source) else {
        return Ok(same);
    };
    let l = match layout {
        Some(l) => l,
        None if size > source => {
            // Known only once written: finish() rewrites a GPT it finds then.
            return Ok(Plan {
                changes: vec![
                    "the server (an older version) does not describe the image's partitions: a GPT found after writing is moved to the new end".into(),
                ],
                ..same
            });
        }
        None => {
            return Err(format!(
                "the target holds {} ({size} bytes) but the image is {} ({source} bytes), and the server (an older version) does not describe the image's partitions",
                human_bytes(size),
                human_bytes(source)
            ));
        }
    };
    let sector = if crate::system::blkdev::is_block(file) {
        crate::system::blkdev::logical_sector(file)
    } else {
        l.sector
    };
    let mut last = vec![0u8; sector as usize];
    let at = (size / u64::from(sector)).saturating_sub(1) * u64::from(sector);
    let stale = file.read_exact_at(&mut last, at).is_ok() && is_gpt_header(&last);
    plan(l, source, size, sector, stale)
}

/// After the image is on the target: its GPT made right for the target's size
/// (read back from the target, the bytes that were written), and a stale GPT
/// header zeroed. Returns what was done, in words; nothing for a target of the
/// image's size.
pub fn finish(file: &File, p: &Plan, source: u64, target: u64, grow: bool) -> Result<Vec<Patch>> {
    if source == target {
        return Ok(Vec::new());
    }
    let mut patches = Vec::new();
    if let Some(sector) = [512u32, 4096].into_iter().find(|&s| gpt_at(file, s)) {
        let read = |off: u64, len: usize| -> Result<Vec<u8>> {
            let mut b = vec![0u8; len];
            file.read_exact_at(&mut b, off)
                .with_context(|| format!("reading {len} bytes at {off} back"))?;
            Ok(b)
        };
        let header = read(u64::from(sector), sector as usize)?;
        let (off, len) = gpt_array_at(&header, sector)?;
        let head = GptHead {
            mbr: &read(0, 512)?,
            header: &header,
            array: &read(off, len)?,
        };
        patches = gpt_patches(&head, source, target, sector, grow)
            .context("rewriting the GPT for the target's size")?;
    }
    if let Some(at) = p.zero_stale {
        let len = (target - at).min(65536) as usize;
        patches.push(Patch {
            off: at,
            bytes: vec![0; len],
            what: "a GPT backup header left from the target's previous contents zeroed".into(),
        });
    }
    for pa in &patches {
        file.write_all_at(&pa.bytes, pa.off)
            .with_context(|| format!("writing the {}", pa.what))?;
    }
    file.sync_all()
        .context("syncing the new partition tables")?;
    Ok(patches)
}

fn gpt_at(file: &File, sector: u32) -> bool {
    let mut b = vec![0u8; sector as usize];
    file.read_exact_at(&mut b, u64::from(sector)).is_ok() && is_gpt_header(&b)
}

/// --verify of the tables: each write read back.
pub fn check_patches(file: &File, patches: &[Patch]) -> Result<Option<String>> {
    for pa in patches {
        let mut b = vec![0u8; pa.bytes.len()];
        file.read_exact_at(&mut b, pa.off)
            .with_context(|| format!("reading back the {}", pa.what))?;
        if b != pa.bytes {
            return Ok(Some(format!("the {} reads back differently", pa.what)));
        }
    }
    Ok(None)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const SEC: u64 = 512;

    /// A GPT disk image as sfdisk writes one: protective MBR, header at LBA 1,
    /// 128 entries from LBA 2, backup array and header at the end.
    fn gpt_image(size: u64, parts: &[(u64, u64)]) -> Vec<u8> {
        let mut img = vec![0u8; size as usize];
        let last = size / SEC - 1;
        img[446 + 4] = 0xEE;
        put32(&mut img, 446 + 8, 1);
        put32(&mut img, 446 + 12, u32::try_from(last).unwrap_or(u32::MAX));
        img[510] = 0x55;
        img[511] = 0xAA;
        let mut array = vec![0u8; 128 * 128];
        for (i, &(first, end)) in parts.iter().enumerate() {
            let e = &mut array[i * 128..(i + 1) * 128];
            e[0..16].copy_from_slice(&[
                0xaf, 0x3d, 0xc6, 0x0f, 0x83, 0x84, 0x72, 0x47, 0x8e, 0x79, 0x3d, 0x69, 0xd8, 0x47,
                0x7d, 0xe4,
            ]);
            e[16] = i as u8 + 1;
            put64(e, 32, first);
            put64(e, 40, end);
        }
        let mut h = vec![0u8; 512];
        h[0..8].copy_from_slice(b"EFI PART");
        put32(&mut h, 8, 0x0001_0000);
        put32(&mut h, 12, 92);
        put64(&mut h, 24, 1);
        put64(&mut h, 32, last);
        put64(&mut h, 40, 34);
        put64(&mut h, 48, last - 33);
        h[56] = 0x42;
        put64(&mut h, 72, 2);
        put32(&mut h, 80, 128);
        put32(&mut h, 84, 128);
        put32(&mut h, 88, crc32fast::hash(&array));
        seal(&mut h, 92);
        let mut b = h.clone();
        put64(&mut b, 24, last);
        put64(&mut b, 32, 1);
        put64(&mut b, 72, last - 32);
        seal(&mut b, 92);
        img[512..1024].copy_from_slice(&h);
        img[1024..1024 + array.len()].copy_from_slice(&array);
        let bo = ((last - 32) * SEC) as usize;
        img[bo..bo + array.len()].copy_from_slice(&array);
        img[(last * SEC) as usize..].copy_from_slice(&b);
        img
    }

    /// The image as restored: the first `cut` bytes on a zeroed (or `fill`ed)
    /// target of `target` bytes, then the patches.
    fn restored(img: &[u8], target: u64, grow: bool, fill: u8) -> (Plan, Vec<u8>) {
        let table = partitions::read_table_bytes(img, 512).unwrap();
        let l = layout_of(table.as_ref(), 512);
        let p = plan(&l, img.len() as u64, target, 512, false).unwrap();
        let mut t = vec![fill; target as usize];
        t[..p.cut as usize].copy_from_slice(&img[..p.cut as usize]);
        let (off, len) = gpt_array_at(&t[512..1024], 512).unwrap();
        let head = GptHead {
            mbr: &t[..512],
            header: &t[512..1024],
            array: &t[off as usize..off as usize + len],
        };
        let patches = gpt_patches(&head, img.len() as u64, target, 512, grow).unwrap();
        for pa in patches {
            t[pa.off as usize..pa.off as usize + pa.bytes.len()].copy_from_slice(&pa.bytes);
        }
        (p, t)
    }

    fn assert_clean_gpt(t: &[u8], want: &PartitionTable) {
        let got = partitions::read_table_bytes(t, 512).unwrap().unwrap();
        assert!(got.warnings.is_empty(), "{:?}", got.warnings);
        assert_eq!(got.entries, want.entries);
        let last = t.len() as u64 / SEC - 1;
        let p = partitions::parse_gpt_header(&t[512..1024]).unwrap();
        let b = partitions::parse_gpt_header(&t[(last * SEC) as usize..]).unwrap();
        assert!(p.crc_ok && b.crc_ok);
        assert_eq!((p.alternate_lba, p.last_usable_lba), (last, last - 33));
        assert_eq!(
            (b.my_lba, b.alternate_lba, b.entries_lba),
            (last, 1, last - 32)
        );
        assert_eq!(b.entries_crc, p.entries_crc);
        let a = &t[((last - 32) * SEC) as usize..(last * SEC) as usize];
        assert_eq!(crc32fast::hash(a), p.entries_crc);
        assert_eq!(le32(t, 446 + 12), last as u32);
    }

    const MIB: u64 = 1 << 20;

    #[test]
    fn larger_gpt_moves_the_backup_to_the_new_end() {
        let img = gpt_image(4 * MIB, &[(2048, 4095), (4096, 6143)]);
        let src = partitions::read_table_bytes(&img, 512).unwrap().unwrap();
        let (p, t) = restored(&img, 8 * MIB, false, 0x5a);
        assert_eq!(p.cut, 4 * MIB);
        assert!(p.fix_gpt);
        assert!(
            p.changes[0].contains("from LBA 8191 to 16383"),
            "{:?}",
            p.changes
        );
        assert_clean_gpt(&t, &src);
        // The source's backup GPT, now in free space, is gone.
        let old = 8191 * SEC as usize;
        assert!(t[old - 32 * 512..old + 512].iter().all(|&b| b == 0));
        // Partition bytes are the image's.
        assert_eq!(&t[2048 * 512..6144 * 512], &img[2048 * 512..6144 * 512]);
    }

    #[test]
    fn grow_extends_the_last_partition_to_the_new_end() {
        let img = gpt_image(4 * MIB, &[(2048, 4095), (4096, 6143)]);
        let (_, t) = restored(&img, 8 * MIB, true, 0);
        let got = partitions::read_table_bytes(&t, 512).unwrap().unwrap();
        assert!(got.warnings.is_empty(), "{:?}", got.warnings);
        assert_eq!(got.entries[0].size_bytes, 2048 * SEC);
        assert_eq!(
            got.entries[1].start_bytes + got.entries[1].size_bytes,
            (16383 - 32) * SEC
        );
        // The primary array changed too and both CRCs agree.
        assert_eq!(&t[1024..1024 + 16384], &t[(16383 - 32) * 512..16383 * 512]);
    }

    #[test]
    fn smaller_gpt_fits_to_the_sector_and_is_refused_one_sector_less() {
        let img = gpt_image(4 * MIB, &[(2048, 4095)]);
        let src = partitions::read_table_bytes(&img, 512).unwrap().unwrap();
        // The partition ends at byte 4096*512; the backup array and header take 33.
        let fits = (4096 + 33) * SEC;
        let (p, t) = restored(&img, fits, false, 0x5a);
        assert_eq!(p.cut, 4096 * SEC);
        assert!(
            p.changes
                .iter()
                .any(|c| c.contains("image cut at byte 2097152")),
            "{:?}",
            p.changes
        );
        assert_clean_gpt(&t, &src);
        let l = layout_of(Some(&src), 512);
        let e = plan(&l, 4 * MIB, fits - SEC, 512, false).unwrap_err();
        assert!(e.contains(&format!("{} bytes", fits - SEC)), "{e}");
        assert!(e.contains("4194304 bytes"), "{e}");
        assert!(e.contains("ends at byte 2097152 (LBA 4095)"), "{e}");
        assert!(e.contains(&format!("at least {fits} bytes")), "{e}");
    }

    #[test]
    fn patches_refuse_partitions_that_do_not_fit() {
        let img = gpt_image(4 * MIB, &[(2048, 4095)]);
        let head = GptHead {
            mbr: &img[..512],
            header: &img[512..1024],
            array: &img[1024..1024 + 16384],
        };
        assert!(gpt_patches(&head, 4 * MIB, (4096 + 33) * SEC, 512, false).is_ok());
        let e = gpt_patches(&head, 4 * MIB, (4096 + 32) * SEC, 512, false).unwrap_err();
        assert!(
            format!("{e}").contains("partition 1 ends at LBA 4095"),
            "{e}"
        );
    }

    fn mbr_table(parts: &[(u32, u64, u64, &str)]) -> PartitionTable {
        PartitionTable {
            kind: "dos".into(),
            disk_guid: None,
            entries: parts
                .iter()
                .map(|&(number, start, size, type_id)| partitions::TableEntry {
                    number,
                    start_bytes: start,
                    size_bytes: size,
                    type_name: "Linux".into(),
                    type_id: type_id.into(),
                    name: None,
                    uuid: None,
                })
                .collect(),
            warnings: Vec::new(),
            gpt_array_bytes: 0,
        }
    }

    #[test]
    fn mbr_larger_changes_nothing_smaller_needs_every_partition() {
        // A primary, an extended container and a logical partition ending last.
        let t = mbr_table(&[
            (1, MIB, MIB, "0x83"),
            (2, 2 * MIB, 2 * MIB, "0x05"),
            (5, 2 * MIB + SEC, 2 * MIB - SEC, "0x83"),
        ]);
        let l = layout_of(Some(&t), 512);
        assert_eq!((l.end, l.last), (4 * MIB, 2));
        let p = plan(&l, 8 * MIB, 16 * MIB, 512, false).unwrap();
        assert_eq!(p.cut, 8 * MIB);
        assert!(!p.fix_gpt && p.zero_stale.is_none());
        assert!(
            p.changes[0].contains("nothing to change"),
            "{:?}",
            p.changes
        );
        let p = plan(&l, 8 * MIB, 4 * MIB, 512, false).unwrap();
        assert_eq!(p.cut, 4 * MIB);
        let e = plan(&l, 8 * MIB, 4 * MIB - SEC, 512, false).unwrap_err();
        assert!(e.contains("ends at byte 4194304"), "{e}");
        // A logical partition beyond its container counts too.
        let t = mbr_table(&[(2, MIB, MIB, "0x05"), (5, MIB + SEC, 3 * MIB, "0x83")]);
        let l = layout_of(Some(&t), 512);
        assert_eq!((l.end, l.last), (4 * MIB + SEC, 5));
    }

    #[test]
    fn no_table_larger_is_fine_smaller_refused() {
        let l = layout_of(None, 512);
        let p = plan(&l, 8 * MIB, 9 * MIB, 512, false).unwrap();
        assert_eq!(p.cut, 8 * MIB);
        let e = plan(&l, 8 * MIB, 7 * MIB, 512, false).unwrap_err();
        assert!(e.contains("no partition table"), "{e}");
        assert!(
            e.contains("7340032 bytes") && e.contains("8388608 bytes"),
            "{e}"
        );
        // Same size: nothing at all.
        let p = plan(&l, 8 * MIB, 8 * MIB, 4096, false).unwrap();
        assert!(p.changes.is_empty() && p.cut == 8 * MIB);
    }

    #[test]
    fn stale_backup_gpt_on_the_target_is_zeroed_and_sectors_must_agree() {
        let t = mbr_table(&[(1, MIB, MIB, "0x83")]);
        let l = layout_of(Some(&t), 512);
        let p = plan(&l, 8 * MIB, 16 * MIB, 512, true).unwrap();
        assert_eq!(p.zero_stale, Some(16 * MIB - SEC));
        let e = plan(&l, 8 * MIB, 16 * MIB, 4096, false).unwrap_err();
        assert!(e.contains("512-byte sectors"), "{e}");
        assert!(is_gpt_header(b"EFI PART....") && !is_gpt_header(&[0; 512]));
    }

    #[test]
    fn hostile_tables_are_errors_not_panics() {
        let img = gpt_image(4 * MIB, &[(2048, 4095)]);
        let mut seed = 0x1234_5678_9abc_def0u64;
        for round in 0..3000 {
            let mut h = img[..34 * 512].to_vec();
            for _ in 0..1 + round % 8 {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let at = (seed >> 33) as usize
                    % h.len().min(if round % 2 == 0 { 1024 } else { h.len() });
                h[at] = (seed >> 17) as u8;
            }
            if round % 3 == 0 {
                // Keep the CRC right so the checks behind it are reached.
                let size = (le32(&h, 512 + 12) as usize).clamp(92, 512);
                seal(&mut h[512..1024], size);
            }
            let Ok((off, len)) = gpt_array_at(&h[512..1024], 512) else {
                continue;
            };
            let end = (off as usize).saturating_add(len).min(h.len());
            let array = h.get(off as usize..end).unwrap_or(&[]);
            let head = GptHead {
                mbr: &h[..512],
                header: &h[512..1024],
                array,
            };
            for target in [0, 512, 40 * 512, 2 * MIB, 8 * MIB] {
                let _ = gpt_patches(&head, 4 * MIB, target, 512, round % 2 == 0);
            }
        }
        let bad = DiskLayout {
            table: "gpt".into(),
            sector: 512,
            end: u64::MAX,
            last: 1,
            gpt_array_bytes: u64::MAX,
        };
        assert!(plan(&bad, 1 << 40, 1 << 30, 512, false).is_err());
        let bad = DiskLayout { sector: 100, ..bad };
        assert!(plan(&bad, 1 << 40, 1 << 30, 512, false).is_err());
    }
}
