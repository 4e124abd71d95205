//! Links planted in an interrupted backup's directory (by anyone who can write
//! to the store) must never make serve, running as root, write through them:
//! the file outside stays unchanged, and the resume either recovers (replacing
//! the link) or refuses, saying why.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::PathBuf;
use std::process::{Command, Output};

use crate::common::*;

/// A server holding a 6 MiB backup of `disk.img` cut after about 3 MiB.
struct Interrupted {
    d: tempfile::TempDir,
    srv: Server,
    /// The source image.
    a: PathBuf,
    /// The interrupted backup's directory.
    bd: PathBuf,
}

impl Interrupted {
    fn new() -> Interrupted {
        let d = tempfile::tempdir().unwrap();
        let srv = Server::start(d.path(), &d.path().join("store"));
        let a = d.path().join("disk.img");
        random_image(&a, 6, 31);
        let px = Proxy::cutting_c2s(d.path(), &srv.sock, 3 << 20);
        let o = rescue(&["backup", "-d", &px.endpoint(), a.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(5), "{}", text(&o));
        // Serve writes the map and manifest after the cut: plant only after.
        let t = std::time::Instant::now();
        while !srv.log_text().contains("session with") {
            assert!(t.elapsed().as_secs() < 20, "{}", srv.log_text());
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let bd = backup_dirs(&srv.store).pop().unwrap();
        Interrupted { d, srv, a, bd }
    }

    /// A file outside the store holding `content`.
    fn victim(&self, name: &str, content: &[u8]) -> PathBuf {
        let v = self.d.path().join(name);
        fs::write(&v, content).unwrap();
        v
    }

    /// Runs the backup again (`extra`: e.g. --fresh).
    fn resume(&self, extra: &[&str]) -> Output {
        let ep = self.srv.endpoint();
        let mut args = vec!["backup", "-d", &ep];
        args.extend_from_slice(extra);
        args.push(self.a.to_str().unwrap());
        rescue(&args)
    }
}

#[test]
fn planted_temporary_file_symlinks_are_replaced_not_written_through() {
    let t = Interrupted::new();
    let victim = t.victim("victim", b"precious, outside the store\n");
    for tmp in [".manifest.json.tmp", ".disk.map.tmp", ".SHA256SUMS.tmp"] {
        symlink(&victim, t.bd.join(tmp)).unwrap();
    }
    // The resume writes the manifest, the map and SHA256SUMS.
    let o = t.resume(&[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("resuming"), "{}", text(&o));
    assert_eq!(
        fs::read(&victim).unwrap(),
        b"precious, outside the store\n",
        "a planted link was written through"
    );
    for f in ["manifest.json", "disk.map", "SHA256SUMS"] {
        let m = fs::symlink_metadata(t.bd.join(f)).unwrap();
        assert!(m.file_type().is_file(), "{f} is not a regular file");
    }
    assert_eq!(sha256_file(&t.bd.join("disk.img")), sha256_file(&t.a));
    let check = Command::new("sha256sum")
        .args(["-c", "SHA256SUMS"])
        .current_dir(&t.bd)
        .output()
        .unwrap();
    assert!(check.status.success());
}

#[test]
fn a_hard_link_planted_as_the_image_is_refused_not_written_through() {
    let t = Interrupted::new();
    // An outside file of the image's size, hard-linked in its place.
    let content = vec![0x55u8; 6 << 20];
    let victim = t.victim("victim.img", &content);
    fs::remove_file(t.bd.join("disk.img")).unwrap();
    fs::hard_link(&victim, t.bd.join("disk.img")).unwrap();
    let o = t.resume(&[]);
    let out = text(&o);
    assert_eq!(
        o.status.code(),
        Some(6),
        "{out}\nserver:\n{}",
        t.srv.log_text()
    );
    assert!(
        out.contains("the peer reports") && out.contains("hard links") && out.contains("--fresh"),
        "{out}"
    );
    assert!(fs::read(&victim).unwrap() == content, "written through");
    // A fresh backup is the way out, and works.
    let o = t.resume(&["--fresh"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(fs::read(&victim).unwrap() == content);
}

#[test]
fn a_symlink_planted_as_the_journal_is_refused() {
    let t = Interrupted::new();
    let before = fs::read(t.bd.join("disk.chunks")).unwrap();
    let victim = t.victim("victim.chunks", &before);
    fs::remove_file(t.bd.join("disk.chunks")).unwrap();
    symlink(&victim, t.bd.join("disk.chunks")).unwrap();
    let o = t.resume(&[]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(6), "{out}");
    assert!(out.contains("symbolic link"), "{out}");
    assert_eq!(fs::read(&victim).unwrap(), before);
}
