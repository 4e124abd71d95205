//! Fixture filesystems for the parser tests: a sparse image made with the real mkfs,
//! filled through a loop mount with files of random content and a large file written
//! and then deleted; then checks that a copy holding only the used ranges is a clean,
//! complete filesystem and that the deleted data is not in them. Needs root and the
//! filesystem's tools: without them a test says what is missing and passes.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::HashSet;
use std::fs;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::Rng;

/// True (after saying why) if the test cannot run here: not root, a tool missing.
pub fn skip(tools: &[&str]) -> bool {
    let why = missing(tools);
    if let Some(why) = &why {
        eprintln!("skipped: {why}");
    }
    why.is_some()
}

fn missing(tools: &[&str]) -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { geteuid() } != 0 {
        return Some("not root (loop mounts need it)".into());
    }
    for t in tools.iter().chain(&["mount", "umount", "df"]) {
        let found = std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(t).is_file()));
        if !found {
            return Some(format!("{t} not found (scripts/deps.sh lists the package)"));
        }
    }
    None
}

unsafe extern "C" {
    fn geteuid() -> u32;
}

pub fn run(cmd: &str, args: &[&str]) -> std::process::Output {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub img: PathBuf,
    mnt: PathBuf,
    /// Relative path and content of every file the filesystem should hold.
    pub files: Vec<(String, Vec<u8>)>,
    /// The 4 KiB blocks of the deleted file.
    pub deleted: HashSet<Vec<u8>>,
    /// What `df` said was used before unmounting.
    pub df_used: u64,
}

impl Fixture {
    /// A sparse image of `mib` MiB made by `mkfs args... IMAGE`.
    pub fn new(mib: u64, mkfs: &str, args: &[&str]) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("fs.img");
        fs::File::create(&img).unwrap().set_len(mib << 20).unwrap();
        let mut a = args.to_vec();
        a.push(img.to_str().unwrap());
        run(mkfs, &a);
        let mnt = dir.path().join("mnt");
        fs::create_dir(&mnt).unwrap();
        Fixture {
            dir,
            img,
            mnt,
            files: Vec::new(),
            deleted: HashSet::new(),
            df_used: 0,
        }
    }

    /// Mounts the image, writes files (about `keep_mib` MiB), writes a `del_mib` MiB
    /// file and deletes it, writes a few more small files, notes `df`, unmounts.
    pub fn populate(&mut self, fstype: &str, keep_mib: usize, del_mib: usize) {
        let img = self.img.to_str().unwrap().to_string();
        let mnt = self.mnt.to_str().unwrap().to_string();
        run("mount", &["-t", fstype, "-o", "loop", &img, &mnt]);
        let mut rng = Rng::new(13);
        let mut left = keep_mib << 20;
        let mut i = 0;
        while left > 0 {
            let n = ((rng.next() % (600 << 10)) as usize + 1).min(left);
            left -= n;
            self.write(&format!("d{}/f{i}", i % 5), rng.bytes(n));
            i += 1;
        }
        let big = rng.bytes(del_mib << 20);
        fs::write(self.mnt.join("deleted"), &big).unwrap();
        run("sync", &[]);
        fs::remove_file(self.mnt.join("deleted")).unwrap();
        run("sync", &[]);
        for j in 0..8 {
            let n = (rng.next() % 20000) as usize;
            self.write(&format!("after/g{j}"), rng.bytes(n));
        }
        run("sync", &[]);
        let df = run("df", &["-B1", "--output=used", &mnt]);
        let df = String::from_utf8_lossy(&df.stdout).into_owned();
        self.df_used = df.lines().nth(1).unwrap().trim().parse().unwrap();
        run("umount", &[&mnt]);
        self.deleted = big.chunks_exact(4096).map(<[u8]>::to_vec).collect();
    }

    fn write(&mut self, rel: &str, data: Vec<u8>) {
        let p = self.mnt.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, &data).unwrap();
        self.files.push((rel.to_string(), data));
    }

    /// A copy of the image with every byte outside `used` zero.
    pub fn copy_used(&self, used: &[Range<u64>]) -> PathBuf {
        let src = fs::File::open(&self.img).unwrap();
        let path = self.dir.path().join("copy.img");
        let dst = fs::File::create(&path).unwrap();
        dst.set_len(src.metadata().unwrap().len()).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        for r in used {
            let mut at = r.start;
            while at < r.end {
                let n = ((r.end - at) as usize).min(buf.len());
                src.read_exact_at(&mut buf[..n], at).unwrap();
                dst.write_all_at(&buf[..n], at).unwrap();
                at += n as u64;
            }
        }
        path
    }

    /// Mounts `img` read-only (with `opts` added) and checks it holds exactly the files
    /// written, with their content.
    pub fn check_tree(&self, img: &Path, fstype: &str, opts: &str) {
        let mnt = self.dir.path().join("check");
        fs::create_dir_all(&mnt).unwrap();
        let m = mnt.to_str().unwrap();
        let o = format!("loop,ro{opts}");
        run("mount", &["-t", fstype, "-o", &o, img.to_str().unwrap(), m]);
        let mut found = Vec::new();
        walk(&mnt, &mnt, &mut found);
        let result = (|| {
            found.sort();
            let mut want: Vec<&str> = self.files.iter().map(|(p, _)| p.as_str()).collect();
            want.sort();
            if found != want {
                return Err(format!("files differ: {found:?} vs {want:?}"));
            }
            for (rel, data) in &self.files {
                if fs::read(mnt.join(rel)).unwrap() != *data {
                    return Err(format!("{rel}: content differs"));
                }
            }
            Ok(())
        })();
        run("umount", &[m]);
        result.unwrap();
    }

    /// How many of the deleted file's blocks are inside `used`, and how many outside,
    /// scanning the image in 512-byte steps (filesystems align data to 4 KiB here).
    pub fn deleted_blocks(&self, used: &[Range<u64>]) -> (usize, usize) {
        let data = fs::read(&self.img).unwrap();
        let (mut inside, mut outside) = (0, 0);
        for (i, b) in data.chunks_exact(4096).enumerate() {
            if self.deleted.contains(b) {
                let at = i as u64 * 4096;
                if used.iter().any(|r| r.start < at + 4096 && at < r.end) {
                    inside += 1;
                } else {
                    outside += 1;
                }
            }
        }
        (inside, outside)
    }

    /// Flips a byte of the image (a damaged superblock or node).
    pub fn damage(&self, at: u64) {
        let f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.img)
            .unwrap();
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, at).unwrap();
        f.write_all_at(&[b[0] ^ 0x5a], at).unwrap();
    }

    /// Restores a byte `damage` flipped.
    pub fn repair(&self, at: u64) {
        self.damage(at);
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let t = e.file_type().unwrap();
        if t.is_dir() {
            walk(root, &e.path(), out);
        } else {
            let rel = e
                .path()
                .strip_prefix(root)
                .unwrap()
                .to_str()
                .unwrap()
                .to_string();
            out.push(rel);
        }
    }
}

