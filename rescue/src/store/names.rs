//! Turning names that come from the peer (hostnames, disk names, labels) into
//! file names that cannot escape the store: no `/`, no `..`, no control
//! characters, bounded length, unique within a backup. A name too long is cut
//! and ends in a hash of the whole name, so the same long name always gives the
//! same short one (a resume finds its files) and two long names that share
//! their start stay apart; the full name is kept in the manifest.

use std::collections::HashSet;

use sha2::{Digest, Sha256};

/// Longest name made from a peer's name (a host, backup id or disk file stem).
pub(crate) const MAX_NAME: usize = 64;

/// Longest store file name: a stem of `MAX_NAME` plus an extension such as
/// `.chunks` (well under NAME_MAX, 255, also with the `.tmp` wrapping).
pub(crate) const MAX_FILE: usize = MAX_NAME + 16;

/// Characters a store name may contain.
fn allowed(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '+')
}

/// A safe single path component made from `raw`, or `fallback` when nothing is left.
pub(crate) fn sanitize(raw: &str, fallback: &str) -> String {
    let mut out: String = raw
        .chars()
        .map(|c| if allowed(c) { c } else { '_' })
        .collect();
    // A leading dot would hide the file or make "." and ".."; trailing dots and
    // underscores are noise from replaced characters.
    while out.starts_with('.') || out.starts_with('_') {
        out.remove(0);
    }
    while out.ends_with('.') || out.ends_with('_') {
        out.pop();
    }
    if out.is_empty() || out.chars().all(|c| c == '.') {
        return fallback.to_string();
    }
    if out.len() > MAX_NAME {
        let hash = Sha256::digest(raw.as_bytes());
        return with_suffix(&out, &format!("-{}", crate::util::hex(&hash[..4])));
    }
    out
}

/// `base` (already sanitised) cut so that `base + suffix` fits in `MAX_NAME`,
/// never leaving a `.` or `_` before the suffix.
pub(crate) fn with_suffix(base: &str, suffix: &str) -> String {
    let mut b = base.to_string();
    b.truncate(MAX_NAME.saturating_sub(suffix.len()));
    while b.ends_with('.') || b.ends_with('_') {
        b.pop();
    }
    format!("{b}{suffix}")
}

/// Whether `name` may be a file in a backup directory: a safe stem with an
/// extension, or a name made by `sanitize`. It never starts with a dot (so it
/// is neither `.` nor `..` nor hidden) and holds no `/`.
pub(crate) fn is_safe_file(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_FILE
        && !name.starts_with('.')
        && name.chars().all(allowed)
}

/// Whether `name` is already what `sanitize` would produce (for names a peer
/// sends back to us, such as a backup id to restore).
pub fn is_safe(name: &str) -> bool {
    !name.is_empty() && sanitize(name, "") == name
}

/// Makes every name unique by appending -2, -3, ... (case-insensitively, so a
/// store on vfat or exFAT does not merge two disks).
pub(crate) fn unique(names: &[String]) -> Vec<String> {
    let mut seen = HashSet::new();
    names
        .iter()
        .map(|n| {
            let mut candidate = n.clone();
            let mut i = 2;
            while !seen.insert(candidate.to_ascii_lowercase()) {
                candidate = with_suffix(n, &format!("-{i}"));
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
        assert!(is_safe(&sanitize(&long, "x")));
        assert!(is_safe("nvme0n1"));
        assert!(!is_safe("../x"));
        assert!(!is_safe(""));
    }

    #[test]
    fn long_names_are_cut_with_a_stable_hash() {
        // 100 characters, and one that differs only after the cut.
        let a = format!(
            "{}{}",
            "disk-image-of-the-office-pc_".repeat(3),
            "x".repeat(16)
        );
        let b = format!("{}y", &a[..a.len() - 1]);
        let (sa, sb) = (sanitize(&a, "d"), sanitize(&b, "d"));
        assert!(sa.len() <= MAX_NAME && sb.len() <= MAX_NAME);
        assert_ne!(sa, sb);
        assert_eq!(sa, sanitize(&a, "d"), "the same name gives the same stem");
        assert!(is_safe(&sa) && is_safe(&sb), "{sa} {sb}");
        // The file names made from a cut stem are accepted.
        assert!(is_safe_file(&format!("{sa}.chunks")));
        // A label cut where a replaced character was: no trailing `_`.
        let id = sanitize(
            "20261201-082600-Backup of the office workstation before the big upgrade",
            "x",
        );
        assert!(is_safe(&id), "{id}");
        assert!(
            id.starts_with("20261201-082600-Backup_of_the_office"),
            "{id}"
        );
        assert!(!is_safe_file(".hidden") && !is_safe_file("a/b") && !is_safe_file(".."));
        assert_eq!(with_suffix(&"a_".repeat(40), "-2").len(), MAX_NAME - 1);
    }

    #[test]
    fn duplicates_get_suffixes() {
        let names = vec!["sda".to_string(), "SDA".into(), "sda".into(), "sdb".into()];
        assert_eq!(unique(&names), vec!["sda", "SDA-2", "sda-3", "sdb"]);
    }
}
