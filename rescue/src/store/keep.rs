//! `rescue store list` and `rescue store prune`: every backup per host with
//! the space it really takes (extents shared between backups, as FIEMAP
//! reports them, counted once), and removing old backups without touching what
//! must stay: the newest complete backup of each host, any backup that is not
//! complete (being written, or resumable), and any backup serve holds open
//! (`BackupDir::hold`: receiving into it, restoring from it, or filling an
//! incremental backup from it).

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::{Context, Result, bail};

use super::{BackupDir, Store};
use crate::system::blkdev::extents;
use crate::util::human_bytes;

/// What one backup takes on disk.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Space {
    /// Bytes allocated to its files.
    pub(crate) allocated: u64,
    /// Of those, bytes in extents the filesystem reports shared (reflinks).
    pub(crate) shared: u64,
}

/// Where each backup's bytes are, for the total: the physical ranges of
/// extents, and bytes whose place is not known (no FIEMAP, not yet placed).
#[derive(Default)]
struct Places {
    ranges: Vec<(u64, u64)>,
    unplaced: u64,
}

/// The space backup `b` takes; where its bytes are goes to `all`.
fn space_of(b: &BackupDir, all: &mut Places) -> Space {
    let mut s = Space::default();
    let Ok(entries) = std::fs::read_dir(&b.path) else {
        return s;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Ok(f) = b.dir.open_file(&name, super::Access::Read) else {
            continue;
        };
        let Ok(meta) = f.metadata() else { continue };
        match extents(&f) {
            Some(ex) if !ex.is_empty() => {
                for (p, len, shared) in ex {
                    s.allocated += len;
                    if shared {
                        s.shared += len;
                    }
                    if p == u64::MAX {
                        all.unplaced += len;
                    } else {
                        all.ranges.push((p, len));
                    }
                }
            }
            _ => {
                let len = meta.blocks() * 512;
                s.allocated += len;
                all.unplaced += len;
            }
        }
    }
    s
}

/// Bytes covered by the union of physical ranges (shared ones counted once).
fn union_bytes(mut r: Vec<(u64, u64)>) -> u64 {
    r.sort_unstable();
    let (mut total, mut end) = (0u64, 0u64);
    for (start, len) in r {
        let e = start.saturating_add(len);
        if e > end {
            total += e - start.max(end);
            end = e;
        }
    }
    total
}

/// Seconds since the epoch of "2026-11-22T01:02:03Z" (as `util::iso8601`).
fn parse_time(s: &str) -> Option<i64> {
    let num = |a: usize, b: usize| s.get(a..b)?.parse::<i64>().ok();
    let (y, m, d) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (hh, mm, ss) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    // Days from the civil date (the inverse of util's `civil`).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some((era * 146_097 + doe - 719_468) * 86_400 + hh * 3600 + mm * 60 + ss)
}

/// `rescue store list [DIR]`.
pub(crate) fn list(dir: &Path) -> Result<u8> {
    let store = Store::open(dir)?;
    let all = store.list(None);
    if all.is_empty() {
        println!("{} holds no backup", store.dir().display());
        return Ok(crate::exit::OK);
    }
    let mut places = Places::default();
    let mut by_host: BTreeMap<&str, Vec<&BackupDir>> = BTreeMap::new();
    for b in &all {
        by_host.entry(&b.host).or_default().push(b);
    }
    for (host, backups) in by_host {
        println!("{host}:");
        for b in backups {
            let sp = space_of(b, &mut places);
            let size: u64 = b.manifest.disks.iter().map(|d| d.size).sum();
            println!(
                "  {}  {}{}  {} of disks, takes {}{}{}{}",
                b.manifest.backup_id,
                b.manifest.status.word(),
                if b.is_held() {
                    " (in use by serve)"
                } else {
                    ""
                },
                human_bytes(size),
                human_bytes(sp.allocated),
                if sp.shared > 0 {
                    format!(" ({} shared with other backups)", human_bytes(sp.shared))
                } else {
                    String::new()
                },
                match &b.manifest.base {
                    Some(base) => format!(", incremental against {base}"),
                    None => String::new(),
                },
                match &b.manifest.label {
                    Some(l) => format!(", label {l:?}"),
                    None => String::new(),
                },
            );
        }
    }
    println!(
        "{} backup(s) take {} in all (extents shared between them counted once)",
        all.len(),
        human_bytes(union_bytes(places.ranges) + places.unplaced)
    );
    Ok(crate::exit::OK)
}

/// Which backups of one host (newest first) `prune` removes: complete ones
/// beyond the `keep` newest complete, or finished more than `keep_days` ago;
/// never the newest complete one, never one that is not complete.
fn to_remove<'a>(
    backups: &[&'a BackupDir],
    keep: Option<usize>,
    keep_days: Option<u64>,
    now: i64,
) -> Vec<&'a BackupDir> {
    let complete: Vec<&BackupDir> = backups
        .iter()
        .copied()
        .filter(|b| b.manifest.status.is_complete())
        .collect();
    let mut out = Vec::new();
    for (rank, b) in complete.iter().enumerate().skip(1) {
        let beyond = keep.is_some_and(|n| rank >= n.max(1));
        let old = keep_days.is_some_and(|days| {
            let at = b.manifest.finished.as_deref().and_then(parse_time);
            at.is_some_and(|t| now - t > days.saturating_mul(86_400) as i64)
        });
        if beyond || old {
            out.push(*b);
        }
    }
    out
}

/// `rescue store prune`.
pub(crate) fn prune(
    dir: &Path,
    keep: Option<usize>,
    keep_days: Option<u64>,
    dry_run: bool,
) -> Result<u8> {
    if keep.is_none() && keep_days.is_none() {
        bail!("say what to keep: --keep N or --keep-days D");
    }
    let store = Store::open(dir)?;
    let all = store.list(None);
    let mut by_host: BTreeMap<&str, Vec<&BackupDir>> = BTreeMap::new();
    for b in &all {
        by_host.entry(&b.host).or_default().push(b);
    }
    let now = crate::util::now_secs();
    let (mut removed, mut kept_busy) = (0, 0);
    for backups in by_host.values() {
        for b in to_remove(backups, keep, keep_days, now) {
            // Serve holds what it writes, serves or fills from: leave it.
            let Some(_lock) = b.lock_to_remove() else {
                println!("keeping {}: serve is using it", b.path.display());
                kept_busy += 1;
                continue;
            };
            if dry_run {
                println!("would remove {}", b.path.display());
            } else {
                std::fs::remove_dir_all(&b.path)
                    .with_context(|| format!("removing {}", b.path.display()))?;
                println!("removed {}", b.path.display());
            }
            removed += 1;
        }
    }
    println!(
        "{} {removed} backup(s){}",
        if dry_run { "would remove" } else { "removed" },
        if kept_busy > 0 {
            format!(", kept {kept_busy} in use")
        } else {
            String::new()
        }
    );
    Ok(crate::exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_back_to_what_iso8601_wrote() {
        for t in [0i64, 951_782_400, 1_796_000_123, 4_102_444_800] {
            assert_eq!(parse_time(&crate::util::iso8601(t)), Some(t));
        }
        assert_eq!(parse_time("yesterday"), None);
    }

    #[test]
    fn shared_ranges_count_once() {
        assert_eq!(union_bytes(vec![(0, 10), (5, 10), (100, 1), (0, 3)]), 16);
        assert_eq!(union_bytes(vec![]), 0);
    }
}
