//! Host end-to-end tests of sessions over several streams (issue 15): chunks
//! go round every stream of a `--device unix:PATH --streams N` session, both
//! ways; a stream that corrupts, stalls or is cut ends the session with what
//! was verified kept, and the resume completes it byte for byte.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;

const MIB: u64 = 1 << 20;

/// The bytes each connection of `px` carried (client to server, back).
fn per_stream(px: &Proxy) -> Vec<(u64, u64)> {
    px.streams
        .lock()
        .unwrap()
        .iter()
        .map(|(a, b)| (a.load(Ordering::SeqCst), b.load(Ordering::SeqCst)))
        .collect()
}

/// Chunks the journal of `disk` in backup directory `bd` holds.
fn held(bd: &std::path::Path, disk: &str) -> u64 {
    let journal = std::fs::read(bd.join(format!("{disk}.chunks"))).unwrap();
    journal
        .chunks(32)
        .filter(|c| c.iter().any(|&b| b != 0))
        .count() as u64
}

#[test]
fn four_streams_carry_a_backup_and_a_restore_each() {
    let (d, a) = random_disk(16, 7);
    let srv = Server::start(d.path(), &d.path().join("store"));
    let px = Proxy::per_stream(d.path(), &srv.sock, Vec::new());
    let ep = px.endpoint();
    let o = rescue(&["backup", "-d", &ep, "--streams", "4", a.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("using 4 stream(s)"), "{}", text(&o));
    let carried = per_stream(&px);
    assert_eq!(carried.len(), 4, "{carried:?}");
    // Each stream took about a quarter of the 16 chunks.
    assert!(carried.iter().all(|&(c2s, _)| c2s > 3 * MIB), "{carried:?}");
    wait_sealed(&srv.store);
    let bd = backup_dirs(&srv.store).pop().unwrap();
    sums_check(&bd);
    assert_eq!(sha256_file(&bd.join("disk.img")), sha256_file(&a));
    drop(px);

    // The restore: the server sends over every stream.
    let px = Proxy::per_stream(d.path(), &srv.sock, Vec::new());
    let target = d.path().join("target.img");
    let map = format!("disk={}", target.display());
    let host = host_of_dir(&bd);
    let ep = px.endpoint();
    let args = [
        "restore", "-d", &ep, "--host", &host, "--map", &map, "--yes",
    ];
    let o = rescue(&args);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let carried = per_stream(&px);
    assert_eq!(carried.len(), 4, "{carried:?}");
    assert!(carried.iter().all(|&(_, s2c)| s2c > 3 * MIB), "{carried:?}");
    assert_eq!(sha256_file(&target), sha256_file(&a));
}

#[test]
fn serve_says_how_many_streams_it_takes() {
    let (d, a) = random_disk(4, 8);
    let srv = Server::start_with(d.path(), &d.path().join("store"), &["--streams", "2"]);
    let px = Proxy::per_stream(d.path(), &srv.sock, Vec::new());
    let o = rescue(&["backup", "-d", &px.endpoint(), a.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains("using 2 stream(s) of the 2"),
        "{}",
        text(&o)
    );
    assert_eq!(per_stream(&px).len(), 2);
}

/// Four streams: the first is sound, the second flips bits in two chunks, the
/// third stops delivering (it swallows what comes) and the fourth is cut. The
/// session ends (exit 5, resumable: a stream's end is the session's); the
/// chunks verified before are kept, and the resume over four sound streams
/// sends only the rest.
#[test]
fn a_corrupting_a_stalled_and_a_cut_stream_keep_what_was_verified() {
    let (d, a) = random_disk(32, 9);
    let env = [("RESCUE_PEER_SILENCE_MS", "4000")];
    let srv = Server::start_env(d.path(), &d.path().join("store"), &env);
    let faults = vec![
        Faults::default(),
        Faults {
            flip_c2s: vec![MIB + 4096, 3 * MIB + 77_777],
            ..Default::default()
        },
        Faults {
            hold_c2s_after: Some(2 * MIB + 100),
            ..Default::default()
        },
        Faults {
            cut_after: Some(5 * MIB),
            ..Default::default()
        },
    ];
    let px = Proxy::per_stream(d.path(), &srv.sock, faults);
    let t = Instant::now();
    let ep = px.endpoint();
    let o = rescue(&["backup", "-d", &ep, "--streams", "4", a.to_str().unwrap()]);
    assert!(t.elapsed() < Duration::from_secs(100), "stuck");
    assert_resumable(&o, "four streams, three of them faulty");
    assert!(text(&o).contains("arrived damaged"), "{}", text(&o));
    assert_eq!(per_stream(&px).len(), 4);
    // The client may be gone before serve has noticed the cut and synced
    // its journal (it logs "interrupted" then).
    srv.wait_log(": interrupted: ", 1);
    let bd = backup_dirs(&srv.store).pop().unwrap();
    let kept = held(&bd, "disk");
    assert!(
        kept >= 4,
        "only {kept} chunks kept:\n{}\nserve: {}",
        text(&o),
        srv.log_text()
    );
    drop(px);

    let ep = srv.endpoint();
    let o = rescue(&["backup", "-d", &ep, "--streams", "4", a.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("using 4 stream(s)"), "{}", text(&o));
    assert!(
        text(&o).contains(&format!("resuming, {kept} ")),
        "{kept}: {}",
        text(&o)
    );
    wait_sealed(&srv.store);
    assert_eq!(backup_dirs(&srv.store).len(), 1);
    sums_check(&bd);
    assert_eq!(sha256_file(&bd.join("disk.img")), sha256_file(&a));
}
