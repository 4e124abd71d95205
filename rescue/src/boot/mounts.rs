//! The pseudo-filesystems PID 1 mounts before anything else works: /proc, /sys,
//! /dev (devtmpfs creates /dev/tbstreamN and disk nodes without udev), /run, /tmp,
//! and ConfigFS once its module is in.

use std::fs;
use std::path::Path;

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::mount::{MsFlags, mount};

use crate::root::Root;

struct Mount {
    source: &'static str,
    target: &'static str,
    fstype: &'static str,
    flags: MsFlags,
    data: Option<&'static str>,
}

const EARLY: &[Mount] = &[
    Mount {
        source: "proc",
        target: "/proc",
        fstype: "proc",
        flags: MsFlags::MS_NOSUID
            .union(MsFlags::MS_NODEV)
            .union(MsFlags::MS_NOEXEC),
        data: None,
    },
    Mount {
        source: "sysfs",
        target: "/sys",
        fstype: "sysfs",
        flags: MsFlags::MS_NOSUID
            .union(MsFlags::MS_NODEV)
            .union(MsFlags::MS_NOEXEC),
        data: None,
    },
    Mount {
        source: "devtmpfs",
        target: "/dev",
        fstype: "devtmpfs",
        flags: MsFlags::MS_NOSUID,
        data: Some("mode=0755"),
    },
    Mount {
        source: "tmpfs",
        target: "/run",
        fstype: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: Some("mode=0755"),
    },
    Mount {
        source: "tmpfs",
        target: "/tmp",
        fstype: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: Some("mode=1777"),
    },
];

/// Whether `abs` is a mount point, from /proc/self/mountinfo.
pub(crate) fn is_mountpoint(root: &Root, abs: &Path) -> bool {
    let Ok(text) = fs::read_to_string(root.path("/proc/self/mountinfo")) else {
        return false;
    };
    let want = abs.to_string_lossy();
    text.lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .any(|mp| unescape(mp) == want)
}

/// mountinfo escapes spaces and such as \040.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn mount_one(m: &Mount) -> Result<()> {
    fs::create_dir_all(m.target).with_context(|| format!("mkdir {}", m.target))?;
    match mount(Some(m.source), m.target, Some(m.fstype), m.flags, m.data) {
        // Already mounted (the kernel may have mounted devtmpfs itself).
        Ok(()) | Err(Errno::EBUSY) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("mount {} on {}", m.fstype, m.target)),
    }
}

/// Mounts /proc, /sys, /dev, /run and /tmp on the real root, skipping what is
/// already mounted. Returns one message per failure; boot goes on regardless,
/// because a rescue system with a missing /tmp still beats one that stops.
pub(crate) fn mount_early() -> Vec<String> {
    let host = Root::host();
    let mut errors = Vec::new();
    for m in EARLY {
        // /proc first: later checks read /proc/self/mountinfo.
        if m.target != "/proc" && is_mountpoint(&host, Path::new(m.target)) {
            continue;
        }
        if let Err(e) = mount_one(m) {
            errors.push(format!("{e:#}"));
        }
    }
    errors
}

/// Mounts ConfigFS at /sys/kernel/config (the directory appears once configfs is
/// loaded or built in).
pub(crate) fn mount_configfs() -> Result<()> {
    let host = Root::host();
    let target = Path::new("/sys/kernel/config");
    if is_mountpoint(&host, target) {
        return Ok(());
    }
    if !target.is_dir() {
        anyhow::bail!("/sys/kernel/config missing: configfs not loaded");
    }
    match mount(
        Some("configfs"),
        target,
        Some("configfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    ) {
        Ok(()) | Err(Errno::EBUSY) => Ok(()),
        Err(e) => Err(e).context("mount configfs on /sys/kernel/config"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_mountinfo() {
        let t = tempfile::tempdir().expect("tempdir");
        let p = t.path().join("proc/self");
        fs::create_dir_all(&p).expect("mkdir");
        fs::write(
            p.join("mountinfo"),
            "22 1 0:21 / /proc rw - proc proc rw\n23 1 0:5 / /run/my\\040store rw - tmpfs tmpfs rw\n",
        )
        .expect("write");
        let r = Root::new(t.path());
        assert!(is_mountpoint(&r, Path::new("/proc")));
        assert!(is_mountpoint(&r, Path::new("/run/my store")));
        assert!(!is_mountpoint(&r, Path::new("/sys")));
    }
}
