//! A fake peer speaking raw frames (for what the real clients never send), and
//! store fixtures: one real backup, and copies of its manifest with hostile
//! metadata, as an older version or a hand edit would have left them.

use std::fs;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rescue::proto::frame::{Frame, FrameReader, Header, Read1, write_frame};
use serde_json::{Value, json};

use crate::common::*;

pub use rescue::proto::msg::kind;

pub struct RawPeer {
    s: UnixStream,
    r: FrameReader<UnixStream>,
}

impl RawPeer {
    pub fn connect(sock: &Path) -> RawPeer {
        let s = UnixStream::connect(sock).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let r = FrameReader::new(s.try_clone().unwrap());
        RawPeer { s, r }
    }

    pub fn send(&mut self, kind: u8, payload: &[u8]) {
        write_frame(&mut self.s, Header::new(kind, 0, 0), payload).unwrap();
    }

    /// A frame with a header of our making (data messages: disk, offset, flags).
    pub fn send_frame(&mut self, h: Header, payload: &[u8]) {
        write_frame(&mut self.s, h, payload).unwrap();
    }

    pub fn send_json(&mut self, kind: u8, v: &Value) {
        self.send(kind, &serde_json::to_vec(v).unwrap());
    }

    /// Greets the server as `role` with this identity and waits for its HELLO.
    pub fn hello(&mut self, role: &str, identity: Value) {
        self.send_json(
            kind::HELLO,
            &json!({"protocol": 1, "min_protocol": 1, "role": role, "identity": identity}),
        );
        self.recv(&[kind::HELLO]).expect("the server's HELLO");
    }

    /// The next frame of one of `kinds` (or an ERROR), None when the server
    /// closed or said nothing for 20 s.
    pub fn recv(&mut self, kinds: &[u8]) -> Option<Frame> {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(30) {
            match self.r.read_frame() {
                Ok(Read1::Frame(f)) if kinds.contains(&f.header.kind) => return Some(f),
                Ok(Read1::Frame(f)) if f.header.kind == kind::ERROR => return Some(f),
                Ok(Read1::Frame(_)) => continue,
                _ => return None,
            }
        }
        None
    }
}

/// Runs the rescue binary reading its output as it comes (a long listing fills
/// a pipe that `common::rescue` only reads at the end).
pub fn rescue_long(args: &[&str]) -> std::process::Output {
    std::process::Command::new(bin())
        .args(args)
        .env("RESCUE_PLAIN", "1")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

pub fn identity(hostname: &str, machine_id: &str) -> Value {
    json!({"hostname": hostname, "machine_id": machine_id, "tool_version": "hostile"})
}

pub fn body(f: &Frame) -> Value {
    serde_json::from_slice(&f.payload).unwrap()
}

/// A server whose store holds one real, complete backup of a 1 MiB image made by
/// this machine; returns the server and that backup's directory.
pub fn server_with_backup(dir: &Path) -> (Server, PathBuf) {
    let img = dir.join("disk.img");
    random_image(&img, 1, 7);
    let srv = Server::start(dir, &dir.join("store"));
    let o = rescue(&["backup", "-d", &srv.endpoint(), img.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let bd = backup_dirs(&srv.store).pop().unwrap();
    (srv, bd)
}

pub fn manifest(bd: &Path) -> Value {
    serde_json::from_slice(&fs::read(bd.join("manifest.json")).unwrap()).unwrap()
}

/// Writes a copy of `bd`'s manifest, changed by `edit`, as backup `id` of `host`.
pub fn plant(store: &Path, bd: &Path, host: &str, id: &str, edit: impl FnOnce(&mut Value)) {
    let mut m = manifest(bd);
    m["backup_id"] = json!(id);
    edit(&mut m);
    let dir = store.join(host).join(id);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("manifest.json"), serde_json::to_vec(&m).unwrap()).unwrap();
}

/// The directory name of this machine's backups in the store.
pub fn host_of(bd: &Path) -> String {
    bd.parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// A fake `rescue serve` on a UNIX socket for one client: it greets, answers
/// each request kind in `script` once with (reply kind, body), and closes a
/// moment after the last answer (or when the client does).
pub fn fake_server(
    dir: &Path,
    script: Vec<(u8, u8, Value)>,
) -> (String, std::thread::JoinHandle<()>) {
    let sock = dir.join("fake.sock");
    let l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let h = std::thread::spawn(move || {
        let Ok((s, _)) = l.accept() else { return };
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut w = s.try_clone().unwrap();
        let mut r = FrameReader::new(s);
        let hello = json!({"protocol": 1, "min_protocol": 1, "role": "serve",
                           "identity": identity("fake", "")});
        let send = |w: &mut UnixStream, k: u8, v: &Value| {
            let _ = write_frame(w, Header::new(k, 0, 0), &serde_json::to_vec(v).unwrap());
        };
        send(&mut w, kind::HELLO, &hello);
        let mut script = script;
        while let Ok(Read1::Frame(f)) = r.read_frame() {
            if let Some(i) = script.iter().position(|(k, _, _)| *k == f.header.kind) {
                let (_, reply, body) = script.remove(i);
                send(&mut w, reply, &body);
                if script.is_empty() {
                    std::thread::sleep(Duration::from_millis(300));
                    return;
                }
            }
        }
    });
    (format!("unix:{}", sock.display()), h)
}
