//! XFS: the free space of each allocation group, from its free-space B+tree by block
//! number (bnobt, rooted in the AGF), checked against the AGF's counters; everything
//! else on the data device (headers, inodes, every other tree, the AGFL, the internal
//! log) is used. A log that was not cleanly unmounted may hold allocations the trees do
//! not show yet, so such a filesystem is copied whole.

use crate::util::{Extents, be16, be32, be64, crc32c, le32, read_vec};
use crate::{Error, ReadAt, Usage, normalise};

const SB_MAGIC: u32 = 0x5846_5342; // "XFSB"
const AGF_MAGIC: u32 = 0x5841_4746; // "XAGF"
const BNO_MAGIC_V4: u32 = 0x4142_5442; // "ABTB"
const BNO_MAGIC_V5: u32 = 0x4142_3342; // "AB3B"
const LOG_MAGIC: u32 = 0xFEED_BABE;
/// The incompatible features whose meaning for free space is known: ftype, sparse
/// inodes, meta_uuid, bigtime, nrext64, exchange-range, parent pointers.
const INCOMPAT_KNOWN: u32 = 0x1 | 0x2 | 0x4 | 0x8 | 0x20 | 0x40 | 0x80;
const INCOMPAT_META_UUID: u32 = 0x4;
const INCOMPAT_NEEDSREPAIR: u32 = 0x10;
/// Deeper than any bnobt of a real AG (2^32 blocks).
const MAX_LEVELS: u32 = 10;

fn bad(msg: impl Into<String>) -> Error {
    Error::Inconsistent(msg.into())
}

/// The superblock fields the parser needs, checked.
struct Sb {
    v5: bool,
    block: u64,
    sect: u64,
    dblocks: u64,
    agblocks: u64,
    agcount: u64,
    agblklog: u32,
    logstart: u64,
    logblocks: u64,
    uuid: [u8; 16],
    label: Option<String>,
}

impl Sb {
    /// The byte offset of AG-relative block `agbno` of AG `agno`.
    fn ag_byte(&self, agno: u64, agbno: u64) -> u64 {
        (agno * self.agblocks + agbno) * self.block
    }
    /// The byte offset of an absolute filesystem block number (AG number in the high
    /// bits above agblklog).
    fn fsb_byte(&self, fsb: u64) -> Option<u64> {
        let agno = fsb >> self.agblklog;
        let agbno = fsb & ((1u64 << self.agblklog) - 1);
        (agno < self.agcount && agbno < self.agblocks).then(|| self.ag_byte(agno, agbno))
    }
    fn ag_len(&self, agno: u64) -> u64 {
        (self.dblocks - agno * self.agblocks).min(self.agblocks)
    }
}

/// `Some` if `dev` holds an XFS superblock, with what it uses or why not.
pub fn probe(dev: &dyn ReadAt) -> Option<Result<Usage, Error>> {
    let head = read_vec(dev, "xfs superblock", 0, 512).ok()?;
    if be32(&head, 0) != SB_MAGIC {
        return None;
    }
    Some(usage(dev))
}

fn usage(dev: &dyn ReadAt) -> Result<Usage, Error> {
    let sb = superblock(dev)?;
    check_log(dev, &sb)?;
    let fs_end = sb.dblocks * sb.block;
    let mut free = Extents::new(fs_end);
    for agno in 0..sb.agcount {
        ag_free(dev, &sb, agno, &mut free)?;
    }
    // Everything not free is used, including whatever follows the filesystem.
    let free = free.finish();
    let mut used = Vec::with_capacity(free.len() + 1);
    let mut at = 0;
    for f in free {
        used.push(at..f.start);
        at = f.end;
    }
    used.push(at..dev.len());
    if let Some(log) = sb.fsb_byte(sb.logstart).filter(|_| sb.logstart != 0) {
        used.push(log..log + sb.logblocks * sb.block);
    }
    Ok(Usage {
        fs: "xfs",
        label: sb.label,
        block_size: sb.block,
        used: normalise(used, dev.len()),
    })
}

