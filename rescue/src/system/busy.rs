//! Whether a restore target is in use through something stacked on it: its
//! partitions, holders (device mapper, md RAID, bcache), loop devices backed by
//! it or by a file on a filesystem of it, followed to any depth; whether an
//! image file backs a loop device; and whether another program holds a lock on
//! the target (as QEMU does on its disk images).

use std::collections::{BTreeSet, VecDeque};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path};

use crate::Root;
use crate::system::disks::resolve_in_root;
use crate::system::mountinfo::{self, Mount};

/// How far a walk goes: more stacked devices than this is not a real system.
const MAX_NODES: usize = 4096;

/// What is mounted and swapped on, and which loop devices back onto what.
struct System {
    /// Each mount, with its source resolved to a /dev path when it names a device.
    mounts: Vec<(Mount, Option<String>)>,
    swaps: Vec<String>,
    /// (loop device, its backing file or device as the kernel shows it).
    loops: Vec<(String, String)>,
}

impl System {
    fn read(root: &Root) -> Result<System, String> {
        let resolve = |p: &str| resolve_in_root(root, p);
        let table = mountinfo::read(root).map_err(|e| format!("{e:#}"))?;
        Ok(System {
            mounts: table
                .into_iter()
                .map(|m| {
                    let dev = m.source_is_device().then(|| resolve(&m.source));
                    (m, dev)
                })
                .collect(),
            swaps: mountinfo::swaps(root).iter().map(|s| resolve(s)).collect(),
            loops: loops(root),
        })
    }

    /// "mounted on /a, /b", "active swap", or nothing.
    fn usage(&self, root: &Root, name: &str) -> Vec<String> {
        let dev = format!("/dev/{name}");
        let num = dir_of(root, name)
            .and_then(|d| root.read_attr(format!("{d}/dev")))
            .and_then(|d| mountinfo::parse_devnum(&d))
            .filter(|n| n.0 != 0);
        let points: Vec<&str> = self
            .mounts
            .iter()
            .filter(|(m, src)| {
                num == Some((m.major, m.minor)) || src.as_deref() == Some(dev.as_str())
            })
            .map(|(m, _)| m.mount_point.as_str())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut out = Vec::new();
        if !points.is_empty() {
            out.push(format!("mounted on {}", points.join(", ")));
        }
        if self.swaps.contains(&dev) {
            out.push("active swap".into());
        }
        out
    }

    /// The device whose filesystem holds `file`: the innermost mount above it.
    fn device_holding(&self, file: &str) -> Option<(String, &str)> {
        let (m, src) = self
            .mounts
            .iter()
            .filter(|(m, _)| under(file, &m.mount_point))
            .max_by_key(|(m, _)| m.mount_point.len())?;
        let name = src.as_deref()?.strip_prefix("/dev/")?.to_string();
        Some((name, m.mount_point.as_str()))
    }
}

/// Whether `path` lies at or below directory `dir` (whole components).
fn under(path: &str, dir: &str) -> bool {
    let d: Vec<Component> = Path::new(dir).components().collect();
    let p: Vec<Component> = Path::new(path).components().collect();
    p.len() >= d.len() && p[..d.len()] == d[..]
}

/// Attached loop devices and what backs them.
fn loops(root: &Root) -> Vec<(String, String)> {
    let Ok(rd) = std::fs::read_dir(root.path("/sys/block")) else {
        return Vec::new();
    };
    let mut out: Vec<(String, String)> = rd
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| n.starts_with("loop"))
        .filter_map(|n| {
            let f = root.read_attr(format!("/sys/block/{n}/loop/backing_file"))?;
            // A file deleted while attached still backs the device.
            let f = f.strip_suffix(" (deleted)").unwrap_or(&f).to_string();
            (!f.is_empty()).then_some((n, f))
        })
        .collect();
    out.sort();
    out
}

