//! The mount table (/proc/self/mountinfo) and active swap areas (/proc/swaps), so
//! that disks in use can be recognised and refused as restore targets.

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::Root;

/// One line of /proc/self/mountinfo, with the octal escapes undone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Mount {
    pub(crate) mount_id: u32,
    pub(crate) parent_id: u32,
    pub(crate) major: u32,
    pub(crate) minor: u32,
    /// The directory of the filesystem that is mounted here (bind mounts, btrfs subvolumes).
    pub(crate) root: String,
    pub(crate) mount_point: String,
    pub(crate) options: String,
    /// Optional fields such as `shared:1`.
    pub(crate) optional: Vec<String>,
    pub(crate) fs_type: String,
    /// What was mounted: "/dev/sda1", "tmpfs", "none".
    pub(crate) source: String,
    pub(crate) super_options: String,
}

impl Mount {
    /// Whether the source names a device node (as opposed to "tmpfs", "proc", ...).
    pub(crate) fn source_is_device(&self) -> bool {
        self.source.starts_with("/dev/")
    }
}

/// Reads and parses /proc/self/mountinfo under `root`.
pub(crate) fn read(root: &Root) -> anyhow::Result<Vec<Mount>> {
    let path = root.path("/proc/self/mountinfo");
    let text = std::fs::read_to_string(&path).context("reading /proc/self/mountinfo")?;
    Ok(parse(&text))
}

/// Parses mountinfo text; lines that do not have the expected shape are skipped,
/// because one odd line must not hide every other mount from the safety checks.
pub(crate) fn parse(text: &str) -> Vec<Mount> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Mount> {
    // Fields are separated by single spaces; spaces inside paths arrive as \040.
    let fields: Vec<&str> = line.split(' ').filter(|f| !f.is_empty()).collect();
    let sep = fields.iter().position(|f| *f == "-")?;
    if sep < 6 || fields.len() < sep + 2 {
        return None;
    }
    let (major, minor) = parse_devnum(fields[2])?;
    Some(Mount {
        mount_id: fields[0].parse().ok()?,
        parent_id: fields[1].parse().ok()?,
        major,
        minor,
        root: unescape(fields[3]),
        mount_point: unescape(fields[4]),
        options: fields[5].to_string(),
        optional: fields[6..sep].iter().map(|s| s.to_string()).collect(),
        fs_type: unescape(fields[sep + 1]),
        source: fields.get(sep + 2).map(|s| unescape(s)).unwrap_or_default(),
        super_options: fields
            .get(sep + 3)
            .map(|s| s.to_string())
            .unwrap_or_default(),
    })
}

/// Parses "259:2".
pub(crate) fn parse_devnum(s: &str) -> Option<(u32, u32)> {
    let (maj, min) = s.trim().split_once(':')?;
    Some((maj.parse().ok()?, min.parse().ok()?))
}

/// Undoes the kernel's `\ooo` escaping of space, tab, newline and backslash
/// (any three octal digits are accepted; anything else is kept as written).
pub(crate) fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let digits = &b[i + 1..i + 4];
            if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                let v = (digits[0] - b'0') as u32 * 64
                    + (digits[1] - b'0') as u32 * 8
                    + (digits[2] - b'0') as u32;
                if let Ok(byte) = u8::try_from(v) {
                    out.push(byte);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Device paths (or files) of the active swap areas in /proc/swaps; empty when the
/// file is missing, since a kernel without swap support has nothing to protect.
pub(crate) fn swaps(root: &Root) -> Vec<String> {
    match std::fs::read_to_string(root.path("/proc/swaps")) {
        Ok(text) => parse_swaps(&text),
        Err(_) => Vec::new(),
    }
}

/// Parses /proc/swaps text (the first line is a header).
pub(crate) fn parse_swaps(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| !l.starts_with("Filename"))
        .filter_map(|l| l.split_whitespace().next())
        .map(|f| {
            let f = unescape(f);
            // A swap file removed while active shows as "path\040(deleted)".
            f.strip_suffix(" (deleted)")
                .map(str::to_string)
                .unwrap_or(f)
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw,errors=remount-ro
25 22 259:1 / /boot/efi rw,relatime shared:5 - vfat /dev/nvme0n1p1 rw,fmask=0077
30 22 0:26 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
41 30 0:34 / /sys/kernel/config rw,relatime shared:19 - configfs configfs rw
60 22 8:17 /data /media/My\\040Disk\\011x rw,relatime - ext4 /dev/sdb1 rw
61 22 0:50 / /mnt/back\\134slash rw master:3 propagate_from:2 - fuse.sshfs me@host:/a\\040b rw
garbage line
62 22 x:y / /bad rw - ext4 /dev/x rw
63 22 0:51 / /nosep rw ext4 /dev/y rw
";

    #[test]
    fn parses_fields_and_escapes() {
        let m = parse(SAMPLE);
        assert_eq!(m.len(), 6);
        assert_eq!(m[0].mount_point, "/");
        assert_eq!((m[0].major, m[0].minor), (259, 2));
        assert_eq!(m[0].source, "/dev/nvme0n1p2");
        assert_eq!(m[0].optional, vec!["shared:1"]);
        assert_eq!(m[3].fs_type, "configfs");
        assert_eq!(m[4].mount_point, "/media/My Disk\tx");
        assert_eq!(m[4].root, "/data");
        assert!(m[4].optional.is_empty());
        assert_eq!(m[5].mount_point, "/mnt/back\\slash");
        assert_eq!(m[5].optional, vec!["master:3", "propagate_from:2"]);
        assert_eq!(m[5].source, "me@host:/a b");
        assert!(!m[5].source_is_device());
    }

    #[test]
    fn tolerates_odd_input() {
        assert!(parse("").is_empty());
        assert!(parse("1 2 3:4 / / rw -").is_empty());
        let m = parse("1 2 3:4 / / rw - ext4");
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].source, "");
        assert_eq!(unescape("a\\04"), "a\\04");
        assert_eq!(unescape("a\\"), "a\\");
        assert_eq!(unescape("\\777x"), "\\777x");
        assert_eq!(unescape("\\0401"), " 1");
        assert_eq!(unescape("é\\040"), "é ");
    }

    #[test]
    fn parses_swaps() {
        let text = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n\
/dev/nvme0n1p3                          partition\t8388604\t\t0\t\t-2\n\
/swap\\040file\\040(deleted)                file\t1024\t0\t-3\n";
        assert_eq!(parse_swaps(text), vec!["/dev/nvme0n1p3", "/swap file"]);
    }
}
