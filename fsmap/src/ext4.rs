//! ext2/3/4: the used blocks are the bits set in each group's block bitmap, read
//! read-only from the partition, plus every piece of metadata computed from the
//! superblock (so a group whose bitmap is not initialised still keeps its own).
//!
//! What is copied: the boot block and every superblock and group-descriptor copy
//! (with the reserved GDT blocks and `meta_bg` descriptor blocks), every group's
//! bitmaps and whole inode table, every block its bitmap marks (that includes the
//! journal, the resize inode, MMP, extended attributes and directories, which the
//! bitmaps mark like any other block), and everything past the filesystem's end.
//! A `BLOCK_UNINIT` group (only trusted when descriptors are checksummed) holds no
//! allocated block but its metadata, as the kernel computes it.
//!
//! Checked, else the partition is copied whole with the reason: the superblock's
//! geometry against the partition size and itself; the superblock, descriptor and
//! block-bitmap checksums (`metadata_csum`; descriptors also under `gdt_csum`); each
//! bitmap's free count against its descriptor's; every location inside the
//! filesystem. Unknown incompatible or read-only features are not guessed at.
//!
//! A journal that needs recovery (`needs_recovery`: not cleanly unmounted) is copied
//! whole: its transactions may allocate blocks the on-disk bitmaps still call free
//! (in ordered mode their data is already written there), so the bitmaps cannot be
//! trusted until the journal is replayed, which this read-only parser does not do.
//! The same holds for a filesystem marked unclean or as having errors (fsck it).

use std::ops::Range;

use crate::util::{Extents, crc16, crc32c, le16, le32, read};
use crate::{Error, ReadAt, Usage};

const SB_OFFSET: u64 = 1024;
const SB_LEN: usize = 1024;
const MAGIC: u16 = 0xEF53;

const COMPAT_HAS_JOURNAL: u32 = 0x4;
const COMPAT_SPARSE_SUPER2: u32 = 0x200;

/// The union of a list of feature bits.
const fn bits(list: &[u32]) -> u32 {
    let (mut all, mut i) = (0, 0);
    while i < list.len() {
        all |= list[i];
        i += 1;
    }
    all
}

const INCOMPAT_FILETYPE: u32 = 0x2;
const INCOMPAT_RECOVER: u32 = 0x4;
const INCOMPAT_JOURNAL_DEV: u32 = 0x8;
const INCOMPAT_META_BG: u32 = 0x10;
const INCOMPAT_64BIT: u32 = 0x80;
const INCOMPAT_CSUM_SEED: u32 = 0x2000;
/// Every incompatible feature whose effect on allocation is understood: filetype,
/// recover, meta_bg, extents, 64bit, mmp, flex_bg, ea_inode, csum_seed, largedir,
/// inline_data, encrypt, casefold.
const INCOMPAT_KNOWN: u32 = bits(&[
    0x2, 0x4, 0x10, 0x40, 0x80, 0x100, 0x200, 0x400, 0x2000, 0x4000, 0x8000, 0x1_0000, 0x2_0000,
]);
/// What ext3 knows of the incompatible features: more makes it ext4.
const INCOMPAT_EXT3: u32 = INCOMPAT_FILETYPE | INCOMPAT_RECOVER | INCOMPAT_META_BG;

const RO_SPARSE_SUPER: u32 = 0x1;
const RO_GDT_CSUM: u32 = 0x10;
const RO_BIGALLOC: u32 = 0x200;
const RO_METADATA_CSUM: u32 = 0x400;
/// sparse_super, large_file, btree_dir, huge_file, gdt_csum, dir_nlink, extra_isize,
/// quota, bigalloc, metadata_csum, readonly, project, shared_blocks, verity,
/// orphan_present.
const RO_KNOWN: u32 = bits(&[
    0x1, 0x2, 0x4, 0x8, 0x10, 0x20, 0x40, 0x100, 0x200, 0x400, 0x1000, 0x2000, 0x4000, 0x8000,
    0x1_0000,
]);
const RO_EXT3: u32 = 0x1 | 0x2 | 0x4;

