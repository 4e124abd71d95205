//! One disk image in the store: the sparse `.img`, the `.chunks` journal (the
//! SHA-256 of every verified chunk, 32 bytes per chunk index; all zeros = not
//! yet held) and the ddrescue `.map`. The journal is written only after the image
//! data it describes was synced, so after a power loss it never claims more than
//! is really on disk; that is what makes resume safe.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use super::mapfile::{BlockStatus, Map};
use super::{Access, BackupDir, Dir, ManifestDisk};
use crate::proto::msg::ChunkRanges;
use crate::util::{self, hex};
use crate::wire::conn::OutChunk;
use crate::xfer::sha256x2::Sha256Stream;
use crate::xfer::{self, BaseChunks, Geometry, Known, RawChunk, Sink, Verified};

const DIGEST: u64 = 32;

/// SHA-256 of `len` zero bytes, remembered per length.
#[derive(Default)]
pub(crate) struct ZeroDigests(HashMap<u32, [u8; 32]>);

impl ZeroDigests {
    pub(crate) fn get(&mut self, len: u32) -> [u8; 32] {
        *self.0.entry(len).or_insert_with(|| {
            let mut s = Sha256Stream::new();
            s.update_zeros(u64::from(len));
            s.finish()
        })
    }
}

/// Reads the journal: which chunks are held, as index ranges.
pub(crate) fn journal_ranges(dir: &Dir, d: &ManifestDisk, chunk: u32) -> Result<ChunkRanges> {
    let geo = Geometry {
        size: d.size,
        chunk,
    };
    let Ok(mut f) = dir.open_file(&d.chunks, Access::Read) else {
        return Ok(ChunkRanges::new());
    };
    let mut ranges = ChunkRanges::new();
    let mut buf = vec![0u8; 32 * 4096];
    let mut index = 0u64;
    loop {
        let n = read_full(&mut f, &mut buf).context("reading the chunk journal")?;
        if n == 0 {
            break;
        }
        for rec in buf[..n].chunks_exact(32) {
            if index >= geo.count() {
                break;
            }
            if rec.iter().any(|&b| b != 0) {
                ranges.push(index);
            }
            index += 1;
        }
    }
    Ok(ranges)
}

/// The byte ranges (start, len) of the chunks in `ranges`.
pub(crate) fn held_bytes(ranges: &ChunkRanges, geo: Geometry) -> Vec<(u64, u64)> {
    ranges
        .iter()
        .map(|&(a, b)| (geo.start_of(a), geo.start_of(b) - geo.start_of(a)))
        .filter(|r| r.1 > 0)
        .collect()
}

/// Before a resume: the chunks the journal holds, with the mapfile made to
/// agree. A crash leaves the map behind the journal (it is rewritten every
/// few seconds, the journal at every sync) or ahead of it (damaged chunks
/// dropped from the journal first); left so, the resumed backup kept `?`
/// ranges for chunks it never asked for again. A journal without a readable
/// map is dropped: which of its chunks had unreadable sectors is unknown, so
/// they are received again.
pub(crate) fn resume_ranges(dir: &Dir, d: &ManifestDisk, chunk: u32) -> Result<ChunkRanges> {
    let held = journal_ranges(dir, d, chunk)?;
    let geo = Geometry {
        size: d.size,
        chunk,
    };
    let Some(mut map) = read_map(dir, d) else {
        if !held.is_empty() {
            let j = dir.open_file(&d.chunks, Access::Write)?;
            j.set_len(0)
                .and_then(|()| j.sync_data())
                .with_context(|| format!("emptying {}", d.chunks))?;
        }
        save_map(dir, d, &Map::new(d.size))?;
        return Ok(ChunkRanges::new());
    };
    let bytes = held_bytes(&held, geo);
    if map.disagreement(&bytes) != (0, 0) {
        map.follow_journal(&bytes);
        save_map(dir, d, &map)?;
    }
    Ok(held)
}

/// A disk's mapfile, if it exists and parses (never read through a link).
fn read_map(dir: &Dir, d: &ManifestDisk) -> Option<Map> {
    let text = dir.read_to_string(&d.map, u64::MAX).ok()?;
    Map::parse(&text, d.size).ok()
}

