//! Issue 10, point 5: a peer reads only its own machine's backups (same hostname
//! and machine-id) unless the serving side allows it (`--allow-restore`), LISTING
//! publishes no machine-ids, and an interrupted backup is resumed only by the
//! machine holding the key the server gave it.

use serde_json::json;

use crate::common::*;
use crate::peer::*;

const ALPHA_ID: &str = "a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1";

/// A server holding one complete backup made by machine "alpha".
fn alpha_backup(d: &std::path::Path, extra: &[&str]) -> (Server, std::path::PathBuf) {
    let alpha = machine(d, "alpha", ALPHA_ID);
    random_image(&alpha.join("disk.img"), 1, 11);
    let srv = Server::start_with(d, &d.join("store"), extra);
    back_up(&alpha, &srv);
    (srv, alpha)
}

/// Backs up machine `r`'s /disk.img to `srv`.
fn back_up(r: &std::path::Path, srv: &Server) {
    let o = rescue(&[
        "--root",
        r.to_str().unwrap(),
        "backup",
        "-d",
        &srv.endpoint(),
        "/disk.img",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}

fn listing(p: &mut RawPeer, host: Option<&str>) -> serde_json::Value {
    p.send_json(kind::LIST, &json!({"host": host}));
    let f = p.recv(&[kind::LISTING]).expect("LISTING");
    assert_eq!(f.header.kind, kind::LISTING, "{}", body(&f));
    body(&f)
}

#[test]
fn a_peer_claiming_a_hostname_sees_and_restores_nothing() {
    let d = tempfile::tempdir().unwrap();
    let (srv, _) = alpha_backup(d.path(), &[]);
    let bd = backup_dirs(&srv.store).pop().unwrap();
    let id = manifest(&bd)["backup_id"].as_str().unwrap().to_string();
    // The right name with another machine-id, and with none (a rescue system).
    for mid in ["b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2", ""] {
        let mut p = RawPeer::connect(&srv.sock);
        p.hello("restore", identity("alpha", mid));
        let l = listing(&mut p, None);
        assert_eq!(l["backups"], json!([]), "{l}");
        assert_eq!(l["hidden"], json!(1), "{l}");
        assert!(listing(&mut p, Some("alpha"))["backups"] == json!([]));
        p.send_json(
            kind::RESTORE_BEGIN,
            &json!({"host": "alpha", "backup_id": id, "disks": ["disk"]}),
        );
        let f = p.recv(&[kind::RESTORE_READY]).unwrap();
        assert_eq!(f.header.kind, kind::ERROR, "{}", body(&f));
        assert_eq!(body(&f)["code"], "refused");
        assert!(
            body(&f)["message"]
                .as_str()
                .unwrap()
                .contains("--allow-restore alpha")
        );
        // A refusal ends the session: ask for the digests on a new one.
        let mut p = RawPeer::connect(&srv.sock);
        p.hello("restore", identity("alpha", mid));
        p.send_json(
            kind::DIGESTS_REQ,
            &json!({"host": "alpha", "backup_id": id, "disk": "disk", "first": 0, "count": 4}),
        );
        let f = p.recv(&[kind::DIGESTS]).unwrap();
        assert_eq!(
            f.header.kind,
            kind::ERROR,
            "digests of another machine's backup were sent"
        );
    }
}

#[test]
fn the_listing_publishes_no_machine_id() {
    let d = tempfile::tempdir().unwrap();
    let (srv, _) = alpha_backup(d.path(), &[]);
    let mut p = RawPeer::connect(&srv.sock);
    p.hello("restore", identity("alpha", ALPHA_ID));
    let l = listing(&mut p, None);
    assert_eq!(l["backups"].as_array().map(Vec::len), Some(1), "{l}");
    let t = l.to_string();
    assert!(!t.contains("machine_id") && !t.contains(ALPHA_ID), "{t}");
}

#[test]
fn allow_restore_lets_another_machine_restore_and_says_so_without() {
    let d = tempfile::tempdir().unwrap();
    let (srv, alpha) = alpha_backup(d.path(), &[]);
    let beta = machine(d.path(), "beta", "b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2");
    let t = beta.join("t.img");
    std::fs::write(&t, vec![0u8; 1 << 20]).unwrap();
    let restore = |ep: &str| {
        rescue(&[
            "--root",
            beta.to_str().unwrap(),
            "restore",
            "-d",
            ep,
            "--host",
            "alpha",
            "--map",
            "disk=/t.img",
            "--yes",
        ])
    };
    let o = restore(&srv.endpoint());
    assert_eq!(o.status.code(), Some(6), "{}", text(&o));
    assert!(text(&o).contains("--allow-restore alpha"), "{}", text(&o));
    assert_eq!(std::fs::read(&t).unwrap(), vec![0u8; 1 << 20]);
    let srv = with_consent(d.path(), srv, "alpha");
    let o = restore(&srv.endpoint());
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(sha256_file(&t), sha256_file(&alpha.join("disk.img")));
}

#[test]
fn only_the_machine_with_the_key_resumes_an_interrupted_backup() {
    let d = tempfile::tempdir().unwrap();
    let alpha = machine(d.path(), "alpha", ALPHA_ID);
    random_image(&alpha.join("disk.img"), 6, 12);
    let srv = Server::start(d.path(), &d.path().join("store"));
    let px = Proxy::cutting_c2s(d.path(), &srv.sock, 3 << 20);
    let backup = |ep: &str| {
        rescue(&[
            "--root",
            alpha.to_str().unwrap(),
            "backup",
            "-d",
            ep,
            "/disk.img",
        ])
    };
    let o = backup(&px.endpoint());
    assert_eq!(o.status.code(), Some(5), "{}", text(&o));
    let bd = backup_dirs(&srv.store).pop().unwrap();
    let m = manifest(&bd);
    std::thread::sleep(std::time::Duration::from_millis(500));
    // A peer with alpha's name and machine-id (both known to anyone who saw
    // alpha) asks to resume it without the key: it gets a new backup instead.
    let mut p = RawPeer::connect(&srv.sock);
    p.hello("backup", identity("alpha", ALPHA_ID));
    let disk = &m["disks"][0];
    p.send_json(kind::BACKUP_BEGIN, &json!({"label": m["label"], "chunk_size": m["chunk_size"], "fresh": false,
        "disks": [{"name": disk["source_name"], "source_path": disk["source_path"], "size": disk["size"],
                   "logical_sector_size": disk["logical_sector_size"], "serial": disk["serial"]}]}));
    let f = p.recv(&[kind::BACKUP_READY]).unwrap();
    assert_eq!(f.header.kind, kind::BACKUP_READY, "{}", body(&f));
    assert_eq!(
        body(&f)["resumed"],
        json!(false),
        "resumed without the key: {}",
        body(&f)
    );
    assert_ne!(body(&f)["backup_id"], m["backup_id"]);
    p.send(kind::BYE, &[]);
    drop(p);
    std::thread::sleep(std::time::Duration::from_millis(500));
    // The real alpha kept its key and continues where it was cut.
    px.set(Faults::default());
    let o = backup(&px.endpoint());
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("resuming,"), "{}", text(&o));
    assert!(
        text(&o).contains(m["backup_id"].as_str().unwrap()),
        "{}",
        text(&o)
    );
}

/// Restarts `srv` on the same store with `--allow-restore allow`.
fn with_consent(d: &std::path::Path, srv: Server, allow: &str) -> Server {
    drop(srv);
    Server::start_with(d, &d.join("store"), &["--allow-restore", allow])
}

/// Asserts that a client exited with `code` saying `what`.
fn says(o: &std::process::Output, code: i32, what: &str) {
    assert_eq!(o.status.code(), Some(code), "{}", text(o));
    assert!(text(o).contains(what), "{}", text(o));
}

/// Restores on machine `r` without --host (its own machine's backups).
fn restore_own(r: &std::path::Path, ep: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["--root", r.to_str().unwrap(), "restore", "-d", ep];
    args.extend_from_slice(extra);
    rescue(&args)
}

#[test]
fn a_clone_without_host_gets_the_same_machine_ids_backup_only_with_consent() {
    // Issue 9, point 2 with issue 10, point 5: beta is a clone of alpha (same
    // machine-id, renamed). Without --host it gets alpha's backup, saying so,
    // when the serving side allows alpha's; else a refusal saying how to allow it.
    let d = tempfile::tempdir().unwrap();
    let (srv, alpha) = alpha_backup(d.path(), &[]);
    let beta = machine(d.path(), "beta", ALPHA_ID);
    let t = beta.join("t.img");
    std::fs::write(&t, vec![0u8; 1 << 20]).unwrap();
    let args = ["--map", "disk=/t.img", "--yes"];
    let o = restore_own(&beta, &srv.endpoint(), &args);
    says(&o, 6, "--allow-restore");
    assert!(!text(&o).contains(ALPHA_ID), "{}", text(&o));
    assert_eq!(std::fs::read(&t).unwrap(), vec![0u8; 1 << 20]);
    let srv = with_consent(d.path(), srv, "alpha");
    let o = restore_own(&beta, &srv.endpoint(), &["--list"]);
    says(&o, 0, "under hostname alpha");
    let o = restore_own(&beta, &srv.endpoint(), &args);
    says(
        &o,
        0,
        "was made under hostname alpha (same machine-id as this machine, hostname beta)",
    );
    assert_eq!(sha256_file(&t), sha256_file(&alpha.join("disk.img")));
}

#[test]
fn a_host_without_backups_names_the_held_hosts_only_with_consent_for_all() {
    let d = tempfile::tempdir().unwrap();
    let (srv, _) = alpha_backup(d.path(), &[]);
    let gamma = machine(d.path(), "gamma", "c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3");
    random_image(&gamma.join("disk.img"), 1, 13);
    back_up(&gamma, &srv);
    let beta = machine(d.path(), "beta", "b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2");
    let t = beta.join("t.img");
    std::fs::write(&t, vec![0u8; 1 << 20]).unwrap();
    let nosuch = ["--host", "nosuch", "--map", "disk=/t.img", "--yes"];
    let o = restore_own(&beta, &srv.endpoint(), &nosuch);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let m = text(&o);
    assert!(m.contains("no backups of host nosuch"), "{m}");
    assert!(m.contains("backups of 2 other hosts"), "{m}");
    assert!(m.contains("--allow-restore HOST|all"), "{m}");
    assert!(!m.contains("alpha") && !m.contains("gamma"), "{m}");
    let o = restore_own(&beta, &srv.endpoint(), &["--host", "nosuch", "--list"]);
    says(&o, 0, "backups of 2 other hosts");
    let srv = with_consent(d.path(), srv, "all");
    let o = restore_own(&beta, &srv.endpoint(), &nosuch);
    says(
        &o,
        2,
        "the peer holds no backups of host nosuch; it holds backups of: alpha, gamma",
    );
    let o = restore_own(&beta, &srv.endpoint(), &["--host", "nosuch", "--list"]);
    assert!(text(&o).contains("alpha, gamma"), "{}", text(&o));
    assert_eq!(std::fs::read(&t).unwrap(), vec![0u8; 1 << 20]);
}
