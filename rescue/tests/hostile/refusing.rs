//! A peer that keeps refusing one chunk (NAK without NAK_DATA, for ever) or
//! keeps sending it wrong: the transfer must end after a bounded number of
//! tries with a clear error naming disk and offset and exit code 4, never
//! loop, and the receiving `serve` keeps what it verified so a resume works.

use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use rescue::proto::frame::{FrameReader, Header, Read1, write_frame};
use rescue::proto::msg::{ChunkBody, kind};
use serde_json::json;

use crate::common::*;
use crate::peer::*;

const MIB: u64 = 1 << 20;

/// Runs rescue with `args`, killed after 120 s (an endless resend loop would
/// otherwise hang the suite); its output.
fn bounded(args: &[&str]) -> std::process::Output {
    let mut child = spawn_rescue(args);
    let t = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            panic!(
                "rescue {args:?} never stopped: {}",
                text(&child.wait_with_output().unwrap())
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

/// A fake `serve` for one backup client: it acknowledges chunk 0 and answers
/// every copy of the chunk at 1 MiB with a plain NAK. Returns the endpoint,
/// how many copies of that chunk it got, and the ERROR code it was sent.
fn refusing_server(dir: &Path) -> (String, Arc<AtomicU64>, thread::JoinHandle<String>) {
    let sock = dir.join("refusing.sock");
    let l = UnixListener::bind(&sock).unwrap();
    let copies = Arc::new(AtomicU64::new(0));
    let seen = copies.clone();
    let h = thread::spawn(move || {
        let Ok((s, _)) = l.accept() else {
            return String::new();
        };
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut out = s.try_clone().unwrap();
        let mut r = FrameReader::new(s);
        let mut send = |k: u8, off: u64, p: &[u8]| {
            let _ = write_frame(&mut out, Header::new(k, 0, off), p);
        };
        let hello = json!({"protocol": 4, "min_protocol": 1, "role": "serve",
                           "identity": identity("refuser", "")});
        while let Ok(Read1::Frame(f)) = r.read_frame() {
            match f.header.kind {
                kind::HELLO => send(kind::HELLO, 0, hello.to_string().as_bytes()),
                kind::BACKUP_BEGIN => {
                    let ready = json!({"backup_id": "b1", "location": "/nowhere",
                                       "resumed": false, "have": [[]]});
                    send(kind::BACKUP_READY, 0, ready.to_string().as_bytes());
                }
                kind::CHUNK if f.header.offset == 0 => send(kind::ACK, MIB, &[]),
                kind::CHUNK if f.header.offset == MIB => {
                    seen.fetch_add(1, Ordering::Relaxed);
                    send(kind::NAK, MIB, &[]);
                }
                kind::ERROR => return body(&f)["code"].as_str().unwrap_or("").to_string(),
                _ => {}
            }
        }
        String::new()
    });
    (format!("unix:{}", sock.display()), copies, h)
}

#[test]
fn a_chunk_the_server_keeps_refusing_ends_the_backup_naming_disk_and_offset() {
    let (d, img) = random_disk(4, 31);
    let (ep, copies, server) = refusing_server(d.path());
    let o = bounded(&["backup", "-d", &ep, "--full", img.to_str().unwrap()]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(4), "{out}");
    assert!(
        out.contains("the chunk of disk at offset 1048576") && out.contains("32 times"),
        "{out}"
    );
    assert_eq!(server.join().unwrap(), "verify", "{out}");
    let n = copies.load(Ordering::Relaxed);
    assert!((32..=34).contains(&n), "the chunk was sent {n} times");
}

/// A backup client (raw frames) that sends chunk 0 intact and then chunk 1
/// with a wrong digest every time the real `serve` asks for it again.
#[test]
fn serve_stops_asking_for_a_chunk_that_always_fails_and_keeps_what_it_verified() {
    let d = tempfile::tempdir().unwrap();
    let srv = Server::start(d.path(), &d.path().join("store"));
    let mut p = RawPeer::connect(&srv.sock);
    p.hello(
        "backup",
        identity("hostr", "r1r1r1r1r1r1r1r1r1r1r1r1r1r1r1r1"),
    );
    let chunk = 64 * 1024u32;
    p.send_json(
        kind::BACKUP_BEGIN,
        &json!({"label": null, "chunk_size": chunk, "fresh": true, "full": true,
                "disks": [{"name": "disk", "source_path": "/dev/x", "size": 4 * chunk,
                           "logical_sector_size": 512}]}),
    );
    assert!(p.recv(&[kind::BACKUP_READY]).is_some());
    let data = random_bytes(chunk as usize, 32);
    let send_chunk = |p: &mut RawPeer, off: u64, sha: &[u8; 32]| {
        let mut payload = ChunkBody::encode_prefix(sha, chunk, &[]);
        payload.extend_from_slice(&data);
        p.send_frame(Header::new(kind::CHUNK, 0, off), &payload);
    };
    send_chunk(&mut p, 0, &rescue::xfer::sha256(&data));
    let mut sent = 1;
    let code = loop {
        send_chunk(&mut p, u64::from(chunk), &[7; 32]);
        sent += 1;
        assert!(sent < 100, "serve asked for the chunk {sent} times");
        match p.recv(&[kind::NAK]) {
            Some(f) if f.header.kind == kind::ERROR => break body(&f),
            Some(_) => {}
            None => panic!("serve closed without an ERROR"),
        }
    };
    assert_eq!(code["code"], "verify", "{code}");
    let msg = code["message"].as_str().unwrap();
    assert!(msg.contains("disk at offset 65536"), "{msg}");
    drop(p);
    // What it verified is journaled: a resume would send only the rest.
    let bd = backup_dirs(&srv.store).pop().unwrap();
    let t = Instant::now();
    let journal = loop {
        let j = std::fs::read(bd.join("disk.chunks")).unwrap_or_default();
        if j.len() >= 32 && j[..32] != [0; 32] || t.elapsed() > Duration::from_secs(20) {
            break j;
        }
        thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        &journal[..32],
        &rescue::xfer::sha256(&data),
        "chunk 0 not held"
    );
    assert!(
        journal[32..].iter().all(|&b| b == 0),
        "more than chunk 0 held"
    );
}

/// A fake `serve` for one restore client, sending the chunk at offset 0 with
/// a digest that does not match its data, again on every NAK.
fn lying_sender(dir: &Path) -> (String, thread::JoinHandle<u64>) {
    let sock = dir.join("lying.sock");
    let l = UnixListener::bind(&sock).unwrap();
    let size = MIB;
    let h = thread::spawn(move || {
        let Ok((s, _)) = l.accept() else { return 0 };
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut out = s.try_clone().unwrap();
        let mut r = FrameReader::new(s);
        let mut payload = ChunkBody::encode_prefix(&[9; 32], size as u32, &[]);
        payload.extend_from_slice(&random_bytes(size as usize, 33));
        let disk = json!({"name": "disk", "size": size, "model": null, "serial": null,
                          "sha256": "00", "unreadable_bytes": 0});
        let mut sent = 0;
        while let Ok(Read1::Frame(f)) = r.read_frame() {
            let (k, p) = match f.header.kind {
                kind::HELLO => {
                    let hello = json!({"protocol": 4, "min_protocol": 1, "role": "serve",
                                       "identity": identity("liar", "")});
                    (kind::HELLO, hello.to_string().into_bytes())
                }
                kind::LIST => {
                    let l = json!({"backups": [{"host": "h", "backup_id": "b1",
                        "label": null, "status": "complete",
                        "created": "2026-01-01T00:00:00Z", "finished": null,
                        "disks": [disk]}]});
                    (kind::LISTING, l.to_string().into_bytes())
                }
                kind::RESTORE_BEGIN => {
                    let ready = json!({"chunk_size": size, "disks": [disk]});
                    let _ = write_frame(
                        &mut out,
                        Header::new(kind::RESTORE_READY, 0, 0),
                        ready.to_string().as_bytes(),
                    );
                    (kind::CHUNK, payload.clone())
                }
                kind::NAK => (kind::CHUNK, payload.clone()),
                kind::ERROR => return sent,
                _ => continue,
            };
            if k == kind::CHUNK {
                sent += 1;
                if sent > 100 {
                    return sent;
                }
            }
            let _ = write_frame(&mut out, Header::new(k, 0, 0), &p);
        }
        sent
    });
    (format!("unix:{}", sock.display()), h)
}

#[test]
fn a_restore_stops_when_the_server_keeps_sending_a_chunk_that_fails() {
    let d = tempfile::tempdir().unwrap();
    let (ep, server) = lying_sender(d.path());
    let target = d.path().join("t.img");
    let map = format!("disk={}", target.display());
    let o = bounded(&["restore", "-d", &ep, "--host", "h", "--map", &map, "--yes"]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(4), "{out}");
    assert!(
        out.contains("at offset 0") && out.contains("32 times"),
        "{out}"
    );
    let sent = server.join().unwrap();
    assert!((32..=34).contains(&sent), "the chunk was sent {sent} times");
}
