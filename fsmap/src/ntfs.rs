//! NTFS: the cluster bitmap ($Bitmap, MFT record 6, found through $MFT's own data
//! runs in record 0) says which clusters are in use; the boot sector's backup (after
//! the volume's last cluster) and everything past the volume are used too. Every MFT
//! record read has its update sequence (fixups) checked. A volume marked dirty, or whose
//! $LogFile has not been closed cleanly, may hold changes the bitmap does not show yet,
//! so it is copied whole.

use crate::util::{Extents, le16, le32, le64, read_vec};
use crate::{Error, ReadAt, Usage, normalise};

const ATTR_DATA: u32 = 0x80;
const ATTR_VOLUME_INFORMATION: u32 = 0x70;
const ATTR_END: u32 = 0xFFFF_FFFF;
const REC_MFT: u64 = 0;
const REC_LOGFILE: u64 = 2;
const REC_VOLUME: u64 = 3;
const REC_BITMAP: u64 = 6;
/// The bitmap is read and turned into ranges this many bytes at a time.
const BITMAP_PIECE: u64 = 1 << 20;

fn bad(msg: impl Into<String>) -> Error {
    Error::Inconsistent(msg.into())
}

struct Vol<'a> {
    dev: &'a dyn ReadAt,
    cluster: u64,
    clusters: u64,
    record: u64,
    /// $MFT's data runs: (first VCN, LCN, clusters).
    mft: Vec<Run>,
}

#[derive(Clone, Copy)]
struct Run {
    vcn: u64,
    lcn: u64,
    len: u64,
}

/// `Some` if `dev` starts with an NTFS boot sector, with what it uses or why not.
pub fn probe(dev: &dyn ReadAt) -> Option<Result<Usage, Error>> {
    let boot = read_vec(dev, "ntfs boot sector", 0, 512).ok()?;
    if &boot[3..11] != b"NTFS    " {
        return None;
    }
    Some(usage(dev, &boot))
}

fn usage(dev: &dyn ReadAt, boot: &[u8]) -> Result<Usage, Error> {
    let mut vol = boot_sector(dev, boot)?;
    let rec0 = vol.record_at(REC_MFT, vol.cluster * le64(boot, 0x30))?;
    let (mft, _) = data_runs(&vol, &rec0, ATTR_DATA, "$MFT")?;
    vol.mft = mft;
    check_clean(&vol)?;
    let bitmap_rec = vol.record(REC_BITMAP)?;
    let (runs, size) = data_runs(&vol, &bitmap_rec, ATTR_DATA, "$Bitmap")?;
    if size < vol.clusters.div_ceil(8) || runs_clusters(&runs) * vol.cluster < size {
        return Err(bad(format!(
            "$Bitmap of {size} bytes for {} clusters",
            vol.clusters
        )));
    }
    let mut used = vol.bitmap_used(&runs, size, dev.len())?.finish();
    // Metadata the bitmap must show anyway; taken whatever it says.
    for r in vol.mft.iter().chain(&runs) {
        used.push(r.lcn * vol.cluster..(r.lcn + r.len) * vol.cluster);
    }
    used.push(0..vol.cluster);
    // The backup boot sector follows the last cluster; keep everything past the volume.
    used.push(vol.clusters * vol.cluster..dev.len());
    used.push(dev.len().saturating_sub(512)..dev.len());
    let label = volume_label(&vol).unwrap_or_default();
    Ok(Usage {
        fs: "ntfs",
        label: (!label.is_empty()).then_some(label),
        block_size: vol.cluster,
        used: normalise(used, dev.len()),
    })
}

