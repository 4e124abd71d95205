//! `rescue verify DIR`: re-check a stored backup (or every backup in a store)
//! against its manifest, chunk journal, SHA256SUMS and mapfiles.

use std::path::Path;

use anyhow::{Result, bail};

use crate::exit;
use crate::progress::{self, Bar};
use crate::store::image::{ZeroDigests, held_bytes, journal_ranges, verify_image};
use crate::store::mapfile::{Map, Status};
use crate::store::{self, MANIFEST, ManifestDisk, SUMS, Store};
use crate::xfer::Geometry;

/// Checks one backup directory; returns the problems found.
pub fn check_backup(dir: &Path) -> Result<Vec<String>> {
    let m = store::read_manifest(dir)?;
    let mut problems = Vec::new();
    let sums = std::fs::read_to_string(dir.join(SUMS)).unwrap_or_default();
    let mode = progress::Mode::detect();
    for d in &m.disks {
        let bar = Bar::new(&d.name, d.size, mode);
        let mut zeros = ZeroDigests::default();
        let result = verify_image(dir, d, m.chunk_size, &mut zeros, Some(&bar));
        bar.finish();
        match result {
            Err(e) => problems.push(format!("{}: {e:#}", d.image)),
            Ok(Err(bad)) => problems.push(format!(
                "{}: {} chunk(s) missing or not matching their digest (first at offset {})",
                d.image,
                bad.len(),
                bad[0] * u64::from(m.chunk_size)
            )),
            Ok(Ok(sha)) => {
                match &d.sha256 {
                    Some(want) if *want == sha => {}
                    Some(want) => problems.push(format!(
                        "{}: SHA-256 {sha} but the manifest says {want}",
                        d.image
                    )),
                    None => problems.push(format!(
                        "{}: not complete (no digest in the manifest)",
                        d.image
                    )),
                }
                let line = format!("{sha}  {}", d.image);
                if d.complete && !sums.lines().any(|l| l == line) {
                    problems.push(format!("{SUMS} has no matching line for {}", d.image));
                }
                println!("{}: OK, sha256 {sha}", d.image);
            }
        }
        match std::fs::read_to_string(dir.join(&d.map)) {
            Ok(t) => match Map::parse(&t, d.size) {
                Ok(map) => check_map(dir, d, m.chunk_size, &map, &mut problems)?,
                Err(e) => problems.push(format!("{}: {e}", d.map)),
            },
            Err(e) => problems.push(format!("{}: {e}", d.map)),
        }
    }
    if !m.status.is_complete() {
        problems.push(format!("the backup is {}", m.status.word()));
    }
    Ok(problems)
}

/// The mapfile against the chunk journal (which chunks are held) and the
/// manifest (how much was unreadable); each problem names both files.
fn check_map(
    dir: &Path,
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
    let missing = map.bytes(Status::NonTried).saturating_sub(unmarked);
    if missing > 0 && d.complete {
        problems.push(format!(
            "{}: {missing} bytes never received, but {MANIFEST} says {} is complete",
            d.map, d.name
        ));
    }
    if map.bytes(Status::Bad) != d.unreadable_bytes {
        problems.push(format!(
            "{}: {} unreadable bytes, {MANIFEST} says {}",
            d.map,
            map.bytes(Status::Bad),
            d.unreadable_bytes
        ));
    }
    Ok(())
}

pub fn run(dir: &Path) -> Result<u8> {
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
    let mut failed = 0;
    for t in &targets {
        println!("checking {}", t.display());
        match check_backup(t) {
            Ok(p) if p.is_empty() => println!("{}: verified", t.display()),
            Ok(p) => {
                failed += 1;
                for x in p {
                    println!("  PROBLEM: {x}");
                }
            }
            Err(e) => {
                failed += 1;
                println!("  PROBLEM: {e:#}");
            }
        }
    }
    if failed > 0 {
        println!(
            "{failed} of {} backup(s) failed verification",
            targets.len()
        );
        Ok(exit::VERIFY_FAILED)
    } else {
        println!("all {} backup(s) verified", targets.len());
        Ok(exit::OK)
    }
}
