//! Stream set-up against a fake sysfs/ConfigFS tree whose kernel side is
//! simulated here: `index` and HopIDs appear as the driver would write them,
//! the peer's published HopIDs are adopted (reversed) only when a stream group
//! is created, and -1 allocates. Both start orders are covered.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use nix::fcntl::{OFlag, openat};
use nix::sys::stat::Mode;
use rescue::Root;
use rescue::fabric::link::{HopIds, Link, LinkOpts, STREAM_ROOT};

/// A fake machine with one peer connected as 0-1, offering service 0-1.0.
fn fake_tree(dir: &Path, local_uuid: &str, peer_uuid: &str) -> Root {
    let r = Root::new(dir);
    let dev = r.path("/sys/bus/thunderbolt/devices");
    for (name, attrs) in [
        (
            "domain0",
            vec![("security", "user"), ("iommu_dma_protection", "1")],
        ),
        (
            "0-0",
            vec![
                ("unique_id", local_uuid),
                ("device_name", "hosta"),
                ("vendor_name", "Test"),
            ],
        ),
        (
            "0-1",
            vec![
                ("unique_id", peer_uuid),
                ("device_name", "hostb"),
                ("vendor_name", "Test"),
                ("maxhopid", "15"),
            ],
        ),
        (
            "0-1.0",
            vec![
                ("key", "stream"),
                ("prtcid", "1"),
                ("prtcvers", "1"),
                ("prtcrevs", "0"),
                ("prtcstns", "0"),
            ],
        ),
    ] {
        let d = dev.join(name);
        fs::create_dir_all(&d).unwrap();
        for (k, v) in attrs {
            fs::write(d.join(k), format!("{v}\n")).unwrap();
        }
    }
    fs::write(dev.join("0-1/uevent"), "DEVTYPE=thunderbolt_xdomain\n").unwrap();
    fs::write(dev.join("0-1.0/uevent"), "DEVTYPE=thunderbolt_service\n").unwrap();
    fs::write(dev.join("0-0/uevent"), "DEVTYPE=thunderbolt_device\n").unwrap();
    fs::write(dev.join("domain0/uevent"), "DEVTYPE=thunderbolt_domain\n").unwrap();
    fs::create_dir_all(r.path(STREAM_ROOT)).unwrap();
    fs::create_dir_all(r.path("/dev")).unwrap();
    fs::create_dir_all(r.path("/sys/module/thunderbolt_stream")).unwrap();
    r
}

/// The simulated driver: what the peer published, and the groups it attached,
/// each held open. A path removed and made again is a new group, as in
/// ConfigFS; one whose files rescue is removing (a plain directory cannot go
/// in one rmdir) is still the group attached, so it is not attached again.
struct Kernel {
    published: Mutex<HashMap<String, (i64, i64)>>,
    stop: AtomicBool,
    seen: Mutex<HashMap<PathBuf, fs::File>>,
    /// Groups attached from this many on find no free HopID: their HopID
    /// attributes are /dev/full, which fails a write with ENOSPC.
    hopid_groups: Mutex<Option<u32>>,
}

/// Whether a group held open still exists (a removed directory has no links).
fn alive(group: &fs::File) -> bool {
    group.metadata().is_ok_and(|m| m.nlink() > 0)
}

/// Reads an attribute of this very group, not of whatever its path names now.
fn get(group: &fs::File, attr: &str) -> Option<i64> {
    let fd = openat(group, attr, OFlag::O_RDONLY, Mode::empty()).ok()?;
    let mut s = String::new();
    // Bounded: an attribute that is /dev/full (no free HopID) never ends.
    fs::File::from(fd).take(64).read_to_string(&mut s).ok()?;
    s.trim().parse().ok()
}

/// Writes an attribute of this very group: a removed group takes no writes,
/// and one its path names after a re-creation gets none of the old one's.
/// `create` at attach only: a file rescue removed at tear-down stays removed.
fn put(group: &fs::File, attr: &str, v: &str, create: bool) -> bool {
    let mut flags = OFlag::O_WRONLY | OFlag::O_TRUNC;
    if create {
        flags |= OFlag::O_CREAT;
    }
    openat(group, attr, flags, Mode::from_bits_truncate(0o644))
        .is_ok_and(|fd| fs::File::from(fd).write_all(v.as_bytes()).is_ok())
}

