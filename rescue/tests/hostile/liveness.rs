//! Liveness: one peer must not hold the single-session server. A peer that only
//! sends keepalives, trickles bytes, stops half-way through a frame, never reads,
//! or closes right after a frame serve does not know is dropped within the bounds
//! of docs/protocol.md ("Liveness"), shortened here through the environment; a
//! second peer arriving meanwhile hears who holds the server.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::thread;
use std::time::{Duration, Instant};

use rescue::proto::frame::{Header, write_frame};
use rescue::proto::msg::{self, Hello, Identity, RestoreBegin, Role, kind};

use crate::common::*;

/// Bounds several times shorter than a real cable's, so each test takes seconds.
const FAST: &[(&str, &str)] = &[
    ("RESCUE_PEER_SILENCE_MS", "4000"),
    ("RESCUE_PEER_PROGRESS_MS", "3000"),
    ("RESCUE_WRITE_STALL_MS", "2000"),
];

/// Only the silence bound shortened: progress cannot end these sessions first.
const QUIET: &[(&str, &str)] = &[("RESCUE_PEER_SILENCE_MS", "4000")];

/// A peer writing raw frames into the server's socket.
struct Intruder(UnixStream);

impl Intruder {
    /// Connects and greets as a client called `host` (never reading a byte).
    fn greet(srv: &Server, host: &str, role: Role) -> Intruder {
        // The socket file appears a moment before the server listens on it.
        let t = Instant::now();
        let s = loop {
            match UnixStream::connect(&srv.sock) {
                Ok(s) => break s,
                Err(e) if t.elapsed() > Duration::from_secs(5) => panic!("connecting: {e}"),
                Err(_) => thread::sleep(Duration::from_millis(20)),
            }
        };
        let mut i = Intruder(s);
        let hello = Hello {
            protocol: 1,
            min_protocol: 1,
            role,
            identity: Identity {
                hostname: host.into(),
                tool_version: "liveness".into(),
                ..Default::default()
            },
            streams: 0,
            session: String::new(),
        };
        i.frame(Header::new(kind::HELLO, 0, 0), &msg::to_json(&hello));
        wait_log(
            srv,
            &format!("connected to {host}"),
            Duration::from_secs(10),
        );
        i
    }

    fn frame(&mut self, h: Header, payload: &[u8]) -> bool {
        write_frame(&mut self.0, h, payload).is_ok()
    }

    /// A keepalive whose header reports `work` units of local work done.
    fn ping(&mut self, work: u64) -> bool {
        self.frame(Header::new(kind::PING, 0, work), &[])
    }

    /// Keepalives every `every` for at most `lasting`, the n-th reporting
    /// `work(n)`, until the server hangs up; then the connection closes.
    fn keep_pinging(
        mut self,
        lasting: Duration,
        every: Duration,
        work: impl Fn(u64) -> u64 + Send + 'static,
    ) -> thread::JoinHandle<()> {
        let t = Instant::now();
        thread::spawn(move || {
            let mut n = 0;
            while t.elapsed() < lasting && self.ping(work(n)) {
                n += 1;
                thread::sleep(every);
            }
        })
    }
}

/// Waits until the server's log holds `what`; returns how long that took.
fn wait_log(srv: &Server, what: &str, within: Duration) -> Duration {
    let t = Instant::now();
    while !srv.log_text().contains(what) {
        assert!(
            t.elapsed() < within,
            "after {within:?} the server log lacks {what:?}:\n{}",
            srv.log_text()
        );
        thread::sleep(Duration::from_millis(50));
    }
    t.elapsed()
}

