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

use std::os::unix::fs::MetadataExt;

use super::dir::{Access, Dir, errno_of};
use super::{BackupDir, ManifestDisk, Store, names};
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
/// disk: a resumed backup's journal) at its full length, less what a reflink
/// from the base gives without space (`credit`, per disk; for a resumed disk
/// in proportion to what is not held), and the journals. Zero chunks become
/// holes and need nothing, but which chunks are zero is known only once they
/// are read, so the full length is counted.
pub(super) fn space_needed(begin: &BackupBegin, have: &[ChunkRanges], credit: &[u64]) -> u64 {
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
        let left = d.size.saturating_sub(held);
        let free = credit.get(i).map_or(0, |&c| {
            (u128::from(c.min(d.size)) * u128::from(left) / u128::from(d.size.max(1))) as u64
        });
        need = need
            .saturating_add(left - free.min(left))
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
const CLONE_PROBE: &str = ".clone-probe.tmp";

/// Whether the filesystem of `root` clones `src`'s extents into a new file
/// (FICLONERANGE: btrfs, XFS with reflink); the probe file is removed again.
fn clones_into(src: &std::fs::File, root: &Dir) -> bool {
    let Ok(m) = src.metadata() else {
        return false;
    };
    // One block, or the whole file when it is shorter (a clone may end at EOF).
    let len = m.blksize().min(m.len());
    let Ok(dst) = root.create_fresh(CLONE_PROBE) else {
        return false;
    };
    let ok = len > 0 && super::image::clone_range(src, &dst, 0, len).is_ok();
    drop(dst);
    let _ = root.remove(CLONE_PROBE);
    ok
}

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
    /// Per disk of a backup made against `base`, the bytes a reflink of its
    /// base disk's image gives it without taking space: the blocks that image
    /// holds, when this store clones between files (tried once, on a probe
    /// file); else nothing, since a copy takes as much space as data sent.
    pub(super) fn clone_credit(
        &self,
        base: Option<&BackupDir>,
        disks: &[ManifestDisk],
    ) -> Vec<u64> {
        let mut credit = vec![0; disks.len()];
        let Some(base) = base else {
            return credit;
        };
        let mut clones = None;
        for (c, d) in credit.iter_mut().zip(disks) {
            let Some(bd) = super::base_disk(&base.manifest, d) else {
                continue;
            };
            let Ok(img) = base.dir.open_file(&bd.image, Access::Read) else {
                continue;
            };
            if *clones.get_or_insert_with(|| clones_into(&img, &self.root)) {
                *c = img.metadata().map_or(0, |m| m.blocks().saturating_mul(512));
            }
        }
        credit
    }

    /// Refuses, at BACKUP_BEGIN, a backup the store cannot hold: too few
    /// inodes, a disk larger than the filesystem's largest file, too little
    /// free space for what is not held yet (`have`; unless `space_check` is off).
    pub(super) fn check_room(
        &self,
        begin: &BackupBegin,
        have: &[ChunkRanges],
        credit: &[u64],
    ) -> Result<()> {
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
        let need = space_needed(begin, have, credit);
        if need > free {
            let cloned: u64 = credit.iter().sum();
            let m = format!(
                "no space left in the store {} for this backup: it can need {}{}, {} is free, {} missing (zero chunks take no space, but which are zero is known only while reading); free space or use a larger store, or start serve with --no-space-check for mostly empty disks",
                self.dir().display(),
                human_bytes(need),
                if cloned > 0 {
                    format!(
                        " besides the {} its base gives by reflink",
                        human_bytes(cloned)
                    )
                } else {
                    String::new()
                },
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
        assert_eq!(space_needed(&b, &[], &[]), 14 * mib + mib / 2 + journals);
        // Resumed: chunks 0..3 and the short last one (10) of the first disk
        // held, all of the second.
        let have = vec![
            ChunkRanges::from(vec![(0, 3), (10, 11)]),
            ChunkRanges::from(vec![(0, 4)]),
        ];
        assert_eq!(space_needed(&b, &have, &[]), 7 * mib + journals);
        // A reflink of the base gives the first disk 6 MiB: 10.5 - 6 left to
        // write; resumed with 7 of its 10.5 MiB missing, 2/3 of the 6 MiB.
        let credit = [6 * mib, 0];
        assert_eq!(space_needed(&b, &[], &credit), 8 * mib + mib / 2 + journals);
        assert_eq!(space_needed(&b, &have, &credit), 3 * mib + journals);
        // Never more than the disk.
        assert_eq!(space_needed(&b, &[], &[64 * mib, 0]), 4 * mib + journals);
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