/// Replaces a disk's mapfile (a link planted as it or its temporary file is
/// replaced, never written through).
fn save_map(dir: &Dir, d: &ManifestDisk, map: &Map) -> Result<()> {
    dir.write_atomic(&d.map, map.render(&map_header(d)).as_bytes())
}

/// The records of journal file `chunks` for chunks `first..first + n`, 32
/// bytes each; all zeros where it holds nothing (never written, or shorter).
pub(crate) fn journal_digests(dir: &Dir, chunks: &str, first: u64, n: usize) -> Result<Vec<u8>> {
    let mut f = dir.open_file(chunks, Access::Read)?;
    let mut out = vec![0u8; n * DIGEST as usize];
    f.seek(SeekFrom::Start(first * DIGEST))
        .and_then(|_| read_full(&mut f, &mut out))
        .context("reading the chunk journal")?;
    Ok(out)
}

/// Syncs an image, then records in its journal the chunks that sync made
/// durable: one write per run of consecutive chunk indices (they arrive in
/// order), not one 32-byte write per chunk.
fn sync_then_journal(
    img: &File,
    journal: &File,
    name: &str,
    batch: &[(u64, [u8; 32])],
) -> Result<()> {
    img.sync_data().with_context(|| format!("syncing {name}"))?;
    write_journal(journal, batch)
}

fn write_journal(journal: &File, batch: &[(u64, [u8; 32])]) -> Result<()> {
    let mut at = 0;
    while at < batch.len() {
        let start = batch[at].0;
        let mut end = at + 1;
        while end < batch.len() && batch[end].0 == start + (end - at) as u64 {
            end += 1;
        }
        let run: Vec<u8> = batch[at..end].iter().flat_map(|(_, d)| *d).collect();
        journal
            .write_all_at(&run, start * DIGEST)
            .context("writing the chunk journal")?;
        at = end;
    }
    Ok(())
}

fn read_full(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn map_header(d: &ManifestDisk) -> String {
    format!(
        "Mapfile. Created by usb4rescue {}\nImage: {} from {} ({} bytes)",
        env!("CARGO_PKG_VERSION"),
        d.image,
        d.source_path,
        d.size
    )
}

/// Writes received chunks into a store image.
pub(crate) struct ImageSink {
    dir: Dir,
    disk: ManifestDisk,
    geo: Geometry,
    img: File,
    journal: File,
    map: Map,
    /// (chunk index, digest) written but not yet synced.
    pending: Vec<(u64, [u8; 32])>,
    map_dirty: bool,
    map_written: Instant,
    /// The image file was created empty now: zero chunks need no writing.
    fresh: bool,
    zeros: ZeroDigests,
    syncer: Option<Syncer>,
    /// The base image of an incremental backup: chunks marked unchanged are
    /// filled from it.
    base: Option<BaseFill>,
    /// What this session wrote, counted as it is written, so a session cut
    /// short adds to the manifest exactly what its journal now holds.
    tally: Tally,
}

/// Bytes of the chunks a sink wrote in one session, by how they came.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Tally {
    /// Chunks that came with their data.
    pub(crate) sent: u64,
    /// Chunks marked unchanged, filled from the base.
    pub(crate) unchanged: u64,
}

/// How chunks are filled from a base image: a reflink while the filesystem
/// takes one, else copy_file_range, else the bytes are written.
struct BaseFill {
    img: File,
    reflink: bool,
    copy: bool,
    /// Bytes that share the base's extents (reflinked).
    pub(crate) shared: u64,
}

type Batch = Vec<(u64, [u8; 32])>;

/// Syncs the image, then records the journal entries of what was synced, on
/// its own thread: the writer keeps writing while the disk flushes.
struct Syncer {
    tx: SyncSender<Batch>,
    handle: JoinHandle<Result<()>>,
}