impl Kernel {
    fn start(root: Root) -> (Arc<Kernel>, thread::JoinHandle<()>) {
        let k = Arc::new(Kernel {
            published: Mutex::new(HashMap::new()),
            stop: AtomicBool::new(false),
            seen: Mutex::new(HashMap::new()),
            hopid_groups: Mutex::new(None),
        });
        let k2 = k.clone();
        let h = thread::spawn(move || {
            let mut next_index = 0u32;
            while !k2.stop.load(Ordering::SeqCst) {
                k2.tick(&root, &mut next_index);
                thread::sleep(Duration::from_millis(10));
            }
        });
        (k, h)
    }

    fn tick(&self, root: &Root, next_index: &mut u32) {
        let Ok(conns) = fs::read_dir(root.path(STREAM_ROOT)) else {
            return;
        };
        let mut seen = self.seen.lock().unwrap();
        seen.retain(|_, g| alive(g));
        for c in conns.flatten() {
            let Ok(streams) = fs::read_dir(c.path()) else {
                continue;
            };
            for s in streams.flatten() {
                let p = s.path();
                let name = s.file_name().to_string_lossy().into_owned();
                if let Some(group) = seen.get(&p) {
                    // A user write of -1 allocates.
                    for (attr, val) in [("in_hopid", 9), ("out_hopid", 8)] {
                        if get(group, attr) == Some(-1) {
                            put(group, attr, &format!("{val}\n"), false);
                        }
                    }
                    continue;
                }
                // mkdir: attach now and adopt what the peer published, reversed.
                let Ok(group) = fs::File::open(&p) else {
                    continue; // removed again already
                };
                let idx = *next_index;
                *next_index += 1;
                let (i, o) = self
                    .published
                    .lock()
                    .unwrap()
                    .get(&name)
                    .map(|&(pi, po)| (po, pi))
                    .unwrap_or((0, 0));
                fs::write(root.path(format!("/dev/tbstream{idx}")), "").unwrap();
                // HopIDs last: rescue takes both above 0 for an attached group
                // and reads its index then, which ConfigFS shows from mkdir on.
                // rescue writes an attribute only once it exists (it never
                // creates one), as ConfigFS makes them all at mkdir.
                let full = self.hopid_groups.lock().unwrap().is_some_and(|n| idx >= n);
                let attached = [
                    ("index", format!("{idx}\n")),
                    ("ring_size", "256\n".into()),
                    ("throttling", "8192\n".into()),
                    ("in_hopid", format!("{i}\n")),
                    ("out_hopid", format!("{o}\n")),
                ]
                .iter()
                .all(|(attr, v)| {
                    if full && attr.ends_with("_hopid") {
                        std::os::unix::fs::symlink("/dev/full", p.join(attr)).is_ok()
                    } else {
                        put(&group, attr, v, true)
                    }
                });
                // A group removed meanwhile (the adopter re-creates it) has
                // nothing attached: the new one at its path is attached next.
                if attached {
                    seen.insert(p, group);
                }
            }
        }
    }
}

fn opts(role: HopIds) -> LinkOpts {
    LinkOpts {
        peer: None,
        name: "backup".into(),
        wait: Some(Duration::from_secs(10)),
        role,
        teardown: true,
    }
}

#[test]
fn adopter_started_after_the_peer_published() {
    let d = tempfile::tempdir().unwrap();
    let root = fake_tree(d.path(), "a-uuid", "b-uuid");
    let (k, h) = Kernel::start(root.clone());
    k.published
        .lock()
        .unwrap()
        .insert("backup".into(), (10, 11));
    let link = Link::up(&root, &opts(HopIds::Adopt)).unwrap();
    // Peer in 10 -> our out 10; peer out 11 -> our in 11.
    assert_eq!((link.in_hopid, link.out_hopid), (11, 10));
    assert_eq!(link.service, "0-1.0");
    assert_eq!(link.dev, root.path("/dev/tbstream0"));
    drop(link);
    assert!(
        !root.path(STREAM_ROOT).join("0-1.0").exists(),
        "tear-down left groups"
    );
    k.stop.store(true, Ordering::SeqCst);
    h.join().unwrap();
}

#[test]
fn adopter_started_before_the_peer_waits_and_recreates() {
    let d = tempfile::tempdir().unwrap();
    let root = fake_tree(d.path(), "a-uuid", "b-uuid");
    let (k, h) = Kernel::start(root.clone());
    let k2 = k.clone();
    let late = thread::spawn(move || {
        thread::sleep(Duration::from_millis(800));
        k2.published
            .lock()
            .unwrap()
            .insert("backup".into(), (12, 13));
    });
    let link = Link::up(&root, &opts(HopIds::Adopt)).unwrap();
    assert_eq!(
        (link.in_hopid, link.out_hopid),
        (13, 12),
        "HopIDs must come from the late publication"
    );
    late.join().unwrap();
    drop(link);
    k.stop.store(true, Ordering::SeqCst);
    h.join().unwrap();
}