fn boot_sector<'a>(dev: &'a dyn ReadAt, b: &[u8]) -> Result<Vol<'a>, Error> {
    let sector = u64::from(le16(b, 0x0b));
    let spc = match b[0x0d] {
        v @ 1..=0x80 => u64::from(v),
        v @ 0xf4..=0xff => 1u64 << (256 - u32::from(v)),
        v => return Err(bad(format!("sectors per cluster byte {v:#x}"))),
    };
    if !sector.is_power_of_two() || !(256..=4096).contains(&sector) || le16(b, 0x1fe) != 0xAA55 {
        return Err(bad("boot sector is not valid"));
    }
    let cluster = sector * spc;
    if !cluster.is_power_of_two() || cluster > 2 << 20 {
        return Err(bad(format!("cluster size {cluster}")));
    }
    let sectors = le64(b, 0x28);
    let clusters = sectors / spc;
    if sectors.checked_mul(sector).is_none_or(|n| n > dev.len()) || clusters < 16 {
        return Err(bad(format!(
            "{sectors} sectors do not fit in the partition ({} bytes)",
            dev.len()
        )));
    }
    let record = match b[0x40] as i8 {
        v @ 1..=64 => u64::from(v as u8) * cluster,
        v @ -12..=-9 => 1u64 << (-v),
        v => return Err(bad(format!("MFT record size byte {v}"))),
    };
    if !(1024..=4096).contains(&record) || le64(b, 0x30) >= clusters {
        return Err(bad(format!("MFT record size {record} or place")));
    }
    Ok(Vol {
        dev,
        cluster,
        clusters,
        record,
        mft: Vec::new(),
    })
}

impl Vol<'_> {
    /// MFT record `n`, found through $MFT's data runs.
    fn record(&self, n: u64) -> Result<Vec<u8>, Error> {
        let byte = n * self.record;
        let vcn = byte / self.cluster;
        let run = self
            .mft
            .iter()
            .find(|r| (r.vcn..r.vcn + r.len).contains(&vcn))
            .filter(|r| (r.vcn + r.len) * self.cluster >= byte + self.record)
            .ok_or_else(|| bad(format!("MFT record {n} is not in $MFT's first runs")))?;
        self.record_at(
            n,
            (run.lcn + vcn - run.vcn) * self.cluster + byte % self.cluster,
        )
    }

    /// The MFT record `n` at byte `at`, its fixups checked and applied.
    fn record_at(&self, n: u64, at: u64) -> Result<Vec<u8>, Error> {
        let mut b = read_vec(self.dev, "ntfs MFT record", at, self.record as usize)?;
        if &b[0..4] != b"FILE" || le16(&b, 0x16) & 1 == 0 {
            return Err(bad(format!("MFT record {n} is not a record in use")));
        }
        fixup(&mut b).map_err(|e| bad(format!("MFT record {n}: {e}")))?;
        Ok(b)
    }

    /// Which bytes the clusters marked in the bitmap cover, reading it a piece at a
    /// time.
    fn bitmap_used(&self, runs: &[Run], size: u64, len: u64) -> Result<Extents, Error> {
        let mut used = Extents::new(len);
        let mut open: Option<u64> = None;
        let want = self.clusters.div_ceil(8);
        let mut byte = 0u64;
        for r in runs {
            let mut at = r.lcn * self.cluster;
            let end = at + (r.len * self.cluster).min(size - byte.min(size));
            while at < end && byte < want {
                let n = (end - at).min(BITMAP_PIECE).min(want - byte);
                let piece = read_vec(self.dev, "ntfs $Bitmap", at, n as usize)?;
                for (i, &bits) in piece.iter().enumerate() {
                    let first = (byte + i as u64) * 8;
                    if (bits == 0xff && open.is_some()) || (bits == 0 && open.is_none()) {
                        continue;
                    }
                    for bit in 0..8 {
                        let c = first + bit;
                        match (bits >> bit & 1 != 0 && c < self.clusters, open) {
                            (true, None) => open = Some(c),
                            (false, Some(s)) => {
                                used.add(s * self.cluster..c * self.cluster)?;
                                open = None;
                            }
                            _ => {}
                        }
                    }
                }
                at += n;
                byte += n;
            }
        }
        if let Some(s) = open {
            used.add(s * self.cluster..self.clusters * self.cluster)?;
        }
        Ok(used)
    }
}