fn superblock(dev: &dyn ReadAt) -> Result<Sb, Error> {
    let head = read_vec(dev, "xfs superblock", 0, 512)?;
    let version = be16(&head, 100) & 0xf;
    let sect = u64::from(be16(&head, 102));
    if !(sect.is_power_of_two() && (512..=32768).contains(&sect)) {
        return Err(bad(format!("sector size {sect}")));
    }
    let b = read_vec(dev, "xfs superblock", 0, sect as usize)?;
    let v5 = match version {
        4 => false,
        5 => true,
        v => return Err(Error::Unsupported(format!("xfs version {v}"))),
    };
    if v5 && !crc_ok(&b, 224) {
        return Err(bad("superblock checksum wrong"));
    }
    let block = u64::from(be32(&b, 4));
    let (blocklog, sectlog, agblklog) = (b[120], b[121], u32::from(b[124]));
    if !block.is_power_of_two()
        || !(512..=65536).contains(&block)
        || 1u64.checked_shl(blocklog.into()) != Some(block)
    {
        return Err(bad(format!("block size {block}")));
    }
    if 1u64.checked_shl(sectlog.into()) != Some(sect) || sect > block {
        return Err(bad(format!("sector size {sect} of block size {block}")));
    }
    let (dblocks, agblocks, agcount) = (
        be64(&b, 8),
        u64::from(be32(&b, 84)),
        u64::from(be32(&b, 88)),
    );
    if agblocks < 16
        || agcount == 0
        || agblklog >= 32
        || agblocks > 1u64 << agblklog
        || agblocks <= 1u64 << agblklog >> 1
        || dblocks > agcount * agblocks
        || dblocks <= (agcount - 1) * agblocks
    {
        return Err(bad(format!(
            "geometry: {dblocks} blocks in {agcount} groups of {agblocks}"
        )));
    }
    if dblocks.checked_mul(block).is_none_or(|end| end > dev.len()) {
        return Err(bad(format!(
            "{dblocks} blocks of {block} bytes do not fit in the partition ({} bytes)",
            dev.len()
        )));
    }
    if b[126] != 0 {
        return Err(bad("mkfs did not finish (inprogress set)"));
    }
    let incompat = if v5 { be32(&b, 216) } else { 0 };
    if incompat & INCOMPAT_NEEDSREPAIR != 0 {
        return Err(bad("marked as needing xfs_repair"));
    }
    if incompat & !INCOMPAT_KNOWN != 0 {
        return Err(Error::Unsupported(format!(
            "xfs incompatible features {:#x}",
            incompat & !INCOMPAT_KNOWN
        )));
    }
    let mut uuid = [0u8; 16];
    let uuid_at = if incompat & INCOMPAT_META_UUID != 0 {
        248
    } else {
        32
    };
    uuid.copy_from_slice(&b[uuid_at..uuid_at + 16]);
    let name = &b[108..120];
    let name = &name[..name.iter().position(|&c| c == 0).unwrap_or(12)];
    Ok(Sb {
        v5,
        block,
        sect,
        dblocks,
        agblocks,
        agcount,
        agblklog,
        logstart: be64(&b, 48),
        logblocks: u64::from(be32(&b, 96)),
        uuid,
        label: (!name.is_empty()).then(|| String::from_utf8_lossy(name).into_owned()),
    })
}

/// XFS's CRC: CRC-32C of the buffer with its own 4 bytes at `at` taken as zeros,
/// stored little-endian.
fn crc_ok(b: &[u8], at: usize) -> bool {
    let mut copy = b.to_vec();
    copy[at..at + 4].fill(0);
    !crc32c(!0, &copy) == le32(b, at)
}

