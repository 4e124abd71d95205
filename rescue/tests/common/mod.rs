//! Helpers shared by the host end-to-end tests: sample images, a `rescue serve`
//! child process, and a UNIX-socket proxy that cuts or corrupts the stream.
#![allow(dead_code, clippy::unwrap_used)]

use std::fs;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_rescue")
}

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// A random image of `mib` MiB.
pub fn random_image(path: &Path, mib: usize, seed: u64) {
    fs::write(path, random_bytes(mib << 20, seed)).unwrap();
}

/// The run stopped as a lost peer does (exit 5) and told the user to run the
/// same command again to resume; `what` names the case in a failure.
pub fn assert_resumable(o: &Output, what: &str) {
    let t = text(o);
    assert_eq!(o.status.code(), Some(5), "{what}: {t}");
    assert!(
        t.to_lowercase()
            .contains("run the same command again to resume"),
        "{what}: {t}"
    );
}

/// A temporary directory holding `disk.img`, `mib` MiB of random bytes: the
/// most common start of a test.
pub fn random_disk(mib: usize, seed: u64) -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let a = d.path().join("disk.img");
    random_image(&a, mib, seed);
    (d, a)
}

/// A sparse image: mostly zeros with data scattered at a few odd offsets.
pub fn sparse_image(path: &Path, mib: u64, seed: u64) {
    let f = fs::File::create(path).unwrap();
    f.set_len(mib << 20).unwrap();
    use std::os::unix::fs::FileExt;
    for (i, off) in [0u64, 3 << 20, (5 << 20) + 4097, (mib << 20) - 700]
        .iter()
        .enumerate()
    {
        let data = random_bytes(if i == 1 { 300_000 } else { 600 }, seed + i as u64);
        f.write_all_at(&data, *off).unwrap();
    }
}

/// `sha256sum -c SHA256SUMS` in backup directory `bd` passes, once the server
/// has sealed it: the client is released before SHA256SUMS is written, and a
/// check right after it raced the server (it failed now and then under load).
pub fn sums_check(bd: &Path) {
    let t = Instant::now();
    while status_of(bd) == "sealing" {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "{} stays sealing",
            bd.display()
        );
        thread::sleep(Duration::from_millis(20));
    }
    let check = Command::new("sha256sum")
        .args(["-c", "SHA256SUMS"])
        .current_dir(bd)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
}

/// The host directory name a backup directory lies in.
pub fn host_of_dir(bd: &Path) -> String {
    bd.parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string()
}

