//! Shared by the parser tests: fixture images built with the real mkfs tools, filled
//! through a loop mount with random files (one written then deleted), and the check
//! that zeroing every byte outside `used` leaves a filesystem fsck calls clean with
//! every file identical, and none of the deleted file's data.
#![allow(dead_code, clippy::unwrap_used)]

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// True when the test may mount loop devices; otherwise says why it is skipped.
pub fn can_mount(test: &str) -> bool {
    let root = fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false);
    if !root {
        eprintln!("skipping {test}: it mounts fixture images on loop devices, which needs root");
    }
    root
}

/// True when `tool` is on PATH; otherwise says why the test is skipped.
pub fn have(test: &str, tool: &str) -> bool {
    let found = std::env::var_os("PATH").is_some_and(|p| {
        std::env::split_paths(&p)
            .chain(["/sbin".into(), "/usr/sbin".into()])
            .any(|d| d.join(tool).is_file())
    });
    if !found {
        eprintln!("skipping {test}: {tool} is not installed (scripts/deps.sh lists its package)");
    }
    found
}

/// Runs a command, failing the test with its output if it fails.
pub fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .env("PATH", "/usr/sbin:/sbin:/usr/bin:/bin")
        .output()
        .unwrap_or_else(|e| panic!("running {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A sparse file of `mib` MiB.
pub fn blank(path: &Path, mib: u64) {
    let f = fs::File::create(path).unwrap();
    f.set_len(mib << 20).unwrap();
}

/// A small deterministic generator: the fixtures differ per seed, not per run.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next().to_le_bytes());
        }
        v.truncate(n);
        v
    }
}

/// A mounted image, unmounted when dropped.
pub struct Mount {
    pub dir: tempfile::TempDir,
}

impl Mount {
    pub fn new(img: &Path, opts: &str) -> Mount {
        let dir = tempfile::tempdir().unwrap();
        run(
            "mount",
            &[
                "-o",
                &format!("loop,{opts}"),
                img.to_str().unwrap(),
                dir.path().to_str().unwrap(),
            ],
        );
        Mount { dir }
    }
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// Fills a mounted filesystem with a small random tree, writes `deleted_kib` KiB of
/// random data to a file it then deletes (after a sync, so its blocks were
/// allocated on disk), and returns that data.
pub fn populate(mnt: &Path, rng: &mut Rng, deleted_kib: usize) -> Vec<u8> {
    let gone = rng.bytes(deleted_kib << 10);
    fs::write(mnt.join("deleted.bin"), &gone).unwrap();
    run("sync", &[]);
    write_tree(mnt, rng);
    fs::remove_file(mnt.join("deleted.bin")).unwrap();
    run("sync", &[]);
    gone
}

/// A small random tree under `dir`: directories, files of up to 300 KiB, an empty
/// file, a sparse one.
pub fn write_tree(dir: &Path, rng: &mut Rng) {
    for d in 0..3 {
        let sub = dir.join(format!("dir{d}/sub"));
        fs::create_dir_all(&sub).unwrap();
        for f in 0..4 {
            let n = rng.below(300 << 10) as usize + 1;
            let p = sub.join(format!("file{f}.dat"));
            fs::write(&p, rng.bytes(n)).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(0o600 + f)).unwrap();
        }
    }
    fs::write(dir.join("empty"), b"").unwrap();
    fs::write(dir.join("small.txt"), b"a few bytes\n").unwrap();
    // A sparse file: its hole is free space, its two ends are data.
    let mut f = fs::File::create(dir.join("sparse")).unwrap();
    f.write_all(&rng.bytes(5000)).unwrap();
    f.seek(SeekFrom::Start(3 << 20)).unwrap();
    f.write_all(&rng.bytes(7000)).unwrap();
}

/// Copies `src` to `dst` keeping only the bytes inside `used` (the rest is zero).
pub fn keep_only(src: &Path, used: &[Range<u64>], dst: &Path) {
    let mut from = fs::File::open(src).unwrap();
    let to = fs::File::create(dst).unwrap();
    to.set_len(from.metadata().unwrap().len()).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    for r in used {
        let mut at = r.start;
        while at < r.end {
            let n = (r.end - at).min(buf.len() as u64) as usize;
            from.seek(SeekFrom::Start(at)).unwrap();
            from.read_exact(&mut buf[..n]).unwrap();
            std::os::unix::fs::FileExt::write_all_at(&to, &buf[..n], at).unwrap();
            at += n as u64;
        }
    }
}

