//! Partition tables (GPT and MBR/DOS) read straight from a disk or image, so the
//! disk list and the backup manifest can name partitions by type and label.
//!
//! The bytes come from disks that may be damaged or hostile: every count, size and
//! offset taken from them is bounded by the disk's size and by fixed limits, and a
//! damaged table yields an error or a partial result with warnings, never a panic.

use std::collections::HashSet;
use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// The largest GPT entry array we read (the usual one is 16 KiB); a header asking
/// for more is either corrupt or hostile.
const MAX_GPT_ARRAY_BYTES: u64 = 1 << 20;
/// Largest GPT entry size we accept (the spec says a multiple of 128).
const MAX_GPT_ENTRY_SIZE: u32 = 4096;
/// The kernel stops at far fewer logical partitions; this bounds EBR chain walks.
const MAX_LOGICAL: u32 = 256;

/// A partition table as found on a disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionTable {
    /// "gpt" or "dos".
    pub kind: String,
    /// The GPT disk GUID, or the MBR disk signature as 8 hex digits.
    pub disk_guid: Option<String>,
    pub entries: Vec<TableEntry>,
    /// Problems found on the way (bad CRC, truncated array, loops): the entries are
    /// what could still be read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// GPT only: the bytes of the partition entry array the header declares
    /// (what a backup array at the end of a disk takes); 0 for MBR.
    #[serde(skip)]
    pub(crate) gpt_array_bytes: u64,
}

/// One partition of a table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableEntry {
    /// The kernel's partition number: GPT slot + 1; MBR 1-4 primary, 5.. logical.
    pub number: u32,
    pub start_bytes: u64,
    pub size_bytes: u64,
    /// "EFI System", "Linux filesystem", ... or "unknown".
    pub type_name: String,
    /// GPT type GUID (lower case) or MBR type byte as "0x83".
    pub type_id: String,
    /// GPT partition name (MBR has none).
    pub name: Option<String>,
    /// GPT unique partition GUID, or "<signature>-<nn>" for MBR (as blkid's PARTUUID).
    pub uuid: Option<String>,
}

impl PartitionTable {
    /// Where bytes [start, end) of the disk lie, for messages ("in partition
    /// 2 (Linux filesystem)"): the partitions they overlap (logical ones rather
    /// than their extended container), or where they are outside them. Names
    /// come from the disk: they are quoted and escaped.
    pub(crate) fn locate(&self, start: u64, end: u64) -> String {
        let hits: Vec<&TableEntry> = self
            .entries
            .iter()
            .filter(|e| e.start_bytes < end && start < e.start_bytes.saturating_add(e.size_bytes))
            .collect();
        let inner: Vec<&TableEntry> = hits
            .iter()
            .copied()
            .filter(|e| !matches!(e.type_id.as_str(), "0x05" | "0x0f" | "0x85"))
            .collect();
        let named = if inner.is_empty() { hits } else { inner };
        if named.is_empty() {
            let first = self.entries.iter().map(|e| e.start_bytes).min();
            return match first {
                Some(f) if end <= f => {
                    format!(
                        "before the first partition ({} partition table, boot area)",
                        self.kind
                    )
                }
                _ => "outside every partition".to_string(),
            };
        }
        let names: Vec<String> = named
            .iter()
            .map(|e| match e.name.as_deref() {
                Some(n) if !n.is_empty() => {
                    format!("partition {} ({}, {n:?})", e.number, e.type_name)
                }
                _ => format!("partition {} ({})", e.number, e.type_name),
            })
            .collect();
        format!("in {}", names.join(" and "))
    }
}

/// Reads the partition table of a disk or image. `Ok(None)` when there is none
/// (blank disk, or a filesystem directly on the disk).
pub fn read_table(path: &Path, logical_sector: u32) -> anyhow::Result<Option<PartitionTable>> {
    if !(512..=65536).contains(&logical_sector) || !logical_sector.is_power_of_two() {
        bail!("unsupported logical sector size {logical_sector}");
    }
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    read_table_file(&file, logical_sector).with_context(|| path.display().to_string())
}