/// The sysfs directory of a disk or partition: /sys/block/X or /sys/block/D/X.
fn dir_of(root: &Root, name: &str) -> Option<String> {
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        return None;
    }
    let whole = format!("/sys/block/{name}");
    if root.path(&whole).is_dir() {
        return Some(whole);
    }
    let rd = std::fs::read_dir(root.path("/sys/block")).ok()?;
    rd.flatten().find_map(|d| {
        let p = format!("/sys/block/{}/{name}", d.file_name().to_string_lossy());
        root.path(format!("{p}/partition")).is_file().then_some(p)
    })
}

fn entries(root: &Root, dir: &str) -> Vec<String> {
    let mut v: Vec<String> = match std::fs::read_dir(root.path(dir)) {
        Ok(rd) => rd
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .collect(),
        Err(_) => Vec::new(),
    };
    v.sort_by(|a, b| crate::system::disks::natural_cmp(a, b));
    v
}

/// How one device is stacked on another.
enum Rel {
    Partition,
    Holder,
    LoopOnDevice,
    /// A loop device backed by a file on the device's mounted filesystem.
    LoopOnFile(String),
}

/// Everything stacked directly on device `name`.
fn users(root: &Root, sys: &System, name: &str) -> Vec<(String, Rel)> {
    let Some(dir) = dir_of(root, name) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries(root, &dir) {
        if root.path(format!("{dir}/{e}/partition")).is_file() {
            out.push((e, Rel::Partition));
        }
    }
    for h in entries(root, &format!("{dir}/holders")) {
        out.push((h, Rel::Holder));
    }
    let dev = format!("/dev/{name}");
    for (l, backing) in &sys.loops {
        let resolved = resolve_in_root(root, backing);
        let on_device = resolved
            .strip_prefix("/dev/")
            .is_some_and(|n| !n.is_empty() && !n.contains('/'));
        if on_device {
            if resolved == dev {
                out.push((l.clone(), Rel::LoopOnDevice));
            }
        } else if sys.device_holding(backing).is_some_and(|(d, _)| d == name) {
            out.push((l.clone(), Rel::LoopOnFile(backing.clone())));
        }
    }
    out
}

/// Why writing to block device `name` (a disk, partition, loop or dm device)
/// would destroy data in use, following everything stacked on it to any depth;
/// `None` when nothing is. A system whose mount table cannot be read is not
/// assumed to be idle.
pub fn device_in_use(root: &Root, name: &str) -> Option<String> {
    let sys = match System::read(root) {
        Ok(s) => s,
        Err(e) => return Some(format!("cannot tell whether {name} is in use: {e}")),
    };
    let mut reasons = Vec::new();
    let mut seen = BTreeSet::from([name.to_string()]);
    let mut queue = VecDeque::from([name.to_string()]);
    while let Some(n) = queue.pop_front() {
        let usage = sys.usage(root, &n);
        if !usage.is_empty() {
            reasons.push(format!("{n} is {}", usage.join(" and ")));
        }
        for (u, rel) in users(root, &sys, &n) {
            let detail = describe(root, &u);
            match &rel {
                Rel::Partition => {}
                Rel::Holder => reasons.push(format!("{n} is held by {u}{detail}")),
                Rel::LoopOnDevice => {
                    reasons.push(format!("{n} is the backing device of {u}{detail}"))
                }
                Rel::LoopOnFile(f) => {
                    reasons.push(format!("{n} holds {f}, the backing file of {u}{detail}"))
                }
            }
            if seen.len() < MAX_NODES && seen.insert(u.clone()) {
                queue.push_back(u);
            }
        }
    }
    (!reasons.is_empty()).then(|| reasons.join("; "))
}

/// " (device mapper vg0-root)", " (md RAID raid1)" or "".
fn describe(root: &Root, name: &str) -> String {
    let attr = |a: &str| {
        root.read_attr(format!("/sys/block/{name}/{a}"))
            .filter(|s| !s.is_empty())
    };
    let what = if name.starts_with("dm-") {
        attr("dm/name").map(|n| format!("device mapper {n}"))
    } else if name.starts_with("md") {
        Some(attr("md/level").map_or("md RAID".into(), |l| format!("md RAID {l}")))
    } else {
        None
    };
    what.map(|w| format!(" ({w})")).unwrap_or_default()
}

