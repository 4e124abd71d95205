//! Builds images from a fake kernel directory and checks them: determinism, the
//! module closure and index filtering, modes and owners, xz CRC32, and parse-back;
//! and `image pack`'s: the load order (dependencies first, built-in modules left
//! out), an out-of-tree module's dependencies and kernel check, files and links;
//! `image cat`.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use rescue_image::list::xz_check;
use rescue_image::newc::{ReadEntry, parse};
use rescue_image::{Compress, Options, PackOptions, build, pack, read_image};

#[path = "../../bootfacts/tests/support/modtree.rs"]
mod modtree;
use modtree::write;

const KVER: &str = "7.3.4-fake";

fn xz(bytes: &[u8]) -> Vec<u8> {
    let mut e = xz2::write::XzEncoder::new(Vec::new(), 6);
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// A kernel dir with the USB4 stack, a storage driver with a dependency, a built-in
/// module, a softdep and an unrelated module that must stay out.
fn fake_kernel(dir: &Path) -> PathBuf {
    let m = dir.join("lib/modules").join(KVER);
    let modules: Vec<(&str, Vec<u8>)> = [
        ("kernel/fs/configfs/configfs.ko.xz", "configfs"),
        (
            "kernel/drivers/thunderbolt/thunderbolt.ko.xz",
            "thunderbolt",
        ),
        ("kernel/drivers/thunderbolt/thunderbolt_stream.ko.xz", "tbs"),
        ("kernel/drivers/nvme/host/nvme.ko.xz", "nvme"),
        ("kernel/drivers/nvme/host/nvme-core.ko.xz", "nvme_core"),
        ("kernel/lib/crc32c_generic.ko.xz", "crc"),
        ("kernel/drivers/gpu/drm/i915/i915.ko.xz", "i915"),
    ]
    .into_iter()
    .map(|(rel, body)| (rel, xz(body.as_bytes())))
    .collect();
    let mut files: Vec<(&str, &[u8])> = modules.iter().map(|(r, b)| (*r, b.as_slice())).collect();
    files.extend_from_slice(&[
        (
            "modules.dep",
            b"kernel/drivers/gpu/drm/i915/i915.ko.xz:\n\
kernel/fs/configfs/configfs.ko.xz:\n\
kernel/drivers/thunderbolt/thunderbolt.ko.xz: kernel/fs/configfs/configfs.ko.xz\n\
kernel/drivers/thunderbolt/thunderbolt_stream.ko.xz: kernel/drivers/thunderbolt/thunderbolt.ko.xz kernel/fs/configfs/configfs.ko.xz\n\
kernel/drivers/nvme/host/nvme.ko.xz: kernel/drivers/nvme/host/nvme-core.ko.xz\n\
kernel/drivers/nvme/host/nvme-core.ko.xz:\n\
kernel/lib/crc32c_generic.ko.xz:\n".as_slice(),
        ),
        (
            "modules.alias",
            b"alias pci:v*d*sv*sd*bc01sc08i02* nvme\nalias pci:v00008086d*sv*sd*bc03sc*i* i915\n".as_slice(),
        ),
        ("modules.builtin", b"kernel/drivers/virtio/virtio_pci.ko\n".as_slice()),
        (
            "modules.softdep",
            b"softdep nvme_core pre: crc32c_generic\nsoftdep i915 pre: foo\n".as_slice(),
        ),
    ]);
    modtree::write_tree(&m, &files);
    write(&dir.join("vmlinuz"), b"kernel");
    dir.to_path_buf()
}

/// An out-of-tree module with a .modinfo-like string table (the virtual USB4 host).
fn fake_extra(dir: &Path) -> PathBuf {
    let p = dir.join("usb4vhost.ko");
    write(
        &p,
        b"\x7fELF....\0name=usb4vhost\0depends=configfs\0alias=pci:v00001AF4d00001110sv*sd*bc*sc*i*\0vermagic=7.3.4 SMP\0",
    );
    p
}

fn opts(t: &Path, compress: Compress) -> Options {
    let rescue = t.join("rescue");
    write(&rescue, b"\x7fELF static rescue");
    Options {
        kernel_dir: fake_kernel(&t.join("k")),
        kver: None,
        rescue,
        extra_modules: vec![fake_extra(t)],
        modules: vec![],
        compress,
        mtime: 1_700_000_000,
    }
}

#[test]
fn builds_deterministic_xz_with_crc32_and_the_closure() {
    let t = tempfile::tempdir().unwrap();
    let o = opts(t.path(), Compress::Xz);
    let a = t.path().join("a.img");
    let b = t.path().join("b.img");
    let s = build(&o, &a).unwrap();
    build(&o, &b).unwrap();
    assert_eq!(
        fs::read(&a).unwrap(),
        fs::read(&b).unwrap(),
        "not reproducible"
    );
    assert_eq!(xz_check(&fs::read(&a).unwrap()), Some("CRC32"));

    assert_eq!(s.kver, KVER);
    assert_eq!(
        s.modules,
        vec![
            "configfs",
            "crc32c_generic",
            "nvme",
            "nvme_core",
            "thunderbolt",
            "thunderbolt_stream",
            "usb4vhost"
        ]
    );
    assert!(s.builtin.contains(&"virtio_pci".to_string()));

    let l = read_image(&a).unwrap();
    assert_eq!(l.compression, "xz");
    let get = |p: &str| {
        l.entries
            .iter()
            .find(|e| e.path == p)
            .unwrap_or_else(|| panic!("{p}"))
    };
    let init = get("init");
    assert_eq!(init.mode, 0o100755);
    assert_eq!(init.data, b"\x7fELF static rescue");
    assert_eq!(get("bin/rescue").data, b"/init");
    assert_eq!(get("dev/console").rdev, (5, 1));
    assert_eq!(get("dev/console").mode, 0o020600);
    assert_eq!(get("tmp").mode, 0o041777);
    for d in ["proc", "sys", "run", "dev"] {
        assert!(get(d).is_dir());
    }
    for e in &l.entries {
        assert_eq!((e.uid, e.gid, e.mtime), (0, 0, 1_700_000_000), "{}", e.path);
    }
    // Parents precede children (the kernel does not create directories itself).
    for (i, e) in l.entries.iter().enumerate() {
        if let Some((parent, _)) = e.path.rsplit_once('/') {
            assert!(
                l.entries[..i].iter().any(|p| p.path == parent),
                "{}",
                e.path
            );
        }
    }
    // Inode numbers are unique.
    let mut inos: Vec<u32> = l.entries.iter().map(|e| e.ino).collect();
    inos.sort();
    inos.dedup();
    assert_eq!(inos.len(), l.entries.len());

    // Modules keep their compression; the unrelated one stays out.
    let base = format!("lib/modules/{KVER}");
    let tbs = get(&format!(
        "{base}/kernel/drivers/thunderbolt/thunderbolt_stream.ko.xz"
    ));
    assert!(tbs.data.starts_with(b"\xfd7zXZ"));
    // Byte for byte the kernel package's file (VM tests load Debian's own driver).
    let packaged = fs::read(o.kernel_dir.join(format!(
        "{base}/kernel/drivers/thunderbolt/thunderbolt_stream.ko.xz"
    )))
    .unwrap();
    assert_eq!(tbs.data, packaged);
    assert!(!l.entries.iter().any(|e| e.path.contains("i915")));
    assert!(
        get(&format!("{base}/extra/usb4vhost.ko"))
            .data
            .starts_with(b"\x7fELF")
    );

    let dep = String::from_utf8(get(&format!("{base}/modules.dep")).data.clone()).unwrap();
    assert!(!dep.contains("i915"));
    assert!(dep.contains(
        "kernel/drivers/thunderbolt/thunderbolt_stream.ko.xz: kernel/drivers/thunderbolt/thunderbolt.ko.xz kernel/fs/configfs/configfs.ko.xz\n"
    ));
    assert!(dep.contains("extra/usb4vhost.ko: kernel/fs/configfs/configfs.ko.xz\n"));
    assert!(dep.contains("kernel/fs/configfs/configfs.ko.xz:\n"));
    let alias = String::from_utf8(get(&format!("{base}/modules.alias")).data.clone()).unwrap();
    assert_eq!(
        alias,
        "alias pci:v*d*sv*sd*bc01sc08i02* nvme\nalias pci:v00001AF4d00001110sv*sd*bc*sc*i* usb4vhost\n"
    );
    let softdep = String::from_utf8(get(&format!("{base}/modules.softdep")).data.clone()).unwrap();
    assert_eq!(softdep, "softdep nvme_core pre: crc32c_generic\n");
    assert!(
        get(&format!("{base}/modules.builtin"))
            .data
            .starts_with(b"kernel/drivers/virtio")
    );
}

#[test]
fn gzip_and_source_date_epoch_change_only_what_they_should() {
    let t = tempfile::tempdir().unwrap();
    let mut o = opts(t.path(), Compress::Gzip);
    let a = t.path().join("a.img");
    build(&o, &a).unwrap();
    let l = read_image(&a).unwrap();
    assert_eq!(l.compression, "gzip");
    assert!(l.xz_check.is_none());
    o.mtime = 0;
    let b = t.path().join("b.img");
    build(&o, &b).unwrap();
    let lb = read_image(&b).unwrap();
    assert!(lb.entries.iter().all(|e| e.mtime == 0));
    assert_eq!(l.entries.len(), lb.entries.len());
}

#[test]
fn several_kernels_need_kver() {
    let t = tempfile::tempdir().unwrap();
    let mut o = opts(t.path(), Compress::None);
    let other = o.kernel_dir.join("lib/modules/6.1.0/modules.dep");
    write(&other, b"");
    let e = build(&o, &t.path().join("x.img")).unwrap_err();
    assert!(format!("{e:#}").contains("--kver"));
    o.kver = Some(KVER.into());
    build(&o, &t.path().join("x.img")).unwrap();
    let l = read_image(&t.path().join("x.img")).unwrap();
    assert_eq!(l.compression, "none");
}

/// thunderbolt_stream needs thunderbolt and configfs, thunderbolt needs configfs;
/// virtio_pci is built in; nvme-core (a dash in its file name) is plain .ko.
fn pack_kernel(dir: &Path) -> PathBuf {
    let m = dir.join("lib/modules").join(KVER);
    let tb = xz(b"tb");
    let tbs = xz(b"tbs");
    let cfs = xz(b"configfs");
    modtree::write_tree(
        &m,
        &[
            ("kernel/drivers/thunderbolt/thunderbolt.ko.xz", &tb),
            ("kernel/drivers/thunderbolt/thunderbolt_stream.ko.xz", &tbs),
            ("kernel/fs/configfs/configfs.ko.xz", &cfs),
            ("kernel/drivers/nvme/host/nvme-core.ko", b"nvme core"),
            (
                "modules.dep",
                b"kernel/drivers/thunderbolt/thunderbolt_stream.ko.xz: kernel/drivers/thunderbolt/thunderbolt.ko.xz kernel/fs/configfs/configfs.ko.xz\n\
kernel/drivers/thunderbolt/thunderbolt.ko.xz: kernel/fs/configfs/configfs.ko.xz\n\
kernel/fs/configfs/configfs.ko.xz:\n\
kernel/drivers/nvme/host/nvme-core.ko:\n",
            ),
            ("modules.builtin", b"kernel/drivers/virtio/virtio_pci.ko\n"),
        ],
    );
    dir.to_path_buf()
}

fn vhost(dir: &Path, vermagic: &str) -> PathBuf {
    let p = dir.join("usb4vhost.ko");
    let body =
        format!("\x7fELF\0name=usb4vhost\0depends=thunderbolt,virtio_pci\0vermagic={vermagic}\0");
    write(&p, body.as_bytes());
    p
}

fn packed_file<'a>(entries: &'a [ReadEntry], path: &str) -> &'a ReadEntry {
    entries
        .iter()
        .find(|e| e.path == path)
        .unwrap_or_else(|| panic!("{path} not packed"))
}