/// Reads the partition table of an opened disk or image.
pub(crate) fn read_table_file(
    mut file: &File,
    logical_sector: u32,
) -> anyhow::Result<Option<PartitionTable>> {
    if !(512..=65536).contains(&logical_sector) || !logical_sector.is_power_of_two() {
        bail!("unsupported logical sector size {logical_sector}");
    }
    // Seeking works for block devices too, where metadata reports length 0.
    let disk_size = file.seek(SeekFrom::End(0)).context("finding the size")?;
    let disk = Disk {
        src: &file,
        size: disk_size,
    };
    read_from(&disk, logical_sector)
}

/// Reads the partition table of a disk image held in memory (the tests').
#[cfg(test)]
pub(crate) fn read_table_bytes(
    bytes: &[u8],
    logical_sector: u32,
) -> anyhow::Result<Option<PartitionTable>> {
    if !(512..=65536).contains(&logical_sector) || !logical_sector.is_power_of_two() {
        bail!("unsupported logical sector size {logical_sector}");
    }
    let disk = Disk {
        src: &bytes,
        size: bytes.len() as u64,
    };
    read_from(&disk, logical_sector)
}

/// Reads the partition table of the disk a used-block backup probes (through
/// the same reader its filesystems are probed with).
pub(crate) fn read_table_at(
    src: &dyn fsmap::ReadAt,
    logical_sector: u32,
) -> anyhow::Result<Option<PartitionTable>> {
    if !(512..=65536).contains(&logical_sector) || !logical_sector.is_power_of_two() {
        bail!("unsupported logical sector size {logical_sector}");
    }
    let disk = Disk {
        src: &src,
        size: src.len(),
    };
    read_from(&disk, logical_sector)
}

impl ReadAt for &dyn fsmap::ReadAt {
    fn read_exact_at(&self, buf: &mut [u8], off: u64) -> std::io::Result<()> {
        (**self).read_exact_at(buf, off)
    }
}

/// What a table is read from: a file or disk, or bytes in memory.
trait ReadAt {
    fn read_exact_at(&self, buf: &mut [u8], off: u64) -> std::io::Result<()>;
}

impl ReadAt for &File {
    fn read_exact_at(&self, buf: &mut [u8], off: u64) -> std::io::Result<()> {
        FileExt::read_exact_at(*self, buf, off)
    }
}

impl ReadAt for &[u8] {
    fn read_exact_at(&self, buf: &mut [u8], off: u64) -> std::io::Result<()> {
        let start = usize::try_from(off).ok();
        let src = start.and_then(|s| self.get(s..s.checked_add(buf.len())?));
        let src = src.ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

struct Disk<'a> {
    src: &'a dyn ReadAt,
    size: u64,
}

impl Disk<'_> {
    /// Reads exactly `len` bytes at `off`, which the caller has bounded.
    fn read(&self, off: u64, len: usize) -> anyhow::Result<Vec<u8>> {
        let end = off.checked_add(len as u64);
        if end.is_none_or(|e| e > self.size) {
            bail!("read of {len} bytes at offset {off} is beyond the end of the disk");
        }
        let mut buf = vec![0u8; len];
        self.src
            .read_exact_at(&mut buf, off)
            .with_context(|| format!("reading {len} bytes at offset {off}"))?;
        Ok(buf)
    }
}

fn read_from(disk: &Disk, sector: u32) -> anyhow::Result<Option<PartitionTable>> {
    if disk.size < 512 {
        return Ok(None);
    }
    let mbr = disk.read(0, 512).context("reading the MBR")?;
    let mbr_valid = mbr[510] == 0x55 && mbr[511] == 0xAA;
    let protective = mbr_valid && (0..4).any(|i| mbr[446 + i * 16 + 4] == 0xEE);

    if protective || !mbr_valid {
        // A wiped MBR in front of an intact GPT still deserves to be reported.
        if let Some(t) = read_gpt_any_sector(disk, sector)? {
            return Ok(Some(t));
        }
        if !mbr_valid {
            return Ok(None);
        }
    }
    if !looks_like_mbr(&mbr) {
        return Ok(None);
    }
    let mut t = read_mbr(disk, &mbr, sector);
    if protective {
        t.warnings
            .push("protective MBR (type 0xee) but no GPT header was found".into());
    }
    Ok(Some(t))
}

