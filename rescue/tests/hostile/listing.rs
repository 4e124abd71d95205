//! Issue 10, point 1: one hostile backup must not stop every restore. Strings
//! from a peer are bounded when received; LISTING lists only the host asked
//! for, in pages; a stored backup whose metadata is unacceptable is left out.

use serde_json::json;

use crate::common::*;
use crate::peer::*;

#[test]
fn an_oversized_label_is_refused_when_received() {
    let d = tempfile::tempdir().unwrap();
    let srv = Server::start(d.path(), &d.path().join("store"));
    let mut p = RawPeer::connect(&srv.sock);
    p.hello(
        "backup",
        identity("bighost", "0123456789abcdef0123456789abcdef"),
    );
    let label = "L".repeat(1 << 20);
    p.send_json(
        kind::BACKUP_BEGIN,
        &json!({"label": label, "chunk_size": 1 << 20, "fresh": true, "disks": [
            {"name": "sda", "source_path": "/dev/sda", "size": 1 << 20, "logical_sector_size": 512}
        ]}),
    );
    let f = p.recv(&[kind::BACKUP_READY]).expect("an answer");
    assert_eq!(
        f.header.kind,
        kind::ERROR,
        "a 1 MiB label was accepted: {}",
        body(&f)
    );
    let m = body(&f)["message"].as_str().unwrap().to_string();
    assert!(m.contains("label") && m.contains("limit"), "{m}");
    assert!(backup_dirs(&srv.store).is_empty(), "something was stored");
}

#[test]
fn an_identity_with_a_huge_hostname_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let srv = Server::start(d.path(), &d.path().join("store"));
    let mut p = RawPeer::connect(&srv.sock);
    p.send_json(
        kind::HELLO,
        &json!({"protocol": 1, "min_protocol": 1, "role": "backup",
                "identity": identity(&"h".repeat(300_000), "")}),
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    let log = srv.log_text();
    assert!(
        log.contains("greeting failed") && log.contains("hostname") && log.contains("limit"),
        "{log}"
    );
}

#[test]
fn a_stored_manifest_with_a_huge_label_is_skipped_not_fatal() {
    let d = tempfile::tempdir().unwrap();
    let (srv, bd) = server_with_backup(d.path());
    let host = host_of(&bd);
    // Newer than the real one, so it would be chosen first.
    plant(&srv.store, &bd, &host, "29991231-000000-big", |m| {
        m["label"] = json!("L".repeat(4 << 20));
    });
    let o = rescue(&["restore", "-d", &srv.endpoint(), "--list"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let id = manifest(&bd)["backup_id"].as_str().unwrap().to_string();
    assert!(text(&o).contains(&id), "{}", text(&o));
    assert!(!text(&o).contains("29991231-000000-big"), "{}", text(&o));
    assert!(srv.log_text().contains("not listing"), "{}", srv.log_text());
    // And the real backup still restores.
    let out = d.path().join("out.img");
    let o = rescue(&[
        "restore",
        "-d",
        &srv.endpoint(),
        "--map",
        &format!("disk={}", out.display()),
        "--yes",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(sha256_file(&out), sha256_file(&d.path().join("disk.img")));
}

#[test]
fn a_listing_larger_than_a_message_comes_in_pages() {
    let d = tempfile::tempdir().unwrap();
    let (srv, bd) = server_with_backup(d.path());
    let host = host_of(&bd);
    // 36 backups of 256 disks with the longest acceptable model and serial:
    // about 6.5 MiB of listing, more than one control message (4 MiB) holds.
    let disk = manifest(&bd)["disks"][0].clone();
    for n in 0..36 {
        plant(&srv.store, &bd, &host, &format!("2999{n:04}-000000"), |m| {
            m["disks"] = (0..256)
                .map(|i| {
                    let mut x = disk.clone();
                    x["name"] = json!(format!("d{i}"));
                    x["model"] = json!("M".repeat(256));
                    x["serial"] = json!("S".repeat(256));
                    x
                })
                .collect();
        });
    }
    let o = rescue_long(&["restore", "-d", &srv.endpoint(), "--list"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let t = text(&o);
    for n in 0..36 {
        assert!(
            t.contains(&format!("2999{n:04}-000000")),
            "{n} missing:\n{}",
            &t[..t.len().min(4000)]
        );
    }
    let id = manifest(&bd)["backup_id"].as_str().unwrap().to_string();
    assert!(t.contains(&id));
}

#[test]
fn the_listing_holds_only_the_host_asked_for() {
    let d = tempfile::tempdir().unwrap();
    let (srv, bd) = server_with_backup(d.path());
    for n in 0..3 {
        plant(
            &srv.store,
            &bd,
            "otherhost",
            &format!("2999{n:04}-000000"),
            |m| {
                m["label"] = json!("someone-elses");
            },
        );
    }
    let o = rescue(&["restore", "-d", &srv.endpoint(), "--list"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(!text(&o).contains("otherhost"), "{}", text(&o));
    assert!(text(&o).contains(&host_of(&bd)), "{}", text(&o));
}
