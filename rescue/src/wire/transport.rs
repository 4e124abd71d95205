//! The byte streams a session runs over: a USB4STREAM device (/dev/tbstreamN) or a
//! UNIX socket (tests, bridging). Reads poll with a timeout so a reader thread can
//! be stopped, which a blocking read on the stream device would not allow.
//! A path given as `--device` is checked before it is opened: only a USB4STREAM
//! character device is ever written to (a typo such as /dev/sda must not be).

use std::fs::{self, File, Metadata, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::Root;
use crate::cancel::{self, Interrupted, Stopped, Token};
use crate::exit::{self, Exit};

/// A liveness bound, which tests shorten through the environment variable
/// `var` (milliseconds); a real cable keeps the default.
pub(crate) fn bound(var: &str, default: Duration) -> Duration {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(default, Duration::from_millis)
}

/// A write the peer takes not one byte of for this long fails: a peer that
/// never reads must not hold us in write(). An honest reader stops only while
/// its own disk stalls. Tests shorten it with RESCUE_WRITE_STALL_MS.
pub(crate) fn write_stall() -> Duration {
    bound("RESCUE_WRITE_STALL_MS", Duration::from_secs(60))
}

/// Where a session's bytes go.
#[derive(Debug)]
pub enum Stream {
    Device { file: File, path: PathBuf },
    Unix(UnixStream),
}

/// What `--device` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Endpoint {
    Device(PathBuf),
    Unix(PathBuf),
}

impl Endpoint {
    pub(crate) fn parse(s: &str) -> Endpoint {
        match s.strip_prefix("unix:") {
            Some(p) => Endpoint::Unix(PathBuf::from(p)),
            None => Endpoint::Device(PathBuf::from(s)),
        }
    }
}

