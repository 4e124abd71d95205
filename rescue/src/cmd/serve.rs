//! `rescue serve`: keep backups. Receives backups into the store and sends
//! stored backups to peers that restore.

use std::sync::Mutex;
use std::time::Instant;

use anyhow::{Context, Result};

use crate::Root;
use crate::cmd::cli::ServeArgs;
use crate::proto::digests;
use crate::proto::frame::{Frame, Header};
use crate::proto::msg::{
    self, BackupBegin, BackupReady, BackupState, BaseRef, Bounded, ChunkRanges, DigestsReq,
    DiskDone, DiskEnd, Free, FreeReq, ListReq, Listing, MAX_DIGESTS, RestoreBegin, RestoreReady,
    SessionDone, kind,
};
use crate::session::auth::{self, Consent};
use crate::session::{self, Session};
use crate::store::image::{
    ImageSink, ImageSource, StoreBase, Tally, ZeroDigests, journal_digests, journal_ranges,
};
use crate::store::{self, BackupDir, ManifestDisk, Store};
use crate::system::identity::Describe;
use crate::util::{Escaped, human_bytes};
use crate::xfer::progress::{self, Bar};
use crate::xfer::{self, Geometry, SinkPipeline};

pub(crate) fn run(root: &Root, args: &ServeArgs) -> Result<u8> {
    // Before the store is touched: a wrong --device changes nothing anywhere.
    crate::wire::transport::endpoint(root, args.connect.device.as_deref())?;
    let mut store = Store::open_to_write(&args.store, args.create)?;
    store.space_check = !args.no_space_check;
    crate::store::dir::ignore_file_size_signal();
    let consent = Consent::new(&args.allow_restore);
    eprintln!(
        "keeping backups in {}; {}",
        store.dir().display(),
        consent.describe()
    );
    store.seal_unfinished();
    let served = session::serve(root, &args.connect, args.once, |s| {
        handle(&store, &consent, s)
    });
    // Backups whose image digests are still being computed are completed first.
    store.wait_sealed();
    served?;
    Ok(crate::exit::OK)
}

/// One introduced peer's session: any number of requests until it says goodbye.
/// Public so the session fuzz target (rescue/fuzz) drives it over a socketpair.
pub fn handle(store: &Store, consent: &Consent, mut s: Session) -> Result<bool> {
    let peer = Escaped(&s.peer.identity.hostname).to_string();
    let result = (|| -> Result<()> {
        while let Some(req) = session::next_request(&mut s.conn)? {
            if s.conn.answered_before(&req)? {
                continue;
            }
            // A backup sealing may be what these read, or a new backup's base.
            if matches!(
                req.header.kind,
                kind::LIST | kind::RESTORE_BEGIN | kind::DIGESTS_REQ | kind::BACKUP_BEGIN
            ) {
                store.wait_session_sealed();
            }
            match req.header.kind {
                kind::BACKUP_BEGIN => {
                    let _cut = crate::signals::transfer(cut_advice(&peer));
                    receive_backup(store, consent, &mut s, &req)?
                }
                kind::LIST => send_listing(store, consent, &mut s, &req)?,
                kind::RESTORE_BEGIN => {
                    let _cut = crate::signals::transfer(cut_advice(&peer));
                    send_backup(store, consent, &mut s, &req)?
                }
                kind::DIGESTS_REQ => send_digests(store, consent, &mut s, &req)?,
                kind::FREE_REQ => send_free(store, consent, &mut s, &req)?,
                kind::SESSION_END => {
                    s.conn.reply_json(
                        &req,
                        kind::SESSION_DONE,
                        &SessionDone {
                            ok: true,
                            message: String::new(),
                            sha256_pending: false,
                        },
                    )?;
                }
                kind::ERROR => {
                    return Err(crate::wire::conn::peer_error(&req));
                }
                other => {
                    s.conn.send_error(
                        "bad_request",
                        &format!("unexpected {} message", kind::name(other)),
                    );
                }
            }
        }
        Ok(())
    })();
    match &result {
        Ok(()) => eprintln!("session with {peer} ended"),
        Err(e) => eprintln!("session with {peer} failed: {e:#}"),
    }
    s.close();
    result.map(|()| true)
}

/// What an interrupt during a transfer tells the user (none while idle).
fn cut_advice(peer: &str) -> String {
    format!(
        "The transfer with {peer} was cut: start serve again, then run the same command on {peer} to resume it."
    )
}

