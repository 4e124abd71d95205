//! A kernel module loader for PID 1 in an initramfs without kmod, udev or busybox:
//! resolves names and aliases through the depmod index, loads dependency closures in
//! order, and loads drivers for the hardware present from device modaliases.

pub(crate) mod settle;
pub mod sys;

use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::fs::{self, File};
use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};
use nix::errno::Errno;

use crate::root::Root;
pub(crate) use bootfacts::{Compression, ModIndex, normalize, read_module};
pub use settle::{Settled, wait_for_disks};
pub use sys::{DryRun, KernelSys, ModuleSys};

/// What happened to one module of a closure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Inserted by this call.
    Loaded,
    /// Already in the kernel (/sys/module/NAME, EEXIST, or loaded earlier by us).
    AlreadyLoaded,
    /// Compiled into the kernel (modules.builtin).
    Builtin,
}

/// The result of loading one module with its dependencies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadReport {
    /// The module the request resolved to (after alias lookup).
    pub module: String,
    /// Every module considered, in load order, with what happened to it.
    pub steps: Vec<(String, Outcome)>,
    /// Optional (softdep) modules that failed, with the reason; they do not fail the load.
    pub warnings: Vec<String>,
}

impl LoadReport {
    /// Modules this call inserted, in order.
    pub fn loaded(&self) -> Vec<&str> {
        self.steps
            .iter()
            .filter(|(_, o)| *o == Outcome::Loaded)
            .map(|(n, _)| n.as_str())
            .collect()
    }
}

/// Which modules `load_for_modaliases` may load: (module name, path in modules.dep).
pub(crate) type AliasFilter = fn(&str, &str) -> bool;

/// Drivers a rescue system wants for the hardware it finds: storage, USB (for
/// USB disks and keyboards), Thunderbolt/USB4, virtio, input; plus out-of-tree
/// modules (extra/, updates/) such as the virtual USB4 host. Everything else (GPU,
/// sound, network) is left alone even when its module happens to be installed.
pub(crate) fn rescue_drivers(_name: &str, path: &str) -> bool {
    const DIRS: &[&str] = &[
        "drivers/ata/",
        "drivers/nvme/",
        "drivers/scsi/",
        "drivers/usb/",
        "drivers/thunderbolt/",
        "drivers/virtio/",
        "drivers/block/",
        "drivers/mmc/",
        "drivers/md/",
        "drivers/pci/controller/",
        "drivers/hid/",
        "drivers/input/keyboard/",
        "drivers/input/serio/",
    ];
    path.starts_with("extra/")
        || path.starts_with("updates/")
        || DIRS.iter().any(|d| path.contains(d))
}

/// Loads modules from `/lib/modules/<release>` of a root into the kernel.
pub struct Loader<S: ModuleSys = KernelSys> {
    root: Root,
    release: String,
    dir: PathBuf,
    index: ModIndex,
    sys: S,
    /// Parameters from the kernel command line (`module.param=value`), as modprobe
    /// would pass them.
    params: HashMap<String, Vec<String>>,
    /// Modules known to be in the kernel, so repeated requests cost nothing.
    present: HashSet<String>,
    filter: AliasFilter,
    failures: Vec<(String, String)>,
    /// Modules loaded in place of another (`thunderbolt` -> `usb4vhost`): whoever
    /// needs the first, by name or as a dependency, gets the second.
    stand_ins: HashMap<String, String>,
}

impl Loader<KernelSys> {
    /// A loader for the running kernel.
    pub fn new(root: &Root) -> Result<Self> {
        Self::with_sys(root, None, KernelSys)
    }
}

impl<S: ModuleSys> Loader<S> {
    /// A loader with an explicit kernel release (else read from /proc or uname) and
    /// syscall backend (tests record instead of loading).
    pub fn with_sys(root: &Root, release: Option<&str>, sys: S) -> Result<Self> {
        let release = match release {
            Some(r) => r.to_string(),
            None => kernel_release(root)?,
        };
        let dir = root.path(format!("/lib/modules/{release}"));
        let index = ModIndex::read(&dir).with_context(|| format!("modules of {release}"))?;
        let params = root
            .read_attr("/proc/cmdline")
            .map(|c| cmdline_params(&c))
            .unwrap_or_default();
        Ok(Loader {
            root: root.clone(),
            release,
            dir,
            index,
            sys,
            params,
            present: HashSet::new(),
            filter: rescue_drivers,
            failures: Vec::new(),
            stand_ins: HashMap::new(),
        })
    }

