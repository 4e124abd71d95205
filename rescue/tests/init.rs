//! PID-1 mode without being PID 1: boot preparation on a fake tree (command line,
//! hostname, drivers, virtual cable rule), the store lookup by superblock, and the
//! menu and mode flow scripted through a fake backend.

#![allow(clippy::unwrap_used)]

use std::ffi::CStr;
use std::fs::{self, File};
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use rescue::Root;
use rescue::boot::menu::{Backend, MenuEnd, Peer, Power};
use rescue::boot::modload::ModuleSys;
use rescue::boot::{Ending, Fabric, Mode, after_boot, hook, prepare, ready_line, store_mount};
use rescue::cmd::cli::Command;

const REL: &str = "7.3.4-test";

#[derive(Default)]
struct Recorder(Vec<String>);

impl ModuleSys for Recorder {
    fn init_module(&mut self, name: &str, _image: &[u8], _p: &CStr) -> Result<(), Errno> {
        self.0.push(name.to_string());
        Ok(())
    }
    fn finit_compressed(&mut self, name: &str, _f: &File, _p: &CStr) -> Result<(), Errno> {
        self.0.push(name.to_string());
        Ok(())
    }
}

#[path = "../../bootfacts/tests/support/modtree.rs"]
mod modtree;
use modtree::write;

/// A rescue initramfs as the kernel would show it after boot, without hardware.
fn tree(cmdline: &str, with_vcable: bool, with_domain: bool) -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    let r = t.path();
    let m = r.join(format!("lib/modules/{REL}"));
    write(&r.join("proc/sys/kernel/osrelease"), REL.as_bytes());
    write(&r.join("proc/sys/kernel/hostname"), b"(none)\n");
    write(&r.join("proc/cmdline"), cmdline.as_bytes());
    write(&r.join("proc/uptime"), b"2.50 1.00\n");
    write(&r.join("sys/class/dmi/id/product_name"), b"Test Box\n");
    write(&r.join("sys/class/dmi/id/product_serial"), b"SN123\n");
    let mut dep = String::from(
        "kernel/fs/configfs/configfs.ko:\n\
kernel/drivers/thunderbolt/thunderbolt.ko: kernel/fs/configfs/configfs.ko\n\
kernel/drivers/thunderbolt/thunderbolt_stream.ko: kernel/drivers/thunderbolt/thunderbolt.ko kernel/fs/configfs/configfs.ko\n\
kernel/drivers/block/virtio_blk.ko:\n",
    );
    let elf: &[u8] = b"\x7fELF";
    let mut files: Vec<(&str, &[u8])> = vec![
        ("kernel/fs/configfs/configfs.ko", elf),
        ("kernel/drivers/thunderbolt/thunderbolt.ko", elf),
        ("kernel/drivers/thunderbolt/thunderbolt_stream.ko", elf),
        ("kernel/drivers/block/virtio_blk.ko", elf),
        (
            "modules.builtin",
            b"kernel/drivers/virtio/virtio_pci.ko\n".as_slice(),
        ),
    ];
    let mut alias = String::from(
        "alias virtio:d00000002v* virtio_blk\nalias pci:v*d*sv*sd*bc0Csc03i40* thunderbolt\n",
    );
    if with_vcable {
        files.push(("extra/usb4vhost.ko", elf));
        dep.push_str("extra/usb4vhost.ko: kernel/fs/configfs/configfs.ko\n");
        alias.push_str("alias pci:v00001AF4d00001110sv*sd*bc*sc*i* usb4vhost\n");
    }
    files.extend_from_slice(&[
        ("modules.dep", dep.as_bytes()),
        ("modules.alias", alias.as_bytes()),
    ]);
    modtree::write_tree(&m, &files);
    // A virtio disk without its driver and the ivshmem device of the virtual cable.
    write(
        &r.join("sys/bus/virtio/devices/virtio0/modalias"),
        b"virtio:d00000002v00001AF4\n",
    );
    write(
        &r.join("sys/bus/pci/devices/0000:00:05.0/modalias"),
        b"pci:v00001AF4d00001110sv00001AF4sd00001100bc05sc00i00\n",
    );
    fs::create_dir_all(r.join("sys/block/vda")).unwrap();
    fs::create_dir_all(r.join("sys/block/loop0")).unwrap();
    if with_domain {
        // A USB4 host interface (class 0c0340) that the real driver claims.
        write(
            &r.join("sys/bus/pci/devices/0000:00:0d.2/modalias"),
            b"pci:v00008086d00009A1Bsv00001028sd00000A37bc0Csc03i40\n",
        );
    }
    t
}