impl Stream {
    /// Whether there is something to read (or the stream ended) within `t`;
    /// an interrupted poll counts as "not yet", as a timeout does.
    pub(crate) fn readable_within(&self, t: Duration) -> bool {
        let fd = match self {
            Stream::Device { file, .. } => file.as_fd(),
            Stream::Unix(u) => u.as_fd(),
        };
        let ms = u16::try_from(t.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        poll(&mut fds, PollTimeout::from(ms)).is_ok_and(|k| k > 0)
    }

    /// Opens a stream device read-write once the stream is attached to a live
    /// peer, waiting until `until` (None: until the peer comes or the user stops).
    /// For devices rescue set up itself; a path from the command line goes
    /// through `open_named_device`.
    pub(crate) fn open_device(path: &Path, until: Option<Instant>) -> Result<Stream> {
        let file = open_attached_by(path, until)?;
        Ok(Stream::Device {
            file,
            path: path.to_path_buf(),
        })
    }

    /// Opens a stream device named by `--device` after checking that it is one
    /// (exit 2 otherwise, and the path is never opened for writing).
    pub(crate) fn open_named_device(
        root: &Root,
        path: &Path,
        until: Option<Instant>,
    ) -> Result<Stream> {
        let checked = check_stream_device(root, path)?;
        let s = Stream::open_device(path, until)?;
        // The path could have been replaced between the check and the open.
        let now = s
            .dup_file()?
            .metadata()
            .with_context(|| format!("checking {}", path.display()))?;
        if !now.file_type().is_char_device() || now.rdev() != checked.rdev {
            return Err(Exit::new(
                exit::USAGE,
                format!(
                    "{} changed while it was being opened; not using it",
                    path.display()
                ),
            )
            .into());
        }
        Ok(s)
    }

    /// Connects to a UNIX socket, retrying until `wait` passes (the server may
    /// start after us, like a peer that is not plugged in yet).
    pub(crate) fn connect_unix(path: &Path, wait: Option<Duration>) -> Result<Stream> {
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
                    cancel::check("interrupted while waiting for a peer")?;
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

    /// A reader that gives up with `cancel::Stopped` once `stop` is stopped.
    pub(crate) fn reader(&self, stop: Token) -> Result<Box<dyn Read + Send>> {
        self.tune();
        Ok(Box::new(PollReader {
            file: self.dup_file()?,
            stop,
            until: None,
        }))
    }

    /// A reader that fails with `TimedOut` once `until` passes (a stream's
    /// first message, before the session's reader takes it over).
    pub(crate) fn reader_until(&self, until: Instant) -> Result<Box<dyn Read + Send>> {
        Ok(Box::new(PollReader {
            file: self.dup_file()?,
            stop: Token::new(),
            until: Some(until),
        }))
    }

    /// A writer that blocks as long as the peer does not read: for `rescue cat`,
    /// whose other end may be a pipeline at a person's pace, not a protocol.
    pub(crate) fn raw_writer(&self) -> Result<Box<dyn Write + Send>> {
        Ok(Box::new(self.dup_file()?))
    }

    /// A writer that gives up when the peer takes nothing for `write_stall()`,
    /// or, while it waits for room, once `peer_closed` is stopped (the reader
    /// saw the peer's end go: thunderbolt_stream never fails a write for that,
    /// its TX ring just stays full).
    pub(crate) fn writer(&self, peer_closed: Token) -> Result<Box<dyn Write + Send>> {
        Ok(Box::new(PollWriter {
            file: self.dup_file()?,
            socket: matches!(self, Stream::Unix(_)),
            stall: write_stall(),
            peer_closed,
        }))
    }

    /// Wakes anything blocked on the stream (sockets only; a device read wakes by poll).
    pub(crate) fn shutdown(&self) {
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

/// Opens read-write and non-blocking, without becoming anyone's controlling terminal.
fn open_rw_nonblock(path: &Path) -> io::Result<File> {
    let flags = libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK;
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(flags)
        .open(path)
}

/// Opens a stream device once its peer is attached, trying until `until` (None:
/// for ever, or until the user stops): a non-blocking open fails with ENXIO while
/// the stream is not attached. Never a blocking open: /dev/tbstreamN is a misc
/// device, and the kernel's driver waits for the peer while holding the global
/// misc lock, so a blocking open stalls every other misc open and deadlocks an
/// rmdir in the same ConfigFS group (seen on usb4vhost with Debian's
/// thunderbolt_stream). The descriptor is made blocking again.
fn open_attached_by(path: &Path, until: Option<Instant>) -> Result<File> {
    let start = Instant::now();
    loop {
        match open_rw_nonblock(path) {
            Ok(f) => {
                let fd = f.as_fd();
                let fl = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL)
                    .context("reading the stream's flags")?;
                let fl = nix::fcntl::OFlag::from_bits_truncate(fl) - nix::fcntl::OFlag::O_NONBLOCK;
                nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFL(fl))
                    .context("making the stream blocking")?;
                return Ok(f);
            }
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) && cancel::interrupted() => {
                return Err(Interrupted::new(format!(
                    "stopped waiting for a peer on {}",
                    path.display()
                ))
                .into());
            }
            Err(e)
                if e.raw_os_error() == Some(libc::ENXIO)
                    && until.is_none_or(|t| Instant::now() < t) =>
            {
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
                return Err(Exit::new(
                    exit::PEER_GONE,
                    format!(
                        "no peer attached to {} within {}s (is the cable plugged in and rescue running on the other machine?)",
                        path.display(),
                        start.elapsed().as_secs()
                    ),
                )
                .into());
            }
            Err(e) => return Err(device_open_error(path, e)),
        }
    }
}

/// What a `--device` path is: decided from its stat and, for a character
/// device, its sysfs entry, before anything opens it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DeviceKind {
    /// /dev/tbstreamN of thunderbolt_stream (a misc device; older virtual cables had
    /// a `tbstream` class of their own).
    Stream,
    Missing,
    Regular,
    Directory,
    Block,
    Tty(String),
    /// Another character device, named as sysfs names it.
    OtherChar(String),
    /// A FIFO, a socket or something stranger.
    Other(&'static str),
}

/// The parts of a stat result the decision needs (so tests can make them up).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NodeStat {
    pub(crate) kind: NodeType,
    pub(crate) rdev: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NodeType {
    Regular,
    Dir,
    Block,
    Char,
    Fifo,
    Socket,
    Other,
}

impl NodeStat {
    fn of(m: &Metadata) -> NodeStat {
        let t = m.file_type();
        let kind = if t.is_file() {
            NodeType::Regular
        } else if t.is_dir() {
            NodeType::Dir
        } else if t.is_block_device() {
            NodeType::Block
        } else if t.is_char_device() {
            NodeType::Char
        } else if t.is_fifo() {
            NodeType::Fifo
        } else if t.is_socket() {
            NodeType::Socket
        } else {
            NodeType::Other
        };
        NodeStat {
            kind,
            rdev: m.rdev(),
        }
    }
}

/// Linux's encoding of dev_t (glibc's gnu_dev_major/minor).
fn major_minor(rdev: u64) -> (u64, u64) {
    let major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff);
    let minor = (rdev & 0xff) | ((rdev >> 12) & !0xff);
    (major, minor)
}