/// Checks and undoes the update sequence: the last two bytes of every 512-byte stride
/// hold the sequence number, the real bytes are in the array.
fn fixup(b: &mut [u8]) -> Result<(), String> {
    let (off, count) = (usize::from(le16(b, 4)), usize::from(le16(b, 6)));
    if count != b.len() / 512 + 1 || off < 8 || off + count * 2 > b.len() {
        return Err(format!("update sequence of {count} at {off}"));
    }
    let usn = [b[off], b[off + 1]];
    for i in 1..count {
        let end = i * 512;
        if b[end - 2..end] != usn {
            return Err("torn write (update sequence mismatch)".into());
        }
        b[end - 2] = b[off + 2 * i];
        b[end - 1] = b[off + 2 * i + 1];
    }
    Ok(())
}

/// The attributes of a record: (type, bytes of the attribute).
fn attributes(rec: &[u8]) -> impl Iterator<Item = (u32, &[u8])> {
    let mut at = usize::from(le16(rec, 0x14));
    let end = (le32(rec, 0x18) as usize).min(rec.len());
    std::iter::from_fn(move || {
        let t = le32(rec, at);
        let len = le32(rec, at + 4) as usize;
        if t == ATTR_END || len < 16 || at + len > end {
            return None;
        }
        let a = &rec[at..at + len];
        at += len;
        Some((t, a))
    })
}

/// The data runs and data size of the unnamed non-resident attribute `kind`, which
/// must be described whole by this record.
fn data_runs(vol: &Vol, rec: &[u8], kind: u32, what: &str) -> Result<(Vec<Run>, u64), Error> {
    let a = attributes(rec)
        .find(|(t, a)| *t == kind && a[9] == 0)
        .map(|(_, a)| a)
        .ok_or_else(|| bad(format!("{what} has no data attribute")))?;
    if a[8] == 0 || a.len() < 0x40 || le64(a, 0x10) != 0 {
        return Err(bad(format!("{what}: data not in runs starting at 0")));
    }
    let (last_vcn, size) = (le64(a, 0x18), le64(a, 0x30));
    let mut runs = Vec::new();
    let mut at = usize::from(le16(a, 0x20));
    let (mut vcn, mut lcn) = (0u64, 0i64);
    while let Some(&h) = a.get(at) {
        if h == 0 {
            break;
        }
        let (ls, os) = (usize::from(h & 0xf), usize::from(h >> 4));
        let field = a
            .get(at + 1..at + 1 + ls + os)
            .filter(|_| (1..=8).contains(&ls) && os <= 8)
            .ok_or_else(|| bad(format!("{what}: data run header {h:#x}")))?;
        let len = le_int(&field[..ls], false) as u64;
        if os == 0 {
            return Err(bad(format!("{what} is sparse")));
        }
        lcn = lcn.wrapping_add(le_int(&field[ls..], true));
        if len == 0 || lcn < 0 || (lcn as u64).saturating_add(len) > vol.clusters {
            return Err(bad(format!("{what}: run of {len} clusters at {lcn}")));
        }
        runs.push(Run {
            vcn,
            lcn: lcn as u64,
            len,
        });
        vcn += len;
        at += 1 + ls + os;
    }
    if runs.is_empty() || vcn != last_vcn.wrapping_add(1) {
        return Err(bad(format!(
            "{what}: runs cover {vcn} clusters, not {}",
            last_vcn.wrapping_add(1)
        )));
    }
    Ok((runs, size))
}

/// A little-endian integer of 1..=8 bytes, sign-extended if `signed`.
fn le_int(b: &[u8], signed: bool) -> i64 {
    let mut v = [0u8; 8];
    v[..b.len()].copy_from_slice(b);
    if signed && b.last().is_some_and(|&x| x & 0x80 != 0) {
        v[b.len()..].fill(0xff);
    }
    i64::from_le_bytes(v)
}

fn runs_clusters(runs: &[Run]) -> u64 {
    runs.iter().map(|r| r.len).sum()
}