pub fn sha256_file(p: &Path) -> String {
    let out = Command::new("sha256sum").arg(p).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// A fake root whose identity is `hostname` with `machine_id` (cloned systems
/// share one), for `rescue --root`.
pub fn machine(dir: &Path, hostname: &str, machine_id: &str) -> PathBuf {
    let r = dir.join(hostname);
    fs::create_dir_all(r.join("proc/sys/kernel")).unwrap();
    fs::create_dir_all(r.join("etc")).unwrap();
    fs::write(r.join("proc/sys/kernel/hostname"), format!("{hostname}\n")).unwrap();
    fs::write(r.join("etc/machine-id"), format!("{machine_id}\n")).unwrap();
    r
}

/// `rescue serve` on a UNIX socket, killed on drop.
pub struct Server {
    pub child: Child,
    pub sock: PathBuf,
    pub store: PathBuf,
    pub log: PathBuf,
}

impl Server {
    pub fn start(dir: &Path, store: &Path) -> Server {
        Server::start_cmd(dir, store, |_| {})
    }

    /// A server with extra environment (e.g. shorter liveness bounds).
    pub fn start_env(dir: &Path, store: &Path, env: &[(&str, &str)]) -> Server {
        Server::start_cmd(dir, store, |c| {
            c.envs(env.iter().copied());
        })
    }

    /// With more options, e.g. `--allow-restore HOST`.
    pub fn start_with(dir: &Path, store: &Path, extra: &[&str]) -> Server {
        Server::start_cmd(dir, store, |c| {
            c.args(extra);
        })
    }

    /// Like `start`, with `more` done to the command first (extra arguments,
    /// environment, limits set before exec).
    pub fn start_cmd(dir: &Path, store: &Path, more: impl FnOnce(&mut Command)) -> Server {
        let sock = dir.join("serve.sock");
        let log = dir.join("serve.log");
        // A server killed before left its socket file: wait for the new one.
        let _ = fs::remove_file(&sock);
        let mut cmd = Command::new(bin());
        cmd.args(["serve", "--create", "--store"])
            .arg(store)
            .arg("--device")
            .arg(format!("unix:{}", sock.display()))
            .env("RESCUE_PLAIN", "1")
            .stdout(fs::File::create(dir.join("serve.out")).unwrap())
            .stderr(fs::File::create(&log).unwrap());
        more(&mut cmd);
        let child = cmd.spawn().unwrap();
        let t = Instant::now();
        while !sock.exists() {
            assert!(t.elapsed() < Duration::from_secs(10), "serve did not start");
            thread::sleep(Duration::from_millis(20));
        }
        Server {
            child,
            sock,
            store: store.to_path_buf(),
            log,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("unix:{}", self.sock.display())
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (at most 60 s: "not stuck") until serve's log holds `needle`
    /// `count` times. A client that lost its connection exits before serve has
    /// saved what it received; serve logs each step once it is done.
    pub fn wait_log(&self, needle: &str, count: usize) {
        let t = Instant::now();
        while self.log_text().matches(needle).count() < count {
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "serve's log did not show {needle:?} {count} time(s): {}",
                self.log_text()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends signal `sig` ("KILL", "TERM", "INT") and waits (at most 60 s)
    /// for the server to exit; returns its exit code (None when killed).
    pub fn signal(&mut self, sig: &str) -> Option<i32> {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
        let t = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code();
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "serve did not exit after SIG{sig}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // As a server left running would, it completes the backups its clients
        // were released from (`sealing`) first: a test that restarts it on the
        // same store means to stop it between sessions, not to crash it.
        let t = Instant::now();
        while self.store.is_dir()
            && matches!(self.child.try_wait(), Ok(None))
            && t.elapsed() < Duration::from_secs(60)
            && backup_dirs(&self.store).iter().any(|b| {
                fs::read_to_string(b.join("manifest.json")).is_ok_and(|m| m.contains("\"sealing\""))
            })
        {
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the rescue binary with `args`, plain progress, output piped.
pub fn spawn_rescue(args: &[&str]) -> Child {
    Command::new(bin())
        .args(args)
        .env("RESCUE_PLAIN", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Runs the rescue binary with `args`, plain progress, a timeout of 120 s.
pub fn rescue(args: &[&str]) -> Output {
    let mut child = spawn_rescue(args);
    let t = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if t.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "rescue {args:?} hung; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
}

pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The single backup directory in a store.
pub fn backup_dirs(store: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for h in fs::read_dir(store).unwrap().flatten() {
        if h.path().is_dir() {
            for b in fs::read_dir(h.path()).unwrap().flatten() {
                if b.path().join("manifest.json").exists() {
                    out.push(b.path());
                }
            }
        }
    }
    out.sort();
    out
}

/// The state manifest.json of backup directory `bd` records.
pub fn status_of(bd: &Path) -> String {
    let m: serde_json::Value =
        serde_json::from_slice(&fs::read(bd.join("manifest.json")).unwrap()).unwrap();
    m["status"].as_str().unwrap_or_default().to_string()
}

/// Waits (at most 60 s) until no backup in `store` is still `sealing`: the
/// client is released before the server has the image digests.
pub fn wait_sealed(store: &Path) {
    let t = Instant::now();
    while backup_dirs(store).iter().any(|b| status_of(b) == "sealing") {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "a backup in {} stays sealing",
            store.display()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// What the proxy does to the bytes going one way.
#[derive(Default, Clone)]
pub struct Faults {
    /// Drop the connection once this many client-to-server bytes went through.
    pub cut_after: Option<u64>,
    /// Flip one bit at these client-to-server stream offsets.
    pub flip_c2s: Vec<u64>,
    /// Flip one bit at these server-to-client stream offsets.
    pub flip_s2c: Vec<u64>,
    /// Drop the connection once this many server-to-client bytes went through.
    pub cut_s2c_after: Option<u64>,
    /// Deliver client-to-server bytes at most this fast (bytes per second).
    pub rate_c2s: Option<u64>,
    /// Stop delivering client-to-server bytes after this many, keeping the
    /// connection open (the server waits mid-transfer, to be killed).
    pub hold_c2s_after: Option<u64>,
    /// Once the server is gone, the client reads EOF but its writes are neither
    /// taken nor refused until it closes, as with the kernel's thunderbolt_stream:
    /// a writer is not told the peer closed (with no RX buffers on the other side
    /// its TX ring fills and write() blocks).
    pub c2s_blocks_after_close: bool,
}

/// A UNIX-socket proxy between a client and the server, injecting faults.
pub struct Proxy {
    pub sock: PathBuf,
    pub c2s_bytes: Arc<AtomicU64>,
    pub s2c_bytes: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    pub faults: Arc<Mutex<Faults>>,
    handle: Option<thread::JoinHandle<()>>,
    /// `per_stream`: each connection's (client-to-server, server-to-client)
    /// byte counts, in the order they connected.
    pub streams: Arc<Mutex<Vec<Counts>>>,
}

/// Bytes through one connection: client to server, server to client.
pub type Counts = (Arc<AtomicU64>, Arc<AtomicU64>);

impl Proxy {
    /// A proxy that drops the connection once `after` client-to-server bytes
    /// went through.
    pub fn cutting_c2s(dir: &Path, server: &Path, after: u64) -> Proxy {
        let cut = Faults {
            cut_after: Some(after),
            ..Default::default()
        };
        Proxy::start(dir, server, cut)
    }

    /// A proxy that drops the connection once `after` server-to-client bytes
    /// went through.
    pub fn cutting_s2c(dir: &Path, server: &Path, after: u64) -> Proxy {
        let cut = Faults {
            cut_s2c_after: Some(after),
            ..Default::default()
        };
        Proxy::start(dir, server, cut)
    }

    /// A proxy for one session over several streams: the i-th connection
    /// gets `faults[i]` (none past the end), all connections at once.
    pub fn per_stream(dir: &Path, server: &Path, faults: Vec<Faults>) -> Proxy {
        let (sock, l) = proxy_socket(dir);
        let stop = Arc::new(AtomicBool::new(false));
        let streams = Arc::new(Mutex::new(Vec::new()));
        let (stop2, streams2, server) = (stop.clone(), streams.clone(), server.to_path_buf());
        let handle = thread::spawn(move || {
            let mut pumps = Vec::new();
            while !stop2.load(Ordering::SeqCst) {
                let Ok((client, _)) = l.accept() else {
                    thread::sleep(Duration::from_millis(10));
                    continue;
                };
                let mut all = streams2.lock().unwrap();
                let f = faults.get(all.len()).cloned().unwrap_or_default();
                let counts = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
                all.push(counts.clone());
                pumps.push(join_pair(client, &server, &f, counts));
            }
            for (a, b) in pumps {
                let _ = (a.join(), b.join());
            }
        });
        Proxy {
            sock,
            c2s_bytes: Arc::default(),
            s2c_bytes: Arc::default(),
            stop,
            faults: Arc::default(),
            handle: Some(handle),
            streams,
        }
    }

    pub fn start(dir: &Path, server: &Path, faults: Faults) -> Proxy {
        let (sock, l) = proxy_socket(dir);
        let stop = Arc::new(AtomicBool::new(false));
        let c2s_bytes = Arc::new(AtomicU64::new(0));
        let s2c_bytes = Arc::new(AtomicU64::new(0));
        let faults = Arc::new(Mutex::new(faults));
        let (stop2, bytes2, back2, faults2, server) = (
            stop.clone(),
            c2s_bytes.clone(),
            s2c_bytes.clone(),
            faults.clone(),
            server.to_path_buf(),
        );
        let handle = thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                let client = match l.accept() {
                    Ok((c, _)) => c,
                    Err(_) => {
                        thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                };
                let f = faults2.lock().unwrap().clone();
                bytes2.store(0, Ordering::SeqCst);
                back2.store(0, Ordering::SeqCst);
                let (a, b) = join_pair(client, &server, &f, (bytes2.clone(), back2.clone()));
                // One connection at a time: a session's further streams are
                // refused (closed), so it runs over one.
                while !(a.is_finished() && b.is_finished()) {
                    if let Ok((other, _)) = l.accept() {
                        drop(other);
                    }
                    thread::sleep(Duration::from_millis(10));
                }
                let _ = a.join();
                let _ = b.join();
            }
        });
        Proxy {
            sock,
            c2s_bytes,
            s2c_bytes,
            stop,
            faults,
            handle: Some(handle),
            streams: Arc::default(),
        }
    }

    pub fn endpoint(&self) -> String {
        format!("unix:{}", self.sock.display())
    }

    pub fn set(&self, f: Faults) {
        *self.faults.lock().unwrap() = f;
    }
}

fn proxy_socket(dir: &Path) -> (PathBuf, UnixListener) {
    let sock = dir.join("proxy.sock");
    let _ = fs::remove_file(&sock);
    let l = UnixListener::bind(&sock).unwrap();
    l.set_nonblocking(true).unwrap();
    (sock, l)
}

type Pumps = (thread::JoinHandle<()>, thread::JoinHandle<()>);

/// Joins `client` to a new connection to `server` through two pumps with
/// faults `f`, counting the bytes each way in `counts`.
fn join_pair(client: UnixStream, server: &Path, f: &Faults, counts: Counts) -> Pumps {
    client.set_nonblocking(false).unwrap();
    let upstream = UnixStream::connect(server).unwrap();
    let both = || vec![client.try_clone().unwrap(), upstream.try_clone().unwrap()];
    let a = pump(
        client.try_clone().unwrap(),
        upstream.try_clone().unwrap(),
        Pace {
            cut_after: f.cut_after,
            flips: f.flip_c2s.clone(),
            rate: f.rate_c2s,
            hold_after: f.hold_c2s_after,
            block_after_close: f.c2s_blocks_after_close,
        },
        counts.0,
        both(),
    );
    let b = pump(
        upstream.try_clone().unwrap(),
        client.try_clone().unwrap(),
        Pace {
            cut_after: f.cut_s2c_after,
            flips: f.flip_s2c.clone(),
            ..Default::default()
        },
        counts.1,
        both(),
    );
    (a, b)
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// What one direction of the proxy does to its bytes.
#[derive(Default)]
struct Pace {
    cut_after: Option<u64>,
    flips: Vec<u64>,
    rate: Option<u64>,
    hold_after: Option<u64>,
    block_after_close: bool,
}

/// Neither reads nor closes `s` until its peer hangs up (or 5 minutes pass).
fn hold_unread(s: &UnixStream) {
    use std::os::fd::AsFd;
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(300) {
        let mut fds = [nix::poll::PollFd::new(
            s.as_fd(),
            nix::poll::PollFlags::from_bits_retain(libc::POLLRDHUP),
        )];
        if let Ok(n) = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(100u16))
            && n > 0
        {
            return;
        }
    }
}

fn pump(
    mut from: UnixStream,
    mut to: UnixStream,
    pace: Pace,
    counter: Arc<AtomicU64>,
    cut: Vec<UnixStream>,
) -> thread::JoinHandle<()> {
    let Pace {
        cut_after,
        flips,
        rate,
        hold_after,
        block_after_close,
    } = pace;
    thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        let mut pos = 0u64;
        let started = Instant::now();
        loop {
            let n = match from.read(&mut buf[..rate.map_or(64 * 1024, |_| 16 * 1024)]) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let mut n = n;
            if let Some(h) = hold_after
                && pos + n as u64 > h
            {
                // Deliver up to the hold, then swallow the rest until a side closes.
                let k = h.saturating_sub(pos) as usize;
                if k > 0 && to.write_all(&buf[..k]).is_err() {
                    break;
                }
                pos += k as u64;
                counter.store(pos, Ordering::SeqCst);
                while matches!(from.read(&mut buf), Ok(k) if k > 0) {}
                break;
            }
            if let Some(r) = rate {
                let due = Duration::from_secs_f64((pos + n as u64) as f64 / r as f64);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    thread::sleep(wait);
                }
            }
            if let Some(c) = cut_after
                && pos + n as u64 >= c
            {
                n = (c - pos) as usize;
                let _ = to.write_all(&buf[..n]);
                for s in &cut {
                    let _ = s.shutdown(std::net::Shutdown::Both);
                }
                break;
            }
            for &f in &flips {
                if f >= pos && f < pos + n as u64 {
                    buf[(f - pos) as usize] ^= 0x10;
                }
            }
            if to.write_all(&buf[..n]).is_err() {
                if block_after_close {
                    hold_unread(&from);
                }
                break;
            }
            pos += n as u64;
            counter.store(pos, Ordering::SeqCst);
        }
        let _ = to.shutdown(std::net::Shutdown::Write);
    })
}
