//! btrfs (one device): the chunk tree (bootstrapped from the superblock's
//! sys_chunk_array) maps logical to physical bytes; the extent tree's EXTENT_ITEMs and
//! METADATA_ITEMs are every allocated extent, checked against the block groups' used
//! counters; every physical copy of each (both of DUP) is used, with the superblocks and
//! the first MiB. Node checksums (CRC-32C) are verified; a log tree (fsync'd data not
//! yet in the extent tree) means the filesystem is copied whole.

use std::ops::Range;

use crate::util::{MAX_EXTENTS, crc32c, le16, le32, le64, read_vec};
use crate::{Error, ReadAt, Usage, normalise};

const MAGIC: &[u8; 8] = b"_BHRfS_M";
const SUPER_AT: u64 = 0x1_0000;
const MIRRORS: [u64; 3] = [SUPER_AT, 64 << 20, 256 << 30];
/// Nothing btrfs allocates lies below 1 MiB; a boot loader may.
const RESERVED: u64 = 1 << 20;
const MAX_LEVEL: u8 = 8;
const HEADER: usize = 101;
const KEY: usize = 17;

const CHUNK_ITEM: u8 = 228;
const ROOT_ITEM: u8 = 132;
const EXTENT_ITEM: u8 = 168;
const METADATA_ITEM: u8 = 169;
const BLOCK_GROUP_ITEM: u8 = 192;
const EXTENT_TREE: u64 = 2;
const BLOCK_GROUP_TREE: u64 = 11;

/// Chunk profile bits: only single (none) and DUP fit on one device.
const PROFILES: u64 = 0x8 | 0x10 | 0x40 | 0x80 | 0x100 | 0x200 | 0x400;
const DUP: u64 = 0x20;
/// Incompatible features whose allocation is not described here: RAID56, zoned,
/// extent tree v2, raid stripe tree, and any unknown bit.
const INCOMPAT_KNOWN: u64 =
    0x1 | 0x2 | 0x4 | 0x8 | 0x10 | 0x20 | 0x40 | 0x100 | 0x200 | 0x400 | 0x800 | 0x1_0000;
const INCOMPAT_METADATA_UUID: u64 = 0x400;
const COMPAT_RO_BLOCK_GROUP_TREE: u64 = 0x8;

fn bad(msg: impl Into<String>) -> Error {
    Error::Inconsistent(msg.into())
}

type Key = (u64, u8, u64);
/// What a tree walk calls with each leaf item's key and data.
type Visitor<'v> = dyn FnMut(Key, &[u8]) -> Result<(), Error> + 'v;

fn key(b: &[u8], at: usize) -> Key {
    (
        le64(b, at),
        b.get(at + 8).copied().unwrap_or(0),
        le64(b, at + 9),
    )
}

struct Chunk {
    logical: u64,
    len: u64,
    flags: u64,
    /// (device id, physical start) of each copy.
    stripes: Vec<(u64, u64)>,
}

struct Fs<'a> {
    dev: &'a dyn ReadAt,
    fsid: [u8; 16],
    nodesize: u64,
    devid: u64,
    dev_bytes: u64,
    /// Sorted by logical start, disjoint.
    chunks: Vec<Chunk>,
    /// Nodes read so far, bounded by how many fit on the device.
    nodes: u64,
}

/// `Some` if `dev` holds a btrfs superblock, with what it uses or why not.
pub fn probe(dev: &dyn ReadAt) -> Option<Result<Usage, Error>> {
    let sb = read_vec(dev, "btrfs superblock", SUPER_AT, 4096).ok()?;
    if &sb[0x40..0x48] != MAGIC {
        return None;
    }
    Some(usage(dev, &sb))
}

