//! The image store on the receiving machine:
//! `DIR/<host>/<backup-id>/{manifest.json, SHA256SUMS, <disk>.img, <disk>.map, <disk>.chunks}`.
//! Every name that came from the peer goes through `names::sanitize`, and every
//! path is opened without following symlinks, so a peer cannot write outside DIR.

pub mod image;
pub mod mapfile;
pub mod names;

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::proto::msg::{BackupBegin, BackupSummary, ChunkRanges, DiskSummary, Identity};
use crate::util;

pub const MANIFEST: &str = "manifest.json";
pub const SUMS: &str = "SHA256SUMS";

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum BackupStatus {
    /// Data is still arriving, or the transfer was interrupted: can be resumed.
    InProgress,
    /// Every disk was received and verified.
    Complete,
    /// Received, but the source had unreadable sectors (see the mapfiles).
    CompleteWithErrors,
    /// Verification failed; resume re-sends what is damaged.
    Failed,
}

impl BackupStatus {
    pub fn word(self) -> &'static str {
        match self {
            BackupStatus::InProgress => "resumable",
            BackupStatus::Complete => "complete",
            BackupStatus::CompleteWithErrors => "complete (unreadable sectors)",
            BackupStatus::Failed => "failed verification",
        }
    }

    pub fn is_complete(self) -> bool {
        matches!(
            self,
            BackupStatus::Complete | BackupStatus::CompleteWithErrors
        )
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ManifestDisk {
    /// File stem in this directory (sanitised, unique).
    pub name: String,
    /// The name the source machine gave.
    pub source_name: String,
    pub source_path: String,
    pub size: u64,
    pub logical_sector_size: u32,
    pub model: Option<String>,
    pub serial: Option<String>,
    pub details: Option<serde_json::Value>,
    pub image: String,
    pub map: String,
    pub chunks: String,
    /// SHA-256 of the whole image, once verified.
    pub sha256: Option<String>,
    pub unreadable_bytes: u64,
    pub complete: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    pub backup_id: String,
    pub label: Option<String>,
    pub status: BackupStatus,
    pub created: String,
    pub updated: String,
    pub finished: Option<String>,
    pub source: Identity,
    pub receiver: Identity,
    pub chunk_size: u32,
    pub disks: Vec<ManifestDisk>,
}

impl Manifest {
    pub fn summary(&self, host: &str) -> BackupSummary {
        BackupSummary {
            host: host.to_string(),
            backup_id: self.backup_id.clone(),
            label: self.label.clone(),
            status: self.status.word().to_string(),
            created: self.created.clone(),
            finished: self.finished.clone(),
            machine_id: self.source.machine_id.clone(),
            disks: self
                .disks
                .iter()
                .map(|d| DiskSummary {
                    name: d.name.clone(),
                    size: d.size,
                    model: d.model.clone(),
                    serial: d.serial.clone(),
                    sha256: d.sha256.clone(),
                    unreadable_bytes: d.unreadable_bytes,
                })
                .collect(),
        }
    }
}

/// A store directory.
pub struct Store {
    dir: PathBuf,
}

/// One backup's directory with its manifest.
pub struct BackupDir {
    pub path: PathBuf,
    pub host: String,
    pub manifest: Manifest,
}

/// Opens a regular file inside a store directory, never through a symlink.
pub fn open_in(dir: &Path, name: &str, write: bool, create: bool) -> Result<File> {
    if !names::is_safe(name) {
        bail!("refusing unsafe file name {name:?}");
    }
    let path = dir.join(name);
    let f = OpenOptions::new()
        .read(true)
        .write(write)
        .create(create)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        bail!("{} is not a regular file", path.display());
    }
    Ok(f)
}

fn is_real_dir(p: &Path) -> bool {
    fs::symlink_metadata(p).is_ok_and(|m| m.is_dir())
}