/// Adds the free extents of AG `agno` to `free` as byte ranges, after checking the AGF
/// and every bnobt block and that the extents add up to the AGF's counters.
fn ag_free(dev: &dyn ReadAt, sb: &Sb, agno: u64, free: &mut Extents) -> Result<(), Error> {
    let agf_at = sb.ag_byte(agno, 0) + sb.sect;
    let agf = read_vec(dev, "xfs AGF", agf_at, sb.sect as usize)?;
    let length = u64::from(be32(&agf, 12));
    if be32(&agf, 0) != AGF_MAGIC
        || be32(&agf, 4) != 1
        || u64::from(be32(&agf, 8)) != agno
        || length != sb.ag_len(agno)
    {
        return Err(bad(format!("AGF of group {agno} is not valid")));
    }
    if sb.v5 && (!crc_ok(&agf, 216) || agf[64..80] != sb.uuid) {
        return Err(bad(format!("AGF of group {agno}: checksum or UUID wrong")));
    }
    let (root, levels) = (u64::from(be32(&agf, 16)), be32(&agf, 28));
    let (freeblks, longest) = (u64::from(be32(&agf, 52)), u64::from(be32(&agf, 56)));
    if !(1..=MAX_LEVELS).contains(&levels) || root == 0 || root >= length {
        return Err(bad(format!(
            "AGF of group {agno}: bnobt root {root} level {levels}"
        )));
    }
    let mut walk = Walk {
        sb,
        dev,
        agno,
        length,
        nodes: 0,
        next: 0,
        sum: 0,
        longest: 0,
        out: free,
    };
    walk.node(root, levels - 1)?;
    if walk.sum != freeblks || walk.longest != longest {
        return Err(bad(format!(
            "group {agno}: free-space tree holds {} blocks (longest {}), the AGF says {freeblks} \
             (longest {longest})",
            walk.sum, walk.longest
        )));
    }
    Ok(())
}

/// A depth-first walk of one bnobt: records must come in increasing, disjoint order,
/// which also stops a tree that points back into itself; the node count is bounded by
/// the AG's size.
struct Walk<'a> {
    sb: &'a Sb,
    dev: &'a dyn ReadAt,
    agno: u64,
    length: u64,
    nodes: u64,
    /// The first block the next free extent may start at.
    next: u64,
    sum: u64,
    longest: u64,
    out: &'a mut Extents,
}

impl Walk<'_> {
    fn node(&mut self, agbno: u64, level: u32) -> Result<(), Error> {
        let (agno, bs) = (self.agno, self.sb.block);
        self.nodes += 1;
        if self.nodes > self.length || agbno == 0 || agbno >= self.length {
            return Err(bad(format!(
                "group {agno}: bnobt block {agbno} out of bounds"
            )));
        }
        let at = self.sb.ag_byte(agno, agbno);
        let b = read_vec(self.dev, "xfs free-space tree", at, bs as usize)?;
        let hdr = self.check_header(&b, agbno, level)?;
        let n = usize::from(be16(&b, 6));
        if level == 0 {
            // Only a root leaf may be empty (an AG with no free space): empty leaves
            // below nodes would let a hostile tree be visited without end.
            if hdr + n * 8 > b.len() || (n == 0 && self.nodes > 1) {
                return Err(bad(format!(
                    "group {agno}: bnobt block {agbno}: {n} records"
                )));
            }
            for i in 0..n {
                let (start, count) = (
                    u64::from(be32(&b, hdr + i * 8)),
                    u64::from(be32(&b, hdr + i * 8 + 4)),
                );
                if count == 0 || start < self.next || start + count > self.length {
                    return Err(bad(format!(
                        "group {agno}: free extent {start}+{count} out of order or bounds"
                    )));
                }
                self.next = start + count;
                self.sum += count;
                self.longest = self.longest.max(count);
                let from = self.sb.ag_byte(agno, start);
                self.out.add(from..from + count * bs)?;
            }
            return Ok(());
        }
        // Nodes: keys (start, count) then the pointers after room for all keys.
        let maxrecs = (b.len() - hdr) / 12;
        if n == 0 || n > maxrecs {
            return Err(bad(format!(
                "group {agno}: bnobt node {agbno}: {n} pointers"
            )));
        }
        for i in 0..n {
            let ptr = be32(&b, hdr + maxrecs * 8 + i * 4);
            self.node(u64::from(ptr), level - 1)?;
        }
        Ok(())
    }

    /// Checks a bnobt block's header and returns its length.
    fn check_header(&self, b: &[u8], agbno: u64, level: u32) -> Result<usize, Error> {
        let agno = self.agno;
        let magic = if self.sb.v5 {
            BNO_MAGIC_V5
        } else {
            BNO_MAGIC_V4
        };
        if be32(b, 0) != magic || u32::from(be16(b, 4)) != level {
            return Err(bad(format!(
                "group {agno}: bnobt block {agbno}: wrong magic or level"
            )));
        }
        if !self.sb.v5 {
            return Ok(16);
        }
        let daddr = self.sb.ag_byte(agno, agbno) / 512;
        if !crc_ok(b, 52)
            || be64(b, 16) != daddr
            || b[32..48] != self.sb.uuid
            || u64::from(be32(b, 48)) != agno
        {
            return Err(bad(format!(
                "group {agno}: bnobt block {agbno}: checksum, place or owner wrong"
            )));
        }
        Ok(56)
    }
}

