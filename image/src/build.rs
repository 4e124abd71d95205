//! Assembles the rescue initramfs: the static `rescue` as /init, the kernel modules
//! it needs with their dependency closure and a filtered depmod index, the mount
//! points and /dev/console; then compresses it (xz with CRC32, or gzip).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::newc::{Archive, Entry};

/// Modules the rescue system wants when the kernel has them as modules: the
/// USB4STREAM stack, storage controllers and disks, USB (disks, keyboards), the
/// filesystems a store may use, and the code pages vfat mounts need. Missing ones
/// (built in, or not in this kernel) are skipped.
pub const WANTED: &[&str] = &[
    // USB4 / Thunderbolt
    "configfs",
    "thunderbolt",
    "thunderbolt_stream",
    // storage controllers and disks
    "nvme",
    "vmd",
    "ahci",
    "ata_piix",
    "sd_mod",
    "virtio_blk",
    "virtio_scsi",
    "virtio_pci",
    "mmc_block",
    "sdhci_pci",
    // USB: host controllers, disks, keyboards
    "xhci_pci",
    "ehci_pci",
    "ohci_pci",
    "uhci_hcd",
    "usb_storage",
    "uas",
    "usbhid",
    "hid_generic",
    "atkbd",
    // filesystems for the image store
    "ext4",
    "vfat",
    "xfs",
    "btrfs",
    "exfat",
    "nls_cp437",
    "nls_ascii",
    "nls_utf8",
    "nls_iso8859_1",
    // checksums filesystems ask for by softdep
    "crc32c_generic",
    "crc32c",
];

/// Index files copied or filtered into the image.
const INDEX_FILES: &[&str] = &[
    "modules.dep",
    "modules.alias",
    "modules.softdep",
    "modules.builtin",
    "modules.builtin.modinfo",
    "modules.order",
];

/// What to build.
#[derive(Debug, Clone)]
pub struct Options {
    /// A kernel directory holding lib/modules/<kver>/ (and usually vmlinuz).
    pub kernel_dir: PathBuf,
    /// Kernel release when lib/modules holds several.
    pub kver: Option<String>,
    /// The static rescue binary.
    pub rescue: PathBuf,
    /// Out-of-tree modules to add under lib/modules/<kver>/extra/.
    pub extra_modules: Vec<PathBuf>,
    /// More module names to include (with their closure).
    pub modules: Vec<String>,
    pub compress: Compress,
    /// mtime of every entry (SOURCE_DATE_EPOCH, else 0).
    pub mtime: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Compress {
    Xz,
    Gzip,
    None,
}

/// What went into an image.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub kver: String,
    /// Modules included (normalized names), sorted.
    pub modules: Vec<String>,
    /// Wanted modules the kernel has built in.
    pub builtin: Vec<String>,
    /// Wanted modules this kernel has neither as module nor built in.
    pub missing: Vec<String>,
    pub uncompressed: usize,
    pub compressed: usize,
}

fn normalize(n: &str) -> String {
    n.trim().replace('-', "_")
}

fn name_of_path(p: &str) -> String {
    let file = p.rsplit('/').next().unwrap_or(p);
    normalize(file.split(".ko").next().unwrap_or(file))
}

/// The kernel release under `kernel_dir/lib/modules`, which must be unique unless given.
pub fn find_kver(kernel_dir: &Path, kver: Option<&str>) -> Result<String> {
    if let Some(k) = kver {
        return Ok(k.to_string());
    }
    let dir = kernel_dir.join("lib/modules");
    let mut found: Vec<String> = fs::read_dir(&dir)
        .with_context(|| format!("read {}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("modules.dep").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    found.sort();
    match found.len() {
        0 => bail!(
            "no lib/modules/<kver>/modules.dep in {}",
            kernel_dir.display()
        ),
        1 => Ok(found.remove(0)),
        _ => bail!(
            "several kernels in {}: {}; pass --kver",
            dir.display(),
            found.join(", ")
        ),
    }
}

/// modules.dep as name -> (path, dep names).
fn parse_dep(text: &str) -> BTreeMap<String, (String, Vec<String>)> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if let Some((p, deps)) = line.split_once(':') {
            let p = p.trim();
            if !p.is_empty() {
                let deps = deps.split_whitespace().map(name_of_path).collect();
                out.insert(name_of_path(p), (p.to_string(), deps));
            }
        }
    }
    out
}

/// `softdep NAME pre: a b post: c` -> NAME -> [a, b, c] (all wanted in the image).
fn parse_softdep(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines() {
        let mut it = line.split_whitespace();
        if it.next() != Some("softdep") {
            continue;
        }
        let Some(m) = it.next() else { continue };
        let e = out.entry(normalize(m)).or_default();
        e.extend(it.filter(|w| !w.ends_with(':')).map(normalize));
    }
    out
}