impl Store {
    /// Opens (creating it if needed) the store at `dir`.
    pub fn open(dir: &Path) -> Result<Store> {
        if !dir.exists() {
            fs::create_dir_all(dir)
                .with_context(|| format!("creating the store directory {}", dir.display()))?;
        }
        if !dir.is_dir() {
            bail!("the store {} is not a directory", dir.display());
        }
        let dir = fs::canonicalize(dir)
            .with_context(|| format!("resolving the store directory {}", dir.display()))?;
        Ok(Store { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every backup, newest first, optionally only one host's.
    pub fn list(&self, host: Option<&str>) -> Vec<BackupDir> {
        let mut out = Vec::new();
        let Ok(hosts) = fs::read_dir(&self.dir) else {
            return out;
        };
        for h in hosts.flatten() {
            let hname = h.file_name().to_string_lossy().into_owned();
            if !names::is_safe(&hname) || !is_real_dir(&h.path()) {
                continue;
            }
            if let Some(want) = host
                && names::sanitize(want, "host") != hname
            {
                continue;
            }
            let Ok(backups) = fs::read_dir(h.path()) else {
                continue;
            };
            for b in backups.flatten() {
                if !is_real_dir(&b.path()) {
                    continue;
                }
                match read_manifest(&b.path()) {
                    Ok(m) => out.push(BackupDir {
                        path: b.path(),
                        host: hname.clone(),
                        manifest: m,
                    }),
                    // One broken backup must not hide the others: skip it, say so.
                    Err(e) => eprintln!("skipping {}: {e:#}", b.path().display()),
                }
            }
        }
        out.sort_by(|a, b| b.manifest.backup_id.cmp(&a.manifest.backup_id));
        out
    }

    /// Opens one backup named by a peer (host and id must be plain names).
    pub fn open_backup(&self, host: &str, id: &str) -> Result<BackupDir> {
        if !names::is_safe(host) || !names::is_safe(id) {
            bail!("no backup {host:?}/{id:?}: not a valid name");
        }
        let path = self.dir.join(host).join(id);
        if !is_real_dir(&path) {
            bail!("no backup {id} of host {host} in {}", self.dir.display());
        }
        let manifest = read_manifest(&path)?;
        Ok(BackupDir {
            path,
            host: host.to_string(),
            manifest,
        })
    }

    /// Starts a backup, or resumes an interrupted one of the same machine and disks.
    /// Returns the directory, the chunks already held per disk, and whether it resumed.
    pub fn begin_backup(
        &self,
        source: &Identity,
        receiver: &Identity,
        begin: &BackupBegin,
    ) -> Result<(BackupDir, Vec<ChunkRanges>, bool)> {
        validate_begin(begin)?;
        let host = names::sanitize(&source.hostname, "unnamed-host");
        if !begin.fresh
            && let Some(mut b) = self
                .list(Some(&host))
                .into_iter()
                .find(|b| resumable(&b.manifest, source, begin))
        {
            let mut have = Vec::new();
            for d in &b.manifest.disks {
                have.push(image::resume_ranges(&b.path, d, b.manifest.chunk_size)?);
            }
            b.manifest.status = BackupStatus::InProgress;
            b.manifest.updated = util::iso8601(util::now_secs());
            b.save()?;
            return Ok((b, have, true));
        }

        let host_dir = self.dir.join(&host);
        if !host_dir.exists() {
            fs::create_dir(&host_dir)
                .with_context(|| format!("creating {}", host_dir.display()))?;
        }
        if !is_real_dir(&host_dir) {
            bail!("{} is not a directory", host_dir.display());
        }
        let now = util::now_secs();
        let mut id = util::compact_time(now);
        if let Some(l) = &begin.label {
            id.push('-');
            id.push_str(&names::sanitize(l, "backup"));
            id.truncate(names::MAX_NAME);
        }
        let base = id.clone();
        let mut n = 2;
        let path = loop {
            let p = host_dir.join(&id);
            match fs::create_dir(&p) {
                Ok(()) => break p,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    id = format!("{base}-{n}");
                    n += 1;
                }
                Err(e) => return Err(e).with_context(|| format!("creating {}", p.display())),
            }
        };
        let stems = names::unique(
            &begin
                .disks
                .iter()
                .enumerate()
                .map(|(i, d)| names::sanitize(&d.name, &format!("disk{i}")))
                .collect::<Vec<_>>(),
        );
        let disks = begin
            .disks
            .iter()
            .zip(stems)
            .map(|(d, stem)| ManifestDisk {
                source_name: d.name.clone(),
                source_path: d.source_path.clone(),
                size: d.size,
                logical_sector_size: d.logical_sector_size,
                model: d.model.clone(),
                serial: d.serial.clone(),
                details: d.details.clone(),
                image: format!("{stem}.img"),
                map: format!("{stem}.map"),
                chunks: format!("{stem}.chunks"),
                name: stem,
                sha256: None,
                unreadable_bytes: 0,
                complete: false,
            })
            .collect();
        let b = BackupDir {
            path,
            host,
            manifest: Manifest {
                format: "usb4rescue-backup".into(),
                version: 1,
                backup_id: id,
                label: begin.label.clone(),
                status: BackupStatus::InProgress,
                created: util::iso8601(now),
                updated: util::iso8601(now),
                finished: None,
                source: source.clone(),
                receiver: receiver.clone(),
                chunk_size: begin.chunk_size,
                disks,
            },
        };
        b.save()?;
        let have = vec![Vec::new(); begin.disks.len()];
        Ok((b, have, false))
    }
}

/// Rejects a BACKUP_BEGIN no honest sender produces.
fn validate_begin(b: &BackupBegin) -> Result<()> {
    if !(64 * 1024..=8 * 1024 * 1024).contains(&b.chunk_size) || !b.chunk_size.is_power_of_two() {
        bail!(
            "chunk size {} is not a power of two between 64 KiB and 8 MiB",
            b.chunk_size
        );
    }
    if b.disks.is_empty() || b.disks.len() > 256 {
        bail!(
            "a backup must have between 1 and 256 disks, not {}",
            b.disks.len()
        );
    }
    for d in &b.disks {
        if d.size == 0 || d.size > (1u64 << 56) {
            bail!("disk {:?} has an impossible size {}", d.name, d.size);
        }
        if !(512..=65536).contains(&d.logical_sector_size)
            || !d.logical_sector_size.is_power_of_two()
        {
            bail!(
                "disk {:?} has an impossible sector size {}",
                d.name,
                d.logical_sector_size
            );
        }
    }
    Ok(())
}

fn resumable(m: &Manifest, source: &Identity, begin: &BackupBegin) -> bool {
    !m.status.is_complete()
        && m.source.machine_id == source.machine_id
        && m.label == begin.label
        && m.chunk_size == begin.chunk_size
        && m.disks.len() == begin.disks.len()
        && m.disks.iter().zip(&begin.disks).all(|(a, b)| {
            a.source_name == b.name
                && a.size == b.size
                && a.serial == b.serial
                && a.source_path == b.source_path
        })
}

pub fn read_manifest(dir: &Path) -> Result<Manifest> {
    let mut f = open_in(dir, MANIFEST, false, false)?;
    let mut s = String::new();
    Read::by_ref(&mut f)
        .take(16 * 1024 * 1024)
        .read_to_string(&mut s)
        .with_context(|| format!("reading {}/{MANIFEST}", dir.display()))?;
    let m: Manifest = serde_json::from_str(&s)
        .with_context(|| format!("parsing {}/{MANIFEST}", dir.display()))?;
    for d in &m.disks {
        for n in [&d.name] {
            if !names::is_safe(n) {
                bail!("{}/{MANIFEST} names an unsafe file {n:?}", dir.display());
            }
        }
    }
    Ok(m)
}

impl BackupDir {
    pub fn save(&self) -> Result<()> {
        let mut data =
            serde_json::to_vec_pretty(&self.manifest).context("encoding the manifest")?;
        data.push(b'\n');
        util::write_atomic(&self.path.join(MANIFEST), &data)
    }

    /// Writes SHA256SUMS for the disks that are complete, in `sha256sum -c` format.
    pub fn write_sums(&self) -> Result<()> {
        let mut s = String::new();
        for d in &self.manifest.disks {
            if let (true, Some(h)) = (d.complete, &d.sha256) {
                s.push_str(&format!("{h}  {}\n", d.image));
            }
        }
        util::write_atomic(&self.path.join(SUMS), s.as_bytes())
    }

    /// Records the end of the session: complete when every disk is.
    pub fn finish(&mut self) -> Result<()> {
        let now = util::iso8601(util::now_secs());
        self.manifest.updated = now.clone();
        if self.manifest.disks.iter().all(|d| d.complete) {
            self.manifest.finished = Some(now);
            self.manifest.status = if self.manifest.disks.iter().any(|d| d.unreadable_bytes > 0) {
                BackupStatus::CompleteWithErrors
            } else {
                BackupStatus::Complete
            };
        }
        self.write_sums()?;
        self.save()
    }
}

/// Makes sure a file is written to disk before we say it is.
pub fn sync_file(f: &File) -> Result<()> {
    f.sync_data().context("syncing to disk")
}

/// Writes a whole small file inside a backup directory (not through symlinks).
pub fn write_in(dir: &Path, name: &str, data: &[u8]) -> Result<()> {
    let mut f = open_in(dir, name, true, true)?;
    f.set_len(0)?;
    f.write_all(data)?;
    Ok(())
}
