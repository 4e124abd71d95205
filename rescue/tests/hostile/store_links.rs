//! Links planted in an interrupted backup's directory (by anyone who can write
//! to the store) must never make serve, running as root, write through them:
//! the file outside stays unchanged, and the resume either recovers (replacing
//! the link) or refuses, saying why.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;

/// A 6 MiB backup of `disk.img` cut after about 3 MiB; returns the image and
/// the interrupted backup's directory.
fn interrupted_backup(dir: &Path, srv: &Server) -> (PathBuf, PathBuf) {
    let a = dir.join("disk.img");
    random_image(&a, 6, 31);
    let px = Proxy::start(
        dir,
        &srv.sock,
        Faults {
            cut_after: Some(3 << 20),
            ..Default::default()
        },
    );
    let o = rescue(&["backup", "-d", &px.endpoint(), a.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(5), "{}", text(&o));
    let bd = backup_dirs(&srv.store).pop().unwrap();
    (a, bd)
}

fn sums_check(bd: &Path) -> bool {
    Command::new("sha256sum")
        .args(["-c", "SHA256SUMS"])
        .current_dir(bd)
        .output()
        .unwrap()
        .status
        .success()
}

#[test]
fn planted_temporary_file_symlinks_are_replaced_not_written_through() {
    let d = tempfile::tempdir().unwrap();
    let srv = Server::start(d.path(), &d.path().join("store"));
    let (a, bd) = interrupted_backup(d.path(), &srv);
    let victim = d.path().join("victim");
    fs::write(&victim, b"precious, outside the store\n").unwrap();
    for tmp in [".manifest.json.tmp", ".disk.map.tmp", ".SHA256SUMS.tmp"] {
        symlink(&victim, bd.join(tmp)).unwrap();
    }
    // The resume writes the manifest, the map and SHA256SUMS.
    let o = rescue(&["backup", "-d", &srv.endpoint(), a.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("resuming"), "{}", text(&o));
    assert_eq!(
        fs::read(&victim).unwrap(),
        b"precious, outside the store\n",
        "a planted link was written through"
    );
    for f in ["manifest.json", "disk.map", "SHA256SUMS"] {
        let m = fs::symlink_metadata(bd.join(f)).unwrap();
        assert!(m.file_type().is_file(), "{f} is not a regular file");
    }
    assert_eq!(sha256_file(&bd.join("disk.img")), sha256_file(&a));
    assert!(sums_check(&bd));
}

#[test]
fn a_hard_link_planted_as_the_image_is_refused_not_written_through() {
    let d = tempfile::tempdir().unwrap();
    let srv = Server::start(d.path(), &d.path().join("store"));
    let (a, bd) = interrupted_backup(d.path(), &srv);
    // An outside file of the image's size, hard-linked in its place.
    let victim = d.path().join("victim.img");
    let content = vec![0x55u8; 6 << 20];
    fs::write(&victim, &content).unwrap();
    fs::remove_file(bd.join("disk.img")).unwrap();
    fs::hard_link(&victim, bd.join("disk.img")).unwrap();
    let o = rescue(&["backup", "-d", &srv.endpoint(), a.to_str().unwrap()]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(6), "{t}\nserver:\n{}", srv.log_text());
    assert!(
        t.contains("the peer reports") && t.contains("hard links") && t.contains("--fresh"),
        "{t}"
    );
    assert!(
        fs::read(&victim).unwrap() == content,
        "written through the hard link"
    );
    // A fresh backup is the way out, and works.
    let o = rescue(&[
        "backup",
        "-d",
        &srv.endpoint(),
        "--fresh",
        a.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(fs::read(&victim).unwrap() == content);
}

#[test]
fn a_symlink_planted_as_the_journal_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let srv = Server::start(d.path(), &d.path().join("store"));
    let (a, bd) = interrupted_backup(d.path(), &srv);
    let victim = d.path().join("victim.chunks");
    fs::copy(bd.join("disk.chunks"), &victim).unwrap();
    let before = fs::read(&victim).unwrap();
    fs::remove_file(bd.join("disk.chunks")).unwrap();
    symlink(&victim, bd.join("disk.chunks")).unwrap();
    let o = rescue(&["backup", "-d", &srv.endpoint(), a.to_str().unwrap()]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(6), "{t}");
    assert!(t.contains("symbolic link"), "{t}");
    assert_eq!(fs::read(&victim).unwrap(), before);
}
