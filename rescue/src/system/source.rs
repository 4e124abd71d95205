//! Reading the disk to back up, failing disks included: a read error does not
//! stop the backup. The chunk is read again in smaller pieces, then sector by
//! sector (with O_DIRECT on block devices, so one bad sector does not poison a
//! whole page-cache page); sectors that still fail become zeros and are reported
//! so the receiver's mapfile marks them `-`.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;

use anyhow::{Context, Result, bail};

use crate::Root;
use crate::system::blkdev;
use crate::xfer::RawChunk;

/// Positioned reads, so tests can inject errors.
pub trait BlockRead: Send + Sync {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
}

impl BlockRead for File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        FileExt::read_at(self, buf, offset)
    }
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
        }
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
        let mut data = crate::wire::bufpool::take(len as usize);
        let mut bad = Vec::new();
        self.read_into(&mut data, offset, 0, &mut bad)?;
        Ok(RawChunk {
            data,
            bad,
            free: Vec::new(),
        })
    }

    /// Reads the chunk at `offset` but for its `free` ranges (sorted, relative),
    /// which stay zeros and are neither read nor sent: a used-block backup.
    pub(crate) fn read_used(
        &self,
        offset: u64,
        len: u32,
        free: Vec<(u32, u32)>,
    ) -> Result<RawChunk> {
        if free.is_empty() {
            return self.read_chunk(offset, len);
        }
        // bufpool hands out zeroed buffers: the free ranges are zeros already.
        let mut data = crate::wire::bufpool::take(len as usize);
        let mut bad = Vec::new();
        for (s, e) in crate::proto::msg::used_parts(len, &free) {
            let piece = &mut data[s as usize..e as usize];
            self.read_into(piece, offset + u64::from(s), s, &mut bad)?;
        }
        Ok(RawChunk { data, bad, free })
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
        reader: DiskReader::new(Box::new(file), direct, sector, size),
    })
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
}
