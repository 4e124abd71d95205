//! Issue 13 (used-block backups), as a peer sends them: a disk whose free map says
//! which ranges are free space, and chunks (FLAG_FREE) that carry only the rest.
//! The store keeps the free ranges as holes and records them; restore leaves,
//! zeroes or discards them on the target and never compares them; a resumed
//! backup must keep the same decision; a map that does not add up is refused.

use std::os::unix::fs::MetadataExt;

use rescue::proto::frame::Header;
use rescue::proto::msg::{ChunkBody, FLAG_FREE, used_parts};
use serde_json::{Value, json};

use crate::common::*;
use crate::peer::*;

const MID: &str = "13131313131313131313131313131313";
const MIB: u64 = 1 << 20;

/// The 4 MiB disk: partition sda1 over 1..3 MiB, its free space 1.5..2.5 MiB and
/// 2.75..3 MiB (across chunk boundaries, 1 MiB chunks).
fn free_map() -> Value {
    json!({"ranges": [[3 * MIB / 2, 5 * MIB / 2], [11 * MIB / 4, 3 * MIB]],
           "parts": [{"name": "sda1", "start": MIB, "end": 3 * MIB, "fs": "ext4",
                      "label": "root", "used": 3 * MIB / 4, "why": ""}]})
}

fn is_free(i: usize) -> bool {
    let i = i as u64;
    (3 * MIB / 2..5 * MIB / 2).contains(&i) || (11 * MIB / 4..3 * MIB).contains(&i)
}

/// The source's bytes, and the image as a used-block backup stores them.
fn disk() -> (Vec<u8>, Vec<u8>) {
    let src = random_bytes(4 << 20, 13);
    let stored = src
        .iter()
        .enumerate()
        .map(|(i, &b)| if is_free(i) { 0 } else { b })
        .collect();
    (src, stored)
}

fn begin(free: Value, key: Option<&str>) -> Value {
    let mut b = json!({"label": null, "chunk_size": MIB, "fresh": key.is_none(), "disks": [
        {"name": "sda", "source_path": "/dev/sda", "size": 4 * MIB,
         "logical_sector_size": 512, "free": free}]});
    if let Some(k) = key {
        b["resume_key"] = json!(k);
    }
    b
}

/// Sends chunk `i` of `stored` with the free ranges it holds left out.
fn send_chunk(p: &mut RawPeer, stored: &[u8], i: u64) {
    let c = &stored[(i * MIB) as usize..((i + 1) * MIB) as usize];
    let (start, end) = (i * MIB, (i + 1) * MIB);
    let free: Vec<(u32, u32)> = [(3 * MIB / 2, 5 * MIB / 2), (11 * MIB / 4, 3 * MIB)]
        .iter()
        .filter(|&&(s, e)| s < end && start < e)
        .map(|&(s, e)| {
            (
                (s.max(start) - start) as u32,
                (e.min(end) - s.max(start)) as u32,
            )
        })
        .collect();
    let sha = rescue::xfer::sha256(c);
    let mut h = Header::new(kind::CHUNK, 0, start);
    let mut body = if free.is_empty() {
        ChunkBody::encode_prefix(&sha, MIB as u32, &[])
    } else {
        h.flags |= FLAG_FREE;
        ChunkBody::encode_prefix_free(&sha, MIB as u32, &[], &free)
    };
    for (s, e) in used_parts(MIB as u32, &free) {
        body.extend_from_slice(&c[s as usize..e as usize]);
    }
    p.send_frame(h, &body);
}

/// A whole used-block backup of `disk()` by machine "usedhost"; returns DISK_DONE.
fn back_up(srv: &Server, stored: &[u8]) -> Value {
    let mut p = RawPeer::connect(&srv.sock);
    p.hello("backup", identity("usedhost", MID));
    p.send_json(kind::BACKUP_BEGIN, &begin(free_map(), None));
    let f = p.recv(&[kind::BACKUP_READY]).unwrap();
    assert_eq!(f.header.kind, kind::BACKUP_READY, "{}", body(&f));
    for i in 0..4 {
        send_chunk(&mut p, stored, i);
    }
    let end = json!({"disk": 0, "bytes_read": 11 * MIB / 4, "unreadable_bytes": 0});
    p.send_frame(
        Header::new(kind::DISK_END, 0, 0),
        &serde_json::to_vec(&end).unwrap(),
    );
    let done = body(&p.recv(&[kind::DISK_DONE]).unwrap());
    p.send_json(kind::SESSION_END, &json!({"ok": true}));
    p.recv(&[kind::SESSION_DONE]).unwrap();
    // The server finishes the image's digests after releasing the client.
    wait_sealed(&srv.store);
    done
}