    pub fn release(&self) -> &str {
        &self.release
    }

    pub(crate) fn index(&self) -> &ModIndex {
        &self.index
    }

    /// The syscall backend (tests inspect what was recorded).
    pub fn sys(&self) -> &S {
        &self.sys
    }

    /// Replaces which modules `load_for_modaliases` may load.
    pub(crate) fn set_alias_filter(&mut self, filter: AliasFilter) {
        self.filter = filter;
    }

    /// Loads `by` wherever `module` is asked for, by name or as a dependency (a
    /// module that exports the same symbols, e.g. the virtual USB4 host for
    /// `thunderbolt`), so `module` itself never loads.
    pub fn stand_in(&mut self, module: &str, by: &str) {
        self.stand_ins.insert(normalize(module), normalize(by));
    }

    /// The module that is loaded when `n` (normalized) is asked for.
    fn resolve<'a>(&'a self, n: &'a str) -> &'a str {
        self.stand_ins.get(n).map_or(n, String::as_str)
    }

    /// Modalias loads that failed so far: (module, reason).
    pub fn failures(&self) -> &[(String, String)] {
        &self.failures
    }

    /// Whether `name` (or an alias of it) has a module file or is built in.
    pub(crate) fn available(&self, name: &str) -> bool {
        let n = normalize(name);
        self.index.modules.contains_key(&n)
            || self.index.builtin.contains(&n)
            || !self.index.exact_alias(name).is_empty()
    }

    /// Whether the kernel already has `name` (built in or loaded).
    pub fn is_present(&self, name: &str) -> bool {
        let n = normalize(name);
        let n = self.resolve(&n).to_string();
        self.present.contains(&n)
            || self.index.builtin.contains(&n)
            || self.root.path(format!("/sys/module/{n}")).exists()
    }

    /// Loads a module (name or alias such as `fs-vfat`) and its dependencies.
    pub fn load(&mut self, name: &str) -> Result<LoadReport> {
        let n = normalize(name);
        if let Some(by) = self.stand_ins.get(&n).filter(|by| **by != n).cloned() {
            return self
                .load(&by)
                .with_context(|| format!("{by} (standing in for {n})"));
        }
        if self.index.builtin.contains(&n) {
            return Ok(LoadReport {
                module: n.clone(),
                steps: vec![(n, Outcome::Builtin)],
                warnings: vec![],
            });
        }
        if self.index.modules.contains_key(&n) {
            return self.load_resolved(&n);
        }
        let candidates = self.index.exact_alias(name.trim());
        if candidates.is_empty() {
            if self.is_present(&n) {
                return Ok(LoadReport {
                    module: n.clone(),
                    steps: vec![(n, Outcome::AlreadyLoaded)],
                    warnings: vec![],
                });
            }
            bail!(
                "module {name} not found in {}",
                self.dir.join("modules.dep").display()
            );
        }
        // Like modprobe: every module of an alias is wanted; the first error wins.
        let mut first: Option<LoadReport> = None;
        let mut err = None;
        for c in candidates {
            match self.load(&c) {
                Ok(r) => {
                    if first.is_none() {
                        first = Some(r);
                    }
                }
                Err(e) => err = err.or(Some(e)),
            }
        }
        match (first, err) {
            (Some(r), _) => Ok(r),
            (None, Some(e)) => Err(e),
            (None, None) => Err(anyhow!("alias {name} resolved to nothing")),
        }
    }

    /// The load order for a module in modules.dep: dependencies first. Returns
    /// (module, required); softdep `pre:` modules are optional.
    pub(crate) fn plan(&self, name: &str) -> Result<Vec<(String, bool)>> {
        let mut order = Vec::new();
        let mut seen = HashSet::new();
        self.visit(
            &normalize(name),
            true,
            &mut seen,
            &mut Vec::new(),
            &mut order,
        )?;
        Ok(order)
    }

