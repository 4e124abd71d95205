//! `rescue backup`: send this machine's disks to the peer running `rescue serve`.

use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::Root;
use crate::cmd::cli::BackupArgs;
use crate::exit::{self, Exit};
use crate::proto::digests::Digests;
use crate::proto::msg::{
    self, BackupBegin, BackupReady, DigestsReq, DiskEnd, DiskInfo, FreeMap, MAX_DIGESTS, Role,
    SessionDone, SessionEnd, kind,
};
use crate::session::auth;
use crate::session::{self, Session};
use crate::system::source::{self, Source};
use crate::util::{Escaped, human_bytes};
use crate::xfer::progress::{self, Bar};
use crate::xfer::{self, Geometry};

/// What one disk's transfer amounted to.
#[derive(Debug, Clone)]
pub(crate) struct DiskReport {
    pub(crate) name: String,
    pub(crate) stats: xfer::SendStats,
    pub(crate) sha256: String,
    pub(crate) ok: bool,
    pub(crate) message: String,
    pub(crate) seconds: f64,
    /// Every chunk is verified and durable on the peer, which computes the
    /// image SHA-256 on its own.
    pub(crate) sha256_pending: bool,
    /// Used-block mode: what was recognised on the disk and left out.
    pub(crate) free: Option<FreeMap>,
    /// The base backup's id when this disk was compared with one.
    pub(crate) base: Option<String>,
    /// Chunks the peer's base could not provide after all (sent instead).
    pub(crate) base_failed: u64,
}

/// The disks to send: those named, or every eligible one.
fn sources(root: &Root, args: &BackupArgs) -> Result<Vec<Source>> {
    let specs: Vec<String> = if args.disks.is_empty() {
        let all = crate::system::disks::list(root, false).context("listing disks")?;
        if all.is_empty() {
            bail!("no disks found to back up (`rescue disks --all` shows every block device)");
        }
        let mut names = Vec::new();
        for d in all {
            // The disk the running system lives on (a rescue USB stick, or this
            // machine's own system disk while it runs) changes under the copy:
            // only when named explicitly.
            let holds_root = d.mounts.iter().any(|m| m == "/")
                || d.partitions
                    .iter()
                    .any(|p| p.mounts.iter().any(|m| m == "/"))
                || d.holders.iter().any(|h| h.mounts.iter().any(|m| m == "/"))
                || d.partitions
                    .iter()
                    .any(|p| p.holders.iter().any(|h| h.mounts.iter().any(|m| m == "/")));
            if holds_root {
                eprintln!(
                    "skipping {}: it holds the running system (mounted on /); name it to back it up anyway",
                    d.name
                );
                continue;
            }
            names.push(d.name);
        }
        if names.is_empty() {
            bail!("no disk to back up besides the running system's; name the disks to send");
        }
        names
    } else {
        args.disks.clone()
    };
    let mut out = Vec::new();
    for s in &specs {
        let src = source::open(root, s)?;
        if let Some(b) = &src.busy {
            eprintln!(
                "warning: {b}; the copy of {} may be inconsistent (unmount it or back up from the rescue system)",
                src.name
            );
        }
        out.push(src);
    }
    Ok(out)
}

pub(crate) fn run(root: &Root, args: &BackupArgs) -> Result<u8> {
    let srcs = sources(root, args)?;
    run_with(root, args, srcs)
}