/// Decodes a request; one the peer should not have sent is answered with
/// `bad_request` saying why, so the peer prints the reason.
fn decode<T: for<'de> serde::Deserialize<'de> + Bounded>(s: &Session, req: &Frame) -> Result<T> {
    msg::from_json(req).inspect_err(|e| s.conn.send_error("bad_request", &format!("{e:#}")))
}

/// A disk being received: owns its sink pipeline until the disk is finished, and
/// dropped before that (the peer gone, this server interrupted, any early
/// return or a panic) saves what was verified, so no way out loses it.
struct Receiving<'a> {
    b: &'a mut BackupDir,
    d: ManifestDisk,
    pipe: Option<SinkPipeline<ImageSink>>,
    /// Why the transfer stopped, for the message; set on the error path.
    why: String,
}

impl Receiving<'_> {
    fn pipe(&self) -> &SinkPipeline<ImageSink> {
        self.pipe
            .as_ref()
            .expect("the pipeline is held until finish")
    }

    /// The disk was received: the pipeline is the caller's to finish.
    fn finish(mut self) -> SinkPipeline<ImageSink> {
        self.pipe.take().expect("the pipeline is held until finish")
    }
}

impl Drop for Receiving<'_> {
    fn drop(&mut self) {
        if let Some(pipe) = self.pipe.take() {
            save_partial(self.b, &self.d, pipe, &self.why);
        }
    }
}

/// After a disk's transfer stopped (peer gone, or this server interrupted):
/// syncs and journals everything verified so far, so a resume continues from
/// it, and says how far the backup got.
fn save_partial(b: &mut BackupDir, d: &ManifestDisk, pipe: SinkPipeline<ImageSink>, why: &str) {
    let saved = pipe.finish().and_then(|(mut sink, _)| {
        sink.finalize_partial()?;
        // What the journal now holds of this session counts, as a whole
        // disk's would: the resume adds the rest.
        if let Some(md) = b.manifest.disks.iter_mut().find(|x| x.name == d.name) {
            record_use(md, sink.tally(), 0, sink.shared_with_base());
        }
        Ok(())
    });
    b.manifest.updated = crate::util::iso8601(crate::util::now_secs());
    let saved = saved.and_then(|()| b.save());
    let geo = Geometry {
        size: d.size,
        chunk: b.manifest.chunk_size,
    };
    match saved.and_then(|()| journal_ranges(&b.dir, d, geo.chunk)) {
        Ok(held) => eprintln!(
            "{}: interrupted: {why}; backup {} is {}, {} of {} chunk(s) held",
            d.name,
            b.manifest.backup_id,
            b.manifest.status.word(),
            held.held(),
            geo.count()
        ),
        Err(e) => eprintln!(
            "{}: interrupted: {why}; saving what was received failed: {e:#}",
            d.name
        ),
    }
}

/// Starts or resumes the backup BACKUP_BEGIN asks for. An interrupted backup is
/// resumed only for a peer presenting its key (or with consent for its host);
/// returns the key the peer presents next time: the same, or a new one.
fn start_backup(
    store: &Store,
    consent: &Consent,
    s: &Session,
    begin: &BackupBegin,
) -> Result<(BackupDir, Vec<ChunkRanges>, bool, Option<String>)> {
    let host = store::host_name(&s.peer.identity);
    let key = begin.resume_key.as_deref();
    let may_resume = |m: &store::Manifest| {
        let ok = auth::may_resume(consent, &host, key, m);
        if !ok {
            eprintln!(
                "not resuming backup {} of {host}: the peer did not present its resume key; starting a new one (`--allow-restore {host}` lets it continue the old one)",
                m.backup_id
            );
        }
        ok
    };
    let may_base = |m: &store::Manifest| auth::may_be_base(consent, &s.peer.identity, &host, m);
    let (mut b, have, resumed) =
        store.begin_backup(&s.peer.identity, &s.me, begin, may_resume, may_base)?;
    let kept = key.filter(|k| {
        resumed && b.manifest.resume_key_sha256.as_deref() == Some(&auth::key_digest(k))
    });
    if let Some(k) = kept {
        return Ok((b, have, resumed, Some(k.to_string())));
    }
    let fresh = match auth::new_key() {
        Ok(k) => Some(k),
        Err(e) => {
            eprintln!("note: {e:#}; resuming this backup will need --allow-restore");
            None
        }
    };
    b.manifest.resume_key_sha256 = fresh.as_deref().map(auth::key_digest);
    b.save()?;
    Ok((b, have, resumed, fresh))
}