    fn visit(
        &self,
        n: &str,
        required: bool,
        seen: &mut HashSet<String>,
        stack: &mut Vec<String>,
        order: &mut Vec<(String, bool)>,
    ) -> Result<()> {
        let n = self.resolve(n);
        if seen.contains(n) {
            // Required wins if anything needs a module that a softdep also named.
            if required {
                for e in order.iter_mut().filter(|(m, _)| m == n) {
                    e.1 = true;
                }
            }
            return Ok(());
        }
        if stack.iter().any(|s| s == n) {
            bail!("dependency cycle: {} -> {n}", stack.join(" -> "));
        }
        if self.index.builtin.contains(n) {
            seen.insert(n.to_string());
            order.push((n.to_string(), required));
            return Ok(());
        }
        let Some(entry) = self.index.modules.get(n) else {
            if required {
                match stack.last() {
                    Some(parent) => bail!("module {n} (needed by {parent}) not in modules.dep"),
                    None => bail!("module {n} not in modules.dep"),
                }
            }
            return Ok(());
        };
        stack.push(n.to_string());
        if let Some(sd) = self.index.softdeps.get(n) {
            for p in &sd.pre {
                self.visit(p, false, seen, stack, order)?;
            }
        }
        // modules.dep lists the closure with the deepest dependencies last, so walking
        // it backwards loads them first even when depmod flattened the list.
        for d in entry.deps.iter().rev() {
            self.visit(d, required, seen, stack, order)?;
        }
        stack.pop();
        seen.insert(n.to_string());
        order.push((n.to_string(), required));
        Ok(())
    }

    fn load_resolved(&mut self, n: &str) -> Result<LoadReport> {
        let plan = self.plan(n)?;
        let mut report = LoadReport {
            module: n.to_string(),
            steps: Vec::new(),
            warnings: Vec::new(),
        };
        for (m, required) in plan {
            match self.insert(&m) {
                Ok(o) => report.steps.push((m, o)),
                Err(e) if required => {
                    return Err(if m == n {
                        e
                    } else {
                        e.context(format!("dependency of {n}"))
                    });
                }
                Err(e) => report.warnings.push(format!("{m}: {e:#}")),
            }
        }
        Ok(report)
    }

    /// Inserts one module without looking at its dependencies.
    fn insert(&mut self, n: &str) -> Result<Outcome> {
        if self.index.builtin.contains(n) {
            return Ok(Outcome::Builtin);
        }
        if self.present.contains(n) || self.root.path(format!("/sys/module/{n}")).exists() {
            self.present.insert(n.to_string());
            return Ok(Outcome::AlreadyLoaded);
        }
        let entry = self
            .index
            .modules
            .get(n)
            .ok_or_else(|| anyhow!("module {n} not in modules.dep"))?;
        let path = if entry.path.starts_with('/') {
            // Old depmod wrote absolute paths.
            self.root.path(&entry.path)
        } else {
            self.dir.join(&entry.path)
        };
        let params = CString::new(self.params.get(n).map(|p| p.join(" ")).unwrap_or_default())
            .context("module parameters contain a NUL byte")?;
        let res = match Compression::of(&path)? {
            Compression::Zstd => {
                let f = File::open(&path).with_context(|| format!("open {}", path.display()))?;
                self.sys.finit_compressed(n, &f, &params)
            }
            _ => {
                let image = read_module(&path)?;
                self.sys.init_module(n, &image, &params)
            }
        };
        match res {
            Ok(()) => {
                self.present.insert(n.to_string());
                Ok(Outcome::Loaded)
            }
            Err(Errno::EEXIST) => {
                self.present.insert(n.to_string());
                Ok(Outcome::AlreadyLoaded)
            }
            Err(e) => Err(anyhow!("load {n} ({}): {}", path.display(), explain(e))),
        }
    }

