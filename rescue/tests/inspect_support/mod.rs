//! Shared helpers of the inspection tests (disks, partitions, fabric): copying a
//! fixture tree into a temporary root, writing small GPT/MBR images and the mkfs-made
//! filesystems of fixtures/fs into them, and comparing output with expected files
//! (UPDATE_EXPECT=1 rewrites them).

#![allow(dead_code)]

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// The package's directory as cargo names it when it runs the tests. The value
/// built in is a fallback only: cargo does not rebuild a test binary for a checkout
/// at another path that shares its target directory, and the built-in one then
/// names the other checkout.
pub fn manifest_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| env!("CARGO_MANIFEST_DIR").into(), PathBuf::from)
}

pub fn fixtures() -> PathBuf {
    manifest_dir().join("tests/fixtures")
}

/// Copies fixture `case` into a fresh temporary directory, keeping symlinks as they
/// are (sysfs is mostly relative symlinks), so tests may add disk images to it.
pub fn fixture_root(case: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dst = tmp.path().join(case);
    copy_tree(&fixtures().join(case), &dst);
    (tmp, dst)
}

fn copy_tree(src: &Path, dst: &Path) {
    fs::create_dir_all(dst).unwrap();
    for e in fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let ty = e.file_type().unwrap();
        let to = dst.join(e.file_name());
        if ty.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(e.path()).unwrap(), &to).unwrap();
        } else if ty.is_dir() {
            copy_tree(&e.path(), &to);
        } else {
            fs::copy(e.path(), &to).unwrap();
        }
    }
}

/// Compares `actual` with the file `name` beside fixture `case`; UPDATE_EXPECT=1
/// writes it instead.
pub fn expect(case: &str, name: &str, actual: &str) {
    let path = fixtures().join(case).join(name);
    if std::env::var_os("UPDATE_EXPECT").is_some() {
        fs::write(&path, actual).unwrap();
        return;
    }
    let want = fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with UPDATE_EXPECT=1 to create it)",
            path.display()
        )
    });
    if want != actual {
        panic!(
            "output differs from {} (run with UPDATE_EXPECT=1 to accept):\n--- expected\n{want}\n--- actual\n{actual}",
            path.display()
        );
    }
}

/// Encodes a textual GUID in the on-disk mixed-endian layout.
pub fn guid_bytes(s: &str) -> [u8; 16] {
    let hex: String = s.chars().filter(|c| *c != '-').collect();
    let mut b = [0u8; 16];
    for i in 0..16 {
        b[i] = u8::from_str_radix(&hex[i * 2..i * 2 + 2], 16).unwrap();
    }
    b[0..4].reverse();
    b[4..6].reverse();
    b[6..8].reverse();
    b
}

pub const EFI: &str = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b";
pub const LINUX_FS: &str = "0fc63daf-8483-4772-8e79-3d69d8477de4";
pub const LINUX_SWAP: &str = "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f";
pub const LINUX_RAID: &str = "a19d880f-05fc-4d3b-a006-743f0f84911e";
pub const LINUX_LVM: &str = "e6d6d379-f507-44c2-a23c-238f2a3df928";
pub const MS_DATA: &str = "ebd0a0a2-b9e5-4433-87c0-68b6b72699c7";

pub struct GptPart<'a> {
    pub type_guid: &'a str,
    pub uuid: &'a str,
    pub first: u64,
    pub last: u64,
    pub name: &'a str,
}

/// The pieces of a GPT disk: (offset, bytes) writes, so a large disk can be a sparse file.
pub struct GptLayout {
    pub sector: u64,
    pub total_sectors: u64,
    pub mbr: Vec<u8>,
    pub primary_header: Vec<u8>,
    pub entries: Vec<u8>,
    pub backup_header: Vec<u8>,
}

pub fn gpt_layout(
    sector: u32,
    total_sectors: u64,
    disk_guid: &str,
    parts: &[GptPart],
) -> GptLayout {
    let sector = sector as u64;
    let n_entries = 128u32;
    let mut entries = vec![0u8; n_entries as usize * 128];
    for (i, p) in parts.iter().enumerate() {
        let e = &mut entries[i * 128..(i + 1) * 128];
        e[0..16].copy_from_slice(&guid_bytes(p.type_guid));
        e[16..32].copy_from_slice(&guid_bytes(p.uuid));
        e[32..40].copy_from_slice(&p.first.to_le_bytes());
        e[40..48].copy_from_slice(&p.last.to_le_bytes());
        for (j, u) in p.name.encode_utf16().take(36).enumerate() {
            e[56 + j * 2..58 + j * 2].copy_from_slice(&u.to_le_bytes());
        }
    }
    let entry_sectors = (entries.len() as u64).div_ceil(sector);
    let last = total_sectors - 1;
    let header = |my: u64, alt: u64, entries_lba: u64| {
        let mut h = vec![0u8; sector as usize];
        h[0..8].copy_from_slice(b"EFI PART");
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[24..32].copy_from_slice(&my.to_le_bytes());
        h[32..40].copy_from_slice(&alt.to_le_bytes());
        h[40..48].copy_from_slice(&(2 + entry_sectors).to_le_bytes());
        h[48..56].copy_from_slice(&(last - 1 - entry_sectors).to_le_bytes());
        h[56..72].copy_from_slice(&guid_bytes(disk_guid));
        h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
        h[80..84].copy_from_slice(&n_entries.to_le_bytes());
        h[84..88].copy_from_slice(&128u32.to_le_bytes());
        h[88..92].copy_from_slice(&crc32fast::hash(&entries).to_le_bytes());
        fix_header_crc(&mut h);
        h
    };
    let mut mbr = vec![0u8; 512];
    mbr[446 + 4] = 0xee;
    mbr[446 + 8..446 + 12].copy_from_slice(&1u32.to_le_bytes());
    let pm = u32::try_from(total_sectors - 1).unwrap_or(u32::MAX);
    mbr[446 + 12..446 + 16].copy_from_slice(&pm.to_le_bytes());
    mbr[510] = 0x55;
    mbr[511] = 0xaa;
    GptLayout {
        sector,
        total_sectors,
        mbr,
        primary_header: header(1, last, 2),
        backup_header: header(last, 1, last - entry_sectors),
        entries,
    }
}