#[test]
fn packs_modules_in_load_order_with_files_and_links() {
    let t = tempfile::tempdir().unwrap();
    let init = t.path().join("init");
    write(&init, b"#!/bin/sh\n");
    let opts = PackOptions {
        kernel_dir: Some(pack_kernel(&t.path().join("k"))),
        load: vec![
            "thunderbolt_stream".into(),
            "nvme_core".into(),
            "virtio-pci".into(),
        ],
        load_ko: vec![vhost(t.path(), &format!("{KVER} SMP preempt"))],
        dirs: vec!["proc".into(), "usr/bin".into()],
        files: vec![
            (init.clone(), "init".into(), 0o755),
            (init, "lib/vmlib.sh".into(), 0o644),
        ],
        symlinks: vec![("bin/sh".into(), "busybox".into())],
        ..Default::default()
    };
    let (a, p) = pack(&opts).unwrap();
    assert_eq!(
        p.modules,
        [
            "configfs",
            "thunderbolt",
            "thunderbolt_stream",
            "nvme-core",
            "usb4vhost"
        ]
    );
    assert_eq!(p.builtin, ["virtio_pci"]);
    let bytes = a.to_newc(0);
    assert_eq!(bytes, pack(&opts).unwrap().0.to_newc(0), "not reproducible");
    let e = parse(&bytes).unwrap();
    assert_eq!(
        packed_file(&e, "lib/modules/load.list").data,
        b"configfs\nthunderbolt\nthunderbolt_stream\nnvme-core\nusb4vhost\n"
    );
    assert_eq!(
        packed_file(&e, "lib/modules/thunderbolt_stream.ko").data,
        b"tbs"
    );
    assert_eq!(
        packed_file(&e, "lib/modules/nvme-core.ko").data,
        b"nvme core"
    );
    assert!(
        packed_file(&e, "lib/modules/usb4vhost.ko")
            .data
            .starts_with(b"\x7fELF")
    );
    assert_eq!(packed_file(&e, "init").mode, 0o100755);
    assert_eq!(packed_file(&e, "lib/vmlib.sh").mode, 0o100644);
    assert_eq!(packed_file(&e, "bin/sh").data, b"busybox");
    assert!(packed_file(&e, "bin/sh").is_symlink());
    assert!(packed_file(&e, "usr/bin").is_dir());
    assert_eq!(packed_file(&e, "dev/console").rdev, (5, 1));
    assert_eq!(packed_file(&e, "dev/null").mode, 0o020666);
    assert!(e.iter().all(|x| x.uid == 0 && x.gid == 0 && x.mtime == 0));
}

