//! Reads the depmod index files (modules.dep, modules.alias, modules.builtin,
//! modules.softdep) that tell the loader where a module lives and what it needs,
//! and the image builder which files a module closure takes.

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
        Ok(Self::parse(&IndexTexts::read(dir)?))
    }

    /// Parses index files already read.
    pub fn parse(t: &IndexTexts) -> Self {
        ModIndex {
            modules: parse_dep(&t.dep),
            aliases: parse_alias(&t.alias),
            builtin: parse_builtin(&t.builtin),
            softdeps: parse_softdep(&t.softdep),
        }
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
            if crate::glob::glob_match(pat, modalias) && !out.contains(module) {
                out.push(module.clone());
            }
        }
        out
    }
}

/// The text of the index files of one modules directory; the optional ones are
/// empty when absent.
#[derive(Debug, Clone, Default)]
pub struct IndexTexts {
    pub dep: String,
    pub alias: String,
    pub builtin: String,
    pub softdep: String,
}

impl IndexTexts {
    /// Reads them from `dir`; only modules.dep is required.
    pub fn read(dir: &Path) -> Result<Self> {
        let dep = dir.join("modules.dep");
        let dep = fs::read(&dep).with_context(|| format!("read {}", dep.display()))?;
        Ok(IndexTexts {
            dep: String::from_utf8_lossy(&dep).into_owned(),
            alias: read_optional(&dir.join("modules.alias"))?.unwrap_or_default(),
            builtin: read_optional(&dir.join("modules.builtin"))?.unwrap_or_default(),
            softdep: read_optional(&dir.join("modules.softdep"))?.unwrap_or_default(),
        })
    }
}

/// A file's text (invalid UTF-8 replaced), or `None` when it does not exist.
pub fn read_optional(path: &Path) -> Result<Option<String>> {
    match fs::read(path) {
        Ok(b) => Ok(Some(String::from_utf8_lossy(&b).into_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
    }
}

/// (module path, dependency paths) of a modules.dep line `path: dep dep ...`.
pub fn dep_line(line: &str) -> Option<(&str, &str)> {
    let (path, deps) = line.split_once(':')?;
    Some((path.trim(), deps)).filter(|(p, _)| !p.is_empty())
}

/// (pattern, module as written) of a modules.alias line `alias PATTERN MODULE`.
pub fn alias_entry(line: &str) -> Option<(&str, &str)> {
    let mut it = line.split_whitespace();
    if it.next()? != "alias" {
        return None;
    }
    Some((it.next()?, it.next()?))
}

/// The module (as written) of a modules.softdep line `softdep MODULE pre: ...`.
pub fn softdep_module(line: &str) -> Option<&str> {
    let mut it = line.split_whitespace();
    if it.next()? != "softdep" {
        return None;
    }
    it.next()
}

/// Normalized names of the modules modules.builtin lists (one path per line).
pub fn parse_builtin(text: &str) -> HashSet<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(name_of_path)
        .collect()
}

/// `path: dep dep ...` per line.
pub fn parse_dep(text: &str) -> HashMap<String, DepEntry> {
    let mut out = HashMap::new();
    for line in text.lines() {
        let Some((path, deps)) = dep_line(line) else {
            continue;
        };
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
        .filter_map(alias_entry)
        .map(|(pat, module)| (pat.to_string(), normalize(module)))
        .collect()
}

/// `softdep MODULE pre: a b post: c` per line.
pub fn parse_softdep(text: &str) -> HashMap<String, SoftDep> {
    let mut out: HashMap<String, SoftDep> = HashMap::new();
    for line in text.lines() {
        let Some(module) = softdep_module(line) else {
            continue;
        };
        let entry = out.entry(normalize(module)).or_default();
        let mut post = false;
        for word in line.split_whitespace().skip(2) {
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
        // The names `rescue status` looks up (it had its own copy of this).
        assert_eq!(
            name_of_path("kernel/drivers/thunderbolt/thunderbolt_stream.ko.xz"),
            "thunderbolt_stream"
        );
        assert_eq!(name_of_path("thunderbolt-stream.ko"), "thunderbolt_stream");
        assert_eq!(name_of_path("kernel/fs/configfs/configfs.ko"), "configfs");
        assert_eq!(name_of_path(""), "");
    }

    #[test]
    fn line_grammar() {
        assert_eq!(
            dep_line("kernel/a.ko: b.ko"),
            Some(("kernel/a.ko", " b.ko"))
        );
        assert_eq!(dep_line(" : b.ko"), None);
        assert_eq!(dep_line("no colon"), None);
        assert_eq!(alias_entry("alias fs-vfat vfat"), Some(("fs-vfat", "vfat")));
        assert_eq!(alias_entry("# alias x y"), None);
        assert_eq!(softdep_module("softdep ext4 pre: crc32c"), Some("ext4"));
        assert_eq!(softdep_module("options ext4 x=1"), None);
        let b = parse_builtin("kernel/drivers/virtio/virtio_pci.ko\n\n kernel/x/a-b.ko \n");
        assert!(b.contains("virtio_pci") && b.contains("a_b") && b.len() == 2);
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