/// Why writing to image file `path` (as the root sees it) would destroy data in
/// use: it backs a loop device (mounted or not: the kernel reads it at any
/// time), and what is stacked on that device.
pub fn file_in_use(root: &Root, path: &Path) -> Option<String> {
    let target = std::fs::metadata(path).ok()?;
    let mut reasons = Vec::new();
    for (l, backing) in loops(root) {
        let same = std::fs::metadata(root.path(&backing))
            .is_ok_and(|m| m.dev() == target.dev() && m.ino() == target.ino());
        if same {
            let mut r = format!("it is the backing file of {l}");
            if let Some(more) = device_in_use(root, &l) {
                r.push_str(&format!(" ({more})"));
            }
            reasons.push(r);
        }
    }
    (!reasons.is_empty()).then(|| reasons.join("; "))
}

/// Whether another open file holds a lock on `f`: an OFD or POSIX record lock
/// (QEMU locks its images so), or a flock(2) lock. Asks without keeping any
/// lock: F_OFD_GETLK only reports, and a flock taken to probe is dropped at once.
pub(crate) fn lock_holder(f: &File) -> Option<String> {
    let fd = f.as_raw_fd();
    // SAFETY: a plain C struct; all-zero is a valid value for it.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    // SAFETY: fcntl on our own descriptor with a valid flock struct.
    let r = unsafe { libc::fcntl(fd, libc::F_OFD_GETLK, &mut fl) };
    if r == 0 && fl.l_type != libc::F_UNLCK as libc::c_short {
        return Some(if fl.l_pid > 0 {
            format!("process {} holds a lock on it", fl.l_pid)
        } else {
            "another program holds a lock on it (as QEMU does on the disks of a running VM)".into()
        });
    }
    // SAFETY: flock on our own descriptor.
    if unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        // SAFETY: as above; releases the probe's lock at once.
        unsafe { libc::flock(fd, libc::LOCK_UN) };
        return None;
    }
    match std::io::Error::last_os_error().raw_os_error() {
        Some(libc::EWOULDBLOCK) => {
            Some("another program holds a lock on it (flock), so it is open and in use".into())
        }
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn finds_flock_and_ofd_locks_without_keeping_one() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("vm.img");
        std::fs::write(&p, [0u8; 4096]).unwrap();
        let probe = || lock_holder(&File::open(&p).unwrap());
        assert_eq!(probe(), None);
        // The probe took and dropped a flock: another one can be had now.
        let other = File::open(&p).unwrap();
        // SAFETY: flock on a descriptor this test owns.
        assert_eq!(
            unsafe { libc::flock(other.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) },
            0
        );
        assert!(probe().unwrap().contains("flock"));
        drop(other);
        assert_eq!(probe(), None);
        // An OFD lock on a few bytes, as QEMU takes them.
        let qemu = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&p)
            .unwrap();
        // SAFETY: as above.
        let mut fl: libc::flock = unsafe { std::mem::zeroed() };
        fl.l_type = libc::F_RDLCK as libc::c_short;
        fl.l_whence = libc::SEEK_SET as libc::c_short;
        fl.l_start = 100;
        fl.l_len = 1;
        // SAFETY: as above.
        assert_eq!(
            unsafe { libc::fcntl(qemu.as_raw_fd(), libc::F_OFD_SETLK, &fl) },
            0
        );
        assert!(probe().unwrap().contains("QEMU"));
        drop(qemu);
        assert_eq!(probe(), None);
    }

    #[test]
    fn paths_under_mount_points() {
        assert!(under("/srv/img/a.img", "/srv"));
        assert!(under("/srv/img/a.img", "/"));
        assert!(!under("/srvx/a.img", "/srv"));
    }
}
