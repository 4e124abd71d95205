//! The block devices of this machine (/sys/block): what `rescue disks` lists (with the
//! filesystems their superblocks name), what a backup sends and describes in its
//! manifest, and the checks that keep a restore away from a disk that is mounted, held
//! by device mapper or md, or used as swap.

use std::collections::HashSet;
use std::fs::{self, File};
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::Root;
use crate::system::fsprobe::{self, FsInfo, Window};
use crate::system::mountinfo::{self, Mount};
use crate::system::partitions;
use crate::util::{human_bytes, printable};

/// A whole disk.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(default)]
pub struct Disk {
    /// Kernel name, e.g. "nvme0n1".
    pub name: String,
    /// Device node on the system, e.g. "/dev/nvme0n1" (not mapped into a test root).
    pub path: String,
    pub major: u32,
    pub minor: u32,
    /// Size in the disk's own logical sectors (`logical_block_size` bytes each).
    pub sectors: u64,
    pub size_bytes: u64,
    pub logical_block_size: u32,
    pub physical_block_size: u32,
    pub vendor: Option<String>,
    pub model: Option<String>,
    pub serial: Option<String>,
    pub wwn: Option<String>,
    /// "nvme", "sata", "usb", "virtio", "scsi", "sas", "mmc", "virtual" or "unknown".
    pub transport: String,
    pub rotational: bool,
    pub removable: bool,
    pub read_only: bool,
    /// Partition table kind, "gpt" or "dos", when one could be read.
    pub table: Option<String>,
    /// GPT disk GUID or MBR disk signature.
    pub disk_guid: Option<String>,
    /// Why the partition table could not be read, or what is wrong with it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub table_warnings: Vec<String>,
    pub partitions: Vec<Partition>,
    /// Where the whole disk is mounted (a filesystem without a partition table).
    pub mounts: Vec<String>,
    /// Devices stacked on the whole disk (device mapper, md RAID, bcache).
    pub(crate) holders: Vec<Holder>,
    /// Whether the whole disk is an active swap area.
    pub swap: bool,
    /// Set when the mount table could not be read, so being unused is not proven.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) usage_unknown: Option<String>,
    /// A filesystem (or LUKS, LVM, md, swap) on the whole disk, without a partition table.
    pub filesystem: Option<FsInfo>,
    /// The file behind a loop device.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backing_file: Option<String>,
}

/// A partition of a disk, from sysfs, with the table's type and name when readable and
/// the filesystem its superblock names.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(default)]
pub struct Partition {
    pub name: String,
    pub(crate) path: String,
    pub(crate) number: u32,
    pub(crate) major: u32,
    pub(crate) minor: u32,
    pub start_bytes: u64,
    pub(crate) size_bytes: u64,
    /// Start and size in the disk's logical sectors.
    pub start_sector: u64,
    pub sectors: u64,
    pub(crate) read_only: bool,
    pub type_name: Option<String>,
    pub(crate) type_id: Option<String>,
    /// GPT partition name (PARTLABEL), not the filesystem's label.
    #[serde(alias = "label")]
    pub partname: Option<String>,
    /// GPT partition GUID, or MBR "<signature>-<nn>" (PARTUUID).
    #[serde(alias = "uuid")]
    pub partuuid: Option<String>,
    pub mounts: Vec<String>,
    pub(crate) holders: Vec<Holder>,
    pub swap: bool,
    /// What the partition's superblock says it holds.
    pub filesystem: Option<FsInfo>,
}

/// A device stacked on a disk or partition (holders/ in sysfs).
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(default)]
pub(crate) struct Holder {
    /// Kernel name, e.g. "dm-0", "md127".
    pub(crate) name: String,
    /// "device mapper", "md RAID", "bcache" or "".
    pub(crate) kind: String,
    /// The dm name (e.g. "vg0-root") or the md level (e.g. "raid1").
    pub(crate) detail: Option<String>,
    /// Where the holder itself is mounted.
    pub(crate) mounts: Vec<String>,
    pub(crate) swap: bool,
}