fn usage(dev: &dyn ReadAt, sb: &[u8]) -> Result<Usage, Error> {
    let mut fs = superblock(dev, sb)?;
    fs.sys_chunks(sb)?;
    let mut chunks = Vec::new();
    fs.walk(le64(sb, 0x58), sb[0xc7], &mut |k, d| {
        if k.1 == CHUNK_ITEM {
            chunks.push(parse_chunk(k.2, d)?);
        }
        Ok(())
    })?;
    fs.set_chunks(chunks)?;
    let root = |fs: &mut Fs, objectid: u64| -> Result<(u64, u8), Error> {
        let mut found = None;
        fs.walk(le64(sb, 0x50), sb[0xc6], &mut |k, d| {
            if k.0 == objectid && k.1 == ROOT_ITEM && d.len() >= 239 {
                found = Some((le64(d, 176), d[238]));
            }
            Ok(())
        })?;
        found.ok_or_else(|| bad(format!("no root of tree {objectid}")))
    };
    let (extent_root, extent_level) = root(&mut fs, EXTENT_TREE)?;
    let mut extents: Vec<Range<u64>> = Vec::new();
    let mut groups: Vec<(u64, u64, u64)> = Vec::new();
    let nodesize = fs.nodesize;
    let mut collect = |k: Key, d: &[u8]| -> Result<(), Error> {
        if extents.len() >= MAX_EXTENTS {
            return Err(Error::Unsupported(format!(
                "btrfs with more than {MAX_EXTENTS} extents"
            )));
        }
        match k.1 {
            EXTENT_ITEM => extents.push(k.0..k.0.saturating_add(k.2)),
            METADATA_ITEM => extents.push(k.0..k.0.saturating_add(nodesize)),
            BLOCK_GROUP_ITEM => groups.push((k.0, k.2, le64(d, 0))),
            _ => {}
        }
        Ok(())
    };
    fs.walk(extent_root, extent_level, &mut collect)?;
    if le64(sb, 0xb4) & COMPAT_RO_BLOCK_GROUP_TREE != 0 {
        let (bg_root, bg_level) = root(&mut fs, BLOCK_GROUP_TREE)?;
        fs.walk(bg_root, bg_level, &mut collect)?;
    }
    let mut used = fs.physical(&extents, &groups)?;
    used.push(0..RESERVED);
    used.extend(MIRRORS.iter().map(|&m| m..m + 4096));
    used.push(fs.dev_bytes..dev.len());
    let label = &sb[0x12b..0x22b];
    let label = &label[..label.iter().position(|&c| c == 0).unwrap_or(256)];
    Ok(Usage {
        fs: "btrfs",
        label: (!label.is_empty()).then(|| String::from_utf8_lossy(label).into_owned()),
        block_size: u64::from(le32(sb, 0x90)),
        used: normalise(used, dev.len()),
    })
}

