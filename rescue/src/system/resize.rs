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
use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::proto::msg::DiskLayout;
use crate::system::partitions::{self, PartitionTable, le32, le64};
use crate::util::human_bytes;

/// The largest GPT entry array a restore rewrites (as partitions.rs reads).
const MAX_ARRAY_BYTES: u64 = 1 << 20;

/// What a restore onto a target of another size does, decided before anything
/// is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    /// The image is written up to here (bytes); the rest is not sent.
    pub(crate) cut: u64,
    /// After the image: rewrite the GPT for the target's size.
    pub(crate) fix_gpt: bool,
    /// A GPT backup header the target held from before, beyond the image, to
    /// be zeroed (byte offset of its sector).
    pub(crate) zero_stale: Option<u64>,
    /// What changes, in words, for the confirmation.
    pub(crate) changes: Vec<String>,
    /// The number of the partition that ends last (0: none known).
    pub(crate) last: u32,
    /// The target's logical sector size.
    pub(crate) sector: u32,
}

/// A write that makes the tables right: `bytes` at byte `off`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Patch {
    pub(crate) off: u64,
    pub(crate) bytes: Vec<u8>,
    /// What it is, in words ("GPT backup header at LBA 8191").
    pub(crate) what: String,
    /// The target's bytes there before the patch (what the image put there),
    /// filled in by [`finish`]: `--verify` compares the image's digests with
    /// them, the patch with what is there now.
    pub(crate) was: Vec<u8>,
}

impl Patch {
    fn new(off: u64, bytes: Vec<u8>, what: String) -> Patch {
        Patch {
            off,
            bytes,
            what,
            was: Vec::new(),
        }
    }
}

/// What [`finish`] did to the target.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Done {
    /// The writes, each with the bytes it replaced.
    pub(crate) patches: Vec<Patch>,
    /// What was done, in words, for the summary and the log line.
    pub(crate) said: Vec<String>,
    /// The partition --grow extended: (number, first byte, bytes).
    pub(crate) grown: Option<(u32, u64, u64)>,
}