#[test]
fn refuses_what_the_kernel_could_not_load() {
    let t = tempfile::tempdir().unwrap();
    let kernel_dir = Some(pack_kernel(&t.path().join("k")));
    let other = PackOptions {
        kernel_dir: kernel_dir.clone(),
        load_ko: vec![vhost(t.path(), "6.1.0 SMP")],
        ..Default::default()
    };
    let e = pack(&other).unwrap_err().to_string();
    assert!(
        e.contains("built for kernel 6.1.0") && e.contains(KVER),
        "{e}"
    );
    let missing = PackOptions {
        kernel_dir,
        load: vec!["ext4".into()],
        ..Default::default()
    };
    let e = pack(&missing).unwrap_err().to_string();
    assert!(e.contains("module ext4 not found"), "{e}");
    let no_kernel = PackOptions {
        load: vec!["ext4".into()],
        ..Default::default()
    };
    assert!(
        pack(&no_kernel)
            .unwrap_err()
            .to_string()
            .contains("--kernel-dir")
    );
}

/// `image cat`, what the test rigs read modules and images through: a member of an
/// xz image as archived, a module decompressed, and clear refusals.
#[test]
fn cat_prints_members_and_modules() {
    let t = tempfile::tempdir().unwrap();
    let o = opts(t.path(), Compress::Xz);
    let img = t.path().join("a.img");
    build(&o, &img).unwrap();
    let cat = |args: &[&Path]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_image"))
            .arg("cat")
            .args(args)
            .output()
            .unwrap()
    };
    let rel = format!("lib/modules/{KVER}/kernel/drivers/thunderbolt/thunderbolt_stream.ko.xz");
    let tbs = o.kernel_dir.join(&rel);
    let member = cat(&[&img, Path::new(&rel)]);
    assert!(member.status.success(), "{member:?}");
    assert_eq!(member.stdout, fs::read(&tbs).unwrap(), "not byte for byte");
    let module = cat(&[&tbs]);
    assert!(module.status.success(), "{module:?}");
    assert_eq!(module.stdout, b"tbs");
    let missing = cat(&[&img, Path::new("lib/nothing.ko")]);
    assert!(!missing.status.success());
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(err.contains("no lib/nothing.ko in this image"), "{err}");
    let dir = cat(&[&img, Path::new("dev")]);
    assert!(String::from_utf8_lossy(&dir.stderr).contains("not a regular file"));
    let not_module = cat(&[&img]);
    assert!(String::from_utf8_lossy(&not_module.stderr).contains("not a kernel module file name"));
}
