//! The byte streams a session runs over: a USB4STREAM device (/dev/tbstreamN) or a
//! UNIX socket (tests, bridging). Reads poll with a timeout so a reader thread can
//! be stopped, which a blocking read on the stream device would not allow.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::exit::{self, Exit};

/// The error text a stopped reader returns.
pub const STOPPED: &str = "stopped";

/// Where a session's bytes go.
#[derive(Debug)]
pub enum Stream {
    Device { file: File, path: PathBuf },
    Unix(UnixStream),
}

/// What `--device` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Device(PathBuf),
    Unix(PathBuf),
}

impl Endpoint {
    pub fn parse(s: &str) -> Endpoint {
        match s.strip_prefix("unix:") {
            Some(p) => Endpoint::Unix(PathBuf::from(p)),
            None => Endpoint::Device(PathBuf::from(s)),
        }
    }
}

impl Stream {
    /// Opens a stream device read-write. Blocks until the stream is attached to a
    /// live peer, as the driver does.
    pub fn open_device(path: &Path) -> Result<Stream> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| device_open_error(path, e))?;
        Ok(Stream::Device {
            file,
            path: path.to_path_buf(),
        })
    }

    /// Connects to a UNIX socket, retrying until `wait` passes (the server may
    /// start after us, like a peer that is not plugged in yet).
    pub fn connect_unix(path: &Path, wait: Option<Duration>) -> Result<Stream> {
        let start = Instant::now();
        let mut told = false;
        loop {
            match UnixStream::connect(path) {
                Ok(s) => return Ok(Stream::Unix(s)),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                    ) =>
                {
                    if wait.is_some_and(|w| start.elapsed() >= w) {
                        return Err(Exit::new(
                            exit::PEER_GONE,
                            format!(
                                "no peer listening on {} (start `rescue serve --device unix:{}` first)",
                                path.display(),
                                path.display()
                            ),
                        )
                        .into());
                    }
                    if !told {
                        eprintln!("waiting for a peer to listen on {}", path.display());
                        told = true;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("connecting to {}", path.display()));
                }
            }
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Stream::Device { path, .. } => path.display().to_string(),
            Stream::Unix(_) => "unix socket".into(),
        }
    }

    /// Larger socket buffers mean fewer wake-ups per megabyte chunk (sockets only).
    fn tune(&self) {
        if let Stream::Unix(s) = self {
            use nix::sys::socket::{setsockopt, sockopt};
            let _ = setsockopt(s, sockopt::SndBuf, &(4 << 20));
            let _ = setsockopt(s, sockopt::RcvBuf, &(4 << 20));
        }
    }

    fn dup_file(&self) -> Result<File> {
        let fd = match self {
            Stream::Device { file, .. } => file.as_fd().try_clone_to_owned(),
            Stream::Unix(s) => s.as_fd().try_clone_to_owned(),
        }
        .context("duplicating the stream descriptor")?;
        Ok(File::from(fd))
    }

    /// A reader that gives up with `STOPPED` once `stop` is set.
    pub fn reader(&self, stop: Arc<AtomicBool>) -> Result<Box<dyn Read + Send>> {
        self.tune();
        Ok(Box::new(PollReader {
            file: self.dup_file()?,
            stop,
        }))
    }

    pub fn writer(&self) -> Result<Box<dyn Write + Send>> {
        Ok(Box::new(self.dup_file()?))
    }

    /// Wakes anything blocked on the stream (sockets only; a device read wakes by poll).
    pub fn shutdown(&self) {
        if let Stream::Unix(s) = self {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

fn device_open_error(path: &Path, e: io::Error) -> anyhow::Error {
    let why = match e.raw_os_error() {
        Some(libc::ENOENT) => format!(
            "{} does not exist: set a stream up first (`rescue link up`) or leave out --device",
            path.display()
        ),
        Some(libc::EINVAL) => format!(
            "{}: the stream has no HopIDs yet (the peer has not published its stream); \
             run rescue on the other machine or leave out --device so rescue negotiates them",
            path.display()
        ),
        Some(libc::ENXIO) => format!(
            "{}: the stream is not attached to a peer (cable unplugged or peer gone)",
            path.display()
        ),
        Some(libc::EACCES) | Some(libc::EPERM) => {
            format!("{}: permission denied (run as root)", path.display())
        }
        _ => return anyhow::Error::new(e).context(format!("opening {}", path.display())),
    };
    Exit::new(exit::PEER_GONE, why).into()
}

/// Listens on a UNIX socket path, replacing a stale socket file.
pub fn listen_unix(path: &Path) -> Result<UnixListener> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if meta.file_type().is_socket() {
            if UnixStream::connect(path).is_ok() {
                bail!("{} is in use by another server", path.display());
            }
            std::fs::remove_file(path)
                .with_context(|| format!("removing stale socket {}", path.display()))?;
        } else {
            bail!("{} exists and is not a socket", path.display());
        }
    }
    UnixListener::bind(path).with_context(|| format!("listening on {}", path.display()))
}

/// Accepts one connection, giving up when `stop` is set.
pub fn accept_unix(l: &UnixListener, stop: &AtomicBool) -> Result<Option<Stream>> {
    loop {
        if stop.load(Ordering::SeqCst) {
            return Ok(None);
        }
        let mut fds = [PollFd::new(l.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(200u16)) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e).context("waiting for a connection"),
        }
        match l.accept() {
            Ok((s, _)) => return Ok(Some(Stream::Unix(s))),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("accepting a connection"),
        }
    }
}

struct PollReader {
    file: File,
    stop: Arc<AtomicBool>,
}

impl Read for PollReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.stop.load(Ordering::SeqCst) {
                return Err(io::Error::other(STOPPED));
            }
            let mut fds = [PollFd::new(self.file.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::from(200u16)) {
                Ok(0) => continue,
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(io::Error::from_raw_os_error(e as i32)),
            }
            // POLLHUP/POLLERR: the read below reports what happened (EOF or ENXIO).
            match (&self.file).read(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                other => return other,
            }
        }
    }
}