#[test]
fn publisher_allocates_and_keeps_foreign_groups() {
    let d = tempfile::tempdir().unwrap();
    let root = fake_tree(d.path(), "a-uuid", "b-uuid");
    // A connection group made by someone else must survive our tear-down.
    fs::create_dir_all(root.path(STREAM_ROOT).join("0-1.0")).unwrap();
    let (k, h) = Kernel::start(root.clone());
    let link = Link::up(&root, &opts(HopIds::Publish)).unwrap();
    assert_eq!((link.in_hopid, link.out_hopid), (9, 8));
    drop(link);
    assert!(root.path(STREAM_ROOT).join("0-1.0").is_dir());
    assert!(!root.path(STREAM_ROOT).join("0-1.0/backup").exists());
    k.stop.store(true, Ordering::SeqCst);
    h.join().unwrap();
}

#[test]
fn auto_role_follows_the_uuid_order() {
    let d = tempfile::tempdir().unwrap();
    // Our UUID sorts after the peer's: we publish.
    let root = fake_tree(d.path(), "ffff-local", "0000-peer");
    let (k, h) = Kernel::start(root.clone());
    let link = Link::up(&root, &opts(HopIds::Auto)).unwrap();
    assert_eq!(link.role, HopIds::Publish);
    drop(link);
    k.stop.store(true, Ordering::SeqCst);
    h.join().unwrap();
    let d = tempfile::tempdir().unwrap();
    let root = fake_tree(d.path(), "0000-local", "ffff-peer");
    let (k, h) = Kernel::start(root.clone());
    k.published.lock().unwrap().insert("backup".into(), (8, 9));
    let link = Link::up(&root, &opts(HopIds::Auto)).unwrap();
    assert_eq!(link.role, HopIds::Adopt);
    assert_eq!((link.in_hopid, link.out_hopid), (9, 8));
    drop(link);
    k.stop.store(true, Ordering::SeqCst);
    h.join().unwrap();
}

#[test]
fn clear_errors_without_module_or_peer() {
    let d = tempfile::tempdir().unwrap();
    let root = Root::new(d.path());
    let e = Link::up(&root, &opts(HopIds::Adopt)).unwrap_err();
    assert!(
        format!("{e:#}").contains("modprobe thunderbolt_stream"),
        "{e:#}"
    );

    let root = fake_tree(d.path(), "a", "b");
    fs::remove_dir_all(root.path("/sys/bus/thunderbolt/devices/0-1.0")).unwrap();
    let mut o = opts(HopIds::Adopt);
    o.wait = Some(Duration::from_millis(600));
    let e = Link::up(&root, &o).unwrap_err();
    assert!(format!("{e:#}").contains("no peer found"), "{e:#}");
    assert_eq!(rescue::exit::code_of(&e), rescue::exit::PEER_GONE);

    let mut o = opts(HopIds::Adopt);
    o.name = "muchtoolong".into();
    assert!(Link::up(&root, &o).is_err());
}