/// The server is free again once the session with `host` is over: a real
/// client lists the store.
fn serves_again(srv: &Server, host: &str) {
    wait_log(
        srv,
        &format!("session with {host}"),
        Duration::from_secs(10),
    );
    let o = rescue(&["restore", "-d", &srv.endpoint(), "--list", "--wait", "10"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}

#[test]
fn keepalives_alone_do_not_keep_a_session() {
    let d = tempfile::tempdir().unwrap();
    let srv = Server::start_env(d.path(), &d.path().join("store"), FAST);
    let p = Intruder::greet(&srv, "pinger", Role::Restore);
    // Keepalives well inside the silence bound, all reporting the same work.
    let pinger = p.keep_pinging(Duration::from_secs(15), Duration::from_millis(500), |_| 7);
    let took = wait_log(&srv, "only keepalives", Duration::from_secs(15));
    assert!(took < Duration::from_secs(12), "dropped after {took:?}");
    serves_again(&srv, "pinger");
    pinger.join().unwrap();
}

#[test]
fn keepalives_reporting_work_keep_a_slow_peer() {
    let d = tempfile::tempdir().unwrap();
    let srv = Server::start_env(d.path(), &d.path().join("store"), FAST);
    let mut p = Intruder::greet(&srv, "reader", Role::Restore);
    // Twice the progress bound of a peer that only reports reading its disk.
    for work in 1..=12 {
        assert!(p.ping(work), "the server hung up on a peer doing work");
        thread::sleep(Duration::from_millis(500));
    }
    assert!(
        !srv.log_text().contains("reader ended"),
        "{}",
        srv.log_text()
    );
    assert!(
        !srv.log_text().contains("reader failed"),
        "{}",
        srv.log_text()
    );
}

#[test]
fn a_trickle_of_bytes_is_dropped_well_before_a_minute() {
    let d = tempfile::tempdir().unwrap();
    let srv = Server::start_env(d.path(), &d.path().join("store"), QUIET);
    let mut p = Intruder::greet(&srv, "trickler", Role::Backup);
    let t = Instant::now();
    let trickler = thread::spawn(move || {
        // Keepalives, one byte every 250 ms: 8 s per frame.
        let bytes: Vec<u8> = (0..4)
            .flat_map(|_| Header::new(kind::PING, 0, 0).encode())
            .collect();
        for b in bytes {
            if t.elapsed() > Duration::from_secs(20) || p.0.write_all(&[b]).is_err() {
                break;
            }
            thread::sleep(Duration::from_millis(250));
        }
    });
    let took = wait_log(&srv, "no word from the peer", Duration::from_secs(20));
    assert!(took < Duration::from_secs(15), "dropped after {took:?}");
    serves_again(&srv, "trickler");
    trickler.join().unwrap();
}

#[test]
fn a_frame_that_stops_half_way_is_dropped() {
    let d = tempfile::tempdir().unwrap();
    let srv = Server::start_env(d.path(), &d.path().join("store"), QUIET);
    let mut p = Intruder::greet(&srv, "staller", Role::Backup);
    // A header announcing an 8 MiB chunk, a few bytes of it, then nothing.
    let mut h = Header::new(kind::CHUNK, 0, 0);
    h.len = 8 << 20;
    p.0.write_all(&h.encode()).unwrap();
    p.0.write_all(&[0u8; 100]).unwrap();
    let took = wait_log(&srv, "no word from the peer", Duration::from_secs(20));
    assert!(took < Duration::from_secs(15), "dropped after {took:?}");
    serves_again(&srv, "staller");
    drop(p);
}

#[test]
fn a_close_after_an_unknown_frame_is_noticed_at_once() {
    let d = tempfile::tempdir().unwrap();
    // Real-cable bounds: only noticing the close can end this session quickly.
    let srv = Server::start(d.path(), &d.path().join("store"));
    let mut p = Intruder::greet(&srv, "closer", Role::Backup);
    p.frame(Header::new(99, 0, 0), b"{}");
    drop(p);
    let took = wait_log(&srv, "session with closer", Duration::from_secs(30));
    assert!(took < Duration::from_secs(5), "noticed after {took:?}");
    serves_again(&srv, "closer");
}

#[test]
fn a_peer_that_never_reads_does_not_hold_the_server() {
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("big.img");
    random_image(&img, 32, 11);
    // A real backup in 8 MiB chunks (its restore overfills any socket buffer),
    // made under real-cable bounds: a loaded machine hashes 8 MiB slowly.
    let srv = Server::start(d.path(), &d.path().join("store"));
    let o = rescue(&[
        "backup",
        "-d",
        &srv.endpoint(),
        "--chunk-kib",
        "8192",
        img.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let bd = backup_dirs(&srv.store).pop().unwrap();
    drop(srv);
    // The intruder is not the machine that made the backup: serve must allow it.
    let srv = Server::start_cmd(d.path(), &d.path().join("store"), |c| {
        c.args(["--allow-restore", "all"])
            .envs(FAST.iter().copied());
    });
    let name = |p: &std::path::Path| p.file_name().unwrap().to_string_lossy().into_owned();
    let mut p = Intruder::greet(&srv, "sink", Role::Restore);
    let begin = RestoreBegin {
        host: name(bd.parent().unwrap()),
        backup_id: name(&bd),
        disks: vec!["big".into()],
        have: vec![],
        accepts_damaged: false,
    };
    p.frame(
        Header::new(kind::RESTORE_BEGIN, 0, 0),
        &msg::to_json(&begin),
    );
    wait_log(&srv, "sending backup", Duration::from_secs(10));
    // Keepalives that report work, so only the stalled write can end it.
    let pinger = p.keep_pinging(Duration::from_secs(20), Duration::from_millis(300), |n| n);
    let took = wait_log(&srv, "has not read anything", Duration::from_secs(20));
    assert!(took < Duration::from_secs(15), "dropped after {took:?}");
    serves_again(&srv, "sink");
    pinger.join().unwrap();
}

#[test]
fn a_second_peer_hears_who_holds_the_server() {
    let d = tempfile::tempdir().unwrap();
    let srv = Server::start(d.path(), &d.path().join("store"));
    let p = Intruder::greet(&srv, "holder", Role::Backup);
    // Long enough for the second peer to be answered (after BUSY_GRACE, 3 s).
    let holder = p.keep_pinging(Duration::from_secs(8), Duration::from_millis(200), |n| n);
    let t = Instant::now();
    let mut second = spawn_rescue(&["restore", "-d", &srv.endpoint(), "--list"]);
    while second.try_wait().unwrap().is_none() {
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "the second peer still waits for a greeting"
        );
        thread::sleep(Duration::from_millis(50));
    }
    let o = second.wait_with_output().unwrap();
    assert_ne!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains("busy with a session for holder") && text(&o).contains("try again"),
        "{}",
        text(&o)
    );
    // The holder hangs up after 8 s; its session then ends.
    holder.join().unwrap();
    serves_again(&srv, "holder");
}