impl Disk {
    /// The size in bytes.
    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    /// Why writing to this disk would destroy data in use, or `None` when it is free:
    /// "sda2 is mounted on /boot; sda3 is active swap".
    pub fn busy_reason(&self) -> Option<String> {
        let mut reasons = Vec::new();
        if let Some(why) = &self.usage_unknown {
            reasons.push(format!(
                "cannot tell whether {} is in use: {why}",
                self.name
            ));
        }
        usage_reasons(
            &self.name,
            &self.mounts,
            &self.holders,
            self.swap,
            &mut reasons,
        );
        for p in &self.partitions {
            usage_reasons(&p.name, &p.mounts, &p.holders, p.swap, &mut reasons);
        }
        (!reasons.is_empty()).then(|| reasons.join("; "))
    }

    /// Whether the disk, one of its partitions or a holder is in use.
    pub fn is_busy(&self) -> bool {
        self.busy_reason().is_some()
    }
}

impl Holder {
    fn describe(&self) -> String {
        let mut extra = Vec::new();
        let mut kind = self.kind.clone();
        if let Some(d) = &self.detail {
            if !kind.is_empty() {
                kind.push(' ');
            }
            kind.push_str(d);
        }
        if !kind.is_empty() {
            extra.push(kind);
        }
        if !self.mounts.is_empty() {
            extra.push(format!("mounted on {}", self.mounts.join(", ")));
        }
        if self.swap {
            extra.push("active swap".into());
        }
        if extra.is_empty() {
            self.name.clone()
        } else {
            format!("{} ({})", self.name, extra.join(", "))
        }
    }
}

fn usage_reasons(
    name: &str,
    mounts: &[String],
    holders: &[Holder],
    swap: bool,
    out: &mut Vec<String>,
) {
    if !mounts.is_empty() {
        out.push(format!("{name} is mounted on {}", mounts.join(", ")));
    }
    if !holders.is_empty() {
        let hs: Vec<String> = holders.iter().map(Holder::describe).collect();
        out.push(format!("{name} is held by {}", hs.join(", ")));
    }
    if swap {
        out.push(format!("{name} is active swap"));
    }
}

/// What is in use on the system: read once per listing.
struct Usage {
    /// Why the mount table is unknown; a disk is then not assumed to be free.
    unknown: Option<String>,
    mounts: Vec<Mount>,
    /// Each mount's source resolved to a /dev path (symlinks followed in the root).
    sources: Vec<Option<String>>,
    swaps: Vec<String>,
}

impl Usage {
    fn read(root: &Root) -> Self {
        // Without /proc the disks are still worth listing, but none counts as free.
        let (mounts, unknown) = match mountinfo::read(root) {
            Ok(m) => (m, None),
            Err(e) => (Vec::new(), Some(format!("{e:#}"))),
        };
        let sources = mounts
            .iter()
            .map(|m| {
                m.source_is_device()
                    .then(|| resolve_in_root(root, &m.source))
            })
            .collect();
        let swaps = mountinfo::swaps(root)
            .iter()
            .map(|s| resolve_in_root(root, s))
            .collect();
        Usage {
            unknown,
            mounts,
            sources,
            swaps,
        }
    }

    /// Mount points of a device, by device number or by source path.
    fn mounts_of(&self, dev_path: &str, devnum: Option<(u32, u32)>) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for (m, src) in self.mounts.iter().zip(&self.sources) {
            let by_num = devnum.is_some_and(|(a, b)| (m.major, m.minor) == (a, b) && a != 0);
            let by_path = src.as_deref() == Some(dev_path);
            if (by_num || by_path) && !out.contains(&m.mount_point) {
                out.push(m.mount_point.clone());
            }
        }
        out
    }

    fn is_swap(&self, dev_path: &str) -> bool {
        self.swaps.iter().any(|s| s == dev_path)
    }
}