/// Backs up already opened sources (tests use this to inject read errors).
pub fn run_with(root: &Root, args: &BackupArgs, srcs: Vec<Source>) -> Result<u8> {
    if !(64..=8192).contains(&args.chunk_kib) || !args.chunk_kib.is_power_of_two() {
        return Err(Exit::new(
            exit::USAGE,
            "--chunk-kib must be a power of two from 64 to 8192",
        )
        .into());
    }
    let chunk = args.chunk_kib * 1024;
    for s in &srcs {
        eprintln!(
            "disk {}: {} ({}){}",
            s.name,
            s.path.display(),
            human_bytes(s.size),
            s.model
                .as_deref()
                .map(|m| format!(", {m}"))
                .unwrap_or_default()
        );
    }
    let free = plan_free(args, &srcs);
    let mut begin = backup_begin(args, &srcs, chunk, &free);
    // The peer refuses what does not pass these checks: say so before connecting.
    if let Err(why) = msg::Bounded::check(&begin) {
        return Err(Exit::new(exit::USAGE, format!("cannot send this backup: {why}")).into());
    }
    let mut sess = session::connect(root, &args.connect, Role::Backup)?;
    // An interrupted backup continues only for the machine holding its key.
    if !args.fresh {
        begin.resume_key = auth::load_key(&sess.peer.identity, &begin);
    }
    let ready = start(&mut sess, &begin)?;
    let free = stored_decision(&ready, &srcs, free)?;
    let mode = progress::Style::detect();
    let started = Instant::now();
    // Every base disk's digests before the first data phase: the peer answers
    // DIGESTS_REQ only until then (asked between disks, it never answered).
    let mut bases = Vec::new();
    for (i, src) in srcs.iter().enumerate() {
        let geo = Geometry {
            size: src.size,
            chunk,
        };
        bases.push(base_digests(&mut sess, &ready, i, geo)?);
    }
    let mut reports = Vec::new();
    for (i, src) in srcs.iter().enumerate() {
        let r = send_one(&mut sess, &ready, i, src, chunk, mode, &free[i], &bases[i])?;
        print_disk(&r);
        reports.push(r);
    }
    let f = sess.conn.request(
        kind::SESSION_END,
        &SessionEnd {
            ok: reports.iter().all(|r| r.ok),
        },
        &[kind::SESSION_DONE],
        "finishing the backup",
    )?;
    let done: SessionDone = msg::from_json(&f)?;
    if done.ok {
        auth::forget_key(&sess.peer.identity, &begin);
    }
    let corrupt = sess
        .conn
        .stats
        .corrupt_frames
        .load(std::sync::atomic::Ordering::Relaxed);
    sess.close();
    let code = summary(
        &reports,
        started.elapsed().as_secs_f64(),
        corrupt,
        &done.message,
    );
    if done.ok && done.sha256_pending {
        println!(
            "the source can be released: every chunk is verified and durable on the peer; the peer computes the image SHA-256 on its own and then marks the backup complete (its log says so; `rescue verify` there checks it)"
        );
    }
    Ok(code)
}

/// A resumed used-block backup goes on with the free maps the peer stored (what
/// the chunks it holds were read by), narrowed to what this probe also calls
/// free; a map that leaves out anything this probe finds used is refused.
fn stored_decision(
    ready: &BackupReady,
    srcs: &[Source],
    ours: Vec<Option<FreeMap>>,
) -> Result<Vec<Option<FreeMap>>> {
    if ready.free.is_empty() {
        return Ok(ours);
    }
    if ready.free.len() != ours.len() {
        bail!(
            "the peer gave free maps for {} disks, we asked for {}",
            ready.free.len(),
            ours.len()
        );
    }
    let mut out = Vec::new();
    for ((theirs, ours), s) in ready.free.iter().zip(ours).zip(srcs) {
        let kept = match (theirs, &ours) {
            (Some(t), Some(o)) if t.narrowed_by(o) == *t && t.check_for(s.size).is_ok() => {
                if t != o {
                    println!(
                        "{}: resuming with the decision it started with: {} left out as free (this probe alone would leave out {})",
                        s.name,
                        human_bytes(t.free_bytes()),
                        human_bytes(o.free_bytes())
                    );
                }
                Some(t.clone())
            }
            (None, None) => None,
            _ => bail!(
                "the peer's stored free map for {} leaves out bytes this probe finds used, or does not fit the disk: start a new backup with --fresh",
                s.name
            ),
        };
        out.push(kept);
    }
    Ok(out)
}

/// Used-block mode (unless --all-blocks): each disk's partitions probed before
/// anything is sent, and the user told what was recognised.
fn plan_free(args: &BackupArgs, srcs: &[Source]) -> Vec<Option<FreeMap>> {
    srcs.iter()
        .map(|s| {
            if args.all_blocks {
                eprintln!("{}: every block is copied (--all-blocks)", s.name);
                return None;
            }
            let map = crate::system::used::plan(&s.reader, &s.name, s.sector);
            for p in &map.parts {
                eprintln!("  {}", crate::system::used::describe(p));
            }
            Some(map)
        })
        .collect()
}

/// BACKUP_BEGIN for these sources in chunks of `chunk` bytes.
fn backup_begin(
    args: &BackupArgs,
    srcs: &[Source],
    chunk: u32,
    free: &[Option<FreeMap>],
) -> BackupBegin {
    BackupBegin {
        label: args.label.clone(),
        chunk_size: chunk,
        fresh: args.fresh,
        disks: srcs
            .iter()
            .zip(free)
            .map(|(s, free)| {
                DiskInfo {
                    name: s.name.clone(),
                    source_path: s.path.display().to_string(),
                    size: s.size,
                    logical_sector_size: s.sector,
                    model: s.model.clone(),
                    serial: s.serial.clone(),
                    details: s.details.clone(),
                    free: free.clone(),
                }
                .cleaned()
            })
            .collect(),
        resume_key: None,
        full: args.full,
    }
}

