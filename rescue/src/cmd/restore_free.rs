//! Restoring a used-block backup: the free space its filesystems had was not
//! copied (zeros in the image), so on the target those bytes are left as they are
//! (default), zeroed (`--zero-free`) or discarded (`--discard`), and they are never
//! compared with the backup (`--resume`, `--verify`): a chunk is hashed with its
//! free ranges as zeros, as the image stores it.

use std::fs::File;
use std::os::unix::fs::FileExt;

use anyhow::{Context, Result, bail};

use crate::cmd::cli::RestoreArgs;
use crate::proto::msg::{self, BackupSummary, DiskSummary, Free, FreeMap, FreeReq, kind};
use crate::session::Session;
use crate::store::image::{ZeroDigests, punch_or_zero};
use crate::system::blkdev;
use crate::system::direct::DirectWriter;
use crate::util::{Escaped, human_bytes};

/// What happens to the free space on the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FreeMode {
    Leave,
    Zero,
    Discard,
}

impl FreeMode {
    pub(crate) fn of(args: &RestoreArgs) -> FreeMode {
        if args.zero_free {
            FreeMode::Zero
        } else if args.discard {
            FreeMode::Discard
        } else {
            FreeMode::Leave
        }
    }
}

/// The free map the backup recorded for disk `d` (None: every byte was copied),
/// checked against the disk's size.
pub(crate) fn ask(s: &mut Session, b: &BackupSummary, d: &DiskSummary) -> Result<Option<FreeMap>> {
    let f = s.conn.request(
        kind::FREE_REQ,
        &FreeReq {
            host: b.host.clone(),
            backup_id: b.backup_id.clone(),
            disk: d.name.clone(),
        },
        &[kind::FREE],
        "asking which bytes the backup left out",
    )?;
    let free: Free = msg::from_json(&f)?;
    if let Some(m) = &free.free
        && let Err(why) = m.check_for(d.size)
    {
        bail!("the peer sent an unacceptable FREE message: {why}");
    }
    Ok(free.free)
}

/// Tells the user what a used-block backup means for this target.
pub(crate) fn announce(name: &str, map: &FreeMap, mode: FreeMode, spec: &str) {
    let what = match mode {
        FreeMode::Leave => "left as they are on",
        FreeMode::Zero => "zeroed on",
        FreeMode::Discard => "discarded where supported on",
    };
    eprintln!(
        "{}: used-block backup: {} of free space was not copied; those bytes are {what} {spec}",
        Escaped(name),
        human_bytes(map.free_bytes())
    );
}

/// Hashes chunks of the target as the image stores them: free ranges as zeros.
#[derive(Default)]
pub(crate) struct Masker {
    map: Option<FreeMap>,
    scratch: Vec<u8>,
}

impl Masker {
    pub fn new(map: Option<FreeMap>) -> Masker {
        Masker {
            map,
            scratch: Vec::new(),
        }
    }

    /// `b`, read from the target at `offset`, with its free ranges zeroed.
    pub(crate) fn view<'a>(&'a mut self, offset: u64, b: &'a [u8]) -> &'a [u8] {
        let free = match &self.map {
            Some(m) => m.within(offset, b.len() as u32),
            None => return b,
        };
        if free.is_empty() {
            return b;
        }
        self.scratch.clear();
        self.scratch.extend_from_slice(b);
        for (o, l) in free {
            self.scratch[o as usize..(o + l) as usize].fill(0);
        }
        &self.scratch
    }

    /// The SHA-256 of `b` (read at `offset`) as the image stores it, as the
    /// chunk journal records it.
    pub(crate) fn digest(&mut self, offset: u64, b: &[u8], zeros: &mut ZeroDigests) -> [u8; 32] {
        let b = self.view(offset, b);
        if crate::xfer::is_zero(b) {
            zeros.get(b.len() as u32)
        } else {
            crate::xfer::sha256(b)
        }
    }
}

