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

/// Whether the tools a test runs are there; says so when not (it is skipped).
fn tools(names: &[&str]) -> bool {
    let missing: Vec<&str> = names.iter().copied().filter(|t| !have(t)).collect();
    if !missing.is_empty() {
        eprintln!(
            "skipped: {} needed (scripts/deps.sh installs them)",
            missing.join(", ")
        );
    }
    missing.is_empty()
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
    backed_up_with(dir, mib, script, |_| {})
}

/// As [`backed_up`], with `fill` changing the image after partitioning.
fn backed_up_with(
    dir: &Path,
    mib: usize,
    script: &str,
    fill: impl FnOnce(&Path),
) -> (Server, std::path::PathBuf, String) {
    let a = dir.join("disk.img");
    random_image(&a, mib, 41);
    sfdisk(&a, script);
    fill(&a);
    let srv = Server::start(dir, &dir.join("store"));
    // Every byte: the restored partitions are compared with the source's byte for
    // byte, and a used-block backup leaves free space on the target as it was.
    let o = rescue(&[
        "backup",
        "--all-blocks",
        "-d",
        &srv.endpoint(),
        a.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let bd = backup_dirs(&srv.store).pop().unwrap();
    let host = host_of_dir(&bd);
    (srv, a, host)
}

fn restore_onto(srv: &Server, host: &str, target: &Path, extra: &[&str]) -> (Option<i32>, String) {
    restore_via(&srv.endpoint(), host, target, extra)
}

fn restore_via(ep: &str, host: &str, target: &Path, extra: &[&str]) -> (Option<i32>, String) {
    let map = format!("disk={}", target.display());
    let mut args = vec!["restore", "-d", ep, "--host", host, "--map", &map, "--yes"];
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
    if !tools(&["sfdisk", "sgdisk"]) {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let (srv, a, host) = backed_up(d.path(), 8, GPT);

    // Twice the size: the backup GPT moves to the new end.
    let big = target(d.path(), "big.img", 16 * MIB);
    let (code, out) = restore_onto(&srv, &host, &big, &["--verify"]);
    assert_eq!(code, Some(0), "{out}");
    // In the plan before the confirmation, and in the disk's line after.
    assert!(
        out.contains("resize: GPT backup header moved from LBA 16383 to 32767"),
        "{out}"
    );
    assert!(
        out.contains(&format!("written to {} (resized from 8 MiB to 16 MiB: GPT backup header moved from LBA 16383 to 32767 (its partition array to LBA 32735), last usable LBA 32734 (was 16350); the image's backup GPT at LBA 16383 (and its array) zeroed) and verified", big.display())),
        "{out}"
    );
    assert_sgdisk_clean(&big);
    assert_sfdisk_clean(&big);
    same_partitions(&a, &big, GPT_PARTS);

    // Just fits: the last partition ends 33 sectors (array and header) before the end.
    let fits = (2048 + 4096 + 6144 + 33) * SEC;
    let exact = target(d.path(), "exact.img", fits);
    let (code, out) = restore_onto(&srv, &host, &exact, &["--verify"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("resize: image cut at byte 6291456"), "{out}");
    assert!(
        out.contains("image cut at byte 6291456 (6 MiB) of 8 MiB, after partition 2; GPT backup header moved from LBA 16383 to 12320"),
        "{out}"
    );
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
    let (code, out) = restore_onto(&srv, &host, &grown, &["--grow", "--verify"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("resize: partition 2 grown to end at LBA 32734"),
        "{out}"
    );
    assert!(
        out.contains("partition 2 grown from LBA 6144-12287 to LBA 6144-32734"),
        "{out}"
    );
    // Random bytes in it: no filesystem to name, the tools are listed.
    assert!(
        out.contains("partition 2 was grown, its unknown filesystem was not: losetup -P -f --show"),
        "{out}"
    );
    assert!(out.contains("resize2fs, xfs_growfs"), "{out}");
    assert_sgdisk_clean(&grown);
    let (_, dump) = output("sfdisk", &["-d"], &grown);
    assert!(
        dump.contains("start=        6144, size=       26591"),
        "{dump}"
    );
}

#[test]
fn resumed_restore_onto_a_smaller_target_finishes_the_same() {
    if !tools(&["sfdisk", "sgdisk"]) {
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
    if !tools(&["sfdisk"]) {
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

#[test]
fn resumed_restores_onto_a_larger_and_a_smaller_target_after_a_cut() {
    if !tools(&["sfdisk", "sgdisk"]) {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let (srv, a, host) = backed_up(d.path(), 8, GPT);
    let fits = (2048 + 4096 + 6144 + 33) * SEC;
    for (name, size, grown) in [
        (
            "big",
            16 * MIB,
            "partition 2 grown from LBA 6144-12287 to LBA 6144-32734",
        ),
        (
            "fits",
            fits,
            "--grow: nothing grown: partition 2 already ends at the last usable LBA 12287",
        ),
    ] {
        let t = target(d.path(), &format!("{name}.img"), size);
        let pd = d.path().join(name);
        fs::create_dir(&pd).unwrap();
        // Cut off after 3 MiB of the 6 to 8 sent.
        let px = Proxy::cutting_s2c(&pd, &srv.sock, 3 * MIB);
        let (code, out) = restore_via(&px.endpoint(), &host, &t, &[]);
        assert_eq!(code, Some(5), "{name}: {out}");
        px.set(Faults::default());
        let (code, out) = restore_via(
            &px.endpoint(),
            &host,
            &t,
            &["--resume", "--verify", "--grow"],
        );
        assert_eq!(code, Some(0), "{name}: {out}");
        let held: u64 = out
            .split("resuming, ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{name}: no resume count: {out}"));
        assert!(held >= 1, "{name}: nothing kept across the cut: {out}");
        assert!(out.contains(grown), "{name}: {out}");
        assert!(out.contains("(read back)"), "{name}: {out}");
        assert_sgdisk_clean(&t);
        assert_sfdisk_clean(&t);
        same_partitions(&a, &t, GPT_PARTS);
    }
}

const MBR_PRIMARY: &str =
    "label: dos\nstart=2048, size=4096, type=83\nstart=6144, size=4096, type=83\n";

#[test]
fn mbr_grow_extends_the_last_primary_as_sfdisk_would() {
    if !tools(&["sfdisk", "mkfs.ext4"]) {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    // An ext4 in partition 2, so the summary can say how to grow it.
    let (srv, a, host) = backed_up_with(d.path(), 8, MBR_PRIMARY, |img| {
        let o = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-E", &format!("offset={}", 6144 * SEC)])
            .arg(img)
            .arg("2048k")
            .output()
            .unwrap();
        assert!(o.status.success(), "{o:?}");
    });
    let plain = target(d.path(), "plain.img", 16 * MIB);
    let (code, out) = restore_onto(&srv, &host, &plain, &[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("MBR: nothing to change"), "{out}");
    let grown = target(d.path(), "grown.img", 16 * MIB);
    let (code, out) = restore_onto(&srv, &host, &grown, &["--grow", "--verify"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("resize: partition 2 grown to end at LBA 32767"),
        "{out}"
    );
    assert!(
        out.contains("partition 2 grown from LBA 6144-10239 to LBA 6144-32767"),
        "{out}"
    );
    assert!(
        out.contains(&format!("partition 2 was grown, its ext4 filesystem was not: losetup -P -f --show {} (it prints /dev/loopX), then e2fsck -f /dev/loopXp2 && resize2fs /dev/loopXp2", grown.display())),
        "{out}"
    );
    assert_sfdisk_clean(&grown);
    same_partitions(&a, &grown, &[(2048, 4096), (6144, 4096)]);
    // sfdisk itself, asked to grow partition 2 of the plain restore to the end.
    sfdisk_n(&plain, 2, ", +");
    let dump = |p: &Path| {
        output("sfdisk", &["-d"], p)
            .1
            .replace(&p.display().to_string(), "X")
    };
    assert_eq!(dump(&grown), dump(&plain));
    assert!(
        dump(&grown).contains("start=        6144, size=       26624"),
        "{}",
        dump(&grown)
    );
}

#[test]
fn mbr_grow_with_a_logical_partition_last_says_why_nothing_grew() {
    if !tools(&["sfdisk"]) {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let (srv, _a, host) = backed_up(d.path(), 10, MBR);
    let t = target(d.path(), "t.img", 20 * MIB);
    let (code, out) = restore_onto(&srv, &host, &t, &["--grow", "--verify"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains(
            "resize: --grow: partition 6 is a logical partition inside an extended one: not grown"
        ),
        "{out}"
    );
    assert!(
        out.contains(
            "--grow: nothing grown: partition 2, which ends last, is an extended partition"
        ),
        "{out}"
    );
    assert_sfdisk_clean(&t);
    let (_, dump) = output("sfdisk", &["-d"], &t);
    assert!(
        dump.contains("start=       12288, size=        2048"),
        "{dump}"
    );
}

/// Changes partition `n` of `img` with an sfdisk line (`sfdisk -N`).
fn sfdisk_n(img: &Path, n: u32, line: &str) {
    let mut c = Command::new("sfdisk")
        .args([
            "-q",
            "--no-reread",
            "--no-tell-kernel",
            "-N",
            &n.to_string(),
        ])
        .arg(img)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::io::Write::write_all(c.stdin.as_mut().unwrap(), line.as_bytes()).unwrap();
    assert!(c.wait().unwrap().success(), "sfdisk -N {n} {line}");
}
