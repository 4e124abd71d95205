//! Reading an initramfs back: detects the compression, checks that an xz stream
//! uses the CRC32 check the kernel requires, and parses the newc entries; `cat`
//! gives a module's or an image member's bytes (the test rigs read through it, so
//! nothing but `bootfacts` decompresses).

use std::fs;
use std::path::Path;

use anyhow::{Context, Result, bail};
use bootfacts::decompress::{Compression, decompress, read_module};

use crate::newc::{ReadEntry, parse};

/// An image as read from disk.
#[derive(Debug, Clone)]
pub struct Listing {
    /// "xz", "gzip" or "none".
    pub compression: &'static str,
    /// For xz: the stream's check type name ("CRC32", "CRC64", "SHA-256", "none").
    pub xz_check: Option<&'static str>,
    pub file_size: usize,
    pub uncompressed: usize,
    pub entries: Vec<ReadEntry>,
}

/// The check type an xz stream header declares (byte 7, low nibble).
pub fn xz_check(bytes: &[u8]) -> Option<&'static str> {
    if bytes.len() < 12 || &bytes[..6] != b"\xfd7zXZ\x00" {
        return None;
    }
    Some(match bytes[7] & 0x0f {
        0x00 => "none",
        0x01 => "CRC32",
        0x04 => "CRC64",
        0x0a => "SHA-256",
        _ => "unknown",
    })
}

/// Reads and parses an image file.
pub fn read_image(path: &Path) -> Result<Listing> {
    let bytes = fs::read(path).with_context(|| format!("read {}", path.display()))?;
    let Some(kind) = Compression::of_image(&bytes) else {
        bail!("{}: not an xz, gzip or newc cpio image", path.display());
    };
    let raw = decompress(kind, &bytes[..]).with_context(|| format!("read {}", path.display()))?;
    let compression = kind.name();
    let entries = parse(&raw).context("parse cpio")?;
    Ok(Listing {
        compression,
        xz_check: xz_check(&bytes),
        file_size: bytes.len(),
        uncompressed: raw.len(),
        entries,
    })
}

/// What `image cat` prints: with `member`, that regular file of the image at `path`
/// (its bytes as archived: a `.ko.xz` stays compressed); without, the module file at
/// `path` decompressed (.ko, .ko.xz or .ko.gz), as a loader would hand it to the kernel.
pub fn cat(path: &Path, member: Option<&str>) -> Result<Vec<u8>> {
    let Some(member) = member else {
        return read_module(path);
    };
    let mut l = read_image(path)?;
    let wanted = member.trim_start_matches('/');
    let Some(i) = l.entries.iter().position(|e| e.path == wanted) else {
        bail!(
            "{}: no {wanted} in this image (`image list` shows what it holds)",
            path.display()
        );
    };
    let e = l.entries.swap_remove(i);
    if e.is_dir() || e.is_symlink() || e.is_chardev() {
        bail!("{}: {wanted} is not a regular file", path.display());
    }
    Ok(e.data)
}

/// `ls -l`-like text for a listing.
pub fn render(l: &Listing) -> String {
    let mut s = String::new();
    for e in &l.entries {
        let ty = if e.is_dir() {
            'd'
        } else if e.is_symlink() {
            'l'
        } else if e.is_chardev() {
            'c'
        } else {
            '-'
        };
        let size = if e.is_chardev() {
            format!("{},{}", e.rdev.0, e.rdev.1)
        } else {
            e.data.len().to_string()
        };
        let target = if e.is_symlink() {
            format!(" -> {}", String::from_utf8_lossy(&e.data))
        } else {
            String::new()
        };
        s.push_str(&format!(
            "{ty}{:04o} {}:{} {:>10} {}{target}\n",
            e.mode & 0o7777,
            e.uid,
            e.gid,
            size,
            e.path
        ));
    }
    s.push_str(&format!(
        "{} entries; {} bytes uncompressed; file {} bytes ({}{})\n",
        l.entries.len(),
        l.uncompressed,
        l.file_size,
        l.compression,
        l.xz_check
            .map(|c| format!(", check {c}"))
            .unwrap_or_default()
    ));
    s
}