const BG_BLOCK_UNINIT: u16 = 0x2;

/// The superblock's geometry, checked against itself and the partition.
struct Sb {
    name: &'static str,
    label: Option<String>,
    block_size: u64,
    /// Blocks per cluster (1 without bigalloc): a bitmap bit is a cluster.
    ratio: u64,
    blocks: u64,
    first_data_block: u64,
    blocks_per_group: u64,
    clusters_per_group: u64,
    groups: u64,
    inode_table_blocks: u64,
    desc_size: usize,
    /// Descriptor blocks in the classic layout (after each superblock copy).
    classic_gdt: u64,
    reserved_gdt: u64,
    meta_bg: bool,
    first_meta_bg: u64,
    sparse_super: bool,
    sparse_super2: Option<[u64; 2]>,
    /// Descriptors are checksummed (metadata_csum or gdt_csum): only then are the
    /// uninit flags trusted, as the kernel does.
    gd_csum: bool,
    metadata_csum: bool,
    csum_seed: u32,
    uuid: [u8; 16],
}

/// `None` if the partition holds no ext2/3/4 superblock.
pub fn probe(dev: &dyn ReadAt) -> Option<Result<Usage, Error>> {
    let mut raw = [0u8; SB_LEN];
    if dev.len() < SB_OFFSET + SB_LEN as u64 || dev.read_exact_at(&mut raw, SB_OFFSET).is_err() {
        return None;
    }
    if le16(&raw, 0x38) != MAGIC {
        return None;
    }
    Some(parse_sb(&raw, dev.len()).and_then(|sb| usage(dev, &sb)))
}

fn inconsistent(what: impl Into<String>) -> Error {
    Error::Inconsistent(what.into())
}

fn check_state(raw: &[u8], incompat: u32) -> Result<(), Error> {
    if incompat & INCOMPAT_RECOVER != 0 {
        return Err(inconsistent(
            "the journal needs recovery (not cleanly unmounted): the block bitmaps may not be current",
        ));
    }
    let state = le16(raw, 0x3A);
    if state & 0x2 != 0 {
        return Err(inconsistent(
            "the filesystem is marked as having errors (run fsck)",
        ));
    }
    if state & 0x1 == 0 {
        return Err(inconsistent(
            "the filesystem was not cleanly unmounted (run fsck)",
        ));
    }
    Ok(())
}

fn check_features(incompat: u32, ro: u32) -> Result<(), Error> {
    if incompat & INCOMPAT_JOURNAL_DEV != 0 {
        return Err(Error::Unsupported(
            "an external ext3/4 journal device".into(),
        ));
    }
    if incompat & !INCOMPAT_KNOWN != 0 {
        return Err(Error::Unsupported(format!(
            "ext4 incompatible feature bits {:#x}",
            incompat & !INCOMPAT_KNOWN
        )));
    }
    if ro & !RO_KNOWN != 0 {
        return Err(Error::Unsupported(format!(
            "ext4 read-only feature bits {:#x}",
            ro & !RO_KNOWN
        )));
    }
    Ok(())
}

fn label(raw: &[u8]) -> Option<String> {
    let name = &raw[0x78..0x88];
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    let s = String::from_utf8_lossy(&name[..end]).trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn fs_name(compat: u32, incompat: u32, ro: u32) -> &'static str {
    if incompat & !INCOMPAT_EXT3 != 0 || ro & !RO_EXT3 != 0 {
        "ext4"
    } else if compat & COMPAT_HAS_JOURNAL != 0 {
        "ext3"
    } else {
        "ext2"
    }
}

