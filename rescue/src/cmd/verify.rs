//! `rescue verify DIR`: re-check a stored backup (or every backup in a store)
//! against its manifest, chunk journal, SHA256SUMS and mapfiles.

use std::path::Path;

use anyhow::{Result, bail};

use crate::exit;
use crate::proto::BackupState;
use crate::store::image::{ImageCheck, ZeroDigests, held_bytes, journal_ranges, verify_image};
use crate::store::mapfile::{BlockStatus, Map};
use crate::store::{self, MANIFEST, ManifestDisk, SUMS, Store};
use crate::system::partitions;
use crate::xfer::Geometry;
use crate::xfer::progress::{self, Bar};

/// What checking one backup found.
#[derive(Debug, Default)]
pub(crate) struct Report {
    /// Damage, or files that disagree: each names the files concerned.
    pub(crate) problems: Vec<String>,
    /// An unfinished backup with nothing wrong in what it holds: how far it got.
    pub(crate) incomplete: Option<String>,
}

/// Checks one backup directory.
pub(crate) fn check_backup(dir: &Path) -> Result<Report> {
    let mut m = store::read_manifest(dir)?;
    let held_dir = store::Dir::open(dir)?;
    let mut r = Report::default();
    let sums = std::fs::read_to_string(dir.join(SUMS)).unwrap_or_default();
    let mode = progress::Style::detect();
    let (mut held, mut total) = (0u64, 0u64);
    let mut sealed = Vec::new();
    for (i, d) in m.disks.iter().enumerate() {
        let bar = Bar::new(&d.name, d.size, mode);
        let mut zeros = ZeroDigests::default();
        let result = verify_image(&held_dir, d, m.chunk_size, &mut zeros, Some(&bar));
        bar.finish();
        let count = Geometry {
            size: d.size,
            chunk: m.chunk_size,
        }
        .count();
        total += count;
        match result {
            Err(e) => r.problems.push(format!("{}: {e:#}", d.image)),
            Ok(c) => {
                held += count - c.missing.len() as u64;
                // SHA256SUMS is written when the session ends: until then a
                // finished disk has no line there yet.
                let sums = m.status.is_complete().then_some(sums.as_str());
                check_image(dir, d, m.chunk_size, sums, &c, &mut r.problems);
                if m.status == BackupState::Sealing && !d.complete {
                    sealed.push((i, c));
                }
            }
        }
        match std::fs::read_to_string(dir.join(&d.map)) {
            Ok(t) => match Map::parse(&t, d.size) {
                Ok(map) => check_map(&held_dir, d, m.chunk_size, &map, &mut r.problems)?,
                Err(e) => r.problems.push(format!("{}: {e}", d.map)),
            },
            Err(e) => r.problems.push(format!("{}: {e}", d.map)),
        }
    }
    if m.status == BackupState::Sealing && r.problems.is_empty() {
        m = complete_sealing(dir, m, &sealed, &mut r.problems);
    }
    match m.status {
        BackupState::InProgress if r.problems.is_empty() => {
            r.incomplete = Some(format!(
                "{} ({held} of {total} chunks held; run the same backup again to finish it)",
                m.status.word()
            ));
        }
        BackupState::Failed => r.problems.push(
            "the backup failed verification when it was received (the damaged chunks were dropped from the journal; run the same backup again to re-send them)".to_string(),
        ),
        s if !s.is_complete() => r.problems.push(format!("the backup is {}", s.word())),
        _ => {}
    }
    Ok(r)
}

/// Completes a backup whose server stopped before it computed every image's
/// SHA-256 (`sealing`): the read-back just done is that computation, when
/// every chunk of those disks is held and matches its journal digest.
/// Returns the manifest as it is now.
fn complete_sealing(
    dir: &Path,
    m: store::Manifest,
    sealed: &[(usize, ImageCheck)],
    problems: &mut Vec<String>,
) -> store::Manifest {
    for (i, c) in sealed {
        if !c.missing.is_empty() {
            problems.push(format!(
                "{}: holds no digest for {} chunk(s), but {MANIFEST} says every chunk of {} was verified",
                m.disks[*i].chunks,
                c.missing.len(),
                m.disks[*i].name
            ));
        }
    }
    if !problems.is_empty() {
        return m;
    }
    let host = dir
        .parent()
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut b = match store::Dir::open(dir) {
        Ok(held) => store::BackupDir {
            path: dir.to_path_buf(),
            dir: held,
            host,
            manifest: m.clone(),
        },
        Err(e) => {
            problems.push(format!("{}: {e:#}", dir.display()));
            return m;
        }
    };
    for (i, c) in sealed {
        let unreadable = b.manifest.disks[*i].unreadable_bytes;
        b.disk_verified(*i, &c.sha256, unreadable);
    }
    b.manifest.status = BackupState::InProgress;
    match b.finish() {
        Ok(()) => {
            println!(
                "{}: the image SHA-256 was still pending; recorded it, the backup is {}",
                dir.display(),
                b.manifest.status.word()
            );
            b.manifest
        }
        Err(e) => {
            problems.push(format!(
                "{}: every chunk is verified, but recording the image SHA-256 failed: {e:#}",
                dir.display()
            ));
            m
        }
    }
}

