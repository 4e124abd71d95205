//! Stream set-up in ConfigFS: find the peer's `stream` service, create the
//! connection and stream groups, agree on HopIDs with the peer, and tear down
//! exactly what we created.
//!
//! HopIDs: the kernel adopts the peer's published HopIDs (reversed) only when a
//! stream group attaches, i.e. at mkdir or when the service appears. So one side
//! must publish (write -1: allocate and publish) and the other must create its
//! group after that. Roles: `serve` publishes, `backup`/`restore` adopt, and a
//! role-less command (`cat`, `link up`) publishes when its host UUID is the
//! larger of the two. An adopter that finds no published HopIDs re-creates its
//! group until they appear, so either machine may start first.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::Root;
use crate::exit::{self, Exit};
use crate::fabric::bus;

pub const STREAM_ROOT: &str = "/sys/kernel/config/thunderbolt/stream";
/// The driver publishes stream names as XDomain property keys (8 characters).
pub(crate) const MAX_NAME: usize = 8;
/// How long serve waits for the HopIDs of a further stream it publishes (the
/// driver allocates them at once; this only bounds a driver that does not).
const PUBLISH_WAIT: Duration = Duration::from_secs(3);

/// ConfigFS directories this process created, for tear-down on a signal.
static CREATED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Removes every directory we created, newest first (called on SIGINT/SIGTERM).
/// Returns whether there was anything to remove.
pub fn teardown_all() -> bool {
    let mut any = false;
    // The lock is not held while removing: `remove_group` takes nothing else.
    while let Some(p) = CREATED.lock().ok().and_then(|mut v| v.pop()) {
        remove_group(&p);
        any = true;
    }
    any
}

fn register(p: &Path) {
    if let Ok(mut v) = CREATED.lock() {
        v.push(p.to_path_buf());
    }
}

fn unregister(p: &Path) {
    if let Ok(mut v) = CREATED.lock() {
        v.retain(|x| x != p);
    }
}

/// Which side allocates the HopIDs of the stream (the protocol's `msg::Role` is
/// what a peer does in a session).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HopIds {
    /// Allocate HopIDs and publish them (the receiving side, like upstream's example).
    Publish,
    /// Take the HopIDs the peer published.
    Adopt,
    /// Decide by comparing host UUIDs.
    Auto,
}

#[derive(Debug, Clone)]
pub struct LinkOpts {
    pub peer: Option<String>,
    pub name: String,
    pub wait: Option<Duration>,
    pub role: HopIds,
    /// Remove the groups on drop (`rescue link up` keeps them with `Link::keep`).
    pub teardown: bool,
}

/// A configured stream (and, for a session over several, the further ones in
/// `extra`, on the same connection). Dropping it removes the groups it created.
#[derive(Debug)]
pub struct Link {
    pub service: String,
    pub(crate) name: String,
    pub dev: PathBuf,
    pub in_hopid: i64,
    pub out_hopid: i64,
    pub role: HopIds,
    conn_dir: PathBuf,
    stream_dir: PathBuf,
    created_conn: bool,
    created_stream: bool,
    teardown: bool,
    /// Streams 1.. of a session over several (`publish_more`, `adopt_more`).
    extra: Vec<Link>,
}

/// Checks a connection group name the way the driver does ("%u-%llx.%u").
pub(crate) fn valid_service_name(s: &str) -> bool {
    let Some((dom, rest)) = s.split_once('-') else {
        return false;
    };
    let Some((route, idx)) = rest.split_once('.') else {
        return false;
    };
    !dom.is_empty()
        && dom.chars().all(|c| c.is_ascii_digit())
        && !route.is_empty()
        && route.chars().all(|c| c.is_ascii_hexdigit())
        && !idx.is_empty()
        && idx.chars().all(|c| c.is_ascii_digit())
}

/// The ConfigFS name of stream `i` of a session whose first stream is named
/// `base` (`--name`): `base` itself for stream 0, so an older peer and a
/// hand-made group still meet it, else `base` cut to 7 characters with the
/// digit `i` appended (backup, backup1, backup2, ...). None when that would be
/// `base` again (an 8-character name ending in that digit) or `i` > 9.
pub(crate) fn stream_name(base: &str, i: usize) -> Option<String> {
    if i == 0 {
        return Some(base.to_string());
    }
    let digit = char::from_digit(u32::try_from(i).ok()?, 10)?;
    let cut: String = base.chars().take(MAX_NAME - 1).collect();
    let name = format!("{cut}{digit}");
    (name != base).then_some(name)
}