impl Syncer {
    fn start(img: &File, journal: &File, name: &str) -> Result<Syncer> {
        let img = img
            .try_clone()
            .context("duplicating the image descriptor")?;
        let journal = journal
            .try_clone()
            .context("duplicating the journal descriptor")?;
        let name = name.to_string();
        let (tx, rx) = mpsc::sync_channel::<Batch>(1);
        let handle = std::thread::Builder::new()
            .name("sync".into())
            .spawn(move || -> Result<()> {
                for batch in rx {
                    sync_then_journal(&img, &journal, &name, &batch)?;
                }
                Ok(())
            })
            .context("starting the sync thread")?;
        Ok(Syncer { tx, handle })
    }
}

impl ImageSink {
    pub(crate) fn open(b: &BackupDir, index: usize) -> Result<ImageSink> {
        let d = b
            .manifest
            .disks
            .get(index)
            .context("no such disk in the backup")?
            .clone();
        let geo = Geometry {
            size: d.size,
            chunk: b.manifest.chunk_size,
        };
        let existed = b.dir.has_file(&d.image);
        let img = b.dir.open_file(&d.image, Access::Create)?;
        let len = img.metadata()?.len();
        if len != d.size {
            img.set_len(d.size)
                .with_context(|| format!("sizing {} to {} bytes", d.image, d.size))?;
        }
        let journal = b.dir.open_file(&d.chunks, Access::Create)?;
        let map = read_map(&b.dir, &d).unwrap_or_else(|| Map::new(d.size));
        let mut sink = ImageSink {
            dir: b.dir.clone(),
            geo,
            img,
            journal,
            map,
            pending: Vec::new(),
            map_dirty: true,
            map_written: Instant::now(),
            fresh: !existed,
            zeros: ZeroDigests::default(),
            syncer: None,
            base: None,
            tally: Tally::default(),
            disk: d,
        };
        // The map is on disk before the journal claims a chunk (a journal
        // without a readable map is dropped at a resume). Written now, before
        // any chunk: at the first checkpoint its fsync waited for the image's
        // writeback, with the writer (and so the acknowledgements) stalled
        // meanwhile (23 ms per backup on a 2-core VM).
        sink.write_map()?;
        Ok(sink)
    }

    /// Fills chunks marked unchanged from `img`, the base backup's image.
    pub(crate) fn set_base(&mut self, img: File) {
        self.base = Some(BaseFill {
            img,
            reflink: true,
            copy: true,
            shared: 0,
        });
    }

    /// Bytes that share extents with the base (reflinked), 0 without one.
    pub(crate) fn shared_with_base(&self) -> u64 {
        self.base.as_ref().map_or(0, |b| b.shared)
    }

    /// What this session wrote so far.
    pub(crate) fn tally(&self) -> Tally {
        self.tally
    }

    /// Fills the chunk at `offset` from the base: a reflink, a copy in the
    /// kernel, or else `data`, the base's bytes the receiver checked.
    fn fill_from_base(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        let len = data.len() as u64;
        if let Some(b) = &mut self.base {
            if b.reflink && clone_range(&b.img, &self.img, offset, len).is_ok() {
                b.shared += len;
                return Ok(());
            }
            b.reflink = false;
            if b.copy && copy_range(&b.img, &self.img, offset, len).is_ok() {
                return Ok(());
            }
            b.copy = false;
        }
        self.write_data(offset, data)
            .with_context(|| format!("writing {}", self.disk.image))
    }

    /// Waits until everything written is synced and journaled.
    fn flush(&mut self) -> Result<()> {
        if let Some(sy) = self.syncer.take() {
            let batch = std::mem::take(&mut self.pending);
            let sent = batch.is_empty() || sy.tx.send(batch).is_ok();
            drop(sy.tx);
            match sy.handle.join() {
                Ok(r) => r?,
                Err(_) => bail!("the sync thread failed"),
            }
            if !sent {
                bail!("the sync thread stopped early");
            }
        }
        if !self.pending.is_empty() {
            sync_then_journal(&self.img, &self.journal, &self.disk.image, &self.pending)?;
            self.pending.clear();
        }
        Ok(())
    }

    fn write_map(&mut self) -> Result<()> {
        save_map(&self.dir, &self.disk, &self.map)?;
        self.map_dirty = false;
        self.map_written = Instant::now();
        Ok(())
    }