/// The layout of an image the server describes in its listing. The partition
/// that ends last is the one with the highest number among those ending at the
/// same byte: the last logical partition rather than the extended one holding it.
pub(crate) fn layout_of(table: Option<&PartitionTable>, sector: u32) -> DiskLayout {
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
        if end > l.end || (end == l.end && end > 0 && e.number > l.last) {
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

/// What a filesystem grown by --grow still needs (the table is all rescue changes).
const FS_NOT_GROWN: &str = "its filesystem is not: the summary says how to grow it";

/// The end (exclusive, in sectors) an MBR partition can be grown to on a disk
/// of `sectors`: 32-bit sector numbers address no further (2 TiB with 512-byte
/// sectors).
fn mbr_limit(sectors: u64) -> u64 {
    sectors.min(u64::from(u32::MAX))
}

/// Decides how an image of `source` bytes with layout `l` goes onto a target of
/// `target` bytes with `target_sector`-byte sectors. `stale_gpt`: the target's
/// last sector holds a GPT header from before; `grow`: --grow. Err: refused,
/// the message says why (both sizes, where the last partition ends).
pub(crate) fn plan(
    l: &DiskLayout,
    source: u64,
    target: u64,
    target_sector: u32,
    stale_gpt: bool,
    grow: bool,
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
        last: l.last,
        sector: l.sector,
    };
    if source == target {
        if grow {
            p.changes.push(GROW_SAME.into());
        }
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
        "gpt" => gpt_plan(l, source, target, &sizes, &ends, grow, &mut p)?,
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
    if grow && l.table != "gpt" {
        p.changes.push(mbr_grow_plan(l, target));
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

const GROW_SAME: &str = "--grow: the target is the image's size: nothing to grow";

/// What --grow will do to an MBR disk (or one without a table), before the
/// image is written: [`mbr_grow`] decides from the written table itself.
fn mbr_grow_plan(l: &DiskLayout, target: u64) -> String {
    let sector = u64::from(l.sector);
    let limit = mbr_limit(target / sector);
    if l.table != "dos" {
        return "--grow: no partition table, nothing to grow (a filesystem on the whole disk grows with its own tool: resize2fs, xfs_growfs, btrfs filesystem resize)".into();
    }
    if l.last > 4 {
        return format!(
            "--grow: partition {} is a logical partition inside an extended one: not grown (grow the extended partition and then partition {} with fdisk or parted, then its filesystem)",
            l.last, l.last
        );
    }
    if l.end / sector >= limit {
        return format!(
            "--grow: partition {} already ends at the end of what the MBR can address: nothing to grow",
            l.last
        );
    }
    format!(
        "partition {} grown to end at LBA {} ({FS_NOT_GROWN}){}",
        l.last,
        limit - 1,
        mbr_beyond(target / sector)
    )
}

/// Says that an MBR cannot use the whole of a disk of `sectors`, or nothing.
fn mbr_beyond(sectors: u64) -> String {
    if sectors <= u64::from(u32::MAX) {
        return String::new();
    }
    format!(
        "; an MBR addresses only the first {} sectors: the {} sectors after them stay unused (convert the disk to GPT to use them)",
        u32::MAX,
        sectors - u64::from(u32::MAX)
    )
}

/// The GPT part of [`plan`]: room for the backup array and header after the
/// last partition, and what moves.
fn gpt_plan(
    l: &DiskLayout,
    source: u64,
    target: u64,
    sizes: &str,
    ends: &str,
    grow: bool,
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
    let new_usable = new_last - arr - 1;
    p.changes.push(format!(
        "GPT backup header moved from LBA {} to {new_last}, its partition array to LBA {}",
        last_lba(source),
        new_last - arr
    ));
    p.changes.push(format!(
        "GPT last usable LBA becomes {new_usable}, primary header and CRCs updated"
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
    if grow {
        p.changes.push(if l.end / sector <= new_usable {
            format!(
                "partition {} grown to end at LBA {new_usable} ({FS_NOT_GROWN})",
                l.last
            )
        } else {
            format!(
                "--grow: partition {} already ends at the last usable LBA: nothing to grow",
                l.last
            )
        });
    }
    Ok(())
}

/// Whether a sector starts with a GPT header signature.
pub(crate) fn is_gpt_header(block: &[u8]) -> bool {
    block.starts_with(b"EFI PART")
}

/// The table of an image written onto a target, read back from its first
/// sectors: the MBR, the primary GPT header and its entry array.
pub(crate) struct GptHead<'a> {
    pub(crate) mbr: &'a [u8],
    pub(crate) header: &'a [u8],
    pub(crate) array: &'a [u8],
}

/// Where the primary GPT's entry array lies and how long it is, from the
/// header sector (checked: signature, CRC, at LBA 1, sizes bounded).
pub(crate) fn gpt_array_at(header: &[u8], sector: u32) -> Result<(u64, usize)> {
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
/// partitions do not fit. Returns the writes and what they do, in words.
pub(crate) fn gpt_patches(
    head: &GptHead,
    source: u64,
    target: u64,
    sector: u32,
    grow: bool,
) -> Result<Done> {
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
    let mut d = Done::default();
    d.said.push(format!(
        "GPT backup header moved from LBA {} to {new_last} (its partition array to LBA {}), last usable LBA {new_usable} (was {})",
        h.alternate_lba,
        new_last - arr,
        h.last_usable_lba
    ));
    d.patches.extend(protective_mbr(head.mbr, new_last));
    if grow {
        let at = Grow {
            array_off,
            entry,
            slot: last_slot,
            last_end,
            new_usable,
            sec,
        };
        grow_gpt(&mut array, &at, &mut d);
    }
    let array_crc = crc32fast::hash(&array);
    let size = h.header_size as usize;
    let mut primary = head.header.to_vec();
    put64(&mut primary, 32, new_last);
    put64(&mut primary, 48, new_usable);
    put32(&mut primary, 88, array_crc);
    seal(&mut primary, size);
    d.patches.push(Patch::new(
        sec,
        primary.clone(),
        format!(
            "primary GPT header: backup at LBA {new_last} (was {}), last usable LBA {new_usable} (was {})",
            h.alternate_lba, h.last_usable_lba
        ),
    ));
    if let Some(z) = stale_backup(&h, source, target, sec, arr, last_end) {
        d.said.push(z.what.clone());
        d.patches.push(z);
    }
    let mut backup = primary;
    put64(&mut backup, 24, new_last);
    put64(&mut backup, 32, 1);
    put64(&mut backup, 72, new_last - arr);
    seal(&mut backup, size);
    d.patches.push(Patch::new(
        (new_last - arr) * sec,
        array,
        format!("GPT backup partition array at LBA {}", new_last - arr),
    ));
    d.patches.push(Patch::new(
        new_last * sec,
        backup,
        format!("GPT backup header at LBA {new_last}"),
    ));
    Ok(d)
}

/// Where --grow extends a GPT's last partition: its slot of `entry` bytes in
/// the array at `array_off`, the LBA it ends at, and the new last usable LBA.
struct Grow {
    array_off: u64,
    entry: usize,
    slot: usize,
    last_end: u64,
    new_usable: u64,
    sec: u64,
}

/// --grow on a GPT: the partition that ends last extended to the last usable
/// LBA in `array`, the primary array's write and what was done added to `d`.
fn grow_gpt(array: &mut [u8], g: &Grow, d: &mut Done) {
    let used = g.slot < array.len() / g.entry;
    if !used || g.last_end >= g.new_usable {
        d.said.push(format!(
            "--grow: nothing grown: {}",
            if used {
                format!(
                    "partition {} already ends at the last usable LBA {}",
                    g.slot + 1,
                    g.new_usable
                )
            } else {
                "the GPT holds no partition".into()
            }
        ));
        return;
    }
    let e = &mut array[g.slot * g.entry..(g.slot + 1) * g.entry];
    let first = le64(e, 32);
    put64(e, 40, g.new_usable);
    let n = g.slot as u32 + 1;
    d.grown = Some((n, first * g.sec, (g.new_usable + 1 - first) * g.sec));
    d.said.push(format!(
        "partition {n} grown from LBA {first}-{} to LBA {first}-{}",
        g.last_end, g.new_usable
    ));
    d.patches.push(Patch::new(
        g.array_off,
        array.to_vec(),
        format!("primary GPT partition array (partition {n} grown)"),
    ));
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

/// Whether an MBR carries its 0x55AA signature.
fn has_mbr_signature(mbr: &[u8]) -> bool {
    mbr.len() >= 512 && mbr[510] == 0x55 && mbr[511] == 0xAA
}

/// A protective MBR (one 0xEE entry from LBA 1) sized for the new disk: it
/// covers the disk up to its last LBA, at most 2^32 - 1 sectors. Hybrid MBRs
/// (other entries beside it) are left alone.
fn protective_mbr(mbr: &[u8], new_last: u64) -> Option<Patch> {
    if !has_mbr_signature(mbr) {
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
    Some(Patch::new(
        0,
        m,
        format!(
            "protective MBR covers {sectors} sectors (was {})",
            le32(mbr, o + 12)
        ),
    ))
}

/// MBR partition types of an extended partition (a container of logical ones).
const EXTENDED: [u8; 3] = [0x05, 0x0f, 0x85];

/// The CHS address of `lba` as partitioning tools write it (255 heads, 63
/// sectors per track; beyond cylinder 1023 the largest address).
fn chs(lba: u64) -> [u8; 3] {
    let c = lba / (255 * 63);
    if c > 1023 {
        return [0xfe, 0xff, 0xff];
    }
    let (h, s) = ((lba / 63) % 255, lba % 63 + 1);
    [h as u8, (s as u8) | (((c >> 2) & 0xc0) as u8), c as u8]
}

/// --grow on an MBR: the primary partition that ends last, extended to the
/// end of a target of `sectors` (no further than 32-bit sector numbers
/// reach). Err: why nothing was grown.
fn mbr_grow(mbr: &[u8], sectors: u64, sec: u64) -> std::result::Result<Done, String> {
    if !has_mbr_signature(mbr) {
        return Err("the image has no MBR (no 0x55AA signature)".into());
    }
    let end = |o: usize| u64::from(le32(mbr, o + 8)) + u64::from(le32(mbr, o + 12));
    let Some(o) = (0..4)
        .map(|i| 446 + i * 16)
        .filter(|&o| mbr[o + 4] != 0 && le32(mbr, o + 12) != 0)
        .max_by_key(|&o| end(o))
    else {
        return Err("the MBR holds no partition".into());
    };
    let n = (o - 446) / 16 + 1;
    if mbr[o + 4] == 0xEE {
        return Err(format!(
            "partition {n} is a GPT's protective entry, and no valid GPT was found"
        ));
    }
    if EXTENDED.contains(&mbr[o + 4]) {
        return Err(format!(
            "partition {n}, which ends last, is an extended partition: logical partitions are not grown (grow partition {n} and then the last logical partition in it with fdisk or parted, then its filesystem)"
        ));
    }
    let limit = mbr_limit(sectors);
    let start = u64::from(le32(mbr, o + 8));
    if end(o) >= limit {
        return Err(format!(
            "partition {n} already ends at the end of {}",
            if sectors > limit {
                "what an MBR can address"
            } else {
                "the target"
            }
        ));
    }
    let mut m = mbr[..512].to_vec();
    put32(&mut m, o + 12, (limit - start) as u32);
    m[o + 5..o + 8].copy_from_slice(&chs(limit - 1));
    let said = format!(
        "partition {n} grown from LBA {start}-{} to LBA {start}-{}{}",
        end(o) - 1,
        limit - 1,
        mbr_beyond(sectors)
    );
    Ok(Done {
        patches: vec![Patch::new(0, m, format!("MBR (partition {n} grown)"))],
        said: vec![said],
        grown: Some((n as u32, start * sec, (limit - start) * sec)),
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
    Some(Patch::new(
        from * sec,
        vec![0; ((arr + 1) * sec) as usize],
        format!("the image's backup GPT at LBA {old_last} (and its array) zeroed"),
    ))
}

// ------------------------------------------------------------------ on a target

/// The plan for one target before anything is written: `target` is None for a
/// new image file (made the image's size). A target's sector size is the
/// disk's, an image file's the source's; its last sector is read to find a
/// GPT header left from before.
pub(crate) fn for_target(
    layout: Option<&DiskLayout>,
    source: u64,
    target: Option<(&File, u64)>,
    grow: bool,
) -> std::result::Result<Plan, String> {
    let same = Plan {
        cut: source,
        fix_gpt: false,
        zero_stale: None,
        changes: if grow {
            vec![GROW_SAME.into()]
        } else {
            Vec::new()
        },
        last: layout.map_or(0, |l| l.last),
        sector: layout.map_or(512, |l| l.sector),
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
    plan(l, source, size, sector, stale, grow)
}

fn read_at(file: &File, off: u64, len: usize) -> Result<Vec<u8>> {
    let mut b = vec![0u8; len];
    file.read_exact_at(&mut b, off)
        .with_context(|| format!("reading {len} bytes at {off} back"))?;
    Ok(b)
}

/// After the image is on the target: its GPT made right for the target's size
/// (read back from the target, the bytes that were written), --grow on an MBR,
/// and a stale GPT header zeroed. Returns what was done; nothing for a target
/// of the image's size.
pub(crate) fn finish(file: &File, p: &Plan, source: u64, target: u64, grow: bool) -> Result<Done> {
    if source == target {
        let said = if grow {
            vec![GROW_SAME.into()]
        } else {
            Vec::new()
        };
        return Ok(Done {
            said,
            ..Done::default()
        });
    }
    let mut d = Done::default();
    if p.cut < source {
        d.said.push(format!(
            "image cut at byte {} ({}) of {}, after partition {}",
            p.cut,
            human_bytes(p.cut),
            human_bytes(source),
            p.last
        ));
    }
    if let Some(sector) = [512u32, 4096].into_iter().find(|&s| gpt_at(file, s)) {
        let header = read_at(file, u64::from(sector), sector as usize)?;
        let (off, len) = gpt_array_at(&header, sector)?;
        let head = GptHead {
            mbr: &read_at(file, 0, 512)?,
            header: &header,
            array: &read_at(file, off, len)?,
        };
        let g = gpt_patches(&head, source, target, sector, grow)
            .context("rewriting the GPT for the target's size")?;
        d.said.extend(g.said);
        d.patches.extend(g.patches);
        d.grown = g.grown;
    } else {
        mbr_finish(file, p, target, grow, &mut d)?;
    }
    if let Some(at) = p.zero_stale {
        let len = (target - at).min(65536) as usize;
        let what = "a GPT backup header left from the target's previous contents zeroed";
        d.said.push(what.into());
        d.patches.push(Patch::new(at, vec![0; len], what.into()));
    }
    for pa in &mut d.patches {
        pa.was = read_at(file, pa.off, pa.bytes.len())?;
    }
    for pa in &d.patches {
        file.write_all_at(&pa.bytes, pa.off)
            .with_context(|| format!("writing the {}", pa.what))?;
    }
    file.sync_all()
        .context("syncing the new partition tables")?;
    Ok(d)
}

/// [`finish`] for a target without a GPT: an MBR needs nothing for its size;
/// --grow extends its last primary partition.
fn mbr_finish(file: &File, p: &Plan, target: u64, grow: bool, d: &mut Done) -> Result<()> {
    let mbr = read_at(file, 0, 512)?;
    if !grow {
        d.said.push(if has_mbr_signature(&mbr) {
            "MBR: nothing to change (an MBR does not record the disk's size)".into()
        } else {
            "no partition table: nothing to change".into()
        });
        return Ok(());
    }
    let sec = u64::from(p.sector);
    match mbr_grow(&mbr, target / sec, sec) {
        Ok(g) => {
            d.said.extend(g.said);
            d.patches.extend(g.patches);
            d.grown = g.grown;
        }
        Err(why) => d.said.push(format!("--grow: nothing grown: {why}")),
    }
    Ok(())
}

fn gpt_at(file: &File, sector: u32) -> bool {
    let mut b = vec![0u8; sector as usize];
    file.read_exact_at(&mut b, u64::from(sector)).is_ok() && is_gpt_header(&b)
}

/// What to run to grow the filesystem in partition `grown` (number, first
/// byte, bytes) that --grow extended on the target at `path`, by the type its
/// superblock shows.
pub(crate) fn grow_hint(file: &File, path: &Path, block: bool, grown: (u32, u64, u64)) -> String {
    let (n, start, len) = grown;
    let fs = crate::system::fsprobe::probe(&crate::system::fsprobe::Window::new(file, start, len))
        .map(|i| i.fstype);
    let disk = path.display().to_string();
    let (dev, first) = if block {
        let sep = if disk.ends_with(|c: char| c.is_ascii_digit()) {
            "p"
        } else {
            ""
        };
        (format!("{disk}{sep}{n}"), String::new())
    } else {
        (
            format!("/dev/loopXp{n}"),
            format!("losetup -P -f --show {disk} (it prints /dev/loopX), then "),
        )
    };
    let how = match fs.as_deref() {
        Some("ext2" | "ext3" | "ext4") => format!("e2fsck -f {dev} && resize2fs {dev}"),
        Some("xfs") => format!("mount {dev} /mnt && xfs_growfs /mnt"),
        Some("btrfs") => format!("mount {dev} /mnt && btrfs filesystem resize max /mnt"),
        Some("ntfs") => format!("ntfsresize {dev}"),
        _ => format!(
            "grow it with its filesystem's own tool ({dev}: resize2fs, xfs_growfs, btrfs filesystem resize)"
        ),
    };
    format!(
        "partition {n} was grown, its {} filesystem was not: {first}{how}",
        fs.as_deref().unwrap_or("unknown")
    )
}

/// Turns what the target holds at `off` into what the image put there: the
/// bytes each patch replaced go back where it overlaps `buf`, so the chunks a
/// patch touched are compared with the image's digests too.
pub(crate) fn image_bytes(done: &Done, off: u64, buf: &mut [u8]) {
    let end = off + buf.len() as u64;
    for pa in &done.patches {
        let (a, b) = (pa.off.max(off), (pa.off + pa.was.len() as u64).min(end));
        if a < b {
            let (from, to) = ((a - pa.off) as usize, (a - off) as usize);
            let n = (b - a) as usize;
            buf[to..to + n].copy_from_slice(&pa.was[from..from + n]);
        }
    }
}

/// What the image holds up to the cut, for `--verify`: the backup's chunk
/// digests (up to the chunk the cut falls in) and that chunk's bytes after
/// the cut (received, not written).
pub(crate) struct Expected<'a> {
    pub(crate) digests: &'a [Option<[u8; 32]>],
    pub(crate) chunk: u32,
    pub(crate) cut: u64,
    pub(crate) tail: &'a [u8],
    /// A used-block backup's free map: those bytes are compared as zeros.
    pub(crate) free: Option<&'a crate::proto::msg::FreeMap>,
}

/// --verify of the image on a target of another size: reads every chunk up
/// to the cut back, puts back what the new tables replaced and completes the
/// chunk the cut falls in, and compares each with the backup's digest.
/// Returns the offset of the first chunk that differs; `progress` is told of
/// every piece read.
pub(crate) fn check_image(
    file: &File,
    done: &Done,
    e: &Expected,
    mut progress: impl FnMut(u64),
) -> Result<Option<u64>> {
    use sha2::{Digest, Sha256};
    let chunk = u64::from(e.chunk);
    let end = (e.digests.len() as u64).saturating_mul(chunk).min(e.cut);
    let mut bad = None;
    let mut i = 0usize;
    crate::system::readahead::for_each_piece(
        file,
        0,
        end,
        e.chunk as usize,
        |off, b| -> Result<()> {
            let mut image = b.to_vec();
            if let Some(m) = e.free {
                for (o, l) in m.within(off, b.len() as u32) {
                    image[o as usize..(o + l) as usize].fill(0);
                }
            }
            image_bytes(done, off, &mut image);
            if off + b.len() as u64 == e.cut && !e.cut.is_multiple_of(chunk) {
                image.extend_from_slice(e.tail);
            }
            let got: [u8; 32] = Sha256::digest(&image).into();
            if bad.is_none() && e.digests.get(i).copied().flatten() != Some(got) {
                bad = Some(off);
            }
            progress(b.len() as u64);
            i += 1;
            Ok(())
        },
    )?;
    Ok(bad)
}

/// --verify of the tables: each write read back, then the GPT checked as a
/// whole (both headers, their CRCs and pointers, both arrays).
pub(crate) fn check_tables(
    file: &File,
    done: &Done,
    target: u64,
    sector: u32,
) -> Result<Option<String>> {
    for pa in &done.patches {
        let b = read_at(file, pa.off, pa.bytes.len())?;
        if b != pa.bytes {
            return Ok(Some(format!("the {} reads back differently", pa.what)));
        }
    }
    if !done
        .patches
        .iter()
        .any(|p| p.what.starts_with("GPT backup header"))
    {
        return Ok(None);
    }
    gpt_problem(file, target, sector)
}

/// What is wrong with the GPT on a target of `target` bytes, read from it.
fn gpt_problem(file: &File, target: u64, sector: u32) -> Result<Option<String>> {
    let sec = u64::from(sector);
    let last = (target / sec).saturating_sub(1);
    let head = |lba: u64| -> Result<(Vec<u8>, Option<partitions::GptHeader>)> {
        let b = read_at(file, lba * sec, sector as usize)?;
        let h = partitions::parse_gpt_header(&b).filter(|h| h.crc_ok && h.my_lba == lba);
        Ok((b, h))
    };
    let (pb, primary) = head(1)?;
    let (_, backup) = head(last)?;
    let intact = "does not read back intact (signature, CRC32 and its own LBA)";
    let Some(p) = primary else {
        return Ok(Some(format!("the primary GPT header at LBA 1 {intact}")));
    };
    let Some(b) = backup else {
        return Ok(Some(format!(
            "the backup GPT header at LBA {last} {intact}"
        )));
    };
    if p.alternate_lba != last || b.alternate_lba != 1 || p.last_usable_lba != b.last_usable_lba {
        return Ok(Some(format!(
            "the GPT headers do not point at each other at the disk's ends (primary: backup at LBA {}, backup: primary at LBA {}, last LBA {last})",
            p.alternate_lba, b.alternate_lba
        )));
    }
    let (off, len) = gpt_array_at(&pb, sector)?;
    let array = read_at(file, off, len)?;
    let copy = read_at(file, b.entries_lba.saturating_mul(sec), len)?;
    if crc32fast::hash(&array) != p.entries_crc || copy != array || b.entries_crc != p.entries_crc {
        return Ok(Some(format!(
            "the GPT partition arrays at LBA {} and {} do not both match their headers' CRC32",
            p.entries_lba, b.entries_lba
        )));
    }
    if b.entries_lba <= p.last_usable_lba {
        return Ok(Some(format!(
            "the backup GPT array (LBA {}) lies inside the usable space (up to LBA {})",
            b.entries_lba, p.last_usable_lba
        )));
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
        let p = plan(&l, img.len() as u64, target, 512, false, grow).unwrap();
        let mut t = vec![fill; target as usize];
        t[..p.cut as usize].copy_from_slice(&img[..p.cut as usize]);
        let (off, len) = gpt_array_at(&t[512..1024], 512).unwrap();
        let head = GptHead {
            mbr: &t[..512],
            header: &t[512..1024],
            array: &t[off as usize..off as usize + len],
        };
        let patches = gpt_patches(&head, img.len() as u64, target, 512, grow)
            .unwrap()
            .patches;
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
        let e = plan(&l, 4 * MIB, fits - SEC, 512, false, false).unwrap_err();
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
        // The logical partition, not the extended one ending with it.
        assert_eq!((l.end, l.last), (4 * MIB, 5));
        let p = plan(&l, 8 * MIB, 16 * MIB, 512, false, false).unwrap();
        assert_eq!(p.cut, 8 * MIB);
        assert!(!p.fix_gpt && p.zero_stale.is_none());
        assert!(
            p.changes[0].contains("nothing to change"),
            "{:?}",
            p.changes
        );
        let p = plan(&l, 8 * MIB, 4 * MIB, 512, false, false).unwrap();
        assert_eq!(p.cut, 4 * MIB);
        let e = plan(&l, 8 * MIB, 4 * MIB - SEC, 512, false, false).unwrap_err();
        assert!(e.contains("ends at byte 4194304"), "{e}");
        // A logical partition beyond its container counts too.
        let t = mbr_table(&[(2, MIB, MIB, "0x05"), (5, MIB + SEC, 3 * MIB, "0x83")]);
        let l = layout_of(Some(&t), 512);
        assert_eq!((l.end, l.last), (4 * MIB + SEC, 5));
    }

    #[test]
    fn no_table_larger_is_fine_smaller_refused() {
        let l = layout_of(None, 512);
        let p = plan(&l, 8 * MIB, 9 * MIB, 512, false, false).unwrap();
        assert_eq!(p.cut, 8 * MIB);
        let e = plan(&l, 8 * MIB, 7 * MIB, 512, false, false).unwrap_err();
        assert!(e.contains("no partition table"), "{e}");
        assert!(
            e.contains("7340032 bytes") && e.contains("8388608 bytes"),
            "{e}"
        );
        // Same size: nothing at all.
        let p = plan(&l, 8 * MIB, 8 * MIB, 4096, false, false).unwrap();
        assert!(p.changes.is_empty() && p.cut == 8 * MIB);
    }

    #[test]
    fn stale_backup_gpt_on_the_target_is_zeroed_and_sectors_must_agree() {
        let t = mbr_table(&[(1, MIB, MIB, "0x83")]);
        let l = layout_of(Some(&t), 512);
        let p = plan(&l, 8 * MIB, 16 * MIB, 512, true, false).unwrap();
        assert_eq!(p.zero_stale, Some(16 * MIB - SEC));
        let e = plan(&l, 8 * MIB, 16 * MIB, 4096, false, false).unwrap_err();
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
        assert!(plan(&bad, 1 << 40, 1 << 30, 512, false, false).is_err());
        let bad = DiskLayout { sector: 100, ..bad };
        assert!(plan(&bad, 1 << 40, 1 << 30, 512, false, false).is_err());
    }

    struct Restored {
        f: tempfile::NamedTempFile,
        p: Plan,
        done: Done,
        digests: Vec<Option<[u8; 32]>>,
        tail: Vec<u8>,
    }

    /// `img` restored onto a file of `target` bytes as restore does it: the
    /// image up to the cut, then [`finish`]. Returns the file, the plan, what
    /// was done and what --verify expects (digests of `chunk`-byte chunks).
    fn restored_file(img: &[u8], target: u64, chunk: u32, grow: bool) -> Restored {
        use sha2::{Digest, Sha256};
        let table = partitions::read_table_bytes(img, 512).unwrap();
        let l = layout_of(table.as_ref(), 512);
        let p = plan(&l, img.len() as u64, target, 512, false, grow).unwrap();
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(target).unwrap();
        f.as_file().write_all_at(&img[..p.cut as usize], 0).unwrap();
        let done = finish(f.as_file(), &p, img.len() as u64, target, grow).unwrap();
        let c = chunk as usize;
        let n = (p.cut as usize).div_ceil(c);
        let digests = (0..n)
            .map(|i| Some(Sha256::digest(&img[i * c..((i + 1) * c).min(img.len())]).into()))
            .collect();
        let tail = img[p.cut as usize..(n * c).min(img.len())].to_vec();
        Restored {
            f,
            p,
            done,
            digests,
            tail,
        }
    }

    fn flip(f: &File, at: u64) {
        let mut b = [0u8];
        f.read_exact_at(&mut b, at).unwrap();
        f.write_all_at(&[b[0] ^ 0x10], at).unwrap();
    }

    #[test]
    fn verify_finds_a_wrong_byte_before_the_cut_and_a_damaged_backup_header() {
        let mut img = gpt_image(4 * MIB, &[(2048, 4095)]);
        // Bytes in every place --verify must read: the gap after the primary
        // array, the partition, and the image's own backup GPT.
        let mut seed = 7u32;
        for b in &mut img[40 * 512..4096 * 512] {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
            *b = (seed >> 16) as u8;
        }
        // A chunk size the cut (byte 2 MiB) does not divide.
        let chunk = 96 * 1024;
        for target in [8 * MIB, (4096 + 33) * SEC] {
            let Restored {
                f,
                p,
                done,
                digests,
                tail,
            } = restored_file(&img, target, chunk, false);
            let f = f.as_file();
            let e = Expected {
                digests: &digests,
                chunk,
                cut: p.cut,
                tail: &tail,
                free: None,
            };
            let check = || {
                (
                    check_image(f, &done, &e, |_| {}).unwrap(),
                    check_tables(f, &done, target, 512).unwrap(),
                )
            };
            assert_eq!(check(), (None, None), "target {target}");
            // Sector 40 shares chunk 0 with the new tables; the partition's
            // last byte lies in the chunk the cut falls in on the smaller one.
            let end = 4096 * SEC - 1;
            let last_chunk = end / u64::from(chunk) * u64::from(chunk);
            for (at, chunk_at) in [(40 * SEC + 3, 0), (end, last_chunk)] {
                flip(f, at);
                assert_eq!(check().0, Some(chunk_at), "byte {at}, target {target}");
                flip(f, at);
            }
            // The backup GPT header at the new end.
            let last = target / SEC - 1;
            flip(f, last * SEC + 60);
            let why = check().1.unwrap();
            assert!(why.contains("GPT backup header at LBA"), "{why}");
            flip(f, last * SEC + 60);
            assert_eq!(check(), (None, None));
        }
    }

    #[test]
    fn the_whole_gpt_is_checked_not_only_what_was_written() {
        let img = gpt_image(4 * MIB, &[(2048, 4095)]);
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(8 * MIB).unwrap();
        f.as_file().write_all_at(&img, 0).unwrap();
        // The image's tables as they are, on a larger disk: the backup is not at its end.
        let done = Done {
            patches: vec![Patch::new(
                0,
                img[..512].to_vec(),
                "GPT backup header".into(),
            )],
            ..Done::default()
        };
        let why = check_tables(f.as_file(), &done, 8 * MIB, 512)
            .unwrap()
            .unwrap();
        assert!(why.contains("backup GPT header at LBA 16383"), "{why}");
        let Restored { f, done, .. } = restored_file(&img, 8 * MIB, 1 << 20, true);
        assert_eq!(
            check_tables(f.as_file(), &done, 8 * MIB, 512).unwrap(),
            None
        );
        // A backup array that no longer matches its CRC.
        flip(f.as_file(), (16383 - 32) * SEC + 5);
        let why = check_tables(f.as_file(), &done, 8 * MIB, 512)
            .unwrap()
            .unwrap();
        assert!(why.contains("reads back differently"), "{why}");
        let why = gpt_problem(f.as_file(), 8 * MIB, 512).unwrap().unwrap();
        assert!(why.contains("do not both match"), "{why}");
    }

    /// An MBR sector with `parts` (type, first LBA, sectors) in its slots.
    fn mbr(parts: &[(u8, u32, u32)]) -> Vec<u8> {
        let mut m = vec![0u8; 512];
        for (i, &(kind, start, size)) in parts.iter().enumerate() {
            let o = 446 + i * 16;
            m[o + 4] = kind;
            put32(&mut m, o + 8, start);
            put32(&mut m, o + 12, size);
        }
        m[510] = 0x55;
        m[511] = 0xAA;
        m
    }

    #[test]
    fn mbr_grow_extends_the_last_primary_within_32_bit_sectors() {
        let m = mbr(&[(0x83, 2048, 4096), (0x83, 6144, 2048)]);
        let d = mbr_grow(&m, 32768, SEC).unwrap();
        assert_eq!(le32(&d.patches[0].bytes, 446 + 16 + 12), 32768 - 6144);
        // Partition 1 as it was; CHS of the new end (LBA 32767 = C 2, H 10, S 8).
        assert_eq!(d.patches[0].bytes[446..462], m[446..462]);
        assert_eq!(d.patches[0].bytes[446 + 16 + 5..446 + 16 + 8], [10, 8, 2]);
        assert_eq!(d.grown, Some((2, 6144 * SEC, (32768 - 6144) * SEC)));
        assert_eq!(
            d.said,
            vec!["partition 2 grown from LBA 6144-8191 to LBA 6144-32767"]
        );
        // A 4 TiB disk: up to 2^32 - 1 sectors, and said so.
        let d = mbr_grow(&m, 1 << 33, SEC).unwrap();
        assert_eq!(le32(&d.patches[0].bytes, 446 + 16 + 12), u32::MAX - 6144);
        assert_eq!(
            d.patches[0].bytes[446 + 16 + 5..446 + 16 + 8],
            [0xfe, 0xff, 0xff]
        );
        assert!(
            d.said[0].contains("the 4294967297 sectors after them stay unused"),
            "{:?}",
            d.said
        );
        let e = mbr_grow(&d.patches[0].bytes, 1 << 33, SEC).unwrap_err();
        assert!(e.contains("what an MBR can address"), "{e}");
        // An extended partition last, a protective MBR, no MBR: not grown, said why.
        let e = mbr_grow(&mbr(&[(0x83, 2048, 4096), (0x05, 6144, 2048)]), 32768, SEC).unwrap_err();
        assert!(
            e.contains("partition 2, which ends last, is an extended partition"),
            "{e}"
        );
        let e = mbr_grow(&mbr(&[(0xEE, 1, 8191)]), 32768, SEC).unwrap_err();
        assert!(e.contains("protective"), "{e}");
        assert!(
            mbr_grow(&[0u8; 512], 32768, SEC)
                .unwrap_err()
                .contains("no MBR")
        );
        let e = mbr_grow(&m, 8192, SEC).unwrap_err();
        assert!(e.contains("already ends at the end of the target"), "{e}");
    }

    /// The plan says `what` in one of its changes.
    fn said(p: &Plan, what: &str) {
        assert!(
            p.changes.iter().any(|c| c.contains(what)),
            "{:?}",
            p.changes
        );
    }

    #[test]
    fn grow_is_in_the_plan_before_anything_is_written() {
        let t = mbr_table(&[(1, MIB, MIB, "0x83"), (2, 2 * MIB, 2 * MIB, "0x83")]);
        let l = layout_of(Some(&t), 512);
        let p = plan(&l, 8 * MIB, 16 * MIB, 512, false, true).unwrap();
        said(&p, "partition 2 grown to end at LBA 32767");
        let t = mbr_table(&[
            (2, MIB, 3 * MIB, "0x05"),
            (5, MIB + SEC, 3 * MIB - SEC, "0x83"),
        ]);
        let p = plan(
            &layout_of(Some(&t), 512),
            8 * MIB,
            16 * MIB,
            512,
            false,
            true,
        )
        .unwrap();
        said(&p, "partition 5 is a logical partition");
        let img = gpt_image(4 * MIB, &[(2048, 4095)]);
        let l = layout_of(
            partitions::read_table_bytes(&img, 512).unwrap().as_ref(),
            512,
        );
        let p = plan(&l, 4 * MIB, 8 * MIB, 512, false, true).unwrap();
        said(&p, "partition 1 grown to end at LBA 16350");
        let p = plan(&l, 4 * MIB, 4 * MIB, 512, false, true).unwrap();
        assert_eq!(p.changes, vec![GROW_SAME]);
        let p = plan(&layout_of(None, 512), 4 * MIB, 8 * MIB, 512, false, true).unwrap();
        assert!(
            p.changes[1].contains("no partition table, nothing to grow"),
            "{:?}",
            p.changes
        );
    }
}
