//! `rescue restore`: write a backup the peer holds onto local disks, after
//! safety checks (size, mounted, held, exclusive open) and a confirmation.

use std::fs::{File, OpenOptions};
use std::io::IsTerminal;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

use crate::Root;
use crate::cmd::cli::RestoreArgs;
use crate::cmd::restore_free::{self, FreeMode, FreeWriter, Masker};
use crate::exit::{self, Exit};
use crate::proto::digests::Digests;
use crate::proto::frame::Header;
use crate::proto::msg::{
    self, BackupSummary, ChunkRanges, DigestsReq, DiskDone, DiskSummary, FreeMap, ListReq, Listing,
    MAX_DIGESTS, RestoreBegin, RestoreReady, Role, SessionEnd, kind,
};
use crate::session::{self, Session};
use crate::store::image::ZeroDigests;
use crate::store::mapfile::{BlockStatus, Map};
use crate::system::blkdev;
use crate::system::busy;
use crate::system::direct::DirectWriter;
use crate::system::disks;
use crate::system::partitions;
use crate::system::readahead;
use crate::system::resize;
use crate::util::{Escaped, hex, human_bytes};
use crate::xfer::progress::{self, Bar};
use crate::xfer::{
    self, Geometry, OnDamaged, Received, Sink, SinkPipeline, StoreDamaged, Verified,
};

/// A local disk or file about to be overwritten.
pub(crate) struct Target {
    pub(crate) spec: String,
    pub(crate) path: PathBuf,
    pub(crate) file: File,
    /// Its size: a target of another size than the image is resized to it.
    pub(crate) size: u64,
    pub(crate) block: bool,
    /// A block device's directory in sysfs (below the root), where the kernel's own
    /// view of its partitions is read after the new table is written.
    sysfs: Option<PathBuf>,
    pub(crate) description: String,
    /// Set when this restore created the file: it goes again on failure.
    created: Option<Created>,
}

/// A file this restore created. Dropping it removes the file unless `keep`
/// was called, so every way out of a failed restore (an error, a refusal, a
/// lying peer) takes it away, not only the paths that remember to.
struct Created {
    path: PathBuf,
    /// Its inode: what is removed is the file we made, not one put there since.
    ino: u64,
    keep: bool,
}

impl Drop for Created {
    fn drop(&mut self) {
        use std::os::unix::fs::MetadataExt;
        let ours = std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.ino() == self.ino);
        if !self.keep && ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Target {
    /// The restore got far enough that the file is worth keeping (it
    /// succeeded, or it can be continued with --resume).
    fn keep(&mut self) {
        if let Some(c) = &mut self.created {
            c.keep = true;
        }
    }
}

/// A target after the checks: an opened disk or file, or a file to create
/// once the user has confirmed (nothing is created before that).
pub(crate) enum Planned {
    Open(Target),
    New {
        spec: String,
        path: PathBuf,
        size: u64,
    },
}

impl Planned {
    fn description(&self) -> String {
        match self {
            Planned::Open(t) => t.description.clone(),
            Planned::New { path, size, .. } => {
                format!(
                    "{} (new image file, {})",
                    path.display(),
                    human_bytes(*size)
                )
            }
        }
    }