/// Decides what a path is from its stat (None: it does not exist) and the
/// sysfs tree below `root`.
pub(crate) fn classify(root: &Root, stat: Option<NodeStat>) -> DeviceKind {
    let Some(st) = stat else {
        return DeviceKind::Missing;
    };
    match st.kind {
        NodeType::Char => classify_char(root, st.rdev),
        NodeType::Regular => DeviceKind::Regular,
        NodeType::Dir => DeviceKind::Directory,
        NodeType::Block => DeviceKind::Block,
        NodeType::Fifo => DeviceKind::Other("FIFO (named pipe)"),
        NodeType::Socket => DeviceKind::Other("UNIX socket (write unix:PATH for a socket)"),
        NodeType::Other => DeviceKind::Other("special file"),
    }
}

/// A character device is a stream when /sys/dev/char/MAJ:MIN names it
/// tbstreamN, in the misc class (thunderbolt_stream) or the tbstream class (the
/// older virtual cable of the VM tests).
fn classify_char(root: &Root, rdev: u64) -> DeviceKind {
    let (major, minor) = major_minor(rdev);
    let entry = format!("/sys/dev/char/{major}:{minor}");
    let base = |p: PathBuf| -> Option<String> {
        fs::read_link(p)
            .ok()?
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
    };
    let name = root
        .read_attr(format!("{entry}/uevent"))
        .and_then(|u| {
            u.lines()
                .find_map(|l| l.strip_prefix("DEVNAME="))
                .map(str::to_string)
        })
        .or_else(|| base(root.path(&entry)));
    let subsystem = base(root.path(format!("{entry}/subsystem")));
    let stream_name = |n: &str| {
        n.strip_prefix("tbstream")
            .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
    };
    match (name, subsystem.as_deref()) {
        (Some(n), None | Some("misc") | Some("tbstream")) if stream_name(&n) => DeviceKind::Stream,
        (n, Some("tty")) => DeviceKind::Tty(n.unwrap_or_else(|| format!("{major}:{minor}"))),
        (Some(n), _) => DeviceKind::OtherChar(n),
        (None, _) => DeviceKind::OtherChar(format!("{major}:{minor}, unknown to {entry}")),
    }
}

/// Refuses (exit 2) a `--device` path that is not a USB4STREAM device; returns
/// its stat otherwise. Nothing is opened.
pub(crate) fn check_stream_device(root: &Root, path: &Path) -> Result<NodeStat> {
    let stat = match fs::metadata(path) {
        Ok(m) => Some(NodeStat::of(&m)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("looking at {}", path.display())),
    };
    let kind = classify(root, stat);
    match (kind, stat) {
        (DeviceKind::Stream, Some(st)) => Ok(st),
        (kind, _) => Err(refusal(path, &kind)),
    }
}