/// Errors if the volume is marked dirty or its $LogFile restart area says a client is
/// still active: metadata changes may be in the log only.
fn check_clean(vol: &Vol) -> Result<(), Error> {
    let rec = vol.record(REC_VOLUME)?;
    let info = attributes(&rec)
        .find(|(t, _)| *t == ATTR_VOLUME_INFORMATION)
        .map(|(_, a)| a)
        .filter(|a| a[8] == 0)
        .ok_or_else(|| bad("$Volume has no volume information"))?;
    let value = usize::from(le16(info, 0x14));
    if le16(info, value + 10) & 1 != 0 {
        return Err(bad(
            "the volume is marked dirty (run chkdsk, or ntfsfix, and back it up then)",
        ));
    }
    let log = vol.record(REC_LOGFILE)?;
    let (runs, _) = data_runs(vol, &log, ATTR_DATA, "$LogFile")?;
    let first = runs.first().ok_or_else(|| bad("$LogFile is empty"))?.lcn * vol.cluster;
    // Two restart pages (4 KiB each, NTFS 3.1): the newer one is current. ntfs-3g
    // empties the log (all 0xff) instead of keeping it: that is clean too.
    let mut newest: Option<(u64, bool)> = None;
    let mut empty = 0;
    for page in 0..2u64 {
        let mut p = read_vec(vol.dev, "ntfs $LogFile", first + page * 4096, 4096)?;
        if p.iter().all(|&b| b == 0xff) {
            empty += 1;
            continue;
        }
        let magic_ok = &p[0..4] == b"RSTR" || &p[0..4] == b"CHKD";
        if !magic_ok || le32(&p, 0x10) != 4096 || fixup(&mut p).is_err() {
            continue;
        }
        let ra = usize::from(le16(&p, 0x18));
        let (lsn, in_use, flags) = (le64(&p, ra), le16(&p, ra + 12), le16(&p, ra + 14));
        let clean = in_use == 0xffff || flags & 2 != 0;
        if newest.is_none_or(|(l, _)| lsn >= l) {
            newest = Some((lsn, clean));
        }
    }
    match newest {
        Some((_, true)) => Ok(()),
        None if empty == 2 => Ok(()),
        Some((_, false)) => Err(bad(
            "$LogFile was not closed cleanly (Windows hibernated or crashed: shut it down \
             fully, or run ntfsfix, then back it up)",
        )),
        None => Err(bad("$LogFile has no valid restart page")),
    }
}

/// The volume label ($Volume's $VOLUME_NAME, UTF-16).
fn volume_label(vol: &Vol) -> Option<String> {
    let rec = vol.record(REC_VOLUME).ok()?;
    let (_, a) = attributes(&rec).find(|(t, a)| *t == 0x60 && a[8] == 0)?;
    let (len, off) = (le32(a, 0x10) as usize, usize::from(le16(a, 0x14)));
    let name = a.get(off..off + len)?;
    let units: Vec<u16> = name
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    Some(String::from_utf16_lossy(&units))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_data_runs_are_refused_without_panicking() {
        // A non-resident attribute claiming VCNs up to 2^64-1 once overflowed the
        // message saying the runs do not cover it.
        let empty: &[u8] = &[];
        let vol = Vol {
            dev: &empty,
            cluster: 4096,
            clusters: 1000,
            record: 1024,
            mft: Vec::new(),
        };
        let mut rec = vec![0u8; 1024];
        rec[0x14] = 0x38; // attributes at 0x38, in use up to 0x100
        rec[0x18] = 0x00;
        rec[0x19] = 0x01;
        let a = &mut rec[0x38..0x100];
        a[0..4].copy_from_slice(&ATTR_DATA.to_le_bytes());
        a[4..8].copy_from_slice(&0x48u32.to_le_bytes());
        a[8] = 1;
        a[0x18..0x20].copy_from_slice(&u64::MAX.to_le_bytes());
        a[0x20] = 0x40; // runs at 0x40: none
        a[0x48..0x4c].copy_from_slice(&ATTR_END.to_le_bytes());
        assert!(data_runs(&vol, &rec, ATTR_DATA, "$Bitmap").is_err());
    }
}