    /// Opens the target, creating a new file now.
    fn open(self) -> Result<Target> {
        let (spec, path, size) = match self {
            Planned::Open(t) => return Ok(t),
            Planned::New { spec, path, size } => (spec, path, size),
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .with_context(|| format!("creating {spec}"))?;
        let ino = std::os::unix::fs::MetadataExt::ino(
            &file
                .metadata()
                .with_context(|| format!("inspecting {spec}"))?,
        );
        let t = Target {
            description: format!("{} (new image file)", path.display()),
            created: Some(Created {
                path: path.clone(),
                ino,
                keep: false,
            }),
            spec,
            path,
            file,
            size,
            block: false,
            sysfs: None,
        };
        t.file
            .set_len(size)
            .with_context(|| format!("sizing {} to {size} bytes", t.spec))?;
        Ok(t)
    }
}

/// Opens every planned target, creating the new files now. Should one fail,
/// the files created before it go again: their guards drop with the others.
fn open_all(planned: Vec<Planned>) -> Result<Vec<Target>> {
    planned.into_iter().map(Planned::open).collect()
}

fn refuse(msg: String) -> anyhow::Error {
    Exit::new(exit::REFUSED, msg).into()
}

/// Checks and opens every target, and plans each one of another size.
fn open_targets(
    root: &Root,
    pairs: &[(DiskSummary, String)],
    grow: bool,
) -> Result<(Vec<Planned>, Vec<resize::Plan>)> {
    let mut planned = Vec::new();
    let mut plans = Vec::new();
    for (d, t) in pairs {
        let p = open_target(root, t, d.size, d.layout.is_some())?;
        plans.push(resize_plan(d, t, &p, grow)?);
        planned.push(p);
    }
    Ok((planned, plans))
}

/// What restoring disk `d` onto a target of another size does (nothing for
/// the same size), or the refusal: its partitions do not fit.
fn resize_plan(d: &DiskSummary, spec: &str, p: &Planned, grow: bool) -> Result<resize::Plan> {
    let target = match p {
        Planned::Open(t) => Some((&t.file, t.size)),
        Planned::New { .. } => None,
    };
    resize::for_target(d.layout.as_ref(), d.size, target, grow).map_err(|why| {
        refuse(format!(
            "refusing to restore onto {spec}: {why}; nothing was written"
        ))
    })
}

/// Checks a restore target and opens it, or plans to create it (a path that
/// does not exist yet). `need` is the image size; with `resizable` a target of
/// another size is left to `resize::for_target` to accept or refuse.
pub(crate) fn open_target(root: &Root, spec: &str, need: u64, resizable: bool) -> Result<Planned> {
    let path = root.disk_path(spec);
    let meta = std::fs::metadata(&path);
    let is_block = meta
        .as_ref()
        .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_block_device(&m.file_type()));
    if is_block {
        let need = if resizable { 0 } else { need };
        return open_block(root, spec, path, need).map(Planned::Open);
    }
    match meta {
        Ok(m) if m.is_file() => {
            if m.len() < need && !resizable {
                return Err(refuse(format!(
                    "refusing to restore onto {spec}: the file holds {} ({} bytes) but the image is {} ({need} bytes); make it at least that large (truncate -s {need} {spec})",
                    human_bytes(m.len()),
                    m.len(),
                    human_bytes(need)
                )));
            }
            if let Some(why) = busy::file_in_use(root, &path) {
                return Err(refuse(format!(
                    "refusing to restore onto {spec}: {why}; detach it first (losetup -d)"
                )));
            }
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .with_context(|| format!("opening {spec} for writing"))?;
            refuse_if_locked(spec, &file)?;
            Ok(Planned::Open(Target {
                spec: spec.into(),
                description: format!("{} (image file, {})", path.display(), human_bytes(m.len())),
                path,
                file,
                size: m.len(),
                block: false,
                sysfs: None,
                created: None,
            }))
        }
        Ok(_) => Err(refuse(format!(
            "{spec} is neither a disk nor a regular file"
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && spec.contains('/') => {
            check_room(spec, &path, need)?;
            Ok(Planned::New {
                spec: spec.into(),
                path,
                size: need,
            })
        }
        Err(e) => Err(anyhow::Error::new(e)
            .context(format!("{spec}: no such disk (`rescue disks` lists them)"))),
    }
}

/// A disk or image another program holds a lock on is in use (a running VM's).
fn refuse_if_locked(spec: &str, file: &File) -> Result<()> {
    match busy::lock_holder(file) {
        Some(why) => Err(refuse(format!(
            "refusing to restore onto {spec}: {why}; stop that program first"
        ))),
        None => Ok(()),
    }
}

/// A new image file must fit its filesystem: a peer's size claim alone must
/// not create a 15 TiB file, nor a restore fill a disk and fail at the end.
fn check_room(spec: &str, path: &std::path::Path, need: u64) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    let free = free_bytes(dir).with_context(|| {
        format!(
            "{spec}: cannot create it, its directory {} is not usable",
            dir.display()
        )
    })?;
    if free < need {
        return Err(refuse(format!(
            "refusing to create {spec}: the image is {} ({need} bytes) but {} has only {} free; free space or choose another place (if the image is mostly empty, create a sparse file first: truncate -s {need} {spec})",
            human_bytes(need),
            dir.display(),
            human_bytes(free)
        )));
    }
    Ok(())
}

/// Bytes an unprivileged writer may still use on the filesystem of `dir`.
fn free_bytes(dir: &std::path::Path) -> Result<u64> {
    let st = nix::sys::statvfs::statvfs(dir).map_err(std::io::Error::from)?;
    Ok(st.blocks_available().saturating_mul(st.fragment_size()))
}

fn open_block(root: &Root, spec: &str, path: PathBuf, need: u64) -> Result<Target> {
    let name = std::fs::canonicalize(&path)
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| spec.to_string());
    let disk = crate::system::disks::find(root, &name).ok();
    // What disks knows (its partitions mounted, held, swap), then everything
    // stacked on it to any depth (loop devices on it or on a file on it, dm on md).
    let why = disk
        .as_ref()
        .and_then(|d| d.busy_reason())
        .or_else(|| busy::device_in_use(root, &name));
    if let Some(why) = why {
        return Err(refuse(format!(
            "refusing to restore onto {spec}: {why}; unmount it (and stop what holds it) first"
        )));
    }
    // O_EXCL on a block device fails with EBUSY while anything has it mounted
    // or claimed: the kernel's own answer to "is it in use".
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_EXCL | libc::O_CLOEXEC)
        .open(&path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::EBUSY) => refuse(format!(
                "refusing to restore onto {spec}: it is in use (mounted, part of a RAID/LVM, or open elsewhere)"
            )),
            _ => anyhow::Error::new(e).context(format!("opening {spec} for writing")),
        })?;
    refuse_if_locked(spec, &file)?;
    let size = blkdev::size_of(&file)?;
    if size < need {
        return Err(refuse(format!(
            "refusing to restore onto {spec}: it holds {} ({size} bytes) but the image is {} ({need} bytes)",
            human_bytes(size),
            human_bytes(need)
        )));
    }
    let description = match &disk {
        Some(d) => format!(
            "{} ({}, serial {}, {})",
            path.display(),
            d.model.as_deref().unwrap_or("unknown model"),
            d.serial.as_deref().unwrap_or("unknown"),
            human_bytes(size)
        ),
        None => format!("{} ({})", path.display(), human_bytes(size)),
    };
    Ok(Target {
        spec: spec.into(),
        path,
        file,
        size,
        block: true,
        sysfs: Some(root.path(format!("/sys/class/block/{name}"))),
        description,
        created: None,
    })
}

/// Writes verified chunks onto the target.
struct TargetSink {
    file: File,
    /// Data goes to the device directly: no page-cache copy, and a later
    /// `--verify` reads what is really on the disk, not cached pages.
    direct: DirectWriter,
    block: bool,
    fresh_file: bool,
    /// Nothing at or after this offset is written (a smaller target).
    cut: u64,
    /// The image's bytes after the cut in the chunk the cut falls in: not
    /// written, but what --verify completes that chunk with to check it.
    tail: Vec<u8>,
    /// A used-block backup: what to do with the free space it did not copy.
    free: Option<FreeWriter>,
}

impl Sink for TargetSink {
    fn write(&mut self, c: &Verified) -> Result<()> {
        if c.offset >= self.cut {
            return Ok(());
        }
        // The chunk the cut falls in: only its part before the cut.
        let len = u64::from(c.len).min(self.cut - c.offset);
        if len < u64::from(c.len) {
            self.tail = if c.zero {
                vec![0; (u64::from(c.len) - len) as usize]
            } else {
                c.bytes()[len as usize..].to_vec()
            };
        }
        if let Some(w) = &mut self.free
            && w.touches(c.offset, len)
            && !(c.zero && self.fresh_file)
        {
            let data = (!c.zero).then(|| &c.bytes()[..len as usize]);
            return w.write(
                &self.file,
                &mut self.direct,
                c.offset,
                len,
                data,
                self.block,
            );
        }
        if c.zero {
            if self.fresh_file {
                return Ok(());
            }
            return restore_free::zero(&self.file, c.offset, len, self.block);
        }
        self.direct
            .write_at(&self.file, &c.bytes()[..len as usize], c.offset)
            .with_context(|| format!("writing at offset {}", c.offset))
    }

    fn checkpoint(&mut self) -> Result<()> {
        Ok(())
    }
}

/// The backups of `host` (None: of this machine) the peer lets us see, asking
/// page by page; a peer that never stops paging is cut off at 64 MiB.
fn list(s: &mut Session, host: Option<String>) -> Result<Listing> {
    let mut out = Listing::default();
    let (mut start, mut bytes) = (0u32, 0usize);
    loop {
        let f = s.conn.request(
            kind::LIST,
            &ListReq {
                host: host.clone(),
                start,
            },
            &[kind::LISTING],
            "listing backups",
        )?;
        bytes += f.payload.len();
        let l: Listing = msg::from_json(&f)?;
        out.backups.extend(l.backups);
        out.hidden = out.hidden.saturating_add(l.hidden);
        out.by_machine_id |= l.by_machine_id;
        out.hosts.extend(l.hosts);
        out.hidden_hosts = out.hidden_hosts.saturating_add(l.hidden_hosts);
        match l.next {
            None => return Ok(out),
            Some(n) if n > start && bytes < 64 << 20 => start = n,
            Some(_) => {
                anyhow::bail!("the peer's listing does not end; stopped after {bytes} bytes")
            }
        }
    }
}