/// Sends BACKUP_BEGIN; the peer's BACKUP_READY must answer for every disk. The
/// resume key it gives is kept for a later resume.
fn start(sess: &mut Session, begin: &BackupBegin) -> Result<BackupReady> {
    let f = sess.conn.request(
        kind::BACKUP_BEGIN,
        begin,
        &[kind::BACKUP_READY],
        "starting the backup",
    )?;
    let ready: BackupReady = msg::from_json(&f)?;
    if ready.have.len() != begin.disks.len() {
        bail!(
            "the peer answered for {} disks, we asked for {}",
            ready.have.len(),
            begin.disks.len()
        );
    }
    if let Some(k) = &ready.resume_key {
        auth::save_key(&sess.peer.identity, begin, k);
    }
    if let Some(base) = &ready.base
        && base.disks.len() != begin.disks.len()
    {
        bail!(
            "the peer named a base for {} disks, we asked for {}",
            base.disks.len(),
            begin.disks.len()
        );
    }
    eprintln!(
        "backup {} on {}: {}",
        Escaped(&ready.backup_id),
        Escaped(&sess.peer.identity.hostname),
        Escaped(&ready.location)
    );
    Ok(ready)
}

/// Sends disk `i` (what the peer does not hold of it; a chunk whose digest is
/// `base`'s is marked unchanged) and its DISK_END; returns what the peer's
/// DISK_DONE says of it.
#[allow(clippy::too_many_arguments)]
fn send_one(
    sess: &mut Session,
    ready: &BackupReady,
    i: usize,
    src: &Source,
    chunk: u32,
    mode: progress::Style,
    free: &Option<FreeMap>,
    base: &[Option<[u8; 32]>],
) -> Result<DiskReport> {
    let geo = Geometry {
        size: src.size,
        chunk,
    };
    // What the peer holds already, within the disk (it says so).
    let have = &ready.have[i].clipped(geo.count());
    if ready.resumed {
        let held = have.held();
        eprintln!(
            "{}: resuming, {} of {} chunks already verified on the peer",
            src.name,
            held,
            geo.count()
        );
    }
    let bar = Bar::new(&src.name, src.size, mode);
    let t = Instant::now();
    let reader = &src.reader;
    let mut stats = xfer::send_disk(
        &mut sess.conn,
        i as u32,
        geo,
        have,
        |off, len| match free {
            // Free space is neither read nor sent: zeros in the image.
            Some(m) => reader.read_used(off, len, m.within(off, len)),
            None => reader.read_chunk(off, len),
        },
        // The digest covers the chunk as stored (free space as zeros), as the
        // base journal's does: a chunk is unchanged whatever either free map says.
        |off, raw, known| {
            let c = xfer::digest_fresh(off, raw, known)?;
            Ok(xfer::against_base(c, chunk, base))
        },
        &bar,
    )?;
    stats.hole_bytes = reader.hole_bytes();
    stats.bytes_read = stats.bytes_read.saturating_sub(stats.hole_bytes);
    bar.finish();
    let done = xfer::finish_disk(
        &mut sess.conn,
        i as u32,
        &DiskEnd {
            disk: i as u32,
            bytes_read: stats.bytes_read,
            unreadable_bytes: stats.unreadable_bytes,
        },
    )?;
    Ok(DiskReport {
        name: src.name.clone(),
        stats,
        sha256: done.sha256.clone(),
        ok: done.ok,
        message: done.message.clone(),
        seconds: t.elapsed().as_secs_f64(),
        sha256_pending: done.sha256_pending,
        free: free.clone(),
        base: ready
            .base
            .as_ref()
            .filter(|b| b.disks.get(i).is_some_and(|d| d.is_some()))
            .map(|b| b.backup_id.clone()),
        base_failed: done.base_failed,
    })
}

