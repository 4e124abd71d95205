//! Host end-to-end tests of incremental backups (issue 14): the second backup
//! of a machine sends only the chunks that changed, and every backup is still a
//! whole image (sha256sum -c, verify and restore work after the base is gone).
//! The btrfs case needs root (a loop mount); it is skipped, saying so, without.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

const MIB: u64 = 1 << 20;
/// Four scattered 256 KiB changes; the third straddles a chunk boundary.
const CHANGES: [u64; 4] = [
    10 * MIB + 100 * 1024,
    77 * MIB,
    150 * MIB - 128 * 1024,
    255 * MIB + 512 * 1024,
];
const CHANGE_LEN: u64 = 256 * 1024;

/// Overwrites the four regions of `img` with other random bytes; returns how
/// many 1 MiB chunks they touch.
fn change_regions(img: &Path) -> u64 {
    let f = fs::OpenOptions::new().write(true).open(img).unwrap();
    let mut chunks = std::collections::BTreeSet::new();
    for (i, &off) in CHANGES.iter().enumerate() {
        f.write_all_at(&random_bytes(CHANGE_LEN as usize, 99 + i as u64), off)
            .unwrap();
        chunks.insert(off / MIB);
        chunks.insert((off + CHANGE_LEN - 1) / MIB);
    }
    chunks.len() as u64
}

