//! Store files opened relative to a held directory descriptor, never through a
//! link: every open is `O_NOFOLLOW|O_CLOEXEC`, temporary files are `O_EXCL`
//! (a stale one, or a symlink planted in its place, is unlinked first), a file
//! opened for writing must have a single link, and subdirectories are opened
//! `O_DIRECTORY|O_NOFOLLOW` from their parent's descriptor. Someone who can
//! plant a symlink or hard link in a backup directory therefore cannot make
//! serve (root) write to a file outside the store.
//!
//! Everything goes through nix's safe wrappers; the one `unsafe` of the store
//! is the signal disposition in `ignore_file_size_signal`.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use nix::errno::Errno;
use nix::fcntl::{OFlag, openat, renameat};
use nix::sys::stat::{Mode, SFlag, fstat, mkdirat};
use nix::unistd::{UnlinkatFlags, unlinkat};

use super::names;

/// How a store file is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    Read,
    /// Read and write an existing file.
    Write,
    /// Read and write, creating the file when it does not exist.
    Create,
}

/// A directory of the store, held open: names resolve relative to it.
#[derive(Clone)]
pub(crate) struct Dir {
    fd: Arc<OwnedFd>,
    path: PathBuf,
}

const FILE_MODE: u32 = 0o666;
const DIR_MODE: u32 = 0o777;