/// Writes one verified chunk (`data`: the chunk as stored, None for a zero chunk)
/// of `len` bytes at `offset` onto the target, doing `mode` with its free ranges.
pub(crate) struct FreeWriter {
    pub(crate) map: FreeMap,
    pub(crate) mode: FreeMode,
    /// Discard was refused once: the user was told, the rest is left.
    pub(crate) discard_failed: bool,
    pub(crate) spec: String,
}

impl FreeWriter {
    /// Whether this writer has anything to do differently for the chunk.
    pub(crate) fn touches(&self, offset: u64, len: u64) -> bool {
        self.mode != FreeMode::Zero && !self.map.within(offset, len as u32).is_empty()
    }

    /// Writes the used parts (zeros for a zero chunk) and handles the free ones.
    pub(crate) fn write(
        &mut self,
        file: &File,
        direct: &mut DirectWriter,
        offset: u64,
        len: u64,
        data: Option<&[u8]>,
        block: bool,
    ) -> Result<()> {
        // The copied parts as (start, end), the free ones as (offset, length),
        // relative to `offset`.
        let free = self.map.within(offset, len as u32);
        for (s, e) in msg::used_parts(len as u32, &free) {
            let at = offset + u64::from(s);
            match data {
                Some(d) => direct
                    .write_at(file, &d[s as usize..e as usize], at)
                    .with_context(|| format!("writing at offset {at}"))?,
                None => zero(file, at, u64::from(e - s), block)?,
            }
        }
        if self.mode == FreeMode::Discard && !self.discard_failed {
            for (o, l) in free {
                let at = offset + u64::from(o);
                let ok = if block {
                    discard_aligned(file, at, u64::from(l))
                } else {
                    punch_or_zero(file, at, u64::from(l)).is_ok()
                };
                if !ok {
                    eprintln!(
                        "{}: does not support discarding (BLKDISCARD refused); the free space is left as it is",
                        self.spec
                    );
                    self.discard_failed = true;
                    break;
                }
            }
        }
        Ok(())
    }
}

/// Zeroes bytes of the target.
pub(crate) fn zero(file: &File, offset: u64, len: u64, block: bool) -> Result<()> {
    if block {
        if !blkdev::zero_out(file, offset, len) {
            let z = vec![0u8; len as usize];
            file.write_all_at(&z, offset).context("writing zeros")?;
        }
        return Ok(());
    }
    punch_or_zero(file, offset, len)
}

