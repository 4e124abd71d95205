//! Fuzzes `rescue serve`'s session handling, not only its decoders: each input is
//! a sequence of frames a peer sends (records, below) fed over a socketpair to
//! `serve::handle` with a real store in a temporary directory that holds one
//! complete backup, so LIST, RESTORE_BEGIN and DIGESTS_REQ reach real data. The
//! server must neither panic nor hang (run.sh sets libFuzzer's -timeout), nor
//! write outside the store. Seeds of whole valid sessions: seeds/session
//! (make_seeds.py).
//!
//! Input: one byte choosing the peer (bit 0: restore, else backup; bit 1: the
//! machine that made the stored backup, else a stranger; bit 2: serve runs with
//! `--allow-restore all`), then records `kind u8, flags u8, disk u8, offset u32
//! LE, len u16 LE, payload[len]` each sent as one frame; kind 0xff sends the
//! payload raw (garbage between frames).
#![no_main]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use rescue::proto::frame::{Header, write_frame};
use rescue::proto::msg::{self, ChunkBody, Hello, Identity, Role, kind};
use rescue::session::Session;
use rescue::session::auth::Consent;
use rescue::wire::conn::Conn;
use rescue::wire::transport::Stream;
use rescue::store::Store;

const HOST: &str = "fuzz";
const MACHINE_ID: &str = "f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0";
/// The stored backup's id, as the seeds name it.
const SEED_ID: &str = "20260101-000000-seed";

struct World {
    dir: PathBuf,
    store: Store,
    none: Consent,
    all: Consent,
}

fn identity(own: bool) -> Identity {
    Identity {
        hostname: if own { HOST } else { "stranger" }.into(),
        machine_id: if own { MACHINE_ID } else { "" }.into(),
        tool_version: "fuzz".into(),
        ..Default::default()
    }
}

fn frame(out: &mut Vec<u8>, k: u8, disk: u32, offset: u64, flags: u16, payload: &[u8]) {
    let mut h = Header::new(k, disk, offset);
    h.flags = flags;
    let _ = write_frame(out, h, payload);
}

/// One session's bytes through `serve::handle`; returns when the server ended it.
fn run(w: &'static World, own: bool, role: Role, consent: &'static Consent, bytes: Vec<u8>) {
    let Ok((a, mut b)) = UnixStream::pair() else {
        return;
    };
    let Ok(conn) = Conn::new(Stream::Unix(a)) else {
        return;
    };
    let s = Session {
        conn,
        peer: Hello {
            protocol: 1,
            min_protocol: 1,
            role,
            identity: identity(own),
            streams: 1,
            session: String::new(),
        },
        me: identity(false),
        link: None,
    };
    let server = std::thread::spawn(move || rescue::cmd::serve::handle(&w.store, consent, s));
    // Take everything the server sends, so it never waits on us to read.
    let mut r = b.try_clone().expect("cloning the socket");
    let drain = std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 16];
        while matches!(r.read(&mut buf), Ok(n) if n > 0) {}
    });
    let _ = b.write_all(&bytes);
    let _ = b.shutdown(std::net::Shutdown::Write);
    let _ = server.join().expect("serve panicked");
    drop(b);
    let _ = drain.join();
}

/// A store with one complete backup of HOST named SEED_ID, made by a session.
fn world() -> &'static World {
    static W: OnceLock<&'static World> = OnceLock::new();
    *W.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("rescue-fuzz-session-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut store = Store::open_to_write(&dir, true).expect("a store in the temp dir");
        store.space_check = false;
        let w: &'static World = Box::leak(Box::new(World {
            dir,
            store,
            none: Consent::new(&[]),
            all: Consent::new(&["all".into()]),
        }));
        let data = vec![0x5au8; 8192];
        let mut v = Vec::new();
        let begin = serde_json_begin();
        frame(&mut v, kind::BACKUP_BEGIN, 0, 0, 0, begin.as_bytes());
        let mut body = ChunkBody::encode_prefix(&rescue::xfer::sha256(&data), 8192, &[]);
        body.extend_from_slice(&data);
        frame(&mut v, kind::CHUNK, 0, 0, 0, &body);
        frame(
            &mut v,
            kind::DISK_END,
            0,
            0,
            0,
            br#"{"disk":0,"bytes_read":8192,"unreadable_bytes":0}"#,
        );
        frame(&mut v, kind::SESSION_END, 0, 0, 0, br#"{"ok":true}"#);
        frame(&mut v, kind::BYE, 0, 0, 0, &[]);
        run(w, true, Role::Backup, &w.none, v);
        // The image SHA-256 completes the backup after the session, as in serve.
        w.store.wait_sealed();
        let mut made = w.store.list(Some(HOST));
        let b = made.pop().expect("the seed backup was stored");
        assert!(
            b.manifest.status.is_complete(),
            "the seed backup is incomplete"
        );
        let to = b.path.with_file_name(SEED_ID);
        std::fs::rename(&b.path, &to).expect("renaming the seed backup");
        let mut b = b;
        b.manifest.backup_id = SEED_ID.into();
        b.save().expect("saving the seed manifest");
        w
    })
}

fn serde_json_begin() -> String {
    String::from_utf8(msg::to_json(&msg::BackupBegin {
        label: Some("seed".into()),
        chunk_size: 65536,
        fresh: true,
        disks: vec![msg::DiskInfo {
            name: "sda".into(),
            source_path: "/dev/sda".into(),
            size: 8192,
            logical_sector_size: 512,
            ..Default::default()
        }],
        resume_key: None,
        full: false,
    }))
    .expect("JSON is UTF-8")
}

/// Removes what the last input stored, keeping the seed backup.
fn tidy(w: &World) {
    let Ok(hosts) = std::fs::read_dir(&w.dir) else {
        return;
    };
    for h in hosts.flatten() {
        let Ok(backups) = std::fs::read_dir(h.path()) else {
            continue;
        };
        for b in backups.flatten() {
            if b.file_name() != SEED_ID {
                let _ = std::fs::remove_dir_all(b.path());
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let w = world();
    let Some((&who, mut rest)) = data.split_first() else {
        return;
    };
    let mut bytes = Vec::new();
    while rest.len() >= 9 {
        let (k, flags, disk) = (rest[0], rest[1], rest[2]);
        let offset = u32::from_le_bytes([rest[3], rest[4], rest[5], rest[6]]);
        let len = usize::from(u16::from_le_bytes([rest[7], rest[8]])).min(rest.len() - 9);
        let payload = &rest[9..9 + len];
        if k == 0xff {
            bytes.extend_from_slice(payload);
        } else {
            frame(
                &mut bytes,
                k,
                u32::from(disk),
                u64::from(offset),
                u16::from(flags),
                payload,
            );
        }
        rest = &rest[9 + len..];
    }
    let role = if who & 1 != 0 {
        Role::Restore
    } else {
        Role::Backup
    };
    let consent = if who & 4 != 0 { &w.all } else { &w.none };
    run(w, who & 2 != 0, role, consent, bytes);
    tidy(w);
});
