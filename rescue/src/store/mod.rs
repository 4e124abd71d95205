//! The image store on the receiving machine:
//! `DIR/<host>/<backup-id>/{manifest.json, SHA256SUMS, <disk>.img, <disk>.map, <disk>.chunks}`.
//! Every name that came from the peer goes through `names::sanitize`, and every
//! file is opened relative to its directory's descriptor without following links
//! (`dir.rs`), so neither a peer nor a link planted in the store makes serve
//! write outside DIR.

pub(crate) mod dir;
pub(crate) mod image;
pub(crate) mod keep;
pub(crate) mod mapfile;
pub mod names;
mod room;
pub(crate) mod seal;

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

pub(crate) use dir::{Access, Dir};
pub(crate) use room::{Refusal, error_code};

use crate::exit::{self, Exit};
use crate::proto::msg::{
    BackupBegin, BackupState, BackupSummary, ChunkRanges, DiskSummary, Identity,
};
use crate::util;

pub(crate) const MANIFEST: &str = "manifest.json";
pub(crate) const SUMS: &str = "SHA256SUMS";

/// How the manifest spells a backup's state: kebab-case ("complete-with-errors"),
/// as every manifest written so far has it. The state is the protocol's one type
/// (LISTING sends its own tokens); this only describes the manifest's spelling to
/// serde, which checks at compile time that it names every state.
#[derive(Serialize, Deserialize)]
#[serde(remote = "BackupState", rename_all = "kebab-case")]
enum ManifestState {
    InProgress,
    Complete,
    CompleteWithErrors,
    Failed,
    Sealing,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct ManifestDisk {
    /// File stem in this directory (sanitised, unique).
    pub(crate) name: String,
    /// The name the source machine gave.
    pub(crate) source_name: String,
    pub(crate) source_path: String,
    pub(crate) size: u64,
    pub(crate) logical_sector_size: u32,
    pub(crate) model: Option<String>,
    pub(crate) serial: Option<String>,
    pub(crate) details: Option<serde_json::Value>,
    pub(crate) image: String,
    pub(crate) map: String,
    pub(crate) chunks: String,
    /// SHA-256 of the whole image, once verified.
    pub(crate) sha256: Option<String>,
    pub(crate) unreadable_bytes: u64,
    pub(crate) complete: bool,
    /// A used-block backup: the free ranges of the recognised filesystems, stored
    /// as zeros, not the source's bytes (and what each partition held). Absent:
    /// every byte is the source's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) free: Option<crate::proto::msg::FreeMap>,
    /// Incremental: the base backup's disk this one was compared with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) base_disk: Option<String>,
    /// Incremental: bytes filled from the base (unchanged since it), bytes
    /// that share its extents (reflinked) and chunks whose copy in the base
    /// failed its check (sent instead). Counted over every session.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub(crate) unchanged_bytes: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub(crate) shared_bytes: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub(crate) base_failed: u64,
    /// Bytes received as data (neither zero nor unchanged), over every session.
    #[serde(default)]
    pub(crate) sent_bytes: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub(crate) format: String,
    pub(crate) version: u32,
    pub backup_id: String,
    pub(crate) label: Option<String>,
    #[serde(with = "ManifestState")]
    pub status: BackupState,
    pub(crate) created: String,
    pub(crate) updated: String,
    pub(crate) finished: Option<String>,
    pub(crate) source: Identity,
    pub(crate) receiver: Identity,
    pub(crate) chunk_size: u32,
    pub(crate) disks: Vec<ManifestDisk>,
    /// SHA-256 of the key the sender must present to resume this backup
    /// (see `auth`); none in backups made before keys existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) resume_key_sha256: Option<String>,
    /// Incremental: the id of the backup (same host) this one was made
    /// against. Only a record: this backup's images are whole without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) base: Option<String>,
}

impl Manifest {
    pub(crate) fn summary(&self, host: &str) -> BackupSummary {
        BackupSummary {
            host: host.to_string(),
            backup_id: self.backup_id.clone(),
            label: self.label.clone(),
            status: self.status,
            created: self.created.clone(),
            finished: self.finished.clone(),
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
                    layout: None,
                    free_bytes: d.free.as_ref().map_or(0, |f| f.free_bytes()),
                })
                .collect(),
        }
    }
}

