//! Issue 10, point 8: what a peer sends never drives the terminal. Escape
//! sequences, CR/LF and direction overrides from the peer are refused when
//! received or escaped when printed, on serve, restore and backup.

use serde_json::json;

use crate::common::*;
use crate::peer::*;

const FORGED: &str = "restore of 20261201-000000 completed and verified in 1.0s";

fn no_raw_controls(t: &str) {
    assert!(
        !t.contains('\u{1b}') && !t.contains('\r'),
        "raw escape or CR:\n{t:?}"
    );
    assert!(
        !t.contains('\u{202e}') && !t.contains('\u{200f}'),
        "raw direction override:\n{t:?}"
    );
}

#[test]
fn an_error_from_the_server_cannot_forge_a_line() {
    let d = tempfile::tempdir().unwrap();
    let (ep, h) = fake_server(
        d.path(),
        vec![(
            kind::LIST,
            kind::ERROR,
            json!({"code": "refused", "message": format!("no\n{FORGED}")}),
        )],
    );
    let o = rescue(&[
        "restore",
        "-d",
        &ep,
        "--yes",
        "--map",
        "disk=/nonexistent/x",
    ]);
    h.join().unwrap();
    let t = text(&o);
    assert_ne!(o.status.code(), Some(0), "{t}");
    assert!(
        !t.lines().any(|l| l.starts_with("restore of")),
        "forged line printed:\n{t}"
    );
    assert!(t.contains("\\nrestore of"), "{t}");
}

#[test]
fn a_listing_cannot_send_escape_sequences_or_overrides() {
    let listing = |name: &str, id: &str| {
        json!({"backups": [{"host": "fake", "backup_id": id, "label": null,
            "status": "complete", "created": "2026-12-01T00:00:00Z", "finished": null,
            "machine_id": "", "disks": [{"name": name, "size": 1048576, "model": null,
            "serial": null, "sha256": null, "unreadable_bytes": 0}]}]})
    };
    for (name, id) in [
        ("d\u{1b}]0;owned\u{7}\u{1b}[2J", "20261201-000000"),
        ("disk", "20261201-000000\u{202e}exe.gpj"),
    ] {
        let d = tempfile::tempdir().unwrap();
        let (ep, h) = fake_server(
            d.path(),
            vec![(kind::LIST, kind::LISTING, listing(name, id))],
        );
        let o = rescue(&["restore", "-d", &ep, "--list"]);
        h.join().unwrap();
        no_raw_controls(&text(&o));
    }
}

#[test]
fn backup_escapes_the_id_and_location_it_is_given() {
    let (d, img) = random_disk(1, 3);
    let (ep, h) = fake_server(
        d.path(),
        vec![(
            kind::BACKUP_BEGIN,
            kind::BACKUP_READY,
            json!({
            "backup_id": "20261201\u{202e}gpj", "location": "/store/x\u{200f}y",
            "resumed": false, "have": [[]]}),
        )],
    );
    let o = rescue(&["backup", "-d", &ep, img.to_str().unwrap()]);
    h.join().unwrap();
    let t = text(&o);
    no_raw_controls(&t);
    assert!(t.contains("20261201\\u{202e}gpj"), "{t}");
}

#[test]
fn serve_escapes_what_the_peer_says() {
    let d = tempfile::tempdir().unwrap();
    let srv = Server::start(d.path(), &d.path().join("store"));
    let mut p = RawPeer::connect(&srv.sock);
    p.hello("restore", identity("evil\u{202e}", ""));
    p.send_json(
        kind::ERROR,
        &json!({"code": "x", "message": "bye\nsession with someone-else ended"}),
    );
    let t0 = std::time::Instant::now();
    while !srv.log_text().contains("bye") && t0.elapsed().as_secs() < 10 {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let log = srv.log_text();
    no_raw_controls(&log);
    assert!(log.contains("bye\\nsession with someone-else"), "{log}");
    assert!(
        !log.lines().any(|l| l == "session with someone-else ended"),
        "{log}"
    );
}