fn superblock<'a>(dev: &'a dyn ReadAt, sb: &[u8]) -> Result<Fs<'a>, Error> {
    match le16(sb, 0xc4) {
        0 => {}
        1 => return Err(Error::Unsupported("btrfs with xxhash checksums".into())),
        2 => return Err(Error::Unsupported("btrfs with sha256 checksums".into())),
        3 => return Err(Error::Unsupported("btrfs with blake2b checksums".into())),
        t => return Err(bad(format!("checksum type {t}"))),
    }
    if !crc32c(!0, &sb[0x20..]) != le32(sb, 0) || le64(sb, 0x30) != SUPER_AT {
        return Err(bad("superblock checksum wrong"));
    }
    let devices = le64(sb, 0x88);
    if devices != 1 {
        return Err(Error::Unsupported(format!(
            "btrfs spanning {devices} devices"
        )));
    }
    let incompat = le64(sb, 0xbc);
    if incompat & !INCOMPAT_KNOWN != 0 {
        return Err(Error::Unsupported(format!(
            "btrfs incompatible features {:#x}",
            incompat & !INCOMPAT_KNOWN
        )));
    }
    // Seeding is fine; a metadump image or a half-done fsid change is not.
    if le64(sb, 0x38) & (1 << 33 | 1 << 34 | 1 << 35 | 1 << 36) != 0 {
        return Err(bad(
            "superblock flags say it is being changed or is a metadump",
        ));
    }
    if le64(sb, 0x60) != 0 {
        return Err(bad(
            "a log tree holds fsync'd changes not yet committed (mount it once to replay it)",
        ));
    }
    let (sector, nodesize) = (u64::from(le32(sb, 0x90)), u64::from(le32(sb, 0x94)));
    if !sector.is_power_of_two()
        || !(4096..=65536).contains(&sector)
        || !nodesize.is_power_of_two()
        || !(sector..=65536).contains(&nodesize)
    {
        return Err(bad(format!("sector size {sector}, node size {nodesize}")));
    }
    let dev_bytes = le64(sb, 0xc9 + 8);
    if dev_bytes > dev.len() || dev_bytes < RESERVED {
        return Err(bad(format!(
            "device of {dev_bytes} bytes in a partition of {}",
            dev.len()
        )));
    }
    let mut fsid = [0u8; 16];
    let at = if incompat & INCOMPAT_METADATA_UUID != 0 {
        0x23b
    } else {
        0x20
    };
    fsid.copy_from_slice(&sb[at..at + 16]);
    Ok(Fs {
        dev,
        fsid,
        nodesize,
        devid: le64(sb, 0xc9),
        dev_bytes,
        chunks: Vec::new(),
        nodes: 0,
    })
}

/// A chunk item (at logical `logical`): length, profile and its stripes.
fn parse_chunk(logical: u64, d: &[u8]) -> Result<Chunk, Error> {
    let (len, flags, n) = (le64(d, 0), le64(d, 24), usize::from(le16(d, 44)));
    if d.len() < 48 + n * 32 || n == 0 || len == 0 || len % 4096 != 0 {
        return Err(bad(format!(
            "chunk at {logical}: {n} stripes of {len} bytes"
        )));
    }
    Ok(Chunk {
        logical,
        len,
        flags,
        stripes: (0..n)
            .map(|i| (le64(d, 48 + i * 32), le64(d, 56 + i * 32)))
            .collect(),
    })
}