/// A store directory.
pub struct Store {
    dir: PathBuf,
    root: Dir,
    /// Refuse backups larger than the free space (off: `serve --no-space-check`).
    pub space_check: bool,
    /// Backups whose whole-image digests are computed after their session.
    sealers: seal::Sealers,
}

/// One backup's directory with its manifest.
pub struct BackupDir {
    pub path: PathBuf,
    /// The directory, held open: its files are opened relative to it.
    pub(crate) dir: Dir,
    pub(crate) host: String,
    pub manifest: Manifest,
}

impl Store {
    /// Opens an existing store to read it (`rescue verify`).
    pub(crate) fn open(dir: &Path) -> Result<Store> {
        if !dir.is_dir() {
            bail!("the store {} is not a directory", dir.display());
        }
        let dir = fs::canonicalize(dir)
            .with_context(|| format!("resolving the store directory {}", dir.display()))?;
        let root = Dir::open(&dir)?;
        Ok(Store {
            dir,
            root,
            space_check: true,
            sealers: seal::Sealers::default(),
        })
    }

    /// Opens the store serve writes into. A missing directory is created only
    /// when asked (`create`): a mistyped or unmounted path would otherwise put
    /// backups in the rescue system's RAM or on its root filesystem. A store
    /// that cannot be written is refused now, not at the first backup.
    pub fn open_to_write(dir: &Path, create: bool) -> Result<Store> {
        match fs::symlink_metadata(dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if !create {
                    return Err(Exit::new(
                        exit::USAGE,
                        format!(
                            "the store {d} does not exist: check that the disk meant for the backups is mounted there, then create it (mkdir -p {d}) or add --create",
                            d = dir.display()
                        ),
                    )
                    .into());
                }
                fs::create_dir_all(dir)
                    .with_context(|| format!("creating the store directory {}", dir.display()))?;
            }
            Err(e) => {
                return Err(e).with_context(|| format!("examining the store {}", dir.display()));
            }
            Ok(_) => {}
        }
        let store = Store::open(dir).map_err(|e| Exit::new(exit::USAGE, format!("{e:#}")))?;
        room::check_writable(&store.root)?;
        Ok(store)
    }

    pub(crate) fn dir(&self) -> &Path {
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
            if !names::is_safe(&hname) {
                continue;
            }
            if let Some(want) = host
                && names::sanitize(want, "host") != hname
            {
                continue;
            }
            let Ok(hdir) = self.root.sub(&hname) else {
                continue;
            };
            let Ok(backups) = fs::read_dir(hdir.path()) else {
                continue;
            };
            for b in backups.flatten() {
                let id = b.file_name().to_string_lossy().into_owned();
                let Ok(dir) = hdir.sub(&id) else {
                    continue;
                };
                match read_manifest_in(&dir) {
                    Ok(m) => out.push(BackupDir {
                        path: dir.path().to_path_buf(),
                        dir,
                        host: hname.clone(),
                        manifest: m,
                    }),
                    // One broken backup must not hide the others: skip it, say so.
                    Err(e) => eprintln!("skipping {}: {e:#}", dir.path().display()),
                }
            }
        }
        out.sort_by(|a, b| b.manifest.backup_id.cmp(&a.manifest.backup_id));
        out
    }

    /// Opens one backup named by a peer (host and id must be plain names).
    pub(crate) fn open_backup(&self, host: &str, id: &str) -> Result<BackupDir> {
        if !names::is_safe(host) || !names::is_safe(id) {
            bail!("no backup {host:?}/{id:?}: not a valid name");
        }
        let Ok(dir) = self.root.sub(host).and_then(|h| h.sub(id)) else {
            bail!("no backup {id} of host {host} in {}", self.dir.display());
        };
        let manifest = read_manifest_in(&dir)?;
        Ok(BackupDir {
            path: dir.path().to_path_buf(),
            dir,
            host: host.to_string(),
            manifest,
        })
    }

    /// Starts a backup, or resumes an interrupted one of the same machine and disks
    /// that `may_resume` allows (the peer presented its key, or consent).
    /// Returns the directory, the chunks already held per disk, and whether it resumed.
    /// The room check counts what the base (one `may_base` accepts, see
    /// [`Store::choose_base`]) gives by reflink.
    pub(crate) fn begin_backup(
        &self,
        source: &Identity,
        receiver: &Identity,
        begin: &BackupBegin,
        may_resume: impl Fn(&Manifest) -> bool,
        may_base: impl Fn(&Manifest) -> bool,
    ) -> Result<(BackupDir, Vec<ChunkRanges>, bool)> {
        validate_begin(begin)?;
        let host = host_name(source);
        if !begin.fresh
            && let Some(mut b) = self
                .list(Some(&host))
                .into_iter()
                .find(|b| resumable(&b.manifest, source, begin) && may_resume(&b.manifest))
        {
            b.check_writable_files()?;
            let mut have = Vec::new();
            for d in &b.manifest.disks {
                have.push(image::resume_ranges(&b.dir, d, b.manifest.chunk_size)?);
            }
            let base = (!begin.full)
                .then_some(b.manifest.base.as_ref())
                .flatten()
                .and_then(|id| self.open_backup(&host, id).ok());
            let credit = self.clone_credit(base.as_ref(), &b.manifest.disks);
            self.check_room(begin, &have, &credit)?;
            keep_decision(&mut b.manifest, begin);
            b.manifest.status = BackupState::InProgress;
            b.manifest.updated = util::iso8601(util::now_secs());
            b.save()?;
            return Ok((b, have, true));
        }

        let disks = manifest_disks(begin);
        let base = (!begin.full)
            .then(|| self.base_for(&host, begin.chunk_size, &disks, "", &may_base))
            .flatten();
        self.check_room(begin, &[], &self.clone_credit(base.as_ref(), &disks))?;
        let host_dir = self.root.sub_or_create(&host)?;
        let now = util::now_secs();
        let (dir, id) = new_backup_dir(&host_dir, begin, &util::compact_time(now))?;
        let b = BackupDir {
            path: dir.path().to_path_buf(),
            dir,
            host,
            manifest: Manifest {
                format: "usb4rescue-backup".into(),
                version: 1,
                backup_id: id,
                label: begin.label.clone(),
                status: BackupState::InProgress,
                created: util::iso8601(now),
                updated: util::iso8601(now),
                finished: None,
                source: source.clone(),
                receiver: receiver.clone(),
                chunk_size: begin.chunk_size,
                disks,
                resume_key_sha256: None,
                base: None,
            },
        };
        b.save()?;
        let have = vec![ChunkRanges::new(); begin.disks.len()];
        Ok((b, have, false))
    }
}