fn refusal(path: &Path, kind: &DeviceKind) -> anyhow::Error {
    let what = match kind {
        DeviceKind::Missing => {
            "does not exist (set a stream up with `rescue link up`, or leave out --device)".into()
        }
        DeviceKind::Regular => "is a regular file".into(),
        DeviceKind::Directory => "is a directory".into(),
        DeviceKind::Block => {
            "is a block device (a disk or partition: protocol frames would overwrite its data)"
                .into()
        }
        DeviceKind::Tty(n) => format!("is a terminal ({n})"),
        DeviceKind::OtherChar(n) => format!("is a character device ({n})"),
        DeviceKind::Other(w) => format!("is a {w}"),
        DeviceKind::Stream => "is a stream".into(),
    };
    Exit::new(
        exit::USAGE,
        format!(
            "--device {}: {what}, not a USB4STREAM stream device, so rescue did not open it. \
             Give a stream such as /dev/tbstream0 (`rescue status` lists them), unix:PATH for a \
             UNIX socket, or leave out --device to set the stream up automatically",
            path.display()
        ),
    )
    .into()
}

/// Parses `--device` and checks a device path (mapped below `root`) before
/// anything opens it: exit 2 unless it is a USB4STREAM device.
pub(crate) fn endpoint(root: &Root, device: Option<&str>) -> Result<Option<Endpoint>> {
    match device.map(Endpoint::parse) {
        Some(Endpoint::Device(p)) => {
            let p = root.given_path(&p);
            check_stream_device(root, &p)?;
            Ok(Some(Endpoint::Device(p)))
        }
        other => Ok(other),
    }
}

/// Listens on a UNIX socket path, replacing a stale socket file.
pub(crate) fn listen_unix(path: &Path) -> Result<UnixListener> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if meta.file_type().is_socket() {
            if UnixStream::connect(path).is_ok() {
                bail!("{} is in use by another server", path.display());
            }
            std::fs::remove_file(path)
                .with_context(|| format!("removing stale socket {}", path.display()))?;
        } else {
            return Err(Exit::new(
                exit::USAGE,
                format!(
                    "unix:{}: the path exists and is not a socket; give a new path",
                    path.display()
                ),
            )
            .into());
        }
    }
    // Bound and listening under a temporary name, then renamed into place: a
    // client that sees the path can connect (bind makes the file before
    // listen, and a connect in between is refused).
    let prefix = tmp_prefix(path);
    sweep_stale_tmp(path, &prefix);
    let tmp = path.with_file_name(format!("{prefix}{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let l = UnixListener::bind(&tmp).with_context(|| format!("listening on {}", path.display()))?;
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("listening on {}", path.display()));
    }
    Ok(l)
}

/// The start of the temporary names `listen_unix` binds `path` under:
/// `.NAME.` (then the PID and `.tmp`).
fn tmp_prefix(path: &Path) -> String {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    format!(".{}.", name.as_deref().unwrap_or("socket"))
}