pub(crate) fn valid_stream_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Reads a numeric attribute; at most 64 bytes, so a path that is not one
/// (a device, a link gone wrong) cannot make us read for ever.
fn read_int(p: &Path) -> Option<i64> {
    use std::io::Read;
    let mut s = String::new();
    fs::File::open(p)
        .ok()?
        .take(64)
        .read_to_string(&mut s)
        .ok()?;
    s.trim().parse().ok()
}

/// Writes an attribute of a group; never creates one: ConfigFS makes them
/// at mkdir, and one that is missing is not (yet) the driver's.
fn write_attr(p: &Path, v: &str) -> io::Result<()> {
    use std::io::Write;
    fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(p)?
        .write_all(v.as_bytes())
}

/// Explains why USB4STREAM cannot be used here, or None when it can.
pub(crate) fn not_ready(root: &Root) -> Option<String> {
    if root.path(STREAM_ROOT).is_dir() {
        return None;
    }
    if !root.path("/sys/kernel/config").is_dir()
        || !root.path("/sys/kernel/config/thunderbolt").exists()
    {
        if !root.path("/sys/module/thunderbolt_stream").exists() {
            return Some(
                "the thunderbolt_stream kernel module is not loaded: run `modprobe thunderbolt_stream` \
                 (it needs Linux >= 7.2 with CONFIG_USB4_STREAM), or `rescue status` for details"
                    .into(),
            );
        }
        return Some(
            "ConfigFS is not mounted: run `mount -t configfs none /sys/kernel/config`".into(),
        );
    }
    Some(format!(
        "{STREAM_ROOT} is missing: load thunderbolt_stream (`modprobe thunderbolt_stream`, Linux >= 7.2)"
    ))
}

