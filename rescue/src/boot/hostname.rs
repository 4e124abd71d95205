//! A hostname for the rescue system: `rescue.hostname=` if given, else one derived
//! from DMI or the machine-id, so backups of different machines land in different
//! store directories and the peer screen shows something recognisable.

use crate::root::Root;

/// ASCII letters, digits and single dashes; at most 63 characters. Case is kept:
/// a configured `hostB` stays `hostB` (it names the store directory).
pub(crate) fn sanitize(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    let mut out: String = out.chars().take(63).collect();
    while out.ends_with('-') {
        out.pop();
    }
    out
}

/// Firmware placeholders that identify nothing.
fn placeholder(s: &str) -> bool {
    let l = s.trim().to_ascii_lowercase();
    l.is_empty()
        || [
            "to be filled by o.e.m.",
            "default string",
            "system serial number",
            "system product name",
            "not specified",
            "none",
            "0",
            "0123456789",
            "00000000-0000-0000-0000-000000000000",
        ]
        .contains(&l.as_str())
}

/// The name to use when none is configured: DMI product plus serial (or the
/// product UUID's tail, or machine-id's head) so identical models differ.
pub(crate) fn derive(root: &Root) -> String {
    let attr = |p: &str| root.read_attr(p).filter(|v| !placeholder(v));
    let product = attr("/sys/class/dmi/id/product_name").map(|p| sanitize(&p.to_ascii_lowercase()));
    let unique = attr("/sys/class/dmi/id/product_serial")
        .or_else(|| {
            attr("/sys/class/dmi/id/product_uuid")
                .map(|u| u.replace('-', "").chars().rev().take(8).collect::<Vec<_>>())
                .map(|v| v.into_iter().rev().collect())
        })
        .or_else(|| attr("/etc/machine-id").map(|m| m.chars().take(8).collect()))
        .map(|u| sanitize(&u.to_ascii_lowercase()));
    let product = product.filter(|p| !p.is_empty());
    let unique = unique.filter(|u| !u.is_empty());
    let name = match (product, unique) {
        (Some(p), Some(u)) => {
            // Keep the unique part whole; shorten the product to fit.
            let room = 62usize.saturating_sub(u.len());
            let p: String = p.chars().take(room).collect();
            format!("{}-{u}", p.trim_end_matches('-'))
        }
        (Some(p), None) => p,
        (None, Some(u)) => format!("rescue-{u}"),
        (None, None) => "rescue".to_string(),
    };
    sanitize(&name)
}

/// The hostname to set, or None to keep the current one.
pub(crate) fn choose(root: &Root, configured: Option<&str>) -> Option<String> {
    if let Some(c) = configured {
        let s = sanitize(c);
        return (!s.is_empty()).then_some(s);
    }
    let cur = root
        .read_attr("/proc/sys/kernel/hostname")
        .unwrap_or_default();
    (cur.is_empty() || cur == "(none)" || cur == "localhost").then(|| derive(root))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitizes() {
        assert_eq!(
            sanitize("Standard PC (i440FX + PIIX, 1996)"),
            "Standard-PC-i440FX-PIIX-1996"
        );
        assert_eq!(sanitize("--A__b--"), "A-b");
        assert_eq!(sanitize(&"x".repeat(100)).len(), 63);
    }

    #[test]
    fn derives_from_dmi() {
        let t = tempfile::tempdir().expect("tempdir");
        let d = t.path().join("sys/class/dmi/id");
        std::fs::create_dir_all(&d).expect("mkdir");
        std::fs::write(d.join("product_name"), "ThinkPad X1 Carbon\n").expect("w");
        std::fs::write(d.join("product_serial"), "To Be Filled By O.E.M.\n").expect("w");
        std::fs::write(
            d.join("product_uuid"),
            "4c4c4544-0042-3510-8052-b4c04f4e4d32\n",
        )
        .expect("w");
        let r = Root::new(t.path());
        assert_eq!(derive(&r), "thinkpad-x1-carbon-4f4e4d32");
        assert_eq!(choose(&r, Some("Host A")).as_deref(), Some("Host-A"));
        // No /proc hostname in the fake tree counts as unset.
        assert_eq!(
            choose(&r, None).as_deref(),
            Some("thinkpad-x1-carbon-4f4e4d32")
        );
    }
}
