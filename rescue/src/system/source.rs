//! Reading the disk to back up, failing disks included: a read error does not
//! stop the backup. The chunk is read again in smaller pieces, then sector by
//! sector (with O_DIRECT on block devices, so one bad sector does not poison a
//! whole page-cache page); sectors that still fail become zeros and are reported
//! so the receiver's mapfile marks them `-`. An image file's holes are not
//! read at all: the filesystem says they read as zeros.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result, bail};

use crate::Root;
use crate::system::blkdev;
use crate::xfer::RawChunk;

/// Positioned reads, so tests can inject errors.
pub trait BlockRead: Send + Sync {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;

    /// The parts of `len` bytes at `offset` that read as zeros without being
    /// read (holes), as sorted (start, length) pairs relative to `offset`;
    /// none where that is not known.
    fn holes(&self, _offset: u64, _len: u32) -> Vec<(u32, u32)> {
        Vec::new()
    }
}

impl BlockRead for File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        FileExt::read_at(self, buf, offset)
    }
}

/// An image file (a regular file): its holes are found with SEEK_DATA and
/// SEEK_HOLE and not read. Those, unlike FIEMAP without a sync, see data still
/// in the page cache, and a range they call a hole reads as zeros (unwritten
/// extents included), which is all that is relied on. A file written while it
/// is backed up gives, for each range, its bytes at one moment or another, as
/// reading it would.
struct ImageFile(File);

impl BlockRead for ImageFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        FileExt::read_at(&self.0, buf, offset)
    }

    fn holes(&self, offset: u64, len: u32) -> Vec<(u32, u32)> {
        holes_of(&self.0, offset, len)
    }
}

/// The holes of `f` within `len` bytes at `offset` (relative). Any answer
/// that does not make sense, or an error, ends the search: what is left is
/// read (a filesystem without SEEK_DATA reports the whole file as data).
fn holes_of(f: &File, offset: u64, len: u32) -> Vec<(u32, u32)> {
    use nix::unistd::{Whence, lseek};
    let end = offset + u64::from(len);
    let mut out = Vec::new();
    let mut pos = offset;
    while pos < end {
        let data = match lseek(f, pos as i64, Whence::SeekData) {
            Ok(d) if d >= 0 && d as u64 >= pos => (d as u64).min(end),
            // No data from `pos` on, or `pos` past the end: a hole only up to
            // the file's present end (a shrunk file fails in the read instead).
            Err(nix::errno::Errno::ENXIO) => match f.metadata() {
                Ok(m) => m.len().clamp(pos, end),
                Err(_) => pos,
            },
            _ => pos,
        };
        if data > pos {
            out.push(((pos - offset) as u32, (data - pos) as u32));
        }
        if data >= end {
            break;
        }
        pos = match lseek(f, data as i64, Whence::SeekHole) {
            Ok(h) if h >= 0 && h as u64 > data => h as u64,
            _ => break,
        };
    }
    out
}

/// The union of two sorted lists of (start, length) ranges, sorted and merged.
fn union(a: &[(u32, u32)], b: &[(u32, u32)]) -> Vec<(u32, u32)> {
    let mut all: Vec<(u32, u32)> = a.iter().chain(b).copied().collect();
    all.sort_unstable();
    let mut out: Vec<(u32, u32)> = Vec::with_capacity(all.len());
    for (s, l) in all {
        match out.last_mut() {
            Some(last) if s <= last.0 + last.1 => {
                last.1 = (last.0 + last.1).max(s + l) - last.0;
            }
            _ => out.push((s, l)),
        }
    }
    out
}

/// First retry granularity after a failed chunk read.
const PIECE: usize = 64 * 1024;

/// A disk (or image file) being backed up.
pub struct DiskReader {
    primary: Box<dyn BlockRead>,
    /// Unbuffered descriptor for sector-sized retries (block devices).
    direct: Option<Box<dyn BlockRead>>,
    sector: u32,
    size: u64,
    /// Bytes of holes not read (outside free ranges), for the summary.
    holes: AtomicU64,
}

