//! Who this machine is: hostname, machine-id and DMI data, sent in the handshake
//! and recorded in every backup's manifest.

use crate::Root;
use crate::proto::msg::Identity;

/// Reads this machine's identity below `root`.
pub(crate) fn local(root: &Root) -> Identity {
    let attr = |p: &str| root.read_attr(p).unwrap_or_default();
    let mut hostname = attr("/proc/sys/kernel/hostname");
    if hostname.is_empty() || hostname == "(none)" {
        hostname = attr("/etc/hostname");
    }
    let machine_id = attr("/etc/machine-id");
    let dmi_vendor = clean_dmi(attr("/sys/class/dmi/id/sys_vendor"));
    let dmi_product = clean_dmi(attr("/sys/class/dmi/id/product_name"));
    let dmi_serial = clean_dmi(attr("/sys/class/dmi/id/product_serial"));
    if hostname.is_empty() || hostname == "(none)" || hostname == "localhost" {
        hostname = fallback_hostname(&dmi_product, &dmi_serial, &machine_id);
    }
    Identity {
        hostname,
        machine_id,
        dmi_vendor,
        dmi_product,
        dmi_serial,
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
    }
    // What the firmware or kernel says can be anything; the peer refuses
    // control characters and overlong fields.
    .cleaned()
}

/// How a peer's identity is shown: the protocol carries it, showing it safely
/// on a terminal is this tool's business.
pub(crate) trait Describe {
    /// "hostB (Dell Inc. XPS 13, serial ABC), rescue 0.1.0", escaped for the terminal.
    fn describe(&self) -> String;
}

impl Describe for Identity {
    fn describe(&self) -> String {
        let mut hw = Vec::new();
        for s in [&self.dmi_vendor, &self.dmi_product] {
            if !s.is_empty() {
                hw.push(s.as_str());
            }
        }
        let mut out = self.hostname.clone();
        if !hw.is_empty() || !self.dmi_serial.is_empty() {
            out.push_str(" (");
            out.push_str(&hw.join(" "));
            if !self.dmi_serial.is_empty() {
                if !hw.is_empty() {
                    out.push_str(", ");
                }
                out.push_str("serial ");
                out.push_str(&self.dmi_serial);
            }
            out.push(')');
        }
        out.push_str(&format!(", rescue {}", self.tool_version));
        // Every part came from the peer: escaped for the terminal.
        crate::util::printable(&out).into_owned()
    }
}

/// Firmware fills DMI fields with placeholders; those identify nothing.
fn clean_dmi(s: String) -> String {
    let l = s.to_ascii_lowercase();
    let junk = [
        "to be filled by o.e.m.",
        "default string",
        "system serial number",
        "not specified",
        "none",
        "0",
        "0123456789",
    ];
    if junk.contains(&l.as_str()) {
        String::new()
    } else {
        s
    }
}

/// A stable name for a machine whose hostname is unset (a rescue initramfs).
fn fallback_hostname(product: &str, serial: &str, machine_id: &str) -> String {
    let mut base = String::new();
    if !product.is_empty() {
        base.push_str(product);
    }
    if !serial.is_empty() {
        if !base.is_empty() {
            base.push('-');
        }
        base.push_str(serial);
    }
    if base.is_empty() && machine_id.len() >= 8 {
        base = format!("host-{}", &machine_id[..8]);
    }
    if base.is_empty() {
        base = "unnamed-host".into();
    }
    base.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect::<String>()
        .trim_matches('-')
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_description() {
        let id = Identity {
            hostname: "hostb".into(),
            dmi_vendor: "ACME".into(),
            dmi_product: "Box 9".into(),
            dmi_serial: "S1".into(),
            tool_version: "0.1.0".into(),
            ..Default::default()
        };
        assert_eq!(id.describe(), "hostb (ACME Box 9, serial S1), rescue 0.1.0");
    }

    #[test]
    fn reads_fake_tree_and_falls_back() {
        let d = tempfile::tempdir().unwrap();
        let r = Root::new(d.path());
        std::fs::create_dir_all(r.path("/proc/sys/kernel")).unwrap();
        std::fs::create_dir_all(r.path("/sys/class/dmi/id")).unwrap();
        std::fs::create_dir_all(r.path("/etc")).unwrap();
        std::fs::write(r.path("/proc/sys/kernel/hostname"), "(none)\n").unwrap();
        std::fs::write(r.path("/sys/class/dmi/id/product_name"), "ThinkPad X1\n").unwrap();
        std::fs::write(r.path("/sys/class/dmi/id/product_serial"), "PF0ABC\n").unwrap();
        std::fs::write(
            r.path("/sys/class/dmi/id/sys_vendor"),
            "To Be Filled By O.E.M.\n",
        )
        .unwrap();
        let id = local(&r);
        assert_eq!(id.hostname, "thinkpad-x1-pf0abc");
        assert_eq!(id.dmi_vendor, "");
        std::fs::write(r.path("/proc/sys/kernel/hostname"), "hosta\n").unwrap();
        assert_eq!(local(&r).hostname, "hosta");
    }
}
