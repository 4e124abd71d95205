//! Assembles the rescue initramfs: the static `rescue` as /init, the kernel modules
//! it needs with their dependency closure and a filtered depmod index, the mount
//! points and /dev/console; then compresses it (xz with CRC32, or gzip).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use bootfacts::index::{
    DepEntry, IndexTexts, alias_entry, dep_line, parse_builtin, parse_dep, parse_softdep,
    softdep_module,
};
use bootfacts::{Compression, name_of_path, needed, normalize, read_module};

use crate::newc::{Archive, Entry};

/// Index files copied as they are (modules.dep, modules.alias and modules.softdep
/// are filtered to the included modules; modules.order only serves `modprobe -r`).
const COPIED_INDEX_FILES: &[&str] = &["modules.builtin", "modules.builtin.modinfo"];

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

/// The kernel's index and what the image takes from it.
struct Plan {
    kver: String,
    /// lib/modules/<kver> of the kernel directory.
    mdir: PathBuf,
    texts: IndexTexts,
    /// modules.dep, with the out-of-tree modules added.
    deps: HashMap<String, DepEntry>,
    /// modules.alias lines for the out-of-tree modules, from their .modinfo.
    extra_alias: String,
    /// Out-of-tree modules: path in the image (extra/NAME.ko) -> source file.
    extra_files: BTreeMap<String, PathBuf>,
    /// The modules asked for, whose closure goes in.
    roots: Vec<String>,
}

impl Plan {
    fn read(opts: &Options) -> Result<Self> {
        let kver = find_kver(&opts.kernel_dir, opts.kver.as_deref())?;
        let mdir = opts.kernel_dir.join("lib/modules").join(&kver);
        let texts = IndexTexts::read(&mdir)?;
        let mut plan = Plan {
            kver,
            deps: parse_dep(&texts.dep),
            texts,
            mdir,
            extra_alias: String::new(),
            extra_files: BTreeMap::new(),
            roots: needed::image_modules().map(str::to_string).collect(),
        };
        plan.roots.extend(opts.modules.iter().map(|m| normalize(m)));
        for p in &opts.extra_modules {
            plan.add_extra(p)?;
        }
        Ok(plan)
    }

    /// An out-of-tree module: its dependencies and aliases come from .modinfo.
    fn add_extra(&mut self, p: &Path) -> Result<()> {
        let file = p
            .file_name()
            .and_then(|f| f.to_str())
            .with_context(|| format!("bad module path {}", p.display()))?;
        if !file.contains(".ko") {
            bail!("{}: not a .ko file", p.display());
        }
        // A zstd module is shipped as it is; only the kernel can read its .modinfo.
        let plain = match Compression::of(p) {
            Ok(Compression::Zstd) => {
                fs::read(p).with_context(|| format!("read {}", p.display()))?
            }
            Ok(_) => read_module(p)?,
            Err(_) => fs::read(p).with_context(|| format!("read {}", p.display()))?,
        };
        let name = modinfo(&plain, "name")
            .into_iter()
            .next()
            .map(|n| normalize(&n))
            .unwrap_or_else(|| name_of_path(file));
        let deps: Vec<String> = modinfo(&plain, "depends")
            .iter()
            .flat_map(|d| d.split(',').map(normalize).collect::<Vec<_>>())
            .filter(|d| !d.is_empty())
            .collect();
        for a in modinfo(&plain, "alias") {
            self.extra_alias.push_str(&format!("alias {a} {name}\n"));
        }
        let path = format!("extra/{file}");
        self.deps.insert(
            name.clone(),
            DepEntry {
                path: path.clone(),
                deps,
            },
        );
        self.extra_files.insert(path, p.to_path_buf());
        self.roots.push(name);
        Ok(())
    }