fn prep(t: &tempfile::TempDir) -> (Vec<String>, String, rescue::boot::Prepared<Recorder>) {
    let mut out = Vec::new();
    let p = prepare(
        &Root::new(t.path()),
        false,
        Recorder::default(),
        &mut out,
        Duration::from_millis(50),
        Duration::from_secs(3),
    );
    let loaded = p.loader.as_ref().unwrap().sys().0.clone();
    (loaded, String::from_utf8(out).unwrap(), p)
}

#[test]
fn prepare_loads_stack_and_drivers_and_picks_vcable_in_auto() {
    let t = tree(
        "console=ttyS0 rescue.mode=backup rescue.disks=vda",
        true,
        false,
    );
    let (loaded, out, p) = prep(&t);
    // Debian's thunderbolt_stream on the virtual host, never the real thunderbolt.
    assert_eq!(
        loaded,
        vec!["configfs", "usb4vhost", "thunderbolt_stream", "virtio_blk"]
    );
    assert!(p.drivers.virtual_cable);
    assert_eq!(p.config.mode, Mode::Backup);
    assert_eq!(p.disks, vec!["vda"]);
    assert_eq!(p.hostname.as_deref(), Some("test-box-sn123"));
    assert!(
        out.contains("RESCUE: modules: configfs usb4vhost thunderbolt_stream virtio_blk"),
        "{out}"
    );
    let ready = ready_line(&Root::new(t.path()), &p);
    assert_eq!(
        ready,
        "RESCUE: ready mode=backup host=test-box-sn123 disks=vda fabric=virtual uptime=2.50s"
    );
}

#[test]
fn real_domain_or_usb4_means_no_virtual_cable() {
    let t = tree("rescue.fabric=auto", true, true);
    let (loaded, _, p) = prep(&t);
    assert_eq!(
        loaded,
        vec![
            "configfs",
            "thunderbolt",
            "thunderbolt_stream",
            "virtio_blk"
        ]
    );
    assert!(!p.drivers.virtual_cable);

    // Without the module installed, auto means the real stack.
    let t = tree("", false, false);
    let (loaded, _, _) = prep(&t);
    assert!(
        loaded.contains(&"thunderbolt_stream".to_string()),
        "{loaded:?}"
    );

    let t = tree("rescue.fabric=usb4", true, false);
    let (loaded, _, _) = prep(&t);
    assert!(!loaded.contains(&"usb4vhost".to_string()), "{loaded:?}");

    // Forced virtual without the module: a warning, not a failure.
    let t = tree("rescue.fabric=virtual rescue.hostname=hostB", false, false);
    let (_, out, p) = prep(&t);
    assert_eq!(p.config.fabric, Fabric::Virtual);
    assert!(
        out.contains(
            "RESCUE: warning: usb4vhost (standing in for thunderbolt): module usb4vhost not found"
        ),
        "{out}"
    );
    assert_eq!(p.hostname.as_deref(), Some("hostB"));
}

#[test]
fn the_virtual_host_is_never_loaded_beside_a_loaded_real_thunderbolt() {
    // The virtual cable is there and asked for, but someone loaded thunderbolt.ko.
    let t = tree("rescue.fabric=virtual", true, false);
    fs::create_dir_all(t.path().join("sys/module/thunderbolt")).unwrap();
    let (loaded, out, p) = prep(&t);
    assert!(!loaded.contains(&"usb4vhost".to_string()), "{loaded:?}");
    assert!(
        loaded.contains(&"thunderbolt_stream".to_string()),
        "{loaded:?}"
    );
    assert!(!p.drivers.virtual_cable);
    assert!(
        out.contains("the real thunderbolt module is loaded, so the virtual USB4 host usb4vhost cannot load beside it"),
        "{out}"
    );
}

/// A machine that records what the menu asked of it.
#[derive(Default)]
struct Fake {
    ran: Vec<Command>,
    rc: u8,
    powered: Vec<Power>,
    stores: Vec<String>,
    unmounted: usize,
    peer: Option<String>,
}