/// Block and cluster size, the blocks per cluster, and the total blocks.
fn sizes(raw: &[u8], incompat: u32, ro: u32, len: u64) -> Result<(u64, u64, u64), Error> {
    let log_block = le32(raw, 0x18);
    let log_cluster = le32(raw, 0x1C);
    if log_block > 6 {
        return Err(inconsistent(format!("block size 1024 << {log_block}")));
    }
    let block_size = 1024u64 << log_block;
    let ratio = if ro & RO_BIGALLOC != 0 {
        if log_cluster < log_block || log_cluster - log_block > 16 {
            return Err(inconsistent(format!("cluster size 1024 << {log_cluster}")));
        }
        1u64 << (log_cluster - log_block)
    } else {
        1
    };
    let mut blocks = u64::from(le32(raw, 0x04));
    if incompat & INCOMPAT_64BIT != 0 {
        blocks |= u64::from(le32(raw, 0x150)) << 32;
    }
    let bytes = blocks
        .checked_mul(block_size)
        .filter(|&b| b > 0 && b <= len);
    if bytes.is_none() {
        return Err(inconsistent(format!(
            "{blocks} blocks of {block_size} bytes do not fit the partition's {len} bytes"
        )));
    }
    Ok((block_size, ratio, blocks))
}

fn check_sb_csum(raw: &[u8]) -> Result<(), Error> {
    if raw[0x175] != 1 {
        return Err(Error::Unsupported(format!(
            "ext4 checksum type {}",
            raw[0x175]
        )));
    }
    if crc32c(!0, &raw[..0x3FC]) != le32(raw, 0x3FC) {
        return Err(inconsistent("superblock checksum wrong"));
    }
    Ok(())
}

/// The blocks of one group's inode table, the inode counts and size checked.
fn inode_table_blocks(raw: &[u8], block_size: u64, groups: u64) -> Result<u64, Error> {
    let inodes_per_group = u64::from(le32(raw, 0x28));
    let inode_size = if le32(raw, 0x4C) == 0 {
        128
    } else {
        u64::from(le16(raw, 0x58))
    };
    if !(1..=8 * block_size).contains(&inodes_per_group)
        || !inode_size.is_power_of_two()
        || !(128..=block_size).contains(&inode_size)
        || groups * inodes_per_group != u64::from(le32(raw, 0x00))
    {
        return Err(inconsistent(format!(
            "{} inodes in {groups} groups of {inodes_per_group} of {inode_size} bytes",
            le32(raw, 0x00)
        )));
    }
    Ok((inodes_per_group * inode_size).div_ceil(block_size))
}

/// A group descriptor's size: 32 bytes, or with 64bit what the superblock says.
fn desc_size(raw: &[u8], incompat: u32, block_size: u64) -> Result<usize, Error> {
    if incompat & INCOMPAT_64BIT == 0 {
        return Ok(32);
    }
    let d = le16(raw, 0xFE) as usize;
    if !d.is_power_of_two() || !(64..=1024).contains(&d) || d as u64 > block_size {
        return Err(inconsistent(format!("group descriptor size {d}")));
    }
    Ok(d)
}

