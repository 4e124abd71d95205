//! `image pack`: a small initramfs from given files and kernel modules to load, for
//! the test rigs' busybox guests (tests/vm/build-initramfs.py). Modules go in
//! decompressed as lib/modules/NAME.ko with lib/modules/load.list, the load order
//! (dependencies first, from modules.dep through `bootfacts`), which the guest's
//! init insmods in turn; the archive is written as the rescue image is (newc.rs).

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use bootfacts::index::{DepEntry, IndexTexts, parse_builtin, parse_dep};
use bootfacts::{normalize, read_module};

use crate::build::{add_devices, find_kver, modinfo};
use crate::newc::{Archive, Entry};

/// What to pack.
#[derive(Debug, Clone, Default)]
pub struct PackOptions {
    /// A kernel directory holding lib/modules/<kver>/; needed for modules only.
    pub kernel_dir: Option<PathBuf>,
    pub kver: Option<String>,
    /// In-tree modules to load, by name, each after its dependencies.
    pub load: Vec<String>,
    /// Out-of-tree module files to load last (their dependencies from .modinfo).
    pub load_ko: Vec<PathBuf>,
    /// Directories to create (0755).
    pub dirs: Vec<String>,
    /// (source, path in the archive, permissions).
    pub files: Vec<(PathBuf, String, u32)>,
    /// (path in the archive, target).
    pub symlinks: Vec<(String, String)>,
}

/// What went into a packed archive.
#[derive(Debug, Clone, Default)]
pub struct Packed {
    /// load.list: module file names without .ko, in load order.
    pub modules: Vec<String>,
    /// Wanted modules the kernel has built in (not packed).
    pub builtin: Vec<String>,
}

/// The modules of one kernel, and the load order being made.
struct Loader {
    kver: String,
    mdir: PathBuf,
    deps: std::collections::HashMap<String, DepEntry>,
    builtin: HashSet<String>,
    seen: HashSet<String>,
    /// (name in load.list, module source file), dependencies first.
    order: Vec<(String, PathBuf)>,
    packed: Packed,
}

impl Loader {
    fn read(kernel_dir: &Path, kver: Option<&str>) -> Result<Self> {
        let kver = find_kver(kernel_dir, kver)?;
        let mdir = kernel_dir.join("lib/modules").join(&kver);
        let texts = IndexTexts::read(&mdir)?;
        Ok(Loader {
            kver,
            deps: parse_dep(&texts.dep),
            builtin: parse_builtin(&texts.builtin),
            mdir,
            seen: HashSet::new(),
            order: Vec::new(),
            packed: Packed::default(),
        })
    }

    /// Adds `name` after its dependencies (modules.dep lists them all, so a
    /// depth-first walk puts every one before what needs it).
    fn want(&mut self, name: &str) -> Result<()> {
        let key = normalize(name);
        if self.builtin.contains(&key) {
            if !self.packed.builtin.contains(&key) {
                self.packed.builtin.push(key);
            }
            return Ok(());
        }
        if !self.seen.insert(key.clone()) {
            return Ok(());
        }
        let Some(e) = self.deps.get(&key).cloned() else {
            bail!(
                "module {name} not found in {} (not built for this kernel?)",
                self.mdir.display()
            );
        };
        for d in &e.deps {
            self.want(d)?;
        }
        self.order
            .push((file_stem(&e.path), self.mdir.join(&e.path)));
        Ok(())
    }

    /// An out-of-tree module: refused when built for another kernel; its
    /// dependencies come first.
    fn want_ko(&mut self, ko: &Path) -> Result<Vec<u8>> {
        let data = read_module(ko)?;
        let vermagic = modinfo(&data, "vermagic").into_iter().next();
        let built_for = vermagic.as_deref().and_then(|v| v.split(' ').next());
        if let Some(v) = built_for.filter(|v| *v != self.kver) {
            bail!(
                "{} was built for kernel {v}, but the kernel is {}: rebuild it",
                ko.display(),
                self.kver
            );
        }
        for deps in modinfo(&data, "depends") {
            for d in deps.split(',').filter(|d| !d.is_empty()) {
                self.want(d)?;
            }
        }
        Ok(data)
    }
}

/// A module file's name without its directory, `.ko` and compression suffix.
fn file_stem(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.split(".ko").next().unwrap_or(file).to_string()
}

/// Adds the modules to load, decompressed, and lib/modules/load.list.
fn add_modules(a: &mut Archive, opts: &PackOptions) -> Result<Packed> {
    let Some(kernel_dir) = &opts.kernel_dir else {
        if opts.load.is_empty() && opts.load_ko.is_empty() {
            return Ok(Packed::default());
        }
        bail!("modules to load need --kernel-dir");
    };
    let mut l = Loader::read(kernel_dir, opts.kver.as_deref())?;
    for m in &opts.load {
        l.want(m)?;
    }
    let mut extra = Vec::new();
    for ko in &opts.load_ko {
        let data = l.want_ko(ko)?;
        let name = ko.file_name().and_then(|f| f.to_str()).unwrap_or_default();
        extra.push((file_stem(name), data));
    }
    for (name, src) in std::mem::take(&mut l.order) {
        a.add(Entry::file(
            &format!("lib/modules/{name}.ko"),
            0o644,
            read_module(&src)?,
        ));
        l.packed.modules.push(name);
    }
    for (name, data) in extra {
        a.add(Entry::file(&format!("lib/modules/{name}.ko"), 0o644, data));
        l.packed.modules.push(name);
    }
    let list: String = l.packed.modules.iter().flat_map(|m| [m, "\n"]).collect();
    a.add(Entry::file(
        "lib/modules/load.list",
        0o644,
        list.into_bytes(),
    ));
    Ok(l.packed)
}

/// Builds the archive: the device nodes a console needs, then what `opts` names.
pub fn pack(opts: &PackOptions) -> Result<(Archive, Packed)> {
    let mut a = Archive::new();
    add_devices(&mut a);
    for d in &opts.dirs {
        a.add(Entry::dir(d, 0o755));
    }
    for (src, dest, perm) in &opts.files {
        let data = fs::read(src).with_context(|| format!("read {}", src.display()))?;
        a.add(Entry::file(dest, *perm, data));
    }
    for (dest, target) in &opts.symlinks {
        a.add(Entry::symlink(dest, target));
    }
    let packed = add_modules(&mut a, opts)?;
    Ok((a, packed))
}