/// How many 512-byte pieces of `data` appear at 512-aligned offsets of `img`.
pub fn pieces_found(img: &Path, data: &[u8]) -> usize {
    let pieces: std::collections::HashSet<&[u8]> = data.chunks_exact(512).collect();
    let bytes = fs::read(img).unwrap();
    bytes
        .chunks_exact(512)
        .filter(|c| pieces.contains(c))
        .count()
}

/// Every entry under `a` and `b`: path, type, mode, size, mtime, owner, content.
fn tree(root: &Path) -> Vec<(PathBuf, u32, u64, i64, u32, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        for e in fs::read_dir(&p).unwrap() {
            let e = e.unwrap();
            let m = fs::symlink_metadata(e.path()).unwrap();
            let content = if m.is_file() {
                fs::read(e.path()).unwrap()
            } else if m.file_type().is_symlink() {
                fs::read_link(e.path())
                    .unwrap()
                    .into_os_string()
                    .into_encoded_bytes()
            } else {
                stack.push(e.path());
                Vec::new()
            };
            let rel = e.path().strip_prefix(root).unwrap().to_path_buf();
            out.push((rel, m.mode(), m.len(), m.mtime(), m.uid(), content));
        }
    }
    out.sort();
    out
}

/// How the tests see an image's files: mounted read-only on a loop device, or (for
/// a filesystem this kernel cannot mount, like vfat without its module) extracted
/// with mtools.
pub enum View {
    Mount(&'static str),
    Mtools,
}

/// An image's files, seen one way or the other, for as long as this lives.
enum Seen {
    Mounted(Mount),
    Extracted(tempfile::TempDir),
}

impl Seen {
    fn path(&self) -> &Path {
        match self {
            Seen::Mounted(m) => m.path(),
            Seen::Extracted(d) => d.path(),
        }
    }
}

fn see(img: &Path, view: &View) -> Seen {
    match view {
        View::Mount(opts) => Seen::Mounted(Mount::new(img, opts)),
        View::Mtools => {
            let d = tempfile::tempdir().unwrap();
            let i = img.to_str().unwrap();
            run(
                "mcopy",
                &[
                    "-s",
                    "-m",
                    "-n",
                    "-i",
                    i,
                    "::/*",
                    d.path().to_str().unwrap(),
                ],
            );
            Seen::Extracted(d)
        }
    }
}

/// The check every parser's fixture passes: `used` covers every allocated byte
/// (fsck of the copy with the rest zeroed is clean, every file is identical) and
/// leaves out the deleted file (its data is in the image, not in the copy, but for
/// `slack` 512-byte pieces: what an allocation unit larger than a block keeps of it
/// past a new file's end, as in a bigalloc cluster).
pub fn check_copy(
    img: &Path,
    used: &[Range<u64>],
    fsck: &[&str],
    view: &View,
    gone: &[u8],
    slack: usize,
) {
    let copy = img.with_extension("copy");
    keep_only(img, used, &copy);
    let mut args = fsck.to_vec();
    args.push(copy.to_str().unwrap());
    run(args[0], &args[1..]);
    let a = see(img, view);
    let b = see(&copy, view);
    let (ta, tb) = (tree(a.path()), tree(b.path()));
    assert!(
        ta.len() > 10,
        "the fixture holds the files written: {}",
        ta.len()
    );
    assert!(ta == tb, "the copy's tree differs from the original's");
    drop((a, b));
    let before = pieces_found(img, gone);
    let after = pieces_found(&copy, gone);
    assert!(
        before > gone.len() / 512 / 2,
        "the deleted data is still in the image ({before} pieces)"
    );
    assert!(
        after <= slack,
        "{after} pieces of the deleted data are in the copy"
    );
    fs::remove_file(&copy).unwrap();
}

/// Overwrites `bytes` at `offset` of the file at `path`.
pub fn poke(path: &Path, offset: u64, bytes: &[u8]) {
    let f = fs::OpenOptions::new().write(true).open(path).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, bytes, offset).unwrap();
}

/// Reads `n` bytes at `offset` of the file at `path`.
pub fn peek(path: &Path, offset: u64, n: usize) -> Vec<u8> {
    let f = fs::File::open(path).unwrap();
    let mut b = vec![0u8; n];
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut b, offset).unwrap();
    b
}