impl DiskReader {
    pub fn new(
        primary: Box<dyn BlockRead>,
        direct: Option<Box<dyn BlockRead>>,
        sector: u32,
        size: u64,
    ) -> Self {
        DiskReader {
            primary,
            direct,
            sector: sector.max(512),
            size,
            holes: AtomicU64::new(0),
        }
    }

    /// Bytes of the source's holes left unread so far (they read as zeros).
    pub(crate) fn hole_bytes(&self) -> u64 {
        self.holes.load(Ordering::Relaxed)
    }

    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// Reads exactly `buf.len()` bytes at `offset`, no retries (the used-block
    /// probes: a filesystem whose metadata cannot be read is copied whole).
    pub(crate) fn read_plain(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        read_exact(&*self.primary, buf, offset)
    }

    /// Reads `len` bytes at `offset`. Unreadable sectors come back as zeros and
    /// are listed (relative to `offset`) in `bad`.
    pub(crate) fn read_chunk(&self, offset: u64, len: u32) -> Result<RawChunk> {
        self.read_used(offset, len, Vec::new())
    }

    /// Reads the chunk at `offset` but for its `free` ranges (sorted, relative),
    /// which stay zeros and are neither read nor sent: a used-block backup.
    /// Holes of an image file are not read either (zeros, sent as such).
    pub(crate) fn read_used(
        &self,
        offset: u64,
        len: u32,
        free: Vec<(u32, u32)>,
    ) -> Result<RawChunk> {
        let holes = self.primary.holes(offset, len);
        let skip = if holes.is_empty() {
            free.clone()
        } else {
            union(&holes, &free)
        };
        let skipped = |r: &[(u32, u32)]| r.iter().map(|&(_, l)| u64::from(l)).sum::<u64>();
        self.holes
            .fetch_add(skipped(&skip) - skipped(&free), Ordering::Relaxed);
        let parts = crate::proto::msg::used_parts(len, &skip);
        if parts.is_empty() && !skip.is_empty() {
            // Nothing to read: known zeros, without a buffer to fill or scan.
            return Ok(RawChunk {
                data: Vec::new(),
                bad: Vec::new(),
                free,
                zeros: Some(len),
            });
        }
        // What is skipped stays as `take` zeroed it; a chunk read whole is
        // overwritten byte for byte (unreadable sectors are filled with zeros).
        let mut data = if skip.is_empty() {
            crate::wire::bufpool::take_to_overwrite(len as usize)
        } else {
            crate::wire::bufpool::take(len as usize)
        };
        let mut bad = Vec::new();
        for (s, e) in parts {
            let piece = &mut data[s as usize..e as usize];
            self.read_into(piece, offset + u64::from(s), s, &mut bad)?;
        }
        Ok(RawChunk {
            data,
            bad,
            free,
            zeros: None,
        })
    }

    /// Fills `data` from `offset`, retrying in pieces and then sector by sector;
    /// unreadable sectors become zeros, listed in `bad` relative to the chunk
    /// (`rel` is where `data` starts in it).
    fn read_into(
        &self,
        data: &mut [u8],
        offset: u64,
        rel: u32,
        bad: &mut Vec<(u32, u32)>,
    ) -> Result<()> {
        if read_exact(&*self.primary, data, offset).is_ok() {
            return Ok(());
        }
        let mut pos = 0usize;
        while pos < data.len() {
            let n = PIECE.min(data.len() - pos);
            if read_exact(&*self.primary, &mut data[pos..pos + n], offset + pos as u64).is_err() {
                self.read_sectors(
                    &mut data[pos..pos + n],
                    offset + pos as u64,
                    rel + pos as u32,
                    bad,
                )?;
            }
            pos += n;
        }
        Ok(())
    }