/// The image against its journal, manifest and SHA256SUMS. A chunk that does
/// not match its journal digest is blamed on the journal when the image as a
/// whole still matches the recorded SHA-256 (so `sha256sum -c` passes).
fn check_image(
    dir: &Path,
    d: &ManifestDisk,
    chunk: u32,
    sums: Option<&str>,
    c: &ImageCheck,
    problems: &mut Vec<String>,
) {
    let line = format!("{}  {}", c.sha256, d.image);
    let in_sums = sums.is_some_and(|t| t.lines().any(|l| l == line));
    let in_manifest = d.sha256.as_deref() == Some(c.sha256.as_str());
    if !c.missing.is_empty() && d.complete {
        problems.push(format!(
            "{}: holds no digest for {} chunk(s), but {MANIFEST} says {} is complete:{}",
            d.chunks,
            c.missing.len(),
            d.name,
            damage_list(dir, d, chunk, &c.missing)
        ));
    }
    if !c.mismatched.is_empty() {
        let list = damage_list(dir, d, chunk, &c.mismatched);
        problems.push(if in_sums || in_manifest {
            format!(
                "{}: the digests of {} chunk(s) do not match {}, which matches its SHA-256 in {}: the journal is damaged, not the image (a restore refuses these chunks):{list}",
                d.chunks,
                c.mismatched.len(),
                d.image,
                if in_sums { SUMS } else { MANIFEST }
            )
        } else {
            format!(
                "{}: {} damaged chunk(s), their data does not match the digests {} recorded at backup time:{list}",
                d.image,
                c.mismatched.len(),
                d.chunks
            )
        });
        return;
    }
    if !c.ok() {
        return;
    }
    match &d.sha256 {
        Some(want) if *want == c.sha256 => {}
        Some(want) => problems.push(format!(
            "{}: SHA-256 {} but {MANIFEST} says {want}",
            d.image, c.sha256
        )),
        None => return,
    }
    if d.complete && sums.is_some() && !in_sums {
        problems.push(format!("{SUMS} has no matching line for {}", d.image));
    }
    println!("{}: OK, sha256 {}", d.image, c.sha256);
}

/// One line per run of consecutive chunks, with the partition each lies in
/// (from the table in the stored image).
fn damage_list(dir: &Path, d: &ManifestDisk, chunk: u32, chunks: &[u64]) -> String {
    let geo = Geometry {
        size: d.size,
        chunk,
    };
    let table = partitions::read_table(&dir.join(&d.image), d.logical_sector_size);
    let mut out = String::new();
    let mut i = 0;
    while i < chunks.len() {
        let mut j = i + 1;
        while j < chunks.len() && chunks[j] == chunks[j - 1] + 1 {
            j += 1;
        }
        let (first, last) = (chunks[i], chunks[j - 1]);
        let (start, end) = (geo.offset(first), geo.start_of(last + 1));
        let which = if first == last {
            format!("chunk {first}")
        } else {
            format!("chunks {first}-{last}")
        };
        let place = match &table {
            Ok(Some(t)) => t.locate(start, end),
            Ok(None) => "no partition table".to_string(),
            Err(e) => format!("partition table unreadable: {e:#}"),
        };
        out.push_str(&format!("\n    {which}, bytes {start}..{end}: {place}"));
        i = j;
    }
    out
}

/// The mapfile against the chunk journal (which chunks are held) and the
/// manifest (how much was unreadable); each problem names both files.
fn check_map(
    dir: &store::Dir,
    d: &ManifestDisk,
    chunk: u32,
    map: &Map,
    problems: &mut Vec<String>,
) -> Result<()> {
    let geo = Geometry {
        size: d.size,
        chunk,
    };
    let held = held_bytes(&journal_ranges(dir, d, chunk)?, geo);
    let (unmarked, claimed) = map.disagreement(&held);
    if unmarked > 0 {
        problems.push(format!(
            "{}: marks {unmarked} bytes as not received that {} holds (the mapfile is behind the journal; running the backup again brings it in line)",
            d.map, d.chunks
        ));
    }
    if claimed > 0 {
        problems.push(format!(
            "{}: marks {claimed} bytes as received that {} does not hold",
            d.map, d.chunks
        ));
    }
    let missing = map.bytes(BlockStatus::NonTried).saturating_sub(unmarked);
    if missing > 0 && d.complete {
        problems.push(format!(
            "{}: {missing} bytes never received, but {MANIFEST} says {} is complete",
            d.map, d.name
        ));
    }
    // The manifest counts the unreadable bytes once the disk is complete.
    if d.complete && map.bytes(BlockStatus::Bad) != d.unreadable_bytes {
        problems.push(format!(
            "{}: {} unreadable bytes, {MANIFEST} says {}",
            d.map,
            map.bytes(BlockStatus::Bad),
            d.unreadable_bytes
        ));
    }
    Ok(())
}