fn receive_backup(store: &Store, consent: &Consent, s: &mut Session, req: &Frame) -> Result<()> {
    // A signal now lets this save what it verified before the process exits.
    let _save = crate::signals::save_on_interrupt();
    let begin: BackupBegin = decode(s, req)?;
    let (mut b, have, resumed, resume_key) = refused(s, start_backup(store, consent, s, &begin))?;
    b.hold();
    let base = refused(s, with_base(store, consent, s, &mut b, &begin, resumed))?;
    if let Some(base) = &base {
        base.hold();
    }
    let location = b.path.display().to_string();
    eprintln!(
        "{} backup {} from {}: {} disk(s) into {location}{}",
        if resumed { "resuming" } else { "receiving" },
        b.manifest.backup_id,
        s.peer.identity.describe(),
        b.manifest.disks.len(),
        match &base {
            Some(base) => format!(", against backup {}", base.manifest.backup_id),
            None => String::new(),
        }
    );
    s.conn.reply_json(
        req,
        kind::BACKUP_READY,
        &BackupReady {
            backup_id: b.manifest.backup_id.clone(),
            location,
            resumed,
            have: have.clone(),
            resume_key,
            base: base.as_ref().map(|base| BaseRef {
                host: base.host.clone(),
                backup_id: base.manifest.backup_id.clone(),
                disks: b
                    .manifest
                    .disks
                    .iter()
                    .map(|d| d.base_disk.clone())
                    .collect(),
            }),
            // A resumed backup goes on with its stored decision (`keep_decision`).
            free: if resumed {
                b.manifest.disks.iter().map(|d| d.free.clone()).collect()
            } else {
                Vec::new()
            },
        },
    )?;
    if let Some(base) = &base {
        answer_base_digests(store, consent, s, base)?;
    }
    let mode = progress::Style::detect();
    let mut pending = Vec::new();
    for (i, held) in have.iter().enumerate() {
        if let Some(whole) = receive_one(s, &mut b, i, held, base.as_ref(), mode)? {
            pending.push((i, Some(whole)));
        }
    }
    // The session end confirms everything; a lost SESSION_END is repeated by the peer.
    let req = loop {
        match session::next_request(&mut s.conn)? {
            Some(f) if f.header.kind == kind::SESSION_END => break f,
            Some(f) if s.conn.answered_before(&f)? => continue,
            Some(_) => continue,
            None => {
                b.save()?;
                return Ok(());
            }
        }
    };
    // Every chunk is verified and durable: the peer is released now, and the
    // image digests still being computed complete the backup after it.
    let sealing = !pending.is_empty() && b.manifest.status == BackupState::InProgress;
    if sealing {
        b.manifest.status = BackupState::Sealing;
        b.manifest.updated = crate::util::iso8601(crate::util::now_secs());
        b.save()?;
    } else {
        b.finish()?;
    }
    let status = b.manifest.status;
    eprintln!("backup {} is {}", b.manifest.backup_id, status.word());
    let done = SessionDone {
        ok: status.is_complete() || sealing,
        message: format!("stored as {}/{}", b.host, b.manifest.backup_id),
        sha256_pending: sealing,
    };
    if sealing {
        store.seal_later(b, pending);
    }
    s.conn.reply_json(&req, kind::SESSION_DONE, &done)
}

/// The base of backup `b` (incremental), recorded in its manifest: none with
/// `--full`; a resumed backup keeps the one it started with while it is in
/// the store; else the one the store chooses ([`Store::choose_base`]).
fn with_base(
    store: &Store,
    consent: &Consent,
    s: &Session,
    b: &mut BackupDir,
    begin: &BackupBegin,
    resumed: bool,
) -> Result<Option<BackupDir>> {
    let base = if begin.full || (resumed && b.manifest.base.is_none()) {
        None
    } else if resumed {
        let id = b.manifest.base.clone().unwrap_or_default();
        let kept = store.open_backup(&b.host, &id).ok();
        if kept.is_none() {
            eprintln!("the base backup {id} is gone: the rest is received whole");
        }
        kept
    } else {
        store.choose_base(b, |m| {
            auth::may_be_base(consent, &s.peer.identity, &b.host, m)
        })
    };
    if !resumed {
        b.manifest.base = base.as_ref().map(|x| x.manifest.backup_id.clone());
        for d in &mut b.manifest.disks {
            d.base_disk = base
                .as_ref()
                .and_then(|x| store::base_disk(&x.manifest, d))
                .map(|x| x.name.clone());
        }
        b.save()?;
    }
    Ok(base)
}