/// Lists the disks, hiding loop, ram, zram, optical, empty and stacked (dm, md)
/// devices unless `all`.
pub fn list(root: &Root, all: bool) -> anyhow::Result<Vec<Disk>> {
    let dir = root.path("/sys/block");
    let mut names = Vec::new();
    for e in fs::read_dir(&dir).context("reading /sys/block")? {
        let e = e.context("reading /sys/block")?;
        if let Some(n) = e.file_name().to_str() {
            names.push(n.to_string());
        }
    }
    names.sort_by(|a, b| natural_cmp(a, b));
    let usage = Usage::read(root);
    let mut disks = Vec::new();
    for name in names {
        if (!all && hidden(root, &name)) || unused_loop(root, &name) {
            continue;
        }
        // A device may vanish between listing and reading (USB unplugged); skip it.
        if let Ok(d) = read_disk(root, &name, &usage) {
            disks.push(d);
        }
    }
    Ok(disks)
}

/// Finds one disk by kernel name ("nvme0n1"), device path ("/dev/nvme0n1") or a
/// /dev/disk/by-* symlink, resolved inside `root`.
pub fn find(root: &Root, spec: &str) -> anyhow::Result<Disk> {
    let spec_t = spec.trim();
    if spec_t.is_empty() {
        bail!("no disk given (run `rescue disks` to see the disks of this machine)");
    }
    let name = if spec_t.starts_with('/') {
        let resolved = if spec_t.starts_with("/dev/") {
            resolve_in_root(root, spec_t)
        } else if let Some(rest) = spec_t
            .strip_prefix("/sys/block/")
            .or_else(|| spec_t.strip_prefix("/sys/class/block/"))
        {
            format!("/dev/{}", rest.trim_end_matches('/'))
        } else {
            bail!(
                "{spec} is not a device under /dev (run `rescue disks` to see the disks of this machine)"
            );
        };
        match resolved.strip_prefix("/dev/") {
            Some(n) if !n.is_empty() && !n.contains('/') => n.to_string(),
            _ => bail!(
                "{spec} resolves to {resolved}, which is not a disk (run `rescue disks` to see the disks of this machine)"
            ),
        }
    } else if spec_t.contains('/') || spec_t == "." || spec_t == ".." {
        bail!("no disk named {spec:?} (run `rescue disks` to see the disks of this machine)");
    } else {
        spec_t.to_string()
    };

    if root.path(format!("/sys/block/{name}")).is_dir() {
        let usage = Usage::read(root);
        return read_disk(root, &name, &usage);
    }
    if let Some(parent) = parent_disk_of(root, &name) {
        bail!(
            "{spec} is partition {name} of disk {parent}: give the whole disk (/dev/{parent}); see `rescue disks`"
        );
    }
    bail!(
        "no disk named {spec:?} on this machine (run `rescue disks` to see the disks that can be used)"
    )
}

/// The disk a partition belongs to, from its sysfs location.
fn parent_disk_of(root: &Root, part: &str) -> Option<String> {
    let disks = fs::read_dir(root.path("/sys/block")).ok()?;
    for d in disks.flatten() {
        let dname = d.file_name().to_string_lossy().into_owned();
        if root
            .path(format!("/sys/block/{dname}/{part}/partition"))
            .is_file()
        {
            return Some(dname);
        }
    }
    None
}

/// Devices that are not disks one would back up: virtual memory disks, loop
/// devices, optical drives, empty slots, and dm/md devices stacked on real disks
/// (those disks are listed themselves, so the data would be sent twice).
fn hidden(root: &Root, name: &str) -> bool {
    let attr = |a: &str| root.read_attr(format!("/sys/block/{name}/{a}"));
    if ["loop", "ram", "zram", "sr"]
        .iter()
        .any(|p| name.starts_with(p))
    {
        return true;
    }
    // Paths of native NVMe multipath (nvme0c0n1) are marked hidden by the kernel.
    if attr("device/type").as_deref() == Some("5") || attr("hidden").as_deref() == Some("1") {
        return true;
    }
    if root
        .read_u64(format!("/sys/block/{name}/size"))
        .unwrap_or(0)
        == 0
    {
        return true;
    }
    !list_dir(&root.path(format!("/sys/block/{name}/slaves"))).is_empty()
}