/// The host whose backups are asked for: --host, else this machine's.
fn asked_host(args: &RestoreArgs, me: &msg::Identity) -> String {
    match &args.host {
        Some(h) => crate::store::names::sanitize(h, "host"),
        None => crate::store::host_name(me),
    }
}

/// What the peer holds besides `host`, as far as it lets us know: the hosts it
/// names, and how many others it only counts.
fn held(l: &Listing) -> String {
    let n = l.hidden_hosts;
    let others = format!(
        "{n} other host{} that it shows only when serve allows it: {}",
        if n == 1 { "" } else { "s" },
        crate::session::auth::ALLOW_HINT
    );
    let named: Vec<String> = l.hosts.iter().map(|h| Escaped(h).to_string()).collect();
    match (named.is_empty(), n) {
        (true, 0) => String::new(),
        (true, _) => format!("; it holds backups of {others}"),
        (false, 0) => format!("; it holds backups of: {}", named.join(", ")),
        (false, _) => format!(
            "; it holds backups of: {}, and of {others}",
            named.join(", ")
        ),
    }
}

/// Why a machine asking for its own backups gets none when the peer holds
/// `hidden` made under its machine-id with other hostnames.
fn same_id_refusal(hidden: u32, host: &str) -> String {
    format!(
        "the peer holds no backups of host {host}; {hidden} backup(s) there made under other hostnames carry this machine's machine-id, which it lets this machine restore only when serve allows it: {} (or name the host with --host HOST)",
        crate::session::auth::ALLOW_HINT
    )
}

/// What LIST asks for: --host; with --backup alone, this machine's hostname
/// (an explicit choice is never matched by machine-id); else None, this
/// machine's backups, which the peer may find under its machine-id.
fn list_host(args: &RestoreArgs, me: &msg::Identity) -> Option<String> {
    match (&args.host, &args.backup) {
        (Some(_), _) | (None, Some(_)) => Some(asked_host(args, me)),
        (None, None) => None,
    }
}

fn print_list(l: &Listing, host: &str) {
    if l.hidden > 0 {
        let why = if l.by_machine_id {
            same_id_refusal(l.hidden, host)
        } else {
            format!(
                "{} backup(s) of {host} are not listed: {}",
                l.hidden,
                crate::session::auth::refusal(host)
            )
        };
        eprintln!("note: {why}");
    }
    if l.backups.is_empty() {
        println!(
            "the peer holds no backups of {host} for this machine{}",
            held(l)
        );
        return;
    }
    if l.by_machine_id {
        let mut names: Vec<String> = l
            .backups
            .iter()
            .map(|b| Escaped(&b.host).to_string())
            .collect();
        names.sort();
        names.dedup();
        println!(
            "note: the peer holds no backups of {host}; these were made under hostname {} (same machine-id as this machine)",
            names.join(", ")
        );
    }
    println!("{:<20} {:<34} {:<30} disks", "HOST", "BACKUP", "STATUS");
    for b in &l.backups {
        let disks: Vec<String> = b
            .disks
            .iter()
            .map(|d| format!("{} ({})", Escaped(&d.name), human_bytes(d.size)))
            .collect();
        println!(
            "{:<20} {:<34} {:<30} {}",
            Escaped(&b.host),
            Escaped(&b.backup_id),
            b.status.word(),
            disks.join(", ")
        );
    }
}

/// The backup to restore from the peer's listing of one host's backups (--host,
/// else this machine's hostname; without --host and --backup, when that has
/// none, the peer's backups made under this machine-id with other hostnames):
/// --backup picks by id, else the newest complete one.
fn choose(l: &Listing, args: &RestoreArgs, me: &msg::Identity) -> Result<BackupSummary> {
    let host = asked_host(args, me);
    let hint = if args.host.is_some() {
        ""
    } else {
        "; for another machine's backups add --host HOST"
    };
    // Only a request naming neither got backups of other hostnames ([`list_host`]).
    let by_id = l.by_machine_id && args.host.is_none() && args.backup.is_none();
    if l.hidden > 0 && !l.backups.iter().any(|b| by_id || b.host == host) {
        return Err(refuse(if l.by_machine_id {
            same_id_refusal(l.hidden, &host)
        } else {
            crate::session::auth::refusal(&host)
        }));
    }
    let mut of_host = l
        .backups
        .iter()
        .filter(|b| by_id || b.host == host)
        .peekable();
    if let Some(id) = &args.backup {
        return of_host.find(|b| &b.backup_id == id).cloned().ok_or_else(|| {
            usage(format!(
                "the peer has no backup {id} of host {host}{hint} (`rescue restore --list` shows them)"
            ))
        });
    }
    if of_host.peek().is_none() {
        return Err(usage(format!(
            "the peer holds no backups of host {host}{}{hint}",
            held(l)
        )));
    }
    // The newest backup may be complete in a moment: do not pick an older one
    // behind the user's back meanwhile.
    if let Some(b) = of_host.peek()
        && b.status == crate::proto::msg::BackupState::Sealing
    {
        return Err(usage(format!(
            "the newest backup of host {host}, {}, is {}: the peer is completing it; try again in a moment, or choose another with --backup",
            Escaped(&b.backup_id),
            b.status.word()
        )));
    }
    of_host
        .find(|b| b.status.is_complete())
        .cloned()
        .ok_or_else(|| {
            usage(format!(
                "the peer holds no complete backup of host {host} (see --list): finish one (run the backup again) or choose another with --backup"
            ))
        })
}

fn usage(msg: String) -> anyhow::Error {
    Exit::new(exit::USAGE, msg).into()
}