impl Backend for Fake {
    fn hostname(&self) -> String {
        "hostA".into()
    }
    fn disks_table(&mut self) -> String {
        "NAME SIZE\nvda  1 GiB\nvdb  2 GiB\n".into()
    }
    fn disk_names(&mut self) -> Vec<String> {
        vec!["vda".into(), "vdb".into()]
    }
    fn peer(&mut self) -> Peer {
        match &self.peer {
            Some(n) => Peer::Found {
                name: n.clone(),
                service: "0-1.0".into(),
            },
            None => Peer::Waiting,
        }
    }
    fn run(&mut self, cmd: Command) -> anyhow::Result<u8> {
        self.ran.push(cmd);
        if self.rc == 99 {
            anyhow::bail!("peer vanished");
        }
        Ok(self.rc)
    }
    fn mount_store(&mut self, spec: &str) -> anyhow::Result<PathBuf> {
        self.stores.push(spec.to_string());
        if spec == "LABEL=missing" {
            anyhow::bail!("no filesystem with label missing");
        }
        Ok(PathBuf::from("/run/rescue/store"))
    }
    fn unmount_store(&mut self) -> anyhow::Result<()> {
        self.unmounted += 1;
        Ok(())
    }
    fn power(&mut self, p: Power) -> anyhow::Result<()> {
        self.powered.push(p);
        Ok(())
    }
}

fn drive(fake: &mut Fake, cmdline: &str, input: &str) -> (u8, Ending, String) {
    let config = rescue::boot::Config::parse(cmdline);
    let mut out = Vec::new();
    let (rc, end) = after_boot(fake, &config, Cursor::new(input.to_string()), &mut out);
    (rc, end, String::from_utf8(out).unwrap())
}