/// A parser's probe.
pub type Parser = fn(&dyn fsmap::ReadAt) -> Option<Result<fsmap::Usage, fsmap::Error>>;

/// `parse` on the image file, which must recognise it.
pub fn probe(img: &Path, parse: Parser) -> Result<fsmap::Usage, fsmap::Error> {
    let dev = fs::File::open(img).unwrap();
    parse(&dev).expect("the parser recognises its filesystem")
}

/// Probes the populated image with `parse` (fsmap::probe must agree), prints the used
/// bytes against df's, checks they are at least the files and at most df's plus
/// `slack`, that the deleted file's blocks are outside them and its data still in the
/// image (else the test proves nothing), and writes the seed `seed`.
pub fn check_usage(f: &Fixture, parse: Parser, slack: u64, seed: &str) -> fsmap::Usage {
    let u = probe(&f.img, parse).unwrap();
    let dev = fs::File::open(&f.img).unwrap();
    assert_eq!(fsmap::probe(&dev), fsmap::Verdict::Used(u.clone()));
    assert_eq!((u.label.as_deref(), u.block_size), (Some("fixture"), 4096));
    eprintln!(
        "{seed}: used {} KiB by the parser, {} KiB by df, of {} KiB",
        u.used_bytes() >> 10,
        f.df_used >> 10,
        dev.metadata().unwrap().len() >> 10
    );
    let files: u64 = f.files.iter().map(|(_, d)| d.len() as u64).sum();
    assert!(u.used_bytes() >= files && u.used_bytes() <= f.df_used + slack);
    let (inside, outside) = f.deleted_blocks(&u.used);
    eprintln!("deleted blocks: {inside} in used, {outside} outside");
    assert!(outside > 9000 && inside < 100, "{inside} in, {outside} out");
    write_seed(&f.img, seed, |d| format!("{:?}", parse(d)));
    u
}

/// With FSMAP_SEEDS=DIR (rescue/fuzz/make_seeds.py sets it), writes DIR/NAME: the
/// fuzz seed of `probe` on the image, everything it read, zeros left out; `probe`
/// must answer the same from the seed as from the image.
pub fn write_seed(img: &Path, name: &str, probe: impl Fn(&dyn fsmap::ReadAt) -> String) {
    let Some(dir) = std::env::var_os("FSMAP_SEEDS") else {
        return;
    };
    let dev = fs::File::open(img).unwrap();
    let rec = fsmap::sparse::Recorder::new(&dev);
    let want = probe(&rec);
    let reads = rec.reads.borrow().clone();
    let seed = fsmap::sparse::Sparse::capture(&dev, &reads)
        .unwrap()
        .encode();
    assert_eq!(probe(&fsmap::sparse::Sparse::decode(&seed)), want);
    let path = Path::new(&dir).join(name);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(&path, &seed).unwrap();
    eprintln!("seed {}: {} bytes", path.display(), seed.len());
}