/// Tries the given sector size first, then the other common one: image files carry no
/// sector size, and a 4Kn disk copied to a file still has its GPT at 4096.
fn read_gpt_any_sector(disk: &Disk, sector: u32) -> anyhow::Result<Option<PartitionTable>> {
    if let Some(t) = read_gpt(disk, sector)? {
        return Ok(Some(t));
    }
    let other = if sector == 512 { 4096 } else { 512 };
    match read_gpt(disk, other)? {
        Some(mut t) => {
            t.warnings.push(format!(
                "GPT found assuming {other}-byte sectors, not {sector}"
            ));
            Ok(Some(t))
        }
        None => Ok(None),
    }
}

// ---------------------------------------------------------------------------- GPT

pub(crate) struct GptHeader {
    pub(crate) header_size: u32,
    pub(crate) my_lba: u64,
    pub(crate) alternate_lba: u64,
    pub(crate) first_usable_lba: u64,
    pub(crate) last_usable_lba: u64,
    pub(crate) disk_guid: [u8; 16],
    pub(crate) entries_lba: u64,
    pub(crate) num_entries: u32,
    pub(crate) entry_size: u32,
    pub(crate) entries_crc: u32,
    pub(crate) crc_ok: bool,
}

fn le16(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}

pub(crate) fn le32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

pub(crate) fn le64(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}

/// Parses a header block if it carries the GPT signature. `None` without it.
pub(crate) fn parse_gpt_header(block: &[u8]) -> Option<GptHeader> {
    if block.len() < 92 || &block[0..8] != b"EFI PART" {
        return None;
    }
    let header_size = le32(block, 12) as usize;
    let crc_ok = if (92..=block.len()).contains(&header_size) {
        let mut h = block[..header_size].to_vec();
        h[16..20].fill(0);
        crc32fast::hash(&h) == le32(block, 16)
    } else {
        false
    };
    let mut disk_guid = [0u8; 16];
    disk_guid.copy_from_slice(&block[56..72]);
    Some(GptHeader {
        header_size: header_size as u32,
        my_lba: le64(block, 24),
        alternate_lba: le64(block, 32),
        first_usable_lba: le64(block, 40),
        last_usable_lba: le64(block, 48),
        disk_guid,
        entries_lba: le64(block, 72),
        num_entries: le32(block, 80),
        entry_size: le32(block, 84),
        entries_crc: le32(block, 88),
        crc_ok,
    })
}

fn read_gpt_header_at(disk: &Disk, lba: u64, sector: u32) -> Option<GptHeader> {
    let off = lba.checked_mul(sector as u64)?;
    let block = disk.read(off, sector as usize).ok()?;
    parse_gpt_header(&block)
}

fn read_gpt(disk: &Disk, sector: u32) -> anyhow::Result<Option<PartitionTable>> {
    let mut warnings = Vec::new();
    let Some(header) = gpt_header(disk, sector, &mut warnings) else {
        return Ok(None);
    };
    let entry_size = header.entry_size;
    if !(128..=MAX_GPT_ENTRY_SIZE).contains(&entry_size) || !entry_size.is_multiple_of(128) {
        bail!("GPT header gives an invalid partition entry size of {entry_size} bytes");
    }
    let array = gpt_array(disk, &header, sector, &mut warnings)?;
    let entries = gpt_entries(disk, &array, entry_size, sector, &mut warnings);
    Ok(Some(PartitionTable {
        kind: "gpt".into(),
        disk_guid: Some(guid_string(&header.disk_guid)),
        entries,
        warnings,
        gpt_array_bytes: u64::from(header.num_entries) * u64::from(entry_size),
    }))
}

