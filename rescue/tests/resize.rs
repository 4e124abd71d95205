//! Host end-to-end tests of restoring onto a target of another size: images
//! partitioned by sfdisk (GPT, and MBR with an extended partition) restored
//! onto a larger, a just-fitting and a one-sector-too-small file; the result
//! checked with `sgdisk -v` and `sfdisk --verify`, partition by partition.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use common::*;

const SEC: u64 = 512;
const MIB: u64 = 1 << 20;

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// Partitions `img` with an sfdisk script.
fn sfdisk(img: &Path, script: &str) {
    let mut c = Command::new("sfdisk")
        .args(["-q", "--no-reread", "--no-tell-kernel"])
        .arg(img)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::io::Write::write_all(c.stdin.as_mut().unwrap(), script.as_bytes()).unwrap();
    assert!(c.wait().unwrap().success(), "sfdisk {script}");
}

fn output(cmd: &str, args: &[&str], img: &Path) -> (bool, String) {
    let o = Command::new(cmd).args(args).arg(img).output().unwrap();
    let t = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.success(), t)
}

fn assert_sfdisk_clean(img: &Path) {
    let (ok, t) = output("sfdisk", &["--verify"], img);
    assert!(
        ok && t.contains("No errors detected"),
        "sfdisk --verify: {t}"
    );
}

fn assert_sgdisk_clean(img: &Path) {
    let (ok, t) = output("sgdisk", &["-v"], img);
    assert!(ok && t.contains("No problems found"), "sgdisk -v: {t}");
}