fn parse_sb(raw: &[u8], len: u64) -> Result<Sb, Error> {
    let compat = le32(raw, 0x5C);
    let incompat = le32(raw, 0x60);
    let ro = le32(raw, 0x64);
    check_features(incompat, ro)?;
    let metadata_csum = ro & RO_METADATA_CSUM != 0;
    if metadata_csum {
        check_sb_csum(raw)?;
    }
    check_state(raw, incompat)?;
    let (block_size, ratio, blocks) = sizes(raw, incompat, ro, len)?;
    let first_data_block = u64::from(le32(raw, 0x14));
    if first_data_block > u64::from(block_size == 1024) || first_data_block >= blocks {
        return Err(inconsistent(format!("first data block {first_data_block}")));
    }
    let clusters_per_group = u64::from(le32(raw, 0x24));
    let blocks_per_group = u64::from(le32(raw, 0x20));
    // mke2fs makes 256 to 8 x block size per group (one bitmap block); fewer would
    // only serve to make this parser read a bitmap per few blocks.
    if !(256..=8 * block_size).contains(&clusters_per_group)
        || !clusters_per_group.is_multiple_of(8)
        || clusters_per_group.checked_mul(ratio) != Some(blocks_per_group)
    {
        return Err(inconsistent(format!(
            "{blocks_per_group} blocks, {clusters_per_group} clusters per group"
        )));
    }
    let groups = (blocks - first_data_block).div_ceil(blocks_per_group);
    let inode_table_blocks = inode_table_blocks(raw, block_size, groups)?;
    let desc_size = desc_size(raw, incompat, block_size)?;
    let gdt_blocks = groups.div_ceil(block_size / desc_size as u64);
    let meta_bg = incompat & INCOMPAT_META_BG != 0;
    let first_meta_bg = u64::from(le32(raw, 0x104));
    let classic_gdt = if meta_bg {
        first_meta_bg.min(gdt_blocks)
    } else {
        gdt_blocks
    };
    let reserved_gdt = u64::from(le16(raw, 0xCE));
    if reserved_gdt > block_size / 4 || 2 + classic_gdt + reserved_gdt > blocks_per_group {
        return Err(inconsistent(format!(
            "{classic_gdt} descriptor and {reserved_gdt} reserved blocks per group of {blocks_per_group}"
        )));
    }
    let mut uuid = [0u8; 16];
    uuid.copy_from_slice(&raw[0x68..0x78]);
    let csum_seed = if incompat & INCOMPAT_CSUM_SEED != 0 {
        le32(raw, 0x270)
    } else {
        crc32c(!0, &uuid)
    };
    Ok(Sb {
        name: fs_name(compat, incompat, ro),
        label: label(raw),
        block_size,
        ratio,
        blocks,
        first_data_block,
        blocks_per_group,
        clusters_per_group,
        groups,
        inode_table_blocks,
        desc_size,
        classic_gdt,
        reserved_gdt,
        meta_bg,
        first_meta_bg,
        sparse_super: ro & RO_SPARSE_SUPER != 0,
        sparse_super2: (compat & COMPAT_SPARSE_SUPER2 != 0)
            .then(|| [u64::from(le32(raw, 0x24C)), u64::from(le32(raw, 0x250))]),
        gd_csum: ro & (RO_GDT_CSUM | RO_METADATA_CSUM) != 0,
        metadata_csum,
        csum_seed,
        uuid,
    })
}

impl Sb {
    fn group_first_block(&self, g: u64) -> u64 {
        self.first_data_block + g * self.blocks_per_group
    }

    /// Blocks in group `g` (the last one may be short).
    fn group_blocks(&self, g: u64) -> u64 {
        (self.blocks - self.group_first_block(g)).min(self.blocks_per_group)
    }

    fn has_super(&self, g: u64) -> bool {
        if g == 0 {
            return true;
        }
        if let Some(b) = self.sparse_super2 {
            return g == b[0] || g == b[1];
        }
        if g <= 1 || !self.sparse_super {
            return true;
        }
        if g.is_multiple_of(2) {
            return false;
        }
        [3u64, 5, 7].iter().any(|&p| {
            let mut n = p;
            while n < g {
                n *= p;
            }
            n == g
        })
    }

    fn descs_per_block(&self) -> u64 {
        self.block_size / self.desc_size as u64
    }

    /// The block holding descriptor block `nr` (the kernel's `descriptor_loc`).
    fn descriptor_block(&self, nr: u64) -> u64 {
        let sb_block = u64::from(self.block_size == 1024);
        if !self.meta_bg || nr < self.first_meta_bg {
            return sb_block + nr + 1;
        }
        let g = nr * self.descs_per_block();
        self.group_first_block(g) + u64::from(self.has_super(g))
    }

    fn bytes(&self, blocks: Range<u64>) -> Range<u64> {
        blocks.start * self.block_size..blocks.end * self.block_size
    }