/// The GPT header to go by: the primary, else (like the kernel) the backup at
/// the end of the disk, else the primary with a warning. None: no GPT.
fn gpt_header(disk: &Disk, sector: u32, warnings: &mut Vec<String>) -> Option<GptHeader> {
    let last_lba = match (disk.size / sector as u64).checked_sub(1) {
        Some(l) if l >= 1 => l,
        _ => return None,
    };
    let primary = read_gpt_header_at(disk, 1, sector)?;
    if primary.crc_ok && primary.my_lba == 1 {
        return Some(primary);
    }
    let alt = if primary.alternate_lba > 1 && primary.alternate_lba <= last_lba {
        primary.alternate_lba
    } else {
        last_lba
    };
    match read_gpt_header_at(disk, alt, sector).filter(|h| h.crc_ok) {
        Some(backup) => {
            warnings.push(
                "primary GPT header is invalid (CRC32 mismatch); using the backup header".into(),
            );
            Some(backup)
        }
        None => {
            warnings.push(
                "GPT header CRC32 is invalid and there is no valid backup: the table may be corrupt"
                    .into(),
            );
            Some(primary)
        }
    }
}

/// Reads the partition entry array `header` points at, no further than its
/// region and MAX_GPT_ARRAY_BYTES, and checks its CRC32.
fn gpt_array(
    disk: &Disk,
    header: &GptHeader,
    sector: u32,
    warnings: &mut Vec<String>,
) -> anyhow::Result<Vec<u8>> {
    let sector64 = sector as u64;
    let entry_size = header.entry_size as u64;
    let array_off = header
        .entries_lba
        .checked_mul(sector64)
        .filter(|&o| o < disk.size && header.entries_lba >= 1)
        .with_context(|| {
            format!(
                "GPT partition entries at LBA {} are outside the disk",
                header.entries_lba
            )
        })?;
    let claimed = header.num_entries as u64 * entry_size;
    // The array sits before the first usable LBA (primary) or before the header
    // itself (backup); reading past that would turn partition data into entries.
    let region_end = if header.entries_lba < header.first_usable_lba {
        header.first_usable_lba.checked_mul(sector64)
    } else {
        header.my_lba.checked_mul(sector64)
    }
    .filter(|&end| end > array_off)
    .unwrap_or(disk.size);
    let available = (disk.size.min(region_end) - array_off).min(MAX_GPT_ARRAY_BYTES);
    let mut array_len = claimed;
    if claimed > available {
        array_len = available - available % entry_size;
        warnings.push(format!(
            "GPT header claims {} partition entries; only the first {} were read",
            header.num_entries,
            array_len / entry_size
        ));
    }
    let array = disk
        .read(array_off, array_len as usize)
        .context("reading the GPT partition entries")?;
    if array_len == claimed && crc32fast::hash(&array) != header.entries_crc {
        warnings.push("GPT partition entry array CRC32 mismatch: entries may be corrupt".into());
    }
    Ok(array)
}

/// The used entries of a GPT partition entry array; an impossible range is
/// skipped with a warning.
fn gpt_entries(
    disk: &Disk,
    array: &[u8],
    entry_size: u32,
    sector: u32,
    warnings: &mut Vec<String>,
) -> Vec<TableEntry> {
    let sector64 = sector as u64;
    let mut entries = Vec::new();
    for (i, e) in array.chunks_exact(entry_size as usize).enumerate() {
        let type_guid: [u8; 16] = e[0..16].try_into().unwrap_or([0; 16]);
        if type_guid == [0u8; 16] {
            continue;
        }
        let number = i as u32 + 1;
        let first = le64(e, 32);
        let last = le64(e, 40);
        let (Some(start), Some(size)) = (
            first.checked_mul(sector64),
            last.checked_sub(first)
                .and_then(|n| n.checked_add(1))
                .and_then(|n| n.checked_mul(sector64)),
        ) else {
            warnings.push(format!(
                "GPT partition {number} has an invalid range (LBA {first} to {last}); skipped"
            ));
            continue;
        };
        if start.saturating_add(size) > disk.size {
            warnings.push(format!(
                "GPT partition {number} extends beyond the end of the disk"
            ));
        }
        let type_id = guid_string(&type_guid);
        let name = utf16le_name(&e[56..128]);
        entries.push(TableEntry {
            number,
            start_bytes: start,
            size_bytes: size,
            type_name: gpt_type_name(&type_id).unwrap_or("unknown").to_string(),
            type_id,
            name: (!name.is_empty()).then_some(name),
            uuid: Some(guid_string(&e[16..32])),
        });
    }
    entries
}

