//! The newc ("070701") cpio format the kernel unpacks as an initramfs, written by
//! hand so owners, modes, inode numbers, mtimes and device nodes are exactly what we
//! say (no root, no fakeroot, byte-identical output), and read back for `list`.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};

/// What an archive entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File(Vec<u8>),
    Symlink(String),
    CharDev { major: u32, minor: u32 },
}

/// One archive member. Paths are relative ("init", "lib/modules/...").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub path: String,
    /// Permission bits only (e.g. 0o755); the file type comes from `kind`.
    pub perm: u32,
    pub kind: Kind,
}

impl Entry {
    pub fn dir(path: &str, perm: u32) -> Self {
        Entry {
            path: path.into(),
            perm,
            kind: Kind::Dir,
        }
    }

    pub fn file(path: &str, perm: u32, data: Vec<u8>) -> Self {
        Entry {
            path: path.into(),
            perm,
            kind: Kind::File(data),
        }
    }

    pub fn symlink(path: &str, target: &str) -> Self {
        Entry {
            path: path.into(),
            perm: 0o777,
            kind: Kind::Symlink(target.into()),
        }
    }

    pub fn chardev(path: &str, perm: u32, major: u32, minor: u32) -> Self {
        Entry {
            path: path.into(),
            perm,
            kind: Kind::CharDev { major, minor },
        }
    }

    /// The full st_mode: type bits and permissions.
    pub fn mode(&self) -> u32 {
        let ty = match self.kind {
            Kind::Dir => 0o040000,
            Kind::File(_) => 0o100000,
            Kind::Symlink(_) => 0o120000,
            Kind::CharDev { .. } => 0o020000,
        };
        ty | (self.perm & 0o7777)
    }

    /// Bytes stored after the header: file contents or the link target.
    pub fn data(&self) -> &[u8] {
        match &self.kind {
            Kind::File(d) => d,
            Kind::Symlink(t) => t.as_bytes(),
            _ => &[],
        }
    }
}

/// A set of entries keyed by path; adding a file also adds its parent directories,
/// because the kernel's unpacker does not create them.
#[derive(Debug, Default, Clone)]
pub struct Archive {
    entries: BTreeMap<Vec<String>, Entry>,
}

impl Archive {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) an entry, creating missing parent directories as 0755.
    pub fn add(&mut self, mut e: Entry) {
        e.path = e.path.trim_matches('/').to_string();
        let parts: Vec<String> = e.path.split('/').map(str::to_string).collect();
        for i in 1..parts.len() {
            let key = parts[..i].to_vec();
            self.entries
                .entry(key.clone())
                .or_insert_with(|| Entry::dir(&key.join("/"), 0o755));
        }
        self.entries.insert(parts, e);
    }

    pub fn get(&self, path: &str) -> Option<&Entry> {
        let key: Vec<String> = path
            .trim_matches('/')
            .split('/')
            .map(str::to_string)
            .collect();
        self.entries.get(&key)
    }

    /// Entries in archive order: sorted by path component, so parents come first.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values()
    }

    /// The uncompressed newc bytes: owners 0:0, inodes numbered from 1 in order, one
    /// fixed mtime, then the TRAILER!!! entry.
    pub fn to_newc(&self, mtime: u32) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, e) in self.entries().enumerate() {
            let (rmaj, rmin) = match e.kind {
                Kind::CharDev { major, minor } => (major, minor),
                _ => (0, 0),
            };
            let nlink = if matches!(e.kind, Kind::Dir) { 2 } else { 1 };
            write_one(
                &mut out,
                &e.path,
                Header {
                    ino: i as u32 + 1,
                    mode: e.mode(),
                    nlink,
                    mtime,
                    rdevmajor: rmaj,
                    rdevminor: rmin,
                },
                e.data(),
            );
        }
        write_one(
            &mut out,
            "TRAILER!!!",
            Header {
                ino: 0,
                mode: 0,
                nlink: 1,
                mtime: 0,
                rdevmajor: 0,
                rdevminor: 0,
            },
            &[],
        );
        out
    }
}