    /// What group `g` holds of the filesystem's own structures, wherever the group's
    /// bitmaps and table are: superblock copy, descriptors, reserved GDT.
    fn base_metadata(&self, g: u64, out: &mut Extents) -> Result<(), Error> {
        let first = self.group_first_block(g);
        if g == 0 {
            let sb_block = u64::from(self.block_size == 1024);
            out.add(self.bytes(0..sb_block + 1 + self.classic_gdt + self.reserved_gdt))?;
        } else if self.has_super(g) {
            out.add(self.bytes(first..first + 1 + self.classic_gdt + self.reserved_gdt))?;
        }
        if self.meta_bg {
            // meta_bg keeps a metagroup's descriptor block in its first, second and
            // last group.
            let dpb = self.descs_per_block();
            let nr = g / dpb;
            if nr >= self.first_meta_bg && [0, 1, dpb - 1].contains(&(g % dpb)) {
                let b = first + u64::from(self.has_super(g));
                out.add(self.bytes(b..b + 1))?;
            }
        }
        Ok(())
    }
}

/// One group descriptor, as far as allocation goes.
struct Desc {
    block_bitmap: u64,
    inode_bitmap: u64,
    inode_table: u64,
    free: u64,
    flags: u16,
    bitmap_csum: u32,
}

fn hi32(d: &[u8], big: bool, o: usize) -> u64 {
    if big { u64::from(le32(d, o)) << 32 } else { 0 }
}

fn desc(sb: &Sb, g: u64, d: &[u8]) -> Result<Desc, Error> {
    let big = sb.desc_size >= 64;
    if sb.gd_csum {
        let want = le16(d, 0x1E);
        let got = if sb.metadata_csum {
            let mut c = crc32c(sb.csum_seed, &(g as u32).to_le_bytes());
            c = crc32c(c, &d[..0x1E]);
            c = crc32c(c, &[0, 0]);
            (crc32c(c, &d[0x20..sb.desc_size]) & 0xFFFF) as u16
        } else {
            let mut c = crc16(!0, &sb.uuid);
            c = crc16(c, &(g as u32).to_le_bytes());
            c = crc16(c, &d[..0x1E]);
            crc16(c, &d[0x20..sb.desc_size])
        };
        if got != want {
            return Err(inconsistent(format!(
                "group {g}: descriptor checksum wrong"
            )));
        }
    }
    let bitmap_csum = u32::from(le16(d, 0x18))
        | if big {
            u32::from(le16(d, 0x38)) << 16
        } else {
            0
        };
    let desc = Desc {
        block_bitmap: u64::from(le32(d, 0x00)) | hi32(d, big, 0x20),
        inode_bitmap: u64::from(le32(d, 0x04)) | hi32(d, big, 0x24),
        inode_table: u64::from(le32(d, 0x08)) | hi32(d, big, 0x28),
        free: u64::from(le16(d, 0x0C))
            | if big {
                u64::from(le16(d, 0x2C)) << 16
            } else {
                0
            },
        flags: le16(d, 0x12),
        bitmap_csum,
    };
    let inside = |b: u64, n: u64| {
        b >= sb.first_data_block && b.checked_add(n).is_some_and(|e| e <= sb.blocks)
    };
    if !inside(desc.block_bitmap, 1)
        || !inside(desc.inode_bitmap, 1)
        || !inside(desc.inode_table, sb.inode_table_blocks)
    {
        return Err(inconsistent(format!(
            "group {g}: bitmaps or inode table outside the filesystem"
        )));
    }
    Ok(desc)
}