/// A loop device without a file behind it (0 B) is a free slot, not a disk: not
/// listed, even with --all.
fn unused_loop(root: &Root, name: &str) -> bool {
    name.starts_with("loop")
        && root
            .read_u64(format!("/sys/block/{name}/size"))
            .unwrap_or(0)
            == 0
}

fn read_disk(root: &Root, name: &str, usage: &Usage) -> anyhow::Result<Disk> {
    let base = format!("/sys/block/{name}");
    if !root.path(&base).is_dir() {
        bail!("{base} does not exist");
    }
    let attr = |a: &str| {
        root.read_attr(format!("{base}/{a}"))
            .filter(|s| !s.is_empty())
    };
    let num = |a: &str| root.read_u64(format!("{base}/{a}"));
    let flag = |a: &str| num(a).is_some_and(|v| v != 0);
    let devnum = attr("dev").and_then(|d| mountinfo::parse_devnum(&d));
    let path = format!("/dev/{name}");
    let logical = num("queue/logical_block_size")
        .and_then(|v| u32::try_from(v).ok())
        .filter(|v| *v >= 512)
        .unwrap_or(512);
    let physical = num("queue/physical_block_size")
        .and_then(|v| u32::try_from(v).ok())
        .filter(|v| *v >= 512)
        .unwrap_or(logical);
    // sysfs counts 512-byte units whatever the sector size.
    let size_bytes = num("size").unwrap_or(0).saturating_mul(512);

    let mut disk = Disk {
        name: name.to_string(),
        path: path.clone(),
        major: devnum.map_or(0, |d| d.0),
        minor: devnum.map_or(0, |d| d.1),
        sectors: size_bytes / u64::from(logical),
        size_bytes,
        logical_block_size: logical,
        physical_block_size: physical,
        // virtio and NVMe controllers show a numeric PCI vendor id here, not a name.
        vendor: attr("device/vendor").filter(|v| !v.starts_with("0x")),
        model: attr("device/model").or_else(|| attr("device/name")),
        serial: serial(root, &base),
        wwn: attr("device/wwid").or_else(|| attr("wwid")),
        transport: transport(root, name),
        rotational: flag("queue/rotational"),
        removable: flag("removable"),
        read_only: flag("ro"),
        mounts: usage.mounts_of(&path, devnum),
        holders: holders(root, &format!("{base}/holders"), usage),
        swap: usage.is_swap(&path),
        usage_unknown: usage.unknown.clone(),
        backing_file: attr("loop/backing_file"),
        ..Disk::default()
    };

    let mut parts = Vec::new();
    for entry in list_dir(&root.path(&base)) {
        let pbase = format!("{base}/{entry}");
        let Some(number) = root
            .read_u64(format!("{pbase}/partition"))
            .and_then(|n| u32::try_from(n).ok())
        else {
            continue;
        };
        let pattr = |a: &str| root.read_u64(format!("{pbase}/{a}"));
        let pdev = root
            .read_attr(format!("{pbase}/dev"))
            .and_then(|d| mountinfo::parse_devnum(&d));
        let ppath = format!("/dev/{entry}");
        let start_bytes = pattr("start").unwrap_or(0).saturating_mul(512);
        let size_bytes = pattr("size").unwrap_or(0).saturating_mul(512);
        parts.push(Partition {
            name: entry.clone(),
            number,
            major: pdev.map_or(0, |d| d.0),
            minor: pdev.map_or(0, |d| d.1),
            start_bytes,
            size_bytes,
            start_sector: start_bytes / u64::from(logical),
            sectors: size_bytes / u64::from(logical),
            read_only: pattr("ro").is_some_and(|v| v != 0),
            mounts: usage.mounts_of(&ppath, pdev),
            holders: holders(root, &format!("{pbase}/holders"), usage),
            swap: usage.is_swap(&ppath),
            path: ppath,
            ..Partition::default()
        });
    }
    parts.sort_by_key(|p| p.number);
    disk.partitions = parts;

    if disk.sectors > 0 {
        add_table(root, &mut disk);
        add_filesystems(root, &mut disk);
    }
    Ok(disk)
}