/// Formats an on-disk (mixed-endian) GUID as lower-case text.
pub(crate) fn guid_string(b: &[u8]) -> String {
    if b.len() < 16 {
        return String::new();
    }
    format!(
        "{:08x}-{:04x}-{:04x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
        le32(b, 0),
        le16(b, 4),
        le16(b, 6),
        b[8],
        b[9],
        b[10],
        b[11],
        b[12],
        b[13],
        b[14],
        b[15]
    )
}

/// Decodes a NUL-padded UTF-16LE name; invalid code units become U+FFFD.
fn utf16le_name(b: &[u8]) -> String {
    let units: Vec<u16> = b
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    String::from_utf16_lossy(&units)
}

/// Friendly names of common GPT partition types (as fdisk calls them).
pub(crate) fn gpt_type_name(guid: &str) -> Option<&'static str> {
    let name = match guid.to_ascii_lowercase().as_str() {
        "c12a7328-f81f-11d2-ba4b-00a0c93ec93b" => "EFI System",
        "21686148-6449-6e6f-744e-656564454649" => "BIOS boot",
        "024dee41-33e7-11d3-9d69-0008c781f39f" => "MBR partition scheme",
        "0fc63daf-8483-4772-8e79-3d69d8477de4" => "Linux filesystem",
        "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f" => "Linux swap",
        "e6d6d379-f507-44c2-a23c-238f2a3df928" => "Linux LVM",
        "a19d880f-05fc-4d3b-a006-743f0f84911e" => "Linux RAID",
        "ca7d7ccb-63ed-4c53-861c-1742536059cc" => "Linux LUKS",
        "933ac7e1-2eb4-4f13-b844-0e14e2aef915" => "Linux home",
        "3b8f8425-20e0-4f3b-907f-1a25a76f98e8" => "Linux server data",
        "bc13c2ff-59e6-4262-a352-b275fd6f7172" => "Linux extended boot",
        "8da63339-0007-60c0-c436-083ac8230908" => "Linux reserved",
        "4f68bce3-e8cd-4db1-96e7-fbcaf984b709" => "Linux root (x86-64)",
        "44479540-f297-41b2-9af7-d131d5f0458a" => "Linux root (x86)",
        "b921b045-1df0-41c3-af44-4c6f280d3fae" => "Linux root (ARM-64)",
        "69dad710-2ce4-4e3c-b16c-21a1d49abed3" => "Linux root (ARM)",
        "8484680c-9521-48c6-9c11-b0720656f69e" => "Linux /usr (x86-64)",
        "ebd0a0a2-b9e5-4433-87c0-68b6b72699c7" => "Microsoft basic data",
        "e3c9e316-0b5c-4db8-817d-f92df00215ae" => "Microsoft reserved",
        "de94bba4-06d1-4d40-a16a-bfd50179d6ac" => "Windows recovery environment",
        "5808c8aa-7e8f-42e0-85d2-e1e90434cfb3" => "Microsoft LDM metadata",
        "af9b60a0-1431-4f62-bc68-3311714a69ad" => "Microsoft LDM data",
        "e75caf8f-f680-4cee-afa3-b001e56efc2d" => "Microsoft Storage Spaces",
        "48465300-0000-11aa-aa11-00306543ecac" => "Apple HFS/HFS+",
        "7c3457ef-0000-11aa-aa11-00306543ecac" => "Apple APFS",
        "426f6f74-0000-11aa-aa11-00306543ecac" => "Apple boot",
        "516e7cb4-6ecf-11d6-8ff8-00022d09712b" => "FreeBSD data",
        "516e7cb6-6ecf-11d6-8ff8-00022d09712b" => "FreeBSD UFS",
        "516e7cba-6ecf-11d6-8ff8-00022d09712b" => "FreeBSD ZFS",
        "6a898cc3-1dd2-11b2-99a6-080020736631" => "Solaris /usr & Apple ZFS",
        "fe3a2a5d-4f32-41a7-b725-accc3285a309" => "ChromeOS kernel",
        "3cb8e202-3b7e-47dd-8a3c-7ff2a13cfcec" => "ChromeOS root fs",
        "9e1a2d38-c612-4316-aa26-8b49521e5a8b" => "PowerPC PReP boot",
        "d3bfe2de-3daf-11df-ba40-e3a556d89593" => "Intel Fast Flash",
        "aa31e02a-400f-11db-9590-000c2911d1b8" => "VMware VMFS",
        _ => return None,
    };
    Some(name)
}