/// BLKDISCARD of the 4 KiB-aligned part of a range (devices discard whole
/// sectors; the unaligned ends are left as they are).
fn discard_aligned(file: &File, offset: u64, len: u64) -> bool {
    let start = offset.next_multiple_of(4096);
    let end = (offset + len) / 4096 * 4096;
    end <= start || blkdev::discard(file, start, end - start)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::msg::PartUse;

    fn map() -> FreeMap {
        FreeMap {
            ranges: vec![(4096, 8192), (12288, 20480)],
            parts: vec![PartUse {
                name: "x1".into(),
                start: 0,
                end: 32768,
                used: Some(16384),
                ..Default::default()
            }],
        }
    }

    #[test]
    fn free_ranges_hash_as_zeros_and_are_left_zeroed_or_discarded_on_the_target() {
        let mut m = Masker::new(Some(map()));
        let b = vec![7u8; 16384];
        let v = m.view(0, &b).to_vec();
        assert!(v[..4096].iter().all(|&x| x == 7));
        assert!(v[4096..8192].iter().all(|&x| x == 0));
        assert!(v[12288..].iter().all(|&x| x == 0));
        assert_eq!(Masker::new(None).view(0, &b), &b[..]);

        let d = tempfile::tempdir().unwrap();
        let stored: Vec<u8> = (0..32768u32)
            .map(|i| {
                if (4096..8192).contains(&i) || (12288..20480).contains(&i) {
                    0
                } else {
                    1
                }
            })
            .collect();
        for (mode, want_free) in [(FreeMode::Leave, 0xEEu8), (FreeMode::Discard, 0)] {
            let p = d.path().join("t.img");
            std::fs::write(&p, vec![0xEEu8; 32768]).unwrap();
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&p)
                .unwrap();
            let mut direct = DirectWriter::open(&p, &f, 32768);
            let mut w = FreeWriter {
                map: map(),
                mode,
                discard_failed: false,
                spec: "t.img".into(),
            };
            assert!(w.touches(0, 32768));
            w.write(&f, &mut direct, 0, 32768, Some(&stored), false)
                .unwrap();
            drop(direct);
            let got = std::fs::read(&p).unwrap();
            for (i, &x) in got.iter().enumerate() {
                let free = stored[i] == 0;
                assert_eq!(x, if free { want_free } else { 1 }, "{mode:?} at {i}");
            }
        }
    }

    /// `--discard` on a real block device (a loop device, root only): the free
    /// ranges are discarded, read back as zeros from the device and are holes in
    /// its backing file; the used bytes are written.
    #[test]
    fn discard_on_a_loop_device_deallocates_the_free_ranges_in_its_backing_file() {
        use std::os::unix::fs::MetadataExt;
        use std::process::Command;
        let uid = std::fs::read_to_string("/proc/self/status")
            .unwrap_or_default()
            .lines()
            .find_map(|l| {
                l.strip_prefix("Uid:")
                    .map(|u| u.split_whitespace().next() == Some("0"))
            });
        if uid != Some(true) {
            eprintln!("SKIPPED discard_on_a_loop_device: needs root (losetup)");
            return;
        }
        let mib = 1u64 << 20;
        let d = tempfile::tempdir().unwrap();
        let backing = d.path().join("disk");
        std::fs::write(&backing, vec![0xEEu8; 4 << 20]).unwrap();
        let o = Command::new("losetup")
            .args(["-f", "--show"])
            .arg(&backing)
            .output();
        let Some(dev) = o
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        else {
            eprintln!("SKIPPED discard_on_a_loop_device: losetup failed (no loop devices?)");
            return;
        };
        struct Detach(String);
        impl Drop for Detach {
            fn drop(&mut self) {
                let _ = Command::new("losetup").args(["-d", &self.0]).status();
            }
        }
        let _detach = Detach(dev.clone());
        // Free: 1.25..2.75 MiB and 3..4 MiB (a partition over all 4 MiB).
        let map = FreeMap {
            ranges: vec![(5 * mib / 4, 11 * mib / 4), (3 * mib, 4 * mib)],
            parts: vec![PartUse {
                name: "x1".into(),
                start: 0,
                end: 4 * mib,
                used: Some(3 * mib / 2),
                ..Default::default()
            }],
        };
        let free = |i: u64| map.ranges.iter().any(|&(s, e)| (s..e).contains(&i));
        let stored: Vec<u8> = (0..4 * mib).map(|i| if free(i) { 0 } else { 1 }).collect();
        let before = std::fs::metadata(&backing).unwrap().blocks() * 512;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&dev)
            .unwrap();
        let mut direct = DirectWriter::open(std::path::Path::new(&dev), &f, mib as usize);
        let mut w = FreeWriter {
            map: map.clone(),
            mode: FreeMode::Discard,
            discard_failed: false,
            spec: dev.clone(),
        };
        for c in 0..4 {
            let r = (c * mib) as usize..((c + 1) * mib) as usize;
            w.write(&f, &mut direct, c * mib, mib, Some(&stored[r]), true)
                .unwrap();
        }
        drop(direct);
        f.sync_all().unwrap();
        assert!(!w.discard_failed, "the loop device refused BLKDISCARD");
        let mut got = vec![0u8; (4 * mib) as usize];
        f.read_exact_at(&mut got, 0).unwrap();
        assert!(got == stored, "the device does not read back as the image");
        drop(f);
        let after = std::fs::metadata(&backing).unwrap().blocks() * 512;
        let back = std::fs::read(&backing).unwrap();
        assert!(back == stored, "the backing file differs");
        assert!(
            before - after >= map.free_bytes(),
            "allocated {before} -> {after}: the free ranges were not deallocated"
        );
    }
}