/// Labels and types from the partition table; sysfs stays the authority on which
/// partitions exist, since that is what the kernel uses.
fn add_table(root: &Root, disk: &mut Disk) {
    let dev = root.path(&disk.path);
    if !dev.exists() {
        return;
    }
    match partitions::read_table(&dev, disk.logical_block_size) {
        Ok(Some(t)) => {
            for p in &mut disk.partitions {
                if let Some(e) = t.entries.iter().find(|e| e.number == p.number) {
                    p.type_name = Some(e.type_name.clone());
                    p.type_id = Some(e.type_id.clone());
                    p.partname = e.name.clone();
                    p.partuuid = e.uuid.clone();
                }
            }
            disk.table = Some(t.kind);
            disk.disk_guid = t.disk_guid;
            disk.table_warnings = t.warnings;
        }
        Ok(None) => {}
        Err(e) => disk
            .table_warnings
            .push(format!("partition table not read: {}", e.root_cause())),
    }
}

/// What the superblocks say, each partition read through its window of the disk so a
/// probe cannot run into the next one. The whole disk is probed only when it has no
/// partitions; what cannot be read shows no filesystem.
fn add_filesystems(root: &Root, disk: &mut Disk) {
    let Ok(f) = File::open(root.path(&disk.path)) else {
        return;
    };
    if disk.table.is_none() && disk.partitions.is_empty() {
        disk.filesystem = fsprobe::probe(&Window::new(&f, 0, disk.size_bytes));
    }
    for p in &mut disk.partitions {
        p.filesystem = fsprobe::probe(&Window::new(&f, p.start_bytes, p.size_bytes));
    }
}

/// The serial number: NVMe controllers and SCSI devices have `serial`, virtio-blk has
/// it on the disk itself, and SATA/USB disks often only in VPD page 0x80.
fn serial(root: &Root, base: &str) -> Option<String> {
    let text = |a: &str| {
        root.read_attr(format!("{base}/{a}"))
            .filter(|s| !s.is_empty())
    };
    text("device/serial")
        .or_else(|| text("serial"))
        .or_else(|| {
            let raw = fs::read(root.path(format!("{base}/device/vpd_pg80"))).ok()?;
            // 4-byte page header, then the serial as ASCII, often space padded.
            let body = raw.get(4..)?;
            let s: String = body
                .iter()
                .filter(|b| b.is_ascii_graphic() || **b == b' ')
                .map(|b| *b as char)
                .collect();
            let s = s.trim().to_string();
            (!s.is_empty()).then_some(s)
        })
}