/// Recomputes the CRC32 of a GPT header block (after a test edited it).
pub fn fix_header_crc(h: &mut [u8]) {
    let size = (u32::from_le_bytes(h[12..16].try_into().unwrap()) as usize).clamp(92, h.len());
    h[16..20].fill(0);
    let crc = crc32fast::hash(&h[..size]);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
}

impl GptLayout {
    /// Writes the disk as a (sparse) file of its full size.
    pub fn write(&self, path: &Path) {
        let f = fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(path)
            .unwrap();
        f.set_len(self.total_sectors * self.sector).unwrap();
        let last = self.total_sectors - 1;
        let entry_sectors = (self.entries.len() as u64).div_ceil(self.sector);
        f.write_all_at(&self.mbr, 0).unwrap();
        f.write_all_at(&self.primary_header, self.sector).unwrap();
        f.write_all_at(&self.entries, 2 * self.sector).unwrap();
        f.write_all_at(&self.entries, (last - entry_sectors) * self.sector)
            .unwrap();
        f.write_all_at(&self.backup_header, last * self.sector)
            .unwrap();
    }
}

/// One MBR/EBR sector with up to four (type, start, sectors) entries.
pub fn mbr_sector(signature: u32, parts: &[(u8, u32, u32)]) -> Vec<u8> {
    let mut s = vec![0u8; 512];
    s[440..444].copy_from_slice(&signature.to_le_bytes());
    for (i, (kind, start, sectors)) in parts.iter().enumerate().take(4) {
        let e = &mut s[446 + i * 16..446 + (i + 1) * 16];
        e[4] = *kind;
        e[8..12].copy_from_slice(&start.to_le_bytes());
        e[12..16].copy_from_slice(&sectors.to_le_bytes());
    }
    s[510] = 0x55;
    s[511] = 0xaa;
    s
}

/// Creates a sparse file of `len` bytes holding `writes`.
pub fn write_image(path: &Path, len: u64, writes: &[(u64, &[u8])]) {
    let mut f = fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(path)
        .unwrap();
    f.set_len(len).unwrap();
    for (off, bytes) in writes {
        f.seek(SeekFrom::Start(*off)).unwrap();
        f.write_all(bytes).unwrap();
    }
}

/// A filesystem kept by mkfixtures.sh in fixtures/fs/NAME.od (`od -A x -t x1z` text,
/// "*" standing for repeats of the line before): its (offset, bytes) runs.
pub fn fs_image(name: &str) -> Vec<(u64, Vec<u8>)> {
    let path = fixtures().join("fs").join(format!("{name}.od"));
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut runs: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut push = |at: u64, bytes: &[u8]| match runs.last_mut() {
        Some((o, b)) if *o + b.len() as u64 == at => b.extend_from_slice(bytes),
        _ => runs.push((at, bytes.to_vec())),
    };
    let mut last: Option<(u64, Vec<u8>)> = None;
    let mut repeat = false;
    for line in text.lines() {
        if line.trim() == "*" {
            repeat = true;
            continue;
        }
        // The printable column starts at '>'; before it only hex.
        let mut words = line.split('>').next().unwrap().split_whitespace();
        let at = u64::from_str_radix(words.next().unwrap(), 16).unwrap();
        let bytes: Vec<u8> = words.map(|w| u8::from_str_radix(w, 16).unwrap()).collect();
        if std::mem::take(&mut repeat) {
            let (mut o, prev) = last.clone().unwrap();
            o += prev.len() as u64;
            while o < at {
                push(o, &prev);
                o += prev.len() as u64;
            }
        }
        if bytes.is_empty() {
            last = None; // the end of one dumped range
        } else {
            push(at, &bytes);
            last = Some((at, bytes));
        }
    }
    runs
}

/// Writes fixture filesystem `name` into the (sparse) image at `path`, `at` bytes in.
pub fn put_fs(path: &Path, at: u64, name: &str) {
    let f = fs::OpenOptions::new().write(true).open(path).unwrap();
    for (off, bytes) in fs_image(name) {
        f.write_all_at(&bytes, at + off).unwrap();
    }
}

/// Writes `bytes` at `at` into an existing (sparse) image.
pub fn put_bytes(path: &Path, at: u64, bytes: &[u8]) {
    let f = fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, at).unwrap();
}
