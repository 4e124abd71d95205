//! Whether the store can take a backup: writable when serve starts; at
//! BACKUP_BEGIN, a filesystem that allows files as large as the disks and
//! enough free space and inodes. A refusal names what is missing and carries
//! the ERROR code the peer gets.

use std::fmt;

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::sys::statfs::{FsType, MSDOS_SUPER_MAGIC, fstatfs};
use nix::sys::statvfs::{FsFlags, fstatvfs};
use nix::unistd::{AccessFlags, faccessat};

use super::dir::{Dir, errno_of};
use super::{Store, names};
use crate::exit::{self, Exit};
use crate::proto::msg::{BackupBegin, ChunkRanges};
use crate::util::human_bytes;
use crate::xfer::Geometry;

/// The store cannot take a request; `code` is the ERROR code sent to the peer.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub(crate) code: &'static str,
    pub(crate) message: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Refusal {}

/// The ERROR code for a request the store failed: a refusal's own; `no_space`
/// when the filesystem ran out of space or inodes (or a quota), so the user
/// learns to free space rather than that the request was malformed; `io` for
/// other failures of the store; `bad_request` for a request it rejected.
pub(crate) fn error_code(e: &anyhow::Error) -> &'static str {
    if let Some(r) = e.chain().find_map(|c| c.downcast_ref::<Refusal>()) {
        return r.code;
    }
    match errno_of(e) {
        Some(Errno::ENOSPC | Errno::EDQUOT) => "no_space",
        Some(Errno::EFBIG) => "refused",
        Some(_) => "io",
        None => "bad_request",
    }
}

/// Refuses, when serve starts, a store it could not write to.
pub(super) fn check_writable(root: &Dir) -> Result<()> {
    let path = root.path().display();
    let st = fstatvfs(root.fd()).with_context(|| format!("examining the store {path}"))?;
    if st.flags().contains(FsFlags::ST_RDONLY) {
        return Err(Exit::new(
            exit::USAGE,
            format!(
                "the store {path} is on a read-only filesystem: remount it read-write (mount -o remount,rw) or choose another store"
            ),
        )
        .into());
    }
    if let Err(e) = faccessat(
        root.fd(),
        ".",
        AccessFlags::W_OK,
        nix::fcntl::AtFlags::empty(),
    ) {
        return Err(Exit::new(
            exit::USAGE,
            format!(
                "cannot write to the store {path}: {}; choose a directory this user may write to",
                e.desc()
            ),
        )
        .into());
    }
    Ok(())
}

/// Bytes the backup can still need: every chunk not yet held (`have`, per
/// disk: a resumed backup's journal) at its full length, and the journals.
/// Zero chunks become holes and need nothing, but which chunks are zero is
/// known only once they are read, so the full length is counted.
pub(super) fn space_needed(begin: &BackupBegin, have: &[ChunkRanges]) -> u64 {
    let mut need = 0u64;
    for (i, d) in begin.disks.iter().enumerate() {
        let geo = Geometry {
            size: d.size,
            chunk: begin.chunk_size,
        };
        let held: u64 = have.get(i).map_or(0, |r| {
            r.iter()
                .map(|&(a, b)| geo.start_of(b).saturating_sub(geo.start_of(a)))
                .sum()
        });
        need = need
            .saturating_add(d.size.saturating_sub(held))
            .saturating_add(geo.count().saturating_mul(32));
    }
    need
}

/// Inodes a backup takes: three files per disk, the manifest, SHA256SUMS, a
/// temporary file, its directory and perhaps its host's.
fn files_needed(begin: &BackupBegin) -> u64 {
    3 * begin.disks.len() as u64 + 5
}

const PROBE: &str = "size-probe.tmp";

/// The largest file the store's filesystem takes, when that is less than
/// `want` bytes. vfat's limit is known (and growing a file there writes
/// zeros); elsewhere a sparse probe file is grown to `want`, which costs no
/// space, and on EFBIG the limit is found by bisection.
fn file_size_limit(root: &Dir, want: u64) -> Result<Option<u64>> {
    let fs = fstatfs(root.fd()).context("examining the store's filesystem")?;
    let ty = fs.filesystem_type();
    if ty == MSDOS_SUPER_MAGIC {
        const FAT_MAX: u64 = 0xFFFF_FFFF;
        return Ok((want > FAT_MAX).then_some(FAT_MAX));
    }
    // exFAT allows 16 EiB but, like vfat, fills a grown file with zeros.
    if ty == FsType(0x2011_BAB0) {
        return Ok(None);
    }
    let f = root.create_fresh(&format!(".{PROBE}"))?;
    let fits = |len: u64| match f.set_len(len) {
        Ok(()) => Ok(true),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EFBIG | libc::EINVAL)) => Ok(false),
        Err(e) => Err(e).context("probing the store's largest file size"),
    };
    let found = (|| -> Result<Option<u64>> {
        if fits(want)? {
            return Ok(None);
        }
        let (mut lo, mut hi) = (0u64, want);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if fits(mid)? {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        Ok(Some(lo))
    })();
    drop(f);
    root.remove(&format!(".{PROBE}"))?;
    found
}