/// Before the data phase of an incremental backup: answers the sender's
/// DIGESTS_REQ for the base (and only for it), until the first other message,
/// which is left for the data phase.
fn answer_base_digests(
    store: &Store,
    consent: &Consent,
    s: &mut Session,
    base: &BackupDir,
) -> Result<()> {
    use crate::wire::conn::Event;
    loop {
        let f = match s.conn.next_event(std::time::Duration::from_secs(1)) {
            Some(Event::Frame(f)) => f,
            Some(Event::Closed(c)) => return Err(c.into_error("sending the base's digests")),
            _ => continue,
        };
        if !f.intact || matches!(f.header.kind, kind::PING | kind::HELLO) {
            continue;
        }
        match f.header.kind {
            kind::BACKUP_BEGIN | kind::DIGESTS_REQ if s.conn.answered_before(&f)? => {}
            kind::DIGESTS_REQ => {
                let q: DigestsReq = decode(s, &f)?;
                if q.host != base.host || q.backup_id != base.manifest.backup_id {
                    let m = "during a backup only the base's digests can be asked for";
                    s.conn.send_error("bad_request", m);
                    anyhow::bail!("{m}");
                }
                send_digests(store, consent, s, &f)?;
            }
            _ => {
                s.conn.put_back(f);
                return Ok(());
            }
        }
    }
}

/// Makes disk `d`'s chunks marked unchanged come from its base disk, if the
/// backup has one and it can be opened (else the receiver asks for their data).
fn attach_base(
    base: Option<&BackupDir>,
    d: &ManifestDisk,
    sink: &mut ImageSink,
) -> Option<StoreBase> {
    let (base, name) = (base?, d.base_disk.as_ref()?);
    let bd = base.manifest.disks.iter().find(|x| &x.name == name)?;
    match StoreBase::open(base, bd).and_then(|sb| Ok((sb.image()?, sb))) {
        Ok((img, sb)) => {
            sink.set_base(img);
            Some(sb)
        }
        Err(e) => {
            eprintln!(
                "{}: the base {} cannot be opened ({e:#}): receiving it whole",
                d.name, base.manifest.backup_id
            );
            None
        }
    }
}

/// The pipeline writing disk `d` into `sink`, its chunks marked unchanged
/// taken from its base disk where there is one (`attach_base`).
fn pipeline(
    base: Option<&BackupDir>,
    d: &ManifestDisk,
    mut sink: ImageSink,
) -> SinkPipeline<ImageSink> {
    let from_base = attach_base(base, d, &mut sink);
    let mut pipe = SinkPipeline::start(sink, d.size);
    if let Some(map) = &d.free {
        pipe.set_free_map(map.clone());
    }
    if let Some(sb) = from_base {
        pipe.set_base(Box::new(sb));
    }
    pipe
}

/// Receives disk `i` of backup `b` (what it does not hold yet), checks it and
/// answers the sender's DISK_END. A transfer cut off saves what was verified.
/// A disk sent whole in this session is answered once every chunk is verified
/// and durable; its image digest, still being computed, is returned.
fn receive_one(
    s: &mut Session,
    b: &mut BackupDir,
    i: usize,
    held: &ChunkRanges,
    base: Option<&BackupDir>,
    mode: progress::Style,
) -> Result<Option<xfer::WholeDigest>> {
    let d = b.manifest.disks[i].clone();
    let geo = Geometry {
        size: d.size,
        chunk: b.manifest.chunk_size,
    };
    let bar = Bar::new(&d.name, d.size, mode);
    let t = Instant::now();
    let sink = refused(s, ImageSink::open(b, i))?;
    let mut rx = Receiving {
        pipe: Some(pipeline(base, &d, sink)),
        d: d.clone(),
        b: &mut *b,
        why: "the transfer ended before the disk did".into(),
    };
    let received = xfer::receive_disk(
        &mut s.conn,
        i as u32,
        geo,
        held,
        rx.pipe(),
        &bar,
        xfer::OnDamaged::Refuse,
    );
    bar.finish();
    let (end_frame, damaged, base_failed) = match received {
        Ok(r) => (r.end, r.resent, r.base_failed),
        Err(e) => {
            if let Err(werr) = rx.pipe().failed() {
                s.conn.send_error("no_space", &format!("{werr:#}"));
            }
            rx.why = format!("{e:#}");
            return Err(e);
        }
    };
    let (mut sink, whole) = refused(s, rx.finish().finish())?;
    let tally = sink.tally();
    if held.held() == 0 {
        // Every chunk went through the image hasher in order.
        refused(s, sink.finalize_partial())?;
        b.manifest.disks[i].unreadable_bytes = sink.unreadable_bytes();
        let used = DiskDone {
            disk: i as u32,
            ok: true,
            sha256: String::new(),
            message: String::new(),
            sha256_pending: true,
            unchanged_bytes: tally.unchanged,
            base_failed,
        };
        let shared = sink.shared_with_base();
        record_use(&mut b.manifest.disks[i], tally, base_failed, shared);
        refused(s, b.save())?;
        eprintln!(
            "{}: stored in {:.1}s, every chunk verified and synced{}; computing the image SHA-256",
            d.name,
            t.elapsed().as_secs_f64(),
            resent_note(damaged)
        );
        s.conn.reply(
            &end_frame,
            Header::new(kind::DISK_DONE, i as u32, 0),
            msg::to_json(&used),
        )?;
        return Ok(Some(whole));
    }
    let full_have = held.held() == geo.count();
    let verdict = if full_have && d.complete && d.sha256.is_some() {
        Ok(d.sha256.clone().unwrap_or_default())
    } else {
        refused(s, sink.finalize(whole.wait()))?
    };
    let mut done = record_verdict(b, i, verdict, sink.unreadable_bytes(), damaged, t);
    done.unchanged_bytes = tally.unchanged;
    done.base_failed = base_failed;
    let shared = sink.shared_with_base();
    record_use(&mut b.manifest.disks[i], tally, base_failed, shared);
    refused(s, b.save())?;
    s.conn.reply(
        &end_frame,
        Header::new(kind::DISK_DONE, i as u32, 0),
        msg::to_json(&done),
    )?;
    Ok(None)
}

