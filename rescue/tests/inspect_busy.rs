//! The busy check of restore targets against fake trees: what is stacked on each
//! device (partitions, dm, md, loop devices backed by it or by a file on it, to
//! any depth) and which image files back loop devices. Expected output beside
//! the fixtures (UPDATE_EXPECT=1 rewrites it).

#![allow(clippy::unwrap_used)]

mod inspect_support;

use inspect_support::*;
use rescue::Root;
use rescue::system::busy;

/// One line per device of the tree, then per image file asked about.
fn report(root: &Root, files: &[&str]) -> String {
    let mut names: Vec<String> = std::fs::read_dir(root.path("/sys/block"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort_by(|a, b| rescue::system::disks::natural_cmp(a, b));
    let mut out = String::new();
    for n in names {
        let why = busy::device_in_use(root, &n);
        out.push_str(&format!("{n}: {}\n", why.as_deref().unwrap_or("free")));
    }
    for f in files {
        let why = busy::file_in_use(root, &root.path(f));
        out.push_str(&format!("{f}: {}\n", why.as_deref().unwrap_or("free")));
    }
    out
}

#[test]
fn stacked_loop_md_and_dm_devices_are_followed() {
    let (_t, dir) = fixture_root("stacked");
    // The image files (kept out of the fixture: git ignores *.img).
    std::fs::create_dir_all(dir.join("var/lib/images")).unwrap();
    for f in ["vm.img", "spare.img"] {
        std::fs::write(dir.join("var/lib/images").join(f), b"").unwrap();
    }
    let root = Root::new(dir);
    let r = report(
        &root,
        &["/var/lib/images/vm.img", "/var/lib/images/spare.img"],
    );
    expect("stacked", "expected-busy.txt", &r);
}

#[test]
fn server_raid_lvm_and_snap_loop() {
    let (_t, dir) = fixture_root("server");
    let root = Root::new(dir);
    expect("server", "expected-busy.txt", &report(&root, &[]));
}

#[test]
fn unreadable_mount_table_is_not_idle() {
    let (_t, dir) = fixture_root("stacked");
    std::fs::remove_file(dir.join("proc/self/mountinfo")).unwrap();
    let why = busy::device_in_use(&Root::new(dir), "vdd").unwrap();
    assert!(
        why.starts_with("cannot tell whether vdd is in use"),
        "{why}"
    );
}
