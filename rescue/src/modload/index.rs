//! Reads the depmod index files (modules.dep, modules.alias, modules.builtin,
//! modules.softdep) that tell the loader where a module lives and what it needs.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::path::Path;

use anyhow::{Context, Result};

/// Module names treat '-' and '_' as the same character; the kernel uses '_'.
pub fn normalize(name: &str) -> String {
    name.trim().replace('-', "_")
}

/// The module name of a modules.dep path such as `kernel/fs/ext4/ext4.ko.xz`.
pub fn name_of_path(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    normalize(stem)
}

/// One module as modules.dep lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DepEntry {
    /// Path relative to the modules directory, as written in modules.dep.
    pub path: String,
    /// Normalized names of the modules it depends on, in modules.dep order.
    pub deps: Vec<String>,
}

/// Pre- and post-dependencies from modules.softdep.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SoftDep {
    pub pre: Vec<String>,
    pub post: Vec<String>,
}

/// The parsed index of one modules directory.
#[derive(Debug, Clone, Default)]
pub struct ModIndex {
    pub modules: HashMap<String, DepEntry>,
    /// (pattern, module) in file order, which is the order candidates are tried in.
    pub aliases: Vec<(String, String)>,
    pub builtin: HashSet<String>,
    pub softdeps: HashMap<String, SoftDep>,
}

impl ModIndex {
    /// Reads the index files in `dir`; only modules.dep is required.
    pub fn read(dir: &Path) -> Result<Self> {
        let dep = fs::read_to_string(dir.join("modules.dep"))
            .with_context(|| format!("read {}", dir.join("modules.dep").display()))?;
        let mut idx = ModIndex {
            modules: parse_dep(&dep),
            ..Default::default()
        };
        if let Some(text) = read_optional(&dir.join("modules.alias"))? {
            idx.aliases = parse_alias(&text);
        }
        if let Some(text) = read_optional(&dir.join("modules.builtin"))? {
            idx.builtin = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(name_of_path)
                .collect();
        }
        if let Some(text) = read_optional(&dir.join("modules.softdep"))? {
            idx.softdeps = parse_softdep(&text);
        }
        Ok(idx)
    }

    /// Module names an exact alias (such as `fs-vfat`) stands for.
    pub fn exact_alias(&self, alias: &str) -> Vec<String> {
        self.aliases
            .iter()
            .filter(|(pat, _)| pat == alias)
            .map(|(_, m)| m.clone())
            .collect()
    }

    /// Module names whose alias pattern matches a device modalias.
    pub fn match_modalias(&self, modalias: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for (pat, module) in &self.aliases {
            if super::glob::glob_match(pat, modalias) && !out.contains(module) {
                out.push(module.clone());
            }
        }
        out
    }
}

fn read_optional(path: &Path) -> Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
    }
}

/// `path: dep dep ...` per line.
pub fn parse_dep(text: &str) -> HashMap<String, DepEntry> {
    let mut out = HashMap::new();
    for line in text.lines() {
        let Some((path, deps)) = line.split_once(':') else {
            continue;
        };
        let path = path.trim();
        if path.is_empty() {
            continue;
        }
        let deps = deps.split_whitespace().map(name_of_path).collect();
        out.insert(
            name_of_path(path),
            DepEntry {
                path: path.to_string(),
                deps,
            },
        );
    }
    out
}

/// `alias PATTERN MODULE` per line; comments and other lines are skipped.
pub fn parse_alias(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| {
            let mut it = line.split_whitespace();
            if it.next()? != "alias" {
                return None;
            }
            let pat = it.next()?;
            let module = it.next()?;
            Some((pat.to_string(), normalize(module)))
        })
        .collect()
}

/// `softdep MODULE pre: a b post: c` per line.
pub fn parse_softdep(text: &str) -> HashMap<String, SoftDep> {
    let mut out: HashMap<String, SoftDep> = HashMap::new();
    for line in text.lines() {
        let mut it = line.split_whitespace();
        if it.next() != Some("softdep") {
            continue;
        }
        let Some(module) = it.next() else { continue };
        let entry = out.entry(normalize(module)).or_default();
        let mut post = false;
        for word in it {
            match word {
                "pre:" => post = false,
                "post:" => post = true,
                w if post => entry.post.push(normalize(w)),
                w => entry.pre.push(normalize(w)),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(name_of_path("kernel/fs/ext4/ext4.ko.xz"), "ext4");
        assert_eq!(
            name_of_path("kernel/drivers/usb/storage/usb-storage.ko"),
            "usb_storage"
        );
        assert_eq!(normalize("usb-storage"), "usb_storage");
    }

    #[test]
    fn parses_dep_alias_softdep() {
        let dep = parse_dep(
            "kernel/a/thunderbolt_stream.ko.xz: kernel/a/thunderbolt.ko.xz kernel/fs/configfs.ko.xz\n\
             kernel/fs/configfs.ko.xz:\n",
        );
        assert_eq!(
            dep["thunderbolt_stream"].deps,
            vec!["thunderbolt", "configfs"]
        );
        assert!(dep["configfs"].deps.is_empty());
        let alias = parse_alias("# c\nalias fs-vfat vfat\nalias pci:v*d* nvme\n");
        assert_eq!(alias.len(), 2);
        let sd = parse_softdep("softdep crc32c pre: crc32c-intel post: x-y\n");
        assert_eq!(sd["crc32c"].pre, vec!["crc32c_intel"]);
        assert_eq!(sd["crc32c"].post, vec!["x_y"]);
    }
}
