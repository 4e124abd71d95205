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

/// ConfigFS directories this process created, for tear-down on a signal.
static CREATED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Removes every directory we created, newest first (called on SIGINT/SIGTERM).
/// Returns whether there was anything to remove.
pub fn teardown_all() -> bool {
    let mut any = false;
    if let Ok(mut v) = CREATED.lock() {
        while let Some(p) = v.pop() {
            let _ = fs::remove_dir(&p);
            any = true;
        }
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

/// A configured stream. Dropping it removes the groups it created.
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

pub(crate) fn valid_stream_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn read_int(p: &Path) -> Option<i64> {
    fs::read_to_string(p).ok()?.trim().parse().ok()
}

fn write_attr(p: &Path, v: &str) -> io::Result<()> {
    fs::write(p, v)
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
    if fs::remove_dir(p).is_err()
        && let Ok(entries) = fs::read_dir(p)
    {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_file()) {
                let _ = fs::remove_file(e.path());
            }
        }
        let _ = fs::remove_dir(p);
    }
    let gone = !p.exists();
    if gone {
        unregister(p);
    }
    gone
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
        let stream_dir = conn_dir.join(&opts.name);
        let mut link = Link {
            service: service.clone(),
            name: opts.name.clone(),
            dev: PathBuf::new(),
            in_hopid: 0,
            out_hopid: 0,
            role: opts.role,
            conn_dir,
            created_conn,
            created_stream: false,
            stream_dir,
            teardown: opts.teardown,
        };
        link.created_stream = mkdir(&link.stream_dir, "stream")?;
        if link.role == HopIds::Auto {
            link.role = decide_role(root, &service);
        }
        link.negotiate(root, opts.wait)?;
        Ok(link)
    }

    fn hopids(&self) -> (i64, i64) {
        (
            read_int(&self.stream_dir.join("in_hopid")).unwrap_or(0),
            read_int(&self.stream_dir.join("out_hopid")).unwrap_or(0),
        )
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
            } else if !published || (i == 0 && o == 0) {
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
        eprintln!(
            "stream {}/{} is {} (HopIDs in {} out {})",
            self.service,
            self.name,
            self.dev.display(),
            self.in_hopid,
            self.out_hopid
        );
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