#[test]
fn free_space_is_stored_as_holes_recorded_and_left_zeroed_or_discarded_on_restore() {
    let d = tempfile::tempdir().unwrap();
    let (src, stored) = disk();
    let srv = Server::start(d.path(), &d.path().join("store"));
    let done = back_up(&srv, &stored);
    assert_eq!(done["ok"], json!(true), "{done}");
    let bd = backup_dirs(&srv.store).pop().unwrap();
    let img = bd.join("sda.img");
    // The image as stored: free space is zeros, and holes.
    assert!(std::fs::read(&img).unwrap() == stored);
    let allocated = std::fs::metadata(&img).unwrap().blocks() * 512;
    assert!(
        allocated <= 11 * MIB / 4 + MIB / 4,
        "{allocated} bytes allocated"
    );
    let m = manifest(&bd);
    assert_eq!(m["disks"][0]["free"], free_map(), "{m}");
    // SHA256SUMS and `rescue verify` check the image as stored.
    let sums = std::fs::read_to_string(bd.join("SHA256SUMS")).unwrap();
    assert!(sums.contains(&sha256_file(&img)), "{sums}");
    let o = rescue(&["verify", bd.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));

    // Restore onto a target full of old bytes.
    let me = machine(d.path(), "usedhost", MID);
    let t = me.join("t.img");
    let restore = |extra: &[&str]| {
        std::fs::write(&t, vec![0xEEu8; 4 << 20]).unwrap();
        let mut a = vec!["--root", me.to_str().unwrap(), "restore", "-d"];
        let ep = srv.endpoint();
        a.extend([ep.as_str(), "--map", "sda=/t.img", "--yes", "--verify"]);
        a.extend(extra);
        let o = rescue(&a);
        assert_eq!(o.status.code(), Some(0), "{extra:?}: {}", text(&o));
        (std::fs::read(&t).unwrap(), text(&o))
    };
    // Default: the free space is left as it was, and --verify does not compare it.
    let (got, out) = restore(&[]);
    assert!(out.contains("left as they are"), "{out}");
    for (i, (&g, &s)) in got.iter().zip(&src).enumerate() {
        assert_eq!(g, if is_free(i) { 0xEE } else { s }, "at {i}");
    }
    // --resume compares the copied bytes only: every chunk is already there.
    let mut a = vec!["--root", me.to_str().unwrap(), "restore", "-d"];
    let ep = srv.endpoint();
    a.extend([
        ep.as_str(),
        "--map",
        "sda=/t.img",
        "--yes",
        "--resume",
        "--verify",
    ]);
    let o = rescue(&a);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("4 chunk(s) already on"), "{}", text(&o));
    // --zero-free and --discard (a file: its free space is punched out).
    for flag in ["--zero-free", "--discard"] {
        let (got, _) = restore(&[flag]);
        assert!(got == stored, "{flag}");
    }
}