fn resent_note(damaged: u64) -> String {
    if damaged > 0 {
        format!(", {damaged} damaged chunk(s) asked for again")
    } else {
        String::new()
    }
}

/// Adds what this session wrote (`tally`: sent, and taken from the base) to
/// disk `md`'s record, and says what came from the base.
fn record_use(md: &mut ManifestDisk, tally: Tally, base_failed: u64, shared: u64) {
    md.sent_bytes += tally.sent;
    if md.base_disk.is_none() {
        return;
    }
    md.unchanged_bytes += tally.unchanged;
    md.shared_bytes += shared;
    md.base_failed += base_failed;
    eprintln!(
        "{}: {} unchanged since the base ({} sharing its extents){}",
        md.name,
        human_bytes(tally.unchanged),
        human_bytes(shared),
        if base_failed > 0 {
            format!(
                ", {base_failed} chunk(s) of the base failed their check and were received instead"
            )
        } else {
            String::new()
        }
    );
}

/// Records disk `i`'s verdict in the manifest (a failed one fails the backup)
/// and says it; returns the DISK_DONE that answers its DISK_END.
fn record_verdict(
    b: &mut BackupDir,
    i: usize,
    verdict: std::result::Result<String, String>,
    unreadable: u64,
    damaged: u64,
    t: Instant,
) -> DiskDone {
    let name = b.manifest.disks[i].name.clone();
    match verdict {
        Ok(sha) => {
            b.disk_verified(i, &sha, unreadable);
            eprintln!(
                "{name}: stored and verified in {:.1}s, sha256 {sha}{}{}",
                t.elapsed().as_secs_f64(),
                if unreadable > 0 {
                    format!(", {} unreadable on the source", human_bytes(unreadable))
                } else {
                    String::new()
                },
                resent_note(damaged)
            );
            DiskDone {
                disk: i as u32,
                ok: true,
                sha256: sha,
                message: String::new(),
                sha256_pending: false,
                unchanged_bytes: 0,
                base_failed: 0,
            }
        }
        Err(why) => {
            eprintln!("{name}: verification FAILED: {why}");
            b.manifest.status = BackupState::Failed;
            DiskDone {
                disk: i as u32,
                ok: false,
                sha256: String::new(),
                message: why,
                sha256_pending: false,
                unchanged_bytes: 0,
                base_failed: 0,
            }
        }
    }
}

/// How much of a LISTING body the backups may fill (the rest is the envelope).
const LISTING_BUDGET: usize = msg::MAX_CONTROL - 1024;