fn refuse(code: &'static str, message: String) -> anyhow::Error {
    Refusal { code, message }.into()
}

impl Store {
    /// Refuses, at BACKUP_BEGIN, a backup the store cannot hold: too few
    /// inodes, a disk larger than the filesystem's largest file, too little
    /// free space for what is not held yet (`have`; unless `space_check` is off).
    pub(super) fn check_room(&self, begin: &BackupBegin, have: &[ChunkRanges]) -> Result<()> {
        let st = fstatvfs(self.root.fd()).context("examining the store's free space")?;
        // Inodes first: the largest-file probe needs one.
        let files = files_needed(begin);
        if st.files() > 0 && st.files_available() < files {
            return Err(refuse(
                "no_space",
                format!(
                    "no free inodes left in the store {}: this backup needs {files} files, {} can be created; delete old backups or use another store",
                    self.dir().display(),
                    st.files_available()
                ),
            ));
        }
        let largest = begin.disks.iter().map(|d| d.size).max().unwrap_or(0);
        if let Some(limit) = file_size_limit(&self.root, largest)? {
            let over: Vec<String> = begin
                .disks
                .iter()
                .filter(|d| d.size > limit)
                .map(|d| {
                    format!(
                        "{} ({})",
                        names::sanitize(&d.name, "disk"),
                        human_bytes(d.size)
                    )
                })
                .collect();
            return Err(refuse(
                "refused",
                format!(
                    "the store's filesystem ({}) takes files of at most {} ({limit} bytes), too small for disk {}: use a store on ext4, xfs or btrfs",
                    self.dir().display(),
                    human_bytes(limit),
                    over.join(", ")
                ),
            ));
        }
        let free = st.blocks_available().saturating_mul(st.fragment_size());
        let need = space_needed(begin, have);
        if need > free {
            let m = format!(
                "no space left in the store {} for this backup: it can need {}, {} is free, {} missing (zero chunks take no space, but which are zero is known only while reading); free space or use a larger store, or start serve with --no-space-check for mostly empty disks",
                self.dir().display(),
                human_bytes(need),
                human_bytes(free),
                human_bytes(need - free)
            );
            if self.space_check {
                return Err(refuse("no_space", m));
            }
            eprintln!("warning: {m}");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn begin(sizes: &[u64]) -> BackupBegin {
        serde_json::from_value(serde_json::json!({
            "label": null, "chunk_size": 1 << 20, "fresh": false,
            "disks": sizes.iter().map(|s| serde_json::json!({
                "name": "d", "source_path": "/dev/d", "size": s, "logical_sector_size": 512
            })).collect::<Vec<_>>()
        }))
        .unwrap()
    }

    #[test]
    fn space_needed_counts_what_is_not_held() {
        let mib = 1u64 << 20;
        // 10.5 MiB and 4 MiB: 15 chunks of journal, 32 bytes each.
        let b = begin(&[10 * mib + mib / 2, 4 * mib]);
        let journals = 15 * 32;
        assert_eq!(space_needed(&b, &[]), 14 * mib + mib / 2 + journals);
        // Resumed: chunks 0..3 and the short last one (10) of the first disk
        // held, all of the second.
        let have = vec![
            ChunkRanges::from(vec![(0, 3), (10, 11)]),
            ChunkRanges::from(vec![(0, 4)]),
        ];
        assert_eq!(space_needed(&b, &have), 7 * mib + journals);
    }

    #[test]
    fn refusals_carry_their_code_and_full_stores_are_not_bad_requests() {
        let r = refuse("refused", "too big".into()).context("starting");
        assert_eq!(error_code(&r), "refused");
        let full = anyhow::Error::new(std::io::Error::from_raw_os_error(libc::ENOSPC))
            .context("creating the backup directory");
        assert_eq!(error_code(&full), "no_space");
        let quota = anyhow::Error::new(Errno::EDQUOT).context("creating");
        assert_eq!(error_code(&quota), "no_space");
        assert_eq!(error_code(&anyhow::anyhow!("chunk size 3")), "bad_request");
    }

    #[test]
    fn a_store_fits_files_as_large_as_the_disks() {
        let t = tempfile::tempdir().unwrap();
        let d = Dir::open(t.path()).unwrap();
        assert_eq!(file_size_limit(&d, 1 << 30).unwrap(), None);
        // No probe is left behind.
        assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 0);
    }
}