impl Store {
    /// The base for backup `b` (incremental): the newest complete backup of
    /// the same host directory that `eligible` accepts (the same machine-id:
    /// `auth::may_be_base`) with the same chunk size, any label, and per disk
    /// of `b` its disk of the same serial and size (without serials: the same
    /// source name and size). None when the newest such backup has no
    /// matching disk.
    pub(crate) fn choose_base(
        &self,
        b: &BackupDir,
        eligible: impl Fn(&Manifest) -> bool,
    ) -> Option<BackupDir> {
        let m = &b.manifest;
        self.base_for(&b.host, m.chunk_size, &m.disks, &m.backup_id, eligible)
    }

    /// [`Store::choose_base`] for a backup of `host` with `disks`, other than
    /// `backup_id` (before its directory exists: none).
    fn base_for(
        &self,
        host: &str,
        chunk_size: u32,
        disks: &[ManifestDisk],
        backup_id: &str,
        eligible: impl Fn(&Manifest) -> bool,
    ) -> Option<BackupDir> {
        let base = self.list(Some(host)).into_iter().find(|c| {
            c.manifest.backup_id != backup_id
                && c.manifest.status.is_complete()
                && eligible(&c.manifest)
                && c.manifest.chunk_size == chunk_size
        })?;
        disks
            .iter()
            .any(|d| base_disk(&base.manifest, d).is_some())
            .then_some(base)
    }
}

/// The disk of base manifest `base` that disk `d` is compared with.
pub(crate) fn base_disk<'a>(base: &'a Manifest, d: &ManifestDisk) -> Option<&'a ManifestDisk> {
    base.disks.iter().find(|x| {
        x.complete
            && x.size == d.size
            && x.serial == d.serial
            && (d.serial.is_some() || x.source_name == d.source_name)
    })
}