/// Fields of an ELF module's .modinfo section (`key=value` strings separated by
/// NUL), found by scanning the uncompressed bytes; enough for `depends=` and
/// `alias=` of out-of-tree modules that depmod never saw.
pub fn modinfo(image: &[u8], key: &str) -> Vec<String> {
    let pat = format!("{key}=");
    image
        .split(|&b| b == 0)
        .filter_map(|s| s.strip_prefix(pat.as_bytes()))
        .filter_map(|v| std::str::from_utf8(v).ok())
        .filter(|v| v.bytes().all(|b| b.is_ascii_graphic() || b == b' '))
        .map(str::to_string)
        .collect()
}

/// Reads a module file, decompressing .xz and .gz (for .modinfo scanning only).
fn read_module_plain(path: &Path) -> Result<Vec<u8>> {
    let raw = fs::read(path).with_context(|| format!("read {}", path.display()))?;
    let name = path.to_string_lossy();
    let mut out = Vec::new();
    if name.ends_with(".xz") {
        xz2::read::XzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .with_context(|| format!("decompress {}", path.display()))?;
    } else if name.ends_with(".gz") {
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .with_context(|| format!("decompress {}", path.display()))?;
    } else {
        out = raw;
    }
    Ok(out)
}

/// Builds the archive (uncompressed) and says what went in.
pub fn assemble(opts: &Options) -> Result<(Archive, Summary)> {
    let kver = find_kver(&opts.kernel_dir, opts.kver.as_deref())?;
    let mdir = opts.kernel_dir.join("lib/modules").join(&kver);
    let read_opt = |name: &str| -> Result<Option<String>> {
        let p = mdir.join(name);
        match fs::read(&p) {
            Ok(b) => Ok(Some(String::from_utf8_lossy(&b).into_owned())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("read {}", p.display())),
        }
    };
    let dep_text = read_opt("modules.dep")?.context("modules.dep missing")?;
    let mut deps = parse_dep(&dep_text);
    let softdeps = parse_softdep(&read_opt("modules.softdep")?.unwrap_or_default());
    let builtin: BTreeSet<String> = read_opt("modules.builtin")?
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(name_of_path)
        .collect();
    let alias_text = read_opt("modules.alias")?.unwrap_or_default();

    // Out-of-tree modules: their dependencies and aliases come from .modinfo.
    let mut extra_alias = String::new();
    let mut extra_files: Vec<(String, PathBuf)> = Vec::new();
    let mut roots: Vec<String> = WANTED.iter().map(|s| s.to_string()).collect();
    roots.extend(opts.modules.iter().map(|m| normalize(m)));
    for p in &opts.extra_modules {
        let file = p
            .file_name()
            .and_then(|f| f.to_str())
            .with_context(|| format!("bad module path {}", p.display()))?;
        if !file.contains(".ko") {
            bail!("{}: not a .ko file", p.display());
        }
        let plain = read_module_plain(p)?;
        let name = modinfo(&plain, "name")
            .into_iter()
            .next()
            .map(|n| normalize(&n))
            .unwrap_or_else(|| name_of_path(file));
        let mdeps: Vec<String> = modinfo(&plain, "depends")
            .iter()
            .flat_map(|d| d.split(',').map(normalize).collect::<Vec<_>>())
            .filter(|d| !d.is_empty())
            .collect();
        for a in modinfo(&plain, "alias") {
            extra_alias.push_str(&format!("alias {a} {name}\n"));
        }
        let rel = format!("extra/{file}");
        deps.insert(name.clone(), (rel.clone(), mdeps));
        extra_files.push((rel, p.clone()));
        roots.push(name);
    }

    // The closure: each wanted module, its modules.dep dependencies and softdeps.
    let mut include: BTreeSet<String> = BTreeSet::new();
    let mut summary = Summary {
        kver: kver.clone(),
        ..Default::default()
    };
    let mut stack: Vec<(String, bool)> = roots.iter().map(|r| (r.clone(), true)).collect();
    while let Some((m, wanted)) = stack.pop() {
        if include.contains(&m) {
            continue;
        }
        if let Some((_, d)) = deps.get(&m) {
            include.insert(m.clone());
            stack.extend(d.iter().map(|x| (x.clone(), false)));
            if let Some(s) = softdeps.get(&m) {
                stack.extend(s.iter().map(|x| (x.clone(), false)));
            }
        } else if wanted {
            if builtin.contains(&m) {
                summary.builtin.push(m);
            } else {
                summary.missing.push(m);
            }
        }
    }
    summary.builtin.sort();
    summary.builtin.dedup();
    summary.missing.sort();
    summary.missing.dedup();

    let mut a = Archive::new();
    let rescue = fs::read(&opts.rescue)
        .with_context(|| format!("read rescue binary {}", opts.rescue.display()))?;
    a.add(Entry::file("init", 0o755, rescue));
    a.add(Entry::symlink("bin/rescue", "/init"));
    for d in ["dev", "proc", "sys", "run", "etc", "root", "mnt"] {
        a.add(Entry::dir(d, 0o755));
    }
    a.add(Entry::dir("tmp", 0o1777));
    a.add(Entry::chardev("dev/console", 0o600, 5, 1));
    a.add(Entry::chardev("dev/null", 0o666, 1, 3));

    let base = format!("lib/modules/{kver}");
    a.add(Entry::dir(&base, 0o755));
    let extra_map: BTreeMap<&str, &PathBuf> =
        extra_files.iter().map(|(r, p)| (r.as_str(), p)).collect();
    let mut dep_lines: BTreeMap<String, String> = BTreeMap::new();
    for m in &include {
        let (rel, d) = &deps[m];
        let src = match extra_map.get(rel.as_str()) {
            Some(p) => (*p).clone(),
            None => mdir.join(rel),
        };
        let bytes = fs::read(&src).with_context(|| format!("read {}", src.display()))?;
        a.add(Entry::file(&format!("{base}/{rel}"), 0o644, bytes));
        let dpaths: Vec<&str> = d
            .iter()
            .filter_map(|x| deps.get(x).map(|(p, _)| p.as_str()))
            .collect();
        let line = format!("{rel}: {}", dpaths.join(" "));
        dep_lines.insert(rel.clone(), line.trim_end().to_string());
    }
    summary.modules = include.iter().cloned().collect();

    // Keep the index in modules.dep's original order for included modules, so the
    // loader sees what depmod wrote; extras go last.
    let mut dep_sorted = String::new();
    for line in dep_text.lines() {
        if let Some((p, _)) = line.split_once(':')
            && let Some(l) = dep_lines.remove(p.trim())
        {
            dep_sorted.push_str(&l);
            dep_sorted.push('\n');
        }
    }
    for l in dep_lines.values() {
        dep_sorted.push_str(l);
        dep_sorted.push('\n');
    }
    a.add(Entry::file(
        &format!("{base}/modules.dep"),
        0o644,
        dep_sorted.into_bytes(),
    ));

    let mut alias_out = String::new();
    for line in alias_text.lines().chain(extra_alias.lines()) {
        let mut it = line.split_whitespace();
        if it.next() == Some("alias")
            && let (Some(_), Some(m)) = (it.next(), it.next())
            && include.contains(&normalize(m))
        {
            alias_out.push_str(line);
            alias_out.push('\n');
        }
    }
    a.add(Entry::file(
        &format!("{base}/modules.alias"),
        0o644,
        alias_out.into_bytes(),
    ));

    let softdep_out: String = read_opt("modules.softdep")?
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            let mut it = l.split_whitespace();
            it.next() == Some("softdep")
                && it.next().is_some_and(|m| include.contains(&normalize(m)))
        })
        .map(|l| format!("{l}\n"))
        .collect();
    a.add(Entry::file(
        &format!("{base}/modules.softdep"),
        0o644,
        softdep_out.into_bytes(),
    ));

    for f in INDEX_FILES {
        if matches!(*f, "modules.dep" | "modules.alias" | "modules.softdep") {
            continue;
        }
        if *f == "modules.order" {
            continue; // only modprobe -r ordering uses it
        }
        if let Some(t) = read_opt(f)? {
            a.add(Entry::file(&format!("{base}/{f}"), 0o644, t.into_bytes()));
        }
    }
    Ok((a, summary))
}

