//! A lying server against the real `rescue restore`: a fake `serve` on a UNIX
//! socket, speaking frames through the rescue::proto library, that answers with
//! impossible chunk sizes, disk sizes and digests. The client must stop with a
//! clear error, never panic, and write nothing outside (nor, before its checks
//! pass, inside) its target. Last, a server that tells `rescue backup` it holds
//! chunks beyond the disk.

use std::fs;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::thread;

use rescue::proto::frame::{FrameReader, Header, Read1, write_frame};
use rescue::proto::msg::kind;
use serde_json::{Value, json};

use crate::common::{rescue, text};

const SIZE: u64 = 2 << 20;

/// What the fake server answers to each request; `None` leaves it unanswered.
struct Lies {
    disk_size: u64,
    ready: Value,
    /// Payload of the DIGESTS answer (restore --resume).
    digests: Option<Vec<u8>>,
    /// The listed backup's state.
    status: &'static str,
}

impl Lies {
    fn ready(chunk_size: u64) -> Lies {
        Lies {
            disk_size: SIZE,
            ready: json!({"chunk_size": chunk_size, "disks": [disk(SIZE)]}),
            digests: None,
            status: "complete",
        }
    }
}

fn disk(size: u64) -> Value {
    json!({"name": "disk", "size": size, "model": null, "serial": null,
           "sha256": "00", "unreadable_bytes": 0})
}

fn send(out: &mut impl std::io::Write, k: u8, offset: u64, payload: &[u8]) {
    let _ = write_frame(out, Header::new(k, 0, offset), payload);
}

/// Serves one client on `sock` with `lies` until it goes away.
fn fake_server(sock: &Path, lies: Lies) -> thread::JoinHandle<()> {
    let l = UnixListener::bind(sock).unwrap();
    thread::spawn(move || {
        let Ok((s, _)) = l.accept() else { return };
        let mut out = s.try_clone().unwrap();
        let mut r = FrameReader::new(s);
        let hello = json!({"protocol": 1, "min_protocol": 1, "role": "serve",
                           "identity": {"hostname": "liar", "tool_version": "0"}});
        while let Ok(Read1::Frame(f)) = r.read_frame() {
            let answer = match f.header.kind {
                kind::HELLO => Some((kind::HELLO, 0, hello.to_string().into_bytes())),
                kind::LIST => {
                    let listing = json!({"backups": [{
                        "host": "h", "backup_id": "b1", "label": null,
                        "status": lies.status, "created": "2026-01-01T00:00:00Z",
                        "finished": null, "machine_id": "",
                        "disks": [disk(lies.disk_size)]}]});
                    Some((kind::LISTING, 0, listing.to_string().into_bytes()))
                }
                kind::DIGESTS_REQ => lies.digests.clone().map(|d| (kind::DIGESTS, 0, d)),
                kind::RESTORE_BEGIN => {
                    Some((kind::RESTORE_READY, 0, lies.ready.to_string().into_bytes()))
                }
                _ => None,
            };
            if let Some((k, off, p)) = answer {
                send(&mut out, k, off, &p);
            }
        }
    })
}

/// Runs `rescue restore` against a fake server telling `lies`, onto `target`
/// in a fresh directory; returns its output and the directory's files after.
fn restore_from_liar(
    lies: Lies,
    prepare: impl FnOnce(&Path) -> PathBuf,
    extra: &[&str],
) -> (
    std::process::Output,
    Vec<(PathBuf, Vec<u8>)>,
    tempfile::TempDir,
) {
    let d = tempfile::tempdir().unwrap();
    let sock = d.path().join("liar.sock");
    let server = fake_server(&sock, lies);
    let work = d.path().join("work");
    fs::create_dir(&work).unwrap();
    let target = prepare(&work);
    let ep = format!("unix:{}", sock.display());
    let map = format!("disk={}", target.display());
    let mut args = vec![
        "restore", "-d", &ep, "--wait", "10", "--host", "h", "--map", &map, "--yes",
    ];
    args.extend_from_slice(extra);
    let o = rescue(&args);
    let _ = server.join();
    let mut files: Vec<(PathBuf, Vec<u8>)> = fs::read_dir(&work)
        .unwrap()
        .flatten()
        .map(|e| (e.path(), fs::read(e.path()).unwrap_or_default()))
        .collect();
    files.sort();
    (o, files, d)
}

fn existing(work: &Path) -> PathBuf {
    let t = work.join("t.img");
    fs::write(&t, vec![7u8; SIZE as usize]).unwrap();
    t
}

fn new_file(work: &Path) -> PathBuf {
    work.join("new.img")
}

/// The client failed with an error of its own (not a panic: 101) saying `why`.
fn refused_clearly(o: &std::process::Output, why: &str) {
    let t = text(o);
    assert!(!t.contains("panicked"), "{t}");
    assert!(
        matches!(o.status.code(), Some(1 | 2 | 6)),
        "exit {:?}: {t}",
        o.status.code()
    );
    assert!(t.contains(why), "wanted {why:?} in: {t}");
}