/// Answers a LIST: the backups of the host it names (the peer's own when it names
/// none; see [`listed`]) that the peer may read, from `start` on, as many as fit
/// in one message; `next` says where the rest begins, `hidden` how many it may
/// not see; the first page also names the other hosts it may read ([`held_hosts`]).
/// A backup whose stored metadata would not pass the peer's checks (written by an
/// older version, or edited) is left out with a log line, so it cannot make the
/// others unreachable.
fn send_listing(store: &Store, consent: &Consent, s: &mut Session, req: &Frame) -> Result<()> {
    let q: ListReq = decode(s, req)?;
    let peer = &s.peer.identity;
    let host = match &q.host {
        Some(h) => store::names::sanitize(h, "host"),
        None => store::host_name(peer),
    };
    let all = store.list(None);
    let readable = |b: &BackupDir| auth::may_read(consent, peer, &b.host, &b.manifest);
    let (backups, by_machine_id) = listed(&all, &host, q.host.is_none(), peer, &readable);
    let mut l = Listing {
        by_machine_id,
        ..Default::default()
    };
    let mut size = 0;
    if q.start == 0 {
        size = held_hosts(&all, &host, &readable, &mut l);
    }
    for (i, b) in backups.iter().enumerate().skip(q.start as usize) {
        if !readable(b) {
            l.hidden += 1;
            continue;
        }
        let mut summary = b.manifest.summary(&b.host);
        add_layouts(b, &mut summary);
        let len = msg::to_json(&summary).len() + 1;
        if let Err(why) = summary.check() {
            eprintln!(
                "not listing {}: its manifest is unacceptable to a peer: {why}",
                b.path.display()
            );
            continue;
        }
        if len > LISTING_BUDGET {
            eprintln!(
                "not listing {}: its manifest is {len} bytes as a summary (limit {LISTING_BUDGET})",
                b.path.display()
            );
            continue;
        }
        if size + len > LISTING_BUDGET {
            l.next = Some(i as u32);
            break;
        }
        size += len;
        l.backups.push(summary);
    }
    s.conn.reply_json(req, kind::LISTING, &l)
}

/// Describes how each disk of a restorable backup is partitioned, read from
/// its image, so a restore onto a disk of another size can plan before it
/// writes anything. An image whose table cannot be read gets none.
fn add_layouts(b: &BackupDir, summary: &mut msg::BackupSummary) {
    if !b.manifest.status.is_complete() {
        return;
    }
    for (s, d) in summary.disks.iter_mut().zip(&b.manifest.disks) {
        let Ok(img) = b.dir.open_file(&d.image, store::dir::Access::Read) else {
            continue;
        };
        if let Ok(table) = crate::system::partitions::read_table_file(&img, d.logical_sector_size) {
            s.layout = Some(crate::system::resize::layout_of(
                table.as_ref(),
                d.logical_sector_size,
            ));
        }
    }
}

/// The backups a LIST is about: those of `host`. A peer asking for its own
/// (`own`: no host named) that may read none there is offered those made under
/// its machine-id with other hostnames (it was renamed, or is a clone) if it may
/// read one of them, or if its hostname has none at all (then `hidden` says how
/// many there are, not which). True when they are those.
fn listed<'a>(
    all: &'a [BackupDir],
    host: &str,
    own: bool,
    peer: &msg::Identity,
    readable: &dyn Fn(&BackupDir) -> bool,
) -> (Vec<&'a BackupDir>, bool) {
    let of_host: Vec<&BackupDir> = all.iter().filter(|b| b.host == host).collect();
    if !own || of_host.iter().any(|b| readable(b)) {
        return (of_host, false);
    }
    let same: Vec<&BackupDir> = all
        .iter()
        .filter(|b| b.host != host && auth::same_machine_id(peer, &b.manifest))
        .collect();
    if same.iter().any(|b| readable(b)) || (of_host.is_empty() && !same.is_empty()) {
        (same, true)
    } else {
        (of_host, false)
    }
}

/// Fills in the hosts other than `host` that hold backups here: by name those of
/// which the peer may read a backup (all of them with `--allow-restore all`), the
/// others only counted, so a host name is never told to a peer that may not read
/// its backups. Returns the bytes the names take in the message.
fn held_hosts(
    all: &[BackupDir],
    host: &str,
    readable: &dyn Fn(&BackupDir) -> bool,
    l: &mut Listing,
) -> usize {
    let mut hosts = std::collections::BTreeMap::<&str, bool>::new();
    for b in all.iter().filter(|b| b.host != host) {
        *hosts.entry(&b.host).or_default() |= readable(b);
    }
    for (h, may) in hosts {
        if may && l.hosts.len() < msg::MAX_HOSTS {
            l.hosts.push(h.to_string());
        } else {
            l.hidden_hosts += 1;
        }
    }
    l.hosts.iter().map(|h| h.len() + 3).sum()
}