/// Compresses newc bytes; xz uses CRC32 because the kernel's xz decoder accepts
/// only CRC32 or none.
pub fn compress(raw: &[u8], how: Compress) -> Result<Vec<u8>> {
    match how {
        Compress::None => Ok(raw.to_vec()),
        Compress::Xz => {
            let stream = xz2::stream::Stream::new_easy_encoder(6, xz2::stream::Check::Crc32)
                .context("xz encoder")?;
            let mut e = xz2::write::XzEncoder::new_stream(Vec::new(), stream);
            e.write_all(raw).context("xz")?;
            e.finish().context("xz")
        }
        Compress::Gzip => {
            // GzBuilder without a name or mtime writes a fixed header.
            let mut e = flate2::GzBuilder::new()
                .mtime(0)
                .write(Vec::new(), flate2::Compression::best());
            e.write_all(raw).context("gzip")?;
            e.finish().context("gzip")
        }
    }
}

/// Builds and writes the image; returns what went in.
pub fn build(opts: &Options, out: &Path) -> Result<Summary> {
    let (a, mut s) = assemble(opts)?;
    let raw = a.to_newc(opts.mtime);
    let packed = compress(&raw, opts.compress)?;
    s.uncompressed = raw.len();
    s.compressed = packed.len();
    let tmp = out.with_extension("tmp");
    fs::write(&tmp, &packed).with_context(|| format!("write {}", tmp.display()))?;
    fs::rename(&tmp, out).with_context(|| format!("rename to {}", out.display()))?;
    Ok(s)
}