/// The digests the base backup's journal holds for disk `i`'s chunks (by
/// index, `None` where it holds nothing), asked for before the data phase;
/// empty without a base for that disk.
fn base_digests(
    sess: &mut Session,
    ready: &BackupReady,
    i: usize,
    geo: Geometry,
) -> Result<Vec<Option<[u8; 32]>>> {
    let Some((base, Some(disk))) = ready.base.as_ref().map(|b| (b, &b.disks[i])) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    while (out.len() as u64) < geo.count() {
        let first = out.len() as u64;
        let q = DigestsReq {
            host: base.host.clone(),
            backup_id: base.backup_id.clone(),
            disk: disk.clone(),
            first,
            count: (geo.count() - first).min(u64::from(MAX_DIGESTS)) as u32,
        };
        let mut f = sess.conn.request(
            kind::DIGESTS_REQ,
            &q,
            &[kind::DIGESTS],
            "asking for the base backup's digests",
        )?;
        // A repeated request's second answer may still be queued: skip it.
        while f.header.offset != first {
            f = sess.conn.wait_control(
                &[kind::DIGESTS],
                "asking for the base's digests",
                |_| Ok(()),
            )?;
        }
        let d = Digests::decode(&f.payload)?;
        if d.chunk_size != geo.chunk || d.is_empty() || d.len() > q.count {
            bail!("the peer's DIGESTS for the base do not fit this backup's chunks");
        }
        out.extend((0..d.len() as usize).map(|k| d.recorded(k).copied()));
    }
    eprintln!(
        "comparing with disk {} of backup {} on the peer: only changed chunks are sent",
        Escaped(disk),
        Escaped(&base.backup_id)
    );
    Ok(out)
}

fn print_disk(r: &DiskReport) {
    if r.ok && r.sha256_pending {
        eprintln!(
            "{}: every chunk verified and on the peer's disk (the peer computes the image SHA-256 on its own)",
            r.name
        );
    } else if r.ok {
        eprintln!(
            "{}: verified by the peer, sha256 {}",
            r.name,
            Escaped(&r.sha256)
        );
    } else {
        eprintln!("{}: NOT verified: {}", r.name, Escaped(&r.message));
    }
}

/// Prints the final summary and picks the exit code.
pub(crate) fn summary(reports: &[DiskReport], secs: f64, corrupt: u64, peer_msg: &str) -> u8 {
    let mut code = exit::OK;
    println!("backup summary:");
    for r in reports {
        let s = &r.stats;
        let unreadable_sectors = s.unreadable_bytes / 512;
        println!(
            "  {}: {} read, {} sent, {} skipped as zero, {} already on the peer, {} unreadable, {:.1}s, {}/s, sha256 {}",
            r.name,
            human_bytes(s.bytes_read),
            human_bytes(s.bytes_sent),
            human_bytes(s.zero_bytes),
            human_bytes(s.skipped_bytes),
            human_bytes(s.unreadable_bytes),
            r.seconds,
            human_bytes((s.bytes_read as f64 / r.seconds.max(0.001)) as u64),
            Escaped(match (r.sha256.is_empty(), r.sha256_pending) {
                (_, true) => "pending on the peer",
                (true, false) => "-",
                (false, false) => &r.sha256,
            })
        );
        for p in r.free.iter().flat_map(|m| &m.parts) {
            println!("    {}", crate::system::used::describe(p));
        }
        if s.free_bytes > 0 {
            println!(
                "    {} of free space neither read nor sent (zeros in the image)",
                human_bytes(s.free_bytes)
            );
        }
        if s.hole_bytes > 0 {
            println!(
                "    {} of holes in the image file not read (zeros in the image)",
                human_bytes(s.hole_bytes)
            );
        }
        if s.resent_chunks > 0 {
            println!(
                "    {} chunk(s) re-sent after damage in transit",
                s.resent_chunks
            );
        }
        if let Some(base) = &r.base {
            println!(
                "    incremental against backup {}: {} unchanged (not sent), {} sent",
                Escaped(base),
                human_bytes(s.unchanged_bytes),
                human_bytes(s.bytes_sent)
            );
        }
        if r.base_failed > 0 || s.base_failed > 0 {
            println!(
                "    {} chunk(s) of the base failed their check on the peer: sent in full",
                r.base_failed.max(s.base_failed)
            );
        }
        if !r.ok {
            code = exit::VERIFY_FAILED;
        } else if unreadable_sectors > 0 && code == exit::OK {
            code = exit::UNREADABLE;
        }
    }
    if corrupt > 0 {
        println!("  {corrupt} damaged message(s) were detected and repeated");
    }
    let unreadable: u64 = reports.iter().map(|r| r.stats.unreadable_bytes / 512).sum();
    let verified = if reports.iter().any(|r| r.sha256_pending) {
        "every chunk verified and durable on the peer"
    } else {
        "every disk verified"
    };
    match code {
        exit::OK => println!(
            "completed in {secs:.1}s: {verified}{}",
            peer_msg_suffix(peer_msg)
        ),
        exit::UNREADABLE => println!(
            "completed with {unreadable} unreadable sectors in {secs:.1}s (filled with zeros; see the .map files on the peer)"
        ),
        _ => println!(
            "FAILED: some disks did not verify; run the same command again to re-send them"
        ),
    }
    code
}

fn peer_msg_suffix(m: &str) -> String {
    if m.is_empty() {
        String::new()
    } else {
        format!(" ({})", Escaped(m))
    }
}