#[test]
fn a_resumed_backup_keeps_its_decision_and_a_map_that_does_not_add_up_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let (_, stored) = disk();
    let srv = Server::start(d.path(), &d.path().join("store"));
    // Interrupted after one chunk.
    let mut p = RawPeer::connect(&srv.sock);
    p.hello("backup", identity("usedhost", MID));
    p.send_json(kind::BACKUP_BEGIN, &begin(free_map(), None));
    let ready = body(&p.recv(&[kind::BACKUP_READY]).unwrap());
    let key = ready["resume_key"].as_str().unwrap().to_string();
    send_chunk(&mut p, &stored, 0);
    p.recv(&[kind::ACK]).unwrap();
    drop(p);
    let resume = |free: Value| {
        let t = std::time::Instant::now();
        loop {
            let mut p = RawPeer::connect(&srv.sock);
            p.hello("backup", identity("usedhost", MID));
            p.send_json(kind::BACKUP_BEGIN, &begin(free.clone(), Some(&key)));
            let f = p.recv(&[kind::BACKUP_READY]).unwrap();
            let b = body(&f);
            // The server may still be saving the interrupted session.
            if b["code"] != json!("busy") || t.elapsed().as_secs() > 30 {
                return (f.header.kind, b);
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    };
    // Another decision (every block): not the same backup, a new one starts.
    let (k, b) = resume(Value::Null);
    assert_eq!(
        (k, &b["resumed"]),
        (kind::BACKUP_READY, &json!(false)),
        "{b}"
    );
    // The same decision resumes it.
    let (k, b) = resume(free_map());
    assert_eq!(
        (k, &b["resumed"]),
        (kind::BACKUP_READY, &json!(true)),
        "{b}"
    );
    // Free space outside every partition copied by used blocks: refused.
    let mut bad = free_map();
    bad["ranges"] = json!([[0, MIB]]);
    let (k, b) = resume(bad);
    assert_eq!(k, kind::ERROR, "{b}");
    assert!(
        b["message"]
            .as_str()
            .unwrap()
            .contains("no partition copied by used blocks"),
        "{b}"
    );
}

/// Chunk `i` of `stored`, sent as FLAG_FREE leaving out `free` (relative to it)
/// whatever the map says.
fn send_lying_chunk(p: &mut RawPeer, stored: &[u8], i: u64, free: &[(u32, u32)]) {
    let c = &stored[(i * MIB) as usize..((i + 1) * MIB) as usize];
    let mut h = Header::new(kind::CHUNK, 0, i * MIB);
    h.flags |= FLAG_FREE;
    let sha = rescue::xfer::sha256(c);
    let mut body = ChunkBody::encode_prefix_free(&sha, MIB as u32, &[], free);
    for (s, e) in used_parts(MIB as u32, free) {
        body.extend_from_slice(&c[s as usize..e as usize]);
    }
    p.send_frame(h, &body);
}

/// A sender may leave out only what its declared map calls free: a chunk that
/// leaves out used bytes of a partition (its digest made to match, as a lying
/// sender would), or bytes outside every used-block partition, or free space
/// on a disk sent with no map, is refused with an error naming the bytes.
#[test]
fn a_chunk_leaving_out_bytes_the_declared_map_says_are_used_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let (_, stored) = disk();
    let srv = Server::start(d.path(), &d.path().join("store"));
    let mib = MIB as u32;
    // (free map, chunk, its free ranges, the bytes named)
    let cases = [
        // Chunk 1 (1..2 MiB): the map frees 1.5..2 MiB, the chunk 1.25..2 MiB.
        (
            free_map(),
            1,
            vec![(mib / 4, 3 * mib / 4)],
            "1310720..2097152",
        ),
        // Chunk 0: the partition table, outside every partition.
        (free_map(), 0, vec![(0, 4096)], "0..4096"),
        // Free space in a disk sent whole.
        (
            Value::Null,
            0,
            vec![(0, mib / 2)],
            "no free map was declared",
        ),
    ];
    for (map, i, free, named) in cases {
        let mut p = RawPeer::connect(&srv.sock);
        p.hello("backup", identity("usedhost", MID));
        p.send_json(kind::BACKUP_BEGIN, &begin(map, None));
        let f = p.recv(&[kind::BACKUP_READY]).unwrap();
        assert_eq!(f.header.kind, kind::BACKUP_READY, "{}", body(&f));
        for j in 0..i {
            send_chunk(&mut p, &stored, j);
        }
        // The lying chunk, made consistent with itself: its digest covers the
        // chunk with the left-out bytes as zeros.
        let mut lied = stored.clone();
        for &(s, l) in &free {
            let at = (i * MIB) as usize + s as usize;
            lied[at..at + l as usize].fill(0);
        }
        send_lying_chunk(&mut p, &lied, i, &free);
        let f = p.recv(&[kind::ERROR]).unwrap();
        assert_eq!(f.header.kind, kind::ERROR, "{}", body(&f));
        let m = body(&f)["message"].as_str().unwrap().to_string();
        assert!(
            m.contains(&format!("offset {}", i * MIB)) && m.contains(named),
            "{m}"
        );
    }
}