// ---------------------------------------------------------------------------- MBR

/// Tells an MBR from a boot sector of a filesystem written directly on the disk
/// (FAT and NTFS end with 0x55AA too).
fn looks_like_mbr(mbr: &[u8]) -> bool {
    if (0..4).any(|i| !matches!(mbr[446 + i * 16], 0x00 | 0x80)) {
        return false;
    }
    let oem = &mbr[3..11];
    let fs_boot_sector = oem == b"NTFS    "
        || oem == b"EXFAT   "
        || &mbr[54..59] == b"FAT12"
        || &mbr[54..59] == b"FAT16"
        || &mbr[82..87] == b"FAT32";
    let any_used = (0..4).any(|i| mbr[446 + i * 16 + 4] != 0);
    !fs_boot_sector || any_used
}

struct MbrSlot {
    kind: u8,
    start: u32,
    sectors: u32,
}

fn mbr_slots(sector0: &[u8]) -> [MbrSlot; 4] {
    std::array::from_fn(|i| {
        let e = &sector0[446 + i * 16..446 + (i + 1) * 16];
        MbrSlot {
            kind: e[4],
            start: le32(e, 8),
            sectors: le32(e, 12),
        }
    })
}

fn is_extended(kind: u8) -> bool {
    matches!(kind, 0x05 | 0x0f | 0x85)
}

fn read_mbr(disk: &Disk, mbr: &[u8], sector: u32) -> PartitionTable {
    let sector64 = sector as u64;
    let signature = le32(mbr, 440);
    let sig_text = format!("{signature:08x}");
    let mut warnings = Vec::new();
    let mut entries = Vec::new();
    let mut extended = None;

    let make = |number: u32, kind: u8, start_lba: u64, sectors: u64| TableEntry {
        number,
        start_bytes: start_lba * sector64,
        size_bytes: sectors * sector64,
        type_name: mbr_type_name(kind).to_string(),
        type_id: format!("0x{kind:02x}"),
        name: None,
        uuid: (signature != 0).then(|| format!("{sig_text}-{number:02x}")),
    };

    for (i, slot) in mbr_slots(mbr).iter().enumerate() {
        if slot.kind == 0 || slot.sectors == 0 {
            continue;
        }
        let number = i as u32 + 1;
        let start = slot.start as u64;
        if (start + slot.sectors as u64) * sector64 > disk.size {
            warnings.push(format!(
                "MBR partition {number} extends beyond the end of the disk"
            ));
        }
        entries.push(make(number, slot.kind, start, slot.sectors as u64));
        if is_extended(slot.kind) {
            if extended.is_some() {
                warnings.push(format!(
                    "more than one extended partition; ignoring the one in slot {number}"
                ));
            } else {
                extended = Some((start, slot.sectors as u64));
            }
        }
    }
    if let Some(ext) = extended {
        read_logical(disk, ext, sector64, &make, &mut entries, &mut warnings);
    }

    PartitionTable {
        kind: "dos".into(),
        disk_guid: (signature != 0).then_some(sig_text),
        entries,
        warnings,
        gpt_array_bytes: 0,
    }
}