fn untouched(files: &[(PathBuf, Vec<u8>)]) {
    assert_eq!(
        files.len(),
        1,
        "{:?}",
        files.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    assert_eq!(files[0].1, vec![7u8; SIZE as usize]);
}

#[test]
fn chunk_size_zero_is_refused_not_a_panic() {
    let (o, files, _d) = restore_from_liar(Lies::ready(0), existing, &[]);
    refused_clearly(&o, "chunk size 0");
    untouched(&files);
    // Onto a new file: the file the restore created is gone again.
    let (o, files, _d) = restore_from_liar(Lies::ready(0), new_file, &[]);
    refused_clearly(&o, "chunk size 0");
    assert!(files.is_empty(), "left behind: {:?}", files[0].0);
}

#[test]
fn absurd_chunk_sizes_are_refused() {
    for (c, why) in [
        (1u64 << 31, "chunk size 2147483648"),
        (4096, "chunk size 4096"),
        (3 << 20, "chunk size 3145728"),
        (u64::from(u32::MAX) + 1, "malformed RESTORE_READY"),
    ] {
        let (o, files, _d) = restore_from_liar(Lies::ready(c), existing, &[]);
        refused_clearly(&o, why);
        untouched(&files);
    }
}

#[test]
fn absurd_disk_sizes_are_refused_before_anything_is_created() {
    // 2^62 bytes: far beyond any disk, and a sparse file of that size would be made.
    let lies = Lies {
        disk_size: 1 << 62,
        ready: json!({"chunk_size": 1 << 20, "disks": [disk(1 << 62)]}),
        digests: None,
        status: "complete",
    };
    let (o, files, _d) = restore_from_liar(lies, new_file, &[]);
    refused_clearly(&o, "impossible size");
    assert!(files.is_empty(), "created {:?}", files[0].0);
    // RESTORE_READY describing another disk than the listing did.
    for ready in [
        json!({"chunk_size": 1 << 20, "disks": [disk(SIZE * 4)]}),
        json!({"chunk_size": 1 << 20, "disks": []}),
        json!({"chunk_size": 1 << 20, "disks": [disk(SIZE), disk(SIZE)]}),
    ] {
        let lies = Lies {
            disk_size: SIZE,
            ready,
            digests: None,
            status: "complete",
        };
        let (o, files, _d) = restore_from_liar(lies, existing, &[]);
        refused_clearly(&o, "RESTORE_READY");
        untouched(&files);
    }
}

#[test]
fn a_state_that_only_starts_like_complete_is_not_restored() {
    // The state is a type on the wire, not a word the client tests the start of.
    for status in ["completely unverified", "complete?", ""] {
        let lies = Lies {
            status,
            ..Lies::ready(1 << 20)
        };
        let (o, files, _d) = restore_from_liar(lies, existing, &[]);
        refused_clearly(&o, "malformed LISTING message: unknown backup state");
        untouched(&files);
    }
}

/// A DIGESTS body: chunk size, n, then n digests.
fn digests(chunk: u32, n: u32, records: usize) -> Vec<u8> {
    let mut v = chunk.to_le_bytes().to_vec();
    v.extend_from_slice(&n.to_le_bytes());
    v.extend(vec![0u8; records * 32]);
    v
}

#[test]
fn resume_with_mismatched_digests_is_refused() {
    let cases = [
        // DIGESTS in 64 KiB chunks, RESTORE_READY in 1 MiB ones: the held
        // ranges would name the wrong chunks.
        (digests(64 << 10, 32, 32), "chunk size"),
        (digests(0, 2, 2), "chunk size 0"),
        (digests(1 << 20, 2, 5), "malformed DIGESTS"),
        (digests(1 << 20, 9, 9), "more digests"),
        (vec![1, 2, 3], "truncated DIGESTS"),
    ];
    for (body, why) in cases {
        let lies = Lies {
            digests: Some(body),
            ..Lies::ready(1 << 20)
        };
        let (o, files, _d) = restore_from_liar(lies, existing, &["--resume"]);
        refused_clearly(&o, why);
        untouched(&files);
    }
}

#[test]
fn a_new_file_must_fit_its_filesystem() {
    // 1 PiB: a possible disk, but no test machine has the room. The file
    // would have been created sparse, of that size, and left behind.
    let lies = Lies {
        disk_size: 1 << 50,
        ready: json!({"chunk_size": 1 << 20, "disks": [disk(1 << 50)]}),
        digests: None,
        status: "complete",
    };
    let (o, files, _d) = restore_from_liar(lies, new_file, &[]);
    assert_eq!(o.status.code(), Some(6), "{}", text(&o));
    refused_clearly(&o, "free");
    assert!(files.is_empty(), "created {:?}", files[0].0);
}

#[test]
fn a_backup_server_cannot_claim_more_chunks_than_the_disk_has() {
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("disk.img");
    crate::common::random_image(&img, 2, 5);
    // Unsorted, overlapping, reversed and beyond the disk's two 1 MiB chunks.
    let have = json!([[[1, 1000], [0, 2], [7, 3]]]);
    let (ep, h) = crate::peer::fake_server(
        d.path(),
        vec![(
            kind::BACKUP_BEGIN,
            kind::BACKUP_READY,
            json!({"backup_id": "b1", "location": "/x", "resumed": true, "have": have}),
        )],
    );
    let o = rescue(&[
        "backup",
        "-d",
        &ep,
        "--chunk-kib",
        "1024",
        img.to_str().unwrap(),
    ]);
    h.join().unwrap();
    let t = text(&o);
    assert!(!t.contains("panicked"), "{t}");
    assert!(
        t.contains("resuming, 2 of 2 chunks already verified on the peer"),
        "{t}"
    );
}
