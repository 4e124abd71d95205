//! The module loader against a fake /lib/modules and /sys tree, with the syscall
//! replaced by a recorder: order, decompressed bytes, built-in and loaded handling.

#![allow(clippy::unwrap_used)]
use std::ffi::CStr;
use std::fs::{self, File};
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use nix::errno::Errno;
use rescue::Root;
use rescue::boot::modload::{Loader, ModuleSys, Outcome, wait_for_disks};

const REL: &str = "7.3.4-test";

#[derive(Default)]
struct Recorder {
    loaded: Vec<(String, Vec<u8>, String)>,
    compressed: Vec<String>,
    fail: Vec<(String, Errno)>,
}

impl ModuleSys for Recorder {
    fn init_module(&mut self, name: &str, image: &[u8], params: &CStr) -> Result<(), Errno> {
        if let Some((_, e)) = self.fail.iter().find(|(n, _)| n == name) {
            return Err(*e);
        }
        self.loaded.push((
            name.to_string(),
            image.to_vec(),
            params.to_string_lossy().into_owned(),
        ));
        Ok(())
    }

    fn finit_compressed(&mut self, name: &str, _f: &File, _p: &CStr) -> Result<(), Errno> {
        self.compressed.push(name.to_string());
        Ok(())
    }
}

fn write(path: &Path, bytes: &[u8]) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, bytes).unwrap();
}

fn xz(bytes: &[u8]) -> Vec<u8> {
    let mut e = xz2::write::XzEncoder::new_stream(
        Vec::new(),
        xz2::stream::Stream::new_easy_encoder(6, xz2::stream::Check::Crc32).unwrap(),
    );
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn body(name: &str) -> Vec<u8> {
    format!("\x7fELF fake module {name}").into_bytes()
}

/// A tree with thunderbolt_stream -> thunderbolt -> configfs (xz), usb-storage (gz)
/// -> usbcore (plain), ext4 built in, nvme (alias-matched), a zstd module and a
/// GPU driver the alias filter must skip.
fn fixture() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    let r = t.path();
    let m = r.join(format!("lib/modules/{REL}"));
    write(
        &r.join("proc/sys/kernel/osrelease"),
        format!("{REL}\n").as_bytes(),
    );
    write(
        &r.join("proc/cmdline"),
        b"console=ttyS0 thunderbolt.xdomain=1 rescue.mode=menu\n",
    );
    write(
        &m.join("kernel/drivers/thunderbolt/thunderbolt_stream.ko.xz"),
        &xz(&body("thunderbolt_stream")),
    );
    write(
        &m.join("kernel/drivers/thunderbolt/thunderbolt.ko.xz"),
        &xz(&body("thunderbolt")),
    );
    write(
        &m.join("kernel/fs/configfs/configfs.ko.xz"),
        &xz(&body("configfs")),
    );
    write(
        &m.join("kernel/drivers/usb/storage/usb-storage.ko.gz"),
        &gz(&body("usb_storage")),
    );
    write(
        &m.join("kernel/drivers/usb/core/usbcore.ko"),
        &body("usbcore"),
    );
    write(
        &m.join("kernel/drivers/nvme/host/nvme.ko.xz"),
        &xz(&body("nvme")),
    );
    write(
        &m.join("kernel/drivers/nvme/host/nvme-core.ko.xz"),
        &xz(&body("nvme_core")),
    );
    write(&m.join("kernel/fs/fat/vfat.ko.zst"), b"(zstd)");
    write(
        &m.join("kernel/drivers/gpu/drm/i915/i915.ko.xz"),
        &xz(&body("i915")),
    );
    write(
        &m.join("kernel/lib/crc32c_generic.ko"),
        &body("crc32c_generic"),
    );
    write(
        &m.join("modules.dep"),
        b"kernel/drivers/thunderbolt/thunderbolt_stream.ko.xz: kernel/drivers/thunderbolt/thunderbolt.ko.xz kernel/fs/configfs/configfs.ko.xz\n\
kernel/drivers/thunderbolt/thunderbolt.ko.xz: kernel/fs/configfs/configfs.ko.xz\n\
kernel/fs/configfs/configfs.ko.xz:\n\
kernel/drivers/usb/storage/usb-storage.ko.gz: kernel/drivers/usb/core/usbcore.ko\n\
kernel/drivers/usb/core/usbcore.ko:\n\
kernel/drivers/nvme/host/nvme.ko.xz: kernel/drivers/nvme/host/nvme-core.ko.xz\n\
kernel/drivers/nvme/host/nvme-core.ko.xz: kernel/lib/crc32c_generic.ko\n\
kernel/lib/crc32c_generic.ko:\n\
kernel/fs/fat/vfat.ko.zst:\n\
kernel/drivers/gpu/drm/i915/i915.ko.xz:\n",
    );
    write(
        &m.join("modules.alias"),
        b"# Aliases extracted from modules themselves.\n\
alias pci:v*d*sv*sd*bc01sc08i02* nvme\n\
alias pci:v00008086d*sv*sd*bc03sc*i* i915\n\
alias usb:v*p*d*dc*dsc*dp*ic08isc06ip50in* usb_storage\n\
alias fs-vfat vfat\n\
alias fs-ext4 ext4\n",
    );
    write(&m.join("modules.builtin"), b"kernel/fs/ext4/ext4.ko\n");
    write(
        &m.join("modules.softdep"),
        b"# Soft dependencies\nsoftdep nvme_core pre: crc32c_generic missing-mod\n",
    );
    // Devices: an NVMe controller without a driver, a GPU, an already-bound disk.
    let dev = |path: &str, alias: &str| write(&r.join(path).join("modalias"), alias.as_bytes());
    dev(
        "sys/bus/pci/devices/0000:00:04.0",
        "pci:v00001B36d00000010sv00001AF4sd00001100bc01sc08i02\n",
    );
    dev(
        "sys/bus/pci/devices/0000:00:02.0",
        "pci:v00008086d00001234sv00000000sd00000000bc03sc00i00\n",
    );
    dev(
        "sys/bus/usb/devices/1-1:1.0",
        "usb:v0781p5581d0100dc00dsc00dp00ic08isc06ip50in00\n",
    );
    fs::create_dir_all(r.join("sys/bus/usb/devices/1-1:1.0/driver")).unwrap();
    t
}