    fn read_sectors(
        &self,
        buf: &mut [u8],
        offset: u64,
        rel: u32,
        bad: &mut Vec<(u32, u32)>,
    ) -> Result<()> {
        let s = self.sector as usize;
        let mut aligned = crate::system::direct::AlignedBuf::new(s);
        let mut pos = 0usize;
        while pos < buf.len() {
            let n = s.min(buf.len() - pos);
            let off = offset + pos as u64;
            let ok = match &self.direct {
                Some(d) if n == s => {
                    let b = aligned.get_mut(s);
                    if read_exact(&**d, b, off).is_ok() {
                        buf[pos..pos + n].copy_from_slice(b);
                        true
                    } else {
                        false
                    }
                }
                _ => read_exact(&*self.primary, &mut buf[pos..pos + n], off).is_ok(),
            };
            if !ok {
                buf[pos..pos + n].fill(0);
                let r = rel + pos as u32;
                match bad.last_mut() {
                    Some(last) if last.0 + last.1 == r => last.1 += n as u32,
                    _ => bad.push((r, n as u32)),
                }
            }
            pos += n;
        }
        Ok(())
    }
}

fn read_exact(r: &dyn BlockRead, buf: &mut [u8], offset: u64) -> io::Result<()> {
    // Reported in keepalives: a disk read sector by sector is slow, not stuck.
    crate::wire::conn::note_work();
    let mut done = 0;
    while done < buf.len() {
        match r.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "source shrank while reading",
                ));
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// What is being backed up.
pub struct Source {
    /// Short name: "nvme0n1", or an image file's stem.
    pub name: String,
    pub path: PathBuf,
    pub size: u64,
    pub sector: u32,
    pub model: Option<String>,
    pub serial: Option<String>,
    pub details: Option<serde_json::Value>,
    /// Why using it live is risky (mounted), for a warning.
    pub busy: Option<String>,
    pub reader: DiskReader,
}

/// Opens a disk named like `nvme0n1`, `/dev/sda` or `/dev/disk/by-id/...`, or an
/// image file path.
pub(crate) fn open(root: &Root, spec: &str) -> Result<Source> {
    let path = root.disk_path(spec);
    let file = File::open(&path).map_err(|e| {
        let hint = match e.kind() {
            io::ErrorKind::NotFound => "no such disk or file; `rescue disks` lists the disks",
            io::ErrorKind::PermissionDenied => "permission denied; run as root",
            _ => "cannot open it",
        };
        anyhow::anyhow!("{spec}: {hint} ({e})")
    })?;
    let meta = file
        .metadata()
        .with_context(|| format!("inspecting {spec}"))?;
    let is_block = blkdev::is_block(&file);
    if !is_block && !meta.is_file() {
        bail!("{spec} is neither a disk nor an image file");
    }
    let size = blkdev::size_of(&file).with_context(|| format!("reading the size of {spec}"))?;
    if size == 0 {
        bail!("{spec} is empty (0 bytes): nothing to back up");
    }
    let sector = blkdev::logical_sector(&file);
    let canon = std::fs::canonicalize(&path).unwrap_or(path.clone());
    let fname = canon
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| spec.to_string());
    let (name, model, serial, details, busy) = if is_block {
        match crate::system::disks::find(root, &fname) {
            Ok(d) => (
                fname.clone(),
                d.model.clone(),
                d.serial.clone(),
                serde_json::to_value(&d).ok(),
                d.busy_reason(),
            ),
            Err(_) => (fname.clone(), None, None, None, None),
        }
    } else {
        let stem = canon
            .file_stem()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or(fname);
        (stem, None, None, None, None)
    };
    let direct: Option<Box<dyn BlockRead>> = if is_block {
        OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)
            .ok()
            .map(|f| Box::new(f) as Box<dyn BlockRead>)
    } else {
        None
    };
    Ok(Source {
        name,
        path: canon,
        size,
        sector,
        model,
        serial,
        details,
        busy,
        reader: DiskReader::new(primary(file, is_block), direct, sector, size),
    })
}