/// Runs rescue with `args` like `common::rescue`, allowing 10 minutes: a
/// 256 MiB backup of a debug build on a loaded machine takes minutes.
fn rescue_slow(args: &[&str]) -> std::process::Output {
    let mut child = spawn_rescue(args);
    let t = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t.elapsed() > std::time::Duration::from_secs(600) {
            let _ = child.kill();
            panic!(
                "rescue {args:?} hung: {}",
                text(&child.wait_with_output().unwrap())
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

/// `rescue backup` of `img` through endpoint `ep` (a proxy counting bytes),
/// which succeeds; its output.
fn backup_via(ep: &str, img: &Path, extra: &[&str]) -> String {
    let mut args = vec!["backup", "-d", ep];
    args.extend_from_slice(extra);
    args.push(img.to_str().unwrap());
    let o = rescue_slow(&args);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    text(&o)
}

/// The backup directories of the store, oldest first.
fn oldest_first(store: &Path) -> Vec<PathBuf> {
    let mut dirs = backup_dirs(store);
    dirs.sort();
    dirs
}

/// Backs up a 256 MiB random image into `store`, changes four regions, backs
/// it up again through a counting proxy, and checks what an incremental backup
/// promises: few bytes sent, a whole image that verifies and restores after
/// the first backup is deleted. `before_delete` looks at the two images
/// while both exist.
fn second_backup_is_incremental(d: &Path, store: &Path, before_delete: impl Fn(&Path, &Path)) {
    let img = d.join("disk.img");
    random_image(&img, 256, 14);
    let srv = Server::start(d, store);
    let first = backup_via(&srv.endpoint(), &img, &[]);
    assert!(!first.contains("incremental"), "{first}");
    let changed = change_regions(&img);

    let px = Proxy::start(d, &srv.sock, Faults::default());
    let out = backup_via(&px.endpoint(), &img, &[]);
    let sent = px.c2s_bytes.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        sent <= changed * MIB + 2 * MIB,
        "{sent} bytes on the socket for {changed} changed chunks:\n{out}"
    );
    assert!(
        out.contains("incremental against backup") && out.contains(&format!("{changed} MiB sent")),
        "{out}"
    );

    let dirs = oldest_first(store);
    assert_eq!(dirs.len(), 2, "{dirs:?}");
    let second = dirs[1].clone();
    assert_eq!(sha256_file(&second.join("disk.img")), sha256_file(&img));
    sums_check(&second);
    let manifest = fs::read_to_string(second.join("manifest.json")).unwrap();
    let first_id = dirs[0].file_name().unwrap().to_str().unwrap();
    assert!(
        manifest.contains(&format!("\"base\": \"{first_id}\"")),
        "{manifest}"
    );
    assert!(manifest.contains("\"unchanged_bytes\": "), "{manifest}");
    before_delete(&dirs[0].join("disk.img"), &second.join("disk.img"));

    // The second image is whole: the first backup is not needed any more.
    fs::remove_dir_all(&dirs[0]).unwrap();
    let o = rescue_slow(&["verify", second.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let host = host_of_dir(&second);
    let target = d.join("restored.img");
    let o = rescue_slow(&[
        "restore",
        "-d",
        &srv.endpoint(),
        "--host",
        &host,
        "--map",
        &format!("disk={}", target.display()),
        "--yes",
        "--verify",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(sha256_file(&target), sha256_file(&img));
    for p in [&img, &target] {
        fs::remove_file(p).unwrap();
    }
}

#[test]
fn a_second_backup_sends_only_the_changed_chunks_and_stays_a_whole_image() {
    let d = tempfile::tempdir().unwrap();
    second_backup_is_incremental(d.path(), &d.path().join("store"), |_, _| {});
}

#[test]
fn full_sends_everything_again() {
    let (d, img) = random_disk(8, 3);
    let srv = Server::start(d.path(), &d.path().join("store"));
    backup_via(&srv.endpoint(), &img, &[]);
    let px = Proxy::start(d.path(), &srv.sock, Faults::default());
    let out = backup_via(&px.endpoint(), &img, &["--full"]);
    assert!(!out.contains("incremental"), "{out}");
    assert!(px.c2s_bytes.load(std::sync::atomic::Ordering::Relaxed) > 8 * MIB);
    let dirs = oldest_first(&srv.store);
    let manifest = fs::read_to_string(dirs[1].join("manifest.json")).unwrap();
    assert!(!manifest.contains("\"base\""), "{manifest}");
}

/// Two disks in one backup: each is compared with its own base disk (the
/// client asks for every base disk's digests before the first data phase;
/// asked between disks, the server never answered and the backup hung).
#[test]
fn a_backup_of_two_disks_is_incremental_for_both() {
    let d = tempfile::tempdir().unwrap();
    let (a, b) = (d.path().join("a.img"), d.path().join("b.img"));
    random_image(&a, 8, 41);
    random_image(&b, 8, 42);
    let paths = [a.to_str().unwrap(), b.to_str().unwrap()];
    let srv = Server::start(d.path(), &d.path().join("store"));
    let mut args = vec!["backup", "-d"];
    let ep = srv.endpoint();
    args.push(&ep);
    args.extend_from_slice(&paths);
    let o = rescue_slow(&args);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let f = fs::OpenOptions::new().write(true).open(&b).unwrap();
    f.write_all_at(&random_bytes(4096, 43), 3 * MIB).unwrap();
    let px = Proxy::start(d.path(), &srv.sock, Faults::default());
    let ep = px.endpoint();
    args[2] = &ep;
    let o = rescue_slow(&args);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert_eq!(
        out.matches("incremental against backup").count(),
        2,
        "{out}"
    );
    let sent = px.c2s_bytes.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        sent < 2 * MIB,
        "{sent} bytes sent for one changed chunk: {out}"
    );
}

/// A rescue system has no machine-id: its second backup is incremental only
/// when the server consents to its host (`--allow-restore`), since the sender
/// is given the base's digests.
#[test]
fn a_machine_without_machine_id_gets_a_base_only_with_consent() {
    let d = tempfile::tempdir().unwrap();
    let stick = machine(d.path(), "hosta", "");
    let img = stick.join("disk.img");
    random_image(&img, 8, 4);
    let root = ["--root", stick.to_str().unwrap()];
    let store = d.path().join("store");
    let inside = Path::new("/disk.img");
    let second = |srv: &Server| {
        let px = Proxy::start(d.path(), &srv.sock, Faults::default());
        let out = backup_via(&px.endpoint(), inside, &root);
        (out, px.c2s_bytes.load(std::sync::atomic::Ordering::Relaxed))
    };
    let srv = Server::start(d.path(), &store);
    backup_via(&srv.endpoint(), inside, &root);
    let (out, sent) = second(&srv);
    assert!(
        !out.contains("incremental") && sent > 8 * MIB,
        "{sent}: {out}"
    );
    drop(srv);
    let srv = Server::start_with(d.path(), &store, &["--allow-restore", "hosta"]);
    let (out, sent) = second(&srv);
    assert!(out.contains("incremental against backup"), "{out}");
    assert!(sent < MIB, "{sent} bytes sent for an unchanged disk: {out}");
    let last = oldest_first(&store).pop().unwrap();
    assert_eq!(sha256_file(&last.join("disk.img")), sha256_file(&img));
}

#[test]
fn a_base_chunk_that_fails_its_check_is_sent_instead() {
    let (d, img) = random_disk(16, 5);
    let srv = Server::start(d.path(), &d.path().join("store"));
    backup_via(&srv.endpoint(), &img, &[]);
    // The store rots under the first backup: one byte of chunk 5.
    let first = oldest_first(&srv.store).pop().unwrap();
    let stored = fs::OpenOptions::new()
        .write(true)
        .open(first.join("disk.img"))
        .unwrap();
    stored.write_all_at(&[0x5a ^ 0xff], 5 * MIB + 77).unwrap();
    drop(stored);

    let px = Proxy::start(d.path(), &srv.sock, Faults::default());
    let out = backup_via(&px.endpoint(), &img, &[]);
    assert!(
        out.contains("1 chunk(s) of the base failed their check on the peer"),
        "{out}"
    );
    let sent = px.c2s_bytes.load(std::sync::atomic::Ordering::Relaxed);
    assert!(sent > MIB && sent < 3 * MIB, "{sent} bytes:\n{out}");
    let second = oldest_first(&srv.store).pop().unwrap();
    assert_eq!(sha256_file(&second.join("disk.img")), sha256_file(&img));
    sums_check(&second);
    assert!(
        srv.log_text().contains("failed their check"),
        "{}",
        srv.log_text()
    );
}

/// A loop-mounted filesystem (btrfs unless said), unmounted and detached on drop.
struct LoopFs {
    mnt: PathBuf,
}

impl LoopFs {
    /// None (the test says why) when not root or btrfs cannot be made here.
    fn mount(d: &Path) -> Option<LoopFs> {
        LoopFs::mount_fs(d, "btrfs", 1 << 30)
    }

    /// A filesystem of type `kind` (made by mkfs.KIND) of `size` bytes.
    fn mount_fs(d: &Path, kind: &str, size: u64) -> Option<LoopFs> {
        if nix::unistd::geteuid().as_raw() != 0 {
            eprintln!("skipped: a {kind} loop mount needs root");
            return None;
        }
        let backing = d.join(format!("{kind}.raw"));
        fs::File::create(&backing).unwrap().set_len(size).unwrap();
        let mkfs = Command::new(format!("mkfs.{kind}"))
            .args(["-q", if kind == "btrfs" { "-f" } else { "-F" }])
            .arg(&backing)
            .output();
        if !mkfs.as_ref().is_ok_and(|o| o.status.success()) {
            eprintln!("skipped: mkfs.{kind} is not available or failed: {mkfs:?}");
            return None;
        }
        let mnt = d.join(kind);
        fs::create_dir(&mnt).unwrap();
        let m = Command::new("mount")
            .args(["-o", "loop"])
            .arg(&backing)
            .arg(&mnt)
            .output()
            .unwrap();
        if !m.status.success() {
            eprintln!(
                "skipped: cannot mount a {kind} loop device: {}",
                String::from_utf8_lossy(&m.stderr)
            );
            return None;
        }
        Some(LoopFs { mnt })
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mnt).status();
    }
}

/// Bytes of `file` that btrfs reports shared with other files.
fn btrfs_shared(file: &Path) -> u64 {
    let o = Command::new("btrfs")
        .args(["filesystem", "du", "--raw"])
        .arg(file)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    // "     Total   Exclusive  Set shared  Filename", then one line per file.
    let line = out.lines().nth(1).unwrap_or_default();
    let cols: Vec<u64> = line
        .split_whitespace()
        .take(2)
        .filter_map(|c| c.parse().ok())
        .collect();
    assert_eq!(cols.len(), 2, "{out}");
    cols[0] - cols[1]
}

#[test]
fn on_btrfs_the_second_image_shares_the_first_ones_extents() {
    let d = tempfile::tempdir().unwrap();
    let Some(btrfs) = LoopFs::mount(d.path()) else {
        return;
    };
    let store = btrfs.mnt.join("store");
    second_backup_is_incremental(d.path(), &store, |first, second| {
        let (a, b) = (btrfs_shared(first), btrfs_shared(second));
        assert!(
            a >= 250 * MIB && b >= 250 * MIB,
            "the images share {a} and {b} bytes of extents, not nearly all"
        );
    });
}

/// An incremental backup cut off, then resumed: the manifest counts what both
/// sessions stored (the first one's journaled chunks too), each chunk once;
/// on btrfs the unchanged half shares the base's extents.
#[test]
fn a_resumed_incremental_backup_counts_both_sessions() {
    let d = tempfile::tempdir().unwrap();
    let btrfs = LoopFs::mount(d.path());
    let store = match &btrfs {
        Some(b) => b.mnt.join("store"),
        None => d.path().join("store"),
    };
    let img = d.path().join("disk.img");
    random_image(&img, 32, 6);
    let srv = Server::start(d.path(), &store);
    backup_via(&srv.endpoint(), &img, &[]);
    // Every other chunk changes: 16 MiB to send, 16 MiB unchanged.
    let f = fs::OpenOptions::new().write(true).open(&img).unwrap();
    for i in (0..32).step_by(2) {
        f.write_all_at(&random_bytes(MIB as usize, 200 + i), i * MIB)
            .unwrap();
    }
    let px = Proxy::cutting_c2s(d.path(), &srv.sock, 8 * MIB);
    let o = rescue_slow(&["backup", "-d", &px.endpoint(), img.to_str().unwrap()]);
    assert_ne!(o.status.code(), Some(0), "{}", text(&o));
    drop(px);
    let out = backup_via(&srv.endpoint(), &img, &[]);
    assert!(out.contains("resuming"), "{out}");
    let second = oldest_first(&store).pop().unwrap();
    assert_eq!(sha256_file(&second.join("disk.img")), sha256_file(&img));
    let m: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(second.join("manifest.json")).unwrap()).unwrap();
    let disk = &m["disks"][0];
    assert_eq!(disk["unchanged_bytes"], 16 * MIB, "{m}");
    assert_eq!(disk["sent_bytes"], 16 * MIB, "{m}");
    if btrfs.is_some() {
        assert_eq!(disk["shared_bytes"], 16 * MIB, "{m}");
    }
}

/// The room check at BACKUP_BEGIN counts what a reflink of the base gives:
/// on a 256 MiB btrfs store holding a 112 MiB backup (about 60 MiB left) the
/// second, incremental backup starts and fits; on ext4, where the unchanged
/// chunks are copied and take their space, it is refused before anything is
/// written, as one that cannot fit.
#[test]
fn the_room_check_counts_what_a_reflink_store_takes_from_the_base() {
    for (fs, clones) in [("btrfs", true), ("ext4", false)] {
        let d = tempfile::tempdir().unwrap();
        let Some(lp) = LoopFs::mount_fs(d.path(), fs, 256 * MIB) else {
            return;
        };
        let img = d.path().join("disk.img");
        random_image(&img, 112, 21);
        let store = lp.mnt.join("store");
        let srv = Server::start(d.path(), &store);
        backup_via(&srv.endpoint(), &img, &[]);
        change_regions_within(&img, 112 * MIB);
        let o = rescue_slow(&["backup", "-d", &srv.endpoint(), img.to_str().unwrap()]);
        let out = text(&o);
        if clones {
            assert_eq!(o.status.code(), Some(0), "{fs}: {out}");
            assert!(out.contains("incremental against backup"), "{fs}: {out}");
            let second = oldest_first(&store).pop().unwrap();
            assert_eq!(sha256_file(&second.join("disk.img")), sha256_file(&img));
        } else {
            assert_ne!(o.status.code(), Some(0), "{fs}: {out}");
            assert!(out.contains("no space left in the store"), "{fs}: {out}");
            assert_eq!(
                oldest_first(&store).len(),
                1,
                "{fs}: a refused backup left a directory"
            );
        }
    }
}

/// Four 256 KiB changes in the first `len` bytes of `img`.
fn change_regions_within(img: &Path, len: u64) {
    let f = fs::OpenOptions::new().write(true).open(img).unwrap();
    for i in 0..4 {
        let off = len / 5 * (i + 1);
        f.write_all_at(&random_bytes(CHANGE_LEN as usize, 300 + i), off)
            .unwrap();
    }
}

#[test]
fn prune_keeps_the_newest_complete_backup_and_what_is_not_complete() {
    let (d, img) = random_disk(2, 8);
    let srv = Server::start(d.path(), &d.path().join("store"));
    for label in ["a", "b", "c"] {
        backup_via(&srv.endpoint(), &img, &["--label", label]);
    }
    let dirs = oldest_first(&srv.store);
    assert_eq!(dirs.len(), 3);
    // The oldest made to look interrupted: it is not complete, so it stays.
    let m = dirs[0].join("manifest.json");
    let text_m = fs::read_to_string(&m).unwrap();
    fs::write(
        &m,
        text_m.replace("\"status\": \"complete\"", "\"status\": \"in-progress\""),
    )
    .unwrap();
    let store = srv.store.to_str().unwrap();
    let o = rescue(&["store", "list", store]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    for dir in &dirs {
        let id = dir.file_name().unwrap().to_str().unwrap();
        assert!(text(&o).contains(id), "{}", text(&o));
    }
    assert!(text(&o).contains("incremental against"), "{}", text(&o));
    assert!(text(&o).contains("3 backup(s) take"), "{}", text(&o));

    let o = rescue(&["store", "prune", store, "--keep", "1", "--dry-run"]);
    assert!(
        text(&o).contains("would remove 1 backup(s)"),
        "{}",
        text(&o)
    );
    assert_eq!(oldest_first(&srv.store), dirs);
    let o = rescue(&["store", "prune", store, "--keep", "1"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(
        oldest_first(&srv.store),
        vec![dirs[0].clone(), dirs[2].clone()]
    );
    // Whatever the age, the newest complete backup stays.
    let o = rescue(&["store", "prune", store, "--keep-days", "0"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(
        oldest_first(&srv.store),
        vec![dirs[0].clone(), dirs[2].clone()]
    );
    // Without a rule nothing happens.
    let o = rescue(&["store", "prune", store]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert_eq!(oldest_first(&srv.store).len(), 2);
}