/// Opens the backup a peer names if it may read it; otherwise answers
/// not_found or refused (saying how to allow it) and returns the error.
fn open_for_peer(
    store: &Store,
    consent: &Consent,
    s: &Session,
    host: &str,
    id: &str,
) -> Result<BackupDir> {
    let b = store
        .open_backup(host, id)
        .inspect_err(|e| s.conn.send_error("not_found", &format!("{e:#}")))?;
    if !auth::may_read(consent, &s.peer.identity, &b.host, &b.manifest) {
        let m = auth::refusal(&b.host);
        s.conn.send_error("refused", &m);
        anyhow::bail!("refused to send backup {id}: {m}");
    }
    Ok(b)
}

/// Sends the peer an ERROR for a step of a backup that failed, so it shows the
/// reason instead of a closed connection: the code says what kind of failure
/// (`store::error_code`: a full store is `no_space`, not a bad request).
fn refused<T>(s: &Session, r: Result<T>) -> Result<T> {
    r.inspect_err(|e| s.conn.send_error(store::error_code(e), &format!("{e:#}")))
}

/// Answers a FREE_REQ: the free map a used-block backup recorded for a disk.
fn send_free(store: &Store, consent: &Consent, s: &mut Session, req: &Frame) -> Result<()> {
    let q: FreeReq = msg::from_json(req)?;
    let b = open_for_peer(store, consent, s, &q.host, &q.backup_id)?;
    match b.manifest.disks.iter().find(|d| d.name == q.disk) {
        Some(d) => s.conn.reply_json(
            req,
            kind::FREE,
            &Free {
                free: d.free.clone(),
            },
        ),
        None => {
            let m = format!("backup {} has no disk {:?}", q.backup_id, q.disk);
            s.conn.send_error("not_found", &m);
            anyhow::bail!("{m}")
        }
    }
}

/// Answers a DIGESTS_REQ from the chunk journal of a stored disk.
fn send_digests(store: &Store, consent: &Consent, s: &mut Session, req: &Frame) -> Result<()> {
    let q: DigestsReq = msg::from_json(req)?;
    if q.count > MAX_DIGESTS {
        let m = format!(
            "asked for {} digests at once (limit {MAX_DIGESTS})",
            q.count
        );
        s.conn.send_error("bad_request", &m);
        anyhow::bail!("{m}");
    }
    let b = open_for_peer(store, consent, s, &q.host, &q.backup_id)?;
    let answer = (|| -> Result<Vec<u8>> {
        let d = b
            .manifest
            .disks
            .iter()
            .find(|d| d.name == q.disk)
            .with_context(|| format!("backup {} has no disk {:?}", q.backup_id, q.disk))?;
        let geo = Geometry {
            size: d.size,
            chunk: b.manifest.chunk_size,
        };
        let first = q.first.min(geo.count());
        let n = (geo.count() - first).min(u64::from(q.count)) as usize;
        let records = journal_digests(&b.dir, &d.chunks, first, n)?;
        Ok(digests::encode(
            b.manifest.chunk_size,
            records.as_chunks::<32>().0,
        ))
    })();
    match answer {
        Ok(p) => s.conn.reply(req, Header::new(kind::DIGESTS, 0, q.first), p),
        Err(e) => {
            s.conn.send_error("not_found", &format!("{e:#}"));
            Err(e)
        }
    }
}

/// The disks of `b` a restore asks for, once `b` is complete; else the peer is told
/// why not.
fn restorable_disks(
    b: &BackupDir,
    want: &RestoreBegin,
    s: &mut Session,
) -> Result<Vec<ManifestDisk>> {
    if !b.manifest.status.is_complete() {
        let what = if b.manifest.status == BackupState::Sealing {
            ": this server is computing its image SHA-256; try again once it is complete"
        } else {
            ", not complete: finish it (run the backup again) before restoring"
        };
        let m = format!(
            "backup {} is {}{what}",
            b.manifest.backup_id,
            b.manifest.status.word()
        );
        s.conn.send_error("refused", &m);
        anyhow::bail!("{m}");
    }
    let mut disks = Vec::new();
    for name in &want.disks {
        match b.manifest.disks.iter().find(|d| &d.name == name) {
            Some(d) => disks.push(d.clone()),
            None => {
                let m = format!("backup {} has no disk {name:?}", b.manifest.backup_id);
                s.conn.send_error("not_found", &m);
                anyhow::bail!("{m}");
            }
        }
    }
    Ok(disks)
}

