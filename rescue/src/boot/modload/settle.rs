//! Waiting for block devices to show up after drivers load: with no udev there is
//! no "settle", so watch /sys/block until it stops changing.

use std::fs;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use crate::root::Root;

/// How long /sys/block must stay unchanged before the set of disks counts as settled.
/// USB storage probes about a second after enumeration (usb-storage delay_use), so
/// waiting on the first quiet moment alone would miss USB disks; `wait_for_disks`
/// callers pass a timeout that covers that.
pub(crate) const QUIET: Duration = Duration::from_millis(600);
const POLL: Duration = Duration::from_millis(100);

/// The outcome of a settle: the names seen at the end and whether they stopped
/// changing before the timeout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
    pub names: Vec<String>,
    pub stable: bool,
    pub(crate) waited: Duration,
}

/// Waits until /sys/block has not changed for `QUIET`, or `timeout` passes.
pub fn wait_for_disks(root: &Root, timeout: Duration) -> Settled {
    settle_dir(&root.path("/sys/block"), QUIET, timeout)
}

/// Waits until the entries of `dir` stay the same for `quiet`, at most `timeout`.
pub(crate) fn settle_dir(dir: &Path, quiet: Duration, timeout: Duration) -> Settled {
    let start = Instant::now();
    let mut last = list(dir);
    let mut since = Instant::now();
    loop {
        let now = Instant::now();
        if now.duration_since(since) >= quiet {
            return Settled {
                names: last,
                stable: true,
                waited: start.elapsed(),
            };
        }
        if now.duration_since(start) >= timeout {
            return Settled {
                names: last,
                stable: false,
                waited: start.elapsed(),
            };
        }
        thread::sleep(POLL.min(quiet));
        let cur = list(dir);
        if cur != last {
            last = cur;
            since = Instant::now();
        }
    }
}

fn list(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}