impl Dir {
    /// Opens a directory the user named (the store, or a backup given to
    /// `rescue verify`): links in that path are the user's choice.
    pub(crate) fn open(path: &Path) -> Result<Dir> {
        let fd = nix::fcntl::open(
            path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .with_context(|| format!("opening the directory {}", path.display()))?;
        Ok(Dir {
            fd: Arc::new(fd),
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// The subdirectory `name`, never a symlink.
    pub(crate) fn sub(&self, name: &str) -> Result<Dir> {
        check_name(name)?;
        let path = self.path.join(name);
        let fd = openat(
            self.fd.as_fd(),
            name,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| match e {
            Errno::ELOOP | Errno::ENOTDIR => {
                anyhow::anyhow!(
                    "{} is not a directory (refusing to follow it)",
                    path.display()
                )
            }
            e => anyhow::Error::new(e).context(format!("opening {}", path.display())),
        })?;
        Ok(Dir {
            fd: Arc::new(fd),
            path,
        })
    }

    /// Creates the subdirectory `name` and opens it; fails with `EEXIST` (as an
    /// `Errno` in the chain) when it exists already.
    pub(crate) fn create_sub(&self, name: &str) -> Result<Dir> {
        check_name(name)?;
        mkdirat(self.fd.as_fd(), name, Mode::from_bits_truncate(DIR_MODE))
            .with_context(|| format!("creating {}", self.path.join(name).display()))?;
        self.sub(name)
    }

    /// The subdirectory `name`, created when missing.
    pub(crate) fn sub_or_create(&self, name: &str) -> Result<Dir> {
        match self.create_sub(name) {
            Ok(d) => Ok(d),
            Err(e) if errno_of(&e) == Some(Errno::EEXIST) => self.sub(name),
            Err(e) => Err(e),
        }
    }

    /// Whether a regular file `name` exists here (a symlink does not count).
    pub(crate) fn has_file(&self, name: &str) -> bool {
        nix::sys::stat::fstatat(
            self.fd.as_fd(),
            name,
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .is_ok_and(|st| SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFREG)
    }

    /// Opens the regular file `name`. One opened to write must have no other
    /// hard link: writing it would change that other file too.
    pub(crate) fn open_file(&self, name: &str, access: Access) -> Result<File> {
        if !names::is_safe_file(name) {
            bail!("refusing unsafe file name {name:?}");
        }
        let path = self.path.join(name);
        let flags = OFlag::O_NOFOLLOW
            | OFlag::O_CLOEXEC
            | match access {
                Access::Read => OFlag::O_RDONLY,
                Access::Write => OFlag::O_RDWR,
                Access::Create => OFlag::O_RDWR | OFlag::O_CREAT,
            };
        let fd = openat(
            self.fd.as_fd(),
            name,
            flags,
            Mode::from_bits_truncate(FILE_MODE),
        )
        .map_err(|e| match e {
            Errno::ELOOP => anyhow::anyhow!(
                "{} is a symbolic link; store files are never opened through links (remove it, or start a fresh backup)",
                path.display()
            ),
            e => anyhow::Error::new(std::io::Error::from(e))
                .context(format!("opening {}", path.display())),
        })?;
        let st = fstat(&fd).with_context(|| format!("examining {}", path.display()))?;
        if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
            bail!("{} is not a regular file", path.display());
        }
        if access != Access::Read && st.st_nlink > 1 {
            bail!(
                "{} has {} hard links, so writing it would also change another file; refusing (remove the other links, or start a fresh backup with --fresh)",
                path.display(),
                st.st_nlink
            );
        }
        Ok(File::from(fd))
    }

    /// Reads a whole small file (at most `limit` bytes).
    pub(crate) fn read_to_string(&self, name: &str, limit: u64) -> Result<String> {
        let f = self.open_file(name, Access::Read)?;
        let mut s = String::new();
        f.take(limit)
            .read_to_string(&mut s)
            .with_context(|| format!("reading {}", self.path.join(name).display()))?;
        Ok(s)
    }

    /// Creates `name` anew for writing: a stale file, or a link planted under
    /// that name, is unlinked (the link itself, not what it points at) and the
    /// file created with `O_EXCL`.
    pub(crate) fn create_fresh(&self, name: &str) -> Result<File> {
        let path = self.path.join(name);
        self.remove(name)?;
        let fd = openat(
            self.fd.as_fd(),
            name,
            OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(FILE_MODE),
        )
        .map_err(std::io::Error::from)
        .with_context(|| format!("creating {}", path.display()))?;
        Ok(File::from(fd))
    }

    /// Removes the file or link `name` if it is there.
    pub(crate) fn remove(&self, name: &str) -> Result<()> {
        match unlinkat(self.fd.as_fd(), name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(std::io::Error::from(e))
                .with_context(|| format!("removing {}", self.path.join(name).display())),
        }
    }

    /// Writes a whole small file so that a crash leaves either the old or the
    /// new content: `.<name>.tmp` (created exclusively), synced, renamed over
    /// `name` (which replaces a link there rather than writing through it).
    pub(crate) fn write_atomic(&self, name: &str, data: &[u8]) -> Result<()> {
        if !names::is_safe_file(name) {
            bail!("refusing unsafe file name {name:?}");
        }
        let tmp = format!(".{name}.tmp");
        let tmp_path = self.path.join(&tmp);
        {
            let mut f = self.create_fresh(&tmp)?;
            f.write_all(data)
                .with_context(|| format!("writing {}", tmp_path.display()))?;
            f.sync_all()
                .with_context(|| format!("syncing {}", tmp_path.display()))?;
        }
        renameat(self.fd.as_fd(), tmp.as_str(), self.fd.as_fd(), name)
            .map_err(std::io::Error::from)
            .with_context(|| format!("renaming to {}", self.path.join(name).display()))?;
        let _ = nix::unistd::fsync(self.fd.as_fd());
        Ok(())
    }
}

fn check_name(name: &str) -> Result<()> {
    if !names::is_safe_file(name) {
        bail!("refusing unsafe directory name {name:?}");
    }
    Ok(())
}

/// The errno an error chain carries, from nix or from std.
pub(crate) fn errno_of(e: &anyhow::Error) -> Option<Errno> {
    e.chain().find_map(|c| {
        c.downcast_ref::<Errno>().copied().or_else(|| {
            c.downcast_ref::<std::io::Error>()
                .and_then(|io| io.raw_os_error())
                .map(Errno::from_raw)
        })
    })
}

/// Makes a file-size limit (`ulimit -f`) fail the write with EFBIG, which is
/// reported, instead of killing serve with SIGXFSZ.
pub(crate) fn ignore_file_size_signal() {
    use nix::sys::signal::{SigHandler, Signal, signal};
    // SAFETY: SIG_IGN installs no handler code; nothing else in the program
    // relies on SIGXFSZ's default action.
    let _ = unsafe { signal(Signal::SIGXFSZ, SigHandler::SigIgn) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn links_are_never_written_through() {
        let t = tempfile::tempdir().unwrap();
        let outside = t.path().join("outside");
        std::fs::write(&outside, b"keep").unwrap();
        let store = t.path().join("store");
        std::fs::create_dir(&store).unwrap();
        let d = Dir::open(&store).unwrap();
        // A symlink planted as the temporary file and as the file itself.
        symlink(&outside, store.join(".m.json.tmp")).unwrap();
        symlink(&outside, store.join("m.json")).unwrap();
        d.write_atomic("m.json", b"new").unwrap();
        assert_eq!(std::fs::read(&outside).unwrap(), b"keep");
        assert_eq!(std::fs::read(store.join("m.json")).unwrap(), b"new");
        assert!(!store.join(".m.json.tmp").exists());
        // Opening through a symlink fails, naming it.
        symlink(&outside, store.join("a.img")).unwrap();
        let e = d.open_file("a.img", Access::Create).unwrap_err();
        assert!(format!("{e:#}").contains("symbolic link"), "{e:#}");
        // A hard link is refused for writing, allowed for reading.
        std::fs::hard_link(&outside, store.join("b.img")).unwrap();
        let e = d.open_file("b.img", Access::Write).unwrap_err();
        assert!(format!("{e:#}").contains("hard links"), "{e:#}");
        assert!(d.open_file("b.img", Access::Read).is_ok());
        assert_eq!(std::fs::read(&outside).unwrap(), b"keep");
        // A symlinked directory is not entered.
        symlink(t.path(), store.join("host")).unwrap();
        assert!(d.sub("host").is_err());
        assert!(d.sub_or_create("host").is_err());
        assert!(d.sub_or_create("real").is_ok() && d.sub_or_create("real").is_ok());
    }
}