/// Errors unless the internal log ends in a clean unmount record: otherwise the log
/// may hold allocations the free-space trees do not show yet. An external log
/// (logstart 0) is not on this device; the kernel refuses to mount without it.
fn check_log(dev: &dyn ReadAt, sb: &Sb) -> Result<(), Error> {
    if sb.logstart == 0 {
        return Err(Error::Unsupported("xfs with an external log".into()));
    }
    let start = sb
        .fsb_byte(sb.logstart)
        .filter(|&s| sb.logblocks >= 64 && s + sb.logblocks * sb.block <= sb.dblocks * sb.block)
        .ok_or_else(|| bad("log outside the filesystem"))?;
    let log = Log {
        dev,
        start,
        bbs: sb.logblocks * sb.block / 512,
    };
    let dirty = || {
        bad(
            "the log was not cleanly unmounted (mount and unmount the filesystem, or \
             xfs_repair it, to replay it)",
        )
    };
    // Every 512-byte block of the log starts with its cycle number: the head is where
    // the cycle drops by one (or the end, if the whole log has one cycle).
    let first = log.cycle(0)?;
    let last = log.cycle(log.bbs - 1)?;
    let head = if first == last {
        log.bbs
    } else if last.wrapping_add(1) == first {
        let (mut lo, mut hi) = (0, log.bbs - 1); // cycle(lo) == first, cycle(hi) == last
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if log.cycle(mid)? == first {
                lo = mid
            } else {
                hi = mid
            }
        }
        hi
    } else {
        return Err(dirty());
    };
    // The last record before the head: its header is at most 256 KiB + headers back.
    let mut at = head;
    let rec = loop {
        if at == 0 || head - at > 1024 {
            return Err(dirty());
        }
        at -= 1;
        let b = log.bb(at)?;
        if be32(&b, 0) == LOG_MAGIC {
            break b;
        }
    };
    let h_len = u64::from(be32(&rec, 12));
    let h_size = u64::from(be32(&rec, 320));
    let hblks = if be32(&rec, 8) & 2 != 0 && h_size > 32768 {
        h_size.div_ceil(32768)
    } else {
        1
    };
    if be32(&rec, 4) != first || be32(&rec, 40) != 1 || at + hblks + h_len.div_ceil(512) != head {
        return Err(dirty());
    }
    // The one operation's header: oh_flags (byte 9) has XLOG_UNMOUNT_TRANS.
    let op = log.bb(at + hblks)?;
    if head == at + hblks || op[9] & 0x20 == 0 {
        return Err(dirty());
    }
    Ok(())
}

struct Log<'a> {
    dev: &'a dyn ReadAt,
    start: u64,
    bbs: u64,
}

impl Log<'_> {
    fn bb(&self, n: u64) -> Result<Vec<u8>, Error> {
        read_vec(self.dev, "xfs log", self.start + n * 512, 512)
    }
    fn cycle(&self, n: u64) -> Result<u32, Error> {
        let b = self.bb(n)?;
        Ok(if be32(&b, 0) == LOG_MAGIC {
            be32(&b, 4)
        } else {
            be32(&b, 0)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hostile_v4_superblock_is_refused_without_panicking() {
        // v4 has no checksum to get past: a block log of 200 once overflowed a shift.
        let mut d = vec![0u8; 1 << 20];
        d[0..4].copy_from_slice(&SB_MAGIC.to_be_bytes());
        d[4..8].copy_from_slice(&4096u32.to_be_bytes());
        d[100..102].copy_from_slice(&4u16.to_be_bytes());
        d[102..104].copy_from_slice(&512u16.to_be_bytes());
        d[120] = 200;
        d[121] = 9;
        assert!(matches!(probe(&&d[..]), Some(Err(_))));
        d[120] = 12;
        d[121] = 70;
        assert!(matches!(probe(&&d[..]), Some(Err(_))));
    }
}