impl Fs<'_> {
    /// The chunks the superblock carries (the system chunks holding the chunk tree).
    fn sys_chunks(&mut self, sb: &[u8]) -> Result<(), Error> {
        let size = le32(sb, 0xa0) as usize;
        let array = sb
            .get(0x32b..0x32b + size)
            .filter(|_| size <= 2048)
            .ok_or_else(|| bad(format!("sys_chunk_array of {size} bytes")))?;
        let mut chunks = Vec::new();
        let mut at = 0;
        while at < array.len() {
            let k = key(array, at);
            let d = array.get(at + KEY..).unwrap_or_default();
            let n = usize::from(le16(d, 44));
            if k.1 != CHUNK_ITEM || d.len() < 48 + n * 32 {
                return Err(bad("sys_chunk_array is not a list of chunks"));
            }
            chunks.push(parse_chunk(k.2, &d[..48 + n * 32])?);
            at += KEY + 48 + n * 32;
        }
        self.set_chunks(chunks)
    }

    /// Replaces the chunk map after checking each chunk: on this device, a profile one
    /// device can hold, copies within the device, no two chunks overlapping.
    fn set_chunks(&mut self, mut chunks: Vec<Chunk>) -> Result<(), Error> {
        chunks.sort_by_key(|c| c.logical);
        let mut end = 0;
        for c in &chunks {
            if c.flags & PROFILES != 0 {
                return Err(Error::Unsupported(format!(
                    "btrfs chunk profile {:#x} (one device holds only single and DUP)",
                    c.flags & PROFILES
                )));
            }
            let copies = if c.flags & DUP != 0 { 2 } else { 1 };
            let fits = c.stripes.len() == copies
                && c.stripes.iter().all(|&(devid, off)| {
                    devid == self.devid
                        && off.checked_add(c.len).is_some_and(|e| e <= self.dev_bytes)
                });
            if c.logical < end || !fits {
                return Err(bad(format!(
                    "chunk at logical {} overlaps another or does not fit the device",
                    c.logical
                )));
            }
            end = c.logical.saturating_add(c.len);
        }
        self.chunks = chunks;
        Ok(())
    }

    /// The chunk holding logical `r` whole.
    fn chunk(&self, r: &Range<u64>) -> Option<&Chunk> {
        let i = self
            .chunks
            .partition_point(|c| c.logical <= r.start)
            .checked_sub(1)?;
        let c = &self.chunks[i];
        (r.end <= c.logical.saturating_add(c.len) && r.start < r.end).then_some(c)
    }

    /// Reads the tree node at `logical` from the first copy whose checksum and header
    /// are right.
    fn node(&mut self, logical: u64, level: u8) -> Result<Vec<u8>, Error> {
        self.nodes += 1;
        if self.nodes > self.dev_bytes / self.nodesize {
            return Err(bad("more tree nodes than fit on the device"));
        }
        let r = logical..logical.saturating_add(self.nodesize);
        let c = self
            .chunk(&r)
            .ok_or_else(|| bad(format!("tree node at {logical} is in no chunk")))?;
        let copies: Vec<u64> = c
            .stripes
            .iter()
            .map(|s| s.1 + (logical - c.logical))
            .collect();
        let mut last = None;
        for at in copies {
            let b = read_vec(self.dev, "btrfs tree node", at, self.nodesize as usize)?;
            let ok = !crc32c(!0, &b[0x20..]) == le32(&b, 0)
                && le64(&b, 0x30) == logical
                && b[0x20..0x30] == self.fsid
                && b[0x64] == level;
            if ok {
                return Ok(b);
            }
            last = Some(at);
        }
        Err(bad(format!(
            "tree node at {logical} (byte {}): checksum, place, filesystem or level wrong",
            last.unwrap_or(0)
        )))
    }

    /// Calls `item` with every leaf item of the tree rooted at `root`, in key order;
    /// keys must increase strictly across the whole walk (so no node is visited twice).
    fn walk(&mut self, root: u64, level: u8, item: &mut Visitor) -> Result<(), Error> {
        if level >= MAX_LEVEL {
            return Err(bad(format!("tree of {level} levels")));
        }
        let mut last = None;
        self.visit(root, level, None, &mut last, item)
    }

    fn visit(
        &mut self,
        logical: u64,
        level: u8,
        parent: Option<(Key, u64)>,
        last: &mut Option<Key>,
        item: &mut Visitor,
    ) -> Result<(), Error> {
        let b = self.node(logical, level)?;
        // The parent's pointer names the child's generation: another one is a stale
        // or misplaced write.
        if parent.is_some_and(|(_, g)| le64(&b, 0x50) != g) {
            return Err(bad(format!("tree node at {logical}: generation wrong")));
        }
        let low = parent.map(|(k, _)| k);
        let n = le32(&b, 0x60) as usize;
        let size = if level == 0 { KEY + 8 } else { KEY + 16 };
        if HEADER + n * size > b.len() {
            return Err(bad(format!("tree node at {logical}: {n} items")));
        }
        for i in 0..n {
            let at = HEADER + i * size;
            let k = key(&b, at);
            if last.is_some_and(|l| k <= l) || low.is_some_and(|l| k < l) {
                return Err(bad(format!("tree node at {logical}: keys out of order")));
            }
            if level > 0 {
                // The key of a child's first item; its items follow in order.
                let (child, generation) = (le64(&b, at + KEY), le64(&b, at + KEY + 8));
                self.visit(child, level - 1, Some((k, generation)), last, item)?;
                continue;
            }
            *last = Some(k);
            let (off, len) = (le32(&b, at + KEY) as usize, le32(&b, at + KEY + 4) as usize);
            let data = b
                .get(HEADER + off..HEADER + off + len)
                .filter(|_| HEADER + off >= HEADER + n * size)
                .ok_or_else(|| bad(format!("tree node at {logical}: item {i} outside")))?;
            item(k, data)?;
        }
        Ok(())
    }

    /// The physical bytes of every extent, after checking each lies in a chunk and in a
    /// block group whose used counter they add up to.
    fn physical(
        &self,
        extents: &[Range<u64>],
        groups: &[(u64, u64, u64)],
    ) -> Result<Vec<Range<u64>>, Error> {
        let mut groups = groups.to_vec();
        groups.sort_unstable();
        let mut sums = vec![0u64; groups.len()];
        let mut out = Vec::with_capacity(extents.len() * 2);
        let mut end = 0;
        for e in extents {
            if e.start < end {
                return Err(bad(format!("extents overlap at {}", e.start)));
            }
            end = e.end;
            let c = self
                .chunk(e)
                .ok_or_else(|| bad(format!("extent at {} is in no chunk", e.start)))?;
            let g = groups
                .partition_point(|g| g.0 <= e.start)
                .checked_sub(1)
                .filter(|&g| e.end <= groups[g].0.saturating_add(groups[g].1))
                .ok_or_else(|| bad(format!("extent at {} is in no block group", e.start)))?;
            sums[g] += e.end - e.start;
            for s in &c.stripes {
                let at = s.1 + (e.start - c.logical);
                out.push(at..at + (e.end - e.start));
            }
        }
        for (g, sum) in groups.iter().zip(sums) {
            if g.2 != sum {
                return Err(bad(format!(
                    "block group at {} says {} bytes used, its extents make {sum}",
                    g.0, g.2
                )));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_at_the_end_of_the_address_space_is_refused_without_panicking() {
        // A valid superblock whose one system chunk ends past 2^64 once overflowed
        // the lookup of the chunk tree's root.
        let mut d = vec![0u8; 2 << 20];
        let sb = &mut d[SUPER_AT as usize..SUPER_AT as usize + 4096];
        sb[0x30..0x38].copy_from_slice(&SUPER_AT.to_le_bytes());
        sb[0x40..0x48].copy_from_slice(MAGIC);
        sb[0x58..0x60].copy_from_slice(&u64::MAX.to_le_bytes()); // chunk root
        sb[0x88..0x90].copy_from_slice(&1u64.to_le_bytes());
        sb[0x90..0x94].copy_from_slice(&4096u32.to_le_bytes());
        sb[0x94..0x98].copy_from_slice(&16384u32.to_le_bytes());
        sb[0xc9..0xd1].copy_from_slice(&1u64.to_le_bytes()); // devid
        sb[0xd1..0xd9].copy_from_slice(&(2u64 << 20).to_le_bytes());
        let mut chunk = vec![0u8; KEY + 48 + 32];
        chunk[0..8].copy_from_slice(&256u64.to_le_bytes());
        chunk[8] = CHUNK_ITEM;
        chunk[9..17].copy_from_slice(&(u64::MAX - 4095).to_le_bytes());
        chunk[KEY..KEY + 8].copy_from_slice(&(1u64 << 20).to_le_bytes());
        chunk[KEY + 24..KEY + 32].copy_from_slice(&2u64.to_le_bytes()); // system
        chunk[KEY + 44..KEY + 46].copy_from_slice(&1u16.to_le_bytes());
        chunk[KEY + 48..KEY + 56].copy_from_slice(&1u64.to_le_bytes());
        chunk[KEY + 56..KEY + 64].copy_from_slice(&(1u64 << 20).to_le_bytes());
        sb[0xa0..0xa4].copy_from_slice(&(chunk.len() as u32).to_le_bytes());
        sb[0x32b..0x32b + chunk.len()].copy_from_slice(&chunk);
        let crc = !crc32c(!0, &sb[0x20..]);
        sb[0..4].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(probe(&&d[..]), Some(Err(_))));
    }
}
