//! FAT12/16/32 (vfat): the used clusters are those whose FAT entry is not free in
//! any copy of the FAT, read read-only from the partition.
//!
//! What is copied: the reserved region (boot sector, FSInfo, backup boot sector),
//! every FAT copy, the FAT12/16 root directory region, every cluster some FAT copy
//! marks in use (a chain link or an end of chain; the FAT32 root directory is such
//! a chain), and everything past the last cluster (slack and whatever follows the
//! filesystem). Clusters marked bad hold no data and are not read: on a failing
//! disk they are the ones most likely to be unreadable.
//!
//! Checked, else the partition is copied whole with the reason: the boot sector's
//! geometry against itself and the partition, the FAT's media byte, and that every
//! entry is free, bad, an end of chain or a cluster that exists. FAT copies that
//! differ (a crash between writing them) are not an error: a cluster any copy uses
//! is kept. There is no journal: the FAT on disk is what fsck and every driver use.

use crate::util::{Extents, le16, le32, read};
use crate::{Error, ReadAt, Usage};

/// The boot sector's geometry, checked against itself and the partition.
struct Geometry {
    bits: u32,
    cluster: u64,
    fat_start: u64,
    fat_bytes: u64,
    fats: u64,
    data_start: u64,
    clusters: u64,
    media: u8,
    label: Option<String>,
}

/// `None` if the partition's first sector is not a FAT boot sector.
pub fn probe(dev: &dyn ReadAt) -> Option<Result<Usage, Error>> {
    let mut b = [0u8; 512];
    if dev.len() < 512 || dev.read_exact_at(&mut b, 0).is_err() {
        return None;
    }
    let g = geometry(&b)?;
    Some(g.and_then(|g| usage(dev, &g)))
}

fn inconsistent(what: String) -> Error {
    Error::Inconsistent(what)
}

/// `None` if this is no FAT boot sector at all (NTFS, exFAT, a partition table, a
/// boot loader), else the geometry or why it cannot be right.
fn geometry(b: &[u8]) -> Option<Result<Geometry, Error>> {
    let sector = u64::from(le16(b, 0x0B));
    let per_cluster = u64::from(b[0x0D]);
    let reserved = u64::from(le16(b, 0x0E));
    let fats = u64::from(b[0x10]);
    let media = b[0x15];
    let fat16_size = u64::from(le16(b, 0x16));
    let fat_sectors = if fat16_size != 0 {
        fat16_size
    } else {
        u64::from(le32(b, 0x24))
    };
    let signed = b[0x1FE] == 0x55 && b[0x1FF] == 0xAA && matches!(b[0], 0xEB | 0xE9);
    if !signed
        || ![512, 1024, 2048, 4096].contains(&sector)
        || !per_cluster.is_power_of_two()
        || reserved == 0
        || fats == 0
        || fat_sectors == 0
        || !(media == 0xF0 || media >= 0xF8)
    {
        return None;
    }
    let root_entries = u64::from(le16(b, 0x11));
    let total = match le16(b, 0x13) {
        0 => u64::from(le32(b, 0x20)),
        n => u64::from(n),
    };
    let root_sectors = (root_entries * 32).div_ceil(sector);
    let data_start = reserved + fats * fat_sectors + root_sectors;
    if total <= data_start {
        return Some(Err(inconsistent(format!(
            "FAT boot sector: {total} sectors, data starting at sector {data_start}"
        ))));
    }
    let clusters = (total - data_start) / per_cluster;
    let bits = match clusters {
        0..4085 => 12,
        4085..65525 => 16,
        _ => 32,
    };
    let label_at = if bits == 32 { 0x42 } else { 0x26 };
    let g = Geometry {
        bits,

        cluster: sector * per_cluster,
        fat_start: reserved * sector,
        fat_bytes: fat_sectors * sector,
        fats,
        data_start: data_start * sector,
        clusters,
        media,
        label: (b[label_at] == 0x29)
            .then(|| label(&b[label_at + 5..label_at + 16]))
            .flatten(),
    };
    Some(check(g, root_entries, fat16_size))
}

fn label(raw: &[u8]) -> Option<String> {
    let s = String::from_utf8_lossy(raw).trim_end().to_string();
    (!s.is_empty() && s != "NO NAME").then_some(s)
}

/// The layout rules a FAT of this type follows. (Sizes cannot overflow: every
/// count is at most 32 bits, a sector at most 4096 bytes.)
fn check(g: Geometry, root_entries: u64, fat16_size: u64) -> Result<Geometry, Error> {
    if (g.bits == 32) != (root_entries == 0) || (g.bits == 32 && fat16_size != 0) {
        return Err(inconsistent(format!(
            "FAT{} with {root_entries} root directory entries",
            g.bits
        )));
    }
    // FAT32's cluster numbers have 28 bits: more clusters than that is no FAT.
    if g.clusters > 0x0FFF_FFF5 - 2 {
        return Err(inconsistent(format!("FAT32 of {} clusters", g.clusters)));
    }
    if g.cluster > 1 << 18 {
        return Err(inconsistent(format!("FAT cluster of {} bytes", g.cluster)));
    }
    if (g.clusters + 2) * u64::from(g.bits) > g.fat_bytes * 8 {
        return Err(inconsistent(format!(
            "a FAT of {} bytes cannot map {} clusters",
            g.fat_bytes, g.clusters
        )));
    }
    Ok(g)
}

impl Geometry {
    /// The bytes of the FAT entries for clusters 0..clusters+2.
    fn entries_bytes(&self) -> u64 {
        ((self.clusters + 2) * u64::from(self.bits)).div_ceil(8)
    }