fn usage(dev: &dyn ReadAt, sb: &Sb) -> Result<Usage, Error> {
    let mut out = Extents::new(dev.len());
    // Past the filesystem's end the partition holds nothing ext4 accounts for.
    out.add(sb.blocks * sb.block_size..dev.len())?;
    let dpb = sb.descs_per_block();
    let bs = sb.block_size as usize;
    let mut gdt = vec![0u8; bs];
    let mut bitmap = vec![0u8; bs];
    let mut gdt_loaded = u64::MAX;
    for g in 0..sb.groups {
        let nr = g / dpb;
        if nr != gdt_loaded {
            let at = sb.descriptor_block(nr);
            read(dev, "ext4 group descriptors", at * sb.block_size, &mut gdt)?;
            out.add(sb.bytes(at..at + 1))?;
            gdt_loaded = nr;
        }
        let o = (g % dpb) as usize * sb.desc_size;
        let d = desc(sb, g, &gdt[o..o + sb.desc_size])?;
        sb.base_metadata(g, &mut out)?;
        out.add(sb.bytes(d.block_bitmap..d.block_bitmap + 1))?;
        out.add(sb.bytes(d.inode_bitmap..d.inode_bitmap + 1))?;
        out.add(sb.bytes(d.inode_table..d.inode_table + sb.inode_table_blocks))?;
        if sb.gd_csum && d.flags & BG_BLOCK_UNINIT != 0 {
            continue;
        }
        read(
            dev,
            "ext4 block bitmap",
            d.block_bitmap * sb.block_size,
            &mut bitmap,
        )?;
        group_bitmap(sb, g, &d, &bitmap, &mut out)?;
    }
    Ok(Usage {
        fs: sb.name,
        label: sb.label.clone(),
        block_size: sb.block_size * sb.ratio,
        used: out.finish(),
    })
}

/// Checks group `g`'s block bitmap and adds the clusters it marks.
fn group_bitmap(sb: &Sb, g: u64, d: &Desc, bitmap: &[u8], out: &mut Extents) -> Result<(), Error> {
    let bits = &bitmap[..(sb.clusters_per_group / 8) as usize];
    if sb.metadata_csum {
        let c = crc32c(sb.csum_seed, bits);
        let c = if sb.desc_size >= 64 { c } else { c & 0xFFFF };
        if c != d.bitmap_csum {
            return Err(inconsistent(format!(
                "group {g}: block bitmap checksum wrong"
            )));
        }
    }
    let clusters = sb.group_blocks(g).div_ceil(sb.ratio);
    let set = |i: u64| bits[(i / 8) as usize] & (1 << (i % 8)) != 0;
    let mut free = 0;
    let first = sb.group_first_block(g);
    let mut run: Option<u64> = None;
    for i in 0..=clusters {
        let used = i < clusters && set(i);
        if i < clusters && !used {
            free += 1;
        }
        match (run, used) {
            (None, true) => run = Some(i),
            (Some(s), false) => {
                out.add(sb.bytes(first + s * sb.ratio..first + i * sb.ratio))?;
                run = None;
            }
            _ => {}
        }
    }
    if free != d.free {
        return Err(inconsistent(format!(
            "group {g}: block bitmap has {free} free clusters, its descriptor says {}",
            d.free
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_feature_masks() {
        assert_eq!(INCOMPAT_KNOWN, 0x3_e7d6);
        assert_eq!(RO_KNOWN, 0x1_f77f);
    }

    #[test]
    fn backup_superblocks_follow_sparse_super() {
        let sb = test_sb();
        let with: Vec<u64> = (0..100).filter(|&g| sb.has_super(g)).collect();
        assert_eq!(with, vec![0, 1, 3, 5, 7, 9, 25, 27, 49, 81]);
        let all = Sb {
            sparse_super: false,
            ..test_sb()
        };
        assert!((0..10).all(|g| all.has_super(g)));
    }

    fn test_sb() -> Sb {
        Sb {
            name: "ext4",
            label: None,
            block_size: 4096,
            ratio: 1,
            blocks: 1 << 20,
            first_data_block: 0,
            blocks_per_group: 32768,
            clusters_per_group: 32768,
            groups: 32,
            inode_table_blocks: 512,
            desc_size: 32,
            classic_gdt: 1,
            reserved_gdt: 0,
            meta_bg: false,
            first_meta_bg: 0,
            sparse_super: true,
            sparse_super2: None,
            gd_csum: false,
            metadata_csum: false,
            csum_seed: 0,
            uuid: [0; 16],
        }
    }
}