struct Header {
    ino: u32,
    mode: u32,
    nlink: u32,
    mtime: u32,
    rdevmajor: u32,
    rdevminor: u32,
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

fn write_one(out: &mut Vec<u8>, name: &str, h: Header, data: &[u8]) {
    let fields = [
        h.ino,
        h.mode,
        0, // uid
        0, // gid
        h.nlink,
        h.mtime,
        data.len() as u32,
        0, // devmajor
        0, // devminor
        h.rdevmajor,
        h.rdevminor,
        name.len() as u32 + 1,
        0, // check
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08X}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
    out.extend_from_slice(data);
    pad4(out);
}

/// One member as read back from an archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadEntry {
    pub path: String,
    pub ino: u32,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub mtime: u32,
    pub rdev: (u32, u32),
    pub data: Vec<u8>,
}

impl ReadEntry {
    pub fn is_dir(&self) -> bool {
        self.mode & 0o170000 == 0o040000
    }
    pub fn is_symlink(&self) -> bool {
        self.mode & 0o170000 == 0o120000
    }
    pub fn is_chardev(&self) -> bool {
        self.mode & 0o170000 == 0o020000
    }
}

/// Parses uncompressed newc bytes up to the trailer (one archive; what follows the
/// trailer, such as padding, is ignored).
pub fn parse(buf: &[u8]) -> Result<Vec<ReadEntry>> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    loop {
        let hdr = buf
            .get(pos..pos + 110)
            .with_context(|| format!("truncated header at offset {pos}"))?;
        if &hdr[..6] != b"070701" && &hdr[..6] != b"070702" {
            bail!("bad cpio magic at offset {pos}");
        }
        let mut f = [0u32; 13];
        for (i, v) in f.iter_mut().enumerate() {
            let s = std::str::from_utf8(&hdr[6 + i * 8..14 + i * 8]).context("header field")?;
            *v = u32::from_str_radix(s, 16).with_context(|| format!("hex field {s:?}"))?;
        }
        let namesize = f[11] as usize;
        let name_start = pos + 110;
        let name = buf
            .get(name_start..name_start + namesize)
            .context("truncated name")?;
        let name = String::from_utf8_lossy(name.strip_suffix(&[0]).unwrap_or(name)).into_owned();
        let data_start = (name_start + namesize).next_multiple_of(4);
        let size = f[6] as usize;
        let data = buf
            .get(data_start..data_start + size)
            .with_context(|| format!("truncated data of {name}"))?
            .to_vec();
        pos = (data_start + size).next_multiple_of(4);
        if name == "TRAILER!!!" {
            return Ok(out);
        }
        out.push(ReadEntry {
            path: name,
            ino: f[0],
            mode: f[1],
            uid: f[2],
            gid: f[3],
            nlink: f[4],
            mtime: f[5],
            rdev: (f[9], f[10]),
            data,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_parents() {
        let mut a = Archive::new();
        a.add(Entry::file("lib/modules/x/a.ko", 0o644, b"abc".to_vec()));
        a.add(Entry::chardev("dev/console", 0o600, 5, 1));
        a.add(Entry::symlink("bin/rescue", "/init"));
        let bytes = a.to_newc(7);
        assert_eq!(bytes.len() % 4, 0);
        let r = parse(&bytes).expect("parse");
        let paths: Vec<&str> = r.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            vec![
                "bin",
                "bin/rescue",
                "dev",
                "dev/console",
                "lib",
                "lib/modules",
                "lib/modules/x",
                "lib/modules/x/a.ko"
            ]
        );
        assert_eq!(r[3].rdev, (5, 1));
        assert!(r[3].is_chardev());
        assert_eq!(r[1].data, b"/init");
        assert_eq!(r[7].data, b"abc");
        assert_eq!(r[7].mtime, 7);
        assert_eq!(r[7].ino, 8);
    }
}