/// Follows the chain of extended boot records of the extended partition
/// `(base LBA, sectors)`, adding its logical partitions (numbered from 5, made
/// by `make` from number, type byte, start LBA and sectors) to `entries`; a
/// loop, a chain too long or a record beyond the disk stops it with a warning.
fn read_logical(
    disk: &Disk,
    (base, ext_sectors): (u64, u64),
    sector64: u64,
    make: &dyn Fn(u32, u8, u64, u64) -> TableEntry,
    entries: &mut Vec<TableEntry>,
    warnings: &mut Vec<String>,
) {
    let mut seen = HashSet::new();
    let mut ebr_lba = base;
    let mut number = 5;
    loop {
        if number >= 5 + MAX_LOGICAL {
            warnings.push(format!(
                "more than {MAX_LOGICAL} logical partitions; stopped"
            ));
            return;
        }
        if !seen.insert(ebr_lba) {
            warnings.push(format!(
                "the chain of logical partitions loops back to LBA {ebr_lba}; stopped"
            ));
            return;
        }
        let ebr = match disk.read(ebr_lba * sector64, 512) {
            Ok(b) => b,
            Err(_) => {
                warnings.push(format!(
                    "extended boot record at LBA {ebr_lba} is beyond the disk"
                ));
                return;
            }
        };
        if ebr[510] != 0x55 || ebr[511] != 0xAA {
            // An extended partition with no logical ones has a blank first EBR.
            if ebr_lba != base {
                warnings.push(format!(
                    "extended boot record at LBA {ebr_lba} has no signature; stopped"
                ));
            }
            return;
        }
        let slots = mbr_slots(&ebr);
        let data = &slots[0];
        if data.kind != 0 && data.sectors != 0 && !is_extended(data.kind) {
            let start = ebr_lba + data.start as u64;
            if start + data.sectors as u64 > base + ext_sectors {
                warnings.push(format!(
                    "logical partition {number} extends beyond its extended partition"
                ));
            }
            entries.push(make(number, data.kind, start, data.sectors as u64));
            number += 1;
        }
        let next = &slots[1];
        if !is_extended(next.kind) || next.sectors == 0 {
            return;
        }
        ebr_lba = base + next.start as u64;
    }
}