pub(crate) fn run(dir: &Path) -> Result<u8> {
    let targets: Vec<std::path::PathBuf> = if dir.join(MANIFEST).is_file() {
        vec![dir.to_path_buf()]
    } else if dir.is_dir() {
        Store::open(dir)?
            .list(None)
            .into_iter()
            .map(|b| b.path)
            .collect()
    } else {
        bail!("{}: no such directory", dir.display());
    };
    if targets.is_empty() {
        bail!("{} holds no backup (no manifest.json found)", dir.display());
    }
    let (mut failed, mut incomplete) = (0, 0);
    for t in &targets {
        println!("checking {}", t.display());
        match check_backup(t) {
            Ok(r) if !r.problems.is_empty() => {
                failed += 1;
                for x in r.problems {
                    println!("  PROBLEM: {x}");
                }
            }
            Ok(Report {
                incomplete: Some(how),
                ..
            }) => {
                incomplete += 1;
                println!("{}: {how}", t.display());
            }
            Ok(_) => println!("{}: verified", t.display()),
            Err(e) => {
                failed += 1;
                println!("  PROBLEM: {e:#}");
            }
        }
    }
    let n = targets.len();
    if failed + incomplete == 0 {
        println!("all {n} backup(s) verified");
        return Ok(exit::OK);
    }
    let mut parts = Vec::new();
    if failed > 0 {
        parts.push(format!("{failed} failed verification"));
    }
    if incomplete > 0 {
        parts.push(format!("{incomplete} incomplete: resumable"));
    }
    println!(
        "{} of {n} backup(s) verified, {}",
        n - failed - incomplete,
        parts.join(", ")
    );
    Ok(exit::VERIFY_FAILED)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interrupted_backup_of_a_failing_disk_is_incomplete_not_damaged() {
        // Two of four 64 KiB chunks held, the first with an unreadable range
        // (zeros in the image); the manifest counts unreadable bytes, and
        // SHA256SUMS lists the disk, only once it is complete.
        let dir = tempfile::tempdir().unwrap();
        let chunk = 64 * 1024usize;
        let mut img: Vec<u8> = (0..4 * chunk).map(|i| (i * 7 % 251) as u8).collect();
        img[1000..1512].fill(0);
        std::fs::write(dir.path().join("d.img"), &img).unwrap();
        let journal: Vec<u8> = img[..2 * chunk]
            .chunks(chunk)
            .flat_map(crate::xfer::sha256)
            .collect();
        std::fs::write(dir.path().join("d.chunks"), journal).unwrap();
        let mut map = Map::new(img.len() as u64);
        map.set_chunk(0, chunk as u64, &[(1000, 512)]);
        map.set_chunk(chunk as u64, chunk as u64, &[]);
        std::fs::write(dir.path().join("d.map"), map.render("test")).unwrap();
        let manifest = serde_json::json!({
            "format": "usb4rescue-backup", "version": 1, "backup_id": "b", "label": null,
            "status": "in-progress", "created": "", "updated": "", "finished": null,
            "source": {"hostname": "a", "tool_version": "0"},
            "receiver": {"hostname": "b", "tool_version": "0"},
            "chunk_size": chunk,
            "disks": [{
                "name": "d", "source_name": "d", "source_path": "/dev/d",
                "size": img.len(), "logical_sector_size": 512,
                "model": null, "serial": null, "details": null,
                "image": "d.img", "map": "d.map", "chunks": "d.chunks",
                "sha256": null, "unreadable_bytes": 0, "complete": false,
            }],
        });
        std::fs::write(dir.path().join(MANIFEST), manifest.to_string()).unwrap();
        let r = check_backup(dir.path()).unwrap();
        assert_eq!(r.problems, Vec::<String>::new());
        assert_eq!(
            r.incomplete.as_deref(),
            Some(
                "incomplete: resumable (2 of 4 chunks held; run the same backup again to finish it)"
            )
        );
    }
}