/// How the source is read: an image file with its holes skipped, unless the
/// data it was written with cannot be flushed first (a filesystem that reports
/// holes for data not yet on disk would otherwise lose it, as OpenZFS did in
/// 2.2.0); a disk as it is.
fn primary(file: File, is_block: bool) -> Box<dyn BlockRead> {
    if !is_block && file.sync_data().is_ok() {
        Box::new(ImageFile(file))
    } else {
        Box::new(file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 64 KiB "disk" of 0xAB bytes whose sectors 10..13 always fail.
    struct Flaky;
    impl BlockRead for Flaky {
        fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
            let (s, e) = (offset, offset + buf.len() as u64);
            if s < 13 * 512 && e > 10 * 512 {
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            buf.fill(0xAB);
            Ok(buf.len())
        }
    }

    #[test]
    fn unreadable_sectors_become_zeros_and_are_reported() {
        let r = DiskReader::new(Box::new(Flaky), None, 512, 65536);
        let c = r.read_chunk(0, 65536).unwrap();
        assert_eq!(c.bad, vec![(5120, 1536)]);
        assert!(c.data[5120..6656].iter().all(|&b| b == 0));
        assert!(c.data[..5120].iter().all(|&b| b == 0xAB));
        assert!(c.data[6656..].iter().all(|&b| b == 0xAB));
        let c = r.read_chunk(8192, 4096).unwrap();
        assert!(c.bad.is_empty());
    }

    /// Bytes this thread has read (rchar of /proc/thread-self/io): the
    /// reader reads on the calling thread.
    fn read_by_this_thread() -> u64 {
        let io = std::fs::read_to_string("/proc/thread-self/io").unwrap();
        let rchar = io.lines().find_map(|l| l.strip_prefix("rchar:")).unwrap();
        rchar.trim().parse().unwrap()
    }

    #[test]
    fn an_image_files_holes_are_not_read_and_come_back_as_zeros() {
        const MIB: u64 = 1 << 20;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sparse.img");
        let f = File::create(&path).unwrap();
        f.set_len(32 * MIB).unwrap();
        // A whole chunk of data, and 100 KB inside another (the rest of it holes).
        f.write_all_at(&vec![0xA5u8; MIB as usize], 8 * MIB)
            .unwrap();
        let part: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8 + 1).collect();
        f.write_all_at(&part, 20 * MIB + 300_000).unwrap();
        f.sync_all().unwrap();
        let first = nix::unistd::lseek(&f, 0, nix::unistd::Whence::SeekData);
        if first != Ok(8 * MIB as i64) {
            eprintln!(
                "{}: no holes reported ({first:?}), nothing to check",
                path.display()
            );
            return;
        }
        drop(f);
        let src = open(&Root::host(), path.to_str().unwrap()).unwrap();
        let before = read_by_this_thread();
        let mut image = Vec::new();
        for off in (0..32 * MIB).step_by(MIB as usize) {
            let c = src.reader.read_chunk(off, MIB as u32).unwrap();
            assert_eq!(c.len(), MIB as u32);
            match c.zeros {
                Some(n) => image.resize(image.len() + n as usize, 0),
                None => image.extend_from_slice(&c.data),
            }
        }
        let read = read_by_this_thread() - before;
        assert!(
            image == std::fs::read(&path).unwrap(),
            "the chunks differ from the file"
        );
        // 1 MiB and the filesystem blocks around the 100 KB: not the 32 MiB.
        assert!(read < MIB + MIB / 4, "{read} bytes read for 1.1 MB of data");
    }

    #[test]
    fn ranges_unite() {
        assert_eq!(
            union(&[(0, 10), (50, 10)], &[(5, 10), (60, 5)]),
            [(0, 15), (50, 15)]
        );
        assert_eq!(union(&[], &[(3, 4)]), [(3, 4)]);
        assert_eq!(union(&[(0, 4)], &[(4, 4), (9, 1)]), [(0, 8), (9, 1)]);
    }
}
