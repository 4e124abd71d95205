//! Turning names that come from the peer (hostnames, disk names, labels) into
//! file names that cannot escape the store: no `/`, no `..`, no control
//! characters, bounded length, unique within a backup.

use std::collections::HashSet;

/// Longest file-name component we create (well under NAME_MAX with suffixes).
pub const MAX_NAME: usize = 64;

/// A safe single path component made from `raw`, or `fallback` when nothing is left.
pub fn sanitize(raw: &str, fallback: &str) -> String {
    let mut out: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '+') {
                c
            } else {
                '_'
            }
        })
        .collect();
    // A leading dot would hide the file or make "." and ".."; trailing dots and
    // underscores are noise from replaced characters.
    while out.starts_with('.') || out.starts_with('_') {
        out.remove(0);
    }
    while out.ends_with('.') || out.ends_with('_') {
        out.pop();
    }
    if out.len() > MAX_NAME {
        out.truncate(MAX_NAME);
        while out.ends_with('.') {
            out.pop();
        }
    }
    if out.is_empty() || out.chars().all(|c| c == '.') {
        fallback.to_string()
    } else {
        out
    }
}

/// Whether `name` is already what `sanitize` would produce (for names a peer
/// sends back to us, such as a backup id to restore).
pub fn is_safe(name: &str) -> bool {
    !name.is_empty() && sanitize(name, "") == name
}

/// Makes every name unique by appending -2, -3, ... (case-insensitively, so a
/// store on vfat or exFAT does not merge two disks).
pub fn unique(names: &[String]) -> Vec<String> {
    let mut seen = HashSet::new();
    names
        .iter()
        .map(|n| {
            let mut candidate = n.clone();
            let mut i = 2;
            while !seen.insert(candidate.to_ascii_lowercase()) {
                let suffix = format!("-{i}");
                let mut base = n.clone();
                base.truncate(MAX_NAME - suffix.len());
                candidate = format!("{base}{suffix}");
                i += 1;
            }
            candidate
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_names_stay_inside() {
        for raw in [
            "..",
            ".",
            "../../etc",
            "/etc/passwd",
            "a/b",
            "a\0b",
            "\n\t",
            "",
            "....",
        ] {
            let s = sanitize(raw, "disk");
            assert!(!s.contains('/') && !s.contains('\0'), "{raw:?} -> {s:?}");
            assert!(
                s != "." && s != ".." && !s.starts_with('.'),
                "{raw:?} -> {s:?}"
            );
            assert!(!s.chars().any(|c| c.is_control()));
        }
        assert_eq!(sanitize("../../etc", "x"), "etc");
        assert_eq!(sanitize("..", "x"), "x");
        assert_eq!(sanitize("nvme0n1", "x"), "nvme0n1");
        let long = "a".repeat(5000);
        assert_eq!(sanitize(&long, "x").len(), MAX_NAME);
        assert!(is_safe("nvme0n1"));
        assert!(!is_safe("../x"));
        assert!(!is_safe(""));
    }

    #[test]
    fn duplicates_get_suffixes() {
        let names = vec!["sda".to_string(), "SDA".into(), "sda".into(), "sdb".into()];
        assert_eq!(unique(&names), vec!["sda", "SDA-2", "sda-3", "sdb"]);
    }
}