/// Creates the directory of a new backup in `host_dir`, named after the time
/// and label (with -2, -3... should that be taken); returns it and its name.
fn new_backup_dir(host_dir: &Dir, begin: &BackupBegin, time: &str) -> Result<(Dir, String)> {
    // Time and label as one name, so a long label is cut with a hash
    // suffix like any other name (and never ends in a replaced character).
    let mut id = match &begin.label {
        Some(l) => names::sanitize(&format!("{time}-{}", names::sanitize(l, "backup")), time),
        None => time.to_string(),
    };
    let base = id.clone();
    let mut n = 2;
    loop {
        match host_dir.create_sub(&id) {
            Ok(d) => return Ok((d, id)),
            Err(e) if dir::errno_of(&e) == Some(nix::errno::Errno::EEXIST) => {
                id = names::with_suffix(&base, &format!("-{n}"));
                n += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// The manifest's disks of a new backup: what BACKUP_BEGIN describes, each
/// with file names of its own.
fn manifest_disks(begin: &BackupBegin) -> Vec<ManifestDisk> {
    let stems = names::unique(
        &begin
            .disks
            .iter()
            .enumerate()
            .map(|(i, d)| names::sanitize(&d.name, &format!("disk{i}")))
            .collect::<Vec<_>>(),
    );
    begin
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
            free: d.free.clone(),
            image: format!("{stem}.img"),
            map: format!("{stem}.map"),
            chunks: format!("{stem}.chunks"),
            name: stem,
            sha256: None,
            unreadable_bytes: 0,
            complete: false,
            base_disk: None,
            unchanged_bytes: 0,
            shared_bytes: 0,
            base_failed: 0,
            sent_bytes: 0,
        })
        .collect()
}

/// The directory a machine's backups go to: its hostname, sanitised.
pub(crate) fn host_name(source: &Identity) -> String {
    names::sanitize(&source.hostname, "unnamed-host")
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
    check_details(b)
}

/// Nesting of a disk's `details` (the sender's description of the disk, kept
/// in the manifest as it came): an honest sender's is 2 to 4 levels deep.
const MAX_DETAILS_DEPTH: usize = 8;
/// Bytes one disk's `details` may take in manifest.json (an honest sender's
/// take a few KiB; a GPT disk with 128 partitions about 100 KiB).
const MAX_DETAILS: u64 = 256 * 1024;
/// Bytes every disk's `details` together may take in manifest.json.
const MAX_ALL_DETAILS: u64 = 4 * 1024 * 1024;

/// Rejects `details` that would make the manifest large: pretty-printed, each
/// level of nesting indents every line below it, so a 3.86 MB BACKUP_BEGIN of
/// deeply nested arrays became a 491 MB manifest.json. The size is computed
/// without printing anything.
fn check_details(b: &BackupBegin) -> Result<()> {
    let mut total = 0u64;
    for d in &b.disks {
        let Some(v) = &d.details else { continue };
        let depth = depth_of(v, MAX_DETAILS_DEPTH + 1);
        if depth > MAX_DETAILS_DEPTH {
            bail!(
                "disk {:?}: its details are nested more than {MAX_DETAILS_DEPTH} levels deep",
                d.name
            );
        }
        // In the manifest, details sit three levels deep (root, disks, disk).
        let len = pretty_len(v, 3);
        if len > MAX_DETAILS {
            bail!(
                "disk {:?}: its details would take {} in the manifest (limit {})",
                d.name,
                util::human_bytes(len),
                util::human_bytes(MAX_DETAILS)
            );
        }
        total += len;
    }
    if total > MAX_ALL_DETAILS {
        bail!(
            "the disks' details would take {} in the manifest (limit {})",
            util::human_bytes(total),
            util::human_bytes(MAX_ALL_DETAILS)
        );
    }
    Ok(())
}

/// Levels of nesting of `v` (a scalar is 0), counted up to `stop`.
fn depth_of(v: &serde_json::Value, stop: usize) -> usize {
    use serde_json::Value;
    if stop == 0 {
        return 0;
    }
    let inner = match v {
        Value::Array(a) => a.iter().map(|x| depth_of(x, stop - 1)).max(),
        Value::Object(o) => o.values().map(|x| depth_of(x, stop - 1)).max(),
        _ => return 0,
    };
    1 + inner.unwrap_or(0)
}

/// The length of `v` as `serde_json::to_vec_pretty` writes it at nesting
/// `level` (two spaces per level).
fn pretty_len(v: &serde_json::Value, level: u64) -> u64 {
    use serde_json::Value;
    // A member's line: a newline, the indent, the member, and a comma after
    // all but the last; then a newline and the closing bracket one level out.
    let members = |n: usize, sum: u64| {
        if n == 0 {
            2
        } else {
            sum + n as u64 * (1 + 2 * (level + 1)) + (n as u64 - 1) + 1 + 2 * level + 2
        }
    };
    match v {
        Value::Array(a) => members(a.len(), a.iter().map(|x| pretty_len(x, level + 1)).sum()),
        Value::Object(o) => members(
            o.len(),
            o.iter()
                .map(|(k, x)| string_len(k) + 2 + pretty_len(x, level + 1))
                .sum(),
        ),
        Value::String(s) => string_len(s),
        other => other.to_string().len() as u64,
    }
}

/// The length of `s` as a JSON string (quotes and escapes included).
fn string_len(s: &str) -> u64 {
    serde_json::to_string(s).map_or(0, |j| j.len() as u64)
}

/// A resumed used-block backup keeps the free map it started with (what the
/// held chunks were read by), but leaves out only what the sender's new probe
/// also calls free: bytes the source has used since are read, never lost.
fn keep_decision(m: &mut Manifest, begin: &BackupBegin) {
    for (d, b) in m.disks.iter_mut().zip(&begin.disks) {
        if let (Some(old), Some(new)) = (&d.free, &b.free)
            && old != new
        {
            let kept = old.narrowed_by(new);
            eprintln!(
                "{}: resumed with its stored free map ({} left out); the new probe differs ({} left out), so only what both call free is left out from now on: {}",
                d.name,
                crate::util::human_bytes(old.free_bytes()),
                crate::util::human_bytes(new.free_bytes()),
                crate::util::human_bytes(kept.free_bytes())
            );
            d.free = Some(kept);
        }
    }
}

fn resumable(m: &Manifest, source: &Identity, begin: &BackupBegin) -> bool {
    !m.status.is_complete()
        && m.status != BackupState::Sealing
        && m.source.machine_id == source.machine_id
        && m.label == begin.label
        && m.chunk_size == begin.chunk_size
        && m.disks.len() == begin.disks.len()
        && m.disks.iter().zip(&begin.disks).all(|(a, b)| {
            a.source_name == b.name
                && a.size == b.size
                && a.serial == b.serial
                && a.source_path == b.source_path
                // Used blocks or every block, as it started: the held chunks
                // must not mix free space stored as zeros with a copy of every
                // byte. A map probed differently is narrowed (`begin_backup`).
                && a.free.is_some() == b.free.is_some()
        })
}

pub(crate) fn read_manifest(dir: &Path) -> Result<Manifest> {
    read_manifest_in(&Dir::open(dir)?)
}

fn read_manifest_in(dir: &Dir) -> Result<Manifest> {
    let s = dir.read_to_string(MANIFEST, 16 * 1024 * 1024)?;
    let m: Manifest = serde_json::from_str(&s)
        .with_context(|| format!("parsing {}/{MANIFEST}", dir.path().display()))?;
    for d in &m.disks {
        for n in [&d.name] {
            if !names::is_safe(n) {
                bail!(
                    "{}/{MANIFEST} names an unsafe file {n:?}",
                    dir.path().display()
                );
            }
        }
    }
    Ok(m)
}

impl BackupDir {
    /// Marks the backup in use while this directory is open (a shared lock on
    /// it): serve holds what it receives into, restores from or fills an
    /// incremental backup from, and `rescue store prune` leaves it alone.
    pub(crate) fn hold(&self) {
        use std::os::fd::AsRawFd;
        // SAFETY: flock on our own directory descriptor; no memory is passed.
        let r = unsafe { libc::flock(self.dir.fd().as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
        if r != 0 {
            eprintln!(
                "note: {} is being removed or checked (it could not be marked in use)",
                self.path.display()
            );
        }
    }

    /// An exclusive lock on the backup's directory for removing it; None
    /// while serve holds it ([`BackupDir::hold`]).
    pub(crate) fn lock_to_remove(&self) -> Option<Dir> {
        use std::os::fd::AsRawFd;
        let d = Dir::open(&self.path).ok()?;
        // SAFETY: flock on the descriptor just opened; no memory is passed.
        let r = unsafe { libc::flock(d.fd().as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        (r == 0).then_some(d)
    }

    /// Whether serve holds the backup now.
    pub(crate) fn is_held(&self) -> bool {
        self.lock_to_remove().is_none()
    }

    /// Refuses to resume into an image or journal that is a link (a symlink,
    /// or a file with other hard links): the data would land elsewhere.
    fn check_writable_files(&self) -> Result<()> {
        for d in &self.manifest.disks {
            for name in [&d.image, &d.chunks] {
                match self.dir.open_file(name, Access::Write) {
                    Err(e) if dir::errno_of(&e) != Some(nix::errno::Errno::ENOENT) => {
                        return Err(Refusal {
                            code: "refused",
                            message: format!(
                                "cannot resume backup {}: {e:#}",
                                self.manifest.backup_id
                            ),
                        }
                        .into());
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    pub fn save(&self) -> Result<()> {
        let mut data =
            serde_json::to_vec_pretty(&self.manifest).context("encoding the manifest")?;
        data.push(b'\n');
        self.dir.write_atomic(MANIFEST, &data)
    }

    /// Writes SHA256SUMS for the disks that are complete, in `sha256sum -c` format.
    pub(crate) fn write_sums(&self) -> Result<()> {
        let mut s = String::new();
        for d in &self.manifest.disks {
            if let (true, Some(h)) = (d.complete, &d.sha256) {
                s.push_str(&format!("{h}  {}\n", d.image));
            }
        }
        self.dir.write_atomic(SUMS, s.as_bytes())
    }

    /// Records the end of the session: complete when every disk is.
    pub(crate) fn finish(&mut self) -> Result<()> {
        let now = util::iso8601(util::now_secs());
        self.manifest.updated = now.clone();
        if self.manifest.disks.iter().all(|d| d.complete) {
            self.manifest.finished = Some(now);
            self.manifest.status = if self.manifest.disks.iter().any(|d| d.unreadable_bytes > 0) {
                BackupState::CompleteWithErrors
            } else {
                BackupState::Complete
            };
        }
        self.write_sums()?;
        self.save()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pretty_len_is_what_serde_prints() {
        for v in [
            json!(null),
            json!([]),
            json!({}),
            json!([1, [2, [3, []]], {"a": {"b": [true, false]}}]),
            json!({"say \"hi\"\n": "tab\there", "e": {}, "n": -1.5}),
        ] {
            // At level 0, and inside three levels as details sit in a manifest.
            assert_eq!(
                pretty_len(&v, 0),
                serde_json::to_vec_pretty(&v).unwrap().len() as u64
            );
            let outer = json!({"x": [{"details": v.clone()}]});
            assert_eq!(
                pretty_len(&outer, 0),
                serde_json::to_vec_pretty(&outer).unwrap().len() as u64,
                "{v}"
            );
        }
        assert_eq!(depth_of(&json!(1), 9), 0);
        assert_eq!(depth_of(&json!({"a": [[1]]}), 9), 3);
        let mut deep = json!(0);
        for _ in 0..100 {
            deep = json!([deep]);
        }
        assert_eq!(
            depth_of(&deep, MAX_DETAILS_DEPTH + 1),
            MAX_DETAILS_DEPTH + 1
        );
    }

    /// Manifests written before the state was one type keep loading, and are
    /// written back spelled as they were; LISTING's tokens are not the manifest's.
    #[test]
    fn old_manifests_keep_their_state_spelling() {
        let old = |status: &str| {
            json!({
                "format": "usb4rescue-backup", "version": 1, "backup_id": "b", "label": null,
                "status": status, "created": "", "updated": "", "finished": null,
                "source": {"hostname": "hosta", "machine_id": "m", "tool_version": "x"},
                "receiver": {"hostname": "b", "tool_version": "x"}, "chunk_size": 65536,
                "disks": [],
            })
        };
        for (spelling, state) in [
            ("in-progress", BackupState::InProgress),
            ("complete", BackupState::Complete),
            ("complete-with-errors", BackupState::CompleteWithErrors),
            ("failed", BackupState::Failed),
            ("sealing", BackupState::Sealing),
        ] {
            let m: Manifest = serde_json::from_value(old(spelling)).unwrap();
            assert_eq!(m.status, state, "{spelling}");
            assert_eq!(m.summary("hosta").status, state);
            assert_eq!(serde_json::to_value(&m).unwrap()["status"], spelling);
        }
        for wrong in [
            "complete (unreadable sectors)",
            "incomplete: resumable",
            "Complete",
        ] {
            let e = serde_json::from_value::<Manifest>(old(wrong)).unwrap_err();
            assert!(e.to_string().contains("unknown variant"), "{wrong}: {e}");
        }
    }
}