    /// Makes what was received durable after an interruption, for a later resume.
    pub(crate) fn finalize_partial(&mut self) -> Result<()> {
        if self.map_dirty {
            self.write_map()?;
        }
        self.flush()?;
        self.write_map()
    }

    /// Bytes the source could not read, as recorded.
    pub(crate) fn unreadable_bytes(&self) -> u64 {
        self.map.bytes(BlockStatus::Bad)
    }

    /// Final check: every chunk's digest in the journal matches the image, and
    /// the whole-image SHA-256. `whole` is the digest computed while receiving
    /// in order; without it the image is read back. Damaged chunks are dropped
    /// from the journal so a resume sends them again.
    pub(crate) fn finalize(
        &mut self,
        whole: Option<[u8; 32]>,
    ) -> Result<std::result::Result<String, String>> {
        // Synced and journaled before it is read back: the journal is what
        // the image is checked against.
        self.finalize_partial()?;
        if let Some(w) = whole {
            return Ok(Ok(hex(&w)));
        }
        let check = verify_image(&self.dir, &self.disk, self.geo.chunk, &mut self.zeros, None)?;
        if check.ok() {
            return Ok(Ok(check.sha256));
        }
        let zero = [0u8; 32];
        let bad: Vec<u64> = check
            .missing
            .iter()
            .chain(&check.mismatched)
            .copied()
            .collect();
        for &i in &bad {
            self.journal.write_all_at(&zero, i * DIGEST)?;
            let off = self.geo.offset(i);
            self.map
                .set(off, u64::from(self.geo.len_of(i)), BlockStatus::NonTried);
        }
        self.journal.sync_data()?;
        self.write_map()?;
        Ok(Err(format!(
            "{} chunk(s) of {} do not match their digests (first at offset {}); run the backup again to re-send them",
            bad.len(),
            self.disk.image,
            bad.iter().min().map(|&i| self.geo.offset(i)).unwrap_or(0)
        )))
    }
}