/// Pairs every backed-up disk with a target: --map, else the local disk with
/// the same serial number, else ask.
/// The `--map NAME=TARGET` pairs, each naming a disk of the backup.
fn parse_maps(
    b: &BackupSummary,
    args: &RestoreArgs,
) -> Result<std::collections::BTreeMap<String, String>> {
    let mut maps = std::collections::BTreeMap::new();
    for m in &args.map {
        let Some((n, t)) = m.split_once('=') else {
            return Err(Exit::new(
                exit::USAGE,
                format!("--map {m:?} must look like NAME=TARGET"),
            )
            .into());
        };
        if !b.disks.iter().any(|d| d.name == n) {
            return Err(Exit::new(
                exit::USAGE,
                format!(
                    "--map {n}: the backup has no disk {n} (it has {})",
                    Escaped(
                        &b.disks
                            .iter()
                            .map(|d| d.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                ),
            )
            .into());
        }
        maps.insert(n.to_string(), t.to_string());
    }
    Ok(maps)
}

fn map_targets(
    root: &Root,
    b: &BackupSummary,
    args: &RestoreArgs,
) -> Result<Vec<(DiskSummary, String)>> {
    let maps = parse_maps(b, args)?;
    let local = if maps.len() < b.disks.len() {
        crate::system::disks::list(root, false).unwrap_or_default()
    } else {
        Vec::new()
    };
    let mut out = Vec::new();
    for d in &b.disks {
        if let Some(t) = maps.get(&d.name) {
            out.push((d.clone(), t.clone()));
            continue;
        }
        if !args.map.is_empty() {
            // With an explicit map, unmapped disks are left alone.
            continue;
        }
        let by_serial = d.serial.as_ref().and_then(|s| {
            local
                .iter()
                .find(|l| l.serial.as_deref() == Some(s.as_str()))
        });
        match by_serial {
            Some(l) => out.push((d.clone(), l.name.clone())),
            None => {
                if args.yes || !std::io::stdin().is_terminal() {
                    return Err(Exit::new(
                        exit::USAGE,
                        format!(
                            "no local disk has the serial of {} ({}); say where it goes with --map {}=DISK",
                            Escaped(&d.name),
                            Escaped(d.serial.as_deref().unwrap_or("no serial recorded")),
                            Escaped(&d.name)
                        ),
                    )
                    .into());
                }
                eprint!(
                    "where should {} ({}, {}) go? local disks: {}\ntarget (or empty to skip): ",
                    Escaped(&d.name),
                    Escaped(d.model.as_deref().unwrap_or("unknown model")),
                    human_bytes(d.size),
                    local
                        .iter()
                        .map(|l| l.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                let mut line = String::new();
                std::io::stdin()
                    .read_line(&mut line)
                    .context("reading the answer")?;
                let t = line.trim();
                if !t.is_empty() {
                    out.push((d.clone(), t.to_string()));
                }
            }
        }
    }
    if out.is_empty() {
        return Err(Exit::new(
            exit::USAGE,
            "nothing to restore: no disk was given a target",
        )
        .into());
    }
    refuse_shared_target(root, &out)?;
    Ok(out)
}

/// Two disks restored onto one target would leave only the last written there,
/// each reported verified: refused before anything is opened.
fn refuse_shared_target(root: &Root, pairs: &[(DiskSummary, String)]) -> Result<()> {
    let mut seen = std::collections::BTreeMap::new();
    for (d, t) in pairs {
        let path = root.disk_path(t);
        let key = std::fs::canonicalize(&path).unwrap_or(path);
        if let Some(first) = seen.insert(key, &d.name) {
            return Err(Exit::new(
                exit::USAGE,
                format!(
                    "disks {} and {} would both be restored onto {t}; give each its own target with --map",
                    Escaped(first),
                    Escaped(&d.name)
                ),
            )
            .into());
        }
    }
    Ok(())
}

pub(crate) fn run(root: &Root, args: &RestoreArgs) -> Result<u8> {
    let mut s = session::connect(root, &args.connect, Role::Restore)?;
    let want = list_host(args, &s.me);
    if args.list {
        let all = list(&mut s, want)?;
        print_list(&all, &asked_host(args, &s.me));
        s.close();
        return Ok(exit::OK);
    }
    let backups = list(&mut s, want)?;
    let chosen = choose(&backups, args, &s.me)?;
    check_listed(&chosen)?;
    let pairs = map_targets(root, &chosen, args)?;
    let (planned, plans) = open_targets(root, &pairs, args.grow)?;
    eprintln!(
        "restore backup {} of {} (taken {}) from {}:",
        Escaped(&chosen.backup_id),
        Escaped(&chosen.host),
        Escaped(&chosen.created),
        Escaped(&s.peer.identity.hostname)
    );
    let other_name = (args.host.is_none() && chosen.host != crate::store::host_name(&s.me))
        .then(|| {
            format!(
                "backup {} was made under hostname {} (same machine-id as this machine, hostname {})",
                Escaped(&chosen.backup_id),
                Escaped(&chosen.host),
                Escaped(&s.me.hostname)
            )
        });
    if let Some(n) = &other_name {
        eprintln!("  note: {n}");
    }
    print_targets(&pairs, &planned, &plans);
    let mapfiles = damaged_maps(args, &pairs, &planned)?;
    if !args.yes {
        if !std::io::stdin().is_terminal() {
            return Err(refuse(
                "not restoring without confirmation: run it on a terminal or add --yes".into(),
            ));
        }
        let from = other_name.map_or(String::new(), |n| format!("{n}; "));
        if !session::confirm(&format!(
            "{from}everything on the targets above will be overwritten. Type 'yes' to continue: "
        ))? {
            return Err(refuse("not confirmed; nothing was written".into()));
        }
    }
    // Only now are new image files created; a failure from here on removes them.
    let mut targets = open_all(planned)?;
    let started = Instant::now();
    let result = transfer(
        &mut s,
        &chosen,
        &pairs,
        &mut targets,
        &mapfiles,
        &plans,
        args,
    );
    if let Err(e) = &result
        && exit::code_of(e) == exit::PEER_GONE
    {
        // Cut off: what was written is what --resume continues from.
        targets.iter_mut().for_each(Target::keep);
    }
    let code = result?;
    s.close();
    if code == exit::OK {
        println!(
            "restore of {} completed and verified in {:.1}s",
            Escaped(&chosen.backup_id),
            started.elapsed().as_secs_f64()
        );
    } else if code == exit::UNREADABLE {
        println!(
            "restore of {} completed EXCEPT the chunks the store could not produce (zeros there, listed in the mapfile(s) named above)",
            Escaped(&chosen.backup_id)
        );
    } else {
        println!("restore FAILED verification; the target disks are not trustworthy");
    }
    Ok(code)
}

/// One line per disk and where it goes, with what a target of another size
/// changes: the plan shown before the confirmation.
fn print_targets(pairs: &[(DiskSummary, String)], planned: &[Planned], plans: &[resize::Plan]) {
    for (((d, _), t), plan) in pairs.iter().zip(planned).zip(plans) {
        eprintln!(
            "  {} ({}, serial {}, {}) -> {}",
            Escaped(&d.name),
            Escaped(d.model.as_deref().unwrap_or("unknown model")),
            Escaped(d.serial.as_deref().unwrap_or("unknown")),
            human_bytes(d.size),
            t.description()
        );
        if d.unreadable_bytes > 0 {
            eprintln!(
                "    note: {} of this disk could not be read at backup time and will be zeros",
                human_bytes(d.unreadable_bytes)
            );
        }
        for c in &plan.changes {
            eprintln!("    resize: {c}");
        }
    }
}

/// Where --skip-damaged writes each disk's mapfile: --damaged-map (PATH.NAME
/// with several disks), else TARGET.map beside an image file, else NAME.map in
/// the current directory. An existing file there is never overwritten (it may
/// be the mapfile of a ddrescue run), so that is refused before anything starts.
fn damaged_maps(
    args: &RestoreArgs,
    pairs: &[(DiskSummary, String)],
    planned: &[Planned],
) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for ((d, _), p) in pairs.iter().zip(planned) {
        let name = crate::store::names::sanitize(&d.name, "disk");
        let path = match (&args.damaged_map, p) {
            (Some(m), _) if pairs.len() == 1 => m.clone(),
            (Some(m), _) => PathBuf::from(format!("{}.{name}", m.display())),
            (None, Planned::Open(t)) if t.block => PathBuf::from(format!("{name}.map")),
            (None, Planned::Open(Target { path, .. }) | Planned::New { path, .. }) => {
                PathBuf::from(format!("{}.map", path.display()))
            }
        };
        if args.skip_damaged && std::fs::symlink_metadata(&path).is_ok() {
            return Err(refuse(format!(
                "--skip-damaged would write the mapfile {}, which exists; move it away or choose another with --damaged-map",
                path.display()
            )));
        }
        out.push(path);
    }
    Ok(out)
}

/// A backup the peer lists is only restorable as it describes it: 1 to 256
/// disks of sizes a disk can have (a lying size would become a file that big).
fn check_listed(b: &BackupSummary) -> Result<()> {
    if b.disks.is_empty() || b.disks.len() > 256 {
        bail!(
            "the peer lists backup {} with {} disks (1 to 256 are possible)",
            Escaped(&b.backup_id),
            b.disks.len()
        );
    }
    for d in &b.disks {
        if d.size == 0 || d.size > xfer::MAX_DISK_SIZE {
            bail!(
                "the peer lists disk {:?} of backup {} with an impossible size of {} bytes",
                d.name,
                Escaped(&b.backup_id),
                d.size
            );
        }
    }
    Ok(())
}

/// RESTORE_READY must describe the disks asked for, in that order, with the
/// sizes the listing gave, in a chunk size an honest server uses; and with
/// --resume the chunk size the DIGESTS came in, or the held ranges would name
/// other chunks than the ones compared.
fn check_ready(
    ready: &RestoreReady,
    pairs: &[(DiskSummary, String)],
    digest_chunk: Option<u32>,
) -> Result<()> {
    xfer::check_chunk_size(ready.chunk_size).context("the peer's RESTORE_READY")?;
    let names = |v: &mut dyn Iterator<Item = (&str, u64)>| {
        v.map(|(n, s)| format!("{n:?} ({s} bytes)"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let same = ready.disks.len() == pairs.len()
        && ready
            .disks
            .iter()
            .zip(pairs)
            .all(|(r, (d, _))| r.name == d.name && r.size == d.size);
    if !same {
        bail!(
            "the peer's RESTORE_READY describes disks {} where {} were asked for",
            names(&mut ready.disks.iter().map(|d| (d.name.as_str(), d.size))),
            names(&mut pairs.iter().map(|(d, _)| (d.name.as_str(), d.size)))
        );
    }
    if let Some(c) = digest_chunk
        && c != ready.chunk_size
    {
        bail!(
            "the peer's RESTORE_READY says chunk size {} but its DIGESTS said {c}: the chunks compared for --resume are not the ones it would skip; not restoring",
            ready.chunk_size
        );
    }
    Ok(())
}

/// The free-space map of each disk of a used-blocks backup (None for a disk copied
/// whole), each announced with what will be done with the free space on its target.
fn free_maps(
    s: &mut Session,
    chosen: &BackupSummary,
    pairs: &[(DiskSummary, String)],
    targets: &[Target],
    args: &RestoreArgs,
) -> Result<Vec<Option<FreeMap>>> {
    let mut frees = Vec::new();
    for ((d, _), t) in pairs.iter().zip(targets.iter()) {
        let f = if d.free_bytes > 0 {
            restore_free::ask(s, chosen, d)?
        } else {
            None
        };
        if let Some(m) = &f {
            restore_free::announce(&d.name, m, FreeMode::of(args), &t.spec);
        }
        frees.push(f);
    }
    Ok(frees)
}

/// The data phase: --resume's comparison, RESTORE_BEGIN, then every disk.
/// Returns the exit code; a target that was written and verified is kept.
fn transfer(
    s: &mut Session,
    chosen: &BackupSummary,
    pairs: &[(DiskSummary, String)],
    targets: &mut [Target],
    mapfiles: &[PathBuf],
    plans: &[resize::Plan],
    args: &RestoreArgs,
) -> Result<u8> {
    let mode = progress::Style::detect();
    let mut have = Vec::new();
    let mut verify_digests = Vec::new();
    let mut digest_chunk = None;
    let frees = free_maps(s, chosen, pairs, targets, args)?;
    for ((((d, _), t), plan), free) in pairs.iter().zip(targets.iter()).zip(plans).zip(&frees) {
        let mut h = if args.resume && t.created.is_none() {
            let free = free.as_ref();
            let h = held_on_target(s, chosen, d, t, mode, &mut digest_chunk, plan.cut, free)?;
            eprintln!(
                "{}: resuming, {} chunk(s) already on {} match the backup and will not be sent",
                Escaped(&d.name),
                h.held(),
                t.spec
            );
            h
        } else {
            ChunkRanges::new()
        };
        if plan.cut < d.size {
            h = beyond_cut(s, chosen, d, plan.cut, h, &mut digest_chunk)?;
        }
        have.push(h);
        let resized = plan.cut < d.size || t.size != d.size;
        verify_digests.push(if args.verify && resized {
            digests_before(s, chosen, d, plan, &mut digest_chunk)?
        } else {
            Vec::new()
        });
    }
    let f = s.conn.request(
        kind::RESTORE_BEGIN,
        &RestoreBegin {
            host: chosen.host.clone(),
            backup_id: chosen.backup_id.clone(),
            disks: pairs.iter().map(|(d, _)| d.name.clone()).collect(),
            have: have.clone(),
            accepts_damaged: true,
        },
        &[kind::RESTORE_READY],
        "starting the restore",
    )?;
    let ready: RestoreReady = msg::from_json(&f)?;
    check_ready(&ready, pairs, digest_chunk)?;
    let mut code = exit::OK;
    for (i, ((d, _), t)) in pairs.iter().zip(targets.iter_mut()).enumerate() {
        let geo = Geometry {
            size: d.size,
            chunk: ready.chunk_size,
        };
        // Ours, sorted and merged as held_on_target built them.
        let none = ChunkRanges::new();
        let held = have.get(i).unwrap_or(&none);
        let job = DiskJob {
            i: i as u32,
            d,
            t,
            geo,
            held,
            plan: &plans[i],
            digests: &verify_digests[i],
            free: frees[i].as_ref(),
        };
        match restore_disk(s, &job, args, mode, &mapfiles[i])? {
            Outcome::Verified => t.keep(),
            Outcome::Incomplete => {
                t.keep();
                if code == exit::OK {
                    code = exit::UNREADABLE;
                }
            }
            Outcome::Failed => code = exit::VERIFY_FAILED,
        }
    }
    let _ = s.conn.request(
        kind::SESSION_END,
        &SessionEnd {
            ok: code == exit::OK,
        },
        &[kind::SESSION_DONE],
        "finishing the restore",
    );
    Ok(code)
}

/// How the restore of one disk ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Verified,
    Failed,
    /// Written except chunks the store could not produce (--skip-damaged):
    /// zeros there, listed in the mapfile.
    Incomplete,
}

/// One disk of the restore: what it is and where it goes.
struct DiskJob<'a> {
    /// Its index in RESTORE_BEGIN.
    i: u32,
    d: &'a DiskSummary,
    t: &'a Target,
    geo: Geometry,
    /// Chunks the target already holds (--resume), and those after the cut.
    held: &'a ChunkRanges,
    /// Onto a target of another size: where the image is cut, what changes.
    plan: &'a resize::Plan,
    /// --verify of a target of another size: the backup's chunk digests up to the cut.
    digests: &'a [Option<[u8; 32]>],
    /// A used-block backup's free map: bytes not copied, not compared.
    free: Option<&'a FreeMap>,
}

/// Receives one disk onto its target, checks it and answers DISK_DONE.
fn restore_disk(
    s: &mut Session,
    job: &DiskJob,
    args: &RestoreArgs,
    mode: progress::Style,
    mapfile: &Path,
) -> Result<Outcome> {
    let DiskJob { i, d, t, .. } = *job;
    let t0 = Instant::now();
    let Written {
        r,
        whole,
        done,
        tail,
    } = receive_onto(s, job, args, mode)?;
    let resized = job.plan.cut < d.size || !done.patches.is_empty();
    let want = d.sha256.clone().unwrap_or_default();
    let got = whole.map(|w| hex(&w));
    let mut ok = got.as_deref().is_none_or(|g| g == want);
    let mut message = String::new();
    if !r.lost.is_empty() {
        ok = false;
        message = skipped_damaged(d, t, &r.lost, mapfile)?;
    } else if !ok {
        message = format!(
            "image digest {} does not match the backup's {want}",
            got.unwrap_or_default()
        );
    }
    if ok && args.verify && resized {
        eprintln!("{}: reading {} back to verify", Escaped(&d.name), t.spec);
        let bar = Bar::new(&format!("{} verify", Escaped(&d.name)), job.plan.cut, mode);
        if let Some(why) = verify_resized(job, &done, &tail, &bar)? {
            ok = false;
            message = why;
        }
    } else if ok && args.verify {
        eprintln!("{}: reading {} back to verify", Escaped(&d.name), t.spec);
        let h = read_back(
            &t.file,
            d.size,
            &Bar::new(&format!("{} verify", Escaped(&d.name)), d.size, mode),
            job.free,
        )?;
        if h != want {
            ok = false;
            message = format!("read back {h}, the backup's digest is {want}");
        }
    }
    s.conn.reply(
        &r.end,
        Header::new(kind::DISK_DONE, i, 0),
        msg::to_json(&DiskDone {
            disk: i,
            ok,
            sha256: want.clone(),
            message: message.clone(),
            sha256_pending: false,
            unchanged_bytes: 0,
            base_failed: 0,
        }),
    )?;
    if !r.lost.is_empty() {
        return Ok(Outcome::Incomplete);
    }
    if !ok {
        eprintln!(
            "{}: VERIFICATION FAILED: {}",
            Escaped(&d.name),
            Escaped(&message)
        );
        return Ok(Outcome::Failed);
    }
    eprintln!(
        "{}: written to {}{} and verified in {:.1}s{}, sha256 {}",
        Escaped(&d.name),
        t.spec,
        resized_words(d, t, &done),
        t0.elapsed().as_secs_f64(),
        if args.verify { " (read back)" } else { "" },
        Escaped(&want)
    );
    if let Some(g) = done.grown {
        eprintln!(
            "  {}: {}",
            Escaped(&d.name),
            resize::grow_hint(&t.file, &t.path, t.block, g)
        );
    }
    if r.resent > 0 {
        eprintln!(
            "  {} chunk(s) arrived damaged and were sent again",
            r.resent
        );
    }
    Ok(Outcome::Verified)
}

/// What a restore onto a target of another size did, for the disk's line:
/// " (resized from 8 MiB to 16 MiB: GPT backup header moved ...)".
fn resized_words(d: &DiskSummary, t: &Target, done: &resize::Done) -> String {
    if done.said.is_empty() {
        return String::new();
    }
    if d.size == t.size {
        return format!(" ({})", done.said.join("; "));
    }
    format!(
        " (resized from {} to {}: {})",
        human_bytes(d.size),
        human_bytes(t.size),
        done.said.join("; ")
    )
}

/// The chunks --verify of a target of another size compares: those before
/// the cut, the one it falls in too (completed with the image's bytes after
/// the cut, which the sink keeps).
fn verified_chunks(plan: &resize::Plan, size: u64, chunk: u32) -> u64 {
    let geo = Geometry { size, chunk };
    if plan.cut >= size {
        geo.count()
    } else {
        plan.cut.div_ceil(u64::from(chunk))
    }
}

/// The backup's digests of its first `stop` chunks, asked for before the data
/// phase (during it the server answers nothing else): what --verify of a
/// target of another size compares with.
fn digests_before(
    s: &mut Session,
    b: &BackupSummary,
    d: &DiskSummary,
    plan: &resize::Plan,
    digest_chunk: &mut Option<u32>,
) -> Result<Vec<Option<[u8; 32]>>> {
    let mut out = Vec::new();
    loop {
        let first = out.len() as u64;
        let f = ask_digests(s, b, d, first, MAX_DIGESTS)?;
        let digests = Digests::decode(&f.payload)?;
        let chunk = digests.chunk_size;
        xfer::check_chunk_size(chunk).context("the peer's DIGESTS")?;
        if digest_chunk.is_some_and(|c| c != chunk) || f.header.offset != first {
            bail!("the peer's DIGESTS changed chunk size or answered for other chunks");
        }
        *digest_chunk = Some(chunk);
        let stop = verified_chunks(plan, d.size, chunk);
        let n = u64::from(digests.len()).min(stop.saturating_sub(first));
        out.extend((0..n as usize).map(|k| digests.recorded(k).copied()));
        if n == 0 || out.len() as u64 >= stop {
            return Ok(out);
        }
    }
}

/// --verify of a target of another size: every chunk up to the cut matches
/// the backup's digest (where the new tables were written, with the bytes
/// they replaced; the chunk the cut falls in completed with `tail`), then the
/// tables read back as written and the GPT is whole.
fn verify_resized(
    job: &DiskJob,
    done: &resize::Done,
    tail: &[u8],
    bar: &Bar,
) -> Result<Option<String>> {
    let DiskJob { t, geo, plan, .. } = *job;
    let expect = resize::Expected {
        digests: job.digests,
        chunk: geo.chunk,
        cut: plan.cut,
        tail,
        free: job.free,
    };
    let bad = resize::check_image(&t.file, done, &expect, |n| bar.inc(n))
        .with_context(|| format!("reading {} back", t.spec))?;
    bar.finish();
    if let Some(off) = bad {
        return Ok(Some(format!(
            "read back, the chunk at offset {off} does not match the backup's digest"
        )));
    }
    resize::check_tables(&t.file, done, t.size, plan.sector)
}

/// The data phase of one disk: chunks verified and written, then the target
/// synced. A chunk the store cannot produce intact stops it (exit 4, naming the
/// chunk and its partition) unless --skip-damaged. Returns what arrived and
/// the whole-image digest when every byte came in order.
fn receive_onto(
    s: &mut Session,
    job: &DiskJob,
    args: &RestoreArgs,
    mode: progress::Style,
) -> Result<Written> {
    let DiskJob {
        i, d, t, geo, held, ..
    } = *job;
    let bar = Bar::new(&Escaped(&d.name).to_string(), d.size, mode);
    let sink = TargetSink {
        file: t
            .file
            .try_clone()
            .context("duplicating the target descriptor")?,
        direct: DirectWriter::open(&t.path, &t.file, geo.chunk as usize),
        block: t.block,
        fresh_file: t.created.is_some(),
        cut: job.plan.cut,
        tail: Vec::new(),
        free: job.free.map(|m| FreeWriter {
            map: m.clone(),
            mode: FreeMode::of(args),
            discard_failed: false,
            spec: t.spec.clone(),
        }),
    };
    let mut pipe = SinkPipeline::start(sink, d.size);
    // The server may leave out of a chunk only what the backup's map calls free.
    if let Some(m) = job.free {
        pipe.set_free_map(m.clone());
    }
    let policy = if args.skip_damaged {
        OnDamaged::Skip
    } else {
        OnDamaged::Stop
    };
    let received = xfer::receive_disk(&mut s.conn, i, geo, held, &pipe, &bar, policy);
    bar.finish();
    let finished = pipe.finish();
    t.file
        .sync_all()
        .with_context(|| format!("syncing {}", t.spec))?;
    let r = match received {
        Err(e) => match e.downcast_ref::<StoreDamaged>() {
            Some(sd) => {
                let m = format!(
                    "disk {}: the backup's chunk at offset {} ({} bytes, {}) is damaged in the store (it no longer matches the digest recorded at backup time); {} holds the backup only up to that offset. Add --skip-damaged to write everything else (zeros there) and a mapfile of what is missing, or restore another backup",
                    Escaped(&d.name),
                    sd.offset,
                    sd.len,
                    place(&t.path, sd.offset, u64::from(sd.len)),
                    t.spec
                );
                s.conn.send_error("refused", &m);
                return Err(Exit::new(exit::VERIFY_FAILED, m).into());
            }
            None => return Err(e),
        },
        Ok(r) => r,
    };
    let (sink, whole) = finished?;
    let whole = whole.wait();
    let done = resize::finish(&t.file, job.plan, d.size, t.size, args.grow)
        .with_context(|| format!("making the partition table of {} fit its size", t.spec))?;
    if t.block {
        match blkdev::reread_partitions(&t.file) {
            Err(e) => eprintln!(
                "note: the kernel could not re-read the partition table of {} ({e:#}); reboot or run partprobe",
                t.spec
            ),
            Ok(()) => report_kernel_view(t),
        }
    }
    Ok(Written {
        r,
        whole,
        done,
        tail: sink.tail,
    })
}

/// Says whether the kernel, after BLKRRPART, sees the partitions the target's table now
/// holds (number, start and size), so the technician knows the disk is ready to use,
/// or what differs and what to do.
fn report_kernel_view(t: &Target) {
    let Some(dir) = &t.sysfs else { return };
    let sector = blkdev::logical_sector(&t.file);
    let written: Vec<(u32, u64, u64)> = match partitions::read_table_file(&t.file, sector) {
        Ok(Some(table)) => table
            .entries
            .iter()
            .map(|e| (e.number, e.start_bytes / 512, e.size_bytes / 512))
            .collect(),
        Ok(None) => Vec::new(),
        Err(e) => {
            eprintln!(
                "note: reading back the partition table of {}: {e:#}",
                t.spec
            );
            return;
        }
    };
    let seen = disks::kernel_partitions(dir);
    // An MBR extended partition's own entry is 1-2 sectors in sysfs: compare what
    // the table lists, and that nothing the kernel has is missing from it.
    let missing: Vec<String> = written
        .iter()
        .filter(|w| !seen.contains(w) && !seen.iter().any(|s| s.0 == w.0 && s.2 <= 2))
        .map(|w| format!("partition {} (LBA {}, {} sectors)", w.0, w.1, w.2))
        .collect();
    let stale: Vec<String> = seen
        .iter()
        .filter(|s| !written.iter().any(|w| w.0 == s.0))
        .map(|s| format!("partition {}", s.0))
        .collect();
    if missing.is_empty() && stale.is_empty() {
        let n: Vec<String> = written.iter().map(|w| w.0.to_string()).collect();
        println!(
            "{}: the kernel sees the partitions as written ({})",
            t.spec,
            if n.is_empty() {
                "none".to_string()
            } else {
                n.join(", ")
            }
        );
    } else {
        eprintln!(
            "warning: the kernel's view of {} differs from the table written (not seen: {}; not in the table: {}); run partprobe {} or reboot before using it",
            t.spec,
            if missing.is_empty() {
                "-".to_string()
            } else {
                missing.join(", ")
            },
            if stale.is_empty() {
                "-".to_string()
            } else {
                stale.join(", ")
            },
            t.spec
        );
    }
}

/// What [`receive_onto`] got onto a target.
struct Written {
    r: Received,
    /// The whole-image digest, when every byte came in order.
    whole: Option<[u8; 32]>,
    /// What the new tables changed (a target of another size).
    done: resize::Done,
    /// The image's bytes after the cut in the chunk the cut falls in.
    tail: Vec<u8>,
}

/// Writes the ddrescue mapfile of the chunks --skip-damaged left as zeros
/// (`-`, everything else `+`), says which they are and where they lie, and
/// returns the DISK_DONE message.
fn skipped_damaged(
    d: &DiskSummary,
    t: &Target,
    lost: &[(u64, u32)],
    mapfile: &Path,
) -> Result<String> {
    let mut map = Map::new(d.size);
    map.set(0, d.size, BlockStatus::Finished);
    for &(off, len) in lost {
        map.set(off, u64::from(len), BlockStatus::Bad);
    }
    let header = format!(
        "Mapfile. Created by usb4rescue {}\nRestore of disk {} onto {}: '-' = damaged in the store, written as zeros",
        env!("CARGO_PKG_VERSION"),
        Escaped(&d.name),
        t.spec
    );
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(mapfile)
        .and_then(|mut f| std::io::Write::write_all(&mut f, map.render(&header).as_bytes()))
        .with_context(|| format!("writing the mapfile {}", mapfile.display()))?;
    let bytes: u64 = lost.iter().map(|&(_, l)| u64::from(l)).sum();
    eprintln!(
        "{}: written to {} EXCEPT {} chunk(s) ({}) the store could not produce intact, left as zeros; mapfile of what is missing: {}",
        Escaped(&d.name),
        t.spec,
        lost.len(),
        human_bytes(bytes),
        mapfile.display()
    );
    for &(off, len) in lost {
        eprintln!(
            "  offset {off} ({len} bytes): {}",
            place(&t.path, off, u64::from(len))
        );
    }
    Ok(format!(
        "{} chunk(s) damaged in the store were written as zeros",
        lost.len()
    ))
}

/// Where a byte range lies on the restored disk, from the partition table now
/// on it: "in partition 2 (Linux filesystem)".
fn place(path: &Path, off: u64, len: u64) -> String {
    let table = [512, 4096].into_iter().find_map(|sector| {
        partitions::read_table(path, sector)
            .ok()
            .flatten()
            .filter(|t| !t.entries.is_empty())
    });
    let Some(table) = table else {
        return "no partition table could be read there".into();
    };
    table.locate(off, off.saturating_add(len))
}

/// Which chunks the target already holds (restore --resume): reads it and
/// compares each chunk's SHA-256 with the one the backup recorded, fetched from
/// the peer in batches. Only chunks wholly before `cut` (a target of another
/// size) are compared.
#[allow(clippy::too_many_arguments)]
fn held_on_target(
    s: &mut Session,
    b: &BackupSummary,
    d: &DiskSummary,
    t: &Target,
    mode: progress::Style,
    digest_chunk: &mut Option<u32>,
    cut: u64,
    free: Option<&FreeMap>,
) -> Result<ChunkRanges> {
    let bar = Bar::new(&format!("{} compare", Escaped(&d.name)), d.size, mode);
    let mut zeros = ZeroDigests::default();
    // Free space the backup did not copy is compared as the zeros it stores.
    let mut masker = Masker::new(free.cloned());
    let mut ranges = ChunkRanges::new();
    let mut first = 0u64;
    loop {
        let f = ask_digests(s, b, d, first, MAX_DIGESTS)?;
        let digests = Digests::decode(&f.payload)?;
        let (chunk, n) = (digests.chunk_size, digests.len());
        xfer::check_chunk_size(chunk).context("the peer's DIGESTS")?;
        match *digest_chunk {
            Some(c) if c != chunk => {
                bail!("the peer's DIGESTS changed chunk size from {c} to {chunk} bytes")
            }
            _ => *digest_chunk = Some(chunk),
        }
        let geo = Geometry {
            size: d.size,
            chunk,
        };
        let stop = if cut >= d.size {
            geo.count()
        } else {
            cut / u64::from(chunk)
        };
        let left = geo.count().saturating_sub(first);
        if n > MAX_DIGESTS || u64::from(n) > left || f.header.offset != first {
            bail!(
                "the peer sent more digests than asked for, or for other chunks ({n} at chunk {} where {} from chunk {first} were asked for)",
                f.header.offset,
                left.min(u64::from(MAX_DIGESTS))
            );
        }
        if n == 0 || first >= stop {
            break;
        }
        // The target's chunks covered by this batch, read ahead while hashing.
        let end = (first + u64::from(n)).min(stop);
        let from = geo.offset(first);
        let bytes = geo.start_of(end) - from;
        let mut i = first;
        readahead::for_each_piece(
            &t.file,
            from,
            from + bytes,
            chunk as usize,
            |pos, b| -> Result<()> {
                let got = masker.digest(pos, b, &mut zeros);
                if digests.recorded((i - first) as usize) == Some(&got) {
                    ranges.push(i);
                }
                bar.inc(b.len() as u64);
                i += 1;
                Ok(())
            },
        )
        .with_context(|| format!("reading {}", t.spec))?;
        first += u64::from(n);
        if first >= stop {
            break;
        }
    }
    bar.finish();
    Ok(ranges)
}

/// DIGESTS_REQ for `count` chunk digests of disk `d` from chunk `first`.
fn ask_digests(
    s: &mut Session,
    b: &BackupSummary,
    d: &DiskSummary,
    first: u64,
    count: u32,
) -> Result<crate::proto::frame::Frame> {
    s.conn.request(
        kind::DIGESTS_REQ,
        &DigestsReq {
            host: b.host.clone(),
            backup_id: b.backup_id.clone(),
            disk: d.name.clone(),
            first,
            count,
        },
        &[kind::DIGESTS],
        "asking for the backup's chunk digests",
    )
}

/// `held` and every chunk after the cut, which the server then does not send
/// (asking it for the chunk size when --resume did not).
fn beyond_cut(
    s: &mut Session,
    b: &BackupSummary,
    d: &DiskSummary,
    cut: u64,
    held: ChunkRanges,
    digest_chunk: &mut Option<u32>,
) -> Result<ChunkRanges> {
    let chunk = match *digest_chunk {
        Some(c) => c,
        None => {
            let f = ask_digests(s, b, d, 0, 1)?;
            let c = Digests::decode(&f.payload)?.chunk_size;
            xfer::check_chunk_size(c).context("the peer's DIGESTS")?;
            *digest_chunk = Some(c);
            c
        }
    };
    let geo = Geometry {
        size: d.size,
        chunk,
    };
    let mut v = held.to_vec();
    v.push((cut.div_ceil(u64::from(chunk)), geo.count()));
    Ok(ChunkRanges::from(v))
}

/// Reads the first `size` bytes of the target and returns their SHA-256.
fn read_back(f: &File, size: u64, bar: &Bar, free: Option<&FreeMap>) -> Result<String> {
    let mut h = Sha256::new();
    // Free space a used-block backup did not copy counts as zeros.
    let mut masker = Masker::new(free.cloned());
    readahead::for_each_piece(f, 0, size, 4 << 20, |pos, b| -> Result<()> {
        h.update(masker.view(pos, b));
        bar.inc(b.len() as u64);
        Ok(())
    })
    .context("reading the target back")?;
    bar.finish();
    Ok(hex(&h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_open_removes_the_files_created_before_it() {
        let d = tempfile::tempdir().unwrap();
        let new = |path: PathBuf| Planned::New {
            spec: path.display().to_string(),
            path,
            size: 1 << 20,
        };
        let first = d.path().join("first.img");
        // The second cannot be created: its directory is not there.
        let second = d.path().join("gone").join("second.img");
        let err = open_all(vec![new(first.clone()), new(second)])
            .err()
            .unwrap();
        assert!(format!("{err:#}").contains("creating"), "{err:#}");
        assert!(!first.exists(), "the first target file was left behind");
    }
}