    fn entry(&self, fat: &[u8], n: u64) -> u32 {
        match self.bits {
            12 => {
                let v = le16(fat, (n * 3 / 2) as usize);
                u32::from(if n.is_multiple_of(2) {
                    v & 0xFFF
                } else {
                    v >> 4
                })
            }
            16 => u32::from(le16(fat, (n * 2) as usize)),
            _ => le32(fat, (n * 4) as usize) & 0x0FFF_FFFF,
        }
    }

    /// The first value meaning "bad cluster" (higher ones end a chain).
    fn bad(&self) -> u32 {
        match self.bits {
            12 => 0xFF7,
            16 => 0xFFF7,
            _ => 0x0FFF_FFF7,
        }
    }
}

/// Bytes of a FAT16/32 read at a time; a FAT12 (at most 6 KiB) is read whole, so no
/// 12-bit entry straddles two pieces.
const PIECE: u64 = 1 << 16;

fn usage(dev: &dyn ReadAt, g: &Geometry) -> Result<Usage, Error> {
    let end = g.data_start + g.clusters * g.cluster;
    if end > dev.len() {
        return Err(inconsistent(format!(
            "FAT{} of {end} bytes does not fit the partition's {} bytes",
            g.bits,
            dev.len()
        )));
    }
    // One bit per cluster: at most a 4096th of the partition.
    let mut used = vec![0u64; (g.clusters + 2).div_ceil(64) as usize];
    for copy in 0..g.fats {
        scan_fat(dev, g, g.fat_start + copy * g.fat_bytes, &mut used)?;
    }
    let mut out = Extents::new(dev.len());
    out.add(0..g.data_start)?;
    for c in 2..g.clusters + 2 {
        if used[(c / 64) as usize] & (1 << (c % 64)) != 0 {
            let at = g.data_start + (c - 2) * g.cluster;
            out.add(at..at + g.cluster)?;
        }
    }
    out.add(end..dev.len())?;
    Ok(Usage {
        fs: "vfat",
        label: g.label.clone(),
        block_size: g.cluster,
        used: out.finish(),
    })
}

/// Reads one FAT copy at `start`, checks each entry, and marks the clusters in use.
fn scan_fat(dev: &dyn ReadAt, g: &Geometry, start: u64, used: &mut [u64]) -> Result<(), Error> {
    let total = g.entries_bytes();
    let entry_bytes = u64::from(g.bits / 8).max(1);
    let piece = if g.bits == 12 { total } else { PIECE };
    let mut buf = vec![0u8; piece.min(total) as usize];
    let mut first = 0u64; // the first cluster number in buf
    while first < g.clusters + 2 {
        let off = if g.bits == 12 { 0 } else { first * entry_bytes };
        let n = (total - off).min(piece) as usize;
        read(dev, "FAT", start + off, &mut buf[..n])?;
        if first == 0 && buf[0] != g.media {
            return Err(inconsistent(format!(
                "the FAT at byte {start} does not start with the media byte {:#x}",
                g.media
            )));
        }
        let count = if g.bits == 12 {
            g.clusters + 2
        } else {
            n as u64 / entry_bytes
        };
        for i in 0..count {
            let c = first + i;
            if c < 2 || c >= g.clusters + 2 {
                continue;
            }
            let e = if g.bits == 12 {
                g.entry(&buf, c)
            } else {
                g.entry(&buf, i)
            };
            if e == 0 || e == g.bad() {
                continue;
            }
            if e < 2 || (u64::from(e) >= g.clusters + 2 && e < g.bad()) {
                return Err(inconsistent(format!(
                    "FAT entry of cluster {c} is {e:#x}: no such cluster"
                )));
            }
            used[(c / 64) as usize] |= 1 << (c % 64);
        }
        first += count;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A partition of `len` bytes of zeros but for its first bytes.
    struct Sparse {
        head: Vec<u8>,
        len: u64,
    }

    impl ReadAt for Sparse {
        fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
            buf.fill(0);
            let have = self.head.len() as u64;
            if offset < have {
                let n = buf.len().min((have - offset) as usize);
                buf[..n].copy_from_slice(&self.head[offset as usize..offset as usize + n]);
            }
            Ok(())
        }
        fn len(&self) -> u64 {
            self.len
        }
    }

    #[test]
    fn a_fat32_claiming_more_clusters_than_28_bits_number_is_refused_at_once() {
        let mut b = vec![0u8; 32 << 10];
        b[0] = 0xEB;
        b[0x0B..0x0D].copy_from_slice(&512u16.to_le_bytes());
        b[0x0D] = 1;
        b[0x0E] = 32;
        b[0x10] = 1;
        b[0x15] = 0xF8;
        b[0x20..0x24].copy_from_slice(&u32::MAX.to_le_bytes());
        b[0x24..0x28].copy_from_slice(&(u32::MAX / 129).to_le_bytes());
        b[0x1FE] = 0x55;
        b[0x1FF] = 0xAA;
        // The FAT (at sector 32) starts with the media byte, as a real one does.
        b[32 * 512..32 * 512 + 8]
            .copy_from_slice(&[0xF8, 0xFF, 0xFF, 0x0F, 0xFF, 0xFF, 0xFF, 0x0F]);
        let dev = Sparse {
            head: b,
            len: 1 << 42,
        };
        let started = std::time::Instant::now();
        let e = probe(&dev).expect("a FAT boot sector").unwrap_err();
        assert!(e.to_string().contains("clusters"), "{e}");
        assert!(started.elapsed().as_secs() < 5, "not scanning a 16 GiB FAT");
    }
}