/// The bus a disk hangs on, read from where its sysfs directory lives
/// (/sys/block/X links into /sys/devices/<bus path>/.../block/X).
fn transport(root: &Root, name: &str) -> String {
    let mut path = String::new();
    for link in [
        format!("/sys/block/{name}"),
        format!("/sys/block/{name}/device"),
    ] {
        if let Ok(t) = fs::read_link(root.path(&link)) {
            path.push_str(&t.to_string_lossy());
            path.push('/');
        }
    }
    let comps: Vec<&str> = path.split('/').collect();
    let has = |f: &dyn Fn(&str) -> bool| comps.iter().any(|c| f(c));
    let ata = |c: &str| {
        c.strip_prefix("ata")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    let t = if name.starts_with("nvme") || has(&|c| c == "nvme") {
        "nvme"
    } else if name.starts_with("mmcblk") || has(&|c| c.starts_with("mmc")) {
        "mmc"
    } else if has(&|c| c.starts_with("usb")) {
        "usb"
    } else if has(&|c| c.starts_with("virtio")) {
        "virtio"
    } else if has(&ata) {
        "sata"
    } else if has(&|c| c.starts_with("end_device-")) {
        "sas"
    } else if has(&|c| c.starts_with("target")) {
        "scsi"
    } else if path.contains("devices/virtual/") {
        "virtual"
    } else if name.starts_with("vd") {
        "virtio"
    } else if ["loop", "ram", "zram", "dm-", "md", "nbd"]
        .iter()
        .any(|p| name.starts_with(p))
    {
        "virtual"
    } else {
        "unknown"
    };
    t.to_string()
}

fn holders(root: &Root, dir: &str, usage: &Usage) -> Vec<Holder> {
    list_dir(&root.path(dir))
        .into_iter()
        .map(|h| {
            let (kind, detail) = if h.starts_with("dm-") {
                (
                    "device mapper",
                    root.read_attr(format!("/sys/block/{h}/dm/name")),
                )
            } else if h.starts_with("md") {
                (
                    "md RAID",
                    root.read_attr(format!("/sys/block/{h}/md/level")),
                )
            } else if h.starts_with("bcache") {
                ("bcache", None)
            } else {
                ("", None)
            };
            let path = format!("/dev/{h}");
            let devnum = root
                .read_attr(format!("/sys/block/{h}/dev"))
                .and_then(|d| mountinfo::parse_devnum(&d));
            Holder {
                kind: kind.to_string(),
                detail: detail.filter(|d| !d.is_empty()),
                mounts: usage.mounts_of(&path, devnum),
                swap: usage.is_swap(&path),
                name: h,
            }
        })
        .collect()
}

/// Names in a directory, sorted naturally ("sda2" before "sda10"); empty when absent.
fn list_dir(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = match fs::read_dir(dir) {
        Ok(rd) => rd
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .collect(),
        Err(_) => Vec::new(),
    };
    v.sort_by(|a, b| natural_cmp(a, b));
    v
}

/// Compares names so that embedded numbers sort by value.
pub fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    fn split(s: &str) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        let mut text = String::new();
        let mut digits = String::new();
        for c in s.chars() {
            if c.is_ascii_digit() {
                digits.push(c);
            } else {
                if !digits.is_empty() {
                    out.push((
                        std::mem::take(&mut text),
                        digits.parse().unwrap_or(u64::MAX),
                    ));
                    digits.clear();
                }
                text.push(c);
            }
        }
        let n = if digits.is_empty() {
            0
        } else {
            digits.parse().unwrap_or(u64::MAX)
        };
        out.push((text, n));
        out
    }
    split(a).cmp(&split(b)).then_with(|| a.cmp(b))
}

/// Follows symlinks of an absolute path inside `root` (absolute targets stay inside
/// it), giving the final system path: "/dev/disk/by-id/x" -> "/dev/sda".
pub(crate) fn resolve_in_root(root: &Root, abs: &str) -> String {
    let mut cur = lexical_absolute(Path::new(abs));
    for _ in 0..40 {
        match fs::read_link(root.path(&cur)) {
            Ok(target) => {
                let next = if target.is_absolute() {
                    target
                } else {
                    cur.parent().unwrap_or(Path::new("/")).join(target)
                };
                cur = lexical_absolute(&next);
            }
            Err(_) => break,
        }
    }
    cur.to_string_lossy().into_owned()
}