fn loader(t: &tempfile::TempDir) -> Loader<Recorder> {
    Loader::with_sys(&Root::new(t.path()), None, Recorder::default()).unwrap()
}

#[test]
fn loads_dependency_closure_in_order_decompressed() {
    let t = fixture();
    let mut l = loader(&t);
    assert_eq!(l.release(), REL);
    let r = l.load("thunderbolt-stream").unwrap();
    assert_eq!(r.module, "thunderbolt_stream");
    assert_eq!(
        r.loaded(),
        vec!["configfs", "thunderbolt", "thunderbolt_stream"]
    );
    let rec = &l.sys().loaded;
    assert_eq!(rec[0].1, body("configfs"));
    assert_eq!(rec[2].1, body("thunderbolt_stream"));
    // Parameters from the kernel command line go to their module only.
    assert_eq!(rec[1].2, "xdomain=1");
    assert_eq!(rec[0].2, "");

    // A second request loads nothing again.
    let r = l.load("thunderbolt").unwrap();
    assert!(r.loaded().is_empty());
    assert_eq!(l.sys().loaded.len(), 3);
}

#[test]
fn a_stand_in_loads_instead_of_the_module_it_replaces() {
    // The virtual USB4 host exports thunderbolt.ko's symbols: Debian's own
    // thunderbolt_stream (modules.dep: needs thunderbolt) loads on top of it.
    let t = fixture();
    let m = t.path().join(format!("lib/modules/{REL}"));
    write(&m.join("extra/usb4vhost.ko"), &body("usb4vhost"));
    let dep = fs::read_to_string(m.join("modules.dep")).unwrap();
    fs::write(
        m.join("modules.dep"),
        format!("{dep}extra/usb4vhost.ko: kernel/fs/configfs/configfs.ko.xz\n"),
    )
    .unwrap();
    let mut l = loader(&t);
    l.stand_in("thunderbolt", "usb4vhost");
    let r = l.load("thunderbolt_stream").unwrap();
    assert_eq!(
        r.loaded(),
        vec!["configfs", "usb4vhost", "thunderbolt_stream"]
    );
    assert_eq!(l.sys().loaded[1].1, body("usb4vhost"));
    // Asked for by name, `thunderbolt` is the stand-in, already in.
    assert!(l.is_present("thunderbolt"));
    assert!(l.load("thunderbolt").unwrap().loaded().is_empty());
    let names: Vec<&str> = l.sys().loaded.iter().map(|x| x.0.as_str()).collect();
    assert!(!names.contains(&"thunderbolt"), "{names:?}");
}