impl ImageSink {
    /// Writes a data chunk through the page cache and starts its writeback
    /// without waiting: the disk works while we receive, with as deep a queue
    /// as it takes, and the periodic and final syncs find little to flush.
    /// (O_DIRECT, as restores write, gave the disk one chunk at a time: on a
    /// 2-core VM a 1 GiB backup of 90 % zeros released its client after 0.56 s
    /// that way and 0.33 s this way, one of random data after 4.23 s and
    /// 3.34 s, medians of alternating rounds.) Nothing here waits for the
    /// writeback: a wait would take a write error for itself (the kernel
    /// reports one to each open file once), and the sync that precedes the
    /// journal must see it. Into a fresh (all-hole) image only the non-zero
    /// 4 KiB blocks are written, so the image stays as sparse as the disk's
    /// content.
    fn write_data(&mut self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.write_data_inner(offset, data)?;
        use std::os::fd::AsRawFd;
        // SAFETY: sync_file_range on our own descriptor; no memory is passed.
        // Its failure changes nothing: the data are written, the sync reports.
        unsafe {
            libc::sync_file_range(
                self.img.as_raw_fd(),
                offset as libc::off64_t,
                data.len() as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
        Ok(())
    }

    fn write_data_inner(&mut self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        if !self.fresh {
            return self.img.write_all_at(data, offset);
        }
        const BLK: usize = 4096;
        let mut i = 0;
        while i < data.len() {
            while i < data.len() && xfer::is_zero(&data[i..(i + BLK).min(data.len())]) {
                i += BLK;
            }
            let start = i;
            while i < data.len() && !xfer::is_zero(&data[i..(i + BLK).min(data.len())]) {
                i += BLK;
            }
            let end = i.min(data.len());
            if end > start {
                self.img
                    .write_all_at(&data[start..end], offset + start as u64)?;
            }
        }
        Ok(())
    }
}

impl Sink for ImageSink {
    fn write(&mut self, c: &Verified) -> Result<()> {
        let index = c.offset / u64::from(self.geo.chunk);
        let digest = if c.unchanged {
            self.fill_from_base(c.offset, c.bytes())?;
            self.tally.unchanged += u64::from(c.len);
            c.sha256
        } else if c.zero {
            if !self.fresh {
                punch_or_zero(&self.img, c.offset, u64::from(c.len))?;
            }
            self.zeros.get(c.len)
        } else {
            self.write_data(c.offset, c.bytes()).map_err(|e| {
                let e = anyhow::Error::new(e);
                if is_enospc(&e) {
                    e.context(format!(
                        "no space left in the store for {} (needs up to {} more); free space and run the backup again to resume",
                        self.disk.image,
                        util::human_bytes(self.geo.size.saturating_sub(c.offset))
                    ))
                } else {
                    e.context(format!("writing {}", self.disk.image))
                }
            })?;
            self.tally.sent += u64::from(c.len);
            c.sha256
        };
        self.map.set_chunk(c.offset, u64::from(c.len), &c.bad);
        if !c.bad.is_empty() {
            self.map_dirty = true;
        }
        self.pending.push((index, digest));
        Ok(())
    }

    /// The image, read back where the whole-image hasher fell behind.
    fn read_back(&self) -> Option<File> {
        self.img.try_clone().ok()
    }

    fn checkpoint(&mut self) -> Result<()> {
        if !self.pending.is_empty() {
            // The map must know about unreadable ranges before the journal
            // claims their chunks, or a crash would lose that knowledge.
            if self.map_dirty {
                self.write_map()?;
            }
            if self.syncer.is_none() {
                self.syncer = Some(Syncer::start(&self.img, &self.journal, &self.disk.image)?);
            }
            if let Some(sy) = &self.syncer {
                match sy.tx.try_send(std::mem::take(&mut self.pending)) {
                    Ok(()) => {}
                    // Still syncing the previous batch: keep collecting.
                    Err(TrySendError::Full(batch)) => self.pending = batch,
                    Err(TrySendError::Disconnected(batch)) => {
                        // The thread ended with an error; flush() reports it.
                        self.pending = batch;
                        return self.flush();
                    }
                }
            }
        }
        if self.map_written.elapsed().as_secs() >= 10 {
            self.write_map()?;
        }
        Ok(())
    }
}

/// Makes `len` bytes of `dst` at `offset` share the extents of `src` at the
/// same offset (FICLONERANGE: btrfs, XFS with reflink). Fails where the
/// filesystem cannot, or the range is not aligned to its blocks.
pub(crate) fn clone_range(src: &File, dst: &File, offset: u64, len: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let range = libc::file_clone_range {
        src_fd: i64::from(src.as_raw_fd()),
        src_offset: offset,
        src_length: len,
        dest_offset: offset,
    };
    // SAFETY: the ioctl reads the struct above, which outlives the call; both
    // descriptors are our own open files.
    let r = unsafe { libc::ioctl(dst.as_raw_fd(), libc::FICLONERANGE, &range) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Copies `len` bytes of `src` at `offset` into `dst` at the same offset in
/// the kernel (copy_file_range: itself a reflink on some filesystems).
fn copy_range(src: &File, dst: &File, offset: u64, len: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let (mut from, mut to) = (offset as libc::loff_t, offset as libc::loff_t);
    let mut left = len as usize;
    while left > 0 {
        // SAFETY: the offsets are ours and outlive the call; no buffer is passed.
        let n = unsafe {
            libc::copy_file_range(
                src.as_raw_fd(),
                &mut from,
                dst.as_raw_fd(),
                &mut to,
                left,
                0,
            )
        };
        match n {
            n if n > 0 => left -= n as usize,
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            _ => return Err(std::io::Error::last_os_error()),
        }
    }
    Ok(())
}

/// The base backup of an incremental backup, read by the receiver: a disk's
/// image and journal, opened once.
pub(crate) struct StoreBase {
    img: File,
    journal: File,
    chunk: u32,
}

impl StoreBase {
    pub(crate) fn open(b: &BackupDir, d: &ManifestDisk) -> Result<StoreBase> {
        Ok(StoreBase {
            img: b.dir.open_file(&d.image, Access::Read)?,
            journal: b.dir.open_file(&d.chunks, Access::Read)?,
            chunk: b.manifest.chunk_size,
        })
    }

    /// Another descriptor of the image, for the sink to fill from.
    pub(crate) fn image(&self) -> Result<File> {
        self.img
            .try_clone()
            .context("duplicating the base image's descriptor")
    }
}

impl BaseChunks for StoreBase {
    fn chunk(&self, offset: u64, len: u32) -> Result<([u8; 32], Vec<u8>)> {
        let mut rec = [0u8; 32];
        let index = offset / u64::from(self.chunk);
        self.journal
            .read_exact_at(&mut rec, index * DIGEST)
            .context("reading the base journal")?;
        let mut data = crate::wire::bufpool::take(len as usize);
        if let Err(e) = self.img.read_exact_at(&mut data, offset) {
            crate::wire::bufpool::give(data);
            return Err(anyhow::Error::new(e).context("reading the base image"));
        }
        Ok((rec, data))
    }
}

fn is_enospc(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .and_then(|io| io.raw_os_error())
            == Some(libc::ENOSPC)
    })
}

/// Makes a range read as zeros: punch a hole, or write zeros where that fails.
pub(crate) fn punch_or_zero(f: &File, offset: u64, len: u64) -> Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: fallocate on our own open descriptor; no memory is passed.
    let r = unsafe {
        libc::fallocate(
            f.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset as libc::off_t,
            len as libc::off_t,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let zeros = vec![0u8; len.min(1 << 20) as usize];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(zeros.len() as u64) as usize;
        f.write_all_at(&zeros[..n], offset + done)
            .context("writing zeros")?;
        done += n as u64;
    }
    Ok(())
}

/// What reading an image back against its journal found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ImageCheck {
    /// SHA-256 of the whole image as read (damaged chunks included), to tell a
    /// damaged image from a damaged journal.
    pub(crate) sha256: String,
    /// Chunks the journal holds no digest for (not received).
    pub(crate) missing: Vec<u64>,
    /// Chunks whose data does not match their journal digest.
    pub(crate) mismatched: Vec<u64>,
}

impl ImageCheck {
    pub(crate) fn ok(&self) -> bool {
        self.missing.is_empty() && self.mismatched.is_empty()
    }
}

/// Reads an image back and checks every chunk against its journal digest,
/// computing the whole-image SHA-256 in the same pass. With `progress`,
/// reports bytes checked.
pub(crate) fn verify_image(
    dir: &Dir,
    d: &ManifestDisk,
    chunk: u32,
    zeros: &mut ZeroDigests,
    progress: Option<&crate::xfer::progress::Bar>,
) -> Result<ImageCheck> {
    let img = dir.open_file(&d.image, Access::Read)?;
    let journal = dir.open_file(&d.chunks, Access::Read)?;
    if img.metadata()?.len() != d.size {
        bail!(
            "{} is {} bytes, the manifest says {}",
            d.image,
            img.metadata()?.len(),
            d.size
        );
    }
    let mut whole = Sha256Stream::new();
    let (mut missing, mut mismatched) = (Vec::new(), Vec::new());
    let mut rec = [0u8; 32];
    let mut i = 0u64;
    // Chunk by chunk, read ahead on another thread while this one hashes.
    crate::system::readahead::for_each_piece(
        &img,
        0,
        d.size,
        chunk as usize,
        |_, b| -> Result<()> {
            let index = i;
            i += 1;
            if journal.read_exact_at(&mut rec, index * DIGEST).is_err() || rec == [0u8; 32] {
                whole.update(b);
                missing.push(index);
                return Ok(());
            }
            // The chunk's digest and the image's from one pass over the bytes.
            let got = if xfer::is_zero(b) {
                whole.update_zeros(b.len() as u64);
                zeros.get(b.len() as u32)
            } else {
                whole.update_and_digest(b)
            };
            if got != rec {
                mismatched.push(index);
            }
            if let Some(p) = progress {
                p.inc(b.len() as u64);
            }
            Ok(())
        },
    )
    .with_context(|| format!("reading {}", d.image))?;
    Ok(ImageCheck {
        sha256: hex(&whole.finish()),
        missing,
        mismatched,
    })
}

/// Reads a stored image for a restore, checking each chunk against the journal
/// so a store that rotted is caught before its bytes reach a disk.
pub(crate) struct ImageSource {
    img: File,
    journal: File,
    name: String,
    chunk: u32,
    /// Hand out a damaged chunk marked as such (the client understands
    /// FLAG_DAMAGED) instead of failing the whole restore.
    pub(crate) mark_damaged: bool,
    /// A used-block backup's free ranges: zeros in the image, left out of the
    /// chunks sent (FLAG_FREE).
    free: Option<crate::proto::msg::FreeMap>,
}

impl ImageSource {
    pub(crate) fn open(b: &BackupDir, d: &ManifestDisk) -> Result<ImageSource> {
        Ok(ImageSource {
            img: b.dir.open_file(&d.image, Access::Read)?,
            journal: b.dir.open_file(&d.chunks, Access::Read)?,
            name: d.image.clone(),
            chunk: b.manifest.chunk_size,
            mark_damaged: false,
            free: d.free.clone(),
        })
    }