#[test]
fn backup_mode_runs_reports_and_powers_off() {
    let mut f = Fake::default();
    let (rc, end, out) = drive(
        &mut f,
        "rescue.mode=backup rescue.disks=vda rescue.poweroff=1 rescue.label=x",
        "",
    );
    assert_eq!(rc, 0);
    assert_eq!(end, Ending::Power(Power::PowerOff));
    assert!(
        out.contains("RESCUE: backup finished: OK\nRESCUE: done rc=0\nRESCUE: powering off\n"),
        "{out}"
    );
    match &f.ran[..] {
        [Command::Backup(b)] => {
            assert_eq!(b.disks, vec!["vda"]);
            assert_eq!(b.label.as_deref(), Some("x"));
            assert_eq!(b.connect.wait, Some(0));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn failures_say_why_and_fall_back_to_the_menu() {
    let mut f = Fake {
        rc: 5,
        ..Default::default()
    };
    let (rc, end, out) = drive(&mut f, "rescue.mode=restore rescue.yes=1", "");
    assert_eq!(rc, 5);
    assert_eq!(end, Ending::Menu(MenuEnd::Eof));
    assert!(
        out.contains(
            "RESCUE: restore failed: the other machine went away (run again to resume) (exit 5)"
        ),
        "{out}"
    );
    assert!(out.contains("RESCUE: done rc=5"));
    assert!(out.contains("RESCUE: menu"));

    let mut f = Fake {
        rc: 99,
        ..Default::default()
    };
    let (rc, _, out) = drive(&mut f, "rescue.mode=backup", "");
    assert_eq!(rc, 1);
    assert!(
        out.contains("RESCUE: backup failed: peer vanished (exit 1)"),
        "{out}"
    );

    let mut f = Fake::default();
    let (rc, _, out) = drive(&mut f, "rescue.mode=serve rescue.store=LABEL=missing", "");
    assert_eq!(rc, 1);
    assert!(
        out.contains("RESCUE: serve failed: no filesystem with label missing"),
        "{out}"
    );
    let (rc, _, _) = drive(&mut f, "rescue.mode=serve", "");
    assert_eq!(rc, 2);
}

#[test]
fn serve_mode_mounts_the_store() {
    let mut f = Fake::default();
    let (rc, _, out) = drive(&mut f, "rescue.mode=serve rescue.store=LABEL=backups", "");
    assert_eq!(rc, 0);
    assert_eq!(f.stores, vec!["LABEL=backups"]);
    match &f.ran[..] {
        [Command::Serve(s)] => {
            assert_eq!(s.store, PathBuf::from("/run/rescue/store"));
            assert!(!s.once);
        }
        other => panic!("{other:?}"),
    }
    assert!(out.contains("RESCUE: serve finished: OK"));
}

#[test]
fn menu_backup_asks_and_confirms() {
    let mut f = Fake {
        peer: Some("hostB".into()),
        ..Default::default()
    };
    // Backup of vdb, label "old", refuse once, then accept; then refresh; then EOF.
    let (_, end, out) = drive(&mut f, "", "1\nvdb\nold\nn\n1\n\n\ny\n4\n");
    assert_eq!(end, Ending::Menu(MenuEnd::Eof));
    assert!(out.contains("cable: peer found: hostB (0-1.0)"), "{out}");
    assert!(out.contains("Send vdb to hostB? [y/N]"));
    assert!(out.contains("Cancelled."));
    match &f.ran[..] {
        [Command::Backup(b)] => {
            assert_eq!(b.disks, vec!["vda", "vdb"]);
            assert_eq!(b.label, None);
        }
        other => panic!("{other:?}"),
    }
    assert!(out.contains("RESCUE: backup finished: OK"));
    assert!(f.powered.is_empty());
}

#[test]
fn menu_unknown_disk_and_waiting_status() {
    let mut f = Fake::default();
    let (_, _, out) = drive(&mut f, "", "1\nsdz\n9\n");
    assert!(
        out.contains("plug the cable into the other machine"),
        "{out}"
    );
    assert!(out.contains("Unknown disk(s): sdz"));
    assert!(out.contains("unknown choice \"9\""));
    assert!(f.ran.is_empty());
}

#[test]
fn menu_restore_lists_then_lets_the_restore_ask_after_its_plan() {
    // rescue.yes is for the unattended mode: from the menu the restore itself
    // asks for yes once it has shown where each disk goes and what changes.
    let mut f = Fake::default();
    let (_, _, out) = drive(
        &mut f,
        "rescue.yes=1",
        "3\nq\n3\n2026-11-21T10\nvda=vdb\ny\n",
    );
    assert!(out.contains("then asks for yes"), "{out}");
    // list, list, restore
    assert_eq!(f.ran.len(), 3);
    assert!(matches!(&f.ran[0], Command::Restore(r) if r.list));
    match &f.ran[2] {
        Command::Restore(r) => {
            assert!(!r.list && !r.yes && r.verify);
            assert_eq!(r.backup.as_deref(), Some("2026-11-21T10"));
            assert_eq!(r.map, vec!["vda=vdb"]);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn unattended_restore_grows_and_a_refusal_ends_in_the_menu() {
    // A refused restore (exit 6: the partitions do not fit) says so and shows
    // the menu: init never exits.
    let mut f = Fake {
        rc: 6,
        ..Default::default()
    };
    let (rc, end, out) = drive(
        &mut f,
        "rescue.mode=restore rescue.yes=1 rescue.grow=1 rescue.map=vdb=vdb",
        "",
    );
    assert_eq!((rc, end), (6, Ending::Menu(MenuEnd::Eof)), "{out}");
    assert!(out.contains("RESCUE: done rc=6\n"), "{out}");
    assert!(out.contains("RESCUE: menu"), "{out}");
    match &f.ran[..] {
        [Command::Restore(r)] => {
            assert!(r.yes && r.grow && !r.list);
            assert_eq!(r.map, vec!["vdb=vdb"]);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_menu_offers_the_boot_lines_map_and_takes_another() {
    let mut f = Fake::default();
    // Enter keeps rescue.map; an answer replaces it; rescue.grow carries over.
    let (_, _, out) = drive(
        &mut f,
        "rescue.map=vdb=vdb rescue.grow=1",
        "3\n\n\ny\n3\n\nvdb=vda\ny\n",
    );
    assert!(out.contains("Enter = vdb=vdb)"), "{out}");
    let maps: Vec<(Vec<String>, bool)> = f
        .ran
        .iter()
        .filter_map(|c| match c {
            Command::Restore(r) if !r.list => Some((r.map.clone(), r.grow)),
            _ => None,
        })
        .collect();
    assert_eq!(
        maps,
        vec![
            (vec!["vdb=vdb".to_string()], true),
            (vec!["vdb=vda".to_string()], true)
        ]
    );
}

#[test]
fn menu_offers_to_continue_a_restore_that_was_cut() {
    // Every command "fails" with exit 5: the peer went away mid-restore.
    let mut f = Fake {
        rc: 5,
        ..Default::default()
    };
    let (_, _, out) = drive(&mut f, "", "3\n\n\nn\n3\n\n\nn\ny\n");
    assert!(
        out.contains("Continue the restore that was cut off"),
        "{out}"
    );
    let resumes: Vec<bool> = f
        .ran
        .iter()
        .filter_map(|c| match c {
            Command::Restore(r) if !r.list => Some(r.resume),
            _ => None,
        })
        .collect();
    assert_eq!(resumes, vec![false, true]);

    // The same after an unattended restore (rescue.mode=restore) was cut.
    let mut f = Fake {
        rc: 5,
        ..Default::default()
    };
    let (_, _, out) = drive(&mut f, "rescue.mode=restore rescue.yes=1", "3\n\n\nn\ny\n");
    assert!(
        out.contains("Continue the restore that was cut off"),
        "{out}"
    );
    let last = f.ran.iter().rev().find_map(|c| match c {
        Command::Restore(r) if !r.list => Some(r.resume),
        _ => None,
    });
    assert_eq!(last, Some(true));
}

#[test]
fn menu_serve_and_power() {
    let mut f = Fake::default();
    let (_, _, _) = drive(&mut f, "", "2\nLABEL=usb\n6\nn\n5\ny\n");
    assert_eq!(f.stores, vec!["LABEL=usb"]);
    match &f.ran[..] {
        [Command::Serve(s)] => assert!(s.once),
        other => panic!("{other:?}"),
    }
    assert_eq!(f.powered, vec![Power::Reboot]);
}

fn ext4_image(path: &Path, label: &str) {
    let mut b = vec![0u8; store_mount::PROBE_LEN];
    b[1024 + 0x38] = 0x53;
    b[1024 + 0x39] = 0xEF;
    b[1024 + 0x68] = 0xAB;
    b[1024 + 0x78..1024 + 0x78 + label.len()].copy_from_slice(label.as_bytes());
    write(path, &b);
}

fn fat32_image(path: &Path, label: &str) {
    let mut b = vec![0u8; 4096];
    b[0x52..0x5a].copy_from_slice(b"FAT32   ");
    b[0x42] = 0x29;
    b[0x43..0x47].copy_from_slice(&[0x34, 0x12, 0xCD, 0xAB]);
    let mut l = [b' '; 11];
    l[..label.len()].copy_from_slice(label.as_bytes());
    b[0x47..0x52].copy_from_slice(&l);
    b[510] = 0x55;
    b[511] = 0xAA;
    write(path, &b);
}

#[test]
fn store_found_by_label_uuid_and_path() {
    let t = tempfile::tempdir().unwrap();
    let r = t.path();
    for n in ["vda", "vda1", "vdb", "vdb1"] {
        fs::create_dir_all(r.join("sys/class/block").join(n)).unwrap();
    }
    write(&r.join("dev/vda"), &[0u8; 8192]);
    ext4_image(&r.join("dev/vda1"), "backups");
    write(&r.join("dev/vdb"), &[0u8; 100]);
    fat32_image(&r.join("dev/vdb1"), "RESCUE");
    let root = Root::new(r);

    let f = store_mount::find(&root, "LABEL=backups").unwrap();
    assert_eq!(f.name, "/dev/vda1");
    assert_eq!(f.fs.fstype, "ext4");
    let f = store_mount::find(&root, "LABEL=RESCUE").unwrap();
    assert_eq!((f.name.as_str(), f.fs.fstype), ("/dev/vdb1", "vfat"));
    let f = store_mount::find(&root, "UUID=abcd-1234").unwrap();
    assert_eq!(f.name, "/dev/vdb1");
    let f = store_mount::find(&root, "/dev/vda1").unwrap();
    assert_eq!(f.fs.label.as_deref(), Some("backups"));
    let e = format!("{:#}", store_mount::find(&root, "LABEL=nope").unwrap_err());
    assert!(e.contains("/dev/vda1 (ext4 label=backups"), "{e}");
    assert!(store_mount::find(&root, "/dev/vda").is_err());
    assert!(store_mount::find(&root, "backups").is_err());

    // Mounting on a fake root only resolves and prepares the directory.
    let mut asked = Vec::new();
    let dir = store_mount::mount_store(&root, "LABEL=RESCUE", &mut |t| asked.push(t.to_string()))
        .unwrap();
    assert_eq!(dir, r.join("run/rescue/store"));
    assert!(dir.is_dir());
    assert_eq!(asked, vec!["vfat"]);
}

#[test]
fn system_backend_reads_peer_and_identity_from_the_bus() {
    use rescue::boot::machine::System;
    use rescue::boot::modload::DryRun;
    let t = tempfile::tempdir().unwrap();
    let r = t.path();
    let dev = r.join("sys/bus/thunderbolt/devices");
    let root = Root::new(r);
    let mut sys: System<DryRun> = System::new(root.clone(), None, None);
    assert!(matches!(sys.peer(), Peer::NoFabric(_)));
    fs::create_dir_all(dev.join("domain0")).unwrap();
    write(
        &dev.join("0-0/unique_id"),
        b"11111111-2222-3333-4444-555555555555\n",
    );
    assert_eq!(sys.peer(), Peer::Waiting);
    assert_eq!(
        sys.identity().as_deref(),
        Some("USB4 host 11111111-2222-3333-4444-555555555555 (domain0)")
    );
    write(&dev.join("0-1/device_name"), b"hostB\n");
    write(&dev.join("0-1/maxhopid"), b"15\n");
    write(&dev.join("0-1.0/key"), b"stream\n");
    write(&dev.join("0-1.0/prtcid"), b"1\n");
    assert_eq!(
        sys.peer(),
        Peer::Found {
            name: "hostB".into(),
            service: "0-1.0".into()
        }
    );
    // Power actions refuse on anything but the real root as PID 1.
    assert!(sys.power(Power::Reboot).is_err());
}

/// The dracut hook's flow through the fake backend.
fn hook_drive(fake: &mut Fake, cmdline: &str, input: &str) -> (u8, String) {
    let config = rescue::boot::Config::parse(cmdline);
    assert!(hook::wanted(&config).is_ok(), "{cmdline}");
    let mut out = Vec::new();
    let rc = hook::run(fake, &config, Cursor::new(input.to_string()), &mut out);
    (rc, String::from_utf8(out).unwrap())
}

#[test]
fn dracut_hook_serves_one_session_unmounts_and_goes_on() {
    let mut f = Fake::default();
    let (rc, out) = hook_drive(
        &mut f,
        "root=/dev/vda rd.usb4rescue=serve rd.usb4rescue.store=LABEL=backups",
        "",
    );
    assert_eq!(rc, 0);
    assert_eq!(f.stores, vec!["LABEL=backups"]);
    assert_eq!(f.unmounted, 1);
    match &f.ran[..] {
        // The boot goes on afterwards: one session, and serve's own wait.
        [Command::Serve(s)] => assert!(s.once && s.connect.wait.is_none(), "{s:?}"),
        other => panic!("{other:?}"),
    }
    assert!(
        out.starts_with("usb4rescue: serve started\nRESCUE: serve started\n"),
        "{out}"
    );
    assert!(out.ends_with("usb4rescue: serve finished rc=0\n"), "{out}");
    // No menu after the mode, no power action unless asked.
    assert!(
        !out.contains("RESCUE: menu") && f.powered.is_empty(),
        "{out}"
    );
}

#[test]
fn dracut_hook_passes_every_option_and_powers_off_when_asked() {
    let mut f = Fake {
        rc: 5,
        ..Default::default()
    };
    let (rc, out) = hook_drive(
        &mut f,
        "rd.usb4rescue=restore rd.usb4rescue.yes=1 rd.usb4rescue.resume=1 \
         rd.usb4rescue.map=vda=vdb rd.usb4rescue.wait=120 rd.usb4rescue.poweroff=1",
        "",
    );
    assert_eq!(rc, 5);
    match &f.ran[..] {
        [Command::Restore(r)] => {
            assert!(r.yes && r.resume, "{r:?}");
            assert_eq!(r.map, vec!["vda=vdb"]);
            assert_eq!(r.connect.wait, Some(120));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(f.powered, vec![Power::PowerOff]);
    assert!(
        out.contains("usb4rescue: restore finished rc=5\nusb4rescue: powering off\n"),
        "{out}"
    );
    assert_eq!(f.unmounted, 0);
}

#[test]
fn dracut_hook_menu_returns_when_its_input_ends() {
    let mut f = Fake::default();
    let (rc, out) = hook_drive(&mut f, "rd.usb4rescue", "4\n");
    assert_eq!(rc, 0);
    assert!(f.ran.is_empty() && f.powered.is_empty());
    assert_eq!(out.matches("RESCUE: menu\n").count(), 2, "{out}");
    assert!(out.ends_with("usb4rescue: menu finished rc=0\n"), "{out}");
}

#[test]
fn dracut_hook_runs_only_when_asked() {
    let why = |s: &str| hook::wanted(&rescue::boot::Config::parse(s));
    assert_eq!(why("rd.usb4rescue=off"), Err((0, String::new())));
    assert!(matches!(why("quiet"), Err((0, w)) if w.contains("no rd.usb4rescue")));
    assert!(matches!(why("rd.usb4rescue=dance"), Err((2, w)) if w.contains("unknown")));
}

#[test]
fn dracut_hook_loads_only_the_stack_and_keeps_the_hostname() {
    // udev has loaded the hardware's drivers: virtio_blk stays to it.
    let prep = |t: &tempfile::TempDir| {
        let mut out = Vec::new();
        let root = Root::new(t.path());
        hook::prepare(&root, Recorder::default(), &mut out, Duration::from_secs(3))
    };
    let t = tree(
        "rd.usb4rescue=backup rd.usb4rescue.fabric=virtual",
        true,
        false,
    );
    let p = prep(&t);
    assert_eq!(
        p.loader.as_ref().unwrap().sys().0,
        vec!["configfs", "usb4vhost", "thunderbolt_stream"]
    );
    assert_eq!(p.config.mode, Mode::Backup);
    assert_eq!(p.hostname, None);
    assert_eq!(p.disks, vec!["vda"]);
    let t = tree(
        "rd.usb4rescue=backup rd.usb4rescue.hostname=hostA",
        false,
        true,
    );
    let p = prep(&t);
    assert_eq!(
        p.loader.as_ref().unwrap().sys().0,
        vec!["configfs", "thunderbolt", "thunderbolt_stream"]
    );
    assert_eq!(p.hostname.as_deref(), Some("hostA"));
}

/// `rescue init --dracut` on a fake root, as the dracut module's shell runs it.
fn rescue_init(root: &Path, args: &[&str]) -> (Option<i32>, String) {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_rescue"))
        .arg("--root")
        .arg(root)
        .arg("init")
        .args(args)
        .env("RESCUE_PLAIN", "1")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.code(), text)
}

#[test]
fn dracut_command_reads_the_kernel_command_line() {
    let t = tree("root=/dev/vda rd.usb4rescue=dance", false, false);
    let (rc, out) = rescue_init(t.path(), &["--dracut"]);
    assert_eq!(rc, Some(2), "{out}");
    assert!(out.contains("unknown rd.usb4rescue mode"), "{out}");
    assert!(!out.contains("started"), "{out}");

    // A backup on a fake root without ConfigFS: it runs, fails clearly, and returns.
    let t = tree(
        "rd.usb4rescue=backup rd.usb4rescue.disks=vda rd.usb4rescue.wait=1",
        false,
        false,
    );
    let (rc, out) = rescue_init(t.path(), &["--dracut"]);
    assert_eq!(rc, Some(1), "{out}");
    assert!(out.contains("usb4rescue: backup started\n"), "{out}");
    assert!(out.contains("RESCUE: backup failed: "), "{out}");
    assert!(out.contains("usb4rescue: backup finished rc=1\n"), "{out}");

    let (rc, out) = rescue_init(t.path(), &["--stack-modules"]);
    assert_eq!(rc, Some(0), "{out}");
    assert_eq!(out, "configfs\nthunderbolt\nthunderbolt_stream\n");
}