#[test]
fn gzip_plain_and_softdeps() {
    let t = fixture();
    let mut l = loader(&t);
    let r = l.load("usb-storage").unwrap();
    assert_eq!(r.loaded(), vec!["usbcore", "usb_storage"]);
    assert_eq!(l.sys().loaded[1].1, body("usb_storage"));

    let r = l.load("nvme").unwrap();
    assert_eq!(r.loaded(), vec!["crc32c_generic", "nvme_core", "nvme"]);
    // The missing softdep is not an error.
    assert!(r.warnings.is_empty());
}

#[test]
fn builtin_loaded_and_aliases() {
    let t = fixture();
    fs::create_dir_all(t.path().join("sys/module/configfs")).unwrap();
    let mut l = loader(&t);
    let r = l.load("ext4").unwrap();
    assert_eq!(r.steps, vec![("ext4".to_string(), Outcome::Builtin)]);
    let r = l.load("fs-ext4").unwrap();
    assert_eq!(r.steps[0].1, Outcome::Builtin);
    let r = l.load("thunderbolt").unwrap();
    assert_eq!(
        r.steps,
        vec![
            ("configfs".to_string(), Outcome::AlreadyLoaded),
            ("thunderbolt".to_string(), Outcome::Loaded)
        ]
    );
    // fs-vfat -> vfat.ko.zst goes to the kernel as a compressed file.
    l.load("fs-vfat").unwrap();
    assert_eq!(l.sys().compressed, vec!["vfat"]);
    assert!(l.load("no-such-module").is_err());
}

#[test]
fn eexist_counts_as_loaded_and_errors_name_the_dependency() {
    let t = fixture();
    let mut l = Loader::with_sys(
        &Root::new(t.path()),
        None,
        Recorder {
            fail: vec![
                ("configfs".into(), Errno::EEXIST),
                ("usbcore".into(), Errno::ENOEXEC),
            ],
            ..Default::default()
        },
    )
    .unwrap();
    let r = l.load("thunderbolt_stream").unwrap();
    assert_eq!(r.steps[0].1, Outcome::AlreadyLoaded);
    let e = format!("{:#}", l.load("usb_storage").unwrap_err());
    assert!(e.contains("usbcore"), "{e}");
    assert!(e.contains("dependency of usb_storage"), "{e}");
}

#[test]
fn modaliases_load_only_unbound_rescue_drivers() {
    let t = fixture();
    let mut l = loader(&t);
    let loaded = l.load_for_modaliases().unwrap();
    // nvme matches the unbound NVMe device; i915 is filtered out; the USB disk
    // already has a driver.
    assert_eq!(loaded, vec!["nvme"]);
    let names: Vec<&str> = l.sys().loaded.iter().map(|x| x.0.as_str()).collect();
    assert_eq!(names, vec!["crc32c_generic", "nvme_core", "nvme"]);
    assert!(l.failures().is_empty());

    // Nothing new on a second round.
    assert!(l.load_for_modaliases().unwrap().is_empty());
}

#[test]
fn settle_returns_when_sys_block_is_quiet() {
    let t = fixture();
    fs::create_dir_all(t.path().join("sys/block/vda")).unwrap();
    let s = wait_for_disks(&Root::new(t.path()), Duration::from_secs(5));
    assert!(s.stable);
    assert_eq!(s.names, vec!["vda"]);
    // Empty or missing /sys/block also settles.
    let s = wait_for_disks(&Root::new(t.path().join("nowhere")), Duration::from_secs(5));
    assert!(s.stable && s.names.is_empty());
}
