//! The fabric report behind `rescue status`: kernel and modules, ConfigFS, host
//! controllers and their DMA protection, connected peers, their USB4STREAM services
//! and the streams configured in ConfigFS, with what to do about anything missing.

use std::fs;

use bootfacts::index::{parse_builtin, parse_dep};
use bootfacts::needed::{STREAM_MODULE, STREAM_STACK};
use serde::Serialize;

use crate::Root;
use crate::fabric::bus::{self, Domain, Router, Service, XDomain};
use crate::fabric::link::STREAM_ROOT as STREAM_CONFIGFS;
use crate::system::disks::natural_cmp;
use crate::system::mountinfo;
use crate::util::Escaped;
/// The first release with thunderbolt_stream.
const MIN_KERNEL: (u32, u32) = (7, 2);

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// `uname -r` (from /proc/sys/kernel/osrelease).
    pub kernel_release: Option<String>,
    /// Whether the kernel is at least 7.2; `None` when the release is unknown.
    pub kernel_supported: Option<bool>,
    pub modules: Vec<ModuleStatus>,
    /// ConfigFS mounted at /sys/kernel/config.
    pub configfs_mounted: bool,
    /// /sys/kernel/config/thunderbolt/stream exists (module loaded, ConfigFS mounted).
    pub stream_configfs: bool,
    pub domains: Vec<DomainStatus>,
    pub peers: Vec<PeerStatus>,
    pub streams: Vec<StreamStatus>,
    /// Risks worth knowing that do not stop anything (no DMA protection).
    pub warnings: Vec<String>,
    /// Why the fabric is not usable yet, each with what to do; empty when ready.
    pub problems: Vec<String>,
    /// Notes on the way to a working link (no peer yet, service not bound...).
    pub(crate) notes: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModuleStatus {
    pub name: String,
    /// Present in /sys/module (loaded, or built in).
    pub loaded: bool,
    pub builtin: bool,
    /// Built in, or listed in modules.dep so `modprobe` can load it.
    pub available: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct DomainStatus {
    #[serde(flatten)]
    pub domain: Domain,
    /// This host's router in the domain.
    pub(crate) host: Option<Router>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PeerStatus {
    #[serde(flatten)]
    pub(crate) xdomain: XDomain,
    pub services: Vec<ServiceStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServiceStatus {
    #[serde(flatten)]
    pub(crate) service: Service,
    /// A USB4STREAM service.
    pub stream: bool,
    /// thunderbolt_stream is bound to it.
    pub bound: bool,
}

/// One stream directory in ConfigFS.
#[derive(Debug, Clone, Serialize)]
pub struct StreamStatus {
    /// The connection group, named after the peer's service (e.g. "0-1.0").
    pub service: String,
    pub name: String,
    pub index: Option<u32>,
    /// -1 asks for automatic allocation, 0 (or less) is unset.
    pub in_hopid: Option<i64>,
    pub out_hopid: Option<i64>,
    pub ring_size: Option<u32>,
    /// Interrupt throttling in ns.
    pub throttling: Option<u64>,
    /// "/dev/tbstreamN".
    pub device: Option<String>,
    pub device_exists: bool,
    /// The service it is configured for is present on the bus.
    pub peer_present: bool,
}

/// Gathers the report. Reads only; missing pieces become problems, not errors.
pub fn collect(root: &Root) -> Status {
    let kernel_release = root
        .read_attr("/proc/sys/kernel/osrelease")
        .filter(|s| !s.is_empty());
    let kernel_supported = kernel_release
        .as_deref()
        .and_then(parse_release)
        .map(|v| v >= MIN_KERNEL);
    let modules = STREAM_STACK
        .iter()
        .map(|m| module_status(root, kernel_release.as_deref(), m))
        .collect::<Vec<_>>();
    let configfs_mounted = mountinfo::read(root)
        .map(|ms| {
            ms.iter()
                .any(|m| m.fs_type == "configfs" && m.mount_point == "/sys/kernel/config")
        })
        .unwrap_or(false);
    let stream_configfs = root.path(STREAM_CONFIGFS).is_dir();

    let domains: Vec<DomainStatus> = bus::domains(root)
        .into_iter()
        .map(|d| DomainStatus {
            host: bus::host_router(root, d.index),
            domain: d,
        })
        .collect();
    let services = bus::services(root);
    let peers: Vec<PeerStatus> = bus::xdomains(root)
        .into_iter()
        .map(|x| PeerStatus {
            services: services
                .iter()
                .filter(|s| s.xdomain == x.name)
                .map(|s| ServiceStatus {
                    stream: s.is_stream(),
                    bound: s.driver.as_deref() == Some(STREAM_MODULE),
                    service: s.clone(),
                })
                .collect(),
            xdomain: x,
        })
        .collect();
    let streams = read_streams(root, &services);

    let mut status = Status {
        kernel_release,
        kernel_supported,
        modules,
        configfs_mounted,
        stream_configfs,
        domains,
        peers,
        streams,
        warnings: Vec::new(),
        problems: Vec::new(),
        notes: Vec::new(),
    };
    diagnose(&mut status);
    status
}

/// Ok when streams can be set up; otherwise the reasons, with what to do.
pub fn check_ready(root: &Root) -> Result<(), String> {
    let s = collect(root);
    if s.problems.is_empty() {
        Ok(())
    } else {
        Err(s.problems.join("; "))
    }
}

/// "7.3.1+deb14-amd64" -> (7, 3).
fn parse_release(r: &str) -> Option<(u32, u32)> {
    let mut parts = r.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next().and_then(|m| m.parse().ok()).unwrap_or(0);
    Some((major, minor))
}

fn module_status(root: &Root, release: Option<&str>, name: &str) -> ModuleStatus {
    let text = |file: &str| -> String {
        release
            .and_then(|rel| {
                fs::read_to_string(root.path(format!("/lib/modules/{rel}/{file}"))).ok()
            })
            .unwrap_or_default()
    };
    let builtin = parse_builtin(&text("modules.builtin")).contains(name);
    let loaded = root.path(format!("/sys/module/{name}")).is_dir();
    ModuleStatus {
        name: name.to_string(),
        loaded: loaded || builtin,
        builtin,
        available: builtin || loaded || parse_dep(&text("modules.dep")).contains_key(name),
    }
}

fn read_streams(root: &Root, services: &[Service]) -> Vec<StreamStatus> {
    let mut out = Vec::new();
    for svc in dir_names(root, STREAM_CONFIGFS) {
        let group = format!("{STREAM_CONFIGFS}/{svc}");
        for name in dir_names(root, &group) {
            let base = format!("{group}/{name}");
            let num = |a: &str| root.read_attr(format!("{base}/{a}"));
            let index = num("index").and_then(|s| s.parse::<u32>().ok());
            let device = index.map(|i| format!("/dev/tbstream{i}"));
            out.push(StreamStatus {
                service: svc.clone(),
                index,
                in_hopid: num("in_hopid").and_then(|s| s.parse().ok()),
                out_hopid: num("out_hopid").and_then(|s| s.parse().ok()),
                ring_size: num("ring_size").and_then(|s| s.parse().ok()),
                throttling: num("throttling").and_then(|s| s.parse().ok()),
                device_exists: device.as_ref().is_some_and(|d| root.path(d).exists()),
                device,
                peer_present: services.iter().any(|s| s.name == svc),
                name,
            });
        }
    }
    out
}

/// Subdirectories only: ConfigFS groups are directories, attributes are files.
fn dir_names(root: &Root, abs: &str) -> Vec<String> {
    let mut v: Vec<String> = match fs::read_dir(root.path(abs)) {
        Ok(rd) => rd
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .collect(),
        Err(_) => Vec::new(),
    };
    v.sort_by(|a, b| natural_cmp(a, b));
    v
}

/// What the report concludes: problems that stop a stream, warnings, and notes
/// on what is still missing, from the kernel up to each stream.
fn diagnose(s: &mut Status) {
    let stream_loaded = s
        .modules
        .iter()
        .any(|m| m.name == STREAM_MODULE && m.loaded);
    diagnose_kernel(s, stream_loaded);
    diagnose_domains(s);
    diagnose_peers(s, stream_loaded);
    diagnose_streams(s);
}

/// The kernel, the stream module and ConfigFS.
fn diagnose_kernel(s: &mut Status, stream_loaded: bool) {
    if let (Some(false), Some(r)) = (s.kernel_supported, &s.kernel_release) {
        s.problems.push(format!(
            "USB4STREAM needs Linux >= {}.{}; this kernel is {r} (boot a newer kernel)",
            MIN_KERNEL.0, MIN_KERNEL.1
        ));
    }
    let stream_mod = s.modules.iter().find(|m| m.name == STREAM_MODULE);
    if let Some(m) = stream_mod.filter(|m| !m.loaded) {
        if m.available {
            s.problems.push(format!(
                "the {STREAM_MODULE} module is not loaded: run `modprobe {STREAM_MODULE}`"
            ));
        } else if s.kernel_supported != Some(false) {
            s.problems.push(format!(
                "this kernel has no {STREAM_MODULE} module (CONFIG_USB4_STREAM): \
                 it needs Linux >= {}.{} built with it",
                MIN_KERNEL.0, MIN_KERNEL.1
            ));
        }
    }
    if !s.configfs_mounted && !s.stream_configfs {
        s.problems.push(
            "ConfigFS is not mounted: run `mount -t configfs none /sys/kernel/config`".into(),
        );
    } else if stream_loaded && !s.stream_configfs {
        s.problems.push(format!(
            "{STREAM_CONFIGFS} is missing although {STREAM_MODULE} is loaded: \
             try `modprobe -r {STREAM_MODULE} && modprobe {STREAM_MODULE}`"
        ));
    }
}

/// The host controllers (domains) and their DMA protection.
fn diagnose_domains(s: &mut Status) {
    if s.domains.is_empty() {
        s.problems.push(
            "no Thunderbolt/USB4 host controller found (no domain in /sys/bus/thunderbolt): \
             check that the `thunderbolt` module is loaded and the ports are enabled in the \
             firmware setup"
                .into(),
        );
    }

    for d in &s.domains {
        if !d.domain.iommu_dma_protection {
            s.warnings.push(format!(
                "WARNING: {} has no IOMMU DMA protection: a connected peer could read and \
                 write this machine's memory. Connect only machines you trust.",
                d.domain.name
            ));
        }
    }
}

/// The peers connected and the stream services they offer.
fn diagnose_peers(s: &mut Status, stream_loaded: bool) {
    if !s.domains.is_empty() && s.peers.is_empty() {
        s.notes
            .push("no peer host connected: plug the cable into the other machine".into());
    }
    for p in &s.peers {
        let streams: Vec<&ServiceStatus> = p.services.iter().filter(|x| x.stream).collect();
        if streams.is_empty() {
            s.notes.push(format!(
                "peer {} offers no USB4STREAM service: load {STREAM_MODULE} there \
                 (or start `rescue serve` on it)",
                p.xdomain.name
            ));
        }
        for x in streams.iter().filter(|x| !x.bound) {
            s.notes.push(format!(
                "{} is a USB4STREAM service but {STREAM_MODULE} is not bound to it{}",
                x.service.name,
                if stream_loaded {
                    ""
                } else {
                    " (the module is not loaded)"
                }
            ));
        }
    }
}

/// The streams set up in ConfigFS: their peer, HopIDs and device node.
fn diagnose_streams(s: &mut Status) {
    for st in &s.streams {
        if !st.peer_present {
            s.notes.push(format!(
                "stream {}/{} waits for service {} to appear",
                st.service, st.name, st.service
            ));
        } else if st.in_hopid.is_none_or(|h| h <= 0) || st.out_hopid.is_none_or(|h| h <= 0) {
            s.notes.push(format!(
                "stream {}/{} has no HopIDs yet: the peer has not published them",
                st.service, st.name
            ));
        }
        if st.device.is_some() && !st.device_exists {
            s.notes.push(format!(
                "{} is missing (devtmpfs not mounted on /dev?)",
                st.device.as_deref().unwrap_or("")
            ));
        }
    }
}

fn yes_no(b: bool, yes: &str, no: &str) -> String {
    if b { yes.into() } else { no.into() }
}

fn opt(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or("?")
}

/// The human report.
pub fn render(s: &Status) -> String {
    let mut o = String::new();
    render_system(&mut o, s);
    render_domains(&mut o, s);
    render_peers(&mut o, s);
    render_streams(&mut o, s);
    render_verdict(&mut o, s);
    o
}

/// Kernel, modules and ConfigFS.
fn render_system(o: &mut String, s: &Status) {
    let kernel = match (&s.kernel_release, s.kernel_supported) {
        (Some(r), Some(true)) => format!("{r} (USB4STREAM supported)"),
        (Some(r), Some(false)) => format!(
            "{r} (too old: USB4STREAM needs >= {}.{})",
            MIN_KERNEL.0, MIN_KERNEL.1
        ),
        (Some(r), None) => format!("{r} (version not recognised)"),
        (None, _) => "unknown".into(),
    };
    o.push_str(&format!("Kernel:    {kernel}\n"));
    let mods: Vec<String> = s
        .modules
        .iter()
        .map(|m| {
            let state = if m.builtin {
                "built in"
            } else if m.loaded {
                "loaded"
            } else if m.available {
                "not loaded"
            } else {
                "not available"
            };
            format!("{} {state}", m.name)
        })
        .collect();
    o.push_str(&format!("Modules:   {}\n", mods.join(", ")));
    o.push_str(&format!(
        "ConfigFS:  {}\n",
        match (s.configfs_mounted, s.stream_configfs) {
            (_, true) => format!("mounted, {STREAM_CONFIGFS} present"),
            (true, false) => format!("mounted, {STREAM_CONFIGFS} missing"),
            (false, false) => "not mounted".into(),
        }
    ));
}

/// The host controllers (Thunderbolt domains).
fn render_domains(o: &mut String, s: &Status) {
    o.push_str("\nHost controllers:\n");
    if s.domains.is_empty() {
        o.push_str("  none\n");
    }
    for d in &s.domains {
        o.push_str(&format!(
            "  {}  security {}, IOMMU DMA protection {}\n",
            d.domain.name,
            d.domain.security.as_deref().unwrap_or("unknown"),
            yes_no(d.domain.iommu_dma_protection, "on", "OFF")
        ));
        if let Some(h) = &d.host {
            o.push_str(&format!(
                "    this host {}: {} {}, uuid {}\n",
                h.name,
                opt(&h.vendor_name),
                opt(&h.device_name),
                opt(&h.unique_id)
            ));
        }
    }
}

/// Connected peer hosts and their services.
fn render_peers(o: &mut String, s: &Status) {
    o.push_str("\nPeer hosts:\n");
    if s.peers.is_empty() {
        o.push_str("  none connected\n");
    }
    for p in &s.peers {
        let x = &p.xdomain;
        o.push_str(&format!(
            "  {}  {} ({}), uuid {}\n",
            x.name,
            // The peer host chose its own device and vendor names.
            Escaped(opt(&x.device_name)),
            Escaped(opt(&x.vendor_name)),
            Escaped(opt(&x.unique_id))
        ));
        let lanes = |l: Option<u32>| l.map(|n| format!(" x{n}")).unwrap_or_default();
        if x.rx_speed.is_some() || x.tx_speed.is_some() {
            o.push_str(&format!(
                "    link: rx {}{}, tx {}{}\n",
                opt(&x.rx_speed),
                lanes(x.rx_lanes),
                opt(&x.tx_speed),
                lanes(x.tx_lanes)
            ));
        }
        if let Some(m) = x.maxhopid {
            o.push_str(&format!("    maxhopid {m}\n"));
        }
        for sv in &p.services {
            let what = if sv.stream {
                format!(
                    "USB4STREAM v{}",
                    sv.service.prtcvers.map_or("?".into(), |v| v.to_string())
                )
            } else {
                format!("{} (not a stream)", opt(&sv.service.key))
            };
            let drv = match &sv.service.driver {
                Some(d) => format!("bound to {d}"),
                None => "no driver bound".into(),
            };
            o.push_str(&format!("    service {}: {what}, {drv}\n", sv.service.name));
        }
        if p.services.is_empty() {
            o.push_str("    no services\n");
        }
    }
}

/// The streams configured in ConfigFS.
fn render_streams(o: &mut String, s: &Status) {
    o.push_str("\nStreams (ConfigFS):\n");
    if s.streams.is_empty() {
        o.push_str("  none configured\n");
    }
    for st in &s.streams {
        let num = |v: Option<i64>| v.map_or("?".into(), |n| n.to_string());
        let dev = match &st.device {
            Some(d) if st.device_exists => d.clone(),
            Some(d) => format!("{d} (missing)"),
            None => "no device".into(),
        };
        o.push_str(&format!(
            "  {}/{}  {dev}, in_hopid {}, out_hopid {}, ring_size {}, throttling {} ns{}\n",
            st.service,
            st.name,
            num(st.in_hopid),
            num(st.out_hopid),
            st.ring_size.map_or("?".into(), |n| n.to_string()),
            st.throttling.map_or("?".into(), |n| n.to_string()),
            if st.peer_present { "" } else { ", peer absent" }
        ));
    }
}

/// Warnings, notes, and whether streams can be set up.
fn render_verdict(o: &mut String, s: &Status) {
    if !s.warnings.is_empty() {
        o.push('\n');
        for w in &s.warnings {
            o.push_str(w);
            o.push('\n');
        }
    }
    if !s.notes.is_empty() {
        o.push_str("\nNotes:\n");
        for n in &s.notes {
            o.push_str(&format!("  - {n}\n"));
        }
    }
    if s.problems.is_empty() {
        o.push_str("\nReady: streams can be set up.\n");
    } else {
        o.push_str("\nNot ready:\n");
        for p in &s.problems {
            o.push_str(&format!("  - {p}\n"));
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_releases() {
        assert_eq!(parse_release("7.3.1+deb14-amd64"), Some((7, 3)));
        assert_eq!(parse_release("7.2-rc1"), Some((7, 2)));
        assert_eq!(parse_release("6.12.48+deb13-amd64"), Some((6, 12)));
        assert_eq!(parse_release("10"), Some((10, 0)));
        assert_eq!(parse_release("linux"), None);
        assert!((7, 2) >= MIN_KERNEL && (6, 99) < MIN_KERNEL && (8, 0) >= MIN_KERNEL);
    }
}