/// `p` made absolute with `..` and `.` resolved by the names alone (no links followed).
fn lexical_absolute(p: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

/// The columns of `rescue disks`: a disk's model and serial share theirs with a
/// partition's type and GPT name; FSTYPE, LABEL and UUID come from the superblock.
const COLUMNS: [&str; 9] = [
    "NAME",
    "SIZE",
    "TRAN",
    "MODEL / TYPE",
    "SERIAL / PARTNAME",
    "FSTYPE",
    "LABEL",
    "UUID",
    "STATE",
];

/// The human table behind `rescue disks`: one line per disk, its partitions
/// indented below, with what keeps each in use.
pub fn render_table(disks: &[Disk]) -> String {
    if disks.is_empty() {
        return "no disks found (--all also shows loop, ram, zram and optical devices)\n".into();
    }
    let mut rows: Vec<Vec<String>> = vec![COLUMNS.iter().map(|c| c.to_string()).collect()];
    for d in disks {
        rows.push(disk_row(d));
        rows.extend(d.partitions.iter().map(partition_row));
    }
    let mut out = align(&rows);
    // A damaged table is exactly what a rescue tool must not hide.
    for d in disks {
        for w in &d.table_warnings {
            out.push_str(&format!("note: {}: {w}\n", d.name));
        }
    }
    out
}

fn disk_row(d: &Disk) -> Vec<String> {
    let mut state = Vec::new();
    if d.is_busy() {
        state.push("in use".to_string());
    }
    state.extend(disk_state(&d.name, &d.mounts, &d.holders, d.swap));
    if d.removable {
        state.push("removable".into());
    }
    if d.read_only {
        state.push("read-only".into());
    }
    // A loop device has no model: what it shows is its file.
    let model = d
        .model
        .clone()
        .or_else(|| d.vendor.clone())
        .or_else(|| d.backing_file.clone())
        .unwrap_or_else(|| "-".into());
    let mut row = vec![
        d.name.clone(),
        human_bytes(d.size_bytes()),
        d.transport.clone(),
        model,
        d.serial.clone().unwrap_or_else(|| "-".into()),
    ];
    row.extend(fs_cells(d.filesystem.as_ref()));
    row.push(state.join(", "));
    row
}

fn partition_row(p: &Partition) -> Vec<String> {
    let mut row = vec![
        format!("  {}", p.name),
        human_bytes(p.size_bytes),
        String::new(),
        p.type_name.clone().unwrap_or_default(),
        p.partname.clone().unwrap_or_default(),
    ];
    row.extend(fs_cells(p.filesystem.as_ref()));
    row.push(disk_state(&p.name, &p.mounts, &p.holders, p.swap).join(", "));
    row
}

fn fs_cells(fs: Option<&FsInfo>) -> [String; 3] {
    match fs {
        Some(f) => [
            f.fstype.clone(),
            f.label.clone().unwrap_or_default(),
            f.uuid.clone().unwrap_or_default(),
        ],
        None => Default::default(),
    }
}

/// Pads the cells into columns, SIZE right-aligned, without trailing blanks. Every cell
/// is escaped first: models, serials and GPT names come from the devices, and a hostile
/// one must not drive the terminal.
fn align(rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| printable(c).into_owned()).collect())
        .collect();
    let mut width = vec![0usize; COLUMNS.len()];
    for r in &rows {
        for (w, c) in width.iter_mut().zip(r.iter()) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in &rows {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            let pad = " ".repeat(width[i].saturating_sub(c.chars().count()));
            if i == 1 {
                line.push_str(&pad);
                line.push_str(c);
            } else {
                line.push_str(c);
                line.push_str(&pad);
            }
            line.push_str("  ");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn disk_state(_name: &str, mounts: &[String], holders: &[Holder], swap: bool) -> Vec<String> {
    let mut s = Vec::new();
    if !mounts.is_empty() {
        s.push(format!("mounted on {}", mounts.join(", ")));
    }
    if !holders.is_empty() {
        let names: HashSet<&str> = holders.iter().map(|h| h.name.as_str()).collect();
        let mut names: Vec<&str> = names.into_iter().collect();
        names.sort_by(|a, b| natural_cmp(a, b));
        s.push(format!("held by {}", names.join(", ")));
    }
    if swap {
        s.push("active swap".into());
    }
    s
}

/// The partitions the kernel has for the block device whose sysfs directory is `dir`
/// (`/sys/class/block/<name>` below the root): (number, start, sectors), in 512-byte
/// sectors as sysfs gives them, sorted by number. A directory that cannot be read
/// (the device went away) gives none.
pub(crate) fn kernel_partitions(dir: &Path) -> Vec<(u32, u64, u64)> {
    let num = |p: PathBuf| -> Option<u64> { fs::read_to_string(p).ok()?.trim().parse().ok() };
    let mut out: Vec<(u32, u64, u64)> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let p = e.path();
            let n = u32::try_from(num(p.join("partition"))?).ok()?;
            Some((n, num(p.join("start"))?, num(p.join("size"))?))
        })
        .collect();
    out.sort_unstable();
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sorts_naturally() {
        let mut v = vec!["sda10", "sda2", "sdb", "sda", "nvme10n1", "nvme2n1"];
        v.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(v, ["nvme2n1", "nvme10n1", "sda", "sda2", "sda10", "sdb"]);
        assert_eq!(
            natural_cmp("a99999999999999999999999", "a1"),
            std::cmp::Ordering::Greater
        );
    }

    #[test]
    fn resolves_links_inside_the_root() {
        let t = tempfile::tempdir().unwrap();
        let root = Root::new(t.path());
        fs::create_dir_all(t.path().join("dev/disk/by-id")).unwrap();
        fs::write(t.path().join("dev/sda"), "").unwrap();
        std::os::unix::fs::symlink("../../sda", t.path().join("dev/disk/by-id/ata-X")).unwrap();
        std::os::unix::fs::symlink("/dev/disk/by-id/ata-X", t.path().join("dev/abs")).unwrap();
        std::os::unix::fs::symlink("loop", t.path().join("dev/loop")).unwrap();
        assert_eq!(resolve_in_root(&root, "/dev/disk/by-id/ata-X"), "/dev/sda");
        assert_eq!(resolve_in_root(&root, "/dev/abs"), "/dev/sda");
        assert_eq!(resolve_in_root(&root, "/dev/../dev/./sda"), "/dev/sda");
        assert_eq!(resolve_in_root(&root, "/dev/loop"), "/dev/loop");
        assert_eq!(resolve_in_root(&root, "/dev/nothing"), "/dev/nothing");
    }

    #[test]
    fn busy_reasons_read_well() {
        let mut d = Disk {
            name: "sda".into(),
            ..Disk::default()
        };
        assert_eq!(d.busy_reason(), None);
        d.partitions.push(Partition {
            name: "sda2".into(),
            mounts: vec!["/boot".into()],
            ..Partition::default()
        });
        d.partitions.push(Partition {
            name: "sda3".into(),
            swap: true,
            holders: vec![Holder {
                name: "dm-0".into(),
                kind: "device mapper".into(),
                ..Holder::default()
            }],
            ..Partition::default()
        });
        assert_eq!(
            d.busy_reason().unwrap(),
            "sda2 is mounted on /boot; sda3 is held by dm-0 (device mapper); sda3 is active swap"
        );
    }

    #[test]
    fn kernel_partitions_reads_number_start_and_size_from_sysfs() {
        let d = tempfile::tempdir().unwrap();
        let dev = d.path().join("vdb");
        for (name, n, start, size) in [
            ("vdb2", "2", "43008", "32768"),
            ("vdb1", "1", "2048", "40960"),
        ] {
            fs::create_dir_all(dev.join(name)).unwrap();
            fs::write(dev.join(name).join("partition"), format!("{n}\n")).unwrap();
            fs::write(dev.join(name).join("start"), format!("{start}\n")).unwrap();
            fs::write(dev.join(name).join("size"), format!("{size}\n")).unwrap();
        }
        // Not partitions: attributes and other directories of the disk.
        fs::create_dir_all(dev.join("queue")).unwrap();
        fs::write(dev.join("size"), "131072\n").unwrap();
        assert_eq!(
            kernel_partitions(&dev),
            vec![(1, 2048, 40960), (2, 43008, 32768)]
        );
        assert!(kernel_partitions(&d.path().join("gone")).is_empty());
    }
}