    /// Loads drivers for the devices in /sys/bus/*/devices that have no driver yet,
    /// matching their modalias against modules.alias (restricted by the alias filter,
    /// `rescue_drivers` by default). Returns the modules it matched and loaded.
    /// Failures do not stop the others; see `failures()`. Call it again after new
    /// devices appear (e.g. USB devices behind a freshly loaded host controller).
    pub fn load_for_modaliases(&mut self) -> Result<Vec<String>> {
        let mut wanted: Vec<String> = Vec::new();
        for alias in device_modaliases(&self.root) {
            for m in self.index.match_modalias(&alias) {
                if !wanted.contains(&m) {
                    wanted.push(m);
                }
            }
        }
        let mut loaded = Vec::new();
        for m in wanted {
            let path = match self.index.modules.get(&m) {
                Some(e) => e.path.clone(),
                None => continue, // built in, or an alias for a missing module
            };
            if !(self.filter)(&m, &path) || self.is_present(&m) {
                continue;
            }
            match self.load(&m) {
                Ok(r) => {
                    if r.steps.iter().any(|(_, o)| *o == Outcome::Loaded) {
                        loaded.push(m);
                    }
                }
                Err(e) => self.failures.push((m, format!("{e:#}"))),
            }
        }
        Ok(loaded)
    }
}

/// The running kernel's release: /proc/sys/kernel/osrelease in the root, else uname.
pub(crate) fn kernel_release(root: &Root) -> Result<String> {
    if let Some(r) = root
        .read_attr("/proc/sys/kernel/osrelease")
        .filter(|r| !r.is_empty())
    {
        return Ok(r);
    }
    let u = nix::sys::utsname::uname().context("uname")?;
    Ok(u.release().to_string_lossy().into_owned())
}

/// Modaliases of devices that have no driver bound, sorted and without duplicates.
pub(crate) fn device_modaliases(root: &Root) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(buses) = fs::read_dir(root.path("/sys/bus")) else {
        return out;
    };
    let mut buses: Vec<PathBuf> = buses.filter_map(|e| e.ok()).map(|e| e.path()).collect();
    buses.sort();
    for bus in buses {
        let Ok(devs) = fs::read_dir(bus.join("devices")) else {
            continue;
        };
        for dev in devs.filter_map(|e| e.ok()) {
            let d = dev.path();
            if d.join("driver").exists() {
                continue;
            }
            if let Ok(a) = fs::read_to_string(d.join("modalias")) {
                let a = a.trim();
                if !a.is_empty() {
                    out.push(a.to_string());
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// `module.param=value` words of the kernel command line, by module.
fn cmdline_params(cmdline: &str) -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for word in cmdline.split_whitespace() {
        let Some((key, _)) = word.split_once('=') else {
            continue;
        };
        if let Some((module, _)) = key.split_once('.')
            && !module.is_empty()
            && module != "rescue"
        {
            let param = &word[module.len() + 1..];
            out.entry(normalize(module))
                .or_default()
                .push(param.to_string());
        }
    }
    out
}

/// Adds the likely cause to errno values init_module commonly returns.
fn explain(e: Errno) -> String {
    let hint = match e {
        Errno::ENOEXEC => "not a module for this kernel (bad format or vermagic)",
        Errno::EKEYREJECTED | Errno::EBADMSG => "signature rejected (Secure Boot lockdown?)",
        Errno::EPERM => "not allowed (need root / CAP_SYS_MODULE, or modules disabled)",
        Errno::ENOENT => "unknown symbol in module: a dependency is missing or mismatched",
        Errno::EINVAL => "invalid module or parameters",
        _ => "",
    };
    if hint.is_empty() {
        e.desc().to_string()
    } else {
        format!("{}: {hint}", e.desc())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cmdline_params() {
        let p = cmdline_params(
            "console=ttyS0 thunderbolt.xdomain=1 usb-storage.delay_use=0 rescue.mode=backup",
        );
        assert_eq!(p["thunderbolt"], vec!["xdomain=1"]);
        assert_eq!(p["usb_storage"], vec!["delay_use=0"]);
        assert!(!p.contains_key("rescue"));
    }

    #[test]
    fn filter_keeps_storage_and_usb4() {
        assert!(rescue_drivers(
            "nvme",
            "kernel/drivers/nvme/host/nvme.ko.xz"
        ));
        assert!(rescue_drivers("usb4vhost", "extra/usb4vhost.ko"));
        assert!(!rescue_drivers(
            "i915",
            "kernel/drivers/gpu/drm/i915/i915.ko.xz"
        ));
    }
}
