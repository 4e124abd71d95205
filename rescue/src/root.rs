//! An injectable filesystem root, so everything that reads /sys, /proc, /dev or
//! ConfigFS can run against a fake tree in tests.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Where "/" is. `Root::host()` is the real system; tests point it at a fixture tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Root(PathBuf);

impl Root {
    /// The running system's root.
    pub fn host() -> Self {
        Root(PathBuf::from("/"))
    }

    /// A fake root tree (tests) or a chroot.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Root(path.into())
    }

    /// Whether this is the real "/" (some checks, like ioctls, only make sense there).
    pub(crate) fn is_host(&self) -> bool {
        self.0 == Path::new("/")
    }

    /// The directory this root stands for.
    pub fn base(&self) -> &Path {
        &self.0
    }

    /// Maps an absolute system path such as `/sys/block` into this root.
    pub fn path(&self, abs: impl AsRef<Path>) -> PathBuf {
        let abs = abs.as_ref();
        let rel = abs.strip_prefix("/").unwrap_or(abs);
        self.0.join(rel)
    }

    /// Where a disk named on the command line lives: `nvme0n1` means /dev/nvme0n1
    /// below this root; a path (or an existing file in the current directory) is
    /// taken as given, absolute paths mapped into a fake root.
    pub(crate) fn disk_path(&self, spec: &str) -> PathBuf {
        if spec.contains('/') || Path::new(spec).is_file() {
            self.given_path(Path::new(spec))
        } else {
            self.path(format!("/dev/{spec}"))
        }
    }

    /// A path the user gave: absolute ones are mapped below a fake root
    /// (tests), relative ones and everything on the real root stay as given.
    pub(crate) fn given_path(&self, p: &Path) -> PathBuf {
        if p.is_absolute() && !self.is_host() {
            self.path(p)
        } else {
            p.to_path_buf()
        }
    }

    /// Reads a sysfs-style attribute: trimmed text, `None` when absent or unreadable.
    pub(crate) fn read_attr(&self, abs: impl AsRef<Path>) -> Option<String> {
        read_trimmed(&self.path(abs)).ok()
    }

    /// Reads an attribute and parses it as an unsigned number (decimal or 0x hex).
    pub(crate) fn read_u64(&self, abs: impl AsRef<Path>) -> Option<u64> {
        self.read_attr(abs).and_then(|s| parse_u64(&s))
    }
}

/// Reads a whole small file and trims surrounding white space.
pub(crate) fn read_trimmed(path: &Path) -> io::Result<String> {
    let s = fs::read_to_string(path)?;
    Ok(s.trim().to_string())
}

/// Parses "123" or "0x7b".
pub(crate) fn parse_u64(s: &str) -> Option<u64> {
    let s = s.trim();
    if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u64::from_str_radix(hex, 16).ok()
    } else {
        s.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_absolute_paths_into_root() {
        let r = Root::new("/tmp/fake");
        assert_eq!(r.path("/sys/block"), PathBuf::from("/tmp/fake/sys/block"));
        assert!(!r.is_host());
        assert!(Root::host().is_host());
    }

    #[test]
    fn parses_numbers() {
        assert_eq!(parse_u64("42\n"), Some(42));
        assert_eq!(parse_u64("0x1f"), Some(31));
        assert_eq!(parse_u64("x"), None);
    }
}