/// An image of `mib` MiB of random bytes, partitioned by `script`, backed up.
fn backed_up(dir: &Path, mib: usize, script: &str) -> (Server, std::path::PathBuf, String) {
    let a = dir.join("disk.img");
    random_image(&a, mib, 41);
    sfdisk(&a, script);
    let srv = Server::start(dir, &dir.join("store"));
    let o = rescue(&["backup", "-d", &srv.endpoint(), a.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let bd = backup_dirs(&srv.store).pop().unwrap();
    let host = bd
        .parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    (srv, a, host)
}

fn restore_onto(srv: &Server, host: &str, target: &Path, extra: &[&str]) -> (Option<i32>, String) {
    let map = format!("disk={}", target.display());
    let ep = srv.endpoint();
    let mut args = vec!["restore", "-d", &ep, "--host", host, "--map", &map, "--yes"];
    args.extend_from_slice(extra);
    let o = rescue(&args);
    (o.status.code(), text(&o))
}

/// A target file of `len` bytes, filled with a byte the image never has in
/// whole sectors, so leftovers show.
fn target(dir: &Path, name: &str, len: u64) -> std::path::PathBuf {
    let p = dir.join(name);
    fs::write(&p, vec![0x33u8; len as usize]).unwrap();
    p
}

fn same_partitions(a: &Path, b: &Path, parts: &[(u64, u64)]) {
    let (a, b) = (fs::read(a).unwrap(), fs::read(b).unwrap());
    for &(start, sectors) in parts {
        let r = (start * SEC) as usize..((start + sectors) * SEC) as usize;
        assert!(
            a[r.clone()] == b[r.clone()],
            "partition at LBA {start} differs"
        );
    }
}

const GPT: &str = "label: gpt\nstart=2048, size=4096\nstart=6144, size=6144\n";
const GPT_PARTS: &[(u64, u64)] = &[(2048, 4096), (6144, 6144)];

#[test]
fn gpt_onto_a_larger_a_just_fitting_and_a_too_small_target() {
    if !have("sfdisk") || !have("sgdisk") {
        eprintln!("skipped: sfdisk and sgdisk are needed (scripts/deps.sh installs them)");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let (srv, a, host) = backed_up(d.path(), 8, GPT);

    // Twice the size: the backup GPT moves to the new end.
    let big = target(d.path(), "big.img", 16 * MIB);
    let (code, out) = restore_onto(&srv, &host, &big, &["--verify"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("GPT backup header moved from LBA 16383 to 32767"),
        "{out}"
    );
    assert!(out.contains("GPT backup header at LBA 32767"), "{out}");
    assert_sgdisk_clean(&big);
    assert_sfdisk_clean(&big);
    same_partitions(&a, &big, GPT_PARTS);

    // Just fits: the last partition ends 33 sectors (array and header) before the end.
    let fits = (2048 + 4096 + 6144 + 33) * SEC;
    let exact = target(d.path(), "exact.img", fits);
    let (code, out) = restore_onto(&srv, &host, &exact, &["--verify"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("image cut at byte 6291456"), "{out}");
    assert_sgdisk_clean(&exact);
    assert_sfdisk_clean(&exact);
    same_partitions(&a, &exact, GPT_PARTS);

    // One sector less: refused, naming both sizes and where the partition ends.
    let small = target(d.path(), "small.img", fits - SEC);
    let (code, out) = restore_onto(&srv, &host, &small, &[]);
    assert_eq!(code, Some(6), "{out}");
    assert!(out.contains(&format!("({} bytes)", fits - SEC)), "{out}");
    assert!(out.contains("(8388608 bytes)"), "{out}");
    assert!(out.contains("ends at byte 6291456"), "{out}");
    assert_eq!(
        fs::read(&small).unwrap(),
        vec![0x33u8; (fits - SEC) as usize]
    );

    // --grow: the last partition reaches the new last usable LBA.
    let grown = target(d.path(), "grown.img", 16 * MIB);
    let (code, out) = restore_onto(&srv, &host, &grown, &["--grow"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("resize2fs"), "{out}");
    assert_sgdisk_clean(&grown);
    let (_, dump) = output("sfdisk", &["-d"], &grown);
    assert!(
        dump.contains("start=        6144, size=       26591"),
        "{dump}"
    );
}

#[test]
fn resumed_restore_onto_a_smaller_target_finishes_the_same() {
    if !have("sfdisk") || !have("sgdisk") {
        eprintln!("skipped: sfdisk and sgdisk are needed (scripts/deps.sh installs them)");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let (srv, a, host) = backed_up(d.path(), 8, GPT);
    let fits = (2048 + 4096 + 6144 + 33) * SEC;
    let t = target(d.path(), "t.img", fits);
    let (code, out) = restore_onto(&srv, &host, &t, &[]);
    assert_eq!(code, Some(0), "{out}");
    // Damage one partition chunk; a resume sends it (and the patched ones) again.
    let mut bytes = fs::read(&t).unwrap();
    bytes[(3 * MIB) as usize] ^= 0xff;
    fs::write(&t, &bytes).unwrap();
    let (code, out) = restore_onto(&srv, &host, &t, &["--resume", "--verify"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("resuming"), "{out}");
    assert_sgdisk_clean(&t);
    same_partitions(&a, &t, GPT_PARTS);
}

const MBR: &str = "label: dos\nstart=2048, size=4096, type=83\nstart=6144, size=8192, type=5\nstart=8192, size=2048, type=83\nstart=12288, size=2048, type=83\n";
const MBR_PARTS: &[(u64, u64)] = &[(2048, 4096), (8192, 2048), (12288, 2048)];

#[test]
fn mbr_with_logical_partitions_onto_larger_just_fitting_and_too_small() {
    if !have("sfdisk") {
        eprintln!("skipped: sfdisk is needed (scripts/deps.sh installs it)");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let (srv, a, host) = backed_up(d.path(), 10, MBR);

    // Larger, and the target was a GPT disk before: its backup header goes.
    let big = target(d.path(), "big.img", 20 * MIB);
    sfdisk(&big, "label: gpt\nstart=2048, size=2048\n");
    let (code, out) = restore_onto(&srv, &host, &big, &[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("MBR: nothing to change"), "{out}");
    let bytes = fs::read(&big).unwrap();
    assert!(!bytes[(20 * MIB - SEC) as usize..].starts_with(b"EFI PART"));
    assert_sfdisk_clean(&big);
    same_partitions(&a, &big, MBR_PARTS);

    // The extended partition ends at 7 MiB: exactly that fits.
    let exact = target(d.path(), "exact.img", 7 * MIB);
    let (code, out) = restore_onto(&srv, &host, &exact, &["--verify"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("image cut at byte 7340032"), "{out}");
    assert_sfdisk_clean(&exact);
    same_partitions(&a, &exact, MBR_PARTS);
    let (_, dump) = output("sfdisk", &["-d"], &exact);
    assert_eq!(dump.matches("start=").count(), 4, "{dump}");

    let small = target(d.path(), "small.img", 7 * MIB - SEC);
    let (code, out) = restore_onto(&srv, &host, &small, &[]);
    assert_eq!(code, Some(6), "{out}");
    assert!(
        out.contains("(7339520 bytes)") && out.contains("(10485760 bytes)"),
        "{out}"
    );
    assert!(out.contains("ends at byte 7340032"), "{out}");
    assert_eq!(
        fs::read(&small).unwrap(),
        vec![0x33u8; (7 * MIB - SEC) as usize]
    );
}