    pub(crate) fn read(&self, offset: u64, len: u32) -> Result<RawChunk> {
        let mut data = crate::wire::bufpool::take(len as usize);
        let free = self
            .free
            .as_ref()
            .map_or_else(Vec::new, |f| f.within(offset, len));
        match self.img.read_exact_at(&mut data, offset) {
            Ok(()) => Ok(RawChunk {
                data,
                bad: Vec::new(),
                free,
                zeros: None,
            }),
            // The store's own disk failing there: the chunk is damaged, the
            // rest may still be restored. Stored chunks have no unreadable
            // ranges otherwise, so `digest` knows it by this one.
            Err(_) if self.mark_damaged => Ok(RawChunk {
                data,
                bad: vec![(0, len)],
                free,
                zeros: None,
            }),
            Err(e) => {
                Err(anyhow::Error::new(e).context(format!("reading {} at {offset}", self.name)))
            }
        }
    }

    /// Hashes a chunk and compares it with the digest recorded at backup time.
    pub(crate) fn digest(
        &self,
        offset: u64,
        raw: RawChunk,
        known: Known,
        zeros: &mut ZeroDigests,
    ) -> Result<OutChunk> {
        let mut rec = [0u8; 32];
        let index = offset / u64::from(self.chunk);
        self.journal
            .read_exact_at(&mut rec, index * DIGEST)
            .with_context(|| format!("reading the digest of chunk {index} of {}", self.name))?;
        let len = raw.data.len() as u32;
        let zero = known.zero;
        let got = if zero {
            zeros.get(len)
        } else {
            known.sha256.unwrap_or_else(|| xfer::sha256(&raw.data))
        };
        if (got != rec || !raw.bad.is_empty()) && self.mark_damaged {
            eprintln!(
                "{}: the chunk at offset {offset} is damaged in the store; the peer is told so",
                self.name
            );
            crate::wire::bufpool::give(raw.data);
            return Ok(OutChunk {
                offset,
                len,
                zero: false,
                sha256: [0; 32],
                bad: Vec::new(),
                data: Vec::new(),
                damaged: true,
                free: Vec::new(),
                unchanged: false,
            });
        }
        if got != rec {
            bail!(
                "the stored image {} is damaged at offset {offset} (its digest does not match the one recorded at backup time); this backup cannot be restored faithfully",
                self.name
            );
        }
        Ok(OutChunk {
            offset,
            len,
            zero,
            sha256: got,
            bad: raw.bad,
            data: if zero {
                crate::wire::bufpool::give(raw.data);
                Vec::new()
            } else {
                raw.data
            },
            damaged: false,
            free: raw.free,
            unchanged: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn disk(size: u64) -> ManifestDisk {
        ManifestDisk {
            name: "d".into(),
            source_name: "d".into(),
            source_path: "/dev/d".into(),
            size,
            logical_sector_size: 512,
            image: "d.img".into(),
            map: "d.map".into(),
            chunks: "d.chunks".into(),
            ..Default::default()
        }
    }

    #[test]
    fn resume_brings_a_stale_map_in_line_with_the_journal() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = Dir::open(tmp.path()).unwrap();
        // 10 chunks of 64 KiB, the last one short. The journal holds 0-6 and
        // 9; the map was last written after chunk 2 (one unreadable range in
        // chunk 1) and still claims chunk 8, dropped from the journal later.
        let (c, d) = (64 * 1024u64, disk(9 * 64 * 1024 + 1000));
        let j = dir.open_file("d.chunks", Access::Create).unwrap();
        let batch: Vec<(u64, [u8; 32])> = [0, 1, 2, 3, 4, 5, 6, 9].map(|i| (i, [7; 32])).to_vec();
        write_journal(&j, &batch).unwrap();
        let mut stale = Map::new(d.size);
        stale.set_chunk(0, 3 * c, &[(70_000, 512)]);
        stale.set(8 * c, c, BlockStatus::Finished);
        save_map(&dir, &d, &stale).unwrap();

        let held = resume_ranges(&dir, &d, c as u32).unwrap();
        assert_eq!(held.to_vec(), vec![(0, 7), (9, 10)]);
        let map = read_map(&dir, &d).unwrap();
        assert_eq!(map.ranges(BlockStatus::Bad), vec![(70_000, 512)]);
        assert_eq!(map.ranges(BlockStatus::NonTried), vec![(7 * c, 2 * c)]);
        assert_eq!(map.bytes(BlockStatus::Finished), d.size - 2 * c - 512);

        // Without a readable map the journal cannot say which chunks had
        // unreadable sectors: it is dropped and everything is received again.
        std::fs::write(dir.path().join("d.map"), "garbage\n").unwrap();
        assert_eq!(resume_ranges(&dir, &d, c as u32).unwrap().to_vec(), vec![]);
        assert_eq!(journal_ranges(&dir, &d, c as u32).unwrap().to_vec(), vec![]);
        assert_eq!(read_map(&dir, &d).unwrap(), Map::new(d.size));
    }

    #[test]
    fn a_backup_directory_swapped_for_a_link_is_not_followed() {
        // The held directory stays the one opened: replacing its path by a
        // link to somewhere else must not send the map and journal there.
        let tmp = tempfile::tempdir().unwrap();
        let (real, moved, outside) = (
            tmp.path().join("b"),
            tmp.path().join("b.moved"),
            tmp.path().join("outside"),
        );
        std::fs::create_dir(&real).unwrap();
        std::fs::create_dir(&outside).unwrap();
        let dir = Dir::open(&real).unwrap();
        let (c, d) = (64 * 1024u64, disk(4 * 64 * 1024));
        write_journal(
            &dir.open_file("d.chunks", Access::Create).unwrap(),
            &[(0, [7; 32])],
        )
        .unwrap();
        std::fs::rename(&real, &moved).unwrap();
        std::os::unix::fs::symlink(&outside, &real).unwrap();

        assert_eq!(resume_ranges(&dir, &d, c as u32).unwrap().to_vec(), vec![]);
        save_map(&dir, &d, &Map::new(d.size)).unwrap();
        assert!(moved.join("d.map").exists());
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    }

    #[test]
    fn journal_runs_are_written_whole_and_read_back_with_gaps_as_zeros() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = Dir::open(tmp.path()).unwrap();
        let j = dir.open_file("d.chunks", Access::Create).unwrap();
        // Two runs (3..6 and 9..10), out of the order they came in.
        let batch: Vec<(u64, [u8; 32])> = [9u64, 3, 4, 5]
            .iter()
            .map(|&i| (i, [i as u8 + 1; 32]))
            .collect();
        write_journal(&j, &batch).unwrap();
        let got = journal_digests(&dir, "d.chunks", 2, 10).unwrap();
        assert_eq!(got.len(), 10 * 32);
        for (k, rec) in got.chunks(32).enumerate() {
            let i = 2 + k as u64;
            let want = if [3, 4, 5, 9].contains(&i) {
                i as u8 + 1
            } else {
                0
            };
            assert!(rec.iter().all(|&b| b == want), "chunk {i}: {rec:?}");
        }
    }
}