/// Names of MBR partition type bytes (as fdisk calls them).
pub(crate) fn mbr_type_name(kind: u8) -> &'static str {
    match kind {
        0x00 => "Empty",
        0x01 => "FAT12",
        0x04 => "FAT16 <32M",
        0x05 => "Extended",
        0x06 => "FAT16",
        0x07 => "HPFS/NTFS/exFAT",
        0x0b => "W95 FAT32",
        0x0c => "W95 FAT32 (LBA)",
        0x0e => "W95 FAT16 (LBA)",
        0x0f => "W95 Ext'd (LBA)",
        0x11 => "Hidden FAT12",
        0x12 => "Compaq diagnostics",
        0x14 => "Hidden FAT16 <32M",
        0x16 => "Hidden FAT16",
        0x17 => "Hidden HPFS/NTFS",
        0x1b => "Hidden W95 FAT32",
        0x1c => "Hidden W95 FAT32 (LBA)",
        0x1e => "Hidden W95 FAT16 (LBA)",
        0x27 => "Hidden NTFS WinRE",
        0x42 => "SFS",
        0x82 => "Linux swap / Solaris",
        0x83 => "Linux",
        0x85 => "Linux extended",
        0x8e => "Linux LVM",
        0xa5 => "FreeBSD",
        0xa6 => "OpenBSD",
        0xa8 => "Darwin UFS",
        0xa9 => "NetBSD",
        0xab => "Darwin boot",
        0xaf => "HFS / HFS+",
        0xde => "Dell Utility",
        0xee => "GPT",
        0xef => "EFI (FAT-12/16/32)",
        0xfb => "VMware VMFS",
        0xfc => "VMware VMKCORE",
        0xfd => "Linux raid autodetect",
        _ => "unknown",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn locates_ranges_in_partitions() {
        let entry = |number, start, size, type_id: &str, name: Option<&str>| TableEntry {
            number,
            start_bytes: start,
            size_bytes: size,
            type_name: if type_id == "0x05" {
                "Extended"
            } else {
                "Linux"
            }
            .into(),
            type_id: type_id.into(),
            name: name.map(str::to_string),
            uuid: None,
        };
        let t = PartitionTable {
            kind: "dos".into(),
            disk_guid: None,
            entries: vec![
                entry(1, 1 << 20, 10 << 20, "0x83", Some("root")),
                entry(2, 20 << 20, 20 << 20, "0x05", None),
                entry(5, 21 << 20, 5 << 20, "0x83", None),
            ],
            warnings: Vec::new(),
            gpt_array_bytes: 0,
        };
        assert_eq!(
            t.locate(0, 4096),
            "before the first partition (dos partition table, boot area)"
        );
        assert_eq!(
            t.locate(2 << 20, 3 << 20),
            "in partition 1 (Linux, \"root\")"
        );
        assert_eq!(t.locate(11 << 20, 12 << 20), "outside every partition");
        assert_eq!(t.locate(22 << 20, 23 << 20), "in partition 5 (Linux)");
        assert_eq!(t.locate(20 << 20, 21 << 20), "in partition 2 (Extended)");
        assert_eq!(
            t.locate(10 << 20, 22 << 20),
            "in partition 1 (Linux, \"root\") and partition 5 (Linux)"
        );
    }

    #[test]
    fn formats_mixed_endian_guids() {
        // The EFI System type as stored on disk.
        let b = [
            0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e,
            0xc9, 0x3b,
        ];
        let s = guid_string(&b);
        assert_eq!(s, "c12a7328-f81f-11d2-ba4b-00a0c93ec93b");
        assert_eq!(gpt_type_name(&s), Some("EFI System"));
        assert_eq!(
            gpt_type_name("C12A7328-F81F-11D2-BA4B-00A0C93EC93B"),
            Some("EFI System")
        );
        assert_eq!(guid_string(&b[..3]), "");
    }

    #[test]
    fn decodes_utf16_names() {
        let mut b = [0u8; 72];
        for (i, u) in "root é".encode_utf16().enumerate() {
            b[i * 2..i * 2 + 2].copy_from_slice(&u.to_le_bytes());
        }
        assert_eq!(utf16le_name(&b), "root é");
        // A lone surrogate must not break decoding.
        b[0..2].copy_from_slice(&0xd800u16.to_le_bytes());
        assert_eq!(utf16le_name(&b), "\u{fffd}oot é");
        assert_eq!(utf16le_name(&[0u8; 72]), "");
    }

    #[test]
    fn names_mbr_types() {
        assert_eq!(mbr_type_name(0x83), "Linux");
        assert_eq!(mbr_type_name(0xfd), "Linux raid autodetect");
        assert_eq!(mbr_type_name(0x99), "unknown");
        assert!(is_extended(0x05) && is_extended(0x0f) && is_extended(0x85));
    }

    #[test]
    fn rejects_odd_sector_sizes() {
        let p = Path::new("/nonexistent");
        assert!(read_table(p, 100).is_err());
        assert!(read_table(p, 1000).is_err());
        assert!(read_table(p, 1 << 20).is_err());
    }

    #[test]
    fn tells_filesystem_boot_sectors_from_mbrs() {
        let mut s = vec![0u8; 512];
        s[510] = 0x55;
        s[511] = 0xaa;
        assert!(looks_like_mbr(&s));
        s[82..87].copy_from_slice(b"FAT32");
        s[3..11].copy_from_slice(b"mkfs.fat");
        assert!(!looks_like_mbr(&s));
        let mut m = vec![0u8; 512];
        m[446] = 0x7f;
        assert!(!looks_like_mbr(&m));
    }
}