    /// The closure: each wanted module, its modules.dep dependencies and softdeps;
    /// wanted modules that are not modules go to the summary as built in or missing.
    fn closure(&self, summary: &mut Summary) -> BTreeSet<String> {
        let softdeps = parse_softdep(&self.texts.softdep);
        let builtin = parse_builtin(&self.texts.builtin);
        let mut include: BTreeSet<String> = BTreeSet::new();
        let mut stack: Vec<(String, bool)> = self.roots.iter().map(|r| (r.clone(), true)).collect();
        while let Some((m, wanted)) = stack.pop() {
            if include.contains(&m) {
                continue;
            }
            if let Some(e) = self.deps.get(&m) {
                include.insert(m.clone());
                stack.extend(e.deps.iter().map(|x| (x.clone(), false)));
                if let Some(s) = softdeps.get(&m) {
                    stack.extend(s.pre.iter().chain(&s.post).map(|x| (x.clone(), false)));
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
        include
    }

    /// The included module files, and modules.dep for them: in modules.dep's
    /// original order, so the loader sees what depmod wrote; extras go last.
    fn add_modules(&self, a: &mut Archive, base: &str, include: &BTreeSet<String>) -> Result<()> {
        let mut dep_lines: BTreeMap<String, String> = BTreeMap::new();
        for m in include {
            let e = &self.deps[m];
            let src = match self.extra_files.get(&e.path) {
                Some(p) => p.clone(),
                None => self.mdir.join(&e.path),
            };
            let bytes = fs::read(&src).with_context(|| format!("read {}", src.display()))?;
            a.add(Entry::file(&format!("{base}/{}", e.path), 0o644, bytes));
            let dpaths: Vec<&str> = e
                .deps
                .iter()
                .filter_map(|x| self.deps.get(x).map(|d| d.path.as_str()))
                .collect();
            let line = format!("{}: {}", e.path, dpaths.join(" "));
            dep_lines.insert(e.path.clone(), line.trim_end().to_string());
        }
        let mut dep_sorted = String::new();
        for line in self.texts.dep.lines() {
            if let Some((p, _)) = dep_line(line)
                && let Some(l) = dep_lines.remove(p)
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
        Ok(())
    }

    /// modules.alias and modules.softdep for the included modules only, the other
    /// index files as they are.
    fn add_index(&self, a: &mut Archive, base: &str, include: &BTreeSet<String>) -> Result<()> {
        let included = |m: &str| include.contains(&normalize(m));
        let keep = |text: &str, module_of: fn(&str) -> Option<&str>| -> Vec<u8> {
            text.lines()
                .filter(|l| module_of(l).is_some_and(included))
                .flat_map(|l| [l, "\n"])
                .collect::<String>()
                .into_bytes()
        };
        let aliases = format!("{}{}", self.texts.alias, self.extra_alias);
        a.add(Entry::file(
            &format!("{base}/modules.alias"),
            0o644,
            keep(&aliases, alias_module),
        ));
        a.add(Entry::file(
            &format!("{base}/modules.softdep"),
            0o644,
            keep(&self.texts.softdep, softdep_module),
        ));
        for f in COPIED_INDEX_FILES {
            let p = self.mdir.join(f);
            match fs::read(&p) {
                Ok(b) => a.add(Entry::file(&format!("{base}/{f}"), 0o644, b)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("read {}", p.display())),
            }
        }
        Ok(())
    }
}

/// The module of a modules.alias line.
fn alias_module(line: &str) -> Option<&str> {
    alias_entry(line).map(|(_, m)| m)
}

/// The files every image has: the static rescue as /init, the mount points and the
/// device nodes the console needs before devtmpfs.
fn add_base(a: &mut Archive, rescue_bin: &Path) -> Result<()> {
    let rescue = fs::read(rescue_bin)
        .with_context(|| format!("read rescue binary {}", rescue_bin.display()))?;
    a.add(Entry::file("init", 0o755, rescue));
    a.add(Entry::symlink("bin/rescue", "/init"));
    for d in ["dev", "proc", "sys", "run", "etc", "root", "mnt"] {
        a.add(Entry::dir(d, 0o755));
    }
    a.add(Entry::dir("tmp", 0o1777));
    add_devices(a);
    Ok(())
}

/// The device nodes the console needs before devtmpfs is mounted.
pub(crate) fn add_devices(a: &mut Archive) {
    a.add(Entry::chardev("dev/console", 0o600, 5, 1));
    a.add(Entry::chardev("dev/null", 0o666, 1, 3));
}

/// Builds the archive (uncompressed) and says what went in.
pub fn assemble(opts: &Options) -> Result<(Archive, Summary)> {
    let plan = Plan::read(opts)?;
    let mut summary = Summary {
        kver: plan.kver.clone(),
        ..Default::default()
    };
    let include = plan.closure(&mut summary);
    let mut a = Archive::new();
    add_base(&mut a, &opts.rescue)?;
    let base = format!("lib/modules/{}", plan.kver);
    a.add(Entry::dir(&base, 0o755));
    plan.add_modules(&mut a, &base, &include)?;
    plan.add_index(&mut a, &base, &include)?;
    summary.modules = include.into_iter().collect();
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
    write_file(out, &packed)?;
    Ok(s)
}

/// Writes `bytes` to `out` under a temporary name first, so `out` is whole or absent.
pub fn write_file(out: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = out.with_extension("tmp");
    fs::write(&tmp, bytes).with_context(|| format!("write {}", tmp.display()))?;
    fs::rename(&tmp, out).with_context(|| format!("rename to {}", out.display()))
}