fn pick_service(root: &Root, opts: &LinkOpts) -> Result<String> {
    if let Some(p) = &opts.peer {
        if !valid_service_name(p) {
            bail!("--peer {p:?} is not a service name like 0-1.0 (see `rescue status`)");
        }
        return Ok(p.clone());
    }
    let start = Instant::now();
    let mut told = false;
    loop {
        let services = bus::stream_services(root);
        match services.len() {
            1 => return Ok(services[0].name.clone()),
            0 => {}
            _ => {
                let list: Vec<String> = services
                    .iter()
                    .map(|s| {
                        let who = bus::xdomain_of(root, s)
                            .and_then(|x| x.device_name)
                            .unwrap_or_else(|| "unknown host".into());
                        format!("{} ({who})", s.name)
                    })
                    .collect();
                return Err(Exit::new(
                    exit::USAGE,
                    format!(
                        "several peers offer streams: {}; choose one with --peer",
                        list.join(", ")
                    ),
                )
                .into());
            }
        }
        crate::cancel::check("interrupted while waiting for a peer")?;
        if opts.wait.is_some_and(|w| start.elapsed() >= w) {
            return Err(Exit::new(
                exit::PEER_GONE,
                format!(
                    "no peer found after {}s: connect the USB4/Thunderbolt cable to the other machine and run rescue there (`rescue status` shows what is connected)",
                    start.elapsed().as_secs()
                ),
            )
            .into());
        }
        if !told {
            eprintln!(
                "waiting for a peer: plug the USB4/Thunderbolt cable into the other machine and start rescue there{}",
                opts.wait
                    .map(|w| format!(" (giving up after {}s)", w.as_secs()))
                    .unwrap_or_default()
            );
            told = true;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn mkdir(p: &Path, what: &str) -> Result<bool> {
    match fs::create_dir(p) {
        Ok(()) => {
            register(p);
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => {
            let why = match e.raw_os_error() {
                Some(libc::EINVAL) => format!("the kernel rejected the {what} name"),
                Some(libc::ENAMETOOLONG) => {
                    format!("the {what} name is too long (at most {MAX_NAME} characters)")
                }
                Some(libc::EACCES) | Some(libc::EPERM) => "permission denied (run as root)".into(),
                _ => e.to_string(),
            };
            bail!("creating {}: {why}", p.display())
        }
    }
}

/// Removes a group directory. Real ConfigFS removes a group with its attribute
/// files in one rmdir; a fake tree (tests) is a plain directory whose files must
/// go first, which is harmless to try afterwards.
fn rmdir(p: &Path) -> bool {
    remove_group(p);
    let gone = !p.exists();
    if gone {
        unregister(p);
    }
    gone
}

/// The removal itself, for `rmdir` and `teardown_all`.
fn remove_group(p: &Path) {
    if fs::remove_dir(p).is_err()
        && let Ok(entries) = fs::read_dir(p)
    {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_file() || t.is_symlink()) {
                let _ = fs::remove_file(e.path());
            }
        }
        let _ = fs::remove_dir(p);
    }
}

impl Link {
    /// Sets the stream up, waiting (bounded by `opts.wait`) for the peer.
    pub fn up(root: &Root, opts: &LinkOpts) -> Result<Link> {
        if let Some(why) = not_ready(root) {
            bail!("USB4STREAM is not available: {why}");
        }
        if !valid_stream_name(&opts.name) {
            bail!(
                "stream name {:?} must be 1 to {MAX_NAME} letters, digits, '-' or '_'",
                opts.name
            );
        }
        let service = pick_service(root, opts)?;
        let conn_dir = root.path(STREAM_ROOT).join(&service);
        let created_conn = mkdir(&conn_dir, "connection")?;
        let mut link = Link::group(&service, &conn_dir, &opts.name, opts.role, opts.teardown);
        link.created_conn = created_conn;
        link.created_stream = mkdir(&link.stream_dir, "stream")?;
        if link.role == HopIds::Auto {
            link.role = decide_role(root, &service);
        }
        link.negotiate(root, opts.wait)?;
        Ok(link)
    }

    /// A stream group `name` of the connection `conn_dir`, not yet made.
    fn group(service: &str, conn_dir: &Path, name: &str, role: HopIds, teardown: bool) -> Link {
        Link {
            service: service.to_string(),
            name: name.to_string(),
            dev: PathBuf::new(),
            in_hopid: 0,
            out_hopid: 0,
            role,
            conn_dir: conn_dir.to_path_buf(),
            created_conn: false,
            created_stream: false,
            stream_dir: conn_dir.join(name),
            teardown,
            extra: Vec::new(),
        }
    }

    /// Sets up stream `1 + extra.len()` beside this one, as this one was
    /// (publishing or adopting), waiting at most `wait` for its HopIDs. Only a
    /// group made here is used: one that exists already belongs to someone else.
    fn add_group(&mut self, root: &Root, wait: Duration) -> Result<&Link> {
        let i = 1 + self.extra.len();
        let Some(name) = stream_name(&self.name, i) else {
            bail!(
                "the name {:?} leaves no name for stream {} (use a --name of at most 7 characters)",
                self.name,
                i + 1
            );
        };
        let mut g = Link::group(&self.service, &self.conn_dir, &name, self.role, true);
        if !mkdir(&g.stream_dir, "stream")? {
            bail!(
                "{} exists already (another program's stream? `rescue link down --name {name}` removes it)",
                g.stream_dir.display()
            );
        }
        g.created_stream = true;
        g.negotiate(root, Some(wait))?;
        self.extra.push(g);
        Ok(&self.extra[i - 1])
    }

    /// serve: publishes streams 1..`want` beside this one, stopping at the
    /// first that cannot be set up (no free HopID, a failed mkdir, a name
    /// clash) with one line saying why. Returns how many streams there are.
    pub fn publish_more(&mut self, root: &Root, want: u32) -> u32 {
        while self.streams() < want {
            if let Err(e) = self.add_group(root, PUBLISH_WAIT) {
                eprintln!(
                    "using {} stream(s) of the {want} asked for: {e:#}",
                    self.streams()
                );
                break;
            }
        }
        self.streams()
    }

    /// Client: adopts the next stream the peer published (after its HELLO
    /// offered it), waiting at most `wait`; returns its device.
    pub fn adopt_more(&mut self, root: &Root, wait: Duration) -> Result<PathBuf> {
        Ok(self.add_group(root, wait)?.dev.clone())
    }

    /// How many streams this link holds.
    pub fn streams(&self) -> u32 {
        1 + self.extra.len() as u32
    }

    /// The devices of streams 1.., in order.
    pub fn extra_devs(&self) -> Vec<PathBuf> {
        self.extra.iter().map(|g| g.dev.clone()).collect()
    }

    /// Removes the streams from `n` on (serve could not open one, or the
    /// client did not get them into the session).
    pub fn truncate(&mut self, n: u32) {
        self.extra.truncate(n.saturating_sub(1) as usize);
    }

    fn hopids(&self) -> (i64, i64) {
        (
            read_int(&self.stream_dir.join("in_hopid")).unwrap_or(0),
            read_int(&self.stream_dir.join("out_hopid")).unwrap_or(0),
        )
    }

    /// Whether the driver made the group's attributes (at mkdir in ConfigFS).
    fn attached(&self) -> bool {
        self.stream_dir.join("out_hopid").exists() && self.stream_dir.join("in_hopid").exists()
    }

    fn negotiate(&mut self, root: &Root, wait: Option<Duration>) -> Result<()> {
        let start = Instant::now();
        let mut told = false;
        let mut published = false;
        loop {
            let (i, o) = self.hopids();
            if i > 0 && o > 0 {
                self.in_hopid = i;
                self.out_hopid = o;
                break;
            }
            let adopt = self.role == HopIds::Adopt && self.created_stream;
            if adopt {
                // Re-create the group: attach-time is the only moment the kernel
                // adopts what the peer published.
                if start.elapsed() > Duration::from_millis(200) && rmdir(&self.stream_dir) {
                    self.created_stream = mkdir(&self.stream_dir, "stream")?;
                }
            } else if (!published || (i == 0 && o == 0)) && self.attached() {
                for attr in ["in_hopid", "out_hopid"] {
                    write_attr(&self.stream_dir.join(attr), "-1").map_err(|e| {
                        let why = match e.raw_os_error() {
                            Some(libc::ENOSPC) => {
                                "no free HopID (too many streams to this peer)".to_string()
                            }
                            Some(libc::EBUSY) => {
                                "the stream is open in another program".to_string()
                            }
                            _ => e.to_string(),
                        };
                        anyhow::anyhow!("setting {attr} of {}: {why}", self.stream_dir.display())
                    })?;
                }
                published = true;
            }
            crate::cancel::check("interrupted while setting the stream up")?;
            if wait.is_some_and(|w| start.elapsed() >= w) {
                return Err(Exit::new(
                    exit::PEER_GONE,
                    format!(
                        "the stream {}/{} got no HopIDs within {}s: {}",
                        self.service,
                        self.name,
                        start.elapsed().as_secs(),
                        if adopt {
                            "the peer has not published this stream; start `rescue serve` on the other machine"
                        } else {
                            "the peer's service is not attached; check the cable"
                        }
                    ),
                )
                .into());
            }
            if !told && start.elapsed() > Duration::from_secs(1) {
                eprintln!(
                    "waiting for {} to {} stream {:?}",
                    self.service,
                    if adopt { "publish" } else { "attach" },
                    self.name
                );
                told = true;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        let index = read_int(&self.stream_dir.join("index"))
            .with_context(|| format!("reading {}/index", self.stream_dir.display()))?;
        self.dev = root.path(format!("/dev/tbstream{index}"));
        let until = Instant::now() + Duration::from_secs(3);
        while !self.dev.exists() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(50));
        }
        if !self.dev.exists() {
            bail!(
                "{} did not appear (is devtmpfs mounted on /dev?)",
                self.dev.display()
            );
        }
        Ok(())
    }

    /// Tells the user which device the stream is and with which HopIDs.
    pub(crate) fn announce(&self) {
        self.announce_from(0);
    }

    /// Tells the user about streams `first`.. (the client joins its further
    /// streams after the first is announced).
    pub(crate) fn announce_from(&self, first: usize) {
        for g in std::iter::once(self).chain(&self.extra).skip(first) {
            eprintln!(
                "stream {}/{} is {} (HopIDs in {} out {})",
                g.service,
                g.name,
                g.dev.display(),
                g.in_hopid,
                g.out_hopid
            );
        }
    }

    /// Re-creates an adopted stream so it picks up HopIDs the peer published
    /// again (after the peer restarted). Only for groups we created.
    pub(crate) fn refresh(&mut self, root: &Root, wait: Option<Duration>) -> Result<()> {
        if self.role != HopIds::Adopt || !self.created_stream {
            return Ok(());
        }
        if rmdir(&self.stream_dir) {
            self.created_stream = mkdir(&self.stream_dir, "stream")?;
        }
        self.negotiate(root, wait)
    }

    /// Removes what we created. Directories made by someone else stay.
    pub(crate) fn down(&mut self) {
        // The further streams first: the connection goes only once it is empty.
        self.extra.clear();
        if self.created_stream {
            rmdir(&self.stream_dir);
            self.created_stream = false;
        }
        if self.created_conn {
            // Only if empty: another stream may use the same connection.
            if fs::read_dir(&self.conn_dir).is_ok_and(|mut d| d.next().is_none()) {
                rmdir(&self.conn_dir);
            }
            self.created_conn = false;
        }
    }

    /// Keeps the groups after this process ends (`rescue link up`).
    pub(crate) fn keep(&mut self) {
        self.teardown = false;
        for g in &mut self.extra {
            g.keep();
        }
        unregister(&self.stream_dir);
        unregister(&self.conn_dir);
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        if self.teardown {
            self.down();
        }
    }
}

/// Publish when our host UUID sorts after the peer's; adopt otherwise.
fn decide_role(root: &Root, service: &str) -> HopIds {
    let domain: u32 = service
        .split('-')
        .next()
        .and_then(|d| d.parse().ok())
        .unwrap_or(0);
    let ours = bus::local_uuid(root, domain);
    let theirs = bus::stream_services(root)
        .into_iter()
        .find(|s| s.name == service)
        .and_then(|s| bus::xdomain_of(root, &s))
        .and_then(|x| x.unique_id);
    match (ours, theirs) {
        (Some(a), Some(b)) if a.to_lowercase() > b.to_lowercase() => HopIds::Publish,
        (Some(_), Some(_)) => HopIds::Adopt,
        // Without both UUIDs there is no fair tie-break: publishing is the choice
        // that works with a peer set up by hand (as in upstream's example).
        _ => HopIds::Publish,
    }
}

/// Removes a stream (and its connection group when empty) for `rescue link down`.
pub(crate) fn remove(root: &Root, service: &str, name: &str) -> Result<()> {
    let conn_dir = root.path(STREAM_ROOT).join(service);
    let dir = conn_dir.join(name);
    if !dir.exists() {
        bail!("no stream {service}/{name} in ConfigFS");
    }
    fs::remove_dir(&dir).map_err(|e| match e.raw_os_error() {
        Some(libc::EBUSY) => anyhow::anyhow!(
            "{} is in use (a program has the device open)",
            dir.display()
        ),
        _ => anyhow::Error::new(e).context(format!("removing {}", dir.display())),
    })?;
    if fs::read_dir(&conn_dir).is_ok_and(|mut d| d.next().is_none()) {
        let _ = fs::remove_dir(&conn_dir);
    }
    Ok(())
}

/// Every configured stream: (service, name).
pub(crate) fn configured(root: &Root) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Ok(conns) = fs::read_dir(root.path(STREAM_ROOT)) {
        for c in conns.flatten() {
            if let Ok(streams) = fs::read_dir(c.path()) {
                for s in streams.flatten() {
                    if s.path().is_dir() {
                        out.push((
                            c.file_name().to_string_lossy().into_owned(),
                            s.file_name().to_string_lossy().into_owned(),
                        ));
                    }
                }
            }
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn further_streams_are_named_after_the_first() {
        assert_eq!(stream_name("backup", 0).as_deref(), Some("backup"));
        assert_eq!(stream_name("backup", 1).as_deref(), Some("backup1"));
        assert_eq!(stream_name("backup", 3).as_deref(), Some("backup3"));
        assert_eq!(stream_name("b", 2).as_deref(), Some("b2"));
        // At most 8 characters: the name is cut to make room for the digit.
        assert_eq!(stream_name("abcdefgh", 2).as_deref(), Some("abcdefg2"));
        assert!(stream_name("abcdefgh", 7).is_some_and(|n| valid_stream_name(&n)));
        // Never the first stream's name again, never two digits.
        assert_eq!(stream_name("abcdefg2", 2), None);
        assert_eq!(stream_name("abcdefg2", 1).as_deref(), Some("abcdefg1"));
        assert_eq!(stream_name("backup", 10), None);
    }

    #[test]
    fn names() {
        assert!(valid_service_name("0-1.0"));
        assert!(valid_service_name("0-503.0"));
        assert!(valid_service_name("1-a0f.12"));
        assert!(!valid_service_name("0-1"));
        assert!(!valid_service_name("x-1.0"));
        assert!(!valid_service_name("0-g.0"));
        assert!(valid_stream_name("backup"));
        assert!(!valid_stream_name("toolongname"));
        assert!(!valid_stream_name("a/b"));
    }
}