/// Removes the temporary sockets of servers that died between binding and
/// renaming: `PREFIX<pid>.tmp` beside `path`, only sockets, and only when no
/// process `pid` is alive (a live one may be about to rename it).
fn sweep_stale_tmp(path: &Path, prefix: &str) {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let pid = name
            .to_str()
            .and_then(|n| n.strip_prefix(prefix))
            .and_then(|n| n.strip_suffix(".tmp"))
            .and_then(|n| n.parse::<i32>().ok());
        let Some(pid) = pid.filter(|&p| p > 0) else {
            continue;
        };
        let gone = matches!(
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
            Err(nix::errno::Errno::ESRCH)
        );
        if gone && e.file_type().is_ok_and(|t| t.is_socket()) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Accepts one connection, giving up (None) when `stop` is stopped or `until`
/// passes; the user's interruption is an `Interrupted` error.
pub(crate) fn accept_unix(
    l: &UnixListener,
    stop: Option<&Token>,
    until: Option<Instant>,
) -> Result<Option<Stream>> {
    loop {
        cancel::check("interrupted while waiting for a peer")?;
        if stop.is_some_and(Token::stopped) || until.is_some_and(|t| Instant::now() >= t) {
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
    stop: Token,
    until: Option<Instant>,
}

impl Read for PollReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.stop.stopped() {
                return Err(Stopped.into());
            }
            if self.until.is_some_and(|t| Instant::now() >= t) {
                return Err(io::ErrorKind::TimedOut.into());
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

/// Writes only when poll says the stream takes data, so a write waits at most
/// `stall` for the peer to read. A socket is written with MSG_DONTWAIT (a
/// blocking send would wait for room for the whole buffer); the stream device
/// queues what its ring holds and returns.
struct PollWriter {
    file: File,
    socket: bool,
    stall: Duration,
    peer_closed: Token,
}

impl PollWriter {
    /// Waiting for room is pointless once the peer's end is gone.
    fn check_peer(&self) -> io::Result<()> {
        if self.peer_closed.stopped() {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the peer closed the stream",
            ));
        }
        Ok(())
    }
}

impl Write for PollWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let start = Instant::now();
        loop {
            let left = self.stall.saturating_sub(start.elapsed());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "the peer has not read anything for {}s",
                        self.stall.as_secs_f64().round()
                    ),
                ));
            }
            // Short slices: where a driver's poll is not woken as its TX ring
            // drains (seen on the older virtual cable: 1 s slices made a rate-limited backup
            // 5x slower and stalls re-sent a window), a full ring costs ms.
            let slice = left.min(Duration::from_millis(10)).as_millis() as u16;
            let mut fds = [PollFd::new(self.file.as_fd(), PollFlags::POLLOUT)];
            match poll(&mut fds, PollTimeout::from(slice.max(1))) {
                Ok(0) => {
                    self.check_peer()?;
                    continue;
                }
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(io::Error::from_raw_os_error(e as i32)),
            }
            let r = if self.socket {
                use nix::sys::socket::{MsgFlags, send};
                send(
                    std::os::fd::AsRawFd::as_raw_fd(&self.file),
                    buf,
                    MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
                )
                .map_err(|e| io::Error::from_raw_os_error(e as i32))
            } else {
                (&self.file).write(buf)
            };
            match r {
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) =>
                {
                    self.check_peer()?;
                    continue;
                }
                other => return other,
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn makedev(major: u64, minor: u64) -> u64 {
        (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & !0xff) << 12) | ((major & !0xfff) << 32)
    }

    /// A fake /sys/dev/char entry shaped like the kernel's: a link to the
    /// device directory, whose uevent names the node and whose subsystem links
    /// to its class.
    fn char_entry(root: &Path, major: u64, minor: u64, class: &str, name: &str) {
        let dev = root.join(format!("sys/devices/virtual/{class}/{name}"));
        fs::create_dir_all(&dev).unwrap();
        fs::write(
            dev.join("uevent"),
            format!("MAJOR={major}\nMINOR={minor}\nDEVNAME={name}\n"),
        )
        .unwrap();
        fs::create_dir_all(root.join(format!("sys/class/{class}"))).unwrap();
        symlink(format!("../../../../class/{class}"), dev.join("subsystem")).unwrap();
        fs::create_dir_all(root.join("sys/dev/char")).unwrap();
        symlink(
            format!("../../devices/virtual/{class}/{name}"),
            root.join(format!("sys/dev/char/{major}:{minor}")),
        )
        .unwrap();
    }

    fn chr(major: u64, minor: u64) -> Option<NodeStat> {
        Some(NodeStat {
            kind: NodeType::Char,
            rdev: makedev(major, minor),
        })
    }

    #[test]
    fn only_tbstream_character_devices_are_streams() {
        let d = tempfile::tempdir().unwrap();
        // thunderbolt_stream registers misc devices; the older virtual cable its own class.
        char_entry(d.path(), 10, 120, "misc", "tbstream0");
        char_entry(d.path(), 511, 300, "tbstream", "tbstream12");
        char_entry(d.path(), 10, 229, "misc", "fuse");
        char_entry(d.path(), 4, 1, "tty", "tty1");
        char_entry(d.path(), 5, 7, "tty", "tbstream7");
        char_entry(d.path(), 1, 3, "mem", "null");
        let root = Root::new(d.path());
        assert_eq!(classify(&root, chr(10, 120)), DeviceKind::Stream);
        assert_eq!(classify(&root, chr(511, 300)), DeviceKind::Stream);
        assert_eq!(
            classify(&root, chr(10, 229)),
            DeviceKind::OtherChar("fuse".into())
        );
        assert_eq!(classify(&root, chr(4, 1)), DeviceKind::Tty("tty1".into()));
        // A tty that happens to be called tbstream7 is still a tty.
        assert_eq!(
            classify(&root, chr(5, 7)),
            DeviceKind::Tty("tbstream7".into())
        );
        assert_eq!(
            classify(&root, chr(1, 3)),
            DeviceKind::OtherChar("null".into())
        );
        assert!(matches!(
            classify(&root, chr(240, 9)),
            DeviceKind::OtherChar(why) if why.contains("240:9")
        ));
        let other = |kind| {
            classify(
                &root,
                Some(NodeStat {
                    kind,
                    rdev: makedev(10, 120),
                }),
            )
        };
        assert_eq!(other(NodeType::Block), DeviceKind::Block);
        assert_eq!(other(NodeType::Regular), DeviceKind::Regular);
        assert_eq!(other(NodeType::Dir), DeviceKind::Directory);
        assert!(matches!(other(NodeType::Fifo), DeviceKind::Other(_)));
        assert_eq!(classify(&root, None), DeviceKind::Missing);
    }

    #[test]
    fn anything_but_a_stream_is_refused_with_a_usage_error_naming_it() {
        let d = tempfile::tempdir().unwrap();
        char_entry(d.path(), 1, 3, "mem", "null");
        let root = Root::new(d.path());
        let file = d.path().join("disk.img");
        fs::write(&file, b"precious").unwrap();
        for (path, says) in [
            (file.clone(), "regular file"),
            (d.path().to_path_buf(), "directory"),
            (d.path().join("nosuch"), "does not exist"),
            // The real /dev/null, judged by the fake sysfs above.
            (PathBuf::from("/dev/null"), "character device (null)"),
        ] {
            let err = check_stream_device(&root, &path).unwrap_err();
            assert_eq!(exit::code_of(&err), exit::USAGE, "{path:?}");
            let m = format!("{err:#}");
            assert!(m.contains(says) && m.contains("/dev/tbstream0"), "{m}");
        }
        assert_eq!(fs::read(&file).unwrap(), b"precious");
        assert_eq!(endpoint(&root, None).unwrap(), None);
        assert_eq!(
            endpoint(&root, Some("unix:/tmp/x.sock")).unwrap(),
            Some(Endpoint::Unix("/tmp/x.sock".into()))
        );
    }

    /// A server killed between bind and rename leaves `.NAME.PID.tmp`; the next
    /// one removes it, but never one whose process lives, nor anything that is
    /// not a socket or not of this name.
    #[test]
    fn listen_sweeps_the_temporary_sockets_of_dead_servers() {
        let t = tempfile::tempdir().unwrap();
        let mut dead = std::process::Command::new("true").spawn().unwrap();
        let dead_pid = dead.id();
        dead.wait().unwrap();
        let mut live = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let at = |n: String| t.path().join(n);
        let stale = at(format!(".srv.sock.{dead_pid}.tmp"));
        let busy = at(format!(".srv.sock.{}.tmp", live.id()));
        let other = at(format!(".other.sock.{dead_pid}.tmp"));
        let plain = at(".srv.sock.999999999.tmp".to_string());
        let _held: Vec<UnixListener> = [&stale, &busy, &other]
            .into_iter()
            .map(|p| UnixListener::bind(p).unwrap())
            .collect();
        fs::write(&plain, b"not a socket").unwrap();

        let l = listen_unix(&at("srv.sock".into())).unwrap();
        let left = |p: &Path| fs::symlink_metadata(p).is_ok();
        let (s, b, o, f) = (left(&stale), left(&busy), left(&other), left(&plain));
        let _ = live.kill();
        let _ = live.wait();
        assert!(!s, "the dead server's temporary socket was left");
        assert!(b, "a live server's temporary socket was removed");
        assert!(o && f, "removed what is not this path's temporary socket");
        drop(l);
    }
}