#[test]
fn ctrl_c_in_init_mode_stops_a_serve_whose_peer_is_not_attached() {
    // As PID 1 a signal only stops the running flow (init never exits). A serve
    // whose stream was set up but whose peer is not attached retried the
    // interrupted open (or greeting) for ever, printing "retrying".
    let d = tempfile::tempdir().unwrap();
    let root = fake_tree(d.path(), "ffff-local", "0000-peer");
    let (k, h) = Kernel::start(root.clone());
    let log = d.path().join("serve.log");
    let mut srv = std::process::Command::new(env!("CARGO_BIN_EXE_rescue"))
        .arg("--root")
        .arg(root.base())
        .args(["serve", "--create", "--store"])
        .arg(d.path().join("store"))
        .env("RESCUE_SIGNALS", "init")
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let text = || fs::read_to_string(&log).unwrap_or_default();
    let waited = std::time::Instant::now();
    while !text().contains("waiting for a peer on") {
        assert!(waited.elapsed() < Duration::from_secs(30), "{}", text());
        thread::sleep(Duration::from_millis(20));
    }
    // The stream is not attached to a peer: open(2) says ENXIO, as a socket does.
    let dev = root.path("/dev/tbstream0");
    fs::remove_file(&dev).unwrap();
    let _unattached = std::os::unix::net::UnixListener::bind(&dev).unwrap();
    thread::sleep(Duration::from_millis(600));
    let pid = nix::unistd::Pid::from_raw(srv.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let t = std::time::Instant::now();
    let status = loop {
        if let Some(s) = srv.try_wait().unwrap() {
            break s;
        }
        if t.elapsed() > Duration::from_secs(30) {
            let _ = srv.kill();
            let _ = srv.wait();
            panic!("serve did not stop on SIGINT: {}", text());
        }
        thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(130), "{}", text());
    assert!(
        text().contains("rescue: stopped waiting for a peer"),
        "{}",
        text()
    );
    assert!(
        !root.path(STREAM_ROOT).join("0-1.0").exists(),
        "the stream set-up was left behind: {}",
        text()
    );
    k.stop.store(true, Ordering::SeqCst);
    h.join().unwrap();
}

/// serve's further streams (issue 15): `backup1`, `backup2`, ... beside
/// `backup`, as many as get HopIDs; the first that gets ENOSPC is removed and
/// ends the list, and tear-down (also on a signal) removes exactly what was
/// made.
#[test]
fn publisher_sets_up_the_streams_that_get_hopids() {
    let d = tempfile::tempdir().unwrap();
    let root = fake_tree(d.path(), "a-uuid", "b-uuid");
    let (k, h) = Kernel::start(root.clone());
    // Two groups get HopIDs: the third finds none free.
    *k.hopid_groups.lock().unwrap() = Some(2);
    let mut link = Link::up(&root, &opts(HopIds::Publish)).unwrap();
    let t = std::time::Instant::now();
    assert_eq!(link.publish_more(&root, 4), 2);
    assert!(t.elapsed() < Duration::from_secs(3), "waited on ENOSPC");
    let conn = root.path(STREAM_ROOT).join("0-1.0");
    assert!(conn.join("backup").is_dir() && conn.join("backup1").is_dir());
    assert!(!conn.join("backup2").exists(), "the failed group was left");
    assert_eq!(link.extra_devs(), vec![root.path("/dev/tbstream1")]);
    // A signal's tear-down removes the further streams and the connection.
    assert!(rescue::fabric::link::teardown_all());
    assert!(!conn.exists(), "tear-down left groups");
    drop(link);
    k.stop.store(true, Ordering::SeqCst);
    h.join().unwrap();
}

/// A group of a further stream's name that someone else made is neither used
/// nor removed: serve offers the streams before it.
#[test]
fn publisher_stops_at_a_group_it_did_not_make() {
    let d = tempfile::tempdir().unwrap();
    let root = fake_tree(d.path(), "a-uuid", "b-uuid");
    let conn = root.path(STREAM_ROOT).join("0-1.0");
    fs::create_dir_all(conn.join("backup2")).unwrap();
    let (k, h) = Kernel::start(root.clone());
    let mut link = Link::up(&root, &opts(HopIds::Publish)).unwrap();
    assert_eq!(link.publish_more(&root, 4), 2);
    drop(link);
    assert!(
        conn.join("backup2").is_dir(),
        "someone else's group was removed"
    );
    assert!(!conn.join("backup").exists() && !conn.join("backup1").exists());
    k.stop.store(true, Ordering::SeqCst);
    h.join().unwrap();
}

/// The client adopts the further streams the peer published, reversed; one
/// the peer offered but never published (a hostile or broken peer) fails
/// within the bound given instead of waiting for ever, and is removed.
#[test]
fn adopter_takes_published_streams_and_gives_up_on_missing_ones() {
    let d = tempfile::tempdir().unwrap();
    let root = fake_tree(d.path(), "a-uuid", "b-uuid");
    let (k, h) = Kernel::start(root.clone());
    for (name, hop) in [("backup", (10, 11)), ("backup1", (12, 13))] {
        k.published.lock().unwrap().insert(name.into(), hop);
    }
    let mut link = Link::up(&root, &opts(HopIds::Adopt)).unwrap();
    let dev = link.adopt_more(&root, Duration::from_secs(5)).unwrap();
    assert_eq!(dev, root.path("/dev/tbstream1"));
    let t = std::time::Instant::now();
    let e = link.adopt_more(&root, Duration::from_secs(1)).unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(5), "waited too long");
    assert!(format!("{e:#}").contains("backup2"), "{e:#}");
    let conn = root.path(STREAM_ROOT).join("0-1.0");
    assert!(
        !conn.join("backup2").exists(),
        "the unpublished group was left"
    );
    assert_eq!(link.streams(), 2);
    link.truncate(1);
    assert!(!conn.join("backup1").exists());
    drop(link);
    assert!(!conn.exists());
    k.stop.store(true, Ordering::SeqCst);
    h.join().unwrap();
}