fn send_backup(store: &Store, consent: &Consent, s: &mut Session, req: &Frame) -> Result<()> {
    let want: RestoreBegin = msg::from_json(req)?;
    let b = open_for_peer(store, consent, s, &want.host, &want.backup_id)?;
    b.hold();
    let disks = restorable_disks(&b, &want, s)?;
    let summary = b.manifest.summary(&b.host);
    s.conn.reply_json(
        req,
        kind::RESTORE_READY,
        &RestoreReady {
            chunk_size: b.manifest.chunk_size,
            disks: disks
                .iter()
                .filter_map(|d| summary.disks.iter().find(|x| x.name == d.name).cloned())
                .collect(),
        },
    )?;
    eprintln!(
        "sending backup {} ({} disk(s)) to {}",
        b.manifest.backup_id,
        disks.len(),
        Escaped(&s.peer.identity.hostname)
    );
    let mode = progress::Style::detect();
    for (i, d) in disks.iter().enumerate() {
        let mut src = ImageSource::open(&b, d)?;
        // A client that understands it is told which chunks the store cannot
        // produce intact and restores the rest (or stops, naming them).
        src.mark_damaged = want.accepts_damaged;
        let zeros = Mutex::new(ZeroDigests::default());
        let geo = Geometry {
            size: d.size,
            chunk: b.manifest.chunk_size,
        };
        let bar = Bar::new(&d.name, d.size, mode);
        // What the restoring side already holds (restore --resume), within the
        // disk: it comes from the peer.
        let have = want
            .have
            .get(i)
            .cloned()
            .unwrap_or_default()
            .clipped(geo.count());
        let stats = xfer::send_disk(
            &mut s.conn,
            i as u32,
            geo,
            &have,
            |off, len| src.read(off, len),
            |off, raw, known| {
                let mut z = zeros.lock().map_err(|_| anyhow::anyhow!("lock poisoned"))?;
                src.digest(off, raw, known, &mut z)
            },
            &bar,
        )
        .with_context(|| format!("sending {}", d.name))?;
        bar.finish();
        let done = xfer::finish_disk(
            &mut s.conn,
            i as u32,
            &DiskEnd {
                disk: i as u32,
                bytes_read: stats.bytes_read,
                unreadable_bytes: 0,
            },
        )?;
        if done.ok {
            eprintln!("{}: restored and verified by the peer", d.name);
        } else {
            eprintln!("{}: the peer reports: {}", d.name, Escaped(&done.message));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::proto::msg::{DiskInfo, Identity};
    use crate::xfer::Verified;

    /// A disk left any way, even by a panic while receiving, keeps the chunks
    /// verified so far: the guard journals them for a resume.
    #[test]
    fn a_disk_left_by_a_panic_keeps_what_was_verified() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open_to_write(&t.path().join("store"), true).unwrap();
        let id = Identity {
            hostname: "hosta".into(),
            machine_id: "m".into(),
            dmi_vendor: String::new(),
            dmi_product: String::new(),
            dmi_serial: String::new(),
            tool_version: "x".into(),
        };
        let chunk = 64 * 1024u32;
        let begin = BackupBegin {
            label: None,
            chunk_size: chunk,
            fresh: true,
            disks: vec![DiskInfo {
                name: "d".into(),
                source_path: "/dev/d".into(),
                size: 4 * u64::from(chunk),
                logical_sector_size: 512,
                ..Default::default()
            }],
            resume_key: None,
            full: false,
        };
        let (mut b, _, _) = store
            .begin_backup(&id, &id, &begin, |_| false, |_| false)
            .unwrap();
        let d = b.manifest.disks[0].clone();
        let data = vec![7u8; chunk as usize];
        let cut = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let sink = ImageSink::open(&b, 0).unwrap();
            let rx = Receiving {
                pipe: Some(SinkPipeline::start(sink, d.size)),
                d: d.clone(),
                b: &mut b,
                why: "a test".into(),
            };
            let c = Verified {
                offset: 0,
                len: chunk,
                zero: false,
                sha256: xfer::sha256(&data),
                bad: vec![],
                payload: Arc::new(data.clone()),
                start: 0,
                damaged: false,
                unchanged: false,
            };
            rx.pipe().submit(c).unwrap();
            panic!("a bug while receiving");
        }));
        assert!(cut.is_err());
        let held = journal_ranges(&b.dir, &d, chunk).unwrap();
        assert_eq!(held.to_vec(), vec![(0, 1)]);
    }
}
